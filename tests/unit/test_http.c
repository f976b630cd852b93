/* Unit tests: the HTTP request-head parser of the metrics endpoint
 * (src/server/http.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/http.h"

static int parse(const char *text, http_request *req)
{
    return http_parse(text, strlen(text), req);
}

static void test_simple_get(void **state)
{
    http_request req;
    const char *text = "GET /metrics HTTP/1.1\r\nHost: localhost:9100\r\nAccept: */*\r\n\r\n";
    (void)state;

    assert_int_equal(parse(text, &req), HTTP_DONE);
    assert_string_equal(req.method, "GET");
    assert_string_equal(req.path, "/metrics");
    assert_int_equal(req.minor, 1);
    assert_int_equal(req.nheaders, 2);
    assert_int_equal(req.head_len, strlen(text));
}

/* Prometheus's own request, as it sends it. */
static void test_prometheus_request(void **state)
{
    http_request req;
    (void)state;

    assert_int_equal(parse("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9100\r\n"
                           "User-Agent: Prometheus/2.42.0\r\n"
                           "Accept: application/openmetrics-text;version=1.0.0,application/"
                           "openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;"
                           "q=0.5,*/*;q=0.1\r\nAccept-Encoding: gzip\r\n"
                           "X-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n",
                           &req),
                     HTTP_DONE);
    assert_int_equal(req.nheaders, 5);
}

static void test_bare_lf_and_http10(void **state)
{
    http_request req;
    (void)state;

    assert_int_equal(parse("HEAD /metrics?x=1&y HTTP/1.0\n\n", &req), HTTP_DONE);
    assert_string_equal(req.method, "HEAD");
    assert_string_equal(req.path, "/metrics"); /* the query is not the path */
    assert_int_equal(req.minor, 0);
    assert_int_equal(req.nheaders, 0);
    assert_int_equal(req.head_len, 30);
}

/* Bytes after the head (a body, a pipelined request) are not its. */
static void test_head_len_stops_at_blank_line(void **state)
{
    http_request req;
    const char *text = "POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET";
    (void)state;

    assert_int_equal(parse(text, &req), HTTP_DONE);
    assert_int_equal(req.head_len, strlen(text) - 6);
    assert_string_equal(req.method, "POST");
}

/* Every prefix of a good head needs more; the whole is done. */
static void test_every_prefix_needs_more(void **state)
{
    http_request req;
    const char *text = "GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n";
    (void)state;

    for (size_t n = 0; n < strlen(text); n++)
        assert_int_equal(http_parse(text, n, &req), HTTP_MORE);
    assert_int_equal(http_parse(text, strlen(text), &req), HTTP_DONE);
}

static void test_garbage_is_400(void **state)
{
    static const char *const bad[] = {
        "\r\n",                                     /* empty line first */
        "GET\r\n\r\n",                              /* no target */
        "GET  /metrics HTTP/1.1\r\n\r\n",           /* two spaces */
        "GET metrics HTTP/1.1\r\n\r\n",             /* not origin form */
        "GET /metrics\r\n\r\n",                     /* HTTP/0.9 */
        "GET /metrics HTTP/1.1 \r\n\r\n",           /* trailing space */
        "GET /metrics http/1.1\r\n\r\n",            /* lower-case protocol */
        "GET /met\trics HTTP/1.1\r\n\r\n",          /* a control character */
        "GET /metrics HTTP/1.1\r\r\n\r\n",          /* a bare CR */
        "G(T /metrics HTTP/1.1\r\n\r\n",            /* not a token */
        "GETGETGETGETGETGET1 / HTTP/1.1\r\n\r\n",   /* method too long */
        "GET / HTTP/1.1\r\nHost a\r\n\r\n",         /* no colon */
        "GET / HTTP/1.1\r\n: a\r\n\r\n",            /* empty name */
        "GET / HTTP/1.1\r\nHo st: a\r\n\r\n",       /* space in the name */
        "GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n",  /* obs-fold */
        "GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n",    /* control in a value */
        "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",     /* bare CR in a value */
        "\x16\x03\x01\x02\x10\x01\x05\x01\xfc\x03\x03\n", /* a TLS hello */
    };
    http_request req;
    (void)state;

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = parse(bad[i], &req);
        if (rc != -EINVAL)
            fail_msg("case %zu: %d, not -EINVAL", i, rc);
        assert_int_equal(http_error_status(rc), 400);
    }
}

/* An error on a complete line is known before the head ends. */
static void test_error_before_the_end(void **state)
{
    http_request req;
    (void)state;

    assert_int_equal(parse("BAD LINE\r\nHost: a\r\n", &req), -EINVAL);
    assert_int_equal(parse("GET / HTTP/1.1\r\nbroken\r\n", &req), -EINVAL);
}

static void test_version_505(void **state)
{
    http_request req;
    (void)state;

    assert_int_equal(parse("GET / HTTP/2.0\r\n\r\n", &req), -EPROTONOSUPPORT);
    assert_int_equal(http_error_status(-EPROTONOSUPPORT), 505);
}

