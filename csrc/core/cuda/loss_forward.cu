// band_loss's forward on the device (loss + metrics), over the same per-token functions as the CPU loops
// (token_loss.h), with deterministic reductions and no host sync: one warp per reduction unit (Tiling)
// accumulates its tokens and stores the unit's SegmentSums; one block then sums the units in a fixed order and
// applies finish_loss() (aggregation.h).
#include "loss_common.cuh"

namespace bandpo {
namespace cuda {
namespace detail {
namespace {

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
  const C upper_cap = given_upper_cap<T>(prm.bounds.ratio_max);
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
        const PolicyTerms<C> t = chunk_policy_terms(in, c, j, prm);
        const KlPenalty<C> k = in.has_ref ? kl_penalty(c.logp[j], c.ref[j], prm.kl_estimator) : KlPenalty<C>{0, 0};
        const bool clipped = (t.clipped_upper + t.clipped_lower) != C(0);
        const bool bad = bad_token(c.logp[j], c.old_logp[j], c.advantage[j], c.ref[j], c.w[j]) ||
                         (in.has_bounds && bad_given_bounds(c.lower[j], c.upper[j], upper_cap));
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
          C old_logp = 0, advantage = 0, w = 0, lower = 0, upper = 0;
#pragma unroll
          for (int j = 0; j < N; ++j) {  // a select per slot: a dynamic index would put c in local memory
            old_logp = j == pick ? c.old_logp[j] : old_logp;
            advantage = j == pick ? c.advantage[j] : advantage;
            w = j == pick ? c.w[j] : w;
            lower = j == pick ? c.lower[j] : lower;
            upper = j == pick ? c.upper[j] : upper;
          }
          const C bound_loss = in.has_bounds
                                   ? clipped_pg_loss_given(advantage, given_bound_of_side(advantage, lower, upper), prm)
                                   : clipped_pg_loss(old_logp, advantage, prm);
          const C loss = w * weight_scale * bound_loss;
          acc.loss += loss;
          acc.pg += loss;
        }
      }
    }
    const SegmentSums s = warp_sum(acc.widen());
    if (lane == 0) partials[unit] = s;
  }
}

// Where the forward's results go: the loss (one T), the metrics, and the count of bad values (may be null).
template <class T>
struct ForwardOutputs {
  T* loss;
  float* metrics;
  int64_t* invalid_count;
};

// One block: totals and per-row means in a fixed order, then finish_loss().
template <class T>
__global__ void __launch_bounds__(kBlockThreads)
    finish_forward_kernel(const SegmentSums* __restrict__ partials, Tiling tiling, LossOptions options, int64_t rows,
                          int64_t cols, const int* weight_exp, ForwardOutputs<T> out) {
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
  store(out.loss, 0, r.loss);
  for (int m = 0; m < kNumMetrics; ++m) out.metrics[m] = r.metrics[m];
  if (out.invalid_count) *out.invalid_count = total.invalid;
}

}  // namespace
}  // namespace detail

size_t loss_workspace_bytes(const LossInputs& inputs, const LossOptions& options) {
  bandpo::detail::check_loss_call(inputs, options, "loss_workspace_bytes");
  return detail::Workspace::of(inputs, options).bytes;
}

void band_loss_forward(const LossInputs& in, const LossOptions& options, void* loss, float* metrics,
                       int64_t* invalid_count, DeviceBuffer ws, cudaStream_t stream) {
  void* const workspace = ws.data;
  const size_t workspace_bytes = ws.bytes;
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
      bandpo::detail::with_divergence(detail::kernel_divergence(in, options), [&](auto div) {
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
        partials, tiling, options, in.rows, in.cols, weight_exp,
        detail::ForwardOutputs<T>{static_cast<T*>(loss), metrics, invalid_count});
    detail::throw_if_launch_failed("band_loss forward (finish)");
  });
}

}  // namespace cuda
}  // namespace bandpo
