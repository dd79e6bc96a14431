// The CPU engine: SPEC.md semantics in fp32, one decision group per work item, items spread
// over threads. Per group (rows R, KV tile width Bn, head dims Dqk/Dv):
//   q  [R, Dqk]        query rows converted to fp32
//   kt [Dqk, BnPad]    K tile transposed (padded columns are zero)
//   v  [Bn, DvPad]     V tile (loaded only when the tile is kept)
//   s  [R, BnPad]      scores, then probabilities in place
//   o  [R, DvPad]      chunk accumulator; total merges chunks through their log-sum-exp
#include "cpu/engine.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <thread>
#include <vector>

#include "core/dtype.hpp"
#include "core/layout.hpp"
#include "cpu/tile_kernels.hpp"

namespace blasst::cpu {
namespace {

using detail::ceil_div;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// One (query row, query head) pair of a decision group.
struct Row {
  int64_t q_offset;    // element offset of q[b, i, h, 0]
  int64_t out_offset;  // out[b, i, h, 0]
  int64_t lse_offset;  // lse[b, i, h]
  int64_t key_end;     // keys [0, key_end) are visible to this row
};

// A decision group: rows of one KV head of one batch entry.
struct Group {
  int64_t batch;
  int32_t kv_head;
  int32_t stat_head;    // index into stats_per_head
  int64_t trace_index;  // index of the group's first tile in args.decisions
  int64_t seqlen_k;
  bool skip_enabled;
  float log_lambda;
  float score_scale;  // the call's scale times the FP8 dequantization scales of Q and K
  float v_scale;      // FP8 dequantization scale of V (1 otherwise), applied to the output
};

struct GroupStats {
  int64_t visited = 0;
  int64_t skipped = 0;
};

int64_t round_up(int64_t x, int64_t m) { return ceil_div(x, m) * m; }

inline float nan_max(float a, float b) {
  if (a != a || b != b) return std::numeric_limits<float>::quiet_NaN();
  return a > b ? a : b;
}

// K and V of every (entry, KV head) converted to fp32 once per call, shared by all the
// decision groups that read them (prefill: every row block of the G query heads).
//   kt: [entry, kv head, tile, Dqk, BnPad]   v: [entry, kv head, tile, Bn, DvPad]
struct SharedTiles {
  std::vector<float> kt, v;
  int64_t tiles = 0;
  bool ready = false;
};

// Per-thread working memory, sized for the largest group of the call.
struct Scratch {
  std::vector<Row> rows;
  std::vector<float> q, kt, v, s, s_first, s_last, o, o_total;
  std::vector<float> m, l, m_total, l_total, seed, tile_max;
  std::vector<int64_t> visible;
};

class GroupRunner {
 public:
  GroupRunner(const blasst_args& args, const blasst_geometry& geometry)
      : a_(args), g_(geometry), k_(tile_kernels()) {
    dqk_ = a_.head_dim_qk;
    dv_ = a_.head_dim_v;
    bn_pad_ = round_up(g_.block_n, k_.column_pad);
    dv_pad_ = round_up(dv_, k_.column_pad);
    scale_ = a_.scale != 0.0f ? a_.scale : float(1.0 / std::sqrt(double(dqk_)));
  }

  void use_shared(const SharedTiles* shared) { shared_ = shared; }

  // Scale of the scores of KV head kv_head's groups: the call's, times the FP8 dequantization
  // scales of Q and K (exactly the call's scale when neither is FP8).
  float score_scale(int64_t kv_head) const {
    return float(double(scale_) * detail::dequant_scale(a_, a_.scales.q, kv_head) *
                 detail::dequant_scale(a_, a_.scales.k, kv_head));
  }
  int64_t kt_tile_size() const { return dqk_ * bn_pad_; }
  int64_t v_tile_size() const { return g_.block_n * dv_pad_; }

