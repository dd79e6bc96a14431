// GPU decode engine against the CPU engine at the geometry the GPU reports: decisions tile
// for tile, outputs and LSE, statistics; paged KV bitwise equal to contiguous KV.
// Skips when no CUDA device is usable.
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

#define CUDA_OK(x) ASSERT_EQ((x), cudaSuccess) << #x


bool gpu_present() { return blasst_cuda_available() == 1; }

// A decode problem: B entries with ragged Lk, Lq query rows each, GQA G = hq / hkv.
struct Problem {
  int batch, lq, hq, hkv, d;
  std::vector<int32_t> lk;  // per entry
  bool causal = true;
  float factor = 0.0f;
  blasst_order order = BLASST_ORDER_ASCENDING;
  int splits = 0;  // 0 = engine's choice
  int page_size = 0;  // 0 = contiguous K/V
};

// Structured inputs: an attention sink at key 0, a local window near the end, heavy tails.
struct Inputs {
  std::vector<uint16_t> q, k, v;  // bf16, [B, Lq, Hq, D] and [B, Lk_max, Hkv, D]
  int lk_max;
};

Inputs make_inputs(const Problem& pr, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::student_t_distribution<float> heavy(3.0f);
  Inputs in;
  in.lk_max = *std::max_element(pr.lk.begin(), pr.lk.end());
  const int d = pr.d;
  in.q.resize(size_t(pr.batch) * pr.lq * pr.hq * d);
  in.k.resize(size_t(pr.batch) * in.lk_max * pr.hkv * d);
  in.v.resize(in.k.size());
  std::vector<float> dir(d);
  for (auto& x : dir) x = normal(rng);
  for (size_t i = 0; i < in.q.size(); ++i) {
    const int c = int(i % d);
    in.q[i] = float_to_bf16(0.6f * normal(rng) + 0.25f * dir[c]);
  }
  for (int b = 0; b < pr.batch; ++b)
    for (int t = 0; t < in.lk_max; ++t)
      for (int h = 0; h < pr.hkv; ++h)
        for (int c = 0; c < d; ++c) {
          const size_t i = ((size_t(b) * in.lk_max + t) * pr.hkv + h) * d + c;
          float kv = 0.5f * heavy(rng);
          if (t == 0) kv += 3.0f * dir[c];                              // sink
          if (t > pr.lk[b] - 96 && t < pr.lk[b]) kv += 1.2f * dir[c];  // local window
          in.k[i] = float_to_bf16(kv);
          in.v[i] = float_to_bf16(normal(rng));
        }
  return in;
}

struct Result {
  std::vector<float> out, lse;
  std::vector<uint8_t> decisions;
  std::vector<int64_t> per_head;
  blasst_run_info info;
};


