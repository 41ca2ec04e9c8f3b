// ggml's block formats, read one 32-value group at a time.
//
// Every format is seen the same way by the kernels: a row of `cols` values is a run of
// 32-value groups, and group g holds unsigned integers q[0..32) with two scales and two
// offsets, one pair per half, so that value i is  d[i / 16] · q[i] + m[i / 16]  (Q8_0's
// integers are signed instead, with no offset). Q6_K needs the two halves (its scales are per
// 16 values); every other format has d[0] == d[1] and m[0] == m[1].
//
// This file is the portable reading; kernels/quant_simd.h reads the same groups into
// vector registers and is tested against it (and both against the Rust dequantization,
// which is tested against gguf-py).
#pragma once

#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace sluice::quant {

// ggml type ids.
enum Type : int {
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q4_K = 12,
  Q6_K = 14,
};

// Whether the type's blocks are 256-value super-blocks with 16-value scales (the K-quants):
// the int8 path runs them a super-block at a time, against activations quantized per 256.
constexpr bool has_super_blocks(int type) { return type == Q4_K || type == Q6_K; }

// Values per block and bytes per block.
inline bool block_shape(int type, int64_t* elems, int64_t* bytes) {
  switch (type) {
    case Q4_0: *elems = 32; *bytes = 18; return true;
    case Q4_1: *elems = 32; *bytes = 20; return true;
    case Q5_0: *elems = 32; *bytes = 22; return true;
    case Q5_1: *elems = 32; *bytes = 24; return true;
    case Q8_0: *elems = 32; *bytes = 34; return true;
    case Q4_K: *elems = 256; *bytes = 144; return true;
    case Q6_K: *elems = 256; *bytes = 210; return true;
    default: return false;
  }
}

