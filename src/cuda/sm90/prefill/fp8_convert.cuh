// FP8 V for the sm_90a prefill kernel: a kept tile of e4m3 V, as TMA left it in shared memory,
// converted into fp16 for P V (e4m3 values are exact in fp16; NaN stays NaN).
#pragma once

#include <cstdint>

#include <cute/tensor.hpp>

namespace blasst::cuda::sm90 {

// Four e4m3 values (bytes 0..3 of x) -> four fp16 values (lo: 0, 1; hi: 2, 3).
__device__ __forceinline__ void e4m3x4_to_f16x4(uint32_t x, uint32_t& lo, uint32_t& hi) {
  asm("{\n .reg .b16 a, b;\n mov.b32 {a, b}, %2;\n cvt.rn.f16x2.e4m3x2 %0, a;\n cvt.rn.f16x2.e4m3x2 %1, b;\n}\n"
      : "=r"(lo), "=r"(hi)
      : "r"(x));
}

// Byte offset of element (r, c) in a K-major swizzled shared-memory layout (a CuTe
// ComposedLayout<Swizzle, smem_ptr_flag, L> whose buffer starts on a 1024-byte boundary): the
// swizzle acts on byte addresses.
template <class SwizzledLayout, int kBytes>
__device__ __forceinline__ uint32_t swizzled_offset(int r, int c) {
  using Swz = decltype(SwizzledLayout{}.layout_a());
  return uint32_t(Swz::apply(uint32_t(SwizzledLayout{}.layout_b()(r, c)) * uint32_t(kBytes)));
}

// src [BN, D] e4m3 and dst [BN, D] fp16 (their layouts SrcL, DstL; src_base, dst_base shared
// memory addresses): rows from `rows` on are written as zeros. Called by the 128 threads of a
// warpgroup (wt = 0..127), each converting 16-byte chunks of e4m3 (16 values, contiguous in
// any swizzle) into two 16-byte chunks of fp16.
template <int BN, int D, class SrcL, class DstL>
__device__ __forceinline__ void convert_v_tile(uint32_t src_base, uint32_t dst_base, int rows, int wt) {
  constexpr int kChunks = D / 16;  // 16-value chunks per row
  static_assert((BN * kChunks) % 128 == 0, "whole passes of the warpgroup");
  const int c = (wt % kChunks) * 16;
#pragma unroll
  for (int it = 0; it < BN * kChunks / 128; ++it) {
    const int r = it * (128 / kChunks) + wt / kChunks;
    uint4 a = make_uint4(0, 0, 0, 0), b = make_uint4(0, 0, 0, 0);
    if (r < rows) {
      const uint4 in =
          *static_cast<const uint4*>(__cvta_shared_to_generic(src_base + swizzled_offset<SrcL, 1>(r, c)));
      e4m3x4_to_f16x4(in.x, a.x, a.y);
      e4m3x4_to_f16x4(in.y, a.z, a.w);
      e4m3x4_to_f16x4(in.z, b.x, b.y);
      e4m3x4_to_f16x4(in.w, b.z, b.w);
    }
    *static_cast<uint4*>(__cvta_shared_to_generic(dst_base + swizzled_offset<DstL, 2>(r, c))) = a;
    *static_cast<uint4*>(__cvta_shared_to_generic(dst_base + swizzled_offset<DstL, 2>(r, c + 8))) = b;
  }
}

}  // namespace blasst::cuda::sm90
