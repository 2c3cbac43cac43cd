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

#include "args.h"
#include "bandpo/cpu.h"

namespace bandpo {
namespace {

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
PyObject* py_set_input_checks(PyObject*, PyObject* arg) {
  const int enabled = PyObject_IsTrue(arg);
  if (enabled < 0) return nullptr;
  bandpo::set_input_checks_enabled(enabled != 0);
  Py_RETURN_NONE;
}
PyObject* py_input_checks(PyObject*, PyObject*) { return PyBool_FromLong(bandpo::input_checks_enabled() ? 1 : 0); }
PyObject* py_has_cuda_kernels(PyObject*, PyObject*) {
#if defined(BANDPO_TORCH_CUDA)
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}
PyMethodDef module_methods[] = {
    {"cpu_kernel_isa", py_cpu_kernel_isa, METH_NOARGS,
     "Instruction set of the CPU kernels in use: 'avx512', 'avx2' or 'baseline' (override: BANDPO_CPU_ISA)."},
    {"set_input_checks", py_set_input_checks, METH_O,
     "Make CUDA band_loss synchronise and raise ValueError for bad values (default: BANDPO_CHECK_INPUTS=1)."},
    {"input_checks", py_input_checks, METH_NOARGS, "Whether CUDA band_loss checks its inputs (synchronising)."},
    {"has_cuda_kernels", py_has_cuda_kernels, METH_NOARGS, "Whether this build holds the CUDA kernels."},
    {nullptr, nullptr, 0, nullptr}};
}  // namespace

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "bandpo operator library (torch.ops.bandpo)", -1,
                               module_methods};
  return PyModule_Create(&module);
}
