// Band-KL bounds in float from a per-delta table: the float compute path of "kl" (float32, bfloat16, float16
// inputs) at about the cost of the closed-form divergences. float64 keeps the exact solve (bounds.h).
//
// For a fixed delta both bounds are smooth functions of lp = old_logp alone. The table holds, for each
// interval of lp, cubics in the interval's local coordinate t in [0, 1] for four functions:
//   lower(lp)      the lower ratio bound itself, in [0, 1];
//   upper(lp)      the upper ratio bound itself, in [1, 1/p]: on the low grid it grows like (1 - e^-delta)
//                  e^-lp, by 3% across an interval, which a cubic follows to float precision, relatively;
//                  where it passes 1e38 (float's range ends at 3.4e38) it is held as inf;
//   log lower, log upper   for band_loss's clip decision, which compares the log-ratio with them and so needs
//                  no exp per token (log upper held as log(p upper) on the high grid, see kKlTableCoeffs).
// So a lookup is an index, gathers and a cubic: no exp, no division. The intervals are laid out so that the
// index and t come from lp by exact float operations (no rounding enters the position):
//   high p, lp in (-ln 2, 0]: u = -lp on a binade grid (32 intervals per power of two), read from u's bits.
//     Near p -> 1 the functions move on the scale of q ~ u (terms like q log q), which a grid uniform in lp
//     cannot follow; one in log u can. Below u = 2^binade_lo they are at their limits (lower = e^-delta,
//     upper = 1) to float precision: 30 binades below delta, and at least 25 (1 + u rounds to 1 below).
//   low p, lp <= -ln 2: uniform steps of 1/32 in lp (the functions are smooth in lp there, lower decaying
//     like exp(-delta / p)), down to where upper passes 1e38 or float's p is 0 (lp = -104): beyond, the
//     bounds are 0 and inf, and so are the log bounds beyond any clamped log-ratio.
// Interval 0 and the last one are those limits (constant cubics), so that out-of-range positions need no
// branch: their index is clamped onto them.
//
// Each interval's cubics interpolate exact float64 solves (kl.h kl_shrink_log_ratios) at the 4 Chebyshev
// nodes of the interval. At this resolution the interpolation error is below float's own rounding: over
// delta in [1e-12, 1e6] and lp across float's range the bounds stay within 3.1e-7 of the exact ones
// (tests/test_kl_table.py; the test tolerance of the float path is 4e-6). The builder checks every interval
// at three more points against exact solves (kl_table_interval_error) and refuses a table with an error
// above kKlTableMaxError; the caller then solves exactly: a fallback, never a silent loss of accuracy.
#pragma once

#include <cmath>
#include <cstdint>

#include "bandpo/config.h"
#include "bandpo/math.h"

