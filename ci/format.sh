#!/usr/bin/env bash
# The layout check of ci/test.sh: the tracked Python files as ruff formats them (pyproject.toml [tool.ruff]) and
# the C, C++ and CUDA files as clang-format-14 formats them (.clang-format). Fails listing what differs.
#   bash ci/format.sh          check (CI)
#   bash ci/format.sh --fix    rewrite the files in place
# Needs .venv (ci/setup.sh; ruff is pinned there) and clang-format-14 (ci/clang.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/clang.sh
ruff="$PWD/.venv/bin/ruff"
[ -x "$ruff" ] || .venv/bin/python -m pip install -q "ruff==0.17.6" 2>&1 | { grep -v "^WARNING: Location" || true; }
mapfile -t py < <(git ls-files '*.py')
mapfile -t cc < <(git ls-files '*.h' '*.c' '*.cpp' '*.cu' '*.cuh' '*.inc')
if [ "${1:-}" = "--fix" ]; then
  "$ruff" format "${py[@]}"
  clang-format-14 -i --style=file "${cc[@]}"
  exit 0
fi
status=0
"$ruff" format --check "${py[@]}" || status=1
clang-format-14 --dry-run --Werror --style=file "${cc[@]}" 2>&1 | grep "error:" | head -20 || true
clang-format-14 --dry-run --Werror --style=file "${cc[@]}" >/dev/null 2>&1 || status=1
[ "$status" = 0 ] || { echo "format.sh: files differ from the project's layout; bash ci/format.sh --fix" >&2; exit 1; }
echo "format.sh: ${#py[@]} Python and ${#cc[@]} C/C++/CUDA files as formatted"
