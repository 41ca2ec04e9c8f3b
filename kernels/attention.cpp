// Decode attention straight from the paged KV cache, on the CPU.
//
// One query token per sequence attends to its context, read in place from the cache
// through the sequence's slot list: no gathered copy of K and V, no padding, one pass over
// each cached row. The query heads that share a KV head are computed together, so each K
// and V row is loaded once for all of them.
//
// Work is split over (sequence, KV head, chunk of 64 context positions), so that even one
// sequence keeps every thread busy, in four phases inside one OpenMP region on libtorch's
// pool (the threads wait at a barrier between phases, without being woken again):
//   1. scores: each chunk's q·k for the group's query heads;
//   2. softmax: each (sequence, query head) row over its whole context;
//   3. each chunk's probability-weighted sum of its V rows, in float32;
//   4. each (sequence, query head): the chunks' sums added in order, stored in the dtype.
// The chunks are fixed by the sequence's own length, and each phase's item is computed
// alone, so a sequence's result does not depend on which other sequences share the step
// or on the number of threads.
//
// Rounding follows transformers' eager attention in the model's dtype: scores are rounded
// to the dtype before the softmax, the softmax runs in float32, and the probabilities are
// rounded to the dtype before they weigh V. Sums are accumulated in float32.
//
// Two builds of phases 1 to 3: AVX2 intrinsics for float32 and bfloat16 with a head size
// that is a multiple of 8 (at most 256), and portable loops (target clones) for the rest.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <omp.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "convert.h"
#include "entry.h"
#include "simd_math.h"

namespace {

using sluice::cpu_has_avx2;
using sluice::exp_nonpositive;
using sluice::exp_nonpositive8;
using sluice::load8;
using sluice::max8;
using sluice::round_lanes;
using sluice::round_to;
using sluice::sum8;
using sluice::to_float;

constexpr int64_t kChunk = 64;  // context positions per work item of phases 1 and 3
constexpr int64_t kMaxHead = 256;  // the widest head the AVX2 build takes

template <typename T>
struct Args {
  T* out;
  const T* q;
  const T* kc;
  const T* vc;
  const int64_t* slots;
  const int64_t* lens;
  int64_t b, lmax, h, kvh, d;
  float scale;
  float softcap;  // > 0: scores become softcap * tanh(score / softcap) (Gemma 2)
  // Laid out by the driver:
  const int64_t* first_chunk;  // [b + 1]: chunks of the sequences before each one
  const int64_t* score_at;     // [b]: where each sequence's [h, len] scores begin in `scores`
  float* scores;               // scores, then probabilities, of every sequence
  float* partial;              // [chunks, h, d]: each chunk's weighted sum of V, float32
};

// One work item of phases 1 and 3: a chunk of one sequence's context, for one KV head.
struct Chunk {
  int64_t seq, g, j0, j1, index;  // index: the chunk's place among all sequences' chunks
};

template <typename T>
inline Chunk chunk_at(const Args<T>& a, int64_t item) {
  const int64_t index = item / a.kvh;
  const int64_t seq = std::upper_bound(a.first_chunk, a.first_chunk + a.b + 1, index) - a.first_chunk - 1;
  const int64_t j0 = (index - a.first_chunk[seq]) * kChunk;
  return {seq, item % a.kvh, j0, std::min(j0 + kChunk, a.lens[seq]), index};
}

// The group's probabilities (or scores), [group, len], of chunk c.
template <typename T>
inline float* group_scores(const Args<T>& a, const Chunk& c) {
  return a.scores + a.score_at[c.seq] + c.g * (a.h / a.kvh) * a.lens[c.seq];
}

// Chunk c's share of the output for the group's heads, [group, d].
template <typename T>
inline float* group_partial(const Args<T>& a, const Chunk& c) {
  return a.partial + (c.index * a.h + c.g * (a.h / a.kvh)) * a.d;
}

// Soft-capping of one query head's scaled scores, each step rounded to the dtype as
// transformers' eager attention does it.
template <typename T>
inline void cap_scores(float* s, int64_t len, float cap) {
  for (int64_t j = 0; j < len; ++j) s[j] = round_to<T>(round_to<T>(std::tanh(round_to<T>(s[j] / cap))) * cap);
}

// Phase 1, portable: items are chunks × KV heads.
template <typename T>
__attribute__((always_inline)) inline void score_items(const Args<T>& a, int64_t begin, int64_t end) {
  const int64_t d = a.d, group = a.h / a.kvh;
  std::vector<float> qf(group * d);
  std::vector<float> row(d);
  for (int64_t item = begin; item < end; ++item) {
    const Chunk c = chunk_at(a, item);
    const int64_t len = a.lens[c.seq];
    const T* qs = a.q + (c.seq * a.h + c.g * group) * d;
    for (int64_t i = 0; i < group * d; ++i) qf[i] = to_float(qs[i]);
    float* s = group_scores(a, c);
    for (int64_t j = c.j0; j < c.j1; ++j) {
      const T* k = a.kc + (a.slots[c.seq * a.lmax + j] * a.kvh + c.g) * d;
      for (int64_t t = 0; t < d; ++t) row[t] = to_float(k[t]);
      for (int64_t r = 0; r < group; ++r) {
        const float* qr = qf.data() + r * d;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t t = 0; t < d; ++t) dot += qr[t] * row[t];
        s[r * len + j] = dot;
      }
    }
  }
}

