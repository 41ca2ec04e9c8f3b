// The int8 tile product (kernels/quant_simd.h, panel_rows) in 512-bit registers with
// AVX-512 VNNI: a panel part holds 16 weight rows, one per 32-bit lane, and `vpdpbusd` sums
// the 4 byte products of a lane straight into int32, so a group's 8 vectors need no 16-bit
// steps and no spans. A task takes 32 rows as two parts, so that each broadcast of 4
// activation values feeds two products. Q4_0, Q4_1, Q8_0, Q4_K and Q6_K panels are
// unpacked in registers (transposed runs of integers, gathered scales); Q5_0 and Q5_1
// group by group with vnni::load_group. Included once by kernels/quant.cpp inside
// `namespace vnni512` and a `#pragma GCC target` region with AVX-512 VNNI.
//
// The float steps per group and row are the 256-bit build's, in the same order (the
// integer sums are exact either way), so both give the same results bit for bit.
//
// Forward bench, SmolLM2 Q4_1, 2 threads, a Xeon with AVX-512 VNNI (no BF16), step time
// against the 256-bit build's in two interleaved rounds, before the unpacking in registers:
// batch 16 0.74 and 0.82, batch 64 0.66 and 0.66, a 512-token prompt 0.56 and 0.58 (with
// one part a task: 0.76 and 0.84, 0.70 and 0.70, 0.61 and 0.62). BENCHMARKS.md run 10 has
// the rest.

constexpr int kPanelRows = 16;

// Whether panel_rows needs the activations' 16-value sums (Act::sums) for a type: Q8_0,
// whose weights go in as q + 128.
constexpr bool takes_sums(int type) { return type == Q8_0; }

struct PanelGroup {
  __m512i q[8];       // vector c: values 4c .. 4c + 3 of each row (Q8_0: q + 128)
  __m512 d[2], m[2];  // per half: the rows' scales and offsets, lane j row j
};

// unpack_panel for the rest (Q5_0, Q5_1): group by group, row by row.
template <int T>
inline void unpack_rows(const uint8_t* const* row, int64_t groups, PanelGroup* p) {
  static_assert(T == Q5_0 || T == Q5_1, "a type whose groups share one scale and offset");
  for (int64_t g = 0; g < groups; ++g) {
    float d[16], m[16];
    __m256i half[2][8];  // rows 0–7, then 8–15: vector c's words in lanes 0–7
    for (int b = 0; b < 2; ++b) {
      __m256i a[8];
      for (int j = 0; j < 8; ++j) {
        GroupScale s;
        a[j] = vnni::load_group<T>(row[b * 8 + j], g, &s);
        d[b * 8 + j] = s.d[0];  // both halves share them in these types
        m[b * 8 + j] = s.m[0];
      }
      // Row j's word c to vector c's lane j.
      vnni::transpose_words(a, half[b]);
    }
    for (int c = 0; c < 8; ++c) p[g].q[c] = _mm512_inserti64x4(_mm512_castsi256_si512(half[0][c]), half[1][c], 1);
    // The scales put together from scalars (a vector load of the 16 just stored waits for
    // the stores to drain: store forwarding takes one store).
    p[g].d[0] = _mm512_setr_ps(d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8], d[9], d[10], d[11], d[12], d[13],
                               d[14], d[15]);
    p[g].m[0] = _mm512_setr_ps(m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9], m[10], m[11], m[12], m[13],
                               m[14], m[15]);
  }
}

