// The int8 dot products of quantized weight rows with quantized activations, in 256-bit
// registers. Included twice by kernels/quant.cpp, inside a namespace and a `#pragma GCC
// target` region each: once for AVX2 (`vpmaddubsw`) and once for AVX-512 VNNI
// (`vpdpbusd`), with SLUICE_VNNI saying which. No include guard on purpose.
//
// A group of 32 weights is read as in quant_blocks.h (unsigned q, scales d and offsets m per
// half) into one register; the product with an activation group (int8 xq, scale dx) is
//   Σ_i (d·q_i + m)·dx·xq_i = d·dx·Σ q_i·xq_i + m·dx·Σ xq_i,
// the first sum in int32 lanes (lanes 0–3 cover values 0–15, lanes 4–7 values 16–31, so the
// per-half scale is a per-lane factor), the second from the activation's stored sums.

// A float16 at p, converted by the F16C instruction (c10::Half converts in software unless
// the whole file is built for F16C, and that conversion was a large part of a group's cost).
inline float half_fast(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return _cvtsh_ss(bits);
}

// Group g of a row: the integers (one byte each, in value order) and the scales.
// The 16 bytes at qs as 32 nibbles: low nibbles first, then high ones.
inline __m256i nibbles(const uint8_t* qs) {
  const __m128i low4 = _mm_set1_epi8(0x0f);
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i lo = _mm_and_si128(b, low4);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
  return _mm256_set_m128i(hi, lo);
}

// Bit i of `bits` as 0x10 in byte i.
inline __m256i fifth_bits(uint32_t bits) {
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(static_cast<int>(bits)),
      _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL, 0x0101010101010101LL, 0));
  const __m256i pick = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ULL));
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, pick), pick);
  return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

inline void same_scale(GroupScale* s, float d, float m) {
  s->d[0] = s->d[1] = d;
  s->m[0] = s->m[1] = m;
}

template <int T>
inline __m256i load_group(const uint8_t* row, int64_t g, GroupScale* s) {
  if constexpr (T == Q4_0 || T == Q4_1) {
    const uint8_t* b = row + g * (T == Q4_0 ? 18 : 20);
    const float d = half_fast(b);
    same_scale(s, d, T == Q4_0 ? -8.0f * d : half_fast(b + 2));
    return nibbles(b + (T == Q4_0 ? 2 : 4));
  } else if constexpr (T == Q5_0 || T == Q5_1) {
    const uint8_t* b = row + g * (T == Q5_0 ? 22 : 24);
    const float d = half_fast(b);
    same_scale(s, d, T == Q5_0 ? -16.0f * d : half_fast(b + 2));
    const uint32_t qh = u32_at(b + (T == Q5_0 ? 2 : 4));
    return _mm256_or_si256(nibbles(b + (T == Q5_0 ? 6 : 8)), fifth_bits(qh));
  } else if constexpr (T == Q8_0) {
    const uint8_t* b = row + g * 34;
    same_scale(s, half_fast(b), 0.0f);
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2));
  } else if constexpr (T == Q4_K) {
    const uint8_t* b = row + (g / 8) * 144;
    const int j = static_cast<int>(g % 8);
    int sc, mn;
    k4_scale_min(j, b + 4, &sc, &mn);
    same_scale(s, half_fast(b) * sc, -half_fast(b + 2) * mn);
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16 + (j / 2) * 32));
    const __m256i shifted = (j & 1) ? _mm256_srli_epi16(v, 4) : v;
    return _mm256_and_si256(shifted, _mm256_set1_epi8(0x0f));
  } else {
    static_assert(T == Q6_K, "a type without a vector reading");
    const uint8_t* b = row + (g / 8) * 210;
    const int j = static_cast<int>(g % 8), h = j / 4, k = j % 4;
    const __m256i ql = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + h * 64 + (k & 1) * 32));
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 128 + h * 32));
    const __m256i lo = _mm256_and_si256(_mm256_srl_epi16(ql, _mm_cvtsi32_si128((k >> 1) * 4)), _mm256_set1_epi8(0x0f));
    // Bits 2k, 2k + 1 of each qh byte, moved to bits 4, 5.
    const __m256i top = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k)), _mm256_set1_epi8(3));
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192 + h * 8);
    const float d = half_fast(b + 208);
    for (int p = 0; p < 2; ++p) {
      s->d[p] = d * sc[2 * k + p];
      s->m[p] = -32.0f * s->d[p];
    }
    return _mm256_or_si256(lo, _mm256_slli_epi16(top, 4));
  }
}

