// A warpgroup MMA that overwrites its accumulator, shared by the sm_90a prefill and MLA decode
// kernels for S = Q K^T of one tile.
#pragma once

#include <cute/tensor.hpp>

namespace blasst::cuda::sm90 {

// c = a b over the k blocks (mode 2) of the fragments a (M, K blocks) and b (N, K blocks, stages):
// stage `stage` of b; the first block's wgmma zeroes the accumulator (ScaleOut::Zero), the rest add
// to it. Issued as one committed batch; the caller waits (warpgroup_wait) when it needs c.
template <class Mma, class FragA, class FragB, class FragC>
__device__ __forceinline__ void issue_overwriting_gemm(Mma& mma, const FragA& a, const FragB& b, int stage,
                                                       FragC& c) {
  cute::warpgroup_fence_operand(c);
  cute::warpgroup_arrive();
  mma.accumulate_ = cute::GMMA::ScaleOut::Zero;
#pragma unroll
  for (int kb = 0; kb < cute::size<2>(a); ++kb) {
    cute::gemm(mma, a(cute::_, cute::_, kb), b(cute::_, cute::_, kb, stage), c);
    mma.accumulate_ = cute::GMMA::ScaleOut::One;
  }
  cute::warpgroup_commit_batch();
}

}  // namespace blasst::cuda::sm90
