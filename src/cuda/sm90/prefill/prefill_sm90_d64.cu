// sm_90a prefill instantiations for head dimension 64: bf16/fp16 x dense/skip.
#include "cuda/sm90/prefill/prefill_launch.cuh"

namespace blasst::cuda::sm90 {

cudaError_t launch_d64(Elem elem, bool skip, const PrefillParams& p, const TmaExtents& e, cudaStream_t stream) {
  return launch_for_dim<64>(elem, skip, p, e, stream);
}

}  // namespace blasst::cuda::sm90
