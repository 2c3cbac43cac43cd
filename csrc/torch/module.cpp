// The Python module bandpo._C: importing it loads this library, whose static initialisers register
// torch.ops.bandpo (schemas.cpp, ops_cpu.cpp, ops_cuda.cpp), and exposes a few queries of the build. It uses
// the Python C API only through the functions below.
#include <Python.h>

#include "bandpo/cpu.h"
#include "args.h"

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
PyObject* py_last_refusal(PyObject*, PyObject*) {
  const bandpo::Refusal& r = bandpo::last_refusal();
  PyObject* type = PyUnicode_FromString(r.type);
  PyObject* message = type ? PyUnicode_FromString(r.message.c_str()) : nullptr;
  PyObject* pair = message ? PyTuple_Pack(2, type, message) : nullptr;
  Py_XDECREF(type);
  Py_XDECREF(message);
  return pair;
}
PyMethodDef module_methods[] = {
    {"cpu_kernel_isa", py_cpu_kernel_isa, METH_NOARGS,
     "Instruction set of the CPU kernels in use: 'avx512', 'avx2' or 'baseline' (override: BANDPO_CPU_ISA)."},
    {"set_input_checks", py_set_input_checks, METH_O,
     "Make CUDA band_loss synchronise and raise ValueError for bad values (default: BANDPO_CHECK_INPUTS=1)."},
    {"input_checks", py_input_checks, METH_NOARGS, "Whether CUDA band_loss checks its inputs (synchronising)."},
    {"has_cuda_kernels", py_has_cuda_kernels, METH_NOARGS, "Whether this build holds the CUDA kernels."},
    {"version", py_version, METH_NOARGS, "The version of the bandpo library in this module."},
    {"last_refusal", py_last_refusal, METH_NOARGS,
     "(exception type name, message) of the last argument refusal raised on this thread ('' before any)."},
    {nullptr, nullptr, 0, nullptr}};
}  // namespace

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "bandpo operator library (torch.ops.bandpo)", -1,
                               module_methods};
  return PyModule_Create(&module);
}
