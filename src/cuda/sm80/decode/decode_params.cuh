// Parameters of the split-KV decode kernel, resolved on the host from blasst_args.
// Rows of a decision group: r = i * G + g for query row i < Lq_b and query head hk * G + g.
#pragma once

#include <cstdint>

#include "cuda/common/attention_operands.hpp"

namespace blasst::cuda::decode {

constexpr int kBlockN = 128;  // keys per KV tile (the decision tile width)

// Four warps per block. A block's shared memory holds two or three KV tiles, so two or three
// blocks share an SM: what one block waits for (a barrier, a tile), the others cover.
constexpr int kDecodeThreads = 128;

struct DecodeParams : AttentionOperands {
  int splits;

  // Split partial results: ws_ml [batch, Hkv, splits, rows_max, 2] = (m, l),
  // ws_o [batch, Hkv, splits, rows_max, Dv] (unnormalized). Unused when splits == 1.
  float* ws_ml;
  float* ws_o;
  int rows_max;  // G * max_seqlen_q

  // Statistics (device): per KV head (visited, skipped); totals (visited, skipped), null when
  // the call asked for no run info.
  unsigned long long* stats_per_head;
  unsigned long long* totals;
  uint8_t* decisions;  // [batch, Hkv, tiles_max] or null
  int tiles_max;
};

__host__ __device__ inline int ceil_div_int(int a, int b) { return (a + b - 1) / b; }

}  // namespace blasst::cuda::decode
