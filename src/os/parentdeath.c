/* parentdeath.c - a child learns of its supervisor's death (Linux). */
#include "os/os.h"

#include <errno.h>
#include <signal.h>
#include <unistd.h>
#include <sys/prctl.h>

/*
 * If the supervisor is killed with SIGKILL it cannot clean up; the kernel
 * then delivers `sig` to each child so none is left running unsupervised.
 * The parent may have died between fork() and the prctl(): compare
 * getppid() with the pid the parent had before forking.
 */
__attribute__((hot)) int os_parentdeath_signal(int sig, int expected_parent) /* PROC_CHILD_CODE */
{
#ifdef PR_SET_PDEATHSIG
    if (prctl(PR_SET_PDEATHSIG, sig) < 0)
        return -errno;
    if (getppid() != expected_parent)
        (void)raise(sig);
    return 0;
#else
    (void)sig;
    (void)expected_parent;
    return -ENOSYS;
#endif
}
