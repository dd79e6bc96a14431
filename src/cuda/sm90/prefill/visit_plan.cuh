// The order in which one CTA of the sm_90a prefill kernel streams KV tiles, and which of them
// each of its two decision groups (consumer warpgroups) processes.
//
// Each group g visits tiles 0 .. L_g (its last tile holding a key one of its rows sees):
//   ascending: 0, 1, ..., L_g
//   anchored:  L_g, 0, 1, ..., L_g - 1   (anchors first; with no splits this decides exactly as
//              seeding the running max with the anchors, SPEC section 2)
// The groups of a CTA may differ in L (causal diagonal, short last block), so the producer
// streams one sequence that holds both groups' orders as subsequences:
//   ascending: 0, 1, ..., Lmax
//   anchored:  Lmax, [Lmin if Lmin < Lmax], 0, 1, ..., Lmax - 1
// and each group walks it, processing a tile iff it is the next tile of its own order, and
// only waiting for and releasing the buffers of the others. At most one tile is streamed that
// no group needs twice (anchored, Lmin < Lmax).
#pragma once

namespace blasst::cuda::sm90 {

struct VisitPlan {
  int last_max = -1;  // Lmax, -1 when no group sees a key
  int last_min = -1;  // Lmin (-1 when a group has no tile)
  bool anchored = false;

  __device__ __forceinline__ bool extra() const { return anchored && last_min >= 0 && last_min < last_max; }
  // Number of tiles the producer streams.
  __device__ __forceinline__ int length() const {
    if (last_max < 0) return 0;
    return last_max + 1 + (extra() ? 1 : 0);
  }
  // Tile streamed at position i < length().
  __device__ __forceinline__ int at(int i) const {
    if (!anchored) return i;
    if (i == 0) return last_max;
    if (extra()) return i == 1 ? last_min : i - 2;
    return i - 1;
  }
};

// Position in one group's own order.
struct GroupOrder {
  int last = -1;  // L_g, -1 when the group sees no key
  bool anchored = false;
  __device__ __forceinline__ int tiles() const { return last + 1; }
  __device__ __forceinline__ int at(int j) const { return anchored ? (j == 0 ? last : j - 1) : j; }
};

}  // namespace blasst::cuda::sm90
