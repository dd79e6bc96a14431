// libFuzzer target over the C ABI: builds a blasst_args from the input bytes (mostly small
// sane shapes, but every integer field, stride, numel, length array, block table entry, flag,
// enum value and threshold float can also take raw values), with real buffers of exactly the
// sizes the call claims, and calls blasst_prefill / blasst_decode on the CPU engine.
//
// Checked: the status is a documented code; an error has a non-empty message and leaves every
// output untouched; a success has an empty message and writes only valid decisions. Memory
// errors are left to AddressSanitizer / UndefinedBehaviorSanitizer.
#include <blasst/blasst.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

namespace {

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : p_(data), n_(size) {}
  uint8_t u8() {
    if (n_ == 0) return 0;
    --n_;
    return *p_++;
  }
  uint32_t u32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= uint32_t(u8()) << (8 * i);
    return v;
  }
  uint64_t u64() { return uint64_t(u32()) | (uint64_t(u32()) << 32); }
  bool chance(int percent) { return u8() < percent * 256 / 100; }
  // A value in [lo, hi].
  int32_t range(int32_t lo, int32_t hi) {
    const uint64_t span = uint64_t(int64_t(hi) - int64_t(lo) + 1);
    return int32_t(int64_t(lo) + int64_t(uint64_t(u32()) % span));
  }
  // Mostly [lo, hi]; sometimes a boundary or a raw value.
  int32_t field(int32_t lo, int32_t hi, int percent_raw = 8) {
    if (!chance(percent_raw)) return range(lo, hi);
    static const int32_t special[] = {0,     -1,    1,   2,   576, 577, 65536, 65537, std::numeric_limits<int32_t>::max(),
                                      std::numeric_limits<int32_t>::min(), 1 << 20, 4096};
    const uint8_t k = u8();
    if (k < 200) return special[k % (sizeof(special) / sizeof(special[0]))];
    return int32_t(u32());
  }
  int64_t field64(int64_t sane, int percent_raw = 6) {
    if (!chance(percent_raw)) return sane;
    static const int64_t special[] = {0, -1, 1, sane + 1, sane - 1, sane * 2, int64_t(1) << 40,
                                      std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min(),
                                      std::numeric_limits<int64_t>::max() / 3};
    const uint8_t k = u8();
    if (k < 200) return special[k % (sizeof(special) / sizeof(special[0]))];
    return int64_t(u64());
  }
  float real(float lo, float hi, int percent_raw = 8) {
    if (chance(percent_raw)) {
      static const float special[] = {0.0f,
                                      -0.0f,
                                      -1.0f,
                                      std::numeric_limits<float>::quiet_NaN(),
                                      std::numeric_limits<float>::infinity(),
                                      -std::numeric_limits<float>::infinity(),
                                      std::numeric_limits<float>::denorm_min(),
                                      std::numeric_limits<float>::max(),
                                      1e30f};
      const uint8_t k = u8();
      if (k < 200) return special[k % (sizeof(special) / sizeof(special[0]))];
      const uint32_t bits = u32();
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    }
    return lo + (hi - lo) * float(u8()) / 255.0f;
  }

 private:
  const uint8_t* p_;
  size_t n_;
};

template <class E>
void set_raw(E& field, int32_t value) {
  static_assert(sizeof(E) == sizeof(int32_t));
  std::memcpy(&field, &value, sizeof value);
}

constexpr int64_t kMaxElements = int64_t(1) << 20;

// a * b for non-negative values, saturating at 2^40 (far above any buffer here).
int64_t sat_mul(int64_t a, int64_t b) {
  constexpr int64_t kCap = int64_t(1) << 40;
  if (a == 0 || b == 0) return 0;
  if (a > kCap / b) return kCap;
  return std::min(a * b, kCap);
}

// Bytes per element; an invalid dtype gets the larger size.
int64_t dtype_bytes(int32_t dtype) {
  if (dtype == BLASST_DTYPE_FLOAT8_E4M3) return 1;
  return dtype == BLASST_DTYPE_FLOAT16 || dtype == BLASST_DTYPE_BFLOAT16 ? 2 : 4;
}

