/*
 * supervisor.h - the child table, reaping, signals and shutdown.
 *
 * The supervisor knows processes, not sockets: its owner (the server, later
 * the task pool) forks children and registers them here; the supervisor
 * reaps them, reports each exit to its owner, escalates TERM to KILL, and
 * runs the shutdown sequence. Each child is in one of two states:
 *
 *   RUNNING      --sup_terminate-->  TERMINATING (SIGTERM sent, KILL timer)
 *   either       --reaped-->         gone (exit_cb called, slot freed)
 *
 * Signals reach it only as libev watcher callbacks (libev's handler writes
 * to a pipe and the loop dispatches later), never as work in a handler.
 *
 * Children come from one of two places. With `spawn_child` set, the
 * supervisor starts a spawner (process/spawner.h) and sup_spawn asks it for
 * a child: the answer comes later, as on_started or on_spawn_failed, and
 * exits and signals go through the spawner, which is the children's parent.
 * This is what servers use: the supervisor holds a descriptor per child and
 * must not fork with them open. Without it (and for tests), the owner forks
 * directly and registers the pid with sup_reserve and sup_add.
 */
#ifndef SF_SUPERVISOR_H
#define SF_SUPERVISOR_H

#include <ev.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/types.h>

#include "process/backoff.h"
#include "process/spawner.h"

#include "log.h"
#include "supervisor/hmap.h"

typedef struct sup sup;

/* Called once per reaped child with its wait status and the data pointer
 * given to sup_add. */
typedef void (*sup_exit_cb)(sup *s, pid_t pid, int wstatus, void *data, void *arg);

/* Called once when shutdown begins (SIGTERM, SIGINT, SIGHUP or sup_shutdown),
 * before the grace period starts: the owner stops taking new work. */
typedef void (*sup_shutdown_cb)(sup *s, void *arg);

/* SIGHUP: the owner re-reads what it reads from files (reload). Without
 * one, SIGHUP stops the supervisor as SIGTERM does. */
typedef void (*sup_reload_cb)(sup *s, void *arg);

/* A child asked for with sup_spawn is running, registered under pid. */
typedef void (*sup_started_cb)(sup *s, pid_t pid, void *data, void *arg);

/* A sup_spawn request failed: -EAGAIN/-ENOMEM (fork failed; the owner
 * may retry), -ECHILD (the spawner died with it), -ECANCELED (shutdown).
 * The owner's descriptors for it are the owner's to close. */
typedef void (*sup_spawn_failed_cb)(sup *s, int err, void *data, void *arg);

typedef struct sup_req sup_req;

/* A child reaped that is none of the supervisor's (the server's next
 * generation, upgrade.c). */
typedef void (*sup_other_exit_cb)(sup *s, pid_t pid, int wstatus, void *arg);

typedef struct sup_config {
    unsigned max_children;
    double grace;       /* s children may take to finish after shutdown begins */
    double kill_grace;  /* s between SIGTERM and SIGKILL */
    sup_exit_cb on_exit;
    sup_shutdown_cb on_shutdown;
    sup_reload_cb on_reload;
    void *arg;
    const sf_logger *log;
    /* The spawner: what runs in each forked child; NULL for none. */
    spawner_child_fn spawn_child;
    /* Which requests' children are exec'd instead (spawner.h); NULL: none. */
    spawner_plan_fn spawn_plan;
    const struct rlimit *child_fdlimit; /* copied at sup_init */
    /* A descriptor every forked child gets after its request's (spawner.h's
     * shared_fd); 0: none (stdin is never one). */
    int spawn_shared_fd;
    sup_started_cb on_started;
    sup_spawn_failed_cb on_spawn_failed;
    sup_other_exit_cb on_other_exit;  /* NULL: such children are ignored */
} sup_config;

typedef struct sup_child {
    pid_t pid;          /* 0 when the slot is free */
    int terminating;
    int via_spawner;    /* the spawner is its parent (signals go through it) */
    ev_timer kill_timer;
    void *data;
    sup *owner;
    unsigned next_free;
} sup_child;

struct sup {
    struct ev_loop *loop;
    sup_config cfg;
    sup_child *children;     /* max_children slots */
    unsigned free_head;      /* first free slot, or max_children */
    unsigned touched;        /* slots [0, touched) have been set up */
    unsigned count;
    hmap by_pid;             /* pid -> slot */
    ev_signal sigchld, sigterm, sigint, sighup;
    ev_timer grace_timer;
    int shutting_down;       /* 0, 1 = grace running, 2 = terminating all */
    int done;

