/* Unit tests: address parsing and formatting. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>
#include <arpa/inet.h>

#include "sockfork.h"

static void roundtrip(const char *in, const char *want)
{
    sf_addr a;
    char buf[SF_ADDR_TEXT_MAX];

    assert_int_equal(sf_addr_parse(&a, in), 0);
    assert_true(sf_addr_format(&a, buf, sizeof buf) > 0);
    assert_string_equal(buf, want);
}

static void test_ipv4(void **state)
{
    sf_addr a;
    (void)state;
    roundtrip("127.0.0.1:4444", "127.0.0.1:4444");
    roundtrip("0.0.0.0:0", "0.0.0.0:0");
    roundtrip("10.1.2.3:65535", "10.1.2.3:65535");
    assert_int_equal(sf_addr_parse(&a, "127.0.0.1:80"), 0);
    assert_int_equal(a.u.sa.sa_family, AF_INET);
    assert_int_equal(sf_addr_port(&a), 80);
    assert_int_equal(a.len, sizeof(struct sockaddr_in));
}

static void test_ipv6(void **state)
{
    sf_addr a;
    char host[64];
    (void)state;
    roundtrip("[::1]:4444", "[::1]:4444");
    roundtrip("[::]:0", "[::]:0");
    roundtrip("[2001:db8::1]:80", "[2001:db8::1]:80");
    assert_int_equal(sf_addr_parse(&a, "[::1]:7"), 0);
    assert_int_equal(a.u.sa.sa_family, AF_INET6);
    assert_int_equal(sf_addr_host(&a, host, sizeof host), 3);
    assert_string_equal(host, "::1");
}

static void test_unix(void **state)
{
    sf_addr a;
    char longpath[200];
    (void)state;
    roundtrip("unix:/tmp/x.sock", "unix:/tmp/x.sock");
    roundtrip("unix:@abstract", "unix:@abstract");
    assert_int_equal(sf_addr_parse(&a, "unix:/a"), 0);
    assert_int_equal(a.u.sa.sa_family, AF_UNIX);
    assert_int_equal(sf_addr_port(&a), 0);
    assert_int_equal(sf_addr_parse(&a, "unix:"), -EINVAL);
    memset(longpath, 'a', sizeof longpath - 1);
    longpath[0] = '/';
    longpath[sizeof longpath - 1] = '\0';
    char text[220] = "unix:";
    strcat(text, longpath);
    assert_int_equal(sf_addr_parse(&a, text), -EINVAL);
}

static void test_bad(void **state)
{
    static const char *bad[] = {
        "", "nonsense", "127.0.0.1", "127.0.0.1:", ":80", "127.0.0.1:99999",
        "127.0.0.1:-1", "127.0.0.1:8o", "::1:80", "[::1]80", "[::1]", "[]:80",
        "[127.0.0.1]:80", "[::1]:65536", "1.2.3.4:80 ",
    };
    sf_addr a;
    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = sf_addr_parse(&a, bad[i]);
        if (rc != -EINVAL)
            fail_msg("'%s' parsed to %d, want -EINVAL", bad[i], rc);
    }
    assert_int_equal(sf_addr_parse(&a, NULL), -EINVAL);
}

static void test_format_small_buffer(void **state)
{
    sf_addr a;
    char buf[8];
    (void)state;
    assert_int_equal(sf_addr_parse(&a, "127.0.0.1:4444"), 0);
    assert_int_equal(sf_addr_format(&a, buf, sizeof buf), -ENOSPC);
    assert_int_equal(strlen(buf), sizeof buf - 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ipv4),
        cmocka_unit_test(test_ipv6),
        cmocka_unit_test(test_unix),
        cmocka_unit_test(test_bad),
        cmocka_unit_test(test_format_small_buffer),
    };
    return cmocka_run_group_tests_name("addr", tests, NULL, NULL);
}
