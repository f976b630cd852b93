/* pool.c - the task pool's C API: many children at once, each sending its
 * result and progress back over its channel, with a timeout, retries, and a
 * child that crashes.
 *
 *   ./build/examples/pool [TASKS]      (default 12; exits 1, as task 11 fails)
 *
 * Task n sums the squares below n * 100000 and sends the sum as its result.
 * Every 7th task crashes on its first attempt (the worker dies; the pool
 * retries the task in a new one), every 11th sleeps past the timeout. */
#include <sockfork.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int work(sf_task *t, const void *arg, size_t len, void *task_arg)
{
    unsigned long n, i, limit;
    unsigned long long sum = 0;
    char text[64];
    (void)task_arg;

    if (len != sizeof n)
        return 2;
    memcpy(&n, arg, sizeof n);
    if (n % 7 == 0 && sf_task_attempt(t) == 1)
        raise(SIGSEGV); /* dies mid-task: the pool retries it elsewhere */
    if (n % 11 == 0)
        sleep(10); /* past the timeout: its process group is killed */
    limit = n * 100000;
    for (i = 0; i < limit; i++) {
        sum += (unsigned long long)i * i;
        if (i % 100000 == 0)
            sf_task_progress(t, (double)i, (double)limit);
    }
    snprintf(text, sizeof text, "%llu", sum);
    sf_task_result(t, text, strlen(text));
    return 0;
}

static void done(sf_pool *p, const sf_task_report *r, void *arg)
{
    char how[64];
    (void)p;
    (void)arg;
    sf_status_format(&r->status, how, sizeof how);
    printf("task %2lu: %-6s after %u attempt%s, %s%s, worker %d: %.*s\n", r->seq,
           r->state == SF_TASK_OK ? "ok" : "FAILED", r->attempts, r->attempts == 1 ? "" : "s",
           how, r->timed_out ? " (timed out)" : "", r->pid, r->result ? (int)r->result_len : 1,
           r->result ? (const char *)r->result : "-");
}

static void log_line(void *arg, int level, const char *line)
{
    (void)arg;
    (void)level;
    fprintf(stderr, "pool: %s\n", line);
}

int main(int argc, char **argv)
{
    unsigned long tasks = argc > 1 ? strtoul(argv[1], NULL, 10) : 12;
    sf_pool_opts o;
    sf_pool_stats st;
    sf_pool *p;
    int rc;

    sf_pool_opts_init(&o);
    o.jobs = 4;
    o.task = work;
    o.timeout_s = 1.0;
    o.kill_grace_s = 0.2;
    o.retries = 1;
    o.max_tasks_per_worker = 100; /* reuse a worker for up to 100 tasks */
    o.on_done = done;
    o.log = log_line;
    if ((rc = sf_pool_new(&p, &o)) < 0) {
        fprintf(stderr, "pool: sf_pool_new: %s\n", strerror(-rc));
        return 1;
    }
    for (unsigned long n = 1; n <= tasks; n++)
        if ((rc = sf_pool_submit(p, &n, sizeof n, NULL, NULL)) < 0) {
            fprintf(stderr, "pool: cannot submit task %lu: %s\n", n, strerror(-rc));
            break;
        }
    if ((rc = sf_pool_run(p)) < 0)
        fprintf(stderr, "pool: sf_pool_run: %s\n", strerror(-rc));
    sf_pool_get_stats(p, &st);
    printf("%lu ok, %lu failed, %lu retried, %lu workers forked for %lu attempts\n", st.ok,
           st.failed, st.retried, st.workers_started, st.started);
    sf_pool_free(p);
    return st.failed ? 1 : 0;
}
