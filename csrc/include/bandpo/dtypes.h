// Storage types of the raw-pointer API and their conversion to the compute type.
// bfloat16 and float16 are read as float (all math runs in float or double) and written back rounded to
// nearest-even. Their layout is the IEEE/bfloat16 bit pattern, the same as torch's and numpy's.
#pragma once

#include <cstdint>

#include "bandpo/config.h"
#include "bandpo/math.h"

namespace bandpo {

enum class DType : int { float32 = 0, float64 = 1, bfloat16 = 2, float16 = 3 };

struct bfloat16 {
  uint16_t bits;
};
struct float16 {
  uint16_t bits;
};

// Storage type -> compute type: double stays double, everything else computes in float.
template <class T>
struct ComputeType {
  using type = float;
};
template <>
struct ComputeType<double> {
  using type = double;
};

BANDPO_HD float to_float(bfloat16 v) {
  return math::bit_cast<float>(static_cast<int32_t>(static_cast<uint32_t>(v.bits) << 16));
}

BANDPO_HD bfloat16 from_float_bf16(float f) {
  const uint32_t u = static_cast<uint32_t>(math::bit_cast<int32_t>(f));
  const uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
  // NaN must stay NaN: rounding could carry its payload into the exponent.
  const uint32_t out = (f != f) ? (u | 0x00400000u) : rounded;
  return bfloat16{static_cast<uint16_t>(out >> 16)};
}

BANDPO_HD float to_float(float16 v) {
  // Branch-free half -> float: rescale the 15 low bits by 2^112, which maps normals and subnormals alike,
  // then fix up inf/NaN.
  const uint32_t h = v.bits;
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t magnitude = h & 0x7fffu;
  const float scaled = math::bit_cast<float>(static_cast<int32_t>(magnitude << 13)) * 5.192296858534828e33f;
  const uint32_t inf_nan = 0x7f800000u | (magnitude & 0x3ffu) << 13;
  const uint32_t body = magnitude >= 0x7c00u ? inf_nan : static_cast<uint32_t>(math::bit_cast<int32_t>(scaled));
  return math::bit_cast<float>(static_cast<int32_t>(sign | body));
}

BANDPO_HD float16 from_float_f16(float f) {
  // Round to nearest-even via the float adder: adding a power of two that puts the half's last mantissa bit
  // at the float's last bit lets the hardware do the rounding (the usual trick, valid for all magnitudes).
  const uint32_t u = static_cast<uint32_t>(math::bit_cast<int32_t>(f));
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs_bits = u & 0x7fffffffu;
  const float a = math::bit_cast<float>(static_cast<int32_t>(abs_bits));
  uint32_t out;
  if (abs_bits >= 0x7f800000u) {
    out = abs_bits > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (abs_bits >= 0x477ff000u) {  // rounds to >= 65520: overflow to inf
    out = 0x7c00u;
  } else if (abs_bits < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    const float shifted = a + 0.5f;     // 2^-1 makes the half subnormal ulp (2^-24) the float ulp
    out = static_cast<uint32_t>(math::bit_cast<int32_t>(shifted)) - 0x3f000000u;
  } else {
    const uint32_t mant_odd = (abs_bits >> 13) & 1u;
    const uint32_t rebias = static_cast<uint32_t>((15 - 127)) << 23;
    out = (abs_bits + rebias + 0xfffu + mant_odd) >> 13;
  }
  return float16{static_cast<uint16_t>(sign | out)};
}

template <class C>
BANDPO_HD C load(const float* p, int64_t i) {
  return static_cast<C>(p[i]);
}
template <class C>
BANDPO_HD C load(const double* p, int64_t i) {
  return static_cast<C>(p[i]);
}
template <class C>
BANDPO_HD C load(const bfloat16* p, int64_t i) {
  return static_cast<C>(to_float(p[i]));
}
template <class C>
BANDPO_HD C load(const float16* p, int64_t i) {
  return static_cast<C>(to_float(p[i]));
}

template <class C>
BANDPO_HD void store(float* p, int64_t i, C v) {
  p[i] = static_cast<float>(v);
}
template <class C>
BANDPO_HD void store(double* p, int64_t i, C v) {
  p[i] = static_cast<double>(v);
}
template <class C>
BANDPO_HD void store(bfloat16* p, int64_t i, C v) {
  p[i] = from_float_bf16(static_cast<float>(v));
}
template <class C>
BANDPO_HD void store(float16* p, int64_t i, C v) {
  p[i] = from_float_f16(static_cast<float>(v));
}

// One value of `dtype` at p, written from a double as the writers above round it (a loss the CPU computed in
// double, into a 0-d output of the compute dtype).
inline void store_as(DType dtype, void* p, double v) {
  switch (dtype) {
    case DType::float32:
      return store(static_cast<float*>(p), 0, v);
    case DType::float64:
      return store(static_cast<double*>(p), 0, v);
    case DType::bfloat16:
      return store(static_cast<bfloat16*>(p), 0, v);
    case DType::float16:
      return store(static_cast<float16*>(p), 0, v);
  }
}

}  // namespace bandpo
