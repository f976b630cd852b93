/*
 * queue_work.c - queue_role 2, the worker's side (`sockfork worker`).
 *
 * A worker holds at most `jobs` entries of the task stream at a time, each
 * in one q_task: taken (INBOX), given to the pool (POOL), its outcome being
 * written (WRITING), then FREE again. The pool runs them as a local run
 * does; this file only feeds it (through an eventfd the pool polls as its
 * feed_fd), keeps what each task wrote (bounded by the run's out_max), and
 * when on_done comes, writes the outcome and the acknowledgement in one
 * MULTI/EXEC. Every wait is on the pool's libev loop.
 */
#include "pool/queue.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define Q_SCAN_S 1.0          /* the pending list is scanned this often */
#define Q_SCAN_MAX 32         /* entries claimed at once */
#define Q_RENEW_IDS 40        /* ids renewed by one EVAL */
#define Q_END_WAIT_S 10.0     /* after the run: at most this long to write what is left */
#define Q_GIVE_BACK_IDLE "1099511627776" /* 2^40 ms: past any lease, before the epoch */

enum { QT_FREE = 0, QT_INBOX, QT_POOL, QT_WRITING };

typedef struct q_task {
    int state;
    char id[48];                 /* the entry's id in the task stream */
    qc_task t;                   /* t.argv ours */
    unsigned deliveries;
    int lost;                    /* another worker has claimed it since */
    int inflight;                /* its MULTI/EXEC is sent, no answer yet */
    int give_back;               /* WRITING means: return it, unacknowledged */
    int dead;                    /* WRITING means: dead-letter it */
    const char *dead_why;
    char *out, *err;             /* what it wrote, kept up to t.out_max in all */
    size_t outn, errn;
    qc_result res;               /* the outcome to write (views into ours) */
    char *result;
    int retry;                   /* write the next attempt, not a result */
    pool_queue *q;               /* while its outcome is being written */
} q_task;

struct q_work {
    q_task *tasks;
    unsigned n;
    int efd;
    q_meta meta;
    int meta_ok, meta_waiting_said, meta_halted_said, meta_asking;
    int finishing;               /* take nothing more */
    int halted_by_control;       /* a halt-now or cancel from the submitter */
    unsigned reserved;           /* entries asked for, not yet answered */
    int reading, scanning, controlling, renewing;
    int scan_now;
    double next_scan;
    double read_after;           /* no read before (an error answered the last) */
    char control_last[48];
    ev_timer tick;               /* control, leases, the meta wait */
    double next_renew;
    unsigned claim_counts[Q_SCAN_MAX]; /* the scan's delivery counts, by id */
    char claim_ids[Q_SCAN_MAX][48];
    unsigned nclaim;
    sf_pool_done_cb user_done;
};

static void fetch(pool_queue *q);
static void write_outcome(pool_queue *q, q_task *qt);

/* ------------------------------------------------------------ tasks */

static q_task *task_free_one(q_work *w)
{
    for (unsigned i = 0; i < w->n; i++)
        if (w->tasks[i].state == QT_FREE)
            return &w->tasks[i];
    return NULL;
}

static unsigned tasks_in(const q_work *w, int state)
{
    unsigned n = 0;
    for (unsigned i = 0; i < w->n; i++)
        n += w->tasks[i].state == state;
    return n;
}

static void task_clear(q_task *qt)
{
    free(qt->t.argv);
    free(qt->out);
    free(qt->err);
    free(qt->result);
    memset(qt, 0, sizeof *qt);
}

static void wake_feed(q_work *w)
{
    uint64_t one = 1;
    if (write(w->efd, &one, sizeof one) < 0) {
        /* EAGAIN: a wakeup is pending anyway */
    }
}

/* Entries asked for are answered (n of them, whatever came). A finishing
 * worker's feed ends only once nothing is asked for (q_feed), so every
 * answer wakes it: one that did not (an XPENDING listing nothing) left the
 * worker waiting for ever after its run was over. */
static void unreserve(q_work *w, unsigned n)
{
    w->reserved -= n;
    if (w->finishing)
        wake_feed(w);
}

/* ------------------------------------------------------------ writing */

/* The outcome of an entry, written only while the entry is still this
 * worker's: KEYS[1] the task stream, KEYS[2..] the streams to add to;
 * ARGV[1] this consumer, ARGV[2] the entry's id, then per stream added to
 * the number of words and the words (field, value...). Checked, added and
 * acknowledged in one script, atomic as a MULTI/EXEC is; and, unlike one,
 * a refused XADD stops it before the XACK. An entry that another worker
 * has claimed meanwhile (this one was cut off past its lease, and the
 * renewal that would have said so had not come yet) is its now: this
 * worker's outcome is stale and is not written (-1). One acknowledged
 * already (this script's answer was lost with the connection, and it is
 * sent again) is not written twice (0). */
