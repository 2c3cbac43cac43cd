#!/usr/bin/env bash
# Makes a folder of glibc 2.28's stub libraries for linking the wheel's shared objects (manylinux_2_28):
#   bash ci/glibc_stubs.sh PYTHON DIR      (PYTHON: an interpreter whose pip may install the ziglang package)
# zig generates, for any glibc version, stub libc.so.6, libm.so.6, libpthread.so.0, ... exporting exactly that
# version's symbols with their symbol versions; linked against them, a library can need no newer symbol (the
# link fails instead, with -z defs). The host's g++ still compiles and links (GCC 12's libstdc++ statically:
# see BANDPO_GLIBC_STUBS in CMakeLists.txt). libc.so here is a linker script, as glibc's own, that adds the
# host's libc_nonshared.a (a few small static functions, e.g. atexit). Prints DIR.
set -euo pipefail
py="$1" dir="$2"
version=2.28
if [ -f "$dir/libc.so.6" ] && [ "$(cat "$dir/version" 2>/dev/null)" = "$version" ]; then echo "$dir"; exit 0; fi
"$py" -m pip install -q "ziglang>=0.13" 2>&1 | { grep -v "^WARNING: Location" || true; } >&2
rm -rf "$dir" && mkdir -p "$dir/cache" && dir=$(cd "$dir" && pwd)
echo 'int bandpo_stub_probe(void) { return 0; }' >"$dir/probe.c"
ZIG_GLOBAL_CACHE_DIR="$dir/cache" ZIG_LOCAL_CACHE_DIR="$dir/cache" "$py" -m ziglang cc \
  -target "x86_64-linux-gnu.$version" -shared -o "$dir/probe.so" "$dir/probe.c" -lm -lpthread -ldl -lrt >&2
libc=$(find "$dir/cache" -name libc.so.6 | head -1)
[ -n "$libc" ] || { echo "glibc_stubs: zig made no libc.so.6 stub" >&2; exit 1; }
stubs=$(dirname "$libc")
for lib in libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2 librt.so.1; do cp "$stubs/$lib" "$dir/"; done
cp "$stubs/libld.so.2" "$dir/ld-linux-x86-64.so.2"   # zig's name; its SONAME is ld-linux-x86-64.so.2
nonshared=$(gcc -print-file-name=libc_nonshared.a)
printf 'OUTPUT_FORMAT(elf64-x86-64)\nGROUP ( %s/libc.so.6 %s AS_NEEDED ( %s/ld-linux-x86-64.so.2 ) )\n' \
  "$dir" "$nonshared" "$dir" >"$dir/libc.so"
for pair in m:6 pthread:0 dl:2 rt:1; do ln -sf "lib${pair%%:*}.so.${pair##*:}" "$dir/lib${pair%%:*}.so"; done
rm -rf "$dir/cache" "$dir/probe.c" "$dir/probe.so"
echo "$version" >"$dir/version"
echo "$dir"
