// Addressing of the operands of one attention call (blasst_args), shared by argument
// validation and every engine. All offsets are in elements.
#pragma once

#include <blasst/blasst.h>

#include <array>
#include <cstdint>
#include <utility>

namespace blasst::detail {

// Sequence lengths of batch entry b (host-side length arrays).
inline int64_t seqlen_q(const blasst_args& a, int64_t b) {
  if (a.cu_seqlens_q) return int64_t(a.cu_seqlens_q[b + 1]) - a.cu_seqlens_q[b];
  if (a.seqlens_q) return a.seqlens_q[b];
  return a.max_seqlen_q;
}
inline int64_t seqlen_k(const blasst_args& a, int64_t b) {
  if (a.cu_seqlens_k) return int64_t(a.cu_seqlens_k[b + 1]) - a.cu_seqlens_k[b];
  if (a.seqlens_k) return a.seqlens_k[b];
  return a.max_seqlen_k;
}

// Offset of element (entry b, row i, head h, 0) of a Q-side tensor (q, out, lse).
inline int64_t q_side_offset(const blasst_args& a, const blasst_tensor& t, int64_t b, int64_t i,
                             int64_t h) {
  const int64_t token = a.cu_seqlens_q ? a.cu_seqlens_q[b] + i : i;
  const int64_t base = a.cu_seqlens_q ? 0 : b * t.batch_stride;
  return base + token * t.token_stride + h * t.head_stride;
}

// Offset of element (entry b, key position k, KV head h, 0) of K or V, contiguous,
// ragged or paged.
inline int64_t kv_offset(const blasst_args& a, const blasst_tensor& t, int64_t b, int64_t k,
                         int64_t h) {
  if (a.block_table) {
    const int64_t page = a.block_table[b * a.block_table_stride + k / a.page_size];
    return page * t.batch_stride + (k % a.page_size) * t.token_stride + h * t.head_stride;
  }
  const int64_t token = a.cu_seqlens_k ? a.cu_seqlens_k[b] + k : k;
  const int64_t base = a.cu_seqlens_k ? 0 : b * t.batch_stride;
  return base + token * t.token_stride + h * t.head_stride;
}

// The threshold factor of batch entry b, KV head kv_head (SPEC section 4; host memory).
inline double threshold_factor(const blasst_args& a, int64_t b, int64_t kv_head) {
  if (a.threshold.per_kv_head_factor) return a.threshold.per_kv_head_factor[kv_head];
  if (a.threshold.per_request_factor) return a.threshold.per_request_factor[b];
  return a.threshold.threshold_scale_factor;
}

// The FP8 dequantization scale of one operand for KV head kv_head (1 when it is not FP8).
inline float dequant_scale(const blasst_args& a, const float* scale, int64_t kv_head) {
  return scale ? scale[a.scales.per_kv_head ? kv_head : 0] : 1.0f;
}

// Every pointer a call reads or writes, by its argument name (null where not given): what an
// engine checks lies in its memory space.
using NamedPointer = std::pair<const char*, const void*>;
inline std::array<NamedPointer, 17> call_pointers(const blasst_args& a) {
  return {{{"q.data", a.q.data}, {"k.data", a.k.data}, {"v.data", a.v.data}, {"out.data", a.out.data},
           {"lse.data", a.lse.data}, {"cu_seqlens_q", a.cu_seqlens_q}, {"seqlens_q", a.seqlens_q},
           {"cu_seqlens_k", a.cu_seqlens_k}, {"seqlens_k", a.seqlens_k}, {"block_table", a.block_table},
           {"threshold.per_kv_head_factor", a.threshold.per_kv_head_factor},
           {"threshold.per_request_factor", a.threshold.per_request_factor}, {"scales.q", a.scales.q},
           {"scales.k", a.scales.k}, {"scales.v", a.scales.v}, {"stats_per_head", a.stats_per_head},
           {"decisions", a.decisions}}};
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Decode decision groups per KV head (SPEC section 2): the KV head's (query head, row) pairs,
// head-major, in chunks of block_m pairs; block_m = 0 keeps them all in one group.
inline int64_t decode_chunks(const blasst_args& a, int64_t block_m) {
  if (block_m <= 0) return 1;
  return ceil_div(int64_t(a.num_q_heads / a.num_kv_heads) * a.max_seqlen_q, block_m);
}

// Number of decision groups per batch entry and their tile grid (SPEC section 2). Prefill:
// head-major (query head, row block); decode: KV-head-major (KV head, chunk).
inline int64_t groups_per_entry(const blasst_args& a, blasst_phase phase, int64_t block_m) {
  if (phase == BLASST_PHASE_DECODE) return int64_t(a.num_kv_heads) * decode_chunks(a, block_m);
  return int64_t(a.num_q_heads) * ceil_div(a.max_seqlen_q, block_m);
}

inline size_t dtype_size(blasst_dtype d) {
  return d == BLASST_DTYPE_FLOAT32 ? 4 : d == BLASST_DTYPE_FLOAT8_E4M3 ? 1 : 2;
}

}  // namespace blasst::detail
