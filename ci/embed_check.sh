#!/usr/bin/env bash
# The embeddable library without torch or Python (part of ci/test.sh): build it from the repository root,
# run its ctest (C++ API and C ABI), install it, then build and run examples/cpp_trainer out of tree against
# the installed package (find_package(bandpo)) and against the package the Python wheel ships, and compile the
# C ABI test through pkg-config.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build/embed
prefix="$PWD/build/embed-prefix"
cmake -S . -B "$build" -G Ninja -DBANDPO_TORCH=OFF -DBANDPO_CUDA=OFF -DBANDPO_BUILD_TESTS=ON >"$build.log" 2>&1 ||
  { cat "$build.log"; exit 1; }
cmake --build "$build"
ctest --test-dir "$build" --output-on-failure
rm -rf "$prefix"
cmake --install "$build" --prefix "$prefix" >/dev/null
cmake -S examples/cpp_trainer -B build/cpp_trainer -G Ninja -DCMAKE_PREFIX_PATH="$prefix" >build/cpp_trainer.log 2>&1 ||
  { cat build/cpp_trainer.log; exit 1; }
cmake --build build/cpp_trainer
ctest --test-dir build/cpp_trainer --output-on-failure
# The same package as the Python wheel ships it (ci/setup.sh installed it into the venv).
py="$PWD/${BANDPO_VENV:-.venv}/bin/python"
if [ -x "$py" ] && wheel_prefix=$("$py" -c "import bandpo; print(bandpo.cmake_prefix_path())" 2>/dev/null); then
  cmake -S examples/cpp_trainer -B build/cpp_trainer_wheel -G Ninja -DCMAKE_PREFIX_PATH="$wheel_prefix" \
    >build/cpp_trainer_wheel.log 2>&1 || { cat build/cpp_trainer_wheel.log; exit 1; }
  cmake --build build/cpp_trainer_wheel
  ctest --test-dir build/cpp_trainer_wheel --output-on-failure
else
  echo "wheel package check: SKIPPED (no bandpo installed in ${BANDPO_VENV:-.venv})"
fi
if command -v pkg-config >/dev/null; then
  export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
  cc -std=c99 tests/cpp/test_c_abi.c $(pkg-config --cflags --libs bandpo) -lm -Wl,-rpath,"$prefix/lib" -o build/c_abi_pkgconfig
  build/c_abi_pkgconfig
else
  echo "pkg-config check: SKIPPED (no pkg-config)"
fi
echo "embed check: OK"