static void test_long_target_414(void **state)
{
    http_request req;
    char text[HTTP_TARGET_MAX + 64];
    (void)state;

    memset(text, 'a', sizeof text);
    memcpy(text, "GET /", 5);
    snprintf(text + 4 + HTTP_TARGET_MAX + 1, sizeof text - (4 + HTTP_TARGET_MAX + 1),
             " HTTP/1.1\r\n\r\n");
    assert_int_equal(parse(text, &req), -ENAMETOOLONG);
    assert_int_equal(http_error_status(-ENAMETOOLONG), 414);
    /* One byte shorter is fine. */
    snprintf(text + 4 + HTTP_TARGET_MAX, sizeof text - (4 + HTTP_TARGET_MAX), " HTTP/1.1\r\n\r\n");
    assert_int_equal(parse(text, &req), HTTP_DONE);
    assert_int_equal(strlen(req.path), HTTP_TARGET_MAX);
}

/* A head without its end in HTTP_HEAD_MAX bytes: 431, and the same for
 * any longer buffer; one that ends just inside is fine. */
static void test_head_max_431(void **state)
{
    http_request req;
    char *buf = malloc(HTTP_HEAD_MAX + 100);
    const char *line = "GET / HTTP/1.1\r\n";
    size_t at;
    (void)state;

    assert_non_null(buf);
    /* Many short headers: the count's limit comes first. */
    strcpy(buf, line);
    for (at = strlen(line); at + 8 < HTTP_HEAD_MAX; at += 8)
        memcpy(buf + at, "X: vvv\r\n", 8);
    assert_int_equal(http_parse(buf, at, &req), -EMSGSIZE);

    /* Few long headers: only the size limit. */
    strcpy(buf, line);
    at = strlen(line);
    memcpy(buf + at, "X: ", 3);
    memset(buf + at + 3, 'v', HTTP_HEAD_MAX + 100 - at - 3);
    assert_int_equal(http_parse(buf, HTTP_HEAD_MAX - 1, &req), HTTP_MORE);
    assert_int_equal(http_parse(buf, HTTP_HEAD_MAX, &req), -EMSGSIZE);
    assert_int_equal(http_parse(buf, HTTP_HEAD_MAX + 100, &req), -EMSGSIZE);
    assert_int_equal(http_error_status(-EMSGSIZE), 431);

    /* The blank line's LF as the last byte inside the limit. */
    memcpy(buf + HTTP_HEAD_MAX - 4, "\r\n\r\n", 4);
    assert_int_equal(http_parse(buf, HTTP_HEAD_MAX + 100, &req), HTTP_DONE);
    assert_int_equal(req.head_len, HTTP_HEAD_MAX);
    free(buf);
}

static void test_headers_max(void **state)
{
    http_request req;
    char buf[2048];
    size_t n;
    (void)state;

    n = (size_t)snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < HTTP_HEADERS_MAX; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "H%d: v\r\n", i);
    memcpy(buf + n, "\r\n", 3);
    assert_int_equal(http_parse(buf, n + 2, &req), HTTP_DONE);
    assert_int_equal(req.nheaders, HTTP_HEADERS_MAX);
    n += (size_t)snprintf(buf + n, sizeof buf - n, "One: more\r\n\r\n");
    assert_int_equal(http_parse(buf, n, &req), -EMSGSIZE);
}

static void test_values_take_obs_text(void **state)
{
    http_request req;
    (void)state;

    assert_int_equal(parse("GET / HTTP/1.1\r\nX: caf\xc3\xa9\t\xff ok\r\nEmpty:\r\n\r\n", &req),
                     HTTP_DONE);
    assert_int_equal(req.nheaders, 2);
}

static void test_reasons(void **state)
{
    (void)state;
    assert_string_equal(http_reason(200), "OK");
    assert_string_equal(http_reason(404), "Not Found");
    assert_string_equal(http_reason(405), "Method Not Allowed");
    assert_string_equal(http_reason(431), "Request Header Fields Too Large");
    assert_string_equal(http_reason(503), "Service Unavailable");
    assert_string_equal(http_reason(299), "Error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple_get),
        cmocka_unit_test(test_prometheus_request),
        cmocka_unit_test(test_bare_lf_and_http10),
        cmocka_unit_test(test_head_len_stops_at_blank_line),
        cmocka_unit_test(test_every_prefix_needs_more),
        cmocka_unit_test(test_garbage_is_400),
        cmocka_unit_test(test_error_before_the_end),
        cmocka_unit_test(test_version_505),
        cmocka_unit_test(test_long_target_414),
        cmocka_unit_test(test_head_max_431),
        cmocka_unit_test(test_headers_max),
        cmocka_unit_test(test_values_take_obs_text),
        cmocka_unit_test(test_reasons),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
