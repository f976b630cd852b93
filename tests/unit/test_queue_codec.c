/* Unit tests: the Redis task queue's entries (src/pool/queue_codec.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool/queue_codec.h"

/* An entry as Redis would give it back: the encoder's pairs as views. */
typedef struct entry {
    size_t n;
    qc_bytes f[QC_FIELDS_MAX + 4], v[QC_FIELDS_MAX + 4];
} entry;

static void entry_from(entry *e, const qc_fields *q)
{
    e->n = q->n;
    for (unsigned i = 0; i < q->n; i++) {
        e->f[i] = (qc_bytes){q->f[i], q->flen[i]};
        e->v[i] = (qc_bytes){q->v[i], q->vlen[i]};
    }
}

static long find(const entry *e, const char *field)
{
    for (size_t i = 0; i < e->n; i++)
        if (e->f[i].n == strlen(field) && memcmp(e->f[i].p, field, e->f[i].n) == 0)
            return (long)i;
    return -1;
}

/* Replaces (or, with value NULL, removes) a field. */
static void set(entry *e, const char *field, const char *value)
{
    long i = find(e, field);
    assert_true(i >= 0);
    if (value) {
        e->v[i] = (qc_bytes){value, strlen(value)};
        return;
    }
    memmove(&e->f[i], &e->f[i + 1], (e->n - (size_t)i - 1) * sizeof e->f[0]);
    memmove(&e->v[i], &e->v[i + 1], (e->n - (size_t)i - 1) * sizeof e->v[0]);
    e->n--;
}

static void add(entry *e, const char *field, const char *value, size_t n)
{
    e->f[e->n] = (qc_bytes){field, strlen(field)};
    e->v[e->n] = (qc_bytes){value, n};
    e->n++;
}

static char *words[] = {"sh", "-c", "echo 'a b' \"$1\"", "", "x\xc3\xa9", NULL};

static void sample_task(qc_task *t)
{
    memset(t, 0, sizeof *t);
    t->seq = 42;
    t->argv = words;
    t->attempt = 2;
    t->tries = 3;
    t->max_deliveries = 5;
    t->timeout_ms = 1500;
    t->grace_ms = 2000;
    t->out_max = 1 << 20;
    t->retry_on.codes[t->retry_on.ncodes++] = 3;
    t->retry_on.codes[t->retry_on.ncodes++] = 255;
    t->retry_on.signals[t->retry_on.nsignals++] = 9;
    t->retry_on.timeout = 1;
}

static void task_round_trip(void **state)
{
    qc_task in, out;
    qc_fields q;
    entry e;
    const char *why = NULL;
    (void)state;

    sample_task(&in);
    assert_int_equal(qc_task_encode(&in, &q), 0);
    entry_from(&e, &q);
    /* Order of the pairs does not matter: reverse them. */
    for (size_t i = 0; i < e.n / 2; i++) {
        qc_bytes f = e.f[i], v = e.v[i];
        e.f[i] = e.f[e.n - 1 - i];
        e.v[i] = e.v[e.n - 1 - i];
        e.f[e.n - 1 - i] = f;
        e.v[e.n - 1 - i] = v;
    }
    assert_int_equal(qc_task_decode(e.f, e.v, e.n, &out, &why), 0);
    assert_int_equal(out.seq, 42);
    assert_int_equal(out.attempt, 2);
    assert_int_equal(out.tries, 3);
    assert_int_equal(out.max_deliveries, 5);
    assert_int_equal(out.timeout_ms, 1500);
    assert_int_equal(out.grace_ms, 2000);
    assert_int_equal(out.out_max, 1 << 20);
    for (int i = 0; words[i]; i++)
        assert_string_equal(out.argv[i], words[i]);
    assert_null(out.argv[5]);
    assert_int_equal(out.retry_on.ncodes, 2);
    assert_int_equal(out.retry_on.codes[1], 255);
    assert_int_equal(out.retry_on.nsignals, 1);
    assert_int_equal(out.retry_on.signals[0], 9);
    assert_true(out.retry_on.timeout);
    free(out.argv);
    qc_fields_free(&q);
}

/* Decodes e expecting a failure; nothing may be held after it. */
static void task_bad(entry *e, const char *why_part)
{
    qc_task out;
    const char *why = NULL;

    assert_int_equal(qc_task_decode(e->f, e->v, e->n, &out, &why), -EPROTO);
    assert_non_null(why);
    assert_non_null(strstr(why, why_part));
    assert_null(out.argv);
}

