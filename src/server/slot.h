/*
 * slot.h - what a prefork worker tells the supervisor without a system
 * call: one slot per worker in memory shared by the supervisor and every
 * worker (mapped before the spawner is forked, so at one address in all).
 *
 * Why: a frame on the channel per connection wakes the supervisor per
 * connection, which doubled the CPU a connection costs (docs/benchmarks.md).
 * What the supervisor needs of every connection (busy or idle, served,
 * since when, with whom) it reads here when it needs it: its tick (sizing,
 * conn_timeout, recycling), `ctl list`, the idle timeout's dump. Frames
 * remain for what needs the supervisor at once: a connection that uses
 * the bus, a per-IP verdict, a log line per connection, a handler that
 * did not return 0.
 *
 * One writer (the worker), many readers (the supervisor): a sequence lock.
 * The worker makes `gen` odd, writes, makes it even; a reader copies the
 * slot and keeps the copy only if `gen` was even and unchanged around it.
 * A worker that dies while writing leaves `gen` odd: readers give up after
 * a bounded number of tries and the slot is reset before it is reused.
 */
#ifndef SF_SERVER_SLOT_H
#define SF_SERVER_SLOT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "sockfork.h"

typedef struct worker_slot {
    _Atomic uint32_t gen;
    uint32_t busy;          /* serving a connection */
    uint32_t listener;      /* the connection's */
    uint64_t begun;         /* connections taken */
    uint64_t ended;         /* connections whose handler returned */
    uint64_t refused;       /* of those taken, refused by the supervisor (per-IP) */
    double started;         /* the connection's start, CLOCK_REALTIME s (ev_time) */
    double idle_since;      /* the last one's end; 0: none yet */
    sf_addr peer, local;  /* as sf_conn has them: a Unix peer is the listener's path */
} worker_slot;

#define SLOT_READ_TRIES 64

static inline void slot_write_begin(worker_slot *s)
{
    uint32_t g = atomic_load_explicit(&s->gen, memory_order_relaxed);
    atomic_store_explicit(&s->gen, g + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
}

static inline void slot_write_end(worker_slot *s)
{
    uint32_t g = atomic_load_explicit(&s->gen, memory_order_relaxed);
    atomic_store_explicit(&s->gen, g + 1, memory_order_release);
}

/* The fields before the addresses: what the supervisor's tick reads of
 * every worker, ten times a second (a few dozen bytes, not a few hundred). */
#define SLOT_STATE_SIZE offsetof(worker_slot, peer)

/* Copies a consistent snapshot of the slot's first `size` bytes (sizeof
 * *s, or SLOT_STATE_SIZE) into out. Returns 0, or -1 when none could be
 * had (the worker died mid-write, or kept writing). */
static inline int slot_read(const worker_slot *s, worker_slot *out, size_t size)
{
    for (int i = 0; i < SLOT_READ_TRIES; i++) {
        uint32_t g1 = atomic_load_explicit(&s->gen, memory_order_acquire), g2;
        if (g1 & 1)
            continue;
        /* The copy races with the writer by design; gen says if it did. */
        memcpy((char *)out + offsetof(worker_slot, busy), (const char *)s + offsetof(worker_slot, busy),
               size - offsetof(worker_slot, busy));
        atomic_thread_fence(memory_order_acquire);
        g2 = atomic_load_explicit(&s->gen, memory_order_relaxed);
        if (g1 == g2) {
            atomic_store_explicit(&out->gen, g1, memory_order_relaxed);
            return 0;
        }
    }
    return -1;
}

#endif