// The 16-byte runs at row[0..16) + at, word c of each run to lane j of vector c:
// out[c] lane j = bytes 4c .. 4c + 3 of row j's run. Four runs a register (one per 128-bit
// lane), each register's 4 × 4 words transposed by one permute, then the 128-bit lanes of
// the four registers transposed.
inline void transpose_runs(const uint8_t* const* row, int64_t at, __m512i* out) {
  const __m512i words = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  __m512i t[4];
  for (int k = 0; k < 4; ++k) {
    __m512i a = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row[4 * k] + at)));
    a = _mm512_inserti32x4(a, _mm_loadu_si128(reinterpret_cast<const __m128i*>(row[4 * k + 1] + at)), 1);
    a = _mm512_inserti32x4(a, _mm_loadu_si128(reinterpret_cast<const __m128i*>(row[4 * k + 2] + at)), 2);
    a = _mm512_inserti32x4(a, _mm_loadu_si128(reinterpret_cast<const __m128i*>(row[4 * k + 3] + at)), 3);
    // Lane l of t[k] holds word l of rows 4k .. 4k + 3.
    t[k] = _mm512_permutexvar_epi32(words, a);
  }
  const __m512i u0 = _mm512_shuffle_i32x4(t[0], t[1], 0x44), u1 = _mm512_shuffle_i32x4(t[0], t[1], 0xee);
  const __m512i u2 = _mm512_shuffle_i32x4(t[2], t[3], 0x44), u3 = _mm512_shuffle_i32x4(t[2], t[3], 0xee);
  out[0] = _mm512_shuffle_i32x4(u0, u2, 0x88);
  out[1] = _mm512_shuffle_i32x4(u0, u2, 0xdd);
  out[2] = _mm512_shuffle_i32x4(u1, u3, 0x88);
  out[3] = _mm512_shuffle_i32x4(u1, u3, 0xdd);
}

// Where each of the 16 rows begins, in bytes past row 0: the gathers' indices.
inline __m512i row_offsets(const uint8_t* const* row) {
  alignas(64) int32_t off[16];
  for (int j = 0; j < 16; ++j) off[j] = static_cast<int32_t>(row[j] - row[0]);
  return _mm512_load_si512(off);
}

// unpack_panel for Q4_0, Q4_1 and Q8_0, whose groups are one block each (a float16 scale,
// Q4_1's float16 offset, then the integers): the 16 rows' integers transposed in registers
// and their scales gathered, 16 at once. The same values as the row-by-row reading.
template <int T>
inline void unpack_blocks(const uint8_t* const* row, int64_t groups, PanelGroup* p) {
  constexpr int64_t bytes = T == Q4_0 ? 18 : T == Q4_1 ? 20 : 34;
  constexpr int64_t qs = T == Q4_1 ? 4 : 2;
  const __m512i offsets = row_offsets(row);
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  for (int64_t g = 0; g < groups; ++g) {
    // Each row's first 4 bytes of the block: the scale, and Q4_1's offset above it.
    const __m512i head = _mm512_i32gather_epi32(offsets, row[0] + g * bytes, 1);
    const __m512 d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(head));
    p[g].d[0] = d;
    if constexpr (T == Q4_1)
      p[g].m[0] = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(head, 16)));
    else
      p[g].m[0] = T == Q4_0 ? _mm512_mul_ps(_mm512_set1_ps(-8.0f), d) : _mm512_setzero_ps();
    __m512i v[4];
    transpose_runs(row, g * bytes + qs, v);
    if constexpr (T == Q8_0) {
      __m512i v2[4];
      transpose_runs(row, g * bytes + qs + 16, v2);
      // q + 128 as unsigned bytes (panel_block takes 128 · Σx back off).
      for (int c = 0; c < 8; ++c) p[g].q[c] = _mm512_xor_si512(c < 4 ? v[c] : v2[c - 4], _mm512_set1_epi8(-128));
    } else {
      // Values 4c .. 4c + 3 are the low nibbles of the run's bytes 4c .. 4c + 3, values
      // 16 + 4c .. the high ones.
      for (int c = 0; c < 4; ++c) {
        p[g].q[c] = _mm512_and_si512(v[c], low4);
        p[g].q[c + 4] = _mm512_and_si512(_mm512_srli_epi16(v[c], 4), low4);
      }
    }
  }
}

