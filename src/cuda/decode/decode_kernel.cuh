// Split-KV decode kernel with the BLASST vote (sm_80+).
//
// One block = one decision group (all G query heads of KV head hk times the Lq query rows of
// entry b, padded to 16 * MT rows) over one contiguous chunk of its KV tiles (split).
// Per tile of kBlockN = 128 keys:
//   S [rows, 128] = scale * Q K^T      warp w of D/16: 128/(D/16) keys, mma.sync
//   vote                               row maxima across warps in shared memory; the tile is
//                                      skipped iff every existing row votes skip (SPEC 3)
//   if kept: V load is issued now      so bytes of V are read only for kept tiles
//            P = exp(S - m_new) -> shared memory, l and m updated at once
//   O = O * alpha + P V                deferred by one tile: V's latency hides behind the
//                                      next tile's Q K^T. warp w: 16 output columns
// K tiles stream through a kStages-deep cp.async pipeline. Every iteration commits exactly
// two cp.async groups (V of this tile, possibly empty; K of tile + kStages, possibly empty),
// which is what the wait_group counts below rely on.
#pragma once

#include <cmath>

#include "cuda/decode/decode_params.cuh"
#include "cuda/decode/tile_layout.cuh"
#include "cuda/ptx.cuh"

namespace blasst::cuda::decode {

constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) { ptx::ldmatrix_x4(addr, r[0], r[1], r[2], r[3]); }
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  ptx::ldmatrix_x4_trans(addr, r[0], r[1], r[2], r[3]);
}

template <int D, int MT>
struct DecodeSmem {
  static constexpr int kWarps = decode_threads<D>() / 32;
  static constexpr int kRowsPad = 16 * MT;
  // K tiles in flight next to two V buffers (<= 227 KB of shared memory). Four stages for
  // one m-tile fit too but measured slower on paged caches (H100, 1fb00f3): three it is.
  static constexpr int kStages = (MT <= 2 || D == 64) ? 3 : 2;
  static constexpr int kTileBytes = kBlockN * D * 2;
  static constexpr int kOffK = 0;
  static constexpr int kOffV = kOffK + kStages * kTileBytes;
  static constexpr int kOffP = kOffV + 2 * kTileBytes;
  static constexpr int kOffQ = kOffP + 2 * kRowsPad * kBlockN * 2;
  static constexpr int kOffMax = kOffQ + kRowsPad * D * 2;  // float [warps][rows]
  static constexpr int kOffSum = kOffMax + kWarps * kRowsPad * 4;
  static constexpr int kBytes = kOffSum + kWarps * kRowsPad * 4;
};

__device__ __forceinline__ int entry_len(const int32_t* cu, const int32_t* lens, int b, int max_len) {
  if (cu) return cu[b + 1] - cu[b];
  if (lens) return lens[b];
  return max_len;
}

__device__ __forceinline__ int64_t q_side_offset(const DecodeParams& p, int64_t batch_stride, int64_t token_stride,
                                                 int64_t head_stride, int b, int i, int h) {
  const int64_t token = p.cu_seqlens_q ? int64_t(p.cu_seqlens_q[b]) + i : i;
  const int64_t base = p.cu_seqlens_q ? 0 : int64_t(b) * batch_stride;
  return base + token * token_stride + h * head_stride;
}

// Rows of a [128 keys, D] tile copied by this thread: one 16-byte chunk column, kPasses rows.
template <int D>
struct TileCopy {
  static constexpr int kChunks = D / 8;  // 16-byte chunks per key
  static constexpr int kRowsPerPass = decode_threads<D>() / kChunks;
  static constexpr int kPasses = kBlockN / kRowsPerPass;
};

// Page of each row this thread copies in `tile` (-1 past seqlen_k; 0 when K/V are not paged).
// Issued a while before the copies so that the block-table loads are in flight meanwhile.
template <int D>
__device__ __forceinline__ void lookup_pages(const DecodeParams& p, int b, int tile, int seqlen_k,
                                             int (&pages)[TileCopy<D>::kPasses]) {
  using C = TileCopy<D>;
  const int row0 = threadIdx.x / C::kChunks;
  for (int i = 0; i < C::kPasses; ++i) {
    const int key = tile * kBlockN + row0 + i * C::kRowsPerPass;
    // computed unconditionally (no branch around the load) so the compiler batches the loads
    const int page_index = p.page_shift >= 0 ? key >> p.page_shift : (p.block_table ? key / p.page_size : 0);
    pages[i] = key >= seqlen_k ? -1 : (p.block_table ? p.block_table[b * p.block_table_stride + page_index] : 0);
  }
}

