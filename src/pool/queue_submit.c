/*
 * queue_submit.c - queue_role 1, the submitter's side (`sockfork run
 * --queue`): sf_pool_run's loop for a pool whose tasks run elsewhere.
 *
 * The feed and sf_pool_submit_cmd work as for a local run (the tasks wait
 * in p->head); each is then given its argv once (slot 0) and added to the
 * task stream, and waits, outstanding, for its result entry. Outstanding
 * tasks are kept by seq in increasing order (they are added so), at most
 * `window` of them; a result is reported through on_output and on_done as
 * the pool would report a task it ran, once: a second result for a task
 * (one that ran twice) is dropped. Everything is driven by the pool's libev
 * loop; pump() is the one place that decides what to do next.
 */
#include "pool/queue.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define Q_HALT_EXTRA_S 5.0    /* after a halt-now: the grace, and this, for results */
#define Q_OUT_DEFAULT (1ULL << 20)
#define Q_FEED_BURST 64       /* feed calls per turn */

typedef struct q_out {
    unsigned long seq;
    void *data;
    char **argv;                 /* built once, the report's */
    int sent;                    /* in the stream (ours confirmed, or resumed) */
    int sending;
    int done;
} q_out;

struct q_sub {
    q_out *outs;
    size_t n, cap;               /* outs[0..n): by seq; done ones at the front compacted */
    size_t live;                 /* not done */
    size_t live_new;             /*   of them added by this submitter: the window's */
    size_t window;
    q_meta meta;                 /* the run's parameters, as written */
    int meta_asked, started;
    unsigned long long resumed_submitted;
    char results_last[48];
    int reading, paused;
    int resyncing;               /* back after a loss: meta.submitted not read yet */
    double read_after;           /* no results read before (an error answered the last) */
    unsigned long paused_seq;
    int feed_ended, feed_waiting, feed_ready, feed_pollable;
    int halt_sent;
    double halt_deadline;        /* 0: none */
    int pending_asked;
    int held_by_workers;         /* after a halt: entries a live worker holds */
    int over, rc;
    int done_asked;
    ev_io feed_w, cancel_w;
    ev_idle feed_idle;
    ev_timer tick_w, beat_w;
};

static void pump(pool_queue *q);

#define Q_RETRY_S 0.25        /* after a transient error answered a read */
#define Q_READ_BYTES (32ULL << 20) /* what one page of results may hold at most */

/* Results read at once: as many as fit Q_READ_BYTES when each holds all
 * the output and the fd-3 result it may (a page of Q_PAGE results of 64 MiB
 * each would be 8 GiB in one reply), at least one. */
static unsigned results_page(unsigned long long out_max)
{
    unsigned long long each = out_max + QC_RESULT_MAX + 4096; /* and the other fields */
    unsigned long long n = Q_READ_BYTES / each;

    return n < 1 ? 1 : n > Q_PAGE ? Q_PAGE : (unsigned)n;
}

/* An error Redis answers while it cannot serve yet (loading its data after
 * a restart, a script running long, a replica without its master). */
static int transient(const redisReply *r)
{
    static const char *const codes[] = {"LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN"};

    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (strncmp(r->str, codes[i], strlen(codes[i])) == 0)
            return 1;
    return 0;
}

/* One of the queue's keys answers as another application's would: the run
 * cannot go on (one line, exit 255), rather than wait or retry without end. */
static void q_fail_key(pool_queue *q, const char *key, const char *err)
{
    char why[sizeof q->why];

    snprintf(why, sizeof why, "%s: %s", key, err);
    q_fail(q, -EPROTO, why);
}

/* ------------------------------------------------------------ outstanding */

static q_out *out_find(q_sub *s, unsigned long seq)
{
    size_t lo = 0, hi = s->n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->outs[mid].seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->n && s->outs[lo].seq == seq ? &s->outs[lo] : NULL;
}

static void out_compact(q_sub *s)
{
    size_t k = 0;

    while (k < s->n && s->outs[k].done)
        k++;
    if (k == 0 || (k < 64 && k < s->n))
        return;
    memmove(s->outs, s->outs + k, (s->n - k) * sizeof *s->outs);
    s->n -= k;
}

