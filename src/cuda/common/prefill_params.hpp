// Parameters of one CUDA prefill launch: the call's operands and what prefill adds to them.
#pragma once

#include <cstdint>

#include "cuda/common/attention_operands.hpp"

namespace blasst::cuda {

struct PrefillParams : AttentionOperands {
  int32_t row_blocks;       // ceil(max_seqlen_q / block_m)
  int32_t tiles_per_group;  // ceil(max_seqlen_k / block_n), the trace's row length
  float scale_log2;         // scale * log2(e)
  int32_t v_prefetch;  // skip mode V load: 0 after the vote, 1 early after a kept tile, 2 always early

  int64_t* stats_per_head;  // [Hq, 2] (visited, skipped), zeroed by the launcher; may be null
  uint8_t* decisions;       // [B, Hq * row_blocks, tiles_per_group], may be null

  // FP8 with P V on the e4m3 wgmma (sm_90a, BLASST_CUDA_SM90_FP8_PV_E4M3): the workspace for V^T
  // [B, Hkv, Dv, vt_keys] e4m3 that the pre-pass writes; null otherwise.
  void* vt;
  int32_t vt_keys;  // max_seqlen_k rounded up to 128
};

}  // namespace blasst::cuda
