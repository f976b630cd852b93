/*
 * workers.c - prefork mode, the supervisor's side: a pool of workers that
 * accept connections themselves (worker.c is their side).
 *
 * A worker is a child like any other (forked by the spawner, reaped by
 * the supervisor) with a record that lives as long as the process. What
 * it does with each connection it writes in its slot (slot.h, shared
 * memory), which the supervisor reads on a tick (WORKERS_TICK_S): how many
 * are busy, for how long, how many each has served. So a connection costs
 * the supervisor nothing unless it needs the supervisor: a connection that
 * uses the channel opens it with a CONN_BEGIN frame and closes it with
 * CONN_END, and the bus gives each a clean slate (endpoint_session_end);
 * with a log line per connection or a per-IP limit, every connection does.
 *
 * How many run is sizing_decide's (sizing.h): the minimum at once, more
 * in a ramp while every worker is busy, idle ones above the minimum
 * retired. A worker is never killed to retire it: it is told to go
 * (SIGUSR2), and goes when it is between two connections, so a
 * retirement never cuts a connection. Killing (SIGTERM to its group,
 * SIGKILL after kill_grace) is for a worker whose connection must end:
 * conn_timeout, idle_timeout, kick, a bus kick. A worker that dies young
 * again and again (its handler crashes) is started again after a growing
 * backoff, and the log says so once per episode.
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
#include <sys/mman.h>
#include <sys/socket.h>

#define WORKER_YOUNG_S 1.0      /* a worker dying sooner is a crash loop's */
#define WORKER_RETIRE_RESEND_S 1.0 /* the signal to go, sent again till it goes */
#define RECYCLE_AT_ONCE 2       /* replacements starting for workers at their limit */
#define WORKERS_TICK_S 0.1      /* the slots are read this often */

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

int workers_slot(const conn_rec *r, worker_slot *out)
{
    if (!r->slot || slot_read(r->slot, out, sizeof *out) < 0) {
        memset(out, 0, sizeof *out);
        return -1;
    }
    return 0;
}

/* The slot without its addresses: the tick's read. */
static int slot_state(const conn_rec *r, worker_slot *out)
{
    if (!r->slot || slot_read(r->slot, out, SLOT_STATE_SIZE) < 0) {
        memset(out, 0, SLOT_STATE_SIZE);
        return -1;
    }
    return 0;
}

const char *worker_state_name(const sf_server *s, const conn_rec *r)
{
    worker_slot sl;
    int busy = slot_state(r, &sl) == 0 && sl.busy;

    if (sup_is_terminating((sup *)&s->sup, r->pid))
        return "terminating";
    if (r->wstate == WORKER_STARTING)
        return "starting";
    if (r->ending)
        return busy ? "busy, retiring" : "retiring";
    return busy ? "busy" : "idle";
}

static int is_up(const conn_rec *r)
{
    return r->worker && r->pid > 0 && r->wstate == WORKER_UP;
}

void workers_count(sf_server *s, worker_counts *out)
{
    memset(out, 0, sizeof *out);
    out->begun = s->wp.gone_begun;
    out->ended = s->wp.gone_ended;
    out->refused = s->wp.gone_refused;
    for (unsigned i = 0; i < s->recs_touched; i++) {
        conn_rec *r = &s->recs[i];
        worker_slot sl;

        if (!is_up(r))
            continue;
        (void)slot_state(r, &sl);
        out->begun += sl.begun;
        out->ended += sl.ended;
        out->refused += sl.refused;
        if (sl.busy)
            out->busy_all++;
        if (r->ending)
            continue;
        if (sl.busy)
            out->busy++;
        else
            out->idle++;
    }
}

