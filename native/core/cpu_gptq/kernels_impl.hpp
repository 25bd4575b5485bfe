// The kernel source of the repacked GPTQ products, compiled once per SIMD level. Not an ordinary
// header: the including file (kernels_scalar.cpp, kernels_avx2.cpp, kernels_avx512.cpp) defines
//   LOWBIT_GPTQ_NS   the namespace of its level,
//   LOWBIT_TARGET    the attribute that enables the level's instructions (empty for scalar),
//   LOWBIT_OPS       the attribute of its vector operations (always inline, same target),
// and one or more vector-operation structs (the contract is listed below), then includes this file
// and defines gemm_int8 / gemm_f32 by picking a struct at run time (e.g. VNNI or not).
//
// Vector-operation contract (one "vector" = 16 output columns, whatever the hardware width):
//   U: 64 bytes (lane c = bytes 4c..4c+3), I: 16 int32, F: 16 float
//   U load(const uint8_t*)            64-byte aligned load of a chunk
//   U and8(U, uint8_t)                bytewise and with a constant
//   U srl16<S>(U)                     shift every 16-bit element right (bits cross bytes: callers mask)
//   U merge3(U lo, U hi)              (lo & 3) | (hi & 4), bytewise
//   I dot(I acc, U w, const int8_t* x)  lane c += Σ_j w[4c + j] · x[j] (w unsigned, x signed)
//   I zero_i(); F zero_f(); F set1(float); F cvt(I); F load_f16(const uint16_t*) (16 halves);
//   F load_u8(const uint8_t*) (16 bytes as floats); F load(const float*); void store(float*, F);
//   F fma(F a, F b, F c) = a·b + c; F fnma(F a, F b, F c) = c − a·b; F mul(F, F); F sub(F, F);
//   F byte<J>(U)                      byte J of each lane as a float
//   I srai<S>(I)                      arithmetic shift right of every int32 lane
//   DOT_ANY_U8: dot is exact for any unsigned byte (VNNI, scalar), not only for values ≤ 15
//   constants GEMV_NB, GEMM_MR, GEMM_NB: column blocks per GEMV register tile (a GEMV task is one
//   panel of 4 blocks, GEMV_NB at a time within each segment), rows and blocks per GEMM tile;
//   GEMV_NB3: the same for 3 bits (its 3 chunks and 4 scaled accumulators per block);
//   all of them divide kPanelBlocks (4);
//   GEMV_P: accumulators per block in the 2- and 3-bit GEMV (4: SCALED parts, when registers allow; else 2).

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "../common.hpp"
#include "../thread_pool.hpp"
#include "kernels.hpp"
#include "repack.hpp"