void fill(Reader& r, std::vector<uint8_t>& bytes, int32_t dtype) {
  const size_t elem = size_t(dtype_bytes(dtype));
  const bool wild = r.chance(10);
  for (size_t i = 0; i + elem <= bytes.size(); i += elem) {
    if (dtype == BLASST_DTYPE_FLOAT32) {
      const float x = wild ? r.real(-4.0f, 4.0f, 20) : float(int(i * 2654435761u % 1000) - 500) / 125.0f;
      std::memcpy(&bytes[i], &x, 4);
    } else if (elem == 1) {
      bytes[i] = wild ? uint8_t(r.u32()) : uint8_t(0x38u ^ uint8_t(i * 40503u % 0x3fu));
    } else {
      uint16_t h = wild ? uint16_t(r.u32()) : uint16_t(0x3c00u ^ uint16_t(i * 40503u % 0x3ffu));
      std::memcpy(&bytes[i], &h, 2);
    }
  }
}

// Describes a tensor [batch, tokens, heads, dim] in the call; its buffer is sized to the numel
// it claims (never above the real allocation).
void make_tensor(Reader& r, blasst_tensor& t, std::vector<uint8_t>& storage, int32_t dtype, int64_t batch,
                 int64_t tokens, int64_t heads, int64_t dim, bool required) {
  set_raw(t.dtype, dtype);
  if (!required && r.chance(30)) {
    t.data = nullptr;
    return;
  }
  const int64_t d = std::max<int64_t>(dim, 1), h = std::max<int64_t>(heads, 1);
  const int64_t tok = std::max<int64_t>(tokens, 1), b = std::max<int64_t>(batch, 1);
  const int64_t hd = sat_mul(h, d), thd = sat_mul(tok, hd);
  t.head_stride = r.field64(d);
  t.token_stride = r.field64(hd);
  t.batch_stride = r.field64(thd);
  const int64_t natural = std::min(sat_mul(b, thd), kMaxElements);
  int64_t numel = r.field64(natural);
  if (numel > kMaxElements) numel = kMaxElements;
  t.numel = numel;
  const int64_t alloc = std::max<int64_t>(numel, 1);
  storage.assign(size_t(alloc * dtype_bytes(dtype)), 0);
  fill(r, storage, dtype);
  t.data = r.chance(3) ? nullptr : storage.data();
}

// Length arrays: consistent with the maxima most of the time, raw otherwise.
void make_lengths(Reader& r, std::vector<int32_t>& cu, std::vector<int32_t>& lens, int32_t batch, int32_t max_len) {
  const size_t n = size_t(std::max(batch, 1));
  cu.assign(n + 1, 0);
  lens.assign(n, 0);
  const int32_t cap = std::max(0, std::min(max_len, 1 << 16));
  for (size_t b = 0; b < n; ++b) {
    lens[b] = r.chance(10) ? r.field(-2, cap + 2, 50) : r.range(0, cap);
    const int32_t step = r.chance(10) ? r.field(-2, cap + 2, 50) : r.range(0, cap);
    cu[b + 1] = int32_t(uint32_t(cu[b]) + uint32_t(step));  // wraps like a C caller's garbage
  }
  if (r.chance(5)) cu[0] = r.field(-3, 3, 30);
}

