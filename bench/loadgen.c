/*
 * loadgen.c - load generator for line-echo servers (sockfork's benchmark).
 *
 * One process, one thread, non-blocking sockets and epoll. Loopback only:
 * the target must be 127.0.0.0/8, [::1] or a unix: path, so this can never
 * be pointed at somebody else's machine. Every run is bounded in time: each
 * phase has a deadline, each connect and each echo has a timeout, and an
 * alarm() watchdog ends the process if all of that somehow fails.
 *
 * Modes:
 *   rate      C slots; each loops: connect, send one line, read until the
 *             exact echo is back, close. Reports completed cycles per second.
 *   rtt       C persistent connections doing ping-pong round trips with a
 *             64-byte line. Reports round trips per second.
 *   hold      Opens N connections (at most C opening at a time, each echoes
 *             one line as it opens, so the server has really taken it), then
 *             echoes one more line over all of them at once, then holds them
 *             until --hold-file disappears or --hold-seconds pass, then
 *             closes them all. Prints a "phase=held" line when the
 *             connections are held, so a script can measure the server then.
 *   probe     Tries to connect every 20 ms until it works or -d passes;
 *             exit status 0 when the server accepts connections.
 *   freeport  Prints a TCP port that is free on 127.0.0.1 right now.
 *
 * --proxy-v2: every connection (rate, rtt, hold) starts with a PROXY protocol
 * v2 header (PROXY, stream), sent with its first line in one sendmsg: TCP4
 * or TCP6 with the connection's real addresses (the source from
 * getsockname), or for a unix: target a made-up TCP4 192.0.2.1:40000 ->
 * 192.0.2.2:7000. The server must take the header off; the echo compared is
 * the line's alone. For benchmarking listeners that read PROXY headers.
 *
 * Every echo is checked byte for byte: a mismatch, a reset, an early EOF or a
 * timeout is an error, never a success. The last line of output is one
 * machine-readable line of key=value pairs.
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
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>


#define MAX_CONNS 100000      /* upper bound for -c and -n */
#define MAX_SECS 3600         /* upper bound for -d and --hold-seconds */
#define MAX_SAMPLES (1u << 24) /* latency samples kept; later ones dropped */
#define LINE_CAP 80            /* longest line we send, with its newline */
#define RTT_LINE_LEN 64        /* rtt mode line length, newline included */
#define SCAN_EVERY_NS (5 * NS_PER_MS) /* how often timeouts are checked */
#define BACKOFF_NS (2 * NS_PER_MS)    /* wait after EADDRNOTAVAIL/EAGAIN */
#define REFUSED_BACKOFF_NS (10 * NS_PER_MS) /* wait after ECONNREFUSED */
#define MAX_EVENTS 512
#define PROXY_HDR_CAP 52       /* a v2 header with TCP6 addresses */

enum mode { MODE_RATE, MODE_RTT, MODE_HOLD, MODE_PROBE, MODE_FREEPORT };

/* rtt and hold go through phases; rate has only RUN. */
enum phase { PH_OPEN, PH_RUN, PH_ECHO, PH_HOLD, PH_STOP };

enum state {
    ST_FREE,       /* no socket; slot not in use (or finished) */
    ST_BACKOFF,    /* no socket; waiting until deadline to connect again */
    ST_CONNECTING, /* connect() in progress */
    ST_SENDING,    /* line partly sent */
    ST_READING,    /* line sent, echo partly back */
    ST_IDLE,       /* connected, nothing in flight (rtt setup, hold) */
    ST_FAILED      /* hold mode: gave up on this one */
};

struct conn {
    int fd;
    enum state state;
    uint64_t t_start;  /* rate: cycle start; rtt: send time */
    uint64_t deadline; /* timeout, or end of back-off */
    uint8_t out_len, out_off, in_off;
    char out[LINE_CAP];
    uint8_t hdr_len, hdr_off; /* --proxy-v2: the header, sent before the first line */
    unsigned char hdr[PROXY_HDR_CAP];
};

/* Error counters; addrnotavail and eagain are back-offs, not errors. */
struct counts {
    uint64_t timeouts, resets, refused, mismatches, eofs, other;
    uint64_t addrnotavail, eagain;
};

