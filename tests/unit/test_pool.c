/* Unit tests: the task pool's C API, with real forked workers and
 * commands (src/pool/). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sockfork.h>
#include "channel/frame.h"
#include "pool/pool_internal.h"

#define NTASKS_MAX 512

/* What on_done saw, per seq. */
typedef struct seen {
    int reports;
    int state;
    sf_status status;
    int timed_out, killed, spawn_error;
    unsigned attempts;
    char result[128];
    size_t result_len;
    int has_result;
    char out[128];
    size_t outlen;
    unsigned long long outtotal;
    int output_limited;
    int pid;
} seen;

static seen seen_by_seq[NTASKS_MAX + 1];
static char logged[8192];
static size_t logged_len;

static void reset_seen(void)
{
    memset(seen_by_seq, 0, sizeof seen_by_seq);
    logged_len = 0;
    logged[0] = '\0';
}

static void on_done(sf_pool *p, const sf_task_report *r, void *arg)
{
    seen *s;
    (void)p;
    (void)arg;
    assert_true(r->seq >= 1 && r->seq <= NTASKS_MAX);
    s = &seen_by_seq[r->seq];
    s->reports++;
    s->state = r->state;
    s->status = r->status;
    s->timed_out = r->timed_out;
    s->killed = r->killed;
    s->spawn_error = r->spawn_error;
    s->output_limited = r->output_limited;
    s->attempts = r->attempts;
    s->pid = r->pid;
    s->has_result = r->result != NULL;
    if (r->result && r->result_len < sizeof s->result) {
        memcpy(s->result, r->result, r->result_len);
        s->result_len = r->result_len;
    }
}

static void on_output(sf_pool *p, const sf_task_info *t, int stream, const char *buf, size_t n,
                      void *arg)
{
    seen *s = &seen_by_seq[t->seq];
    (void)p;
    (void)arg;
    (void)stream;
    s->outtotal += n;
    if (s->outlen + n < sizeof s->out) {
        memcpy(s->out + s->outlen, buf, n);
        s->outlen += n;
    }
}

static void log_line(void *arg, int level, const char *line)
{
    size_t n = strlen(line);
    (void)arg;
    (void)level;
    if (logged_len + n + 2 < sizeof logged) {
        memcpy(logged + logged_len, line, n);
        logged_len += n;
        logged[logged_len++] = '\n';
        logged[logged_len] = '\0';
    }
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    assert_non_null(d);
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

static sf_pool_opts base_opts(sf_task_cb task)
{
    sf_pool_opts o;
    sf_pool_opts_init(&o);
    o.jobs = 3;
    o.task = task;
    o.on_done = on_done;
    o.log = log_line;
    return o;
}

static void submit_numbers(sf_pool *p, unsigned long n)
{
    for (unsigned long i = 1; i <= n; i++) {
        unsigned long seq = 0;
        assert_int_equal(sf_pool_submit(p, &i, sizeof i, NULL, &seq), 0);
        assert_int_equal(seq, i);
    }
}

static unsigned long arg_number(const void *arg, size_t len)
{
    unsigned long v = 0;
    assert_int_equal(len, sizeof v);
    memcpy(&v, arg, sizeof v);
    return v;
}

/* A pool with options o, fed tasks 1..n (each its number as its argument),
 * not run yet; seen_by_seq reset. */
static sf_pool *new_numbers_pool(const sf_pool_opts *o, unsigned long n)
{
    sf_pool *p;

    reset_seen();
    assert_int_equal(sf_pool_new(&p, o), 0);
    assert_non_null(p);
    submit_numbers(p, n);
    return p;
}

/* Runs p to its end, which must be a clean one; st gets its counters. */
static void finish_run(sf_pool *p, sf_pool_stats *st)
{
    assert_int_equal(sf_pool_run(p), 0);
    sf_pool_get_stats(p, st);
}

/* new_numbers_pool run to its end. The caller checks and frees it. */
static sf_pool *run_numbers(const sf_pool_opts *o, unsigned long n, sf_pool_stats *st)
{
    sf_pool *p = new_numbers_pool(o, n);

    finish_run(p, st);
    return p;
}

/* Task seq was reported once, in the state given. */
static void assert_reported_once(unsigned long seq, int state)
{
    assert_int_equal(seen_by_seq[seq].reports, 1);
    assert_int_equal(seen_by_seq[seq].state, state);
}

/* Task seq's result is the text want, to the byte. */
static void assert_result_is(unsigned long seq, const char *want)
{
    assert_int_equal(seen_by_seq[seq].result_len, strlen(want));
    assert_memory_equal(seen_by_seq[seq].result, want, seen_by_seq[seq].result_len);
}

/* sigaction(sig) with handler h and an empty mask; the old one in old. */
static void set_handler(int sig, void (*h)(int), struct sigaction *old)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = h;
    sigaction(sig, &sa, old);
}

/* ------------------------------------------------------------ tasks */

