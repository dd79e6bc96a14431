// Random structured inputs with skipping on: both orders, splits 1/2/3/7, causal or not.
// Every engine decision must be the rule's on the engine's own history (up to rounding),
// statistics must match the trace, outputs must match the fp64 reference replaying the trace.
// Also: thread-count determinism and bitwise equality of the two non-skipping paths.
#include <gtest/gtest.h>

#include <sstream>

#include "support/harness.hpp"

namespace blasst::test {
namespace {

struct SkipCase {
  int64_t lq, lk;
  int hq, hkv, dqk, dv;
  bool causal;
  blasst_dtype dtype;
  int block_m, block_n;
  float factor;
  blasst_phase phase;
};

std::string name_of(const SkipCase& c) {
  std::ostringstream os;
  os << (c.phase == BLASST_PHASE_DECODE ? "decode_" : "prefill_") << "Lq" << c.lq << "_Lk" << c.lk << "_H" << c.hq
     << "x" << c.hkv << "_D" << c.dqk << "x" << c.dv << (c.causal ? "_causal" : "_full") << "_"
     << (c.dtype == BLASST_DTYPE_FLOAT32 ? "f32" : c.dtype == BLASST_DTYPE_FLOAT16 ? "f16" : "bf16") << "_B"
     << c.block_m << "x" << c.block_n << "_f" << int(c.factor);
  return os.str();
}

RunSpec spec_of(const SkipCase& c, blasst_order order, int splits) {
  RunSpec s;
  s.phase = c.phase;
  s.dtype = c.dtype;
  s.geometry = {c.block_m, c.block_n, order, splits};
  s.factor = c.factor;
  return s;
}

class SkipOrdersSplits : public ::testing::TestWithParam<SkipCase> {};

TEST_P(SkipOrdersSplits, DecisionsFollowTheRuleAndOutputsMatchTheReplayedReference) {
  const SkipCase& c = GetParam();
  const ref::Problem p = make_problem(shape(c.lq, c.lk, c.hq, c.hkv, c.dqk, c.dv, c.causal), c.dtype,
                                      uint64_t(c.lq * 31 + c.lk + c.hq));
  for (blasst_order order : {BLASST_ORDER_ASCENDING, BLASST_ORDER_ANCHORED}) {
    std::vector<uint8_t> unsplit;
    int64_t unsplit_skipped = 0;
    for (int splits : {1, 2, 3, 7}) {
      const std::string what = name_of(c) + (order == BLASST_ORDER_ANCHORED ? " anchored" : " ascending") +
                               " splits " + std::to_string(splits);
      const Checked r = run_and_check(p, spec_of(c, order, splits), what);
      ASSERT_EQ(r.engine.status, BLASST_OK) << what;
      const double sparsity = double(r.engine.info.skipped) / double(r.engine.info.visited);
      std::cout << "[ sparsity ] " << what << ": " << r.engine.info.skipped << "/" << r.engine.info.visited << " = "
                << sparsity << " (rounding flips " << r.rounding_flips << ")\n";
      if (splits == 1) {
        // the case is only meaningful with some tiles skipped and some kept
        EXPECT_GT(r.engine.info.skipped, 0) << what;
        EXPECT_LT(sparsity, 0.95) << what;
        unsplit = r.engine.decisions;
        unsplit_skipped = r.engine.info.skipped;
        continue;
      }
      // Splitting adds anchors (ascending) and starts chunks from a lower running max, so it
      // never skips a tile the unsplit run keeps.
      EXPECT_LE(r.engine.info.skipped, unsplit_skipped) << what;
      int64_t extra = 0;
      for (size_t n = 0; n < unsplit.size(); ++n)
        extra += r.engine.decisions[n] == BLASST_TILE_SKIPPED && unsplit[n] != BLASST_TILE_SKIPPED;
      EXPECT_EQ(extra, 0) << what << ": tiles skipped with splits but kept without";
    }
  }
}

const SkipCase kSkipCases[] = {
    {200, 1100, 4, 2, 64, 64, true, BLASST_DTYPE_BFLOAT16, 64, 64, 400.0f, BLASST_PHASE_PREFILL},
    {113, 2000, 2, 1, 128, 128, false, BLASST_DTYPE_FLOAT32, 32, 128, 800.0f, BLASST_PHASE_PREFILL},
    {64, 777, 3, 3, 256, 64, true, BLASST_DTYPE_FLOAT16, 16, 48, 100.0f, BLASST_PHASE_PREFILL},
    {239, 4096, 1, 1, 64, 64, true, BLASST_DTYPE_BFLOAT16, 128, 128, 1500.0f, BLASST_PHASE_PREFILL},
    {4, 3000, 8, 2, 128, 128, false, BLASST_DTYPE_BFLOAT16, 0, 64, 400.0f, BLASST_PHASE_DECODE},
    {1, 2500, 8, 1, 64, 64, true, BLASST_DTYPE_FLOAT32, 0, 128, 800.0f, BLASST_PHASE_DECODE},
};

INSTANTIATE_TEST_SUITE_P(Random, SkipOrdersSplits, ::testing::ValuesIn(kSkipCases),
                         [](const ::testing::TestParamInfo<SkipCase>& param) { return name_of(param.param); });

// With a dominant sink in every row the seeded running max never changes, so anchored
// decisions do not depend on the number of splits at all.
TEST(AnchoredSplits, DominantSinkMakesSplitsCostNoSparsity) {
  Style style;
  style.sink = 30.0f;
  style.window = 0.5f;
  const ref::Problem p = make_problem(shape(96, 1500, 2, 1, 64, 64, false), BLASST_DTYPE_FLOAT32, 12, style);
  RunSpec s;
  s.geometry = {32, 64, BLASST_ORDER_ANCHORED, 1};
  s.factor = 100.0f;
  const Checked one = run_and_check(p, s, "anchored splits 1");
  ASSERT_EQ(one.engine.status, BLASST_OK);
  EXPECT_GT(one.engine.info.skipped, 0);
  for (int splits : {2, 3, 7}) {
    s.geometry.splits = splits;
    const Checked r = run_and_check(p, s, "anchored splits " + std::to_string(splits));
    ASSERT_EQ(r.engine.status, BLASST_OK);
    EXPECT_EQ(r.engine.decisions, one.engine.decisions) << "splits " << splits;
    // ascending loses sparsity at the same splits
    RunSpec a = s;
    a.geometry.order = BLASST_ORDER_ASCENDING;
    const Checked asc = run_and_check(p, a, "ascending splits " + std::to_string(splits));
    ASSERT_EQ(asc.engine.status, BLASST_OK);
    EXPECT_LT(asc.engine.info.skipped, one.engine.info.skipped) << "splits " << splits;
  }
}

// Factor 0 (dense) and a factor with lambda >= 1 (skipping guarded off) are both
// non-skipping paths: bitwise equal outputs at every order and split.
TEST(NonSkippingPaths, ZeroFactorAndGuardedFactorAreBitwiseEqual) {
  for (blasst_phase phase : {BLASST_PHASE_PREFILL, BLASST_PHASE_DECODE}) {
    const int64_t lq = phase == BLASST_PHASE_DECODE ? 3 : 150;
    const ref::Problem p = make_problem(shape(lq, 700, 4, 2, 64, 32, true), BLASST_DTYPE_BFLOAT16, 21);
    for (blasst_order order : {BLASST_ORDER_ASCENDING, BLASST_ORDER_ANCHORED})
      for (int splits : {1, 2, 3, 7}) {
        RunSpec s;
        s.phase = phase;
        s.dtype = BLASST_DTYPE_BFLOAT16;
        s.geometry = {64, 64, order, splits};
        s.factor = 0.0f;
        const EngineResult dense = run_engine(p, s);
        s.factor = 700.0f;  // lambda = 1
        const EngineResult guarded = run_engine(p, s);
        s.factor = 5000.0f;
        const EngineResult guarded2 = run_engine(p, s);
        ASSERT_EQ(dense.status, BLASST_OK) << dense.message;
        ASSERT_EQ(guarded.status, BLASST_OK) << guarded.message;
        const std::string what = "phase " + std::to_string(phase) + " order " + std::to_string(order) + " splits " +
                                 std::to_string(splits);
        EXPECT_EQ(dense.unwritten, 0) << what;
        EXPECT_EQ(guarded.info.skipped, 0) << what;
        expect_bitwise_equal(dense, guarded, what);
        expect_bitwise_equal(dense, guarded2, what);
        EXPECT_EQ(dense.decisions, guarded.decisions) << what;
      }
  }
}

// Threads 1, 2 and 3 give bitwise identical outputs, decisions and statistics.
TEST(Determinism, ThreadCountDoesNotChangeAnyBit) {
  for (blasst_phase phase : {BLASST_PHASE_PREFILL, BLASST_PHASE_DECODE}) {
    const int64_t lq = phase == BLASST_PHASE_DECODE ? 5 : 300;
    const ref::Problem p = make_problem(shape(lq, 1200, 4, 1, 64, 64, true), BLASST_DTYPE_FLOAT16, 22);
    for (blasst_order order : {BLASST_ORDER_ASCENDING, BLASST_ORDER_ANCHORED}) {
      RunSpec s;
      s.phase = phase;
      s.dtype = BLASST_DTYPE_FLOAT16;
      s.geometry = {16, 64, order, 2};
      s.factor = 1000.0f;
      s.threads = 1;
      const EngineResult t1 = run_engine(p, s);
      s.threads = 2;
      const EngineResult t2 = run_engine(p, s);
      s.threads = 3;
      const EngineResult t3 = run_engine(p, s);
      s.threads = 2;
      const EngineResult again = run_engine(p, s);
      ASSERT_EQ(t1.status, BLASST_OK) << t1.message;
      EXPECT_GT(t1.info.skipped, 0);
      expect_bitwise_equal(t1, t2, "threads 1 vs 2");
      expect_bitwise_equal(t1, t3, "threads 1 vs 3");
      expect_bitwise_equal(t2, again, "threads 2, twice");
      EXPECT_EQ(t1.decisions, t2.decisions);
      EXPECT_EQ(t1.decisions, t3.decisions);
      EXPECT_EQ(t1.per_head, t2.per_head);
      EXPECT_EQ(t1.info.skipped, t3.info.skipped);
    }
  }
}

// Statistics and outputs do not depend on whether the optional outputs are requested.
TEST(Statistics, OptionalOutputsDoNotChangeTheResult) {
  const ref::Problem p = make_problem(shape(100, 900, 2, 2, 32, 32, true), BLASST_DTYPE_FLOAT32, 23);
  RunSpec s;
  s.geometry = {32, 64, BLASST_ORDER_ASCENDING, 2};
  s.factor = 120.0f;
  const EngineResult all = run_engine(p, s);
  s.want_lse = false;
  s.want_stats = false;
  s.want_decisions = false;
  const EngineResult none = run_engine(p, s);
  ASSERT_EQ(all.status, BLASST_OK) << all.message;
  ASSERT_EQ(none.status, BLASST_OK) << none.message;
  EXPECT_EQ(all.info.skipped, none.info.skipped);
  EXPECT_EQ(all.info.visited, none.info.visited);
  EXPECT_EQ(all.o_bits, none.o_bits);
  int64_t sum_v = 0, sum_s = 0;
  for (size_t h = 0; h < all.per_head.size() / 2; ++h) {
    sum_v += all.per_head[2 * h];
    sum_s += all.per_head[2 * h + 1];
  }
  EXPECT_EQ(sum_v, all.info.visited);
  EXPECT_EQ(sum_s, all.info.skipped);
}

}  // namespace
}  // namespace blasst::test