static q_out *out_add(q_sub *s, unsigned long seq, void *data, char **argv)
{
    q_out *o;

    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 64;
        q_out *b = realloc(s->outs, cap * sizeof *b);
        if (!b)
            return NULL;
        s->outs = b;
        s->cap = cap;
    }
    o = &s->outs[s->n++];
    memset(o, 0, sizeof *o);
    o->seq = seq;
    o->data = data;
    o->argv = argv;
    s->live++;
    if (seq > s->resumed_submitted)
        s->live_new++;
    return o;
}

/* ------------------------------------------------------------ reporting */

static void count(sf_pool *p, const sf_task_report *r)
{
    if (r->attempts > 1)
        p->st.retried += r->attempts - 1; /* made by workers, counted here */
    if (r->state == SF_TASK_OK) {
        p->st.ok++;
        return;
    }
    if (r->state == SF_TASK_CANCELLED) {
        p->st.cancelled++;
        return;
    }
    pool_count_failure(p, r);
}

static void out_end(pool_queue *q, q_out *o, sf_task_report *r)
{
    sf_pool *p = q->p;
    q_sub *s = q->s;

    r->seq = o->seq;
    r->data = o->data;
    r->argv = o->argv;
    count(p, r);
    p->o.on_done(p, r, p->o.arg);
    free(o->argv);
    o->argv = NULL;
    o->done = 1;
    s->live--;
    if (o->seq > s->resumed_submitted)
        s->live_new--;
    s->feed_waiting = 0;
    out_compact(s);
    if (r->state == SF_TASK_FAILED)
        pool_check_halt(q->p, pool_now());
}

static void report_result(pool_queue *q, q_out *o, const qc_result *res)
{
    sf_pool *p = q->p;
    sf_task_report r;
    sf_task_info i;
    char host[QC_HOST_MAX + 1];

    memset(&r, 0, sizeof r);
    memcpy(host, res->host.p, res->host.n);
    host[res->host.n] = '\0';
    r.state = res->state == QC_OK ? SF_TASK_OK : SF_TASK_FAILED;
    r.status.exited = res->exited;
    r.status.code = res->code;
    r.status.signal = res->signal;
    if (res->state == QC_DEAD) { /* never ended: a failure of its own (-1) */
        r.status.exited = 1;
        r.status.code = -1;
    }
    r.timed_out = res->timed_out;
    r.killed = res->state == QC_KILLED;
    r.spawn_error = res->spawn_error;
    r.attempts = res->attempts;
    r.slot = res->slot;
    r.pid = (int)res->pid;
    r.start_time = res->start_us / 1e6;
    r.duration_s = res->dur_us / 1e6;
    r.stdout_bytes = res->out_bytes;
    r.stderr_bytes = res->err_bytes;
    r.result = res->result.n ? res->result.p : NULL;
    r.result_len = res->result.n;
    r.output_limited = res->output_limited;
    r.host = host;
    if (p->o.on_output && (res->out.n || res->err.n)) {
        memset(&i, 0, sizeof i);
        i.seq = o->seq;
        i.data = o->data;
        i.slot = res->slot;
        i.attempt = res->attempts;
        i.pid = r.pid;
        i.elapsed_s = r.duration_s;
        i.progress_total = -1;
        if (res->out.n)
            p->o.on_output(p, &i, 1, res->out.p, res->out.n, p->o.arg);
        if (res->err.n)
            p->o.on_output(p, &i, 2, res->err.p, res->err.n, p->o.arg);
    }
    out_end(q, o, &r);
}

static void report_unfinished(pool_queue *q, q_out *o, int spawn_error)
{
    sf_task_report r;

    memset(&r, 0, sizeof r);
    if (spawn_error) {
        r.state = SF_TASK_FAILED;
        r.spawn_error = spawn_error;
        r.status.exited = 1;
        r.status.code = 126;
    } else {
        r.state = SF_TASK_CANCELLED;
    }
    out_end(q, o, &r);
}

/* ------------------------------------------------------------ results */

