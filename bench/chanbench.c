/*
 * chanbench.c - the channel codec (src/channel/frame.c) and the
 * supervisor's bus (src/supervisor/bus.c, on a libev loop) against a raw
 * socketpair doing the same job, in the same run, on this machine.
 *
 * Every run makes a socketpair(AF_UNIX, SOCK_STREAM) per child and fork()s
 * the child(ren). The parent's end is non-blocking (a supervisor's), the
 * child's blocking. The payload of every message is 64 bytes.
 *
 *   throughput  the parent sends N messages; the child reads them all,
 *               checks each one's sequence number, and acknowledges at the
 *               end. Timed from the child's "ready" to its acknowledgement.
 *       raw     parent: write() of 64 bytes each, poll(POLLOUT) on EAGAIN.
 *               child: read()s of up to 4 KiB, each message copied out of
 *               that buffer (chan_reader buffers 4 KiB too).
 *       chan    parent: chan_queue_push into a queue of 1 MiB; on -ENOBUFS
 *               chan_queue_flush, and poll(POLLOUT) when flush returns 0.
 *               child: chan_recv (a chan_reader), free() of each payload.
 *       bus     parent: an endpoint (endpoint_open) on an ev_loop, queue
 *               limit 1 MiB, BUS_FULL_DROP; bus_deliver of SF_MSG_DIRECT
 *               messages; on -ENOBUFS ev_run(EVRUN_ONCE) and the same
 *               message again (none is lost; the retries are counted).
 *               child: chan_recv and the decoding of sf_conn_recv
 *               (src/server/conn.c): the 8-byte message header, the data
 *               moved to the front. "ready" and "done" are CHAN_T_STATUS
 *               frames, which the bus stores as the endpoint's status.
 *   rtt         the parent sends one message, the child echoes it, ROUNDS
 *               times; each round trip timed by the parent.
 *       raw     parent: write(), then poll(POLLIN) and read() until 64 bytes.
 *               child: blocking read() of 64 bytes, write() of them.
 *       chan    parent: chan_queue_push + chan_queue_flush, then poll(POLLIN),
 *               chan_read and chan_decoder_feed until the reply frame.
 *               child: chan_recv, then chan_send of the same payload.
 *   bus rtt     the child sends one message and waits for it back, ROUNDS
 *               times; each round trip timed by the child (CLOCK_MONOTONIC,
 *               kept in shared memory).
 *       raw     child: write() of 64 bytes, blocking read() of 64.
 *               parent: poll(POLLIN), read() of the 64 bytes, write().
 *       bus     child: chan_send of a CHAN_T_SEND to its own pid ([u32 pid]
 *               [64 bytes]), chan_recv of the CHAN_T_MESSAGE it becomes.
 *               parent: ev_run until the child closes its end; the bus
 *               decodes the request, finds the pid (the find callback) and
 *               bus_deliver's it back.
 *   broadcast   K children (-k), each with its own socketpair, get B
 *               messages (-b) each, all the same 80-byte frame (the header,
 *               and a payload of the 8-byte message header and 64 bytes).
 *               Children decode as sf_conn_recv does, and once they have B
 *               say "done" (a CHAN_T_STATUS frame; a raw parent reads its
 *               bytes). Timed from the first message to the last "done":
 *               deliveries per second ((K * B - drops) / elapsed), and the
 *               time of one broadcast (the call, or the loop of writes),
 *               averaged.
 *       raw     parent: write() of the frame into each of the K sockets.
 *       bus     parent: bus_broadcast (queue limit 256 KiB per child,
 *               BUS_FULL_DROP), then ev_run(EVRUN_NOWAIT); ev_run(EVRUN_ONCE)
 *               until every child is done. Drops are counted, and each
 *               child's count is checked against them (a child with drops
 *               never says "done": it is waited for until its queue is
 *               empty, and counts what it got until EOF).
 *
 * Where the processes run (--pin): split (the default) puts the parent on
 * one CPU and every child on another, as a supervisor and its children on
 * a machine with CPUs to spare: a pipeline for throughput, a cross-CPU
 * wakeup per hop for round trips. same puts them all on one CPU: a round
 * trip is two context switches, and the code's own cost shows. none leaves
 * it to the scheduler, which on a small VM flips between the two from run
 * to run (round trips of 5 or of 100 us), so medians mix them.
 *
 * Each measurement is repeated R times, its variants interleaved (the order
 * rotates), and the median of the R results is reported, with the median of
 * the R ratios sockfork/raw (each of two runs back to back, so the
 * machine's drift between repeats cancels out): a markdown table,
 * or with --json one JSON line. Every run is bounded by a wall-clock limit
 * (-t, default 60 s; libev runs get an ev_timer at it); past it the children
 * are killed and reaped and chanbench exits 1. Per-run numbers go to stderr.
 *
 * Usage: chanbench [-n MESSAGES] [-r ROUNDS] [-k CHILDREN] [-b BROADCASTS]
 *                  [-R REPEATS] [-t SECS] [--pin split|same|none] [--json]
 */
#include "channel/be.h"
#include "channel/frame.h"
#include "supervisor/bus.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define MSG_LEN 64
#define MSG_HDR 8                  /* kind, ok, topic length, from: CHAN_T_MESSAGE's own header */
#define QUEUE_LIMIT (1024 * 1024)
#define BCAST_QUEUE_LIMIT (256 * 1024)
#define CHUNK 4096                 /* the raw child's read size, as chan_reader's */
#define CHECK_EVERY 4096           /* loop iterations between deadline checks */
#define FDS_SPARE 64               /* descriptors besides the children's */

enum variant { RAW, CHAN, BUS };
static const char *const variant_name[] = {"raw", "chan", "bus"};

enum pin { PIN_NONE, PIN_SAME, PIN_SPLIT };

struct opts {
    int pin;                  /* PIN_*: where the parent and the children run */
    uint64_t messages;
    uint64_t rounds;
    unsigned kids;
    unsigned bcasts;
    unsigned repeats;
    unsigned secs;
    int json;
};

/* With --pin: the parent's CPU and the children's. */
static int g_cpu_parent = -1, g_cpu_child = -1;

/* The children of the run in progress: fail() kills and reaps them. */
static pid_t *g_kids;
static unsigned g_nkids, g_kids_cap;

/* ------------------------------------------------------------ helpers */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void kill_kids(void)
{
    for (unsigned i = 0; i < g_nkids; i++)
        kill(g_kids[i], SIGKILL);
    for (unsigned i = 0; i < g_nkids; i++)
        while (waitpid(g_kids[i], NULL, 0) < 0 && errno == EINTR)
            ;
    g_nkids = 0;
}

/* Kills and reaps the children of the run in progress, then exits 1. */
static _Noreturn void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static _Noreturn void fail(const char *fmt, ...)
{
    va_list ap;

    fputs("chanbench: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    kill_kids();
    exit(1);
}

static void add_kid(pid_t pid)
{
    if (g_nkids == g_kids_cap) {
        unsigned cap = g_kids_cap ? g_kids_cap * 2 : 16;
        pid_t *p = realloc(g_kids, cap * sizeof *p);
        if (!p) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            fail("out of memory");
        }
        g_kids = p;
        g_kids_cap = cap;
    }
    g_kids[g_nkids++] = pid;
}

/* Reaps every child of the run, waiting no later than the deadline (then
 * SIGKILL, and failure); each must have exited 0. */
