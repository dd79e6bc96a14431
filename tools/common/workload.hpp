// Structured synthetic attention inputs whose scores look like those of a trained LLM, so
// that skip-softmax sparsity measured on them is meaningful:
//   - an attention sink: key 0 scores high for every query (and carries a small value);
//   - local windows: RoPE-like rotations of shared frequencies make a query similar to the
//     keys just before (and after) its own position, with a width that varies per head;
//   - topics: keys come in segments sharing a topic vector; a query likes its own segment
//     and one other segment it "refers to";
//   - heavy-tailed content noise (per-key norms spread log-normally, rare outlier keys);
//   - retrieval: a few far keys each matched exactly by one query;
//   - per-head sharpness (an inverse temperature), so sparsity differs between heads.
// Logits scale * q.k stay within about [-10, 20] with the default scale 1/sqrt(D).
//
// Output (fp32, contiguous, C order):
//   q [B, Lq, Hq, D]   k [B, Lk, Hkv, D]   v [B, Lk, Hkv, Dv]
// Query row i sits at absolute position Lk - Lq + i (bottom-right aligned, as in decode).
// Everything is a deterministic function of the spec and the seed (std::mt19937_64 with the
// project's own uniform/normal transforms, identical on every platform and standard library).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace blasst::tools {

struct WorkloadSpec {
  int64_t batch = 1, lq = 1024, lk = 1024, hq = 8, hkv = 2, d = 128, dv = 128;
  uint64_t seed = 1;

  // Strength of each component, in logits (before the per-head sharpness).
  double sink = 8.0;           // score of key 0 (x 0.6..1.4 per head); other keys get -0.25x that
  double local = 6.0;          // peak of the local window
  double topic = 2.0;          // own-segment bonus; the referred segment gets 0.8x this
  double noise = 0.7;          // std-dev of the content term for a key of median norm
  double retrieval = 10.0;     // score of a retrieval key for its query
  double sharpness_min = 0.8;  // per-head inverse temperature, log-spaced over the heads
  double sharpness_max = 2.0;
};

struct Workload {
  WorkloadSpec spec;
  std::vector<float> q, k, v;
};

// Throws std::invalid_argument for non-positive sizes.
Workload generate_workload(const WorkloadSpec& spec);

// Deterministic random numbers shared by the tools and tests.
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next();
  double uniform();                // [0, 1)
  double normal();                 // N(0, 1), Box-Muller
  int64_t below(int64_t n);        // uniform integer in [0, n)

 private:
  std::mt19937_64 engine_;
  bool has_spare_ = false;
  double spare_ = 0.0;
};

}  // namespace blasst::tools
