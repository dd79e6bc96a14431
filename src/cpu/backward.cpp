// Backward pass of BLASST attention on the CPU (blasst_backward): the gradients of softmax
// attention restricted, per decision group, to the tiles its forward kept. Exact: scores, each
// row's log-sum-exp and every gradient are computed in fp64 from the stored inputs.
//
// Per row i of query head h (keys j: visible to the row and in a kept tile of its group):
//   s_j = scale * q_i . k_j,  P_j = exp(s_j - lse_i),  lse_i = log sum_j exp(s_j)
//   dP_j = dout_i . v_j,  D_i = sum_j P_j dP_j - dlse_i,  dS_j = P_j (dP_j - D_i)
//   dq_i = scale * sum_j dS_j k_j,  dk_j += scale * dS_j q_i,  dv_j += P_j dout_i
// One work item is a slice of the rows (query head, row) of one (entry, KV head): it writes those
// rows' dq and accumulates its own dk, dv of the KV head, which are summed over the slices in slice
// order once every item is done (deterministic for a given thread count, which sets the slices).
#include "cpu/backward.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <thread>
#include <vector>

#include "core/dtype.hpp"
#include "core/layout.hpp"

namespace blasst::cpu {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

struct Shapes {
  int64_t q_per_kv, row_blocks, groups, chunks, tiles, dqk, dv;
  double scale;
};

// Rows [0, n) of one (entry, KV head) of K or V as doubles [n, dim].
std::vector<double> load_rows(const blasst_args& a, const blasst_tensor& t, int64_t b, int64_t hk, int64_t n,
                              int64_t dim) {
  std::vector<double> rows(size_t(n * dim));
  for (int64_t j = 0; j < n; ++j) {
    const int64_t off = detail::kv_offset(a, t, b, j, hk);
    for (int64_t d = 0; d < dim; ++d) rows[size_t(j * dim + d)] = detail::load_element(t.data, t.dtype, off + d);
  }
  return rows;
}

// dk and dv of one slice of rows, [lk, Dqk] and [lk, Dv].
struct Partial {
  std::vector<double> dk, dv;
};

void run_item(const blasst_args& a, const blasst_backward_args& g, const Shapes& sh, int64_t b, int64_t hk,
              int64_t slice, int64_t slices, Partial& acc) {
  const int64_t lq = detail::seqlen_q(a, b), lk = detail::seqlen_k(a, b);
  const int64_t dqk = sh.dqk, dv = sh.dv, bn = g.geometry.block_n, bm = g.geometry.block_m;
  const int64_t rows = sh.q_per_kv * lq;  // (query head, row) pairs of this KV head, head-major
  const int64_t r0 = rows * slice / slices, r1 = rows * (slice + 1) / slices;
  if (r0 >= r1) return;
  const std::vector<double> k = load_rows(a, a.k, b, hk, lk, dqk);
  const std::vector<double> v = load_rows(a, a.v, b, hk, lk, dv);
  std::vector<double>& dk = acc.dk;
  std::vector<double>& dv_acc = acc.dv;
  dk.assign(k.size(), 0.0);
  dv_acc.assign(v.size(), 0.0);
  std::vector<double> q(static_cast<size_t>(dqk)), dout(static_cast<size_t>(dv)), dq(static_cast<size_t>(dqk));
  std::vector<double> s(static_cast<size_t>(lk)), dp(static_cast<size_t>(lk));
  std::vector<int64_t> keys;
  keys.reserve(size_t(lk));
  const bool decode = g.phase == BLASST_PHASE_DECODE;

  for (int64_t r = r0; r < r1; ++r) {
    const int64_t h = hk * sh.q_per_kv + r / lq, i = r % lq;
    {
      const int64_t visible = a.causal ? std::clamp<int64_t>(lk - lq + i + 1, 0, lk) : lk;
      // decode: chunk r / bm of the KV head's head-major pairs (bm = 0: one group)
      const int64_t group = decode ? hk * sh.chunks + (bm > 0 ? r / bm : 0) : h * sh.row_blocks + i / bm;
      const uint8_t* trace = g.decisions + (b * sh.groups + group) * sh.tiles;
      keys.clear();
      for (int64_t j = 0; j < visible; ++j)
        if (trace[j / bn] == BLASST_TILE_KEPT) keys.push_back(j);

      const int64_t q_off = detail::q_side_offset(a, a.q, b, i, h);
      const int64_t do_off = detail::q_side_offset(a, g.dout, b, i, h);
      for (int64_t d = 0; d < dqk; ++d) q[size_t(d)] = detail::load_element(a.q.data, a.q.dtype, q_off + d);
      for (int64_t d = 0; d < dv; ++d) dout[size_t(d)] = detail::load_element(g.dout.data, g.dout.dtype, do_off + d);
      const double dlse = g.dlse.data ? double(static_cast<const float*>(g.dlse.data)[
                                            detail::q_side_offset(a, g.dlse, b, i, h)])
                                      : 0.0;

      // scores and the row's log-sum-exp over its kept keys (NaN propagates as in the forward)
      double m = kNegInf;
      for (int64_t j : keys) {
        double dot = 0.0;
        for (int64_t d = 0; d < dqk; ++d) dot += q[size_t(d)] * k[size_t(j * dqk + d)];
        s[size_t(j)] = dot * sh.scale;
        m = std::isnan(s[size_t(j)]) || std::isnan(m) ? std::numeric_limits<double>::quiet_NaN()
                                                       : std::max(m, s[size_t(j)]);
      }
      std::fill(dq.begin(), dq.end(), 0.0);
      if (!keys.empty() && m != kNegInf) {
        double l = 0.0;
        for (int64_t j : keys) l += std::exp(s[size_t(j)] - m);
        const double lse = m + std::log(l);
        double big_d = -dlse;
        for (int64_t j : keys) {
          s[size_t(j)] = std::exp(s[size_t(j)] - lse);  // P_j
          double dot = 0.0;
          for (int64_t d = 0; d < dv; ++d) dot += dout[size_t(d)] * v[size_t(j * dv + d)];
          dp[size_t(j)] = dot;
          big_d += s[size_t(j)] * dot;
        }
        for (int64_t j : keys) {
          const double p = s[size_t(j)];
          const double ds = p * (dp[size_t(j)] - big_d) * sh.scale;
          for (int64_t d = 0; d < dqk; ++d) {
            dq[size_t(d)] += ds * k[size_t(j * dqk + d)];
            dk[size_t(j * dqk + d)] += ds * q[size_t(d)];
          }
          for (int64_t d = 0; d < dv; ++d) dv_acc[size_t(j * dv + d)] += p * dout[size_t(d)];
        }
      }
      const int64_t dq_off = detail::q_side_offset(a, g.dq, b, i, h);
      for (int64_t d = 0; d < dqk; ++d) detail::store_element(g.dq.data, g.dq.dtype, dq_off + d, float(dq[size_t(d)]));
    }
  }
}

// dk, dv of (entry b, KV head hk): the sum of its slices' partials, in slice order.
void store_kv_grads(const blasst_args& a, const blasst_backward_args& g, const Shapes& sh, int64_t b, int64_t hk,
                    const Partial* slices, int64_t count) {
  const int64_t lk = detail::seqlen_k(a, b), dqk = sh.dqk, dv = sh.dv;
  for (int64_t j = 0; j < lk; ++j) {
    const int64_t k_off = detail::kv_offset(a, g.dk, b, j, hk);
    const int64_t v_off = detail::kv_offset(a, g.dv, b, j, hk);
    for (int64_t d = 0; d < dqk; ++d) {
      double sum = 0.0;
      for (int64_t s = 0; s < count; ++s)
        if (!slices[s].dk.empty()) sum += slices[s].dk[size_t(j * dqk + d)];
      detail::store_element(g.dk.data, g.dk.dtype, k_off + d, float(sum));
    }
    for (int64_t d = 0; d < dv; ++d) {
      double sum = 0.0;
      for (int64_t s = 0; s < count; ++s)
        if (!slices[s].dv.empty()) sum += slices[s].dv[size_t(j * dv + d)];
      detail::store_element(g.dv.data, g.dv.dtype, v_off + d, float(sum));
    }
  }
}

}  // namespace