void workers_index_tuples(sf_server *s)
{
    for (unsigned i = 0; i < s->recs_touched; i++) {
        conn_rec *r = &s->recs[i];
        worker_slot sl;

        if (r->tuple_set) {
            server_tuple_forget(s, r);
            r->tuple_set = 0;
        }
        if (!is_up(r) || workers_slot(r, &sl) < 0 || !sl.busy ||
            s->wp.listeners[sl.listener % s->nlisteners].is_tcp == 0)
            continue;
        r->is_tcp = 1;
        r->peer = sl.peer;
        r->started = sl.started;
        r->tuple = server_tuple_key(&sl.peer, &sl.local);
        if (hmap_put(&s->by_tuple, &r->tuple, (uint32_t)(r - s->recs)) == 0)
            r->tuple_set = 1;
    }
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

/* Asks the spawner for one worker: its channel, the listeners, the blob. */
static int spawn_worker(sf_server *s, conn_rec *replacing)
{
    worker_pool *wp = &s->wp;
    int fds[LISTENERS_MAX + 1], sv[2], rc;
    worker_start ws;
    conn_rec *r = server_rec_alloc(s);

    if (!r)
        return -ENOSPC;
    r->worker = 1;
    r->wstate = WORKER_STARTING;
    r->slot = &wp->slots[r - s->recs];
    memset(r->slot, 0, sizeof *r->slot); /* a dead worker's may be half written */
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
    /* The supervisor decides on each connection when it has something to
     * decide: a per-IP limit, access rules (always the current ones, a
     * reload included). */
    ws.ask_verdict = s->opts.max_per_ip > 0 || s->rules_path;
    ws.eager = ws.ask_verdict || sf_log_enabled(&s->log, SF_LOG_INFO);
    ws.slot = r->slot;
    /* The worker counts its own connections and goes after its last: it
     * takes the next one before the supervisor could see the count. */
    r->limit = ws.limit = jittered_limit(s);
    ws.proxy_from = s->proxy_from;
    ws.proxy_timeout_s = s->opts.proxy_timeout_s;
    rc = sup_spawn(&s->sup, &ws, sizeof ws, fds, (int)s->nlisteners + 1, r);
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
    if (r->ending || r->pid <= 0 || r->wstate != WORKER_UP)
        return;
    r->ending = why;
    if (r->wstate == WORKER_UP)
        s->wp.retiring++;
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

/* Workers at their max_requests: a replacement first, and the old one
 * told to go once it runs (workers_on_started), so the pool never has
 * one fewer; at most RECYCLE_AT_ONCE at a time. At the maximum there is
 * no room for both: the old one goes first and the minimum refills. */
static void recycle(sf_server *s, unsigned total)
{
    worker_pool *wp = &s->wp;

    for (unsigned i = 0; i < s->recs_touched && wp->recycling < RECYCLE_AT_ONCE; i++) {
        conn_rec *r = &s->recs[i];
        worker_slot sl;

        /* Its last connection has begun: it goes by itself after it. */
        if (!is_up(r) || r->ending || r->replaced || !r->limit || slot_state(r, &sl) < 0 ||
            sl.begun < r->limit)
            continue;
        if (total < wp->max && spawn_worker(s, r) == 0) {
            total++;
            continue;
        }
        /* No room for both: it goes first, and the minimum refills. */
        r->replaced = 1;
        retire(s, r, WORKER_END_MAX_REQUESTS);
    }
}

/* When an idle worker became idle (its start if it has served none), or
 * 0 if it is busy. */
static double idle_since(const conn_rec *r)
{
    worker_slot sl;

    if (slot_state(r, &sl) < 0 || sl.busy)
        return 0;
    return sl.idle_since > 0 ? sl.idle_since : r->born;
}

/* Idle workers, longest idle first, told to go. */
static void retire_idle(sf_server *s, unsigned n)
{
    while (n-- > 0) {
        conn_rec *oldest = NULL;
        double oldest_at = 0;
        for (unsigned i = 0; i < s->recs_touched; i++) {
            conn_rec *r = &s->recs[i];
            double at;
            if (!is_up(r) || r->ending || (at = idle_since(r)) == 0)
                continue;
            if (!oldest || at < oldest_at) {
                oldest = r;
                oldest_at = at;
            }
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

        if (!is_up(r) || r->ending || (at = idle_since(r)) == 0)
            continue;
        at += s->wp.idle_s;
        if (at <= load->now)
            load->idle_long++;
        else if (load->idle_long_next == 0 || at < load->idle_long_next)
            load->idle_long_next = at;
    }
}

/* conn_timeout: a worker whose connection began that long ago is ended
 * with it (and replaced), as a fork-mode child is. */
static void check_held(sf_server *s, double now)
{
    for (unsigned i = 0; i < s->recs_touched; i++) {
        conn_rec *r = &s->recs[i];
        worker_slot sl;

        if (!is_up(r) || sup_is_terminating(&s->sup, r->pid) || slot_state(r, &sl) < 0 ||
            !sl.busy || now - sl.started < s->opts.conn_timeout_s)
            continue;
        (void)workers_slot(r, &sl); /* its peer, for the log */
        r->peer = sl.peer;
        server_end_timed_out(s, r, WORKER_END_CONN_TIMEOUT);
    }
}

/* A worker that has lived WORKER_YOUNG_S ends a crash loop's episode. */
static void crash_loop_over(sf_server *s, double now);

/* The one place that starts and retires workers: after every change of
 * state, and when the last decision asked to look again. */
static void adjust(sf_server *s)
{
    worker_pool *wp = &s->wp;
    sizing_load load;
    sizing_cfg cfg;
    sizing_plan plan;
    unsigned total;

    worker_counts wc;

    if (s->sup.shutting_down)
        return;
    workers_count(s, &wc);
    memset(&load, 0, sizeof load);
    load.idle = wc.idle;
    load.busy = wc.busy;
    load.starting = wp->starting;
    load.now = ev_now(s->loop);
    load.hold_until = wp->hold_until;
    idle_ages(s, &load);
    if (s->opts.conn_timeout_s > 0)
        check_held(s, ev_time());
    crash_loop_over(s, load.now);
    /* Workers told to go are still processes: they count against the
     * maximum, not toward the minimum. */
    total = wc.idle + wc.busy + wp->starting + wp->retiring;
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
            sf_logev(&s->log, SF_LOG_WARN, "worker_start_failed", 0, NULL,
                     SF_FIELDS(SF_F_STR("error", strerror(-rc)),
                               SF_F_DBL("retry_s", proc_backoff_delay(&wp->crash_backoff))),
                     "cannot start a worker: %s; trying again in %g s", strerror(-rc),
                     proc_backoff_delay(&wp->crash_backoff));
            wp->hold_until = load.now + proc_backoff_next(&wp->crash_backoff);
            plan.recheck_at = wp->hold_until;
            break;
        }
        total++;
    }
    retire_idle(s, plan.retire);
    recycle(s, total);
    /* plan.recheck_at needs no timer of its own: the tick comes sooner. */
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
        wp->listeners[i].proxy = s->listeners[i].proxy;
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
    wp->slots_len = (size_t)s->opts.max_conns * sizeof *wp->slots;
    wp->slots = mmap(NULL, wp->slots_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                     -1, 0);
    if (wp->slots == MAP_FAILED) {
        wp->slots = NULL;
        return -errno;
    }
    wp->min = s->opts.workers_min;
    wp->max = s->opts.workers_max;
    wp->idle_s = s->opts.worker_idle_s;
    wp->rng = ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL) ^ 0x9e3779b97f4a7c15ull;
    ev_timer_init(&wp->tick, adjust_cb, WORKERS_TICK_S, WORKERS_TICK_S);
    wp->tick.data = s;
    return 0;
}

