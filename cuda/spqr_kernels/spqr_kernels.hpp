// Fast SpQR products on the GPU (fp16/bf16 activations, tensor cores): the SpQR layout
// (native/core/spqr.hpp) repacked once at load time into records made for mma.sync, then
// Y = X · Wᵀ (+ bias) in one kernel that decodes the dense codes and both levels of statistics in
// registers, multiplies on the tensor cores with fp32 accumulation, and adds the sparse outliers;
// with a permutation (or above 8 rows of X) X is first gathered into sweep order by a second launch.
//
// The repacked record of 16 output rows × 128 sweep positions (one mma tile column × one chunk):
//  - the codes, exactly as the GPTQ kernels' record (gptq_kernels/layout.hpp): 256·bits bytes;
//    lane (g = lane/4, t = lane%4) holds rows g and g+8, sweep positions 32t .. 32t+31 of the chunk;
//  - 32 words of first-level codes, one per lane: the scale and zero codes of its two rows in its
//    two 16-position units (2t and 2t+1), eight 4-bit fields, field 4u + 2·kind + h (u: unit 2t+u,
//    kind 0 scale / 1 zero, h: row g + 8h);
//  - 8 second-level entries, one per 16-position unit: fp16 (scale offset, scale step, zero offset,
//    zero step) of the unit's first-level group and the record's row block.
// So the statistics sit next to the codes they scale, in ~0.75 bit per weight (3-bit statistics,
// 16 × 16 groups), and a lane decodes its own 8 (scale, zero) pairs with 8 f32 fmas per chunk.
// Requirements (else the plain kernel of spqr_linear.cu runs): β1 and β2 multiples of 16 (a unit
// never straddles a first-level group, a record never straddles a row block), statistics of at
// most 4 bits, K ≤ 65536 (outlier columns in 16 bits).
//
// Outliers: per output row (CSR, the checkpoint's row pointers), each a 32-bit entry
// (sweep column << 16) | fp16 residual. The kernel's warps add their 16 rows' outliers before the
// dense loop, reading X transposed ([Kp, Mp], written by the gather) so that one load gives up to
// 8 rows of X at one column.
//
// Plain C++ (no CUDA headers), so any translation unit can hold the weights.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../../native/core/spqr.hpp"

namespace lowbit {
namespace cuda {

enum class SpqrDtype { f16 = 0, bf16 = 1 };

namespace spqr_layout {
constexpr int kChunk = 128, kUnit = 16, kTileN = 16, kPadN = 128;
constexpr int code_bytes(int bits) { return 256 * bits; }
constexpr int record_bytes(int bits) { return code_bytes(bits) + 128 + 64; }
// Records chunk by chunk in groups of 8 tiles (a block's 128 rows read one contiguous run per chunk).
constexpr int64_t record_index(int64_t ntile, int64_t chunk, int64_t chunks) {
  return ((ntile / 8) * chunks + chunk) * 8 + ntile % 8;
}
constexpr int stat_field(int u, int kind, int h) { return 4 * u + 2 * kind + h; }
}  // namespace spqr_layout

// Whether the fast kernel takes these weights; `why` says what does not fit when it does not.
bool spqr_tc_supports(const SpqrMatrix& m, std::string* why);

struct SpqrRepacked {
  int bits = 3, stat_bits = 3;
  int64_t K = 0, N = 0, Kp = 0, Np = 0;
  std::vector<uint8_t> records;    // [Np/16 tiles × Kp/128 chunks] records, by record_index
  std::vector<int32_t> perm;       // [K] original column of each sweep position, empty for the identity
  std::vector<int32_t> rowptr;     // [N + 1] outliers of row n: entries rowptr[n] .. rowptr[n+1]
  std::vector<uint32_t> outliers;  // [nnz] (sweep column << 16) | fp16 residual bits
};

// The repack (validated view in, E_UNSUPPORTED when spqr_tc_supports says no).
SpqrRepacked repack_spqr_host(const SpqrMatrix& m);

// The inverse, for tests: what the checkpoint stores, recovered from the records.
struct SpqrUnpacked {
  std::vector<uint8_t> codes;                   // [N, K] sweep order
  std::vector<uint8_t> scale_codes, zero_codes; // [N, G]
  std::vector<uint16_t> scale_stats, zero_stats; // [G, NB, 2]
  std::vector<int32_t> rowptr, cols;
  std::vector<uint16_t> values;
};
SpqrUnpacked unrepack_spqr_host(const SpqrRepacked& R, int64_t beta1, int64_t beta2);

// The repacked weights on one GPU, with the scratch their products use (X in sweep order and
// transposed, the split-K partial sums and tile counters). Products of one weights object must run
// one at a time (the CUDA operators serialize them); scratch grows only outside graph capture.
class SpqrDeviceWeights {
 public:
  SpqrDeviceWeights(const SpqrRepacked& host, int device);
  ~SpqrDeviceWeights();
  SpqrDeviceWeights(const SpqrDeviceWeights&) = delete;
  SpqrDeviceWeights& operator=(const SpqrDeviceWeights&) = delete;

