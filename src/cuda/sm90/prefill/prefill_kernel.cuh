// The sm_90a prefill kernel: TMA loads by a producer warp, wgmma in two or three consumer warpgroups,
// the SPEC skip rule per consumer warpgroup (decision group = its 64 query rows).
//
// Pipeline: K and V have kStagesK / kStagesV shared-memory buffers with a "full" mbarrier (the TMA
// transaction lands) and an "empty" mbarrier (all 8 consumer warps are done with it). The
// producer streams the CTA's tile sequence (visit_plan.cuh) into them; each consumer warpgroup
// walks the same sequence and per tile it processes:
//   S = Q K^T (wgmma, Q in registers or smem x K in smem) -> release K -> mask (causal diagonal, keys past Lk) ->
//   row max -> vote (each row: mt < m + ln(lambda) / scale in fp32, SPEC.md's rule on raw scores; the warpgroup
//   keeps the tile iff any existing row keeps it; one bar.red) -> skipped: release V, done ->
//   kept: rescale O, P = exp2(...) in registers -> O += P V (wgmma, registers x smem) -> release V.
// A skipped tile thus costs its QK^T and the vote only.
// FP8 (e4m3 Q, K, V): the same, with the e4m3 wgmma for QK^T, the score scale times the
// dequantization scales of Q and K (read here, per KV head where given), and for a kept tile
// its V converted into the warpgroup's own fp16 copy before P V (fp8_convert.cuh); V's scale
// goes into 1 / l, as in the CPU engine. With BLASST_CUDA_SM90_FP8_PV_E4M3 (Traits::kPVInFp8)
// P V runs on the e4m3 wgmma instead: P quantized to e4m3 in registers, V^T tiles from the
// pre-pass's workspace (fp8_pv.cuh), released after their P V as in the 16-bit kernels.
#pragma once

#include <climits>

#include <cute/arch/cluster_sm90.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "cuda/sm80/prefill/prefill_entry.cuh"
#include "cuda/common/prefill_params.hpp"
#include "cuda/common/quad_reduce.cuh"
#include "cuda/common/skip_threshold.cuh"
#include "cuda/sm90/prefill/fp8_convert.cuh"
#include "cuda/sm90/prefill/fp8_pv.cuh"
#include "cuda/sm90/prefill/prefill_traits.cuh"
#include "cuda/sm90/prefill/softmax_vote.cuh"
#include "cuda/sm90/prefill/visit_plan.cuh"
#include "cuda/sm90/warpgroup_gemm.cuh"

namespace blasst::cuda::sm90 {

template <class Traits>
struct KernelParams {
  PrefillParams p;
  typename Traits::TmaQ tma_q;
  typename Traits::TmaK tma_k;
  typename Traits::TmaV tma_v;
  typename Traits::TmaKBox tma_k_box;  // small pages only (box_pages != 0)
  typename Traits::TmaVBox tma_v_box;
  int32_t box_pages;                    // pages of 16-64 tokens: tiles are loaded box by box
  typename Traits::GmemShape q_shape;  // (rows, Dqk, Hq, batch) as the TMA descriptors see them
  typename Traits::GmemShape k_shape;  // (rows, Dqk, Hkv, batch); V's is the same with Dv
  typename Traits::GmemShape vt_shape; // kPVInFp8: (Dv, vt_keys, Hkv, batch) of the pre-pass's V^T
  int32_t row_blocks;                  // CTAs per (batch, head): ceil(max_seqlen_q / kBlockM)
  int32_t group_blocks;                // decision groups per (batch, head): p.row_blocks
  int32_t pingpong;                    // consumer warpgroups take turns issuing their products
};

template <class Traits, bool kSkip>
__global__ void __launch_bounds__(Traits::kThreads, 1) prefill_sm90_kernel(const __grid_constant__ KernelParams<Traits> P) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using T = typename Traits::Element;  // as loaded by TMA
  using TPV = typename Traits::ElementPV;
  using TO = typename Traits::ElementO;
  constexpr bool kFp8 = Traits::kFp8;
  constexpr bool kPVInFp8 = Traits::kPVInFp8;
  constexpr bool kConvertV = kFp8 && !kPVInFp8;  // FP8 V converted into 16-bit copies for P V
  using Barrier = cutlass::arch::ClusterTransactionBarrier;
  using EmptyBarrier = cutlass::arch::ClusterBarrier;
  constexpr int Dqk = Traits::Dqk;
  constexpr int Dv = Traits::Dv;
  constexpr int BM = Traits::kBlockM;
  constexpr int BN = Traits::kBlockN;
  constexpr int GR = Traits::kGroupRows;
  constexpr int kStagesK = Traits::kStagesK;
  constexpr int kStagesV = Traits::kStagesV;
  const PrefillParams& p = P.p;

