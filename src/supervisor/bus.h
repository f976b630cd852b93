/*
 * bus.h - the supervisor's end of every child's channel, and the routing
 * between them.
 *
 * An endpoint is one child's channel seen from the supervisor: a
 * non-blocking socket, the decoder of the child's codec (binary frames for
 * C handlers, JSON lines for exec'd programs), and a bounded outbound
 * queue. What a child asks is decoded into a bus_op; what it is sent is a
 * bus_msg, encoded for each recipient's codec (once per codec for a
 * broadcast). The bus routes without interpreting: to one pid, to the
 * holder of a name, to everyone, to a topic's subscribers, with the last
 * messages of each topic kept for late subscribers.
 *
 * Limits and what happens at each (docs/protocol.md):
 *   - a frame or line over chan_max: the child is disconnected (its channel
 *     closed, the child terminated) and a line logged; so is a malformed one;
 *   - a recipient's queue over queue_limit: the message is dropped for it
 *     and counted (BUS_FULL_DROP), or it is disconnected (BUS_FULL_KICK);
 *   - reads per wakeup are bounded, so a flooding child costs its own
 *     messages, never its siblings' turn;
 *   - a recipient's queue over half its limit holds the children sending
 *     to it (their requests wait, their channel is not read) until it is
 *     down to a quarter, unless it is an exec'd child held itself (no
 *     cycle of holds); one not down to a quarter BUS_STALL_S after it
 *     passed half holds nobody any more, and the full-queue policy
 *     applies to it;
 *   - topics, subscriptions and names per child, and history per topic,
 *     are bounded (BUS_* below); past them the request is refused with an
 *     error message to the child. Topics nobody subscribes to are evicted
 *     with their history (least recently used first) to make room for a
 *     new one, or when the history of all topics passes history_bytes.
 *
 * A bus may be bridged to another (bus_bridge_ops below; bus_link.h joins
 * two over a socket during an upgrade): topics, names, members and wills
 * then span both (docs/design.md, "Two generations, one bus").
 */
#ifndef SF_SUPERVISOR_BUS_H
#define SF_SUPERVISOR_BUS_H

#include <ev.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/types.h>

#include "channel/frame.h"
#include "channel/jsonl.h"
#include "log.h"
#include "sockfork.h"

#define BUS_NAME_MAX 255          /* bytes in a topic or a name */
#define BUS_TOPICS_MAX 1024
#define BUS_SUBS_PER_CHILD 64
#define BUS_NAMES_PER_CHILD 16
#define BUS_HISTORY_BYTES (256 * 1024) /* per topic, besides the count */
#define BUS_HISTORY_TOTAL (16 * 1024 * 1024) /* every topic's, by default */
#define BUS_READ_BUDGET (64 * 1024)    /* bytes read from one child per wakeup */
#define BUS_GATHER_SPAN 8              /* a gathering waits at most this many gaps */
#define BUS_GATHER_SPAN_CROSSING 32    /* ... or this many while its bridge expects more */
#define BUS_STALL_S 4.0                /* s a recipient may hold senders before it drains */
#define BUS_OUT_LINGER_S 3.0           /* s an ended connection's output may still flush */
#define BUS_OUT_LINGER_MAX 1024        /* outputs flushing at once; past it the oldest closes */
#define BUS_OUT_TICK_S 0.1             /* the reports' and lingering deadlines' timer */
/* What a MESSAGE frame adds to the data it carries: the frame header, the
 * message header, the longest topic. A child's reader takes chan_max plus
 * this, so anything a sibling may send reaches it; a queue must hold as
 * much. */
#define BUS_MSG_OVERHEAD (CHAN_HDR_LEN + 8 + BUS_NAME_MAX)
/* A prefork worker's queue keeps this much past queue_limit for the frames
 * that mark its connections: at most an end mark and a verdict wait. */
#define BUS_CONTROL_ROOM (4 * CHAN_HDR_LEN)

