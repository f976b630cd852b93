/*
 * process.h - forking a child the one audited way.
 */
#ifndef SF_PROCESS_H
#define SF_PROCESS_H

#include <sys/resource.h>
#include <sys/types.h>

#define PROC_KEEP_MAX 4

typedef struct proc_fork_opts {
    /* Descriptors the child keeps, besides 0, 1 and 2. In the child they
     * are renumbered 3, 4, ... in this order, still close-on-exec; every
     * other descriptor is closed. */
    int keep[PROC_KEEP_MAX];
    int nkeep;
    /* Give the child this RLIMIT_NOFILE (the one the supervisor started
     * with before raising its own); NULL leaves it. */
    const struct rlimit *fdlimit;
    /* Signal sent to the child if the supervisor dies; 0 for none. */
    int parent_death_signal;
} proc_fork_opts;

/*
 * Forks. In the parent returns the child's pid, or -errno (-EAGAIN,
 * -ENOMEM) with nothing changed. In the child returns 0, after the
 * after-fork routine: caught signals back to their defaults (ignored ones
 * stay ignored), the signal mask empty, a process group of its own, the
 * descriptors laid out as opts says. The child must leave with _exit().
 */
pid_t proc_fork(const proc_fork_opts *opts);

/* Sends sig to the child's process group, or to the child alone if it has
 * left its group. Only for a child not yet reaped. Returns 0 or -errno. */
int proc_signal_group(pid_t pid, int sig);

#endif
