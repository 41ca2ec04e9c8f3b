// Decode attention straight from the paged KV cache, on the CPU.
//
// One query token per sequence attends to its context, read in place from the cache
// through the sequence's slot list: no gathered copy of K and V, no padding, one pass over
// each cached row. The query heads that share a KV head are computed together, so each K
// and V row is loaded once for all of them. Work is split over (sequence, KV head) pairs
// on libtorch's own OpenMP pool (at::parallel_for), the pool every other operation of the
// step runs on.
//
// Rounding follows transformers' eager attention in the model's dtype: scores are rounded
// to the dtype before the softmax, the softmax runs in float32, and the probabilities are
// rounded to the dtype before they weigh V. Sums are accumulated in float32.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "convert.h"
#include "entry.h"

namespace {

using sluice::round_to;
using sluice::to_float;

// e^x for x <= 0, branch-free so that loops over it vectorise: x = n·ln2 + r with
// |r| <= ln2/2, e^r by its Taylor series to r^7 (relative error below 2e-7), times 2^n built
// in the exponent bits. Below -87 the result is flushed to e^-87 (~1.6e-38), which a
// softmax cannot tell from zero.
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return p * two_n;
}

template <typename T>
struct Args {
  T* out;
  const T* q;
  const T* kc;
  const T* vc;
  const int64_t* slots;
  const int64_t* lens;
  int64_t lmax, h, kvh, d;
  float scale;
  float softcap;  // > 0: scores become softcap * tanh(score / softcap) (Gemma 2)
};

// Soft-capping of one query head's scaled scores, each step rounded to the dtype as
// transformers' eager attention does it.
template <typename T>
inline void cap_scores(float* s, int64_t len, float cap) {
  for (int64_t j = 0; j < len; ++j) s[j] = round_to<T>(round_to<T>(std::tanh(round_to<T>(s[j] / cap))) * cap);
}

// Work items begin..end, each one (sequence, KV head) pair.
template <typename T>
__attribute__((always_inline)) inline void attend_items(const Args<T>& a, int64_t begin, int64_t end) {
  const int64_t d = a.d, kvh = a.kvh;
  const int64_t group = a.h / kvh;
  std::vector<float> qf(group * d);
  std::vector<float> acc(group * d);
  std::vector<float> row(d);
  std::vector<float> scores;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t seq = item / kvh;
    const int64_t g = item % kvh;
    const int64_t len = a.lens[seq];
    const int64_t* seq_slots = a.slots + seq * a.lmax;
    // Query heads g*group .. (g+1)*group share KV head g.
    const T* qs = a.q + (seq * a.h + g * group) * d;
    for (int64_t i = 0; i < group * d; ++i) qf[i] = to_float(qs[i]);
    scores.assign(group * len, 0.0f);
    for (int64_t j = 0; j < len; ++j) {
      const T* k = a.kc + (seq_slots[j] * kvh + g) * d;
      for (int64_t t = 0; t < d; ++t) row[t] = to_float(k[t]);
      for (int64_t r = 0; r < group; ++r) {
        const float* qr = qf.data() + r * d;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t t = 0; t < d; ++t) dot += qr[t] * row[t];
        scores[r * len + j] = round_to<T>(dot) * a.scale;
      }
    }
    for (int64_t r = 0; r < group; ++r) {
      float* s = scores.data() + r * len;
      if (a.softcap > 0.0f) cap_scores<T>(s, len, a.softcap);
      float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
      for (int64_t j = 0; j < len; ++j) mx = std::max(mx, s[j]);
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < len; ++j) {
        s[j] = exp_nonpositive(s[j] - mx);
        sum += s[j];
      }
      const float inv = 1.0f / sum;
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) s[j] = round_to<T>(s[j] * inv);
    }
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t j = 0; j < len; ++j) {
      const T* v = a.vc + (seq_slots[j] * kvh + g) * d;
      for (int64_t t = 0; t < d; ++t) row[t] = to_float(v[t]);
      for (int64_t r = 0; r < group; ++r) {
        const float p = scores[r * len + j];
        float* o = acc.data() + r * d;
        for (int64_t t = 0; t < d; ++t) o[t] += p * row[t];
      }
    }
    T* o = a.out + (seq * a.h + g * group) * d;
    for (int64_t i = 0; i < group * d; ++i) o[i] = sluice::from_float<T>(acc[i]);
  }
}

// One entry point per dtype, built for several instruction sets.
SLUICE_CLONED_RANGE(attend, attend_items)

// The same computation with AVX-512 intrinsics, for float32 and bfloat16 with a head size
// that is a multiple of 16 (at most 256): K and V rows are widened once into registers and
// used by every query head of the group, the output is accumulated in registers, and the
// softmax runs 16 scores at a time.
#define SLUICE_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma")))

