// `blasst`: command-line front of the library.
//   blasst run    attention on .npy inputs, writing O, LSE and statistics
//   blasst demo   the embedded structured workload at several thresholds, vs dense
//   blasst bench  CPU benchmark (GPU benchmarks are forwarded to bench/gpu_bench.py)
#include <blasst/blasst.h>

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "cli_common.hpp"

namespace {

// `blasst bench --engine cuda ...` runs the Python GPU benchmark with the other arguments.
int forward_gpu_bench(int argc, char** argv) {
  std::vector<std::string> rest;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--engine" && i + 1 < argc) {
      ++i;
      continue;
    }
    if (a.rfind("--engine=", 0) == 0) continue;
    rest.push_back(a);
  }
#ifdef BLASST_SOURCE_DIR
  const std::string script = std::string(BLASST_SOURCE_DIR) + "/bench/gpu_bench.py";
#else
  const std::string script = "bench/gpu_bench.py";
#endif
  std::error_code ec;
  if (!std::filesystem::is_regular_file(script, ec))
    return blasst::cli::report_error("bench --engine cuda: the GPU benchmark script " + script +
                                     " is missing (it runs the CUDA engines through Python)");
  std::vector<char*> args;
  std::string python = "python3";
  args.push_back(python.data());
  std::string script_arg = script;
  args.push_back(script_arg.data());
  for (auto& a : rest) args.push_back(a.data());
  args.push_back(nullptr);
  std::fflush(stdout);
  ::execvp("python3", args.data());
  return blasst::cli::report_error(std::string("bench --engine cuda: cannot run python3: ") + std::strerror(errno),
                                   blasst::cli::kExitFailure);
}

bool wants_gpu_bench(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) != "bench") return false;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") return false;
    if ((a == "--engine" && i + 1 < argc && std::string(argv[i + 1]) == "cuda") || a == "--engine=cuda") return true;
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  if (wants_gpu_bench(argc, argv)) return forward_gpu_bench(argc, argv);
  if (argc >= 2 && argv[1][0] != '-') {
    const std::string cmd = argv[1];
    if (cmd != "run" && cmd != "demo" && cmd != "bench")
      return blasst::cli::report_error("unknown command '" + cmd + "' (expected run, demo or bench; see blasst --help)");
  }

  CLI::App app{std::string("blasst ") + blasst_version() +
               ": BLASST skip-softmax attention (FlashAttention forward that skips KV tiles whose scores "
               "cannot matter)"};
  app.name("blasst");
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string(blasst_version()));
  app.get_formatter()->column_width(34);
  int exit_code = blasst::cli::kExitOk;
  blasst::cli::add_run_command(app, &exit_code);
  blasst::cli::add_demo_command(app, &exit_code);
  blasst::cli::add_bench_command(app, &exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::RequiredError& e) {
    if (argc < 2) {
      std::fputs(app.help().c_str(), stderr);
      return blasst::cli::report_error("a command is required: run, demo or bench");
    }
    blasst::cli::report_error(e.what());
    std::fprintf(stderr, "Run with --help for more information.\n");
    return blasst::cli::kExitBadInput;
  } catch (const CLI::ParseError& e) {
    blasst::cli::report_error(e.what());
    std::fprintf(stderr, "Run with --help for more information.\n");
    return blasst::cli::kExitBadInput;
  }
  return exit_code;
}
