// An fp64 reference of SPEC.md, independent of the engines: plain dense attention, and
// BLASST attention at a given geometry (its own skip decisions, or a replay of an engine's).
#pragma once

#include <blasst/blasst.h>

#include <cstdint>
#include <vector>

namespace blasst::ref {

// One attention call in canonical form. Values are stored as float after rounding to the
// input dtype, so they are exactly what an engine reads.
struct Problem {
  int batch = 1;
  int hq = 1;
  int hkv = 1;
  int dqk = 64;
  int dv = 64;
  bool causal = false;
  float scale = 0.0f;  // 0 = 1/sqrt(dqk), as in blasst_args
  std::vector<int64_t> lq, lk;
  // Per entry: q [lq][hq][dqk], k [lk][hkv][dqk], v [lk][hkv][dv].
  std::vector<std::vector<float>> q, k, v;

  int group_size() const { return hq / hkv; }
  float scale32() const;   // the fp32 scale an engine multiplies scores by
  double scale64() const;  // the same scale in fp64
  // Number of keys row i of entry b sees: keys [0, visible_end).
  int64_t visible_end(int b, int64_t i) const;
  float qv(int b, int64_t i, int h, int d) const { return q[b][(size_t(i) * hq + h) * dqk + d]; }
  float kv(int b, int64_t j, int h, int d) const { return k[b][(size_t(j) * hkv + h) * dqk + d]; }
  float vv(int b, int64_t j, int h, int d) const { return v[b][(size_t(j) * hkv + h) * dv + d]; }
};

// Attention outputs per entry: o [lq][hq][dv], lse [lq][hq] (natural log).
struct Output {
  std::vector<std::vector<double>> o;
  std::vector<std::vector<double>> lse;
};

// Plain dense attention in fp64 over the visible keys (bottom-right causal); rows that see
// no key give O = 0, LSE = -inf. NaN and inf flow through as IEEE arithmetic makes them.
Output dense(const Problem& p);

struct Geometry {
  blasst_phase phase = BLASST_PHASE_PREFILL;
  int block_m = 128;
  int block_n = 128;
  blasst_order order = BLASST_ORDER_ASCENDING;
  int splits = 1;
  int64_t max_seqlen_q = 0;  // layout of the decisions trace: groups per entry
  int64_t max_seqlen_k = 0;  // and tiles per group

  int64_t groups_per_entry(int hq, int hkv) const;
  int64_t tiles() const;
};

struct Threshold {
  float factor = 0.0f;
  std::vector<float> per_kv_head;  // empty = the scalar factor for every KV head
  std::vector<float> per_request;  // empty = the scalar factor for every batch entry
};

struct Blasst {
  Output out;                     // fp64 attention over the kept tiles
  std::vector<uint8_t> decisions; // [batch][groups][tiles] blasst_decision (followed)
  std::vector<uint8_t> rule;      // what the rule decides given the history actually followed
  // Per slot: how far the tile's decision is from flipping, |mt - m - ln(lambda)| of the row(s)
  // that would have to flip (+inf where no rounding can flip it, e.g. anchors), and the
  // rounding tolerance of fp32 scores for that tile.
  std::vector<float> margin;
  std::vector<float> tol;
  std::vector<uint8_t> anchor;    // 1 where the slot is an anchor of its group or chunk
  int64_t visited = 0;
  int64_t skipped = 0;
  std::vector<int64_t> per_head;  // [H][2] visited, skipped: H = hq (prefill) or hkv (decode)
  int64_t groups = 0;
  int64_t tiles = 0;
};

// BLASST in fp64 at the given geometry. Decisions use fp32 scores (fp32 dot products, then
// the scale) and compare in fp32 against (float)log(factor / Lk). With `replay`, the tiles
// kept and skipped are the replay's (same layout as the decisions); `rule` then records what
// the rule says at each tile given that history, and `margin` how close it was.
Blasst blasst(const Problem& p, const Geometry& g, const Threshold& t, const uint8_t* replay = nullptr);

// A plain low-precision computation of the same function (what a naive framework attention
// does in that dtype): scores rounded to the dtype, softmax in fp32 rounded to the dtype,
// P.V accumulated in fp32 and rounded. With `decisions`, only kept tiles count.
Output plain(const Problem& p, blasst_dtype dtype, const Geometry* g = nullptr,
             const uint8_t* decisions = nullptr);

// Rounds a float to the dtype and back.
float round_to(blasst_dtype dtype, float x);

}  // namespace blasst::ref
