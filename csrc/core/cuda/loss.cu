// band_loss on the device: forward (loss + metrics) and backward (gradient w.r.t. logp), over the same
// per-token functions as the CPU loops (token_loss.h), with deterministic reductions and no host sync.
//
// Forward: one warp per reduction unit (Tiling) accumulates its tokens, stores the unit's SegmentSums;
// one block then sums the units in a fixed order and applies finish_loss() (aggregation.h).
// Backward: recomputes the per-token terms from the inputs (nothing N-sized is kept from the forward). The
// scale grad_loss / denominator is formed on the device, after a mask-weight reduction when it depends on
// the data (token-mean without normalizer; per row for seq-mean-token-mean).
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
  bool has_ref;  // without a reference policy the KL terms are 0: skipped, saving an expm1 per token
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
  d.mask_kind = in.mask_kind;
  d.advantages_per_row = in.advantages_per_row;
  constexpr int N = kChunk<T>;
  // Units start at multiples of the tile (itself a multiple of N) within a row: rows must keep that.
  bool aligned = (tiling.rows <= 1 || tiling.cols % N == 0) && is_aligned(in.logp, 16) && is_aligned(in.old_logp, 16) &&
                 is_aligned(d.ref_logp, 16);
  if (!in.advantages_per_row) aligned = aligned && is_aligned(in.advantages, 16);
  if (in.mask_kind == MaskKind::boolean) aligned = aligned && is_aligned(in.mask, N);
  if (in.mask_kind == MaskKind::values) aligned = aligned && is_aligned(in.mask, 16);
  d.aligned = aligned;
  return d;
}

// One lane's chunk of tokens [i, i + N), converted to the compute type. w is the mask weight, 0 past `end`.
template <class T, class C, int N>
struct Chunk {
  C logp[N], old_logp[N], advantage[N], ref[N], w[N];
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

// The power-of-two exponent k of float64 mask weights above 1 (the CPU's loss_weight_exponent, cpu_drivers.cpp):
// the forward's sums take w * 2^-k so that no product or sum overflows where the means fit. *exponent starts at 0;
// a maximum, so the result does not depend on the order threads run in.
__global__ void __launch_bounds__(kBlockThreads)
    weight_exponent_kernel(const double* __restrict__ mask, int64_t n, int* __restrict__ exponent) {
  double largest = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const double w = fabs(mask[i]);
    largest = w > largest ? w : largest;  // NaN never wins
  }
  int mine = 0;
  if (largest > 1.0 && isfinite(largest)) frexp(largest, &mine);
  mine = __reduce_max_sync(kFullWarp, mine);
  if (threadIdx.x % kWarpSize == 0 && mine > 0) atomicMax(exponent, mine);
}

