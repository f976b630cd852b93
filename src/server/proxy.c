/* proxy.c - the PROXY protocol receiver: an incremental parser that takes
 * exactly the header's bytes, and the socket reads around it (proxy.h). */
#include "server/proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

enum {
    ST_START = 0,   /* nothing yet: the first byte tells the version */
    ST_V1,          /* the text line, up to its CRLF */
    ST_V2_FIXED,    /* the 16-byte fixed part */
    ST_V2_ADDR,     /* the address block, kept in buf */
    ST_V2_TLV,      /* TLVs after the addresses, bounds-checked and skipped */
    ST_V2_SKIP,     /* bytes ignored whole (LOCAL, UNSPEC) */
    ST_DONE,
    ST_BAD,
};

static const unsigned char v2_sig[12] = {
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
};
static const char v1_sig[] = "PROXY ";
#define V1_SIG_LEN 6

#define V2_CMD_LOCAL 0x0
#define V2_CMD_PROXY 0x1
#define V2_AF_UNSPEC 0x0
#define V2_AF_INET 0x1
#define V2_AF_INET6 0x2
#define V2_AF_UNIX 0x3
#define V2_PROTO_UNSPEC 0x0
#define V2_PROTO_DGRAM 0x2
#define TLV_HDR_LEN 3

__attribute__((format(printf, 2, 3)))
static int fail(proxy_parser *p, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(p->error, sizeof p->error, fmt, ap);
    va_end(ap);
    p->state = ST_BAD;
    return -EPROTO;
}

static int finish(proxy_parser *p)
{
    p->state = ST_DONE;
    return 1;
}

void proxy_parser_init(proxy_parser *p)
{
    memset(p, 0, sizeof *p);
    p->state = ST_START;
}

size_t proxy_parser_next(const proxy_parser *p, int *peek)
{
    *peek = 0;
    switch (p->state) {
    case ST_START:
    case ST_V1:
        *peek = 1;
        return PROXY_V1_MAX - p->have;
    case ST_V2_FIXED:
        return PROXY_V2_FIXED - p->have;
    case ST_V2_ADDR:
    case ST_V2_TLV:
    case ST_V2_SKIP:
        return p->total - p->have;
    default:
        return 0;
    }
}

const char *proxy_kind_name(proxy_kind kind)
{
    switch (kind) {
    case PROXY_KIND_ADDRS: return "PROXY";
    case PROXY_KIND_UNKNOWN: return "UNKNOWN";
    case PROXY_KIND_LOCAL: return "LOCAL";
    case PROXY_KIND_UNSPEC: return "UNSPEC";
    default: return "none";
    }
}

/* ------------------------------------------------------------- addresses */

static void addr_set4(sf_addr *a, const void *ip, unsigned port)
{
    memset(a, 0, sizeof *a);
    a->u.in4.sin_family = AF_INET;
    memcpy(&a->u.in4.sin_addr, ip, 4);
    a->u.in4.sin_port = htons((uint16_t)port);
    a->len = sizeof a->u.in4;
}

static void addr_set6(sf_addr *a, const void *ip, unsigned port)
{
    memset(a, 0, sizeof *a);
    a->u.in6.sin6_family = AF_INET6;
    memcpy(&a->u.in6.sin6_addr, ip, 16);
    a->u.in6.sin6_port = htons((uint16_t)port);
    a->len = sizeof a->u.in6;
}

/* ---------------------------------------------------------------- v1 */

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* A field of the line, quoted in an error: printable, at most 40 bytes. */
static const char *shown(const char *field, char *buf, size_t len)
{
    size_t i;

    for (i = 0; field[i] && i + 1 < len && i < 40; i++)
        buf[i] = field[i] >= 0x20 && field[i] < 0x7f ? field[i] : '?';
    buf[i] = '\0';
    return buf;
}

/* Four decimal numbers 0..255 with single dots and no leading zeros: the
 * spec forbids them so that nobody reads "010" as octal. */
static int parse_v4(const char *s, unsigned char out[4])
{
    for (int i = 0; i < 4; i++) {
        unsigned v = 0;
        int digits = 0;

        if (!is_digit(*s) || (*s == '0' && is_digit(s[1])))
            return -1;
        for (; is_digit(*s); s++) {
            if (++digits > 3)
                return -1;
            v = v * 10 + (unsigned)(*s - '0');
        }
        if (v > 255)
            return -1;
        out[i] = (unsigned char)v;
        if (i < 3 && *s++ != '.')
            return -1;
    }
    return *s == '\0' ? 0 : -1;
}

