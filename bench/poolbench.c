/*
 * poolbench.c - the task pool's C API (include/sockfork.h, "task pool")
 * against bare loops doing the same job, in the same run, on this machine.
 * Run by bench/tasks.sh.
 *
 *   poolbench MODE [-n TASKS] [-j JOBS] [-c PATH] [-d SECS] [-u]
 *
 * Every mode runs TASKS trivial tasks with at most JOBS running at once and
 * prints one line of key=value pairs on stdout (tasks_per_s is the number;
 * secs is the wall time from the first task started to the last reaped, the
 * pool's submissions included):
 *
 *   bare        fork(); the child _exit(0)s; the parent reaps with
 *               waitpid(-1), forking the next as soon as one is reaped.
 *   pool-fork   an sf_pool whose task returns 0 at once, with
 *               max_tasks_per_worker = 1: a fork per task.
 *   pool-reuse  the same with max_tasks_per_worker = 0: JOBS workers,
 *               each running tasks until the pool is done.
 *   spawn       posix_spawn() of PATH (default /bin/true) with the task's
 *               number as its one argument (as `sockfork run` and xargs -n 1
 *               give it one: GNU true sets up its locale only when it has
 *               exactly one argument), reaped with waitpid(-1).
 *   vfork       the same with vfork() + execve(): the floor for running a
 *               command (the pool starts commands this way, proc_exec).
 *   pool-cmd    an sf_pool running PATH NUMBER as a command
 *               (sf_pool_submit_cmd), no output capture.
 *   pool-cmd-out  the same with capture_output = 1 (stdout and stderr
 *               through pipes to an on_output that drops them), as
 *               `sockfork run` sets it.
 *
 * The pool modes submit from the pool's feed callback, one task per call,
 * so that no more than JOBS wait in the queue (as `sockfork run` feeds from
 * its input). With -u every task is submitted before sf_pool_run instead:
 * the queue's memory is then in the parent that forks every worker, and
 * each fork copies its page tables and makes it copy-on-write.
 *
 * Each task's result is checked: a child exiting other than 0, or a task
 * the pool does not report as ok, fails the run (exit 2). The run is
 * bounded by a watchdog (-d, default 300 s; exit 3).
 */
#include <sockfork.h>

#include "benchlib.h"

#include <errno.h>
#include <getopt.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static unsigned long opt_tasks = 0;
static unsigned opt_jobs = 2;
static const char *opt_cmd = "/bin/true";
static int opt_upfront;

static void usage(void)
{
    fprintf(stderr, "usage: poolbench bare|pool-fork|pool-reuse|spawn|vfork|pool-cmd|pool-cmd-out"
                    " [-n TASKS] [-j JOBS] [-c PATH] [-d SECS] [-u]\n");
    exit(2);
}

/* ---------------------------------------------------------- bare loops */

/* Reaps one child, dies if it did not exit 0. */
static void reap_one(void)
{
    int st;
    pid_t pid;

    while ((pid = waitpid(-1, &st, 0)) < 0 && errno == EINTR)
        ;
    if (pid < 0)
        bench_die("waitpid: %s", strerror(errno));
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        bench_die("child %d ended with status 0x%x", (int)pid, st);
}

static pid_t start_fork(void)
{
    pid_t pid = fork();

    if (pid < 0)
        bench_die("fork: %s", strerror(errno));
    if (pid == 0)
        _exit(0);
    return pid;
}

/* The next command's argv: opt_cmd and the task's number. */
static char **next_argv(void)
{
    static unsigned long seq;
    static char num[24];
    static char *argv[3];

    snprintf(num, sizeof num, "%lu", ++seq);
    argv[0] = (char *)opt_cmd;
    argv[1] = num;
    argv[2] = NULL;
    return argv;
}

static pid_t start_spawn(void)
{
    pid_t pid;
    int rc = posix_spawn(&pid, opt_cmd, NULL, NULL, next_argv(), environ);

    if (rc != 0)
        bench_die("posix_spawn %s: %s", opt_cmd, strerror(rc));
    return pid;
}

static pid_t start_vfork(void)
{
    char **argv = next_argv(); /* before the vfork: the child only execs */
    pid_t pid = vfork();

    if (pid == 0) {
        execve(opt_cmd, argv, environ);
        _exit(127); /* the loop fails the run on any other status than 0 */
    }
    if (pid < 0)
        bench_die("vfork: %s", strerror(errno));
    return pid;
}

