/*
 * worker.c - a prefork worker: accepts connections on the listeners it
 * inherited and runs the server's handler for each, one at a time, in
 * this process (workers.c is the supervisor's side).
 *
 * A handler must not be able to tell this from fork mode: the connection
 * is descriptor 3 and the channel 4, as in a child of its own; the
 * listeners sit high (WORKER_FD_BASE and up), close-on-exec; SIGPIPE is
 * ignored and the handler's signal mask is the worker's, with SIGUSR2
 * blocked (below).
 *
 * Around each connection the channel carries CONN_BEGIN (who it is: the
 * supervisor's `ctl list`, kick, idle timeout and per-IP count need it)
 * and CONN_END (the handler returned). The supervisor answers CONN_END
 * with CONN_ENDED: what it sent before that mark was for the connection
 * that ended, and is dropped here before the next handler runs, so a
 * handler never reads its predecessor's messages. The mark usually
 * arrives while the worker waits in accept(); reading it costs one read.
 *
 * Going: the supervisor sends SIGUSR2 to a worker it wants gone (idle
 * above the minimum, recycled, shutdown). The signal is blocked while a
 * handler runs, so it never cuts a connection short; the worker looks at
 * it between connections, and accept() returns EINTR for it. A signal
 * that lands between the look and accept() is seen after the next
 * connection; the supervisor sends it again each second until the worker
 * has gone. SIGTERM (kill: timeouts, kicks) is left at its default.
 * At its max_requests (its own jittered limit, in the spawn blob) a worker
 * goes by itself: told, it would take one more connection first, since
 * it accepts before the supervisor has read the end of the last.
 */
#include "server/server_internal.h"
#include "channel/be.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#define WORKER_FD_BASE 64       /* listeners are moved up here */
#define WORKER_CONN_FD 3        /* as a fork-mode child has them */
#define WORKER_CHAN_FD 4

static volatile sig_atomic_t told_to_go;

static void on_go(int sig)
{
    (void)sig;
    told_to_go = 1;
}

typedef struct worker {
    worker_start ws;
    int lfd[LISTENERS_MAX];
    int epfd;                   /* several listeners: one epoll set; else -1 */
    sf_conn conn;               /* one for every connection: its reader carries over */
    unsigned marks_owed;        /* CONN_ENDED marks not yet read */
    sigset_t go_mask;           /* SIGUSR2 alone */
    double accept_wait;         /* after accept() failed for lack of resources */
    uint64_t limit;             /* connections to serve, then exit; 0: no limit */
    uint64_t served;
} worker;

/* The spawner laid out the listeners as 3 .. 3+n-1 and the channel as
 * 3+n. The listeners move up out of the way, the channel to 4, so that
 * accept() returns 3. */
static int place_descriptors(worker *w, int nfds)
{
    unsigned n = w->ws.nlisteners;
    int chan = 3 + (int)n;

    if (nfds != (int)n + 1 || n == 0 || n > LISTENERS_MAX)
        return -1;
    for (unsigned i = 0; i < n; i++) {
        w->lfd[i] = fcntl(3 + (int)i, F_DUPFD_CLOEXEC, WORKER_FD_BASE);
        if (w->lfd[i] < 0)
            return -1;
        close(3 + (int)i);
    }
    if (chan != WORKER_CHAN_FD) {
        if (dup3(chan, WORKER_CHAN_FD, O_CLOEXEC) < 0)
            return -1;
        close(chan);
    }
    /* Ours and blocking: the supervisor's end is the non-blocking one. */
    if (fcntl(WORKER_CHAN_FD, F_SETFL, 0) < 0)
        return -1;
    if (n > 1) {
        w->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (w->epfd < 0)
            return -1;
        for (unsigned i = 0; i < n; i++) {
            /* EPOLLEXCLUSIVE: one waiter woken per connection, not all. */
            struct epoll_event ev = {EPOLLIN | EPOLLEXCLUSIVE, {.u32 = i}};
            if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->lfd[i], &ev) < 0)
                return -1;
        }
    }
    return 0;
}