static void on_result(const char *id, const qc_bytes *f, const qc_bytes *v, size_t n, void *arg)
{
    pool_queue *q = arg;
    q_sub *s = q->s;
    qc_result res;
    const char *why;
    q_out *o;

    if (s->paused)
        return;
    if (qc_result_decode(f, v, n, &res, &why) < 0) {
        sf_logev(&q->p->log, SF_LOG_WARN, "queue_bad_entry", 0, NULL,
                 SF_FIELDS(SF_F_STR("stream", q->k_results), SF_F_STR("id", id),
                           SF_F_STR("error", why)),
                 "queue %s: result %s does not parse (%s): skipped", q->url.text, id, why);
        snprintf(s->results_last, sizeof s->results_last, "%s", id);
        return;
    }
    o = out_find(s, res.seq);
    if (!o && res.seq > q->p->next_seq && !s->feed_ended && !q->p->halting) {
        /* A task of a resumed run not read from the input yet: read this
         * result again once the feed has passed it. */
        s->paused = 1;
        s->paused_seq = res.seq;
        return;
    }
    snprintf(s->results_last, sizeof s->results_last, "%s", id);
    if (o && o->done)
        sf_logev(&q->p->log, SF_LOG_NOTICE, "queue_duplicate", 0, NULL,
                 SF_FIELDS(SF_F_UINT("task", res.seq), SF_F_STR("id", id)),
                 "task %lu: a second result (it ran twice): dropped", res.seq);
    if (!o || o->done)
        return; /* recorded before (this run, or the joblog a resumed run skipped) */
    report_result(q, o, &res);
}

static void results_read(rconn *c, redisReply *r, void *priv)
{
    pool_queue *q = priv;
    (void)c;

    if (!q->s)
        return;
    q->s->reading = 0;
    if (r && r->type == REDIS_REPLY_ERROR && transient(r)) {
        /* Redis loading its data after a restart, or busy: asked again later. */
        q->s->read_after = pool_now() + Q_RETRY_S;
    } else if (r && r->type == REDIS_REPLY_ERROR) {
        /* WRONGTYPE: the key is someone else's. Answered at once, it would
         * be asked again, and logged, without end. */
        q_fail_key(q, q->k_results, r->str);
    } else if (r && q_entries(r, 1, on_result, q) < 0)
        sf_logev(&q->p->log, SF_LOG_WARN, "queue_bad_entry", 0, NULL,
                 SF_FIELDS(SF_F_STR("stream", q->k_results), SF_F_STR("error", "bad reply")),
                 "queue %s: a reply that is not a stream read", q->url.text);
    pump(q);
}

static void read_results(pool_queue *q)
{
    q_sub *s = q->s;
    q_args a;

    if (s->reading || s->paused || !rconn_is_up(q->wait) || pool_now() < s->read_after)
        return;
    q_args_init(&a);
    q_add(&a, "XREAD");
    q_add(&a, "COUNT");
    q_addnum(&a, results_page(s->meta.out_max));
    q_add(&a, "BLOCK");
    q_addnum(&a, Q_BLOCK_MS);
    q_add(&a, "STREAMS");
    q_add(&a, q->k_results);
    q_add(&a, s->results_last);
    if (q_send(q, q->wait, results_read, q, Q_BLOCK_MS, &a) == 0)
        s->reading = 1;
}

/* ------------------------------------------------------------ adding tasks */

typedef struct add_ctx {
    pool_queue *q;
    unsigned long seq;
} add_ctx;

static void add_done(rconn *c, redisReply *r, void *priv)
{
    add_ctx *a = priv;
    pool_queue *q = a->q;
    q_out *o = q->s ? out_find(q->s, a->seq) : NULL;
    (void)c;

    free(a);
    if (!o)
        return;
    o->sending = 0;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
        r->element[0]->type == REDIS_REPLY_ERROR)
        q_fail_key(q, q->k_tasks, r->element[0]->str); /* the XADD refused (WRONGTYPE) */
    else if (r && r->type == REDIS_REPLY_ARRAY)
        o->sent = 1;
    else if (r) /* refused (EXECABORT): as a task that cannot start */
        report_unfinished(q, o, EPROTO);
    /* NULL: the connection failed; q_sub_up finds out whether it went in. */
}

