// The CUDA decode engine (split-KV, GQA-packed decision groups, V loaded only for kept tiles).
#pragma once

#include <blasst/blasst.hpp>

#include <cstddef>

namespace blasst::cuda::decode {

// BLASST_ERROR_UNSUPPORTED with the reason when this kernel cannot run these arguments.
Status check_supported(const blasst_args& args);

// Runs a validated decode call on args.stream. info may be NULL; when given and the stream is
// not capturing a graph, the call waits for the kernel to read the visited/skipped totals
// (-1 while capturing: read stats_per_head instead).
Status run_decode(const blasst_args& args, blasst_run_info* info);

// Workspace bytes run_decode needs with these arguments (0 when it runs unsplit).
size_t decode_workspace_size(const blasst_args& args);

}  // namespace blasst::cuda::decode
