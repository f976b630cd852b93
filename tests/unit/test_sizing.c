/* Unit tests: the prefork sizing decision (src/server/sizing.c), a pure
 * function of counts and times. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "server/sizing.h"

static const sizing_cfg cfg = {4, 16, 10.0};

static sizing_load load_at(double now, unsigned idle, unsigned busy, unsigned starting)
{
    sizing_load l = {idle, busy, starting, 0, 0, now, 0};
    return l;
}

/* At start nothing runs: min workers, all at once. */
static void test_start_fills_to_min(void **state)
{
    sizing_ramp r = {0, 0};
    sizing_load l = load_at(100, 0, 0, 0);
    sizing_plan p = sizing_decide(&cfg, &r, &l);
    (void)state;
    assert_int_equal(p.start, 4);
    assert_int_equal(p.retire, 0);
}

/* A worker died: its replacement at once, even with the others busy. */
static void test_death_is_replaced_at_once(void **state)
{
    sizing_ramp r = {8, 105};
    sizing_load l = load_at(100, 0, 3, 0);
    sizing_plan p = sizing_decide(&cfg, &r, &l);
    (void)state;
    assert_int_equal(p.start, 1);
}

/* A crash loop holds every start back until the backoff ends. */
static void test_backoff_holds_starts(void **state)
{
    sizing_ramp r = {0, 0};
    sizing_load l = load_at(100, 0, 2, 0);
    sizing_plan p;
    (void)state;
    l.hold_until = 100.4;
    p = sizing_decide(&cfg, &r, &l);
    assert_int_equal(p.start, 0);
    assert_true(p.recheck_at == 100.4);
    l.now = 100.4;
    p = sizing_decide(&cfg, &r, &l);
    assert_int_equal(p.start, 2);
}

/* Every worker busy: 1, then 2, 4, 8 a second apart, never past max,
 * never two rounds within a second. */
static void test_ramp_doubles_once_a_second_up_to_max(void **state)
{
    sizing_ramp r = {0, 0};
    unsigned busy = 4, want[] = {1, 2, 4, 5};
    double now = 100;
    (void)state;
    for (int i = 0; i < 4; i++) {
        sizing_load l = load_at(now, 0, busy, 0);
        sizing_plan p = sizing_decide(&cfg, &r, &l);
        assert_int_equal(p.start, want[i]);
        busy += p.start;
        /* Half a second later, still all busy: nothing more yet. */
        l = load_at(now + 0.5, 0, busy, 0);
        p = sizing_decide(&cfg, &r, &l);
        assert_int_equal(p.start, 0);
        if (busy < cfg.max)
            assert_true(p.recheck_at == now + SIZING_ROUND_S);
        now += SIZING_ROUND_S;
    }
    assert_int_equal(busy, 16);
    sizing_load l = load_at(now + 5, 0, 16, 0);
    sizing_plan p = sizing_decide(&cfg, &r, &l);
    assert_int_equal(p.start, 0);
    assert_true(p.recheck_at == 0);
}

/* The ramp stops at SIZING_RAMP_MAX a round. */
static void test_ramp_is_capped(void **state)
{
    sizing_cfg big = {1, 10000, 10.0};
    sizing_ramp r = {0, 0};
    unsigned busy = 1, last = 0;
    (void)state;
    for (int i = 0; i < 12; i++) {
        sizing_load l = load_at(100 + i, 0, busy, 0);
        sizing_plan p = sizing_decide(&big, &r, &l);
        assert_true(p.start >= 1 && p.start <= SIZING_RAMP_MAX);
        busy += p.start;
        last = p.start;
    }
    assert_int_equal(last, SIZING_RAMP_MAX);
}

/* Workers still starting count as capacity: no new round until they run. */
static void test_starting_workers_hold_the_ramp(void **state)
{
    sizing_ramp r = {0, 0};
    sizing_load l = load_at(100, 0, 5, 2);
    sizing_plan p = sizing_decide(&cfg, &r, &l);
    (void)state;
    assert_int_equal(p.start, 0);
    assert_int_equal(p.retire, 0);
}

/* An idle worker resets the ramp to one. */
static void test_idle_worker_resets_the_ramp(void **state)
{
    sizing_ramp r = {8, 0};
    sizing_load l = load_at(100, 1, 7, 0);
    sizing_plan p = sizing_decide(&cfg, &r, &l);
    (void)state;
    assert_int_equal(p.start, 0);
    l = load_at(101, 0, 8, 0);
    p = sizing_decide(&cfg, &r, &l);
    assert_int_equal(p.start, 1);
}

/* Idle long enough and above min: retired, never below min, and never
 * a busy one (only idle_long counts). */
static void test_retire_down_to_min_only(void **state)
{
    sizing_ramp r = {0, 0};
    sizing_load l = load_at(100, 10, 0, 0);
    sizing_plan p;
    (void)state;
    l.idle_long = 10;
    p = sizing_decide(&cfg, &r, &l);
    assert_int_equal(p.retire, 6);
    assert_int_equal(p.start, 0);

    l = load_at(100, 3, 9, 0); /* 12 workers, 3 idle long, 9 busy */
    l.idle_long = 3;
    p = sizing_decide(&cfg, &r, &l);
    assert_int_equal(p.retire, 3);

    l = load_at(100, 4, 0, 0);
    l.idle_long = 4;
    p = sizing_decide(&cfg, &r, &l);
    assert_int_equal(p.retire, 0);
}

/* Idle above min but not long enough: nothing now, a recheck when the
 * next one will be. */
static void test_recheck_when_the_next_idle_expires(void **state)
{
    sizing_ramp r = {0, 0};
    sizing_load l = load_at(100, 6, 2, 0);
    sizing_plan p;
    (void)state;
    l.idle_long = 1;
    l.idle_long_next = 103.5;
    p = sizing_decide(&cfg, &r, &l);
    assert_int_equal(p.retire, 1);
    assert_true(p.recheck_at == 103.5);

    l.idle_long = 0;
    l.idle_long_next = 0;
    l.idle = 1;
    l.busy = 3; /* at min: nothing to recheck */
    p = sizing_decide(&cfg, &r, &l);
    assert_int_equal(p.retire, 0);
    assert_true(p.recheck_at == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_start_fills_to_min),
        cmocka_unit_test(test_death_is_replaced_at_once),
        cmocka_unit_test(test_backoff_holds_starts),
        cmocka_unit_test(test_ramp_doubles_once_a_second_up_to_max),
        cmocka_unit_test(test_ramp_is_capped),
        cmocka_unit_test(test_starting_workers_hold_the_ramp),
        cmocka_unit_test(test_idle_worker_resets_the_ramp),
        cmocka_unit_test(test_retire_down_to_min_only),
        cmocka_unit_test(test_recheck_when_the_next_idle_expires),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