static void send_task(pool_queue *q, q_out *o)
{
    q_sub *s = q->s;
    qc_task t;
    qc_fields f;
    q_args a;
    add_ctx *ctx;
    int rc;

    memset(&t, 0, sizeof t);
    t.seq = o->seq;
    t.argv = o->argv;
    t.attempt = 1;
    t.tries = (unsigned)s->meta.tries;
    t.max_deliveries = (unsigned)s->meta.max_deliveries;
    t.timeout_ms = s->meta.timeout_ms;
    t.grace_ms = s->meta.grace_ms;
    t.out_max = s->meta.out_max;
    for (size_t i = 0; i < q->p->o.nretry_codes && i < QC_RETRY_MAX; i++)
        t.retry_on.codes[t.retry_on.ncodes++] = q->p->o.retry_codes[i];
    for (size_t i = 0; i < q->p->o.nretry_signals && i < QC_RETRY_MAX; i++)
        t.retry_on.signals[t.retry_on.nsignals++] = q->p->o.retry_signals[i];
    t.retry_on.timeout = q->p->o.retry_timeout;
    if ((rc = qc_task_encode(&t, &f)) < 0) {
        report_unfinished(q, o, rc == -ENOMEM ? ENOMEM : E2BIG);
        return;
    }
    if (!(ctx = malloc(sizeof *ctx))) {
        qc_fields_free(&f);
        return; /* tried again at the next pump */
    }
    ctx->q = q;
    ctx->seq = o->seq;
    q_args_init(&a);
    q_add(&a, "MULTI");
    rc = q_send(q, q->cmd, NULL, NULL, 0, &a);
    q_args_init(&a);
    q_add(&a, "XADD");
    q_add(&a, q->k_tasks);
    q_add(&a, "*");
    q_addfields(&a, &f);
    if (rc == 0)
        rc = q_send(q, q->cmd, NULL, NULL, 0, &a);
    q_args_init(&a);
    q_add(&a, "HSET");
    q_add(&a, q->k_meta);
    q_add(&a, "submitted");
    q_addnum(&a, o->seq);
    if (rc == 0)
        rc = q_send(q, q->cmd, NULL, NULL, 0, &a);
    q_args_init(&a);
    q_add(&a, "EXEC");
    if (rc == 0)
        rc = q_send(q, q->cmd, add_done, ctx, 0, &a);
    qc_fields_free(&f);
    if (rc < 0) {
        free(ctx);
        rconn_drop(q->cmd, "a transaction could not be sent whole");
        return;
    }
    o->sending = 1;
}

/* Takes what the feed queued in p->head: argv built once, then added. */
static void take_queued(pool_queue *q)
{
    sf_pool *p = q->p;
    q_sub *s = q->s;
    pool_task *t;

    /* Tasks a resumed run finds in Redis already are outside the window:
     * the input must reach every result the stream holds. */
    while ((t = p->head) != NULL && (t->seq <= s->resumed_submitted || s->live_new < s->window)) {
        char **argv;
        q_out *o;

        p->head = t->next;
        if (!p->head)
            p->tail = NULL;
        p->npending--;
        errno = 0;
        argv = t->cmd ? t->cmd(t->seq, 0, t->data, t->cmd_arg) : NULL;
        if (!(o = out_add(s, t->seq, t->data, argv))) {
            free(argv);
            t->next = p->head; /* back; tried again at the next pump */
            p->head = t;
            if (!p->tail)
                p->tail = t;
            p->npending++;
            return;
        }
        p->st.started++;
        if (!argv)
            report_unfinished(q, o, t->cmd ? (errno ? errno : ENOMEM) : EINVAL);
        else if (o->seq <= s->resumed_submitted)
            o->sent = 1; /* in the stream already: its result is awaited */
        free(t->arg);
        free(t);
    }
}

static void send_unsent(pool_queue *q)
{
    q_sub *s = q->s;

    /* Not before meta.submitted has said which of the adds cut off went
     * in: sent again, those would be in the stream twice and run twice. */
    if (!rconn_is_up(q->cmd) || s->resyncing)
        return;
    for (size_t i = 0; i < s->n; i++)
        if (!s->outs[i].done && !s->outs[i].sent && !s->outs[i].sending)
            send_task(q, &s->outs[i]);
}

/* ------------------------------------------------------------ the feed */

static int want_feed(const pool_queue *q)
{
    const q_sub *s = q->s;
    const sf_pool *p = q->p;

    return p->o.feed && s->started && !s->feed_ended && !s->feed_waiting && !p->halting &&
           p->npending < 64 &&
           (p->next_seq < s->resumed_submitted || s->live_new + p->npending < s->window);
}

static void call_feed(pool_queue *q)
{
    sf_pool *p = q->p;
    q_sub *s = q->s;
    unsigned long before = p->next_seq;
    int rc = p->o.feed(p, p->o.arg);

    s->feed_ready = rc == SF_FEED_READY;
    if (rc == SF_FEED_END)
        s->feed_ended = 1;
    else if (rc == SF_FEED_WAIT)
        s->feed_waiting = 1;
    if (s->paused && (p->next_seq >= s->paused_seq || s->feed_ended || p->next_seq != before))
        s->paused = 0; /* read the held result again */
}

