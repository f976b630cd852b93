/*
 * workers.c - prefork mode, the supervisor's side: a pool of workers that
 * accept connections themselves (worker.c is their side).
 *
 * A worker is a child like any other (forked by the spawner, reaped by
 * the supervisor) with a record that lives as long as the process. Its
 * channel carries, besides the bus requests of its handler, a CONN_BEGIN
 * frame when it takes a connection and a CONN_END when the handler has
 * returned: so the supervisor knows which workers are busy, whom `ctl
 * list`, `send` and `kick` are about, and the bus gives each connection
 * a clean slate (endpoint_session_end).
 *
 * How many run is sizing_decide's (sizing.h): the minimum at once, more
 * in a ramp while every worker is busy, idle ones above the minimum
 * retired. A worker is never killed to retire it: it is told to go
 * (SIGUSR2), and goes when it is between two connections, so a
 * retirement never cuts a connection; at its max_requests a worker goes
 * by itself, its replacement started when it began its last connection.
 * Killing (SIGTERM to its group, SIGKILL after kill_grace) is for a worker
 * whose connection must end: conn_timeout, idle_timeout, kick, a bus
 * kick. A worker that dies young again and again (its handler crashes)
 * is started again after a growing backoff, and the log says so once per
 * episode.
 */
#include "server/server_internal.h"
#include "channel/be.h"
#include "process/process.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>

#define WORKER_YOUNG_S 1.0      /* a worker dying sooner is a crash loop's */
#define WORKER_RETIRE_RESEND_S 1.0 /* the signal to go, sent again till it goes */
#define RECYCLE_AT_ONCE 2       /* replacements starting for workers at their limit */

static const char *const end_names[WORKER_END_REASONS] = {
    [WORKER_END_NONE] = "exited",
    [WORKER_END_IDLE] = "idle",
    [WORKER_END_MAX_REQUESTS] = "max_requests",
    [WORKER_END_CONN_TIMEOUT] = "conn_timeout",
    [WORKER_END_IDLE_TIMEOUT] = "idle_timeout",
    [WORKER_END_KICKED] = "kicked",
    [WORKER_END_CHANNEL] = "channel",
    [WORKER_END_SHUTDOWN] = "shutdown",
    [WORKER_END_CRASHED] = "crashed",
};

const char *worker_end_name(int why)
{
    return why >= 0 && why < WORKER_END_REASONS ? end_names[why] : "?";
}

const char *worker_state_name(const sf_server *s, const conn_rec *r)
{
    if (sup_is_terminating((sup *)&s->sup, r->pid))
        return "terminating";
    if (r->ending)
        return r->wstate == WORKER_BUSY ? "busy, retiring" : "retiring";
    return r->wstate == WORKER_BUSY ? "busy" : "idle";
}

/* xorshift64: the jitter of max_requests needs no better. */
static uint64_t next_random(worker_pool *wp)
{
    uint64_t x = wp->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return wp->rng = x;
}

/* max_requests, plus up to a tenth more at random (at least 0..1), so
 * workers started together do not all go together. */
static uint64_t jittered_limit(sf_server *s)
{
    uint64_t n = s->opts.max_requests, spread;

    if (n == 0)
        return 0;
    spread = n / 10 + 1;
    return n + next_random(&s->wp) % (spread + 1);
}

/* -------------------------------------------------------------- sizing */

static void adjust(sf_server *s);

static void adjust_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    adjust(w->data);
}

/* Asks the spawner for one worker: its channel, the listeners, the blob.
 * The blob is a worker_start followed by the worker's own max_requests
 * (a uint64_t, jittered; 0: none), which worker.c reads the same way:
 * the worker itself must stop at its limit, since it takes its next
 * connection before the supervisor has read the end of the last one. */
