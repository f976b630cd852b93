/*
 * bus_bridge.h - one bus joined to a peer's (the other generation's during
 * an upgrade; docs/design.md, "Two generations, one bus"): what the bus
 * tells its bridge (bus_bridge_ops) becomes frames for a transport, and the
 * peer's frames become the peer's state here (its names, its subscribers
 * per topic, its children's wills) and injections into the bus. The
 * transport is the caller's (bus_link.c: a socket); nothing here touches a
 * descriptor or the loop.
 *
 * Frames (the channel's 8-byte header, frame.h; u16 and u32 big-endian;
 * PID is the child's pid on the side that sent the frame):
 *   HELLO      [u8 version 1][u32 rank]           first, once, each way
 *   PUBLISH    [u32 from][u16 n][topic][data]
 *   BROADCAST  [u32 from][data]
 *   SEND_NAME  [u32 from][u16 n][name][data]      the receiver holds the name
 *   NO_NAME    [u32 from][name]                   ... it did not: tell `from`
 *   CLAIM      [u32 pid][name]                    name now held by pid
 *   RELEASE    [u32 pid][name]
 *   JOIN       [u32 pid][topic]                   pid subscribes to topic
 *   LEAVE      [u32 pid][topic]
 *   WILL       [u32 pid][u16 n][topic][data]      n 0: pid's will cleared
 *   WILL_DONE  [u32 pid]                          pid's will was published
 *                                                 there: publish it here, clear it
 *   HISTORY    [u32 from][u16 n][topic][data]     a kept message, newest first,
 *                                                 after HELLO (bus_inject_history)
 *
 * Concurrent claims. Each end has a rank (distinct; checked on HELLO). A
 * CLAIM for a name held here is a tie: the end with the higher rank gives
 * its holder's claim up (bus_revoke_name: the holder is told, the peer gets
 * a RELEASE) and records the peer's; the lower rank keeps its own and
 * ignores the CLAIM (the RELEASE that follows it then finds nothing to
 * remove, as releases remove only the pid they name). Both ends apply the
 * same rule to the same pair, so exactly one holder is left.
 */
#ifndef SF_SUPERVISOR_BUS_BRIDGE_H
#define SF_SUPERVISOR_BUS_BRIDGE_H

#include "supervisor/bus.h"

enum bus_bridge_frame {
    BRIDGE_HELLO = 1,
    BRIDGE_PUBLISH,
    BRIDGE_BROADCAST,
    BRIDGE_SEND_NAME,
    BRIDGE_NO_NAME,
    BRIDGE_CLAIM,
    BRIDGE_RELEASE,
    BRIDGE_JOIN,
    BRIDGE_LEAVE,
    BRIDGE_WILL,
    BRIDGE_WILL_DONE,
    BRIDGE_HISTORY,
};

#define BRIDGE_VERSION 1
/* Entries of the peer's state kept (names, subscriptions, children,
 * topics, each one): past it the peer is cut (bus_bridge_input). */
#define BRIDGE_ENTRIES_MAX (1u << 20)

/* Queues one frame for the peer: its payload is head then data. Returns 0,
 * or -errno when the transport cannot take it (it is then cut: the bridge
 * sends nothing more of any use, and the transport stops it soon). */
typedef int (*bus_bridge_out_cb)(void *arg, uint16_t type, const void *head, size_t head_len,
                                 const void *data, size_t data_len);

typedef struct rproc rproc;
typedef struct rname rname;
typedef struct rtopic rtopic;

typedef struct bus_bridge {
    bus *bus;
    unsigned rank, peer_rank;
    int hello;                  /* the peer's HELLO came */
    int started;                /* bus_set_bridge done */
    size_t history_budget;      /* bytes of history sent on start (0: none) */
    bus_bridge_out_cb out;
    void *out_arg;
    rproc **procs;              /* the peer's children with state here, by pid */
    rname **names;              /* the peer's names */
    rtopic **topics;            /* topics with the peer's subscribers */
    size_t entries;
} bus_bridge;

/* Ready to be started. history_budget: bytes of frames of kept messages
 * to send on start (the newest that fit; 0: none). Returns 0 or -ENOMEM. */
int bus_bridge_init(bus_bridge *br, bus *b, unsigned rank, size_t history_budget,
                    bus_bridge_out_cb out, void *out_arg);

/* Sends HELLO, the history within its budget, and everything the bus
 * holds now, and joins the bus: from here on the bus tells the bridge
 * what must reach the peer. */
void bus_bridge_start(bus_bridge *br);

/* One frame from the peer. Returns 0, -EPROTO (malformed, out of order, a
 * wrong version or an equal rank) or -ENOSPC (past BRIDGE_ENTRIES_MAX):
 * then the transport is to be cut (bus_bridge_stop). */
int bus_bridge_input(bus_bridge *br, uint16_t type, const unsigned char *p, size_t len);

/* The peer is gone: leaves the bus, publishes here the wills of the peer's
 * children that had one (they never reached their own publish, or it never
 * came), and forgets the peer's names and members. Idempotent. */
void bus_bridge_stop(bus_bridge *br);

/* The same, for a replica replaced by a newer one (now: the peer's state
 * read again): only the wills of children now does not have at all are
 * published (they went while their WILL_DONE was not seen; one with state
 * in now is alive, its will cleared). */
void bus_bridge_stop_keeping(bus_bridge *br, bus_bridge *now);

/* Frees what init allocated (calls bus_bridge_stop). */
void bus_bridge_fini(bus_bridge *br);

/* The hooks a started bridge gives its bus. A bridge never started (a
 * replica of one peer's state, fed with bus_bridge_input: bus_redis_peer.c
 * keeps one per other instance) answers the questions through them
 * (name_held, members, topic_count, each_topic) with it as ctx. */
const bus_bridge_ops *bus_bridge_peer_ops(void);

/* Counts of the peer's state here, for tests and reports. */
typedef struct bus_bridge_counts {
    unsigned procs, names, topics, subs, wills;
} bus_bridge_counts;
void bus_bridge_get_counts(const bus_bridge *br, bus_bridge_counts *out);

#endif
