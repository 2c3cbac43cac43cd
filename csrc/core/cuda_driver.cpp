#include "cuda_driver.h"

namespace bandpo {
namespace {

std::string cuda_version_string(int version) {  // 12040 -> "12.4"
  return std::to_string(version / 1000) + "." + std::to_string((version % 1000) / 10);
}

}  // namespace

int minimum_driver_branch(int cuda_runtime_version) {
  switch (cuda_runtime_version / 1000) {
    case 11:
      return 450;
    case 12:
      return 525;
    case 13:
      return 580;
    default:
      return 0;
  }
}

std::string driver_too_old_message(int driver_cuda_version, int cuda_runtime_version) {
  const int branch = minimum_driver_branch(cuda_runtime_version);
  std::string message = "bandpo's CUDA kernels were built with CUDA " + cuda_version_string(cuda_runtime_version) +
                        " and need an NVIDIA driver for CUDA " + std::to_string(cuda_runtime_version / 1000) +
                        ".0 or newer";
  if (branch > 0) message += " (Linux driver branch R" + std::to_string(branch) + " or newer)";
  message += driver_cuda_version > 0
                 ? "; this machine's driver supports CUDA " + cuda_version_string(driver_cuda_version)
                 : "; no NVIDIA driver was found";
  message += ". Update the driver, or run bandpo on the CPU.";
  return message;
}

}  // namespace bandpo