  extern __shared__ __align__(1024) unsigned char smem_raw[];
  auto& ss = *reinterpret_cast<typename Traits::SharedStorage*>(smem_raw);

  // CTA placement and entry lengths as in the sm_80 kernel (prefill_entry.cuh).
  const CtaPlace place = cta_place(p, blockIdx.x, P.row_blocks);
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

  // Each group's last tile (-1: the group has no row or no row sees a key).
  int last[Traits::kConsumerGroups];
#pragma unroll
  for (int g = 0; g < Traits::kConsumerGroups; ++g) {
    const int rows_g = clamp_int(rows_here - g * GR, 0, GR);
    last[g] = rows_g > 0 ? (key_end(row0 + g * GR + rows_g - 1) + BN - 1) / BN - 1 : -1;
  }

  const SkipThreshold threshold =
      kSkip ? skip_threshold(threshold_factor(p, b, kv_head), lk)
            : SkipThreshold{};
  const bool skip_on = threshold.on;
  const float log_lambda = threshold.log_lambda;
  VisitPlan plan;
  plan.anchored = kSkip && skip_on && p.anchored;
  // The groups' last tiles take at most two values (group g's last row ends 64 rows after
  // group g-1's, within one tile of 128 keys of it), so one plan covers every group.
  plan.last_max = -1;
  plan.last_min = -1;
#pragma unroll
  for (int g = 0; g < Traits::kConsumerGroups; ++g) {
    plan.last_max = max(plan.last_max, last[g]);
    if (last[g] >= 0) plan.last_min = plan.last_min < 0 ? last[g] : min(plan.last_min, last[g]);
  }
  const int n_stream = plan.length();

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    Barrier::init(&ss.q_full, 1);
#pragma unroll
    for (int s = 0; s < kStagesK; ++s) {
      Barrier::init(&ss.k_full[s], 1);
      EmptyBarrier::init(&ss.k_empty[s], 4 * Traits::kConsumerGroups);
    }
#pragma unroll
    for (int s = 0; s < kStagesV; ++s) {
      Barrier::init(&ss.v_full[s], 1);
      EmptyBarrier::init(&ss.v_empty[s], 4 * Traits::kConsumerGroups);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();

  const bool paged = p.block_table != nullptr;
  // Row of the TMA tensor where key `key` of this entry lives, and the batch coordinate.
  const int kv_batch = (paged || p.cu_seqlens_k) ? 0 : b;
  const int32_t* pages = paged ? p.block_table + int64_t(b) * p.block_table_stride : nullptr;
  auto kv_row = [&](int key) -> int {
    if (!paged) return (p.cu_seqlens_k ? k_start : 0) + key;
    const int page = key >> p.page_shift;
    return pages[page] * p.page_size + (key & (p.page_size - 1));
  };

  if (warp < 4) {
    // ---------------- producer warpgroup ----------------
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    // Warp 0 loads Q and the K tiles, warp 1 the V tiles, each at its own pace.
    if (warp < 2 && cute::elect_one_sync()) {
      // (rows, W, Hkv, batch) of K (W = Dqk) or V (W = Dv), as its TMA descriptor sees it.
      auto kv_shape = [&](auto width) {
        if constexpr (decltype(width)::value == Dqk)
          return P.k_shape;
        else
          return replace<1>(P.k_shape, int32_t(decltype(width)::value));
      };
      // Streams the CTA's tile sequence into the `stages` buffers of K or V (`width` columns):
      // wait until the consumers freed a buffer, then one TMA load that completes its full barrier.
      auto stream_tiles = [&](auto const& tma, auto smem_layout, auto* base, uint64_t* full, uint64_t* empty,
                              auto stages, auto width) {
        constexpr int kStages = decltype(stages)::value;
        constexpr int W = decltype(width)::value;
        constexpr uint32_t kBytes = uint32_t(BN * W * sizeof(T));
        Tensor mKV = tma.get_tma_tensor(kv_shape(width));
        auto cta = tma.get_slice(0);
        Tensor dst = cta.partition_D(make_tensor(make_smem_ptr(base), smem_layout));  // (TMA, 1, 1, stages)
        for (int i = 0; i < n_stream; ++i) {
          const int s = i % kStages;
          const uint32_t phase = uint32_t(i / kStages) & 1u;
          Tensor src = local_tile(domain_offset(make_coord(kv_row(plan.at(i) * BN), 0), mKV(_, _, kv_head, kv_batch)),
                                  Shape<Int<BN>, Int<W>>{}, make_coord(0, 0));
          EmptyBarrier::wait(&empty[s], phase ^ 1u);
          Barrier::arrive_and_expect_tx(&full[s], kBytes);
          copy(tma.with(full[s]), cta.partition_S(src), dst(_, _, _, s));
        }
      };
      // The same with small pages: a tile as BN / kBoxRows boxes, each looked up in the block
      // table; boxes past the entry's last key are not loaded (their rows are masked, and V
      // rows past lk are zeroed before P V), and the barrier expects only the bytes loaded.
      auto stream_boxes = [&](auto const& tma, auto box_layout, auto* base, uint64_t* full, uint64_t* empty,
                              auto stages, auto width) {
        constexpr int kStages = decltype(stages)::value;
        constexpr int W = decltype(width)::value;
        constexpr uint32_t kBoxBytes = uint32_t(Traits::kBoxRows * W * sizeof(T));
        constexpr int kBoxes = BN / Traits::kBoxRows;
        Tensor mKV = tma.get_tma_tensor(kv_shape(width));
        auto cta = tma.get_slice(0);
        for (int i = 0; i < n_stream; ++i) {
          const int s = i % kStages;
          const uint32_t phase = uint32_t(i / kStages) & 1u;
          const int key0 = plan.at(i) * BN;
          const int boxes = min(kBoxes, (lk - key0 + Traits::kBoxRows - 1) / Traits::kBoxRows);
          EmptyBarrier::wait(&empty[s], phase ^ 1u);
          Barrier::arrive_and_expect_tx(&full[s], uint32_t(max(boxes, 0)) * kBoxBytes);
          for (int c = 0; c < boxes; ++c) {
            Tensor src = local_tile(domain_offset(make_coord(kv_row(key0 + c * Traits::kBoxRows), 0),
                                                  mKV(_, _, kv_head, kv_batch)),
                                    Shape<Int<Traits::kBoxRows>, Int<W>>{}, make_coord(0, 0));
            Tensor dst = make_tensor(make_smem_ptr(base + s * BN * W + c * Traits::kBoxOffset), box_layout);
            copy(tma.with(full[s]), cta.partition_S(src), cta.partition_D(dst));
          }
        }
      };
      if (warp == 0) {
        Tensor mQ = P.tma_q.get_tma_tensor(P.q_shape);
        Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
        const int q_batch = p.cu_seqlens_q ? 0 : b;
        Tensor gQ = local_tile(domain_offset(make_coord(q_start + row0, 0), mQ(_, _, h, q_batch)),
                              Shape<Int<BM>, Int<Dqk>>{}, make_coord(0, 0));
        auto cta_q = P.tma_q.get_slice(0);
        Barrier::arrive_and_expect_tx(&ss.q_full, Traits::kQBytes);
        copy(P.tma_q.with(ss.q_full), cta_q.partition_S(gQ), cta_q.partition_D(sQ));
        if (P.box_pages)
          stream_boxes(P.tma_k_box, typename Traits::SmemLayoutKBox{}, ss.k.data(), ss.k_full, ss.k_empty,
                       Int<kStagesK>{}, Int<Dqk>{});
        else
          stream_tiles(P.tma_k, typename Traits::SmemLayoutK{}, ss.k.data(), ss.k_full, ss.k_empty, Int<kStagesK>{},
                       Int<Dqk>{});
      } else if constexpr (kPVInFp8) {
        // V^T tiles [Dv, BN] of entry b from the pre-pass's workspace (never paged: the pre-pass
        // gathered the pages).
        Tensor mVt = P.tma_v.get_tma_tensor(P.vt_shape);
        auto cta = P.tma_v.get_slice(0);
        Tensor dst = cta.partition_D(make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutV{}));
        for (int i = 0; i < n_stream; ++i) {
          const int s = i % kStagesV;
          const uint32_t phase = uint32_t(i / kStagesV) & 1u;
          Tensor src = local_tile(mVt(_, _, kv_head, b), Shape<Int<Dv>, Int<BN>>{}, make_coord(0, plan.at(i)));
          EmptyBarrier::wait(&ss.v_empty[s], phase ^ 1u);
          Barrier::arrive_and_expect_tx(&ss.v_full[s], Traits::kTileBytesV);
          copy(P.tma_v.with(ss.v_full[s]), cta.partition_S(src), dst(_, _, _, s));
        }
      } else {
        if (P.box_pages)
          stream_boxes(P.tma_v_box, typename Traits::SmemLayoutVBox{}, ss.v.data(), ss.v_full, ss.v_empty,
                       Int<kStagesV>{}, Int<Dv>{});
        else
          stream_tiles(P.tma_v, typename Traits::SmemLayoutV{}, ss.v.data(), ss.v_full, ss.v_empty, Int<kStagesV>{},
                       Int<Dv>{});
      }
    }
    return;
  }

