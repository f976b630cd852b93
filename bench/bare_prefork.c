/*
 * bare_prefork.c - the least a prefork echo server can do, in two designs:
 *
 *   accept (default)  N workers forked at start, each blocking in accept() on
 *                     the one shared listening socket: echo until EOF, close,
 *                     accept again. The parent only replaces dead workers.
 *   --dispatch        the parent accepts (non-blocking listener, epoll) and
 *                     hands each connection to the longest-idle worker over
 *                     that worker's socketpair (SCM_RIGHTS); the worker writes
 *                     one byte back when it is done and idle again. With no
 *                     worker idle, the parent accepts nothing until one is.
 *
 * The second costs the parent a few system calls per connection and a trip
 * through it; the two together measure what a supervisor that dispatches
 * would cost beside workers that accept themselves (issue 13).
 *
 * usage: bare-prefork [--dispatch] [PORT [WORKERS]]   (PORT 0 or nothing:
 *        any free port; WORKERS default 8)
 * Listens on 127.0.0.1 only and says "listening on 127.0.0.1:PORT" on stderr.
 * A worker that dies is reaped and replaced. SIGTERM or SIGINT: the parent
 * ends its workers (SIGTERM, then waits for each) and exits 0. A worker whose
 * parent dies gets SIGTERM from the kernel (PR_SET_PDEATHSIG): no orphans.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_WORKERS 1024
#define WORKER_FD 3 /* the one descriptor a worker keeps: listener or its socketpair end */

struct worker {
    pid_t pid;  /* 0: slot empty */
    int sock;   /* dispatch mode: the parent's end of the socketpair, or -1 */
};

static struct worker workers[MAX_WORKERS];
static int nworkers = 8;
static int dispatch_mode;
static pid_t parent_pid;

/* Dispatch mode: indices of idle workers, oldest first (a ring). */
static int idle_ring[MAX_WORKERS];
static int idle_head, idle_count;

static void echo(int fd)
{
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR)) {
        for (ssize_t off = 0; n > 0 && off < n;) {
            ssize_t w = write(fd, buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0)
                return;
            off += w;
        }
    }
}

/* Accept mode: block in accept() on the shared listener with the others. */
static void accept_loop(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EINTR && errno != ECONNABORTED)
                perror("bare-prefork: accept"); /* e.g. EMFILE; keep going */
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                usleep(1000); /* don't spin while the shortage lasts */
            continue;
        }
        echo(fd);
        close(fd);
    }
}

/* Receives one descriptor from the parent; -1 when the parent is gone. */
static int recv_conn(int sock)
{
    char byte;
    union {
        struct cmsghdr hdr;
        char buf[CMSG_SPACE(sizeof(int))];
    } ctl;
    struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
                          .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf };
    for (;;) {
        ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int fd;
            memcpy(&fd, CMSG_DATA(c), sizeof fd);
            return fd;
        }
        /* A message without a descriptor: nothing to serve; wait for the next. */
        msg.msg_controllen = sizeof ctl.buf;
    }
}

/* Dispatch mode: serve what the parent hands over, say "idle" after each. */
static void dispatched_loop(int sock)
{
    int fd;
    while ((fd = recv_conn(sock)) >= 0) {
        echo(fd);
        close(fd);
        char done = 'i';
        while (write(sock, &done, 1) < 0 && errno == EINTR)
            ;
    }
}

/*
 * In the new worker: only `keep` survives, as WORKER_FD. Every other
 * descriptor goes, including the parent's ends of the other workers'
 * socketpairs (fork copies them whatever their CLOEXEC): a worker that kept
 * one would hide that worker's death from the parent.
 */
