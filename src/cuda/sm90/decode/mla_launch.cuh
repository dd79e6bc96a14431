// Launch of one sm_90a MLA decode instantiation (element type, skip flag, cluster size): the TMA
// descriptor of the latent cache, the grid and, for clusters, the launch attribute. Included by
// mla_decode.cu (no cluster) and mla_decode_cluster.cu (clusters of 2 and 4).
#pragma once

#include <cuda_runtime.h>

#include "cuda/sm90/decode/mla_decode.hpp"
#include "cuda/sm90/decode/mla_kernel.cuh"

namespace blasst::cuda::sm90::mla {

// Rows of the latent cache as TMA sees it (pages: every slot; ragged: the packed tokens the
// tensor's numel holds; padded: max_seqlen_k per entry).
inline int64_t kv_rows(const blasst_args& a) {
  if (a.block_table) return int64_t(a.num_pages) * a.page_size;
  if (a.cu_seqlens_k) {
    const int64_t rest = a.k.numel - 576 - int64_t(a.num_kv_heads - 1) * a.k.head_stride;
    return a.k.token_stride > 0 && rest >= 0 ? rest / a.k.token_stride + 1 : 0;
  }
  return a.max_seqlen_k;
}

template <class E, bool kSkip, int kCluster>
cudaError_t launch_kernel(const blasst_args& a, const decode::DecodeParams& p, cudaStream_t stream) {
  using Tr = MlaTraits<E, kCluster>;
  MlaKernelParams<Tr> kp{};
  kp.p = p;
  kp.chunks = chunks(a);
  const int32_t rows = int32_t(kv_rows(a));
  const int32_t batch = (a.block_table || a.cu_seqlens_k) ? 1 : a.batch;
  kp.kv_shape = make_shape(rows, int32_t(576), int32_t(a.num_kv_heads), batch);
  // A mode of extent 1 gets the row stride: a descriptor wants nonzero strides, and it is never stepped.
  auto kv = make_tensor(make_gmem_ptr(static_cast<const E*>(a.k.data)),
                        make_layout(kp.kv_shape, make_stride(a.k.token_stride, _1{},
                                                             a.num_kv_heads > 1 ? a.k.head_stride : a.k.token_stride,
                                                             batch > 1 ? a.k.batch_stride : a.k.token_stride)));
  kp.tma_kv = make_tma_copy(typename Tr::TmaLoadOp{}, kv, typename Tr::SmemLayoutKStage{},
                            Shape<Int<Tr::kBlockN>, Int<576>>{}, Int<kCluster>{});

  auto kernel = mla_decode_kernel<Tr, kSkip>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes);
  if (err != cudaSuccess) return err;
  // blockIdx.x = split * chunks + chunk: a cluster of `chunks` CTAs is one split's groups
  const dim3 grid(unsigned(kp.chunks * p.splits), unsigned(a.num_kv_heads), unsigned(a.batch));
  if constexpr (kCluster == 1) {
    kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(kp);
    return cudaGetLastError();
  } else {
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = grid;
    cfg.blockDim = dim3(Tr::kThreads);
    cfg.dynamicSmemBytes = size_t(Tr::kSmemBytes);
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = unsigned(kCluster);
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    return cudaLaunchKernelEx(&cfg, kernel, kp);
  }
}

// Clusters of 2 or 4 CTAs (bfloat16; mla_decode_cluster.cu).
cudaError_t launch_cluster(const blasst_args& a, bool skip, int cluster, const decode::DecodeParams& p,
                           cudaStream_t stream);

}  // namespace blasst::cuda::sm90::mla
