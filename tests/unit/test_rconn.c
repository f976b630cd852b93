/* Unit tests: rconn against a real redis-server, started per test on a unix
 * socket in a temporary directory and killed at the end. Skipped when
 * redis-server is not installed (./dev test installs it). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <time.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/wait.h>
#include <sys/syscall.h>
#include <sys/time.h>

#include <ev.h>
#include <hiredis/hiredis.h>

#include "redis/rconn.h"
#include "redis/rurl.h"

#define WAIT_S 10.0 /* bound on every wait for a condition */

typedef struct fx {
    struct ev_loop *loop;
    char dir[48];
    char sock[96];
    pid_t redis;
    rurl where;
    rconn *c;
    int ups, downs;
    char why[128];
    int replies, nulls;
    char last[64];
    int free_in_cb;        /* rconn_free from the next reply callback */
    int free_in_null;      /* rconn_free from the next NULL reply */
    int free_in_up, free_in_down; /* rconn_free from on_up / on_down */
    int cmd_in_null;       /* rconn_command from NULL replies: its result */
    unsigned max_backoff;  /* seen while polling */
    int attempts;          /* stats.attempts, seen while polling */
    int pending;           /* stats.pending, seen while polling */
} fx;

#include "clockstep.h"

/* Seconds on the monotonic clock: the tests' own bounds. */
static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- the redis-server --------------------------------------------------- */

static int can_connect(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), ok;
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

static void pause_briefly(void)
{
    struct timespec ts = { 0, 10 * 1000 * 1000 };
    nanosleep(&ts, NULL);
}

static void redis_start_args(fx *f, const char *port, const char *bind);

static void redis_start(fx *f)
{
    redis_start_args(f, "0", NULL);
}

static void redis_start_args(fx *f, const char *port, const char *bind)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) {
            dup2(null, 1);
            dup2(null, 2);
        }
        execlp("redis-server", "redis-server", "--port", port, "--unixsocket", f->sock,
               "--save", "", "--appendonly", "no", "--dir", f->dir, "--daemonize", "no",
               bind ? "--bind" : (char *)NULL, bind, (char *)NULL);
        _exit(127);
    }
    f->redis = pid;
    /* Ready when its socket accepts: polled, bounded. */
    ev_tstamp end = ev_time() + WAIT_S;
    while (!can_connect(f->sock)) {
        int st;
        assert_true(waitpid(pid, &st, WNOHANG) == 0);
        assert_true(ev_time() < end);
        pause_briefly();
    }
}

static void redis_kill(fx *f)
{
    if (f->redis > 0) {
        kill(f->redis, SIGCONT);
        kill(f->redis, SIGKILL);
        waitpid(f->redis, NULL, 0);
        f->redis = 0;
    }
}

/* A command on a separate, blocking connection (the test's own view). */
static redisReply *side_cmd(fx *f, const char *fmt, ...)
{
    redisContext *rc = redisConnectUnix(f->sock);
    assert_non_null(rc);
    assert_int_equal(rc->err, 0);
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    redisFree(rc);
    assert_non_null(r);
    return r;
}

static int have_redis(void)
{
    return system("command -v redis-server >/dev/null 2>&1") == 0;
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/rconn-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->sock, sizeof f->sock, "%.40s/r.sock", f->dir);
    f->loop = ev_loop_new(EVFLAG_AUTO);
    char url[200];
    snprintf(url, sizeof url, "unix:%s", f->sock);
    assert_int_equal(rurl_parse(url, 0, &f->where, NULL), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    char cmd[128];
    realtime_shift_s = 0; /* a failed test may have left it */
    if (f->c)
        rconn_free(f->c);
    ev_run(f->loop, 0); /* lets deferred frees run: nothing else is active */
    ev_loop_destroy(f->loop);
    redis_kill(f);
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    if (system(cmd) != 0)
        return -1;
    free(f);
    return 0;
}

/* ---- the loop ----------------------------------------------------------- */

static void poll_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    fx *f = w->data;
    (void)loop;
    (void)revents;
    if (f->c) {
        rconn_stats st;
        rconn_get_stats(f->c, &st);
        if (st.backoff_ms > f->max_backoff)
            f->max_backoff = st.backoff_ms;
        f->attempts = (int)st.attempts;
        f->pending = (int)st.pending;
    }
}