  // ---------------- consumer warpgroups ----------------
  cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
  const int ct = threadIdx.x - 128;  // 0 .. 128 G - 1
  const int grp = ct / 128;          // decision group of this warpgroup
  const int wt = ct % 128;           // thread within the warpgroup
  GroupOrder order;
#pragma unroll
  for (int g = 0; g < Traits::kConsumerGroups; ++g)
    if (g == grp) order.last = last[g];
  order.anchored = plan.anchored;
  const int n_own = order.tiles();
  const int group_row0 = row0 + grp * GR;
  const int group_rows = clamp_int(rows_here - grp * GR, 0, GR);
  const int ke_first = key_end(group_row0);  // tiles from (ke_first / BN) on need the mask
  const bool vote_on = kSkip && skip_on;
  // The group's anchors are the first tiles of its own order (ascending: tile 0; anchored: its
  // last tile, then tile 0), so it votes from own position first_vote on (1-based).
  const int first_vote = vote_on ? (order.anchored ? 3 : 2) : INT_MAX;

  typename Traits::MmaS mma_s;
  typename Traits::MmaO mma_o;
  auto thr_s = mma_s.get_thread_slice(ct);
  auto thr_o = mma_o.get_thread_slice(ct);
  Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutK{});
  Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutV{});
  // The V tiles P V reads: V's stages, or for FP8 the warpgroups' 16-bit copies.
  auto pv_base = [&]() {
    if constexpr (kConvertV)
      return ss.aux.data();
    else
      return ss.v.data();
  };
  Tensor sVt = make_tensor(make_smem_ptr(pv_base()), typename Traits::SmemLayoutVt{});
  // FP8: shared-memory addresses of V's e4m3 stages and of this warpgroup's fp16 copy.
  [[maybe_unused]] const uint32_t v8_base = cute::cast_smem_ptr_to_uint(ss.v.data());
  [[maybe_unused]] const uint32_t vp_base =
      cute::cast_smem_ptr_to_uint(pv_base()) + uint32_t(grp) * uint32_t(BN * Dv * sizeof(typename Traits::ElementVp));
  Tensor tSrQ = thr_s.partition_fragment_A(sQ);   // (MMA, 1, Dqk/16): this group's 64 rows (registers or descriptors)
  Tensor tSrK = thr_s.partition_fragment_B(sK);   // (MMA, 1, Dqk/16, stages)
  Tensor tOrVt = thr_o.partition_fragment_B(sVt); // (MMA, 1, BN/16, stages)
  Tensor tSrS = partition_fragment_C(mma_s, Shape<Int<BM>, Int<BN>>{});
  Tensor tOrO = partition_fragment_C(mma_o, Shape<Int<BM>, Int<Dv>>{});
  Tensor tScS = thr_s.partition_C(make_identity_tensor(Shape<Int<BM>, Int<BN>>{}));
  Tensor s_rc = make_tensor(tSrS.data(), rowcol_layout(tSrS.layout()));
  Tensor o_rc = make_tensor(tOrO.data(), rowcol_layout(tOrO.layout()));
  Tensor c_rc = make_tensor(tScS.data(), rowcol_layout(tScS.layout()));
  constexpr int R = decltype(size<0>(s_rc))::value;
  clear(tOrO);
  OnlineSoftmax<R, kSkip> sm;
  sm.init();
  bool row_exists[R];  // the thread's rows that are rows of the entry (not padding of the block)
