/*
 * rconn.h - one connection to Redis on the caller's libev loop: hiredis
 * 0.14's async API and its libev adapter, plus what hiredis lacks.
 *
 *  - A connect deadline (connect_ms, default 2000) that covers the TCP or
 *    unix connect and the handshake: SELECT db (if the URL names one), then
 *    CLIENT SETNAME (if client_name is set), then PING. on_up runs after the
 *    last of these answered.
 *  - A command deadline: each command must be answered within command_ms
 *    (default 3000) plus the block time its caller names (XREAD BLOCK,
 *    BLPOP). Replies come in order, so one timer on the oldest command is
 *    enough; a command queued behind a blocking one inherits the blocking
 *    one's deadline when that is later.
 *  - A PING every ping_ms (default 1000; 0: none) while no command is
 *    pending, so a silent partition is noticed within ping_ms + command_ms.
 *  - On any failure (connect error or deadline, a command's deadline, EOF,
 *    a protocol error, a refused handshake, rconn_drop): every pending
 *    callback is called once with reply NULL, in order; then on_down with a
 *    short reason; then a reconnect after an exponential backoff with jitter
 *    (backoff_min_ms 100 doubling to backoff_max_ms 5000; the wait is drawn
 *    in [d/2, d]). on_down and on_up alternate: on_down runs once when a
 *    connection that was up is lost, and once when the first attempt after
 *    rconn_new (or after a loss) fails; further failed attempts are counted
 *    in the stats only.
 *  - The caller's pending commands are bounded by pending_max (default
 *    10000; the heartbeat PING and the handshake are not counted): past it
 *    rconn_command returns -ENOBUFS. Nothing is queued while down: it returns
 *    -ENOTCONN and the caller keeps its own outbox.
 *
 * A host name in the URL is resolved by hiredis with getaddrinfo(), which
 * blocks the loop for as long as the resolver takes, at each connect
 * attempt: give IP literals (or unix:) where that matters.
 *
 * Single-threaded: every callback runs on the loop. A reply is hiredis's and
 * valid only during the callback. rconn_free may be called from any callback
 * (the hiredis context is then freed from a zero-delay timer, as hiredis
 * requires). No SUBSCRIBE or MONITOR: they change the reply stream's shape.
 */
#ifndef SF_REDIS_RCONN_H
#define SF_REDIS_RCONN_H

#include <stddef.h>
#include <stdint.h>

#include "redis/rurl.h"

struct ev_loop;
struct redisReply;
typedef struct rconn rconn;

/* A command's answer: reply is NULL when the connection failed or the
 * rconn is freed before the answer came. An error reply is a reply (type
 * REDIS_REPLY_ERROR), not a failure. */
typedef void (*rconn_reply_cb)(rconn *c, struct redisReply *reply, void *priv);
typedef void (*rconn_up_cb)(rconn *c, void *arg);
/* why: a short reason, valid during the call. */
typedef void (*rconn_down_cb)(rconn *c, const char *why, void *arg);

#define RCONN_CONNECT_MS 2000
#define RCONN_COMMAND_MS 3000
#define RCONN_PING_MS 1000
#define RCONN_BACKOFF_MIN_MS 100
#define RCONN_BACKOFF_MAX_MS 5000
#define RCONN_PENDING_MAX 10000

/* Zero in a field means its default, except ping_ms where 0 turns the
 * heartbeat off (as the sketch had it): start from rconn_opts_default(). */

typedef struct rconn_opts {
    unsigned connect_ms, command_ms, ping_ms, backoff_min_ms, backoff_max_ms;
    unsigned pending_max;
    rconn_up_cb on_up;       /* connected, SELECTed and named; may be NULL */
    rconn_down_cb on_down;   /* lost; pending callbacks already had NULL; may be NULL */
    void *arg;               /* for on_up and on_down */
    const char *client_name; /* CLIENT SETNAME on connect, or NULL; copied */
} rconn_opts;

/* Every field at its default: the handlers, arg and client_name NULL. */
void rconn_opts_default(rconn_opts *o);

/* A connection to where; the first attempt starts from the loop at once
 * (no callback runs inside this call), its result comes through on_up or
 * on_down. opts may
 * be NULL for every default. Returns 0 and *out, or -EINVAL (a bad option:
 * client_name with a space, backoff_min_ms > backoff_max_ms) or -ENOMEM. */
int rconn_new(struct ev_loop *loop, const rurl *where, const rconn_opts *opts,
              rconn **out);

/* Closes and frees c: pending callbacks get NULL, in order; no on_down. May
 * be called from any of c's callbacks; c is gone when it returns (to its
 * caller; memory is released when the callback unwinds). Called from a
 * reply callback, the hiredis context is freed from a zero-delay timer: run
 * the loop once more before destroying it. NULL is a no-op. */
void rconn_free(rconn *c);

/* 1 when connected and the handshake is done: rconn_command can succeed. */
int rconn_is_up(const rconn *c);

/* Sends argv (argvlen[i] bytes each, or strlen when argvlen is NULL), as
 * redisAsyncCommandArgv does. block_ms: how long Redis may legitimately hold
 * the reply (BLOCK ms of XREAD, the timeout of BLPOP), added to command_ms.
 * cb may be NULL (the reply is dropped; a missing reply still cuts the
 * connection). Returns 0 (cb will be called exactly once), -ENOTCONN (not up),
 * -ENOBUFS (pending_max commands are waiting) or -ENOMEM; on an error cb is
 * never called. */
int rconn_command(rconn *c, rconn_reply_cb cb, void *priv, unsigned block_ms,
                  int argc, const char **argv, const size_t *argvlen);

/* Cuts the connection now, as a failure would (pending callbacks get NULL,
 * on_down with why if it was up, a reconnect after the backoff). Nothing if
 * c is down already. */
void rconn_drop(rconn *c, const char *why);

/* Writes to the socket, now, what the commands given so far appended
 * (hiredis writes only when the loop runs again), waiting up to ms for
 * room. For a close that must not lose its last commands: it blocks.
 * Returns 0, -ENOTCONN (not up), -ETIMEDOUT or -EIO. */
int rconn_flush(rconn *c, unsigned ms);

typedef struct rconn_stats {
    int up;
    uint64_t connects;     /* connections that reached on_up */
    uint64_t disconnects;  /* connections lost after on_up */
    uint64_t commands;     /* commands accepted by rconn_command */
    uint64_t timeouts;     /* command deadlines (PINGs included) that fired */
    unsigned pending;      /* commands sent and not answered (PINGs included) */
    char last_error[128];  /* the last failure's reason, "" if none */
    uint64_t attempts;     /* connect attempts started */
    unsigned backoff_ms;   /* the wait armed before the next attempt, 0 if none */
} rconn_stats;

void rconn_get_stats(const rconn *c, rconn_stats *out);

#endif
