// libFuzzer harness over the C ABI (bandpo_band_bounds, bandpo_band_loss, and bandpo_logit_stats/_grad on the
// rest of each input: fuzz_logits lists its invariants; then the argument rules over described arrays and the
// tables on what remains: fuzz_arrays.inc), built by ci/fuzz.sh with clang,
// AddressSanitizer and UndefinedBehaviorSanitizer. From each input it draws options (out-of-range enum codes
// and special floats included), a dtype code, a shape (0 and 1 included, and sizes whose byte count cannot
// exist), a mask kind and the values (NaN, +-inf, +-0, subnormals, huge, log-probs above 0).
// Invariants, beyond "no crash and no sanitizer report":
//   - a non-OK status always comes with a message;
//   - an impossible size is BANDPO_INVALID_ARGUMENT, before any buffer is read;
//   - OK with finite inputs at every valid position: the loss, the metrics and the gradient are finite, and
//     for float32/bfloat16/float16 the loss agrees with the float64 computation on the same values within
//     the float32 tolerance relative to the loss's scale (sum of |w A| max(r, upper, 1) + |kl_coef w kl|);
//   - bounds that are OK are in [0, 1] and [1, ratio_max], or NaN where old_logp is NaN or above 0.
#include <bandpo/bandpo.h>
#include <bandpo/dtypes.h>
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz invariant violated: %s (last error: '%s')\n", what, bandpo_last_error());
  std::abort();
}
#define EXPECT(cond)          \
  do {                        \
    if (!(cond)) fail(#cond); \
  } while (0)

// The IEEE edge cases every fuzzed double meets now and then, before each use's own special values.
const double kEdges[] = {std::numeric_limits<double>::quiet_NaN(),
                         std::numeric_limits<double>::infinity(),
                         -std::numeric_limits<double>::infinity(),
                         0.0,
                         -0.0,
                         5e-324,
                         -5e-324};
constexpr size_t kNumEdges = sizeof kEdges / sizeof kEdges[0];

// One of kEdges or of `own`, drawn as PickValueInArray draws from their concatenation (the corpus keeps its meaning).
template <size_t N>
double pick_special(FuzzedDataProvider& in, const double (&own)[N]) {
  const size_t k = in.ConsumeIntegralInRange<size_t>(0, kNumEdges + N - 1);
  return k < kNumEdges ? kEdges[k] : own[k - kNumEdges];
}

double special_double(FuzzedDataProvider& in) {
  static const double kSpecial[] = {1e-310,
                                    1e-300,
                                    1e-45,
                                    1e-12,
                                    1e-7,
                                    0.05,
                                    0.2,
                                    0.28,
                                    0.5,
                                    1.0,
                                    1.0000001,
                                    2.0,
                                    3.0,
                                    10.0,
                                    1e6,
                                    1e18,
                                    1e38,
                                    1e300,
                                    std::numeric_limits<double>::max(),
                                    -1.0,
                                    -1e-7,
                                    -1e300};
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0:
      return pick_special(in, kSpecial);
    case 1:
      return in.ConsumeFloatingPointInRange<double>(0.0, 1.0);
    case 2:
      return in.ConsumeFloatingPointInRange<double>(0.0, 20.0);
    default:
      return in.ConsumeFloatingPoint<double>();
  }
}

// A log-probability, advantage or weight: mostly plausible values, sometimes special ones.
double value(FuzzedDataProvider& in, double lo, double hi) {
  static const double kSpecial[] = {1e-40, -1e-40, 1e-7,   9e-7,   2e-6,   0.5,   -1e30,
                                    1e30,  -1e-30, -103.5, -745.0, -800.0, 1e300, -1e300};
  if (in.ConsumeIntegralInRange<int>(0, 15) == 0) return pick_special(in, kSpecial);
  return in.ConsumeFloatingPointInRange<double>(lo, hi);
}

int element_bytes(int dtype) { return dtype == BANDPO_FLOAT64 ? 8 : dtype == BANDPO_FLOAT32 ? 4 : 2; }

// Half-precision bit patterns through the library's own conversions (bandpo/dtypes.h, checked against torch's
// in the Python tests): the harness needs the exact value a buffer holds, not an independent rounding.
uint16_t to_half_bits(float f, bool bf16) {
  if (bf16) return bandpo::from_float_bf16(f).bits;
  return bandpo::from_float_f16(f).bits;
}

