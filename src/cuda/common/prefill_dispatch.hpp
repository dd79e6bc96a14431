// Host-side entry points of the prefill kernels, one per (dtype, head dim, skip flag).
#pragma once

#include <cuda_runtime.h>

#include "cuda/common/prefill_params.hpp"

namespace blasst::cuda {

// kFp8: Q, K and V in float8_e4m3 with dequantization scales, O in bfloat16 (sm_90a only).
enum class Elem { kBf16, kFp16, kFp8 };

// Tile shape the kernel for head dimension d uses (0 when d is not built).
struct PrefillTiles {
  int block_m = 0;
  int block_n = 0;
};
PrefillTiles prefill_tiles(int head_dim);

// Launches the prefill kernel; cudaErrorInvalidValue when (elem, head_dim) is not built.
cudaError_t launch_prefill(Elem elem, int head_dim, bool skip, const PrefillParams& p, cudaStream_t stream);

#define BLASST_DECLARE_PREFILL(D)                                                             \
  cudaError_t launch_prefill_d##D(Elem elem, bool skip, const PrefillParams& p, cudaStream_t stream);
BLASST_DECLARE_PREFILL(64)
BLASST_DECLARE_PREFILL(128)
BLASST_DECLARE_PREFILL(256)
#undef BLASST_DECLARE_PREFILL

}  // namespace blasst::cuda