static int v1_addr(proxy_parser *p, const char *field, int v6, const char *which, unsigned char *out)
{
    char text[48];

    if (v6 ? inet_pton(AF_INET6, field, out) == 1 : parse_v4(field, out) == 0)
        return 0;
    return fail(p, "v1: bad %s %s address \"%s\"", v6 ? "TCP6" : "TCP4", which,
                shown(field, text, sizeof text));
}

static int v1_port(proxy_parser *p, const char *field, const char *which, unsigned *port)
{
    char text[48];
    size_t n = 0;
    unsigned long v = 0;

    for (; is_digit(field[n]); n++)
        if (n < 6)
            v = v * 10 + (unsigned long)(field[n] - '0');
    if (n == 0 || field[n] != '\0')
        return fail(p, "v1: bad %s port \"%s\"", which, shown(field, text, sizeof text));
    if (field[0] == '0' && n > 1)
        return fail(p, "v1: %s port \"%s\" has a leading zero", which, shown(field, text, sizeof text));
    if (n > 5 || v > 65535)
        return fail(p, "v1: %s port %s > 65535", which, shown(field, text, sizeof text));
    *port = (unsigned)v;
    return 0;
}

/* "TCP4 SRC DST SPORT DPORT", split on single spaces. */
static int v1_tcp(proxy_parser *p, char *rest, int v6)
{
    char *field[4];
    unsigned char src[16], dst[16];
    unsigned sport, dport;
    size_t n = 0;

    for (char *s = rest;;) {
        char *space = strchr(s, ' ');

        if (n == 4)
            return fail(p, "v1: more than 4 fields after %s", v6 ? "TCP6" : "TCP4");
        field[n++] = s;
        if (!space)
            break;
        *space = '\0';
        s = space + 1;
    }
    if (n < 4)
        return fail(p, "v1: %zu of the 4 fields after %s (source, destination, ports)", n,
                    v6 ? "TCP6" : "TCP4");
    for (size_t i = 0; i < 4; i++)
        if (field[i][0] == '\0')
            return fail(p, "v1: an empty field (two spaces in a row, or a space before the CRLF)");
    if (v1_addr(p, field[0], v6, "source", src) < 0 ||
        v1_addr(p, field[1], v6, "destination", dst) < 0 ||
        v1_port(p, field[2], "source", &sport) < 0 ||
        v1_port(p, field[3], "destination", &dport) < 0)
        return -EPROTO;
    if (v6) {
        addr_set6(&p->src, src, sport);
        addr_set6(&p->dst, dst, dport);
    } else {
        addr_set4(&p->src, src, sport);
        addr_set4(&p->dst, dst, dport);
    }
    p->kind = PROXY_KIND_ADDRS;
    return finish(p);
}

/* The whole line is in buf, "PROXY " to CRLF. */
static int v1_line(proxy_parser *p)
{
    char line[PROXY_V1_MAX + 1], text[48];
    size_t n;

    if (p->have < V1_SIG_LEN + 2 || p->have > PROXY_V1_MAX)
        return fail(p, "v1: internal: line of %zu bytes", p->have); /* v1_byte rules it out */
    n = p->have - V1_SIG_LEN - 2;
    memcpy(line, p->buf + V1_SIG_LEN, n);
    line[n] = '\0';
    /* UNKNOWN: "the receiver must ignore anything presented before the CRLF". */
    if (n >= 7 && memcmp(line, "UNKNOWN", 7) == 0 && (n == 7 || line[7] == ' ')) {
        p->kind = PROXY_KIND_UNKNOWN;
        return finish(p);
    }
    if (memchr(line, '\0', n))
        return fail(p, "v1: a NUL byte in the line");
    if (n >= 5 && memcmp(line, "TCP4 ", 5) == 0)
        return v1_tcp(p, line + 5, 0);
    if (n >= 5 && memcmp(line, "TCP6 ", 5) == 0)
        return v1_tcp(p, line + 5, 1);
    char *space = strchr(line, ' ');
    if (space)
        *space = '\0';
    return fail(p, "v1: unknown protocol \"%s\" (not TCP4, TCP6 or UNKNOWN)",
                shown(line, text, sizeof text));
}

/* One byte of the line at a time: the line is short, and each byte may be
 * its last. */
static int v1_byte(proxy_parser *p, unsigned char c)
{
    size_t pos = p->have;

    if (pos < V1_SIG_LEN && c != (unsigned char)v1_sig[pos])
        return fail(p, pos < 5 ? "v1: bad signature (not \"PROXY\")" : "v1: no space after \"PROXY\"");
    if (pos > 0 && p->buf[pos - 1] == '\r' && c != '\n')
        return fail(p, "v1: a CR not followed by LF");
    if (c == '\n' && p->buf[pos - 1] != '\r')
        return fail(p, "v1: an LF without a CR before it");
    p->buf[p->have++] = c;
    if (c == '\n')
        return v1_line(p);
    if (p->have == PROXY_V1_MAX)
        return fail(p, "v1: no CRLF in the first %d bytes (line too long)", PROXY_V1_MAX);
    return 0;
}