// Issues the cp.async copies of one [128 keys, D] tile of K or V into a swizzled buffer; rows
// past seqlen_k (page -1) are zero-filled.
template <class T, int D>
__device__ __forceinline__ void load_kv_tile(const DecodeParams& p, const T* base, int64_t batch_stride,
                                             int64_t token_stride, int64_t head_stride, int b, int hk, int tile,
                                             const int (&pages)[TileCopy<D>::kPasses], unsigned char* dst) {
  using C = TileCopy<D>;
  const int chunk = threadIdx.x % C::kChunks;
  const int row0 = threadIdx.x / C::kChunks;
  for (int i = 0; i < C::kPasses; ++i) {
    const int row = row0 + i * C::kRowsPerPass;
    const int key = tile * kBlockN + row;
    int64_t offset;
    if (p.block_table) {
      const int slot = p.page_shift >= 0 ? key & (p.page_size - 1) : key % p.page_size;
      offset = int64_t(pages[i]) * batch_stride + int64_t(slot) * token_stride;
    } else {
      const int64_t token = p.cu_seqlens_k ? int64_t(p.cu_seqlens_k[b]) + key : key;
      offset = (p.cu_seqlens_k ? 0 : int64_t(b) * batch_stride) + token * token_stride;
    }
    const bool valid = pages[i] >= 0;
    const T* src = valid ? base + offset + hk * head_stride + chunk * 8 : base;
    ptx::cp_async_16(ptx::smem_addr(dst + layout::swizzled_offset<D>(row, chunk * 8)), src, valid);
  }
}

