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
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define SPAWNER_SOCKBUF (4 * 1024 * 1024) /* room for thousands of requests */
#define SPAWNER_BATCH 64                   /* requests taken per wakeup */
#define SPAWNER_OWN_FDS (3 + SPAWN_FDS_MAX) /* where our own descriptors go: move_high */

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

/*
 * Everything the spawner writes while it serves requests, in memory its
 * children do not get (os_nofork): every fork write-protects the pages the
 * two processes share, and the spawner's next write to each is a page
 * fault and a copy (on a VM, with a TLB flush of the other CPU). What is
 * left on shared pages is its stack near the fork and the C library's own
 * (docs/design.md, "What a fork costs").
 */
typedef struct spawner_state {
    spawn_req req;              /* the request being served */
    int fds[SPAWN_FDS_MAX];     /* and its descriptors */
    /* Answers wait here and go out together, one message for a whole
     * wakeup's worth: a system call each way per answer was a good part of
     * a connection's cost. Order is kept: a child's STARTED before its
     * EXITED. */
    spawn_msg outbox[SPAWN_MSGS_MAX];
    int nout;
    /* Our children not yet reaped, each the leader of its group: what we
     * take down if the supervisor dies (its table is os_nofork too). */
    proc_groups live;
    struct signalfd_siginfo drained[8];
    spawn_exec ex;              /* a plan's exec'd child */
} spawner_state;

/* Set once at start; only read afterwards. */
static spawner_state *st;
static int sigchld_fd = -1;     /* a signalfd for SIGCHLD, which is blocked */
static double kill_grace;
static pid_t self;              /* our pid: each child checks its parent's */
static int shared_fd = -1;      /* spawner_opts.shared_fd, as we hold it */

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
    proc_groups_takedown(&st->live, kill_grace, reap_quietly, NULL);
    _exit(0);
}

/* The supervisor reads what we send without ever blocking on us, so a
 * blocking send only waits for it to catch up. */
static void flush_answers(int sock)
{
    while (st->nout > 0 &&
           send(sock, st->outbox, sizeof st->outbox[0] * (size_t)st->nout, MSG_NOSIGNAL) < 0) {
        if (errno != EINTR)
            supervisor_gone();
    }
    st->nout = 0;
}

static void tell(int sock, uint32_t kind, uint32_t cookie, pid_t pid, int value)
{
    spawn_msg m = {kind, cookie, (int32_t)pid, value};

    if (st->nout == SPAWN_MSGS_MAX)
        flush_answers(sock);
    st->outbox[st->nout++] = m;
}

