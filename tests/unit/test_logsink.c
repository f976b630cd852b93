/* Unit tests: the command's log sink (tools/sockfork/logsink.c): the JSON
 * line of a record, a status as JSON, the timestamp, the bound on a line. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "logsink.h"

static const struct timespec when = {.tv_sec = 1796666400, .tv_nsec = 123456789};

/* Renders rec into a buffer of len bytes; returns the parsed object. */
static json_t *render(const sf_log_record *rec, size_t len, char *text)
{
    char *buf = malloc(len);
    json_error_t err;
    json_t *o;
    int n;

    assert_non_null(buf);
    n = logsink_render_json(rec, &when, buf, len);
    assert_true(n > 0 && (size_t)n <= len);
    assert_int_equal(buf[n - 1], '\n');
    assert_null(memchr(buf, '\n', (size_t)n - 1)); /* one line */
    o = json_loadb(buf, (size_t)n, 0, &err);
    assert_non_null(o);
    if (text) {
        memcpy(text, buf, (size_t)n);
        text[n] = '\0';
    }
    free(buf);
    return o;
}

static void test_ts_is_rfc3339_utc_with_microseconds(void **state)
{
    char buf[64];
    struct timespec t = {.tv_sec = 0, .tv_nsec = 999999999};
    (void)state;
    assert_int_equal(logsink_format_ts(&when, buf, sizeof buf), 27);
    assert_string_equal(buf, "2026-12-07T18:00:00.123456Z");
    logsink_format_ts(&t, buf, sizeof buf);
    assert_string_equal(buf, "1970-01-01T00:00:00.999999Z"); /* cut, not rounded up */
    assert_int_equal(logsink_format_ts(&when, buf, 27), -1);
}

static void test_status_json(void **state)
{
    sf_status ex = {.exited = 1, .code = 3};
    sf_status segv = {.exited = 0, .signal = SIGSEGV, .core = 1};
    sf_status term = {.exited = 0, .signal = SIGTERM, .core = 0};
    sf_status odd = {.exited = 0, .signal = 77, .core = 0};
    char *s;
    (void)state;

    json_t *j = logsink_status_json(&ex);
    s = json_dumps(j, JSON_PRESERVE_ORDER | JSON_COMPACT);
    assert_string_equal(s, "{\"exited\":3}");
    free(s);
    json_decref(j);
    j = logsink_status_json(&segv);
    s = json_dumps(j, JSON_PRESERVE_ORDER | JSON_COMPACT);
    assert_string_equal(s, "{\"signal\":\"SIGSEGV\",\"core\":true}");
    free(s);
    json_decref(j);
    j = logsink_status_json(&term);
    s = json_dumps(j, JSON_PRESERVE_ORDER | JSON_COMPACT);
    assert_string_equal(s, "{\"signal\":\"SIGTERM\",\"core\":false}");
    free(s);
    json_decref(j);
    j = logsink_status_json(&odd);
    s = json_dumps(j, JSON_PRESERVE_ORDER | JSON_COMPACT);
    assert_string_equal(s, "{\"signal\":77,\"core\":false}");
    free(s);
    json_decref(j);
}

static void test_record_keys_in_order_and_typed_fields(void **state)
{
    sf_status st = {.exited = 0, .signal = SIGSEGV, .core = 0};
    const sf_log_field f[] = {
        {.key = "active", .type = SF_LOG_FIELD_UINT, .v.u = 3},
        {.key = "delta", .type = SF_LOG_FIELD_INT, .v.i = -2},
        {.key = "duration_s", .type = SF_LOG_FIELD_DOUBLE, .v.d = 0.25},
        {.key = "why", .type = SF_LOG_FIELD_STR, .v.s = "a \"quoted\"\tword"},
        {.key = "busy", .type = SF_LOG_FIELD_BOOL, .v.b = 1},
        {.key = "status", .type = SF_LOG_FIELD_STATUS, .v.status = st},
        {.key = "pid", .type = SF_LOG_FIELD_INT, .v.i = 1}, /* a fixed key: not taken */
    };
    sf_log_record rec = {.level = SF_LOG_INFO, .event = "disconnected", .pid = 42,
                         .peer = "127.0.0.1:5000", .line = "[127.0.0.1:5000] gone",
                         .fields = f, .nfields = 7};
    char text[LOGSINK_LINE_MAX + 1];
    (void)state;

    json_t *o = render(&rec, LOGSINK_LINE_MAX, text);
    assert_string_equal(text,
        "{\"ts\": \"2026-12-07T18:00:00.123456Z\", \"level\": \"info\", \"event\": "
        "\"disconnected\", \"pid\": 42, \"peer\": \"127.0.0.1:5000\", \"msg\": "
        "\"[127.0.0.1:5000] gone\", \"active\": 3, \"delta\": -2, \"duration_s\": 0.25, "
        "\"why\": \"a \\\"quoted\\\"\\tword\", \"busy\": true, \"status\": {\"signal\": "
        "\"SIGSEGV\", \"core\": false}}\n");
    json_decref(o);
}

