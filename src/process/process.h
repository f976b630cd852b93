/*
 * process.h - forking a child the one audited way.
 */
#ifndef SF_PROCESS_H
#define SF_PROCESS_H

#include <signal.h>
#include <sys/resource.h>
#include <sys/types.h>

#include "os/os.h"

/* Descriptors a child keeps: a prefork worker's listeners (64 at most), its
 * channel, and the spawner's shared one (spawner.h: SPAWN_FDS_MAX + 1). */
#define PROC_KEEP_MAX 68

/*
 * Marks the code every forked child runs from fork() to its handler. A
 * fork copies no page-table entries for the program's code: the child
 * faults in each 64 KiB of it that it touches (fault-around), a page
 * fault that costs tens of microseconds on a VM. The compiler puts hot
 * functions in .text.hot, which the linker keeps together near the
 * start of .text, so that path is one or two faults, not one per file
 * (docs/design.md, "What a fork costs").
 */
#define PROC_CHILD_CODE __attribute__((hot))

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
    /* Scheduling attributes the child puts back (os_slice_restore); NULL
     * for none. */
    const os_sched_saved *slice;
    /* The signals put back to SIG_DFL in the child; NULL: the supervisor's
     * own (SIGTERM, SIGINT, SIGHUP, SIGCHLD). */
    const sigset_t *reset;
    /* The caller catches no signal its children must not handle and
     * ignores none they must get back (the spawner): the child only
     * empties its signal mask (reset is not looked at), and the parent
     * does not block signals across the fork, since no handler of the
     * caller's could run in the child. */
    int plain_signals;
    /* The caller's pid, if it keeps it; 0: proc_fork asks getpid() (for
     * parent_death_signal's check). */
    pid_t parent;
} proc_fork_opts;

/*
 * Forks. In the parent returns the child's pid, or -errno (-EAGAIN,
 * -ENOMEM) with nothing changed. In the child returns 0, after the
 * after-fork routine: caught signals back to their defaults (opts->reset,
 * or the supervisor's; ignored ones stay ignored), the signal mask empty, a process group of its own, the
 * descriptors laid out as opts says. The child must leave with _exit().
 */
pid_t proc_fork(const proc_fork_opts *opts);

/* How proc_exec lays out the child. */
typedef struct proc_exec_opts {
    /* What the child gets as descriptors 0 .. nfds-1: fds[i] becomes i
     * (without close-on-exec); -1 leaves i as the parent has it. Every
     * descriptor from nfds up is closed. */
    int fds[PROC_KEEP_MAX];
    int nfds;
    /* Signals put back to SIG_DFL in the child before the exec, besides
     * the ones exec itself resets (every caught one): the caller's caught
     * signals (proc_caught_signals), so none of its handlers can run in
     * the child while it shares the caller's memory, and any ignored one
     * that the program should not inherit ignored (SIGPIPE). */
    const sigset_t *reset;
    /* Scheduling attributes put back just before the exec
     * (os_slice_restore); NULL for none. */
    const os_sched_saved *slice;
    /* The child's RLIMIT_NOFILE, set after the descriptors are laid out;
     * NULL leaves the caller's. */
    const struct rlimit *fdlimit;
    /* Signal sent to the program if the caller dies (PR_SET_PDEATHSIG,
     * which survives the exec); 0 for none. */
    int parent_death_signal;
    /* The caller catches no signal (the spawner): no handler of its could
     * run in the child while it shares the caller's memory, so signals are
     * not blocked around the vfork. */
    int plain_signals;
    /* The caller's pid, if it keeps it; 0: asked with getpid(). */
    pid_t parent;
} proc_exec_opts;

/*
 * Starts file with argv and envp in a child of its own process group,
 * with an empty signal mask. The child is made with vfork(): it borrows
 * the caller's memory until the exec, so nothing is copied and the call
 * costs the same however big the caller is. Returns the pid once the
 * program is exec'd, or -errno: of vfork, or of a layout or an exec that
 * failed (that child is already reaped).
 */
pid_t proc_exec(const char *file, char *const argv[], char *const envp[],
                const proc_exec_opts *opts);

/*
 * As proc_exec, for a caller that treats every start alike, whatever
 * becomes of the program: a child whose layout or exec fails is not
 * reaped but exits as a shell's child would, 127 when the file is not
 * there (ENOENT), 126 for any other error; its pid is returned all the
 * same, with the error in *exec_err (0 when the program runs). Returns
 * -errno only when vfork itself failed (*exec_err is then 0).
 */
pid_t proc_exec_or_exit(const char *file, char *const argv[], char *const envp[],
                        const proc_exec_opts *opts, int *exec_err);

/*
 * execve(file, argv, envp); a file the kernel cannot run (ENOEXEC: a
 * script without a "#!" line) is run by /bin/sh as execvp does:
 * /bin/sh FILE ARGS... Returns only on failure: -errno (-ENOEXEC when
 * /bin/sh cannot be exec'd either). Async-signal-safe and allocates
 * nothing (the shell's argv is on the stack): usable after fork and in
 * proc_exec's vfork child.
 */
int proc_execve(const char *file, char *const argv[], char *const envp[]);

/*
 * The file execvp would exec for name, written to buf (size bytes), as
 * execvp searches: a name holding a '/' is used as is; otherwise each
 * entry of path in turn (an empty entry, leading, trailing or between two
 * colons, or path "" itself, is the current directory; path NULL is
 * "/bin:/usr/bin") for a regular file we may execute. Done once in the
 * caller, where execvp would try execve in every directory for every
 * start. Returns 0, -ENOENT (name empty, or nothing of that name),
 * -EACCES (a file or directory of that name was found but none we may
 * execute, or a directory of path we may not search), -ENAMETOOLONG (a
 * name with a '/' longer than buf, or nothing found and some entry too
 * long for buf), -EINVAL.
 */
int proc_path_find(const char *name, const char *path, char *buf, size_t size);

/* The signals that have a handler now, into set (emptied first). */
void proc_caught_signals(sigset_t *set);
/* Puts every signal of set back to SIG_DFL. Async-signal-safe. */
void proc_signals_default(const sigset_t *set);

/* Sends sig to the child's process group, or to the child alone if it has
 * left its group. Only for a child not yet reaped. Returns 0 or -errno. */
int proc_signal_group(pid_t pid, int sig);

#endif
