/*
 * queue.c - what both sides of the Redis task queue share: the keys, the
 * two connections, the words of a command, walking the replies, and the
 * queue's opening and closing inside sf_pool_new and sf_pool_free.
 *
 * Two connections, because Redis answers a connection's commands in order:
 * an XREAD BLOCK of a second would hold an XACK or a lease renewal queued
 * behind it for that second. So blocking reads have a connection of their
 * own, and everything else is answered at once on the other.
 */
#include "pool/queue.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------ words */

void q_args_init(q_args *a)
{
    a->n = 0;
    a->nnum = 0;
}

void q_addn(q_args *a, const char *s, size_t n)
{
    if (a->n >= Q_ARGS_MAX)
        return; /* the commands we build fit: a bug would show as a Redis error */
    a->v[a->n] = s;
    a->len[a->n] = n;
    a->n++;
}

void q_add(q_args *a, const char *s)
{
    q_addn(a, s, strlen(s));
}

void q_addnum(q_args *a, unsigned long long v)
{
    if (a->nnum >= (int)(sizeof a->num / sizeof a->num[0]))
        return;
    snprintf(a->num[a->nnum], sizeof a->num[0], "%llu", v);
    q_add(a, a->num[a->nnum++]);
}

void q_addfields(q_args *a, const qc_fields *f)
{
    for (unsigned i = 0; i < f->n; i++) {
        q_addn(a, f->f[i], f->flen[i]);
        q_addn(a, f->v[i], f->vlen[i]);
    }
}

int q_send(pool_queue *q, rconn *c, rconn_reply_cb cb, void *priv, unsigned block_ms,
           q_args *a)
{
    (void)q;
    return rconn_command(c, cb, priv, block_ms, a->n, a->v, a->len);
}

void q_control_post(pool_queue *q, int op)
{
    qc_fields f;
    q_args a;

    if (qc_control_encode(op, &f) < 0)
        return;
    q_args_init(&a);
    q_add(&a, "XADD");
    q_add(&a, q->k_control);
    q_add(&a, "MAXLEN");
    q_add(&a, "~");
    q_add(&a, "1000");
    q_add(&a, "*");
    q_addfields(&a, &f);
    (void)q_send(q, q->cmd, NULL, NULL, 0, &a);
    qc_fields_free(&f);
}

/* ------------------------------------------------------------ replies */

static int is_str(const redisReply *r)
{
    return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
}

#define Q_PAIRS_MAX 64

typedef struct walk {
    q_entry_cb cb;
    void *arg;
} walk;

/* rreply (src/redis, fuzzed) has checked the whole tree already. */
static int one_entry(const rreply_entry *e, void *arg)
{
    walk *w = arg;
    qc_bytes f[Q_PAIRS_MAX], v[Q_PAIRS_MAX];
    char id[RID_TEXT_MAX];
    size_t n = 0;

    if (e->deleted || e->idlen >= sizeof id)
        return 0; /* deleted while pending: nothing to run */
    memcpy(id, e->idtext, e->idlen);
    id[e->idlen] = '\0';
    if (e->nfields <= Q_PAIRS_MAX)
        for (; n < e->nfields; n++) {
            const char *fp, *vp;
            size_t fl, vl;
            rreply_field(e, n, &fp, &fl, &vp, &vl);
            f[n] = (qc_bytes){fp, fl};
            v[n] = (qc_bytes){vp, vl};
        }
    /* Too many pairs: n 0, which no decoder takes. */
    w->cb(id, f, v, n, w->arg);
    return 0;
}

int q_entries(const redisReply *r, int keyed, q_entry_cb cb, void *arg)
{
    walk w = {cb, arg};

    if (!r)
        return -EPROTO;
    return keyed ? rreply_streams(r, one_entry, &w) : rreply_entries(r, one_entry, &w);
}