static const char outcome_script[] =
    "local p = redis.call('XPENDING', KEYS[1], 'workers', ARGV[2], ARGV[2], 1)\n"
    "if #p ~= 1 then return 0 end\n"
    "if p[1][2] ~= ARGV[1] then return -1 end\n"
    "local i = 3\n"
    "for k = 2, #KEYS do\n"
    "  local n = tonumber(ARGV[i])\n"
    "  redis.call('XADD', KEYS[k], '*', unpack(ARGV, i + 1, i + n))\n"
    "  i = i + 1 + n\n"
    "end\n"
    "redis.call('XACK', KEYS[1], 'workers', ARGV[2])\n"
    "return 1\n";

static void lease_lost_log(pool_queue *q, const q_task *qt, const char *what)
{
    sf_logev(&q->p->log, SF_LOG_WARN, "queue_lease_lost", 0, NULL,
             SF_FIELDS(SF_F_UINT("task", qt->t.seq), SF_F_STR("id", qt->id)),
             "task %lu: its lease was lost to another worker; %s", qt->t.seq, what);
}

static void write_done(rconn *c, redisReply *r, void *priv)
{
    q_task *qt = priv;
    (void)c;

    qt->inflight = 0;
    if (!r)
        return; /* the connection failed: written again when it is back */
    if (r->type == REDIS_REPLY_INTEGER && r->integer < 0)
        lease_lost_log(qt->q, qt, "its outcome is not written");
    /* Done; or not ours any more; or refused (an XADD the script could not
     * make), and then the entry stays pending: after the lease another
     * worker runs it. Either way this worker is through with it. */
    task_clear(qt);
}

/* MULTI, the commands in a[], EXEC (its reply to cb): all or none sent. */
static int send_multi(pool_queue *q, q_args *a, int n, rconn_reply_cb cb, void *priv)
{
    q_args m;
    int rc;

    q_args_init(&m);
    q_add(&m, "MULTI");
    if ((rc = q_send(q, q->cmd, NULL, NULL, 0, &m)) < 0)
        return rc;
    for (int i = 0; i < n; i++)
        if ((rc = q_send(q, q->cmd, NULL, NULL, 0, &a[i])) < 0)
            goto cut;
    q_args_init(&m);
    q_add(&m, "EXEC");
    if ((rc = q_send(q, q->cmd, cb, priv, 0, &m)) < 0)
        goto cut;
    return 0;

cut:
    /* A transaction left open would swallow the next commands. */
    rconn_drop(q->cmd, "a transaction could not be sent whole");
    return rc;
}

static void xack(pool_queue *q, q_args *a, const char *id)
{
    q_args_init(a);
    q_add(a, "XACK");
    q_add(a, q->k_tasks);
    q_add(a, Q_GROUP);
    q_add(a, id);
}

/* One stream's entry for outcome_script: its key among the keys, the
 * number of its words and the words among the arguments. */
static void outcome_entry(q_args *keys, q_args *words, const char *key, const qc_fields *f,
                          unsigned extra)
{
    q_add(keys, key);
    q_addnum(words, 2ULL * f->n + extra);
    q_addfields(words, f);
}

static void write_result(pool_queue *q, q_task *qt)
{
    q_args keys, words, a;
    qc_fields f, g;

    q_args_init(&keys);
    q_args_init(&words);
    q_add(&keys, q->k_tasks);
    f.n = 0;
    f.argv_blob = NULL;
    g.n = 0;
    g.argv_blob = NULL;
    if (qt->retry) {
        qc_task next = qt->t;
        next.attempt++;
        if (qc_task_encode(&next, &f) < 0)
            goto bad;
        outcome_entry(&keys, &words, q->k_tasks, &f, 0);
    } else {
        if (qt->dead && qt->t.argv && qc_task_encode(&qt->t, &f) == 0) {
            outcome_entry(&keys, &words, q->k_dead, &f, 4);
            q_add(&words, "reason");
            q_add(&words, qt->dead_why);
            q_add(&words, "deliveries");
            q_addnum(&words, qt->deliveries);
        }
        if (qc_result_encode(&qt->res, &g) < 0)
            goto bad;
        outcome_entry(&keys, &words, q->k_results, &g, 0);
    }
    q_args_init(&a);
    q_add(&a, "EVAL");
    q_add(&a, outcome_script);
    q_addnum(&a, (unsigned)keys.n);
    for (int i = 0; i < keys.n; i++)
        q_addn(&a, keys.v[i], keys.len[i]);
    q_add(&a, q->me);
    q_add(&a, qt->id);
    for (int i = 0; i < words.n; i++)
        q_addn(&a, words.v[i], words.len[i]);
    qt->q = q;
    if (q_send(q, q->cmd, write_done, qt, 0, &a) == 0)
        qt->inflight = 1;
    qc_fields_free(&f);
    qc_fields_free(&g);
    return;

bad:
    qc_fields_free(&f);
    /* Cannot happen with what we decoded; leave the entry to its lease. */
    task_clear(qt);
}

