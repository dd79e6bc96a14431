// Split-KV decode kernel with the BLASST vote (sm_80+).
//
// One block = one decision group (all G query heads of KV head hk times the Lq query rows of
// entry b, padded to 16 * MT rows) over one contiguous chunk of its KV tiles (split).
// Four warps. Warp w owns one m-tile of 16 rows (rg = w % MT) and one key group of the tile
// (kg = w / MT: keys [32 MT kg, 32 MT (kg + 1)) of every 128-key tile). A warp copies, scores
// and multiplies only the K and V rows of its key group, together with the MT - 1 other warps
// of that group (MT = 1: alone), so K and V readiness needs no block-wide barrier. Per tile:
//   wait K(t)                          own key group's rows (cp.async + warp/group barrier)
//   S = scale * Q K^T                  16 rows x 32 MT keys, mma.sync
//   row maxima                         one block barrier: partial maxima of the key groups
//   vote                               the tile is skipped iff every existing row votes skip
//                                      (SPEC 3); MT = 1: every warp holds every row and
//                                      decides alone, MT > 1: __syncthreads_or
//   issue K(t + kKStages)              into the stage K(t) leaves
//   O += P(t-1) V(t-1)                 the previous kept tile (its V had a tile to land)
//   if kept: issue V(t)                so bytes of V are read only for kept tiles
//            P(t) = exp(S - m_new)     kept in registers as the A operand of P V; m, l now
// Each warp accumulates O and l over its own keys (all D columns); the key groups' partial O
// and l, which share the running max, are summed once at the end. Every iteration commits
// exactly two cp.async groups (K, possibly empty; V, possibly empty): the wait_group counts
// below rely on it.
#pragma once

#include <cuda_fp8.h>

#include <cmath>
#include <type_traits>

#include "cuda/sm80/decode/decode_params.cuh"
#include "cuda/sm80/decode/tile_layout.cuh"
#include "cuda/common/ptx.cuh"
#include "cuda/common/quad_reduce.cuh"
#include "cuda/common/skip_threshold.cuh"

namespace blasst::cuda::decode {

constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) { ptx::ldmatrix_x4(addr, r[0], r[1], r[2], r[3]); }
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  ptx::ldmatrix_x4_trans(addr, r[0], r[1], r[2], r[3]);
}

