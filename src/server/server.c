/*
 * server.c - fork mode: accept a connection, fork a child to serve it.
 *
 * The supervisor closes its copy of a connection's socket as soon as the
 * child is forked: a descriptor per connection held here would be copied
 * by every later fork() and closed again by every child, making each
 * accept cost time in proportion to the connections already open. What it
 * needs to know of a connection it asks the kernel by address instead
 * (os_tcpdiag_dump: bytes each way, time since the client last sent).
 *
 * Accepting is paused (the listeners' watchers stopped, the kernel backlog
 * holding new clients) for three reasons, kept as bits in `paused`:
 * the connection limit, a backoff after accept() failed for lack of
 * resources, and a backoff after fork() failed. Never fail open, never spin.
 */
#include "server/server_internal.h"
#include "channel/chanreq.h"
#include "server/execplan.h"
#include "server/addr.h"
#include "server/metrics.h"
#include "supervisor/bus_redis.h"
#include "process/process.h"
#include "os/os.h"
#include "log.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

/* ------------------------------------------------------------ helpers */

void server_peer_text(const conn_rec *r, char *buf, size_t len)
{
    if (sf_addr_format(&r->peer, buf, len) < 0)
        snprintf(buf, len, "?");
}

static hmap_key ip_key(const sf_addr *a)
{
    hmap_key k;

    memset(&k, 0, sizeof k);
    k.b[0] = (uint8_t)a->u.sa.sa_family;
    if (a->u.sa.sa_family == AF_INET)
        memcpy(k.b + 1, &a->u.in4.sin_addr, 4);
    else if (a->u.sa.sa_family == AF_INET6)
        memcpy(k.b + 1, &a->u.in6.sin6_addr, 16);
    return k;
}

/* A TCP connection as the kernel's dump names it: the whole tuple. Two
 * connections from one client port to two local addresses (two listeners
 * on one port, or a wildcard listener reached by two addresses) differ
 * only in the local address, and must not share an entry. */
hmap_key server_tuple_key(const sf_addr *peer, const sf_addr *local)
{
    hmap_key k = ip_key(peer);
    uint16_t pport = (uint16_t)sf_addr_port(peer), lport = (uint16_t)sf_addr_port(local);

    memcpy(k.b + 17, &pport, 2);
    memcpy(k.b + 19, &lport, 2);
    if (local->u.sa.sa_family == AF_INET)
        memcpy(k.b + 21, &local->u.in4.sin_addr, 4);
    else if (local->u.sa.sa_family == AF_INET6)
        memcpy(k.b + 21, &local->u.in6.sin6_addr, 16);
    return k;
}

/* Records are handed out from the low end of the array and reused from a
 * free list, so a server that never has many connections at once never
 * touches the rest. */
