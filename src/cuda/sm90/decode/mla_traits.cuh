// Compile-time shape of the sm_90a MLA decode kernel (absorbed multi-head latent attention:
// Dqk = 576 = 512 "nope" + 64 rope, Dv = 512, one latent KV head shared by 16-128 query heads).
//
// One CTA = one decision group (64 packed (query head, row) pairs of one KV head, SPEC section 2
// with block_m = 64) x one KV split, and three warpgroups:
//   warpgroup 0: producer (one thread issues the TMA loads of the latent tiles),
//   warpgroup 1: S = Q K^T (wgmma 64 x 64 x 576, both from shared memory), mask, row max, the
//                vote, the exponentials; then O[:, 0:256] += P V[:, 0:256] with P in registers,
//   warpgroup 2: O[:, 256:512] += P V[:, 256:512] with P read from shared memory.
// V is the first 512 columns of the latent tile K already in shared memory (the same bytes), so a
// skipped tile saves the exponentials and both P V products, not bytes.
//   smem  Q [64, 576] (72 KB), K [kStages][64, 576] (2 x 72 KB), P [64, 64] (8 KB), row factors.
//         All K-major with the 128-byte swizzle that wgmma and TMA share; a 64-column block of a
//         tile is one contiguous 8 KB atom column, so V half h (columns 256 h ..) of a stage is
//         the 32 KB at 16384 h elements into it, viewed MN-major for the P V products.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

namespace blasst::cuda::sm90::mla {

using namespace cute;

// kCluster: CTAs of one thread-block cluster, the decision groups (64-pair chunks) of one entry
// and split, which share every latent tile: each loads 1 / kCluster of it and the TMA multicasts
// it into all of them, so a tile leaves HBM (or L2) once for 128-256 heads instead of once per
// 64 of them (at Hq = 128 the unshared loads read twice the cache and ran at the copy rate).
// Opt-in (BLASST_CUDA_MLA_CLUSTER=1) until measured.
template <class Element_, int kCluster_ = 1>
struct MlaTraits {
  using Element = Element_;  // cutlass::bfloat16_t or cutlass::half_t
  static constexpr int kCluster = kCluster_;
  static_assert(kCluster == 1 || kCluster == 2 || kCluster == 4, "clusters of 1, 2 or 4 CTAs");
  static constexpr int Dqk = 576;
  static constexpr int Dv = 512;
  static constexpr int kHalf = Dv / 2;  // V columns per consumer warpgroup
  static constexpr int kRows = 64;      // block_m: pairs of a decision group = rows of a CTA
  static constexpr int kBlockN = 64;    // keys of a tile
  static constexpr int kStages = 2;
  static constexpr int kThreads = 384;
  // setmaxnreg moves registers between warpgroups within the launch's allocation (168 x 384):
  // the consumers' increase must be covered by what the producer gives back, or it waits forever.
  // The multicast loads need more than 24 producer registers.
  static constexpr int kProducerRegs = kCluster == 1 ? 24 : 40;
  static constexpr int kConsumerRegs = kCluster == 1 ? 240 : 232;
  static constexpr int kLaunchRegs = 168;  // __launch_bounds__(384, 1): 65536 / 384 rounded down to 8
  static_assert(128 * (kProducerRegs + 2 * kConsumerRegs) <= kLaunchRegs * kThreads, "setmaxnreg stays within the launch allocation");
  // Named barriers (0 is __syncthreads).
  static constexpr int kBarVote = 1;      // warpgroup 1's vote
  static constexpr int kBarPFull = 2;     // warpgroup 1 -> 2: P (or the skip flag) of a tile is ready
  static constexpr int kBarPEmpty = 3;    // warpgroup 2 -> 1: P's buffer may be overwritten
  static constexpr int kBarConsumers = 4; // both consumer warpgroups (Q loaded, epilogue)
  static constexpr int kBarGroup1 = 5;    // warpgroup 1 alone (zeroed V rows)

  using TileS = Shape<Int<kRows>, Int<kBlockN>, Int<Dqk>>;
  using TileO = Shape<Int<kRows>, Int<kHalf>, Int<kBlockN>>;
  using MmaS = decltype(make_tiled_mma(GMMA::ss_op_selector<Element, Element, float, TileS>()));
  // P from registers (warpgroup 1) or from shared memory (warpgroup 2); V read MN-major.
  using MmaORs = decltype(make_tiled_mma(GMMA::rs_op_selector<Element, Element, float, TileO, GMMA::Major::K,
                                                              GMMA::Major::MN>()));
  using MmaOSs = decltype(make_tiled_mma(GMMA::ss_op_selector<Element, Element, float, TileO, GMMA::Major::K,
                                                              GMMA::Major::MN>()));

  using SmemLayoutQ = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{}, Shape<Int<kRows>, Int<Dqk>>{}));
  using SmemLayoutKStage = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{}, Shape<Int<kBlockN>, Int<Dqk>>{}));
  using SmemLayoutK =
      decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{}, Shape<Int<kBlockN>, Int<Dqk>, Int<kStages>>{}));
  using SmemLayoutP = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{}, Shape<Int<kRows>, Int<kBlockN>>{}));
  // One V half of one stage: [keys, 256] K-major, and its transpose [256, keys] for P V.
  using SmemLayoutVHalf = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{}, Shape<Int<kBlockN>, Int<kHalf>>{}));
  using SmemLayoutVtHalf =
      decltype(composition(SmemLayoutVHalf{}, make_ordered_layout(Shape<Int<kHalf>, Int<kBlockN>>{}, Step<_2, _1>{})));
  static constexpr int kStageElems = kBlockN * Dqk;
  static constexpr int kHalfOffset = kBlockN * kHalf;  // elements from a stage to its V half 1

  // The latent cache as TMA sees it: (rows, 576, heads, batch) with the caller's strides; rows
  // run over num_pages * page_size slots when paged, over packed tokens when ragged.
  using GmemShape = Shape<int32_t, int32_t, int32_t, int32_t>;
  using GmemStride = Stride<int64_t, _1, int64_t, int64_t>;
  using GmemLayout = Layout<GmemShape, GmemStride>;
  using TmaLoadOp = std::conditional_t<kCluster == 1, SM90_TMA_LOAD, SM90_TMA_LOAD_MULTICAST>;
  using TmaKV = decltype(make_tma_copy(TmaLoadOp{},
                                       make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), GmemLayout{}),
                                       SmemLayoutKStage{}, Shape<Int<kBlockN>, Int<Dqk>>{}, Int<kCluster>{}));
  static constexpr uint32_t kTileBytes = uint32_t(kBlockN * Dqk * sizeof(Element));

  struct SharedStorage {
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutQ>> q;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutK>> k;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutP>> p;
    float row_factor[kRows];  // exp(m_old - m_new) of the tile's rows (warpgroup 1 -> 2), then 1 / l
    int tile_flag;            // 1: warpgroup 2 multiplies this tile; 0: skipped or a seed
    uint64_t k_full[kStages], k_empty[kStages];
  };
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes <= 227 * 1024, "shared memory of one CTA");
};

}  // namespace blasst::cuda::sm90::mla
