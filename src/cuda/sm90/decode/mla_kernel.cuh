// The sm_90a MLA decode kernel (mla_traits.cuh for the shape and the roles of the warpgroups).
//
// Grid (chunks x splits, Hkv, batch): CTA (c, split) of entry b and KV head hk owns pairs
// [64 c, 64 c + 64) of the KV head's (query head, row) pairs, head-major (pair = h_local * Lq + i),
// which is decode decision group c of SPEC section 2 with block_m = 64, and split `split` of the
// group's visible tiles. It streams the tiles of its split (anchored order with skipping on: the
// group's two anchors first, as seeds of the running max only) through kStages buffers:
//   warpgroup 1: S = Q K^T -> mask (causal diagonal, keys past Lk) -> row max -> vote (SPEC rule on
//     raw scores, as in the prefill kernels; one bar.red over the warpgroup) -> skipped: done;
//     kept: P = exp2(...), P and the rows' rescale factors to shared memory for warpgroup 2, then
//     O[:, :256] = alpha O + P V (the P V of tile t is issued behind the QK^T of the next tile);
//   warpgroup 2: waits for warpgroup 1's word on each tile; kept: O[:, 256:] = alpha O + P V.
// A tile's buffer goes back to the producer when both warpgroups are done with it.
// Outputs: O / l and the LSE (one split), or the unnormalized partials that decode's combine
// kernel merges (rows of the workspace token-major, r = i * G + h_local, as the sm_80 decode).
#pragma once

#include <climits>

#include <cute/arch/cluster_sm90.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "cuda/common/quad_reduce.cuh"
#include "cuda/common/skip_threshold.cuh"
#include "cuda/sm80/decode/decode_kernel.cuh"
#include "cuda/sm90/decode/mla_traits.cuh"
#include "cuda/sm90/prefill/softmax_vote.cuh"
#include "cuda/sm90/warpgroup_gemm.cuh"

namespace blasst::cuda::sm90::mla {

template <class Traits>
struct MlaKernelParams {
  decode::DecodeParams p;            // operands, splits, workspace, statistics, trace
  typename Traits::TmaKV tma_kv;     // the latent cache (K; V is its first 512 columns)
  typename Traits::GmemShape kv_shape;
  int32_t chunks;                    // decision groups per KV head: ceil(G * max_seqlen_q / 64)
};

// Length of entry b from cu_seqlens / seqlens (device memory), clamped to the padded bound.
__device__ __forceinline__ int entry_length(const int32_t* cu, const int32_t* lens, int b, int max_len) {
  const int n = cu ? cu[b + 1] - cu[b] : (lens ? lens[b] : max_len);
  return n < 0 ? 0 : (n > max_len ? max_len : n);
}

template <class Traits, bool kSkip>
__global__ void __launch_bounds__(Traits::kThreads, 1) mla_decode_kernel(const __grid_constant__ MlaKernelParams<Traits> P) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using T = typename Traits::Element;
  // the CUDA type of T, for packed stores
  using CudaT = std::conditional_t<std::is_same_v<T, cutlass::half_t>, __half, __nv_bfloat16>;
  using Barrier = cutlass::arch::ClusterTransactionBarrier;
  using EmptyBarrier = cutlass::arch::ClusterBarrier;
  constexpr int BN = Traits::kBlockN;
  constexpr int ROWS = Traits::kRows;
  constexpr int Dqk = Traits::Dqk;
  constexpr int HALF = Traits::kHalf;
  constexpr int kStages = Traits::kStages;
  constexpr int C = Traits::kCluster;
  const decode::DecodeParams& p = P.p;

  extern __shared__ __align__(1024) unsigned char smem_raw[];
  auto& ss = *reinterpret_cast<typename Traits::SharedStorage*>(smem_raw);