// Runs the problem on the GPU (paged when page_size > 0), then on the CPU at the reported geometry.
void run_both(const Problem& pr, const Inputs& in, Result* gpu, Result* cpu) {
  const int d = pr.d, lkm = in.lk_max;
  const int64_t q_numel = int64_t(in.q.size()), kv_numel = int64_t(in.k.size());
  blasst_args a = blasst::default_args();
  a.batch = pr.batch;
  a.num_q_heads = pr.hq;
  a.num_kv_heads = pr.hkv;
  a.head_dim_qk = d;
  a.head_dim_v = d;
  a.max_seqlen_q = pr.lq;
  a.max_seqlen_k = lkm;
  a.causal = pr.causal;
  a.threshold.threshold_scale_factor = pr.factor;
  a.geometry.order = pr.order;
  a.geometry.splits = pr.splits;

  // Paged copies: pages [num_pages, page_size, Hkv, D] in a shuffled order.
  std::vector<uint16_t> kp, vp;
  std::vector<int32_t> table;
  int pages_per_seq = 0, num_pages = 0;
  if (pr.page_size > 0) {
    pages_per_seq = (lkm + pr.page_size - 1) / pr.page_size;
    num_pages = pr.batch * pages_per_seq;
    std::vector<int32_t> order(static_cast<size_t>(num_pages));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), std::mt19937(7));
    table.assign(order.begin(), order.end());
    const size_t page_elems = size_t(pr.page_size) * pr.hkv * d;
    kp.assign(size_t(num_pages) * page_elems, float_to_bf16(NAN));
    vp = kp;
    for (int b = 0; b < pr.batch; ++b)
      for (int t = 0; t < lkm; ++t) {
        const size_t page = size_t(table[size_t(b) * pages_per_seq + t / pr.page_size]);
        const size_t dst = page * page_elems + size_t(t % pr.page_size) * pr.hkv * d;
        const size_t src = (size_t(b) * lkm + t) * pr.hkv * d;
        std::copy_n(in.k.begin() + src, pr.hkv * d, kp.begin() + dst);
        std::copy_n(in.v.begin() + src, pr.hkv * d, vp.begin() + dst);
      }
  }

  const size_t out_numel = size_t(pr.batch) * pr.lq * pr.hq * d;
  const size_t lse_numel = size_t(pr.batch) * pr.lq * pr.hq;
  const int tiles = (lkm + 127) / 128;
  DeviceBuffer<uint16_t> dq(in.q), dk(pr.page_size ? kp : in.k), dv(pr.page_size ? vp : in.v);
  DeviceBuffer<uint16_t> dout(out_numel);
  DeviceBuffer<float> dlse(lse_numel);
  DeviceBuffer<int32_t> dlk(pr.lk), dtable(table);
  DeviceBuffer<uint8_t> ddec(size_t(pr.batch) * pr.hkv * tiles);
  DeviceBuffer<int64_t> dstats(size_t(pr.hkv) * 2);
  cudaMemset(dout.ptr, 0xff, out_numel * 2);  // poison: NaN
  cudaMemset(dlse.ptr, 0xff, lse_numel * 4);

  a.q = tensor(dq.ptr, int64_t(pr.lq) * pr.hq * d, int64_t(pr.hq) * d, d, q_numel);
  if (pr.page_size) {
    const int64_t ps = int64_t(pr.page_size) * pr.hkv * d;
    a.k = tensor(dk.ptr, ps, int64_t(pr.hkv) * d, d, int64_t(kp.size()));
    a.v = tensor(dv.ptr, ps, int64_t(pr.hkv) * d, d, int64_t(vp.size()));
    a.block_table = dtable.ptr;
    a.block_table_stride = pages_per_seq;
    a.page_size = pr.page_size;
    a.num_pages = num_pages;
  } else {
    a.k = tensor(dk.ptr, int64_t(lkm) * pr.hkv * d, int64_t(pr.hkv) * d, d, kv_numel);
    a.v = tensor(dv.ptr, int64_t(lkm) * pr.hkv * d, int64_t(pr.hkv) * d, d, kv_numel);
  }
  a.out = tensor(dout.ptr, int64_t(pr.lq) * pr.hq * d, int64_t(pr.hq) * d, d, int64_t(out_numel));
  a.lse = tensor(dlse.ptr, int64_t(pr.lq) * pr.hq, pr.hq, 1, int64_t(lse_numel));
  a.lse.dtype = BLASST_DTYPE_FLOAT32;
  a.seqlens_k = dlk.ptr;
  a.decisions = ddec.ptr;
  a.decisions_numel = int64_t(ddec.count);
  a.stats_per_head = dstats.ptr;
  a.engine = BLASST_ENGINE_CUDA;
  blasst_run_info_init(&gpu->info);
  blasst::Status st = blasst::decode(a, &gpu->info);
  ASSERT_TRUE(st.is_ok()) << st.message();
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<uint16_t> out_bits = dout.to_host();
  gpu->out.resize(out_numel);
  for (size_t i = 0; i < out_numel; ++i) gpu->out[i] = bf16_to_float(out_bits[i]);
  gpu->lse = dlse.to_host();
  gpu->decisions = ddec.to_host();
  gpu->per_head = dstats.to_host();

  // CPU engine, same bf16 inputs, contiguous K/V, the geometry the GPU reported.
  std::vector<uint16_t> qh = in.q, kh = in.k, vh = in.v, oh(out_numel, 0xffff);
  cpu->lse.assign(lse_numel, NAN);
  cpu->decisions.assign(ddec.count, 0);
  cpu->per_head.assign(size_t(pr.hkv) * 2, 0);
  blasst_args c = a;
  c.block_table = nullptr;
  c.block_table_stride = c.page_size = c.num_pages = 0;
  c.q = tensor(qh.data(), a.q.batch_stride, a.q.token_stride, a.q.head_stride, q_numel);
  c.k = tensor(kh.data(), int64_t(lkm) * pr.hkv * d, int64_t(pr.hkv) * d, d, kv_numel);
  c.v = tensor(vh.data(), int64_t(lkm) * pr.hkv * d, int64_t(pr.hkv) * d, d, kv_numel);
  c.out = tensor(oh.data(), a.out.batch_stride, a.out.token_stride, a.out.head_stride, int64_t(out_numel));
  c.lse = a.lse;
  c.lse.data = cpu->lse.data();
  c.seqlens_k = pr.lk.data();
  c.decisions = cpu->decisions.data();
  c.stats_per_head = cpu->per_head.data();
  c.engine = BLASST_ENGINE_CPU;
  c.geometry = gpu->info.geometry;
  blasst_run_info_init(&cpu->info);
  st = blasst::decode(c, &cpu->info);
  ASSERT_TRUE(st.is_ok()) << st.message();
  cpu->out.resize(out_numel);
  for (size_t i = 0; i < out_numel; ++i) cpu->out[i] = bf16_to_float(oh[i]);
}

