#include "packed_matrix.hpp"

#include <algorithm>

namespace lowbit {

void validate_packed_sizes(const PackedMatrix& W, bool has_g_idx, int64_t qweight_len, int64_t qzeros_len,
                           int64_t scales_len, int64_t g_idx_len) {
  weight_format(W.bits);
  require(W.K > 0 && W.N > 0, "E_SHAPE", "K and N must be positive");
  require(W.group_size > 0 && W.group_size <= W.K, "E_GROUP_SIZE",
          "group size " + std::to_string(W.group_size) + " does not fit K = " + std::to_string(W.K));
  require(W.zero_offset == 0 || W.zero_offset == 1, "E_ARGUMENT", "zero offset must be 0 or 1");
  if (!has_g_idx) {
    require(W.groups == ceil_div(W.K, W.group_size), "E_SHAPE",
            "groups must be ceil(K / group_size) = " + std::to_string(ceil_div(W.K, W.group_size)) + ", got " +
                std::to_string(W.groups));
  } else {
    require(W.groups > 0, "E_SHAPE", "groups must be positive");
  }
  const int64_t qweight_words = W.qweight_words(), qzeros_words = W.qzeros_words(), scales = W.scales_count();
  require(qweight_len >= qweight_words, "E_BUFFER",
          "qweight holds " + std::to_string(qweight_len) + " words, needs " + std::to_string(qweight_words));
  require(qzeros_len >= qzeros_words, "E_BUFFER",
          "qzeros holds " + std::to_string(qzeros_len) + " words, needs " + std::to_string(qzeros_words));
  require(scales_len >= scales, "E_BUFFER",
          "scales holds " + std::to_string(scales_len) + " values, needs " + std::to_string(scales));
  if (has_g_idx)
    require(g_idx_len >= W.K, "E_BUFFER", "g_idx holds " + std::to_string(g_idx_len) + " entries, needs K");
}

void validate_g_idx(const PackedMatrix& W) {
  if (!W.g_idx) return;
  for (int64_t k = 0; k < W.K; ++k)  // (the message only on failure: this runs on every product)
    if (W.g_idx[k] < 0 || W.g_idx[k] >= W.groups)
      fail("E_GROUP_SIZE", "g_idx[" + std::to_string(k) + "] = " + std::to_string(W.g_idx[k]) + " is outside [0, " +
                               std::to_string(W.groups) + ")");
}

void validate_packed(const PackedMatrix& W, int64_t qweight_len, int64_t qzeros_len, int64_t scales_len,
                     int64_t g_idx_len) {
  validate_packed_sizes(W, W.g_idx != nullptr, qweight_len, qzeros_len, scales_len, g_idx_len);
  validate_g_idx(W);
}

bool concat_packed_columns(const std::vector<const PackedMatrix*>& parts, PackedColumns& out) {
  if (parts.empty()) return false;
  const PackedMatrix& first = *parts[0];
  const int unit = weight_format(first.bits).values_per_unit;
  int64_t N = 0;
  for (const PackedMatrix* p : parts) {
    if (p->bits != first.bits || p->K != first.K || p->group_size != first.group_size || p->groups != first.groups ||
        p->zero_offset != first.zero_offset || !p->g_idx != !first.g_idx || p->N % unit != 0)
      return false;
    if (p->g_idx && !std::equal(p->g_idx, p->g_idx + p->K, first.g_idx)) return false;
    N = checked_add(N, p->N, "concatenated N");
  }
  const int64_t kwords = packed_words(first.bits, first.K), zwords = packed_words(first.bits, N);
  out.qweight.assign((size_t)checked_mul(kwords, N, "qweight words"), 0);
  out.qzeros.assign((size_t)checked_mul(first.groups, zwords, "qzeros words"), 0);
  out.scales.assign((size_t)checked_mul(first.groups, N, "scales"), 0);
  int64_t n0 = 0, z0 = 0;  // this part's first column, and first qzeros word
  for (const PackedMatrix* p : parts) {
    const int64_t pz = packed_words(p->bits, p->N);
    for (int64_t r = 0; r < kwords; ++r)
      std::copy(p->qweight + r * p->N, p->qweight + (r + 1) * p->N, out.qweight.begin() + r * N + n0);
    for (int64_t g = 0; g < first.groups; ++g) {
      std::copy(p->qzeros + g * pz, p->qzeros + (g + 1) * pz, out.qzeros.begin() + g * zwords + z0);
      std::copy(p->scales + g * p->N, p->scales + (g + 1) * p->N, out.scales.begin() + g * N + n0);
    }
    n0 += p->N;
    z0 += pz;
  }
  if (first.g_idx) out.g_idx.assign(first.g_idx, first.g_idx + first.K);
  out.matrix = first;
  out.matrix.N = N;
  out.matrix.qweight = out.qweight.data();
  out.matrix.qzeros = out.qzeros.data();
  out.matrix.scales = out.scales.data();
  out.matrix.g_idx = first.g_idx ? out.g_idx.data() : nullptr;
  return true;
}

}  // namespace lowbit
