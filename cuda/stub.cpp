// Built instead of the .cu files when the addon is compiled without nvcc (binding.gyp always, CMake
// when no CUDA compiler is found): the backend exists but has no devices.
#include "cuda_api.hpp"
#include "linear_half.hpp"

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

DeviceScratch::~DeviceScratch() = default;
void* DeviceScratch::get(int64_t) { unavailable(); }
std::unique_ptr<DeviceLinearOp> make_device_linear(int, const LinearWeights&, const LinearOptions&) { unavailable(); }
std::unique_ptr<LinearOp> make_cuda_linear(int, const LinearWeights&, const LinearOptions&) { unavailable(); }
std::vector<std::string> cuda_linear_kernels() { return {}; }
std::unique_ptr<HalfLinearOp> make_cuda_linear_half(int, const LinearWeights&, DType, const LinearOptions&) {
  unavailable();
}

HessianAccumulatorDevice::HessianAccumulatorDevice(int, int64_t) { unavailable(); }
HessianAccumulatorDevice::~HessianAccumulatorDevice() = default;
void HessianAccumulatorDevice::add_batch(const float*, int64_t) { unavailable(); }
void HessianAccumulatorDevice::add_batch_device(const float*, int64_t) { unavailable(); }
void HessianAccumulatorDevice::add_batch_device(const void*, DType, int64_t) { unavailable(); }
void HessianAccumulatorDevice::download(float*) const { unavailable(); }
void HessianAccumulatorDevice::reset() { unavailable(); }

GptqReport gptq_quantize(int, const float*, int64_t, int64_t, const float*, const GptqOptions&, const GptqOutput&) {
  unavailable();
}
GptqReport gptq_quantize(const HessianAccumulatorDevice&, const float*, int64_t, const GptqOptions&,
                         const GptqOutput&) {
  unavailable();
}
std::string gptq_linalg_backend() { return "none (built without CUDA)"; }

}  // namespace cuda
}  // namespace lowbit
