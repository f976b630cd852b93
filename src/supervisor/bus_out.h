/*
 * bus_out.h - output offload: a client's bytes as the bus holds them, and
 * the child's requests about them (docs/design.md, "Output offload").
 *
 * A child may hand the bus its client's socket (CHAN_T_OUT_OPEN, the
 * descriptor riding on it); the bus is then that client's only writer:
 * the child's own output comes as CHAN_T_OUT_WRITE requests, in order
 * with the rest of its requests, and the messages of the topics it
 * subscribed with CHAN_T_SUBSCRIBE_OUT are appended as prefix + data +
 * suffix (bytes the child chose) instead of being framed onto its
 * channel. This file is the pure part: the bounded buffer (what waits,
 * what waits behind a gate, the last bytes written), and the requests'
 * wire formats. No sockets, no loop (bus.c writes; unit-tested in
 * tests/unit/test_bus_out.c, the decoders fuzzed by fuzz_bus).
 *
 * Requests (payload of the frame; u8, u16, u32 big-endian):
 *   OUT_OPEN       [u32 limit][u32 report_ms][u8 k][kick words: k][u8 d][shutdown words: d]
 *                  [first bytes]  + the client socket (CHAN_F_FD)
 *   OUT_WRITE      [u8 flags][u8 s][sep: s][data]; flags OUT_W_RESET: what waits (not the
 *                  gate) is dropped first, then the part of sep the client has not had
 *   SUBSCRIBE_OUT  [u32 history][u8 flags][u8 t][topic][u8 p][prefix][u8 h][history prefix]
 *                  [u8 s][suffix][u8 n][notice prefix]; flags OUT_S_GATED: its messages
 *                  wait behind the gate; the bus's own notices about the topic (messages
 *                  missed on the way) are written in their place as notice prefix + text
 *                  + suffix
 *   OUT_GATE       [u16 b][before][u16 o][after, one][after, more]: what waits behind the
 *                  gate goes to the client, in its place; if any did not fit (skipped),
 *                  before + the count in decimal + the fitting after follows it
 */
#ifndef SF_SUPERVISOR_BUS_OUT_H
#define SF_SUPERVISOR_BUS_OUT_H

#include <stddef.h>
#include <stdint.h>

#define BUS_OUT_WORDS_MAX 255      /* bytes of kick or shutdown words, a sep, a prefix */
#define BUS_OUT_TAIL 8             /* last bytes written, kept for a sep */
#define OUT_W_RESET 0x01
#define OUT_S_GATED 0x01

typedef struct bus_outbuf {
    unsigned char *buf;     /* buf[start, end): waits for the client */
    size_t start, end, cap;
    unsigned char *gate;    /* gate[0, glen): waits behind the gate */
    size_t glen, gcap;
    uint64_t skipped;       /* messages that did not fit behind the gate */
    size_t limit;           /* bytes waiting in both, at most (force aside) */
    unsigned char tail[BUS_OUT_TAIL]; /* the last bytes the client was sent */
    size_t ntail;
    uint64_t written, dropped;
} bus_outbuf;

void bus_outbuf_init(bus_outbuf *o, size_t limit);
void bus_outbuf_fini(bus_outbuf *o);

/* Bytes waiting, the gate's included: what counts for congestion. */
static inline size_t bus_outbuf_bytes(const bus_outbuf *o)
{
    return o->end - o->start + o->glen;
}

/* Appends the pieces as one unit, in front of the gate or behind it.
 * Returns 0, or -ENOBUFS when they would pass the limit (nothing kept;
 * counted in dropped, and in skipped behind the gate), -ENOMEM. force:
 * BUS_OUT_FIT, within the limit; BUS_OUT_NOTE, past it by what it adds,
 * but only while the buffer is not past it already (a note: a client
 * that reads nothing cannot make its notes grow the buffer without
 * bound); BUS_OUT_ALWAYS, past it regardless (once: the words at the end,
 * the gate's move, which adds nothing to the count). */
#define BUS_OUT_FIT 0
#define BUS_OUT_NOTE 1
#define BUS_OUT_ALWAYS 2
typedef struct bus_piece {
    const void *p;
    size_t n;
} bus_piece;
int bus_outbuf_append(bus_outbuf *o, const bus_piece *pieces, int npieces, int behind_gate,
                      int force);

/* What waits in front of the gate: *len bytes at the returned pointer. */
const unsigned char *bus_outbuf_data(const bus_outbuf *o, size_t *len);

/* The client took n bytes of it. */
void bus_outbuf_consumed(bus_outbuf *o, size_t n);

/* Drops what waits in front of the gate (counted in dropped, bytes), then
 * appends the part of sep the client has not had already: nothing when
 * nothing was ever written or what was written ends with sep, else sep
 * less its longest beginning that what was written ends with. Returns
 * the bytes dropped. */
size_t bus_outbuf_reset(bus_outbuf *o, const void *sep, size_t seplen);

/* The gate opens: what waits behind it goes behind what waits in front.
 * If messages were skipped, note_before + the count + note_one or
 * note_more is appended after them (BUS_OUT_NOTE). Returns the count
 * skipped. */
uint64_t bus_outbuf_gate_open(bus_outbuf *o, const void *before, size_t blen, const void *one,
                              size_t olen, const void *more, size_t mlen);

/* Drops what waits behind the gate (a gated subscription undone). */
void bus_outbuf_gate_drop(bus_outbuf *o);

/* ------------------------------------------------------------ requests */

typedef struct bus_out_open {
    uint32_t limit, report_ms;
    const unsigned char *kick, *down, *first;
    size_t kick_len, down_len, first_len;
} bus_out_open;

typedef struct bus_out_write {
    int flags;
    const unsigned char *sep, *data;
    size_t sep_len, len;
} bus_out_write;

typedef struct bus_out_sub {
    uint32_t history;
    int flags;
    const char *topic;
    size_t topic_len;
    const unsigned char *prefix, *hprefix, *suffix, *nprefix;
    size_t prefix_len, hprefix_len, suffix_len, nprefix_len;
} bus_out_sub;

typedef struct bus_out_gate {
    const unsigned char *before, *one, *more;
    size_t before_len, one_len, more_len;
} bus_out_gate;

/* Each decodes a request's payload (pointing into it). Returns 0 or
 * -EPROTO (malformed: the child is disconnected). */
int bus_out_open_decode(const unsigned char *p, size_t n, bus_out_open *r);
int bus_out_write_decode(const unsigned char *p, size_t n, bus_out_write *r);
int bus_out_sub_decode(const unsigned char *p, size_t n, bus_out_sub *r);
int bus_out_gate_decode(const unsigned char *p, size_t n, bus_out_gate *r);

#endif