static void become_worker(int keep, const sigset_t *parent_mask)
{
    /* Dispositions are inherited as the parent left them (SIGPIPE ignored,
     * the rest default); only the mask needs restoring. */
    sigprocmask(SIG_SETMASK, parent_mask, NULL);
    /* Ordering: ask for the death signal first, then check the parent, so a
     * parent that died in between is not missed. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent_pid)
        _exit(0);
    if (keep != WORKER_FD && dup2(keep, WORKER_FD) < 0)
        _exit(1);
    close_range(WORKER_FD + 1, ~0U, 0);
    if (dispatch_mode)
        dispatched_loop(WORKER_FD);
    else
        accept_loop(WORKER_FD);
    _exit(0);
}

static void idle_push(int i)
{
    idle_ring[(idle_head + idle_count) % MAX_WORKERS] = i;
    idle_count++;
}

static int idle_pop(void)
{
    int i = idle_ring[idle_head];
    idle_head = (idle_head + 1) % MAX_WORKERS;
    idle_count--;
    return i;
}

/* Takes worker i out of the idle ring, wherever it is. */
static void idle_remove(int i)
{
    int kept = 0;
    for (int k = 0; k < idle_count; k++) {
        int w = idle_ring[(idle_head + k) % MAX_WORKERS];
        if (w != i)
            idle_ring[(idle_head + kept++) % MAX_WORKERS] = w;
    }
    idle_count = kept;
}

/* Forks the worker of slot i. Returns 0, or -1 if fork (or socketpair) failed. */
static int spawn(int i, int lfd, int epfd, const sigset_t *parent_mask)
{
    int pair[2] = { -1, -1 };
    if (dispatch_mode &&
        socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0) {
        perror("bare-prefork: socketpair");
        return -1;
    }
    pid_t pid = fork();
    if (pid == 0)
        become_worker(dispatch_mode ? pair[1] : lfd, parent_mask);
    if (pid < 0) {
        perror("bare-prefork: fork");
        if (dispatch_mode) {
            close(pair[0]);
            close(pair[1]);
        }
        return -1;
    }
    workers[i].pid = pid;
    workers[i].sock = -1;
    if (dispatch_mode) {
        close(pair[1]);
        struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)i };
        epoll_ctl(epfd, EPOLL_CTL_ADD, pair[0], &ev);
        workers[i].sock = pair[0];
        /* Idle from birth: a descriptor sent now waits in the socketpair. */
        idle_push(i);
    }
    return 0;
}

/* Dispatch mode: the parent's end of worker i is done with (EOF, or reaped). */
static void drop_sock(int i)
{
    if (workers[i].sock < 0)
        return;
    close(workers[i].sock); /* also leaves the epoll set: no other copy exists */
    workers[i].sock = -1;
    idle_remove(i);
}

/* Reaps every exited worker and forks its replacement unless stopping.
 * Returns how many slots are left empty (a failed fork). */
static int reap(int stopping, int lfd, int epfd, const sigset_t *parent_mask)
{
    pid_t pid;
    int status, empty = 0;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < nworkers; i++) {
            if (workers[i].pid != pid)
                continue;
            workers[i].pid = 0;
            drop_sock(i);
            if (!stopping && spawn(i, lfd, epfd, parent_mask) < 0)
                empty++;
        }
    }
    return empty;
}

/* Ends every worker: SIGTERM, then waits for each (no zombies left). */
static void stop_workers(void)
{
    for (int i = 0; i < nworkers; i++)
        if (workers[i].pid > 0)
            kill(workers[i].pid, SIGTERM);
    for (int i = 0; i < nworkers; i++) {
        if (workers[i].pid <= 0)
            continue;
        while (waitpid(workers[i].pid, NULL, 0) < 0 && errno == EINTR)
            ;
        workers[i].pid = 0;
    }
}

/* Refills empty slots (a fork failed earlier). */
static void refill(int lfd, int epfd, const sigset_t *parent_mask)
{
    for (int i = 0; i < nworkers; i++)
        if (workers[i].pid == 0 && spawn(i, lfd, epfd, parent_mask) < 0)
            return;
}

/* Accept mode's parent: waits for signals; replaces workers, or stops. */
static int supervise_accepting(int lfd, const sigset_t *waited, const sigset_t *parent_mask)
{
    for (;;) {
        siginfo_t si;
        struct timespec retry = { .tv_sec = 1 };
        int sig = sigtimedwait(waited, &si, &retry);
        if (sig == SIGTERM || sig == SIGINT) {
            stop_workers();
            return 0;
        }
        if (reap(0, lfd, -1, parent_mask) > 0 || sig < 0)
            refill(lfd, -1, parent_mask);
    }
}

/* Sends connection fd to worker i. Returns 0, or -1 if that worker is gone. */
static int hand_over(int i, int fd)
{
    char byte = 'c';
    union {
        struct cmsghdr hdr;
        char buf[CMSG_SPACE(sizeof(int))];
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
                          .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf };
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fd);
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    ssize_t n;
    while ((n = sendmsg(workers[i].sock, &msg, MSG_NOSIGNAL)) < 0 && errno == EINTR)
        ;
    return n == 1 ? 0 : -1;
}

/*
 * Accepts while a worker is idle, handing each connection to the one idle
 * longest. Returns 1 if it stopped for want of an idle worker (connections
 * may be waiting: the listener is edge-triggered, so the caller must come
 * back when a worker is idle), 0 when the backlog is empty.
 */
static int accept_and_dispatch(int lfd)
{
    while (idle_count > 0) {
        /* Blocking, as the worker reads it (the listener's O_NONBLOCK is not
         * inherited by accepted sockets on Linux). */
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            if (errno != EINTR && errno != ECONNABORTED)
                perror("bare-prefork: accept");
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                usleep(1000); /* don't spin while the shortage lasts */
            continue;
        }
        int handed = 0;
        while (!handed && idle_count > 0) {
            int i = idle_pop();
            if (hand_over(i, fd) == 0)
                handed = 1;
            else
                drop_sock(i); /* that worker died; its reaping replaces it */
        }
        close(fd); /* the worker has its own copy, or nobody could take it */
    }
    return 1;
}

