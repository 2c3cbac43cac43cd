// Compile-only check (tests/test_device_headers.py): the shared per-token math must build as CUDA device
// code, unchanged, so that the CUDA kernels use the same definitions as the CPU loops.
#include "bandpo/dtypes.h"
#include "bandpo/lm_head.h"
#include "bandpo/token_loss.h"

namespace bandpo_device_check {

template <class C>
__global__ void every_per_token_function(const C* old_logp, const C* logp, const C* adv, C* out, long n,
                                         bandpo::BoundParams<C> bounds, bandpo::LossParams<C> loss) {
  const long i = blockIdx.x * static_cast<long>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const bandpo::RatioBounds<C> b = bandpo::token_bounds(old_logp[i], bounds);
  const bandpo::BoundsPair<C> pair = bandpo::token_bounds_pair(old_logp[i], logp[i], bounds);
  const bandpo::PolicyTerms<C> t = bandpo::policy_terms(logp[i], old_logp[i], adv[i], loss);
  const bandpo::KlPenalty<C> k = bandpo::kl_penalty(logp[i], old_logp[i], bandpo::KlEstimator::k3);
  out[i] = b.lower + b.upper + pair.second.upper + t.pg_loss + t.pg_grad + t.clipped_upper + k.value + k.grad +
           bandpo::clipped_pg_loss(old_logp[i], adv[i], loss);
}

// The lm_head statistics' per-logit math (lm_head.h).
__global__ void every_per_logit_function(const float* raw, float* out, long n, bandpo::LogitTransform t,
                                         bandpo::LogitRowGrad g) {
  const long i = blockIdx.x * static_cast<long>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  float slope;
  const bandpo::LogitRowGrad from_outputs = bandpo::logit_row_grad_from_outputs(raw[0], -1.0f, 2.0f, 1.0f, 0.5f);
  out[i] = bandpo::logit_z(raw[i], t) + bandpo::logit_z_and_slope(raw[i], t, slope) + slope +
           bandpo::logit_grad(raw[i], i == 0, g, t) + bandpo::logit_grad(raw[i], false, from_outputs, t);
}

// The lm_head statistics' fold of a row (the device kernels' one pass: a 16-byte load of logits at a time, merged
// across threads).
__global__ void row_fold(const float* raw, float* out, long n) {
  bandpo::LogitRowSums x{-INFINITY, 0.0f, 0.0f};
  for (long i = threadIdx.x * 8L; i < n; i += blockDim.x * 8L) {
    float z[8];
    for (int j = 0; j < 8; ++j) z[j] = i + j < n ? raw[i + j] : -INFINITY;
    x = bandpo::logit_sums_add(x, z);
  }
  x = bandpo::logit_sums_merge(x, bandpo::LogitRowSums{raw[0], 1.0f, 0.0f});
  float logp, entropy;
  bandpo::logit_outputs(x, raw[0], logp, entropy);
  out[threadIdx.x] = logp + entropy;
}

__global__ void half_types(const bandpo::bfloat16* a, const bandpo::float16* b, bandpo::bfloat16* c,
                           bandpo::float16* d) {
  c[0] = bandpo::from_float_bf16(bandpo::to_float(a[0]));
  d[0] = bandpo::from_float_f16(bandpo::to_float(b[0]));
}

}  // namespace bandpo_device_check

// Explicit instantiations, laid out by hand: clang-format lays these out differently on each pass.
// clang-format off
template __global__ void bandpo_device_check::every_per_token_function<float>(
    const float*, const float*, const float*, float*, long, bandpo::BoundParams<float>, bandpo::LossParams<float>);
template __global__ void bandpo_device_check::every_per_token_function<double>(
    const double*, const double*, const double*, double*, long, bandpo::BoundParams<double>,
    bandpo::LossParams<double>);
// clang-format on
