/* end.c - how an attempt ends: stopping it (its one reason, SIGTERM then
 * SIGKILL to its group), its exit (seen, drained, reaped), the retry
 * decision, the report, and a halt after failures. */
#include "pool/pool_internal.h"
#include "process/process.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------------------------------------ stopping */

/* The library's escalation (process/stop.h): SIGTERM and SIGCONT to the
 * group now (SIGKILL at once with a grace of 0), SIGKILL at kill_at
 * (slot_timers) or as soon as the leader exits (pool_on_exit), whichever
 * comes first. A leader that has exited is a zombie holding the group's
 * id until pool_on_exit reaps it, so the id cannot be reused meanwhile. */
static void escalate(sf_pool *p, pool_slot *s, double now)
{
    double kill_in;

    (void)proc_stop_begin(&p->stop, s->pid, &kill_in);
    s->kill_at = kill_in < 0 ? 0 : now + kill_in;
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
        sf_logev(&p->log, SF_LOG_INFO, "timed_out", (int)s->pid, NULL,
                 SF_FIELDS(SF_F_UINT("task", s->task->seq), SF_F_DBL("after_s", p->o.timeout_s)),
                 "task %lu: timed out after %.3f s", s->task->seq, p->o.timeout_s);
        break;
    case STOP_OUTPUT:
        sf_logev(&p->log, SF_LOG_NOTICE, "output_limited", (int)s->pid, NULL,
                 SF_FIELDS(SF_F_UINT("task", s->task->seq), SF_F_UINT("limit", p->o.output_max),
                           SF_F_BOOL("stopped", s->state != SLOT_EXITED)),
                 "task %lu: output over %llu bytes: %s", s->task->seq, p->o.output_max,
                 s->state == SLOT_EXITED ? "cut" : "stopped");
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
        pool_slot_to(p, s, SLOT_STOPPING);
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
void pool_retire_worker(sf_pool *p, pool_slot *s)
{
    if (s->state != SLOT_IDLE)
        return;
    pool_fd_del(p, &s->chan);
    pool_slot_to(p, s, SLOT_RETIRING);
}

/* A worker that broke the protocol is given nothing more, nor trusted to
 * exit by itself: its channel is closed (so it is never IDLE again) and
 * its group killed now, whatever it was doing (STOPPING; pool_on_exit
 * reaps it). A task it holds ends at its exit, with STOP_CHANNEL as its
 * reason if it had none: OK if it said it returned before the bad frame,
 * else as its status says. */
void pool_worker_broke(sf_pool *p, pool_slot *s, double now)
{
    pool_fd_del(p, &s->chan);
    switch (s->state) {
    case SLOT_RUNNING:
    case SLOT_IDLE:
    case SLOT_RETIRING:
    case SLOT_STOPPING:
        pool_slot_to(p, s, SLOT_STOPPING);
        (void)proc_stop_kill(&p->stop, s->pid);
        s->kill_at = 0;
        /* STOPPING already: this only gives the attempt its reason. */
        (void)pool_stop_attempt(p, s, STOP_CHANNEL, now);
        break;
    case SLOT_FREE:
    case SLOT_EXITED: /* its frames read after its exit: nothing left to kill */
        break;
    }
}

/* The slot's deadlines: its attempt's timeout, its SIGKILL after the
 * grace; and, with no pidfd to wake the loop, whether its process has
 * exited. */
static void slot_timers(sf_pool *p, pool_slot *s, double now)
{
    if (s->state != SLOT_FREE && s->pidfd < 0)
        pool_on_exit(p, s, now); /* polled: returns at once if it runs */
    switch (s->state) {
    case SLOT_RUNNING:
        if (s->deadline > 0 && now >= s->deadline)
            pool_stop_attempt(p, s, STOP_TIMEOUT, now);
        break;
    case SLOT_STOPPING:
        if (s->kill_at > 0 && now >= s->kill_at) {
            (void)proc_stop_kill(&p->stop, s->pid);
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

void pool_check_timers(sf_pool *p, double now)
{
    for (unsigned i = 0; i < p->jobs; i++)
        slot_timers(p, &p->slots[i], now);
}

/* ------------------------------------------------------------ the report */

void pool_count_failure(sf_pool *p, const sf_task_report *r)
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

/* A task ended by a halt before its attempt (or its retry) could run. */
void pool_report_unrun(sf_pool *p, pool_task *t)
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
        pool_count_failure(p, &r);
    } else {
        r.state = SF_TASK_CANCELLED;
        p->st.cancelled++;
    }
    p->o.on_done(p, &r, p->o.arg);
    free(t->arg);
    free(t);
}

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

void pool_attempt_clear(pool_slot *s)
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
static void worker_task_over(sf_pool *p, pool_slot *s)
{
    if (s->state == SLOT_RUNNING) /* a worker whose channel is closed is never IDLE */
        pool_slot_to(p, s, s->worker_last || s->chan < 0 ? SLOT_RETIRING : SLOT_IDLE);
}

void pool_check_halt(sf_pool *p, double now)
{
    unsigned long ended = p->st.ok + p->st.failed;

    if (p->o.halt == SF_HALT_NEVER || p->halting >= p->o.halt)
        return;
    if ((p->o.halt_fail && p->st.failed >= p->o.halt_fail) ||
        (p->o.halt_fail_pct > 0 && ended > 0 &&
         (double)p->st.failed * 100.0 >= p->o.halt_fail_pct * (double)ended)) {
        sf_logev(&p->log, SF_LOG_NOTICE, "halt", 0, NULL,
                 SF_FIELDS(SF_F_UINT("failed", p->st.failed)), "%lu task%s failed: halt",
                 p->st.failed, p->st.failed == 1 ? "" : "s");
        pool_begin_halt(p, p->o.halt, 0, now);
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
        return 1;
    case STOP_CHANNEL: /* only if it said it returned: a worker that never got
                        * its frame exits 0 too, at EOF on its channel */
        return s->task_done;
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
void pool_end_attempt(sf_pool *p, pool_slot *s, sf_status st, int spawn_error, double now)
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
        pool_attempt_clear(s);
        worker_task_over(p, s);
        pool_requeue_front(p, t);
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
        pool_count_failure(p, &r);
    p->o.on_done(p, &r, p->o.arg);
    pool_attempt_clear(s);
    worker_task_over(p, s);
    free(t->arg);
    free(t);
    if (!ok)
        pool_check_halt(p, now);
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

/* Closing a descriptor takes it out of the epoll set (none is dup'ed). */
void pool_slot_release(sf_pool *p, pool_slot *s)
{
    pool_fd_del(p, &s->pidfd);
    pool_fd_del(p, &s->chan);
    pool_fd_del(p, &s->out);
    pool_fd_del(p, &s->err);
    if (s->is_worker) {
        chan_queue_fini(&s->wq);
        chan_decoder_fini(&s->fd_dec);
        s->wq_armed = 0;
    } else {
        jsonl_decoder_fini(&s->jd);
    }
}

/* The slot's process has exited: kill what it leaves in its group if it
 * was being stopped, read what is left in its pipes and channel, reap it,
 * and end its attempt if one was running. */
void pool_on_exit(sf_pool *p, pool_slot *s, double now)
{
    enum slot_state was = s->state;
    siginfo_t si;
    sf_status st;

    /* WNOWAIT: look without reaping, so the zombie keeps the group's id
     * while the group is killed. */
    if (wait_slot(s, &si, WNOHANG | WNOWAIT) < 0 || si.si_pid == 0)
        return;
    pool_slot_to(p, s, SLOT_EXITED);
    st = status_of(&si);
    if (was == SLOT_STOPPING)
        (void)proc_stop_kill(&p->stop, s->pid);
    pool_read_output(p, s, 1, 1);
    pool_read_output(p, s, 2, 1);
    pool_read_chan(p, s, 1);
    proc_guard_forget(&p->guard, (unsigned)(s - p->slots)); /* before the reap frees the id */
    while (wait_slot(s, &si, 0) < 0 && errno == EINTR)
        ;
    pool_slot_release(p, s);
    if (s->task && s->is_worker && s->task_done) {
        pool_end_attempt(p, s, returned(s), 0, now);
    } else if (s->task) {
        pool_end_attempt(p, s, st, 0, now);
    } else if (s->is_worker && !(st.exited && st.code == 0) && was != SLOT_STOPPING) {
        char what[64];
        sf_status_format(&st, what, sizeof what);
        sf_logev(&p->log, SF_LOG_WARN, "worker_exited", (int)s->pid, NULL,
                 SF_FIELDS(SF_F_UINT("slot", s->index), SF_F_STATUS("status", st)),
                 "slot %u: idle worker %ld %s", s->index, (long)s->pid, what);
    }
    s->pid = 0;
    s->is_worker = 0;
    s->kill_at = 0;
    pool_slot_to(p, s, SLOT_FREE);
    pool_spawn_resources_freed(p);
}

/* A worker said its task returned: the attempt ends with that value as
 * its exit code, and the worker waits for the next task. */
void pool_task_returned(sf_pool *p, pool_slot *s, double now)
{
    pool_end_attempt(p, s, returned(s), 0, now);
    /* A worker whose last task this was exits by itself; pool_on_exit
     * reaps it. */
}

/* The pool itself failed, or is freed with tasks left: kill everything,
 * reap it, report it. */
void pool_abort(sf_pool *p, double now)
{
    pool_begin_halt(p, SF_HALT_NOW, 1, now);
    for (unsigned i = 0; i < p->jobs; i++) {
        pool_slot *s = &p->slots[i];
        if (s->state == SLOT_FREE)
            continue;
        (void)proc_stop_kill(&p->stop, s->pid);
        s->kill_at = 0;
        pool_slot_to(p, s, SLOT_STOPPING);
        {
            siginfo_t si;
            while (wait_slot(s, &si, WNOWAIT) < 0 && errno == EINTR)
                ;
            pool_on_exit(p, s, now);
        }
    }
}