static void feed_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    pool_queue *q = w->data;
    (void)loop;
    (void)revents;
    if (want_feed(q))
        call_feed(q);
    pump(q);
}

static void feed_idle_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
    pool_queue *q = w->data;
    (void)loop;
    (void)revents;
    for (int k = 0; k < Q_FEED_BURST && want_feed(q) && (!q->s->feed_pollable || q->s->feed_ready);
         k++) {
        call_feed(q);
        take_queued(q);
    }
    pump(q);
}

static void arm_feed(pool_queue *q)
{
    sf_pool *p = q->p;
    q_sub *s = q->s;
    int want = want_feed(q);
    int poll = want && s->feed_pollable && !s->feed_ready;
    int idle = want && !poll;

    if (p->o.feed_fd >= 0 && s->feed_pollable && poll != ev_is_active(&s->feed_w)) {
        if (poll)
            ev_io_start(p->mloop, &s->feed_w);
        else
            ev_io_stop(p->mloop, &s->feed_w);
    }
    if (idle != ev_is_active(&s->feed_idle)) {
        if (idle)
            ev_idle_start(p->mloop, &s->feed_idle);
        else
            ev_idle_stop(p->mloop, &s->feed_idle);
    }
}

/* ------------------------------------------------------------ halting */

static void send_control(pool_queue *q, int op, const char *state)
{
    q_args a;

    q_control_post(q, op);
    q_args_init(&a);
    q_add(&a, "HSET");
    q_add(&a, q->k_meta);
    q_add(&a, "state");
    q_add(&a, state);
    (void)q_send(q, q->cmd, NULL, NULL, 0, &a);
}

/* After a halt: how many entries a live worker holds (not given back, not
 * idle past the lease). When none, what has no result never will. */
static void pending_counted(rconn *c, redisReply *r, void *priv)
{
    pool_queue *q = priv;
    q_sub *s = q->s;
    int held = 0;
    (void)c;

    if (!s)
        return;
    s->pending_asked = 0;
    if (!r || r->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        unsigned long long idle;
        if (e->type == REDIS_REPLY_ARRAY && e->elements == 4 &&
            e->element[1]->type == REDIS_REPLY_STRING &&
            strcmp(e->element[1]->str, Q_RETURNED) != 0 &&
            q_reply_num(e->element[2], &idle) == 0 && idle < s->meta.lease_ms)
            held++;
    }
    s->held_by_workers = held;
    pump(q);
}

static void count_pending(pool_queue *q)
{
    q_args a;

    if (q->s->pending_asked || !rconn_is_up(q->cmd))
        return;
    q_args_init(&a);
    q_add(&a, "XPENDING");
    q_add(&a, q->k_tasks);
    q_add(&a, Q_GROUP);
    q_add(&a, "-");
    q_add(&a, "+");
    q_addnum(&a, 1000);
    if (q_send(q, q->cmd, pending_counted, q, 0, &a) == 0)
        q->s->pending_asked = 1;
}

static void halt_tell(pool_queue *q)
{
    sf_pool *p = q->p;
    q_sub *s = q->s;

    if (s->halt_sent || !rconn_is_up(q->cmd))
        return;
    s->halt_sent = 1;
    s->held_by_workers = -1; /* not counted yet */
    if (p->st.cancelled_by_request)
        send_control(q, QC_CANCEL, "halt-now");
    else if (p->halting == SF_HALT_NOW)
        send_control(q, QC_HALT_NOW, "halt-now");
    else
        send_control(q, QC_HALT_SOON, "halt-soon");
    if (p->halting == SF_HALT_NOW)
        s->halt_deadline = pool_now() + p->o.kill_grace_s + Q_HALT_EXTRA_S;
}

/* ------------------------------------------------------------ the run */

static void finished(rconn *c, redisReply *r, void *priv)
{
    pool_queue *q = priv;
    (void)c;
    (void)r;
    if (q->s)
        q->s->over = 1;
}

static void end_run(pool_queue *q)
{
    q_sub *s = q->s;
    q_args a;

    if (s->done_asked)
        return;
    s->done_asked = 1;
    if (q->p->halting) {
        s->over = 1;
        return;
    }
    q_args_init(&a);
    q_add(&a, "HSET");
    q_add(&a, q->k_meta);
    q_add(&a, "state");
    q_add(&a, "done");
    if (q_send(q, q->cmd, finished, q, 0, &a) < 0)
        s->done_asked = 0; /* again when the connection is back */
}

