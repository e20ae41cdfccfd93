// Functions shared by the CPU (g++) and CUDA (nvcc) kernels.
#pragma once

#if defined(__CUDACC__)
#define KAD_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define KAD_HOST_DEVICE inline
#endif
