// GPU prefill engine against the CPU engine run at the geometry the GPU reported: decisions
// tile for tile (differences allowed only where the rule's margin is within fp32 rounding),
// outputs, LSE and statistics. Skips cleanly when no CUDA device is usable.
#include <blasst/blasst.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_support.hpp"

namespace blasst::gpu_test {
namespace {

class PrefillGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!blasst_cuda_available()) GTEST_SKIP() << "no usable CUDA device";
  }
};

struct ShapeCase {
  int64_t lq, lk;
};

// Odd shapes of the issue, and Lq > Lk (causal: the first rows see no key); the largest ones
// are only run for some configurations.
const ShapeCase kShapes[] = {{1, 1}, {1, 239}, {3, 799}, {113, 203}, {128, 128}, {239, 4096}, {4224, 4224}, {300, 100}};

TEST_F(PrefillGpu, OddShapesAgainstCpuEngine) {
  int index = 0;
  for (const ShapeCase& sc : kShapes) {
    for (int causal = 0; causal < 2; ++causal) {
      for (blasst_order order : {BLASST_ORDER_ASCENDING, BLASST_ORDER_ANCHORED}) {
        const int g = (index % 3 == 0) ? 1 : (index % 3 == 1 ? 4 : 8);
        const int d = (index % 2 == 0) ? 128 : 64;
        ++index;
        Case c;
        c.lq = {sc.lq};
        c.lk = {sc.lk};
        c.hkv = sc.lq >= 4096 ? 1 : 2;
        c.hq = c.hkv * g;
        c.d = d;
        c.causal = causal;
        c.order = order;
        c.factor = float(0.5 * double(sc.lk));  // ln(lambda) = ln(0.5): skips are frequent
        c.seed = 1000 + uint64_t(index);
        SCOPED_TRACE(c.name());
        check_against_cpu(c);
      }
    }
  }
}

TEST_F(PrefillGpu, HeadDim256AndFp16) {
  for (int causal = 0; causal < 2; ++causal) {
    Case c;
    c.lq = {333};
    c.lk = {1000};
    c.hq = 4;
    c.hkv = 2;
    c.d = 256;
    c.causal = causal;
    c.factor = 400.0f;
    c.seed = 77 + uint64_t(causal);
    SCOPED_TRACE(c.name());
    check_against_cpu(c);
    c.d = 128;
    c.dtype = BLASST_DTYPE_FLOAT16;
    c.order = BLASST_ORDER_ANCHORED;
    SCOPED_TRACE(c.name());
    check_against_cpu(c);
  }
}

TEST_F(PrefillGpu, DenseMode) {
  for (int causal = 0; causal < 2; ++causal) {
    Case c;
    c.lq = {300};
    c.lk = {700};
    c.hq = 8;
    c.hkv = 2;
    c.d = 128;
    c.causal = causal;
    c.factor = 0.0f;
    c.seed = 5 + uint64_t(causal);
    SCOPED_TRACE(c.name());
    check_against_cpu(c);
  }
}

TEST_F(PrefillGpu, RaggedBatch) {
  for (int causal = 0; causal < 2; ++causal) {
    for (blasst_order order : {BLASST_ORDER_ASCENDING, BLASST_ORDER_ANCHORED}) {
      Case c;
      c.lq = {100, 1, 777, 0, 260};
      c.lk = {300, 50, 777, 20, 130};  // last entry: Lq > Lk, early causal rows see nothing
      c.hq = 8;
      c.hkv = 2;
      c.d = 128;
      c.causal = causal;
      c.order = order;
      c.layout = Layout::Ragged;
      c.factor = 300.0f;
      c.seed = 40 + uint64_t(causal * 2 + int(order));
      SCOPED_TRACE(c.name());
      check_against_cpu(c);
    }
  }
}

TEST_F(PrefillGpu, PaddedBatchWithSeqlens) {
  Case c;
  c.lq = {200, 57};
  c.lk = {513, 1000};
  c.hq = 4;
  c.hkv = 4;
  c.d = 64;
  c.causal = 1;
  c.layout = Layout::Padded;
  c.factor = 400.0f;
  c.seed = 91;
  SCOPED_TRACE(c.name());
  check_against_cpu(c);
}

TEST_F(PrefillGpu, PagedKv) {
  // Powers of two run the sm_90a kernel on Hopper (16-64: TMA per 16-row box, 128 and up: per
  // tile); 100 runs the sm_80 kernel. d = 64 with small pages takes the three-warpgroup kernel.
  struct Paging {
    int page_size, d;
  };
  for (const Paging pg : {Paging{16, 128}, Paging{32, 128}, Paging{64, 128}, Paging{100, 128}, Paging{128, 128},
                          Paging{256, 128}, Paging{16, 64}, Paging{64, 64}}) {
    const int page_size = pg.page_size;
    for (int causal = 0; causal < 2; ++causal) {
      Case c;
      c.lq = {150, 64};
      c.lk = {1500, 333};
      c.hq = 8;
      c.hkv = 1;
      c.d = pg.d;
      c.causal = causal;
      c.order = causal ? BLASST_ORDER_ANCHORED : BLASST_ORDER_ASCENDING;
      c.layout = Layout::Paged;
      c.page_size = page_size;
      c.factor = 600.0f;
      c.seed = 300 + uint64_t(page_size + causal + pg.d);
      SCOPED_TRACE(c.name());
      check_against_cpu(c);
    }
  }
}

