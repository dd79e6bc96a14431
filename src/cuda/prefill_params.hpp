// Parameters of one CUDA prefill launch: plain data shared by the host launcher and the
// kernels. Offsets and strides are in elements of the tensor's dtype.
#pragma once

#include <cstdint>

namespace blasst::cuda {

struct PrefillParams {
  const void* q;   // [B, Lq, Hq, D] (or packed tokens with cu_seqlens_q)
  const void* k;   // [B, Lk, Hkv, D] (packed, or pages [num_pages, page_size, Hkv, D])
  const void* v;
  void* out;       // like q
  float* lse;      // [B, Lq, Hq] fp32, may be null

  int64_t q_batch_stride, q_token_stride, q_head_stride;
  int64_t k_batch_stride, k_token_stride, k_head_stride;
  int64_t v_batch_stride, v_token_stride, v_head_stride;
  int64_t o_batch_stride, o_token_stride, o_head_stride;
  int64_t lse_batch_stride, lse_token_stride, lse_head_stride;

  // Lengths in device memory (each may be null; see blasst_args).
  const int32_t* cu_seqlens_q;
  const int32_t* seqlens_q;
  const int32_t* cu_seqlens_k;
  const int32_t* seqlens_k;
  const int32_t* block_table;  // [B, block_table_stride], null for contiguous K/V
  int32_t block_table_stride;
  int32_t page_size;
  int32_t page_shift;  // log2(page_size) when it is a power of two, else -1

  int32_t batch, num_q_heads, num_kv_heads, q_per_kv;
  int32_t max_seqlen_q, max_seqlen_k;
  int32_t row_blocks;  // ceil(max_seqlen_q / block_m)
  int32_t tiles_per_group;  // ceil(max_seqlen_k / block_n), the trace's row length

  float scale;       // > 0
  float scale_log2;  // scale * log2(e)
  int32_t causal;
  int32_t anchored;  // BLASST_ORDER_ANCHORED
  int32_t v_prefetch;  // skip mode V load: 0 after the vote, 1 early after a kept tile, 2 always early

  float threshold_scale_factor;
  const float* per_kv_head_factor;  // device memory, null = use the scalar

  int64_t* stats_per_head;  // [Hq, 2] (visited, skipped), zeroed by the launcher; may be null
  uint8_t* decisions;       // [B, Hq * row_blocks, tiles_per_group], may be null
};

}  // namespace blasst::cuda