static void give_back_done(rconn *c, redisReply *r, void *priv)
{
    q_task *qt = priv;
    (void)c;
    qt->inflight = 0;
    if (r)
        task_clear(qt);
}

/* Unacknowledged, to the consumer `returned`, idle past any lease and its
 * delivery count unchanged (JUSTID): the next scan of any worker takes it.
 * Only while it is still this worker's: one another worker has claimed
 * meanwhile is running there, and taken from it, it would run a third time. */
static const char give_back_script[] =
    "local p = redis.call('XPENDING', KEYS[1], 'workers', ARGV[2], ARGV[2], 1)\n"
    "if #p ~= 1 or p[1][2] ~= ARGV[1] then return 0 end\n"
    "redis.call('XCLAIM', KEYS[1], 'workers', '" Q_RETURNED "', 0, ARGV[2], 'IDLE', ARGV[3], "
    "'JUSTID')\n"
    "return 1\n";

static void give_back(pool_queue *q, q_task *qt)
{
    q_args a;

    q_args_init(&a);
    q_add(&a, "EVAL");
    q_add(&a, give_back_script);
    q_add(&a, "1");
    q_add(&a, q->k_tasks);
    q_add(&a, q->me);
    q_add(&a, qt->id);
    q_add(&a, Q_GIVE_BACK_IDLE);
    if (q_send(q, q->cmd, give_back_done, qt, 0, &a) < 0)
        return;
    qt->inflight = 1;
    q_control_post(q, QC_RETURNED);
}

static void write_outcome(pool_queue *q, q_task *qt)
{
    if (qt->inflight || !rconn_is_up(q->cmd))
        return; /* written when the connection is back (q_work_up) */
    if (qt->lost)
        task_clear(qt); /* another worker's now: it records it */
    else if (qt->give_back)
        give_back(q, qt);
    else
        write_result(q, qt);
}

/* ------------------------------------------------------------ the pool's hooks */

static char **task_argv(unsigned long seq, unsigned slot, void *data, void *cmd_arg)
{
    q_task *qt = data;
    size_t words = 0, bytes = 0;
    char **argv, *text;
    (void)seq;
    (void)slot;
    (void)cmd_arg;

    for (; qt->t.argv[words]; words++)
        bytes += strlen(qt->t.argv[words]) + 1;
    if (!(argv = malloc((words + 1) * sizeof *argv + bytes)))
        return NULL;
    text = (char *)(argv + words + 1);
    for (size_t i = 0; i < words; i++) {
        size_t l = strlen(qt->t.argv[i]) + 1;
        argv[i] = memcpy(text, qt->t.argv[i], l);
        text += l;
    }
    argv[words] = NULL;
    return argv;
}

static int feed(sf_pool *p, void *arg)
{
    pool_queue *q = p->queue;
    q_work *w = q->w;
    uint64_t n;
    (void)arg;

    if (read(w->efd, &n, sizeof n) < 0) {
        /* EAGAIN: nothing new */
    }
    for (unsigned i = 0; i < w->n; i++) {
        q_task *qt = &w->tasks[i];
        if (qt->state != QT_INBOX)
            continue;
        if (sf_pool_submit_cmd(p, task_argv, q, qt, NULL) < 0) {
            /* Halting (or out of room, which `jobs` entries cannot be):
             * not run here, so given back. */
            qt->state = QT_WRITING;
            qt->give_back = 1;
            write_outcome(q, qt);
            continue;
        }
        /* The run's number, not this pool's: SOCKFORK_TASK, PARALLEL_SEQ
         * and the log lines name the task as the submitter does. */
        p->tail->seq = qt->t.seq;
        qt->state = QT_POOL;
    }
    if ((w->finishing || q->failed) && !tasks_in(w, QT_INBOX) && !w->reserved)
        return SF_FEED_END;
    return SF_FEED_MORE;
}

static void keep(char **buf, size_t *len, size_t room, const char *data, size_t n)
{
    char *b;

    if (n > room)
        n = room; /* the pool stops the attempt at out_max anyway */
    if (n == 0 || !(b = realloc(*buf, *len + n)))
        return; /* no memory: the output is cut, the outcome still goes */
    memcpy(b + *len, data, n);
    *buf = b;
    *len += n;
}