double from_half_bits(uint16_t bits, bool bf16) {
  if (bf16) return bandpo::to_float(bandpo::bfloat16{bits});
  return bandpo::to_float(bandpo::float16{bits});
}

// A buffer of n values in `dtype`, and the exact float64 values it holds.
struct Buffer {
  std::vector<unsigned char> bytes;
  std::vector<double> exact;
  Buffer(int dtype, const std::vector<double>& v) : bytes(v.size() * 8 + 16), exact(v.size()) {
    for (size_t i = 0; i < v.size(); ++i) {
      if (dtype == BANDPO_FLOAT64) {
        std::memcpy(&bytes[i * 8], &v[i], 8);
        exact[i] = v[i];
      } else if (dtype == BANDPO_FLOAT32) {
        const float f = static_cast<float>(v[i]);
        std::memcpy(&bytes[i * 4], &f, 4);
        exact[i] = f;
      } else {
        const bool bf16 = dtype == BANDPO_BFLOAT16;
        const uint16_t h = to_half_bits(static_cast<float>(v[i]), bf16);
        std::memcpy(&bytes[i * 2], &h, 2);
        exact[i] = from_half_bits(h, bf16);
      }
    }
  }
  void* data() { return bytes.data(); }
};

bandpo_options draw_options(FuzzedDataProvider& in) {
  bandpo_options o;
  bandpo_default_options(&o);
  const int which = in.ConsumeIntegral<uint16_t>();  // which options to perturb, one bit each
  if (which & 1) o.divergence = static_cast<bandpo_divergence>(in.ConsumeIntegralInRange<int>(-1, 5));
  if (which & 2) o.delta = special_double(in);
  if (which & 4) o.eps_low = special_double(in);
  if (which & 8) o.eps_high = special_double(in);
  if (which & 16) o.relax_high_p = in.ConsumeIntegralInRange<int>(-1, 2);
  if (which & 32) o.ratio_max = special_double(in);
  if (which & 64) o.dual_clip = special_double(in);
  if (which & 128) o.agg = static_cast<bandpo_aggregation>(in.ConsumeIntegralInRange<int>(-1, 5));
  if (which & 256) o.normalizer = special_double(in);
  if (which & 512) o.kl_coef = in.ConsumeBool() ? special_double(in) : in.ConsumeFloatingPointInRange<double>(0, 1);
  if (which & 1024) o.kl_estimator = static_cast<bandpo_kl_estimator>(in.ConsumeIntegralInRange<int>(-1, 4));
  return o;
}

void fuzz_bounds(FuzzedDataProvider& in) {
  const bandpo_options o = draw_options(in);
  const int dtype = in.ConsumeIntegralInRange<int>(-1, 4);
  if (in.ConsumeIntegralInRange<int>(0, 31) == 0) {  // a size no buffer can have
    // more bytes than ptrdiff_t holds for any dtype (a valid dtype has at least 2 bytes per element)
    const int64_t n = std::numeric_limits<int64_t>::max() / 2 + in.ConsumeIntegralInRange<int64_t>(1, 1 << 20);
    double x = -1, lo, hi;
    const bandpo_status s = bandpo_band_bounds(static_cast<bandpo_dtype>(dtype), &x, n, &o, &lo, &hi);
    EXPECT(s == BANDPO_INVALID_ARGUMENT && bandpo_last_error()[0] != '\0');
    return;
  }
  const int n = in.ConsumeIntegralInRange<int>(0, 70);
  std::vector<double> v(n);
  for (double& x : v) x = value(in, -40.0, 0.0);
  const int d = dtype >= 0 && dtype < 4 ? dtype : BANDPO_FLOAT32;
  Buffer old_logp(d, v), lower(d, v), upper(d, v);
  const bandpo_status s =
      bandpo_band_bounds(static_cast<bandpo_dtype>(dtype), old_logp.data(), n, &o, lower.data(), upper.data());
  if (s != BANDPO_OK) {
    EXPECT(bandpo_last_error()[0] != '\0');
    return;
  }
  EXPECT(dtype >= 0 && dtype < 4);
  for (int i = 0; i < n; ++i) {
    double l, u;
    if (d == BANDPO_FLOAT64) {
      std::memcpy(&l, &lower.bytes[i * 8], 8);
      std::memcpy(&u, &upper.bytes[i * 8], 8);
    } else if (d == BANDPO_FLOAT32) {
      float lf, uf;
      std::memcpy(&lf, &lower.bytes[i * 4], 4);
      std::memcpy(&uf, &upper.bytes[i * 4], 4);
      l = lf, u = uf;
    } else {
      uint16_t lb, ub;
      std::memcpy(&lb, &lower.bytes[i * 2], 2);
      std::memcpy(&ub, &upper.bytes[i * 2], 2);
      l = from_half_bits(lb, d == BANDPO_BFLOAT16), u = from_half_bits(ub, d == BANDPO_BFLOAT16);
    }
    const double x = old_logp.exact[i];
    if (std::isnan(x) || x > 1e-6) {
      EXPECT(std::isnan(l) && std::isnan(u));
    } else {
      EXPECT(l >= 0.0 && l <= 1.0);
      // ratio_max as the output dtype holds it (rounded to nearest: it may land above the double value)
      const double cap = Buffer(d, {o.ratio_max}).exact[0];
      if (!(u >= 1.0 && u <= cap)) {
        std::fprintf(stderr, "old_logp %.17g: upper %.17g, ratio_max %.17g (%.17g in dtype %d)\n", x, u, o.ratio_max,
                     cap, d);
        fail("1 <= upper <= ratio_max");
      }
    }
  }
}

