// The sm_80 prefill kernel (runs on Ampere, Ada and Hopper): FlashAttention-2 style with
// the SPEC.md skip rule. One CTA = one decision group = kBlockM query rows of one query head
// of one batch entry; it walks that group's visible KV tiles of kBlockN keys in ascending order.
//
// Per CTA (kWarps warps, each owning kMTiles * 16 consecutive rows of the block):
//   smem Q [kBlockM, D], K [3][kBlockN, D] (two tiles ahead), V [2][kBlockN, D]; rows of D
//        elements in 16-byte chunks, chunk c of row r stored at chunk c ^ (r & 7) so that
//        ldmatrix and cp.async touch eight different bank groups.
//   regs S [kMTiles][kBlockN/8][4] fp32 scores of the warp's rows, O [kMTiles][D/8][4] fp32,
//        running max m (raw, unscaled scores) and partial row sums l per owned row.
// A tile: S = Q K^T (mma.sync m16n8k16, fp32 accumulate), mask, row max; in skip mode the
// group votes (a row votes skip iff mt < m + ln(lambda) / scale in fp32, the rule of SPEC.md on raw scores;
// warp vote, per-warp flags, the tile's one barrier); a skipped tile ends there. A kept tile
// rescales O, computes P = exp2((S - m) * scale * log2 e) and O += P V. V of a tile is loaded
// before the vote only when the tile is surely or (p.v_prefetch) probably kept.
#pragma once

#include <cstdint>

#include "cuda/sm80/prefill/prefill_entry.cuh"
#include "cuda/common/prefill_params.hpp"
#include "cuda/common/ptx.cuh"
#include "cuda/common/quad_reduce.cuh"
#include "cuda/common/skip_threshold.cuh"