/* The whole program state: one run, one target. */
struct lg {
    enum mode mode;
    enum phase phase;
    struct sockaddr_storage addr;
    socklen_t addr_len;
    int conc;                /* -c */
    int n_hold;              /* -n */
    double secs;             /* -d */
    uint64_t timeout_ns;     /* -T: connect timeout, and echo timeout */
    uint64_t interval_ns;    /* -i: rate per interval; 0 none */
    const char *hold_file;   /* --hold-file */
    double hold_secs;        /* --hold-seconds */
    int linger0;             /* --linger0: close with RST, no TIME_WAIT */
    int proxy_v2;            /* --proxy-v2: a PROXY v2 header first on each connection */

    int ep;
    struct conn *conns;
    int nconns;
    uint32_t seq;            /* numbers the lines so each one differs */
    uint64_t ops;            /* completed cycles / round trips */
    uint64_t established;    /* connects that succeeded */
    uint64_t opened;         /* hold: connections past their first echo */
    uint64_t echoed;         /* hold: connections past the second echo */
    uint64_t dropped;        /* hold: held connections the server closed */
    int next_open;           /* hold: next connection to open */
    int busy;                /* hold: connections opening or echoing now */
    struct counts err;
    bench_samples lat;
};

/* ---------------------------------------------------------- connections */

static void conn_close(struct conn *c)
{
    if (c->fd >= 0)
        close(c->fd); /* also drops it from the epoll set */
    c->fd = -1;
}

static void watch(struct lg *g, struct conn *c, uint32_t events, int op)
{
    struct epoll_event ev = { .events = events, .data.u32 = (uint32_t)(c - g->conns) };
    if (epoll_ctl(g->ep, op, c->fd, &ev) < 0)
        bench_die("epoll_ctl: %s", strerror(errno));
}

/* Fills c->out with the next line for this mode; each line is unique. */
static void make_line(struct lg *g, struct conn *c)
{
    uint32_t seq = g->seq++;
    int len;
    if (g->mode == MODE_RTT) {
        /* "rtt NNNNNNNNNN " padded with x to 63 bytes, then the newline. */
        len = snprintf(c->out, sizeof c->out, "rtt %010u ", seq);
        memset(c->out + len, 'x', (size_t)(RTT_LINE_LEN - 1 - len));
        len = RTT_LINE_LEN;
        c->out[len - 1] = '\n';
    } else {
        len = snprintf(c->out, sizeof c->out, "%s %06u\n",
                       g->mode == MODE_HOLD ? "hold" : "ping", seq % 1000000);
    }
    c->out_len = (uint8_t)len;
    c->out_off = 0;
    c->in_off = 0;
}

static void fail(struct lg *g, struct conn *c, uint64_t *counter);
static void connect_slot(struct lg *g, struct conn *c);