struct LossCall {
  bandpo_status status;
  double loss;
  float metrics[BANDPO_NUM_METRICS];
};

// Bounds given to the loss (bandpo_loss_inputs lower / upper), after an accepted call `r` of `li`: band_bounds'
// own bounds of the call give the same bits (loss, metrics, gradient) for every divergence but KL, whose clip
// decision tests the divergence at r rather than r against the rounded bound (a tie within rounding may fall
// either way; it is held to the same result elsewhere, tests/test_given_bounds.py); then one bound at a valid
// position broken (above 1, below 0, NaN, above ratio_max) is refused, its argument and index named.
void fuzz_given_bounds(FuzzedDataProvider& in, const bandpo_loss_inputs& li, const bandpo_options& o, const LossCall& r,
                       const std::vector<bool>& valid, const void* grad) {
  const int64_t n = li.rows * li.cols;
  const size_t size = li.dtype == BANDPO_FLOAT64 ? 8 : li.dtype == BANDPO_FLOAT32 ? 4 : 2;
  std::vector<unsigned char> lower(n * size + 16), upper(n * size + 16), grad2(n * size + 16);
  EXPECT(bandpo_band_bounds(li.dtype, li.old_logp, n, &o, lower.data(), upper.data()) == BANDPO_OK);
  bandpo_loss_inputs given = li;
  given.lower = lower.data();
  given.upper = upper.data();
  LossCall g{};
  g.status = bandpo_band_loss(&given, &o, &g.loss, g.metrics, grad ? grad2.data() : nullptr);
  EXPECT(g.status == BANDPO_OK);
  const bool same_bits_expected = o.divergence != BANDPO_KL && size >= 4;  // half bounds are rounded
  if (same_bits_expected) {
    EXPECT(std::memcmp(&g.loss, &r.loss, sizeof g.loss) == 0);
    EXPECT(std::memcmp(g.metrics, r.metrics, sizeof g.metrics) == 0);
    if (grad) EXPECT(std::memcmp(grad2.data(), grad, n * size) == 0);
  }
  int64_t at = -1;
  for (int64_t i = 0; i < n; ++i)
    if (valid[i]) at = i;
  if (at < 0 || !in.ConsumeBool()) return;
  const bool lower_side = in.ConsumeBool();
  const int pick = in.ConsumeIntegralInRange<int>(0, 2);
  double bad = pick == 2 ? NAN : lower_side ? (pick == 0 ? 1.5 : -0.25) : (pick == 0 ? 0.5 : -1.0);
  // above the cap, where the cap is one the storage type holds below its own range (4x stays above it there)
  if (!lower_side && pick == 1 && o.ratio_max <= 1e4) bad = 4 * o.ratio_max;
  Buffer one(li.dtype, std::vector<double>{bad});
  std::memcpy((lower_side ? lower : upper).data() + at * size, one.data(), size);
  g.status = bandpo_band_loss(&given, &o, &g.loss, g.metrics, grad ? grad2.data() : nullptr);
  const std::string want = std::string(lower_side ? "lower[" : "upper[") + std::to_string(at) + "]";
  if (g.status != BANDPO_INVALID_ARGUMENT || std::strstr(bandpo_last_error(), want.c_str()) == nullptr) {
    std::fprintf(stderr, "broken %s = %g: status %d, message '%s'\n", want.c_str(), bad, g.status, bandpo_last_error());
    fail("a broken bound is refused by name");
  }
}