/* Runs the loop until *counter reaches want; fails after WAIT_S. */
static void run_until(fx *f, const int *counter, int want)
{
    ev_timer poll;
    double end = mono_s() + WAIT_S;
    ev_timer_init(&poll, poll_cb, 0.005, 0.005);
    poll.data = f;
    ev_timer_start(f->loop, &poll);
    while (*counter < want && mono_s() < end)
        ev_run(f->loop, EVRUN_ONCE);
    ev_timer_stop(f->loop, &poll);
    if (*counter < want)
        fail_msg("waited %.0f s for a count of %d, have %d (last down: %s)", WAIT_S, want,
                 *counter, f->why);
}

static void on_up(rconn *c, void *arg)
{
    fx *f = arg;
    f->ups++;
    if (f->free_in_up) {
        f->free_in_up = 0;
        rconn_free(c);
        f->c = NULL;
    }
}

static void on_down(rconn *c, const char *why, void *arg)
{
    fx *f = arg;
    (void)c;
    f->downs++;
    snprintf(f->why, sizeof f->why, "%s", why);
    if (f->free_in_down) {
        f->free_in_down = 0;
        rconn_free(c);
        f->c = NULL;
    }
}

static void on_reply(rconn *c, struct redisReply *r, void *priv)
{
    fx *f = priv;
    if (!r) {
        const char *ping[] = { "PING" };
        f->nulls++;
        f->cmd_in_null = rconn_command(c, on_reply, f, 0, 1, ping, NULL);
        if (f->free_in_null) {
            f->free_in_null = 0;
            rconn_free(c);
            f->c = NULL;
        }
    } else {
        f->replies++;
        if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS ||
            r->type == REDIS_REPLY_ERROR)
            snprintf(f->last, sizeof f->last, "%.*s", (int)r->len, r->str);
        else if (r->type == REDIS_REPLY_INTEGER)
            snprintf(f->last, sizeof f->last, "%lld", r->integer);
        else
            snprintf(f->last, sizeof f->last, "type %d", r->type);
    }
    if (f->free_in_cb) {
        f->free_in_cb = 0;
        rconn_free(c);
        f->c = NULL;
    }
}

static rconn_opts test_opts(fx *f)
{
    rconn_opts o;
    rconn_opts_default(&o);
    o.on_up = on_up;
    o.on_down = on_down;
    o.arg = f;
    o.client_name = "rconn-test";
    o.connect_ms = 1000;
    o.command_ms = 500;
    o.ping_ms = 200;
    o.backoff_min_ms = 20;
    o.backoff_max_ms = 200;
    return o;
}

static void connect_up(fx *f, const rconn_opts *o)
{
    int want = f->ups + 1;
    assert_int_equal(rconn_new(f->loop, &f->where, o, &f->c), 0);
    assert_false(rconn_is_up(f->c));
    run_until(f, &f->ups, want);
    assert_true(rconn_is_up(f->c));
}

static int cmd(fx *f, unsigned block_ms, int argc, const char **argv)
{
    return rconn_command(f->c, on_reply, f, block_ms, argc, argv, NULL);
}

#define SKIP_WITHOUT_REDIS() do { if (!have_redis()) { \
    print_message("redis-server is not installed (./dev test installs it): skipped\n"); \
    skip(); } } while (0)

/* ---- tests -------------------------------------------------------------- */

static void test_command(void **state)
{
    fx *f = *state;
    SKIP_WITHOUT_REDIS();
    redis_start(f);
    rconn_opts o = test_opts(f);
    connect_up(f, &o);
    const char *set[] = { "SET", "k", "v1" }, *get[] = { "GET", "k" };
    assert_int_equal(cmd(f, 0, 3, set), 0);
    assert_int_equal(cmd(f, 0, 2, get), 0);
    run_until(f, &f->replies, 2);
    assert_string_equal(f->last, "v1");
    /* Binary-safe arguments through argvlen. */
    const char *bin[] = { "SET", "b", "a\0b" };
    const size_t binlen[] = { 3, 1, 3 };
    assert_int_equal(rconn_command(f->c, on_reply, f, 0, 3, bin, binlen), 0);
    const char *strlen_[] = { "STRLEN", "b" };
    assert_int_equal(cmd(f, 0, 2, strlen_), 0);
    run_until(f, &f->replies, 4);
    assert_string_equal(f->last, "3");
    /* The handshake named us. */
    redisReply *r = side_cmd(f, "CLIENT LIST");
    assert_non_null(strstr(r->str, "name=rconn-test"));
    freeReplyObject(r);
    rconn_stats st;
    rconn_get_stats(f->c, &st);
    assert_int_equal(st.up, 1);
    assert_int_equal(st.connects, 1);
    assert_int_equal(st.commands, 4);
    assert_int_equal(st.pending, 0);
    assert_int_equal(f->downs, 0);
    assert_int_equal(f->nulls, 0);
}