// Σ q_i·x_i over each 4 bytes, in 8 int32 lanes; q unsigned (or signed for Q8_0), x signed.
template <bool SIGNED>
inline __m256i dot_group(__m256i q, __m256i x) {
  if constexpr (SIGNED) {
    // |q| is unsigned, and x takes q's sign: the products are the same.
    x = _mm256_sign_epi8(x, q);
    q = _mm256_sign_epi8(q, q);
  }
#if SLUICE_VNNI
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, x);
#else
  // Pairs of products fit int16: at most 2·128·127.
  return _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), _mm256_set1_epi16(1));
#endif
}

inline float sum_lanes(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// out[i·ldo + r] = row r · activation row i for R weight rows from r and M activation rows
// from i0: each weight group is read once for the M rows, and the R·M sums are independent
// chains of additions (with one sum at a time, each group waited on the previous group's
// addition). The offsets m·dx·Σ xq go into the same lanes: lanes 0–3 carry a quarter of the
// first half's, lanes 4–7 of the second's. Each sum takes the same steps whatever R and M
// are, so a row's result does not depend on the rows computed beside it.
template <int T, int R, int M>
inline void dot_block(const Act& a, const uint8_t* w, int64_t row_bytes, int64_t r, int64_t i0, float* out,
                      int64_t ldo) {
  const int64_t groups = a.cols / 32;
  const __m256 quarter = _mm256_set1_ps(0.25f);
  __m256 acc[R][M];
  for (int k = 0; k < R; ++k)
    for (int i = 0; i < M; ++i) acc[k][i] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m256i q[R];
    __m256 dv[R], mv[R];
    for (int k = 0; k < R; ++k) {
      _mm_prefetch(reinterpret_cast<const char*>(w + (r + R + k) * row_bytes + g * row_bytes / groups), _MM_HINT_T0);
      GroupScale s;
      q[k] = load_group<T>(w + (r + k) * row_bytes, g, &s);
      dv[k] = _mm256_set_m128(_mm_set1_ps(s.d[1]), _mm_set1_ps(s.d[0]));
      mv[k] = _mm256_set_m128(_mm_set1_ps(s.m[1]), _mm_set1_ps(s.m[0]));
    }
    for (int i = 0; i < M; ++i) {
      const int64_t at = (i0 + i) * a.cols + g * 32;
      const float* meta = a.meta + ((i0 + i) * groups + g) * 3;
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + at));
      const __m256 dx = _mm256_set1_ps(meta[0]);
      const __m256 sx = _mm256_mul_ps(_mm256_set_m128(_mm_set1_ps(meta[2]), _mm_set1_ps(meta[1])), quarter);
      for (int k = 0; k < R; ++k) {
        const __m256 p = _mm256_cvtepi32_ps(dot_group<T == Q8_0>(q[k], x));
        acc[k][i] = _mm256_fmadd_ps(mv[k], sx, _mm256_fmadd_ps(p, _mm256_mul_ps(dv[k], dx), acc[k][i]));
      }
    }
  }
  for (int k = 0; k < R; ++k)
    for (int i = 0; i < M; ++i) out[(i0 + i) * ldo + r + k] = sum_lanes(acc[k][i]);
}

// A K-quant super-block of one weight row, unpacked for dot_super_block: its 256 integers in
// value order, and per 16 values a scale and a minimum, value = d·scale·q − dmin·min. The
// scales are laid out for the byte products of 32 values: the low 128 bits of scales[c]
// hold sub-block 2c's scale, the high ones 2c + 1's.
struct SuperRow {
  alignas(32) uint8_t q[256];
  alignas(32) int16_t mins[16];
  __m256i scales[8];
  float d, dmin;
};

