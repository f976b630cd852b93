/* bus_redis_out.c - the outbox, the topics known, and
 * writing entries; the files of the Redis bridge are listed in
 * bus_redis_int.h, the why is in docs/design.md, "The bus across
 * instances (Redis)". */
#include "supervisor/bus_redis_int.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ outbox */

static void cmd_reply(rconn *c, struct redisReply *reply, void *priv);

/* Writes what waits, in order, while the connection takes it. */
void rb_flush(bus_redis *r)
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

void rb_item_free(out_item *it)
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
    rb_item_free(it);
    rb_flush(r);
}

/* Queues a command (argv copied). state: it writes state (a lost one calls
 * for a rewrite). Returns 0, or -ENOBUFS (the outbox is full: counted) or
 * -ENOMEM. */
int rb_out_push(bus_redis *r, int what, int state, const char *name, size_t name_len, int argc,
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
    rb_flush(r);
    return 0;
}


/* ------------------------------------------------------------ topics */

int rb_key_of(char *key, const char *prefix, const char *name, size_t len)
{
    size_t p = strlen(prefix);

    if (len > BUS_NAME_MAX)
        return -EINVAL;
    memcpy(key, prefix, p);
    memcpy(key + p, name, len);
    key[p + len] = '\0';
    return (int)(p + len);
}

rtop *rb_top_find(bus_redis *r, const char *key, size_t len)
{
    for (unsigned i = 0; i < r->ntops; i++)
        if (r->tops[i].key_len == len && memcmp(r->tops[i].key, key, len) == 0)
            return &r->tops[i];
    return NULL;
}

/* The topic's entry, made if needed; at the bound the least recently used
 * one not read goes (its seq is forgotten: the next write there starts a
 * count above every seq used, flagged first). NULL: none could be made. */
rtop *rb_top_get(bus_redis *r, const char *topic, size_t len)
{
    char key[KEY_MAX];
    int n = rb_key_of(key, "sf:t:", topic, len);
    rtop *t;

    if (n < 0)
        return NULL;
    if ((t = rb_top_find(r, key, (size_t)n))) {
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
int rb_xadd_as(bus_redis *r, int what, const char *key, size_t key_len, rc_entry *e, int state)
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
    rc = rb_out_push(r, what, state, NULL, 0, 8, argv, argvlen);
    if (rc == 0)
        r->st.entries_out++;
done:
    if (p != buf)
        free(p);
    return rc;
}

int rb_xadd(bus_redis *r, const char *key, size_t key_len, rc_entry *e, int state)
{
    return rb_xadd_as(r, OUT_PLAIN, key, key_len, e, state);
}

/* The next seq on sf:x, the first flagged. */
void rb_next_xseq(bus_redis *r, rc_entry *e)
{
    e->seq = ++r->xseq;
    e->flags = r->xseq == 1 ? RC_F_FIRST : 0;
}

/* A state event on sf:x, with its hash field set (value: the entry, or
 * "" when the event has no data worth keeping) or deleted, in order. */
void rb_state_event(bus_redis *r, rc_entry *e, const char *field, size_t field_len, int set)
{
    e->origin = r->id;
    rb_next_xseq(r, e);
    (void)rb_xadd(r, KEY_X, sizeof KEY_X - 1, e, 1);
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
            (void)rb_out_push(r, OUT_PLAIN, 1, NULL, 0, 4, argv, argvlen);
        }
        if (p != buf)
            free(p);
    } else {
        const char *argv[] = {"HDEL", r->skey, field};
        size_t argvlen[] = {4, strlen(r->skey), field_len};
        (void)rb_out_push(r, OUT_PLAIN, 1, NULL, 0, 3, argv, argvlen);
    }
}

/* "j PID TOPIC", "n PID NAME", "w PID": a state hash's field. */
size_t rb_field_of(char *f, size_t cap, char kind, pid_t pid, const char *s, size_t len)
{
    int n = snprintf(f, cap, "%c %d%s", kind, (int)pid, len ? " " : "");
    if (n < 0 || (size_t)n + len >= cap)
        return 0;
    if (len)
        memcpy(f + n, s, len);
    return (size_t)n + len;
}

void rb_names_add(bus_redis *r, const char *name, size_t len)
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

void rb_names_remove(bus_redis *r, const char *name, size_t len)
{
    for (unsigned i = 0; i < r->nnames; i++) {
        if (strlen(r->names[i]) == len && memcmp(r->names[i], name, len) == 0) {
            free(r->names[i]);
            r->names[i] = r->names[--r->nnames];
            return;
        }
    }
}