conn_rec *server_rec_alloc(sf_server *s)
{
    conn_rec *r = s->free_recs;

    if (r)
        s->free_recs = r->next_free;
    else if (s->recs_touched < s->opts.max_conns)
        r = &s->recs[s->recs_touched++];
    else
        return NULL;
    s->recs_used++;
    memset(r, 0, sizeof *r);
    r->fd = r->cfd = r->sfd = -1;
    r->ep.fd = -1;
    return r;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void check_limit(sf_server *s);

void server_rec_release(sf_server *s, conn_rec *r)
{
    access_cancel(s, r); /* before the fd closes: its watcher goes first */
    close_fd(&r->fd);
    close_fd(&r->cfd);
    close_fd(&r->sfd);
    endpoint_close(&r->ep);
    ev_timer_stop(s->loop, &r->held_timer); /* a no-op if never started: recs are zeroed */
    ev_timer_stop(s->loop, &r->retire_timer);
    if (r->counted_ip)
        server_per_ip_add(s, r, -1);
    r->pid = 0;
    r->next_free = s->free_recs;
    s->free_recs = r;
    s->recs_used--;
    upgrade_check_drained(s);
}

void server_drop(sf_server *s, conn_rec *r, const char *what, const char *why)
{
    if (why) {
        char peer[SF_ADDR_TEXT_MAX];
        server_peer_text(r, peer, sizeof peer);
        sf_logev(&s->log, SF_LOG_WARN, "dropped", 0, peer, SF_FIELDS(SF_F_STR("error", why)),
                 "[%s] dropped: %s%s", peer, what, why);
    }
    server_rec_release(s, r);
}

void server_per_ip_add(sf_server *s, conn_rec *r, int delta)
{
    hmap_key k;
    uint32_t *n;

    if (!s->opts.max_per_ip || !r->is_tcp)
        return;
    r->counted_ip = delta > 0;
    k = ip_key(&r->peer);
    n = hmap_get(&s->per_ip, &k);
    if (delta > 0) {
        if (n)
            (*n)++;
        else
            (void)hmap_put(&s->per_ip, &k, 1); /* reserved in start_conn() */
    } else if (n && --*n == 0) {
        (void)hmap_del(&s->per_ip, &k);
    }
}

unsigned server_per_ip_count(const sf_server *s, const conn_rec *r)
{
    hmap_key k = ip_key(&r->peer);
    uint32_t *n = hmap_get(&s->per_ip, &k);
    return n ? *n : 0;
}

/* ------------------------------------------------------ accept control */

static void update_accepting(sf_server *s)
{
    int on = !s->paused && !s->sup.shutting_down && !s->up.draining;

    if (s->prefork)
        return; /* the workers accept */
    for (size_t i = 0; i < s->nlisteners; i++) {
        if (s->listeners[i].fd < 0)
            continue;
        if (on && !ev_is_active(&s->listeners[i].io))
            ev_io_start(s->loop, &s->listeners[i].io);
        else if (!on && ev_is_active(&s->listeners[i].io))
            ev_io_stop(s->loop, &s->listeners[i].io);
    }
}

static void pause_set(sf_server *s, unsigned why, int on)
{
    if (on)
        s->paused |= why;
    else
        s->paused &= ~why;
    update_accepting(s);
}

/* One timer for every failure until it fires: the wait grows once per
 * expiry (backoff_cb), not per failure. */
static void backoff_start(sf_server *s, unsigned why)
{
    ev_timer_stop(s->loop, &s->backoff_timer);
    ev_timer_set(&s->backoff_timer, proc_backoff_arm(&s->backoff), 0.);
    ev_timer_start(s->loop, &s->backoff_timer);
    pause_set(s, why, 1);
}

/* -------------------------------------------------------------- forking */

/* What a child needs, sent to the spawner with each request (it is a copy
 * of the program as sf_server_run found it, so pointers stay good; the
 * server and its records live in memory it does not have: os_nofork). */
typedef struct child_start {
    sf_conn_cb handler;
    void *arg;
    const char *file;     /* with a program (opts.program_argv): its path */
    char *const *argv;    /* and its argv; NULL: the handler runs */
    sf_addr peer;
    sf_addr local;        /* with has_local (a PROXY header's destination) */
    int has_local;
    int is_tcp;
    int jsonl;
    uint32_t chan_max;
    uint32_t env_len;     /* the access rule's pairs, after the struct in the blob */
    unsigned char *offered; /* a handler's: set before its channel's offer (broker.h) */
} child_start;

/* The channel at its first use (sf_conn's open_channel hook): the child
 * makes it and hands the supervisor its end over the broker (fd 4,
 * channel/chanreq.h, broker.h), and sets up its reader, so a handler that
 * never uses it costs no system call here nor in the supervisor, and no
 * page of that code to fault in. A failure is the channel's end: every
 * use of it fails with that error. */
typedef struct child_chan {
    sf_conn *conn;
    uint32_t max;         /* the reader's largest frame */
    int ready;            /* 1 made, -errno could not be */
    unsigned char *offered;
} child_chan;

static PROC_CHILD_CODE int child_channel_open(void *arg)
{
    child_chan *ch = arg;
    int fd;

    if (ch->ready == 0) {
        if (ch->offered)
            __atomic_store_n(ch->offered, 1, __ATOMIC_RELEASE);
        if ((fd = chanreq_open(4)) < 0) {
            ch->ready = fd;
            return fd;
        }
        ch->conn->chan = fd;
        chan_reader_init(&ch->conn->reader, ch->max);
        ch->ready = 1;
    }
    return ch->ready < 0 ? ch->ready : 0;
}

/* Whether stdout holds output not yet written. With glibc read from the
 * stream itself, as __fpending does: __fpending is one more page of the C
 * library's code for every child to fault in (process/childsys.h). */
static PROC_CHILD_CODE int stdout_pending(void)
{
#ifdef __GLIBC__
    return stdout->_IO_write_ptr > stdout->_IO_write_base;
#else
    return __fpending(stdout) > 0;
#endif
}

/* Runs in the new child: the connection is fd 3, the broker fd 4 (its
 * channel is made at its first use). */
static PROC_CHILD_CODE void __attribute__((noreturn)) child_main(const void *blob, size_t len,
                                                                  int nfds)
{
    child_start cs;
    child_chan ch;
    sf_conn c;
    int rc;

    if (len < sizeof cs || nfds != 2)
        _exit(111);
    memcpy(&cs, blob, sizeof cs);
    if (len != sizeof cs + cs.env_len)
        _exit(111);
    memset(&c, 0, sizeof c);
    c.fd = 3;
    /* Apart: written together, fd and chan are one 64-bit constant the
     * compiler loads from .rodata, a page fault in every child. */
    __asm__ volatile("" ::: "memory");
    c.chan = -1;
    ch.conn = &c;
    ch.max = cs.chan_max + BUS_MSG_OVERHEAD - CHAN_HDR_LEN;
    ch.ready = 0;
    ch.offered = cs.offered;
    c.open_channel = child_channel_open;
    c.open_arg = &ch;
    c.peer = cs.peer;
    if (cs.has_local)
        c.local = cs.local;
    else if (cs.is_tcp)
        c.local_unknown = 1; /* asked at first use: conn_local */
    else
        c.local = c.peer; /* Unix: the listener's path on both sides */
    /* The blob is this process's for good: child_main never returns. */
    c.env = (const char *)blob + sizeof cs;
    c.env_len = cs.env_len;
    rc = cs.handler(&c, cs.arg);
    /* Only stdout, and only if it holds something: fflush(NULL) locks
     * every stream, writing to pages shared with the spawner, which then
     * have to be copied in every child. */
    if (stdout_pending())
        fflush(stdout);
    _exit(rc & 0xff);
}

/* In the spawner, before anything is forked: a program's child is exec'd
 * with vfork (execplan.h: no copy of the spawner, no setenv in the
 * child), a handler's is forked to run child_main. */
static int child_plan(const void *blob, size_t len, const int *fds, int nfds, spawn_exec *ex)
{
    child_start cs;

    if (len < sizeof cs || nfds < 1 || nfds > 2)
        return -EINVAL;
    memcpy(&cs, blob, sizeof cs);
    if (len != sizeof cs + cs.env_len)
        return -EINVAL;
    if (!cs.argv)
        return 0; /* the connection, and the broker the spawner adds */
    if (nfds != 2)
        return -EINVAL;
    return execplan_conn(ex, cs.file, cs.argv, &cs.peer, cs.has_local ? &cs.local : NULL, cs.is_tcp,
                         fds[0], fds[1], (const char *)blob + sizeof cs, cs.env_len);
}

/* Asks the spawner for r's child: a program's with its channel, a
 * handler's alone (the spawner adds the broker, its shared_fd). Returns 0,
 * or -errno with r as it was. */
static int spawn(sf_server *s, conn_rec *r)
{
    unsigned char blob[SPAWN_BLOB_MAX];
    child_start cs;
    int fds[2] = {r->fd, r->cfd};

    if (sizeof cs + r->env_len > sizeof blob)
        return -E2BIG;
    memset(&cs, 0, sizeof cs);
    cs.local = r->local;
    cs.has_local = r->has_local;
    cs.env_len = (uint32_t)r->env_len;
    cs.handler = s->handler;
    cs.arg = s->arg;
    cs.file = s->program_file;
    cs.argv = s->opts.program_argv;
    cs.peer = r->peer;
    cs.is_tcp = r->is_tcp;
    cs.jsonl = s->opts.channel_jsonl;
    cs.chan_max = s->opts.chan_max;
    if (s->broker.fd >= 0) {
        cs.offered = broker_flag(s, r);
        *cs.offered = 0; /* its child has not started: nobody else writes it */
    }
    memcpy(blob, &cs, sizeof cs);
    if (r->env_len)
        memcpy(blob + sizeof cs, r->env, r->env_len);
    return sup_spawn(&s->sup, blob, sizeof cs + r->env_len, fds, s->broker.fd >= 0 ? 1 : 2, r);
}

/*
 * A connection whose child could not be started for lack of processes,
 * descriptors or memory is kept, and tried again after a backoff. Such
 * failures come in episodes, with many connections each failing at every
 * retry: the log says when one begins and when it ends, with a count, not
 * a line per connection per retry.
 */
static void retry_episode_failure(sf_server *s, const char *what, int err)
{
    if (s->retry_failures++ > 0)
        return;
    s->retry_since = ev_now(s->loop);
    sf_logev(&s->log, SF_LOG_WARN, "start_failed", 0, NULL,
             SF_FIELDS(SF_F_STR("what", what), SF_F_STR("error", strerror(-err)),
                       SF_F_DBL("retry_s", proc_backoff_delay(&s->backoff))),
             "cannot %s: %s; retrying in %g s", what, strerror(-err),
             proc_backoff_delay(&s->backoff));
}

/* A child started: the episode is over once no connection waits for a
 * retry. One failure that the first retry cured is said by the first line
 * already; a longer episode gets a second line with its count. */
static void retry_episode_end(sf_server *s)
{
    if (s->retry_failures == 0 || s->retry_head || (s->paused & PAUSE_FORK_ERR))
        return;
    if (s->retry_failures > 1)
        sf_logev(&s->log, SF_LOG_NOTICE, "start_resumed", 0, NULL,
                 SF_FIELDS(SF_F_UINT("failures", s->retry_failures),
                           SF_F_DBL("duration_s", ev_now(s->loop) - s->retry_since)),
                 "starting children again after %llu failed attempts in %.1f s",
                 (unsigned long long)s->retry_failures, ev_now(s->loop) - s->retry_since);
    s->retry_failures = 0;
}

static void retry_push(sf_server *s, conn_rec *r)
{
    r->next_free = NULL;
    if (s->retry_tail)
        s->retry_tail->next_free = r;
    else
        s->retry_head = r;
    s->retry_tail = r;
}

/* Out of descriptors, processes or memory: not the connection's fault,
 * and over once children exit. */
static int transient(int err)
{
    return err == -EMFILE || err == -ENFILE || err == -ENOMEM || err == -ENOBUFS ||
           err == -EAGAIN;
}

/* Kept: asked for again after the backoff, accepting paused meanwhile. */
static void hold_for_retry(sf_server *s, conn_rec *r, const char *what, int err)
{
    retry_episode_failure(s, what, err);
    retry_push(s, r);
    backoff_start(s, PAUSE_FORK_ERR);
}

/* conn_timeout_s has passed since the child took its connection: it is
 * ended as a kick ends it, once (the timer does not repeat). */
void server_held_too_long(struct ev_loop *loop, ev_timer *w, int revents)
{
    sf_server *s = w->data;
    conn_rec *r = (conn_rec *)(void *)((char *)w - offsetof(conn_rec, held_timer));
    (void)loop;
    (void)revents;

    if (r->pid <= 0)
        return;
    server_end_timed_out(s, r, WORKER_END_CONN_TIMEOUT);
}

void server_end_timed_out(sf_server *s, conn_rec *r, int why)
{
    int held = why == WORKER_END_CONN_TIMEOUT;

    if (held)
        s->stats.conn_timed_out++;
    else
        s->stats.idle_closed++;
    if (sf_log_enabled(&s->log, SF_LOG_NOTICE)) {
        char text[SF_ADDR_TEXT_MAX];
        server_peer_text(r, text, sizeof text);
        double after = held ? s->opts.conn_timeout_s : s->opts.idle_timeout_s;
        sf_logev(&s->log, SF_LOG_NOTICE, "timed_out", (int)r->pid, text,
                 SF_FIELDS(SF_F_STR("timeout", held ? "conn" : "idle"), SF_F_DBL("after_s", after)),
                 "[%s] %s %g s: %s pid=%d", text, held ? "connection held for" : "idle for",
                 after, held ? "ending" : "closing", (int)r->pid);
    }
    server_end_child(s, r, why);
}

/* The child runs: it has its copies of the connection and channel. */
static void on_started(sup *sp, pid_t pid, void *data, void *arg)
{
    sf_server *s = arg;
    conn_rec *r = data;
    int rc;
    (void)sp;

    if (r->worker) {
        workers_on_started(s, r, pid);
        return;
    }
    proc_backoff_reset(&s->backoff);
    retry_episode_end(s);
    close_fd(&r->fd); /* the child has it; see the top of this file */
    close_fd(&r->cfd);
    r->pid = pid;
    r->started = ev_now(s->loop);
    s->stats.accepted++;
    if (s->opts.conn_timeout_s > 0) {
        ev_timer_init(&r->held_timer, server_held_too_long, s->opts.conn_timeout_s, 0.);
        r->held_timer.data = s;
        ev_timer_start(s->loop, &r->held_timer);
    }
    /* A client that reset its connection (SO_LINGER 0) can connect again
     * from the same port while the first child still runs: two live records
     * with one tuple. Only the newer is the connection the kernel has now, so
     * it takes the entry; the older keeps none (not cut for idleness, no byte
     * counts in `ctl list`), and its exit must not delete the newer's entry
     * (tuple_forget). */
    if (r->is_tcp)
        (void)hmap_put(&s->by_tuple, &r->tuple, (uint32_t)(r - s->recs)); /* reserved in launch */
    /* A handler's child makes its channel at its first use (broker.h):
     * until then what is sent to it is queued. */
    rc = endpoint_open(&s->bus, &r->ep, s->broker.fd >= 0 ? ENDPOINT_FD_LATER : r->sfd, pid,
                       s->opts.channel_jsonl, r);
    r->sfd = -1; /* the endpoint has it (or closed it) */
    if (rc == 0 && endpoint_waiting(&r->ep))
        broker_started(s, r);
    if (rc < 0 && rc != -ESHUTDOWN)
        sf_logev(&s->log, SF_LOG_WARN, "channel_failed", (int)pid, NULL,
                 SF_FIELDS(SF_F_STR("error", strerror(-rc))), "pid %d: no channel: %s", (int)pid,
                 strerror(-rc));
    if (sf_log_enabled(&s->log, SF_LOG_INFO)) {
        char peer[SF_ADDR_TEXT_MAX];
        server_peer_text(r, peer, sizeof peer);
        sf_logev(&s->log, SF_LOG_INFO, "connected", (int)pid, peer,
                 SF_FIELDS(SF_F_UINT("active", s->sup.count)), "[%s] connected pid=%d active=%u",
                 peer, (int)pid, s->sup.count);
    }
}

static void on_spawn_failed(sup *sp, int err, void *data, void *arg)
{
    sf_server *s = arg;
    conn_rec *r = data;
    (void)sp;

    if (r->worker) {
        workers_on_spawn_failed(s, r, err);
        return;
    }
    if ((err == -EAGAIN || err == -ENOMEM) && !s->sup.shutting_down) {
        /* fork() failed: keep the connection, try again after a backoff. */
        s->stats.fork_failures++;
        hold_for_retry(s, r, "fork", err);
        return;
    }
    server_drop(s, r, "",
                err == -ECANCELED ? NULL
                : err == -ECHILD  ? "the spawner died while starting its child"
                                  : strerror(-err));
    check_limit(s);
}

static void check_limit(sf_server *s)
{
    int full = s->recs_used >= s->opts.max_conns;

    if (full && !(s->paused & PAUSE_LIMIT)) {
        sf_logev(&s->log, SF_LOG_NOTICE, "limit_reached", 0, NULL,
                 SF_FIELDS(SF_F_UINT("active", s->recs_used)),
                 "connection limit reached (%u active): not accepting until a child exits",
                 s->recs_used);
        s->stats.limit_reached++;
        pause_set(s, PAUSE_LIMIT, 1);
    } else if (!full && (s->paused & PAUSE_LIMIT)) {
        sf_logn(&s->log, SF_LOG_NOTICE, "limit_left", "below the connection limit: accepting again");
        pause_set(s, PAUSE_LIMIT, 0);
    }
}

/* Makes r's channel (unless a try before made it) and asks for its child.
 * Every table entry the child will need is reserved here, so that
 * on_started cannot fail. Returns 0, or -errno with r as it was. */
static int launch(sf_server *s, conn_rec *r)
{
    int sv[2], rc = 0;

    /* Room for every child whose start is still unanswered, and this one. */
    if (r->is_tcp)
        rc = hmap_reserve(&s->by_tuple, s->by_tuple.count + s->sup.spawning + 1);
    /* A program's channel (a handler's child makes its own, broker.h).
     * Both ends non-blocking: ours must be; execplan makes the program's
     * blocking in the spawner. */
    if (rc == 0 && r->sfd < 0 && s->broker.fd < 0) {
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0) {
            rc = -errno;
        } else {
            r->sfd = sv[0];
            r->cfd = sv[1];
        }
    }
    if (rc == 0)
        rc = spawn(s, r);
    return rc;
}