namespace bandpo {

constexpr int kKlTableHighPerBinadeLog2 = 5;  // 32 intervals per binade of u = -lp
constexpr int kKlTableLowStepsLog2 = 5;       // lp steps of 1/32
// Per interval, four cubics (t^0 first): lower, upper, and for the loss's clip decision log lower and log upper
// (the high grid holds log(p upper) instead: bounded as p -> 1, where log upper -> -lp; the lookup adds -lp).
// The builder makes them as one record of kKlTableCoeffs floats, at these offsets.
constexpr int kKlTableCoeffs = 16;
constexpr int kKlTableLower = 0, kKlTableUpper = 4, kKlTableLogLower = 8, kKlTableLogUpper = 12;
// In memory the table is two halves of 8 floats per interval: first lower and upper of every interval, then log
// lower and log upper. A kernel reads one half (band_bounds the first, the loss's clip decision the second):
// half the working set, and an interval's two cubics of a half in one 32-byte sector (on the device, where
// tokens of a warp read scattered intervals, sectors and L1 residency are what a lookup costs).
constexpr int kKlTableHalf = 8;
// Upper bounds above this are held as inf (float's largest is 3.4e38).
constexpr double kKlTableUpperOverflow = 1e38;
// lp below which float's exp(lp) is 0 (the bounds are 0 and inf there, as for p = 0).
constexpr double kKlTableFloatZeroLogp = -104.0;
constexpr int kKlTableBinadesBelowDelta = 30;
constexpr int kKlTableHighestBinadeLo = -25;
constexpr int kFloatMantissaBits = 23;

// Where each interval is, as plain integers: the same for the builder (host or device) and the lookups.
struct KlTableLayout {
  int32_t binade_lo;  // the high grid covers u = -lp in [2^binade_lo, 2^0)
  int32_t n_high;     // its intervals: 1 .. n_high in the table (32 per binade)
  int32_t low_first;  // the low grid's first step k: interval k covers -32 lp in [k, k + 1)
  int32_t n_low;      // its intervals: n_high + 1 .. n_high + n_low in the table
  BANDPO_HD int32_t size() const { return n_high + n_low + 2; }
};

// A table in memory (host or device) with its layout; coeffs == nullptr means none (solve exactly).
struct KlTable {
  const float* coeffs;
  KlTableLayout layout;
};

// The layout for delta (in [1e-12, 1e6], validated by the caller).
inline KlTableLayout kl_table_layout(double delta) {
  KlTableLayout l;
  int e = static_cast<int>(std::floor(std::log2(delta))) - kKlTableBinadesBelowDelta;
  e = e < -126 ? -126 : e;                                        // float's normal range: u below it reads as the limit
  e = e > kKlTableHighestBinadeLo ? kKlTableHighestBinadeLo : e;  // upper = 1 + u is 1 in float only below
  l.binade_lo = e;
  l.n_high = -e << kKlTableHighPerBinadeLog2;
  l.low_first = static_cast<int32_t>(std::floor(0.6931471805599453 * (1 << kKlTableLowStepsLog2)));
  // upper ~ (1 - e^-delta) e^-lp passes kKlTableUpperOverflow at lp = log(1 - e^-delta) - 88.0 (e^88 =
  // 1.65e38); there lower is 0 and log upper above 20 for every delta.
  double lp_lo = std::log(-std::expm1(-delta)) - 88.0;
  lp_lo = lp_lo < kKlTableFloatZeroLogp ? kKlTableFloatZeroLogp : lp_lo;
  const int32_t low_end = static_cast<int32_t>(std::ceil(-lp_lo * (1 << kKlTableLowStepsLog2)));
  l.n_low = low_end > l.low_first ? low_end - l.low_first : 1;
  return l;
}

// -ln 2 in float, rounded up: lp > this is the high grid (u = -lp < ln 2 there, below 2^0).
constexpr float kKlTableHighLogpMin = -0.693147182f;

// Table index and local coordinate t in [0, 1] of lp (float, already sanitized: <= 0 or NaN). Exact: u's bits
// give the high grid's position, and -32 lp is exact in float, so are k and (k + 1) + 32 lp.
BANDPO_HD void kl_table_position(float lp, const KlTableLayout& l, int32_t& index, float& t) {
  constexpr int kShift = kFloatMantissaBits - kKlTableHighPerBinadeLog2;
  // high grid: interval (bits(u) >> kShift) - bits(2^binade_lo) >> kShift, t = the bits below, as [0, 1).
  const float u = math::max(-lp, 0.0f);  // -0 (lp = +0) is 0; NaN becomes 0 (its bounds are NaN anyway)
  const int32_t ubits = math::bit_cast<int32_t>(u);
  const int32_t high_raw = (ubits >> kShift) - ((l.binade_lo + 127) << (kFloatMantissaBits - kShift)) + 1;
  const int32_t high_index = math::min(math::max(high_raw, int32_t(0)), l.n_high);
  const float high_t =
      math::bit_cast<float>((ubits & ((1 << kShift) - 1)) << (kFloatMantissaBits - kShift) | 0x3f800000) - 1.0f;
  // low grid: y = -32 lp in [k, k + 1), t = (k + 1) - y in (0, 1] (t = 0 at the interval's lower lp).
  const float y = math::min(u * float(1 << kKlTableLowStepsLog2), 1e7f);  // -inf lands on the limit
  const int32_t k = static_cast<int32_t>(y);
  const int32_t low_index = l.n_high + 1 + math::min(math::max(k - l.low_first, int32_t(0)), l.n_low);
  const float low_t = static_cast<float>(k + 1) - y;
  const bool high = lp > kKlTableHighLogpMin;
  index = math::select(high, high_index, low_index);
  t = math::select(high, high_t, low_t);
}

BANDPO_HD float kl_table_cubic(const float* c, float t) { return c[0] + t * (c[1] + t * (c[2] + t * c[3])); }

// Where record offset `r` (kKlTableLower ...) of interval `index` is in memory.
BANDPO_HD int32_t kl_table_at(const KlTableLayout& l, int32_t index, int r) {
  return (r >> 3) * (l.size() * kKlTableHalf) + index * kKlTableHalf + (r & 4);
}

// The cubic at offset `at` of the table (kl_table_at, a multiple of 4): 32-bit offsets, which
// vectorise as gathers on the CPU (64-bit ones did not). On the device one 16-byte load: the lanes of a warp
// read scattered intervals, and four scalar loads cost four times the L1 transactions (measured on an H200:
// 16M float32 bounds 0.31 ms with scalar loads against 0.06 ms for TV).
BANDPO_HD float kl_table_cubic_at(const float* coeffs, int32_t at, float t) {
#ifdef __CUDA_ARCH__
  const float4 c = __ldg(reinterpret_cast<const float4*>(coeffs + at));  // 16-byte aligned: at is a multiple of 4
  return c.x + t * (c.y + t * (c.z + t * c.w));
#else
  return coeffs[at] + t * (coeffs[at + 1] + t * (coeffs[at + 2] + t * coeffs[at + 3]));
#endif
}

// The raw KL bounds (before relax and caps) of a sanitized lp from the table.
template <class Bounds>
BANDPO_HD Bounds kl_table_bounds(float lp, const KlTable& table) {
  int32_t index;
  float t;
  kl_table_position(lp, table.layout, index, t);
  const int32_t at = kl_table_at(table.layout, index, kKlTableLower);
  Bounds b;
  b.lower = kl_table_cubic_at(table.coeffs, at, t);
  b.upper = kl_table_cubic_at(table.coeffs, at + (kKlTableUpper - kKlTableLower), t);
  return b;
}

// One side only: half the table reads.
BANDPO_HD float kl_table_bound_one_side(float lp, bool upper_side, const KlTable& table) {
  int32_t index;
  float t;
  kl_table_position(lp, table.layout, index, t);
  return kl_table_cubic_at(table.coeffs,
                           kl_table_at(table.layout, index, kKlTableLower) + math::select(upper_side, 4, 0), t);
}

// The log of one raw bound, for the loss's clip decision (log_ratio beyond it): no exp or expm1 per token.
// -inf / +inf where no clamped log-ratio (|log r| <= 20) can be beyond it.
BANDPO_HD float kl_table_log_bound_one_side(float lp, bool upper_side, const KlTable& table) {
  int32_t index;
  float t;
  kl_table_position(lp, table.layout, index, t);
  const float v = kl_table_cubic_at(
      table.coeffs, kl_table_at(table.layout, index, kKlTableLogLower) + math::select(upper_side, 4, 0), t);
  return v - math::select(upper_side & (lp > kKlTableHighLogpMin), lp, 0.0f);
}

}  // namespace bandpo
