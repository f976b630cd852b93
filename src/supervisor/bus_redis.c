/* bus_redis.c - see bus_redis.h; the why is in docs/design.md, "The bus
 * across instances (Redis)". */
#include "supervisor/bus_redis.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "redis/rconn.h"
#include "supervisor/bus_bridge.h"
#include "supervisor/bus_dedup.h"
#include "supervisor/bus_rcodec.h"

#define KEY_X "sf:x"
#define KEY_INSTANCES "sf:i"
#define KEY_MAX (8 + BUS_NAME_MAX + 1) /* "sf:t:" or "sf:n:" and a name, NUL */
#define ID_MAX 32                      /* a stream id: "ms-seq" */
#define RENEW_BATCH 256                /* names per lease renewal script */

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

/* ------------------------------------------------------------ state */

/* A command waiting to be written, or written and not yet answered. */
typedef struct out_item {
    struct out_item *next;
    int argc;
    int sent;               /* written on the current connection */
    int what;               /* OUT_*: what its reply means */
    size_t bytes;           /* what it costs in the outbox */
    char *name;             /* OUT_CLAIM: the name (NUL-terminated) */
    size_t name_len;
    const char **argv;      /* into the same allocation */
    size_t *argvlen;
} out_item;

enum { OUT_PLAIN = 0, OUT_CLAIM, OUT_PROBE };

/* A topic stream this instance knows: one it writes (its seq there) and
 * perhaps reads (its cursor). */
typedef struct rtop {
    char key[KEY_MAX];      /* "sf:t:TOPIC" */
    size_t key_len;
    uint64_t seq;           /* the last seq written there; 0: none yet */
    int reading;            /* in the XREAD set */
    int starting;           /* its history and cursor are being read */
    char cursor[ID_MAX];    /* the last id read */
    double used;            /* ev_now of its last use: eviction */
    double start_ms;        /* wall clock when its reading was started */
} rtop;

/* Another instance, and its state here. */
typedef struct peer {
    uint64_t id;
    bus_bridge replica;
    int used;
} peer;

struct bus_redis {
    bus *bus;
    struct ev_loop *loop;
    rurl where;
    bus_redis_opts o;
    const sf_logger *log;
    uint64_t id;
    char idhex[17];
    char hkey[24], skey[24]; /* "sf:h:ID", "sf:s:ID" */
    rconn *cmd, *rd;
    /* the outbox */
    out_item *head, *tail;
    size_t out_bytes;
    int resync;             /* a state write was lost: write it all again */
    /* what is read */
    int snapshot;           /* 0: not read; 1: being read; 2: read, reading the streams */
    unsigned snap_pending;  /* HGETALLs in flight */
    char xcursor[ID_MAX];
    int reading;            /* an XREAD is in flight */
    long long rd_id;        /* the reading connection's CLIENT ID; 0: not known */
    rtop *tops;
    unsigned ntops;
    uint64_t xseq, maxseq;  /* seq on sf:x; the highest written anywhere */
    bus_dedup seen;
    peer peers[BUS_REDIS_PEERS_MAX];
    ev_timer tick;
    /* names held here, for renewal: a small list */
    char **names;
    unsigned nnames, cap_names;
    uint64_t probe_seq;     /* our probe on sf:x not read back yet; 0: none out */
    int probe_acked;        /* ... and Redis has it */
    double probe_at;        /* ev_now when Redis said it had it */
    bus_redis_stats st;
    int closing;
    int up_said;            /* bus_redis_up logged (once) */
};

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* ------------------------------------------------------------ outbox */

static void cmd_reply(rconn *c, struct redisReply *reply, void *priv);

/* Writes what waits, in order, while the connection takes it. */
static void flush(bus_redis *r)
{
    for (out_item *it = r->head; it; it = it->next) {
        if (it->sent)
            continue;
        if (!rconn_is_up(r->cmd))
            return;
        if (rconn_command(r->cmd, cmd_reply, r, 0, it->argc, it->argv, it->argvlen) < 0)
            return; /* -ENOBUFS or down: on the next reply or up */
        it->sent = 1;
    }
}

static void item_free(out_item *it)
{
    free(it->name);
    free(it);
}

/* An item the Redis side refused: a claim another instance has (the local
 * holder loses it). */
