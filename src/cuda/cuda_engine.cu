// The CUDA engine behind the API layer: device queries, the checks only the GPU kernels
// impose (dtype, head dims, alignment, device memory), and the prefill launch.
#include "cuda/cuda_engine.hpp"

#include <cuda_runtime.h>

#include <cmath>
#include <climits>
#include <mutex>
#include <optional>
#include <algorithm>
#include <cstdlib>
#include <cstdint>
#include <string>
#include <vector>

#include "core/layout.hpp"
#include "cuda/sm80/decode/decode_launch.hpp"
#include "cuda/common/prefill_dispatch.hpp"
#include "cuda/sm90/prefill/prefill_sm90.hpp"

namespace blasst::cuda {

AttentionOperands attention_operands(const blasst_args& a) {
  AttentionOperands o{};
  o.q = a.q.data;
  o.k = a.k.data;
  o.v = a.v.data;
  o.out = a.out.data;
  o.lse = static_cast<float*>(a.lse.data);
  o.q_batch_stride = a.q.batch_stride, o.q_token_stride = a.q.token_stride, o.q_head_stride = a.q.head_stride;
  o.k_batch_stride = a.k.batch_stride, o.k_token_stride = a.k.token_stride, o.k_head_stride = a.k.head_stride;
  o.v_batch_stride = a.v.batch_stride, o.v_token_stride = a.v.token_stride, o.v_head_stride = a.v.head_stride;
  o.o_batch_stride = a.out.batch_stride, o.o_token_stride = a.out.token_stride, o.o_head_stride = a.out.head_stride;
  o.lse_batch_stride = a.lse.batch_stride, o.lse_token_stride = a.lse.token_stride, o.lse_head_stride = a.lse.head_stride;
  o.cu_seqlens_q = a.cu_seqlens_q;
  o.seqlens_q = a.seqlens_q;
  o.cu_seqlens_k = a.cu_seqlens_k;
  o.seqlens_k = a.seqlens_k;
  o.block_table = a.block_table;
  o.block_table_stride = a.block_table_stride;
  o.page_size = a.page_size;
  o.page_shift = -1;
  for (int shift = 0; shift < 31; ++shift)
    if (a.page_size == (1 << shift)) o.page_shift = shift;
  o.batch = a.batch;
  o.num_q_heads = a.num_q_heads;
  o.num_kv_heads = a.num_kv_heads;
  o.q_per_kv = a.num_q_heads / a.num_kv_heads;
  o.max_seqlen_q = a.max_seqlen_q;
  o.max_seqlen_k = a.max_seqlen_k;
  o.causal = a.causal;
  o.anchored = a.geometry.order == BLASST_ORDER_ANCHORED;
  o.scale = a.scale != 0.0f ? a.scale : float(1.0 / std::sqrt(double(a.head_dim_qk)));
  o.threshold_scale_factor = a.threshold.threshold_scale_factor;
  o.per_kv_head_factor = a.threshold.per_kv_head_factor;
  o.per_request_factor = a.threshold.per_request_factor;
  o.q_scale = a.scales.q;
  o.k_scale = a.scales.k;
  o.v_scale = a.scales.v;
  o.scales_per_kv_head = a.scales.per_kv_head;
  return o;
}

bool aligned16(const blasst_tensor& t) {
  return (reinterpret_cast<uintptr_t>(t.data) % 16) == 0 && t.batch_stride % 8 == 0 && t.token_stride % 8 == 0 &&
         t.head_stride % 8 == 0;
}

bool device_is_sm90() {
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return major == 9 && minor == 0;
}

namespace {

Status cuda_error(const char* what, cudaError_t err) {
  return {BLASST_ERROR_CUDA, std::string("engine cuda: ") + what + ": " + cudaGetErrorString(err)};
}
Status unsupported(const std::string& why) { return {BLASST_ERROR_UNSUPPORTED, "engine cuda: " + why}; }
Status invalid(const std::string& why) { return {BLASST_ERROR_INVALID_ARGUMENT, "engine cuda: " + why}; }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A device buffer the engine keeps for calls that bring none of their own: grown to the largest
// size asked, never shrunk; null if it cannot be allocated.
struct CachedDeviceBuffer {
  std::mutex mutex;
  void* data = nullptr;
  size_t bytes = 0;
  void* get(size_t need) {
    std::lock_guard<std::mutex> lock(mutex);
    if (bytes < need) {
      cudaFree(data);
      data = nullptr;
      bytes = 0;
      if (cudaMalloc(&data, need) != cudaSuccess) return nullptr;
      bytes = need;
    }
    return data;
  }
};

// Per-head counters the engine uses when the caller wants totals but gave no stats_per_head.
int64_t* internal_stats(size_t heads) {
  static CachedDeviceBuffer buffer;
  return static_cast<int64_t*>(buffer.get(2 * heads * sizeof(int64_t)));
}

// FP8 prefill with P V on the e4m3 wgmma (BLASST_CUDA_SM90_FP8_PV_E4M3) reads V^T [B, Hkv, Dv,
// keys rounded up to 128] from a workspace: its size (0 for every other call), and the
// engine's own buffer of at least `bytes` when the caller gave none (not CUDA-graph capturable:
// give a workspace sized by blasst_workspace_size to capture).
int64_t fp8_pv_keys(const blasst_args& a) { return ceil_div(a.max_seqlen_k, sm90::kVtKeyAlign) * sm90::kVtKeyAlign; }
size_t fp8_pv_workspace_bytes(const blasst_args& a) {
#if BLASST_CUDA_SM90_FP8_PV_E4M3
  if (a.q.dtype == BLASST_DTYPE_FLOAT8_E4M3 && a.v.dtype == BLASST_DTYPE_FLOAT8_E4M3 && a.max_seqlen_k > 0)
    return size_t(a.batch) * size_t(a.num_kv_heads) * size_t(a.head_dim_v) * size_t(fp8_pv_keys(a));
#endif
  (void)a;
  return 0;
}
void* internal_fp8_pv_workspace(size_t bytes) {
  static CachedDeviceBuffer buffer;
  return buffer.get(bytes);
}

// 16-byte cp.async needs 16-byte aligned rows: the base pointer and every stride a multiple
// of 8 elements.
Status check_device_pointer(const char* name, const void* p) {
  if (p && !is_device_pointer(p)) return invalid(std::string(name) + " is not device memory");
  return Status::ok();
}

// Every pointer a kernel reads or writes must be device memory (a host pointer would fault).
Status check_device_pointers(const blasst_args& a) {
  for (const auto& [name, ptr] : detail::call_pointers(a))
    if (Status s = check_device_pointer(name, ptr); !s) return s;
  return Status::ok();
}

// When skip mode loads V (prefill_kernel.cuh): BLASST_CUDA_V_PREFETCH=1 (default) before the
// vote when the previous tile was kept, 0 only after the vote (no skipped tile reads V),
// 2 always before the vote (skipped tiles still save the exponentials and P.V).
int v_prefetch_mode() {
  static const int mode = [] {
    const char* env = std::getenv("BLASST_CUDA_V_PREFETCH");
    if (env && (env[0] == '0' || env[0] == '2') && env[1] == 0) return env[0] - '0';
    return 1;
  }();
  return mode;
}

// Prefill kernel choice: BLASST_CUDA_PREFILL_KERNEL=sm80 keeps Hopper on the sm_80 kernel
// (for comparisons); anything else lets the engine pick the sm_90a kernel where it fits.
bool sm90_allowed_by_env() {
  static const bool allowed = [] {
    const char* env = std::getenv("BLASST_CUDA_PREFILL_KERNEL");
    return !(env && std::string(env) == "sm80");
  }();
  return allowed;
}

// sm_90a code runs on compute capability 9.0 only.

// Rows a TMA view (rows, D, heads) of a packed tensor may span within its numel.
int64_t packed_rows(const blasst_tensor& t, int heads, int head_dim) {
  if (t.token_stride <= 0) return 0;
  const int64_t rest = t.numel - head_dim - int64_t(heads - 1) * t.head_stride;
  return rest < 0 ? 0 : rest / t.token_stride + 1;
}

// The TMA extents for the sm_90a kernel, or nothing when the call does not fit it: a paged
// cache needs pages of a power of two of at least 16 tokens laid out as consecutive token rows;
// every extent must fit 32 bits and every stride the TMA limit of 2^40 bytes.
// Head dim 256 on the sm_90a kernel, bfloat16 and float16 (measured on an H100: 2.1-2.5x the sm_80
// kernel in bf16; the GPU test passed in both dtypes); BLASST_CUDA_SM90_D256=0 keeps them on the
// sm_80 kernel (read at each call, so that a benchmark may compare).
bool sm90_d256_allowed() {
  const char* env = std::getenv("BLASST_CUDA_SM90_D256");
  return !(env && env[0] == '0' && env[1] == 0);
}

std::optional<sm90::TmaExtents> sm90_extents(const blasst_args& a, Elem elem) {
  if (!sm90_allowed_by_env() || !sm90::built(elem, a.head_dim_qk, a.head_dim_v) || !device_is_sm90())
    return std::nullopt;
  if (a.head_dim_qk == 256 && !sm90_d256_allowed()) return std::nullopt;
  sm90::TmaExtents e;
  int64_t q_rows = a.cu_seqlens_q ? packed_rows(a.q, a.num_q_heads, a.head_dim_qk) : a.max_seqlen_q;
  int64_t kv_rows = 0;
  if (a.block_table) {
    // Powers of two: 16-64 tokens go box by box (16 rows each), larger ones tile by tile.
    if (a.page_size < sm90::kBoxRows || (a.page_size & (a.page_size - 1)) != 0) return std::nullopt;
    if (a.k.batch_stride != int64_t(a.page_size) * a.k.token_stride ||
        a.v.batch_stride != int64_t(a.page_size) * a.v.token_stride)
      return std::nullopt;
    kv_rows = int64_t(a.num_pages) * a.page_size;
  } else if (a.cu_seqlens_k) {
    kv_rows = std::min(packed_rows(a.k, a.num_kv_heads, a.head_dim_qk), packed_rows(a.v, a.num_kv_heads, a.head_dim_v));
  } else {
    kv_rows = a.max_seqlen_k;
  }
  if (q_rows <= 0 || kv_rows <= 0 || q_rows > INT32_MAX || kv_rows > INT32_MAX) return std::nullopt;
  constexpr int64_t kMaxStride = (int64_t(1) << 40) / 2;
  for (const blasst_tensor* t : {&a.q, &a.k, &a.v})
    if (t->token_stride >= kMaxStride || t->head_stride >= kMaxStride || t->batch_stride >= kMaxStride) return std::nullopt;
  e.q_rows = int32_t(q_rows);
  e.q_batch = a.cu_seqlens_q ? 1 : a.batch;
  e.kv_rows = int32_t(kv_rows);
  e.kv_batch = (a.block_table || a.cu_seqlens_k) ? 1 : a.batch;
  return e;
}

// MLA's non-absorbed prefill (head_dim_qk 192, head_dim_v 128) has an sm_90a kernel only.
// Why the sm_90a kernel does not take a 192/128 call (sm90_extents said no).
std::string sm90_mla_refusal(const blasst_args& a, Elem elem) {
  const std::string what = "prefill with head_dim_qk 192, head_dim_v 128 runs on the sm_90a kernel only (the sm_80 kernel has "
                           "no such instantiation): ";
  if (!sm90::built(elem, a.head_dim_qk, a.head_dim_v))
    return what + "this build has none for " + (elem == Elem::kBf16 ? "bfloat16" : "float16") +
           " (it needs 90a in BLASST_CUDA_ARCHS, the CUTLASS headers and 192 in BLASST_CUDA_HEAD_DIMS" +
           (elem == Elem::kFp16 ? ", and BLASST_CUDA_FP16=ON)" : ")");
  if (!device_is_sm90()) return what + "the device is not of compute capability 9.0";
  if (!sm90_allowed_by_env()) return what + "BLASST_CUDA_PREFILL_KERNEL=sm80 forbids it";
  return what + "the call does not fit its TMA loads (paged caches need pages of a power of two of at least 16 "
                "tokens, page after page in token rows; extents below 2^31, strides below 2^40 bytes)";
}

// FP8 prefill (e4m3 Q, K and V, bfloat16 O) has an sm_90a kernel only; BLASST_CUDA_SM90_FP8_PREFILL=0
// (read at each call) turns it off, so that such calls are refused.
constexpr const char* kFp8PrefillEnv = "BLASST_CUDA_SM90_FP8_PREFILL";
bool sm90_fp8_prefill_enabled() {
  const char* env = std::getenv(kFp8PrefillEnv);
  return !(env && std::string(env) == "0");
}

// TMA reads FP8 rows with 16-byte aligned strides: the base and every stride a multiple of 16
// elements.
bool aligned16_fp8(const blasst_tensor& t) {
  return (reinterpret_cast<uintptr_t>(t.data) % 16) == 0 && t.batch_stride % 16 == 0 && t.token_stride % 16 == 0 &&
         t.head_stride % 16 == 0;
}

// Why the CUDA engine does not run an FP8 prefill call (empty: it does, on the sm_90a kernel
// whose TMA extents sm90_extents gives).
std::string fp8_prefill_refusal(const blasst_args& a, const std::optional<sm90::TmaExtents>& tma) {
  const std::string what = "prefill with float8_e4m3 operands runs on the sm_90a kernel only: ";
  if (a.q.dtype != BLASST_DTYPE_FLOAT8_E4M3 || a.k.dtype != BLASST_DTYPE_FLOAT8_E4M3 ||
      a.v.dtype != BLASST_DTYPE_FLOAT8_E4M3)
    return what + "it takes q, k and v all in float8_e4m3 (an FP8 KV cache beside 16-bit queries has no CUDA prefill "
                  "kernel; the CPU engine runs it)";
  if (a.out.dtype != BLASST_DTYPE_BFLOAT16) return what + "it writes bfloat16 outputs only (out.dtype)";
  if (a.head_dim_qk != a.head_dim_v || (a.head_dim_qk != 64 && a.head_dim_qk != 128))
    return what + "it is built for head dims 64 and 128 (head_dim_qk == head_dim_v)";
  if (!sm90_fp8_prefill_enabled())
    return std::string("prefill with float8_e4m3 operands is turned off by ") + kFp8PrefillEnv + "=0";
  if (!sm90::built(Elem::kFp8, a.head_dim_qk, a.head_dim_v))
    return what + "this build has none for head dim " + std::to_string(a.head_dim_qk) +
           " (it needs 90a in BLASST_CUDA_ARCHS, the CUTLASS headers, the head dim in BLASST_CUDA_HEAD_DIMS and "
           "BLASST_CUDA_SM90_FP8_PREFILL=ON)";
  if (!device_is_sm90()) return what + "the device is not of compute capability 9.0";
  if (!sm90_allowed_by_env()) return what + "BLASST_CUDA_PREFILL_KERNEL=sm80 forbids it";
  for (auto [name, t] : {std::pair{"q", &a.q}, std::pair{"k", &a.k}, std::pair{"v", &a.v}})
    if (!aligned16_fp8(*t))
      return what + name + " must be 16-byte aligned with strides that are multiples of 16 elements";
  if (!tma)
    return what + "the call does not fit its TMA loads (paged caches need pages of a power of two of at least 16 "
                  "tokens, page after page in token rows; extents below 2^31, strides below 2^40 bytes)";
  return {};
}

Status run_prefill(const blasst_args& a, blasst_run_info* info) {
  const bool fp8 = a.q.dtype == BLASST_DTYPE_FLOAT8_E4M3 || a.k.dtype == BLASST_DTYPE_FLOAT8_E4M3;
  if (!fp8 && a.q.dtype != BLASST_DTYPE_BFLOAT16 && a.q.dtype != BLASST_DTYPE_FLOAT16)
    return unsupported("prefill takes bfloat16 or float16 inputs");
  const bool mla = a.head_dim_qk != a.head_dim_v;
  if (mla && (a.head_dim_qk != 192 || a.head_dim_v != 128))
    return unsupported("prefill needs head_dim_qk == head_dim_v, or head_dim_qk 192 with head_dim_v 128 (MLA)");
  const Elem elem = fp8 ? Elem::kFp8 : a.q.dtype == BLASST_DTYPE_BFLOAT16 ? Elem::kBf16 : Elem::kFp16;
  const std::optional<sm90::TmaExtents> sm90_tma = sm90_extents(a, elem);
  if (fp8) {
    if (const std::string why = fp8_prefill_refusal(a, sm90_tma); !why.empty()) return unsupported(why);
  }
  if (mla && !sm90_tma) return unsupported(sm90_mla_refusal(a, elem));
  const PrefillTiles tiles =
      sm90_tma ? PrefillTiles{sm90::kGroupRows, sm90::block_n(a.head_dim_qk)} : prefill_tiles(a.head_dim_qk);
  if (tiles.block_m == 0)
    return unsupported("prefill head dim " + std::to_string(a.head_dim_qk) + " is not built (64, 128, 256)");
#if !BLASST_CUDA_BUILD_FP16
  if (a.q.dtype == BLASST_DTYPE_FLOAT16) return unsupported("float16 kernels are not built (BLASST_CUDA_FP16=OFF)");
#endif
  if (a.scale < 0) return unsupported("a negative scale");
  if (a.batch > 65535) return unsupported("batch > 65535");
  if (ceil_div(a.max_seqlen_q, tiles.block_m) * a.num_q_heads > int64_t(INT32_MAX))
    return unsupported("num_q_heads * ceil(max_seqlen_q / block_m) too large for one launch");
  for (auto [name, t] : {std::pair{"q", &a.q}, std::pair{"k", &a.k}, std::pair{"v", &a.v}, std::pair{"out", &a.out}})
    if (!aligned16(*t))
      return unsupported(std::string(name) + " must be 16-byte aligned with strides that are multiples of 8 elements");
  const int64_t row_blocks = ceil_div(a.max_seqlen_q, tiles.block_m);
  const int64_t tiles_per_group = ceil_div(a.max_seqlen_k, tiles.block_n);
  const int64_t trace_bytes = int64_t(a.batch) * a.num_q_heads * row_blocks * tiles_per_group;
  if (a.decisions && a.decisions_numel < trace_bytes)
    return invalid("decisions_numel is " + std::to_string(a.decisions_numel) +
                   ", expected >= batch * groups * tiles = " + std::to_string(trace_bytes));

  PrefillParams p{};
  static_cast<AttentionOperands&>(p) = attention_operands(a);
  p.row_blocks = int32_t(row_blocks);
  p.tiles_per_group = int32_t(tiles_per_group);
  p.scale_log2 = float(double(p.scale) * 1.4426950408889634);
  p.v_prefetch = v_prefetch_mode();
  // Totals for info come from per-head counts: the caller's buffer, or the engine's own.
  int64_t* stats = a.stats_per_head;
  if (!stats && info) {
    stats = internal_stats(size_t(a.num_q_heads));
    if (!stats) return cuda_error("allocating statistics", cudaErrorMemoryAllocation);
  }
  p.stats_per_head = stats;
  p.decisions = a.decisions;
  if (const size_t vt_bytes = fp8 ? fp8_pv_workspace_bytes(a) : 0; vt_bytes > 0) {
    if (a.workspace && reinterpret_cast<uintptr_t>(a.workspace) % 16 != 0)
      return invalid("the workspace of an FP8 prefill call must be 16-byte aligned");
    if (a.workspace && a.workspace_bytes < vt_bytes)
      return invalid("workspace_bytes is " + std::to_string(a.workspace_bytes) + ", this call needs " +
                     std::to_string(vt_bytes) + " (blasst_workspace_size)");
    p.vt = a.workspace ? a.workspace : internal_fp8_pv_workspace(vt_bytes);
    if (!p.vt) return cuda_error("allocating the FP8 V^T workspace", cudaErrorMemoryAllocation);
    p.vt_keys = int32_t(fp8_pv_keys(a));
  }
  // The dense instantiation when nothing can be skipped: factor 0 and no per-head factors.
  const bool skip = skip_instantiation(a.threshold);

  cudaStream_t stream = static_cast<cudaStream_t>(a.stream);
  cudaError_t err;
  if (stats) {
    err = cudaMemsetAsync(stats, 0, sizeof(int64_t) * 2 * size_t(a.num_q_heads), stream);
    if (err != cudaSuccess) return cuda_error("clearing stats_per_head", err);
  }
  if (a.decisions && trace_bytes > 0) {
    err = cudaMemsetAsync(a.decisions, BLASST_TILE_NOT_VISITED, size_t(trace_bytes), stream);
    if (err != cudaSuccess) return cuda_error("clearing decisions", err);
  }
  if (row_blocks > 0) {
    err = sm90_tma ? sm90::launch(elem, a.head_dim_qk, a.head_dim_v, skip, p, *sm90_tma, stream)
                   : launch_prefill(elem, a.head_dim_qk, skip, p, stream);
    if (err != cudaSuccess) return cuda_error("prefill launch", err);
  }

  if (!info) return Status::ok();
  info->engine = BLASST_ENGINE_CUDA;
  info->geometry.block_m = tiles.block_m;
  info->geometry.block_n = tiles.block_n;
  info->geometry.order = a.geometry.order;
  info->geometry.splits = 1;
  info->visited = -1;
  info->skipped = -1;
  // Totals need the counts on the host: the caller asked for them (info), and never while the
  // stream is captured into a graph (then they stay -1: read stats_per_head instead).
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &capture) == cudaSuccess && capture == cudaStreamCaptureStatusNone) {
    std::vector<int64_t> counts(2 * size_t(a.num_q_heads));
    err = cudaMemcpyAsync(counts.data(), stats, counts.size() * sizeof(int64_t), cudaMemcpyDeviceToHost, stream);
    if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
    if (err != cudaSuccess) return cuda_error("reading statistics", err);
    info->visited = info->skipped = 0;
    for (size_t h = 0; h < size_t(a.num_q_heads); ++h) {
      info->visited += counts[2 * h];
      info->skipped += counts[2 * h + 1];
    }
  }
  return Status::ok();
}

}  // namespace

