/* bandpo C ABI: Band (trust-region) ratio bounds, the BandPO loss and the lm_head's chunk steps (log-probs and
 * entropy from logits, and their gradient) on raw CPU buffers, for FFI (Rust,
 * Julia, ctypes, XLA custom calls). No C++ types cross this boundary and no exception leaves it: every
 * function returns a status, and bandpo_last_error() gives the message of the calling thread's last failure.
 *
 * Buffers are contiguous, row-major, of the dtype given; the semantics are those of torch.ops.bandpo
 * (README.md). Sizes are checked before any buffer is read: rows, cols and n must be >= 0 and each buffer's
 * byte count must fit in ptrdiff_t, computed without overflow; a size outside that is
 * BANDPO_INVALID_ARGUMENT naming it, never a wrapped size. Structs are passed by pointer; fill options with bandpo_default_options() and then set the
 * fields you need. A change of any struct's layout changes BANDPO_ABI_VERSION: compare it with
 * bandpo_abi_version() of the library actually loaded. */
#ifndef BANDPO_BANDPO_H
#define BANDPO_BANDPO_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BANDPO_ABI_VERSION 4 /* 4: bounds given to the loss; 3: the lm_head steps take structs; 2: arrays with shapes */

/* In C++ the enums get int as their fixed underlying type (the size and values they have in C): a C caller
 * may pass any int in them (an out-of-range code is BANDPO_INVALID_ARGUMENT), and only with a fixed
 * underlying type is such a value defined behaviour on the C++ side. */
#ifdef __cplusplus
#define BANDPO_ENUM_BASE : int
#else
#define BANDPO_ENUM_BASE
#endif

typedef enum bandpo_status BANDPO_ENUM_BASE {
  BANDPO_OK = 0,
  BANDPO_INVALID_ARGUMENT = 1, /* bad option, size, pointer, enum code, or a bad value at a valid position */
  BANDPO_INTERNAL_ERROR = 2,
  BANDPO_OUT_OF_MEMORY = 3, /* a workspace could not be allocated; the message gives its size */
  BANDPO_WRONG_DTYPE = 4    /* an argument of a dtype it may not have (Python's TypeError); the message names it */
} bandpo_status;

/* The loss and the bounds take the four float codes. The others describe a bandpo_array that is not one: a
 * mask (bool, uint8), or an argument of a dtype the rules refuse, named in the error (bandpo_array.dtype_name
 * for BANDPO_OTHER_DTYPE). */
typedef enum bandpo_dtype BANDPO_ENUM_BASE {
  BANDPO_FLOAT32 = 0,
  BANDPO_FLOAT64 = 1,
  BANDPO_BFLOAT16 = 2,
  BANDPO_FLOAT16 = 3,
  BANDPO_BOOL = 4,
  BANDPO_UINT8 = 5,
  BANDPO_INT64 = 6,
  BANDPO_OTHER_DTYPE = 7
} bandpo_dtype;
typedef enum bandpo_divergence BANDPO_ENUM_BASE {
  BANDPO_KL = 0,
  BANDPO_TV = 1,
  BANDPO_CHI2 = 2,
  BANDPO_CLIP = 3,
  BANDPO_DCPO = 4
} bandpo_divergence;
typedef enum bandpo_aggregation BANDPO_ENUM_BASE {
  BANDPO_TOKEN_MEAN = 0,
  BANDPO_SEQ_MEAN_TOKEN_SUM = 1,
  BANDPO_SEQ_MEAN_TOKEN_MEAN = 2,
  BANDPO_SEQ_MEAN_TOKEN_SUM_NORM = 3
} bandpo_aggregation;
typedef enum bandpo_kl_estimator BANDPO_ENUM_BASE { BANDPO_K1 = 0, BANDPO_K2 = 1, BANDPO_K3 = 2 } bandpo_kl_estimator;
#define BANDPO_NUM_DIVERGENCES 5
#define BANDPO_NUM_AGGREGATIONS 4
#define BANDPO_NUM_KL_ESTIMATORS 3
typedef enum bandpo_mask_kind BANDPO_ENUM_BASE {
  BANDPO_MASK_NONE = 0,
  BANDPO_MASK_BOOL = 1,
  BANDPO_MASK_VALUES = 2
} bandpo_mask_kind;