  // Converts tile t of K (transposed, zero-padded columns) and V of (entry b, KV head hk).
  void convert_tile(int64_t b, int64_t hk, int64_t seqlen_k, int64_t t, float* kt, float* v) const {
    const int64_t key0 = t * g_.block_n;
    const int64_t n = std::min<int64_t>(g_.block_n, seqlen_k - key0);
    if (kt) {
      for_dtype(a_.k.dtype, [&](auto load) {
        for (int64_t j = 0; j < n; ++j) {
          const int64_t off = detail::kv_offset(a_, a_.k, b, key0 + j, hk);
          for (int64_t d = 0; d < dqk_; ++d) kt[d * bn_pad_ + j] = load(a_.k.data, off + d);
        }
      });
      // Zero the columns up to the padded width compute_scores multiplies (no further).
      const int64_t n_pad = round_up(n, k_.column_pad);
      for (int64_t d = 0; d < dqk_; ++d) std::fill(kt + d * bn_pad_ + n, kt + d * bn_pad_ + n_pad, 0.0f);
    }
    if (v) {
      for_dtype(a_.v.dtype, [&](auto load) {
        for (int64_t j = 0; j < n; ++j) {
          const int64_t off = detail::kv_offset(a_, a_.v, b, key0 + j, hk);
          float* dst = v + j * dv_pad_;
          for (int64_t d = 0; d < dv_; ++d) dst[d] = load(a_.v.data, off + d);
        }
      });
    }
  }

  void size_scratch(Scratch& sc, int64_t max_rows) const {
    sc.rows.reserve(size_t(max_rows));
    sc.q.assign(size_t(max_rows * dqk_), 0.0f);
    sc.kt.assign(size_t(dqk_ * bn_pad_), 0.0f);
    sc.v.assign(size_t(g_.block_n * dv_pad_), 0.0f);
    for (auto* buf : {&sc.s, &sc.s_first, &sc.s_last}) buf->assign(size_t(max_rows * bn_pad_), 0.0f);
    for (auto* buf : {&sc.o, &sc.o_total}) buf->assign(size_t(max_rows * dv_pad_), 0.0f);
    for (auto* buf : {&sc.m, &sc.l, &sc.m_total, &sc.l_total, &sc.seed, &sc.tile_max})
      buf->assign(size_t(max_rows), 0.0f);
    sc.visible.assign(size_t(max_rows), 0);
  }

  // Runs one group whose rows are in sc.rows (ordered by non-decreasing key_end).
  GroupStats run(const Group& grp, Scratch& sc) const {
    return grp.skip_enabled ? run_impl<true>(grp, sc) : run_impl<false>(grp, sc);
  }

