#include "reference.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "core/dtype.hpp"

namespace blasst::ref {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr float kInfF = std::numeric_limits<float>::infinity();
constexpr float kNanF = std::numeric_limits<float>::quiet_NaN();

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Maximum that lets a NaN through (a NaN score is never hidden).
float max_nan(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return kNanF;
  return a > b ? a : b;
}
double max_nan(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<double>::quiet_NaN();
  return a > b ? a : b;
}

float score32(const Problem& p, int b, int64_t i, int h, int64_t j) {
  const int kh = h / p.group_size();
  const float* qr = &p.q[b][(size_t(i) * p.hq + h) * p.dqk];
  const float* kr = &p.k[b][(size_t(j) * p.hkv + kh) * p.dqk];
  float acc = 0.0f;
  for (int d = 0; d < p.dqk; ++d) acc += qr[d] * kr[d];
  return acc * p.scale32();
}

double score64(const Problem& p, int b, int64_t i, int h, int64_t j) {
  const int kh = h / p.group_size();
  const float* qr = &p.q[b][(size_t(i) * p.hq + h) * p.dqk];
  const float* kr = &p.k[b][(size_t(j) * p.hkv + kh) * p.dqk];
  double acc = 0.0;
  for (int d = 0; d < p.dqk; ++d) acc += double(qr[d]) * double(kr[d]);
  return acc * p.scale64();
}

// fp64 softmax(s) @ V over the keys j < end with keep(j); writes o [dv] and returns the LSE.
template <class Keep>
double attend_row64(const Problem& p, int b, int64_t i, int h, int64_t end, Keep keep, double* o) {
  const int kh = h / p.group_size();
  std::fill(o, o + p.dv, 0.0);
  std::vector<double> s;
  std::vector<int64_t> keys;
  for (int64_t j = 0; j < end; ++j) {
    if (!keep(j)) continue;
    keys.push_back(j);
    s.push_back(score64(p, b, i, h, j));
  }
  if (keys.empty()) return -kInf;
  double m = -kInf;
  for (double x : s) m = max_nan(m, x);
  // Every visible score -inf (infinite inputs): no key carries weight; O = 0, LSE = -inf as for a
  // row without keys (a naive softmax would give 0/0).
  if (m == -kInf) return -kInf;
  double l = 0.0;
  for (size_t n = 0; n < keys.size(); ++n) {
    const double e = std::exp(s[n] - m);
    l += e;
    const float* vr = &p.v[b][(size_t(keys[n]) * p.hkv + kh) * p.dv];
    for (int d = 0; d < p.dv; ++d) o[d] += e * double(vr[d]);
  }
  for (int d = 0; d < p.dv; ++d) o[d] /= l;
  return m + std::log(l);
}

Output make_output(const Problem& p) {
  Output out;
  out.o.resize(p.batch);
  out.lse.resize(p.batch);
  for (int b = 0; b < p.batch; ++b) {
    out.o[b].assign(size_t(p.lq[b]) * p.hq * p.dv, 0.0);
    out.lse[b].assign(size_t(p.lq[b]) * p.hq, -kInf);
  }
  return out;
}

// The (row, head) pairs of decision group g of entry b.
struct Row {
  int64_t i;
  int h;
};
// Decode groups per KV head: its (head, row) pairs, head-major, in chunks of block_m (0: all).
int64_t decode_chunks(const Geometry& g, int group_size) {
  return g.block_m > 0 ? ceil_div(int64_t(group_size) * g.max_seqlen_q, g.block_m) : 1;
}

std::vector<Row> group_rows(const Problem& p, const Geometry& g, int b, int64_t group) {
  std::vector<Row> rows;
  if (g.phase == BLASST_PHASE_DECODE) {
    const int64_t chunks = decode_chunks(g, p.group_size());
    const int kh = int(group / chunks);
    const int64_t pairs = int64_t(p.group_size()) * p.lq[b];
    const int64_t first = g.block_m > 0 ? (group % chunks) * g.block_m : 0;
    const int64_t end = g.block_m > 0 ? std::min(pairs, first + g.block_m) : pairs;
    for (int64_t pair = first; pair < end; ++pair)
      rows.push_back({pair % p.lq[b], kh * p.group_size() + int(pair / p.lq[b])});
  } else {
    const int64_t blocks = ceil_div(g.max_seqlen_q, g.block_m);
    const int h = int(group / blocks);
    const int64_t mb = group % blocks;
    for (int64_t i = mb * g.block_m; i < std::min<int64_t>((mb + 1) * g.block_m, p.lq[b]); ++i)
      rows.push_back({i, h});
  }
  return rows;
}

int group_kv_head(const Problem& p, const Geometry& g, int64_t group) {
  if (g.phase == BLASST_PHASE_DECODE) return int(group / decode_chunks(g, p.group_size()));
  const int64_t blocks = ceil_div(g.max_seqlen_q, g.block_m);
  return int(group / blocks) / p.group_size();
}

void check_problem(const Problem& p, const Geometry& g) {
  if (p.hq % p.hkv != 0) throw std::invalid_argument("hq must be a multiple of hkv");
  if (int(p.lq.size()) != p.batch || int(p.lk.size()) != p.batch) throw std::invalid_argument("lengths");
  for (int b = 0; b < p.batch; ++b) {
    if (p.lq[b] > g.max_seqlen_q || p.lk[b] > g.max_seqlen_k) throw std::invalid_argument("max_seqlen");
  }
  const int least_block_m = g.phase == BLASST_PHASE_DECODE ? 0 : 1;  // decode: 0 = one group per KV head
  if (g.block_m < least_block_m || g.block_n < 1 || g.splits < 1) throw std::invalid_argument("geometry");
}

}  // namespace