namespace lowbit {
namespace cpu_gptq {
namespace LOWBIT_GPTQ_NS {

#if defined(__clang__)
#define LOWBIT_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define LOWBIT_UNROLL _Pragma("GCC unroll 16")
#else
#define LOWBIT_UNROLL
#endif
#define LOWBIT_KERNEL LOWBIT_TARGET inline __attribute__((always_inline))

// Slice S (positions 4S..4S+3 of a unit) of the chunks c[] as unsigned bytes 0..2^BITS − 1, per the
// layout in repack.hpp. Every shift is a compile-time constant (the exact path and the levels whose
// dot cannot take every byte use these).
template <int BITS, int S, class O>
LOWBIT_KERNEL typename O::U slice(const typename O::U* c) {
  if constexpr (BITS == 4) {
    if constexpr (S % 2 == 0) return O::and8(c[S / 2], 0x0F);
    else return O::and8(O::template srl16<4>(c[S / 2]), 0x0F);
  } else if constexpr (BITS == 2) {
    if constexpr (S % 4 == 0) return O::and8(c[S / 4], 0x03);
    else if constexpr (S % 4 == 3) return O::template srl16<6>(O::and8(c[S / 4], 0xC0));
    else return O::and8(O::template srl16<2 * (S % 4)>(c[S / 4]), 0x03);
  } else if constexpr (S == 0 || S == 2 || S == 4) {  // 3 bits: a whole value at bit 0 of b0, b1, b2
    return O::and8(c[S / 2], 0x07);
  } else if constexpr (S == 1 || S == 3) {  // at bit 5 of b0, b1
    return O::and8(O::template srl16<5>(c[S / 2]), 0x07);
  } else if constexpr (S == 5) {  // at bit 3 of b2
    return O::and8(O::template srl16<3>(c[2]), 0x07);
  } else {  // slices 6, 7: low bits at bit 3 of b0 / b1, high bit at bit S of b2
    return O::merge3(O::template srl16<3>(c[S - 6]), O::template srl16<S - 2>(c[2]));
  }
}

// SCALED unpacking, for levels whose dot takes any unsigned byte (VNNI, scalar): a field is only
// masked in place, giving q · 2^offset, one instruction instead of a shift and a mask; its dot
// products go to the accumulator of that offset, shifted back once per segment (exact: every term
// is a multiple of that power of two). A slice is one part (4 and 2 bits, 3-bit slices 0-5) or two
// (3-bit slices 6 and 7: the low 2 bits, and the high bit, worth 4 · bit, in the accumulator whose
// shift makes it so). Accumulator p of a width sums the parts whose value is 2^scaled_shift(p) too large.
template <int BITS>
constexpr int scaled_accumulators() { return BITS == 4 ? 2 : 4; }
template <int BITS>
constexpr int scaled_shift(int p) { return BITS == 4 ? 4 * p : BITS == 2 ? 2 * p : (p == 0 ? 0 : p + 2); }  // 3: 0, 3, 4, 5
template <int BITS, int S>
constexpr int scaled_parts() { return BITS == 3 && S >= 6 ? 2 : 1; }

struct ScaledPart {
  int chunk, mask, acc;
};
template <int BITS, int S, int PART>
constexpr ScaledPart scaled_part() {
  if constexpr (BITS == 4) return {S / 2, 0x0F << (4 * (S % 2)), S % 2};
  else if constexpr (BITS == 2) return {S / 4, 0x03 << (2 * (S % 4)), S % 4};
  else if constexpr (S == 0 || S == 2 || S == 4) return {S / 2, 0x07, 0};
  else if constexpr (S == 1 || S == 3) return {S / 2, 0xE0, 3};  // q · 32
  else if constexpr (S == 5) return {2, 0x38, 1};                  // q · 8
  else if constexpr (PART == 0) return {S - 6, 0x18, 1};           // low bits · 8
  else return {2, 1 << S, S - 4};  // high bit · 2^S = (4 · bit) · 2^(S − 2): shift 4 (S = 6), 5 (S = 7)
}

template <int BITS>
constexpr int chunks_per_unit() { return BITS == 4 ? 4 : BITS == 3 ? 3 : 2; }

// Whether tiles with P accumulators per block use SCALED parts: P must be the width's scaled
// accumulators and the level's dot must take any unsigned byte (vpmaddubsw's int16 pair sums would
// saturate on 0xE0 · 127 · 2).
template <int BITS, int P, class O>
constexpr bool scaled_slices() { return O::DOT_ANY_U8 && scaled_accumulators<BITS>() == P; }

// Scaled: acc[r][nb][part's accumulator] += each part of slice S of block nb · x[r][4S..4S+3]; else
// acc[r][nb][S % P] += slice S · x. For slices S..7 (compile-time recursion).
template <int BITS, int S, int MR, int NB, int P, class O>
LOWBIT_KERNEL void dot_slices(const typename O::U (*c)[chunks_per_unit<BITS>()], const int8_t* const* x,
                              typename O::I (*acc)[NB][P]) {
  if constexpr (S < 8) {
    if constexpr (scaled_slices<BITS, P, O>()) {
      constexpr ScaledPart a = scaled_part<BITS, S, 0>();
      typename O::U w[NB];
      LOWBIT_UNROLL for (int nb = 0; nb < NB; ++nb) w[nb] = O::and8(c[nb][a.chunk], (uint8_t)a.mask);
      LOWBIT_UNROLL for (int r = 0; r < MR; ++r)
        LOWBIT_UNROLL for (int nb = 0; nb < NB; ++nb) acc[r][nb][a.acc] = O::dot(acc[r][nb][a.acc], w[nb], x[r] + 4 * S);
      if constexpr (scaled_parts<BITS, S>() > 1) {
        constexpr ScaledPart b = scaled_part<BITS, S, 1>();
        LOWBIT_UNROLL for (int nb = 0; nb < NB; ++nb) w[nb] = O::and8(c[nb][b.chunk], (uint8_t)b.mask);
        LOWBIT_UNROLL for (int r = 0; r < MR; ++r)
          LOWBIT_UNROLL for (int nb = 0; nb < NB; ++nb) acc[r][nb][b.acc] = O::dot(acc[r][nb][b.acc], w[nb], x[r] + 4 * S);
      }
    } else {
      typename O::U w[NB];
      LOWBIT_UNROLL for (int nb = 0; nb < NB; ++nb) w[nb] = slice<BITS, S, O>(c[nb]);
      LOWBIT_UNROLL for (int r = 0; r < MR; ++r)
        LOWBIT_UNROLL for (int nb = 0; nb < NB; ++nb) acc[r][nb][S % P] = O::dot(acc[r][nb][S % P], w[nb], x[r] + 4 * S);
    }
    dot_slices<BITS, S + 1, MR, NB, P, O>(c, x, acc);
  }
}

// One tile: rows [row0, row0 + MR) × blocks [block0, block0 + TB) (inside one panel) over the whole
// of K, written to ytile[r][b·16 + c]. Within each segment the blocks go NB at a time (the register
// tile); per segment and block the int32 sums become floats once: y += s·dx·(Σ q·xq − z·Σ xq).
template <int BITS, int MR, int NB, int TB, int P, class O>
LOWBIT_TARGET void tile_int8(const CpuGptqWeights& W, int64_t block0, const Activations& A, int64_t row0,
                             float* ytile) {
  static_assert(TB % NB == 0 && kPanelBlocks % TB == 0, "a tile is whole register tiles inside one panel");
  constexpr int CH = chunks_per_unit<BITS>();
  constexpr int64_t unit_bytes = 64 * CH, row_bytes = kPanelBlocks * unit_bytes;  // W.unit_bytes, as a constant
  typename O::F y[MR][TB];
  LOWBIT_UNROLL for (int r = 0; r < MR; ++r) LOWBIT_UNROLL for (int b = 0; b < TB; ++b) y[r][b] = O::zero_f();
  const uint8_t* const panel = W.header(block0, W.segments[0]);  // the first segment starts the panel
  const int64_t slot0 = block0 % kPanelBlocks;
  const int64_t S = (int64_t)W.segments.size();
  // Software prefetch distances in bytes of the panel's stream (repack.hpp's prefetch settings, in
  // KiB: the same bytes in flight whatever the width); a unit of the stream is the 4 blocks' unit data.
  const Prefetch pf = prefetch();
  const int64_t ahead_l1 = pf.near_kib * int64_t{1024}, ahead_l2 = pf.far_kib * int64_t{1024};
  for (int64_t si = 0; si < S; ++si) {
    const Segment& seg = W.segments[(size_t)si];
    const uint8_t* const header = panel + seg.offset;
    // The unit prefetches below step over the stream a unit at a time from each unit's start; the
    // header's three lines shift the next segment by 192 bytes, so those lines at the prefetch
    // distance are fetched here. And a later segment's header (scales, zero points) into L2.
    if (ahead_l1 > 0) LOWBIT_UNROLL for (int h = 0; h < 3; ++h) __builtin_prefetch(header + ahead_l1 + 64 * h, 0, 3);
    if (ahead_l2 > 0) LOWBIT_UNROLL for (int h = 0; h < 3; ++h) __builtin_prefetch(header + ahead_l2 + 64 * h, 0, 2);
    if (pf.scale_segments > 0 && si + pf.scale_segments < S) {
      const uint8_t* later = panel + W.segments[(size_t)(si + pf.scale_segments)].offset;
      LOWBIT_UNROLL for (int h = 0; h < 3; ++h) __builtin_prefetch(later + 64 * h, 0, 2);
    }
    LOWBIT_UNROLL for (int j = 0; j < TB; j += NB) {
      typename O::I acc[MR][NB][P];
      LOWBIT_UNROLL for (int r = 0; r < MR; ++r) LOWBIT_UNROLL for (int nb = 0; nb < NB; ++nb)
        LOWBIT_UNROLL for (int p = 0; p < P; ++p) acc[r][nb][p] = O::zero_i();
      // This pass's NB blocks are side by side in every unit of the stream.
      const uint8_t* row = header + kHeaderBytes + (slot0 + j) * unit_bytes;
      const int8_t* x[MR];
      LOWBIT_UNROLL for (int r = 0; r < MR; ++r) x[r] = A.xq + (row0 + r) * A.padded_k + seg.unit0 * kUnitK;
      for (int64_t u = 0; u < seg.units; ++u, row += row_bytes) {
        // Every line of this pass a few KiB ahead into L1, so that loads stay in flight while the
        // core computes; farther ahead into L2 as well, for weights streamed from DRAM. Past the
        // panel's end these reach the next panel, which the same thread reads next (for_each_task).
        if (ahead_l1 > 0) LOWBIT_UNROLL for (int h = 0; h < NB * CH; ++h) __builtin_prefetch(row + ahead_l1 + 64 * h, 0, 3);
        if (ahead_l2 > 0) LOWBIT_UNROLL for (int h = 0; h < NB * CH; ++h) __builtin_prefetch(row + ahead_l2 + 64 * h, 0, 2);
        typename O::U c[NB][CH];
        LOWBIT_UNROLL for (int nb = 0; nb < NB; ++nb)
          LOWBIT_UNROLL for (int h = 0; h < CH; ++h) c[nb][h] = O::load(row + nb * unit_bytes + 64 * h);
        dot_slices<BITS, 0, MR, NB, P, O>(c, x, acc);
        LOWBIT_UNROLL for (int r = 0; r < MR; ++r) x[r] += kUnitK;
      }
      LOWBIT_UNROLL for (int nb = 0; nb < NB; ++nb) {
        const int64_t block = block0 + j + nb;
        const typename O::F scale = O::load_f16(CpuGptqWeights::scales_of(header, block));
        const typename O::F zero = O::load_u8(CpuGptqWeights::zeros_of(header, block));
        LOWBIT_UNROLL for (int r = 0; r < MR; ++r) {
          typename O::I a = acc[r][nb][0];
          if constexpr (scaled_slices<BITS, P, O>()) {
            if constexpr (P > 1) a = O::add_i(a, O::template srai<scaled_shift<BITS>(1)>(acc[r][nb][1]));
            if constexpr (P > 2) a = O::add_i(a, O::template srai<scaled_shift<BITS>(2)>(acc[r][nb][2]));
            if constexpr (P > 3) a = O::add_i(a, O::template srai<scaled_shift<BITS>(3)>(acc[r][nb][3]));
          } else {
            LOWBIT_UNROLL for (int p = 1; p < P; ++p) a = O::add_i(a, acc[r][nb][p]);
          }
          const int64_t rs = (row0 + r) * A.segments + si;
          // Σ q·xq and z·Σ xq are integers below 2^24: exact in f32, and so is their difference.
          const typename O::F dot = O::fnma(zero, O::set1(A.xsum[rs]), O::cvt(a));
          y[r][j + nb] = O::fma(O::mul(scale, O::set1(A.dx[rs])), dot, y[r][j + nb]);
        }
      }
    }
  }
  LOWBIT_UNROLL for (int r = 0; r < MR; ++r)
    LOWBIT_UNROLL for (int b = 0; b < TB; ++b) O::store(ytile + (r * TB + b) * kBlockCols, y[r][b]);
}

// Copies a tile's rows into Y, dropping the padding columns past N.
inline void write_tile(const float* ytile, int rows, int64_t NBcols, int64_t col0, int64_t N, int64_t row0,
                       float* Y) {
  const int64_t width = std::min(NBcols, N - col0);
  if (width <= 0) return;
  for (int r = 0; r < rows; ++r)
    std::memcpy(Y + (row0 + r) * N + col0, ytile + r * NBcols, (size_t)width * sizeof(float));
}

template <int BITS, int MR, int NB, int P, class O>
LOWBIT_TARGET void tile_rows(int rows, const CpuGptqWeights& W, int64_t block0, const Activations& A, int64_t row0,
                             float* ytile) {
  if constexpr (MR > 1) {
    if (rows < MR) return tile_rows<BITS, MR - 1, NB, 1, O>(rows, W, block0, A, row0, ytile);
  }
  tile_int8<BITS, MR, NB, NB, P, O>(W, block0, A, row0, ytile);
}

// Runs fn(t) for t in [0, tasks) on the pool. Each thread owns a contiguous range of tasks (thread
// i of T: [i·tasks/T, (i+1)·tasks/T)) and takes them in order from its front, so what it reads is
// one run of memory from its first panel to its last, as a streaming read's share is: the software
// and hardware prefetchers run on into the next panel instead of restarting at every task (with
// tasks claimed from one shared counter, the threads alternated panels). A thread that runs out
// takes the other ranges' tasks from their back ends, so the threads still end within one task of
// each other, and a worker that starts late just owns fewer. A range is one 64-bit atomic: front in
// the low half, back (one past the last) in the high half.
class TaskRanges {
 public:
  TaskRanges(int64_t tasks, int ranges) : count_(ranges), ranges_(new Range[(size_t)ranges]) {
    for (int i = 0; i < ranges; ++i)
      ranges_[i].bounds.store(pack(tasks * i / ranges, tasks * (i + 1) / ranges), std::memory_order_relaxed);
  }
  // The next task of range i from its front, else the last of another range, else −1 (all taken).
  int64_t next(int i) {
    int64_t t = take(i, false);
    for (int j = 1; t < 0 && j < count_; ++j) t = take((i + j) % count_, true);
    return t;
  }

