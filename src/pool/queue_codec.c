/*
 * queue_codec.c - task, result and control entries of the Redis task queue:
 * field/value pairs in, a checked struct out, and back (queue_codec.h).
 *
 * Decoding is table-driven: each known field has a slot, a field seen twice
 * is an error (Redis keeps both pairs of an entry, and which one a reader
 * took would depend on the reader), and what is required is checked after
 * the whole entry was read, so the order of the pairs never matters.
 */
#include "pool/queue_codec.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ encoding */

static int put(qc_fields *out, const char *f, const char *v, size_t vlen)
{
    if (out->n >= QC_FIELDS_MAX)
        return -EOVERFLOW; /* a bug of ours: the tables below fit */
    out->f[out->n] = f;
    out->flen[out->n] = strlen(f);
    out->v[out->n] = v;
    out->vlen[out->n] = vlen;
    out->n++;
    return 0;
}

static int put_str(qc_fields *out, const char *f, const char *v)
{
    return put(out, f, v, strlen(v));
}

static int put_num(qc_fields *out, const char *f, unsigned long long v)
{
    char *text;

    if (out->n >= QC_FIELDS_MAX)
        return -EOVERFLOW;
    text = out->num[out->n];
    snprintf(text, sizeof out->num[0], "%llu", v);
    return put_str(out, f, text);
}

static void fields_init(qc_fields *out)
{
    out->n = 0;
    out->argv_blob = NULL;
    out->retry_text[0] = '\0';
}

void qc_fields_free(qc_fields *out)
{
    if (!out)
        return;
    free(out->argv_blob);
    out->argv_blob = NULL;
    out->n = 0;
}

/* Every word followed by its NUL, in one block. */
static int argv_blob(char *const *argv, char **blob, size_t *len)
{
    size_t n = 0, words = 0;
    char *b;

    for (; argv && argv[words]; words++)
        n += strlen(argv[words]) + 1;
    if (words == 0 || argv[0][0] == '\0' || words > QC_ARGV_WORDS_MAX || n > QC_ARGV_BYTES_MAX)
        return -EINVAL;
    if (!(b = malloc(n)))
        return -ENOMEM;
    *blob = b;
    *len = n;
    for (size_t i = 0; i < words; i++) {
        size_t l = strlen(argv[i]) + 1;
        memcpy(b, argv[i], l);
        b += l;
    }
    return 0;
}

int qc_retry_format(const qc_retry_on *r, char *buf, size_t cap)
{
    size_t at = 0;
    int w;

    if (r->ncodes > QC_RETRY_MAX || r->nsignals > QC_RETRY_MAX)
        return -EINVAL;
    buf[0] = '\0';
    for (unsigned i = 0; i < r->ncodes; i++) {
        if (r->codes[i] < 0 || r->codes[i] > 255)
            return -EINVAL;
        w = snprintf(buf + at, cap - at, "%scode:%d", at ? "," : "", r->codes[i]);
        at += (size_t)w;
    }
    for (unsigned i = 0; i < r->nsignals; i++) {
        if (r->signals[i] < 1 || r->signals[i] > 64)
            return -EINVAL;
        w = snprintf(buf + at, cap - at, "%ssig:%d", at ? "," : "", r->signals[i]);
        at += (size_t)w;
    }
    if (r->timeout)
        snprintf(buf + at, cap - at, "%stimeout", at ? "," : "");
    return 0;
}

int qc_task_encode(const qc_task *t, qc_fields *out)
{
    size_t blen;
    int rc;

    fields_init(out);
    if (t->seq == 0 || t->attempt == 0 || t->tries < t->attempt || t->max_deliveries == 0 ||
        t->out_max > QC_OUT_MAX)
        return -EINVAL;
    if ((rc = qc_retry_format(&t->retry_on, out->retry_text, sizeof out->retry_text)) < 0)
        return rc;
    if ((rc = argv_blob(t->argv, &out->argv_blob, &blen)) < 0)
        return rc;
    if ((rc = put_str(out, "v", QC_VERSION)) < 0 || (rc = put_num(out, "seq", t->seq)) < 0 ||
        (rc = put(out, "argv", out->argv_blob, blen)) < 0 ||
        (rc = put_num(out, "attempt", t->attempt)) < 0 ||
        (rc = put_num(out, "tries", t->tries)) < 0 ||
        (rc = put_num(out, "max_deliveries", t->max_deliveries)) < 0 ||
        (rc = put_num(out, "timeout_ms", t->timeout_ms)) < 0 ||
        (rc = put_num(out, "grace_ms", t->grace_ms)) < 0 ||
        (rc = put_num(out, "out_max", t->out_max)) < 0 ||
        (rc = put_str(out, "retry_on", out->retry_text)) < 0)
        goto fail;
    return 0;

fail:
    qc_fields_free(out);
    return rc;
}

