// Argument validation through the C ABI: every bad argument gives
// BLASST_ERROR_INVALID_ARGUMENT with a message naming it, and nothing is written to any
// output (out, lse, statistics, decisions, run info).
#include <gtest/gtest.h>

#include <blasst/blasst.hpp>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "core/validate.hpp"
#include "support/harness.hpp"

namespace {

constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
constexpr uint32_t kPoison = 0x7fa5a5a5u;

// Stores an arbitrary integer in a C enum field, as a C caller can.
template <class E>
void set_raw(E& field, int32_t value) {
  static_assert(sizeof(E) == sizeof(int32_t));
  std::memcpy(&field, &value, sizeof value);
}

// A valid padded call (B 2, Hq 4, Hkv 2, D 16, Lq 8, Lk 40) with poisoned outputs.
struct Call {
  static constexpr int B = 2, HQ = 4, HKV = 2, D = 16, LQ = 8, LK = 40;
  std::vector<float> q, k, v;
  std::vector<uint32_t> out, lse;
  std::vector<int64_t> stats;
  std::vector<uint8_t> dec;
  std::vector<int32_t> cu_q{0, 5, 13}, cu_k{0, 30, 70}, len_q{8, 3}, len_k{40, 17};
  std::vector<int32_t> table;
  std::vector<float> head_factors{1.0f, 2.0f};
  blasst_args a;

