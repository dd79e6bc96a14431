#include "core/validate.hpp"

#include <cmath>
#include <limits>
#include <sstream>
#include <string>

#include "core/layout.hpp"

namespace blasst::detail {
namespace {

constexpr int32_t kDefaultBlock = 128;
constexpr int32_t kMaxBlock = 1 << 16;

template <class... Parts>
Status invalid(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return {BLASST_ERROR_INVALID_ARGUMENT, os.str()};
}

bool valid_dtype(blasst_dtype d) {
  return d == BLASST_DTYPE_FLOAT32 || d == BLASST_DTYPE_FLOAT16 || d == BLASST_DTYPE_BFLOAT16 ||
         d == BLASST_DTYPE_FLOAT8_E4M3;
}

const char* dtype_name(blasst_dtype d) {
  switch (d) {
    case BLASST_DTYPE_FLOAT32: return "float32";
    case BLASST_DTYPE_FLOAT16: return "float16";
    case BLASST_DTYPE_BFLOAT16: return "bfloat16";
    case BLASST_DTYPE_FLOAT8_E4M3: return "float8_e4m3";
  }
  return "unknown";
}

// a*b + c with overflow detection; false on overflow.
bool mul_add(int64_t a, int64_t b, int64_t c, int64_t* out) {
  int64_t product;
  if (__builtin_mul_overflow(a, b, &product)) return false;
  return !__builtin_add_overflow(product, c, out);
}

Status check_tensor_header(const char* name, const blasst_tensor& t, bool data_required) {
  if (!t.data) {
    if (data_required) return invalid(name, ".data is NULL");
    return Status::ok();
  }
  if (!valid_dtype(t.dtype)) return invalid(name, ".dtype is ", int(t.dtype), ", expected a blasst_dtype");
  if (t.batch_stride < 0 || t.token_stride < 0 || t.head_stride < 0)
    return invalid(name, " strides must be >= 0 (batch ", t.batch_stride, ", token ", t.token_stride,
                   ", head ", t.head_stride, ")");
  if (t.numel <= 0) return invalid(name, ".numel is ", t.numel, ", expected the element count of the buffer (> 0)");
  return Status::ok();
}

// Largest element offset + 1 touched by rows [0, rows) x heads [0, heads) x dims [0, dim) of
// a tensor starting at `base`; checks it against numel.
Status check_extent(const char* name, const blasst_tensor& t, int64_t base, int64_t rows,
                    int64_t heads, int64_t dim, const char* where_kind, int64_t where) {
  if (rows <= 0) return Status::ok();
  int64_t end = 0;
  bool ok = mul_add(rows - 1, t.token_stride, base, &end) &&
            mul_add(heads - 1, t.head_stride, end, &end) && mul_add(1, dim, end, &end);
  if (!ok || end > t.numel) {
    return invalid(name, " is too small: ", where_kind, " ", where, " reaches element ",
                   ok ? end : std::numeric_limits<int64_t>::max(), " but numel is ", t.numel);
  }
  return Status::ok();
}

Status check_lengths(const char* cu_name, const int32_t* cu, const char* len_name,
                     const int32_t* lens, int32_t batch, int32_t max_len, const char* max_name) {
  if (cu) {
    if (cu[0] != 0) return invalid(cu_name, "[0] is ", cu[0], ", expected 0");
    for (int32_t b = 0; b < batch; ++b) {
      const int64_t len = int64_t(cu[b + 1]) - cu[b];
      if (len < 0)
        return invalid(cu_name, " must be non-decreasing: ", cu_name, "[", b + 1, "] = ", cu[b + 1],
                       " < ", cu_name, "[", b, "] = ", cu[b]);
      if (len > max_len)
        return invalid(cu_name, " gives entry ", b, " length ", len, " > ", max_name, " = ", max_len);
    }
  }
  if (lens) {
    for (int32_t b = 0; b < batch; ++b) {
      if (lens[b] < 0 || lens[b] > max_len)
        return invalid(len_name, "[", b, "] is ", lens[b], ", expected 0..", max_name, " = ", max_len);
    }
  }
  return Status::ok();
}

// Q-side tensors (q, out, lse) of batch entry b with lq rows: rows are contiguous in the token
// index of a ragged or padded layout.
Status check_q_side_entry(const blasst_args& a, int64_t b, int64_t lq) {
  if (lq == 0) return Status::ok();
  for (auto [name, t, dim] : {std::tuple{"q", &a.q, int64_t(a.head_dim_qk)},
                              std::tuple{"out", &a.out, int64_t(a.head_dim_v)},
                              std::tuple{"lse", &a.lse, int64_t(1)}}) {
    if (!t->data) continue;
    int64_t base = 0;  // offset of row 0, computed with overflow checks
    bool ok = a.cu_seqlens_q ? mul_add(a.cu_seqlens_q[b], t->token_stride, 0, &base)
                             : mul_add(b, t->batch_stride, 0, &base);
    if (!ok) return invalid(name, " offsets overflow at batch entry ", b);
    if (Status s = check_extent(name, *t, base, lq, a.num_q_heads, dim, "batch entry", b); !s) return s;
  }
  return Status::ok();
}

// K and V of batch entry b with lk keys, contiguous or ragged (not paged).
Status check_kv_entry(const blasst_args& a, int64_t b, int64_t lk) {
  if (lk == 0) return Status::ok();
  for (auto [name, t, dim] : {std::tuple{"k", &a.k, int64_t(a.head_dim_qk)},
                              std::tuple{"v", &a.v, int64_t(a.head_dim_v)}}) {
    int64_t base = 0;
    bool ok = a.cu_seqlens_k ? mul_add(a.cu_seqlens_k[b], t->token_stride, 0, &base)
                             : mul_add(b, t->batch_stride, 0, &base);
    if (!ok) return invalid(name, " offsets overflow at batch entry ", b);
    if (Status s = check_extent(name, *t, base, lk, a.num_kv_heads, dim, "batch entry", b); !s) return s;
  }
  return Status::ok();
}

// Paged K and V: every page the call may use holds page_size slots.
Status check_pages(const blasst_args& a) {
  for (auto [name, t, dim] : {std::tuple{"k", &a.k, int64_t(a.head_dim_qk)},
                              std::tuple{"v", &a.v, int64_t(a.head_dim_v)}}) {
    int64_t base = 0;
    if (!mul_add(a.num_pages - 1, t->batch_stride, 0, &base)) return invalid(name, " page offsets overflow");
    if (Status s = check_extent(name, *t, base, a.page_size, a.num_kv_heads, dim, "page", a.num_pages - 1); !s)
      return s;
  }
  return Status::ok();
}

constexpr blasst_dtype kFp8 = BLASST_DTYPE_FLOAT8_E4M3;

// q, k, v in one 16/32-bit dtype; K and V in FP8 beside such a q; or all three in FP8 (then out
// is 16/32-bit). A scale for, and only for, each FP8 operand.
Status check_dtypes_and_scales(const blasst_args& a) {
  const bool q8 = a.q.dtype == kFp8, k8 = a.k.dtype == kFp8, v8 = a.v.dtype == kFp8;
  const bool same = a.k.dtype == a.q.dtype && a.v.dtype == a.q.dtype;
  const bool fp8_cache = !q8 && k8 && v8;
  if (!same && !fp8_cache)
    return invalid("q, k and v must share one dtype, or K and V be float8_e4m3 together (q ", dtype_name(a.q.dtype),
                   ", k ", dtype_name(a.k.dtype), ", v ", dtype_name(a.v.dtype), ")");
  if (q8 ? a.out.dtype == kFp8 : a.out.dtype != a.q.dtype)
    return invalid("out.dtype is ", dtype_name(a.out.dtype), ", expected ",
                   q8 ? "float32, float16 or bfloat16 (FP8 inputs)" : dtype_name(a.q.dtype), " (the input dtype)");
  for (auto [name, scale, fp8] : {std::tuple{"scales.q", a.scales.q, q8}, std::tuple{"scales.k", a.scales.k, k8},
                                  std::tuple{"scales.v", a.scales.v, v8}}) {
    const char* operand = name + 7;  // "q", "k" or "v"
    if (fp8 && !scale) return invalid(name, " is NULL but ", operand, " is float8_e4m3 (its dequantization scale)");
    if (!fp8 && scale) return invalid(name, " is set but ", operand, " is not float8_e4m3");
  }
  if (a.scales.per_kv_head != 0 && a.scales.per_kv_head != 1)
    return invalid("scales.per_kv_head is ", a.scales.per_kv_head, ", expected 0 (one value) or 1 (num_kv_heads values)");
  return Status::ok();
}

}  // namespace

blasst_geometry resolve_geometry(const blasst_geometry& requested, blasst_phase phase) {
  blasst_geometry g = requested;
  // decode: block_m = 0 means one decision group per KV head (all its heads and rows)
  if (g.block_m == 0 && phase != BLASST_PHASE_DECODE) g.block_m = kDefaultBlock;
  if (g.block_n == 0) g.block_n = kDefaultBlock;
  if (g.splits == 0) g.splits = 1;
  return g;
}

Status validate_shape_args(const blasst_args& a, blasst_phase phase) {
  if (a.struct_size != sizeof(blasst_args))
    return invalid("args.struct_size is ", a.struct_size, ", expected ", sizeof(blasst_args),
                   " (initialize the struct with blasst_args_init)");
  if (phase != BLASST_PHASE_PREFILL && phase != BLASST_PHASE_DECODE)
    return invalid("phase is ", int(phase), ", expected prefill or decode");
  if (a.batch < 1) return invalid("batch is ", a.batch, ", expected >= 1");
  if (a.num_q_heads < 1) return invalid("num_q_heads is ", a.num_q_heads, ", expected >= 1");
  if (a.num_kv_heads < 1) return invalid("num_kv_heads is ", a.num_kv_heads, ", expected >= 1");
  if (a.num_q_heads % a.num_kv_heads != 0)
    return invalid("num_q_heads (", a.num_q_heads, ") must be a multiple of num_kv_heads (",
                   a.num_kv_heads, ")");
  if (a.head_dim_qk < 1 || a.head_dim_qk > BLASST_MAX_HEAD_DIM)
    return invalid("head_dim_qk is ", a.head_dim_qk, ", expected 1..", BLASST_MAX_HEAD_DIM);
  if (a.head_dim_v < 1 || a.head_dim_v > BLASST_MAX_HEAD_DIM)
    return invalid("head_dim_v is ", a.head_dim_v, ", expected 1..", BLASST_MAX_HEAD_DIM);
  if (a.max_seqlen_q < 0) return invalid("max_seqlen_q is ", a.max_seqlen_q, ", expected >= 0");
  if (a.max_seqlen_k < 0) return invalid("max_seqlen_k is ", a.max_seqlen_k, ", expected >= 0");
  if (a.cu_seqlens_q && a.seqlens_q) return invalid("give cu_seqlens_q or seqlens_q, not both");
  if (a.cu_seqlens_k && a.seqlens_k) return invalid("give cu_seqlens_k or seqlens_k, not both");

  if (a.block_table) {
    if (a.cu_seqlens_k) return invalid("cu_seqlens_k cannot be combined with block_table (paged K/V takes seqlens_k)");
    if (a.page_size < 1) return invalid("page_size is ", a.page_size, ", expected >= 1 with a block_table");
    if (a.num_pages < 1) return invalid("num_pages is ", a.num_pages, ", expected >= 1 with a block_table");
    const int64_t pages_needed = ceil_div(a.max_seqlen_k, a.page_size);
    if (a.block_table_stride < pages_needed)
      return invalid("block_table_stride is ", a.block_table_stride, ", expected >= ceil(max_seqlen_k / page_size) = ",
                     pages_needed);
  } else if (a.page_size != 0 || a.num_pages != 0 || a.block_table_stride != 0) {
    return invalid("page_size, num_pages and block_table_stride are set but block_table is NULL");
  }

  for (auto [name, t, required] : {std::tuple{"q", &a.q, true}, std::tuple{"k", &a.k, true},
                                   std::tuple{"v", &a.v, true}, std::tuple{"out", &a.out, true},
                                   std::tuple{"lse", &a.lse, false}}) {
    if (Status s = check_tensor_header(name, *t, required); !s) return s;
  }
  if (Status s = check_dtypes_and_scales(a); !s) return s;
  if (a.lse.data && a.lse.dtype != BLASST_DTYPE_FLOAT32)
    return invalid("lse.dtype is ", dtype_name(a.lse.dtype), ", expected float32");

  if (!std::isfinite(a.scale)) return invalid("scale is ", a.scale, ", expected a finite number (0 = 1/sqrt(head_dim_qk))");
  if (a.causal != 0 && a.causal != 1) return invalid("causal is ", a.causal, ", expected 0 or 1");

  if (a.threshold.per_kv_head_factor && a.threshold.per_request_factor)
    return invalid("threshold: give per_kv_head_factor or per_request_factor, not both");
  const float f = a.threshold.threshold_scale_factor;
  if (!std::isfinite(f) || f < 0)
    return invalid("threshold.threshold_scale_factor is ", f, ", expected a finite value >= 0 (0 = dense)");

  const blasst_geometry& g = a.geometry;
  if (g.block_m < 0 || g.block_m > kMaxBlock) return invalid("geometry.block_m is ", g.block_m, ", expected 0..", kMaxBlock, " (0 = default)");
  if (g.block_n < 0 || g.block_n > kMaxBlock) return invalid("geometry.block_n is ", g.block_n, ", expected 0..", kMaxBlock, " (0 = default)");
  if (g.order != BLASST_ORDER_ASCENDING && g.order != BLASST_ORDER_ANCHORED)
    return invalid("geometry.order is ", int(g.order), ", expected ascending (0) or anchored (1)");
  if (g.splits < 0 || g.splits > kMaxBlock) return invalid("geometry.splits is ", g.splits, ", expected 0..", kMaxBlock, " (0 = default)");

  if (a.engine != BLASST_ENGINE_AUTO && a.engine != BLASST_ENGINE_CPU && a.engine != BLASST_ENGINE_CUDA)
    return invalid("engine is ", int(a.engine), ", expected auto, cpu or cuda");
  if (a.num_threads < 0) return invalid("num_threads is ", a.num_threads, ", expected >= 0 (0 = all)");
  if (a.decisions && a.decisions_numel < 0) return invalid("decisions_numel is ", a.decisions_numel, ", expected >= 0");
  return Status::ok();
}

Status validate_host_contents(const blasst_args& a, blasst_phase phase, const blasst_geometry& g) {
  if (Status s = check_lengths("cu_seqlens_q", a.cu_seqlens_q, "seqlens_q", a.seqlens_q, a.batch,
                               a.max_seqlen_q, "max_seqlen_q");
      !s)
    return s;
  if (Status s = check_lengths("cu_seqlens_k", a.cu_seqlens_k, "seqlens_k", a.seqlens_k, a.batch,
                               a.max_seqlen_k, "max_seqlen_k");
      !s)
    return s;

  if (a.threshold.per_kv_head_factor) {
    for (int32_t h = 0; h < a.num_kv_heads; ++h) {
      const float f = a.threshold.per_kv_head_factor[h];
      if (!std::isfinite(f) || f < 0)
        return invalid("threshold.per_kv_head_factor[", h, "] is ", f, ", expected a finite value >= 0");
    }
  }
  const int32_t scale_count = a.scales.per_kv_head ? a.num_kv_heads : 1;
  for (auto [name, scale] : {std::pair{"scales.q", a.scales.q}, std::pair{"scales.k", a.scales.k},
                             std::pair{"scales.v", a.scales.v}}) {
    if (!scale) continue;
    for (int32_t i = 0; i < scale_count; ++i)
      if (!std::isfinite(scale[i]) || !(scale[i] > 0))
        return invalid(name, "[", i, "] is ", scale[i], ", expected a finite value > 0");
  }
  if (a.threshold.per_request_factor) {
    for (int32_t b = 0; b < a.batch; ++b) {
      const float f = a.threshold.per_request_factor[b];
      if (!std::isfinite(f) || f < 0)
        return invalid("threshold.per_request_factor[", b, "] is ", f, ", expected a finite value >= 0");
    }
  }

  bool pages_checked = false;  // the pages' extents do not depend on the entry: checked once
  for (int64_t b = 0; b < a.batch; ++b) {
    const int64_t lq = seqlen_q(a, b);
    const int64_t lk = seqlen_k(a, b);
    if (Status s = check_q_side_entry(a, b, lq); !s) return s;
    if (lk == 0) continue;
    if (a.block_table) {
      const int64_t pages = ceil_div(lk, a.page_size);
      for (int64_t p = 0; p < pages; ++p) {
        const int32_t page = a.block_table[b * a.block_table_stride + p];
        if (page < 0 || page >= a.num_pages)
          return invalid("block_table[", b, "][", p, "] is ", page, ", expected 0..num_pages-1 = ", a.num_pages - 1);
      }
    }
    if (!a.block_table) {
      if (Status s = check_kv_entry(a, b, lk); !s) return s;
    } else if (!pages_checked) {
      if (Status s = check_pages(a); !s) return s;
      pages_checked = true;
    }
  }

  if (a.stats_per_head == nullptr && a.decisions == nullptr) return Status::ok();
  if (a.decisions) {
    const int64_t groups = groups_per_entry(a, phase, g.block_m);
    const int64_t tiles = ceil_div(a.max_seqlen_k, g.block_n);
    int64_t needed = 0;
    if (!mul_add(a.batch, groups, 0, &needed) || !mul_add(needed, tiles, 0, &needed))
      return invalid("decisions buffer size overflows");
    if (a.decisions_numel < needed)
      return invalid("decisions_numel is ", a.decisions_numel, ", expected >= batch * groups * tiles = ", needed);
  }
  return Status::ok();
}

Status validate_backward(const blasst_args& a, const blasst_backward_args& g) {
  if (g.struct_size != sizeof(blasst_backward_args))
    return invalid("grads.struct_size is ", g.struct_size, ", expected ", sizeof(blasst_backward_args),
                   " (initialize the struct with blasst_backward_args_init)");
  if (g.phase != BLASST_PHASE_PREFILL && g.phase != BLASST_PHASE_DECODE)
    return invalid("grads.phase is ", int(g.phase), ", expected prefill or decode");
  if (Status s = validate_shape_args(a, g.phase); !s) return s;
  if (a.q.dtype == kFp8 || a.k.dtype == kFp8)
    return {BLASST_ERROR_UNSUPPORTED, "backward: float8_e4m3 operands have no backward pass"};
  if (a.block_table) return {BLASST_ERROR_UNSUPPORTED, "backward: paged K/V has no backward pass (training layouts "
                                                        "are dense, padded or ragged)"};
  const blasst_geometry& geo = g.geometry;
  const int32_t least_block_m = g.phase == BLASST_PHASE_DECODE ? 0 : 1;  // decode: 0 = one group per KV head
  if (geo.block_m < least_block_m || geo.block_n < 1 || geo.block_m > kMaxBlock || geo.block_n > kMaxBlock)
    return invalid("grads.geometry is ", geo.block_m, " x ", geo.block_n,
                   ", expected the forward's reported block_m and block_n (", least_block_m, "..", kMaxBlock, ")");
  if (!g.decisions) return invalid("grads.decisions is NULL (the forward's decision trace)");
  // The gradients as the operands of a call: the same shape checks and extents apply to them.
  blasst_args as_operands = a;
  as_operands.q = g.dq;
  as_operands.k = g.dk;
  as_operands.v = g.dv;
  as_operands.out = g.dout;
  as_operands.lse = g.dlse;
  as_operands.decisions = const_cast<uint8_t*>(g.decisions);
  as_operands.decisions_numel = g.decisions_numel;
  as_operands.stats_per_head = nullptr;
  as_operands.threshold = blasst_threshold{};
  for (auto [name, t] : {std::pair{"grads.dq", &g.dq}, std::pair{"grads.dk", &g.dk}, std::pair{"grads.dv", &g.dv},
                         std::pair{"grads.dout", &g.dout}}) {
    if (!t->data) return invalid(name, ".data is NULL");
    if (t->dtype != a.q.dtype)
      return invalid(name, ".dtype is ", dtype_name(t->dtype), ", expected the operands' dtype ", dtype_name(a.q.dtype));
  }
  if (Status s = validate_shape_args(as_operands, g.phase); !s) return invalid("grads: ", s.message());
  if (Status s = validate_host_contents(as_operands, g.phase, geo); !s) return invalid("grads: ", s.message());
  return validate_host_contents(a, g.phase, resolve_geometry(a.geometry, g.phase));
}

Status validate_device_extents(const blasst_args& a) {
  // Strides are >= 0, so the last entry of a padded layout reaches furthest; ragged layouts
  // need cu_seqlens (device memory) and are bounded by the engine's own use of numel.
  if (!a.cu_seqlens_q)
    if (Status s = check_q_side_entry(a, a.batch - 1, a.max_seqlen_q); !s) return s;
  if (a.block_table) return check_pages(a);
  if (!a.cu_seqlens_k) return check_kv_entry(a, a.batch - 1, a.max_seqlen_k);
  return Status::ok();
}

}  // namespace blasst::detail
