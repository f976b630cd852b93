/*
 * chatload.c - fan-out load generator: `sockfork chat` against redis pub/sub
 * (issue 4's benchmark), the same measurement code for both.
 *
 * N clients in one room. In every round each client sends one line
 * "<round> <client> <send-time-ns>"; the server relays it to the N - 1
 * others, and each receiver records latency = receipt time - send time
 * (CLOCK_MONOTONIC: sender and receiver are this one process). A round is
 * complete when all N * (N - 1) deliveries of it have arrived. Rounds are
 * lock-step by default (-w 1: round r + 1 starts when round r is
 * complete); -w W keeps up to W rounds in flight (round r + W starts when
 * round r is complete). Deliveries/s = deliveries of the measured rounds /
 * the time from the start of the first measured round to the completion of
 * the last. The first --warmup rounds are neither timed nor sampled.
 *
 * Modes:
 *   chat      one TCP connection per client to `sockfork chat`: read the
 *             greeting, send the nickname "uI", wait for "*** Hello"; lines
 *             come back as "<uI> PAYLOAD\r\n" (the sender gets none of its
 *             own).
 *   redis     two connections per client to redis-server: one SUBSCRIBEd to
 *             "room", one that PUBLISHes (a subscribed connection cannot
 *             publish). RESP is written and parsed here by hand. Redis
 *             also delivers a line to its own sender: that copy is read
 *             and parsed (the receiver does that work) but neither counted
 *             nor sampled, so both modes count N - 1 deliveries per line.
 *             Every PUBLISH reply (":N", the subscribers reached) is read
 *             and must be N during the rounds.
 *   probe     connects every 20 ms until the server accepts, or -d passes.
 *   freeport  prints a TCP port free on 127.0.0.1 right now.
 *
 * Two instances (chat mode, -a given twice: two `sockfork chat --bus` on one
 * Redis, issue 16): even clients connect to the first address, odd ones to
 * the second. Latency samples are also kept apart by whether the sender
 * is on the receiver's instance or on the other, and the result line gains
 * p50/p99 of each (p50_same_us p99_same_us p50_cross_us p99_cross_us).
 *
 * Before the rounds, a sync phase: clients 0 and 1 send "sync K I" every
 * 50 ms until every client has received a marker from each of them but
 * itself (with two instances, one marker crossed the bridge; then
 * every client is subscribed: "*** Hello" comes before the chat child's
 * subscription reaches the bus, so the greeting alone does not prove it).
 * Markers and any other line (join announcements) seen later are counted
 * as other_lines and otherwise ignored.
 *
 * One thread, epoll (level-triggered), non-blocking sockets, bounded
 * buffers (64 KiB in, 4 KiB out per connection). Every phase has a
 * wall-clock bound (-T for joining, sync, and the longest wait for a
 * round's next delivery; -d for the rounds in all), plus an alarm()
 * watchdog. Loopback targets only. A failure prints one line saying what
 * and where on stderr and exits 1; usage errors exit 2. On success the
 * last line of output is one line of key=value pairs (or JSON with --json).
 */
#include "benchlib.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>


#define MAX_CLIENTS 1000
#define MAX_ROUNDS 1000000
#define MAX_WINDOW 64
#define MAX_SAMPLES (1u << 24)   /* latency samples kept; later ones dropped */
#define IN_CAP (64 * 1024)       /* per connection: unparsed input */
#define OUT_CAP 4096             /* per connection: unsent output */
#define SYNC_EVERY_NS (50 * NS_PER_MS)
#define SYNC_DRAIN_NS (100 * NS_PER_MS) /* quiet time after sync */
#define MAX_EVENTS 512

enum mode { MODE_CHAT, MODE_REDIS, MODE_PROBE, MODE_FREEPORT };

/* A client's handshake. */
enum cstate { CS_GREETING, CS_HELLO, CS_SUBSCRIBING, CS_JOINED };

struct conn {
    int fd;
    size_t in_len, out_len, out_off;
    int pollout;         /* EPOLLOUT is armed */
    char *in;            /* IN_CAP bytes */
    char out[OUT_CAP];
};

struct client {
    struct conn rx;      /* chat: the connection; redis: the subscriber */
    struct conn tx;      /* redis: the publisher (unused in chat mode) */
    enum cstate state;
    int ready;           /* has seen a sync marker from each other marker sender */
    unsigned markers;    /* bit K: has seen a marker of client K (0 or 1) */
    uint32_t *next;      /* per sender: the round expected next from it */
};

