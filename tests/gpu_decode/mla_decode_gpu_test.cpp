// The sm_90a MLA decode kernel (absorbed MLA: Q [B, Lq, Hq, 576], one latent KV head of 576
// values per token, V its first 512) against the CPU engine at the geometry the GPU reports:
// decisions tile for tile (groups of 64 head-major (head, row) pairs), statistics, outputs and
// LSE; paged (64-token pages, shuffled) and contiguous caches; odd lengths, ragged batches,
// 16/64/128 heads, 1 and 2 query tokens, both orders, splits. Skips without a Hopper GPU.
#include <blasst/blasst.hpp>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "core/dtype.hpp"
#include "device_buffers.hpp"

namespace {

using blasst::detail::bf16_to_float;
using blasst::detail::float_to_bf16;
using blasst::test::DeviceBuffer;
constexpr auto tensor = blasst::test::bf16_tensor;

constexpr int kDqk = 576, kDv = 512;


bool hopper_present() {
  if (blasst_cuda_available() != 1) return false;
  int device = 0, major = 0, minor = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  return major == 9 && minor == 0;
}

struct Problem {
  int lq, hq;
  std::vector<int32_t> lk;  // per entry (batch = lk.size())
  bool causal = true;
  float factor = 0.0f;
  blasst_order order = BLASST_ORDER_ASCENDING;
  int splits = 0;     // 0: the engine's choice
  int page_size = 0;  // 0: contiguous latent cache
  int batch() const { return int(lk.size()); }
};

// Latent vectors with an attention sink at token 0, a local window before the end and heavy
// tails; queries share a direction with both, so that middle tiles can be skipped.
struct Inputs {
  std::vector<uint16_t> q, kv;  // [B, Lq, Hq, 576], [B, Lk_max, 1, 576]
  int lk_max = 0;
};

Inputs make_inputs(const Problem& pr, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::student_t_distribution<float> heavy(3.0f);
  Inputs in;
  in.lk_max = *std::max_element(pr.lk.begin(), pr.lk.end());
  in.q.resize(size_t(pr.batch()) * pr.lq * pr.hq * kDqk);
  in.kv.resize(size_t(pr.batch()) * in.lk_max * kDqk);
  std::vector<float> dir(kDqk);
  for (auto& x : dir) x = normal(rng) * 0.5f;
  for (size_t i = 0; i < in.q.size(); ++i) in.q[i] = float_to_bf16(0.5f * normal(rng) + 0.6f * dir[i % kDqk]);
  for (int b = 0; b < pr.batch(); ++b)
    for (int t = 0; t < in.lk_max; ++t)
      for (int c = 0; c < kDqk; ++c) {
        float x = 0.3f * heavy(rng);
        if (t == 0) x += 3.0f * dir[c];
        if (t > pr.lk[size_t(b)] - 80 && t < pr.lk[size_t(b)]) x += 1.2f * dir[c];
        in.kv[(size_t(b) * in.lk_max + t) * kDqk + c] = float_to_bf16(x);
      }
  return in;
}

struct Result {
  blasst::Status status;
  std::vector<float> out, lse;
  std::vector<uint8_t> decisions;
  std::vector<int64_t> per_head;
  blasst_run_info info{};
};


// Trace bytes for groups of 64 pairs over tiles of 64 keys (the MLA kernel's geometry).
size_t trace_size(const Problem& pr, int lk_max) {
  const size_t chunks = size_t((pr.hq * pr.lq + 63) / 64);
  return size_t(pr.batch()) * chunks * size_t((lk_max + 63) / 64);
}

// The call on `k_data` (V = its first 512 values); CPU when device == false.
blasst_args make_args(const Problem& pr, const Inputs& in, void* q, void* kv, int64_t kv_batch_stride, int64_t kv_numel,
                      void* out, float* lse) {
  blasst_args a = blasst::default_args();
  a.batch = pr.batch();
  a.num_q_heads = pr.hq;
  a.num_kv_heads = 1;
  a.head_dim_qk = kDqk;
  a.head_dim_v = kDv;
  a.max_seqlen_q = pr.lq;
  a.max_seqlen_k = in.lk_max;
  a.causal = pr.causal;
  a.threshold.threshold_scale_factor = pr.factor;
  a.geometry.order = pr.order;
  a.geometry.splits = pr.splits;
  const int64_t q_numel = int64_t(in.q.size());
  a.q = tensor(q, int64_t(pr.lq) * pr.hq * kDqk, int64_t(pr.hq) * kDqk, kDqk, q_numel);
  a.k = tensor(kv, kv_batch_stride, kDqk, kDqk, kv_numel);
  a.v = a.k;  // the same memory: V is the first 512 values of each latent vector
  const int64_t out_numel = int64_t(pr.batch()) * pr.lq * pr.hq * kDv;
  a.out = tensor(out, int64_t(pr.lq) * pr.hq * kDv, int64_t(pr.hq) * kDv, kDv, out_numel);
  a.lse = tensor(lse, int64_t(pr.lq) * pr.hq, pr.hq, 1, int64_t(pr.batch()) * pr.lq * pr.hq);
  a.lse.dtype = BLASST_DTYPE_FLOAT32;
  return a;
}

Result run_gpu(const Problem& pr, const Inputs& in) {
  Result r;
  const int lkm = in.lk_max;
  std::vector<uint16_t> cache = in.kv;
  std::vector<int32_t> table;
  int pages_per_seq = 0, num_pages = 0;
  if (pr.page_size > 0) {  // pages [num_pages, page_size, 1, 576] in a shuffled order, NaN where unused
    pages_per_seq = (lkm + pr.page_size - 1) / pr.page_size;
    num_pages = pr.batch() * pages_per_seq + 3;
    std::vector<int32_t> order(static_cast<size_t>(num_pages));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), std::mt19937(7));
    table.assign(order.begin(), order.begin() + pr.batch() * pages_per_seq);
    cache.assign(size_t(num_pages) * pr.page_size * kDqk, float_to_bf16(NAN));
    for (int b = 0; b < pr.batch(); ++b)
      for (int t = 0; t < pr.lk[size_t(b)]; ++t) {
        const size_t page = size_t(table[size_t(b) * pages_per_seq + t / pr.page_size]);
        std::copy_n(in.kv.begin() + (size_t(b) * lkm + t) * kDqk, kDqk,
                    cache.begin() + (page * pr.page_size + t % pr.page_size) * kDqk);
      }
  }
  const size_t out_numel = size_t(pr.batch()) * pr.lq * pr.hq * kDv, lse_numel = size_t(pr.batch()) * pr.lq * pr.hq;
  DeviceBuffer<uint16_t> dq(in.q), dkv(cache), dout(out_numel);
  DeviceBuffer<float> dlse(lse_numel);
  DeviceBuffer<int32_t> dlk(pr.lk), dtable(table);
  DeviceBuffer<uint8_t> ddec(trace_size(pr, lkm));
  DeviceBuffer<int64_t> dstats(2);
  cudaMemset(dout.ptr, 0xff, out_numel * 2);  // poison: NaN
  cudaMemset(dlse.ptr, 0xff, lse_numel * 4);
  const int64_t kv_bs = pr.page_size ? int64_t(pr.page_size) * kDqk : int64_t(lkm) * kDqk;
  blasst_args a = make_args(pr, in, dq.ptr, dkv.ptr, kv_bs, int64_t(cache.size()), dout.ptr, dlse.ptr);
  if (pr.page_size) {
    a.block_table = dtable.ptr;
    a.block_table_stride = pages_per_seq;
    a.page_size = pr.page_size;
    a.num_pages = num_pages;
  }
  a.seqlens_k = dlk.ptr;
  a.decisions = ddec.ptr;
  a.decisions_numel = int64_t(ddec.count);
  a.stats_per_head = dstats.ptr;
  a.engine = BLASST_ENGINE_CUDA;
  blasst_run_info_init(&r.info);
  r.status = blasst::decode(a, &r.info);
  if (!r.status.is_ok()) return r;
  if (cudaDeviceSynchronize() != cudaSuccess) {
    r.status = {BLASST_ERROR_CUDA, cudaGetErrorString(cudaGetLastError())};
    return r;
  }
  const std::vector<uint16_t> bits = dout.to_host();
  r.out.resize(out_numel);
  for (size_t i = 0; i < out_numel; ++i) r.out[i] = bf16_to_float(bits[i]);
  r.lse = dlse.to_host();
  r.decisions = ddec.to_host();
  r.per_head = dstats.to_host();
  return r;
}