template <class T, Divergence kDiv, bool kTable>
__global__ void __launch_bounds__(kBlockThreads)
    loss_partials_kernel(DeviceInputs<T> in, LossParams<typename ComputeType<T>::type> prm, DeviceKlTable kl_table,
                         const int* run_if_refused, Tiling tiling, const int* weight_exp,
                         SegmentSums* __restrict__ partials) {
  using C = typename ComputeType<T>::type;
  constexpr int N = kChunk<T>;
  prm.bounds.divergence = kDiv;
  if (!use_kl_table<kTable>(prm.bounds, kl_table, run_if_refused)) return;
  // The weights the sums take (weight_exponent_kernel; 1 exactly, so the same bits, without one).
  const C weight_scale = weight_exp != nullptr ? static_cast<C>(ldexp(1.0, -*weight_exp)) : C(1);
  const int lane = threadIdx.x % kWarpSize;
  for (int64_t unit = first_warp_unit(); unit < tiling.units; unit += warp_unit_stride()) {
    const int64_t begin = tiling.begin(unit), end = tiling.end(unit);
    const C row_advantage = in.advantages_per_row ? load<C>(in.advantages, tiling.row(unit)) : C(0);
    LaneSums<C> acc;
    // Every lane runs every step (lanes past `end` see w = 0), so the warp votes below see all 32 lanes.
    for (int64_t step = begin; step < end; step += kWarpSize * N) {
      const Chunk<T, C, N> c = read_chunk(in, step + lane * N, end, row_advantage);
      unsigned clipped_bits = 0;
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const C w = c.w[j] * weight_scale;
        const PolicyTerms<C> t = policy_terms(c.logp[j], c.old_logp[j], c.advantage[j], prm);
        const KlPenalty<C> k = in.has_ref ? kl_penalty(c.logp[j], c.ref[j], prm.kl_estimator) : KlPenalty<C>{0, 0};
        const bool clipped = (t.clipped_upper + t.clipped_lower) != C(0);
        const bool bad = bad_token(c.logp[j], c.old_logp[j], c.advantage[j], c.ref[j], c.w[j]);
        if (c.w[j] != C(0)) {                             // masked positions may hold NaN/inf: they never enter a sum
          const C token_pg = clipped ? C(0) : t.pg_loss;  // clipped tokens add theirs below
          acc.loss += w * (token_pg + kl_term(prm.kl_coef, k.value));
          acc.pg += w * token_pg;
          acc.weight += w;
          acc.clip_upper += w * t.clipped_upper;
          acc.clip_lower += w * t.clipped_lower;
          acc.dual += w * t.dual_clipped;
          acc.ppo_kl += w * (c.old_logp[j] - c.logp[j]);
          acc.ratio += w * t.ratio;
          acc.ref_kl += w * k.value;
          acc.invalid += bad ? 1 : 0;
          clipped_bits |= clipped ? (1u << j) : 0u;
        }
      }
      // A clipped token's loss needs its bound (a solve for KL). Each lane takes its clipped tokens one at a
      // time, so the warp runs the solver max-over-lanes times per step rather than once per chunk slot
      // that any lane has clipped.
      while (__any_sync(kFullWarp, clipped_bits != 0)) {
        if (clipped_bits != 0) {
          const int pick = __ffs(clipped_bits) - 1;
          clipped_bits &= clipped_bits - 1;
          C old_logp = 0, advantage = 0, w = 0;
#pragma unroll
          for (int j = 0; j < N; ++j) {  // a select per slot: a dynamic index would put c in local memory
            old_logp = j == pick ? c.old_logp[j] : old_logp;
            advantage = j == pick ? c.advantage[j] : advantage;
            w = j == pick ? c.w[j] : w;
          }
          const C loss = w * weight_scale * clipped_pg_loss(old_logp, advantage, prm);
          acc.loss += loss;
          acc.pg += loss;
        }
      }
    }
    const SegmentSums s = warp_sum(acc.widen());
    if (lane == 0) partials[unit] = s;
  }
}

// One block: totals and per-row means in a fixed order, then finish_loss().
template <class T>
__global__ void __launch_bounds__(kBlockThreads)
    finish_forward_kernel(const SegmentSums* __restrict__ partials, Tiling tiling, LossOptions options, int64_t rows,
                          int64_t cols, const int* weight_exp, T* __restrict__ loss, float* __restrict__ metrics,
                          int64_t* __restrict__ invalid_count) {
  // Each thread sums units t, t + 256, ... in that order, loading kBatch of them before adding: one at a time,
  // one block reading 16k partials waited out an L2 round trip per unit (34 us at 16M tokens on an H200).
  constexpr int kBatch = 4;
  SegmentSums mine;
  for (int64_t u0 = threadIdx.x; u0 < tiling.units; u0 += kBatch * int64_t(blockDim.x)) {
    SegmentSums batch[kBatch];
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const int64_t u = u0 + k * int64_t(blockDim.x);
      if (u < tiling.units) batch[k] = partials[u];
    }
#pragma unroll
    for (int k = 0; k < kBatch; ++k) mine.add(batch[k]);  // past the end: zeros, adding nothing
  }
  const SegmentSums total = block_sum(mine);
  double row_mean_loss = 0, row_mean_pg = 0;
  if (options.agg == Aggregation::seq_mean_token_mean) {
    for (int64_t r = threadIdx.x; r < tiling.rows; r += blockDim.x) {
      SegmentSums row;
      for (int64_t t = 0; t < tiling.tiles_per_row; ++t) row.add(partials[r * tiling.tiles_per_row + t]);
      row_mean_loss += bandpo::detail::mean_or_zero(row.loss, row.weight);
      row_mean_pg += bandpo::detail::mean_or_zero(row.pg, row.weight);
    }
    row_mean_loss = block_sum(row_mean_loss);
    row_mean_pg = block_sum(row_mean_pg);
  }
  if (threadIdx.x != 0) return;
  LossResult r = bandpo::detail::finish_loss(total, row_mean_loss, row_mean_pg, options, rows, cols,
                                             weight_exp != nullptr ? *weight_exp : 0);
  if (total.invalid > 0) {  // cannot raise here: make it impossible to miss
    r.loss = NAN;
    for (int m = 0; m < kNumMetrics; ++m) r.metrics[m] = NAN;
  }
  store(loss, 0, r.loss);
  for (int m = 0; m < kNumMetrics; ++m) metrics[m] = r.metrics[m];
  if (invalid_count) *invalid_count = total.invalid;
}