static void reap_all(const char *what, uint64_t deadline)
{
    unsigned bad = 0;
    int first_bad = 0;

    while (g_nkids > 0) {
        int st;
        pid_t pid = waitpid(-1, &st, WNOHANG);
        if (pid == 0) {
            if (now_ns() >= deadline)
                fail("%s: timed out (-t) reaping the children: %u still running", what, g_nkids);
            usleep(1000);
            continue;
        }
        if (pid < 0 && errno == EINTR)
            continue;
        if (pid < 0)
            fail("waitpid: %s", strerror(errno));
        for (unsigned i = 0; i < g_nkids; i++) {
            if (g_kids[i] == pid) {
                g_kids[i] = g_kids[--g_nkids];
                if ((!WIFEXITED(st) || WEXITSTATUS(st) != 0) && !bad++)
                    first_bad = st;
                break;
            }
        }
    }
    if (bad)
        fail("%s: %u children failed (first status 0x%x)", what, bad, first_bad);
}

static void check_deadline(uint64_t deadline)
{
    if (now_ns() >= deadline)
        fail("timed out (-t): the run took too long");
}

/* Waits until fd is ready for events, or fails past the deadline. */
static void wait_fd(int fd, short events, uint64_t deadline)
{
    struct pollfd p = {.fd = fd, .events = events};

    for (;;) {
        uint64_t t = now_ns();
        if (t >= deadline)
            fail("timed out (-t) waiting on the socket");
        int ms = (int)((deadline - t) / 1000000u) + 1;
        int rc = poll(&p, 1, ms);
        if (rc > 0)
            return;          /* ready, or POLLERR/POLLHUP: the next call says */
        if (rc < 0 && errno != EINTR)
            fail("poll: %s", strerror(errno));
    }
}

/* The message of sequence number seq: seq in its first 8 bytes, a pattern after. */
static void fill_msg(unsigned char *msg, uint64_t seq)
{
    memcpy(msg, &seq, sizeof seq);
    memset(msg + sizeof seq, (int)(seq & 0xff), MSG_LEN - sizeof seq);
}

static uint64_t msg_seq(const unsigned char *msg)
{
    uint64_t got;
    memcpy(&got, msg, sizeof got);
    return got;
}

static int msg_is(const unsigned char *msg, uint64_t seq)
{
    return msg_seq(msg) == seq && msg[MSG_LEN - 1] == (unsigned char)(seq & 0xff);
}


static void *shared_alloc(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        fail("mmap: %s", strerror(errno));
    return p;
}

static int pin_to(int cpu)
{
    cpu_set_t set;

    if (cpu < 0)
        return 0;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set);
}

/* In a new child, first thing. */
static void child_pin(void)
{
    if (pin_to(g_cpu_child) < 0)
        _exit(30);
}

/* --pin same: the parent and every child on one CPU; split: the parent on
 * one, the children on another (the first two CPUs this process may use). */
static void setup_pin(int pin)
{
    cpu_set_t set;
    int first = -1, second = -1;

    if (pin == PIN_NONE)
        return;
    if (sched_getaffinity(0, sizeof set, &set) < 0)
        fail("sched_getaffinity: %s", strerror(errno));
    for (int c = 0; c < CPU_SETSIZE && second < 0; c++) {
        if (!CPU_ISSET(c, &set))
            continue;
        if (first < 0)
            first = c;
        else
            second = c;
    }
    if (pin == PIN_SPLIT && second < 0)
        fail("--pin split needs two CPUs");
    g_cpu_parent = first;
    g_cpu_child = pin == PIN_SAME ? first : second;
    if (pin_to(g_cpu_parent) < 0)
        fail("sched_setaffinity: %s", strerror(errno));
}

/* ---------------------------------------------- non-blocking parent side */

static void nb_write_all(int fd, const void *buf, size_t len, uint64_t deadline)
{
    size_t off = 0;

    while (off < len) {
        ssize_t n = write(fd, (const char *)buf + off, len - off);
        if (n > 0)
            off += (size_t)n;
        else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            wait_fd(fd, POLLOUT, deadline);
        else if (n < 0 && errno != EINTR)
            fail("write: %s", strerror(errno));
    }
}

/* poll(POLLIN), then read, until len bytes. Returns 0, or -1 at EOF before
 * the first byte when eof_ok (else EOF fails). */
static int nb_read_all_eof(int fd, void *buf, size_t len, uint64_t deadline, int eof_ok)
{
    size_t off = 0;

    while (off < len) {
        wait_fd(fd, POLLIN, deadline);
        ssize_t n = read(fd, (char *)buf + off, len - off);
        if (n > 0)
            off += (size_t)n;
        else if (n == 0 && off == 0 && eof_ok)
            return -1;
        else if (n == 0)
            fail("the child closed the socket early");
        else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            fail("read: %s", strerror(errno));
    }
    return 0;
}

static void nb_read_all(int fd, void *buf, size_t len, uint64_t deadline)
{
    (void)nb_read_all_eof(fd, buf, len, deadline, 0);
}

/* One flush; waits for writability when the socket took less than all. */
static int flush_step(chan_queue *q, int fd, uint64_t deadline)
{
    int rc = chan_queue_flush(q, fd);
    if (rc < 0)
        fail("chan_queue_flush: %s", strerror(-rc));
    if (rc == 0)
        wait_fd(fd, POLLOUT, deadline);
    return rc;
}

static void flush_all(chan_queue *q, int fd, uint64_t deadline)
{
    while (flush_step(q, fd, deadline) == 0)
        ;
}

/* The parent's buffered frame reader on the non-blocking socket. */
struct nb_reader {
    chan_decoder dec;
    unsigned char buf[CHUNK];
    size_t start, end;
};

static void nb_recv_frame(int fd, struct nb_reader *r, chan_frame *out, uint64_t deadline)
{
    for (;;) {
        if (r->start < r->end) {
            size_t used;
            int rc = chan_decoder_feed(&r->dec, r->buf + r->start, r->end - r->start, &used, out);
            r->start += used;
            if (rc == 1)
                return;
            if (rc < 0)
                fail("chan_decoder_feed: %s", strerror(-rc));
        }
        wait_fd(fd, POLLIN, deadline);
        ssize_t n = chan_read(fd, &r->dec, r->buf, sizeof r->buf);
        if (n == -EAGAIN || n == -EWOULDBLOCK)
            continue;
        if (n == 0)
            fail("the child closed the channel early");
        if (n < 0)
            fail("chan_read: %s", strerror((int)-n));
        r->start = 0;
        r->end = (size_t)n;
    }
}

/* ------------------------------------------------ the bus, on an ev_loop */

struct busenv {
    struct ev_loop *loop;
    struct bus b;
    endpoint *eps;            /* n endpoints, opened by the caller */
    unsigned n;
    ev_timer bound;           /* the run's deadline */
    int timed_out;
    unsigned kicks;
    sf_logger log;
};

static endpoint *env_find(bus *b, pid_t pid, void *arg)
{
    struct busenv *env = arg;
    (void)b;

    for (unsigned i = 0; i < env->n; i++)
        if (env->eps[i].pid == pid && endpoint_is_open(&env->eps[i]))
            return &env->eps[i];
    return NULL;
}

static void env_kick(bus *b, endpoint *e, const char *why, void *arg)
{
    struct busenv *env = arg;
    (void)b;

    env->kicks++;
    fprintf(stderr, "chanbench: the bus kicked pid %d: %s\n", (int)e->pid, why);
}