float Problem::scale32() const { return scale != 0.0f ? scale : float(1.0 / std::sqrt(double(dqk))); }
double Problem::scale64() const { return scale != 0.0f ? double(scale) : 1.0 / std::sqrt(double(dqk)); }

int64_t Problem::visible_end(int b, int64_t i) const {
  if (!causal) return lk[b];
  const int64_t end = lk[b] - lq[b] + i + 1;
  return std::clamp<int64_t>(end, 0, lk[b]);
}

int64_t Geometry::groups_per_entry(int hq, int hkv) const {
  if (phase == BLASST_PHASE_DECODE) return int64_t(hkv) * decode_chunks(*this, hq / hkv);
  return int64_t(hq) * ceil_div(max_seqlen_q, block_m);
}
int64_t Geometry::tiles() const { return ceil_div(max_seqlen_k, block_n); }

float round_to(blasst_dtype dtype, float x) {
  switch (dtype) {
    case BLASST_DTYPE_FLOAT16: return detail::fp16_to_float(detail::float_to_fp16(x));
    case BLASST_DTYPE_BFLOAT16: return detail::bf16_to_float(detail::float_to_bf16(x));
    default: return x;
  }
}

Output dense(const Problem& p) {
  Output out = make_output(p);
  for (int b = 0; b < p.batch; ++b)
    for (int64_t i = 0; i < p.lq[b]; ++i)
      for (int h = 0; h < p.hq; ++h) {
        double* o = &out.o[b][(size_t(i) * p.hq + h) * p.dv];
        out.lse[b][size_t(i) * p.hq + h] =
            attend_row64(p, b, i, h, p.visible_end(b, i), [](int64_t) { return true; }, o);
      }
  return out;
}

