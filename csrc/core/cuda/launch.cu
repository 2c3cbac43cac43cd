// Launch helpers shared by the CUDA entry points.
#include <atomic>
#include <stdexcept>
#include <string>

#include "../cuda_driver.h"
#include "common.cuh"

namespace bandpo {
namespace cuda {
namespace detail {

[[noreturn]] void throw_cuda_error(const char* what, cudaError_t err) {
  if (err == cudaErrorInsufficientDriver) {
    // The static runtime inside libbandpo is newer than the driver (or there is none): name the driver needed.
    int driver = 0;
    if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = 0;
    throw std::runtime_error(std::string("bandpo: ") + what +
                             " failed: " + driver_too_old_message(driver, CUDART_VERSION));
  }
  throw std::runtime_error(std::string("bandpo: ") + what + " failed: " + cudaGetErrorString(err));
}

void throw_if_launch_failed(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw_cuda_error((std::string("CUDA launch of ") + what).c_str(), err);
}

namespace {

// Multiprocessor count of the current device, read once per device (the attribute query is cheap but not
// free, and these ops run every training step).
int multiprocessor_count() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) throw_if_launch_failed("cudaGetDevice");
  if (device >= 0 && device < kMaxDevices) {
    const int cached = cache[device].load(std::memory_order_relaxed);
    if (cached > 0) return cached;
  }
  int count = 0;
  if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || count <= 0) {
    throw std::runtime_error("bandpo: cannot read the multiprocessor count of CUDA device " + std::to_string(device));
  }
  if (device >= 0 && device < kMaxDevices) cache[device].store(count, std::memory_order_relaxed);
  return count;
}

}  // namespace

int fallback_blocks() { return multiprocessor_count(); }

int grid_blocks(int64_t work_blocks) {
  // 8 resident blocks of 256 threads per multiprocessor fill it (2048 threads); a few waves of that keep
  // the tail short without launching idle blocks.
  const int64_t cap = static_cast<int64_t>(multiprocessor_count()) * 8 * 4;
  const int64_t blocks = work_blocks < cap ? work_blocks : cap;
  return static_cast<int>(blocks > 0 ? blocks : 1);
}

}  // namespace detail
}  // namespace cuda
}  // namespace bandpo