// Why the sm_90a prefill kernel cannot run here (the reason to skip a test that needs it), or
// nullptr: not a compute capability 9.0 device, or a build without the kernel.
const char* no_sm90_prefill_here() {
  int device = 0, major = 0, minor = 0;
  EXPECT_EQ(cudaGetDevice(&device), cudaSuccess);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  if (major != 9 || minor != 0) return "not a compute capability 9.0 device";
#if !defined(BLASST_TEST_HAVE_SM90)
  return "this build has no sm_90a prefill kernel (no CUTLASS headers at configure time)";
#else
  return nullptr;
#endif
}

// On compute capability 9.0 the engine runs the sm_90a kernel where it fits (decision groups of
// 64 rows, tiles of 128 keys; d = 256: 64 x 64) and the sm_80 kernel where it does not (pages
// that are not a power of two of at least 16 tokens).
TEST_F(PrefillGpu, HopperKernelIsChosenWhereItFits) {
  if (const char* why = no_sm90_prefill_here()) GTEST_SKIP() << why;
  if (const char* forced = std::getenv("BLASST_CUDA_PREFILL_KERNEL"); forced && std::string(forced) == "sm80")
    GTEST_SKIP() << "BLASST_CUDA_PREFILL_KERNEL=sm80 forces the sm_80 kernel";
  struct Expect {
    int d;
    Layout layout;
    int page_size;
    int block_m;
    int block_n;
  };
  // d = 256 runs on the sm_90a kernel (64 x 64 tiles); pages of 100 tokens on the sm_80 kernel
  for (const Expect& e : {Expect{128, Layout::Contiguous, 16, 64, 128}, Expect{64, Layout::Ragged, 16, 64, 128},
                          Expect{128, Layout::Paged, 128, 64, 128}, Expect{256, Layout::Contiguous, 16, 64, 64},
                          Expect{128, Layout::Paged, 64, 64, 128}, Expect{128, Layout::Paged, 16, 64, 128},
                          Expect{128, Layout::Paged, 100, 128, 0}}) {
    Case c;
    c.lq = {200};
    c.lk = {700};
    c.hq = 4;
    c.hkv = 2;
    c.d = e.d;
    c.layout = e.layout;
    c.page_size = e.page_size;
    c.factor = 300.0f;
    SCOPED_TRACE(c.name());
    const Inputs in = make_inputs(c);
    const GpuRun g = run_gpu(c, in);
    ASSERT_EQ(g.status, BLASST_OK) << g.message;
    EXPECT_EQ(g.info.geometry.block_m, e.block_m);
    if (e.block_n > 0) {
      EXPECT_EQ(g.info.geometry.block_n, e.block_n);
    }
  }
}

// Head dim 256 on the sm_90a kernel (tiles of 64 keys, Q in shared memory; bf16 and fp16 by
// default, the switch BLASST_CUDA_SM90_D256 unset): decisions and outputs against the CPU engine
// at the reported geometry over odd shapes, both orders, causal and not, paged and ragged, fp16.
TEST_F(PrefillGpu, Sm90HeadDim256) {
  if (const char* why = no_sm90_prefill_here()) GTEST_SKIP() << why;
  unsetenv("BLASST_CUDA_SM90_D256");
  struct Shape256 {
    int64_t lq, lk;
    Layout layout;
    int page_size;
  };
  int index = 0;
  for (const Shape256 sc : {Shape256{1, 1, Layout::Contiguous, 16}, Shape256{113, 203, Layout::Contiguous, 16},
                            Shape256{239, 4096, Layout::Paged, 32}, Shape256{1000, 1000, Layout::Paged, 128},
                            Shape256{333, 1000, Layout::Ragged, 16}}) {
    for (int causal = 0; causal < 2; ++causal) {
      Case c;
      c.lq = {sc.lq};
      c.lk = {sc.lk};
      if (sc.layout == Layout::Ragged) {
        c.lq = {sc.lq, 70};
        c.lk = {sc.lk, 129};
      }
      c.hq = 4;
      c.hkv = 2;
      c.d = 256;
      c.layout = sc.layout;
      c.page_size = sc.page_size;
      c.causal = causal;
      c.order = (index++ % 2) ? BLASST_ORDER_ANCHORED : BLASST_ORDER_ASCENDING;
      c.factor = float(sc.lk) * 0.4f;
      c.seed = 900 + uint64_t(index);
      if (index % 3 == 0) c.dtype = BLASST_DTYPE_FLOAT16;
      SCOPED_TRACE(c.name());
      const GpuRun g = run_gpu(c, make_inputs(c));
      if (not_built_here(g)) continue;
      ASSERT_EQ(g.status, BLASST_OK) << g.message;
      if (g.info.geometry.block_m != 64) GTEST_SKIP() << "this build has no sm_90a kernel for head dim 256";
      EXPECT_EQ(g.info.geometry.block_n, 64);
      check_against_cpu(c);
    }
  }
}

