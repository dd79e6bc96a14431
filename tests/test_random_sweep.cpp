// A seeded sweep over small random configurations: shapes, head layouts, tile geometry
// (including tiles of 1 key and blocks of 1 row), orders, splits, phases, dtypes, layouts and
// thresholds. Each one is checked in full against the fp64 reference.
#include <gtest/gtest.h>

#include <sstream>

#include "support/harness.hpp"

namespace blasst::test {
namespace {

class RandomSweep : public ::testing::TestWithParam<int> {};

TEST_P(RandomSweep, EveryConfigurationMatchesTheReference) {
  Rng rng(uint64_t(GetParam()) * 1000003u + 11u);
  const int configs = int(scaled(40, 8));
  int64_t visited = 0, skipped = 0, flips = 0;
  for (int n = 0; n < configs; ++n) {
    Shape s;
    s.batch = 1 + int(rng.below(3));
    const int hkv = 1 + int(rng.below(3));
    const int g = 1 + int(rng.below(4));
    s.hq = hkv * g;
    s.hkv = hkv;
    s.dqk = 1 + int(rng.below(40));
    s.dv = rng.uniform() < 0.5 ? s.dqk : 1 + int(rng.below(40));
    s.causal = rng.uniform() < 0.5;
    RunSpec spec;
    spec.phase = rng.uniform() < 0.3 ? BLASST_PHASE_DECODE : BLASST_PHASE_PREFILL;
    for (int b = 0; b < s.batch; ++b) {
      const int64_t lq = spec.phase == BLASST_PHASE_DECODE ? rng.below(9) : rng.below(60);
      s.lq.push_back(lq);
      s.lk.push_back(rng.below(400));
    }
    const blasst_dtype dtypes[] = {BLASST_DTYPE_FLOAT32, BLASST_DTYPE_FLOAT16, BLASST_DTYPE_BFLOAT16};
    spec.dtype = dtypes[rng.below(3)];
    spec.geometry.block_m = rng.uniform() < 0.2 ? 0 : 1 + int(rng.below(48));
    spec.geometry.block_n = rng.uniform() < 0.2 ? 0 : 1 + int(rng.below(80));
    spec.geometry.order = rng.uniform() < 0.5 ? BLASST_ORDER_ASCENDING : BLASST_ORDER_ANCHORED;
    spec.geometry.splits = rng.uniform() < 0.2 ? 0 : 1 + int(rng.below(9));
    const Layout layouts[] = {Layout::Contiguous, Layout::Padded, Layout::Ragged, Layout::Paged, Layout::Strided};
    spec.layout = layouts[rng.below(5)];
    spec.page_size = 1 + int(rng.below(40));
    spec.threads = 1 + int(rng.below(2));
    int64_t mk = 1;
    for (int64_t x : s.lk) mk = std::max(mk, x);
    spec.factor = rng.uniform() < 0.15 ? 0.0f : float(double(mk) * (0.02 + 0.9 * rng.uniform()));
    if (rng.uniform() < 0.2) {
      for (int h = 0; h < hkv; ++h) spec.per_kv_head.push_back(float(double(mk) * 1.2 * rng.uniform()));
    }
    Style style;
    style.sink = float(2.0 + 14.0 * rng.uniform());
    style.window = float(4.0 * rng.uniform());
    style.window_width = float(4.0 + 40.0 * rng.uniform());
    const ref::Problem p = make_problem(s, spec.dtype, rng.below(1 << 30), style);

    std::ostringstream what;
    what << "sweep " << GetParam() << "." << n << ": B" << s.batch << " H" << s.hq << "x" << s.hkv << " D" << s.dqk
         << "x" << s.dv << (s.causal ? " causal" : " full") << " phase " << spec.phase << " dtype " << spec.dtype
         << " geometry " << spec.geometry.block_m << "x" << spec.geometry.block_n << " order " << spec.geometry.order
         << " splits " << spec.geometry.splits << " layout " << int(spec.layout) << " page " << spec.page_size
         << " factor " << spec.factor << (spec.per_kv_head.empty() ? "" : " per-head") << " lq/lk";
    for (int b = 0; b < s.batch; ++b) what << " " << s.lq[size_t(b)] << "/" << s.lk[size_t(b)];
    const Checked c = run_and_check(p, spec, what.str());
    ASSERT_EQ(c.engine.status, BLASST_OK) << what.str();
    ASSERT_FALSE(HasFailure()) << what.str();
    visited += c.engine.info.visited;
    skipped += c.engine.info.skipped;
    flips += c.rounding_flips;
  }
  std::cout << "[ sweep ] visited " << visited << ", skipped " << skipped << ", rounding flips " << flips << "\n";
  EXPECT_GT(skipped, 0);
  EXPECT_LT(skipped, visited);
}

INSTANTIATE_TEST_SUITE_P(Seeds, RandomSweep, ::testing::Range(0, 8));

}  // namespace
}  // namespace blasst::test