Result run_cpu(const Problem& pr, const Inputs& in, const blasst_geometry& geometry) {
  Result r;
  const size_t out_numel = size_t(pr.batch()) * pr.lq * pr.hq * kDv, lse_numel = size_t(pr.batch()) * pr.lq * pr.hq;
  std::vector<uint16_t> q = in.q, kv = in.kv, out(out_numel, 0xffff);
  r.lse.assign(lse_numel, NAN);
  r.decisions.assign(trace_size(pr, in.lk_max), 0);
  r.per_head.assign(2, 0);
  blasst_args c = make_args(pr, in, q.data(), kv.data(), int64_t(in.lk_max) * kDqk, int64_t(kv.size()), out.data(),
                            r.lse.data());
  c.seqlens_k = pr.lk.data();
  c.decisions = r.decisions.data();
  c.decisions_numel = int64_t(r.decisions.size());
  c.stats_per_head = r.per_head.data();
  c.engine = BLASST_ENGINE_CPU;
  c.geometry = geometry;
  blasst_run_info_init(&r.info);
  r.status = blasst::decode(c, &r.info);
  r.out.resize(out_numel);
  for (size_t i = 0; i < out_numel; ++i) r.out[i] = bf16_to_float(out[i]);
  return r;
}

// GPU against the CPU engine at the GPU's geometry; returns the GPU result.
Result check(const Problem& pr, uint64_t seed) {
  const Inputs in = make_inputs(pr, seed);
  Result gpu = run_gpu(pr, in);
  EXPECT_TRUE(gpu.status.is_ok()) << gpu.status.message();
  if (!gpu.status.is_ok()) return gpu;
  EXPECT_EQ(gpu.info.engine, BLASST_ENGINE_CUDA);
  EXPECT_EQ(gpu.info.geometry.block_m, 64);
  EXPECT_EQ(gpu.info.geometry.block_n, 64);
  const Result cpu = run_cpu(pr, in, gpu.info.geometry);
  EXPECT_TRUE(cpu.status.is_ok()) << cpu.status.message();
  EXPECT_EQ(gpu.decisions, cpu.decisions) << "tile decisions differ";
  EXPECT_EQ(gpu.info.visited, cpu.info.visited);
  EXPECT_EQ(gpu.info.skipped, cpu.info.skipped);
  EXPECT_EQ(gpu.per_head, cpu.per_head);
  double num = 0, den = 0, lse_err = 0;
  for (size_t i = 0; i < cpu.out.size(); ++i) {
    if (std::isnan(gpu.out[i])) {
      ADD_FAILURE() << "output element " << i << " unwritten or NaN";
      break;
    }
    num += double(gpu.out[i] - cpu.out[i]) * (gpu.out[i] - cpu.out[i]);
    den += double(cpu.out[i]) * cpu.out[i];
  }
  for (size_t i = 0; i < cpu.lse.size(); ++i) {
    if (std::isinf(cpu.lse[i])) {
      EXPECT_EQ(gpu.lse[i], cpu.lse[i]) << "lse " << i;
    } else {
      lse_err = std::max(lse_err, double(std::abs(gpu.lse[i] - cpu.lse[i])));
    }
  }
  // P is rounded to bf16 for P V (the CPU engine keeps fp32); both outputs are bf16.
  EXPECT_LT(std::sqrt(num / std::max(den, 1e-30)), 1.5e-2);
  EXPECT_LT(lse_err, 2e-3);
  return gpu;
}

class MlaDecodeGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!hopper_present()) GTEST_SKIP() << "no Hopper GPU";
  }
};

TEST_F(MlaDecodeGpu, DenseMatchesCpuOnOddLengths) {
  Problem pr{1, 16, {1, 63, 64, 65, 4097}};
  const Result r = check(pr, 1);
  EXPECT_EQ(r.info.skipped, 0);
  pr.causal = false;
  pr.lq = 2;
  check(pr, 2);
}

TEST_F(MlaDecodeGpu, SkipMatchesCpuOverHeadsRowsOrdersAndSplits) {
  for (int hq : {16, 64, 128})
    for (int lq : {1, 2})
      for (blasst_order order : {BLASST_ORDER_ASCENDING, BLASST_ORDER_ANCHORED})
        for (int splits : {1, 3, 0}) {
          Problem pr{lq, hq, {4097, 1500}};
          pr.factor = 30.0f;
          pr.order = order;
          pr.splits = splits;
          SCOPED_TRACE(testing::Message() << "hq " << hq << " lq " << lq << " order " << order << " splits " << splits);
          const Result r = check(pr, 10 + uint64_t(hq + lq));
          EXPECT_GT(r.info.skipped, 0);
        }
}

TEST_F(MlaDecodeGpu, PagedIsBitwiseEqualToContiguous) {
  for (int lq : {1, 2}) {
    Problem pr{lq, 128, {65, 3001, 64, 777}};
    pr.factor = 30.0f;
    pr.order = BLASST_ORDER_ANCHORED;
    const Result contiguous = check(pr, 30);
    pr.page_size = 64;
    const Result paged = check(pr, 30);
    SCOPED_TRACE(testing::Message() << "lq " << lq);
    ASSERT_EQ(paged.out.size(), contiguous.out.size());
    EXPECT_EQ(0, std::memcmp(paged.out.data(), contiguous.out.data(), paged.out.size() * sizeof(float)));
    EXPECT_EQ(paged.decisions, contiguous.decisions);
    pr.page_size = 128;
    check(pr, 30);
  }
}

