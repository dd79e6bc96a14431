// What the GPU tests share: a device buffer that frees itself, and bf16 tensor views.
#pragma once

#include <blasst/blasst.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace blasst::test {

template <class T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t count = 0;
  DeviceBuffer() = default;
  // n elements (one at least, so that ptr is never null); check ptr: null when cudaMalloc failed
  explicit DeviceBuffer(size_t n) : count(n) {
    if (cudaMalloc(&ptr, std::max<size_t>(n, 1) * sizeof(T)) != cudaSuccess) ptr = nullptr;
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
    if (ptr) cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { cudaFree(ptr); }
  // A copy of `host` in place of what was here; an empty one leaves ptr null (an absent side
  // tensor). Fails the test on a CUDA error.
  void upload(const std::vector<T>& host) {
    cudaFree(ptr);
    ptr = nullptr;
    count = host.size();
    if (count == 0) return;
    ASSERT_EQ(cudaMalloc(&ptr, count * sizeof(T)), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(ptr, host.data(), count * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  void download(std::vector<T>& host) const {
    host.resize(count);
    if (count) {
      ASSERT_EQ(cudaMemcpy(host.data(), ptr, count * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    }
  }
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
