// Public entry points: C++ API and the C ABI over it. Every call is validated here before
// an engine runs, and no exception crosses the C boundary.
#include <blasst/blasst.h>
#include <blasst/blasst.hpp>

#include <exception>
#include <new>
#include <span>
#include <utility>
#include <string>

#include "core/layout.hpp"
#include "core/validate.hpp"
#include "cpu/backward.hpp"
#include "cpu/engine.hpp"
#ifdef BLASST_HAVE_CUDA
#include "cuda/cuda_engine.hpp"
#endif

namespace blasst {
namespace {

thread_local std::string g_last_error;

bool cuda_built() {
#ifdef BLASST_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

bool cuda_ready() {
#ifdef BLASST_HAVE_CUDA
  return cuda::device_available();
#else
  return false;
#endif
}

bool args_on_device(const blasst_args& a) {
#ifdef BLASST_HAVE_CUDA
  return cuda::device_available() && cuda::is_device_pointer(a.q.data);
#else
  (void)a;
  return false;
#endif
}

using detail::NamedPointer;

// The first of `pointers` that is device memory (nullptr: none). One query each, only when a
// device exists.
template <class Pointers>
const char* first_device_pointer(const Pointers& pointers) {
#ifdef BLASST_HAVE_CUDA
  if (!cuda::device_available()) return nullptr;
  for (const auto& [name, p] : pointers)
    if (p && cuda::is_device_pointer(p)) return name;
#else
  (void)pointers;
#endif
  return nullptr;
}

// The CPU engine reads every pointer of the call: none may be device memory (a device pointer
// beside host q would be read by the host).
Status check_host_memory(const blasst_args& a, bool q_on_device) {
  if (q_on_device)
    return {BLASST_ERROR_INVALID_ARGUMENT, "engine cpu: q.data is device memory; the CPU engine needs host memory"};
  const auto pointers = detail::call_pointers(a);  // q first: asked already (q_on_device)
  const char* on_device = first_device_pointer(std::span(pointers).subspan(1));
  if (on_device)
    return {BLASST_ERROR_INVALID_ARGUMENT, std::string("engine cpu: ") + on_device +
                                               " is device memory but q is host memory; the CPU engine needs "
                                               "every tensor in host memory"};
  return Status::ok();
}

Status run_checked(blasst_phase phase, const blasst_args& args, blasst_run_info* info) {
  if (Status s = detail::validate_shape_args(args, phase); !s) return s;
  blasst_run_info local;
  blasst_run_info_init(&local);
  if (info && info->struct_size != sizeof(blasst_run_info))
    return {BLASST_ERROR_INVALID_ARGUMENT, "info.struct_size is " + std::to_string(info->struct_size) +
                                               ", expected " + std::to_string(sizeof(blasst_run_info)) +
                                               " (initialize it with blasst_run_info_init)"};

  const bool on_device = args_on_device(args);  // one pointer query per call
  blasst_engine engine = args.engine;
  if (engine == BLASST_ENGINE_AUTO) engine = on_device ? BLASST_ENGINE_CUDA : BLASST_ENGINE_CPU;

  Status status;
  if (engine == BLASST_ENGINE_CUDA) {
    if (!cuda_built())
      return {BLASST_ERROR_UNSUPPORTED, "engine cuda: this build of blasst has no CUDA engine (built without nvcc)"};
    if (!cuda_ready()) return {BLASST_ERROR_UNSUPPORTED, "engine cuda: no usable CUDA device"};
#ifdef BLASST_HAVE_CUDA
    if (Status s = detail::validate_device_extents(args); !s) return s;
    // CUDA engines synchronize to read the totals only when the caller asked for them.
    status = cuda::run(args, phase, info ? &local : nullptr);
#endif
  } else {
    if (Status s = check_host_memory(args, on_device); !s) return s;
    const blasst_geometry geometry = detail::resolve_geometry(args.geometry, phase);
    if (Status s = detail::validate_host_contents(args, phase, geometry); !s) return s;
    status = cpu::run(args, phase, geometry, &local);
  }
  if (status && info) *info = local;
  return status;
}

}  // namespace

blasst_args default_args() {
  blasst_args a;
  blasst_args_init(&a);
  return a;
}

Status attention(blasst_phase phase, const blasst_args& args, blasst_run_info* info) {
  try {
    return run_checked(phase, args, info);
  } catch (const std::bad_alloc&) {
    return {BLASST_ERROR_OUT_OF_MEMORY, "out of host memory"};
  } catch (const std::exception& e) {
    return {BLASST_ERROR_INTERNAL, std::string("internal error: ") + e.what()};
  }
}

Status backward(const blasst_args& args, const blasst_backward_args& grads) {
  try {
    // the backward pass runs on the CPU engine: every pointer, the gradients' too, in host memory
    if (args.engine == BLASST_ENGINE_CUDA || args_on_device(args))
      return {BLASST_ERROR_UNSUPPORTED, "backward: the backward pass runs on the CPU engine (host memory) only"};
    if (Status s = check_host_memory(args, false); !s) return s;
    const NamedPointer grad_pointers[] = {{"grads.dq", grads.dq.data}, {"grads.dk", grads.dk.data},
                                          {"grads.dv", grads.dv.data}, {"grads.dout", grads.dout.data},
                                          {"grads.dlse", grads.dlse.data}, {"grads.decisions", grads.decisions}};
    if (const char* name = first_device_pointer(grad_pointers))
      return {BLASST_ERROR_UNSUPPORTED, std::string("backward: ") + name +
                                            " is device memory; the backward pass runs on the CPU engine only"};
    if (Status s = detail::validate_backward(args, grads); !s) return s;
    return cpu::backward(args, grads);
  } catch (const std::bad_alloc&) {
    return {BLASST_ERROR_OUT_OF_MEMORY, "out of host memory"};
  } catch (const std::exception& e) {
    return {BLASST_ERROR_INTERNAL, std::string("internal error: ") + e.what()};
  }
}

Status prefill(const blasst_args& args, blasst_run_info* info) {
  return attention(BLASST_PHASE_PREFILL, args, info);
}
Status decode(const blasst_args& args, blasst_run_info* info) {
  return attention(BLASST_PHASE_DECODE, args, info);
}

namespace {
blasst_status to_c(const Status& s) {
  g_last_error = s.message();
  return s.code();
}
}  // namespace

}  // namespace blasst

extern "C" {

void blasst_args_init(blasst_args* args) {
  if (!args) return;
  *args = blasst_args{};
  args->struct_size = sizeof(blasst_args);
  args->engine = BLASST_ENGINE_AUTO;
  args->geometry.order = BLASST_ORDER_ASCENDING;
}

void blasst_run_info_init(blasst_run_info* info) {
  if (!info) return;
  *info = blasst_run_info{};
  info->struct_size = sizeof(blasst_run_info);
}

static blasst_status c_entry(blasst_phase phase, const blasst_args* args, blasst_run_info* info) {
  if (!args) return blasst::to_c({BLASST_ERROR_INVALID_ARGUMENT, "args is NULL"});
  return blasst::to_c(blasst::attention(phase, *args, info));
}

void blasst_backward_args_init(blasst_backward_args* grads) {
  if (!grads) return;
  *grads = blasst_backward_args{};
  grads->struct_size = sizeof(blasst_backward_args);
}

blasst_status blasst_backward(const blasst_args* args, const blasst_backward_args* grads) {
  if (!args) return blasst::to_c({BLASST_ERROR_INVALID_ARGUMENT, "args is NULL"});
  if (!grads) return blasst::to_c({BLASST_ERROR_INVALID_ARGUMENT, "grads is NULL"});
  return blasst::to_c(blasst::backward(*args, *grads));
}

blasst_status blasst_prefill(const blasst_args* args, blasst_run_info* info) {
  return c_entry(BLASST_PHASE_PREFILL, args, info);
}
blasst_status blasst_decode(const blasst_args* args, blasst_run_info* info) {
  return c_entry(BLASST_PHASE_DECODE, args, info);
}

blasst_status blasst_workspace_size(const blasst_args* args, blasst_phase phase, size_t* bytes) {
  if (!args) return blasst::to_c({BLASST_ERROR_INVALID_ARGUMENT, "args is NULL"});
  if (!bytes) return blasst::to_c({BLASST_ERROR_INVALID_ARGUMENT, "bytes is NULL"});
  if (blasst::Status s = blasst::detail::validate_shape_args(*args, phase); !s) return blasst::to_c(s);
  *bytes = 0;
#ifdef BLASST_HAVE_CUDA
  const bool cuda = args->engine == BLASST_ENGINE_CUDA || (args->engine == BLASST_ENGINE_AUTO && blasst::args_on_device(*args));
  if (cuda) *bytes = blasst::cuda::workspace_size(*args, phase);
#endif
  return blasst::to_c(blasst::Status::ok());
}

const char* blasst_last_error(void) { return blasst::g_last_error.c_str(); }

const char* blasst_status_name(blasst_status status) {
  switch (status) {
    case BLASST_OK: return "ok";
    case BLASST_ERROR_INVALID_ARGUMENT: return "invalid argument";
    case BLASST_ERROR_UNSUPPORTED: return "unsupported";
    case BLASST_ERROR_OUT_OF_MEMORY: return "out of memory";
    case BLASST_ERROR_CUDA: return "cuda error";
    case BLASST_ERROR_INTERNAL: return "internal error";
  }
  return "unknown status";
}

const char* blasst_version(void) { return "0.1.0"; }

int blasst_cuda_available(void) { return blasst::cuda_ready() ? 1 : 0; }

}  // extern "C"
