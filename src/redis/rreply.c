/* rreply.c - checked walks of Redis stream replies (see rreply.h). */
#include "redis/rreply.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <hiredis/hiredis.h>

/* ---- ids ------------------------------------------------------------------ */

static int parse_u64(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    if (len == 0 || len > 20)
        return -EINVAL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -EINVAL;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

int rid_parse(const char *s, size_t len, rid *out)
{
    const char *dash = s ? memchr(s, '-', len) : NULL;
    rid id;
    if (!dash)
        return -EINVAL;
    if (parse_u64(s, (size_t)(dash - s), &id.ms) < 0 ||
        parse_u64(dash + 1, len - (size_t)(dash - s) - 1, &id.seq) < 0)
        return -EINVAL;
    *out = id;
    return 0;
}

int rid_cmp(const rid *a, const rid *b)
{
    if (a->ms != b->ms)
        return a->ms < b->ms ? -1 : 1;
    if (a->seq != b->seq)
        return a->seq < b->seq ? -1 : 1;
    return 0;
}

int rid_fmt(const rid *id, char *buf, size_t size)
{
    int n = snprintf(buf, size, "%llu-%llu", (unsigned long long)id->ms,
                     (unsigned long long)id->seq);
    if (n < 0 || (size_t)n >= size) {
        if (size > 0)
            buf[0] = '\0';
        return -ENOSPC;
    }
    return n;
}

int rid_next(const rid *id, rid *out)
{
    if (id->seq < UINT64_MAX) {
        out->ms = id->ms;
        out->seq = id->seq + 1;
        return 0;
    }
    if (id->ms == UINT64_MAX)
        return -ERANGE;
    out->ms = id->ms + 1;
    out->seq = 0;
    return 0;
}

/* ---- walks ---------------------------------------------------------------- */

static int is_string(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_STRING && (r->str || r->len == 0);
}

static int is_array(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ARRAY && (r->element || r->elements == 0);
}

/* [id, [f, v, ...]] or, deleted, [id, nil]. Checks it; calls cb if set. */
static int walk_entry(const redisReply *r, const char *key, size_t keylen,
                      rreply_entry_cb cb, void *arg)
{
    rreply_entry e = { .key = key, .keylen = keylen };
    if (!is_array(r) || r->elements != 2)
        return -EPROTO;
    const redisReply *id = r->element[0], *fields = r->element[1];
    if (!is_string(id) || rid_parse(id->str, id->len, &e.id) < 0)
        return -EPROTO;
    e.idtext = id->str;
    e.idlen = id->len;
    if (fields && fields->type == REDIS_REPLY_NIL) {
        e.deleted = 1;
    } else {
        if (!is_array(fields) || fields->elements % 2 != 0)
            return -EPROTO;
        for (size_t i = 0; i < fields->elements; i++)
            if (!is_string(fields->element[i]))
                return -EPROTO;
        e.fields = fields->element;
        e.nfields = fields->elements / 2;
    }
    return cb ? cb(&e, arg) : 0;
}

static int walk_entries(const redisReply *r, const char *key, size_t keylen,
                        rreply_entry_cb cb, void *arg)
{
    if (!is_array(r))
        return -EPROTO;
    for (size_t i = 0; i < r->elements; i++) {
        int rc = walk_entry(r->element[i], key, keylen, cb, arg);
        if (rc)
            return rc;
    }
    return 0;
}

static int walk_streams(const redisReply *r, rreply_entry_cb cb, void *arg)
{
    if (r && r->type == REDIS_REPLY_NIL)
        return 0;
    if (!is_array(r))
        return -EPROTO;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *s = r->element[i];
        if (!is_array(s) || s->elements != 2 || !is_string(s->element[0]))
            return -EPROTO;
        int rc = walk_entries(s->element[1], s->element[0]->str, s->element[0]->len, cb, arg);
        if (rc)
            return rc;
    }
    return 0;
}

int rreply_streams(const redisReply *r, rreply_entry_cb cb, void *arg)
{
    int rc = walk_streams(r, NULL, NULL);
    return rc || !cb ? rc : walk_streams(r, cb, arg);
}

int rreply_entries(const redisReply *r, rreply_entry_cb cb, void *arg)
{
    int rc = walk_entries(r, NULL, 0, NULL, NULL);
    return rc || !cb ? rc : walk_entries(r, NULL, 0, cb, arg);
}

static int walk_deleted(const redisReply *r, rreply_id_cb cb, void *arg)
{
    if (!is_array(r))
        return -EPROTO;
    for (size_t i = 0; i < r->elements; i++) {
        rid id;
        const redisReply *s = r->element[i];
        if (!is_string(s) || rid_parse(s->str, s->len, &id) < 0)
            return -EPROTO;
        if (cb) {
            int rc = cb(&id, arg);
            if (rc)
                return rc;
        }
    }
    return 0;
}

int rreply_autoclaim(const redisReply *r, rid *next, rreply_entry_cb cb,
                     rreply_id_cb on_deleted, void *arg)
{
    rid cursor;
    int rc;
    if (!is_array(r) || (r->elements != 2 && r->elements != 3))
        return -EPROTO;
    const redisReply *n = r->element[0];
    if (!is_string(n) || rid_parse(n->str, n->len, &cursor) < 0)
        return -EPROTO;
    if ((rc = walk_entries(r->element[1], NULL, 0, NULL, NULL)) != 0)
        return rc;
    if (r->elements == 3 && (rc = walk_deleted(r->element[2], NULL, NULL)) != 0)
        return rc;
    if (next)
        *next = cursor;
    if (cb && (rc = walk_entries(r->element[1], NULL, 0, cb, arg)) != 0)
        return rc;
    if (on_deleted && r->elements == 3)
        return walk_deleted(r->element[2], on_deleted, arg);
    return 0;
}

void rreply_field(const rreply_entry *e, size_t i, const char **name, size_t *namelen,
                  const char **value, size_t *valuelen)
{
    const redisReply *f = e->fields[2 * i], *v = e->fields[2 * i + 1];
    *name = f->str ? f->str : "";
    *namelen = f->len;
    *value = v->str ? v->str : "";
    *valuelen = v->len;
}

const char *rreply_get(const rreply_entry *e, const char *name, size_t *len)
{
    size_t nlen = strlen(name);
    for (size_t i = 0; i < e->nfields; i++) {
        const redisReply *f = e->fields[2 * i], *v = e->fields[2 * i + 1];
        if (f->len == nlen && (nlen == 0 || memcmp(f->str, name, nlen) == 0)) {
            *len = v->len;
            return v->str ? v->str : "";
        }
    }
    *len = 0;
    return NULL;
}

/* ---- scalars -------------------------------------------------------------- */

int rreply_integer(const redisReply *r, long long *out)
{
    if (!r || r->type != REDIS_REPLY_INTEGER)
        return -EPROTO;
    *out = r->integer;
    return 0;
}

int rreply_string(const redisReply *r, const char **s, size_t *len)
{
    if (!r || (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_STATUS))
        return -EPROTO;
    *s = r->str ? r->str : "";
    *len = r->len;
    return 0;
}

int rreply_is_ok(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_STATUS && r->len == 2 && r->str &&
           memcmp(r->str, "OK", 2) == 0;
}

const char *rreply_error(const redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_ERROR)
        return NULL;
    return r->str ? r->str : "";
}
