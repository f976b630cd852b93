/*
 * pool_internal.h - the task pool's state, shared by its files. A task
 * goes through four stages, each in one file:
 *
 *   pool.c    queued and scheduled: the API, the queue, the feed, the
 *             slots' states, halting, and the loop that sends each event
 *             to the stage it concerns;
 *   launch.c  an attempt starts: a command by vfork+exec, a C task given
 *             to an idle worker or a newly forked one; a start that fails
 *             fails the task, or puts it back while resources lack;
 *   taskio.c  it runs, and what it writes is read: captured output, fd-3
 *             JSON lines, a worker's frames (progress, result, TASK_DONE);
 *   end.c     it ends: its one reason to stop and the SIGTERM->SIGKILL of
 *             its group, its exit (drained, reaped), the retry decision,
 *             the report to on_done, a halt after failures.
 *
 *   worker.c  the worker's own side, in the child: its loop, sf_task_*.
 *   scrape.c  the metrics endpoint (metrics_addr): its snapshot, and the
 *             libev loop sf_pool_run then waits in.
 *
 * A command: pool.c schedule -> launch.c pool_start_attempt (RUNNING)
 * -> taskio.c reads -> end.c pool_on_exit (EXITED, reaped, FREE) ->
 * pool_end_attempt (retry: back to pool.c's queue; or on_done).
 * A C task: the same, but its end is the worker's TASK_DONE (taskio.c ->
 * end.c pool_task_returned), after which the worker is IDLE for the next.
 */
#ifndef SF_POOL_INTERNAL_H
#define SF_POOL_INTERNAL_H

#include "sockfork.h"
#include "channel/frame.h"
#include "channel/jsonl.h"
#include "log.h"
#include "os/os.h"
#include "process/backoff.h"
#include "process/groups.h"
#include "process/stop.h"

#include <ev.h>
#include <jansson.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/epoll.h>
#include <sys/types.h>

/* Why an attempt was stopped. The first reason wins, decided in
 * pool_stop_attempt and nowhere else; the report and the retry decision
 * are switches on it. */
enum stop_reason {
    STOP_NONE = 0,
    STOP_TIMEOUT,   /* ran past timeout_s: report timed_out; retried if retry_timeout allows */
    STOP_OUTPUT,    /* wrote past output_max: output_limited; not retried (it would again) */
    STOP_HALT,      /* a halt NOW: killed; not retried */
    STOP_CANCEL,    /* sf_pool_cancel, or the pool failing: killed; not retried */
    STOP_CHANNEL,   /* its worker's channel could not be written, or it broke the
                     * protocol: OK only if it said it returned (task_done); else
                     * fails as its status says (exit 0 too: a worker that never
                     * got its frame exits 0 at EOF) */
};

typedef struct pool_task {
    struct pool_task *next;
    unsigned long seq;
    void *data;
    sf_pool_cmd_cb cmd;          /* a command; NULL for a C task */
    void *cmd_arg;
    unsigned char *arg;          /* a C task's argument bytes */
    size_t len;
    unsigned attempts;           /* started so far */
    /* How the last attempt ended, for a task waiting for its retry. */
    sf_status last;
    enum stop_reason last_stop;
} pool_task;

/* What an epoll event is about: the slot's index times 4 plus one of these. */
enum { EV_EXIT = 0, EV_CHAN = 1, EV_OUT = 2, EV_ERR = 3 };
#define EV_CANCEL UINT64_MAX
#define EV_FEED (UINT64_MAX - 1)

