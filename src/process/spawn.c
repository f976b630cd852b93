/* spawn.c - fork and the after-fork routine. */
#include "process/process.h"
#include "os/os.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

/* Signals the supervisor catches (libev watchers). A child must not run
 * the supervisor's handlers (they would write into the supervisor's event
 * loop), so these go back to their defaults; they are never ignored while
 * the supervisor runs, so there is nothing to ask first. Ignored signals
 * (SIGPIPE) stay ignored. */
static const int caught_signals[] = {SIGTERM, SIGINT, SIGHUP, SIGCHLD};

static void child_reset_signals(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof caught_signals / sizeof caught_signals[0]; i++)
        (void)sigaction(caught_signals[i], &sa, NULL);
}

/* Renumbers keep[] to 3.. and closes the rest. With several, first copy
 * each kept descriptor above the target range, so that moving one cannot
 * overwrite another that still waits to be moved. One (the common case)
 * goes straight to its place. */
static int child_layout_fds(const proc_fork_opts *o)
{
    int tmp[PROC_KEEP_MAX];
    int base = 3 + o->nkeep;

    if (o->nkeep == 1) {
        if (o->keep[0] != 3 && dup3(o->keep[0], 3, O_CLOEXEC) < 0)
            return -errno;
        os_closefrom(4);
        return 0;
    }
    for (int i = 0; i < o->nkeep; i++) {
        tmp[i] = fcntl(o->keep[i], F_DUPFD_CLOEXEC, base);
        if (tmp[i] < 0)
            return -errno;
        base = tmp[i] + 1;
    }
    for (int i = 0; i < o->nkeep; i++) {
        if (dup3(tmp[i], 3 + i, O_CLOEXEC) < 0)
            return -errno;
    }
    os_closefrom(3 + o->nkeep);
    return 0;
}

pid_t proc_fork(const proc_fork_opts *o)
{
    sigset_t all, old;
    pid_t parent = getpid();
    pid_t pid;

    /* Block every signal across fork: a signal landing in the child before
     * it has reset its handlers would run the supervisor's handler there. */
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    pid = fork();
    if (pid < 0) {
        int e = errno;
        sigprocmask(SIG_SETMASK, &old, NULL);
        return -e;
    }
    if (pid > 0) {
        /* Both sides set the group, so it is set before either side
         * relies on it (the parent may signal the group at once). */
        (void)setpgid(pid, pid);
        sigprocmask(SIG_SETMASK, &old, NULL);
        return pid;
    }

    /* Child. */
    if (o->reset)
        proc_signals_default(o->reset);
    else
        child_reset_signals();
    (void)setpgid(0, 0);
    if (o->parent_death_signal)
        (void)os_parentdeath_signal(o->parent_death_signal, parent);
    if (child_layout_fds(o) < 0)
        _exit(111);
    if (o->fdlimit)
        (void)setrlimit(RLIMIT_NOFILE, o->fdlimit);
    if (o->slice)
        os_slice_restore(o->slice);
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    return 0;
}

int proc_signal_group(pid_t pid, int sig)
{
    if (pid <= 0)
        return -EINVAL;
    if (kill(-pid, sig) == 0)
        return 0;
    /* ESRCH: the child made a new group or session of its own. */
    if (errno == ESRCH && kill(pid, sig) == 0)
        return 0;
    return -errno;
}
