// Shared-memory layout helpers of the decode kernel. Tiles of 16-bit elements are stored
// row-major with 16-byte chunks XOR-swizzled by (row % 8), so that ldmatrix reading 8 rows of
// one chunk column hits 8 different banks.
#pragma once

#include <cstdint>

namespace blasst::cuda::layout {

// Byte offset of element (row, col) in a swizzled tile whose rows hold `kCols` 16-bit elements.
template <int kCols>
__device__ __forceinline__ uint32_t swizzled_offset(int row, int col) {
  static_assert(kCols % 64 == 0, "rows must hold at least 8 chunks of 16 bytes");
  const int chunk = (col >> 3) ^ (row & 7);
  return uint32_t(row * kCols * 2 + chunk * 16 + (col & 7) * 2);
}

}  // namespace blasst::cuda::layout