static int spawn_worker(sf_server *s, conn_rec *replacing)
{
    worker_pool *wp = &s->wp;
    int fds[LISTENERS_MAX + 1], sv[2], rc;
    worker_start ws;
    unsigned char blob[sizeof ws + sizeof(uint64_t)];
    conn_rec *r = server_rec_alloc(s);

    if (!r)
        return -ENOSPC;
    r->worker = 1;
    r->wstate = WORKER_STARTING;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0) {
        rc = -errno;
        server_rec_release(s, r);
        return rc;
    }
    r->sfd = sv[0];
    r->cfd = sv[1];
    for (size_t i = 0; i < s->nlisteners; i++)
        fds[i] = s->listeners[i].fd;
    fds[s->nlisteners] = r->cfd;
    memset(&ws, 0, sizeof ws);
    ws.handler = s->handler;
    ws.arg = s->arg;
    ws.listeners = wp->listeners;
    ws.nlisteners = (unsigned)s->nlisteners;
    ws.chan_max = s->opts.chan_max;
    ws.ask_verdict = s->opts.max_per_ip > 0;
    r->limit = jittered_limit(s);
    memcpy(blob, &ws, sizeof ws);
    memcpy(blob + sizeof ws, &r->limit, sizeof r->limit);
    rc = sup_spawn(&s->sup, blob, sizeof blob, fds, (int)s->nlisteners + 1, r);
    if (rc < 0) {
        server_rec_release(s, r);
        return rc;
    }
    r->replacing = replacing;
    if (replacing) {
        replacing->replaced = 1;
        wp->recycling++;
    }
    wp->starting++;
    return 0;
}

/* Tells a worker to go when it is between connections: SIGUSR2, sent
 * again until it has gone (worker.c: a signal that lands between its
 * look at the flag and accept() is seen after its next connection). */
static void retire_resend(struct ev_loop *loop, ev_timer *w, int revents)
{
    conn_rec *r = (conn_rec *)(void *)((char *)w - offsetof(conn_rec, retire_timer));
    sf_server *s = w->data;
    (void)loop;
    (void)revents;

    if (r->pid > 0)
        sup_signal(&s->sup, r->pid, SIGUSR2);
}

static void retire(sf_server *s, conn_rec *r, int why)
{
    if (r->ending || r->pid <= 0)
        return;
    r->ending = why;
    s->wp.retiring++;
    if (r->wstate == WORKER_IDLE)
        s->wp.idle--;
    else if (r->wstate == WORKER_BUSY)
        s->wp.busy--;
    sup_signal(&s->sup, r->pid, SIGUSR2);
    ev_timer_init(&r->retire_timer, retire_resend, WORKER_RETIRE_RESEND_S, WORKER_RETIRE_RESEND_S);
    r->retire_timer.data = s;
    ev_timer_start(s->loop, &r->retire_timer);
}

void workers_end(sf_server *s, conn_rec *r, int why)
{
    /* Told to go as well: a handler that catches SIGTERM and returns must
     * not take another connection that SIGKILL would then cut. */
    retire(s, r, why);
    sup_terminate(&s->sup, r->pid);
}

/* Workers at their max_requests, or serving the last connection of it
 * (they exit by themselves after it): a replacement first, and the old
 * one told to go once it runs (workers_on_started), so the pool never
 * has one fewer; at most RECYCLE_AT_ONCE at a time. At the maximum there
 * is no room for both: the old one goes first and the minimum refills. */
static void recycle(sf_server *s, unsigned total)
{
    worker_pool *wp = &s->wp;

    for (unsigned i = 0; i < s->recs_touched && wp->recycling < RECYCLE_AT_ONCE; i++) {
        conn_rec *r = &s->recs[i];

        if (!r->worker || r->pid <= 0 || r->ending || r->replaced || !r->limit ||
            r->served + (r->wstate == WORKER_BUSY && !r->refused) < r->limit)
            continue;
        if (total < wp->max && spawn_worker(s, r) == 0) {
            total++;
            continue;
        }
        retire(s, r, WORKER_END_MAX_REQUESTS);
    }
}

/* Idle workers, longest idle first, told to go. */
static void retire_idle(sf_server *s, unsigned n)
{
    while (n-- > 0) {
        conn_rec *oldest = NULL;
        for (unsigned i = 0; i < s->recs_touched; i++) {
            conn_rec *r = &s->recs[i];
            if (r->worker && r->pid > 0 && !r->ending && r->wstate == WORKER_IDLE &&
                (!oldest || r->idle_since < oldest->idle_since))
                oldest = r;
        }
        if (!oldest)
            return;
        retire(s, oldest, WORKER_END_IDLE);
    }
}

/* Counts the idle workers that have waited idle_s, and when the next
 * will have. */
