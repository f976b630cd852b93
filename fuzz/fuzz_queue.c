/* libFuzzer target: the Redis task queue's entry decoders (task, result,
 * control). The input is a selector byte, then fields and values each as a
 * 2-byte little-endian length and its bytes. What decodes must encode
 * again and decode to the same thing; nothing may leak. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pool/queue_codec.h"

#define PAIRS_MAX 64

static size_t split(const uint8_t *data, size_t size, qc_bytes *items, size_t max)
{
    size_t n = 0, off = 0;

    while (n < max && off + 2 <= size) {
        size_t len = (size_t)data[off] | (size_t)data[off + 1] << 8;
        off += 2;
        if (len > size - off)
            len = size - off;
        items[n++] = (qc_bytes){(const char *)data + off, len};
        off += len;
    }
    return n & ~(size_t)1;
}

static void unpair(const qc_fields *q, qc_bytes *f, qc_bytes *v)
{
    for (unsigned i = 0; i < q->n; i++) {
        f[i] = (qc_bytes){q->f[i], q->flen[i]};
        v[i] = (qc_bytes){q->v[i], q->vlen[i]};
    }
}

static void task_again(const qc_task *t)
{
    qc_fields q;
    qc_bytes f[QC_FIELDS_MAX], v[QC_FIELDS_MAX];
    qc_task u;
    const char *why;
    size_t i;

    if (qc_task_encode(t, &q) != 0)
        abort();
    unpair(&q, f, v);
    if (qc_task_decode(f, v, q.n, &u, &why) != 0)
        abort();
    if (u.seq != t->seq || u.attempt != t->attempt || u.tries != t->tries ||
        u.max_deliveries != t->max_deliveries || u.timeout_ms != t->timeout_ms ||
        u.grace_ms != t->grace_ms || u.out_max != t->out_max ||
        memcmp(&u.retry_on, &t->retry_on, sizeof u.retry_on) != 0)
        abort();
    for (i = 0; t->argv[i]; i++)
        if (!u.argv[i] || strcmp(u.argv[i], t->argv[i]) != 0)
            abort();
    if (u.argv[i])
        abort();
    free(u.argv);
    qc_fields_free(&q);
}

static void result_again(const qc_result *r)
{
    qc_fields q;
    qc_bytes f[QC_FIELDS_MAX], v[QC_FIELDS_MAX];
    qc_result u;
    const char *why;

    if (qc_result_encode(r, &q) != 0)
        abort();
    unpair(&q, f, v);
    if (qc_result_decode(f, v, q.n, &u, &why) != 0)
        abort();
    if (u.seq != r->seq || u.state != r->state || u.exited != r->exited || u.code != r->code ||
        u.signal != r->signal || u.pid != r->pid || u.start_us != r->start_us ||
        u.out.n != r->out.n || memcmp(u.out.p, r->out.p, u.out.n) != 0 ||
        u.result.n != r->result.n || memcmp(u.result.p, r->result.p, u.result.n) != 0 ||
        u.host.n != r->host.n || memcmp(u.host.p, r->host.p, u.host.n) != 0)
        abort();
    qc_fields_free(&q);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qc_bytes items[2 * PAIRS_MAX], f[PAIRS_MAX], v[PAIRS_MAX];
    const char *why = NULL;
    size_t n;

    if (size < 1)
        return 0;
    n = split(data + 1, size - 1, items, 2 * PAIRS_MAX) / 2;
    for (size_t i = 0; i < n; i++) {
        f[i] = items[2 * i];
        v[i] = items[2 * i + 1];
    }
    switch (data[0] % 3) {
    case 0: {
        qc_task t;
        if (qc_task_decode(f, v, n, &t, &why) == 0) {
            task_again(&t);
            free(t.argv);
        } else if (!why || t.argv) {
            abort();
        }
        break;
    }
    case 1: {
        qc_result r;
        if (qc_result_decode(f, v, n, &r, &why) == 0)
            result_again(&r);
        else if (!why)
            abort();
        break;
    }
    default: {
        int op;
        if (qc_control_decode(f, v, n, &op, &why) == 0 && (op < QC_HALT_SOON || op > QC_RETURNED))
            abort();
        break;
    }
    }
    return 0;
}
