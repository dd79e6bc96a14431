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

__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

}  // namespace blasst::cuda
