// Support for the GPU engine tests: structured random inputs in every K/V layout, a GPU run
// (device copies, poisoned outputs) and the comparison with the CPU engine at the geometry
// the GPU reported.
#pragma once

#include <blasst/blasst.h>

#include <cstdint>
#include <string>
#include <vector>

namespace blasst::gpu_test {

enum class Layout { Contiguous, Padded, Ragged, Paged };

struct Case {
  std::vector<int64_t> lq{128}, lk{128};  // per batch entry
  int hq = 2, hkv = 1, d = 128;  // d: head dim of Q and K
  int dv = 0;                     // head dim of V and O; 0: d (MLA's non-absorbed prefill: d 192, dv 128)
  int causal = 0;
  blasst_order order = BLASST_ORDER_ASCENDING;
  blasst_dtype dtype = BLASST_DTYPE_BFLOAT16;  // FLOAT8_E4M3: Q, K and V in FP8 (out in bf16)
  int fp8_per_kv_head = 0;                    // FP8: dequantization scales per KV head (else per tensor)
  Layout layout = Layout::Contiguous;
  int page_size = 16;
  float factor = 0.0f;
  std::vector<float> per_head;     // empty = scalar factor
  std::vector<float> per_request;  // one factor per batch entry; empty = scalar factor
  uint64_t seed = 1;
  std::string name() const;
  int d_v() const { return dv > 0 ? dv : d; }
  bool fp8() const { return dtype == BLASST_DTYPE_FLOAT8_E4M3; }
  blasst_dtype out_dtype() const { return fp8() ? BLASST_DTYPE_BFLOAT16 : dtype; }
};

// Inputs of one case in its layout (16-bit values) and the float values they hold. FP8 cases
// quantize the 16-bit values into q8/k8/v8 with scales of amax / 448 (per tensor, or per KV
// head: Q's over the query heads of each KV head); those are the call's inputs.
struct Inputs {
  std::vector<uint16_t> q, k, v;       // layout buffers
  std::vector<uint8_t> q8, k8, v8;     // FP8 cases: the same layouts in e4m3
  std::vector<float> q_scale, k_scale, v_scale;  // FP8 cases: 1 or num_kv_heads values each
  int64_t q_rows = 0, kv_rows = 0;     // token rows (or page slots) in the buffers
  std::vector<int32_t> cu_q, cu_k, seq_q, seq_k, block_table;
  int32_t max_lq = 0, max_lk = 0, num_pages = 0, bt_stride = 0;
  // Offsets (in tokens) of entry b's first row in the Q and K buffers (not paged).
  std::vector<int64_t> q_row0, k_row0;
  int64_t q_batch_rows = 0, k_batch_rows = 0;  // padded layouts: rows per entry
};

Inputs make_inputs(const Case& c);

// The value an input element holds (FP8: stored value times its scale); `which` is 'q', 'k' or
// 'v', `index` the element's index in its layout buffer.
float input_value(const Case& c, const Inputs& in, char which, size_t index);

// The float value of a 16-bit element of dtype dt (bf16 or fp16).
float to_float(blasst_dtype dt, uint16_t h);

struct GpuRun {
  blasst_status status = BLASST_ERROR_INTERNAL;
  std::string message;
  blasst_run_info info{};
  std::vector<uint16_t> out;
  std::vector<float> lse;
  std::vector<uint8_t> decisions;
  std::vector<int64_t> stats;
};

// Runs the case on the given engine (CUDA: device copies; CPU: host buffers) at `geometry`.
// With `replays` (CUDA, c.per_request set): captures the call in a CUDA graph once, then for
// each set of per-request factors writes it to the call's factor buffer and replays the graph;
// one result per replay goes to replay_runs (info is not read back under capture).
GpuRun run_engine(const Case& c, const Inputs& in, blasst_engine engine, blasst_geometry geometry,
                  blasst_phase phase = BLASST_PHASE_PREFILL,
                  const std::vector<std::vector<float>>* replays = nullptr,
                  std::vector<GpuRun>* replay_runs = nullptr);
inline GpuRun run_gpu(const Case& c, const Inputs& in, blasst_phase phase = BLASST_PHASE_PREFILL) {
  return run_engine(c, in, BLASST_ENGINE_CUDA, blasst_geometry{0, 0, c.order, 0}, phase);
}

// GPU run, CPU run at the GPU's geometry, and every comparison (gtest failures on mismatch).
// A call refused because this build lacks its kernel (a head dim, dtype or FP8 path left out of
// BLASST_CUDA_HEAD_DIMS / BLASST_CUDA_FP16 / ...): such a case is reported and not checked, so that a
// pruned build runs the cases it has. Any other refusal is a failure.
bool not_built_here(const GpuRun& g);

void check_against_cpu(const Case& c);

}  // namespace blasst::gpu_test
