#!/usr/bin/env bash
# The embeddable library without torch or Python (part of ci/test.sh): build it from the repository root,
# run its ctest (C++ API and C ABI), install it, then build and run examples/cpp_trainer out of tree against
# the installed package (find_package(bandpo)) and against the package the Python wheel ships, and compile the
# C ABI test through pkg-config.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build/embed
mkdir -p build
prefix="$PWD/build/embed-prefix"
cmake -S . -B "$build" -G Ninja -DBANDPO_TORCH=OFF -DBANDPO_CUDA=OFF -DBANDPO_BUILD_TESTS=ON \
  -DBANDPO_CPU_ISA_VARIANTS=OFF >"$build.log" 2>&1 ||
  { cat "$build.log"; exit 1; }
cmake --build "$build"
ctest --test-dir "$build" --output-on-failure
rm -rf "$prefix"
cmake --install "$build" --prefix "$prefix" >/dev/null
cmake -S examples/cpp_trainer -B build/cpp_trainer -G Ninja -DCMAKE_PREFIX_PATH="$prefix" >build/cpp_trainer.log 2>&1 ||
  { cat build/cpp_trainer.log; exit 1; }
cmake --build build/cpp_trainer
ctest --test-dir build/cpp_trainer --output-on-failure
# A C-only CMake project linking the static library (the C++ runtime comes from the package).
cmake -S tests/cpp/c_only -B build/c_only -G Ninja -DCMAKE_PREFIX_PATH="$prefix" >build/c_only.log 2>&1 ||
  { cat build/c_only.log; exit 1; }
cmake --build build/c_only
ctest --test-dir build/c_only --output-on-failure
# The same package as the Python wheel ships it (installed into the venv), CUDA kernels inside or not.
py="$PWD/${BANDPO_VENV:-.venv}/bin/python"
if [ -x "$py" ] && wheel_prefix=$("$py" -c "import bandpo; print(bandpo.cmake_prefix_path())" 2>/dev/null); then
  cmake -S examples/cpp_trainer -B build/cpp_trainer_wheel -G Ninja -DCMAKE_PREFIX_PATH="$wheel_prefix" \
    >build/cpp_trainer_wheel.log 2>&1 || { cat build/cpp_trainer_wheel.log; exit 1; }
  cmake --build build/cpp_trainer_wheel
  ctest --test-dir build/cpp_trainer_wheel --output-on-failure
  if command -v pkg-config >/dev/null; then  # README's form: the wheel's .pc, the program run as built
    PKG_CONFIG_PATH="$wheel_prefix/lib/pkgconfig" cc -std=c99 tests/cpp/test_c_abi.c \
      $(PKG_CONFIG_PATH="$wheel_prefix/lib/pkgconfig" pkg-config --cflags --libs bandpo) -lm -o build/c_abi_wheel_pkgconfig
    env -u LD_LIBRARY_PATH build/c_abi_wheel_pkgconfig
  fi
else
  echo "wheel package check: SKIPPED (no bandpo installed in ${BANDPO_VENV:-.venv})"
fi
if command -v pkg-config >/dev/null; then
  export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
  # No LD_LIBRARY_PATH and no rpath of our own: the .pc file's Libs carry the rpath.
  cc -std=c99 tests/cpp/test_c_abi.c $(pkg-config --cflags --libs bandpo) -lm -o build/c_abi_pkgconfig
  env -u LD_LIBRARY_PATH build/c_abi_pkgconfig
  # Static, through pkg-config --static: Libs.private carry the C++ runtime.
  cc -std=c99 tests/cpp/test_c_abi.c $(pkg-config --cflags bandpo) "$prefix/lib/libbandpo.a" \
    $(pkg-config --static --libs-only-l --libs-only-other bandpo | sed 's/-lbandpo//') -lm -o build/c_abi_pkgconfig_static
  build/c_abi_pkgconfig_static
else
  echo "pkg-config check: SKIPPED (no pkg-config)"
fi
echo "embed check: OK"
