// The key order of FP8 P V (fp8_pv.cuh), in a header the host can compile too (a CPU test checks
// it against CuTe's wgmma fragment layouts).
//
// The 8-bit A fragment of a 64 x N x 32 wgmma gives thread t (quad lane q = t % 4) slots
// k = 4q + v0 + 16 v2 (v0 < 4, v2 < 2) of rows r and r + 8, in four registers of four slots: register
// (half + 2 v2) holds slots 4q + [0, 4) + 16 v2 of row r + 8 half. The fp32 accumulator of S gives
// the thread columns n = 2q + c0 + 8 j (c0 < 2) of the same rows, in flat register c0 + 2 half + 4 j.
// Slot k of each 32-key block holding key fp8_pv_key_of_slot(k) makes every byte of the A fragment
// a score the thread already holds (fp8_pv_score_of_byte): no shuffles, one select per byte.
#pragma once

#if defined(__CUDACC__)
#define BLASST_FP8_PV_HD __host__ __device__
#else
#define BLASST_FP8_PV_HD
#endif

namespace blasst::cuda::sm90 {

// The key (0..31 within a 32-key block) whose P and V row slot k of the block holds.
BLASST_FP8_PV_HD constexpr int fp8_pv_key_of_slot(int k) {
  const int q = (k % 16) / 4, v0 = k % 4, v2 = k / 16;
  return 16 * v2 + 8 * (v0 >> 1) + 2 * q + (v0 & 1);
}

// The thread's S accumulator (flat register index) that goes into byte `byte` (0..3) of A-fragment
// register `reg` (0..3) of k-block kb: scores c, c + 1 (column group j = 4 kb + 2 v2) and c + 4,
// c + 5 (j + 1) of row r + 8 half.
BLASST_FP8_PV_HD constexpr int fp8_pv_score_of_byte(int kb, int reg, int byte) {
  const int half = reg & 1, v2 = reg >> 1;
  return 16 * kb + 8 * v2 + 2 * half + (byte & 1) + 4 * (byte >> 1);
}

}  // namespace blasst::cuda::sm90

#undef BLASST_FP8_PV_HD