struct cl {
    enum mode mode;
    struct sockaddr_storage addr[2];
    socklen_t addr_len[2];
    int naddr;           /* -a given once or twice: instances */
    int n;               /* -n */
    int rounds;          /* -r: measured rounds */
    int warmup;          /* --warmup */
    int window;          /* -w */
    uint64_t stall_ns;   /* -T */
    double secs;         /* -d: bound on all rounds; probe: on the wait */
    int json;

    int ep;
    struct client *c;
    int joined, ready;
    const char *phase;   /* for failure messages */

    /* rounds */
    int total;           /* warmup + rounds */
    int started, completed;
    uint64_t count[MAX_WINDOW];     /* deliveries so far of round r % window */
    uint64_t started_at[MAX_WINDOW];
    uint64_t t_measure, t_end;
    uint64_t progress_at;           /* last delivery seen (stall detection) */

    /* counters */
    uint64_t deliveries;            /* of measured rounds */
    uint64_t all_deliveries;        /* warmup ones too */
    uint64_t self_seen, other_lines, order_errors, pub_replies, pub_mismatch;
    uint64_t sync_sent;
    uint64_t bytes_in;
    bench_samples lat;
    bench_samples lat_same, lat_cross; /* two instances: by the sender's */
};

/* A failed run: the phase, what went wrong, exit 1. */
static struct cl *G;
static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "chatload: %s%s%s: FAILED: ", G && G->mode == MODE_REDIS ? "redis" : "chat",
            G && G->phase ? " " : "", G && G->phase ? G->phase : "");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* Parses a decimal number of [p, end); returns the position after it and
 * its digits, or NULL when there is none or it is followed by neither a
 * space nor end. */
static const char *num(const char *p, const char *end, uint64_t *out)
{
    uint64_t v = 0;
    const char *s = p;

    while (p < end && *p >= '0' && *p <= '9')
        v = v * 10 + (uint64_t)(*p++ - '0');
    if (p == s || (p < end && *p != ' '))
        return NULL;
    *out = v;
    return p < end ? p + 1 : p;
}

/* -------------------------------------------------------- connections */

static int cid(const struct cl *g, const struct conn *k, int *is_tx)
{
    /* Conns live inside clients: find which by address arithmetic. */
    size_t off = (size_t)((const char *)k - (const char *)g->c);
    int i = (int)(off / sizeof *g->c);
    *is_tx = k == &g->c[i].tx;
    return i;
}

static void arm(struct cl *g, struct conn *k, int pollout)
{
    int tx;
    int i = cid(g, k, &tx);
    struct epoll_event ev = {.events = EPOLLIN | (pollout ? EPOLLOUT : 0u),
                             .data.u32 = (uint32_t)(2 * i + tx)};
    if (epoll_ctl(g->ep, EPOLL_CTL_MOD, k->fd, &ev) < 0)
        fail("epoll_ctl: %s", strerror(errno));
    k->pollout = pollout;
}

/* Writes what the socket takes now; arms EPOLLOUT for the rest. */
static void flush(struct cl *g, struct conn *k)
{
    while (k->out_off < k->out_len) {
        ssize_t w = send(k->fd, k->out + k->out_off, k->out_len - k->out_off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!k->pollout)
                arm(g, k, 1);
            return;
        }
        if (w < 0) {
            int tx;
            fail("client %d: send: %s", cid(g, k, &tx), strerror(errno));
        }
        k->out_off += (size_t)w;
    }
    k->out_off = k->out_len = 0;
    if (k->pollout)
        arm(g, k, 0);
}

static void queue(struct cl *g, struct conn *k, const char *data, size_t len)
{
    if (k->out_off > 0 && k->out_len + len > OUT_CAP) {
        memmove(k->out, k->out + k->out_off, k->out_len - k->out_off);
        k->out_len -= k->out_off;
        k->out_off = 0;
    }
    if (k->out_len + len > OUT_CAP) {
        int tx;
        fail("client %d: %zu bytes unsent: the server does not read", cid(g, k, &tx),
             k->out_len - k->out_off);
    }
    memcpy(k->out + k->out_len, data, len);
    k->out_len += len;
    flush(g, k);
}