static void env_log(void *arg, int level, const char *line)
{
    (void)arg;
    fprintf(stderr, "chanbench: bus (level %d): %s\n", level, line);
}

static void env_bound(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct busenv *env = w->data;
    (void)revents;

    env->timed_out = 1;
    ev_break(loop, EVBREAK_ALL);
}

static void env_init(struct busenv *env, unsigned n, size_t queue_limit, uint64_t deadline)
{
    bus_config cfg;
    uint64_t t = now_ns();
    int rc;

    memset(env, 0, sizeof *env);
    env->log.cb = env_log;
    env->log.level = SF_LOG_WARN;
    env->loop = ev_loop_new(EVFLAG_AUTO);
    if (!env->loop)
        fail("ev_loop_new failed");
    env->eps = calloc(n, sizeof *env->eps);
    if (!env->eps)
        fail("out of memory");
    env->n = n;
    for (unsigned i = 0; i < n; i++)
        env->eps[i].fd = -1;
    memset(&cfg, 0, sizeof cfg);
    cfg.queue_limit = queue_limit;
    cfg.full_policy = BUS_FULL_DROP;
    cfg.on_kick = env_kick;
    cfg.find = env_find;
    cfg.arg = env;
    cfg.log = &env->log;
    if ((rc = bus_init(&env->b, env->loop, &cfg)) < 0)
        fail("bus_init: %s", strerror(-rc));
    ev_timer_init(&env->bound, env_bound, t < deadline ? (double)(deadline - t) / 1e9 : 0.001, 0.);
    env->bound.data = env;
    ev_timer_start(env->loop, &env->bound);
}

static void env_open(struct busenv *env, unsigned i, int fd, pid_t pid)
{
    int rc = fcntl(fd, F_SETFL, O_NONBLOCK) < 0 ? -errno : 0;
    if (rc == 0)
        rc = endpoint_open(&env->b, &env->eps[i], fd, pid, 0, NULL);
    if (rc < 0)
        fail("endpoint_open: %s", strerror(-rc));
}

/* One turn of the loop; fails past the deadline. */
static void env_once(struct busenv *env, const char *what)
{
    if (!env->timed_out)
        ev_run(env->loop, EVRUN_ONCE);
    if (env->timed_out)
        fail("timed out (-t) in the ev loop, waiting for %s", what);
    if (env->kicks)
        fail("the bus kicked a child, waiting for %s", what);
}

/* Runs the loop until the child's last status is `text`. */
static void env_wait_status(struct busenv *env, endpoint *e, const char *text)
{
    while (strcmp(e->status, text) != 0) {
        if (!endpoint_is_open(e))
            fail("pid %d closed its channel before it said %s", (int)e->pid, text);
        env_once(env, text);
    }
}

static void env_fini(struct busenv *env)
{
    bus_fini(&env->b);             /* closes every endpoint: the children see EOF */
    ev_timer_stop(env->loop, &env->bound);
    ev_loop_destroy(env->loop);
    free(env->eps);
}

/* ------------------------------------------------- blocking child side */

static int b_write_all(int fd, const void *buf, size_t len)
{
    size_t off = 0;

    while (off < len) {
        ssize_t n = write(fd, (const char *)buf + off, len - off);
        if (n > 0)
            off += (size_t)n;
        else if (n < 0 && errno != EINTR)
            return -1;
    }
    return 0;
}

static int b_read_all(int fd, void *buf, size_t len)
{
    size_t off = 0;

    while (off < len) {
        ssize_t n = read(fd, (char *)buf + off, len - off);
        if (n > 0)
            off += (size_t)n;
        else if (n == 0 || errno != EINTR)
            return -1;
    }
    return 0;
}

static int send_byte(int fd, char c)
{
    return b_write_all(fd, &c, 1);
}

static int send_status(int fd, const char *text)
{
    return chan_send(fd, CHAN_T_STATUS, text, (uint32_t)strlen(text), -1);
}

/* A message from the bus, as sf_conn_recv (src/server/conn.c) gives it. */
struct child_msg {
    int kind, from;
    char topic[256];
    unsigned char *data;   /* malloc'ed: free() it */
    size_t len;
};

/* chan_recv, then what sf_conn_recv does with the CHAN_T_MESSAGE: its
 * 8-byte header parsed, the data moved to the front, NUL-terminated.
 * Returns 1, 0 at EOF between frames, or < 0. */
static int child_recv_msg(int fd, chan_reader *r, struct child_msg *m)
{
    chan_frame f;
    size_t tlen;
    int rc = chan_recv(fd, r, &f);

    if (rc <= 0)
        return rc;
    if (f.fd >= 0)
        close(f.fd);
    if (f.type != CHAN_T_MESSAGE || f.len < MSG_HDR || (tlen = be16_get(f.payload + 2)) > f.len - MSG_HDR ||
        tlen >= sizeof m->topic) {
        free(f.payload);
        return -EPROTO;
    }
    m->kind = f.payload[0];
    m->from = (int)be32_get(f.payload + 4);
    memcpy(m->topic, f.payload + MSG_HDR, tlen);
    m->topic[tlen] = '\0';
    m->len = f.len - MSG_HDR - tlen;
    memmove(f.payload, f.payload + MSG_HDR + tlen, m->len);
    f.payload[m->len] = '\0';
    m->data = f.payload;
    return 1;
}

/* --------------------------------------------------- throughput: child */

/* Copies the messages out of each 4 KiB read and checks their order. */
static int child_tput_raw(int fd, uint64_t m)
{
    unsigned char buf[CHUNK], msg[MSG_LEN];
    size_t have = 0;
    uint64_t got = 0;

    while (got < m) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 1;
        for (size_t off = 0; off < (size_t)n;) {
            size_t k = MSG_LEN - have;
            if (k > (size_t)n - off)
                k = (size_t)n - off;
            memcpy(msg + have, buf + off, k);
            have += k;
            off += k;
            if (have < MSG_LEN)
                break;
            if (got >= m || !msg_is(msg, got))
                return 2;
            got++;
            have = 0;
        }
    }
    return send_byte(fd, 'A') < 0 ? 3 : 0;
}

static int child_tput_chan(int fd, uint64_t m)
{
    chan_reader r;
    chan_frame f;
    int bad = 0;

    chan_reader_init(&r, 0);
    for (uint64_t got = 0; got < m && !bad; got++) {
        if (chan_recv(fd, &r, &f) != 1)
            bad = 1;
        else {
            bad = f.type != CHAN_T_DATA || f.len != MSG_LEN || !msg_is(f.payload, got);
            free(f.payload);
        }
    }
    chan_reader_fini(&r);
    return bad ? 2 : send_byte(fd, 'A') < 0 ? 3 : 0;
}

static int child_tput_bus(int fd, uint64_t m)
{
    chan_reader r;
    struct child_msg msg;
    int bad = 0;

    if (send_status(fd, "ready") < 0)
        return 10;
    chan_reader_init(&r, 0);
    for (uint64_t got = 0; got < m && !bad; got++) {
        if (child_recv_msg(fd, &r, &msg) != 1)
            bad = 1;
        else {
            bad = msg.kind != SF_MSG_DIRECT || msg.from != 0 || msg.len != MSG_LEN ||
                  !msg_is(msg.data, got);
            free(msg.data);
        }
    }
    chan_reader_fini(&r);
    return bad ? 2 : send_status(fd, "done") < 0 ? 3 : 0;
}

