#!/usr/bin/env bash
# Installs one bandpo wheel file, without any compiler, into a virtual environment with a given torch, checks
# the installed extension is byte-identical to the one in the wheel, then runs tests against it.
#   bash ci/wheel_check.sh WHEEL VENV TORCH_REQUIREMENT [PYTEST_ARGS...]
# e.g. bash ci/wheel_check.sh dist/bandpo-*.whl .venv-torch2.14 torch==2.14.1 test_errors.py test_loss.py
# The venv is created if missing, by $PYTHON (default python3), with torch, numpy and the test tools only (nothing
# that compiles; PIP_CONSTRAINT=/dev/null lifts this machine kind's torch cap for a newer torch). cc, c++, gcc,
# g++, clang and nvcc are shadowed on PATH by stubs that fail, and CC/CXX/CUDA_PATH are unset, so the install
# fails if anything tries to compile. PYTEST_ARGS default to the whole suite (run from tests/).
set -euo pipefail
cd "$(dirname "$0")/.."
wheel="$1" venv="$2" torch_req="$3"
shift 3
[ -f "$wheel" ] || { echo "wheel_check: no wheel file '$wheel'" >&2; exit 1; }
py="$PWD/$venv/bin/python"
quiet() { grep -v "^WARNING: Location" || true; }
t0=$SECONDS
if ! "$py" -c "import torch" 2>/dev/null; then
  "${PYTHON:-python3}" -m venv "$venv"
  "$py" -m pip install -q --upgrade pip 2>&1 | quiet
  "$py" -m pip install -q "$torch_req" numpy pytest hypothesis mpmath matplotlib tqdm 2>&1 | quiet
fi
stubs="$PWD/build/no-compilers"
mkdir -p "$stubs"
for tool in cc c++ gcc g++ clang clang++ nvcc ld; do
  printf '#!/bin/sh\necho "wheel_check: %s was called: installing the wheel must not compile" >&2\nexit 97\n' "$tool" \
    >"$stubs/$tool"
  chmod +x "$stubs/$tool"
done
(
  unset CC CXX CUDA_PATH CUDA_HOME CUDACXX
  export PATH="$stubs:$PATH"
  "$py" -m pip install -q --force-reinstall --no-deps "$wheel" 2>&1 | quiet
)
site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['platlib'])")
for member in $("$py" -c "import sys, zipfile; print(' '.join(n for n in zipfile.ZipFile(sys.argv[1]).namelist() if n.endswith('.so') or '.so.' in n))" "$wheel"); do
  in_wheel=$("$py" -c "import hashlib, sys, zipfile; print(hashlib.sha256(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2])).hexdigest())" "$wheel" "$member")
  installed=$(sha256sum "$site/$member" | cut -d' ' -f1)
  [ "$in_wheel" = "$installed" ] || { echo "wheel_check: $member differs from the wheel's" >&2; exit 1; }
done
echo "wheel_check: installed $(basename "$wheel") into $venv ($("$py" -c "import sys, torch; print('Python %d.%d.%d' % sys.version_info[:3], 'torch', torch.__version__)")); binaries identical to the wheel's"
# One digest of the results on fixed inputs: ci/test.sh compares it across every environment.
"$py" ci/results_digest.py >"build/digest-$(basename "$venv").txt"
echo "wheel_check: results digest $(cat "build/digest-$(basename "$venv").txt")"
export TORCHINDUCTOR_CACHE_DIR="$PWD/.torchinductor"
cd tests && "$py" -m pytest -q -rs -p no:cacheprovider "${@:-.}"
echo "wheel_check: $venv done in $((SECONDS - t0)) s"