/* Refuses r (per-IP limit) or starts it (launch). A connection that cannot
 * start for want of descriptors (EMFILE on its channel: accept() took the
 * last one) or memory is kept for a retry, as after a failed fork. */
void server_start_conn(sf_server *s, conn_rec *r)
{
    char peer[SF_ADDR_TEXT_MAX];
    int rc;

    if (s->opts.max_per_ip && r->is_tcp && server_per_ip_count(s, r) >= s->opts.max_per_ip) {
        char host[SF_ADDR_TEXT_MAX];
        server_peer_text(r, peer, sizeof peer);
        if (sf_addr_host(&r->peer, host, sizeof host) < 0)
            snprintf(host, sizeof host, "?");
        sf_logev(&s->log, SF_LOG_NOTICE, "refused", 0, peer,
                 SF_FIELDS(SF_F_STR("reason", "per_ip"), SF_F_UINT("count", server_per_ip_count(s, r)),
                           SF_F_UINT("limit", s->opts.max_per_ip)),
                 "[%s] refused: %u connections from %s already (per-IP limit %u)", peer,
                 server_per_ip_count(s, r), host, s->opts.max_per_ip);
        s->stats.refused_per_ip++;
        server_rec_release(s, r);
        return;
    }
    rc = 0;
    if (s->opts.max_per_ip && r->is_tcp)
        rc = hmap_reserve(&s->per_ip, s->per_ip.count + 1);
    if (rc < 0) {
        server_drop(s, r, "cannot start its child: ", strerror(-rc));
        return;
    }
    /* Counted from now on, waiting for a retry or not: it holds its place. */
    server_per_ip_add(s, r, +1);
    rc = launch(s, r);
    if (rc < 0 && transient(rc)) {
        if (rc != -EAGAIN && rc != -ENOMEM)
            s->stats.accept_failures++;
        hold_for_retry(s, r, rc == -EAGAIN ? "fork" : "start a child", rc);
    } else if (rc < 0) {
        server_drop(s, r, "cannot start its child: ", strerror(-rc));
    }
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    sf_server *s = w->data;
    listener *l = (listener *)((char *)w - offsetof(listener, io));
    (void)loop;
    (void)revents;

    for (int i = 0; i < ACCEPT_BATCH && !s->paused; i++) {
        conn_rec *r;
        sf_addr peer;
        int fd;

        check_limit(s);
        if (s->paused)
            break;
        memset(&peer, 0, sizeof peer);
        peer.len = sizeof peer.u;
        fd = accept4(l->fd, &peer.u.sa, &peer.len, SOCK_CLOEXEC);
        if (fd < 0) {
            switch (errno) {
            case EAGAIN:
#if EAGAIN != EWOULDBLOCK
            case EWOULDBLOCK:
#endif
                return;
            case EINTR:
            case ECONNABORTED: /* the client left before we took it */
            case EPROTO:
            case EPERM:        /* a firewall rule refused it */
                continue;
            default:
                /* EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection stays in
                 * the backlog and the listener stays readable; retrying at
                 * once would spin. Wait, then try again. */
                sf_logev(&s->log, SF_LOG_WARN, "accept_failed", 0, NULL,
                         SF_FIELDS(SF_F_STR("error", strerror(errno)),
                                   SF_F_DBL("retry_s", proc_backoff_delay(&s->backoff))),
                         "cannot accept: %s; pausing accept for %g s", strerror(errno),
                         proc_backoff_delay(&s->backoff));
                s->stats.accept_failures++;
                backoff_start(s, PAUSE_ACCEPT_ERR);
                return;
            }
        }
        r = server_rec_alloc(s); /* check_limit guarantees one */
        r->fd = fd;
        r->is_tcp = l->addr.u.sa.sa_family != AF_UNIX;
        r->peer = r->is_tcp ? peer : l->addr;
        if (r->is_tcp) {
            sf_addr local;
            if (listener_local_addr(&l->addr, fd, &local) < 0) {
                server_rec_release(s, r); /* the client is gone already (ENOTCONN) */
                continue;
            }
            r->tuple = server_tuple_key(&r->peer, &local);
        }
        access_accepted(s, r, l);
    }
    check_limit(s);
}

