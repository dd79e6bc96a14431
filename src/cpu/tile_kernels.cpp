// fp32 tile kernels: register-blocked GEMM (C += A * B) and a vectorizable exp.
// This file is compiled once per instruction set; BLASST_KERNEL_ISA names the set and
// the compiler flags of its object library pick the vector width. The loops are written so
// that the compiler vectorizes them with no intrinsics: fixed-size inner loops over
// kColumns output columns, kRows rows held in registers.
#include "cpu/tile_kernels.hpp"

#include <cstring>

#ifndef BLASST_KERNEL_ISA
#error "BLASST_KERNEL_ISA must name the instruction set"
#endif

#define BLASST_CAT_(a, b) a##b
#define BLASST_CAT(a, b) BLASST_CAT_(a, b)
#define BLASST_STR_(a) #a
#define BLASST_STR(a) BLASST_STR_(a)

namespace blasst::cpu {
namespace {

// Register tile: kRows x kColumns accumulators (12 vector registers on each ISA).
#if defined(__AVX512F__)
constexpr int kRows = 6, kColumns = 32;
#elif defined(__AVX2__)
constexpr int kRows = 6, kColumns = 16;
#else
constexpr int kRows = 4, kColumns = 8;
#endif

// C[Rows, kColumns] (+)= alpha * A[Rows, k] * B[k, kColumns]; kAccumulate adds to C.
template <int Rows, bool kAccumulate>
inline void micro_tile(int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc, float alpha) {
  float acc[Rows][kColumns];
  for (int r = 0; r < Rows; ++r)
    for (int j = 0; j < kColumns; ++j) acc[r][j] = kAccumulate ? c[r * ldc + j] : 0.0f;
  for (int p = 0; p < k; ++p) {
    const float* brow = b + p * ldb;
    for (int r = 0; r < Rows; ++r) {
      const float ar = a[r * lda + p];
      for (int j = 0; j < kColumns; ++j) acc[r][j] += ar * brow[j];
    }
  }
  for (int r = 0; r < Rows; ++r)
    for (int j = 0; j < kColumns; ++j) c[r * ldc + j] = kAccumulate ? acc[r][j] : acc[r][j] * alpha;
}

template <bool kAccumulate>
void gemm(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc, float alpha) {
  for (int j0 = 0; j0 < n; j0 += kColumns) {
    int i0 = 0;
    for (; i0 + kRows <= m; i0 += kRows)
      micro_tile<kRows, kAccumulate>(k, a + i0 * lda, lda, b + j0, ldb, c + i0 * ldc + j0, ldc, alpha);
    // the remaining rows in one shorter tile (each element sees the same arithmetic)
    const float* ar = a + i0 * lda;
    float* cr = c + i0 * ldc + j0;
    switch (m - i0) {
      case 5: micro_tile<5, kAccumulate>(k, ar, lda, b + j0, ldb, cr, ldc, alpha); break;
      case 4: micro_tile<4, kAccumulate>(k, ar, lda, b + j0, ldb, cr, ldc, alpha); break;
      case 3: micro_tile<3, kAccumulate>(k, ar, lda, b + j0, ldb, cr, ldc, alpha); break;
      case 2: micro_tile<2, kAccumulate>(k, ar, lda, b + j0, ldb, cr, ldc, alpha); break;
      case 1: micro_tile<1, kAccumulate>(k, ar, lda, b + j0, ldb, cr, ldc, alpha); break;
      default: break;
    }
  }
}

void gemm_acc(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc) {
  gemm<true>(m, n, k, a, lda, b, ldb, c, ldc, 1.0f);
}

void gemm_scaled(int m, int n, int k, float alpha, const float* a, int lda, const float* b, int ldb, float* c,
                 int ldc) {
  gemm<false>(m, n, k, a, lda, b, ldb, c, ldc, alpha);
}

inline float bits_as_float(int32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// exp(x) in fp32, ~1 ulp (range reduction by ln 2 in two parts, degree-6 polynomial).
// exp(-inf) = 0, exp(NaN) = NaN, results below 2^-126 flush to 0, x > 88 gives inf
// (the engine only takes exp of values <= 0 or non-finite ones).
inline float exp_approx(float x) {
  // Clamped so NaN lands on -87 too: the arithmetic below then stays finite (converting NaN
  // to int is undefined) and the last select returns the NaN itself.
  float xc = x > -87.0f ? x : -87.0f;
  xc = xc < 88.0f ? xc : 88.0f;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (xc * 1.44269504088896341f + magic) - magic;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  const float er = poly * (r * r) + r + 1.0f;
  const float scaled = er * bits_as_float((int32_t(n) + 127) << 23);
  float result = x < -87.0f ? 0.0f : scaled;
  result = x > 88.0f ? __builtin_inff() : result;
  return x != x ? x : result;
}

float exp_row(const float* s, float row_max, float* p, int n) {
  // Lane-wise partial sums in a fixed order so the result does not depend on threads.
  float partial[kColumns] = {};
  int j = 0;
  for (; j + kColumns <= n; j += kColumns) {
    for (int l = 0; l < kColumns; ++l) {
      const float e = exp_approx(s[j + l] - row_max);
      p[j + l] = e;
      partial[l] += e;
    }
  }
  for (int l = 0; j < n; ++j, ++l) {
    const float e = exp_approx(s[j] - row_max);
    p[j] = e;
    partial[l] += e;
  }
  float sum = 0.0f;
  for (int l = 0; l < kColumns; ++l) sum += partial[l];
  return sum;
}

float exp_scalar(float x) { return exp_approx(x); }

}  // namespace

const TileKernels& BLASST_CAT(tile_kernels_, BLASST_KERNEL_ISA)() {
  static const TileKernels kernels{BLASST_STR(BLASST_KERNEL_ISA), kColumns, gemm_acc, gemm_scaled, exp_row, exp_scalar};
  return kernels;
}

}  // namespace blasst::cpu
