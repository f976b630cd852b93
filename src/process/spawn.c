/* spawn.c - fork and the after-fork routine. */
#include "process/process.h"
#include "os/os.h"
#include "process/childsys.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
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

/* Whether moving keep[] to 3, 4, ... in order would overwrite one that
 * still waits to be moved: one sits in the target range, not at its own
 * place. */
static PROC_CHILD_CODE int layout_collides(const proc_fork_opts *o)
{
    for (int i = 0; i < o->nkeep; i++)
        if (o->keep[i] >= 3 && o->keep[i] < 3 + o->nkeep && o->keep[i] != 3 + i)
            return 1;
    return 0;
}

/* Renumbers keep[] to 3.. and closes the rest. Each goes straight to its
 * place (the common case: the spawner receives them above the range); if
 * that would overwrite another that still waits to be moved, first each
 * is copied above the target range. */
static PROC_CHILD_CODE int child_layout_fds(const proc_fork_opts *o)
{
    int src[PROC_KEEP_MAX];
    int base = 3 + o->nkeep;
    int detour = layout_collides(o);

    for (int i = 0; i < o->nkeep; i++) {
        src[i] = o->keep[i];
        if (detour && (src[i] = fcntl(o->keep[i], F_DUPFD_CLOEXEC, base)) < 0)
            return -errno;
        if (detour)
            base = src[i] + 1;
    }
    for (int i = 0; i < o->nkeep; i++) {
        if (src[i] != 3 + i && dup3(src[i], 3 + i, O_CLOEXEC) < 0)
            return -errno;
    }
    if (childsys_close_from(3 + o->nkeep) < 0)
        os_closefrom(3 + o->nkeep);
    return 0;
}

/* The child's half of proc_fork: the after-fork routine. */
static PROC_CHILD_CODE void child_setup(const proc_fork_opts *o, pid_t parent)
{
    if (!o->plain_signals) {
        if (o->reset)
            proc_signals_default(o->reset);
        else
            child_reset_signals();
    }
    (void)childsys_own_group();
    if (o->parent_death_signal)
        (void)childsys_parent_death(o->parent_death_signal, parent);
    if (child_layout_fds(o) < 0)
        _exit(111);
    if (o->fdlimit)
        (void)setrlimit(RLIMIT_NOFILE, o->fdlimit);
    if (o->slice)
        os_slice_restore(o->slice);
    /* Each C library function the child calls may be one more page of
     * code to fault in (childsys.h). One thread: no other mask to mind. */
    (void)childsys_unblock_all();
}

PROC_CHILD_CODE pid_t proc_fork(const proc_fork_opts *o)
{
    sigset_t all, old;
    pid_t parent = o->parent;
    pid_t pid;

    if (o->parent_death_signal && !parent)
        parent = getpid();
    /* Block every signal across fork: a signal landing in the child before
     * it has reset its handlers would run the supervisor's handler there.
     * A caller with plain_signals has no such handler. */
    sigfillset(&all);
    if (!o->plain_signals)
        sigprocmask(SIG_SETMASK, &all, &old);
    pid = fork();
    if (pid < 0) {
        int e = errno;
        if (!o->plain_signals)
            sigprocmask(SIG_SETMASK, &old, NULL);
        return -e;
    }
    if (pid == 0) {
        child_setup(o, parent);
        return 0;
    }
    /* Both sides set the group, so it is set before either side relies
     * on it (the parent may signal the group at once). */
    (void)setpgid(pid, pid);
    if (!o->plain_signals)
        sigprocmask(SIG_SETMASK, &old, NULL);
    return pid;
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