enum bus_full_policy { BUS_FULL_DROP = 0, BUS_FULL_KICK = 1 };

typedef struct bus_msg {
    int kind;               /* SF_MSG_* of sockfork.h */
    pid_t from;             /* 0: the supervisor or `sockfork ctl` */
    int ok;                 /* SF_MSG_CLAIMED: 1 if the name is now the child's */
    const char *topic;      /* topic, name, or error text; topic_len bytes */
    size_t topic_len;
    const unsigned char *data;
    size_t len;
} bus_msg;

typedef struct bus bus;
typedef struct endpoint endpoint;
typedef struct bus_sub bus_sub;
typedef struct bus_name bus_name;

struct endpoint {
    bus *owner;
    pid_t pid;
    int fd;                 /* -1 once closed */
    int jsonl;              /* the child speaks JSON lines (exec'd programs) */
    ev_io rd, wr;
    chan_decoder fdec;
    jsonl_decoder jdec;
    chan_queue q;
    bus_sub *subs;          /* this child's subscriptions */
    unsigned nsubs;
    bus_name *names;        /* names this child holds */
    unsigned nnames;
    char status[128];       /* the child's last status text */
    char *will;             /* topic then data, published if the channel closes */
    size_t will_topic_len, will_len;
    uint64_t frames_in, frames_out, drops;
    endpoint *prev, *next;  /* every open endpoint, for broadcasts */
    endpoint *aprev, *anext; /* the attention list: output to flush, or doomed */
    int listed;
    const char *doom;       /* why it is to be disconnected, once deliveries are done */
    int broken;             /* its peer closed: read to the EOF, write nothing */
    int doom_bad;
    /* Backpressure (bus.c, "holding senders"). */
    int congested;          /* its queue is high: senders to it are held */
    int stuck;              /* congested BUS_STALL_S without draining: it holds nobody */
    double congested_at;    /* ev_now when its queue passed the high mark */
    int held;               /* its requests wait for a recipient */
    int draining;           /* it has exited: nothing of it is held */
    TAILQ_ENTRY(endpoint) hlink; /* the held list, while held */
    int retrying;           /* resume() runs its request again: a re-hold is no new hold */
    chan_frame pend_f;      /* the request that waits, decoded */
    int has_pend_f;
    json_t *pend_j;
    unsigned char *stash;   /* what was read after it, to handle next */
    size_t stash_len;
    /* A prefork worker's channel (endpoint_use_sessions): it serves one
     * connection after another, and between two it is reachable by no
     * one (no pid send, no broadcast) and holds nothing in the bus. */
    int sessions;
    int in_session;         /* between the worker's CONN_BEGIN and CONN_END */
    void *data;             /* the owner's */
    /* Output offload (bus.c, "output offload"): the client's socket and
     * what waits for it, while the bus is its writer; out_state 0: never
     * opened, 1: open, 2: closed (a write failed: what comes for it goes). */
    struct bus_out *out;
    int out_state;
    int kicking;            /* kick(): the bus ends it (its kick words are written) */
};

#define BUS_KINDS 16 /* above every OP_* and SF_MSG_* */

/* What the bus has counted since bus_init. */
typedef struct bus_counters {
    uint64_t frames_in;         /* frames or lines read from children */
    uint64_t frames_out;        /* messages queued for children */
    uint64_t drops;             /* messages not queued: the recipient's queue was full */
    uint64_t kicked_full;       /* children disconnected for a full queue (BUS_FULL_KICK) */
    uint64_t kicked_bad;        /* children disconnected for bad input */
    uint64_t holds;             /* times a sender was held (a retry held again not counted) */
    /* By kind (metrics): requests handled by OP_* (bus_codec.h), messages
     * queued and dropped by SF_MSG_*; index 0 counts any other. */
    uint64_t in_by_op[BUS_KINDS];
    uint64_t out_by_kind[BUS_KINDS];
    uint64_t dropped_by_kind[BUS_KINDS];
    /* Output offload. */
    uint64_t out_opened;        /* clients whose output the bus took */
    uint64_t out_written;       /* bytes written to them */
    uint64_t out_dropped;       /* messages or writes that did not fit a client's buffer */
    uint64_t out_reports;       /* SF_MSG_OUT_STALLED sent */
    uint64_t out_failed;        /* outputs closed by a write error */
} bus_counters;