static void backoff_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    sf_server *s = w->data;
    conn_rec *retry;
    (void)loop;
    (void)revents;

    proc_backoff_grow(&s->backoff);
    /* Fork failures: ask again. A new failure re-arms the timer and pauses
     * accepting again; the first success (on_started) resets the backoff. */
    s->paused &= ~(PAUSE_ACCEPT_ERR | PAUSE_FORK_ERR);
    /* The list is taken whole: a connection failing again goes on a new
     * one, for the next backoff, and pauses accepting again. */
    retry = s->retry_head;
    s->retry_head = s->retry_tail = NULL;
    while (retry) {
        conn_rec *r = retry;
        int rc;
        retry = r->next_free;
        rc = launch(s, r);
        if (rc < 0 && transient(rc) && !s->sup.shutting_down) {
            hold_for_retry(s, r, rc == -EAGAIN ? "fork" : "start a child", rc);
        } else if (rc < 0) {
            server_drop(s, r, "", strerror(-rc));
        }
    }
    check_limit(s);
    update_accepting(s);
}

/* --------------------------------------------------- exits and timeouts */

/* Removes r's tuple from the table if the entry is r's own (see on_started). */
void server_tuple_forget(sf_server *s, const conn_rec *r)
{
    uint32_t *slot = hmap_get(&s->by_tuple, &r->tuple);

    if (slot && *slot == (uint32_t)(r - s->recs))
        (void)hmap_del(&s->by_tuple, &r->tuple);
}

/* A child the supervisor did not start: a new generation (upgrade.c). */
static void on_other_exit(sup *sp, pid_t pid, int wstatus, void *arg)
{
    (void)sp;
    upgrade_reaped(arg, pid, wstatus);
}

static void on_child_exit(sup *sp, pid_t pid, int wstatus, void *data, void *arg)
{
    sf_server *s = arg;
    conn_rec *r = data;
    (void)sp;

    if (r->worker) {
        workers_on_exit(s, r, pid, wstatus);
        return;
    }
    sf_status st = sf_status_decode(wstatus);

    if (st.exited)
        s->stats.exited[st.code & 0xff]++;
    else
        s->stats.killed[st.signal < 64 ? st.signal : 64]++;
    if (sf_log_enabled(&s->log, SF_LOG_INFO)) {
        server_log_exit(s, r, pid, &st);
    }
    if (r->is_tcp)
        server_tuple_forget(s, r);
    broker_exited(s, r); /* a channel it made is on its way */
    endpoint_drain(&r->ep); /* its last words, before its will */
    server_rec_release(s, r);
    check_limit(s);
}

void server_log_exit(sf_server *s, const conn_rec *r, pid_t pid, const sf_status *st)
{
    char peer[SF_ADDR_TEXT_MAX], status[64];
    double duration = ev_now(s->loop) - r->started;

    server_peer_text(r, peer, sizeof peer);
    sf_status_format(st, status, sizeof status);
    sf_logev(&s->log, SF_LOG_INFO, "disconnected", (int)pid, peer,
             SF_FIELDS(SF_F_DBL("duration_s", duration), SF_F_STATUS("status", *st)),
             "[%s] disconnected pid=%d duration=%.3fs status=%s", peer, (int)pid, duration,
             status);
}

/* One connection of a dump: cut it if its client has been silent too long. */
static void idle_check_one(void *arg, const sf_addr *local, const sf_addr *peer,
                           const os_tcp_stats *st)
{
    sf_server *s = arg;
    hmap_key k = server_tuple_key(peer, local);
    uint32_t *slot = hmap_get(&s->by_tuple, &k);
    conn_rec *r;

    if (!slot)
        return; /* a connection of somebody else's on the same port, or reaped */
    r = &s->recs[*slot];
    if (r->pid <= 0 || r->idle_closed || st->idle_in_ms < (uint64_t)(s->opts.idle_timeout_s * 1000.0))
        return;
    r->idle_closed = 1;
    server_end_timed_out(s, r, WORKER_END_IDLE_TIMEOUT);
}

/* The child owns the socket: ending the child closes the connection. A
 * worker is ended with it (and replaced): its handler may be stuck. */
void server_end_child(sf_server *s, conn_rec *r, int why)
{
    if (r->worker)
        workers_end(s, r, why);
    else
        sup_terminate(&s->sup, r->pid);
}

static int port_dumped_before(const sf_server *s, size_t i)
{
    const sf_addr *a = &s->listeners[i].addr;

    for (size_t j = 0; j < i; j++) {
        const sf_addr *b = &s->listeners[j].addr;
        if (b->u.sa.sa_family == a->u.sa.sa_family && sf_addr_port(b) == sf_addr_port(a))
            return 1;
    }
    return 0;
}