// BLASST_FUZZ_DESCRIBE=1 prints each call's scalars (to reproduce a finding by hand).
void describe(const blasst_args& a, blasst_phase phase, double work) {
  int32_t order, engine;
  std::memcpy(&order, &a.geometry.order, 4);
  std::memcpy(&engine, &a.engine, 4);
  std::fprintf(stderr,
               "phase %d batch %d heads %d/%d dims %d/%d max_seqlen %d/%d cu %d/%d lens %d/%d table %d stride %d "
               "page %d pages %d strides q %lld/%lld/%lld numel q %lld k %lld v %lld out %lld scale %g causal %d "
               "factor %g per-head %d per-request %d geometry %d/%d order %d splits %d engine %d threads %d stats %d decisions %lld "
               "work %g\n",
               int(phase), a.batch, a.num_q_heads, a.num_kv_heads, a.head_dim_qk, a.head_dim_v, a.max_seqlen_q,
               a.max_seqlen_k, a.cu_seqlens_q != nullptr, a.cu_seqlens_k != nullptr, a.seqlens_q != nullptr,
               a.seqlens_k != nullptr, a.block_table != nullptr, a.block_table_stride, a.page_size, a.num_pages,
               (long long)a.q.batch_stride, (long long)a.q.token_stride, (long long)a.q.head_stride,
               (long long)a.q.numel, (long long)a.k.numel, (long long)a.v.numel, (long long)a.out.numel,
               double(a.scale), a.causal, double(a.threshold.threshold_scale_factor),
               a.threshold.per_kv_head_factor != nullptr, a.threshold.per_request_factor != nullptr, a.geometry.block_m, a.geometry.block_n, order,
               a.geometry.splits, engine, a.num_threads, a.stats_per_head != nullptr,
               a.decisions ? (long long)a.decisions_numel : -1LL, work);
}

void fail(const char* what);

// The backward of a call that succeeded: gradients in buffers shaped as the operands (sometimes
// claiming more than they hold, of another dtype, or with another geometry); a rejected call
// must name its argument and write nothing.
void fuzz_backward(Reader& r, const blasst_args& a, blasst_phase phase, const blasst_run_info& info,
                   const std::vector<uint8_t>& qs, const std::vector<uint8_t>& ks, const std::vector<uint8_t>& vs,
                   const std::vector<uint8_t>& os) {
  std::vector<uint8_t> dq(qs.size(), 0x5A), dk(ks.size(), 0x5A), dv(vs.size(), 0x5A), dout(os);
  blasst_backward_args g;
  blasst_backward_args_init(&g);
  g.phase = r.chance(95) ? phase : BLASST_PHASE_DECODE;
  g.geometry = r.chance(90) ? info.geometry : blasst_geometry{r.field(0, 70), r.field(0, 70), a.geometry.order, 1};
  g.decisions = a.decisions;
  g.decisions_numel = a.decisions_numel;
  const auto as = [&](blasst_tensor t, std::vector<uint8_t>& storage) {
    t.data = storage.data();
    if (r.chance(5)) t.numel = r.field64(t.numel, 10);
    if (r.chance(3)) set_raw(t.dtype, r.field(0, 3, 50));
    return t;
  };
  g.dq = as(a.q, dq), g.dk = as(a.k, dk), g.dv = as(a.v, dv), g.dout = as(a.out, dout);
  const std::vector<uint8_t> dq0 = dq, dk0 = dk, dv0 = dv;
  const blasst_status st = blasst_backward(&a, &g);
  const char* msg = blasst_last_error();
  if (st == BLASST_OK) return;
  if (st != BLASST_ERROR_INVALID_ARGUMENT && st != BLASST_ERROR_UNSUPPORTED && st != BLASST_ERROR_OUT_OF_MEMORY)
    fail("undocumented status for a CPU backward");
  if (!msg || msg[0] == '\0') fail("a backward error without a message");
  if (dq != dq0 || dk != dk0 || dv != dv0) fail("a rejected backward wrote a gradient");
}

