/* Unit tests: the set of process groups, their takedown, and the pool's
 * guard, with real processes that ignore SIGTERM and have children. */
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
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

#include "process/groups.h"
#include "process/process.h"

static int present(const proc_groups *g, pid_t pg)
{
    for (unsigned i = 0; i < g->size; i++)
        if (g->slot[i] == pg)
            return 1;
    return 0;
}

static void test_set_add_del(void **state)
{
    proc_groups g;
    (void)state;

    proc_groups_init(&g, 1000);
    /* Ids that collide in a small table, added and removed out of order. */
    for (pid_t pg = 1; pg <= 1000; pg++)
        assert_int_equal(proc_groups_add(&g, pg * 16), 0);
    assert_int_equal(g.count, 1000);
    assert_int_equal(proc_groups_add(&g, 99999), -ENOSPC);
    assert_int_equal(proc_groups_reserve(&g), -ENOSPC);
    for (pid_t pg = 1; pg <= 1000; pg += 2)
        proc_groups_del(&g, pg * 16);
    proc_groups_del(&g, 12345); /* absent: nothing happens */
    assert_int_equal(g.count, 500);
    for (pid_t pg = 1; pg <= 1000; pg++)
        assert_int_equal(present(&g, pg * 16), pg % 2 == 0);
    assert_int_equal(proc_groups_reserve(&g), 0);
    assert_int_equal(proc_groups_add(&g, -1), -EINVAL);
    proc_groups_free(&g);
    assert_int_equal(g.count, 0);
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

/* Forks a group leader (proc_fork) that runs body, which writes len bytes
 * to its fd 3 once it is ready and never returns; returns the leader's pid
 * once those bytes are read into out. */
static pid_t fork_ready(void (*body)(void), void *out, size_t len)
{
    proc_fork_opts po;
    int p[2];
    pid_t pid;

    assert_int_equal(pipe(p), 0);
    memset(&po, 0, sizeof po);
    po.keep[0] = p[1];
    po.nkeep = 1;
    pid = proc_fork(&po);
    assert_true(pid >= 0);
    if (pid == 0) {
        body();
        _exit(1);
    }
    close(p[1]);
    assert_int_equal(read(p[0], out, len), (ssize_t)len);
    close(p[0]);
    return pid;
}

static void stubborn_body(void)
{
    signal(SIGTERM, SIG_IGN);
    if (fork() == 0) {
        linger();
    }
    (void)!write(3, "x", 1);
    linger();
}

/* A group leader that ignores SIGTERM, with a child that does too; ready
 * once both run. */
static pid_t stubborn_group(void)
{
    char c;

    return fork_ready(stubborn_body, &c, 1);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Whether a process of group pg is alive (a zombie is not): read from
 * /proc, since an orphan's zombie waits for a reaper that is not us. */
static int group_alive(pid_t pg)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    int found = 0;

    assert_non_null(d);
    while (!found && (e = readdir(d)) != NULL) {
        char path[300], buf[512], *p, state;
        int ppid, pgrp;
        FILE *f;

        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        if (!(f = fopen(path, "r")))
            continue;
        buf[0] = 0;
        if (!fgets(buf, sizeof buf, f))
            buf[0] = 0;
        fclose(f);
        if (!(p = strrchr(buf, ')')) || sscanf(p + 1, " %c %d %d", &state, &ppid, &pgrp) != 3)
            continue;
        found = pgrp == pg && state != 'Z';
    }
    closedir(d);
    return found;
}

static void reap_all(void *arg)
{
    (void)arg;
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
}

static void test_takedown_kills_what_ignores_sigterm(void **state)
{
    proc_groups g;
    pid_t a, b;
    double t0;
    (void)state;

    a = stubborn_group();
    b = stubborn_group();
    proc_groups_init(&g, 4);
    assert_int_equal(proc_groups_add(&g, a), 0);
    assert_int_equal(proc_groups_add(&g, b), 0);
    t0 = now_s();
    proc_groups_takedown(&g, 0.3, reap_all, NULL);
    assert_true(now_s() - t0 >= 0.25);
    assert_int_equal(g.count, 0);
    reap_all(NULL);
    /* Leaders and grandchildren dead. */
    for (int i = 0; i < 500 && (group_alive(a) || group_alive(b)); i++)
        usleep(10000); /* bounded: a SIGKILL'd process takes a moment to go */
    assert_false(group_alive(a));
    assert_false(group_alive(b));
}

static void test_takedown_is_quick_when_sigterm_works(void **state)
{
    proc_fork_opts po;
    proc_groups g;
    pid_t pid;
    double t0;
    (void)state;

    memset(&po, 0, sizeof po);
    pid = proc_fork(&po);
    assert_true(pid >= 0);
    if (pid == 0) {
        linger();
    }
    proc_groups_init(&g, 4);
    assert_int_equal(proc_groups_add(&g, pid), 0);
    t0 = now_s();
    proc_groups_takedown(&g, 30, reap_all, NULL);
    assert_true(now_s() - t0 < 10);
    assert_int_equal(waitpid(pid, NULL, WNOHANG), -1); /* reaped by the tick */
}

/* A process that left its group for its child's (*other): its own
 * group is empty, and its pid alone is what the takedown must never
 * signal on a guess (it may be anybody's after a reuse). */
static void left_body(void)
{
    pid_t gc;

    if ((gc = fork()) == 0) {
        linger();
    }
    if (gc < 0 || setpgid(gc, gc) < 0)
        _exit(1);
    (void)!write(3, &gc, sizeof gc);
    linger();
}

static pid_t left_its_group(pid_t *other)
{
    pid_t pid = fork_ready(left_body, other, sizeof *other);

    /* We move it into its child's group, not it itself: proc_fork's
     * setpgid(pid, pid) in this process may come after anything the child
     * does, and would put it back into a group of its own. */
    assert_int_equal(setpgid(pid, *other), 0);
    assert_int_equal(kill(-pid, 0), -1); /* nobody left in its group */
    return pid;
}

/* An entry whose group is gone is dropped at once, and the process whose
 * pid it is (here one of ours, but the takedown cannot know it unless told)
 * gets nothing: before, kill(pid) followed the ESRCH. */
static void test_takedown_never_signals_a_pid_alone(void **state)
{
    proc_groups g;
    pid_t pid, other;
    double t0;
    int st;
    (void)state;

    pid = left_its_group(&other);
    proc_groups_init(&g, 4);
    assert_int_equal(proc_groups_add(&g, pid), 0);
    t0 = now_s();
    proc_groups_takedown(&g, 30, NULL, NULL);
    assert_true(now_s() - t0 < 10); /* dropped, not waited for */
    assert_int_equal(waitpid(pid, &st, WNOHANG), 0); /* untouched */

    /* With own_children, our running child is signalled alone. */
    proc_groups_init(&g, 4);
    g.own_children = 1;
    assert_int_equal(proc_groups_add(&g, pid), 0);
    proc_groups_takedown(&g, 30, reap_all, NULL);
    assert_int_equal(waitpid(pid, &st, WNOHANG), -1); /* ended, reaped by the tick */
    assert_int_equal(kill(-other, SIGKILL), 0);
}

/* The guard ends, at EOF, the groups the table holds and nothing else: not
 * a group whose slot was cleared, not one never put in it. */
static void test_guard(void **state)
{
    proc_guard gd;
    sigset_t none;
    pid_t kept, forgotten, never;
    int st;
    (void)state;

    sigemptyset(&none);
    assert_int_equal(proc_guard_start(&gd, 4, 0.2, &none), 0);
    kept = stubborn_group();
    forgotten = stubborn_group();
    never = stubborn_group();
    proc_guard_watch(&gd, 3, kept);
    proc_guard_watch(&gd, 0, forgotten);
    proc_guard_forget(&gd, 0);
    proc_guard_watch(&gd, 4, never); /* out of range: ignored */
    proc_guard_stop(&gd); /* returns once the guard has done its work */
    assert_int_equal(gd.fd, -1);
    assert_null(gd.table);
    assert_int_equal(waitpid(kept, &st, 0), kept);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    assert_int_equal(waitpid(forgotten, &st, WNOHANG), 0); /* still running */
    assert_int_equal(waitpid(never, &st, WNOHANG), 0);
    for (int i = 0; i < 2; i++) {
        pid_t pg = i ? never : forgotten;
        assert_int_equal(kill(-pg, SIGKILL), 0);
        assert_int_equal(waitpid(pg, &st, 0), pg);
    }
    /* Telling a guard that is stopped is harmless. */
    proc_guard_watch(&gd, 0, kept);
    proc_guard_forget(&gd, 0);
}

/* A stopped guard neither slows nor blocks the pool's side: many tasks
 * start, are watched, forgotten and reaped while it is stopped, and the
 * stop at the end continues it and reaps it. (The socket it replaced
 * blocked after a few hundred.) */
static void test_guard_stopped_blocks_nothing(void **state)
{
    enum { TASKS = 2000, SLOTS = 8 };
    proc_guard gd;
    sigset_t none;
    siginfo_t si;
    proc_fork_opts po;
    pid_t pid;
    (void)state;

    sigemptyset(&none);
    assert_int_equal(proc_guard_start(&gd, SLOTS, 0.2, &none), 0);
    assert_int_equal(kill(gd.pid, SIGSTOP), 0);
    memset(&si, 0, sizeof si);
    assert_int_equal(waitid(P_PID, (id_t)gd.pid, &si, WSTOPPED | WNOWAIT), 0);
    memset(&po, 0, sizeof po);
    for (unsigned i = 0; i < TASKS; i++) {
        pid = proc_fork(&po);
        assert_true(pid >= 0);
        if (pid == 0)
            _exit(0);
        proc_guard_watch(&gd, i % SLOTS, pid);
        memset(&si, 0, sizeof si);
        assert_int_equal(waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT), 0);
        proc_guard_forget(&gd, i % SLOTS);
        assert_int_equal(waitpid(pid, NULL, 0), pid);
    }
    proc_guard_stop(&gd); /* continues it: it finds the table empty and exits */
    assert_int_equal(gd.pid, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_add_del),
        cmocka_unit_test(test_takedown_kills_what_ignores_sigterm),
        cmocka_unit_test(test_takedown_is_quick_when_sigterm_works),
        cmocka_unit_test(test_takedown_never_signals_a_pid_alone),
        cmocka_unit_test(test_guard),
        cmocka_unit_test(test_guard_stopped_blocks_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
