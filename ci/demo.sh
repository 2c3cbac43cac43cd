#!/usr/bin/env bash
# The main job: set up .venv (ci/setup.sh), then the PPO demo: clip vs Clip-Higher vs Band-KL on a small
# transformer policy, 2 seeds, a few minutes on a 2-core CPU. Extra arguments go to `python -m bandpo.ppo`
# (see --help), e.g. `bash ci/demo.sh --device cuda --methods band-kl band-tv:delta=0.02`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
"${BANDPO_VENV:-.venv}"/bin/python -m bandpo.ppo "$@"
