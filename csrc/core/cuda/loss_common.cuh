// What the forward (loss_forward.cu) and the backward (loss_backward.cu) of band_loss on the device share: the
// inputs as the kernels read them, a lane's chunk of tokens, the lanes' running sums, the workspace's layout and
// the checks of every launch. (Two files: the kernels of all dtypes and divergences take minutes to compile, and
// the two halves now compile side by side.)
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>

#include "../checks.h"
#include "../dispatch.h"
#include "bandpo/cuda.h"
#include "bandpo/token_loss.h"
#include "common.cuh"
#include "kl_table.cuh"

namespace bandpo {
namespace cuda {
namespace detail {
namespace {

template <class T>
struct DeviceInputs {
  const T* logp;
  const T* old_logp;
  const T* advantages;
  const T* ref_logp;  // aliases logp when absent (never read then: has_ref is false)
  const void* mask;
  const T* lower;  // bounds given by the caller (has_bounds), else null
  const T* upper;
  bool has_ref;  // without a reference policy the KL terms are 0: skipped, saving an expm1 per token
  bool has_bounds;
  MaskKind mask_kind;
  bool advantages_per_row;
  bool aligned;  // every buffer 16-byte aligned and every unit starts at a whole chunk
};

template <class T>
DeviceInputs<T> device_inputs(const LossInputs& in, const Tiling& tiling) {
  DeviceInputs<T> d;
  d.logp = static_cast<const T*>(in.logp);
  d.old_logp = static_cast<const T*>(in.old_logp);
  d.advantages = static_cast<const T*>(in.advantages);
  d.ref_logp = in.ref_logp ? static_cast<const T*>(in.ref_logp) : d.logp;
  d.mask = in.mask;
  d.has_ref = in.ref_logp != nullptr;
  d.lower = static_cast<const T*>(in.lower);
  d.upper = static_cast<const T*>(in.upper);
  d.has_bounds = in.has_given_bounds();
  d.mask_kind = in.mask_kind;
  d.advantages_per_row = in.advantages_per_row;
  constexpr int N = kChunk<T>;
  // Units start at multiples of the tile (itself a multiple of N) within a row: rows must keep that.
  bool aligned = (tiling.rows <= 1 || tiling.cols % N == 0) && is_aligned(in.logp, 16) && is_aligned(in.old_logp, 16) &&
                 is_aligned(d.ref_logp, 16);
  if (!in.advantages_per_row) aligned = aligned && is_aligned(in.advantages, 16);
  if (d.has_bounds) aligned = aligned && is_aligned(in.lower, 16) && is_aligned(in.upper, 16);
  if (in.mask_kind == MaskKind::boolean) aligned = aligned && is_aligned(in.mask, N);
  if (in.mask_kind == MaskKind::values) aligned = aligned && is_aligned(in.mask, 16);
  d.aligned = aligned;
  return d;
}

// One lane's chunk of tokens [i, i + N), converted to the compute type. w is the mask weight, 0 past `end`;
// lower and upper the given bounds (read where has_bounds).
template <class T, class C, int N>
struct Chunk {
  C logp[N], old_logp[N], advantage[N], ref[N], w[N], lower[N], upper[N];
};

template <class T, class C = typename ComputeType<T>::type, int N = kChunk<T>>
__device__ __forceinline__ Chunk<T, C, N> read_chunk(const DeviceInputs<T>& in, int64_t i, int64_t end,
                                                     C row_advantage) {
  Chunk<T, C, N> c;
  T raw[N];
  load_chunk(in.logp, i, end, in.aligned, raw);
#pragma unroll
  for (int j = 0; j < N; ++j) c.logp[j] = load<C>(raw, j);
  load_chunk(in.old_logp, i, end, in.aligned, raw);
#pragma unroll
  for (int j = 0; j < N; ++j) c.old_logp[j] = load<C>(raw, j);
  if (in.has_ref) {
    load_chunk(in.ref_logp, i, end, in.aligned, raw);
#pragma unroll
    for (int j = 0; j < N; ++j) c.ref[j] = load<C>(raw, j);
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) c.ref[j] = c.logp[j];
  }
  if (in.advantages_per_row) {
#pragma unroll
    for (int j = 0; j < N; ++j) c.advantage[j] = row_advantage;
  } else {
    load_chunk(in.advantages, i, end, in.aligned, raw);
#pragma unroll
    for (int j = 0; j < N; ++j) c.advantage[j] = load<C>(raw, j);
  }
  if (in.has_bounds) {
    load_chunk(in.lower, i, end, in.aligned, raw);
#pragma unroll
    for (int j = 0; j < N; ++j) c.lower[j] = load<C>(raw, j);
    load_chunk(in.upper, i, end, in.aligned, raw);
#pragma unroll
    for (int j = 0; j < N; ++j) c.upper[j] = load<C>(raw, j);
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) c.lower[j] = c.upper[j] = C(1);  // never read
  }
  if (in.mask_kind == MaskKind::values) {
    load_chunk(static_cast<const T*>(in.mask), i, end, in.aligned, raw);
#pragma unroll
    for (int j = 0; j < N; ++j) c.w[j] = load<C>(raw, j);
  } else if (in.mask_kind == MaskKind::boolean) {
    uint8_t bits[N];
    load_chunk(static_cast<const uint8_t*>(in.mask), i, end, in.aligned, bits);
#pragma unroll
    for (int j = 0; j < N; ++j) c.w[j] = bits[j] != 0 ? C(1) : C(0);
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) c.w[j] = i + j < end ? C(1) : C(0);
  }
  return c;
}

// Per-lane running sums in the compute type (at most tile / 32 tokens each), widened to double for the
// warp and unit reductions.
template <class C>
struct LaneSums {
#define BANDPO_DECLARE(kind, name) BANDPO_SEGMENT_FIELD_TYPE_##kind(C) name = 0;
  BANDPO_SEGMENT_SUM_FIELDS(BANDPO_DECLARE)
#undef BANDPO_DECLARE

