// A view of one linear layer's weight in the GPTQ layout (see pack.hpp). Not owning: the buffers
// belong to the caller (typed arrays from JavaScript, or a model's weight store).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common.hpp"
#include "weight_format.hpp"

namespace lowbit {

struct PackedMatrix {
  int bits = 4;
  int64_t K = 0;           // input features (logical, before packing pads)
  int64_t N = 0;           // output features
  int64_t group_size = 0;  // columns per group along K (K for per-channel)
  int64_t groups = 0;      // rows of scales/qzeros: ceil(K / group_size) without g_idx, else max(g_idx)+1
  int zero_offset = 1;     // stored zero = zero - zero_offset (1: "gptq" v1, 0: "gptq_v2")
  const int32_t* qweight = nullptr;  // [packed_words(bits, K), N]
  const int32_t* qzeros = nullptr;   // [groups, packed_words(bits, N)]
  const uint16_t* scales = nullptr;  // fp16 [groups, N]
  const int32_t* g_idx = nullptr;    // [K] group of each input column, or null for k / group_size

  // Buffer sizes, overflow-checked (E_SHAPE).
  int64_t qweight_words() const { return checked_mul(packed_words(bits, K), N, "qweight words"); }
  int64_t qzeros_words() const { return checked_mul(groups, packed_words(bits, N), "qzeros words"); }
  int64_t scales_count() const { return checked_mul(groups, N, "scales"); }
  int64_t group_of(int64_t k) const { return g_idx ? g_idx[k] : k / group_size; }
};

// Checks the sizes W implies (overflow-checked) against the lengths of the buffers behind it, reading
// no buffer (has_g_idx says whether a g_idx comes with it). Throws E_SHAPE / E_BUFFER / E_GROUP_SIZE / E_BITS.
void validate_packed_sizes(const PackedMatrix& W, bool has_g_idx, int64_t qweight_len, int64_t qzeros_len,
                           int64_t scales_len, int64_t g_idx_len);
// Checks that every g_idx entry lies in [0, groups) (E_GROUP_SIZE); nothing without g_idx.
void validate_g_idx(const PackedMatrix& W);

// Both: the sizes a PackedMatrix implies against the lengths of the buffers behind it, and that
// g_idx entries lie in [0, groups). Throws E_SHAPE / E_BUFFER / E_GROUP_SIZE / E_BITS.
void validate_packed(const PackedMatrix& W, int64_t qweight_len, int64_t qzeros_len, int64_t scales_len,
                     int64_t g_idx_len);

// Several matrices that read one input (q/k/v, gate/up) side by side along N: one product whose
// output row is theirs laid end to end, in place of one product each. Owns its buffers; `matrix`
// views them (so the object is not copied or moved once built).
struct PackedColumns {
  std::vector<int32_t> qweight, qzeros, g_idx;
  std::vector<uint16_t> scales;
  PackedMatrix matrix;
  PackedColumns() = default;
  PackedColumns(const PackedColumns&) = delete;
  PackedColumns& operator=(const PackedColumns&) = delete;
};

// Fills `out` with `parts` side by side when they agree on bits, K, group size, groups, zero offset
// and g_idx (the act-order permutation: equal entries, or none on every part), and each part's N is
// a whole number of qzeros pack units (so qzeros rows join word by word); returns false otherwise,
// leaving out as it was. Every part must be valid (validate_packed).
bool concat_packed_columns(const std::vector<const PackedMatrix*>& parts, PackedColumns& out);

}  // namespace lowbit