TEST_F(PrefillGpu, PerKvHeadFactors) {
  Case c;
  c.lq = {600};
  c.lk = {1800};
  c.hq = 16;
  c.hkv = 4;
  c.d = 128;
  c.causal = 1;
  c.per_head = {0.0f, 500.0f, 1e9f, 900.0f};  // off, on, lambda >= 1 (off), on
  c.seed = 123;
  SCOPED_TRACE(c.name());
  check_against_cpu(c);
}

// One factor per batch entry (device memory): off, on, lambda >= 1 (off), on; every layout.
TEST_F(PrefillGpu, PerRequestFactors) {
  for (Layout layout : {Layout::Padded, Layout::Ragged, Layout::Paged}) {
    Case c;
    c.lq = {300, 513, 64, 700};
    c.lk = {1500, 2049, 900, 1800};
    c.hq = 8;
    c.hkv = 2;
    c.d = 128;
    c.causal = 1;
    c.layout = layout;
    c.factor = 7.0f;  // replaced by the per-request factors
    c.per_request = {0.0f, 400.0f, 1e9f, 900.0f};
    c.seed = 321;
    SCOPED_TRACE(c.name());
    check_against_cpu(c);
  }
}

// A call captured in a CUDA graph reads the per-request factors at each replay: new values in
// the same buffer change the decisions without a new capture, and each replay equals a plain
// call with those values, bit for bit (prefill and decode).
TEST_F(PrefillGpu, PerRequestFactorsFollowGraphReplays) {
  for (blasst_phase phase : {BLASST_PHASE_PREFILL, BLASST_PHASE_DECODE}) {
    Case c;
    c.lq = phase == BLASST_PHASE_PREFILL ? std::vector<int64_t>{256, 400} : std::vector<int64_t>{1, 2};
    c.lk = {3000, 2500};
    c.hq = 8;
    c.hkv = 2;
    c.d = 128;
    c.causal = 1;
    c.layout = Layout::Padded;
    c.per_request = {300.0f, 300.0f};
    c.seed = 77;
    SCOPED_TRACE(c.name());
    const Inputs in = make_inputs(c);
    const std::vector<std::vector<float>> sets = {{300.0f, 300.0f}, {0.0f, 1e9f}, {600.0f, 0.0f}, {300.0f, 300.0f}};
    std::vector<GpuRun> replayed;
    const GpuRun capture =
        run_engine(c, in, BLASST_ENGINE_CUDA, blasst_geometry{0, 0, c.order, 0}, phase, &sets, &replayed);
    ASSERT_EQ(capture.status, BLASST_OK) << capture.message;
    ASSERT_EQ(replayed.size(), sets.size());
    int64_t skipped[4] = {};
    for (size_t i = 0; i < sets.size(); ++i) {
      Case plain = c;
      plain.per_request = sets[i];
      const GpuRun ref = run_gpu(plain, in, phase);
      ASSERT_EQ(ref.status, BLASST_OK) << ref.message;
      EXPECT_EQ(replayed[i].out, ref.out) << "replay " << i;
      EXPECT_EQ(replayed[i].decisions, ref.decisions) << "replay " << i;
      EXPECT_EQ(replayed[i].stats, ref.stats) << "replay " << i;
      for (size_t h = 0; h < ref.stats.size() / 2; ++h) skipped[i] += ref.stats[2 * h + 1];
    }
    EXPECT_GT(skipped[0], 0) << "the structured inputs skip at factor 300";
    EXPECT_EQ(skipped[1], 0) << "factor 0 and lambda >= 1: nothing skipped";
    EXPECT_EQ(skipped[3], skipped[0]);
  }
}

