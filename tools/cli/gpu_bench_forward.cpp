#include "gpu_bench_forward.hpp"

#include <spawn.h>
#include <sys/wait.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "cli_common.hpp"

extern char** environ;

namespace blasst::cli {
namespace {

std::string bench_script(const std::string& name) {
#ifdef BLASST_SOURCE_DIR
  return std::string(BLASST_SOURCE_DIR) + "/bench/" + name;
#else
  return "bench/" + name;
#endif
}

// python3 <script> <args>, waited for; its exit code (kExitFailure if it could not run or died).
int run_python(const std::string& script, const std::vector<std::string>& args) {
  std::vector<std::string> argv_s{"python3", script};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t pid = 0;
  const int err = ::posix_spawnp(&pid, "python3", nullptr, nullptr, argv.data(), environ);
  if (err != 0) return report_error("bench --engine cuda: cannot run python3: " + std::string(std::strerror(err)), kExitFailure);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return report_error("bench --engine cuda: waiting for python3 failed", kExitFailure);
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return report_error(script + " was stopped by signal " + std::to_string(WTERMSIG(status)), kExitFailure);
}

}  // namespace

bool wants_gpu_bench(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) != "bench") return false;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") return false;
    if ((a == "--engine" && i + 1 < argc && std::string(argv[i + 1]) == "cuda") || a == "--engine=cuda") return true;
  }
  return false;
}

int forward_gpu_bench(int argc, char** argv) {
  std::string phase = "all";
  std::vector<std::string> rest;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--engine" || a == "--phase") {
      if (i + 1 >= argc) return report_error("bench: " + a + " needs a value");
      if (a == "--phase") phase = argv[i + 1];
      ++i;
      continue;
    }
    if (a.rfind("--engine=", 0) == 0) continue;
    if (a.rfind("--phase=", 0) == 0) {
      phase = a.substr(8);
      continue;
    }
    rest.push_back(a);
  }
  std::vector<std::string> scripts;
  if (phase == "prefill" || phase == "all") scripts.push_back(bench_script("gpu_bench.py"));
  if (phase == "decode" || phase == "all") scripts.push_back(bench_script("gpu_decode_bench.py"));
  if (scripts.empty()) return report_error("bench --engine cuda: --phase must be prefill, decode or all, not '" + phase + "'");
  for (const auto& script : scripts) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(script, ec))
      return report_error("bench --engine cuda: the GPU benchmark script " + script +
                          " is missing (it runs the CUDA engines through Python)");
  }
  for (const auto& script : scripts) {
    const int code = run_python(script, rest);
    if (code != kExitOk) return code;
  }
  return kExitOk;
}

}  // namespace blasst::cli