static void idle_ages(sf_server *s, sizing_load *load)
{
    for (unsigned i = 0; i < s->recs_touched; i++) {
        conn_rec *r = &s->recs[i];
        double at;

        if (!r->worker || r->pid <= 0 || r->ending || r->wstate != WORKER_IDLE)
            continue;
        at = r->idle_since + s->wp.idle_s;
        if (at <= load->now)
            load->idle_long++;
        else if (load->idle_long_next == 0 || at < load->idle_long_next)
            load->idle_long_next = at;
    }
}

/* The one place that starts and retires workers: after every change of
 * state, and when the last decision asked to look again. */
static void adjust(sf_server *s)
{
    worker_pool *wp = &s->wp;
    sizing_load load;
    sizing_cfg cfg;
    sizing_plan plan;
    unsigned total;

    if (s->sup.shutting_down)
        return;
    memset(&load, 0, sizeof load);
    load.idle = wp->idle;
    load.busy = wp->busy;
    load.starting = wp->starting;
    load.now = ev_now(s->loop);
    load.hold_until = wp->hold_until;
    idle_ages(s, &load);
    /* Workers told to go are still processes: they count against the
     * maximum, not toward the minimum. */
    total = wp->idle + wp->busy + wp->starting + wp->retiring;
    cfg.max = wp->max > wp->retiring ? wp->max - wp->retiring : 0;
    cfg.min = wp->min < cfg.max ? wp->min : cfg.max;
    cfg.idle_s = wp->idle_s;
    if (cfg.max == 0) {
        plan.start = plan.retire = 0;
        plan.recheck_at = 0;
    } else {
        plan = sizing_decide(&cfg, &wp->ramp, &load);
    }
    for (unsigned i = 0; i < plan.start; i++) {
        int rc = spawn_worker(s, NULL);
        if (rc < 0) {
            sf_logf(&s->log, SF_LOG_WARN, "cannot start a worker: %s; trying again in %g s",
                    strerror(-rc), proc_backoff_delay(&wp->crash_backoff));
            wp->hold_until = load.now + proc_backoff_next(&wp->crash_backoff);
            plan.recheck_at = wp->hold_until;
            break;
        }
        total++;
    }
    retire_idle(s, plan.retire);
    recycle(s, total);
    ev_timer_stop(s->loop, &wp->timer);
    if (plan.recheck_at > 0) {
        double in = plan.recheck_at - load.now;
        ev_timer_set(&wp->timer, in > 0.001 ? in : 0.001, 0.);
        ev_timer_start(s->loop, &wp->timer);
    }
}

/* ----------------------------------------------------------- lifecycle */

int workers_init(sf_server *s)
{
    worker_pool *wp = &s->wp;

    /* Plain memory, not os_nofork's: the spawner and the workers read it. */
    wp->listeners = calloc(s->nlisteners, sizeof *wp->listeners);
    if (!wp->listeners)
        return -ENOMEM;
    for (size_t i = 0; i < s->nlisteners; i++) {
        int fl;
        wp->listeners[i].addr = s->listeners[i].addr;
        wp->listeners[i].is_tcp = s->listeners[i].addr.u.sa.sa_family != AF_UNIX;
        /* One listener: workers block in accept() (the kernel hands each
         * connection to the longest waiter). Several: they wait in epoll
         * and accept without blocking. The flag is the socket's, shared by
         * every copy; the supervisor never accepts in this mode. */
        fl = fcntl(s->listeners[i].fd, F_GETFL);
        if (fl < 0)
            return -errno;
        fl = s->nlisteners == 1 ? fl & ~O_NONBLOCK : fl | O_NONBLOCK;
        if (fcntl(s->listeners[i].fd, F_SETFL, fl) < 0)
            return -errno;
    }
    wp->min = s->opts.workers_min;
    wp->max = s->opts.workers_max;
    wp->idle_s = s->opts.worker_idle_s;
    wp->rng = ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL) ^ 0x9e3779b97f4a7c15ull;
    ev_timer_init(&wp->timer, adjust_cb, 0., 0.);
    wp->timer.data = s;
    return 0;
}

void workers_fini(sf_server *s)
{
    if (s->loop)
        ev_timer_stop(s->loop, &s->wp.timer);
    free(s->wp.listeners);
    s->wp.listeners = NULL;
}

