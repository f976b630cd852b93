/* Unit tests: the dedup window of the bus across instances (bus_dedup.h). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "supervisor/bus_dedup.h"

#define S(s) s, sizeof s - 1

static void test_new_dup_gap(void **state)
{
    bus_dedup d;
    uint64_t missed = 99;
    (void)state;
    assert_int_equal(bus_dedup_init(&d, 0), 0);
    /* The first seen starts the count, whatever it is: reading starts mid-stream. */
    assert_int_equal(bus_dedup_check(&d, 7, S("sf:t:a"), 57, 0, &missed), DEDUP_NEW);
    assert_true(missed == 0);
    assert_int_equal(bus_dedup_check(&d, 7, S("sf:t:a"), 58, 0, &missed), DEDUP_NEW);
    assert_true(missed == 0);
    /* A resend: at or below the highest. */
    assert_int_equal(bus_dedup_check(&d, 7, S("sf:t:a"), 58, 0, &missed), DEDUP_DUP);
    assert_int_equal(bus_dedup_check(&d, 7, S("sf:t:a"), 3, 0, &missed), DEDUP_DUP);
    /* A gap: new, and says how many. */
    assert_int_equal(bus_dedup_check(&d, 7, S("sf:t:a"), 62, 0, &missed), DEDUP_NEW);
    assert_true(missed == 3);
    assert_int_equal(bus_dedup_check(&d, 7, S("sf:t:a"), 61, 0, &missed), DEDUP_DUP);
    /* A count started again higher up: new, no gap; a resend of it is a duplicate. */
    assert_int_equal(bus_dedup_check(&d, 7, S("sf:t:a"), 1000, 1, &missed), DEDUP_NEW);
    assert_true(missed == 0);
    assert_int_equal(bus_dedup_check(&d, 7, S("sf:t:a"), 1000, 1, &missed), DEDUP_DUP);
    assert_int_equal(bus_dedup_check(&d, 7, S("sf:t:a"), 1001, 0, &missed), DEDUP_NEW);
    assert_true(missed == 0);
    bus_dedup_fini(&d);
}

static void test_keys_are_origin_and_stream(void **state)
{
    bus_dedup d;
    uint64_t missed;
    (void)state;
    assert_int_equal(bus_dedup_init(&d, 0), 0);
    assert_int_equal(bus_dedup_check(&d, 7, S("sf:t:a"), 10, 0, &missed), DEDUP_NEW);
    /* The same seq from another origin, or on another stream: not a duplicate. */
    assert_int_equal(bus_dedup_check(&d, 8, S("sf:t:a"), 10, 0, &missed), DEDUP_NEW);
    assert_int_equal(bus_dedup_check(&d, 7, S("sf:t:b"), 10, 0, &missed), DEDUP_NEW);
    assert_int_equal(bus_dedup_check(&d, 7, S("sf:t:ab"), 1, 0, &missed), DEDUP_NEW);
    assert_int_equal(bus_dedup_count(&d), 4);
    assert_int_equal(bus_dedup_check(&d, 7, S("sf:t:a"), 10, 0, &missed), DEDUP_DUP);
    assert_int_equal(bus_dedup_check(&d, 8, S("sf:t:a"), 10, 0, &missed), DEDUP_DUP);
    bus_dedup_fini(&d);
}

static void test_invalid(void **state)
{
    bus_dedup d;
    uint64_t missed;
    char long_stream[BUS_DEDUP_STREAM_MAX + 1];
    (void)state;
    memset(long_stream, 'x', sizeof long_stream);
    assert_int_equal(bus_dedup_init(&d, 0), 0);
    assert_int_equal(bus_dedup_check(&d, 7, S("sf:x"), 0, 0, &missed), -EINVAL);
    assert_int_equal(bus_dedup_check(&d, 7, "", 0, 1, 0, &missed), -EINVAL);
    assert_int_equal(bus_dedup_check(&d, 7, long_stream, sizeof long_stream, 1, 0, &missed), -EINVAL);
    assert_int_equal(bus_dedup_check(&d, 7, long_stream, BUS_DEDUP_STREAM_MAX, 1, 0, &missed),
                     DEDUP_NEW);
    bus_dedup_fini(&d);
}

