/* Unit tests: access rules (src/server/rules.c): the file format, every
 * error with its line, first-match order for each kind of peer, the
 * KEY=VALUE pairs, and the trie against a linear first-match scan. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/rules.h"

static char err[256];

static rules_set *parse_ok(const char *text)
{
    rules_set *s = NULL;
    err[0] = '\0';
    int rc = rules_parse(text, strlen(text), "r", &s, err, sizeof err);
    if (rc != 0)
        fail_msg("parse failed (%d): %s", rc, err);
    assert_non_null(s);
    return s;
}

/* Parses text, expects -EINVAL and exactly msg. */
static void parse_fails(const char *text, size_t len, const char *msg)
{
    rules_set *s = NULL;
    err[0] = '\0';
    assert_int_equal(rules_parse(text, len, "r", &s, err, sizeof err), -EINVAL);
    assert_null(s);
    assert_string_equal(err, msg);
}

static sf_addr peer(const char *text)
{
    sf_addr a;
    memset(&a, 0, sizeof a);
    assert_int_equal(sf_addr_parse(&a, text), 0);
    return a;
}

/* The rule that peer text matches, checked against the linear scan. */
static const rule *match(const rules_set *s, const char *text)
{
    sf_addr a = peer(text);
    const rule *r = rules_match(s, &a);
    assert_non_null(r);
    assert_ptr_equal(r, rules_match_linear(s, &a));
    return r;
}

static unsigned match_line(const rules_set *s, const char *text)
{
    return match(s, text)->line;
}

/* ----------------------------------------------------------- the forms */

static void test_parse_each_form(void **state)
{
    static const unsigned char v4[4] = {10, 0, 0, 0}, host[4] = {192, 0, 2, 7};
    unsigned char v6[16] = {0x20, 0x01, 0x0d, 0xb8};
    rules_set *s = parse_ok("# a comment\n"
                            "\n"
                            "   \t\n"
                            "allow 10.0.0.0/8\n"
                            "\tdeny\t192.0.2.7   # a comment after a rule\n"
                            "allow 2001:db8::/32\r\n"
                            "deny 2001:db8::1\n"
                            "  allow unix\n"
                            "deny 0.0.0.0/0\n"
                            "default deny\n"
                            "# after the default: comments and blanks only\n"
                            "\n");
    const rule *r;
    (void)state;

    assert_int_equal(rules_count(s), 7);
    r = rules_at(s, 0);
    assert_int_equal(r->action, RULE_ALLOW);
    assert_int_equal(r->kind, RULE_V4);
    assert_int_equal(r->line, 4);
    assert_int_equal(r->prefix_len, 8);
    assert_memory_equal(r->addr, v4, 4);
    assert_int_equal(r->nenv, 0);
    r = rules_at(s, 1);
    assert_int_equal(r->action, RULE_DENY);
    assert_int_equal(r->line, 5);
    assert_int_equal(r->prefix_len, 32);
    assert_memory_equal(r->addr, host, 4);
    r = rules_at(s, 2);
    assert_int_equal(r->kind, RULE_V6);
    assert_int_equal(r->line, 6);
    assert_int_equal(r->prefix_len, 32);
    assert_memory_equal(r->addr, v6, 16);
    r = rules_at(s, 3);
    assert_int_equal(r->kind, RULE_V6);
    assert_int_equal(r->prefix_len, 128);
    v6[15] = 1;
    assert_memory_equal(r->addr, v6, 16);
    r = rules_at(s, 4);
    assert_int_equal(r->kind, RULE_UNIX);
    assert_int_equal(r->action, RULE_ALLOW);
    assert_int_equal(r->line, 8);
    r = rules_at(s, 5);
    assert_int_equal(r->prefix_len, 0);
    r = rules_at(s, 6);
    assert_int_equal(r->kind, RULE_DEFAULT);
    assert_int_equal(r->action, RULE_DENY);
    assert_int_equal(r->line, 10);
    assert_null(rules_at(s, 7));
    rules_free(s);
}

