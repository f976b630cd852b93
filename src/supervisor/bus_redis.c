/* bus_redis.c - the bus's hooks (what it tells becomes
 * writes) and the bridge's life; the files of the Redis bridge are listed in
 * bus_redis_int.h, the why is in docs/design.md, "The bus across
 * instances (Redis)". */
#include "supervisor/bus_redis_int.h"
#include "os/os.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#define RENEW_BATCH 256 /* names per lease renewal script */

/* Names: a claim is a lease, given only if free or ours already (a resend
 * after a lost reply), and ending with our heartbeat (KEYS[2]), never after
 * it: once the others find us dead our names are free. Renewal (every tick,
 * before the heartbeat's) and release touch only ours. */
static const char LUA_CLAIM[] =
    "local px = redis.call('PTTL', KEYS[2]) "
    "if px <= 0 then px = tonumber(ARGV[2]) end "
    "local v = redis.call('GET', KEYS[1]) "
    "if v == false then redis.call('SET', KEYS[1], ARGV[1], 'PX', px) return 1 end "
    "if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], px) return 1 end "
    "return 0";
static const char LUA_RENEW[] =
    "for i, k in ipairs(KEYS) do "
    "if redis.call('GET', k) == ARGV[1] then redis.call('PEXPIRE', k, ARGV[2]) end end "
    "return 0";
