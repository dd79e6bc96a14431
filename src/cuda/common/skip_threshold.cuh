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

// The factor of batch entry b, KV head kv_head: per KV head, per request (read here, at run
// time, so CUDA graph replays see new values), or the call's scalar.
template <class Operands>
__device__ __forceinline__ float threshold_factor(const Operands& p, int b, int kv_head) {
  if (p.per_kv_head_factor) return p.per_kv_head_factor[kv_head];
  if (p.per_request_factor) return p.per_request_factor[b];
  return p.threshold_scale_factor;
}

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
