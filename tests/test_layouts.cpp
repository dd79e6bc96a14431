// Memory layouts change nothing: ragged (cu_seqlens), padded (seqlens), paged K/V (page
// sizes 1, 16, 64 and an odd one, shuffled pages) and strided tensors give, per batch entry,
// bitwise the outputs of that entry run alone in a contiguous layout. Everything outside the
// views is NaN in the inputs (never read) and a sentinel in the outputs (never written).
#include <gtest/gtest.h>

#include "support/harness.hpp"

namespace blasst::test {
namespace {

ref::Problem entry_of(const ref::Problem& p, int b) {
  ref::Problem e = p;
  e.batch = 1;
  e.lq = {p.lq[size_t(b)]};
  e.lk = {p.lk[size_t(b)]};
  e.q = {p.q[size_t(b)]};
  e.k = {p.k[size_t(b)]};
  e.v = {p.v[size_t(b)]};
  return e;
}

Shape batch_shape(std::vector<int64_t> lq, std::vector<int64_t> lk, int hq, int hkv, int d, bool causal) {
  Shape s;
  s.batch = int(lq.size());
  s.hq = hq;
  s.hkv = hkv;
  s.dqk = d;
  s.dv = d;
  s.causal = causal;
  s.lq = std::move(lq);
  s.lk = std::move(lk);
  return s;
}

struct LayoutVariant {
  const char* name;
  Layout layout;
  int page_size;
  int64_t extra_max;  // max_seqlen beyond the largest entry
};

const LayoutVariant kVariants[] = {
    {"padded", Layout::Padded, 0, 0},    {"padded_oversized_max", Layout::Padded, 0, 9},
    {"ragged", Layout::Ragged, 0, 0},    {"paged_1", Layout::Paged, 1, 0},
    {"paged_16", Layout::Paged, 16, 0},  {"paged_64", Layout::Paged, 64, 0},
    {"paged_7", Layout::Paged, 7, 0},    {"strided", Layout::Strided, 0, 0},
};

void check_layouts(const ref::Problem& p, RunSpec base, const std::string& label) {
  // Each entry alone, contiguous.
  std::vector<EngineResult> single;
  for (int b = 0; b < p.batch; ++b) {
    RunSpec s = base;
    s.layout = Layout::Contiguous;
    single.push_back(run_engine(entry_of(p, b), s));
    ASSERT_EQ(single.back().status, BLASST_OK) << label << " entry " << b << ": " << single.back().message;
  }
  for (const LayoutVariant& v : kVariants) {
    RunSpec s = base;
    s.layout = v.layout;
    s.page_size = v.page_size;
    int64_t mq = 0, mk = 0;
    for (int b = 0; b < p.batch; ++b) {
      mq = std::max(mq, p.lq[size_t(b)]);
      mk = std::max(mk, p.lk[size_t(b)]);
    }
    if (v.extra_max) {
      s.max_seqlen_q = mq + v.extra_max;
      s.max_seqlen_k = mk + v.extra_max;
    }
    const std::string what = label + " " + v.name;
    const Checked c = run_and_check(p, s, what);
    ASSERT_EQ(c.engine.status, BLASST_OK) << what;
    int64_t visited = 0, skipped = 0;
    for (int b = 0; b < p.batch; ++b) {
      EXPECT_EQ(c.engine.o_bits[size_t(b)], single[size_t(b)].o_bits[0]) << what << ": entry " << b << " output bits";
      EXPECT_EQ(c.engine.lse_bits[size_t(b)], single[size_t(b)].lse_bits[0]) << what << ": entry " << b << " LSE bits";
      visited += single[size_t(b)].info.visited;
      skipped += single[size_t(b)].info.skipped;
    }
    EXPECT_EQ(c.engine.info.visited, visited) << what;
    EXPECT_EQ(c.engine.info.skipped, skipped) << what;
  }
}

TEST(Layouts, PrefillRaggedPaddedPagedStridedMatchEachEntryAloneBitwise) {
  // Entries: ordinary, one row, no rows, no keys (rows see nothing), square.
  const ref::Problem p =
      make_problem(batch_shape({37, 1, 0, 20, 64}, {300, 77, 50, 0, 64}, 4, 2, 32, true), BLASST_DTYPE_BFLOAT16, 31);
  RunSpec s;
  s.dtype = BLASST_DTYPE_BFLOAT16;
  s.geometry = {32, 32, BLASST_ORDER_ANCHORED, 2};
  s.factor = 60.0f;
  check_layouts(p, s, "prefill causal anchored");
  s.geometry = {16, 48, BLASST_ORDER_ASCENDING, 1};
  check_layouts(p, s, "prefill causal ascending");
}

TEST(Layouts, PrefillNonCausalFp32WithSkippingMatchesEachEntryAloneBitwise) {
  const ref::Problem p =
      make_problem(batch_shape({50, 3, 129}, {513, 1, 200}, 2, 1, 64, false), BLASST_DTYPE_FLOAT32, 32);
  RunSpec s;
  s.geometry = {64, 64, BLASST_ORDER_ASCENDING, 1};
  s.factor = 50.0f;
  check_layouts(p, s, "prefill full");
}

TEST(Layouts, DecodeRaggedPaddedPagedStridedMatchEachEntryAloneBitwise) {
  const ref::Problem p =
      make_problem(batch_shape({1, 4, 8, 0, 2}, {300, 77, 1, 50, 0}, 8, 2, 64, true), BLASST_DTYPE_FLOAT16, 33);
  RunSpec s;
  s.phase = BLASST_PHASE_DECODE;
  s.dtype = BLASST_DTYPE_FLOAT16;
  s.geometry = {0, 32, BLASST_ORDER_ANCHORED, 3};
  s.factor = 40.0f;
  check_layouts(p, s, "decode anchored");
  s.geometry = {0, 64, BLASST_ORDER_ASCENDING, 2};
  check_layouts(p, s, "decode ascending");
}

// Paged decode with an unshuffled table equals the shuffled one (page order is irrelevant).
TEST(Layouts, PageOrderDoesNotMatter) {
  const ref::Problem p = make_problem(batch_shape({2, 2}, {250, 130}, 4, 1, 32, false), BLASST_DTYPE_FLOAT32, 34);
  RunSpec s;
  s.phase = BLASST_PHASE_DECODE;
  s.layout = Layout::Paged;
  s.page_size = 16;
  s.factor = 30.0f;
  s.geometry = {0, 32, BLASST_ORDER_ASCENDING, 1};
  s.shuffle_pages = true;
  const EngineResult shuffled = run_engine(p, s);
  s.shuffle_pages = false;
  const EngineResult ordered = run_engine(p, s);
  ASSERT_EQ(shuffled.status, BLASST_OK) << shuffled.message;
  ASSERT_EQ(ordered.status, BLASST_OK) << ordered.message;
  expect_bitwise_equal(shuffled, ordered, "page order");
  EXPECT_EQ(shuffled.decisions, ordered.decisions);
}

// An explicit scale replaces 1/sqrt(Dqk).
TEST(Layouts, ExplicitScaleIsUsed) {
  ref::Problem p = make_problem(shape(20, 90, 2, 1, 32, 16, true), BLASST_DTYPE_FLOAT32, 35);
  p.scale = 0.37f;
  RunSpec s;
  s.geometry = {16, 16, BLASST_ORDER_ASCENDING, 1};
  const Checked c = run_and_check(p, s, "scale 0.37");
  ASSERT_EQ(c.engine.status, BLASST_OK);
  expect_close(p, BLASST_DTYPE_FLOAT32, c.engine, ref::dense(p), ref::plain(p, BLASST_DTYPE_FLOAT32), "scale");
  p.scale = -0.2f;  // a negative scale is finite, hence valid
  const Checked n = run_and_check(p, s, "scale -0.2");
  ASSERT_EQ(n.engine.status, BLASST_OK);
}

}  // namespace
}  // namespace blasst::test