/* Squares its number; fails with code 3 for multiples of 10. */
static int square(sf_task *t, const void *arg, size_t len, void *task_arg)
{
    unsigned long v = arg_number(arg, len);
    char text[64];
    int n;
    (void)task_arg;
    if (sf_task_seq(t) != v || sf_task_slot(t) < 1 || sf_task_slot(t) > 3)
        return 99;
    sf_task_progress(t, 1, 2);
    n = snprintf(text, sizeof text, "%lu", v * v);
    sf_task_result(t, text, (size_t)n);
    return v % 10 == 0 ? 3 : 0;
}

static void test_reused_workers_run_every_task_once(void **state)
{
    sf_pool_opts o = base_opts(square);
    sf_pool_stats st;
    sf_pool *p;
    int fds = count_fds();
    (void)state;

    o.max_tasks_per_worker = 0;
    p = run_numbers(&o, 200, &st);
    for (unsigned long i = 1; i <= 200; i++) {
        char want[64];
        seen *s = &seen_by_seq[i];
        assert_int_equal(s->reports, 1);
        assert_int_equal(s->attempts, 1);
        snprintf(want, sizeof want, "%lu", i * i);
        assert_true(s->has_result);
        assert_result_is(i, want);
        assert_true(s->status.exited);
        assert_int_equal(s->status.code, i % 10 == 0 ? 3 : 0);
        assert_int_equal(s->state, i % 10 == 0 ? SF_TASK_FAILED : SF_TASK_OK);
    }
    assert_int_equal(st.ok, 180);
    assert_int_equal(st.failed, 20);
    assert_int_equal(st.failed_by_code, 20);
    /* Three slots, workers never retired: at most one worker each. */
    assert_true(st.workers_started >= 1 && st.workers_started <= 3);
    sf_pool_free(p);
    assert_int_equal(count_fds(), fds);
}

static void test_one_fork_per_task(void **state)
{
    sf_pool_opts o = base_opts(square);
    sf_pool_stats st;
    sf_pool *p;
    (void)state;

    o.max_tasks_per_worker = 1;
    p = run_numbers(&o, 40, &st);
    assert_int_equal(st.workers_started, 40);
    assert_int_equal(st.ok, 36);
    for (unsigned long i = 1; i <= 40; i++)
        assert_int_equal(seen_by_seq[i].reports, 1);
    sf_pool_free(p);
}

/* Task 5 and 6 kill their worker on the first attempt; with two tasks per
 * worker, a worker is also retired along the way. */
static int crash_once(sf_task *t, const void *arg, size_t len, void *task_arg)
{
    unsigned long v = arg_number(arg, len);
    (void)task_arg;
    if ((v == 5 || v == 6) && sf_task_attempt(t) == 1) {
        sf_task_result(t, "partial", 7);
        kill(getpid(), SIGKILL); /* not SIGSEGV: sanitizers catch that one */
    }
    sf_task_result(t, "whole", 5);
    return 0;
}

static void test_a_worker_that_dies_mid_task_is_retried_elsewhere(void **state)
{
    sf_pool_opts o = base_opts(crash_once);
    sf_pool_stats st;
    sf_pool *p;
    (void)state;

    o.retries = 1;
    o.max_tasks_per_worker = 2;
    p = run_numbers(&o, 30, &st);
    assert_int_equal(st.ok, 30);
    assert_int_equal(st.retried, 2);
    for (unsigned long i = 1; i <= 30; i++) {
        assert_int_equal(seen_by_seq[i].reports, 1);
        assert_int_equal(seen_by_seq[i].attempts, (i == 5 || i == 6) ? 2 : 1);
        assert_result_is(i, "whole");
    }
    sf_pool_free(p);

    /* Without retries the task fails with the worker's death, and the
     * result it sent before dying is kept; the pool goes on. */
    o.retries = 0;
    p = run_numbers(&o, 10, &st);
    assert_int_equal(st.ok, 8);
    assert_int_equal(st.killed_by_signal, 2);
    assert_int_equal(seen_by_seq[5].state, SF_TASK_FAILED);
    assert_false(seen_by_seq[5].status.exited);
    assert_int_equal(seen_by_seq[5].status.signal, SIGKILL);
    assert_memory_equal(seen_by_seq[5].result, "partial", 7);
    assert_int_equal(seen_by_seq[7].state, SF_TASK_OK);
    sf_pool_free(p);
}

/* Waits to be killed, for 30 s at most (below meson's 60 s timeout, so a
 * failed test is reported as failed): SIGALRM (default: the end)
 * bounds a child the test fails to kill, even one that ignores SIGTERM. */
static void __attribute__((noreturn)) linger(void)
{
    alarm(30);
    for (;;)
        pause();
}

/* Task 2 forks a grandchild that ignores SIGTERM, sends its pid as the
 * result, and then both hang: the timeout must take the whole group. (A
 * worker has only stdio and its channel open, so the channel it is.) */
