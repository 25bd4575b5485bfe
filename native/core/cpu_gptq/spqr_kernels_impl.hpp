// Not an ordinary header: kernels_impl.hpp includes it at its end, inside a SIMD level's namespace,
// so the SpQR products share its unpacking (slice), tiles (write_tile), task ranges and activation
// quantization. The layout is spqr_panels.hpp's.
//
// Per group g of 16·h positions and block of 16 columns, the int32 sums Σ q·xq of its h half units
// become one float term s ⊙ (Σ q·xq − z ⊙ Σ_g xq), with s and z the block's 16 first-level scales and
// zeros decoded from the group's header; a segment's terms are scaled by its dx once at its end.

// Slices [S, END) of NB blocks' chunks into acc[r][nb]: the unsigned code of every slice, so every
// level's dot takes them. One accumulator per row and block: each group starts a fresh chain, so
// consecutive groups' chains overlap.
template <int BITS, int S, int END, int MR, int NB, class O>
LOWBIT_KERNEL void spqr_dots(const typename O::U (*c)[chunks_per_unit<BITS>()], const int8_t* const* x,
                             typename O::I (*acc)[NB]) {
  if constexpr (S < END) {
    typename O::U w[NB];
    LOWBIT_UNROLL for (int nb = 0; nb < NB; ++nb) w[nb] = slice<BITS, S, O>(c[nb]);
    LOWBIT_UNROLL for (int r = 0; r < MR; ++r)
      LOWBIT_UNROLL for (int nb = 0; nb < NB; ++nb) acc[r][nb] = O::dot(acc[r][nb], w[nb], x[r] + 4 * S);
    spqr_dots<BITS, S + 1, END, MR, NB, O>(c, x, acc);
  }
}

// Group g's term for the NB blocks from `slot` of a panel added into yseg, and the accumulators
// cleared for the next group. Half units past the last group hold padding (zero codes against zero
// activations): nothing to add.
template <int MR, int NB, class O>
LOWBIT_KERNEL void spqr_flush(const SpqrPanels& W, const uint8_t* panel, int64_t slot, int64_t g,
                              const float* const* gsum, typename O::I (*acc)[NB], typename O::F (*yseg)[NB]) {
  if (g >= W.groups) return;
  const uint8_t* records = panel + W.group_offset[(size_t)g] + slot * kSpqrRecordBytes;
  LOWBIT_UNROLL for (int nb = 0; nb < NB; ++nb) {
    const uint8_t* rec = records + nb * kSpqrRecordBytes;
    const float* grid = reinterpret_cast<const float*>(rec);  // s_off, s_step, z_off, z_step (aligned)
    const typename O::I codes = O::load_u8_i(rec + 16);
    const typename O::F s = O::fma(O::cvt(O::and_i(codes, 15)), O::set1(grid[1]), O::set1(grid[0]));
    const typename O::F z = O::fma(O::cvt(O::template srli<4>(codes)), O::set1(grid[3]), O::set1(grid[2]));
    LOWBIT_UNROLL for (int r = 0; r < MR; ++r) {
      // Σ q·xq and z·Σ xq: integers below 2^24 and a product, as GPTQ's (tile_int8)
      const typename O::F t = O::fnma(z, O::set1(gsum[r][g]), O::cvt(acc[r][nb]));
      yseg[r][nb] = O::fma(s, t, yseg[r][nb]);
      acc[r][nb] = O::zero_i();
    }
  }
}

