// torch.ops.bandpo: operator schemas, argument checking and the CPU kernels (over the torch-free core).
// Fake kernels and autograd are registered from Python (python/bandpo/_ops.py), as in pytorch/extension-cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <Python.h>
#include <torch/library.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>

#include "bandpo/cpu.h"

namespace bandpo {
namespace {

// Translate the core library's std::invalid_argument into Python's ValueError with the same message.
template <class F>
auto rethrow_as_value_error(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

DType to_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::float32;
    case at::kDouble: return DType::float64;
    case at::kBFloat16: return DType::bfloat16;
    case at::kHalf: return DType::float16;
    default:
      TORCH_CHECK_TYPE(false, name, " must be float32, float64, bfloat16 or float16; got ", t.scalar_type());
  }
}

void check_same(const at::Tensor& t, const char* name, const at::Tensor& logp) {
  TORCH_CHECK_TYPE(t.scalar_type() == logp.scalar_type(), name, " has dtype ", t.scalar_type(), " but logp has ",
                   logp.scalar_type(), ": logp, old_logp, advantages and ref_logp must share one dtype");
  TORCH_CHECK_VALUE(t.device() == logp.device(), name, " is on ", t.device(), " but logp is on ", logp.device());
}

void check_same_shape(const at::Tensor& t, const char* name, const at::Tensor& logp) {
  TORCH_CHECK_VALUE(t.sizes() == logp.sizes(), name, " must have the shape of logp ", logp.sizes(), "; got ",
                    t.sizes());
}

BoundOptions bound_options(const std::string& divergence, double delta, double eps_low, double eps_high,
                           bool relax_high_p, double ratio_max) {
  return rethrow_as_value_error([&] {
    BoundOptions o;
    o.divergence = parse_divergence(divergence);
    o.delta = delta;
    o.eps_low = eps_low;
    o.eps_high = eps_high;
    o.relax_high_p = relax_high_p;
    o.ratio_max = ratio_max;
    validate(o);
    return o;
  });
}

LossOptions loss_options(const std::string& divergence, double delta, double eps_low, double eps_high,
                         bool relax_high_p, double ratio_max, std::optional<double> dual_clip, const std::string& agg,
                         std::optional<double> normalizer, double kl_coef, const std::string& kl_estimator) {
  return rethrow_as_value_error([&] {
    LossOptions o;
    o.bounds = bound_options(divergence, delta, eps_low, eps_high, relax_high_p, ratio_max);
    o.dual_clip = dual_clip.has_value() ? *dual_clip : std::numeric_limits<double>::infinity();
    o.agg = parse_aggregation(agg);
    o.normalizer = normalizer.has_value() ? *normalizer : std::numeric_limits<double>::quiet_NaN();
    if (normalizer.has_value() && std::isnan(*normalizer))
      throw std::invalid_argument("normalizer must be a finite number > 0 (or None); got nan");
    o.kl_coef = kl_coef;
    o.kl_estimator = parse_kl_estimator(kl_estimator);
    validate(o);
    return o;
  });
}

// Checked, contiguous views of band_loss's tensors and the LossInputs pointing into them.
struct LossArgs {
  at::Tensor logp, old_logp, advantages, mask, ref_logp;
  LossInputs inputs;
};

LossArgs loss_args(const at::Tensor& logp, const at::Tensor& old_logp, const at::Tensor& advantages,
                   const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& ref_logp,
                   const LossOptions& options) {
  LossArgs a;
  LossInputs& in = a.inputs;
  in.dtype = to_dtype(logp, "logp");
  check_same(old_logp, "old_logp", logp);
  check_same(advantages, "advantages", logp);
  check_same_shape(old_logp, "old_logp", logp);

  const int64_t dim = logp.dim();
  const bool seq_agg = options.agg != Aggregation::token_mean;
  TORCH_CHECK_VALUE(!seq_agg || dim == 2, "agg='", aggregation_name(options.agg),
                    "' needs 2-D [batch, tokens] inputs; got logp of shape ", logp.sizes());
  if (dim == 2) {
    in.rows = logp.size(0);
    in.cols = logp.size(1);
  } else if (dim == 0) {
    in.rows = in.cols = 1;
  } else {
    in.cols = logp.size(dim - 1);
    in.rows = in.cols > 0 ? logp.numel() / in.cols : 0;
  }

  if (advantages.sizes() == logp.sizes()) {
    a.advantages = advantages.contiguous();
  } else {
    const bool per_row = dim == 2 && ((advantages.dim() == 1 && advantages.size(0) == in.rows) ||
                                      (advantages.dim() == 2 && advantages.size(0) == in.rows && advantages.size(1) == 1));
    TORCH_CHECK_VALUE(per_row, "advantages must have the shape of logp ", logp.sizes(),
                      " or, for 2-D logp, one value per sequence ([B] or [B, 1]); got ", advantages.sizes());
    a.advantages = advantages.reshape({in.rows}).contiguous();
    in.advantages_per_row = true;
  }

  a.logp = logp.contiguous();
  a.old_logp = old_logp.contiguous();
  in.logp = a.logp.data_ptr();
  in.old_logp = a.old_logp.data_ptr();
  in.advantages = a.advantages.data_ptr();

  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    TORCH_CHECK_VALUE(m.device() == logp.device(), "mask is on ", m.device(), " but logp is on ", logp.device());
    check_same_shape(m, "mask", logp);
    if (m.scalar_type() == at::kBool || m.scalar_type() == at::kByte) {
      in.mask_kind = MaskKind::boolean;
      a.mask = m.contiguous();
    } else {
      TORCH_CHECK_TYPE(at::isFloatingType(m.scalar_type()), "mask must be bool or floating point; got ",
                       m.scalar_type());
      in.mask_kind = MaskKind::values;
      // Weights are read in logp's dtype: a mask of another float dtype is converted (one mask-sized copy).
      a.mask = m.to(logp.scalar_type()).contiguous();
    }
    in.mask = a.mask.data_ptr();
  }
  if (ref_logp.has_value()) {
    check_same(*ref_logp, "ref_logp", logp);
    check_same_shape(*ref_logp, "ref_logp", logp);
    a.ref_logp = ref_logp->contiguous();
    in.ref_logp = a.ref_logp.data_ptr();
  }
  TORCH_CHECK_VALUE(options.kl_coef == 0.0 || ref_logp.has_value(), "kl_coef = ", options.kl_coef,
                    " needs ref_logp (the reference policy's log-probabilities)");
  return a;
}