static void on_output(sf_pool *p, const sf_task_info *i, int stream, const char *buf,
                      size_t len, void *arg)
{
    q_task *qt = i->data;
    size_t used = qt->outn + qt->errn;
    size_t room = qt->t.out_max > used ? (size_t)(qt->t.out_max - used) : 0;
    (void)p;
    (void)arg;

    if (stream == 1)
        keep(&qt->out, &qt->outn, room, buf, len);
    else
        keep(&qt->err, &qt->errn, room, buf, len);
}

static int should_retry(const q_task *qt, const sf_task_report *r)
{
    return r->state == SF_TASK_FAILED && !r->killed && !r->output_limited && !r->spawn_error &&
           qt->t.attempt < qt->t.tries &&
           qc_retry_allows(&qt->t.retry_on, r->status.exited, r->status.code, r->status.signal,
                           r->timed_out);
}

static void outcome_of(pool_queue *q, q_task *qt, const sf_task_report *r)
{
    qc_result *o = &qt->res;

    memset(o, 0, sizeof *o);
    o->seq = qt->t.seq;
    o->state = r->state == SF_TASK_OK ? QC_OK : r->killed ? QC_KILLED : QC_FAILED;
    o->attempts = qt->t.attempt;
    o->exited = r->status.exited;
    o->code = r->status.exited ? r->status.code : 0;
    o->signal = r->status.exited ? 0 : r->status.signal;
    o->timed_out = r->timed_out;
    o->output_limited = r->output_limited;
    o->spawn_error = r->spawn_error > 0 && r->spawn_error < 4096 ? r->spawn_error : 0;
    o->slot = r->slot;
    o->pid = r->pid;
    o->start_us = r->start_time > 0 ? (long long)llround(r->start_time * 1e6) : 0;
    o->dur_us = r->duration_s > 0 ? (unsigned long long)llround(r->duration_s * 1e6) : 0;
    o->out_bytes = r->stdout_bytes;
    o->err_bytes = r->stderr_bytes;
    o->host = (qc_bytes){q->host, strlen(q->host)};
    o->worker = (qc_bytes){q->me, strlen(q->me)};
    o->out = (qc_bytes){qt->out, qt->outn};
    o->err = (qc_bytes){qt->err, qt->errn};
    if (r->result && r->result_len && r->result_len <= QC_RESULT_MAX &&
        (qt->result = malloc(r->result_len))) {
        memcpy(qt->result, r->result, r->result_len);
        o->result = (qc_bytes){qt->result, r->result_len};
    }
}

static void on_done(sf_pool *p, const sf_task_report *r, void *arg)
{
    pool_queue *q = p->queue;
    q_work *w = q->w;
    q_task *qt = r->data;

    if (w->user_done)
        w->user_done(p, r, arg);
    qt->state = QT_WRITING;
    if (r->state == SF_TASK_CANCELLED ||
        (r->killed && p->st.cancelled_by_request && !w->halted_by_control)) {
        qt->give_back = 1; /* not run, or stopped because we stop: another runs it */
    } else {
        qt->retry = should_retry(qt, r);
        outcome_of(q, qt, r);
    }
    write_outcome(q, qt);
    fetch(q);
}

/* ------------------------------------------------------------ taking entries */

static void dead_letter(pool_queue *q, q_task *qt, const char *why)
{
    qc_result *o = &qt->res;

    sf_logev(&q->p->log, SF_LOG_WARN, "queue_dead", 0, NULL,
             SF_FIELDS(SF_F_UINT("task", qt->t.seq), SF_F_UINT("deliveries", qt->deliveries),
                       SF_F_STR("why", why)),
             "task %lu dead-lettered: %s", qt->t.seq, why);
    memset(o, 0, sizeof *o);
    o->seq = qt->t.seq;
    o->state = QC_DEAD;
    o->attempts = qt->t.attempt;
    o->host = (qc_bytes){q->host, strlen(q->host)};
    o->worker = (qc_bytes){q->me, strlen(q->me)};
    qt->dead = 1;
    qt->dead_why = why;
    qt->state = QT_WRITING;
    write_outcome(q, qt);
}

/* An entry that does not parse: to the dead-letter stream as it was, and
 * acknowledged. Its task number may be unreadable: the submitter sees it
 * outstanding and says so at the end. */
static void bad_entry(pool_queue *q, const char *id, const char *why)
{
    q_args a[2];

    sf_logev(&q->p->log, SF_LOG_WARN, "queue_bad_entry", 0, NULL,
             SF_FIELDS(SF_F_STR("stream", q->k_tasks), SF_F_STR("id", id),
                       SF_F_STR("error", why)),
             "queue %s: entry %s does not parse (%s): dead-lettered", q->url.text, id, why);
    q_args_init(&a[0]);
    q_add(&a[0], "XADD");
    q_add(&a[0], q->k_dead);
    q_add(&a[0], "*");
    q_add(&a[0], "id");
    q_add(&a[0], id);
    q_add(&a[0], "reason");
    q_add(&a[0], why);
    xack(q, &a[1], id);
    (void)send_multi(q, a, 2, NULL, NULL);
}