static void put16(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

/*
 * --proxy-v2: the header for a connection that just connected. Its real
 * addresses over TCP; for a unix: target, made-up TCP4 ones (the server
 * still gets a client address to log and limit).
 */
static void make_proxy_header(struct lg *g, struct conn *c)
{
    static const unsigned char sig[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                           0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };
    struct sockaddr_storage local;
    socklen_t len = sizeof local;
    unsigned char *a = c->hdr + 16;

    memcpy(c->hdr, sig, sizeof sig);
    c->hdr[12] = 0x21; /* version 2, PROXY */
    c->hdr_off = 0;
    if (g->addr.ss_family == AF_UNIX) {
        static const unsigned char made_up[12] = { 192, 0, 2, 1, 192, 0, 2, 2, 0x9C, 0x40, 0x1B, 0x58 };
        c->hdr[13] = 0x11;
        memcpy(a, made_up, sizeof made_up);
        put16(c->hdr + 14, 12);
        c->hdr_len = 16 + 12;
        return;
    }
    if (getsockname(c->fd, (struct sockaddr *)&local, &len) < 0)
        bench_die("getsockname: %s", strerror(errno));
    if (g->addr.ss_family == AF_INET) {
        const struct sockaddr_in *src = (const struct sockaddr_in *)&local;
        const struct sockaddr_in *dst = (const struct sockaddr_in *)&g->addr;
        c->hdr[13] = 0x11; /* TCP over IPv4 */
        memcpy(a, &src->sin_addr, 4);
        memcpy(a + 4, &dst->sin_addr, 4);
        memcpy(a + 8, &src->sin_port, 2); /* both already big-endian */
        memcpy(a + 10, &dst->sin_port, 2);
        put16(c->hdr + 14, 12);
        c->hdr_len = 16 + 12;
    } else {
        const struct sockaddr_in6 *src = (const struct sockaddr_in6 *)&local;
        const struct sockaddr_in6 *dst = (const struct sockaddr_in6 *)&g->addr;
        c->hdr[13] = 0x21; /* TCP over IPv6 */
        memcpy(a, &src->sin6_addr, 16);
        memcpy(a + 16, &dst->sin6_addr, 16);
        memcpy(a + 32, &src->sin6_port, 2);
        memcpy(a + 34, &dst->sin6_port, 2);
        put16(c->hdr + 14, 36);
        c->hdr_len = 16 + 36;
    }
}

/* With the PROXY header still (partly) unsent: header and line in one sendmsg. */
static ssize_t send_with_header(struct conn *c)
{
    struct iovec iov[2] = {
        { .iov_base = c->hdr + c->hdr_off, .iov_len = (size_t)(c->hdr_len - c->hdr_off) },
        { .iov_base = c->out + c->out_off, .iov_len = (size_t)(c->out_len - c->out_off) },
    };
    struct msghdr msg = { .msg_iov = iov, .msg_iovlen = 2 };
    ssize_t w = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
    size_t hdr_part;

    if (w <= 0)
        return w;
    hdr_part = (size_t)w < iov[0].iov_len ? (size_t)w : iov[0].iov_len;
    c->hdr_off += (uint8_t)hdr_part;
    c->out_off += (uint8_t)((size_t)w - hdr_part);
    return 0; /* the offsets are advanced already */
}

/* Sends what is left of c->out (after the PROXY header, if one is still
 * due); then waits for the echo. */
static void send_rest(struct lg *g, struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t w = c->hdr_off < c->hdr_len
                        ? send_with_header(c)
                        : send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            if (c->state != ST_SENDING)
                watch(g, c, EPOLLOUT, EPOLL_CTL_MOD);
            c->state = ST_SENDING;
            return;
        }
        if (w < 0) {
            fail(g, c, errno == ECONNRESET || errno == EPIPE ? &g->err.resets
                                                             : &g->err.other);
            return;
        }
        c->out_off += (uint8_t)w; /* 0 after send_with_header: it moved the offsets */
    }
    watch(g, c, EPOLLIN, EPOLL_CTL_MOD);
    c->state = ST_READING;
}

/* Starts one line-and-echo exchange on a connected socket. */
static void start_exchange(struct lg *g, struct conn *c, uint64_t now)
{
    make_line(g, c);
    if (g->mode != MODE_RATE)
        c->t_start = now; /* rate measures from the connect instead */
    c->deadline = now + g->timeout_ns;
    send_rest(g, c);
}

static void set_idle(struct lg *g, struct conn *c)
{
    /* Still watch for input: data or EOF on an idle connection is a drop. */
    watch(g, c, EPOLLIN | EPOLLRDHUP, EPOLL_CTL_MOD);
    c->state = ST_IDLE;
}

/* A connect() just finished. */
static void connected(struct lg *g, struct conn *c, uint64_t now)
{
    g->established++;
    if (g->proxy_v2)
        make_proxy_header(g, c);
    if (g->mode == MODE_RTT && g->phase == PH_OPEN)
        set_idle(g, c);
    else
        start_exchange(g, c, now);
}

