/* Unit tests: the task pool's metrics endpoint (src/pool/scrape.c): its
 * snapshot, its rendering through the pool's table, a scrape answered
 * while sf_pool_run runs (by a C task, from its worker), and binding
 * errors at sf_pool_new. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <sockfork.h>
#include "pool/pool_internal.h"
#include "server/metrics.h"

#define BODY_MAX 16384

static char scraped[BODY_MAX];  /* what the scraping task got */
static size_t scraped_len;
static unsigned long reports;

static void on_done(sf_pool *p, const sf_task_report *r, void *arg)
{
    (void)p;
    (void)arg;
    reports++;
    if (r->result && r->result_len < sizeof scraped) {
        memcpy(scraped, r->result, r->result_len);
        scraped[r->result_len] = '\0';
        scraped_len = r->result_len;
    }
}

/* Exits with the code its argument byte says. */
static int exit_with(sf_task *t, const void *arg, size_t len, void *task_arg)
{
    (void)t;
    (void)len;
    (void)task_arg;
    return *(const unsigned char *)arg;
}

static sf_pool_opts base_opts(sf_task_cb task)
{
    sf_pool_opts o;

    sf_pool_opts_init(&o);
    o.jobs = 2;
    o.task = task;
    o.on_done = on_done;
    return o;
}

static char *render(sf_pool *p)
{
    json_t *snap = pool_stats_json(p);
    metrics_buf b = {NULL, 0, 0, METRICS_BODY_MAX, 0};

    assert_non_null(snap);
    assert_int_equal(metrics_render(&metrics_pool_table, snap, &b), 0);
    json_decref(snap);
    assert_non_null(b.p);
    return b.p;
}

/* Three tasks that succeed and two that fail: the snapshot has
 * sf_pool_stats's numbers by its names, and the body says them. */
static void test_snapshot_and_body(void **state)
{
    static const unsigned char codes[] = {0, 3, 0, 3, 0};
    sf_pool_opts o = base_opts(exit_with);
    sf_pool *p;
    json_t *snap;
    char *body;

    (void)state;
    assert_int_equal(sf_pool_new(&p, &o), 0);
    assert_null(sf_pool_metrics_addr(p));
    for (size_t i = 0; i < sizeof codes; i++)
        assert_int_equal(sf_pool_submit(p, &codes[i], 1, NULL, NULL), 0);
    assert_int_equal(sf_pool_run(p), 0);

    snap = pool_stats_json(p);
    assert_non_null(snap);
    assert_int_equal(json_integer_value(json_object_get(snap, "jobs")), 2);
    assert_int_equal(json_integer_value(json_object_get(snap, "submitted")), 5);
    assert_int_equal(json_integer_value(json_object_get(snap, "started")), 5);
    assert_int_equal(json_integer_value(json_object_get(snap, "ok")), 3);
    assert_int_equal(json_integer_value(json_object_get(snap, "failed")), 2);
    assert_int_equal(json_integer_value(json_object_get(snap, "failed_by_code")), 2);
    assert_int_equal(json_integer_value(json_object_get(snap, "running")), 0);
    assert_int_equal(json_integer_value(json_object_get(snap, "pending")), 0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(snap, "process"),
                                                          "version")),
                        sf_version());
    json_decref(snap);

    body = render(p);
    assert_non_null(strstr(body, "# TYPE sockfork_tasks_succeeded_total counter\n"
                                 "sockfork_tasks_succeeded_total 3\n"));
    assert_non_null(strstr(body, "sockfork_tasks_failed_total{reason=\"exit_code\"} 2\n"
                                 "sockfork_tasks_failed_total{reason=\"signal\"} 0\n"));
    assert_non_null(
        strstr(body, "# TYPE sockfork_tasks_running gauge\nsockfork_tasks_running 0\n"));
    assert_non_null(strstr(body, "sockfork_tasks_max 2\n"));
    assert_non_null(strstr(body, "sockfork_tasks_started_total 5\n"));
    assert_non_null(strstr(body, "# TYPE process_cpu_seconds_total counter\n"));
    assert_non_null(strstr(body, "sockfork_build_info{version=\""));
    assert_null(strstr(body, "sockfork_connections")); /* the server's table is not used */
    free(body);
    sf_pool_free(p);
}

/* GET /metrics from the worker, to the port in task_arg; the answer is
 * its result. */