  Call() {
    q.resize(size_t(B) * LQ * HQ * D);
    k.resize(size_t(B) * LK * HKV * D);
    v.resize(size_t(B) * LK * HKV * D);
    for (size_t n = 0; n < q.size(); ++n) q[n] = float(std::sin(double(n) * 0.37));
    for (size_t n = 0; n < k.size(); ++n) k[n] = float(std::cos(double(n) * 0.11));
    for (size_t n = 0; n < v.size(); ++n) v[n] = float(std::sin(double(n) * 0.05) + 0.1);
    out.assign(size_t(B) * LQ * HQ * D, kPoison);
    lse.assign(size_t(B) * LQ * HQ, kPoison);
    stats.assign(HQ * 2, -7);
    dec.assign(4096, 0xEE);
    blasst_args_init(&a);
    a.batch = B;
    a.num_q_heads = HQ;
    a.num_kv_heads = HKV;
    a.head_dim_qk = D;
    a.head_dim_v = D;
    a.max_seqlen_q = LQ;
    a.max_seqlen_k = LK;
    a.q = tensor(q.data(), LQ, HQ, D, int64_t(q.size()));
    a.k = tensor(k.data(), LK, HKV, D, int64_t(k.size()));
    a.v = tensor(v.data(), LK, HKV, D, int64_t(v.size()));
    a.out = tensor(out.data(), LQ, HQ, D, int64_t(out.size()));
    a.lse = tensor(lse.data(), LQ, HQ, 1, int64_t(lse.size()));
    a.engine = BLASST_ENGINE_CPU;
    a.num_threads = 1;
    a.threshold.threshold_scale_factor = 5.0f;
    a.geometry = {4, 8, BLASST_ORDER_ASCENDING, 1};
    a.stats_per_head = stats.data();
    a.decisions = dec.data();
    a.decisions_numel = int64_t(dec.size());
  }
  static blasst_tensor tensor(void* data, int64_t tokens, int64_t heads, int64_t dim, int64_t numel) {
    return blasst::test::contiguous_tensor(data, BLASST_DTYPE_FLOAT32, tokens, heads, dim, numel);
  }
  void use_paged(int32_t page_size) {
    const int32_t per_entry = (LK + page_size - 1) / page_size;
    a.page_size = page_size;
    a.num_pages = int32_t(k.size() / size_t(page_size * HKV * D));
    a.block_table_stride = per_entry;
    table.resize(size_t(B * per_entry));
    for (size_t n = 0; n < table.size(); ++n) table[n] = int32_t(n % size_t(a.num_pages));
    a.block_table = table.data();
    for (blasst_tensor* t : {&a.k, &a.v}) {
      t->batch_stride = int64_t(page_size) * HKV * D;
    }
    a.seqlens_k = len_k.data();
  }
  bool untouched() const {
    for (uint32_t x : out)
      if (x != kPoison) return false;
    for (uint32_t x : lse)
      if (x != kPoison) return false;
    for (int64_t x : stats)
      if (x != -7) return false;
    for (uint8_t x : dec)
      if (x != 0xEE) return false;
    return true;
  }
};

struct BadArg {
  const char* what;      // test label
  const char* expected;  // text the message must contain
  std::function<void(Call&)> mutate;
};

const std::vector<BadArg>& bad_args() {
  static const std::vector<BadArg> cases = {
      {"struct_size", "struct_size", [](Call& c) { c.a.struct_size = 4; }},
      {"struct_size_larger", "struct_size", [](Call& c) { c.a.struct_size += 8; }},
      {"batch_zero", "batch", [](Call& c) { c.a.batch = 0; }},
      {"batch_negative", "batch", [](Call& c) { c.a.batch = -3; }},
      {"num_q_heads_zero", "num_q_heads", [](Call& c) { c.a.num_q_heads = 0; }},
      {"num_kv_heads_zero", "num_kv_heads", [](Call& c) { c.a.num_kv_heads = 0; }},
      {"hq_not_multiple_of_hkv", "num_kv_heads", [](Call& c) { c.a.num_kv_heads = 3; }},
      {"head_dim_qk_zero", "head_dim_qk", [](Call& c) { c.a.head_dim_qk = 0; }},
      {"head_dim_qk_too_big", "head_dim_qk", [](Call& c) { c.a.head_dim_qk = BLASST_MAX_HEAD_DIM + 1; }},
      {"head_dim_v_zero", "head_dim_v", [](Call& c) { c.a.head_dim_v = 0; }},
      {"head_dim_v_too_big", "head_dim_v", [](Call& c) { c.a.head_dim_v = 100000; }},
      {"max_seqlen_q_negative", "max_seqlen_q", [](Call& c) { c.a.max_seqlen_q = -1; }},
      {"max_seqlen_k_negative", "max_seqlen_k", [](Call& c) { c.a.max_seqlen_k = -1; }},
      {"q_null", "q.data", [](Call& c) { c.a.q.data = nullptr; }},
      {"k_null", "k.data", [](Call& c) { c.a.k.data = nullptr; }},
      {"v_null", "v.data", [](Call& c) { c.a.v.data = nullptr; }},
      {"out_null", "out.data", [](Call& c) { c.a.out.data = nullptr; }},
      {"q_dtype_bad", "q.dtype", [](Call& c) { set_raw(c.a.q.dtype, 7); }},
      {"k_dtype_bad", "k.dtype", [](Call& c) { set_raw(c.a.k.dtype, -1); }},
      {"lse_dtype_bad", "lse.dtype", [](Call& c) { set_raw(c.a.lse.dtype, 9); }},
      {"k_dtype_mismatch", "dtype", [](Call& c) { c.a.k.dtype = BLASST_DTYPE_FLOAT16; }},
      {"v_dtype_mismatch", "dtype", [](Call& c) { c.a.v.dtype = BLASST_DTYPE_BFLOAT16; }},
      {"out_dtype_mismatch", "out.dtype", [](Call& c) { c.a.out.dtype = BLASST_DTYPE_FLOAT16; }},
      {"lse_dtype_fp16", "lse.dtype", [](Call& c) { c.a.lse.dtype = BLASST_DTYPE_FLOAT16; }},
      {"q_token_stride_negative", "q strides", [](Call& c) { c.a.q.token_stride = -64; }},
      {"k_head_stride_negative", "k strides", [](Call& c) { c.a.k.head_stride = -1; }},
      {"v_batch_stride_negative", "v strides", [](Call& c) { c.a.v.batch_stride = -1; }},
      {"out_token_stride_negative", "out strides", [](Call& c) { c.a.out.token_stride = -1; }},
      {"lse_head_stride_negative", "lse strides", [](Call& c) { c.a.lse.head_stride = -1; }},
      {"q_numel_zero", "q.numel", [](Call& c) { c.a.q.numel = 0; }},
      {"q_numel_short", "q is too small", [](Call& c) { c.a.q.numel -= 1; }},
      {"k_numel_short", "k is too small", [](Call& c) { c.a.k.numel -= 1; }},
      {"v_numel_short", "v is too small", [](Call& c) { c.a.v.numel -= 1; }},
      {"out_numel_short", "out is too small", [](Call& c) { c.a.out.numel -= 1; }},
      {"lse_numel_short", "lse is too small", [](Call& c) { c.a.lse.numel -= 1; }},
      {"q_stride_overreach", "q is too small", [](Call& c) { c.a.q.token_stride += 1; }},
      {"k_batch_stride_overreach", "k is too small", [](Call& c) { c.a.k.batch_stride += 64; }},
      {"out_head_stride_overflow", "out is too small", [](Call& c) { c.a.out.head_stride = std::numeric_limits<int64_t>::max() / 2; }},
      {"cu_seqlens_q_nonzero_start", "cu_seqlens_q",
       [](Call& c) {
         c.cu_q = {1, 5, 13};
         c.a.cu_seqlens_q = c.cu_q.data();
       }},
      {"cu_seqlens_q_decreasing", "cu_seqlens_q",
       [](Call& c) {
         c.cu_q = {0, 5, 4};
         c.a.cu_seqlens_q = c.cu_q.data();
       }},
      {"cu_seqlens_q_entry_above_max", "cu_seqlens_q",
       [](Call& c) {
         c.cu_q = {0, 9, 13};
         c.a.cu_seqlens_q = c.cu_q.data();
       }},
      {"cu_seqlens_k_nonzero_start", "cu_seqlens_k",
       [](Call& c) {
         c.cu_k = {2, 30, 70};
         c.a.cu_seqlens_k = c.cu_k.data();
       }},
      {"cu_seqlens_k_decreasing", "cu_seqlens_k",
       [](Call& c) {
         c.cu_k = {0, 30, 20};
         c.a.cu_seqlens_k = c.cu_k.data();
       }},
      {"cu_seqlens_k_entry_above_max", "cu_seqlens_k",
       [](Call& c) {
         c.cu_k = {0, 41, 50};
         c.a.cu_seqlens_k = c.cu_k.data();
       }},
      {"seqlens_q_negative", "seqlens_q",
       [](Call& c) {
         c.len_q = {8, -1};
         c.a.seqlens_q = c.len_q.data();
       }},
      {"seqlens_q_above_max", "seqlens_q",
       [](Call& c) {
         c.len_q = {9, 1};
         c.a.seqlens_q = c.len_q.data();
       }},
      {"seqlens_k_above_max", "seqlens_k",
       [](Call& c) {
         c.len_k = {40, 41};
         c.a.seqlens_k = c.len_k.data();
       }},
      {"seqlens_k_negative", "seqlens_k",
       [](Call& c) {
         c.len_k = {-5, 1};
         c.a.seqlens_k = c.len_k.data();
       }},
      {"cu_and_seqlens_q_both", "seqlens_q",
       [](Call& c) {
         c.a.cu_seqlens_q = c.cu_q.data();
         c.a.seqlens_q = c.len_q.data();
       }},
      {"cu_and_seqlens_k_both", "seqlens_k",
       [](Call& c) {
         c.a.cu_seqlens_k = c.cu_k.data();
         c.a.seqlens_k = c.len_k.data();
       }},
      {"ragged_q_too_small", "q is too small",
       [](Call& c) {
         c.cu_q = {0, 8, 16};
         c.a.cu_seqlens_q = c.cu_q.data();
         c.a.q.numel = 15 * Call::HQ * Call::D;
       }},
      {"block_table_negative_entry", "block_table",
       [](Call& c) {
         c.use_paged(8);
         c.table[1] = -1;
       }},
      {"block_table_entry_past_num_pages", "block_table",
       [](Call& c) {
         c.use_paged(8);
         c.table[size_t(c.a.block_table_stride)] = c.a.num_pages;
       }},
      {"block_table_stride_too_small", "block_table_stride",
       [](Call& c) {
         c.use_paged(8);
         c.a.block_table_stride = 4;
       }},
      {"page_size_zero", "page_size",
       [](Call& c) {
         c.use_paged(8);
         c.a.page_size = 0;
       }},
      {"num_pages_zero", "num_pages",
       [](Call& c) {
         c.use_paged(8);
         c.a.num_pages = 0;
       }},
      {"num_pages_beyond_k", "k is too small",
       [](Call& c) {
         c.use_paged(8);
         c.a.num_pages += 1;
       }},
      {"paging_fields_without_table", "block_table", [](Call& c) { c.a.page_size = 16; }},
      {"paged_with_cu_seqlens_k", "cu_seqlens_k",
       [](Call& c) {
         c.use_paged(8);
         c.a.seqlens_k = nullptr;
         c.a.cu_seqlens_k = c.cu_k.data();
       }},
      {"order_bad", "geometry.order", [](Call& c) { set_raw(c.a.geometry.order, 5); }},
      {"block_m_negative", "geometry.block_m", [](Call& c) { c.a.geometry.block_m = -1; }},
      {"block_n_negative", "geometry.block_n", [](Call& c) { c.a.geometry.block_n = -8; }},
      {"block_n_huge", "geometry.block_n", [](Call& c) { c.a.geometry.block_n = std::numeric_limits<int32_t>::max(); }},
      {"splits_negative", "geometry.splits", [](Call& c) { c.a.geometry.splits = -2; }},
      {"engine_bad", "engine", [](Call& c) { set_raw(c.a.engine, 9); }},
      {"causal_two", "causal", [](Call& c) { c.a.causal = 2; }},
      {"causal_negative", "causal", [](Call& c) { c.a.causal = -1; }},
      {"scale_nan", "scale", [](Call& c) { c.a.scale = kNan; }},
      {"scale_inf", "scale", [](Call& c) { c.a.scale = std::numeric_limits<float>::infinity(); }},
      {"threshold_negative", "threshold_scale_factor", [](Call& c) { c.a.threshold.threshold_scale_factor = -1.0f; }},
      {"threshold_nan", "threshold_scale_factor", [](Call& c) { c.a.threshold.threshold_scale_factor = kNan; }},
      {"threshold_inf", "threshold_scale_factor",
       [](Call& c) { c.a.threshold.threshold_scale_factor = std::numeric_limits<float>::infinity(); }},
      {"per_head_factor_nan", "per_kv_head_factor",
       [](Call& c) {
         c.head_factors = {1.0f, kNan};
         c.a.threshold.per_kv_head_factor = c.head_factors.data();
       }},
      {"per_head_factor_negative", "per_kv_head_factor",
       [](Call& c) {
         c.head_factors = {-0.5f, 1.0f};
         c.a.threshold.per_kv_head_factor = c.head_factors.data();
       }},
      {"per_request_factor_nan", "per_request_factor[1]",
       [](Call& c) {
         c.head_factors = {1.0f, kNan};
         c.a.threshold.per_request_factor = c.head_factors.data();
       }},
      {"per_request_factor_negative", "per_request_factor[0]",
       [](Call& c) {
         c.head_factors = {-0.5f, 1.0f};
         c.a.threshold.per_request_factor = c.head_factors.data();
       }},
      {"per_request_and_per_head", "not both",
       [](Call& c) {
         c.a.threshold.per_kv_head_factor = c.head_factors.data();
         c.a.threshold.per_request_factor = c.head_factors.data();
       }},
      {"fp8_kv_without_scales", "scales.k is NULL",
       [](Call& c) { set_raw(c.a.k.dtype, 3), set_raw(c.a.v.dtype, 3); }},
      {"fp8_k_with_fp32_v", "must share one dtype", [](Call& c) { set_raw(c.a.k.dtype, 3); }},
      {"scale_for_an_fp32_operand", "scales.v is set", [](Call& c) { c.a.scales.v = c.head_factors.data(); }},
      {"fp8_scale_not_positive", "scales.k[1]",
       [](Call& c) {
         set_raw(c.a.k.dtype, 3), set_raw(c.a.v.dtype, 3);
         c.head_factors = {1.0f, 0.0f};
         c.a.scales = {nullptr, c.head_factors.data(), c.head_factors.data(), 1};
       }},
      {"fp8_scale_nan", "scales.k[0]",
       [](Call& c) {
         set_raw(c.a.k.dtype, 3), set_raw(c.a.v.dtype, 3);
         c.head_factors = {kNan, 1.0f};
         c.a.scales = {nullptr, c.head_factors.data(), c.head_factors.data(), 0};
       }},
      {"fp8_out", "out.dtype",
       [](Call& c) {
         for (blasst_tensor* t : {&c.a.q, &c.a.k, &c.a.v, &c.a.out}) set_raw(t->dtype, 3);
         c.a.scales = {c.head_factors.data(), c.head_factors.data(), c.head_factors.data(), 0};
       }},
      {"scales_per_kv_head_2", "per_kv_head", [](Call& c) { c.a.scales.per_kv_head = 2; }},
      {"num_threads_negative", "num_threads", [](Call& c) { c.a.num_threads = -1; }},
      {"decisions_numel_negative", "decisions_numel", [](Call& c) { c.a.decisions_numel = -1; }},
      {"decisions_too_small", "decisions_numel", [](Call& c) { c.a.decisions_numel = 3; }},
  };
  return cases;
}

class BadArguments : public ::testing::TestWithParam<size_t> {};

TEST_P(BadArguments, RejectedWithNamedArgumentAndNothingWritten) {
  const BadArg& bad = bad_args()[GetParam()];
  for (blasst_phase phase : {BLASST_PHASE_PREFILL, BLASST_PHASE_DECODE}) {
    Call c;
    bad.mutate(c);
    blasst_run_info info;
    blasst_run_info_init(&info);
    info.visited = 1234;
    const blasst_status st = phase == BLASST_PHASE_PREFILL ? blasst_prefill(&c.a, &info) : blasst_decode(&c.a, &info);
    const std::string msg = blasst_last_error();
    EXPECT_EQ(st, BLASST_ERROR_INVALID_ARGUMENT) << bad.what << " (phase " << phase << "): " << msg;
    EXPECT_NE(msg.find(bad.expected), std::string::npos)
        << bad.what << ": message '" << msg << "' does not name '" << bad.expected << "'";
    EXPECT_TRUE(c.untouched()) << bad.what << ": an output was written";
    EXPECT_EQ(info.visited, 1234) << bad.what << ": run info was written";
    // The C++ API returns the same status and message.
    const blasst::Status s = blasst::attention(phase, c.a, nullptr);
    EXPECT_EQ(s.code(), BLASST_ERROR_INVALID_ARGUMENT) << bad.what;
    EXPECT_EQ(s.message(), msg) << bad.what;
  }
}

INSTANTIATE_TEST_SUITE_P(Validation, BadArguments, ::testing::Range(size_t(0), bad_args().size()),
                         [](const ::testing::TestParamInfo<size_t>& param) {
                           return std::string(bad_args()[param.param].what);
                         });

// The baseline call of the table above is valid (so each case fails for its own reason).
TEST(Validation, BaselineCallSucceedsInEveryLayout) {
  for (int variant = 0; variant < 4; ++variant) {
    Call c;
    if (variant == 1) {
      c.a.seqlens_q = c.len_q.data();
      c.a.seqlens_k = c.len_k.data();
    }
    if (variant == 2) {
      c.a.cu_seqlens_q = c.cu_q.data();
      c.a.cu_seqlens_k = c.cu_k.data();
    }
    if (variant == 3) c.use_paged(8);
    c.a.threshold.per_kv_head_factor = c.head_factors.data();
    blasst_run_info info;
    blasst_run_info_init(&info);
    EXPECT_EQ(blasst_prefill(&c.a, &info), BLASST_OK) << variant << ": " << blasst_last_error();
    EXPECT_STREQ(blasst_last_error(), "");
    EXPECT_GT(info.visited, 0);
    EXPECT_EQ(info.engine, BLASST_ENGINE_CPU);
    EXPECT_EQ(blasst_decode(&c.a, &info), BLASST_OK) << variant << ": " << blasst_last_error();
  }
}

// A decisions buffer larger than [batch, groups, tiles] is written only in that prefix.
TEST(Validation, OversizedDecisionsBufferIsWrittenOnlyWhereTheLayoutSays) {
  for (blasst_phase phase : {BLASST_PHASE_PREFILL, BLASST_PHASE_DECODE}) {
    Call c;
    const size_t tiles = (Call::LK + 7) / 8;
    // geometry.block_m = 4: prefill row blocks of 4 rows, decode chunks of 4 (head, row) pairs
    const size_t pairs = size_t(Call::HQ / Call::HKV) * Call::LQ;
    const size_t groups = phase == BLASST_PHASE_PREFILL ? size_t(Call::HQ) * ((Call::LQ + 3) / 4)
                                                        : size_t(Call::HKV) * ((pairs + 3) / 4);
    const size_t used = size_t(Call::B) * groups * tiles;
    const blasst_status st = phase == BLASST_PHASE_PREFILL ? blasst_prefill(&c.a, nullptr) : blasst_decode(&c.a, nullptr);
    ASSERT_EQ(st, BLASST_OK) << blasst_last_error();
    for (size_t n = 0; n < used; ++n) ASSERT_LE(c.dec[n], BLASST_TILE_SKIPPED) << "phase " << phase << " byte " << n;
    for (size_t n = used; n < c.dec.size(); ++n) ASSERT_EQ(c.dec[n], 0xEE) << "phase " << phase << " byte " << n;
  }
}

TEST(Validation, NullArgsIsRejectedThroughTheCAbi) {
  EXPECT_EQ(blasst_prefill(nullptr, nullptr), BLASST_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(blasst_last_error()).find("args"), std::string::npos) << blasst_last_error();
  EXPECT_EQ(blasst_decode(nullptr, nullptr), BLASST_ERROR_INVALID_ARGUMENT);
  EXPECT_GT(std::strlen(blasst_last_error()), 0u);
}

TEST(Validation, RunInfoWithWrongStructSizeIsRejected) {
  Call c;
  blasst_run_info info;
  blasst_run_info_init(&info);
  info.struct_size = 3;
  EXPECT_EQ(blasst_prefill(&c.a, &info), BLASST_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(blasst_last_error()).find("info.struct_size"), std::string::npos) << blasst_last_error();
  EXPECT_TRUE(c.untouched());
}

TEST(Validation, LastErrorIsClearedBySuccess) {
  Call bad;
  bad.a.batch = 0;
  EXPECT_EQ(blasst_prefill(&bad.a, nullptr), BLASST_ERROR_INVALID_ARGUMENT);
  EXPECT_GT(std::strlen(blasst_last_error()), 0u);
  Call good;
  EXPECT_EQ(blasst_prefill(&good.a, nullptr), BLASST_OK);
  EXPECT_STREQ(blasst_last_error(), "");
}

TEST(Validation, CudaEngineWithoutCudaIsUnsupported) {
  if (blasst_cuda_available()) GTEST_SKIP() << "a CUDA device is present";
  Call c;
  c.a.engine = BLASST_ENGINE_CUDA;
  EXPECT_EQ(blasst_prefill(&c.a, nullptr), BLASST_ERROR_UNSUPPORTED);
  EXPECT_NE(std::string(blasst_last_error()).find("cuda"), std::string::npos) << blasst_last_error();
  EXPECT_TRUE(c.untouched());
}

TEST(Validation, LseMayBeNullAndZeroLengthsAreValid) {
  Call c;
  c.a.lse.data = nullptr;
  EXPECT_EQ(blasst_prefill(&c.a, nullptr), BLASST_OK) << blasst_last_error();
  Call z;
  z.len_q = {0, 0};
  z.len_k = {0, 0};
  z.a.seqlens_q = z.len_q.data();
  z.a.seqlens_k = z.len_k.data();
  EXPECT_EQ(blasst_prefill(&z.a, nullptr), BLASST_OK) << blasst_last_error();
  EXPECT_EQ(blasst_decode(&z.a, nullptr), BLASST_OK) << blasst_last_error();
}

TEST(Validation, WorkspaceSizeIsZeroForTheCpuEngineAndChecksItsArguments) {
  Call c;
  size_t bytes = 77;
  EXPECT_EQ(blasst_workspace_size(&c.a, BLASST_PHASE_DECODE, &bytes), BLASST_OK) << blasst_last_error();
  EXPECT_EQ(bytes, 0u);
  EXPECT_EQ(blasst_workspace_size(nullptr, BLASST_PHASE_DECODE, &bytes), BLASST_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(blasst_workspace_size(&c.a, BLASST_PHASE_PREFILL, nullptr), BLASST_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(blasst_last_error()).find("bytes"), std::string::npos) << blasst_last_error();
  c.a.head_dim_qk = 0;
  bytes = 77;
  EXPECT_EQ(blasst_workspace_size(&c.a, BLASST_PHASE_PREFILL, &bytes), BLASST_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(blasst_last_error()).find("head_dim_qk"), std::string::npos) << blasst_last_error();
  EXPECT_EQ(bytes, 77u);
}

// FP8 prefill on the CUDA engine asks for V^T [B, Hkv, Dv, Lk rounded up to 128] e4m3 (the sm_90a
// kernel's P V in e4m3; fp8_pv.cuh), other prefill calls for nothing. Host arithmetic: no GPU needed.
TEST(Validation, WorkspaceSizeOfFp8PrefillOnTheCudaEngineHoldsVTransposed) {
  Call c;
  set_raw(c.a.q.dtype, 3), set_raw(c.a.k.dtype, 3), set_raw(c.a.v.dtype, 3);
  c.a.scales = {c.head_factors.data(), c.head_factors.data(), c.head_factors.data(), 1};
  c.a.engine = BLASST_ENGINE_CUDA;
  size_t bytes = 77;
  ASSERT_EQ(blasst_workspace_size(&c.a, BLASST_PHASE_PREFILL, &bytes), BLASST_OK) << blasst_last_error();
#if BLASST_TEST_FP8_PV_WORKSPACE
  EXPECT_EQ(bytes, size_t(Call::B) * Call::HKV * Call::D * 128);  // Lk = 40 rounded up to 128 keys
#else
  EXPECT_EQ(bytes, 0u);  // (no CUDA engine, or P V converted in shared memory)
#endif
  Call plain;
  plain.a.engine = BLASST_ENGINE_CUDA;
  bytes = 77;
  ASSERT_EQ(blasst_workspace_size(&plain.a, BLASST_PHASE_PREFILL, &bytes), BLASST_OK) << blasst_last_error();
  EXPECT_EQ(bytes, 0u);
}

TEST(Validation, StatusNamesAndInitHelpers) {
  EXPECT_STREQ(blasst_status_name(BLASST_OK), "ok");
  EXPECT_STRNE(blasst_status_name(BLASST_ERROR_INVALID_ARGUMENT), blasst_status_name(BLASST_OK));
  for (blasst_status st : {BLASST_ERROR_UNSUPPORTED, BLASST_ERROR_OUT_OF_MEMORY, BLASST_ERROR_CUDA, BLASST_ERROR_INTERNAL})
    EXPECT_GT(std::strlen(blasst_status_name(st)), 0u);
  blasst_args_init(nullptr);
  blasst_run_info_init(nullptr);
  blasst_args a;
  std::memset(&a, 0xff, sizeof a);
  blasst_args_init(&a);
  EXPECT_EQ(a.struct_size, sizeof(blasst_args));
  EXPECT_EQ(a.engine, BLASST_ENGINE_AUTO);
  EXPECT_EQ(a.q.data, nullptr);
  EXPECT_EQ(a.threshold.threshold_scale_factor, 0.0f);
  EXPECT_STREQ(blasst_version(), "0.1.0");
}

// What a GPU call checks without reading device memory: padded Q/out/LSE and K/V extents and the
// pages of a paged cache (a buffer one element short is refused, naming the tensor).
TEST(Validation, DeviceExtentsOfPaddedAndPagedLayouts) {
  {
    Call c;
    EXPECT_EQ(blasst::detail::validate_device_extents(c.a).code(), BLASST_OK) << "baseline";
  }
  for (auto [name, field] : {std::pair{"q", &blasst_args::q}, std::pair{"k", &blasst_args::k},
                             std::pair{"v", &blasst_args::v}, std::pair{"out", &blasst_args::out},
                             std::pair{"lse", &blasst_args::lse}}) {
    Call c;
    (c.a.*field).numel -= 1;
    const blasst::Status s = blasst::detail::validate_device_extents(c.a);
    EXPECT_EQ(s.code(), BLASST_ERROR_INVALID_ARGUMENT) << name;
    EXPECT_EQ(s.message().rfind(std::string(name) + " is too small", 0), 0u) << s.message();
  }
  {
    Call c;
    c.use_paged(8);
    EXPECT_EQ(blasst::detail::validate_device_extents(c.a).code(), BLASST_OK) << "paged baseline";
    c.a.num_pages += 1;  // one page past the buffer
    const blasst::Status s = blasst::detail::validate_device_extents(c.a);
    EXPECT_NE(s.message().find("k is too small: page"), std::string::npos) << s.message();
  }
  {
    Call c;  // ragged sides: offsets are device memory there, so only the padded side is checked
    c.a.cu_seqlens_q = c.cu_q.data();
    c.a.q.numel = 1;
    EXPECT_EQ(blasst::detail::validate_device_extents(c.a).code(), BLASST_OK);
  }
}

}  // namespace
