// FP8 (e4m3) operands on the CPU engine: the conversion, an FP8 KV cache beside 16/32-bit
// queries and all-FP8 inputs. The engine folds the dequantization scales into the score scale
// and the output, so a call with FP8 K/V and scale s_k must decide every tile exactly as the
// fp32 call on the same (exactly representable) values with score scale scale * s_k does.
#include <gtest/gtest.h>

#include <blasst/blasst.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "core/dtype.hpp"
#include "support/harness.hpp"

namespace {

using blasst::detail::e4m3_to_float;
using blasst::detail::float_to_e4m3;
using blasst::test::contiguous_tensor;

TEST(Fp8, E4m3CodesRoundTripAndKnownValues) {
  for (int x = 0; x < 256; ++x) {
    const float f = e4m3_to_float(uint8_t(x));
    if ((x & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(f)) << x;
      continue;
    }
    if ((x & 0x7f) == 0) {
      EXPECT_EQ(f, 0.0f) << x;
      continue;
    }
    EXPECT_EQ(float_to_e4m3(f), uint8_t(x)) << x << " = " << f;
  }
  EXPECT_EQ(e4m3_to_float(0x7e), 448.0f);
  EXPECT_EQ(e4m3_to_float(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(e4m3_to_float(0x38), 1.0f);
  EXPECT_EQ(e4m3_to_float(0xb8), -1.0f);
  EXPECT_EQ(e4m3_to_float(float_to_e4m3(1.0625f)), 1.0f);   // tie: to even
  EXPECT_EQ(e4m3_to_float(float_to_e4m3(1.1875f)), 1.25f);  // tie: to even
  EXPECT_EQ(e4m3_to_float(float_to_e4m3(464.0f)), 448.0f);  // tie at the top: to even
  EXPECT_TRUE(std::isnan(e4m3_to_float(float_to_e4m3(470.0f))));
  EXPECT_TRUE(std::isnan(e4m3_to_float(float_to_e4m3(NAN))));
}

// One contiguous problem, B entries of Lq queries over Lk keys, every operand as fp32 values.
struct Problem {
  int B = 2, HQ = 4, HKV = 2, D = 32, LQ = 96, LK = 200;
  std::vector<float> q, k, v;  // [B, L, H, D]
  explicit Problem(uint64_t seed, int lq = 96) : LQ(lq) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    q.resize(size_t(B) * LQ * HQ * D);
    k.resize(size_t(B) * LK * HKV * D);
    v.resize(k.size());
    for (auto& x : q) x = normal(rng) + 1.5f;  // a common direction makes a few keys dominate
    for (auto& x : k) x = normal(rng);
    for (auto& x : v) x = normal(rng);
    for (int b = 0; b < B; ++b)  // a sink key per entry and KV head, so that tiles get skipped
      for (int h = 0; h < HKV; ++h)
        for (int d = 0; d < D; ++d) k[((size_t(b) * LK) * HKV + h) * D + d] = 3.0f;
  }
  // The values rounded to e4m3 (bytes), as an FP8 cache stores them.
  static std::vector<uint8_t> to_fp8(const std::vector<float>& x) {
    std::vector<uint8_t> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = float_to_e4m3(x[i]);
    return out;
  }
  static std::vector<float> from_fp8(const std::vector<uint8_t>& x) {
    std::vector<float> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = e4m3_to_float(x[i]);
    return out;
  }
};

// The call's shapes and operands (contiguous [B, L, H, D]); numel counts elements of p's sizes.
blasst_args problem_args(const Problem& p, const void* q, blasst_dtype qd, const void* k, const void* v,
                         blasst_dtype kvd, void* out, blasst_dtype out_dtype) {
  blasst_args a = blasst::default_args();
  a.batch = p.B;
  a.num_q_heads = p.HQ;
  a.num_kv_heads = p.HKV;
  a.head_dim_qk = a.head_dim_v = p.D;
  a.max_seqlen_q = p.LQ;
  a.max_seqlen_k = p.LK;
  a.q = contiguous_tensor(q, qd, p.LQ, p.HQ, p.D, int64_t(p.q.size()));
  a.k = contiguous_tensor(k, kvd, p.LK, p.HKV, p.D, int64_t(p.k.size()));
  a.v = contiguous_tensor(v, kvd, p.LK, p.HKV, p.D, int64_t(p.v.size()));
  a.out = contiguous_tensor(out, out_dtype, p.LQ, p.HQ, p.D, int64_t(p.q.size()));
  return a;
}

struct Result {
  blasst_status status;
  std::vector<float> out, lse;
  std::vector<uint8_t> decisions;
  std::vector<int64_t> stats;
};

// Runs one call; q/k/v point at buffers of the given dtypes; out is fp32.
Result run(const Problem& p, blasst_phase phase, const void* q, blasst_dtype qd, const void* k, const void* v,
           blasst_dtype kvd, float scale, float factor, blasst_scales scales) {
  Result r;
  r.out.assign(size_t(p.B) * p.LQ * p.HQ * p.D, NAN);
  r.lse.assign(size_t(p.B) * p.LQ * p.HQ, NAN);
  r.decisions.assign(4096, 0xee);
  r.stats.assign(size_t(p.HQ) * 2, -1);
  blasst_args a = problem_args(p, q, qd, k, v, kvd, r.out.data(), BLASST_DTYPE_FLOAT32);
  a.lse = contiguous_tensor(r.lse.data(), BLASST_DTYPE_FLOAT32, p.LQ, p.HQ, 1, int64_t(r.lse.size()));
  a.scale = scale;
  a.causal = 1;
  a.threshold.threshold_scale_factor = factor;
  a.scales = scales;
  a.geometry = {32, 32, BLASST_ORDER_ASCENDING, 1};
  a.engine = BLASST_ENGINE_CPU;
  a.num_threads = 2;
  a.decisions = r.decisions.data();
  a.decisions_numel = int64_t(r.decisions.size());
  a.stats_per_head = r.stats.data();
  r.status = blasst::attention(phase, a, nullptr).code();
  return r;
}

// fp64 attention of the dequantized values (bottom-right causal), as [B, Lq, Hq, D].
std::vector<double> reference(const Problem& p, const std::vector<float>& q, const std::vector<float>& k,
                              const std::vector<float>& v, double scale, const std::vector<double>& kscale,
                              const std::vector<double>& vscale) {
  std::vector<double> out(q.size(), 0.0);
  const int g = p.HQ / p.HKV;
  for (int b = 0; b < p.B; ++b)
    for (int i = 0; i < p.LQ; ++i)
      for (int h = 0; h < p.HQ; ++h) {
        const int hk = h / g;
        const int visible = p.LK - p.LQ + i + 1;
        std::vector<double> s(static_cast<size_t>(visible));
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < visible; ++j) {
          double dot = 0;
          for (int d = 0; d < p.D; ++d)
            dot += double(q[((size_t(b) * p.LQ + i) * p.HQ + h) * p.D + d]) *
                   double(k[((size_t(b) * p.LK + j) * p.HKV + hk) * p.D + d]) * kscale[size_t(hk)];
          s[size_t(j)] = dot * scale;
          mx = std::max(mx, s[size_t(j)]);
        }
        for (double& x : s) sum += (x = std::exp(x - mx));
        for (int d = 0; d < p.D; ++d) {
          double acc = 0;
          for (int j = 0; j < visible; ++j)
            acc += s[size_t(j)] * double(v[((size_t(b) * p.LK + j) * p.HKV + hk) * p.D + d]) * vscale[size_t(hk)];
          out[((size_t(b) * p.LQ + i) * p.HQ + h) * p.D + d] = acc / sum;
        }
      }
  return out;
}

// An FP8 KV cache with one scale per tensor decides like fp32 K/V holding the same values with
// the K scale folded into the score scale, tile for tile; the output differs by the V scale.
TEST(Fp8, KvCacheDecidesExactlyAsTheFoldedFp32Call) {
  for (blasst_phase phase : {BLASST_PHASE_PREFILL, BLASST_PHASE_DECODE}) {
    const Problem p(11, phase == BLASST_PHASE_DECODE ? 2 : 96);
    const std::vector<uint8_t> k8 = Problem::to_fp8(p.k), v8 = Problem::to_fp8(p.v);
    const std::vector<float> kf = Problem::from_fp8(k8), vf = Problem::from_fp8(v8);
    const float ks = 0.75f, vs = 1.5f, scale = 0.2f;
    blasst_scales scales{nullptr, &ks, &vs, 0};
    const Result fp8 = run(p, phase, p.q.data(), BLASST_DTYPE_FLOAT32, k8.data(), v8.data(),
                           BLASST_DTYPE_FLOAT8_E4M3, scale, 20.0f, scales);
    const Result folded = run(p, phase, p.q.data(), BLASST_DTYPE_FLOAT32, kf.data(), vf.data(),
                              BLASST_DTYPE_FLOAT32, float(double(scale) * ks), 20.0f, blasst_scales{});
    ASSERT_EQ(fp8.status, BLASST_OK) << blasst_last_error();
    ASSERT_EQ(folded.status, BLASST_OK) << blasst_last_error();
    EXPECT_EQ(fp8.decisions, folded.decisions) << "phase " << phase;
    EXPECT_EQ(fp8.stats, folded.stats);
    int64_t skipped = 0;
    for (size_t h = 0; h < fp8.stats.size() / 2; ++h) skipped += fp8.stats[2 * h + 1];
    EXPECT_GT(skipped, 0) << "the sink makes tiles skippable at factor 20";
    EXPECT_EQ(fp8.lse, folded.lse);
    for (size_t i = 0; i < fp8.out.size(); ++i)
      ASSERT_NEAR(fp8.out[i], folded.out[i] * vs, 1e-6f * (1.0f + std::fabs(folded.out[i] * vs))) << i;
  }
}

// Per-KV-head scales, dense: the fp64 attention of the dequantized values.
TEST(Fp8, PerKvHeadScalesMatchTheFp64ReferenceOfTheDequantizedValues) {
  const Problem p(12);
  const std::vector<uint8_t> k8 = Problem::to_fp8(p.k), v8 = Problem::to_fp8(p.v);
  const std::vector<float> ks{0.5f, 2.0f}, vs{3.0f, 0.25f};
  const Result r = run(p, BLASST_PHASE_PREFILL, p.q.data(), BLASST_DTYPE_FLOAT32, k8.data(), v8.data(),
                       BLASST_DTYPE_FLOAT8_E4M3, 0.0f, 0.0f, blasst_scales{nullptr, ks.data(), vs.data(), 1});
  ASSERT_EQ(r.status, BLASST_OK) << blasst_last_error();
  const std::vector<double> ref = reference(p, p.q, Problem::from_fp8(k8), Problem::from_fp8(v8),
                                            1.0 / std::sqrt(double(p.D)), {0.5, 2.0}, {3.0, 0.25});
  double err = 0, norm = 0;
  for (size_t i = 0; i < ref.size(); ++i) err = std::max(err, std::fabs(r.out[i] - ref[i])), norm = std::max(norm, std::fabs(ref[i]));
  EXPECT_LT(err, 2e-6 * norm);
}

// All three operands in FP8, with a bf16 output: the fp64 reference within bf16 rounding.
TEST(Fp8, AllFp8InputsWithBf16Output) {
  const Problem p(13);
  const std::vector<uint8_t> q8 = Problem::to_fp8(p.q), k8 = Problem::to_fp8(p.k), v8 = Problem::to_fp8(p.v);
  const float qs = 0.125f, ks = 4.0f, vs = 0.5f;
  std::vector<uint16_t> out(p.q.size(), 0x7fc0);
  blasst_args a = problem_args(p, q8.data(), BLASST_DTYPE_FLOAT8_E4M3, k8.data(), v8.data(), BLASST_DTYPE_FLOAT8_E4M3,
                               out.data(), BLASST_DTYPE_BFLOAT16);
  a.causal = 1;
  a.scales = {&qs, &ks, &vs, 0};
  a.engine = BLASST_ENGINE_CPU;
  ASSERT_EQ(blasst::prefill(a, nullptr).code(), BLASST_OK) << blasst_last_error();
  std::vector<float> qf = Problem::from_fp8(q8);
  for (float& x : qf) x *= qs;  // exact: a power of two
  const std::vector<double> ref = reference(p, qf, Problem::from_fp8(k8), Problem::from_fp8(v8),
                                            1.0 / std::sqrt(double(p.D)), {ks, ks}, {vs, vs});
  for (size_t i = 0; i < ref.size(); ++i)
    ASSERT_NEAR(blasst::detail::bf16_to_float(out[i]), ref[i], 8e-3 * (1.0 + std::fabs(ref[i]))) << i;
}

}  // namespace
