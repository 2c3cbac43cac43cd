// Elementary functions for the per-token math, in float and double.
//
// Why not <cmath>: the libm calls are opaque to the vectoriser, so a CPU loop that calls std::log1p runs
// one token at a time; these are branch-free polynomials (selects only) that GCC/Clang vectorise under
// `#pragma omp simd`, and that compile unchanged for CUDA, so CPU and GPU evaluate the same formulas.
// Accuracy is within a few ulp over the whole domain, including subnormal results, +-inf and NaN.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "bandpo/config.h"

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

namespace bandpo {
namespace math {

template <class T>
struct FloatTraits;

template <>
struct FloatTraits<double> {
  using Bits = int64_t;
  static constexpr int kMantissaBits = 52;
  static constexpr Bits kExponentBias = 1023;
  // Cody-Waite split of ln 2: the high part has trailing zero bits so k * kLn2Hi is exact.
  static constexpr double kLn2Hi = 6.93147180369123816490e-01;
  static constexpr double kLn2Lo = 1.90821492927058770002e-10;
  static constexpr double kInvLn2 = 1.44269504088896338700e+00;
  static constexpr double kRoundShifter = 6755399441055744.0;  // 1.5 * 2^52
  // exp(x) is 0 below kExpMin and inf above kExpMax; clamping there keeps 2^k representable in two steps.
  static constexpr double kExpMin = -750.0;
  static constexpr double kExpMax = 710.0;
  static constexpr double kSqrtHalf = 0.70710678118654752440;
};

template <>
struct FloatTraits<float> {
  using Bits = int32_t;
  static constexpr int kMantissaBits = 23;
  static constexpr Bits kExponentBias = 127;
  static constexpr float kLn2Hi = 6.9313812256e-01f;
  static constexpr float kLn2Lo = 9.0580006145e-06f;
  static constexpr float kInvLn2 = 1.4426950216e+00f;
  static constexpr float kRoundShifter = 12582912.0f;  // 1.5 * 2^23
  static constexpr float kExpMin = -105.0f;
  static constexpr float kExpMax = 89.0f;
  static constexpr float kSqrtHalf = 0.70710678118654752440f;
};

template <class To, class From>
BANDPO_HD To bit_cast(From from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs equal sizes");
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(To) == 8) {
    if constexpr (std::is_same<From, double>::value)
      return __double_as_longlong(from);
    else
      return __longlong_as_double(from);
  } else {
    if constexpr (std::is_same<From, float>::value)
      return __float_as_int(from);
    else
      return __int_as_float(from);
  }
#else
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
#endif
}

template <class T>
BANDPO_HD bool isnan(T x) {
  return x != x;
}

template <class T>
BANDPO_HD T select(bool c, T a, T b) {
  return c ? a : b;
}

template <class T>
BANDPO_HD T min(T a, T b) {
  return a < b ? a : b;
}

template <class T>
BANDPO_HD T max(T a, T b) {
  return a > b ? a : b;
}

template <class T>
BANDPO_HD T sqrt(T x) {
#if defined(__CUDA_ARCH__)
  return ::sqrt(x);
#else
  return __builtin_sqrt(x);
#endif
}

template <>
BANDPO_HD float sqrt<float>(float x) {
#if defined(__CUDA_ARCH__)
  return ::sqrtf(x);
#else
  return __builtin_sqrtf(x);
#endif
}

// Bits of the float with biased exponent field `biased` and zero mantissa (2^(biased - bias) where that is
// normal). Shifted as unsigned: a negative field (u = inf in log1p, whose correction term is then unused)
// would make a signed left shift undefined behaviour.
template <class T>
BANDPO_HD typename FloatTraits<T>::Bits exponent_field(typename FloatTraits<T>::Bits biased) {
  using Bits = typename FloatTraits<T>::Bits;
  using Unsigned = typename std::make_unsigned<Bits>::type;
  return static_cast<Bits>(static_cast<Unsigned>(biased) << FloatTraits<T>::kMantissaBits);
}

// 2^k for integer k in [2*(1-bias), 2*bias], as a product of two normal powers so that subnormal
// results come out right.
template <class T>
BANDPO_HD T scale_by_pow2(T y, typename FloatTraits<T>::Bits k) {
  using Tr = FloatTraits<T>;
  using Bits = typename Tr::Bits;
  const Bits k1 = k >> 1;
  const Bits k2 = k - k1;
  const T s1 = bit_cast<T>(exponent_field<T>(k1 + Tr::kExponentBias));
  const T s2 = bit_cast<T>(exponent_field<T>(k2 + Tr::kExponentBias));
  return y * s1 * s2;
}

// e^r - 1 for |r| <= ln2/2: r + r^2 * (1/2! + r/3! + ...). Truncation error below half an ulp.
BANDPO_HD double expm1_reduced(double r) {
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  return r + (r * r) * p;
}

BANDPO_HD float expm1_reduced(float r) {
  float p = 1.0f / 362880.0f;  // 1/9!
  p = p * r + 1.0f / 40320.0f;
  p = p * r + 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  return r + (r * r) * p;
}

// x = k ln2 + r with |r| <= ln2/2 (x already clamped to [kExpMin, kExpMax]).
template <class T>
BANDPO_HD T reduce_ln2(T x, typename FloatTraits<T>::Bits& k) {
  using Tr = FloatTraits<T>;
  using Bits = typename Tr::Bits;
  const T shifted = x * Tr::kInvLn2 + Tr::kRoundShifter;
  k = bit_cast<Bits>(shifted) - bit_cast<Bits>(Tr::kRoundShifter);
  const T kf = shifted - Tr::kRoundShifter;
  return (x - kf * Tr::kLn2Hi) - kf * Tr::kLn2Lo;
}

template <class T>
BANDPO_HD T exp(T x) {
  using Tr = FloatTraits<T>;
  const T xc = max(min(x, Tr::kExpMax), Tr::kExpMin);
  typename Tr::Bits k;
  const T r = reduce_ln2(xc, k);
  const T y = scale_by_pow2(T(1) + expm1_reduced(r), k);
  return select(isnan(x), x, y);
}

template <class T>
BANDPO_HD T expm1(T x) {
  using Tr = FloatTraits<T>;
  const T xc = max(min(x, Tr::kExpMax), Tr::kExpMin);
  typename Tr::Bits k;
  const T r = reduce_ln2(xc, k);
  const T em = expm1_reduced(r);
  const T two_k = scale_by_pow2(T(1), k);
  // 2^k (1 + em) - 1 = 2^k em + (2^k - 1): exact for k = 0, where the small results live. At the top of
  // the range (k = bias + 1, x within ln 2 / 2 of the overflow) 2^k itself is inf in T while the result is
  // not: there 2^k (1 + em), scaled in two steps as exp does, less 1 (which no longer matters).
  const T y_top = scale_by_pow2(T(1) + em, k) - T(1);
  const T y = select(k > Tr::kExponentBias, y_top, two_k * em + (two_k - T(1)));
  return select(isnan(x), x, y);
}

// log(1 + f) for f in [sqrt(1/2) - 1, sqrt(2) - 1] via 2 atanh(s), s = f / (2 + f), |s| <= 0.1716.
BANDPO_HD double log1p_reduced(double f) {
  const double s = f / (2.0 + f);
  const double z = s * s;
  double p = 2.0 / 23.0;
  p = p * z + 2.0 / 21.0;
  p = p * z + 2.0 / 19.0;
  p = p * z + 2.0 / 17.0;
  p = p * z + 2.0 / 15.0;
  p = p * z + 2.0 / 13.0;
  p = p * z + 2.0 / 11.0;
  p = p * z + 2.0 / 9.0;
  p = p * z + 2.0 / 7.0;
  p = p * z + 2.0 / 5.0;
  p = p * z + 2.0 / 3.0;
  // With R = z p: log1p(f) = 2s + sR = f - (f^2/2 - s (f^2/2 + R)); the large part f is added last.
  const double hfsq = 0.5 * f * f;
  return f - (hfsq - s * (hfsq + z * p));
}

BANDPO_HD float log1p_reduced(float f) {
  const float s = f / (2.0f + f);
  const float z = s * s;
  float p = 2.0f / 11.0f;
  p = p * z + 2.0f / 9.0f;
  p = p * z + 2.0f / 7.0f;
  p = p * z + 2.0f / 5.0f;
  p = p * z + 2.0f / 3.0f;
  const float hfsq = 0.5f * f * f;
  return f - (hfsq - s * (hfsq + z * p));
}

// log(1 + x) for x >= -1 (NaN below, -inf at -1). u = fl(1 + x) = m 2^e with m in [sqrt(1/2), sqrt(2));
// the rounding error of u is put back as (x - (u - 1)) / u, exact to first order.
template <class T>
BANDPO_HD T log1p(T x) {
  using Tr = FloatTraits<T>;
  using Bits = typename Tr::Bits;
  const T u = T(1) + x;
  const Bits ubits = bit_cast<Bits>(u);
  const Bits mantissa_mask = (Bits(1) << Tr::kMantissaBits) - 1;
  Bits e = ((ubits >> Tr::kMantissaBits) & (2 * Tr::kExponentBias + 1)) - Tr::kExponentBias;
  T m = bit_cast<T>(static_cast<Bits>((ubits & mantissa_mask) | exponent_field<T>(Tr::kExponentBias)));
  const bool above_sqrt2 = m > T(1) / Tr::kSqrtHalf;
  m = select(above_sqrt2, m * T(0.5), m);
  e = select(above_sqrt2, e + 1, e);
  const T ef = static_cast<T>(e);
  // (rounding error of u) / u without a division: 1/u = 2^-e / m ~ 2^-e (2 - m). The approximation's
  // relative error (m-1)^2/m only scales a term below half an ulp of u, so it costs < 0.1 ulp of the result.
  const T inv_pow2 = bit_cast<T>(exponent_field<T>(Tr::kExponentBias - e));
  const T correction = select(e > 0, T(1) - (u - x), x - (u - T(1))) * (inv_pow2 * (T(2) - m));
  T y = ef * Tr::kLn2Hi + (log1p_reduced(m - T(1)) + (ef * Tr::kLn2Lo + correction));
  y = select(u == T(0), -T(INFINITY), y);
  y = select(u == T(INFINITY), u, y);
  y = select(x < T(-1), T(NAN), y);
  y = select(isnan(x), x, y);
  return y;
}

}  // namespace math
}  // namespace bandpo