void fail(const char* what) {
  std::fprintf(stderr, "fuzz_args: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader r(data, size);
  blasst_args a;
  blasst_args_init(&a);
  if (r.chance(3)) a.struct_size = r.u32();
  const blasst_phase phase = r.chance(50) ? BLASST_PHASE_PREFILL : BLASST_PHASE_DECODE;

  // Shape. Array-sized quantities stay small so that every array can really be allocated.
  a.batch = r.chance(5) ? r.range(-2, 0) : r.range(1, 4);
  a.num_kv_heads = r.chance(4) ? r.range(-1, 0) : r.range(1, 4);
  a.num_q_heads = r.chance(4) ? r.range(-1, 9) : std::max(1, a.num_kv_heads) * r.range(1, 3);
  a.head_dim_qk = r.field(1, 16);
  a.head_dim_v = r.chance(50) ? a.head_dim_qk : r.field(1, 16);
  a.max_seqlen_q = r.field(0, phase == BLASST_PHASE_DECODE ? 8 : 64);
  a.max_seqlen_k = r.field(0, 64);

  // Lengths.
  std::vector<int32_t> cu_q, len_q, cu_k, len_k;
  make_lengths(r, cu_q, len_q, a.batch, a.max_seqlen_q);
  make_lengths(r, cu_k, len_k, a.batch, a.max_seqlen_k);
  const uint8_t qmode = r.u8() % 4, kmode = r.u8() % 4;  // 0 none, 1 cu, 2 lens, 3 both (invalid)
  if (qmode & 1) a.cu_seqlens_q = cu_q.data();
  if (qmode & 2) a.seqlens_q = len_q.data();
  if (kmode & 1) a.cu_seqlens_k = cu_k.data();
  if (kmode & 2) a.seqlens_k = len_k.data();

  // Paged K/V.
  std::vector<int32_t> table;
  const bool paged = r.chance(30);
  if (paged || r.chance(3)) {
    a.page_size = r.field(1, 32);
    a.num_pages = r.field(1, 24);
    const int32_t natural_stride =
        a.page_size > 0 ? int32_t((int64_t(std::max(a.max_seqlen_k, 0)) + a.page_size - 1) / a.page_size) : 1;
    a.block_table_stride = r.chance(90) ? std::min(natural_stride, 1 << 12) : r.field(-1, 40, 50);
    const int64_t entries = int64_t(std::max(a.batch, 1)) * std::max(a.block_table_stride, 1);
    table.assign(size_t(std::min<int64_t>(std::max<int64_t>(entries, 1), int64_t(1) << 16)), 0);
    for (auto& e : table) e = r.chance(95) ? r.range(0, int32_t(std::max<int64_t>(int64_t(a.num_pages) - 1, 0))) : r.field(-1, 30, 50);
    if (int64_t(table.size()) < entries) {
      // The table cannot be allocated at the claimed size: claim what exists instead.
      a.block_table_stride = int32_t(int64_t(table.size()) / std::max(a.batch, 1));
    }
    if (paged) a.block_table = table.data();
    if (!paged && r.chance(50)) {
      a.page_size = a.num_pages = a.block_table_stride = 0;
    }
  }

  // Tensors.
  int32_t dtype = r.range(0, 2);
  if (r.chance(3)) dtype = r.field(-1, 4, 100);
  const auto other_dtype = [&](int32_t d) { return r.chance(4) ? r.field(0, 2, 30) : d; };
  std::vector<uint8_t> qs, ks, vs, os, ls;
  const int64_t qtok = std::max(a.max_seqlen_q, 0);
  const int64_t ktok = paged ? std::max(a.page_size, 1) : std::max(a.max_seqlen_k, 0);
  const int64_t kbatch = paged ? std::max(a.num_pages, 1) : a.batch;
  const int64_t qbatch = a.cu_seqlens_q ? 1 : a.batch;
  const int64_t qtokens = a.cu_seqlens_q ? int64_t(std::max(cu_q.back(), 0)) : qtok;
  const int64_t kbatch2 = (!paged && a.cu_seqlens_k) ? 1 : kbatch;
  const int64_t ktokens = (!paged && a.cu_seqlens_k) ? int64_t(std::max(cu_k.back(), 0)) : ktok;
  // FP8 operands: a KV cache in e4m3 beside q, or all three (out then 16/32-bit), with scales
  // (one or per KV head) that are sometimes missing, stray or not positive.
  int32_t q_dtype = dtype, kv_dtype = other_dtype(dtype), v_dtype = -1, out_dtype = other_dtype(dtype);
  if (r.chance(15)) {
    kv_dtype = BLASST_DTYPE_FLOAT8_E4M3;
    if (r.chance(30)) q_dtype = BLASST_DTYPE_FLOAT8_E4M3, out_dtype = r.range(0, 2);
  }
  v_dtype = r.chance(95) ? kv_dtype : other_dtype(dtype);
  make_tensor(r, a.q, qs, q_dtype, qbatch, qtokens, a.num_q_heads, a.head_dim_qk, true);
  make_tensor(r, a.k, ks, kv_dtype, kbatch2, ktokens, a.num_kv_heads, a.head_dim_qk, true);
  make_tensor(r, a.v, vs, v_dtype, kbatch2, ktokens, a.num_kv_heads, a.head_dim_v, true);
  make_tensor(r, a.out, os, out_dtype, qbatch, qtokens, a.num_q_heads, a.head_dim_v, true);
  a.scales.per_kv_head = r.chance(95) ? r.range(0, 1) : r.field(0, 1, 100);
  std::vector<float> scale_values(size_t(std::max(a.num_kv_heads, 1)));
  for (auto& s : scale_values) s = r.chance(95) ? r.real(0.01f, 4.0f, 20) : r.real(-1.0f, 1.0f, 50);
  const auto scale_for = [&](int32_t operand_dtype) -> const float* {
    const bool fp8 = operand_dtype == BLASST_DTYPE_FLOAT8_E4M3;
    return (fp8 ? r.chance(97) : r.chance(3)) ? scale_values.data() : nullptr;
  };
  a.scales.q = scale_for(q_dtype);
  a.scales.k = scale_for(kv_dtype);
  a.scales.v = scale_for(v_dtype);
  make_tensor(r, a.lse, ls, r.chance(95) ? BLASST_DTYPE_FLOAT32 : r.field(0, 3, 50), qbatch, qtokens,
              a.num_q_heads, 1, false);

  // Scalars, flags, enums.
  a.scale = r.chance(70) ? 0.0f : r.real(-1.0f, 1.0f, 30);
  a.causal = r.chance(95) ? r.range(0, 1) : r.field(0, 1, 100);
  a.threshold.threshold_scale_factor = r.chance(20) ? 0.0f : r.real(0.0f, 80.0f, 15);
  std::vector<float> head_factors(size_t(std::max(a.num_kv_heads, 1)));
  for (auto& f : head_factors) f = r.real(0.0f, 80.0f, 10);
  std::vector<float> request_factors(size_t(std::max(a.batch, 1)));
  for (auto& f : request_factors) f = r.real(0.0f, 80.0f, 10);
  if (r.chance(20)) a.threshold.per_kv_head_factor = head_factors.data();
  if (r.chance(20)) a.threshold.per_request_factor = request_factors.data();
  a.geometry.block_m = r.chance(20) ? 0 : r.field(1, 70);
  a.geometry.block_n = r.chance(20) ? 0 : r.field(1, 70);
  set_raw(a.geometry.order, r.chance(95) ? r.range(0, 1) : r.field(0, 1, 100));
  a.geometry.splits = r.chance(30) ? 0 : r.field(1, 9);
  set_raw(a.engine, r.chance(95) ? BLASST_ENGINE_CPU : r.field(0, 3, 60));
  a.num_threads = r.chance(95) ? r.range(0, 3) : r.field(0, 8, 40);

  // Statistics outputs, sized by the phase's head count.
  const int32_t stat_heads = phase == BLASST_PHASE_DECODE ? a.num_kv_heads : a.num_q_heads;
  std::vector<int64_t> stats(size_t(std::max(stat_heads, 1)) * 2, -777);
  if (r.chance(50)) a.stats_per_head = stats.data();
  std::vector<uint8_t> decisions;
  if (r.chance(50)) {
    const int64_t bm = a.geometry.block_m > 0 ? a.geometry.block_m : 128;
    const int64_t bn = a.geometry.block_n > 0 ? a.geometry.block_n : 128;
    const int64_t groups = phase == BLASST_PHASE_DECODE
                               ? std::max(a.num_kv_heads, 0)
                               : sat_mul(std::max(a.num_q_heads, 0), (int64_t(std::max(a.max_seqlen_q, 0)) + bm - 1) / bm);
    int64_t needed = sat_mul(sat_mul(std::max(a.batch, 0), groups), (int64_t(std::max(a.max_seqlen_k, 0)) + bn - 1) / bn);
    if (needed > kMaxElements) needed = kMaxElements;
    int64_t claimed = r.field64(needed, 10);
    if (claimed > kMaxElements) claimed = kMaxElements;
    decisions.assign(size_t(std::max<int64_t>(claimed, 1)), 0xEE);
    a.decisions = decisions.data();
    a.decisions_numel = claimed;
  }

  // Skip calls that would be valid but too much work for a fuzzing iteration (huge lengths
  // through stride-0 broadcasting): an upper bound from the lengths as given.
  double work = 0;
  {
    const int64_t hq = std::max(a.num_q_heads, 0);
    for (int32_t b = 0; b < a.batch; ++b) {
      const double lq = double(std::max<int64_t>(0, a.cu_seqlens_q ? int64_t(cu_q[size_t(b) + 1]) - cu_q[size_t(b)]
                                                  : a.seqlens_q ? len_q[size_t(b)] : a.max_seqlen_q));
      const double lk = double(std::max<int64_t>(0, a.cu_seqlens_k ? int64_t(cu_k[size_t(b) + 1]) - cu_k[size_t(b)]
                                                  : a.seqlens_k ? len_k[size_t(b)] : a.max_seqlen_k));
      work += lq * (lk + 64) * double(hq) * (double(std::max(a.head_dim_qk, 1)) + double(std::max(a.head_dim_v, 1)));
    }
    if (work > 1e7) return 0;
  }

  blasst_run_info info;
  blasst_run_info_init(&info);
  if (r.chance(5)) info.struct_size = r.u32();
  blasst_run_info* info_ptr = r.chance(20) ? nullptr : &info;

  const std::vector<uint8_t> out_before = os, lse_before = ls, dec_before = decisions;
  const std::vector<int64_t> stats_before = stats;
  const bool null_args = r.chance(1);
  static const bool verbose = std::getenv("BLASST_FUZZ_DESCRIBE") != nullptr;
  if (verbose) describe(a, phase, work);
  const blasst_status st = phase == BLASST_PHASE_PREFILL ? blasst_prefill(null_args ? nullptr : &a, info_ptr)
                                                         : blasst_decode(null_args ? nullptr : &a, info_ptr);
  const char* msg = blasst_last_error();
  if (!msg) fail("blasst_last_error returned NULL");
  switch (st) {
    case BLASST_OK:
      if (msg[0] != '\0') fail("a successful call left an error message");
      for (size_t i = 0; i < decisions.size(); ++i)
        if (decisions[i] > BLASST_TILE_SKIPPED && decisions[i] != 0xEE) fail("a decision byte is not a blasst_decision");
      break;
    case BLASST_ERROR_INVALID_ARGUMENT:
    case BLASST_ERROR_UNSUPPORTED:
    case BLASST_ERROR_OUT_OF_MEMORY:
      if (msg[0] == '\0') fail("an error without a message");
      if (os != out_before || ls != lse_before || decisions != dec_before || stats != stats_before)
        fail("a rejected call wrote to an output");
      break;
    default:
      std::fprintf(stderr, "status %d: %s\n", int(st), msg);
      fail("undocumented status for a CPU call");
  }
  if (st == BLASST_OK && a.decisions && !null_args) fuzz_backward(r, a, phase, info, qs, ks, vs, os);
  return 0;
}
