// Prompt attention straight from the paged KV cache, on the CPU: flash attention's scheme.
//
// A prompt chunk's n queries attend causally to a context of ctx keys whose last n are the
// chunk's own (query i sits at position ctx - n + i and sees keys 0 to ctx - n + i): a
// whole prompt, or a chunk after a cached prefix or an earlier chunk. Keys and values are
// read in place through the context's slot list and widened to float32 once, in tiles of 64
// keys laid out for the products (keys transposed), shared by every query.
//
// A work item is one KV head and 32 consecutive queries, with every query head of the
// group: its rows (position-major: row r is query r / group, head r % group) keep a running
// maximum, a running sum and a float32 output, updated tile by tile (online softmax), so
// the scores are never held for the whole context. Tiles wholly after a row's position are
// never computed. Items are handed out longest first (the last queries see the most keys)
// from one OpenMP region on libtorch's pool. Each item is computed alone and in the same
// order whatever the thread count, so a sequence's result does not depend on it, nor on the
// other sequences of the step.
//
// Rounding follows libtorch's fused CPU attention (what transformers runs by default): q, k
// and v are widened exactly, q is scaled and the scores are formed in float32, and the
// probabilities (e^(s - running maximum)) are rounded to the dtype before they weigh the
// values; the running sums and the output accumulate in float32, and the output is rounded
// to the dtype once.
//
// Two builds of the three tile steps (scores, online softmax, values): AVX2 intrinsics for
// float32 and bfloat16 with a head size that is a multiple of 8, and portable loops (target
// clones) for the rest.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <omp.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "convert.h"
#include "entry.h"
#include "simd_math.h"

namespace {

using sluice::cpu_has_avx2;
using sluice::exp_nonpositive;
using sluice::exp_nonpositive8;
using sluice::max8;
using sluice::sum8;
using sluice::to_float;

constexpr int64_t kKeys = 64;     // keys per tile: a row of scores is 8 vectors of 8
constexpr int64_t kQueries = 32;  // query positions per work item

// One thread's rows, float32: rows × d queries (scaled), rows × 64 scores then
// probabilities, rows × d output, and per row the running maximum, running sum and the
// visible keys of the current tile.
struct Scratch {
  std::vector<float> q, s, o, m, l;
  std::vector<int64_t> lim;
  void size(int64_t rows, int64_t d) {
    q.resize(rows * d);
    s.resize(rows * kKeys);
    o.resize(rows * d);
    m.resize(rows);
    l.resize(rows);
    lim.resize(rows);
  }
};

// The dtype the probabilities are rounded to before they weigh the values, as libtorch's
// fused attention does (its products take them in the dtype).
enum class Rounding { None, BFloat16, Half };

template <typename T>
constexpr Rounding rounding_of() {
  if constexpr (std::is_same_v<T, c10::BFloat16>) return Rounding::BFloat16;
  if constexpr (std::is_same_v<T, c10::Half>) return Rounding::Half;
  return Rounding::None;
}

inline float round_as(float x, Rounding r) {
  switch (r) {
    case Rounding::BFloat16: return sluice::round_to<c10::BFloat16>(x);
    case Rounding::Half: return sluice::round_to<c10::Half>(x);
    default: return x;
  }
}

// The three steps of a tile, on `rows` rows.
struct TileSteps {
  // s[r][j] = q[r] · kt[·][j] for the 64 keys.
  void (*scores)(const float* q, const float* kt, float* s, int64_t rows, int64_t d);
  // The online softmax: row r's first lim[r] scores become e^(s - m'), rounded to the
  // dtype, the rest 0; m, l (summed before the rounding) and the row's output are brought to
  // the new maximum m'.
  void (*softmax)(float* s, const int64_t* lim, float* m, float* l, float* o, int64_t rows, int64_t d, Rounding rounding);
  // o[r] += Σ_j p[r][j] · v[j] over the tile's first `keys` keys.
  void (*values)(const float* p, const float* v, float* o, int64_t rows, int64_t d, int64_t keys);
};

// The new running maximum of a row with `lim` visible scores whose largest is `mx`, and the
// factor that brings the old sums to it (0 for a row that had none).
inline float rescale(float* m, float* l, float mx, float& corr) {
  const float next = std::max(*m, mx);
  corr = *m == -INFINITY ? 0.0f : exp_nonpositive(*m - next);
  *m = next;
  *l *= corr;
  return next;
}

// --- Portable steps ---------------------------------------------------------------------

SLUICE_CLONES void scores_portable(const float* q, const float* kt, float* s, int64_t rows, int64_t d) {
  for (int64_t r = 0; r < rows; ++r) {
    float acc[kKeys] = {};
    for (int64_t t = 0; t < d; ++t) {
      const float x = q[r * d + t];
#pragma omp simd
      for (int64_t j = 0; j < kKeys; ++j) acc[j] += x * kt[t * kKeys + j];
    }
    std::copy(acc, acc + kKeys, s + r * kKeys);
  }
}

SLUICE_CLONES void softmax_portable(float* s, const int64_t* lim, float* m, float* l, float* o, int64_t rows, int64_t d,
                                    Rounding rounding) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = s + r * kKeys;
    const int64_t n = lim[r];
    if (n == 0) {
      std::fill(row, row + kKeys, 0.0f);
      continue;
    }
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) mx = std::max(mx, row[j]);
    float corr;
    const float next = rescale(m + r, l + r, mx, corr);
    float sum = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
      const float e = exp_nonpositive(row[j] - next);
      sum += e;
      row[j] = round_as(e, rounding);
    }
    std::fill(row + n, row + kKeys, 0.0f);
    l[r] += sum;
    if (corr != 1.0f)
      for (int64_t t = 0; t < d; ++t) o[r * d + t] *= corr;
  }
}