/* The exact echo has come back: what happens next depends on the mode. */
static void exchange_done(struct lg *g, struct conn *c, uint64_t now)
{
    switch (g->mode) {
    case MODE_RATE:
        conn_close(c);
        c->state = ST_FREE;
        if (g->phase == PH_STOP)
            break; /* draining after the window: not counted */
        g->ops++;
        bench_sample_add(&g->lat, now - c->t_start);
        connect_slot(g, c);
        break;
    case MODE_RTT:
        if (g->phase == PH_STOP) {
            set_idle(g, c);
            break;
        }
        g->ops++;
        bench_sample_add(&g->lat, now - c->t_start);
        start_exchange(g, c, now);
        break;
    case MODE_HOLD:
        if (g->phase == PH_OPEN)
            g->opened++;
        else
            g->echoed++;
        g->busy--;
        set_idle(g, c);
        break;
    default:
        break;
    }
}

/*
 * Counts an error and closes the connection. rate and rtt connect the slot
 * again (after a short back-off, so a dead server does not make us spin);
 * hold gives the connection up.
 */
static void fail(struct lg *g, struct conn *c, uint64_t *counter)
{
    (*counter)++;
    enum state was = c->state;
    conn_close(c);
    if (g->mode == MODE_HOLD) {
        /* An idle connection was not busy; anything else was. */
        if ((g->phase == PH_OPEN || g->phase == PH_ECHO) && was != ST_IDLE)
            g->busy--;
        c->state = ST_FAILED;
        return;
    }
    c->state = g->phase == PH_STOP ? ST_FREE : ST_BACKOFF;
    c->deadline = bench_now_ns() + REFUSED_BACKOFF_NS;
}

/* Opens a socket and starts connecting it; handles immediate outcomes. */
static void connect_slot(struct lg *g, struct conn *c)
{
    uint64_t now = bench_now_ns();
    int fd = socket(g->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        bench_die("socket: %s", strerror(errno)); /* EMFILE: -c/-n beyond the fd limit */
    c->fd = fd;
    c->t_start = now;
    c->deadline = now + g->timeout_ns;

    if (g->linger0) {
        struct linger lg0 = { .l_onoff = 1, .l_linger = 0 };
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg0, sizeof lg0);
    }
    if (g->addr.ss_family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }

    int r = connect(fd, (struct sockaddr *)&g->addr, g->addr_len);
    if (r == 0) {
        c->state = ST_CONNECTING; /* so fail() and friends see a live socket */
        watch(g, c, EPOLLOUT, EPOLL_CTL_ADD);
        connected(g, c, now);
        return;
    }
    switch (errno) {
    case EINPROGRESS:
        c->state = ST_CONNECTING;
        watch(g, c, EPOLLOUT, EPOLL_CTL_ADD);
        return;
    case EADDRNOTAVAIL: /* out of ephemeral ports: TIME_WAIT pile-up */
    case EAGAIN:        /* unix socket backlog full */
        if (errno == EADDRNOTAVAIL)
            g->err.addrnotavail++;
        else
            g->err.eagain++;
        conn_close(c);
        c->state = ST_BACKOFF;
        c->deadline = now + BACKOFF_NS;
        return;
    case ECONNREFUSED:
        c->state = ST_CONNECTING;
        fail(g, c, &g->err.refused);
        return;
    default:
        c->state = ST_CONNECTING;
        fail(g, c, &g->err.other);
        return;
    }
}

static void on_connect_ready(struct lg *g, struct conn *c, uint64_t now)
{
    int soerr = 0;
    socklen_t len = sizeof soerr;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
        soerr = errno;
    if (soerr == 0) {
        connected(g, c, now);
    } else if (soerr == ECONNREFUSED) {
        fail(g, c, &g->err.refused);
    } else if (soerr == ECONNRESET) {
        fail(g, c, &g->err.resets);
    } else if (soerr == ETIMEDOUT) {
        fail(g, c, &g->err.timeouts);
    } else {
        fail(g, c, &g->err.other);
    }
}

/* Reads echo bytes and compares them with what was sent, as they come. */
static void on_readable(struct lg *g, struct conn *c, uint64_t now)
{
    char buf[256];
    ssize_t r = recv(c->fd, buf, sizeof buf, 0);
    if (r < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        fail(g, c, errno == ECONNRESET ? &g->err.resets : &g->err.other);
        return;
    }
    if (c->state == ST_IDLE) {
        /* Nothing was asked: EOF means the server dropped us. */
        if (r == 0)
            g->dropped++;
        fail(g, c, r == 0 ? &g->err.eofs : &g->err.mismatches);
        return;
    }
    if (r == 0) {
        fail(g, c, &g->err.eofs);
        return;
    }
    if ((size_t)c->in_off + (size_t)r > c->out_len ||
        memcmp(buf, c->out + c->in_off, (size_t)r) != 0) {
        fail(g, c, &g->err.mismatches);
        return;
    }
    c->in_off += (uint8_t)r;
    if (c->in_off == c->out_len)
        exchange_done(g, c, now);
}

