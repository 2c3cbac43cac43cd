"""The installed binaries load anywhere torch >= 2.10 is: what they import from torch and the CUDA runtime.

The extension module is built on torch's ABI-stable API, so it may import only C symbols of torch's stable shim
(``aoti_torch_*``, ``torch_*``), never a C++ symbol of libtorch (mangled ``c10::``, ``at::``, ``torch::``):
those change between releases, and a module importing one fails to load beside another torch.
The CUDA runtime is linked statically, so neither the module nor libbandpo needs libcudart to load.
"""

import os
import re
import shutil
import subprocess

import pytest

import bandpo

nm = shutil.which("nm")
pytestmark = pytest.mark.skipif(nm is None, reason="needs nm (binutils)")

# Mangled names in namespaces c10, at, torch (and caffe2): _ZN3c10..., _ZN2at..., _ZN5torch..., also nested
# under const/reference qualifiers (_ZNK...) and in template arguments.
TORCH_CXX = re.compile(r"(N|K|^_Z)(3c10|2at|5torch|6caffe2)")


def undefined_symbols(path):
    out = subprocess.run([nm, "-D", "--undefined-only", path], check=True, capture_output=True, text=True).stdout
    return [line.split()[-1] for line in out.splitlines() if line.strip()]


def needed_libraries(path):
    out = subprocess.run(["readelf", "-d", path], check=True, capture_output=True, text=True).stdout
    return re.findall(r"\(NEEDED\).*\[(.+)\]", out)


def extension_path():
    return bandpo._C.__file__


def test_module_imports_no_torch_cxx_symbol():
    imported = undefined_symbols(extension_path())
    cxx = [s for s in imported if s.startswith("_Z") and TORCH_CXX.search(s)]
    assert cxx == [], f"the extension imports C++ symbols of libtorch: {cxx[:20]}"
    torch_c = sorted(s for s in imported if s.startswith(("aoti_torch_", "torch_")))
    assert torch_c, "expected the stable C shim's functions among the imports"
    # Demangled, every C++ import is the C++ runtime's (std::, operator new/delete, the ABI's type info).
    mangled = [s for s in imported if s.startswith("_Z")]
    demangled = subprocess.run(["c++filt"], input="\n".join(mangled), capture_output=True, text=True).stdout
    foreign = [d for d in demangled.splitlines()
               if re.search(r"\b(c10|at|torch|caffe2|pybind11)::", d) and "std::" not in d.split("(")[0]]
    assert foreign == [], foreign


def test_module_needs_no_cuda_runtime_and_no_libtorch_beyond_cpu():
    needed = needed_libraries(extension_path())
    assert not any(n.startswith("libcudart") for n in needed), needed
    assert not any(n.startswith(("libtorch_cuda", "libtorch_python", "libc10")) for n in needed), needed


def test_library_needs_no_cuda_runtime():
    lib = bandpo.library_path()
    if not os.path.exists(lib):
        pytest.skip("no libbandpo.so in this installation")
    assert not any(n.startswith("libcudart") for n in needed_libraries(lib))