  const int chunk = blockIdx.x % P.chunks;
  const int split = blockIdx.x / P.chunks;
  const int hk = blockIdx.y;
  const int b = blockIdx.z;
  const int G = p.q_per_kv;
  const int lq = entry_length(p.cu_seqlens_q, p.seqlens_q, b, p.max_seqlen_q);
  const int lk = entry_length(p.cu_seqlens_k, p.seqlens_k, b, p.max_seqlen_k);
  const int pair0 = chunk * ROWS;
  // A chunk with no pair: the group does not exist in this entry. (Clusters run only where every
  // chunk holds 64 pairs of every entry, so no CTA of a cluster leaves here.)
  if (pair0 >= G * lq) return;
  const int rows_here = min(ROWS, G * lq - pair0);
  auto key_end = [&](int i) { return p.causal ? min(max(lk - lq + i + 1, 0), lk) : lk; };
  // Keys the group's rows see: [0, ke_max); every row sees [0, ke_min).
  int ke_max = 0, ke_min = INT_MAX;
  for (int r = 0; r < rows_here; ++r) {
    const int ke = key_end((pair0 + r) % lq);
    ke_max = max(ke_max, ke);
    ke_min = min(ke_min, ke);
  }
  const int n_tiles = (ke_max + BN - 1) / BN;  // the group's visible tiles
  const int per_split = (n_tiles + p.splits - 1) / p.splits;
  const int t_begin = min(n_tiles, split * per_split);
  const int t_end = min(n_tiles, t_begin + per_split);

  const SkipThreshold threshold = kSkip ? skip_threshold(threshold_factor(p, b, hk), lk) : SkipThreshold{};
  const bool vote_on = kSkip && threshold.on;
  const bool anchored = vote_on && p.anchored;
  // Anchored: tile 0 and the last visible tile seed the running max of every split first.
  const int seeds = (anchored && t_begin < t_end) ? (n_tiles > 1 ? 2 : 1) : 0;
  const int n_stream = seeds + (t_end - t_begin);
  auto tile_at = [&](int i) { return i < seeds ? (i == 0 ? 0 : n_tiles - 1) : t_begin + (i - seeds); };
  auto is_anchor = [&](int t) { return anchored ? (t == 0 || t == n_tiles - 1) : t == t_begin; };

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
      Barrier::init(&ss.k_full[s], 1);
      EmptyBarrier::init(&ss.k_empty[s], 8 * C);  // every consumer warp of every CTA of the cluster
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();
  // The cluster's barriers exist before any CTA multicasts into or arrives on them.
  if constexpr (C > 1) cute::cluster_sync();
  const int rank = C > 1 ? int(cute::block_rank_in_cluster()) : 0;

