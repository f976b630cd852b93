/*
 * queue.h - the pool's task queue in Redis (sf_pool_opts.queue_url;
 * docs/design.md, "Tasks over a Redis queue"):
 *
 *   queue.c         what both sides share: the keys, the two connections
 *                   (one for commands, one for blocking reads), argv
 *                   building, the reply walkers, open and close;
 *   queue_work.c    queue_role 2 (`sockfork worker`): takes entries, feeds
 *                   them to the pool, renews their leases, writes each
 *                   outcome and its XACK in one MULTI/EXEC;
 *   queue_submit.c  queue_role 1 (`sockfork run --queue`): adds the tasks
 *                   the feed gives, reads the results back and reports them
 *                   as the pool would; its own loop instead of the pool's.
 *   queue_codec.c   the entries themselves (pure; fuzzed).
 *
 * Everything runs on the pool's private libev loop (p->mloop), which
 * sf_pool_run waits in (scrape.c's pool_wait).
 */
#ifndef SF_POOL_QUEUE_H
#define SF_POOL_QUEUE_H

#include "pool/pool_internal.h"
#include "pool/queue_codec.h"
#include "redis/rconn.h"
#include "redis/rreply.h"
#include "redis/rurl.h"

#include <hiredis/hiredis.h>

#define Q_KEY_MAX 96
#define Q_ARGS_MAX (QC_FIELDS_MAX * 4 + 32) /* an outcome's script: two entries' pairs */
#define Q_GROUP "workers"
#define Q_RETURNED "returned"     /* the consumer tasks given back belong to */
#define Q_BLOCK_MS 1000           /* XREAD(GROUP) BLOCK */
#define Q_CONTROL_S 0.25          /* a worker reads control this often */
#define Q_PAGE 128                /* entries read at once */

/* One command's words: fixed, bounded, no allocation. */
typedef struct q_args {
    int n;
    const char *v[Q_ARGS_MAX];
    size_t len[Q_ARGS_MAX];
    char num[16][24];
    int nnum;
} q_args;

void q_args_init(q_args *a);
void q_add(q_args *a, const char *s);
void q_addn(q_args *a, const char *s, size_t n);
void q_addnum(q_args *a, unsigned long long v);
void q_addfields(q_args *a, const qc_fields *f);

typedef struct pool_queue pool_queue;
typedef struct q_work q_work;
typedef struct q_sub q_sub;

struct pool_queue {
    sf_pool *p;
    int role;                     /* 1 submit, 2 work */
    rurl url;
    char k_tasks[Q_KEY_MAX], k_results[Q_KEY_MAX], k_dead[Q_KEY_MAX];
    char k_control[Q_KEY_MAX], k_meta[Q_KEY_MAX];
    char host[QC_HOST_MAX + 1];   /* this machine's name */
    char me[QC_HOST_MAX + 1];     /* the consumer: HOST:PID */
    rconn *cmd;                   /* commands answered at once */
    rconn *wait;                  /* blocking reads only */
    int ever_up;                  /* cmd has been up once */
    int down;                     /* cmd is down now (logged once) */
    int failed;                   /* -errno: cannot go on (never reached, a bad queue) */
    char why[160];                /* and why, for the caller's line */
    q_work *w;
    q_sub *s;
};

/* queue.c (pool_queue_open and _close are in pool_internal.h) */
/* Sends a command on c (reply to cb, which gets NULL when the connection
 * failed). 0 or -errno (-ENOTCONN while down). */
int q_send(pool_queue *q, rconn *c, rconn_reply_cb cb, void *priv, unsigned block_ms,
           q_args *a);
/* Posts op (QC_*) on the control stream the workers watch (bounded to
 * about 1000 entries); a post that cannot be sent is the next tick's. */
void q_control_post(pool_queue *q, int op);
/* Calls cb(id, fields, values, n, arg) for every entry of an XREAD-shaped
 * reply (keyed) or an XRANGE/XCLAIM one, walked by rreply (which checks the
 * whole tree first: -EPROTO and no call for another shape). An entry
 * deleted while pending is skipped; one of more than 64 pairs comes with
 * n 0 (no decoder takes it). */
typedef void (*q_entry_cb)(const char *id, const qc_bytes *f, const qc_bytes *v, size_t n,
                           void *arg);
int q_entries(const redisReply *r, int keyed, q_entry_cb cb, void *arg);
/* The pool fails its run with err and why (logged by the caller). */
void q_fail(pool_queue *q, int err, const char *why);
/* A hash reply (HGETALL, an array of pairs) field by name, or NULL. */
const redisReply *q_hash_get(const redisReply *r, const char *field);
int q_reply_num(const redisReply *r, unsigned long long *out);
/* The queue's run parameters as the meta hash holds them. */
typedef struct q_meta {
    unsigned long long tries, timeout_ms, grace_ms, out_max, lease_ms, max_deliveries;
    unsigned long long submitted;
    char retry_on[1200];
    char state[16];
} q_meta;
int q_meta_parse(const redisReply *r, q_meta *m);

/* queue_work.c */
int q_work_open(pool_queue *q);
void q_work_close(pool_queue *q);
void q_work_up(pool_queue *q);
void q_work_failed(pool_queue *q);

/* queue_submit.c */
int q_sub_open(pool_queue *q);
void q_sub_close(pool_queue *q);
void q_sub_up(pool_queue *q);

#endif