static void test_deadline(void **state)
{
    fx *f = *state;
    SKIP_WITHOUT_REDIS();
    redis_start(f);
    rconn_opts o = test_opts(f);
    connect_up(f, &o);
    /* Redis holds BLPOP 0 forever; we named no block time: the deadline. */
    const char *blpop[] = { "BLPOP", "empty", "0" }, *ping[] = { "PING" };
    assert_int_equal(cmd(f, 0, 3, blpop), 0);
    assert_int_equal(cmd(f, 0, 1, ping), 0); /* behind it: NULL too */
    run_until(f, &f->downs, 1);
    assert_int_equal(f->nulls, 2);
    assert_int_equal(f->cmd_in_null, -ENOTCONN); /* down already inside */
    assert_int_equal(f->replies, 0);
    assert_non_null(strstr(f->why, "deadline"));
    assert_false(rconn_is_up(f->c));
    assert_int_equal(cmd(f, 0, 1, ping), -ENOTCONN);
    run_until(f, &f->ups, 2);
    rconn_stats st;
    rconn_get_stats(f->c, &st);
    assert_int_equal(st.timeouts, 1);
    assert_int_equal(st.disconnects, 1);
    assert_int_equal(st.connects, 2);
    /* A blocking command with its block time named is answered. */
    const char *blpop1[] = { "BLPOP", "empty", "0.8" };
    assert_int_equal(cmd(f, 800, 3, blpop1), 0);
    run_until(f, &f->replies, 1);
    assert_string_equal(f->last, "type 4"); /* REDIS_REPLY_NIL */
    assert_int_equal(f->downs, 1);
}

static void test_server_restart(void **state)
{
    fx *f = *state;
    SKIP_WITHOUT_REDIS();
    redis_start(f);
    rconn_opts o = test_opts(f);
    connect_up(f, &o);
    const char *blpop[] = { "BLPOP", "empty", "5" };
    assert_int_equal(cmd(f, 5000, 3, blpop), 0);
    redis_kill(f);
    run_until(f, &f->downs, 1);
    assert_int_equal(f->nulls, 1);
    /* Attempts fail while it is away, with a growing wait; one on_down. */
    rconn_stats st;
    run_until(f, &f->attempts, 6);
    rconn_get_stats(f->c, &st);
    assert_int_equal(f->downs, 1);
    assert_true(f->max_backoff > o.backoff_min_ms); /* it grew... */
    assert_true(f->max_backoff <= o.backoff_max_ms); /* ...within its bound */
    assert_non_null(strstr(st.last_error, "connect"));
    redis_start(f);
    run_until(f, &f->ups, 2);
    rconn_get_stats(f->c, &st);
    assert_int_equal(st.connects, 2);
    assert_int_equal(st.disconnects, 1);
}

static void test_client_kill(void **state)
{
    fx *f = *state;
    SKIP_WITHOUT_REDIS();
    redis_start(f);
    rconn_opts o = test_opts(f);
    connect_up(f, &o);
    /* Find our connection by its name, and kill it. */
    redisReply *r = side_cmd(f, "CLIENT LIST");
    const char *line = strstr(r->str, "name=rconn-test");
    assert_non_null(line);
    while (line > r->str && line[-1] != '\n')
        line--;
    unsigned long long id = 0;
    assert_int_equal(sscanf(line, "id=%llu", &id), 1);
    freeReplyObject(r);
    r = side_cmd(f, "CLIENT KILL ID %llu", id);
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
    run_until(f, &f->downs, 1);
    run_until(f, &f->ups, 2);
    const char *ping[] = { "PING" };
    assert_int_equal(cmd(f, 0, 1, ping), 0);
    run_until(f, &f->replies, 1);
    assert_string_equal(f->last, "PONG");
}