namespace blasst::cuda {

template <class T, int D_, int kBlockM_, int kBlockN_, int kWarps_>
struct PrefillConfig {
  using Elem = T;
  static constexpr int D = D_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMTiles = kBlockM / (16 * kWarps);  // m16 tiles per warp
  static constexpr int kNTilesS = kBlockN / 8;             // n8 tiles of S per warp
  static constexpr int kNTilesO = D / 8;                   // n8 tiles of O per warp
  static constexpr int kChunks = D / 8;                    // 16-byte chunks per row
  static constexpr int kRowsPerPass = kThreads / kChunks;  // rows one cp.async pass covers
  static constexpr int kMinBlocks = D <= 128 ? 2 : 1;
  static constexpr size_t kSmemBytes = size_t(kBlockM + 5 * kBlockN) * D * sizeof(T);
  static_assert(kBlockM % (16 * kWarps) == 0 && kBlockN % 16 == 0 && D % 64 == 0, "tile shape");
  static_assert(kThreads % kChunks == 0, "a cp.async pass must cover whole rows");
};

namespace detail {

constexpr float kNegInf = -__builtin_huge_valf();

// Byte offset of chunk c of row r in a swizzled [rows, D] tile.
template <int D>
__device__ __forceinline__ uint32_t swz(int r, int c) {
  return uint32_t(r * D + ((c ^ (r & 7)) << 3)) * 2u;
}

}  // namespace detail

template <class Cfg, bool kSkip>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks) prefill_kernel(const PrefillParams p) {
  using T = typename Cfg::Elem;
  constexpr int D = Cfg::D;
  constexpr int BM = Cfg::kBlockM;
  constexpr int BN = Cfg::kBlockN;
  constexpr int MT = Cfg::kMTiles;
  constexpr int NS = Cfg::kNTilesS;
  constexpr int NO = Cfg::kNTilesO;
  constexpr int CH = Cfg::kChunks;
  constexpr float kNegInf = detail::kNegInf;

  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ int vote_flags[2 * Cfg::kWarps];  // skip mode: per-warp votes of tiles t, t+1
  const uint32_t sQ = ptx::smem_addr(smem);
  const uint32_t sK0 = sQ + uint32_t(BM * D * sizeof(T));
  const uint32_t sV = sK0 + uint32_t(3 * BN * D * sizeof(T));

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  // CTA placement and entry lengths: prefill_entry.cuh.
  const CtaPlace place = cta_place(p, blockIdx.x, p.row_blocks);
  const int h = place.head;
  const int blk = place.row_block;
  const int b = blockIdx.y;
  const EntryLengths entry = entry_lengths(p, b);
  const int q_start = entry.q_start, lq = entry.lq, k_start = entry.k_start, lk = entry.lk;
  const int row0 = blk * BM;
  if (row0 >= lq) return;
  const int rows_here = min(BM, lq - row0);
  const int kv_head = h / p.q_per_kv;
  auto key_end = [&](int i) { return entry.key_end(i, p.causal != 0); };
  const int ke_min = key_end(row0);
  const int ke_max = key_end(row0 + rows_here - 1);
  const int n_tiles = (ke_max + BN - 1) / BN;

  // Element offsets of this CTA's operands.
  const T* q_ptr = static_cast<const T*>(p.q) + (p.cu_seqlens_q ? int64_t(q_start) * p.q_token_stride : int64_t(b) * p.q_batch_stride) +
                   int64_t(h) * p.q_head_stride + int64_t(row0) * p.q_token_stride;
  // Output pointers, built where they are used so they hold no registers through the main loop.
  auto out_ptr = [&]() {
    return static_cast<T*>(p.out) +
           (p.cu_seqlens_q ? int64_t(q_start) * p.o_token_stride : int64_t(b) * p.o_batch_stride) +
           int64_t(h) * p.o_head_stride + int64_t(row0) * p.o_token_stride;
  };
  auto lse_out_ptr = [&]() -> float* {
    if (!p.lse) return nullptr;
    return p.lse + (p.cu_seqlens_q ? int64_t(q_start) * p.lse_token_stride : int64_t(b) * p.lse_batch_stride) +
           int64_t(h) * p.lse_head_stride + int64_t(row0) * p.lse_token_stride;
  };
  const bool paged = p.block_table != nullptr;
  const int64_t kv_entry = paged ? 0 : (p.cu_seqlens_k ? int64_t(k_start) : 0);
  const T* k_ptr = static_cast<const T*>(p.k) + int64_t(kv_head) * p.k_head_stride +
                   (paged ? 0 : (p.cu_seqlens_k ? kv_entry * p.k_token_stride : int64_t(b) * p.k_batch_stride));
  const T* v_ptr = static_cast<const T*>(p.v) + int64_t(kv_head) * p.v_head_stride +
                   (paged ? 0 : (p.cu_seqlens_k ? kv_entry * p.v_token_stride : int64_t(b) * p.v_batch_stride));
  const int32_t* pages = paged ? p.block_table + int64_t(b) * p.block_table_stride : nullptr;

  if (n_tiles == 0) {
    T* o_ptr = out_ptr();
    float* lse_ptr = lse_out_ptr();
    // No row of the group sees a key: O = 0, LSE = -inf, nothing visited.
    for (int idx = tid; idx < rows_here * CH; idx += Cfg::kThreads) {
      const int r = idx / CH, c = idx % CH;
      *reinterpret_cast<uint4*>(o_ptr + int64_t(r) * p.o_token_stride + c * 8) = make_uint4(0, 0, 0, 0);
    }
    if (lse_ptr)
      for (int r = tid; r < rows_here; r += Cfg::kThreads) lse_ptr[int64_t(r) * p.lse_token_stride] = kNegInf;
    return;
  }

  // Threshold of this group (SPEC section 4), computed like the CPU engine.
  const SkipThreshold threshold =
      kSkip ? skip_threshold(threshold_factor(p, b, kv_head), lk)
            : SkipThreshold{};
  const bool skip_on = threshold.on;
  const float log_lambda = threshold.log_lambda;
  const int64_t trace_base =
      p.decisions ? (int64_t(b) * p.num_q_heads * p.row_blocks + int64_t(h) * p.row_blocks + blk) * p.tiles_per_group : 0;

  // ---- global -> shared copies (cp.async, 16 bytes per thread and pass) ----
  const int my_chunk = tid % CH;
  const int my_row = tid / CH;
  static_assert(Cfg::kRowsPerPass % 8 == 0, "rows of one pass keep their swizzle phase");
  const uint32_t my_dst = detail::swz<D>(my_row, my_chunk);  // + pass * kRowsPerPass rows
  constexpr uint32_t kPassBytes = Cfg::kRowsPerPass * D * sizeof(T);
  auto load_q = [&]() {
    const T* src = q_ptr + int64_t(my_row) * p.q_token_stride + my_chunk * 8;
    const int64_t pass_stride = int64_t(Cfg::kRowsPerPass) * p.q_token_stride;
#pragma unroll
    for (int i = 0; i < BM / Cfg::kRowsPerPass; ++i) {
      const bool valid = my_row + i * Cfg::kRowsPerPass < rows_here;
      ptx::cp_async_16(sQ + my_dst + i * kPassBytes, valid ? src + i * pass_stride : q_ptr, valid);
    }
  };
  // K or V tile t (keys [t*BN, t*BN + BN)), rows past lk zero-filled. Paged K/V looks each
  // row's page up in the block table (shift and mask when page_size is a power of two).
  auto load_kv = [&](const T* base, int64_t token_stride, int64_t page_stride, int t, uint32_t dst) {
    const int key0 = t * BN + my_row;
    if (!paged) {
      // One pointer stepped from pass to pass: a 64-bit add each, where `src + i * stride`
      // costs a 64-bit multiply per pass (about a quarter of the loop's integer work).
      const T* src = base + int64_t(key0) * token_stride + my_chunk * 8;
      const int64_t pass_stride = int64_t(Cfg::kRowsPerPass) * token_stride;
#pragma unroll
      for (int i = 0; i < BN / Cfg::kRowsPerPass; ++i, src += pass_stride) {
        const bool valid = key0 + i * Cfg::kRowsPerPass < lk;
        ptx::cp_async_16(dst + my_dst + i * kPassBytes, valid ? src : base, valid);
      }
    } else if (p.page_shift >= 0 && p.page_size >= Cfg::kRowsPerPass) {
      // Pages of a power of two >= the rows of a pass: a tile starts on a page boundary or inside
      // one page (BN and the page size are powers of two), and this thread's rows key0 + 8 i
      // (my_row < kRowsPerPass) change page only where (i * kRowsPerPass) % page_size == 0. One
      // block-table lookup per page, and the pointer stepped by a pass within it.
      const int64_t pass_stride = int64_t(Cfg::kRowsPerPass) * token_stride;
      const T* src = base;
#pragma unroll
      for (int i = 0; i < BN / Cfg::kRowsPerPass; ++i, src += pass_stride) {
        const int key = key0 + i * Cfg::kRowsPerPass;
        const bool valid = key < lk;
        if (((i * Cfg::kRowsPerPass) & (p.page_size - 1)) == 0 && valid)
          src = base + int64_t(pages[key >> p.page_shift]) * page_stride +
                int64_t(key & (p.page_size - 1)) * token_stride + my_chunk * 8;
        ptx::cp_async_16(dst + my_dst + i * kPassBytes, valid ? src : base, valid);
      }
    } else {
#pragma unroll
      for (int i = 0; i < BN / Cfg::kRowsPerPass; ++i) {
        const int key = key0 + i * Cfg::kRowsPerPass;
        const bool valid = key < lk;
        const T* src = base;
        if (valid) {
          int page_index, slot;
          if (p.page_shift >= 0) {
            page_index = key >> p.page_shift;
            slot = key & ((1 << p.page_shift) - 1);
          } else {
            page_index = key / p.page_size;
            slot = key - page_index * p.page_size;
          }
          src += int64_t(pages[page_index]) * page_stride + int64_t(slot) * token_stride + my_chunk * 8;
        }
        ptx::cp_async_16(dst + my_dst + i * kPassBytes, src, valid);
      }
    }
  };
  auto load_k = [&](int t, int buf) {
    load_kv(k_ptr, p.k_token_stride, p.k_batch_stride, t, sK0 + uint32_t(buf * BN * D * sizeof(T)));
  };
  auto load_v = [&](int t) {
    load_kv(v_ptr, p.v_token_stride, p.v_batch_stride, t, sV + uint32_t((t & 1) * BN * D * sizeof(T)));
  };

  // ---- per-thread fragment coordinates ----
  const int g = lane >> 2;  // accumulator row within an m16 tile (and +8)
  const int qd = lane & 3;  // accumulator column pair
  const int warp_row0 = warp * MT * 16;
  // ldmatrix byte offsets of this lane (row r, chunk c stored at c ^ (r & 7)); the row of a
  // lane keeps r & 7 == lane & 7, and stepping 16 elements along D (chunk + 2) is an xor with
  // kk << 5 on the offset since row * D * 2 has no bits below D * 2.
  const int l7 = lane & 7;
  // A operand (Q) and V^T: rows (lane & 7) + 8 * bit 3 of lane, chunk lane >> 4.
  const uint32_t a_off = uint32_t(((lane & 7) + ((lane >> 3) & 1) * 8) * D * 2 + ((((lane >> 4)) ^ l7) << 4));
  // B operand (K): rows (lane & 7) + 8 * (lane >> 4), chunk bit 3 of lane.
  const uint32_t b_off = uint32_t(((lane & 7) + (lane >> 4) * 8) * D * 2 + ((((lane >> 3) & 1) ^ l7) << 4));
  const uint32_t q_off = a_off + uint32_t(warp_row0 * D * 2);
  float s[MT][NS][4];
  float o[MT][NO][4];
  float m[MT][2], l[MT][2];
#pragma unroll
  for (int mi = 0; mi < MT; ++mi) {
#pragma unroll
    for (int j = 0; j < NO; ++j) o[mi][j][0] = o[mi][j][1] = o[mi][j][2] = o[mi][j][3] = 0.0f;
    m[mi][0] = m[mi][1] = kNegInf;
    l[mi][0] = l[mi][1] = 0.0f;
  }

  // S = Q K^T over the K tile in buffer buf.
  auto compute_s = [&](int buf) {
    const uint32_t kbase = sK0 + uint32_t(buf * BN * D * sizeof(T));
#pragma unroll
    for (int mi = 0; mi < MT; ++mi)
#pragma unroll
      for (int j = 0; j < NS; ++j) s[mi][j][0] = s[mi][j][1] = s[mi][j][2] = s[mi][j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mi = 0; mi < MT; ++mi)
        ptx::ldmatrix_x4(sQ + (q_off ^ uint32_t(kk << 5)) + uint32_t(mi * 16 * D * 2), a[mi][0], a[mi][1], a[mi][2],
                         a[mi][3]);
#pragma unroll
      for (int nj = 0; nj < NS / 2; ++nj) {
        uint32_t b0, b1, b2, b3;
        ptx::ldmatrix_x4(kbase + (b_off ^ uint32_t(kk << 5)) + uint32_t(nj * 16 * D * 2), b0, b1, b2, b3);
#pragma unroll
        for (int mi = 0; mi < MT; ++mi) {
          ptx::mma_16816<T>(s[mi][2 * nj], a[mi], b0, b1);
          ptx::mma_16816<T>(s[mi][2 * nj + 1], a[mi], b2, b3);
        }
      }
    }
  };
  // Keys a row does not see become -inf (causal diagonal, keys past lk).
  auto mask_s = [&](int t) {
#pragma unroll
    for (int mi = 0; mi < MT; ++mi)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int ke = key_end(row0 + warp_row0 + mi * 16 + g + hf * 8) - t * BN;
#pragma unroll
        for (int j = 0; j < NS; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e)
            if (j * 8 + qd * 2 + e >= ke) s[mi][j][hf * 2 + e] = kNegInf;
      }
  };
  // mt[mi][hf] = max of the lane's scores of the row in S (thread_row_max), then of the row's
  // scores (quad_max_rows: the same value in the row's four lanes; idempotent).
  auto thread_row_max = [&](float (&mt)[MT][2]) {
#pragma unroll
    for (int mi = 0; mi < MT; ++mi)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        // pairwise tree over the 2 * NS values: a short dependency chain before the vote
        // (skip mode: NaN-propagating, see tree_max)
        float v[NS];
#pragma unroll
        for (int j = 0; j < NS; ++j)
          v[j] = max_of<kSkip>(s[mi][j][hf * 2], s[mi][j][hf * 2 + 1]);
        mt[mi][hf] = tree_max<kSkip>(v);
      }
  };
  auto quad_max_rows = [&](float (&mt)[MT][2]) {
#pragma unroll
    for (int mi = 0; mi < MT; ++mi)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) mt[mi][hf] = quad_max<kSkip>(mt[mi][hf]);
  };
  auto row_max = [&](float (&mt)[MT][2]) {
    thread_row_max(mt);
    quad_max_rows(mt);
  };
  auto needs_mask = [&](int t) { return (t + 1) * BN > ke_min; };

  // ---- prologue: Q, K[0] and K[1] in flight (K is prefetched two tiles ahead so that runs of
  // skipped tiles, which take half a tile's time, still find K landed); the anchored order
  // first seeds m from tile 0 and the group's last tile (that one staged in buffer 2) ----
  load_q();
  load_k(0, 0);
  ptx::cp_async_commit();
  if (kSkip && skip_on && p.anchored) {
    if (n_tiles > 1) {
      load_k(n_tiles - 1, 2);
      ptx::cp_async_commit();
    }
    ptx::cp_async_wait<0>();
    __syncthreads();
    float mt[MT][2];
    compute_s(0);
    if (needs_mask(0)) mask_s(0);
    row_max(mt);
#pragma unroll
    for (int mi = 0; mi < MT; ++mi) m[mi][0] = mt[mi][0], m[mi][1] = mt[mi][1];
    if (n_tiles > 1) {
      compute_s(2);
      if (needs_mask(n_tiles - 1)) mask_s(n_tiles - 1);
      row_max(mt);
#pragma unroll
      for (int mi = 0; mi < MT; ++mi) m[mi][0] = max_of<kSkip>(m[mi][0], mt[mi][0]), m[mi][1] = max_of<kSkip>(m[mi][1], mt[mi][1]);
    }
    __syncthreads();  // buffer 2 is refilled in the first iteration
  }
  if (n_tiles > 1) {
    load_k(1, 1);
    ptx::cp_async_commit();
    ptx::cp_async_wait<1>();
  } else {
    ptx::cp_async_wait<0>();
  }
  __syncthreads();  // Q and K[0] visible

  // One barrier per tile, right after S: it publishes K[t+1] and V[t] (each thread waited for
  // its own copies just before), and tells every warp that all warps are done with QK^T(t)
  // and P.V(t-1). So at the top of tile t the buffers of K[t+2] (= that of K[t-1]) and of
  // V[t] (= that of V[t-2]) are free without another barrier. In skip mode the barrier also
  // carries the vote.
  const float scale = p.scale;
  const float scale_log2 = p.scale_log2;
  const float log_lambda_raw = log_lambda / scale;
  int skipped = 0;
  int kb = 0;  // buffer of K[t] = t % 3
  bool prev_kept = true;
  for (int t = 0; t < n_tiles; ++t, kb = kb == 2 ? 0 : kb + 1) {
    // V[t] goes out before the vote when the tile is surely kept (dense, anchors, skipping off
    // for this group) or, with p.v_prefetch, predicted kept because tile t-1 was: kept and
    // skipped tiles come in runs, so a wasted prefetch happens about once per run of skips.
    const bool anchor = t == 0 || (p.anchored && t == n_tiles - 1);
    const bool vote = kSkip && skip_on && !anchor;
    const bool v_early = !vote || p.v_prefetch == 2 || (p.v_prefetch == 1 && prev_kept);
    if (v_early) {
      load_v(t);
      ptx::cp_async_commit();
    }
    const bool k_ahead = t + 2 < n_tiles;
    if (k_ahead) {
      load_k(t + 2, kb == 0 ? 2 : kb - 1);
      ptx::cp_async_commit();
    }
    compute_s(kb);
    if (needs_mask(t)) mask_s(t);
    float mt[MT][2];
    thread_row_max(mt);

    // Own copies of K[t+1] and (early) V[t] landed; only K[t+2] may stay in flight.
    if (k_ahead)
      ptx::cp_async_wait<1>();
    else
      ptx::cp_async_wait<0>();
    if (vote) {
      // A row votes keep iff it exists and !(mt < keep_threshold(m)), on each lane's maximum
      // over its part of the row (quad_reduce.cuh: a skipped tile does no quad reduction at all;
      // the scale is positive, the engine runs no other).
      bool keep = false;
#pragma unroll
      for (int mi = 0; mi < MT; ++mi)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const bool exists = warp_row0 + mi * 16 + g + hf * 8 < rows_here;
          keep |= exists && !(mt[mi][hf] < keep_threshold(m[mi][hf], log_lambda_raw));
        }
      // Warp vote, then the tile's barrier over per-warp flags. The flags are double-buffered
      // by tile parity: a warp writes the flags of tile t+2 only after every warp passed the
      // barrier of tile t+1, that is after every warp read the flags of tile t.
      volatile int* flags = vote_flags + (t & 1) * Cfg::kWarps;
      const bool warp_keep = __any_sync(0xffffffffu, keep);
      if (lane == 0) flags[warp] = warp_keep;
      __syncthreads();
      int any = 0;
#pragma unroll
      for (int w = 0; w < Cfg::kWarps; ++w) any |= flags[w];
      prev_kept = any != 0;
      if (!prev_kept) {
        ++skipped;
        if (p.decisions && tid == 0) p.decisions[trace_base + t] = 2;  // BLASST_TILE_SKIPPED
        continue;
      }
    } else {
      __syncthreads();
    }
    quad_max_rows(mt);
    if (!v_early) {
      load_v(t);
      ptx::cp_async_commit();
    }
    if (p.decisions && tid == 0) p.decisions[trace_base + t] = 1;  // BLASST_TILE_KEPT

    // Online softmax: rescale O and l by exp(m_old - m_new), P = exp(S - m_new) in place.