 private:
  template <bool kSkip>
  GroupStats run_impl(const Group& grp, Scratch& sc) const {
    const int64_t rows = int64_t(sc.rows.size());
    int64_t max_key_end = 0;
    for (const Row& r : sc.rows) max_key_end = std::max(max_key_end, r.key_end);
    const int64_t tiles = ceil_div(max_key_end, g_.block_n);
    GroupStats stats;
    if (tiles == 0) {
      write_empty_rows(sc);
      return stats;
    }
    load_queries(sc);

    const bool anchored = g_.order == BLASST_ORDER_ANCHORED;
    if (anchored) {
      // Seed every row's running max with its maximum over the anchors' visible keys.
      compute_scores(grp, 0, sc, sc.s_first.data());
      row_max(0, sc, sc.s_first.data());
      std::copy_n(sc.tile_max.begin(), rows, sc.seed.begin());
      if (tiles > 1) {
        compute_scores(grp, tiles - 1, sc, sc.s_last.data());
        row_max(tiles - 1, sc, sc.s_last.data());
        for (int64_t r = 0; r < rows; ++r) sc.seed[r] = nan_max(sc.seed[r], sc.tile_max[r]);
      }
    }

    const int64_t chunk_len = ceil_div(tiles, g_.splits);
    std::fill_n(sc.m_total.begin(), rows, kNegInf);
    std::fill_n(sc.l_total.begin(), rows, 0.0f);
    std::fill_n(sc.o_total.begin(), rows * dv_pad_, 0.0f);
    bool total_empty = true;

    for (int64_t first = 0; first < tiles; first += chunk_len) {
      const int64_t last = std::min(tiles, first + chunk_len);
      for (int64_t r = 0; r < rows; ++r) sc.m[r] = anchored ? sc.seed[r] : kNegInf;
      std::fill_n(sc.l.begin(), rows, 0.0f);
      std::fill_n(sc.o.begin(), rows * dv_pad_, 0.0f);
      bool kept_any = false;

      for (int64_t t = first; t < last; ++t) {
        const bool anchor = anchored ? (t == 0 || t == tiles - 1) : (t == first);
        float* s = sc.s.data();
        if (anchored && t == 0) {
          s = sc.s_first.data();
        } else if (anchored && t == tiles - 1) {
          s = sc.s_last.data();
        } else {
          compute_scores(grp, t, sc, s);
        }
        row_max(t, sc, s);
        ++stats.visited;
        if (kSkip && !anchor && all_rows_vote_skip(grp, sc)) {
          ++stats.skipped;
          trace(grp, t, BLASST_TILE_SKIPPED);
          continue;
        }
        trace(grp, t, BLASST_TILE_KEPT);
        kept_any = true;
        update_with_tile(grp, t, sc, s);
      }
      if (kept_any) {
        merge_chunk(sc, total_empty);
        total_empty = false;
      }
    }
    write_rows(grp, sc);
    return stats;
  }

  void trace(const Group& grp, int64_t t, blasst_decision d) const {
    if (a_.decisions) a_.decisions[grp.trace_index + t] = uint8_t(d);
  }

  // fn(load) with load(data, index) -> float for one operand's dtype (a loop per dtype, not a
  // switch per element). FP8 values are loaded as stored; their scales act on scores and output.
  template <class Fn>
  static void for_dtype(blasst_dtype dtype, Fn&& fn) {
    switch (dtype) {
      case BLASST_DTYPE_FLOAT16: fn([](const void* p, int64_t i) { return detail::fp16_to_float(static_cast<const uint16_t*>(p)[i]); }); break;
      case BLASST_DTYPE_BFLOAT16: fn([](const void* p, int64_t i) { return detail::bf16_to_float(static_cast<const uint16_t*>(p)[i]); }); break;
      case BLASST_DTYPE_FLOAT8_E4M3: fn([](const void* p, int64_t i) { return detail::e4m3_to_float(static_cast<const uint8_t*>(p)[i]); }); break;
      default: fn([](const void* p, int64_t i) { return static_cast<const float*>(p)[i]; });
    }
  }

  void load_queries(Scratch& sc) const {
    for_dtype(a_.q.dtype, [&](auto load) {
      for (size_t r = 0; r < sc.rows.size(); ++r) {
        float* dst = sc.q.data() + r * size_t(dqk_);
        for (int64_t d = 0; d < dqk_; ++d) dst[d] = load(a_.q.data, sc.rows[r].q_offset + d);
      }
    });
  }

  // Index of tile t of the group's (entry, KV head) in the shared tiles.
  int64_t shared_index(const Group& grp, int64_t t) const {
    return (grp.batch * a_.num_kv_heads + grp.kv_head) * shared_->tiles + t;
  }

