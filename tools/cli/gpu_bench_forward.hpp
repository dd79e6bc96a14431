// `blasst bench --engine cuda ...`: the GPU benchmarks are Python scripts (they time PyTorch's
// SDPA backends next to ours); the CLI runs them with the other arguments.
#pragma once

namespace blasst::cli {

// True for `blasst bench ... --engine cuda ...` (not with --help: that shows the CLI's help).
bool wants_gpu_bench(int argc, char** argv);

// Runs bench/gpu_bench.py (--phase prefill), bench/gpu_decode_bench.py (--phase decode) or both
// in that order (--phase all, the default; stops at the first that fails) under python3, with
// the arguments other than --engine and --phase. Returns the exit code to leave with.
int forward_gpu_bench(int argc, char** argv);

}  // namespace blasst::cli