// Phase 2: items are sequences × query heads. Scores are rounded to the dtype and scaled
// (then capped), and become probabilities rounded to the dtype.
template <typename T>
__attribute__((always_inline)) inline void softmax_items(const Args<T>& a, int64_t begin, int64_t end) {
  for (int64_t item = begin; item < end; ++item) {
    const int64_t seq = item / a.h, head = item % a.h;
    const int64_t len = a.lens[seq];
    float* s = a.scores + a.score_at[seq] + head * len;
    for (int64_t j = 0; j < len; ++j) s[j] = round_to<T>(s[j]) * a.scale;
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
}

// Phase 3, portable: items are chunks × KV heads.
template <typename T>
__attribute__((always_inline)) inline void value_items(const Args<T>& a, int64_t begin, int64_t end) {
  const int64_t d = a.d, group = a.h / a.kvh;
  std::vector<float> row(d);
  for (int64_t item = begin; item < end; ++item) {
    const Chunk c = chunk_at(a, item);
    const int64_t len = a.lens[c.seq];
    const float* p = group_scores(a, c);
    float* acc = group_partial(a, c);
    std::fill(acc, acc + group * d, 0.0f);
    for (int64_t j = c.j0; j < c.j1; ++j) {
      const T* v = a.vc + (a.slots[c.seq * a.lmax + j] * a.kvh + c.g) * d;
      for (int64_t t = 0; t < d; ++t) row[t] = to_float(v[t]);
      for (int64_t r = 0; r < group; ++r) {
        const float pr = p[r * len + j];
        float* o = acc + r * d;
#pragma omp simd
        for (int64_t t = 0; t < d; ++t) o[t] += pr * row[t];
      }
    }
  }
}

// Phase 4: items are sequences × query heads; the chunks' sums are added in chunk order.
template <typename T>
__attribute__((always_inline)) inline void sum_items(const Args<T>& a, int64_t begin, int64_t end) {
  const int64_t d = a.d;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t seq = item / a.h, head = item % a.h;
    const int64_t first = a.first_chunk[seq], last = a.first_chunk[seq + 1];
    T* o = a.out + item * d;
    const float* p0 = a.partial + (first * a.h + head) * d;
    for (int64_t t = 0; t < d; ++t) {
      float sum = p0[t];
      for (int64_t c = first + 1; c < last; ++c) sum += a.partial[(c * a.h + head) * d + t];
      o[t] = sluice::from_float<T>(sum);
    }
  }
}

// One entry point per dtype and phase, built for several instruction sets.
SLUICE_CLONED_RANGE(scores_portable, score_items)
SLUICE_CLONED_RANGE(softmax_portable, softmax_items)
SLUICE_CLONED_RANGE(values_portable, value_items)
SLUICE_CLONED_RANGE(sums_portable, sum_items)

// Phases 1 to 3 with AVX2 intrinsics, for float32 and bfloat16.

