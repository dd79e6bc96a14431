// Parameters of the split-KV decode kernel, resolved on the host from blasst_args.
// Rows of a decision group: r = i * G + g for query row i < Lq_b and query head hk * G + g.
#pragma once

#include <cstdint>

namespace blasst::cuda::decode {

constexpr int kBlockN = 128;  // keys per KV tile (the decision tile width)

// Four warps per block. A block's shared memory holds two or three KV tiles, so two or three
// blocks share an SM: what one block waits for (a barrier, a tile), the others cover.
constexpr int kDecodeThreads = 128;

struct DecodeParams {
  // Tensors (element strides; the last dimension is contiguous).
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;  // may be null
  int64_t q_batch_stride, q_token_stride, q_head_stride;
  int64_t k_batch_stride, k_token_stride, k_head_stride;  // batch stride = page stride when paged
  int64_t v_batch_stride, v_token_stride, v_head_stride;
  int64_t o_batch_stride, o_token_stride, o_head_stride;
  int64_t lse_batch_stride, lse_token_stride, lse_head_stride;

  // Lengths (device memory) and paging.
  const int32_t* cu_seqlens_q;
  const int32_t* seqlens_q;
  const int32_t* cu_seqlens_k;
  const int32_t* seqlens_k;
  const int32_t* block_table;
  int64_t block_table_stride;
  int page_size;
  int page_shift;  // log2(page_size) when it is a power of two, else -1

  int batch, num_q_heads, num_kv_heads, group;  // group = G = Hq / Hkv
  int max_seqlen_q, max_seqlen_k;
  int causal;
  float scale;

  // Threshold: factor per call, or per KV head from device memory.
  float threshold_scale_factor;
  const float* per_kv_head_factor;

  int anchored;  // 1: BLASST_ORDER_ANCHORED
  int splits;

  // Split partial results: ws_ml [batch, Hkv, splits, rows_max, 2] = (m, l),
  // ws_o [batch, Hkv, splits, rows_max, Dv] (unnormalized). Unused when splits == 1.
  float* ws_ml;
  float* ws_o;
  int rows_max;  // G * max_seqlen_q

  // Statistics (device): per KV head (visited, skipped); totals (visited, skipped).
  unsigned long long* stats_per_head;
  unsigned long long* totals;
  uint8_t* decisions;  // [batch, Hkv, tiles_max] or null
  int tiles_max;
};

__host__ __device__ inline int ceil_div_int(int a, int b) { return (a + b - 1) / b; }

}  // namespace blasst::cuda::decode
