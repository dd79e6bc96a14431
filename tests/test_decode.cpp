// Decode phase: one decision group per KV head holding all G query heads and all query rows
// (1..8), GQA ratios 1/4/8/16 and MQA, splits, both orders; statistics per KV head.
#include <gtest/gtest.h>

#include <sstream>

#include "support/harness.hpp"

namespace blasst::test {
namespace {

struct DecodeCase {
  int rows, hq, hkv, dqk, dv;
  int64_t lk;
  bool causal;
  blasst_dtype dtype;
  int block_n;
  float factor;
};

std::string name_of(const DecodeCase& c) {
  std::ostringstream os;
  os << "rows" << c.rows << "_H" << c.hq << "x" << c.hkv << "_D" << c.dqk << "x" << c.dv << "_Lk" << c.lk
     << (c.causal ? "_causal" : "_full") << "_"
     << (c.dtype == BLASST_DTYPE_FLOAT32 ? "f32" : c.dtype == BLASST_DTYPE_FLOAT16 ? "f16" : "bf16") << "_Bn"
     << c.block_n;
  return os.str();
}

class DecodeShapes : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(DecodeShapes, GroupsSpanAllHeadsAndRowsOfAKvHead) {
  const DecodeCase& c = GetParam();
  const ref::Problem p =
      make_problem(shape(c.rows, c.lk, c.hq, c.hkv, c.dqk, c.dv, c.causal), c.dtype, uint64_t(c.rows * 1000 + c.hq));
  for (blasst_order order : {BLASST_ORDER_ASCENDING, BLASST_ORDER_ANCHORED})
    for (int splits : {1, 4}) {
      RunSpec s;
      s.phase = BLASST_PHASE_DECODE;
      s.dtype = c.dtype;
      s.geometry = {0, c.block_n, order, splits};
      s.factor = c.factor;
      const std::string what = name_of(c) + " order " + std::to_string(order) + " splits " + std::to_string(splits);
      const Checked r = run_and_check(p, s, what);
      ASSERT_EQ(r.engine.status, BLASST_OK) << what;
      // groups = Hkv, statistics per KV head
      EXPECT_EQ(r.engine.decisions.size(), size_t(c.hkv) * size_t((c.lk + c.block_n - 1) / c.block_n)) << what;
      EXPECT_EQ(r.engine.per_head.size(), size_t(c.hkv) * 2) << what;
      if (order == BLASST_ORDER_ASCENDING && splits == 1) {
        EXPECT_GT(r.engine.info.skipped, 0) << what << ": the case should skip something";
      }
      // dense decode is exact too
      if (splits == 1 && order == BLASST_ORDER_ASCENDING) {
        s.factor = 0.0f;
        const Checked d = run_and_check(p, s, what + " dense");
        ASSERT_EQ(d.engine.status, BLASST_OK);
        EXPECT_EQ(d.engine.info.skipped, 0);
        expect_close(p, c.dtype, d.engine, ref::dense(p), ref::plain(p, c.dtype), what + " dense vs fp64");
      }
    }
}

const DecodeCase kDecodeCases[] = {
    {1, 4, 4, 128, 128, 1500, true, BLASST_DTYPE_BFLOAT16, 64, 300.0f},   // MHA (G = 1)
    {3, 8, 2, 128, 128, 1100, true, BLASST_DTYPE_FLOAT16, 128, 250.0f},   // GQA 4
    {8, 8, 1, 64, 64, 2000, false, BLASST_DTYPE_FLOAT32, 64, 500.0f},     // MQA, 8 rows
    {2, 16, 2, 64, 64, 999, true, BLASST_DTYPE_BFLOAT16, 32, 250.0f},     // GQA 8
    {5, 4, 1, 96, 48, 640, true, BLASST_DTYPE_FLOAT32, 48, 150.0f},       // 5 rows, odd dims
    {1, 8, 1, 576, 512, 300, true, BLASST_DTYPE_BFLOAT16, 32, 100.0f},    // MLA absorbed decode
};

INSTANTIATE_TEST_SUITE_P(Gqa, DecodeShapes, ::testing::ValuesIn(kDecodeCases),
                         [](const ::testing::TestParamInfo<DecodeCase>& param) { return name_of(param.param); });

// With one query row and one query head per KV head, decode and prefill groups coincide, so
// both phases take the same decisions and give the same outputs.
TEST(DecodeVsPrefill, SingleRowMhaDecodeEqualsPrefill) {
  const ref::Problem p = make_problem(shape(1, 1300, 4, 4, 64, 64, true), BLASST_DTYPE_FLOAT32, 41);
  RunSpec s;
  s.geometry = {16, 64, BLASST_ORDER_ANCHORED, 2};
  s.factor = 250.0f;
  const EngineResult pf = run_engine(p, s);
  s.phase = BLASST_PHASE_DECODE;
  const EngineResult dc = run_engine(p, s);
  ASSERT_EQ(pf.status, BLASST_OK) << pf.message;
  ASSERT_EQ(dc.status, BLASST_OK) << dc.message;
  EXPECT_GT(pf.info.skipped, 0);
  EXPECT_EQ(pf.decisions, dc.decisions);  // groups: Hq * 1 block == Hkv
  EXPECT_EQ(pf.per_head, dc.per_head);
  EXPECT_EQ(pf.info.skipped, dc.info.skipped);
  for (size_t n = 0; n < pf.out.o[0].size(); ++n) ASSERT_NEAR(pf.out.o[0][n], dc.out.o[0][n], 1e-5) << n;
}

// Decode with GQA never skips more than prefill with one head per group (a bigger group can
// only keep more), and each prefill head's skip set contains the decode group's.
TEST(DecodeVsPrefill, LargerDecodeGroupsSkipASubsetOfPerHeadGroups) {
  const ref::Problem p = make_problem(shape(1, 2000, 8, 2, 64, 64, true), BLASST_DTYPE_FLOAT32, 42);
  RunSpec s;
  s.geometry = {1, 64, BLASST_ORDER_ASCENDING, 1};
  s.factor = 600.0f;
  const EngineResult pf = run_engine(p, s);
  s.phase = BLASST_PHASE_DECODE;
  s.geometry.block_m = 0;  // one decode group per KV head
  const EngineResult dc = run_engine(p, s);
  ASSERT_EQ(pf.status, BLASST_OK) << pf.message;
  ASSERT_EQ(dc.status, BLASST_OK) << dc.message;
  EXPECT_GT(dc.info.skipped, 0);
  const size_t tiles = size_t((2000 + 63) / 64);
  for (int kh = 0; kh < 2; ++kh)
    for (size_t t = 0; t < tiles; ++t) {
      if (dc.decisions[size_t(kh) * tiles + t] != BLASST_TILE_SKIPPED) continue;
      for (int g = 0; g < 4; ++g) {
        EXPECT_EQ(pf.decisions[size_t(kh * 4 + g) * tiles + t], BLASST_TILE_SKIPPED)
            << "KV head " << kh << " tile " << t << " query head " << kh * 4 + g;
      }
    }
}

// MLA-style decode: many query heads share one latent KV head, so block_m cuts the KV head's
// (head, row) pairs, head-major, into chunks that vote on their own (SPEC section 2). Checked
// against the reference at that geometry over ragged entries, both orders and splits; a chunk
// at least as large as all pairs is the one-group-per-KV-head decode.
TEST(DecodeChunks, BlockMCutsTheHeadMajorPairsIntoGroups) {
  Shape sh = shape(2, 700, 16, 2, 96, 64, true);
  sh.batch = 3;
  sh.lq = {2, 1, 2};
  sh.lk = {700, 390, 65};
  const ref::Problem p = make_problem(sh, BLASST_DTYPE_BFLOAT16, 77);
  for (blasst_order order : {BLASST_ORDER_ASCENDING, BLASST_ORDER_ANCHORED})
    for (int splits : {1, 3}) {
      RunSpec s;
      s.phase = BLASST_PHASE_DECODE;
      s.dtype = BLASST_DTYPE_BFLOAT16;
      s.geometry = {6, 64, order, splits};  // 16 pairs per KV head at Lq = 2: chunks of 6, 6, 4
      s.factor = 60.0f;
      const std::string what = "order " + std::to_string(order) + " splits " + std::to_string(splits);
      const Checked r = run_and_check(p, s, what);
      ASSERT_EQ(r.engine.status, BLASST_OK) << what;
      EXPECT_EQ(r.engine.info.geometry.block_m, 6) << what;
      const size_t tiles = size_t((700 + 63) / 64);
      EXPECT_EQ(r.engine.decisions.size(), size_t(3) * 2 * 3 * tiles) << what << ": groups = Hkv x 3 chunks";
      EXPECT_EQ(r.engine.per_head.size(), size_t(2) * 2) << what << ": statistics stay per KV head";
      if (order == BLASST_ORDER_ASCENDING && splits == 1) {
        EXPECT_GT(r.engine.info.skipped, 0) << what;
        // entry 1 has one row: 8 pairs per KV head, so its third chunk holds no pair and is never visited
        for (int kh = 0; kh < 2; ++kh)
          for (size_t t = 0; t < tiles; ++t)
            EXPECT_EQ(r.engine.decisions[((size_t(1) * 6) + size_t(kh) * 3 + 2) * tiles + t], BLASST_TILE_NOT_VISITED);
      }
    }
  // One chunk of every pair is the default decode group.
  RunSpec whole;
  whole.phase = BLASST_PHASE_DECODE;
  whole.dtype = BLASST_DTYPE_BFLOAT16;
  whole.geometry = {0, 64, BLASST_ORDER_ASCENDING, 1};
  whole.factor = 60.0f;
  RunSpec big = whole;
  big.geometry.block_m = 64;
  const EngineResult a = run_engine(p, whole), b = run_engine(p, big);
  ASSERT_EQ(a.status, BLASST_OK) << a.message;
  ASSERT_EQ(b.status, BLASST_OK) << b.message;
  EXPECT_EQ(a.info.geometry.block_m, 0);
  EXPECT_EQ(a.decisions, b.decisions);
  EXPECT_EQ(a.o_bits, b.o_bits);
}

}  // namespace
}  // namespace blasst::test
