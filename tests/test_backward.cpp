// blasst_backward's argument checks through the C ABI: every bad argument is named and nothing
// is written to the gradients. (Its values are checked against fp64 autograd in
// python/tests/test_backward.py.)
#include <gtest/gtest.h>

#include <blasst/blasst.hpp>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "support/harness.hpp"

namespace {

// A valid prefill call (B 1, Hq 2, Hkv 1, D 8, L 16) with its decision trace and gradients.
struct Backward {
  static constexpr int L = 16, HQ = 2, HKV = 1, D = 8;
  std::vector<float> q, k, v, out, lse, dout, dq, dk, dv;
  std::vector<uint8_t> decisions;
  blasst_args a;
  blasst_backward_args g;

  // [1, L, heads, D] fp32
  static blasst_tensor tensor(void* data, int64_t heads, size_t numel) {
    return blasst::test::contiguous_tensor(data, BLASST_DTYPE_FLOAT32, L, heads, D, int64_t(numel));
  }

  Backward() {
    q.resize(L * HQ * D), k.resize(L * HKV * D), v.resize(L * HKV * D);
    for (size_t i = 0; i < q.size(); ++i) q[i] = float(std::sin(0.3 * double(i)));
    for (size_t i = 0; i < k.size(); ++i) k[i] = float(std::cos(0.7 * double(i)));
    for (size_t i = 0; i < v.size(); ++i) v[i] = float(std::sin(0.11 * double(i)) + 0.2);
    out.assign(q.size(), 0.0f), lse.assign(L * HQ, 0.0f), dout.assign(q.size(), 1.0f);
    dq.assign(q.size(), 7.0f), dk.assign(k.size(), 7.0f), dv.assign(v.size(), 7.0f);
    decisions.assign(64, 0);
    a = blasst::default_args();
    a.batch = 1, a.num_q_heads = HQ, a.num_kv_heads = HKV, a.head_dim_qk = a.head_dim_v = D;
    a.max_seqlen_q = a.max_seqlen_k = L;
    a.q = tensor(q.data(), HQ, q.size()), a.k = tensor(k.data(), HKV, k.size()), a.v = tensor(v.data(), HKV, v.size());
    a.out = tensor(out.data(), HQ, out.size());
    a.causal = 1;
    a.engine = BLASST_ENGINE_CPU;
    a.geometry = {8, 8, BLASST_ORDER_ASCENDING, 1};
    a.decisions = decisions.data(), a.decisions_numel = int64_t(decisions.size());
    EXPECT_EQ(blasst_prefill(&a, nullptr), BLASST_OK) << blasst_last_error();
    blasst_backward_args_init(&g);
    g.phase = BLASST_PHASE_PREFILL;
    g.geometry = a.geometry;
    g.decisions = decisions.data(), g.decisions_numel = int64_t(decisions.size());
    g.dout = tensor(dout.data(), HQ, dout.size());
    g.dq = tensor(dq.data(), HQ, dq.size()), g.dk = tensor(dk.data(), HKV, dk.size());
    g.dv = tensor(dv.data(), HKV, dv.size());
  }
  bool untouched() const {
    for (const auto* t : {&dq, &dk, &dv})
      for (float x : *t)
        if (x != 7.0f) return false;
    return true;
  }
};

TEST(Backward, ValidCallWritesEveryGradient) {
  Backward b;
  ASSERT_EQ(blasst_backward(&b.a, &b.g), BLASST_OK) << blasst_last_error();
  for (const auto* t : {&b.dq, &b.dk, &b.dv})
    for (float x : *t) ASSERT_TRUE(std::isfinite(x) && x != 7.0f);
}

TEST(Backward, BadArgumentsAreNamedAndNothingIsWritten) {
  const struct {
    const char* expected;
    blasst_status status;
    std::function<void(Backward&)> mutate;
  } cases[] = {
      {"grads.struct_size", BLASST_ERROR_INVALID_ARGUMENT, [](Backward& b) { b.g.struct_size = 3; }},
      {"grads.phase", BLASST_ERROR_INVALID_ARGUMENT, [](Backward& b) { std::memset(&b.g.phase, 0x7f, 4); }},
      {"grads.geometry", BLASST_ERROR_INVALID_ARGUMENT, [](Backward& b) { b.g.geometry.block_n = 0; }},
      {"grads.decisions is NULL", BLASST_ERROR_INVALID_ARGUMENT, [](Backward& b) { b.g.decisions = nullptr; }},
      {"decisions_numel", BLASST_ERROR_INVALID_ARGUMENT, [](Backward& b) { b.g.decisions_numel = 2; }},
      {"grads.dq.data is NULL", BLASST_ERROR_INVALID_ARGUMENT, [](Backward& b) { b.g.dq.data = nullptr; }},
      {"grads.dk.dtype", BLASST_ERROR_INVALID_ARGUMENT, [](Backward& b) { b.g.dk.dtype = BLASST_DTYPE_FLOAT16; }},
      {"too small", BLASST_ERROR_INVALID_ARGUMENT, [](Backward& b) { b.g.dv.numel = 5; }},
      {"paged", BLASST_ERROR_UNSUPPORTED,
       [](Backward& b) {
         static const int32_t table[2] = {0, 1};
         b.a.block_table = table, b.a.block_table_stride = 2, b.a.page_size = 8, b.a.num_pages = 2;
       }},
  };
  for (const auto& c : cases) {
    Backward b;
    c.mutate(b);
    const blasst_status st = blasst_backward(&b.a, &b.g);
    const std::string msg = blasst_last_error();
    EXPECT_EQ(st, c.status) << c.expected << ": " << msg;
    EXPECT_NE(msg.find(c.expected), std::string::npos) << "message '" << msg << "' does not name '" << c.expected << "'";
    EXPECT_TRUE(b.untouched()) << c.expected;
  }
  EXPECT_EQ(blasst_backward(nullptr, nullptr), BLASST_ERROR_INVALID_ARGUMENT);
}

}  // namespace
