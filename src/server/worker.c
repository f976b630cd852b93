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
 * The supervisor learns of each connection from the worker's slot (slot.h,
 * shared memory: no system call, no wakeup of the supervisor). The channel
 * is opened for a connection only when its handler first uses it (or at
 * once when the supervisor logs every connection or checks a per-IP
 * limit): CONN_BEGIN then says who the connection is, so the bus can route
 * to it, and CONN_END after the handler returned closes it. The supervisor
 * answers CONN_END with CONN_ENDED: what it sent before that mark was for
 * the connection that ended, and is dropped here before the next handler
 * uses the channel, so a handler never reads its predecessor's messages.
 * Between an END and the next BEGIN nothing is sent to the worker but the
 * mark. A handler that returns non-zero is told of (BEGIN and END) even if
 * it never used the channel: the supervisor counts and logs it.
 *
 * Going: the supervisor sends SIGUSR2 to a worker it wants gone (idle
 * above the minimum, recycled, shutdown). The signal is blocked while a
 * handler runs, so it never cuts a connection short; the worker looks at
 * it between connections, and accept() returns EINTR for it. A signal
 * that lands between the look and accept() is seen after the next
 * connection; the supervisor sends it again each second until the worker
 * has gone. SIGTERM (kill: timeouts, kicks) is left at its default.
 */
#include "server/server_internal.h"
#include "server/proxy.h"
#include "server/rules.h"
#include "channel/be.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <netinet/in.h>
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
    unsigned li;                /* the current connection's listener */
    int opened;                 /* the channel is open for it (BEGIN sent) */
    int refused;                /* the supervisor said no (per-IP limit) */
    unsigned marks_owed;        /* CONN_ENDED marks not yet read */
    char env[RULE_ENV_MAX];     /* the access rule's pairs, from the verdict */
    sigset_t go_mask;           /* the mask while serving: SIGUSR2 blocked */
    proc_backoff accept_wait;   /* after accept() failed for lack of resources */
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
 * connection waits in the backlog for this or another worker; the
 * library's backoff (process/backoff.h), so the failure is never a spin. */