/* The op's options, named as in torch.ops.bandpo (README.md); their defaults are the op's, written by
 * bandpo_default_options(). dual_clip: +inf = off. normalizer: NaN = the aggregation's own denominator.
 * ratio_max may be +inf. (The fields mirror the rows of bandpo/tables.h; c_api.cpp fails to compile if not.) */
typedef struct bandpo_options {
  bandpo_divergence divergence;
  double delta;
  double eps_low, eps_high;
  int relax_high_p;
  double ratio_max;
  double dual_clip;
  bandpo_aggregation agg;
  double normalizer;
  double kl_coef;
  bandpo_kl_estimator kl_estimator;
} bandpo_options;

/* Inputs of the loss: [rows, cols] buffers of `dtype`; advantages [rows] when advantages_per_row;
 * mask: uint8 0/1 (BANDPO_MASK_BOOL) or weights of `dtype` (BANDPO_MASK_VALUES), may be NULL with
 * BANDPO_MASK_NONE; ref_logp may be NULL (then kl_coef must be 0). lower, upper: per-token ratio bounds given
 * by the caller (both or neither; NULL: the divergence's), lower in [0, 1] and upper in [1, ratio_max] at every
 * valid position; relax_high_p, ratio_max and dual_clip apply to them as to the divergence's. */
typedef struct bandpo_loss_inputs {
  bandpo_dtype dtype;
  int64_t rows, cols;
  const void* logp;
  const void* old_logp;
  const void* advantages;
  int advantages_per_row;
  const void* mask;
  bandpo_mask_kind mask_kind;
  const void* ref_logp;
  const void* lower;
  const void* upper;
} bandpo_loss_inputs;

#define BANDPO_NUM_METRICS \
  8 /* pg_clipfrac, clipfrac_upper, clipfrac_lower, dual_clipfrac, ppo_kl,
                                ratio_mean, ref_kl, pg_loss */

void bandpo_default_options(bandpo_options* options);

/* lower[i], upper[i] = the ratio bounds of old_logp[i], i < n. */
bandpo_status bandpo_band_bounds(bandpo_dtype dtype, const void* old_logp, int64_t n, const bandpo_options* options,
                                 void* lower, void* upper);

/* The aggregated loss, the metrics (BANDPO_NUM_METRICS floats) and, unless grad_logp is NULL, the
 * gradient of the loss w.r.t. logp (dtype of the inputs, rows * cols). */
bandpo_status bandpo_band_loss(const bandpo_loss_inputs* inputs, const bandpo_options* options, double* loss,
                               float* metrics, void* grad_logp);

/* ---- The lm_head's chunk steps, for an lm_head the caller computes in chunks of rows (one chunk of
 * hidden @ W^T + b at a time, by any GEMM) --------------------------------------------------------------------
 * The options (tables.h's logit rows; defaults from bandpo_default_logit_options): the target that marks a row
 * without a token, and the transform z = (logit_scale raw, then softcap tanh(. / softcap) when softcap > 0) /
 * temperature. temperature finite > 0, softcap finite >= 0 (0: none), logit_scale finite nonzero. */
typedef struct bandpo_logit_options {
  int64_t ignore_index;
  double logit_scale;
  double softcap;
  double temperature;
} bandpo_logit_options;
void bandpo_default_logit_options(bandpo_logit_options* options);

/* A chunk: `rows` rows of `vocab` float32 logits, row r at raw + r * row_stride (row_stride >= vocab), and each
 * row's target (in [0, vocab), or ignore_index). */
typedef struct bandpo_logit_chunk {
  int64_t rows, vocab, row_stride;
  const int64_t* target;
} bandpo_logit_chunk;

