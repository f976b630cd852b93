/*
 * bus_link.h - a bus bridged to a peer's over one socket (a stream or a
 * SOCK_SEQPACKET socket: the upgrade's socketpair between two generations
 * of supervisors), on the bus's event loop. The frames are bus_bridge.h's.
 *
 * On open each end sends HELLO, its history if opts.share_history, and its
 * state (names, subscriptions, wills), so the later one knows the earlier
 * one's at once. What the bus gives the
 * peer waits in a bounded outbox (opts.outbox_max): a frame that does not
 * fit cuts the link. The link also ends when the peer closes its end (the
 * old generation exited), a read or write fails, or the peer sends what is
 * not a frame of the protocol. When it ends, by itself or by
 * bus_link_close, the peer's names and members vanish here at once, the
 * wills the peer's children still had are published here (they left, as
 * far as this side can know), and the bus is on its own again.
 *
 * Use, in the owner (three calls):
 *     bus_link_opts o = {.rank = 1, .on_down = down, .arg = s};
 *     rc = bus_link_open(&s->bus, fd, &o, &s->link);   (takes fd)
 *     ...
 *     bus_link_close(s->link);                          (frees it)
 */
#ifndef SF_SUPERVISOR_BUS_LINK_H
#define SF_SUPERVISOR_BUS_LINK_H

#include "supervisor/bus.h"

#define BUS_LINK_OUTBOX_DEFAULT (8u * 1024 * 1024) /* bytes waiting for the peer */
#define BUS_LINK_CHUNK (64 * 1024) /* bytes per write and per read: a SOCK_SEQPACKET record */

typedef struct bus_link bus_link;

/* The link ended by itself; why: a short text for the owner's log. It has
 * stopped and dropped the peer's state already; the owner still frees it
 * with bus_link_close (which it may call from here: the link does nothing
 * after this callback returns). */
typedef void (*bus_link_down_cb)(bus_link *l, const char *why, void *arg);

typedef struct bus_link_opts {
    unsigned rank;          /* distinct on the two ends: on a tie over a name
                             * the higher rank's claim is revoked (the new
                             * generation takes the higher one) */
    size_t outbox_max;      /* 0: BUS_LINK_OUTBOX_DEFAULT */
    int share_history;      /* send the peer the newest kept messages, up to
                             * half the outbox (the old generation does: the
                             * new one starts with none) */
    bus_link_down_cb on_down; /* may be NULL */
    void *arg;
} bus_link_opts;

/* Starts bridging b over fd (any blocking mode: made non-blocking; the
 * link owns it and closes it). *out is the link, malloc'ed, freed by
 * bus_link_close. A bus has one bridge at a time. Returns 0, -EBUSY (b
 * has a bridge already), or -ENOMEM; on an error fd is closed. */
int bus_link_open(bus *b, int fd, const bus_link_opts *opts, bus_link **out);

/* Whether it is still up (not ended by itself). */
int bus_link_is_up(const bus_link *l);

/* What the outbox holds now, in bytes. */
size_t bus_link_outbox_bytes(const bus_link *l);

/* For `ctl stats` and metrics: what the link has counted. */
typedef struct bus_link_stats {
    int up;                     /* not ended by itself */
    uint64_t frames_in, frames_out;
    size_t outbox_bytes, outbox_max;
    unsigned peer_names, peer_members; /* the peer's state held here */
} bus_link_stats;
void bus_link_get_stats(const bus_link *l, bus_link_stats *out);

/* Ends the link if it is up (what the outbox holds is written if the
 * socket takes it at once, then the socket is closed: the peer sees its
 * end) and frees it. NULL: nothing. Before bus_fini of its bus. */
void bus_link_close(bus_link *l);

#endif