Blasst blasst(const Problem& p, const Geometry& g, const Threshold& t, const uint8_t* replay) {
  check_problem(p, g);
  Blasst r;
  r.out = make_output(p);
  r.groups = g.groups_per_entry(p.hq, p.hkv);
  r.tiles = g.tiles();
  const size_t slots = size_t(p.batch) * size_t(r.groups) * size_t(r.tiles);
  r.decisions.assign(slots, BLASST_TILE_NOT_VISITED);
  r.rule.assign(slots, BLASST_TILE_NOT_VISITED);
  r.margin.assign(slots, kInfF);
  r.tol.assign(slots, 0.0f);
  r.anchor.assign(slots, 0);
  const int heads = g.phase == BLASST_PHASE_DECODE ? p.hkv : p.hq;
  r.per_head.assign(size_t(heads) * 2, 0);
  const float u = std::ldexp(1.0f, -24);

  for (int b = 0; b < p.batch; ++b) {
    // Squared norms of the keys of each KV head, for the rounding tolerance of the scores.
    std::vector<double> knorm(size_t(p.lk[b]) * p.hkv, 0.0);
    for (int64_t j = 0; j < p.lk[b]; ++j)
      for (int kh = 0; kh < p.hkv; ++kh) {
        double s = 0;
        for (int d = 0; d < p.dqk; ++d) s += double(p.kv(b, j, kh, d)) * p.kv(b, j, kh, d);
        knorm[size_t(j) * p.hkv + kh] = std::sqrt(s);
      }

    for (int64_t group = 0; group < r.groups; ++group) {
      const std::vector<Row> rows = group_rows(p, g, b, group);
      const int kh = group_kv_head(p, g, group);
      const float factor = !t.per_kv_head.empty() ? t.per_kv_head.at(size_t(kh))
                           : !t.per_request.empty() ? t.per_request.at(size_t(b))
                                                    : t.factor;
      const bool skipping = factor > 0.0f && double(factor) / double(p.lk[b]) < 1.0;
      const float lnl = skipping ? float(std::log(double(factor) / double(p.lk[b]))) : -kInfF;

      int64_t vis_max = 0;
      for (const Row& row : rows) vis_max = std::max(vis_max, p.visible_end(b, row.i));
      if (vis_max == 0) continue;
      const int64_t n = ceil_div(vis_max, g.block_n);  // tiles 0..n-1 are visited
      const int64_t last = n - 1;
      const size_t slot0 = (size_t(b) * size_t(r.groups) + size_t(group)) * size_t(r.tiles);

      // mt[row][tile] in fp32 (-inf where the row sees no key of the tile), and per-row
      // rounding tolerance of its scores.
      const size_t nr = rows.size();
      std::vector<float> mt(nr * size_t(n), -kInfF);
      std::vector<float> row_tol(nr, 0.0f);
      for (size_t ri = 0; ri < nr; ++ri) {
        const Row& row = rows[ri];
        const int64_t end = p.visible_end(b, row.i);
        double qn = 0, kmax = 0;
        for (int d = 0; d < p.dqk; ++d) qn += double(p.qv(b, row.i, row.h, d)) * p.qv(b, row.i, row.h, d);
        for (int64_t j = 0; j < end; ++j) {
          const float s = score32(p, b, row.i, row.h, j);
          float& m = mt[ri * size_t(n) + size_t(j / g.block_n)];
          m = max_nan(m, s);
          kmax = std::max(kmax, knorm[size_t(j) * p.hkv + kh]);
        }
        const double bound = p.scale64() * std::sqrt(qn) * kmax;
        row_tol[ri] = float(2.0 * (2.0 * p.dqk + 16.0) * u * bound);
      }

      std::vector<float> seed(nr, -kInfF);
      for (size_t ri = 0; ri < nr; ++ri)
        seed[ri] = max_nan(mt[ri * size_t(n)], mt[ri * size_t(n) + size_t(last)]);

      const int64_t chunk = ceil_div(n, g.splits);
      std::vector<float> m(nr);
      int64_t skipped = 0;
      for (int64_t c0 = 0; c0 < n; c0 += chunk) {
        const int64_t c1 = std::min(n, c0 + chunk);
        for (size_t ri = 0; ri < nr; ++ri) m[ri] = g.order == BLASST_ORDER_ANCHORED ? seed[ri] : -kInfF;
        for (int64_t tile = c0; tile < c1; ++tile) {
          const size_t slot = slot0 + size_t(tile);
          const bool anchor =
              g.order == BLASST_ORDER_ANCHORED ? (tile == 0 || tile == last) : (tile == c0);
          r.anchor[slot] = anchor ? 1 : 0;
          float tol = 0.0f;
          for (size_t ri = 0; ri < nr; ++ri) {
            const float x = mt[ri * size_t(n) + size_t(tile)];
            if (!std::isfinite(x) || !std::isfinite(m[ri])) continue;
            tol = std::max(tol, row_tol[ri] + 4.0f * u * (std::fabs(x) + std::fabs(m[ri]) + std::fabs(lnl)));
          }
          r.tol[slot] = tol;

          uint8_t rule = BLASST_TILE_KEPT;
          float margin = kInfF;
          if (skipping && !anchor) {
            bool all_skip = true;
            float min_skip = kInfF;  // closest skip vote to flipping
            float max_keep = 0.0f;   // farthest keep vote from flipping
            bool keep_unflippable = false;
            for (size_t ri = 0; ri < nr; ++ri) {
              const float x = mt[ri * size_t(n) + size_t(tile)];
              if (x == -kInfF) continue;  // sees nothing in this tile: skip, exactly
              const float diff = x - m[ri];
              const bool vote_skip = diff < lnl;
              const double dist = std::fabs(double(diff) - double(lnl));
              if (vote_skip) {
                min_skip = std::min(min_skip, float(dist));
              } else {
                all_skip = false;
                if (std::isnan(dist) || std::isinf(dist)) keep_unflippable = true;
                else max_keep = std::max(max_keep, float(dist));
              }
            }
            if (all_skip) {
              rule = BLASST_TILE_SKIPPED;
              margin = min_skip;
            } else {
              margin = keep_unflippable ? kInfF : max_keep;
            }
          }
          r.rule[slot] = rule;
          r.margin[slot] = margin;
          uint8_t followed = rule;
          if (replay) followed = replay[slot] == BLASST_TILE_KEPT ? BLASST_TILE_KEPT : BLASST_TILE_SKIPPED;
          r.decisions[slot] = replay ? replay[slot] : rule;
          if (followed == BLASST_TILE_KEPT) {
            for (size_t ri = 0; ri < nr; ++ri) m[ri] = max_nan(m[ri], mt[ri * size_t(n) + size_t(tile)]);
          } else {
            ++skipped;
          }
        }
      }
      r.visited += n;
      r.skipped += skipped;
      const int head = g.phase == BLASST_PHASE_DECODE ? kh : rows.front().h;
      r.per_head[size_t(head) * 2] += n;
      r.per_head[size_t(head) * 2 + 1] += skipped;

      // Outputs over the kept tiles (chunks merge exactly, so this is one softmax).
      for (const Row& row : rows) {
        double* o = &r.out.o[b][(size_t(row.i) * p.hq + row.h) * p.dv];
        auto keep = [&](int64_t j) {
          const size_t slot = slot0 + size_t(j / g.block_n);
          return replay ? replay[slot] == BLASST_TILE_KEPT : r.rule[slot] == BLASST_TILE_KEPT;
        };
        r.out.lse[b][size_t(row.i) * p.hq + row.h] = attend_row64(p, b, row.i, row.h, p.visible_end(b, row.i), keep, o);
      }
    }
  }
  return r;
}

