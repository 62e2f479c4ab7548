// The multi-tensor launcher that every fused op runs on (launch_plan.h says how lists are cut
// into launches). An op is a functor:
//   using Lists = cuda::Lists<T0, T1, ...>;  the element type of each tensor list
//   static constexpr bool kReduces;          whether it sums a value over all elements
//   auto coeffs() const;                     its scalars, read once per thread (some may
//                                            live in device memory)
//   template <int W> void apply(coeffs, void* const* ptrs, int64_t i, float& sum) const;
//                                            elements [i, i + W) of the lists at ptrs
// The kernel gives apply() vec_width<Lists>() elements at a time when every list of the tensor
// starts at a 16-byte boundary: 16-byte accesses to the narrowest list (4 fp32 or 8 bf16/fp16
// elements), two to an fp32 list beside a bf16 one. The rest of a chunk and misaligned
// tensors (e.g. a slice starting at an odd element) go element by element.
#pragma once

#include <ATen/ATen.h>
#ifdef SASSHA_CUDA_HOST_EMULATION
#include "host_emulation.h"
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "build_namespace.h"
#include "device_scalar.h"
#include "launch_plan.h"

namespace sassha {
inline namespace SASSHA_CUDA_BUILD {
namespace cuda {

constexpr int kThreads = 512;
constexpr int kAccessBytes = 16;
static_assert(kThreads % 32 == 0 && kThreads / 32 <= 32, "block_sum reduces whole warps");

#ifndef SASSHA_CUDA_HOST_EMULATION  // host_emulation.h has its own
using Stream = cudaStream_t;
inline Stream current_stream() { return at::cuda::getCurrentCUDAStream(); }
using DeviceGuard = c10::cuda::CUDAGuard;
// A misaligned vector access faults on the GPU (misaligned address); the emulation checks.
#define SASSHA_CHECK_ALIGNED(address, bytes)
// A kernel parameter read in place from the launch's constant bank.
#define SASSHA_GRID_CONSTANT(...) const __grid_constant__ __VA_ARGS__
#endif

// Launches kernel(args...) over `blocks` blocks of kThreads threads on stream; the host
// emulation runs them in turn instead. One launch site for both compilers.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), int blocks, Stream stream, const Args&... args) {
#ifdef SASSHA_CUDA_HOST_EMULATION
  (void)stream;
  emulation::run_grid(blocks, kThreads, [&] { kernel(args...); });
#else
  kernel<<<blocks, kThreads, 0, stream>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

template <typename... Ts>
struct Lists {
  static constexpr int kDepth = sizeof...(Ts);
  static constexpr int kNarrowest = static_cast<int>(std::min({sizeof(Ts)...}));
};

// Elements per vector step: one 16-byte access to the op's narrowest list.
template <typename L>
constexpr int vec_width() {
  return kAccessBytes / L::kNarrowest;
}

// Whether this iteration is skipped: found_inf (a one-element fp32 device tensor, or nullptr
// for "never") holds a nonzero value, NaN included.
__device__ __forceinline__ bool skipped(const float* found_inf) {
  return found_inf != nullptr && *found_inf != 0.f;
}

// The coeffs() of an op without scalars.
struct NoCoeffs {};

template <int Depth>
using ListRefs = std::array<const std::vector<at::Tensor>*, Depth>;

__device__ __forceinline__ float value_of(const DeviceScalar& s) {
  return s.ptr != nullptr ? *s.ptr : s.value;
}

template <typename T, int W>
struct alignas(sizeof(T) * W) Pack {
  T v[W];
};

// Elements of T per access when moving W elements: W itself up to 16 bytes, else 16 bytes'
// worth (an fp32 list moves 8 elements as two 16-byte accesses).
template <typename T, int W>
constexpr int pack_width() {
  return W * sizeof(T) <= kAccessBytes ? W : kAccessBytes / static_cast<int>(sizeof(T));
}

template <typename T, int W>
__device__ __forceinline__ void load(const void* base, int64_t i, float (&out)[W]) {
  constexpr int P = pack_width<T, W>();
  static_assert(W % P == 0, "whole accesses only");
#pragma unroll
  for (int j = 0; j < W; j += P) {
    const T* address = static_cast<const T*>(base) + i + j;
    SASSHA_CHECK_ALIGNED(address, alignof(Pack<T, P>));
    const Pack<T, P> pack = *reinterpret_cast<const Pack<T, P>*>(address);
#pragma unroll
    for (int k = 0; k < P; ++k) out[j + k] = static_cast<float>(pack.v[k]);
  }
}

template <typename T, int W>
__device__ __forceinline__ void store(void* base, int64_t i, const float (&in)[W]) {
  constexpr int P = pack_width<T, W>();
#pragma unroll
  for (int j = 0; j < W; j += P) {
    Pack<T, P> pack;
#pragma unroll
    for (int k = 0; k < P; ++k) pack.v[k] = static_cast<T>(in[j + k]);
    T* address = static_cast<T*>(base) + i + j;
    SASSHA_CHECK_ALIGNED(address, alignof(Pack<T, P>));
    *reinterpret_cast<Pack<T, P>*>(address) = pack;
  }
}

// The value that storing x into a T tensor keeps.
template <typename T>
__device__ __forceinline__ float rounded(float x) {
  return static_cast<float>(static_cast<T>(x));
}

// Every list's tensor starts at a 16-byte boundary (chunks start at multiples of the vector
// width, so every vector access is then aligned).
template <int Depth>
__device__ __forceinline__ bool all_vector_aligned(void* const* ptrs) {
  bool aligned = true;
#pragma unroll
  for (int d = 0; d < Depth; ++d) aligned &= reinterpret_cast<uintptr_t>(ptrs[d]) % kAccessBytes == 0;
  return aligned;
}

// The sum of v over the block (blockDim.x == kThreads), valid in thread 0.
__device__ __forceinline__ float block_sum(float v) {
  constexpr int kWarps = kThreads / 32;
  __shared__ float warp_sums[kWarps];
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < kWarps ? warp_sums[threadIdx.x] : 0.f;
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

template <int Depth, int ArgBytes, typename Op>
__global__ void __launch_bounds__(kThreads)
    multi_tensor_kernel(SASSHA_GRID_CONSTANT(LaunchArgs<Depth, ArgBytes>) args, const Op op,
                        float* partial_sums) {
  static_assert(Op::Lists::kDepth == Depth, "the op's lists and the launch disagree");
  constexpr int kVec = vec_width<typename Op::Lists>();
  static_assert(kChunk % kVec == 0, "a chunk must start where its tensor's alignment holds");
  const int slot = args.block_tensor[blockIdx.x];
  const int64_t begin = static_cast<int64_t>(args.block_chunk[blockIdx.x]) * kChunk;
  const int64_t end = args.numel[slot] < begin + kChunk ? args.numel[slot] : begin + kChunk;
  void* ptrs[Depth];
#pragma unroll
  for (int d = 0; d < Depth; ++d) ptrs[d] = args.address[d][slot];
  const auto coeffs = op.coeffs();
  float sum = 0.f;
  int64_t singles_begin = begin;
  if (all_vector_aligned<Depth>(ptrs)) {
    singles_begin = end - (end - begin) % kVec;
    for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * kVec; i < singles_begin;
         i += static_cast<int64_t>(kThreads) * kVec) {
      op.template apply<kVec>(coeffs, ptrs, i, sum);
    }
  }
  for (int64_t i = singles_begin + threadIdx.x; i < end; i += kThreads) {
    op.template apply<1>(coeffs, ptrs, i, sum);
  }
  if constexpr (Op::kReduces) {
    sum = block_sum(sum);
    if (threadIdx.x == 0) partial_sums[args.first_block + blockIdx.x] = sum;
  }
}

// Writes the sum of partial_sums[0, count) (its square root when take_sqrt) to *result, on
// the current stream (multi_tensor.cu).
void finish_sum(const float* partial_sums, int64_t count, bool take_sqrt, float* result);

// 32 KiB kernel arguments need a CUDA 12.1+ toolkit (checked when compiling) and driver
// (checked once at run time); otherwise every launch takes 4 KiB. The host emulation runs
// either layout, as tests ask.
#if defined(SASSHA_CUDA_HOST_EMULATION) || (defined(CUDART_VERSION) && CUDART_VERSION >= 12010)
#define SASSHA_LARGE_KERNEL_ARGS 1
#else
#define SASSHA_LARGE_KERNEL_ARGS 0
#endif

template <int Depth, int ArgBytes, typename Op>
void launch_planned(const std::vector<std::array<void*, Depth>>& addresses,
                    const std::vector<int64_t>& numels, const Op& op, float* partial_sums,
                    Stream stream) {
  using Args = LaunchArgs<Depth, ArgBytes>;
  static_assert(sizeof(Args) + sizeof(Op) + sizeof(float*) <= ArgBytes,
                "kernel arguments too large: lower max_tensors_per_launch or the op's size");
  static_assert(sizeof(Op) + sizeof(float*) <= kOpBytes, "the op outgrew its share of arguments");
  plan_launches<Depth, ArgBytes>(addresses, numels, [&](const Args& args, int blocks) {
    launch_kernel(multi_tensor_kernel<Depth, ArgBytes, Op>, blocks, stream, args, op,
                  partial_sums);
  });
}

// Runs op over the lists on the current stream of their device. A reducing op writes one
// partial sum per block to partial_sums.
template <int Depth, typename Op>
void launch_multi_tensor(const ListRefs<Depth>& lists, const Op& op,
                         float* partial_sums = nullptr) {
  const std::vector<at::Tensor>& first = *lists[0];
  if (first.empty()) return;
  std::vector<std::array<void*, Depth>> addresses(first.size());
  std::vector<int64_t> numels(first.size());
  for (size_t t = 0; t < first.size(); ++t) {
    numels[t] = first[t].numel();
    for (int d = 0; d < Depth; ++d) addresses[t][d] = (*lists[d])[t].data_ptr();
  }
  const DeviceGuard guard(first[0].device());
  const Stream stream = current_stream();
#if SASSHA_LARGE_KERNEL_ARGS
  if (kernel_arg_bytes() == kLargeArgBytes) {
    launch_planned<Depth, kLargeArgBytes>(addresses, numels, op, partial_sums, stream);
    return;
  }
#endif
  launch_planned<Depth, kSmallArgBytes>(addresses, numels, op, partial_sums, stream);
}

// Runs a reducing op and returns the sum over all elements (its square root when take_sqrt)
// as a 0-d fp32 tensor on the lists' device, without synchronising: the blocks' partial sums
// are added up by a second kernel. The lists must not be empty.
template <int Depth, typename Op>
at::Tensor launch_multi_tensor_sum(const ListRefs<Depth>& lists, const Op& op, bool take_sqrt) {
  static_assert(Op::kReduces, "the op computes no sum");
  const std::vector<at::Tensor>& first = *lists[0];
  const DeviceGuard guard(first.at(0).device());
  std::vector<int64_t> numels;
  for (const at::Tensor& t : first) numels.push_back(t.numel());
  const int64_t blocks = total_blocks(numels);
  const auto options = at::TensorOptions().dtype(at::kFloat).device(first[0].device());
  at::Tensor partial_sums = at::empty({blocks > 0 ? blocks : 1}, options);
  at::Tensor result = at::empty({}, options);
  launch_multi_tensor<Depth>(lists, op, partial_sums.data_ptr<float>());
  finish_sum(partial_sums.data_ptr<float>(), blocks, take_sqrt, result.data_ptr<float>());
  return result;
}

}  // namespace cuda
}  // namespace SASSHA_CUDA_BUILD
}  // namespace sassha
