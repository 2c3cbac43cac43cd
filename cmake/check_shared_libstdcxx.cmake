# Post-build check of the extension module (run with -DMODULE=<path> -DNM=<nm>): it must not export a copy of
# libstdc++. A compiler whose default links libstdc++ statically into shared objects with its symbols exported
# (seen: the /opt/gcc g++ that CXX names on the lent GPU machines) gives a module whose iostreams are bound
# partly to libtorch's copy: every error message then crashes the process instead of raising. Fail the build
# instead. A private copy (linked with --exclude-libs, as the manylinux_2_28 wheel build does: see
# BANDPO_GLIBC_STUBS) exports none of it, binds to itself only, and passes.
execute_process(COMMAND "${NM}" -C -D --defined-only "${MODULE}" OUTPUT_VARIABLE symbols RESULT_VARIABLE status)
if(NOT status EQUAL 0)
  message(WARNING "bandpo: could not list the symbols of ${MODULE} with ${NM}; skipping the libstdc++ check")
  return()
endif()
string(FIND "${symbols}" "std::codecvt<char16_t, char, __mbstate_t>::do_unshift" found)
if(NOT found EQUAL -1)
  message(FATAL_ERROR
    "bandpo: ${MODULE} contains its own copy of libstdc++ (the C++ compiler links it statically), which "
    "crashes on the first error message. Build with the system compiler, e.g. CXX=/usr/bin/g++ "
    "CUDAHOSTCXX=/usr/bin/g++ (see ci/README.md).")
endif()
