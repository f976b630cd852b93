/* Unit tests: stream ids and the checked walks of stream replies
 * (src/redis/rreply.c). Replies are built by hiredis's own reader from RESP
 * text, as they arrive from Redis. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "redis/rreply.h"

static redisReply *resp(const char *text)
{
    redisReader *rd = redisReaderCreate();
    void *r = NULL;
    assert_non_null(rd);
    assert_int_equal(redisReaderFeed(rd, text, strlen(text)), REDIS_OK);
    assert_int_equal(redisReaderGetReply(rd, &r), REDIS_OK);
    assert_non_null(r);
    redisReaderFree(rd);
    return r;
}

typedef struct seen {
    int n;
    char log[512];
    int stop_at;   /* return 7 from the callback for entry stop_at (1-based) */
    int deleted;
} seen;

static int collect(const rreply_entry *e, void *arg)
{
    seen *s = arg;
    char id[RID_TEXT_MAX];
    size_t used = strlen(s->log);
    s->n++;
    assert_int_equal(rid_fmt(&e->id, id, sizeof id), (int)e->idlen);
    assert_memory_equal(id, e->idtext, e->idlen);
    used += (size_t)snprintf(s->log + used, sizeof s->log - used, "%.*s/%s%s:",
                             e->key ? (int)e->keylen : 1, e->key ? e->key : "-", id,
                             e->deleted ? "(deleted)" : "");
    for (size_t i = 0; i < e->nfields && used < sizeof s->log; i++) {
        const char *f, *v;
        size_t fl, vl;
        rreply_field(e, i, &f, &fl, &v, &vl);
        used += (size_t)snprintf(s->log + used, sizeof s->log - used, "%.*s=%.*s,", (int)fl, f,
                                 (int)vl, v);
    }
    if (used < sizeof s->log)
        snprintf(s->log + used, sizeof s->log - used, " ");
    return s->n == s->stop_at ? 7 : 0;
}

static int collect_deleted(const rid *id, void *arg)
{
    seen *s = arg;
    char t[RID_TEXT_MAX];
    rid_fmt(id, t, sizeof t);
    size_t used = strlen(s->log);
    snprintf(s->log + used, sizeof s->log - used, "del %s ", t);
    s->deleted++;
    return 0;
}