/* At the bound the least recently seen key goes, and starts over as new. */
static void test_bound_evicts_least_recently_seen(void **state)
{
    bus_dedup d;
    uint64_t missed;
    char s[32];
    (void)state;
    assert_int_equal(bus_dedup_init(&d, 4), 0);
    for (int i = 0; i < 4; i++) {
        int n = snprintf(s, sizeof s, "sf:t:%d", i);
        assert_int_equal(bus_dedup_check(&d, 1, s, (size_t)n, 5, 0, &missed), DEDUP_NEW);
    }
    /* Touch 0: now 1 is the least recently seen. */
    assert_int_equal(bus_dedup_check(&d, 1, S("sf:t:0"), 6, 0, &missed), DEDUP_NEW);
    assert_int_equal(bus_dedup_check(&d, 1, S("sf:t:new"), 1, 0, &missed), DEDUP_NEW);
    assert_int_equal(bus_dedup_count(&d), 4);
    assert_true(d.evicted == 1);
    /* 1 was evicted: its old seq passes as new; 0, 2, 3 are kept. */
    assert_int_equal(bus_dedup_check(&d, 1, S("sf:t:0"), 6, 0, &missed), DEDUP_DUP);
    assert_int_equal(bus_dedup_check(&d, 1, S("sf:t:2"), 5, 0, &missed), DEDUP_DUP);
    assert_int_equal(bus_dedup_check(&d, 1, S("sf:t:3"), 5, 0, &missed), DEDUP_DUP);
    assert_int_equal(bus_dedup_check(&d, 1, S("sf:t:1"), 5, 0, &missed), DEDUP_NEW);
    assert_true(d.evicted == 2);
    bus_dedup_fini(&d);
}

static void test_forget_origin(void **state)
{
    bus_dedup d;
    uint64_t missed;
    char s[32];
    (void)state;
    assert_int_equal(bus_dedup_init(&d, 64), 0);
    for (int i = 0; i < 20; i++) {
        int n = snprintf(s, sizeof s, "sf:t:%d", i);
        assert_int_equal(bus_dedup_check(&d, (uint64_t)(i % 2 + 1), s, (size_t)n, 5, 0, &missed),
                         DEDUP_NEW);
    }
    bus_dedup_forget(&d, 1);
    assert_int_equal(bus_dedup_count(&d), 10);
    for (int i = 0; i < 20; i++) {
        int n = snprintf(s, sizeof s, "sf:t:%d", i);
        /* origin 2's keys (odd i) are intact and findable after the moves */
        int want = i % 2 ? DEDUP_DUP : DEDUP_NEW;
        assert_int_equal(bus_dedup_check(&d, (uint64_t)(i % 2 + 1), s, (size_t)n, 5, 0, &missed), want);
    }
    bus_dedup_fini(&d);
}

/* Many keys against a plain model: the chains stay consistent through
 * evictions and moves. */
static void test_against_model(void **state)
{
    enum { KEYS = 200, MAX = 64 };
    bus_dedup d;
    uint64_t missed, model[KEYS] = {0};
    unsigned x = 12345;
    char s[32];
    (void)state;
    assert_int_equal(bus_dedup_init(&d, MAX), 0);
    for (int step = 0; step < 20000; step++) {
        x = x * 1103515245u + 12345u;
        int k = (int)((x >> 8) % 8); /* a working set of 8 of the keys: never evicted */
        int n = snprintf(s, sizeof s, "sf:t:%d", k);
        uint64_t seq = model[k] + 1 + ((x >> 20) % 3 == 0 ? 0 : (x >> 24) % 2);
        int rc = bus_dedup_check(&d, 3, s, (size_t)n, seq, 0, &missed);
        if (model[k] == 0 || seq > model[k]) {
            assert_int_equal(rc, DEDUP_NEW);
            if (model[k])
                assert_true(missed == seq - model[k] - 1);
            model[k] = seq;
        } else {
            assert_int_equal(rc, DEDUP_DUP);
        }
        /* now and then, a key outside the working set (may evict others outside it) */
        if (step % 7 == 0) {
            int o = 8 + (int)((x >> 4) % (KEYS - 8));
            n = snprintf(s, sizeof s, "sf:t:%d", o);
            (void)bus_dedup_check(&d, 3, s, (size_t)n, 1, 0, &missed);
        }
        assert_true(bus_dedup_count(&d) <= MAX);
    }
    bus_dedup_fini(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_dup_gap),
        cmocka_unit_test(test_keys_are_origin_and_stream),
        cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_bound_evicts_least_recently_seen),
        cmocka_unit_test(test_forget_origin),
        cmocka_unit_test(test_against_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
