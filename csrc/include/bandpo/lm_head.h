// Per-element math of log-probs and entropy from a row of raw logits (the lm_head's output), written once for
// the CPU loops and any device kernel: the logit transform, its derivative, and each logit's share of the
// gradient. The row reductions (max, sums) are the drivers' (csrc/core/lm_head_cpu.cpp).
//
// For raw logits r_j of one token (hidden . W_j + b_j), the logits are
//     y_j = scale r_j,  then  y_j = softcap tanh(y_j / softcap)  when softcap > 0,   z_j = y_j / T
// (TRL's order: scale, softcap, temperature). With m = max_j z_j, s = sum_j e^(z_j - m) and
// a = sum_j e^(z_j - m) (z_j - m):
//     log p_target = z_target - m - log s,      entropy H = log s - a / s
// (both terms of H are >= 0: no cancellation). Gradients w.r.t. z_j, with P_j = e^(z_j - m) / s:
//     d log p_target / d z_j = [j = target] - P_j,      d H / d z_j = -P_j (z_j - E[z]),  E[z] = m + a / s,
// and dz_j / dr_j = scale (1 - tanh^2) / T with softcap, scale / T without.
#pragma once

#include <math.h>

#include "bandpo/config.h"
#include "bandpo/math.h"

namespace bandpo {

// The transform's constants, from (logit_scale, softcap, temperature): softcap 0 means none.
struct LogitTransform {
  float scale_over_softcap;        // scale / softcap (softcap > 0)
  float softcap_over_temperature;  // softcap / T
  float scale_over_temperature;    // scale / T
  bool softcap;
};

inline LogitTransform make_logit_transform(double logit_scale, double softcap, double temperature) {
  LogitTransform t;
  t.softcap = softcap > 0.0;
  t.scale_over_softcap = t.softcap ? static_cast<float>(logit_scale / softcap) : 0.0f;
  t.softcap_over_temperature = static_cast<float>(softcap / temperature);
  t.scale_over_temperature = static_cast<float>(logit_scale / temperature);
  return t;
}

// tanh for the softcap: 1 - 2 / (e^(2x) + 1), exact at 0 sign-wise and saturating to +-1 without NaN.
BANDPO_HD float logit_tanh(float x) {
  const float e = math::exp(2.0f * math::min(math::max(x, -40.0f), 40.0f));
  return 1.0f - 2.0f / (e + 1.0f);
}

// z of a raw logit.
BANDPO_HD float logit_z(float raw, const LogitTransform& t) {
  return t.softcap ? t.softcap_over_temperature * logit_tanh(t.scale_over_softcap * raw)
                   : t.scale_over_temperature * raw;
}

// z and dz/draw of a raw logit.
BANDPO_HD float logit_z_and_slope(float raw, const LogitTransform& t, float& slope) {
  if (!t.softcap) {
    slope = t.scale_over_temperature;
    return t.scale_over_temperature * raw;
  }
  const float th = logit_tanh(t.scale_over_softcap * raw);
  slope = t.scale_over_temperature * (1.0f - th * th);
  return t.softcap_over_temperature * th;
}

// z - m for a logit z and a max m >= z, held at exp's underflow (FloatTraits<float>::kExpMin, below which e^(z - m) is
// 0 anyway) so that a logit of -inf (a vocabulary entry masked by a bias of -inf) has weight 0 and a finite offset:
// its terms e^(z - m) (z - m) in the entropy and the gradient are 0, the limit of p log p at p = 0, not 0 * -inf =
// NaN. Finite logits get the same bits as plain z - m (one max, no select in the vectorised loops); NaN stays NaN
// (max(a, b) is b when they are unordered).
BANDPO_HD float logit_offset(float z, float m) { return math::max(math::FloatTraits<float>::kExpMin, z - m); }

// A row's (or a part's) sums relative to its largest logit m: s = sum e^(z - m), a = sum e^(z - m) (z - m).
// Empty: s = 0 (m = -inf).
struct LogitRowSums {
  float max;
  float sum;
  float moment;
};

// The sums with N more logits z[0..N) (the device kernels' single pass, one 16-byte load at a time; the CPU's
// vectorised loops take the row's max first, then sum). The chunk's max first: the sums are re-based at most once
// per chunk, and the N exponentials are one straight run the compiler can interleave (a branch per logit on a new
// maximum serialised them). A logit of -inf (a masked vocabulary entry, or the padding past the row's end) adds
// nothing; NaN or +inf leave no distribution: NaN sums, which every later add and merge keeps (the CPU's two passes
// give NaN there too). Checked against the CPU on the host, in the device's order (tests/cpp/test_core.cpp).
template <int N>
BANDPO_HD LogitRowSums logit_sums_add(LogitRowSums x, const float (&z)[N]) {
  float m = -INFINITY;
  bool bad = false;
  BANDPO_UNROLL
  for (int j = 0; j < N; ++j) {
    m = math::max(m, z[j]);
    bad = bad | !(z[j] < INFINITY);  // NaN or +inf
  }
  if (bad) return LogitRowSums{NAN, NAN, NAN};
  if (m == -INFINITY) return x;  // all masked
  if (x.sum == 0.0f) {
    x = LogitRowSums{m, 0.0f, 0.0f};
  } else if (m > x.max) {  // re-based to m: e^d (a + s d) and e^d s with d = max - m < 0
    const float d = x.max - m, f = math::exp(d);
    x = LogitRowSums{m, f * x.sum, f * (x.moment + x.sum * d)};
  }
  BANDPO_UNROLL
  for (int j = 0; j < N; ++j) {
    const float zm = logit_offset(z[j], x.max), e = math::exp(zm);
    x.sum += e;
    x.moment += e * zm;
  }
  return x;
}

// The sums of two parts (the device kernels' reductions), re-based to the larger max.
BANDPO_HD LogitRowSums logit_sums_merge(LogitRowSums x, LogitRowSums y) {
  if (y.sum == 0.0f) return x;
  if (x.sum == 0.0f) return y;
  if (y.max > x.max) {
    const LogitRowSums t = x;
    x = y;
    y = t;
  }
  const float d = y.max - x.max, f = math::exp(d);
  return LogitRowSums{x.max, x.sum + f * y.sum, x.moment + f * (y.moment + y.sum * d)};
}

// logp of the target (z_target its logit) and the entropy from the row's sums; rounding never makes logp
// above 0 or the entropy below 0. A row with a NaN logit (or +inf: inf - inf) gives NaN, as log_softmax does: the
// clamps alone would turn its NaN into 0, a plausible log-prob that hides a diverged model.
BANDPO_HD void logit_outputs(const LogitRowSums& x, float z_target, float& logp, float& entropy) {
  const float log_sum = logf(x.sum);  // libm on the host, CUDA's logf on the device
  const float lp = z_target - x.max - log_sum, h = log_sum - x.moment / x.sum;
  logp = math::select(math::isnan(lp), lp, math::min(lp, 0.0f));
  entropy = math::select(math::isnan(h), h, math::max(h, 0.0f));
}

// The row's statistics and the upstream gradients a logit's gradient needs.
struct LogitRowGrad {
  float max;        // m
  float log_sum;    // log s
  float mean_z;     // E[z] - m = a / s
  float grad_logp;  // d loss / d log p_target (0 for an ignored row)
  float grad_entropy;
};

// The row's LogitRowGrad from its sums.
BANDPO_HD LogitRowGrad logit_row_grad_from_sums(const LogitRowSums& x, float grad_logp, float grad_entropy) {
  return LogitRowGrad{x.max, logf(x.sum), x.moment / x.sum, grad_logp, grad_entropy};
}

// The row's LogitRowGrad from the row's outputs instead of its sums (no pass over the row): with
// lse = m + log s = z_target - logp and E[z] = lse - H, logit_grad's terms are the same for max = lse,
// log_sum = 0 and mean_z = E[z] - lse = -H.
BANDPO_HD LogitRowGrad logit_row_grad_from_outputs(float z_target, float logp, float entropy, float grad_logp,
                                                   float grad_entropy) {
  return LogitRowGrad{z_target - logp, 0.0f, -entropy, grad_logp, grad_entropy};
}

// d loss / d raw_j of logit j (is_target: j is the row's target).
BANDPO_HD float logit_grad(float raw, bool is_target, const LogitRowGrad& g, const LogitTransform& t) {
  float slope;
  const float zm = logit_offset(logit_z_and_slope(raw, t, slope), g.max);  // z_j - m
  const float p = math::exp(zm - g.log_sum);
  float dz = -p * (g.grad_logp + g.grad_entropy * (zm - g.mean_z));
  dz += is_target ? g.grad_logp : 0.0f;
  return dz * slope;
}

}  // namespace bandpo
