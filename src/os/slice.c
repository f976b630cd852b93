/* slice.c - a short scheduler slice for a dispatching thread (Linux). */
#include "os/os.h"

#include <errno.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/sched.h>
#include <linux/sched/types.h>

/*
 * Why: a pool of -j 8 on two CPUs has eight children and the pool's thread
 * runnable at once, and the fair scheduler makes a woken pool wait out a
 * child's slice (1.4 ms on two CPUs) before it can reap and start the next
 * task, so CPUs go idle. Since Linux 6.12 a thread may ask for a shorter
 * slice (sched_attr.sched_runtime, 0.1 ms to 100 ms), which also lets it
 * preempt on wakeup. Children inherit it, and that is wanted up to the
 * exec: a vfork child that runs at once is a parent blocked for less time.
 * So the pool's children put the saved attributes back themselves, just
 * before they exec (os_slice_restore: two system calls). Older
 * kernels ignore the slice; kernels before 3.14 have no sched_setattr:
 * nothing changes.
 */
#define SHORT_SLICE_NS 100000ULL

int os_slice_short(os_sched_saved *saved)
{
    struct sched_attr a;

    memset(saved, 0, sizeof *saved);
    memset(&a, 0, sizeof a);
    if (syscall(SYS_sched_getattr, 0, &a, (unsigned)sizeof a, 0U) < 0)
        return -errno;
    if (a.sched_policy != SCHED_NORMAL || a.sched_runtime <= SHORT_SLICE_NS)
        return 0; /* another policy, or a short slice already */
    saved->runtime = a.sched_runtime;
    a.size = sizeof a;
    a.sched_runtime = SHORT_SLICE_NS;
    if (syscall(SYS_sched_setattr, 0, &a, 0U) < 0)
        return -errno;
    saved->set = 1;
    return 1;
}

/*
 * Puts back only the slice: the nice value and the policy are read again
 * and written unchanged, so a renice or a chrt while the pool ran stands
 * (writing the saved nice back could also fail with EPERM and then restore
 * nothing). Two system calls that write nothing but the stack: safe in a
 * vfork child.
 */
void os_slice_restore(const os_sched_saved *saved)
{
    struct sched_attr a;

    if (!saved->set)
        return;
    memset(&a, 0, sizeof a);
    if (syscall(SYS_sched_getattr, 0, &a, (unsigned)sizeof a, 0U) < 0)
        return;
    if (a.sched_policy != SCHED_NORMAL && a.sched_policy != SCHED_BATCH)
        return; /* no slice of the fair class to put back */
    a.size = sizeof a;
    a.sched_runtime = saved->runtime;
    (void)syscall(SYS_sched_setattr, 0, &a, 0U);
}
