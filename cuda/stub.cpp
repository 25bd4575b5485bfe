// Built instead of the .cu files when the addon is compiled without nvcc (binding.gyp always, CMake
// when no CUDA compiler is found): the backend exists but has no devices.
#include "cuda_api.hpp"

namespace lowbit {
namespace cuda {

bool compiled() { return false; }

std::vector<DeviceInfo> devices(std::string* why_none) {
  if (why_none) *why_none = "this build of the lowbit addon has no CUDA backend (built without nvcc)";
  return {};
}

namespace {
[[noreturn]] void unavailable() {
  fail("E_CUDA_UNAVAILABLE", "this build of the lowbit addon has no CUDA backend (built without nvcc)");
}
}  // namespace

void packed_gemm(int, const float*, int64_t, const PackedMatrix&, float*) { unavailable(); }

PackedMatrixDevice::PackedMatrixDevice(int, const PackedMatrix&) { unavailable(); }
PackedMatrixDevice::~PackedMatrixDevice() = default;
void packed_gemm_device(const PackedMatrixDevice&, const float*, int64_t, float*, void*) { unavailable(); }

}  // namespace cuda
}  // namespace lowbit