  __device__ SegmentSums widen() const {
    SegmentSums s;
#define BANDPO_WIDEN(kind, name) s.name = name;
    BANDPO_SEGMENT_SUM_FIELDS(BANDPO_WIDEN)
#undef BANDPO_WIDEN
    return s;
  }
};

// The call's reduction units: one row per unit-row where the loss or the advantages are per row.
Tiling loss_tiling(const LossInputs& in, const LossOptions& options) {
  return Tiling::of(in.rows, in.cols, options.agg == Aggregation::seq_mean_token_mean || in.advantages_per_row);
}

// Workspace layout: [units SegmentSums (the backward reuses it for units doubles)] [max(rows, 1) doubles: the
// backward's scales; the forward's weight exponent] [the KL table (kl_table.cuh), where the call reads one].
struct Workspace {
  size_t partials_offset = 0, scales_offset = 0, kl_table_offset = 0, bytes = 0;

  static Workspace of(const LossInputs& in, const LossOptions& options) {
    auto round_up = [](size_t b) { return (b + 255) / 256 * 256; };
    const Tiling tiling = loss_tiling(in, options);
    Workspace w;
    w.scales_offset = round_up(static_cast<size_t>(tiling.units) * sizeof(SegmentSums));
    w.kl_table_offset =
        w.scales_offset + round_up(static_cast<size_t>(tiling.rows > 0 ? tiling.rows : 1) * sizeof(double));
    w.bytes = w.kl_table_offset + kl_table_bytes(in.dtype, options.bounds);
    return w;
  }
};

// The policy terms of slot j of a chunk: against the given bounds, or the divergence's.
template <class T, class C, int N>
__device__ __forceinline__ PolicyTerms<C> chunk_policy_terms(const DeviceInputs<T>& in, const Chunk<T, C, N>& c, int j,
                                                             const LossParams<C>& prm) {
  if (in.has_bounds) {
    const C bound = given_bound_of_side(c.advantage[j], c.lower[j], c.upper[j]);
    return policy_terms_given(c.logp[j], c.old_logp[j], c.advantage[j], bound, prm);
  }
  return policy_terms(c.logp[j], c.old_logp[j], c.advantage[j], prm);
}

// The divergence the kernels are compiled for: none plays a part where the bounds are given (clip: the least code).
inline Divergence kernel_divergence(const LossInputs& in, const LossOptions& options) {
  return in.has_given_bounds() ? Divergence::clip : options.bounds.divergence;
}

// The call's KL table, built first (none where the call reads none, or with no tokens to read it).
DeviceKlTable enqueue_loss_kl_table(const LossInputs& in, const LossOptions& options, const Tiling& tiling,
                                    void* workspace, const Workspace& layout, cudaStream_t stream) {
  if (tiling.units == 0 || in.has_given_bounds()) return DeviceKlTable{KlTable{nullptr, KlTableLayout{}}, nullptr};
  return enqueue_kl_table(in.dtype, options.bounds, static_cast<char*>(workspace) + layout.kl_table_offset, stream);
}

// The core's checks of every band_loss entry point (checks.cpp), then the workspace's.
void check_launch(const char* what, const LossInputs& in, const LossOptions& options, void* workspace,
                  size_t workspace_bytes) {
  bandpo::detail::check_loss_call(in, options, what);
  const size_t needed = Workspace::of(in, options).bytes;
  if (!workspace || workspace_bytes < needed || !is_aligned(workspace, 16))
    throw std::invalid_argument(std::string(what) + ": workspace must be a 16-byte aligned device buffer of at least " +
                                std::to_string(needed) + " bytes (loss_workspace_bytes()); got " +
                                std::to_string(workspace_bytes));
}

}  // namespace
}  // namespace detail
}  // namespace cuda
}  // namespace bandpo
