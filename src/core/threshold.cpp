// Threshold policy (SPEC section 4).
#include <blasst/blasst.hpp>

#include <cmath>
#include <stdexcept>

namespace blasst {

double threshold_lambda(double factor, int64_t seqlen_k) {
  if (seqlen_k <= 0) return INFINITY;
  return factor / double(seqlen_k);
}

bool skipping_enabled(double factor, int64_t seqlen_k) {
  const double lambda = threshold_lambda(factor, seqlen_k);
  return factor > 0 && lambda < 1.0;
}

double SparsityFormula::factor(double target_sparsity) const { return a * std::exp(b * target_sparsity); }

void ThresholdPolicy::set_factor(blasst_phase phase, double factor) {
  if (phase != BLASST_PHASE_PREFILL && phase != BLASST_PHASE_DECODE) throw std::invalid_argument("phase must be prefill or decode");
  if (!std::isfinite(factor) || factor < 0) throw std::invalid_argument("threshold_scale_factor must be finite and >= 0");
  factor_[phase] = factor;
}

void ThresholdPolicy::set_formula(blasst_phase phase, SparsityFormula formula, double target_sparsity) {
  if (!(target_sparsity >= 0 && target_sparsity < 1)) throw std::invalid_argument("target_sparsity must be in [0, 1)");
  if (!std::isfinite(formula.a) || !std::isfinite(formula.b) || formula.a < 0)
    throw std::invalid_argument("formula coefficients must be finite with a >= 0");
  set_factor(phase, target_sparsity == 0 ? 0.0 : formula.factor(target_sparsity));
}

void ThresholdPolicy::set_head_factors(blasst_phase phase, int layer, std::vector<float> per_kv_head) {
  if (phase != BLASST_PHASE_PREFILL && phase != BLASST_PHASE_DECODE) throw std::invalid_argument("phase must be prefill or decode");
  for (float f : per_kv_head)
    if (!std::isfinite(f) || f < 0) throw std::invalid_argument("per-head factors must be finite and >= 0");
  head_factors_[{int(phase), layer}] = std::move(per_kv_head);
}

double ThresholdPolicy::factor(blasst_phase phase) const { return factor_[phase == BLASST_PHASE_DECODE ? 1 : 0]; }

blasst_threshold ThresholdPolicy::for_call(blasst_phase phase, int layer) const {
  blasst_threshold t{};
  t.threshold_scale_factor = float(factor(phase));
  auto it = head_factors_.find({int(phase), layer});
  if (it != head_factors_.end()) t.per_kv_head_factor = it->second.data();
  return t;
}

}  // namespace blasst