// Shared memory of one block: kKStages K tiles, one V tile, Q, the partial row maxima
// (double-buffered by tile parity), and the key groups' partial l and the rows' m for the
// epilogue. The epilogue's partial O (fp32) reuses the K stages and the V buffer.
// FP8 K/V (kKvBytes = 1): the K stages and the V buffer hold tiles as stored (half the bytes),
// and each key group converts its rows of K(t), and later of V, into one 16-bit work tile in
// the layout ldmatrix reads (e4m3 values are exact in bf16 and fp16).
template <int D, int MT, int kKStages, int kKvBytes = 2>
struct DecodeSmem {
  static constexpr bool kFp8 = kKvBytes == 1;
  static constexpr int kWarps = kDecodeThreads / 32;
  static constexpr int kGroups = kWarps / MT;  // key groups
  static constexpr int kRowsPad = 16 * MT;
  static constexpr int kTileBytes = kBlockN * D * 2;          // a 16-bit tile (swizzled)
  static constexpr int kStageBytes = kBlockN * D * kKvBytes;  // a tile as stored
  static constexpr int kOffK = 0;
  static constexpr int kOffV = kOffK + kKStages * kStageBytes;
  static constexpr int kOffWork = kOffV + kStageBytes;  // FP8 only
  static constexpr int kOffQ = kOffWork + (kFp8 ? kTileBytes : 0);
  static constexpr int kOffMax = kOffQ + kRowsPad * D * 2;  // float [2][groups][rows]
  static constexpr int kOffL = kOffMax + 2 * kGroups * kRowsPad * 4;  // float [groups][rows]
  static constexpr int kOffM = kOffL + kGroups * kRowsPad * 4;        // float [rows]
  static constexpr int kBytes = kOffM + kRowsPad * 4;
  static constexpr int kOutStride = D + 4;  // floats per row of the epilogue's partial O
  static_assert(kGroups * kRowsPad * kOutStride * 4 <= kOffQ, "partial O fits in the K stages and the V buffer");
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

// Where the K (or V) rows of one (entry, KV head) live: contiguous rows from `base`, or pages.
template <class T>
struct KvSource {
  const T* base;         // + hk * head_stride, and + the entry's first token when not paged
  int64_t page_stride;   // batch stride of the tensor (= page stride when paged)
  int64_t token_stride;
};

// Byte offset of 16-byte chunk `chunk` of row r in a tile of rows of D elements of type E:
// 16-bit tiles are swizzled for ldmatrix; FP8 tiles (read back 16 bytes a thread, row by row,
// by the conversion) are plain rows.
template <class E, int D>
__device__ __forceinline__ uint32_t chunk_offset(int r, int chunk) {
  if constexpr (sizeof(E) == 2) {
    return layout::swizzled_offset<D>(r, chunk * 8);
  } else {
    return uint32_t(r * D + chunk * 16);
  }
}

// Issues the cp.async copies of the rows [32 MT kg, 32 MT (kg + 1)) of one [128 keys, D] tile
// of E elements (16-bit, or FP8) into a buffer, by the 32 MT threads of key group kg (tg =
// their index). Rows past seqlen_k are zero-filled. A thread copies one 16-byte chunk column of
// its rows (16 / sizeof(E) elements a chunk).
template <class T, int D, int MT>
__device__ __forceinline__ void load_group_rows(const DecodeParams& p, const KvSource<T>& src, int b, int tile,
                                                int lk, int kg, int tg, unsigned char* dst) {
  constexpr int kElems = 16 / int(sizeof(T));  // elements per 16-byte chunk
  constexpr int kChunks = D / kElems;
  constexpr int kGroupRows = 32 * MT;
  constexpr int kRowsPerPass = kGroupRows / kChunks;
  constexpr int kPasses = kGroupRows / kRowsPerPass;
  const int chunk = tg % kChunks;
  const int r0 = tg / kChunks;
  const int key0 = tile * kBlockN + kg * kGroupRows;  // first key of the group's rows
  unsigned char* dst0 = dst + kg * kGroupRows * D * int(sizeof(T));
  const bool one_page = p.block_table && p.page_shift >= 0 && p.page_size >= kGroupRows;
  if (p.block_table && !one_page && p.page_shift >= 0 && p.page_size >= kRowsPerPass) {
    // Pages of a power of two smaller than the group's rows (e.g. 16 tokens): key0 starts a page
    // and this thread's rows key0 + r0 + i * kRowsPerPass (r0 < kRowsPerPass) change page only where
    // (i * kRowsPerPass) % page_size == 0. One lookup per page (all issued first, so that they are in
    // flight together), and the pointer stepped by a pass within the page.
    int pages[kPasses];
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const int key = min(key0 + r0 + i * kRowsPerPass, lk - 1);
      pages[i] = ((i * kRowsPerPass) & (p.page_size - 1)) == 0
                     ? p.block_table[b * p.block_table_stride + (key >> p.page_shift)]
                     : 0;
    }
    const int64_t pass_stride = int64_t(kRowsPerPass) * src.token_stride;
    const T* row = src.base;
#pragma unroll
    for (int i = 0; i < kPasses; ++i, row += pass_stride) {
      const int r = r0 + i * kRowsPerPass;
      const int key = key0 + r;
      if (((i * kRowsPerPass) & (p.page_size - 1)) == 0)
        row = src.base + int64_t(pages[i]) * src.page_stride + int64_t(key & (p.page_size - 1)) * src.token_stride +
              chunk * kElems;
      const bool valid = key < lk;
      ptx::cp_async_16(ptx::smem_addr(dst0 + chunk_offset<T, D>(r, chunk)), valid ? row : src.base, valid);
    }
    return;
  }
  if (p.block_table && !one_page) {
    int pages[kPasses];
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {  // all lookups first, so that they are in flight together
      const int key = min(key0 + r0 + i * kRowsPerPass, lk - 1);
      const int page_index = p.page_shift >= 0 ? key >> p.page_shift : key / p.page_size;
      pages[i] = p.block_table[b * p.block_table_stride + page_index];
    }
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const int r = r0 + i * kRowsPerPass;
      const int key = key0 + r;
      const int slot = p.page_shift >= 0 ? key & (p.page_size - 1) : key % p.page_size;
      const bool valid = key < lk;
      const T* row = src.base + int64_t(pages[i]) * src.page_stride + int64_t(slot) * src.token_stride + chunk * kElems;
      ptx::cp_async_16(ptx::smem_addr(dst0 + chunk_offset<T, D>(r, chunk)), valid ? row : src.base, valid);
    }
    return;
  }
  // Contiguous, or the group's rows lie in one page (both are powers of two, the rows aligned):
  // one base row (one page lookup), the rows token_stride apart.
  const T* row0 = src.base + chunk * kElems;
  if (one_page) {
    const int page = key0 < lk ? p.block_table[b * p.block_table_stride + (key0 >> p.page_shift)] : 0;
    row0 += int64_t(page) * src.page_stride + int64_t(key0 & (p.page_size - 1)) * src.token_stride;
  } else {
    row0 += int64_t(key0) * src.token_stride;
  }
  // One pointer stepped from pass to pass (a 64-bit add each, not a 64-bit multiply).
  const T* row = row0 + int64_t(r0) * src.token_stride;
  const int64_t pass_stride = int64_t(kRowsPerPass) * src.token_stride;
