// Threshold 0 is exact dense attention: the CPU engine against fp64 dense attention on the
// odd shapes of DESIGN.md, every head layout, head dims, causal or not, fp32/fp16/bf16.
#include <gtest/gtest.h>

#include <sstream>

#include "support/harness.hpp"

namespace blasst::test {
namespace {

struct DenseCase {
  int64_t lq, lk;
  int hq, hkv, dqk, dv;
  bool causal;
  blasst_dtype dtype;
  int block_m, block_n;  // 0 = engine default
};

std::string name_of(const DenseCase& c) {
  std::ostringstream os;
  os << "Lq" << c.lq << "_Lk" << c.lk << "_H" << c.hq << "x" << c.hkv << "_D" << c.dqk << "x" << c.dv
     << (c.causal ? "_causal" : "_full") << "_"
     << (c.dtype == BLASST_DTYPE_FLOAT32 ? "f32" : c.dtype == BLASST_DTYPE_FLOAT16 ? "f16" : "bf16") << "_B"
     << c.block_m << "x" << c.block_n;
  return os.str();
}

class DenseShapes : public ::testing::TestWithParam<DenseCase> {};

TEST_P(DenseShapes, ZeroThresholdMatchesFp64DenseAttention) {
  const DenseCase& c = GetParam();
  const ref::Problem p = make_problem(shape(c.lq, c.lk, c.hq, c.hkv, c.dqk, c.dv, c.causal), c.dtype,
                                      uint64_t(c.lq * 131 + c.lk * 7 + c.dqk));
  RunSpec spec;
  spec.dtype = c.dtype;
  spec.geometry = {c.block_m, c.block_n, BLASST_ORDER_ASCENDING, 1};
  spec.factor = 0.0f;
  const std::string what = name_of(c);
  const Checked r = run_and_check(p, spec, what);
  ASSERT_EQ(r.engine.status, BLASST_OK);
  EXPECT_EQ(r.engine.info.skipped, 0) << what;
  EXPECT_GT(r.engine.info.visited, 0) << what;
  // Nothing skipped, so the reference that replays the trace is dense attention itself;
  // check against an independent dense computation as well.
  const ref::Output dense = ref::dense(p);
  const ref::Output plain = ref::plain(p, c.dtype);
  const Accuracy acc = expect_close(p, c.dtype, r.engine, dense, plain, what + " vs dense");
  RecordProperty("max_abs_err", std::to_string(acc.err_o));
}

const DenseCase kCases[] = {
    {1, 1, 4, 4, 64, 64, false, BLASST_DTYPE_FLOAT32, 0, 0},
    {1, 1, 4, 1, 128, 128, true, BLASST_DTYPE_BFLOAT16, 0, 0},
    {1, 239, 8, 2, 128, 128, true, BLASST_DTYPE_FLOAT16, 0, 0},
    {1, 239, 2, 2, 64, 64, false, BLASST_DTYPE_FLOAT32, 64, 32},
    {3, 799, 4, 2, 256, 256, true, BLASST_DTYPE_BFLOAT16, 0, 0},
    {3, 799, 4, 1, 192, 128, false, BLASST_DTYPE_FLOAT32, 2, 64},
    {113, 203, 2, 2, 64, 64, true, BLASST_DTYPE_FLOAT32, 64, 64},
    {113, 203, 4, 2, 128, 128, false, BLASST_DTYPE_BFLOAT16, 0, 0},
    {203, 113, 2, 1, 64, 64, true, BLASST_DTYPE_FLOAT32, 32, 16},  // Lq > Lk: leading rows see nothing
    {128, 128, 2, 2, 192, 128, true, BLASST_DTYPE_FLOAT16, 0, 0},
    {128, 128, 4, 1, 256, 256, false, BLASST_DTYPE_BFLOAT16, 0, 0},
    {128, 128, 2, 1, 64, 64, true, BLASST_DTYPE_FLOAT32, 128, 128},
    {239, 4096, 2, 1, 128, 128, true, BLASST_DTYPE_BFLOAT16, 0, 0},
    {239, 4096, 1, 1, 64, 64, false, BLASST_DTYPE_FLOAT32, 64, 256},
    {2, 77, 4, 1, 576, 512, true, BLASST_DTYPE_BFLOAT16, 0, 16},  // MLA absorbed decode dims
    {5, 40, 2, 1, 576, 512, false, BLASST_DTYPE_FLOAT32, 0, 0},
    {17, 33, 3, 3, 8, 24, true, BLASST_DTYPE_FLOAT16, 5, 7},     // odd everything
};

INSTANTIATE_TEST_SUITE_P(OddShapes, DenseShapes, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<DenseCase>& param) { return name_of(param.param); });

// A moderately large causal prefill (smaller under BLASST_TEST_SCALE=small).
TEST(DenseLarge, CausalPrefillMatchesFp64DenseAttention) {
  const int64_t n = scaled(2112, 300);
  for (blasst_dtype dt : {BLASST_DTYPE_FLOAT16, BLASST_DTYPE_FLOAT32}) {
    const ref::Problem p = make_problem(shape(n, n, 2, 1, 64, 64, true), dt, 99);
    RunSpec spec;
    spec.dtype = dt;
    spec.geometry = {0, 0, BLASST_ORDER_ASCENDING, 1};
    const Checked r = run_and_check(p, spec, "large causal");
    ASSERT_EQ(r.engine.status, BLASST_OK);
    EXPECT_EQ(r.engine.info.skipped, 0);
    expect_close(p, dt, r.engine, ref::dense(p), ref::plain(p, dt), "large causal vs dense");
  }
}

// The fp16/bf16 bound is meaningful: the plain low-precision computation really is worse
// than the engine, which keeps scores and accumulators in fp32.
TEST(DenseAccuracy, EngineBeatsPlainBf16OnLongRows) {
  const ref::Problem p = make_problem(shape(16, 1500, 2, 2, 64, 64, false), BLASST_DTYPE_BFLOAT16, 5);
  RunSpec spec;
  spec.dtype = BLASST_DTYPE_BFLOAT16;
  const Checked r = run_and_check(p, spec, "bf16 long rows");
  ASSERT_EQ(r.engine.status, BLASST_OK);
  const Accuracy acc =
      expect_close(p, BLASST_DTYPE_BFLOAT16, r.engine, ref::dense(p), ref::plain(p, BLASST_DTYPE_BFLOAT16), "bf16");
  EXPECT_GT(acc.plain_err_o, 0.0);
  EXPECT_LT(acc.err_o, acc.plain_err_o);
}

// Scores in the thousands (a large explicit scale) must not overflow exp or the sums.
TEST(DenseAccuracy, HugeScoresStayFiniteAndAccurate) {
  ref::Problem p = make_problem(shape(40, 500, 2, 1, 32, 32, true), BLASST_DTYPE_BFLOAT16, 6);
  p.scale = 300.0f;
  for (float factor : {0.0f, 100.0f}) {
    RunSpec spec;
    spec.dtype = BLASST_DTYPE_BFLOAT16;
    spec.geometry = {16, 32, BLASST_ORDER_ANCHORED, 2};
    spec.factor = factor;
    const Checked r = run_and_check(p, spec, "scale 300, factor " + std::to_string(factor));
    ASSERT_EQ(r.engine.status, BLASST_OK);
    if (factor == 0.0f) {
      expect_close(p, BLASST_DTYPE_BFLOAT16, r.engine, ref::dense(p), ref::plain(p, BLASST_DTYPE_BFLOAT16), "huge scores");
    } else {
      EXPECT_GT(r.engine.info.skipped, 0);
    }
  }
}

}  // namespace
}  // namespace blasst::test
