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
    foreign = [
        d
        for d in demangled.splitlines()
        if re.search(r"\b(c10|at|torch|caffe2|pybind11)::", d) and "std::" not in d.split("(")[0]
    ]
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


# Python's own data and reference counting, in the stable ABI although their names start with an underscore.
STABLE_PRIVATE = {"_Py_NoneStruct", "_Py_TrueStruct", "_Py_FalseStruct", "_Py_Dealloc", "_Py_IncRef", "_Py_DecRef"}


def test_module_is_built_on_the_limited_python_api():
    """One module for every CPython >= 3.10: an abi3 module that imports no private Python function."""
    assert extension_path().endswith(".abi3.so"), extension_path()
    python = [s for s in undefined_symbols(extension_path()) if s.startswith(("Py", "_Py"))]
    assert python, "expected the module's few Python C API imports"
    assert [s for s in python if s.startswith("_") and s not in STABLE_PRIVATE] == [], python


def installed_wheel_tag():
    from importlib import metadata

    dist = metadata.distribution("bandpo")
    wheel = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]
    return tags[0] if tags else None


def highest_versions(path):
    """The highest GLIBC_ and GLIBCXX_ symbol versions a shared object needs (objdump -T), as tuples."""
    out = subprocess.run(["objdump", "-T", path], check=True, capture_output=True, text=True).stdout
    best = {}
    for kind, version in re.findall(r"\b(GLIBC|GLIBCXX)_(\d+(?:\.\d+)*)\b", out):
        v = tuple(int(p) for p in version.split("."))
        best[kind] = max(best.get(kind, ()), v)
    return best


# The newest GLIBCXX_ version auditwheel's manylinux policies allow, per glibc version of the tag.
GLIBCXX_OF_GLIBC = {(2, 28): (3, 4, 24), (2, 34): (3, 4, 29), (2, 35): (3, 4, 30)}


def test_shipped_libraries_need_no_newer_glibc_than_the_tag_says():
    """Every shipped .so needs glibc and libstdc++ symbols no newer than its manylinux tag promises."""
    tag = installed_wheel_tag()
    if tag is None or "manylinux" not in tag:
        pytest.skip(f"not installed from a manylinux wheel (tag {tag})")
    glibc = tuple(int(p) for p in re.search(r"manylinux_(\d+)_(\d+)", tag).groups())
    root = os.path.dirname(bandpo.__file__)
    found = {}
    for folder, _, files in os.walk(root):
        for f in files:
            if f.endswith(".so") or ".so." in f:
                path = os.path.join(folder, f)
                found[os.path.relpath(path, root)] = highest_versions(path)
                needs = found[os.path.relpath(path, root)]
                assert needs.get("GLIBC", (0,)) <= glibc, (tag, found)
                # The libstdc++ the tag's distributions carry (auditwheel's policy), where it is dynamic.
                assert needs.get("GLIBCXX", (0,)) <= GLIBCXX_OF_GLIBC.get(glibc, (0,)), (tag, found)
    assert found, "no shared library in the installed package"
    print(tag, found)


# Absolute paths of a build machine: the system's toolkit folders, home, temporary and work folders.
BUILD_PATH = re.compile(rb"(?:^|[^\w.}]|-[LI])(/(?:usr/local|opt|home|root|tmp|work|builds?)/[\w.+-]+)")


def test_installed_files_hold_no_path_of_the_build_machine():
    """The package's files (binaries, CMake package, pkg-config file, headers) name no folder of the machine
    that built them: they must work wherever the wheel is installed."""
    root = os.path.dirname(bandpo.__file__)
    found = []
    for folder, _, files in os.walk(root):
        if "__pycache__" in folder:
            continue
        for f in files:
            if f.endswith((".py", ".pyc", ".a")):  # sources; the static archive's objects are not loaded
                continue
            with open(os.path.join(folder, f), "rb") as fh:
                data = fh.read()
            found += [(f, m.group(1).decode(errors="replace")) for m in BUILD_PATH.finditer(data)][:3]
    assert found == [], found


def shipped_shared_objects():
    root = os.path.dirname(bandpo.__file__)
    return [
        os.path.join(folder, f) for folder, _, files in os.walk(root) for f in files if f.endswith(".so") or ".so." in f
    ]


# Undefined symbols that are rightly unversioned: Python's, torch's stable shim, bandpo's own (libbandpo for
# _C), and the weak hooks every GCC-built object carries.
OWN_OR_HOST = re.compile(r"^(_?Py|aoti_torch_|torch_|bandpo_|_ZN6bandpo|_ZNK6bandpo)")
# objdump -T's undefined lines: '... *UND*  <size> [version] <name>'; the version is 'Base', absent (an object
# without version information) or e.g. 'GLIBC_2.14' / '(GLIBC_2.2.5)'.
UNDEFINED = re.compile(r"\*UND\*\s+[0-9a-f]+\s+(?:(\(?[A-Za-z_][\w.]*\)?)\s+)?(\S+)$")


def test_every_c_library_symbol_is_versioned():
    """A C library symbol a shipped .so needs must carry its glibc version. One without (the build linked
    against stubs lacking it) would load only where a newer glibc happens to define it: the manylinux tag
    would be a lie that no symbol-version check sees."""
    bad = {}
    for path in shipped_shared_objects():
        out = subprocess.run(["objdump", "-T", path], check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = UNDEFINED.search(line)
            if m is None:
                continue
            flags = line[17:24]  # objdump's fixed-width flag columns: 'w' marks a weak reference
            version, name = m.group(1), m.group(2)
            if version in (None, "Base") and "w" not in flags and not OWN_OR_HOST.match(name):
                bad.setdefault(os.path.basename(path), []).append(name)
    assert bad == {}, bad