inline float half_at(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

inline uint32_t u32_at(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// The 6-bit scale and min of sub-block j of a Q4_K block's 12 packed bytes.
inline void k4_scale_min(int j, const uint8_t* s, int* sc, int* mn) {
  if (j < 4) {
    *sc = s[j] & 63;
    *mn = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
    *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Scales and offsets of one group (per half).
struct GroupScale {
  float d[2];
  float m[2];
};

// Group g of a row: the integers into q (unsigned; Q8_0's are signed, stored as their
// bytes) and the scales.
template <int T>
inline GroupScale read_group(const uint8_t* row, int64_t g, uint8_t* q) {
  GroupScale s{};
  auto same = [&](float d, float m) {
    s.d[0] = s.d[1] = d;
    s.m[0] = s.m[1] = m;
  };
  if constexpr (T == Q4_0 || T == Q4_1) {
    const uint8_t* b = row + g * (T == Q4_0 ? 18 : 20);
    const float d = half_at(b);
    const uint8_t* qs = b + (T == Q4_0 ? 2 : 4);
    for (int j = 0; j < 16; ++j) {
      q[j] = qs[j] & 0x0f;
      q[j + 16] = qs[j] >> 4;
    }
    same(d, T == Q4_0 ? -8.0f * d : half_at(b + 2));
  } else if constexpr (T == Q5_0 || T == Q5_1) {
    const uint8_t* b = row + g * (T == Q5_0 ? 22 : 24);
    const float d = half_at(b);
    const uint32_t qh = u32_at(b + (T == Q5_0 ? 2 : 4));
    const uint8_t* qs = b + (T == Q5_0 ? 6 : 8);
    for (int j = 0; j < 16; ++j) {
      q[j] = (qs[j] & 0x0f) | (((qh >> j) & 1u) << 4);
      q[j + 16] = (qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4);
    }
    same(d, T == Q5_0 ? -16.0f * d : half_at(b + 2));
  } else if constexpr (T == Q8_0) {
    const uint8_t* b = row + g * 34;
    std::memcpy(q, b + 2, 32);
    same(half_at(b), 0.0f);
  } else if constexpr (T == Q4_K) {
    // 8 groups per block; the 32 bytes of pair p hold group 2p in their low nibbles and
    // group 2p + 1 in their high ones.
    const uint8_t* b = row + (g / 8) * 144;
    const int j = static_cast<int>(g % 8);
    int sc, mn;
    k4_scale_min(j, b + 4, &sc, &mn);
    const uint8_t* qs = b + 16 + (j / 2) * 32;
    const int shift = (j & 1) * 4;
    for (int i = 0; i < 32; ++i) q[i] = (qs[i] >> shift) & 0x0f;
    same(half_at(b) * sc, -half_at(b + 2) * mn);
  } else if constexpr (T == Q6_K) {
    // Two halves of 128 per block; in half h, group k (0..3) takes its low four bits from
    // ql[(k & 1)·32 ..] (low nibbles for k < 2, high ones after) and its top two from qh,
    // bits 2k and 2k + 1; its two scales are sc[2k] and sc[2k + 1]. Values are q − 32.
    const uint8_t* b = row + (g / 8) * 210;
    const int j = static_cast<int>(g % 8), h = j / 4, k = j % 4;
    const uint8_t* ql = b + h * 64 + (k & 1) * 32;
    const uint8_t* qh = b + 128 + h * 32;
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192 + h * 8);
    const int lshift = (k >> 1) * 4;
    for (int i = 0; i < 32; ++i) q[i] = ((ql[i] >> lshift) & 0x0f) | (((qh[i] >> (2 * k)) & 3) << 4);
    const float d = half_at(b + 208);
    for (int p = 0; p < 2; ++p) {
      s.d[p] = d * sc[2 * k + p];
      s.m[p] = -32.0f * s.d[p];
    }
  }
  return s;
}

// Group g of a row as 32 floats.
template <int T>
inline void dequantize_group(const uint8_t* row, int64_t g, float* out) {
  uint8_t q[32];
  const GroupScale s = read_group<T>(row, g, q);
  for (int i = 0; i < 32; ++i) {
    const int p = i >> 4;
    const float v = (T == Q8_0) ? static_cast<float>(static_cast<int8_t>(q[i])) : static_cast<float>(q[i]);
    out[i] = s.d[p] * v + s.m[p];
  }
}

// Calls run(std::integral_constant<int, T>{}) for a supported type id; false if none.
template <typename F>
bool dispatch_type(int type, F&& run) {
  switch (type) {
    case Q4_0: run(std::integral_constant<int, Q4_0>{}); return true;
    case Q4_1: run(std::integral_constant<int, Q4_1>{}); return true;
    case Q5_0: run(std::integral_constant<int, Q5_0>{}); return true;
    case Q5_1: run(std::integral_constant<int, Q5_1>{}); return true;
    case Q8_0: run(std::integral_constant<int, Q8_0>{}); return true;
    case Q4_K: run(std::integral_constant<int, Q4_K>{}); return true;
    case Q6_K: run(std::integral_constant<int, Q6_K>{}); return true;
    default: return false;
  }
}

// What the tiled path's dequantization writes: floats, or values rounded to bfloat16 or
// float16 (the product's dtype) in the same pass.
enum Out : int { kOutF32 = 0, kOutBF16 = 1, kOutF16 = 2 };

// Calls run(std::integral_constant<int, O>{}) for an Out value.
template <typename F>
void dispatch_out(int kind, F&& run) {
  if (kind == kOutBF16)
    run(std::integral_constant<int, kOutBF16>{});
  else if (kind == kOutF16)
    run(std::integral_constant<int, kOutF16>{});
  else
    run(std::integral_constant<int, kOutF32>{});
}

// Activations quantized per block of 32 values, or of 256 for the K-quants' super-blocks:
// q = round(x / d), d = max|x| / 127; with each 32-value group's d (its block's) and d·Σq
// over each half (the offsets' share of a dot product). With 256-value blocks, `sums` holds
// Σq over each 16 values as integers, for the super-block kernels.
struct Act {
  const int8_t* q;       // [n, cols]
  const float* meta;     // [n, cols / 32, 3]: d, d·Σq[0..16), d·Σq[16..32)
  const int16_t* sums;   // [n, cols / 16] with 256-value blocks, else null
  int64_t n;
  int64_t cols;
};

}  // namespace sluice::quant
