// Building the float Band-KL table (kl_table.h) for one delta from exact float64 solves: one interval per
// call, so that the CPU driver fills it on its threads and a CUDA kernel with one thread per interval.
#pragma once

#include <cstdint>

#include "bandpo/kl.h"
#include "bandpo/config.h"
#include "bandpo/kl_table.h"
#include "bandpo/math.h"

namespace bandpo {

// lp at position t in [0, 1] of tabulated interval `index` (1 .. size() - 2), in double.
BANDPO_HD double kl_table_logp(const KlTableLayout& l, int32_t index, double t) {
  if (index <= l.n_high) {  // u = -lp = 2^e (1 + (j + t) / 32), e = binade_lo + (index - 1) / 32
    const int32_t i = index - 1;
    const int32_t e = l.binade_lo + (i >> kKlTableHighPerBinadeLog2);
    const int32_t j = i & ((1 << kKlTableHighPerBinadeLog2) - 1);
    const double step = math::bit_cast<double>(static_cast<int64_t>(1023 + e - kKlTableHighPerBinadeLog2) << 52);
    return -((static_cast<double>((1 << kKlTableHighPerBinadeLog2) + j) + t) * step);
  }
  const int32_t k = l.low_first + (index - l.n_high - 1);  // lp = (t - (k + 1)) / 32
  return (t - static_cast<double>(k + 1)) * (1.0 / (1 << kKlTableLowStepsLog2));
}

// The exact values at lp (float64 solve) the four tabulated functions come from: both bounds and their logs.
// (Returned by value, so that a loop over many positions vectorises.)
struct KlTableValues {
  double lower;
  double upper;      // 1 + V expm1(-lp), V = -expm1(w) of the upper side: the share of the rest that moves
  double log_lower;  // w of the lower bound (held at -750 by the solve, where lower is 0 in double)
  double log_upper;  // log1p(V expm1(-lp))
};

// One side of the exact values at lp from its root w (kl_shrink_log_ratio): the lower bound and its log (w itself),
// or the upper bound and its log.
struct KlTableSide {
  double value;
  double log_value;
};

BANDPO_HD KlTableSide kl_table_side_from_root(double lp, double p, double q, double w, bool upper_side) {
  if (!upper_side) return KlTableSide{kl_lower_from_root(p, w), w};
  const double v = math::select(q > 0.0, 0.0 - math::expm1(w), 1.0);
  const double rest_over_p = math::expm1(-lp);
  return KlTableSide{1.0 + v * rest_over_p, math::log1p(v * rest_over_p)};
}

// Both sides at lp, their two solves in lockstep (the CPU builder's vectorised loop).
BANDPO_HD KlTableValues kl_table_exact(double lp, double delta) {
  const double p = math::exp(lp), q = rest_mass(lp);
  const double a[2] = {p, q};
  const double b[2] = {q, p};
  double w[2];
  detail::kl_shrink_log_ratios(a, b, delta, w);
  const KlTableSide lower = kl_table_side_from_root(lp, p, q, w[0], false);
  const KlTableSide upper = kl_table_side_from_root(lp, p, q, w[1], true);
  return KlTableValues{lower.value, upper.value, lower.log_value, upper.log_value};
}

// One side at lp (the device builder gives each side its own thread: half the dependent chain).
BANDPO_HD KlTableSide kl_table_exact_side(double lp, double delta, bool upper_side) {
  const double p = math::exp(lp), q = rest_mass(lp);
  const double w = detail::kl_shrink_log_ratio(upper_side ? q : p, upper_side ? p : q, delta);
  return kl_table_side_from_root(lp, p, q, w, upper_side);
}

// Chebyshev node j (0 .. 3) of [0, 1] for a cubic: 1/2 - cos((2j + 1) pi / 8) / 2. (A function rather than a
// constexpr array: device code may not index a namespace-scope array at run time.)
BANDPO_HD double kl_table_node(int j) {
  return j == 0   ? 0.038060233744356624
         : j == 1 ? 0.30865828381745514
         : j == 2 ? 0.69134171618254486
                  : 0.96193976625564337;
}

// The monomial coefficients (t^0 first) of the cubic through (kl_table_node(j), f[j]): c = M f with M the
// inverse of the nodes' Vandermonde matrix (computed to 40 digits with mpmath), so no division.
BANDPO_HD void kl_table_cubic_through(const double f[4], double c[4]) {
  const double m[4][4] = {
      {1.2568348730314620261, -0.3741514406663722544, 0.16704465947982473, -0.049728091844914501728},
      {-7.1964575485432847993, 10.760659484982681131, -5.1038052354903009358, 1.5396032990509046041},
      {12.012829501508344619, -25.001535905017072245, 19.344681655524692049, -6.3559752520159644239},
      {-6.1229349178414363477, 14.782072520180588098, -14.782072520180588098, 6.1229349178414363477}};
  for (int k = 0; k < 4; ++k) c[k] = m[k][0] * f[0] + m[k][1] * f[1] + m[k][2] * f[2] + m[k][3] * f[3];
}

// Positions where the builder needs exact values: for each tabulated interval the 4 nodes, then the
// points its check compares at (kl_table_interval_error).
constexpr int kKlTableChecks = 3;
constexpr int kKlTablePointsPerInterval = 4 + kKlTableChecks;

// Check point j: t = 0, 1/2, 1 (both ends, where neighbouring cubics meet, and the middle).
BANDPO_HD double kl_table_check_point(int j) { return 0.5 * j; }

BANDPO_HD double kl_table_point_logp(const KlTableLayout& l, int32_t index, int point) {
  return kl_table_logp(l, index, point < 4 ? kl_table_node(point) : kl_table_check_point(point - 4));
}

// The four tabulated functions at a point, as the table holds them: on the high grid log upper as log(p upper).
BANDPO_HD void kl_table_tabulated(const KlTableLayout& l, int32_t index, double lp, const KlTableValues& x,
                                  double out[4]) {
  out[0] = x.lower;
  out[1] = x.upper;
  out[2] = x.log_lower;
  out[3] = index <= l.n_high ? x.log_upper + lp : x.log_upper;
}

// The cubic (4 floats) of tabulated function fn (0 lower, 1 upper, 2 log lower, 3 log upper: kKlTableLower / 4
// ...) of interval `index` (1 .. size() - 2), from the exact values at its points (kKlTablePointsPerInterval of
// them, in kl_table_point_logp's order; only the 4 nodes are read).
BANDPO_HD void kl_table_fit_function(const KlTableLayout& l, int32_t index, int fn, const KlTableValues* at_points,
                                     float* out) {
  double f[4];
  for (int j = 0; j < 4; ++j) {
    double values[4];
    kl_table_tabulated(l, index, kl_table_point_logp(l, index, j), at_points[j], values);
    f[j] = values[fn];
  }
  double c[4];
  kl_table_cubic_through(f, c);
  for (int m = 0; m < 4; ++m) out[m] = static_cast<float>(c[m]);
  // upper past kKlTableUpperOverflow somewhere in the interval (it is largest at t = 0): inf
  if (fn == kKlTableUpper / 4 && math::max(f[0], f[1]) >= kKlTableUpperOverflow) {
    out[0] = INFINITY;
    for (int m = 1; m < 4; ++m) out[m] = 0.0f;
  }
}

// The interval's record: its kKlTableCoeffs floats.
BANDPO_HD void kl_table_fit(const KlTableLayout& l, int32_t index, const KlTableValues* at_points, float* out) {
  for (int fn = 0; fn < 4; ++fn) kl_table_fit_function(l, index, fn, at_points, out + 4 * fn);
}

// Writes interval `index`'s record (kKlTableCoeffs floats, from kl_table_fit or kl_table_fill_limit) to its
// places in the table's two halves.
BANDPO_HD void kl_table_store(const KlTableLayout& l, int32_t index, const float* record, float* coeffs) {
  for (int r = 0; r < kKlTableCoeffs; ++r) coeffs[kl_table_at(l, index, r & ~3) + (r & 3)] = record[r];
}

// The two constant intervals, 0 (u below the high grid: p -> 1) and size() - 1 (lp below the low grid:
// p -> 0): the limits of the four tabulated functions there.
BANDPO_HD void kl_table_fill_limit(const KlTableLayout& l, int32_t index, double delta, float* out) {
  for (int m = 0; m < kKlTableCoeffs; ++m) out[m] = 0.0f;
  if (index == 0) {  // lower e^-delta, upper 1, log lower -delta, log(p upper) 0
    out[kKlTableLower] = static_cast<float>(math::exp(-delta));
    out[kKlTableUpper] = 1.0f;
    out[kKlTableLogLower] = static_cast<float>(-delta);
  } else {  // lower 0, upper inf, log lower -inf, log upper +inf (beyond any clamped ratio there)
    out[kKlTableUpper] = INFINITY;
    out[kKlTableLogLower] = -INFINITY;
    out[kKlTableLogUpper] = INFINITY;
  }
}

// Relative error of a tabulated upper bound; none where both are near or in the range held as inf (an
// interval held as inf starts above kKlTableUpperOverflow and ends within 3% of it).
BANDPO_HD double kl_table_upper_error(double got, double want) {
  if (want >= 0.5 * kKlTableUpperOverflow && got >= 0.5 * kKlTableUpperOverflow) return 0.0;
  const double error = math::max(got - want, want - got) / want;
  return error == error ? error : INFINITY;
}

// Error of a tabulated log bound against the exact one, in log units (the ratio's relative error) over
// max(1, |exact|). Where both lie beyond the log-ratio clamp on the same side, no clamped log-ratio is
// beyond the bound either way: no error.
BANDPO_HD double kl_table_log_error(double got, double want) {
  if ((got > kLogRatioClamp && want > kLogRatioClamp) || (got < -kLogRatioClamp && want < -kLogRatioClamp)) return 0.0;
  const double error = math::max(got - want, want - got) / math::max(1.0, math::max(want, -want));
  return error == error ? error : INFINITY;
}

// Worst error of tabulated function fn's cubic (`c`, 4 floats) of an interval at its check points against the
// exact values there, in the measure of the float path's accuracy: |lower error| / max(lower, 1e-3), the
// upper bound's relative error, the log bounds' error in log units. The float cubic is evaluated as the
// lookup evaluates it.
BANDPO_HD double kl_table_function_error(const KlTableLayout& l, int32_t index, int fn, const KlTableValues* at_points,
                                         const float* c) {
  double worst = 0.0;
  for (int j = 0; j < kKlTableChecks; ++j) {
    double want[4];
    kl_table_tabulated(l, index, kl_table_point_logp(l, index, 4 + j), at_points[4 + j], want);
    const double got = kl_table_cubic(c, static_cast<float>(kl_table_check_point(j)));
    double error;
    if (fn == kKlTableLower / 4) {
      error = math::max(got - want[0], want[0] - got) / math::max(want[0], 1e-3);
    } else if (fn == kKlTableUpper / 4) {
      error = kl_table_upper_error(got, want[1]);
    } else {
      error = kl_table_log_error(got, want[fn]);
    }
    worst = math::max(worst, error);
  }
  return worst;
}

// The worst of the interval's four (its record `c`, kKlTableCoeffs floats).
BANDPO_HD double kl_table_interval_error(const KlTableLayout& l, int32_t index, const KlTableValues* at_points,
                                         const float* c) {
  double worst = 0.0;
  for (int fn = 0; fn < 4; ++fn) worst = math::max(worst, kl_table_function_error(l, index, fn, at_points, c + 4 * fn));
  return worst;
}

// Where a constant interval (0 or size() - 1) is checked: the grid's far end next to it.
BANDPO_HD double kl_table_limit_logp(const KlTableLayout& l, int32_t index) {
  return index == 0 ? kl_table_logp(l, 1, 0.0) : kl_table_logp(l, index - 1, 0.0);
}

// The error of a constant interval's record `c`: its limits against `want`, the exact values at
// kl_table_limit_logp().
BANDPO_HD double kl_table_limit_error(const KlTableLayout& l, int32_t index, const float* c,
                                      const KlTableValues& want) {
  const double lp = kl_table_limit_logp(l, index);
  double tabulated[4];
  kl_table_tabulated(l, index == 0 ? 1 : index - 1, lp, want, tabulated);
  const double el =
      math::max(want.lower - c[kKlTableLower], c[kKlTableLower] - want.lower) / math::max(want.lower, 1e-3);
  // at float's p = 0 (lp = -104) the bounds are 0 and inf by convention, whatever the exact upper there
  const double ev = lp <= kKlTableFloatZeroLogp ? 0.0 : kl_table_upper_error(c[kKlTableUpper], want.upper);
  const double elog = math::max(kl_table_log_error(c[kKlTableLogLower], tabulated[2]),
                                kl_table_log_error(c[kKlTableLogUpper], tabulated[3]));
  return math::max(math::max(el, ev), elog);
}

// The largest error (kl_table_interval_error, kl_table_limit_error) a table may have; the float path is held
// to 4e-6 by the tests, and float rounding alone is about 1e-7.
constexpr double kKlTableMaxError = 1e-6;

}  // namespace bandpo
