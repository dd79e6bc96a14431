// Wall-clock timing of repeated calls: warm-up runs, then the median of N timed runs.
#pragma once

#include <algorithm>
#include <chrono>
#include <vector>

namespace blasst::tools {

inline double now_ms() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double, std::milli>(clock::now().time_since_epoch()).count();
}

struct Timing {
  double median_ms = 0.0;
  double min_ms = 0.0;
  int runs = 0;
};

inline double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Calls fn() `warmup` times untimed, then `reps` times timed. fn returns false to stop early
// (an error); the timing then covers the runs made so far.
template <class Fn>
Timing time_runs(Fn&& fn, int warmup, int reps) {
  for (int i = 0; i < warmup; ++i)
    if (!fn()) return {};
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    const double t0 = now_ms();
    if (!fn()) break;
    ms.push_back(now_ms() - t0);
  }
  Timing t;
  t.runs = int(ms.size());
  t.median_ms = median(ms);
  t.min_ms = ms.empty() ? 0.0 : *std::min_element(ms.begin(), ms.end());
  return t;
}

}  // namespace blasst::tools