static void test_pending_max(void **state)
{
    fx *f = *state;
    SKIP_WITHOUT_REDIS();
    redis_start(f);
    rconn_opts o = test_opts(f);
    o.pending_max = 3;
    connect_up(f, &o);
    const char *ping[] = { "PING" };
    for (int i = 0; i < 3; i++)
        assert_int_equal(cmd(f, 0, 1, ping), 0);
    assert_int_equal(cmd(f, 0, 1, ping), -ENOBUFS);
    rconn_stats st;
    rconn_get_stats(f->c, &st);
    assert_int_equal(st.pending, 3);
    assert_int_equal(st.commands, 3);
    run_until(f, &f->replies, 3);
    assert_int_equal(cmd(f, 0, 1, ping), 0);
    run_until(f, &f->replies, 4);
    assert_int_equal(f->downs, 0);
}

static void test_free_in_callback(void **state)
{
    fx *f = *state;
    SKIP_WITHOUT_REDIS();
    redis_start(f);
    rconn_opts o = test_opts(f);
    connect_up(f, &o);
    const char *ping[] = { "PING" };
    for (int i = 0; i < 3; i++)
        assert_int_equal(cmd(f, 0, 1, ping), 0);
    f->free_in_cb = 1;
    run_until(f, &f->replies, 1);
    assert_null(f->c);
    assert_int_equal(f->replies, 1);
    assert_int_equal(f->nulls, 2); /* the two behind it, inside rconn_free */
    assert_int_equal(f->downs, 0);
    ev_run(f->loop, 0); /* the deferred free of the hiredis context */
    assert_int_equal(f->replies, 1);
    assert_int_equal(f->nulls, 2);
}

static void test_select(void **state)
{
    fx *f = *state;
    SKIP_WITHOUT_REDIS();
    redis_start(f);
    char url[200];
    snprintf(url, sizeof url, "unix:%s?db=3", f->sock);
    assert_int_equal(rurl_parse(url, 0, &f->where, NULL), 0);
    rconn_opts o = test_opts(f);
    connect_up(f, &o);
    const char *set[] = { "SET", "indb3", "yes" };
    assert_int_equal(cmd(f, 0, 3, set), 0);
    run_until(f, &f->replies, 1);
    redisReply *r = side_cmd(f, "EXISTS indb3");
    assert_int_equal(r->integer, 0); /* not in db 0 */
    freeReplyObject(r);
    redisContext *rc = redisConnectUnix(f->sock);
    assert_non_null(rc);
    freeReplyObject(redisCommand(rc, "SELECT 3"));
    r = redisCommand(rc, "GET indb3");
    assert_non_null(r);
    assert_string_equal(r->str, "yes");
    freeReplyObject(r);
    redisFree(rc);
    rconn_free(f->c);
    f->c = NULL;

    /* A database Redis refuses: down with Redis's reason, once. */
    snprintf(url, sizeof url, "unix:%s?db=99", f->sock);
    assert_int_equal(rurl_parse(url, 0, &f->where, NULL), 0);
    assert_int_equal(rconn_new(f->loop, &f->where, &o, &f->c), 0);
    run_until(f, &f->downs, 1);
    assert_non_null(strstr(f->why, "SELECT refused"));
    assert_int_equal(f->ups, 1);
}

static void test_silent_partition(void **state)
{
    fx *f = *state;
    SKIP_WITHOUT_REDIS();
    redis_start(f);
    rconn_opts o = test_opts(f);
    connect_up(f, &o);
    assert_int_equal(kill(f->redis, SIGSTOP), 0);
    ev_tstamp stopped = ev_time();
    run_until(f, &f->downs, 1);
    ev_tstamp took = ev_time() - stopped;
    assert_non_null(strstr(f->why, "heartbeat"));
    /* Noticed within ping_ms + command_ms, plus slack for a loaded machine. */
    assert_true(took < (o.ping_ms + o.command_ms) / 1000.0 + 1.0);
    assert_int_equal(kill(f->redis, SIGCONT), 0);
    run_until(f, &f->ups, 2);
    assert_true(rconn_is_up(f->c));
}

