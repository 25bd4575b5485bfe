// The large-batch GPTQ product: dequantize the repacked weights once into a 16-bit [N, K'] matrix,
// then one cuBLAS GEMM on the tensor cores. From about 64–96 rows of X, cuBLAS's GEMM outruns the
// fused kernels of gemm.cu by more than the dequantization costs (reading the packed weights and
// writing 2 bytes per weight once), so prefill and large batches take this path (gptq_dequant_wins).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "../../native/core/common.hpp"
#include "../cuda_check.cuh"
#include "../linalg.cuh"
#include "gptq_kernels.hpp"
#include "layout.hpp"
#include "tile_math.cuh"

namespace lowbit {
namespace cuda {

using namespace gptq_layout;
using namespace gptq_tile;

namespace {

struct DequantArgs {
  const uint8_t* weights;
  const uint16_t* scale_zero;
  const int32_t* slot_group;
  void* out;   // [N, kx] in the repacked order of K
  int64_t kx;  // columns written (K on the direct path, Kp when X is gathered)
  int N, Np, chunks;
};

// A block of 8 warps takes 8 consecutive chunks of K of one 16-column tile; each warp one record
// (16 output columns × 128 inputs). Lane (g, t) rebuilds its 64 weights — columns g and g + 8,
// inputs 32t .. 32t + 31 of the chunk — with the products' own dequantization (scales applied to each
// weight in the output type, as the inline kernels do) into shared memory, and the warp then writes
// its 16 rows of 256 bytes whole (a lane's own 64 weights sit in 16 rows: written directly, each
// store would fill half a sector of a different row).
constexpr int kRowPad = 8;  // halves of padding per staged row: lanes of one store hit distinct banks

template <int BITS, class T>
__global__ void __launch_bounds__(256) gptq_dequant_kernel(DequantArgs a) {
  constexpr int REC = record_bytes(BITS), ROW = kChunk + kRowPad;
  __shared__ __align__(16) T stage[8][kTileN][ROW];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int64_t ntiles = a.Np / kTileN, ntile = blockIdx.y;
  const int chunk = blockIdx.x * 8 + warp;
  if (chunk >= a.chunks) return;

  const uint8_t* src = a.weights + record_index(ntile, chunk, a.chunks) * REC;
  uint32_t w[8];
  load_words<BITS>(src, lane, w);
  const int grp = __ldg(a.slot_group + chunk * 4 + t);
  TileConsts<T, BITS, false> consts;
  consts.init(__ldg(reinterpret_cast<const uint2*>(a.scale_zero + ((grp * ntiles + ntile) * 8 + g) * 4)));
#pragma unroll
  for (int v = 0; v < 4; ++v) {
    // Tiles 2v and 2v + 1 hold inputs 8v .. 8v + 7 of the lane's slot: registers 0 and 2 of each are
    // column g's, 1 and 3 column g + 8's (layout.hpp).
    uint32_t lo[4], hi[4];
    dequant<T, BITS, false>(tile_word<BITS>(w, 2 * v), consts, lo);
    dequant<T, BITS, false>(tile_word<BITS>(w, 2 * v + 1), consts, hi);
    *reinterpret_cast<uint4*>(&stage[warp][g][t * kSlot + 8 * v]) = make_uint4(lo[0], lo[2], hi[0], hi[2]);
    *reinterpret_cast<uint4*>(&stage[warp][g + 8][t * kSlot + 8 * v]) = make_uint4(lo[1], lo[3], hi[1], hi[3]);
  }
  __syncwarp();
  // Two rows per store: lanes 0-15 row 2i, lanes 16-31 row 2i + 1, 16 bytes (8 inputs) each.
  T* out = static_cast<T*>(a.out);
  const int64_t k = (int64_t)chunk * kChunk + (lane & 15) * 8;
  if (k + 8 > a.kx) return;  // padding of K (kx is a multiple of 8)
#pragma unroll
  for (int i = 0; i < kTileN / 2; ++i) {
    const int row = 2 * i + (lane >> 4);
    const int64_t n = ntile * kTileN + row;
    if (n < a.N)
      *reinterpret_cast<uint4*>(out + n * a.kx + k) = *reinterpret_cast<const uint4*>(&stage[warp][row][(lane & 15) * 8]);
  }
}

template <int BITS>
void launch_dequant(const DequantArgs& a, GptqDtype dtype, cudaStream_t stream) {
  const dim3 grid((unsigned)((a.chunks + 7) / 8), (unsigned)(a.Np / kTileN));
  if (dtype == GptqDtype::f16) gptq_dequant_kernel<BITS, __half><<<grid, 256, 0, stream>>>(a);
  else gptq_dequant_kernel<BITS, __nv_bfloat16><<<grid, 256, 0, stream>>>(a);
}

}  // namespace

int64_t gptq_dequant_bytes(const GptqDeviceWeights& W) { return checked_mul(checked_mul(W.N, W.Kp), 2); }

bool gptq_matmul_dequant(const GptqDeviceWeights& W, const void* X, GptqDtype dtype, int64_t M, void* Y,
                         void* stream_ptr, void* scratch) {
  require(M >= 1 && M <= (int64_t)1 << 30, "E_SHAPE", "M must be in [1, 2^30]");
  require(scratch != nullptr, "E_ARGUMENT", "GPTQ dequantize path: no scratch");
  if (!have_cublas()) return false;
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  check(cudaSetDevice(W.device), "cudaSetDevice");
  int64_t ldx = 0;
  const void* x = gptq_activations(W, X, dtype, M, stream_ptr, &ldx);
  // The dequantized matrix has as many columns as X's rows as the product reads them: K, or Kp when
  // X was gathered (X's padding is zero there, so the padding's weights do not count).
  DequantArgs a{};
  a.weights = static_cast<const uint8_t*>(W.weights);
  a.scale_zero = static_cast<const uint16_t*>(W.scale_zero);
  a.slot_group = W.slot_group;
  a.out = scratch;
  a.kx = ldx;
  a.N = (int)W.N;
  a.Np = (int)W.Np;
  a.chunks = (int)(W.Kp / kChunk);
  switch (W.bits) {
    case 2: launch_dequant<2>(a, dtype, stream); break;
    case 3: launch_dequant<3>(a, dtype, stream); break;
    case 4: launch_dequant<4>(a, dtype, stream); break;
    default: fail("E_BITS", "GPTQ dequantize path: bits must be 2, 3 or 4");
  }
  check(cudaGetLastError(), "GPTQ dequantize launch");
  gemm16(stream, dtype == GptqDtype::bf16, M, W.N, ldx, x, scratch, Y, false);
  return true;
}

}  // namespace cuda
}  // namespace lowbit
