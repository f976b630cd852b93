/* Unit tests: log lines and their records (src/log.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "log.h"

typedef struct seen {
    int lines, records;
    char line[SF_LOG_LINE_MAX + 8];
    char rec_line[SF_LOG_LINE_MAX + 8];
    sf_log_record rec;
    sf_log_field fields[4];
    char peer[64];
} seen;

static void on_line(void *arg, int level, const char *line)
{
    seen *s = arg;
    (void)level;
    s->lines++;
    strcpy(s->line, line);
    assert_int_equal(s->records, 0); /* the line first */
}

static void on_record(void *arg, const sf_log_record *rec)
{
    seen *s = arg;
    s->records++;
    s->rec = *rec;
    strcpy(s->rec_line, rec->line);
    s->rec.line = s->rec_line;
    s->peer[0] = '\0';
    if (rec->peer)
        strcpy(s->peer, rec->peer);
    assert_true(rec->nfields <= 4);
    if (rec->nfields)
        memcpy(s->fields, rec->fields, rec->nfields * sizeof *rec->fields);
}

static void test_line_and_record_agree(void **state)
{
    seen s = {0};
    sf_logger lg = {.cb = on_line, .arg = &s, .record_cb = on_record, .record_arg = &s,
                    .level = SF_LOG_INFO};
    sf_status st = {.exited = 0, .signal = 11, .core = 1};
    (void)state;

    errno = EAGAIN;
    sf_logev(&lg, SF_LOG_INFO, "disconnected", 42, "1.2.3.4:5",
             SF_FIELDS(SF_F_DBL("duration_s", 1.5), SF_F_STATUS("status", st)),
             "[%s] gone pid=%d", "1.2.3.4:5", 42);
    assert_int_equal(errno, EAGAIN);
    assert_int_equal(s.lines, 1);
    assert_int_equal(s.records, 1);
    assert_string_equal(s.line, "[1.2.3.4:5] gone pid=42");
    assert_string_equal(s.rec_line, s.line);
    assert_string_equal(s.rec.event, "disconnected");
    assert_int_equal(s.rec.pid, 42);
    assert_string_equal(s.peer, "1.2.3.4:5");
    assert_int_equal(s.rec.level, SF_LOG_INFO);
    assert_int_equal(s.rec.nfields, 2);
    assert_string_equal(s.fields[0].key, "duration_s");
    assert_int_equal(s.fields[0].type, SF_LOG_FIELD_DOUBLE);
    assert_true(s.fields[0].v.d == 1.5);
    assert_int_equal(s.fields[1].type, SF_LOG_FIELD_STATUS);
    assert_int_equal(s.fields[1].v.status.signal, 11);
    assert_int_equal(s.fields[1].v.status.core, 1);
}

static void test_level_filters_both(void **state)
{
    seen s = {0};
    sf_logger lg = {.cb = on_line, .arg = &s, .record_cb = on_record, .record_arg = &s,
                    .level = SF_LOG_NOTICE};
    (void)state;
    sf_logn(&lg, SF_LOG_INFO, "connected", "not this");
    assert_int_equal(s.lines + s.records, 0);
    sf_logn(&lg, SF_LOG_NOTICE, "exiting", "exiting");
    assert_int_equal(s.lines, 1);
    assert_int_equal(s.records, 1);
    assert_null(s.rec.peer);
    assert_int_equal(s.rec.pid, 0);
    assert_int_equal(s.rec.nfields, 0);
}

static void test_records_alone_and_long_lines(void **state)
{
    seen s = {0};
    char big[3000];
    sf_logger lg = {.record_cb = on_record, .record_arg = &s, .level = SF_LOG_DEBUG};
    (void)state;
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_true(sf_log_enabled(&lg, SF_LOG_DEBUG));
    sf_logf(&lg, SF_LOG_WARN, "%s", big);
    assert_int_equal(s.lines, 0);
    assert_int_equal(s.records, 1);
    assert_string_equal(s.rec.event, "message"); /* a line without a name */
    assert_int_equal(strlen(s.rec_line), SF_LOG_LINE_MAX - 1);
    assert_string_equal(s.rec_line + SF_LOG_LINE_MAX - 4, "...");
}

static void test_no_callbacks_nothing(void **state)
{
    sf_logger lg = {.level = SF_LOG_DEBUG};
    (void)state;
    assert_false(sf_log_enabled(&lg, SF_LOG_ERROR));
    sf_logn(&lg, SF_LOG_ERROR, "exiting", "x");
    sf_logn(NULL, SF_LOG_ERROR, "exiting", "x");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_line_and_record_agree),
        cmocka_unit_test(test_level_filters_both),
        cmocka_unit_test(test_records_alone_and_long_lines),
        cmocka_unit_test(test_no_callbacks_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
