// Launch of one prefill kernel instantiation: the tile configuration per head dimension and
// the grid. Included by the per-head-dimension translation units (prefill_d*.cu), so that the
// instantiations compile in parallel.
#pragma once

#include <cuda_runtime.h>

#include "cuda/sm80/prefill/prefill_kernel.cuh"

namespace blasst::cuda {

// Tile configuration per head dimension: (block_m, block_n, warps).
//   D=64:  128 x 128, 4 warps (32 rows each); D=128: 128 x 64, 4 warps; D=256: 128 x 64, 8 warps.
template <class T, int D>
struct ConfigFor;
template <class T>
struct ConfigFor<T, 64> { using type = PrefillConfig<T, 64, 128, 128, 4>; };
template <class T>
struct ConfigFor<T, 128> { using type = PrefillConfig<T, 128, 128, 64, 4>; };
template <class T>
struct ConfigFor<T, 256> { using type = PrefillConfig<T, 256, 128, 64, 8>; };

// Grid: x = (KV head, row block, query head of the KV head), y = batch entry.
template <class T, int D, bool kSkip>
cudaError_t launch_prefill_impl(const PrefillParams& p, cudaStream_t stream) {
  using Cfg = typename ConfigFor<T, D>::type;
  auto kernel = prefill_kernel<Cfg, kSkip>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Cfg::kSmemBytes));
  if (err != cudaSuccess) return err;
  const dim3 grid(unsigned(p.num_q_heads) * unsigned(p.row_blocks), unsigned(p.batch));
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace blasst::cuda
