// Host side of the sm_90a MLA decode kernel: what it accepts, its splits and cluster size, and the
// launches (bf16 / fp16 x dense / skip without a cluster here, clusters in mla_decode_cluster.cu,
// then decode's combine).
#include "cuda/sm90/decode/mla_decode.hpp"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "cuda/cuda_engine.hpp"
#include "cuda/sm90/decode/mla_launch.cuh"

namespace blasst::cuda::sm90::mla {
namespace {

// Clusters share each latent tile among the chunks of one entry and split (mla_traits.cuh): for
// 2 or 4 chunks, bfloat16, every chunk holding 64 pairs of every entry (no ragged Lq), so that
// all CTAs of a cluster stream the same tiles. Not yet measured on a GPU: only with
// BLASST_CUDA_MLA_CLUSTER=1 in the environment (read per call, so that an A/B may flip it).
int cluster_for(const blasst_args& a) {
  const char* env = std::getenv("BLASST_CUDA_MLA_CLUSTER");
  const bool on = env && env[0] == '1';
  const int n = chunks(a);
  if (!on || (n != 2 && n != 4) || a.q.dtype != BLASST_DTYPE_BFLOAT16) return 1;
  if (a.cu_seqlens_q || a.seqlens_q) return 1;
  if ((int64_t(a.num_q_heads / a.num_kv_heads) * a.max_seqlen_q) % kRows != 0) return 1;
  return n;
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
  // Skipping takes the same splits as dense mode in both orders. More, shorter splits in anchored
  // order (up to four waves, to even out CTAs of unequal sparsity) measured slower than dense on
  // an H100 (0.86x at s = 0.96, 64 x 8K, 128 heads): each split re-reads the two anchor tiles and
  // the combine moves B x Hq x splits x 512 partial outputs through memory.
  return ctas >= sms ? 1 : std::max(1, std::min(int(sms / ctas), tiles / 8));
}

cudaError_t launch(const blasst_args& a, bool skip, const decode::DecodeParams& p, cudaStream_t stream) {
  cudaError_t err = cudaErrorInvalidValue;
  if (const int cluster = cluster_for(a); cluster > 1) {
    err = launch_cluster(a, skip, cluster, p, stream);
  } else if (a.q.dtype == BLASST_DTYPE_FLOAT16) {
#if BLASST_CUDA_BUILD_FP16
    err = skip ? launch_kernel<cutlass::half_t, true, 1>(a, p, stream) : launch_kernel<cutlass::half_t, false, 1>(a, p, stream);
#endif
  } else {
    err = skip ? launch_kernel<cutlass::bfloat16_t, true, 1>(a, p, stream)
               : launch_kernel<cutlass::bfloat16_t, false, 1>(a, p, stream);
  }
  if (err != cudaSuccess || p.splits == 1) return err;
  // split partials: decode's combine kernel merges them
  if (a.q.dtype == BLASST_DTYPE_FLOAT16)
    decode::decode_combine_kernel<__half, 512>
        <<<dim3(unsigned(p.rows_max), unsigned(a.num_kv_heads), unsigned(a.batch)), decode::kCombineThreads, 0, stream>>>(p);
  else
    decode::decode_combine_kernel<__nv_bfloat16, 512>
        <<<dim3(unsigned(p.rows_max), unsigned(a.num_kv_heads), unsigned(a.batch)), decode::kCombineThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace blasst::cuda::sm90::mla
