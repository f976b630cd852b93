/* bus_redis_read.c - the snapshot at start, starting topics,
 * and reading; the files of the Redis bridge are listed in
 * bus_redis_int.h, the why is in docs/design.md, "The bus across
 * instances (Redis)". */
#include "supervisor/bus_redis_int.h"
#include "redis/rreply.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ reading */

/* One entry read from a stream (key): dropped if ours or seen, else acted
 * on. */
static void entry_in(bus_redis *r, const char *key, size_t key_len, const char *id,
                     const unsigned char *p, size_t n)
{
    uint64_t missed = 0;
    rc_entry e;
    int rc;

    if (rc_decode(p, n, r->bus->cfg.chan_max, &e) < 0) {
        r->st.bad++;
        return;
    }
    r->st.lag_ms = now_ms() - strtod(id, NULL);
    if (e.origin == r->id) {
        if (e.kind == RC_PROBE && e.seq == r->probe_seq)
            r->probe_seq = 0; /* the reading works */
        if (e.kind == RC_PUBLISH && r->echo_seq && e.seq >= r->echo_seq &&
            key_len == r->echo_len && memcmp(key, r->echo_key, key_len) == 0)
            r->echo_seq = 0; /* the burst is in */
        return;
    }
    rc = bus_dedup_check(&r->seen, e.origin, key, key_len, e.seq, e.flags & RC_F_FIRST, &missed);
    if (rc != DEDUP_NEW) {
        if (rc == DEDUP_DUP)
            r->st.duplicates++;
        return;
    }
    r->st.entries_in++;
    if (e.kind != RC_GONE) {
        peer *from = rb_peer_get(r, e.origin); /* known from its first entry on */
        if (from && key_len == sizeof KEY_X - 1 && memcmp(key, KEY_X, key_len) == 0 &&
            (missed || from->refreshing)) {
            if (missed && from->refresh_sent)
                from->refresh_again = 1; /* the HGETALL in flight may predate the gap */
            rb_refresh_keep(r, from, e.kind, p, n);
        }
    }
    if (missed) {
        r->st.missed += missed;
        if (key_len > 5 && memcmp(key, "sf:t:", 5) == 0) {
            sf_logev(r->log, SF_LOG_WARN, "bus_redis_missed", 0, NULL,
                     SF_FIELDS(SF_F_UINT("missed", missed)),
                     "bus bridge: %" PRIu64 " messages of %.*s never read here (trimmed, or lost "
                     "on the way): its members are told", missed, (int)(key_len - 5), key + 5);
            (void)bus_inject_gap(r->bus, key + 5, key_len - 5, missed);
        }
    }
    switch (e.kind) {
    case RC_PUBLISH:
        (void)bus_inject_publish(r->bus, e.name, e.name_len, (pid_t)e.pid, e.data, e.len);
        return;
    case RC_BROADCAST:
        (void)bus_inject_broadcast(r->bus, (pid_t)e.pid, e.data, e.len);
        return;
    case RC_SEND_NAME:
        if (e.target != r->id)
            return;
        if (bus_inject_send_name(r->bus, e.name, e.name_len, (pid_t)e.pid, e.data, e.len) == -ESRCH) {
            rc_entry no = {.kind = RC_NO_NAME, .target = e.origin, .pid = e.pid,
                           .name = e.name, .name_len = e.name_len};
            no.origin = r->id;
            rb_next_xseq(r, &no);
            (void)rb_xadd(r, KEY_X, sizeof KEY_X - 1, &no, 0);
        }
        return;
    case RC_NO_NAME:
        if (e.target == r->id) {
            char why[BUS_NAME_MAX + 64];
            snprintf(why, sizeof why, "send: nobody holds the name %.*s", (int)e.name_len, e.name);
            (void)bus_inject_error(r->bus, (pid_t)e.pid, ESRCH, e.name, e.name_len, why);
        }
        return;
    case RC_JOIN: {
        rtop *t;
        rb_replica_feed(r, &e);
        /* A room with members elsewhere is read here too: its history is
         * then here for a local joiner. */
        if ((t = rb_top_get(r, e.name, e.name_len)) && !t->reading && !t->starting)
            rb_start_topic(r, t);
        return;
    }
    case RC_GONE: {
        peer *p = rb_peer_find(r, e.target);
        if (e.target == r->id) {
            r->resync = 1; /* another took us for dead: tell everything again */
            return;
        }
        if (p)
            rb_peer_gone(r, p, e.target == e.origin ? "it shut down" : "its heartbeat stopped");
        return;
    }
    case RC_PROBE:
        return;
    default:
        rb_replica_feed(r, &e);
        return;
    }
}

