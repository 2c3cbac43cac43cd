/* ctest for the C ABI (bandpo/bandpo.h), compiled as C: defaults, bounds, loss + gradient, the lm_head chunk
 * steps, statuses and the thread-local error message. */
#include <bandpo/bandpo.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static int failures = 0;
#define CHECK(cond)                                  \
  do {                                               \
    if (!(cond)) {                                   \
      ++failures;                                    \
      printf("FAIL line %d: %s\n", __LINE__, #cond); \
    }                                                \
  } while (0)

int main(void) {
  bandpo_options o;
  bandpo_default_options(&o);
  CHECK(o.divergence == BANDPO_KL && o.delta == 0.05 && o.ratio_max == 10.0 && isinf(o.dual_clip) &&
        isnan(o.normalizer));
  CHECK(strcmp(bandpo_version(), "") != 0 && bandpo_abi_version() == BANDPO_ABI_VERSION);

  /* Paper values at delta 0.05: p = 0.01 -> upper 7.810 (no cap), lower 0.002497. */
  double lp = log(0.01), lo = 0, hi = 0;
  o.ratio_max = INFINITY;
  CHECK(bandpo_band_bounds(BANDPO_FLOAT64, &lp, 1, &o, &lo, &hi) == BANDPO_OK);
  CHECK(fabs(hi - 7.810) < 2e-3 && fabs(lo - 0.002497) < 1e-6);

  float logp[6] = {-1.0f, -2.0f, -0.5f, -3.0f, -1.5f, -0.2f}, old_logp[6] = {-1.2f, -1.0f, -0.6f, -3.5f, -1.0f, -0.3f};
  float adv[2] = {1.0f, -1.0f}, grad[6];
  unsigned char mask[6] = {1, 1, 0, 1, 1, 1};
  bandpo_loss_inputs in = {BANDPO_FLOAT32, 2, 3, logp, old_logp, adv, 1, mask, BANDPO_MASK_BOOL, NULL};
  double loss = 0;
  float metrics[BANDPO_NUM_METRICS];
  bandpo_default_options(&o);
  CHECK(bandpo_band_loss(&in, &o, &loss, metrics, grad) == BANDPO_OK);
  CHECK(isfinite(loss) && grad[2] == 0.0f && grad[0] != 0.0f);
  CHECK(strcmp(bandpo_last_error(), "") == 0);

  o.delta = -1;
  CHECK(bandpo_band_loss(&in, &o, &loss, metrics, grad) == BANDPO_INVALID_ARGUMENT);
  CHECK(strstr(bandpo_last_error(), "delta") != NULL);
  bandpo_default_options(&o);
  o.divergence = (bandpo_divergence)9;
  CHECK(bandpo_band_bounds(BANDPO_FLOAT64, &lp, 1, &o, &lo, &hi) == BANDPO_INVALID_ARGUMENT);
  CHECK(strstr(bandpo_last_error(), "divergence") != NULL);
  CHECK(bandpo_band_bounds(BANDPO_FLOAT64, &lp, 1, NULL, &lo, &hi) == BANDPO_INVALID_ARGUMENT);
  bandpo_default_options(&o);
  logp[0] = NAN;
  CHECK(bandpo_band_loss(&in, &o, &loss, metrics, grad) == BANDPO_INVALID_ARGUMENT);
  CHECK(strstr(bandpo_last_error(), "logp[0]") != NULL);
  logp[0] = 0.5f; /* a probability above 1: refused like old_logp */
  CHECK(bandpo_band_loss(&in, &o, &loss, metrics, grad) == BANDPO_INVALID_ARGUMENT);
  CHECK(strstr(bandpo_last_error(), "logp[0] = 0.5 > 0") != NULL);
  logp[0] = 5e-7f; /* within rounding of 0: accepted */
  CHECK(bandpo_band_loss(&in, &o, &loss, metrics, grad) == BANDPO_OK);
  logp[0] = -1.0f;
  bandpo_set_num_threads(1);
  CHECK(bandpo_band_loss(&in, &o, &loss, metrics, NULL) == BANDPO_OK);

  /* Bounds given by the caller: band_bounds' own give the same loss and gradient; a lower bound above 1 at a
   * valid position is refused naming it; one without the other is refused. */
  {
    float lower[6], upper[6], grad2[6];
    double loss2 = 0;
    CHECK(bandpo_band_bounds(BANDPO_FLOAT32, old_logp, 6, &o, lower, upper) == BANDPO_OK);
    CHECK(bandpo_band_loss(&in, &o, &loss, metrics, grad) == BANDPO_OK);
    bandpo_loss_inputs given = in;
    given.lower = lower;
    given.upper = upper;
    CHECK(bandpo_band_loss(&given, &o, &loss2, metrics, grad2) == BANDPO_OK);
    CHECK(loss2 == loss && memcmp(grad, grad2, sizeof grad) == 0);
    lower[1] = 1.5f;
    CHECK(bandpo_band_loss(&given, &o, &loss2, metrics, grad2) == BANDPO_INVALID_ARGUMENT);
    CHECK(strstr(bandpo_last_error(), "lower[1] = 1.5 must be in [0, 1]") != NULL);
    lower[1] = 0.5f;
    lower[2] = NAN; /* position 2 is masked: anything goes */
    CHECK(bandpo_band_loss(&given, &o, &loss2, metrics, grad2) == BANDPO_OK);
    given.upper = NULL;
    CHECK(bandpo_band_loss(&given, &o, &loss2, metrics, grad2) == BANDPO_INVALID_ARGUMENT);
    CHECK(strstr(bandpo_last_error(), "lower and upper come together") != NULL);
  }

  /* Sizes whose product wraps in int64 are refused before any buffer is read, naming them. */
  {
    bandpo_loss_inputs big = in;
    const int64_t wraps[][2] = {{(int64_t)1 << 40, (int64_t)1 << 40},
                                {((int64_t)1 << 33) + 1, (int64_t)1 << 31},
                                {INT64_MAX, 2},
                                {2, INT64_MAX},
                                {(int64_t)1 << 31, (int64_t)1 << 31}};
    for (size_t k = 0; k < sizeof wraps / sizeof wraps[0]; ++k) {
      big.rows = wraps[k][0];
      big.cols = wraps[k][1];
      CHECK(bandpo_band_loss(&big, &o, &loss, metrics, grad) == BANDPO_INVALID_ARGUMENT);
      CHECK(strstr(bandpo_last_error(), "rows = ") != NULL && strstr(bandpo_last_error(), "cols = ") != NULL);
    }
    big.rows = -1;
    big.cols = 3;
    CHECK(bandpo_band_loss(&big, &o, &loss, metrics, grad) == BANDPO_INVALID_ARGUMENT);
    CHECK(bandpo_band_bounds(BANDPO_FLOAT64, &lp, INT64_MAX / 4, &o, &lo, &hi) == BANDPO_INVALID_ARGUMENT);
    CHECK(strstr(bandpo_last_error(), "cols = ") != NULL);
    CHECK(bandpo_band_bounds((bandpo_dtype)7, &lp, 1, &o, &lo, &hi) == BANDPO_INVALID_ARGUMENT);
    CHECK(strstr(bandpo_last_error(), "dtype") != NULL);
    big = in;
    big.mask_kind = (bandpo_mask_kind)5;
    CHECK(bandpo_band_loss(&big, &o, &loss, metrics, grad) == BANDPO_INVALID_ARGUMENT);
    CHECK(strstr(bandpo_last_error(), "mask_kind") != NULL);
  }
  /* Options that would overflow the loss are refused naming them (ValueError in Python). */
  o.normalizer = 1e-300;
  CHECK(bandpo_band_loss(&in, &o, &loss, metrics, grad) == BANDPO_INVALID_ARGUMENT);
  CHECK(strstr(bandpo_last_error(), "normalizer") != NULL);
  bandpo_default_options(&o);

  /* The lm_head chunk steps: logits (0, log 2, log 3) with target 2 give logp = log(1/2) and the entropy of
   * (1/6, 1/3, 1/2); their gradient for d loss / d logp = 1 is onehot - softmax. */
  {
    float raw[3] = {0.0f, (float)log(2.0), (float)log(3.0)}, logp1 = 0, ent = 0;
    const int64_t target = 2;
    bandpo_logit_options lo;
    bandpo_default_logit_options(&lo);
    CHECK(lo.ignore_index == -100 && lo.logit_scale == 1.0 && lo.softcap == 0.0 && lo.temperature == 1.0);
    bandpo_logit_chunk chunk = {1, 3, 3, &target};
    CHECK(bandpo_logit_stats(raw, &chunk, &lo, &logp1, &ent) == BANDPO_OK);
    CHECK(fabs(logp1 - log(0.5)) < 1e-6);
    CHECK(fabs(ent - (log(6.0) / 6 + log(3.0) / 3 + log(2.0) / 2)) < 1e-6);
    const float one = 1.0f;
    const bandpo_logit_row_grads grads = {&one, NULL, &logp1, &ent};
    CHECK(bandpo_logit_grad(raw, &chunk, &lo, &grads) == BANDPO_OK);
    CHECK(fabs(raw[0] + 1.0 / 6) < 1e-6 && fabs(raw[1] + 1.0 / 3) < 1e-6 && fabs(raw[2] - 0.5) < 1e-6);
    const int64_t bad = 3;
    chunk.target = &bad;
    CHECK(bandpo_logit_stats(raw, &chunk, &lo, &logp1, &ent) == BANDPO_INVALID_ARGUMENT);
    CHECK(strstr(bandpo_last_error(), "target[0] = 3") != NULL);
    lo.temperature = 0.0;
    CHECK(bandpo_check_logit_options(&lo) == BANDPO_INVALID_ARGUMENT);
    CHECK(strstr(bandpo_last_error(), "temperature must be a finite number > 0") != NULL);
  }

  /* Arrays with shapes: the rules every face uses. A [2, 3] float32 call with per-row advantages [2], a bool mask
   * and a float64 old_logp (refused: BANDPO_WRONG_DTYPE naming it), then the layout of a good call. */
  {
    const int64_t shape23[2] = {2, 3}, shape2[1] = {2}, shape22[2] = {2, 2};
    bandpo_loss_arrays a;
    bandpo_array absent = {NULL, BANDPO_FLOAT32, -1, NULL, NULL};
    bandpo_loss_layout layout;
    a.logp = (bandpo_array){NULL, BANDPO_FLOAT32, 2, shape23, NULL};
    a.old_logp = (bandpo_array){NULL, BANDPO_FLOAT64, 2, shape23, NULL};
    a.advantages = (bandpo_array){NULL, BANDPO_FLOAT32, 1, shape2, NULL};
    a.mask = (bandpo_array){NULL, BANDPO_BOOL, 2, shape23, NULL};
    a.ref_logp = a.lower = a.upper = absent;
    CHECK(bandpo_loss_layout_of(&a, &o, &layout) == BANDPO_WRONG_DTYPE);
    CHECK(strstr(bandpo_last_error(), "old_logp has dtype float64 but logp has float32") != NULL);
    a.old_logp.dtype = BANDPO_FLOAT32;
    CHECK(bandpo_loss_layout_of(&a, &o, &layout) == BANDPO_OK);
    CHECK(layout.compute_dtype == BANDPO_FLOAT32 && layout.rows == 2 && layout.cols == 3 &&
          layout.advantages_per_row == 1 && layout.mask_kind == BANDPO_MASK_BOOL && layout.convert == 0);
    a.mask = (bandpo_array){NULL, BANDPO_OTHER_DTYPE, 2, shape23, "int32"};
    CHECK(bandpo_loss_layout_of(&a, &o, &layout) == BANDPO_WRONG_DTYPE);
    CHECK(strcmp(bandpo_last_error(), "mask must be bool, uint8 or floating point; got int32") == 0);
    a.mask = absent;
    a.advantages.ndim = 2;
    a.advantages.shape = shape22;
    CHECK(bandpo_loss_layout_of(&a, &o, &layout) == BANDPO_INVALID_ARGUMENT);
    CHECK(strstr(bandpo_last_error(), "advantages must have the shape of logp [2, 3]") != NULL);
    /* Mixed precision: a bfloat16 logp beside float32 values computes in float32, converting logp. */
    a.advantages = a.old_logp;
    a.logp.dtype = BANDPO_BFLOAT16;
    CHECK(bandpo_loss_layout_of(&a, &o, &layout) == BANDPO_OK);
    CHECK(layout.compute_dtype == BANDPO_FLOAT32 && layout.convert == 1);
    /* Bounds of an array: a non-float one is named. */
    a.logp.dtype = BANDPO_INT64;
    CHECK(bandpo_band_bounds_array(&a.logp, &o, NULL, NULL) == BANDPO_WRONG_DTYPE);
    CHECK(strcmp(bandpo_last_error(), "old_logp must be float32, float64, bfloat16 or float16; got int64") == 0);
  }

  /* The tables and choices by name. */
  {
    bandpo_table_row row;
    int code = -1;
    CHECK(bandpo_table_size(BANDPO_TABLE_DIVERGENCES) == BANDPO_NUM_DIVERGENCES);
    CHECK(bandpo_table_size(BANDPO_TABLE_METRICS) == BANDPO_NUM_METRICS);
    CHECK(bandpo_table_size((bandpo_table)42) == -1);
    CHECK(bandpo_table_get(BANDPO_TABLE_OPTIONS, 1, &row) == BANDPO_OK);
    CHECK(strcmp(row.name, "delta") == 0 && strcmp(row.type, "float") == 0 && strcmp(row.default_value, "0.05") == 0);
    CHECK(bandpo_table_get(BANDPO_TABLE_OPTIONS, 99, &row) == BANDPO_INVALID_ARGUMENT);
    CHECK(bandpo_parse_choice("divergence", "tv", &code) == BANDPO_OK && code == BANDPO_TV);
    CHECK(bandpo_parse_choice("agg", "sum", &code) == BANDPO_INVALID_ARGUMENT);
    CHECK(strstr(bandpo_last_error(), "agg must be one of 'token-mean'") != NULL);
    CHECK(bandpo_parse_choice("delta", "x", &code) == BANDPO_INVALID_ARGUMENT);
    o.delta = -1;
    CHECK(bandpo_check_options(&o) == BANDPO_INVALID_ARGUMENT);
    CHECK(strcmp(bandpo_last_error(), "delta must be in [1e-12, 1e+06]; got -1") == 0);
    bandpo_default_options(&o);
  }

  printf("%s (%d failures)\n", failures ? "FAILED" : "passed", failures);
  return failures ? 1 : 0;
}
