/*
 * guard.c - the pool's guard (groups.h): a process that takes the tasks'
 * process groups down if the pool dies without doing it.
 *
 * The pool starts its tasks itself (vfork and exec, no process in between,
 * for speed), each in a group of its own, so nothing follows them if the
 * pool is killed with SIGKILL. The guard is forked once when the run
 * starts. The pool sends it each group's id as the task starts (+id) and
 * before its leader is reaped (-id), four bytes each, on a socket only the
 * pool holds; when that socket reaches EOF, the guard takes down the
 * groups it still knows. Being told before the reap matters: until then
 * the zombie leader keeps the id from being reused.
 */
#include "process/groups.h"
#include "process/process.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define GUARD_READ 4096 /* a multiple of the record */
/* Between reads the guard sleeps, so that the pool's sends pile up and are
 * read a batch at a time: a wakeup per task would take CPU from the tasks.
 * The socket holds far more than a run sends in that time. */
#define GUARD_NAP_MS 10

/* Applies whole records; returns the bytes of a partial one left at the end. */
static size_t apply(proc_groups *g, const unsigned char *buf, size_t len)
{
    size_t off = 0;

    for (; len - off >= sizeof(int32_t); off += sizeof(int32_t)) {
        int32_t v;
        memcpy(&v, buf + off, sizeof v);
        if (v > 0)
            (void)proc_groups_add(g, v); /* past max: that one is not guarded */
        else if (v < 0 && v != INT32_MIN)
            proc_groups_del(g, -v);
    }
    return len - off;
}

/* Nothing but the socket: no stdio held open, so a reader of the pool's
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

static void __attribute__((noreturn)) guard_main(int sock, unsigned max, double grace_s)
{
    unsigned char buf[GUARD_READ];
    size_t have = 0, total;
    proc_groups g;
    ssize_t n;

    detach_stdio();
    proc_groups_init(&g, max);
    for (;;) {
        n = read(sock, buf + have, sizeof buf - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break; /* EOF: the pool is gone or done */
        total = have + (size_t)n;
        have = apply(&g, buf, total);
        memmove(buf, buf + total - have, have);
        (void)poll(NULL, 0, GUARD_NAP_MS);
    }
    proc_groups_takedown(&g, grace_s, NULL, NULL);
    _exit(0);
}

int proc_guard_start(proc_guard *g, unsigned max_groups, double grace_s, const sigset_t *reset)
{
    proc_fork_opts po;
    int sv[2];
    pid_t pid;

    g->pid = 0;
    g->fd = -1;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    memset(&po, 0, sizeof po);
    po.keep[0] = sv[1];
    po.nkeep = 1;
    po.reset = reset;
    /* No parent-death signal: outliving the pool is its purpose. */
    pid = proc_fork(&po);
    if (pid == 0)
        guard_main(3, max_groups, grace_s);
    close(sv[1]);
    if (pid < 0) {
        close(sv[0]);
        return (int)pid;
    }
    g->pid = pid;
    g->fd = sv[0];
    return 0;
}

static void tell(proc_guard *g, int32_t v)
{
    ssize_t n;

    if (g->fd < 0)
        return;
    do
        n = send(g->fd, &v, sizeof v, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof v) {
        /* Gone (killed by somebody): the run goes on unguarded. */
        close(g->fd);
        g->fd = -1;
    }
}

void proc_guard_watch(proc_guard *g, pid_t pg)
{
    if (pg > 0)
        tell(g, (int32_t)pg);
}

void proc_guard_forget(proc_guard *g, pid_t pg)
{
    if (pg > 0)
        tell(g, -(int32_t)pg);
}

void proc_guard_stop(proc_guard *g)
{
    if (g->fd >= 0) {
        close(g->fd);
        g->fd = -1;
    }
    /* ECHILD: the program reaped it with a waitpid(-1) of its own. */
    if (g->pid > 0)
        while (waitpid(g->pid, NULL, 0) < 0 && errno == EINTR)
            ;
    g->pid = 0;
}
