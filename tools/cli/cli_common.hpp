// Shared pieces of the `blasst` subcommands: exit codes, error reporting, option parsing
// of the enums, a progress line on stderr and table printing.
#pragma once

#include <blasst/blasst.h>

#include <CLI/CLI.hpp>

#include <cstdio>
#include <string>
#include <vector>

namespace blasst::cli {

// Exit codes of every subcommand.
constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;   // the run failed for a reason other than its input
constexpr int kExitBadInput = 2;  // bad options, unreadable or inconsistent inputs

// Prints "blasst: error: <message>" to stderr and returns `code`.
int report_error(const std::string& message, int code = kExitBadInput);
// Exit code for an API status: bad input for invalid/unsupported arguments.
int exit_code_for(blasst_status status);

// Option value sets shared by the subcommands.
blasst_phase parse_phase(const std::string& s);
blasst_order parse_order(const std::string& s);
blasst_engine parse_engine(const std::string& s);
// "fp32" / "fp16" / "bf16"
blasst_dtype parse_dtype(const std::string& s);

// Engine actually used for `requested` given the compute dtype: auto picks CUDA only when
// a CUDA engine is built in, a device is present and the dtype is fp16/bf16.
blasst_engine resolve_engine(blasst_engine requested, blasst_dtype dtype);

// A one-line progress indicator on stderr, redrawn in place when stderr is a terminal.
class Progress {
 public:
  Progress(std::string task, int total);
  ~Progress();
  void step(const std::string& what);  // announces the next step (1-based counter)
  void done();

 private:
  std::string task_;
  int total_, count_ = 0;
  bool tty_, open_ = false;
};

// Fixed-width text tables for stdout.
class Table {
 public:
  explicit Table(std::vector<std::string> headers);
  void add(std::vector<std::string> row);
  void print(std::FILE* out = stdout) const;

 private:
  std::vector<std::string> headers_;
  std::vector<std::vector<std::string>> rows_;
};

std::string fmt(const char* format, double value);

// CLI11 check: a finite number >= 0.
CLI::Validator non_negative_finite();  // printf-style, one double

// Subcommand registration. Each returns through *exit_code when its callback runs.
void add_run_command(CLI::App& app, int* exit_code);
void add_demo_command(CLI::App& app, int* exit_code);
void add_bench_command(CLI::App& app, int* exit_code);

}  // namespace blasst::cli