  if (warp < 4) {
    // ---------------- producer ----------------
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (warp == 0 && cute::elect_one_sync()) {
      const bool paged = p.block_table != nullptr;
      const int32_t* pages = paged ? p.block_table + int64_t(b) * p.block_table_stride : nullptr;
      const int k_start = p.cu_seqlens_k ? p.cu_seqlens_k[b] : 0;
      const int kv_batch = (paged || p.cu_seqlens_k) ? 0 : b;
      Tensor mKV = P.tma_kv.get_tma_tensor(P.kv_shape);
      auto cta = P.tma_kv.get_slice(rank);  // this CTA's share of each tile (all of it without a cluster)
      Tensor dst = cta.partition_D(make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutK{}));
      for (int i = 0; i < n_stream; ++i) {
        const int s = i % kStages;
        const uint32_t phase = uint32_t(i / kStages) & 1u;
        const int key = tile_at(i) * BN;
        // pages hold a multiple of 64 tokens (the host checks), so a tile lies in one page
        const int row = paged ? pages[key >> p.page_shift] * p.page_size + (key & (p.page_size - 1)) : k_start + key;
        Tensor src = local_tile(domain_offset(make_coord(row, 0), mKV(_, _, hk, kv_batch)), Shape<Int<BN>, Int<Dqk>>{},
                                make_coord(0, 0));
        // (with a cluster: every CTA's consumers are done with stage s, and every share of the
        // tile lands in every CTA, so each expects the whole tile)
        EmptyBarrier::wait(&ss.k_empty[s], phase ^ 1u);
        Barrier::arrive_and_expect_tx(&ss.k_full[s], Traits::kTileBytes);
        if constexpr (C > 1)
          copy(P.tma_kv.with(ss.k_full[s], uint16_t((1u << C) - 1u)), cta.partition_S(src), dst(_, _, _, s));
        else
          copy(P.tma_kv.with(ss.k_full[s]), cta.partition_S(src), dst(_, _, _, s));
      }
    }
    // No CTA leaves while another may still write into it or arrive on its barriers.
    if constexpr (C > 1) cute::cluster_sync();
    return;
  }

  // ---------------- consumers ----------------
  cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
  const int ct = threadIdx.x - 128;  // 0 .. 255
  const int wg = ct / 128;           // 0: QK^T, softmax, V half 0; 1: V half 1
  const int wt = ct % 128;

  // Q rows of the group into shared memory, 16 bytes a thread at a time; padding rows are zero.
  Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
  {
    constexpr int kChunks = Dqk / 8;
    const T* q = static_cast<const T*>(p.q);
    for (int idx = ct; idx < ROWS * kChunks; idx += 256) {
      const int r = idx / kChunks, c = (idx % kChunks) * 8;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (r < rows_here) {
        const int pair = pair0 + r, i = pair % lq, head = hk * G + pair / lq;
        v = *reinterpret_cast<const uint4*>(q + decode::q_side_offset(p, p.q_batch_stride, p.q_token_stride,
                                                                     p.q_head_stride, b, i, head) + c);
      }
      *reinterpret_cast<uint4*>(&sQ(r, c)) = v;
    }
  }
  cutlass::arch::fence_view_async_shared();
  ptx::named_barrier_sync(Traits::kBarConsumers, 256);

  Tensor sP = make_tensor(make_smem_ptr(ss.p.data()), typename Traits::SmemLayoutP{});
  // V^T of this warpgroup's half in each stage.
  T* const k_base = ss.k.data();
  Tensor sVt0 = make_tensor(make_smem_ptr(k_base + wg * Traits::kHalfOffset), typename Traits::SmemLayoutVtHalf{});
  Tensor sVt1 = make_tensor(make_smem_ptr(k_base + Traits::kStageElems + wg * Traits::kHalfOffset),
                            typename Traits::SmemLayoutVtHalf{});

  typename Traits::MmaORs mma_o_rs;
  typename Traits::MmaOSs mma_o_ss;
  auto thr_o = mma_o_rs.get_thread_slice(wt);  // both products have the same C layout
  Tensor tOrO = partition_fragment_C(mma_o_rs, Shape<Int<ROWS>, Int<HALF>>{});
  Tensor o_rc = make_tensor(tOrO.data(), rowcol_layout(tOrO.layout()));
  Tensor tOcO = thr_o.partition_C(make_identity_tensor(Shape<Int<ROWS>, Int<HALF>>{}));
  Tensor oc_rc = make_tensor(tOcO.data(), rowcol_layout(tOcO.layout()));
  constexpr int R = decltype(size<0>(o_rc))::value;
  clear(tOrO);
  // A stage goes back to the producers of every CTA of the cluster (they multicast into it).
  auto release = [&](int s) {
    if constexpr (C > 1) {
#pragma unroll
      for (int c = 0; c < C; ++c) EmptyBarrier::arrive(&ss.k_empty[s], uint32_t(c), uint32_t(lane == 0));
    } else {
      if (lane == 0) EmptyBarrier::arrive(&ss.k_empty[s]);
    }
  };

  float m_final[R], l_final[R];  // warpgroup 0 only: the rows' running max (raw) and sum
  int skipped = 0;

  if (uniform(wg == 0)) {
    typename Traits::MmaS mma_s;
    auto thr_s = mma_s.get_thread_slice(wt);
    Tensor sK = make_tensor(make_smem_ptr(k_base), typename Traits::SmemLayoutK{});
    Tensor tSrQ = thr_s.partition_fragment_A(sQ);  // (MMA, 1, 36) descriptors
    Tensor tSrK = thr_s.partition_fragment_B(sK);  // (MMA, 1, 36, stages)
    Tensor tSrS = partition_fragment_C(mma_s, Shape<Int<ROWS>, Int<BN>>{});
    Tensor tScS = thr_s.partition_C(make_identity_tensor(Shape<Int<ROWS>, Int<BN>>{}));
    Tensor s_rc = make_tensor(tSrS.data(), rowcol_layout(tSrS.layout()));
    Tensor c_rc = make_tensor(tScS.data(), rowcol_layout(tScS.layout()));
    Tensor tPsP = thr_s.partition_C(sP);
    Tensor tOrVt0 = thr_o.partition_fragment_B(sVt0);  // (MMA, 1, BN / 16)
    Tensor tOrVt1 = thr_o.partition_fragment_B(sVt1);
    Tensor rP = make_tensor<T>(tSrS.layout());
    Tensor tOrP = make_tensor(rP.data(), acc_as_a_layout(rP.layout()));

    OnlineSoftmax<R, kSkip> sm;
    sm.init();
    bool row_exists[R];
    int row_ke[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int row = get<0>(c_rc(r, 0));
      row_exists[r] = row < rows_here;
      row_ke[r] = row_exists[r] ? key_end((pair0 + row) % lq) : 0;
    }
    const float log_lambda_raw = threshold.log_lambda / p.scale;
    const float scale_log2 = p.scale * 1.4426950408889634f;
    float vote_thr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) vote_thr[r] = keep_threshold(kNegInf, log_lambda_raw);
    uint8_t* const trace =
        (p.decisions && wt == 0)
            ? p.decisions + ((int64_t(b) * p.num_kv_heads + hk) * P.chunks + chunk) * int64_t(p.tiles_max)
            : nullptr;

    auto issue_s = [&](int stage) { issue_overwriting_gemm(mma_s, tSrQ, tSrK, stage, tSrS); };
    bool pv_pending = false;
    int pv_stage = 0;
    auto issue_pv = [&]() {
      warpgroup_fence_operand(tOrO);
      warpgroup_arrive();
      if (uniform(pv_stage == 0)) {
#pragma unroll
        for (int kb = 0; kb < size<2>(tOrP); ++kb) cute::gemm(mma_o_rs, tOrP(_, _, kb), tOrVt0(_, _, kb), tOrO);
      } else {
#pragma unroll
        for (int kb = 0; kb < size<2>(tOrP); ++kb) cute::gemm(mma_o_rs, tOrP(_, _, kb), tOrVt1(_, _, kb), tOrO);
      }
      warpgroup_commit_batch();
    };
    auto finish_pending_pv = [&]() {
      warpgroup_wait<0>();
      warpgroup_fence_operand(tOrO);
      if (pv_pending) {
        release(pv_stage);
        pv_pending = false;
      }
    };
    // Tells warpgroup 2 whether it multiplies tile i (after it has let go of the previous word).
    auto post = [&](int flag) {
      ptx::named_barrier_sync(Traits::kBarPEmpty, 256);
      if (wt == 0) ss.tile_flag = flag;
    };

    for (int i = 0; i < n_stream; ++i) {
      const int t = tile_at(i);
      const int s = i % kStages;
      const uint32_t phase = uint32_t(i / kStages) & 1u;
      const bool seed = i < seeds;
      Barrier::wait(&ss.k_full[s], phase);
      // (Every branch below is on a warp-uniform value, made visible to the compiler by
      // uniform(), so that ptxas does not serialize the products in flight.)
      if (uniform(pv_pending)) {
        issue_s(s);
        issue_pv();
        warpgroup_wait<1>();
      } else {
        issue_s(s);
        warpgroup_wait<0>();
      }
      warpgroup_fence_operand(tSrS);
      if (uniform((t + 1) * BN > ke_min)) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const int ke = row_ke[r] - t * BN;
#pragma unroll
          for (int c = 0; c < size<1>(s_rc); ++c)
            if (get<1>(c_rc(r, c)) >= ke) s_rc(r, c) = kNegInf;
        }
      }
      float mt[R];
      thread_row_max<kSkip>(s_rc, mt);
      bool skip_tile = seed;
      if (kSkip && uniform(!seed && vote_on && !is_anchor(t))) {
        bool keep = false;
#pragma unroll
        for (int r = 0; r < R; ++r) keep |= row_exists[r] && !(mt[r] < vote_thr[r]);
        skip_tile = !warpgroup_any(keep, Traits::kBarVote);
      }