void workers_start(sf_server *s)
{
    sf_logf(&s->log, SF_LOG_INFO, "prefork: %u to %u workers%s", s->wp.min, s->wp.max,
            s->opts.max_requests ? ", each replaced after about max_requests connections" : "");
    adjust(s);
}

void workers_shutdown(sf_server *s)
{
    ev_timer_stop(s->loop, &s->wp.timer);
    /* Idle workers go at once, busy ones after their connection; the
     * grace period and its SIGTERM are the supervisor's, as in fork mode. */
    for (unsigned i = 0; i < s->recs_touched; i++) {
        conn_rec *r = &s->recs[i];
        if (r->worker && r->pid > 0)
            retire(s, r, WORKER_END_SHUTDOWN);
    }
}

void workers_on_started(sf_server *s, conn_rec *r, pid_t pid)
{
    worker_pool *wp = &s->wp;
    int rc;

    close(r->cfd); /* the worker has its copy */
    r->cfd = -1;
    r->pid = pid;
    r->born = r->idle_since = ev_now(s->loop);
    r->wstate = WORKER_IDLE;
    wp->starting--;
    wp->idle++;
    s->stats.workers_started++;
    rc = endpoint_open(&s->bus, &r->ep, r->sfd, pid, 0, r);
    r->sfd = -1;
    if (rc == 0)
        endpoint_use_sessions(&r->ep);
    else if (rc != -ESHUTDOWN)
        sf_logf(&s->log, SF_LOG_WARN, "worker pid %d: no channel: %s", (int)pid, strerror(-rc));
    sf_logf(&s->log, SF_LOG_DEBUG, "worker pid=%d started", (int)pid);
    if (rc < 0 || s->sup.shutting_down) {
        retire(s, r, WORKER_END_SHUTDOWN);
        if (rc < 0)
            sup_terminate(&s->sup, pid); /* no channel: it would serve blind */
    }
    if (r->replacing) {
        /* It accepts now: the worker it replaces may go. */
        conn_rec *old = r->replacing;
        r->replacing = NULL;
        wp->recycling--;
        if (old->pid > 0)
            retire(s, old, WORKER_END_MAX_REQUESTS);
    }
    adjust(s);
}

void workers_on_spawn_failed(sf_server *s, conn_rec *r, int err)
{
    worker_pool *wp = &s->wp;

    wp->starting--;
    if (r->replacing) {
        r->replacing->replaced = 0;
        wp->recycling--;
    }
    if (err == -EAGAIN || err == -ENOMEM)
        s->stats.fork_failures++;
    if (err != -ECANCELED && !s->sup.shutting_down) {
        sf_logf(&s->log, SF_LOG_WARN, "cannot start a worker: %s; trying again in %g s",
                strerror(-err), proc_backoff_delay(&wp->crash_backoff));
        wp->hold_until = ev_now(s->loop) + proc_backoff_next(&wp->crash_backoff);
    }
    server_rec_release(s, r);
    adjust(s);
}

/* A worker gone while serving: its connection ended with it. */
static void end_connection_of_dead(sf_server *s, conn_rec *r, pid_t pid, const sf_status *st)
{
    char status[64];

    if (r->wstate != WORKER_BUSY)
        return;
    if (r->is_tcp)
        server_tuple_forget(s, r);
    if (r->counted_ip)
        server_per_ip_add(s, r, -1);
    ev_timer_stop(s->loop, &r->held_timer);
    if (!r->refused && sf_log_enabled(&s->log, SF_LOG_INFO)) {
        sf_status_format(st, status, sizeof status);
        server_log_exit(s, r, pid, status);
    }
}

/* The crash-loop backoff: a worker that died young, with nobody asking,
 * holds the next start back, longer each time; the first of an episode
 * is logged, and its end (a connection served) with the count. */
static void died_young(sf_server *s, pid_t pid, const char *status)
{
    worker_pool *wp = &s->wp;
    double wait = proc_backoff_next(&wp->crash_backoff);

    wp->hold_until = ev_now(s->loop) + wait;
    if (wp->crash_streak++ == 0) {
        wp->crash_since = ev_now(s->loop);
        sf_logf(&s->log, SF_LOG_WARN,
                "worker pid=%d died within %g s of starting (%s): starting workers again "
                "after a growing wait (now %g s) while they keep dying young",
                (int)pid, WORKER_YOUNG_S, status, wait);
    }
}

