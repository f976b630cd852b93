/* Unit tests: the metrics renderer and endpoint (src/server/metrics.c):
 * the exposition rendered from a stats object, label values escaped, the
 * bound on the body; and on a real loop, a scraper that never reads its
 * answer does not hold up another, one over the limit is answered 503. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "server/metrics.h"

/* ------------------------------------------------------------- renderer */

static char *render(const char *json_text)
{
    json_error_t err;
    json_t *stats = json_loads(json_text, 0, &err);
    metrics_buf b = {NULL, 0, 0, METRICS_BODY_MAX, 0};

    if (!stats)
        fail_msg("bad JSON in the test: %s", err.text);
    assert_int_equal(metrics_render(&metrics_server_table, stats, &b), 0);
    json_decref(stats);
    return b.p ? b.p : strdup("");
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

static void test_render_families(void **state)
{
    char *text = render("{\"ok\": true, \"pid\": 12, \"accepted\": 7, \"active\": 2,"
                        " \"denied\": 1, \"proxy_bad\": 0,"
                        " \"exited\": {\"0\": 5, \"3\": 1}, \"killed\": {\"SIGKILL\": 1},"
                        " \"children\": {\"running\": 2, \"terminating\": 0},"
                        " \"process\": {\"cpu_seconds\": 0.25, \"resident_bytes\": null,"
                        "   \"start_time_seconds\": 1700000000.5, \"version\": \"0.3.0\"}}");
    (void)state;

    assert_non_null(strstr(text, "# HELP sockfork_connections_accepted_total "));
    assert_non_null(strstr(text, "# TYPE sockfork_connections_accepted_total counter\n"
                                 "sockfork_connections_accepted_total 7\n"));
    assert_non_null(strstr(text, "# TYPE sockfork_connections_active gauge\n"
                                 "sockfork_connections_active 2\n"));
    /* A family whose first row is missing still has one HELP and TYPE,
     * before its first sample. */
    assert_int_equal(count(text, "# TYPE sockfork_connections_refused_total counter\n"), 1);
    assert_non_null(strstr(text, "# TYPE sockfork_connections_refused_total counter\n"
                                 "sockfork_connections_refused_total{reason=\"denied\"} 1\n"
                                 "sockfork_connections_refused_total{reason=\"proxy_bad\"} 0\n"));
    assert_int_equal(count(text, "# HELP sockfork_connections_refused_total Connections"), 1);
    assert_non_null(strstr(text, "sockfork_children_exited_total{code=\"0\"} 5\n"
                                 "sockfork_children_exited_total{code=\"3\"} 1\n"));
    assert_non_null(strstr(text, "sockfork_children_killed_total{signal=\"SIGKILL\"} 1\n"));
    assert_non_null(strstr(text, "sockfork_children{state=\"running\"} 2\n"));
    assert_non_null(strstr(text, "process_cpu_seconds_total 0.25\n"));
    assert_non_null(strstr(text, "process_start_time_seconds 1700000000.5\n"));
    assert_non_null(strstr(text, "sockfork_build_info{version=\"0.3.0\"} 1\n"));
    /* What the snapshot does not have is not there at all: no workers in
     * fork mode, no resident size it could not read, not the pid. */
    assert_null(strstr(text, "sockfork_workers"));
    assert_null(strstr(text, "process_resident_memory_bytes"));
    assert_null(strstr(text, "pid"));
    /* Every line is a comment or a sample ending in a newline. */
    assert_true(text[strlen(text) - 1] == '\n');
    free(text);
}

static void test_render_prefork(void **state)
{
    char *text = render("{\"workers\": {\"idle\": 3, \"busy\": 1, \"starting\": 0, \"retiring\": 0,"
                        " \"min\": 2, \"max\": 8, \"started\": 4,"
                        " \"ended\": {\"idle\": 0, \"crashed\": 1}, \"served\": {\"123\": 4}}}");
    (void)state;

    assert_non_null(strstr(text, "# TYPE sockfork_workers gauge\n"
                                 "sockfork_workers{state=\"idle\"} 3\n"
                                 "sockfork_workers{state=\"busy\"} 1\n"));
    assert_non_null(strstr(text, "sockfork_workers_started_total 4\n"));
    assert_non_null(strstr(text, "sockfork_workers_ended_total{reason=\"crashed\"} 1\n"));
    assert_null(strstr(text, "123")); /* no label per pid */
    free(text);
}

static void test_label_values_escaped(void **state)
{
    char *text = render("{\"top_topics\": {\"room:a\\\"b\\\\c\\nd\": 3, \"room:\u00e9t\u00e9\": 1}}");
    metrics_buf b = {NULL, 0, 0, 64, 0};
    (void)state;

    assert_non_null(strstr(text, "sockfork_bus_topic_subscribers{topic=\"room:a\\\"b\\\\c\\nd\"} 3\n"));
    assert_non_null(strstr(text, "sockfork_bus_topic_subscribers{topic=\"room:\xc3\xa9t\xc3\xa9\"} 1\n"));
    free(text);

    metrics_put_label_value(&b, "x\\\"\ny", 5);
    assert_int_equal(b.failed, 0);
    assert_string_equal(b.p, "x\\\\\\\"\\ny");
    metrics_put_label_value(&b, "plain", 5);
    assert_string_equal(b.p, "x\\\\\\\"\\nyplain");
    free(b.p);
}

static void test_body_bounded(void **state)
{
    json_t *stats = json_pack("{s:i, s:i}", "accepted", 1, "active", 2);
    metrics_buf b = {NULL, 0, 0, 100, 0};
    (void)state;

    assert_int_equal(metrics_render(&metrics_server_table, stats, &b), -ENOSPC);
    assert_true(b.len < 100);
    free(b.p);
    json_decref(stats);
}

/* ------------------------------------------------------------- endpoint */

typedef struct fixture {
    struct ev_loop *loop;
    metrics *m;
    char dir[64], path[128], addr[140];
    int topics;       /* how many the snapshot lists */
    int snapshots;
} fixture;

static json_t *snapshot(void *arg)
{
    fixture *f = arg;
    json_t *top;
    char key[32];

    f->snapshots++;
    if (f->topics < 0)
        return NULL; /* out of memory, as server_stats says it */
    top = json_object();
    for (int i = 0; i < f->topics; i++) {
        snprintf(key, sizeof key, "room:t%06d", i);
        json_object_set_new(top, key, json_integer(i));
    }
    return json_pack("{s:i, s:o}", "accepted", 42, "top_topics", top);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);

    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/test_metrics.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/m.sock", f->dir);
    snprintf(f->addr, sizeof f->addr, "unix:%s", f->path);
    f->loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(f->loop);
    assert_int_equal(
        metrics_open(&f->m, f->loop, f->addr, &metrics_server_table, snapshot, f), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;

    metrics_close(f->m);
    assert_int_equal(access(f->path, F_OK), -1); /* its path removed */
    ev_loop_destroy(f->loop);
    rmdir(f->dir);
    free(f);
    return 0;
}

static int client(const fixture *f)
{
    struct sockaddr_un sun;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    strcpy(sun.sun_path, f->path);
    assert_int_equal(connect(fd, (struct sockaddr *)&sun, sizeof sun), 0);
    assert_int_equal(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
    return fd;
}

static void turn(fixture *f, int n)
{
    for (int i = 0; i < n; i++)
        ev_run(f->loop, EVRUN_NOWAIT);
}

/* Reads fd to its end, turning the loop between reads (one process: the
 * server only writes when the loop turns). Returns a malloc'd text. */
static char *read_all(fixture *f, int fd, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);

    assert_non_null(buf);
    for (int spins = 0; spins < 100000; spins++) {
        ssize_t r;
        turn(f, 1);
        r = read(fd, buf + n, cap - n - 1);
        if (r == 0)
            break;
        if (r < 0) {
            assert_true(errno == EAGAIN);
            continue;
        }
        n += (size_t)r;
        if (n + 1 == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* Its Content-Length is what came after the head. */
static void assert_length_right(const char *text, size_t len)
{
    const char *body = strstr(text, "\r\n\r\n");
    const char *cl = strstr(text, "Content-Length: ");

    assert_non_null(body);
    assert_non_null(cl);
    assert_int_equal(strtoul(cl + 16, NULL, 10), len - (size_t)(body + 4 - text));
}

/* A whole 200 answer. */
static void assert_whole_answer(const char *text, size_t len)
{
    assert_true(strncmp(text, "HTTP/1.1 200 OK\r\n", 17) == 0);
    assert_non_null(strstr(text, "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    assert_length_right(text, len);
}

static void test_stalled_reader_does_not_hold_others(void **state)
{
    fixture *f = *state;
    const char *req = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    size_t len_a, len_b;
    char *a_text, *b_text;
    int a, b, avail;

    f->topics = 12000; /* some 600 KB: more than a Unix socket holds */
    a = client(f);
    assert_int_equal(write(a, req, strlen(req)), (ssize_t)strlen(req));
    turn(f, 50); /* a's answer fills its socket; a reads nothing */
    assert_int_equal(f->snapshots, 1);
    assert_int_equal(ioctl(a, FIONREAD, &avail), 0);
    assert_true(avail > 0 && avail < 12000 * 40); /* the rest waits on the server's side */

    b = client(f);
    assert_int_equal(write(b, req, strlen(req)), (ssize_t)strlen(req));
    b_text = read_all(f, b, &len_b);
    assert_whole_answer(b_text, len_b);
    assert_non_null(strstr(b_text, "sockfork_bus_topic_subscribers{topic=\"room:t011999\"} 11999\n"));

    a_text = read_all(f, a, &len_a); /* a reads at last: all of it is there */
    assert_whole_answer(a_text, len_a);
    assert_int_equal(len_a, len_b);
    free(a_text);
    free(b_text);
    close(a);
    close(b);
}

static void test_scrapers_bounded(void **state)
{
    fixture *f = *state;
    int fds[METRICS_SCRAPERS_MAX + 1];
    size_t len;
    char *text;

    for (int i = 0; i < METRICS_SCRAPERS_MAX; i++)
        fds[i] = client(f);
    turn(f, 5);
    fds[METRICS_SCRAPERS_MAX] = client(f);
    text = read_all(f, fds[METRICS_SCRAPERS_MAX], &len);
    assert_true(strncmp(text, "HTTP/1.1 503 Service Unavailable\r\n", 34) == 0);
    assert_length_right(text, len);
    free(text);
    /* One of the eight asks: served as usual. */
    assert_int_equal(write(fds[0], "GET /metrics HTTP/1.0\r\n\r\n", 25), 25);
    text = read_all(f, fds[0], &len);
    assert_whole_answer(text, len);
    free(text);
    for (int i = 0; i <= METRICS_SCRAPERS_MAX; i++)
        close(fds[i]);
}

static void ask(fixture *f, const char *req, const char *status_line)
{
    int fd = client(f);
    size_t len;
    char *text;

    assert_int_equal(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    text = read_all(f, fd, &len);
    if (strncmp(text, status_line, strlen(status_line)) != 0)
        fail_msg("%s: got %.60s", req, text);
    assert_length_right(text, len);
    assert_non_null(strstr(text, "Connection: close\r\n"));
    free(text);
    close(fd);
}

static void test_statuses(void **state)
{
    fixture *f = *state;
    char *big = malloc(HTTP_HEAD_MAX + 100);
    (void)state;

    ask(f, "GET /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 200 OK\r\n");
    ask(f, "GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found\r\n");
    ask(f, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 405 Method Not Allowed\r\n");
    ask(f, "hello there\r\n", "HTTP/1.1 400 Bad Request\r\n");
    ask(f, "GET /metrics HTTP/3.0\r\n\r\n", "HTTP/1.1 505 ");
    assert_non_null(big);
    memset(big, 'a', HTTP_HEAD_MAX + 99);
    memcpy(big, "GET /metrics HTTP/1.1\r\nX: ", 26);
    big[HTTP_HEAD_MAX + 99] = '\0';
    ask(f, big, "HTTP/1.1 431 ");
    free(big);
}

/* A body past METRICS_BODY_MAX, or no snapshot: 500, and the endpoint
 * goes on. */
static void test_render_failures_are_500(void **state)
{
    fixture *f = *state;

    f->topics = 25000; /* some 1.3 MB */
    ask(f, "GET /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 500 Internal Server Error\r\n");
    f->topics = -1;
    ask(f, "GET /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 500 Internal Server Error\r\n");
    f->topics = 3;
    ask(f, "GET /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 200 OK\r\n");
    assert_int_equal(f->snapshots, 3);
}

/* HEAD: the headers of GET's answer, no body. */
static void test_head(void **state)
{
    fixture *f = *state;
    int fd = client(f);
    size_t len;
    char *text;

    assert_int_equal(write(fd, "HEAD /metrics HTTP/1.1\r\n\r\n", 26), 26);
    text = read_all(f, fd, &len);
    assert_true(strncmp(text, "HTTP/1.1 200 OK\r\n", 17) == 0);
    assert_true(len > 4 && strcmp(text + len - 4, "\r\n\r\n") == 0);
    assert_null(strstr(text, "sockfork_"));
    free(text);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_families),
        cmocka_unit_test(test_render_prefork),
        cmocka_unit_test(test_label_values_escaped),
        cmocka_unit_test(test_body_bounded),
        cmocka_unit_test_setup_teardown(test_stalled_reader_does_not_hold_others, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scrapers_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_statuses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head, setup, teardown),
        cmocka_unit_test_setup_teardown(test_render_failures_are_500, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