static void on_event(struct lg *g, struct conn *c, uint32_t events, uint64_t now)
{
    switch (c->state) {
    case ST_CONNECTING:
        on_connect_ready(g, c, now);
        break;
    case ST_SENDING:
        if (events & (EPOLLERR | EPOLLHUP))
            fail(g, c, &g->err.resets);
        else
            send_rest(g, c);
        break;
    case ST_READING:
    case ST_IDLE:
        on_readable(g, c, now);
        break;
    default:
        break; /* stale event for a socket closed in this same batch */
    }
}

/* Expires timeouts and ends back-offs. Cheap enough to run every 5 ms. */
static void scan(struct lg *g, uint64_t now)
{
    for (int i = 0; i < g->nconns; i++) {
        struct conn *c = &g->conns[i];
        switch (c->state) {
        case ST_CONNECTING:
        case ST_SENDING:
        case ST_READING:
            if (now >= c->deadline)
                fail(g, c, &g->err.timeouts);
            break;
        case ST_BACKOFF:
            if (now >= c->deadline)
                connect_slot(g, c);
            break;
        default:
            break;
        }
    }
}

/*
 * Runs the event loop until `until` (monotonic ns) or until done(g) says
 * the phase is over. Every iteration waits at most SCAN_EVERY_NS.
 */
static void loop(struct lg *g, uint64_t until, int (*done)(struct lg *))
{
    struct epoll_event evs[MAX_EVENTS];
    uint64_t next_scan = bench_now_ns() + SCAN_EVERY_NS;

    for (;;) {
        uint64_t now = bench_now_ns();
        if (now >= until || (done && done(g)))
            return;
        uint64_t wait = until - now;
        if (wait > SCAN_EVERY_NS)
            wait = SCAN_EVERY_NS;
        int n = epoll_wait(g->ep, evs, MAX_EVENTS, (int)((wait + NS_PER_MS - 1) / NS_PER_MS));
        if (n < 0 && errno != EINTR)
            bench_die("epoll_wait: %s", strerror(errno));
        now = bench_now_ns();
        for (int i = 0; i < n; i++)
            on_event(g, &g->conns[evs[i].data.u32], evs[i].events, now);
        if (now >= next_scan) {
            scan(g, now);
            next_scan = now + SCAN_EVERY_NS;
        }
    }
}

/* Drain: true when no slot has a connect or an echo in flight. */
static int quiet(struct lg *g)
{
    for (int i = 0; i < g->nconns; i++) {
        enum state s = g->conns[i].state;
        if (s == ST_CONNECTING || s == ST_SENDING || s == ST_READING)
            return 0;
    }
    return 1;
}

/*
 * Ends the timed window of rate and rtt: starts nothing new and lets the
 * exchanges in flight finish (for at most the echo timeout), so that every
 * socket closes with its echo read. Closing one with unread data would
 * send a reset, and the server would log an error that we caused.
 */
static void drain(struct lg *g)
{
    g->phase = PH_STOP;
    for (int i = 0; i < g->nconns; i++)
        if (g->conns[i].state == ST_BACKOFF)
            g->conns[i].state = ST_FREE;
    loop(g, bench_now_ns() + g->timeout_ns, quiet);
    for (int i = 0; i < g->nconns; i++) {
        enum state s = g->conns[i].state;
        if (s == ST_CONNECTING || s == ST_SENDING || s == ST_READING)
            fail(g, &g->conns[i], &g->err.timeouts);
    }
}

static void close_all(struct lg *g)
{
    for (int i = 0; i < g->nconns; i++) {
        conn_close(&g->conns[i]);
        g->conns[i].state = ST_FREE;
    }
}

