/*
 * rconn.c - one Redis connection on a libev loop (see rconn.h).
 *
 * Each connect attempt is a link: one hiredis context and what must outlive
 * it. hiredis 0.14 forbids freeing its context from inside its own
 * callbacks, and calls our callbacks with NULL replies while it tears a
 * context down itself. So on a failure we detach the link first (the rconn
 * forgets it and answers its own pending callbacks with NULL), then let the
 * context go: at once when no hiredis callback is on the stack, from a zero
 * timer when one is, or not at all when hiredis is freeing it already. The
 * adapter's cleanup hook, which hiredis calls exactly once per context, is
 * where a link ends; it is also how we learn of an EOF with nothing pending.
 *
 * The rconn itself may be freed by the user from any callback: every entry
 * from the loop or from hiredis counts itself in depth, and the memory goes
 * when the outermost one unwinds.
 */
#include "redis/rconn.h"
#include "os/os.h"

#include <errno.h>
#include <poll.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libev.h>

enum rcmd_kind { CMD_USER, CMD_SELECT, CMD_SETNAME, CMD_HELLO_PING, CMD_PING };
enum rconn_state { ST_DOWN, ST_CONNECTING, ST_UP };

/* One command sent: hiredis holds it as the callback's privdata until it
 * calls on_reply for it, which frees it. */
struct rcmd {
    struct rcmd *next;
    rconn_reply_cb cb;
    void *priv;
    ev_tstamp due;       /* the reply's deadline (used when up) */
    unsigned char kind;  /* enum rcmd_kind */
    unsigned char answered; /* its cb already ran (with NULL, on a failure) */
};

struct rlink {
    redisAsyncContext *ac;
    rconn *owner;        /* NULL once detached */
    struct ev_loop *loop;
    ev_timer reap;       /* frees a detached context outside hiredis */
    int in_cb;           /* our reply callbacks on the stack for this context */
    int hiredis_frees;   /* hiredis is tearing the context down itself */
};

struct rconn {
    struct ev_loop *loop;
    rurl where;
    rconn_opts opts;
    char *client_name;
    enum rconn_state state;
    struct rlink *link;
    struct rcmd *head, *tail;  /* sent, unanswered, in order */
    unsigned npending;
    unsigned nuser;            /* of those, the caller's (pending_max bounds them) */
    ev_timer connect_timer, deadline_timer, ping_timer, retry_timer;
    ev_tstamp last_reply;
    unsigned fails;            /* failed attempts since the last up */
    int reported_down;         /* on_down ran since the last on_up */
    int depth;                 /* entries from the loop or hiredis on the stack */
    int closing;               /* rconn_free was called */
    uint64_t rng;
    rconn_stats stats;
};

static void connect_start(rconn *c);


/* ---- lifetime ----------------------------------------------------------- */

static void enter(rconn *c)
{
    c->depth++;
}

/* Returns 1 when c was freed (the caller must not touch it). */
static int leave(rconn *c)
{
    if (--c->depth == 0 && c->closing) {
        free(c->client_name);
        free(c);
        return 1;
    }
    return 0;
}

static void reap_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct rlink *link = w->data;
    (void)loop;
    (void)revents;
    redisAsyncFree(link->ac); /* ends in cleanup_hook, which frees link */
}

/* Lets go of a detached link's context (see the top of the file). */
static void link_dispose(struct rlink *link)
{
    if (link->hiredis_frees)
        return;
    if (link->in_cb > 0) {
        ev_timer_start(link->loop, &link->reap);
        return;
    }
    redisAsyncFree(link->ac);
}

/* ---- failure ------------------------------------------------------------ */

static void stop_timers(rconn *c)
{
    ev_timer_stop(c->loop, &c->connect_timer);
    ev_timer_stop(c->loop, &c->deadline_timer);
    ev_timer_stop(c->loop, &c->ping_timer);
    ev_timer_stop(c->loop, &c->retry_timer);
}

static void set_error(rconn *c, const char *why)
{
    snprintf(c->stats.last_error, sizeof c->stats.last_error, "%s", why);
}

/* Detaches the link and answers every pending command with NULL, in order.
 * Returns the detached link (or NULL) for the caller to dispose of. */
static struct rlink *detach(rconn *c)
{
    struct rlink *link = c->link;
    struct rcmd *cmd = c->head;

