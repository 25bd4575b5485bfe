// Load-time repack of a GPTQ checkpoint matrix into the kernels' layout (layout.hpp), its exact
// inverse (for tests), and the upload to a GPU.
//
// Act-order (g_idx): the columns of K are sorted by group once here, each group's run padded to a
// multiple of a slot (32) — or of a chunk (128) when every run is at least that long, so that a
// chunk stays in one group — and the product gathers X into that order (perm) before the kernel.
// Without g_idx and with groups that are whole slots, the order is the identity and X is read as is.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "../../native/core/common.hpp"
#include "../../native/core/pack.hpp"
#include "../cuda_check.cuh"
#include "../packed_memory.cuh"
#include "gptq_kernels.hpp"
#include "layout.hpp"

namespace lowbit {
namespace cuda {

using namespace gptq_layout;

namespace {

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

uint16_t f16_of_small_int(int v) {
  // Integers 0..2048 are exact in fp16: exponent and mantissa written directly.
  if (v == 0) return 0;
  int e = 0;
  while ((v >> (e + 1)) != 0) ++e;
  const uint32_t mant = ((uint32_t)v << (10 - e)) & 0x3ff;
  return (uint16_t)(((e + 15) << 10) | mant);
}

int small_int_of_f16(uint16_t h) {
  if (h == 0) return 0;
  const int e = ((h >> 10) & 31) - 15;
  return (int)(((h & 0x3ff) | 0x400) >> (10 - e));
}

}  // namespace

GptqRepacked repack_gptq_host(const PackedMatrix& W) {
  require(W.bits == 2 || W.bits == 3 || W.bits == 4, "E_BITS", "the GPTQ GPU kernels take bits 2, 3 or 4");
  require(W.K > 0 && W.N > 0 && W.groups > 0, "E_SHAPE", "empty packed matrix");
  GptqRepacked R;
  R.bits = W.bits;
  R.K = W.K;
  R.N = W.N;
  R.groups = W.groups;
  R.Np = round_up(W.N, kPadN);

  // Columns of K in group order (stable), each group's run padded.
  std::vector<std::vector<int32_t>> runs((size_t)W.groups);
  bool sorted = true;
  int64_t prev = 0;
  for (int64_t k = 0; k < W.K; ++k) {
    const int64_t g = W.group_of(k);
    require(g >= 0 && g < W.groups, "E_GROUP_SIZE", "g_idx entry out of range");
    if (g < prev) sorted = false;
    prev = g;
    runs[(size_t)g].push_back((int32_t)k);
  }
  int last = -1;
  for (int64_t g = 0; g < W.groups; ++g)
    if (!runs[(size_t)g].empty()) last = (int)g;
  bool long_runs = true;
  for (int64_t g = 0; g < W.groups; ++g)
    if (g != last && !runs[(size_t)g].empty() && runs[(size_t)g].size() % kChunk != 0) long_runs = false;
  const int64_t unit = long_runs ? kChunk : kSlot;
  std::vector<int32_t> perm, perm_group;
  for (int64_t g = 0; g < W.groups; ++g) {
    const auto& r = runs[(size_t)g];
    if (r.empty()) continue;
    for (int32_t k : r) perm.push_back(k), perm_group.push_back((int32_t)g);
    while ((int64_t)perm.size() % unit) perm.push_back(-1), perm_group.push_back((int32_t)g);
  }
  R.Kp = round_up((int64_t)perm.size(), kChunk);
  while ((int64_t)perm.size() < R.Kp) perm.push_back(-1), perm_group.push_back(perm_group.back());
  R.identity_k = sorted;
  for (int64_t i = 0; i < R.Kp && R.identity_k; ++i)
    if (i < W.K ? perm[(size_t)i] != i : perm[(size_t)i] != -1) R.identity_k = false;
  R.slot_group.resize((size_t)(R.Kp / kSlot));
  for (int64_t s = 0; s < R.Kp / kSlot; ++s) R.slot_group[(size_t)s] = perm_group[(size_t)(s * kSlot)];
  R.uniform_chunks = true;
  for (int64_t c = 0; c < R.Kp / kChunk; ++c)
    for (int t = 1; t < 4; ++t)
      if (R.slot_group[(size_t)(c * 4 + t)] != R.slot_group[(size_t)(c * 4)]) R.uniform_chunks = false;
  R.perm = perm;

  // Unpack the checkpoint once: q [N, K], zeros [G, N].
  std::vector<uint8_t> q((size_t)(W.N * W.K));
  unpack_qweight(W.qweight, W.N, W.K, W.bits, q.data());
  std::vector<int32_t> zeros((size_t)(W.groups * W.N));
  unpack_qzeros(W.qzeros, W.groups, W.N, W.bits, W.zero_offset, zeros.data());

  const int64_t ntiles = R.Np / kTileN, chunks = R.Kp / kChunk, rb = record_bytes(W.bits);
  R.weights.assign((size_t)(ntiles * chunks * rb), 0);
  for (int64_t nt = 0; nt < ntiles; ++nt)
    for (int64_t c = 0; c < chunks; ++c) {
      uint8_t* rec = R.weights.data() + record_index(nt, c, chunks) * rb;
      for (int lane = 0; lane < 32; ++lane) {
        const int g = lane / 4, t = lane % 4;
        uint32_t words[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int j = 0; j < 8; ++j)
          for (int r = 0; r < 4; ++r)
            for (int h = 0; h < 2; ++h) {
              const int64_t n = nt * kTileN + g + 8 * (r & 1);
              const int64_t kp = c * kChunk + kSlot * t + 4 * j + 2 * (r >> 1) + h;
              const int32_t k = perm[(size_t)kp];
              const uint32_t v = (n < W.N && k >= 0) ? q[(size_t)(n * W.K + k)] : 0u;
              switch (W.bits) {
                case 4: words[j] |= v << nibble_bit(r, h); break;
                case 2: words[j / 2] |= v << two_bit(j, r, h); break;
                case 3:
                  words[j / 2] |= (v & 3u) << (nibble_bit(r, h) + 2 * (j & 1));
                  words[4 + j / 4] |= (v >> 2) << hi3_bit(j, r, h);
                  break;
              }
            }
        switch (W.bits) {
          case 4:
            std::memcpy(rec + lane * 16, words, 16);
            std::memcpy(rec + 512 + lane * 16, words + 4, 16);
            break;
          case 3:
            std::memcpy(rec + lane * 16, words, 16);
            std::memcpy(rec + 512 + lane * 8, words + 4, 8);
            break;
          case 2: std::memcpy(rec + lane * 16, words, 16); break;
        }
      }
    }

  R.scale_zero.assign((size_t)(W.groups * ntiles * 32), 0);
  for (int64_t g = 0; g < W.groups; ++g)
    for (int64_t nt = 0; nt < ntiles; ++nt)
      for (int i = 0; i < 8; ++i) {
        uint16_t* p = R.scale_zero.data() + ((g * ntiles + nt) * 8 + i) * 4;
        for (int half = 0; half < 2; ++half) {
          const int64_t n = nt * kTileN + i + 8 * half;
          if (n >= W.N) continue;
          p[half] = W.scales[g * W.N + n];
          const int z = zeros[(size_t)(g * W.N + n)];
          p[2 + half] = f16_of_small_int(z);
        }
      }
  return R;
}

void unrepack_gptq_host(const GptqRepacked& R, std::vector<uint8_t>& q, std::vector<int32_t>& zeros,
                        std::vector<uint16_t>& scales) {
  const int64_t ntiles = R.Np / kTileN, chunks = R.Kp / kChunk, rb = record_bytes(R.bits);
  q.assign((size_t)(R.N * R.K), 0xff);
  for (int64_t nt = 0; nt < ntiles; ++nt)
    for (int64_t c = 0; c < chunks; ++c) {
      const uint8_t* rec = R.weights.data() + record_index(nt, c, chunks) * rb;
      for (int lane = 0; lane < 32; ++lane) {
        const int g = lane / 4, t = lane % 4;
        uint32_t words[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        switch (R.bits) {
          case 4:
            std::memcpy(words, rec + lane * 16, 16);
            std::memcpy(words + 4, rec + 512 + lane * 16, 16);
            break;
          case 3:
            std::memcpy(words, rec + lane * 16, 16);
            std::memcpy(words + 4, rec + 512 + lane * 8, 8);
            break;
          case 2: std::memcpy(words, rec + lane * 16, 16); break;
        }
        for (int j = 0; j < 8; ++j)
          for (int r = 0; r < 4; ++r)
            for (int h = 0; h < 2; ++h) {
              uint32_t v = 0;
              switch (R.bits) {
                case 4: v = (words[j] >> nibble_bit(r, h)) & 15u; break;
                case 2: v = (words[j / 2] >> two_bit(j, r, h)) & 3u; break;
                case 3:
                  v = ((words[j / 2] >> (nibble_bit(r, h) + 2 * (j & 1))) & 3u) |
                      (((words[4 + j / 4] >> hi3_bit(j, r, h)) & 1u) << 2);
                  break;
              }
              const int64_t n = nt * kTileN + g + 8 * (r & 1);
              const int64_t kp = c * kChunk + kSlot * t + 4 * j + 2 * (r >> 1) + h;
              const int32_t k = R.perm[(size_t)kp];
              if (n < R.N && k >= 0) q[(size_t)(n * R.K + k)] = (uint8_t)v;
              else if (v != 0) fail("E_INTERNAL", "nonzero padding in the repacked weights");
            }
      }
    }
  zeros.assign((size_t)(R.groups * R.N), -1);
  scales.assign((size_t)(R.groups * R.N), 0xffff);
  for (int64_t g = 0; g < R.groups; ++g)
    for (int64_t n = 0; n < R.N; ++n) {
      const int64_t nt = n / kTileN, i = n % 8, half = (n % kTileN) / 8;
      const uint16_t* p = R.scale_zero.data() + ((g * ntiles + nt) * 8 + i) * 4;
      scales[(size_t)(g * R.N + n)] = p[half];
      zeros[(size_t)(g * R.N + n)] = small_int_of_f16(p[2 + half]);
    }
}

namespace {
}  // namespace

GptqDeviceWeights::GptqDeviceWeights(const GptqRepacked& h, int dev) {
  device = dev;
  bits = h.bits;
  K = h.K, N = h.N, Kp = h.Kp, Np = h.Np, groups = h.groups;
  identity_k = h.identity_k;
  uniform_chunks = h.uniform_chunks;
  const int64_t wb = (int64_t)h.weights.size(), sb = (int64_t)h.scale_zero.size() * 2,
                gb = (int64_t)h.slot_group.size() * 4, pb = identity_k ? 0 : (int64_t)h.perm.size() * 4;
  weight_bytes = wb + sb;
  use_device(dev);
  void* at[4];
  storage_ = upload_arrays({{h.weights.data(), wb}, {h.scale_zero.data(), sb}, {h.slot_group.data(), gb}, {h.perm.data(), pb}},
                           at, &bytes, "GPTQ weights");
  weights = at[0];
  scale_zero = at[1];
  slot_group = static_cast<const int32_t*>(at[2]);
  perm = static_cast<const int32_t*>(at[3]);  // null when identity_k
}

GptqDeviceWeights::~GptqDeviceWeights() {
  if (storage_) cudaFree(storage_);
  if (xperm) cudaFree(xperm);
  if (partial) cudaFree(partial);
  if (counters) cudaFree(counters);
}

std::unique_ptr<GptqDeviceWeights> gptq_repack(const PackedMatrix& host, int device) {
  const GptqRepacked R = repack_gptq_host(host);
  return std::make_unique<GptqDeviceWeights>(R, device);
}

}  // namespace cuda
}  // namespace lowbit