#pragma unroll
  for (int i = 0; i < kPasses; ++i, row += pass_stride) {
    const int r = r0 + i * kRowsPerPass;
    const bool valid = key0 + r < lk;
    ptx::cp_async_16(ptx::smem_addr(dst0 + chunk_offset<T, D>(r, chunk)), valid ? row : src.base, valid);
  }
}

// Barrier of the MT warps of key group kg (they share the group's K and V rows).
template <int MT>
__device__ __forceinline__ void group_sync(int kg) {
  if constexpr (MT == 1) {
    __syncwarp();
  } else {
    asm volatile("bar.sync %0, %1;\n" ::"r"(1 + kg), "n"(32 * MT) : "memory");
  }
}

// Two e4m3 values (the low byte first) as two T values, exactly: through fp16x2 (one cvt on
// sm_89+), then fp32 for bf16.
template <class T>
__device__ __forceinline__ uint32_t fp8x2_to(uint32_t pair) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(pair), __NV_E4M3);
  if constexpr (std::is_same_v<T, __half>) {
    return uint32_t(h.x) | (uint32_t(h.y) << 16);
  } else {
    const float2 f = __half22float2(__half2(h));
    return ptx::pack2<T>(f.x, f.y);
  }
}

// The FP8 rows of key group kg (stored as loaded: [128, D] bytes) as T values in the swizzled
// 16-bit layout of `work`, by the group's 32 MT threads; 16 elements a thread and pass, in the
// chunk order of the copies (consecutive threads read consecutive 16 bytes of a row).
template <class T, int D, int MT>
__device__ __forceinline__ void convert_group_rows(const unsigned char* stored, unsigned char* work, int kg, int tg) {
  constexpr int kChunks = D / 16;
  constexpr int kGroupRows = 32 * MT;
  constexpr int kRowsPerPass = kGroupRows / kChunks;
  const int chunk = tg % kChunks;
  const int row0 = kg * kGroupRows + tg / kChunks;
#pragma unroll
  for (int i = 0; i < kGroupRows / kRowsPerPass; ++i) {
    const int r = row0 + i * kRowsPerPass;
    const uint4 in = *reinterpret_cast<const uint4*>(stored + r * D + chunk * 16);
    const uint4 lo = make_uint4(fp8x2_to<T>(in.x & 0xffffu), fp8x2_to<T>(in.x >> 16), fp8x2_to<T>(in.y & 0xffffu),
                                fp8x2_to<T>(in.y >> 16));
    const uint4 hi = make_uint4(fp8x2_to<T>(in.z & 0xffffu), fp8x2_to<T>(in.z >> 16), fp8x2_to<T>(in.w & 0xffffu),
                                fp8x2_to<T>(in.w >> 16));
    *reinterpret_cast<uint4*>(work + layout::swizzled_offset<D>(r, chunk * 16)) = lo;
    *reinterpret_cast<uint4*>(work + layout::swizzled_offset<D>(r, chunk * 16 + 8)) = hi;
  }
}

