// The door from the API layer to the CUDA engines. Built only when nvcc is found
// (BLASST_HAVE_CUDA); api.cpp falls back to "not built" answers otherwise.
#pragma once

#include <blasst/blasst.hpp>

namespace blasst::cuda {

// A CUDA device is present and usable.
bool device_available();

// p points to device (or managed) memory.
bool is_device_pointer(const void* p);

// Runs one call on the GPU. Called after validate_shape_args passed; checks what only the
// GPU engines restrict (dtype, head dims, phase) and answers BLASST_ERROR_UNSUPPORTED
// otherwise. Reports the engine and geometry it used in info (never NULL here).
Status run(const blasst_args& args, blasst_phase phase, blasst_run_info* info);

// Bytes of device workspace run() needs for these arguments (split-KV partial results).
size_t workspace_size(const blasst_args& args, blasst_phase phase);

}  // namespace blasst::cuda
