// SpQR weights (../spqr.hpp) repacked once, at load time, for the int8 products of this directory:
// the same 16-column × 32-position units as the GPTQ layout (repack.hpp), so one vpdpbusd feeds 16
// output columns, with each first-level group's statistics in the stream next to its codes.
//
// Taken when β1 is 16, 32, 48, 64, 96 or 128 and β2 a multiple of 16 (the defaults are 16), with
// statistics of ≤ 4 bits: a group then covers whole 16-position half units, whole groups and units
// fill an activation segment of ≤ 128 positions, and a block of 16 output columns lies inside one
// second-level group, so its grids are scalars. Other layouts run on spqr_gemm.hpp's f32 kernel.
//
// Layout. Positions in sweep order (SpQR's permutation is a gather of x, applied once per call),
// padded with zero codes to whole units. Output columns come in blocks of 16, blocks in panels of 4
// (both padded), and each panel is one contiguous stream, unit after unit: first the headers of the
// groups that start in the unit, then the 4 blocks' unit data side by side (repack.hpp's `put`).
// A group's header is one 32-byte record per block:
//   f32 s_off, s_step, z_off, z_step      the block's second-level grids for this group
//   u8  codes[16]                          column c: scale code | zero code << 4
// so that a column's first-level scale is s_off + s_step · (code & 15) and its zero
// z_off + z_step · (code >> 4). Stored bits per weight: b + 1 at β1 = 16 (the checkpoint's
// statistics take 0.625). The grids stay f32 and the codes whole bytes, each decoded by one load and a
// broadcast, and a 32-byte record keeps the units' 64-byte loads aligned.
//
// Activations are quantized to int8 as for GPTQ (repack.hpp), in segments of whole groups and whole
// units (about 128 positions); the product of a group is s·dx·(Σ q·xq − z·Σ_group xq), with the same
// error bound as GPTQ's int8 path. Outliers are added in f32 from x itself (columns stored in the
// original input order; 16-bit, so K ≤ 65535) with their fp16 values as the checkpoint has them,
// after the dense part: in the GEMV by 16-wide gathers of x, for more rows from x transposed (one FMA
// of up to 16 rows per outlier).
#pragma once

#include <cstdint>
#include <vector>

#include "../spqr.hpp"
#include "repack.hpp"

namespace lowbit {
namespace cpu_gptq {

constexpr int64_t kSpqrRecordBytes = 32;                               // one block's statistics for one group
constexpr int64_t kSpqrHeaderBytes = kPanelBlocks * kSpqrRecordBytes;  // a group's header in a panel
constexpr uint16_t kNoColumn = 0xFFFF;                                 // an outlier run's padding

struct SpqrPanels {
  int bits = 3;
  int64_t N = 0, K = 0, beta1 = 16, groups = 0;
  int64_t blocks = 0;                 // ceil(N / 16) rounded up to whole panels
  int64_t units = 0;                  // 32-position units (padded K = units · 32)
  int64_t unit_bytes = 0;             // 16 · 32 · bits / 8
  int64_t panel_bytes = 0;
  AlignedBytes data;                  // [blocks / 4][panel_bytes]
  std::vector<int64_t> unit_offset;   // [units] bytes from a panel's start to the unit's data
  std::vector<int64_t> group_offset;  // [groups] bytes from a panel's start to the group's header
  std::vector<Segment> segments;      // activation segments (unit0, units, first group)
  std::vector<int32_t> source;        // [units · 32] input position of each padded position, or −1
  bool permuted = false;
  // Outliers, row by row in ORIGINAL input order, each row's run padded to a multiple of 16 entries
  // (column kNoColumn, value 0) so the GEMV gathers x 16 at a time without a remainder loop.
  std::vector<int32_t> out_start;    // [N + 1] start of row n's run
  std::vector<int32_t> out_count;    // [N] its real entries
  std::vector<uint16_t> out_cols;    // input position (< K ≤ 65535) or kNoColumn
  std::vector<uint16_t> out_values;  // fp16

  int64_t padded_k() const { return units * kUnitK; }
  int64_t bytes() const {
    return data.size + (int64_t)(source.size() + out_start.size() + out_count.size()) * 4 +
           (int64_t)(out_cols.size() + out_values.size()) * 2;
  }
  const uint8_t* panel(int64_t block) const { return data.data() + (block / kPanelBlocks) * panel_bytes; }
};

// True when these weights take the int8 layout (see the top of this file).
bool supports_spqr(const SpqrMatrix& W);

// Validated SpqrMatrix (validate_spqr) → the layout. Throws E_ARGUMENT when supports_spqr is false.
SpqrPanels repack_spqr(const SpqrMatrix& W);

// Y [M, N] = X [M, K] · Wᵀ (overwritten), int8 activations, at the active SIMD level (packed_gemm.hpp's
// force_simd). Returns the kernel family that ran, named as repack.hpp's gemm names them.
const char* spqr_gemm_int8(const SpqrPanels& W, const float* X, int64_t M, float* Y);

}  // namespace cpu_gptq
}  // namespace lowbit
