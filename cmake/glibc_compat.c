/* Linked into libbandpo.so and _C only when they are built against an older glibc's stub libraries
 * (BANDPO_GLIBC_STUBS, ci/wheel.sh): GCC 12's static libstdc++ was built against a newer glibc and refers to
 * a few symbols that glibc 2.28 does not export. Each is defined here, hidden, so the link resolves it inside
 * the library and the shipped binaries need nothing newer than the stubs' glibc. */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define BANDPO_HIDDEN __attribute__((visibility("hidden")))

/* glibc 2.32: libstdc++ skips atomic reference counts while it reads nonzero. 0 keeps them always atomic:
 * correct in every process, single-threaded or not. */
BANDPO_HIDDEN char __libc_single_threaded = 0;

/* glibc 2.33 made fstat64 an exported function; 2.28 has only __fxstat64 (libstdc++'s file streams use it).
 * The system call is what both do. */
BANDPO_HIDDEN int fstat64(int fd, struct stat64* buf) {
  long r = syscall(SYS_fstat, fd, buf);
  return r < 0 ? -1 : (int)r;
}

/* glibc 2.36: std::random_device's default source (bandpo itself draws no random numbers). getrandom(2)
 * (Linux 3.17) gives the same bytes; retried on EINTR; any other failure aborts rather than return a
 * predictable value. */
BANDPO_HIDDEN uint32_t arc4random(void) {
  uint32_t value = 0;
  while (syscall(SYS_getrandom, &value, sizeof value, 0) != (long)sizeof value) {
    if (errno != EINTR) abort();
  }
  return value;
}