SLUICE_CLONES void values_portable(const float* p, const float* v, float* o, int64_t rows, int64_t d, int64_t keys) {
  for (int64_t r = 0; r < rows; ++r) {
    float* out = o + r * d;
    for (int64_t j = 0; j < keys; ++j) {
      const float pj = p[r * kKeys + j];
#pragma omp simd
      for (int64_t t = 0; t < d; ++t) out[t] += pj * v[j * d + t];
    }
  }
}

// --- AVX2 steps (d a multiple of 8) -------------------------------------------------------

// out[r][8c .. 8c + 8) (+)= Σ_t a[r·lda + t] · b[t·ldb + 8c .. 8c + 8) for R rows and C
// vectors, accumulated in registers over t < n: the scores (a the queries, b the keys
// transposed) and the values' weighted sums (a the probabilities, b the values) alike.
// The unroll pragmas matter: without them GCC kept `acc` on the stack, a store per FMA.
template <int R, int C, bool kAccumulate>
SLUICE_AVX2 inline void product_block(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t n, float* out,
                                      int64_t ldo) {
  __m256 acc[R][C];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int c = 0; c < C; ++c) acc[r][c] = kAccumulate ? _mm256_loadu_ps(out + r * ldo + 8 * c) : _mm256_setzero_ps();
  for (int64_t t = 0; t < n; ++t) {
    __m256 x[C];
#pragma GCC unroll 16
    for (int c = 0; c < C; ++c) x[c] = _mm256_loadu_ps(b + t * ldb + 8 * c);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m256 y = _mm256_broadcast_ss(a + r * lda + t);
#pragma GCC unroll 16
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(y, x[c], acc[r][c]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int c = 0; c < C; ++c) _mm256_storeu_ps(out + r * ldo + 8 * c, acc[r][c]);
}

template <int R>
SLUICE_AVX2 inline void score_rows(const float* q, const float* kt, float* s, int64_t d) {
  for (int64_t c = 0; c < kKeys / 8; c += 2) product_block<R, 2, false>(q, d, kt + 8 * c, kKeys, d, s + 8 * c, kKeys);
}

