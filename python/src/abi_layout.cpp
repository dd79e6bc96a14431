// Layout facts of the C ABI structs, so that the ctypes mirror in blasst/_lib.py can check
// itself against the compiled library at import time instead of corrupting memory on a
// mismatch. Order of the values: see kLayout below (blasst/_lib.py reads them in this order).
#include <blasst/blasst.h>

#include <cstddef>
#include <cstdint>

namespace {

const int64_t kLayout[] = {
    int64_t(sizeof(blasst_args)),
    int64_t(sizeof(blasst_tensor)),
    int64_t(sizeof(blasst_run_info)),
    int64_t(sizeof(blasst_geometry)),
    int64_t(offsetof(blasst_args, cu_seqlens_q)),
    int64_t(offsetof(blasst_args, block_table)),
    int64_t(offsetof(blasst_args, q)),
    int64_t(offsetof(blasst_args, lse)),
    int64_t(offsetof(blasst_args, scale)),
    int64_t(offsetof(blasst_args, threshold)),
    int64_t(offsetof(blasst_args, scales)),
    int64_t(offsetof(blasst_args, geometry)),
    int64_t(offsetof(blasst_args, engine)),
    int64_t(offsetof(blasst_args, stream)),
    int64_t(offsetof(blasst_args, stats_per_head)),
    int64_t(offsetof(blasst_args, decisions_numel)),
    int64_t(offsetof(blasst_args, workspace)),
    int64_t(offsetof(blasst_args, workspace_bytes)),
    int64_t(offsetof(blasst_run_info, geometry)),
    int64_t(offsetof(blasst_run_info, visited)),
    int64_t(sizeof(blasst_backward_args)),
    int64_t(offsetof(blasst_backward_args, dout)),
};

}  // namespace

extern "C" {

// Writes up to `capacity` layout values to out and returns how many exist.
__attribute__((visibility("default"))) int32_t blasst_py_abi_layout(int64_t* out, int32_t capacity) {
  const int32_t n = int32_t(sizeof(kLayout) / sizeof(kLayout[0]));
  for (int32_t i = 0; i < n && i < capacity; ++i) out[i] = kLayout[i];
  return n;
}

// 1 when this library was built with the CUDA engines.
__attribute__((visibility("default"))) int32_t blasst_py_built_with_cuda(void) { return BLASST_PY_CUDA ? 1 : 0; }

}  // extern "C"
