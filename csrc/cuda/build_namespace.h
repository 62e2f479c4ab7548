// Where nvcc is found, the CUDA sources are compiled twice into one extension: for the GPU,
// and for the host as the test-only emulation (SASSHA_CUDA_HOST_EMULATION, host_emulation.h).
// An inline namespace keeps the two builds' symbols apart while the sources name everything
// sassha::cuda::... in both.
#pragma once

#ifdef SASSHA_CUDA_HOST_EMULATION
#define SASSHA_CUDA_BUILD host_emulation
#else
#define SASSHA_CUDA_BUILD device
#endif