template <int T>
inline void read_super(const uint8_t* row, int64_t b, SuperRow* s) {
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  if constexpr (T == Q4_K) {
    const uint8_t* blk = row + b * 144;
    s->d = half_fast(blk);
    s->dmin = half_fast(blk + 2);
    // The 12 packed bytes as three words: sub-blocks 0–3 keep their 6 bits in the low bits of
    // words 0 (scales) and 1 (minimums); 4–7 take 4 bits from word 2's nibbles and their top
    // 2 bits from the top of words 0 and 1's bytes (k4_scale_min, four at a time).
    const uint32_t w0 = u32_at(blk + 4), w1 = u32_at(blk + 8), w2 = u32_at(blk + 12);
    constexpr uint32_t six = 0x3f3f3f3f, four = 0x0f0f0f0f, two = 0x03030303;
    const uint32_t sc[2] = {w0 & six, (w2 & four) | (((w0 >> 6) & two) << 4)};
    const uint32_t mn[2] = {w1 & six, ((w2 >> 4) & four) | (((w1 >> 6) & two) << 4)};
    uint8_t scales[8];
    std::memcpy(scales, sc, 8);
    const __m128i mins8 = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mn)));
    _mm256_store_si256(reinterpret_cast<__m256i*>(s->mins),
                       _mm256_set_m128i(_mm_unpackhi_epi16(mins8, mins8), _mm_unpacklo_epi16(mins8, mins8)));
    for (int c = 0; c < 8; ++c) s->scales[c] = _mm256_set1_epi16(scales[c]);
    for (int p = 0; p < 4; ++p) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16 + p * 32));
      _mm256_store_si256(reinterpret_cast<__m256i*>(s->q + p * 64), _mm256_and_si256(v, low4));
      _mm256_store_si256(reinterpret_cast<__m256i*>(s->q + p * 64 + 32), _mm256_and_si256(_mm256_srli_epi16(v, 4), low4));
    }
  } else {
    static_assert(T == Q6_K, "a type without super-blocks");
    // Values are q − 32: the minimum is 32 · scale at the same d. In half h, group k takes
    // its low 4 bits from ql[h·64 + (k & 1)·32 ..] (low nibbles for k < 2) and its top 2 from
    // qh[h·32 ..], bits 2k and 2k + 1 (load_group<Q6_K>, the 8 groups at once).
    const uint8_t* blk = row + b * 210;
    s->d = s->dmin = half_fast(blk + 208);
    const int8_t* scales = reinterpret_cast<const int8_t*>(blk + 192);
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales)));
    _mm256_store_si256(reinterpret_cast<__m256i*>(s->mins), _mm256_slli_epi16(sc16, 5));
    for (int c = 0; c < 8; ++c) s->scales[c] = _mm256_set_m128i(_mm_set1_epi16(scales[2 * c + 1]), _mm_set1_epi16(scales[2 * c]));
    const __m256i top2 = _mm256_set1_epi8(3);
    for (int h = 0; h < 2; ++h) {
      const __m256i ql0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + h * 64));
      const __m256i ql1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + h * 64 + 32));
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + h * 32));
      const __m256i lows[4] = {_mm256_and_si256(ql0, low4), _mm256_and_si256(ql1, low4),
                               _mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
                               _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4)};
      const __m256i tops[4] = {_mm256_and_si256(qh, top2), _mm256_and_si256(_mm256_srli_epi16(qh, 2), top2),
                               _mm256_and_si256(_mm256_srli_epi16(qh, 4), top2),
                               _mm256_and_si256(_mm256_srli_epi16(qh, 6), top2)};
      for (int k = 0; k < 4; ++k)
        _mm256_store_si256(reinterpret_cast<__m256i*>(s->q + (h * 4 + k) * 32),
                           _mm256_or_si256(lows[k], _mm256_slli_epi16(tops[k], 4)));
    }
  }
}