    /* The spawner (with cfg.spawn_child). */
    struct rlimit child_fdlimit;
    pid_t spawner_pid;       /* 0 while there is none */
    int spawner_fd;          /* our end of its socket, -1 while none */
    ev_io spawner_in, spawner_out;
    ev_timer spawner_timer;  /* restart after a failure or a death */
    proc_backoff spawner_backoff;
    sup_req *out_head, *out_tail;     /* requests not yet sent */
    sup_req *wait_head, *wait_tail;   /* fork requests sent, not answered */
    unsigned spawning;       /* fork requests not answered (both lists) */
    uint32_t next_cookie;    /* of the last fork request */
    uint64_t spawner_restarts;
};

/* Sets up the table and the signal watchers on `loop` (started at once).
 * Returns 0 or -ENOMEM. */
int sup_init(sup *s, struct ev_loop *loop, const sup_config *cfg);
void sup_fini(sup *s);

/* Makes room for one more child. Call before forking: after a 0 return
 * the next sup_add cannot fail. Returns 0, -ENOSPC (table full) or -ENOMEM. */
int sup_reserve(sup *s);

/* Registers a freshly forked child. Returns 0, or -ENOSPC / -ENOMEM when
 * sup_reserve was not called or failed (the caller must not have forked). */
int sup_add(sup *s, pid_t pid, void *data);

static inline int sup_full(const sup *s) { return s->count + s->spawning >= s->cfg.max_children; }

/*
 * Asks the spawner for a child running cfg.spawn_child(blob, len, nfds)
 * with fds as its descriptors 3, 4, ..., or the program cfg.spawn_plan
 * makes of the request (process/spawner.h). The caller keeps fds open until
 * on_started or on_spawn_failed (they are sent when the spawner can take
 * them); `data` comes back in those and in on_exit. Returns 0, -ENOSPC
 * (max_children children and requests already), -EINVAL or -ENOMEM.
 */
int sup_spawn(sup *s, const void *blob, size_t len, const int *fds, int nfds, void *data);

/* Sends sig to a live child's process group (through the spawner when it
 * is the parent). */
void sup_signal(sup *s, pid_t pid, int sig);

/* SIGTERM to the child's process group now, SIGKILL after kill_grace. */
void sup_terminate(sup *s, pid_t pid);

/* Whether sup_terminate has been called for this (live) child. */
int sup_is_terminating(sup *s, pid_t pid);

/* The data given with a live child (to sup_add or sup_spawn), or NULL when
 * pid is none of its children: the owner finds its record of a child by
 * pid here rather than keeping a second table of pids. */
void *sup_child_data(sup *s, pid_t pid);

/* Begins shutdown as SIGTERM would. */
void sup_shutdown(sup *s);
/* As sup_shutdown, with no grace: the children are terminated at once. */
void sup_shutdown_now(sup *s);

/* Runs the loop until shutdown has finished with every child reaped. */
void sup_run(sup *s);

/* What the supervisor holds and has counted, at one moment. The owner's
 * reports (`ctl stats`, and metrics) read it here, so they agree. */
typedef struct sup_stats {
    unsigned children;          /* registered, not yet reaped (terminating too) */
    unsigned spawning;          /* fork requests the spawner has not answered */
    unsigned max_children;      /* cfg.max_children: children plus requests */
    pid_t spawner_pid;          /* 0 while there is none */
    uint64_t spawner_restarts;  /* times the spawner was lost (it died or its
                                   socket failed): another is started unless
                                   shutdown is over */
} sup_stats;

void sup_get_stats(const sup *s, sup_stats *out);

/* Between supervisor.c and spawnlink.c only: an owner asks about a child
 * by pid through sup_child_data and sup_is_terminating. */
sup_child *sup_child_find(sup *s, pid_t pid);
int sup_add_child(sup *s, pid_t pid, void *data, int via_spawner);
void sup_child_exited(sup *s, pid_t pid, int wstatus);
void sup_check_done(sup *s);
int sup_spawner_init(sup *s);
void sup_spawner_cancel(sup *s);
void sup_spawner_fini(sup *s);

#endif