  // s[R, BnPad] = scale * q . k over tile t, with keys a row does not see set to -inf.
  void compute_scores(const Group& grp, int64_t t, Scratch& sc, float* s) const {
    const int64_t key0 = t * g_.block_n;
    const int64_t n = std::min<int64_t>(g_.block_n, grp.seqlen_k - key0);
    const float* kt = sc.kt.data();
    if (shared_) {
      kt = shared_->kt.data() + shared_index(grp, t) * kt_tile_size();
    } else {
      convert_tile(grp.batch, grp.kv_head, grp.seqlen_k, t, sc.kt.data(), nullptr);
    }
    const int64_t rows = int64_t(sc.rows.size());
    // Only the tile's n keys (padded to the kernels' column multiple) are multiplied: a tile
    // past the end of the keys is short, and block_n may be far larger than the keys there are.
    // Nothing reads a row's scores past its visible keys.
    const int64_t n_pad = round_up(n, k_.column_pad);
    k_.gemm_scaled(int(rows), int(n_pad), int(dqk_), grp.score_scale, sc.q.data(), int(dqk_), kt, int(bn_pad_), s,
                   int(bn_pad_));
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t visible = std::clamp<int64_t>(sc.rows[r].key_end - key0, 0, n);
      std::fill(s + r * bn_pad_ + visible, s + r * bn_pad_ + n_pad, kNegInf);
    }
  }

  // tile_max[r] = max over the keys of tile t row r sees (-inf if none; NaN if any is NaN).
  void row_max(int64_t t, Scratch& sc, const float* s) const {
    const int64_t key0 = t * g_.block_n;
    for (size_t r = 0; r < sc.rows.size(); ++r) {
      const int64_t visible = std::clamp<int64_t>(sc.rows[r].key_end - key0, 0, g_.block_n);
      sc.visible[r] = visible;
      const float* sr = s + r * size_t(bn_pad_);
      float mx = kNegInf;
      bool nan = false;
      for (int64_t j = 0; j < visible; ++j) {
        mx = sr[j] > mx ? sr[j] : mx;
        nan |= sr[j] != sr[j];
      }
      sc.tile_max[r] = nan ? std::numeric_limits<float>::quiet_NaN() : mx;
    }
  }

  // SPEC section 3: row i votes skip iff mt_i - m_i < ln(lambda) (mt = -inf always votes skip).
  bool all_rows_vote_skip(const Group& grp, const Scratch& sc) const {
    for (size_t r = 0; r < sc.rows.size(); ++r) {
      const float mt = sc.tile_max[r];
      if (mt == kNegInf) continue;
      if (!(mt - sc.m[r] < grp.log_lambda)) return false;
    }
    return true;
  }

  // Online-softmax update of every row with kept tile t (probabilities computed in place in s).
  void update_with_tile(const Group& grp, int64_t t, Scratch& sc, float* s) const {
    const int64_t key0 = t * g_.block_n;
    const int64_t n = std::min<int64_t>(g_.block_n, grp.seqlen_k - key0);
    const float* v = sc.v.data();
    if (shared_) {
      v = shared_->v.data() + shared_index(grp, t) * v_tile_size();
    } else {
      convert_tile(grp.batch, grp.kv_head, grp.seqlen_k, t, nullptr, sc.v.data());
    }

    const int64_t rows = int64_t(sc.rows.size());
    int64_t full_from = rows;  // rows [full_from, rows) see the whole tile
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t visible = sc.visible[r];
      if (visible == 0) continue;  // nothing of this tile reaches row r
      if (visible == n && full_from == rows) full_from = r;
      const float m_old = sc.m[r];
      const float m_new = nan_max(m_old, sc.tile_max[r]);
      const float m_use = m_new == kNegInf ? 0.0f : m_new;
      const float alpha = k_.exp_scalar(m_old - m_use);
      float* sr = s + r * bn_pad_;
      const float row_sum = k_.exp_row(sr, m_use, sr, int(visible));
      sc.l[r] = sc.l[r] * alpha + row_sum;
      if (alpha != 1.0f) {
        float* orow = sc.o.data() + r * dv_pad_;
        for (int64_t d = 0; d < dv_pad_; ++d) orow[d] *= alpha;
      }
      sc.m[r] = m_new;
    }
    // P . V: rows that see only part of the tile use only their visible keys, so a value a
    // row cannot see (NaN included) never reaches it.
    for (int64_t r = 0; r < full_from; ++r) {
      const int64_t visible = sc.visible[r];
      if (visible == 0) continue;
      k_.gemm_acc(1, int(dv_pad_), int(visible), s + r * bn_pad_, int(bn_pad_), v, int(dv_pad_),
                  sc.o.data() + r * dv_pad_, int(dv_pad_));
    }
    if (full_from < rows) {
      k_.gemm_acc(int(rows - full_from), int(dv_pad_), int(n), s + full_from * bn_pad_, int(bn_pad_), v,
                  int(dv_pad_), sc.o.data() + full_from * dv_pad_, int(dv_pad_));
    }
  }