 private:
  struct alignas(64) Range {
    std::atomic<uint64_t> bounds{0};
  };
  static uint64_t pack(int64_t front, int64_t back) { return (uint64_t)front | ((uint64_t)back << 32); }
  int64_t take(int i, bool from_back) {
    std::atomic<uint64_t>& b = ranges_[i].bounds;
    uint64_t v = b.load(std::memory_order_relaxed);
    for (;;) {
      const int64_t front = (int64_t)(v & 0xFFFFFFFFu), back = (int64_t)(v >> 32);
      if (front >= back) return -1;
      const uint64_t taken = from_back ? pack(front, back - 1) : pack(front + 1, back);
      if (b.compare_exchange_weak(v, taken, std::memory_order_relaxed)) return from_back ? back - 1 : front;
    }
  }
  int count_;
  std::unique_ptr<Range[]> ranges_;
};

template <class Fn>
void for_each_task(int64_t tasks, const Fn& fn) {
  require(tasks < ((int64_t)1 << 31), "E_ARGUMENT", "too many GEMV tasks for one call");
  const std::shared_ptr<ThreadPool> pool = global_pool();
  const int ranges = (int)std::min<int64_t>(pool->size(), tasks);
  TaskRanges work(tasks, ranges);
  pool->parallel_for(ranges, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t t = work.next((int)r); t >= 0; t = work.next((int)r)) fn(t);
  });
}

template <int BITS, class O>
void gemm_int8_bits(const CpuGptqWeights& W, const Activations& A, float* Y) {
  const int64_t M = A.M, N = W.N;
  if (M == 1) {
    // GEMV: each task streams one panel (one contiguous run of memory) over the whole of K, GEMV_NB
    // blocks at a time. Accumulators per block: one per SCALED offset where the level has the
    // registers for it, else two (independent chains for the dot products' latency).
    constexpr int NB = BITS == 3 ? O::GEMV_NB3 : O::GEMV_NB;
    constexpr int P = BITS == 4 ? 2 : O::GEMV_P;
    for_each_task(W.blocks / kPanelBlocks, [&](int64_t t) {
      alignas(64) float ytile[kPanelBlocks * kBlockCols];
      const int64_t b0 = t * kPanelBlocks;
      tile_int8<BITS, 1, NB, kPanelBlocks, P, O>(W, b0, A, 0, ytile);
      write_tile(ytile, 1, kPanelBlocks * kBlockCols, b0 * kBlockCols, N, 0, Y);
    });
    return;
  }
  // GEMM: a task owns GEMM_NB blocks and walks the rows GEMM_MR at a time; the blocks' weights stay
  // in cache across row tiles, and each unit is unpacked once per GEMM_MR rows. Whole panels of
  // blocks make every task full (GEMM_NB divides kPanelBlocks).
  constexpr int MR = O::GEMM_MR, NB = O::GEMM_NB;
  static_assert(kPanelBlocks % NB == 0, "GEMM column tiles inside one panel");
  global_pool()->parallel_for(W.blocks / NB, 1, [&](int64_t t0, int64_t t1) {
    alignas(64) float ytile[MR * NB * kBlockCols];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b0 = t * NB;
      for (int64_t r0 = 0; r0 < M; r0 += MR) {
        const int rows = (int)std::min<int64_t>(MR, M - r0);
        tile_rows<BITS, MR, NB, 1, O>(rows, W, b0, A, r0, ytile);
        write_tile(ytile, rows, NB * kBlockCols, b0 * kBlockCols, N, r0, Y);
      }
    }
  });
}

