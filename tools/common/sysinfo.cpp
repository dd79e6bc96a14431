#include "common/sysinfo.hpp"

#include <cstdio>
#include <ctime>
#include <fstream>
#include <thread>

namespace blasst::tools {

std::string cpu_label() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) break;
    std::string model = line.substr(colon + 1);
    while (!model.empty() && model.front() == ' ') model.erase(model.begin());
    for (char& c : model)
      if (c == ',' || c == '"') c = ' ';
    return "cpu:" + model;
  }
  return "cpu:unknown";
}

std::string utc_date() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[16];
  std::strftime(buf, sizeof buf, "%Y-%m-%d", &tm);
  return buf;
}

std::string source_commit() {
#ifdef BLASST_SOURCE_DIR
  const std::string cmd = std::string("git -C '") + BLASST_SOURCE_DIR + "' rev-parse --short HEAD 2>/dev/null";
  if (std::FILE* p = ::popen(cmd.c_str(), "r")) {
    char buf[64] = {};
    const bool got = std::fgets(buf, sizeof buf, p) != nullptr;
    const int rc = ::pclose(p);
    std::string s = got ? buf : "";
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
    if (rc == 0 && !s.empty()) return s;
  }
#endif
  return "unknown";
}

int hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n ? int(n) : 1;
}

}  // namespace blasst::tools
