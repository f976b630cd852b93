/*
 * bus_redis.h - a bus bridged to every other instance's through Redis
 * Streams (docs/design.md, "The bus across instances (Redis)"): the second
 * implementation of bus_bridge_ops (bus.h), on two connections of
 * src/redis/rconn.h (one for commands, one blocked in XREAD), on the bus's
 * loop.
 *
 * What the bus tells it becomes stream entries (bus_rcodec.h) and state in
 * Redis; what other instances wrote is read back, duplicates dropped
 * (bus_dedup.h), and injected into the bus; their state (names, members,
 * wills) is kept here in one replica per instance (a bus_bridge never
 * started), so the bus's questions are answered at once. What is to be
 * written waits in a bounded outbox while Redis is away and is written in
 * order when it is back; entries sent but not acknowledged when a
 * connection fails are sent again (receivers drop the copies).
 *
 * Use, in the owner:
 *     bus_redis_opts o = {.log = &s->log};        (0 fields: defaults)
 *     rc = bus_redis_open(&s->bus, loop, &where, &o, &s->bridge);
 *     ...
 *     bus_redis_close(s->bridge);                 (before bus_fini)
 */
#ifndef SF_SUPERVISOR_BUS_REDIS_H
#define SF_SUPERVISOR_BUS_REDIS_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#include "log.h"
#include "redis/rurl.h"
#include "supervisor/bus.h"

#define BUS_REDIS_OUTBOX_DEFAULT (8u * 1024 * 1024) /* bytes waiting for Redis */
#define BUS_REDIS_LEASE_MS_DEFAULT 10000u   /* names' and heartbeat's lease */
#define BUS_REDIS_STREAM_LEN_DEFAULT 1000u  /* XADD MAXLEN ~ N */
#define BUS_REDIS_PEERS_MAX 64              /* other instances with a replica */
#define BUS_REDIS_TOPICS_MAX 4096           /* topic streams known (read or written) */
#define BUS_REDIS_BLOCK_MS 1000u            /* XREAD BLOCK: a new topic waits at most this */
#define BUS_REDIS_BATCH 256                 /* entries per XREAD and per stream */

typedef struct bus_redis bus_redis;

typedef struct bus_redis_opts {
    size_t outbox_max;      /* 0: BUS_REDIS_OUTBOX_DEFAULT */
    unsigned lease_ms;      /* 0: BUS_REDIS_LEASE_MS_DEFAULT; renewed every third */
    unsigned stream_len;    /* 0: BUS_REDIS_STREAM_LEN_DEFAULT */
    unsigned history;       /* entries of a topic's stream read into history (0: none) */
    /* rconn's (0: its defaults) */
    unsigned connect_ms, command_ms, ping_ms, backoff_min_ms, backoff_max_ms;
    const sf_logger *log;   /* may be NULL */
} bus_redis_opts;

/* Starts bridging b to Redis at where: connects (and goes on trying, with
 * backoff, while it cannot), and joins the bus at once (bus_set_bridge):
 * until Redis answers, what is to be written waits in the outbox and the
 * others' state is empty. *out is malloc'ed, freed by bus_redis_close.
 * Returns 0, -EBUSY (b has a bridge), -ENOMEM, or rconn_new's error. */
int bus_redis_open(bus *b, struct ev_loop *loop, const rurl *where, const bus_redis_opts *opts,
                   bus_redis **out);

/* For `ctl stats` and metrics. */
typedef struct bus_redis_stats {
    int up;                     /* both connections up, and the others' state read */
    uint64_t reconnects;        /* connections made again after a failure */
    uint64_t entries_out, entries_in;
    uint64_t duplicates;        /* entries dropped: seen already */
    uint64_t missed;            /* entries of others never read (gaps in their seq) */
    uint64_t bad;               /* entries that did not decode */
    uint64_t outbox_dropped;    /* writes that did not fit in the outbox */
    uint64_t stale;             /* reading connections cut: our probe did not come back */
    uint64_t cursor_resets;     /* cursors found past their stream's newest entry */
    size_t outbox_bytes, outbox_max;
    unsigned peers;             /* other instances with a replica here */
    double lag_ms;              /* the last entry read: its id's time to now */
    char id[17];                /* this instance's id, hex */
} bus_redis_stats;
void bus_redis_get_stats(const bus_redis *r, bus_redis_stats *out);

/* Leaves the bus, tells the others this instance is gone (if Redis takes
 * it at once: a GONE entry, written without waiting), closes both
 * connections and frees r. NULL: nothing. Before bus_fini of its bus. */
void bus_redis_close(bus_redis *r);

#endif
