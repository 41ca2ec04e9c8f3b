// RMSNorm over the rows of a matrix, in one pass per row on the CPU.
//
// It computes what transformers' LlamaRMSNorm does in eight tensor operations: widen to
// float32, mean of squares, scale by 1/sqrt(mean + eps), round back to the model's dtype,
// multiply by the weight (rounded to the dtype again); or, as Gemma's norm does, multiply by
// (1 + weight) in float32 and round once. Rows are split over libtorch's OpenMP pool.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>

#include "convert.h"
#include "entry.h"

namespace {

using sluice::from_float;
using sluice::round_to;
using sluice::to_float;

template <typename T>
struct Args {
  T* out;
  const T* x;
  const T* w;
  int64_t dim;
  float eps;
  bool unit_offset;
};

template <typename T>
__attribute__((always_inline)) inline void norm_rows(const Args<T>& a, int64_t begin, int64_t end) {
  const int64_t dim = a.dim;
  for (int64_t i = begin; i < end; ++i) {
    const T* row = a.x + i * dim;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t t = 0; t < dim; ++t) {
      const float v = to_float(row[t]);
      sum += v * v;
    }
    const float inv = 1.0f / std::sqrt(sum / static_cast<float>(dim) + a.eps);
    T* o = a.out + i * dim;
    if (a.unit_offset) {
#pragma omp simd
      for (int64_t t = 0; t < dim; ++t) o[t] = from_float<T>((to_float(row[t]) * inv) * (1.0f + to_float(a.w[t])));
    } else {
#pragma omp simd
      for (int64_t t = 0; t < dim; ++t) o[t] = from_float<T>(to_float(a.w[t]) * round_to<T>(to_float(row[t]) * inv));
    }
  }
}

// One entry point per dtype, built for several instruction sets.
SLUICE_CLONED_RANGE(norm, norm_rows)

template <typename T>
void rms_norm_rows(T* out, const T* x, const T* w, int64_t n, int64_t dim, float eps, bool unit_offset) {
  const Args<T> args{out, x, w, dim, eps, unit_offset};
  // Small batches stay on this thread: waking the pool costs more than a few rows.
  at::parallel_for(0, n, 32, [&](int64_t begin, int64_t end) { norm(args, begin, end); });
}

}  // namespace

// out, x: [n, dim]; w: [dim]; all contiguous, one dtype, on the CPU. `unit_offset` (Gemma's
// RMSNorm): the weight is stored as w - 1, and the product (1 + w)·x̂ is taken in float32
// before the one rounding. Returns null, or a
// message saying what was wrong (valid until the next call on this thread).
extern "C" const char* sluice_rms_norm(at::Tensor* out, const at::Tensor* x, const at::Tensor* w, double eps,
                                       int unit_offset) {
  return sluice::guarded([&] {
    TORCH_CHECK(x->dim() == 2 && w->dim() == 1 && x->size(1) == w->size(0), "x must be [n, dim] and w [dim]");
    TORCH_CHECK(x->device().is_cpu() && w->device().is_cpu(), "the CPU kernel takes CPU tensors");
    TORCH_CHECK(x->is_contiguous() && w->is_contiguous() && out->is_contiguous(), "tensors must be contiguous");
    TORCH_CHECK(out->sizes() == x->sizes() && out->scalar_type() == x->scalar_type() &&
                    w->scalar_type() == x->scalar_type(),
                "out must be like x, and w of x's dtype");
    const int64_t n = x->size(0), dim = x->size(1);
    auto run = [&](auto zero) {
      using T = decltype(zero);
      rms_norm_rows<T>(out->data_ptr<T>(), x->data_ptr<T>(), w->data_ptr<T>(), n, dim, static_cast<float>(eps),
                       unit_offset != 0);
    };
    sluice::dispatch_float_types(x->scalar_type(), "RMSNorm", run);
  });
}