// unpack_panel for Q4_K: per 256-value super-block the 16 rows' float16 scale and minimum
// and their 12 bytes of 6-bit group scales and minimums are gathered (k4_scale_min for 16
// rows at once), and each 32-byte run of integers is transposed once for its two groups
// (low nibbles, then high). The same values as the row-by-row reading.
inline void unpack_q4k(const uint8_t* const* row, int64_t groups, PanelGroup* p) {
  const __m512i offsets = row_offsets(row);
  const __m512i low4 = _mm512_set1_epi8(0x0f), six = _mm512_set1_epi32(63), four = _mm512_set1_epi32(15);
  const __m512i two = _mm512_set1_epi32(3), sign = _mm512_set1_epi32(static_cast<int32_t>(0x80000000u));
  for (int64_t b = 0; b < groups / 8; ++b) {
    const uint8_t* base = row[0] + b * 144;
    const __m512i head = _mm512_i32gather_epi32(offsets, base, 1);
    const __m512 d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(head));
    const __m512 dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(head, 16)));
    const __m512 neg_dmin = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(dmin), sign));
    // The 12 scale bytes as three words a row: bytes 0–3 (w0), 4–7 (w1), 8–11 (w2).
    const __m512i w0 = _mm512_i32gather_epi32(offsets, base + 4, 1);
    const __m512i w1 = _mm512_i32gather_epi32(offsets, base + 8, 1);
    const __m512i w2 = _mm512_i32gather_epi32(offsets, base + 12, 1);
    for (int j = 0; j < 8; ++j) {
      const int k = (j % 4) * 8;  // the byte of the words that group j reads
      __m512i sc, mn;
      if (j < 4) {
        sc = _mm512_and_si512(_mm512_srli_epi32(w0, k), six);
        mn = _mm512_and_si512(_mm512_srli_epi32(w1, k), six);
      } else {
        const __m512i top_sc = _mm512_and_si512(_mm512_srli_epi32(w0, k + 6), two);
        const __m512i top_mn = _mm512_and_si512(_mm512_srli_epi32(w1, k + 6), two);
        sc = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(w2, k), four), _mm512_slli_epi32(top_sc, 4));
        mn = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(w2, k + 4), four), _mm512_slli_epi32(top_mn, 4));
      }
      PanelGroup& pg = p[b * 8 + j];
      pg.d[0] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc));
      pg.m[0] = _mm512_mul_ps(neg_dmin, _mm512_cvtepi32_ps(mn));
    }
    for (int run = 0; run < 4; ++run) {
      __m512i v[8];
      transpose_runs(row, b * 144 + 16 + run * 32, v);
      transpose_runs(row, b * 144 + 16 + run * 32 + 16, v + 4);
      for (int c = 0; c < 8; ++c) {
        p[b * 8 + 2 * run].q[c] = _mm512_and_si512(v[c], low4);
        p[b * 8 + 2 * run + 1].q[c] = _mm512_and_si512(_mm512_srli_epi16(v[c], 4), low4);
      }
    }
  }
}

// unpack_panel for Q6_K: per half of a 256-value super-block, its three 32-byte runs (low
// bits of groups 0 and 2, of groups 1 and 3, and the top 2 bits of all four) transposed
// once, and the 16 rows' float16 scale and 8-bit sub-block scales gathered. The same
// values as the row-by-row reading.
inline void unpack_q6k(const uint8_t* const* row, int64_t groups, PanelGroup* p) {
  const __m512i offsets = row_offsets(row);
  const __m512i low4 = _mm512_set1_epi8(0x0f), top2 = _mm512_set1_epi8(3);
  for (int64_t b = 0; b < groups / 8; ++b) {
    const uint8_t* base = row[0] + b * 210;
    // Bytes 206–209: the float16 scale is the high half (a word at 208 would read past the
    // block, and past the matrix at its last row).
    const __m512 d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_i32gather_epi32(offsets, base + 206, 1), 16)));
    for (int h = 0; h < 2; ++h) {
      // The half's 8 signed sub-block scales, 4 a word.
      const __m512i sw[2] = {_mm512_i32gather_epi32(offsets, base + 192 + h * 8, 1),
                             _mm512_i32gather_epi32(offsets, base + 196 + h * 8, 1)};
      __m512i lo[2][8], hi[8];
      transpose_runs(row, b * 210 + h * 64, lo[0]);
      transpose_runs(row, b * 210 + h * 64 + 16, lo[0] + 4);
      transpose_runs(row, b * 210 + h * 64 + 32, lo[1]);
      transpose_runs(row, b * 210 + h * 64 + 48, lo[1] + 4);
      transpose_runs(row, b * 210 + 128 + h * 32, hi);
      transpose_runs(row, b * 210 + 128 + h * 32 + 16, hi + 4);
      for (int k = 0; k < 4; ++k) {
        PanelGroup& pg = p[b * 8 + h * 4 + k];
        for (int c = 0; c < 8; ++c) {
          const __m512i l = _mm512_and_si512(_mm512_srli_epi16(lo[k & 1][c], (k >> 1) * 4), low4);
          const __m512i t = _mm512_and_si512(_mm512_srli_epi16(hi[c], 2 * k), top2);
          pg.q[c] = _mm512_or_si512(l, _mm512_slli_epi16(t, 4));
        }
        for (int q = 0; q < 2; ++q) {
          // Sub-block 2k + q: byte (2k + q) % 4 of word (2k + q) / 4, sign-extended.
          const int at = 2 * k + q;
          const __m512i sc = _mm512_srai_epi32(_mm512_slli_epi32(sw[at / 4], 24 - 8 * (at % 4)), 24);
          pg.d[q] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc));
          pg.m[q] = _mm512_mul_ps(_mm512_set1_ps(-32.0f), pg.d[q]);
        }
      }
    }
  }
}

