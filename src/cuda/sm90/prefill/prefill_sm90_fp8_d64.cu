// sm_90a prefill instantiations for FP8 (e4m3 Q, K, V; bf16 O) at head dimension 64: dense/skip.
#include "cuda/sm90/prefill/prefill_launch.cuh"

namespace blasst::cuda::sm90 {

cudaError_t launch_fp8_d64(bool skip, const PrefillParams& p, const TmaExtents& e, cudaStream_t stream) {
  return launch_fp8_for_dim<64>(skip, p, e, stream);
}

}  // namespace blasst::cuda::sm90
