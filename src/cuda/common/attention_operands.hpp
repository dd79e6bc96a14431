// What every CUDA attention kernel reads of a call: tensors with their element strides, the
// per-entry lengths and paging, head counts, causality, scale and threshold. The prefill and
// decode parameter blocks extend it with their own fields; the host fills it once from
// blasst_args (attention_operands).
#pragma once

#include <cstdint>

#include "blasst/blasst.h"

namespace blasst::cuda {

struct AttentionOperands {
  const void* q;   // [B, Lq, Hq, D] (or packed tokens with cu_seqlens_q)
  const void* k;   // [B, Lk, Hkv, D] (packed, or pages [num_pages, page_size, Hkv, D])
  const void* v;
  void* out;       // like q
  float* lse;      // [B, Lq, Hq] fp32, may be null

  // Element strides; the last dimension is contiguous. Paged K/V: batch stride = page stride.
  int64_t q_batch_stride, q_token_stride, q_head_stride;
  int64_t k_batch_stride, k_token_stride, k_head_stride;
  int64_t v_batch_stride, v_token_stride, v_head_stride;
  int64_t o_batch_stride, o_token_stride, o_head_stride;
  int64_t lse_batch_stride, lse_token_stride, lse_head_stride;

  // Lengths in device memory (each may be null; see blasst_args) and paging.
  const int32_t* cu_seqlens_q;
  const int32_t* seqlens_q;
  const int32_t* cu_seqlens_k;
  const int32_t* seqlens_k;
  const int32_t* block_table;  // [B, block_table_stride], null for contiguous K/V
  int64_t block_table_stride;
  int32_t page_size;
  int32_t page_shift;  // log2(page_size) when it is a power of two, else -1

  int32_t batch, num_q_heads, num_kv_heads, q_per_kv;  // q_per_kv = G = Hq / Hkv
  int32_t max_seqlen_q, max_seqlen_k;
  int32_t causal;
  int32_t anchored;  // BLASST_ORDER_ANCHORED
  float scale;       // > 0 (the default 1/sqrt(D) resolved)

  float threshold_scale_factor;
  const float* per_kv_head_factor;  // [num_kv_heads], device memory, null = not per head
  const float* per_request_factor;  // [batch], device memory, read at run time (graph replays)

  // FP8 dequantization scales (device memory; null for operands not in FP8): one value, or one
  // per KV head when scales_per_kv_head.
  const float* q_scale;
  const float* k_scale;
  const float* v_scale;
  int32_t scales_per_kv_head;
};

// The operands of a validated call.
AttentionOperands attention_operands(const blasst_args& a);

// Whether a call runs the skip instantiation of a kernel: a positive scalar, or factors in
// device memory whose values the host does not read (they may change before a graph replay).
inline bool skip_instantiation(const blasst_threshold& t) {
  return t.threshold_scale_factor > 0.0f || t.per_kv_head_factor != nullptr || t.per_request_factor != nullptr;
}

}  // namespace blasst::cuda