static int hang(sf_task *t, const void *arg, size_t len, void *task_arg)
{
    unsigned long v = arg_number(arg, len);
    pid_t g;
    (void)task_arg;
    if (v != 2)
        return 0;
    g = fork();
    if (g == 0) {
        signal(SIGTERM, SIG_IGN);
        for (int i = 0; i < 3000; i++) /* bounded: 30 s at most, whatever happens */
            usleep(10000);
        _exit(0);
    }
    sf_task_result(t, &g, sizeof g);
    linger();
}

static void test_a_timeout_kills_the_task_and_its_grandchild(void **state)
{
    sf_pool_opts o = base_opts(hang);
    sf_pool_stats st;
    sf_pool *p;
    pid_t g = 0;
    (void)state;

    o.timeout_s = 0.3;
    o.kill_grace_s = 0.2;
    p = run_numbers(&o, 4, &st);
    assert_int_equal(st.ok, 3);
    assert_int_equal(st.timed_out, 1);
    assert_int_equal(seen_by_seq[2].state, SF_TASK_FAILED);
    assert_true(seen_by_seq[2].timed_out);
    assert_false(seen_by_seq[2].status.exited);
    assert_int_equal(seen_by_seq[2].status.signal, SIGTERM);
    assert_non_null(strstr(logged, "task 2: timed out"));
    assert_int_equal(seen_by_seq[2].result_len, sizeof g);
    memcpy(&g, seen_by_seq[2].result, sizeof g);
    assert_true(g > 0);
    /* SIGKILL went to the group before the worker was reaped; the orphan
     * is reaped by init (or a subreaper): wait, bounded, until it is gone
     * or a zombie. */
    for (int i = 0; i < 500; i++) {
        char path[64], stat[256] = "";
        FILE *f;
        snprintf(path, sizeof path, "/proc/%d/stat", (int)g);
        f = fopen(path, "r");
        if (!f)
            break;
        if (!fgets(stat, sizeof stat, f))
            stat[0] = '\0';
        fclose(f);
        if (strstr(stat, ") Z "))
            break;
        assert_true(i < 499);
        usleep(10000);
    }
    sf_pool_free(p);
}

static int fail_all(sf_task *t, const void *arg, size_t len, void *task_arg)
{
    (void)t;
    (void)task_arg;
    return arg_number(arg, len) == 3 ? 1 : 0;
}

static void test_halt_now_reports_the_rest_cancelled(void **state)
{
    sf_pool_opts o = base_opts(fail_all);
    sf_pool_stats st;
    sf_pool *p;
    unsigned long ok = 0, cancelled = 0;
    (void)state;

    o.jobs = 1;
    o.halt = SF_HALT_NOW;
    o.halt_fail = 1;
    p = run_numbers(&o, 50, &st);
    assert_true(st.halted);
    assert_int_equal(st.failed, 1);
    for (unsigned long i = 1; i <= 50; i++) {
        assert_int_equal(seen_by_seq[i].reports, 1);
        ok += seen_by_seq[i].state == SF_TASK_OK;
        cancelled += seen_by_seq[i].state == SF_TASK_CANCELLED;
    }
    assert_int_equal(ok, 2); /* one slot: 1 and 2 ran before 3 */
    assert_int_equal(cancelled, 47);
    assert_int_equal(sf_pool_submit(p, &ok, sizeof ok, NULL, NULL), -ECANCELED);
    sf_pool_free(p);
}

/* ------------------------------------------------------------ commands */

/* sh -c SCRIPT as a command's argv, in one malloc'ed block. */
static char **sh_argv(const char *script)
{
    const char *words[] = {"sh", "-c", script};
    size_t len = strlen(script) + 1 + sizeof "sh" + sizeof "-c";
    char **argv = malloc(4 * sizeof *argv + len), *p;
    if (!argv)
        return NULL;
    p = (char *)(argv + 4);
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(words[i]) + 1;
        memcpy(p, words[i], n);
        argv[i] = p;
        p += n;
    }
    argv[3] = NULL;
    return argv;
}

static char **cmd_echo(unsigned long seq, unsigned slot, void *data, void *arg)
{
    (void)seq;
    (void)slot;
    (void)data;
    (void)arg;
    return sh_argv("echo \"out $SOCKFORK_TASK\"; "
                   "echo '{\"progress\": 0.5, \"log\": \"hello\"}' >&3; "
                   "echo '{\"result\": [1, \"two\"]}' >&3");
}

/* Writes without end on stdout (seq 1) or stderr (seq 2), or 100 bytes. */
static char **cmd_flood(unsigned long seq, unsigned slot, void *data, void *arg)
{
    (void)slot;
    (void)data;
    (void)arg;
    return sh_argv(seq == 1 ? "exec yes" : seq == 2 ? "exec yes >&2" : "head -c 100 /dev/zero");
}

static char **cmd_missing(unsigned long seq, unsigned slot, void *data, void *arg)
{
    char **argv = malloc(2 * sizeof *argv + sizeof "/nonexistent/sockfork-test");
    (void)seq;
    (void)slot;
    (void)data;
    (void)arg;
    if (!argv)
        return NULL;
    argv[0] = (char *)(argv + 2);
    memcpy(argv[0], "/nonexistent/sockfork-test", sizeof "/nonexistent/sockfork-test");
    argv[1] = NULL;
    return argv;
}