void workers_fini(sf_server *s)
{
    if (s->loop)
        ev_timer_stop(s->loop, &s->wp.tick);
    free(s->wp.listeners);
    s->wp.listeners = NULL;
    if (s->wp.slots)
        munmap(s->wp.slots, s->wp.slots_len);
    s->wp.slots = NULL;
}

void workers_start(sf_server *s)
{
    sf_logev(&s->log, SF_LOG_INFO, "prefork", 0, NULL,
             SF_FIELDS(SF_F_UINT("min", s->wp.min), SF_F_UINT("max", s->wp.max),
                       SF_F_UINT("max_requests", s->opts.max_requests)),
             "prefork: %u to %u workers%s", s->wp.min, s->wp.max,
             s->opts.max_requests ? ", each replaced after about max_requests connections" : "");
    ev_timer_start(s->loop, &s->wp.tick);
    adjust(s);
}

void workers_read_all(sf_server *s)
{
    for (unsigned i = 0; i < s->recs_touched; i++) {
        conn_rec *r = &s->recs[i];
        if (r->worker && r->pid > 0 && endpoint_is_open(&r->ep))
            endpoint_read_now(&r->ep);
    }
}

void workers_shutdown(sf_server *s)
{
    ev_timer_stop(s->loop, &s->wp.tick);
    /* Idle workers go at once, busy ones after their connection; the
     * grace period and its SIGTERM are the supervisor's, as in fork mode. */
    for (unsigned i = 0; i < s->recs_touched; i++) {
        conn_rec *r = &s->recs[i];
        if (r->worker && r->pid > 0)
            retire(s, r, WORKER_END_SHUTDOWN);
    }
}