template <class T>
__global__ void __launch_bounds__(kBlockThreads)
    weight_partials_kernel(DeviceInputs<T> in, Tiling tiling, double* __restrict__ partials) {
  using C = typename ComputeType<T>::type;
  constexpr int N = kChunk<T>;
  const int lane = threadIdx.x % kWarpSize;
  for (int64_t unit = first_warp_unit(); unit < tiling.units; unit += warp_unit_stride()) {
    const int64_t begin = tiling.begin(unit), end = tiling.end(unit);
    double sum = 0;
    for (int64_t i = begin + lane * N; i < end; i += kWarpSize * N) {
      C w[N];
      if (in.mask_kind == MaskKind::values) {
        T raw[N];
        load_chunk(static_cast<const T*>(in.mask), i, end, in.aligned, raw);
#pragma unroll
        for (int j = 0; j < N; ++j) w[j] = load<C>(raw, j);
      } else {
        uint8_t bits[N];
        load_chunk(static_cast<const uint8_t*>(in.mask), i, end, in.aligned, bits);
#pragma unroll
        for (int j = 0; j < N; ++j) w[j] = bits[j] != 0 ? C(1) : C(0);
      }
#pragma unroll
      for (int j = 0; j < N; ++j) sum += static_cast<double>(w[j]);
    }
    sum = warp_sum(sum);
    if (lane == 0) partials[unit] = sum;
  }
}

// One block: scales[0] = grad_loss / denominator, or per row (seq-mean-token-mean) divided by the row weight.
__global__ void __launch_bounds__(kBlockThreads)
    backward_scales_kernel(const double* __restrict__ weight_partials, Tiling tiling, LossOptions options, int64_t rows,
                           int64_t cols, MaskKind mask_kind, const double* __restrict__ grad_loss,
                           double* __restrict__ scales) {
  double total_weight = static_cast<double>(rows) * static_cast<double>(cols);
  if (bandpo::detail::backward_needs_total_weight(options, mask_kind)) {
    // Loaded kBatch at a time, summed in unit order (see finish_forward_kernel).
    constexpr int kBatch = 8;
    double mine = 0;
    for (int64_t u0 = threadIdx.x; u0 < tiling.units; u0 += kBatch * int64_t(blockDim.x)) {
      double batch[kBatch];
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
        const int64_t u = u0 + k * int64_t(blockDim.x);
        batch[k] = u < tiling.units ? weight_partials[u] : 0.0;
      }
#pragma unroll
      for (int k = 0; k < kBatch; ++k) mine += batch[k];
    }
    total_weight = block_sum(mine);
    __shared__ double shared_total;
    if (threadIdx.x == 0) shared_total = total_weight;
    __syncthreads();
    total_weight = shared_total;
  }
  const double denominator = bandpo::detail::aggregation_denominator(options, rows, cols, total_weight);
  const double token_scale = denominator != 0.0 ? grad_loss[0] / denominator : 0.0;
  if (options.agg == Aggregation::seq_mean_token_mean) {
    for (int64_t r = threadIdx.x; r < tiling.rows; r += blockDim.x) {
      double w = static_cast<double>(tiling.cols);  // no mask: every token weighs 1
      if (mask_kind != MaskKind::none) {
        w = 0;
        for (int64_t t = 0; t < tiling.tiles_per_row; ++t) w += weight_partials[r * tiling.tiles_per_row + t];
      }
      scales[r] = w != 0.0 ? token_scale / w : 0.0;
    }
  } else if (threadIdx.x == 0) {
    scales[0] = token_scale;
  }
}