// A dequantization scale of KV head hk (FP8 operands; 1 for others).
__device__ __forceinline__ float dequant_scale(const DecodeParams& p, const float* scale, int hk) {
  return scale ? scale[p.scales_per_kv_head ? hk : 0] : 1.0f;
}

// Two blocks per SM (d = 128: 99-113 KB of shared memory each), so up to 255 registers.
// T: the type of Q and O (and of the mma); KV: that of K and V as stored (T, or FP8 e4m3).
template <class T, class KV, int D, int MT, bool kSkip, int kKStages>
__global__ void __launch_bounds__(kDecodeThreads, 2) decode_kernel(const DecodeParams p) {
  using Smem = DecodeSmem<D, MT, kKStages, int(sizeof(KV))>;
  constexpr bool kFp8 = Smem::kFp8;
  constexpr int kThreads = kDecodeThreads;
  constexpr int kGroups = Smem::kGroups;
  constexpr int kRowsPad = Smem::kRowsPad;
  constexpr int kKeys = kBlockN / kGroups;  // keys of each warp per tile (32 MT)
  constexpr int kNT = kKeys / 8;            // their n-tiles of 8 keys (S)
  constexpr int kKS = kKeys / 16;           // their k-steps of 16 keys (P V)
  constexpr int kDT = D / 8;                // n-tiles of the output columns
  static_assert(kGroups * MT == kThreads / 32, "warps = key groups x m-tiles");
  extern __shared__ __align__(128) unsigned char smem[];
  unsigned char* k_smem = smem + Smem::kOffK;
  unsigned char* v_smem = smem + Smem::kOffV;
  unsigned char* work = smem + Smem::kOffWork;  // FP8: the converted rows of K(t) or V
  unsigned char* q_smem = smem + Smem::kOffQ;
  float* red_max = reinterpret_cast<float*>(smem + Smem::kOffMax);
  float* red_l = reinterpret_cast<float*>(smem + Smem::kOffL);
  float* row_m = reinterpret_cast<float*>(smem + Smem::kOffM);

  const int split = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int rg = warp % MT, kg = warp / MT;
  const int tg = rg * 32 + lane;  // index of this thread in its key group
  const int lq = entry_len(p.cu_seqlens_q, p.seqlens_q, b, p.max_seqlen_q);
  const int lk = entry_len(p.cu_seqlens_k, p.seqlens_k, b, p.max_seqlen_k);
  const int G = p.q_per_kv;
  const int rows = lq * G;
  if (rows == 0) return;
  const int tiles = ceil_div_int(lk, kBlockN);  // the last row sees every key
  const int chunk_len = ceil_div_int(tiles, p.splits);
  const int first = split * chunk_len;
  const int last = min(tiles, first + chunk_len);

  const float factor = threshold_factor(p, b, hk);
  const SkipThreshold threshold = kSkip ? skip_threshold(factor, lk) : SkipThreshold{};
  const bool skip_on = threshold.on;
  const float log_lambda = threshold.log_lambda;

  // FP8 K: its scale folds into the score scale (the product rounded once, as the CPU engine).
  const float score_scale = kFp8 ? p.scale * dequant_scale(p, p.k_scale, hk) : p.scale;
  KvSource<KV> ksrc{static_cast<const KV*>(p.k) + hk * p.k_head_stride, p.k_batch_stride, p.k_token_stride};
  KvSource<KV> vsrc{static_cast<const KV*>(p.v) + hk * p.v_head_stride, p.v_batch_stride, p.v_token_stride};
  if (!p.block_table) {
    const int64_t k_seq = p.cu_seqlens_k ? int64_t(p.cu_seqlens_k[b]) * p.k_token_stride : int64_t(b) * p.k_batch_stride;
    const int64_t v_seq = p.cu_seqlens_k ? int64_t(p.cu_seqlens_k[b]) * p.v_token_stride : int64_t(b) * p.v_batch_stride;
    ksrc.base += k_seq;
    vsrc.base += v_seq;
  }
  auto load_k = [&](int tile, int stage) {
    load_group_rows<KV, D, MT>(p, ksrc, b, tile, lk, kg, tg, k_smem + stage * Smem::kStageBytes);
  };
  auto load_v = [&](int tile, unsigned char* dst) { load_group_rows<KV, D, MT>(p, vsrc, b, tile, lk, kg, tg, dst); };
  // The 16-bit rows of this key group of a landed tile `stored`: the tile itself, or for FP8 its
  // rows converted into `work` (after every warp of the group has passed its last read of work).
  auto group_tile = [&](const unsigned char* stored) -> const unsigned char* {
    if constexpr (kFp8) {
      convert_group_rows<T, D, MT>(stored, work, kg, tg);
      group_sync<MT>(kg);
      return work;
    } else {
      return stored;
    }
  };

  // The two rows this lane holds in mma fragments: r = 16 rg + lane / 4 + 8 h.
  int key_end[2];
  for (int h = 0; h < 2; ++h) {
    const int r = rg * 16 + lane / 4 + 8 * h;
    const int i = r / G;
    key_end[h] = r >= rows ? 0 : (p.causal ? min(max(lk - lq + i + 1, 0), lk) : lk);
  }

  // Anchored order: K of tile 0 and of the last tile go first (into K stage 0 and the V
  // buffer), so their copies overlap the Q load below.
  const bool seed = p.anchored && first < last;
  const int anchors = tiles > 1 ? 2 : 1;
  if (seed) {
    load_k(0, 0);
    if (anchors == 2) load_group_rows<KV, D, MT>(p, ksrc, b, tiles - 1, lk, kg, tg, v_smem);
    ptx::cp_async_commit();
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

  const int ld_row = (lane & 7) + ((lane >> 3) & 1) * 8;  // ldmatrix row of this lane (A operands)
  const int ld_col = (lane >> 4) * 8;                     // ldmatrix column of this lane (A operands)

  // s[nt][e]: score of row 16 rg + lane/4 + 8 (e/2) and key 32 MT kg + 8 nt + 2 (lane%4) + e%2.
  float s[kNT][4];
  auto compute_scores = [&](const unsigned char* kbuf, int tile) {
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t a[4];
      ldsm_x4(a, ptx::smem_addr(q_smem + layout::swizzled_offset<D>(rg * 16 + ld_row, ks * 16 + ld_col)));
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        uint32_t r[4];
        const int key = kg * kKeys + np * 16 + (lane >> 4) * 8 + (lane & 7);
        const int col = ks * 16 + ((lane >> 3) & 1) * 8;
        ldsm_x4(r, ptx::smem_addr(kbuf + layout::swizzled_offset<D>(key, col)));
        ptx::mma_16816<T>(s[2 * np], a, r[0], r[1]);
        ptx::mma_16816<T>(s[2 * np + 1], a, r[2], r[3]);
      }
    }
    // scale, and -inf for keys a row does not see
    const int key0 = tile * kBlockN + kg * kKeys + 2 * (lane % 4);
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = key0 + nt * 8 + (e & 1);
        s[nt][e] = key < key_end[e >> 1] ? s[nt][e] * score_scale : -INFINITY;
      }
  };
  // This warp's maximum of each of its rows over its keys, NaN kept, to red_max[buf].
  auto publish_row_max = [&](int buf) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) mx = ptx::max_nan(mx, ptx::max_nan(s[nt][2 * h], s[nt][2 * h + 1]));
      mx = quad_max</*kNanPropagates=*/true>(mx);
      if (lane % 4 == 0) red_max[(buf * kGroups + kg) * kRowsPad + rg * 16 + lane / 4 + 8 * h] = mx;
    }
  };
  // Row maxima over the whole tile (after a barrier): the key groups' partial maxima.
  auto tile_row_max = [&](int buf, float (&mx)[2]) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = rg * 16 + lane / 4 + 8 * h;
      float v = red_max[buf * kGroups * kRowsPad + r];
