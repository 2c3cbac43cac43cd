#!/usr/bin/env bash
# Every test (README's test command; .ci/run calls it), against the one wheel a user would install:
#   1. ci/wheel.sh: .venv (torch 2.13 CPU, build tools) and dist/bandpo-*.whl (CPU kernels x3 ISAs, CUDA kernels);
#      ci/format.sh: the tree as ruff and clang-format-14 lay it out;
#   2. the verl and TRL extras into .venv, then ci/wheel_check.sh installs the wheel there with no compiler
#      reachable, checks its binaries are the wheel's, and runs the whole pytest suite (CUDA tests skip, with
#      the reason, without a GPU; the integration tests must run: BANDPO_REQUIRE_INTEGRATIONS=1);
#   3. ci/embed_check.sh: the torch-free library from source (ctest, find_package, pkg-config) and the C++
#      trainer built against the package inside the installed wheel;
#   4. ci/sanitize.sh (ASan+UBSan: ctest and a Python smoke run) and ci/fuzz.sh (the C ABI fuzzer, 60 s);
#   5. the same wheel file (one cp310-abi3 file for every CPython >= 3.10) into fresh venvs of the other Pythons,
#      each with another torch (CUDA builds, run on the CPU): 3.10 with torch 2.10.0 (the oldest the wheel
#      serves), 3.12 with 2.14.1, 3.13 with 2.15.0 (the newest; beyond this machine kind's pip cap): a
#      representative subset (errors, exactness, loss, opcheck/compile, tables, symbols, numpy face), and the
#      results digest of ci/results_digest.py, which must be the same in all four environments.
# The venvs are kept between runs (each is made once: torch's CUDA builds are several GB).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
bash ci/wheel.sh
bash ci/format.sh
whl=$(ls -t dist/bandpo-*.whl | head -1)
.venv/bin/python -m pip install -q -c ci/integrations-constraints.txt "$whl[verl,trl,jax]" 2>&1 | grep -v "^WARNING: Location" || true
# OpenRLHF's loss module only (tests/test_integration_openrlhf.py loads it alone, as OpenRLHF's own tests do): the
# rest of the package needs DeepSpeed, Ray's GPU stack and vLLM
.venv/bin/python -m pip install -q --no-deps -c ci/integrations-constraints.txt openrlhf 2>&1 | grep -v "^WARNING: Location" || true
BANDPO_REQUIRE_INTEGRATIONS=1 bash ci/wheel_check.sh "$whl" .venv torch==2.13.0
bash ci/embed_check.sh
bash ci/sanitize.sh
bash ci/fuzz.sh
subset="test_errors.py test_same_errors.py test_exactness.py test_loss.py test_torch_integration.py test_tables.py test_weighted_sums.py
  test_wheel_abi.py test_numpy.py"
python_for() {  # an interpreter of CPython X.Y: pyenv's, else pythonX.Y on PATH
  local root="${PYENV_ROOT:-$HOME/.pyenv}" found
  found=$(ls -d "$root"/versions/"$1".*/bin/python3 2>/dev/null | sort -V | tail -1)
  [ -n "$found" ] || found=$(command -v "python$1") || { echo "test.sh: no Python $1 found" >&2; exit 1; }
  echo "$found"
}
PYTHON=$(python_for 3.10) bash ci/wheel_check.sh "$whl" .venv-py3.10-torch2.10 torch==2.10.0 $subset
PYTHON=$(python_for 3.12) bash ci/wheel_check.sh "$whl" .venv-py3.12-torch2.14 torch==2.14.1 $subset
PYTHON=$(python_for 3.13) PIP_CONSTRAINT=/dev/null bash ci/wheel_check.sh "$whl" .venv-py3.13-torch2.15 torch==2.15.0 \
  $subset
digests=$(cat build/digest-.venv.txt build/digest-.venv-py3.10-torch2.10.txt build/digest-.venv-py3.12-torch2.14.txt \
  build/digest-.venv-py3.13-torch2.15.txt | sort -u)
[ "$(echo "$digests" | wc -l)" = 1 ] || { echo "test.sh: the results differ between environments: $digests" >&2; exit 1; }
echo "test.sh: the same results (digest $digests) under Python 3.10, 3.11, 3.12 and 3.13"
echo "ci/test.sh: all done in $((SECONDS - t0)) s"