/* Sends one payload as this client: a chat line, or a redis PUBLISH. */
static void say(struct cl *g, int i, const char *payload, size_t len)
{
    char buf[256];
    int n;

    if (g->mode == MODE_CHAT) {
        n = snprintf(buf, sizeof buf, "%.*s\n", (int)len, payload);
        queue(g, &g->c[i].rx, buf, (size_t)n);
    } else {
        n = snprintf(buf, sizeof buf, "*3\r\n$7\r\nPUBLISH\r\n$4\r\nroom\r\n$%zu\r\n%.*s\r\n", len,
                     (int)len, payload);
        queue(g, &g->c[i].tx, buf, (size_t)n);
    }
}

static void conn_open(struct cl *g, struct conn *k, int i, int tx)
{
    int a = g->naddr == 2 ? i % 2 : 0; /* the instance: even clients on the first */
    int fd = socket(g->addr[a].ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    struct timeval tv = {.tv_sec = (time_t)(g->stall_ns / NS_PER_S) + 1};
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(2 * i + tx)};

    if (fd < 0)
        fail("socket: %s (raise the descriptor limit?)", strerror(errno));
    /* A blocking connect, bounded by SO_SNDTIMEO: on loopback it completes
     * in the kernel's backlog, whether or not the server accepts yet. */
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&g->addr[a], g->addr_len[a]) < 0)
        fail("client %d: connect: %s", i, strerror(errno));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0)
        fail("fcntl: %s", strerror(errno));
    k->fd = fd;
    k->in = malloc(IN_CAP);
    if (!k->in)
        fail("out of memory");
    if (epoll_ctl(g->ep, EPOLL_CTL_ADD, fd, &ev) < 0)
        fail("epoll_ctl: %s", strerror(errno));
}

/* -------------------------------------------------------------- rounds */

static uint64_t per_round(const struct cl *g)
{
    return (uint64_t)g->n * (uint64_t)(g->n - 1);
}

/* Starts rounds while the window has room: every client sends its line,
 * each stamped just before its own send. */
static void start_rounds(struct cl *g)
{
    while (g->started < g->total && g->started - g->completed < g->window) {
        int r = g->started++;
        uint64_t t = bench_now_ns();

        g->count[r % g->window] = 0;
        g->started_at[r % g->window] = t;
        if (r == g->warmup)
            g->t_measure = t;
        if (g->started - g->completed == 1)
            g->progress_at = t; /* the stall clock starts with the oldest round */
        for (int i = 0; i < g->n; i++) {
            char line[64];
            int len = snprintf(line, sizeof line, "%d %d %llu", r, i, (unsigned long long)bench_now_ns());
            say(g, i, line, (size_t)len);
        }
    }
}

/* One relayed payload, received by client i at time now. */
static void payload(struct cl *g, int i, const char *p, const char *end, uint64_t now)
{
    struct client *c = &g->c[i];
    uint64_t r, from, sent;
    const char *q;

    if (end - p >= 5 && memcmp(p, "sync ", 5) == 0) {
        if (!(q = num(p + 5, end, &r)) || !num(q, end, &from))
            fail("client %d: malformed marker '%.*s'", i, (int)(end - p), p);
        if (from < 2)
            c->markers |= 1u << from;
        if (!c->ready && (c->markers | (i < 2 ? 1u << i : 0)) == 3u) {
            c->ready = 1;
            g->ready++;
        }
        g->other_lines++;
        return;
    }
    if (!(q = num(p, end, &r)) || !(q = num(q, end, &from)) || !num(q, end, &sent))
        fail("client %d: a line that is none of ours: '%.*s'", i, (int)(end - p), p);
    if (from >= (uint64_t)g->n || r >= (uint64_t)g->total)
        fail("client %d: line of client %llu, round %llu: no such client or round", i,
             (unsigned long long)from, (unsigned long long)r);
    if ((int)from == i) {
        g->self_seen++; /* redis: its own line comes back; not a delivery */
        return;
    }
    if ((int)r < g->completed || (int)r >= g->started)
        fail("client %d: a line of round %llu, which is not in flight (rounds %d to %d are)", i,
             (unsigned long long)r, g->completed, g->started - 1);
    if (c->next[from] != r)
        g->order_errors++;
    c->next[from] = (uint32_t)r + 1;
    if (sent > now)
        fail("client %d: send time after receipt time: clocks broken", i);

    g->all_deliveries++;
    g->progress_at = now;
    if ((int)r >= g->warmup) {
        g->deliveries++;
        bench_sample_add(&g->lat, now - sent);
        if (g->naddr == 2)
            bench_sample_add((int)from % 2 == i % 2 ? &g->lat_same : &g->lat_cross, now - sent);
    }
    if (++g->count[r % g->window] < per_round(g) || (int)r != g->completed)
        return;
    /* The oldest round is complete; rounds after it may be too. */
    while (g->completed < g->started && g->count[g->completed % g->window] == per_round(g)) {
        if (g->completed == g->total - 1)
            g->t_end = now;
        g->completed++;
    }
    g->progress_at = now;
    start_rounds(g);
}