// One tile: rows [row0, row0 + MR) × blocks [block0, block0 + TB) (inside one panel) over the whole of
// K, the dense part only, written to ytile[r][b·16 + c]. NB blocks at a time per segment.
template <int BITS, int MR, int NB, int TB, class O>
LOWBIT_TARGET void spqr_tile(const SpqrPanels& W, int64_t block0, const Activations& A, int64_t row0, float* ytile) {
  static_assert(TB % NB == 0 && kPanelBlocks % TB == 0, "a tile is whole register tiles inside one panel");
  constexpr int CH = chunks_per_unit<BITS>();
  constexpr int64_t unit_bytes = 64 * CH;
  const uint8_t* const panel = W.panel(block0);
  const int64_t slot0 = block0 % kPanelBlocks, halves_per_group = W.beta1 / 16;
  const Prefetch pf = prefetch();  // the same distances as GPTQ's stream (repack.hpp)
  const int64_t ahead_l1 = pf.near_kib * int64_t{1024}, ahead_l2 = pf.far_kib * int64_t{1024};
  LOWBIT_UNROLL for (int i = 0; i < MR * TB; ++i) O::store(ytile + i * kBlockCols, O::zero_f());
  const float* gsum[MR];
  LOWBIT_UNROLL for (int r = 0; r < MR; ++r) gsum[r] = A.gsum + (row0 + r) * A.groups;
  for (int64_t si = 0; si < (int64_t)W.segments.size(); ++si) {
    const Segment& seg = W.segments[(size_t)si];
    LOWBIT_UNROLL for (int j = 0; j < TB; j += NB) {
      typename O::I acc[MR][NB];
      typename O::F yseg[MR][NB];
      LOWBIT_UNROLL for (int r = 0; r < MR; ++r) LOWBIT_UNROLL for (int nb = 0; nb < NB; ++nb) {
        acc[r][nb] = O::zero_i();
        yseg[r][nb] = O::zero_f();
      }
      const int8_t* x[MR];
      LOWBIT_UNROLL for (int r = 0; r < MR; ++r) x[r] = A.xq + (row0 + r) * A.padded_k + seg.unit0 * kUnitK;
      // A segment starts a group (spqr_panels.cpp); `left` counts the half units group g still has.
      int64_t g = seg.group, left = halves_per_group;
      for (int64_t u = seg.unit0; u < seg.unit0 + seg.units; ++u) {
        const uint8_t* data = panel + W.unit_offset[(size_t)u] + (slot0 + j) * unit_bytes;
        // The stream's lines ahead into L1 and L2, as GPTQ's tile_int8 (headers lie in the stream).
        if (ahead_l1 > 0) LOWBIT_UNROLL for (int h = 0; h < NB * CH; ++h) __builtin_prefetch(data + ahead_l1 + 64 * h, 0, 3);
        if (ahead_l2 > 0) LOWBIT_UNROLL for (int h = 0; h < NB * CH; ++h) __builtin_prefetch(data + ahead_l2 + 64 * h, 0, 2);
        typename O::U c[NB][CH];
        LOWBIT_UNROLL for (int nb = 0; nb < NB; ++nb)
          LOWBIT_UNROLL for (int h = 0; h < CH; ++h) c[nb][h] = O::load(data + nb * unit_bytes + 64 * h);
        spqr_dots<BITS, 0, 4, MR, NB, O>(c, x, acc);
        if (--left == 0) {
          spqr_flush<MR, NB, O>(W, panel, slot0 + j, g++, gsum, acc, yseg);
          left = halves_per_group;
        }
        spqr_dots<BITS, 4, 8, MR, NB, O>(c, x, acc);
        if (--left == 0) {
          spqr_flush<MR, NB, O>(W, panel, slot0 + j, g++, gsum, acc, yseg);
          left = halves_per_group;
        }
        LOWBIT_UNROLL for (int r = 0; r < MR; ++r) x[r] += kUnitK;
      }
      if (left != halves_per_group) spqr_flush<MR, NB, O>(W, panel, slot0 + j, g, gsum, acc, yseg);  // cut short by K
      LOWBIT_UNROLL for (int r = 0; r < MR; ++r) {
        const typename O::F dx = O::set1(A.dx[(row0 + r) * A.segments + si]);
        LOWBIT_UNROLL for (int nb = 0; nb < NB; ++nb) {
          float* y = ytile + (r * TB + j + nb) * kBlockCols;
          O::store(y, O::fma(dx, yseg[r][nb], O::load(y)));
        }
      }
    }
  }
}

template <int BITS, int MR, int NB, class O>
LOWBIT_TARGET void spqr_tile_rows(int rows, const SpqrPanels& W, int64_t block0, const Activations& A, int64_t row0,
                                  float* ytile) {
  if constexpr (MR > 1) {
    if (rows < MR) return spqr_tile_rows<BITS, MR - 1, NB, O>(rows, W, block0, A, row0, ytile);
  }
  spqr_tile<BITS, MR, NB, NB, O>(W, block0, A, row0, ytile);
}

