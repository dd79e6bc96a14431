// Prefill instantiations for head dimension 128: bf16/fp16 x dense/skip.
#include "cuda/common/prefill_dispatch.hpp"
#include "cuda/sm80/prefill/prefill_launch.cuh"

namespace blasst::cuda {

cudaError_t launch_prefill_d128(Elem elem, bool skip, const PrefillParams& p, cudaStream_t stream) {
#if BLASST_CUDA_BUILD_FP16
  if (elem == Elem::kFp16)
    return skip ? launch_prefill_impl<__half, 128, true>(p, stream) : launch_prefill_impl<__half, 128, false>(p, stream);
#endif
  if (elem == Elem::kBf16)
    return skip ? launch_prefill_impl<__nv_bfloat16, 128, true>(p, stream)
                : launch_prefill_impl<__nv_bfloat16, 128, false>(p, stream);
  return cudaErrorInvalidValue;
}

}  // namespace blasst::cuda
