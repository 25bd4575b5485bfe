// The rotary-embedding table, computed on the host the same way for every backend (the CPU's ops
// read it directly; CUDA uploads it), so that both round the angles identically.
#pragma once

#include <cstdint>
#include <vector>

namespace lowbit {
namespace model {

// cos/sin of the rotary angles for `n` consecutive positions starting at p0: [n][inv_freq.size()].
struct RopeTable {
  int64_t half = 0;
  std::vector<float> cos, sin;
  void build(const std::vector<float>& inv_freq, float scale, int64_t p0, int64_t n);
};

}  // namespace model
}  // namespace lowbit