/* Waits for the next connection. Returns its descriptor (WORKER_CONN_FD
 * unless a handler left 3 open) with *li its listener, or -errno: -EINTR
 * when a signal came (SIGUSR2). */
static int next_connection(worker *w, sf_addr *peer, unsigned *li)
{
    for (;;) {
        unsigned i = 0;
        int fd;

        if (w->epfd >= 0) {
            struct epoll_event ev;
            int n = epoll_wait(w->epfd, &ev, 1, -1);
            if (n < 0)
                return -errno;
            if (n == 0)
                continue;
            i = ev.data.u32;
        }
        memset(peer, 0, sizeof *peer);
        peer->len = sizeof peer->u;
        fd = accept4(w->lfd[i], &peer->u.sa, &peer->len, SOCK_CLOEXEC);
        if (fd >= 0) {
            *li = i;
            return fd;
        }
        switch (errno) {
        case EAGAIN: /* another worker took it (epoll) */
#if EAGAIN != EWOULDBLOCK
        case EWOULDBLOCK:
#endif
        case ECONNABORTED:
        case EPROTO:
        case EPERM:
            continue;
        default:
            return -errno;
        }
    }
}

/* accept() failed for lack of descriptors, memory or buffers: the
 * connection waits in the backlog for this or another worker; a wait
 * that grows to a second, so the failure is never a spin. */
static void wait_after_failure(worker *w)
{
    struct timespec ts;

    w->accept_wait = w->accept_wait ? w->accept_wait * 2 : 0.05;
    if (w->accept_wait > 1.0)
        w->accept_wait = 1.0;
    ts.tv_sec = (time_t)w->accept_wait;
    ts.tv_nsec = (long)((w->accept_wait - (double)ts.tv_sec) * 1e9);
    (void)nanosleep(&ts, NULL); /* SIGUSR2 cuts it short: fine */
}

/* Reads the channel until every owed mark is read (and, with want_verdict,
 * the supervisor's word on this connection), dropping what was meant for
 * an earlier connection. Returns the verdict (1 without want_verdict), or
 * -1 if the channel is gone. */
static int settle_channel(worker *w, int want_verdict)
{
    int verdict = want_verdict ? -1 : 1;

    while (w->marks_owed > 0 || verdict < 0) {
        chan_frame f;
        int rc = chan_recv(WORKER_CHAN_FD, &w->conn.reader, &f);

        if (rc <= 0)
            return -1;
        if (f.fd >= 0)
            close(f.fd);
        if (f.type == CHAN_T_CONN_ENDED && w->marks_owed > 0) {
            w->marks_owed--;
        } else if (f.type == CHAN_T_CONN_VERDICT && w->marks_owed == 0 && f.len == 1) {
            verdict = f.payload[0] != 0;
        } else if (w->marks_owed == 0) {
            /* After the last mark only the verdict may come first. */
            free(f.payload);
            return -1;
        }
        free(f.payload);
    }
    return verdict;
}

/* CONN_BEGIN: [u8 listener][u8 n][peer: n bytes][local sockaddr]. */
static int send_begin(worker *w, unsigned li)
{
    unsigned char buf[2 + 2 * sizeof(w->conn.peer.u)];
    size_t plen = 0, llen = 0;

    if (w->ws.listeners[li].is_tcp) {
        plen = w->conn.peer.len;
        llen = w->conn.local.len;
        memcpy(buf + 2, &w->conn.peer.u, plen);
        memcpy(buf + 2 + plen, &w->conn.local.u, llen);
    }
    buf[0] = (unsigned char)li;
    buf[1] = (unsigned char)plen;
    return chan_send(WORKER_CHAN_FD, CHAN_T_CONN_BEGIN, buf, (uint32_t)(2 + plen + llen), -1);
}

static int send_end(int rc)
{
    unsigned char buf[4];

    be32_put(buf, (uint32_t)rc);
    return chan_send(WORKER_CHAN_FD, CHAN_T_CONN_END, buf, sizeof buf, -1);
}

