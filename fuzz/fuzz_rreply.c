/* libFuzzer target: the stream reply walks (src/redis/rreply.c) on reply
 * trees that hiredis's own reader builds from the input, as replies from a
 * (hostile or broken) Redis would arrive. Every reply read is walked as each
 * shape; a walk either accepts it, with entries whose ids reformat to the
 * text they came from, or refuses it with -EPROTO, and the check-only walk
 * agrees with the full one. Every string is also tried as a stream id. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "redis/rreply.h"

static int check_entry(const rreply_entry *e, void *arg)
{
    char text[RID_TEXT_MAX];
    int n = rid_fmt(&e->id, text, sizeof text);
    size_t *count = arg;
    (*count)++;
    /* Redis writes ids without leading zeros; ours may differ only there. */
    if (n <= 0)
        abort();
    for (size_t i = 0; i < e->nfields; i++) {
        const char *f, *v;
        size_t fl, vl;
        rreply_field(e, i, &f, &fl, &v, &vl);
        if ((fl && !f) || (vl && !v))
            abort();
    }
    if (e->nfields) {
        const char *f, *v;
        size_t fl, vl, len;
        rreply_field(e, 0, &f, &fl, &v, &vl);
        if (memchr(f, '\0', fl) == NULL) {
            char name[64];
            if (fl < sizeof name) {
                memcpy(name, f, fl);
                name[fl] = '\0';
                if (!rreply_get(e, name, &len) || len != vl)
                    abort();
            }
        }
    }
    if (e->deleted && e->nfields)
        abort();
    return 0;
}

static int check_deleted(const rid *id, void *arg)
{
    rid next;
    (void)arg;
    if (rid_next(id, &next) == 0 && rid_cmp(&next, id) <= 0)
        abort();
    return 0;
}

static void try_ids(const redisReply *r, int depth)
{
    if (!r || depth > 16)
        return;
    if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) {
        rid id, back;
        char text[RID_TEXT_MAX];
        if (rid_parse(r->str, r->len, &id) == 0) {
            int n = rid_fmt(&id, text, sizeof text);
            if (n <= 0 || rid_parse(text, (size_t)n, &back) != 0 || rid_cmp(&id, &back) != 0)
                abort();
        }
    }
    if (r->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i < r->elements; i++)
            try_ids(r->element[i], depth + 1);
}

static void walk(const redisReply *r)
{
    size_t count = 0;
    rid next;
    int check = rreply_streams(r, NULL, NULL);
    int full = rreply_streams(r, check_entry, &count);
    if (check != full || (full != 0 && full != -EPROTO) || (full && count))
        abort();
    count = 0;
    check = rreply_entries(r, NULL, NULL);
    full = rreply_entries(r, check_entry, &count);
    if (check != full || (full != 0 && full != -EPROTO) || (full && count))
        abort();
    count = 0;
    check = rreply_autoclaim(r, NULL, NULL, NULL, NULL);
    full = rreply_autoclaim(r, &next, check_entry, check_deleted, &count);
    if (check != full || (full != 0 && full != -EPROTO) || (full && count))
        abort();
    long long v;
    const char *s;
    size_t len;
    (void)rreply_integer(r, &v);
    (void)rreply_string(r, &s, &len);
    (void)rreply_is_ok(r);
    (void)rreply_error(r);
    try_ids(r, 0);
}

/* hiredis 0.14's reader allocates an array of the announced length before
 * its elements arrive (hiredis 1.0.1 added a bound: CVE-2021-32765): a
 * count beyond what the input could fill is not what we test here. */
static int huge_array(const uint8_t *data, size_t size)
{
    for (size_t i = 0; i < size; i++) {
        if (data[i] != '*')
            continue;
        unsigned long long n = 0;
        for (size_t j = i + 1; j < size && data[j] >= '0' && data[j] <= '9'; j++)
            if ((n = n * 10 + (data[j] - '0')) > size)
                return 1;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (huge_array(data, size))
        return 0;
    redisReader *rd = redisReaderCreate();
    void *reply = NULL;
    if (!rd)
        return 0;
    if (redisReaderFeed(rd, (const char *)data, size) == REDIS_OK) {
        for (int n = 0; n < 64; n++) {
            reply = NULL;
            if (redisReaderGetReply(rd, &reply) != REDIS_OK || !reply)
                break;
            walk(reply);
            freeReplyObject(reply);
        }
    }
    redisReaderFree(rd);
    return 0;
}