// 6 rows × 2 vectors: 12 accumulators, 2 key vectors and a broadcast in AVX2's 16 registers.
SLUICE_AVX2 void scores_avx2(const float* q, const float* kt, float* s, int64_t rows, int64_t d) {
  int64_t r = 0;
  for (; r + 6 <= rows; r += 6) score_rows<6>(q + r * d, kt, s + r * kKeys, d);
  switch (rows - r) {
    case 5: score_rows<5>(q + r * d, kt, s + r * kKeys, d); break;
    case 4: score_rows<4>(q + r * d, kt, s + r * kKeys, d); break;
    case 3: score_rows<3>(q + r * d, kt, s + r * kKeys, d); break;
    case 2: score_rows<2>(q + r * d, kt, s + r * kKeys, d); break;
    case 1: score_rows<1>(q + r * d, kt, s + r * kKeys, d); break;
    default: break;
  }
}

// Float32 and bfloat16 only.
SLUICE_AVX2 void softmax_avx2(float* s, const int64_t* lim, float* m, float* l, float* o, int64_t rows, int64_t d,
                              Rounding rounding) {
  const bool to_bf16 = rounding == Rounding::BFloat16;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 minus_inf = _mm256_set1_ps(-INFINITY);
  for (int64_t r = 0; r < rows; ++r) {
    float* row = s + r * kKeys;
    const int64_t n = lim[r];
    const __m256i count = _mm256_set1_epi32(static_cast<int>(n));
    __m256 visible[kKeys / 8];
    __m256 vmax = minus_inf;
    for (int64_t c = 0; c < kKeys / 8; ++c) {
      visible[c] = _mm256_castsi256_ps(_mm256_cmpgt_epi32(count, _mm256_add_epi32(lane, _mm256_set1_epi32(8 * c))));
      vmax = _mm256_max_ps(vmax, _mm256_blendv_ps(minus_inf, _mm256_loadu_ps(row + 8 * c), visible[c]));
    }
    if (n == 0) {
      for (int64_t c = 0; c < kKeys / 8; ++c) _mm256_storeu_ps(row + 8 * c, _mm256_setzero_ps());
      continue;
    }
    float corr;
    const __m256 next = _mm256_set1_ps(rescale(m + r, l + r, max8(vmax), corr));
    __m256 vsum = _mm256_setzero_ps();
    for (int64_t c = 0; c < kKeys / 8; ++c) {
      const __m256 e = _mm256_and_ps(exp_nonpositive8(_mm256_sub_ps(_mm256_loadu_ps(row + 8 * c), next)), visible[c]);
      _mm256_storeu_ps(row + 8 * c, to_bf16 ? sluice::round_bf16(e) : e);
      vsum = _mm256_add_ps(vsum, e);
    }
    l[r] += sum8(vsum);
    if (corr != 1.0f) {
      const __m256 f = _mm256_set1_ps(corr);
      for (int64_t t = 0; t < d; t += 8) _mm256_storeu_ps(o + r * d + t, _mm256_mul_ps(f, _mm256_loadu_ps(o + r * d + t)));
    }
  }
}

// R rows over every vector of the output: 4 at a time, then 2, then 1.
template <int R>
SLUICE_AVX2 inline void value_rows(const float* p, const float* v, float* o, int64_t d, int64_t keys) {
  int64_t c = 0;
  for (; c + 4 <= d / 8; c += 4) product_block<R, 4, true>(p, kKeys, v + 8 * c, d, keys, o + 8 * c, d);
  for (; c + 2 <= d / 8; c += 2) product_block<R, 2, true>(p, kKeys, v + 8 * c, d, keys, o + 8 * c, d);
  for (; c < d / 8; ++c) product_block<R, 1, true>(p, kKeys, v + 8 * c, d, keys, o + 8 * c, d);
}

// 3 rows × 4 vectors: 12 accumulators, 4 value vectors and a broadcast.
SLUICE_AVX2 void values_avx2(const float* p, const float* v, float* o, int64_t rows, int64_t d, int64_t keys) {
  int64_t r = 0;
  for (; r + 3 <= rows; r += 3) value_rows<3>(p + r * kKeys, v, o + r * d, d, keys);
  if (rows - r == 2) value_rows<2>(p + r * kKeys, v, o + r * d, d, keys);
  if (rows - r == 1) value_rows<1>(p + r * kKeys, v, o + r * d, d, keys);
}

// --- The driver -------------------------------------------------------------------------