/* -------------------------------------------------- throughput: parent */

static void parent_tput_raw(int fd, uint64_t m, uint64_t deadline)
{
    unsigned char msg[MSG_LEN];

    for (uint64_t i = 0; i < m; i++) {
        fill_msg(msg, i);
        nb_write_all(fd, msg, sizeof msg, deadline);
        if (i % CHECK_EVERY == 0)
            check_deadline(deadline);
    }
}

/* As a supervisor does: push; when the queue is full, flush, and wait for
 * writability when the socket took less than all of it. */
static void parent_tput_chan(int fd, uint64_t m, uint64_t deadline)
{
    unsigned char msg[MSG_LEN];
    chan_queue q;
    int rc;

    chan_queue_init(&q, QUEUE_LIMIT);
    for (uint64_t i = 0; i < m; i++) {
        fill_msg(msg, i);
        while ((rc = chan_queue_push(&q, CHAN_T_DATA, msg, MSG_LEN, -1)) == -ENOBUFS)
            flush_step(&q, fd, deadline);
        if (rc < 0)
            fail("chan_queue_push: %s", strerror(-rc));
        if (i % CHECK_EVERY == 0)
            check_deadline(deadline);
    }
    flush_all(&q, fd, deadline);
    chan_queue_fini(&q);
}

/* ---------------------------------------------------------- rtt: child */

static int child_rtt_raw(int fd, uint64_t rounds)
{
    unsigned char msg[MSG_LEN];

    for (uint64_t i = 0; i < rounds; i++)
        if (b_read_all(fd, msg, sizeof msg) < 0 || b_write_all(fd, msg, sizeof msg) < 0)
            return 1;
    return 0;
}

static int child_rtt_chan(int fd, uint64_t rounds)
{
    chan_reader r;
    chan_frame f;
    int bad = 0;

    chan_reader_init(&r, 0);
    for (uint64_t i = 0; i < rounds && !bad; i++) {
        if (chan_recv(fd, &r, &f) != 1)
            bad = 1;
        else {
            bad = chan_send(fd, f.type, f.payload, f.len, -1) < 0;
            free(f.payload);
        }
    }
    chan_reader_fini(&r);
    return bad;
}

/* The child-timed round trips: after the parent's "go", write and read
 * back, rounds times. */
static int child_busrtt_raw(int fd, uint64_t rounds, uint64_t *rtt)
{
    unsigned char msg[MSG_LEN], reply[MSG_LEN];
    char go;

    if (b_read_all(fd, &go, 1) < 0)
        return 1;
    for (uint64_t i = 0; i < rounds; i++) {
        fill_msg(msg, i);
        uint64_t t0 = now_ns();
        if (b_write_all(fd, msg, sizeof msg) < 0 || b_read_all(fd, reply, sizeof reply) < 0)
            return 2;
        rtt[i] = now_ns() - t0;
        if (!msg_is(reply, i))
            return 3;
    }
    return 0;
}

static int child_busrtt_bus(int fd, uint64_t rounds, uint64_t *rtt)
{
    unsigned char req[4 + MSG_LEN];
    struct child_msg m;
    chan_reader r;
    int self = (int)getpid(), bad = 0;

    be32_put(req, (uint32_t)self);
    chan_reader_init(&r, 0);
    if (child_recv_msg(fd, &r, &m) != 1) /* the parent's "go" */
        bad = 1;
    else
        free(m.data);
    for (uint64_t i = 0; i < rounds && !bad; i++) {
        fill_msg(req + 4, i);
        uint64_t t0 = now_ns();
        if (chan_send(fd, CHAN_T_SEND, req, sizeof req, -1) < 0 || child_recv_msg(fd, &r, &m) != 1) {
            bad = 2;
            break;
        }
        rtt[i] = now_ns() - t0;
        bad = m.kind != SF_MSG_DIRECT || m.from != self || m.len != MSG_LEN || !msg_is(m.data, i) ? 3 : 0;
        free(m.data);
    }
    chan_reader_fini(&r);
    return bad;
}

/* --------------------------------------------------------- rtt: parent */

static void parent_rtt_raw(int fd, uint64_t rounds, uint64_t *rtt, uint64_t deadline)
{
    unsigned char msg[MSG_LEN], reply[MSG_LEN];

    for (uint64_t i = 0; i < rounds; i++) {
        fill_msg(msg, i);
        uint64_t t0 = now_ns();
        nb_write_all(fd, msg, sizeof msg, deadline);
        nb_read_all(fd, reply, sizeof reply, deadline);
        rtt[i] = now_ns() - t0;
        if (!msg_is(reply, i))
            fail("raw rtt: round %" PRIu64 ": wrong reply", i);
    }
}

static void parent_rtt_chan(int fd, uint64_t rounds, uint64_t *rtt, uint64_t deadline)
{
    static struct nb_reader r;
    unsigned char msg[MSG_LEN];
    chan_queue q;
    chan_frame f;
    int rc;

    chan_queue_init(&q, QUEUE_LIMIT);
    chan_decoder_init(&r.dec, 0);
    r.start = r.end = 0;
    for (uint64_t i = 0; i < rounds; i++) {
        fill_msg(msg, i);
        uint64_t t0 = now_ns();
        if ((rc = chan_queue_push(&q, CHAN_T_DATA, msg, MSG_LEN, -1)) < 0)
            fail("chan_queue_push: %s", strerror(-rc));
        flush_all(&q, fd, deadline);
        nb_recv_frame(fd, &r, &f, deadline);
        rtt[i] = now_ns() - t0;
        if (f.type != CHAN_T_DATA || f.len != MSG_LEN || !msg_is(f.payload, i))
            fail("chan rtt: round %" PRIu64 ": wrong reply", i);
        free(f.payload);
    }
    chan_decoder_fini(&r.dec);
    chan_queue_fini(&q);
}

/* The raw echo of the child-timed round trips: until the child closes. */
static void parent_busrtt_raw(int fd, uint64_t rounds, uint64_t deadline)
{
    unsigned char msg[MSG_LEN];
    uint64_t n = 0;

    nb_write_all(fd, "G", 1, deadline);
    while (nb_read_all_eof(fd, msg, sizeof msg, deadline, 1) == 0) {
        nb_write_all(fd, msg, sizeof msg, deadline);
        n++;
    }
    if (n != rounds)
        fail("raw bus-rtt: %" PRIu64 " of %" PRIu64 " rounds", n, rounds);
}

/* ------------------------------------------------------------- one run */

enum test { TPUT, RTT, BUSRTT };

struct run {
    enum test test;
    enum variant v;
    const struct opts *o;
    pid_t pid;
    uint64_t *rtt;            /* RTT, BUSRTT: o->rounds samples, ns (shared memory) */
    uint64_t elapsed;         /* TPUT: ns from ready to acknowledgement */
    uint64_t retries;         /* TPUT bus: bus_deliver's -ENOBUFS, each retried */
};

