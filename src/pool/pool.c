/* pool.c - the task pool: its API, the queue, the loop, and what happens
 * when an attempt ends (retry, report, halt). */
#include "pool/pool_internal.h"
#include "process/process.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define JOBS_MAX 65536
#define EVENTS_MAX 64
#define POLL_EXITS_S 0.005
#define SPAWN_IDLE_TRIES 8 /* backoffs (about 4.5 s) with nothing of ours running */
#define SPAWN_QUIET_S 2.0  /* a start failure episode ends after this without one */

double pool_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double pool_wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int pool_fd_add(sf_pool *p, int fd, uint32_t events, uint64_t id)
{
    struct epoll_event ev = {.events = events, .data.u64 = id};
    return epoll_ctl(p->ep, EPOLL_CTL_ADD, fd, &ev);
}

/* Closing a descriptor takes it out of the epoll set (none is dup'ed). */
void pool_fd_del(sf_pool *p, int *fd)
{
    (void)p;
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

void sf_pool_opts_init(sf_pool_opts *o)
{
    memset(o, 0, sizeof *o);
    o->kill_grace_s = 2.0;
    o->queue_max = 65536;
    o->result_max = 64 * 1024;
    o->feed_fd = -1;
    o->log_level = SF_LOG_INFO;
}

static int opts_valid(const sf_pool_opts *o)
{
    if (o->jobs > JOBS_MAX || !isfinite(o->timeout_s) || o->timeout_s < 0 ||
        !isfinite(o->kill_grace_s) || o->kill_grace_s < 0 || !isfinite(o->tick_s) ||
        o->tick_s < 0 || !(o->halt_fail_pct >= 0 && o->halt_fail_pct <= 100) ||
        o->halt < SF_HALT_NEVER || o->halt > SF_HALT_NOW || o->queue_max == 0 ||
        o->result_max == 0 || o->result_max > CHAN_MAX_LIMIT - 64 || !o->on_done ||
        (o->nretry_codes && !o->retry_codes) || (o->nretry_signals && !o->retry_signals))
        return 0;
    return 1;
}

int sf_pool_new(sf_pool **out, const sf_pool_opts *o)
{
    sf_pool *p;
    long cpus;
    int rc = -ENOMEM;

    *out = NULL;
    if (!o || !opts_valid(o))
        return -EINVAL;
    p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->o = *o;
    p->ep = p->cancel_fd = p->devnull = p->guard.fd = -1;
    p->log.cb = o->log;
    p->log.arg = o->log_arg;
    p->log.level = o->log_level;
    if (p->o.halt != SF_HALT_NEVER && !p->o.halt_fail && p->o.halt_fail_pct == 0)
        p->o.halt_fail = 1;
    p->feed_ended = !o->feed;
    cpus = sysconf(_SC_NPROCESSORS_ONLN);
    p->jobs = o->jobs ? o->jobs : (unsigned)(cpus > 0 ? (cpus < JOBS_MAX ? cpus : JOBS_MAX) : 1);
    p->slots = calloc(p->jobs, sizeof *p->slots);
    p->readbuf = malloc(POOL_READ);
    if (!p->slots || !p->readbuf)
        goto fail;
    for (unsigned i = 0; i < p->jobs; i++) {
        pool_slot *s = &p->slots[i];
        s->index = i + 1;
        s->pidfd = s->chan = s->out = s->err = -1;
    }
    if ((p->ep = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
        (p->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0 ||
        (p->devnull = open("/dev/null", O_RDWR | O_CLOEXEC)) < 0 ||
        pool_fd_add(p, p->cancel_fd, EPOLLIN, EV_CANCEL) < 0) {
        rc = -errno;
        goto fail;
    }
    *out = p;
    return 0;

fail:
    sf_pool_free(p);
    return rc;
}

static int enqueue(sf_pool *p, pool_task *t, unsigned long *seq)
{
    if (p->halting) {
        free(t->arg);
        free(t);
        return -ECANCELED;
    }
    t->seq = ++p->next_seq;
    if (p->tail)
        p->tail->next = t;
    else
        p->head = t;
    p->tail = t;
    p->npending++;
    p->st.submitted++;
    if (seq)
        *seq = t->seq;
    return 0;
}

int sf_pool_submit(sf_pool *p, const void *arg, size_t len, void *data, unsigned long *seq)
{
    pool_task *t;

    if (!p || !p->o.task || (len && !arg) || len > p->o.result_max)
        return -EINVAL;
    if (p->npending >= p->o.queue_max)
        return -ENOBUFS;
    t = calloc(1, sizeof *t);
    if (!t || (len && !(t->arg = malloc(len)))) {
        free(t);
        return -ENOMEM;
    }
    if (len)
        memcpy(t->arg, arg, len);
    t->len = len;
    t->data = data;
    return enqueue(p, t, seq);
}

int sf_pool_submit_cmd(sf_pool *p, sf_pool_cmd_cb cmd, void *cmd_arg, void *data,
                       unsigned long *seq)
{
    pool_task *t;

    if (!p || !cmd)
        return -EINVAL;
    if (p->npending >= p->o.queue_max)
        return -ENOBUFS;
    t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    t->cmd = cmd;
    t->cmd_arg = cmd_arg;
    t->data = data;
    return enqueue(p, t, seq);
}

int sf_pool_set_next_seq(sf_pool *p, unsigned long seq)
{
    if (!p || seq <= p->next_seq)
        return -EINVAL;
    p->next_seq = seq - 1;
    return 0;
}

static pool_task *dequeue(sf_pool *p)
{
    pool_task *t = p->head;

    if (!t)
        return NULL;
    p->head = t->next;
    if (!p->head)
        p->tail = NULL;
    t->next = NULL;
    p->npending--;
    return t;
}

/* A retry goes first: it is the oldest work, and --keep-order waits on it. */
static void requeue_front(sf_pool *p, pool_task *t)
{
    t->next = p->head;
    p->head = t;
    if (!p->tail)
        p->tail = t;
    p->npending++;
}

/* A failed task in exactly one of the stats' kinds, as its report says. */
static void count_failure(sf_pool *p, const sf_task_report *r)
{
    p->st.failed++;
    if (r->timed_out)
        p->st.timed_out++;
    else if (r->output_limited)
        p->st.output_limited++;
    else if (r->spawn_error)
        p->st.spawn_errors++;
    else if (!r->status.exited)
        p->st.killed_by_signal++;
    else
        p->st.failed_by_code++;
}

/* The report's flags for an attempt's reason to stop. */
static void report_stop(sf_task_report *r, enum stop_reason why)
{
    switch (why) {
    case STOP_TIMEOUT:
        r->timed_out = 1;
        break;
    case STOP_OUTPUT:
        r->output_limited = 1;
        break;
    case STOP_HALT:
    case STOP_CANCEL:
        r->killed = 1;
        break;
    case STOP_NONE:
    case STOP_CHANNEL:
        break;
    }
}

static void report_unrun(sf_pool *p, pool_task *t)
{
    sf_task_report r;

    memset(&r, 0, sizeof r);
    r.seq = t->seq;
    r.data = t->data;
    r.attempts = t->attempts;
    if (t->attempts) { /* failed, and waiting for a retry that will not come */
        r.state = SF_TASK_FAILED;
        r.status = t->last;
        report_stop(&r, t->last_stop);
        count_failure(p, &r);
    } else {
        r.state = SF_TASK_CANCELLED;
        p->st.cancelled++;
    }
    p->o.on_done(p, &r, p->o.arg);
    free(t->arg);
    free(t);
}

/* ------------------------------------------------------------ stopping */

/* Whether a slot may go from one state to another (enum slot_state). */
static int slot_move_ok(enum slot_state from, enum slot_state to)
{
    switch (to) {
    case SLOT_FREE:
        return from == SLOT_EXITED;                    /* reaped */
    case SLOT_RUNNING:
        return from == SLOT_FREE || from == SLOT_IDLE; /* started, or given a task */
    case SLOT_IDLE:
        return from == SLOT_RUNNING;                   /* its task returned */
    case SLOT_RETIRING:
        return from == SLOT_RUNNING || from == SLOT_IDLE; /* its last returned; retired */
    case SLOT_STOPPING:
        return from != SLOT_FREE && from != SLOT_EXITED; /* a reason to stop; pool_abort */
    case SLOT_EXITED:
        return from != SLOT_FREE && from != SLOT_EXITED; /* its exit seen */
    }
    return 0;
}

void pool_slot_to(pool_slot *s, enum slot_state to)
{
    assert(slot_move_ok(s->state, to));
    s->state = to;
}

/* SIGTERM (and SIGCONT, for a stopped task) to the group now, SIGKILL at
 * kill_at (check_timers) or as soon as the leader exits (on_exit_ready). */
static void escalate(sf_pool *p, pool_slot *s, double now)
{
    if (p->o.kill_grace_s == 0) {
        (void)proc_signal_group(s->pid, SIGKILL);
        s->kill_at = 0;
        return;
    }
    (void)proc_signal_group(s->pid, SIGTERM);
    (void)proc_signal_group(s->pid, SIGCONT);
    s->kill_at = now + p->o.kill_grace_s;
}

/*
 * The one place an attempt gets its reason to stop: the first wins, so a
 * timeout followed by a halt stays a timeout, and an attempt stopped for
 * any reason that then writes past output_max is only cut. A running
 * attempt is stopped; one whose leader has exited (its output read after
 * the exit) only keeps the reason: there is nothing left to signal.
 */
int pool_stop_attempt(sf_pool *p, pool_slot *s, enum stop_reason why, double now)
{
    if (!s->task || s->stop_reason != STOP_NONE)
        return 0;
    s->stop_reason = why;
    switch (why) {
    case STOP_TIMEOUT:
        sf_logf(&p->log, SF_LOG_INFO, "task %lu: timed out after %.3f s", s->task->seq,
                p->o.timeout_s);
        break;
    case STOP_OUTPUT:
        sf_logf(&p->log, SF_LOG_NOTICE, "task %lu: output over %llu bytes: %s", s->task->seq,
                p->o.output_max, s->state == SLOT_EXITED ? "cut" : "stopped");
        break;
    case STOP_NONE:
    case STOP_HALT:
    case STOP_CANCEL:
    case STOP_CHANNEL:
        break;
    }
    switch (s->state) {
    case SLOT_RUNNING:
        escalate(p, s, now);
        pool_slot_to(s, SLOT_STOPPING);
        break;
    case SLOT_EXITED:
    case SLOT_FREE: /* none of these holds a task but while it starts */
    case SLOT_IDLE:
    case SLOT_RETIRING:
    case SLOT_STOPPING:
        break;
    }
    return 1;
}

/* An idle worker is retired by closing its channel: it exits 0 on EOF. */
static void retire_worker(sf_pool *p, pool_slot *s)
{
    if (s->state != SLOT_IDLE)
        return;
    pool_fd_del(p, &s->chan);
    pool_slot_to(s, SLOT_RETIRING);
}

static void begin_halt(sf_pool *p, int mode, int by_cancel, double now)
{
    pool_task *t;

    if (by_cancel)
        p->st.cancelled_by_request = 1;
    else
        p->st.halted = 1;
    if (p->halting >= mode)
        return;
    if (!p->halting)
        sf_logf(&p->log, SF_LOG_NOTICE, "%s: starting no more tasks%s",
                by_cancel ? "cancelled" : "halting",
                mode == SF_HALT_NOW ? ", stopping the running ones" : "");
    p->halting = mode;
    while ((t = dequeue(p)) != NULL)
        report_unrun(p, t);
    for (unsigned i = 0; i < p->jobs; i++) {
        pool_slot *s = &p->slots[i];
        if (mode == SF_HALT_NOW)
            pool_stop_attempt(p, s, by_cancel ? STOP_CANCEL : STOP_HALT, now);
        retire_worker(p, s);
    }
}

/* Only a lock-free atomic may be written from a signal handler (C11 7.14.1.1). */
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "sf_pool_cancel needs a lock-free atomic_int");

void sf_pool_cancel(sf_pool *p)
{
    uint64_t one = 1;
    int saved = errno; /* a signal handler must leave errno as it found it */

    atomic_store(&p->cancel_requested, 1);
    if (write(p->cancel_fd, &one, sizeof one) < 0) {
        /* EAGAIN: the counter is full, so a wakeup is pending anyway. */
    }
    errno = saved;
}

/* ------------------------------------------------------------ ending */

static int retry_matches(const sf_pool *p, const sf_status *st, int timed_out)
{
    const sf_pool_opts *o = &p->o;

    if (!o->nretry_codes && !o->nretry_signals && !o->retry_timeout)
        return 1;
    if (timed_out)
        return o->retry_timeout;
    for (size_t i = 0; st->exited && i < o->nretry_codes; i++)
        if (o->retry_codes[i] == st->code)
            return 1;
    for (size_t i = 0; !st->exited && i < o->nretry_signals; i++)
        if (o->retry_signals[i] == st->signal)
            return 1;
    return 0;
}

static void clear_attempt(pool_slot *s)
{
    free(s->argv);
    s->argv = NULL;
    free(s->result);
    s->result = NULL;
    s->result_len = 0;
    s->task = NULL;
    s->task_done = 0;
}

/* A worker whose task returned (its attempt ended while it runs) waits for
 * the next task, or exits by itself after its last. */
static void worker_task_over(pool_slot *s)
{
    if (s->state == SLOT_RUNNING)
        pool_slot_to(s, s->worker_last ? SLOT_RETIRING : SLOT_IDLE);
}

static void check_halt(sf_pool *p, double now)
{
    unsigned long ended = p->st.ok + p->st.failed;

    if (p->o.halt == SF_HALT_NEVER || p->halting >= p->o.halt)
        return;
    if ((p->o.halt_fail && p->st.failed >= p->o.halt_fail) ||
        (p->o.halt_fail_pct > 0 && ended > 0 &&
         (double)p->st.failed * 100.0 >= p->o.halt_fail_pct * (double)ended)) {
        sf_logf(&p->log, SF_LOG_NOTICE, "%lu task%s failed: halt", p->st.failed,
                p->st.failed == 1 ? "" : "s");
        begin_halt(p, p->o.halt, 0, now);
    }
}

/* Whether the attempt succeeded: exit code 0, and not stopped for a
 * reason that makes it fail whatever its status. */
static int attempt_ok(const pool_slot *s, sf_status st, int spawn_error)
{
    if (spawn_error || !st.exited || st.code != 0)
        return 0;
    switch (s->stop_reason) {
    case STOP_NONE:
    case STOP_CHANNEL: /* it returned, and said so, before it was stopped */
        return 1;
    case STOP_TIMEOUT:
    case STOP_OUTPUT:
    case STOP_HALT:
    case STOP_CANCEL:
        return 0;
    }
    return 0;
}

/* Whether a failed attempt may be followed by another. Not: a command
 * that could not start (not found, not executable: the next attempt fails
 * the same way), one that wrote too much (it would again), one stopped on
 * purpose, or any once the pool halts. */
static int retryable(const sf_pool *p, const pool_slot *s, const sf_status *st, int spawn_error)
{
    if (spawn_error || p->halting || s->task->attempts > p->o.retries)
        return 0;
    switch (s->stop_reason) {
    case STOP_NONE:
    case STOP_CHANNEL:
        return retry_matches(p, st, 0);
    case STOP_TIMEOUT:
        return retry_matches(p, st, 1);
    case STOP_OUTPUT:
    case STOP_HALT:
    case STOP_CANCEL:
        return 0;
    }
    return 0;
}

/* The attempt running in s is over, with status st: retry, or report. A
 * worker whose task returned waits for the next one (or exits, if that
 * was its last) from here on. */
static void end_attempt(sf_pool *p, pool_slot *s, sf_status st, int spawn_error, double now)
{
    pool_task *t = s->task;
    sf_task_report r;
    int ok = attempt_ok(s, st, spawn_error);

    p->st.running--;
    p->feed_waiting = 0;
    if (!ok && retryable(p, s, &st, spawn_error)) {
        t->last = st;
        t->last_stop = s->stop_reason;
        p->st.retried++;
        clear_attempt(s);
        worker_task_over(s);
        requeue_front(p, t);
        return;
    }
    memset(&r, 0, sizeof r);
    r.seq = t->seq;
    r.data = t->data;
    r.state = ok ? SF_TASK_OK : SF_TASK_FAILED;
    r.status = st;
    report_stop(&r, s->stop_reason);
    r.spawn_error = spawn_error;
    r.attempts = t->attempts;
    r.slot = s->index;
    r.pid = (int)s->pid;
    r.start_time = s->started_wall;
    r.duration_s = now - s->started;
    r.stdout_bytes = s->outb;
    r.stderr_bytes = s->errb;
    r.argv = s->argv;
    r.result = s->result;
    r.result_len = s->result_len;
    if (ok)
        p->st.ok++;
    else
        count_failure(p, &r);
    p->o.on_done(p, &r, p->o.arg);
    clear_attempt(s);
    worker_task_over(s);
    free(t->arg);
    free(t);
    if (!ok)
        check_halt(p, now);
}

static int transient(int err)
{
    return err == EAGAIN || err == ENOMEM || err == EMFILE || err == ENFILE || err == ENOBUFS;
}

/* A command that cannot start is logged, but not again while the same
 * command fails the same way: a misspelt COMMAND fails every task alike,
 * and each is still counted (spawn_errors) and reported. */
static void log_spawn_failure(sf_pool *p, const pool_task *t, const char *prog, int err)
{
    char *copy;

    if (p->spawn_err == err && p->spawn_err_prog && strcmp(p->spawn_err_prog, prog) == 0)
        return;
    {
        /* The name may come from input data: no escape sequence of it
         * reaches a terminal, as with a task's log lines. */
        char clean[512];
        sf_text_clean(clean, sizeof clean, prog, strlen(prog), "?");
        sf_logf(&p->log, SF_LOG_WARN, "task %lu: cannot run %s: %s", t->seq, clean,
                strerror(err));
    }
    if ((copy = strdup(prog)) != NULL) { /* without memory: log them all */
        free(p->spawn_err_prog);
        p->spawn_err_prog = copy;
        p->spawn_err = err;
    }
}

/* Whether a process of ours other than slot s's runs: its end will give
 * back the descriptors, memory or process slot that a start lacked. */
static int others_running(const sf_pool *p, const pool_slot *s)
{
    for (unsigned i = 0; i < p->jobs; i++)
        if (&p->slots[i] != s && p->slots[i].state != SLOT_FREE)
            return 1;
    return 0;
}

/*
 * A start failed for lack of descriptors, processes or memory (EMFILE,
 * EAGAIN, ENOMEM...): not the task's fault, and usually over once some of
 * our tasks end. The task goes back to the head of the queue and nothing
 * starts for 50 ms, doubling to 1 s (back to 50 ms once one starts), or
 * until one of our processes ends and gives back what it held.
 * Such failures come in episodes (a -j higher than the descriptor limit
 * allows fails a start whenever a slot frees): the log says when one
 * begins, one line, and when it is over (no start failed for
 * SPAWN_QUIET_S, or the run ends), with a count; not a line per task per
 * backoff. With no process of ours left to end and free something,
 * waiting may never help (a limit below what one task needs): past
 * SPAWN_IDLE_TRIES such backoffs in a row the pool gives up, said once,
 * and every start that fails so from then on fails its task as a command
 * that cannot start does, until one starts.
 * Returns 1 when the task was put back, 0 when it fails now.
 */
static int spawn_wait(sf_pool *p, pool_slot *s, pool_task *t, int err, double now)
{
    if (others_running(p, s))
        p->spawn_idle_fails = 0;
    else if (++p->spawn_idle_fails > SPAWN_IDLE_TRIES) {
        if (p->spawn_idle_fails == SPAWN_IDLE_TRIES + 1)
            sf_logf(&p->log, SF_LOG_ERROR, "cannot start tasks: %s for %.1f s, and none of "
                    "ours runs to free what they need: failing those that cannot start",
                    strerror(err), now - p->spawn_fail_since);
        p->spawn_fails = 0; /* said: the episode is over */
        return 0;
    }
    if (p->spawn_fails++ == 0)
        p->spawn_fail_since = now;
    p->spawn_fail_last = now;
    p->spawn_fail_err = err;
    p->spawn_backoff = p->spawn_backoff ? fmin(p->spawn_backoff * 2, 1.0) : 0.05;
    p->spawn_not_before = now + p->spawn_backoff;
    if (p->spawn_fails == 1)
        sf_logf(&p->log, SF_LOG_WARN, "cannot start task %lu: %s; retrying in %.2f s (said "
                "once while starts keep failing)", t->seq, strerror(err), p->spawn_backoff);
    return 1;
}

/* The episode is over: its count, unless its first line said it all. */
static void spawn_episode_end(sf_pool *p)
{
    if (p->spawn_fails > 1)
        sf_logf(&p->log, SF_LOG_NOTICE, "%lu task starts failed (%s) over %.1f s; each was "
                "tried again", p->spawn_fails, strerror(p->spawn_fail_err),
                p->spawn_fail_last - p->spawn_fail_since);
    p->spawn_fails = 0;
}

/* A task started during an episode. */
static void spawn_started(sf_pool *p, double now)
{
    p->spawn_backoff = 0;
    p->spawn_idle_fails = 0;
    if (now - p->spawn_fail_last >= SPAWN_QUIET_S)
        spawn_episode_end(p);
}

static void start_attempt(sf_pool *p, pool_slot *s, pool_task *t, double now)
{
    int rc;

    t->attempts++;
    s->task = t;
    s->stop_reason = STOP_NONE;
    s->task_done = 0;
    s->pdone = 0;
    s->ptotal = -1;
    s->outb = s->errb = 0;
    s->started = now;
    s->started_wall = pool_wall();
    s->deadline = p->o.timeout_s > 0 ? now + p->o.timeout_s : 0;
    s->kill_at = 0;
    p->st.running++;
    rc = pool_launch(p, s);
    if (rc == 0) {
        p->st.started++;
        if (p->spawn_fails) /* the only cost on the usual path: one test */
            spawn_started(p, now);
        if (p->o.on_start) {
            sf_task_info info;
            pool_info(s, &info);
            p->o.on_start(p, &info, p->o.arg);
        }
        return;
    }
    if (transient(-rc) && spawn_wait(p, s, t, -rc, now)) {
        t->attempts--;
        p->st.running--;
        clear_attempt(s);
        requeue_front(p, t);
        return;
    }
    /* The command cannot be run (no such file, not executable...; or out
     * of resources for good, spawn_wait): the task fails as a shell would
     * say it, 127 (126 if it is there). */
    {
        sf_status st = {1, (-rc == ENOENT || -rc == ENOTDIR) ? 127 : 126, 0, 0};
        log_spawn_failure(p, t, s->argv && s->argv[0] ? s->argv[0] : "the command", -rc);
        end_attempt(p, s, st, -rc, now);
    }
}

/* Whether the slot can take a task now. A worker that is retiring or
 * being killed keeps its slot until it is reaped. */
static int slot_free(const pool_slot *s)
{
    switch (s->state) {
    case SLOT_FREE:
    case SLOT_IDLE:
        return 1;
    case SLOT_RUNNING:
    case SLOT_RETIRING:
    case SLOT_STOPPING:
    case SLOT_EXITED:
        return 0;
    }
    return 0;
}

static void schedule(sf_pool *p, double now)
{
    for (unsigned i = 0; i < p->jobs && p->head && !p->halting; i++) {
        pool_slot *s = &p->slots[i];
        if (now < p->spawn_not_before)
            return;
        if (!slot_free(s))
            continue;
        if (s->state == SLOT_IDLE && p->head->cmd) { /* a command where an idle worker sits */
            retire_worker(p, s);
            continue;
        }
        start_attempt(p, s, dequeue(p), now);
    }
}

/* ------------------------------------------------------------ exits */

static sf_status status_of(const siginfo_t *si)
{
    sf_status st = {0, 0, 0, 0};

    if (si->si_code == CLD_EXITED) {
        st.exited = 1;
        st.code = si->si_status;
    } else {
        st.signal = si->si_status;
        st.core = si->si_code == CLD_DUMPED;
    }
    return st;
}

/* A C task's return value, as the exit code it stands for. */
static sf_status returned(const pool_slot *s)
{
    sf_status st = {1, s->task_rc, 0, 0};
    return st;
}

/* waitid on the slot's child, by pidfd or by pid (see watch_exit). */
static int wait_slot(const pool_slot *s, siginfo_t *si, int flags)
{
    memset(si, 0, sizeof *si);
    if (s->pidfd >= 0)
        return waitid((idtype_t)P_PIDFD, (id_t)s->pidfd, si, WEXITED | flags);
    return waitid(P_PID, (id_t)s->pid, si, WEXITED | flags);
}

/* The slot's process has exited: kill what it leaves in its group if it
 * was being stopped, read what is left in its pipes and channel, reap it,
 * and end its attempt if one was running. */
static void on_exit_ready(sf_pool *p, pool_slot *s, double now)
{
    enum slot_state was = s->state;
    siginfo_t si;
    sf_status st;

    /* WNOWAIT: look without reaping, so the zombie keeps the group's id
     * while the group is killed. */
    if (wait_slot(s, &si, WNOHANG | WNOWAIT) < 0 || si.si_pid == 0)
        return;
    pool_slot_to(s, SLOT_EXITED);
    st = status_of(&si);
    if (was == SLOT_STOPPING)
        (void)kill(-s->pid, SIGKILL);
    pool_read_output(p, s, 1, 1);
    pool_read_output(p, s, 2, 1);
    pool_read_chan(p, s, 1);
    proc_guard_forget(&p->guard, (unsigned)(s - p->slots)); /* before the reap frees the id */
    while (wait_slot(s, &si, 0) < 0 && errno == EINTR)
        ;
    pool_slot_release(p, s);
    if (s->task && s->is_worker && s->task_done) {
        end_attempt(p, s, returned(s), 0, now);
    } else if (s->task) {
        end_attempt(p, s, st, 0, now);
    } else if (s->is_worker && !(st.exited && st.code == 0) && was != SLOT_STOPPING) {
        char what[64];
        sf_status_format(&st, what, sizeof what);
        sf_logf(&p->log, SF_LOG_WARN, "slot %u: idle worker %ld %s", s->index, (long)s->pid, what);
    }
    s->pid = 0;
    s->is_worker = 0;
    s->kill_at = 0;
    pool_slot_to(s, SLOT_FREE);
    /* What it held is given back: a start that failed for lack of it
     * need not wait out its backoff (spawn_wait). */
    p->spawn_not_before = 0;
}

static void on_chan_ready(sf_pool *p, pool_slot *s, uint32_t events, double now)
{
    if (s->is_worker && (events & EPOLLOUT) && s->chan >= 0) {
        int rc = chan_queue_flush(&s->wq, s->chan);
        if (rc < 0) {
            pool_fd_del(p, &s->chan);
            pool_stop_attempt(p, s, STOP_CHANNEL, now);
        } else if (rc == 1) {
            struct epoll_event ev = {.events = EPOLLIN,
                                     .data.u64 = (uint64_t)(s - p->slots) * 4 + EV_CHAN};
            (void)epoll_ctl(p->ep, EPOLL_CTL_MOD, s->chan, &ev);
            s->wq_armed = 0;
        }
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
        pool_read_chan(p, s, 0);
    if (s->state == SLOT_RUNNING && s->task_done) {
        end_attempt(p, s, returned(s), 0, now);
        /* A worker whose last task this was exits by itself; on_exit_ready
         * reaps it. */
    }
}

/* ------------------------------------------------------------ the loop */

static void feed_arm(sf_pool *p, int want)
{
    if (p->o.feed_fd < 0 || !p->feed_fd_pollable || want == p->feed_armed)
        return;
    if (want)
        (void)pool_fd_add(p, p->o.feed_fd, EPOLLIN, EV_FEED);
    else
        (void)epoll_ctl(p->ep, EPOLL_CTL_DEL, p->o.feed_fd, NULL);
    p->feed_armed = want;
}

static int want_feed(const sf_pool *p)
{
    return !p->feed_ended && !p->halting && !p->feed_waiting && p->npending < p->jobs;
}

static void call_feed(sf_pool *p)
{
    int rc = p->o.feed(p, p->o.arg);

    p->feed_ready = rc == SF_FEED_READY;
    if (rc == SF_FEED_END)
        p->feed_ended = 1;
    else if (rc == SF_FEED_WAIT)
        p->feed_waiting = 1;
}

static int all_done(const sf_pool *p)
{
    if ((!p->feed_ended && !p->halting) || p->head)
        return 0;
    for (unsigned i = 0; i < p->jobs; i++)
        if (p->slots[i].state != SLOT_FREE)
            return 0;
    return 1;
}

static int wait_ms(const sf_pool *p, double now, double next_tick)
{
    double until = next_tick;

    if (p->head && !p->halting && p->spawn_not_before > now &&
        (until == 0 || p->spawn_not_before < until))
        until = p->spawn_not_before;
    for (unsigned i = 0; i < p->jobs; i++) {
        const pool_slot *s = &p->slots[i];
        double t = s->state == SLOT_STOPPING ? s->kill_at
                 : s->state == SLOT_RUNNING  ? s->deadline
                                             : 0;
        if (t > 0 && (until == 0 || t < until))
            until = t;
    }
    if (p->head && !p->halting && p->spawn_not_before <= now)
        for (unsigned i = 0; i < p->jobs; i++)
            if (slot_free(&p->slots[i]))
                return 0; /* a start failed and gave its task back: go again */
    if (want_feed(p) && (!p->feed_fd_pollable || p->feed_ready))
        return 0; /* feed said MORE, with nothing to wait on: ask again */
    if (p->poll_exits)
        for (unsigned i = 0; i < p->jobs; i++)
            if (p->slots[i].state != SLOT_FREE && p->slots[i].pidfd < 0 &&
                (until == 0 || now + POLL_EXITS_S < until))
                until = now + POLL_EXITS_S;
    if (until == 0)
        return -1;
    if (until <= now)
        return 0;
    return (int)ceil((until - now) * 1000.0);
}

static void check_timers(sf_pool *p, double now)
{
    for (unsigned i = 0; i < p->jobs; i++) {
        pool_slot *s = &p->slots[i];
        if (s->state != SLOT_FREE && s->pidfd < 0)
            on_exit_ready(p, s, now); /* polled: returns at once if it runs */
        switch (s->state) {
        case SLOT_RUNNING:
            if (s->deadline > 0 && now >= s->deadline)
                pool_stop_attempt(p, s, STOP_TIMEOUT, now);
            break;
        case SLOT_STOPPING:
            if (s->kill_at > 0 && now >= s->kill_at) {
                (void)proc_signal_group(s->pid, SIGKILL);
                s->kill_at = 0;
            }
            break;
        case SLOT_FREE:
        case SLOT_IDLE:
        case SLOT_RETIRING:
        case SLOT_EXITED:
            break;
        }
    }
}

static void dispatch(sf_pool *p, const struct epoll_event *ev, double now)
{
    uint64_t id = ev->data.u64;
    pool_slot *s;

    if (id == EV_CANCEL) {
        uint64_t n;
        if (read(p->cancel_fd, &n, sizeof n) < 0) {
            /* EAGAIN: already drained */
        }
        return;
    }
    if (id == EV_FEED) {
        if (want_feed(p))
            call_feed(p);
        return;
    }
    s = &p->slots[id / 4];
    switch (id % 4) {
    case EV_EXIT:
        if (s->pidfd >= 0)
            on_exit_ready(p, s, now);
        break;
    case EV_CHAN:
        on_chan_ready(p, s, ev->events, now);
        break;
    case EV_OUT:
        pool_read_output(p, s, 1, 0);
        break;
    case EV_ERR:
        pool_read_output(p, s, 2, 0);
        break;
    }
}

/* The pool itself failed: kill everything, reap it, report it. */
static void pool_abort(sf_pool *p, double now)
{
    begin_halt(p, SF_HALT_NOW, 1, now);
    for (unsigned i = 0; i < p->jobs; i++) {
        pool_slot *s = &p->slots[i];
        if (s->state == SLOT_FREE)
            continue;
        (void)proc_signal_group(s->pid, SIGKILL);
        s->kill_at = 0;
        pool_slot_to(s, SLOT_STOPPING);
        {
            siginfo_t si;
            while (wait_slot(s, &si, WNOWAIT) < 0 && errno == EINTR)
                ;
            on_exit_ready(p, s, now);
        }
    }
}

int sf_pool_run(sf_pool *p)
{
    struct epoll_event evs[EVENTS_MAX];
    double next_tick = 0;
    int rc = 0, gerr;

    if (!p)
        return -EINVAL;
    if (p->running_loop)
        return -EBUSY;
    if ((rc = pool_env_build(p)) < 0)
        return rc;
    proc_caught_signals(&p->caught_signals);
    p->reset_signals = p->caught_signals;
    sigaddset(&p->reset_signals, SIGPIPE);
    /* Before the slice is shortened: the guard has no use for it. */
    if ((gerr = proc_guard_start(&p->guard, p->jobs, p->o.kill_grace_s, &p->caught_signals)) < 0)
        sf_logf(&p->log, SF_LOG_WARN, "cannot start the guard: %s; tasks may outlive a killed run",
                strerror(-gerr));
    /* The loop is what starts the next task: let it run as soon as an
     * exit wakes it (os/slice.c says why). */
    (void)os_slice_short(&p->slice);
    p->running_loop = 1;
    if (p->o.feed_fd >= 0) {
        /* epoll refuses regular files (EPERM): they are always readable,
         * so feed is then called without asking epoll. */
        p->feed_fd_pollable = pool_fd_add(p, p->o.feed_fd, EPOLLIN, EV_FEED) == 0;
        if (p->feed_fd_pollable)
            (void)epoll_ctl(p->ep, EPOLL_CTL_DEL, p->o.feed_fd, NULL);
    }
    if (p->o.tick_s > 0)
        next_tick = pool_now() + p->o.tick_s;

    for (;;) {
        double now = pool_now();
        int n, ms;

        if (atomic_load(&p->cancel_requested) && !p->st.cancelled_by_request)
            begin_halt(p, SF_HALT_NOW, 1, now);
        schedule(p, now);
        /* Bounded: wait_ms comes back at once if the feed wants more. */
        for (unsigned k = 0; want_feed(p) && (!p->feed_fd_pollable || p->feed_ready) &&
                             k < p->jobs + 1; k++) {
            call_feed(p);
            schedule(p, now);
        }
        feed_arm(p, want_feed(p) && !p->feed_ready);
        if (!p->head && (p->feed_ended || p->halting))
            for (unsigned i = 0; i < p->jobs; i++)
                retire_worker(p, &p->slots[i]);
        if (all_done(p))
            break;
        ms = wait_ms(p, now, next_tick);
        n = epoll_wait(p->ep, evs, EVENTS_MAX, ms);
        if (n < 0 && errno != EINTR) {
            rc = -errno;
            sf_logf(&p->log, SF_LOG_ERROR, "epoll_wait: %s", strerror(errno));
            pool_abort(p, pool_now());
            break;
        }
        now = pool_now();
        for (int i = 0; i < n; i++)
            dispatch(p, &evs[i], now);
        check_timers(p, now);
        if (next_tick > 0 && now >= next_tick) {
            if (p->o.on_tick)
                p->o.on_tick(p, p->o.arg);
            next_tick = now + p->o.tick_s;
        }
    }
    feed_arm(p, 0);
    if (p->spawn_fails)
        spawn_episode_end(p);
    proc_guard_stop(&p->guard);
    pool_env_free(p);
    os_slice_restore(&p->slice);
    p->slice.set = 0;
    p->running_loop = 0;
    return rc;
}

/* ------------------------------------------------------------ queries */

void sf_pool_get_stats(const sf_pool *p, sf_pool_stats *out)
{
    *out = p->st;
    out->pending = p->npending;
}

/* Whether an attempt's process runs in the slot (or has just exited, its
 * output being read): what sf_pool_running lists. */
static int slot_attempt_runs(const pool_slot *s)
{
    switch (s->state) {
    case SLOT_RUNNING:
    case SLOT_STOPPING:
    case SLOT_EXITED:
        return s->task != NULL;
    case SLOT_FREE:
    case SLOT_IDLE:
    case SLOT_RETIRING:
        return 0;
    }
    return 0;
}

size_t sf_pool_running(const sf_pool *p, sf_task_info *out, size_t max)
{
    size_t n = 0;

    for (unsigned i = 0; i < p->jobs && n < max; i++)
        if (slot_attempt_runs(&p->slots[i]))
            pool_info(&p->slots[i], &out[n++]);
    return n;
}

unsigned sf_pool_jobs(const sf_pool *p)
{
    return p->jobs;
}

void sf_pool_free(sf_pool *p)
{
    pool_task *t;

    if (!p)
        return;
    if (p->slots) {
        int busy = p->head != NULL;
        for (unsigned i = 0; i < p->jobs; i++)
            busy |= p->slots[i].state != SLOT_FREE;
        if (busy)
            pool_abort(p, pool_now());
        for (unsigned i = 0; i < p->jobs; i++)
            clear_attempt(&p->slots[i]);
    }
    while ((t = dequeue(p)) != NULL) {
        free(t->arg);
        free(t);
    }
    if (p->ep >= 0)
        close(p->ep);
    if (p->cancel_fd >= 0)
        close(p->cancel_fd);
    if (p->devnull >= 0)
        close(p->devnull);
    pool_env_free(p);
    free(p->spawn_err_prog);
    free(p->readbuf);
    free(p->slots);
    free(p);
}