// Rows [r, r + rows) of the weights (rows ≤ 16; the last row again in the missing lanes,
// which are never stored) into p[groups].
template <int T>
inline void unpack_panel(const uint8_t* w, int64_t row_bytes, int64_t groups, int64_t r, int rows, PanelGroup* p) {
  const uint8_t* row[16];
  for (int j = 0; j < 16; ++j) row[j] = w + (r + std::min(j, rows - 1)) * row_bytes;
  if constexpr (T == Q4_0 || T == Q4_1 || T == Q8_0)
    unpack_blocks<T>(row, groups, p);
  else if constexpr (T == Q4_K)
    unpack_q4k(row, groups, p);
  else if constexpr (T == Q6_K)
    unpack_q6k(row, groups, p);
  else
    unpack_rows<T>(row, groups, p);
}

// V 16-row parts of a panel (p[v]: part v's groups) against activation rows i0 .. i0 + M:
// out[v][i] lane j = row 16v + j · row i0 + i. Each activation value broadcast serves the V
// parts' products.
template <int T, int M, int V>
inline void panel_block(const PanelGroup* const* p, const Act& a, int64_t i0, __m512 (*out)[M]) {
  // Q6_K's halves have scales of their own; every other type's group has one.
  constexpr bool halves = T == Q6_K;
  const int64_t groups = a.cols / 32;
  __m512 acc[V][M];
#pragma GCC unroll 2
  for (int v = 0; v < V; ++v)
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) acc[v][i] = _mm512_setzero_ps();
  const int8_t* xq = a.q + i0 * a.cols;
  for (int64_t g = 0; g < groups; ++g) {
    __m512i s32[V][M];
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v)
#pragma GCC unroll 8
      for (int i = 0; i < M; ++i) s32[v][i] = _mm512_setzero_si512();
#pragma GCC unroll 8
    for (int c = 0; c < 8; ++c) {
      __m512i w[V];
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) w[v] = p[v][g].q[c];
#pragma GCC unroll 8
      for (int i = 0; i < M; ++i) {
        int32_t four;
        std::memcpy(&four, xq + i * a.cols + g * 32 + 4 * c, 4);
        const __m512i x = _mm512_set1_epi32(four);
#pragma GCC unroll 2
        for (int v = 0; v < V; ++v) {
          s32[v][i] = _mm512_dpbusd_epi32(s32[v][i], w[v], x);
        }
      }
      // The sums so far into floats: at the end of each half for Q6_K, else of the group
      // (its offsets' share from both halves' activation sums).
      if (c == 7 || (halves && c == 3)) {
        const int h = halves ? c / 4 : 0;
#pragma GCC unroll 8
        for (int i = 0; i < M; ++i) {
          const float* meta = a.meta + ((i0 + i) * groups + g) * 3;
          // Q8_0's weights went in as q + 128: Σ (q + 128)·x − 128·Σx, exact in int32, with
          // Σx from the activations' 16-value sums.
          __m512i bias = _mm512_setzero_si512();
          if constexpr (takes_sums(T)) {
            const int16_t* sx16 = a.sums + ((i0 + i) * a.cols) / 16 + 2 * g;
            bias = _mm512_set1_epi32(128 * (sx16[0] + sx16[1]));
          }
          const __m512 dx = _mm512_set1_ps(meta[0]);
          const __m512 sx = _mm512_set1_ps(halves ? meta[1 + h] : meta[1] + meta[2]);
#pragma GCC unroll 2
          for (int v = 0; v < V; ++v) {
            const PanelGroup& pg = p[v][g];
            const __m512i sum = takes_sums(T) ? _mm512_sub_epi32(s32[v][i], bias) : s32[v][i];
            acc[v][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(pg.d[h], dx), acc[v][i]);
            acc[v][i] = _mm512_fmadd_ps(pg.m[h], sx, acc[v][i]);
            s32[v][i] = _mm512_setzero_si512();
          }
        }
      }
    }
  }