static void reap(int sock)
{
    int wstatus;
    pid_t pid;

    /* The signalfd only says "reap": exits that came together may have
     * made one SIGCHLD, so waitpid finds them, not the signals. */
    while (read(sigchld_fd, st->drained, sizeof st->drained) > 0)
        ;
    while ((pid = waitpid(-1, &wstatus, WNOHANG)) > 0) {
        proc_groups_del(&st->live, pid);
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

/* A forked child: a copy of us runs the child function, on the blob
 * copied onto our stack (the request itself is in memory the child does
 * not get; the stack page is copied for the fork anyway). Not inlined:
 * the child returns from fork() here, in PROC_CHILD_CODE. */
static PROC_CHILD_CODE __attribute__((noinline)) pid_t start_forked(const spawner_opts *o, const spawn_req *req,
                                          const int *fds, int nfds)
{
    size_t len = req->blob_len;
    unsigned char blob[len ? len : 1];
    proc_fork_opts po;
    pid_t pid;

    if (nfds + (shared_fd >= 0) > PROC_KEEP_MAX)
        return -EINVAL;
    memcpy(blob, req->blob, len);
    memset(&po, 0, sizeof po);
    for (int i = 0; i < nfds; i++)
        po.keep[i] = fds[i];
    if (shared_fd >= 0)
        po.keep[nfds++] = shared_fd;
    po.nkeep = nfds;
    po.fdlimit = o->fdlimit;
    po.parent_death_signal = SIGTERM;
    po.parent = self;
    po.plain_signals = 1; /* we catch nothing: spawner_main */
    pid = proc_fork(&po);
    if (pid == 0) {
        o->child(blob, len, nfds); /* never req: the child has no st */
        _exit(111); /* child functions do not return */
    }
    return pid;
}

/* The signals an exec'd child puts back to SIG_DFL before its exec: any
 * the program had us catch (no handler may run in a child sharing our
 * memory; the exec would reset them anyway), and SIGPIPE (see spawner.h).
 * Ignored signals otherwise stay ignored, as across fork and exec. */
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
    eo.parent = self;
    eo.plain_signals = 1; /* we catch nothing: quiet_signals */
    return proc_exec_or_exit(ex->file, ex->argv, ex->envp, &eo, exec_err);
}

static void do_fork(int sock, const spawner_opts *o, const spawn_req *req, const int *fds,
                    int nfds)
{
    spawn_exec *ex = &st->ex;
    int rc, kind = 0, exec_err = 0;
    pid_t pid;

    /* Room in `live` first, so that a child we start is always in it. */
    if ((rc = proc_groups_reserve(&st->live)) < 0) {
        tell(sock, SPAWN_MSG_FAILED, req->cookie, 0, rc == -ENOSPC ? EAGAIN : -rc);
        return;
    }
    if (o->plan) {
        memset(ex, 0, sizeof *ex);
        kind = o->plan(req->blob, req->blob_len, fds, nfds, ex);
        if (kind < 0 || (kind == 1 && (ex->nfds < 0 || ex->nfds > PROC_KEEP_MAX))) {
            tell(sock, SPAWN_MSG_FAILED, req->cookie, 0, kind < 0 ? -kind : EINVAL);
            return;
        }
    }
    pid = kind == 1 ? start_exec(o, ex, &exec_err) : start_forked(o, req, fds, nfds);
    if (pid < 0) {
        tell(sock, SPAWN_MSG_FAILED, req->cookie, 0, (int)-pid);
        return;
    }
    (void)proc_groups_add(&st->live, pid); /* reserved above */
    tell(sock, SPAWN_MSG_STARTED, req->cookie, pid, exec_err);
}

/* Takes one request. Returns 0, 1 when there is none, or -1 when the
 * supervisor is gone. */
static int serve_one(int sock, const spawner_opts *o)
{
    spawn_req *req = &st->req;
    int *fds = st->fds, nfds, lost;
    ssize_t n = fdpass_recv(sock, req, sizeof *req, MSG_DONTWAIT, fds, SPAWN_FDS_MAX, &nfds, &lost);

    if (n == -EAGAIN)
        return 1;
    if (n <= 0)
        return -1;
    if ((size_t)n < offsetof(spawn_req, blob) || req->blob_len > SPAWN_BLOB_MAX ||
        (size_t)n != offsetof(spawn_req, blob) + req->blob_len) {
        /* Only the supervisor writes here; a bad message is a bug there. */
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        return -1;
    }
    if (req->kind == SPAWN_REQ_FORK)
        do_fork(sock, o, req, fds, nfds);
    else if (req->kind == SPAWN_REQ_SIGNAL)
        do_signal(req);
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    return 0;
}

/*
 * The spawner catches no signal, so a child has no handler to reset and
 * nothing to block across its fork (proc_fork's plain_signals): SIGCHLD
 * is blocked and read from a signalfd, and SIGINT is blocked (a stray
 * kill -INT from an operator should not cost every connection: only the
 * supervisor ends us). Children start with an empty mask; signals pending
 * here are not theirs. Returns 0 or -errno.
 */
static int quiet_signals(void)
{
    sigset_t blocked;

    sigemptyset(&blocked);
    sigaddset(&blocked, SIGCHLD);
    sigaddset(&blocked, SIGINT);
    if (sigprocmask(SIG_BLOCK, &blocked, NULL) < 0)
        return -errno;
    sigdelset(&blocked, SIGINT);
    if ((sigchld_fd = signalfd(-1, &blocked, SFD_NONBLOCK | SFD_CLOEXEC)) < 0)
        return -errno;
    /* Whatever the program had us catch is reset in an exec'd child. */
    proc_caught_signals(&exec_reset);
    sigaddset(&exec_reset, SIGPIPE);
    return 0;
}

/*
 * Moves one of our own descriptors above the numbers a request's land on,
 * so that those arrive as 3, 4, ... (the lowest free), which is where a
 * forked child needs them: it moves nothing (proc_fork). Where the limit
 * is too low for that, fd stays where it is (the child then moves them).
 */
static int move_high(int fd)
{
    int high = fcntl(fd, F_DUPFD_CLOEXEC, SPAWNER_OWN_FDS);

    if (high < 0)
        return fd;
    close(fd);
    return high;
}

static void __attribute__((noreturn)) spawner_main(int sock, const spawner_opts *o)
{
    struct pollfd pfd[2];

    st = os_nofork_calloc(1, sizeof *st);
    if (!st || quiet_signals() < 0)
        _exit(111);
    sock = move_high(sock);
    sigchld_fd = move_high(sigchld_fd);
    if (o->shared_fd >= 0)
        shared_fd = 4; /* spawner_start put it there; 3 is free for requests */
    self = getpid();
    proc_groups_init(&st->live, o->max_children ? o->max_children : 1u << 24);
    st->live.own_children = 1; /* a child that left its group is signalled alone */
    kill_grace = o->kill_grace;

    pfd[0].fd = sock;
    pfd[0].events = POLLIN;
    pfd[1].fd = sigchld_fd;
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
    po.keep[0] = sv[1];             /* our socket, as 3 (moved high at once) */
    po.nkeep = 1;
    if (copy.shared_fd >= 0)
        po.keep[po.nkeep++] = copy.shared_fd; /* as 4, where it stays */
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
