#include "support/harness.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <sstream>

#include "core/dtype.hpp"

namespace blasst::test {

blasst_tensor contiguous_tensor(const void* data, blasst_dtype dtype, int64_t tokens, int64_t heads, int64_t dim,
                                int64_t numel) {
  blasst_tensor t{};
  t.data = const_cast<void*>(data);
  t.dtype = dtype;
  t.head_stride = dim;
  t.token_stride = heads * dim;
  t.batch_stride = tokens * heads * dim;
  t.numel = numel;
  return t;
}

namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr uint32_t kSentinel32 = 0x7fa5a5a5u;  // a signalling NaN no arithmetic produces
constexpr uint16_t kSentinelF16 = 0x7d5au;
constexpr uint16_t kSentinelBF16 = 0x7f85u;

uint32_t sentinel(blasst_dtype d) {
  switch (d) {
    case BLASST_DTYPE_FLOAT16: return kSentinelF16;
    case BLASST_DTYPE_BFLOAT16: return kSentinelBF16;
    default: return kSentinel32;
  }
}

// A host buffer of one dtype with raw-bit access.
class Buffer {
 public:
  Buffer(blasst_dtype dtype, int64_t numel) : dtype_(dtype), numel_(std::max<int64_t>(numel, 1)) {
    if (dtype == BLASST_DTYPE_FLOAT32) w32_.assign(size_t(numel_), 0);
    else w16_.assign(size_t(numel_), 0);
  }
  void* data() { return dtype_ == BLASST_DTYPE_FLOAT32 ? static_cast<void*>(w32_.data()) : w16_.data(); }
  int64_t numel() const { return numel_; }
  uint32_t bits(int64_t i) const { return dtype_ == BLASST_DTYPE_FLOAT32 ? w32_[size_t(i)] : w16_[size_t(i)]; }
  void set_bits(int64_t i, uint32_t b) {
    if (dtype_ == BLASST_DTYPE_FLOAT32) w32_[size_t(i)] = b;
    else w16_[size_t(i)] = uint16_t(b);
  }
  void fill_bits(uint32_t b) {
    for (int64_t i = 0; i < numel_; ++i) set_bits(i, b);
  }
  void set(int64_t i, float x) { detail::store_element(data(), dtype_, i, x); }
  float get(int64_t i) { return detail::load_element(data(), dtype_, i); }

 private:
  blasst_dtype dtype_;
  int64_t numel_;
  std::vector<uint32_t> w32_;
  std::vector<uint16_t> w16_;
};

struct Strides {
  int64_t batch = 0, token = 0, head = 0, numel = 0;
};

int64_t max_of(const std::vector<int64_t>& v) {
  int64_t m = 0;
  for (int64_t x : v) m = std::max(m, x);
  return m;
}

std::vector<int32_t> prefix(const std::vector<int64_t>& lens) {
  std::vector<int32_t> cu(lens.size() + 1, 0);
  for (size_t b = 0; b < lens.size(); ++b) cu[b + 1] = cu[b] + int32_t(lens[b]);
  return cu;
}

std::vector<int32_t> to32(const std::vector<int64_t>& v) {
  std::vector<int32_t> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = int32_t(v[i]);
  return r;
}

// Strides of a [batch, tokens, heads, dim] tensor; strided layouts leave gaps everywhere.
Strides strides_for(bool strided, bool ragged, int batch, int64_t tokens, int heads, int dim) {
  Strides s;
  s.head = strided ? dim + (dim == 1 ? 1 : 3) : dim;
  s.token = heads * s.head + (strided ? 5 : 0);
  if (ragged) {
    s.batch = 0;
    s.numel = tokens * s.token;
  } else {
    s.batch = tokens * s.token + (strided ? 7 : 0);
    s.numel = batch * s.batch;
  }
  s.numel = std::max<int64_t>(s.numel, 1);
  return s;
}

blasst_tensor tensor_of(Buffer& buf, blasst_dtype dtype, const Strides& s) {
  blasst_tensor t{};
  t.data = buf.data();
  t.dtype = dtype;
  t.batch_stride = s.batch;
  t.token_stride = s.token;
  t.head_stride = s.head;
  t.numel = buf.numel();
  return t;
}

}  // namespace

