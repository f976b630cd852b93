/* TEMPORARY SHIM, see rconn.h */
#include "redis/rconn.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libev.h>

struct rconn {
    struct ev_loop *loop;
    rurl u;
    rconn_opts o;
    redisAsyncContext *ac;
    int up;
    ev_timer retry;
};
typedef struct pend { rconn *c; rconn_reply_cb cb; void *priv; } pend;

static void start(rconn *c);
static void on_reply(redisAsyncContext *ac, void *r, void *pv)
{
    pend *p = pv;
    (void)ac;
    if (p->cb) p->cb(p->c, r, p->priv);
    free(p);
}
static void on_connect(const redisAsyncContext *ac, int status)
{
    rconn *c = ac->data;
    if (status != REDIS_OK) {
        c->ac = NULL;
        if (c->o.on_down) c->o.on_down(c, ac->errstr, c->o.arg);
        ev_timer_set(&c->retry, 0.2, 0.);
        ev_timer_start(c->loop, &c->retry);
        return;
    }
    c->up = 1;
    if (c->o.on_up) c->o.on_up(c, c->o.arg);
}
static void on_disconnect(const redisAsyncContext *ac, int status)
{
    rconn *c = ac->data;
    (void)status;
    c->ac = NULL;
    if (!c->up) return;
    c->up = 0;
    if (c->o.on_down) c->o.on_down(c, "disconnected", c->o.arg);
    ev_timer_set(&c->retry, 0.2, 0.);
    ev_timer_start(c->loop, &c->retry);
}
static void retry_cb(struct ev_loop *l, ev_timer *w, int re) { (void)l; (void)re; start(w->data); }
static void start(rconn *c)
{
    redisAsyncContext *ac = c->u.path[0] ? redisAsyncConnectUnix(c->u.path)
                                         : redisAsyncConnect(c->u.host, (int)c->u.port);
    if (!ac || ac->err) {
        if (c->o.on_down) c->o.on_down(c, ac ? ac->errstr : "oom", c->o.arg);
        if (ac) redisAsyncFree(ac);
        ev_timer_set(&c->retry, 0.2, 0.);
        ev_timer_start(c->loop, &c->retry);
        return;
    }
    ac->data = c;
    c->ac = ac;
    redisLibevAttach(c->loop, ac);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
}
int rconn_new(struct ev_loop *loop, const rurl *where, const rconn_opts *opts, rconn **out)
{
    rconn *c = calloc(1, sizeof *c);
    if (!c) return -ENOMEM;
    c->loop = loop; c->u = *where; c->o = *opts;
    ev_timer_init(&c->retry, retry_cb, 0., 0.);
    c->retry.data = c;
    start(c);
    *out = c;
    return 0;
}
void rconn_free(rconn *c)
{
    if (!c) return;
    ev_timer_stop(c->loop, &c->retry);
    c->o.on_down = NULL;
    c->up = 0;
    if (c->ac) { c->ac->data = c; redisAsyncFree(c->ac); }
    free(c);
}
int rconn_is_up(const rconn *c) { return c->up; }
int rconn_command(rconn *c, rconn_reply_cb cb, void *priv, unsigned block_ms, int argc,
                  const char **argv, const size_t *argvlen)
{
    pend *p;
    (void)block_ms;
    if (!c->up || !c->ac) return -ENOTCONN;
    if (!(p = malloc(sizeof *p))) return -ENOMEM;
    p->c = c; p->cb = cb; p->priv = priv;
    if (redisAsyncCommandArgv(c->ac, on_reply, p, argc, argv, argvlen) != REDIS_OK) { free(p); return -ENOMEM; }
    return 0;
}
void rconn_drop(rconn *c, const char *why) { (void)why; if (c->ac) redisAsyncDisconnect(c->ac); }
