#!/usr/bin/env bash
# The core library, the C ABI and the Python faces under AddressSanitizer + UndefinedBehaviorSanitizer.
# Part of ci/test.sh; any sanitizer report fails it (halt_on_error, -fno-sanitize-recover).
#   1. build/sanitize: libbandpo and _C compiled and linked by clang-14 with -fsanitize=address,undefined
#      (baseline CPU kernels only: the ISA variants share every line of source but the compiler flags). Clang,
#      not GCC: its UBSan also checks float-to-int casts and enum loads, and it builds the kernels under the
#      sanitizers in about a minute where GCC took seven;
#   2. ctest: the C++ API test (with the mpmath table) and the C ABI test, leak checking on;
#   3. a Python smoke run: the op, numpy and error tests of tests/ on the sanitized modules, with libasan
#      preloaded into an uninstrumented Python (leak checking off: CPython and torch keep memory at exit).
# Usage: bash ci/sanitize.sh [PYTHON]   (default .venv/bin/python: torch, numpy, pybind11, pytest, cmake in it;
#        ci/setup.sh makes it). Runs alone on a fresh clone once that venv exists.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/clang.sh
py=${1:-$PWD/.venv/bin/python}
build=build/sanitize
mkdir -p build
# The venv's CMake (ci/setup.sh installs >= 3.26: the abi3 module's FindPython needs it) before the system's.
export PATH="$(dirname "$py"):$PATH"
t0=$SECONDS
flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang-14 \
  -DCMAKE_CXX_COMPILER=clang++-14 -DPython_EXECUTABLE="$py" -DBANDPO_CUDA=OFF -DBANDPO_CPU_ISA_VARIANTS=OFF \
  -DBANDPO_BUILD_TESTS=ON -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DCMAKE_MODULE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DCMAKE_C_STANDARD_LIBRARIES="-fsanitize-link-c++-runtime -lstdc++" >"$build.log" 2>&1 || { cat "$build.log"; exit 1; }
# (The C ABI test is C linked against a C++ library: its link needs UBSan's C++ runtime and libstdc++, given
# as standard libraries so that CMake's own C compiler check, which does not use them, still links.)
cmake --build "$build" >>"$build.log" 2>&1 || { tail -50 "$build.log"; exit 1; }
echo "sanitize: built in $((SECONDS - t0)) s"

export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1:check_initialization_order=1
ctest --test-dir "$build" --output-on-failure

# The sanitized modules in a package folder of their own (the Python sources are the repository's).
pkg="$build/python"
rm -rf "$pkg" && mkdir -p "$pkg" && cp -r python/bandpo "$pkg/"
rm -f "$pkg"/bandpo/_C*.so
cp "$build"/_C*.so "$pkg/bandpo/"
# The Python side loads the library by ctypes (bandpo._capi): the sanitized one _C links (its build RPATH).
export BANDPO_LIBRARY="$PWD/$build/libbandpo.so"
# clang links no sanitizer runtime into shared objects: the Python process gets the shared one (UBSan inside).
runtime=$(clang-14 -print-file-name=libclang_rt.asan-x86_64.so)
# torch is not instrumented: its own allocations are only intercepted, and its intentional leaks ignored.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allocator_may_return_null=1
(cd tests && LD_PRELOAD="$runtime" PYTHONPATH="$PWD/../$pkg" "$py" -m pytest -q -p no:cacheprovider \
  test_errors.py test_same_errors.py test_numpy.py test_tables.py test_loss.py test_exactness.py)
echo "sanitize: clean in $((SECONDS - t0)) s"
