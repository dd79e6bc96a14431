// One attention problem held in the layout of the C API, ready to be run repeatedly at
// different thresholds and geometries (the demo, the benchmark and `blasst run` share it).
//
// Inputs are given in fp32, contiguous:
//   q [B, Lq, Hq, D]   k [B, Lk, Hkv, D]   v [B, Lk, Hkv, Dv]
// and converted once to the compute dtype. Outputs: O [B, Lq, Hq, Dv] (compute dtype, read
// back as fp32), LSE [B, Lq, Hq] fp32, and per-head statistics [H, 2] (visited, skipped)
// with H = Hq in prefill and Hkv in decode. With a CUDA engine the buffers live on the GPU.
#pragma once

#include <blasst/blasst.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace blasst::tools {

struct Problem {
  int64_t batch = 1, lq = 1, lk = 1, hq = 1, hkv = 1, d = 64, dv = 64;
  bool causal = false;
  float scale = 0.0f;  // 0 = 1/sqrt(d)

  int64_t q_numel() const { return batch * lq * hq * d; }
  int64_t k_numel() const { return batch * lk * hkv * d; }
  int64_t v_numel() const { return batch * lk * hkv * dv; }
  int64_t o_numel() const { return batch * lq * hq * dv; }
  int64_t lse_numel() const { return batch * lq * hq; }
  // Multiply-adds of dense attention x 2 (QK^T and PV), halved under a causal mask when
  // Lq == Lk (dense-equivalent FLOPs: 4 * Lq * Lk * D * Hq per entry, for D == Dv).
  double dense_flops() const;
  // Bytes of K and V a dense pass reads once per KV head (decode's memory traffic).
  double kv_bytes(blasst_dtype dtype) const;
};

struct CallResult {
  blasst_run_info info{};
  std::vector<int64_t> per_head;  // [H, 2] (visited, skipped)
  double sparsity() const { return info.visited ? double(info.skipped) / double(info.visited) : 0.0; }
};

class AttentionRunner {
 public:
  // engine: BLASST_ENGINE_CPU, BLASST_ENGINE_CUDA, or AUTO (CUDA when built in and a device
  // is present, else CPU). Throws std::runtime_error when CUDA is asked for and unusable.
  AttentionRunner(const Problem& problem, blasst_dtype dtype, const float* q, const float* k,
                  const float* v, blasst_engine engine, int num_threads);
  ~AttentionRunner();
  AttentionRunner(const AttentionRunner&) = delete;
  AttentionRunner& operator=(const AttentionRunner&) = delete;

  // Runs one call and waits for it to finish. Statistics are copied to result->per_head.
  Status run(blasst_phase phase, float threshold_scale_factor, const blasst_geometry& geometry,
             CallResult* result);

  std::vector<float> output() const;  // O as fp32 [B, Lq, Hq, Dv]
  std::vector<float> lse() const;     // [B, Lq, Hq]
  bool on_device() const { return device_ != nullptr; }
  blasst_engine engine() const { return on_device() ? BLASST_ENGINE_CUDA : BLASST_ENGINE_CPU; }
  const Problem& problem() const { return p_; }
  blasst_dtype dtype() const { return dtype_; }

 private:
  struct DeviceBuffers;
  blasst_args make_args(blasst_phase phase, float sf, const blasst_geometry& geometry);

  Problem p_;
  blasst_dtype dtype_;
  int threads_;
  std::vector<uint8_t> q_, k_, v_, o_;  // host copies in the compute dtype
  std::vector<float> lse_;
  std::vector<int64_t> stats_;
  std::unique_ptr<DeviceBuffers> device_;
};

// Accuracy of an output against a reference of the same shape.
struct ErrorStats {
  double max_abs = 0.0;
  double rel_l2 = 0.0;  // ||a - ref|| / ||ref||
};
ErrorStats compare_outputs(const std::vector<float>& a, const std::vector<float>& ref);

const char* dtype_label(blasst_dtype dtype);    // "fp32" / "fp16" / "bf16"
const char* engine_label(blasst_engine engine);  // "cpu" / "cuda" / "auto"
const char* order_label(blasst_order order);     // "ascending" / "anchored"
const char* phase_label(blasst_phase phase);     // "prefill" / "decode"

// Buffer conversions between fp32 and a compute dtype (little-endian bytes).
std::vector<uint8_t> convert_from_f32(const float* src, int64_t n, blasst_dtype dtype);
std::vector<float> convert_to_f32(const uint8_t* src, int64_t n, blasst_dtype dtype);

}  // namespace blasst::tools
