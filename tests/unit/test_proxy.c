/* Unit tests: the PROXY protocol receiver (src/server/proxy.c). The
 * captures in tests/data/proxy-protocol/ come from HAProxy 2.6; their
 * README has the decoded values asserted here. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/proxy.h"

/* ------------------------------------------------------------- helpers */

/* tests/data/proxy-protocol, found from this file's path as the compiler
 * saw it (relative to the build directory, the executable's parent's
 * parent) so the test runs from any directory. */
static const char *data_dir(void)
{
    static char dir[PATH_MAX];
    char exe[PATH_MAX], src[PATH_MAX];
    ssize_t n;

    if (dir[0])
        return dir;
    snprintf(src, sizeof src, "%s", __FILE__);
    if (src[0] == '/') {
        snprintf(dir, sizeof dir, "%s/../data/proxy-protocol", dirname(src));
        return dir;
    }
    n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    assert_true(n > 0);
    exe[n] = '\0';
    /* build/tests/test_proxy -> build */
    char *build = dirname(dirname(exe));
    snprintf(dir, sizeof dir, "%s/%s/../data/proxy-protocol", build, dirname(src));
    return dir;
}

static size_t load(const char *name, unsigned char *buf, size_t cap)
{
    char path[PATH_MAX * 2];
    ssize_t n;
    int fd;

    snprintf(path, sizeof path, "%s/%s", data_dir(), name);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        fail_msg("cannot open %s", path);
    n = read(fd, buf, cap);
    close(fd);
    assert_true(n > 0 && (size_t)n < cap);
    return (size_t)n;
}

static void assert_addr(const sf_addr *a, const char *want)
{
    char text[SF_ADDR_TEXT_MAX];

    assert_true(sf_addr_format(a, text, sizeof text) > 0);
    assert_string_equal(text, want);
}

/* Feeds buf in pieces of `piece` bytes (0: whole); returns the last rc,
 * and *taken the bytes the parser took in all. Checks that no call takes
 * more than it was given, and that 0 means everything was taken. */
static int feed_pieces(proxy_parser *p, const unsigned char *buf, size_t len, size_t piece,
                       size_t *taken)
{
    size_t off = 0;
    int rc = 0;

    proxy_parser_init(p);
    while (off < len) {
        size_t n = piece == 0 || len - off < piece ? len - off : piece, used = 0;

        rc = proxy_parser_feed(p, buf + off, n, &used);
        if (rc < 0)
            break;
        assert_true(used <= n);
        if (rc == 0)
            assert_int_equal(used, n);
        off += used;
        if (rc == 1)
            break;
    }
    *taken = off;
    return rc;
}

/* --------------------------------------------------------- the captures */

struct capture {
    const char *file;
    size_t len;
    int version;
    proxy_kind kind;
    const char *src, *dst;   /* with PROXY_KIND_ADDRS */
};

static const struct capture captures[] = {
    { "v1-tcp4.bin", 45, 1, PROXY_KIND_ADDRS, "10.77.0.101:40001", "10.77.0.4:7001" },
    { "v1-tcp4-b.bin", 45, 1, PROXY_KIND_ADDRS, "10.77.0.102:40002", "10.77.0.4:7001" },
    { "v1-tcp6.bin", 41, 1, PROXY_KIND_ADDRS, "[fd77::101]:40005", "[fd77::4]:7001" },
    { "v1-unknown-unixfront.bin", 15, 1, PROXY_KIND_UNKNOWN, NULL, NULL },
    { "v1-healthcheck.bin", 43, 1, PROXY_KIND_ADDRS, "10.77.0.4:48304", "10.77.0.3:7000" },
    { "v2-tcp4.bin", 28, 2, PROXY_KIND_ADDRS, "10.77.0.101:40003", "10.77.0.4:7002" },
    { "v2-tcp4-b.bin", 28, 2, PROXY_KIND_ADDRS, "10.77.0.102:40004", "10.77.0.4:7002" },
    { "v2-tcp6.bin", 52, 2, PROXY_KIND_ADDRS, "[fd77::101]:40007", "[fd77::4]:7002" },
    { "v2-tcp4-tlv-crc32c-uniqueid.bin", 84, 2, PROXY_KIND_ADDRS, "10.77.0.101:40009", "10.77.0.4:7003" },
    { "v2-local-healthcheck.bin", 16, 2, PROXY_KIND_LOCAL, NULL, NULL },
    { "v2-local-unixfront.bin", 16, 2, PROXY_KIND_LOCAL, NULL, NULL },
};
#define NCAPTURES (sizeof captures / sizeof captures[0])