template <class O>
void gemm_int8_t(const CpuGptqWeights& W, const Activations& A, float* Y) {
  switch (W.bits) {
    case 2: gemm_int8_bits<2, O>(W, A, Y); break;
    case 3: gemm_int8_bits<3, O>(W, A, Y); break;
    default: gemm_int8_bits<4, O>(W, A, Y); break;
  }
}

// Rows of X gathered into the padded order (act-order's permutation and the padding, in one gather)
// and quantized per segment: dx = max|x| / 127, xq = round-to-nearest-even(x · 127 / max|x|) (as
// lrint), xsum = Σ xq. Vectorized because it runs before every product, on one thread for M = 1.
// Layout: CpuGptqWeights or SpqrPanels (the fields K, source, permuted and segments).
template <class O, class Layout>
LOWBIT_TARGET void quantize_rows_t(const Layout& W, const float* X, int64_t m0, int64_t m1, const Activations& A,
                                   int8_t* xq, float* dx, float* xsum) {
  const int32_t* source = W.source.data();
  alignas(64) float buf[kSegmentK];
  for (int64_t m = m0; m < m1; ++m) {
    const float* x = X + m * W.K;
    for (int64_t si = 0; si < A.segments; ++si) {
      const Segment& seg = W.segments[(size_t)si];
      const int64_t p0 = seg.unit0 * kUnitK, len = seg.units * kUnitK;  // a multiple of 16
      typename O::F amax = O::zero_f();
      for (int64_t i = 0; i < len; i += 16) {
        // Without act-order a run of 16 whose last position is real is x[k .. k + 16) (padding only
        // ends a segment): a plain load; else a gather (zeros for padding).
        const int32_t* src = source + p0 + i;
        const typename O::F v = !W.permuted && src[15] >= 0 ? O::load(x + src[0]) : O::gather(x, src);
        O::store(buf + i, v);
        amax = O::max(amax, O::abs(v));
      }
      const float a = O::reduce_max(amax);
      const typename O::F inv = O::set1(a > 0.f ? 127.f / a : 0.f);
      typename O::I sum = O::zero_i();
      int8_t* q = xq + m * A.padded_k + p0;
      for (int64_t i = 0; i < len; i += 16) {
        const typename O::I v = O::round_i(O::mul(O::load(buf + i), inv));
        O::store_i8(q + i, v);
        sum = O::add_i(sum, v);
      }
      dx[m * A.segments + si] = a / 127.f;
      xsum[m * A.segments + si] = (float)O::reduce_add(sum);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Exact path: per block, dequantize s·(q − z) into an f32 panel [padded_k][16] once, then every row
// of X against it with f32 FMAs.
template <int BITS, int S, class O>
LOWBIT_KERNEL void dequant_slices(const typename O::U* c, typename O::F zero, typename O::F scale, float* out) {
  if constexpr (S < 8) {
    const typename O::U w = slice<BITS, S, O>(c);
    O::store(out + (4 * S + 0) * kBlockCols, O::mul(O::sub(O::template byte<0>(w), zero), scale));
    O::store(out + (4 * S + 1) * kBlockCols, O::mul(O::sub(O::template byte<1>(w), zero), scale));
    O::store(out + (4 * S + 2) * kBlockCols, O::mul(O::sub(O::template byte<2>(w), zero), scale));
    O::store(out + (4 * S + 3) * kBlockCols, O::mul(O::sub(O::template byte<3>(w), zero), scale));
    dequant_slices<BITS, S + 1, O>(c, zero, scale, out);
  }
}

template <int BITS, class O>
LOWBIT_TARGET void dequant_block(const CpuGptqWeights& W, int64_t block, float* panel) {
  constexpr int CH = chunks_per_unit<BITS>();
  for (const Segment& seg : W.segments) {
    uint8_t* const header = W.header(block, seg);
    const typename O::F scale = O::load_f16(CpuGptqWeights::scales_of(header, block));
    const typename O::F zero = O::load_u8(CpuGptqWeights::zeros_of(header, block));
    for (int64_t u = seg.unit0; u < seg.unit0 + seg.units; ++u) {
      typename O::U c[CH];
      LOWBIT_UNROLL for (int h = 0; h < CH; ++h) c[h] = O::load(W.unit(block, seg, u) + 64 * h);
      dequant_slices<BITS, 0, O>(c, zero, scale, panel + u * kUnitK * kBlockCols);
    }
  }
}

template <class O>
LOWBIT_TARGET void panel_rows(const float* panel, int64_t K, const float* x, float* y) {
  typename O::F a[4] = {O::zero_f(), O::zero_f(), O::zero_f(), O::zero_f()};
  for (int64_t k = 0; k < K; k += 4)
    LOWBIT_UNROLL for (int j = 0; j < 4; ++j) a[j] = O::fma(O::set1(x[k + j]), O::load(panel + (k + j) * kBlockCols), a[j]);
  O::store(y, O::add(O::add(a[0], a[1]), O::add(a[2], a[3])));
}

template <int BITS, class O>
void gemm_f32_bits(const CpuGptqWeights& W, const Activations& A, float* Y) {
  const int64_t Kp = W.padded_k();
  global_pool()->parallel_for(W.blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> panel((size_t)(Kp * kBlockCols));
    alignas(64) float y[kBlockCols];
    for (int64_t b = b0; b < b1; ++b) {
      dequant_block<BITS, O>(W, b, panel.data());
      for (int64_t m = 0; m < A.M; ++m) {
        panel_rows<O>(panel.data(), Kp, A.xf + m * Kp, y);
        write_tile(y, 1, kBlockCols, b * kBlockCols, W.N, m, Y);
      }
    }
  });
}

template <class O>
void gemm_f32_t(const CpuGptqWeights& W, const Activations& A, float* Y) {
  switch (W.bits) {
    case 2: gemm_f32_bits<2, O>(W, A, Y); break;
    case 3: gemm_f32_bits<3, O>(W, A, Y); break;
    default: gemm_f32_bits<4, O>(W, A, Y); break;
  }
}

// SpQR's products on the same units (spqr_panels.hpp), sharing the unpacking, tiles and tasks above.
#include "spqr_kernels_impl.hpp"

#undef LOWBIT_KERNEL
#undef LOWBIT_UNROLL

}  // namespace LOWBIT_GPTQ_NS
}  // namespace cpu_gptq
}  // namespace lowbit