#pragma GCC unroll 2
  for (int v = 0; v < V; ++v)
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) out[v][i] = acc[v][i];
}

// 16 sums (one per row of a panel's part) into `rows` values of O at o, as two halves of 8.
template <int O>
inline void store_panel_row(__m512 v, int rows, void* o) {
  const int elem = O == kOutF32 ? 4 : 2;
  vnni::store_panel_row<O>(_mm512_castps512_ps256(v), std::min(rows, 8), o);
  if (rows > 8)
    vnni::store_panel_row<O>(_mm512_extractf32x8_ps(v, 1), rows - 8, static_cast<uint8_t*>(o) + 8 * elem);
}

// Weight rows a task of panel_rows takes: two parts of 16, one broadcast of activations
// for both.
constexpr int64_t kTaskRows = 32;

// out[i·ldo + r] (values of O) = weight row r · activation row i, for the weight rows
// [32·t0, 32·t1) (the last part may be short: `rows` in all) and every activation row;
// `buf` holds two parts of a panel, 64-byte aligned.
template <int T, int O>
void panel_rows(const Act& a, const uint8_t* w, int64_t row_bytes, int64_t rows, int64_t t0, int64_t t1, void* out,
                int64_t ldo, PanelGroup* buf) {
  const int64_t groups = a.cols / 32;
  using V = std::conditional_t<O == kOutF32, float, uint16_t>;
  V* o = static_cast<V*>(out);
  const PanelGroup* parts[2] = {buf, buf + groups};
  // Chunks of activation rows as the 256-bit build takes them.
  for (int64_t c0 = 0; c0 < a.n; c0 += vnni::kPanelChunk) {
    const int64_t c1 = std::min(a.n, c0 + vnni::kPanelChunk);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r = t * kTaskRows;
      const int live[2] = {static_cast<int>(std::min<int64_t>(kPanelRows, rows - r)),
                           static_cast<int>(std::min<int64_t>(kPanelRows, rows - r - kPanelRows))};
      unpack_panel<T>(w, row_bytes, groups, r, live[0], buf);
      if (live[1] > 0) unpack_panel<T>(w, row_bytes, groups, r + kPanelRows, live[1], buf + groups);
      int64_t i = c0;
      // M activation rows from i against the live parts, then i moves past them.
      auto block = [&](auto m) {
        constexpr int M = decltype(m)::value;
        auto run = [&](auto v) {
          constexpr int NV = decltype(v)::value;
          __m512 sums[NV][M];
          panel_block<T, M, NV>(parts, a, i, sums);
          for (int pv = 0; pv < NV; ++pv)
            for (int k = 0; k < M; ++k) store_panel_row<O>(sums[pv][k], live[pv], o + (i + k) * ldo + r + pv * kPanelRows);
        };
        if (live[1] > 0)
          run(std::integral_constant<int, 2>{});
        else
          run(std::integral_constant<int, 1>{});
        i += M;
      };
      while (c1 - i >= 6) block(std::integral_constant<int, 6>{});
      if (c1 - i >= 4) block(std::integral_constant<int, 4>{});
      if (c1 - i >= 2) block(std::integral_constant<int, 2>{});
      if (c1 - i == 1) block(std::integral_constant<int, 1>{});
    }
  }
}
