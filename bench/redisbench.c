/*
 * redisbench - how many commands a second one rconn (src/redis/rconn.c)
 * pipelines to a Redis server: SET key:N value, with W commands in flight
 * (each reply sends the next), for T seconds on one libev loop.
 *
 *   build/bench/redisbench [-t SECONDS] [-w WINDOW] [-d BYTES] URL
 *
 * URL as rurl takes it (redis://127.0.0.1:PORT, unix:/path). Prints one
 * line: commands/s, the window, the URL. Run by bench/redis.sh beside
 * redis-benchmark; the tests never run it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ev.h>
#include <hiredis/hiredis.h>

#include "redis/rconn.h"
#include "redis/rurl.h"

typedef struct bench {
    struct ev_loop *loop;
    rconn *c;
    unsigned window;
    char value[4096];
    size_t value_len;
    unsigned long long sent, answered, errors;
    int measuring, done, failed;
    ev_tstamp start;
    unsigned long long answered_at_start;
} bench;

static void send_one(bench *b);

static void on_reply(rconn *c, struct redisReply *r, void *priv)
{
    bench *b = priv;
    (void)c;
    if (!r) {
        if (!b->done)
            b->failed = 1;
        return;
    }
    if (r->type == REDIS_REPLY_ERROR)
        b->errors++;
    b->answered++;
    if (!b->done)
        send_one(b);
}

static void send_one(bench *b)
{
    char key[32];
    int klen = snprintf(key, sizeof key, "rb:%llu", b->sent % 100000);
    const char *argv[] = { "SET", key, b->value };
    const size_t len[] = { 3, (size_t)klen, b->value_len };
    int rc = rconn_command(b->c, on_reply, b, 0, 3, argv, len);
    if (rc < 0) {
        fprintf(stderr, "redisbench: cannot send: %s\n", strerror(-rc));
        b->failed = 1;
        ev_break(b->loop, EVBREAK_ALL);
        return;
    }
    b->sent++;
}

static void on_up(rconn *c, void *arg)
{
    bench *b = arg;
    (void)c;
    for (unsigned i = 0; i < b->window; i++)
        send_one(b);
}

static void on_down(rconn *c, const char *why, void *arg)
{
    bench *b = arg;
    (void)c;
    fprintf(stderr, "redisbench: connection down: %s\n", why);
    b->failed = 1;
    ev_break(b->loop, EVBREAK_ALL);
}

/* Warm-up over: count from here. */
static void start_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    bench *b = w->data;
    (void)revents;
    b->measuring = 1;
    b->start = ev_now(loop);
    b->answered_at_start = b->answered;
}

static void stop_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    bench *b = w->data;
    (void)revents;
    b->done = 1;
    ev_break(loop, EVBREAK_ALL);
}

int main(int argc, char **argv)
{
    bench b = { .window = 1000, .value_len = 3 };
    double secs = 2.0;
    int opt;
    while ((opt = getopt(argc, argv, "t:w:d:")) != -1) {
        switch (opt) {
        case 't': secs = atof(optarg); break;
        case 'w': b.window = (unsigned)atoi(optarg); break;
        case 'd': b.value_len = (size_t)atoi(optarg); break;
        default: goto usage;
        }
    }
    if (optind != argc - 1 || secs <= 0 || b.window == 0 || b.window > 100000 ||
        b.value_len > sizeof b.value)
        goto usage;
    memset(b.value, 'x', sizeof b.value);

    rurl where;
    const char *why;
    if (rurl_parse(argv[optind], 0, &where, &why) < 0) {
        fprintf(stderr, "redisbench: %s: %s\n", argv[optind], why);
        return 2;
    }
    b.loop = EV_DEFAULT;
    rconn_opts o;
    rconn_opts_default(&o);
    o.on_up = on_up;
    o.on_down = on_down;
    o.arg = &b;
    o.pending_max = b.window + 16;
    int rc = rconn_new(b.loop, &where, &o, &b.c);
    if (rc < 0) {
        fprintf(stderr, "redisbench: %s\n", strerror(-rc));
        return 1;
    }
    ev_timer warm, stop;
    ev_timer_init(&warm, start_cb, 0.2, 0.);
    ev_timer_init(&stop, stop_cb, 0.2 + secs, 0.);
    warm.data = stop.data = &b;
    ev_timer_start(b.loop, &warm);
    ev_timer_start(b.loop, &stop);
    ev_run(b.loop, 0);
    ev_tstamp took = ev_now(b.loop) - b.start;
    unsigned long long n = b.answered - b.answered_at_start;
    rconn_free(b.c);
    ev_run(b.loop, EVRUN_NOWAIT);
    if (b.failed || !b.measuring || took <= 0) {
        fprintf(stderr, "redisbench: no measurement\n");
        return 1;
    }
    printf("redisbench: %.0f commands/s (SET, %zu-byte values, %u in flight, one connection, "
           "%.1f s, %s)%s\n", n / took, b.value_len, b.window, took, where.text,
           b.errors ? " WITH ERROR REPLIES" : "");
    return b.errors ? 1 : 0;
usage:
    fprintf(stderr, "usage: redisbench [-t SECONDS] [-w WINDOW] [-d BYTES] URL\n");
    return 2;
}
