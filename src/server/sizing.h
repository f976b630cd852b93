/*
 * sizing.h - how many prefork workers to start or retire, decided from
 * counts and times only (no process, no clock, no loop), so that every
 * rule is a unit test.
 *
 * The rules, after Apache's prefork MPM:
 *   - fewer than `min` workers (at start, or after one died): start the
 *     missing ones at once, unless a crash loop holds starts back
 *     (`load.hold_until`, the server's backoff);
 *   - every worker busy, none starting, fewer than `max`: start more, in
 *     rounds at least a second apart of 1, 2, 4, ... SIZING_RAMP_MAX
 *     workers, so that a burst cannot fork-bomb the machine; the ramp
 *     falls back to 1 as soon as a round finds an idle worker;
 *   - idle workers above `min` that have been idle `idle_s` are retired,
 *     at most down to `min`. An idle worker holds no connection, so a
 *     retirement never touches one in flight.
 */
#ifndef SF_SIZING_H
#define SF_SIZING_H

#define SIZING_RAMP_MAX 32 /* workers started in one round at most */
#define SIZING_ROUND_S 1.0 /* between two rounds of the ramp */

typedef struct sizing_cfg {
    unsigned min, max; /* 1 <= min <= max */
    double idle_s;     /* idle time after which a worker above min goes */
} sizing_cfg;

/* What the decision remembers from one call to the next. Zero it first. */
typedef struct sizing_ramp {
    unsigned next;     /* workers the next round may start (0: 1) */
    double not_before; /* the next round's earliest time */
} sizing_ramp;

/* The workers as the server sees them now. */
typedef struct sizing_load {
    unsigned idle;       /* waiting for a connection */
    unsigned busy;       /* serving one */
    unsigned starting;   /* asked for, not yet waiting */
    unsigned idle_long;  /* of the idle ones, idle for idle_s or more */
    double idle_long_next; /* when the next other idle one will be; 0: none */
    double now;
    double hold_until;   /* no start before this (crash-loop backoff) */
} sizing_load;

typedef struct sizing_plan {
    unsigned start;      /* workers to start now */
    unsigned retire;     /* idle workers to retire now, longest idle first */
    double recheck_at;   /* when to decide again if nothing changes; 0: never */
} sizing_plan;

sizing_plan sizing_decide(const sizing_cfg *cfg, sizing_ramp *ramp, const sizing_load *load);

#endif