#pragma unroll
  for (int r = 0; r < R; ++r) row_exists[r] = get<0>(c_rc(r, 0)) - grp * GR < group_rows;

  auto release = [&](uint64_t* bar) {
    if (lane == 0) EmptyBarrier::arrive(bar);
  };
  const int trace_group = blk * Traits::kConsumerGroups + grp;
  const int64_t trace_base =
      p.decisions ? ((int64_t(b) * p.num_q_heads + h) * P.group_blocks + trace_group) * p.tiles_per_group : 0;
  uint8_t* const trace = (p.decisions && wt == 0) ? p.decisions + trace_base : nullptr;
  // FP8: the score scale folds the dequantization scales of Q and K as the CPU engine does
  // (float(double(scale) * s_q * s_k)), and its log2(e) multiple is rounded as the host rounds
  // p.scale_log2. (The epilogue reads the scales again rather than hold them through the loop.)
  const int scale_index = p.scales_per_kv_head ? kv_head : 0;
  auto fp8_score_scale = [&]() {
    return float(double(p.scale) * double(p.q_scale[scale_index]) * double(p.k_scale[scale_index]));
  };
  float scale = p.scale;
  float scale_log2 = p.scale_log2;
  if constexpr (kFp8) {
    scale = fp8_score_scale();
    scale_log2 = float(double(scale) * 1.4426950408889634);
  }
  int skipped = 0;
  int j = 0;  // position in the group's own order
  // keep_threshold(m) of each row for the vote, updated with m on kept tiles (off the chain of
  // a skipped tile). The scale is positive: the engine runs no other.
  const float log_lambda_raw = log_lambda / scale;
  float vote_thr[R];