/* ---------------------------------------------------------------- chat */

static int has_prefix(const char *p, const char *end, const char *prefix)
{
    size_t n = strlen(prefix);
    return (size_t)(end - p) >= n && memcmp(p, prefix, n) == 0;
}

static void chat_line(struct cl *g, int i, const char *p, const char *end, uint64_t now)
{
    struct client *c = &g->c[i];

    if (end > p && end[-1] == '\r')
        end--;
    switch (c->state) {
    case CS_GREETING:
        if (has_prefix(p, end, "*** Welcome")) {
            char nick[16];
            int n = snprintf(nick, sizeof nick, "u%d\n", i);
            queue(g, &c->rx, nick, (size_t)n);
            c->state = CS_HELLO;
        } else {
            g->other_lines++;
        }
        return;
    case CS_HELLO:
        if (has_prefix(p, end, "*** Hello ")) {
            c->state = CS_JOINED;
            g->joined++;
        } else if (has_prefix(p, end, "*** the nickname")) {
            fail("client %d: nickname u%d is taken: is another run on this server?", i, i);
        } else {
            g->other_lines++;
        }
        return;
    default:
        break;
    }
    if (p < end && *p == '<') {
        const char *gt = memchr(p, '>', (size_t)(end - p));
        if (gt && gt + 1 < end && gt[1] == ' ') {
            payload(g, i, gt + 2, end, now);
            return;
        }
    }
    if (has_prefix(p, end, "*** slow down") || has_prefix(p, end, "*** You were disconnected"))
        fail("client %d: the server's flood limit dropped its lines (start it with"
             " --flood 100000/100000): '%.*s'", i, (int)(end - p), p);
    g->other_lines++; /* "*** uN has joined lobby" and the like */
}

/* --------------------------------------------------------------- redis */

/* A RESP reply: an array of at most 4 bulk strings or integers (kept as
 * text), an integer, a simple string or an error. */
struct resp {
    char kind;
    int nel;
    const char *el[4];
    size_t len[4];
    long long ival;
};

/* Position of the CR of the first CRLF in [p, end), or NULL. */
static const char *crlf(const char *p, const char *end)
{
    for (; p + 1 < end; p++)
        if (p[0] == '\r' && p[1] == '\n')
            return p;
    return NULL;
}

static int parse_ll(const char *p, const char *end, long long *out)
{
    int neg = p < end && *p == '-';
    long long v = 0;

    p += neg;
    if (p == end || end - p > 18)
        return -1;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (*p - '0');
    }
    *out = neg ? -v : v;
    return 0;
}

/* Returns the bytes of one reply at p, 0 if it is not all here, -1 if it
 * is malformed (or bigger than we expect). */
static long resp_parse(const char *p, const char *end, struct resp *r)
{
    const char *e = crlf(p + 1, end), *q;
    long long n;

    if (!e)
        return end - p > 64 ? -1 : 0; /* headers are short */
    r->kind = *p;
    switch (*p) {
    case ':':
        return parse_ll(p + 1, e, &r->ival) < 0 ? -1 : e + 2 - p;
    case '+':
    case '-':
        r->el[0] = p + 1;
        r->len[0] = (size_t)(e - p - 1);
        return e + 2 - p;
    case '*':
        if (parse_ll(p + 1, e, &n) < 0 || n < 1 || n > 4)
            return -1;
        r->nel = (int)n;
        q = e + 2;
        for (int k = 0; k < r->nel; k++) {
            long long blen;
            if (q >= end)
                return 0;
            if (!(e = crlf(q + 1, end)))
                return end - q > 64 ? -1 : 0;
            if (*q == ':') {
                r->el[k] = q + 1;
                r->len[k] = (size_t)(e - q - 1);
                q = e + 2;
                continue;
            }
            if (*q != '$' || parse_ll(q + 1, e, &blen) < 0 || blen < 0 || blen > IN_CAP)
                return -1;
            q = e + 2;
            if (end - q < blen + 2)
                return 0;
            if (q[blen] != '\r' || q[blen + 1] != '\n')
                return -1;
            r->el[k] = q;
            r->len[k] = (size_t)blen;
            q += blen + 2;
        }
        return q - p;
    default:
        return -1;
    }
}