static void crash_loop_over(sf_server *s)
{
    worker_pool *wp = &s->wp;

    if (wp->crash_streak == 0)
        return;
    sf_logf(&s->log, SF_LOG_NOTICE,
            "workers serve again after %llu died young in %.1f s",
            (unsigned long long)wp->crash_streak, ev_now(s->loop) - wp->crash_since);
    wp->crash_streak = 0;
    proc_backoff_reset(&wp->crash_backoff);
    wp->hold_until = 0;
}

void workers_on_exit(sf_server *s, conn_rec *r, pid_t pid, int wstatus)
{
    worker_pool *wp = &s->wp;
    sf_status st = sf_status_decode(wstatus);
    int why;
    char status[64];

    /* Its last words first: a CONN_BEGIN (or CONN_END) it wrote before it
     * died, still unread, says what it was doing when it died. Read after
     * the counts below, it made a dead worker busy (idle counted below 0,
     * a connection never logged as ended). */
    endpoint_drain(&r->ep);
    why = r->ending;
    sf_status_format(&st, status, sizeof status);
    end_connection_of_dead(s, r, pid, &st);
    if (r->wstate == WORKER_BUSY && !r->refused) {
        /* The connection's end, counted as a fork-mode child's would be. */
        if (st.exited)
            s->stats.exited[st.code & 0xff]++;
        else
            s->stats.killed[st.signal < 64 ? st.signal : 64]++;
    }
    if (r->ending)
        wp->retiring--;
    else if (r->wstate == WORKER_IDLE)
        wp->idle--;
    else if (r->wstate == WORKER_BUSY)
        wp->busy--;
    if (r->replaced)
        r->replaced = 0; /* its replacement runs on, replacing nobody */
    for (unsigned i = 0; i < s->recs_touched; i++)
        if (s->recs[i].replacing == r)
            s->recs[i].replacing = NULL, wp->recycling--;
    if (!why) {
        why = WORKER_END_CRASHED;
        sf_logf(&s->log, SF_LOG_WARN, "worker pid=%d died: %s (served %llu, %s)", (int)pid, status,
                (unsigned long long)r->served, r->wstate == WORKER_BUSY ? "busy" : "idle");
        if (ev_now(s->loop) - r->born < WORKER_YOUNG_S && !s->sup.shutting_down)
            died_young(s, pid, status);
    } else {
        sf_logf(&s->log, SF_LOG_DEBUG, "worker pid=%d ended (%s): %s, served %llu", (int)pid,
                worker_end_name(why), status, (unsigned long long)r->served);
    }
    s->stats.workers_ended[why]++;
    server_rec_release(s, r); /* its connection's will, after its last words */
    adjust(s);
}

/* ---------------------------------------------------- its connections */