template <class T, Divergence kDiv, bool kTable>
__global__ void __launch_bounds__(kBlockThreads)
    grad_kernel(DeviceInputs<T> in, LossParams<typename ComputeType<T>::type> prm, DeviceKlTable kl_table,
                const int* run_if_refused, Tiling tiling, const double* __restrict__ scales, bool scale_per_row,
                T* __restrict__ grad) {
  using C = typename ComputeType<T>::type;
  constexpr int N = kChunk<T>;
  prm.bounds.divergence = kDiv;
  if (!use_kl_table<kTable>(prm.bounds, kl_table, run_if_refused)) return;
  const int lane = threadIdx.x % kWarpSize;
  for (int64_t unit = first_warp_unit(); unit < tiling.units; unit += warp_unit_stride()) {
    const int64_t begin = tiling.begin(unit), end = tiling.end(unit), row = tiling.row(unit);
    const C row_advantage = in.advantages_per_row ? load<C>(in.advantages, row) : C(0);
    const C scale = static_cast<C>(scales[scale_per_row ? row : 0]);
    for (int64_t i = begin + lane * N; i < end; i += kWarpSize * N) {
      const Chunk<T, C, N> c = read_chunk(in, i, end, row_advantage);
      T out[N];
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const PolicyTerms<C> t = policy_terms(c.logp[j], c.old_logp[j], c.advantage[j], prm);
        const KlPenalty<C> k = in.has_ref ? kl_penalty(c.logp[j], c.ref[j], prm.kl_estimator) : KlPenalty<C>{0, 0};
        const C g = scale * c.w[j] * (t.pg_grad + kl_term(prm.kl_coef, k.grad));
        store(out, j, c.w[j] != C(0) ? g : C(0));
      }
      store_chunk(grad, i, end, in.aligned, out);
    }
  }
}

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

// The call's KL table, built first (none where the call reads none, or with no tokens to read it).
DeviceKlTable enqueue_loss_kl_table(const LossInputs& in, const LossOptions& options, const Tiling& tiling,
                                    void* workspace, const Workspace& layout, cudaStream_t stream) {
  if (tiling.units == 0) return DeviceKlTable{KlTable{nullptr, KlTableLayout{}}, nullptr};
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

size_t loss_workspace_bytes(const LossInputs& inputs, const LossOptions& options) {
  bandpo::detail::check_loss_call(inputs, options, "loss_workspace_bytes");
  return detail::Workspace::of(inputs, options).bytes;
}

void band_loss_forward(const LossInputs& in, const LossOptions& options, void* loss, float* metrics,
                       int64_t* invalid_count, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  detail::check_launch("band_loss_forward", in, options, workspace, workspace_bytes);
  if (!loss || !metrics) throw std::invalid_argument("band_loss_forward: loss and metrics must not be null");
  const detail::Tiling tiling = detail::loss_tiling(in, options);
  const detail::Workspace layout = detail::Workspace::of(in, options);
  auto* partials = reinterpret_cast<detail::SegmentSums*>(static_cast<char*>(workspace) + layout.partials_offset);
  const detail::DeviceKlTable kl_table = detail::enqueue_loss_kl_table(in, options, tiling, workspace, layout, stream);
  int* weight_exp = nullptr;  // float64 mask weights only (weight_exponent_kernel)
  if (in.dtype == DType::float64 && in.mask_kind == MaskKind::values && tiling.units > 0) {
    weight_exp = reinterpret_cast<int*>(static_cast<char*>(workspace) + layout.scales_offset);
    const cudaError_t err = cudaMemsetAsync(weight_exp, 0, sizeof(int), stream);
    if (err != cudaSuccess) detail::throw_cuda_error("band_loss forward (weight exponent)", err);
    const int64_t n = in.rows * in.cols;
    const int blocks = detail::grid_blocks((n + detail::kBlockThreads - 1) / detail::kBlockThreads);
    detail::weight_exponent_kernel<<<blocks, detail::kBlockThreads, 0, stream>>>(static_cast<const double*>(in.mask), n,
                                                                                 weight_exp);
    detail::throw_if_launch_failed("band_loss forward (weight exponent)");
  }
  bandpo::detail::with_storage_type(in.dtype, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using C = typename ComputeType<T>::type;
    if (tiling.units > 0) {
      const int blocks = detail::grid_blocks((tiling.units + detail::kWarpsPerBlock - 1) / detail::kWarpsPerBlock);
      const detail::DeviceInputs<T> d = detail::device_inputs<T>(in, tiling);
      bandpo::detail::with_divergence(options.bounds.divergence, [&](auto div) {
        constexpr Divergence kDiv = decltype(div)::value;
        detail::launch_with_kl_table(kl_table, blocks, [&](auto table, const int* run_if_refused, int grid) {
          if constexpr (!decltype(table)::value || (kDiv == Divergence::kl && std::is_same<C, float>::value)) {
            detail::loss_partials_kernel<T, kDiv, decltype(table)::value><<<grid, detail::kBlockThreads, 0, stream>>>(
                d, to_params<C>(options), kl_table, run_if_refused, tiling, weight_exp, partials);
          }
        });
      });
      detail::throw_if_launch_failed("band_loss forward");
    }
    detail::finish_forward_kernel<T><<<1, detail::kBlockThreads, 0, stream>>>(
        partials, tiling, options, in.rows, in.cols, weight_exp, static_cast<T*>(loss), metrics, invalid_count);
    detail::throw_if_launch_failed("band_loss forward (finish)");
  });
}