void workers_drain(sf_server *s)
{
    /* Upgraded: none is started again (no minimum, no maximum), each goes
     * after the connection it has. The tick runs on: --conn-timeout and
     * the slots still matter while they finish. */
    s->wp.min = s->wp.max = 0;
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
    r->born = ev_now(s->loop);
    r->wstate = WORKER_UP;
    wp->starting--;
    s->stats.workers_started++;
    rc = endpoint_open(&s->bus, &r->ep, r->sfd, pid, 0, r);
    r->sfd = -1;
    if (rc == 0)
        endpoint_use_sessions(&r->ep);
    else if (rc != -ESHUTDOWN)
        sf_logev(&s->log, SF_LOG_WARN, "channel_failed", (int)pid, NULL,
                 SF_FIELDS(SF_F_STR("error", strerror(-rc))), "worker pid %d: no channel: %s",
                 (int)pid, strerror(-rc));
    sf_logev(&s->log, SF_LOG_DEBUG, "worker_started", (int)pid, NULL, NULL, 0,
             "worker pid=%d started", (int)pid);
    if (rc < 0 || s->sup.shutting_down || s->up.draining) {
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
        sf_logev(&s->log, SF_LOG_WARN, "worker_start_failed", 0, NULL,
                 SF_FIELDS(SF_F_STR("error", strerror(-err)),
                           SF_F_DBL("retry_s", proc_backoff_delay(&wp->crash_backoff))),
                 "cannot start a worker: %s; trying again in %g s", strerror(-err),
                 proc_backoff_delay(&wp->crash_backoff));
        wp->hold_until = ev_now(s->loop) + proc_backoff_next(&wp->crash_backoff);
    }
    server_rec_release(s, r);
    adjust(s);
}

/* A worker gone while serving: its connection ended with it. */
static void end_connection_of_dead(sf_server *s, conn_rec *r, pid_t pid, const sf_status *st,
                                   const worker_slot *sl)
{
    if (r->tuple_set) {
        server_tuple_forget(s, r);
        r->tuple_set = 0;
    }
    if (r->counted_ip)
        server_per_ip_add(s, r, -1);
    if (!sl->busy && r->in_conn && !r->refused && sf_log_enabled(&s->log, SF_LOG_INFO)) {
        /* It ended its connection, but its CONN_END was not read (the
         * channels close at shutdown): the end is told here. */
        server_log_exit(s, r, pid, st);
    }
    if (!sl->busy)
        return;
    if (st->exited)
        s->stats.exited[st->code & 0xff]++;
    else
        s->stats.killed[st->signal < 64 ? st->signal : 64]++;
    if (!r->in_conn) {
        /* Not told of by a frame: the slot has it. */
        r->peer = sl->peer;
        r->started = sl->started;
    }
    if (!r->refused && sf_log_enabled(&s->log, SF_LOG_INFO))
        server_log_exit(s, r, pid, st);
}

/* The crash-loop backoff: a worker that died young, with nobody asking,
 * holds the next start back, longer each time; the first of an episode
 * is logged, and its end (a worker that lived) with the count. */
