// Linear layers on GGUF weights kept in their blocks: y = x · Wᵀ read straight from the
// quantized rows, and rows of a quantized table (an embedding) read out as floats.
//
// Three ways to the product, per call:
// - int8 dot products (one or two activation rows: decode): each row of x is quantized per
//   32 values to int8 (one scale per group, as llama.cpp's Q8 activations), and each weight
//   group meets it in one `vpdpbusd` (AVX-512 VNNI) or `vpmaddubsw` (AVX2) per 32 values, or
//   in plain loops on other CPUs; which, the CPU decides at run time.
// - int8 tiles (more rows: big batches, prefill; AVX2): x quantized the same way, and 16
//   weight rows at a time (32 with AVX-512 VNNI) unpacked across the vector lanes, once for
//   every activation row (kernels/quant_simd.h and kernels/quant_panel512.h, panel_rows).
// - float tiles (more rows on CPUs with AVX-512 BF16 or without AVX2; and for comparison):
//   a tile of weight rows is dequantized to x's dtype and multiplied by libtorch's matrix
//   product; the tile stays in cache while it is used, and the weights are never held
//   dequantized whole.
// Each way is one parallel region over the weight rows.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cpuid.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "convert.h"
#include "entry.h"
#include "quant_blocks.h"

namespace sluice::quant {

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
#define SLUICE_VNNI 0
#include "quant_simd.h"
#undef SLUICE_VNNI
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
namespace vnni {
#define SLUICE_VNNI 1
#include "quant_simd.h"
#undef SLUICE_VNNI
}  // namespace vnni
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
namespace vnni512 {
#include "quant_panel512.h"
}  // namespace vnni512
#pragma GCC pop_options

// The tiled path's dequantization 16 values an instruction, with bfloat16 rounding in one
// (`vcvtneps2bf16`), on CPUs with AVX-512 BF16: against the 8-wide loop with its rounding
// written out (kernels/quant_simd.h), a batch-16 decode step of SmolLM2 took 0.88 of the time.
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16")
namespace avx512 {

template <int T, int O>
void dequantize_rows(const uint8_t* w, int64_t row_bytes, int64_t cols, int64_t r0, int64_t r1, void* out) {
  const int64_t groups = cols / 32;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w + r * row_bytes;
    const int64_t at = (r - r0) * cols;
    for (int64_t g = 0; g < groups; ++g) {
      _mm_prefetch(reinterpret_cast<const char*>(row + g * row_bytes / groups + 1024), _MM_HINT_T0);
      GroupScale s;
      const __m256i q = vnni::load_group<T>(row, g, &s);
      for (int h = 0; h < 2; ++h) {
        const __m128i bytes = h ? _mm256_extracti128_si256(q, 1) : _mm256_castsi256_si128(q);
        const __m512i ints = (T == Q8_0) ? _mm512_cvtepi8_epi32(bytes) : _mm512_cvtepu8_epi32(bytes);
        const __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ints), _mm512_set1_ps(s.d[h]), _mm512_set1_ps(s.m[h]));
        const int64_t i = at + g * 32 + h * 16;
        if constexpr (O == kOutF32) {
          _mm512_storeu_ps(static_cast<float*>(out) + i, v);
        } else {
          const __m256i h16 = O == kOutBF16 ? reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v))
                                                  : _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(out) + i), h16);
        }
      }
    }
  }
}

}  // namespace avx512
#pragma GCC pop_options

namespace portable {

template <int T>
void dot_rows(const Act& a, const uint8_t* w, int64_t row_bytes, int64_t r0, int64_t r1, float* out, int64_t ldo) {
  const int64_t groups = a.cols / 32;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w + r * row_bytes;
    for (int64_t i = 0; i < a.n; ++i) {
      float acc = 0.0f;
      for (int64_t g = 0; g < groups; ++g) {
        uint8_t q[32];
        const GroupScale s = read_group<T>(row, g, q);
        const int8_t* x = a.q + i * a.cols + g * 32;
        const float* meta = a.meta + (i * groups + g) * 3;
        int32_t sum[2] = {0, 0};
        for (int k = 0; k < 32; ++k) {
          const int32_t v = (T == Q8_0) ? static_cast<int8_t>(q[k]) : q[k];
          sum[k >> 4] += v * x[k];
        }
        acc += meta[0] * (s.d[0] * sum[0] + s.d[1] * sum[1]) + s.m[0] * meta[1] + s.m[1] * meta[2];
      }
      out[i * ldo + r] = acc;
    }
  }
}

}  // namespace portable

