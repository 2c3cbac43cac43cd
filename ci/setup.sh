#!/usr/bin/env bash
# Creates .venv (Python 3.10+), installs the build and test tools and torch, then builds and installs bandpo
# against that torch. Safe to re-run: it reuses the venv and rebuilds the package.
#   BANDPO_TORCH  torch requirement (default torch==2.13.0, the CPU build on this machine kind's disk)
#   BANDPO_VENV   where the virtual environment lives (default .venv)
#   BANDPO_EXTRAS optional extras to install with bandpo, e.g. "verl,trl" (ci/test.sh; default none)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${BANDPO_VENV:-.venv}"
torch_req="${BANDPO_TORCH:-torch==2.13.0}"
python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q "$torch_req" numpy pytest hypothesis mpmath matplotlib tqdm "scikit-build-core>=0.10" pybind11 ninja "cmake>=3.24"
# --no-build-isolation: compile against the torch just installed, never a second one (see ci/README.md).
# Extras (the trainers of bandpo.integrations) come at the versions the integration tests pin.
extras="${BANDPO_EXTRAS:+[$BANDPO_EXTRAS]}"
"$py" -m pip install -q --no-build-isolation -c ci/integrations-constraints.txt ".$extras"
"$py" -c "import bandpo, torch; print('bandpo', bandpo.__version__, 'torch', torch.__version__, 'cpu kernels:', torch.ops.bandpo.band_bounds)"