static void item_answered(bus_redis *r, out_item *it, const redisReply *reply)
{
    if (it->what == OUT_PROBE) {
        r->probe_at = ev_now(r->loop); /* written: now it must come back */
        r->probe_acked = 1;
    }
    if (it->what == OUT_CLAIM && reply->type == REDIS_REPLY_INTEGER && reply->integer == 0)
        (void)bus_revoke_name(r->bus, it->name, it->name_len,
                              "claimed at the same moment on another instance, which keeps it");
}

/* Replies come in order: each is the head's. NULL: the connection failed;
 * what was written goes again when it is back (receivers drop copies). */
static void cmd_reply(rconn *c, struct redisReply *reply, void *priv)
{
    bus_redis *r = priv;
    out_item *it = r->head;

    (void)c;
    if (!reply) {
        for (out_item *x = r->head; x; x = x->next)
            x->sent = 0;
        return;
    }
    if (!it || !it->sent)
        return; /* cannot happen: replies match what was written */
    r->head = it->next;
    if (!r->head)
        r->tail = NULL;
    r->out_bytes -= it->bytes;
    if (reply->type == REDIS_REPLY_ERROR) {
        /* Nothing of ours should be refused; said once per kind of error. */
        sf_logn(r->log, SF_LOG_ERROR, "bus_redis_error", "bus bridge: Redis refused a write: %.*s",
                (int)(reply->len < 200 ? reply->len : 200), reply->str);
    } else {
        item_answered(r, it, reply);
    }
    item_free(it);
    flush(r);
}

/* Queues a command (argv copied). state: it writes state (a lost one calls
 * for a rewrite). Returns 0, or -ENOBUFS (the outbox is full: counted) or
 * -ENOMEM. */
static int out_push(bus_redis *r, int what, int state, const char *name, size_t name_len, int argc,
                    const char **argv, const size_t *argvlen)
{
    size_t data = 0, head = sizeof(out_item) + (size_t)argc * (sizeof(char *) + sizeof(size_t));
    out_item *it;
    char *p;

    for (int i = 0; i < argc; i++)
        data += argvlen[i];
    if (r->out_bytes + head + data > r->o.outbox_max) {
        r->st.outbox_dropped++;
        if (state)
            r->resync = 1;
        return -ENOBUFS;
    }
    if (!(it = calloc(1, head + data)))
        return -ENOMEM;
    it->argv = (const char **)(it + 1);
    it->argvlen = (size_t *)(it->argv + argc);
    p = (char *)(it->argvlen + argc);
    for (int i = 0; i < argc; i++) {
        memcpy(p, argv[i], argvlen[i]);
        it->argv[i] = p;
        it->argvlen[i] = argvlen[i];
        p += argvlen[i];
    }
    it->argc = argc;
    it->what = what;
    it->bytes = head + data;
    if (name) {
        if (!(it->name = malloc(name_len + 1))) {
            free(it);
            return -ENOMEM;
        }
        memcpy(it->name, name, name_len);
        it->name[name_len] = '\0';
        it->name_len = name_len;
    }
    if (r->tail)
        r->tail->next = it;
    else
        r->head = it;
    r->tail = it;
    r->out_bytes += it->bytes;
    flush(r);
    return 0;
}

/* ------------------------------------------------------------ topics */

static int key_of(char *key, const char *prefix, const char *name, size_t len)
{
    size_t p = strlen(prefix);

    if (len > BUS_NAME_MAX)
        return -EINVAL;
    memcpy(key, prefix, p);
    memcpy(key + p, name, len);
    key[p + len] = '\0';
    return (int)(p + len);
}

static rtop *top_find(bus_redis *r, const char *key, size_t len)
{
    for (unsigned i = 0; i < r->ntops; i++)
        if (r->tops[i].key_len == len && memcmp(r->tops[i].key, key, len) == 0)
            return &r->tops[i];
    return NULL;
}

/* The topic's entry, made if needed; at the bound the least recently used
 * one not read goes (its seq is forgotten: the next write there starts a
 * count above every seq used, flagged first). NULL: none could be made. */