static void test_connect_timeout(void **state)
{
    fx *f = *state;
    /* A listener that never answers: the handshake's deadline. */
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", f->sock);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fd, 16), 0);
    rconn_opts o = test_opts(f);
    o.connect_ms = 100;
    assert_int_equal(rconn_new(f->loop, &f->where, &o, &f->c), 0);
    run_until(f, &f->downs, 1);
    assert_non_null(strstr(f->why, "connect timeout"));
    rconn_stats st;
    rconn_get_stats(f->c, &st);
    assert_int_equal(st.up, 0);
    assert_true(st.attempts >= 1);
    rconn_free(f->c);
    f->c = NULL;
    close(fd);
    /* No server at all: refused at connect. */
    unlink(f->sock);
    assert_int_equal(rconn_new(f->loop, &f->where, &o, &f->c), 0);
    run_until(f, &f->downs, 2);
    assert_non_null(strstr(f->why, "connect:"));
    assert_int_equal(f->ups, 0);
}

static void test_drop(void **state)
{
    fx *f = *state;
    SKIP_WITHOUT_REDIS();
    redis_start(f);
    rconn_opts o = test_opts(f);
    connect_up(f, &o);
    const char *ping[] = { "PING" };
    assert_int_equal(cmd(f, 0, 1, ping), 0);
    rconn_drop(f->c, "test drop");
    assert_int_equal(f->nulls, 1);
    assert_int_equal(f->downs, 1);
    assert_string_equal(f->why, "test drop");
    rconn_drop(f->c, "again"); /* down already: nothing */
    assert_int_equal(f->downs, 1);
    run_until(f, &f->ups, 2);
    /* Options it refuses. */
    rconn *bad = NULL;
    o.client_name = "has space";
    assert_int_equal(rconn_new(f->loop, &f->where, &o, &bad), -EINVAL);
    o.client_name = NULL;
    o.backoff_min_ms = 500;
    o.backoff_max_ms = 100;
    assert_int_equal(rconn_new(f->loop, &f->where, &o, &bad), -EINVAL);
}

/* rconn_free from each kind of callback: nothing runs after, nothing leaks
 * (ASan and valgrind watch this test). */
static void test_free_reentrant(void **state)
{
    fx *f = *state;
    SKIP_WITHOUT_REDIS();
    redis_start(f);
    rconn_opts o = test_opts(f);
    const char *ping[] = { "PING" };

    /* From on_up. */
    f->free_in_up = 1;
    assert_int_equal(rconn_new(f->loop, &f->where, &o, &f->c), 0);
    run_until(f, &f->ups, 1);
    assert_null(f->c);
    ev_run(f->loop, 0);
    assert_int_equal(f->downs, 0);

    /* From a NULL reply during a failure: the rest still get NULL, no
     * on_down, and a command sent from there is refused. */
    connect_up(f, &o);
    for (int i = 0; i < 3; i++)
        assert_int_equal(cmd(f, 0, 1, ping), 0);
    f->free_in_null = 1;
    rconn_drop(f->c, "test");
    assert_null(f->c);
    assert_int_equal(f->nulls, 3);
    assert_int_equal(f->cmd_in_null, -ENOTCONN);
    assert_int_equal(f->downs, 0);
    ev_run(f->loop, 0);
    assert_int_equal(f->replies, 0);

    /* From on_down, after a server-side kill. */
    connect_up(f, &o);
    assert_int_equal(cmd(f, 0, 1, ping), 0);
    run_until(f, &f->replies, 1);
    f->free_in_down = 1;
    redis_kill(f);
    run_until(f, &f->downs, 1);
    assert_null(f->c);
    ev_run(f->loop, 0);
    assert_int_equal(f->downs, 1);
}

/* A free loopback port: bound to 0, read, closed (another process could
 * take it in between; nothing else here picks ports). */
static unsigned free_port(void)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