/* The counters and what the bus holds, at one moment (bus_get_stats). */
typedef struct bus_stats {
    bus_counters counted;
    unsigned endpoints;         /* open channels */
    unsigned topics;            /* topics with subscribers or history */
    unsigned names;             /* names claimed */
    size_t history_bytes;       /* what every topic's history costs (bound: cfg.history_bytes) */
    unsigned congested;         /* recipients holding their senders */
    unsigned held;              /* senders held */
    unsigned out_clients;       /* outputs open (a child's) */
    unsigned out_lingering;     /* outputs of ended children, still flushing */
    size_t out_bytes;           /* waiting in every output */
} bus_stats;

/* The owner learns of a child the bus wants gone (bad input, or a full
 * queue under BUS_FULL_KICK). It is told before the endpoint is closed,
 * so it can signal the child first: the child then sees the end of its
 * channel with the signal pending, and knows it was cut off. */
typedef void (*bus_kick_cb)(bus *b, endpoint *e, const char *why, void *arg);

/* A worker's CONN_BEGIN or CONN_END frame, in order with its requests:
 * the owner checks it, then calls endpoint_session_begin or _end. Returns
 * 0, or -1 for a frame that is wrong (the worker is disconnected). */
typedef int (*bus_session_cb)(bus *b, endpoint *e, const chan_frame *f, void *arg);

/* The owner's table of children: the open endpoint of a pid, or NULL. */
typedef endpoint *(*bus_find_cb)(bus *b, pid_t pid, void *arg);

typedef struct bus_config {
    uint32_t chan_max;          /* largest frame or line a child may send */
    size_t queue_limit;         /* bytes queued per child */
    int full_policy;            /* BUS_FULL_DROP or BUS_FULL_KICK */
    unsigned history;           /* messages kept per topic */
    size_t history_bytes;       /* kept for all topics; 0: BUS_HISTORY_TOTAL */
    bus_kick_cb on_kick;
    bus_find_cb find;
    bus_session_cb on_session;  /* NULL: no worker channels */
    void *arg;
    const sf_logger *log;
    /* Fan-out gathering (bus.c, "gathering"): s a burst of publishes may
     * wait for more of it before going out, from the last input read; at
     * most BUS_GATHER_SPAN times that from the first. 0: off, every loop
     * pass flushes. */
    double gather_s;
} bus_config;

/*
 * A bridge: another bus this one is joined to (the other generation's
 * during an upgrade, over a bus_link; later, other instances). The bus
 * tells it what must reach the peer, and asks it what the peer holds; it
 * calls these from its own handlers, never from the bridge's (what comes
 * from the peer is injected with bus_inject_*, which tells the bridge
 * nothing: a message crosses once). Events out (pid: the local child):
 *   published   a publish on a topic accepted here, a will among them;
 *   broadcast   a child's broadcast or `ctl broadcast` (bus_broadcast);
 *   send_name   a send to a name nobody holds here: 0 if the peer holds
 *               it (the message is the bridge's now), else -ESRCH;
 *   name        a name claimed (held 1) or released (held 0) here;
 *   member      a subscription made (joined 1) or gone (joined 0) here;
 *   will        a child's will set, or cleared (topic_len 0);
 *   will_published  the child's channel closed and its will was published
 *               here: the peer publishes its copy and forgets it, one
 *               step, so a cut link can neither lose nor repeat it (a
 *               will is not `published` above). One not published
 *               (bus_close_all) is not cleared either: the peer keeps it
 *               and publishes it itself when the bridge goes.
 * Questions (the peer's side only):
 *   name_held   whether the peer holds a name (a local claim then fails);
 *   members     "PID NAME NAME...\n" lines for the peer's subscribers
 *               of a topic, in *text (malloc'ed, the caller frees it; NULL
 *               with *text_len 0 for none); returns 0 or -ENOMEM;
 *   topic_count the peer's subscribers of a topic;
 *   each_topic  calls cb for each topic with subscribers on the peer
 *               whose name starts with prefix.
 * And (may be NULL):
 *   expecting   whether more of a burst is on its way from the peer now
 *               (bus_redis: lines written here and not yet read back, so
 *               the others' lines written at the same moment are not in
 *               either): a gathering waits for it as for input, for at
 *               most BUS_GATHER_SPAN_CROSSING gaps (cfg.gather_s) from
 *               its first.
 */