/* logp[r] = log softmax(z)[target[r]] (<= 0) and entropy[r] = -sum softmax(z) log softmax(z), in nats; rows
 * with target[r] == ignore_index give 0. A target outside [0, vocab) otherwise is BANDPO_INVALID_ARGUMENT
 * naming its index. A row with a NaN or +inf logit gives NaN; a logit of -inf has probability 0. */
bandpo_status bandpo_logit_stats(const float* raw, const bandpo_logit_chunk* chunk, const bandpo_logit_options* options,
                                 float* logp, float* entropy);

/* The backward's float32 [rows] inputs: grad_logp[r] = d loss / d logp[r], grad_entropy[r] = d loss /
 * d entropy[r] (either may be NULL: 0), and logp, entropy: bandpo_logit_stats's outputs for these rows, or both
 * NULL (given, each row is one pass over its logits, else three). */
typedef struct bandpo_logit_row_grads {
  const float* grad_logp;
  const float* grad_entropy;
  const float* logp;
  const float* entropy;
} bandpo_logit_row_grads;

/* The backward of bandpo_logit_stats: overwrites raw with d loss / d raw (ignored rows get 0). The caller then
 * forms d hidden = d raw @ W, d W += d raw^T @ hidden and d b += d raw's column sums. */
bandpo_status bandpo_logit_grad(float* raw, const bandpo_logit_chunk* chunk, const bandpo_logit_options* options,
                                const bandpo_logit_row_grads* grads);

/* ---- Arrays as a caller holds them: the argument rules of every face -------------------------------------
 * A contiguous row-major array: its data, dtype and shape (ndim sizes). Absent (an optional argument not
 * given): ndim = -1. dtype_name: the caller's name of a BANDPO_OTHER_DTYPE dtype ("int32") for the message,
 * or NULL. */
typedef struct bandpo_array {
  const void* data;
  bandpo_dtype dtype;
  int32_t ndim;
  const int64_t* shape;
  const char* dtype_name;
} bandpo_array;

/* The seven tensors of band_loss, in its argument order (lower and upper: the bounds a caller gives). */
typedef struct bandpo_loss_arrays {
  bandpo_array logp, old_logp, advantages, mask, ref_logp, lower, upper;
} bandpo_loss_arrays;

/* What bandpo_loss_layout decides. compute_dtype: the dtype the loss runs in, logp's, or float32 for a
 * bfloat16/float16 logp beside float32 old_logp, advantages or ref_logp (mixed precision: the caller converts
 * logp, and the gradient comes out in float32). convert: bit i (0 logp, 1 old_logp, 2 advantages, 3 mask,
 * 4 ref_logp, 5 lower, 6 upper) set when that array must be converted to compute_dtype before bandpo_band_loss (a float mask of
 * another dtype, logp under mixed precision). The rest fills bandpo_loss_inputs. */
typedef struct bandpo_loss_layout {
  bandpo_dtype compute_dtype;
  int64_t rows, cols;
  int advantages_per_row;
  bandpo_mask_kind mask_kind;
  int convert;
} bandpo_loss_layout;

/* The rules of band_loss's arguments, the same for the torch op, this ABI and bandpo.np (docs/design.md,
 * "Inputs"): BANDPO_WRONG_DTYPE or BANDPO_INVALID_ARGUMENT with a message naming the argument; the options
 * are checked too. Reads no data. */
bandpo_status bandpo_loss_layout_of(const bandpo_loss_arrays* arrays, const bandpo_options* options,
                                    bandpo_loss_layout* layout);

/* bandpo_band_bounds of an array: old_logp of any shape (a float dtype, else BANDPO_WRONG_DTYPE naming
 * old_logp); lower and upper of its shape and dtype. */
bandpo_status bandpo_band_bounds_array(const bandpo_array* old_logp, const bandpo_options* options, void* lower,
                                       void* upper);

