/*
 * proxy.h - a receiver for the PROXY protocol, v1 (text) and v2 (binary),
 * as HAProxy's proxy-protocol.txt specifies it.
 *
 * The parser takes the header's bytes in any split (one at a time works)
 * and never takes a byte past the header's end, so the client's first bytes
 * stay in the socket for the handler. A caller asks proxy_parser_next how
 * much it may read next:
 *
 *   - v2 (and its 16-byte fixed part): exactly the bytes left in the header,
 *     read with a plain recv(), since the length is known;
 *   - v1, and before the first byte: the line ends at the first CRLF, which
 *     only the bytes tell, so the caller MSG_PEEKs up to 107 bytes, feeds
 *     them, and then drops from the socket exactly the bytes the parser took.
 *
 * proxy_read does both on a socket; it is what the server's callers use.
 *
 * What is accepted (anything else is an error with a message saying what):
 *   - v1: "PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n" with exactly one space
 *     between fields, IPv4 as four decimal numbers 0..255 without leading
 *     zeros, IPv6 as inet_pton reads it, ports 0..65535 without leading
 *     zeros, the family of both addresses matching the protocol, at most 107
 *     bytes with the CRLF; no lone CR or LF anywhere in the line.
 *     "PROXY UNKNOWN\r\n", or "PROXY UNKNOWN " and anything up to the CRLF
 *     (ignored, as the spec says): use the socket's own addresses.
 *   - v2: the 12-byte signature, version 2, command LOCAL (0) or PROXY (1),
 *     then `len` bytes (up to 65,535). LOCAL: the family and every byte
 *     after the fixed part are ignored (the spec: "discard the protocol
 *     block including the family"); use the socket's addresses.
 *     PROXY over TCP (0x11, 0x21): the addresses, then TLVs, each
 *     bounds-checked (none may run past the header's end, nor leave 1 or 2
 *     bytes that cannot be one) and otherwise ignored; CRC32C is not
 *     verified. PROXY with family or transport UNSPEC (0x0.), over UDP
 *     (0x12, 0x22) or AF_UNIX (0x31, 0x32): accepted with the socket's own
 *     addresses, the spec's "fall back to UNSPEC" for combinations a
 *     receiver does not support; for UDP and AF_UNIX the address block must
 *     still fit in `len` and the TLVs after it are checked, for UNSPEC the
 *     block's size is unknown and everything is skipped. A family nibble
 *     above 3 or a transport nibble above 2 is refused.
 *
 * The parser holds no pointers and allocates nothing: it is a few hundred
 * bytes, kept per pending connection.
 */
#ifndef SF_SERVER_PROXY_H
#define SF_SERVER_PROXY_H

#include <stddef.h>

#include "sockfork.h"

#define PROXY_V1_MAX 107               /* the longest v1 line, CRLF included */
#define PROXY_V2_FIXED 16              /* signature, version/command, family, length */
#define PROXY_V2_MAX (16 + 65535)      /* the longest v2 header */
#define PROXY_BUF_SIZE (16 + 216)      /* fixed part + the longest address block (AF_UNIX) */
#define PROXY_ERROR_MAX 128

/* What the header says about the connection. */
typedef enum proxy_kind {
    PROXY_KIND_NONE = 0,   /* not complete yet */
    PROXY_KIND_ADDRS,      /* TCP over IPv4/IPv6: src and dst are the client's and the balancer's */
    PROXY_KIND_UNKNOWN,    /* v1 UNKNOWN: use the socket's own addresses */
    PROXY_KIND_LOCAL,      /* v2 LOCAL (a health check): use the socket's own addresses */
    PROXY_KIND_UNSPEC,     /* v2 PROXY, family UNSPEC, UDP or AF_UNIX: the socket's addresses */
} proxy_kind;

typedef struct proxy_parser {
    int state;                          /* internal (proxy.c) */
    size_t have;                        /* header bytes taken so far */
    size_t total;                       /* v2: 16 + len once the fixed part is in; else 0 */
    size_t addr_end;                    /* v2: where the address block ends (TLVs follow) */
    unsigned char buf[PROXY_BUF_SIZE];  /* v1: the line; v2: fixed part and address block */
    unsigned char tlv_hdr[3];           /* v2: the TLV header being read */
    size_t tlv_have;                    /* its bytes so far */
    size_t tlv_skip;                    /* bytes of the current TLV's value left to skip */
    /* The result, once proxy_parser_feed returned 1: */
    int version;                        /* 1 or 2 (set as soon as the first byte tells) */
    proxy_kind kind;
    sf_addr src, dst;                   /* with PROXY_KIND_ADDRS only; zeroed otherwise */
    char error[PROXY_ERROR_MAX];        /* after -EPROTO (or -EPIPE from proxy_read) */
} proxy_parser;

void proxy_parser_init(proxy_parser *p);

/*
 * How many bytes the caller may read next without passing the header's end
 * (0 once complete or failed). *peek is set to 1 when those bytes must be
 * read with MSG_PEEK (the v1 line's end is not known yet), 0 when a plain
 * read of that many bytes is safe.
 */
size_t proxy_parser_next(const proxy_parser *p, int *peek);

/*
 * Eats bytes of the header: up to len from buf, stopping at the header's
 * end; *used says how many it took (for a peeking caller: exactly the bytes
 * to drop from the socket). Returns 1 when the header is complete and
 * valid (p->kind, p->src, p->dst, p->have = the header's length), 0 when
 * all of buf was taken and more is needed, -EPROTO for a malformed header
 * (p->error says why; *used is then meaningless and the connection is to be
 * closed). Calling again after 1 or -EPROTO returns the same, taking nothing.
 */
int proxy_parser_feed(proxy_parser *p, const void *buf, size_t len, size_t *used);

/*
 * The socket side, for a caller that waits for readability between calls:
 * reads from fd without blocking (MSG_DONTWAIT, so fd may be blocking too)
 * as far as the bytes already there allow, peeking for v1 and dropping
 * exactly what the parser took. The client's bytes after the header are
 * never read. Returns 1 when the header is complete, 0 when it needs more
 * bytes (wait until fd is readable and call again), -EPROTO for a malformed
 * header (p->error says why), -EPIPE when the peer closed before the
 * header's end (p->have bytes of it came; p->error says so), or another
 * -errno from recv (EINTR is retried).
 */
int proxy_read(int fd, proxy_parser *p);

/* "PROXY", "UNKNOWN", "LOCAL", "UNSPEC" (or "none"), for log lines. */
const char *proxy_kind_name(proxy_kind kind);

#endif