bool small_scale() {
  const char* s = std::getenv("BLASST_TEST_SCALE");
  return s && std::string(s) == "small";
}
int64_t scaled(int64_t n, int64_t small_n) { return small_scale() ? small_n : n; }

double Rng::normal() {
  double u1 = uniform();
  while (u1 <= 1e-300) u1 = uniform();
  const double u2 = uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * kPi * u2);
}

Shape shape(int64_t lq, int64_t lk, int hq, int hkv, int dqk, int dv, bool causal) {
  Shape s;
  s.batch = 1;
  s.hq = hq;
  s.hkv = hkv;
  s.dqk = dqk;
  s.dv = dv;
  s.causal = causal;
  s.lq = {lq};
  s.lk = {lk};
  return s;
}

ref::Problem make_problem(const Shape& s, blasst_dtype dtype, uint64_t seed, const Style& style) {
  ref::Problem p;
  p.batch = s.batch;
  p.hq = s.hq;
  p.hkv = s.hkv;
  p.dqk = s.dqk;
  p.dv = s.dv;
  p.causal = s.causal;
  p.lq = s.lq;
  p.lk = s.lk;
  p.q.resize(size_t(s.batch));
  p.k.resize(size_t(s.batch));
  p.v.resize(size_t(s.batch));
  Rng rng(seed * 0x9E3779B97F4A7C15ull + 17);
  const double D = s.dqk;
  const double sqrtD = std::sqrt(D);
  // Scores are q.k / sqrt(D): the sink adds alpha*beta*sqrt(D) to key 0 (alpha = 1, u in {+-1}^D),
  // the window adds gamma^2 * sqrt(D) / 2 near the diagonal (positional cosines).
  const double beta = style.sink / sqrtD;
  const double gamma = std::sqrt(2.0 * style.window / sqrtD);
  auto nonzero = [](float x) { return x == 0.0f ? 0.001953125f : x; };
  for (int b = 0; b < s.batch; ++b) {
    const int64_t lq = s.lq[size_t(b)], lk = s.lk[size_t(b)];
    p.q[size_t(b)].resize(size_t(lq) * s.hq * s.dqk);
    p.k[size_t(b)].resize(size_t(lk) * s.hkv * s.dqk);
    p.v[size_t(b)].resize(size_t(lk) * s.hkv * s.dv);
    for (int kh = 0; kh < s.hkv; ++kh) {
      std::vector<double> u(size_t(s.dqk)), w(size_t(s.dqk)), phi(size_t(s.dqk));
      for (int d = 0; d < s.dqk; ++d) {
        u[size_t(d)] = rng.uniform() < 0.5 ? -1.0 : 1.0;
        w[size_t(d)] = rng.uniform() * kPi / style.window_width;
        phi[size_t(d)] = rng.uniform() * 2.0 * kPi;
      }
      auto pos = [&](int64_t t, int d) { return std::cos(w[size_t(d)] * double(t) + phi[size_t(d)]); };
      for (int64_t j = 0; j < lk; ++j) {
        const double heavy = rng.uniform() < style.tail ? 2.5 + 2.0 * rng.uniform() : 1.0;
        for (int d = 0; d < s.dqk; ++d) {
          double x = rng.normal() * heavy + gamma * pos(j, d);
          if (j == 0) x += beta * u[size_t(d)];
          p.k[size_t(b)][(size_t(j) * s.hkv + kh) * s.dqk + d] = nonzero(ref::round_to(dtype, float(x)));
        }
        const double vheavy = rng.uniform() < style.tail ? 4.0 : 1.0;
        for (int d = 0; d < s.dv; ++d)
          p.v[size_t(b)][(size_t(j) * s.hkv + kh) * s.dv + d] =
              nonzero(ref::round_to(dtype, float(rng.normal() * vheavy)));
      }
      for (int g = 0; g < s.hq / s.hkv; ++g) {
        const int h = kh * (s.hq / s.hkv) + g;
        for (int64_t i = 0; i < lq; ++i) {
          const int64_t position = lk - lq + i;
          for (int d = 0; d < s.dqk; ++d) {
            const double x = rng.normal() * style.noise + u[size_t(d)] + gamma * pos(position, d);
            p.q[size_t(b)][(size_t(i) * s.hq + h) * s.dqk + d] = nonzero(ref::round_to(dtype, float(x)));
          }
        }
      }
    }
  }
  return p;
}

