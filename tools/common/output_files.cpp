#include "common/output_files.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

namespace blasst::tools {
namespace fs = std::filesystem;

PendingOutputs::~PendingOutputs() {
  for (const Entry& e : entries_) std::remove(e.temp.c_str());
}

void PendingOutputs::stage(const std::string& path, const void* data, size_t size) {
  const std::string temp = path + ".tmp-" + std::to_string(::getpid());
  std::FILE* f = std::fopen(temp.c_str(), "wb");
  if (!f) throw OutputError(path + ": cannot create: " + std::strerror(errno));
  entries_.push_back({temp, path});
  const bool ok = std::fwrite(data, 1, size, f) == size;
  const int err = errno;
  if (std::fclose(f) != 0 || !ok) throw OutputError(path + ": write failed: " + std::strerror(ok ? errno : err));
}

void PendingOutputs::commit() {
  for (size_t i = 0; i < entries_.size(); ++i) {
    if (std::rename(entries_[i].temp.c_str(), entries_[i].path.c_str()) != 0) {
      const std::string msg = entries_[i].path + ": cannot rename the finished file into place: " + std::strerror(errno);
      entries_.erase(entries_.begin(), entries_.begin() + std::ptrdiff_t(i));
      throw OutputError(msg);
    }
  }
  entries_.clear();
}

void check_writable(const std::string& option, const std::string& path) {
  if (path.empty()) throw OutputError(option + ": empty path");
  std::error_code ec;
  if (fs::is_directory(path, ec)) throw OutputError(option + " " + path + ": is a directory, expected a file name");
  fs::path dir = fs::path(path).parent_path();
  if (dir.empty()) dir = ".";
  if (!fs::is_directory(dir, ec)) throw OutputError(option + " " + path + ": directory " + dir.string() + " does not exist");
  if (::access(dir.c_str(), W_OK) != 0) throw OutputError(option + " " + path + ": directory " + dir.string() + " is not writable");
}

}  // namespace blasst::tools