// dot_block for the K-quants against activations quantized per super-block (Act::sums
// set), as llama.cpp pairs Q4_K and Q6_K with Q8_K: the 16-value scales multiply the byte
// products as 16-bit integers and the sums stay integers over the super-block, so floats
// are touched once per 256 values instead of once per 32 (and the 6-bit scales are unpacked
// once per super-block). The minimums' share comes from the activations' 16-value sums.
template <int T, int R, int M>
inline void dot_super_block(const Act& a, const uint8_t* w, int64_t row_bytes, int64_t r, int64_t i0, float* out,
                            int64_t ldo) {
  const int64_t supers = a.cols / 256, groups = a.cols / 32;
  __m256 acc[R][M];
  for (int k = 0; k < R; ++k)
    for (int i = 0; i < M; ++i) acc[k][i] = _mm256_setzero_ps();
  SuperRow s[R];
  for (int64_t b = 0; b < supers; ++b) {
    for (int k = 0; k < R; ++k) {
      for (int64_t line = 0; line < row_bytes / supers; line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(w + (r + R + k) * row_bytes + b * (row_bytes / supers) + line), _MM_HINT_T0);
      read_super<T>(w + (r + k) * row_bytes, b, &s[k]);
    }
    for (int i = 0; i < M; ++i) {
      const int8_t* xq = a.q + (i0 + i) * a.cols + b * 256;
      const float dx = a.meta[((i0 + i) * groups + b * 8) * 3];
      const __m256i xsums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.sums + ((i0 + i) * a.cols + b * 256) / 16));
      for (int k = 0; k < R; ++k) {
        __m256i sum = _mm256_setzero_si256();
        for (int c = 0; c < 8; ++c) {
          const __m256i wq = _mm256_load_si256(reinterpret_cast<const __m256i*>(s[k].q + c * 32));
          const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + c * 32));
          // Pairs of products fit int16: at most 2·63·127.
          sum = _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(wq, x), s[k].scales[c]));
        }
        const __m256i mins = _mm256_load_si256(reinterpret_cast<const __m256i*>(s[k].mins));
        acc[k][i] = _mm256_fmadd_ps(_mm256_set1_ps(s[k].d * dx), _mm256_cvtepi32_ps(sum), acc[k][i]);
        acc[k][i] = _mm256_fnmadd_ps(_mm256_set1_ps(s[k].dmin * dx), _mm256_cvtepi32_ps(_mm256_madd_epi16(xsums, mins)), acc[k][i]);
      }
    }
  }
  for (int k = 0; k < R; ++k)
    for (int i = 0; i < M; ++i) out[(i0 + i) * ldo + r + k] = sum_lanes(acc[k][i]);
}

// Weight rows [r0, r1) against every activation row in blocks of 4 weight rows by 2
// activation rows (the weights' groups stay in L1 cache across the activation rows'
// blocks; 4 activation rows measured no faster with AVX2): block(R, M, r, i) with R and M as
// integral constants.
template <typename F>
inline void blocks_of_rows(const Act& a, int64_t r0, int64_t r1, F&& block) {
  using One = std::integral_constant<int, 1>;
  using Two = std::integral_constant<int, 2>;
  using Four = std::integral_constant<int, 4>;
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    int64_t i = 0;
    for (; i + 2 <= a.n; i += 2) block(Four{}, Two{}, r, i);
    if (i < a.n) block(Four{}, One{}, r, i);
  }
  for (; r < r1; ++r)
    for (int64_t i = 0; i < a.n; ++i) block(One{}, One{}, r, i);
}

// out[i·ldo + r] = row r · activation row i, for weight rows [r0, r1) and every activation
// row (the K-quants' activations come quantized per super-block, with Act::sums).
template <int T>
void dot_rows(const Act& a, const uint8_t* w, int64_t row_bytes, int64_t r0, int64_t r1, float* out, int64_t ldo) {
  blocks_of_rows(a, r0, r1, [&](auto rk, auto mi, int64_t r, int64_t i) {
    if constexpr (has_super_blocks(T))
      dot_super_block<T, decltype(rk)::value, decltype(mi)::value>(a, w, row_bytes, r, i, out, ldo);
    else
      dot_block<T, decltype(rk)::value, decltype(mi)::value>(a, w, row_bytes, r, i, out, ldo);
  });
}