ref::Geometry ref_geometry(const ref::Problem& p, const RunSpec& spec) {
  ref::Geometry g;
  g.phase = spec.phase;
  // decode: block_m 0 (the default) is one decision group per KV head
  g.block_m = spec.geometry.block_m || spec.phase == BLASST_PHASE_DECODE ? spec.geometry.block_m : 128;
  g.block_n = spec.geometry.block_n ? spec.geometry.block_n : 128;
  g.order = spec.geometry.order;
  g.splits = spec.geometry.splits ? spec.geometry.splits : 1;
  g.max_seqlen_q = spec.max_seqlen_q >= 0 ? spec.max_seqlen_q : max_of(p.lq);
  g.max_seqlen_k = spec.max_seqlen_k >= 0 ? spec.max_seqlen_k : max_of(p.lk);
  return g;
}

ref::Threshold ref_threshold(const RunSpec& spec) {
  ref::Threshold t;
  t.factor = spec.factor;
  t.per_kv_head = spec.per_kv_head;
  t.per_request = spec.per_request;
  return t;
}

EngineResult run_engine(const ref::Problem& p, const RunSpec& spec) {
  EngineResult r;
  r.geometry = ref_geometry(p, spec);
  const int64_t maxq = r.geometry.max_seqlen_q, maxk = r.geometry.max_seqlen_k;
  const blasst_dtype dt = spec.dtype;
  const bool strided = spec.layout == Layout::Strided;
  const bool ragged = spec.layout == Layout::Ragged;
  const bool paged = spec.layout == Layout::Paged;
  const bool same_q = std::all_of(p.lq.begin(), p.lq.end(), [&](int64_t x) { return x == maxq; });
  const bool same_k = std::all_of(p.lk.begin(), p.lk.end(), [&](int64_t x) { return x == maxk; });

  blasst_args a;
  blasst_args_init(&a);
  a.batch = p.batch;
  a.num_q_heads = p.hq;
  a.num_kv_heads = p.hkv;
  a.head_dim_qk = p.dqk;
  a.head_dim_v = p.dv;
  a.max_seqlen_q = int32_t(maxq);
  a.max_seqlen_k = int32_t(maxk);
  a.scale = p.scale;
  a.causal = p.causal ? 1 : 0;
  a.engine = BLASST_ENGINE_CPU;
  a.num_threads = spec.threads;
  a.geometry = spec.geometry;
  a.threshold.threshold_scale_factor = spec.factor;
  a.threshold.per_kv_head_factor = spec.per_kv_head.empty() ? nullptr : spec.per_kv_head.data();
  a.threshold.per_request_factor = spec.per_request.empty() ? nullptr : spec.per_request.data();

  // Length arrays.
  const std::vector<int32_t> cu_q = prefix(p.lq), cu_k = prefix(p.lk);
  const std::vector<int32_t> len_q = to32(p.lq), len_k = to32(p.lk);
  if (ragged) {
    a.cu_seqlens_q = cu_q.data();
    a.cu_seqlens_k = cu_k.data();
  } else {
    if (spec.layout == Layout::Padded || !same_q) a.seqlens_q = len_q.data();
    if (spec.layout == Layout::Padded || paged || !same_k) a.seqlens_k = len_k.data();
  }

  // Q side.
  const int64_t q_tokens = ragged ? cu_q.back() : maxq;
  const Strides sq = strides_for(strided, ragged, p.batch, q_tokens, p.hq, p.dqk);
  const Strides so = strides_for(strided, ragged, p.batch, q_tokens, p.hq, p.dv);
  const Strides sl = strides_for(strided, ragged, p.batch, q_tokens, p.hq, 1);
  auto q_off = [&](const Strides& s, int b, int64_t i, int h) {
    return ragged ? (cu_q[size_t(b)] + i) * s.token + h * s.head : b * s.batch + i * s.token + h * s.head;
  };

  // K/V side.
  Strides sk, sv;
  std::vector<int32_t> table;
  std::vector<int32_t> page_of;  // physical page of (entry, logical page), flattened
  int64_t num_pages = 0, table_stride = 0;
  const int64_t ps = spec.page_size;
  if (paged) {
    table_stride = (maxk + ps - 1) / ps + 1;
    for (int b = 0; b < p.batch; ++b) num_pages += (p.lk[size_t(b)] + ps - 1) / ps;
    num_pages += 2;  // pages no entry uses
    std::vector<int32_t> order(static_cast<size_t>(num_pages));
    std::iota(order.begin(), order.end(), 0);
    if (spec.shuffle_pages) {
      Rng rng(uint64_t(num_pages) * 7919u + 3);
      std::shuffle(order.begin(), order.end(), rng.engine());
    }
    table.assign(size_t(p.batch * table_stride), -1);  // entries past an entry's pages stay invalid
    size_t next = 0;
    for (int b = 0; b < p.batch; ++b)
      for (int64_t lp = 0; lp < (p.lk[size_t(b)] + ps - 1) / ps; ++lp)
        table[size_t(b * table_stride + lp)] = order[next++];
    sk.head = p.dqk;
    sk.token = p.hkv * sk.head;
    sk.batch = ps * sk.token;
    sk.numel = num_pages * sk.batch;
    sv.head = p.dv;
    sv.token = p.hkv * sv.head;
    sv.batch = ps * sv.token;
    sv.numel = num_pages * sv.batch;
    a.block_table = table.data();
    a.block_table_stride = int32_t(table_stride);
    a.page_size = int32_t(ps);
    a.num_pages = int32_t(num_pages);
  } else {
    const int64_t k_tokens = ragged ? cu_k.back() : maxk;
    sk = strides_for(strided, ragged, p.batch, k_tokens, p.hkv, p.dqk);
    sv = strides_for(strided, ragged, p.batch, k_tokens, p.hkv, p.dv);
  }
  auto kv_off = [&](const Strides& s, int b, int64_t j, int h) -> int64_t {
    if (paged) return table[size_t(b * table_stride + j / ps)] * s.batch + (j % ps) * s.token + h * s.head;
    return ragged ? (cu_k[size_t(b)] + j) * s.token + h * s.head : b * s.batch + j * s.token + h * s.head;
  };

  // Inputs: everything outside the views is NaN, so reading it would show.
  const uint32_t nan_bits = dt == BLASST_DTYPE_FLOAT32 ? 0x7fc00000u : (dt == BLASST_DTYPE_FLOAT16 ? 0x7e00u : 0x7fc0u);
  Buffer qb(dt, sq.numel), kb(dt, sk.numel), vb(dt, sv.numel);
  qb.fill_bits(nan_bits);
  kb.fill_bits(nan_bits);
  vb.fill_bits(nan_bits);
  for (int b = 0; b < p.batch; ++b) {
    for (int64_t i = 0; i < p.lq[size_t(b)]; ++i)
      for (int h = 0; h < p.hq; ++h)
        for (int d = 0; d < p.dqk; ++d) qb.set(q_off(sq, b, i, h) + d, p.qv(b, i, h, d));
    for (int64_t j = 0; j < p.lk[size_t(b)]; ++j)
      for (int h = 0; h < p.hkv; ++h) {
        for (int d = 0; d < p.dqk; ++d) kb.set(kv_off(sk, b, j, h) + d, p.kv(b, j, h, d));
        for (int d = 0; d < p.dv; ++d) vb.set(kv_off(sv, b, j, h) + d, p.vv(b, j, h, d));
      }
  }
  Buffer ob(dt, so.numel), lb(BLASST_DTYPE_FLOAT32, sl.numel);
  ob.fill_bits(sentinel(dt));
  lb.fill_bits(kSentinel32);
  a.q = tensor_of(qb, dt, sq);
  a.k = tensor_of(kb, dt, sk);
  a.v = tensor_of(vb, dt, sv);
  a.out = tensor_of(ob, dt, so);
  if (spec.want_lse) a.lse = tensor_of(lb, BLASST_DTYPE_FLOAT32, sl);

  // Statistics outputs, with poisoned guard entries after them.
  const int heads = spec.phase == BLASST_PHASE_DECODE ? p.hkv : p.hq;
  const int64_t slots = int64_t(p.batch) * r.geometry.groups_per_entry(p.hq, p.hkv) * r.geometry.tiles();
  std::vector<int64_t> stats(size_t(heads) * 2 + 2, -12345);
  std::vector<uint8_t> dec(size_t(slots) + 16, 0xEE);
  if (spec.want_stats) a.stats_per_head = stats.data();
  if (spec.want_decisions) {
    a.decisions = dec.data();
    a.decisions_numel = slots;
  }

  blasst_run_info info;
  blasst_run_info_init(&info);
  r.status = spec.phase == BLASST_PHASE_DECODE ? blasst_decode(&a, &info) : blasst_prefill(&a, &info);
  r.message = blasst_last_error();
  r.info = info;
  if (r.status != BLASST_OK) return r;

  // Outputs: every element of the views written, nothing else touched.
  std::vector<uint8_t> in_view_o(size_t(ob.numel()), 0), in_view_l(size_t(lb.numel()), 0);
  r.out.o.resize(size_t(p.batch));
  r.out.lse.resize(size_t(p.batch));
  r.o_bits.resize(size_t(p.batch));
  r.lse_bits.resize(size_t(p.batch));
  for (int b = 0; b < p.batch; ++b) {
    const size_t rows = size_t(p.lq[size_t(b)]) * size_t(p.hq);
    r.out.o[size_t(b)].resize(rows * size_t(p.dv));
    r.o_bits[size_t(b)].resize(rows * size_t(p.dv));
    r.out.lse[size_t(b)].resize(rows);
    r.lse_bits[size_t(b)].resize(rows);
    for (int64_t i = 0; i < p.lq[size_t(b)]; ++i)
      for (int h = 0; h < p.hq; ++h) {
        const size_t row = size_t(i) * size_t(p.hq) + size_t(h);
        for (int d = 0; d < p.dv; ++d) {
          const int64_t off = q_off(so, b, i, h) + d;
          in_view_o[size_t(off)] = 1;
          const uint32_t bits = ob.bits(off);
          if (bits == sentinel(dt)) ++r.unwritten;
          r.o_bits[size_t(b)][row * size_t(p.dv) + size_t(d)] = bits;
          r.out.o[size_t(b)][row * size_t(p.dv) + size_t(d)] = ob.get(off);
        }
        if (spec.want_lse) {
          const int64_t off = q_off(sl, b, i, h);
          in_view_l[size_t(off)] = 1;
          const uint32_t bits = lb.bits(off);
          if (bits == kSentinel32) ++r.unwritten;
          r.lse_bits[size_t(b)][row] = bits;
          r.out.lse[size_t(b)][row] = lb.get(off);
        }
      }
  }
  for (int64_t e = 0; e < ob.numel(); ++e)
    if (!in_view_o[size_t(e)] && ob.bits(e) != sentinel(dt)) ++r.stray_writes;
  for (int64_t e = 0; e < lb.numel(); ++e)
    if (!in_view_l[size_t(e)] && lb.bits(e) != kSentinel32) ++r.stray_writes;

  if (spec.want_stats) {
    r.per_head.assign(stats.begin(), stats.begin() + heads * 2);
    if (stats[size_t(heads) * 2] != -12345 || stats[size_t(heads) * 2 + 1] != -12345) ++r.stray_writes;
  }
  if (spec.want_decisions) {
    r.decisions.assign(dec.begin(), dec.begin() + slots);
    for (uint8_t x : r.decisions)
      if (x > BLASST_TILE_SKIPPED) ++r.bad_decisions;
    for (size_t e = size_t(slots); e < dec.size(); ++e)
      if (dec[e] != 0xEE) ++r.stray_writes;
  }
  return r;
}