// A NaN score reaches the output as in dense attention, also in a tile whose other scores the
// rule would skip: the tile maximum of such a row is NaN (SPEC.md, CPU engine), so it keeps.
// Poisoned: one element of a key of kv head 0 (every row of heads 0 and 1 sees it) and one query
// row of head 2; NaN must sit exactly where the CPU engine puts it.
TEST_F(PrefillGpu, NanScoreIsNeverSkipped) {
  for (int d : {128, 64}) {
    Case c;
    c.lq = {256};
    c.lk = {2048};
    c.hq = 4;
    c.hkv = 2;
    c.d = d;
    c.factor = 0.5f * 2048.0f;  // ln(lambda) = ln(0.5): most tiles are skipped
    c.seed = 77 + uint64_t(d);
    SCOPED_TRACE(c.name());
    Inputs in = make_inputs(c);
    const GpuRun clean = run_gpu(c, in);
    ASSERT_EQ(clean.status, BLASST_OK) << clean.message;
    const int bn = clean.info.geometry.block_n;
    // A tile the first group of head 0 skips on the clean inputs.
    int poisoned = -1;
    for (int t = 1; t < 2048 / bn && poisoned < 0; ++t)
      if (clean.decisions[size_t(t)] == BLASST_TILE_SKIPPED) poisoned = t;
    ASSERT_GE(poisoned, 0) << "no skipped tile to poison";
    const uint16_t nan = 0x7fc0;
    in.k[(size_t(poisoned * bn + 7) * size_t(c.hkv) + 0) * size_t(d) + 3] = nan;
    in.q[(size_t(100) * size_t(c.hq) + 2) * size_t(d) + 5] = nan;

    const GpuRun g = run_gpu(c, in);
    ASSERT_EQ(g.status, BLASST_OK) << g.message;
    const GpuRun cpu = run_engine(c, in, BLASST_ENGINE_CPU, g.info.geometry);
    ASSERT_EQ(cpu.status, BLASST_OK) << cpu.message;
    EXPECT_EQ(g.decisions[size_t(poisoned)], BLASST_TILE_KEPT);
    const auto is_nan = [&](uint16_t h) { return std::isnan(to_float(c.dtype, h)); };
    int64_t nan_out = 0, mismatched = 0;
    for (size_t i = 0; i < cpu.out.size(); ++i) {
      nan_out += is_nan(cpu.out[i]);
      mismatched += is_nan(g.out[i]) != is_nan(cpu.out[i]);
    }
    // Heads 0 and 1 entirely, and row 100 of head 2.
    EXPECT_EQ(nan_out, int64_t(2 * 256 + 1) * d);
    EXPECT_EQ(mismatched, 0);
    for (size_t i = 0; i < cpu.lse.size(); ++i)
      EXPECT_EQ(std::isnan(g.lse[i]), std::isnan(cpu.lse[i])) << "lse " << i;
    // Tile for tile as the CPU engine, after the NaN too (a NaN running max keeps every tile).
    EXPECT_EQ(g.info.visited, cpu.info.visited);
    EXPECT_EQ(g.info.skipped, cpu.info.skipped);
    EXPECT_GT(g.info.skipped, 0);  // head 3 still skips
  }
}

// With no tile skipped, the skip kernel does the dense kernel's arithmetic: same bits.
TEST_F(PrefillGpu, SkipKernelWithoutSkipsIsBitIdenticalToDense) {
  for (int causal = 0; causal < 2; ++causal) {
    Case c;
    c.lq = {513};
    c.lk = {1025};
    c.hq = 4;
    c.hkv = 2;
    c.d = 128;
    c.causal = causal;
    c.seed = 8 + uint64_t(causal);
    Inputs in = make_inputs(c);
    c.factor = 0.0f;
    const GpuRun dense = run_gpu(c, in);
    ASSERT_EQ(dense.status, BLASST_OK) << dense.message;
    for (int variant = 0; variant < 2; ++variant) {
      Case s = c;
      if (variant == 0) s.per_head = {0.0f, 0.0f};   // skip kernel, skipping off
      else s.factor = 1e-30f;                          // skip kernel, votes that always keep
      const GpuRun skip = run_gpu(s, in);
      ASSERT_EQ(skip.status, BLASST_OK) << skip.message;
      EXPECT_EQ(skip.info.skipped, 0);
      EXPECT_EQ(0, std::memcmp(dense.out.data(), skip.out.data(), dense.out.size() * sizeof(uint16_t)))
          << "variant " << variant << " causal " << causal;
      EXPECT_EQ(0, std::memcmp(dense.lse.data(), skip.lse.data(), dense.lse.size() * sizeof(float)))
          << "variant " << variant << " causal " << causal;
    }
  }
}

TEST_F(PrefillGpu, RejectsWhatItCannotRun) {
  Case c;
  c.lq = {10};
  c.lk = {10};
  c.d = 96;
  Inputs in = make_inputs(c);
  GpuRun r = run_gpu(c, in);
  EXPECT_EQ(r.status, BLASST_ERROR_UNSUPPORTED) << r.message;
  // decode groups hold at most 64 rows (query heads per KV head x query rows)
  c.d = 64;
  c.lq = {70};
  in = make_inputs(c);
  r = run_gpu(c, in, BLASST_PHASE_DECODE);
  EXPECT_EQ(r.status, BLASST_ERROR_UNSUPPORTED) << r.message;
  EXPECT_NE(r.message.find("<= 64"), std::string::npos) << r.message;
}