static uint64_t total_errors(const struct counts *e)
{
    return e->timeouts + e->resets + e->refused + e->mismatches + e->eofs + e->other;
}

static void print_errors(const struct lg *g)
{
    const struct counts *e = &g->err;
    printf(" errors=%llu timeouts=%llu resets=%llu refused=%llu mismatches=%llu"
           " eofs=%llu other=%llu addrnotavail=%llu eagain=%llu",
           (unsigned long long)total_errors(e), (unsigned long long)e->timeouts,
           (unsigned long long)e->resets, (unsigned long long)e->refused,
           (unsigned long long)e->mismatches, (unsigned long long)e->eofs,
           (unsigned long long)e->other, (unsigned long long)e->addrnotavail,
           (unsigned long long)e->eagain);
}

static void print_result(struct lg *g, double secs)
{
    bench_samples_sort(&g->lat);
    printf("mode=%s conc=%d secs=%.2f ops=%llu ops_per_s=%.1f",
           g->mode == MODE_RATE ? "rate" : "rtt", g->conc, secs,
           (unsigned long long)g->ops, secs > 0 ? (double)g->ops / secs : 0.0);
    print_errors(g);
    printf(" p50_us=%u p99_us=%u\n", (unsigned)bench_pct_us(&g->lat, 50),
           (unsigned)bench_pct_us(&g->lat, 99));
    fflush(stdout);
}

/* ----------------------------------------------------------------- modes */

static void run_rate(struct lg *g)
{
    g->phase = PH_RUN;
    uint64_t start = bench_now_ns();
    for (int i = 0; i < g->nconns; i++)
        connect_slot(g, &g->conns[i]);
    uint64_t end = start + (uint64_t)(g->secs * NS_PER_S);
    if (g->interval_ns == 0) {
        loop(g, end, NULL);
    } else {
        /* One line per interval: how the rate moves (bench/upgrade.sh). */
        uint64_t t = start, ops = 0, errs = 0;
        while (t < end) {
            t = t + g->interval_ns < end ? t + g->interval_ns : end;
            loop(g, t, NULL);
            printf("tick ms=%llu ops=%llu errors=%llu\n",
                   (unsigned long long)((t - start) / NS_PER_MS),
                   (unsigned long long)(g->ops - ops),
                   (unsigned long long)(total_errors(&g->err) - errs));
            fflush(stdout);
            ops = g->ops;
            errs = total_errors(&g->err);
        }
    }
    double secs = (double)(bench_now_ns() - start) / NS_PER_S;
    drain(g); /* cycles still in flight are neither counted nor errors */
    close_all(g);
    print_result(g, secs);
}

static int all_connected(struct lg *g)
{
    for (int i = 0; i < g->nconns; i++)
        if (g->conns[i].state != ST_IDLE)
            return 0;
    return 1;
}

static void run_rtt(struct lg *g)
{
    /* Connect everything first, so the timed window holds round trips only. */
    g->phase = PH_OPEN;
    for (int i = 0; i < g->nconns; i++)
        connect_slot(g, &g->conns[i]);
    loop(g, bench_now_ns() + g->timeout_ns + 2 * NS_PER_S, all_connected);

    g->phase = PH_RUN;
    uint64_t start = bench_now_ns();
    for (int i = 0; i < g->nconns; i++) {
        struct conn *c = &g->conns[i];
        if (c->state == ST_IDLE)
            start_exchange(g, c, start);
        /* a slot that failed to connect keeps retrying from its back-off */
    }
    loop(g, start + (uint64_t)(g->secs * NS_PER_S), NULL);
    double secs = (double)(bench_now_ns() - start) / NS_PER_S;
    drain(g);
    close_all(g);
    print_result(g, secs);
}

/* hold, phase OPEN: keeps up to -c connections opening until all N tried. */
static int open_more(struct lg *g)
{
    while (g->busy < g->conc && g->next_open < g->nconns) {
        struct conn *c = &g->conns[g->next_open++];
        g->busy++;
        connect_slot(g, c);
    }
    return g->next_open >= g->nconns && g->busy == 0;
}

/* hold, phase ECHO: over when no connection has an echo outstanding. */
static int echo_settled(struct lg *g)
{
    return g->busy == 0;
}