static void test_no_pid_no_peer_are_null(void **state)
{
    sf_log_record rec = {.level = SF_LOG_NOTICE, .event = "exiting", .line = "exiting"};
    (void)state;
    json_t *o = render(&rec, 512, NULL);
    assert_true(json_is_null(json_object_get(o, "pid")));
    assert_true(json_is_null(json_object_get(o, "peer")));
    assert_string_equal(json_string_value(json_object_get(o, "level")), "notice");
    assert_null(json_object_get(o, "truncated"));
    json_decref(o);
}

static void test_long_strings_cut_never_the_line(void **state)
{
    char big[3000], field[5000];
    sf_log_field f = {.key = "text", .type = SF_LOG_FIELD_STR, .v.s = field};
    sf_log_record rec = {.level = SF_LOG_WARN, .event = "said", .pid = 7, .line = big,
                         .fields = &f, .nfields = 1};
    (void)state;
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    memset(field, 'b', sizeof field - 1);
    field[sizeof field - 1] = '\0';
    json_t *o = render(&rec, 1024, NULL);
    const char *msg = json_string_value(json_object_get(o, "msg"));
    const char *txt = json_string_value(json_object_get(o, "text"));
    assert_non_null(msg);
    assert_non_null(txt);
    assert_true(strlen(msg) < 1024 && strlen(msg) > 100);
    assert_string_equal(msg + strlen(msg) - 3, "...");
    assert_string_equal(txt + strlen(txt) - 3, "...");
    assert_true(json_is_true(json_object_get(o, "truncated")));
    assert_int_equal(json_integer_value(json_object_get(o, "pid")), 7);
    json_decref(o);
}

static void test_not_utf8_and_cut_characters(void **state)
{
    /* é is two bytes: a cut never splits it; a byte that is not UTF-8
     * becomes '?'. */
    char line[2000];
    size_t i;
    sf_log_record rec = {.level = SF_LOG_INFO, .event = "said", .line = line};
    (void)state;
    for (i = 0; i + 2 < sizeof line; i += 2)
        memcpy(line + i, "\xc3\xa9", 2);
    line[i] = '\0';
    json_t *o = render(&rec, 600, NULL);
    const char *msg = json_string_value(json_object_get(o, "msg"));
    assert_non_null(msg);
    assert_string_equal(msg + strlen(msg) - 3, "...");
    assert_int_equal((strlen(msg) - 3) % 2, 0);
    json_decref(o);

    rec.line = "bad \xff byte";
    o = render(&rec, 600, NULL);
    assert_string_equal(json_string_value(json_object_get(o, "msg")), "bad ? byte");
    json_decref(o);
}

static void test_levels_and_formats(void **state)
{
    int fmt = -1;
    (void)state;
    assert_string_equal(logsink_level_name(SF_LOG_ERROR), "error");
    assert_string_equal(logsink_level_name(SF_LOG_WARN), "warn");
    assert_string_equal(logsink_level_name(SF_LOG_DEBUG), "debug");
    assert_int_equal(logsink_parse_format("json", &fmt), 0);
    assert_int_equal(fmt, LOGSINK_JSON);
    assert_int_equal(logsink_parse_format("text", &fmt), 0);
    assert_int_equal(fmt, LOGSINK_TEXT);
    assert_int_equal(logsink_parse_format("JSON", &fmt), -1);
    assert_int_equal(logsink_parse_format("", &fmt), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ts_is_rfc3339_utc_with_microseconds),
        cmocka_unit_test(test_status_json),
        cmocka_unit_test(test_record_keys_in_order_and_typed_fields),
        cmocka_unit_test(test_no_pid_no_peer_are_null),
        cmocka_unit_test(test_long_strings_cut_never_the_line),
        cmocka_unit_test(test_not_utf8_and_cut_characters),
        cmocka_unit_test(test_levels_and_formats),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
