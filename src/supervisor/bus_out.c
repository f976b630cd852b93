/* bus_out.c - see bus_out.h. */
#include "supervisor/bus_out.h"
#include "channel/be.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void bus_outbuf_init(bus_outbuf *o, size_t limit)
{
    memset(o, 0, sizeof *o);
    o->limit = limit;
}

void bus_outbuf_fini(bus_outbuf *o)
{
    free(o->buf);
    free(o->gate);
    o->buf = o->gate = NULL;
    o->start = o->end = o->cap = o->glen = o->gcap = 0;
}

/* Room for n more bytes at the end of a buffer of *cap bytes holding
 * *len: grown to what is needed (doubling), never shrunk but by fini. */
static int room(unsigned char **buf, size_t *cap, size_t len, size_t n)
{
    size_t want = *cap ? *cap : 4096;
    unsigned char *p;

    if (len + n <= *cap)
        return 0;
    while (want < len + n)
        want *= 2;
    if (!(p = realloc(*buf, want)))
        return -ENOMEM;
    *buf = p;
    *cap = want;
    return 0;
}

/* Moves what waits in front to the buffer's start, so appends grow it
 * only for bytes that wait. */
static void compact(bus_outbuf *o)
{
    if (o->start == 0)
        return;
    memmove(o->buf, o->buf + o->start, o->end - o->start);
    o->end -= o->start;
    o->start = 0;
}

int bus_outbuf_append(bus_outbuf *o, const bus_piece *pieces, int npieces, int behind_gate,
                      int force)
{
    size_t n = 0;
    unsigned char *dst;

    for (int i = 0; i < npieces; i++)
        n += pieces[i].n;
    if ((force == BUS_OUT_FIT && bus_outbuf_bytes(o) + n > o->limit) ||
        (force == BUS_OUT_NOTE && bus_outbuf_bytes(o) > o->limit)) {
        o->dropped++;
        if (behind_gate)
            o->skipped++;
        return -ENOBUFS;
    }
    if (behind_gate) {
        if (room(&o->gate, &o->gcap, o->glen, n) < 0)
            return -ENOMEM;
        dst = o->gate + o->glen;
        o->glen += n;
    } else {
        compact(o);
        if (room(&o->buf, &o->cap, o->end, n) < 0)
            return -ENOMEM;
        dst = o->buf + o->end;
        o->end += n;
    }
    for (int i = 0; i < npieces; i++) {
        if (pieces[i].n)
            memcpy(dst, pieces[i].p, pieces[i].n);
        dst += pieces[i].n;
    }
    return 0;
}

const unsigned char *bus_outbuf_data(const bus_outbuf *o, size_t *len)
{
    *len = o->end - o->start;
    return o->buf ? o->buf + o->start : NULL;
}

void bus_outbuf_consumed(bus_outbuf *o, size_t n)
{
    const unsigned char *sent = o->buf + o->start;

    if (n >= BUS_OUT_TAIL) {
        memcpy(o->tail, sent + n - BUS_OUT_TAIL, BUS_OUT_TAIL);
        o->ntail = BUS_OUT_TAIL;
    } else if (n > 0) {
        size_t keep = o->ntail + n > BUS_OUT_TAIL ? BUS_OUT_TAIL - n : o->ntail;
        memmove(o->tail, o->tail + o->ntail - keep, keep);
        memcpy(o->tail + keep, sent, n);
        o->ntail = keep + n;
    }
    o->start += n;
    o->written += n;
    if (o->start == o->end)
        o->start = o->end = 0;
}

/* The longest proper beginning of sep that the bytes written end with. */
static size_t sep_had(const bus_outbuf *o, const unsigned char *sep, size_t seplen)
{
    size_t k = seplen - 1 < o->ntail ? seplen - 1 : o->ntail;

    for (; k > 0; k--)
        if (memcmp(o->tail + o->ntail - k, sep, k) == 0)
            return k;
    return 0;
}

size_t bus_outbuf_reset(bus_outbuf *o, const void *sep, size_t seplen)
{
    size_t dropped = o->end - o->start, had;
    bus_piece rest;

    o->start = o->end = 0;
    if (dropped)
        o->dropped++;
    if (o->ntail == 0 || seplen == 0)
        return dropped;
    /* Whole: what was written ends with sep. Else the longest beginning of
     * sep it ends with is not written again. */
    if (seplen <= o->ntail && memcmp(o->tail + o->ntail - seplen, sep, seplen) == 0)
        return dropped;
    had = sep_had(o, sep, seplen);
    rest.p = (const unsigned char *)sep + had;
    rest.n = seplen - had;
    (void)bus_outbuf_append(o, &rest, 1, 0, BUS_OUT_ALWAYS); /* bounded: what waited went */
    return dropped;
}

