// Writing result files so that a failed or interrupted run leaves no half-written output:
// every file is first written to "<path>.tmp-<pid>" in the same directory, and only after
// all of them were written completely are they renamed over their final names.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace blasst::tools {

class OutputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class PendingOutputs {
 public:
  PendingOutputs() = default;
  PendingOutputs(const PendingOutputs&) = delete;
  PendingOutputs& operator=(const PendingOutputs&) = delete;
  ~PendingOutputs();  // removes the temporaries of files never committed

  // Writes the bytes to a temporary next to `path`; throws OutputError.
  void stage(const std::string& path, const void* data, size_t size);
  void stage(const std::string& path, const std::string& text) { stage(path, text.data(), text.size()); }
  void stage(const std::string& path, const std::vector<uint8_t>& bytes) { stage(path, bytes.data(), bytes.size()); }

  // Renames every staged file to its final name; throws OutputError.
  void commit();

 private:
  struct Entry {
    std::string temp, path;
  };
  std::vector<Entry> entries_;
};

// Checks before any work that `path` can be created (its directory exists and is writable);
// throws OutputError naming the option.
void check_writable(const std::string& option, const std::string& path);

}  // namespace blasst::tools
