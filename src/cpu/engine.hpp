// The CPU engine: the exact reference of SPEC.md and a threaded fallback.
#pragma once

#include <blasst/blasst.hpp>

namespace blasst::cpu {

// Runs one validated call (validate_shape_args and validate_host_contents passed) at the
// given resolved geometry. Fills info (never NULL here).
Status run(const blasst_args& args, blasst_phase phase, const blasst_geometry& geometry,
           blasst_run_info* info);

}  // namespace blasst::cpu