/* hold, phase HOLD: over when the hold file is gone. */
static int hold_released(struct lg *g)
{
    struct stat st;
    return g->hold_file && stat(g->hold_file, &st) < 0 && errno == ENOENT;
}

static int count_state(struct lg *g, enum state s)
{
    int n = 0;
    for (int i = 0; i < g->nconns; i++)
        n += g->conns[i].state == s;
    return n;
}

static void print_hold(struct lg *g, const char *phase, double open_s, double hold_s)
{
    printf("mode=hold phase=%s n=%d conc=%d established=%llu opened=%llu echoed=%llu"
           " held=%d dropped=%llu open_secs=%.2f hold_secs=%.2f",
           phase, g->nconns, g->conc, (unsigned long long)g->established,
           (unsigned long long)g->opened, (unsigned long long)g->echoed,
           count_state(g, ST_IDLE), (unsigned long long)g->dropped, open_s, hold_s);
    print_errors(g);
    printf("\n");
    fflush(stdout);
}

static void run_hold(struct lg *g)
{
    uint64_t phase_ns = (uint64_t)(g->secs * NS_PER_S);

    /* 1. Open: connect and echo once on each, at most -c at a time. */
    g->phase = PH_OPEN;
    uint64_t start = bench_now_ns();
    /* open_more() is the loop's done-check, so it refills the window often */
    loop(g, start + phase_ns, open_more);
    double open_s = (double)(bench_now_ns() - start) / NS_PER_S;
    /* Whatever is still opening at the deadline has failed. */
    for (int i = 0; i < g->nconns; i++) {
        struct conn *c = &g->conns[i];
        if (c->state != ST_IDLE && c->state != ST_FAILED && c->state != ST_FREE)
            fail(g, c, &g->err.timeouts);
        else if (c->state == ST_FREE)
            c->state = ST_FAILED; /* never tried: the deadline came first */
    }

    /* 2. Echo one more line over all of them at once: all must come back. */
    g->phase = PH_ECHO;
    uint64_t now = bench_now_ns();
    g->busy = 0;
    for (int i = 0; i < g->nconns; i++) {
        if (g->conns[i].state == ST_IDLE) {
            g->busy++;
            start_exchange(g, &g->conns[i], now);
        }
    }
    loop(g, now + phase_ns, echo_settled);
    for (int i = 0; i < g->nconns; i++) {
        struct conn *c = &g->conns[i];
        if (c->state == ST_SENDING || c->state == ST_READING)
            fail(g, c, &g->err.timeouts);
    }

    /* 3. Hold them, and say so; then wait to be released. */
    g->phase = PH_HOLD;
    print_hold(g, "held", open_s, 0);
    uint64_t hold_start = bench_now_ns();
    loop(g, hold_start + (uint64_t)(g->hold_secs * NS_PER_S), hold_released);
    double hold_s = (double)(bench_now_ns() - hold_start) / NS_PER_S;

    print_hold(g, "done", open_s, hold_s);
    close_all(g);
}

/* ------------------------------------------------------------------ main */

