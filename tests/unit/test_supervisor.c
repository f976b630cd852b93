/* Unit tests: the supervisor reaps real children, reports their status,
 * and shuts down with TERM then KILL. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

#include "process/process.h"
#include "supervisor/supervisor.h"

#define MAXC 8

typedef struct result {
    int n;
    pid_t pid[MAXC];
    int status[MAXC];
    void *data[MAXC];
    int shutdown_calls;
} result;

static void on_exit_cb(sup *s, pid_t pid, int ws, void *data, void *arg)
{
    result *r = arg;
    (void)s;
    if (r->n < MAXC) {
        r->pid[r->n] = pid;
        r->status[r->n] = ws;
        r->data[r->n] = data;
    }
    r->n++;
}

static void on_shutdown_cb(sup *s, void *arg)
{
    (void)s;
    ((result *)arg)->shutdown_calls++;
}

static void stop_all(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    sup_shutdown(w->data);
    (void)loop;
}

static void failsafe(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
    fail_msg("supervisor loop did not finish in time");
}

static pid_t spawn(sup *s, void *data, int how)
{
    proc_fork_opts o;
    memset(&o, 0, sizeof o);
    pid_t pid = proc_fork(&o);
    if (pid == 0) {
        if (how == -1) {        /* ignore SIGTERM: needs the KILL */
            signal(SIGTERM, SIG_IGN);
            for (;;)
                pause();
        }
        if (how == -2)          /* wait to be told to go */
            for (;;)
                pause();
        _exit(how);
    }
    assert_true(pid > 0);
    assert_int_equal(sup_reserve(s), 0);
    assert_int_equal(sup_add(s, pid, data), 0);
    return pid;
}

/* What every supervisor here starts from: four children at most, quiet,
 * the callbacks above reporting to arg. */
static void base_config(sup_config *cfg, void *arg, double grace)
{
    static sf_logger quiet; /* no callbacks: nothing is logged */
    memset(cfg, 0, sizeof *cfg);
    cfg->max_children = 4;
    cfg->grace = grace;
    cfg->kill_grace = 0.2;
    cfg->on_exit = on_exit_cb;
    cfg->on_shutdown = on_shutdown_cb;
    cfg->arg = arg;
    cfg->log = &quiet;
}

/* A supervisor on its own loop, what its callbacks saw, and the two
 * timers of a run: stop shuts the supervisor down, guard fails the test
 * if the loop does not finish. */
typedef struct fixture {
    struct ev_loop *loop;
    sup s;
    result r;
    ev_timer stop, guard;
} fixture;

/* A new loop with the guard armed (guard_s seconds); the supervisor is
 * the caller's to init on f->loop. */
static void fixture_open(fixture *f, double guard_s)
{
    memset(f, 0, sizeof *f);
    f->loop = ev_loop_new(EVFLAG_AUTO);
    ev_timer_init(&f->guard, failsafe, guard_s, 0.);
    ev_timer_start(f->loop, &f->guard);
}

/* The usual fixture: a supervisor with base_config reporting to f->r. */
static void fixture_setup(fixture *f, double grace)
{
    sup_config cfg;
    fixture_open(f, 10.);
    base_config(&cfg, &f->r, grace);
    assert_int_equal(sup_init(&f->s, f->loop, &cfg), 0);
}

/* Runs the supervisor until it has shut down, told to after_s seconds. */
static void fixture_run_until_shutdown(fixture *f, double after_s)
{
    ev_timer_init(&f->stop, stop_all, after_s, 0.);
    f->stop.data = &f->s;
    ev_timer_start(f->loop, &f->stop);
    sup_run(&f->s);
}

static void fixture_teardown(fixture *f)
{
    ev_timer_stop(f->loop, &f->guard);
    ev_timer_stop(f->loop, &f->stop);
    sup_fini(&f->s);
    ev_loop_destroy(f->loop);
}