static rtop *top_get(bus_redis *r, const char *topic, size_t len)
{
    char key[KEY_MAX];
    int n = key_of(key, "sf:t:", topic, len);
    rtop *t;

    if (n < 0)
        return NULL;
    if ((t = top_find(r, key, (size_t)n))) {
        t->used = ev_now(r->loop);
        return t;
    }
    if (r->ntops == BUS_REDIS_TOPICS_MAX) {
        rtop *old = NULL;
        for (unsigned i = 0; i < r->ntops; i++)
            if (!r->tops[i].reading && !r->tops[i].starting && (!old || r->tops[i].used < old->used))
                old = &r->tops[i];
        if (!old)
            return NULL;
        *old = r->tops[--r->ntops];
    }
    t = &r->tops[r->ntops++];
    memset(t, 0, sizeof *t);
    memcpy(t->key, key, (size_t)n + 1);
    t->key_len = (size_t)n;
    t->used = ev_now(r->loop);
    return t;
}

/* ------------------------------------------------------------ writing */

/* One entry to a stream: XADD KEY MAXLEN ~ N * e BYTES. what: OUT_*. */
static int xadd_as(bus_redis *r, int what, const char *key, size_t key_len, rc_entry *e, int state)
{
    unsigned char buf[RC_HEADER_LEN + BUS_NAME_MAX + 256];
    unsigned char *p = buf;
    char maxlen[16];
    long n;
    int rc;

    if (rc_encoded_len(e) > sizeof buf && !(p = malloc(rc_encoded_len(e))))
        return -ENOMEM;
    n = rc_encode(e, p, rc_encoded_len(e));
    if (n < 0) {
        rc = (int)n;
        goto done;
    }
    snprintf(maxlen, sizeof maxlen, "%u", r->o.stream_len);
    const char *argv[] = {"XADD", key, "MAXLEN", "~", maxlen, "*", "e", (const char *)p};
    size_t argvlen[] = {4, key_len, 6, 1, strlen(maxlen), 1, 1, (size_t)n};
    rc = out_push(r, what, state, NULL, 0, 8, argv, argvlen);
    if (rc == 0)
        r->st.entries_out++;
done:
    if (p != buf)
        free(p);
    return rc;
}

static int xadd(bus_redis *r, const char *key, size_t key_len, rc_entry *e, int state)
{
    return xadd_as(r, OUT_PLAIN, key, key_len, e, state);
}

/* The next seq on sf:x, the first flagged. */
static void next_xseq(bus_redis *r, rc_entry *e)
{
    e->seq = ++r->xseq;
    e->flags = r->xseq == 1 ? RC_F_FIRST : 0;
}

/* A state event on sf:x, with its hash field set (value: the entry, or
 * "" when the event has no data worth keeping) or deleted, in order. */
static void state_event(bus_redis *r, rc_entry *e, const char *field, size_t field_len, int set)
{
    e->origin = r->id;
    next_xseq(r, e);
    (void)xadd(r, KEY_X, sizeof KEY_X - 1, e, 1);
    if (set) {
        unsigned char buf[RC_HEADER_LEN + BUS_NAME_MAX + 256];
        unsigned char *p = buf;
        rc_entry v = *e;
        long n;

        v.flags = 0; /* the value is the event itself, its seq kept (never 0) */
        if (rc_encoded_len(&v) > sizeof buf && !(p = malloc(rc_encoded_len(&v))))
            return;
        n = rc_encode(&v, p, rc_encoded_len(&v));
        if (n >= 0) {
            const char *argv[] = {"HSET", r->skey, field, (const char *)p};
            size_t argvlen[] = {4, strlen(r->skey), field_len, (size_t)n};
            (void)out_push(r, OUT_PLAIN, 1, NULL, 0, 4, argv, argvlen);
        }
        if (p != buf)
            free(p);
    } else {
        const char *argv[] = {"HDEL", r->skey, field};
        size_t argvlen[] = {4, strlen(r->skey), field_len};
        (void)out_push(r, OUT_PLAIN, 1, NULL, 0, 3, argv, argvlen);
    }
}

/* "j PID TOPIC", "n PID NAME", "w PID": a state hash's field. */
static size_t field_of(char *f, size_t cap, char kind, pid_t pid, const char *s, size_t len)
{
    int n = snprintf(f, cap, "%c %d%s", kind, (int)pid, len ? " " : "");
    if (n < 0 || (size_t)n + len >= cap)
        return 0;
    if (len)
        memcpy(f + n, s, len);
    return (size_t)n + len;
}

