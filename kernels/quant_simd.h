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

// out[i·ldo + r] = row r · activation row i, for weight rows [r0, r1) and every activation
// row: blocks of 4 weight rows by 2 activation rows (the weights' groups stay in L1 cache
// across the activation rows' blocks; 4 activation rows measured no faster with AVX2).
template <int T>
void dot_rows(const Act& a, const uint8_t* w, int64_t row_bytes, int64_t r0, int64_t r1, float* out, int64_t ldo) {
  constexpr int R = 4;
  int64_t r = r0;
  for (; r + R <= r1; r += R) {
    int64_t i = 0;
    for (; i + 2 <= a.n; i += 2) dot_block<T, R, 2>(a, w, row_bytes, r, i, out, ldo);
    if (i < a.n) dot_block<T, R, 1>(a, w, row_bytes, r, i, out, ldo);
  }
  for (; r < r1; ++r)
    for (int64_t i = 0; i < a.n; ++i) dot_block<T, 1, 1>(a, w, row_bytes, r, i, out, ldo);
}

// 8 floats rounded to bfloat16 as 8 uint16s: to nearest, ties to even, as
// sluice::from_float<c10::BFloat16> rounds.
inline __m128i round_bf16x8(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
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
          const __m128i h16 = O == kOutBF16 ? round_bf16x8(v) : _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
          _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(out) + i), h16);
        }
      }
    }
  }
}