#pragma unroll
      for (int g = 1; g < kGroups; ++g) v = ptx::max_nan(v, red_max[(buf * kGroups + g) * kRowsPad + r]);
      mx[h] = v;
    }
  };

  float m[2] = {-INFINITY, -INFINITY};
  float l[2] = {0.0f, 0.0f};  // this lane's part of l: its keys of the warp's keys

  if (seed) {
    ptx::cp_async_wait<0>();
    __syncthreads();  // Q, and every group's anchor rows
    compute_scores(group_tile(k_smem), 0);
    publish_row_max(0);
    if (anchors == 2) {
      if constexpr (kFp8) group_sync<MT>(kg);  // the group is done reading the work tile
      compute_scores(group_tile(v_smem), tiles - 1);
      publish_row_max(1);
    }
    __syncthreads();
    float mx[2];
    tile_row_max(0, mx);
    for (int h = 0; h < 2; ++h) m[h] = ptx::max_nan(m[h], mx[h]);
    if (anchors == 2) {
      tile_row_max(1, mx);
      for (int h = 0; h < 2; ++h) m[h] = ptx::max_nan(m[h], mx[h]);
    }
  }
  __syncthreads();  // Q is in place; the seeding is done with K stage 0, the V buffer, red_max

  // K pipeline prologue: kKStages (K, empty V) group pairs.
  for (int j = 0; j < kKStages; ++j) {
    if (first + j < last) load_k(first + j, j);
    ptx::cp_async_commit();
    ptx::cp_async_commit();
  }

  float o[kDT][4];