/* No rules at all, and no default line: the implicit "default allow". */
static void test_empty_file_allows_all(void **state)
{
    rules_set *s = parse_ok("");
    const rule *r;
    (void)state;

    assert_int_equal(rules_count(s), 1);
    r = match(s, "10.1.2.3:80");
    assert_int_equal(r->kind, RULE_DEFAULT);
    assert_int_equal(r->action, RULE_ALLOW);
    assert_int_equal(r->line, 0);
    assert_ptr_equal(match(s, "[::1]:80"), r);
    assert_ptr_equal(match(s, "unix:/tmp/x"), r);
    rules_free(s);

    s = NULL;
    assert_int_equal(rules_parse(NULL, 0, "r", &s, err, sizeof err), 0);
    assert_int_equal(rules_count(s), 1);
    rules_free(s);
    s = parse_ok("# only comments\n\n");
    assert_int_equal(rules_count(s), 1);
    rules_free(s);
    s = parse_ok("deny 10.0.0.0/8");  /* no newline at the end */
    assert_int_equal(match_line(s, "10.9.9.9:1"), 1);
    assert_int_equal(match(s, "11.0.0.1:1")->action, RULE_ALLOW);
    assert_int_equal(match_line(s, "11.0.0.1:1"), 0);
    rules_free(s);
}

/* ---------------------------------------------------------- the errors */

typedef struct bad_case {
    const char *text;
    const char *msg;
} bad_case;

