// Host side of the CUDA decode engine: checks what this kernel supports, picks the number of
// KV splits, sizes the workspace, launches the decode and combine kernels, collects statistics.
#include "cuda/sm80/decode/decode_launch.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <string>

#include "cuda/sm80/decode/decode_kernel.cuh"
#if BLASST_CUDA_SM90_MLA_DECODE
#include "cuda/sm90/decode/mla_decode.hpp"
#endif

namespace blasst::cuda::decode {
namespace {

Status unsupported(const std::string& what) { return {BLASST_ERROR_UNSUPPORTED, "cuda decode: " + what}; }

Status cuda_error(cudaError_t err, const char* where) {
  return {BLASST_ERROR_CUDA, std::string("cuda decode: ") + where + ": " + cudaGetErrorString(err)};
}

// Rows of a decision group padded to the m16 tiles of the kernel: 1, 2 or 4 tiles.
int m_tiles_for(int rows_max) {
  const int tiles = (rows_max + 15) / 16;
  return tiles <= 1 ? 1 : (tiles <= 2 ? 2 : 4);
}

bool aligned(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

// Absorbed MLA (576/512) runs on the sm_90a MLA kernel.
bool mla_call(const blasst_args& a) { return a.head_dim_qk == 576 && a.head_dim_v == 512; }
Status check_mla(const blasst_args& a) {
#if BLASST_CUDA_SM90_MLA_DECODE
  const std::string why = sm90::mla::unsupported_reason(a);
  return why.empty() ? Status::ok() : unsupported(why);
#else
  (void)a;
  return unsupported("MLA decode (576/512) needs the sm_90a MLA kernel, not in this build (CMake "
                     "BLASST_CUDA_SM90_MLA_DECODE, sm_90a and the CUTLASS headers)");
#endif
}

// K tiles in flight per block. Two (with one V buffer: 99 KB of shared memory at d = 128 and
// one m-tile, two blocks per SM) measured faster than one (three blocks per SM) on every point
// of bench/gpu_decode_bench.py on the H100: 2.63-2.98 against 2.20-2.94 TB/s dense.
constexpr int kKStages = 2;
// FP8 K/V: tiles of half the bytes, so three stages (with the stored V tile and the 16-bit work
// tile: 101 KB at d = 128, still two blocks per SM) keep more bytes in flight.
constexpr int kKStagesFp8 = 3;

// The kernel instantiation a call runs, with its dynamic shared memory.
struct KernelChoice {
  const void* fn = nullptr;
  int smem = 0;
  void (*combine)(DecodeParams) = nullptr;
};

// KV: the stored type of K and V (T, or __nv_fp8_e4m3 for an FP8 cache).
template <class T, class KV, int D, int MT, bool kSkip>
KernelChoice choice() {
  constexpr int stages = sizeof(KV) == 1 ? kKStagesFp8 : kKStages;
  return {reinterpret_cast<const void*>(&decode_kernel<T, KV, D, MT, kSkip, stages>),
          DecodeSmem<D, MT, stages, int(sizeof(KV))>::kBytes, &decode_combine_kernel<T, D>};
}
template <class T, class KV, int D, int MT>
KernelChoice choice_k(bool skip) {
  return skip ? choice<T, KV, D, MT, true>() : choice<T, KV, D, MT, false>();
}
template <class T, class KV, int D>
KernelChoice choice_m(int m_tiles, bool skip) {
  switch (m_tiles) {
    case 1: return choice_k<T, KV, D, 1>(skip);
    case 2: return choice_k<T, KV, D, 2>(skip);
    default: return choice_k<T, KV, D, 4>(skip);
  }
}
template <class T, class KV>
KernelChoice choice_d(int d, int m_tiles, bool skip) {
  return d == 64 ? choice_m<T, KV, 64>(m_tiles, skip) : choice_m<T, KV, 128>(m_tiles, skip);
}

bool fp8_cache(const blasst_args& a) { return a.k.dtype == BLASST_DTYPE_FLOAT8_E4M3; }

bool skip_mode(const blasst_args& a) {
  return skip_instantiation(a.threshold);
}

KernelChoice choose(const blasst_args& a) {
  const int m_tiles = m_tiles_for((a.num_q_heads / a.num_kv_heads) * a.max_seqlen_q);
  const bool bf16 = a.q.dtype == BLASST_DTYPE_BFLOAT16;
#if BLASST_CUDA_FP8_DECODE
  if (fp8_cache(a))
    return bf16 ? choice_d<__nv_bfloat16, __nv_fp8_e4m3>(a.head_dim_qk, m_tiles, skip_mode(a))
                : choice_d<__half, __nv_fp8_e4m3>(a.head_dim_qk, m_tiles, skip_mode(a));
#endif
  return bf16 ? choice_d<__nv_bfloat16, __nv_bfloat16>(a.head_dim_qk, m_tiles, skip_mode(a))
              : choice_d<__half, __half>(a.head_dim_qk, m_tiles, skip_mode(a));
}

// Raises the kernel's dynamic shared memory limit; returns how many of its blocks fit on an SM.
int prepare(const KernelChoice& k, cudaError_t* err) {
  *err = cudaFuncSetAttribute(k.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, k.smem);
  if (*err != cudaSuccess) return 1;
  *err = cudaFuncSetAttribute(k.fn, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared);
  if (*err != cudaSuccess) return 1;
  int blocks = 1;
  *err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, k.fn, kDecodeThreads, size_t(k.smem));
  return std::max(blocks, 1);
}

// Splits per decision group. Dense mode and `ascending` order: the fewest splits whose blocks
// fill one block per SM to at least 95% (a partial first wave counts: 128 blocks on 132 SMs), or
// the resident `slots` (SMs x blocks per SM) to at least 90%. Fewer, longer splits win there: at
// 1 x 128K (8 groups) 16 splits of 64 tiles, one block per SM, ran 3-15% faster on the H100 than
// 32 splits of 32 tiles, two per SM (less start-up, drain and combine per byte), and in ascending
// order each split's first tile is an anchor with its running max at -inf, so fewer splits skip
// more (8 x 32K at sf 128: sparsity 0.22 with 2 splits, 0.11 with 4).
// `anchored` order with skipping on seeds every split from tile 0 and the last tile, so splitting
// keeps 90-99% of the sparsity, and more, shorter blocks even out groups of unequal sparsity (a
// wave of blocks ends with its least sparse one): a whole first wave, and then up to about four
// waves of resident blocks as long as each split keeps 32 tiles. On the H100 (Hq 32, Hkv 8):
// 32 / 8 / 4 / 2 splits at 1 x 128K / 8 x 32K / 32 x 16K / 64 x 8K; at 32 x 16K, sparsity ~0.85,
// 4 splits reached 0.90 of the 2/(2-s) bound against 0.78 with 1. Every split keeps >= 4 tiles;
// else the best-filled count.
int pick_splits(const blasst_args& a, int sms, int slots) {
  const int tiles = ceil_div_int(a.max_seqlen_k, kBlockN);
  const int groups = std::max(a.batch * a.num_kv_heads, 1);
  const int most = std::max(1, std::min(ceil_div_int(tiles, 4), 256));
  const bool anchored = skip_mode(a) && a.geometry.order == BLASST_ORDER_ANCHORED;
  // An FP8 cache halves a tile's bytes but not its per-tile work (the conversion, the barriers):
  // one block per SM leaves that latency bare (1 x 128K: the bf16 kernel's time, 47% of the copy
  // rate on the H100), so FP8 fills every resident slot.
  const double min_blocks = anchored ? sms : 0.95 * (fp8_cache(a) ? slots : sms);
  int splits = 0;
  int best = 1;
  double best_fill = 0.0;
  for (int s = 1; s <= most && splits == 0; ++s) {
    const double blocks = double(groups) * s;
    const double fill = blocks / (std::ceil(blocks / slots) * slots);
    const double sm_fill = blocks / (std::ceil(blocks / sms) * sms);
    if ((blocks >= min_blocks && sm_fill >= 0.95) || (blocks >= slots && fill >= 0.9)) splits = s;
    if (fill > best_fill + 1e-9) {
      best_fill = fill;
      best = s;
    }
  }
  if (splits == 0) splits = best;
  if (anchored) {
    const int four_waves = ceil_div_int(4 * slots, groups);
    const int of_32_tiles = std::max(1, tiles / 32);
    splits = std::max(splits, std::min(four_waves, of_32_tiles));
  }
  return splits;
}

struct Buffers {
  std::mutex mutex;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  unsigned long long* totals = nullptr;
  unsigned long long* host_totals = nullptr;
};
Buffers& buffers() {
  static Buffers b;
  return b;
}

cudaError_t launch(const KernelChoice& k, DecodeParams p, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  prepare(k, &err);
  if (err != cudaSuccess) return err;
  void* args[] = {&p};
  err = cudaLaunchKernel(k.fn, dim3(p.splits, p.num_kv_heads, p.batch), dim3(kDecodeThreads), args, size_t(k.smem),
                         stream);
  if (err != cudaSuccess || p.splits == 1) return err;
  k.combine<<<dim3(p.rows_max, p.num_kv_heads, p.batch), kCombineThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

Status check_supported(const blasst_args& a) {
  if (mla_call(a)) return check_mla(a);
  if (a.q.dtype == BLASST_DTYPE_FLOAT8_E4M3)
    return unsupported("decode takes bfloat16 or float16 queries (float8_e4m3 ones run on the CPU engine)");
#if !BLASST_CUDA_FP8_DECODE
  if (fp8_cache(a))
    return unsupported("decode with a float8_e4m3 KV cache is not built (BLASST_CUDA_FP8_DECODE=OFF; the CPU engine runs it)");
#endif
  if (a.q.dtype != BLASST_DTYPE_BFLOAT16 && a.q.dtype != BLASST_DTYPE_FLOAT16)
    return unsupported("dtype must be bfloat16 or float16");
  if (a.head_dim_qk != a.head_dim_v || (a.head_dim_qk != 64 && a.head_dim_qk != 128))
    return unsupported("head dims must be 64/64 or 128/128 (got " + std::to_string(a.head_dim_qk) + "/" +
                       std::to_string(a.head_dim_v) + ")");
  const int rows_max = (a.num_q_heads / a.num_kv_heads) * a.max_seqlen_q;
  if (rows_max > 64)
    return unsupported("query heads per KV head x query rows must be <= 64 (got " + std::to_string(rows_max) + ")");
  // 16-byte vector loads of Q, K and V rows; 4-byte stores of output pairs.
  for (auto [name, t] : {std::pair{"q", &a.q}, std::pair{"k", &a.k}, std::pair{"v", &a.v}}) {
    const int64_t elems = t->dtype == BLASST_DTYPE_FLOAT8_E4M3 ? 16 : 8;  // per 16 bytes
    if (!aligned(t->data, 16) || t->batch_stride % elems || t->token_stride % elems || t->head_stride % elems)
      return unsupported(std::string(name) + " must be 16-byte aligned with strides that are multiples of " +
                         std::to_string(elems) + " elements");
  }
  if (!aligned(a.out.data, 4) || a.out.batch_stride % 2 || a.out.token_stride % 2 || a.out.head_stride % 2)
    return unsupported("out must be 4-byte aligned with even strides");
  return Status::ok();
}

// Split partials: one (m, l) pair and one row of Dv floats per (entry, KV head, split, row).
size_t partial_rows(const blasst_args& a, int splits) {
  const size_t rows_max = size_t(a.num_q_heads / a.num_kv_heads) * size_t(a.max_seqlen_q);
  return size_t(a.batch) * a.num_kv_heads * size_t(splits) * rows_max;
}

size_t workspace_bytes(const blasst_args& a, int splits) {
  if (splits <= 1) return 0;
  return partial_rows(a, splits) * (size_t(a.head_dim_v) + 2) * sizeof(float);
}

int resolve_splits(const blasst_args& a) {
#if BLASST_CUDA_SM90_MLA_DECODE
  if (mla_call(a)) {
    int device = 0, sms = 132;
    if (cudaGetDevice(&device) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    return sm90::mla::pick_splits(a, sms);
  }
#endif
  if (a.geometry.splits > 0) return std::min(a.geometry.splits, std::max(1, ceil_div_int(a.max_seqlen_k, kBlockN)));
  int device = 0, sms = 132;
  if (cudaGetDevice(&device) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  cudaError_t err = cudaSuccess;
  const int per_sm = prepare(choose(a), &err);
  if (err != cudaSuccess) cudaGetLastError();  // the launch reports it; leave no error pending
  return pick_splits(a, sms, sms * per_sm);
}

Status run_decode(const blasst_args& a, blasst_run_info* info) {
  if (Status s = check_supported(a); !s) return s;
  const bool mla = mla_call(a);
  // Tiles and decision groups: the MLA kernel cuts a KV head's (head, row) pairs into groups of
  // 64 (SPEC section 2) over tiles of 64 keys; this kernel keeps them in one group over 128 keys.
  const int block_n = mla ? 64 : kBlockN;
  const int block_m = mla ? 64 : 16 * m_tiles_for((a.num_q_heads / a.num_kv_heads) * a.max_seqlen_q);
  const int chunks = mla ? ceil_div_int((a.num_q_heads / a.num_kv_heads) * a.max_seqlen_q, block_m) : 1;
  if (a.geometry.block_n != 0 && a.geometry.block_n != block_n)
    return unsupported("block_n must be " + std::to_string(block_n) + " (or 0 for the default)");
  if (a.max_seqlen_q == 0) return Status::ok();
  const int64_t trace_needed = int64_t(a.batch) * a.num_kv_heads * chunks * ceil_div_int(a.max_seqlen_k, block_n);
  if (a.decisions && a.decisions_numel < trace_needed)
    return {BLASST_ERROR_INVALID_ARGUMENT, "decisions_numel is " + std::to_string(a.decisions_numel) +
                                               ", expected >= batch * groups * tiles = " +
                                               std::to_string(trace_needed)};
  const int splits = resolve_splits(a);
  const size_t ws_bytes = workspace_bytes(a, splits);
  cudaStream_t stream = static_cast<cudaStream_t>(a.stream);

  Buffers& buf = buffers();
  std::lock_guard<std::mutex> lock(buf.mutex);
  // The engine's own totals buffer serves run info only: a call without info (a CUDA graph
  // capture, say) allocates and writes nothing of the engine's, so even a process's first call
  // can be captured.
  if (info && !buf.totals) {
    if (cudaError_t e = cudaMalloc(&buf.totals, 2 * sizeof(unsigned long long)); e != cudaSuccess)
      return cuda_error(e, "allocating statistics");
    if (cudaError_t e = cudaMallocHost(&buf.host_totals, 2 * sizeof(unsigned long long)); e != cudaSuccess)
      return cuda_error(e, "allocating statistics");
  }
  void* workspace = a.workspace;
  if (ws_bytes > 0 && workspace == nullptr) {
    if (buf.workspace_bytes < ws_bytes) {
      cudaFree(buf.workspace);
      buf.workspace = nullptr;
      buf.workspace_bytes = 0;
      if (cudaError_t e = cudaMalloc(&buf.workspace, ws_bytes); e != cudaSuccess) return cuda_error(e, "allocating workspace");
      buf.workspace_bytes = ws_bytes;
    }
    workspace = buf.workspace;
  } else if (ws_bytes > 0 && a.workspace_bytes < ws_bytes) {
    return {BLASST_ERROR_INVALID_ARGUMENT, "workspace_bytes is " + std::to_string(a.workspace_bytes) +
                                               ", this call needs " + std::to_string(ws_bytes) +
                                               " (blasst_workspace_size)"};
  }

  DecodeParams p{};
  static_cast<AttentionOperands&>(p) = attention_operands(a);
  p.splits = splits;
  p.rows_max = p.q_per_kv * a.max_seqlen_q;
  p.ws_ml = static_cast<float*>(workspace);
  p.ws_o = ws_bytes > 0 ? p.ws_ml + 2 * partial_rows(a, splits) : nullptr;
  p.stats_per_head = reinterpret_cast<unsigned long long*>(a.stats_per_head);
  p.totals = info ? buf.totals : nullptr;
  p.decisions = a.decisions;
  p.tiles_max = ceil_div_int(a.max_seqlen_k, block_n);

  if (p.totals)
    if (cudaError_t e = cudaMemsetAsync(p.totals, 0, 2 * sizeof(unsigned long long), stream); e != cudaSuccess)
      return cuda_error(e, "clearing statistics");
  if (a.stats_per_head) {
    if (cudaError_t e = cudaMemsetAsync(a.stats_per_head, 0, size_t(a.num_kv_heads) * 2 * sizeof(int64_t), stream);
        e != cudaSuccess)
      return cuda_error(e, "clearing stats_per_head");
  }
  if (a.decisions) {
    if (cudaError_t e = cudaMemsetAsync(a.decisions, 0, size_t(trace_needed), stream); e != cudaSuccess)
      return cuda_error(e, "clearing decisions");
  }

#if BLASST_CUDA_SM90_MLA_DECODE
  const cudaError_t launched = mla ? sm90::mla::launch(a, skip_mode(a), p, stream) : launch(choose(a), p, stream);
#else
  const cudaError_t launched = launch(choose(a), p, stream);
#endif
  if (launched != cudaSuccess) return cuda_error(launched, "launch");

  if (!info) return Status::ok();
  info->engine = BLASST_ENGINE_CUDA;
  info->geometry.block_m = block_m;
  info->geometry.block_n = block_n;
  info->geometry.order = a.geometry.order;
  info->geometry.splits = splits;
  // Totals need the device: read them unless the stream is being captured into a graph.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &capture) == cudaSuccess && capture == cudaStreamCaptureStatusNone) {
    if (cudaError_t e = cudaMemcpyAsync(buf.host_totals, buf.totals, 2 * sizeof(unsigned long long),
                                        cudaMemcpyDeviceToHost, stream);
        e != cudaSuccess)
      return cuda_error(e, "reading statistics");
    if (cudaError_t e = cudaStreamSynchronize(stream); e != cudaSuccess) return cuda_error(e, "decode kernel");
    info->visited = int64_t(buf.host_totals[0]);
    info->skipped = int64_t(buf.host_totals[1]);
  } else {
    info->visited = -1;
    info->skipped = -1;
  }
  return Status::ok();
}

size_t decode_workspace_size(const blasst_args& a) {
  if (!check_supported(a)) return 0;
  return workspace_bytes(a, resolve_splits(a));
}

}  // namespace blasst::cuda::decode