// 8 floats rounded to bfloat16 as 8 uint16s: to nearest, ties to even, as
// sluice::from_float<c10::BFloat16> rounds.
inline __m128i round_bf16x8(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

// 8 floats as 8 values of O (kOutBF16 or kOutF16), rounded to nearest even.
template <int O>
inline __m128i round_16bit8(__m256 v) {
  if constexpr (O == kOutBF16)
    return round_bf16x8(v);
  else
    return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
}

// Weight rows [r0, r1) as values of O, [r1 - r0, cols] (the tiled path's dequantization).
template <int T, int O>
void dequantize_rows(const uint8_t* w, int64_t row_bytes, int64_t cols, int64_t r0, int64_t r1, void* out) {
  const int64_t groups = cols / 32;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w + r * row_bytes;
    const int64_t at = (r - r0) * cols;
    for (int64_t g = 0; g < groups; ++g) {
      _mm_prefetch(reinterpret_cast<const char*>(row + g * row_bytes / groups + 1024), _MM_HINT_T0);
      GroupScale s;
      const __m256i q = load_group<T>(row, g, &s);
      for (int part = 0; part < 4; ++part) {
        // Values 8·part .. 8·part + 7; the first two parts are the first half.
        const __m128i bytes = part < 2 ? _mm256_castsi256_si128(q) : _mm256_extracti128_si256(q, 1);
        const __m128i eight = (part & 1) ? _mm_srli_si128(bytes, 8) : bytes;
        const __m256i ints = (T == Q8_0) ? _mm256_cvtepi8_epi32(eight) : _mm256_cvtepu8_epi32(eight);
        const int h = part >> 1;
        const __m256 v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ints), _mm256_set1_ps(s.d[h]), _mm256_set1_ps(s.m[h]));
        const int64_t i = at + g * 32 + part * 8;
        if constexpr (O == kOutF32) {
          _mm256_storeu_ps(static_cast<float*>(out) + i, v);
        } else {
          _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(out) + i), round_16bit8<O>(v));
        }
      }
    }
  }
}

// The int8 tile product, for many activation rows (prefill, big batches). dot_block reads a
// weight group once per two activation rows and converts every 32-value sum to float on its
// own; past 8 rows that lost to dequantizing the weights for libtorch's float product. Here
// 8 weight rows (a panel) are unpacked once for a chunk of activation rows and laid out
// across the lanes: vector c of group g holds values 4c .. 4c + 3 of each of the 8 rows
// (lane j: row j), so one `vpmaddubsw` against 4 activation values broadcast to every lane
// gives the 8 rows' partial sums for one activation row. The sums of a group stay in 16-bit
// lanes as long as they cannot overflow, and go to float once per group for 8 rows at once.
// A task takes two panels; for Q6_K each broadcast serves both panels' products (its
// 16-bit sums span only two products, and the loop was bounded by the broadcasts and
// additions around them, not by the products).
constexpr int kPanelRows = 8;

struct PanelGroup {
  __m256i q[8];     // vector c: values 4c .. 4c + 3 of each row (Q8_0: signed)
  __m256 d[2], m[2];  // per half: the rows' scales and offsets, lane j row j
};

// How many 4-value products of a group a 16-bit lane can sum without overflowing: each
// `vpmaddubsw` lane is two products of at most qmax·127 (|x| ≤ 127 as quantize_rows writes
// them), so 8 for 4-bit integers (8·2·15·127 = 30480), 4 for 5-bit, 2 for 6-bit, and 1 for
// Q8_0 (its |q| ≤ 128).
template <int T>
constexpr int panel_span() {
  return (T == Q4_0 || T == Q4_1 || T == Q4_K) ? 8 : (T == Q5_0 || T == Q5_1) ? 4 : T == Q6_K ? 2 : 1;
}

// 8 × 8 transpose of 4-byte words: word c of a[j] to lane j of q[c].
inline void transpose_words(const __m256i* a, __m256i* q) {
  __m256i t[8], u[8];
  for (int j = 0; j < 8; j += 2) {
    t[j] = _mm256_unpacklo_epi32(a[j], a[j + 1]);
    t[j + 1] = _mm256_unpackhi_epi32(a[j], a[j + 1]);
  }
  for (int j = 0; j < 8; j += 4) {
    u[j] = _mm256_unpacklo_epi64(t[j], t[j + 2]);
    u[j + 1] = _mm256_unpackhi_epi64(t[j], t[j + 2]);
    u[j + 2] = _mm256_unpacklo_epi64(t[j + 1], t[j + 3]);
    u[j + 3] = _mm256_unpackhi_epi64(t[j + 1], t[j + 3]);
  }
  // u[k] (k < 4) holds words k and k + 4 of rows 0–3, u[k + 4] the same of rows 4–7.
  for (int k = 0; k < 4; ++k) {
    q[k] = _mm256_permute2x128_si256(u[k], u[k + 4], 0x20);
    q[k + 4] = _mm256_permute2x128_si256(u[k], u[k + 4], 0x31);
  }
}

