// Scalar conversions between fp32 and the 16-bit storage types (round to nearest even,
// NaN and inf kept). Header-only so that engines, tools and tests share one definition.
#pragma once

#include <cstdint>
#include <cstring>

#include <blasst/blasst.h>

namespace blasst::detail {

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float bf16_to_float(uint16_t h) { return bits_to_float(uint32_t(h) << 16); }

inline uint16_t float_to_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return uint16_t((u + rounding) >> 16);
}

inline float fp16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    // zero or subnormal: mantissa * 2^-24
    const float magnitude = float(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  return bits_to_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

inline uint16_t float_to_fp16(float f) {
  const uint32_t u = float_to_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return uint16_t(sign | 0x7e00u);  // NaN
  if (abs >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {
    // below the smallest normal half (2^-14): subnormal or zero, round to nearest even
    // in units of 2^-24.
    const float magnitude = bits_to_float(abs);
    const float units = magnitude * 16777216.0f;  // exact: power-of-two scale
    uint32_t q = uint32_t(units);
    const float rest = units - float(q);
    if (rest > 0.5f || (rest == 0.5f && (q & 1u))) ++q;
    return uint16_t(sign | q);
  }
  // normal: rebias exponent, round mantissa to 10 bits (nearest even)
  const uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
  return uint16_t(sign | ((rounded - 0x38000000u) >> 13));
}

// OCP FP8 e4m3 (torch.float8_e4m3fn): 1 sign, 4 exponent (bias 7), 3 mantissa bits; no
// infinities, S.1111.111 is NaN; the largest finite value is 448. Every e4m3 value is exact in
// fp32 (and in bf16 and fp16).
inline float e4m3_to_float(uint8_t x) {
  const bool negative = (x & 0x80u) != 0;
  const uint32_t exponent = (x >> 3) & 0xfu, mantissa = x & 0x7u;
  float magnitude;
  if (exponent == 0xfu && mantissa == 0x7u) {
    magnitude = bits_to_float(0x7fc00000u);
  } else if (exponent == 0) {
    magnitude = float(mantissa) * 0.001953125f;  // subnormal: mantissa * 2^-9
  } else {
    magnitude = bits_to_float(((exponent + 120u) << 23) | (mantissa << 20));
  }
  return negative ? -magnitude : magnitude;
}

// Round to nearest even; NaN and magnitudes that round past 448 give NaN (as torch's cast).
inline uint8_t float_to_e4m3(float f) {
  const uint32_t u = float_to_bits(f);
  const uint8_t sign = uint8_t((u >> 24) & 0x80u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u || abs > 0x43e80000u) return uint8_t(sign | 0x7fu);  // NaN, or > 464 (rounds past 448)
  if (abs < 0x3c800000u) {
    // below the smallest normal (2^-6): multiples of 2^-9, round to nearest even
    const float units = bits_to_float(abs) * 512.0f;  // exact: power-of-two scale
    uint32_t q = uint32_t(units);
    const float rest = units - float(q);
    if (rest > 0.5f || (rest == 0.5f && (q & 1u))) ++q;
    return uint8_t(sign | q);  // q == 8 is the smallest normal, encoded the same way
  }
  const uint32_t rounded = abs + 0x7ffffu + ((abs >> 20) & 1u);  // mantissa to 3 bits, nearest even
  return uint8_t(sign | ((rounded - 0x3c000000u) >> 20));
}

// Element loads and stores by dtype.
inline float load_element(const void* base, blasst_dtype dtype, int64_t index) {
  switch (dtype) {
    case BLASST_DTYPE_FLOAT16:
      return fp16_to_float(static_cast<const uint16_t*>(base)[index]);
    case BLASST_DTYPE_BFLOAT16:
      return bf16_to_float(static_cast<const uint16_t*>(base)[index]);
    case BLASST_DTYPE_FLOAT8_E4M3:
      return e4m3_to_float(static_cast<const uint8_t*>(base)[index]);
    default:
      return static_cast<const float*>(base)[index];
  }
}

inline void store_element(void* base, blasst_dtype dtype, int64_t index, float value) {
  switch (dtype) {
    case BLASST_DTYPE_FLOAT16:
      static_cast<uint16_t*>(base)[index] = float_to_fp16(value);
      break;
    case BLASST_DTYPE_BFLOAT16:
      static_cast<uint16_t*>(base)[index] = float_to_bf16(value);
      break;
    case BLASST_DTYPE_FLOAT8_E4M3:
      static_cast<uint8_t*>(base)[index] = float_to_e4m3(value);
      break;
    default:
      static_cast<float*>(base)[index] = value;
  }
}

}  // namespace blasst::detail
