// Construction: every score is a sum of named terms, built as dot products over disjoint
// groups of dimensions of q and k (each D-vector is split into sink | RoPE pairs | topic |
// content dims). With q~ . k~ = the intended logit, q = q~ * D^(1/4) and k = k~ * D^(1/4)
// give scale * q . k = q~ . k~ for the default scale 1/sqrt(D).
#include "common/workload.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <numbers>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>

namespace blasst::tools {

// ---------------------------------------------------------------------------------------
// Random numbers: mt19937_64 is specified bit for bit by the standard; the transforms below
// are ours, so the sequence does not depend on the standard library.
Rng::Rng(uint64_t seed) : engine_(seed) {}
uint64_t Rng::next() { return engine_(); }
double Rng::uniform() { return double(next() >> 11) * 0x1.0p-53; }
int64_t Rng::below(int64_t n) { return n <= 1 ? 0 : int64_t(uniform() * double(n)) % n; }
double Rng::normal() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  double u1 = uniform();
  while (u1 <= 0.0) u1 = uniform();
  const double u2 = uniform();
  const double r = std::sqrt(-2.0 * std::log(u1));
  spare_ = r * std::sin(2.0 * std::numbers::pi * u2);
  has_spare_ = true;
  return r * std::cos(2.0 * std::numbers::pi * u2);
}

