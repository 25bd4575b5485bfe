// Load-time repack of SpQR weights into the fast kernel's records (spqr_kernels.hpp), its exact
// inverse (for tests), and the upload to a GPU. The code bits follow gptq_kernels/layout.hpp, so a
// lane's share of a record decodes with the same shifts and masks as the GPTQ kernels'.
#include <cuda_runtime.h>

#include <cstring>

#include "../../native/core/common.hpp"
#include "../cuda_check.cuh"
#include "../packed_memory.cuh"
#include "../gptq_kernels/layout.hpp"
#include "spqr_kernels.hpp"

namespace lowbit {
namespace cuda {

using namespace spqr_layout;
namespace gl = gptq_layout;

namespace {

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Where element (r, h) of tile j of lane (g, t) sits: output row and sweep position within the
// record (layout.hpp), and its bits in the lane's words w[0..7].
struct CodeSlot {
  int row, pos, word, bit;
};
CodeSlot code_slot(int bits, int lane, int j, int r, int h) {
  const int g = lane / 4, t = lane % 4;
  CodeSlot s{g + 8 * (r & 1), gl::kSlot * t + 4 * j + 2 * (r >> 1) + h, 0, 0};
  if (bits == 4) s.word = j, s.bit = gl::nibble_bit(r, h);
  else if (bits == 2) s.word = j / 2, s.bit = gl::two_bit(j, r, h);
  else s.word = j / 2, s.bit = gl::nibble_bit(r, h) + 2 * (j & 1);  // low two bits; the high bit: hi3_bit
  return s;
}

// A lane's words at their place in the record (4-bit: 0-3 then 4-7; 3-bit: W0-W3 then H0-H1).
void store_words(uint8_t* rec, int bits, int lane, const uint32_t (&w)[8]) {
  std::memcpy(rec + lane * 16, w, 16);
  if (bits == 4) std::memcpy(rec + 512 + lane * 16, w + 4, 16);
  if (bits == 3) std::memcpy(rec + 512 + lane * 8, w + 4, 8);
}
void load_words(const uint8_t* rec, int bits, int lane, uint32_t (&w)[8]) {
  std::memset(w, 0, sizeof w);
  std::memcpy(w, rec + lane * 16, 16);
  if (bits == 4) std::memcpy(w + 4, rec + 512 + lane * 16, 16);
  if (bits == 3) std::memcpy(w + 4, rec + 512 + lane * 8, 8);
}

}  // namespace

bool spqr_tc_supports(const SpqrMatrix& m, std::string* why) {
  auto no = [&](const std::string& s) {
    if (why) *why = s;
    return false;
  };
  if (m.bits < 2 || m.bits > 4) return no("bits must be 2, 3 or 4");
  if (m.beta1 % kUnit != 0) return no("beta1 must be a multiple of 16");
  if (m.beta2 % kTileN != 0) return no("beta2 must be a multiple of 16");
  if (m.stat_bits < 1 || m.stat_bits > 4) return no("statistics of at most 4 bits");
  if (m.K < 1 || m.K > 65536) return no("K must be at most 65536 (16-bit outlier columns)");
  if (m.N < 1 || m.N > ((int64_t)1 << 30)) return no("N must be in [1, 2^30]");
  return true;
}

SpqrRepacked repack_spqr_host(const SpqrMatrix& m) {
  std::string why;
  require(spqr_tc_supports(m, &why), "E_UNSUPPORTED", "SpQR tensor-core kernel: " + why);
  SpqrRepacked R;
  R.bits = m.bits;
  R.stat_bits = m.stat_bits;
  R.K = m.K;
  R.N = m.N;
  R.Kp = round_up(m.K, kChunk);
  R.Np = round_up(m.N, kPadN);
  const int64_t G = m.groups(), NB = m.row_blocks(), ntiles = R.Np / kTileN, chunks = R.Kp / kChunk;
  const int cb = code_bytes(m.bits), rb = record_bytes(m.bits);
  R.records.assign((size_t)checked_product({ntiles, chunks, rb}, "SpQR records"), 0);
  for (int64_t nt = 0; nt < ntiles; ++nt)
    for (int64_t c = 0; c < chunks; ++c) {
      uint8_t* rec = R.records.data() + record_index(nt, c, chunks) * rb;
      for (int lane = 0; lane < 32; ++lane) {
        uint32_t w[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int j = 0; j < 8; ++j)
          for (int r = 0; r < 4; ++r)
            for (int h = 0; h < 2; ++h) {
              const CodeSlot s = code_slot(m.bits, lane, j, r, h);
              const int64_t n = nt * kTileN + s.row, p = c * kChunk + s.pos;
              if (n >= m.N || p >= m.K) continue;
              const uint32_t v = bitstream_get(m.qweight, n * m.K + p, m.bits);
              if (m.bits == 3) {
                w[s.word] |= (v & 3u) << s.bit;
                w[4 + j / 4] |= (v >> 2) << gl::hi3_bit(j, r, h);
              } else {
                w[s.word] |= v << s.bit;
              }
            }
        store_words(rec, m.bits, lane, w);
        // First-level codes of rows g, g+8 in units 2t, 2t+1.
        const int g = lane / 4, t = lane % 4;
        uint32_t stats = 0;
        for (int u = 0; u < 2; ++u)
          for (int h = 0; h < 2; ++h) {
            const int64_t n = nt * kTileN + g + 8 * h, p = c * kChunk + kUnit * (2 * t + u);
            if (n >= m.N || p >= m.K) continue;
            const int64_t i = n * G + p / m.beta1;
            stats |= bitstream_get(m.scale_codes, i, m.stat_bits) << (4 * stat_field(u, 0, h));
            stats |= bitstream_get(m.zero_codes, i, m.stat_bits) << (4 * stat_field(u, 1, h));
          }
        std::memcpy(rec + cb + 4 * lane, &stats, 4);
      }
      // Second-level (offset, step) pairs of each unit's group in the record's row block.
      const int64_t b = nt * kTileN / m.beta2;
      for (int unit = 0; unit < 8; ++unit) {
        const int64_t p = c * kChunk + kUnit * unit;
        if (nt * kTileN >= m.N || p >= m.K) continue;
        const int64_t i = (p / m.beta1) * NB + b;
        const uint16_t e[4] = {m.scale_stats[2 * i], m.scale_stats[2 * i + 1], m.zero_stats[2 * i],
                               m.zero_stats[2 * i + 1]};
        std::memcpy(rec + cb + 128 + 8 * unit, e, 8);
      }
    }
  if (m.perm) R.perm.assign(m.perm, m.perm + m.K);
  R.rowptr.assign(m.outlier_rowptr, m.outlier_rowptr + m.N + 1);
  const int64_t nnz = m.outliers();
  R.outliers.resize((size_t)nnz);
  for (int64_t i = 0; i < nnz; ++i)
    R.outliers[(size_t)i] = ((uint32_t)m.outlier_cols[i] << 16) | (uint32_t)m.outlier_values[i];
  return R;
}

SpqrUnpacked unrepack_spqr_host(const SpqrRepacked& R, int64_t beta1, int64_t beta2) {
  const int64_t G = ceil_div(R.K, beta1), NB = ceil_div(R.N, beta2), ntiles = R.Np / kTileN, chunks = R.Kp / kChunk;
  const int cb = code_bytes(R.bits), rb = record_bytes(R.bits);
  const uint32_t mask = (1u << R.bits) - 1u, smask = (1u << R.stat_bits) - 1u;
  SpqrUnpacked U;
  U.codes.assign((size_t)(R.N * R.K), 0xff);
  U.scale_codes.assign((size_t)(R.N * G), 0xff);
  U.zero_codes.assign((size_t)(R.N * G), 0xff);
  U.scale_stats.assign((size_t)(G * NB * 2), 0xffff);
  U.zero_stats.assign((size_t)(G * NB * 2), 0xffff);
  for (int64_t nt = 0; nt < ntiles; ++nt)
    for (int64_t c = 0; c < chunks; ++c) {
      const uint8_t* rec = R.records.data() + record_index(nt, c, chunks) * rb;
      for (int lane = 0; lane < 32; ++lane) {
        uint32_t w[8];
        load_words(rec, R.bits, lane, w);
        for (int j = 0; j < 8; ++j)
          for (int r = 0; r < 4; ++r)
            for (int h = 0; h < 2; ++h) {
              const CodeSlot s = code_slot(R.bits, lane, j, r, h);
              uint32_t v = (w[s.word] >> s.bit) & (R.bits == 3 ? 3u : mask);
              if (R.bits == 3) v |= ((w[4 + j / 4] >> gl::hi3_bit(j, r, h)) & 1u) << 2;
              const int64_t n = nt * kTileN + s.row, p = c * kChunk + s.pos;
              if (n < R.N && p < R.K) U.codes[(size_t)(n * R.K + p)] = (uint8_t)v;
              else if (v != 0) fail("E_INTERNAL", "nonzero padding in the SpQR records");
            }
        const int g = lane / 4, t = lane % 4;
        uint32_t stats;
        std::memcpy(&stats, rec + cb + 4 * lane, 4);
        for (int u = 0; u < 2; ++u)
          for (int h = 0; h < 2; ++h) {
            const int64_t n = nt * kTileN + g + 8 * h, p = c * kChunk + kUnit * (2 * t + u);
            if (n >= R.N || p >= R.K) continue;
            const int64_t i = n * G + p / beta1;
            U.scale_codes[(size_t)i] = (uint8_t)((stats >> (4 * stat_field(u, 0, h))) & smask);
            U.zero_codes[(size_t)i] = (uint8_t)((stats >> (4 * stat_field(u, 1, h))) & smask);
          }
      }
      for (int unit = 0; unit < 8; ++unit) {
        const int64_t p = c * kChunk + kUnit * unit;
        if (nt * kTileN >= R.N || p >= R.K) continue;
        const int64_t i = (p / beta1) * NB + nt * kTileN / beta2;
        uint16_t e[4];
        std::memcpy(e, rec + cb + 128 + 8 * unit, 8);
        U.scale_stats[(size_t)(2 * i)] = e[0], U.scale_stats[(size_t)(2 * i + 1)] = e[1];
        U.zero_stats[(size_t)(2 * i)] = e[2], U.zero_stats[(size_t)(2 * i + 1)] = e[3];
      }
    }
  U.rowptr = R.rowptr;
  for (uint32_t e : R.outliers) {
    U.cols.push_back((int32_t)(e >> 16));
    U.values.push_back((uint16_t)(e & 0xffff));
  }
  return U;
}

namespace {
}  // namespace

SpqrDeviceWeights::SpqrDeviceWeights(const SpqrRepacked& h, int dev) {
  device = dev;
  bits = h.bits;
  K = h.K, N = h.N, Kp = h.Kp, Np = h.Np, nnz = (int64_t)h.outliers.size();
  const int64_t wb = (int64_t)h.records.size(), pb = (int64_t)h.perm.size() * 4, rb = (int64_t)h.rowptr.size() * 4,
                ob = nnz * 4;
  weight_bytes = wb + rb + ob;
  use_device(dev);
  void* at[4];
  storage_ = upload_arrays({{h.records.data(), wb}, {h.perm.data(), pb}, {h.rowptr.data(), rb}, {h.outliers.data(), ob}},
                           at, &bytes, "SpQR weights");
  records = static_cast<const uint8_t*>(at[0]);
  perm = static_cast<const int32_t*>(at[1]);  // null without a permutation
  rowptr = static_cast<const int32_t*>(at[2]);
  outliers = static_cast<const uint32_t*>(at[3]);
}

SpqrDeviceWeights::~SpqrDeviceWeights() {
  if (storage_) cudaFree(storage_);
  if (xs) cudaFree(xs);
  if (partial) cudaFree(partial);
  if (counters) cudaFree(counters);
}

std::unique_ptr<SpqrDeviceWeights> spqr_repack(const SpqrMatrix& host, int device) {
  return std::make_unique<SpqrDeviceWeights>(repack_spqr_host(host), device);
}

}  // namespace cuda
}  // namespace lowbit
