// torch.ops.bandpo on PyTorch's ABI-stable C++ API: the operator schemas (from tables.h), the CPU kernels
// over the torch-free core, and the Python module that loads them. Fake kernels and autograd are registered
// from Python (python/bandpo/_ops.py), as in pytorch/extension-cpp's stable variant.
//
// Built with TORCH_TARGET_VERSION (CMakeLists.txt): the module uses only the stable C shim of that torch
// release, so one binary loads in it and in every later one.
#include <Python.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cstdint>
#include <string>

#include "args.h"
#include "bandpo/cpu.h"

namespace bandpo {
namespace {

using torch::stable::detail::from;
using torch::stable::detail::to;

// torch.set_num_threads() decides the thread count. The items run on the core library's pool, not on
// torch's parallel_for: results must not depend on how torch splits work, and building with OpenMP would
// load a second OpenMP runtime beside torch's.
ParallelFor torch_parallel_for() {
  return thread_pool_parallel_for(static_cast<int>(torch::stable::get_num_threads()));
}

// A fresh output of several MiB is written once, in full: with 4 KiB pages its first touch costs more than
// the kernel itself on small machines (measured 1M float32 band_bounds: ~1.5 ms of faults vs ~3.5 ms of
// math). Where Linux transparent huge pages are in "madvise" mode, asking for them on the 2 MiB-aligned
// interior cuts the faults 512-fold. Advisory only: nothing changes if the kernel declines.
Tensor empty_output(const Tensor& like) {
  Tensor t = empty_like_contiguous(like);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = (begin + static_cast<uintptr_t>(t.numel()) * t.element_size()) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
  return t;
}

// band_bounds(Tensor old_logp, *, <bound options>) -> (Tensor, Tensor)
void band_bounds_cpu_boxed(StableIValue* stack, uint64_t num_args, uint64_t num_outputs) {
  check_stack("band_bounds", num_args, 1 + kNumBoundOptions, num_outputs, 2);
  const Tensor old_logp = to<Tensor>(stack[0]);
  const BoundOptions options = unbox_bound_options(stack + 1);
  const DType dtype = to_dtype(old_logp, "old_logp");
  const Tensor in = as_contiguous(old_logp);
  Tensor lower = empty_output(in), upper = empty_output(in);
  rethrow_as_value_error([&] {
    band_bounds_cpu(dtype, in.data_ptr(), in.numel(), options, lower.data_ptr(), upper.data_ptr(),
                    torch_parallel_for());
  });
  stack[0] = from(lower);
  stack[1] = from(upper);
}

// band_loss(Tensor logp, Tensor old_logp, Tensor advantages, Tensor? mask, Tensor? ref_logp, *,
//           <loss options>) -> (Tensor loss, Tensor metrics)
void band_loss_cpu_boxed(StableIValue* stack, uint64_t num_args, uint64_t num_outputs) {
  check_stack("band_loss", num_args, 5 + kNumLossOptions, num_outputs, 2);
  const LossCall call = unbox_loss_call(stack);
  const Tensor& logp = call.logp;
  const LossOptions& options = call.options;
  const LossArgs args = loss_args(call);
  const LossResult r = rethrow_as_value_error([&] { return band_loss_forward_cpu(args.inputs, options, torch_parallel_for()); });
  Tensor loss = empty_on({}, logp.scalar_type(), logp);
  void* out = loss.data_ptr();
  switch (args.inputs.dtype) {  // the double result, rounded to logp's dtype as the core's writers round
    case DType::float32: store(static_cast<float*>(out), 0, r.loss); break;
    case DType::float64: store(static_cast<double*>(out), 0, r.loss); break;
    case DType::bfloat16: store(static_cast<bfloat16*>(out), 0, r.loss); break;
    case DType::float16: store(static_cast<float16*>(out), 0, r.loss); break;
  }
  Tensor metrics = empty_on({kNumMetrics}, ScalarType::Float, logp);
  std::copy(r.metrics, r.metrics + kNumMetrics, static_cast<float*>(metrics.data_ptr()));
  stack[0] = from(loss);
  stack[1] = from(metrics);
}

// band_loss_backward(Tensor grad_loss, Tensor logp, Tensor old_logp, Tensor advantages, Tensor? mask,
//                    Tensor? ref_logp, *, <loss options>) -> Tensor
void band_loss_backward_cpu_boxed(StableIValue* stack, uint64_t num_args, uint64_t num_outputs) {
  check_stack("band_loss_backward", num_args, 6 + kNumLossOptions, num_outputs, 1);
  const Tensor grad_loss = to<Tensor>(stack[0]);
  const LossCall call = unbox_loss_call(stack + 1);
  const Tensor& logp = call.logp;
  const LossOptions& options = call.options;
  const LossArgs args = loss_args(call);
  BANDPO_CHECK_VALUE(grad_loss.numel() == 1, "grad_loss must hold one value; got shape ", shape_string(grad_loss));
  const Tensor g = torch::stable::to(grad_loss, ScalarType::Double);
  const double grad_value = *static_cast<const double*>(g.data_ptr());
  Tensor grad = empty_output(*args.logp);
  rethrow_as_value_error([&] { band_loss_backward_cpu(args.inputs, options, grad_value, grad.data_ptr(), torch_parallel_for()); });
  stack[0] = from(grad);
}

}  // namespace

// The schemas are built from tables.h. ref_logp is a positional-or-keyword argument (it was keyword-only
// before 0.2): torch.library.register_autograd refuses keyword-only Tensor arguments.
STABLE_TORCH_LIBRARY(bandpo, m) {
  m.def(("band_bounds(Tensor old_logp, *" + bound_options_schema() + ") -> (Tensor, Tensor)").c_str());
  m.def(("band_loss(Tensor logp, Tensor old_logp, Tensor advantages, Tensor? mask=None, Tensor? ref_logp=None, *" +
         loss_options_schema() + ") -> (Tensor, Tensor)")
            .c_str());
  m.def(("band_loss_backward(Tensor grad_loss, Tensor logp, Tensor old_logp, Tensor advantages, Tensor? mask, "
         "Tensor? ref_logp, *" + loss_options_schema() + ") -> Tensor")
            .c_str());
}

STABLE_TORCH_LIBRARY_IMPL(bandpo, CPU, m) {
  m.impl("band_bounds", &band_bounds_cpu_boxed);
  m.impl("band_loss", &band_loss_cpu_boxed);
  m.impl("band_loss_backward", &band_loss_backward_cpu_boxed);
}

}  // namespace bandpo

// An importable module, so that `import bandpo._C` loads the library and runs the registrations above. It
// uses the Python C API only through these few functions.
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
PyObject* py_version(PyObject*, PyObject*) { return PyUnicode_FromString(bandpo::version()); }
PyMethodDef module_methods[] = {
    {"cpu_kernel_isa", py_cpu_kernel_isa, METH_NOARGS,
     "Instruction set of the CPU kernels in use: 'avx512', 'avx2' or 'baseline' (override: BANDPO_CPU_ISA)."},
    {"set_input_checks", py_set_input_checks, METH_O,
     "Make CUDA band_loss synchronise and raise ValueError for bad values (default: BANDPO_CHECK_INPUTS=1)."},
    {"input_checks", py_input_checks, METH_NOARGS, "Whether CUDA band_loss checks its inputs (synchronising)."},
    {"has_cuda_kernels", py_has_cuda_kernels, METH_NOARGS, "Whether this build holds the CUDA kernels."},
    {"version", py_version, METH_NOARGS, "The version of the bandpo library in this module."},
    {nullptr, nullptr, 0, nullptr}};
}  // namespace

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "bandpo operator library (torch.ops.bandpo)", -1,
                               module_methods};
  return PyModule_Create(&module);
}
