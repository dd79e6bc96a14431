// blasst: C++ API over the C ABI of blasst.h.
//
// The C++ calls take the same argument structs as the C ABI and return a Status that
// carries the message, so C++ callers need no thread-local error lookups.
#pragma once

#include <blasst/blasst.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace blasst {

class Status {
 public:
  Status() = default;
  Status(blasst_status code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status ok() { return {}; }

  bool is_ok() const { return code_ == BLASST_OK; }
  explicit operator bool() const { return is_ok(); }
  blasst_status code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  blasst_status code_ = BLASST_OK;
  std::string message_;
};

// Arguments with defaults filled in (struct_size, engine AUTO, default geometry).
blasst_args default_args();

Status prefill(const blasst_args& args, blasst_run_info* info = nullptr);
Status decode(const blasst_args& args, blasst_run_info* info = nullptr);
Status attention(blasst_phase phase, const blasst_args& args, blasst_run_info* info = nullptr);
// Gradients of a forward call (blasst_backward).
Status backward(const blasst_args& args, const blasst_backward_args& grads);

// SPEC section 4: lambda = factor / Lk; skipping is on only for 0 < lambda < 1.
double threshold_lambda(double threshold_scale_factor, int64_t seqlen_k);
bool skipping_enabled(double threshold_scale_factor, int64_t seqlen_k);

// Calibrated checkpoints give factor = a * exp(b * target_sparsity) per phase.
struct SparsityFormula {
  double a = 0.0;
  double b = 0.0;
  double factor(double target_sparsity) const;
};

// Threshold policy of a model: one factor per phase (given directly, or from a calibrated
// formula and a target sparsity), optionally one factor per (layer, KV head).
class ThresholdPolicy {
 public:
  void set_factor(blasst_phase phase, double factor);
  void set_formula(blasst_phase phase, SparsityFormula formula, double target_sparsity);
  void set_head_factors(blasst_phase phase, int layer, std::vector<float> per_kv_head);

  // The factor of a phase (0 = dense).
  double factor(blasst_phase phase) const;
  // The threshold argument of one call. The per-head array, if any, stays owned by the policy.
  blasst_threshold for_call(blasst_phase phase, int layer) const;

 private:
  double factor_[2] = {0.0, 0.0};
  std::map<std::pair<int, int>, std::vector<float>> head_factors_;  // (phase, layer) -> [Hkv]
};

}  // namespace blasst
