// The door from the API layer to the CUDA engines. Built only when nvcc is found
// (BLASST_HAVE_CUDA); api.cpp falls back to "not built" answers otherwise.
#pragma once

#include <blasst/blasst.hpp>

namespace blasst::cuda {

// A CUDA device is present and usable.
bool device_available();

// p points to device (or managed) memory.
bool is_device_pointer(const void* p);

// The current device is of compute capability 9.0 (Hopper: the sm_90a kernels run there).
bool device_is_sm90();

// t.data is 16-byte aligned and its strides are multiples of 8 elements (16-bit types).
bool aligned16(const blasst_tensor& t);

// Runs one call on the GPU. Called after validate_shape_args passed; checks what only the
// GPU engines restrict (dtype, head dims, phase) and answers BLASST_ERROR_UNSUPPORTED
// otherwise. Reports the engine and geometry it used in info (never NULL here).
Status run(const blasst_args& args, blasst_phase phase, blasst_run_info* info);

// Bytes of device workspace run() needs for these arguments (split-KV partial results).
size_t workspace_size(const blasst_args& args, blasst_phase phase);

}  // namespace blasst::cuda