    c->link = NULL;
    c->head = c->tail = NULL;
    c->npending = 0;
    c->nuser = 0;
    c->state = ST_DOWN;
    if (link)
        link->owner = NULL;
    for (struct rcmd *n = cmd; n; n = n->next)
        n->answered = 1;
    /* hiredis frees the entries (through on_reply) only when the link is
     * disposed of, after this walk. */
    for (; cmd; cmd = cmd->next)
        if (cmd->kind == CMD_USER && cmd->cb)
            cmd->cb(c, NULL, cmd->priv);
    return link;
}

static unsigned next_backoff_ms(rconn *c)
{
    uint64_t d = c->opts.backoff_min_ms;
    for (unsigned i = 1; i < c->fails && d < c->opts.backoff_max_ms; i++)
        d *= 2;
    if (d > c->opts.backoff_max_ms)
        d = c->opts.backoff_max_ms;
    /* xorshift64: jitter only, no need for more. */
    c->rng ^= c->rng << 13;
    c->rng ^= c->rng >> 7;
    c->rng ^= c->rng << 17;
    uint64_t half = d / 2;
    return (unsigned)(d - half + (half ? c->rng % (half + 1) : 0));
}

/* The connection (or the attempt) failed: see rconn.h for the order. Called
 * with c entered. */
static void fail(rconn *c, const char *why)
{
    int was_up = c->state == ST_UP;

    if (c->state == ST_DOWN || c->closing)
        return;
    stop_timers(c);
    set_error(c, why);
    struct rlink *link = detach(c);
    if (link)
        link_dispose(link);
    if (c->closing)
        return;
    if (was_up)
        c->stats.disconnects++;
    c->stats.up = 0;
    c->fails++;
    if (!c->reported_down) {
        c->reported_down = 1;
        /* why may be hiredis's errstr: hand over our copy. */
        if (c->opts.on_down)
            c->opts.on_down(c, c->stats.last_error, c->opts.arg);
        if (c->closing || c->state != ST_DOWN)
            return;
    }
    c->stats.backoff_ms = next_backoff_ms(c);
    ev_timer_set(&c->retry_timer, c->stats.backoff_ms / 1000.0, 0.);
    ev_timer_start(c->loop, &c->retry_timer);
}

/* ---- deadlines ---------------------------------------------------------- */

static void arm_deadline(rconn *c)
{
    ev_timer_stop(c->loop, &c->deadline_timer);
    if (!c->head || c->state != ST_UP)
        return;
    ev_tstamp left = c->head->due - os_mono_now();
    ev_timer_set(&c->deadline_timer, left > 0 ? left : 0., 0.);
    ev_timer_start(c->loop, &c->deadline_timer);
}

static void deadline_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    rconn *c = w->data;
    (void)loop;
    (void)revents;
    if (!c->head)
        return;
    if (c->head->due > os_mono_now() + 1e-3) {
        arm_deadline(c);
        return;
    }
    enter(c);
    char why[96];
    snprintf(why, sizeof why, "no reply within its deadline (%u ms%s)", c->opts.command_ms,
             c->head->kind == CMD_PING ? ", heartbeat PING" : " + block time");
    c->stats.timeouts++;
    fail(c, why);
    leave(c);
}

static void connect_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    rconn *c = w->data;
    char why[64];
    (void)loop;
    (void)revents;
    enter(c);
    snprintf(why, sizeof why, "connect timeout (%u ms)", c->opts.connect_ms);
    fail(c, why);
    leave(c);
}

static void retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    rconn *c = w->data;
    (void)loop;
    (void)revents;
    enter(c);
    c->stats.backoff_ms = 0;
    connect_start(c);
    leave(c);
}

/* ---- sending ------------------------------------------------------------ */

static void on_reply(redisAsyncContext *ac, void *r, void *privdata);