// Which instruction set the int8 path may use.
enum Isa : int { kBest = 0, kAvx2 = 1, kPortable = 2 };

int best_isa() {
  static const int isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw"))
      return 0;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) return 1;
    return 2;
  }();
  return isa;
}

// Whether the tiled path's dequantization may use avx512:: (AVX-512 with BF16).
bool has_avx512_bf16() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return best_isa() == 0 && __builtin_cpu_supports("avx512bf16");
  }();
  return yes;
}

// 0: VNNI, 1: AVX2, 2: portable — the best the CPU has, at most what `asked` allows.
int pick_isa(int asked) {
  const int best = best_isa();
  return std::max(best, asked == kBest ? 0 : asked == kAvx2 ? 1 : 2);
}

// Rows of x quantized in blocks of `block` values (32, or 256 for the K-quants), as Act
// describes.
template <typename T>
void quantize_rows(const T* x, int64_t n, int64_t cols, int64_t block, int8_t* q, float* meta, int16_t* sums) {
  const int64_t groups = cols / 32;
  float f[256];
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t b0 = 0; b0 < cols; b0 += block) {
      const T* v = x + i * cols + b0;
      float amax = 0.0f;
      for (int64_t k = 0; k < block; ++k) {
        f[k] = to_float(v[k]);
        amax = std::max(amax, std::fabs(f[k]));
      }
      const float d = amax / 127.0f;
      const float inv = d > 0.0f ? 1.0f / d : 0.0f;
      int8_t* o = q + i * cols + b0;
      for (int64_t h = 0; h < block / 16; ++h) {
        int32_t sum = 0;
        for (int64_t k = h * 16; k < h * 16 + 16; ++k) {
          const int32_t r = static_cast<int32_t>(std::nearbyint(f[k] * inv));
          o[k] = static_cast<int8_t>(r);
          sum += r;
        }
        float* m = meta + (i * groups + (b0 + h * 16) / 32) * 3;
        m[0] = d;  // both halves of a group write the same d
        m[1 + h % 2] = d * sum;
        if (sums) sums[(i * cols + b0) / 16 + h] = static_cast<int16_t>(sum);
      }
    }
  }
}

// quantize_rows with the vector loops where `isa` (pick_isa's) allows them.
template <typename X>
void quantize_rows_with(int isa, const X* x, int64_t n, int64_t cols, int64_t block, int8_t* q, float* meta,
                        int16_t* sums) {
  if (isa == 0)
    vnni::quantize_rows<X>(x, n, cols, block, q, meta, sums);
  else if (isa == 1)
    avx2::quantize_rows<X>(x, n, cols, block, q, meta, sums);
  else
    quantize_rows<X>(x, n, cols, block, q, meta, sums);
}

template <int T>
void dot_rows_with(int isa, const Act& a, const uint8_t* w, int64_t row_bytes, int64_t r0, int64_t r1, float* out,
                   int64_t ldo) {
  if (isa == 0)
    vnni::dot_rows<T>(a, w, row_bytes, r0, r1, out, ldo);
  else if (isa == 1)
    avx2::dot_rows<T>(a, w, row_bytes, r0, r1, out, ldo);
  else
    portable::dot_rows<T>(a, w, row_bytes, r0, r1, out, ldo);
}

// Weight rows [r0, r1) as floats, [r1 - r0, cols].
template <int T>
void dequantize_rows(const uint8_t* w, int64_t row_bytes, int64_t cols, int64_t r0, int64_t r1, float* out) {
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t g = 0; g < cols / 32; ++g) dequantize_group<T>(w + r * row_bytes, g, out + (r - r0) * cols + g * 32);
}