static void pump(pool_queue *q)
{
    sf_pool *p = q->p;
    q_sub *s = q->s;

    if (s->over)
        return;
    if (q->failed) {
        s->rc = q->failed;
        s->over = 1;
        return;
    }
    if (atomic_load(&p->cancel_requested) && !p->st.cancelled_by_request)
        pool_begin_halt(p, SF_HALT_NOW, 1, pool_now());
    if (!s->started)
        return;
    take_queued(q);
    send_unsent(q);
    if (p->halting) {
        halt_tell(q);
        if (s->live == 0 || (s->halt_deadline > 0 && pool_now() >= s->halt_deadline) ||
            (s->held_by_workers == 0)) {
            /* What no worker runs any more has ended without a result. */
            for (size_t i = 0; i < s->n; i++)
                if (!s->outs[i].done)
                    report_unfinished(q, &s->outs[i], 0);
            end_run(q);
            return;
        }
    } else if (s->feed_ended && !p->head && s->live == 0) {
        end_run(q);
        return;
    }
    read_results(q);
    arm_feed(q);
}

static void cancel_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    pool_queue *q = w->data;
    uint64_t n;
    (void)loop;
    (void)revents;
    if (read(q->p->cancel_fd, &n, sizeof n) < 0) {
        /* EAGAIN: drained already */
    }
    pump(q);
}

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    pool_queue *q = w->data;
    (void)loop;
    (void)revents;
    if (q->p->o.on_tick)
        q->p->o.on_tick(q->p, q->p->o.arg);
}

/* Once a second: what waits on time (a halt's count of held entries, its
 * deadline, a write to try again). */
static void beat_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    pool_queue *q = w->data;
    (void)loop;
    (void)revents;
    if (q->p->halting && q->s->halt_sent)
        count_pending(q);
    if (q->s->done_asked && !q->s->over && !q->p->halting)
        q->s->done_asked = 0;
    pump(q);
}

/* ------------------------------------------------------------ meta */

static void our_meta(pool_queue *q, q_meta *m)
{
    sf_pool_opts *o = &q->p->o;
    qc_retry_on r;

    memset(m, 0, sizeof *m);
    memset(&r, 0, sizeof r);
    m->tries = 1ULL + o->retries;
    m->timeout_ms = (unsigned long long)llround(o->timeout_s * 1000.0);
    m->grace_ms = (unsigned long long)llround(o->kill_grace_s * 1000.0);
    m->out_max = o->output_max == 0 || o->output_max > QC_OUT_MAX ? Q_OUT_DEFAULT : o->output_max;
    m->lease_ms = (unsigned long long)llround((o->queue_lease_s > 0 ? o->queue_lease_s : 30) * 1000);
    if (m->lease_ms == 0)
        m->lease_ms = 1;
    m->max_deliveries = m->tries + 2;
    for (size_t i = 0; i < o->nretry_codes && i < QC_RETRY_MAX; i++)
        r.codes[r.ncodes++] = o->retry_codes[i];
    for (size_t i = 0; i < o->nretry_signals && i < QC_RETRY_MAX; i++)
        r.signals[r.nsignals++] = o->retry_signals[i];
    r.timeout = o->retry_timeout;
    if (qc_retry_format(&r, m->retry_on, sizeof m->retry_on) < 0)
        m->retry_on[0] = '\0';
    snprintf(m->state, sizeof m->state, "running");
}

static int same_run(const q_meta *a, const q_meta *b)
{
    return a->tries == b->tries && a->timeout_ms == b->timeout_ms &&
           a->grace_ms == b->grace_ms && a->out_max == b->out_max &&
           a->lease_ms == b->lease_ms && a->max_deliveries == b->max_deliveries &&
           strcmp(a->retry_on, b->retry_on) == 0;
}

static void created(rconn *c, redisReply *r, void *priv)
{
    pool_queue *q = priv;
    (void)c;
    if (!q->s)
        return;
    q->s->meta_asked = 0;
    if (!r)
        return; /* asked again when the connection is back */
    if (r->type != REDIS_REPLY_ARRAY) {
        q_fail(q, -EPROTO, r->type == REDIS_REPLY_ERROR ? r->str : "the queue cannot be made");
    } else if (r->elements >= 2 && r->element[1]->type == REDIS_REPLY_ERROR &&
               strncmp(r->element[1]->str, "BUSYGROUP", 9) != 0) {
        q_fail_key(q, q->k_tasks, r->element[1]->str); /* not a stream: not ours */
    } else {
        q->s->started = 1;
    }
    pump(q);
}