template <typename T>
struct Args {
  T* out;        // [n, h, d]
  const T* q;    // [n, h, d]
  const T* kc;   // [slots, kvh, d]
  const T* vc;   // [slots, kvh, d]
  const int64_t* slots;  // [ctx]
  int64_t n, ctx, h, kvh, d;
  float scale;
  // Laid out by the driver, float32, for each KV head and tile of 64 keys (zeros past ctx):
  int64_t key_tiles;
  float* kt;  // [kvh, key_tiles, d, 64]: the keys transposed
  float* v;   // [kvh, key_tiles, 64, d]: the values
};

// The keys and values of one KV head's tile, widened and laid out for the tile steps.
template <typename T>
void pack_tile(const Args<T>& a, int64_t g, int64_t tile) {
  const int64_t d = a.d, k0 = tile * kKeys, keys = std::min(kKeys, a.ctx - k0);
  float* kt = a.kt + (g * a.key_tiles + tile) * d * kKeys;
  float* v = a.v + (g * a.key_tiles + tile) * kKeys * d;
  for (int64_t j = 0; j < keys; ++j) {
    const int64_t at = (a.slots[k0 + j] * a.kvh + g) * d;
    for (int64_t t = 0; t < d; ++t) {
      kt[t * kKeys + j] = to_float(a.kc[at + t]);
      v[j * d + t] = to_float(a.vc[at + t]);
    }
  }
  for (int64_t j = keys; j < kKeys; ++j) {  // a last, short tile: finite scores, no values
    for (int64_t t = 0; t < d; ++t) kt[t * kKeys + j] = 0.0f;
    std::fill(v + j * d, v + (j + 1) * d, 0.0f);
  }
}

// One KV head × up to kQueries queries: `tile` counts query tiles from the chunk's start.
template <typename T>
void attend_item(const Args<T>& a, const TileSteps& steps, int64_t tile, int64_t g, Scratch& w) {
  const int64_t d = a.d, group = a.h / a.kvh;
  const int64_t i0 = tile * kQueries, queries = std::min(kQueries, a.n - i0), rows = queries * group;
  const int64_t first_pos = a.ctx - a.n + i0;  // the position of the item's first query
  for (int64_t r = 0; r < rows; ++r) {
    const T* src = a.q + ((i0 + r / group) * a.h + g * group + r % group) * d;
    for (int64_t t = 0; t < d; ++t) w.q[r * d + t] = to_float(src[t]) * a.scale;
  }
  std::fill(w.o.begin(), w.o.begin() + rows * d, 0.0f);
  std::fill(w.m.begin(), w.m.begin() + rows, -INFINITY);
  std::fill(w.l.begin(), w.l.begin() + rows, 0.0f);
  const int64_t seen = first_pos + queries;  // keys any of the item's queries may see
  for (int64_t k0 = 0; k0 < seen; k0 += kKeys) {
    const int64_t keys = std::min(kKeys, seen - k0);
    const int64_t at = g * a.key_tiles + k0 / kKeys;
    for (int64_t r = 0; r < rows; ++r) w.lim[r] = std::clamp<int64_t>(first_pos + r / group + 1 - k0, 0, keys);
    steps.scores(w.q.data(), a.kt + at * d * kKeys, w.s.data(), rows, d);
    steps.softmax(w.s.data(), w.lim.data(), w.m.data(), w.l.data(), w.o.data(), rows, d, rounding_of<T>());
    steps.values(w.s.data(), a.v + at * kKeys * d, w.o.data(), rows, d, keys);
  }
  for (int64_t r = 0; r < rows; ++r) {
    T* dst = a.out + ((i0 + r / group) * a.h + g * group + r % group) * d;
    const float inv = 1.0f / w.l[r];
    for (int64_t t = 0; t < d; ++t) dst[t] = sluice::from_float<T>(w.o[r * d + t] * inv);
  }
}