// About how many bytes of the product's dtype a tile of the tiled path holds. Each tile is
// one libtorch product, and its fixed cost per call is what counts on small models: in
// paired runs of the forward bench (SmolLM2, bfloat16, 2 threads, AVX-512 with AMX) a batch
// of 16 took 0.91, 0.80 and 0.75 of the step time of 256-row tiles with 256 KiB, 1 MiB and
// 2 MiB tiles, and 0.71 with 4 MiB; prefill of 512 tokens 0.96, 0.82, 0.80, 0.78.
constexpr int64_t kTileBytes = 2 << 20;

// Rows per tile of a `rows` × `cols` matrix in values of `elem_bytes`: about kTileBytes, a
// multiple of 16, and the tiles as many as keep `threads` equally busy (with a tile count
// that does not divide among the threads, the last tile of a small matrix, say one of 3,
// kept one thread working while the other waited).
int64_t tile_rows(int64_t rows, int64_t cols, int64_t elem_bytes, int64_t threads) {
  const int64_t target = std::max<int64_t>(16, kTileBytes / (cols * elem_bytes) / 16 * 16);
  int64_t tiles = (rows + target - 1) / target;
  tiles = (tiles + threads - 1) / threads * threads;
  return std::max<int64_t>(16, ((rows + tiles - 1) / tiles + 15) / 16 * 16);
}

}  // namespace sluice::quant

using namespace sluice::quant;

namespace {

struct Weights {
  const uint8_t* data;
  int type;
  int64_t rows, cols, row_bytes;
};

Weights check_weights(const at::Tensor& w, int64_t type, int64_t rows, int64_t cols) {
  int64_t elems = 0, bytes = 0;
  TORCH_CHECK(block_shape(static_cast<int>(type), &elems, &bytes), "ggml type ", type, " has no quantized kernel");
  TORCH_CHECK(rows > 0 && cols > 0 && cols % elems == 0, "a row of ", cols, " values is not whole blocks of ", elems);
  TORCH_CHECK(w.device().is_cpu() && w.is_contiguous() && w.scalar_type() == at::kByte, "weights must be contiguous CPU bytes");
  const int64_t row_bytes = cols / elems * bytes;
  TORCH_CHECK(w.numel() == rows * row_bytes, "weights hold ", w.numel(), " bytes, not ", rows * row_bytes);
  return Weights{w.data_ptr<uint8_t>(), static_cast<int>(type), rows, cols, row_bytes};
}

// The rows of x quantized to int8 in blocks of `block` values (Act), with the 16-value
// sums the super-block kernels take when `with_sums`; `isa` as pick_isa returns it.
struct QuantizedRows {
  std::vector<int8_t> q;
  std::vector<float> meta;
  std::vector<int16_t> sums;
  Act act;

  QuantizedRows(const at::Tensor& x, int64_t block, bool with_sums, int isa) {
    const int64_t n = x.size(0), cols = x.size(1);
    q.resize(n * cols);
    meta.resize(n * (cols / 32) * 3);
    sums.resize(with_sums ? n * cols / 16 : 0);
    sluice::dispatch_float_types(x.scalar_type(), "quantized linear", [&](auto zero) {
      using T = decltype(zero);
      // Rows apart on the threads once there are enough to be worth waking them.
      at::parallel_for(0, n, 4, [&](int64_t i0, int64_t i1) {
        quantize_rows_with<T>(isa, x.data_ptr<T>() + i0 * cols, i1 - i0, cols, block, q.data() + i0 * cols,
                              meta.data() + i0 * (cols / 32) * 3, with_sums ? sums.data() + i0 * cols / 16 : nullptr);
      });
    });
    act = Act{q.data(), meta.data(), with_sums ? sums.data() : nullptr, n, cols};
  }
  QuantizedRows(const QuantizedRows&) = delete;  // act points into the buffers
};

// The Out value of a float dtype.
int out_kind(at::ScalarType dtype) { return dtype == at::kBFloat16 ? kOutBF16 : dtype == at::kHalf ? kOutF16 : kOutF32; }

void int8_path(at::Tensor& out, const at::Tensor& x, const Weights& w, int64_t col0, int isa) {
  const int64_t n = x.size(0);
  // The K-quants' kernels take one activation scale per 256-value super-block.
  const bool super = has_super_blocks(w.type);
  const int chosen = pick_isa(isa);
  const QuantizedRows rows(x, super ? 256 : 32, super, chosen);
  const Act& act = rows.act;
  std::vector<float> y(n * w.rows);
  dispatch_type(w.type, [&](auto t) {
    constexpr int T = decltype(t)::value;
    // Enough rows per task that each is worth a thread's wake-up.
    at::parallel_for(0, w.rows, 16, [&](int64_t r0, int64_t r1) {
      dot_rows_with<T>(chosen, act, w.data, w.row_bytes, r0, r1, y.data(), w.rows);
    });
  });
  sluice::dispatch_float_types(out.scalar_type(), "quantized linear", [&](auto zero) {
    using T = decltype(zero);
    T* o = out.data_ptr<T>();
    const int64_t ldo = out.size(1);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t r = 0; r < w.rows; ++r) o[i * ldo + col0 + r] = sluice::from_float<T>(y[i * w.rows + r]);
  });
}

