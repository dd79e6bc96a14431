// Compile-time shape of the sm_90a prefill kernel: tiles, shared-memory layouts, the two
// warpgroup MMAs and the TMA copy types, per (element type, head dimension of Q/K, of V).
//
// One CTA = 1 + G warpgroups: warpgroup 0 is the producer (one thread issues every TMA load),
// warpgroups 1..G are consumers, each owning 64 consecutive query rows of the CTA's 64 G-row
// block. A consumer warpgroup's 64 rows are one SPEC decision group (block_m = 64).
// G = 2 for D = 128. For D = 64 a tile's products take half as long while its softmax does not,
// so two warpgroups cannot keep the tensor cores busy: G = 3 (192-row CTAs, 160 registers per
// consumer thread).
// Dqk != Dv (MLA's non-absorbed prefill: Dqk = 192, Dv = 128) takes G = 2 and two K stages, so
// that Q [128, 192], K 2 x [128, 192] and V 2 x [128, 128] fit the 227 KB of an SM (208 KB).
// D = 256 takes G = 2, tiles of 64 keys and Q in shared memory: Q [128, 256], K 3 x [64, 256] and
// V 2 x [64, 256] take 224 KB.
//   smem  Q [64 G, Dqk] (reused for O [64 G, Dv] in the epilogue: Dv <= Dqk), K [kStagesK][128, Dqk],
//         V [kStagesV][128, Dv], all K-major with the 128-byte swizzle that wgmma and TMA share.
//   S = Q K^T : wgmma 64 x 128 x Dqk per consumer warpgroup, Q from registers (loaded once per
//               CTA; G = 2, Dqk = 128) or shared memory (G = 3; Dqk = 192, where Q in registers
//               would take 48 more registers per thread than the 240 leave), K from shared
//               memory. With Q in shared memory too, a run of skipped tiles (QK^T back to back) at
//               D = 128 would read 96 bytes of shared memory per tensor-core cycle and, with the TMA
//               writes of K and V, pass the 128 bytes an SM serves.
//   O += P V  : wgmma 64 x Dv x 128, P from registers (the S accumulators converted in place),
//               V read transposed (MN-major) through a second view of the same shared memory.
// FP8 (Element = float_e4m3_t; Dqk = Dv = 64 or 128): Q, K and V are loaded as stored (1 byte),
// S = Q K^T is the e4m3 x e4m3 -> fp32 wgmma (K step 32) with Q in shared memory, K-major with
// the widest swizzle a row fills (128 bytes at D = 128, 64 at D = 64). Each consumer warpgroup
// converts the V tiles it keeps into a 16-bit copy of its own ([128, Dv] fp16, the layout of
// the 16-bit kernels' V; e4m3 -> fp16 is exact and one instruction per two values), which
// P V (P in fp16) reads; the e4m3 stage goes back as soon as it is converted. O is bf16.
// FP8 with BLASST_CUDA_SM90_FP8_PV_E4M3 (kPVInFp8, the default): P V on the e4m3 wgmma too,
// P quantized to e4m3 in registers and V^T [Dv, 128 keys] loaded by TMA from the workspace a
// pre-pass wrote (fp8_pv.cuh), K-major with the 128-byte swizzle; O goes out through a bf16
// buffer of its own.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#ifndef BLASST_CUDA_SM90_FP8_PV_E4M3
#define BLASST_CUDA_SM90_FP8_PV_E4M3 0
#endif