/* ---------------------------------------------------------------- v2 */

static size_t take(size_t want, size_t avail)
{
    return want < avail ? want : avail;
}

/* The addresses are in buf: the client's and the balancer's, for TCP. */
static void v2_addrs(proxy_parser *p)
{
    const unsigned char *a = p->buf + PROXY_V2_FIXED;

    if (p->buf[13] == 0x11) {
        addr_set4(&p->src, a, (unsigned)a[8] << 8 | a[9]);
        addr_set4(&p->dst, a + 4, (unsigned)a[10] << 8 | a[11]);
    } else {
        addr_set6(&p->src, a, (unsigned)a[32] << 8 | a[33]);
        addr_set6(&p->dst, a + 16, (unsigned)a[34] << 8 | a[35]);
    }
}

/* The fixed part is in: check it, learn the header's length and layout. */
static int v2_fixed(proxy_parser *p)
{
    unsigned version = p->buf[12] >> 4, command = p->buf[12] & 0xF;
    unsigned family = p->buf[13] >> 4, proto = p->buf[13] & 0xF;
    unsigned len = (unsigned)p->buf[14] << 8 | p->buf[15];
    static const unsigned addr_len[4] = { 0, 12, 36, 216 };
    static const char *const family_name[4] = { "UNSPEC", "IPv4", "IPv6", "AF_UNIX" };

    if (version != 2)
        return fail(p, "v2: version %u, not 2", version);
    if (command != V2_CMD_LOCAL && command != V2_CMD_PROXY)
        return fail(p, "v2: unknown command %u (neither LOCAL nor PROXY)", command);
    p->total = PROXY_V2_FIXED + len;
    p->addr_end = PROXY_V2_FIXED;
    if (command == V2_CMD_LOCAL) {
        /* The spec: discard the protocol block, family included. */
        p->kind = PROXY_KIND_LOCAL;
        p->state = ST_V2_SKIP;
    } else if (family > V2_AF_UNIX) {
        return fail(p, "v2: unknown address family %u (byte 0x%02x)", family, p->buf[13]);
    } else if (proto > V2_PROTO_DGRAM) {
        return fail(p, "v2: unknown transport protocol %u (byte 0x%02x)", proto, p->buf[13]);
    } else if (family == V2_AF_UNSPEC || proto == V2_PROTO_UNSPEC) {
        /* The address block's size is unknown: skip it all, TLVs too. */
        p->kind = PROXY_KIND_UNSPEC;
        p->state = ST_V2_SKIP;
    } else {
        if (len < addr_len[family])
            return fail(p, "v2: length %u is shorter than the %s addresses (%u bytes)", len,
                        family_name[family], addr_len[family]);
        p->addr_end = PROXY_V2_FIXED + addr_len[family];
        /* UDP and AF_UNIX: the spec's fall back to UNSPEC for what a TCP
         * server does not support; their block is still bounds-checked. */
        p->kind = p->buf[13] == 0x11 || p->buf[13] == 0x21 ? PROXY_KIND_ADDRS : PROXY_KIND_UNSPEC;
        p->state = ST_V2_ADDR;
    }
    return p->have == p->total ? finish(p) : 0;
}

static int v2_fixed_bytes(proxy_parser *p, const unsigned char *in, size_t avail, size_t *n)
{
    *n = take(PROXY_V2_FIXED - p->have, avail);
    for (size_t i = 0; i < *n; i++) {
        size_t pos = p->have;

        if (pos < sizeof v2_sig && in[i] != v2_sig[pos])
            return fail(p, "v2: bad signature (byte %zu is 0x%02x, not 0x%02x)", pos, in[i], v2_sig[pos]);
        p->buf[p->have++] = in[i];
    }
    return p->have == PROXY_V2_FIXED ? v2_fixed(p) : 0;
}

static int v2_addr_bytes(proxy_parser *p, const unsigned char *in, size_t avail, size_t *n)
{
    *n = take(p->addr_end - p->have, avail);
    memcpy(p->buf + p->have, in, *n);
    p->have += *n;
    if (p->have < p->addr_end)
        return 0;
    if (p->kind == PROXY_KIND_ADDRS)
        v2_addrs(p);
    p->state = ST_V2_TLV;
    return p->have == p->total ? finish(p) : 0;
}