  int device = -1, bits = 3;
  int64_t K = 0, N = 0, Kp = 0, Np = 0, nnz = 0;
  const uint8_t* records = nullptr;  // device pointers into one allocation
  const int32_t* perm = nullptr;     // null for the identity
  const int32_t* rowptr = nullptr;
  const uint32_t* outliers = nullptr;
  int64_t weight_bytes = 0;  // what one product reads of the weights (records + row pointers + outliers)
  int64_t bytes = 0;         // the whole allocation

  void* xs = nullptr;  // X in sweep order [Mp, Kp] (or the warpgroup kernel's order) and transposed [Kp, Mp]
  int64_t xs_bytes = 0;
  bool xs_wgmma_order = false;  // the order the last gather wrote
  float* partial = nullptr;
  int32_t* counters = nullptr;
  int64_t partial_floats = 0, counter_count = 0;

 private:
  void* storage_ = nullptr;
};

std::unique_ptr<SpqrDeviceWeights> spqr_repack(const SpqrMatrix& host, int device);

// Y [M, N] = X [M, K] · Wᵀ (+ bias [N] f32 on the device, or null), X and Y device memory of
// `dtype` on W's device, enqueued on `stream` (a cudaStream_t). Up to 8 rows without a permutation
// (and K a multiple of 8, X 16-byte aligned) one launch that reads X in place; else two (gather,
// product). On sm_90 the product is launched overlapped with the kernel before it (cuda/overlap.cuh).
void spqr_matmul(const SpqrDeviceWeights& W, const void* X, SpqrDtype dtype, int64_t M, void* Y, const float* bias,
                 void* stream);
// The same with the split of K forced (benchmarks; splits < 1: the default choice) and the overlapped
// launch (programmatic dependent launch on sm_90: the product's blocks start and read their first
// records while the kernel before it, the gather or another product, finishes) on or off.
// variant: one of spqr_variant_count() kernel variants (tile kernel or K-splitting GEMV, chunks in
// flight per warp, outliers before or after the dense loop; spqr_kernels/gemm.cu), < 0 the default.
void spqr_matmul_splits(const SpqrDeviceWeights& W, const void* X, SpqrDtype dtype, int64_t M, void* Y,
                        const float* bias, void* stream, int splits, bool overlap, int variant);
int spqr_variant_count();
int spqr_default_variant(const SpqrDeviceWeights& W, int64_t M);  // the variant spqr_matmul runs for M rows of X
// Whether spqr_matmul* reads X in place (no gather) for these weights, X, M and variant (< 0: the default).
bool spqr_reads_x_in_place(const SpqrDeviceWeights& W, const void* X, int64_t M, int variant = -1);
// The two launches of a product, separately (benchmarks time the second alone): X into sweep
// order in W's scratch, in the form the product's variant reads (< 0: the default's), then the
// product from there (splits < 1: the default choice; the same variant).
void spqr_gather(const SpqrDeviceWeights& W, const void* X, SpqrDtype dtype, int64_t M, void* stream, int variant = -1);
void spqr_product(const SpqrDeviceWeights& W, SpqrDtype dtype, int64_t M, void* Y, const float* bias, void* stream,
                  int splits, bool overlap, int variant);
// The row tile (8 or 16 rows of X per block) and split of K spqr_matmul picks.
void spqr_choose(const SpqrDeviceWeights& W, int64_t M, int* rows_per_block, int* splits, int variant = -1);

}  // namespace cuda
}  // namespace lowbit
