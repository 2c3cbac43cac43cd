#!/usr/bin/env bash
# Compiles every CUDA source without a GPU or a CUDA torch: the torch-free kernels (csrc/core/cuda/*.cu) with
# nvcc for sm_80 and sm_90 (+PTX), and the torch CUDA binding (csrc/torch/ops_cuda.cpp) against the installed
# torch's headers (compiled, not linked: a CPU torch has no CUDA libraries). Skips, saying so, without nvcc.
#   BANDPO_VENV  the environment ci/setup.sh made (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc="${CUDA_PATH:-/usr/local/cuda}/bin/nvcc"
[ -x "$nvcc" ] || nvcc="$(command -v nvcc || true)"
if [ -z "$nvcc" ]; then
  echo "cuda compile check: SKIPPED (no nvcc: set CUDA_PATH or put nvcc on PATH)"
  exit 0
fi
export CUDA_PATH="$(dirname "$(dirname "$nvcc")")"
py="$PWD/${BANDPO_VENV:-.venv}/bin/python"
mkdir -p build
cmake -S . -B build/ci-cuda -G Ninja -DPython_EXECUTABLE="$py" -DBANDPO_CUDA=ON -DBANDPO_CPU_ISA_VARIANTS=OFF \
  -DCMAKE_CUDA_COMPILER="$nvcc" >build/ci-cuda.log 2>&1 || { cat build/ci-cuda.log; exit 1; }
cmake --build build/ci-cuda --target bandpo_cuda bandpo_torch_cuda_objects
echo "cuda compile check: OK ($("$nvcc" --version | tail -1))"
