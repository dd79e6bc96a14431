#include "common/attention_runner.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "core/dtype.hpp"
#include "core/layout.hpp"

#ifdef BLASST_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace blasst::tools {

double Problem::dense_flops() const {
  // visible (query, key) pairs per (entry, head)
  double pairs = double(lq) * double(lk);
  if (causal) {
    if (lq == lk) {
      pairs *= 0.5;  // the usual convention for square causal attention
    } else {
      pairs = 0.0;  // bottom-right aligned: row i sees min(Lk, Lk - Lq + i + 1) keys
      for (int64_t i = 0; i < lq; ++i) pairs += double(std::clamp<int64_t>(lk - lq + i + 1, 0, lk));
    }
  }
  return 2.0 * pairs * double(d + dv) * double(hq) * double(batch);
}

double Problem::kv_bytes(blasst_dtype dtype) const {
  const double elem = double(detail::dtype_size(dtype));
  return double(batch) * double(lk) * double(hkv) * double(d + dv) * elem;
}

const char* dtype_label(blasst_dtype dtype) {
  switch (dtype) {
    case BLASST_DTYPE_FLOAT16: return "fp16";
    case BLASST_DTYPE_BFLOAT16: return "bf16";
    case BLASST_DTYPE_FLOAT8_E4M3: return "fp8_e4m3";
    default: return "fp32";
  }
}
const char* engine_label(blasst_engine engine) {
  switch (engine) {
    case BLASST_ENGINE_CPU: return "cpu";
    case BLASST_ENGINE_CUDA: return "cuda";
    default: return "auto";
  }
}
const char* order_label(blasst_order order) { return order == BLASST_ORDER_ANCHORED ? "anchored" : "ascending"; }
const char* phase_label(blasst_phase phase) { return phase == BLASST_PHASE_DECODE ? "decode" : "prefill"; }

std::vector<uint8_t> convert_from_f32(const float* src, int64_t n, blasst_dtype dtype) {
  std::vector<uint8_t> out(size_t(n) * detail::dtype_size(dtype));
  if (n <= 0) return out;
  if (dtype == BLASST_DTYPE_FLOAT32) {
    std::memcpy(out.data(), src, size_t(n) * 4);
  } else {
    for (int64_t i = 0; i < n; ++i) detail::store_element(out.data(), dtype, i, src[i]);
  }
  return out;
}

std::vector<float> convert_to_f32(const uint8_t* src, int64_t n, blasst_dtype dtype) {
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = detail::load_element(src, dtype, i);
  return out;
}

ErrorStats compare_outputs(const std::vector<float>& a, const std::vector<float>& ref) {
  ErrorStats e;
  if (a.size() != ref.size()) throw std::invalid_argument("compare_outputs: sizes differ");
  double diff2 = 0.0, ref2 = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = double(a[i]) - double(ref[i]);
    e.max_abs = std::max(e.max_abs, std::fabs(d));
    diff2 += d * d;
    ref2 += double(ref[i]) * double(ref[i]);
  }
  e.rel_l2 = ref2 > 0.0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
  return e;
}