static void check_result(const proxy_parser *p, const struct capture *c)
{
    assert_int_equal(p->version, c->version);
    assert_int_equal(p->kind, c->kind);
    assert_int_equal(p->have, c->len);
    if (c->src) {
        assert_addr(&p->src, c->src);
        assert_addr(&p->dst, c->dst);
    } else {
        assert_int_equal(p->src.len, 0);
        assert_int_equal(p->dst.len, 0);
    }
    assert_int_equal(proxy_parser_next(p, &(int){ 0 }), 0);
}

/* Each capture, whole, then with the client's bytes after it, byte by
 * byte, and in two pieces split at every byte. */
static void test_captures(void **state)
{
    (void)state;
    for (size_t i = 0; i < NCAPTURES; i++) {
        const struct capture *c = &captures[i];
        unsigned char buf[512];
        size_t len = load(c->file, buf, sizeof buf - 16), taken;
        proxy_parser p;

        print_message("%s\n", c->file);
        assert_int_equal(len, c->len);
        assert_int_equal(feed_pieces(&p, buf, len, 0, &taken), 1);
        assert_int_equal(taken, len);
        check_result(&p, c);

        memcpy(buf + len, "hello", 5);
        assert_int_equal(feed_pieces(&p, buf, len + 5, 0, &taken), 1);
        assert_int_equal(taken, len);
        check_result(&p, c);

        assert_int_equal(feed_pieces(&p, buf, len + 5, 1, &taken), 1);
        assert_int_equal(taken, len);
        check_result(&p, c);

        for (size_t k = 1; k < len + 5; k++) {
            size_t used1, used2;
            int rc;

            proxy_parser_init(&p);
            rc = proxy_parser_feed(&p, buf, k, &used1);
            if (k < len) {
                assert_int_equal(rc, 0);
                assert_int_equal(used1, k);
                assert_int_equal(proxy_parser_feed(&p, buf + k, len + 5 - k, &used2), 1);
                assert_int_equal(used1 + used2, len);
            } else {
                assert_int_equal(rc, 1);
                assert_int_equal(used1, len);
            }
            check_result(&p, c);
        }
    }
}

/* The parser asks for no more than the header: a caller that reads
 * exactly what proxy_parser_next says (peeking when told) never passes
 * the header's end. */
static void test_next_never_passes_the_end(void **state)
{
    (void)state;
    for (size_t i = 0; i < NCAPTURES; i++) {
        const struct capture *c = &captures[i];
        unsigned char buf[512];
        size_t len = load(c->file, buf, sizeof buf - 300), off = 0;
        proxy_parser p;

        memset(buf + len, 'x', 300);
        proxy_parser_init(&p);
        for (;;) {
            int peek, rc;
            size_t want = proxy_parser_next(&p, &peek), used;

            assert_true(want > 0);
            if (!peek)
                assert_true(off + want <= len);
            rc = proxy_parser_feed(&p, buf + off, want, &used);
            assert_true(used <= want);
            off += used;
            assert_true(off <= len);
            if (rc == 1)
                break;
            assert_int_equal(rc, 0);
        }
        assert_int_equal(off, len);
        check_result(&p, c);
    }
}

/* Once done (or failed), feeding again takes nothing and says the same. */
static void test_after_the_end(void **state)
{
    unsigned char buf[64];
    size_t len = load("v2-tcp4.bin", buf, sizeof buf), used = 99;
    proxy_parser p;
    (void)state;

    proxy_parser_init(&p);
    assert_int_equal(proxy_parser_feed(&p, buf, len, &used), 1);
    assert_int_equal(proxy_parser_feed(&p, "abc", 3, &used), 1);
    assert_int_equal(used, 0);
    proxy_parser_init(&p);
    assert_int_equal(proxy_parser_feed(&p, "GET /", 5, &used), -EPROTO);
    assert_int_equal(proxy_parser_feed(&p, "abc", 3, &used), -EPROTO);
    assert_int_equal(used, 0);
}