static void test_reap_and_decode(void **state)
{
    fixture f;
    int tags[3];
    (void)state;

    fixture_setup(&f, 5.0);
    pid_t p0 = spawn(&f.s, &tags[0], 0);
    pid_t p1 = spawn(&f.s, &tags[1], 7);
    assert_int_equal(f.s.count, 2);
    /* Shut down after both have exited on their own: the callback order
     * is the reaping order, so match by pid. */
    fixture_run_until_shutdown(&f, 0.3);
    assert_int_equal(f.r.n, 2);
    assert_int_equal(f.r.shutdown_calls, 1);
    for (int i = 0; i < 2; i++) {
        assert_true(WIFEXITED(f.r.status[i]));
        if (f.r.pid[i] == p0) {
            assert_int_equal(WEXITSTATUS(f.r.status[i]), 0);
            assert_ptr_equal(f.r.data[i], &tags[0]);
        } else {
            assert_int_equal(f.r.pid[i], p1);
            assert_int_equal(WEXITSTATUS(f.r.status[i]), 7);
            assert_ptr_equal(f.r.data[i], &tags[1]);
        }
    }
    assert_int_equal(f.s.count, 0);
    fixture_teardown(&f);
}

/* Shutdown with no grace: a child that ignores SIGTERM gets SIGKILL after
 * kill_grace, one that obeys dies of SIGTERM; the table bound holds. */
static void test_shutdown_escalates(void **state)
{
    fixture f;
    (void)state;

    fixture_setup(&f, 0.0);
    pid_t stubborn = spawn(&f.s, NULL, -1);
    pid_t polite = spawn(&f.s, NULL, -2);
    spawn(&f.s, NULL, -2);
    spawn(&f.s, NULL, -2);
    assert_true(sup_full(&f.s));
    assert_int_equal(sup_reserve(&f.s), -ENOSPC);
    assert_int_equal(sup_add(&f.s, 999999, NULL), -ENOSPC);
    fixture_run_until_shutdown(&f, 0.2); /* let the children set up */
    assert_int_equal(f.r.n, 4);
    for (int i = 0; i < 4; i++) {
        assert_true(WIFSIGNALED(f.r.status[i]));
        if (f.r.pid[i] == stubborn)
            assert_int_equal(WTERMSIG(f.r.status[i]), SIGKILL);
        if (f.r.pid[i] == polite)
            assert_int_equal(WTERMSIG(f.r.status[i]), SIGTERM);
    }
    fixture_teardown(&f);
}

/* sup_get_stats without a spawner: the children registered, and reaped. */
static void test_stats_count_the_children(void **state)
{
    fixture f;
    sup_stats st;
    (void)state;

    fixture_setup(&f, 0.0);
    sup_get_stats(&f.s, &st);
    assert_int_equal(st.children, 0);
    assert_int_equal(st.spawning, 0);
    assert_int_equal(st.max_children, 4);
    assert_int_equal(st.spawner_pid, 0);
    assert_int_equal(st.spawner_restarts, 0);
    spawn(&f.s, NULL, -2);
    spawn(&f.s, NULL, -2);
    sup_get_stats(&f.s, &st);
    assert_int_equal(st.children, 2);
    fixture_run_until_shutdown(&f, 0.);
    assert_int_equal(f.r.n, 2);
    sup_get_stats(&f.s, &st);
    assert_int_equal(st.children, 0);
    fixture_teardown(&f);
}

/* sup_child_data: the owner's pointer for a live child, NULL for any
 * other pid and once the child is reaped. */
static void test_child_data_by_pid(void **state)
{
    fixture f;
    int tags[2];
    (void)state;

    fixture_setup(&f, 0.0);
    pid_t p0 = spawn(&f.s, &tags[0], -2);
    pid_t p1 = spawn(&f.s, &tags[1], -2);
    assert_ptr_equal(sup_child_data(&f.s, p0), &tags[0]);
    assert_ptr_equal(sup_child_data(&f.s, p1), &tags[1]);
    assert_null(sup_child_data(&f.s, getpid()));
    assert_null(sup_child_data(&f.s, 0));
    fixture_run_until_shutdown(&f, 0.);
    assert_int_equal(f.r.n, 2);
    assert_null(sup_child_data(&f.s, p0));
    assert_null(sup_child_data(&f.s, p1));
    fixture_teardown(&f);
}

