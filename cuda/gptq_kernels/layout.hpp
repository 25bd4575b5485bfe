// The repacked GPTQ layout, shared by the host repack and the kernels. The kernels compute with
// mma.sync m16n8k16 with the weights as operand A (16 output columns × 16 inputs) and X as
// operand B (16 inputs × 8 rows of X), so a batch of 1–8 rows wastes nothing.
//
// K is cut into chunks of 128 and each chunk into four 32-wide slots. Lane (g = lane/4, t = lane%4)
// of a warp owns slot t of the chunk for output columns g and g+8 of a 16-column tile; its part of
// the chunk's 8 mma tiles (j = 0..7) is the 4 inputs 32t + 4j .. 32t + 4j + 3. The mma's own order
// of inputs inside a tile does not matter as long as A and B agree, so this choice lets a lane read
// its X as 64 contiguous bytes and puts one lane in one slot, hence one group when groups are 32.
//
// Element e = 2r + h (r = 0..3, h = 0..1) of tile j of a lane is A-fragment register r, half h:
//   output column n = g + 8·(r & 1), input 32t + 4j + 2·(r >> 1) + h.
// Its bits, per width (one record = 256·bits bytes per 16 columns × 128 inputs):
//  - 4: word j, bits 4r + 16h (nibbles placed for the magic-number conversion: a mask with
//       0x000f000f or 0x00f000f0 yields two fp16 values at once). Words 0–3 of all lanes, then 4–7.
//  - 3: as 4 bits, with the low two bits in word W[j/2] at bit 4r + 16h + 2·(j & 1), and the high
//       bit in word H[j/4] at bit 4r + 16h + {2, 3, 0, 1}[j % 4]; two masked merges rebuild the
//       nibbles. W0–W3 of all lanes (16 bytes each), then H0–H1 (8 bytes each).
//  - 2: word j/2, bits 2r + 8·(j & 1) + 16h. Words 0–3 of all lanes.
// Records: see record_index. Scales and zeros: per group and 16-column tile, 8 records (one per g) of 4 fp16 values:
// s(n = g), s(g + 8), z(g), z(g + 8) — a lane reads its own 8 bytes.
#pragma once

#include <cstdint>

namespace lowbit {
namespace cuda {
namespace gptq_layout {

constexpr int kChunk = 128;  // inputs per chunk (one pipeline stage)
constexpr int kSlot = 32;    // inputs per lane slot
constexpr int kTileN = 16;   // output columns per tile
constexpr int kPadN = 128;   // Np is a multiple of this (the widest block)

constexpr int record_bytes(int bits) { return 256 * bits; }

// Records are stored chunk by chunk in groups of 8 tiles (128 columns): a block of up to 128 columns
// reads one contiguous run per chunk, and consecutive chunks follow each other.
constexpr int64_t record_index(int64_t ntile, int64_t chunk, int64_t chunks) {
  return ((ntile / 8) * chunks + chunk) * 8 + ntile % 8;
}

// Bit position of element (r, h) of tile j inside its word; which word is given by the caller.
constexpr int nibble_bit(int r, int h) { return 4 * r + 16 * h; }
constexpr int hi3_bit(int j, int r, int h) { return nibble_bit(r, h) + (j % 4 == 0 ? 2 : j % 4 == 1 ? 3 : j % 4 == 2 ? 0 : 1); }
constexpr int two_bit(int j, int r, int h) { return 2 * r + 8 * (j & 1) + 16 * h; }

// The warpgroup kernel's order of a chunk's inputs in shared memory (gemm_wgmma.cu says why): position
// p (0..127) of a row of X holds this input of the chunk. Positions 0-63 and 64-127 are two 128-byte
// atoms; position kk (0..15) of tile j sits at 64·(j / 4) + 16·(j % 4) + kk and holds the input that
// A-fragment position kk of tile j multiplies.
constexpr int wgmma_input(int p) {
  const int j = 4 * (p >> 6) + ((p & 63) >> 4), kk = p & 15;
  return 32 * ((kk >> 1) & 3) + 4 * j + 2 * (kk >> 3) + (kk & 1);
}

}  // namespace gptq_layout
}  // namespace cuda
}  // namespace lowbit