Accuracy expect_close(const ref::Problem& p, blasst_dtype dtype, const EngineResult& e, const ref::Output& ref,
                      const ref::Output& plain, const std::string& what) {
  Accuracy acc;
  double max_ref = 0;
  int64_t nan_mismatch = 0, inf_mismatch = 0, nonfinite = 0;
  std::string first_bad;
  for (int b = 0; b < p.batch; ++b)
    for (size_t n = 0; n < ref.o[size_t(b)].size(); ++n) {
      const double r = ref.o[size_t(b)][n], x = e.out.o[size_t(b)][n], pl = plain.o[size_t(b)][n];
      if (std::isnan(r)) {
        if (!std::isnan(x)) ++nan_mismatch;
        continue;
      }
      if (std::isinf(r)) {
        if (x != r) ++inf_mismatch;
        continue;
      }
      if (!std::isfinite(x)) {
        if (first_bad.empty()) {
          std::ostringstream os;
          os << "entry " << b << " element " << n << ": engine " << x << ", reference " << r;
          first_bad = os.str();
        }
        ++nonfinite;
        continue;
      }
      max_ref = std::max(max_ref, std::fabs(r));
      acc.err_o = std::max(acc.err_o, std::fabs(x - r));
      if (std::isfinite(pl)) acc.plain_err_o = std::max(acc.plain_err_o, std::fabs(pl - r));
    }
  EXPECT_EQ(nan_mismatch, 0) << what << ": output elements where the reference is NaN but the engine is not";
  EXPECT_EQ(inf_mismatch, 0) << what << ": output elements where the reference is inf but the engine differs";
  EXPECT_EQ(nonfinite, 0) << what << ": non-finite engine outputs where the reference is finite; first: " << first_bad;
  if (dtype == BLASST_DTYPE_FLOAT32) {
    acc.bound_o = 4.0 * acc.plain_err_o + 1e-5 * max_ref;
  } else {
    const double eps = dtype == BLASST_DTYPE_BFLOAT16 ? 0x1.0p-8 : 0x1.0p-11;
    acc.bound_o = 2.0 * acc.plain_err_o + eps * max_ref;
  }
  EXPECT_LE(acc.err_o, acc.bound_o) << what << ": max |O - O_ref| " << acc.err_o << " exceeds the bound "
                                    << acc.bound_o << " (plain computation's error " << acc.plain_err_o << ")";

  // LSE: fp32 from fp32 scores, whatever the input dtype.
  if (!e.out.lse.empty() && !e.lse_bits.empty() && !e.lse_bits[0].empty()) {
    int64_t lse_bad = 0;
    std::string first;
    const double rel = 2e-5 + 2e-6 * std::sqrt(double(p.dqk));
    for (int b = 0; b < p.batch; ++b)
      for (size_t n = 0; n < ref.lse[size_t(b)].size(); ++n) {
        const double r = ref.lse[size_t(b)][n], x = e.out.lse[size_t(b)][n];
        bool ok;
        if (std::isnan(r)) ok = std::isnan(x);
        else if (std::isinf(r)) ok = x == r;
        else {
          ok = std::isfinite(x) && std::fabs(x - r) <= rel * (1.0 + std::fabs(r));
          if (std::isfinite(x)) acc.err_lse = std::max(acc.err_lse, std::fabs(x - r));
        }
        if (!ok) {
          if (first.empty()) {
            std::ostringstream os;
            os << "entry " << b << " row*head " << n << ": engine " << x << ", reference " << r;
            first = os.str();
          }
          ++lse_bad;
        }
      }
    EXPECT_EQ(lse_bad, 0) << what << ": LSE values off the reference; first: " << first;
  }
  return acc;
}

