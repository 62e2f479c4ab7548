// The CUDA kernels' own source, compiled for the host: csrc/cuda/host_emulation.h.
#define SASSHA_CUDA_HOST_EMULATION
#include "../cuda/fused_ops.cu"