namespace blasst::cuda::sm90 {

using namespace cute;

// kSkip: the traits of the skip instantiation (only FP8 at D = 64 differs, below).
template <class Element_, int Dqk_, int Dv_ = Dqk_, bool kSkip_ = false>
struct PrefillTraits {
  using Element = Element_;  // of Q, K and V as stored: cutlass::bfloat16_t, cutlass::half_t or cutlass::float_e4m3_t
  static constexpr bool kFp8 = sizeof_bits_v<Element> == 8;
  static constexpr bool kPVInFp8 = kFp8 && BLASST_CUDA_SM90_FP8_PV_E4M3;  // P V on the e4m3 wgmma, V^T from the pre-pass
  // P and V in P V: the element itself, or for FP8 fp16 (V converted in shared memory) or e4m3
  // (kPVInFp8)
  using ElementPV = std::conditional_t<kFp8 && !kPVInFp8, cutlass::half_t, Element>;
  using ElementO = std::conditional_t<kFp8, cutlass::bfloat16_t, Element>;  // of O
  static constexpr int Dqk = Dqk_;  // head dim of Q and K
  static constexpr int Dv = Dv_;    // head dim of V and O
  static constexpr bool kMla = Dqk != Dv;
  static_assert(!kFp8 || (Dqk == Dv && (Dqk == 64 || Dqk == 128)), "FP8 is built for head dims 64 and 128");
  static constexpr int kGroupRows = 64;   // rows of a consumer warpgroup = one decision group
  // FP8 at D = 64: three in the skip instantiation with P V in e4m3, two otherwise. On an H100
  // (16K, Hq 32) three took skip mode from 404-416 to 522-549 TFLOP/s with nothing skipped and
  // from 655-736 to 734-845 at sparsity 0.6-0.7, but dense mode from 527-531 down to 463-479. (With
  // V converted to fp16, 160 registers spilled 32-48 bytes, reloaded at every tile.)
  static constexpr int kConsumerGroups =
      Dqk == 64 && (!kFp8 || (kPVInFp8 && kSkip_)) ? 3 : 2;
  static constexpr int kBlockM = kGroupRows * kConsumerGroups;  // rows of a CTA
  // Registers per thread after setmaxnreg (multiples of 8; 128 threads each, 64K in all).
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = kConsumerGroups == 3 ? 160 : 240;
  static_assert(128 * (kProducerRegs + kConsumerGroups * kConsumerRegs) <= 65536, "register file");
  // Hardware ids of the named barriers (0 is __syncthreads): the vote of group g, the group's own
  // sync (zeroed V rows, epilogue), and the pingpong turn of group g.
  static constexpr int kBarVote = 1;
  static constexpr int kBarGroup = kBarVote + kConsumerGroups;
  static constexpr int kBarTurn = kBarGroup + kConsumerGroups;
  static_assert(kBarTurn + kConsumerGroups <= 16, "named barriers");
  // keys of a tile; 64 at D = 256, where O [64, 256] alone takes 128 registers per thread and
  // S [64, 128] with its P would not fit beside it
  static constexpr int kBlockN = Dqk == 256 ? 64 : 128;
  // K runs ahead of V: a run of skipped tiles goes at the pace of QK^T alone, so K needs more
  // tiles in flight than V (whose stage is held until the deferred P V is done). At Dqk = 192 a
  // third K stage (48 KB) does not fit next to Q and V.
  static constexpr int kStagesK = kMla ? 2 : 3;
  static constexpr int kStagesV = 2;
  static constexpr int kThreads = 128 * (1 + kConsumerGroups);
  static_assert((Dqk == Dv && (Dqk == 64 || Dqk == 128 || Dqk == 256)) || (Dqk == 192 && Dv == 128),
                "the sm_90a prefill kernel is built for head dims 64, 128, 256 and 192/128");
  static_assert(Dv <= Dqk, "O reuses Q's shared memory");

  using TileS = Shape<Int<kBlockM>, Int<kBlockN>, Int<Dqk>>;  // (M, N, K) of S = Q K^T
  using TileO = Shape<Int<kBlockM>, Int<Dv>, Int<kBlockN>>;   // (M, N, K) of O = P V
  // The consumer warpgroups stacked along M, each one 64-row wgmma atom.
  using AtomLayout = Layout<Shape<Int<kConsumerGroups>, _1, _1>>;
  // Q in registers for G = 2 at Dqk = 128 (a run of skipped tiles then reads only K from shared
  // memory); for G = 3 the 160 registers cannot hold Q next to S, P and O, and at Dqk = 192 Q
  // would take 48 registers per thread on top of S (64), P (32) and O (64), so QK^T reads Q from
  // shared memory there.
  // (FP8: Q from shared memory too, as the 8-bit A fragment is not what ldmatrix gives.)
  // (D = 256: Q [64, 256] would take 128 registers per thread, as many as O.)
  static constexpr bool kQInRegisters = kConsumerGroups == 2 && !kMla && !kFp8 && Dqk <= 128;
  using MmaSAtom = std::conditional_t<
      kQInRegisters, decltype(GMMA::rs_op_selector<Element, Element, float, Shape<Int<kGroupRows>, Int<kBlockN>, Int<Dqk>>>()),
      decltype(GMMA::ss_op_selector<Element, Element, float, Shape<Int<kGroupRows>, Int<kBlockN>, Int<Dqk>>>())>;
  using MmaS = decltype(make_tiled_mma(MmaSAtom{}, AtomLayout{}));
  // V's major mode in P V: MN (V as stored, read transposed) for 16 bits; K (V^T) for e4m3
  static constexpr GMMA::Major kMajorV = kPVInFp8 ? GMMA::Major::K : GMMA::Major::MN;
  using MmaOAtom = decltype(GMMA::rs_op_selector<ElementPV, ElementPV, float, Shape<Int<kGroupRows>, Int<Dv>, Int<kBlockN>>,
                                                 GMMA::Major::K, kMajorV>());
  using MmaO = decltype(make_tiled_mma(MmaOAtom{}, AtomLayout{}));

