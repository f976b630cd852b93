/*
 * scrape.c - the pool's metrics endpoint (sf_pool_opts.metrics_addr): the
 * snapshot it renders, and the libev loop it is served on.
 *
 * The endpoint (server/metrics.c, the server's own) is written for libev;
 * the pool's loop is an epoll set of its own. So the pool has a second
 * loop, private to it and holding only the endpoint, and while metrics are
 * on sf_pool_run waits in that loop instead of in epoll_wait: the pool's
 * epoll descriptor is one ev_io of the loop, and the pool's wait one
 * ev_timer. An EVRUN_ONCE turn returns once the pool's set is ready, its
 * wait is over, or the endpoint has handled an event of its own (a
 * scraper, a deadline); the pool then takes its events with an epoll_wait
 * that does not block. So a scrape is answered at once, libev's timers and
 * watcher changes stay libev's business, and a pool without metrics waits
 * exactly as before. (The other way round, libev's descriptor in the
 * pool's set, needs the backend's descriptor, which libev 4.33 does not
 * export, and libev's next timer, which it does not tell.)
 */
#include "pool/pool_internal.h"
#include "server/metrics.h"

#include <errno.h>

/* The loop only has to return: the pool reads its set itself. */
static void pool_ready_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
}

static void pool_wait_over_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
}

/* The pool's counters by sf_pool_stats's names, its job slots, and the
 * process's numbers (the server's "process" object). */
json_t *pool_stats_json(const sf_pool *p)
{
    sf_pool_stats s;
    json_t *r, *process;

    sf_pool_get_stats(p, &s);
    r = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, "
                  "s:i, s:i}",
                  "jobs", (json_int_t)p->jobs, "submitted", (json_int_t)s.submitted, "started",
                  (json_int_t)s.started, "running", (json_int_t)s.running, "pending",
                  (json_int_t)s.pending, "ok", (json_int_t)s.ok, "failed", (json_int_t)s.failed,
                  "cancelled", (json_int_t)s.cancelled, "timed_out", (json_int_t)s.timed_out,
                  "killed_by_signal", (json_int_t)s.killed_by_signal, "failed_by_code",
                  (json_int_t)s.failed_by_code, "spawn_errors", (json_int_t)s.spawn_errors,
                  "output_limited", (json_int_t)s.output_limited, "retried",
                  (json_int_t)s.retried, "workers_started", (json_int_t)s.workers_started,
                  "halted", s.halted, "cancelled_by_request", s.cancelled_by_request);
    process = metrics_process_numbers();
    if (!r || !process || json_object_set_new(r, "process", process) < 0) {
        if (r && process)
            process = NULL; /* json_object_set_new took it, even failing */
        json_decref(process);
        json_decref(r);
        return NULL;
    }
    return r;
}

static json_t *snapshot(void *arg)
{
    return pool_stats_json(arg);
}

int pool_loop_open(sf_pool *p)
{
    if (p->mloop)
        return 0;
    if (!(p->mloop = ev_loop_new(EVFLAG_AUTO)))
        return errno ? -errno : -ENOMEM;
    ev_io_init(&p->pool_ready, pool_ready_cb, p->ep, EV_READ);
    ev_timer_init(&p->pool_wait, pool_wait_over_cb, 0., 0.);
    ev_io_start(p->mloop, &p->pool_ready);
    return 0;
}

void pool_loop_close(sf_pool *p)
{
    if (!p->mloop)
        return;
    ev_io_stop(p->mloop, &p->pool_ready);
    ev_timer_stop(p->mloop, &p->pool_wait);
    ev_loop_destroy(p->mloop);
    p->mloop = NULL;
}

int pool_metrics_open(sf_pool *p)
{
    int rc;

    if (!p->o.metrics_addr)
        return 0;
    if ((rc = pool_loop_open(p)) < 0)
        return rc;
    return metrics_open(&p->metrics, p->mloop, p->o.metrics_addr, &metrics_pool_table, snapshot,
                        p);
}

void pool_metrics_close(sf_pool *p)
{
    metrics_close(p->metrics);
    p->metrics = NULL;
}

int pool_wait(sf_pool *p, struct epoll_event *evs, int max, int ms)
{
    if (!p->mloop)
        return epoll_wait(p->ep, evs, max, ms);
    if (ms == 0) {
        ev_run(p->mloop, EVRUN_NOWAIT); /* a busy pool still answers */
    } else {
        if (ms > 0) {
            ev_now_update(p->mloop); /* the timer counts from now, not the last turn */
            ev_timer_set(&p->pool_wait, ms / 1000.0, 0.);
            ev_timer_start(p->mloop, &p->pool_wait);
        }
        ev_run(p->mloop, EVRUN_ONCE);
        ev_timer_stop(p->mloop, &p->pool_wait);
    }
    return epoll_wait(p->ep, evs, max, 0);
}

const sf_addr *sf_pool_metrics_addr(const sf_pool *p)
{
    return p->metrics ? metrics_addr(p->metrics) : NULL;
}