/*
 * A slot's state: what its process is doing, and so what may happen next.
 * pool_slot_to makes every change and checks it is one of these:
 *
 *            started (launch.c)            a reason to stop (end.c)
 *   FREE -----------------------> RUNNING ----------------------> STOPPING
 *    ^                          task  |  ^                            |
 *    |              returned (end.c)  |  | next task given (launch.c) |
 *    |                                v  |                            |
 *    |                                IDLE                            |
 *    |        its last task returned  |  retired, or its channel      |
 *    |     (RUNNING -> RETIRING, too) v  gone                         |
 *    |                              RETIRING                          |
 *    |                                |                               |
 *    |   reaped (end.c)               v  the leader exited (end.c)    |
 *    +-------------------------- EXITED <-----------------------------+
 *                                     (from RUNNING, IDLE, RETIRING
 *                                      and STOPPING alike)
 *
 * A start is synchronous: a slot being given a task stays FREE (or IDLE)
 * until its process runs, and stays so if the start fails. pool_abort
 * also takes IDLE and RETIRING workers to STOPPING (SIGKILL at once), and
 * so does a worker's broken protocol (pool_worker_broke). A worker whose
 * channel is closed is never IDLE.
 */
enum slot_state {
    SLOT_FREE = 0,  /* no process: a task may start here */
    SLOT_RUNNING,   /* an attempt runs: a command, or a worker's task */
    SLOT_IDLE,      /* a worker between tasks, its channel open: takes the next C task */
    SLOT_RETIRING,  /* a worker with no task that exits by itself: its channel closed,
                     * or its last task done */
    SLOT_STOPPING,  /* its group is being killed: SIGTERM sent, SIGKILL at kill_at (0: sent) */
    SLOT_EXITED,    /* the leader has exited, seen and not reaped: its zombie keeps the
                     * group's id while what the task left is read */
};

typedef struct pool_slot {
    unsigned index;              /* 1..jobs, the {%} of its tasks */
    enum slot_state state;
    pool_task *task;             /* the attempt running here, or NULL */

    /* The process: a command, or a worker that outlives its tasks. */
    pid_t pid;                   /* 0: none */
    int pidfd, chan, out, err;   /* parent's ends; -1 when closed (pidfd: or none) */
    int is_worker;
    unsigned worker_tasks;       /* tasks given to this worker */
    int worker_last;             /* its current task is its last */
    chan_queue wq;               /* frames to the worker */
    int wq_armed;                /* waiting for EPOLLOUT */
    chan_decoder fd_dec;         /* frames from the worker */
    jsonl_decoder jd;            /* fd-3 lines from a command */
    int jskip;                   /* discarding the rest of a too-long line */

    /* The attempt. */
    enum stop_reason stop_reason;
    int task_done;               /* the worker said the task returned task_rc */
    int task_rc;
    double started, deadline, kill_at; /* CLOCK_MONOTONIC seconds; 0: none */
    double started_wall;
    char **argv;                 /* a command's, free()d with the attempt */
    unsigned char *result;       /* the last result */
    size_t result_len;
    double pdone, ptotal;        /* progress; ptotal -1: none yet */
    unsigned long long outb, errb;
} pool_slot;

struct sf_pool {
    sf_pool_opts o;
    sf_logger log;
    unsigned jobs;
    pool_slot *slots;

    pool_task *head, *tail;      /* submitted, not started (retries go first) */
    unsigned long npending;
    unsigned long next_seq;

    int ep;                      /* epoll */
    int cancel_fd;               /* eventfd, written by sf_pool_cancel */
    atomic_int cancel_requested; /* set by sf_pool_cancel: lock-free, so
                                  * safe from a signal handler and a thread */
    int devnull;
    int feed_ended, feed_waiting, feed_armed, feed_fd_pollable;
    int feed_ready;              /* the feed said READY: call it without polling */
    int halting;                 /* enum sf_pool_halt, once a halt began */
    int running_loop;
    int run_err;                 /* -errno: the run itself failed (a bad state
                                  * move); the loop stops everything and ends */
    int poll_exits;              /* no pidfds: exits are polled (launch.c) */
    proc_stop stop;              /* SIGTERM, kill_grace_s, SIGKILL (process/stop.h) */
    proc_backoff spawn_backoff;  /* the wait after a start failed for lack of resources */
    double spawn_not_before;     /*   and when it is over */
    unsigned long spawn_fails;   /* starts failed in this episode (transient) */
    unsigned spawn_idle_fails;   /*   in a row with no process of ours running */
    double spawn_fail_since;     /* when the episode began, */
    double spawn_fail_last;      /*   its last failure, */
    int spawn_fail_err;          /*   and that one's errno */
    char *spawn_err_prog;        /* the last command that could not start, */
    int spawn_err;               /*   and why: its repeats are not logged */
    char *readbuf;               /* POOL_READ bytes, for every read */