const redisReply *q_hash_get(const redisReply *r, const char *field)
{
    size_t n = strlen(field);

    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements % 2)
        return NULL;
    for (size_t i = 0; i < r->elements; i += 2)
        if (is_str(r->element[i]) && r->element[i]->len == n &&
            memcmp(r->element[i]->str, field, n) == 0)
            return r->element[i + 1];
    return NULL;
}

int q_reply_num(const redisReply *r, unsigned long long *out)
{
    unsigned long long v = 0;

    if (r && r->type == REDIS_REPLY_INTEGER && r->integer >= 0) {
        *out = (unsigned long long)r->integer;
        return 0;
    }
    if (!is_str(r) || r->len == 0 || r->len > 20)
        return -1;
    for (size_t i = 0; i < r->len; i++) {
        unsigned d = (unsigned char)r->str[i] - '0';
        if (d > 9 || v > (ULLONG_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

int q_meta_parse(const redisReply *r, q_meta *m)
{
    static const char *const names[] = {"tries", "timeout_ms", "grace_ms", "out_max",
                                        "lease_ms", "max_deliveries"};
    unsigned long long *vals[] = {&m->tries, &m->timeout_ms, &m->grace_ms, &m->out_max,
                                  &m->lease_ms, &m->max_deliveries};
    const redisReply *v, *ro, *st;

    memset(m, 0, sizeof *m);
    v = q_hash_get(r, "v");
    if (!is_str(v) || v->len != 1 || v->str[0] != '1')
        return -EPROTO;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (q_reply_num(q_hash_get(r, names[i]), vals[i]) < 0)
            return -EPROTO;
    if (q_reply_num(q_hash_get(r, "submitted"), &m->submitted) < 0)
        m->submitted = 0;
    ro = q_hash_get(r, "retry_on");
    st = q_hash_get(r, "state");
    if (!is_str(ro) || ro->len >= sizeof m->retry_on || !is_str(st) || st->len >= sizeof m->state ||
        m->lease_ms == 0 || m->out_max > QC_OUT_MAX || m->tries == 0 || m->max_deliveries == 0)
        return -EPROTO;
    memcpy(m->retry_on, ro->str, ro->len);
    memcpy(m->state, st->str, st->len);
    return 0;
}

/* ------------------------------------------------------------ connections */

void q_fail(pool_queue *q, int err, const char *why)
{
    if (q->failed)
        return;
    q->failed = err;
    snprintf(q->why, sizeof q->why, "%s", why ? why : strerror(-err));
    sf_logev(&q->p->log, SF_LOG_ERROR, "queue_down", 0, NULL,
             SF_FIELDS(SF_F_STR("url", q->url.text), SF_F_STR("error", q->why),
                       SF_F_BOOL("fatal", 1)),
             "queue %s: %s", q->url.text, q->why);
    if (q->role == 2)
        q_work_failed(q); /* takes nothing more; sf_pool_run returns err */
}

static void cmd_up(rconn *c, void *arg)
{
    pool_queue *q = arg;
    (void)c;

    if (q->down)
        sf_logev(&q->p->log, SF_LOG_NOTICE, "queue_down", 0, NULL,
                 SF_FIELDS(SF_F_STR("url", q->url.text), SF_F_BOOL("up", 1)),
                 "queue %s: connected again", q->url.text);
    q->ever_up = 1;
    q->down = 0;
    if (q->role == 2)
        q_work_up(q);
    else
        q_sub_up(q);
}

static void cmd_down(rconn *c, const char *why, void *arg)
{
    pool_queue *q = arg;
    (void)c;

    if (!q->ever_up) {
        char text[sizeof q->why];
        snprintf(text, sizeof text, "cannot reach it: %s", why ? why : "?");
        q_fail(q, -ECONNREFUSED, text);
        return;
    }
    if (!q->down)
        sf_logev(&q->p->log, SF_LOG_WARN, "queue_down", 0, NULL,
                 SF_FIELDS(SF_F_STR("url", q->url.text), SF_F_STR("error", why)),
                 "queue %s: connection lost (%s); trying again", q->url.text, why);
    q->down = 1;
}

/* The blocking connection's state follows the other's: nothing to do but
 * let the role's next read find it up again. */
static void wait_up(rconn *c, void *arg)
{
    pool_queue *q = arg;
    (void)c;
    if (q->ever_up && !q->down) {
        if (q->role == 2)
            q_work_up(q);
        else
            q_sub_up(q);
    }
}

static void wait_down(rconn *c, const char *why, void *arg)
{
    (void)c;
    (void)why;
    (void)arg;
}

static int make_keys(pool_queue *q)
{
    const char *n = q->url.name;
    int over = 0;

    over |= snprintf(q->k_tasks, Q_KEY_MAX, "sfq:%s:tasks", n) >= Q_KEY_MAX;
    over |= snprintf(q->k_results, Q_KEY_MAX, "sfq:%s:results", n) >= Q_KEY_MAX;
    over |= snprintf(q->k_dead, Q_KEY_MAX, "sfq:%s:dead", n) >= Q_KEY_MAX;
    over |= snprintf(q->k_control, Q_KEY_MAX, "sfq:%s:control", n) >= Q_KEY_MAX;
    over |= snprintf(q->k_meta, Q_KEY_MAX, "sfq:%s:meta", n) >= Q_KEY_MAX;
    return over ? -EINVAL : 0;
}

static void name_host(pool_queue *q, const char *given)
{
    char h[256] = "";

    if (given && *given)
        snprintf(h, sizeof h, "%s", given);
    else if (gethostname(h, sizeof h - 1) < 0 || !h[0])
        snprintf(h, sizeof h, "localhost");
    /* Names travel in entries: printable, no space (queue_codec.c). */
    for (char *s = h; *s; s++)
        if ((unsigned char)*s <= ' ' || (unsigned char)*s >= 0x7f)
            *s = '_';
    h[QC_HOST_MAX - 12] = '\0'; /* room for ":PID" */
    snprintf(q->host, sizeof q->host, "%s", h);
    snprintf(q->me, sizeof q->me, "%.240s:%ld", h, (long)getpid());
}

int pool_queue_open(sf_pool *p)
{
    pool_queue *q;
    rconn_opts co;
    const char *why = NULL;
    int rc;

    if (!p->o.queue_url)
        return 0;
    if ((p->o.queue_role != 1 && p->o.queue_role != 2) || !(p->o.queue_lease_s >= 0))
        return -EINVAL;
    if (!(q = calloc(1, sizeof *q)))
        return -ENOMEM;
    p->queue = q;
    q->p = p;
    q->role = p->o.queue_role;
    if (rurl_parse(p->o.queue_url, 1, &q->url, &why) < 0 || make_keys(q) < 0)
        return -EINVAL;
    name_host(q, p->o.queue_host);
    if ((rc = pool_loop_open(p)) < 0)
        return rc;
    rc = q->role == 2 ? q_work_open(q) : q_sub_open(q);
    if (rc < 0)
        return rc;
    rconn_opts_default(&co);
    co.on_up = cmd_up;
    co.on_down = cmd_down;
    co.arg = q;
    co.client_name = q->role == 2 ? "sockfork-worker" : "sockfork-run";
    if ((rc = rconn_new(p->mloop, &q->url, &co, &q->cmd)) < 0)
        return rc;
    co.on_up = wait_up;
    co.on_down = wait_down;
    co.ping_ms = 0; /* it blocks a second at a time: its reads are its heartbeat */
    return rconn_new(p->mloop, &q->url, &co, &q->wait);
}

void pool_queue_close(sf_pool *p)
{
    pool_queue *q = p->queue;

    if (!q)
        return;
    /* The connections first: their pending callbacks (NULL replies) still
     * find the role's state. */
    rconn_free(q->wait);
    rconn_free(q->cmd);
    q->wait = q->cmd = NULL;
    if (q->role == 2)
        q_work_close(q);
    else
        q_sub_close(q);
    free(q);
    p->queue = NULL;
}
