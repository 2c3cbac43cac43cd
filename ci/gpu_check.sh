#!/usr/bin/env bash
# The one-command GPU check, for a GPU machine with torch (CUDA build), nvcc, cmake, ninja and
# pytest already installed, and no internet: build with the CUDA kernels, run the CUDA tests, run
# compute-sanitizer memcheck on a small case, run the benchmark; print a short table last. Full logs and
# results go to $OUT when it is set (else gpu-results/). Meant to finish in under 8 minutes on an H100.
# The CPU kernels are built without their AVX2/AVX-512 variants here: CI tests those, and it halves the build.
#   --wheel FILE  instead of building, install that wheel (the cp310-abi3 file ci/wheel.sh builds, unchanged:
#                 it serves the lent machines' Python 3.12 and torch 2.11) without dependencies, and test it
#   PYTHON        interpreter with torch (default python3)
#   BANDPO_ARCHS  CUDA architectures to build (default 90: the machine's own; CI compiles 80 and 90)
#   GPU_CHECK_ONLY=lm_head  skips the band_bounds / band_loss benchmarks (tests and memcheck still run)
# The lm_head benchmark compares with TRL's chunked log-prob and Liger's fused GRPO loss where they import: the
# lent machines have neither and no network, so a session may carry them in build/gpu_extras/site (put on
# PYTHONPATH after bandpo; see ci/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
wheel=""
if [ "${1:-}" = "--wheel" ]; then wheel=$(readlink -f "$2"); fi
out="${OUT:-$PWD/gpu-results}"
mkdir -p "$out"
py="$(command -v "${PYTHON:-python3}")"
# The lent machines' image sets CXX to a g++ that links libstdc++ statically into shared objects, which makes
# the module crash on its first error message (CMakeLists.txt refuses such a module): use the system's.
if [ -x /usr/bin/g++ ]; then export CXX=/usr/bin/g++ CC=/usr/bin/gcc CUDAHOSTCXX=/usr/bin/g++; fi
export CUDA_PATH="${CUDA_PATH:-/usr/local/cuda}" PATH="${CUDA_PATH:-/usr/local/cuda}/bin:$PATH"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR="$PWD/.torchinductor"
status=0
step() {  # step NAME TIMEOUT_S COMMAND...: run, log to $out/NAME.log, remember failure
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  printf '%-10s rc=%-3s %4ss\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$out/steps.txt"
  [ "$rc" -eq 0 ] || { status=1; tail -n 25 "$out/$name.log"; }
  return "$rc"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv >"$out/gpu.txt" 2>&1
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >>"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"

if [ -n "$wheel" ]; then
  rm -rf build-gpu/site
  step install 120 "$py" -m pip install --no-deps --target build-gpu/site "$wheel" || { echo "install failed"; exit 1; }
  export PYTHONPATH="$PWD/build-gpu/site"
else
  step build 300 bash -c "cmake -S . -B build-gpu -G Ninja -DPython_EXECUTABLE='$py' -DBANDPO_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES='${BANDPO_ARCHS:-90}' -DBANDPO_CPU_ISA_VARIANTS=OFF && cmake --build build-gpu" || { echo "build failed"; exit 1; }
  so=$(ls build-gpu/_C*.so | head -1)
  cp "$so" python/bandpo/ && export PYTHONPATH="$PWD/python" BANDPO_LIBRARY="$PWD/build-gpu/libbandpo.so"
fi
"$py" -c "import bandpo; assert bandpo.has_cuda_kernels(); print('bandpo', bandpo.__file__, 'CUDA kernels loaded')"
if [ -d build/gpu_extras/site ]; then export PYTHONPATH="$PYTHONPATH:$PWD/build/gpu_extras/site"; fi

step tests 240 "$py" -m pytest -q -rs --tb=short -p no:cacheprovider tests/test_cuda.py tests/test_kl_table.py \
  tests/test_lm_head.py tests/test_jax.py tests/test_jax_lm_head.py -k "cuda or not kl_table"
grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed" "$out/tests.log" | head -n 40
step memcheck 100 compute-sanitizer --tool memcheck --error-exitcode 1 "$py" tests/device/memcheck_case.py
grep -E "ERROR SUMMARY|memcheck case" "$out/memcheck.log"
if [ "${GPU_CHECK_ONLY:-}" != lm_head ]; then
step bench 180 "$py" benchmarks/bench_cuda.py --sizes 1048576 16777216 --out "$out/bench.json"
sed -n '/^$/,$p' "$out/bench.log"
# the same ops with the exact solve instead of the KL table (the table's before/after, same machine)
BANDPO_KL_TABLE=0 step bench_solve 60 "$py" benchmarks/bench_cuda.py --sizes 16777216 --ops-only
grep graph "$out/bench_solve.log"
# each kernel's device time (torch.profiler) in the KL and TV bounds and loss at 16M float32
step kernels 60 "$py" benchmarks/bench_cuda.py --kernel-times 16777216
grep -v "^\[" "$out/kernels.log" | head -n 40
fi
# the lm_head: the head and the fused loss at N 8192, H 4096, V 131072, bf16, against the three GEMMs alone
step lm_head_loss 240 "$py" benchmarks/bench_lm_head.py --device cuda --dtype bfloat16 --loss --reps 3 \
  --out "$out/lm_head_loss.json"
sed -n '/^$/,$p' "$out/lm_head_loss.log"
step lm_head_op 120 "$py" benchmarks/bench_lm_head.py --device cuda --dtype bfloat16 --reps 3 --cases gemms eager bandpo trl \
  --out "$out/lm_head_op.json"
sed -n '/^$/,$p' "$out/lm_head_op.log"
step lm_head_kernels 60 "$py" benchmarks/bench_lm_head.py --device cuda --dtype bfloat16 --loss --reps 1 \
  --cases gemms bandpo trl --kernel-times
grep -E "^[a-z]+: device|^  " "$out/lm_head_kernels.log"
for c in 1024 4096; do  # the fused loss at other chunk sizes (default: 1 GiB of float32 logits, 2048 tokens here)
  step "lm_head_c$c" 60 "$py" benchmarks/bench_lm_head.py --device cuda --dtype bfloat16 --loss --reps 3 \
    --cases gemms bandpo --chunk-size "$c"
  grep -E "^ *8192" "$out/lm_head_c$c.log"
done
cat "$out/steps.txt"
exit $status
