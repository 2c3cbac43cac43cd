// The C ABI (bandpo/bandpo.h) over the C++ CPU API: enum/struct translation, and every exception turned
// into a status plus a thread-local message.
#include "bandpo/bandpo.h"

#include <exception>
#include <stdexcept>
#include <string>

#include "bandpo/cpu.h"

namespace {

thread_local std::string last_error;
thread_local int num_threads = 0;

template <class F>
bandpo_status guarded(F&& f) {
  try {
    f();
    last_error.clear();
    return BANDPO_OK;
  } catch (const std::invalid_argument& e) {
    last_error = e.what();
    return BANDPO_INVALID_ARGUMENT;
  } catch (const std::exception& e) {
    last_error = e.what();
    return BANDPO_INTERNAL_ERROR;
  } catch (...) {
    last_error = "unknown error";
    return BANDPO_INTERNAL_ERROR;
  }
}

template <class E>
E checked_enum(int value, int count, const char* what) {
  if (value < 0 || value >= count) {
    throw std::invalid_argument(std::string(what) + " = " + std::to_string(value) + " is not a valid value");
  }
  return static_cast<E>(value);
}

bandpo::BoundOptions bound_options(const bandpo_options* o) {
  if (!o) throw std::invalid_argument("options is NULL (fill it with bandpo_default_options)");
  bandpo::BoundOptions b;
  b.divergence = checked_enum<bandpo::Divergence>(o->divergence, 4, "options.divergence");
  b.delta = o->delta;
  b.eps_low = o->eps_low;
  b.eps_high = o->eps_high;
  b.relax_high_p = o->relax_high_p != 0;
  b.ratio_max = o->ratio_max;
  return b;
}

bandpo::LossOptions loss_options(const bandpo_options* o) {
  bandpo::LossOptions l;
  l.bounds = bound_options(o);
  l.dual_clip = o->dual_clip;
  l.agg = checked_enum<bandpo::Aggregation>(o->agg, 4, "options.agg");
  l.normalizer = o->normalizer;
  l.kl_coef = o->kl_coef;
  l.kl_estimator = checked_enum<bandpo::KlEstimator>(o->kl_estimator, 3, "options.kl_estimator");
  return l;
}

bandpo::ParallelFor parallel_for() {
  return num_threads > 0 ? bandpo::thread_pool_parallel_for(num_threads) : bandpo::ParallelFor();
}

}  // namespace

extern "C" {

void bandpo_default_options(bandpo_options* o) {
  if (!o) return;
  const bandpo::LossOptions d;
  o->divergence = static_cast<bandpo_divergence>(d.bounds.divergence);
  o->delta = d.bounds.delta;
  o->eps_low = d.bounds.eps_low;
  o->eps_high = d.bounds.eps_high;
  o->relax_high_p = d.bounds.relax_high_p ? 1 : 0;
  o->ratio_max = d.bounds.ratio_max;
  o->dual_clip = d.dual_clip;
  o->agg = static_cast<bandpo_aggregation>(d.agg);
  o->normalizer = d.normalizer;
  o->kl_coef = d.kl_coef;
  o->kl_estimator = static_cast<bandpo_kl_estimator>(d.kl_estimator);
}

bandpo_status bandpo_band_bounds(bandpo_dtype dtype, const void* old_logp, int64_t n, const bandpo_options* options,
                                 void* lower, void* upper) {
  return guarded([&] {
    const auto dt = checked_enum<bandpo::DType>(dtype, 4, "dtype");
    if (n < 0) throw std::invalid_argument("n = " + std::to_string(n) + " must be >= 0");
    if (n > 0 && (!old_logp || !lower || !upper)) throw std::invalid_argument("old_logp, lower and upper must not be NULL");
    bandpo::band_bounds_cpu(dt, old_logp, n, bound_options(options), lower, upper, parallel_for());
  });
}

bandpo_status bandpo_band_loss(const bandpo_loss_inputs* in, const bandpo_options* options, double* loss,
                               float* metrics, void* grad_logp) {
  return guarded([&] {
    if (!in) throw std::invalid_argument("inputs is NULL");
    if (!loss || !metrics) throw std::invalid_argument("loss and metrics must not be NULL");
    bandpo::LossInputs li;
    li.dtype = checked_enum<bandpo::DType>(in->dtype, 4, "inputs.dtype");
    li.rows = in->rows;
    li.cols = in->cols;
    li.logp = in->logp;
    li.old_logp = in->old_logp;
    li.advantages = in->advantages;
    li.advantages_per_row = in->advantages_per_row != 0;
    li.mask = in->mask;
    li.mask_kind = checked_enum<bandpo::MaskKind>(in->mask_kind, 3, "inputs.mask_kind");
    li.ref_logp = in->ref_logp;
    const bandpo::LossResult r = bandpo::band_loss_cpu(li, loss_options(options), grad_logp, parallel_for());
    *loss = r.loss;
    for (int m = 0; m < BANDPO_NUM_METRICS; ++m) metrics[m] = r.metrics[m];
  });
}

const char* bandpo_last_error(void) { return last_error.c_str(); }
const char* bandpo_version(void) { return bandpo::version(); }
int bandpo_abi_version(void) { return BANDPO_ABI_VERSION; }
void bandpo_set_num_threads(int n) { num_threads = n > 0 ? n : 0; }

}  // extern "C"
