// Device discovery. The CUDA runtime is linked statically, so on a machine without a GPU or driver
// these calls fail with an error code (reported as "no devices"), never at load time.
#include "cuda_api.hpp"
#include "cuda_check.cuh"

namespace lowbit {
namespace cuda {

bool compiled() { return true; }

std::vector<DeviceInfo> devices(std::string* why_none) {
  std::vector<DeviceInfo> out;
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    if (why_none) *why_none = std::string("no CUDA device: ") + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return out;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    DeviceInfo d;
    d.index = i;
    d.name = p.name;
    d.major = p.major;
    d.minor = p.minor;
    d.multiprocessors = p.multiProcessorCount;
    d.total_memory = p.totalGlobalMem;
    out.push_back(d);
  }
  if (out.empty() && why_none) *why_none = "no CUDA device found";
  return out;
}

void use_device(int device) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    fail("E_CUDA_UNAVAILABLE", std::string("no CUDA device: ") + cudaGetErrorString(err));
  }
  require(device >= 0 && device < count, "E_CUDA_UNAVAILABLE",
          "CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(count) + " found)");
  check(cudaSetDevice(device), "cudaSetDevice");
}

}  // namespace cuda
}  // namespace lowbit