void fuzz_loss(FuzzedDataProvider& in) {
  const bandpo_options o = draw_options(in);
  const int dtype = in.ConsumeIntegralInRange<int>(-1, 4);
  const int mask_kind = in.ConsumeIntegralInRange<int>(-1, 3);
  const bool per_row = in.ConsumeBool(), with_ref = in.ConsumeBool(), with_grad = in.ConsumeBool();
  if (in.ConsumeIntegralInRange<int>(0, 31) == 0) {  // sizes whose product or byte count cannot exist
    static const int64_t kHuge[][2] = {
        {int64_t(1) << 40, int64_t(1) << 40},     {(int64_t(1) << 33) + 1, int64_t(1) << 31},
        {std::numeric_limits<int64_t>::max(), 2}, {3, std::numeric_limits<int64_t>::max() / 3},
        {int64_t(1) << 31, int64_t(1) << 31},     {-1, 5},
        {5, std::numeric_limits<int64_t>::min()}};
    const auto& rc = kHuge[in.ConsumeIntegralInRange<size_t>(0, sizeof kHuge / sizeof kHuge[0] - 1)];
    double x[2] = {-1, -1};
    unsigned char m[2] = {1, 1};
    bandpo_loss_inputs li = {static_cast<bandpo_dtype>(dtype),
                             rc[0],
                             rc[1],
                             x,
                             x,
                             x,
                             per_row,
                             m,
                             static_cast<bandpo_mask_kind>(mask_kind),
                             with_ref ? x : nullptr};
    double loss;
    float metrics[BANDPO_NUM_METRICS];
    const bandpo_status s = bandpo_band_loss(&li, &o, &loss, metrics, with_grad ? x : nullptr);
    EXPECT(s == BANDPO_INVALID_ARGUMENT && bandpo_last_error()[0] != '\0');
    return;
  }
  const int rows = in.ConsumeIntegralInRange<int>(0, 6), cols = in.ConsumeIntegralInRange<int>(0, 40);
  const int n = rows * cols;
  const int d = dtype >= 0 && dtype < 4 ? dtype : BANDPO_FLOAT32;
  std::vector<double> logp(n), old(n), adv(per_row ? rows : n), ref(n), w(n);
  for (double& x : logp) x = value(in, -20.0, 0.0);
  for (double& x : old) x = value(in, -20.0, 0.0);
  for (double& x : adv) x = value(in, -3.0, 3.0);
  for (double& x : ref) x = value(in, -20.0, 0.0);
  for (double& x : w) x = mask_kind == BANDPO_MASK_VALUES ? value(in, 0.0, 2.0) : (in.ConsumeBool() ? 1.0 : 0.0);
  Buffer b_logp(d, logp), b_old(d, old), b_adv(d, adv), b_ref(d, ref), b_w(d, w), b_grad(d, logp);
  std::vector<unsigned char> mask_u8(n + 1);
  for (int i = 0; i < n; ++i) mask_u8[i] = w[i] != 0.0 ? static_cast<unsigned char>(1 + (i % 3)) : 0;
  const void* mask = mask_kind == BANDPO_MASK_BOOL     ? static_cast<const void*>(mask_u8.data())
                     : mask_kind == BANDPO_MASK_VALUES ? b_w.data()
                                                       : nullptr;
  if (mask_kind < 0 || mask_kind > 2) mask = mask_u8.data();
  bandpo_loss_inputs li = {static_cast<bandpo_dtype>(dtype),
                           rows,
                           cols,
                           b_logp.data(),
                           b_old.data(),
                           b_adv.data(),
                           per_row,
                           mask,
                           static_cast<bandpo_mask_kind>(mask_kind),
                           with_ref ? b_ref.data() : nullptr};
  LossCall r{};
  r.status = bandpo_band_loss(&li, &o, &r.loss, r.metrics, with_grad ? b_grad.data() : nullptr);
  if (r.status != BANDPO_OK) {
    EXPECT(bandpo_last_error()[0] != '\0');
    return;
  }
  EXPECT(dtype >= 0 && dtype < 4 && mask_kind >= 0 && mask_kind < 3);
  {
    std::vector<bool> valid(n);
    for (int i = 0; i < n; ++i)
      valid[i] = mask_kind == BANDPO_MASK_NONE   ? true
                 : mask_kind == BANDPO_MASK_BOOL ? mask_u8[i] != 0
                                                 : b_w.exact[i] != 0.0;  // as stored (a half may round to 0)
    fuzz_given_bounds(in, li, o, r, valid, with_grad ? b_grad.data() : nullptr);
  }

  // OK: the values at valid positions were all accepted. Bound each aggregated term's magnitude in float64:
  // per token |w| (|A| max(r, ratio_max, dual_clip, 1) + |kl_coef| kl), summed and divided as the aggregation
  // divides. Where that bound is representable in the compute type, the loss, metrics and gradient must be
  // finite; for float32/bfloat16/float16 the loss must match the float64 computation within 3e-5 of it.
  // (Beyond it, a float32 product of finite inputs may overflow: that is the compute type's range.)
  auto weight = [&](int i) {
    return mask_kind == BANDPO_MASK_NONE   ? 1.0
           : mask_kind == BANDPO_MASK_BOOL ? (mask_u8[i] ? 1.0 : 0.0)
                                           : b_w.exact[i];
  };
  bool finite_inputs = true, plain_weights = true, metric_range = true, token_range = true;
  std::vector<double> row_scale(rows, 0.0), row_weight(rows, 0.0);
  double total_weight = 0.0;
  for (int i = 0; i < n; ++i) {
    const double wi = weight(i);
    if (wi == 0.0) continue;
    const double a = b_adv.exact[per_row ? i / cols : i], lp = b_logp.exact[i], olp = b_old.exact[i];
    const double rf = with_ref ? b_ref.exact[i] : lp;
    finite_inputs &=
        std::isfinite(wi) && std::isfinite(a) && std::isfinite(lp) && std::isfinite(olp) && std::isfinite(rf);
    // Negative weights can cancel, and float32 products with subnormal weights keep few bits: only
    // non-negative normal weights bound the error by the magnitudes.
    plain_weights &= wi > 0.0 && wi >= 1.2e-38;
    const double r = std::exp(std::fmin(std::fmax(lp - std::fmin(olp, 0.0), -20.0), 20.0));
    const double cap = std::isfinite(o.ratio_max) ? o.ratio_max : 0.0;
    const double dual = std::isfinite(o.dual_clip) ? o.dual_clip : 0.0;
    const double d_ref = std::fabs(lp - rf);
    const double kl = o.kl_estimator == BANDPO_K1 ? d_ref : o.kl_estimator == BANDPO_K2 ? 0.5 * d_ref * d_ref : 10.0;
    // ppo_kl and ref_kl average old - logp and the KL estimate: beyond float32's range they are inf, faithfully
    metric_range &= std::fabs(olp - lp) <= 1e30 && kl <= 1e30;
    // Each token's weighted terms are products in the compute type (float for float32/bf16/f16): a mask
    // weight of 1e30 times r = e^20 is past float's range whatever the aggregate would be.
    token_range &= std::fabs(wi) * std::fmax(std::fmax(r, 1.0),
                                             std::fmax(std::fabs(olp - lp), kl) +
                                                 std::fabs(a) * std::fmax(std::fmax(r, cap), std::fmax(dual, 1.0))) <=
                   1e30;
    row_scale[i / cols] +=
        std::fabs(wi) * (std::fabs(a) * std::fmax(std::fmax(r, cap), std::fmax(dual, 1.0)) + std::fabs(o.kl_coef) * kl);
    row_weight[i / cols] += wi;
    total_weight += wi;
  }
  if (!finite_inputs || !plain_weights) return;
  const bool set = !std::isnan(o.normalizer);
  double sum = 0.0, den = 1.0, smallest_row_weight = 1.0;
  if (o.agg == BANDPO_SEQ_MEAN_TOKEN_MEAN) {
    for (int b = 0; b < rows; ++b) {
      sum += row_weight[b] > 0 ? row_scale[b] / row_weight[b] : 0.0;
      if (row_weight[b] > 0) smallest_row_weight = std::fmin(smallest_row_weight, row_weight[b]);
    }
    den = set ? o.normalizer : rows;
  } else {
    for (double v : row_scale) sum += v;
    den = set                                  ? o.normalizer
          : o.agg == BANDPO_TOKEN_MEAN         ? total_weight
          : o.agg == BANDPO_SEQ_MEAN_TOKEN_SUM ? rows
                                               : static_cast<double>(rows) * cols;
  }
  const double bound = den > 0 ? sum / den : 0.0;
  if (!(bound <= (d == BANDPO_FLOAT64 ? 1e300 : 1e30)) || (d != BANDPO_FLOAT64 && !token_range)) return;
  auto dump = [&](const char* what) {
    std::fprintf(stderr,
                 "%s: loss %.17g, bound %.3g, rows %d cols %d dtype %d; div %d delta %g eps %g %g relax %d "
                 "ratio_max %g dual %g agg %d norm %g kl_coef %g est %d ref %d mask %d per_row %d\n",
                 what, r.loss, bound, rows, cols, d, o.divergence, o.delta, o.eps_low, o.eps_high, o.relax_high_p,
                 o.ratio_max, o.dual_clip, o.agg, o.normalizer, o.kl_coef, o.kl_estimator, with_ref, mask_kind,
                 per_row);
    for (int i = 0; i < n; ++i)
      std::fprintf(stderr, "  [%d] w %g logp %.9g old %.9g adv %.9g ref %.9g\n", i, weight(i), b_logp.exact[i],
                   b_old.exact[i], b_adv.exact[per_row ? i / cols : i], b_ref.exact[i]);
    std::fprintf(stderr, "  metrics");
    for (float m : r.metrics) std::fprintf(stderr, " %g", m);
    std::fprintf(stderr, "\n  options delta %a eps %a %a ratio_max %a normalizer %a kl_coef %a\n", o.delta, o.eps_low,
                 o.eps_high, o.ratio_max, o.normalizer, o.kl_coef);
    fail(what);
  };
  if (!std::isfinite(r.loss)) dump("finite loss");
  for (int m = 0; m < BANDPO_NUM_METRICS; ++m) {
    // the metrics are float32 whatever the dtype: pg_loss is bounded like the loss, ppo_kl/ref_kl apart
    const bool in_range = (m == 4 || m == 6) ? metric_range : bound <= 1e30;
    if (!std::isfinite(r.metrics[m]) && in_range) {
      std::fprintf(stderr,
                   "metric %d = %g; loss %g, bound %g, rows %d cols %d dtype %d agg %d kl_coef %g est %d "
                   "ref %d mask %d\n",
                   m, r.metrics[m], r.loss, bound, rows, cols, d, o.agg, o.kl_coef, o.kl_estimator, with_ref,
                   mask_kind);
      for (int i = 0; i < n; ++i)
        std::fprintf(stderr, "  [%d] w %g logp %g old %g adv %g ref %g\n", i, weight(i), b_logp.exact[i],
                     b_old.exact[i], b_adv.exact[per_row ? i / cols : i], b_ref.exact[i]);
      fail("finite metrics");
    }
  }
  for (int m = 0; m < 4; ++m) EXPECT(r.metrics[m] >= 0.0f && r.metrics[m] <= 1.0f + 1e-6f);  // clip fractions
  if (with_grad) {
    for (int i = 0; i < n; ++i) {
      double g;
      if (d == BANDPO_FLOAT64) {
        std::memcpy(&g, &b_grad.bytes[i * 8], 8);
      } else if (d == BANDPO_FLOAT32) {
        float f;
        std::memcpy(&f, &b_grad.bytes[i * 4], 4);
        g = f;
      } else {
        uint16_t h;
        std::memcpy(&h, &b_grad.bytes[i * 2], 2);
        g = from_half_bits(h, d == BANDPO_BFLOAT16);
      }
      EXPECT(!std::isnan(g));
    }
  }
  if (d == BANDPO_FLOAT64) return;
  // The float64 computation on the same (exactly representable) values.
  Buffer f_logp(BANDPO_FLOAT64, b_logp.exact), f_old(BANDPO_FLOAT64, b_old.exact), f_adv(BANDPO_FLOAT64, b_adv.exact),
      f_ref(BANDPO_FLOAT64, b_ref.exact), f_w(BANDPO_FLOAT64, b_w.exact);
  bandpo_loss_inputs l64 = li;
  l64.dtype = BANDPO_FLOAT64;
  l64.logp = f_logp.data();
  l64.old_logp = f_old.data();
  l64.advantages = f_adv.data();
  l64.ref_logp = with_ref ? f_ref.data() : nullptr;
  if (mask_kind == BANDPO_MASK_VALUES) l64.mask = f_w.data();
  LossCall r64{};
  // ... and the same options as the float compute type holds them where that changes a term outright: a
  // kl_coef below float's range (1e-300) is 0 there, so the float loss has no KL term at all.
  bandpo_options o64 = o;
  o64.kl_coef = static_cast<double>(static_cast<float>(o.kl_coef));
  r64.status = bandpo_band_loss(&l64, &o64, &r64.loss, r64.metrics, nullptr);
  EXPECT(r64.status == BANDPO_OK);
  // Plus float32's absolute resolution: a token term in the subnormal range (an advantage of 1e-40) keeps
  // only its absolute precision, ~1e-45 per operation, scaled up by the divisions of the aggregation.
  const double divisor = den * smallest_row_weight;
  const double subnormal_floor = divisor > 0 ? 1e-44 * n / divisor : 0.0;
  if (!(std::fabs(r.loss - r64.loss) <= 3e-5 * bound + subnormal_floor + 1e-300)) {
    std::fprintf(stderr,
                 "float64 loss %.17g, dtype %d loss %.17g, bound %.3g; div %d delta %g eps %g %g relax %d "
                 "ratio_max %g dual %g agg %d norm %g kl_coef %g est %d ref %d mask %d per_row %d\n",
                 r64.loss, d, r.loss, bound, o.divergence, o.delta, o.eps_low, o.eps_high, o.relax_high_p, o.ratio_max,
                 o.dual_clip, o.agg, o.normalizer, o.kl_coef, o.kl_estimator, with_ref, mask_kind, per_row);
    for (int i = 0; i < n; ++i)
      std::fprintf(stderr, "  [%d] w %g logp %.9g old %.9g adv %.9g ref %.9g\n", i, weight(i), b_logp.exact[i],
                   b_old.exact[i], b_adv.exact[per_row ? i / cols : i], b_ref.exact[i]);
    fail("the loss agrees with the float64 computation");
  }
}