typedef void (*bus_topic_cb)(const char *topic, size_t len, unsigned subscribers, void *arg);
typedef struct bus_bridge_ops {
    void (*published)(void *ctx, const char *topic, size_t topic_len, pid_t from,
                      const unsigned char *data, size_t len);
    void (*broadcast)(void *ctx, pid_t from, const unsigned char *data, size_t len);
    int (*send_name)(void *ctx, const char *name, size_t name_len, pid_t from,
                     const unsigned char *data, size_t len);
    void (*name)(void *ctx, const char *name, size_t len, pid_t pid, int held);
    void (*member)(void *ctx, const char *topic, size_t len, pid_t pid, int joined);
    void (*will)(void *ctx, pid_t pid, const char *topic, size_t topic_len,
                 const unsigned char *data, size_t len);
    void (*will_published)(void *ctx, pid_t pid);
    int (*name_held)(void *ctx, const char *name, size_t len);
    int (*members)(void *ctx, const char *topic, size_t len, char **text, size_t *text_len);
    unsigned (*topic_count)(void *ctx, const char *topic, size_t len);
    void (*each_topic)(void *ctx, const char *prefix, size_t len, bus_topic_cb cb, void *arg);
    int (*expecting)(void *ctx);
} bus_bridge_ops;

typedef struct bus_topic bus_topic;

struct bus {
    struct ev_loop *loop;
    bus_config cfg;
    endpoint *all;              /* open endpoints */
    unsigned nendpoints;
    bus_topic **topics;         /* hash table of topics, BUS_TOPICS_MAX * 2 buckets */
    unsigned ntopics;
    TAILQ_HEAD(bus_topic_list, bus_topic) idle; /* topics with history and no subscribers, LRU first */
    TAILQ_HEAD(hist_list, hist_item) hist; /* every kept message, oldest first */
    size_t hist_bytes;          /* what history costs: each message's bytes and bookkeeping */
    bus_name **names;           /* hash table of claimed names */
    unsigned nnames;
    unsigned char *rbuf;        /* one read buffer for every endpoint */
    int closing;                /* bus_close_all: wills are not published */
    endpoint *attn;             /* see bus.c, "attention" */
    unsigned ncongested;        /* endpoints holding senders */
    TAILQ_HEAD(endpoint_list, endpoint) held; /* senders held, first held first */
    unsigned nheld;
    int wake;                   /* a recipient drained: retry the held */
    ev_timer stall;             /* while any is congested */
    ev_prepare prepare;
    bus_counters counted;
    const bus_bridge_ops *bridge; /* NULL: no bridge (bus_set_bridge) */
    void *bridge_ctx;
    /* Gathering (cfg.gather_s): a timerfd, for a deadline finer than the
     * loop's millisecond; while the flush waits, when it began, when input
     * last came (monotonic seconds), the input counted by then (frames
     * read from children and publishes injected by a bridge); urgent:
     * something queued that is not a publish (a reply, a kick), which goes
     * at once. */
    int gather_fd;
    ev_io gather_w;
    int gathering, urgent;
    double gather_first, gather_last;
    double gather_armed;        /* the timerfd's deadline while armed; 0: none */
    uint64_t gather_in;
    uint64_t injected;          /* publishes injected by a bridge (bus_inject_publish) */
    /* Output offload: outputs open, those of ended connections flushing
     * their last bytes (bounded by BUS_OUT_LINGER_S and _MAX), and a
     * timer for reports and lingering deadlines while any exists. */
    unsigned nouts;
    struct bus_out *lingering;
    unsigned nlingering;
    ev_timer out_timer;
};

