/* fdlimit.c - raise the descriptor soft limit for the supervisor. */
#include "os/os.h"

#include <errno.h>

int os_fdlimit_raise(struct rlimit *saved)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -errno;
    if (saved)
        *saved = rl;
    if (rl.rlim_cur == rl.rlim_max)
        return 0;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -errno;
    return 0;
}