static const char LUA_RELEASE[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 0";


/* ------------------------------------------------------------ hooks */

static void op_published(void *ctx, const char *topic, size_t topic_len, pid_t from,
                         const unsigned char *data, size_t len)
{
    bus_redis *r = ctx;
    rtop *t = rb_top_get(r, topic, topic_len);
    rc_entry e = {.kind = RC_PUBLISH, .origin = r->id, .pid = (uint32_t)from,
                  .name = topic, .name_len = topic_len, .data = data, .len = len};

    if (!t) {
        r->st.outbox_dropped++;
        return;
    }
    if (t->seq == 0) {
        t->seq = r->maxseq; /* above every seq used: a new count, flagged first */
        e.flags = RC_F_FIRST;
    }
    e.seq = ++t->seq;
    if (t->seq > r->maxseq)
        r->maxseq = t->seq;
    if (rb_xadd(r, t->key, t->key_len, &e, 0) == 0 && t->reading && rconn_is_up(r->rd)) {
        memcpy(r->echo_key, t->key, t->key_len);
        r->echo_len = t->key_len;
        r->echo_seq = e.seq;
        r->echo_at = os_mono_now();
    }
}

/* Our last line not read back yet: the others' lines written with it are
 * not here either (see echo_seq). Alone on Redis, nothing else comes. */
static int op_expecting(void *ctx)
{
    bus_redis *r = ctx;

    return r->echo_seq && r->st.peers > 0 && os_mono_now() - r->echo_at < ECHO_WAIT_S;
}

static void op_broadcast(void *ctx, pid_t from, const unsigned char *data, size_t len)
{
    bus_redis *r = ctx;
    rc_entry e = {.kind = RC_BROADCAST, .origin = r->id, .pid = (uint32_t)from, .data = data,
                  .len = len};

    rb_next_xseq(r, &e);
    (void)rb_xadd(r, KEY_X, sizeof KEY_X - 1, &e, 0);
}

static int op_send_name(void *ctx, const char *name, size_t name_len, pid_t from,
                        const unsigned char *data, size_t len)
{
    bus_redis *r = ctx;
    rc_entry e = {.kind = RC_SEND_NAME, .origin = r->id, .pid = (uint32_t)from, .name = name,
                  .name_len = name_len, .data = data, .len = len};

    for (unsigned i = 0; i < BUS_REDIS_PEERS_MAX; i++) {
        peer *p = &r->peers[i];
        if (!p->used || !bus_bridge_peer_ops()->name_held(&p->replica, name, name_len))
            continue;
        e.target = p->id;
        rb_next_xseq(r, &e);
        /* Not sent: its sender is told there is nobody (the seq skipped
         * is a gap the others report on sf:x, where nobody is told). */
        return rb_xadd(r, KEY_X, sizeof KEY_X - 1, &e, 0) < 0 ? -ESRCH : 0;
    }
    return -ESRCH;
}

static void op_name(void *ctx, const char *name, size_t len, pid_t pid, int held)
{
    bus_redis *r = ctx;
    char key[KEY_MAX], field[KEY_MAX + 16], lease[16];
    int kl = rb_key_of(key, "sf:n:", name, len);
    size_t fl = rb_field_of(field, sizeof field, 'n', pid, name, len);
    rc_entry e = {.kind = held ? RC_CLAIM : RC_RELEASE, .pid = (uint32_t)pid, .name = name,
                  .name_len = len};

    if (kl < 0 || !fl)
        return;
    snprintf(lease, sizeof lease, "%u", r->o.lease_ms);
    if (held) {
        const char *argv[] = {"EVAL", LUA_CLAIM, "2", key, r->hkey, r->idhex, lease};
        size_t argvlen[] = {4, sizeof LUA_CLAIM - 1, 1, (size_t)kl, strlen(r->hkey), 16,
                            strlen(lease)};
        rb_names_add(r, name, len);
        (void)rb_out_push(r, OUT_CLAIM, 1, name, len, 7, argv, argvlen);
    } else {
        const char *argv[] = {"EVAL", LUA_RELEASE, "1", key, r->idhex};
        size_t argvlen[] = {4, sizeof LUA_RELEASE - 1, 1, (size_t)kl, 16};
        rb_names_remove(r, name, len);
        (void)rb_out_push(r, OUT_PLAIN, 1, NULL, 0, 5, argv, argvlen);
    }
    rb_state_event(r, &e, field, fl, held);
}

static void op_member(void *ctx, const char *topic, size_t len, pid_t pid, int joined)
{
    bus_redis *r = ctx;
    char field[KEY_MAX + 16];
    size_t fl = rb_field_of(field, sizeof field, 'j', pid, topic, len);
    rc_entry e = {.kind = joined ? RC_JOIN : RC_LEAVE, .pid = (uint32_t)pid, .name = topic,
                  .name_len = len};
    rtop *t;

    if (!fl)
        return;
    rb_state_event(r, &e, field, fl, joined);
    if (joined && (t = rb_top_get(r, topic, len)) && !t->reading && !t->starting)
        rb_start_topic(r, t);
}

static void op_will(void *ctx, pid_t pid, const char *topic, size_t topic_len,
                    const unsigned char *data, size_t len)
{
    bus_redis *r = ctx;
    char field[32];
    size_t fl = rb_field_of(field, sizeof field, 'w', pid, NULL, 0);
    rc_entry e = {.kind = RC_WILL, .pid = (uint32_t)pid, .name = topic, .name_len = topic_len,
                  .data = data, .len = len};

    rb_state_event(r, &e, field, fl, topic_len > 0);
}

static void op_will_published(void *ctx, pid_t pid)
{
    bus_redis *r = ctx;
    char field[32];
    size_t fl = rb_field_of(field, sizeof field, 'w', pid, NULL, 0);
    rc_entry e = {.kind = RC_WILL_DONE, .pid = (uint32_t)pid};

    rb_state_event(r, &e, field, fl, 0);
}

static int op_name_held(void *ctx, const char *name, size_t len)
{
    bus_redis *r = ctx;

    for (unsigned i = 0; i < BUS_REDIS_PEERS_MAX; i++)
        if (r->peers[i].used && bus_bridge_peer_ops()->name_held(&r->peers[i].replica, name, len))
            return 1;
    return 0;
}

static int op_members(void *ctx, const char *topic, size_t len, char **text, size_t *text_len)
{
    bus_redis *r = ctx;
    char *all = NULL;
    size_t n = 0;

    *text = NULL;
    *text_len = 0;
    for (unsigned i = 0; i < BUS_REDIS_PEERS_MAX; i++) {
        char *t = NULL, *grown;
        size_t tl = 0;
        if (!r->peers[i].used)
            continue;
        if (bus_bridge_peer_ops()->members(&r->peers[i].replica, topic, len, &t, &tl) < 0) {
            free(all);
            return -ENOMEM;
        }
        if (!tl) {
            free(t);
            continue;
        }
        if (!(grown = realloc(all, n + tl))) {
            free(t);
            free(all);
            return -ENOMEM;
        }
        all = grown;
        memcpy(all + n, t, tl);
        n += tl;
        free(t);
    }
    *text = all;
    *text_len = n;
    return 0;
}

static unsigned op_topic_count(void *ctx, const char *topic, size_t len)
{
    bus_redis *r = ctx;
    unsigned n = 0;

    for (unsigned i = 0; i < BUS_REDIS_PEERS_MAX; i++)
        if (r->peers[i].used)
            n += bus_bridge_peer_ops()->topic_count(&r->peers[i].replica, topic, len);
    return n;
}

/* Topics of every replica, each once with its counts added. */
typedef struct topic_sum {
    const char *name;
    size_t len;
    unsigned n;
} topic_sum;

typedef struct sum_arg {
    topic_sum *v;
    unsigned n, cap;
    int failed;
} sum_arg;

static void sum_topic(const char *topic, size_t len, unsigned subscribers, void *arg)
{
    sum_arg *a = arg;

    for (unsigned i = 0; i < a->n; i++) {
        if (a->v[i].len == len && memcmp(a->v[i].name, topic, len) == 0) {
            a->v[i].n += subscribers;
            return;
        }
    }
    if (a->n == a->cap) {
        unsigned cap = a->cap ? a->cap * 2 : 64;
        topic_sum *v = realloc(a->v, cap * sizeof *v);
        if (!v) {
            a->failed = 1;
            return;
        }
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = (topic_sum){topic, len, subscribers};
}

static void op_each_topic(void *ctx, const char *prefix, size_t len, bus_topic_cb cb, void *arg)
{
    bus_redis *r = ctx;
    sum_arg a = {NULL, 0, 0, 0};

    /* The names point into the replicas, which do not change meanwhile. */
    for (unsigned i = 0; i < BUS_REDIS_PEERS_MAX; i++)
        if (r->peers[i].used)
            bus_bridge_peer_ops()->each_topic(&r->peers[i].replica, prefix, len, sum_topic, &a);
    for (unsigned i = 0; i < a.n; i++)
        cb(a.v[i].name, a.v[i].len, a.v[i].n, arg);
    free(a.v);
}

static const bus_bridge_ops redis_ops = {
    op_published, op_broadcast, op_send_name, op_name, op_member, op_will,
    op_will_published, op_name_held, op_members, op_topic_count, op_each_topic, op_expecting,
};


/* ------------------------------------------------------------ life */

/* This instance's presence: in sf:i, and its heartbeat. */
static void announce(bus_redis *r)
{
    char lease[16];

    snprintf(lease, sizeof lease, "%u", r->o.lease_ms);
    const char *sadd[] = {"SADD", KEY_INSTANCES, r->idhex};
    size_t saddl[] = {4, sizeof KEY_INSTANCES - 1, 16};
    const char *set[] = {"SET", r->hkey, "1", "PX", lease};
    size_t setl[] = {3, strlen(r->hkey), 1, 2, strlen(lease)};
    (void)rb_out_push(r, OUT_PLAIN, 1, NULL, 0, 3, sadd, saddl);
    (void)rb_out_push(r, OUT_PLAIN, 1, NULL, 0, 5, set, setl);
}

/* Everything this instance holds, told again (after a lost state write, or
 * after others took it for dead): the bus replays it through the hooks. */
static void resync(bus_redis *r)
{
    const char *del[] = {"DEL", r->skey};
    size_t dell[] = {3, strlen(r->skey)};

    r->resync = 0;
    for (unsigned i = 0; i < r->nnames; i++)
        free(r->names[i]);
    r->nnames = 0;
    (void)rb_out_push(r, OUT_PLAIN, 1, NULL, 0, 2, del, dell);
    announce(r);
    bus_set_bridge(r->bus, &redis_ops, r);
}

static void heartbeat_reply(rconn *c, struct redisReply *reply, void *priv)
{
    bus_redis *r = priv;

    (void)c;
    /* Our heartbeat had lapsed (SET XX found nothing): others took us for
     * dead and dropped our members; tell them everything again. */
    if (reply && reply->type == REDIS_REPLY_NIL)
        r->resync = 1;
}

static void alive_reply(rconn *c, struct redisReply *reply, void *priv)
{
    bus_redis *r;
    peer *p = rb_peer_answered(priv, &r);

    (void)c;
    if (!reply || reply->type != REDIS_REPLY_INTEGER || reply->integer != 0 || !p)
        return;
    {
        char hex[17], skey[24];
        snprintf(hex, sizeof hex, "%016" PRIx64, p->id);
        snprintf(skey, sizeof skey, "sf:s:%s", hex);
        const char *del[] = {"DEL", skey};
        size_t dell[] = {3, strlen(skey)};
        const char *srem[] = {"SREM", KEY_INSTANCES, hex};
        size_t sreml[] = {4, sizeof KEY_INSTANCES - 1, 16};
        (void)rconn_command(r->cmd, NULL, NULL, 0, 2, del, dell);
        (void)rconn_command(r->cmd, NULL, NULL, 0, 3, srem, sreml);
    }
    rb_peer_gone(r, p, "its heartbeat stopped");
}

static void renew_names(bus_redis *r, const char *lease)
{
    for (unsigned from = 0; from < r->nnames; from += RENEW_BATCH) {
        unsigned n = r->nnames - from < RENEW_BATCH ? r->nnames - from : RENEW_BATCH;
        const char *argv[3 + RENEW_BATCH + 2];
        size_t argvlen[3 + RENEW_BATCH + 2];
        char keys[RENEW_BATCH][KEY_MAX];
        char nkeys[16];
        int a = 0;

        snprintf(nkeys, sizeof nkeys, "%u", n);
        argv[a] = "EVAL", argvlen[a++] = 4;
        argv[a] = LUA_RENEW, argvlen[a++] = sizeof LUA_RENEW - 1;
        argv[a] = nkeys, argvlen[a++] = strlen(nkeys);
        for (unsigned i = 0; i < n; i++) {
            int kl = rb_key_of(keys[i], "sf:n:", r->names[from + i], strlen(r->names[from + i]));
            argv[a] = keys[i], argvlen[a++] = kl < 0 ? 0 : (size_t)kl;
        }
        argv[a] = r->idhex, argvlen[a++] = 16;
        argv[a] = lease, argvlen[a++] = strlen(lease);
        (void)rconn_command(r->cmd, NULL, NULL, 0, a, argv, argvlen);
    }
}

/* A connection that looks alive but delivers nothing (a known failure of
 * pub/sub adapters): our own probe, written to sf:x, must come back on the
 * reading connection within a command deadline and a block; if not, that
 * connection is cut and made again, and reading resumes from the cursors. */
static void probe(bus_redis *r)
{
    double limit = ((r->o.command_ms ? r->o.command_ms : RCONN_COMMAND_MS) + BUS_REDIS_BLOCK_MS) / 1000.0;

    if (r->snapshot != 2 || !rconn_is_up(r->rd)) {
        r->probe_seq = 0;
        return;
    }
    if (r->probe_seq) {
        if (!r->probe_acked || ev_now(r->loop) - r->probe_at <= limit)
            return; /* not written yet (the outbox is behind), or not late */
        r->st.stale++;
        r->probe_seq = 0;
        sf_logev(r->log, SF_LOG_WARN, "bus_redis_down", 0, NULL,
                 SF_FIELDS(SF_F_STR("why", "stale cursor")),
                 "bus bridge: reading from Redis at %s delivers nothing (our probe did not come "
                 "back in %.1f s): reading again", r->where.text, limit);
        rconn_drop(r->rd, "stale cursor");
        rb_check_cursors(r);
        return;
    }
    /* Only into an outbox with room: a probe dropped would be a gap the
     * others count on sf:x. */
    rc_entry e = {.kind = RC_PROBE, .origin = r->id};
    if (r->out_bytes + 4096 > r->o.outbox_max)
        return;
    rb_next_xseq(r, &e);
    if (rb_xadd_as(r, OUT_PROBE, KEY_X, sizeof KEY_X - 1, &e, 0) == 0) {
        r->probe_seq = e.seq;
        r->probe_acked = 0;
    }
}

/* Every third of the lease: our heartbeat and names renewed, the others'
 * heartbeats checked, a probe of the reading. Not queued in the outbox: with Redis away there is
 * nothing to renew, and the next tick after it is back does it. */
static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    bus_redis *r = w->data;
    char lease[16];

    (void)loop, (void)revents;
    if (!rconn_is_up(r->cmd))
        return;
    /* Room for the whole state, not an empty outbox: an instance that
     * writes all the time seldom has nothing in flight, and waiting for
     * that could leave it unseen by the others for good. The outbox is
     * one FIFO, so what is queued still goes before the DEL and the
     * state told again. */
    if (r->resync && r->out_bytes <= r->o.outbox_max / 2)
        resync(r);
    /* A read that could not be sent (rconn_command refused it) is not
     * retried by a reply: start it again here (nothing if one is on its way). */
    rb_read_more(r);
    snprintf(lease, sizeof lease, "%u", r->o.lease_ms);
    renew_names(r, lease); /* first: names never outlive the heartbeat */
    const char *hb[] = {"SET", r->hkey, "1", "PX", lease, "XX"};
    size_t hbl[] = {3, strlen(r->hkey), 1, 2, strlen(lease), 2};
    (void)rconn_command(r->cmd, heartbeat_reply, r, 0, 6, hb, hbl);
    for (unsigned i = 0; i < BUS_REDIS_PEERS_MAX; i++) {
        peer *p = &r->peers[i];
        if (p->used && p->refreshing)
            rb_refresh_send(r, p);
        if (p->used)
            (void)rb_peer_ask(r, p, "EXISTS", "sf:h:", alive_reply);
    }
    if (r->snapshot == 2)
        rb_start_topics(r); /* those that failed to start */
    probe(r);
}

static void cmd_up(rconn *c, void *arg)
{
    bus_redis *r = arg;

    (void)c;
    rb_flush(r);
    rb_snapshot_start(r);
}

static void cmd_down(rconn *c, const char *why, void *arg)
{
    bus_redis *r = arg;

    (void)c;
    r->st.reconnects++;
    r->probe_seq = 0; /* it may never have been written */
    r->echo_seq = 0;
    if (r->snapshot == 1)
        r->snapshot = 0;
    for (unsigned i = 0; i < r->ntops; i++)
        r->tops[i].starting = 0;
    sf_logev(r->log, SF_LOG_WARN, "bus_redis_down", 0, NULL, SF_FIELDS(SF_F_STR("why", why)),
             "bus bridge: lost Redis at %s (%s): %zu bytes wait in the outbox", r->where.text, why,
             r->out_bytes);
}

static void client_id_reply(rconn *c, struct redisReply *reply, void *priv)
{
    bus_redis *r = priv;

    (void)c;
    if (reply && reply->type == REDIS_REPLY_INTEGER)
        r->rd_id = reply->integer;
}

/* Its id first, so a new topic can cut its XREAD short (CLIENT UNBLOCK). */
static void rd_up(rconn *c, void *arg)
{
    bus_redis *r = arg;
    const char *argv[] = {"CLIENT", "ID"};
    size_t argvlen[] = {6, 2};

    r->rd_id = 0;
    (void)rconn_command(c, client_id_reply, r, 0, 2, argv, argvlen);
    rb_read_more(r);
}

static void rd_down(rconn *c, const char *why, void *arg)
{
    bus_redis *r = arg;

    (void)c, (void)why;
    r->st.reconnects++;
    r->reading = 0;
    r->echo_seq = 0;
}

static void new_id(bus_redis *r)
{
    while (!r->id) {
        if (getrandom(&r->id, sizeof r->id, 0) != sizeof r->id)
            r->id = ((uint64_t)getpid() << 32) ^ (uint64_t)now_ms();
    }
    snprintf(r->idhex, sizeof r->idhex, "%016" PRIx64, r->id);
    snprintf(r->hkey, sizeof r->hkey, "sf:h:%s", r->idhex);
    snprintf(r->skey, sizeof r->skey, "sf:s:%s", r->idhex);
}

int bus_redis_open(bus *b, struct ev_loop *loop, const rurl *where, const bus_redis_opts *opts,
                   bus_redis **out)
{
    rconn_opts co;
    bus_redis *r;
    int rc = -ENOMEM;
    char name[40];

    *out = NULL;
    if (b->bridge)
        return -EBUSY;
    if (!(r = calloc(1, sizeof *r)))
        return -ENOMEM;
    r->bus = b;
    r->loop = loop;
    r->where = *where;
    r->o = *opts;
    r->log = opts->log;
    if (!r->o.outbox_max)
        r->o.outbox_max = BUS_REDIS_OUTBOX_DEFAULT;
    if (!r->o.lease_ms)
        r->o.lease_ms = BUS_REDIS_LEASE_MS_DEFAULT;
    if (!r->o.stream_len)
        r->o.stream_len = BUS_REDIS_STREAM_LEN_DEFAULT;
    r->st.outbox_max = r->o.outbox_max;
    new_id(r);
    strcpy(r->xcursor, "0-0");
    if (!(r->tops = calloc(BUS_REDIS_TOPICS_MAX, sizeof *r->tops)) ||
        bus_dedup_init(&r->seen, 0) < 0)
        goto fail;
    rconn_opts_default(&co); /* then what was given (0: the default) */
    if (r->o.connect_ms)
        co.connect_ms = r->o.connect_ms;
    if (r->o.command_ms)
        co.command_ms = r->o.command_ms;
    if (r->o.ping_ms)
        co.ping_ms = r->o.ping_ms;
    if (r->o.backoff_min_ms)
        co.backoff_min_ms = r->o.backoff_min_ms;
    if (r->o.backoff_max_ms)
        co.backoff_max_ms = r->o.backoff_max_ms;
    co.arg = r;
    co.on_up = cmd_up;
    co.on_down = cmd_down;
    snprintf(name, sizeof name, "sockfork-bus-%s", r->idhex);
    co.client_name = name;
    if ((rc = rconn_new(loop, where, &co, &r->cmd)) < 0)
        goto fail;
    co.on_up = rd_up;
    co.on_down = rd_down;
    snprintf(name, sizeof name, "sockfork-read-%s", r->idhex);
    if ((rc = rconn_new(loop, where, &co, &r->rd)) < 0)
        goto fail;
    ev_timer_init(&r->tick, tick_cb, r->o.lease_ms / 3000.0, r->o.lease_ms / 3000.0);
    r->tick.data = r;
    ev_timer_start(loop, &r->tick);
    {
        const char *del[] = {"DEL", r->skey};
        size_t dell[] = {3, strlen(r->skey)};
        (void)rb_out_push(r, OUT_PLAIN, 1, NULL, 0, 2, del, dell);
    }
    announce(r);
    bus_set_bridge(b, &redis_ops, r); /* and what it holds now, as events */
    *out = r;
    return 0;
fail:
    if (r->rd)
        rconn_free(r->rd);
    if (r->cmd)
        rconn_free(r->cmd);
    bus_dedup_fini(&r->seen);
    free(r->tops);
    free(r);
    return rc;
}

void bus_redis_get_stats(const bus_redis *r, bus_redis_stats *out)
{
    *out = r->st;
    out->up = rconn_is_up(r->cmd) && rconn_is_up(r->rd) && r->snapshot == 2;
    out->outbox_bytes = r->out_bytes;
    memcpy(out->id, r->idhex, sizeof out->id);
}

/* At shutdown, written at once on a connection of its own (the loop is not
 * run again): GONE, so the others publish the wills of the members cut
 * here, and our names and state removed. Bounded by a short timeout. */
static void say_goodbye(bus_redis *r)
{
    struct timeval tv = {0, 500 * 1000};
    redisContext *c;
    rc_entry e = {.kind = RC_GONE, .origin = r->id, .target = r->id};
    unsigned char buf[RC_HEADER_LEN];
    char maxlen[16];
    long n;

    c = r->where.path[0] ? redisConnectUnixWithTimeout(r->where.path, tv)
                         : redisConnectWithTimeout(r->where.host, (int)r->where.port, tv);
    if (!c || c->err)
        goto done;
    (void)redisSetTimeout(c, tv);
    if (r->where.db > 0)
        freeReplyObject(redisCommand(c, "SELECT %d", r->where.db));
    /* What the outbox holds and never gave to the command connection goes
     * first, in order: a member's last line, its will cleared. Behind GONE
     * it would come too late: the others publish the wills they hold when
     * they read GONE. (What was given to it was written by rconn_flush
     * before this connection was made; a resend is dropped by its seq.) */
    double until = os_mono_now() + 1.0; /* a bound on the whole, as each has one */
    for (out_item *it = r->head; it && os_mono_now() < until; it = it->next)
        if (!it->sent)
            freeReplyObject(redisCommandArgv(c, it->argc, it->argv, it->argvlen));
    e.seq = ++r->xseq;
    n = rc_encode(&e, buf, sizeof buf);
    snprintf(maxlen, sizeof maxlen, "%u", r->o.stream_len);
    if (n > 0)
        freeReplyObject(redisCommand(c, "XADD %s MAXLEN ~ %s * e %b", KEY_X, maxlen, buf, (size_t)n));
    freeReplyObject(redisCommand(c, "DEL %s %s", r->hkey, r->skey));
    freeReplyObject(redisCommand(c, "SREM %s %s", KEY_INSTANCES, r->idhex));
    for (unsigned i = 0; i < r->nnames; i++)
        freeReplyObject(redisCommand(c, "EVAL %s 1 sf:n:%s %s", LUA_RELEASE, r->names[i], r->idhex));
done:
    if (c)
        redisFree(c);
}

void bus_redis_close(bus_redis *r)
{
    if (!r)
        return;
    r->closing = 1;
    if (r->bus->bridge == &redis_ops && r->bus->bridge_ctx == r)
        bus_set_bridge(r->bus, NULL, NULL);
    (void)rconn_flush(r->cmd, 500);
    say_goodbye(r);
    ev_timer_stop(r->loop, &r->tick);
    rconn_free(r->rd);
    rconn_free(r->cmd);
    while (r->head) {
        out_item *it = r->head;
        r->head = it->next;
        rb_item_free(it);
    }
    /* The replicas go without publishing: this instance's members are
     * gone already (bus_close_all), there is nobody to tell. */
    for (unsigned i = 0; i < BUS_REDIS_PEERS_MAX; i++) {
        if (r->peers[i].used) {
            r->peers[i].replica.bus = r->bus;
            bus_bridge_fini(&r->peers[i].replica);
            rb_refresh_forget(&r->peers[i]);
        }
    }
    for (unsigned i = 0; i < r->nnames; i++)
        free(r->names[i]);
    free(r->names);
    bus_dedup_fini(&r->seen);
    free(r->tops);
    free(r);
}

int sf_bus_url_check(const char *url, const char **why)
{
    const char *reason = "no URL";
    rurl where;
    int rc = url ? rurl_parse(url, 0, &where, &reason) : -EINVAL;

    if (why)
        *why = rc < 0 ? reason : "";
    return rc < 0 ? -EINVAL : 0;
}