  // Adds the finished chunk (m, l, o) into the running total through their log-sum-exp.
  void merge_chunk(Scratch& sc, bool total_empty) const {
    const int64_t rows = int64_t(sc.rows.size());
    for (int64_t r = 0; r < rows; ++r) {
      float* ot = sc.o_total.data() + r * dv_pad_;
      const float* oc = sc.o.data() + r * dv_pad_;
      if (sc.m[r] == kNegInf) continue;  // the chunk saw nothing of this row
      if (total_empty || sc.m_total[r] == kNegInf) {
        sc.m_total[r] = sc.m[r];
        sc.l_total[r] = sc.l[r];
        std::copy_n(oc, dv_pad_, ot);
        continue;
      }
      const float big = nan_max(sc.m_total[r], sc.m[r]);
      const float a = k_.exp_scalar(sc.m_total[r] - big);
      const float b = k_.exp_scalar(sc.m[r] - big);
      sc.l_total[r] = sc.l_total[r] * a + sc.l[r] * b;
      for (int64_t d = 0; d < dv_pad_; ++d) ot[d] = ot[d] * a + oc[d] * b;
      sc.m_total[r] = big;
    }
  }

  // O = o / l, LSE = m + ln(l); rows with nothing visible get O = 0, LSE = -inf.
  void write_rows(const Group& grp, const Scratch& sc) const {
    for (size_t r = 0; r < sc.rows.size(); ++r) {
      const float l = sc.l_total[r];
      const float m = sc.m_total[r];
      const float* o = sc.o_total.data() + r * size_t(dv_pad_);
      const bool empty = m == kNegInf || l == 0.0f;
      const float inv = empty ? 0.0f : grp.v_scale / l;
      for (int64_t d = 0; d < dv_; ++d)
        detail::store_element(a_.out.data, a_.out.dtype, sc.rows[r].out_offset + d, empty ? 0.0f * o[d] : o[d] * inv);
      if (a_.lse.data)
        static_cast<float*>(a_.lse.data)[sc.rows[r].lse_offset] = empty ? kNegInf : m + std::log(l);
    }
  }

  void write_empty_rows(const Scratch& sc) const {
    for (const Row& row : sc.rows) {
      for (int64_t d = 0; d < dv_; ++d) detail::store_element(a_.out.data, a_.out.dtype, row.out_offset + d, 0.0f);
      if (a_.lse.data) static_cast<float*>(a_.lse.data)[row.lse_offset] = kNegInf;
    }
  }

  const blasst_args& a_;
  blasst_geometry g_;
  const TileKernels& k_;
  const SharedTiles* shared_ = nullptr;
  int64_t dqk_, dv_, bn_pad_, dv_pad_;
  float scale_;
};

// Runs fn() on `threads` threads (the caller's included) and waits for all of them.
template <class Fn>
void run_on_threads(int64_t threads, Fn&& fn) {
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(fn);
  fn();
  for (auto& th : pool) th.join();
}

// Largest fp32 copy of K/V (in floats) the prefill path shares across groups: 512 MiB.
constexpr int64_t kMaxSharedFloats = int64_t(1) << 27;

