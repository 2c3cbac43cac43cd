#!/usr/bin/env bash
# Every test: set up .venv (ci/setup.sh, with the verl and TRL extras), compile every CUDA source
# (ci/cuda_compile_check.sh; no GPU needed), build, test and install the torch-free library and build the C++ trainer against it (ci/embed_check.sh),
# then the whole pytest suite against the installed package (CUDA tests skip, with the reason, without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
BANDPO_EXTRAS="verl,trl" bash ci/setup.sh
bash ci/cuda_compile_check.sh
bash ci/embed_check.sh
export TORCHINDUCTOR_CACHE_DIR="$PWD/.torchinductor"
# The verl/TRL integration tests skip where those packages are missing; here a missing one is a failure.
export BANDPO_REQUIRE_INTEGRATIONS=1
# Run from tests/ so that `import bandpo` finds the installed package, not the source tree in python/.
cd tests && ../"${BANDPO_VENV:-.venv}"/bin/python -m pytest -q -rs -p no:cacheprovider .