/* A pool whose commands' output goes to on_output, seen_by_seq reset. */
static sf_pool *new_cmd_pool(sf_pool_opts *o)
{
    sf_pool *p;

    reset_seen();
    o->capture_output = 1;
    o->on_output = on_output;
    assert_int_equal(sf_pool_new(&p, o), 0);
    assert_non_null(p);
    return p;
}

/* n commands made by cmd, queued on p, run to the pool's end. */
static void run_cmds(sf_pool *p, sf_pool_cmd_cb cmd, int n, sf_pool_stats *st)
{
    for (int i = 0; i < n; i++)
        assert_int_equal(sf_pool_submit_cmd(p, cmd, NULL, NULL, NULL), 0);
    finish_run(p, st);
}

static void test_commands_output_fd3_and_spawn_errors(void **state)
{
    sf_pool_opts o = base_opts(square);
    sf_pool_stats st;
    sf_pool *p;
    int fds = count_fds();
    (void)state;

    p = new_cmd_pool(&o);
    for (unsigned long i = 1; i <= 5; i++) {
        unsigned long seq = 0;
        assert_int_equal(sf_pool_submit_cmd(p, cmd_echo, NULL, NULL, &seq), 0);
        assert_int_equal(seq, i);
    }
    assert_int_equal(sf_pool_submit_cmd(p, cmd_missing, NULL, NULL, NULL), 0);
    {
        unsigned long v = 7, seq = 0; /* a C task among the commands */
        assert_int_equal(sf_pool_submit(p, &v, sizeof v, NULL, &seq), 0);
        assert_int_equal(seq, 7);
    }
    finish_run(p, &st);
    assert_int_equal(st.ok, 6);
    assert_int_equal(st.spawn_errors, 1);
    for (unsigned long i = 1; i <= 5; i++) {
        char want[32];
        int n = snprintf(want, sizeof want, "out %lu\n", i);
        assert_int_equal(seen_by_seq[i].state, SF_TASK_OK);
        assert_int_equal(seen_by_seq[i].outlen, (size_t)n);
        assert_memory_equal(seen_by_seq[i].out, want, (size_t)n);
        assert_result_is(i, "[1,\"two\"]");
    }
    assert_non_null(strstr(logged, "task 1: hello"));
    assert_int_equal(seen_by_seq[6].state, SF_TASK_FAILED);
    assert_int_equal(seen_by_seq[6].spawn_error, ENOENT);
    assert_int_equal(seen_by_seq[6].status.code, 127);
    assert_int_equal(seen_by_seq[7].state, SF_TASK_OK);
    sf_pool_free(p);
    assert_int_equal(count_fds(), fds);
}

/* A command that cannot start is not retried (it would fail the same
 * way), and the same failure again is counted but not logged again. */
static void test_a_command_that_cannot_start_fails_once(void **state)
{
    sf_pool_opts o = base_opts(square);
    sf_pool_stats st;
    sf_pool *p;
    const char *first;
    (void)state;

    o.retries = 3;
    o.jobs = 1;
    p = new_cmd_pool(&o);
    run_cmds(p, cmd_missing, 3, &st);
    assert_int_equal(st.failed, 3);
    assert_int_equal(st.spawn_errors, 3);
    assert_int_equal(st.retried, 0);
    for (int i = 1; i <= 3; i++) {
        assert_int_equal(seen_by_seq[i].attempts, 1);
        assert_int_equal(seen_by_seq[i].spawn_error, ENOENT);
        assert_int_equal(seen_by_seq[i].reports, 1);
    }
    first = strstr(logged, "cannot run /nonexistent/sockfork-test");
    assert_non_null(first);
    assert_null(strstr(first + 1, "cannot run"));
    sf_pool_free(p);
}

/* output_max: on_output gets exactly the limit, then the attempt is
 * stopped and fails, not retried; a task under it is untouched. */
static void test_output_max_stops_a_flood(void **state)
{
    sf_pool_opts o = base_opts(square);
    sf_pool_stats st;
    sf_pool *p;
    int fds = count_fds();
    (void)state;

    o.output_max = 100000;
    o.retries = 3;
    o.timeout_s = 30; /* a backstop: a broken limit fails below, not by meson's kill */
    p = new_cmd_pool(&o);
    run_cmds(p, cmd_flood, 3, &st);
    assert_int_equal(st.ok, 1);
    assert_int_equal(st.failed, 2);
    assert_int_equal(st.output_limited, 2);
    assert_int_equal(st.retried, 0);
    for (int i = 1; i <= 2; i++) {
        assert_int_equal(seen_by_seq[i].state, SF_TASK_FAILED);
        assert_true(seen_by_seq[i].output_limited);
        assert_int_equal(seen_by_seq[i].attempts, 1);
        assert_int_equal(seen_by_seq[i].outtotal, 100000);
        assert_false(seen_by_seq[i].status.exited);
        assert_false(seen_by_seq[i].timed_out);
    }
    assert_int_equal(st.timed_out, 0);
    assert_int_equal(seen_by_seq[3].state, SF_TASK_OK);
    assert_false(seen_by_seq[3].output_limited);
    assert_int_equal(seen_by_seq[3].outtotal, 100);
    assert_non_null(strstr(logged, "task 1: output over 100000 bytes: stopped"));
    sf_pool_free(p);
    assert_int_equal(count_fds(), fds);
}