int server_tcp_dump(sf_server *s, os_tcpdiag_cb cb, void *arg)
{
    if (s->diag_fd < 0 && (s->diag_fd = os_tcpdiag_open()) < 0) {
        int rc = s->diag_fd;
        s->diag_fd = -1;
    s->broker.fd = s->broker.child_fd = -1;
        return rc;
    }
    for (size_t i = 0; i < s->nlisteners; i++) {
        const sf_addr *a = &s->listeners[i].addr;
        int rc;

        if (a->u.sa.sa_family != AF_INET && a->u.sa.sa_family != AF_INET6)
            continue;
        if (port_dumped_before(s, i))
            continue; /* one port on two addresses: one dump has both */
        rc = os_tcpdiag_dump(s->diag_fd, a->u.sa.sa_family, (uint16_t)sf_addr_port(a), cb, arg);
        if (rc < 0) {
            /* It may be left mid-dump, with the rest of a reply queued
             * that the next dump would read as its own: a new one next
             * time. */
            close(s->diag_fd);
            s->diag_fd = -1;
    s->broker.fd = s->broker.child_fd = -1;
            return rc;
        }
    }
    return 0;
}

/* Asks the kernel how long each client has been silent, one dump per TCP
 * listener. The period is a quarter of the timeout (at most 1 s), so a
 * client is cut between 1 and 1.25 timeouts after its last byte. */
static void idle_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    sf_server *s = w->data;
    int rc;
    (void)loop;
    (void)revents;

    if (s->prefork)
        workers_index_tuples(s); /* their slots say who is connected */
    if (s->by_tuple.count == 0)
        return;
    if ((rc = server_tcp_dump(s, idle_check_one, s)) < 0)
        sf_logev(&s->log, SF_LOG_WARN, "idle_check_failed", 0, NULL,
                 SF_FIELDS(SF_F_STR("error", strerror(-rc))), "cannot read connection states: %s",
                 strerror(-rc));
}

/* ---------------------------------------------------------- the channel */

static endpoint *bus_find(bus *b, pid_t pid, void *arg)
{
    sf_server *s = arg;
    conn_rec *r = sup_child_data(&s->sup, pid);
    (void)b;
    return r && endpoint_is_open(&r->ep) ? &r->ep : NULL;
}

/* The bus closed a child's channel (bad input, or a full queue under the
 * kick policy): the child goes too. */
static void on_bus_kick(bus *b, endpoint *e, const char *why, void *arg)
{
    sf_server *s = arg;
    conn_rec *r = e->data;
    (void)b;
    (void)why;
    s->stats.chan_kicked++;
    server_end_child(s, r, WORKER_END_CHANNEL);
}

/* A worker's CONN_BEGIN or CONN_END (workers.c). */
static int on_session(bus *b, endpoint *e, const chan_frame *f, void *arg)
{
    (void)b;
    return workers_on_session(arg, e->data, f);
}

/* --------------------------------------------------------------- systemd */

/* Connections being served now: a child each in fork mode, busy workers. */
static unsigned active_connections(sf_server *s)
{
    worker_counts wc;

    if (!s->prefork)
        return s->sup.count;
    workers_count(s, &wc);
    return wc.busy_all;
}

void server_notify(sf_server *s, const char *text)
{
    int rc = os_notify_send(&s->notify, text);

    if (rc < 0)
        sf_logev(&s->log, SF_LOG_WARN, "notify_failed", 0, NULL,
                 SF_FIELDS(SF_F_STR("state", text), SF_F_STR("error", strerror(-rc))),
                 "cannot notify systemd (%s): %s", text, strerror(-rc));
}

/* STATUS=, when the count changed: at most once a second (the timer's). */
static void status_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    sf_server *s = w->data;
    unsigned n = active_connections(s);
    char text[96];
    (void)loop;
    (void)revents;

    if (s->status_sent == (uint64_t)n + 1)
        return;
    s->status_sent = (uint64_t)n + 1;
    snprintf(text, sizeof text, "STATUS=%u connection%s active", n, n == 1 ? "" : "s");
    server_notify(s, text);
}

static void watchdog_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    server_notify(w->data, "WATCHDOG=1");
}

/* Every listener is up and accepting (or the workers are started). */
static void notify_ready(sf_server *s)
{
    /* Upgraded: the previous generation tells systemd, with our pid as
     * MAINPID, once it has heard READY from us. */
    int upgraded = upgrade_say_ready(s);

    if (s->notify.fd < 0)
        return;
    /* Upgraded, our first STATUS= waits a tick: systemd takes it from the
     * main pid only, which we are once the previous one said MAINPID=. */
    if (!upgraded) {
        server_notify(s, "READY=1");
        status_cb(s->loop, &s->status_timer, 0);
    }
    ev_timer_start(s->loop, &s->status_timer);
    if (s->notify.watchdog_s > 0) {
        ev_timer_set(&s->watchdog_timer, s->notify.watchdog_s / 2, s->notify.watchdog_s / 2);
        ev_timer_start(s->loop, &s->watchdog_timer);
    }
}

/* Before anything is forked: who we run as from now on, for good. */
static int drop_privileges(sf_server *s)
{
    os_ids ids;
    int rc;

    if (!s->opts.user)
        return 0;
    if ((rc = os_ids_resolve(s->opts.user, s->opts.group, &ids)) < 0)
        return rc;
    /* Started by an upgrade of a server that had dropped them already. */
    if (upgrade_takes_control(s) && getuid() == ids.uid && geteuid() == ids.uid &&
        getgid() == ids.gid && getegid() == ids.gid)
        return 0;
    /* The control socket is the user's: the server removes it at exit. */
    if (s->ctl.open && chown(s->ctl.lis.addr.u.un.sun_path, ids.uid, ids.gid) < 0)
        return -errno;
    if ((rc = os_ids_drop(&ids)) < 0)
        return rc;
    sf_logev(&s->log, SF_LOG_NOTICE, "user", 0, NULL,
             SF_FIELDS(SF_F_UINT("uid", ids.uid), SF_F_UINT("gid", ids.gid)),
             "running as uid %u, gid %u", (unsigned)ids.uid, (unsigned)ids.gid);
    return 0;
}

/* Upgraded: the listeners are the next generation's now. Ours are closed
 * (their files are not ours to remove); connections accepted already are
 * served to their end. Workers are retired: each finishes the connection
 * it has, and none is started again. */
void server_stop_accepting(sf_server *s)
{
    for (size_t i = 0; i < s->nlisteners; i++) {
        ev_io_stop(s->loop, &s->listeners[i].io);
        s->listeners[i].owns_path = 0;
        listener_close(&s->listeners[i]);
    }
    ev_timer_stop(s->loop, &s->backoff_timer);
    if (s->prefork)
        workers_drain(s);
}

/* ---------------------------------------------------------------- reload */

/*
 * What is read from files: the rules, then what the application reads
 * (opts.on_reload: its log file). A failure changes nothing, so the rules
 * are parsed first and put in force last, once the application's part has
 * succeeded (it swaps its own part in only on success).
 */