int64_t expect_decisions_consistent(const ref::Blasst& rp, const EngineResult& e, const std::string& what) {
  EXPECT_EQ(e.bad_decisions, 0) << what << ": trace bytes that are not a blasst_decision";
  if (e.decisions.size() != rp.decisions.size()) {
    ADD_FAILURE() << what << ": trace size " << e.decisions.size() << " vs " << rp.decisions.size();
    return 0;
  }
  int64_t flips = 0, visited_mismatch = 0, anchor_skipped = 0, hard = 0;
  int64_t visited = 0, skipped = 0;
  std::string first;
  auto describe = [&](size_t slot) {
    std::ostringstream os;
    const size_t tile = slot % size_t(rp.tiles);
    const size_t group = (slot / size_t(rp.tiles)) % size_t(rp.groups);
    const size_t b = slot / size_t(rp.tiles) / size_t(rp.groups);
    os << "entry " << b << " group " << group << " tile " << tile << ": engine " << int(e.decisions[slot])
       << ", rule " << int(rp.rule[slot]) << " (margin " << rp.margin[slot] << ", tol " << rp.tol[slot]
       << ", anchor " << int(rp.anchor[slot]) << ")";
    return os.str();
  };
  for (size_t s = 0; s < e.decisions.size(); ++s) {
    const uint8_t x = e.decisions[s], r = rp.rule[s];
    if (x != BLASST_TILE_NOT_VISITED) ++visited;
    if (x == BLASST_TILE_SKIPPED) ++skipped;
    if ((x == BLASST_TILE_NOT_VISITED) != (r == BLASST_TILE_NOT_VISITED)) {
      ++visited_mismatch;
      if (first.empty()) first = describe(s);
      continue;
    }
    if (rp.anchor[s] && x != BLASST_TILE_KEPT) {
      ++anchor_skipped;
      if (first.empty()) first = describe(s);
      continue;
    }
    if (x != r) {
      if (rp.margin[s] <= rp.tol[s]) ++flips;
      else {
        ++hard;
        if (first.empty()) first = describe(s);
      }
    }
  }
  EXPECT_EQ(visited_mismatch, 0) << what << ": tiles visited by one side only; first: " << first;
  EXPECT_EQ(anchor_skipped, 0) << what << ": anchors not kept; first: " << first;
  EXPECT_EQ(hard, 0) << what << ": decisions that differ from the rule beyond rounding; first: " << first;
  EXPECT_EQ(e.info.visited, visited) << what << ": run_info.visited vs the trace";
  EXPECT_EQ(e.info.skipped, skipped) << what << ": run_info.skipped vs the trace";
  EXPECT_EQ(e.info.visited, rp.visited) << what << ": run_info.visited vs the reference";
  EXPECT_EQ(e.info.skipped, rp.skipped) << what << ": run_info.skipped vs the reference";
  if (!e.per_head.empty()) {
    EXPECT_EQ(e.per_head, rp.per_head) << what << ": stats_per_head vs the reference";
  }
  return flips;
}