static void names_add(bus_redis *r, const char *name, size_t len)
{
    char *copy;

    if (r->nnames == r->cap_names) {
        unsigned cap = r->cap_names ? r->cap_names * 2 : 16;
        char **n = realloc(r->names, cap * sizeof *n);
        if (!n)
            return; /* not renewed: it lapses, as a dead instance's would */
        r->names = n;
        r->cap_names = cap;
    }
    if (!(copy = strndup(name, len)))
        return;
    r->names[r->nnames++] = copy;
}

static void names_remove(bus_redis *r, const char *name, size_t len)
{
    for (unsigned i = 0; i < r->nnames; i++) {
        if (strlen(r->names[i]) == len && memcmp(r->names[i], name, len) == 0) {
            free(r->names[i]);
            r->names[i] = r->names[--r->nnames];
            return;
        }
    }
}

/* ------------------------------------------------------------ replicas */

static peer *peer_find(bus_redis *r, uint64_t id)
{
    for (unsigned i = 0; i < BUS_REDIS_PEERS_MAX; i++)
        if (r->peers[i].used && r->peers[i].id == id)
            return &r->peers[i];
    return NULL;
}

static int replica_out(void *arg, uint16_t type, const void *head, size_t head_len,
                       const void *data, size_t data_len)
{
    /* A replica never sends: it is never started, and its rank keeps the
     * local holder on a tie (Redis's lease decides). */
    (void)arg, (void)type, (void)head, (void)head_len, (void)data, (void)data_len;
    return 0;
}

static peer *peer_get(bus_redis *r, uint64_t id)
{
    peer *p = peer_find(r, id);
    unsigned char hello[5] = {BRIDGE_VERSION, 0, 0, 0, 1};

    if (p)
        return p;
    for (unsigned i = 0; i < BUS_REDIS_PEERS_MAX && !p; i++)
        if (!r->peers[i].used)
            p = &r->peers[i];
    if (!p)
        return NULL;
    if (bus_bridge_init(&p->replica, r->bus, 0, 0, replica_out, r) < 0)
        return NULL;
    if (bus_bridge_input(&p->replica, BRIDGE_HELLO, hello, sizeof hello) < 0) {
        bus_bridge_fini(&p->replica);
        return NULL;
    }
    p->id = id;
    p->used = 1;
    r->st.peers++;
    return p;
}

/* An instance gone: the wills it had are published here, its names and
 * members vanish, and it is forgotten. */
static void peer_gone(bus_redis *r, peer *p, const char *why)
{
    char hex[17];

    snprintf(hex, sizeof hex, "%016" PRIx64, p->id);
    sf_logev(r->log, SF_LOG_INFO, "bus_redis_peer_gone", 0, NULL,
             SF_FIELDS(SF_F_STR("instance", hex), SF_F_STR("why", why)),
             "bus bridge: instance %s is gone (%s): its members' wills published here", hex, why);
    bus_bridge_fini(&p->replica);
    bus_dedup_forget(&r->seen, p->id);
    p->used = 0;
    r->st.peers--;
}

/* A state entry of another instance into its replica, as the upgrade
 * bridge's frame of the same meaning. */
static void replica_feed(bus_redis *r, const rc_entry *e)
{
    unsigned char f[4 + 2 + BUS_NAME_MAX];
    unsigned char *big = NULL;
    uint16_t type;
    size_t n = 4;
    peer *p;

    switch (e->kind) {
    case RC_JOIN: type = BRIDGE_JOIN; break;
    case RC_LEAVE: type = BRIDGE_LEAVE; break;
    case RC_CLAIM: type = BRIDGE_CLAIM; break;
    case RC_RELEASE: type = BRIDGE_RELEASE; break;
    case RC_WILL: type = BRIDGE_WILL; break;
    case RC_WILL_DONE: type = BRIDGE_WILL_DONE; break;
    default: return;
    }
    if (!(p = peer_get(r, e->origin)))
        return; /* past BUS_REDIS_PEERS_MAX: counted below */
    f[0] = (unsigned char)(e->pid >> 24);
    f[1] = (unsigned char)(e->pid >> 16);
    f[2] = (unsigned char)(e->pid >> 8);
    f[3] = (unsigned char)e->pid;
    if (type == BRIDGE_WILL) {
        f[4] = (unsigned char)(e->name_len >> 8);
        f[5] = (unsigned char)e->name_len;
        n = 6;
    }
    if (e->name_len) {
        memcpy(f + n, e->name, e->name_len);
        n += e->name_len;
    }
    if (e->len) {
        if (!(big = malloc(n + e->len)))
            return;
        memcpy(big, f, n);
        memcpy(big + n, e->data, e->len);
        n += e->len;
    }
    if (bus_bridge_input(&p->replica, type, big ? big : f, n) < 0)
        r->st.bad++;
    free(big);
}