// Small problems for compute-sanitizer (memcheck, racecheck): every feature once.
TEST_F(PrefillGpu, SanitizerSubset) {
  Case c;
  c.lq = {70, 1, 130};
  c.lk = {200, 3, 129};
  c.hq = 4;
  c.hkv = 2;
  c.d = 64;
  c.causal = 1;
  c.order = BLASST_ORDER_ANCHORED;
  c.layout = Layout::Paged;
  c.page_size = 16;
  c.factor = 80.0f;
  c.seed = 9;
  check_against_cpu(c);
  c.layout = Layout::Ragged;
  c.d = 128;
  c.causal = 0;
  c.order = BLASST_ORDER_ASCENDING;
  check_against_cpu(c);
  // d = 64 off small pages: on Hopper the sm_90a kernel with three consumer warpgroups (192-row
  // CTAs; 200 rows leave the second CTA two full groups and one of 8 rows).
  c.lq = {200, 70};
  c.lk = {333, 70};
  c.layout = Layout::Padded;
  c.d = 64;
  c.causal = 1;
  c.order = BLASST_ORDER_ANCHORED;
  check_against_cpu(c);
}

// A call only the sm_90a kernel runs: it ran there (decision groups of 64 rows, tiles of 128
// keys), or it was refused with a message naming that kernel.
void expect_sm90_or_refused(const GpuRun& r) {
  if (r.status != BLASST_OK) {
    EXPECT_EQ(r.status, BLASST_ERROR_UNSUPPORTED) << r.message;
    EXPECT_NE(r.message.find("sm_90a"), std::string::npos) << r.message;
  } else {
    EXPECT_EQ(r.info.geometry.block_m, 64);
    EXPECT_EQ(r.info.geometry.block_n, 128);
  }
}

// MLA's non-absorbed prefill: Q and K with head dim 192, V and O with 128, one KV head per query
// head. Only the sm_90a kernel runs it; without a compute capability 9.0 device or that kernel
// in the build the tests check the refusal and skip the rest.

Case mla_case(std::vector<int64_t> lq, std::vector<int64_t> lk, int heads) {
  Case c;
  c.lq = std::move(lq);
  c.lk = std::move(lk);
  c.hq = c.hkv = heads;
  c.d = 192;
  c.dv = 128;
  return c;
}

class MlaPrefillGpu : public PrefillGpu {
 protected:
  // Whether the engine runs 192/128 calls of this dtype here; if not, the test is marked skipped
  // (the caller returns) and the call must have been refused with a message naming the sm_90a
  // kernel.
  bool kernel_runs(blasst_dtype dtype = BLASST_DTYPE_BFLOAT16) {
    Case c = mla_case({64}, {64}, 1);
    c.dtype = dtype;
    const GpuRun r = run_gpu(c, make_inputs(c));
    if (r.status == BLASST_OK) return true;
    expect_sm90_or_refused(r);
    [&] { GTEST_SKIP() << "no sm_90a 192/128 kernel here: " << r.message; }();
    return false;
  }
};

TEST_F(MlaPrefillGpu, OtherHeadDimPairsAreRefused) {
  Case c = mla_case({100}, {100}, 2);
  const Inputs in = make_inputs(c);
  GpuRun r;
  // Pairs of head dims other than 192/128 are refused.
  for (int dv : {64, 192 + 64}) {
    Case other = c;
    other.dv = dv;
    r = run_gpu(other, make_inputs(other));
    EXPECT_EQ(r.status, BLASST_ERROR_UNSUPPORTED) << "dv " << dv << ": " << r.message;
  }
  expect_sm90_or_refused(run_gpu(c, in));
}

TEST_F(MlaPrefillGpu, OddShapesAgainstCpuEngine) {
  if (!kernel_runs()) return;
  int index = 0;
  for (const ShapeCase sc : {ShapeCase{1, 1}, ShapeCase{1, 239}, ShapeCase{3, 799}, ShapeCase{113, 203},
                             ShapeCase{128, 128}, ShapeCase{239, 4096}, ShapeCase{4224, 4224}, ShapeCase{300, 100}}) {
    for (int causal = 0; causal < 2; ++causal) {
      Case c = mla_case({sc.lq}, {sc.lk}, sc.lq >= 4096 ? 1 : 2);
      c.causal = causal;
      c.order = (index++ % 2) ? BLASST_ORDER_ANCHORED : BLASST_ORDER_ASCENDING;
      c.factor = float(0.5 * double(sc.lk));  // ln(lambda) = ln(0.5): skips are frequent
      c.seed = 2000 + uint64_t(index);
      SCOPED_TRACE(c.name());
      check_against_cpu(c);
    }
  }
}

TEST_F(MlaPrefillGpu, DenseMode) {
  if (!kernel_runs()) return;
  for (int causal = 0; causal < 2; ++causal) {
    Case c = mla_case({300}, {700}, 4);
    c.causal = causal;
    c.factor = 0.0f;
    c.seed = 15 + uint64_t(causal);
    SCOPED_TRACE(c.name());
    check_against_cpu(c);
  }
}

