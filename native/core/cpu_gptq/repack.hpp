// GPTQ weights repacked once, at load time, into a CPU layout made for integer dot products, and
// the products Y = X · Wᵀ on it (GEMV for M = 1, a row-tiled GEMM for M > 1).
//
// Layout. Input positions are first permuted so every group is contiguous (act-order's g_idx becomes
// a permutation of x, applied once per call), then cut into segments of at most 128 positions inside
// one group, each padded with zero weights to a multiple of 32. Output columns come in blocks of 16,
// and blocks in panels of 4 (both padded). Each panel is one contiguous stream, segment after
// segment: first the segment's header (the 4 blocks' scales, 4 × 16 fp16, then their zero points,
// 4 × 16 u8: 192 bytes, three cache lines), then its 32-position units, each as the 4 blocks' unit
// data side by side. A GEMV task reads one panel front to back, so each thread streams one run of
// memory (scales included) that the hardware prefetcher follows, instead of 4 weight streams plus 2
// scale/zero streams per thread. A block's unit holds 16 columns × 32 positions as 64-byte chunks
// whose byte 4c + j (column c) carries positions 4s + j of several 4-position slices s, so that one
// 64-byte vector feeds 16 int32 lanes of an int8 dot product (vpdpbusd: lane c += Σ_j w[c][j] · x[j]):
//   4 bits, 4 chunks: chunk s/2, nibble s%2 holds slice s (s = 0..7);
//   2 bits, 2 chunks: chunk s/4, bits 2·(s%4) hold slice s;
//   3 bits, 3 chunks b0, b1, b2 (bits of one byte listed low to high):
//                     b0 = slice 0 (3 bits), slice 6's low 2 bits, slice 1 (3 bits);
//                     b1 = slice 2, slice 7's low 2 bits, slice 3;
//                     b2 = slice 4, slice 5, slice 6's high bit, slice 7's high bit.
//     Every field then sits below bit 8 where a mask alone leaves it (q · 2^offset fits a byte), so
//     the int8 GEMV unpacks each 3-bit slice with one `and` (slices 6 and 7: two, one per part) and
//     sums the products per offset, shifting back once per segment (see kernels_impl.hpp).
//
// Activations. By default each row of X is quantized per segment to int8 (dx = max|x| / 127,
// xq = round(x / dx)); the kernel accumulates Σ q·xq exactly in int32 and applies, per segment,
// y += s·dx·(Σ q·xq − z·Σ xq). The error against exact activations is, per output element,
//   |Δy[n]| ≤ Σ_segments (max_segment |x| / 254) · Σ_{k in segment} |w[n][k]|  ≤ ‖x‖∞ · ‖w_n‖₁ / 254
// (plus f32 rounding). Options::exact_activations keeps f32 activations instead (dequantized f32
// panels, error at f32 rounding level), for callers that need results as exact as the f32 path.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <type_traits>
#include <vector>

#include "../packed_matrix.hpp"

namespace lowbit {
namespace cpu_gptq {

constexpr int64_t kBlockCols = 16;      // output columns per block (one int32 lane each)
constexpr int64_t kUnitK = 32;          // input positions per unit
constexpr int64_t kSegmentK = 128;      // input positions per segment at most (one activation scale)
constexpr int64_t kPanelBlocks = 4;     // column blocks per panel (one contiguous stream)
constexpr int64_t kHeaderBytes = kPanelBlocks * kBlockCols * 3;  // a segment's scales and zero points

// A 64-byte aligned byte buffer (vector loads of whole chunks).
struct AlignedBytes {
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t, Free> ptr;
  int64_t size = 0;
  void allocate(int64_t bytes);  // zero-filled; throws E_ALLOC when the system refuses
  uint8_t* data() const { return ptr.get(); }
};

struct Segment {
  int64_t unit0, units;  // first unit (in the padded order) and how many
  int64_t group;         // the group whose scale and zero point apply
  int64_t offset;        // bytes from a panel's start to this segment's header
};

struct CpuGptqWeights {
  int bits = 4;
  int64_t N = 0, K = 0;    // logical shape (out × in)
  int64_t blocks = 0;      // ceil(N / 16) rounded up to whole panels
  int64_t units = 0;       // 32-position units per block (padded K = units · 32)
  int64_t groups = 0;
  int64_t unit_bytes = 0;  // 16 · 32 · bits / 8
  int64_t panel_bytes = 0; // Σ over segments of the header and 4 blocks' units
  AlignedBytes data;       // [blocks / 4][panel_bytes] (scales 0 and zero points 0 in padding columns)
  std::vector<Segment> segments;
  std::vector<int32_t> source;   // [units · 32]: input position k of each padded position, or −1
  bool permuted = false;         // source is not the identity on the real positions (act-order)

