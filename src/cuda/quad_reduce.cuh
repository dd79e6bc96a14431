// Reductions over the values a thread holds of one accumulator row, and over the quad: in the
// mma.sync and wgmma accumulator layouts the 4 lanes with equal lane / 4 share a row and split
// its columns. Shared by the prefill (sm_80, sm_90a) and decode kernels.
#pragma once

namespace blasst::cuda {

// Maximum of v[0..N) as a pairwise tree (a dependency chain of log2 N, not N); v is overwritten.
template <int N>
__device__ __forceinline__ float tree_max(float (&v)[N]) {
#pragma unroll
  for (int w = 1; w < N; w *= 2)
#pragma unroll
    for (int c = 0; c + w < N; c += 2 * w) v[c] = fmaxf(v[c], v[c + w]);
  return v[0];
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

// The skip vote of the prefill kernels may run on each lane's maxima over its part of the rows
// (`mt`, n values) instead of the row maxima: for a positive scale the rule
// `!(x * scale - m * scale < ln(lambda))` does not decrease with x, so a row passes iff one of
// its four lanes' maxima does, and the vote (an OR) needs no quad reduction first. A lane's
// maximum is NaN only when all its entries are (fmaxf drops NaN, as the row maximum does), so
// where one is, or where the scale is not positive, the rows must be reduced first: false then.
// The same value in every lane of the warp.
__device__ __forceinline__ bool vote_on_partial_maxima(float scale, const float* mt, int n) {
  bool exact_first = !(scale > 0.0f);
#pragma unroll
  for (int i = 0; i < n; ++i) exact_first |= mt[i] != mt[i];
  return !__any_sync(0xffffffffu, exact_first);
}

__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

}  // namespace blasst::cuda