static void make_run(pool_queue *q, int fresh)
{
    q_sub *s = q->s;
    q_args a;
    int rc;

    q_args_init(&a);
    q_add(&a, "MULTI");
    rc = q_send(q, q->cmd, NULL, NULL, 0, &a);
    q_args_init(&a);
    q_add(&a, "HSET");
    q_add(&a, q->k_meta);
    if (fresh) {
        q_add(&a, "v");
        q_add(&a, QC_VERSION);
        q_add(&a, "tries");
        q_addnum(&a, s->meta.tries);
        q_add(&a, "timeout_ms");
        q_addnum(&a, s->meta.timeout_ms);
        q_add(&a, "grace_ms");
        q_addnum(&a, s->meta.grace_ms);
        q_add(&a, "out_max");
        q_addnum(&a, s->meta.out_max);
        q_add(&a, "lease_ms");
        q_addnum(&a, s->meta.lease_ms);
        q_add(&a, "max_deliveries");
        q_addnum(&a, s->meta.max_deliveries);
        q_add(&a, "retry_on");
        q_add(&a, s->meta.retry_on);
        q_add(&a, "submitted");
        q_add(&a, "0");
    }
    q_add(&a, "state");
    q_add(&a, "running");
    if (rc == 0)
        rc = q_send(q, q->cmd, NULL, NULL, 0, &a);
    /* MKSTREAM: the group needs its stream; BUSYGROUP (it is there) is an
     * error inside the EXEC's answer, and harmless. */
    q_args_init(&a);
    q_add(&a, "XGROUP");
    q_add(&a, "CREATE");
    q_add(&a, q->k_tasks);
    q_add(&a, Q_GROUP);
    q_add(&a, "0");
    q_add(&a, "MKSTREAM");
    if (rc == 0)
        rc = q_send(q, q->cmd, NULL, NULL, 0, &a);
    /* A halted run's halt-now or cancel, kept in control, would stop every
     * worker that starts for this one (they read control from its start). */
    q_args_init(&a);
    q_add(&a, "DEL");
    q_add(&a, q->k_control);
    if (rc == 0)
        rc = q_send(q, q->cmd, NULL, NULL, 0, &a);
    q_args_init(&a);
    q_add(&a, "EXEC");
    if (rc == 0)
        rc = q_send(q, q->cmd, created, q, 0, &a);
    if (rc < 0)
        rconn_drop(q->cmd, "a transaction could not be sent whole");
    else
        s->meta_asked = 1;
}

static void meta_read(rconn *c, redisReply *r, void *priv)
{
    pool_queue *q = priv;
    q_sub *s = q->s;
    q_meta theirs;
    (void)c;

    if (!s)
        return;
    s->meta_asked = 0;
    if (!r)
        return;
    if (r->type != REDIS_REPLY_ARRAY) {
        q_fail(q, -EPROTO, r->type == REDIS_REPLY_ERROR ? r->str : "the queue's meta is not a hash");
        pump(q);
        return;
    }
    if (r->elements == 0) {
        make_run(q, 1);
        return;
    }
    if (q_meta_parse(r, &theirs) < 0 || !same_run(&theirs, &s->meta)) {
        q_fail(q, -EEXIST, "the queue holds another run (other parameters)");
    } else if (strcmp(theirs.state, "done") == 0) {
        q_fail(q, -EEXIST, "the queue holds a finished run");
    } else {
        s->resumed_submitted = theirs.submitted;
        make_run(q, 0);
        return;
    }
    pump(q);
}

/* Back after a loss: which of the tasks whose EXEC had no answer went in
 * (meta.submitted counts them, in order), then on as before. */
static void submitted_read(rconn *c, redisReply *r, void *priv)
{
    pool_queue *q = priv;
    q_sub *s = q->s;
    unsigned long long n;
    (void)c;

    if (!s || !r)
        return; /* lost again: asked again when it is back */
    s->resyncing = 0;
    if (r->type == REDIS_REPLY_NIL) {
        /* The run's meta is gone: Redis came back without its data (or
         * the keys were deleted). The tasks sent will never have results. */
        q_fail(q, -ENOENT, "the run's keys are gone (Redis restarted without its data?)");
        pump(q);
        return;
    }
    if (q_reply_num(r, &n) == 0)
        for (size_t i = 0; i < s->n; i++)
            if (!s->outs[i].done && s->outs[i].seq <= n)
                s->outs[i].sent = 1;
    pump(q);
}

