/*
 * guard.c - the pool's guard (groups.h): a process that takes the tasks'
 * process groups down if the pool dies without doing it.
 *
 * The pool starts its tasks itself (vfork and exec, no process in between,
 * for speed), each in a group of its own, so nothing follows them if the
 * pool is killed with SIGKILL. The guard is forked once when the run
 * starts. What it must know, the groups running now, is in a table the
 * pool writes and the guard reads only after the pool is gone: an earlier
 * design sent each start and reap over a socket, and a guard that was slow
 * or stopped then blocked the pool (a few hundred small records fill a
 * socket's buffer), and a failed send read as EOF took a healthy run's
 * tasks down. Now the pool never waits for the guard nor writes to it.
 */
#include "process/groups.h"
#include "process/process.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/wait.h>

/* Nothing but the pipe: no stdio held open, so a reader of the pool's
 * output sees its end when the pool exits, not when the guard does. */
static void detach_stdio(void)
{
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);

    if (fd < 0)
        return;
    for (int i = 0; i <= 2; i++)
        (void)dup2(fd, i);
    if (fd > 2)
        close(fd);
}

/* Blocks until the pool's end of the pipe is closed: nobody writes to it,
 * so any return but EINTR means EOF (or a pipe that cannot be read, which
 * is as good as the pool being gone). */
static void wait_eof(int fd)
{
    char b;
    ssize_t n;

    while ((n = read(fd, &b, 1)) != 0)
        if (n < 0 && errno != EINTR)
            return;
}

static void __attribute__((noreturn)) guard_main(int fd, _Atomic pid_t *table, unsigned nslots,
                                                 double grace_s)
{
    proc_groups g;

    detach_stdio();
    /* A Ctrl-C or a hangup of the terminal reaches the pool's whole
     * process group, the guard included: it must outlive the pool. */
    signal(SIGINT, SIG_IGN);
    signal(SIGQUIT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    wait_eof(fd);
    proc_groups_init(&g, nslots);
    for (unsigned i = 0; i < nslots; i++) {
        pid_t pg = atomic_load_explicit(&table[i], memory_order_acquire);
        if (pg > 0)
            (void)proc_groups_add(&g, pg); /* at most nslots: room for each */
    }
    proc_groups_takedown(&g, grace_s, NULL, NULL);
    _exit(0);
}

static size_t table_len(unsigned nslots)
{
    return (nslots ? nslots : 1) * sizeof(_Atomic pid_t);
}

int proc_guard_start(proc_guard *g, unsigned nslots, double grace_s, const sigset_t *reset)
{
    proc_fork_opts po;
    _Atomic pid_t *table;
    int p[2], rc;
    pid_t pid;

    g->pid = 0;
    g->fd = -1;
    g->table = NULL;
    g->nslots = 0;
    /* Anonymous shared memory starts zeroed: every slot empty. */
    table = mmap(NULL, table_len(nslots), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                 -1, 0);
    if (table == MAP_FAILED)
        return -errno;
    if (pipe2(p, O_CLOEXEC) < 0) {
        rc = -errno;
        goto fail;
    }
    memset(&po, 0, sizeof po);
    po.keep[0] = p[0];
    po.nkeep = 1;
    po.reset = reset;
    /* No parent-death signal: outliving the pool is its purpose. */
    pid = proc_fork(&po);
    if (pid == 0)
        guard_main(3, table, nslots, grace_s);
    close(p[0]);
    if (pid < 0) {
        close(p[1]);
        rc = (int)pid;
        goto fail;
    }
#ifdef MADV_DONTFORK
    /* The guard has its mapping; the pool's later children (workers) need
     * none, and a fork that copied it could not write it by mistake. */
    (void)madvise(table, table_len(nslots), MADV_DONTFORK);
#endif
    g->pid = pid;
    g->fd = p[1];
    g->table = table;
    g->nslots = nslots;
    return 0;
fail:
    (void)munmap(table, table_len(nslots));
    return rc;
}

void proc_guard_watch(proc_guard *g, unsigned slot, pid_t pg)
{
    if (g->table && slot < g->nslots && pg > 0)
        atomic_store_explicit(&g->table[slot], pg, memory_order_release);
}

void proc_guard_forget(proc_guard *g, unsigned slot)
{
    if (g->table && slot < g->nslots)
        atomic_store_explicit(&g->table[slot], 0, memory_order_release);
}

void proc_guard_stop(proc_guard *g)
{
    if (g->fd >= 0) {
        close(g->fd);
        g->fd = -1;
    }
    if (g->pid > 0) {
        siginfo_t si;
        /* A stopped guard would never read its EOF, and we would wait for
         * ever: continue it, if it is still our unreaped child (then the
         * pid is still its). */
        memset(&si, 0, sizeof si);
        if (waitid(P_PID, (id_t)g->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == 0)
            (void)kill(g->pid, SIGCONT);
        /* ECHILD: the program reaped it with a waitpid(-1) of its own. */
        while (waitpid(g->pid, NULL, 0) < 0 && errno == EINTR)
            ;
    }
    g->pid = 0;
    if (g->table)
        (void)munmap(g->table, table_len(g->nslots));
    g->table = NULL;
    g->nslots = 0;
}