#pragma unroll
  for (int nt = 0; nt < kDT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[nt][e] = 0.0f;

  // The previous kept tile, whose P V is still to be applied: P as A fragments, alpha.
  uint32_t pend_p[kKS][4];
  float pend_alpha[2] = {1.0f, 1.0f};
  bool pending = false;
  auto apply_pv = [&](const unsigned char* vbuf) {
#pragma unroll
    for (int nt = 0; nt < kDT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[nt][e] *= pend_alpha[e >> 1];
#pragma unroll
    for (int kk = 0; kk < kKS; ++kk) {
#pragma unroll
      for (int np = 0; np < kDT / 2; ++np) {
        uint32_t r[4];
        const int key = kg * kKeys + kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
        const int col = np * 16 + (lane >> 4) * 8;
        ldsm_x4_trans(r, ptx::smem_addr(vbuf + layout::swizzled_offset<D>(key, col)));
        ptx::mma_16816<T>(o[2 * np], pend_p[kk], r[0], r[1]);
        ptx::mma_16816<T>(o[2 * np + 1], pend_p[kk], r[2], r[3]);
      }
    }
  };

  unsigned long long visited = 0, skipped = 0;
  for (int t = first; t < last; ++t) {
    const int j = t - first;
    const int stage = j % kKStages;
    ptx::cp_async_wait<2 * kKStages - 1>();  // K(t): 2 kKStages - 1 groups were committed after it
    group_sync<MT>(kg);
    compute_scores(group_tile(k_smem + stage * Smem::kStageBytes), t);
    publish_row_max(j & 1);
    __syncthreads();  // partial maxima published; every warp is done reading K(t)
    float tile_max[2];
    tile_row_max(j & 1, tile_max);

    const bool anchor = p.anchored ? (t == 0 || t == tiles - 1) : (t == first);
    bool keep = true;
    if constexpr (kSkip) {
      if (skip_on && !anchor) {
        bool row_keeps = false;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          // a padding row has key_end 0 and so tile_max = -inf: it never keeps a tile
          if (tile_max[h] != -INFINITY && !(tile_max[h] - m[h] < log_lambda)) row_keeps = true;
        }
        if constexpr (MT == 1) {
          keep = __any_sync(0xffffffffu, row_keeps);  // this warp holds every row of the group
        } else {
          keep = __syncthreads_or(row_keeps) != 0;
        }
      }
    }
    ++visited;
    if (threadIdx.x == 0 && p.decisions)
      p.decisions[(int64_t(b) * p.num_kv_heads + hk) * p.tiles_max + t] = keep ? 1 : 2;

    if (t + kKStages < last) load_k(t + kKStages, stage);
    ptx::cp_async_commit();

    if (pending) {
      ptx::cp_async_wait<1>();  // V of the previous kept tile (K(t + kKStages) came after it)
      group_sync<MT>(kg);
      apply_pv(group_tile(v_smem));
    }
    if (keep) {
      group_sync<MT>(kg);  // every warp of the group is done reading the V buffer
      load_v(t, v_smem);
    } else {
      ++skipped;
    }
    ptx::cp_async_commit();
    pending = keep;

    if (keep) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float m_new = ptx::max_nan(m[h], tile_max[h]);
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;
        pend_alpha[h] = exp2f((m[h] - m_use) * kLog2e);
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          s[nt][2 * h] = exp2f((s[nt][2 * h] - m_use) * kLog2e);
          s[nt][2 * h + 1] = exp2f((s[nt][2 * h + 1] - m_use) * kLog2e);
          sum += s[nt][2 * h] + s[nt][2 * h + 1];
        }
        l[h] = l[h] * pend_alpha[h] + sum;
        m[h] = m_new;
      }
