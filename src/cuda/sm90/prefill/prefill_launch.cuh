// Host launch of one sm_90a prefill instantiation: the TMA descriptors over the caller's
// tensors, the grid and the shared memory. Included by prefill_sm90_d*.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>

#include "cuda/sm90/prefill/prefill_kernel.cuh"
#include "cuda/sm90/prefill/prefill_sm90.hpp"

namespace blasst::cuda::sm90 {

// TMA view (rows, D, heads, batch) of a tensor with D columns (Dqk for Q and K, Dv for V); a
// mode of extent 1 gets the row stride, as a descriptor wants nonzero strides and the mode is
// never stepped.
template <class Traits, int D>
auto gmem_view(const void* data, int32_t rows, int32_t heads, int32_t batch, int64_t token_stride, int64_t head_stride,
               int64_t batch_stride) {
  using E = typename Traits::Element;
  return make_tensor(make_gmem_ptr(static_cast<const E*>(data)),
                     make_layout(make_shape(rows, int32_t(D), heads, batch),
                                 make_stride(token_stride, _1{}, heads > 1 ? head_stride : token_stride,
                                             batch > 1 ? batch_stride : token_stride)));
}

template <class E, int Dqk, int Dv, bool kSkip>
cudaError_t launch_impl(const PrefillParams& p, const TmaExtents& e, cudaStream_t stream) {
  using Traits = PrefillTraits<E, Dqk, Dv, kSkip>;
  // The engine reports and checks calls with the host-side copies of these (prefill_sm90.hpp).
  static_assert(Traits::kGroupRows == kGroupRows && Traits::kBlockN == block_n(Traits::Dqk) && Traits::kBoxRows == kBoxRows,
                "host and kernel tile constants");
  KernelParams<Traits> kp{};
  kp.p = p;
  kp.q_shape = make_shape(e.q_rows, int32_t(Dqk), int32_t(p.num_q_heads), e.q_batch);
  kp.k_shape = make_shape(e.kv_rows, int32_t(Dqk), int32_t(p.num_kv_heads), e.kv_batch);
  auto q = gmem_view<Traits, Dqk>(p.q, e.q_rows, p.num_q_heads, e.q_batch, p.q_token_stride, p.q_head_stride,
                                  p.q_batch_stride);
  auto k = gmem_view<Traits, Dqk>(p.k, e.kv_rows, p.num_kv_heads, e.kv_batch, p.k_token_stride, p.k_head_stride,
                                  p.k_batch_stride);
  auto v = gmem_view<Traits, Dv>(p.v, e.kv_rows, p.num_kv_heads, e.kv_batch, p.v_token_stride, p.v_head_stride,
                                 p.v_batch_stride);
  kp.tma_q = make_tma_copy(SM90_TMA_LOAD{}, q, typename Traits::SmemLayoutQ{}, Shape<Int<Traits::kBlockM>, Int<Dqk>>{}, _1{});
  kp.tma_k = make_tma_copy(SM90_TMA_LOAD{}, k, typename Traits::SmemLayoutKStage{},
                           Shape<Int<Traits::kBlockN>, Int<Dqk>>{}, _1{});
  if constexpr (Traits::kPVInFp8) {
    // V^T [B, Hkv, Dv, vt_keys] in the workspace, written first by the pre-pass (fp8_pv.cuh)
    static_assert(Traits::kBlockN == kVtKeyAlign, "V^T tiles are whole rows of the pre-pass's CTAs");
    if (p.vt == nullptr || p.vt_keys % kVtKeyAlign != 0 || p.vt_keys < p.max_seqlen_k) return cudaErrorInvalidValue;
    const dim3 tgrid(unsigned(p.vt_keys / kVtKeyAlign), unsigned(p.num_kv_heads), unsigned(p.batch));
    transpose_v_e4m3_kernel<Dv><<<tgrid, 128, 0, stream>>>(p, static_cast<uint8_t*>(p.vt), p.vt_keys);
    if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
    const int64_t keys = p.vt_keys;
    kp.vt_shape = make_shape(int32_t(Dv), int32_t(keys), int32_t(p.num_kv_heads), int32_t(p.batch));
    auto vt = make_tensor(make_gmem_ptr(static_cast<const E*>(p.vt)),
                          make_layout(kp.vt_shape, make_stride(keys, _1{}, int64_t(Dv) * keys,
                                                               int64_t(Dv) * keys * p.num_kv_heads)));
    kp.tma_v = make_tma_copy(SM90_TMA_LOAD{}, vt, typename Traits::SmemLayoutVStage{}, typename Traits::TileV{}, _1{});
  } else {
    kp.tma_v = make_tma_copy(SM90_TMA_LOAD{}, v, typename Traits::SmemLayoutVStage{}, typename Traits::TileV{}, _1{});
  }
  kp.box_pages = p.block_table != nullptr && p.page_size < Traits::kBlockN;
  if (kp.box_pages) {
    kp.tma_k_box = make_tma_copy(SM90_TMA_LOAD{}, k, typename Traits::SmemLayoutKBox{},
                                 Shape<Int<Traits::kBoxRows>, Int<Dqk>>{}, _1{});
    if constexpr (!Traits::kPVInFp8)
      kp.tma_v_box = make_tma_copy(SM90_TMA_LOAD{}, v, typename Traits::SmemLayoutVBox{},
                                   Shape<Int<Traits::kBoxRows>, Int<Dv>>{}, _1{});
  }
  kp.row_blocks = (p.max_seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM;
  kp.group_blocks = p.row_blocks;
  // BLASST_CUDA_SM90_PINGPONG=0 lets both consumer warpgroups issue their products freely.
  static const int pingpong = [] {
    const char* env = std::getenv("BLASST_CUDA_SM90_PINGPONG");
    return env && env[0] == '0' ? 0 : 1;
  }();
  kp.pingpong = pingpong;

  auto kernel = prefill_sm90_kernel<Traits, kSkip>;
  const int smem = Traits::kSmemBytes;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  const dim3 grid(unsigned(p.num_q_heads) * unsigned(kp.row_blocks), unsigned(p.batch));
  kernel<<<grid, Traits::kThreads, smem, stream>>>(kp);
  return cudaGetLastError();
}

template <int Dqk, int Dv = Dqk>
cudaError_t launch_for_dim(Elem elem, bool skip, const PrefillParams& p, const TmaExtents& e, cudaStream_t stream) {
#if BLASST_CUDA_BUILD_FP16
  if (elem == Elem::kFp16)
    return skip ? launch_impl<cutlass::half_t, Dqk, Dv, true>(p, e, stream)
                : launch_impl<cutlass::half_t, Dqk, Dv, false>(p, e, stream);
#endif
  if (elem == Elem::kBf16)
    return skip ? launch_impl<cutlass::bfloat16_t, Dqk, Dv, true>(p, e, stream)
                : launch_impl<cutlass::bfloat16_t, Dqk, Dv, false>(p, e, stream);
  return cudaErrorInvalidValue;
}

// FP8 (e4m3 Q, K, V; bf16 O): its own translation units (prefill_sm90_fp8_d*.cu).
template <int D>
cudaError_t launch_fp8_for_dim(bool skip, const PrefillParams& p, const TmaExtents& e, cudaStream_t stream) {
  return skip ? launch_impl<cutlass::float_e4m3_t, D, D, true>(p, e, stream)
              : launch_impl<cutlass::float_e4m3_t, D, D, false>(p, e, stream);
}

}  // namespace blasst::cuda::sm90