/* ------------------------------------------------------------ cancel */

static sf_pool *cancel_me;

static void cancel_on_first(sf_pool *p, const sf_task_report *r, void *arg)
{
    on_done(p, r, arg);
    if (r->seq == 1)
        sf_pool_cancel(cancel_me);
}

static int slow_unless_first(sf_task *t, const void *arg, size_t len, void *task_arg)
{
    (void)t;
    (void)task_arg;
    if (arg_number(arg, len) != 1)
        linger();
    return 0;
}

static void test_cancel_stops_the_running_and_the_queued(void **state)
{
    sf_pool_opts o = base_opts(slow_unless_first);
    sf_pool_stats st;
    sf_pool *p;
    (void)state;

    o.on_done = cancel_on_first;
    o.kill_grace_s = 0.1;
    p = new_numbers_pool(&o, 20);
    cancel_me = p;
    finish_run(p, &st);
    assert_true(st.cancelled_by_request);
    assert_int_equal(st.ok, 1);
    for (unsigned long i = 2; i <= 20; i++) {
        assert_int_equal(seen_by_seq[i].reports, 1);
        if (seen_by_seq[i].state == SF_TASK_FAILED)
            assert_true(seen_by_seq[i].killed);
        else
            assert_int_equal(seen_by_seq[i].state, SF_TASK_CANCELLED);
    }
    assert_int_equal(st.failed + st.cancelled, 19);
    assert_true(st.failed >= 1 && st.failed <= 2); /* the two others running */
    sf_pool_free(p);
}

/* Hangs (bounded); its worker was born with SIGTERM ignored, so only
 * SIGKILL ends it. */
static int deaf(sf_task *t, const void *arg, size_t len, void *task_arg)
{
    (void)t, (void)arg, (void)len, (void)task_arg;
    for (int i = 0; i < 3000; i++) /* 30 s at most, whatever happens */
        usleep(10000);
    return 0;
}

static sf_pool *cancel_on_timeout_pool;

/* Cancels the pool when it logs a timeout: the attempt that timed out is
 * then being stopped already, for that reason. */
static void cancel_on_timeout(void *arg, int level, const char *line)
{
    log_line(arg, level, line);
    if (strstr(line, "timed out"))
        sf_pool_cancel(cancel_on_timeout_pool);
}

/* The first reason to stop an attempt wins: a cancel that comes while a
 * timed-out attempt is being stopped leaves it timed out, not killed. */
static void test_the_first_reason_to_stop_wins(void **state)
{
    sf_pool_opts o = base_opts(deaf);
    struct sigaction old_term;
    sf_pool_stats st;
    sf_pool *p;
    (void)state;

    /* Ignored in the program, ignored in its workers from their fork on:
     * no window in which a SIGTERM could end the task. */
    set_handler(SIGTERM, SIG_IGN, &old_term);

    o.jobs = 1;
    o.timeout_s = 0.2;
    o.kill_grace_s = 0.2;
    o.log = cancel_on_timeout;
    p = new_numbers_pool(&o, 2);
    cancel_on_timeout_pool = p;
    finish_run(p, &st);
    sigaction(SIGTERM, &old_term, NULL);
    assert_true(st.cancelled_by_request);
    assert_reported_once(1, SF_TASK_FAILED);
    assert_true(seen_by_seq[1].timed_out);
    assert_false(seen_by_seq[1].killed);
    assert_false(seen_by_seq[1].status.exited);
    assert_int_equal(seen_by_seq[1].status.signal, SIGKILL); /* it ignored SIGTERM */
    assert_int_equal(seen_by_seq[2].state, SF_TASK_CANCELLED);
    assert_int_equal(st.timed_out, 1);
    assert_int_equal(st.cancelled, 1);
    sf_pool_free(p);
}

/* A cancel before sf_pool_run (a signal during startup): the run starts
 * nothing and reports every task cancelled. */
static void test_a_cancel_before_the_run_starts_nothing(void **state)
{
    sf_pool_opts o = base_opts(square);
    sf_pool_stats st;
    sf_pool *p;
    (void)state;

    p = new_numbers_pool(&o, 5);
    sf_pool_cancel(p);
    finish_run(p, &st);
    assert_true(st.cancelled_by_request);
    assert_int_equal(st.started, 0);
    assert_int_equal(st.workers_started, 0);
    assert_int_equal(st.cancelled, 5);
    for (unsigned long i = 1; i <= 5; i++)
        assert_reported_once(i, SF_TASK_CANCELLED);
    sf_pool_free(p);
}