static int el_is(const struct resp *r, int k, const char *s)
{
    return k < r->nel && r->len[k] == strlen(s) && memcmp(r->el[k], s, r->len[k]) == 0;
}

/* A reply on client i's subscriber connection. */
static void sub_reply(struct cl *g, int i, const struct resp *r, uint64_t now)
{
    struct client *c = &g->c[i];

    if (r->kind == '-')
        fail("client %d: redis error: %.*s", i, (int)r->len[0], r->el[0]);
    if (r->kind == '*' && r->nel == 3 && el_is(r, 0, "message") && el_is(r, 1, "room")) {
        payload(g, i, r->el[2], r->el[2] + r->len[2], now);
        return;
    }
    if (r->kind == '*' && r->nel == 3 && el_is(r, 0, "subscribe") && el_is(r, 1, "room") &&
        c->state == CS_SUBSCRIBING) {
        c->state = CS_JOINED;
        g->joined++;
        return;
    }
    g->other_lines++;
}

/* A reply on client i's publisher connection: the subscribers reached. */
static void pub_reply(struct cl *g, int i, const struct resp *r)
{
    if (r->kind == '-')
        fail("client %d: redis error on PUBLISH: %.*s", i, (int)r->len[0], r->el[0]);
    if (r->kind != ':')
        fail("client %d: PUBLISH answered with a '%c' reply", i, r->kind);
    g->pub_replies++;
    if (g->started > 0 && r->ival != g->n)
        g->pub_mismatch++;
}

/* --------------------------------------------------------------- input */

static void on_readable(struct cl *g, int i, int tx)
{
    struct conn *k = tx ? &g->c[i].tx : &g->c[i].rx;
    ssize_t n = recv(k->fd, k->in + k->in_len, IN_CAP - k->in_len, 0);
    uint64_t now;
    size_t off = 0;

    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n < 0)
        fail("client %d: recv: %s", i, strerror(errno));
    if (n == 0)
        fail("client %d: the server closed the connection", i);
    now = bench_now_ns();
    k->in_len += (size_t)n;
    g->bytes_in += (uint64_t)n;

    if (g->mode == MODE_CHAT) {
        const char *nl;
        while ((nl = memchr(k->in + off, '\n', k->in_len - off))) {
            chat_line(g, i, k->in + off, nl, now);
            off = (size_t)(nl - k->in) + 1;
        }
    } else {
        struct resp r;
        long used;
        while (off < k->in_len && (used = resp_parse(k->in + off, k->in + k->in_len, &r)) != 0) {
            if (used < 0)
                fail("client %d: malformed RESP from the server", i);
            if (tx)
                pub_reply(g, i, &r);
            else
                sub_reply(g, i, &r, now);
            off += (size_t)used;
        }
    }
    memmove(k->in, k->in + off, k->in_len - off);
    k->in_len -= off;
    if (k->in_len == IN_CAP)
        fail("client %d: %d bytes without a whole line or reply", i, IN_CAP);
}

/*
 * Runs the event loop until done(g), or until `until` (then returns 0).
 * tick, if any, runs at least every 10 ms.
 */