static void died_young(sf_server *s, pid_t pid, const sf_status *st, const char *status)
{
    worker_pool *wp = &s->wp;
    double wait = proc_backoff_next(&wp->crash_backoff);

    wp->hold_until = ev_now(s->loop) + wait;
    if (wp->crash_streak++ == 0) {
        wp->crash_since = ev_now(s->loop);
        sf_logev(&s->log, SF_LOG_WARN, "workers_dying", (int)pid, NULL,
                 SF_FIELDS(SF_F_STATUS("status", *st), SF_F_DBL("wait_s", wait)),
                 "worker pid=%d died within %g s of starting (%s): starting workers again "
                 "after a growing wait (now %g s) while they keep dying young",
                 (int)pid, WORKER_YOUNG_S, status, wait);
    }
}

static void crash_loop_over(sf_server *s, double now)
{
    worker_pool *wp = &s->wp;

    if (wp->crash_streak == 0)
        return;
    for (unsigned i = 0; i < s->recs_touched; i++) {
        conn_rec *r = &s->recs[i];
        if (!is_up(r) || r->ending || now - r->born < WORKER_YOUNG_S)
            continue;
        sf_logev(&s->log, SF_LOG_NOTICE, "workers_recovered", 0, NULL,
                 SF_FIELDS(SF_F_UINT("died", wp->crash_streak),
                           SF_F_DBL("duration_s", now - wp->crash_since)),
                 "workers serve again after %llu died young in %.1f s",
                 (unsigned long long)wp->crash_streak, now - wp->crash_since);
        wp->crash_streak = 0;
        proc_backoff_reset(&wp->crash_backoff);
        wp->hold_until = 0;
        return;
    }
}

void workers_on_exit(sf_server *s, conn_rec *r, pid_t pid, int wstatus)
{
    worker_pool *wp = &s->wp;
    sf_status st = sf_status_decode(wstatus);
    int why = r->ending;
    char status[64];
    worker_slot sl;

    /* Its last frames first (a CONN_BEGIN or CONN_END it wrote before it
     * went), while its record still stands. */
    endpoint_drain(&r->ep);
    why = r->ending;
    sf_status_format(&st, status, sizeof status);
    (void)workers_slot(r, &sl);
    end_connection_of_dead(s, r, pid, &st, &sl);
    if (!why && r->limit && sl.begun >= r->limit && st.exited && st.code == 0)
        why = WORKER_END_MAX_REQUESTS; /* it went by itself after its last */
    wp->gone_begun += sl.begun;
    wp->gone_ended += sl.ended;
    wp->gone_refused += sl.refused;
    if (r->ending && r->wstate == WORKER_UP)
        wp->retiring--;
    if (r->replaced)
        r->replaced = 0; /* its replacement runs on, replacing nobody */
    for (unsigned i = 0; i < s->recs_touched; i++)
        if (s->recs[i].replacing == r)
            s->recs[i].replacing = NULL, wp->recycling--;
    if (!why && (!st.exited || st.code != 0)) {
        why = WORKER_END_CRASHED;
        sf_logev(&s->log, SF_LOG_WARN, "worker_exited", (int)pid, NULL,
                 SF_FIELDS(SF_F_STR("reason", worker_end_name(why)), SF_F_STATUS("status", st),
                           SF_F_UINT("served", sl.ended), SF_F_BOOL("busy", sl.busy)),
                 "worker pid=%d died: %s (served %llu, %s)", (int)pid, status,
                 (unsigned long long)sl.ended, sl.busy ? "busy" : "idle");
        if (ev_now(s->loop) - r->born < WORKER_YOUNG_S && !s->sup.shutting_down)
            died_young(s, pid, &st, status);
    } else {
        sf_logev(&s->log, SF_LOG_DEBUG, "worker_exited", (int)pid, NULL,
                 SF_FIELDS(SF_F_STR("reason", worker_end_name(why)), SF_F_STATUS("status", st),
                           SF_F_UINT("served", sl.ended), SF_F_BOOL("busy", sl.busy)),
                 "worker pid=%d ended (%s): %s, served %llu", (int)pid, worker_end_name(why),
                 status, (unsigned long long)sl.ended);
    }
    s->stats.workers_ended[why]++;
    server_rec_release(s, r);
    adjust(s);
}