// Rows [r, r + rows) of the weights (rows ≤ 8; the last row again in the missing lanes,
// which are never stored) into p[groups].
template <int T>
inline void unpack_panel(const uint8_t* w, int64_t row_bytes, int64_t groups, int64_t r, int rows, PanelGroup* p) {
  const uint8_t* row[8];
  for (int j = 0; j < 8; ++j) row[j] = w + (r + std::min(j, rows - 1)) * row_bytes;
  for (int64_t g = 0; g < groups; ++g) {
    __m256i a[8];
    // The scales as scalars put together in registers (through memory, 8 stores and one
    // vector load stalled on store forwarding).
    float d[2][8], m[2][8];
    for (int j = 0; j < 8; ++j) {
      GroupScale s;
      a[j] = load_group<T>(row[j], g, &s);
      for (int h = 0; h < 2; ++h) {
        d[h][j] = s.d[h];
        m[h][j] = s.m[h];
      }
    }
    // Row j's word c to vector c's lane j.
    transpose_words(a, p[g].q);
    for (int h = 0; h < (T == Q6_K ? 2 : 1); ++h) {
      p[g].d[h] = _mm256_setr_ps(d[h][0], d[h][1], d[h][2], d[h][3], d[h][4], d[h][5], d[h][6], d[h][7]);
      p[g].m[h] = _mm256_setr_ps(m[h][0], m[h][1], m[h][2], m[h][3], m[h][4], m[h][5], m[h][6], m[h][7]);
    }
  }
}

// V panels of 8 rows (p[v]: panel v's groups) against activation rows i0 .. i0 + M:
// out[v][i] lane j = row 8v + j · row i0 + i. Each broadcast of 4 activation values serves
// the V panels' products. The integer sums are exact; the float steps are the same for
// every row, so a row's result does not depend on the rows beside it.
template <int T, int M, int V>
inline void panel_block(const PanelGroup* const* p, const Act& a, int64_t i0, __m256 (*out)[M]) {
  constexpr int span = panel_span<T>();
  // Q6_K's halves have scales of their own; every other type's group has one.
  constexpr bool halves = T == Q6_K;
  // 4-bit types sum a whole group in 16-bit lanes: no int32 running sum.
  constexpr bool whole = span == 8;
  const int64_t groups = a.cols / 32;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[V][M];
  __m256i s32[V][M];  // back to zero each time it goes into acc
#pragma GCC unroll 2
  for (int v = 0; v < V; ++v)
#pragma GCC unroll 4
    for (int i = 0; i < M; ++i) {
      acc[v][i] = _mm256_setzero_ps();
      s32[v][i] = _mm256_setzero_si256();
    }
  const int8_t* xq = a.q + i0 * a.cols;
  for (int64_t g = 0; g < groups; ++g) {
#pragma GCC unroll 8
    for (int c0 = 0; c0 < 8; c0 += span) {
      __m256i s16[V][M];
#pragma GCC unroll 8
      for (int c = c0; c < c0 + span; ++c) {
        __m256i w[V], wu[V];
#pragma GCC unroll 2
        for (int v = 0; v < V; ++v) {
          w[v] = p[v][g].q[c];
          wu[v] = T == Q8_0 ? _mm256_abs_epi8(w[v]) : w[v];
        }
#pragma GCC unroll 4
        for (int i = 0; i < M; ++i) {
          int32_t four;
          std::memcpy(&four, xq + i * a.cols + g * 32 + 4 * c, 4);
          const __m256i x = _mm256_set1_epi32(four);
#pragma GCC unroll 2
          for (int v = 0; v < V; ++v) {
            // Q8_0's signed weights: |w| against x with w's sign, the same products.
            const __m256i prod = _mm256_maddubs_epi16(wu[v], T == Q8_0 ? _mm256_sign_epi8(x, w[v]) : x);
            // The saturating add never saturates here (panel_span), but unlike the plain
            // one the compiler does not reassociate it: with `vpaddw` it computed every
            // product of the group first and spilled them to the stack.
            s16[v][i] = c == c0 ? prod : _mm256_adds_epi16(s16[v][i], prod);
          }
        }
      }
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v)
#pragma GCC unroll 4
        for (int i = 0; i < M; ++i) {
          const __m256i sum = _mm256_madd_epi16(s16[v][i], ones);
          s32[v][i] = whole ? sum : _mm256_add_epi32(s32[v][i], sum);
        }
      // The sums so far into floats: at the end of each half for Q6_K, else of the group
      // (its offsets' share from both halves' activation sums).
      const bool half_done = halves && (c0 + span) % 4 == 0;
      if (half_done || c0 + span == 8) {
        const int h = halves ? (c0 + span) / 4 - 1 : 0;
#pragma GCC unroll 4
        for (int i = 0; i < M; ++i) {
          const float* meta = a.meta + ((i0 + i) * groups + g) * 3;
          const __m256 dx = _mm256_set1_ps(meta[0]);
          const __m256 sx = _mm256_set1_ps(halves ? meta[1 + h] : meta[1] + meta[2]);
#pragma GCC unroll 2
          for (int v = 0; v < V; ++v) {
            const PanelGroup& pg = p[v][g];
            acc[v][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32[v][i]), _mm256_mul_ps(pg.d[h], dx), acc[v][i]);
            acc[v][i] = _mm256_fmadd_ps(pg.m[h], sx, acc[v][i]);
            s32[v][i] = _mm256_setzero_si256();
          }
        }
      }
    }
  }