// One row of x: ytile[n − n0] += Σ outliers of row n · x[their column], rows n of [n0, n1), 16
// outliers per gather (padding entries have column kNoColumn: gathered as 0, value 0).
template <class O>
LOWBIT_TARGET void spqr_outliers_row(const SpqrPanels& W, const float* x, int64_t n0, int64_t n1, float* ytile) {
  for (int64_t n = n0; n < std::min(n1, W.N); ++n) {
    const int32_t i0 = W.out_start[(size_t)n], i1 = W.out_start[(size_t)n + 1];
    if (i0 == i1) continue;
    typename O::F acc = O::zero_f();
    for (int32_t i = i0; i < i1; i += 16)
      acc = O::fma(O::load_f16(W.out_values.data() + i), O::gather_u16(x, W.out_cols.data() + i), acc);
    ytile[n - n0] += O::reduce_add_f(acc);
  }
}

// Every row of x: Y[m][n] += Σ outliers of row n · x[m][their column], from x transposed (A.xt): one
// FMA per outlier for 16 rows at a time.
template <class O>
LOWBIT_TARGET void spqr_outliers_rows(const SpqrPanels& W, const Activations& A, int64_t n0, int64_t n1, float* Y) {
  const int64_t M = A.M, Mp = (M + 15) / 16 * 16;
  alignas(64) float lanes[16];
  for (int64_t n = n0; n < n1; ++n) {
    const int32_t i0 = W.out_start[(size_t)n], i1 = i0 + W.out_count[(size_t)n];
    for (int64_t m0 = 0; m0 < M && i0 < i1; m0 += 16) {
      typename O::F acc = O::zero_f();
      for (int32_t i = i0; i < i1; ++i)
        acc = O::fma(O::set1(O::half(W.out_values[(size_t)i])), O::load(A.xt + (int64_t)W.out_cols[(size_t)i] * Mp + m0),
                     acc);
      O::store(lanes, acc);
      for (int64_t m = m0; m < std::min(M, m0 + 16); ++m) Y[m * W.N + n] += lanes[m - m0];
    }
  }
}

template <int BITS, class O>
void spqr_gemm_bits(const SpqrPanels& W, const Activations& A, const float* X, float* Y) {
  const int64_t M = A.M, N = W.N;
  if (M == 1) {
    // GEMV: each task streams one panel, two blocks at a time (registers: 2 × CH chunks, 2
    // accumulators, 2 segment sums and the decoded statistics), then adds its rows' outliers.
    constexpr int NB = O::GEMV_NB < 2 ? O::GEMV_NB : 2;
    for_each_task(W.blocks / kPanelBlocks, [&](int64_t t) {
      alignas(64) float ytile[kPanelBlocks * kBlockCols];
      const int64_t b0 = t * kPanelBlocks, n0 = b0 * kBlockCols;
      spqr_tile<BITS, 1, NB, kPanelBlocks, O>(W, b0, A, 0, ytile);
      spqr_outliers_row<O>(W, X, n0, n0 + kPanelBlocks * kBlockCols, ytile);
      write_tile(ytile, 1, kPanelBlocks * kBlockCols, n0, N, 0, Y);
    });
    return;
  }
  // GEMM: a task owns GEMM_NB blocks and walks the rows GEMM_MR at a time (as gemm_int8_bits).
  constexpr int MR = O::GEMM_MR, NB = O::GEMM_NB;
  global_pool()->parallel_for(W.blocks / NB, 1, [&](int64_t t0, int64_t t1) {
    alignas(64) float ytile[MR * NB * kBlockCols];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b0 = t * NB, n0 = b0 * kBlockCols;
      for (int64_t r0 = 0; r0 < M; r0 += MR) {
        const int rows = (int)std::min<int64_t>(MR, M - r0);
        spqr_tile_rows<BITS, MR, NB, O>(rows, W, b0, A, r0, ytile);
        write_tile(ytile, rows, NB * kBlockCols, n0, N, r0, Y);
      }
      spqr_outliers_rows<O>(W, A, n0, std::min(N, n0 + NB * kBlockCols), Y);
    }
  });
}

template <class O>
void gemm_spqr_int8_t(const SpqrPanels& W, const Activations& A, const float* X, float* Y) {
  switch (W.bits) {
    case 2: spqr_gemm_bits<2, O>(W, A, X, Y); break;
    case 3: spqr_gemm_bits<3, O>(W, A, X, Y); break;
    default: spqr_gemm_bits<4, O>(W, A, X, Y); break;
  }
}
