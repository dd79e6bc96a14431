// The skip rule on hand-built inputs whose decisions are known by construction: a sink that
// makes later tiles skippable, larger maxima that must be kept, group votes, anchors and
// seeding, splits, the lambda >= 1 guard and per-KV-head factors.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "support/harness.hpp"

namespace blasst::test {
namespace {

// Scores are exact by construction: scale 1, q = (1, 0, ...), k = (score, 0, ...) plus
// tiny components in dims >= 2 that move scores by less than 1e-3.
ref::Problem hand_problem(int64_t lq, int64_t lk, int hq, int hkv, bool causal = false) {
  ref::Problem p;
  p.batch = 1;
  p.hq = hq;
  p.hkv = hkv;
  p.dqk = 8;
  p.dv = 4;
  p.causal = causal;
  p.scale = 1.0f;
  p.lq = {lq};
  p.lk = {lk};
  p.q = {std::vector<float>(size_t(lq) * hq * 8, 0.0f)};
  p.k = {std::vector<float>(size_t(lk) * hkv * 8, 0.0f)};
  p.v = {std::vector<float>(size_t(lk) * hkv * 4, 0.0f)};
  Rng rng(77);
  for (int64_t i = 0; i < lq; ++i)
    for (int h = 0; h < hq; ++h) {
      float* q = &p.q[0][(size_t(i) * hq + h) * 8];
      q[0] = 1.0f;
      for (int d = 2; d < 8; ++d) q[d] = float(0.01 * (rng.uniform() - 0.5));
    }
  for (int64_t j = 0; j < lk; ++j)
    for (int h = 0; h < hkv; ++h) {
      float* k = &p.k[0][(size_t(j) * hkv + h) * 8];
      for (int d = 2; d < 8; ++d) k[d] = float(0.01 * (rng.uniform() - 0.5));
      for (int d = 0; d < 4; ++d) p.v[0][(size_t(j) * hkv + h) * 4 + d] = float(rng.normal());
    }
  return p;
}

void set_key(ref::Problem& p, int64_t j, int kv_head, int dim, float value) {
  p.k[0][(size_t(j) * p.hkv + kv_head) * 8 + dim] = value;
}
void set_query(ref::Problem& p, int64_t i, int head, int dim, float value) {
  p.q[0][(size_t(i) * p.hq + head) * 8 + dim] = value;
}

// Decisions of one group as a string: K kept, S skipped, . not visited.
std::string trace(const EngineResult& e, int64_t b, int64_t group) {
  std::string s;
  const int64_t tiles = e.geometry.tiles();
  const int64_t per_entry = int64_t(e.decisions.size()) / std::max<int64_t>(1, tiles) /
                            std::max<int64_t>(1, int64_t(e.out.o.size()));
  for (int64_t t = 0; t < tiles; ++t) {
    const uint8_t d = e.decisions[size_t((b * per_entry + group) * tiles + t)];
    s += d == BLASST_TILE_KEPT ? 'K' : d == BLASST_TILE_SKIPPED ? 'S' : d == BLASST_TILE_NOT_VISITED ? '.' : '?';
  }
  return s;
}

RunSpec spec_of(blasst_phase phase, int block_m, int block_n, blasst_order order, int splits, float factor) {
  RunSpec s;
  s.phase = phase;
  s.geometry = {block_m, block_n, order, splits};
  s.factor = factor;
  return s;
}

// Key 0 scores 10, every other key about 0; lambda = 25.6 / 256 = 0.1, ln(lambda) = -2.30.
ref::Problem sink_problem() {
  ref::Problem p = hand_problem(1, 256, 1, 1);
  set_key(p, 0, 0, 0, 10.0f);
  return p;
}

TEST(SkipRule, SinkMakesEveryLaterTileSkippable) {
  const ref::Problem p = sink_problem();
  const Checked c = run_and_check(p, spec_of(BLASST_PHASE_PREFILL, 64, 32, BLASST_ORDER_ASCENDING, 1, 25.6f), "sink");
  ASSERT_EQ(c.engine.status, BLASST_OK);
  EXPECT_EQ(trace(c.engine, 0, 0), "KSSSSSSS");
  EXPECT_EQ(c.engine.info.visited, 8);
  EXPECT_EQ(c.engine.info.skipped, 7);
  EXPECT_EQ(c.engine.per_head, (std::vector<int64_t>{8, 7}));
  // The output is the attention over tile 0 alone.
  ref::Problem only0 = p;
  only0.lk = {32};
  only0.k[0].resize(32 * 8);
  only0.v[0].resize(32 * 4);
  const ref::Output d = ref::dense(only0);
  for (int n = 0; n < 4; ++n) EXPECT_NEAR(c.engine.out.o[0][size_t(n)], d.o[0][size_t(n)], 1e-6);
}

TEST(SkipRule, LaterTileWithLargerMaxIsKeptAndRaisesTheRunningMax) {
  ref::Problem p = sink_problem();
  set_key(p, 5 * 32 + 3, 0, 0, 12.0f);  // tile 5: mt - m = +2 -> keep; tiles 6, 7 then compare to 12
  const Checked c = run_and_check(p, spec_of(BLASST_PHASE_PREFILL, 64, 32, BLASST_ORDER_ASCENDING, 1, 25.6f), "larger");
  ASSERT_EQ(c.engine.status, BLASST_OK);
  EXPECT_EQ(trace(c.engine, 0, 0), "KSSSSKSS");
}

TEST(SkipRule, TileJustAboveThresholdIsKeptAndOneJustBelowSkipped) {
  ref::Problem p = sink_problem();
  set_key(p, 3 * 32 + 7, 0, 0, 8.0f);  // 8 - 10 = -2.0 > -2.30: keep
  set_key(p, 5 * 32 + 1, 0, 0, 7.5f);  // 7.5 - 10 = -2.5 < -2.30: skip
  const Checked c = run_and_check(p, spec_of(BLASST_PHASE_PREFILL, 64, 32, BLASST_ORDER_ASCENDING, 1, 25.6f), "edge");
  ASSERT_EQ(c.engine.status, BLASST_OK);
  EXPECT_EQ(trace(c.engine, 0, 0), "KSSKSSSS");
}

// Row 1 of a two-row group sees a score 9 in tile 4 against its sink of 10 and votes keep:
// the whole group keeps tile 4, while one-row groups decide separately.
TEST(SkipRule, OneRowVotingKeepKeepsTheTileForItsWholeGroup) {
  ref::Problem p = hand_problem(2, 256, 1, 1);
  set_query(p, 1, 0, 0, 0.0f);
  set_query(p, 1, 0, 1, 1.0f);
  set_key(p, 0, 0, 0, 10.0f);
  set_key(p, 0, 0, 1, 10.0f);
  set_key(p, 4 * 32 + 9, 0, 1, 9.0f);
  const Checked pair = run_and_check(p, spec_of(BLASST_PHASE_PREFILL, 2, 32, BLASST_ORDER_ASCENDING, 1, 25.6f), "bm2");
  ASSERT_EQ(pair.engine.status, BLASST_OK);
  EXPECT_EQ(trace(pair.engine, 0, 0), "KSSSKSSS");
  const Checked single =
      run_and_check(p, spec_of(BLASST_PHASE_PREFILL, 1, 32, BLASST_ORDER_ASCENDING, 1, 25.6f), "bm1");
  ASSERT_EQ(single.engine.status, BLASST_OK);
  EXPECT_EQ(trace(single.engine, 0, 0), "KSSSSSSS");
  EXPECT_EQ(trace(single.engine, 0, 1), "KSSSKSSS");
  EXPECT_EQ(single.engine.info.skipped, 13);
}

// A padded row that does not exist never votes: block_m 4 over 2 rows behaves as block_m 2.
TEST(SkipRule, MissingRowsOfAPartialGroupDoNotVote) {
  ref::Problem p = sink_problem();
  p.lq = {2};
  p.q[0].resize(2 * 8);
  for (int d = 0; d < 8; ++d) p.q[0][size_t(8 + d)] = p.q[0][size_t(d)];
  const Checked c = run_and_check(p, spec_of(BLASST_PHASE_PREFILL, 4, 32, BLASST_ORDER_ASCENDING, 1, 25.6f), "partial");
  ASSERT_EQ(c.engine.status, BLASST_OK);
  EXPECT_EQ(trace(c.engine, 0, 0), "KSSSSSSS");
}

TEST(SkipRule, AnchoredKeepsTheLastTileAsTheLocalWindow) {
  const ref::Problem p = sink_problem();
  const Checked c = run_and_check(p, spec_of(BLASST_PHASE_PREFILL, 64, 32, BLASST_ORDER_ANCHORED, 1, 25.6f), "anch");
  ASSERT_EQ(c.engine.status, BLASST_OK);
  EXPECT_EQ(trace(c.engine, 0, 0), "KSSSSSSK");
  EXPECT_EQ(c.engine.info.geometry.order, BLASST_ORDER_ANCHORED);
}

// The last tile's max (20) seeds the running max, so a middle tile (9) that ascending keeps
// against the sink (10) is skipped in anchored order.
TEST(SkipRule, AnchoredSeedingFromTheLastTileSkipsAMiddleTileAscendingKeeps) {
  ref::Problem p = sink_problem();
  set_key(p, 3 * 32 + 2, 0, 0, 9.0f);
  set_key(p, 7 * 32 + 30, 0, 0, 20.0f);
  const Checked asc = run_and_check(p, spec_of(BLASST_PHASE_PREFILL, 64, 32, BLASST_ORDER_ASCENDING, 1, 25.6f), "asc");
  const Checked anc = run_and_check(p, spec_of(BLASST_PHASE_PREFILL, 64, 32, BLASST_ORDER_ANCHORED, 1, 25.6f), "anc");
  ASSERT_EQ(asc.engine.status, BLASST_OK);
  ASSERT_EQ(anc.engine.status, BLASST_OK);
  EXPECT_EQ(trace(asc.engine, 0, 0), "KSSKSSSK");
  EXPECT_EQ(trace(anc.engine, 0, 0), "KSSSSSSK");
}

// Ascending: every chunk's first tile is an anchor and the chunk starts from -inf, so a chunk
// without the sink keeps its tiles (scores ~0 against its own max ~0). Anchored: every chunk starts from the seeded max; only the two anchors are kept.
TEST(SkipRule, SplitChunksAnchorTheirFirstTileInAscendingButCostNothingAnchored) {
  const ref::Problem p = sink_problem();
  const struct {
    int splits;
    const char* ascending;
  } cases[] = {{1, "KSSSSSSS"}, {2, "KSSSKKKK"}, {3, "KSSKKKKK"}, {7, "KSKKKKKK"}, {8, "KKKKKKKK"}, {20, "KKKKKKKK"}};
  for (const auto& cs : cases) {
    const std::string what = "splits " + std::to_string(cs.splits);
    const Checked asc =
        run_and_check(p, spec_of(BLASST_PHASE_PREFILL, 64, 32, BLASST_ORDER_ASCENDING, cs.splits, 25.6f), what);
    const Checked anc =
        run_and_check(p, spec_of(BLASST_PHASE_PREFILL, 64, 32, BLASST_ORDER_ANCHORED, cs.splits, 25.6f), what);
    ASSERT_EQ(asc.engine.status, BLASST_OK);
    ASSERT_EQ(anc.engine.status, BLASST_OK);
    EXPECT_EQ(trace(asc.engine, 0, 0), cs.ascending) << what;
    EXPECT_EQ(trace(anc.engine, 0, 0), "KSSSSSSK") << what;
    EXPECT_EQ(asc.engine.info.geometry.splits, cs.splits) << what;
  }
}

// Key 0 scores 0 and every other key exactly -0.5 (Lk = 128, tiles of 32).
ref::Problem guard_problem() {
  ref::Problem p = hand_problem(1, 128, 1, 1);
  for (int64_t j = 0; j < 128; ++j)
    for (int d = 0; d < 8; ++d) p.k[0][size_t(j) * 8 + size_t(d)] = 0.0f;
  for (int64_t j = 1; j < 128; ++j) set_key(p, j, 0, 0, -0.5f);
  return p;
}

TEST(Threshold, LambdaAtOrAboveOneTurnsSkippingOff) {
  const ref::Problem p = guard_problem();
  const struct {
    float factor;
    const char* expected;
  } cases[] = {
      {127.0f, "KSSS"},    // lambda 0.992: ln = -0.0078 > -0.5 -> skip
      {127.9f, "KSSS"},    // lambda just below 1 still skips
      {128.0f, "KKKK"},    // lambda = 1: guard
      {129.0f, "KKKK"},    // lambda > 1: guard (ln(lambda) > 0 would otherwise skip everything)
      {1.0e6f, "KKKK"},
      {64.0f, "KKKK"},     // ln(0.5) = -0.69 < -0.5 -> keep
      {0.0f, "KKKK"},      // dense
  };
  for (const auto& cs : cases) {
    const std::string what = "factor " + std::to_string(cs.factor);
    const Checked c = run_and_check(p, spec_of(BLASST_PHASE_PREFILL, 16, 32, BLASST_ORDER_ASCENDING, 1, cs.factor), what);
    ASSERT_EQ(c.engine.status, BLASST_OK) << what;
    EXPECT_EQ(trace(c.engine, 0, 0), cs.expected) << what;
  }
}

// lambda uses each entry's own Lk: the same factor skips in a long entry and is off in a
// short one (factor >= its Lk).
TEST(Threshold, GuardAppliesPerBatchEntryLength) {
  ref::Problem p = sink_problem();
  p.batch = 2;
  p.lq = {1, 1};
  p.lk = {256, 96};
  p.q.push_back(p.q[0]);
  p.k.push_back(std::vector<float>(p.k[0].begin(), p.k[0].begin() + 96 * 8));
  p.v.push_back(std::vector<float>(p.v[0].begin(), p.v[0].begin() + 96 * 4));
  RunSpec s = spec_of(BLASST_PHASE_PREFILL, 16, 32, BLASST_ORDER_ASCENDING, 1, 100.0f);
  for (Layout layout : {Layout::Padded, Layout::Ragged}) {
    s.layout = layout;
    const Checked c = run_and_check(p, s, "per-entry lambda");
    ASSERT_EQ(c.engine.status, BLASST_OK);
    EXPECT_EQ(trace(c.engine, 0, 0), "KSSSSSSS");  // 100 / 256 < 1
    EXPECT_EQ(trace(c.engine, 1, 0), "KKK.....");  // 100 / 96 >= 1
  }
}

// Per-request factors replace the scalar for their batch entry, each with its own guard
// (lambda of its own Lk): the serving form, one threshold per request of a batch.
TEST(Threshold, PerRequestFactorsReplaceTheScalarPerEntry) {
  ref::Problem p = sink_problem();
  p.batch = 3;
  p.lq = {1, 1, 1};
  p.lk = {256, 256, 96};
  for (int b = 1; b < 3; ++b) {
    p.q.push_back(p.q[0]);
    p.k.push_back(std::vector<float>(p.k[0].begin(), p.k[0].begin() + p.lk[size_t(b)] * 8));
    p.v.push_back(std::vector<float>(p.v[0].begin(), p.v[0].begin() + p.lk[size_t(b)] * 4));
  }
  for (blasst_phase phase : {BLASST_PHASE_PREFILL, BLASST_PHASE_DECODE}) {
    RunSpec s = spec_of(phase, 16, 32, BLASST_ORDER_ASCENDING, 1, 100.0f);  // the scalar is replaced
    s.per_request = {0.0f, 100.0f, 50.0f};
    for (Layout layout : {Layout::Padded, Layout::Ragged, Layout::Paged}) {
      s.layout = layout;
      const Checked c = run_and_check(p, s, "per-request");
      ASSERT_EQ(c.engine.status, BLASST_OK) << c.engine.message;
      EXPECT_EQ(trace(c.engine, 0, 0), "KKKKKKKK");  // factor 0: dense
      EXPECT_EQ(trace(c.engine, 1, 0), "KSSSSSSS");  // 100 / 256 < 1
      EXPECT_EQ(trace(c.engine, 2, 0), "KSS.....");  // 50 / 96 < 1 (the scalar 100 would be off)
    }
  }
}

// Per-KV-head factors replace the scalar, each head with its own guard.
TEST(Threshold, PerKvHeadFactorsReplaceTheScalar) {
  ref::Problem p = hand_problem(1, 256, 4, 2);
  set_key(p, 0, 0, 0, 10.0f);
  set_key(p, 0, 1, 0, 10.0f);
  const struct {
    float scalar;
    std::vector<float> heads;
    const char* kv0;
    const char* kv1;
  } cases[] = {
      {0.0f, {0.0f, 25.6f}, "KKKKKKKK", "KSSSSSSS"},
      {25.6f, {0.0f, 0.0f}, "KKKKKKKK", "KKKKKKKK"},
      {0.0f, {25.6f, 300.0f}, "KSSSSSSS", "KKKKKKKK"},  // 300 / 256 >= 1
      {25.6f, {}, "KSSSSSSS", "KSSSSSSS"},
  };
  for (const auto& cs : cases) {
    RunSpec s = spec_of(BLASST_PHASE_PREFILL, 64, 32, BLASST_ORDER_ASCENDING, 1, cs.scalar);
    s.per_kv_head = cs.heads;
    const Checked c = run_and_check(p, s, "per-head");
    ASSERT_EQ(c.engine.status, BLASST_OK);
    // prefill groups are head-major: query heads 0, 1 read KV head 0; 2, 3 read KV head 1.
    EXPECT_EQ(trace(c.engine, 0, 0), cs.kv0);
    EXPECT_EQ(trace(c.engine, 0, 1), cs.kv0);
    EXPECT_EQ(trace(c.engine, 0, 2), cs.kv1);
    EXPECT_EQ(trace(c.engine, 0, 3), cs.kv1);
    // decode groups are KV heads; stats per KV head
    s.phase = BLASST_PHASE_DECODE;
    const Checked d = run_and_check(p, s, "per-head decode");
    ASSERT_EQ(d.engine.status, BLASST_OK);
    EXPECT_EQ(trace(d.engine, 0, 0), cs.kv0);
    EXPECT_EQ(trace(d.engine, 0, 1), cs.kv1);
    ASSERT_EQ(d.engine.per_head.size(), 4u);
    EXPECT_EQ(d.engine.per_head[0], 8);
    EXPECT_EQ(d.engine.per_head[2], 8);
  }
}

// Causal groups visit only tiles at or below their diagonal; nothing above it is counted.
TEST(Statistics, CausalTilesAboveTheDiagonalAreNotVisitedOrCounted) {
  const ref::Problem p = make_problem(shape(40, 100, 2, 1, 16, 16, true), BLASST_DTYPE_FLOAT32, 8);
  const Checked c = run_and_check(p, spec_of(BLASST_PHASE_PREFILL, 16, 16, BLASST_ORDER_ASCENDING, 1, 0.0f), "causal");
  ASSERT_EQ(c.engine.status, BLASST_OK);
  // rows [0,16) reach key 75 (tile 4), [16,32) key 91 (tile 5), [32,40) key 99 (tile 6)
  for (int h = 0; h < 2; ++h) {
    EXPECT_EQ(trace(c.engine, 0, h * 3 + 0), "KKKKK..");
    EXPECT_EQ(trace(c.engine, 0, h * 3 + 1), "KKKKKK.");
    EXPECT_EQ(trace(c.engine, 0, h * 3 + 2), "KKKKKKK");
  }
  EXPECT_EQ(c.engine.info.visited, 2 * 18);
  EXPECT_EQ(c.engine.per_head, (std::vector<int64_t>{18, 0, 18, 0}));
  // Lq > Lk: a block whose rows all precede the first key visits nothing.
  const ref::Problem q = make_problem(shape(50, 10, 1, 1, 16, 16, true), BLASST_DTYPE_FLOAT32, 9);
  const Checked e = run_and_check(q, spec_of(BLASST_PHASE_PREFILL, 16, 8, BLASST_ORDER_ANCHORED, 1, 5.0f), "lq>lk");
  ASSERT_EQ(e.engine.status, BLASST_OK);
  EXPECT_EQ(trace(e.engine, 0, 0), "..");  // rows 0..15 sit before key 0 (offset -40)
  EXPECT_EQ(trace(e.engine, 0, 1), "..");  // rows 16..31 see keys <= -9
  EXPECT_EQ(trace(e.engine, 0, 2), "K.");  // rows 32..47 see keys 0..7
  EXPECT_EQ(trace(e.engine, 0, 3), "KK");  // rows 48, 49 see keys 0..9
}

// Decode: one group per KV head holds every query head of it and every query row; one
// (row, head) pair that needs tile 3 keeps it for the group.
TEST(DecodeGroups, OneQueryHeadOfTheGroupKeepsTheTileForAllHeads) {
  ref::Problem p = hand_problem(2, 256, 4, 1);
  set_key(p, 0, 0, 0, 10.0f);
  set_key(p, 3 * 32 + 5, 0, 1, 9.0f);
  set_query(p, 1, 2, 1, 1.0f);  // row 1, head 2 sees 10 (sink) and 9 (tile 3)
  const Checked d = run_and_check(p, spec_of(BLASST_PHASE_DECODE, 0, 32, BLASST_ORDER_ASCENDING, 1, 25.6f), "decode");
  ASSERT_EQ(d.engine.status, BLASST_OK);
  EXPECT_EQ(trace(d.engine, 0, 0), "KSSKSSSS");
  EXPECT_EQ(d.engine.per_head, (std::vector<int64_t>{8, 6}));
  const Checked pf = run_and_check(p, spec_of(BLASST_PHASE_PREFILL, 2, 32, BLASST_ORDER_ASCENDING, 1, 25.6f), "prefill");
  ASSERT_EQ(pf.engine.status, BLASST_OK);
  EXPECT_EQ(trace(pf.engine, 0, 0), "KSSSSSSS");
  EXPECT_EQ(trace(pf.engine, 0, 1), "KSSSSSSS");
  EXPECT_EQ(trace(pf.engine, 0, 2), "KSSKSSSS");
  EXPECT_EQ(trace(pf.engine, 0, 3), "KSSSSSSS");
  EXPECT_EQ(pf.engine.per_head, (std::vector<int64_t>{8, 7, 8, 7, 8, 6, 8, 7}));
}

// Extreme geometry: tiles of one key, blocks of one row, tiles and blocks larger than the
// sequence (up to the 65536 limit), more splits than tiles.
TEST(Geometry, ExtremeTileSizesAndSplitsMatchTheReference) {
  const ref::Problem p = make_problem(shape(33, 150, 2, 1, 16, 16, true), BLASST_DTYPE_FLOAT32, 61);
  const int blocks[] = {1, 3, 150, 151, 65536};
  for (int bm : {1, 65536})
    for (int bn : blocks)
      for (int splits : {1, 5, 65536})
        for (blasst_order order : {BLASST_ORDER_ASCENDING, BLASST_ORDER_ANCHORED}) {
          const std::string what = "Bm " + std::to_string(bm) + " Bn " + std::to_string(bn) + " splits " +
                                   std::to_string(splits) + " order " + std::to_string(order);
          const Checked c = run_and_check(p, spec_of(BLASST_PHASE_PREFILL, bm, bn, order, splits, 40.0f), what);
          ASSERT_EQ(c.engine.status, BLASST_OK) << what;
          ASSERT_FALSE(HasFailure()) << what;
        }
}

// Tiny and huge factors: a denormal factor keeps almost everything (ln(lambda) ~ -108), the
// largest float is guarded off; both follow the reference.
TEST(Threshold, DenormalAndHugeFactorsFollowTheReference) {
  const ref::Problem p = make_problem(shape(20, 300, 2, 2, 16, 16, false), BLASST_DTYPE_BFLOAT16, 62);
  for (float factor : {std::numeric_limits<float>::denorm_min(), 1e-20f, std::numeric_limits<float>::max()}) {
    RunSpec s = spec_of(BLASST_PHASE_PREFILL, 8, 16, BLASST_ORDER_ASCENDING, 1, factor);
    s.dtype = BLASST_DTYPE_BFLOAT16;
    const Checked c = run_and_check(p, s, "factor " + std::to_string(factor));
    ASSERT_EQ(c.engine.status, BLASST_OK);
    EXPECT_EQ(c.engine.info.skipped, 0);
  }
}

}  // namespace
}  // namespace blasst::test