PrefillTiles prefill_tiles(int head_dim) {
  switch (head_dim) {
#if BLASST_CUDA_BUILD_D64
    case 64: return {128, 128};
#endif
#if BLASST_CUDA_BUILD_D128
    case 128: return {128, 64};
#endif
#if BLASST_CUDA_BUILD_D256
    case 256: return {128, 64};
#endif
    default: return {};
  }
}

cudaError_t launch_prefill(Elem elem, int head_dim, bool skip, const PrefillParams& p, cudaStream_t stream) {
  switch (head_dim) {
#if BLASST_CUDA_BUILD_D64
    case 64: return launch_prefill_d64(elem, skip, p, stream);
#endif
#if BLASST_CUDA_BUILD_D128
    case 128: return launch_prefill_d128(elem, skip, p, stream);
#endif
#if BLASST_CUDA_BUILD_D256
    case 256: return launch_prefill_d256(elem, skip, p, stream);
#endif
    default: return cudaErrorInvalidValue;
  }
}

namespace sm90 {

bool built(Elem elem, int head_dim_qk, int head_dim_v) {
#if !BLASST_CUDA_BUILD_FP16
  if (elem == Elem::kFp16) return false;
#endif
  if (elem == Elem::kFp8) {
    if (head_dim_qk != head_dim_v) return false;
    switch (head_dim_qk) {
#if BLASST_CUDA_BUILD_SM90_FP8_D64
      case 64: return true;
#endif
#if BLASST_CUDA_BUILD_SM90_FP8_D128
      case 128: return true;
#endif
      default: return false;
    }
  }
  if (head_dim_qk != head_dim_v) {
#if BLASST_CUDA_BUILD_SM90_D192_128
    if (head_dim_qk == 192 && head_dim_v == 128) return true;
#endif
    return false;
  }
  switch (head_dim_qk) {
#if BLASST_CUDA_BUILD_SM90_D64
    case 64: return true;
#endif
#if BLASST_CUDA_BUILD_SM90_D128
    case 128: return true;
#endif
#if BLASST_CUDA_BUILD_SM90_D256
    case 256: return true;
#endif
    default: return false;
  }
}

cudaError_t launch(Elem elem, int head_dim_qk, int head_dim_v, bool skip, const PrefillParams& p, const TmaExtents& e,
                   cudaStream_t stream) {
  (void)elem, (void)skip, (void)p, (void)e, (void)stream;
  if (elem == Elem::kFp8) {
    if (head_dim_qk != head_dim_v) return cudaErrorInvalidValue;
    switch (head_dim_qk) {
#if BLASST_CUDA_BUILD_SM90_FP8_D64
      case 64: return launch_fp8_d64(skip, p, e, stream);
#endif
#if BLASST_CUDA_BUILD_SM90_FP8_D128
      case 128: return launch_fp8_d128(skip, p, e, stream);
#endif
      default: return cudaErrorInvalidValue;
    }
  }
  if (head_dim_qk != head_dim_v) {
#if BLASST_CUDA_BUILD_SM90_D192_128
    if (head_dim_qk == 192 && head_dim_v == 128) return launch_d192_128(elem, skip, p, e, stream);
#endif
    return cudaErrorInvalidValue;
  }
  switch (head_dim_qk) {
#if BLASST_CUDA_BUILD_SM90_D64
    case 64: return launch_d64(elem, skip, p, e, stream);
#endif
#if BLASST_CUDA_BUILD_SM90_D128
    case 128: return launch_d128(elem, skip, p, e, stream);
#endif
#if BLASST_CUDA_BUILD_SM90_D256
    case 256: return launch_d256(elem, skip, p, e, stream);
#endif
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace sm90

bool device_available() {
  static const bool available = [] {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
      cudaGetLastError();
      return false;
    }
    return true;
  }();
  if (!available) return false;
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return major >= 8;
}

bool is_device_pointer(const void* p) {
  if (!p) return false;
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

// Decode keeps split partials in the workspace; prefill runs unsplit and needs none, except FP8
// prefill with P V in e4m3 (V^T).
size_t workspace_size(const blasst_args& args, blasst_phase phase) {
  return phase == BLASST_PHASE_DECODE ? decode::decode_workspace_size(args) : fp8_pv_workspace_bytes(args);
}

Status run(const blasst_args& args, blasst_phase phase, blasst_run_info* info) {
  if (Status s = check_device_pointers(args); !s) return s;
  if (phase == BLASST_PHASE_DECODE) return decode::run_decode(args, info);
  return run_prefill(args, info);
}

}  // namespace blasst::cuda