#pragma unroll
      for (int kk = 0; kk < kKS; ++kk) {
        pend_p[kk][0] = ptx::pack2<T>(s[2 * kk][0], s[2 * kk][1]);
        pend_p[kk][1] = ptx::pack2<T>(s[2 * kk][2], s[2 * kk][3]);
        pend_p[kk][2] = ptx::pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        pend_p[kk][3] = ptx::pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
      }
    }
  }
  if (pending) {
    ptx::cp_async_wait<0>();
    group_sync<MT>(kg);
    apply_pv(group_tile(v_smem));
  }
  ptx::cp_async_wait<0>();

  if (threadIdx.x == 0 && first < last) {
    if (p.stats_per_head) {
      atomicAdd(&p.stats_per_head[2 * hk], visited);
      atomicAdd(&p.stats_per_head[2 * hk + 1], skipped);
    }
    if (p.totals) {
      atomicAdd(&p.totals[0], visited);
      atomicAdd(&p.totals[1], skipped);
    }
  }

  // Epilogue: the key groups' partial O and l to shared memory (O over the K stages and the V
  // buffer, free once every warp is past this barrier), summed per row in group order.
  __syncthreads();
  float* part_o = reinterpret_cast<float*>(k_smem);
  constexpr int kStride = Smem::kOutStride;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = rg * 16 + lane / 4 + 8 * h;
    const float lsum = quad_sum(l[h]);
    if (lane % 4 == 0) {
      red_l[kg * kRowsPad + r] = lsum;
      if (kg == 0) row_m[r] = m[h];
    }
    float* dst = part_o + (kg * kRowsPad + r) * kStride + 2 * (lane % 4);
