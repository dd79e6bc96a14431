// Appending benchmark rows to a CSV file under bench/results/, one schema for all rows:
//   gpu, date, commit, phase, kernel, dtype, batch, lq, lk, hq, hkv, d, causal, sf,
//   sparsity, ms, tflops, gbs
// (gbs: bytes of K+V per second, dense-equivalent, decode only; empty for prefill).
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace blasst::tools {

struct BenchRow {
  std::string gpu, date, commit, phase, kernel, dtype;
  long long batch = 0, lq = 0, lk = 0, hq = 0, hkv = 0, d = 0;
  bool causal = false;
  double sf = 0.0, sparsity = 0.0, ms = 0.0, tflops = 0.0;
  std::optional<double> gbs;
};

const std::vector<std::string>& bench_csv_columns();

// Appends rows to `path`, creating it (and its directory) with the header when absent.
// Throws std::runtime_error with the path in the message on failure. Returns a warning
// (non-empty) when an existing file's header differs from the schema.
std::string append_bench_rows(const std::string& path, const std::vector<BenchRow>& rows);

}  // namespace blasst::tools
