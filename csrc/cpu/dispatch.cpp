// Picks the kernel table for this CPU at run time: the extension is built once, for the
// baseline instruction set, and carries AVX2 and AVX-512 builds of the kernels beside it.
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace sassha {
namespace cpu {
namespace {

// Best first; each entry runs where the CPU (and the OS, which libgcc checks) supports it.
struct Candidate {
  const KernelTable* table;
  bool supported;
};

std::vector<Candidate> candidates() {
  std::vector<Candidate> list;
#ifdef SASSHA_CPU_X86_KERNELS
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq");
  list.push_back({&kAvx512Kernels, avx512});
  list.push_back({&kAvx2Kernels, avx2});
#endif
  list.push_back({&kGenericKernels, true});
  return list;
}

// SASSHA_FAST_CPU_ISA=generic|avx2|avx512 caps the choice (to test the fallbacks); the best
// supported table at or below the requested one is used.
const KernelTable& choose() {
  const char* requested = std::getenv("SASSHA_FAST_CPU_ISA");
  const std::vector<Candidate> list = candidates();
  bool reached = requested == nullptr || *requested == '\0';
  for (const Candidate& c : list) {
    reached = reached || std::strcmp(requested, c.table->isa) == 0;
    if (reached && c.supported) return *c.table;
  }
  TORCH_CHECK(reached, "SASSHA_FAST_CPU_ISA=", requested, " is not one of avx512, avx2, generic");
  return kGenericKernels;
}

}  // namespace

const KernelTable& active_kernels() {
  static const KernelTable& table = choose();
  return table;
}

}  // namespace cpu
}  // namespace sassha
