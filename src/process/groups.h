/*
 * groups.h - process groups to take down when their owner dies.
 *
 * A supervisor killed with SIGKILL cleans up nothing. Whatever it started
 * must then be ended by a process that outlives it and knows the children's
 * process groups (each child leads its own): TERM and CONT to every group,
 * then, once the groups are empty or the grace is over, KILL to what is
 * left, grandchildren included. Two processes do this, with the same code:
 *
 *   - the spawner (spawner.h), for the server's children, when its socket
 *     to the supervisor reaches EOF;
 *   - the pool's guard (below), for `sockfork run`'s tasks, when its socket
 *     to the pool reaches EOF.
 *
 * A process-group id stays taken while any member lives (a zombie leader
 * included), so signalling a group that still answers cannot hit another
 * program's; a group is dropped from the set as soon as it is empty.
 */
#ifndef SF_PROCESS_GROUPS_H
#define SF_PROCESS_GROUPS_H

#include <signal.h>
#include <stdatomic.h>
#include <sys/types.h>

/* A set of process-group ids, grown as used up to `max` entries, in memory
 * that forked children do not inherit (os_nofork). Set own_children after
 * init when every id is also the pid of a child of ours that leads it (the
 * spawner's): see proc_groups_takedown. */
typedef struct proc_groups {
    pid_t *slot;        /* open addressing; 0 is a free slot */
    unsigned size;      /* slots, a power of two, or 0 before the first add */
    unsigned count;
    unsigned max;
    int own_children;   /* the ids are also pids of our own children */
} proc_groups;

void proc_groups_init(proc_groups *g, unsigned max);
/* Makes room for one more: after a 0 return the next add cannot fail.
 * Returns 0, -ENOSPC (max reached) or -ENOMEM. */
int proc_groups_reserve(proc_groups *g);
/* Adds pg (> 0). Returns 0 (also if present), -ENOSPC past max, -ENOMEM. */
int proc_groups_add(proc_groups *g, pid_t pg);
/* Removes pg if present. */
void proc_groups_del(proc_groups *g, pid_t pg);
void proc_groups_free(proc_groups *g);

/* Called between the takedown's checks: the spawner reaps its children
 * here (a zombie leader keeps its group alive until reaped). */
typedef void (*proc_groups_tick_fn)(void *arg);

/*
 * TERM and CONT to every group of g, then until every group is empty or
 * grace_s has passed, calling tick every 20 ms; then KILL to the groups
 * left. Only kill(-pg) is used: a group is dropped at the first ESRCH
 * (nobody is left in it, and its id may be reused). A pid alone is
 * signalled only with own_children, for a leader that left its group and
 * is still our running child (waitid WNOWAIT says so). Empties g.
 * Blocks for at most grace_s (plus the tick's own time).
 */
void proc_groups_takedown(proc_groups *g, double grace_s, proc_groups_tick_fn tick, void *arg);

/*
 * The pool's guard: a small process that takes down the tasks' groups if
 * the pool dies without doing it.
 *
 * The pool and the guard share a table in memory (MAP_SHARED, made before
 * the guard is forked), one slot per pool slot: the pool stores a task's
 * group id there as the task starts, and 0 just before it reaps the
 * leader (while the zombie still holds the id). Plain atomic stores: no
 * system call per task, and nothing the guard does, or fails to do, can
 * slow or block the pool. The guard holds only the read end of a pipe the
 * pool never writes to, and sleeps in read() until EOF: the pool closed it
 * (the end of the run: the table is empty and the guard just exits) or the
 * pool is gone. Then it takes down the groups still in the table.
 */
typedef struct proc_guard {
    pid_t pid;              /* 0: none */
    int fd;                 /* the pipe's write end, never written; -1: none */
    _Atomic pid_t *table;   /* shared with the guard; NULL: none */
    unsigned nslots;
} proc_guard;

/* Starts the guard for a pool of nslots slots, to take down with grace_s
 * between TERM and KILL. `reset`: the signals the caller catches, put back
 * to SIG_DFL in the guard (see proc_fork_opts.reset). The table is not
 * inherited by the caller's later forks (MADV_DONTFORK).
 * Returns 0 or -errno (g then says none; the caller runs unguarded). */
int proc_guard_start(proc_guard *g, unsigned nslots, double grace_s, const sigset_t *reset);
/* Slot `slot`'s task leads group pg now (watch), or its leader is about to
 * be reaped (forget). One store each, async-signal-safe; nothing without a
 * guard or out of range. */
void proc_guard_watch(proc_guard *g, unsigned slot, pid_t pg);
void proc_guard_forget(proc_guard *g, unsigned slot);
/* Closes the pipe and waits for the guard to exit (at once when the table
 * is empty; a guard somebody stopped is continued first), then unmaps the
 * table. */
void proc_guard_stop(proc_guard *g);

#endif