#pragma unroll
      for (int r = 0; r < R; ++r) mt[r] = quad_max<kSkip>(mt[r]);
      if (uniform(skip_tile)) {
        if (seed) {
          // m only (SPEC section 2): l and O start at 0 and the anchors add theirs in their turn
#pragma unroll
          for (int r = 0; r < R; ++r) {
            sm.m[r] = max_of<kSkip>(sm.m[r], mt[r]);
            vote_thr[r] = keep_threshold(sm.m[r], log_lambda_raw);
          }
        } else {
          ++skipped;
          if (trace) trace[t] = 2;  // BLASST_TILE_SKIPPED
        }
        post(0);
        ptx::named_barrier_arrive(Traits::kBarPFull, 256);
        finish_pending_pv();
        release(s);
        continue;
      }
      if (trace) trace[t] = 1;  // BLASST_TILE_KEPT
      // Rows of the tile past lk hold another entry's or padding values (maybe NaN): P is 0
      // there, but 0 * NaN is not, so both V halves of those rows are zeroed before P V.
      if (uniform((t + 1) * BN > lk)) {
        Tensor sKs = sK(_, _, s);
        const int first = max(lk - t * BN, 0);
        constexpr int kVChunks = Traits::Dv / 8;
        for (int idx = wt; idx < (BN - first) * kVChunks; idx += 128) {
          const int r = first + idx / kVChunks, c = (idx % kVChunks) * 8;
          *reinterpret_cast<uint4*>(&sKs(r, c)) = make_uint4(0, 0, 0, 0);
        }
        cutlass::arch::fence_view_async_shared();
        ptx::named_barrier_sync(Traits::kBarGroup1, 128);
      }
      float alpha[R];
      sm.exponentiate(s_rc, mt, scale_log2, alpha);
      if constexpr (kSkip) {
#pragma unroll
        for (int r = 0; r < R; ++r) vote_thr[r] = keep_threshold(sm.m[r], log_lambda_raw);
      }
      // The previous P V reads rP: it lands before rP takes this tile's P.
      finish_pending_pv();
      sm.rescale(o_rc, alpha);
      convert_fragment_into(tSrS, rP);
      post(1);