void q_sub_up(pool_queue *q)
{
    q_sub *s = q->s;
    q_args a;

    /* In-flight flags are cleared by their callbacks (NULL after a loss). */
    q_args_init(&a);
    if (!s->started) {
        if (s->meta_asked)
            return;
        q_add(&a, "HGETALL");
        q_add(&a, q->k_meta);
        if (q_send(q, q->cmd, meta_read, q, 0, &a) == 0)
            s->meta_asked = 1;
        return;
    }
    q_add(&a, "HGET");
    q_add(&a, q->k_meta);
    q_add(&a, "submitted");
    s->resyncing = q_send(q, q->cmd, submitted_read, q, 0, &a) == 0;
    pump(q);
}

int q_sub_open(pool_queue *q)
{
    sf_pool *p = q->p;
    q_sub *s;

    if (!(s = q->s = calloc(1, sizeof *s)))
        return -ENOMEM;
    s->window = p->o.jobs ? p->o.jobs : p->o.queue_max;
    our_meta(q, &s->meta);
    snprintf(s->results_last, sizeof s->results_last, "0-0");
    s->feed_ended = !p->o.feed;
    ev_io_init(&s->cancel_w, cancel_cb, p->cancel_fd, EV_READ);
    s->cancel_w.data = q;
    ev_idle_init(&s->feed_idle, feed_idle_cb);
    s->feed_idle.data = q;
    ev_timer_init(&s->beat_w, beat_cb, 1.0, 1.0);
    s->beat_w.data = q;
    ev_timer_init(&s->tick_w, tick_cb, p->o.tick_s, p->o.tick_s);
    s->tick_w.data = q;
    if (p->o.feed_fd >= 0) {
        ev_io_init(&s->feed_w, feed_cb, p->o.feed_fd, EV_READ);
        s->feed_w.data = q;
    }
    return 0;
}

void q_sub_close(pool_queue *q)
{
    q_sub *s = q->s;
    struct ev_loop *l = q->p->mloop;

    if (!s)
        return;
    if (l) {
        ev_io_stop(l, &s->cancel_w);
        ev_idle_stop(l, &s->feed_idle);
        ev_timer_stop(l, &s->beat_w);
        ev_timer_stop(l, &s->tick_w);
        if (q->p->o.feed_fd >= 0)
            ev_io_stop(l, &s->feed_w);
    }
    /* Tasks never given a result: the caller hears of them as sf_pool_free
     * reports what never ran. */
    for (size_t i = 0; i < s->n; i++)
        if (!s->outs[i].done) {
            sf_task_report r;
            memset(&r, 0, sizeof r);
            r.state = SF_TASK_CANCELLED;
            r.seq = s->outs[i].seq;
            r.data = s->outs[i].data;
            r.argv = s->outs[i].argv;
            q->p->st.cancelled++;
            q->p->o.on_done(q->p, &r, q->p->o.arg);
            free(s->outs[i].argv);
        }
    free(s->outs);
    free(s);
    q->s = NULL;
}

int pool_queue_submit_run(sf_pool *p)
{
    pool_queue *q = p->queue;
    q_sub *s = q->s;

    if (p->running_loop)
        return -EBUSY;
    p->running_loop = 1;
    if (p->o.feed_fd >= 0) {
        /* As the pool's own loop: a regular file is always readable. */
        s->feed_pollable = pool_fd_add(p, p->o.feed_fd, EPOLLIN, EV_FEED) == 0;
        if (s->feed_pollable)
            (void)epoll_ctl(p->ep, EPOLL_CTL_DEL, p->o.feed_fd, NULL);
    }
    ev_io_start(p->mloop, &s->cancel_w);
    ev_timer_start(p->mloop, &s->beat_w);
    if (p->o.tick_s > 0)
        ev_timer_start(p->mloop, &s->tick_w);
    pump(q);
    while (!s->over) {
        ev_run(p->mloop, EVRUN_ONCE);
        pump(q);
    }
    ev_io_stop(p->mloop, &s->cancel_w);
    ev_idle_stop(p->mloop, &s->feed_idle);
    ev_timer_stop(p->mloop, &s->beat_w);
    ev_timer_stop(p->mloop, &s->tick_w);
    if (p->o.feed_fd >= 0)
        ev_io_stop(p->mloop, &s->feed_w);
    p->running_loop = 0;
    return s->rc;
}