#pragma GCC unroll 2
  for (int v = 0; v < V; ++v)
#pragma GCC unroll 4
    for (int i = 0; i < M; ++i) out[v][i] = acc[v][i];
}

// 8 sums (one per row of a panel) into `rows` values of O at o.
template <int O>
inline void store_panel_row(__m256 v, int rows, void* o) {
  if (rows == kPanelRows) {
    if constexpr (O == kOutF32)
      _mm256_storeu_ps(static_cast<float*>(o), v);
    else
      _mm_storeu_si128(static_cast<__m128i*>(o), round_16bit8<O>(v));
    return;
  }
  if constexpr (O == kOutF32) {
    alignas(32) float f[8];
    _mm256_store_ps(f, v);
    std::memcpy(o, f, rows * sizeof(float));
  } else {
    alignas(16) uint16_t h[8];
    _mm_store_si128(reinterpret_cast<__m128i*>(h), round_16bit8<O>(v));
    std::memcpy(o, h, rows * sizeof(uint16_t));
  }
}

// Activation rows a chunk takes: each panel is unpacked once per chunk, and the chunk's
// int8 rows stay in L2 cache while every panel of the range passes over them.
constexpr int64_t kPanelChunk = 128;

// Weight rows a task of panel_rows takes: two panels (one broadcast of activations for both
// where panel_rows takes them at once).
constexpr int64_t kTaskRows = 16;