int server_reload(sf_server *s, char *what, size_t len)
{
    struct rules_set *rules = NULL;
    char rules_what[512], app_what[512];
    int rc;

    rc = access_reload_prepare(s, &rules, rules_what, sizeof rules_what);
    if (rc < 0) {
        snprintf(what, len, "%s", rules_what);
        return rc;
    }
    app_what[0] = '\0';
    if (s->opts.on_reload &&
        (rc = s->opts.on_reload(s->opts.reload_arg, app_what, sizeof app_what)) < 0) {
        access_reload_discard(rules);
        snprintf(what, len, "%s", app_what[0] ? app_what : strerror(-rc));
        return rc;
    }
    access_reload_commit(s, rules);
    if (!rules_what[0] && !app_what[0])
        snprintf(what, len, "nothing to re-read (no rules file)");
    else
        snprintf(what, len, "%s%s%s", rules_what, rules_what[0] && app_what[0] ? "; " : "",
                 app_what);
    return 0;
}

static void on_reload(sup *sp, void *arg)
{
    sf_server *s = arg;
    char what[512];
    int rc;
    (void)sp;

    rc = server_reload(s, what, sizeof what);
    sf_logev(&s->log, rc < 0 ? SF_LOG_WARN : SF_LOG_NOTICE, "reload", 0, NULL,
             SF_FIELDS(SF_F_STR("by", "SIGHUP"), SF_F_BOOL("ok", rc >= 0), SF_F_STR("what", what)),
             "SIGHUP: reload %s: %s", rc < 0 ? "failed, nothing changed" : "done", what);
}

/* -------------------------------------------------------------- shutdown */

static void on_shutdown(sup *sp, void *arg)
{
    sf_server *s = arg;
    (void)sp;

    upgrade_on_shutdown(s);
    /* A drained generation's STOPPING=1 would be taken for the service's:
     * systemd heard MAINPID= of the next one. */
    if (s->notify.fd >= 0 && !s->up.draining) {
        ev_timer_stop(s->loop, &s->status_timer);
        server_notify(s, "STOPPING=1");
    }
    /* What workers said before it (a connection's end) is read first. */
    if (s->prefork)
        workers_read_all(s);
    /* Children learn the server is going away from the end of their
     * channel (no wills are published: everyone is leaving). */
    bus_close_all(&s->bus);
    /* The other instances then publish the wills of the members cut here. */
    bus_redis_close(s->bus_redis);
    s->bus_redis = NULL;
    for (size_t i = 0; i < s->nlisteners; i++) {
        ev_io_stop(s->loop, &s->listeners[i].io);
        listener_close(&s->listeners[i]);
    }
    ev_timer_stop(s->loop, &s->backoff_timer);
    if (s->prefork)
        workers_shutdown(s);
    while (s->retry_head) {
        conn_rec *r = s->retry_head;
        s->retry_head = r->next_free;
        server_rec_release(s, r);
    }
    s->retry_tail = NULL;
}

static void stop_async_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    sf_server *s = w->data;
    (void)loop;
    (void)revents;
    sup_shutdown(&s->sup);
}

void sf_server_stop(sf_server *s)
{
    ev_async_send(s->loop, &s->stop_async);
}

/* ------------------------------------------------------------ lifecycle */

size_t sf_chan_queue_min(unsigned chan_max)
{
    /* 0 is the default, as in sf_server_new. */
    return (size_t)(chan_max ? chan_max : CHAN_MAX_DEFAULT) + BUS_MSG_OVERHEAD;
}

void sf_server_opts_init(sf_server_opts *o)
{
    memset(o, 0, sizeof *o);
    o->max_conns = 1000;
    o->grace_s = 10.0;
    o->kill_grace_s = 2.0;
    o->log_level = SF_LOG_INFO;
    o->chan_max = CHAN_MAX_DEFAULT;
    o->chan_queue = SF_CHAN_QUEUE_DEFAULT;
    o->topic_history = 20;
    o->proxy_timeout_s = 5.0;
    o->upgrade_timeout_s = UPGRADE_TIMEOUT_DEFAULT;
}

/* No socket may take the number of stdin, stdout or stderr: a child would
 * then keep it as if it were its own stdio. */
static void ensure_stdio_open(void)
{
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF) {
            int nfd = open("/dev/null", O_RDWR);
            if (nfd >= 0 && nfd != fd)
                close(nfd); /* cannot happen: open takes the lowest free */
        }
    }
}

/* The metrics endpoint: on the socket the previous generation handed over
 * (an upgrade), else bound now. */
static int open_metrics(sf_server *s)
{
    listener taken;
    sf_addr a;
    int rc;

    if ((rc = addr_parse(&a, s->opts.metrics_addr, 1)) < 0)
        return rc;
    if (upgrade_take_metrics(s, &a, &taken)) {
        if ((rc = metrics_open_on(&s->metrics, s->loop, &taken, &metrics_server_table,
                                   server_stats, s)) < 0)
            return rc;
        upgrade_claim_path(s, metrics_listener(s->metrics));
        return 0;
    }
    return metrics_open(&s->metrics, s->loop, s->opts.metrics_addr, &metrics_server_table,
                        server_stats, s);
}

/* The bus options: their bounds, and the URL parsed once (kept in
 * s->bus_where). Returns 0, -EINVAL or -ENOMEM. */
static int bus_opts_check(sf_server *s)
{
    const sf_server_opts *o = &s->opts;
    const char *why;

    if (!(o->bus_lease_s >= 0) || !(o->bus_timeout_s >= 0) || !(o->bus_ping_s >= 0) ||
        !(o->bus_backoff_max_s >= 0) || o->bus_lease_s > 3600 || o->bus_timeout_s > 600 ||
        o->bus_ping_s > 600 || o->bus_backoff_max_s > 600 || (o->bus_lease_s > 0 && o->bus_lease_s < 0.3))
        return -EINVAL;
    if (!o->bus_url)
        return 0;
    if (!(s->bus_where = calloc(1, sizeof *s->bus_where)))
        return -ENOMEM;
    if (rurl_parse(o->bus_url, 0, s->bus_where, &why) < 0) {
        free(s->bus_where);
        s->bus_where = NULL;
        return -EINVAL;
    }
    return 0;
}

/* Bridges the bus to Redis (after sup_init forked the spawner: the
 * children never see Redis's sockets). */
static int bus_bridge_open(sf_server *s)
{
    const sf_server_opts *o = &s->opts;
    bus_redis_opts ro;

    if (!s->bus_where)
        return 0;
    memset(&ro, 0, sizeof ro);
    ro.outbox_max = o->bus_outbox;
    ro.lease_ms = (unsigned)(o->bus_lease_s * 1000);
    ro.stream_len = o->bus_stream_len;
    ro.history = o->topic_history;
    ro.connect_ms = ro.command_ms = (unsigned)(o->bus_timeout_s * 1000);
    ro.ping_ms = (unsigned)(o->bus_ping_s * 1000);
    ro.backoff_max_ms = (unsigned)(o->bus_backoff_max_s * 1000);
    ro.log = &s->log;
    return bus_redis_open(&s->bus, s->loop, s->bus_where, &ro, &s->bus_redis);
}