/* Queues one command on the live link. Returns 0 or -ENOMEM. */
static int send_cmd(rconn *c, enum rcmd_kind kind, rconn_reply_cb cb, void *priv,
                    unsigned block_ms, int argc, const char **argv, const size_t *argvlen)
{
    struct rcmd *cmd = calloc(1, sizeof *cmd);
    if (!cmd)
        return -ENOMEM;
    cmd->kind = (unsigned char)kind;
    cmd->cb = cb;
    cmd->priv = priv;
    cmd->due = os_mono_now() + (c->opts.command_ms + (double)block_ms) / 1000.0;
    if (c->tail && c->tail->due > cmd->due)
        cmd->due = c->tail->due;
    if (redisAsyncCommandArgv(c->link->ac, on_reply, cmd, argc, argv, argvlen) != REDIS_OK) {
        free(cmd);
        return -ENOMEM;
    }
    if (c->tail)
        c->tail->next = cmd;
    else
        c->head = cmd;
    c->tail = cmd;
    c->npending++;
    if (kind == CMD_USER)
        c->nuser++;
    if (c->head == cmd)
        arm_deadline(c);
    return 0;
}

static void ping_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    rconn *c = w->data;
    ev_tstamp every = c->opts.ping_ms / 1000.0;
    ev_tstamp due = c->last_reply + every, now = os_mono_now();
    (void)revents;

    if (c->state != ST_UP)
        return;
    if (c->npending == 0 && due <= now + 1e-3) {
        static const char *argv[] = { "PING" };
        enter(c);
        if (send_cmd(c, CMD_PING, NULL, NULL, 0, 1, argv, NULL) < 0)
            fail(c, "out of memory for the heartbeat PING");
        if (leave(c))
            return;
        due = now + every;
    } else if (c->npending) {
        due = now + every; /* the pending command's deadline watches */
    }
    if (c->state == ST_UP) {
        w->repeat = due - now;
        ev_timer_again(loop, w);
    }
}

/* ---- replies ------------------------------------------------------------ */

static void went_up(rconn *c)
{
    ev_timer_stop(c->loop, &c->connect_timer);
    c->state = ST_UP;
    c->fails = 0;
    c->reported_down = 0;
    c->stats.up = 1;
    c->stats.connects++;
    c->last_reply = os_mono_now();
    if (c->opts.ping_ms) {
        c->ping_timer.repeat = c->opts.ping_ms / 1000.0;
        ev_timer_again(c->loop, &c->ping_timer);
    }
    if (c->opts.on_up)
        c->opts.on_up(c, c->opts.arg);
}

/* A handshake step's reply: an error reply fails the attempt. */
static void handshake_reply(rconn *c, const struct rcmd *cmd, redisReply *reply)
{
    static const char *const step[] = { "", "SELECT", "CLIENT SETNAME", "PING", "PING" };
    if (reply->type == REDIS_REPLY_ERROR) {
        char why[128];
        snprintf(why, sizeof why, "%s refused: %.*s", step[cmd->kind],
                 (int)(reply->len > 80 ? 80 : reply->len), reply->str ? reply->str : "");
        fail(c, why);
        return;
    }
    if (cmd->kind == CMD_HELLO_PING)
        went_up(c);
}

static void deliver(rconn *c, struct rcmd *cmd, redisReply *reply)
{
    switch (cmd->kind) {
    case CMD_USER:
        if (cmd->cb)
            cmd->cb(c, reply, cmd->priv);
        break;
    case CMD_PING:
        if (reply->type == REDIS_REPLY_ERROR)
            fail(c, "the heartbeat PING was refused");
        break;
    default:
        handshake_reply(c, cmd, reply);
        break;
    }
}

static const char *ac_error(const redisAsyncContext *ac)
{
    return ac->err && ac->errstr && *ac->errstr ? ac->errstr : "connection lost";
}

static void on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct rcmd *cmd = privdata;
    struct rlink *link = ac->data;
    rconn *c = link ? link->owner : NULL;

    if (!c || cmd->answered) {
        free(cmd);
        return;
    }
    enter(c);
    if (!r) {
        /* hiredis is freeing the context: an error or EOF. */
        link->hiredis_frees = 1;
        fail(c, ac_error(ac));
        free(cmd);
        leave(c);
        return;
    }
    c->head = cmd->next;
    if (!c->head)
        c->tail = NULL;
    c->npending--;
    if (cmd->kind == CMD_USER)
        c->nuser--;
    c->last_reply = os_mono_now();
    arm_deadline(c);
    link->in_cb++;
    deliver(c, cmd, r);
    link->in_cb--;
    free(cmd);
    leave(c);
}

/* The libev adapter's cleanup, wrapped: hiredis calls it once per context,
 * when it frees it, for whatever reason. */