// The int8 tile product (kernels/quant_simd.h, panel_rows): activations quantized per 32
// values as on the int8 path, the weights 16 rows at a time as two 8-lane panels (AVX2), or
// 32 as two 16-lane parts with AVX-512 VNNI (kernels/quant_panel512.h). Needs AVX2 (the
// int8 path's portable loops run without it).
void panel_path(at::Tensor& out, const at::Tensor& x, const Weights& w, int64_t col0, int isa) {
  const int chosen = pick_isa(isa);
  if (chosen == kPortable) return int8_path(out, x, w, col0, isa);
  const int64_t cols = w.cols;
  const bool wide = chosen == 0;
  const QuantizedRows rows(x, 32, wide && vnni512::takes_sums(w.type), chosen);
  const Act& act = rows.act;
  void* o = static_cast<uint8_t*>(out.data_ptr()) + col0 * out.element_size();
  const int64_t ldo = out.size(1);
  const int64_t per_task = wide ? vnni512::kTaskRows : avx2::kTaskRows;
  const int64_t tasks = (w.rows + per_task - 1) / per_task;
  const size_t panel_bytes = (cols / 32) * 2 * (wide ? sizeof(vnni512::PanelGroup) : sizeof(avx2::PanelGroup));
  dispatch_type(w.type, [&](auto t) {
    constexpr int T = decltype(t)::value;
    auto run = [&](auto k) {
      constexpr int O = decltype(k)::value;
      at::parallel_for(0, tasks, 1, [&](int64_t p0, int64_t p1) {
        // One task's two unpacked panels, kept by each worker between calls (64-byte aligned
        // by hand: the vector's allocation is not).
        thread_local std::vector<uint8_t> raw;
        raw.resize(std::max(raw.size(), panel_bytes + 64));
        void* buf = raw.data() + (64 - reinterpret_cast<uintptr_t>(raw.data()) % 64) % 64;
        if (wide)
          vnni512::panel_rows<T, O>(act, w.data, w.row_bytes, w.rows, p0, p1, o, ldo, static_cast<vnni512::PanelGroup*>(buf));
        else
          avx2::panel_rows<T, O>(act, w.data, w.row_bytes, w.rows, p0, p1, o, ldo, static_cast<avx2::PanelGroup*>(buf));
      });
    };
    dispatch_out(out_kind(out.scalar_type()), run);
  });
}