// (Builds with BLASST_CUDA_FP16=OFF have no float16 kernel: skipped there.)
TEST_F(MlaPrefillGpu, Fp16) {
  if (!kernel_runs(BLASST_DTYPE_FLOAT16)) return;
  for (int causal = 0; causal < 2; ++causal) {
    Case c = mla_case({333}, {1000}, 2);
    c.dtype = BLASST_DTYPE_FLOAT16;
    c.causal = causal;
    c.order = BLASST_ORDER_ANCHORED;
    c.factor = 400.0f;
    c.seed = 17 + uint64_t(causal);
    SCOPED_TRACE(c.name());
    check_against_cpu(c);
  }
}

TEST_F(MlaPrefillGpu, RaggedBatch) {
  if (!kernel_runs()) return;
  for (int causal = 0; causal < 2; ++causal) {
    for (blasst_order order : {BLASST_ORDER_ASCENDING, BLASST_ORDER_ANCHORED}) {
      Case c = mla_case({100, 1, 777, 0, 260}, {300, 50, 777, 20, 130}, 4);
      c.causal = causal;
      c.order = order;
      c.layout = Layout::Ragged;
      c.factor = 300.0f;
      c.seed = 60 + uint64_t(causal * 2 + int(order));
      SCOPED_TRACE(c.name());
      check_against_cpu(c);
    }
  }
}

TEST_F(MlaPrefillGpu, PaddedBatchWithSeqlens) {
  if (!kernel_runs()) return;
  Case c = mla_case({200, 57}, {513, 1000}, 2);
  c.causal = 1;
  c.layout = Layout::Padded;
  c.factor = 400.0f;
  c.seed = 93;
  SCOPED_TRACE(c.name());
  check_against_cpu(c);
}

TEST_F(MlaPrefillGpu, PagedKv) {
  if (!kernel_runs()) return;
  // 16-64 tokens: K (16 x 192) and V (16 x 128) boxes; 128 and up: whole tiles.
  for (int page_size : {16, 32, 64, 128, 256}) {
    for (int causal = 0; causal < 2; ++causal) {
      Case c = mla_case({150, 64}, {1500, 333}, 2);
      c.causal = causal;
      c.order = causal ? BLASST_ORDER_ANCHORED : BLASST_ORDER_ASCENDING;
      c.layout = Layout::Paged;
      c.page_size = page_size;
      c.factor = 600.0f;
      c.seed = 400 + uint64_t(page_size + causal);
      SCOPED_TRACE(c.name());
      check_against_cpu(c);
    }
  }
  // A page size the sm_90a kernel does not take: refused, as the sm_80 kernel has no 192/128.
  Case c = mla_case({64}, {300}, 1);
  c.layout = Layout::Paged;
  c.page_size = 100;
  const GpuRun r = run_gpu(c, make_inputs(c));
  EXPECT_EQ(r.status, BLASST_ERROR_UNSUPPORTED) << r.message;
}

TEST_F(MlaPrefillGpu, SkipKernelWithoutSkipsIsBitIdenticalToDense) {
  if (!kernel_runs()) return;
  for (int causal = 0; causal < 2; ++causal) {
    Case c = mla_case({513}, {1025}, 2);
    c.causal = causal;
    c.seed = 28 + uint64_t(causal);
    const Inputs in = make_inputs(c);
    c.factor = 0.0f;
    const GpuRun dense = run_gpu(c, in);
    ASSERT_EQ(dense.status, BLASST_OK) << dense.message;
    Case s = c;
    s.factor = 1e-30f;  // skip kernel, votes that always keep
    const GpuRun skip = run_gpu(s, in);
    ASSERT_EQ(skip.status, BLASST_OK) << skip.message;
    EXPECT_EQ(skip.info.skipped, 0);
    EXPECT_EQ(0, std::memcmp(dense.out.data(), skip.out.data(), dense.out.size() * sizeof(uint16_t))) << "causal " << causal;
    EXPECT_EQ(0, std::memcmp(dense.lse.data(), skip.lse.data(), dense.lse.size() * sizeof(float))) << "causal " << causal;
  }
}

// Small problems for compute-sanitizer: box-paged and ragged.
TEST_F(MlaPrefillGpu, SanitizerSubset) {
  if (!kernel_runs()) return;
  Case c = mla_case({70, 1, 130}, {200, 3, 129}, 2);
  c.causal = 1;
  c.order = BLASST_ORDER_ANCHORED;
  c.layout = Layout::Paged;
  c.page_size = 16;
  c.factor = 80.0f;
  c.seed = 11;
  check_against_cpu(c);
  c.layout = Layout::Ragged;
  c.causal = 0;
  c.order = BLASST_ORDER_ASCENDING;
  check_against_cpu(c);
}

// FP8 (e4m3) prefill: Q, K and V quantized from the structured bf16 inputs with per-tensor or
// per-KV-head scales (amax / 448), O in bf16. Only the sm_90a kernel runs it (head dims 64 and
// 128), unless BLASST_CUDA_SM90_FP8_PREFILL=0 (which these tests clear); without a compute
// capability 9.0 device or that kernel in the build they check the refusal and skip the rest.
constexpr const char* kFp8Env = "BLASST_CUDA_SM90_FP8_PREFILL";

