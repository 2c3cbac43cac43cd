#!/usr/bin/env bash
# clang-14 with its sanitizer and libFuzzer runtimes (Debian's clang-14, libclang-rt-14-dev), for
# ci/sanitize.sh and ci/fuzz.sh, and clang-format-14 for ci/format.sh: installed with apt when missing (CI
# machines start without them).
set -euo pipefail
rt=/usr/lib/llvm-14/lib/clang/14.0.6/lib/linux
if command -v clang++-14 >/dev/null && command -v clang-format-14 >/dev/null && [ -e "$rt/libclang_rt.fuzzer-x86_64.a" ] &&
  [ -e "$rt/libclang_rt.asan-x86_64.so" ]; then
  exit 0
fi
echo "clang.sh: installing clang-14, libclang-rt-14-dev and clang-format-14"
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
pkgs="clang-14 libclang-rt-14-dev clang-format-14"
$sudo apt-get install -y -q $pkgs >/dev/null 2>&1 ||
  { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q $pkgs >/dev/null; }
command -v clang++-14 >/dev/null && command -v clang-format-14 >/dev/null
