// Argument validation shared by every engine: a call that passes touches only memory
// inside the numel of each tensor and reads only valid page and length entries.
#pragma once

#include <blasst/blasst.hpp>

namespace blasst::detail {

// Geometry with defaults applied (block_n, splits >= 1; block_m >= 1 in prefill, 0 = one group
// per KV head in decode).
blasst_geometry resolve_geometry(const blasst_geometry& requested, blasst_phase phase);

// Checks the call's scalars, shapes, strides and flags (everything readable without
// touching the length arrays, block table or tensors).
Status validate_shape_args(const blasst_args& args, blasst_phase phase);

// Checks the host-side length arrays, block table and every tensor's extent against its
// numel. Only valid for host memory (the CPU engine).
Status validate_host_contents(const blasst_args& args, blasst_phase phase,
                              const blasst_geometry& geometry);

// Checks a backward call: the forward's arguments (shapes, host contents), the gradients'
// tensors and extents (laid out as the operands they belong to), the forward's geometry and its
// decision trace. Host memory only (the CPU engine).
Status validate_backward(const blasst_args& args, const blasst_backward_args& grads);

// The extents a GPU call can check without reading device memory: Q, out and LSE of padded
// layouts, K and V of padded layouts, and every page of a paged cache, against each numel.
// (The lengths, offsets and block table are device memory there and are not read.)
Status validate_device_extents(const blasst_args& args);

}  // namespace blasst::detail