/* ------------------------------------------------------------- v2 sizes */

static const unsigned char sig[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };

/* A v2 header: fixed part, then `len` bytes the caller fills. */
static size_t v2_header(unsigned char *out, unsigned char ver_cmd, unsigned char fam, size_t len)
{
    memcpy(out, sig, 12);
    out[12] = ver_cmd;
    out[13] = fam;
    out[14] = (unsigned char)(len >> 8);
    out[15] = (unsigned char)len;
    memset(out + 16, 0, len);
    return 16 + len;
}

/* TCP4 192.0.2.1:1234 -> 198.51.100.2:80 at out + 16. */
static void v2_tcp4_addrs(unsigned char *out)
{
    static const unsigned char a[12] = { 192, 0, 2, 1, 198, 51, 100, 2, 0x04, 0xD2, 0x00, 0x50 };
    memcpy(out + 16, a, sizeof a);
}

static size_t put_tlv(unsigned char *at, unsigned char type, size_t len, unsigned char fill)
{
    at[0] = type;
    at[1] = (unsigned char)(len >> 8);
    at[2] = (unsigned char)len;
    memset(at + 3, fill, len);
    return 3 + len;
}

static void expect_max(const unsigned char *buf, size_t len)
{
    proxy_parser p;
    size_t taken;

    assert_int_equal(len, PROXY_V2_MAX);
    for (size_t piece = 0; piece <= 7; piece += 7) {
        assert_int_equal(feed_pieces(&p, buf, len + 5, piece, &taken), 1);
        assert_int_equal(taken, PROXY_V2_MAX);
        assert_int_equal(p.kind, PROXY_KIND_ADDRS);
        assert_addr(&p.src, "192.0.2.1:1234");
        assert_addr(&p.dst, "198.51.100.2:80");
    }
    assert_int_equal(feed_pieces(&p, buf, len + 5, 1, &taken), 1);
    assert_int_equal(taken, PROXY_V2_MAX);
}

/* The whole 16 + 65,535-byte form: one TLV filling it, then many small
 * ones, fed whole, in pieces and byte by byte. */
static void test_v2_max_with_tlvs(void **state)
{
    unsigned char *buf = malloc(PROXY_V2_MAX + 5);
    size_t len, off;
    (void)state;

    assert_non_null(buf);
    len = v2_header(buf, 0x21, 0x11, 65535);
    v2_tcp4_addrs(buf);
    off = 28 + put_tlv(buf + 28, 0x04, 65535 - 12 - 3, 0xAB);
    assert_int_equal(off, len);
    memcpy(buf + len, "hello", 5);
    expect_max(buf, len);

    len = v2_header(buf, 0x21, 0x11, 65535);
    v2_tcp4_addrs(buf);
    off = 28;
    /* 65,523 bytes of TLVs: 257-byte ones, then one that fills the rest. */
    while (PROXY_V2_MAX - off >= 3 + 254 + 3)
        off += put_tlv(buf + off, 0xE0, 254, 0x11);
    off += put_tlv(buf + off, 0x05, PROXY_V2_MAX - off - 3, 0x22);
    assert_int_equal(off, len);
    memcpy(buf + len, "hello", 5);
    expect_max(buf, len);

    /* Zero-length TLVs are fine too (NOOP, "zero or more bytes"). */
    len = v2_header(buf, 0x21, 0x11, 12 + 6);
    v2_tcp4_addrs(buf);
    put_tlv(buf + 28, 0x04, 0, 0);
    put_tlv(buf + 31, 0x04, 0, 0);
    proxy_parser p;
    size_t taken;
    assert_int_equal(feed_pieces(&p, buf, len, 1, &taken), 1);
    assert_int_equal(taken, 34);
    free(buf);
}