/* One connection, from accept() to CONN_END. Returns 1 when the handler
 * ran, 0 when the supervisor refused the connection, or -1 when the
 * channel is gone (the supervisor is, or it cut this worker off). */
static int serve(worker *w, int fd, unsigned li, const sf_addr *peer)
{
    const worker_listener *l = &w->ws.listeners[li];
    sf_conn *c = &w->conn;
    int verdict, rc;

    c->fd = fd;
    c->peer = l->is_tcp ? *peer : l->addr;
    c->local.len = sizeof c->local.u;
    if (!l->is_tcp || getsockname(fd, &c->local.u.sa, &c->local.len) < 0)
        c->local = c->peer; /* Unix: the listener's path on both sides */
    if (send_begin(w, li) < 0)
        goto gone;
    verdict = settle_channel(w, w->ws.ask_verdict);
    if (verdict < 0)
        goto gone;
    if (verdict == 0) {
        rc = 0; /* refused: closed unserved, as fork mode closes it */
    } else {
        rc = w->ws.handler(c, w->ws.arg);
        /* As child_main: stdout only, and only if it holds something. */
        if (__fpending(stdout) > 0)
            fflush(stdout);
    }
    close(fd);
    c->fd = -1;
    /* What a handler may have changed for itself: SIGTERM back to the
     * default (a kill must kill), the mask back to the worker's. */
    signal(SIGTERM, SIG_DFL);
    sigprocmask(SIG_SETMASK, &w->go_mask, NULL);
    if (send_end(rc) < 0)
        return -1;
    w->marks_owed++;
    return verdict != 0;

gone:
    close(fd);
    c->fd = -1;
    return -1;
}

void worker_main(const void *blob, size_t len, int nfds)
{
    worker w;
    struct sigaction sa;
    sigset_t open_mask;

    /* worker_start, then this worker's max_requests (workers.c). */
    if (len != sizeof w.ws + sizeof w.limit)
        _exit(111);
    memset(&w, 0, sizeof w);
    memcpy(&w.ws, blob, sizeof w.ws);
    memcpy(&w.limit, (const char *)blob + sizeof w.ws, sizeof w.limit);
    w.epfd = -1;
    if (place_descriptors(&w, nfds) < 0)
        _exit(111);
    w.conn.fd = -1;
    w.conn.chan = WORKER_CHAN_FD;
    chan_reader_init(&w.conn.reader, w.ws.chan_max + BUS_MSG_OVERHEAD - CHAN_HDR_LEN);

    /* No SA_RESTART: accept() and epoll_wait() return EINTR for it. */
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_go;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR2, &sa, NULL);
    sigemptyset(&w.go_mask);
    sigaddset(&w.go_mask, SIGUSR2);
    sigprocmask(SIG_BLOCK, &w.go_mask, &open_mask);
    sigdelset(&open_mask, SIGUSR2);
    /* w.go_mask is from now on the mask a handler runs with: the
     * spawner's (empty) plus SIGUSR2. */
    sigprocmask(SIG_SETMASK, NULL, &w.go_mask);

    for (;;) {
        sf_addr peer;
        unsigned li = 0;
        int fd, served;

        /* Open for SIGUSR2 only while waiting for a connection. */
        sigprocmask(SIG_SETMASK, &open_mask, NULL);
        if (told_to_go)
            break;
        fd = next_connection(&w, &peer, &li);
        sigprocmask(SIG_SETMASK, &w.go_mask, NULL);
        if (fd == -EINTR)
            continue;
        if (fd == -EMFILE || fd == -ENFILE || fd == -ENOBUFS || fd == -ENOMEM) {
            wait_after_failure(&w);
            continue;
        }
        if (fd < 0)
            _exit(111); /* the listener is gone: nothing to serve */
        w.accept_wait = 0;
        served = serve(&w, fd, li, &peer);
        if (served < 0)
            break;
        /* At its max_requests it goes by itself: the supervisor counts the
         * same CONN_ENDs and has its replacement starting already. */
        if (served > 0 && w.limit && ++w.served >= w.limit)
            break;
    }
    _exit(0);
}
