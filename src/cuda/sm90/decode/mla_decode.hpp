// Host-side entry of the sm_90a MLA decode kernel (absorbed MLA: Dqk 576, Dv 512, V the first 512
// values of the latent K). The decode engine (sm80/decode/decode_launch.cu) sends a call here
// when its head dims are 576/512 and runs everything around it: workspace, statistics, run info.
// Built when CMake's BLASST_CUDA_SM90_MLA_DECODE is on and sm_90a with CUTLASS is in the build.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include <blasst/blasst.h>

#include "cuda/sm80/decode/decode_params.cuh"

namespace blasst::cuda::sm90::mla {

constexpr int kRows = 64;    // block_m: (query head, row) pairs per decision group
constexpr int kBlockN = 64;  // keys per tile

inline bool is_mla_shape(const blasst_args& a) { return a.head_dim_qk == 576 && a.head_dim_v == 512; }

// Empty when the kernel takes the call, else why not (for BLASST_ERROR_UNSUPPORTED).
std::string unsupported_reason(const blasst_args& a);

// Decision groups per KV head: ceil(G * max_seqlen_q / 64).
int chunks(const blasst_args& a);

// KV splits per group: the caller's, or enough CTAs (one per SM) to fill the GPU once.
int pick_splits(const blasst_args& a, int sms);

// Launches the kernel over p (p.splits, p.rows_max, workspace, statistics and trace filled in,
// p.tiles_max = ceil(max_seqlen_k / 64)) and, with splits, decode's combine kernel.
cudaError_t launch(const blasst_args& a, bool skip, const decode::DecodeParams& p, cudaStream_t stream);

}  // namespace blasst::cuda::sm90::mla