/* The bus variants: the parent's end becomes an endpoint (which owns it). */
static void parent_bus(struct run *run, int fd, uint64_t deadline)
{
    unsigned char msg[MSG_LEN];
    struct busenv env;
    endpoint *e;
    bus_msg m;
    int rc;

    env_init(&env, 1, QUEUE_LIMIT, deadline);
    env_open(&env, 0, fd, run->pid);
    e = &env.eps[0];
    memset(&m, 0, sizeof m);
    m.kind = SF_MSG_DIRECT;
    m.data = msg;
    m.len = MSG_LEN;
    if (run->test == BUSRTT) {
        memcpy(msg, "go", 2);
        m.len = 2;
        if ((rc = bus_deliver(e, &m)) < 0)
            fail("bus_deliver: %s", strerror(-rc));
        while (endpoint_is_open(e)) /* until the child closes its end */
            env_once(&env, "the child to finish its round trips");
        if (env.b.counted.frames_in != run->o->rounds || env.b.counted.drops)
            fail("bus rtt: %" PRIu64 " requests of %" PRIu64 ", %" PRIu64 " drops",
                 env.b.counted.frames_in, run->o->rounds, env.b.counted.drops);
        env_fini(&env);
        return;
    }
    env_wait_status(&env, e, "ready");
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < run->o->messages; i++) {
        fill_msg(msg, i);
        while ((rc = bus_deliver(e, &m)) == -ENOBUFS) {
            run->retries++;
            /* The bus flushes when its loop is about to block (a prepare
             * watcher): one turn without waiting flushes; wait only if the
             * socket took too little, and then for it to take more. */
            ev_run(env.loop, EVRUN_NOWAIT);
            if (e->q.bytes + MSG_LEN + 16 > e->q.limit)
                env_once(&env, "the queue to drain");
        }
        if (rc < 0)
            fail("bus_deliver: %s", strerror(-rc));
        if (i % CHECK_EVERY == 0)
            check_deadline(deadline);
    }
    env_wait_status(&env, e, "done");
    run->elapsed = now_ns() - t0;
    env_fini(&env);
}

static int child_main(const struct run *run, int fd)
{
    uint64_t n = run->test == TPUT ? run->o->messages : run->o->rounds;

    prctl(PR_SET_PDEATHSIG, SIGKILL);
    alarm(run->o->secs + 5);  /* a bound of its own, should the parent hang */
    if (run->test == BUSRTT)
        return run->v == RAW ? child_busrtt_raw(fd, n, run->rtt) : child_busrtt_bus(fd, n, run->rtt);
    if (run->v == BUS)
        return child_tput_bus(fd, n);
    if (send_byte(fd, 'R') < 0)
        return 10;
    if (run->test == TPUT)
        return run->v == RAW ? child_tput_raw(fd, n) : child_tput_chan(fd, n);
    return run->v == RAW ? child_rtt_raw(fd, n) : child_rtt_chan(fd, n);
}

/* Returns 1 when it took fd (the bus variants), else 0. */
static int parent_main(struct run *run, int fd, uint64_t deadline)
{
    char c;

    if (run->v == BUS) {
        parent_bus(run, fd, deadline);
        return 1;
    }
    if (run->test == BUSRTT) {
        parent_busrtt_raw(fd, run->o->rounds, deadline);
        return 0;
    }
    nb_read_all(fd, &c, 1, deadline);          /* the child is ready */
    uint64_t t0 = now_ns();
    if (run->test == RTT) {
        if (run->v == RAW)
            parent_rtt_raw(fd, run->o->rounds, run->rtt, deadline);
        else
            parent_rtt_chan(fd, run->o->rounds, run->rtt, deadline);
        return 0;
    }
    if (run->v == RAW)
        parent_tput_raw(fd, run->o->messages, deadline);
    else
        parent_tput_chan(fd, run->o->messages, deadline);
    nb_read_all(fd, &c, 1, deadline);          /* the child has them all */
    run->elapsed = now_ns() - t0;
    return 0;
}

static void do_run(struct run *run)
{
    uint64_t deadline = now_ns() + (uint64_t)run->o->secs * 1000000000u;
    int sv[2];

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        fail("socketpair: %s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        fail("fork: %s", strerror(errno));
    if (pid == 0) {
        child_pin();
        close(sv[0]);
        _exit(child_main(run, sv[1]));
    }
    add_kid(pid);
    run->pid = pid;
    close(sv[1]);
    if (fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK) < 0)
        fail("fcntl: %s", strerror(errno));
    if (!parent_main(run, sv[0], deadline))
        close(sv[0]);
    reap_all(variant_name[run->v], deadline + 5000000000u);
}

/* ----------------------------------------------------------- broadcast */

struct bcast_run {
    enum variant v;
    const struct opts *o;
    uint32_t *counts;         /* shared: messages each child got */
    uint64_t elapsed;         /* ns, first message to the last "done" */
    uint64_t call_ns;         /* summed over the B broadcasts */
    uint64_t drops;
};

static int child_bcast(int fd, unsigned idx, const struct opts *o, uint32_t *counts)
{
    struct child_msg m;
    chan_reader r;
    uint64_t next = 0;
    uint32_t got = 0;
    int rc, bad = 0;

    prctl(PR_SET_PDEATHSIG, SIGKILL);
    alarm(o->secs + 5);
    /* Only its own channel: the siblings' ends it inherited would keep
     * their sockets open. */
    if (fd != 3 && dup2(fd, 3) < 0)
        return 20;
    fd = 3;
    if (close_range(4, ~0U, 0) < 0)
        return 21;
    if (send_status(fd, "ready") < 0)
        return 10;
    chan_reader_init(&r, 0);
    /* Until EOF: "done" after B messages; fewer if the bus dropped some. */
    while ((rc = child_recv_msg(fd, &r, &m)) == 1) {
        uint64_t seq = msg_seq(m.data);
        if (m.kind != SF_MSG_BROADCAST || m.len != MSG_LEN || seq < next || !msg_is(m.data, seq))
            bad = 2;
        next = seq + 1;
        free(m.data);
        if (bad)
            break;
        if (++got == o->bcasts && send_status(fd, "done") < 0) {
            bad = 3;
            break;
        }
    }
    if (rc < 0 && !bad)
        bad = 4;
    chan_reader_fini(&r);
    counts[idx] = got;
    return bad;
}

/* The encoded status frame a child sends, for the raw parent to expect. */
static size_t status_frame(unsigned char *buf, const char *text)
{
    size_t n = strlen(text);
    chan_header_encode(buf, CHAN_T_STATUS, 0, (uint32_t)n);
    memcpy(buf + CHAN_HDR_LEN, text, n);
    return CHAN_HDR_LEN + n;
}

/* Reads `text`'s status frame from every one of the K sockets. */
static void raw_collect(const int *fds, unsigned k, const char *text, uint64_t deadline)
{
    unsigned char want[64];
    size_t len = status_frame(want, text);
    unsigned char *got = malloc((size_t)k * len);
    size_t *have = calloc(k, sizeof *have);
    struct pollfd *p = malloc(k * sizeof *p);
    unsigned *idx = malloc(k * sizeof *idx);
    unsigned left = k;

    if (!got || !have || !p || !idx)
        fail("out of memory");
    while (left > 0) {
        unsigned np = 0;
        for (unsigned i = 0; i < k; i++) {
            if (have[i] < len) {
                p[np].fd = fds[i];
                p[np].events = POLLIN;
                idx[np++] = i;
            }
        }
        uint64_t t = now_ns();
        if (t >= deadline)
            fail("timed out (-t) waiting for %u children to say %s", left, text);
        int rc = poll(p, np, (int)((deadline - t) / 1000000u) + 1);
        if (rc < 0 && errno != EINTR)
            fail("poll: %s", strerror(errno));
        for (unsigned j = 0; rc > 0 && j < np; j++) {
            if (!p[j].revents)
                continue;
            unsigned i = idx[j];
            ssize_t n = read(fds[i], got + (size_t)i * len + have[i], len - have[i]);
            if (n == 0)
                fail("child %u closed its socket before it said %s", i, text);
            if (n < 0 && errno != EAGAIN && errno != EINTR)
                fail("read: %s", strerror(errno));
            if (n > 0 && (have[i] += (size_t)n) == len) {
                if (memcmp(got + (size_t)i * len, want, len) != 0)
                    fail("child %u sent something else than %s", i, text);
                left--;
            }
        }
    }
    free(got);
    free(have);
    free(p);
    free(idx);
}

