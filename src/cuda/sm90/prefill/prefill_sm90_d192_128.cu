// sm_90a prefill instantiations for MLA's non-absorbed prefill: head dim 192 for Q and K, 128 for
// V and O; bf16/fp16 x dense/skip.
#include "cuda/sm90/prefill/prefill_launch.cuh"

namespace blasst::cuda::sm90 {

cudaError_t launch_d192_128(Elem elem, bool skip, const PrefillParams& p, const TmaExtents& e, cudaStream_t stream) {
  return launch_for_dim<192, 128>(elem, skip, p, e, stream);
}

}  // namespace blasst::cuda::sm90