// A cached K row as float32: itself, or widened into `w` (nv vectors of 8).
SLUICE_AVX2 inline const float* key_row(const float* k, float*, int64_t) { return k; }
SLUICE_AVX2 inline const float* key_row(const c10::BFloat16* k, float* w, int64_t nv) {
  for (int64_t v = 0; v < nv; ++v) _mm256_store_ps(w + 8 * v, load8(k + 8 * v));
  return w;
}

// Phase 1: four context positions at a time, so that the four dot products of a query head
// are summed across lanes together. K rows are widened to float32 once, for every head.
template <typename T>
SLUICE_AVX2 void score_items_avx2(const Args<T>& a, int64_t begin, int64_t end) {
  const int64_t d = a.d, group = a.h / a.kvh, nv = d / 8;
  thread_local std::vector<float> qf;
  qf.resize(group * d);
  alignas(32) float widened[4 * kMaxHead];
  for (int64_t item = begin; item < end; ++item) {
    const Chunk c = chunk_at(a, item);
    const int64_t len = a.lens[c.seq];
    const int64_t* slots = a.slots + c.seq * a.lmax;
    const T* qs = a.q + (c.seq * a.h + c.g * group) * d;
    for (int64_t i = 0; i < group * d; i += 8) _mm256_storeu_ps(qf.data() + i, load8(qs + i));
    float* s = group_scores(a, c);
    const T* kc = a.kc + c.g * d;
    const int64_t stride = a.kvh * d;
    int64_t j = c.j0;
    for (; j + 4 <= c.j1; j += 4) {
      const float* k0 = key_row(kc + slots[j] * stride, widened + 0 * d, nv);
      const float* k1 = key_row(kc + slots[j + 1] * stride, widened + 1 * d, nv);
      const float* k2 = key_row(kc + slots[j + 2] * stride, widened + 2 * d, nv);
      const float* k3 = key_row(kc + slots[j + 3] * stride, widened + 3 * d, nv);
      for (int64_t r = 0; r < group; ++r) {
        const float* qr = qf.data() + r * d;
        __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
        for (int64_t v = 0; v < nv; ++v) {
          const __m256 x = _mm256_loadu_ps(qr + 8 * v);
          s0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k0 + 8 * v), s0);
          s1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k1 + 8 * v), s1);
          s2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k2 + 8 * v), s2);
          s3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k3 + 8 * v), s3);
        }
        // [s0 s1 s2 s3] summed across their lanes.
        const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1), _mm256_hadd_ps(s2, s3));
        _mm_storeu_ps(s + r * len + j, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
      }
    }
    for (; j < c.j1; ++j) {
      const float* k = key_row(kc + slots[j] * stride, widened + 0 * d, nv);
      for (int64_t r = 0; r < group; ++r) {
        const float* qr = qf.data() + r * d;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t v = 0; v < nv; ++v) acc = _mm256_fmadd_ps(_mm256_loadu_ps(qr + 8 * v), _mm256_loadu_ps(k + 8 * v), acc);
        s[r * len + j] = sum8(acc);
      }
    }
  }
}

// Phase 2 without soft-capping, 8 scores at a time (the last few as the portable loops do
// them); with soft-capping, the portable loops (tanh per score).
template <typename T>
SLUICE_AVX2 void softmax_items_avx2(const Args<T>& a, int64_t begin, int64_t end) {
  if (a.softcap > 0.0f) {
    softmax_portable(a, begin, end);
    return;
  }
  const __m256 scale = _mm256_set1_ps(a.scale);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t seq = item / a.h, head = item % a.h;
    const int64_t len = a.lens[seq], full = len / 8 * 8;
    float* s = a.scores + a.score_at[seq] + head * len;
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    for (int64_t j = 0; j < full; j += 8) {
      const __m256 x = _mm256_mul_ps(round_lanes<T>(_mm256_loadu_ps(s + j)), scale);
      _mm256_storeu_ps(s + j, x);
      vmax = _mm256_max_ps(vmax, x);
    }
    float mx = max8(vmax);
    for (int64_t j = full; j < len; ++j) {
      s[j] = round_to<T>(s[j]) * a.scale;
      mx = std::max(mx, s[j]);
    }
    const __m256 vmx = _mm256_set1_ps(mx);
    __m256 vsum = _mm256_setzero_ps();
    for (int64_t j = 0; j < full; j += 8) {
      const __m256 e = exp_nonpositive8(_mm256_sub_ps(_mm256_loadu_ps(s + j), vmx));
      _mm256_storeu_ps(s + j, e);
      vsum = _mm256_add_ps(vsum, e);
    }
    float sum = sum8(vsum);
    for (int64_t j = full; j < len; ++j) {
      s[j] = exp_nonpositive(s[j] - mx);
      sum += s[j];
    }
    const float inv = 1.0f / sum;
    const __m256 vinv = _mm256_set1_ps(inv);
    for (int64_t j = 0; j < full; j += 8) _mm256_storeu_ps(s + j, round_lanes<T>(_mm256_mul_ps(_mm256_loadu_ps(s + j), vinv)));
    for (int64_t j = full; j < len; ++j) s[j] = round_to<T>(s[j] * inv);
  }
}