/* v2 families other than TCP: UDP and AF_UNIX fall back to the socket's
 * addresses (their block is still bounds-checked), UNSPEC skips it all;
 * LOCAL ignores the family and whatever bytes follow. */
static void test_v2_other_families(void **state)
{
    unsigned char buf[600];
    proxy_parser p;
    size_t len, taken;
    (void)state;

    len = v2_header(buf, 0x21, 0x12, 12);   /* UDP over IPv4 */
    assert_int_equal(feed_pieces(&p, buf, len, 0, &taken), 1);
    assert_int_equal(p.kind, PROXY_KIND_UNSPEC);
    assert_int_equal(p.src.len, 0);
    len = v2_header(buf, 0x21, 0x22, 36 + 3);   /* UDP over IPv6, an empty TLV */
    put_tlv(buf + 16 + 36, 0x04, 0, 0);
    assert_int_equal(feed_pieces(&p, buf, len, 1, &taken), 1);
    assert_int_equal(p.kind, PROXY_KIND_UNSPEC);
    assert_int_equal(taken, 16 + 39);
    len = v2_header(buf, 0x21, 0x31, 216);  /* AF_UNIX stream */
    assert_int_equal(feed_pieces(&p, buf, len, 0, &taken), 1);
    assert_int_equal(p.kind, PROXY_KIND_UNSPEC);
    assert_int_equal(taken, 232);
    len = v2_header(buf, 0x21, 0x32, 216 + 4);  /* AF_UNIX dgram, a TLV */
    put_tlv(buf + 16 + 216, 0x01, 1, 'h');
    assert_int_equal(feed_pieces(&p, buf, len, 3, &taken), 1);
    assert_int_equal(taken, 236);
    len = v2_header(buf, 0x21, 0x00, 7);    /* PROXY UNSPEC: 7 bytes skipped unread */
    memset(buf + 16, 0xFF, 7);
    assert_int_equal(feed_pieces(&p, buf, len, 0, &taken), 1);
    assert_int_equal(p.kind, PROXY_KIND_UNSPEC);
    assert_int_equal(taken, 23);
    len = v2_header(buf, 0x21, 0x10, 1);    /* IPv4, transport UNSPEC */
    assert_int_equal(feed_pieces(&p, buf, len, 0, &taken), 1);
    assert_int_equal(p.kind, PROXY_KIND_UNSPEC);
    len = v2_header(buf, 0x20, 0x11, 12);   /* LOCAL with addresses: ignored */
    v2_tcp4_addrs(buf);
    assert_int_equal(feed_pieces(&p, buf, len, 0, &taken), 1);
    assert_int_equal(p.kind, PROXY_KIND_LOCAL);
    assert_int_equal(p.src.len, 0);
    assert_int_equal(taken, 28);
    len = v2_header(buf, 0x20, 0xFF, 2);    /* LOCAL: even the family is ignored */
    assert_int_equal(feed_pieces(&p, buf, len, 0, &taken), 1);
    assert_int_equal(p.kind, PROXY_KIND_LOCAL);
    assert_string_equal(proxy_kind_name(PROXY_KIND_LOCAL), "LOCAL");
    assert_string_equal(proxy_kind_name(PROXY_KIND_ADDRS), "PROXY");
}

/* v1 edge cases that are valid: the longest lines, port 0 and 65535,
 * UNKNOWN with the optional rest (ignored). */
