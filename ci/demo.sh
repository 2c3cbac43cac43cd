#!/usr/bin/env bash
# The main job: set up .venv (ci/setup.sh), then run the example (the PPO demo replaces it when it lands).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
"${BANDPO_VENV:-.venv}"/bin/python examples/quickstart.py "$@"