// R query heads × C vectors of 8 values of the output, accumulated in registers over the
// chunk's positions j0..j1: `v` points at the first value of the tile in position 0's row
// of the cache (rows `stride` apart, one per slot), `p` at the first head's probabilities.
template <int R, int C, typename T>
SLUICE_AVX2 inline void value_tile(const T* v, int64_t stride, const int64_t* slots, int64_t j0, int64_t j1,
                                   const float* p, int64_t len, float* out, int64_t d) {
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int64_t j = j0; j < j1; ++j) {
    const T* row = v + slots[j] * stride;
    __m256 x[C];
    for (int c = 0; c < C; ++c) x[c] = load8(row + 8 * c);
    for (int r = 0; r < R; ++r) {
      const __m256 pr = _mm256_broadcast_ss(p + r * len + j);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(pr, x[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) _mm256_storeu_ps(out + r * d + 8 * c, acc[r][c]);
}

// R heads over every vector of the row: 4 at a time, then 2, then 1.
template <int R, typename T>
SLUICE_AVX2 inline void value_heads(const T* v, int64_t stride, const int64_t* slots, int64_t j0, int64_t j1,
                                    const float* p, int64_t len, float* out, int64_t d) {
  int64_t c = 0;
  for (; c + 4 <= d / 8; c += 4) value_tile<R, 4>(v + 8 * c, stride, slots, j0, j1, p, len, out + 8 * c, d);
  for (; c + 2 <= d / 8; c += 2) value_tile<R, 2>(v + 8 * c, stride, slots, j0, j1, p, len, out + 8 * c, d);
  for (; c < d / 8; ++c) value_tile<R, 1>(v + 8 * c, stride, slots, j0, j1, p, len, out + 8 * c, d);
}

// Phase 3: the group's heads three at a time (3 × 4 accumulators, 4 rows and a broadcast
// stay within AVX2's 16 registers).
template <typename T>
SLUICE_AVX2 void value_items_avx2(const Args<T>& a, int64_t begin, int64_t end) {
  const int64_t d = a.d, group = a.h / a.kvh, stride = a.kvh * d;
  for (int64_t item = begin; item < end; ++item) {
    const Chunk c = chunk_at(a, item);
    const int64_t len = a.lens[c.seq];
    const int64_t* slots = a.slots + c.seq * a.lmax;
    const T* v = a.vc + c.g * d;
    const float* p = group_scores(a, c);
    float* out = group_partial(a, c);
    int64_t r = 0;
    for (; r + 3 <= group; r += 3) value_heads<3>(v, stride, slots, c.j0, c.j1, p + r * len, len, out + r * d, d);
    if (group - r == 2) value_heads<2>(v, stride, slots, c.j0, c.j1, p + r * len, len, out + r * d, d);
    if (group - r == 1) value_heads<1>(v, stride, slots, c.j0, c.j1, p + r * len, len, out + r * d, d);
  }
}

template <typename T>
void decode_attention(Args<T> a, bool allow_simd) {
  const int64_t b = a.b;
  // Where each sequence's chunks and scores lie.
  thread_local std::vector<int64_t> layout;
  layout.resize(2 * b + 1);
  int64_t* first_chunk = layout.data();
  int64_t* score_at = layout.data() + b + 1;
  int64_t chunks = 0, scores = 0;
  for (int64_t s = 0; s < b; ++s) {
    first_chunk[s] = chunks;
    score_at[s] = scores;
    chunks += (a.lens[s] + kChunk - 1) / kChunk;
    scores += a.h * a.lens[s];
  }
  first_chunk[b] = chunks;
  thread_local std::vector<float> score_buf, partial_buf;
  score_buf.resize(std::max<size_t>(score_buf.size(), scores));
  partial_buf.resize(std::max<size_t>(partial_buf.size(), chunks * a.h * a.d));
  a.first_chunk = first_chunk;
  a.score_at = score_at;
  a.scores = score_buf.data();
  a.partial = partial_buf.data();

  using Phase = void (*)(const Args<T>&, int64_t, int64_t);
  Phase score = [](const Args<T>& x, int64_t lo, int64_t hi) { scores_portable(x, lo, hi); };
  Phase softmax = [](const Args<T>& x, int64_t lo, int64_t hi) { softmax_portable(x, lo, hi); };
  Phase value = [](const Args<T>& x, int64_t lo, int64_t hi) { values_portable(x, lo, hi); };
  constexpr bool wide_type = std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16>;
  if constexpr (wide_type) {
    if (allow_simd && cpu_has_avx2() && a.d % 8 == 0 && a.d <= kMaxHead) {
      score = score_items_avx2<T>;
      softmax = softmax_items_avx2<T>;
      value = value_items_avx2<T>;
    }
  }
  const Phase sum = [](const Args<T>& x, int64_t lo, int64_t hi) { sums_portable(x, lo, hi); };

  const int64_t chunk_items = chunks * a.kvh, head_items = b * a.h;
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), chunk_items)));
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), n = omp_get_num_threads();
    auto share = [&](Phase phase, int64_t items) {
      const int64_t lo = items * t / n, hi = items * (t + 1) / n;
      if (lo < hi) phase(a, lo, hi);
    };
    share(score, chunk_items);