typedef struct take_ctx {
    pool_queue *q;
    int claimed;                 /* from the scan: counts in claim_counts */
} take_ctx;

static void take(const char *id, const qc_bytes *f, const qc_bytes *v, size_t n, void *arg)
{
    take_ctx *c = arg;
    pool_queue *q = c->q;
    q_work *w = q->w;
    q_task *qt = task_free_one(w);
    const char *why = NULL;
    unsigned deliveries = 1;

    if (strlen(id) >= sizeof qt->id)
        return;
    if (c->claimed)
        for (unsigned i = 0; i < w->nclaim; i++)
            if (strcmp(w->claim_ids[i], id) == 0)
                deliveries = w->claim_counts[i] + 1;
    if (!qt)
        return; /* cannot be: as many were asked for as were free. Its lease runs out. */
    if (qc_task_decode(f, v, n, &qt->t, &why) < 0) {
        bad_entry(q, id, why);
        return;
    }
    snprintf(qt->id, sizeof qt->id, "%s", id);
    qt->deliveries = deliveries;
    if (deliveries > qt->t.max_deliveries) {
        dead_letter(q, qt, "delivered more times than its limit");
        return;
    }
    if (w->finishing || q->p->halting || q->failed) {
        /* A read that was on its way when the run ended or halted: not
         * ours to run, so back at once rather than after the lease. */
        qt->state = QT_WRITING;
        qt->give_back = 1;
        write_outcome(q, qt);
        return;
    }
    qt->state = QT_INBOX;
    wake_feed(w);
}

typedef struct read_ctx {
    pool_queue *q;
    unsigned asked;
} read_ctx;

static void new_entries(rconn *c, redisReply *r, void *priv)
{
    read_ctx *rc = priv;
    pool_queue *q = rc->q;
    q_work *w = q->w;
    take_ctx tc = {q, 0};
    (void)c;

    unreserve(w, rc->asked);
    w->reading = 0;
    free(rc);
    if (r && r->type == REDIS_REPLY_ERROR) {
        /* NOGROUP: the submitter has not made it yet (or the run's keys
         * are gone, which the meta's state tells at the next tick). Asked
         * again then, not at once. */
        w->read_after = pool_now() + Q_CONTROL_S;
        return;
    }
    if (r && q_entries(r, 1, take, &tc) < 0)
        sf_logev(&q->p->log, SF_LOG_WARN, "queue_bad_entry", 0, NULL,
                 SF_FIELDS(SF_F_STR("stream", q->k_tasks), SF_F_STR("error", "bad reply")),
                 "queue %s: a reply that is not a stream read", q->url.text);
    if (r && r->type == REDIS_REPLY_NIL)
        w->scan_now = 1; /* nothing new for a second: look for abandoned work */
    if (w->finishing)
        wake_feed(w); /* the feed may end now that nothing is asked for */
    fetch(q);
}

static void read_new(pool_queue *q, unsigned want)
{
    q_work *w = q->w;
    read_ctx *rc;
    q_args a;

    if (w->reading || !rconn_is_up(q->wait) || !(rc = malloc(sizeof *rc)))
        return;
    rc->q = q;
    rc->asked = want;
    q_args_init(&a);
    q_add(&a, "XREADGROUP");
    q_add(&a, "GROUP");
    q_add(&a, Q_GROUP);
    q_add(&a, q->me);
    q_add(&a, "COUNT");
    q_addnum(&a, want);
    q_add(&a, "BLOCK");
    q_addnum(&a, Q_BLOCK_MS);
    q_add(&a, "STREAMS");
    q_add(&a, q->k_tasks);
    q_add(&a, ">");
    if (q_send(q, q->wait, new_entries, rc, Q_BLOCK_MS, &a) < 0) {
        free(rc);
        return;
    }
    w->reading = 1;
    w->reserved += want;
}

static void claimed(rconn *c, redisReply *r, void *priv)
{
    read_ctx *rc = priv;
    pool_queue *q = rc->q;
    q_work *w = q->w;
    take_ctx tc = {q, 1};
    (void)c;

    unreserve(w, rc->asked);
    w->scanning = 0;
    free(rc);
    if (r)
        (void)q_entries(r, 0, take, &tc);
    w->nclaim = 0;
    if (w->finishing)
        wake_feed(w);
    fetch(q);
}

/* XPENDING's answer: [[id, consumer, idle, count]...], all idle past the
 * lease. XCLAIM with the lease as min-idle takes those still idle: of two
 * workers scanning at once, each entry goes to one. */
