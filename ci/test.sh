#!/usr/bin/env bash
# Every test (README's test command; .ci/run calls it), against the one wheel a user would install:
#   1. ci/wheel.sh: .venv (torch 2.13 CPU, build tools) and dist/bandpo-*.whl (CPU kernels x3 ISAs, CUDA kernels);
#   2. the verl and TRL extras into .venv, then ci/wheel_check.sh installs the wheel there with no compiler
#      reachable, checks its binaries are the wheel's, and runs the whole pytest suite (CUDA tests skip, with
#      the reason, without a GPU; the integration tests must run: BANDPO_REQUIRE_INTEGRATIONS=1);
#   3. ci/embed_check.sh: the torch-free library from source (ctest, find_package, pkg-config) and the C++
#      trainer built against the package inside the installed wheel;
#   4. ci/sanitize.sh (ASan+UBSan: ctest and a Python smoke run) and ci/fuzz.sh (the C ABI fuzzer, 60 s);
#   5. the same wheel file into a fresh venv with torch 2.14.1 (a CUDA build, run on the CPU): a representative
#      subset (errors, exactness, loss, opcheck/compile, tables, symbols).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
bash ci/wheel.sh
whl=$(ls -t dist/bandpo-*.whl | head -1)
.venv/bin/python -m pip install -q -c ci/integrations-constraints.txt "$whl[verl,trl]" 2>&1 | grep -v "^WARNING: Location" || true
BANDPO_REQUIRE_INTEGRATIONS=1 bash ci/wheel_check.sh "$whl" .venv torch==2.13.0
bash ci/embed_check.sh
bash ci/sanitize.sh
bash ci/fuzz.sh
bash ci/wheel_check.sh "$whl" .venv-torch2.14 torch==2.14.1 test_errors.py test_exactness.py test_loss.py \
  test_torch_integration.py test_tables.py test_wheel_abi.py test_numpy.py
echo "ci/test.sh: all done in $((SECONDS - t0)) s"