SLUICE_AVX512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
SLUICE_AVX512 inline __m512 load16(const c10::BFloat16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// Rounds each lane to the nearest bfloat16 (ties to even), kept widened as float32.
SLUICE_AVX512 inline __m512 round_bf16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  return _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}
template <typename T>
SLUICE_AVX512 inline __m512 round_lanes(__m512 v) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) return round_bf16(v);
  return v;
}

SLUICE_AVX512 inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
SLUICE_AVX512 inline void store16(c10::BFloat16* p, __m512 v) {
  const __m512i bits = _mm512_srli_epi32(_mm512_castps_si512(round_bf16(v)), 16);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(bits));
}

// exp_nonpositive, 16 lanes at a time (vscalefps multiplies by 2^n).
SLUICE_AVX512 inline __m512 exp_nonpositive16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// Lanes of a 16-wide chunk starting at j that lie below len.
inline __mmask16 tail_mask(int64_t j, int64_t len) {
  const int64_t left = len - j;
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

// Scores (already dot products) of one query head: scaled, rounded, softmaxed in place.
template <typename T>
SLUICE_AVX512 void softmax16(float* s, int64_t len, float scale) {
  const __m512 vscale = _mm512_set1_ps(scale);
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < len; j += 16) {
    const __mmask16 m = tail_mask(j, len);
    const __m512 x = _mm512_mul_ps(round_lanes<T>(_mm512_maskz_loadu_ps(m, s + j)), vscale);
    _mm512_mask_storeu_ps(s + j, m, x);
    vmax = _mm512_mask_max_ps(vmax, m, vmax, x);
  }
  const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
  __m512 vsum = _mm512_setzero_ps();
  for (int64_t j = 0; j < len; j += 16) {
    const __mmask16 m = tail_mask(j, len);
    const __m512 e = exp_nonpositive16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), mx));
    _mm512_mask_storeu_ps(s + j, m, e);
    vsum = _mm512_mask_add_ps(vsum, m, vsum, e);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vsum));
  for (int64_t j = 0; j < len; j += 16) {
    const __mmask16 m = tail_mask(j, len);
    _mm512_mask_storeu_ps(s + j, m, round_lanes<T>(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + j), inv)));
  }
}

constexpr int64_t kMaxVectors = 16;  // head size up to 256
constexpr int64_t kMaxAccumulators = 128;  // query heads per KV head × head size / 16

template <typename T>
SLUICE_AVX512 void attend_items_avx512(const Args<T>& a, int64_t begin, int64_t end) {
  const int64_t d = a.d, kvh = a.kvh;
  const int64_t group = a.h / kvh, nv = d / 16;
  std::vector<float> qf(group * d);
  std::vector<float> scores;
  __m512 acc[kMaxAccumulators];
  __m512 row[kMaxVectors];
  for (int64_t item = begin; item < end; ++item) {
    const int64_t seq = item / kvh;
    const int64_t g = item % kvh;
    const int64_t len = a.lens[seq];
    const int64_t* seq_slots = a.slots + seq * a.lmax;
    const T* qs = a.q + (seq * a.h + g * group) * d;
    for (int64_t i = 0; i < group * d; i += 16) _mm512_storeu_ps(qf.data() + i, load16(qs + i));
    scores.resize(group * len);
    for (int64_t j = 0; j < len; ++j) {
      const T* k = a.kc + (seq_slots[j] * kvh + g) * d;
      for (int64_t c = 0; c < nv; ++c) row[c] = load16(k + 16 * c);
      for (int64_t r = 0; r < group; ++r) {
        const float* qr = qf.data() + r * d;
        __m512 dot = _mm512_mul_ps(_mm512_loadu_ps(qr), row[0]);
        for (int64_t c = 1; c < nv; ++c) dot = _mm512_fmadd_ps(_mm512_loadu_ps(qr + 16 * c), row[c], dot);
        scores[r * len + j] = _mm512_reduce_add_ps(dot);
      }
    }
    for (int64_t r = 0; r < group; ++r) {
      float* s = scores.data() + r * len;
      if (a.softcap > 0.0f) {
        // Scale and cap first; the softmax then sees the capped scores (scale 1).
        for (int64_t j = 0; j < len; ++j) s[j] = round_to<T>(s[j]) * a.scale;
        cap_scores<T>(s, len, a.softcap);
        softmax16<T>(s, len, 1.0f);
      } else {
        softmax16<T>(s, len, a.scale);
      }
    }
    for (int64_t i = 0; i < group * nv; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t j = 0; j < len; ++j) {
      const T* v = a.vc + (seq_slots[j] * kvh + g) * d;
      for (int64_t c = 0; c < nv; ++c) row[c] = load16(v + 16 * c);
      for (int64_t r = 0; r < group; ++r) {
        const __m512 p = _mm512_set1_ps(scores[r * len + j]);
        for (int64_t c = 0; c < nv; ++c) acc[r * nv + c] = _mm512_fmadd_ps(p, row[c], acc[r * nv + c]);
      }
    }
    T* o = a.out + (seq * a.h + g * group) * d;
    for (int64_t r = 0; r < group; ++r)
      for (int64_t c = 0; c < nv; ++c) store16(o + r * d + 16 * c, acc[r * nv + c]);
  }
}

bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  return has;
}

template <typename T>
void decode_attention(const Args<T>& a, int64_t b, bool allow_avx512) {
  constexpr bool wide_type = std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16>;
  if constexpr (wide_type) {
    if (allow_avx512 && cpu_has_avx512() && a.d % 16 == 0 && a.d / 16 <= kMaxVectors &&
        a.h / a.kvh * (a.d / 16) <= kMaxAccumulators) {
      at::parallel_for(0, b * a.kvh, 1, [&](int64_t begin, int64_t end) { attend_items_avx512(a, begin, end); });
      return;
    }
  }
  at::parallel_for(0, b * a.kvh, 1, [&](int64_t begin, int64_t end) { attend(a, begin, end); });
}

}  // namespace

// out, q: [b, h, d]; kc, vc: [slots, kvh, d]; slots: int64 [b, lmax], the cache slot of each
// context position (entries past a sequence's length are not read); lens: int64 [b];
// softcap > 0 caps the scaled scores (0: none).
// `allow_avx512` 0 keeps to the portable loops (tests compare both). Returns null, or a
// message saying what was wrong (valid until the next call on this thread).
extern "C" const char* sluice_paged_decode_attention(at::Tensor* out, const at::Tensor* q,
                                                     const at::Tensor* kc, const at::Tensor* vc,
                                                     const at::Tensor* slots,
                                                     const at::Tensor* lens, double scale,
                                                     double softcap, int allow_avx512) {
  return sluice::guarded([&] {
    TORCH_CHECK(q->dim() == 3 && kc->dim() == 3 && vc->dim() == 3, "q, k and v must be 3-d");
    TORCH_CHECK(q->device().is_cpu() && kc->device().is_cpu() && vc->device().is_cpu() && out->device().is_cpu() &&
                    slots->device().is_cpu() && lens->device().is_cpu(),
                "the CPU kernel takes CPU tensors");
    TORCH_CHECK(q->is_contiguous() && kc->is_contiguous() && vc->is_contiguous() && out->is_contiguous(),
                "q, k, v and out must be contiguous");
    TORCH_CHECK(slots->scalar_type() == at::kLong && lens->scalar_type() == at::kLong, "slots and lens are int64");
    TORCH_CHECK(slots->is_contiguous() && slots->dim() == 2, "slots must be a contiguous [b, lmax]");
    const int64_t b = q->size(0), h = q->size(1), d = q->size(2);
    const int64_t kvh = kc->size(1);
    TORCH_CHECK(kvh > 0 && h % kvh == 0, "query heads must be a multiple of KV heads");
    TORCH_CHECK(kc->size(2) == d && vc->sizes() == kc->sizes(), "k and v shapes disagree with q");
    TORCH_CHECK(out->sizes() == q->sizes() && out->scalar_type() == q->scalar_type(), "out must be like q");
    TORCH_CHECK(kc->scalar_type() == q->scalar_type() && vc->scalar_type() == q->scalar_type(), "dtypes differ");
    TORCH_CHECK(slots->size(0) == b && lens->numel() == b, "one slot row and one length per sequence");
    const int64_t lmax = slots->size(1);
    const int64_t* lp = lens->data_ptr<int64_t>();
    const int64_t* sp = slots->data_ptr<int64_t>();
    const int64_t num_slots = kc->size(0);
    for (int64_t i = 0; i < b; ++i) {
      TORCH_CHECK(lp[i] >= 1 && lp[i] <= lmax, "a length is out of range");
      for (int64_t j = 0; j < lp[i]; ++j) TORCH_CHECK(sp[i * lmax + j] >= 0 && sp[i * lmax + j] < num_slots, "a slot is out of range");
    }
    auto run = [&](auto zero) {
      using T = decltype(zero);
      const Args<T> args{out->data_ptr<T>(), q->data_ptr<T>(), kc->data_ptr<T>(), vc->data_ptr<T>(), sp, lp,
                         lmax, h, kvh, d, static_cast<float>(scale), static_cast<float>(softcap)};
      decode_attention<T>(args, b, allow_avx512 != 0);
    };
    sluice::dispatch_float_types(q->scalar_type(), "decode attention", run);
  });
}