static void pending_listed(rconn *c, redisReply *r, void *priv)
{
    read_ctx *rc = priv;
    pool_queue *q = rc->q;
    q_work *w = q->w;
    q_args a;
    (void)c;

    w->nclaim = 0;
    if (r && r->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i < r->elements && w->nclaim < rc->asked; i++) {
            const redisReply *e = r->element[i];
            unsigned long long count;
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 4 ||
                e->element[0]->type != REDIS_REPLY_STRING ||
                e->element[0]->len >= sizeof w->claim_ids[0] ||
                q_reply_num(e->element[3], &count) < 0)
                continue;
            memcpy(w->claim_ids[w->nclaim], e->element[0]->str, e->element[0]->len + 1);
            w->claim_counts[w->nclaim++] = count > 1000000 ? 1000000 : (unsigned)count;
        }
    if (w->nclaim == 0)
        goto none;
    q_args_init(&a);
    q_add(&a, "XCLAIM");
    q_add(&a, q->k_tasks);
    q_add(&a, Q_GROUP);
    q_add(&a, q->me);
    q_addnum(&a, w->meta.lease_ms);
    for (unsigned i = 0; i < w->nclaim; i++)
        q_add(&a, w->claim_ids[i]);
    if (q_send(q, q->cmd, claimed, rc, 0, &a) == 0)
        return;

none:
    unreserve(w, rc->asked);
    w->scanning = 0;
    free(rc);
    w->nclaim = 0;
    fetch(q);
}

static void scan(pool_queue *q, unsigned want)
{
    q_work *w = q->w;
    read_ctx *rc;
    q_args a;

    if (want > Q_SCAN_MAX)
        want = Q_SCAN_MAX;
    if (!(rc = malloc(sizeof *rc)))
        return;
    rc->q = q;
    rc->asked = want;
    q_args_init(&a);
    q_add(&a, "XPENDING");
    q_add(&a, q->k_tasks);
    q_add(&a, Q_GROUP);
    q_add(&a, "IDLE");
    q_addnum(&a, w->meta.lease_ms);
    q_add(&a, "-");
    q_add(&a, "+");
    q_addnum(&a, want);
    if (q_send(q, q->cmd, pending_listed, rc, 0, &a) < 0) {
        free(rc);
        return;
    }
    w->scanning = 1;
    w->scan_now = 0;
    w->next_scan = pool_now() + Q_SCAN_S;
    w->reserved += want;
}

static void fetch(pool_queue *q)
{
    q_work *w = q->w;
    unsigned free_n;

    if (!w->meta_ok || w->finishing || q->failed || q->p->halting || !rconn_is_up(q->cmd))
        return;
    free_n = tasks_in(w, QT_FREE);
    free_n = free_n > w->reserved ? free_n - w->reserved : 0;
    if (free_n == 0)
        return;
    if (!w->scanning && (w->scan_now || pool_now() >= w->next_scan)) {
        scan(q, free_n);
        return; /* its answer fetches again */
    }
    if (!w->scanning && pool_now() >= w->read_after)
        read_new(q, free_n);
}

/* ------------------------------------------------------------ leases */

/* Renews the entries still this worker's (XCLAIM JUSTID, same consumer:
 * idle time back to 0, delivery count untouched) and returns those that
 * are not any more: checked and renewed in one script, so no other worker
 * can claim one in between. */
static const char renew_script[] =
    "local lost = {}\n"
    "for i = 2, #ARGV do\n"
    "  local p = redis.call('XPENDING', KEYS[1], 'workers', ARGV[i], ARGV[i], 1)\n"
    "  if #p == 1 and p[1][2] == ARGV[1] then\n"
    "    redis.call('XCLAIM', KEYS[1], 'workers', ARGV[1], 0, ARGV[i], 'JUSTID')\n"
    "  else\n"
    "    lost[#lost + 1] = ARGV[i]\n"
    "  end\n"
    "end\n"
    "return lost\n";

static void stop_lost(pool_queue *q, q_task *qt)
{
    sf_pool *p = q->p;

    sf_logev(&p->log, SF_LOG_WARN, "queue_lease_lost", 0, NULL,
             SF_FIELDS(SF_F_UINT("task", qt->t.seq), SF_F_STR("id", qt->id)),
             "task %lu: its lease was lost to another worker; stopping it here", qt->t.seq);
    qt->lost = 1;
    for (unsigned i = 0; i < p->jobs; i++) {
        pool_slot *s = &p->slots[i];
        if (s->task && s->task->data == qt && s->state == SLOT_RUNNING)
            (void)pool_stop_attempt(p, s, STOP_CANCEL, pool_now());
    }
}