static void bcast_raw(struct bcast_run *run, const int *fds, uint64_t deadline)
{
    unsigned char frame[CHAN_HDR_LEN + MSG_HDR + MSG_LEN];
    unsigned k = run->o->kids;

    raw_collect(fds, k, "ready", deadline);
    /* The frame bus_broadcast sends: the header, kind, ok, topic length, from, data. */
    chan_header_encode(frame, CHAN_T_MESSAGE, 0, MSG_HDR + MSG_LEN);
    memset(frame + CHAN_HDR_LEN, 0, MSG_HDR);
    frame[CHAN_HDR_LEN] = SF_MSG_BROADCAST;
    uint64_t t0 = now_ns();
    for (unsigned b = 0; b < run->o->bcasts; b++) {
        fill_msg(frame + CHAN_HDR_LEN + MSG_HDR, b);
        uint64_t tb = now_ns();
        for (unsigned i = 0; i < k; i++)
            nb_write_all(fds[i], frame, sizeof frame, deadline);
        run->call_ns += now_ns() - tb;
        check_deadline(deadline);
    }
    raw_collect(fds, k, "done", deadline);
    run->elapsed = now_ns() - t0;
    for (unsigned i = 0; i < k; i++)
        close(fds[i]);
}

/* Counts the children not yet done. Those the bus dropped messages for
 * will never say it: they are waited for until their queue is empty (what
 * is still queued when the endpoint closes is lost); then they read the
 * rest of their socket before its EOF. */
static unsigned bus_pending(struct busenv *env, const char *text)
{
    unsigned n = 0;

    for (unsigned i = 0; i < env->n; i++) {
        endpoint *e = &env->eps[i];
        if (!endpoint_is_open(e))
            fail("pid %d closed its channel before it said %s", (int)e->pid, text);
        if (e->drops == 0 ? strcmp(e->status, text) != 0 : !chan_queue_empty(&e->q))
            n++;
    }
    return n;
}

/* Sets expect[i]: what child i is to have got, B less its drops. */
static void bcast_bus(struct bcast_run *run, const int *fds, const pid_t *pids, uint32_t *expect,
                      uint64_t deadline)
{
    unsigned char msg[MSG_LEN];
    unsigned k = run->o->kids;
    struct busenv env;
    bus_msg m;

    env_init(&env, k, BCAST_QUEUE_LIMIT, deadline);
    for (unsigned i = 0; i < k; i++)
        env_open(&env, i, fds[i], pids[i]);
    while (bus_pending(&env, "ready") > 0)
        env_once(&env, "the children to be ready");
    memset(&m, 0, sizeof m);
    m.kind = SF_MSG_BROADCAST;
    m.data = msg;
    m.len = MSG_LEN;
    uint64_t t0 = now_ns();
    for (unsigned b = 0; b < run->o->bcasts; b++) {
        fill_msg(msg, b);
        uint64_t tb = now_ns();
        unsigned n = bus_broadcast(&env.b, &m, NULL);
        run->call_ns += now_ns() - tb;
        run->drops += k - n;
        ev_run(env.loop, EVRUN_NOWAIT);
        check_deadline(deadline);
    }
    while (bus_pending(&env, "done") > 0)
        env_once(&env, "the children to be done");
    run->elapsed = now_ns() - t0;
    if (env.kicks)
        fail("the bus kicked %u children", env.kicks);
    if (run->drops != env.b.counted.drops)
        fail("broadcast: %" PRIu64 " missing deliveries, %" PRIu64 " drops counted by the bus",
             run->drops, env.b.counted.drops);
    for (unsigned i = 0; i < k; i++)
        expect[i] = (uint32_t)(run->o->bcasts - env.eps[i].drops);
    env_fini(&env);
}

static void do_bcast(struct bcast_run *run)
{
    uint64_t deadline = now_ns() + (uint64_t)run->o->secs * 1000000000u;
    unsigned k = run->o->kids;
    int *fds = malloc(k * sizeof *fds);
    pid_t *pids = malloc(k * sizeof *pids);
    uint32_t *expect = malloc(k * sizeof *expect);

    if (!fds || !pids || !expect)
        fail("out of memory");
    memset(run->counts, 0xff, k * sizeof *run->counts);
    fflush(NULL);
    for (unsigned i = 0; i < k; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
            fail("socketpair (child %u): %s", i, strerror(errno));
        pid_t pid = fork();
        if (pid < 0)
            fail("fork (child %u): %s", i, strerror(errno));
        if (pid == 0) {
            child_pin();
            _exit(child_bcast(sv[1], i, run->o, run->counts));
        }
        add_kid(pid);
        close(sv[1]);
        if (fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK) < 0)
            fail("fcntl: %s", strerror(errno));
        fds[i] = sv[0];
        pids[i] = pid;
        if (i % 64 == 0)
            check_deadline(deadline);
    }
    if (run->v == RAW) {
        bcast_raw(run, fds, deadline);
        for (unsigned i = 0; i < k; i++)
            expect[i] = run->o->bcasts;
    } else {
        bcast_bus(run, fds, pids, expect, deadline);
    }
    /* Every socket is closed: the children see EOF and exit. */
    reap_all(variant_name[run->v], deadline + 10000000000u);
    for (unsigned i = 0; i < k; i++)
        if (run->counts[i] != expect[i])
            fail("broadcast %s: child %u got %" PRIu32 " messages, not %" PRIu32,
                 variant_name[run->v], i, run->counts[i], expect[i]);
    free(fds);
    free(pids);
    free(expect);
}