int sf_server_new(sf_server **out, const sf_server_opts *opts, sf_conn_cb handler, void *arg)
{
    sf_server *s = NULL;
    int rc = -ENOMEM;

    *out = NULL;
    /* A handler or a program, not both; workers run a handler. */
    if (!handler == !(opts && opts->program_argv) ||
        (opts && opts->program_argv && (!opts->program_argv[0] || opts->workers_max > 0)))
        return -EINVAL;
    s = os_nofork_calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->diag_fd = -1;
    s->broker.fd = s->broker.child_fd = -1;
    s->notify.fd = -1;
    s->up.link = s->up.from = -1; /* upgrade_fini may run before upgrade_init */
    if (opts)
        s->opts = *opts;
    else
        sf_server_opts_init(&s->opts);
    if (s->opts.max_conns == 0)
        s->opts.max_conns = 1000;
    if (s->opts.chan_max == 0)
        s->opts.chan_max = CHAN_MAX_DEFAULT;
    if (s->opts.chan_queue == 0)
        s->opts.chan_queue = SF_CHAN_QUEUE_DEFAULT;
    if (!(s->opts.idle_timeout_s >= 0) || !(s->opts.grace_s >= 0) || !(s->opts.kill_grace_s >= 0) ||
        !(s->opts.conn_timeout_s >= 0) || !(s->opts.bus_gather_s >= 0 && s->opts.bus_gather_s <= 1) ||
        s->opts.max_conns > (1u << 24) || s->opts.chan_max > CHAN_MAX_LIMIT ||
        s->opts.chan_queue < sf_chan_queue_min(s->opts.chan_max) ||
        s->opts.topic_history > 100000 || !(s->opts.worker_idle_s >= 0) ||
        !(s->opts.proxy_timeout_s >= 0) || !(s->opts.upgrade_timeout_s >= 0) ||
        (s->opts.workers_max > 0 && (s->opts.workers_min == 0 ||
                                     s->opts.workers_min > s->opts.workers_max ||
                                     s->opts.workers_max > s->opts.max_conns))) {
        os_nofork_free(s);
        return -EINVAL;
    }
    if ((rc = bus_opts_check(s)) < 0) {
        os_nofork_free(s);
        return rc;
    }
    s->prefork = s->opts.workers_max > 0;
    if (s->opts.worker_idle_s == 0)
        s->opts.worker_idle_s = 5.0;
    if (s->opts.proxy_timeout_s == 0)
        s->opts.proxy_timeout_s = 5.0;
    if (s->opts.upgrade_timeout_s == 0)
        s->opts.upgrade_timeout_s = UPGRADE_TIMEOUT_DEFAULT;
    s->log.cb = s->opts.log;
    s->log.arg = s->opts.log_arg;
    s->log.record_cb = s->opts.log_record;
    s->log.record_arg = s->opts.log_record_arg;
    s->log.level = s->opts.log_level;
    s->handler = handler;
    s->arg = arg;
    if (s->opts.program_argv) {
        /* Found once, here, not per connection; in plain memory, which
         * the spawner has (s is not). */
        char file[PATH_MAX];
        if ((rc = sf_program_find(s->opts.program_argv[0], file, sizeof file)) < 0)
            goto fail;
        rc = -ENOMEM;
        if (!(s->program_file = strdup(file)))
            goto fail;
    }

    ensure_stdio_open();
    s->recs = os_nofork_calloc(s->opts.max_conns, sizeof *s->recs);
    if (!s->recs)
        goto fail;
    if (s->opts.max_per_ip && hmap_init(&s->per_ip, s->opts.max_conns) < 0)
        goto fail;
    if (hmap_init(&s->by_tuple, s->opts.max_conns) < 0)
        goto fail;
    if (s->opts.idle_timeout_s > 0) {
        s->diag_fd = os_tcpdiag_open();
        if (s->diag_fd < 0) {
            rc = s->diag_fd;
            goto fail;
        }
    }
    s->loop = ev_loop_new(EVFLAG_AUTO);
    if (!s->loop)
        goto fail;
    ev_timer_init(&s->backoff_timer, backoff_cb, 0., 0.);
    s->backoff_timer.data = s;
    ev_timer_init(&s->idle_timer, idle_cb, 0., 0.);
    s->idle_timer.data = s;
    ev_async_init(&s->stop_async, stop_async_cb);
    s->stop_async.data = s;
    ev_timer_init(&s->status_timer, status_cb, 1., 1.);
    s->status_timer.data = s;
    ev_timer_init(&s->watchdog_timer, watchdog_cb, 0., 0.);
    s->watchdog_timer.data = s;
    ev_async_start(s->loop, &s->stop_async);
    upgrade_watchers_init(s);
    if ((rc = upgrade_init(s)) < 0)
        goto fail;
    if (s->opts.metrics_addr && (rc = open_metrics(s)) < 0)
        goto fail;
    *out = s;
    return 0;

fail:
    sf_server_free(s);
    return rc;
}

/* l, open, is the server's next listener. */
static void add_listener(sf_server *s, listener *l)
{
    ev_io_init(&l->io, accept_cb, l->fd, EV_READ);
    l->io.data = s;
    s->nlisteners++;
}

/* Whether one more listener may be added now: 0, -EBUSY (running) or
 * -EMFILE (LISTENERS_MAX). */
static int listener_room(const sf_server *s)
{
    if (s->ran)
        return -EBUSY;
    return s->nlisteners >= LISTENERS_MAX ? -EMFILE : 0;
}

int sf_server_listen(sf_server *s, const char *text)
{
    char plain[sizeof(((sf_addr *)0)->u.un.sun_path) + 16];
    const char *comma;
    int proxy = 0;
    sf_addr a;
    listener *l;
    int rc;

    if ((rc = listener_room(s)) < 0)
        return rc;
    /* ADDR,proxy: its clients come through a balancer that sends a PROXY
     * protocol header first (access.c). */
    if ((comma = strrchr(text, ',')) && strcmp(comma, ",proxy") == 0) {
        size_t n = (size_t)(comma - text);
        if (n >= sizeof plain)
            return -EINVAL;
        memcpy(plain, text, n);
        plain[n] = '\0';
        text = plain;
        proxy = 1;
    }
    rc = sf_addr_parse(&a, text);
    if (rc < 0)
        return rc;
    l = &s->listeners[s->nlisteners];
    /* Upgraded: the previous generation's socket, never bound again (its
     * waiting clients stay in its queue). */
    if (!upgrade_take_listener(s, &a, l) && (rc = listener_open(l, &a, s->opts.backlog, 0)) < 0)
        return rc;
    l->proxy = proxy;
    /* A balancer speaks first (its header): the kernel may hold the
     * connection until bytes came, so the header is usually there at
     * accept and reading it costs no wait and no wakeup. A best effort:
     * the deadline is ours either way (access.c, worker.c). */
    if (proxy && a.u.sa.sa_family != AF_UNIX) {
        int secs = s->opts.proxy_timeout_s >= 1 ? (int)s->opts.proxy_timeout_s : 1;
        (void)setsockopt(l->fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &secs, sizeof secs);
    }
    add_listener(s, l);
    return 0;
}

int sf_listen_fds(char ***names)
{
    return os_listen_fds(names);
}

int sf_server_listen_fd(sf_server *s, int fd)
{
    listener *l;
    int rc;

    if ((rc = listener_room(s)) < 0)
        return rc;
    l = &s->listeners[s->nlisteners];
    rc = listener_adopt(l, fd);
    if (rc < 0)
        return rc;
    add_listener(s, l);
    return 0;
}

size_t sf_server_listener_count(const sf_server *s)
{
    return s->nlisteners;
}

const sf_addr *sf_server_listener_addr(const sf_server *s, size_t i)
{
    return i < s->nlisteners ? &s->listeners[i].addr : NULL;
}

