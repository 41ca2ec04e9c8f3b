// Widening to and rounding from the model's dtype, written as plain bit operations so
// that loops over them vectorise (c10's own conversions branch on NaN per element).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

// On a function: built for several instruction sets, one picked at load time, so that its
// loops vectorise as wide as the CPU allows and still run anywhere.
#define SLUICE_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

// Defines NAME(const Args<T>& a, int64_t begin, int64_t end) for float32, bfloat16 and
// float16: each a SLUICE_CLONES function calling the template BODY (target_clones does not
// take templates). Args is the kernel file's own argument struct.
#define SLUICE_CLONED_RANGE(NAME, BODY)                                                                 \
  SLUICE_CLONES void NAME##_f32(const Args<float>& a, int64_t b, int64_t e) { BODY(a, b, e); }          \
  SLUICE_CLONES void NAME##_bf16(const Args<c10::BFloat16>& a, int64_t b, int64_t e) { BODY(a, b, e); } \
  SLUICE_CLONES void NAME##_f16(const Args<c10::Half>& a, int64_t b, int64_t e) { BODY(a, b, e); }      \
  inline void NAME(const Args<float>& a, int64_t b, int64_t e) { NAME##_f32(a, b, e); }                 \
  inline void NAME(const Args<c10::BFloat16>& a, int64_t b, int64_t e) { NAME##_bf16(a, b, e); }        \
  inline void NAME(const Args<c10::Half>& a, int64_t b, int64_t e) { NAME##_f16(a, b, e); }

namespace sluice {

inline float to_float(float x) { return x; }
inline float to_float(c10::Half x) { return static_cast<float>(x); }
inline float to_float(c10::BFloat16 x) {
  uint16_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &wide, sizeof f);
  return f;
}

template <typename T>
inline T from_float(float x) {
  return static_cast<T>(x);
}
// Round to nearest, ties to even (NaN is not preserved: nothing here produces one from
// finite inputs).
template <>
inline c10::BFloat16 from_float<c10::BFloat16>(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  const uint16_t bits = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  c10::BFloat16 out;
  std::memcpy(&out, &bits, sizeof bits);
  return out;
}

// Rounds through the dtype, as a result stored in it would be.
template <typename T>
inline float round_to(float x) {
  return to_float(from_float<T>(x));
}

}  // namespace sluice