static void wait_after_failure(worker *w)
{
    double wait = proc_backoff_next(&w->accept_wait);
    struct timespec ts;

    ts.tv_sec = (time_t)wait;
    ts.tv_nsec = (long)((wait - (double)ts.tv_sec) * 1e9);
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
        } else if (f.type == CHAN_T_CONN_VERDICT && w->marks_owed == 0 && f.len >= 1 &&
                   f.len - 1 <= sizeof w->env) {
            verdict = f.payload[0] != 0;
            memcpy(w->env, f.payload + 1, f.len - 1);
            w->conn.env = w->env;
            w->conn.env_len = f.len - 1;
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
static int send_begin(worker *w)
{
    unsigned li = w->li;
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

/* The handler's first use of the channel (conn.h's open_channel): the
 * supervisor is told who the connection is, and what it sent for earlier
 * connections is dropped. Returns 0, or -EPIPE when the channel is gone. */
static int open_channel(void *arg)
{
    worker *w = arg;
    int verdict;

    if (w->opened)
        return 0;
    w->opened = 1;
    if (send_begin(w) < 0)
        return -EPIPE;
    verdict = settle_channel(w, w->ws.ask_verdict);
    if (verdict < 0)
        return -EPIPE;
    w->refused = verdict == 0;
    return 0;
}

static void slot_begin(worker *w)
{
    worker_slot *sl = w->ws.slot;
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts); /* the vDSO's: no system call */
    slot_write_begin(sl);
    sl->busy = 1;
    sl->listener = w->li;
    sl->begun++;
    sl->started = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    sl->peer = w->conn.peer;
    sl->local = w->conn.local;
    slot_write_end(sl);
}

/* The connection's addresses changed (a PROXY header): the slot again,
 * begun once. */
static void slot_begin_again(worker *w)
{
    worker_slot *sl = w->ws.slot;

    slot_write_begin(sl);
    sl->peer = w->conn.peer;
    sl->local = w->conn.local;
    slot_write_end(sl);
}

static void slot_end(worker *w)
{
    worker_slot *sl = w->ws.slot;
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    slot_write_begin(sl);
    sl->busy = 0;
    if (w->refused)
        sl->refused++;
    else
        sl->ended++;
    sl->idle_since = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    slot_write_end(sl);
}

/* CONN_DROPPED: [u8 why][u8 n][peer: n bytes][text]; the supervisor logs
 * and counts it. Its failure is seen at the next frame. */
static void send_dropped(worker *w, int why, const char *text)
{
    unsigned char buf[2 + sizeof(w->conn.peer.u) + 256];
    size_t plen = w->conn.peer.len <= sizeof w->conn.peer.u ? w->conn.peer.len : 0;
    size_t tlen = strnlen(text, 255);

    buf[0] = (unsigned char)why;
    buf[1] = (unsigned char)plen;
    memcpy(buf + 2, &w->conn.peer.u, plen);
    memcpy(buf + 2 + plen, text, tlen);
    (void)chan_send(WORKER_CHAN_FD, CHAN_T_CONN_DROPPED, buf, (uint32_t)(2 + plen + tlen), -1);
}

/* A PROXY listener's connection: from an allowed balancer only, its whole
 * header within proxy_timeout_s, read to its last byte and not one more
 * (proxy.h). The header's addresses become the connection's. Returns 0,
 * or -1 when the connection is to be closed (the supervisor is told). */
static int read_proxy_header(worker *w, int fd)
{
    proxy_parser p;
    struct timespec start, now;
    double left = w->ws.proxy_timeout_s;
    char text[200];
    int rc;

    if (rules_match(w->ws.proxy_from, &w->conn.peer)->action != RULE_ALLOW) {
        send_dropped(w, WORKER_DROP_SOURCE, "");
        return -1;
    }
    proxy_parser_init(&p);
    clock_gettime(CLOCK_MONOTONIC, &start);
    while ((rc = proxy_read(fd, &p)) == 0 || rc == -EAGAIN) {
        struct pollfd pf = {fd, POLLIN, 0};
        int ms;

        clock_gettime(CLOCK_MONOTONIC, &now);
        left = w->ws.proxy_timeout_s - ((double)(now.tv_sec - start.tv_sec) +
                                        (double)(now.tv_nsec - start.tv_nsec) * 1e-9);
        if (left <= 0)
            break;
        ms = (int)(left * 1000.0) + 1;
        if (poll(&pf, 1, ms) < 0 && errno != EINTR)
            break;
    }
    if (rc == 1) {
        if (p.kind == PROXY_KIND_ADDRS) {
            w->conn.peer = p.src;
            w->conn.local = p.dst;
            slot_begin_again(w);
        }
        return 0;
    }
    if (rc == 0 || rc == -EAGAIN) {
        snprintf(text, sizeof text, "no whole PROXY header within %g s (%zu bytes came)",
                 w->ws.proxy_timeout_s, p.have);
        send_dropped(w, WORKER_DROP_TIMEOUT, text);
    } else {
        send_dropped(w, WORKER_DROP_BAD, rc == -EPROTO || rc == -EPIPE ? p.error : strerror(-rc));
    }
    return -1;
}

/* One connection, from accept() to the handler's return. Returns 0, or -1
 * when the channel is gone (the supervisor is, or it cut this worker off). */
static int serve(worker *w, int fd, unsigned li, const sf_addr *peer)
{
    const worker_listener *l = &w->ws.listeners[li];
    sf_conn *c = &w->conn;
    int rc = 0, gone = 0;

    c->fd = fd;
    c->peer = l->is_tcp ? *peer : l->addr; /* Unix: the listener's path on both sides */
    c->env = NULL;
    c->env_len = 0;
    c->out_open = 0;
    if (!l->is_tcp || listener_local_addr(&l->addr, fd, &c->local) < 0)
        c->local = l->is_tcp ? l->addr : c->peer; /* Unix: the listener's path on both sides */
    w->li = li;
    w->opened = w->refused = 0;
    /* Busy from the accept on: a worker waiting for a slow PROXY header is
     * not one the supervisor may count as free. */
    slot_begin(w);
    if (l->proxy && read_proxy_header(w, fd) < 0) {
        close(fd);
        c->fd = -1;
        w->refused = 1; /* counted as taken and refused, not served */
        slot_end(w);
        return 0;
    }
    /* Its last connection (max_requests) is told of at once, so that its
     * replacement starts while it serves. */
    if ((w->ws.eager || (w->ws.limit && w->ws.slot->begun >= w->ws.limit)) && open_channel(w) < 0)
        gone = 1;
    if (!gone && !w->refused) {
        rc = w->ws.handler(c, w->ws.arg);
        /* As child_main: stdout only, and only if it holds something. */
        if (__fpending(stdout) > 0)
            fflush(stdout);
    }
    close(fd);
    c->fd = -1;
    slot_end(w);
    if (gone)
        return -1;
    /* A handler that failed is told of even if it never used the channel. */
    if (!w->opened && rc != 0 && send_begin(w) == 0)
        w->opened = 1;
    if (!w->opened)
        return 0;
    if (send_end(rc) < 0)
        return -1;
    w->marks_owed++;
    return 0;
}

void worker_main(const void *blob, size_t len, int nfds)
{
    worker w;
    struct sigaction sa;
    sigset_t open_mask;

    if (len != sizeof w.ws)
        _exit(111);
    memset(&w, 0, sizeof w);
    memcpy(&w.ws, blob, sizeof w.ws);
    w.epfd = -1;
    if (place_descriptors(&w, nfds) < 0)
        _exit(111);
    w.conn.fd = -1;
    w.conn.chan = WORKER_CHAN_FD;
    w.conn.open_channel = open_channel;
    w.conn.open_arg = &w;
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
        int fd;

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
        proc_backoff_reset(&w.accept_wait);
        if (serve(&w, fd, li, &peer) < 0)
            break;
        /* At its max_requests it goes by itself; the supervisor has had
         * its last connection's CONN_BEGIN, and a replacement is starting. */
        if (w.ws.limit && w.ws.slot->begun >= w.ws.limit)
            break;
    }
    _exit(0);
}
