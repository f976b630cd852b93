/* launch.c - starting an attempt: a command with proc_exec (vfork), a C task
 * given to an idle worker or to a newly forked one; and what a start that
 * fails leads to (the task failed, or put back while resources lack). */
#include "pool/pool_internal.h"
#include "process/process.h"
#include "channel/be.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define SPAWN_IDLE_TRIES 8 /* backoffs (about 4.5 s) with nothing of ours running */
#define SPAWN_QUIET_S 2.0  /* a start failure episode ends after this without one */

extern char **environ;

/* The variables the pool sets itself, dropped from the copied environment. */
static const char *const own_vars[] = {
    "SOCKFORK_FD=", "SOCKFORK_TASK=", "SOCKFORK_SLOT=", "PARALLEL_SEQ=", "PARALLEL_JOBSLOT=",
};

static int own_var(const char *e)
{
    for (size_t i = 0; i < sizeof own_vars / sizeof own_vars[0]; i++)
        if (strncmp(e, own_vars[i], strlen(own_vars[i])) == 0)
            return 1;
    return 0;
}

int pool_env_build(sf_pool *p)
{
    size_t n = 0, k = 0;

    for (char **e = environ; e && *e; e++)
        n++;
    p->envp = calloc(n + POOL_ENV_EXTRA + 1, sizeof *p->envp);
    if (!p->envp)
        return -ENOMEM;
    for (char **e = environ; e && *e; e++)
        if (!own_var(*e))
            p->envp[k++] = *e; /* borrowed: environ outlives the run */
    p->nenv_base = k;
    return 0;
}

void pool_env_free(sf_pool *p)
{
    free(p->envp);
    p->envp = NULL;
    free(p->exec_name);
    free(p->exec_file);
    p->exec_name = p->exec_file = NULL;
}

/*
 * The file to exec for argv[0]: a name without a slash is looked up in
 * PATH (proc_path_find, execvp's rules) once and remembered (one name: a
 * run execs the same command again and again), instead of trying execve
 * in each PATH directory for every task. NULL with *err set when there is
 * none: -ENOENT, or -EACCES when something of that name was found but
 * none could be executed (as execvp).
 */
static const char *exec_path(sf_pool *p, const char *name, int *err)
{
    char buf[4096];
    char *nm, *f;

    if (strchr(name, '/'))
        return name;
    if (p->exec_name && strcmp(p->exec_name, name) == 0)
        return p->exec_file;
    if ((*err = proc_path_find(name, getenv("PATH"), buf, sizeof buf)) < 0)
        return NULL;
    nm = strdup(name);
    f = strdup(buf);
    if (!nm || !f) {
        free(nm);
        free(f);
        *err = -ENOMEM;
        return NULL;
    }
    free(p->exec_name);
    free(p->exec_file);
    p->exec_name = nm;
    p->exec_file = f;
    return f;
}

/* A pipe whose read end (ours) is non-blocking; both close-on-exec. */
static int pipe_for_child(int fds[2])
{
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -errno;
    if (fcntl(fds[0], F_SETFL, O_NONBLOCK) < 0) {
        int e = -errno;
        close(fds[0]);
        close(fds[1]);
        return e;
    }
    return 0;
}

static void close_pair(int fds[2])
{
    if (fds[0] >= 0)
        close(fds[0]);
    if (fds[1] >= 0)
        close(fds[1]);
    fds[0] = fds[1] = -1;
}

/* A pidfd for the slot's new child, so its exit wakes the loop. Where
 * there is none (kernels before 5.3; valgrind 3.19 does not know the call),
 * the loop polls the child with waitid(P_PID) instead: slower to notice,
 * still exact, and still never reaps a process that is not the pool's. */
static int watch_exit(sf_pool *p, pool_slot *s)
{
    s->pidfd = p->poll_exits ? -1 : pidfd_open(s->pid, 0);
    if (s->pidfd >= 0 || p->poll_exits)
        return 0;
    if (errno == ENOSYS || errno == EPERM) {
        sf_logev(&p->log, SF_LOG_NOTICE, "no_pidfd", 0, NULL,
                 SF_FIELDS(SF_F_STR("error", strerror(errno))),
                 "no pidfd_open (%s): polling task exits", strerror(errno));
        p->poll_exits = 1;
        return 0;
    }
    return -errno;
}