static void renewed(rconn *c, redisReply *r, void *priv)
{
    pool_queue *q = priv;
    q_work *w = q->w;
    (void)c;

    w->renewing = 0;
    if (!r || r->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *id = r->element[i];
        if (id->type != REDIS_REPLY_STRING)
            continue;
        for (unsigned k = 0; k < w->n; k++) {
            q_task *qt = &w->tasks[k];
            if ((qt->state == QT_POOL || qt->state == QT_INBOX) && !qt->lost &&
                strcmp(qt->id, id->str) == 0)
                stop_lost(q, qt);
        }
    }
}

static void renew(pool_queue *q)
{
    q_work *w = q->w;
    q_args a;
    unsigned k = 0;

    while (k < w->n) {
        int ids = 0;
        q_args_init(&a);
        q_add(&a, "EVAL");
        q_add(&a, renew_script);
        q_add(&a, "1");
        q_add(&a, q->k_tasks);
        q_add(&a, q->me);
        for (; k < w->n && ids < Q_RENEW_IDS; k++) {
            const q_task *qt = &w->tasks[k];
            if ((qt->state == QT_INBOX || qt->state == QT_POOL || qt->state == QT_WRITING) &&
                !qt->lost && !qt->give_back) {
                q_add(&a, qt->id);
                ids++;
            }
        }
        if (ids && q_send(q, q->cmd, renewed, q, 0, &a) == 0)
            w->renewing = 1;
    }
}

/* ------------------------------------------------------------ control, meta */

static void finish(pool_queue *q)
{
    if (!q->w->finishing) {
        q->w->finishing = 1;
        wake_feed(q->w);
    }
}

static void on_control(const char *id, const qc_bytes *f, const qc_bytes *v, size_t n, void *arg)
{
    pool_queue *q = arg;
    q_work *w = q->w;
    const char *why;
    int op;

    snprintf(w->control_last, sizeof w->control_last, "%s", id);
    if (qc_control_decode(f, v, n, &op, &why) < 0)
        return; /* written by someone else: not ours to act on */
    if (op == QC_RETURNED) {
        w->scan_now = 1;
    } else if (op == QC_HALT_SOON) {
        finish(q);
    } else if (!w->halted_by_control) {
        w->halted_by_control = 1;
        finish(q);
        pool_begin_halt(q->p, SF_HALT_NOW, 0, pool_now());
    }
}

static void state_is(pool_queue *q, const char *state)
{
    if (strcmp(state, "running") != 0)
        finish(q); /* done, or halting: the control entries say how */
}

static void control_read(rconn *c, redisReply *r, void *priv)
{
    pool_queue *q = priv;
    (void)c;
    q->w->controlling = 0;
    if (r)
        (void)q_entries(r, 1, on_control, q);
    fetch(q);
}

static void state_read(rconn *c, redisReply *r, void *priv)
{
    pool_queue *q = priv;
    (void)c;
    if (r && r->type == REDIS_REPLY_STRING && r->len < 16)
        state_is(q, r->str);
    else if (r && r->type == REDIS_REPLY_NIL)
        finish(q); /* the run's keys are gone */
}

static void read_control(pool_queue *q)
{
    q_work *w = q->w;
    q_args a;

    if (w->controlling)
        return;
    q_args_init(&a);
    q_add(&a, "XREAD");
    q_add(&a, "COUNT");
    q_addnum(&a, 16);
    q_add(&a, "STREAMS");
    q_add(&a, q->k_control);
    q_add(&a, w->control_last);
    if (q_send(q, q->cmd, control_read, q, 0, &a) < 0)
        return;
    w->controlling = 1;
    q_args_init(&a);
    q_add(&a, "HGET");
    q_add(&a, q->k_meta);
    q_add(&a, "state");
    (void)q_send(q, q->cmd, state_read, q, 0, &a);
}