void expect_match(const Problem& pr, const Result& gpu, const Result& cpu) {
  EXPECT_EQ(gpu.info.engine, BLASST_ENGINE_CUDA);
  EXPECT_EQ(gpu.decisions, cpu.decisions) << "tile decisions differ";
  EXPECT_EQ(gpu.info.visited, cpu.info.visited);
  EXPECT_EQ(gpu.info.skipped, cpu.info.skipped);
  EXPECT_EQ(gpu.per_head, cpu.per_head);
  double num = 0, den = 0, lse_err = 0;
  for (size_t i = 0; i < cpu.out.size(); ++i) {
    ASSERT_FALSE(std::isnan(gpu.out[i])) << "output element " << i << " unwritten or NaN";
    num += double(gpu.out[i] - cpu.out[i]) * (gpu.out[i] - cpu.out[i]);
    den += double(cpu.out[i]) * cpu.out[i];
  }
  for (size_t i = 0; i < cpu.lse.size(); ++i) {
    ASSERT_FALSE(std::isnan(gpu.lse[i])) << "lse element " << i;
    if (std::isinf(cpu.lse[i])) {
      EXPECT_EQ(gpu.lse[i], cpu.lse[i]);
    } else {
      lse_err = std::max(lse_err, double(std::abs(gpu.lse[i] - cpu.lse[i])));
    }
  }
  // P is rounded to bf16 for the P.V product (CPU: fp32); outputs are bf16 on both sides.
  EXPECT_LT(std::sqrt(num / std::max(den, 1e-30)), 1.5e-2) << "batch " << pr.batch << " lq " << pr.lq;
  EXPECT_LT(lse_err, 2e-3);
}

class DecodeGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(DecodeGpu, DenseMatchesCpuOnOddLengths) {
  Problem pr{3, 1, 8, 2, 128, {1, 63, 4097}};
  pr.causal = true;
  const Inputs in = make_inputs(pr, 1);
  Result gpu, cpu;
  run_both(pr, in, &gpu, &cpu);
  expect_match(pr, gpu, cpu);
  EXPECT_EQ(gpu.info.skipped, 0);
}

TEST_F(DecodeGpu, SkipMatchesCpuAcrossGqaRatiosOrdersAndSplits) {
  for (int g : {1, 4, 8, 16}) {
    for (blasst_order order : {BLASST_ORDER_ASCENDING, BLASST_ORDER_ANCHORED}) {
      for (int splits : {1, 3, 0}) {
        Problem pr{2, 1, 2 * g, 2, 128, {2, 5000}};
        pr.factor = 200.0f;
        pr.order = order;
        pr.splits = splits;
        const Inputs in = make_inputs(pr, 10 + uint64_t(g));
        Result gpu, cpu;
        run_both(pr, in, &gpu, &cpu);
        SCOPED_TRACE(testing::Message() << "G " << g << " order " << order << " splits " << splits);
        expect_match(pr, gpu, cpu);
        EXPECT_GT(gpu.info.skipped, 0);
      }
    }
  }
}

TEST_F(DecodeGpu, SeveralQueryRowsCausalAndMqaAndHeadDim64) {
  for (int lq : {2, 4, 8}) {
    Problem pr{2, lq, 8, 1, 64, {65, 3001}};
    pr.factor = 1.0f;
    const Inputs in = make_inputs(pr, 20 + uint64_t(lq));
    Result gpu, cpu;
    run_both(pr, in, &gpu, &cpu);
    SCOPED_TRACE(testing::Message() << "lq " << lq);
    expect_match(pr, gpu, cpu);
  }
}

// 32 and 64 rows per group (two and four m-tiles: key groups shared by several warps) at
// d = 128, contiguous and paged (64-token pages: a table lookup per row pass for 64 rows).
TEST_F(DecodeGpu, SeveralQueryRowsHeadDim128PagedAndContiguous) {
  for (int lq : {4, 8}) {
    for (blasst_order order : {BLASST_ORDER_ASCENDING, BLASST_ORDER_ANCHORED}) {
      Problem pr{2, lq, 16, 2, 128, {130, 4500}};
      pr.factor = 200.0f;  // the CPU engine skips 6 to 64 of 76 tiles here, 9 splits or 1
      pr.order = order;
      const Inputs in = make_inputs(pr, 60 + uint64_t(lq));
      Result contiguous, paged, cpu1, cpu2;
      run_both(pr, in, &contiguous, &cpu1);
      pr.page_size = 64;
      run_both(pr, in, &paged, &cpu2);
      SCOPED_TRACE(testing::Message() << "lq " << lq << " order " << order);
      expect_match(pr, contiguous, cpu1);
      expect_match(pr, paged, cpu2);
      EXPECT_EQ(0, std::memcmp(paged.out.data(), contiguous.out.data(), paged.out.size() * sizeof(float)));
      EXPECT_GT(paged.info.skipped, 0);
    }
  }
}

