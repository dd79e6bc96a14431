// Self-checks of the fp64 reference, so that engine failures point at the engine.
#include <gtest/gtest.h>

#include <cmath>

#include "reference/reference.hpp"
#include "support/harness.hpp"

namespace blasst::test {
namespace {

// Two keys with scores 0 and ln(3): weights 1/4 and 3/4.
TEST(Reference, DenseMatchesHandComputedSoftmax) {
  ref::Problem p;
  p.hq = p.hkv = 1;
  p.dqk = p.dv = 1;
  p.scale = 1.0f;
  p.lq = {1};
  p.lk = {2};
  p.q = {{1.0f}};
  const float l3 = float(std::log(3.0));
  p.k = {{0.0f, l3}};
  p.v = {{4.0f, 8.0f}};
  const ref::Output o = ref::dense(p);
  const double w1 = std::exp(double(l3)) / (1.0 + std::exp(double(l3)));
  EXPECT_NEAR(o.o[0][0], 4.0 * (1 - w1) + 8.0 * w1, 1e-12);
  EXPECT_NEAR(o.lse[0][0], std::log(1.0 + std::exp(double(l3))), 1e-12);
}

// Bottom-right causal: with Lq > Lk the first Lq - Lk rows see nothing (O = 0, LSE = -inf).
TEST(Reference, CausalRowsWithoutKeysGiveZeroAndMinusInf) {
  const ref::Problem p = make_problem(shape(5, 3, 1, 1, 8, 8, true), BLASST_DTYPE_FLOAT32, 1);
  const ref::Output o = ref::dense(p);
  EXPECT_EQ(p.visible_end(0, 0), 0);
  EXPECT_EQ(p.visible_end(0, 2), 1);
  EXPECT_EQ(p.visible_end(0, 4), 3);
  for (int i = 0; i < 2; ++i) {
    EXPECT_TRUE(std::isinf(o.lse[0][size_t(i)]) && o.lse[0][size_t(i)] < 0);
    for (int d = 0; d < 8; ++d) EXPECT_EQ(o.o[0][size_t(i * 8 + d)], 0.0);
  }
  // Row 2 sees key 0 only: O = v0.
  for (int d = 0; d < 8; ++d) EXPECT_NEAR(o.o[0][size_t(2 * 8 + d)], p.vv(0, 0, 0, d), 1e-12);
}

// With factor 0 nothing is skipped and the BLASST reference is dense attention.
TEST(Reference, ZeroFactorKeepsEveryVisitedTileAndEqualsDense) {
  const ref::Problem p = make_problem(shape(40, 150, 2, 1, 16, 16, true), BLASST_DTYPE_FLOAT32, 2);
  ref::Geometry g;
  g.block_m = 16;
  g.block_n = 32;
  g.max_seqlen_q = 40;
  g.max_seqlen_k = 150;
  const ref::Blasst r = ref::blasst(p, g, {});
  const ref::Output d = ref::dense(p);
  EXPECT_EQ(r.skipped, 0);
  // causal, Lk - Lq = 110: block of rows [16 mb, 16 mb + 15] reaches key 110 + 16 mb + 15.
  int64_t visited = 0;
  for (int mb = 0; mb < 3; ++mb) {
    const int64_t last_row = std::min(16 * mb + 15, 39);
    visited += (110 + last_row) / 32 + 1;
  }
  EXPECT_EQ(r.visited, 2 * visited);
  EXPECT_EQ(r.out.o, d.o);
  EXPECT_EQ(r.out.lse, d.lse);
}

// Splitting only adds anchors and lowers running maxima, so every tile skipped with S splits
// is skipped with one split (both orders).
TEST(Reference, SplitSkipsAreASubsetOfUnsplitSkips) {
  Style style;
  style.sink = 9.0f;
  const ref::Problem p = make_problem(shape(64, 2000, 2, 1, 32, 32, false), BLASST_DTYPE_FLOAT32, 3, style);
  for (blasst_order order : {BLASST_ORDER_ASCENDING, BLASST_ORDER_ANCHORED}) {
    ref::Geometry g;
    g.block_m = 32;
    g.block_n = 64;
    g.order = order;
    g.max_seqlen_q = 64;
    g.max_seqlen_k = 2000;
    ref::Threshold t;
    t.factor = 200.0f;
    const ref::Blasst one = ref::blasst(p, g, t);
    EXPECT_GT(one.skipped, 0) << "order " << order;
    for (int s : {2, 3, 7}) {
      g.splits = s;
      const ref::Blasst r = ref::blasst(p, g, t);
      EXPECT_LE(r.skipped, one.skipped) << "order " << order << " splits " << s;
      for (size_t n = 0; n < r.decisions.size(); ++n)
        if (r.decisions[n] == BLASST_TILE_SKIPPED) {
          ASSERT_EQ(one.decisions[n], BLASST_TILE_SKIPPED) << n;
        }
    }
  }
}

// Replaying a reference's own trace reproduces it exactly and every margin is positive.
TEST(Reference, ReplayOfOwnTraceIsIdentity) {
  const ref::Problem p = make_problem(shape(70, 900, 2, 2, 32, 16, true), BLASST_DTYPE_BFLOAT16, 4);
  ref::Geometry g;
  g.block_m = 32;
  g.block_n = 64;
  g.order = BLASST_ORDER_ANCHORED;
  g.splits = 2;
  g.max_seqlen_q = 70;
  g.max_seqlen_k = 900;
  ref::Threshold t;
  t.factor = 100.0f;
  const ref::Blasst own = ref::blasst(p, g, t);
  const ref::Blasst again = ref::blasst(p, g, t, own.decisions.data());
  EXPECT_EQ(own.decisions, again.rule);
  EXPECT_EQ(own.out.o, again.out.o);
  for (size_t n = 0; n < own.margin.size(); ++n) EXPECT_GE(own.margin[n], 0.0f);
}

}  // namespace
}  // namespace blasst::test