static unsigned long run_bare(pid_t (*start)(void))
{
    unsigned long started = 0, reaped = 0;
    unsigned running = 0;

    while (reaped < opt_tasks) {
        while (running < opt_jobs && started < opt_tasks) {
            start();
            started++;
            running++;
        }
        reap_one();
        running--;
        reaped++;
    }
    return reaped;
}

/* ---------------------------------------------------------------- pool */

struct pool_run {
    unsigned long ok, bad;
    unsigned long next;  /* feed: the next task's number */
    int command;
};

static int trivial(sf_task *t, const void *arg, size_t len, void *task_arg)
{
    (void)t;
    (void)arg;
    (void)len;
    (void)task_arg;
    return 0;
}

static void on_done(sf_pool *p, const sf_task_report *r, void *arg)
{
    struct pool_run *pr = arg;
    (void)p;

    if (r->state == SF_TASK_OK && r->status.exited && r->status.code == 0) {
        pr->ok++;
        return;
    }
    if (pr->bad++ == 0) {
        char how[64];
        sf_status_format(&r->status, how, sizeof how);
        fprintf(stderr, "poolbench: task %lu failed: state %d, %s, spawn_error %d\n", r->seq,
                r->state, how, r->spawn_error);
    }
}

static void on_log(void *arg, int level, const char *line)
{
    (void)arg;
    if (level <= SF_LOG_WARN)
        fprintf(stderr, "poolbench: pool: %s\n", line);
}

static void on_output(sf_pool *p, const sf_task_info *t, int stream, const char *buf, size_t len,
                      void *arg)
{
    (void)p;
    (void)t;
    (void)stream;
    (void)buf;
    (void)len;
    (void)arg;
}

/* One argv block for the command: the pointers, then PATH and the task's
 * number. */
static char **command_argv(unsigned long seq, unsigned slot, void *data, void *arg)
{
    char num[24];
    size_t n = strlen(opt_cmd) + 1, k = (size_t)snprintf(num, sizeof num, "%lu", seq) + 1;
    char **v = malloc(3 * sizeof *v + n + k);
    (void)slot;
    (void)data;
    (void)arg;

    if (!v)
        return NULL;
    v[0] = (char *)(v + 3);
    memcpy(v[0], opt_cmd, n);
    v[1] = v[0] + n;
    memcpy(v[1], num, k);
    v[2] = NULL;
    return v;
}

/* Submits one task from the feed callback; the pool asks again while it
 * has room (fewer pending than jobs). */
static int feed_one(sf_pool *p, void *arg)
{
    struct pool_run *pr = arg;
    int rc;

    if (pr->next > opt_tasks)
        return SF_FEED_END;
    rc = pr->command ? sf_pool_submit_cmd(p, command_argv, NULL, NULL, NULL)
                     : sf_pool_submit(p, &pr->next, sizeof pr->next, NULL, NULL);
    if (rc < 0)
        bench_die("sf_pool_submit of task %lu: %s", pr->next, strerror(-rc));
    pr->next++;
    return pr->next > opt_tasks ? SF_FEED_END : SF_FEED_MORE;
}

/* Runs the pool; returns the tasks that ended ok, fills *workers and *t0
 * (the start). command: 0 for C tasks, 1 for commands, 2 for commands with
 * output captured. */
