#!/usr/bin/env bash
# The libFuzzer harness of the C ABI (tests/fuzz/fuzz_c_abi.cpp: its invariants are listed there), built with
# clang, AddressSanitizer and UndefinedBehaviorSanitizer over the whole core library, then run from the
# committed seed corpus (tests/fuzz/corpus: the edge-coverage minimum, by -merge=1 -use_counters=0, of about
# 1.5M executions, plus the inputs of past findings, finding-* and harness-*) for BANDPO_FUZZ_SECONDS
# (default 60) on one core. Part of
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
  -DBANDPO_BUILD_FUZZER=ON -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >"$build.log" 2>&1 || { cat "$build.log"; exit 1; }
cmake --build "$build" --target bandpo_fuzz_c_abi >>"$build.log" 2>&1 || { tail -50 "$build.log"; exit 1; }
echo "fuzz: built in $((SECONDS - t0)) s"
# New inputs go to a scratch corpus, so the committed one only changes on purpose.
work="$build/corpus"
mkdir -p "$work"
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
(cd "$build" && ./bandpo_fuzz_c_abi -max_total_time="${BANDPO_FUZZ_SECONDS:-60}" -timeout=10 -rss_limit_mb=4096 \
  -max_len=4096 -print_final_stats=1 "$@" corpus ../../tests/fuzz/corpus) 2>&1 | grep -v "^#[0-9]*\s*\(NEW\|REDUCE\|pulse\)" || exit 1
echo "fuzz: clean in $((SECONDS - t0)) s"
