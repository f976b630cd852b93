/* TEMPORARY SHIM of helper-33's rconn (per /work/notes/rconn_api.h) for local testing only. */
#ifndef SF_REDIS_RCONN_H
#define SF_REDIS_RCONN_H
#include <ev.h>
#include <stdint.h>
#include <stddef.h>
#include "redis/rurl.h"
typedef struct rconn rconn;
struct redisReply;
typedef void (*rconn_reply_cb)(rconn *c, struct redisReply *reply, void *priv);
typedef void (*rconn_up_cb)(rconn *c, void *arg);
typedef void (*rconn_down_cb)(rconn *c, const char *why, void *arg);
typedef struct rconn_opts {
    unsigned connect_ms, command_ms, ping_ms, backoff_min_ms, backoff_max_ms;
    unsigned pending_max;
    rconn_up_cb on_up;
    rconn_down_cb on_down;
    void *arg;
    const char *client_name;
} rconn_opts;
int rconn_new(struct ev_loop *loop, const rurl *where, const rconn_opts *opts, rconn **out);
void rconn_free(rconn *c);
int rconn_is_up(const rconn *c);
int rconn_command(rconn *c, rconn_reply_cb cb, void *priv, unsigned block_ms,
                  int argc, const char **argv, const size_t *argvlen);
void rconn_drop(rconn *c, const char *why);
#endif