/* Our child that has just started and must go: blocking is fine, SIGKILL
 * cannot be caught. */
static void kill_and_reap(pid_t pid)
{
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
}

/*
 * The child (proc_exec, vfork: nothing copied) gets its own process group
 * (so the group can be signalled), an empty signal mask, the program's
 * handlers and SIGPIPE back at their defaults, stdin from /dev/null when
 * output is captured, the pipes as 1 and 2, its channel as 3 and nothing
 * else open. The channel of a command is a pipe, not a socketpair: it only
 * ever carries the task's lines to the pool, a pipe costs less to make and
 * to close (a few percent of tasks/s for `true`), and writes of up to
 * PIPE_BUF bytes are atomic, so a task's own children can write lines to it
 * at once.
 */
static int spawn_command(sf_pool *p, pool_slot *s)
{
    pool_task *t = s->task;
    int outp[2] = {-1, -1}, errp[2] = {-1, -1}, ch[2] = {-1, -1};
    char envbuf[POOL_ENV_EXTRA][48];
    proc_exec_opts eo;
    const char *file;
    pid_t pid;
    int rc = 0; /* (a false maybe-uninitialized once proc_exec_opts grew) */

    errno = 0;
    s->argv = t->cmd(t->seq, s->index, t->data, t->cmd_arg);
    if (!s->argv || !s->argv[0])
        return errno ? -errno : -EINVAL;
    if (!(file = exec_path(p, s->argv[0], &rc)))
        return rc;
    if (p->o.capture_output && ((rc = pipe_for_child(outp)) < 0 || (rc = pipe_for_child(errp)) < 0))
        goto fail;
    if ((rc = pipe_for_child(ch)) < 0)
        goto fail;
    snprintf(envbuf[0], sizeof envbuf[0], "SOCKFORK_FD=3");
    snprintf(envbuf[1], sizeof envbuf[1], "SOCKFORK_TASK=%lu", t->seq);
    snprintf(envbuf[2], sizeof envbuf[2], "SOCKFORK_SLOT=%u", s->index);
    snprintf(envbuf[3], sizeof envbuf[3], "PARALLEL_SEQ=%lu", t->seq);
    snprintf(envbuf[4], sizeof envbuf[4], "PARALLEL_JOBSLOT=%u", s->index);
    for (int i = 0; i < POOL_ENV_EXTRA; i++)
        p->envp[p->nenv_base + (size_t)i] = envbuf[i];
    p->envp[p->nenv_base + POOL_ENV_EXTRA] = NULL;

    memset(&eo, 0, sizeof eo);
    eo.nfds = 4;
    eo.fds[0] = p->o.capture_output ? p->devnull : -1;
    eo.fds[1] = p->o.capture_output ? outp[1] : -1;
    eo.fds[2] = p->o.capture_output ? errp[1] : -1;
    eo.fds[3] = ch[1];
    eo.reset = &p->reset_signals;
    eo.slice = &p->slice;
    pid = proc_exec(file, s->argv, p->envp, &eo);
    if (pid < 0) {
        rc = (int)pid;
        goto fail;
    }

    s->pid = pid;
    if ((rc = watch_exit(p, s)) < 0) {
        /* Cannot watch it: stop it and give up the attempt. */
        kill_and_reap(pid);
        s->pid = 0;
        goto fail;
    }
    close(ch[1]);
    s->chan = ch[0];
    if (p->o.capture_output) {
        close(outp[1]);
        close(errp[1]);
        s->out = outp[0];
        s->err = errp[0];
    }
    return 0;

fail:
    close_pair(outp);
    close_pair(errp);
    close_pair(ch);
    return rc;
}

/* A child that started but cannot be watched: killed and reaped at once,
 * its descriptors closed. */
static void abandon(sf_pool *p, pool_slot *s, pid_t pid)
{
    kill_and_reap(pid);
    pool_slot_release(p, s);
    s->pid = 0;
    s->is_worker = 0;
}