static unsigned long run_pool(int command, unsigned max_per_worker, unsigned long *workers,
                              uint64_t *t0)
{
    struct pool_run pr = {0, 0, 1, command};
    sf_pool_opts o;
    sf_pool_stats st;
    sf_pool *p;
    int rc;

    sf_pool_opts_init(&o);
    o.jobs = opt_jobs;
    o.queue_max = opt_tasks > 65536 ? (unsigned)opt_tasks : 65536;
    if (!command) {
        o.task = trivial;
        o.max_tasks_per_worker = max_per_worker;
    }
    if (command == 2) {
        o.capture_output = 1;
        o.on_output = on_output;
    }
    if (!opt_upfront)
        o.feed = feed_one;
    o.on_done = on_done;
    o.arg = &pr;
    o.log = on_log;
    if ((rc = sf_pool_new(&p, &o)) < 0)
        bench_die("sf_pool_new: %s", strerror(-rc));

    *t0 = bench_now_ns();
    for (unsigned long i = 1; opt_upfront && i <= opt_tasks; i++) {
        rc = command ? sf_pool_submit_cmd(p, command_argv, NULL, NULL, NULL)
                     : sf_pool_submit(p, &i, sizeof i, NULL, NULL);
        if (rc < 0)
            bench_die("sf_pool_submit of task %lu: %s", i, strerror(-rc));
    }
    rc = sf_pool_run(p);
    if (rc < 0)
        bench_die("sf_pool_run: %s", strerror(-rc));
    sf_pool_get_stats(p, &st);
    *workers = st.workers_started;
    if (st.ok != opt_tasks || pr.ok != opt_tasks || pr.bad)
        bench_die("%lu tasks ok of %lu (stats: %lu ok, %lu failed, %lu cancelled)", pr.ok,
                  opt_tasks, st.ok, st.failed, st.cancelled);
    sf_pool_free(p);
    return pr.ok;
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"tasks", required_argument, NULL, 'n'}, {"jobs", required_argument, NULL, 'j'},
        {"command", required_argument, NULL, 'c'}, {"deadline", required_argument, NULL, 'd'},
        {"upfront", no_argument, NULL, 'u'},    {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *mode;
    unsigned deadline = 300;
    unsigned long done, workers = 0;
    uint64_t t0, t1;
    int c;

    bench_init("poolbench");
    if (argc < 2 || argv[1][0] == '-')
        usage();
    mode = argv[1];
    optind = 2;
    while ((c = getopt_long(argc, argv, "n:j:c:d:uh", longopts, NULL)) != -1) {
        switch (c) {
        case 'n': opt_tasks = (unsigned long)bench_parse_num(optarg, 1, 1e8, "-n"); break;
        case 'j': opt_jobs = (unsigned)bench_parse_num(optarg, 1, 4096, "-j"); break;
        case 'c': opt_cmd = optarg; break;
        case 'd': deadline = (unsigned)bench_parse_num(optarg, 1, 86400, "-d"); break;
        case 'u': opt_upfront = 1; break;
        default: usage();
        }
    }
    if (optind != argc)
        usage();
    if (!opt_tasks)
        opt_tasks = strcmp(mode, "pool-reuse") == 0 ? 50000 : 5000;
    bench_watchdog(deadline);
    /* Nothing buffered to be copied into the children. */
    fflush(NULL);

    if (strcmp(mode, "bare") == 0) {
        t0 = bench_now_ns();
        done = run_bare(start_fork);
        workers = done;
    } else if (strcmp(mode, "spawn") == 0 || strcmp(mode, "vfork") == 0) {
        if (access(opt_cmd, X_OK) != 0)
            bench_die("%s: %s (give an absolute path with -c)", opt_cmd, strerror(errno));
        t0 = bench_now_ns();
        done = run_bare(strcmp(mode, "spawn") == 0 ? start_spawn : start_vfork);
    } else if (strcmp(mode, "pool-fork") == 0) {
        done = run_pool(0, 1, &workers, &t0);
    } else if (strcmp(mode, "pool-reuse") == 0) {
        done = run_pool(0, 0, &workers, &t0);
    } else if (strcmp(mode, "pool-cmd") == 0) {
        done = run_pool(1, 0, &workers, &t0);
    } else if (strcmp(mode, "pool-cmd-out") == 0) {
        done = run_pool(2, 0, &workers, &t0);
    } else {
        usage();
    }
    t1 = bench_now_ns();

    double secs = (double)(t1 - t0) / (double)NS_PER_S;
    printf("mode=%s%s jobs=%u tasks=%lu secs=%.4f tasks_per_s=%.1f processes=%lu\n", mode,
           opt_upfront && strncmp(mode, "pool", 4) == 0 ? "-upfront" : "", opt_jobs, done, secs,
           secs > 0 ? (double)done / secs : 0.0,
           strcmp(mode, "spawn") == 0 || strcmp(mode, "vfork") == 0 ||
                   strncmp(mode, "pool-cmd", 8) == 0 ? done : workers);
    return 0;
}
