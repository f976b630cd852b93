/* Unit tests: the entry codec of the bus across instances (bus_rcodec.h). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "supervisor/bus_rcodec.h"

static rc_entry publish(void)
{
    rc_entry e = {.kind = RC_PUBLISH, .origin = 0x0102030405060708ull, .seq = 42,
                  .pid = 4242, .name = "room:lobby", .name_len = 10,
                  .data = (const unsigned char *)"hello", .len = 5};
    return e;
}

static void test_round_trip(void **state)
{
    unsigned char buf[128];
    rc_entry e = publish(), d;
    (void)state;
    long n = rc_encode(&e, buf, sizeof buf);
    assert_int_equal(n, RC_HEADER_LEN + 10 + 5);
    assert_int_equal((size_t)n, rc_encoded_len(&e));
    assert_int_equal(buf[0], RC_VERSION);
    assert_int_equal(buf[2], 0); /* flags */
    assert_int_equal(buf[3], 0x01); /* big-endian origin */
    assert_int_equal(buf[10], 0x08);
    assert_int_equal(rc_decode(buf, (size_t)n, 1024, &d), 0);
    assert_int_equal(d.kind, RC_PUBLISH);
    assert_true(d.origin == e.origin);
    assert_true(d.seq == 42);
    assert_true(d.target == 0);
    assert_int_equal(d.pid, 4242);
    assert_int_equal(d.name_len, 10);
    assert_memory_equal(d.name, "room:lobby", 10);
    assert_int_equal(d.len, 5);
    assert_memory_equal(d.data, "hello", 5);
    assert_ptr_equal(d.data, buf + RC_HEADER_LEN + 10); /* points into the input */
}

static void test_every_kind_round_trips(void **state)
{
    unsigned char buf[128];
    (void)state;
    const rc_entry ok[] = {
        {.kind = RC_BROADCAST, .origin = 1, .seq = 1, .data = (const unsigned char *)"x", .len = 1},
        {.kind = RC_BROADCAST, .origin = 1, .seq = 1}, /* empty message */
        {.kind = RC_SEND_NAME, .origin = 1, .seq = 2, .target = 9, .name = "nick:a", .name_len = 6,
         .data = (const unsigned char *)"hi", .len = 2},
        {.kind = RC_NO_NAME, .origin = 1, .seq = 3, .target = 9, .pid = 7, .name = "nick:a", .name_len = 6},
        {.kind = RC_JOIN, .origin = 1, .seq = 4, .pid = 7, .name = "room:a", .name_len = 6},
        {.kind = RC_LEAVE, .origin = 1, .seq = 5, .pid = 7, .name = "room:a", .name_len = 6},
        {.kind = RC_CLAIM, .origin = 1, .seq = 6, .pid = 7, .name = "nick:a", .name_len = 6},
        {.kind = RC_RELEASE, .origin = 1, .seq = 7, .pid = 7, .name = "nick:a", .name_len = 6},
        {.kind = RC_WILL, .origin = 1, .seq = 0, .pid = 7, .name = "room:a", .name_len = 6,
         .data = (const unsigned char *)"bye", .len = 3},
        {.kind = RC_WILL, .origin = 1, .seq = 3, .pid = 7}, /* cleared */
        {.kind = RC_WILL_DONE, .origin = 1, .seq = 3, .pid = 7},
        {.kind = RC_PUBLISH, .flags = RC_F_FIRST, .origin = 1, .seq = 77, .name = "t", .name_len = 1},
        {.kind = RC_GONE, .origin = 1, .seq = 8, .target = 5},
        {.kind = RC_PROBE, .origin = 1, .seq = 9},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        rc_entry d;
        long n = rc_encode(&ok[i], buf, sizeof buf);
        assert_true(n >= RC_HEADER_LEN);
        assert_int_equal(rc_decode(buf, (size_t)n, 1024, &d), 0);
        assert_int_equal(d.kind, ok[i].kind);
        assert_int_equal(d.flags, ok[i].flags);
        assert_true(d.seq == ok[i].seq);
        assert_int_equal(d.pid, ok[i].pid);
        assert_int_equal(d.len, ok[i].len);
        assert_int_equal(d.name_len, ok[i].name_len);
        assert_true(d.target == ok[i].target);
    }
}