/* What a spawned child runs: waits to be told to go. */
static void wait_child(const void *blob, size_t len, int nfds)
{
    (void)blob;
    (void)len;
    (void)nfds;
    for (;;)
        pause();
}

typedef struct spawner_watch {
    result r;           /* first: cfg.arg is the watch, on_exit_cb's too */
    sup *s;
    pid_t first;        /* the spawner killed */
    int started;        /* on_started calls */
    sup_stats at_start; /* sup_get_stats in on_started */
} spawner_watch;

static void on_started_cb(sup *s, pid_t pid, void *data, void *arg)
{
    spawner_watch *w = arg;
    (void)pid;
    (void)data;
    w->started++;
    sup_get_stats(s, &w->at_start);
}

/* Breaks the loop once a spawner other than the killed one runs. */
static void poll_new_spawner(struct ev_loop *loop, ev_timer *t, int revents)
{
    spawner_watch *w = t->data;
    sup_stats st;
    (void)revents;
    sup_get_stats(w->s, &st);
    if (st.spawner_restarts > 0 && st.spawner_pid > 0 && st.spawner_pid != w->first)
        ev_break(loop, EVBREAK_ONE);
}

/* With a spawner: its pid, a fork request until it is answered, and a
 * restart counted when the spawner is killed. */
static void test_stats_follow_the_spawner(void **state)
{
    fixture f;
    sup_config cfg;
    sup_stats st;
    spawner_watch w;
    ev_timer poll;
    (void)state;

    memset(&w, 0, sizeof w);
    fixture_open(&f, 20.);
    base_config(&cfg, &w, 0.0);
    cfg.on_started = on_started_cb;
    cfg.spawn_child = wait_child;
    assert_int_equal(sup_init(&f.s, f.loop, &cfg), 0);
    w.s = &f.s;

    sup_get_stats(&f.s, &st);
    assert_true(st.spawner_pid > 0);
    w.first = st.spawner_pid;
    assert_int_equal(sup_spawn(&f.s, "", 0, (int[1]){-1}, 0, NULL), 0); /* no descriptors */
    sup_get_stats(&f.s, &st);
    assert_int_equal(st.spawning, 1);
    assert_int_equal(st.children, 0);
    while (!w.started)
        ev_run(f.loop, EVRUN_ONCE);
    assert_int_equal(w.at_start.spawning, 0);
    assert_int_equal(w.at_start.children, 1);

    /* The spawner dies: its child goes with it, another spawner starts. */
    assert_int_equal(kill(w.first, SIGKILL), 0);
    ev_timer_init(&poll, poll_new_spawner, 0.01, 0.01);
    poll.data = &w;
    ev_timer_start(f.loop, &poll);
    ev_run(f.loop, 0);
    ev_timer_stop(f.loop, &poll);
    sup_get_stats(&f.s, &st);
    assert_int_equal(st.spawner_restarts, 1);
    assert_true(st.spawner_pid > 0 && st.spawner_pid != w.first);

    fixture_run_until_shutdown(&f, 0.);
    assert_int_equal(w.r.n, 1); /* the child went with the first spawner */
    sup_get_stats(&f.s, &st);
    assert_int_equal(st.children, 0);
    fixture_teardown(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reap_and_decode),
        cmocka_unit_test(test_shutdown_escalates),
        cmocka_unit_test(test_stats_count_the_children),
        cmocka_unit_test(test_child_data_by_pid),
        cmocka_unit_test(test_stats_follow_the_spawner),
    };
    return cmocka_run_group_tests_name("supervisor", tests, NULL, NULL);
}
