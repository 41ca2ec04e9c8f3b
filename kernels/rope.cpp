// Rotary position embedding of the new tokens' queries and keys, and the write of keys and
// values into the paged cache, in one pass on the CPU.
//
// For each token it reads its row of the fused QKV projection, rotates every query and key
// head (transformers' half-rotation: x·cos + rotate_half(x)·sin, each product and the sum
// rounded to the model's dtype as the tensor operations would), writes the rotated queries
// to `q_out`, and the rotated keys and the values to the token's cache slot: what took ten
// tensor operations per layer. Tokens are split over libtorch's OpenMP pool.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <initializer_list>

#include "convert.h"
#include "entry.h"

namespace {

using sluice::from_float;
using sluice::round_to;
using sluice::to_float;

template <typename T>
struct Args {
  T* q_out;
  T* kc;
  T* vc;
  const T* qkv;
  const T* cos;
  const T* sin;
  const int64_t* slots;
  int64_t h, kvh, d, rd;  // head size, rotated dimensions (the first rd of each head)
};

// One head of d values whose first rd turn: out = x·cos + rotate_half(x)·sin over them,
// rotate_half(x) = [-x2, x1]; the other d - rd values are copied (partial rotary).
template <typename T>
__attribute__((always_inline)) inline void rotate(T* out, const T* x, const T* cos, const T* sin, int64_t rd,
                                                  int64_t d) {
  const int64_t half = rd / 2;
#pragma omp simd
  for (int64_t t = 0; t < half; ++t) {
    const float a = round_to<T>(to_float(x[t]) * to_float(cos[t]));
    const float b = round_to<T>(-to_float(x[t + half]) * to_float(sin[t]));
    out[t] = from_float<T>(a + b);
  }
#pragma omp simd
  for (int64_t t = half; t < rd; ++t) {
    const float a = round_to<T>(to_float(x[t]) * to_float(cos[t]));
    const float b = round_to<T>(to_float(x[t - half]) * to_float(sin[t]));
    out[t] = from_float<T>(a + b);
  }
  for (int64_t t = rd; t < d; ++t) out[t] = x[t];
}

template <typename T>
__attribute__((always_inline)) inline void tokens(const Args<T>& a, int64_t begin, int64_t end) {
  const int64_t d = a.d, h = a.h, kvh = a.kvh, rd = a.rd;
  const int64_t width = (h + 2 * kvh) * d;
  for (int64_t i = begin; i < end; ++i) {
    const T* row = a.qkv + i * width;
    const T* cos = a.cos + i * rd;
    const T* sin = a.sin + i * rd;
    for (int64_t head = 0; head < h; ++head) rotate(a.q_out + (i * h + head) * d, row + head * d, cos, sin, rd, d);
    T* k = a.kc + a.slots[i] * kvh * d;
    for (int64_t head = 0; head < kvh; ++head) rotate(k + head * d, row + (h + head) * d, cos, sin, rd, d);
    const T* v_in = row + (h + kvh) * d;
    T* v = a.vc + a.slots[i] * kvh * d;
    for (int64_t t = 0; t < kvh * d; ++t) v[t] = v_in[t];
  }
}

// One entry point per dtype, built for several instruction sets.
SLUICE_CLONED_RANGE(run_tokens, tokens)

}  // namespace

// qkv: [n, (h + 2·kvh)·d] (queries, keys, values of each token); cos, sin: [n, rd] (each
// token's rotary table row, rd <= d the rotated leading dimensions of a head); slots: int64 [n]; q_out: [n, h, d]; kc, vc: [cache slots, kvh,
// d]. All contiguous, one dtype, on the CPU. Returns null, or a message saying what was
// wrong (valid until the next call on this thread).
extern "C" const char* sluice_rope_and_cache(at::Tensor* q_out, at::Tensor* kc, at::Tensor* vc, const at::Tensor* qkv,
                                             const at::Tensor* cos, const at::Tensor* sin, const at::Tensor* slots) {
  return sluice::guarded([&] {
    TORCH_CHECK(q_out->dim() == 3 && kc->dim() == 3 && vc->dim() == 3 && qkv->dim() == 2 && cos->dim() == 2,
                "unexpected ranks");
    const int64_t n = q_out->size(0), h = q_out->size(1), d = q_out->size(2), kvh = kc->size(1);
    const int64_t rd = cos->size(1);
    TORCH_CHECK(rd % 2 == 0 && rd > 0 && rd <= d, "the rotated dimensions must be even and at most the head size");
    TORCH_CHECK(qkv->size(0) == n && qkv->size(1) == (h + 2 * kvh) * d, "qkv must be [n, (h + 2·kvh)·d]");
    TORCH_CHECK(cos->sizes() == sin->sizes() && cos->size(0) == n, "cos and sin must be [n, rotated dims]");
    TORCH_CHECK(kc->size(2) == d && vc->sizes() == kc->sizes(), "k and v caches must be [slots, kvh, d]");
    TORCH_CHECK(slots->scalar_type() == at::kLong && slots->numel() == n && slots->is_contiguous(), "one int64 slot per token");
    for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{q_out, kc, vc, qkv, cos, sin}) {
      TORCH_CHECK(t->device().is_cpu() && t->is_contiguous(), "tensors must be contiguous and on the CPU");
      TORCH_CHECK(t->scalar_type() == qkv->scalar_type(), "tensors must share one dtype");
    }
    const int64_t* sp = slots->data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) TORCH_CHECK(sp[i] >= 0 && sp[i] < kc->size(0), "a slot is out of range");
    auto run = [&](auto zero) {
      using T = decltype(zero);
      const Args<T> args{q_out->data_ptr<T>(), kc->data_ptr<T>(), vc->data_ptr<T>(), qkv->data_ptr<T>(),
                         cos->data_ptr<T>(), sin->data_ptr<T>(), sp, h, kvh, d, rd};
      at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) { run_tokens(args, begin, end); });
    };
    sluice::dispatch_float_types(qkv->scalar_type(), "rotary embedding", run);
  });
}