// torch.set_num_threads() decides the thread count. The items run on the core library's pool, not on
// at::parallel_for: that is an inline OpenMP region, serial in a translation unit built without -fopenmp,
// and building with it would load a second OpenMP runtime beside torch's.
// A fresh output of several MiB is written once, in full: with 4 KiB pages its first touch costs more than
// the kernel itself on small machines (measured 1M float32 band_bounds: ~1.5 ms of faults vs ~3.5 ms of
// math). Where Linux transparent huge pages are in "madvise" mode, asking for them on the 2 MiB-aligned
// interior cuts the faults 512-fold. Advisory only: nothing changes if the kernel declines.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options.memory_format(at::MemoryFormat::Contiguous));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = (begin + t.nbytes()) & ~(kHuge - 1);
  if (t.device().is_cpu() && last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
  return t;
}

ParallelFor torch_parallel_for() { return thread_pool_parallel_for(at::get_num_threads()); }

std::tuple<at::Tensor, at::Tensor> band_bounds_cpu_op(const at::Tensor& old_logp, std::string divergence, double delta,
                                                      double eps_low, double eps_high, bool relax_high_p,
                                                      double ratio_max) {
  const BoundOptions options = bound_options(divergence, delta, eps_low, eps_high, relax_high_p, ratio_max);
  const DType dtype = to_dtype(old_logp, "old_logp");
  const at::Tensor in = old_logp.contiguous();
  at::Tensor lower = empty_output(in.sizes(), in.options());
  at::Tensor upper = empty_output(in.sizes(), in.options());
  rethrow_as_value_error([&] {
    band_bounds_cpu(dtype, in.data_ptr(), in.numel(), options, lower.data_ptr(), upper.data_ptr(),
                    torch_parallel_for());
  });
  return {lower, upper};
}