/* ------------------------------------------------------------ log level */

/* Logs a line (INFO) and fails with the code it was given. */
static int log_and_fail(sf_task *t, const void *arg, size_t len, void *task_arg)
{
    (void)task_arg;
    sf_task_log(t, "a line at INFO");
    return (int)arg_number(arg, len);
}

/* Task 1 of log_and_fail (it fails with code 1, halting the pool) run
 * alone at the log level given; the caller checks what was logged and
 * frees the pool. */
static sf_pool *run_failing_task_at(int level)
{
    sf_pool_opts o = base_opts(log_and_fail);
    sf_pool_stats st;
    sf_pool *p;

    o.jobs = 1;
    o.halt = SF_HALT_SOON;
    o.halt_fail = 1;
    o.log_level = level;
    p = run_numbers(&o, 1, &st);
    assert_int_equal(st.failed, 1);
    return p;
}

/* Lines above log_level do not reach the log callback: a task's log line
 * is INFO, a halt NOTICE. */
static void test_log_level_filters_the_pools_lines(void **state)
{
    sf_pool_opts o = base_opts(log_and_fail);
    sf_pool *p;
    (void)state;

    assert_int_equal(o.log_level, SF_LOG_INFO); /* the default */
    p = run_failing_task_at(SF_LOG_INFO);
    assert_non_null(strstr(logged, "task 1: a line at INFO"));
    assert_non_null(strstr(logged, "1 task failed: halt"));
    sf_pool_free(p);

    p = run_failing_task_at(SF_LOG_NOTICE);
    assert_null(strstr(logged, "a line at INFO"));
    assert_non_null(strstr(logged, "1 task failed: halt"));
    sf_pool_free(p);

    p = run_failing_task_at(SF_LOG_WARN);
    assert_int_equal(logged_len, 0);
    sf_pool_free(p);
}

/* se.slice of this process in ns (Linux 6.12+), or -1 where not shown. */
static long own_slice(void)
{
    char line[256];
    long v = -1;
    FILE *f = fopen("/proc/self/sched", "r");

    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "se.slice", 8) == 0 && strchr(line, ':'))
            v = strtol(strchr(line, ':') + 1, NULL, 10);
    fclose(f);
    return v;
}

static long slice_outside;

/* 0 when the worker runs with the slice the test had before the run. */
static int slice_check(sf_task *t, const void *arg, size_t len, void *task_arg)
{
    (void)t, (void)arg, (void)len, (void)task_arg;
    return own_slice() == slice_outside ? 0 : 1;
}

/* The loop's thread runs with a short slice (os/slice.c); workers put the
 * old one back, and so does the thread when the run ends. */
static void test_workers_and_the_caller_keep_their_slice(void **state)
{
    sf_pool_opts o = base_opts(slice_check);
    sf_pool_stats st;
    sf_pool *p;
    (void)state;

    slice_outside = own_slice();
    if (slice_outside < 0)
        skip();
    o.max_tasks_per_worker = 2;
    p = run_numbers(&o, 6, &st);
    assert_int_equal(st.ok, 6);
    assert_int_equal(own_slice(), slice_outside);
    sf_pool_free(p);
}

static void usr1_handler(int sig)
{
    (void)sig;
}

/* 0 when the worker has SIGUSR1 at its default and SIGPIPE still ignored. */
static int handlers_check(sf_task *t, const void *arg, size_t len, void *task_arg)
{
    struct sigaction sa;
    int bad = 0;
    (void)t, (void)arg, (void)len, (void)task_arg;
    sigaction(SIGUSR1, NULL, &sa);
    if (sa.sa_handler != SIG_DFL)
        bad |= 1;
    sigaction(SIGPIPE, NULL, &sa);
    if (sa.sa_handler != SIG_IGN)
        bad |= 2;
    return bad;
}

/* A worker runs none of the program's handlers (a SIGTERM to its group on
 * a timeout must end it, not run the program's SIGTERM handler there);
 * what the program ignores stays ignored. */
static void test_workers_start_without_the_programs_handlers(void **state)
{
    sf_pool_opts o = base_opts(handlers_check);
    struct sigaction old_usr1, old_pipe;
    sf_pool_stats st;
    sf_pool *p;
    (void)state;

    set_handler(SIGUSR1, usr1_handler, &old_usr1);
    set_handler(SIGPIPE, SIG_IGN, &old_pipe);
    o.max_tasks_per_worker = 2;
    p = run_numbers(&o, 4, &st);
    sigaction(SIGUSR1, &old_usr1, NULL);
    sigaction(SIGPIPE, &old_pipe, NULL);
    for (unsigned long i = 1; i <= 4; i++)
        assert_int_equal(seen_by_seq[i].status.code, 0);
    assert_int_equal(st.ok, 4);
    sf_pool_free(p);
}

/* ------------------------------------------------------------ a broken worker */

/* Task 1 writes, in one write on its channel, a valid TASK_DONE(0) and a
 * frame of a type that does not exist, then hangs (bounded): the pool
 * reads both at once. The others return 0. */