/* Walks [[key, [[id, [field, value, ...]], ...]], ...] with every type and
 * bound checked; a shape that does not match is counted, not trusted. */
static void xread_reply_in(bus_redis *r, const redisReply *reply)
{
    if (reply->type != REDIS_REPLY_ARRAY) {
        if (reply->type != REDIS_REPLY_NIL)
            r->st.bad++;
        return;
    }
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *s = reply->element[i];
        const redisReply *key, *entries;
        rtop *t = NULL;
        char *cursor;

        if (s->type != REDIS_REPLY_ARRAY || s->elements != 2 ||
            (key = s->element[0])->type != REDIS_REPLY_STRING ||
            (entries = s->element[1])->type != REDIS_REPLY_ARRAY) {
            r->st.bad++;
            continue;
        }
        if (key->len == sizeof KEY_X - 1 && memcmp(key->str, KEY_X, key->len) == 0)
            cursor = r->xcursor;
        else if ((t = rb_top_find(r, key->str, key->len)))
            cursor = t->cursor;
        else
            continue;
        for (size_t j = 0; j < entries->elements; j++) {
            const redisReply *en = entries->element[j], *id, *fv;
            if (en->type != REDIS_REPLY_ARRAY || en->elements != 2 ||
                (id = en->element[0])->type != REDIS_REPLY_STRING || id->len >= ID_MAX ||
                (fv = en->element[1])->type != REDIS_REPLY_ARRAY) {
                r->st.bad++;
                continue;
            }
            memcpy(cursor, id->str, id->len);
            cursor[id->len] = '\0';
            for (size_t k = 0; k + 1 < fv->elements; k += 2) {
                const redisReply *f = fv->element[k], *v = fv->element[k + 1];
                if (f->type == REDIS_REPLY_STRING && f->len == 1 && f->str[0] == 'e' &&
                    v->type == REDIS_REPLY_STRING)
                    entry_in(r, key->str, key->len, id->str, (const unsigned char *)v->str, v->len);
            }
            if (r->closing)
                return;
        }
    }
}

static void xread_reply(rconn *c, struct redisReply *reply, void *priv)
{
    bus_redis *r = priv;

    (void)c;
    r->reading = 0;
    if (!reply)
        return; /* down: read again from the cursors when it is up */
    xread_reply_in(r, reply);
    rb_read_more(r);
}

/* XREAD COUNT n BLOCK ms STREAMS sf:x t... cursor... */
void rb_read_more(bus_redis *r)
{
    unsigned n = 0, argc;
    const char **argv;
    size_t *argvlen;

    if (r->reading || r->snapshot != 2 || !rconn_is_up(r->rd) || r->closing)
        return;
    for (unsigned i = 0; i < r->ntops; i++)
        n += r->tops[i].reading;
    argc = 6 + 2 * (n + 1);
    argv = calloc(argc, sizeof *argv);
    argvlen = calloc(argc, sizeof *argvlen);
    if (argv && argvlen) {
        static const char count[] = "256", block[] = "1000";
        unsigned a = 0, k;
        _Static_assert(BUS_REDIS_BATCH == 256 && BUS_REDIS_BLOCK_MS == 1000, "the texts above");
        argv[a++] = "XREAD"; argv[a++] = "COUNT"; argv[a++] = count;
        argv[a++] = "BLOCK"; argv[a++] = block; argv[a++] = "STREAMS";
        argv[a++] = KEY_X;
        for (unsigned i = 0; i < r->ntops; i++)
            if (r->tops[i].reading)
                argv[a++] = r->tops[i].key;
        k = a;
        argv[a++] = r->xcursor;
        for (unsigned i = 0; i < r->ntops; i++)
            if (r->tops[i].reading)
                argv[a++] = r->tops[i].cursor;
        for (unsigned i = 0; i < a; i++)
            argvlen[i] = strlen(argv[i]);
        (void)k;
        if (rconn_command(r->rd, xread_reply, r, BUS_REDIS_BLOCK_MS, (int)a, argv, argvlen) == 0)
            r->reading = 1;
    }
    free(argv);
    free(argvlen);
}

/* A topic to read: its newest entries go into the local history (older
 * than any kept here), and reading starts after the newest. */
typedef struct start_arg {
    bus_redis *r;
    char key[KEY_MAX];
} start_arg;

/* One entry of a topic's stream read on start: kept in history (older than
 * anything kept here), or, live, delivered as if read by XREAD. */