  // K-major swizzle atom of the tiles loaded by TMA: 128-byte rows of 64 16-bit elements; FP8
  // rows of 128 elements where the tile has them, else of 64 (64-byte swizzle).
  using SmemAtom = std::conditional_t<kFp8 && Dqk % 128 != 0, GMMA::Layout_K_SW64_Atom<Element>,
                                      GMMA::Layout_K_SW128_Atom<Element>>;
  static constexpr int kAtomCols = decltype(size<1>(SmemAtom{}))::value;
  using SmemLayoutQ = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockM>, Int<Dqk>>{}));
  // O [kBlockM, Dv] in the epilogue, over Q's buffer: the atoms tile rows first, so this is the
  // first Dv / 64 atom columns of SmemLayoutQ and group g's rows of O lie in group g's rows of Q
  // (the other groups may still be reading theirs).
  using SmemLayoutO = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<ElementO>{}, Shape<Int<kBlockM>, Int<Dv>>{}));
  using SmemLayoutK = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockN>, Int<Dqk>, Int<kStagesK>>{}));
  // V's stages as TMA writes them: [keys, Dv] (V^T [Dv, keys] with kPVInFp8: 128-key rows)
  using SmemLayoutV = std::conditional_t<
      kPVInFp8, decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{}, Shape<Int<Dv>, Int<kBlockN>, Int<kStagesV>>{})),
      decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockN>, Int<Dv>, Int<kStagesV>>{}))>;
  using SmemLayoutKStage = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockN>, Int<Dqk>>{}));
  using SmemLayoutVStage = std::conditional_t<
      kPVInFp8, decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{}, Shape<Int<Dv>, Int<kBlockN>>{})),
      decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockN>, Int<Dv>>{}))>;
  // The V tiles P V reads [keys, Dv, buffer]: V's stages, or for FP8 each consumer warpgroup's
  // 16-bit copy (buffer = warpgroup).
  static constexpr int kBuffersPV = kFp8 ? kConsumerGroups : kStagesV;
  // (kPVInFp8 has no copies; the fp16 layout stands in for the unused types.)
  using ElementVp = std::conditional_t<kFp8, cutlass::half_t, Element>;
  using SmemLayoutVp = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<ElementVp>{},
                                              Shape<Int<kBlockN>, Int<Dv>, Int<kBuffersPV>>{}));
  using SmemLayoutVpBuffer = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<ElementVp>{}, Shape<Int<kBlockN>, Int<Dv>>{}));
  // V^T [Dv, keys, buffer]: the same bytes as V [keys, Dv, buffer], viewed MN-major for P V
  // (kPVInFp8: V's stages, already V^T).
  using SmemLayoutVt = std::conditional_t<
      kPVInFp8, SmemLayoutV,
      decltype(composition(SmemLayoutVp{},
                           make_ordered_layout(Shape<Int<Dv>, Int<kBlockN>, Int<kBuffersPV>>{}, Step<_2, _1, _3>{})))>;
  // FP8: O [64, Dv] of one warpgroup in the epilogue, in its own buffer (aux, below).
  using SmemLayoutOGroup = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<ElementO>{}, Shape<Int<kGroupRows>, Int<Dv>>{}));
  using MmaOGroup = decltype(make_tiled_mma(MmaOAtom{}));

  // Global tensors as TMA sees them: (rows, D, heads, batch) with the caller's strides (D = Dqk
  // for Q and K, Dv for V); for ragged batches the batch mode has extent 1 and rows are packed
  // tokens; for a paged cache, rows run over num_pages * page_size slots.
  using GmemShape = Shape<int32_t, int32_t, int32_t, int32_t>;
  using GmemStride = Stride<int64_t, _1, int64_t, int64_t>;
  using GmemLayout = Layout<GmemShape, GmemStride>;
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{},
                                      make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), GmemLayout{}),
                                      SmemLayoutQ{}, Shape<Int<kBlockM>, Int<Dqk>>{}, _1{}));
  using TmaK = decltype(make_tma_copy(SM90_TMA_LOAD{},
                                      make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), GmemLayout{}),
                                      SmemLayoutKStage{}, Shape<Int<kBlockN>, Int<Dqk>>{}, _1{}));
  // (kPVInFp8: over the pre-pass's V^T (Dv, keys, Hkv, batch), tiles of [Dv, kBlockN])
  using TileV = std::conditional_t<kPVInFp8, Shape<Int<Dv>, Int<kBlockN>>, Shape<Int<kBlockN>, Int<Dv>>>;
  using TmaV = decltype(make_tma_copy(SM90_TMA_LOAD{},
                                      make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), GmemLayout{}),
                                      SmemLayoutVStage{}, TileV{}, _1{}));

  // Paged caches with pages of 16-64 tokens: each tile is loaded as kBoxRows-row boxes, one per
  // 16 keys, each from its page. A box is rows [16 c, 16 c + 16) of a stage, i.e. the stage's
  // layout restricted to 16 rows (its atom columns of kAtomCols elements lie BN * kAtomCols
  // elements apart: two for D = 128, three for 192, one for FP8), placed kBoxOffset * c elements
  // into the stage: 16 rows of one swizzle atom column, a multiple of the swizzle's period (1024
  // bytes, or 512 for FP8 at D = 64), so the swizzle lines up. K boxes are 16 x Dqk, V boxes 16 x Dv.
  static constexpr int kBoxRows = 16;
  static constexpr int kBoxOffset = kBoxRows * kAtomCols;
  template <int W>
  using SmemLayoutBox = decltype(composition(
      tile_to_shape(SmemAtom{}, Shape<Int<kBlockN>, Int<W>>{}),
      make_layout(Shape<Int<kBoxRows>, Int<W>>{}, Stride<_1, Int<kBlockN>>{})));
  using SmemLayoutKBox = SmemLayoutBox<Dqk>;
  using SmemLayoutVBox = SmemLayoutBox<Dv>;
  using TmaKBox = decltype(make_tma_copy(SM90_TMA_LOAD{},
                                         make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), GmemLayout{}),
                                         SmemLayoutKBox{}, Shape<Int<kBoxRows>, Int<Dqk>>{}, _1{}));
  using TmaVBox = decltype(make_tma_copy(SM90_TMA_LOAD{},
                                         make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), GmemLayout{}),
                                         SmemLayoutVBox{}, Shape<Int<kBoxRows>, Int<Dv>>{}, _1{}));
  static constexpr uint32_t kBoxBytesK = uint32_t(kBoxRows * Dqk * sizeof(Element));
  static constexpr uint32_t kBoxBytesV = uint32_t(kBoxRows * Dv * sizeof(Element));
  static_assert(kBoxBytesK % 1024 == 0 && kBoxBytesV % 1024 == 0, "boxes must keep the swizzle phase");
  static_assert(kBoxOffset * int(sizeof(Element)) % 1024 == 0, "box placement must keep the swizzle phase");

  static constexpr uint32_t kTileBytesK = uint32_t(kBlockN * Dqk * sizeof(Element));
  static constexpr uint32_t kTileBytesV = uint32_t(kBlockN * Dv * sizeof(Element));
  static constexpr uint32_t kQBytes = uint32_t(kBlockM * Dqk * sizeof(Element));

  struct SharedStorage16 {
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutQ>> q;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutK>> k;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutV>> v;
    uint64_t q_full;
    uint64_t k_full[kStagesK], k_empty[kStagesK];
    uint64_t v_full[kStagesV], v_empty[kStagesV];
  };
  // FP8: V's stages as loaded (e4m3; V^T with kPVInFp8), then per consumer warpgroup a buffer of
  // its own (aux): the fp16 copy of the V tile it multiplies, also its O in the epilogue; or with
  // kPVInFp8 its O [64, Dv] bf16 alone.
  using ElementAux = std::conditional_t<kPVInFp8, ElementO, ElementVp>;
  static constexpr int kAuxElements =
      kPVInFp8 ? kConsumerGroups * cosize_v<SmemLayoutOGroup> : cosize_v<SmemLayoutVp>;
  struct SharedStorage8 {
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutQ>> q;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutK>> k;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutV>> v;
    alignas(1024) cute::array_aligned<ElementAux, kAuxElements> aux;
    uint64_t q_full;
    uint64_t k_full[kStagesK], k_empty[kStagesK];
    uint64_t v_full[kStagesV], v_empty[kStagesV];
  };
  using SharedStorage = std::conditional_t<kFp8, SharedStorage8, SharedStorage16>;
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes <= 227 * 1024, "shared memory of an SM");
};

}  // namespace blasst::cuda::sm90