TEST_F(MlaDecodeGpu, LongContext) {
  Problem pr{1, 16, {65537}};
  pr.factor = 30.0f;
  for (blasst_order order : {BLASST_ORDER_ASCENDING, BLASST_ORDER_ANCHORED}) {
    pr.order = order;
    SCOPED_TRACE(testing::Message() << "order " << order);
    check(pr, 40);
  }
}

// Small problems for compute-sanitizer (memcheck, racecheck): dense and skip, one and two query
// tokens, both orders, one split and several (the combine), contiguous and paged.
TEST_F(MlaDecodeGpu, SanitizerSubset) {
  Problem dense{1, 16, {65, 200}};
  check(dense, 50);
  Problem skip{2, 128, {130, 257}};
  skip.factor = 30.0f;
  skip.order = BLASST_ORDER_ANCHORED;
  skip.splits = 3;
  check(skip, 51);
  skip.order = BLASST_ORDER_ASCENDING;
  skip.splits = 1;
  skip.page_size = 64;
  check(skip, 52);
}

TEST_F(MlaDecodeGpu, CallsItCannotRunAreRefusedWithAMessage) {
  Problem pr{1, 16, {100}};
  const Inputs in = make_inputs(pr, 3);
  DeviceBuffer<uint16_t> dq(in.q), dkv(in.kv), dv(in.kv.size()), dout(size_t(16) * kDv);
  DeviceBuffer<float> dlse(16);
  blasst_args a = make_args(pr, in, dq.ptr, dkv.ptr, int64_t(in.lk_max) * kDqk, int64_t(in.kv.size()), dout.ptr, dlse.ptr);
  a.engine = BLASST_ENGINE_CUDA;
  a.v.data = dv.ptr;  // V in other memory than the latent cache
  blasst::Status st = blasst::decode(a);
  EXPECT_EQ(st.code(), BLASST_ERROR_UNSUPPORTED);
  EXPECT_NE(st.message().find("first 512 values"), std::string::npos) << st.message();
  a.v.data = dkv.ptr;
  a.page_size = 32;  // pages below a tile of 64 keys
  a.num_pages = 3;  // 3 x 32 tokens within the buffer's numel
  a.block_table_stride = 4;
  DeviceBuffer<int32_t> table(std::vector<int32_t>{0, 1, 2, 2});
  a.block_table = table.ptr;
  a.k.batch_stride = a.v.batch_stride = 32 * kDqk;
  st = blasst::decode(a);
  EXPECT_EQ(st.code(), BLASST_ERROR_UNSUPPORTED);
  EXPECT_NE(st.message().find("at least 64 tokens"), std::string::npos) << st.message();
  a.block_table = nullptr;
  a.page_size = a.num_pages = 0;
  a.block_table_stride = 0;
  a.k.batch_stride = a.v.batch_stride = int64_t(in.lk_max) * kDqk;
  EXPECT_TRUE(blasst::decode(a).is_ok()) << blasst_last_error();
}

}  // namespace