/* TLVs: each is type (1), length (2, big-endian), value; none may run past
 * the header's end, and the header must end between two of them. */
static int v2_tlv_bytes(proxy_parser *p, const unsigned char *in, size_t avail, size_t *n)
{
    size_t left = p->total - p->have;

    if (p->tlv_skip > 0) {
        *n = take(p->tlv_skip, avail);
        p->tlv_skip -= *n;
    } else {
        if (p->tlv_have == 0 && left < TLV_HDR_LEN)
            return fail(p, "v2: %zu byte%s after the last TLV, too few for another", left,
                        left == 1 ? "" : "s");
        *n = 1;
        p->tlv_hdr[p->tlv_have++] = in[0];
        if (p->tlv_have == TLV_HDR_LEN) {
            size_t value = (size_t)p->tlv_hdr[1] << 8 | p->tlv_hdr[2];

            if (value > left - 1) {
                size_t over = value - (left - 1);

                return fail(p, "v2: TLV type 0x%02x of %zu bytes overruns the header by %zu byte%s",
                            p->tlv_hdr[0], value, over, over == 1 ? "" : "s");
            }
            p->tlv_skip = value;
            p->tlv_have = 0;
        }
    }
    p->have += *n;
    return p->have == p->total ? finish(p) : 0;
}

static int v2_skip_bytes(proxy_parser *p, size_t avail, size_t *n)
{
    *n = take(p->total - p->have, avail);
    p->have += *n;
    return p->have == p->total ? finish(p) : 0;
}

/* ------------------------------------------------------------- feeding */

/* Takes some of in (at least one byte, unless it only picks the version);
 * returns 1 done, 0 more, -EPROTO. */
static int step(proxy_parser *p, const unsigned char *in, size_t avail, size_t *n)
{
    *n = 0;
    switch (p->state) {
    case ST_START:
        if (in[0] == 'P') {
            p->version = 1;
            p->state = ST_V1;
            return 0;
        }
        if (in[0] == v2_sig[0]) {
            p->version = 2;
            p->state = ST_V2_FIXED;
            return 0;
        }
        return fail(p, "not a PROXY header: the first byte is 0x%02x, neither 'P' (v1) nor CR (v2)",
                    in[0]);
    case ST_V1:
        *n = 1;
        return v1_byte(p, in[0]);
    case ST_V2_FIXED:
        return v2_fixed_bytes(p, in, avail, n);
    case ST_V2_ADDR:
        return v2_addr_bytes(p, in, avail, n);
    case ST_V2_TLV:
        return v2_tlv_bytes(p, in, avail, n);
    default:
        return v2_skip_bytes(p, avail, n);
    }
}

int proxy_parser_feed(proxy_parser *p, const void *buf, size_t len, size_t *used)
{
    const unsigned char *in = buf;
    size_t off = 0;
    int rc = 0;

    *used = 0;
    if (p->state == ST_DONE)
        return 1;
    if (p->state == ST_BAD)
        return -EPROTO;
    while (rc == 0 && off < len) {
        size_t n;

        rc = step(p, in + off, len - off, &n);
        off += n;
    }
    *used = off;
    return rc;
}

/* ---------------------------------------------------------- the socket */

/* Drops from the socket the n bytes a peek showed and the parser took. */
static int drop(int fd, size_t n)
{
    unsigned char sink[256];

    while (n > 0) {
        ssize_t r = recv(fd, sink, take(n, sizeof sink), MSG_DONTWAIT);

        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? -EIO : -errno; /* peeked bytes vanished */
        if (r == 0)
            return -EPIPE;
        n -= (size_t)r;
    }
    return 0;
}

int proxy_read(int fd, proxy_parser *p)
{
    /* Enough for a whole v1 line, and most v2 headers in one read. */
    unsigned char buf[512];

    for (;;) {
        int peek, rc, drc;
        size_t want = proxy_parser_next(p, &peek), used;
        ssize_t n;

        if (p->state == ST_DONE)
            return 1;
        if (p->state == ST_BAD)
            return -EPROTO;
        n = recv(fd, buf, take(want, sizeof buf), MSG_DONTWAIT | (peek ? MSG_PEEK : 0));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
        if (n == 0) {
            snprintf(p->error, sizeof p->error, "the peer closed the connection after %zu bytes of the header",
                     p->have);
            return -EPIPE;
        }
        rc = proxy_parser_feed(p, buf, (size_t)n, &used);
        if (rc < 0)
            return rc;
        if (peek && (drc = drop(fd, used)) < 0)
            return drc;
        if (rc == 1)
            return 1;
    }
}
