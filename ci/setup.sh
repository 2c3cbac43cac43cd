#!/usr/bin/env bash
# Creates .venv (Python 3.10+), installs the build and test tools and torch, then builds and installs bandpo
# from source against that torch (or installs a wheel). Safe to re-run: it reuses the venv and rebuilds.
#   BANDPO_TORCH         torch requirement (default torch==2.13.0, the CPU build on this machine kind's disk)
#   BANDPO_VENV          where the virtual environment lives (default .venv)
#   BANDPO_EXTRAS        optional extras to install with bandpo, e.g. "verl,trl" (ci/test.sh; default none)
#   BANDPO_WHEEL         install this wheel file instead of building from source (no compiler needed)
#   BANDPO_SKIP_INSTALL  1: the environment only, without bandpo (ci/wheel.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${BANDPO_VENV:-.venv}"
torch_req="${BANDPO_TORCH:-torch==2.13.0}"
python3 -m venv "$venv"
py="$venv/bin/python"
quiet() { grep -v "^WARNING: Location" || true; }  # this machine's pip index prints one line per missing package
"$py" -m pip install -q --upgrade pip 2>&1 | quiet
"$py" -m pip install -q "$torch_req" numpy pytest hypothesis mpmath matplotlib tqdm "scikit-build-core>=0.10" pybind11 ninja "cmake>=3.26" "ruff==0.17.6" 2>&1 | quiet
[ "${BANDPO_SKIP_INSTALL:-0}" = 1 ] && exit 0
# Extras (the trainers of bandpo.integrations) come at the versions the integration tests pin.
extras="${BANDPO_EXTRAS:+[$BANDPO_EXTRAS]}"
if [ -n "${BANDPO_WHEEL:-}" ]; then
  "$py" -m pip install -q --force-reinstall --no-deps "$BANDPO_WHEEL" 2>&1 | quiet
  [ -z "$extras" ] || "$py" -m pip install -q -c ci/integrations-constraints.txt "$BANDPO_WHEEL$extras" 2>&1 | quiet
else
  # --no-build-isolation: compile against the torch just installed (its headers; see ci/README.md).
  t0=$SECONDS
  echo "setup: building bandpo from source (CPU kernels for 3 instruction sets, CUDA kernels where nvcc is"
  echo "       found): several minutes on 2 cores; progress below"
  "$py" -m pip install -v --no-build-isolation -c ci/integrations-constraints.txt ".$extras" 2>&1 |
    { grep --line-buffered -E "^\s*\[[0-9]+/[0-9]+\]|^-- bandpo|error:|Error|FAILED|^Successfully installed" || true; }
  echo "setup: bandpo built and installed in $((SECONDS - t0)) s"
fi
"$py" -c "import bandpo, torch; print('bandpo', bandpo.__version__, 'torch', torch.__version__, 'cpu kernels:', bandpo.cpu_kernel_isa(), 'cuda kernels:', bandpo.has_cuda_kernels())"
