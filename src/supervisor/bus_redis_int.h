/* bus_redis_int.h - what the files of the Redis bridge share (bus_redis.h
 * is its interface; the why is in docs/design.md, "The bus across
 * instances (Redis)"):
 *   bus_redis.c       the bus's hooks (what it tells becomes writes), and
 *                     life: open, close, ticks, heartbeats, connections
 *   bus_redis_out.c   the outbox, the topics known, and writing entries
 *   bus_redis_peer.c  the other instances' replicas, and reading one again
 *   bus_redis_read.c  the snapshot at start, starting topics, reading
 * rb_: shared between those files only. */
#ifndef SF_SUPERVISOR_BUS_REDIS_INT_H
#define SF_SUPERVISOR_BUS_REDIS_INT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "redis/rconn.h"
#include "supervisor/bus_bridge.h"
#include "supervisor/bus_dedup.h"
#include "supervisor/bus_rcodec.h"
#include "supervisor/bus_redis.h"

struct redisReply;

#define KEY_X "sf:x"
#define KEY_INSTANCES "sf:i"
#define KEY_MAX (8 + BUS_NAME_MAX + 1) /* "sf:t:" or "sf:n:" and a name, NUL */
#define ID_MAX 32                      /* a stream id: "ms-seq" */

/* A command waiting to be written, or written and not yet answered. */
typedef struct out_item {
    struct out_item *next;
    int argc;
    int sent;               /* written on the current connection */
    int what;               /* OUT_*: what its reply means */
    size_t bytes;           /* what it costs in the outbox */
    char *name;             /* OUT_CLAIM: the name (NUL-terminated) */
    size_t name_len;
    const char **argv;      /* into the same allocation */
    size_t *argvlen;
} out_item;

enum { OUT_PLAIN = 0, OUT_CLAIM, OUT_PROBE };

/* A topic stream this instance knows: one it writes (its seq there) and
 * perhaps reads (its cursor). */
typedef struct rtop {
    char key[KEY_MAX];      /* "sf:t:TOPIC" */
    size_t key_len;
    uint64_t seq;           /* the last seq written there; 0: none yet */
    int reading;            /* in the XREAD set */
    int starting;           /* its history and cursor are being read */
    char cursor[ID_MAX];    /* the last id read */
    double used;            /* ev_now of its last use: eviction */
    double start_ms;        /* wall clock when its reading was started */
} rtop;

/* Another instance, and its state here. */
typedef struct peer {
    uint64_t id;
    bus_bridge replica;
    int used;
    /* Its state hash read again (a gap in its seq on sf:x: state events
     * lost), and its sf:x entries since the gap, replayed on top. */
    int refreshing, refresh_sent, refresh_again;
    unsigned char **kept;
    size_t *kept_len;
    unsigned nkept;
} peer;

struct bus_redis {
    bus *bus;
    struct ev_loop *loop;
    rurl where;
    bus_redis_opts o;
    const sf_logger *log;
    uint64_t id;
    char idhex[17];
    char hkey[24], skey[24]; /* "sf:h:ID", "sf:s:ID" */
    rconn *cmd, *rd;
    /* the outbox */
    out_item *head, *tail;
    size_t out_bytes;
    int resync;             /* a state write was lost: write it all again */
    /* what is read */
    int snapshot;           /* 0: not read; 1: being read; 2: read, reading the streams */
    unsigned snap_pending;  /* HGETALLs in flight */
    char xcursor[ID_MAX];
    int reading;            /* an XREAD is in flight */
    long long rd_id;        /* the reading connection's CLIENT ID; 0: not known */
    rtop *tops;
    unsigned ntops;
    uint64_t xseq, maxseq;  /* seq on sf:x; the highest written anywhere */
    bus_dedup seen;
    peer peers[BUS_REDIS_PEERS_MAX];
    ev_timer tick;
    /* names held here, for renewal: a small list */
    char **names;
    unsigned nnames, cap_names;
    uint64_t probe_seq;     /* our probe on sf:x not read back yet; 0: none out */
    int probe_acked;        /* ... and Redis has it */
    double probe_at;        /* ev_now when Redis said it had it */
    bus_redis_stats st;
    int closing;
    int up_said;            /* bus_redis_up logged (once) */
    /* Our last line on a topic read here, until it is read back (seq 0:
     * none out): the others' lines of the same burst are on their way
     * too, and the bus's gathering waits for them (op_expecting). */
    char echo_key[KEY_MAX];
    size_t echo_len;
    uint64_t echo_seq;
    double echo_at;         /* os_mono_now when it was written */
};

/* An echo not back in this long is not waited for (each wait is within
 * the bus's gathering cap anyway). */
#define ECHO_WAIT_S 0.05

static inline double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* bus_redis_out.c: the outbox */
void rb_flush(bus_redis *r);
void rb_item_free(out_item *it);
int rb_out_push(bus_redis *r, int what, int state, const char *name, size_t name_len, int argc,
                const char **argv, const size_t *argvlen);
/* ... topics */
int rb_key_of(char *key, const char *prefix, const char *name, size_t len);
rtop *rb_top_find(bus_redis *r, const char *key, size_t len);
rtop *rb_top_get(bus_redis *r, const char *topic, size_t len);
/* ... writing */
int rb_xadd_as(bus_redis *r, int what, const char *key, size_t key_len, rc_entry *e, int state);
int rb_xadd(bus_redis *r, const char *key, size_t key_len, rc_entry *e, int state);
void rb_next_xseq(bus_redis *r, rc_entry *e);
void rb_state_event(bus_redis *r, rc_entry *e, const char *field, size_t field_len, int set);
size_t rb_field_of(char *f, size_t cap, char kind, pid_t pid, const char *s, size_t len);
void rb_names_add(bus_redis *r, const char *name, size_t len);
void rb_names_remove(bus_redis *r, const char *name, size_t len);

/* bus_redis_peer.c: replicas */
peer *rb_peer_find(bus_redis *r, uint64_t id);
peer *rb_peer_get(bus_redis *r, uint64_t id);
void rb_peer_gone(bus_redis *r, peer *p, const char *why);
void rb_replica_feed(bus_redis *r, const rc_entry *e);
/* ... read again */
/* A command about peer p's key PREFIX + id (EXISTS sf:h:, HGETALL sf:s:),
 * and in its callback the peer it asked about (NULL: gone since). */
int rb_peer_ask(bus_redis *r, const peer *p, const char *cmd, const char *prefix,
                rconn_reply_cb cb);
peer *rb_peer_answered(void *priv, bus_redis **r);
void rb_refresh_forget(peer *p);
void rb_refresh_keep(bus_redis *r, peer *p, int kind, const unsigned char *e, size_t n);
void rb_refresh_send(bus_redis *r, peer *p);

/* bus_redis_read.c */
void rb_read_more(bus_redis *r);
void rb_start_topic(bus_redis *r, rtop *t);
void rb_start_topics(bus_redis *r);
void rb_say_up(bus_redis *r);
void rb_snapshot_start(bus_redis *r);
void rb_check_cursors(bus_redis *r);

#endif