static int done_then_garbage(sf_task *t, const void *arg, size_t len, void *task_arg)
{
    (void)arg, (void)len, (void)task_arg;
    if (sf_task_seq(t) == 1) {
        unsigned char b[CHAN_HDR_LEN + 4 + CHAN_HDR_LEN];
        chan_header_encode(b, CHAN_T_TASK_DONE, 0, 4);
        memset(b + CHAN_HDR_LEN, 0, 4);
        chan_header_encode(b + CHAN_HDR_LEN + 4, 999, 0, 0);
        if (write(3, b, sizeof b) != (ssize_t)sizeof b)
            _exit(9);
        for (int i = 0; i < 3000; i++) /* 30 s at most */
            usleep(10000);
    }
    return 0;
}

/* A worker that broke the protocol right after its task returned is
 * killed, and its slot is not given the next task: a new worker runs it. */
static void test_a_worker_that_breaks_the_protocol_gets_no_more_tasks(void **state)
{
    sf_pool_opts o = base_opts(done_then_garbage);
    sf_pool_stats st;
    sf_pool *p;
    (void)state;

    o.jobs = 1;
    p = run_numbers(&o, 4, &st);
    assert_non_null(strstr(logged, "broke the protocol"));
    for (unsigned long i = 1; i <= 4; i++) {
        assert_reported_once(i, SF_TASK_OK);
        assert_int_equal(seen_by_seq[i].spawn_error, 0);
    }
    for (unsigned long i = 2; i <= 4; i++) /* by the second worker */
        assert_true(seen_by_seq[i].pid != seen_by_seq[1].pid);
    assert_int_equal(st.ok, 4);
    assert_int_equal(st.failed, 0);
    assert_int_equal(st.workers_started, 2);
    sf_pool_free(p);
}

/* ------------------------------------------------------------ a bad move */

/* A bug stand-in: when task 1 has started, its slot is told to go from
 * RUNNING to FREE, a move the state machine does not have. */
static void bad_move_on_start(sf_pool *p, const sf_task_info *t, void *arg)
{
    (void)arg;
    if (t->seq == 1)
        pool_slot_to(p, &p->slots[t->slot - 1], SLOT_FREE);
}

/* A move the state machine does not have is logged (slot, both states)
 * and fails the run, in every build: its children are killed and reaped,
 * its tasks reported, and sf_pool_run returns -EPROTO. */
static void test_a_bad_state_move_fails_the_run(void **state)
{
    sf_pool_opts o = base_opts(deaf);
    sf_pool *p;
    (void)state;

    o.jobs = 1;
    o.on_start = bad_move_on_start;
    p = new_numbers_pool(&o, 3);
    assert_int_equal(sf_pool_run(p), -EPROTO);
    assert_non_null(strstr(logged, "slot 1: bad state change RUNNING -> FREE"));
    assert_reported_once(1, SF_TASK_FAILED);
    assert_true(seen_by_seq[1].killed);
    for (unsigned long i = 2; i <= 3; i++)
        assert_reported_once(i, SF_TASK_CANCELLED);
    errno = 0;
    assert_int_equal(waitpid(-1, NULL, WNOHANG), -1); /* nothing left to reap */
    assert_int_equal(errno, ECHILD);
    sf_pool_free(p);
}

/* ------------------------------------------------------------ a channel that cannot be written */

/* Task 1 shuts its worker's channel for reading (the pool's next write to
 * it fails with EPIPE), says it returned 0, and hangs (bounded); with
 * exit0_on_term, a SIGTERM makes the worker exit 0. The others (run by
 * another worker) leave "ran" as their result. */
static int exit0_on_term;

static void exit0(int sig)
{
    (void)sig;
    _exit(0);
}

static int deaf_channel_then_done(sf_task *t, const void *arg, size_t len, void *task_arg)
{
    (void)arg, (void)len, (void)task_arg;
    if (sf_task_seq(t) == 1) {
        unsigned char b[CHAN_HDR_LEN + 4];
        if (exit0_on_term)
            signal(SIGTERM, exit0);
        if (shutdown(3, SHUT_RD) < 0)
            _exit(9);
        chan_header_encode(b, CHAN_T_TASK_DONE, 0, 4);
        memset(b + CHAN_HDR_LEN, 0, 4);
        if (write(3, b, sizeof b) != (ssize_t)sizeof b)
            _exit(9);
        for (int i = 0; i < 3000; i++) /* 30 s at most */
            usleep(10000);
        _exit(9);
    }
    sf_task_result(t, "ran", 3);
    return 0;
}

/* Tasks 1..n of deaf_channel_then_done on one slot, run to the end with
 * the retries given; task 1's worker exits 0 on SIGTERM if exit0. */
static sf_pool *run_deaf_channel(unsigned retries, int exit0, unsigned long n, sf_pool_stats *st)
{
    sf_pool_opts o = base_opts(deaf_channel_then_done);
    sf_pool *p;

    o.jobs = 1;
    o.retries = retries;
    exit0_on_term = exit0;
    p = run_numbers(&o, n, st);
    exit0_on_term = 0;
    return p;
}