/* ---------------------------------------------------- its connections */

/* CONN_BEGIN: [u8 listener][u8 n][peer: n bytes][local sockaddr]. */
static int begin(sf_server *s, conn_rec *r, const chan_frame *f)
{
    const worker_listener *l;
    size_t plen, llen;
    unsigned char verdict = 1;
    int rc;

    if (f->len < 2 || f->payload[0] >= s->nlisteners || r->in_conn)
        return -1;
    plen = f->payload[1];
    if (plen > sizeof r->peer.u || 2 + plen > f->len || f->len - 2 - plen > sizeof r->peer.u)
        return -1;
    llen = f->len - 2 - plen;
    l = &s->wp.listeners[f->payload[0]];
    r->is_tcp = l->is_tcp;
    if (r->is_tcp) {
        if (plen < sizeof(sa_family_t) || llen < sizeof(sa_family_t))
            return -1;
        memset(&r->peer, 0, sizeof r->peer);
        memcpy(&r->peer.u, f->payload + 2, plen);
        r->peer.len = (socklen_t)plen;
    } else {
        r->peer = l->addr; /* Unix: the listener's path, as in fork mode */
    }
    r->in_conn = 1;
    r->refused = 0;
    r->started = ev_now(s->loop);
    endpoint_session_begin(&r->ep);

    rc = access_check_rules(s, r); /* logs and counts a deny */
    if (rc < 0)
        return -1;
    if (rc == 0) {
        r->refused = 1;
        verdict = 0;
    } else if (s->opts.max_per_ip && r->is_tcp) {
        unsigned n = server_per_ip_count(s, r);
        if (n >= s->opts.max_per_ip || hmap_reserve(&s->per_ip, s->per_ip.count + 1) < 0) {
            char peer[SF_ADDR_TEXT_MAX], host[SF_ADDR_TEXT_MAX];
            server_peer_text(r, peer, sizeof peer);
            if (sf_addr_host(&r->peer, host, sizeof host) < 0)
                snprintf(host, sizeof host, "?");
            sf_logev(&s->log, SF_LOG_NOTICE, "refused", 0, peer,
                     SF_FIELDS(SF_F_STR("reason", "per_ip"), SF_F_UINT("count", n),
                               SF_F_UINT("limit", s->opts.max_per_ip)),
                     "[%s] refused: %u connections from %s already (per-IP limit %u)", peer, n,
                     host, s->opts.max_per_ip);
            s->stats.refused_per_ip++;
            r->refused = 1;
            verdict = 0;
        } else {
            server_per_ip_add(s, r, +1);
        }
    }
    if (s->opts.max_per_ip || s->rules_path) {
        /* [u8 verdict][the rule's pairs]: the handler's sf_conn_rule_value. */
        unsigned char buf[1 + RULE_ENV_MAX];
        size_t n = verdict && r->env_len <= RULE_ENV_MAX ? r->env_len : 0;
        buf[0] = verdict;
        if (n)
            memcpy(buf + 1, r->env, n);
        free(r->env);
        r->env = NULL;
        r->env_len = 0;
        if (endpoint_send_control(&r->ep, CHAN_T_CONN_VERDICT, buf, (uint32_t)(1 + n)) < 0)
            return -1;
    }
    if (r->limit) {
        worker_slot sl;
        /* Its last connection (it opened the channel for it): the
         * replacement starts now, accepting before this one goes. */
        if (slot_state(r, &sl) == 0 && sl.begun >= r->limit && !r->replaced)
            adjust(s);
    }
    if (!r->refused && sf_log_enabled(&s->log, SF_LOG_INFO)) {
        char peer[SF_ADDR_TEXT_MAX];
        worker_counts wc;
        worker_slot sl;
        workers_count(s, &wc);
        /* The slot may be on to its next connection (or none) already:
         * this one is active when its frame says it began. */
        if (slot_state(r, &sl) < 0 || !sl.busy)
            wc.busy_all++;
        server_peer_text(r, peer, sizeof peer);
        sf_logev(&s->log, SF_LOG_INFO, "connected", (int)r->pid, peer,
                 SF_FIELDS(SF_F_UINT("active", wc.busy_all)), "[%s] connected pid=%d active=%u",
                 peer, (int)r->pid, wc.busy_all);
    }
    return 0;
}

