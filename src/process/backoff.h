/*
 * backoff.h - how long to wait before trying again after a failure that
 * time may cure (out of processes, descriptors or memory).
 *
 * 50 ms first, doubling to at most 1 s, back to 50 ms after a success:
 * short enough that a brief shortage costs little, bounded so that a long
 * one costs one try a second, never a spin. One copy for every caller:
 * the server's accept and fork retries, the supervisor's spawner restarts
 * and the pool's failed starts. No timer of its own: the caller arms its
 * own (a libev timer, or a deadline in its own loop) for the delay.
 */
#ifndef SF_PROCESS_BACKOFF_H
#define SF_PROCESS_BACKOFF_H

#define PROC_BACKOFF_MIN 0.05 /* s, the first wait */
#define PROC_BACKOFF_MAX 1.0  /* s, the longest */

/* Zeroed (or proc_backoff_reset) before use: the next wait is the first. */
typedef struct proc_backoff {
    double delay;    /* the wait armed or grown to; 0: none since the reset */
} proc_backoff;

/* A success: the next wait is PROC_BACKOFF_MIN again. */
void proc_backoff_reset(proc_backoff *b);

/* The wait to arm now, in seconds, without changing b: for a log line. */
double proc_backoff_delay(const proc_backoff *b);

/* The wait to arm now, in seconds, taken: it is the one proc_backoff_grow
 * doubles. The same value until then, so a caller that arms one timer for
 * many failures (the server) arms as often as it likes and grows once per
 * expiry. */
double proc_backoff_arm(proc_backoff *b);

/* The wait armed is served: the next is twice it, at most
 * PROC_BACKOFF_MAX. Nothing if none was armed since the
 * last reset (a success while the timer ran wins: the next wait is the
 * first again). */
void proc_backoff_grow(proc_backoff *b);

/* proc_backoff_arm, then proc_backoff_grow: for a caller that grows the
 * wait at each failure. Returns the wait to arm now. */
double proc_backoff_next(proc_backoff *b);

#endif
