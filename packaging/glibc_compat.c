/* Functions that Debian 11's libpython3.9 and libexpat call but glibc < 2.28 lacks.
 * Linked into the relinked libpython3.9.so (packaging/relink_libpython.sh) in front of
 * zig's glibc-2.17 stubs, so the library asks for nothing newer than the floor. Each one
 * goes straight to the kernel; on a kernel without the call it fails with ENOSYS, which
 * CPython and expat already handle (getrandom falls back to /dev/urandom; the os module
 * raises OSError for copy_file_range, memfd_create, preadv2 and pwritev2).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef SYS_getrandom
#define SYS_getrandom 318
#endif
#ifndef SYS_memfd_create
#define SYS_memfd_create 319
#endif
#ifndef SYS_copy_file_range
#define SYS_copy_file_range 326
#endif
#ifndef SYS_preadv2
#define SYS_preadv2 327
#endif
#ifndef SYS_pwritev2
#define SYS_pwritev2 328
#endif

#define COMPAT __attribute__((visibility("hidden")))

/* glibc 2.28: fcntl64 is fcntl on x86-64 (off_t is already 64 bits). */
COMPAT int fcntl64(int fd, int cmd, ...)
{
    va_list ap;
    void *arg;
    va_start(ap, cmd);
    arg = va_arg(ap, void *);
    va_end(ap);
    return fcntl(fd, cmd, arg);
}

/* glibc 2.25 */
COMPAT ssize_t getrandom(void *buf, size_t len, unsigned int flags)
{
    return syscall(SYS_getrandom, buf, len, flags);
}

/* glibc 2.25: explicit_bzero under _FORTIFY_SOURCE. */
COMPAT void __explicit_bzero_chk(void *dst, size_t len, size_t dstlen)
{
    (void)dstlen;
    memset(dst, 0, len);
    __asm__ __volatile__("" : : "r"(dst) : "memory");
}

/* glibc 2.27 */
COMPAT int memfd_create(const char *name, unsigned int flags)
{
    return syscall(SYS_memfd_create, name, flags);
}

/* glibc 2.27 */
COMPAT ssize_t copy_file_range(int fd_in, off_t *off_in, int fd_out, off_t *off_out,
                               size_t len, unsigned int flags)
{
    return syscall(SYS_copy_file_range, fd_in, off_in, fd_out, off_out, len, flags);
}

/* glibc 2.26: the kernel takes the offset as two longs (low, high); on x86-64 high is 0. */
COMPAT ssize_t preadv64v2(int fd, const struct iovec *iov, int iovcnt, off_t offset, int flags)
{
    return syscall(SYS_preadv2, fd, iov, iovcnt, offset, 0L, flags);
}

COMPAT ssize_t pwritev64v2(int fd, const struct iovec *iov, int iovcnt, off_t offset, int flags)
{
    return syscall(SYS_pwritev2, fd, iov, iovcnt, offset, 0L, flags);
}

/* Debian's libexpat.a is position-dependent code in one place: its entropy debug output
 * (EXPAT_ENTROPY_DEBUG=1) reads `stderr` PC-relatively, which a shared library cannot do
 * against libc's symbol. relink_libpython.sh renames that reference to this local copy. */
#include <stdio.h>
COMPAT FILE *sphincter_expat_stderr;

__attribute__((constructor)) static void sphincter_expat_stderr_init(void)
{
    sphincter_expat_stderr = stderr;
}