#pragma unroll
    for (int nt = 0; nt < kDT; ++nt)
      *reinterpret_cast<float2*>(dst + nt * 8) = make_float2(o[nt][2 * h], o[nt][2 * h + 1]);
  }
  __syncthreads();
  constexpr int kQuads = D / 4;
  for (int c = threadIdx.x; c < kRowsPad * kQuads; c += kThreads) {
    const int r = c / kQuads, col = (c % kQuads) * 4;
    if (r >= rows) continue;
    float acc[4];
    float lsum = red_l[r];
    {
      const float4 v = *reinterpret_cast<const float4*>(part_o + r * kStride + col);
      acc[0] = v.x, acc[1] = v.y, acc[2] = v.z, acc[3] = v.w;
    }
#pragma unroll
    for (int g = 1; g < kGroups; ++g) {
      const float4 v = *reinterpret_cast<const float4*>(part_o + (g * kRowsPad + r) * kStride + col);
      acc[0] += v.x, acc[1] += v.y, acc[2] += v.z, acc[3] += v.w;
      lsum += red_l[g * kRowsPad + r];
    }
    const float mr = row_m[r];
    const int i = r / G, head = hk * G + r % G;
    const bool empty = mr == -INFINITY || lsum == 0.0f;
    if (p.splits == 1) {
      T* out = static_cast<T*>(p.out) +
               q_side_offset(p, p.o_batch_stride, p.o_token_stride, p.o_head_stride, b, i, head) + col;
      // FP8 V: its scale multiplies the output (as in the CPU engine, into 1 / l)
      const float inv = empty ? 0.0f : (kFp8 ? dequant_scale(p, p.v_scale, hk) / lsum : 1.0f / lsum);
      *reinterpret_cast<uint32_t*>(out) = ptx::pack2<T>(acc[0] * inv, acc[1] * inv);
      *reinterpret_cast<uint32_t*>(out + 2) = ptx::pack2<T>(acc[2] * inv, acc[3] * inv);
      if (p.lse && col == 0)
        p.lse[q_side_offset(p, p.lse_batch_stride, p.lse_token_stride, p.lse_head_stride, b, i, head)] =
            empty ? -INFINITY : mr + logf(lsum);
    } else {
      const int64_t part = ((int64_t(b) * p.num_kv_heads + hk) * p.splits + split) * p.rows_max + r;
      float* wo = p.ws_o + part * D + col;
      *reinterpret_cast<float2*>(wo) = make_float2(acc[0], acc[1]);
      *reinterpret_cast<float2*>(wo + 2) = make_float2(acc[2], acc[3]);
      if (col == 0) {
        // a chunk that kept nothing contributes nothing
        p.ws_ml[2 * part] = (first < last && lsum != 0.0f) || mr != mr ? mr : -INFINITY;
        p.ws_ml[2 * part + 1] = lsum;
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
  if (r >= lq * p.q_per_kv) return;
  const int i = r / p.q_per_kv, head = hk * p.q_per_kv + r % p.q_per_kv;
  const int64_t part0 = (int64_t(b) * p.num_kv_heads + hk) * p.splits * p.rows_max + r;
  float big = -INFINITY;
  for (int sp = 0; sp < p.splits; ++sp) big = ptx::max_nan(big, p.ws_ml[2 * (part0 + int64_t(sp) * p.rows_max)]);
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
  // FP8 V: its scale into 1 / total (as the CPU engine puts it into 1 / l)
  const float v_over_total = p.v_scale ? dequant_scale(p, p.v_scale, hk) / total : 0.0f;
  for (int d = threadIdx.x; d < D; d += kCombineThreads) {
    float acc = 0.0f;
    for (int sp = 0; sp < p.splits; ++sp) {
      const int64_t part = part0 + int64_t(sp) * p.rows_max;
      const float ms = p.ws_ml[2 * part];
      if (ms != -INFINITY) acc += p.ws_o[part * D + d] * exp2f((ms - big) * kLog2e);
    }
    out[d] = T(p.v_scale ? acc * v_over_total : acc / total);
  }
  if (p.lse && threadIdx.x == 0)
    p.lse[q_side_offset(p, p.lse_batch_stride, p.lse_token_stride, p.lse_head_stride, b, i, head)] = big + logf(total);
}

}  // namespace blasst::cuda::decode