/* Forks a worker for the slot, with its first task already in its memory
 * (the fork copies it), so that task needs no frame. */
static int fork_worker(sf_pool *p, pool_slot *s)
{
    int ch[2];
    proc_fork_opts fo;
    pid_t pid;
    int rc, last = p->o.max_tasks_per_worker == 1;

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ch) < 0)
        return -errno;
    memset(&fo, 0, sizeof fo);
    fo.keep[0] = ch[1];
    fo.nkeep = 1;
    fo.slice = &p->slice;
    fo.reset = &p->caught_signals; /* the program's handlers are not the worker's */
    /* The worker flushes stdio after every task: what the program had
     * buffered before the fork would be written once per worker. */
    fflush(NULL);
    pid = proc_fork(&fo);
    if (pid < 0) {
        close(ch[0]);
        close(ch[1]);
        return (int)pid;
    }
    if (pid == 0)
        pool_worker_main(p, s->task, s->index, last); /* channel now fd 3 */
    close(ch[1]);
    s->pid = pid;
    if ((rc = watch_exit(p, s)) < 0) {
        s->pid = 0;
        close(ch[0]);
        kill_and_reap(pid);
        return rc;
    }
    if (fcntl(ch[0], F_SETFL, O_NONBLOCK) < 0) {
        int e = -errno;
        close(ch[0]);
        pool_fd_del(p, &s->pidfd);
        s->pid = 0;
        kill_and_reap(pid);
        return e;
    }
    s->pid = pid;
    s->chan = ch[0];
    s->is_worker = 1;
    s->worker_tasks = 1;
    s->worker_last = last;
    chan_queue_init(&s->wq, CHAN_HDR_LEN + 17 + p->o.result_max);
    chan_decoder_init(&s->fd_dec, (uint32_t)p->o.result_max + 16);
    p->st.workers_started++;
    if ((s->pidfd >= 0 &&
         pool_fd_add(p, s->pidfd, EPOLLIN, (uint64_t)(s - p->slots) * 4 + EV_EXIT) < 0) ||
        pool_fd_add(p, s->chan, EPOLLIN, (uint64_t)(s - p->slots) * 4 + EV_CHAN) < 0) {
        int e = -errno;
        abandon(p, s, pid);
        return e;
    }
    return 0;
}

/* Queues the task's frame for the slot's idle worker. Returns 0 once it is
 * queued: the task is then the worker's (pool_worker_flush sends it); or
 * -errno with nothing queued. */
static int worker_give(sf_pool *p, pool_slot *s)
{
    pool_task *t = s->task;
    unsigned char *frame;
    size_t n = 17 + t->len;
    int rc, last = p->o.max_tasks_per_worker &&
                   s->worker_tasks + 1 >= p->o.max_tasks_per_worker;

    frame = malloc(n);
    if (!frame)
        return -ENOMEM;
    be64_put(frame, t->seq);
    be32_put(frame + 8, s->index);
    be32_put(frame + 12, t->attempts);
    frame[16] = (unsigned char)last;
    if (t->len)
        memcpy(frame + 17, t->arg, t->len);
    rc = chan_queue_push(&s->wq, CHAN_T_TASK, frame, (uint32_t)n, -1);
    free(frame);
    if (rc < 0)
        return rc;
    s->worker_tasks++;
    s->worker_last = last;
    return 0;
}

/* Writes what the worker's channel takes of its task's frame, and waits
 * for room (EPOLLOUT) while some is left. The frame is queued, so the task
 * is the worker's: a channel that cannot be written (or watched) stops the
 * attempt for that reason (STOP_CHANNEL), never puts the task back, which
 * would send it twice. */
