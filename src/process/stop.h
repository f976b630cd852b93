/*
 * stop.h - stopping a process group: SIGTERM, then SIGKILL after a grace.
 *
 * The one escalation policy, for every caller: the supervisor (a libev
 * timer per child, its signals going through the spawner), the pool (its
 * own loop, with a deadline per slot) and groups.c's takedown (a loop of
 * its own over many groups). The policy decides what is sent now and when
 * SIGKILL is due; the caller delivers the signals (proc_stop.send) and
 * keeps the time (it arms its own timer, or checks its own deadline, and
 * calls proc_stop_kill when the delay has passed and the group is still
 * there). Nothing here blocks, sleeps or keeps state between calls.
 */
#ifndef SF_PROCESS_STOP_H
#define SF_PROCESS_STOP_H

#include <sys/types.h>

/* Delivers sig to pid's process group. Returns 0, or -errno (-ESRCH: the
 * group is gone). */
typedef int (*proc_send_fn)(pid_t pid, int sig, void *arg);

typedef struct proc_stop {
    double grace;        /* s from SIGTERM to SIGKILL, >= 0 */
    /* With grace 0: 1 sends SIGKILL at once, without SIGTERM (the pool);
     * 0 still sends SIGTERM first and makes SIGKILL due at once, so that
     * it goes out on the caller's next turn (the supervisor and the
     * takedown, which say so in their logs). */
    int no_grace_kills;
    proc_send_fn send;   /* NULL: proc_signal_group (process.h) */
    void *arg;           /* for send */
} proc_stop;

/*
 * Begins stopping pid's group. SIGKILL at once if the grace is 0 and
 * st->no_grace_kills: *kill_in is then -1. Otherwise
 * SIGTERM, and SIGCONT so that a stopped group can act on it (not sent
 * if SIGTERM failed): *kill_in is the grace, the seconds after which the
 * caller calls proc_stop_kill unless the group is gone by then.
 * Returns what send returned for the first signal (SIGTERM or SIGKILL).
 */
int proc_stop_begin(const proc_stop *st, pid_t pid, double *kill_in);

/* SIGKILL to pid's group: when the grace is over, or as soon as the
 * group's leader has exited during the grace (the pool, which sees the
 * exit without reaping: a zombie leader holds the group's id, so the
 * group can be killed without the risk of a reused id, and there is no
 * process left to wait for). Returns what send returned. */
int proc_stop_kill(const proc_stop *st, pid_t pid);

#endif
