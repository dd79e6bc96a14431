// Host side of the sm_90a MLA decode kernel: what it accepts, its splits, the TMA descriptor of
// the latent cache, and the launches (bf16 / fp16 x dense / skip, then decode's combine).
#include "cuda/sm90/decode/mla_decode.hpp"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "cuda/sm90/decode/mla_kernel.cuh"

namespace blasst::cuda::sm90::mla {
namespace {

bool aligned16(const blasst_tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data) % 16 == 0 && t.batch_stride % 8 == 0 && t.token_stride % 8 == 0 &&
         t.head_stride % 8 == 0;
}

bool device_is_sm90() {
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  return major == 9 && minor == 0;
}

// Rows of the latent cache as TMA sees it (pages: every slot; ragged: the packed tokens the
// tensor's numel holds; padded: max_seqlen_k per entry).
int64_t kv_rows(const blasst_args& a) {
  if (a.block_table) return int64_t(a.num_pages) * a.page_size;
  if (a.cu_seqlens_k) {
    const int64_t rest = a.k.numel - 576 - int64_t(a.num_kv_heads - 1) * a.k.head_stride;
    return a.k.token_stride > 0 && rest >= 0 ? rest / a.k.token_stride + 1 : 0;
  }
  return a.max_seqlen_k;
}

template <class E>
using Traits = MlaTraits<E>;

template <class E, bool kSkip>
cudaError_t launch_impl(const blasst_args& a, const decode::DecodeParams& p, cudaStream_t stream) {
  using Tr = Traits<E>;
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
  kp.tma_kv = make_tma_copy(SM90_TMA_LOAD{}, kv, typename Tr::SmemLayoutKStage{}, Shape<Int<Tr::kBlockN>, Int<576>>{}, _1{});

  auto kernel = mla_decode_kernel<Tr, kSkip>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(unsigned(kp.chunks * p.splits), unsigned(a.num_kv_heads), unsigned(a.batch));
  kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(kp);
  err = cudaGetLastError();
  if (err != cudaSuccess || p.splits == 1) return err;
  using CudaT = std::conditional_t<std::is_same_v<E, cutlass::half_t>, __half, __nv_bfloat16>;
  decode::decode_combine_kernel<CudaT, 512>
      <<<dim3(unsigned(p.rows_max), unsigned(a.num_kv_heads), unsigned(a.batch)), decode::kCombineThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

std::string unsupported_reason(const blasst_args& a) {
  if (!device_is_sm90()) return "MLA decode (576/512) runs on compute capability 9.0 (Hopper) only";
  if (a.q.dtype != BLASST_DTYPE_BFLOAT16 && a.q.dtype != BLASST_DTYPE_FLOAT16)
    return "MLA decode takes bfloat16 or float16 queries and latent cache";
  if (a.k.dtype != a.q.dtype) return "MLA decode: a float8_e4m3 latent cache has no CUDA kernel yet (the CPU engine runs it)";
  // V must be the first 512 values of each latent vector: the kernel reads it from K's tile.
  if (a.v.data != a.k.data || a.v.token_stride != a.k.token_stride || a.v.head_stride != a.k.head_stride ||
      a.v.batch_stride != a.k.batch_stride)
    return "MLA decode needs v to be the first 512 values of k's latent vectors (v = kv[..., :512] of the same "
           "memory and strides)";
  if (a.scale < 0) return "a negative scale";
  for (auto [name, t] : {std::pair{"q", &a.q}, std::pair{"k", &a.k}})
    if (!aligned16(*t))
      return std::string(name) + " must be 16-byte aligned with strides that are multiples of 8 elements";
  if (reinterpret_cast<uintptr_t>(a.out.data) % 4 || a.out.batch_stride % 2 || a.out.token_stride % 2 ||
      a.out.head_stride % 2)
    return "out must be 4-byte aligned with even strides";
  if (a.block_table) {
    if (a.page_size % kBlockN != 0 || (a.page_size & (a.page_size - 1)) != 0)
      return "MLA decode takes pages of a power of two of at least 64 tokens (got " + std::to_string(a.page_size) + ")";
    if (a.k.batch_stride != int64_t(a.page_size) * a.k.token_stride)
      return "MLA decode needs the tokens of a page at consecutive rows (batch_stride = page_size * token_stride)";
  }
  const int64_t rows = kv_rows(a);
  if (rows <= 0 || rows > INT32_MAX) return "the latent cache's rows do not fit a TMA descriptor";
  constexpr int64_t kMaxStride = (int64_t(1) << 40) / 2;
  if (a.k.token_stride >= kMaxStride || a.k.head_stride >= kMaxStride || a.k.batch_stride >= kMaxStride)
    return "k strides past the TMA limit of 2^40 bytes";
  if (a.batch > 65535 || a.num_kv_heads > 65535) return "batch and num_kv_heads must be <= 65535";
  if (a.geometry.block_n != 0 && a.geometry.block_n != kBlockN) return "MLA decode tiles are 64 keys (block_n 0 or 64)";
  return "";
}

int chunks(const blasst_args& a) {
  const int64_t pairs = int64_t(a.num_q_heads / a.num_kv_heads) * a.max_seqlen_q;
  return int(std::max<int64_t>(1, (pairs + kRows - 1) / kRows));
}

int pick_splits(const blasst_args& a, int sms) {
  const int tiles = std::max(1, (a.max_seqlen_k + kBlockN - 1) / kBlockN);
  if (a.geometry.splits > 0) return std::min(a.geometry.splits, tiles);
  // One CTA per SM (its shared memory): the fewest splits that fill the SMs once, each split
  // keeping at least 8 tiles.
  const int64_t ctas = int64_t(a.batch) * a.num_kv_heads * chunks(a);
  int splits = ctas >= sms ? 1 : std::max(1, std::min(int(sms / ctas), tiles / 8));
  // Skipping in anchored order: every split starts from the seeded maximum, so splitting costs no
  // sparsity, and CTAs of unequal sparsity even out over more, shorter splits (one wave of CTAs
  // lasts as long as its least sparse one): up to four waves, splits of at least 16 tiles.
  const bool anchored_skip = (a.threshold.threshold_scale_factor > 0.0f || a.threshold.per_kv_head_factor ||
                              a.threshold.per_request_factor) && a.geometry.order == BLASST_ORDER_ANCHORED;
  if (anchored_skip) splits = std::max(splits, std::min(int((4 * int64_t(sms) + ctas - 1) / ctas), tiles / 16));
  return std::max(1, splits);
}

cudaError_t launch(const blasst_args& a, bool skip, const decode::DecodeParams& p, cudaStream_t stream) {
  if (a.q.dtype == BLASST_DTYPE_FLOAT16) {
#if BLASST_CUDA_BUILD_FP16
    return skip ? launch_impl<cutlass::half_t, true>(a, p, stream) : launch_impl<cutlass::half_t, false>(a, p, stream);
#else
    return cudaErrorInvalidValue;
#endif
  }
  return skip ? launch_impl<cutlass::bfloat16_t, true>(a, p, stream) : launch_impl<cutlass::bfloat16_t, false>(a, p, stream);
}

}  // namespace blasst::cuda::sm90::mla