static void test_v1_valid_edges(void **state)
{
    static const struct {
        const char *line, *src, *dst;
        proxy_kind kind;
    } cases[] = {
        { "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
          "255.255.255.255:65535", "255.255.255.255:65535", PROXY_KIND_ADDRS },
        { "PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n", "0.0.0.0:0", "0.0.0.0:0", PROXY_KIND_ADDRS },
        { "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
          "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
          "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", PROXY_KIND_ADDRS },
        { "PROXY TCP6 ::1 ::ffff:10.0.0.1 1 2\r\n", "[::1]:1", "[::ffff:10.0.0.1]:2", PROXY_KIND_ADDRS },
        { "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
          NULL, NULL, PROXY_KIND_UNKNOWN },
        { "PROXY UNKNOWN whatever\r\n", NULL, NULL, PROXY_KIND_UNKNOWN },
    };
    (void)state;

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unsigned char buf[160];
        size_t len = strlen(cases[i].line), taken;
        proxy_parser p;

        print_message("%s", cases[i].line);
        memcpy(buf, cases[i].line, len);
        memcpy(buf + len, "hello", 5);
        for (size_t piece = 0; piece <= 1; piece++) {
            assert_int_equal(feed_pieces(&p, buf, len + 5, piece, &taken), 1);
            assert_int_equal(taken, len);
            assert_true(taken <= PROXY_V1_MAX);
            assert_int_equal(p.kind, cases[i].kind);
            if (cases[i].src) {
                assert_addr(&p.src, cases[i].src);
                assert_addr(&p.dst, cases[i].dst);
            }
        }
    }
}

/* ------------------------------------------------------------ malformed */

struct bad {
    const char *what;
    const unsigned char *bytes;
    size_t len;
    const char *error;
};

#define TEXT(s) (const unsigned char *)(s), sizeof(s) - 1

static void expect_bad(const struct bad *b)
{
    proxy_parser p;
    size_t taken;

    print_message("%s\n", b->what);
    for (size_t piece = 0; piece <= 1; piece++) {
        assert_int_equal(feed_pieces(&p, b->bytes, b->len, piece, &taken), -EPROTO);
        assert_string_equal(p.error, b->error);
        assert_int_equal(proxy_parser_next(&p, &(int){ 0 }), 0);
    }
}

