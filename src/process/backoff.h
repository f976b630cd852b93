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
    double delay;    /* the wait grown to; 0: none yet */
    unsigned tries;  /* waits served (grown past) since the last reset */
} proc_backoff;

/* A success: the next wait is PROC_BACKOFF_MIN again, tries 0. */
void proc_backoff_reset(proc_backoff *b);

/* The wait to arm now, in seconds; does not change b. The same value
 * until proc_backoff_grow: a caller that arms one timer for many failures
 * (the server) asks as often as it likes and grows once per expiry. */
double proc_backoff_delay(const proc_backoff *b);

/* One wait served: the next is twice this one, at most PROC_BACKOFF_MAX;
 * counts a try. */
void proc_backoff_grow(proc_backoff *b);

/* proc_backoff_delay, then proc_backoff_grow: for a caller that grows the
 * wait at each failure. Returns the wait to arm now. */
double proc_backoff_next(proc_backoff *b);

#endif