#pragma unroll
  for (int r = 0; r < R; ++r) vote_thr[r] = keep_threshold(kNegInf, log_lambda_raw);

  // Each iteration issues S(t) = Q K^T and, behind it, the P V of the previous kept tile, so
  // that the tensor cores run that product while the warpgroup masks, votes and exponentiates
  // tile t. O is rescaled for tile t once the previous P V has landed.
  // With P.pingpong the warpgroups also take turns issuing their products (round robin over the
  // named barriers kBarTurn + g), so one warpgroup's softmax runs while another's products use
  // the tensor cores.
  // A run of skipped tiles goes at the pace of the chain QK^T -> row max -> vote -> next QK^T,
  // so a skipped tile's V buffer (its load must land before it is handed back) is released
  // while the next QK^T is in flight, off that chain.
  // P of the pending tile: 16-bit in the accumulator's layout (rP, viewed as the A operand), or
  // (kPVInFp8) e4m3 in the A fragment's own layout (pack_p_e4m3 places the bytes)
  Tensor rP = make_tensor<TPV>(tSrS.layout());
  auto p_fragment = [&]() {
    if constexpr (kPVInFp8) {
      Tensor a = thr_o.partition_fragment_A(make_tensor(make_smem_ptr(ss.q.data()), make_layout(Shape<Int<BM>, Int<BN>>{})));
      static_assert(decltype(size(a))::value == decltype(size(tSrS))::value, "a byte of P per score");
      return a;
    } else {
      return make_tensor(rP.data(), acc_as_a_layout(rP.layout()));
    }
  };
  Tensor tOrP = p_fragment();
  bool pv_pending = false;
  int pv_stage = 0;           // V stage of the pending tile
  int v_held = -1;            // V stage of a skipped or foreign tile still to hand back
  uint32_t v_held_phase = 0;
  auto issue_s = [&](int stage) {
    if constexpr (Traits::kQInRegisters) warpgroup_fence_operand(tSrQ);
    issue_overwriting_gemm(mma_s, tSrQ, tSrK, stage, tSrS);
  };
  auto issue_pv = [&]() {
    warpgroup_fence_operand(tOrO);
    warpgroup_arrive();
#pragma unroll
    for (int kb = 0; kb < size<2>(tOrP); ++kb) cute::gemm(mma_o, tOrP(_, _, kb), tOrVt(_, _, kb, pv_stage), tOrO);
    warpgroup_commit_batch();
  };
  auto release_held_v = [&]() {
    if (uniform(v_held >= 0)) {
      Barrier::wait(&ss.v_full[v_held], v_held_phase);
      release(&ss.v_empty[v_held]);
      v_held = -1;
    }
  };
  const bool pingpong = P.pingpong != 0;
  constexpr int G = Traits::kConsumerGroups;
  auto turn_begin = [&]() {
    if (pingpong) ptx::named_barrier_sync(Traits::kBarTurn + grp, 256);
  };
  auto turn_end = [&](int i) {
    // The last turn of the last warpgroup is answered by nobody: skip that arrive.
    if (uniform(pingpong && !(grp == G - 1 && i == n_stream - 1)))
      ptx::named_barrier_arrive(Traits::kBarTurn + (grp + 1) % G, 256);
  };
  if (pingpong && grp == G - 1 && n_stream > 0) ptx::named_barrier_arrive(Traits::kBarTurn, 256);  // group 0 goes first

  Barrier::wait(&ss.q_full, 0);
  if constexpr (Traits::kQInRegisters) {
    auto q_copy = make_tiled_copy_A(Copy_Atom<SM75_U32x4_LDSM_N, T>{}, mma_s);
    auto q_thr = q_copy.get_thread_slice(ct);
    copy(q_copy, q_thr.partition_S(sQ), q_thr.retile_D(tSrQ));
    warpgroup_fence_operand(tSrQ);
  }
  for (int i = 0; i < n_stream; ++i) {
    const int t = plan.at(i);
    const int s = i % kStagesK;  // K stage
    const uint32_t phase = uint32_t(i / kStagesK) & 1u;
    const int sv = i % kStagesV;  // V stage
    const uint32_t phase_v = uint32_t(i / kStagesV) & 1u;
    if (uniform(j >= n_own || t != order.at(j))) {
      // Not this group's tile here: let the loads land, then hand the buffers back.
      release_held_v();
      turn_begin();
      turn_end(i);
      Barrier::wait(&ss.k_full[s], phase);
      release(&ss.k_empty[s]);
      v_held = sv;
      v_held_phase = phase_v;
      continue;
    }
    ++j;

    // S = Q K^T, then the pending P V behind it.
    Barrier::wait(&ss.k_full[s], phase);
    turn_begin();
    // (No branch may depend on data while products are in flight, or ptxas serializes them:
    // every condition below is made warp-uniform for the compiler by uniform().)
    if (uniform(pv_pending)) {
      issue_s(s);
      issue_pv();
      turn_end(i);
      release_held_v();
      warpgroup_wait<1>();
    } else {
      issue_s(s);
      turn_end(i);
      release_held_v();
      warpgroup_wait<0>();
    }
    warpgroup_fence_operand(tSrS);
    release(&ss.k_empty[s]);

    // Keys a row does not see become -inf (causal diagonal, keys past lk).
    if (uniform((t + 1) * BN > ke_first)) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int ke = key_end(row0 + get<0>(c_rc(r, 0))) - t * BN;
#pragma unroll
        for (int c = 0; c < size<1>(s_rc); ++c)
          if (get<1>(c_rc(r, c)) >= ke) s_rc(r, c) = kNegInf;
      }
    }
    float mt[R];
    // (Skip mode: a maximum is NaN as soon as one score is, so such a row keeps the tile, as in
    // SPEC.md and the CPU engine.)
    thread_row_max<kSkip>(s_rc, mt);

    // The previous P V has landed (unconditional on every path, so that the compiler sees every
    // P V completed before O is touched): its V buffer goes back.
    auto finish_pending_pv = [&]() {
      warpgroup_wait<0>();
      warpgroup_fence_operand(tOrO);
      if (pv_pending) {
        // (FP8 V converted: the e4m3 stage went back when it was converted.)
        if constexpr (!kConvertV) release(&ss.v_empty[pv_stage]);
        pv_pending = false;
      }
    };
    // The first shuffle round of the row maxima goes out before the vote, so that its latency
    // passes while the vote's barrier waits; a skipped tile does not use it.
    float mt_pair[R];
