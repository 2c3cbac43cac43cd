// The C ABI (bandpo/bandpo.h) over the C++ CPU API: enum/struct translation, and every exception turned
// into a status plus a thread-local message.
#include "bandpo/bandpo.h"

#include <exception>
#include <new>
#include <stdexcept>
#include <string>

#include "bandpo/cpu.h"
#include "bandpo/errors.h"

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
  } catch (const bandpo::out_of_memory& e) {
    last_error = e.what();
    return BANDPO_OUT_OF_MEMORY;
  } catch (const std::bad_alloc&) {
    last_error = "out of memory";
    return BANDPO_OUT_OF_MEMORY;
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

// A C field into its C++ option, by the option's C++ type (tables.h); enum codes are range-checked.
template <class CValue>
void from_c(CValue v, double& field, const char*) { field = static_cast<double>(v); }
template <class CValue>
void from_c(CValue v, bool& field, const char*) { field = v != 0; }
template <class CValue>
void from_c(CValue v, bandpo::Divergence& field, const char* name) {
  field = checked_enum<bandpo::Divergence>(v, bandpo::kNumDivergences, name);
}
template <class CValue>
void from_c(CValue v, bandpo::Aggregation& field, const char* name) {
  field = checked_enum<bandpo::Aggregation>(v, bandpo::kNumAggregations, name);
}
template <class CValue>
void from_c(CValue v, bandpo::KlEstimator& field, const char* name) {
  field = checked_enum<bandpo::KlEstimator>(v, bandpo::kNumKlEstimators, name);
}

// The C struct has one field per option, of the option's name (a missing one fails to compile here).
#define BANDPO_BOUND_FROM_C(name, ...) from_c(o->name, l.bounds.name, "options." #name);
#define BANDPO_LOSS_FROM_C(name, ...) from_c(o->name, l.name, "options." #name);
#define BANDPO_BOUND_TO_C(name, ...) o->name = static_cast<decltype(o->name)>(d.bounds.name);
#define BANDPO_LOSS_TO_C(name, ...) o->name = static_cast<decltype(o->name)>(d.name);

bandpo::LossOptions loss_options(const bandpo_options* o) {
  if (!o) throw std::invalid_argument("options is NULL (fill it with bandpo_default_options)");
  bandpo::LossOptions l;
  BANDPO_BOUND_OPTION_TABLE(BANDPO_BOUND_FROM_C)
  BANDPO_LOSS_OPTION_TABLE(BANDPO_LOSS_FROM_C)
  return l;
}

// The C enums are the C++ codes (tables.h), written out for C users.
#define BANDPO_SAME_CODE(cpp, c) static_assert(static_cast<int>(cpp) == c, #c " differs from the C++ code");
#define BANDPO_SAME_DIVERGENCE(value, name, c) BANDPO_SAME_CODE(bandpo::Divergence::value, c)
#define BANDPO_SAME_AGGREGATION(value, name, c) BANDPO_SAME_CODE(bandpo::Aggregation::value, c)
#define BANDPO_SAME_KL_ESTIMATOR(value, name, c) BANDPO_SAME_CODE(bandpo::KlEstimator::value, c)
BANDPO_DIVERGENCE_TABLE(BANDPO_SAME_DIVERGENCE)
BANDPO_AGGREGATION_TABLE(BANDPO_SAME_AGGREGATION)
BANDPO_KL_ESTIMATOR_TABLE(BANDPO_SAME_KL_ESTIMATOR)
BANDPO_SAME_CODE(bandpo::kNumDivergences, BANDPO_NUM_DIVERGENCES)
BANDPO_SAME_CODE(bandpo::kNumAggregations, BANDPO_NUM_AGGREGATIONS)
BANDPO_SAME_CODE(bandpo::kNumKlEstimators, BANDPO_NUM_KL_ESTIMATORS)
BANDPO_SAME_CODE(bandpo::kNumMetrics, BANDPO_NUM_METRICS)

bandpo::ParallelFor parallel_for() {
  return num_threads > 0 ? bandpo::thread_pool_parallel_for(num_threads) : bandpo::ParallelFor();
}

}  // namespace

extern "C" {

void bandpo_default_options(bandpo_options* o) {
  if (!o) return;
  const bandpo::LossOptions d;
  BANDPO_BOUND_OPTION_TABLE(BANDPO_BOUND_TO_C)
  BANDPO_LOSS_OPTION_TABLE(BANDPO_LOSS_TO_C)
}

bandpo_status bandpo_band_bounds(bandpo_dtype dtype, const void* old_logp, int64_t n, const bandpo_options* options,
                                 void* lower, void* upper) {
  return guarded([&] {
    // The core checks the dtype code, n, its byte size and the pointers (checks.cpp).
    bandpo::band_bounds_cpu(static_cast<bandpo::DType>(dtype), old_logp, n, loss_options(options).bounds, lower,
                            upper, parallel_for());
  });
}

bandpo_status bandpo_band_loss(const bandpo_loss_inputs* in, const bandpo_options* options, double* loss,
                               float* metrics, void* grad_logp) {
  return guarded([&] {
    if (!in) throw std::invalid_argument("inputs is NULL");
    if (!loss || !metrics) throw std::invalid_argument("loss and metrics must not be NULL");
    bandpo::LossInputs li;
    // The core checks the dtype and mask codes, the sizes (without overflow) and the pointers (checks.cpp).
    li.dtype = static_cast<bandpo::DType>(in->dtype);
    li.rows = in->rows;
    li.cols = in->cols;
    li.logp = in->logp;
    li.old_logp = in->old_logp;
    li.advantages = in->advantages;
    li.advantages_per_row = in->advantages_per_row != 0;
    li.mask = in->mask;
    li.mask_kind = static_cast<bandpo::MaskKind>(in->mask_kind);
    li.ref_logp = in->ref_logp;
    const bandpo::LossResult r = bandpo::band_loss_cpu(li, loss_options(options), grad_logp, parallel_for());
    *loss = r.loss;
    for (int m = 0; m < BANDPO_NUM_METRICS; ++m) metrics[m] = r.metrics[m];
  });
}

bandpo_status bandpo_logit_stats(const float* raw, int64_t rows, int64_t vocab, int64_t row_stride,
                                 const int64_t* target, int64_t ignore_index, double logit_scale, double softcap,
                                 double temperature, float* logp, float* entropy) {
  return guarded([&] {
    // The core checks the sizes, pointers, options and targets (checks.cpp check_logit_chunk).
    bandpo::logit_stats_cpu(raw, rows, vocab, row_stride, target, ignore_index, logit_scale, softcap, temperature,
                            logp, entropy, parallel_for());
  });
}

bandpo_status bandpo_logit_grad(float* raw, int64_t rows, int64_t vocab, int64_t row_stride, const int64_t* target,
                                int64_t ignore_index, double logit_scale, double softcap, double temperature,
                                const float* grad_logp, const float* grad_entropy, const float* logp,
                                const float* entropy) {
  return guarded([&] {
    bandpo::logit_grad_cpu(raw, rows, vocab, row_stride, target, ignore_index, logit_scale, softcap, temperature,
                           grad_logp, grad_entropy, logp, entropy, parallel_for());
  });
}

const char* bandpo_last_error(void) { return last_error.c_str(); }
const char* bandpo_version(void) { return bandpo::version(); }
int bandpo_abi_version(void) { return BANDPO_ABI_VERSION; }
void bandpo_set_num_threads(int n) { num_threads = n > 0 ? n : 0; }

}  // extern "C"