static int loop(struct cl *g, uint64_t until, int (*done)(struct cl *),
                void (*tick)(struct cl *, uint64_t))
{
    struct epoll_event evs[MAX_EVENTS];

    for (;;) {
        uint64_t now = bench_now_ns();
        if (done && done(g))
            return 1;
        if (now >= until)
            return 0;
        if (tick)
            tick(g, now);
        uint64_t wait = until - now;
        if (wait > 10 * NS_PER_MS)
            wait = 10 * NS_PER_MS;
        int n = epoll_wait(g->ep, evs, MAX_EVENTS, (int)((wait + NS_PER_MS - 1) / NS_PER_MS));
        if (n < 0 && errno != EINTR)
            fail("epoll_wait: %s", strerror(errno));
        for (int e = 0; e < n; e++) {
            int i = (int)(evs[e].data.u32 / 2), tx = (int)(evs[e].data.u32 % 2);
            struct conn *k = tx ? &g->c[i].tx : &g->c[i].rx;
            if (evs[e].events & EPOLLOUT)
                flush(g, k);
            if (evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                on_readable(g, i, tx);
        }
    }
}

/* -------------------------------------------------------------- phases */

static int all_joined(struct cl *g) { return g->joined == g->n; }
static int all_ready(struct cl *g) { return g->ready == g->n; }
static int all_done(struct cl *g) { return g->completed == g->total; }

static uint64_t next_sync;
static void sync_tick(struct cl *g, uint64_t now)
{
    if (now < next_sync)
        return;
    next_sync = now + SYNC_EVERY_NS;
    for (int i = 0; i < 2; i++) {
        char line[48];
        int len = snprintf(line, sizeof line, "sync %llu %d", (unsigned long long)g->sync_sent++, i);
        say(g, i, line, (size_t)len);
    }
}

static void stall_tick(struct cl *g, uint64_t now)
{
    if (now - g->progress_at > g->stall_ns)
        fail("round %d: %llu of %llu deliveries, then none for %.1f s (%d rounds complete)",
             g->completed, (unsigned long long)g->count[g->completed % g->window],
             (unsigned long long)per_round(g), (double)g->stall_ns / NS_PER_S, g->completed);
}

static void print_result(struct cl *g)
{
    double secs = (double)(g->t_end - g->t_measure) / NS_PER_S;
    double rate = secs > 0 ? (double)g->deliveries / secs : 0;
    uint64_t errors = g->order_errors + g->pub_mismatch;

    if (g->lat.n > 0)
        bench_samples_sort(&g->lat);
    if (g->lat_same.n > 0)
        bench_samples_sort(&g->lat_same);
    if (g->lat_cross.n > 0)
        bench_samples_sort(&g->lat_cross);
    const char *mode = g->mode == MODE_CHAT ? "chat" : "redis";
    if (g->json) {
        printf("{\"mode\":\"%s\",\"n\":%d,\"rounds\":%d,\"warmup\":%d,\"window\":%d,"
               "\"deliveries\":%llu,\"secs\":%.3f,\"deliveries_per_s\":%.1f,"
               "\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,"
               "\"samples\":%zu,\"self_seen\":%llu,\"other_lines\":%llu,"
               "\"order_errors\":%llu,\"pub_mismatch\":%llu,\"errors\":%llu",
               mode, g->n, g->rounds, g->warmup, g->window, (unsigned long long)g->deliveries,
               secs, rate, bench_pct_us(&g->lat, 50), bench_pct_us(&g->lat, 90), bench_pct_us(&g->lat, 99),
               bench_pct_us(&g->lat, 100), g->lat.n, (unsigned long long)g->self_seen,
               (unsigned long long)g->other_lines, (unsigned long long)g->order_errors,
               (unsigned long long)g->pub_mismatch, (unsigned long long)errors);
        if (g->naddr == 2)
            printf(",\"instances\":2,\"p50_same_us\":%.1f,\"p99_same_us\":%.1f,"
                   "\"p50_cross_us\":%.1f,\"p99_cross_us\":%.1f",
                   bench_pct_us(&g->lat_same, 50), bench_pct_us(&g->lat_same, 99),
                   bench_pct_us(&g->lat_cross, 50), bench_pct_us(&g->lat_cross, 99));
        puts("}");
    } else {
        printf("mode=%s n=%d rounds=%d warmup=%d window=%d deliveries=%llu secs=%.3f"
               " deliveries_per_s=%.1f p50_us=%.1f p90_us=%.1f p99_us=%.1f max_us=%.1f"
               " samples=%zu self_seen=%llu other_lines=%llu order_errors=%llu"
               " pub_mismatch=%llu errors=%llu",
               mode, g->n, g->rounds, g->warmup, g->window, (unsigned long long)g->deliveries,
               secs, rate, bench_pct_us(&g->lat, 50), bench_pct_us(&g->lat, 90), bench_pct_us(&g->lat, 99),
               bench_pct_us(&g->lat, 100), g->lat.n, (unsigned long long)g->self_seen,
               (unsigned long long)g->other_lines, (unsigned long long)g->order_errors,
               (unsigned long long)g->pub_mismatch, (unsigned long long)errors);
        if (g->naddr == 2)
            printf(" instances=2 p50_same_us=%.1f p99_same_us=%.1f p50_cross_us=%.1f"
                   " p99_cross_us=%.1f", bench_pct_us(&g->lat_same, 50),
                   bench_pct_us(&g->lat_same, 99), bench_pct_us(&g->lat_cross, 50),
                   bench_pct_us(&g->lat_cross, 99));
        putchar('\n');
    }
    fflush(stdout);
}

static int run(struct cl *g)
{
    uint64_t t0;

    g->c = calloc((size_t)g->n, sizeof *g->c);
    if (!g->c)
        fail("out of memory");
    for (int i = 0; i < g->n; i++) {
        g->c[i].rx.fd = g->c[i].tx.fd = -1;
        g->c[i].next = calloc((size_t)g->n, sizeof *g->c[i].next);
        if (!g->c[i].next)
            fail("out of memory");
    }

    /* 1. Connect and join: nickname and "*** Hello", or SUBSCRIBE. */
    g->phase = "join";
    t0 = bench_now_ns();
    for (int i = 0; i < g->n; i++) {
        struct client *c = &g->c[i];
        conn_open(g, &c->rx, i, 0);
        if (g->mode == MODE_REDIS) {
            static const char sub[] = "*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nroom\r\n";
            conn_open(g, &c->tx, i, 1);
            c->state = CS_SUBSCRIBING;
            queue(g, &c->rx, sub, sizeof sub - 1);
        }
    }
    if (!loop(g, t0 + g->stall_ns, all_joined, NULL))
        fail("%d of %d clients joined in %.1f s", g->joined, g->n, (double)g->stall_ns / NS_PER_S);
    double join_s = (double)(bench_now_ns() - t0) / NS_PER_S;

    /* 2. Sync: every client has heard a marker, so every one is in the room. */
    g->phase = "sync";
    t0 = bench_now_ns();
    next_sync = 0;
    if (!loop(g, t0 + g->stall_ns, all_ready, sync_tick))
        fail("%d of %d clients heard a marker in %.1f s", g->ready, g->n,
             (double)g->stall_ns / NS_PER_S);
    loop(g, bench_now_ns() + SYNC_DRAIN_NS, NULL, NULL); /* markers still on their way */
    double sync_s = (double)(bench_now_ns() - t0) / NS_PER_S;

    /* 3. The rounds. */
    g->phase = "rounds";
    t0 = bench_now_ns();
    g->other_lines = 0;
    g->progress_at = t0;
    start_rounds(g);
    if (!loop(g, t0 + (uint64_t)(g->secs * NS_PER_S), all_done, stall_tick))
        fail("%d of %d rounds in %.0f s (-d): round %d had %llu of %llu deliveries", g->completed,
             g->total, g->secs, g->completed,
             (unsigned long long)g->count[g->completed % g->window],
             (unsigned long long)per_round(g));
    g->phase = NULL;

    fprintf(stderr, "chatload: %s: %d clients joined in %.3f s, synced in %.3f s, %d rounds in %.3f s\n",
            g->mode == MODE_CHAT ? "chat" : "redis", g->n, join_s, sync_s, g->total,
            (double)(bench_now_ns() - t0) / NS_PER_S);
    print_result(g);
    for (int i = 0; i < g->n; i++) {
        if (g->c[i].rx.fd >= 0)
            close(g->c[i].rx.fd);
        if (g->c[i].tx.fd >= 0)
            close(g->c[i].tx.fd);
        free(g->c[i].rx.in);
        free(g->c[i].tx.in);
        free(g->c[i].next);
    }
    free(g->c);
    free(g->lat.v);
    free(g->lat_same.v);
    free(g->lat_cross.v);
    if (g->order_errors || g->pub_mismatch) {
        fprintf(stderr, "chatload: %llu lines out of order, %llu PUBLISH replies not %d\n",
                (unsigned long long)g->order_errors, (unsigned long long)g->pub_mismatch, g->n);
        return 1;
    }
    return 0;
}

/* ----------------------------------------------------------------- main */

static void usage(void)
{
    fputs("usage: chatload chat|redis|probe|freeport [options]\n"
          "  -a ADDR      target: 127.x.x.x:PORT (default 127.0.0.1:4444); chat: twice\n"
          "               for two instances, even clients on the first, odd on the second\n"
          "  -n N         clients in the room (default 100, at least 2)\n"
          "  -r ROUNDS    measured rounds (default 100)\n"
          "  -w WINDOW    rounds in flight at once (default 1: lock-step)\n"
          "  --warmup K   rounds before the measured ones, not counted (default 5)\n"
          "  -T MS        bound on joining, on sync, and on a round's silence"
          " (default 10000)\n"
          "  -d SECS      bound on all the rounds (default 120); probe: give up after"
          " (default 10)\n"
          "  --json       print the result as one JSON object\n",
          stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"warmup", required_argument, NULL, 'W'},
        {"json", no_argument, NULL, 'J'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    static struct cl g = {.n = 100, .rounds = 100, .warmup = 5, .window = 1,
                          .stall_ns = 10000 * NS_PER_MS, .secs = -1, .ep = -1,
                          .lat.max = MAX_SAMPLES, .lat_same.max = MAX_SAMPLES,
                          .lat_cross.max = MAX_SAMPLES};

    bench_init("chatload");
    const char *addr[2] = {"127.0.0.1:4444", NULL};
    int opt;

    G = &g;
    if (argc < 2)
        usage();
    if (strcmp(argv[1], "chat") == 0)
        g.mode = MODE_CHAT;
    else if (strcmp(argv[1], "redis") == 0)
        g.mode = MODE_REDIS;
    else if (strcmp(argv[1], "probe") == 0)
        g.mode = MODE_PROBE;
    else if (strcmp(argv[1], "freeport") == 0)
        g.mode = MODE_FREEPORT;
    else
        usage();
    optind = 2;
    while ((opt = getopt_long(argc, argv, "a:n:r:w:T:d:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'a':
            if (g.naddr == 2)
                usage();
            addr[g.naddr++] = optarg;
            break;
        case 'n': g.n = (int)bench_parse_num(optarg, 2, MAX_CLIENTS, "-n"); break;
        case 'r': g.rounds = (int)bench_parse_num(optarg, 1, MAX_ROUNDS, "-r"); break;
        case 'w': g.window = (int)bench_parse_num(optarg, 1, MAX_WINDOW, "-w"); break;
        case 'W': g.warmup = (int)bench_parse_num(optarg, 0, MAX_ROUNDS, "--warmup"); break;
        case 'T': g.stall_ns = (uint64_t)bench_parse_num(optarg, 100, 600000, "-T") * NS_PER_MS; break;
        case 'd': g.secs = bench_parse_num(optarg, 0.01, 3600, "-d"); break;
        case 'J': g.json = 1; break;
        default: usage();
        }
    }
    if (optind != argc)
        usage();
    if (g.mode == MODE_FREEPORT)
        return bench_freeport();
    if (g.naddr == 2 && g.mode != MODE_CHAT)
        usage(); /* two instances: chat mode only */
    if (g.naddr == 0)
        g.naddr = 1;
    for (int a = 0; a < g.naddr; a++)
        bench_parse_addr(addr[a], &g.addr[a], &g.addr_len[a]);
    signal(SIGPIPE, SIG_IGN);
    if (g.mode == MODE_PROBE) {
        if (g.secs < 0)
            g.secs = 10;
        return bench_probe(&g.addr[0], g.addr_len[0], g.secs);
    }
    if (g.secs < 0)
        g.secs = 120;
    g.total = g.warmup + g.rounds;

    /* Watchdog: every phase's own bound, plus a minute; only a bug gets here. */
    bench_watchdog((unsigned)(2.0 * (double)g.stall_ns / NS_PER_S + g.secs + 61));

    bench_raise_nofile(2L * g.n + 16);
    g.ep = epoll_create1(EPOLL_CLOEXEC);
    if (g.ep < 0)
        fail("epoll_create1: %s", strerror(errno));
    int rc = run(&g);
    close(g.ep);
    return rc;
}