/* ---------------------------------------------------------- statistics */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest rank of a sorted array: the smallest value with at least p of them at or below. */
static uint64_t percentile(const uint64_t *sorted, uint64_t n, double p)
{
    uint64_t rank = (uint64_t)(p * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    return sorted[(rank > n ? n : rank) - 1];
}

static double median(double *v, unsigned n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* R values per variant; the medians once measured. */
struct series {
    double *v[3];
};

static void series_init(struct series *s, unsigned repeats)
{
    for (int k = 0; k < 3; k++)
        if (!(s->v[k] = calloc(repeats, sizeof(double))))
            fail("out of memory");
}

/* The median of each variant; and in ratio[k] (if not NULL) the median of
 * the R ratios variant k / raw, each of two runs of the same repeat, run
 * one after the other: the machine's drift between repeats cancels out. */
static void series_median(struct series *s, unsigned repeats, double out[3], double ratio[3])
{
    double *r = calloc(repeats, sizeof *r);

    if (!r)
        fail("out of memory");
    for (int k = 0; k < 3 && ratio; k++) {
        for (unsigned i = 0; i < repeats; i++)
            r[i] = s->v[RAW][i] > 0 ? s->v[k][i] / s->v[RAW][i] : 0;
        ratio[k] = median(r, repeats);
    }
    for (int k = 0; k < 3; k++) {
        out[k] = median(s->v[k], repeats);
        free(s->v[k]);
    }
    free(r);
}

/* ------------------------------------------------------------- results */

/* Medians per variant, and the *_r: medians of the per-repeat ratios to raw. */
struct results {
    double tput[3], tput_r[3];  /* messages per second: raw, chan, bus */
    double retries;             /* bus throughput: -ENOBUFS retries per run, median */
    double p50[3], p99[3];      /* parent-timed echo, us: raw, chan */
    double p50_r[3], p99_r[3];
    double bp50[3], bp99[3];    /* child-timed, through the bus: raw, -, bus */
    double bp50_r[3], bp99_r[3];
    double bdps[3], bdps_r[3];  /* broadcast deliveries per second: raw, -, bus */
    double bcall[3], bcall_r[3]; /* one broadcast, us */
    uint64_t bdrops;            /* bus broadcast drops, over all repeats */
};

/* The order of the variants in repeat i: rotated, so none always goes first. */
static enum variant nth(const enum variant *vs, unsigned nv, unsigned i, unsigned k)
{
    return vs[(i + k) % nv];
}

static void measure_tput(const struct opts *o, struct results *res)
{
    static const enum variant vs[] = {RAW, CHAN, BUS};
    struct series s, r;
    double rr[3];

    series_init(&s, o->repeats);
    series_init(&r, o->repeats);
    for (unsigned i = 0; i < o->repeats; i++) {
        for (unsigned k = 0; k < 3; k++) {
            enum variant var = nth(vs, 3, i, k);
            struct run run = {.test = TPUT, .v = var, .o = o};
            do_run(&run);
            s.v[var][i] = (double)o->messages * 1e9 / (double)run.elapsed;
            r.v[var][i] = (double)run.retries;
            fprintf(stderr, "throughput %-4s repeat %u: %.0f msg/s", variant_name[var], i + 1,
                    s.v[var][i]);
            if (var == BUS)
                fprintf(stderr, " (%" PRIu64 " -ENOBUFS retried)", run.retries);
            fputc('\n', stderr);
        }
    }
    series_median(&s, o->repeats, res->tput, res->tput_r);
    series_median(&r, o->repeats, rr, NULL);
    res->retries = rr[BUS];
}

/* test RTT: raw and chan; test BUSRTT: raw and bus. */
static void measure_rtt(const struct opts *o, enum test test, double p50[3], double p99[3],
                        double p50_r[3], double p99_r[3])
{
    const enum variant vs[2] = {RAW, test == RTT ? CHAN : BUS};
    size_t bytes = o->rounds * sizeof(uint64_t);
    uint64_t *rtt = shared_alloc(bytes);
    struct series s50, s99;

    series_init(&s50, o->repeats);
    series_init(&s99, o->repeats);
    for (unsigned i = 0; i < o->repeats; i++) {
        for (unsigned k = 0; k < 2; k++) {
            enum variant var = nth(vs, 2, i, k);
            struct run run = {.test = test, .v = var, .o = o, .rtt = rtt};
            memset(rtt, 0, bytes);
            do_run(&run);
            qsort(rtt, o->rounds, sizeof *rtt, cmp_u64);
            s50.v[var][i] = (double)percentile(rtt, o->rounds, 0.50) / 1e3;
            s99.v[var][i] = (double)percentile(rtt, o->rounds, 0.99) / 1e3;
            fprintf(stderr, "%-10s %-4s repeat %u: p50 %.2f us  p99 %.2f us\n",
                    test == RTT ? "rtt" : "bus rtt", variant_name[var], i + 1, s50.v[var][i],
                    s99.v[var][i]);
        }
    }
    series_median(&s50, o->repeats, p50, p50_r);
    series_median(&s99, o->repeats, p99, p99_r);
    munmap(rtt, bytes);
}

static void measure_bcast(const struct opts *o, struct results *res)
{
    static const enum variant vs[] = {RAW, BUS};
    size_t bytes = o->kids * sizeof(uint32_t);
    uint32_t *counts = shared_alloc(bytes);
    struct series dps, call;

    series_init(&dps, o->repeats);
    series_init(&call, o->repeats);
    res->bdrops = 0;
    for (unsigned i = 0; i < o->repeats; i++) {
        for (unsigned k = 0; k < 2; k++) {
            enum variant var = nth(vs, 2, i, k);
            struct bcast_run run = {.v = var, .o = o, .counts = counts};
            do_bcast(&run);
            /* Deliveries made: a dropped one is not. */
            dps.v[var][i] = ((double)o->kids * o->bcasts - (double)run.drops) * 1e9 / (double)run.elapsed;
            call.v[var][i] = (double)run.call_ns / o->bcasts / 1e3;
            res->bdrops += run.drops;
            fprintf(stderr, "broadcast  %-4s repeat %u: %.0f deliveries/s, one broadcast %.1f us, "
                    "%" PRIu64 " drops\n", variant_name[var], i + 1, dps.v[var][i], call.v[var][i],
                    run.drops);
        }
    }
    series_median(&dps, o->repeats, res->bdps, res->bdps_r);
    series_median(&call, o->repeats, res->bcall, res->bcall_r);
    munmap(counts, bytes);
}

static const char *const pin_name[] = {"none", "same", "split"};

static const char *pin_text(int pin)
{
    return pin == PIN_SPLIT ? "parent and children on two CPUs (--pin split)"
         : pin == PIN_SAME ? "parent and children on one CPU (--pin same)"
                           : "unpinned (--pin none)";
}

static const char *verdict(double ratio, double target, int higher_better)
{
    return (higher_better ? ratio >= target : ratio <= target) ? "met" : "MISSED";
}

static void print_table(const struct opts *o, const struct results *r)
{
    double t_chan = r->tput_r[CHAN], t_bus = r->tput_r[BUS];
    double p_chan = r->p50_r[CHAN], p_bus = r->bp50_r[BUS];

    printf("chanbench: %" PRIu64 " messages, %" PRIu64 " round trips, broadcast of %u messages "
           "to %u children, %d-byte payload, median of %u repeats, %s\n\n",
           o->messages, o->rounds, o->bcasts, o->kids, MSG_LEN, o->repeats, pin_text(o->pin));
    printf("| measure | raw socketpair | sockfork | sockfork/raw | target |\n");
    printf("|---|---:|---:|---:|---|\n");
    printf("| channel codec: one-way throughput, msg/s | %.0f | %.0f | %.2f | >= 0.70: %s |\n",
           r->tput[RAW], r->tput[CHAN], t_chan, verdict(t_chan, 0.70, 1));
    printf("| channel codec: round trip p50, us | %.2f | %.2f | %.2f | <= 1.30: %s |\n",
           r->p50[RAW], r->p50[CHAN], p_chan, verdict(p_chan, 1.30, 0));
    printf("| channel codec: round trip p99, us | %.2f | %.2f | %.2f | |\n", r->p99[RAW],
           r->p99[CHAN], r->p99_r[CHAN]);
    printf("| bus: one-way throughput (bus_deliver), msg/s | %.0f | %.0f | %.2f | >= 0.70: %s |\n",
           r->tput[RAW], r->tput[BUS], t_bus, verdict(t_bus, 0.70, 1));
    printf("| bus: round trip child -> bus -> child p50, us | %.2f | %.2f | %.2f | <= 1.30: %s |\n",
           r->bp50[RAW], r->bp50[BUS], p_bus, verdict(p_bus, 1.30, 0));
    printf("| bus: round trip child -> bus -> child p99, us | %.2f | %.2f | %.2f | |\n",
           r->bp99[RAW], r->bp99[BUS], r->bp99_r[BUS]);
    printf("| bus: broadcast to %u children, deliveries/s | %.0f | %.0f | %.2f | |\n", o->kids,
           r->bdps[RAW], r->bdps[BUS], r->bdps_r[BUS]);
    printf("| bus: one broadcast (bus_broadcast; raw: %u writes), us | %.1f | %.1f | %.2f | |\n",
           o->kids, r->bcall[RAW], r->bcall[BUS], r->bcall_r[BUS]);
    printf("\nraw and sockfork: medians of the repeats; sockfork/raw: the median of the "
           "per-repeat ratios (the two runs of a repeat are back to back). Throughput and "
           "broadcast rates: higher is better; times: lower is better. The bus throughput run "
           "retried %.0f bus_deliver calls that returned -ENOBUFS (median per run; no message "
           "lost); the broadcasts dropped %" PRIu64 " deliveries in all (queue limit %d KiB per "
           "child).\n", r->retries, r->bdrops, BCAST_QUEUE_LIMIT / 1024);
}

static void print_json(const struct opts *o, const struct results *r)
{
    printf("{\"pin\":\"%s\",\"messages\":%" PRIu64 ",\"rounds\":%" PRIu64 ",\"kids\":%u,"
           "\"broadcasts\":%u,\"repeats\":%u,\"payload\":%d,"
           "\"tput_raw\":%.0f,\"tput_chan\":%.0f,\"tput_ratio\":%.4f,"
           "\"rtt_p50_us_raw\":%.3f,\"rtt_p50_us_chan\":%.3f,\"rtt_p50_ratio\":%.4f,"
           "\"rtt_p99_us_raw\":%.3f,\"rtt_p99_us_chan\":%.3f,\"rtt_p99_ratio\":%.4f,"
           "\"tput_bus\":%.0f,\"tput_bus_ratio\":%.4f,\"tput_bus_retries\":%.0f,"
           "\"busrtt_p50_us_raw\":%.3f,\"busrtt_p50_us_bus\":%.3f,\"busrtt_p50_ratio\":%.4f,"
           "\"busrtt_p99_us_raw\":%.3f,\"busrtt_p99_us_bus\":%.3f,\"busrtt_p99_ratio\":%.4f,"
           "\"bcast_dps_raw\":%.0f,\"bcast_dps_bus\":%.0f,\"bcast_dps_ratio\":%.4f,"
           "\"bcast_call_us_raw\":%.3f,\"bcast_call_us_bus\":%.3f,\"bcast_call_ratio\":%.4f,"
           "\"bcast_drops\":%" PRIu64 "}\n",
           pin_name[o->pin], o->messages, o->rounds, o->kids, o->bcasts, o->repeats, MSG_LEN,
           r->tput[RAW], r->tput[CHAN], r->tput_r[CHAN],
           r->p50[RAW], r->p50[CHAN], r->p50_r[CHAN], r->p99[RAW], r->p99[CHAN], r->p99_r[CHAN],
           r->tput[BUS], r->tput_r[BUS], r->retries,
           r->bp50[RAW], r->bp50[BUS], r->bp50_r[BUS], r->bp99[RAW], r->bp99[BUS], r->bp99_r[BUS],
           r->bdps[RAW], r->bdps[BUS], r->bdps_r[BUS],
           r->bcall[RAW], r->bcall[BUS], r->bcall_r[BUS], r->bdrops);
}

/* ------------------------------------------------------------- options */

static _Noreturn void usage(int status)
{
    fprintf(status ? stderr : stdout,
            "usage: chanbench [-n MESSAGES] [-r ROUNDS] [-k CHILDREN] [-b BROADCASTS]\n"
            "                 [-R REPEATS] [-t SECS] [--pin split|same|none] [--json]\n"
            "  -n  messages of the throughput runs (default 1000000)\n"
            "  -r  round trips of the latency runs (default 20000)\n"
            "  -k  children of the broadcast runs (default 1000)\n"
            "  -b  messages broadcast to them (default 200)\n"
            "  -R  repeats of each, the variants interleaved (default 5)\n"
            "  -t  wall-clock bound of each run, seconds (default 60)\n"
            "  --pin  split: the parent on one CPU, the children on another (default);\n"
            "         same: all on one CPU; none: where the scheduler puts them\n"
            "  --json  one JSON line instead of the markdown table\n");
    exit(status);
}

static uint64_t parse_num(const char *s, uint64_t max)
{
    char *end;

    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-' || v < 1 || v > max) {
        fprintf(stderr, "chanbench: bad number '%s' (1..%" PRIu64 ")\n", s, max);
        usage(2);
    }
    return v;
}

static void parse_opts(int argc, char **argv, struct opts *o)
{
    static const struct option longs[] = {
        {"json", no_argument, NULL, 'j'},
        {"pin", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;

    *o = (struct opts){.pin = PIN_SPLIT, .messages = 1000000, .rounds = 20000, .kids = 1000, .bcasts = 200,
                       .repeats = 5, .secs = 60};
    while ((c = getopt_long(argc, argv, "n:r:k:b:R:t:h", longs, NULL)) != -1) {
        switch (c) {
        case 'n': o->messages = parse_num(optarg, UINT64_C(1) << 40); break;
        case 'r': o->rounds = parse_num(optarg, 100000000); break;
        case 'k': o->kids = (unsigned)parse_num(optarg, 100000); break;
        case 'b': o->bcasts = (unsigned)parse_num(optarg, 1000000); break;
        case 'R': o->repeats = (unsigned)parse_num(optarg, 1001); break;
        case 't': o->secs = (unsigned)parse_num(optarg, 86400); break;
        case 'j': o->json = 1; break;
        case 'p':
            if (strcmp(optarg, "none") == 0)
                o->pin = PIN_NONE;
            else if (strcmp(optarg, "same") == 0)
                o->pin = PIN_SAME;
            else if (strcmp(optarg, "split") == 0)
                o->pin = PIN_SPLIT;
            else
                usage(2);
            break;
        case 'h': usage(0);
        default: usage(2);
        }
    }
    if (optind < argc)
        usage(2);
}

/* The parent holds one socket per broadcast child: the soft limit goes up
 * to the hard one. */
static void raise_nofile(unsigned kids)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        fail("getrlimit: %s", strerror(errno));
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            fail("setrlimit(RLIMIT_NOFILE): %s", strerror(errno));
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)kids + FDS_SPARE)
        fail("-k %u needs %u descriptors; RLIMIT_NOFILE allows %llu", kids, kids + FDS_SPARE,
             (unsigned long long)rl.rlim_cur);
}

int main(int argc, char **argv)
{
    struct opts o;
    struct results res;

    parse_opts(argc, argv, &o);
    signal(SIGPIPE, SIG_IGN);  /* a dead child shows as EPIPE */
    raise_nofile(o.kids);
    setup_pin(o.pin);
    memset(&res, 0, sizeof res);
    measure_tput(&o, &res);
    measure_rtt(&o, RTT, res.p50, res.p99, res.p50_r, res.p99_r);
    measure_rtt(&o, BUSRTT, res.bp50, res.bp99, res.bp50_r, res.bp99_r);
    measure_bcast(&o, &res);
    if (o.json)
        print_json(&o, &res);
    else
        print_table(&o, &res);
    return 0;
}