// ---------------------------------------------------------------------------------------
// Device mirror of the buffers (CUDA builds only).
struct AttentionRunner::DeviceBuffers {
#ifdef BLASST_HAVE_CUDA
  void *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr, *lse = nullptr, *stats = nullptr;
  ~DeviceBuffers() {
    for (void* p : {q, k, v, o, lse, stats})
      if (p) cudaFree(p);
  }
  static void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA ") + what + ": " + cudaGetErrorString(e));
  }
  void* upload(const void* host, size_t bytes) {
    void* p = nullptr;
    check(cudaMalloc(&p, std::max<size_t>(bytes, 1)), "cudaMalloc");
    if (host && bytes) check(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy to device");
    return p;
  }
  static void download(void* host, const void* dev, size_t bytes) {
    check(cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy to host");
  }
#endif
};

AttentionRunner::AttentionRunner(const Problem& problem, blasst_dtype dtype, const float* q,
                                 const float* k, const float* v, blasst_engine engine, int num_threads)
    : p_(problem), dtype_(dtype), threads_(num_threads) {
  // Every buffer holds at least one element: the API wants non-NULL data and numel > 0
  // even when Lq or Lk is 0.
  const size_t elem = detail::dtype_size(dtype);
  q_ = convert_from_f32(q, p_.q_numel(), dtype);
  k_ = convert_from_f32(k, p_.k_numel(), dtype);
  v_ = convert_from_f32(v, p_.v_numel(), dtype);
  for (auto* buf : {&q_, &k_, &v_}) buf->resize(std::max(buf->size(), elem));
  o_.assign(size_t(std::max<int64_t>(p_.o_numel(), 1)) * elem, 0);
  lse_.assign(size_t(std::max<int64_t>(p_.lse_numel(), 1)), 0.0f);
  stats_.assign(size_t(std::max(p_.hq, p_.hkv)) * 2, 0);

  const bool want_cuda = engine == BLASST_ENGINE_CUDA || (engine == BLASST_ENGINE_AUTO && blasst_cuda_available());
  if (!want_cuda) return;
#ifdef BLASST_HAVE_CUDA
  if (!blasst_cuda_available()) throw std::runtime_error("engine cuda: no usable CUDA device");
  device_ = std::make_unique<DeviceBuffers>();
  device_->q = device_->upload(q_.data(), q_.size());
  device_->k = device_->upload(k_.data(), k_.size());
  device_->v = device_->upload(v_.data(), v_.size());
  device_->o = device_->upload(nullptr, o_.size());
  device_->lse = device_->upload(nullptr, lse_.size() * sizeof(float));
  device_->stats = device_->upload(nullptr, stats_.size() * sizeof(int64_t));
#else
  throw std::runtime_error("engine cuda: this build of blasst has no CUDA engine (built without nvcc)");
#endif
}

AttentionRunner::~AttentionRunner() = default;

blasst_args AttentionRunner::make_args(blasst_phase phase, float sf, const blasst_geometry& geometry) {
  (void)phase;
  blasst_args a;
  blasst_args_init(&a);
  a.batch = int32_t(p_.batch);
  a.num_q_heads = int32_t(p_.hq);
  a.num_kv_heads = int32_t(p_.hkv);
  a.head_dim_qk = int32_t(p_.d);
  a.head_dim_v = int32_t(p_.dv);
  a.max_seqlen_q = int32_t(p_.lq);
  a.max_seqlen_k = int32_t(p_.lk);
  // Contiguous [B, L, H, D] layouts: strides in elements.
  auto view = [&](void* data, int64_t len, int64_t heads, int64_t dim, int64_t numel, blasst_dtype dt) {
    blasst_tensor t{};
    t.data = data;
    t.dtype = dt;
    t.head_stride = dim;
    t.token_stride = heads * dim;
    t.batch_stride = len * heads * dim;
    t.numel = std::max<int64_t>(numel, 1);
    return t;
  };
  void* q = q_.data();
  void* k = k_.data();
  void* v = v_.data();
  void* o = o_.data();
  void* lse = lse_.data();
  int64_t* stats = stats_.data();
#ifdef BLASST_HAVE_CUDA
  if (device_) {
    q = device_->q, k = device_->k, v = device_->v, o = device_->o, lse = device_->lse;
    stats = static_cast<int64_t*>(device_->stats);
  }
#endif
  a.q = view(q, p_.lq, p_.hq, p_.d, p_.q_numel(), dtype_);
  a.k = view(k, p_.lk, p_.hkv, p_.d, p_.k_numel(), dtype_);
  a.v = view(v, p_.lk, p_.hkv, p_.dv, p_.v_numel(), dtype_);
  a.out = view(o, p_.lq, p_.hq, p_.dv, p_.o_numel(), dtype_);
  a.lse = view(lse, p_.lq, p_.hq, 1, p_.lse_numel(), BLASST_DTYPE_FLOAT32);
  a.scale = p_.scale;
  a.causal = p_.causal ? 1 : 0;
  a.threshold.threshold_scale_factor = sf;
  a.geometry = geometry;
  a.engine = device_ ? BLASST_ENGINE_CUDA : BLASST_ENGINE_CPU;
  a.num_threads = threads_;
  a.stats_per_head = stats;
  return a;
}

Status AttentionRunner::run(blasst_phase phase, float threshold_scale_factor, const blasst_geometry& geometry,
                            CallResult* result) {
  const blasst_args a = make_args(phase, threshold_scale_factor, geometry);
  blasst_run_info info;
  blasst_run_info_init(&info);
  Status s = attention(phase, a, &info);
  if (!s) return s;
  const size_t heads = size_t(phase == BLASST_PHASE_DECODE ? p_.hkv : p_.hq);
#ifdef BLASST_HAVE_CUDA
  if (device_) {
    try {
      DeviceBuffers::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
      DeviceBuffers::download(stats_.data(), device_->stats, heads * 2 * sizeof(int64_t));
    } catch (const std::exception& e) {
      return {BLASST_ERROR_CUDA, e.what()};
    }
  }
#endif
  if (result) {
    result->info = info;
    result->per_head.assign(stats_.begin(), stats_.begin() + std::ptrdiff_t(heads * 2));
  }
  return s;
}

std::vector<float> AttentionRunner::output() const {
#ifdef BLASST_HAVE_CUDA
  if (device_) {
    std::vector<uint8_t> host(o_.size());
    DeviceBuffers::download(host.data(), device_->o, host.size());
    return convert_to_f32(host.data(), p_.o_numel(), dtype_);
  }
#endif
  return convert_to_f32(o_.data(), p_.o_numel(), dtype_);
}

std::vector<float> AttentionRunner::lse() const {
#ifdef BLASST_HAVE_CUDA
  if (device_) {
    std::vector<float> host(lse_.size());
    DeviceBuffers::download(host.data(), device_->lse, host.size() * sizeof(float));
    return host;
  }
#endif
  return lse_;
}

}  // namespace blasst::tools
