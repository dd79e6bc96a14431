// FP8 P V's key order (src/cuda/sm90/prefill/fp8_pv_order.hpp) against CuTe's own description of
// the Hopper wgmma fragments: every byte that a thread places into its e4m3 A fragment of P must
// be the score of the same row and of the key that V^T's slot holds. Host code only: runs
// without a GPU.
#include <gtest/gtest.h>

#include <set>

#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/tensor.hpp>

#include "cuda/sm90/prefill/fp8_pv_order.hpp"

namespace {

using namespace cute;
using blasst::cuda::sm90::fp8_pv_key_of_slot;
using blasst::cuda::sm90::fp8_pv_score_of_byte;

TEST(Fp8PvOrder, SlotOrderIsAPermutationOfTheBlock) {
  std::set<int> keys;
  for (int k = 0; k < 32; ++k) {
    const int key = fp8_pv_key_of_slot(k);
    EXPECT_GE(key, 0);
    EXPECT_LT(key, 32);
    keys.insert(key);
  }
  EXPECT_EQ(keys.size(), 32u);
}

// The S accumulator of a 64 x 128 fp32 wgmma (QK^T of one tile) and the A operand of a
// 64 x Dv x 32 e4m3 wgmma (P V), thread t's value v at (row, column) = layout(t, v) % 64, / 64.
template <class AtomA, class AtomC>
void check_fragments() {
  using LayoutA = typename MMA_Traits<AtomA>::ALayout;  // (thread, value) -> row + 64 k, 64 x 32
  using LayoutC = typename MMA_Traits<AtomC>::CLayout;  // (thread, value) -> row + 64 n, 64 x 128
  static_assert(size<1>(LayoutA{}) == 16, "16 e4m3 values of A per thread and k-block");
  static_assert(size<1>(LayoutC{}) == 64, "64 fp32 scores per thread");
  int checked = 0;
  for (int t = 0; t < 128; ++t)
    for (int kb = 0; kb < 4; ++kb)
      for (int reg = 0; reg < 4; ++reg)
        for (int byte = 0; byte < 4; ++byte) {
          const int a = int(LayoutA{}(t, 4 * reg + byte));  // value index: byte + 4 * register
          const int row_a = a % 64, slot = a / 64;
          const int c = int(LayoutC{}(t, fp8_pv_score_of_byte(kb, reg, byte)));
          const int row_c = c % 64, key = c / 64;
          ASSERT_EQ(row_c, row_a) << "thread " << t << " k-block " << kb << " register " << reg << " byte " << byte;
          ASSERT_EQ(key, 32 * kb + fp8_pv_key_of_slot(slot))
              << "thread " << t << " k-block " << kb << " register " << reg << " byte " << byte;
          ++checked;
        }
  EXPECT_EQ(checked, 128 * 64);
}

TEST(Fp8PvOrder, EveryByteOfPIsTheScoreItsSlotNames) {
  check_fragments<SM90::GMMA::MMA_64x128x32_F32E4M3E4M3_RS_TN<>, SM90::GMMA::MMA_64x128x32_F32E4M3E4M3_SS_TN<>>();
  check_fragments<SM90::GMMA::MMA_64x64x32_F32E4M3E4M3_RS_TN<>, SM90::GMMA::MMA_64x128x32_F32E4M3E4M3_SS_TN<>>();
}

}  // namespace