namespace {

// Independent stream per (purpose, entry, head).
uint64_t stream_seed(uint64_t seed, uint64_t tag, int64_t b, int64_t h) {
  uint64_t x = seed ^ (tag * 0x9e3779b97f4a7c15ull) ^ (uint64_t(b) * 0xbf58476d1ce4e5b9ull) ^
               (uint64_t(h) * 0x94d049bb133111ebull);
  // splitmix64 finalizer
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
enum Tag : uint64_t { kSegments = 1, kHeads, kKeys, kValues, kQueries, kTopics, kRefs };

// Split of the head dimension into the groups of dims each score term uses.
struct DimLayout {
  int64_t sink = -1;  // one dim
  int64_t rope = 0, pairs = 0;
  int64_t topic = 0, ntopic = 0;
  int64_t content = 0, ncontent = 0;
  explicit DimLayout(int64_t d) {
    if (d < 4) {
      sink = 0;
      content = 1;
      ncontent = d - 1;
      return;
    }
    sink = 0;
    rope = 1;
    pairs = d / 4;
    topic = rope + 2 * pairs;
    ntopic = d / 8;
    content = topic + ntopic;
    ncontent = d - content;
  }
};

// Per query head: inverse temperature, local-window width, sink strength.
struct HeadParams {
  double sharpness, width, sink;
};

std::vector<HeadParams> head_params(const WorkloadSpec& s) {
  Rng rng(stream_seed(s.seed, kHeads, 0, 0));
  std::vector<int64_t> perm(size_t(s.hq));
  for (int64_t i = 0; i < s.hq; ++i) perm[size_t(i)] = i;
  for (int64_t i = s.hq - 1; i > 0; --i) std::swap(perm[size_t(i)], perm[size_t(rng.below(i + 1))]);
  std::vector<HeadParams> hp(size_t(s.hq));
  const double lo = std::log(s.sharpness_min), hi = std::log(s.sharpness_max);
  for (int64_t h = 0; h < s.hq; ++h) {
    const double t = s.hq > 1 ? double(perm[size_t(h)]) / double(s.hq - 1) : 0.5;
    hp[size_t(h)].sharpness = std::exp(lo + (hi - lo) * t);
    hp[size_t(h)].width = std::exp(std::log(32.0) + (std::log(512.0) - std::log(32.0)) * rng.uniform());
    hp[size_t(h)].sink = s.sink * (0.6 + 0.8 * rng.uniform());
  }
  return hp;
}

// Segment index of every key position of one entry; segments are 64..1024 tokens long.
std::vector<int32_t> segments(const WorkloadSpec& s, int64_t b, int32_t* count) {
  Rng rng(stream_seed(s.seed, kSegments, b, 0));
  std::vector<int32_t> seg(size_t(s.lk));
  int32_t id = 0;
  for (int64_t j = 0; j < s.lk;) {
    const auto len = int64_t(64.0 * std::exp2(4.0 * rng.uniform()));
    for (int64_t e = std::min(s.lk, j + len); j < e; ++j) seg[size_t(j)] = id;
    ++id;
  }
  *count = std::max(id, 1);
  return seg;
}

template <class Fn>
void parallel_for(int64_t n, Fn&& fn) {
  const int64_t workers = std::clamp<int64_t>(int64_t(std::thread::hardware_concurrency()), 1, n);
  std::vector<std::thread> pool;
  for (int64_t w = 0; w < workers; ++w)
    pool.emplace_back([&, w] {
      for (int64_t i = w; i < n; i += workers) fn(i);
    });
  for (auto& t : pool) t.join();
}

}  // namespace

Workload generate_workload(const WorkloadSpec& s) {
  if (s.batch < 1 || s.lq < 0 || s.lk < 1 || s.hq < 1 || s.hkv < 1 || s.d < 1 || s.dv < 1)
    throw std::invalid_argument("workload: sizes must be positive (lq may be 0)");
  if (s.hq % s.hkv != 0) throw std::invalid_argument("workload: hq must be a multiple of hkv");
  // Element counts with overflow checks; 2^33 fp32 elements (32 GiB) per tensor at most.
  for (auto [name, len, heads, dim] : {std::tuple{"q", s.lq, s.hq, s.d}, std::tuple{"k", s.lk, s.hkv, s.d},
                                       std::tuple{"v", s.lk, s.hkv, s.dv}}) {
    int64_t n = 0;
    if (__builtin_mul_overflow(s.batch, len, &n) || __builtin_mul_overflow(n, heads, &n) ||
        __builtin_mul_overflow(n, dim, &n) || n > (int64_t(1) << 33))
      throw std::invalid_argument(std::string("workload: ") + name + " would exceed 2^33 elements");
  }
  if (s.lq > INT32_MAX || s.lk > INT32_MAX) throw std::invalid_argument("workload: sequence lengths must fit in int32");
  if (!(s.sharpness_min > 0 && s.sharpness_max >= s.sharpness_min))
    throw std::invalid_argument("workload: need 0 < sharpness_min <= sharpness_max");

  Workload w;
  w.spec = s;
  w.q.assign(size_t(s.batch * s.lq * s.hq * s.d), 0.0f);
  w.k.assign(size_t(s.batch * s.lk * s.hkv * s.d), 0.0f);
  w.v.assign(size_t(s.batch * s.lk * s.hkv * s.dv), 0.0f);

  const DimLayout dl(s.d);
  const int64_t group = s.hq / s.hkv;
  const double out_scale = std::pow(double(s.d), 0.25);
  const std::vector<HeadParams> hp = head_params(s);

  // RoPE-like frequencies, log-spaced from pi/2 (period 4) down to pi/(2 Lk).
  std::vector<double> omega(size_t(dl.pairs));
  for (int64_t f = 0; f < dl.pairs; ++f) {
    const double t = dl.pairs > 1 ? double(f) / double(dl.pairs - 1) : 0.5;
    omega[size_t(f)] = 0.5 * std::numbers::pi * std::pow(double(std::max<int64_t>(s.lk, 16)), -t);
  }
  const double pair_scale = dl.pairs ? std::sqrt(s.local / double(dl.pairs)) : 0.0;
  const double content_amp = dl.ncontent ? std::sqrt(s.noise) / std::pow(double(dl.ncontent), 0.25) : 0.0;
  const double topic_amp = std::sqrt(s.topic);

  // Per entry: segments and their topic vectors (per KV head, unit norm).
  std::vector<std::vector<int32_t>> seg(size_t(s.batch));
  std::vector<int32_t> nseg(size_t(s.batch));
  std::vector<std::vector<float>> topics(size_t(s.batch * s.hkv));  // [nseg, ntopic]
  for (int64_t b = 0; b < s.batch; ++b) {
    seg[size_t(b)] = segments(s, b, &nseg[size_t(b)]);
    for (int64_t g = 0; g < s.hkv; ++g) {
      Rng rng(stream_seed(s.seed, kTopics, b, g));
      auto& t = topics[size_t(b * s.hkv + g)];
      t.resize(size_t(nseg[size_t(b)] * dl.ntopic));
      for (int32_t i = 0; i < nseg[size_t(b)]; ++i) {
        double norm = 0.0;
        for (int64_t e = 0; e < dl.ntopic; ++e) {
          const double x = rng.normal();
          t[size_t(i * dl.ntopic + e)] = float(x);
          norm += x * x;
        }
        norm = std::sqrt(std::max(norm, 1e-30));
        for (int64_t e = 0; e < dl.ntopic; ++e) t[size_t(i * dl.ntopic + e)] = float(t[size_t(i * dl.ntopic + e)] / norm);
      }
    }
  }

  // Keys and values, per (entry, KV head).
  parallel_for(s.batch * s.hkv, [&](int64_t item) {
    const int64_t b = item / s.hkv, g = item % s.hkv;
    Rng rk(stream_seed(s.seed, kKeys, b, g));
    Rng rv(stream_seed(s.seed, kValues, b, g));
    const auto& tp = topics[size_t(item)];
    std::vector<double> mean(size_t(s.dv));
    for (auto& m : mean) m = 0.5 * rv.normal();
    for (int64_t j = 0; j < s.lk; ++j) {
      float* k = &w.k[size_t(((b * s.lk + j) * s.hkv + g) * s.d)];
      // Key 0 is the sink; every other key carries a small negative sink component, so a
      // head with a strong sink also pushes the rest down (sink heads are sharp heads).
      k[dl.sink] = float(std::sqrt(s.sink) * (j == 0 ? 1.0 : -0.25 + 0.03 * rk.normal()));
      for (int64_t f = 0; f < dl.pairs; ++f) {
        const double a = omega[size_t(f)] * double(j);
        k[dl.rope + 2 * f] = float(pair_scale * std::cos(a));
        k[dl.rope + 2 * f + 1] = float(pair_scale * std::sin(a));
      }
      const float* t = tp.data() + size_t(seg[size_t(b)][size_t(j)] * dl.ntopic);
      for (int64_t e = 0; e < dl.ntopic; ++e) k[dl.topic + e] = float(topic_amp * (t[e] + 0.15 * rk.normal() / std::sqrt(double(dl.ntopic))));
      // Heavy-tailed key norms: log-normal spread, and rare outlier keys.
      double norm = std::exp(0.25 * rk.normal());
      if (rk.uniform() < 0.002) norm *= 2.0;
      for (int64_t e = 0; e < dl.ncontent; ++e) k[dl.content + e] = float(norm * content_amp * rk.normal());

      float* v = &w.v[size_t(((b * s.lk + j) * s.hkv + g) * s.dv)];
      const double vscale = j == 0 ? 0.3 : 1.0;  // sinks carry little value
      for (int64_t e = 0; e < s.dv; ++e) v[e] = float(vscale * (mean[size_t(e)] + rv.normal()));
    }
  });

  // Queries, per (entry, query head); read the finished keys for retrieval.
  parallel_for(s.batch * s.hq, [&](int64_t item) {
    const int64_t b = item / s.hq, h = item % s.hq, g = h / group;
    const HeadParams& p = hp[size_t(h)];
    Rng rq(stream_seed(s.seed, kQueries, b, h));
    Rng rr(stream_seed(s.seed, kRefs, b, h));
    const auto& tp = topics[size_t(b * s.hkv + g)];
    const int32_t ns = nseg[size_t(b)];
    std::vector<int32_t> ref(static_cast<size_t>(ns));
    for (int32_t i = 0; i < ns; ++i) ref[size_t(i)] = ns > 1 ? int32_t((i + 1 + rr.below(ns - 1)) % ns) : 0;

    // Window weights: frequencies above ~pi/width carry the weight (narrow heads use only
    // fast rotations); normalized so that the window peaks at `local`.
    std::vector<double> wf(size_t(dl.pairs));
    double wsum = 0.0;
    for (int64_t f = 0; f < dl.pairs; ++f) {
      const double x = std::numbers::pi / (omega[size_t(f)] * p.width);
      // the floor keeps every head's tail incoherent (many frequencies) and slowly decaying
      wf[size_t(f)] = 0.25 + 1.0 / (1.0 + x * x);
      wsum += wf[size_t(f)];
    }
    for (auto& x : wf) x = wsum > 0 ? x / wsum * double(dl.pairs) : 0.0;

    for (int64_t i = 0; i < s.lq; ++i) {
      const int64_t pos = s.lk - s.lq + i;  // absolute position (bottom-right aligned)
      const int64_t kpos = std::clamp<int64_t>(pos, 0, s.lk - 1);
      float* q = &w.q[size_t(((b * s.lq + i) * s.hq + h) * s.d)];
      const double tau = p.sharpness;
      q[dl.sink] = float(tau * p.sink / std::sqrt(s.sink));
      for (int64_t f = 0; f < dl.pairs; ++f) {
        const double a = omega[size_t(f)] * double(pos);
        const double amp = tau * wf[size_t(f)] * pair_scale;
        q[dl.rope + 2 * f] = float(amp * std::cos(a));
        q[dl.rope + 2 * f + 1] = float(amp * std::sin(a));
      }
      const int32_t own = seg[size_t(b)][size_t(kpos)];
      const float* t_own = tp.data() + size_t(own * dl.ntopic);
      const float* t_ref = tp.data() + size_t(ref[size_t(own)] * dl.ntopic);
      for (int64_t e = 0; e < dl.ntopic; ++e) q[dl.topic + e] = float(tau * topic_amp * (t_own[e] + 0.8 * t_ref[e]));
      for (int64_t e = 0; e < dl.ncontent; ++e) q[dl.content + e] = float(tau * content_amp * rq.normal());

      // Retrieval: about one query in 256 (at least half of the decode rows) matches one
      // earlier key exactly, through the content dims.
      const double chance = std::max(1.0 / 256.0, s.lq <= 4 ? 0.5 : 0.0);
      if (dl.ncontent > 0 && pos > 1 && rr.uniform() < chance) {
        const int64_t j = 1 + rr.below(std::min(pos, s.lk - 1));
        const float* k = &w.k[size_t(((b * s.lk + j) * s.hkv + g) * s.d)];
        double kk = 0.0, qk = 0.0;
        for (int64_t e = 0; e < dl.ncontent; ++e) {
          kk += double(k[dl.content + e]) * k[dl.content + e];
          qk += double(q[dl.content + e]) * k[dl.content + e];
        }
        // add c * k_content so that the content term for key j becomes tau * retrieval
        const double c = (tau * s.retrieval - qk) / std::max(kk, 1e-30);
        for (int64_t e = 0; e < dl.ncontent; ++e) q[dl.content + e] = float(q[dl.content + e] + c * k[dl.content + e]);
      }
    }
  });

  for (auto* buf : {&w.q, &w.k})
    for (float& x : *buf) x = float(x * out_scale);
  return w;
}

}  // namespace blasst::tools
