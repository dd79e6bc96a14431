// Picks the tile kernels for this CPU once per process.
#include <cstdlib>
#include <cstring>

#include "cpu/tile_kernels.hpp"

namespace blasst::cpu {
namespace {

const TileKernels& pick() {
  const char* forced = std::getenv("BLASST_CPU_ISA");
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (forced && std::strcmp(forced, "generic") == 0) return tile_kernels_generic();
  if (forced && std::strcmp(forced, "avx2") == 0 && avx2) return tile_kernels_avx2();
  if (avx512 && !(forced && std::strcmp(forced, "avx2") == 0)) return tile_kernels_avx512();
  if (avx2) return tile_kernels_avx2();
  return tile_kernels_generic();
}

}  // namespace

const TileKernels& tile_kernels() {
  static const TileKernels& chosen = pick();
  return chosen;
}

}  // namespace blasst::cpu