/* ------------------------------------------------------------ reading */

static void read_more(bus_redis *r);

static void start_topic(bus_redis *r, rtop *t);

static void say_up(bus_redis *r);

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
        return;
    }
    rc = bus_dedup_check(&r->seen, e.origin, key, key_len, e.seq, e.flags & RC_F_FIRST, &missed);
    if (rc != DEDUP_NEW) {
        if (rc == DEDUP_DUP)
            r->st.duplicates++;
        return;
    }
    r->st.entries_in++;
    if (e.kind != RC_GONE)
        (void)peer_get(r, e.origin); /* known from its first entry on */
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
            next_xseq(r, &no);
            (void)xadd(r, KEY_X, sizeof KEY_X - 1, &no, 0);
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
        replica_feed(r, &e);
        /* A room with members elsewhere is read here too: its history is
         * then here for a local joiner. */
        if ((t = top_get(r, e.name, e.name_len)) && !t->reading && !t->starting)
            start_topic(r, t);
        return;
    }
    case RC_GONE: {
        peer *p = peer_find(r, e.target);
        if (e.target == r->id) {
            r->resync = 1; /* another took us for dead: tell everything again */
            return;
        }
        if (p)
            peer_gone(r, p, e.target == e.origin ? "it shut down" : "its heartbeat stopped");
        return;
    }
    case RC_PROBE:
        return;
    default:
        replica_feed(r, &e);
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
        else if ((t = top_find(r, key->str, key->len)))
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
    read_more(r);
}

/* XREAD COUNT n BLOCK ms STREAMS sf:x t... cursor... */
static void read_more(bus_redis *r)
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

/* The newest entries of a topic, newest first. Those written since the
 * topic was started here (by their id's time: this host's clock against
 * Redis's, the same machine or kept in step by NTP) may be news to a
 * member who joined meanwhile: delivered, oldest first; the older go into
 * history, newest first (bus_inject_history puts each before the rest). */
static void start_reply(rconn *c, struct redisReply *reply, void *priv)
{
    start_arg *a = priv;
    bus_redis *r = a->r;
    rtop *t = top_find(r, a->key, strlen(a->key));
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
    say_up(r);
    /* The XREAD in flight does not read it: cut it short, so the new set is
     * read at once rather than after the block (up to 1 s). */
    if (r->reading && r->rd_id > 0) {
        char id[24];
        snprintf(id, sizeof id, "%lld", r->rd_id);
        const char *argv[] = {"CLIENT", "UNBLOCK", id};
        size_t argvlen[] = {6, 7, strlen(id)};
        (void)rconn_command(r->cmd, NULL, NULL, 0, 3, argv, argvlen);
    }
}

static void start_topic(bus_redis *r, rtop *t)
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
    if ((t = top_get(r, topic, len)) && !t->reading && !t->starting)
        start_topic(r, t);
}

static void local_topic_seen(void *arg, const char *name, size_t len, unsigned subscribers)
{
    topic_seen(name, len, subscribers, arg);
}

static void start_topics(bus_redis *r)
{
    bus_each_topic(r->bus, local_topic_seen, r);
    for (unsigned i = 0; i < BUS_REDIS_PEERS_MAX; i++)
        if (r->peers[i].used)
            bus_bridge_peer_ops()->each_topic(&r->peers[i].replica, "", 0, topic_seen, r);
}

/* Said once the others' state is read and every topic known then is read
 * (its history here): from then on a local joiner sees what one bus would. */
