// Where a prefill CTA sits (query head, row block, batch entry) and the lengths of its batch
// entry: shared by the sm_80 and sm_90a prefill kernels so that both order their CTAs and read
// ragged or padded lengths the same way.
#pragma once

#include "cuda/common/prefill_params.hpp"

namespace blasst::cuda {

__device__ __forceinline__ int clamp_int(int x, int lo, int hi) { return x < lo ? lo : (x > hi ? hi : x); }

// CTA order: the query heads of one KV head for one row block are consecutive, then the next
// row block (causal: heaviest first), then the next KV head. CTAs running at the same time then
// share one or two KV heads, whose K/V stay in L2 even when skipping lets them drift apart.
struct CtaPlace {
  int head;       // query head
  int row_block;  // of `row_blocks` blocks of rows
};
__device__ __forceinline__ CtaPlace cta_place(const PrefillParams& p, int cta, int row_blocks) {
  const int g_in = cta % p.q_per_kv;
  const int blk_i = (cta / p.q_per_kv) % row_blocks;
  CtaPlace c;
  c.head = (cta / p.q_per_kv / row_blocks) * p.q_per_kv + g_in;
  c.row_block = p.causal ? row_blocks - 1 - blk_i : blk_i;
  return c;
}

// Lengths of batch entry b (device memory), clamped to the padded bounds, and the first token
// of its Q and K rows in packed (ragged) layouts.
struct EntryLengths {
  int q_start = 0, lq = 0, k_start = 0, lk = 0;
  // Row i of the entry sees keys [0, key_end(i)) (causal: bottom-right aligned).
  __device__ __forceinline__ int key_end(int i, bool causal) const {
    return causal ? clamp_int(i + lk - lq + 1, 0, lk) : lk;
  }
};
__device__ __forceinline__ EntryLengths entry_lengths(const PrefillParams& p, int b) {
  EntryLengths e;
  e.lq = p.max_seqlen_q;
  e.lk = p.max_seqlen_k;
  if (p.cu_seqlens_q) {
    e.q_start = p.cu_seqlens_q[b];
    e.lq = p.cu_seqlens_q[b + 1] - e.q_start;
  } else if (p.seqlens_q) {
    e.lq = p.seqlens_q[b];
  }
  if (p.cu_seqlens_k) {
    e.k_start = p.cu_seqlens_k[b];
    e.lk = p.cu_seqlens_k[b + 1] - e.k_start;
  } else if (p.seqlens_k) {
    e.lk = p.seqlens_k[b];
  }
  e.lq = clamp_int(e.lq, 0, p.max_seqlen_q);
  e.lk = clamp_int(e.lk, 0, p.max_seqlen_k);
  return e;
}

}  // namespace blasst::cuda
