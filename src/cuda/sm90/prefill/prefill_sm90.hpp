// Host-side entry of the sm_90a prefill kernel (Hopper: TMA + wgmma + warp specialization).
// The engine uses it on compute capability 9.0 when the call fits it (sm90_supports), and the
// sm_80 kernel otherwise.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common/prefill_dispatch.hpp"
#include "cuda/common/prefill_params.hpp"

namespace blasst::cuda::sm90 {

constexpr int kGroupRows = 64;  // block_m: rows of one decision group (a consumer warpgroup)
// block_n: keys of a tile (64 at head dim 256, whose O leaves no registers for wider tiles)
constexpr int block_n(int head_dim_qk) { return head_dim_qk == 256 ? 64 : 128; }
constexpr int kBoxRows = 16;    // smallest page: pages below a tile are loaded as boxes of these rows
// FP8 with P V in e4m3: V^T's rows hold the keys rounded up to a multiple of this (the FP8
// kernel's tile of keys, and the keys of one pre-pass CTA).
constexpr int kVtKeyAlign = 128;

// Extents of the row and batch modes of the TMA views of Q and of K/V (see KernelParams).
struct TmaExtents {
  int32_t q_rows = 0, q_batch = 0;
  int32_t kv_rows = 0, kv_batch = 0;
};

// Whether the sm_90a kernel for (elem, head_dim_qk, head_dim_v) is in this build: 64/64,
// 128/128, 256/256, and 192/128 (MLA's non-absorbed prefill) where built; FP8 64/64 and 128/128 where
// built (BLASST_CUDA_SM90_FP8_PREFILL).
bool built(Elem elem, int head_dim_qk, int head_dim_v);

// Launches it; p.row_blocks counts 64-row decision groups.
cudaError_t launch(Elem elem, int head_dim_qk, int head_dim_v, bool skip, const PrefillParams& p, const TmaExtents& e,
                   cudaStream_t stream);

#define BLASST_DECLARE_SM90_PREFILL(NAME) \
  cudaError_t launch_##NAME(Elem elem, bool skip, const PrefillParams& p, const TmaExtents& e, cudaStream_t stream);
BLASST_DECLARE_SM90_PREFILL(d64)
BLASST_DECLARE_SM90_PREFILL(d128)
BLASST_DECLARE_SM90_PREFILL(d192_128)
BLASST_DECLARE_SM90_PREFILL(d256)
#undef BLASST_DECLARE_SM90_PREFILL
cudaError_t launch_fp8_d64(bool skip, const PrefillParams& p, const TmaExtents& e, cudaStream_t stream);
cudaError_t launch_fp8_d128(bool skip, const PrefillParams& p, const TmaExtents& e, cudaStream_t stream);

}  // namespace blasst::cuda::sm90
