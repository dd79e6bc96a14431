// What the GPU decode tests share: a device buffer that frees itself, and bf16 tensor views.
#pragma once

#include <blasst/blasst.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace blasst::test {

template <class T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t count = 0;
  explicit DeviceBuffer(size_t n) : count(n) {
    if (cudaMalloc(&ptr, std::max<size_t>(n, 1) * sizeof(T)) != cudaSuccess) ptr = nullptr;
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
    if (ptr) cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { cudaFree(ptr); }
  std::vector<T> to_host() const {
    std::vector<T> h(count);
    cudaMemcpy(h.data(), ptr, count * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
  }
};

// A bf16 view [batch, tokens, heads, D] with the given element strides over `numel` elements.
inline blasst_tensor bf16_tensor(void* data, int64_t bs, int64_t ts, int64_t hs, int64_t numel) {
  blasst_tensor t{};
  t.data = data;
  t.dtype = BLASST_DTYPE_BFLOAT16;
  t.batch_stride = bs;
  t.token_stride = ts;
  t.head_stride = hs;
  t.numel = numel;
  return t;
}

}  // namespace blasst::test