// The lm_head chunk steps (bandpo_logit_stats, then bandpo_logit_grad on its outputs) on what is left of the
// input: rows and vocab from 0, a row stride from vocab - 1, targets in range, ignored or outside, logits
// mostly plausible and sometimes special, options mostly valid. Invariants: a non-OK status has a message; a
// target outside [0, vocab) that is not ignored, or a stride below vocab, is BANDPO_INVALID_ARGUMENT; with
// finite logits in [-1e4, 1e4] and a tame transform, logp is finite and <= 1e-6 (0 for ignored rows), entropy
// finite in [-1e-4, log(vocab) + 1e-3] and the gradient finite.
void fuzz_logits(FuzzedDataProvider& in) {
  const int64_t rows = in.ConsumeIntegralInRange<int64_t>(0, 5);
  const int64_t vocab = in.ConsumeIntegralInRange<int64_t>(0, 37);
  const int64_t stride = vocab + in.ConsumeIntegralInRange<int64_t>(-1, 3);
  const bool tame_options = in.ConsumeIntegralInRange<int>(0, 7) != 0;
  const double logit_scale = tame_options ? in.ConsumeFloatingPointInRange<double>(0.1, 4.0) : special_double(in);
  const double softcap =
      tame_options ? (in.ConsumeBool() ? 0.0 : in.ConsumeFloatingPointInRange<double>(1.0, 50.0)) : special_double(in);
  const double temperature = tame_options ? in.ConsumeFloatingPointInRange<double>(0.1, 4.0) : special_double(in);
  constexpr int64_t kIgnore = -100;
  std::vector<int64_t> target(static_cast<size_t>(rows));
  bool targets_ok = true;
  for (auto& t : target) {
    switch (in.ConsumeIntegralInRange<int>(0, 9)) {
      case 0:
        t = kIgnore;
        break;
      case 1:
        t = in.ConsumeBool() ? -1 : vocab;
        break;
      default:
        t = vocab > 0 ? in.ConsumeIntegralInRange<int64_t>(0, vocab - 1) : 0;
        break;
    }
    targets_ok = targets_ok && (t == kIgnore || (t >= 0 && t < vocab));
  }
  std::vector<float> raw(static_cast<size_t>(std::max<int64_t>(1, rows * std::max<int64_t>(stride, 0))));
  bool tame_logits = true;
  for (auto& x : raw) {
    x = static_cast<float>(value(in, -1e4, 1e4));
    tame_logits = tame_logits && std::fabs(x) <= 1e4f;
  }
  std::vector<float> logp(static_cast<size_t>(rows) + 1), entropy(static_cast<size_t>(rows) + 1);
  const bandpo_logit_chunk chunk = {rows, vocab, stride, target.data()};
  const bandpo_logit_options options = {kIgnore, logit_scale, softcap, temperature};
  // The options' rule (tables.h), as the C ABI checks it alone and as the chunk step applies it.
  const bool options_ok = std::isfinite(logit_scale) && logit_scale != 0.0 && std::isfinite(softcap) &&
                          softcap >= 0.0 && std::isfinite(temperature) && temperature > 0.0;
  const bandpo_status o = bandpo_check_logit_options(&options);
  EXPECT((o == BANDPO_OK) == options_ok);
  if (o != BANDPO_OK) EXPECT(o == BANDPO_INVALID_ARGUMENT && bandpo_last_error()[0] != '\0');
  const bandpo_status s = bandpo_logit_stats(raw.data(), &chunk, &options, logp.data(), entropy.data());
  if (s != BANDPO_OK) EXPECT(bandpo_last_error()[0] != '\0');
  if (!options_ok) EXPECT(s == BANDPO_INVALID_ARGUMENT);
  const bool shape_ok = vocab >= 1 && stride >= vocab;
  if (rows > 0 && (!shape_ok || !targets_ok)) EXPECT(s == BANDPO_INVALID_ARGUMENT);
  if (s != BANDPO_OK) return;
  const bool check = tame_options && tame_logits;
  for (int64_t r = 0; r < rows && check; ++r) {
    if (target[static_cast<size_t>(r)] == kIgnore) {
      EXPECT(logp[static_cast<size_t>(r)] == 0.0f && entropy[static_cast<size_t>(r)] == 0.0f);
      continue;
    }
    EXPECT(std::isfinite(logp[static_cast<size_t>(r)]) && logp[static_cast<size_t>(r)] <= 1e-6f);
    EXPECT(std::isfinite(entropy[static_cast<size_t>(r)]) && entropy[static_cast<size_t>(r)] >= -1e-4f &&
           entropy[static_cast<size_t>(r)] <= std::log(static_cast<float>(vocab)) + 1e-3f);
  }
  std::vector<float> grad_logp(static_cast<size_t>(rows) + 1), grad_entropy(static_cast<size_t>(rows) + 1);
  for (auto& g : grad_logp) g = static_cast<float>(value(in, -2, 2));
  for (auto& g : grad_entropy) g = static_cast<float>(value(in, -2, 2));
  bool tame_grads = true;
  for (int64_t r = 0; r < rows; ++r)
    tame_grads = tame_grads && std::fabs(grad_logp[static_cast<size_t>(r)]) <= 2 &&
                 std::fabs(grad_entropy[static_cast<size_t>(r)]) <= 2;
  const bool from_outputs = in.ConsumeBool();
  const bandpo_logit_row_grads grads = {grad_logp.data(), grad_entropy.data(), from_outputs ? logp.data() : nullptr,
                                        from_outputs ? entropy.data() : nullptr};
  const bandpo_status g = bandpo_logit_grad(raw.data(), &chunk, &options, &grads);
  EXPECT(g == BANDPO_OK);
  for (int64_t r = 0; r < rows && check && tame_grads; ++r)
    for (int64_t j = 0; j < vocab; ++j) EXPECT(std::isfinite(raw[static_cast<size_t>(r * stride + j)]));
}

#include "fuzz_arrays.inc"  // fuzz_array_rules

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  bandpo_set_num_threads(1);  // deterministic and cheap per input; the thread pool is covered by the tests
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  if (in.ConsumeBool())
    fuzz_bounds(in);
  else
    fuzz_loss(in);
  fuzz_logits(in);       // on what is left: the corpus keeps steering the two above as before
  fuzz_array_rules(in);  // and on what is left after that
  return 0;
}
