// Fast GPTQ products on the GPU: the checkpoint layout repacked once at load time into one made
// for the kernels (see layout.hpp), then Y = X · Wᵀ with fp16 or bf16 activations and outputs and
// fp32 accumulation on the tensor cores, one kernel for every batch size.
//
// Plain C++ (no CUDA headers), like cuda_api.hpp, so any translation unit can hold the weights.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "../../native/core/packed_matrix.hpp"

namespace lowbit {
namespace cuda {

enum class GptqDtype { f16 = 0, bf16 = 1 };

// The repacked layout on the host (what gptq_repack uploads). Built by repack_gptq_host; the
// inverse unrepack_gptq_host gives back q, zeros and scales exactly (tests check the round trip).
struct GptqRepacked {
  int bits = 4;
  int64_t K = 0, N = 0;         // logical shape (K in, N out)
  int64_t Kp = 0, Np = 0;       // padded: Kp a multiple of 128 (one chunk), Np a multiple of 128
  int64_t groups = 0;
  bool identity_k = true;       // X can be read as is (no act-order permutation, no inner padding)
  bool uniform_chunks = true;   // every 128-wide chunk of K lies in one group (scales applied per chunk)
  std::vector<uint8_t> weights; // [Np/16][Kp/128] records of 256·bits bytes
  std::vector<uint16_t> scale_zero;  // [groups][Np/16][8][4] fp16: s(n), s(n+8), z(n), z(n+8)
  std::vector<int32_t> slot_group;   // [Kp/32] group of each 32-wide slot of K
  std::vector<int32_t> perm;         // [Kp] original column of each repacked column, -1 for padding
};

GptqRepacked repack_gptq_host(const PackedMatrix& W);
// q [N*K] (row n: output n), zeros [groups*N] (true zero points), scales [groups*N] fp16 bits.
void unrepack_gptq_host(const GptqRepacked& R, std::vector<uint8_t>& q, std::vector<int32_t>& zeros,
                        std::vector<uint16_t>& scales);

// The repacked weights on one GPU, with the scratch their products use: the permuted activations
// (act-order) and the split-K partial sums and tile counters. The scratch belongs to these weights,
// not to the device, so products of different weights may run concurrently on any streams; products
// of one weights object must run one at a time (the CUDA operators serialize them per operator).
class GptqDeviceWeights {
 public:
  GptqDeviceWeights(const GptqRepacked& host, int device);
  ~GptqDeviceWeights();
  GptqDeviceWeights(const GptqDeviceWeights&) = delete;
  GptqDeviceWeights& operator=(const GptqDeviceWeights&) = delete;

  int device = -1;
  int bits = 4;
  int64_t K = 0, N = 0, Kp = 0, Np = 0, groups = 0;
  bool identity_k = true, uniform_chunks = true;
  const void* weights = nullptr;     // device pointers into one allocation
  const void* scale_zero = nullptr;
  const int32_t* slot_group = nullptr;
  const int32_t* perm = nullptr;     // null when identity_k
  int64_t weight_bytes = 0;          // bytes the product must read: weights + scales/zeros
  int64_t bytes = 0;                 // the whole allocation

  // Scratch grown on demand (outside graph capture): the permuted X, and the split-K partial sums
  // (kept zero between products) with one counter per output tile.
  void* xperm = nullptr;
  int64_t xperm_bytes = 0;
  float* partial = nullptr;
  int32_t* counters = nullptr;
  int64_t partial_floats = 0, counter_count = 0;

 private:
  void* storage_ = nullptr;
};

// Uploads the repack of `host` (validated) to `device`.
std::unique_ptr<GptqDeviceWeights> gptq_repack(const PackedMatrix& host, int device);

// Y [M, N] = X [M, K] · Wᵀ, X and Y device pointers of type `dtype` on W's device, enqueued on
// `stream` (a cudaStream_t, null for the default). One launch (two for act-order: the gather of X).
// `scratch`, when given, is device memory of at least gptq_dequant_bytes(W) that the product may use
// for the dequantize + cuBLAS path where the table says it wins (large M); it must not be in use by
// another stream's work during the product.
void gptq_matmul(const GptqDeviceWeights& W, const void* X, GptqDtype dtype, int64_t M, void* Y, void* stream,
                 void* scratch = nullptr);

// The large-M path: W dequantized once into `scratch` (fp16/bf16 [N, K'] in the repacked order of K,
// scaled as the inline kernels scale), then one cuBLAS GEMM (linalg.cuh gemm16: fp32 accumulation on
// the tensor cores). Two launches plus cuBLAS's; capturable once X's scratch has grown. Returns false,
// enqueuing nothing, when cuBLAS is not available.
int64_t gptq_dequant_bytes(const GptqDeviceWeights& W);
bool gptq_matmul_dequant(const GptqDeviceWeights& W, const void* X, GptqDtype dtype, int64_t M, void* Y, void* stream,
                         void* scratch);
// Whether the dequantize + cuBLAS path is the faster one for M rows of X (a measured table).
bool gptq_dequant_wins(const GptqDeviceWeights& W, int64_t M);
// X as the kernels read it: the caller's X when its rows are 16-byte aligned and in order, else
// gathered (act-order permutation, zero padding to Kp) into the weights' scratch; *ld = its row stride,
// which is also the number of columns of K the product uses.
const void* gptq_activations(const GptqDeviceWeights& W, const void* X, GptqDtype dtype, int64_t M, void* stream,
                             int64_t* ld);

// The same with an explicit kernel configuration (benchmarks sweep these): config index into the
// kernel table, splits of K (>= 1). Returns false when the configuration does not apply.
bool gptq_matmul_config(const GptqDeviceWeights& W, const void* X, GptqDtype dtype, int64_t M, void* Y,
                        void* stream, int config, int splits);
int gptq_config_count();
const char* gptq_config_name(int config);
// Whether that configuration applies scales once per chunk in fp32 (exact (q - z)·x sums) rather than
// to each weight in fp16/bf16: the bound a check may hold it to differs.
bool gptq_config_defers(const GptqDeviceWeights& W, int config);
// The configuration and splits gptq_matmul picks.
void gptq_choose(const GptqDeviceWeights& W, int64_t M, int* config, int* splits);

}  // namespace cuda
}  // namespace lowbit