static void test_errors_name_the_line(void **state)
{
    static const bad_case cases[] = {
        {"alow 10.0.0.0/8\n", "r:1: unknown keyword \"alow\": expected allow, deny or default"},
        {"\n# c\nallow#x 1.2.3.4\n", "r:3: unknown keyword \"allow#x\": expected allow, deny or default"},
        {"allow\n", "r:1: allow: missing address (a CIDR prefix or unix)"},
        {"deny   # nothing\n", "r:1: deny: missing address (a CIDR prefix or unix)"},
        {"allow 10.0.0.256\n",
         "r:1: bad address \"10.0.0.256\" (expected IPv4 or IPv6 with an optional /LEN, or unix)"},
        {"allow 10.0/8\n",
         "r:1: bad address \"10.0/8\" (expected IPv4 or IPv6 with an optional /LEN, or unix)"},
        {"allow 010.0.0.0/8\n",
         "r:1: bad address \"010.0.0.0/8\" (expected IPv4 or IPv6 with an optional /LEN, or unix)"},
        {"allow /8\n",
         "r:1: bad address \"/8\" (expected IPv4 or IPv6 with an optional /LEN, or unix)"},
        {"allow 2001:db8::g/32\n",
         "r:1: bad address \"2001:db8::g/32\" (expected IPv4 or IPv6 with an optional /LEN, or unix)"},
        {"allow fe80::1%eth0\n",
         "r:1: bad address \"fe80::1%eth0\" (expected IPv4 or IPv6 with an optional /LEN, or unix)"},
        {"allow unixx\n",
         "r:1: bad address \"unixx\" (expected IPv4 or IPv6 with an optional /LEN, or unix)"},
        {"allow 1.2.3.4#c\n",
         "r:1: bad address \"1.2.3.4#c\" (expected IPv4 or IPv6 with an optional /LEN, or unix)"},
        {"allow 10.0.0.0/\n", "r:1: bad prefix length \"/\""},
        {"allow 10.0.0.0/x\n", "r:1: bad prefix length \"/x\""},
        {"allow 10.0.0.0/-1\n", "r:1: bad prefix length \"/-1\""},
        {"allow 10.0.0.0/1234\n", "r:1: bad prefix length \"/1234\""},
        {"allow 10.0.0.0/8/8\n", "r:1: bad prefix length \"/8/8\""},
        {"allow 10.0.0.0/33\n", "r:1: prefix length /33 out of range (0..32 for IPv4)"},
        {"allow ::/129\n", "r:1: prefix length /129 out of range (0..128 for IPv6)"},
        {"allow 10.0.0.1/8\n",
         "r:1: 10.0.0.1 has host bits set beyond /8 (the network is 10.0.0.0/8)"},
        {"deny 2001:db8::1/32\n",
         "r:1: 2001:db8::1 has host bits set beyond /32 (the network is 2001:db8::/32)"},
        {"deny 1.2.3.4/0\n",
         "r:1: 1.2.3.4 has host bits set beyond /0 (the network is 0.0.0.0/0)"},
        {"deny ::ffff:10.0.0.0/104\n",
         "r:1: \"::ffff:10.0.0.0/104\" is an IPv4-mapped prefix: write it in IPv4 "
         "(IPv4-mapped peers are matched by the IPv4 rules)"},
        {"deny ::ffff:1.2.3.4\n",
         "r:1: \"::ffff:1.2.3.4\" is an IPv4-mapped prefix: write it in IPv4 "
         "(IPv4-mapped peers are matched by the IPv4 rules)"},
        {"allow unix 1X=a\n",
         "r:1: bad variable name \"1X\" (letters, digits and _, not starting with a digit)"},
        {"allow unix =a\n",
         "r:1: bad variable name \"\" (letters, digits and _, not starting with a digit)"},
        {"allow unix A-B=a\n",
         "r:1: bad variable name \"A-B\" (letters, digits and _, not starting with a digit)"},
        {"allow unix ZONE\n", "r:1: \"ZONE\" is not KEY=VALUE"},
        {"allow unix A=1 B=2 A=3\n", "r:1: A is set twice on this rule"},
        {"allow unix A=\"x y\n", "r:1: a value's quote is not closed"},
        {"allow unix A=\"x\\n\"\n", "r:1: bad escape in a quoted value (only \\\" and \\\\)"},
        {"allow unix A=\"x\"y\n", "r:1: text after a value's closing quote"},
        {"allow unix A=x\"y\"\n", "r:1: a '\"' inside a value: quote the whole value"},
        {"default\n", "r:1: default: expected allow or deny"},
        {"default # c\n", "r:1: default: expected allow or deny"},
        {"default maybe\n", "r:1: default: \"maybe\" is not allow or deny"},
        {"allow unix\ndefault deny\n\n# ok\nallow 10.0.0.0/8\n",
         "r:5: a rule after the default (line 2): default must be the last rule"},
        {"default deny\ndefault allow\n",
         "r:2: a rule after the default (line 1): default must be the last rule"},
        {"allow unix\n\xff\xfe bad\n", "r:2: unknown keyword \"??\": expected allow, deny or default"},
        {"allow 0123456789012345678901234567890123456789xyz\n",
         "r:1: bad address \"0123456789012345678901234567890123456789...\" "
         "(expected IPv4 or IPv6 with an optional /LEN, or unix)"},
    };
    (void)state;

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rules_set *s = NULL;
        int rc = rules_parse(cases[i].text, strlen(cases[i].text), "r", &s, err, sizeof err);
        if (rc != -EINVAL || s || strcmp(err, cases[i].msg) != 0)
            fail_msg("case %zu: rc %d, \"%s\", want \"%s\"", i, rc, err, cases[i].msg);
    }
    parse_fails("allow unix\nallow\0unix\n", 22, "r:2: a NUL byte");
}

static void test_line_length_bound(void **state)
{
    size_t n = 11 + RULES_LINE_MAX + 2;
    char *text = malloc(n);
    rules_set *s = NULL;
    (void)state;

    /* A comment line exactly RULES_LINE_MAX bytes long is fine; one byte
     * more is not. */
    assert_non_null(text);
    memset(text, ' ', n);
    memcpy(text, "allow unix\n#", 12);
    text[11 + RULES_LINE_MAX] = '\n';
    assert_int_equal(rules_parse(text, 11 + RULES_LINE_MAX + 1, "r", &s, err, sizeof err), 0);
    assert_int_equal(rules_count(s), 2);
    rules_free(s);
    text[11 + RULES_LINE_MAX] = ' ';
    text[12 + RULES_LINE_MAX] = '\n';
    parse_fails(text, n, "r:2: line longer than 4096 bytes");
    free(text);
}