#pragma unroll
    for (int mi = 0; mi < MT; ++mi)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const float m_new = max_of<kSkip>(m[mi][hf], mt[mi][hf]);
        const float m_use = m_new == kNegInf ? 0.0f : m_new;
        const float alpha = ptx::ex2((m[mi][hf] - m_use) * scale_log2);
        const float ms = m_use * scale_log2;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < NS; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float pv = ptx::ex2(fmaf(s[mi][j][hf * 2 + e], scale_log2, -ms));
            s[mi][j][hf * 2 + e] = pv;
            sum += pv;
          }
        l[mi][hf] = l[mi][hf] * alpha + sum;
#pragma unroll
        for (int j = 0; j < NO; ++j) o[mi][j][hf * 2] *= alpha, o[mi][j][hf * 2 + 1] *= alpha;
        m[mi][hf] = m_new;
      }

    if (!v_early) {
      ptx::cp_async_wait<0>();  // V[t], loaded after the vote
      __syncthreads();
    }

    // O += P V, P taken from the S accumulators (same register layout as an A fragment).
    const uint32_t v_base = sV + uint32_t((t & 1) * BN * D * sizeof(T));
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mi = 0; mi < MT; ++mi) {
        a[mi][0] = ptx::pack2<T>(s[mi][2 * kk][0], s[mi][2 * kk][1]);
        a[mi][1] = ptx::pack2<T>(s[mi][2 * kk][2], s[mi][2 * kk][3]);
        a[mi][2] = ptx::pack2<T>(s[mi][2 * kk + 1][0], s[mi][2 * kk + 1][1]);
        a[mi][3] = ptx::pack2<T>(s[mi][2 * kk + 1][2], s[mi][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dj = 0; dj < NO / 2; ++dj) {
        uint32_t b0, b1, b2, b3;
        ptx::ldmatrix_x4_trans(v_base + (a_off ^ uint32_t(dj << 5)) + uint32_t(kk * 16 * D * 2), b0, b1, b2, b3);
#pragma unroll
        for (int mi = 0; mi < MT; ++mi) {
          ptx::mma_16816<T>(o[mi][2 * dj], a[mi], b0, b1);
          ptx::mma_16816<T>(o[mi][2 * dj + 1], a[mi], b2, b3);
        }
      }
    }
  }

  // ---- epilogue: O = o / l, LSE = m * scale + ln(l); rows that saw nothing get 0 and -inf ----
  T* o_ptr = out_ptr();
  float* lse_ptr = lse_out_ptr();
