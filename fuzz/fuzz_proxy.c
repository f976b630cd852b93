/* libFuzzer target: the PROXY protocol parser. The input (a header, and
 * maybe the client's bytes after it: the seeds are HAProxy's captures as
 * they are) is fed whole, in pieces of a size its length picks, one byte
 * at a time, and the way a socket caller reads (proxy_parser_next's advice).
 * Every way must give the same answer, a complete header never claims more
 * bytes than it was fed, and a plain (non-peeking) read the parser advised
 * never passes the header's end. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/proxy.h"

typedef struct outcome {
    int rc;
    size_t taken;
} outcome;

/* Feeds data in pieces of `piece` bytes (0: whole). */
static outcome feed(proxy_parser *p, const uint8_t *data, size_t size, size_t piece)
{
    outcome o = { 0, 0 };

    proxy_parser_init(p);
    while (o.taken < size) {
        size_t n = piece == 0 || size - o.taken < piece ? size - o.taken : piece, used = (size_t)-1;

        o.rc = proxy_parser_feed(p, data + o.taken, n, &used);
        if (o.rc < 0)
            break;
        if (used > n || (o.rc == 0 && used != n))
            abort();
        o.taken += used;
        if (o.rc == 1)
            break;
    }
    return o;
}

/* As a socket caller: reads what next() says; a plain read is taken whole. */
static outcome feed_advised(proxy_parser *p, const uint8_t *data, size_t size, size_t *plain_end)
{
    outcome o = { 0, 0 };

    *plain_end = 0;
    proxy_parser_init(p);
    while (o.taken < size) {
        int peek;
        size_t want = proxy_parser_next(p, &peek), used;

        if (want == 0)
            abort();   /* neither done nor failed, yet nothing to read */
        if (want > size - o.taken)
            want = size - o.taken;
        o.rc = proxy_parser_feed(p, data + o.taken, want, &used);
        if (o.rc < 0)
            break;
        if (used > want || (!peek && o.rc >= 0 && used != want))
            abort();
        o.taken += used;
        if (!peek && o.taken > *plain_end)
            *plain_end = o.taken;
        if (o.rc == 1)
            break;
    }
    return o;
}

static int same_addr(const sf_addr *a, const sf_addr *b)
{
    return a->len == b->len && memcmp(&a->u, &b->u, a->len) == 0;
}

static void same(const proxy_parser *a, outcome oa, const proxy_parser *b, outcome ob)
{
    if (oa.rc != ob.rc)
        abort();
    if (oa.rc == 1) {
        if (oa.taken != ob.taken || a->have != b->have || a->kind != b->kind ||
            a->version != b->version || !same_addr(&a->src, &b->src) || !same_addr(&a->dst, &b->dst))
            abort();
    } else if (oa.rc < 0 && strcmp(a->error, b->error) != 0) {
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static proxy_parser whole, pieces, bytes, advised;
    size_t piece, plain_end;
    outcome ow, op, ob, oa;

    piece = size % 23 + 1;
    ow = feed(&whole, data, size, 0);
    if (ow.taken > size)
        abort();
    if (ow.rc == 1) {
        int peek;

        if (whole.have != ow.taken || whole.kind == PROXY_KIND_NONE ||
            proxy_parser_next(&whole, &peek) != 0)
            abort();
        if (whole.version == 1 ? ow.taken > PROXY_V1_MAX : ow.taken > PROXY_V2_MAX)
            abort();
        if ((whole.kind == PROXY_KIND_ADDRS) != (whole.src.len != 0 && whole.dst.len != 0))
            abort();
    }
    if (ow.rc < 0 && whole.error[0] == '\0')
        abort();

    op = feed(&pieces, data, size, piece);
    same(&whole, ow, &pieces, op);
    ob = feed(&bytes, data, size, 1);
    same(&whole, ow, &bytes, ob);
    oa = feed_advised(&advised, data, size, &plain_end);
    same(&whole, ow, &advised, oa);
    /* A plain read never went past the end of a header that completed. */
    if (oa.rc == 1 && plain_end > oa.taken)
        abort();
    return 0;
}