/* CONN_BEGIN: [u8 listener][u8 n][peer: n bytes][local sockaddr]. */
static int begin(sf_server *s, conn_rec *r, const chan_frame *f)
{
    const worker_listener *l;
    size_t plen, llen;
    unsigned char verdict = 1;

    if (f->len < 2 || f->payload[0] >= s->nlisteners || r->wstate != WORKER_IDLE)
        return -1;
    plen = f->payload[1];
    if (plen > sizeof r->peer.u || 2 + plen > f->len || f->len - 2 - plen > sizeof r->peer.u)
        return -1;
    llen = f->len - 2 - plen;
    r->listener = f->payload[0];
    l = &s->wp.listeners[r->listener];
    r->is_tcp = l->is_tcp;
    if (r->is_tcp) {
        sf_addr local;
        if (plen < sizeof(sa_family_t) || llen < sizeof(sa_family_t))
            return -1;
        memset(&r->peer, 0, sizeof r->peer);
        memcpy(&r->peer.u, f->payload + 2, plen);
        r->peer.len = (socklen_t)plen;
        memset(&local, 0, sizeof local);
        memcpy(&local.u, f->payload + 2 + plen, llen);
        local.len = (socklen_t)llen;
        r->tuple = server_tuple_key(&r->peer, &local);
    } else {
        r->peer = l->addr; /* Unix: the listener's path, as in fork mode */
    }
    r->wstate = WORKER_BUSY;
    r->refused = 0;
    r->started = ev_now(s->loop);
    if (!r->ending) {
        s->wp.idle--;
        s->wp.busy++;
    }
    endpoint_session_begin(&r->ep);

    if (s->opts.max_per_ip && r->is_tcp) {
        unsigned n = server_per_ip_count(s, r);
        if (n >= s->opts.max_per_ip || hmap_reserve(&s->per_ip, s->per_ip.count + 1) < 0) {
            char peer[SF_ADDR_TEXT_MAX], host[SF_ADDR_TEXT_MAX];
            server_peer_text(r, peer, sizeof peer);
            if (sf_addr_host(&r->peer, host, sizeof host) < 0)
                snprintf(host, sizeof host, "?");
            sf_logf(&s->log, SF_LOG_NOTICE,
                    "[%s] refused: %u connections from %s already (per-IP limit %u)", peer, n, host,
                    s->opts.max_per_ip);
            s->stats.refused_per_ip++;
            r->refused = 1;
            verdict = 0;
        } else {
            server_per_ip_add(s, r, +1);
        }
    }
    if (s->opts.max_per_ip && endpoint_send_control(&r->ep, CHAN_T_CONN_VERDICT, &verdict, 1) < 0)
        return -1;
    if (r->refused)
        return 0;
    s->stats.accepted++;
    if (r->is_tcp && hmap_reserve(&s->by_tuple, s->by_tuple.count + 1) == 0)
        (void)hmap_put(&s->by_tuple, &r->tuple, (uint32_t)(r - s->recs));
    if (s->opts.conn_timeout_s > 0) {
        ev_timer_init(&r->held_timer, server_held_too_long, s->opts.conn_timeout_s, 0.);
        r->held_timer.data = s;
        ev_timer_start(s->loop, &r->held_timer);
    }
    if (sf_log_enabled(&s->log, SF_LOG_INFO)) {
        char peer[SF_ADDR_TEXT_MAX];
        server_peer_text(r, peer, sizeof peer);
        sf_logf(&s->log, SF_LOG_INFO, "[%s] connected pid=%d active=%u", peer, (int)r->pid,
                s->wp.busy);
    }
    if (!r->ending && (s->wp.idle == 0 || (r->limit && r->served + 1 >= r->limit)))
        adjust(s); /* every worker busy (the ramp may start more), or this
                    * one's last connection (its replacement starts) */
    return 0;
}

/* CONN_END: [be32 the handler's return value]. */
static int end(sf_server *s, conn_rec *r, const chan_frame *f)
{
    uint32_t rc;

    if (f->len != 4 || r->wstate != WORKER_BUSY)
        return -1;
    rc = be32_get(f->payload);
    if (!r->refused) {
        s->stats.exited[rc & 0xff]++;
        if (sf_log_enabled(&s->log, SF_LOG_INFO)) {
            /* Worded as sf_status_format words a fork-mode child's exit:
             * the log reads the same in both modes. */
            sf_status st = {.exited = 1, .code = (int)(rc & 0xff)};
            char status[64];
            sf_status_format(&st, status, sizeof status);
            server_log_exit(s, r, r->pid, status);
        }
        r->served++;
        crash_loop_over(s);
    }
    if (r->is_tcp)
        server_tuple_forget(s, r);
    if (r->counted_ip)
        server_per_ip_add(s, r, -1);
    ev_timer_stop(s->loop, &r->held_timer);
    r->wstate = WORKER_IDLE;
    r->refused = 0;
    r->idle_since = ev_now(s->loop);
    if (!r->ending) {
        s->wp.busy--;
        s->wp.idle++;
    }
    if (endpoint_session_end(&r->ep) < 0)
        return -1;
    if (r->limit && r->served >= r->limit)
        retire(s, r, WORKER_END_MAX_REQUESTS); /* it exits by itself now */
    adjust(s);
    return 0;
}

int workers_on_session(sf_server *s, conn_rec *r, const chan_frame *f)
{
    if (!r || !r->worker)
        return -1;
    return f->type == CHAN_T_CONN_BEGIN ? begin(s, r, f) : end(s, r, f);
}