static void start_entry_in(bus_redis *r, rtop *t, const redisReply *fv, int live)
{
    for (size_t k = 0; k + 1 < fv->elements; k += 2) {
        const redisReply *f = fv->element[k], *v = fv->element[k + 1];
        uint64_t missed;
        rc_entry e;

        if (f->type != REDIS_REPLY_STRING || f->len != 1 || f->str[0] != 'e' ||
            v->type != REDIS_REPLY_STRING)
            continue;
        if (rc_decode((const unsigned char *)v->str, v->len, r->bus->cfg.chan_max, &e) < 0 ||
            e.kind != RC_PUBLISH) {
            r->st.bad++;
            continue;
        }
        if (e.origin == r->id)
            continue; /* kept here already */
        /* Its origin's count on this stream starts here (first: no gap
         * before). The older part comes newest first: the first of each
         * origin sets its count, the rest are older and go to history all
         * the same. The live part comes oldest first, and counts. */
        int rc = bus_dedup_check(&r->seen, e.origin, t->key, t->key_len, e.seq, 1, &missed);
        if (live && rc != DEDUP_NEW)
            continue;
        r->st.entries_in++;
        if (live)
            (void)bus_inject_publish(r->bus, e.name, e.name_len, (pid_t)e.pid, e.data, e.len);
        else if (r->o.history)
            bus_inject_history(r->bus, e.name, e.name_len, (pid_t)e.pid, e.data, e.len);
    }
}

static int entry_ok(const redisReply *en)
{
    return en->type == REDIS_REPLY_ARRAY && en->elements == 2 &&
           en->element[0]->type == REDIS_REPLY_STRING && en->element[0]->len < ID_MAX &&
           en->element[1]->type == REDIS_REPLY_ARRAY;
}

/* The XREAD in flight reads the old set of streams, or old cursors: cut it
 * short, so the new ones are read at once rather than after the block (up
 * to 1 s). */
static void unblock_read(bus_redis *r)
{
    char id[24];

    if (!r->reading || r->rd_id <= 0)
        return;
    snprintf(id, sizeof id, "%lld", r->rd_id);
    const char *argv[] = {"CLIENT", "UNBLOCK", id};
    size_t argvlen[] = {6, 7, strlen(id)};
    (void)rconn_command(r->cmd, NULL, NULL, 0, 3, argv, argvlen);
}

/* The newest entries of a topic, newest first. Those written since the
 * topic was started here (by their id's time: this host's clock against
 * Redis's, the same machine or kept in step by NTP) may be news to a
 * member who joined meanwhile: delivered, oldest first; the older go into
 * history, newest first (bus_inject_history puts each before the rest). */
static void start_reply(rconn *c, struct redisReply *reply, void *priv)
{
    start_arg *a = priv;
    bus_redis *r = a->r;
    rtop *t = rb_top_find(r, a->key, strlen(a->key));
    size_t live = 0;

    (void)c;
    free(a);
    if (!t)
        return;
    t->starting = 0;
    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        if (reply)
            r->st.bad++;
        return; /* tried again on the next tick */
    }
    strcpy(t->cursor, "0-0");
    if (reply->elements && entry_ok(reply->element[0])) {
        const redisReply *id = reply->element[0]->element[0];
        memcpy(t->cursor, id->str, id->len);
        t->cursor[id->len] = '\0';
    }
    while (live < reply->elements && entry_ok(reply->element[live]) &&
           strtod(reply->element[live]->element[0]->str, NULL) >= t->start_ms)
        live++;
    for (size_t j = live; j < reply->elements; j++) {
        if (entry_ok(reply->element[j]))
            start_entry_in(r, t, reply->element[j]->element[1], 0);
        else
            r->st.bad++;
    }
    for (size_t j = live; j-- > 0;)
        start_entry_in(r, t, reply->element[j]->element[1], 1);
    t->reading = 1;
    rb_say_up(r);
    /* The XREAD in flight does not read it: cut it short. */
    unblock_read(r);
}

void rb_start_topic(bus_redis *r, rtop *t)
{
    start_arg *a;
    char count[16];

    if (r->snapshot != 2 || t->reading || t->starting || !rconn_is_up(r->cmd))
        return;
    if (!(a = malloc(sizeof *a)))
        return;
    a->r = r;
    memcpy(a->key, t->key, t->key_len + 1);
    snprintf(count, sizeof count, "%u", r->o.history ? r->o.history : 1);
    const char *argv[] = {"XREVRANGE", t->key, "+", "-", "COUNT", count};
    size_t argvlen[] = {9, t->key_len, 1, 1, 5, strlen(count)};
    if (rconn_command(r->cmd, start_reply, a, 0, 6, argv, argvlen) < 0) {
        free(a);
        return;
    }
    t->starting = 1;
    t->start_ms = now_ms() - 1; /* ids are whole ms */
}