// A work item: (batch entry, group index within the entry).
struct Item {
  int64_t batch;
  int64_t group;
};

}  // namespace

Status run(const blasst_args& a, blasst_phase phase, const blasst_geometry& g, blasst_run_info* info) {
  const bool decode = phase == BLASST_PHASE_DECODE;
  const int64_t q_per_kv = a.num_q_heads / a.num_kv_heads;
  const int64_t row_blocks = decode ? 1 : ceil_div(a.max_seqlen_q, g.block_m);  // prefill groups per head
  const int64_t groups = detail::groups_per_entry(a, phase, g.block_m);
  const int64_t chunks = decode ? detail::decode_chunks(a, g.block_m) : 1;  // decode groups per KV head
  const int64_t tiles_per_group = ceil_div(a.max_seqlen_k, g.block_n);
  const int64_t stat_heads = decode ? a.num_kv_heads : a.num_q_heads;

  if (a.decisions) std::fill_n(a.decisions, a.batch * groups * tiles_per_group, uint8_t(BLASST_TILE_NOT_VISITED));

  // Work items, the causally heaviest row blocks first for better balance.
  std::vector<Item> items;
  int64_t max_rows = 1;
  for (int64_t b = 0; b < a.batch; ++b) {
    const int64_t lq = detail::seqlen_q(a, b);
    if (lq == 0) continue;
    if (decode) {
      const int64_t pairs = lq * q_per_kv;
      const int64_t chunk = g.block_m > 0 ? std::min<int64_t>(g.block_m, pairs) : pairs;
      for (int64_t hk = 0; hk < a.num_kv_heads; ++hk)
        for (int64_t c = 0; c < ceil_div(pairs, chunk); ++c) items.push_back({b, hk * chunks + c});
      max_rows = std::max(max_rows, chunk);
    } else {
      for (int64_t blk = ceil_div(lq, g.block_m) - 1; blk >= 0; --blk)
        for (int64_t h = 0; h < a.num_q_heads; ++h) items.push_back({b, h * row_blocks + blk});
      max_rows = std::max<int64_t>(max_rows, std::min<int64_t>(lq, g.block_m));
    }
  }

  const int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t threads = std::clamp<int64_t>(a.num_threads > 0 ? a.num_threads : hw, 1, std::max<int64_t>(1, int64_t(items.size())));
  GroupRunner runner(a, g);

  // Prefill reads each K/V tile of a KV head once per row block and query head: convert the
  // tiles once, in parallel, when that reuse exists and the copy stays modest.
  SharedTiles shared;
  const int64_t reuse = decode ? 1 : q_per_kv * row_blocks;
  const int64_t tile_floats = runner.kt_tile_size() + runner.v_tile_size();
  const int64_t shared_tiles = int64_t(a.batch) * a.num_kv_heads * tiles_per_group;
  if (reuse > 1 && shared_tiles * tile_floats <= kMaxSharedFloats) {
    shared.tiles = tiles_per_group;
    shared.kt.resize(size_t(shared_tiles * runner.kt_tile_size()));
    shared.v.resize(size_t(shared_tiles * runner.v_tile_size()));
    std::atomic<int64_t> next_tile{0};
    run_on_threads(threads, [&]() {
      for (int64_t i = next_tile.fetch_add(1); i < shared_tiles; i = next_tile.fetch_add(1)) {
        const int64_t t = i % tiles_per_group;
        const int64_t hk = (i / tiles_per_group) % a.num_kv_heads;
        const int64_t b = i / (tiles_per_group * a.num_kv_heads);
        const int64_t lk = detail::seqlen_k(a, b);
        if (t * g.block_n >= lk) continue;
        runner.convert_tile(b, hk, lk, t, shared.kt.data() + i * runner.kt_tile_size(),
                            shared.v.data() + i * runner.v_tile_size());
      }
    });
    runner.use_shared(&shared);
  }

  std::vector<GroupStats> item_stats(items.size());
  std::atomic<size_t> next{0};

  auto worker = [&]() {
    Scratch sc;
    runner.size_scratch(sc, max_rows);
    for (size_t it = next.fetch_add(1); it < items.size(); it = next.fetch_add(1)) {
      const Item item = items[it];
      const int64_t b = item.batch;
      const int64_t lq = detail::seqlen_q(a, b);
      const int64_t lk = detail::seqlen_k(a, b);
      Group grp{};
      grp.batch = b;
      grp.seqlen_k = lk;
      grp.trace_index = (b * groups + item.group) * tiles_per_group;
      // The group's (query head, row) pairs: decode takes pairs [pair0, pair_end) of its KV head,
      // head-major (pair p = (head0 + p / lq, row p % lq)); prefill rows [row0, row_end) of one head.
      int64_t head0, pair0 = 0, pair_end = 0, row0 = 0, row_end = 0;
      if (decode) {
        grp.kv_head = int32_t(item.group / chunks);
        grp.stat_head = grp.kv_head;
        head0 = int64_t(grp.kv_head) * q_per_kv;
        const int64_t pairs = lq * q_per_kv;
        const int64_t chunk = g.block_m > 0 ? std::min<int64_t>(g.block_m, pairs) : pairs;
        pair0 = (item.group % chunks) * chunk;
        pair_end = std::min(pairs, pair0 + chunk);
      } else {
        const int64_t h = item.group / row_blocks;
        grp.kv_head = int32_t(h / q_per_kv);
        grp.stat_head = int32_t(h);
        head0 = h;
        row0 = (item.group % row_blocks) * g.block_m;
        row_end = std::min(lq, row0 + g.block_m);
      }
      const double factor = detail::threshold_factor(a, b, grp.kv_head);
      grp.skip_enabled = skipping_enabled(factor, lk);
      grp.log_lambda = grp.skip_enabled ? float(std::log(factor / double(lk))) : kNegInf;
      grp.score_scale = runner.score_scale(grp.kv_head);
      grp.v_scale = detail::dequant_scale(a, a.scales.v, grp.kv_head);

      // Rows ordered by query position, so visible key ranges never shrink along the list.
      sc.rows.clear();
      auto add_row = [&](int64_t i, int64_t h) {
        Row row{};
        row.q_offset = detail::q_side_offset(a, a.q, b, i, h);
        row.out_offset = detail::q_side_offset(a, a.out, b, i, h);
        row.lse_offset = a.lse.data ? detail::q_side_offset(a, a.lse, b, i, h) : 0;
        row.key_end = a.causal ? std::clamp<int64_t>(lk - lq + i + 1, 0, lk) : lk;
        sc.rows.push_back(row);
      };
      if (decode) {
        for (int64_t i = 0; i < lq; ++i)
          for (int64_t p = pair0; p < pair_end; ++p)
            if (p % lq == i) add_row(i, head0 + p / lq);
      } else {
        for (int64_t i = row0; i < row_end; ++i) add_row(i, head0);
      }
      item_stats[it] = runner.run(grp, sc);
    }
  };

  run_on_threads(threads, worker);

  info->engine = BLASST_ENGINE_CPU;
  info->geometry = g;
  info->visited = 0;
  info->skipped = 0;
  if (a.stats_per_head) std::fill_n(a.stats_per_head, stat_heads * 2, int64_t(0));
  for (size_t it = 0; it < items.size(); ++it) {
    info->visited += item_stats[it].visited;
    info->skipped += item_stats[it].skipped;
    if (a.stats_per_head) {
      const int64_t head = decode ? items[it].group / chunks : items[it].group / row_blocks;
      a.stats_per_head[2 * head] += item_stats[it].visited;
      a.stats_per_head[2 * head + 1] += item_stats[it].skipped;
    }
  }
  return Status::ok();
}

}  // namespace blasst::cpu