static void task_rejects(void **state)
{
    static const char *const bad_numbers[][2] = {
        {"seq", "0"},          {"seq", "-1"},      {"seq", " 1"},       {"seq", "1x"},
        {"seq", ""},           {"seq", "99999999999999999999999"},      {"attempt", "0"},
        {"tries", "1"},        /* below attempt (2) */                  {"max_deliveries", "0"},
        {"out_max", "67108865"}, {"timeout_ms", "+5"}, {"grace_ms", "1.5"},
    };
    static const char *const bad_retry[] = {"code:256", "sig:0", "sig:65", "code:", "code:1,",
                                            ",timeout", "timeout,,code:1", "TIMEOUT", "code:-1"};
    static const char *const missing[] = {"seq", "argv", "attempt", "tries", "max_deliveries",
                                          "timeout_ms", "grace_ms", "out_max"};
    qc_task in;
    qc_fields q;
    entry e;
    (void)state;

    sample_task(&in);
    assert_int_equal(qc_task_encode(&in, &q), 0);
    for (size_t i = 0; i < sizeof bad_numbers / sizeof bad_numbers[0]; i++) {
        entry_from(&e, &q);
        set(&e, bad_numbers[i][0], bad_numbers[i][1]);
        task_bad(&e, "number");
    }
    for (size_t i = 0; i < sizeof bad_retry / sizeof bad_retry[0]; i++) {
        entry_from(&e, &q);
        set(&e, "retry_on", bad_retry[i]);
        task_bad(&e, "retry_on");
    }
    for (size_t i = 0; i < sizeof missing / sizeof missing[0]; i++) {
        entry_from(&e, &q);
        set(&e, missing[i], NULL);
        task_bad(&e, strcmp(missing[i], "argv") ? "number" : "argv");
    }
    entry_from(&e, &q);
    set(&e, "v", "2");
    task_bad(&e, "version");
    entry_from(&e, &q);
    set(&e, "v", NULL);
    task_bad(&e, "version");
    entry_from(&e, &q);
    add(&e, "seq", "7", 1);
    task_bad(&e, "twice");
    /* argv: no final NUL, an empty first word, nothing. */
    entry_from(&e, &q);
    e.v[find(&e, "argv")] = (qc_bytes){"ls\0-l", 5};
    task_bad(&e, "argv");
    entry_from(&e, &q);
    e.v[find(&e, "argv")] = (qc_bytes){"\0ls\0", 4};
    task_bad(&e, "argv");
    entry_from(&e, &q);
    e.v[find(&e, "argv")] = (qc_bytes){"", 0};
    task_bad(&e, "argv");
    qc_fields_free(&q);
}

static void task_unknown_field_ignored(void **state)
{
    qc_task in, out;
    qc_fields q;
    entry e;
    const char *why;
    (void)state;

    sample_task(&in);
    in.retry_on = (qc_retry_on){0};
    assert_int_equal(qc_task_encode(&in, &q), 0);
    entry_from(&e, &q);
    add(&e, "priority", "high", 4);
    set(&e, "retry_on", NULL); /* optional: absent is any failure */
    assert_int_equal(qc_task_decode(e.f, e.v, e.n, &out, &why), 0);
    assert_int_equal(out.retry_on.ncodes + out.retry_on.nsignals + out.retry_on.timeout, 0);
    free(out.argv);
    qc_fields_free(&q);
}

static void argv_bounds(void **state)
{
    enum { N = QC_ARGV_WORDS_MAX + 1 };
    char **many = calloc(N + 1, sizeof *many);
    char *big = malloc(QC_ARGV_BYTES_MAX + 1);
    qc_task in, out;
    qc_fields q;
    entry e;
    const char *why;
    (void)state;

    assert_non_null(many);
    assert_non_null(big);
    sample_task(&in);
    for (int i = 0; i < N; i++)
        many[i] = "w";
    in.argv = many;
    assert_int_equal(qc_task_encode(&in, &q), -EINVAL);
    many[N - 1] = NULL; /* exactly the limit */
    assert_int_equal(qc_task_encode(&in, &q), 0);
    entry_from(&e, &q);
    assert_int_equal(qc_task_decode(e.f, e.v, e.n, &out, &why), 0);
    assert_string_equal(out.argv[QC_ARGV_WORDS_MAX - 1], "w");
    assert_null(out.argv[QC_ARGV_WORDS_MAX]);
    free(out.argv);
    /* One word more, as a writer other than ours could send it. */
    {
        char *blob = malloc(2 * N);
        assert_non_null(blob);
        for (int i = 0; i < N; i++)
            blob[2 * i] = 'w', blob[2 * i + 1] = '\0';
        e.v[find(&e, "argv")] = (qc_bytes){blob, 2 * (size_t)N};
        task_bad(&e, "argv");
        free(blob);
    }
    qc_fields_free(&q);
    memset(big, 'a', QC_ARGV_BYTES_MAX);
    big[QC_ARGV_BYTES_MAX] = '\0';
    in.argv = (char *[]){big, NULL};
    assert_int_equal(qc_task_encode(&in, &q), -EINVAL);
    big[QC_ARGV_BYTES_MAX - 1] = '\0'; /* with its NUL, exactly the limit */
    assert_int_equal(qc_task_encode(&in, &q), 0);
    qc_fields_free(&q);
    free(big);
    free(many);
}