static void say_up(bus_redis *r)
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
    start_topics(r);
    read_more(r);
    say_up(r);
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
    (void)peer_get(r, id);
    for (size_t k = 0; k + 1 < reply->elements; k += 2) {
        const redisReply *v = reply->element[k + 1];
        rc_entry e;
        if (v->type != REDIS_REPLY_STRING ||
            rc_decode((const unsigned char *)v->str, v->len, r->bus->cfg.chan_max, &e) < 0 ||
            e.origin != id) {
            r->st.bad++;
            continue;
        }
        replica_feed(r, &e);
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
static void snapshot_start(bus_redis *r)
{
    const char *argv[] = {"XREVRANGE", KEY_X, "+", "-", "COUNT", "1"};
    size_t argvlen[] = {9, sizeof KEY_X - 1, 1, 1, 5, 1};

    if (r->snapshot)
        return;
    if (rconn_command(r->cmd, xlast_reply, r, 0, 6, argv, argvlen) == 0)
        r->snapshot = 1;
}

/* ------------------------------------------------------------ hooks */

static void op_published(void *ctx, const char *topic, size_t topic_len, pid_t from,
                         const unsigned char *data, size_t len)
{
    bus_redis *r = ctx;
    rtop *t = top_get(r, topic, topic_len);
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
    (void)xadd(r, t->key, t->key_len, &e, 0);
}

static void op_broadcast(void *ctx, pid_t from, const unsigned char *data, size_t len)
{
    bus_redis *r = ctx;
    rc_entry e = {.kind = RC_BROADCAST, .origin = r->id, .pid = (uint32_t)from, .data = data,
                  .len = len};

    next_xseq(r, &e);
    (void)xadd(r, KEY_X, sizeof KEY_X - 1, &e, 0);
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
        next_xseq(r, &e);
        /* Not sent: its sender is told there is nobody (the seq skipped
         * is a gap the others report on sf:x, where nobody is told). */
        return xadd(r, KEY_X, sizeof KEY_X - 1, &e, 0) < 0 ? -ESRCH : 0;
    }
    return -ESRCH;
}

static void op_name(void *ctx, const char *name, size_t len, pid_t pid, int held)
{
    bus_redis *r = ctx;
    char key[KEY_MAX], field[KEY_MAX + 16], lease[16];
    int kl = key_of(key, "sf:n:", name, len);
    size_t fl = field_of(field, sizeof field, 'n', pid, name, len);
    rc_entry e = {.kind = held ? RC_CLAIM : RC_RELEASE, .pid = (uint32_t)pid, .name = name,
                  .name_len = len};

    if (kl < 0 || !fl)
        return;
    snprintf(lease, sizeof lease, "%u", r->o.lease_ms);
    if (held) {
        const char *argv[] = {"EVAL", LUA_CLAIM, "2", key, r->hkey, r->idhex, lease};
        size_t argvlen[] = {4, sizeof LUA_CLAIM - 1, 1, (size_t)kl, strlen(r->hkey), 16,
                            strlen(lease)};
        names_add(r, name, len);
        (void)out_push(r, OUT_CLAIM, 1, name, len, 7, argv, argvlen);
    } else {
        const char *argv[] = {"EVAL", LUA_RELEASE, "1", key, r->idhex};
        size_t argvlen[] = {4, sizeof LUA_RELEASE - 1, 1, (size_t)kl, 16};
        names_remove(r, name, len);
        (void)out_push(r, OUT_PLAIN, 1, NULL, 0, 5, argv, argvlen);
    }
    state_event(r, &e, field, fl, held);
}

static void op_member(void *ctx, const char *topic, size_t len, pid_t pid, int joined)
{
    bus_redis *r = ctx;
    char field[KEY_MAX + 16];
    size_t fl = field_of(field, sizeof field, 'j', pid, topic, len);
    rc_entry e = {.kind = joined ? RC_JOIN : RC_LEAVE, .pid = (uint32_t)pid, .name = topic,
                  .name_len = len};
    rtop *t;

    if (!fl)
        return;
    state_event(r, &e, field, fl, joined);
    if (joined && (t = top_get(r, topic, len)) && !t->reading && !t->starting)
        start_topic(r, t);
}

static void op_will(void *ctx, pid_t pid, const char *topic, size_t topic_len,
                    const unsigned char *data, size_t len)
{
    bus_redis *r = ctx;
    char field[32];
    size_t fl = field_of(field, sizeof field, 'w', pid, NULL, 0);
    rc_entry e = {.kind = RC_WILL, .pid = (uint32_t)pid, .name = topic, .name_len = topic_len,
                  .data = data, .len = len};

    state_event(r, &e, field, fl, topic_len > 0);
}