int bus_init(bus *b, struct ev_loop *loop, const bus_config *cfg);
void bus_fini(bus *b);

/* An endpoint opened with ENDPOINT_FD_LATER (a child whose channel is made
 * at its first use, channel/chanreq.h) is open: it is found, messages are
 * queued for it (up to queue_limit), and nothing is read or written until
 * endpoint_attach gives it its descriptor. */
#define ENDPOINT_FD_LATER (-2)

/* Starts serving a child's channel (fd: the supervisor's end, already
 * non-blocking: made so with SOCK_NONBLOCK, one system call less per
 * child; the bus takes it and closes it in endpoint_close). */
int endpoint_open(bus *b, endpoint *e, int fd, pid_t pid, int jsonl, void *data);

/* The descriptor of an endpoint opened with ENDPOINT_FD_LATER: reading
 * starts, and what was queued for it goes out. Returns 0, or -EBADF (the
 * endpoint is closed, or has its descriptor already: fd is closed). */
int endpoint_attach(endpoint *e, int fd);

/* Still waiting for its descriptor (ENDPOINT_FD_LATER). */
static inline int endpoint_waiting(const endpoint *e) { return e->fd == ENDPOINT_FD_LATER; }

/* Closes the channel; the child's names and subscriptions go, and its will
 * is published. Idempotent. */
void endpoint_close(endpoint *e);

/* For a child that has exited: handles what is left unread on its channel
 * (bounded by the socket's buffer), so its last messages are not lost. */
void endpoint_drain(endpoint *e);

/* Reads and handles what the child has sent so far (bounded by the socket's
 * buffer), without waiting for more: before the bus closes. */
void endpoint_read_now(endpoint *e);

/* Closes every channel, publishing no will: at shutdown, children learn
 * the supervisor is going away from the end of their channel. */
void bus_close_all(bus *b);

static inline int endpoint_is_open(const endpoint *e) { return e->fd != -1; }

/* Open, and serving a connection if it is a worker's: what a message may
 * be sent to. */
static inline int endpoint_reachable(const endpoint *e)
{
    return endpoint_is_open(e) && (!e->sessions || e->in_session);
}

/* Makes an endpoint just opened a prefork worker's: idle (unreachable)
 * until its first CONN_BEGIN. */
void endpoint_use_sessions(endpoint *e);
/* The worker's connection begins: it is reachable. */
void endpoint_session_begin(endpoint *e);
/* The connection ended: its subscriptions and names go, its will is
 * published, and the end is marked in the worker's queue (CHAN_T_CONN_ENDED),
 * so it drops what was sent to the connection before. Returns 0 or -errno
 * (the mark could not be queued: the worker cannot tell old from new). */
int endpoint_session_end(endpoint *e);
/* Queues a frame of the owner's for a worker, in BUS_CONTROL_ROOM if the
 * queue is full of messages. Returns 0 or -errno. */
int endpoint_send_control(endpoint *e, uint16_t type, const void *payload, uint32_t len);

/* Sends one message to one child, under the queue policy. Returns 0,
 * -ENOBUFS (dropped: queue full), -EPIPE (closed) or -ENOMEM. */
int bus_deliver(endpoint *to, const bus_msg *m);

/* To every open endpoint but `except` (NULL: all). Returns deliveries. */
unsigned bus_broadcast(bus *b, const bus_msg *m, const endpoint *except);

