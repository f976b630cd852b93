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
 */
#ifndef SF_SUPERVISOR_H
#define SF_SUPERVISOR_H

#include <ev.h>
#include <sys/types.h>

#include "log.h"
#include "supervisor/hmap.h"

typedef struct sup sup;

/* Called once per reaped child with its wait status and the data pointer
 * given to sup_add. */
typedef void (*sup_exit_cb)(sup *s, pid_t pid, int wstatus, void *data, void *arg);

/* Called once when shutdown begins (SIGTERM, SIGINT or sup_shutdown),
 * before the grace period starts: the owner stops taking new work. */
typedef void (*sup_shutdown_cb)(sup *s, void *arg);

typedef struct sup_config {
    unsigned max_children;
    double grace;       /* s children may take to finish after shutdown begins */
    double kill_grace;  /* s between SIGTERM and SIGKILL */
    sup_exit_cb on_exit;
    sup_shutdown_cb on_shutdown;
    void *arg;
    const sf_logger *log;
} sup_config;

typedef struct sup_child {
    pid_t pid;          /* 0 when the slot is free */
    int terminating;
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
    ev_signal sigchld, sigterm, sigint;
    ev_timer grace_timer;
    int shutting_down;       /* 0, 1 = grace running, 2 = terminating all */
    int done;
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

static inline int sup_full(const sup *s) { return s->count >= s->cfg.max_children; }

/* SIGTERM to the child's process group now, SIGKILL after kill_grace. */
void sup_terminate(sup *s, pid_t pid);

/* Whether sup_terminate has been called for this (live) child. */
int sup_is_terminating(sup *s, pid_t pid);

/* Begins shutdown as SIGTERM would. */
void sup_shutdown(sup *s);

/* Runs the loop until shutdown has finished with every child reaped. */
void sup_run(sup *s);

#endif