/* Topics with members here or elsewhere: read them. */
static void topic_seen(const char *topic, size_t len, unsigned subscribers, void *arg)
{
    bus_redis *r = arg;
    rtop *t;

    (void)subscribers;
    if ((t = rb_top_get(r, topic, len)) && !t->reading && !t->starting)
        rb_start_topic(r, t);
}

static void local_topic_seen(void *arg, const char *name, size_t len, unsigned subscribers)
{
    topic_seen(name, len, subscribers, arg);
}

void rb_start_topics(bus_redis *r)
{
    bus_each_topic(r->bus, local_topic_seen, r);
    for (unsigned i = 0; i < BUS_REDIS_PEERS_MAX; i++)
        if (r->peers[i].used)
            bus_bridge_peer_ops()->each_topic(&r->peers[i].replica, "", 0, topic_seen, r);
}

/* Said once the others' state is read and every topic known then is read
 * (its history here): from then on a local joiner sees what one bus would. */
void rb_say_up(bus_redis *r)
{
    if (r->up_said || r->snapshot != 2)
        return;
    for (unsigned i = 0; i < r->ntops; i++)
        if (r->tops[i].starting)
            return;
    r->up_said = 1;
    sf_logn(r->log, SF_LOG_INFO, "bus_redis_up",
            "bus bridge: on Redis at %s as instance %s, %u other instances", r->where.text,
            r->idhex, r->st.peers);
}


/* ------------------------------------------------------------ snapshot */

/* The others' state hashes: sf:i's members, each one's HGETALL into its
 * replica (an instance with no heartbeat is gone: skipped, cleaned). */
typedef struct snap_arg {
    bus_redis *r;
    uint64_t id;
} snap_arg;

static void snapshot_done(bus_redis *r)
{
    if (r->snap_pending || r->snapshot != 1)
        return;
    r->snapshot = 2;
    rb_start_topics(r);
    rb_read_more(r);
    rb_say_up(r);
}

static void hgetall_reply(rconn *c, struct redisReply *reply, void *priv)
{
    snap_arg *a = priv;
    bus_redis *r = a->r;
    uint64_t id = a->id;

    (void)c;
    free(a);
    r->snap_pending--;
    if (!reply) {
        r->snapshot = 0; /* again when the connection is back */
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY)
        return;
    (void)rb_peer_get(r, id);
    for (size_t k = 0; k + 1 < reply->elements; k += 2) {
        const redisReply *v = reply->element[k + 1];
        rc_entry e;
        if (v->type != REDIS_REPLY_STRING ||
            rc_decode((const unsigned char *)v->str, v->len, r->bus->cfg.chan_max, &e) < 0 ||
            e.origin != id) {
            r->st.bad++;
            continue;
        }
        rb_replica_feed(r, &e);
    }
    snapshot_done(r);
}

static void smembers_reply(rconn *c, struct redisReply *reply, void *priv)
{
    bus_redis *r = priv;

    (void)c;
    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        r->snapshot = 0;
        return;
    }
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *m = reply->element[i];
        char key[24], hex[17];
        snap_arg *a;
        uint64_t id;

        if (m->type != REDIS_REPLY_STRING || m->len != 16)
            continue;
        memcpy(hex, m->str, 16);
        hex[16] = '\0';
        id = strtoull(hex, NULL, 16);
        if (id == r->id || id == 0 || !(a = malloc(sizeof *a)))
            continue;
        a->r = r;
        a->id = id;
        snprintf(key, sizeof key, "sf:s:%s", hex);
        const char *argv[] = {"HGETALL", key};
        size_t argvlen[] = {7, strlen(key)};
        if (rconn_command(r->cmd, hgetall_reply, a, 0, 2, argv, argvlen) < 0) {
            free(a);
            r->snapshot = 0;
            return;
        }
        r->snap_pending++;
    }
    snapshot_done(r);
}

static void xlast_reply(rconn *c, struct redisReply *reply, void *priv)
{
    bus_redis *r = priv;

    (void)c;
    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        r->snapshot = 0;
        return;
    }
    strcpy(r->xcursor, "0-0");
    if (reply->elements == 1 && reply->element[0]->type == REDIS_REPLY_ARRAY &&
        reply->element[0]->elements == 2 && reply->element[0]->element[0]->type == REDIS_REPLY_STRING &&
        reply->element[0]->element[0]->len < ID_MAX) {
        memcpy(r->xcursor, reply->element[0]->element[0]->str, reply->element[0]->element[0]->len);
        r->xcursor[reply->element[0]->element[0]->len] = '\0';
    }
    const char *argv[] = {"SMEMBERS", KEY_INSTANCES};
    size_t argvlen[] = {8, sizeof KEY_INSTANCES - 1};
    if (rconn_command(r->cmd, smembers_reply, r, 0, 2, argv, argvlen) < 0)
        r->snapshot = 0;
}