/* The endpoint of a pid, or NULL. */
endpoint *bus_find_pid(bus *b, pid_t pid);

/* Fills out with the bus's counters and sizes now. The owner's reports
 * (`ctl stats`, and metrics) read the bus through it. */
void bus_get_stats(const bus *b, bus_stats *out);

/* ------------------------------------------------------------ bridge */

/* Joins the bus to a bridge (ops NULL: none; ops and ctx must outlive it
 * being set), and, with one set, tells it everything held here now (every
 * name, subscription and will, through the ops' events), so the peer
 * learns this side's state at once. */
void bus_set_bridge(bus *b, const bus_bridge_ops *ops, void *ctx);

/* What comes from the peer. None is told to the bridge: no loops.
 * A publish: to the topic's local subscribers, kept in its history as a
 * local one would be; from: the peer's pid. It counts as input for
 * gathering (a burst from the peer goes out together, as a local one
 * does). Returns 0 or -ENOSPC (no topic could be made for its history). */
int bus_inject_publish(bus *b, const char *topic, size_t topic_len, pid_t from,
                       const unsigned char *data, size_t len);
/* To every local child. Returns the deliveries. */
unsigned bus_inject_broadcast(bus *b, pid_t from, const unsigned char *data, size_t len);
/* To the local holder of a name. Returns 0 or -ESRCH (nobody holds it
 * here), or a delivery error. */
int bus_inject_send_name(bus *b, const char *name, size_t name_len, pid_t from,
                         const unsigned char *data, size_t len);
/* An SF_MSG_ERROR for a local child (a send of its that found nobody on
 * the peer). Returns 0 or -ESRCH (no such child). */
int bus_inject_error(bus *b, pid_t to, int code, const char *subject, size_t subject_len,
                     const char *text);

/* Messages of a topic that never reached this bus (a bridge found a gap
 * in what it read: trimmed before it was read, or lost on the way). Each
 * local subscriber gets what it would get for a message lost here: under
 * BUS_FULL_KICK it is disconnected, as for a full queue (counted in
 * kicked_full); else it is told with an SF_MSG_ERROR (ENOSPC, the topic
 * as its subject, "N messages of TOPIC missed"). Never a silent gap.
 * Returns the subscribers it reached. */
unsigned bus_inject_gap(bus *b, const char *topic, size_t topic_len, uint64_t missed);

/* Kept messages, newest first (every topic's, in the order they were
 * kept), while their cost (overhead + topic + data bytes each) fits in
 * budget: what a bridge gives a peer that starts with no history. */
typedef void (*bus_history_cb)(const char *topic, size_t topic_len, pid_t from,
                               const unsigned char *data, size_t len, void *arg);
void bus_history_export(bus *b, size_t budget, size_t overhead, bus_history_cb cb, void *arg);

/* A message of the peer's history, older than any kept here: it goes
 * first in the topic's history (delivered to nobody), within the usual
 * bounds. Fed newest first, the peer's history ends up in its order,
 * before this side's own. */
void bus_inject_history(bus *b, const char *topic, size_t topic_len, pid_t from,
                        const unsigned char *data, size_t len);

/* The pid of the local child that holds a name, or 0. */
pid_t bus_name_holder(bus *b, const char *name, size_t len);

/* Takes a name from its local holder (a claim the peer won): the holder is
 * told with an SF_MSG_ERROR, code EEXIST, the name as its data; the bridge
 * hears of the release. Returns 0 or -ENOENT (not held here). */
int bus_revoke_name(bus *b, const char *name, size_t len, const char *why);
/* Calls cb for every topic with subscribers: its name (len bytes, not
 * NUL-terminated; what a child sent) and how many. */
typedef void (*bus_each_topic_cb)(void *arg, const char *name, size_t len, unsigned subscribers);
void bus_each_topic(const bus *b, bus_each_topic_cb cb, void *arg);

#endif
