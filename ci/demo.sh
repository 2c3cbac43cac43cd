#!/usr/bin/env bash
# The main job: set up .venv (ci/setup.sh), then the PPO demo: clip, Clip-Higher, DCPO, TRGPPO and Band-KL on a
# small transformer policy, 3 seeds, about 3 minutes on a 2-core CPU. Extra arguments go to
# `python -m bandpo.ppo` (see --help), e.g. `bash ci/demo.sh --delta-sweep` or `bash ci/demo.sh --device cuda`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
"${BANDPO_VENV:-.venv}"/bin/python -m bandpo.ppo "$@"
