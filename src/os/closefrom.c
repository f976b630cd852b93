/* closefrom.c - close every descriptor from a number upwards (Linux). */
#include "os/os.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>

/* What getdents64 writes (glibc declares no such type). */
struct os_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* The descriptors that are open, from /proc/self/fd, read with getdents64
 * into the stack (no opendir: it allocates, and this runs in vfork
 * children). Closing while reading is fine: the directory's position is a
 * descriptor number. Returns 0, or -1 if /proc cannot be read. */
int os_closefrom_proc(int lowfd)
{
    _Alignas(8) char buf[4096];
    long n;
    int dfd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    if (dfd < 0)
        return -1;
    while ((n = syscall(SYS_getdents64, dfd, buf, sizeof buf)) > 0) {
        for (long off = 0; off < n;) {
            const struct os_dirent64 *d = (const struct os_dirent64 *)(void *)(buf + off);
            long fd = 0;
            const char *c = d->d_name;
            for (; *c >= '0' && *c <= '9' && fd < 1L << 30; c++)
                fd = fd * 10 + (*c - '0');
            if (c != d->d_name && !*c && fd >= lowfd && fd != dfd)
                (void)close((int)fd);
            off += d->d_reclen;
        }
    }
    close(dfd);
    return n < 0 ? -1 : 0;
}

/*
 * close_range(2) is one system call and needs no memory, which matters in a
 * freshly forked child of a supervisor with thousands of descriptors. On
 * kernels before 5.9 it fails with ENOSYS: the open descriptors are listed
 * from /proc instead (a walk up to the limit, which sockfork raises to the
 * hard limit, often 2^20, would cost a second per child), and only without
 * /proc is every number up to the limit closed.
 */
__attribute__((hot)) void os_closefrom(int lowfd) /* PROC_CHILD_CODE */
{
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)lowfd, ~0U, 0U) == 0)
        return;
#endif
    if (os_closefrom_proc(lowfd) == 0)
        return;
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 1 << 20)
        max = 1 << 20;
    for (long fd = lowfd; fd < max; fd++)
        (void)close((int)fd); /* EBADF for the unused ones: fine */
}