static void test_pairs_bound(void **state)
{
    char text[1024];
    size_t n = (size_t)snprintf(text, sizeof text, "allow unix");
    rules_set *s;
    (void)state;

    for (unsigned i = 0; i < RULES_PAIRS_MAX; i++)
        n += (size_t)snprintf(text + n, sizeof text - n, " K%u=v", i);
    s = parse_ok(text);
    assert_int_equal(rules_at(s, 0)->nenv, RULES_PAIRS_MAX);
    rules_free(s);
    snprintf(text + n, sizeof text - n, " LAST=v");
    parse_fails(text, strlen(text), "r:1: more than 64 KEY=VALUE pairs on one rule");
}

/* 1,000,000 rules and a default load; one rule more is refused, naming
 * its line. */
static void test_rule_count_bound(void **state)
{
    static const char line[] = "deny unix\n", last[] = "default allow\n";
    size_t n = sizeof line - 1, len = RULES_COUNT_MAX * n;
    char *text = malloc(len + 32);
    rules_set *s = NULL;
    char msg[64];
    (void)state;

    assert_non_null(text);
    for (size_t i = 0; i < RULES_COUNT_MAX; i++)
        memcpy(text + i * n, line, n);
    memcpy(text + len, last, sizeof last - 1);
    assert_int_equal(rules_parse(text, len + sizeof last - 1, "r", &s, err, sizeof err), 0);
    assert_int_equal(rules_count(s), RULES_COUNT_MAX + 1);
    assert_int_equal(rules_at(s, RULES_COUNT_MAX)->line, RULES_COUNT_MAX + 1);
    assert_int_equal(rules_at(s, RULES_COUNT_MAX)->kind, RULE_DEFAULT);
    rules_free(s);
    memcpy(text + len, line, n);
    snprintf(msg, sizeof msg, "r:%u: more than %u rules", RULES_COUNT_MAX + 1, RULES_COUNT_MAX);
    parse_fails(text, len + n, msg);
    free(text);
}

/* ---------------------------------------------------------- from a file */