Output plain(const Problem& p, blasst_dtype dtype, const Geometry* g, const uint8_t* decisions) {
  Output out = make_output(p);
  const int64_t groups = g ? g->groups_per_entry(p.hq, p.hkv) : 0;
  const int64_t tiles = g ? g->tiles() : 0;
  std::vector<float> s, acc(size_t(p.dv));
  std::vector<int64_t> keys;
  for (int b = 0; b < p.batch; ++b)
    for (int64_t i = 0; i < p.lq[b]; ++i)
      for (int h = 0; h < p.hq; ++h) {
        const int kh = h / p.group_size();
        int64_t group = 0;
        if (g) {
          if (g->phase == BLASST_PHASE_DECODE) {
            const int64_t pair = int64_t(h - kh * p.group_size()) * p.lq[b] + i;  // head-major within the KV head
            group = kh * decode_chunks(*g, p.group_size()) + (g->block_m > 0 ? pair / g->block_m : 0);
          } else {
            group = h * ceil_div(g->max_seqlen_q, g->block_m) + i / g->block_m;
          }
        }
        keys.clear();
        s.clear();
        for (int64_t j = 0; j < p.visible_end(b, i); ++j) {
          if (decisions &&
              decisions[(size_t(b) * size_t(groups) + size_t(group)) * size_t(tiles) + size_t(j / g->block_n)] !=
                  BLASST_TILE_KEPT)
            continue;
          keys.push_back(j);
          s.push_back(round_to(dtype, score32(p, b, i, h, j)));
        }
        double* o = &out.o[b][(size_t(i) * p.hq + h) * p.dv];
        if (keys.empty()) continue;
        float m = -kInfF;
        for (float x : s) m = max_nan(m, x);
        float l = 0.0f;
        for (float& x : s) {
          x = std::exp(x - m);
          l += x;
        }
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (size_t n = 0; n < keys.size(); ++n) {
          const float pr = round_to(dtype, s[n] / l);
          for (int d = 0; d < p.dv; ++d) acc[size_t(d)] += pr * p.vv(b, keys[n], kh, d);
        }
        for (int d = 0; d < p.dv; ++d) o[d] = round_to(dtype, acc[size_t(d)]);
        out.lse[b][size_t(i) * p.hq + h] = double(m) + std::log(double(l));
      }
  return out;
}

}  // namespace blasst::ref