static void test_tcp(void **state)
{
    fx *f = *state;
    char port[16], url[64];
    SKIP_WITHOUT_REDIS();
    snprintf(port, sizeof port, "%u", free_port());
    redis_start_args(f, port, "127.0.0.1");
    snprintf(url, sizeof url, "redis://127.0.0.1:%s/2", port);
    assert_int_equal(rurl_parse(url, 0, &f->where, NULL), 0);
    rconn_opts o = test_opts(f);
    connect_up(f, &o);
    const char *set[] = { "SET", "overtcp", "1" }, *get[] = { "GET", "overtcp" };
    assert_int_equal(cmd(f, 0, 3, set), 0);
    assert_int_equal(cmd(f, 0, 2, get), 0);
    run_until(f, &f->replies, 2);
    assert_string_equal(f->last, "1");
    redisReply *r = side_cmd(f, "CLIENT LIST");
    assert_non_null(strstr(r->str, "db=2"));
    freeReplyObject(r);
    /* A port nothing listens on: refused, reported once. */
    rconn_free(f->c);
    f->c = NULL;
    snprintf(url, sizeof url, "redis://127.0.0.1:%u", free_port());
    assert_int_equal(rurl_parse(url, 0, &f->where, NULL), 0);
    assert_int_equal(rconn_new(f->loop, &f->where, &o, &f->c), 0);
    f->attempts = 0;
    run_until(f, &f->attempts, 3);
    assert_int_equal(f->downs, 1);
    assert_int_equal(f->ups, 1);
}

/* Socket descriptors of this process that a child would inherit across
 * exec (no FD_CLOEXEC), counted through /proc/self/fd. */
