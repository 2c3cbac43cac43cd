// What bandpo says when the NVIDIA driver is too old for the CUDA runtime its kernels were built with.
// Host-only and CUDA-free, so the message is built and tested on machines without CUDA.
#pragma once

#include <string>

namespace bandpo {

// The oldest Linux driver branch that runs kernels built with a CUDA runtime of this version (CUDART_VERSION,
// e.g. 13000): NVIDIA's minor-version compatibility lets a CUDA X.y runtime run on the first driver of X.0
// (12.x: R525, 13.x: R580). 0 for a version this table does not know.
int minimum_driver_branch(int cuda_runtime_version);

// "bandpo's CUDA kernels were built with CUDA 13.0 and need an NVIDIA driver of branch R580 or newer; this
// machine's driver supports CUDA 12.4 (...)". driver_cuda_version is cudaDriverGetVersion's (0: no driver).
std::string driver_too_old_message(int driver_cuda_version, int cuda_runtime_version);

}  // namespace bandpo
