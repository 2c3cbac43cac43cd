#!/usr/bin/env bash
# The libFuzzer harnesses, built with clang, AddressSanitizer and UndefinedBehaviorSanitizer over the whole core
# library: the C ABI's (tests/fuzz/fuzz_c_abi.cpp: its invariants are listed there) and, where the venv's jaxlib
# has the XLA FFI headers, the JAX handlers' (tests/fuzz/fuzz_jax_ffi*.cpp: called with XLA's call frames). Each
# runs from its committed seed corpus (tests/fuzz/corpus, tests/fuzz/corpus_jax: edge-coverage minima by
# -merge=1, plus the inputs of past findings, finding-* and harness-*) for BANDPO_FUZZ_SECONDS (default 60) on
# one core, one after the other. Part of
# ci/test.sh. A finding leaves its input as build/fuzz/crash-* and fails; turn it into a regression test and,
# once fixed, add the input to the corpus. Needs clang-14 and its runtime (ci/clang.sh installs them).
# Usage: bash ci/fuzz.sh [extra libFuzzer flags]   (e.g. -max_total_time=3600 for a long run)
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
bash ci/clang.sh
build=build/fuzz
mkdir -p build
flags="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang-14 \
  -DCMAKE_CXX_COMPILER=clang++-14 -DBANDPO_TORCH=OFF -DBANDPO_CUDA=OFF -DBANDPO_CPU_ISA_VARIANTS=OFF \
  -DBANDPO_BUILD_FUZZER=ON -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" -DPython_EXECUTABLE="$PWD/.venv/bin/python" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >"$build.log" 2>&1 || { cat "$build.log"; exit 1; }
cmake --build "$build" >>"$build.log" 2>&1 || { tail -50 "$build.log"; exit 1; }
echo "fuzz: built in $((SECONDS - t0)) s"
# New inputs go to a scratch corpus, so the committed one only changes on purpose.
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
run() {  # run HARNESS CORPUS [flags]: from the committed corpus, new inputs into a scratch one
  local harness="$1" corpus="$2"
  shift 2
  mkdir -p "$build/$corpus"
  (cd "$build" && "./$harness" -max_total_time="${BANDPO_FUZZ_SECONDS:-60}" -timeout=10 -rss_limit_mb=4096 \
    -max_len=4096 -print_final_stats=1 "$@" "$corpus" "../../tests/fuzz/$corpus") 2>&1 |
    grep -v "^#[0-9]*\s*\(NEW\|REDUCE\|pulse\)" || exit 1
}
run bandpo_fuzz_c_abi corpus "$@"
if [ -x "$build/bandpo_fuzz_jax_ffi" ]; then
  run bandpo_fuzz_jax_ffi corpus_jax "$@"
else
  echo "fuzz: no jaxlib with FFI headers in .venv: the JAX handlers' harness was not built"
fi
echo "fuzz: clean in $((SECONDS - t0)) s"
