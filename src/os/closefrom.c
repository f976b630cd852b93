/* closefrom.c - close every descriptor from a number upwards (Linux). */
#include "os/os.h"

#include <dirent.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>

/*
 * close_range(2) is one system call and needs no memory, which matters in a
 * freshly forked child of a supervisor with thousands of descriptors. On
 * kernels before 5.9 it fails with ENOSYS and we walk the descriptor table
 * up to the limit instead (no opendir: it allocates).
 */
void os_closefrom(int lowfd)
{
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)lowfd, ~0U, 0U) == 0)
        return;
#endif
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 1 << 20)
        max = 1 << 20;
    for (long fd = lowfd; fd < max; fd++)
        (void)close((int)fd); /* EBADF for the unused ones: fine */
}
