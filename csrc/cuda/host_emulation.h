// The CUDA kernels' sources compiled by the host compiler (SASSHA_CUDA_HOST_EMULATION): the
// CUDA qualifiers become nothing and a launch runs every block, and every thread of a block,
// one after the other on the calling CPU thread. Tests run the real kernel code this way on
// a machine without a GPU (backend cuda_emulated, docs/backends.md).
//
// The kernels are data-parallel except block_sum, where values flow only from higher threads
// to lower ones: a shuffle down reads lane + offset, and warp w's total, written by thread
// 32 w, is read by thread w. Threads therefore run from the last to thread 0: whatever a
// thread reads after a shuffle or a __syncthreads was written by a thread that has finished.
// Shuffles check that instead of assuming it; __syncthreads needs to do nothing.
#pragma once

#ifndef SASSHA_CUDA_HOST_EMULATION
#error "host_emulation.h is the host build of the CUDA sources only"
#endif

#include <ATen/ATen.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "build_namespace.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// One copy for all threads of a block, as on the device; blocks run one after the other.
#define __shared__ static

struct EmulatedDim3 {
  unsigned int x, y, z;
};
inline thread_local EmulatedDim3 threadIdx{0, 0, 0};
inline thread_local EmulatedDim3 blockIdx{0, 0, 0};
inline thread_local EmulatedDim3 blockDim{1, 1, 1};
inline thread_local EmulatedDim3 gridDim{1, 1, 1};

namespace sassha {
inline namespace SASSHA_CUDA_BUILD {
namespace cuda {
namespace emulation {

constexpr unsigned int kWarpSize = 32;

// The values each thread of the running block passed to its n-th shuffle, and whether it did.
struct Shuffles {
  std::vector<std::vector<float>> value;  // [n][thread]
  std::vector<std::vector<bool>> given;   // [n][thread]
  int next = 0;                           // the running thread's next n
};
inline thread_local Shuffles shuffles;

inline float shuffle_down(float v, unsigned int offset) {
  Shuffles& s = shuffles;
  const unsigned int thread = threadIdx.x;
  if (static_cast<size_t>(s.next) == s.value.size()) {
    s.value.emplace_back(blockDim.x, 0.f);
    s.given.emplace_back(blockDim.x, false);
  }
  std::vector<float>& value = s.value[s.next];
  std::vector<bool>& given = s.given[s.next];
  ++s.next;
  value[thread] = v;
  given[thread] = true;
  if (thread % kWarpSize + offset >= kWarpSize) return v;  // no source lane: own value
  TORCH_CHECK(given[thread + offset], "cuda_emulated: thread ", thread, " of block ",
              blockIdx.x, " shuffles from thread ", thread + offset, ", which has not reached "
              "that shuffle: the kernel's data flow is not from higher threads to lower ones, "
              "which is what the host emulation can run");
  return value[thread + offset];
}

// Where a GPU would fault: a vector access at an address that is not a multiple of its size.
inline void check_aligned(const void* address, size_t bytes) {
  TORCH_CHECK(reinterpret_cast<uintptr_t>(address) % bytes == 0, "cuda_emulated: thread ",
              threadIdx.x, " of block ", blockIdx.x, " makes a ", bytes, "-byte access at ",
              address, ", which is not ", bytes, "-byte aligned (a GPU faults: misaligned "
              "address)");
}

// Kernel launches so far (tests check that a list was cut into several).
inline int64_t launches = 0;

// Runs body as `blocks` blocks of `threads` threads: blocks in order, threads from the last.
template <typename Body>
void run_grid(int blocks, int threads, Body&& body) {
  ++launches;
  gridDim = {static_cast<unsigned int>(blocks), 1, 1};
  blockDim = {static_cast<unsigned int>(threads), 1, 1};
  for (int block = 0; block < blocks; ++block) {
    blockIdx = {static_cast<unsigned int>(block), 0, 0};
    shuffles = Shuffles{};
    for (int thread = threads - 1; thread >= 0; --thread) {
      threadIdx = {static_cast<unsigned int>(thread), 0, 0};
      shuffles.next = 0;
      body();
    }
  }
}

// The argument layout the emulated launches use (set by the op
// sassha_fast_cuda_emulated::set_kernel_arg_bytes): both run on any host.
inline int arg_bytes = 32764;

}  // namespace emulation

// What the launcher asks of the CUDA runtime, for a host without one.
using Stream = std::nullptr_t;
inline Stream current_stream() { return nullptr; }
struct DeviceGuard {
  explicit DeviceGuard(const at::Device&) {}
};

}  // namespace cuda
}  // namespace SASSHA_CUDA_BUILD
}  // namespace sassha

inline float __shfl_down_sync(unsigned int, float v, unsigned int offset) {
  return sassha::cuda::emulation::shuffle_down(v, offset);
}
inline void __syncthreads() {}

// The launch's argument block (up to 32 KiB) by reference: by value, every thread would copy it.
#define SASSHA_GRID_CONSTANT(...) const __VA_ARGS__&

#define SASSHA_CHECK_ALIGNED(address, bytes) \
  ::sassha::cuda::emulation::check_aligned(address, bytes)