Case fp8_case(std::vector<int64_t> lq, std::vector<int64_t> lk, int hq, int hkv, int d, int per_kv_head) {
  Case c;
  c.lq = std::move(lq);
  c.lk = std::move(lk);
  c.hq = hq;
  c.hkv = hkv;
  c.d = d;
  c.dtype = BLASST_DTYPE_FLOAT8_E4M3;
  c.fp8_per_kv_head = per_kv_head;
  return c;
}

class Fp8PrefillGpu : public PrefillGpu {
 protected:
  void SetUp() override {
    PrefillGpu::SetUp();
    if (IsSkipped()) return;
    unsetenv(kFp8Env);
  }
  void TearDown() override { unsetenv(kFp8Env); }

  // Whether the engine runs FP8 prefill at head dim d here; if not, the test is marked skipped
  // (the caller returns) and the call must have been refused with a message naming the sm_90a
  // kernel.
  bool kernel_runs(int d = 128) {
    Case c = fp8_case({64}, {64}, 1, 1, d, 0);
    const GpuRun r = run_gpu(c, make_inputs(c));
    if (r.status == BLASST_OK) return true;
    expect_sm90_or_refused(r);
    [&] { GTEST_SKIP() << "no sm_90a FP8 prefill kernel here: " << r.message; }();
    return false;
  }
};

TEST_F(Fp8PrefillGpu, OnByDefaultOffByEnvironmentVariable) {
  Case c = fp8_case({100}, {100}, 2, 1, 128, 0);
  const Inputs in = make_inputs(c);
  expect_sm90_or_refused(run_gpu(c, in));
  setenv(kFp8Env, "0", 1);
  GpuRun r = run_gpu(c, in);
  EXPECT_EQ(r.status, BLASST_ERROR_UNSUPPORTED) << r.message;
  EXPECT_NE(r.message.find(kFp8Env), std::string::npos) << r.message;
  setenv(kFp8Env, "1", 1);
  // Head dims other than 64 and 128 stay refused.
  Case other = c;
  other.d = 256;
  r = run_gpu(other, make_inputs(other));
  EXPECT_EQ(r.status, BLASST_ERROR_UNSUPPORTED) << r.message;
  expect_sm90_or_refused(run_gpu(c, in));
}

TEST_F(Fp8PrefillGpu, OddShapesAgainstCpuEngine) {
  if (!kernel_runs()) return;
  int index = 0;
  for (const ShapeCase& sc : kShapes) {
    for (int causal = 0; causal < 2; ++causal) {
      for (blasst_order order : {BLASST_ORDER_ASCENDING, BLASST_ORDER_ANCHORED}) {
        const int g = (index % 3 == 0) ? 1 : (index % 3 == 1 ? 4 : 8);
        const int d = (index % 2 == 0) ? 128 : 64;
        const int hkv = sc.lq >= 4096 ? 1 : 2;
        Case c = fp8_case({sc.lq}, {sc.lk}, hkv * g, hkv, d, (index / 2) % 2);
        ++index;
        c.causal = causal;
        c.order = order;
        c.factor = float(0.5 * double(sc.lk));  // ln(lambda) = ln(0.5): skips are frequent
        c.seed = 3000 + uint64_t(index);
        SCOPED_TRACE(c.name());
        check_against_cpu(c);
      }
    }
  }
}

TEST_F(Fp8PrefillGpu, DenseMode) {
  if (!kernel_runs()) return;
  for (int d : {128, 64}) {
    for (int causal = 0; causal < 2; ++causal) {
      Case c = fp8_case({300}, {700}, 8, 2, d, causal);
      c.causal = causal;
      c.factor = 0.0f;
      c.seed = 25 + uint64_t(causal + d);
      SCOPED_TRACE(c.name());
      check_against_cpu(c);
    }
  }
}

TEST_F(Fp8PrefillGpu, RaggedBatch) {
  if (!kernel_runs()) return;
  for (int causal = 0; causal < 2; ++causal) {
    for (blasst_order order : {BLASST_ORDER_ASCENDING, BLASST_ORDER_ANCHORED}) {
      Case c = fp8_case({100, 1, 777, 0, 260}, {300, 50, 777, 20, 130}, 8, 2, causal ? 64 : 128, int(order));
      c.causal = causal;
      c.order = order;
      c.layout = Layout::Ragged;
      c.factor = 300.0f;
      c.seed = 70 + uint64_t(causal * 2 + int(order));
      SCOPED_TRACE(c.name());
      check_against_cpu(c);
    }
  }
}

TEST_F(Fp8PrefillGpu, PaddedBatchWithSeqlens) {
  if (!kernel_runs()) return;
  for (int d : {64, 128}) {
    Case c = fp8_case({200, 57}, {513, 1000}, 4, 4, d, 1);
    c.causal = 1;
    c.layout = Layout::Padded;
    c.factor = 400.0f;
    c.seed = 95 + uint64_t(d);
    SCOPED_TRACE(c.name());
    check_against_cpu(c);
  }
}