static const char *const state_names[] = {
    [QC_OK] = "ok", [QC_FAILED] = "failed", [QC_DEAD] = "dead", [QC_KILLED] = "killed"};

static int name_ok(qc_bytes b);

int qc_result_encode(const qc_result *r, qc_fields *out)
{
    int rc;

    fields_init(out);
    if (r->seq == 0 || r->state < QC_OK || r->state > QC_KILLED || !name_ok(r->host) ||
        !name_ok(r->worker) || r->result.n > QC_RESULT_MAX || r->out.n > QC_OUT_MAX ||
        r->err.n > QC_OUT_MAX || r->start_us < 0)
        return -EINVAL;
    if ((rc = put_str(out, "v", QC_VERSION)) < 0 || (rc = put_num(out, "seq", r->seq)) < 0 ||
        (rc = put_str(out, "state", state_names[r->state])) < 0 ||
        (rc = put_num(out, "attempts", r->attempts)) < 0)
        return rc;
    if (r->exited)
        rc = put_num(out, "code", (unsigned)r->code);
    else if (r->signal)
        rc = put_num(out, "signal", (unsigned)r->signal);
    if (rc < 0 || (rc = put_num(out, "timed_out", r->timed_out != 0)) < 0 ||
        (rc = put_num(out, "output_limited", r->output_limited != 0)) < 0 ||
        (rc = put_num(out, "spawn_error", (unsigned)r->spawn_error)) < 0 ||
        (rc = put_num(out, "slot", r->slot)) < 0 ||
        (rc = put_num(out, "pid", (unsigned long)r->pid)) < 0 ||
        (rc = put_num(out, "start_us", (unsigned long long)r->start_us)) < 0 ||
        (rc = put_num(out, "dur_us", r->dur_us)) < 0 ||
        (rc = put_num(out, "out_bytes", r->out_bytes)) < 0 ||
        (rc = put_num(out, "err_bytes", r->err_bytes)) < 0 ||
        (rc = put(out, "host", r->host.p, r->host.n)) < 0 ||
        (rc = put(out, "worker", r->worker.p, r->worker.n)) < 0 ||
        (rc = put(out, "out", r->out.n ? r->out.p : "", r->out.n)) < 0 ||
        (rc = put(out, "err", r->err.n ? r->err.p : "", r->err.n)) < 0 ||
        (rc = put(out, "result", r->result.n ? r->result.p : "", r->result.n)) < 0)
        return rc;
    return 0;
}

static const char *const control_names[] = {
    [QC_HALT_SOON] = "halt-soon", [QC_HALT_NOW] = "halt-now", [QC_CANCEL] = "cancel",
    [QC_RETURNED] = "returned"};

int qc_control_encode(int op, qc_fields *out)
{
    int rc;

    fields_init(out);
    if (op < QC_HALT_SOON || op > QC_RETURNED)
        return -EINVAL;
    if ((rc = put_str(out, "v", QC_VERSION)) < 0 || (rc = put_str(out, "op", control_names[op])) < 0)
        return rc;
    return 0;
}

/* ------------------------------------------------------------ decoding */

static int is(qc_bytes b, const char *s)
{
    size_t n = strlen(s);
    return b.n == n && memcmp(b.p, s, n) == 0;
}