int sf_server_run(sf_server *s)
{
    struct sigaction ign, old_pipe;
    sup_config cfg;
    bus_config bcfg;
    int rc;

    if (s->ran)
        return -EBUSY;
    if (s->nlisteners == 0)
        return -EDESTADDRREQ;
    s->ran = 1;

    if ((rc = access_ready(s)) < 0)
        return rc;
    /* Out of the environment before anything is forked (notify.c). */
    if ((rc = os_notify_init(&s->notify)) < 0)
        sf_logev(&s->log, SF_LOG_WARN, "notify_failed", 0, NULL,
                 SF_FIELDS(SF_F_STR("error", strerror(-rc))), "cannot use NOTIFY_SOCKET: %s",
                 strerror(-rc));
    if ((rc = drop_privileges(s)) < 0)
        return rc;

    rc = os_fdlimit_raise(&s->orig_fdlimit);
    if (rc == 0) {
        struct rlimit now;
        /* Children get the original back, only if it changed. */
        s->have_orig_fdlimit = getrlimit(RLIMIT_NOFILE, &now) == 0 &&
                               now.rlim_cur != s->orig_fdlimit.rlim_cur;
    }
    else
        sf_logev(&s->log, SF_LOG_WARN, "fd_limit", 0, NULL,
                 SF_FIELDS(SF_F_STR("error", strerror(-rc))),
                 "cannot raise the descriptor limit: %s", strerror(-rc));

    memset(&bcfg, 0, sizeof bcfg);
    bcfg.chan_max = s->opts.chan_max;
    bcfg.queue_limit = s->opts.chan_queue;
    bcfg.full_policy = s->opts.chan_full_kick ? BUS_FULL_KICK : BUS_FULL_DROP;
    bcfg.history = s->opts.topic_history;
    bcfg.gather_s = s->opts.bus_gather_s;
    bcfg.on_kick = on_bus_kick;
    bcfg.find = bus_find;
    bcfg.on_session = s->prefork ? on_session : NULL;
    bcfg.arg = s;
    bcfg.log = &s->log;
    if ((rc = bus_init(&s->bus, s->loop, &bcfg)) < 0)
        return rc;
    s->bus_ready = 1;
    /* A handler's children make their channels at first use (broker.h);
     * a program's and a worker's come with them. */
    if (!s->prefork && !s->opts.program_argv && (rc = broker_init(s)) < 0)
        return rc;

    /* A client that goes away while we write must cost an EPIPE, never the
     * supervisor, and never a C handler: set before sup_init forks the
     * spawner, whose children inherit it (an ignored signal stays ignored
     * in proc_fork). Exec'd programs get the default back (the spawner's
     * exec_reset; sf_conn_exec). */
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGPIPE, &ign, &old_pipe);

    /* Before sup_init forks the spawner: what workers are sent is there. */
    if (s->prefork && (rc = workers_init(s)) < 0) {
        sigaction(SIGPIPE, &old_pipe, NULL);
        return rc;
    }
    memset(&cfg, 0, sizeof cfg);
    cfg.max_children = s->opts.max_conns;
    cfg.grace = s->opts.grace_s;
    cfg.kill_grace = s->opts.kill_grace_s;
    cfg.on_exit = on_child_exit;
    cfg.on_shutdown = on_shutdown;
    cfg.on_reload = on_reload;
    cfg.arg = s;
    cfg.log = &s->log;
    cfg.spawn_child = s->prefork ? worker_main : child_main;
    /* Workers are always forked: they run the handler. */
    cfg.spawn_plan = s->prefork ? NULL : child_plan;
    cfg.child_fdlimit = s->have_orig_fdlimit ? &s->orig_fdlimit : NULL;
    cfg.spawn_shared_fd = s->broker.child_fd > 0 ? s->broker.child_fd : 0;
    cfg.on_started = on_started;
    cfg.on_spawn_failed = on_spawn_failed;
    cfg.on_other_exit = on_other_exit;
    rc = sup_init(&s->sup, s->loop, &cfg);
    if (rc < 0) {
        sigaction(SIGPIPE, &old_pipe, NULL);
        return rc;
    }
    s->sup_ready = 1;
    if ((rc = bus_bridge_open(s)) < 0) {
        sigaction(SIGPIPE, &old_pipe, NULL);
        return rc;
    }
    /* After sup_init forked the spawner: SIGUSR2 is the workers' own. */
    upgrade_start_watching(s);
    /* The watchers run: a caller may have blocked these to cover its
     * startup (see sf_server_run in sockfork.h); a pending one is handled
     * by the loop now. */
    {
        sigset_t stop_signals;
        sigemptyset(&stop_signals);
        sigaddset(&stop_signals, SIGTERM);
        sigaddset(&stop_signals, SIGINT);
        sigaddset(&stop_signals, SIGHUP);
        sigaddset(&stop_signals, SIGUSR2);
        sigprocmask(SIG_UNBLOCK, &stop_signals, NULL);
    }

    if (s->opts.idle_timeout_s > 0) {
        double period = s->opts.idle_timeout_s / 4;
        period = period < 0.05 ? 0.05 : period > 1.0 ? 1.0 : period;
        ev_timer_set(&s->idle_timer, period, period);
        ev_timer_start(s->loop, &s->idle_timer);
    }
    if (s->prefork)
        workers_start(s);
    if (s->opts.on_ready)
        s->opts.on_ready(s, s->opts.ready_arg);
    update_accepting(s);
    notify_ready(s);
    sup_run(&s->sup);

    ev_timer_stop(s->loop, &s->idle_timer);
    ev_timer_stop(s->loop, &s->status_timer);
    ev_timer_stop(s->loop, &s->watchdog_timer);
    if (s->have_orig_fdlimit)
        (void)setrlimit(RLIMIT_NOFILE, &s->orig_fdlimit);
    /* Logged while SIGPIPE is still ignored: a log going to a pipe whose
     * reader has left must not kill us now, before the caller cleans up. */
    sf_logn(&s->log, SF_LOG_NOTICE, "exiting", "exiting");
    sigaction(SIGPIPE, &old_pipe, NULL);
    return 0;
}

int sf_server_control(sf_server *s, const char *path)
{
    if (s->ran)
        return -EBUSY;
    if (s->ctl.open)
        return -EEXIST;
    return ctl_open(&s->ctl, s->loop, path, server_command, s, &s->log,
                    upgrade_takes_control(s));
}

const char *sf_server_control_path(const sf_server *s)
{
    return s->ctl.open ? s->ctl.lis.addr.u.un.sun_path : NULL;
}

void sf_server_free(sf_server *s)
{
    if (!s)
        return;
    ctl_close(&s->ctl);
    upgrade_fini(s);
    metrics_close(s->metrics);
    for (size_t i = 0; i < s->nlisteners; i++) {
        if (s->loop)
            ev_io_stop(s->loop, &s->listeners[i].io);
        listener_close(&s->listeners[i]);
    }
    if (s->recs) {
        for (unsigned i = 0; i < s->recs_touched; i++) {
            close_fd(&s->recs[i].fd);
            close_fd(&s->recs[i].cfd);
            close_fd(&s->recs[i].sfd);
        }
    }
    if (s->sup_ready)
        sup_fini(&s->sup);
    bus_redis_close(s->bus_redis); /* before bus_fini */
    s->bus_redis = NULL;
    free(s->bus_where);
    broker_fini(s);
    if (s->bus_ready)
        bus_fini(&s->bus);
    if (s->loop) {
        ev_timer_stop(s->loop, &s->backoff_timer);
        ev_timer_stop(s->loop, &s->idle_timer);
        ev_timer_stop(s->loop, &s->status_timer);
        ev_timer_stop(s->loop, &s->watchdog_timer);
        ev_async_stop(s->loop, &s->stop_async);
        ev_loop_destroy(s->loop);
    }
    if (s->prefork)
        workers_fini(s);
    access_fini(s);
    os_notify_fini(&s->notify);
    hmap_free(&s->per_ip);
    hmap_free(&s->by_tuple);
    if (s->diag_fd >= 0)
        close(s->diag_fd);
    free(s->program_file);
    os_nofork_free(s->recs);
    os_nofork_free(s);
}
