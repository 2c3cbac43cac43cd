// band_loss's backward on the device (the gradient w.r.t. logp): recomputes the per-token terms from the inputs
// (nothing N-sized is kept from the forward). The scale grad_loss / denominator is formed on the device, after a
// mask-weight reduction when it depends on the data (token-mean without normalizer; per row for
// seq-mean-token-mean).
#include "loss_common.cuh"

namespace bandpo {
namespace cuda {
namespace detail {
namespace {

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

// The incoming gradient, as a double (exact from every float dtype).
__device__ double read_scalar(const DeviceScalar& s) {
  switch (s.dtype) {
    case DType::float32:
      return static_cast<double>(*static_cast<const float*>(s.data));
    case DType::bfloat16:
      return static_cast<double>(to_float(*static_cast<const bfloat16*>(s.data)));
    case DType::float16:
      return static_cast<double>(to_float(*static_cast<const float16*>(s.data)));
    default:
      return *static_cast<const double*>(s.data);
  }
}

// One block: scales[0] = grad_loss / denominator, or per row (seq-mean-token-mean) divided by the row weight.
__global__ void __launch_bounds__(kBlockThreads)
    backward_scales_kernel(const double* __restrict__ weight_partials, Tiling tiling, LossOptions options, int64_t rows,
                           int64_t cols, MaskKind mask_kind, DeviceScalar grad_loss, double* __restrict__ scales) {
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
  const double token_scale = denominator != 0.0 ? read_scalar(grad_loss) / denominator : 0.0;
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
        const PolicyTerms<C> t = chunk_policy_terms(in, c, j, prm);
        const KlPenalty<C> k = in.has_ref ? kl_penalty(c.logp[j], c.ref[j], prm.kl_estimator) : KlPenalty<C>{0, 0};
        const C g = scale * c.w[j] * (t.pg_grad + kl_term(prm.kl_coef, k.grad));
        store(out, j, c.w[j] != C(0) ? g : C(0));
      }
      store_chunk(grad, i, end, in.aligned, out);
    }
  }
}

}  // namespace
}  // namespace detail

void band_loss_backward(const LossInputs& in, const LossOptions& options, DeviceScalar grad_loss, void* grad_logp,
                        DeviceBuffer ws, cudaStream_t stream) {
  void* const workspace = ws.data;
  const size_t workspace_bytes = ws.bytes;
  detail::check_launch("band_loss_backward", in, options, workspace, workspace_bytes);
  if (!grad_loss.data) throw std::invalid_argument("band_loss_backward: grad_loss must not be null");
  if (static_cast<int>(grad_loss.dtype) < 0 || static_cast<int>(grad_loss.dtype) > static_cast<int>(DType::float16))
    throw std::invalid_argument("band_loss_backward: grad_loss.dtype is not a float dtype code");
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
    bandpo::detail::with_divergence(detail::kernel_divergence(in, options), [&](auto div) {
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