static void test_rid(void **state)
{
    rid a, b, n;
    char buf[RID_TEXT_MAX];
    (void)state;
    assert_int_equal(rid_parse("1526919030474-55", 16, &a), 0);
    assert_true(a.ms == 1526919030474ull && a.seq == 55);
    assert_int_equal(rid_parse("0-0", 3, &b), 0);
    assert_true(rid_cmp(&b, &a) < 0 && rid_cmp(&a, &b) > 0 && rid_cmp(&a, &a) == 0);
    assert_int_equal(rid_parse("1526919030474-56", 16, &b), 0);
    assert_true(rid_cmp(&a, &b) < 0);
    assert_int_equal(rid_parse("1526919030475-0", 15, &b), 0);
    assert_true(rid_cmp(&a, &b) < 0);
    const char *max = "18446744073709551615-18446744073709551615";
    assert_int_equal(rid_parse(max, strlen(max), &a), 0);
    assert_int_equal(rid_fmt(&a, buf, sizeof buf), (int)strlen(max));
    assert_string_equal(buf, max);
    assert_int_equal(rid_next(&a, &n), -ERANGE);
    assert_int_equal(rid_fmt(&a, buf, 10), -ENOSPC);
    assert_string_equal(buf, "");
    a.ms = 5;
    assert_int_equal(rid_next(&a, &n), 0);
    assert_true(n.ms == 6 && n.seq == 0);
    a.seq = 3;
    assert_int_equal(rid_next(&a, &n), 0);
    assert_true(n.ms == 5 && n.seq == 4);
    /* Only part of a buffer counts. */
    assert_int_equal(rid_parse("12-34xyz", 5, &a), 0);
    assert_true(a.ms == 12 && a.seq == 34);

    static const char *bad[] = {
        "", "1", "-", "1-", "-1", "1--1", "a-1", "1-b", " 1-1", "1-1 ", "+1-1", "1-+1",
        "18446744073709551616-0", "0-18446744073709551616", "123456789012345678901-0",
        "1-2-3", "1.5-0",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (rid_parse(bad[i], strlen(bad[i]), &a) != -EINVAL)
            fail_msg("rid_parse(\"%s\") accepted", bad[i]);
    assert_int_equal(rid_parse(NULL, 0, &a), -EINVAL);
}

#define E1 "*2\r\n$3\r\n1-1\r\n*4\r\n$1\r\na\r\n$2\r\nv1\r\n$1\r\nb\r\n$0\r\n\r\n"
#define E2 "*2\r\n$3\r\n2-0\r\n*2\r\n$1\r\na\r\n$2\r\nv2\r\n"
#define E3 "*2\r\n$5\r\n10-99\r\n*0\r\n"

static void test_xread(void **state)
{
    seen s = { 0 };
    (void)state;
    redisReply *r = resp("*2\r\n*2\r\n$2\r\ns1\r\n*2\r\n" E1 E2 "*2\r\n$2\r\ns2\r\n*1\r\n" E3);
    assert_int_equal(rreply_streams(r, collect, &s), 0);
    assert_int_equal(s.n, 3);
    assert_string_equal(s.log, "s1/1-1:a=v1,b=, s1/2-0:a=v2, s2/10-99: ");
    /* The callback's stop is returned as it is. */
    memset(&s, 0, sizeof s);
    s.stop_at = 2;
    assert_int_equal(rreply_streams(r, collect, &s), 7);
    assert_int_equal(s.n, 2);
    assert_int_equal(rreply_streams(r, NULL, NULL), 0);
    freeReplyObject(r);

    /* Timed out: nil, no entries. An empty array too. */
    memset(&s, 0, sizeof s);
    r = resp("*-1\r\n");
    assert_int_equal(rreply_streams(r, collect, &s), 0);
    freeReplyObject(r);
    r = resp("$-1\r\n");
    assert_int_equal(rreply_streams(r, collect, &s), 0);
    freeReplyObject(r);
    r = resp("*0\r\n");
    assert_int_equal(rreply_streams(r, collect, &s), 0);
    freeReplyObject(r);
    assert_int_equal(s.n, 0);

    /* XREADGROUP of an entry deleted while pending: [id, nil]. */
    r = resp("*1\r\n*2\r\n$1\r\nq\r\n*2\r\n*2\r\n$3\r\n5-5\r\n*-1\r\n" E2);
    assert_int_equal(rreply_streams(r, collect, &s), 0);
    assert_string_equal(s.log, "q/5-5(deleted): q/2-0:a=v2, ");
    freeReplyObject(r);
}

static void test_xread_get(void **state)
{
    (void)state;
    redisReply *r = resp("*2\r\n$3\r\n1-1\r\n*4\r\n$1\r\na\r\n$2\r\nv1\r\n$1\r\nb\r\n$0\r\n\r\n");
    rreply_entry e;
    memset(&e, 0, sizeof e);
    e.fields = r->element[1]->element;
    e.nfields = 2;
    size_t len = 99;
    const char *v = rreply_get(&e, "a", &len);
    assert_non_null(v);
    assert_int_equal(len, 2);
    assert_memory_equal(v, "v1", 2);
    v = rreply_get(&e, "b", &len);
    assert_non_null(v);
    assert_int_equal(len, 0);
    assert_null(rreply_get(&e, "v1", &len)); /* values are not names */
    assert_int_equal(len, 0);
    assert_null(rreply_get(&e, "c", &len));
    freeReplyObject(r);
}

static void test_xrange(void **state)
{
    seen s = { 0 };
    (void)state;
    redisReply *r = resp("*3\r\n" E1 E2 E3);
    assert_int_equal(rreply_entries(r, collect, &s), 0);
    assert_string_equal(s.log, "-/1-1:a=v1,b=, -/2-0:a=v2, -/10-99: ");
    freeReplyObject(r);
    r = resp("*0\r\n");
    assert_int_equal(rreply_entries(r, collect, &s), 0);
    freeReplyObject(r);
    assert_int_equal(s.n, 3);
}

static void test_xautoclaim(void **state)
{
    seen s = { 0 };
    rid next = { 9, 9 };
    (void)state;
    /* Redis 7: [next, entries, deleted]. */
    redisReply *r = resp("*3\r\n$4\r\n42-1\r\n*2\r\n" E1 E2 "*2\r\n$3\r\n3-0\r\n$3\r\n4-7\r\n");
    assert_int_equal(rreply_autoclaim(r, &next, collect, collect_deleted, &s), 0);
    assert_true(next.ms == 42 && next.seq == 1);
    assert_int_equal(s.n, 2);
    assert_int_equal(s.deleted, 2);
    assert_string_equal(s.log, "-/1-1:a=v1,b=, -/2-0:a=v2, del 3-0 del 4-7 ");
    freeReplyObject(r);
    /* Redis 6.2: [next, entries]; the scan is over at 0-0. */
    memset(&s, 0, sizeof s);
    r = resp("*2\r\n$3\r\n0-0\r\n*0\r\n");
    assert_int_equal(rreply_autoclaim(r, &next, collect, collect_deleted, &s), 0);
    assert_true(next.ms == 0 && next.seq == 0);
    assert_int_equal(s.n + s.deleted, 0);
    freeReplyObject(r);
    /* A bad deleted id is caught before any callback ran. */
    r = resp("*3\r\n$3\r\n0-0\r\n*1\r\n" E1 "*1\r\n$1\r\nx\r\n");
    next.ms = 9;
    assert_int_equal(rreply_autoclaim(r, &next, collect, collect_deleted, &s), -EPROTO);
    assert_int_equal(s.n, 0);
    assert_true(next.ms == 9);
    freeReplyObject(r);
}

static void test_bad_shapes(void **state)
{
    static const char *bad_streams[] = {
        "+OK\r\n", ":1\r\n", "-ERR x\r\n", "$2\r\nab\r\n",
        "*1\r\n$1\r\ns\r\n",                                  /* not [key, entries] */
        "*1\r\n*1\r\n$1\r\ns\r\n",                            /* a pair of one */
        "*1\r\n*3\r\n$1\r\ns\r\n*0\r\n*0\r\n",                /* a pair of three */
        "*1\r\n*2\r\n:1\r\n*0\r\n",                           /* key not a string */
        "*1\r\n*2\r\n$1\r\ns\r\n$1\r\nx\r\n",                 /* entries not an array */
        "*1\r\n*2\r\n$1\r\ns\r\n*1\r\n$3\r\n1-1\r\n",         /* entry not a pair */
        "*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-x\r\n*0\r\n",   /* bad id */
        "*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n:11\r\n*0\r\n",         /* id not a string */
        "*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*1\r\n$1\r\na\r\n", /* odd fields */
        "*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\na\r\n:1\r\n", /* int value */
        "*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-1\r\n$1\r\na\r\n", /* fields a string */
        "*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*3\r\n$3\r\n1-1\r\n*0\r\n*0\r\n", /* entry of three */
    };
    seen s = { 0 };
    (void)state;
    for (size_t i = 0; i < sizeof bad_streams / sizeof bad_streams[0]; i++) {
        redisReply *r = resp(bad_streams[i]);
        if (rreply_streams(r, collect, &s) != -EPROTO)
            fail_msg("stream reply %zu accepted", i);
        freeReplyObject(r);
    }
    /* A good entry before a bad one: nothing was called. */
    redisReply *r = resp("*2\r\n*2\r\n$1\r\ns\r\n*1\r\n" E1 "*2\r\n$1\r\nt\r\n:0\r\n");
    assert_int_equal(rreply_streams(r, collect, &s), -EPROTO);
    freeReplyObject(r);
    assert_int_equal(s.n, 0);
    assert_int_equal(rreply_streams(NULL, collect, &s), -EPROTO);

    static const char *bad_ranges[] = { "*-1\r\n", "+OK\r\n", "*1\r\n:1\r\n", "*2\r\n" E1 ":3\r\n" };
    for (size_t i = 0; i < sizeof bad_ranges / sizeof bad_ranges[0]; i++) {
        r = resp(bad_ranges[i]);
        if (rreply_entries(r, collect, &s) != -EPROTO)
            fail_msg("range reply %zu accepted", i);
        freeReplyObject(r);
    }
    static const char *bad_claims[] = {
        "*-1\r\n", "*1\r\n$3\r\n0-0\r\n", "*4\r\n$3\r\n0-0\r\n*0\r\n*0\r\n*0\r\n",
        "*2\r\n$1\r\n0\r\n*0\r\n", "*2\r\n:0\r\n*0\r\n", "*2\r\n$3\r\n0-0\r\n:0\r\n",
        "*3\r\n$3\r\n0-0\r\n*0\r\n:0\r\n", "*3\r\n$3\r\n0-0\r\n*0\r\n*1\r\n:1\r\n",
    };
    for (size_t i = 0; i < sizeof bad_claims / sizeof bad_claims[0]; i++) {
        rid next;
        r = resp(bad_claims[i]);
        if (rreply_autoclaim(r, &next, collect, collect_deleted, &s) != -EPROTO)
            fail_msg("autoclaim reply %zu accepted", i);
        freeReplyObject(r);
    }
    assert_int_equal(s.n + s.deleted, 0);
}

static void test_scalars(void **state)
{
    long long v;
    const char *str;
    size_t len;
    (void)state;
    redisReply *r = resp(":-42\r\n");
    assert_int_equal(rreply_integer(r, &v), 0);
    assert_true(v == -42);
    assert_int_equal(rreply_string(r, &str, &len), -EPROTO);
    assert_false(rreply_is_ok(r));
    assert_null(rreply_error(r));
    freeReplyObject(r);
    r = resp("+OK\r\n");
    assert_true(rreply_is_ok(r));
    assert_int_equal(rreply_string(r, &str, &len), 0);
    assert_int_equal(len, 2);
    assert_int_equal(rreply_integer(r, &v), -EPROTO);
    freeReplyObject(r);
    r = resp("+OKAY\r\n");
    assert_false(rreply_is_ok(r));
    freeReplyObject(r);
    r = resp("$2\r\nOK\r\n"); /* a bulk OK is not the status */
    assert_false(rreply_is_ok(r));
    freeReplyObject(r);
    r = resp("-BUSYGROUP Consumer Group name already exists\r\n");
    assert_string_equal(rreply_error(r), "BUSYGROUP Consumer Group name already exists");
    assert_int_equal(rreply_string(r, &str, &len), -EPROTO);
    freeReplyObject(r);
    assert_false(rreply_is_ok(NULL));
    assert_null(rreply_error(NULL));
    assert_int_equal(rreply_integer(NULL, &v), -EPROTO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rid),
        cmocka_unit_test(test_xread),
        cmocka_unit_test(test_xread_get),
        cmocka_unit_test(test_xrange),
        cmocka_unit_test(test_xautoclaim),
        cmocka_unit_test(test_bad_shapes),
        cmocka_unit_test(test_scalars),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