static void test_v1_malformed(void **state)
{
    static const char long_line[] =
        "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 655351\r\n";
    static const struct bad cases[] = {
        { "not PROXY", TEXT("GET / HTTP/1.0\r\n\r\n"),
          "not a PROXY header: the first byte is 0x47, neither 'P' (v1) nor CR (v2)" },
        { "bad signature", TEXT("PROXX TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), "v1: bad signature (not \"PROXY\")" },
        { "no space", TEXT("PROXY\r\n"), "v1: no space after \"PROXY\"" },
        { "line too long", TEXT(long_line), "v1: no CRLF in the first 107 bytes (line too long)" },
        { "LF alone", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), "v1: an LF without a CR before it" },
        { "CR alone", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rhello\r\n"), "v1: a CR not followed by LF" },
        { "CR CR LF", TEXT("PROXY UNKNOWN\r\r\n"), "v1: a CR not followed by LF" },
        { "unknown protocol", TEXT("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"),
          "v1: unknown protocol \"UDP4\" (not TCP4, TCP6 or UNKNOWN)" },
        { "UNKNOWNX", TEXT("PROXY UNKNOWNX\r\n"),
          "v1: unknown protocol \"UNKNOWNX\" (not TCP4, TCP6 or UNKNOWN)" },
        { "lower case", TEXT("PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n"),
          "v1: unknown protocol \"tcp4\" (not TCP4, TCP6 or UNKNOWN)" },
        { "empty", TEXT("PROXY \r\n"), "v1: unknown protocol \"\" (not TCP4, TCP6 or UNKNOWN)" },
        { "too few fields", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"),
          "v1: 3 of the 4 fields after TCP4 (source, destination, ports)" },
        { "too many fields", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"), "v1: more than 4 fields after TCP4" },
        { "two spaces", TEXT("PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n"), "v1: more than 4 fields after TCP4" },
        { "two spaces, 4 fields", TEXT("PROXY TCP4 1.2.3.4  5.6.7.8 1\r\n"),
          "v1: an empty field (two spaces in a row, or a space before the CRLF)" },
        { "trailing space", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n"),
          "v1: an empty field (two spaces in a row, or a space before the CRLF)" },
        { "leading zero in an address", TEXT("PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n"),
          "v1: bad TCP4 source address \"1.2.3.04\"" },
        { "octet > 255", TEXT("PROXY TCP4 1.2.3.4 5.6.7.256 1 2\r\n"),
          "v1: bad TCP4 destination address \"5.6.7.256\"" },
        { "three octets", TEXT("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n"), "v1: bad TCP4 source address \"1.2.3\"" },
        { "five octets", TEXT("PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n"),
          "v1: bad TCP4 source address \"1.2.3.4.5\"" },
        { "empty octet", TEXT("PROXY TCP4 1..3.4 5.6.7.8 1 2\r\n"), "v1: bad TCP4 source address \"1..3.4\"" },
        { "signed octet", TEXT("PROXY TCP4 +1.2.3.4 5.6.7.8 1 2\r\n"), "v1: bad TCP4 source address \"+1.2.3.4\"" },
        { "IPv6 in TCP4", TEXT("PROXY TCP4 ::1 5.6.7.8 1 2\r\n"), "v1: bad TCP4 source address \"::1\"" },
        { "IPv4 in TCP6", TEXT("PROXY TCP6 ::1 5.6.7.8 1 2\r\n"), "v1: bad TCP6 destination address \"5.6.7.8\"" },
        { "bad IPv6", TEXT("PROXY TCP6 fd77:::1 ::1 1 2\r\n"), "v1: bad TCP6 source address \"fd77:::1\"" },
        { "IPv6 scope", TEXT("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"),
          "v1: bad TCP6 source address \"fe80::1%eth0\"" },
        { "port > 65535", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"), "v1: source port 65536 > 65535" },
        { "port of 6 digits", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 1 100000\r\n"),
          "v1: destination port 100000 > 65535" },
        { "huge port", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 1 99999999999999999999999\r\n"),
          "v1: destination port 99999999999999999999999 > 65535" },
        { "port with leading zero", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n"),
          "v1: source port \"080\" has a leading zero" },
        { "negative port", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n"), "v1: bad source port \"-1\"" },
        { "port with garbage", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2x\r\n"), "v1: bad destination port \"2x\"" },
        { "hex port", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 0x10 2\r\n"), "v1: bad source port \"0x10\"" },
        { "tab", TEXT("PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n"),
          "v1: 3 of the 4 fields after TCP4 (source, destination, ports)" },
        { "NUL", (const unsigned char *)"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\0\r\n", 33, "v1: a NUL byte in the line" },
        { "control byte shown as ?", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 1 \x01\r\n"), "v1: bad destination port \"?\"" },
    };
    (void)state;

    assert_int_equal(strlen(long_line), 108);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_bad(&cases[i]);
}

static void test_v2_malformed(void **state)
{
    unsigned char b[16][400];
    size_t n[16];
    (void)state;

    /* A bad signature byte: the 8th ('Q' -> 'q'). */
    n[0] = v2_header(b[0], 0x21, 0x11, 12);
    b[0][7] = 'q';
    /* Version 1 in the binary form. */
    n[1] = v2_header(b[1], 0x11, 0x11, 12);
    /* Command 2. */
    n[2] = v2_header(b[2], 0x22, 0x11, 12);
    /* Family 4, transport 3. */
    n[3] = v2_header(b[3], 0x21, 0x41, 12);
    n[4] = v2_header(b[4], 0x21, 0x13, 12);
    /* Lengths shorter than the addresses. */
    n[5] = v2_header(b[5], 0x21, 0x11, 11);
    n[6] = v2_header(b[6], 0x21, 0x21, 12);
    n[7] = v2_header(b[7], 0x21, 0x31, 215);
    n[8] = v2_header(b[8], 0x21, 0x11, 0);
    /* TLVs that overrun: a value past the end; 1 and 2 bytes left over. */
    n[9] = v2_header(b[9], 0x21, 0x11, 12 + 3 + 4);
    put_tlv(b[9] + 28, 0x03, 5, 0);
    n[10] = v2_header(b[10], 0x21, 0x11, 12 + 1);
    n[11] = v2_header(b[11], 0x21, 0x11, 12 + 3 + 2);
    put_tlv(b[11] + 28, 0x04, 0, 0);
    /* A TLV whose length is 65535 in a short header. */
    n[12] = v2_header(b[12], 0x21, 0x21, 36 + 3);
    b[12][16 + 36] = 0x20;
    b[12][16 + 37] = 0xFF;
    b[12][16 + 38] = 0xFF;
    /* The first byte CR, the second not LF. */
    n[13] = v2_header(b[13], 0x21, 0x11, 12);
    b[13][1] = 'x';

    const struct bad cases[] = {
        { "bad signature", b[0], n[0], "v2: bad signature (byte 7 is 0x71, not 0x51)" },
        { "version 1", b[1], n[1], "v2: version 1, not 2" },
        { "command 2", b[2], n[2], "v2: unknown command 2 (neither LOCAL nor PROXY)" },
        { "family 4", b[3], n[3], "v2: unknown address family 4 (byte 0x41)" },
        { "transport 3", b[4], n[4], "v2: unknown transport protocol 3 (byte 0x13)" },
        { "short IPv4", b[5], n[5], "v2: length 11 is shorter than the IPv4 addresses (12 bytes)" },
        { "short IPv6", b[6], n[6], "v2: length 12 is shorter than the IPv6 addresses (36 bytes)" },
        { "short AF_UNIX", b[7], n[7], "v2: length 215 is shorter than the AF_UNIX addresses (216 bytes)" },
        { "no addresses", b[8], n[8], "v2: length 0 is shorter than the IPv4 addresses (12 bytes)" },
        { "TLV overrun", b[9], n[9], "v2: TLV type 0x03 of 5 bytes overruns the header by 1 byte" },
        { "1 byte left", b[10], n[10], "v2: 1 byte after the last TLV, too few for another" },
        { "2 bytes left", b[11], n[11], "v2: 2 bytes after the last TLV, too few for another" },
        { "TLV of 65535", b[12], n[12], "v2: TLV type 0x20 of 65535 bytes overruns the header by 65535 bytes" },
        { "CR then x", b[13], n[13], "v2: bad signature (byte 1 is 0x78, not 0x0a)" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_bad(&cases[i]);
}

/* ---------------------------------------------------------- proxy_read */

static void socket_pair(int sv[2])
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    int flags = fcntl(sv[0], F_GETFL);
    assert_int_equal(fcntl(sv[0], F_SETFL, flags | O_NONBLOCK), 0);
}

static void send_all(int fd, const void *buf, size_t len)
{
    const unsigned char *b = buf;

    while (len > 0) {
        ssize_t n = send(fd, b, len, MSG_NOSIGNAL);
        assert_true(n > 0);
        b += n;
        len -= (size_t)n;
    }
}

/* What is left in the socket after the header: exactly the client's bytes. */
static void expect_rest(int fd, const char *want)
{
    char buf[64];
    size_t want_len = strlen(want);
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);

    assert_int_equal(n, (ssize_t)want_len);
    assert_memory_equal(buf, want, want_len);
    assert_int_equal(recv(fd, buf, sizeof buf, MSG_DONTWAIT), -1);
    assert_int_equal(errno, EAGAIN);
}

/* Header + "hello" in one write: proxy_read takes the header only. */
static void test_read_one_write(void **state)
{
    (void)state;
    for (size_t i = 0; i < NCAPTURES; i++) {
        unsigned char buf[512];
        size_t len = load(captures[i].file, buf, sizeof buf - 8);
        proxy_parser p;
        int sv[2];

        print_message("%s\n", captures[i].file);
        socket_pair(sv);
        memcpy(buf + len, "hello", 5);
        send_all(sv[1], buf, len + 5);
        proxy_parser_init(&p);
        assert_int_equal(proxy_read(sv[0], &p), 1);
        check_result(&p, &captures[i]);
        assert_int_equal(proxy_read(sv[0], &p), 1);   /* again: nothing read */
        expect_rest(sv[0], "hello");
        close(sv[0]);
        close(sv[1]);
    }
}

/* The header in pieces (the last one carrying "hello" too): proxy_read
 * says 0 (wait) until the header's last byte is in, then leaves "hello". */
static void test_read_splits(void **state)
{
    static const size_t pieces[] = { 1, 2, 3, 5, 7, 13, 16, 17 };
    (void)state;

    for (size_t i = 0; i < NCAPTURES; i++) {
        for (size_t k = 0; k < sizeof pieces / sizeof pieces[0]; k++) {
            unsigned char buf[512];
            size_t len = load(captures[i].file, buf, sizeof buf - 8), off = 0;
            proxy_parser p;
            int sv[2], rc = 0;

            socket_pair(sv);
            memcpy(buf + len, "hello", 5);
            proxy_parser_init(&p);
            assert_int_equal(proxy_read(sv[0], &p), 0);   /* nothing yet */
            while (off < len + 5) {
                size_t n = len + 5 - off < pieces[k] ? len + 5 - off : pieces[k];

                send_all(sv[1], buf + off, n);
                off += n;
                rc = proxy_read(sv[0], &p);
                if (off < len) {
                    assert_int_equal(rc, 0);
                    assert_int_equal(p.have, off);
                } else {
                    assert_int_equal(rc, 1);
                }
            }
            check_result(&p, &captures[i]);
            expect_rest(sv[0], "hello");
            close(sv[0]);
            close(sv[1]);
        }
    }
}

/* The largest v2 header through a socket, "hello" after it. */
static void test_read_v2_max(void **state)
{
    unsigned char *buf = malloc(PROXY_V2_MAX + 5);
    proxy_parser p;
    int sv[2], rc, sndbuf = 256 * 1024;
    size_t len, off = 0;
    (void)state;

    assert_non_null(buf);
    len = v2_header(buf, 0x21, 0x11, 65535);
    v2_tcp4_addrs(buf);
    put_tlv(buf + 28, 0xE1, 65535 - 12 - 3, 0x5A);
    memcpy(buf + len, "hello", 5);
    socket_pair(sv);
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    proxy_parser_init(&p);
    /* In 4 KiB writes, reading between them, so no buffer needs to hold it all. */
    while (off < len + 5) {
        size_t n = len + 5 - off < 4096 ? len + 5 - off : 4096;
        send_all(sv[1], buf + off, n);
        off += n;
        rc = proxy_read(sv[0], &p);
        assert_int_equal(rc, off < len ? 0 : 1);
    }
    assert_int_equal(p.have, PROXY_V2_MAX);
    assert_addr(&p.src, "192.0.2.1:1234");
    expect_rest(sv[0], "hello");
    close(sv[0]);
    close(sv[1]);
    free(buf);
}

/* EOF inside the header, and a malformed header, through the socket. */
static void test_read_eof_and_errors(void **state)
{
    proxy_parser p;
    int sv[2];
    (void)state;

    socket_pair(sv);
    send_all(sv[1], "PROXY TCP4 1.2", 14);
    close(sv[1]);
    proxy_parser_init(&p);
    assert_int_equal(proxy_read(sv[0], &p), -EPIPE);
    assert_string_equal(p.error, "the peer closed the connection after 14 bytes of the header");
    close(sv[0]);

    socket_pair(sv);
    close(sv[1]);
    proxy_parser_init(&p);
    assert_int_equal(proxy_read(sv[0], &p), -EPIPE);
    assert_int_equal(p.have, 0);
    close(sv[0]);

    socket_pair(sv);
    send_all(sv[1], "SSH-2.0-OpenSSH\r\n", 17);
    proxy_parser_init(&p);
    assert_int_equal(proxy_read(sv[0], &p), -EPROTO);
    assert_string_equal(p.error, "not a PROXY header: the first byte is 0x53, neither 'P' (v1) nor CR (v2)");
    close(sv[0]);
    close(sv[1]);

    proxy_parser_init(&p);
    assert_int_equal(proxy_read(-1, &p), -EBADF);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_captures),
        cmocka_unit_test(test_next_never_passes_the_end),
        cmocka_unit_test(test_after_the_end),
        cmocka_unit_test(test_v2_max_with_tlvs),
        cmocka_unit_test(test_v2_other_families),
        cmocka_unit_test(test_v1_valid_edges),
        cmocka_unit_test(test_v1_malformed),
        cmocka_unit_test(test_v2_malformed),
        cmocka_unit_test(test_read_one_write),
        cmocka_unit_test(test_read_splits),
        cmocka_unit_test(test_read_v2_max),
        cmocka_unit_test(test_read_eof_and_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