/* CONN_END: [be32 the handler's return value]. */
static int end(sf_server *s, conn_rec *r, const chan_frame *f)
{
    uint32_t code;
    int rc;

    if (f->len != 4 || !r->in_conn)
        return -1;
    code = be32_get(f->payload);
    if (!r->refused) {
        /* A handler's 0 is counted from the slots (commands.c). */
        if ((code & 0xff) != 0) {
            s->stats.exited[code & 0xff]++;
            s->wp.failed++;
        }
        if (sf_log_enabled(&s->log, SF_LOG_INFO)) {
            sf_status st = {.exited = 1, .code = (int)(code & 0xff)};
            server_log_exit(s, r, r->pid, &st);
        }
    }
    if (r->counted_ip)
        server_per_ip_add(s, r, -1);
    r->in_conn = 0;
    r->refused = 0;
    /* -EPIPE: its channel broke (it has gone); its exit says the rest. */
    rc = endpoint_session_end(&r->ep);
    return rc < 0 && rc != -EPIPE ? -1 : 0;
}

/* CONN_DROPPED: [u8 why][u8 n][peer: n bytes][text]: a PROXY listener's
 * connection the worker closed unserved; logged and counted here, as the
 * supervisor does in fork mode (access.c). */
static int dropped(sf_server *s, conn_rec *r, const chan_frame *f)
{
    size_t plen;
    char peer[SF_ADDR_TEXT_MAX], why[256];
    sf_addr a;

    if (f->len < 2 || (plen = f->payload[1]) > sizeof a.u || 2 + plen > f->len)
        return -1;
    memset(&a, 0, sizeof a);
    memcpy(&a.u, f->payload + 2, plen);
    a.len = (socklen_t)plen;
    if (plen < sizeof(sa_family_t) || sf_addr_format(&a, peer, sizeof peer) < 0)
        snprintf(peer, sizeof peer, "?");
    /* The worker's text, for the record's field (the line keeps it whole). */
    snprintf(why, sizeof why, "%.*s", (int)(f->len - 2 - plen), (const char *)f->payload + 2 + plen);
    switch (f->payload[0]) {
    case WORKER_DROP_SOURCE:
        s->stats.proxy_refused++;
        sf_logev(&s->log, SF_LOG_NOTICE, "refused", 0, peer,
                 SF_FIELDS(SF_F_STR("reason", "proxy_source")),
                 "[%s] refused: a PROXY listener, and not a source --proxy-from allows", peer);
        break;
    case WORKER_DROP_TIMEOUT:
        s->stats.proxy_timed_out++;
        sf_logev(&s->log, SF_LOG_NOTICE, "proxy_timed_out", 0, peer,
                 SF_FIELDS(SF_F_STR("error", why)), "[%s] %.*s; closed", peer,
                 (int)(f->len - 2 - plen), (const char *)f->payload + 2 + plen);
        break;
    default:
        s->stats.proxy_bad++;
        sf_logev(&s->log, SF_LOG_NOTICE, "proxy_bad", 0, peer, SF_FIELDS(SF_F_STR("error", why)),
                 "[%s] bad PROXY header: %.*s; closed", peer, (int)(f->len - 2 - plen),
                 (const char *)f->payload + 2 + plen);
        break;
    }
    (void)r;
    return 0;
}

int workers_on_session(sf_server *s, conn_rec *r, const chan_frame *f)
{
    if (!r || !r->worker)
        return -1;
    if (f->type == CHAN_T_CONN_DROPPED)
        return dropped(s, r, f);
    return f->type == CHAN_T_CONN_BEGIN ? begin(s, r, f) : end(s, r, f);
}