// out[i·ldo + r] (values of O) = weight row r · activation row i, for the weight rows
// [16·t0, 16·t1) (the last panel may be short: `rows` in all) and every activation row;
// `buf` holds two panels.
template <int T, int O>
void panel_rows(const Act& a, const uint8_t* w, int64_t row_bytes, int64_t rows, int64_t t0, int64_t t1, void* out,
                int64_t ldo, PanelGroup* buf) {
  const int64_t groups = a.cols / 32;
  using V = std::conditional_t<O == kOutF32, float, uint16_t>;
  V* o = static_cast<V*>(out);
  const PanelGroup* panels[2] = {buf, buf + groups};
  for (int64_t c0 = 0; c0 < a.n; c0 += kPanelChunk) {
    const int64_t c1 = std::min(a.n, c0 + kPanelChunk);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r = t * kTaskRows;
      const int live[2] = {static_cast<int>(std::min<int64_t>(kPanelRows, rows - r)),
                           static_cast<int>(std::min<int64_t>(kPanelRows, rows - r - kPanelRows))};
      unpack_panel<T>(w, row_bytes, groups, r, live[0], buf);
      // Every activation row of the chunk against NV panels from `first`, in blocks of M
      // rows.
      auto sweep = [&](auto nv, int first) {
        constexpr int NV = decltype(nv)::value;
        const PanelGroup* ps[NV];
        for (int pv = 0; pv < NV; ++pv) ps[pv] = panels[first + pv];
        int64_t i = c0;
        auto block = [&](auto m) {
          constexpr int M = decltype(m)::value;
          __m256 sums[NV][M];
          panel_block<T, M, NV>(ps, a, i, sums);
          for (int pv = 0; pv < NV; ++pv)
            for (int k = 0; k < M; ++k)
              store_panel_row<O>(sums[pv][k], live[first + pv], o + (i + k) * ldo + r + (first + pv) * kPanelRows);
          i += M;
        };
        // As many rows as the registers hold: 4 with one panel, 2 with two (their 16-bit
        // and 32-bit sums and float accumulators, 6 registers a row).
        constexpr int most = NV == 1 ? 4 : 2;
        while (c1 - i >= most) block(std::integral_constant<int, most>{});
        if constexpr (most == 4) {
          if (c1 - i == 3) block(std::integral_constant<int, 3>{});
          if (c1 - i == 2) block(std::integral_constant<int, 2>{});
        }
        if (c1 - i == 1) block(std::integral_constant<int, 1>{});
      };
      // Both panels at once for Q6_K past 4 rows; one at a time otherwise: for the other
      // types two panels measured no faster (and slower for Q5_0 and Q8_0, whose blocks
      // then take 2 rows, not 4), and up to 4 rows are one block either way.
      if (T == Q6_K && live[1] > 0 && c1 - c0 > 4) {
        unpack_panel<T>(w, row_bytes, groups, r + kPanelRows, live[1], buf + groups);
        sweep(std::integral_constant<int, 2>{}, 0);
      } else {
        sweep(std::integral_constant<int, 1>{}, 0);
        if (live[1] > 0) {
          unpack_panel<T>(w, row_bytes, groups, r + kPanelRows, live[1], buf + groups);
          sweep(std::integral_constant<int, 1>{}, 1);
        }
      }
    }
  }
}

// 8 values of X (float, bfloat16 or float16) at p as floats, exactly.
template <typename X>
inline __m256 load8_floats(const X* p) {
  if constexpr (std::is_same_v<X, float>) {
    return _mm256_loadu_ps(p);
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if constexpr (std::is_same_v<X, c10::BFloat16>)
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    else
      return _mm256_cvtph_ps(h);
  }
}

// quantize_rows (kernels/quant.cpp) 16 values at a time, with the same results: the same
// float steps (|x|'s maximum, d = max / 127, x · (1 / d)), and `vcvtps2dq` rounds to
// nearest even as std::nearbyint does in the default rounding mode. The scalar loop was
// ~7% of a batch-64 step.
template <typename X>
void quantize_rows(const X* x, int64_t n, int64_t cols, int64_t block, int8_t* q, float* meta, int16_t* sums) {
  const int64_t groups = cols / 32;
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t b0 = 0; b0 < cols; b0 += block) {
      const X* v = x + i * cols + b0;
      __m256 most = _mm256_setzero_ps();
      for (int64_t k = 0; k < block; k += 8) most = _mm256_max_ps(most, _mm256_and_ps(load8_floats(v + k), abs_mask));
      __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(most), _mm256_extractf128_ps(most, 1));
      m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
      m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
      const float amax = _mm_cvtss_f32(m4);
      const float d = amax / 127.0f;
      const __m256 inv = _mm256_set1_ps(d > 0.0f ? 1.0f / d : 0.0f);
      int8_t* o = q + i * cols + b0;
      for (int64_t h = 0; h < block / 16; ++h) {
        const __m256i r0 = _mm256_cvtps_epi32(_mm256_mul_ps(load8_floats(v + h * 16), inv));
        const __m256i r1 = _mm256_cvtps_epi32(_mm256_mul_ps(load8_floats(v + h * 16 + 8), inv));
        // 16 int16s in value order, then 16 int8s (|r| ≤ 127: no saturation).
        const __m256i w16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(r0, r1), 0xd8);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o + h * 16),
                         _mm_packs_epi16(_mm256_castsi256_si128(w16), _mm256_extracti128_si256(w16, 1)));
        const __m256i s8 = _mm256_madd_epi16(w16, _mm256_set1_epi16(1));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        const int32_t sum = _mm_cvtsi128_si32(s4);
        float* m = meta + (i * groups + (b0 + h * 16) / 32) * 3;
        m[0] = d;
        m[1 + h % 2] = d * sum;
        if (sums) sums[(i * cols + b0) / 16 + h] = static_cast<int16_t>(sum);
      }
    }
  }
}