void pool_worker_flush(sf_pool *p, pool_slot *s, double now)
{
    struct epoll_event ev = {.events = EPOLLIN,
                             .data.u64 = (uint64_t)(s - p->slots) * 4 + EV_CHAN};
    int rc = chan_queue_flush(&s->wq, s->chan);

    if (rc == 1 && s->wq_armed) {
        (void)epoll_ctl(p->ep, EPOLL_CTL_MOD, s->chan, &ev);
        s->wq_armed = 0;
    } else if (rc == 0 && !s->wq_armed) {
        ev.events |= EPOLLOUT;
        if (epoll_ctl(p->ep, EPOLL_CTL_MOD, s->chan, &ev) < 0)
            rc = -errno;
        else
            s->wq_armed = 1;
    }
    if (rc < 0) {
        sf_logev(&p->log, SF_LOG_WARN, "channel_failed", (int)s->pid, NULL,
                 SF_FIELDS(SF_F_UINT("task", s->task ? s->task->seq : 0UL),
                           SF_F_STR("error", strerror(-rc))),
                 "task %lu: cannot write to its worker %ld (%s): stopped",
                 s->task ? s->task->seq : 0UL, (long)s->pid, strerror(-rc));
        pool_fd_del(p, &s->chan);
        pool_stop_attempt(p, s, STOP_CHANNEL, now);
    }
}

/* Starts the slot's task (s->task set): gives it to the slot's idle worker,
 * forks a worker, or spawns a command. Returns 0 with the slot RUNNING (or
 * STOPPING already: a worker's channel that could not be written), or
 * -errno with nothing started (the caller decides: transient, the task's,
 * or, the slot still IDLE, the worker's). */
static int launch(sf_pool *p, pool_slot *s, double now)
{
    uint64_t id = (uint64_t)(s - p->slots) * 4;
    int rc;

    if (!s->task->cmd && s->state == SLOT_IDLE) {
        if ((rc = worker_give(p, s)) < 0)
            return rc;
        pool_slot_to(p, s, SLOT_RUNNING);
        pool_worker_flush(p, s, now);
        return 0;
    }
    if (!s->task->cmd) {
        if ((rc = fork_worker(p, s)) < 0)
            return rc;
        proc_guard_watch(&p->guard, (unsigned)(s - p->slots), s->pid);
        pool_slot_to(p, s, SLOT_RUNNING);
        return 0;
    }
    rc = spawn_command(p, s);
    if (rc < 0)
        return rc;
    s->is_worker = 0;
    jsonl_decoder_init(&s->jd, p->o.result_max);
    s->jskip = 0;
    if ((s->pidfd >= 0 && pool_fd_add(p, s->pidfd, EPOLLIN, id + EV_EXIT) < 0) ||
        pool_fd_add(p, s->chan, EPOLLIN, id + EV_CHAN) < 0 ||
        (s->out >= 0 && pool_fd_add(p, s->out, EPOLLIN, id + EV_OUT) < 0) ||
        (s->err >= 0 && pool_fd_add(p, s->err, EPOLLIN, id + EV_ERR) < 0)) {
        rc = -errno;
        abandon(p, s, s->pid);
        return rc;
    }
    proc_guard_watch(&p->guard, (unsigned)(s - p->slots), s->pid);
    pool_slot_to(p, s, SLOT_RUNNING);
    return 0;
}

/* ------------------------------------------------------------ start failures */

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
        sf_logev(&p->log, SF_LOG_WARN, "exec_failed", 0, NULL,
                 SF_FIELDS(SF_F_UINT("task", t->seq), SF_F_STR("program", clean),
                           SF_F_STR("error", strerror(err))),
                 "task %lu: cannot run %s: %s", t->seq, clean, strerror(err));
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
 * starts for the library's backoff (process/backoff.h: 50 ms, doubling to
 * 1 s, back to 50 ms once one starts), or until one of our processes ends
 * and gives back what it held.
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
    double wait;

    if (others_running(p, s))
        p->spawn_idle_fails = 0;
    else if (++p->spawn_idle_fails > SPAWN_IDLE_TRIES) {
        if (p->spawn_idle_fails == SPAWN_IDLE_TRIES + 1)
            sf_logev(&p->log, SF_LOG_ERROR, "start_failed", 0, NULL,
                     SF_FIELDS(SF_F_STR("error", strerror(err)),
                               SF_F_DBL("duration_s", now - p->spawn_fail_since)),
                     "cannot start tasks: %s for %.1f s, and none of "
                     "ours runs to free what they need: failing those that cannot start",
                     strerror(err), now - p->spawn_fail_since);
        p->spawn_fails = 0; /* said: the episode is over */
        return 0;
    }
    if (p->spawn_fails++ == 0)
        p->spawn_fail_since = now;
    p->spawn_fail_last = now;
    p->spawn_fail_err = err;
    wait = proc_backoff_next(&p->spawn_backoff);
    p->spawn_not_before = now + wait;
    if (p->spawn_fails == 1)
        sf_logev(&p->log, SF_LOG_WARN, "start_failed", 0, NULL,
                 SF_FIELDS(SF_F_UINT("task", t->seq), SF_F_STR("error", strerror(err)),
                           SF_F_DBL("retry_s", wait)),
                 "cannot start task %lu: %s; retrying in %.2f s (said "
                 "once while starts keep failing)", t->seq, strerror(err), wait);
    return 1;
}

