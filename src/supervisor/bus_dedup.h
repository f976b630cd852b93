/*
 * bus_dedup.h - what a receiver of the bus across instances has seen: per
 * (origin instance, stream), the highest seq delivered (docs/design.md,
 * "The bus across instances (Redis)"). An origin writes one stream in
 * order on one connection, so the highest seq is the whole window: below
 * or at it is a duplicate (a resend after a reconnect), one past it is
 * next, further is next with a gap (entries trimmed before they were read,
 * or dropped from the origin's full outbox), which the caller reports.
 *
 * Bounded: at most `max` keys; a new key past it evicts the least recently
 * seen (a scan of the table: only when it is full), which then starts over
 * as new when its origin writes again (a duplicate of it may then pass:
 * the bound is set well above instances times topics in use).
 */
#ifndef SF_SUPERVISOR_BUS_DEDUP_H
#define SF_SUPERVISOR_BUS_DEDUP_H

#include <stddef.h>
#include <stdint.h>

#define BUS_DEDUP_DEFAULT_MAX 4096
#define BUS_DEDUP_STREAM_MAX 300 /* "sf:t:" and a topic */

typedef struct dedup_key dedup_key;

typedef struct bus_dedup {
    dedup_key *keys;        /* max of them */
    int32_t *buckets;       /* nbuckets heads, -1: empty */
    unsigned max, used, nbuckets;
    uint64_t tick;          /* a clock for "least recently seen" */
    uint64_t evicted;
} bus_dedup;

/* An empty window for up to max keys (0: BUS_DEDUP_DEFAULT_MAX). Returns 0
 * or -ENOMEM. */
int bus_dedup_init(bus_dedup *d, unsigned max);
void bus_dedup_fini(bus_dedup *d);

enum { DEDUP_DUP = 0, DEDUP_NEW = 1 };

/* An entry of origin, seq (> 0) on stream (len bytes) arrived; first: it
 * starts a count (RC_F_FIRST: nothing before it to miss). Returns
 * DEDUP_NEW (deliver it; *missed: entries of that origin on that stream
 * skipped just before it, 0 for the first one seen or a first), DEDUP_DUP
 * (at or below the highest seen: drop it), or -EINVAL (seq 0, stream empty
 * or over BUS_DEDUP_STREAM_MAX). */
int bus_dedup_check(bus_dedup *d, uint64_t origin, const char *stream, size_t len,
                    uint64_t seq, int first, uint64_t *missed);

/* Forgets every key of an origin (an instance gone for good). */
void bus_dedup_forget(bus_dedup *d, uint64_t origin);

/* Keys held now. */
static inline unsigned bus_dedup_count(const bus_dedup *d) { return d->used; }

#endif