#pragma unroll
  for (int mi = 0; mi < MT; ++mi)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const float sum = quad_sum(l[mi][hf]);
      const int r = warp_row0 + mi * 16 + g + hf * 8;
      if (r >= rows_here) continue;
      const bool empty = m[mi][hf] == kNegInf || sum == 0.0f;
      const float inv = empty ? 0.0f : 1.0f / sum;
      T* orow = o_ptr + int64_t(r) * p.o_token_stride + qd * 2;
#pragma unroll
      for (int j = 0; j < NO; ++j)
        *reinterpret_cast<uint32_t*>(orow + j * 8) = ptx::pack2<T>(o[mi][j][hf * 2] * inv, o[mi][j][hf * 2 + 1] * inv);
      if (lse_ptr && qd == 0) lse_ptr[int64_t(r) * p.lse_token_stride] = empty ? kNegInf : m[mi][hf] * scale + logf(sum);
    }

  if (p.stats_per_head && tid == 0) {
    atomicAdd(reinterpret_cast<unsigned long long*>(p.stats_per_head + 2 * h), (unsigned long long)n_tiles);
    if (skipped) atomicAdd(reinterpret_cast<unsigned long long*>(p.stats_per_head + 2 * h + 1), (unsigned long long)skipped);
  }
}

}  // namespace blasst::cuda