void tile_path(at::Tensor& out, const at::Tensor& x_in, const Weights& w, int64_t col0, int isa) {
  // Without AVX-512 BF16 libtorch's bfloat16 and float16 products are emulated (a batch-16
  // step of the default model took 3x as long as in float32): the tiles are float32 there.
  const bool native = x_in.scalar_type() == at::kFloat || has_avx512_bf16();
  const at::Tensor x = native ? x_in : x_in.to(at::kFloat);
  const auto dtype = x.scalar_type();
  // AVX-512 where the CPU has BF16 and `isa` allows the best, else AVX2 (dequantizing takes
  // no dot products: VNNI does not matter here).
  const int chosen = pick_isa(isa);
  const bool wide = chosen == 0 && has_avx512_bf16();
  const bool simd = chosen <= 1;
  const int kind = out_kind(dtype);
  const int64_t per = tile_rows(w.rows, w.cols, x.element_size(), at::get_num_threads());
  const int64_t tile_values = per * w.cols;
  dispatch_type(w.type, [&](auto t) {
    constexpr int T = decltype(t)::value;
    at::parallel_for(0, (w.rows + per - 1) / per, 1, [&](int64_t t0, int64_t t1) {
      // The tile in x's dtype, written before it is read (no zeroing), in a buffer each
      // worker keeps between calls; floats first where the portable loops dequantize.
      thread_local std::vector<uint8_t> tile_buf;
      thread_local std::vector<float> float_buf;
      tile_buf.resize(std::max<size_t>(tile_buf.size(), tile_values * x.element_size()));
      if (!simd && kind != kOutF32) float_buf.resize(std::max<size_t>(float_buf.size(), tile_values));
      uint8_t* tile = tile_buf.data();
      float* floats = float_buf.data();
      for (int64_t i = t0; i < t1; ++i) {
        const int64_t r0 = i * per, r1 = std::min(w.rows, r0 + per), n = (r1 - r0) * w.cols;
        if (wide || simd) {
          // The vector loops, one instantiation per output dtype.
          auto vector = [&](auto o) {
            constexpr int O = decltype(o)::value;
            (wide ? &avx512::dequantize_rows<T, O> : &avx2::dequantize_rows<T, O>)(w.data, w.row_bytes, w.cols, r0, r1,
                                                                                  tile);
          };
          dispatch_out(kind, vector);
        } else if (kind == kOutF32) {
          dequantize_rows<T>(w.data, w.row_bytes, w.cols, r0, r1, reinterpret_cast<float*>(tile));
        } else {
          dequantize_rows<T>(w.data, w.row_bytes, w.cols, r0, r1, floats);
          sluice::dispatch_float_types(dtype, "quantized linear", [&](auto zero) {
            using D = decltype(zero);
            D* o = reinterpret_cast<D*>(tile);
            for (int64_t k = 0; k < n; ++k) o[k] = sluice::from_float<D>(floats[k]);
          });
        }
        const at::Tensor wt = at::from_blob(tile, {r1 - r0, w.cols}, x.options());
        out.narrow(1, col0 + r0, r1 - r0).copy_(at::mm(x, wt.t()));
      }
    });
  });
}

}  // namespace

// Whether the CPU has AMX's bfloat16 tiles (CPUID leaf 7: EDX bit 22), which libtorch's
// bfloat16 products run on.
bool has_amx_bf16() {
  static const bool yes = [] {
    unsigned a, b, c, d;
    return __get_cpuid_count(7, 0, &a, &b, &c, &d) && ((d >> 22) & 1u);
  }();
  return yes;
}

// The path (1 int8 dot products, 2 float tiles, 3 int8 tiles) for a product of n rows.
// - With AVX2 (and without AVX-512 BF16): up to 2 rows the dot products, past that the
//   int8 tiles (benches/forward.rs, Zen 3: at 4 rows a step took 0.6–0.9 of the dot
//   products' time, at 8 rows 0.6–0.65; at 2 rows the dot products were as fast or faster).
// - With AVX-512 BF16 but no AMX: up to 2 rows the dot products, up to 16 the int8 tiles,
//   past that the float tiles in bfloat16 (BENCHMARKS.md run 9, Zen 5, three rounds: at 4
//   rows the int8 tiles took 0.67, 1.21 and 0.87 of the dot products' time, at 8 rows 0.62,
//   0.95 and 0.84; at 16 rows they tied with the bfloat16 tiles (0.81–1.16), at 32 and 64
//   they took 0.96–1.44 of their time, and 1.16–1.68 for prompts).
// - With AVX-512 BF16 and AMX, where the bfloat16 tiles run on AMX: up to 8 rows the dot
//   products, past that the float tiles (run 5, before the int8 tiles existed; they are yet
//   to be measured against each other there).
// - The int8 tiles are the 512-bit build on every CPU with AVX-512 VNNI (run 10); the BF16
//   rules above were measured against the 256-bit build.
// - Portable loops: up to 8 rows the dot products, past that the float tiles.
int auto_path(int64_t n, int isa) {
  const bool simd = pick_isa(isa) != kPortable;
  if (!simd || (has_avx512_bf16() && has_amx_bf16())) return n <= 8 ? 1 : 2;
  if (n <= 2) return 1;
  if (has_avx512_bf16()) return n <= 16 ? 3 : 2;
  return 3;
}

