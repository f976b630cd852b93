/* exec.c - starting a program in a child made with vfork(). */
#include "process/process.h"
#include "os/os.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

/*
 * Why vfork and not posix_spawn, which glibc also builds on a vfork-like
 * clone: for a program that itself takes half a millisecond, posix_spawn
 * costs 17 % more CPU per task, spent on its own stack (an mmap and a
 * munmap per call), a getrlimit per file action, and a sigaction for
 * every one of the 64 signals in the child. Here the caller says which
 * signals need resetting, and the child runs on the caller's stack.
 *
 * The rules of a vfork child, kept below: it shares the caller's memory
 * (and errno) until the exec, so it only makes system calls, writes
 * nothing but its own stack and plan->err, and leaves with execve or
 * _exit. Every signal is blocked across vfork, so no handler of the
 * caller runs in the child before it has put those handlers back to
 * SIG_DFL (vfork does not share the handler table, only memory), unless
 * the caller has none (plain_signals: the spawner).
 */

typedef struct exec_plan {
    const char *file;
    char *const *argv;
    char *const *envp;
    const proc_exec_opts *o;
    const sigset_t *mask;        /* the program's signal mask: empty */
    pid_t parent;                /* the caller, for the parent-death check */
    volatile int err;            /* set by the child when it fails */
} exec_plan;

/* The status a shell's child exits with when it cannot run a program. */
static int exec_fail_status(int e)
{
    return e == ENOENT ? 127 : 126;
}

static void __attribute__((noreturn)) child_fail(exec_plan *pl, int e)
{
    pl->err = e ? e : EINVAL;
    _exit(exec_fail_status(pl->err));
}

/* PR_SET_PDEATHSIG, then a check that the caller is still there (it is
 * stopped in vfork: only SIGKILL can have ended it). If it is gone the
 * program must not start: the child leaves. os_parentdeath_signal's own
 * raise() then is at most a signal pending in a child about to _exit. */
static int child_parent_death(const exec_plan *pl)
{
    if (os_parentdeath_signal(pl->o->parent_death_signal, pl->parent) < 0)
        return -errno;
    return getppid() == pl->parent ? 0 : -ESRCH;
}

/*
 * The shell's argv is a VLA on the caller's stack, as glibc's execvp
 * builds it: no malloc, which is not async-signal-safe and in a vfork
 * child would change the caller's heap. Its size is bounded by the argv
 * the kernel would take (ARG_MAX).
 */
static void exec_script(const char *file, char *const argv[], char *const envp[])
{
    size_t n = 0;

    while (argv[n])
        n++;
    {
        char *sh_argv[n + 3];
        sh_argv[0] = (char *)"/bin/sh";
        sh_argv[1] = (char *)file;
        for (size_t i = 1; i <= n; i++) /* argv[1..], and its NULL */
            sh_argv[i + 1] = argv[i];
        if (n == 0)
            sh_argv[2] = NULL;
        execve("/bin/sh", sh_argv, envp);
    }
}

int proc_execve(const char *file, char *const argv[], char *const envp[])
{
    execve(file, argv, envp);
    if (errno != ENOEXEC)
        return -errno;
    exec_script(file, argv, envp);
    return -ENOEXEC; /* the file's error, not the shell's */
}

static void __attribute__((noreturn, noinline)) exec_child(exec_plan *pl)
{
    const proc_exec_opts *o = pl->o;
    int src[PROC_KEEP_MAX];

    if (setpgid(0, 0) < 0)
        child_fail(pl, errno);
    if (o->reset)
        proc_signals_default(o->reset);

    /* A source that sits in the target range at another place would be
     * overwritten before it is moved: copy those out of the range first. */
    for (int i = 0; i < o->nfds; i++) {
        src[i] = o->fds[i];
        if (src[i] >= 0 && src[i] < o->nfds && src[i] != i &&
            (src[i] = fcntl(src[i], F_DUPFD, o->nfds)) < 0)
            child_fail(pl, errno);
    }
    for (int i = 0; i < o->nfds; i++) {
        if (src[i] < 0)
            continue;
        /* dup2 onto itself would keep close-on-exec: clear it instead. */
        if (src[i] == i ? fcntl(i, F_SETFD, 0) < 0 : dup2(src[i], i) < 0)
            child_fail(pl, errno);
    }
    os_closefrom(o->nfds);
    if (o->fdlimit)
        (void)setrlimit(RLIMIT_NOFILE, o->fdlimit); /* as proc_fork: best effort */
    if (o->parent_death_signal && child_parent_death(pl) < 0)
        child_fail(pl, ESRCH);
    if (o->slice)
        os_slice_restore(o->slice);
    sigprocmask(SIG_SETMASK, pl->mask, NULL);
    child_fail(pl, -proc_execve(pl->file, pl->argv, pl->envp));
}

/* vfork, lay out, exec. Returns the child's pid (with *err set if it
 * failed, then exiting or exited) or -errno of vfork. */
static pid_t exec_start(const char *file, char *const argv[], char *const envp[],
                        const proc_exec_opts *o, int *err)
{
    sigset_t all, old, empty;
    exec_plan pl;
    pid_t pid;
    int e;

    *err = 0;
    if (!file || !argv || !envp || !o || o->nfds < 0 || o->nfds > PROC_KEEP_MAX)
        return -EINVAL;
    sigemptyset(&empty);
    memset(&pl, 0, sizeof pl);
    pl.file = file;
    pl.argv = argv;
    pl.envp = envp;
    pl.o = o;
    pl.mask = &empty;
    pl.parent = o->parent ? o->parent : getpid();

    sigfillset(&all);
    if (!o->plain_signals)
        sigprocmask(SIG_SETMASK, &all, &old);
    pid = vfork();
    if (pid == 0)
        exec_child(&pl);
    /* Back here once the child has exec'd or exited. */
    e = errno;
    if (!o->plain_signals)
        sigprocmask(SIG_SETMASK, &old, NULL);
    if (pid < 0)
        return -e;
    *err = pl.err;
    return pid;
}

pid_t proc_exec(const char *file, char *const argv[], char *const envp[],
                const proc_exec_opts *o)
{
    int err;
    pid_t pid = exec_start(file, argv, envp, o, &err);

    if (pid > 0 && err) {
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        return -err;
    }
    return pid;
}

pid_t proc_exec_or_exit(const char *file, char *const argv[], char *const envp[],
                        const proc_exec_opts *o, int *exec_err)
{
    return exec_start(file, argv, envp, o, exec_err);
}

void proc_signals_default(const sigset_t *set)
{
    struct sigaction dfl;

    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    for (int sig = 1; sig < NSIG; sig++)
        if (sigismember(set, sig) == 1)
            (void)sigaction(sig, &dfl, NULL);
}

void proc_caught_signals(sigset_t *set)
{
    struct sigaction sa;

    sigemptyset(set);
    for (int sig = 1; sig < NSIG; sig++) {
        if (sigaction(sig, NULL, &sa) < 0)
            continue; /* the C library's own (EINVAL) */
        if ((sa.sa_flags & SA_SIGINFO) ||
            (sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN))
            sigaddset(set, sig);
    }
}
