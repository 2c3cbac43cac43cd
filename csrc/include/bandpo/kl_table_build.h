// Building the float Band-KL table (kl_table.h) for one delta from exact float64 solves: one interval per
// call, so that the CPU driver fills it on its threads and a CUDA kernel with one thread per interval.
#pragma once

#include <cstdint>

#include "bandpo/bounds.h"
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

// The two tabulated functions at lp, exactly (float64 solve): the lower bound and V = -expm1(w_upper).
// (Returned by value, so that a loop over many positions vectorises.)
struct KlTableValues {
  double lower;
  double v;
};

BANDPO_HD KlTableValues kl_table_exact(double lp, double delta) {
  const double p = math::exp(lp), q = rest_mass(lp);
  const double a[2] = {p, q};
  const double b[2] = {q, p};
  double w[2];
  detail::kl_shrink_log_ratios(a, b, delta, w);
  return KlTableValues{kl_lower_from_root(p, w[0]), math::select(q > 0.0, 0.0 - math::expm1(w[1]), 1.0)};
}

// Chebyshev nodes of [0, 1] for a cubic: 1/2 - cos((2j + 1) pi / 8) / 2.
constexpr double kKlTableNodes[4] = {0.038060233744356624, 0.30865828381745514, 0.69134171618254486,
                                     0.96193976625564337};

// The monomial coefficients (t^0 first) of the cubic through (kKlTableNodes[j], f[j]), via Newton's
// divided differences.
BANDPO_HD void kl_table_cubic_through(const double f[4], double c[4]) {
  const double* x = kKlTableNodes;
  double d[4] = {f[0], f[1], f[2], f[3]};
  for (int level = 1; level < 4; ++level) {
    for (int j = 3; j >= level; --j) d[j] = (d[j] - d[j - 1]) / (x[j] - x[j - level]);
  }
  // p(t) = d0 + (t - x0)(d1 + (t - x1)(d2 + (t - x2) d3)), expanded from the inside out.
  double poly[4] = {d[3], 0.0, 0.0, 0.0};
  int degree = 0;
  for (int k = 2; k >= 0; --k) {
    for (int m = degree + 1; m >= 1; --m) poly[m] = poly[m - 1] - x[k] * poly[m];
    poly[0] = d[k] - x[k] * poly[0];
    ++degree;
  }
  for (int m = 0; m < 4; ++m) c[m] = poly[m];
}

// Positions where the builder needs exact values: for each tabulated interval the 4 nodes, then the
// points its check compares at (kl_table_interval_error).
constexpr int kKlTableChecks = 3;
constexpr double kKlTableCheckPoints[kKlTableChecks] = {0.0, 0.5, 1.0};
constexpr int kKlTablePointsPerInterval = 4 + kKlTableChecks;

BANDPO_HD double kl_table_point_logp(const KlTableLayout& l, int32_t index, int point) {
  return kl_table_logp(l, index, point < 4 ? kKlTableNodes[point] : kKlTableCheckPoints[point - 4]);
}

// The kKlTableCoeffs floats of interval `index` (1 .. size() - 2) from the exact values at its points
// (kKlTablePointsPerInterval of them, in kl_table_point_logp's order; only the 4 nodes are read).
BANDPO_HD void kl_table_fit(const KlTableValues* at_points, float* out) {
  double lower[4], v[4], c[4];
  for (int j = 0; j < 4; ++j) {
    lower[j] = at_points[j].lower;
    v[j] = at_points[j].v;
  }
  kl_table_cubic_through(lower, c);
  for (int m = 0; m < 4; ++m) out[m] = static_cast<float>(c[m]);
  kl_table_cubic_through(v, c);
  for (int m = 0; m < 4; ++m) out[4 + m] = static_cast<float>(c[m]);
}

// The two constant intervals, 0 (u below the high grid: p -> 1) and size() - 1 (lp below the low grid:
// p -> 0): the limits of lower and V there.
BANDPO_HD void kl_table_fill_limit(const KlTableLayout& l, int32_t index, double delta, float* out) {
  for (int m = 0; m < kKlTableCoeffs; ++m) out[m] = 0.0f;
  if (index == 0) {
    out[0] = static_cast<float>(math::exp(-delta));
    out[4] = 1.0f;
  } else {
    out[4] = static_cast<float>(0.0 - math::expm1(-delta));
  }
}

// Worst error of a tabulated interval's cubics (`c`) at its check points against the exact values there, in
// the measure of the float path's accuracy: |lower error| / max(lower, 1e-3) and |V error| / V (the upper
// bound's relative error is at most that). The float cubic is evaluated as the lookup evaluates it.
BANDPO_HD double kl_table_interval_error(const KlTableValues* at_points, const float* c) {
  double worst = 0.0;
  for (int j = 0; j < kKlTableChecks; ++j) {
    const KlTableValues want = at_points[4 + j];
    const float t = static_cast<float>(kKlTableCheckPoints[j]);
    const double got_lower = kl_table_cubic(c, t);
    const double got_v = kl_table_cubic(c + 4, t);
    worst = math::max(worst, math::max(got_lower - want.lower, want.lower - got_lower) / math::max(want.lower, 1e-3));
    worst = math::max(worst, math::max(got_v - want.v, want.v - got_v) / want.v);
  }
  return worst;
}

// The error of a constant interval: its limits against the exact values at the grid's far end next to it.
BANDPO_HD double kl_table_limit_error(const KlTableLayout& l, int32_t index, double delta, const float* c) {
  const double lp = index == 0 ? kl_table_logp(l, 1, 0.0) : kl_table_logp(l, index - 1, 0.0);
  const KlTableValues want = kl_table_exact(lp, delta);
  const double el = math::max(want.lower - c[0], c[0] - want.lower) / math::max(want.lower, 1e-3);
  const double ev = math::max(want.v - c[4], c[4] - want.v) / want.v;
  return math::max(el, ev);
}

// The largest error (kl_table_interval_error, kl_table_limit_error) a table may have; the float path is held
// to 4e-6 by the tests, and float rounding alone is about 1e-7.
constexpr double kKlTableMaxError = 1e-6;

}  // namespace bandpo