static void task_encode_rejects(void **state)
{
    qc_task t;
    qc_fields q;
    (void)state;

    sample_task(&t);
    t.seq = 0;
    assert_int_equal(qc_task_encode(&t, &q), -EINVAL);
    sample_task(&t);
    t.tries = 1;
    assert_int_equal(qc_task_encode(&t, &q), -EINVAL);
    sample_task(&t);
    t.argv = (char *[]){"", NULL};
    assert_int_equal(qc_task_encode(&t, &q), -EINVAL);
    sample_task(&t);
    t.retry_on.codes[0] = 256;
    assert_int_equal(qc_task_encode(&t, &q), -EINVAL);
    sample_task(&t);
    t.out_max = QC_OUT_MAX + 1;
    assert_int_equal(qc_task_encode(&t, &q), -EINVAL);
}

static void retry_policy(void **state)
{
    qc_retry_on any = {0}, some = {0};
    (void)state;

    assert_true(qc_retry_allows(&any, 1, 1, 0, 0));
    assert_true(qc_retry_allows(&any, 0, 0, 9, 0));
    assert_true(qc_retry_allows(&any, 1, 0, 0, 1));
    some.codes[some.ncodes++] = 3;
    some.signals[some.nsignals++] = 15;
    assert_true(qc_retry_allows(&some, 1, 3, 0, 0));
    assert_false(qc_retry_allows(&some, 1, 4, 0, 0));
    assert_true(qc_retry_allows(&some, 0, 0, 15, 0));
    assert_false(qc_retry_allows(&some, 0, 0, 9, 0));
    assert_false(qc_retry_allows(&some, 0, 0, 15, 1)); /* a timeout is its own case */
    some.timeout = 1;
    assert_true(qc_retry_allows(&some, 0, 0, 15, 1));
    assert_false(qc_retry_allows(&some, 0, 0, 3, 0)); /* a code is not a signal */
}

static void sample_result(qc_result *r)
{
    memset(r, 0, sizeof *r);
    r->seq = 9;
    r->state = QC_FAILED;
    r->attempts = 3;
    r->exited = 0;
    r->signal = 9;
    r->timed_out = 1;
    r->slot = 4;
    r->pid = 1234;
    r->start_us = 1765000000123456LL;
    r->dur_us = 1500000;
    r->out_bytes = 5;
    r->err_bytes = 1u << 30;
    r->host = (qc_bytes){"host-a", 6};
    r->worker = (qc_bytes){"host-a:77", 9};
    r->out = (qc_bytes){"a\0b\nc", 5};
    r->result = (qc_bytes){"{\"x\":1}", 7};
}

static void result_round_trip(void **state)
{
    qc_result in, out;
    qc_fields q;
    entry e;
    const char *why;
    (void)state;

    sample_result(&in);
    assert_int_equal(qc_result_encode(&in, &q), 0);
    entry_from(&e, &q);
    assert_int_equal(qc_result_decode(e.f, e.v, e.n, &out, &why), 0);
    assert_int_equal(out.seq, 9);
    assert_int_equal(out.state, QC_FAILED);
    assert_int_equal(out.attempts, 3);
    assert_false(out.exited);
    assert_int_equal(out.signal, 9);
    assert_true(out.timed_out);
    assert_false(out.output_limited);
    assert_int_equal(out.slot, 4);
    assert_int_equal(out.pid, 1234);
    assert_true(out.start_us == 1765000000123456LL);
    assert_int_equal(out.dur_us, 1500000);
    assert_int_equal(out.err_bytes, 1u << 30);
    assert_int_equal(out.host.n, 6);
    assert_memory_equal(out.host.p, "host-a", 6);
    assert_int_equal(out.out.n, 5);
    assert_memory_equal(out.out.p, "a\0b\nc", 5);
    assert_int_equal(out.err.n, 0);
    assert_memory_equal(out.result.p, "{\"x\":1}", 7);
    qc_fields_free(&q);

    /* Exited 0; a dead task (neither code nor signal). */
    in.state = QC_OK;
    in.exited = 1;
    in.code = 0;
    in.signal = 0;
    assert_int_equal(qc_result_encode(&in, &q), 0);
    entry_from(&e, &q);
    assert_true(find(&e, "signal") < 0);
    assert_int_equal(qc_result_decode(e.f, e.v, e.n, &out, &why), 0);
    assert_true(out.exited);
    assert_int_equal(out.code, 0);
    assert_int_equal(out.state, QC_OK);
    in.state = QC_DEAD;
    in.exited = 0;
    assert_int_equal(qc_result_encode(&in, &q), 0);
    entry_from(&e, &q);
    assert_int_equal(qc_result_decode(e.f, e.v, e.n, &out, &why), 0);
    assert_int_equal(out.state, QC_DEAD);
    assert_false(out.exited);
    assert_int_equal(out.signal, 0);
}

