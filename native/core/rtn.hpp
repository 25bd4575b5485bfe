// Round-to-nearest quantization: the baseline every other method is measured against.
#pragma once

#include <cstdint>

#include "quant_grid.hpp"

namespace lowbit {

// Number of groups along K for a group size (<= 0 or >= K: one group, i.e. per output channel).
inline int64_t group_count(int64_t K, int64_t group_size) {
  return (group_size <= 0 || group_size >= K) ? 1 : (K + group_size - 1) / group_size;
}
inline int64_t effective_group_size(int64_t K, int64_t group_size) {
  return (group_size <= 0 || group_size >= K) ? K : group_size;
}

// W: [N, K] f32 (out x in). Writes q [N, K], scales [G, N] (fp16-exact floats), zeros [G, N].
// The last group may be partial when K is not a multiple of group_size.
void rtn_quantize(const float* W, int64_t N, int64_t K, int64_t group_size, const GridOptions& opt, uint8_t* q,
                  float* scales, int32_t* zeros);

}  // namespace lowbit