static void cleanup_hook(void *privdata)
{
    redisLibevEvents *e = privdata;
    redisAsyncContext *ac = e->context;
    struct rlink *link = ac->data;

    redisLibevCleanup(e);
    if (!link)
        return;
    link->hiredis_frees = 1;
    rconn *c = link->owner;
    if (c) {
        enter(c);
        fail(c, ac_error(ac));
        leave(c);
    }
    ac->data = NULL;
    ev_timer_stop(link->loop, &link->reap);
    free(link);
}

/* ---- connecting --------------------------------------------------------- */

static void attempt_failed(rconn *c, const char *why)
{
    c->state = ST_CONNECTING; /* so fail() counts and reports it */
    fail(c, why);
}

static int send_handshake(rconn *c)
{
    char db[16];
    int rc = 0;
    if (c->where.db >= 0) {
        snprintf(db, sizeof db, "%d", c->where.db);
        const char *argv[] = { "SELECT", db };
        rc = send_cmd(c, CMD_SELECT, NULL, NULL, 0, 2, argv, NULL);
    }
    if (rc == 0 && c->client_name) {
        const char *argv[] = { "CLIENT", "SETNAME", c->client_name };
        rc = send_cmd(c, CMD_SETNAME, NULL, NULL, 0, 3, argv, NULL);
    }
    if (rc == 0) {
        const char *argv[] = { "PING" };
        rc = send_cmd(c, CMD_HELLO_PING, NULL, NULL, 0, 1, argv, NULL);
    }
    return rc;
}

/* hiredis 0.14 creates its socket without SOCK_CLOEXEC: without this, a
 * program exec'd by any process that forks from this one (a worker, a
 * hook) would hold the Redis connection open. The loop is single-threaded,
 * so no fork comes between the socket's creation and this. */
static int set_cloexec(int fd)
{
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0)
        return -errno;
    return 0;
}

/* One attempt; called with c entered and down. */
static void connect_start(rconn *c)
{
    redisAsyncContext *ac;
    struct rlink *link;
    char why[128];

    c->stats.attempts++;
    ac = c->where.path[0] ? redisAsyncConnectUnix(c->where.path)
                          : redisAsyncConnect(c->where.host, (int)c->where.port);
    if (!ac) {
        attempt_failed(c, "out of memory");
        return;
    }
    if (ac->err) {
        snprintf(why, sizeof why, "connect: %s", ac->errstr);
        redisAsyncFree(ac);
        attempt_failed(c, why);
        return;
    }
    int rc = set_cloexec(ac->c.fd);
    if (rc < 0) {
        snprintf(why, sizeof why, "connect: fcntl FD_CLOEXEC: %s", strerror(-rc));
        redisAsyncFree(ac);
        attempt_failed(c, why);
        return;
    }
    link = calloc(1, sizeof *link);
    if (!link || redisLibevAttach(c->loop, ac) != REDIS_OK) {
        free(link);
        redisAsyncFree(ac);
        attempt_failed(c, "out of memory");
        return;
    }
    link->ac = ac;
    link->owner = c;
    link->loop = c->loop;
    ev_timer_init(&link->reap, reap_cb, 0., 0.);
    link->reap.data = link;
    ac->data = link;
    ac->ev.cleanup = cleanup_hook;
    c->link = link;
    c->state = ST_CONNECTING;
    ev_timer_set(&c->connect_timer, c->opts.connect_ms / 1000.0, 0.);
    ev_timer_start(c->loop, &c->connect_timer);
    if (send_handshake(c) < 0)
        fail(c, "out of memory");
}

/* ---- the API ------------------------------------------------------------ */

void rconn_opts_default(rconn_opts *o)
{
    memset(o, 0, sizeof *o);
    o->connect_ms = RCONN_CONNECT_MS;
    o->command_ms = RCONN_COMMAND_MS;
    o->ping_ms = RCONN_PING_MS;
    o->backoff_min_ms = RCONN_BACKOFF_MIN_MS;
    o->backoff_max_ms = RCONN_BACKOFF_MAX_MS;
    o->pending_max = RCONN_PENDING_MAX;
}