static void result_rejects(void **state)
{
    static const char *const bad[][2] = {
        {"state", "OK"},         {"state", ""},         {"seq", "0"},
        {"signal", "0"},         {"signal", "65"},      {"timed_out", "2"},
        {"spawn_error", "4096"}, {"slot", "65537"},     {"pid", "2147483648"},
        {"host", ""},            {"host", "a b"},       {"worker", "x\ny"},
        {"start_us", "9223372036854775808"},
    };
    qc_result in, out;
    qc_fields q;
    entry e;
    const char *why;
    static char big[QC_RESULT_MAX + 1];
    (void)state;

    sample_result(&in);
    assert_int_equal(qc_result_encode(&in, &q), 0);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        entry_from(&e, &q);
        set(&e, bad[i][0], bad[i][1]);
        assert_int_equal(qc_result_decode(e.f, e.v, e.n, &out, &why), -EPROTO);
    }
    entry_from(&e, &q);
    add(&e, "code", "1", 1); /* exited and signalled */
    assert_int_equal(qc_result_decode(e.f, e.v, e.n, &out, &why), -EPROTO);
    entry_from(&e, &q);
    add(&e, "host", "b", 1);
    assert_int_equal(qc_result_decode(e.f, e.v, e.n, &out, &why), -EPROTO);
    assert_non_null(strstr(why, "twice"));
    entry_from(&e, &q);
    e.v[find(&e, "result")] = (qc_bytes){big, sizeof big};
    assert_int_equal(qc_result_decode(e.f, e.v, e.n, &out, &why), -EPROTO);
    entry_from(&e, &q);
    set(&e, "worker", NULL);
    assert_int_equal(qc_result_decode(e.f, e.v, e.n, &out, &why), -EPROTO);
    /* Optional fields absent: zero. */
    entry_from(&e, &q);
    set(&e, "out", NULL);
    set(&e, "pid", NULL);
    set(&e, "result", NULL);
    assert_int_equal(qc_result_decode(e.f, e.v, e.n, &out, &why), 0);
    assert_int_equal(out.out.n, 0);
    assert_int_equal(out.pid, 0);
    assert_int_equal(out.result.n, 0);
    qc_fields_free(&q);

    in.host = (qc_bytes){"has space", 9};
    assert_int_equal(qc_result_encode(&in, &q), -EINVAL);
}

static void control_codes(void **state)
{
    qc_fields q;
    entry e;
    const char *why;
    int op;
    (void)state;

    for (int o = QC_HALT_SOON; o <= QC_RETURNED; o++) {
        assert_int_equal(qc_control_encode(o, &q), 0);
        entry_from(&e, &q);
        assert_int_equal(qc_control_decode(e.f, e.v, e.n, &op, &why), 0);
        assert_int_equal(op, o);
    }
    assert_int_equal(qc_control_encode(0, &q), -EINVAL);
    assert_int_equal(qc_control_encode(QC_RETURNED + 1, &q), -EINVAL);
    assert_int_equal(qc_control_encode(QC_CANCEL, &q), 0);
    entry_from(&e, &q);
    set(&e, "op", "halt");
    assert_int_equal(qc_control_decode(e.f, e.v, e.n, &op, &why), -EPROTO);
    set(&e, "op", NULL);
    assert_int_equal(qc_control_decode(e.f, e.v, e.n, &op, &why), -EPROTO);
    assert_int_equal(qc_control_decode(NULL, NULL, 0, &op, &why), -EPROTO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(task_round_trip),    cmocka_unit_test(task_rejects),
        cmocka_unit_test(task_unknown_field_ignored), cmocka_unit_test(argv_bounds),
        cmocka_unit_test(task_encode_rejects), cmocka_unit_test(retry_policy),
        cmocka_unit_test(result_round_trip),  cmocka_unit_test(result_rejects),
        cmocka_unit_test(control_codes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