static int inheritable_sockets(void)
{
    int n = 0;
    for (int fd = 0; fd < 1024; fd++) {
        char link[64], target[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t len = readlink(link, target, sizeof target - 1);
        if (len <= 0)
            continue;
        target[len] = '\0';
        int flags = fcntl(fd, F_GETFD);
        if (strncmp(target, "socket:", 7) == 0 && flags >= 0 && !(flags & FD_CLOEXEC))
            n++;
    }
    return n;
}

/* hiredis 0.14 creates its socket without SOCK_CLOEXEC: a worker forked
 * and exec'd by the supervisor must not inherit the Redis connection. */
static void test_cloexec(void **state)
{
    fx *f = *state;
    SKIP_WITHOUT_REDIS();
    redis_start(f);
    int before = inheritable_sockets();
    rconn_opts o = test_opts(f);
    connect_up(f, &o);
    assert_int_equal(inheritable_sockets(), before);
    /* And after a reconnect (a new socket). */
    rconn_drop(f->c, "test");
    run_until(f, &f->ups, 2);
    assert_int_equal(inheritable_sockets(), before);
    char port[16], url[64];
    snprintf(port, sizeof port, "%u", free_port());
    redis_kill(f);
    redis_start_args(f, port, "127.0.0.1");
    snprintf(url, sizeof url, "redis://127.0.0.1:%s", port);
    rconn_free(f->c);
    f->c = NULL;
    assert_int_equal(rurl_parse(url, 0, &f->where, NULL), 0);
    connect_up(f, &o);
    assert_int_equal(inheritable_sockets(), before);
}

/* A step back of the wall clock while a command waits must not put its
 * deadline off by the step (here an hour): the deadline still fires. */
static void test_deadline_ignores_a_clock_step(void **state)
{
    fx *f = *state;
    SKIP_WITHOUT_REDIS();
    redis_start(f);
    rconn_opts o = test_opts(f);
    o.ping_ms = 0;
    connect_up(f, &o);
    const char *blpop[] = { "BLPOP", "empty", "0" };
    assert_int_equal(cmd(f, 0, 3, blpop), 0); /* held by Redis for ever */
    realtime_shift_s = -3600;
    double sent = mono_s();
    run_until(f, &f->downs, 1);
    realtime_shift_s = 0;
    assert_non_null(strstr(f->why, "deadline"));
    assert_true(mono_s() - sent < o.command_ms / 1000.0 + 2.0);
    assert_int_equal(f->nulls, 1);
}

/* The heartbeat's PING is not the caller's: it takes none of pending_max.
 * Else a caller at pending_max 1 with nothing of its own pending would be
 * refused, with no reply of its own to come that could tell it to retry. */
static void test_pending_max_leaves_out_the_heartbeat(void **state)
{
    fx *f = *state;
    SKIP_WITHOUT_REDIS();
    redis_start(f);
    rconn_opts o = test_opts(f);
    o.pending_max = 1;
    o.command_ms = 5000; /* the PING held below must not time out first */
    connect_up(f, &o);
    assert_int_equal(kill(f->redis, SIGSTOP), 0); /* the PING stays pending */
    f->pending = 0; /* the handshake's, seen while connecting */
    run_until(f, &f->pending, 1);
    rconn_stats st;
    rconn_get_stats(f->c, &st);
    assert_int_equal(st.pending, 1);
    assert_int_equal(st.commands, 0);
    const char *ping[] = { "PING" };
    assert_int_equal(cmd(f, 0, 1, ping), 0);
    assert_int_equal(cmd(f, 0, 1, ping), -ENOBUFS); /* the caller's one is */
    assert_int_equal(kill(f->redis, SIGCONT), 0);
    run_until(f, &f->replies, 1);
    assert_string_equal(f->last, "PONG");
    assert_int_equal(f->downs, 0);
}

/* 1 when ::1 can be bound here (a host without IPv6 skips the test). */
static int have_ipv6_loopback(void)
{
    struct sockaddr_in6 sa = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0), ok;
    ok = fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* An [IPv6] literal from the URL reaches hiredis without its brackets and
 * connects (hiredis 0.14 tries IPv4 first, then IPv6). */
static void test_tcp_ipv6(void **state)
{
    fx *f = *state;
    char port[16], url[64];
    SKIP_WITHOUT_REDIS();
    if (!have_ipv6_loopback()) {
        print_message("no IPv6 loopback here: skipped\n");
        skip();
    }
    snprintf(port, sizeof port, "%u", free_port());
    redis_start_args(f, port, "::1");
    snprintf(url, sizeof url, "redis://[::1]:%s/3", port);
    assert_int_equal(rurl_parse(url, 0, &f->where, NULL), 0);
    rconn_opts o = test_opts(f);
    connect_up(f, &o);
    const char *ping[] = { "PING" };
    assert_int_equal(cmd(f, 0, 1, ping), 0);
    run_until(f, &f->replies, 1);
    assert_string_equal(f->last, "PONG");
    redisReply *r = side_cmd(f, "CLIENT LIST");
    assert_non_null(strstr(r->str, "addr=[::1]:"));
    assert_non_null(strstr(r->str, "db=3"));
    freeReplyObject(r);
}

/* A command behind a blocking one waits as long as that one may: its own
 * command_ms (500 ms here) would end before Redis answers the BLPOP (1 s),
 * so it inherits the BLPOP's deadline; the timer is re-armed for each
 * oldest command in turn and neither is cut. */
static void test_a_command_behind_a_blocking_one(void **state)
{
    fx *f = *state;
    SKIP_WITHOUT_REDIS();
    redis_start(f);
    rconn_opts o = test_opts(f);
    o.ping_ms = 0;
    connect_up(f, &o);
    const char *blpop[] = { "BLPOP", "empty", "1" }, *ping[] = { "PING" };
    assert_int_equal(cmd(f, 1000, 3, blpop), 0);
    assert_int_equal(cmd(f, 0, 1, ping), 0);
    run_until(f, &f->replies, 2);
    assert_string_equal(f->last, "PONG");
    assert_int_equal(f->downs, 0);
    assert_int_equal(f->nulls, 0);
    rconn_stats st;
    rconn_get_stats(f->c, &st);
    assert_int_equal(st.timeouts, 0);
    assert_int_equal(st.pending, 0);
}

/* rconn_flush writes what the commands appended with the loop never run
 * again: a close right after them (the bus bridge's goodbye) must not
 * lose them. Without it the SET below is never written. */
static void test_flush_writes_without_the_loop(void **state)
{
    fx *f = *state;
    SKIP_WITHOUT_REDIS();
    redis_start(f);
    rconn_opts o = test_opts(f);
    connect_up(f, &o);
    const char *set[] = { "SET", "flushed", "yes" };
    assert_int_equal(cmd(f, 0, 3, set), 0);
    assert_int_equal(rconn_flush(f->c, 2000), 0);
    rconn_free(f->c);
    f->c = NULL;
    /* Redis reads it in its own time: asked again, bounded. */
    int found = 0;
    for (int i = 0; i < 200 && !found; i++) {
        redisReply *r = side_cmd(f, "GET flushed");
        found = r->type == REDIS_REPLY_STRING && strcmp(r->str, "yes") == 0;
        freeReplyObject(r);
        if (!found)
            usleep(10 * 1000);
    }
    assert_true(found);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_command, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flush_writes_without_the_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_command_behind_a_blocking_one, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_kill, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pending_max, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_in_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_select, setup, teardown),
        cmocka_unit_test_setup_teardown(test_silent_partition, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_reentrant, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tcp, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tcp_ipv6, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cloexec, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deadline_ignores_a_clock_step, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pending_max_leaves_out_the_heartbeat, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
