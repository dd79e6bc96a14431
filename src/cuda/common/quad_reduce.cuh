// Reductions over the values a thread holds of one accumulator row, and over the quad: in the
// mma.sync and wgmma accumulator layouts the 4 lanes with equal lane / 4 share a row and split
// its columns. Shared by the prefill (sm_80, sm_90a) and decode kernels.
#pragma once

#include "cuda/common/ptx.cuh"

namespace blasst::cuda {

// fmaxf (NaN inputs dropped), or with kNanPropagates NaN as soon as one input is: the skip
// instantiations keep tile and running maxima that way, as SPEC.md and the CPU engine do, so that
// a row with a NaN score keeps its tiles and NaN reaches the output as in dense attention.
template <bool kNanPropagates>
__device__ __forceinline__ float max_of(float a, float b) {
  return kNanPropagates ? ptx::max_nan(a, b) : fmaxf(a, b);
}

// Maximum of v[0..N) as a pairwise tree (a dependency chain of log2 N, not N); v is overwritten.
template <bool kNanPropagates = false, int N>
__device__ __forceinline__ float tree_max(float (&v)[N]) {
#pragma unroll
  for (int w = 1; w < N; w *= 2)
#pragma unroll
    for (int c = 0; c + w < N; c += 2 * w) v[c] = max_of<kNanPropagates>(v[c], v[c + w]);
  return v[0];
}

template <bool kNanPropagates = false>
__device__ __forceinline__ float quad_max(float x) {
  x = max_of<kNanPropagates>(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return max_of<kNanPropagates>(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

// The skip rule of the prefill kernels on raw scores: a row votes keep on a tile iff
// !(x < keep_threshold(m, ...)) for its tile maximum x, which is the rule
// `!(x * scale - m * scale < ln(lambda))` up to rounding (SPEC.md section 6) for a positive
// scale (the CUDA engine takes no negative one), with one compare after the tile's maxima.
// It does not decrease with x, so it may run on each lane's maximum over its part of the row
// (NaN-propagating, see tree_max): a row passes iff one of its four lanes' maxima does, and
// the OR of the vote needs no quad reduction first.
// The threshold is -FLT_MAX at least (fmaxf), so that x = -inf (the row sees no key of the tile)
// always votes skip, as in the CPU engine, and any other x keeps while m = -inf, or while m is
// NaN (a NaN score was seen: `x * scale - NaN < ln(lambda)` is false).
// log_lambda_raw = ln(lambda) / scale.
__device__ __forceinline__ float keep_threshold(float m, float log_lambda_raw) {
  return fmaxf(m + log_lambda_raw, -__FLT_MAX__);
}

__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

}  // namespace blasst::cuda
