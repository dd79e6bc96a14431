// sm_90a MLA decode instantiations with thread-block clusters of 2 and 4 CTAs sharing each latent
// tile through TMA multicast (bfloat16, dense and skip): a translation unit of its own so that the
// build compiles them beside the others.
#include "cuda/sm90/decode/mla_launch.cuh"

namespace blasst::cuda::sm90::mla {

cudaError_t launch_cluster(const blasst_args& a, bool skip, int cluster, const decode::DecodeParams& p,
                           cudaStream_t stream) {
  using E = cutlass::bfloat16_t;
  if (cluster == 2)
    return skip ? launch_kernel<E, true, 2>(a, p, stream) : launch_kernel<E, false, 2>(a, p, stream);
  if (cluster == 4)
    return skip ? launch_kernel<E, true, 4>(a, p, stream) : launch_kernel<E, false, 4>(a, p, stream);
  return cudaErrorInvalidValue;
}

}  // namespace blasst::cuda::sm90::mla