void band_loss_backward(const LossInputs& in, const LossOptions& options, const double* grad_loss, void* grad_logp,
                        void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  detail::check_launch("band_loss_backward", in, options, workspace, workspace_bytes);
  if (!grad_loss) throw std::invalid_argument("band_loss_backward: grad_loss must not be null");
  const detail::Tiling tiling = detail::loss_tiling(in, options);
  if (tiling.units == 0) return;
  if (!grad_logp) throw std::invalid_argument("band_loss_backward: grad_logp must not be null");
  const detail::Workspace layout = detail::Workspace::of(in, options);
  const detail::DeviceKlTable kl_table = detail::enqueue_loss_kl_table(in, options, tiling, workspace, layout, stream);
  auto* weight_partials = reinterpret_cast<double*>(static_cast<char*>(workspace) + layout.partials_offset);
  auto* scales = reinterpret_cast<double*>(static_cast<char*>(workspace) + layout.scales_offset);
  const int blocks = detail::grid_blocks((tiling.units + detail::kWarpsPerBlock - 1) / detail::kWarpsPerBlock);
  const bool per_row_scale = options.agg == Aggregation::seq_mean_token_mean;
  bandpo::detail::with_storage_type(in.dtype, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using C = typename ComputeType<T>::type;
    const detail::DeviceInputs<T> d = detail::device_inputs<T>(in, tiling);
    if (in.mask_kind != MaskKind::none &&
        (per_row_scale || bandpo::detail::backward_needs_total_weight(options, in.mask_kind))) {
      detail::weight_partials_kernel<T><<<blocks, detail::kBlockThreads, 0, stream>>>(d, tiling, weight_partials);
      detail::throw_if_launch_failed("band_loss backward (mask weights)");
    }
    detail::backward_scales_kernel<<<1, detail::kBlockThreads, 0, stream>>>(weight_partials, tiling, options, in.rows,
                                                                            in.cols, in.mask_kind, grad_loss, scales);
    detail::throw_if_launch_failed("band_loss backward (scales)");
    bandpo::detail::with_divergence(options.bounds.divergence, [&](auto div) {
      constexpr Divergence kDiv = decltype(div)::value;
      detail::launch_with_kl_table(kl_table, blocks, [&](auto table, const int* run_if_refused, int grid) {
        if constexpr (!decltype(table)::value || (kDiv == Divergence::kl && std::is_same<C, float>::value)) {
          detail::grad_kernel<T, kDiv, decltype(table)::value>
              <<<grid, detail::kBlockThreads, 0, stream>>>(d, to_params<C>(options), kl_table, run_if_refused, tiling,
                                                           scales, per_row_scale, static_cast<T*>(grad_logp));
        }
      });
    });
    detail::throw_if_launch_failed("band_loss backward");
  });
}

}  // namespace cuda
}  // namespace bandpo
