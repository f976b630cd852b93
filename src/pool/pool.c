/* pool.c - the task pool's API, its queue, the slots' states, and the loop
 * that schedules: tasks wait in the queue, start in a free slot
 * (launch.c), are read from while they run (taskio.c) and end (end.c). */
#include "pool/pool_internal.h"
#include "os/os.h"
#include "process/process.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define JOBS_MAX 65536
#define EVENTS_MAX 64
#define POLL_EXITS_S 0.005

double pool_now(void)
{
    return os_mono_now();
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

/* ------------------------------------------------------------ creating */

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
    p->log.record_cb = o->log_record;
    p->log.record_arg = o->log_record_arg;
    p->log.level = o->log_level;
    if (p->o.halt != SF_HALT_NEVER && !p->o.halt_fail && p->o.halt_fail_pct == 0)
        p->o.halt_fail = 1;
    p->feed_ended = !o->feed;
    p->stop.grace = o->kill_grace_s;
    p->stop.no_grace_kills = 1; /* a grace of 0: SIGKILL at once, no SIGTERM */
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
    if ((rc = pool_metrics_open(p)) < 0 || (rc = pool_queue_open(p)) < 0)
        goto fail;
    *out = p;
    return 0;

fail:
    sf_pool_free(p);
    return rc;
}

/* ------------------------------------------------------------ the queue */

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
void pool_requeue_front(sf_pool *p, pool_task *t)
{
    t->next = p->head;
    p->head = t;
    if (!p->tail)
        p->tail = t;
    p->npending++;
}

/* ------------------------------------------------------------ slots */

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

static const char *slot_state_name(enum slot_state st)
{
    switch (st) {
    case SLOT_FREE:
        return "FREE";
    case SLOT_RUNNING:
        return "RUNNING";
    case SLOT_IDLE:
        return "IDLE";
    case SLOT_RETIRING:
        return "RETIRING";
    case SLOT_STOPPING:
        return "STOPPING";
    case SLOT_EXITED:
        return "EXITED";
    }
    return "?";
}

/* Checked in every build: a move the machine does not have is a bug of
 * the pool, and the library does not end the program for it (no assert).
 * The slot keeps the state it had, and the run fails: sf_pool_run stops
 * and reaps every process and returns -EPROTO. */
void pool_slot_to(sf_pool *p, pool_slot *s, enum slot_state to)
{
    int unreachable = to == SLOT_IDLE && s->chan < 0; /* an idle worker is one we can give to */

    if (unreachable || !slot_move_ok(s->state, to)) {
        sf_logev(&p->log, SF_LOG_ERROR, "pool_failed", (int)s->pid, NULL,
                 SF_FIELDS(SF_F_UINT("slot", s->index)),
                 "slot %u: bad state change %s -> %s%s: the pool fails", s->index,
                 slot_state_name(s->state), slot_state_name(to),
                 unreachable ? " (its channel is closed)" : "");
        if (!p->run_err)
            p->run_err = -EPROTO;
        return;
    }
    s->state = to;
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

/* ------------------------------------------------------------ scheduling */

static void schedule(sf_pool *p, double now)
{
    for (unsigned i = 0; i < p->jobs && p->head && !p->halting; i++) {
        pool_slot *s = &p->slots[i];
        if (now < p->spawn_not_before)
            return;
        if (!slot_free(s))
            continue;
        if (s->state == SLOT_IDLE && p->head->cmd) { /* a command where an idle worker sits */
            pool_retire_worker(p, s);
            continue;
        }
        pool_start_attempt(p, s, dequeue(p), now);
    }
}

void pool_begin_halt(sf_pool *p, int mode, int by_cancel, double now)
{
    pool_task *t;

    if (by_cancel)
        p->st.cancelled_by_request = 1;
    else
        p->st.halted = 1;
    if (p->halting >= mode)
        return;
    if (!p->halting)
        sf_logev(&p->log, SF_LOG_NOTICE, "halting", 0, NULL,
                 SF_FIELDS(SF_F_BOOL("cancelled", by_cancel),
                           SF_F_BOOL("stop_running", mode == SF_HALT_NOW)),
                 "%s: starting no more tasks%s",
                by_cancel ? "cancelled" : "halting",
                mode == SF_HALT_NOW ? ", stopping the running ones" : "");
    p->halting = mode;
    while ((t = dequeue(p)) != NULL)
        pool_report_unrun(p, t);
    for (unsigned i = 0; i < p->jobs; i++) {
        pool_slot *s = &p->slots[i];
        if (mode == SF_HALT_NOW)
            pool_stop_attempt(p, s, by_cancel ? STOP_CANCEL : STOP_HALT, now);
        pool_retire_worker(p, s);
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
            pool_on_exit(p, s, now);
        break;
    case EV_CHAN:
        pool_on_chan(p, s, ev->events, now);
        break;
    case EV_OUT:
        pool_read_output(p, s, 1, 0);
        break;
    case EV_ERR:
        pool_read_output(p, s, 2, 0);
        break;
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
    if (p->queue && p->o.queue_role == 1)
        return pool_queue_submit_run(p);
    if ((rc = pool_env_build(p)) < 0)
        return rc;
    proc_caught_signals(&p->caught_signals);
    p->reset_signals = p->caught_signals;
    sigaddset(&p->reset_signals, SIGPIPE);
    /* Before the slice is shortened: the guard has no use for it. */
    if ((gerr = proc_guard_start(&p->guard, p->jobs, p->o.kill_grace_s, &p->caught_signals)) < 0)
        sf_logev(&p->log, SF_LOG_WARN, "guard_failed", 0, NULL,
                 SF_FIELDS(SF_F_STR("error", strerror(-gerr))),
                 "cannot start the guard: %s; tasks may outlive a killed run", strerror(-gerr));
    /* The loop is what starts the next task: let it run as soon as an
     * exit wakes it (os/slice.c says why). */
    (void)os_slice_short(&p->slice);
    p->running_loop = 1;
    p->run_err = 0;
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
            pool_begin_halt(p, SF_HALT_NOW, 1, now);
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
                pool_retire_worker(p, &p->slots[i]);
        if (p->run_err || all_done(p))
            break;
        ms = wait_ms(p, now, next_tick);
        n = pool_wait(p, evs, EVENTS_MAX, ms);
        if (n < 0 && errno != EINTR) {
            rc = -errno;
            sf_logev(&p->log, SF_LOG_ERROR, "pool_failed", 0, NULL,
                     SF_FIELDS(SF_F_STR("error", strerror(errno))), "epoll_wait: %s",
                     strerror(errno));
            pool_abort(p, pool_now());
            break;
        }
        now = pool_now();
        for (int i = 0; i < n; i++)
            dispatch(p, &evs[i], now);
        pool_check_timers(p, now);
        if (p->run_err)
            break;
        if (next_tick > 0 && now >= next_tick) {
            if (p->o.on_tick)
                p->o.on_tick(p, p->o.arg);
            next_tick = now + p->o.tick_s;
        }
    }
    if (p->run_err && rc == 0) { /* a bad state move (pool_slot_to) */
        rc = p->run_err;
        pool_abort(p, pool_now());
    }
    feed_arm(p, 0);
    if (p->queue && (gerr = pool_queue_work_end(p)) < 0 && rc == 0)
        rc = gerr;
    if (p->spawn_fails)
        pool_spawn_episode_end(p);
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
            pool_attempt_clear(&p->slots[i]);
    }
    while ((t = dequeue(p)) != NULL) {
        free(t->arg);
        free(t);
    }
    pool_queue_close(p);
    pool_metrics_close(p);
    pool_loop_close(p); /* it watches ep */
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
