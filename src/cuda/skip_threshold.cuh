// The skip threshold of one decision group (SPEC section 4), computed as the CPU engine does:
// skipping is on iff the factor is positive and lambda = factor / lk < 1 (in double), and a row
// then votes skip when its tile maximum minus its running maximum (scaled scores, fp32) is
// below ln(lambda). Shared by the prefill (sm_80, sm_90a) and decode kernels.
#pragma once

#include <cmath>

namespace blasst::cuda {

struct SkipThreshold {
  bool on = false;
  float log_lambda = -INFINITY;  // ln(lambda) when on
};

__device__ __forceinline__ SkipThreshold skip_threshold(float factor, int lk) {
  SkipThreshold t;
  const double lambda = lk > 0 ? double(factor) / double(lk) : 1.0;
  if (factor > 0.0f && lambda < 1.0) {
    t.on = true;
    t.log_lambda = float(log(lambda));
  }
  return t;
}

}  // namespace blasst::cuda