/* The episode is over: its count, unless its first line said it all. */
void pool_spawn_episode_end(sf_pool *p)
{
    if (p->spawn_fails > 1)
        sf_logev(&p->log, SF_LOG_NOTICE, "start_resumed", 0, NULL,
                 SF_FIELDS(SF_F_UINT("failures", p->spawn_fails),
                           SF_F_STR("error", strerror(p->spawn_fail_err)),
                           SF_F_DBL("duration_s", p->spawn_fail_last - p->spawn_fail_since)),
                 "%lu task starts failed (%s) over %.1f s; each was "
                 "tried again", p->spawn_fails, strerror(p->spawn_fail_err),
                 p->spawn_fail_last - p->spawn_fail_since);
    p->spawn_fails = 0;
}

/* One of our processes has ended and given back what it held: a start
 * that failed for lack of it need not wait out its backoff (spawn_wait). */
void pool_spawn_resources_freed(sf_pool *p)
{
    p->spawn_not_before = 0;
}

/* A task started during an episode. */
static void spawn_started(sf_pool *p, double now)
{
    proc_backoff_reset(&p->spawn_backoff);
    p->spawn_idle_fails = 0;
    if (now - p->spawn_fail_last >= SPAWN_QUIET_S)
        pool_spawn_episode_end(p);
}

/* ------------------------------------------------------------ an attempt */

/* An attempt that did not start: its task goes back to the head of the
 * queue, as if it had not been taken. */
static void put_back(sf_pool *p, pool_slot *s, pool_task *t)
{
    t->attempts--;
    p->st.running--;
    pool_attempt_clear(s);
    pool_requeue_front(p, t);
}

void pool_start_attempt(sf_pool *p, pool_slot *s, pool_task *t, double now)
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
    rc = launch(p, s, now);
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
    if (s->state == SLOT_IDLE) {
        /* Its frame could not even be queued (no memory): not the task's
         * fault. It waits for another worker; this one is retired. */
        sf_logev(&p->log, SF_LOG_WARN, "worker_retired", (int)s->pid, NULL,
                 SF_FIELDS(SF_F_UINT("slot", s->index), SF_F_UINT("task", t->seq),
                           SF_F_STR("error", strerror(-rc))),
                 "slot %u: cannot give task %lu to worker %ld: %s; "
                 "retiring it", s->index, t->seq, (long)s->pid, strerror(-rc));
        put_back(p, s, t);
        pool_retire_worker(p, s);
        return;
    }
    if (transient(-rc) && spawn_wait(p, s, t, -rc, now)) {
        put_back(p, s, t);
        return;
    }
    /* The command cannot be run (no such file, not executable...; or out
     * of resources for good, spawn_wait): the task fails as a shell would
     * say it, 127 (126 if it is there). */
    {
        sf_status st = {1, (-rc == ENOENT || -rc == ENOTDIR) ? 127 : 126, 0, 0};
        log_spawn_failure(p, t, s->argv && s->argv[0] ? s->argv[0] : "the command", -rc);
        pool_end_attempt(p, s, st, -rc, now);
    }
}
