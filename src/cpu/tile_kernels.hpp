// fp32 tile kernels of the CPU engine, compiled once per instruction set
// (tile_kernels.cpp with BLASST_KERNEL_ISA = generic, avx2, avx512) and picked at run time.
#pragma once

#include <cstdint>

namespace blasst::cpu {

struct TileKernels {
  const char* isa;
  // Column count every B/C row handed to gemm_acc is padded to (a multiple of the
  // kernel's vector width); padded columns of B must be finite (zero).
  int column_pad;
  // C[M, N] += A[M, K] * B[K, N]; row-major with leading dimensions lda, ldb, ldc.
  // N must be a multiple of column_pad.
  void (*gemm_acc)(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc);
  // C[M, N] = alpha * (A[M, K] * B[K, N]), the product accumulated in fp32 then scaled once.
  void (*gemm_scaled)(int m, int n, int k, float alpha, const float* a, int lda, const float* b, int ldb, float* c,
                      int ldc);
  // p[j] = exp(s[j] - row_max) for j < n; returns the sum of p (fp32, left to right per lane).
  float (*exp_row)(const float* s, float row_max, float* p, int n);
  // exp(x), the same function exp_row uses (for rescale factors that must match it).
  float (*exp_scalar)(float x);
};

// The fastest kernel set this CPU supports (BLASST_CPU_ISA=generic|avx2|avx512 overrides).
const TileKernels& tile_kernels();

// Kernel sets by name, for the dispatcher.
const TileKernels& tile_kernels_generic();
const TileKernels& tile_kernels_avx2();
const TileKernels& tile_kernels_avx512();

}  // namespace blasst::cpu