static int scrape_parent(sf_task *t, const void *arg, size_t len, void *task_arg)
{
    static const char req[] = "GET /metrics HTTP/1.1\r\n\r\n";
    struct sockaddr_in sa = {.sin_family = AF_INET};
    struct timeval tv = {.tv_sec = 10}; /* unanswered: fail, not hang */
    char buf[BODY_MAX];
    size_t got = 0;
    ssize_t n;
    int fd;

    (void)arg;
    (void)len;
    sa.sin_port = htons(*(const unsigned short *)task_arg);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if ((fd = socket(AF_INET, SOCK_STREAM, 0)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0 ||
        connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        write(fd, req, sizeof req - 1) != (ssize_t)(sizeof req - 1))
        return 2;
    while (got < sizeof buf && (n = read(fd, buf + got, sizeof buf - got)) > 0)
        got += (size_t)n;
    close(fd);
    return sf_task_result(t, buf, got) == 0 ? 0 : 3;
}

/* The endpoint answers while the run runs: a task of the pool scrapes it
 * and sees itself running. */
static void test_scraped_while_running(void **state)
{
    static unsigned short port;
    sf_pool_opts o = base_opts(scrape_parent);
    sf_pool *p;
    sf_pool_stats st;
    const char *body;

    (void)state;
    o.jobs = 1;
    o.task_arg = &port;
    o.metrics_addr = "127.0.0.1:0";
    assert_int_equal(sf_pool_new(&p, &o), 0);
    assert_non_null(sf_pool_metrics_addr(p));
    port = (unsigned short)sf_addr_port(sf_pool_metrics_addr(p));
    assert_true(port > 0);
    scraped_len = 0;
    reports = 0;
    assert_int_equal(sf_pool_submit(p, "x", 1, NULL, NULL), 0);
    assert_int_equal(sf_pool_run(p), 0);
    sf_pool_get_stats(p, &st);
    assert_int_equal(st.ok, 1);
    assert_int_equal(reports, 1);
    assert_true(strncmp(scraped, "HTTP/1.1 200 OK\r\n", 17) == 0);
    body = strstr(scraped, "\r\n\r\n");
    assert_non_null(body);
    assert_non_null(strstr(body, "\nsockfork_tasks_running 1\n"));
    assert_non_null(strstr(body, "\nsockfork_tasks_started_total 1\n"));
    assert_non_null(strstr(body, "\nsockfork_task_workers_started_total 1\n"));
    sf_pool_free(p);
}

/* Its descriptors' targets, one a line, as its result (the directory's
 * own descriptor left out). */
static int list_fds(sf_task *t, const void *arg, size_t len, void *task_arg)
{
    char out[4096], target[256];
    size_t used = 0;
    struct dirent *e;
    DIR *d = opendir("/proc/self/fd");

    (void)arg;
    (void)len;
    (void)task_arg;
    if (!d)
        return 2;
    while ((e = readdir(d)) != NULL) {
        ssize_t n;
        if (e->d_name[0] == '.' || atoi(e->d_name) == dirfd(d))
            continue;
        if ((n = readlinkat(dirfd(d), e->d_name, target, sizeof target - 1)) < 0)
            continue;
        target[n] = '\0';
        used += (size_t)snprintf(out + used, sizeof out - used, "%s %s\n", e->d_name, target);
        if (used >= sizeof out)
            break;
    }
    closedir(d);
    return used < sizeof out && sf_task_result(t, out, used) == 0 ? 0 : 3;
}

/* A C task's worker, forked while the endpoint listens, has neither its
 * listener nor the loop's epoll: its stdio and its channel only. */
static void test_worker_has_no_metrics_descriptor(void **state)
{
    sf_pool_opts o = base_opts(list_fds);
    sf_pool *p;
    int sockets = 0;

    (void)state;
    o.jobs = 1;
    o.metrics_addr = "127.0.0.1:0";
    assert_int_equal(sf_pool_new(&p, &o), 0);
    scraped_len = 0;
    assert_int_equal(sf_pool_submit(p, "x", 1, NULL, NULL), 0);
    assert_int_equal(sf_pool_run(p), 0);
    assert_true(scraped_len > 0);
    for (const char *s = scraped; (s = strstr(s, "socket:")) != NULL; s++)
        sockets++;
    assert_int_equal(sockets, 1); /* the channel */
    assert_null(strstr(scraped, "eventpoll"));
    sf_pool_free(p);
}

/* A taken port and a malformed address fail sf_pool_new, which leaves
 * nothing behind. */
static void test_bind_errors_at_new(void **state)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof sa;
    sf_pool_opts o = base_opts(exit_with);
    char addr[64];
    sf_pool *p = (sf_pool *)1;
    int fd;

    (void)state;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fd, 1), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    snprintf(addr, sizeof addr, "127.0.0.1:%u", ntohs(sa.sin_port));
    o.metrics_addr = addr;
    assert_int_equal(sf_pool_new(&p, &o), -EADDRINUSE);
    assert_null(p);
    close(fd);
    o.metrics_addr = "127.0.0.1";
    assert_int_equal(sf_pool_new(&p, &o), -EINVAL);
    assert_null(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_snapshot_and_body),
        cmocka_unit_test(test_scraped_while_running),
        cmocka_unit_test(test_worker_has_no_metrics_descriptor),
        cmocka_unit_test(test_bind_errors_at_new),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