std::tuple<at::Tensor, at::Tensor> band_loss_cpu_op(const at::Tensor& logp, const at::Tensor& old_logp,
                                                    const at::Tensor& advantages, const std::optional<at::Tensor>& mask,
                                                    std::string divergence, double delta, double eps_low,
                                                    double eps_high, bool relax_high_p, double ratio_max,
                                                    std::optional<double> dual_clip, std::string agg,
                                                    std::optional<double> normalizer,
                                                    const std::optional<at::Tensor>& ref_logp, double kl_coef,
                                                    std::string kl_estimator) {
  const LossOptions options = loss_options(divergence, delta, eps_low, eps_high, relax_high_p, ratio_max, dual_clip,
                                           agg, normalizer, kl_coef, kl_estimator);
  const LossArgs args = loss_args(logp, old_logp, advantages, mask, ref_logp, options);
  const LossResult r =
      rethrow_as_value_error([&] { return band_loss_forward_cpu(args.inputs, options, torch_parallel_for()); });
  at::Tensor loss = at::scalar_tensor(r.loss, logp.options());
  at::Tensor metrics = at::empty({kNumMetrics}, logp.options().dtype(at::kFloat));
  std::copy(r.metrics, r.metrics + kNumMetrics, metrics.data_ptr<float>());
  return {loss, metrics};
}

at::Tensor band_loss_backward_cpu_op(const at::Tensor& grad_loss, const at::Tensor& logp, const at::Tensor& old_logp,
                                     const at::Tensor& advantages, const std::optional<at::Tensor>& mask,
                                     const std::optional<at::Tensor>& ref_logp, std::string divergence, double delta,
                                     double eps_low, double eps_high, bool relax_high_p, double ratio_max,
                                     std::optional<double> dual_clip, std::string agg,
                                     std::optional<double> normalizer, double kl_coef, std::string kl_estimator) {
  const LossOptions options = loss_options(divergence, delta, eps_low, eps_high, relax_high_p, ratio_max, dual_clip,
                                           agg, normalizer, kl_coef, kl_estimator);
  const LossArgs args = loss_args(logp, old_logp, advantages, mask, ref_logp, options);
  TORCH_CHECK_VALUE(grad_loss.numel() == 1, "grad_loss must hold one value; got shape ", grad_loss.sizes());
  const double g = grad_loss.item<double>();
  at::Tensor grad = empty_output(logp.sizes(), logp.options());
  rethrow_as_value_error([&] { band_loss_backward_cpu(args.inputs, options, g, grad.data_ptr(), torch_parallel_for()); });
  return grad;
}

}  // namespace

TORCH_LIBRARY(bandpo, m) {
  m.def(
      "band_bounds(Tensor old_logp, *, str divergence=\"kl\", float delta=0.05, float eps_low=0.2, "
      "float eps_high=0.28, bool relax_high_p=False, float ratio_max=10.0) -> (Tensor, Tensor)");
  m.def(
      "band_loss(Tensor logp, Tensor old_logp, Tensor advantages, Tensor? mask=None, *, str divergence=\"kl\", "
      "float delta=0.05, float eps_low=0.2, float eps_high=0.28, bool relax_high_p=False, float ratio_max=10.0, "
      "float? dual_clip=None, str agg=\"token-mean\", float? normalizer=None, Tensor? ref_logp=None, "
      "float kl_coef=0.0, str kl_estimator=\"k3\") -> (Tensor, Tensor)");
  m.def(
      "band_loss_backward(Tensor grad_loss, Tensor logp, Tensor old_logp, Tensor advantages, Tensor? mask, "
      "Tensor? ref_logp, *, str divergence, float delta, float eps_low, float eps_high, bool relax_high_p, "
      "float ratio_max, float? dual_clip, str agg, float? normalizer, float kl_coef, str kl_estimator) -> Tensor");
}

TORCH_LIBRARY_IMPL(bandpo, CPU, m) {
  m.impl("band_bounds", &band_bounds_cpu_op);
  m.impl("band_loss", &band_loss_cpu_op);
  m.impl("band_loss_backward", &band_loss_backward_cpu_op);
}

}  // namespace bandpo

// An importable module, so that `import bandpo._C` loads the library and runs the registrations above.
namespace {
PyObject* py_cpu_kernel_isa(PyObject*, PyObject*) { return PyUnicode_FromString(bandpo::cpu_kernel_isa()); }
PyMethodDef module_methods[] = {
    {"cpu_kernel_isa", py_cpu_kernel_isa, METH_NOARGS,
     "Instruction set of the CPU kernels in use: 'avx512', 'avx2' or 'baseline' (override: BANDPO_CPU_ISA)."},
    {nullptr, nullptr, 0, nullptr}};
}  // namespace

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "bandpo operator library (torch.ops.bandpo)", -1,
                               module_methods};
  return PyModule_Create(&module);
}