/* Dispatch mode's parent: one epoll loop over listener, signals, workers. */
static int supervise_dispatching(int lfd, const sigset_t *waited, const sigset_t *parent_mask)
{
    enum { TAG_LISTENER = MAX_WORKERS, TAG_SIGNALS };
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    int sfd = signalfd(-1, waited, SFD_CLOEXEC | SFD_NONBLOCK);
    if (epfd < 0 || sfd < 0) {
        perror("bare-prefork: epoll/signalfd");
        return 1;
    }
    struct epoll_event ev = { .events = EPOLLIN | EPOLLET, .data.u32 = TAG_LISTENER };
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    ev = (struct epoll_event){ .events = EPOLLIN, .data.u32 = TAG_SIGNALS };
    epoll_ctl(epfd, EPOLL_CTL_ADD, sfd, &ev);
    for (int i = 0; i < nworkers; i++)
        spawn(i, lfd, epfd, parent_mask);

    int backlog_waits = 1; /* connections may wait unaccepted (at start too) */
    for (;;) {
        if (backlog_waits && idle_count > 0)
            backlog_waits = accept_and_dispatch(lfd);
        struct epoll_event evs[64];
        int n = epoll_wait(epfd, evs, 64, backlog_waits && idle_count == 0 ? 1000 : -1);
        for (int k = 0; k < n; k++) {
            uint32_t tag = evs[k].data.u32;
            if (tag == TAG_LISTENER) {
                backlog_waits = 1;
            } else if (tag == TAG_SIGNALS) {
                struct signalfd_siginfo si;
                int stop = 0;
                while (read(sfd, &si, sizeof si) == sizeof si)
                    stop |= si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT;
                if (stop) {
                    stop_workers();
                    return 0;
                }
                if (reap(0, lfd, epfd, parent_mask) > 0)
                    refill(lfd, epfd, parent_mask);
            } else if (workers[tag].sock >= 0) {
                char buf[16];
                ssize_t r = read(workers[tag].sock, buf, sizeof buf);
                if (r > 0)
                    idle_push((int)tag); /* one byte: done, idle again */
                else if (r == 0 || (errno != EINTR && errno != EAGAIN))
                    drop_sock((int)tag); /* gone; SIGCHLD replaces it */
            }
        }
        if (n == 0) /* a timeout while starved: maybe a fork failed */
            refill(lfd, epfd, parent_mask);
    }
}

int main(int argc, char **argv)
{
    int argi = 1;
    if (argi < argc && strcmp(argv[argi], "--dispatch") == 0) {
        dispatch_mode = 1;
        argi++;
    }
    unsigned short port = argi < argc ? (unsigned short)atoi(argv[argi++]) : 0;
    if (argi < argc)
        nworkers = atoi(argv[argi++]);
    if (argi < argc || nworkers < 1 || nworkers > MAX_WORKERS) {
        fprintf(stderr, "usage: bare-prefork [--dispatch] [PORT [WORKERS]]  (1..%d workers)\n",
                MAX_WORKERS);
        return 2;
    }

    struct sockaddr_in sin = { .sin_family = AF_INET,
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                               .sin_port = htons(port) };
    socklen_t len = sizeof sin;
    int one = 1;
    int type = SOCK_STREAM | SOCK_CLOEXEC | (dispatch_mode ? SOCK_NONBLOCK : 0);
    int lfd = socket(AF_INET, type, 0);
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(lfd, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(lfd, 4096) < 0 ||
        getsockname(lfd, (struct sockaddr *)&sin, &len) < 0) {
        perror("bare-prefork: listen");
        return 1;
    }

    /* The parent takes its signals synchronously (sigtimedwait or signalfd):
     * block them before the first fork; workers restore the old mask. */
    sigset_t waited, parent_mask;
    sigemptyset(&waited);
    sigaddset(&waited, SIGCHLD);
    sigaddset(&waited, SIGTERM);
    sigaddset(&waited, SIGINT);
    sigprocmask(SIG_BLOCK, &waited, &parent_mask);
    parent_pid = getpid();
    signal(SIGPIPE, SIG_IGN); /* a write to a reset peer fails with EPIPE */

    /* Announced once the socket listens: connections wait in its backlog
     * until the workers (forked next) take them. */
    fprintf(stderr, "listening on 127.0.0.1:%u\n", ntohs(sin.sin_port));
    if (dispatch_mode)
        return supervise_dispatching(lfd, &waited, &parent_mask);
    for (int i = 0; i < nworkers; i++)
        spawn(i, lfd, -1, &parent_mask);
    return supervise_accepting(lfd, &waited, &parent_mask);
}