Status backward(const blasst_args& a, const blasst_backward_args& g) {
  Shapes sh{};
  sh.q_per_kv = a.num_q_heads / a.num_kv_heads;
  sh.row_blocks = g.phase == BLASST_PHASE_DECODE ? 1 : detail::ceil_div(a.max_seqlen_q, g.geometry.block_m);
  sh.groups = detail::groups_per_entry(a, g.phase, g.geometry.block_m);
  sh.chunks = detail::decode_chunks(a, g.geometry.block_m);
  sh.tiles = detail::ceil_div(a.max_seqlen_k, g.geometry.block_n);
  sh.dqk = a.head_dim_qk;
  sh.dv = a.head_dim_v;
  sh.scale = double(a.scale != 0.0f ? a.scale : float(1.0 / std::sqrt(double(a.head_dim_qk))));

  // Enough slices per (entry, KV head) that every thread has work when there are few of them
  // (MQA, MLA, batch 1); each slice costs a copy of its K/V and a partial dk, dv.
  const int64_t heads = int64_t(a.batch) * a.num_kv_heads;
  const int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t want = a.num_threads > 0 ? a.num_threads : hw;
  const int64_t slices = std::clamp<int64_t>(detail::ceil_div(want, heads), 1, std::max<int64_t>(1, sh.q_per_kv * a.max_seqlen_q));
  const int64_t items = heads * slices;
  std::vector<Partial> partials(static_cast<size_t>(items));
  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    for (int64_t it = next.fetch_add(1); it < items; it = next.fetch_add(1)) {
      const int64_t head = it / slices;
      run_item(a, g, sh, head / a.num_kv_heads, head % a.num_kv_heads, it % slices, slices, partials[size_t(it)]);
    }
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < std::min(want, items); ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  for (int64_t head = 0; head < heads; ++head)
    store_kv_grads(a, g, sh, head / a.num_kv_heads, head % a.num_kv_heads, &partials[size_t(head * slices)], slices);
  return Status::ok();
}

}  // namespace blasst::cpu