#pragma unroll
    for (int r = 0; r < R; ++r) mt_pair[r] = __shfl_xor_sync(0xffffffffu, mt[r], 1);
    // (kSkip first: the dense instantiation then compiles no vote at all.)
    if (kSkip && uniform(j >= first_vote)) {
      // A row votes keep iff it exists and !(mt < keep_threshold(m)), on the thread's partial
      // maxima (quad_reduce.cuh: the OR needs no quad reduction, a skipped tile no shuffle).
      bool keep = false;
#pragma unroll
      for (int r = 0; r < R; ++r) keep |= row_exists[r] && !(mt[r] < vote_thr[r]);
      // One bar.red.or over the warpgroup: a run of skipped tiles waits the least this way.
      // (Letting warps with a keeping row post their vote in shared memory and go on without
      // waiting was 2% faster with sparsity ~0 and 5-8% slower at 0.6-0.8 on the H100; posting
      // every warp's vote on an mbarrier after a kept tile and exponentiating before reading the
      // outcome was as fast with sparsity ~0 and 5-15% slower at 0.1-0.8.)
      // The branch follows the barrier's result directly: a skipped tile ends here.
      if (!uniform(warpgroup_any(keep, Traits::kBarVote + grp))) {
        finish_pending_pv();
        if (trace) trace[t] = 2;  // BLASST_TILE_SKIPPED
        ++skipped;
        v_held = sv;
        v_held_phase = phase_v;
        continue;
      }
    }
    float alpha[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      mt[r] = max_of<kSkip>(mt[r], mt_pair[r]);
      mt[r] = max_of<kSkip>(mt[r], __shfl_xor_sync(0xffffffffu, mt[r], 2));
    }
    sm.exponentiate(s_rc, mt, scale_log2, alpha);
    if constexpr (kSkip) {
#pragma unroll
      for (int r = 0; r < R; ++r) vote_thr[r] = keep_threshold(sm.m[r], log_lambda_raw);
    }
    finish_pending_pv();
    if (trace) trace[t] = 1;  // BLASST_TILE_KEPT
    sm.rescale(o_rc, alpha);
    if constexpr (kPVInFp8)
      pack_p_e4m3(tSrS, tOrP);
    else
      convert_fragment_into(tSrS, rP);
    Barrier::wait(&ss.v_full[sv], phase_v);
    if constexpr (kPVInFp8) {
      // (V^T's keys past lk are zeros of the pre-pass.)
    } else if constexpr (kFp8) {
      // The warpgroup's fp16 copy of V (its previous P V has landed): rows past lk become 0
      // (another entry's or padding values, maybe NaN, or not loaded at all). The e4m3 stage
      // then goes back at once.
      convert_v_tile<BN, Dv, typename Traits::SmemLayoutVStage, typename Traits::SmemLayoutVpBuffer>(
          v8_base + uint32_t(sv) * Traits::kTileBytesV, vp_base, min(lk - t * BN, BN), wt);
      cutlass::arch::fence_view_async_shared();
      __syncwarp();
      release(&ss.v_empty[sv]);
      ptx::named_barrier_sync(Traits::kBarGroup + grp, 128);
      pv_pending = true;
      pv_stage = grp;
      continue;
    } else if ((t + 1) * BN > lk) {
      // Rows of V past lk hold another entry's or padding values (maybe NaN): P is 0 there,
      // but 0 * NaN is not, so zero them before P V.
      Tensor sVs = sV(_, _, sv);
      const int first = lk - t * BN;
      for (int idx = wt; idx < (BN - first) * (Dv / 8); idx += 128) {
        const int r = first + idx / (Dv / 8);
        const int c = (idx % (Dv / 8)) * 8;
        *reinterpret_cast<uint4*>(&sVs(r, c)) = make_uint4(0, 0, 0, 0);
      }
      cutlass::arch::fence_view_async_shared();
      ptx::named_barrier_sync(Traits::kBarGroup + grp, 128);
    }
    pv_pending = true;
    pv_stage = sv;
  }
  release_held_v();
  if (pv_pending) {
    issue_pv();
    warpgroup_wait<0>();
    warpgroup_fence_operand(tOrO);
    if constexpr (!kConvertV) release(&ss.v_empty[pv_stage]);
  }

  // ---------------- epilogue: O = o / l, LSE = m * scale + ln(l) ----------------
  float inv[R];
  float lse[R];
  [[maybe_unused]] float v_scale = 1.0f;
  if constexpr (kFp8) {
    scale = fp8_score_scale();
    v_scale = p.v_scale[scale_index];
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const float sum = quad_sum(sm.l[r]);
    const bool empty = sm.m[r] == kNegInf || sum == 0.0f;
    // (FP8: V's scale into 1 / l, as the CPU engine folds it.)
    if constexpr (kFp8)
      inv[r] = empty ? 0.0f : v_scale / sum;
    else
      inv[r] = empty ? 0.0f : 1.0f / sum;
    lse[r] = empty ? kNegInf : sm.m[r] * scale + logf(sum);
#pragma unroll
    for (int c = 0; c < size<1>(o_rc); ++c) o_rc(r, c) *= inv[r];
  }
  Tensor rO = convert_fragment<TO>(tOrO);
  const bool ragged_q = p.cu_seqlens_q != nullptr;
  // The group's rows of O, from rows first_row + r of shared memory sO to output rows out_row0 +
  // first_row + r (out_row0: the output row of sO's row 0), each thread writing whole 16-byte chunks.
  auto store_rows = [&](const auto& sO, int first_row, int out_row0) {
    TO* o_base = static_cast<TO*>(p.out) +
                 (ragged_q ? int64_t(q_start) * p.o_token_stride : int64_t(b) * p.o_batch_stride) +
                 int64_t(h) * p.o_head_stride;
    for (int idx = wt; idx < group_rows * (Dv / 8); idx += 128) {
      const int r = idx / (Dv / 8);
      const int c = (idx % (Dv / 8)) * 8;
      const int row = first_row + r;
      *reinterpret_cast<uint4*>(o_base + int64_t(out_row0 + row) * p.o_token_stride + c) =
          *reinterpret_cast<const uint4*>(&sO(row, c));
    }
  };
  if constexpr (kFp8) {
    // O goes through the group's own fp16 V copy, or (kPVInFp8) its own O buffer (Q's FP8
    // buffer is too small for 16-bit O), once every warp of the group is past its last P V.
    ptx::named_barrier_sync(Traits::kBarGroup + grp, 128);
    auto o_base = [&]() {
      if constexpr (kPVInFp8)
        return ss.aux.data() + grp * cosize_v<typename Traits::SmemLayoutOGroup>;
      else
        return reinterpret_cast<TO*>(ss.aux.data()) + grp * BN * Dv;
    };
    Tensor sO = make_tensor(make_smem_ptr(o_base()), typename Traits::SmemLayoutOGroup{});
    typename Traits::MmaOGroup mma_og;
    Tensor tOsO = mma_og.get_thread_slice(wt).partition_C(sO);
    static_assert(decltype(size(tOsO))::value == decltype(size(rO))::value, "one warpgroup's share of O");
#pragma unroll
    for (int e = 0; e < size(rO); ++e) tOsO(e) = rO(e);
    ptx::named_barrier_sync(Traits::kBarGroup + grp, 128);
    store_rows(sO, 0, group_row0);
  } else {
    // O goes through this group's rows of the Q buffer (no other warpgroup reads those rows;
    // SmemLayoutO) so that each thread then writes whole 16-byte row chunks.
    Tensor sO = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutO{});
    Tensor tOsO = thr_o.partition_C(sO);
#pragma unroll
    for (int e = 0; e < size(rO); ++e) tOsO(e) = rO(e);
    ptx::named_barrier_sync(Traits::kBarGroup + grp, 128);
    store_rows(sO, grp * GR, row0);
  }
  if (p.lse && (lane & 3) == 0) {
    float* lse_base = p.lse + (ragged_q ? int64_t(q_start) * p.lse_token_stride : int64_t(b) * p.lse_batch_stride) +
                      int64_t(h) * p.lse_head_stride;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int row = get<0>(c_rc(r, 0));
      if (row < rows_here) lse_base[int64_t(row0 + row) * p.lse_token_stride] = lse[r];
    }
  }
  if (p.stats_per_head && wt == 0 && n_own > 0) {
    atomicAdd(reinterpret_cast<unsigned long long*>(p.stats_per_head + 2 * h), (unsigned long long)n_own);
    if (skipped) atomicAdd(reinterpret_cast<unsigned long long*>(p.stats_per_head + 2 * h + 1), (unsigned long long)skipped);
  }
#endif
}

}  // namespace blasst::cuda::sm90