/* First the newest id of sf:x (reading starts after it), then the hashes. */
void rb_snapshot_start(bus_redis *r)
{
    const char *argv[] = {"XREVRANGE", KEY_X, "+", "-", "COUNT", "1"};
    size_t argvlen[] = {9, sizeof KEY_X - 1, 1, 1, 5, 1};

    if (r->snapshot)
        return;
    if (rconn_command(r->cmd, xlast_reply, r, 0, 6, argv, argvlen) == 0)
        r->snapshot = 1;
}

/* ------------------------------------------------------------ cursors ahead */

/* Our probe did not come back. Besides a connection that looks alive and
 * delivers nothing (cut and made again by the caller), a cursor can be
 * ahead of its stream: Redis lost the stream (a restart without its data,
 * a failover to a replica behind it, a DEL) and the ids it gives now are
 * below the ones read before, because its clock, or the new master's, is
 * behind them. XREAD from such a cursor returns nothing for ever, however
 * often the connection is made again. So each stream read is asked for
 * its newest id, and a cursor past it starts again from the stream's
 * start: what is there was written since the loss, and anything read
 * before is dropped by its seq (bus_dedup); what was lost shows as a gap
 * in its origin's seq, as a trim does. */
typedef struct cursor_arg {
    bus_redis *r;
    char key[KEY_MAX];
    char asked[ID_MAX];     /* the cursor when asked: one that moved since reads */
} cursor_arg;

static void cursor_reply(rconn *c, struct redisReply *reply, void *priv)
{
    cursor_arg *a = priv;
    bus_redis *r = a->r;
    size_t key_len = strlen(a->key);
    char *cursor = NULL;
    rid ours, newest = {0, 0};
    rtop *t;

    (void)c;
    if (!reply || reply->type != REDIS_REPLY_ARRAY)
        goto done; /* down, or refused: the next probe tells again */
    if (key_len == sizeof KEY_X - 1 && memcmp(a->key, KEY_X, key_len) == 0)
        cursor = r->xcursor;
    else if ((t = rb_top_find(r, a->key, key_len)) && t->reading)
        cursor = t->cursor;
    /* A cursor that moved since the question reads: entries newer than
     * the answer's newest may have come on the other connection first. */
    if (!cursor || strcmp(cursor, a->asked) != 0 || rid_parse(cursor, strlen(cursor), &ours) < 0)
        goto done;
    if (reply->elements) {
        const redisReply *id;
        if (!entry_ok(reply->element[0]))
            goto done;
        id = reply->element[0]->element[0];
        if (rid_parse(id->str, id->len, &newest) < 0)
            goto done;
    }
    if (rid_cmp(&ours, &newest) <= 0)
        goto done;
    r->st.cursor_resets++;
    sf_logev(r->log, SF_LOG_WARN, "bus_redis_down", 0, NULL,
             SF_FIELDS(SF_F_STR("why", "cursor ahead")),
             "bus bridge: our cursor %s on %s is past its newest entry (Redis lost it, and "
             "its clock is behind ours?): reading it again from its start", cursor, a->key);
    strcpy(cursor, "0-0");
    unblock_read(r);
done:
    free(a);
}

static void check_cursor(bus_redis *r, const char *key, size_t key_len, const char *cursor)
{
    cursor_arg *a = malloc(sizeof *a);

    if (!a)
        return;
    a->r = r;
    memcpy(a->key, key, key_len);
    a->key[key_len] = '\0';
    snprintf(a->asked, sizeof a->asked, "%s", cursor);
    const char *argv[] = {"XREVRANGE", a->key, "+", "-", "COUNT", "1"};
    size_t argvlen[] = {9, key_len, 1, 1, 5, 1};
    if (rconn_command(r->cmd, cursor_reply, a, 0, 6, argv, argvlen) < 0)
        free(a);
}

void rb_check_cursors(bus_redis *r)
{
    if (r->snapshot != 2 || !rconn_is_up(r->cmd))
        return;
    check_cursor(r, KEY_X, sizeof KEY_X - 1, r->xcursor);
    for (unsigned i = 0; i < r->ntops; i++)
        if (r->tops[i].reading)
            check_cursor(r, r->tops[i].key, r->tops[i].key_len, r->tops[i].cursor);
}