void expect_bitwise_equal(const EngineResult& a, const EngineResult& b, const std::string& what) {
  ASSERT_EQ(a.o_bits.size(), b.o_bits.size()) << what;
  int64_t diff = 0, lse_diff = 0;
  for (size_t e = 0; e < a.o_bits.size(); ++e) {
    ASSERT_EQ(a.o_bits[e].size(), b.o_bits[e].size()) << what;
    for (size_t n = 0; n < a.o_bits[e].size(); ++n) diff += a.o_bits[e][n] != b.o_bits[e][n];
    if (a.lse_bits.size() == b.lse_bits.size() && a.lse_bits[e].size() == b.lse_bits[e].size())
      for (size_t n = 0; n < a.lse_bits[e].size(); ++n) lse_diff += a.lse_bits[e][n] != b.lse_bits[e][n];
  }
  EXPECT_EQ(diff, 0) << what << ": output elements that differ bitwise";
  EXPECT_EQ(lse_diff, 0) << what << ": LSE values that differ bitwise";
}

Checked run_and_check(const ref::Problem& p, const RunSpec& spec, const std::string& what) {
  Checked c;
  c.engine = run_engine(p, spec);
  EXPECT_EQ(c.engine.status, BLASST_OK) << what << ": " << c.engine.message;
  if (c.engine.status != BLASST_OK) return c;
  EXPECT_STREQ(blasst_last_error(), "") << what << ": the error message after a success";
  EXPECT_EQ(c.engine.unwritten, 0) << what << ": output elements never written";
  EXPECT_EQ(c.engine.stray_writes, 0) << what << ": elements written outside the outputs' views";
  const ref::Geometry g = ref_geometry(p, spec);
  EXPECT_EQ(c.engine.info.engine, BLASST_ENGINE_CPU) << what;
  EXPECT_EQ(c.engine.info.geometry.block_n, g.block_n) << what;
  EXPECT_EQ(c.engine.info.geometry.order, g.order) << what;
  EXPECT_EQ(c.engine.info.geometry.splits, g.splits) << what;
  EXPECT_EQ(c.engine.info.geometry.block_m, g.block_m) << what;
  const uint8_t* replay = spec.want_decisions ? c.engine.decisions.data() : nullptr;
  c.reference = ref::blasst(p, g, ref_threshold(spec), replay);
  if (spec.want_decisions) c.rounding_flips = expect_decisions_consistent(c.reference, c.engine, what);
  const ref::Output plain = ref::plain(p, spec.dtype, &g, c.reference.decisions.data());
  expect_close(p, spec.dtype, c.engine, c.reference.out, plain, what);
  return c;
}

}  // namespace blasst::test