/* Decimal digits only (no sign, no space), 1..20 of them, at most max. */
static int num(qc_bytes b, unsigned long long max, unsigned long long *out)
{
    unsigned long long v = 0;

    if (b.n == 0 || b.n > 20)
        return -1;
    for (size_t i = 0; i < b.n; i++) {
        unsigned d = (unsigned char)b.p[i] - '0';
        if (d > 9 || v > (ULLONG_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

/* A host or consumer name: 1..QC_HOST_MAX printable bytes, no space. */
static int name_ok(qc_bytes b)
{
    if (!b.p || b.n == 0 || b.n > QC_HOST_MAX)
        return 0;
    for (size_t i = 0; i < b.n; i++)
        if ((unsigned char)b.p[i] <= ' ' || (unsigned char)b.p[i] >= 0x7f)
            return 0;
    return 1;
}

/* Finds each of names[] among the pairs: at[i] is its index, or -1.
 * Fails on a known field given twice; unknown ones are skipped. */
static int index_fields(const qc_bytes *fields, size_t n, const char *const *names,
                        size_t nnames, long *at, const char **why)
{
    for (size_t k = 0; k < nnames; k++)
        at[k] = -1;
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < nnames; k++)
            if (is(fields[i], names[k])) {
                if (at[k] >= 0) {
                    *why = "a field given twice";
                    return -EPROTO;
                }
                at[k] = (long)i;
                break;
            }
    return 0;
}

static int version_ok(const qc_bytes *values, long at, const char **why)
{
    if (at < 0 || !is(values[at], QC_VERSION)) {
        *why = at < 0 ? "no version" : "another version";
        return -EPROTO;
    }
    return 0;
}

/* The argv blob into one malloc'ed block: pointers, then the words. */
static int argv_decode(qc_bytes b, char ***out, const char **why)
{
    size_t words = 0;
    char **argv, *text;

    *why = "a bad argv";
    if (b.n == 0 || b.n > QC_ARGV_BYTES_MAX || b.p[b.n - 1] != '\0' || b.p[0] == '\0')
        return -EPROTO;
    for (size_t i = 0; i < b.n; i++)
        if (b.p[i] == '\0' && ++words > QC_ARGV_WORDS_MAX)
            return -EPROTO;
    if (!(argv = malloc((words + 1) * sizeof *argv + b.n)))
        return -ENOMEM;
    text = (char *)(argv + words + 1);
    memcpy(text, b.p, b.n);
    for (size_t w = 0, i = 0; w < words; w++) {
        argv[w] = text + i;
        i += strlen(text + i) + 1;
    }
    argv[words] = NULL;
    *out = argv;
    return 0;
}

static int retry_decode(qc_bytes b, qc_retry_on *r, const char **why)
{
    size_t i = 0;

    memset(r, 0, sizeof *r);
    *why = "a bad retry_on";
    while (i < b.n) {
        size_t end = i;
        qc_bytes tok, v;
        unsigned long long x;

        while (end < b.n && b.p[end] != ',')
            end++;
        tok = (qc_bytes){b.p + i, end - i};
        if (is(tok, "timeout")) {
            r->timeout = 1;
        } else if (tok.n > 5 && memcmp(tok.p, "code:", 5) == 0) {
            v = (qc_bytes){tok.p + 5, tok.n - 5};
            if (num(v, 255, &x) < 0 || r->ncodes >= QC_RETRY_MAX)
                return -EPROTO;
            r->codes[r->ncodes++] = (int)x;
        } else if (tok.n > 4 && memcmp(tok.p, "sig:", 4) == 0) {
            v = (qc_bytes){tok.p + 4, tok.n - 4};
            if (num(v, 64, &x) < 0 || x == 0 || r->nsignals >= QC_RETRY_MAX)
                return -EPROTO;
            r->signals[r->nsignals++] = (int)x;
        } else {
            return -EPROTO;
        }
        if (end < b.n && end + 1 == b.n)
            return -EPROTO; /* a trailing comma */
        i = end + 1;
    }
    return 0;
}

enum {
    T_V, T_SEQ, T_ARGV, T_ATTEMPT, T_TRIES, T_MAXDEL, T_TIMEOUT, T_GRACE, T_OUTMAX, T_RETRY,
    T_N
};
static const char *const task_names[T_N] = {
    "v", "seq", "argv", "attempt", "tries", "max_deliveries", "timeout_ms", "grace_ms",
    "out_max", "retry_on"};

/* A required number field: present, and in [min, max]. */
static int req_num(const qc_bytes *values, long at, unsigned long long min,
                   unsigned long long max, unsigned long long *out)
{
    return at < 0 || num(values[at], max, out) < 0 || *out < min ? -1 : 0;
}

int qc_task_decode(const qc_bytes *fields, const qc_bytes *values, size_t n, qc_task *t,
                   const char **why)
{
    long at[T_N];
    unsigned long long seq, attempt, tries, maxdel, timeout, grace, outmax;
    int rc;

    memset(t, 0, sizeof *t);
    if ((rc = index_fields(fields, n, task_names, T_N, at, why)) < 0 ||
        (rc = version_ok(values, at[T_V], why)) < 0)
        return rc;
    *why = "a missing or bad number";
    if (req_num(values, at[T_SEQ], 1, ULONG_MAX, &seq) < 0 ||
        req_num(values, at[T_ATTEMPT], 1, UINT_MAX, &attempt) < 0 ||
        req_num(values, at[T_TRIES], attempt, UINT_MAX, &tries) < 0 ||
        req_num(values, at[T_MAXDEL], 1, UINT_MAX, &maxdel) < 0 ||
        req_num(values, at[T_TIMEOUT], 0, ULLONG_MAX / 1000, &timeout) < 0 ||
        req_num(values, at[T_GRACE], 0, ULLONG_MAX / 1000, &grace) < 0 ||
        req_num(values, at[T_OUTMAX], 0, QC_OUT_MAX, &outmax) < 0)
        return -EPROTO;
    if (at[T_RETRY] >= 0 && (rc = retry_decode(values[at[T_RETRY]], &t->retry_on, why)) < 0)
        return rc;
    if (at[T_ARGV] < 0) {
        *why = "no argv";
        return -EPROTO;
    }
    if ((rc = argv_decode(values[at[T_ARGV]], &t->argv, why)) < 0)
        return rc;
    t->seq = (unsigned long)seq;
    t->attempt = (unsigned)attempt;
    t->tries = (unsigned)tries;
    t->max_deliveries = (unsigned)maxdel;
    t->timeout_ms = timeout;
    t->grace_ms = grace;
    t->out_max = outmax;
    return 0;
}

int qc_retry_allows(const qc_retry_on *r, int exited, int code, int signal, int timed_out)
{
    if (r->ncodes == 0 && r->nsignals == 0 && !r->timeout)
        return 1;
    if (timed_out)
        return r->timeout;
    for (unsigned i = 0; exited && i < r->ncodes; i++)
        if (r->codes[i] == code)
            return 1;
    for (unsigned i = 0; !exited && i < r->nsignals; i++)
        if (r->signals[i] == signal)
            return 1;
    return 0;
}

enum {
    R_V, R_SEQ, R_STATE, R_ATTEMPTS, R_CODE, R_SIGNAL, R_TIMED_OUT, R_OUTLIM, R_SPAWN, R_SLOT,
    R_PID, R_START, R_DUR, R_OUTB, R_ERRB, R_HOST, R_WORKER, R_OUT, R_ERR, R_RESULT, R_N
};
static const char *const result_names[R_N] = {
    "v", "seq", "state", "attempts", "code", "signal", "timed_out", "output_limited",
    "spawn_error", "slot", "pid", "start_us", "dur_us", "out_bytes", "err_bytes", "host",
    "worker", "out", "err", "result"};

/* An optional number field: absent is 0. */
static int opt_num(const qc_bytes *values, long at, unsigned long long max,
                   unsigned long long *out)
{
    *out = 0;
    return at < 0 ? 0 : num(values[at], max, out);
}

static int result_state(qc_bytes b, int *state)
{
    for (int s = QC_OK; s <= QC_KILLED; s++)
        if (is(b, state_names[s])) {
            *state = s;
            return 0;
        }
    return -1;
}

static int result_numbers(const qc_bytes *values, const long *at, qc_result *r)
{
    unsigned long long v[R_N];

    if (req_num(values, at[R_SEQ], 1, ULONG_MAX, &v[R_SEQ]) < 0 ||
        req_num(values, at[R_ATTEMPTS], 0, UINT_MAX, &v[R_ATTEMPTS]) < 0 ||
        opt_num(values, at[R_CODE], 255, &v[R_CODE]) < 0 ||
        opt_num(values, at[R_SIGNAL], 64, &v[R_SIGNAL]) < 0 ||
        opt_num(values, at[R_TIMED_OUT], 1, &v[R_TIMED_OUT]) < 0 ||
        opt_num(values, at[R_OUTLIM], 1, &v[R_OUTLIM]) < 0 ||
        opt_num(values, at[R_SPAWN], 4095, &v[R_SPAWN]) < 0 ||
        opt_num(values, at[R_SLOT], 65536, &v[R_SLOT]) < 0 ||
        opt_num(values, at[R_PID], INT_MAX, &v[R_PID]) < 0 ||
        opt_num(values, at[R_START], LLONG_MAX, &v[R_START]) < 0 ||
        opt_num(values, at[R_DUR], ULLONG_MAX, &v[R_DUR]) < 0 ||
        opt_num(values, at[R_OUTB], ULLONG_MAX, &v[R_OUTB]) < 0 ||
        opt_num(values, at[R_ERRB], ULLONG_MAX, &v[R_ERRB]) < 0)
        return -1;
    if (at[R_CODE] >= 0 && at[R_SIGNAL] >= 0)
        return -1; /* exited or signalled, not both */
    if (at[R_SIGNAL] >= 0 && v[R_SIGNAL] == 0)
        return -1;
    r->seq = (unsigned long)v[R_SEQ];
    r->attempts = (unsigned)v[R_ATTEMPTS];
    r->exited = at[R_CODE] >= 0;
    r->code = (int)v[R_CODE];
    r->signal = (int)v[R_SIGNAL];
    r->timed_out = (int)v[R_TIMED_OUT];
    r->output_limited = (int)v[R_OUTLIM];
    r->spawn_error = (int)v[R_SPAWN];
    r->slot = (unsigned)v[R_SLOT];
    r->pid = (long)v[R_PID];
    r->start_us = (long long)v[R_START];
    r->dur_us = v[R_DUR];
    r->out_bytes = v[R_OUTB];
    r->err_bytes = v[R_ERRB];
    return 0;
}

static qc_bytes opt_bytes(const qc_bytes *values, long at)
{
    return at < 0 ? (qc_bytes){"", 0} : values[at];
}

int qc_result_decode(const qc_bytes *fields, const qc_bytes *values, size_t n, qc_result *r,
                     const char **why)
{
    long at[R_N];
    int rc;

    memset(r, 0, sizeof *r);
    if ((rc = index_fields(fields, n, result_names, R_N, at, why)) < 0 ||
        (rc = version_ok(values, at[R_V], why)) < 0)
        return rc;
    *why = "a missing or bad state";
    if (at[R_STATE] < 0 || result_state(values[at[R_STATE]], &r->state) < 0)
        return -EPROTO;
    *why = "a missing or bad number";
    if (result_numbers(values, at, r) < 0)
        return -EPROTO;
    *why = "a missing or bad host or worker";
    if (at[R_HOST] < 0 || at[R_WORKER] < 0 || !name_ok(values[at[R_HOST]]) ||
        !name_ok(values[at[R_WORKER]]))
        return -EPROTO;
    r->host = values[at[R_HOST]];
    r->worker = values[at[R_WORKER]];
    r->out = opt_bytes(values, at[R_OUT]);
    r->err = opt_bytes(values, at[R_ERR]);
    r->result = opt_bytes(values, at[R_RESULT]);
    *why = "output or result too long";
    if (r->out.n > QC_OUT_MAX || r->err.n > QC_OUT_MAX || r->result.n > QC_RESULT_MAX)
        return -EPROTO;
    return 0;
}

int qc_control_decode(const qc_bytes *fields, const qc_bytes *values, size_t n, int *op,
                      const char **why)
{
    static const char *const names[] = {"v", "op"};
    long at[2];
    int rc;

    *op = 0;
    if ((rc = index_fields(fields, n, names, 2, at, why)) < 0 ||
        (rc = version_ok(values, at[0], why)) < 0)
        return rc;
    for (int o = QC_HALT_SOON; at[1] >= 0 && o <= QC_RETURNED; o++)
        if (is(values[at[1]], control_names[o])) {
            *op = o;
            return 0;
        }
    *why = "a missing or unknown op";
    return -EPROTO;
}