static void test_invalid_entries_refused_on_encode(void **state)
{
    unsigned char buf[128];
    (void)state;
    const rc_entry bad[] = {
        {.kind = RC_PUBLISH, .origin = 1, .seq = 1},                            /* no topic */
        {.kind = RC_PUBLISH, .origin = 0, .seq = 1, .name = "t", .name_len = 1}, /* no origin */
        {.kind = RC_PUBLISH, .origin = 1, .seq = 0, .name = "t", .name_len = 1}, /* seq 0 */
        {.kind = RC_SEND_NAME, .origin = 1, .seq = 1, .name = "n", .name_len = 1}, /* no target */
        {.kind = RC_JOIN, .origin = 1, .seq = 1, .name = "t", .name_len = 1,
         .data = (const unsigned char *)"x", .len = 1},                           /* data on a join */
        {.kind = RC_BROADCAST, .origin = 1, .seq = 1, .name = "t", .name_len = 1}, /* a topic */
        {.kind = RC_GONE, .origin = 1, .seq = 1},                               /* gone whom */
        {.kind = RC_WILL, .origin = 1, .seq = 1, .data = (const unsigned char *)"x", .len = 1}, /* no topic */
        {.kind = RC_WILL_DONE, .origin = 1, .seq = 1, .name = "t", .name_len = 1},
        {.kind = RC_PUBLISH, .flags = 2, .origin = 1, .seq = 1, .name = "t", .name_len = 1}, /* unknown flag */
        {.kind = 0, .origin = 1, .seq = 1},
        {.kind = RC_KIND_MAX + 1, .origin = 1, .seq = 1},
        {.kind = RC_PUBLISH, .origin = 1, .seq = 1, .name = "t", .name_len = RC_NAME_MAX + 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(rc_encode(&bad[i], buf, sizeof buf), -EINVAL);
    rc_entry e = publish();
    assert_int_equal(rc_encode(&e, buf, RC_HEADER_LEN + 14), -EMSGSIZE);
}

static void test_malformed_input_refused(void **state)
{
    unsigned char buf[128];
    rc_entry e = publish(), d;
    (void)state;
    long n = rc_encode(&e, buf, sizeof buf);

    /* Every truncation of the header, or into the name, is refused. */
    for (long cut = 0; cut < RC_HEADER_LEN + 10; cut++)
        assert_int_equal(rc_decode(buf, (size_t)cut, 1024, &d), -EPROTO);
    /* Cut into the data: a shorter message, still valid. */
    assert_int_equal(rc_decode(buf, (size_t)n - 1, 1024, &d), 0);
    assert_int_equal(d.len, 4);
    /* Data over the bound. */
    assert_int_equal(rc_decode(buf, (size_t)n, 4, &d), -EPROTO);
    assert_int_equal(rc_decode(buf, (size_t)n, 5, &d), 0);

    unsigned char c[128];
    memcpy(c, buf, (size_t)n);
    c[0] = 2; /* version */
    assert_int_equal(rc_decode(c, (size_t)n, 1024, &d), -EPROTO);
    memcpy(c, buf, (size_t)n);
    c[1] = 99; /* kind */
    assert_int_equal(rc_decode(c, (size_t)n, 1024, &d), -EPROTO);
    memcpy(c, buf, (size_t)n);
    c[31] = 0xff; /* name length past the end */
    assert_int_equal(rc_decode(c, (size_t)n, 1024, &d), -EPROTO);
    memcpy(c, buf, (size_t)n);
    memset(c + 3, 0, 8); /* origin 0 */
    assert_int_equal(rc_decode(c, (size_t)n, 1024, &d), -EPROTO);
    memcpy(c, buf, (size_t)n);
    memset(c + 11, 0, 8); /* seq 0 on a publish */
    assert_int_equal(rc_decode(c, (size_t)n, 1024, &d), -EPROTO);
    memcpy(c, buf, (size_t)n);
    c[26] = 1; /* a target on a publish */
    assert_int_equal(rc_decode(c, (size_t)n, 1024, &d), -EPROTO);
    memcpy(c, buf, (size_t)n);
    c[2] = 0x80; /* an unknown flag */
    assert_int_equal(rc_decode(c, (size_t)n, 1024, &d), -EPROTO);
    c[2] = RC_F_FIRST;
    assert_int_equal(rc_decode(c, (size_t)n, 1024, &d), 0);
    assert_int_equal(d.flags, RC_F_FIRST);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_every_kind_round_trips),
        cmocka_unit_test(test_invalid_entries_refused_on_encode),
        cmocka_unit_test(test_malformed_input_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
