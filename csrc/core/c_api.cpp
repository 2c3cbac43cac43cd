// The C ABI (bandpo/bandpo.h) over the C++ CPU API: enum/struct translation, and every exception turned
// into a status plus a thread-local message.
#include "bandpo/bandpo.h"

#include <exception>
#include <new>
#include <stdexcept>
#include <string>

#include <cstddef>
#include <type_traits>

#include "bandpo/arrays.h"
#include "bandpo/cpu.h"
#include "bandpo/errors.h"
#include "kl_table_cache.h"

namespace {

thread_local std::string last_error;
thread_local int num_threads = 0;

template <class F>
bandpo_status guarded(F&& f) {
  try {
    f();
    last_error.clear();
    return BANDPO_OK;
  } catch (const bandpo::dtype_error& e) {
    last_error = e.what();
    return BANDPO_WRONG_DTYPE;
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
void from_c(CValue v, double& field, const char*) {
  field = static_cast<double>(v);
}
template <class CValue>
void from_c(CValue v, int64_t& field, const char*) {
  field = static_cast<int64_t>(v);
}
template <class CValue>
void from_c(CValue v, bool& field, const char*) {
  field = v != 0;
}
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

#define BANDPO_LOGIT_FROM_C(name, ...) from_c(o->name, l.name, "options." #name);
#define BANDPO_LOGIT_TO_C(name, ...) o->name = static_cast<decltype(o->name)>(d.name);
bandpo::LogitOptions logit_options(const bandpo_logit_options* o) {
  if (!o) throw std::invalid_argument("options is NULL (fill it with bandpo_default_logit_options)");
  bandpo::LogitOptions l;
  BANDPO_LOGIT_OPTION_TABLE(BANDPO_LOGIT_FROM_C)
  return l;
}

bandpo::LogitChunk logit_chunk(const bandpo_logit_chunk* c) {
  if (!c) throw std::invalid_argument("chunk is NULL");
  return bandpo::LogitChunk{c->rows, c->vocab, c->row_stride, c->target};
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

// The struct's fields are in the rows' order (the Python face builds it from the rows).
#define BANDPO_OFFSET_OF(name, ...) offsetof(bandpo_options, name),
constexpr size_t kOptionOffsets[] = {BANDPO_BOUND_OPTION_TABLE(BANDPO_OFFSET_OF)
                                         BANDPO_LOSS_OPTION_TABLE(BANDPO_OFFSET_OF)};
constexpr bool offsets_ascend() {
  for (size_t i = 1; i < sizeof(kOptionOffsets) / sizeof(kOptionOffsets[0]); ++i)
    if (kOptionOffsets[i] <= kOptionOffsets[i - 1]) return false;
  return true;
}
static_assert(offsets_ascend(), "bandpo_options' fields must follow the order of tables.h's rows");
#define BANDPO_LOGIT_OFFSET_OF(name, ...) offsetof(bandpo_logit_options, name),
constexpr size_t kLogitOptionOffsets[] = {BANDPO_LOGIT_OPTION_TABLE(BANDPO_LOGIT_OFFSET_OF)};
static_assert(kLogitOptionOffsets[0] == 0 && kLogitOptionOffsets[1] < kLogitOptionOffsets[2] &&
                  kLogitOptionOffsets[2] < kLogitOptionOffsets[3],
              "bandpo_logit_options' fields must follow the order of tables.h's rows");

// A C array description as the core's (bandpo/arrays.h); absent for ndim < 0.
bandpo::ArrayDesc describe(const bandpo_array& a, const char* name) {
  bandpo::ArrayDesc d;
  if (a.ndim < 0) return d;
  d.present = true;
  d.type = checked_enum<bandpo::ElementType>(a.dtype, static_cast<int>(bandpo::ElementType::other) + 1,
                                             (std::string(name) + ".dtype").c_str());
  d.ndim = a.ndim;
  d.shape = a.shape;
  d.type_name = a.dtype_name;
  return d;
}

bandpo::ParallelFor parallel_for() {
  return num_threads > 0 ? bandpo::thread_pool_parallel_for(num_threads) : bandpo::ParallelFor();
}

// ---- the tables (bandpo_table_get) ----
#define BANDPO_CHOICE_ROW(value, name, ...) {name, "", "", "", "", 0, 0.0},
#define BANDPO_METRIC_ROW(value, name) {name, "", "", "", "", 0, 0.0},
#define BANDPO_CONSTANT_ROW(cpp, python, value) {#python, "", "", "", "", 0, value},
#define BANDPO_OPTION_ROW0(name, ctype, type, schema_default, cpp_default, scope, valid, requirement) \
  {#name, type, schema_default, #scope, requirement, 0, 0.0},
#define BANDPO_OPTION_ROW1(name, ctype, type, schema_default, cpp_default, scope, valid, requirement) \
  {#name, type, schema_default, #scope, requirement, 1, 0.0},
#define BANDPO_OPTION_ROW2(name, ctype, type, schema_default, cpp_default, scope, valid, requirement) \
  {#name, type, schema_default, #scope, requirement, 2, 0.0},
const bandpo_table_row kDivergenceRows[] = {BANDPO_DIVERGENCE_TABLE(BANDPO_CHOICE_ROW)};
const bandpo_table_row kAggregationRows[] = {BANDPO_AGGREGATION_TABLE(BANDPO_CHOICE_ROW)};
const bandpo_table_row kKlEstimatorRows[] = {BANDPO_KL_ESTIMATOR_TABLE(BANDPO_CHOICE_ROW)};
const bandpo_table_row kMetricRows[] = {BANDPO_METRIC_TABLE(BANDPO_METRIC_ROW)};
const bandpo_table_row kOptionRows[] = {BANDPO_BOUND_OPTION_TABLE(BANDPO_OPTION_ROW0) BANDPO_LOSS_OPTION_TABLE(
    BANDPO_OPTION_ROW1) BANDPO_LOGIT_OPTION_TABLE(BANDPO_OPTION_ROW2)};
const bandpo_table_row kConstantRows[] = {BANDPO_CONSTANT_TABLE(BANDPO_CONSTANT_ROW)};

struct Table {
  const bandpo_table_row* rows;
  int size;
};
template <size_t N>
constexpr Table table_of(const bandpo_table_row (&rows)[N]) {
  return Table{rows, static_cast<int>(N)};
}

Table table(int code) {
  switch (code) {
    case BANDPO_TABLE_DIVERGENCES:
      return table_of(kDivergenceRows);
    case BANDPO_TABLE_AGGREGATIONS:
      return table_of(kAggregationRows);
    case BANDPO_TABLE_KL_ESTIMATORS:
      return table_of(kKlEstimatorRows);
    case BANDPO_TABLE_METRICS:
      return table_of(kMetricRows);
    case BANDPO_TABLE_OPTIONS:
      return table_of(kOptionRows);
    case BANDPO_TABLE_CONSTANTS:
      return table_of(kConstantRows);
    default:
      return Table{nullptr, -1};
  }
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
    bandpo::band_bounds_cpu(static_cast<bandpo::DType>(dtype), old_logp, n, loss_options(options).bounds, lower, upper,
                            parallel_for());
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
    li.lower = in->lower;
    li.upper = in->upper;
    const bandpo::LossResult r = bandpo::band_loss_cpu(li, loss_options(options), grad_logp, parallel_for());
    *loss = r.loss;
    for (int m = 0; m < BANDPO_NUM_METRICS; ++m) metrics[m] = r.metrics[m];
  });
}

void bandpo_default_logit_options(bandpo_logit_options* o) {
  if (!o) return;
  const bandpo::LogitOptions d;
  BANDPO_LOGIT_OPTION_TABLE(BANDPO_LOGIT_TO_C)
}

bandpo_status bandpo_logit_stats(const float* raw, const bandpo_logit_chunk* chunk, const bandpo_logit_options* options,
                                 float* logp, float* entropy) {
  return guarded([&] {
    // The core checks the sizes, pointers, options and targets (checks.cpp check_logit_chunk).
    bandpo::logit_stats_cpu(raw, logit_chunk(chunk), logit_options(options), logp, entropy, parallel_for());
  });
}

bandpo_status bandpo_logit_grad(float* raw, const bandpo_logit_chunk* chunk, const bandpo_logit_options* options,
                                const bandpo_logit_row_grads* grads) {
  return guarded([&] {
    if (!grads) throw std::invalid_argument("grads is NULL (a struct of four pointers, each may be NULL)");
    const bandpo::LogitRowGrads g{grads->grad_logp, grads->grad_entropy, grads->logp, grads->entropy};
    bandpo::logit_grad_cpu(raw, logit_chunk(chunk), logit_options(options), g, parallel_for());
  });
}

bandpo_status bandpo_loss_layout_of(const bandpo_loss_arrays* arrays, const bandpo_options* options,
                                    bandpo_loss_layout* layout) {
  return guarded([&] {
    if (!arrays || !layout) throw std::invalid_argument("arrays and layout must not be null");
    const bandpo::LossArrays a{describe(arrays->logp, "logp"),
                               describe(arrays->old_logp, "old_logp"),
                               describe(arrays->advantages, "advantages"),
                               describe(arrays->mask, "mask"),
                               describe(arrays->ref_logp, "ref_logp"),
                               describe(arrays->lower, "lower"),
                               describe(arrays->upper, "upper")};
    const bandpo::LossLayout l = bandpo::loss_layout(a, loss_options(options));
    layout->compute_dtype = static_cast<bandpo_dtype>(l.compute);
    layout->rows = l.rows;
    layout->cols = l.cols;
    layout->advantages_per_row = l.advantages_per_row ? 1 : 0;
    layout->mask_kind = static_cast<bandpo_mask_kind>(l.mask_kind);
    layout->convert = static_cast<int>(l.convert);
  });
}

bandpo_status bandpo_band_bounds_array(const bandpo_array* old_logp, const bandpo_options* options, void* lower,
                                       void* upper) {
  return guarded([&] {
    if (!old_logp) throw std::invalid_argument("old_logp must not be null");
    const bandpo::ArrayDesc d = describe(*old_logp, "old_logp");
    if (!d.present) throw std::invalid_argument("old_logp is required");
    const bandpo::DType dtype = bandpo::float_dtype(d, "old_logp");
    const int64_t n = bandpo::element_count(d, "old_logp");
    bandpo::band_bounds_cpu(dtype, old_logp->data, n, loss_options(options).bounds, lower, upper, parallel_for());
  });
}

bandpo_status bandpo_logit_chunk_layout(const char* op, const bandpo_array* raw, int64_t raw_row_stride,
                                        int64_t raw_col_stride, const bandpo_array* target, bandpo_logit_chunk* chunk) {
  return guarded([&] {
    if (!op || !raw || !target || !chunk) throw std::invalid_argument("op, raw, target and chunk must not be null");
    const bandpo::LogitChunkLayout l = bandpo::logit_chunk_layout(op, describe(*raw, "raw"), raw_row_stride,
                                                                  raw_col_stride, describe(*target, "target"), false);
    *chunk = bandpo_logit_chunk{l.rows, l.vocab, l.row_stride, static_cast<const int64_t*>(target->data)};
  });
}

bandpo_status bandpo_check_row_values(const char* op, const char* name, const bandpo_array* values, int64_t rows) {
  return guarded([&] {
    if (!op || !name || !values) throw std::invalid_argument("op, name and values must not be null");
    bandpo::check_row_values(op, name, describe(*values, name), rows);
  });
}

bandpo_status bandpo_check_options(const bandpo_options* options) {
  return guarded([&] { bandpo::validate(loss_options(options)); });
}

bandpo_status bandpo_check_logit_options(const bandpo_logit_options* options) {
  return guarded([&] { bandpo::validate(logit_options(options)); });
}

int bandpo_table_size(bandpo_table t) { return table(static_cast<int>(t)).size; }

bandpo_status bandpo_table_get(bandpo_table t, int index, bandpo_table_row* row) {
  return guarded([&] {
    const Table tab = table(static_cast<int>(t));
    if (tab.size < 0) throw std::invalid_argument("table = " + std::to_string(static_cast<int>(t)) + " is not a table");
    if (index < 0 || index >= tab.size)
      throw std::invalid_argument("index = " + std::to_string(index) + " is not in [0, " + std::to_string(tab.size) +
                                  ")");
    if (!row) throw std::invalid_argument("row must not be null");
    *row = tab.rows[index];
  });
}

bandpo_status bandpo_parse_choice(const char* option, const char* value, int* code) {
  return guarded([&] {
    if (!option || !value || !code) throw std::invalid_argument("option, value and code must not be null");
    bandpo::LossOptions o;
    bool found = false;
    bandpo::for_each_option(o, [&](const bandpo::OptionInfo& info, auto& field) {
      using Field = std::decay_t<decltype(field)>;
      if constexpr (!std::is_same_v<Field, double> && !std::is_same_v<Field, bool>) {
        if (std::string(info.name) == option) {
          bandpo::parse_choice(value, field);
          *code = static_cast<int>(field);
          found = true;
        }
      }
    });
    if (!found) throw std::invalid_argument(std::string("option = '") + option + "' is not an option with choices");
  });
}

const char* bandpo_last_error(void) { return last_error.c_str(); }
const char* bandpo_version(void) { return bandpo::version(); }
int bandpo_abi_version(void) { return BANDPO_ABI_VERSION; }
void bandpo_set_num_threads(int n) { num_threads = n > 0 ? n : 0; }
int64_t bandpo_kl_table_builds(void) { return bandpo::detail::kl_table_builds(); }

}  // extern "C"