TEST_F(DecodeGpu, PagedIsBitwiseEqualToContiguous) {
  for (int page : {16, 32, 64, 100, 128}) {
    Problem pr{3, 1, 32, 8, 128, {1, 64, 2049}};
    pr.factor = 3.0f;
    pr.order = BLASST_ORDER_ANCHORED;
    const Inputs in = make_inputs(pr, 30);
    Result contiguous, paged, cpu1, cpu2;
    run_both(pr, in, &contiguous, &cpu1);
    pr.page_size = page;
    run_both(pr, in, &paged, &cpu2);
    SCOPED_TRACE(testing::Message() << "page " << page);
    expect_match(pr, paged, cpu2);
    EXPECT_EQ(0, std::memcmp(paged.out.data(), contiguous.out.data(), paged.out.size() * sizeof(float)));
    EXPECT_EQ(paged.decisions, contiguous.decisions);
  }
}

TEST_F(DecodeGpu, LongContextAndLargeBatch) {
  Problem pr{1, 1, 32, 8, 128, {131071}};
  pr.factor = 4.0f;
  const Inputs in = make_inputs(pr, 40);
  Result gpu, cpu;
  run_both(pr, in, &gpu, &cpu);
  expect_match(pr, gpu, cpu);

  Problem wide{64, 1, 32, 8, 128, std::vector<int32_t>(64)};
  for (int b = 0; b < 64; ++b) wide.lk[size_t(b)] = 1 + (b * 977) % 3000;
  wide.factor = 4.0f;
  const Inputs in2 = make_inputs(wide, 41);
  run_both(wide, in2, &gpu, &cpu);
  expect_match(wide, gpu, cpu);

  // the largest batch the decode path is built for, ragged (lengths 1 .. 700), both orders
  Problem widest{512, 1, 32, 8, 128, std::vector<int32_t>(512)};
  for (int b = 0; b < 512; ++b) widest.lk[size_t(b)] = 1 + (b * 389) % 700;
  widest.factor = 4.0f;
  const Inputs in3 = make_inputs(widest, 42);
  for (blasst_order order : {BLASST_ORDER_ASCENDING, BLASST_ORDER_ANCHORED}) {
    widest.order = order;
    run_both(widest, in3, &gpu, &cpu);
    expect_match(widest, gpu, cpu);
  }
}

TEST_F(DecodeGpu, AnchoredSplitsCostNoSparsity) {
  Problem pr{1, 1, 32, 8, 128, {16384}};
  pr.factor = 4.0f;
  pr.order = BLASST_ORDER_ANCHORED;
  const Inputs in = make_inputs(pr, 50);
  int64_t skipped_one = -1;
  for (int splits : {1, 4, 16}) {
    pr.splits = splits;
    Result gpu, cpu;
    run_both(pr, in, &gpu, &cpu);
    expect_match(pr, gpu, cpu);
    if (skipped_one < 0) skipped_one = gpu.info.skipped;
    // each split starts from the same seeded maximum: only a kept non-anchor tile that beats
    // the anchors can make the split and unsplit runs decide differently
    EXPECT_GE(double(gpu.info.skipped), 0.97 * double(skipped_one)) << "splits " << splits;
  }
}

TEST_F(DecodeGpu, UnsupportedShapesAreRefusedWithAMessage) {
  blasst_args a = blasst::default_args();
  DeviceBuffer<uint16_t> buf(1 << 16);
  a.batch = 1;
  a.num_q_heads = 4;
  a.num_kv_heads = 1;
  a.head_dim_qk = a.head_dim_v = 96;
  a.max_seqlen_q = 1;
  a.max_seqlen_k = 8;
  a.q = tensor(buf.ptr, 0, 4 * 96, 96, 4 * 96);
  a.k = tensor(buf.ptr, 0, 96, 96, 8 * 96);
  a.v = a.k;
  a.out = a.q;
  a.engine = BLASST_ENGINE_CUDA;
  blasst::Status st = blasst::decode(a);
  EXPECT_EQ(st.code(), BLASST_ERROR_UNSUPPORTED);
  EXPECT_NE(st.message().find("head dims"), std::string::npos) << st.message();
}

}  // namespace