#pragma unroll
      for (int e = 0; e < size(rP); ++e) tPsP(e) = rP(e);
      if ((lane & 3) == 0) {
#pragma unroll
        for (int r = 0; r < R; ++r) ss.row_factor[get<0>(c_rc(r, 0))] = alpha[r];
      }
      cutlass::arch::fence_view_async_shared();
      ptx::named_barrier_arrive(Traits::kBarPFull, 256);
      pv_pending = true;
      pv_stage = s;
    }
    if (pv_pending) {
      issue_pv();
      finish_pending_pv();
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      m_final[r] = sm.m[r];
      l_final[r] = quad_sum(sm.l[r]);
    }
  } else {
    // ---------------- warpgroup 2: the second V half ----------------
    auto thr_ss = mma_o_ss.get_thread_slice(wt);
    Tensor tOrP = thr_ss.partition_fragment_A(sP);      // descriptors of P in shared memory
    Tensor tOrVt0 = thr_ss.partition_fragment_B(sVt0);  // this warpgroup's half (wg = 1)
    Tensor tOrVt1 = thr_ss.partition_fragment_B(sVt1);
    ptx::named_barrier_arrive(Traits::kBarPEmpty, 256);  // the buffer starts free
    for (int i = 0; i < n_stream; ++i) {
      const int s = i % kStages;
      const uint32_t phase = uint32_t(i / kStages) & 1u;
      ptx::named_barrier_sync(Traits::kBarPFull, 256);
      const int flag = *reinterpret_cast<volatile int*>(&ss.tile_flag);
      if (uniform(flag != 0)) {
        Barrier::wait(&ss.k_full[s], phase);  // (makes the TMA's bytes visible to this warpgroup)
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const float a = ss.row_factor[get<0>(oc_rc(r, 0))];
#pragma unroll
          for (int c = 0; c < size<1>(o_rc); ++c) o_rc(r, c) *= a;
        }
        warpgroup_fence_operand(tOrO);
        warpgroup_arrive();
        if (uniform(s == 0)) {
#pragma unroll
          for (int kb = 0; kb < size<2>(tOrP); ++kb) cute::gemm(mma_o_ss, tOrP(_, _, kb), tOrVt0(_, _, kb), tOrO);
        } else {
#pragma unroll
          for (int kb = 0; kb < size<2>(tOrP); ++kb) cute::gemm(mma_o_ss, tOrP(_, _, kb), tOrVt1(_, _, kb), tOrO);
        }
        warpgroup_commit_batch();
        warpgroup_wait<0>();
        warpgroup_fence_operand(tOrO);
      }
      release(s);
      if (i + 1 < n_stream) ptx::named_barrier_arrive(Traits::kBarPEmpty, 256);
    }
  }

  // ---------------- epilogue ----------------
  // Warpgroup 1 hands each row's 1 / l to warpgroup 2 through row_factor (once warpgroup 2 is
  // done reading the last tile's factors).
  ptx::named_barrier_sync(Traits::kBarConsumers, 256);
  float inv[R];
  if (wg == 0) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const bool empty = m_final[r] == kNegInf || l_final[r] == 0.0f;
      inv[r] = empty ? 0.0f : 1.0f / l_final[r];
      if ((lane & 3) == 0) ss.row_factor[get<0>(oc_rc(r, 0))] = inv[r];
    }
  }
  ptx::named_barrier_sync(Traits::kBarConsumers, 256);
  if (wg == 1) {
#pragma unroll
    for (int r = 0; r < R; ++r) inv[r] = ss.row_factor[get<0>(oc_rc(r, 0))];
  }
  const int col0 = wg * HALF;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int row = get<0>(oc_rc(r, 0));
    if (row >= rows_here) continue;
    const int pair = pair0 + row, i = pair % lq, h_local = pair / lq, head = hk * G + h_local;
    if (p.splits == 1) {
      T* out = static_cast<T*>(p.out) +
               decode::q_side_offset(p, p.o_batch_stride, p.o_token_stride, p.o_head_stride, b, i, head) + col0;
#pragma unroll
      for (int c = 0; c < size<1>(o_rc); c += 2) {
        const int col = get<1>(oc_rc(r, c));
        *reinterpret_cast<uint32_t*>(out + col) = ptx::pack2<CudaT>(o_rc(r, c) * inv[r], o_rc(r, c + 1) * inv[r]);
      }
      if (wg == 0 && p.lse && (lane & 3) == 0) {
        const bool empty = m_final[r] == kNegInf || l_final[r] == 0.0f;
        p.lse[decode::q_side_offset(p, p.lse_batch_stride, p.lse_token_stride, p.lse_head_stride, b, i, head)] =
            empty ? kNegInf : m_final[r] * p.scale + logf(l_final[r]);
      }
    } else {
      const int ws_row = i * G + h_local;  // the combine kernel's row order
      const int64_t part = ((int64_t(b) * p.num_kv_heads + hk) * p.splits + split) * p.rows_max + ws_row;
      float* wo = p.ws_o + part * Traits::Dv + col0;
#pragma unroll
      for (int c = 0; c < size<1>(o_rc); c += 2) {
        const int col = get<1>(oc_rc(r, c));
        *reinterpret_cast<float2*>(wo + col) = make_float2(o_rc(r, c), o_rc(r, c + 1));
      }
      if (wg == 0 && (lane & 3) == 0) {
        // a split that kept nothing contributes nothing (NaN still reaches the combine)
        const bool empty = (m_final[r] == kNegInf || l_final[r] == 0.0f) && m_final[r] == m_final[r];
        p.ws_ml[2 * part] = empty ? kNegInf : m_final[r] * p.scale;
        p.ws_ml[2 * part + 1] = l_final[r];
      }
    }
  }
  if (wg == 0 && wt == 0) {
    const int visited = t_end - t_begin;
    if (visited > 0) {
      if (p.stats_per_head) {
        atomicAdd(&p.stats_per_head[2 * hk], (unsigned long long)visited);
        if (skipped) atomicAdd(&p.stats_per_head[2 * hk + 1], (unsigned long long)skipped);
      }
      if (p.totals) {
        atomicAdd(&p.totals[0], (unsigned long long)visited);
        if (skipped) atomicAdd(&p.totals[1], (unsigned long long)skipped);
      }
    }
  }
  if constexpr (C > 1) cute::cluster_sync();
#endif
}

}  // namespace blasst::cuda::sm90::mla