static char *temp_file(const char *text, off_t size)
{
    char *path = strdup("/tmp/test_rules.XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    if (text)
        assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    if (size)
        assert_int_equal(ftruncate(fd, size), 0);
    close(fd);
    return path;
}

static void test_load_a_file(void **state)
{
    char *path = temp_file("deny 127.0.0.2\nallow 127.0.0.0/8 WHERE=loopback\ndefault deny\n", 0);
    char want[256];
    rules_set *s = NULL;
    const rule *r;
    (void)state;

    assert_int_equal(rules_load(path, &s, err, sizeof err), 0);
    assert_int_equal(match_line(s, "127.0.0.2:9"), 1);
    r = match(s, "127.0.0.1:9");
    assert_int_equal(r->line, 2);
    assert_string_equal(rule_getenv(r, "WHERE"), "loopback");
    assert_int_equal(match(s, "192.0.2.1:9")->action, RULE_DENY);
    rules_free(s);
    unlink(path);
    free(path);

    /* The message names the file given. */
    path = temp_file("allow 127.0.0.0/8\nallow 127.0.0.1/8\n", 0);
    s = NULL;
    assert_int_equal(rules_load(path, &s, err, sizeof err), -EINVAL);
    assert_null(s);
    snprintf(want, sizeof want,
             "%s:2: 127.0.0.1 has host bits set beyond /8 (the network is 127.0.0.0/8)", path);
    assert_string_equal(err, want);
    unlink(path);
    free(path);
}

static void test_load_refuses_what_it_cannot_read(void **state)
{
    char want[256], *path;
    rules_set *s = NULL;
    (void)state;

    assert_int_equal(rules_load("/nonexistent/rules", &s, err, sizeof err), -ENOENT);
    assert_string_equal(err, "/nonexistent/rules: No such file or directory");
    assert_int_equal(rules_load("/tmp", &s, err, sizeof err), -EISDIR);
    assert_string_equal(err, "/tmp: Is a directory");

    /* A sparse file one byte over the bound: refused before it is read. */
    path = temp_file(NULL, (off_t)RULES_FILE_MAX + 1);
    assert_int_equal(rules_load(path, &s, err, sizeof err), -EFBIG);
    snprintf(want, sizeof want, "%s: larger than 67108864 bytes", path);
    assert_string_equal(err, want);
    assert_null(s);
    unlink(path);
    free(path);
}

/* ------------------------------------------------------------ matching */

static void test_first_match_wins(void **state)
{
    rules_set *s = parse_ok("deny 10.1.2.0/24\n"
                            "allow 10.0.0.0/8\n"
                            "deny 10.1.2.3\n"     /* shadowed by line 1 */
                            "allow 10.0.0.0/8\n"  /* shadowed by line 2 */
                            "deny 0.0.0.0/0\n");
    (void)state;

    assert_int_equal(match_line(s, "10.1.2.3:1"), 1);
    assert_int_equal(match_line(s, "10.1.2.255:1"), 1);
    assert_int_equal(match_line(s, "10.1.3.0:1"), 2);
    assert_int_equal(match_line(s, "10.255.255.255:1"), 2);
    assert_int_equal(match_line(s, "11.0.0.0:1"), 5);
    assert_int_equal(match_line(s, "[2001:db8::1]:1"), 0);  /* no IPv6 rule */
    rules_free(s);

    /* The /8 first: the /24 and the /32 after it never match. */
    s = parse_ok("allow 10.0.0.0/8\ndeny 10.1.2.0/24\ndeny 10.1.2.3/32\ndefault deny\n");
    assert_int_equal(match_line(s, "10.1.2.3:1"), 1);
    assert_int_equal(match_line(s, "9.255.255.255:1"), 4);
    assert_int_equal(match(s, "9.255.255.255:1")->action, RULE_DENY);
    rules_free(s);

    /* Siblings and a host route under a deeper prefix. */
    s = parse_ok("deny 192.168.1.128/25\nallow 192.168.1.0/25\nallow 192.168.1.200\n"
                 "deny 192.168.0.0/16\n");
    assert_int_equal(match_line(s, "192.168.1.200:1"), 1);
    assert_int_equal(match_line(s, "192.168.1.127:1"), 2);
    assert_int_equal(match_line(s, "192.168.2.1:1"), 4);
    assert_int_equal(match_line(s, "192.169.0.0:1"), 0);
    rules_free(s);
}

static void test_ipv6_peers(void **state)
{
    rules_set *s = parse_ok("deny 2001:db8:1::/48\n"
                            "allow 2001:db8::/32\n"
                            "allow ::1\n"
                            "deny ::/0\n"
                            "allow 0.0.0.0/0\n");
    (void)state;

    assert_int_equal(match_line(s, "[2001:db8:1::5]:1"), 1);
    assert_int_equal(match_line(s, "[2001:db8:1:ffff:ffff:ffff:ffff:ffff]:1"), 1);
    assert_int_equal(match_line(s, "[2001:db8:2::5]:1"), 2);
    assert_int_equal(match_line(s, "[::1]:1"), 3);
    assert_int_equal(match_line(s, "[::2]:1"), 4);
    assert_int_equal(match_line(s, "[fe80::1]:1"), 4);
    assert_int_equal(match_line(s, "127.0.0.1:1"), 5);
    rules_free(s);
}

/* ::ffff:a.b.c.d is the IPv4 peer a.b.c.d: IPv4 rules match it, IPv6 rules
 * (even ::/0) do not. */
static void test_mapped_peers_use_the_ipv4_rules(void **state)
{
    rules_set *s = parse_ok("deny ::/0\n"
                            "deny 10.1.0.0/16\n"
                            "allow 10.0.0.0/8\n"
                            "default deny\n");
    (void)state;

    assert_int_equal(match_line(s, "[::ffff:10.1.2.3]:1"), 2);
    assert_int_equal(match_line(s, "[::ffff:10.2.2.3]:1"), 3);
    assert_int_equal(match_line(s, "[::ffff:11.0.0.1]:1"), 4);
    assert_int_equal(match_line(s, "[::10.2.2.3]:1"), 1);   /* IPv4-compatible: IPv6 */
    assert_int_equal(match_line(s, "[::fffe:10.2.2.3]:1"), 1);
    rules_free(s);
}

static void test_unix_peers(void **state)
{
    rules_set *s = parse_ok("deny 0.0.0.0/0\ndeny ::/0\nallow unix A=1\ndeny unix\n"
                            "default deny\n");
    sf_addr unnamed;
    const rule *r;
    (void)state;

    r = match(s, "unix:/run/x.sock");
    assert_int_equal(r->line, 3);
    assert_int_equal(r->action, RULE_ALLOW);
    /* A client that did not bind: AF_UNIX and nothing else. */
    memset(&unnamed, 0, sizeof unnamed);
    unnamed.u.sa.sa_family = AF_UNIX;
    unnamed.len = sizeof(sa_family_t);
    assert_ptr_equal(rules_match(s, &unnamed), r);
    assert_ptr_equal(rules_match_linear(s, &unnamed), r);
    rules_free(s);

    /* No unix rule: the default, whatever the IP rules say. */
    s = parse_ok("deny 0.0.0.0/0\ndeny ::/0\n");
    assert_int_equal(match_line(s, "unix:/run/x.sock"), 0);
    assert_int_equal(match(s, "unix:/run/x.sock")->action, RULE_ALLOW);
    rules_free(s);
}

/* A family no rule can name, or an address too short: the default. */
static void test_other_peers_get_the_default(void **state)
{
    rules_set *s = parse_ok("deny 0.0.0.0/0\ndeny ::/0\ndeny unix\ndefault deny\n");
    sf_addr a;
    (void)state;

    memset(&a, 0, sizeof a);
    a.u.sa.sa_family = AF_PACKET;
    a.len = sizeof a.u.sa;
    assert_int_equal(rules_match(s, &a)->line, 4);
    a = peer("10.0.0.1:1");
    a.len = 4;
    assert_int_equal(rules_match(s, &a)->line, 4);
    a.len = 0;
    assert_int_equal(rules_match(s, &a)->line, 4);
    rules_free(s);
}

/* ----------------------------------------------------------- the pairs */

static void test_key_value_pairs(void **state)
{
    rules_set *s = parse_ok("allow 10.0.0.0/8 ZONE=lan RATE=10 EMPTY= Q=\"two words # no comment\""
                            " E=\"a\\\"b\\\\c\" H=a#b  # a comment\n"
                            "deny unix\tWHY=\"\" _x9=1\n"
                            "default deny REASON=outside\n");
    const rule *r;
    (void)state;

    r = match(s, "10.0.0.1:1");
    assert_int_equal(r->nenv, 6);
    assert_string_equal(r->env[0], "ZONE=lan");
    assert_string_equal(r->env[1], "RATE=10");
    assert_string_equal(r->env[2], "EMPTY=");
    assert_string_equal(r->env[3], "Q=two words # no comment");
    assert_string_equal(r->env[4], "E=a\"b\\c");
    assert_string_equal(r->env[5], "H=a#b");
    assert_string_equal(rule_getenv(r, "ZONE"), "lan");
    assert_string_equal(rule_getenv(r, "EMPTY"), "");
    assert_null(rule_getenv(r, "ZON"));
    assert_null(rule_getenv(r, "ZONES"));
    assert_null(rule_getenv(r, "zone"));

    r = match(s, "unix:/x");
    assert_int_equal(r->nenv, 2);
    assert_string_equal(r->env[0], "WHY=");
    assert_string_equal(r->env[1], "_x9=1");

    r = match(s, "[::1]:1");
    assert_int_equal(r->kind, RULE_DEFAULT);
    assert_int_equal(r->nenv, 1);
    assert_string_equal(rule_getenv(r, "REASON"), "outside");
    rules_free(s);

    /* Keys that are prefixes of each other are different keys; a longer
     * key after a short pair is compared within the short one (ASan). */
    s = parse_ok("allow unix A= ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789=x AB=1\n");
    r = rules_at(s, 0);
    assert_int_equal(r->nenv, 3);
    assert_string_equal(rule_getenv(r, "A"), "");
    assert_string_equal(rule_getenv(r, "AB"), "1");
    assert_string_equal(rule_getenv(r, "ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789"), "x");
    rules_free(s);

    /* A rule without pairs has none, and the implicit default too. */
    s = parse_ok("allow unix\n");
    assert_int_equal(rules_at(s, 0)->nenv, 0);
    assert_null(rule_getenv(rules_at(s, 0), "X"));
    assert_int_equal(rules_at(s, 1)->nenv, 0);
    rules_free(s);
}

/* Any byte but NUL and newline may be in a value, quoted or not. */
static void test_values_take_any_byte(void **state)
{
    rules_set *s = parse_ok("allow unix B=\x01\xff\r\x7f C=\"\t \xfe\"\r\n");
    const rule *r = rules_at(s, 0);
    (void)state;

    assert_int_equal(r->nenv, 2);
    assert_string_equal(r->env[0], "B=\x01\xff\r\x7f");
    assert_string_equal(r->env[1], "C=\t \xfe");
    rules_free(s);
}

/* --------------------------------------------- the trie against a scan */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void mask_bytes(unsigned char *a, unsigned nbytes, unsigned len)
{
    for (unsigned i = 0; i < nbytes; i++) {
        unsigned keep = len >= 8 * (i + 1) ? 8 : len > 8 * i ? len - 8 * i : 0;
        a[i] &= (unsigned char)(0xff00u >> keep);
    }
}

/* Prefixes near a few bases, so that rules nest and overlap often. */
static void random_addr(unsigned char *a, int v6, const unsigned char bases[4][16])
{
    const unsigned char *base = bases[rnd() % 4];
    unsigned n = v6 ? 16 : 4, keep = (unsigned)(rnd() % (8 * n + 1));
    for (unsigned i = 0; i < n; i++)
        a[i] = (unsigned char)rnd();
    /* The first `keep` bits from the base. */
    for (unsigned i = 0; i < n; i++) {
        unsigned k = keep >= 8 * (i + 1) ? 8 : keep > 8 * i ? keep - 8 * i : 0;
        unsigned char m = (unsigned char)(0xff00u >> k);
        a[i] = (unsigned char)((base[i] & m) | (a[i] & ~m));
    }
    if (v6 && a[0] == 0) /* never an IPv4-mapped prefix */
        a[0] = 0x20;
}

static void test_trie_agrees_with_a_linear_scan(void **state)
{
    unsigned char bases[4][16];
    size_t cases = 0, hits = 0;
    (void)state;

    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 16; j++)
            bases[i][j] = (unsigned char)rnd();
    bases[0][0] = 10;  /* two bases alike in their first bits */
    bases[1][0] = 10;
    bases[1][1] = bases[0][1];

    for (int set = 0; set < 300; set++) {
        size_t nrules = 1 + rnd() % (set < 200 ? 40 : 600), len = 0, cap = nrules * 80 + 64;
        char *text = malloc(cap);
        rules_set *s;
        assert_non_null(text);
        for (size_t i = 0; i < nrules; i++) {
            unsigned char a[16];
            char host[INET6_ADDRSTRLEN];
            int v6 = rnd() % 2, unix_rule = rnd() % 50 == 0;
            unsigned plen = (unsigned)(rnd() % (v6 ? 129 : 33));
            const char *act = rnd() % 2 ? "allow" : "deny";
            if (unix_rule) {
                len += (size_t)snprintf(text + len, cap - len, "%s unix\n", act);
                continue;
            }
            random_addr(a, v6, bases);
            mask_bytes(a, v6 ? 16 : 4, plen);
            inet_ntop(v6 ? AF_INET6 : AF_INET, a, host, sizeof host);
            len += (size_t)snprintf(text + len, cap - len, "%s %s/%u\n", act, host, plen);
        }
        if (rnd() % 2)
            len += (size_t)snprintf(text + len, cap - len, "default deny\n");
        s = NULL;
        if (rules_parse(text, len, "random", &s, err, sizeof err) != 0)
            fail_msg("%s", err);
        for (int k = 0; k < 400; k++) {
            sf_addr p;
            int kind = (int)(rnd() % 10);
            memset(&p, 0, sizeof p);
            if (kind < 4) {
                p.u.in4.sin_family = AF_INET;
                random_addr((unsigned char *)&p.u.in4.sin_addr, 0, bases);
                p.len = sizeof p.u.in4;
            } else if (kind < 8) {
                p.u.in6.sin6_family = AF_INET6;
                random_addr(p.u.in6.sin6_addr.s6_addr, 1, bases);
                p.len = sizeof p.u.in6;
            } else if (kind < 9) {  /* IPv4-mapped */
                p.u.in6.sin6_family = AF_INET6;
                p.u.in6.sin6_addr.s6_addr[10] = p.u.in6.sin6_addr.s6_addr[11] = 0xff;
                random_addr(p.u.in6.sin6_addr.s6_addr + 12, 0, bases);
                p.len = sizeof p.u.in6;
            } else {
                p.u.sa.sa_family = AF_UNIX;
                p.len = sizeof(sa_family_t);
            }
            const rule *t = rules_match(s, &p), *l = rules_match_linear(s, &p);
            if (t != l)
                fail_msg("set %d case %d: trie says line %u, scan line %u\n%s", set, k, t->line,
                         l->line, text);
            hits += t->kind != RULE_DEFAULT;
            cases++;
        }
        rules_free(s);
        free(text);
    }
    print_message("%zu cases, %zu matched a rule before the default\n", cases, hits);
    assert_true(cases == 120000);
    assert_true(hits > cases / 4);  /* the sets do match, not only the default */
}