static int fill_opts(rconn_opts *o, const rconn_opts *given)
{
    rconn_opts_default(o);
    if (!given)
        return 0;
    o->ping_ms = given->ping_ms;
#define TAKE(f) if (given->f) o->f = given->f
    TAKE(connect_ms);
    TAKE(command_ms);
    TAKE(backoff_min_ms);
    TAKE(backoff_max_ms);
    TAKE(pending_max);
#undef TAKE
    o->on_up = given->on_up;
    o->on_down = given->on_down;
    o->arg = given->arg;
    o->client_name = given->client_name;
    if (o->backoff_min_ms > o->backoff_max_ms)
        return -EINVAL;
    if (o->client_name) {
        if (!*o->client_name || strlen(o->client_name) > 128)
            return -EINVAL;
        for (const char *p = o->client_name; *p; p++)
            if (*p <= ' ' || *p >= 0x7f) /* Redis refuses spaces in names */
                return -EINVAL;
    }
    return 0;
}

int rconn_new(struct ev_loop *loop, const rurl *where, const rconn_opts *opts, rconn **out)
{
    rconn *c = calloc(1, sizeof *c);
    int rc = -ENOMEM;

    if (!c)
        return -ENOMEM;
    rc = fill_opts(&c->opts, opts);
    if (rc < 0)
        goto fail;
    rc = -ENOMEM;
    if (c->opts.client_name && !(c->client_name = strdup(c->opts.client_name)))
        goto fail;
    c->opts.client_name = c->client_name;
    c->loop = loop;
    c->where = *where;
    c->state = ST_DOWN;
    c->rng = (uint64_t)(uintptr_t)c ^ ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL) ^
             0x9e3779b97f4a7c15ull;
    ev_init(&c->connect_timer, connect_timeout_cb);
    ev_init(&c->deadline_timer, deadline_cb);
    ev_init(&c->ping_timer, ping_cb);
    ev_init(&c->retry_timer, retry_cb);
    c->connect_timer.data = c->deadline_timer.data = c->ping_timer.data =
        c->retry_timer.data = c;
    /* The first attempt starts from the loop, so that no callback runs
     * before the caller has *out. */
    ev_timer_set(&c->retry_timer, 0., 0.);
    ev_timer_start(loop, &c->retry_timer);
    *out = c;
    return 0;
fail:
    free(c->client_name);
    free(c);
    return rc;
}

void rconn_free(rconn *c)
{
    if (!c || c->closing)
        return;
    c->closing = 1;
    enter(c);
    stop_timers(c);
    struct rlink *link = detach(c);
    if (link)
        link_dispose(link);
    leave(c);
}

/* hiredis writes what a command appended only when the loop next runs
 * (its write watcher): a command given in the loop pass that ends with
 * rconn_free would go with the context, unwritten. */
int rconn_flush(rconn *c, unsigned ms)
{
    redisContext *rc;
    double deadline = os_mono_now() + ms / 1000.0;
    int done = 0;

    if (!c || !rconn_is_up(c) || !c->link || !c->link->ac)
        return -ENOTCONN;
    rc = &c->link->ac->c;
    for (;;) {
        struct pollfd p = {rc->fd, POLLOUT, 0};
        double left;

        if (redisBufferWrite(rc, &done) == REDIS_ERR)
            return -EIO;
        if (done)
            return 0;
        if ((left = deadline - os_mono_now()) <= 0)
            return -ETIMEDOUT;
        if (poll(&p, 1, (int)(left * 1000) + 1) < 0 && errno != EINTR)
            return -EIO;
    }
}

int rconn_is_up(const rconn *c)
{
    return c->state == ST_UP && !c->closing;
}

int rconn_command(rconn *c, rconn_reply_cb cb, void *priv, unsigned block_ms,
                  int argc, const char **argv, const size_t *argvlen)
{
    if (!rconn_is_up(c))
        return -ENOTCONN;
    /* The caller's commands only: a heartbeat PING it cannot see must not
     * refuse it with no reply of its own to come. */
    if (c->nuser >= c->opts.pending_max)
        return -ENOBUFS;
    int rc = send_cmd(c, CMD_USER, cb, priv, block_ms, argc, argv, argvlen);
    if (rc == 0)
        c->stats.commands++;
    return rc;
}

void rconn_drop(rconn *c, const char *why)
{
    if (!c || c->closing || c->state == ST_DOWN)
        return;
    enter(c);
    fail(c, why ? why : "dropped");
    leave(c);
}

void rconn_get_stats(const rconn *c, rconn_stats *out)
{
    *out = c->stats;
    out->up = rconn_is_up(c);
    out->pending = c->npending;
}