static void usage(void)
{
    fputs("usage: loadgen rate|rtt|hold|probe|freeport [options]\n"
          "  -a ADDR   target: 127.x.x.x:PORT, [::1]:PORT or unix:PATH"
          " (default 127.0.0.1:4444)\n"
          "  -c CONC   concurrent slots (rate/rtt, default 16);"
          " hold: connections opening at once (default 256)\n"
          "  -d SECS   run time (rate/rtt, default 5); hold: bound of each phase"
          " (default 60); probe: give up after (default 10)\n"
          "  -n N      hold: connections to open (default 1000)\n"
          "  -T MS     connect timeout, and echo timeout (default 5000)\n"
          "  -i MS     rate: also print the cycles and errors of every MS interval\n"
          "  --hold-file PATH     hold until PATH is removed\n"
          "  --hold-seconds S     hold at most S seconds (default 10, or 600"
          " with --hold-file)\n"
          "  --linger0            close with RST (SO_LINGER 0): no TIME_WAIT\n"
          "  --proxy-v2           start each connection with a PROXY protocol v2 header\n",
          stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "hold-file", required_argument, NULL, 'F' },
        { "hold-seconds", required_argument, NULL, 'S' },
        { "linger0", no_argument, NULL, 'L' },
        { "proxy-v2", no_argument, NULL, 'P' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct lg g = { .conc = -1, .n_hold = 1000, .secs = -1, .hold_secs = -1,
                    .timeout_ns = 5000 * NS_PER_MS, .ep = -1, .lat.max = MAX_SAMPLES };

    bench_init("loadgen");
    const char *addr = "127.0.0.1:4444";

    if (argc < 2)
        usage();
    if (strcmp(argv[1], "rate") == 0)
        g.mode = MODE_RATE;
    else if (strcmp(argv[1], "rtt") == 0)
        g.mode = MODE_RTT;
    else if (strcmp(argv[1], "hold") == 0)
        g.mode = MODE_HOLD;
    else if (strcmp(argv[1], "probe") == 0)
        g.mode = MODE_PROBE;
    else if (strcmp(argv[1], "freeport") == 0)
        g.mode = MODE_FREEPORT;
    else
        usage();

    int opt;
    optind = 2;
    while ((opt = getopt_long(argc, argv, "a:c:d:n:T:i:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'a': addr = optarg; break;
        case 'c': g.conc = (int)bench_parse_num(optarg, 1, MAX_CONNS, "-c"); break;
        case 'd': g.secs = bench_parse_num(optarg, 0.01, MAX_SECS, "-d"); break;
        case 'n': g.n_hold = (int)bench_parse_num(optarg, 1, MAX_CONNS, "-n"); break;
        case 'T': g.timeout_ns = (uint64_t)bench_parse_num(optarg, 1, 600000, "-T") * NS_PER_MS; break;
        case 'F': g.hold_file = optarg; break;
        case 'S': g.hold_secs = bench_parse_num(optarg, 0, MAX_SECS, "--hold-seconds"); break;
        case 'L': g.linger0 = 1; break;
        case 'P': g.proxy_v2 = 1; break;
        case 'i': g.interval_ns = (uint64_t)bench_parse_num(optarg, 10, 60000, "-i") * NS_PER_MS; break;
        default: usage();
        }
    }
    if (optind != argc)
        usage();

    if (g.mode == MODE_FREEPORT)
        return bench_freeport();

    bench_parse_addr(addr, &g.addr, &g.addr_len);
    signal(SIGPIPE, SIG_IGN);

    if (g.mode == MODE_PROBE) {
        if (g.secs < 0)
            g.secs = 10;
        return bench_probe(&g.addr, g.addr_len, g.secs);
    }

    /* Defaults that differ by mode. */
    if (g.conc < 0)
        g.conc = g.mode == MODE_HOLD ? 256 : 16;
    if (g.secs < 0)
        g.secs = g.mode == MODE_HOLD ? 60 : 5;
    if (g.hold_secs < 0)
        g.hold_secs = g.hold_file ? 600 : 10;
    g.nconns = g.mode == MODE_HOLD ? g.n_hold : g.conc;

    /*
     * Watchdog: the sum of every phase's own bound, plus a minute. Loops end
     * on their own long before; this only catches a bug.
     */
    double cap = g.secs + 2.0 * (double)g.timeout_ns / NS_PER_S + 62;
    if (g.mode == MODE_HOLD)
        cap = 2 * g.secs + g.hold_secs + 60;
    bench_watchdog((unsigned)cap + 1);

    bench_raise_nofile(g.nconns + 16);
    g.conns = calloc((size_t)g.nconns, sizeof *g.conns);
    if (!g.conns)
        bench_die("out of memory");
    for (int i = 0; i < g.nconns; i++)
        g.conns[i].fd = -1;
    g.ep = epoll_create1(EPOLL_CLOEXEC);
    if (g.ep < 0)
        bench_die("epoll_create1: %s", strerror(errno));

    switch (g.mode) {
    case MODE_RATE: run_rate(&g); break;
    case MODE_RTT: run_rtt(&g); break;
    case MODE_HOLD: run_hold(&g); break;
    default: break;
    }

    close(g.ep);
    free(g.conns);
    free(g.lat.v);
    return 0;
}
