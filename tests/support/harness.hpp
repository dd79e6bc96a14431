// Test harness: structured random inputs, engine calls through the C ABI in any memory
// layout (contiguous, padded, ragged, paged, strided) with poisoned outputs, and comparisons
// against the fp64 reference.
#pragma once

#include <blasst/blasst.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "reference/reference.hpp"

namespace blasst::test {

// BLASST_TEST_SCALE=small shrinks the big shapes (sanitizer builds).
// A contiguous [B, tokens, heads, dim] operand of `numel` elements at `data` (strides in elements).
blasst_tensor contiguous_tensor(const void* data, blasst_dtype dtype, int64_t tokens, int64_t heads, int64_t dim,
                                int64_t numel);

bool small_scale();
// n, or a smaller value under BLASST_TEST_SCALE=small.
int64_t scaled(int64_t n, int64_t small_n);

class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  double uniform() { return double(gen_() >> 11) * 0x1.0p-53; }
  double normal();
  int64_t below(int64_t n) { return int64_t(gen_() % uint64_t(n)); }
  std::mt19937_64& engine() { return gen_; }

 private:
  std::mt19937_64 gen_;
};

struct Shape {
  int batch = 1;
  int hq = 1;
  int hkv = 1;
  int dqk = 64;
  int dv = 64;
  bool causal = false;
  std::vector<int64_t> lq, lk;  // per entry
};
Shape shape(int64_t lq, int64_t lk, int hq, int hkv, int dqk, int dv, bool causal);

// Structure of the random inputs (scores in units of the scaled dot product).
struct Style {
  float sink = 6.0f;          // score boost of key 0 (the attention sink)
  float window = 3.0f;        // score boost near the diagonal (local window)
  float window_width = 24.0f; // in positions
  float tail = 0.03f;         // fraction of heavy-tailed keys and values
  float noise = 1.0f;         // standard deviation of the random part of q
};

// Random Q/K/V with a sink, a local window and heavy tails, rounded to the dtype. Never zeros.
ref::Problem make_problem(const Shape& s, blasst_dtype dtype, uint64_t seed, const Style& style = {});

enum class Layout { Contiguous, Padded, Ragged, Paged, Strided };

struct RunSpec {
  blasst_phase phase = BLASST_PHASE_PREFILL;
  blasst_dtype dtype = BLASST_DTYPE_FLOAT32;
  blasst_geometry geometry{64, 64, BLASST_ORDER_ASCENDING, 1};
  float factor = 0.0f;
  std::vector<float> per_kv_head;
  std::vector<float> per_request;  // one factor per batch entry (replaces the scalar)
  int threads = 2;
  Layout layout = Layout::Contiguous;
  int page_size = 16;
  bool shuffle_pages = true;
  int64_t max_seqlen_q = -1;  // -1: the largest entry
  int64_t max_seqlen_k = -1;
  bool want_lse = true;
  bool want_stats = true;
  bool want_decisions = true;
};

struct EngineResult {
  blasst_status status = BLASST_ERROR_INTERNAL;
  std::string message;
  blasst_run_info info{};
  ref::Output out;                          // values as stored (converted to double)
  std::vector<std::vector<uint32_t>> o_bits; // raw bits of each output element, per entry
  std::vector<std::vector<uint32_t>> lse_bits;
  std::vector<uint8_t> decisions;
  std::vector<int64_t> per_head;
  int64_t unwritten = 0;      // output elements still holding the poison sentinel
  int64_t stray_writes = 0;   // elements outside the outputs' views that changed
  int64_t bad_decisions = 0;  // trace bytes that are not a blasst_decision
  ref::Geometry geometry;     // the reference geometry matching this run
};

EngineResult run_engine(const ref::Problem& p, const RunSpec& spec);

// The reference geometry of a run (resolved defaults, max lengths).
ref::Geometry ref_geometry(const ref::Problem& p, const RunSpec& spec);
ref::Threshold ref_threshold(const RunSpec& spec);

// Checks engine outputs against an fp64 reference: NaN/inf positions equal, values within a
// bound relative to the plain low-precision computation's own error. Returns the number of
// failures (each also reported with ADD_FAILURE).
struct Accuracy {
  double err_o = 0, bound_o = 0, plain_err_o = 0, err_lse = 0;
};
Accuracy expect_close(const ref::Problem& p, blasst_dtype dtype, const EngineResult& e, const ref::Output& ref,
                      const ref::Output& plain, const std::string& what);

// Checks an engine decisions trace against the reference replaying it: visited tiles equal,
// anchors kept, every decision the rule would take on the engine's own history except where
// the margin is within rounding. Also checks statistics against the trace.
// Returns the number of decisions that differ within rounding.
int64_t expect_decisions_consistent(const ref::Blasst& replayed, const EngineResult& e, const std::string& what);

// Bitwise equality of two runs' outputs (and LSE).
void expect_bitwise_equal(const EngineResult& a, const EngineResult& b, const std::string& what);

// Full check of one configuration: engine run, replayed reference, decisions, stats, outputs.
struct Checked {
  EngineResult engine;
  ref::Blasst reference;  // the reference following the engine's decisions
  int64_t rounding_flips = 0;
};
Checked run_and_check(const ref::Problem& p, const RunSpec& spec, const std::string& what);

}  // namespace blasst::test