    /* Commands' environment: the program's, SOCKFORK_* and PARALLEL_* ours. */
    char **envp;
    size_t nenv_base;
    char *exec_name, *exec_file; /* the last name looked up in PATH, and its file */
    /* Back to SIG_DFL in a child: the program's caught signals (read when
     * the run starts) in a worker; those and SIGPIPE in a command's. */
    sigset_t caught_signals, reset_signals;

    /* metrics_addr: the endpoint, on a libev loop of its own that also
     * watches ep while the run waits (scrape.c); all NULL without. */
    struct ev_loop *mloop;
    struct metrics *metrics;
    ev_io pool_ready;            /* ep is readable */
    ev_timer pool_wait;          /* the run's wait is over */

    struct pool_queue *queue;    /* queue_url: the task queue (queue.h); else NULL */

    os_sched_saved slice;        /* the loop's thread's slice while it runs */
    proc_guard guard;            /* ends the tasks' groups if we are killed */

    sf_pool_stats st;
};

#define POOL_READ (64 * 1024)
#define POOL_ENV_EXTRA 5

/* pool.c: the API, the queue, the slots' states, scheduling, the loop. */
double pool_now(void);
double pool_wall(void);
int pool_fd_add(sf_pool *p, int fd, uint32_t events, uint64_t id);
void pool_fd_del(sf_pool *p, int *fd);
/* The one place a slot changes state (see enum slot_state). A move the
 * machine does not have (or to IDLE with the channel closed) is logged
 * (ERROR) and refused, and fails the run (run_err -EPROTO), in every build. */
void pool_slot_to(sf_pool *p, pool_slot *s, enum slot_state to);
/* Back to the head of the queue (a retry, or a start put off). */
void pool_requeue_front(sf_pool *p, pool_task *t);
/* Starts no more tasks (queued ones are reported); mode SF_HALT_NOW also
 * stops the running ones, for a halt or (by_cancel) a cancel. */
void pool_begin_halt(sf_pool *p, int mode, int by_cancel, double now);

/* launch.c: starting an attempt. */
int pool_env_build(sf_pool *p);
void pool_env_free(sf_pool *p);
/* Starts task t in slot s (FREE, or IDLE for a C task): RUNNING once its
 * process runs, or once its frame is queued for the idle worker; else the
 * task is put back (resources lacking; or the worker, retired, could not
 * take it) or ended as one that cannot start. */
void pool_start_attempt(sf_pool *p, pool_slot *s, pool_task *t, double now);
/* Writes what a worker's channel takes of its task's frame (queued: the
 * task is the worker's), waiting for room while some is left; a channel
 * that cannot be written stops the attempt (STOP_CHANNEL). */
void pool_worker_flush(sf_pool *p, pool_slot *s, double now);
/* One of our processes ended: a start put off for lack of resources may
 * try again at once. */
void pool_spawn_resources_freed(sf_pool *p);
/* At the end of a run: the count of a start failure episode still open. */
void pool_spawn_episode_end(sf_pool *p);

/* taskio.c: reading what a running task writes. */
void pool_read_output(sf_pool *p, pool_slot *s, int stream, int drain);
void pool_read_chan(sf_pool *p, pool_slot *s, int drain);
/* An epoll event on the slot's channel (EV_CHAN). */
void pool_on_chan(sf_pool *p, pool_slot *s, uint32_t events, double now);
void pool_info(const pool_slot *s, sf_task_info *out);

