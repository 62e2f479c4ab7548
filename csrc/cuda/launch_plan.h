// How the multi-tensor launcher cuts lists of tensors into kernel launches. Plain C++ (no
// CUDA), so that the plan can be checked on a machine without a GPU (_C.cuda_launch_plan)
// and this header compiles on its own (tests/backends/test_backend_cuda.py compiles it alone).
//
// Tensor t of every list holds the same elements (a parameter, its gradient, its state...).
// Every tensor is cut into chunks of kChunk elements and each block of a launch processes one
// chunk. A launch receives, by value as its kernel argument, a table of the addresses and
// sizes of the tensors it touches and a map from each of its blocks to (tensor slot, chunk).
// A launch is issued when its block map or its tensor table is full; a tensor whose chunks
// do not all fit goes on, from the next chunk, in the next launch.
#pragma once

#include "build_namespace.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

namespace sassha {
inline namespace SASSHA_CUDA_BUILD {
namespace cuda {

constexpr int64_t kChunk = 65536;  // elements per block
// Kernel arguments may take 4 KiB with every CUDA version and GPU, 32,764 bytes with a CUDA
// 12.1+ toolkit and driver (Volta or newer): eight times the tensors and blocks per launch,
// so a step over thousands of tensors, or billions of elements, needs far fewer launches.
// The op's functor and the kernel's other arguments get kOpBytes of either.
constexpr int kSmallArgBytes = 4096;
constexpr int kLargeArgBytes = 32764;
constexpr int kOpBytes = 160;

// The argument block size the launches of this process use: kLargeArgBytes where the toolkit
// and the driver allow it (multi_tensor.cu).
int kernel_arg_bytes();

// What one launch's argument block holds, for an argument block of ArgBytes.
template <int ArgBytes>
struct ArgLimits {
  static constexpr bool kLarge = ArgBytes > kSmallArgBytes;
  static constexpr int kMaxBlocks = kLarge ? 2048 : 320;
  using Slot = std::conditional_t<kLarge, uint16_t, uint8_t>;  // a tensor's place in the table
};

template <int Depth, int ArgBytes>
constexpr int max_tensors_per_launch() {
  using Limits = ArgLimits<ArgBytes>;
  constexpr int block_map_bytes = static_cast<int>(
      sizeof(int64_t) + Limits::kMaxBlocks * (sizeof(int32_t) + sizeof(typename Limits::Slot)));
  constexpr int per_tensor_bytes = static_cast<int>(Depth * sizeof(void*) + sizeof(int64_t));
  constexpr int fit = (ArgBytes - kOpBytes - block_map_bytes) / per_tensor_bytes;
  constexpr int slots = std::numeric_limits<typename Limits::Slot>::max();
  return fit < slots ? fit : slots;
}

// The kernel argument of one launch over Depth lists.
template <int Depth, int ArgBytes>
struct LaunchArgs {
  using Limits = ArgLimits<ArgBytes>;
  static constexpr int kMaxTensors = max_tensors_per_launch<Depth, ArgBytes>();
  static constexpr int kMaxBlocks = Limits::kMaxBlocks;
  void* address[Depth][kMaxTensors];  // [list][slot]
  int64_t numel[kMaxTensors];         // [slot]
  int64_t first_block;                // this launch's first block among all of the op's blocks
  int32_t block_chunk[kMaxBlocks];
  typename Limits::Slot block_tensor[kMaxBlocks];  // the slot of the block's tensor
};

inline int64_t chunks_of(int64_t numel) { return (numel + kChunk - 1) / kChunk; }

// Blocks launched in all over tensors of these sizes (one per chunk).
inline int64_t total_blocks(const std::vector<int64_t>& numels) {
  int64_t blocks = 0;
  for (const int64_t numel : numels) blocks += chunks_of(numel);
  return blocks;
}

// Fills LaunchArgs for tensors t = 0, 1, ... (addresses[t][d]: tensor t of list d; empty
// tensors are skipped) and calls launch(args, blocks) for every kernel's worth of blocks.
template <int Depth, int ArgBytes, typename Launch>
void plan_launches(const std::vector<std::array<void*, Depth>>& addresses,
                   const std::vector<int64_t>& numels, Launch&& launch) {
  using Args = LaunchArgs<Depth, ArgBytes>;
  using Slot = typename Args::Limits::Slot;
  Args args{};
  int tensors = 0;  // slots in use
  int blocks = 0;
  for (std::size_t t = 0; t < numels.size(); ++t) {
    if (numels[t] == 0) continue;
    for (int d = 0; d < Depth; ++d) args.address[d][tensors] = addresses[t][d];
    args.numel[tensors] = numels[t];
    ++tensors;
    const int64_t chunks = chunks_of(numels[t]);
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      args.block_tensor[blocks] = static_cast<Slot>(tensors - 1);
      args.block_chunk[blocks] = static_cast<int32_t>(chunk);
      ++blocks;
      const bool last_chunk = chunk == chunks - 1;
      if (blocks < Args::kMaxBlocks && !(last_chunk && tensors == Args::kMaxTensors)) continue;
      launch(static_cast<const Args&>(args), blocks);
      args.first_block += blocks;
      blocks = 0;
      tensors = 0;
      if (!last_chunk) {  // the rest of this tensor goes to the next launch, in slot 0
        for (int d = 0; d < Depth; ++d) args.address[d][0] = addresses[t][d];
        args.numel[0] = numels[t];
        tensors = 1;
      }
    }
  }
  if (blocks > 0) launch(static_cast<const Args&>(args), blocks);
}

}  // namespace cuda
}  // namespace SASSHA_CUDA_BUILD
}  // namespace sassha
