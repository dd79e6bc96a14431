// P V in FP8 for the sm_90a prefill kernel (BLASST_CUDA_SM90_FP8_PV_E4M3): P quantized to e4m3 in
// registers, V^T in e4m3 from a workspace that a pre-pass wrote, the e4m3 x e4m3 -> fp32 wgmma.
//
// Why a pre-pass: the 8-bit wgmma takes both operands K-major, so P V needs V^T (keys
// contiguous) in shared memory, while the caller's V has its head dim contiguous. Transposing
// [Lk, Dv] once per call costs a read and a write of V, against the O(Lq Lk Dv) work of the
// attention; and in that pass the keys of each 32-key block can be put in the order that lets
// each thread build its A fragment of P from its own scores (fp8_pv_order.hpp).
#pragma once

#include <cstdint>

#include <cute/tensor.hpp>

#include "cuda/common/prefill_params.hpp"
#include "cuda/sm80/prefill/prefill_entry.cuh"
#include "cuda/sm90/prefill/fp8_pv_order.hpp"
#include "cuda/sm90/prefill/prefill_sm90.hpp"

namespace blasst::cuda::sm90 {

// Two floats -> two e4m3 (round to nearest, saturated to +-448; NaN stays NaN) in 16 bits, lo
// in the low byte.
__device__ __forceinline__ uint32_t e4m3x2(float lo, float hi) {
  uint16_t r;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
  return r;
}

// The fp32 accumulator S of one warpgroup (64 x BN) -> the e4m3 A fragment of P V (4 registers
// per 32 keys), bytes placed as fp8_pv_score_of_byte says.
template <class FragS, class FragA>
__device__ __forceinline__ void pack_p_e4m3(FragS const& s, FragA& a) {
  constexpr int N = decltype(cute::size(s))::value;  // BN / 2 accumulators per thread
  static_assert(N % 16 == 0 && decltype(cute::size(a))::value == N, "whole 32-key blocks, one byte per accumulator");
  cute::Tensor a32 = cute::recast<uint32_t>(a);
#pragma unroll
  for (int kb = 0; kb < N / 16; ++kb)
#pragma unroll
    for (int reg = 0; reg < 4; ++reg)
      a32(4 * kb + reg) = e4m3x2(s(fp8_pv_score_of_byte(kb, reg, 0)), s(fp8_pv_score_of_byte(kb, reg, 1))) |
                          (e4m3x2(s(fp8_pv_score_of_byte(kb, reg, 2)), s(fp8_pv_score_of_byte(kb, reg, 3))) << 16);
}

// The pre-pass: V of every entry and KV head (any layout the kernel takes: padded, ragged or
// paged) -> vt [B, Hkv, Dv, keys_pad] e4m3, keys in the slot order of fp8_pv_key_of_slot within
// each 32-key block, keys past the entry's length 0 (so that P V needs no masking of V, and a
// NaN there reaches nothing). One CTA of 128 threads per (128 keys, KV head, entry).
template <int Dv>
__global__ void __launch_bounds__(128) transpose_v_e4m3_kernel(const PrefillParams p, uint8_t* __restrict__ vt,
                                                               int keys_pad) {
  constexpr int kKeys = kVtKeyAlign;
  constexpr int kPitch = Dv + 16;  // bytes per key row in shared memory (16-byte chunks, skewed banks)
  __shared__ __align__(16) uint8_t tile[kKeys * kPitch];
  const int key0 = blockIdx.x * kKeys;
  const int hkv = blockIdx.y;
  const int b = blockIdx.z;
  const EntryLengths entry = entry_lengths(p, b);
  const uint8_t* v = static_cast<const uint8_t*>(p.v) + int64_t(hkv) * p.v_head_stride;
  const int32_t* pages = p.block_table ? p.block_table + int64_t(b) * p.block_table_stride : nullptr;
  // rows of V: 16-byte chunks, each thread a chunk per pass
  constexpr int kChunks = Dv / 16;
  for (int idx = threadIdx.x; idx < kKeys * kChunks; idx += 128) {
    const int r = idx / kChunks, c = (idx % kChunks) * 16;
    const int key = key0 + r;
    uint4 x = make_uint4(0, 0, 0, 0);
    if (key < entry.lk) {
      int64_t row;  // of the tensor's token rows (padded layouts: within entry b)
      if (pages)
        row = int64_t(pages[key >> p.page_shift]) * p.page_size + (key & (p.page_size - 1));
      else
        row = int64_t(entry.k_start) + key;  // (k_start is 0 unless ragged)
      const uint8_t* src = v + row * p.v_token_stride + (pages || p.cu_seqlens_k ? 0 : int64_t(b) * p.v_batch_stride);
      x = *reinterpret_cast<const uint4*>(src + c);
    }
    *reinterpret_cast<uint4*>(&tile[r * kPitch + c]) = x;
  }
  __syncthreads();
  // rows of V^T: per thread 16 consecutive slots of one head-dim row d
  uint8_t* dst = vt + ((int64_t(b) * p.num_kv_heads + hkv) * Dv) * keys_pad + key0;
  for (int idx = threadIdx.x; idx < Dv * (kKeys / 16); idx += 128) {
    const int d = idx / (kKeys / 16), s0 = (idx % (kKeys / 16)) * 16;
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      uint32_t word = 0;
#pragma unroll
      for (int byte = 0; byte < 4; ++byte) {
        const int slot = s0 + 4 * i + byte;
        const int key = (slot / 32) * 32 + fp8_pv_key_of_slot(slot % 32);
        word |= uint32_t(tile[key * kPitch + d]) << (8 * byte);
      }
      w[i] = word;
    }
    *reinterpret_cast<uint4*>(dst + int64_t(d) * keys_pad + s0) = make_uint4(w[0], w[1], w[2], w[3]);
  }
}

}  // namespace blasst::cuda::sm90