template <typename T>
void prefill_attention(Args<T> a, bool allow_simd) {
  TileSteps steps{scores_portable, softmax_portable, values_portable};
  constexpr bool wide_type = std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16>;
  if (wide_type && allow_simd && cpu_has_avx2() && a.d % 8 == 0) steps = {scores_avx2, softmax_avx2, values_avx2};
  const int64_t key_tiles = (a.ctx + kKeys - 1) / kKeys;
  thread_local std::vector<float> packed;
  packed.resize(std::max<size_t>(packed.size(), 2 * a.kvh * key_tiles * kKeys * a.d));
  a.key_tiles = key_tiles;
  a.kt = packed.data();
  a.v = packed.data() + a.kvh * key_tiles * kKeys * a.d;
  const int64_t tiles = (a.n + kQueries - 1) / kQueries, items = tiles * a.kvh;
  const int64_t rows = std::min(kQueries, a.n) * (a.h / a.kvh);
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items)));
#pragma omp parallel num_threads(threads)
  {
    // 1. Every KV head's key tiles, packed once for all the queries (the loop ends at a barrier).
#pragma omp for schedule(static)
    for (int64_t i = 0; i < a.kvh * key_tiles; ++i) pack_tile(a, i / key_tiles, i % key_tiles);
    // 2. The query tiles, longest first.
    thread_local Scratch w;  // on libtorch's pool threads, kept from call to call
    w.size(rows, a.d);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) attend_item(a, steps, tiles - 1 - item / a.kvh, item % a.kvh, w);
  }
}

}  // namespace

// out, q: [n, h, d]; kc, vc: [slots, kvh, d]; slots: int64 [ctx], the cache slot of each
// context position, the last n being the queries' own. `allow_simd` 0 keeps to the portable
// loops (tests compare both). Returns null, or a message saying what was wrong (valid until
// the next call on this thread).
extern "C" const char* sluice_paged_prefill_attention(at::Tensor* out, const at::Tensor* q, const at::Tensor* kc,
                                                      const at::Tensor* vc, const at::Tensor* slots, double scale,
                                                      int allow_simd) {
  return sluice::guarded([&] {
    TORCH_CHECK(q->dim() == 3 && kc->dim() == 3 && vc->dim() == 3, "q, k and v must be 3-d");
    TORCH_CHECK(q->device().is_cpu() && kc->device().is_cpu() && vc->device().is_cpu() && out->device().is_cpu() &&
                    slots->device().is_cpu(),
                "the CPU kernel takes CPU tensors");
    TORCH_CHECK(q->is_contiguous() && kc->is_contiguous() && vc->is_contiguous() && out->is_contiguous(),
                "q, k, v and out must be contiguous");
    TORCH_CHECK(slots->scalar_type() == at::kLong && slots->is_contiguous() && slots->dim() == 1,
                "slots must be a contiguous int64 [ctx]");
    const int64_t n = q->size(0), h = q->size(1), d = q->size(2), kvh = kc->size(1), ctx = slots->size(0);
    TORCH_CHECK(kvh > 0 && h % kvh == 0, "query heads must be a multiple of KV heads");
    TORCH_CHECK(kc->size(2) == d && vc->sizes() == kc->sizes(), "k and v shapes disagree with q");
    TORCH_CHECK(out->sizes() == q->sizes() && out->scalar_type() == q->scalar_type(), "out must be like q");
    TORCH_CHECK(kc->scalar_type() == q->scalar_type() && vc->scalar_type() == q->scalar_type(), "dtypes differ");
    TORCH_CHECK(n <= ctx, "more queries than context positions");
    const int64_t* sp = slots->data_ptr<int64_t>();
    for (int64_t j = 0; j < ctx; ++j) TORCH_CHECK(sp[j] >= 0 && sp[j] < kc->size(0), "a slot is out of range");
    if (n == 0) return;
    auto run = [&](auto zero) {
      using T = decltype(zero);
      const Args<T> args{out->data_ptr<T>(), q->data_ptr<T>(), kc->data_ptr<T>(), vc->data_ptr<T>(), sp,
                         n, ctx, h, kvh, d, static_cast<float>(scale), 0, nullptr, nullptr};
      prefill_attention<T>(args, allow_simd != 0);
    };
    sluice::dispatch_float_types(q->scalar_type(), "prefill attention", run);
  });
}
