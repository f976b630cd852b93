/*
 * rreply.h - checked reading of Redis replies (hiredis's redisReply trees):
 * stream ids, and the stream reply shapes that the bus bridge and the task
 * queue read. Every type and every bound is checked; a tree of another
 * shape is -EPROTO and no callback has run (the walk checks the whole tree
 * before it calls anything). Nothing here allocates; the pointers handed to
 * callbacks point into the reply and live as long as it does.
 *
 * Shapes (RESP2, as Redis 7 sends them):
 *   XREAD / XREADGROUP  nil (timed out), or [[key, entries], ...]
 *   XRANGE / XREVRANGE  entries
 *   XAUTOCLAIM          [next-id, entries, [deleted-id, ...]] (Redis 7) or
 *                       [next-id, entries] (Redis 6.2)
 * where entries is [[id, [field, value, ...]], ...], and for XREADGROUP of
 * an entry deleted while pending, [id, nil].
 */
#ifndef SF_REDIS_RREPLY_H
#define SF_REDIS_RREPLY_H

#include <stddef.h>
#include <stdint.h>

struct redisReply;

/* A stream entry id: milliseconds and sequence. */
typedef struct rid {
    uint64_t ms, seq;
} rid;

#define RID_TEXT_MAX 42 /* "18446744073709551615-18446744073709551615" + NUL */

/* Parses s[0..len) as "MS-SEQ" (both decimal, no sign, no leading
 * spaces, within uint64). Returns 0 or -EINVAL. */
int rid_parse(const char *s, size_t len, rid *out);

/* <0, 0, >0 as a is before, equal to, after b. */
int rid_cmp(const rid *a, const rid *b);

/* Writes "MS-SEQ" into buf (size bytes, RID_TEXT_MAX is always enough).
 * Returns its length, or -ENOSPC (buf then holds "" if size > 0). */
int rid_fmt(const rid *id, char *buf, size_t size);

/* The id right after id (for an exclusive start): seq + 1, or the next ms
 * with seq 0. Returns 0, or -ERANGE for the largest id. */
int rid_next(const rid *id, rid *out);

/* One stream entry as a walk hands it over. */
typedef struct rreply_entry {
    const char *key;      /* the stream's name, NULL for the XRANGE shape */
    size_t keylen;
    rid id;
    const char *idtext;   /* the id as Redis wrote it */
    size_t idlen;
    int deleted;          /* XREADGROUP: pending but deleted, no fields */
    struct redisReply *const *fields; /* field, value, field, value ... */
    size_t nfields;       /* pairs */
} rreply_entry;

/* Called per entry, in the reply's order. A non-zero return stops the walk
 * and is returned by it. */
typedef int (*rreply_entry_cb)(const rreply_entry *e, void *arg);
/* Called per deleted id of XAUTOCLAIM. Non-zero stops the walk likewise. */
typedef int (*rreply_id_cb)(const rid *id, void *arg);

/* XREAD / XREADGROUP. Returns 0 (a nil reply: no entries), -EPROTO, or what
 * a callback returned. cb may be NULL: only the check. */
int rreply_streams(const struct redisReply *r, rreply_entry_cb cb, void *arg);

/* XRANGE / XREVRANGE (entry.key NULL). As rreply_streams. */
int rreply_entries(const struct redisReply *r, rreply_entry_cb cb, void *arg);

/* XAUTOCLAIM: *next gets the cursor for the next call (0-0 when the scan
 * is over), then cb per claimed entry and on_deleted per deleted id (either
 * may be NULL). As rreply_streams. */
int rreply_autoclaim(const struct redisReply *r, rid *next, rreply_entry_cb cb,
                     rreply_id_cb on_deleted, void *arg);

/* Field i (< e->nfields) of an entry: its name and value. */
void rreply_field(const rreply_entry *e, size_t i, const char **name, size_t *namelen,
                  const char **value, size_t *valuelen);

/* The value of the first field called name, or NULL (then *len is 0). */
const char *rreply_get(const rreply_entry *e, const char *name, size_t *len);

/* Small checked accessors. Each returns 0 or -EPROTO (another type). */
int rreply_integer(const struct redisReply *r, long long *out);
int rreply_string(const struct redisReply *r, const char **s, size_t *len);
/* 1 for the status reply "OK", else 0. */
int rreply_is_ok(const struct redisReply *r);
/* An error reply's text, or NULL for any other reply. */
const char *rreply_error(const struct redisReply *r);

#endif
