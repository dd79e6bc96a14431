// NaN and inf in the inputs propagate exactly as in dense attention (SPEC section 5):
// NaN in a query row, NaN in a key (also with skipping on: a NaN score is never hidden),
// NaN and inf in values at threshold 0.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "support/harness.hpp"

namespace blasst::test {
namespace {

constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// Element-wise: engine NaN exactly where the fp64 dense reference is NaN (output and LSE).
void expect_nan_positions(const ref::Problem& p, const EngineResult& e, const ref::Output& d, const std::string& what) {
  int64_t o_mismatch = 0, lse_mismatch = 0, ref_nans = 0;
  for (int b = 0; b < p.batch; ++b) {
    for (size_t n = 0; n < d.o[size_t(b)].size(); ++n) {
      ref_nans += std::isnan(d.o[size_t(b)][n]);
      o_mismatch += std::isnan(d.o[size_t(b)][n]) != std::isnan(e.out.o[size_t(b)][n]);
    }
    for (size_t n = 0; n < d.lse[size_t(b)].size(); ++n)
      lse_mismatch += std::isnan(d.lse[size_t(b)][n]) != std::isnan(e.out.lse[size_t(b)][n]);
  }
  EXPECT_GT(ref_nans, 0) << what << ": the case must produce NaN";
  EXPECT_EQ(o_mismatch, 0) << what << ": output elements NaN on one side only";
  EXPECT_EQ(lse_mismatch, 0) << what << ": LSE values NaN on one side only";
}

ref::Problem base_problem(blasst_dtype dt, bool causal) {
  Style style;
  style.sink = 12.0f;  // a strong sink, so that tiles far from the diagonal are skippable
  return make_problem(shape(70, 400, 4, 2, 32, 32, causal), dt, 51, style);
}

void set_q(ref::Problem& p, int64_t i, int h, int d, float x) { p.q[0][(size_t(i) * p.hq + h) * p.dqk + d] = x; }
void set_k(ref::Problem& p, int64_t j, int h, int d, float x) { p.k[0][(size_t(j) * p.hkv + h) * p.dqk + d] = x; }
void set_v(ref::Problem& p, int64_t j, int h, int d, float x) { p.v[0][(size_t(j) * p.hkv + h) * p.dv + d] = x; }

class NonFinite : public ::testing::TestWithParam<blasst_dtype> {};

TEST_P(NonFinite, NanInOneQueryRowGivesNanInExactlyThatRow) {
  ref::Problem p = base_problem(GetParam(), true);
  set_q(p, 33, 2, 5, kNan);
  const ref::Output d = ref::dense(p);
  for (float factor : {0.0f, 80.0f}) {
    RunSpec s;
    s.dtype = GetParam();
    s.geometry = {16, 32, BLASST_ORDER_ANCHORED, 2};
    s.factor = factor;
    const EngineResult e = run_engine(p, s);
    ASSERT_EQ(e.status, BLASST_OK) << e.message;
    EXPECT_EQ(e.unwritten, 0);
    expect_nan_positions(p, e, d, "NaN in q, factor " + std::to_string(factor));
  }
}

// A NaN key makes every row that sees it NaN. With skipping on, the NaN sits in a tile far
// from the diagonal that the rule would otherwise skip: the NaN score must keep it.
TEST_P(NonFinite, NanInOneKeyGivesNanInEveryRowThatSeesIt) {
  ref::Problem p = base_problem(GetParam(), true);
  set_k(p, 100, 1, 7, kNan);  // KV head 1: query heads 2, 3; causal rows 0..69 see keys <= 330 + i
  const ref::Output d = ref::dense(p);
  for (blasst_phase phase : {BLASST_PHASE_PREFILL, BLASST_PHASE_DECODE})
    for (float factor : {0.0f, 300.0f}) {
      RunSpec s;
      s.phase = phase;
      s.dtype = GetParam();
      s.geometry = {4, 32, BLASST_ORDER_ASCENDING, 1};
      s.factor = factor;
      const EngineResult e = run_engine(p, s);
      ASSERT_EQ(e.status, BLASST_OK) << e.message;
      EXPECT_EQ(e.unwritten, 0);
      expect_nan_positions(p, e, d, "NaN in k, phase " + std::to_string(phase) + ", factor " + std::to_string(factor));
    }
}

// The same data without the NaN does skip the tile that holds key 100, so the test above
// really checks that a NaN score is never hidden by a skip.
TEST_P(NonFinite, TileHoldingTheNanKeyIsSkippedWithoutTheNan) {
  const ref::Problem p = base_problem(GetParam(), true);
  RunSpec s;
  s.dtype = GetParam();
  s.geometry = {4, 32, BLASST_ORDER_ASCENDING, 1};
  s.factor = 300.0f;
  const EngineResult e = run_engine(p, s);
  ASSERT_EQ(e.status, BLASST_OK) << e.message;
  const int64_t tiles = (400 + 31) / 32, blocks = (70 + 3) / 4;
  int64_t skipped = 0;
  for (int h = 2; h < 4; ++h)
    for (int64_t mb = 0; mb < blocks; ++mb)
      skipped += e.decisions[size_t((h * blocks + mb) * tiles + 100 / 32)] == BLASST_TILE_SKIPPED;
  EXPECT_GT(skipped, 0);
}

TEST_P(NonFinite, NanInOneValueGivesNanInThatColumnAtThresholdZero) {
  ref::Problem p = base_problem(GetParam(), false);
  set_v(p, 250, 0, 3, kNan);
  const ref::Output d = ref::dense(p);
  for (blasst_phase phase : {BLASST_PHASE_PREFILL, BLASST_PHASE_DECODE}) {
    RunSpec s;
    s.phase = phase;
    s.dtype = GetParam();
    s.geometry = {32, 64, BLASST_ORDER_ASCENDING, 3};
    const EngineResult e = run_engine(p, s);
    ASSERT_EQ(e.status, BLASST_OK) << e.message;
    expect_nan_positions(p, e, d, "NaN in v");
    // only column 3 of query heads 0, 1 is NaN
    for (size_t n = 0; n < e.out.o[0].size(); ++n) {
      const size_t dcol = n % size_t(p.dv), h = (n / size_t(p.dv)) % size_t(p.hq);
      if (dcol != 3 || h > 1) {
        ASSERT_FALSE(std::isnan(e.out.o[0][n])) << n;
      }
    }
  }
}

TEST_P(NonFinite, InfInOneValueGivesInfInThatColumnAtThresholdZero) {
  ref::Problem p = base_problem(GetParam(), true);
  set_v(p, 20, 1, 9, kInf);
  const ref::Output d = ref::dense(p);
  RunSpec s;
  s.dtype = GetParam();
  s.geometry = {16, 32, BLASST_ORDER_ANCHORED, 1};
  const EngineResult e = run_engine(p, s);
  ASSERT_EQ(e.status, BLASST_OK) << e.message;
  int64_t infs = 0, mismatch = 0;
  for (size_t n = 0; n < d.o[0].size(); ++n) {
    if (std::isinf(d.o[0][n])) {
      ++infs;
      mismatch += e.out.o[0][n] != d.o[0][n];
    } else {
      mismatch += !std::isfinite(e.out.o[0][n]);
    }
  }
  EXPECT_GT(infs, 0);
  EXPECT_EQ(mismatch, 0) << "inf positions differ from dense attention";
}

// An infinite key component gives scores of +inf or -inf (by the sign of q): +inf rows become
// NaN as in dense attention (inf - inf), -inf rows simply ignore the key.
TEST_P(NonFinite, InfInOneKeyPropagatesAsInDenseAttention) {
  ref::Problem p = base_problem(GetParam(), false);
  set_k(p, 5, 0, 0, kInf);
  const ref::Output d = ref::dense(p);
  RunSpec s;
  s.dtype = GetParam();
  s.geometry = {16, 32, BLASST_ORDER_ASCENDING, 1};
  const EngineResult e = run_engine(p, s);
  ASSERT_EQ(e.status, BLASST_OK) << e.message;
  expect_nan_positions(p, e, d, "inf in k");
}

// A row whose only visible scores are -inf gets O = 0 and LSE = -inf, like a row without keys.
TEST_P(NonFinite, RowWhoseVisibleScoresAreAllMinusInfGivesZeroAndMinusInf) {
  ref::Problem p = make_problem(shape(4, 4, 1, 1, 8, 8, true), GetParam(), 52);
  for (int i = 0; i < 4; ++i) set_q(p, i, 0, 0, -1.0f);
  set_k(p, 0, 0, 0, kInf);  // every row scores key 0 at -inf; row 0 sees key 0 only
  const ref::Output d = ref::dense(p);
  ASSERT_TRUE(std::isinf(d.lse[0][0]) && d.lse[0][0] < 0);
  for (float factor : {0.0f, 2.0f}) {
    RunSpec s;
    s.dtype = GetParam();
    s.geometry = {2, 2, BLASST_ORDER_ANCHORED, 1};
    s.factor = factor;
    const EngineResult e = run_engine(p, s);
    ASSERT_EQ(e.status, BLASST_OK) << e.message;
    EXPECT_TRUE(std::isinf(e.out.lse[0][0]) && e.out.lse[0][0] < 0) << "LSE " << e.out.lse[0][0];
    for (int n = 0; n < 8; ++n) EXPECT_EQ(e.out.o[0][size_t(n)], 0.0) << n;
    // rows 1..3 also see key 0 with score -inf plus finite keys: finite, as in dense attention
    for (size_t n = 8; n < e.out.o[0].size(); ++n) {
      EXPECT_EQ(std::isnan(e.out.o[0][n]), std::isnan(d.o[0][n])) << n;
      EXPECT_TRUE(std::isfinite(e.out.o[0][n])) << n;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, NonFinite,
                         ::testing::Values(BLASST_DTYPE_FLOAT32, BLASST_DTYPE_FLOAT16, BLASST_DTYPE_BFLOAT16),
                         [](const ::testing::TestParamInfo<blasst_dtype>& param) {
                           return std::string(param.param == BLASST_DTYPE_FLOAT32   ? "f32"
                                              : param.param == BLASST_DTYPE_FLOAT16 ? "f16"
                                                                                    : "bf16");
                         });

}  // namespace
}  // namespace blasst::test
