/* spawner.c - see spawner.h. The spawner's side runs in its own process. */
#include "process/spawner.h"
#include "channel/fdpass.h"
#include "process/groups.h"
#include "process/process.h"
#include "os/os.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define SPAWNER_SOCKBUF (4 * 1024 * 1024) /* room for thousands of requests */
#define SPAWNER_BATCH 64                   /* requests taken per wakeup */

/* ------------------------------------------------------ both sides */

int spawner_send(int sock, const spawn_req *req, const int *fds, int nfds)
{
    struct iovec iov = {(void *)req, offsetof(spawn_req, blob) + req->blob_len};
    ssize_t n;

    if (nfds < 0 || nfds > SPAWN_FDS_MAX || req->blob_len > SPAWN_BLOB_MAX)
        return -EINVAL;
    n = fdpass_send(sock, &iov, 1, fds, nfds, MSG_DONTWAIT);
    return n < 0 ? (int)n : 0;
}

int spawner_recv(int sock, spawn_msg *msgs, int max)
{
    ssize_t n;

    do
        n = recv(sock, msgs, sizeof *msgs * (size_t)max, MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    if (n == 0)
        return 0;
    return n % (ssize_t)sizeof *msgs == 0 ? (int)(n / (ssize_t)sizeof *msgs) : -EPROTO;
}

/* ---------------------------------------------------- the spawner */

static int sigchld_pipe[2] = {-1, -1};

/* Async-signal-safe: one byte says "reap"; a full pipe already says so. */
static void on_sigchld(int sig)
{
    int saved = errno;
    char b = 0;
    (void)sig;
    (void)!write(sigchld_pipe[1], &b, 1);
    errno = saved;
}

/* Answers wait here and go out together, one message for a whole wakeup's
 * worth: a system call each way per answer was a good part of a
 * connection's cost. Order is kept: a child's STARTED before its EXITED. */
/* In memory children do not get: the spawner writes it after every fork,
 * and a page it shares with a child would be copied each time. */
static spawn_msg *outbox; /* SPAWN_MSGS_MAX */
static int nout;
/* Our children not yet reaped, each the leader of its group: what we take
 * down if the supervisor dies. Its table is in memory children do not get
 * (proc_groups uses os_nofork). */
static proc_groups live;
static double kill_grace;

/* The takedown's tick: reap whatever has exited, so that a zombie leader
 * does not keep its group looking alive. Nobody wants the statuses now. */
static void reap_quietly(void *arg)
{
    (void)arg;
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
}

/*
 * The supervisor is gone: its end of our socket is closed, by exit or by
 * SIGKILL. Its children are ours to end: TERM, the kill grace, KILL, each
 * child's whole group. (Their parent-death signal is for our own death:
 * without this a child that ignores SIGTERM, and every grandchild, would
 * run on holding its client's connection.)
 */
static void __attribute__((noreturn)) supervisor_gone(void)
{
    proc_groups_takedown(&live, kill_grace, reap_quietly, NULL);
    _exit(0);
}

/* The supervisor reads what we send without ever blocking on us, so a
 * blocking send only waits for it to catch up. */
static void flush_answers(int sock)
{
    while (nout > 0 && send(sock, outbox, sizeof outbox[0] * (size_t)nout, MSG_NOSIGNAL) < 0) {
        if (errno != EINTR)
            supervisor_gone();
    }
    nout = 0;
}

static void tell(int sock, uint32_t kind, uint32_t cookie, pid_t pid, int value)
{
    spawn_msg m = {kind, cookie, (int32_t)pid, value};

    if (nout == SPAWN_MSGS_MAX)
        flush_answers(sock);
    outbox[nout++] = m;
}

static void reap(int sock)
{
    char drain[64];
    int wstatus;
    pid_t pid;

    while (read(sigchld_pipe[0], drain, sizeof drain) > 0)
        ;
    while ((pid = waitpid(-1, &wstatus, WNOHANG)) > 0) {
        proc_groups_del(&live, pid);
        tell(sock, SPAWN_MSG_EXITED, 0, pid, wstatus);
    }
}

/* Signals only a child of ours that has not been reaped: we are its only
 * reaper and single-threaded, so the pid cannot change hands in between. */
static void do_signal(const spawn_req *req)
{
    siginfo_t si;

    memset(&si, 0, sizeof si);
    if (req->pid <= 0 ||
        waitid(P_PID, (id_t)req->pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0)
        return;
    (void)proc_signal_group(req->pid, req->sig);
}

/* A forked child: a copy of us runs the child function. */
static pid_t start_forked(const spawner_opts *o, const spawn_req *req, const int *fds, int nfds)
{
    proc_fork_opts po;
    pid_t pid;

    memset(&po, 0, sizeof po);
    for (int i = 0; i < nfds; i++)
        po.keep[i] = fds[i];
    po.nkeep = nfds;
    po.fdlimit = o->fdlimit;
    po.parent_death_signal = SIGTERM;
    pid = proc_fork(&po);
    if (pid == 0) {
        o->child(req->blob, req->blob_len, nfds);
        _exit(111); /* child functions do not return */
    }
    return pid;
}

/* The signals an exec'd child puts back to SIG_DFL before its exec: every
 * one we catch (no handler of ours may run in a child sharing our memory;
 * the exec would reset them anyway), SIGINT, which we ignore and a forked
 * child gets back too (proc_fork), and SIGPIPE (see spawner.h). Ignored
 * signals otherwise stay ignored, as across fork and exec. */
static sigset_t exec_reset;

/* An exec'd child: vfork+execve, nothing of ours copied. *exec_err is the
 * exec's errno if it failed (the child then exits 126 or 127). */
static pid_t start_exec(const spawner_opts *o, const spawn_exec *ex, int *exec_err)
{
    proc_exec_opts eo;

    memset(&eo, 0, sizeof eo);
    memcpy(eo.fds, ex->fds, sizeof eo.fds);
    eo.nfds = ex->nfds;
    eo.reset = &exec_reset;
    eo.fdlimit = o->fdlimit;
    eo.parent_death_signal = SIGTERM;
    return proc_exec_or_exit(ex->file, ex->argv, ex->envp, &eo, exec_err);
}

static void do_fork(int sock, const spawner_opts *o, const spawn_req *req, const int *fds,
                    int nfds)
{
    spawn_exec ex;
    int rc, kind = 0, exec_err = 0;
    pid_t pid;

    /* Room in `live` first, so that a child we start is always in it. */
    if ((rc = proc_groups_reserve(&live)) < 0) {
        tell(sock, SPAWN_MSG_FAILED, req->cookie, 0, rc == -ENOSPC ? EAGAIN : -rc);
        return;
    }
    if (o->plan) {
        memset(&ex, 0, sizeof ex);
        kind = o->plan(req->blob, req->blob_len, fds, nfds, &ex);
        if (kind < 0 || (kind == 1 && (ex.nfds < 0 || ex.nfds > PROC_KEEP_MAX))) {
            tell(sock, SPAWN_MSG_FAILED, req->cookie, 0, kind < 0 ? -kind : EINVAL);
            return;
        }
    }
    pid = kind == 1 ? start_exec(o, &ex, &exec_err) : start_forked(o, req, fds, nfds);
    if (pid < 0) {
        tell(sock, SPAWN_MSG_FAILED, req->cookie, 0, (int)-pid);
        return;
    }
    (void)proc_groups_add(&live, pid); /* reserved above */
    tell(sock, SPAWN_MSG_STARTED, req->cookie, pid, exec_err);
}

/* Takes one request. Returns 0, or -1 when the supervisor is gone. */
static int serve_one(int sock, const spawner_opts *o)
{
    spawn_req req;
    int fds[SPAWN_FDS_MAX], nfds, lost;
    ssize_t n = fdpass_recv(sock, &req, sizeof req, MSG_DONTWAIT, fds, SPAWN_FDS_MAX, &nfds, &lost);

    if (n == -EAGAIN)
        return 1;
    if (n <= 0)
        return -1;
    if ((size_t)n < offsetof(spawn_req, blob) || req.blob_len > SPAWN_BLOB_MAX ||
        (size_t)n != offsetof(spawn_req, blob) + req.blob_len) {
        /* Only the supervisor writes here; a bad message is a bug there. */
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        return -1;
    }
    if (req.kind == SPAWN_REQ_FORK)
        do_fork(sock, o, &req, fds, nfds);
    else if (req.kind == SPAWN_REQ_SIGNAL)
        do_signal(&req);
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    return 0;
}

static void __attribute__((noreturn)) spawner_main(int sock, const spawner_opts *o)
{
    struct sigaction sa;
    struct pollfd pfd[2];

    if (pipe2(sigchld_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
        _exit(111);
    outbox = os_nofork_calloc(SPAWN_MSGS_MAX, sizeof *outbox);
    if (!outbox)
        _exit(111);
    proc_groups_init(&live, o->max_children ? o->max_children : 1u << 24);
    live.own_children = 1; /* a child that left its group is signalled alone */
    kill_grace = o->kill_grace;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigchld;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGCHLD, &sa, NULL) < 0)
        _exit(111);
    /* A stray SIGINT (an operator's kill -INT) should not cost every
     * connection: only the supervisor ends us. Children get the default
     * back (proc_fork resets SIGINT; exec_reset). */
    signal(SIGINT, SIG_IGN);
    proc_caught_signals(&exec_reset);
    sigaddset(&exec_reset, SIGINT);
    sigaddset(&exec_reset, SIGPIPE);

    pfd[0].fd = sock;
    pfd[0].events = POLLIN;
    pfd[1].fd = sigchld_pipe[0];
    pfd[1].events = POLLIN;
    for (;;) {
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            _exit(111);
        }
        if (pfd[1].revents)
            reap(sock);
        if (pfd[0].revents & POLLIN) {
            for (int i = 0; i < SPAWNER_BATCH; i++) {
                int rc = serve_one(sock, o);
                if (rc < 0)
                    supervisor_gone(); /* it closed us, or died */
                if (rc > 0)
                    break;    /* nothing more for now */
            }
        } else if (pfd[0].revents & (POLLHUP | POLLERR | POLLNVAL)) {
            supervisor_gone();
        }
        flush_answers(sock);
    }
}

pid_t spawner_start(const spawner_opts *opts, int *sock)
{
    spawner_opts copy = *opts; /* on our stack: the caller's may not be inherited */
    struct rlimit fdlimit;
    proc_fork_opts po;
    int sv[2], size = SPAWNER_SOCKBUF;
    pid_t pid;

    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    (void)setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    (void)setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    if (copy.fdlimit) {
        fdlimit = *copy.fdlimit;
        copy.fdlimit = &fdlimit;
    }
    memset(&po, 0, sizeof po);
    po.keep[0] = sv[1];
    po.nkeep = 1;
    /* No parent-death signal: the spawner must outlive a supervisor killed
     * with SIGKILL, to end its children (supervisor_gone). It learns of the
     * death from its socket. */
    pid = proc_fork(&po);
    if (pid == 0)
        spawner_main(3, &copy);
    close(sv[1]);
    if (pid < 0) {
        close(sv[0]);
        return pid;
    }
    if (fcntl(sv[0], F_SETFL, O_NONBLOCK) < 0) {
        int e = errno;
        close(sv[0]);
        kill(pid, SIGKILL);
        (void)waitpid(pid, NULL, 0);
        return -e;
    }
    *sock = sv[0];
    return pid;
}