/* end.c: ending an attempt. */
/* Gives the slot's attempt its reason to stop, unless it has one: the first
 * wins. Stops it if it still runs (SIGTERM to its group, SIGKILL after the
 * grace). Returns 1 if why is now its reason. */
int pool_stop_attempt(sf_pool *p, pool_slot *s, enum stop_reason why, double now);
/* Every slot's timeout and kill deadlines (and exits, where polled). */
void pool_check_timers(sf_pool *p, double now);
/* The slot's process has exited (EV_EXIT, or polled): drained, reaped,
 * its attempt ended; the slot FREE. Returns at once if it has not. */
void pool_on_exit(sf_pool *p, pool_slot *s, double now);
/* A worker's TASK_DONE has come (s RUNNING): the attempt ends with it. */
void pool_task_returned(sf_pool *p, pool_slot *s, double now);
/* The attempt in s is over with status st (spawn_error: the errno of a
 * start that failed): retried, or reported to on_done. */
void pool_end_attempt(sf_pool *p, pool_slot *s, sf_status st, int spawn_error, double now);
/* Frees what the slot's attempt held (argv, result) and forgets its task. */
void pool_attempt_clear(pool_slot *s);
/* A failed task counted in exactly one of the stats' kinds, as its report
 * says (a local attempt's, or a queue worker's report at the submitter). */
void pool_count_failure(sf_pool *p, const sf_task_report *r);
/* After a failure: halts if the halt condition (--halt) is met now. */
void pool_check_halt(sf_pool *p, double now);
/* Closes the slot's descriptors and frees its decoders (its child gone). */
void pool_slot_release(sf_pool *p, pool_slot *s);
/* A worker that broke the protocol: its channel closed, its group killed
 * at once (STOPPING), its task (if any) ended at its exit. */
void pool_worker_broke(sf_pool *p, pool_slot *s, double now);
/* An IDLE worker is told to exit (its channel closed): RETIRING. */
void pool_retire_worker(sf_pool *p, pool_slot *s);
/* A task that never ran (or waits for a retry) is reported at a halt. */
void pool_report_unrun(sf_pool *p, pool_task *t);
/* Kills and reaps every process of the pool, reporting their tasks. */
void pool_abort(sf_pool *p, double now);

/* scrape.c: the metrics endpoint. */
/* Binds metrics_addr, if any, on a loop of the pool's own (after ep is
 * made): 0 or -errno. */
int pool_metrics_open(sf_pool *p);
/* Closes it (its Unix path removed); nothing open is fine. */
void pool_metrics_close(sf_pool *p);
/* The private loop (metrics, the task queue): made once; closed last. */
int pool_loop_open(sf_pool *p);
void pool_loop_close(sf_pool *p);
/* epoll_wait on ep for at most ms (-1: no limit), serving scrapes
 * meanwhile when metrics are on. */
int pool_wait(sf_pool *p, struct epoll_event *evs, int max, int ms);
/* The snapshot /metrics renders: a new reference, or NULL (no memory). */
json_t *pool_stats_json(const sf_pool *p);

/* queue.c, queue_work.c, queue_submit.c: the task queue in Redis
 * (queue.h). Without queue_url, open does nothing and close is a no-op. */
int pool_queue_open(sf_pool *p);
void pool_queue_close(sf_pool *p);
int pool_queue_submit_run(sf_pool *p);  /* sf_pool_run for queue_role 1 */
/* After the loop, queue_role 2: writes what is left; 0, or the queue's -errno. */
int pool_queue_work_end(sf_pool *p);

/* worker.c: the worker's life, in the child; never returns. */
void pool_worker_main(sf_pool *p, pool_task *first, unsigned slot, int last)
    __attribute__((noreturn));

#endif