static void op_will_published(void *ctx, pid_t pid)
{
    bus_redis *r = ctx;
    char field[32];
    size_t fl = field_of(field, sizeof field, 'w', pid, NULL, 0);
    rc_entry e = {.kind = RC_WILL_DONE, .pid = (uint32_t)pid};

    state_event(r, &e, field, fl, 0);
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
    op_will_published, op_name_held, op_members, op_topic_count, op_each_topic,
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
    (void)out_push(r, OUT_PLAIN, 1, NULL, 0, 3, sadd, saddl);
    (void)out_push(r, OUT_PLAIN, 1, NULL, 0, 5, set, setl);
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
    (void)out_push(r, OUT_PLAIN, 1, NULL, 0, 2, del, dell);
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

typedef struct alive_arg {
    bus_redis *r;
    uint64_t id;
} alive_arg;

static void alive_reply(rconn *c, struct redisReply *reply, void *priv)
{
    alive_arg *a = priv;
    bus_redis *r = a->r;
    peer *p = peer_find(r, a->id);

    (void)c;
    free(a);
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
    peer_gone(r, p, "its heartbeat stopped");
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
            int kl = key_of(keys[i], "sf:n:", r->names[from + i], strlen(r->names[from + i]));
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
        return;
    }
    /* Only into an outbox with room: a probe dropped would be a gap the
     * others count on sf:x. */
    rc_entry e = {.kind = RC_PROBE, .origin = r->id};
    if (r->out_bytes + 4096 > r->o.outbox_max)
        return;
    next_xseq(r, &e);
    if (xadd_as(r, OUT_PROBE, KEY_X, sizeof KEY_X - 1, &e, 0) == 0) {
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
    if (r->resync && !r->head)
        resync(r);
    snprintf(lease, sizeof lease, "%u", r->o.lease_ms);
    renew_names(r, lease); /* first: names never outlive the heartbeat */
    const char *hb[] = {"SET", r->hkey, "1", "PX", lease, "XX"};
    size_t hbl[] = {3, strlen(r->hkey), 1, 2, strlen(lease), 2};
    (void)rconn_command(r->cmd, heartbeat_reply, r, 0, 6, hb, hbl);
    for (unsigned i = 0; i < BUS_REDIS_PEERS_MAX; i++) {
        peer *p = &r->peers[i];
        alive_arg *a;
        char key[24];
        if (!p->used || !(a = malloc(sizeof *a)))
            continue;
        a->r = r;
        a->id = p->id;
        snprintf(key, sizeof key, "sf:h:%016" PRIx64, p->id);
        const char *ex[] = {"EXISTS", key};
        size_t exl[] = {6, strlen(key)};
        if (rconn_command(r->cmd, alive_reply, a, 0, 2, ex, exl) < 0)
            free(a);
    }
    if (r->snapshot == 2)
        start_topics(r); /* those that failed to start */
    probe(r);
}

static void cmd_up(rconn *c, void *arg)
{
    bus_redis *r = arg;

    (void)c;
    flush(r);
    snapshot_start(r);
}

static void cmd_down(rconn *c, const char *why, void *arg)
{
    bus_redis *r = arg;

    (void)c;
    r->st.reconnects++;
    r->probe_seq = 0; /* it may never have been written */
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
    read_more(r);
}

static void rd_down(rconn *c, const char *why, void *arg)
{
    bus_redis *r = arg;

    (void)c, (void)why;
    r->st.reconnects++;
    r->reading = 0;
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
        (void)out_push(r, OUT_PLAIN, 1, NULL, 0, 2, del, dell);
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
    say_goodbye(r);
    ev_timer_stop(r->loop, &r->tick);
    rconn_free(r->rd);
    rconn_free(r->cmd);
    while (r->head) {
        out_item *it = r->head;
        r->head = it->next;
        item_free(it);
    }
    /* The replicas go without publishing: this instance's members are
     * gone already (bus_close_all), there is nobody to tell. */
    for (unsigned i = 0; i < BUS_REDIS_PEERS_MAX; i++) {
        if (r->peers[i].used) {
            r->peers[i].replica.bus = r->bus;
            bus_bridge_fini(&r->peers[i].replica);
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