/* A task frame that is queued is the worker's: a write that then fails
 * (EPIPE here) stops the attempt for its channel, as a later flush would;
 * the task is retried (not failed as a command that cannot start), and
 * runs once, in a new worker. */
static void test_a_task_given_is_not_a_spawn_error_when_the_write_fails(void **state)
{
    sf_pool_stats st;
    sf_pool *p = run_deaf_channel(1, 0, 3, &st);
    (void)state;

    assert_int_equal(seen_by_seq[1].state, SF_TASK_OK);
    for (unsigned long i = 2; i <= 3; i++) {
        assert_reported_once(i, SF_TASK_OK);
        assert_int_equal(seen_by_seq[i].spawn_error, 0);
        assert_result_is(i, "ran");
    }
    assert_int_equal(seen_by_seq[2].attempts, 2); /* the first never reached it */
    assert_int_equal(seen_by_seq[3].attempts, 1);
    assert_int_equal(st.spawn_errors, 0);
    assert_int_equal(st.retried, 1);
    assert_int_equal(st.workers_started, 2);
    sf_pool_free(p);
}

/* An attempt stopped for its channel before its worker said it returned
 * did not run, even if the worker then exits 0 (as one that got no frame
 * does at EOF): it is not OK, and is retried. */
static void test_a_task_its_worker_never_got_is_not_ok(void **state)
{
    sf_pool_stats st;
    sf_pool *p = run_deaf_channel(1, 1, 2, &st);
    (void)state;

    assert_int_equal(seen_by_seq[1].state, SF_TASK_OK);
    assert_reported_once(2, SF_TASK_OK);
    assert_int_equal(seen_by_seq[2].attempts, 2); /* the first, exit 0, never ran it */
    assert_result_is(2, "ran");
    assert_int_equal(st.retried, 1);
    assert_int_equal(st.workers_started, 2);
    sf_pool_free(p);

    /* Without a retry it fails, with the status it had. */
    p = run_deaf_channel(0, 1, 2, &st);
    assert_reported_once(2, SF_TASK_FAILED);
    assert_true(seen_by_seq[2].status.exited);
    assert_int_equal(seen_by_seq[2].status.code, 0);
    assert_int_equal(seen_by_seq[2].spawn_error, 0);
    assert_false(seen_by_seq[2].has_result);
    assert_int_equal(st.failed, 1);
    sf_pool_free(p);
}

static void test_bad_options_are_refused(void **state)
{
    sf_pool_opts o = base_opts(square);
    sf_pool *p = (sf_pool *)&o; /* not NULL: a failed sf_pool_new sets it */
    (void)state;

    o.on_done = NULL;
    assert_int_equal(sf_pool_new(&p, &o), -EINVAL);
    assert_null(p);
    assert_int_equal(sf_pool_new(&p, NULL), -EINVAL);
    o = base_opts(square);
    o.timeout_s = -1;
    assert_int_equal(sf_pool_new(&p, &o), -EINVAL);
    o = base_opts(square);
    o.halt_fail_pct = 101;
    assert_int_equal(sf_pool_new(&p, &o), -EINVAL);
    o = base_opts(NULL);
    {
        unsigned long v = 1;
        assert_int_equal(sf_pool_new(&p, &o), 0);
        assert_non_null(p);
        assert_int_equal(sf_pool_submit(p, &v, sizeof v, NULL, NULL), -EINVAL); /* no task */
        sf_pool_free(p);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reused_workers_run_every_task_once),
        cmocka_unit_test(test_one_fork_per_task),
        cmocka_unit_test(test_a_worker_that_dies_mid_task_is_retried_elsewhere),
        cmocka_unit_test(test_a_timeout_kills_the_task_and_its_grandchild),
        cmocka_unit_test(test_halt_now_reports_the_rest_cancelled),
        cmocka_unit_test(test_commands_output_fd3_and_spawn_errors),
        cmocka_unit_test(test_a_command_that_cannot_start_fails_once),
        cmocka_unit_test(test_output_max_stops_a_flood),
        cmocka_unit_test(test_cancel_stops_the_running_and_the_queued),
        cmocka_unit_test(test_a_cancel_before_the_run_starts_nothing),
        cmocka_unit_test(test_the_first_reason_to_stop_wins),
        cmocka_unit_test(test_log_level_filters_the_pools_lines),
        cmocka_unit_test(test_workers_and_the_caller_keep_their_slice),
        cmocka_unit_test(test_workers_start_without_the_programs_handlers),
        cmocka_unit_test(test_bad_options_are_refused),
        cmocka_unit_test(test_a_worker_that_breaks_the_protocol_gets_no_more_tasks),
        cmocka_unit_test(test_a_bad_state_move_fails_the_run),
        cmocka_unit_test(test_a_task_given_is_not_a_spawn_error_when_the_write_fails),
        cmocka_unit_test(test_a_task_its_worker_never_got_is_not_ok),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