static void meta_read(rconn *c, redisReply *r, void *priv)
{
    pool_queue *q = priv;
    q_work *w = q->w;
    sf_pool *p = q->p;
    (void)c;

    w->meta_asking = 0;
    if (!r)
        return;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 0) {
        if (!w->meta_waiting_said)
            sf_logev(&p->log, SF_LOG_NOTICE, "queue_waiting", 0, NULL,
                     SF_FIELDS(SF_F_STR("url", q->url.text)),
                     "queue %s: no run there yet; waiting for one", q->url.text);
        w->meta_waiting_said = 1;
        return; /* asked again at the next tick */
    }
    if (q_meta_parse(r, &w->meta) < 0) {
        q_fail(q, -EPROTO, "its meta hash is not a sockfork queue's");
        return;
    }
    /* A halted run is waited for like a missing one: a submitter restarted
     * on it sets `running` and clears control in one transaction, and a
     * worker that joined before that transaction would otherwise take the
     * old halt for its own and end while the resumed run waits for workers.
     * Only `done` is final. A worker already serving the run still ends on a
     * halt (state_is, from the tick). */
    if (strcmp(w->meta.state, "running") != 0 && strcmp(w->meta.state, "done") != 0) {
        if (!w->meta_halted_said)
            sf_logev(&p->log, SF_LOG_NOTICE, "queue_waiting", 0, NULL,
                     SF_FIELDS(SF_F_STR("url", q->url.text), SF_F_STR("state", w->meta.state)),
                     "queue %s: its run is halted (%s); waiting for it to be resumed",
                     q->url.text, w->meta.state);
        w->meta_halted_said = 1;
        return; /* asked again at the next tick */
    }
    /* The run's parameters: every task of it carries the same. */
    p->o.timeout_s = w->meta.timeout_ms / 1000.0;
    p->o.kill_grace_s = w->meta.grace_ms / 1000.0;
    p->stop.grace = p->o.kill_grace_s;
    p->o.output_max = w->meta.out_max;
    w->meta_ok = 1;
    state_is(q, w->meta.state);
    fetch(q);
}

static void tick_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    pool_queue *q = t->data;
    q_work *w = q->w;
    double now = pool_now();
    q_args a;
    (void)loop;
    (void)revents;

    if (!rconn_is_up(q->cmd) || q->failed)
        return;
    if (!w->meta_ok) {
        if (!w->meta_asking) {
            q_args_init(&a);
            q_add(&a, "HGETALL");
            q_add(&a, q->k_meta);
            if (q_send(q, q->cmd, meta_read, q, 0, &a) == 0)
                w->meta_asking = 1;
        }
        return;
    }
    read_control(q);
    if (now >= w->next_renew && !w->renewing) {
        renew(q);
        w->next_renew = now + w->meta.lease_ms / 3000.0;
    }
    /* Written again what a lost connection left unwritten. */
    for (unsigned i = 0; i < w->n; i++)
        if (w->tasks[i].state == QT_WRITING && !w->tasks[i].inflight)
            write_outcome(q, &w->tasks[i]);
    fetch(q);
}

/* ------------------------------------------------------------ open, close, end */

/* Either connection is up. What was in flight on one that went down has
 * had its callback (NULL) already, which cleared its flag: nothing to reset. */
void q_work_up(pool_queue *q)
{
    tick_cb(q->p->mloop, &q->w->tick, 0);
}

int q_work_open(pool_queue *q)
{
    sf_pool *p = q->p;
    q_work *w;

    if (!(w = q->w = calloc(1, sizeof *w)))
        return -ENOMEM;
    w->efd = -1;
    w->n = p->jobs;
    if (!(w->tasks = calloc(w->n, sizeof *w->tasks)))
        return -ENOMEM;
    if ((w->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
        return -errno;
    snprintf(w->control_last, sizeof w->control_last, "0-0");
    w->user_done = p->o.on_done;
    p->o.on_done = on_done;
    p->o.feed = feed;
    p->o.feed_fd = w->efd;
    p->o.on_output = on_output;
    p->o.capture_output = 1;
    p->o.retries = 0; /* the queue's entries count them, across workers */
    p->feed_ended = 0;
    ev_timer_init(&w->tick, tick_cb, Q_CONTROL_S, Q_CONTROL_S);
    w->tick.data = q;
    ev_timer_start(p->mloop, &w->tick);
    return 0;
}

void q_work_close(pool_queue *q)
{
    q_work *w = q->w;

    if (!w)
        return;
    if (q->p->mloop)
        ev_timer_stop(q->p->mloop, &w->tick);
    for (unsigned i = 0; w->tasks && i < w->n; i++)
        task_clear(&w->tasks[i]);
    free(w->tasks);
    if (w->efd >= 0)
        close(w->efd);
    free(w);
    q->w = NULL;
}

void q_work_failed(pool_queue *q)
{
    finish(q);
}

int pool_queue_work_end(sf_pool *p)
{
    pool_queue *q = p->queue;
    q_work *w = q ? q->w : NULL;
    double until = pool_now() + Q_END_WAIT_S;

    if (!w)
        return 0;
    /* Entries taken but never given to the pool (a halt came first). */
    for (unsigned i = 0; i < w->n; i++)
        if (w->tasks[i].state == QT_INBOX) {
            w->tasks[i].state = QT_WRITING;
            w->tasks[i].give_back = 1;
            write_outcome(q, &w->tasks[i]);
        }
    /* A read still on its way may bring entries: they go back too. */
    while (!q->failed && (tasks_in(w, QT_WRITING) || w->reading || w->scanning) &&
           pool_now() < until) {
        ev_now_update(p->mloop);
        ev_run(p->mloop, EVRUN_ONCE);
    }
    return q->failed;
}