TEST_F(Fp8PrefillGpu, PagedKv) {
  if (!kernel_runs()) return;
  // 16-64 tokens: 16-row boxes (16 x 128 and 16 x 64 bytes); 128 and up: whole tiles.
  struct Paging {
    int page_size, d;
  };
  for (const Paging pg : {Paging{16, 128}, Paging{32, 128}, Paging{64, 128}, Paging{128, 128}, Paging{256, 128},
                          Paging{16, 64}, Paging{64, 64}, Paging{128, 64}}) {
    for (int causal = 0; causal < 2; ++causal) {
      Case c = fp8_case({150, 64}, {1500, 333}, 8, 2, pg.d, causal);
      c.causal = causal;
      c.order = causal ? BLASST_ORDER_ANCHORED : BLASST_ORDER_ASCENDING;
      c.layout = Layout::Paged;
      c.page_size = pg.page_size;
      c.factor = 600.0f;
      c.seed = 500 + uint64_t(pg.page_size + causal + pg.d);
      SCOPED_TRACE(c.name());
      check_against_cpu(c);
    }
  }
  // A page size the sm_90a kernel does not take: refused (the sm_80 kernel has no FP8 prefill).
  Case c = fp8_case({64}, {300}, 2, 1, 128, 0);
  c.layout = Layout::Paged;
  c.page_size = 100;
  const GpuRun r = run_gpu(c, make_inputs(c));
  EXPECT_EQ(r.status, BLASST_ERROR_UNSUPPORTED) << r.message;
}

// Per-KV-head factors with per-KV-head scales: each KV head folds its own score scale.
TEST_F(Fp8PrefillGpu, PerKvHeadFactorsAndScales) {
  if (!kernel_runs()) return;
  Case c = fp8_case({600}, {1800}, 16, 4, 128, 1);
  c.causal = 1;
  c.per_head = {0.0f, 500.0f, 1e9f, 900.0f};  // off, on, lambda >= 1 (off), on
  c.seed = 124;
  SCOPED_TRACE(c.name());
  check_against_cpu(c);
}

// With no tile skipped, the skip kernel does the dense kernel's arithmetic: same bits.
TEST_F(Fp8PrefillGpu, SkipKernelWithoutSkipsIsBitIdenticalToDense) {
  if (!kernel_runs()) return;
  for (int d : {128, 64}) {
    for (int causal = 0; causal < 2; ++causal) {
      Case c = fp8_case({513}, {1025}, 4, 2, d, causal);
      c.causal = causal;
      c.seed = 38 + uint64_t(causal + d);
      const Inputs in = make_inputs(c);
      c.factor = 0.0f;
      const GpuRun dense = run_gpu(c, in);
      ASSERT_EQ(dense.status, BLASST_OK) << dense.message;
      for (int variant = 0; variant < 2; ++variant) {
        Case s = c;
        if (variant == 0) s.per_head = {0.0f, 0.0f};  // skip kernel, skipping off
        else s.factor = 1e-30f;                         // skip kernel, votes that always keep
        const GpuRun skip = run_gpu(s, in);
        ASSERT_EQ(skip.status, BLASST_OK) << skip.message;
        EXPECT_EQ(skip.info.skipped, 0);
        EXPECT_EQ(0, std::memcmp(dense.out.data(), skip.out.data(), dense.out.size() * sizeof(uint16_t)))
            << "d " << d << " variant " << variant << " causal " << causal;
        EXPECT_EQ(0, std::memcmp(dense.lse.data(), skip.lse.data(), dense.lse.size() * sizeof(float)))
            << "d " << d << " variant " << variant << " causal " << causal;
      }
    }
  }
}

// Small problems for compute-sanitizer: box-paged, ragged and padded, both head dims.
TEST_F(Fp8PrefillGpu, SanitizerSubset) {
  if (!kernel_runs()) return;
  Case c = fp8_case({70, 1, 130}, {200, 3, 129}, 4, 2, 64, 1);
  c.causal = 1;
  c.order = BLASST_ORDER_ANCHORED;
  c.layout = Layout::Paged;
  c.page_size = 16;
  c.factor = 80.0f;
  c.seed = 13;
  check_against_cpu(c);
  c.layout = Layout::Ragged;
  c.d = 128;
  c.causal = 0;
  c.order = BLASST_ORDER_ASCENDING;
  c.fp8_per_kv_head = 0;
  check_against_cpu(c);
  c.lq = {200, 70};
  c.lk = {333, 70};
  c.layout = Layout::Padded;
  c.d = 64;
  c.causal = 1;
  c.order = BLASST_ORDER_ANCHORED;
  check_against_cpu(c);
}

}  // namespace
}  // namespace blasst::gpu_test