template <class T, int D, int MT, bool kSkip>
__global__ void __launch_bounds__(decode_threads<D>()) decode_kernel(const DecodeParams p) {
  using Smem = DecodeSmem<D, MT>;
    constexpr int kThreads = decode_threads<D>();
  constexpr int kWarps = Smem::kWarps;
  constexpr int kStages = Smem::kStages;
  constexpr int kRowsPad = Smem::kRowsPad;
  constexpr int kKeys = kBlockN / kWarps;  // keys each warp scores per tile
  constexpr int kNT = kKeys / 8;           // their n-tiles of 8 keys
  constexpr int kVCols = D / kWarps;       // output columns per warp (16)
  constexpr int kVTiles = kVCols / 8;      // their n-tiles (2)
  static_assert(kNT % 2 == 0 && kVTiles % 2 == 0, "ldmatrix.x4 loads two n-tiles at a time");
  extern __shared__ __align__(128) unsigned char smem[];
  unsigned char* k_smem = smem + Smem::kOffK;
  unsigned char* v_smem = smem + Smem::kOffV;
  unsigned char* p_smem = smem + Smem::kOffP;
  unsigned char* q_smem = smem + Smem::kOffQ;
  float* red_max = reinterpret_cast<float*>(smem + Smem::kOffMax);
  float* red_sum = reinterpret_cast<float*>(smem + Smem::kOffSum);

  const int split = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int lq = entry_len(p.cu_seqlens_q, p.seqlens_q, b, p.max_seqlen_q);
  const int lk = entry_len(p.cu_seqlens_k, p.seqlens_k, b, p.max_seqlen_k);
  const int G = p.group;
  const int rows = lq * G;
  if (rows == 0) return;
  const int tiles = ceil_div_int(lk, kBlockN);  // the last row sees every key
  const int chunk_len = ceil_div_int(tiles, p.splits);
  const int first = split * chunk_len;
  const int last = min(tiles, first + chunk_len);

  const float factor = p.per_kv_head_factor ? p.per_kv_head_factor[hk] : p.threshold_scale_factor;
  const double lambda = lk > 0 ? double(factor) / double(lk) : 1.0;
  const bool skip_on = kSkip && factor > 0.0f && lambda < 1.0;
  const float log_lambda = skip_on ? float(log(lambda)) : -INFINITY;

  // The rows this thread holds in mma fragments: row_id[mt][h] = 16 mt + lane / 4 + 8 h.
  int key_end[MT][2];
  for (int mt = 0; mt < MT; ++mt)
    for (int h = 0; h < 2; ++h) {
      const int r = mt * 16 + lane / 4 + 8 * h;
      const int i = r / G;
      key_end[mt][h] = r >= rows ? 0 : (p.causal ? min(max(lk - lq + i + 1, 0), lk) : lk);
    }

  // Q rows into shared memory (rows past `rows` are zero).
  {
    const T* q = static_cast<const T*>(p.q);
    constexpr int kChunks = D / 8;
    for (int c = threadIdx.x; c < kRowsPad * kChunks; c += kThreads) {
      const int r = c / kChunks, chunk = c % kChunks;
      uint4 value = make_uint4(0, 0, 0, 0);
      if (r < rows) {
        const int i = r / G, h = hk * G + r % G;
        value = *reinterpret_cast<const uint4*>(
            q + q_side_offset(p, p.q_batch_stride, p.q_token_stride, p.q_head_stride, b, i, h) + chunk * 8);
      }
      *reinterpret_cast<uint4*>(q_smem + layout::swizzled_offset<D>(r, chunk * 8)) = value;
    }
  }

  const T* kbase = static_cast<const T*>(p.k);
  const T* vbase = static_cast<const T*>(p.v);
  const int ld_row = (lane & 7) + ((lane >> 3) & 1) * 8;  // ldmatrix row of this lane (A operands)
  const int ld_col = (lane >> 4) * 8;                     // ldmatrix column of this lane (A operands)

  // s[mt][nt][e]: scores of rows (mt, lane/4 + 8 (e/2)) and key kKeys warp + 8 nt + 2 (lane%4) + e%2.
  float s[MT][kNT][4];
  auto compute_scores = [&](const unsigned char* kbuf, int tile) {
    for (int mt = 0; mt < MT; ++mt)
      for (int nt = 0; nt < kNT; ++nt)
        for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.0f;
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t bfrag[kNT][2];
      for (int np = 0; np < kNT / 2; ++np) {
        uint32_t r[4];
        const int key = warp * kKeys + np * 16 + (lane >> 4) * 8 + (lane & 7);
        const int col = ks * 16 + ((lane >> 3) & 1) * 8;
        ldsm_x4(r, ptx::smem_addr(kbuf + layout::swizzled_offset<D>(key, col)));
        bfrag[2 * np][0] = r[0];
        bfrag[2 * np][1] = r[1];
        bfrag[2 * np + 1][0] = r[2];
        bfrag[2 * np + 1][1] = r[3];
      }
      for (int mt = 0; mt < MT; ++mt) {
        uint32_t a[4];
        ldsm_x4(a, ptx::smem_addr(q_smem + layout::swizzled_offset<D>(mt * 16 + ld_row, ks * 16 + ld_col)));
        for (int nt = 0; nt < kNT; ++nt) ptx::mma_16816<T>(s[mt][nt], a, bfrag[nt][0], bfrag[nt][1]);
      }
    }
    // scale, and -inf for keys a row does not see
    const int key0 = tile * kBlockN + warp * kKeys + 2 * (lane % 4);
    for (int mt = 0; mt < MT; ++mt)
      for (int nt = 0; nt < kNT; ++nt)
        for (int e = 0; e < 4; ++e) {
          const int key = key0 + nt * 8 + (e & 1);
          s[mt][nt][e] = key < key_end[mt][e >> 1] ? s[mt][nt][e] * p.scale : -INFINITY;
        }
  };

  // tile_max[mt][h] = row maximum over the tile (all warps), NaN kept. Ends with a barrier.
  float tile_max[MT][2];
  auto reduce_row_max = [&]() {
    for (int mt = 0; mt < MT; ++mt)
      for (int h = 0; h < 2; ++h) {
        float mx = -INFINITY;
        for (int nt = 0; nt < kNT; ++nt) mx = layout::max_nan(mx, layout::max_nan(s[mt][nt][2 * h], s[mt][nt][2 * h + 1]));
        mx = layout::max_nan(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = layout::max_nan(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        if (lane % 4 == 0) red_max[warp * kRowsPad + mt * 16 + lane / 4 + 8 * h] = mx;
      }
    __syncthreads();
    for (int mt = 0; mt < MT; ++mt)
      for (int h = 0; h < 2; ++h) {
        const int r = mt * 16 + lane / 4 + 8 * h;
        float mx = red_max[r];
        for (int w = 1; w < kWarps; ++w) mx = layout::max_nan(mx, red_max[w * kRowsPad + r]);
        tile_max[mt][h] = mx;
      }
  };

  float m[MT][2], l[MT][2];
  for (int mt = 0; mt < MT; ++mt)
    for (int h = 0; h < 2; ++h) {
      m[mt][h] = -INFINITY;
      l[mt][h] = 0.0f;
    }

  // Anchored order: seed m with each row's maximum over tile 0 and the last tile.
  if (p.anchored && first < last) {
    for (int a = 0; a < (tiles > 1 ? 2 : 1); ++a) {
      const int tile = a == 0 ? 0 : tiles - 1;
      int pages[TileCopy<D>::kPasses];
      lookup_pages<D>(p, b, tile, lk, pages);
      load_kv_tile<T, D>(p, kbase, p.k_batch_stride, p.k_token_stride, p.k_head_stride, b, hk, tile, pages, k_smem);
      ptx::cp_async_commit();
      ptx::cp_async_wait<0>();
      __syncthreads();
      compute_scores(k_smem, tile);
      reduce_row_max();
      for (int mt = 0; mt < MT; ++mt)
        for (int h = 0; h < 2; ++h) m[mt][h] = layout::max_nan(m[mt][h], tile_max[mt][h]);
      __syncthreads();  // k_smem and red_max are reused
    }
  }

  float o[MT][kVTiles][4];
  for (int mt = 0; mt < MT; ++mt)
    for (int nt = 0; nt < kVTiles; ++nt)
      for (int e = 0; e < 4; ++e) o[mt][nt][e] = 0.0f;

  // O = O * alpha + P V for the tile held in slot `slot` of the P and V buffers.
  auto apply_pv = [&](int slot, const float (&alpha)[MT][2]) {
    for (int mt = 0; mt < MT; ++mt)
      for (int nt = 0; nt < kVTiles; ++nt)
        for (int e = 0; e < 4; ++e) o[mt][nt][e] *= alpha[mt][e >> 1];
    const unsigned char* pbuf = p_smem + slot * kRowsPad * kBlockN * 2;
    const unsigned char* vbuf = v_smem + slot * Smem::kTileBytes;
    for (int ks = 0; ks < kBlockN / 16; ++ks) {
      uint32_t bfrag[kVTiles][2];
      for (int np = 0; np < kVTiles / 2; ++np) {
        uint32_t r[4];
        const int key = ks * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
        const int col = warp * kVCols + np * 16 + (lane >> 4) * 8;
        ldsm_x4_trans(r, ptx::smem_addr(vbuf + layout::swizzled_offset<D>(key, col)));
        bfrag[2 * np][0] = r[0];
        bfrag[2 * np][1] = r[1];
        bfrag[2 * np + 1][0] = r[2];
        bfrag[2 * np + 1][1] = r[3];
      }
      for (int mt = 0; mt < MT; ++mt) {
        uint32_t a[4];
        ldsm_x4(a, ptx::smem_addr(pbuf + layout::swizzled_offset<kBlockN>(mt * 16 + ld_row, ks * 16 + ld_col)));
        for (int nt = 0; nt < kVTiles; ++nt) ptx::mma_16816<T>(o[mt][nt], a, bfrag[nt][0], bfrag[nt][1]);
      }
    }
  };

  unsigned long long visited = 0, skipped = 0;
  for (int j = 0; j < kStages; ++j) {
    if (first + j < last) {
      int pages[TileCopy<D>::kPasses];
      lookup_pages<D>(p, b, first + j, lk, pages);
      load_kv_tile<T, D>(p, kbase, p.k_batch_stride, p.k_token_stride, p.k_head_stride, b, hk, first + j, pages,
                         k_smem + j * Smem::kTileBytes);
    }
    ptx::cp_async_commit();
  }

  bool pending = false;  // the previous tile was kept and its P V is still to be applied
  float alpha_prev[MT][2], alpha_cur[MT][2];
  for (int t = first; t < last; ++t) {
    const int j = t - first;
    if (j >= kStages) {
      ptx::cp_async_wait<2 * kStages - 2>();
    } else {
      ptx::cp_async_wait<kStages - 1>();
    }
    __syncthreads();
    // pages of this tile (for V) and of the tile the K pipeline copies next, looked up now so
    // the block-table loads overlap Q K^T
    int v_pages[TileCopy<D>::kPasses], k_pages[TileCopy<D>::kPasses];
    lookup_pages<D>(p, b, t, lk, v_pages);
    if (t + kStages < last) lookup_pages<D>(p, b, t + kStages, lk, k_pages);
    const unsigned char* kbuf = k_smem + (j % kStages) * Smem::kTileBytes;
    compute_scores(kbuf, t);
    reduce_row_max();  // barrier inside: every warp is done reading kbuf

    const bool anchor = p.anchored ? (t == 0 || t == tiles - 1) : (t == first);
    bool keep = true;
    if constexpr (kSkip) {
      if (skip_on && !anchor) {
        bool row_keeps = false;
        for (int mt = 0; mt < MT; ++mt)
          for (int h = 0; h < 2; ++h) {
            const float mt_max = tile_max[mt][h];
            // a padding row has key_end 0 and so mt_max = -inf: it never keeps a tile
            if (mt_max != -INFINITY && !(mt_max - m[mt][h] < log_lambda)) row_keeps = true;
          }
        keep = __syncthreads_or(row_keeps) != 0;
      }
    }
    ++visited;
    if (threadIdx.x == 0 && p.decisions)
      p.decisions[(int64_t(b) * p.num_kv_heads + hk) * p.tiles_max + t] = keep ? 1 : 2;

    const int slot = j & 1;
    if (keep) {
      load_kv_tile<T, D>(p, vbase, p.v_batch_stride, p.v_token_stride, p.v_head_stride, b, hk, t, v_pages,
                         v_smem + slot * Smem::kTileBytes);
    } else {
      ++skipped;
    }
    ptx::cp_async_commit();
    if (t + kStages < last)
      load_kv_tile<T, D>(p, kbase, p.k_batch_stride, p.k_token_stride, p.k_head_stride, b, hk, t + kStages,
                         k_pages, k_smem + (j % kStages) * Smem::kTileBytes);
    ptx::cp_async_commit();

    if (keep) {
      // online softmax statistics now (the next vote needs m); P to shared memory
      unsigned char* pbuf = p_smem + slot * kRowsPad * kBlockN * 2;
      for (int mt = 0; mt < MT; ++mt)
        for (int h = 0; h < 2; ++h) {
          const float m_new = layout::max_nan(m[mt][h], tile_max[mt][h]);
          const float m_use = m_new == -INFINITY ? 0.0f : m_new;
          alpha_cur[mt][h] = exp2f((m[mt][h] - m_use) * kLog2e);
          float sum = 0.0f;
          for (int nt = 0; nt < kNT; ++nt) {
            const float p0 = exp2f((s[mt][nt][2 * h] - m_use) * kLog2e);
            const float p1 = exp2f((s[mt][nt][2 * h + 1] - m_use) * kLog2e);
            sum += p0 + p1;
            const int r = mt * 16 + lane / 4 + 8 * h;
            const int key = warp * kKeys + nt * 8 + 2 * (lane % 4);
            *reinterpret_cast<uint32_t*>(pbuf + layout::swizzled_offset<kBlockN>(r, key)) = ptx::pack2<T>(p0, p1);
          }
          sum += __shfl_xor_sync(0xffffffffu, sum, 1);
          sum += __shfl_xor_sync(0xffffffffu, sum, 2);
          if (lane % 4 == 0) red_sum[warp * kRowsPad + mt * 16 + lane / 4 + 8 * h] = sum;
          m[mt][h] = m_new;
        }
      __syncthreads();
      for (int mt = 0; mt < MT; ++mt)
        for (int h = 0; h < 2; ++h) {
          const int r = mt * 16 + lane / 4 + 8 * h;
          float total = 0.0f;
          for (int w = 0; w < kWarps; ++w) total += red_sum[w * kRowsPad + r];
          l[mt][h] = l[mt][h] * alpha_cur[mt][h] + total;
        }
    }

    if (pending) {
      ptx::cp_async_wait<3>();  // V of the previous tile (3 groups were committed after it)
      __syncthreads();
      apply_pv(slot ^ 1, alpha_prev);
    }
    pending = keep;
    for (int mt = 0; mt < MT; ++mt)
      for (int h = 0; h < 2; ++h) alpha_prev[mt][h] = alpha_cur[mt][h];
  }
  if (pending) {
    ptx::cp_async_wait<0>();
    __syncthreads();
    apply_pv((last - first - 1) & 1, alpha_prev);
  }
  ptx::cp_async_wait<0>();

  if (threadIdx.x == 0 && first < last) {
    if (p.stats_per_head) {
      atomicAdd(&p.stats_per_head[2 * hk], visited);
      atomicAdd(&p.stats_per_head[2 * hk + 1], skipped);
    }
    atomicAdd(&p.totals[0], visited);
    atomicAdd(&p.totals[1], skipped);
  }

  // Epilogue: final rows (one split) or partial (m, l, O) for the combine kernel.
  for (int mt = 0; mt < MT; ++mt)
    for (int h = 0; h < 2; ++h) {
      const int r = mt * 16 + lane / 4 + 8 * h;
      if (r >= rows) continue;
      const int i = r / G, head = hk * G + r % G;
      const bool empty = m[mt][h] == -INFINITY || l[mt][h] == 0.0f;
      if (p.splits == 1) {
        T* out = static_cast<T*>(p.out) +
                 q_side_offset(p, p.o_batch_stride, p.o_token_stride, p.o_head_stride, b, i, head);
        const float inv = empty ? 0.0f : 1.0f / l[mt][h];
        for (int nt = 0; nt < kVTiles; ++nt) {
          const int col = warp * kVCols + nt * 8 + 2 * (lane % 4);
          *reinterpret_cast<uint32_t*>(out + col) = ptx::pack2<T>(o[mt][nt][2 * h] * inv, o[mt][nt][2 * h + 1] * inv);
        }
        if (p.lse && warp == 0 && lane % 4 == 0)
          p.lse[q_side_offset(p, p.lse_batch_stride, p.lse_token_stride, p.lse_head_stride, b, i, head)] =
              empty ? -INFINITY : m[mt][h] + logf(l[mt][h]);
      } else {
        const int64_t part = ((int64_t(b) * p.num_kv_heads + hk) * p.splits + split) * p.rows_max + r;
        for (int nt = 0; nt < kVTiles; ++nt) {
          const int col = warp * kVCols + nt * 8 + 2 * (lane % 4);
          *reinterpret_cast<float2*>(p.ws_o + part * D + col) = make_float2(o[mt][nt][2 * h], o[mt][nt][2 * h + 1]);
        }
        if (warp == 0 && lane % 4 == 0) {
          // a chunk that kept nothing contributes nothing
          p.ws_ml[2 * part] = (first < last && l[mt][h] != 0.0f) || m[mt][h] != m[mt][h] ? m[mt][h] : -INFINITY;
          p.ws_ml[2 * part + 1] = l[mt][h];
        }
      }
    }
}

constexpr int kCombineThreads = 128;

// Merges the split partials of every row through their log-sum-exp.
// grid (rows_max, Hkv, batch), block kCombineThreads.
template <class T, int D>
__global__ void __launch_bounds__(kCombineThreads) decode_combine_kernel(const DecodeParams p) {
  const int r = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int lq = entry_len(p.cu_seqlens_q, p.seqlens_q, b, p.max_seqlen_q);
  if (r >= lq * p.group) return;
  const int i = r / p.group, head = hk * p.group + r % p.group;
  const int64_t part0 = (int64_t(b) * p.num_kv_heads + hk) * p.splits * p.rows_max + r;
  float big = -INFINITY;
  for (int sp = 0; sp < p.splits; ++sp) big = layout::max_nan(big, p.ws_ml[2 * (part0 + int64_t(sp) * p.rows_max)]);
  T* out = static_cast<T*>(p.out) + q_side_offset(p, p.o_batch_stride, p.o_token_stride, p.o_head_stride, b, i, head);
  if (big == -INFINITY) {
    for (int d = threadIdx.x; d < D; d += kCombineThreads) out[d] = T(0.0f);
    if (p.lse && threadIdx.x == 0)
      p.lse[q_side_offset(p, p.lse_batch_stride, p.lse_token_stride, p.lse_head_stride, b, i, head)] = -INFINITY;
    return;
  }
  float total = 0.0f;
  for (int sp = 0; sp < p.splits; ++sp) {
    const int64_t part = part0 + int64_t(sp) * p.rows_max;
    const float ms = p.ws_ml[2 * part];
    if (ms != -INFINITY) total += p.ws_ml[2 * part + 1] * exp2f((ms - big) * kLog2e);
  }
  for (int d = threadIdx.x; d < D; d += kCombineThreads) {
    float acc = 0.0f;
    for (int sp = 0; sp < p.splits; ++sp) {
      const int64_t part = part0 + int64_t(sp) * p.rows_max;
      const float ms = p.ws_ml[2 * part];
      if (ms != -INFINITY) acc += p.ws_o[part * D + d] * exp2f((ms - big) * kLog2e);
    }
    out[d] = T(acc / total);
  }
  if (p.lse && threadIdx.x == 0)
    p.lse[q_side_offset(p, p.lse_batch_stride, p.lse_token_stride, p.lse_head_stride, b, i, head)] = big + logf(total);
}

}  // namespace blasst::cuda::decode