uint64_t bus_outbuf_gate_open(bus_outbuf *o, const void *before, size_t blen, const void *one,
                              size_t olen, const void *more, size_t mlen)
{
    uint64_t skipped = o->skipped;
    bus_piece p;

    if (o->glen) {
        p.p = o->gate;
        p.n = o->glen;
        o->glen = 0; /* out of the count first: the move passes no limit */
        if (bus_outbuf_append(o, &p, 1, 0, BUS_OUT_ALWAYS) < 0)
            o->dropped++;
    }
    o->skipped = 0;
    if (skipped) {
        char count[24];
        bus_piece note[3] = {{before, blen}, {count, 0}, {skipped == 1 ? one : more,
                                                          skipped == 1 ? olen : mlen}};
        note[1].n = (size_t)snprintf(count, sizeof count, "%llu", (unsigned long long)skipped);
        (void)bus_outbuf_append(o, note, 3, 0, BUS_OUT_NOTE);
    }
    free(o->gate);
    o->gate = NULL;
    o->gcap = 0;
    return skipped;
}

void bus_outbuf_gate_drop(bus_outbuf *o)
{
    free(o->gate);
    o->gate = NULL;
    o->glen = o->gcap = 0;
    o->skipped = 0;
}

/* ------------------------------------------------------------ requests */

/* A length-prefixed piece: [u8 n][n bytes] or [u16 n][n bytes]. */
static int take(const unsigned char **p, size_t *n, int wide, const unsigned char **out,
                size_t *len)
{
    size_t hl = wide ? 2 : 1, l;

    if (*n < hl)
        return -EPROTO;
    l = wide ? ((size_t)(*p)[0] << 8 | (*p)[1]) : (*p)[0];
    if (*n - hl < l)
        return -EPROTO;
    *out = *p + hl;
    *len = l;
    *p += hl + l;
    *n -= hl + l;
    return 0;
}

int bus_out_open_decode(const unsigned char *p, size_t n, bus_out_open *r)
{
    memset(r, 0, sizeof *r);
    if (n < 8)
        return -EPROTO;
    r->limit = be32_get(p);
    r->report_ms = be32_get(p + 4);
    p += 8;
    n -= 8;
    if (take(&p, &n, 0, &r->kick, &r->kick_len) < 0 || take(&p, &n, 0, &r->down, &r->down_len) < 0)
        return -EPROTO;
    r->first = p;
    r->first_len = n;
    return 0;
}

int bus_out_write_decode(const unsigned char *p, size_t n, bus_out_write *r)
{
    memset(r, 0, sizeof *r);
    if (n < 1 || (p[0] & ~OUT_W_RESET))
        return -EPROTO;
    r->flags = p[0];
    p++;
    n--;
    if (take(&p, &n, 0, &r->sep, &r->sep_len) < 0)
        return -EPROTO;
    r->data = p;
    r->len = n;
    return 0;
}

/* Topics as bus_codec.c takes them: 1 to 255 bytes, no space or control. */
static int topic_ok(const unsigned char *t, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (t[i] <= 0x20 || t[i] == 0x7f)
            return 0;
    return 1;
}

int bus_out_sub_decode(const unsigned char *p, size_t n, bus_out_sub *r)
{
    const unsigned char *topic;

    memset(r, 0, sizeof *r);
    if (n < 5 || (p[4] & ~OUT_S_GATED))
        return -EPROTO;
    r->history = be32_get(p);
    r->flags = p[4];
    p += 5;
    n -= 5;
    if (take(&p, &n, 0, &topic, &r->topic_len) < 0 || !topic_ok(topic, r->topic_len) ||
        take(&p, &n, 0, &r->prefix, &r->prefix_len) < 0 ||
        take(&p, &n, 0, &r->hprefix, &r->hprefix_len) < 0 ||
        take(&p, &n, 0, &r->suffix, &r->suffix_len) < 0 ||
        take(&p, &n, 0, &r->nprefix, &r->nprefix_len) < 0 || n != 0)
        return -EPROTO;
    r->topic = (const char *)topic;
    return 0;
}

int bus_out_gate_decode(const unsigned char *p, size_t n, bus_out_gate *r)
{
    memset(r, 0, sizeof *r);
    if (take(&p, &n, 1, &r->before, &r->before_len) < 0 || take(&p, &n, 1, &r->one, &r->one_len) < 0)
        return -EPROTO;
    r->more = p;
    r->more_len = n;
    return 0;
}
