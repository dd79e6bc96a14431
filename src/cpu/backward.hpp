// The CPU engine's backward pass (blasst_backward): exact fp64 gradients of BLASST attention
// given the forward's tile decisions.
#pragma once

#include <blasst/blasst.hpp>

namespace blasst::cpu {

// dq, dk, dv of a validated call (validate_backward passed).
Status backward(const blasst_args& args, const blasst_backward_args& grads);

}  // namespace blasst::cpu