// out[:, col0 .. col0 + rows) = x · Wᵀ, W the `rows` × `cols` matrix of ggml type `type`
// stored as bytes in `w` (whole blocks, row after row). x: [n, cols], out: [n, ≥ col0 +
// rows], one float dtype, contiguous, on the CPU. `path`: 0 picks by n, 1 int8 dot products,
// 2 tiles, 3 int8 tiles. `isa`: 0 the best the CPU has, 1 at most AVX2, 2 portable loops
// (the int8 dot products, which the int8 tiles fall back to; the tiles' dequantization is
// AVX2 unless `isa` is 2).
// Returns null, or a message saying what was wrong (valid until the next call on this
// thread).
extern "C" const char* sluice_quant_linear(at::Tensor* out, const at::Tensor* x, const at::Tensor* w, int64_t type,
                                           int64_t rows, int64_t cols, int64_t col0, int path, int isa) {
  return sluice::guarded([&] {
    const Weights wt = check_weights(*w, type, rows, cols);
    TORCH_CHECK(x->dim() == 2 && x->size(1) == cols, "x must be [n, ", cols, "]");
    TORCH_CHECK(out->dim() == 2 && out->size(0) == x->size(0) && col0 >= 0 && col0 + rows <= out->size(1),
                "out must be [n, at least col0 + rows]");
    TORCH_CHECK(x->device().is_cpu() && out->device().is_cpu(), "the CPU kernel takes CPU tensors");
    TORCH_CHECK(x->is_contiguous() && out->is_contiguous(), "x and out must be contiguous");
    TORCH_CHECK(out->scalar_type() == x->scalar_type(), "out must be of x's dtype");
    if (x->size(0) == 0) return;
    switch (path == 0 ? auto_path(x->size(0), isa) : path) {
      case 1: int8_path(*out, *x, wt, col0, isa); break;
      case 3: panel_path(*out, *x, wt, col0, isa); break;
      default: tile_path(*out, *x, wt, col0, isa);
    }
  });
}

// out[i] = row ids[i] of the quantized `rows` × `cols` matrix in `w`, in out's dtype.
// ids: int64 [n], out: [n, cols], contiguous, on the CPU.
extern "C" const char* sluice_quant_rows(at::Tensor* out, const at::Tensor* w, int64_t type, int64_t rows, int64_t cols,
                                         const at::Tensor* ids) {
  return sluice::guarded([&] {
    const Weights wt = check_weights(*w, type, rows, cols);
    TORCH_CHECK(ids->dim() == 1 && ids->scalar_type() == at::kLong && ids->is_contiguous(), "ids must be int64 [n]");
    const int64_t n = ids->size(0);
    TORCH_CHECK(out->dim() == 2 && out->size(0) == n && out->size(1) == cols && out->is_contiguous(),
                "out must be [n, cols]");
    const int64_t* id = ids->data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) TORCH_CHECK(id[i] >= 0 && id[i] < rows, "row ", id[i], " is out of range");
    std::vector<float> buf(cols);
    sluice::dispatch_float_types(out->scalar_type(), "quantized rows", [&](auto zero) {
      using T = decltype(zero);
      T* o = out->data_ptr<T>();
      dispatch_type(wt.type, [&](auto t) {
        constexpr int Ty = decltype(t)::value;
        for (int64_t i = 0; i < n; ++i) {
          dequantize_rows<Ty>(wt.data, wt.row_bytes, cols, id[i], id[i] + 1, buf.data());
          for (int64_t k = 0; k < cols; ++k) o[i * cols + k] = sluice::from_float<T>(buf[k]);
        }
      });
    });
  });
}

// Which int8 path `isa` 0 takes on this CPU: 0 AVX-512 VNNI, 1 AVX2, 2 portable.
extern "C" int sluice_quant_isa() { return best_isa(); }

// The path `path` 0 takes for n rows on this CPU (auto_path): 1, 2 or 3.
extern "C" int sluice_quant_auto_path(int64_t n) { return auto_path(n, kBest); }