  int64_t padded_k() const { return units * kUnitK; }
  // Bytes a product reads from the weight (units, scales and zero points), for bandwidth figures.
  int64_t bytes() const { return data.size; }
  // The header of segment s in the panel of `block`: fp16 scales [4][16], then u8 zero points [4][16].
  // (Non-const pointers: repack fills them; the products only read.)
  uint8_t* header(int64_t block, const Segment& s) const {
    return data.data() + (block / kPanelBlocks) * panel_bytes + s.offset;
  }
  // Unit u (inside segment s) of `block`.
  uint8_t* unit(int64_t block, const Segment& s, int64_t u) const {
    return header(block, s) + kHeaderBytes + ((u - s.unit0) * kPanelBlocks + block % kPanelBlocks) * unit_bytes;
  }
  template <class Byte>  // uint8_t or const uint8_t
  static auto scales_of(Byte* header, int64_t block) {
    using Half = std::conditional_t<std::is_const_v<Byte>, const uint16_t, uint16_t>;
    return reinterpret_cast<Half*>(header) + (block % kPanelBlocks) * kBlockCols;
  }
  template <class Byte>
  static Byte* zeros_of(Byte* header, int64_t block) {
    return header + kPanelBlocks * kBlockCols * 2 + (block % kPanelBlocks) * kBlockCols;
  }
};

// Sets padded position p (0..31) of column c (0..15) of a unit (zero-filled before) to code q, per the
// layout above.
void put_code(uint8_t* unit, int bits, int64_t c, int64_t p, uint32_t q);

// True when repack supports these weights (bits 2, 3, 4); 8-bit weights stay on packed_gemm.
bool supports(const PackedMatrix& W);

// Validated PackedMatrix (validate_packed) → CPU layout. Throws E_BITS for unsupported widths.
CpuGptqWeights repack(const PackedMatrix& W);

// A deep copy in fresh memory (its own huge-page buffer): benchmarks rotate over copies of one weight
// to read it from DRAM rather than from the last-level cache.
CpuGptqWeights copy_of(const CpuGptqWeights& W);

// Software prefetch of the int8 kernels, in KiB of the panel's stream ahead, the same bytes for
// every width: `near` into L1 (prefetcht0), `far` into L2 (prefetcht1), and the segment headers
// (scales and zero points) `scale_segments` segments ahead (into L2); 0 turns any off. Process-wide,
// set by benchmarks comparing settings (cpu-gemv.mjs --variants). Defaults near 4, far 16: what
// 4-bit weights had as 4 and 16 units (1 KiB each) on the quiet host Xeon (2 threads, 2026-12-01:
// far 16 cut the summed M = 1 time of 24 DRAM-streamed products by 6%, near 0 was 11% slower from
// DRAM; scale_segments 4). Until 2026-12-02 the distances counted units, so 3- and 2-bit weights
// had 3/4 and 1/2 of these bytes in flight (see RESULTS.md, issue 13).
struct Prefetch {
  int near_kib = 4, far_kib = 16, scale_segments = 4;
};
void set_prefetch(const Prefetch& p);  // each in [0, 64]; throws E_ARGUMENT otherwise
Prefetch prefetch();

struct Options {
  bool exact_activations = false;  // f32 activations (dequantized panels) instead of int8
};

// Y [M, N] = X [M, K] · Wᵀ (overwritten), at the active SIMD level (packed_gemm.hpp's force_simd).
// Returns the kernel family that ran ("scalar", "avx2", "avx2-vnni", "avx512", "avx512-vnni"):
// tests assert that forcing a level really changes the code path.
const char* gemm(const CpuGptqWeights& W, const float* X, int64_t M, float* Y, const Options& options = {});

}  // namespace cpu_gptq
}  // namespace lowbit