/* The lm_head chunk steps' argument rules over arrays (`op` starts each message): raw [rows, vocab] float32,
 * its strides in elements (columns adjacent; rows apart by >= vocab), target [rows] int64. Fills the chunk
 * that bandpo_logit_stats / bandpo_logit_grad take (its target: target's data). */
bandpo_status bandpo_logit_chunk_layout(const char* op, const bandpo_array* raw, int64_t raw_row_stride,
                                        int64_t raw_col_stride, const bandpo_array* target, bandpo_logit_chunk* chunk);
/* An optional float32 [rows] argument of bandpo_logit_grad (grad_logp, grad_entropy, logp, entropy; absent:
 * ndim -1), checked with a message naming it. */
bandpo_status bandpo_check_row_values(const char* op, const char* name, const bandpo_array* values, int64_t rows);

/* Checks options as every face does (a message naming the option). */
bandpo_status bandpo_check_options(const bandpo_options* options);
bandpo_status bandpo_check_logit_options(const bandpo_logit_options* options);

/* ---- The tables of bandpo/tables.h, for faces that read options by name (the Python package does) ---------
 * Rows in order (a choice's index is its code). Every string is static. */
typedef enum bandpo_table BANDPO_ENUM_BASE {
  BANDPO_TABLE_DIVERGENCES = 0,
  BANDPO_TABLE_AGGREGATIONS = 1,
  BANDPO_TABLE_KL_ESTIMATORS = 2,
  BANDPO_TABLE_METRICS = 3,
  BANDPO_TABLE_OPTIONS = 4,  /* band_bounds', band_loss's further ones, the lm_head steps' (group 0 / 1 / 2) */
  BANDPO_TABLE_CONSTANTS = 5 /* constants of the per-token math that Python applies too */
} bandpo_table;
typedef struct bandpo_table_row {
  const char* name;          /* the choice, metric, option or constant (constants: their Python name) */
  const char* type;          /* options: "float", "float?", "bool", "int" or "str"; else "" */
  const char* default_value; /* options: the default as a schema / Python literal ("0.05", "\"kl\"", "None") */
  const char* scope;         /* options: "config" (a BandConfig field) or "call" (per call, e.g. normalizer) */
  const char* requirement;   /* options: what a valid value is ("in [1e-12, 1e+06]"); "" where any parse is */
  int group;                 /* options: 0 band_bounds', 1 band_loss's further options, 2 the lm_head steps' */
  double value;              /* constants */
} bandpo_table_row;
/* Rows of a table; -1 for a code that is no table. */
int bandpo_table_size(bandpo_table table);
bandpo_status bandpo_table_get(bandpo_table table, int index, bandpo_table_row* row);
/* The code of a choice option's value: option "divergence", "agg" or "kl_estimator", value its name; *code =
 * the value's index in its table, or BANDPO_INVALID_ARGUMENT naming the option and its choices ("divergence
 * must be one of 'kl', ...; got 'x'"). */
bandpo_status bandpo_parse_choice(const char* option, const char* value, int* code);

/* Message of this thread's last failed call ("" if none). Valid until this thread's next bandpo call. */
const char* bandpo_last_error(void);

/* "MAJOR.MINOR.PATCH" of the library actually loaded; BANDPO_ABI_VERSION of the header it was built with. */
const char* bandpo_version(void);
int bandpo_abi_version(void);

/* Threads used by the CPU kernels of this thread's later calls (0 = one per hardware thread, the default). */
void bandpo_set_num_threads(int num_threads);

/* Float Band-KL tables built so far in this process, on the CPU and on every device. A table is built on the
 * first call with a delta and kept (the CPU keeps the last 4 deltas; each device its first 8, beyond which and
 * during CUDA graph capture each call builds one): with a fixed delta this stays where the first call left it. */
int64_t bandpo_kl_table_builds(void);

#ifdef __cplusplus
}
#endif

#endif /* BANDPO_BANDPO_H */