#pragma omp barrier
    share(softmax, head_items);
#pragma omp barrier
    share(value, chunk_items);
#pragma omp barrier
    share(sum, head_items);
  }
}

}  // namespace

// out, q: [b, h, d]; kc, vc: [slots, kvh, d]; slots: int64 [b, lmax], the cache slot of each
// context position (entries past a sequence's length are not read); lens: int64 [b];
// softcap > 0 caps the scaled scores (0: none).
// `allow_simd` 0 keeps to the portable loops (tests compare both). Returns null, or a
// message saying what was wrong (valid until the next call on this thread).
extern "C" const char* sluice_paged_decode_attention(at::Tensor* out, const at::Tensor* q,
                                                     const at::Tensor* kc, const at::Tensor* vc,
                                                     const at::Tensor* slots,
                                                     const at::Tensor* lens, double scale,
                                                     double softcap, int allow_simd) {
  return sluice::guarded([&] {
    TORCH_CHECK(q->dim() == 3 && kc->dim() == 3 && vc->dim() == 3, "q, k and v must be 3-d");
    TORCH_CHECK(q->device().is_cpu() && kc->device().is_cpu() && vc->device().is_cpu() && out->device().is_cpu() &&
                    slots->device().is_cpu() && lens->device().is_cpu(),
                "the CPU kernel takes CPU tensors");
    TORCH_CHECK(q->is_contiguous() && kc->is_contiguous() && vc->is_contiguous() && out->is_contiguous(),
                "q, k, v and out must be contiguous");
    TORCH_CHECK(slots->scalar_type() == at::kLong && lens->scalar_type() == at::kLong, "slots and lens are int64");
    TORCH_CHECK(slots->is_contiguous() && slots->dim() == 2, "slots must be a contiguous [b, lmax]");
    TORCH_CHECK(lens->is_contiguous(), "lens must be contiguous");
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
    if (b == 0) return;
    auto run = [&](auto zero) {
      using T = decltype(zero);
      const Args<T> args{out->data_ptr<T>(), q->data_ptr<T>(), kc->data_ptr<T>(), vc->data_ptr<T>(), sp, lp,
                         b, lmax, h, kvh, d, static_cast<float>(scale), static_cast<float>(softcap),
                         nullptr, nullptr, nullptr, nullptr};
      decode_attention<T>(args, allow_simd != 0);
    };
    sluice::dispatch_float_types(q->scalar_type(), "decode attention", run);
  });
}