/* The packed pairs a connection carries: each in order, then the end; a
 * pair without '=' or a KEY too long for the buffer is refused. */
static void test_rule_pairs_next(void **state)
{
    static const char pairs[] = "ZONE=lo\0NOTE=two words\0EMPTY=\0";
    char name[8];
    const char *value;
    size_t off = 0;
    (void)state;

    assert_int_equal(rule_pairs_next(pairs, sizeof pairs - 1, &off, name, sizeof name, &value), 1);
    assert_string_equal(name, "ZONE");
    assert_string_equal(value, "lo");
    assert_int_equal(rule_pairs_next(pairs, sizeof pairs - 1, &off, name, sizeof name, &value), 1);
    assert_string_equal(name, "NOTE");
    assert_string_equal(value, "two words");
    assert_int_equal(rule_pairs_next(pairs, sizeof pairs - 1, &off, name, sizeof name, &value), 1);
    assert_string_equal(name, "EMPTY");
    assert_string_equal(value, "");
    assert_int_equal(rule_pairs_next(pairs, sizeof pairs - 1, &off, name, sizeof name, &value), 0);
    off = 0;
    assert_int_equal(rule_pairs_next("NOEQUALS", 8, &off, name, sizeof name, &value), -EINVAL);
    off = 0;
    assert_int_equal(rule_pairs_next("LONGERKEY=v", 11, &off, name, sizeof name, &value), -EINVAL);
    off = 0;
    assert_int_equal(rule_pairs_next(NULL, 0, &off, name, sizeof name, &value), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_each_form),
        cmocka_unit_test(test_empty_file_allows_all),
        cmocka_unit_test(test_errors_name_the_line),
        cmocka_unit_test(test_line_length_bound),
        cmocka_unit_test(test_pairs_bound),
        cmocka_unit_test(test_rule_count_bound),
        cmocka_unit_test(test_load_a_file),
        cmocka_unit_test(test_load_refuses_what_it_cannot_read),
        cmocka_unit_test(test_first_match_wins),
        cmocka_unit_test(test_ipv6_peers),
        cmocka_unit_test(test_mapped_peers_use_the_ipv4_rules),
        cmocka_unit_test(test_unix_peers),
        cmocka_unit_test(test_other_peers_get_the_default),
        cmocka_unit_test(test_key_value_pairs),
        cmocka_unit_test(test_values_take_any_byte),
        cmocka_unit_test(test_rule_pairs_next),
        cmocka_unit_test(test_trie_agrees_with_a_linear_scan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
