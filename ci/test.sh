#!/usr/bin/env bash
# Every test: set up .venv (ci/setup.sh), then the whole pytest suite against the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
export TORCHINDUCTOR_CACHE_DIR="$PWD/.torchinductor"
# Run from tests/ so that `import bandpo` finds the installed package, not the source tree in python/.
cd tests && ../"${BANDPO_VENV:-.venv}"/bin/python -m pytest -q -p no:cacheprovider .
