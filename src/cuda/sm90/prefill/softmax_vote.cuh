// Per-row work of a consumer warpgroup on its wgmma accumulators: the row/column views of a
// fragment, the row maxima, the SPEC skip vote across the warpgroup, and the online softmax.
//
// A 64 x N wgmma accumulator holds, per thread, 2 rows (r and r + 8 of the thread's warp
// quarter) x N/4 columns; the 4 threads of a quad share the rows and split the columns.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_conversion.h>

#include "cuda/common/ptx.cuh"
#include "cuda/common/quad_reduce.cuh"

namespace blasst::cuda::sm90 {

using namespace cute;

constexpr float kNegInf = -__builtin_huge_valf();

// ((2, 2, V), M, N) accumulator layout -> ((2, M), (2, V, N)) = (rows, columns).
template <class L>
__device__ __forceinline__ auto rowcol_layout(L l) {
  return make_layout(make_layout(get<0, 1>(l), get<1>(l)), make_layout(get<0, 0>(l), get<0, 2>(l), get<2>(l)));
}

// The same registers, after conversion to 16 bits, as the A operand of a wgmma whose K runs
// over the accumulator's columns: ((2, 2, V), M, N) -> ((2, 2, 2), M, V/2 * N). Columns 8j..8j+7
// of the accumulator are k-half (j & 1) of k-block j / 2.
template <class L>
__device__ __forceinline__ auto acc_as_a_layout(L l) {
  auto j = logical_divide(get<0, 2>(l), Layout<_2>{});  // (2, V/2)
  return make_layout(make_layout(get<0, 0>(l), get<0, 1>(l), get<0>(j)), get<1>(l),
                     coalesce(make_layout(get<1>(j), get<2>(l))));
}

// Element-wise conversion of a float register fragment into a 16-bit one of the same layout,
// packed two at a time.
template <class FragIn, class FragOut>
__device__ __forceinline__ void convert_fragment_into(FragIn const& in, FragOut& out) {
  using To = typename FragOut::value_type;
  constexpr int N = decltype(size(in))::value;
  static_assert(N % 2 == 0, "pairs");
#pragma unroll
  for (int i = 0; i < N; i += 2) {
    cutlass::Array<float, 2> pair{in(i), in(i + 1)};
    cutlass::NumericArrayConverter<To, float, 2, cutlass::FloatRoundStyle::round_to_nearest> conv;
    auto r = conv(pair);
    out(i) = r[0];
    out(i + 1) = r[1];
  }
}

// The same into a new fragment.
template <class To, class Frag>
__device__ __forceinline__ auto convert_fragment(Frag const& in) {
  Tensor out = make_tensor<To>(in.layout());
  convert_fragment_into(in, out);
  return out;
}

// Maxima of the thread's columns of each row of a (rows, cols) fragment, not yet reduced over
// the quad (the kernel does that in two shuffle rounds); NaN-propagating or not as tree_max.
template <bool kNanPropagates, int R, class Frag>
__device__ __forceinline__ void thread_row_max(Frag const& s, float (&mt)[R]) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
    constexpr int C = decltype(size<1>(s))::value;
    float v[C];
#pragma unroll
    for (int c = 0; c < C; ++c) v[c] = s(r, c);
    mt[r] = tree_max<kNanPropagates>(v);
  }
}

// A condition that is the same in every thread of the warp, rewritten so that the compiler
// knows it (a vote yields a uniform predicate): branches on it are not divergent.
__device__ __forceinline__ bool uniform(bool c) { return __any_sync(0xffffffffu, c); }

// OR of `keep` over the 128 threads of a warpgroup, in one barrier instruction. Every thread
// of the warpgroup must call it with the same barrier id.
__device__ __forceinline__ bool warpgroup_any(bool keep, int barrier_id) {
  uint32_t out;
  asm volatile(
      "{\n .reg .pred p, q;\n setp.ne.u32 q, %1, 0;\n bar.red.or.pred p, %2, 128, q;\n selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(out)
      : "r"(uint32_t(keep)), "r"(barrier_id)
      : "memory");
  return out != 0;
}

// Online softmax state of the thread's R rows: running max m (raw, unscaled scores;
// NaN-propagating or not as tree_max) and the thread's partial row sum l (its quad's columns
// only; reduced in the epilogue).
template <int R, bool kNanPropagates>
struct OnlineSoftmax {
  float m[R];
  float l[R];

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int r = 0; r < R; ++r) m[r] = kNegInf, l[r] = 0.0f;
  }

  // Takes the tile's scores S (rows, cols) with their row maxima mt, turns S into
  // P = exp(scale * (S - m_new)) in place, folds P into l and returns the factor
  // alpha = exp(scale * (m_old - m_new)) by which O must be rescaled (rescale()).
  template <class FragS>
  __device__ __forceinline__ void exponentiate(FragS& s, float const (&mt)[R], float scale_log2, float (&alpha)[R]) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float m_new = max_of<kNanPropagates>(m[r], mt[r]);
      const float m_use = m_new == kNegInf ? 0.0f : m_new;
      alpha[r] = ptx::ex2((m[r] - m_use) * scale_log2);
      const float ms = m_use * scale_log2;
      float sum = 0.0f;
#pragma unroll
      for (int c = 0; c < size<1>(s); ++c) {
        const float p = ptx::ex2(fmaf(s(r, c), scale_log2, -ms));
        s(r, c) = p;
        sum += p;
      }
      l[r] = l[r] * alpha[r] + sum;
      m[r] = m_new;
    }
  }

  template <class FragO>
  __device__ __forceinline__ void rescale(FragO& o, float const (&alpha)[R]) {
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int c = 0; c < size<1>(o); ++c) o(r, c) *= alpha[r];
  }
};

}  // namespace blasst::cuda::sm90
