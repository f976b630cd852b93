/* Unit tests: Redis URL parsing (src/redis/rurl.c), every accepted form and
 * each rejection with its reason. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "redis/rurl.h"

static rurl parse_ok(const char *s, int want_name)
{
    rurl u;
    const char *why = NULL;
    int rc = rurl_parse(s, want_name, &u, &why);
    if (rc != 0)
        fail_msg("%s: refused: %s", s, why ? why : "(no reason)");
    assert_string_equal(u.text, s);
    return u;
}

static void test_tcp_forms(void **state)
{
    (void)state;
    rurl u = parse_ok("redis://127.0.0.1", 0);
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 6379);
    assert_string_equal(u.path, "");
    assert_int_equal(u.db, -1);
    assert_string_equal(u.name, "");

    u = parse_ok("redis://127.0.0.1:7000", 0);
    assert_int_equal(u.port, 7000);
    u = parse_ok("redis://127.0.0.1:7000/", 0);
    assert_int_equal(u.db, -1);
    u = parse_ok("redis://10.0.0.1:1/3", 0);
    assert_int_equal(u.port, 1);
    assert_int_equal(u.db, 3);
    u = parse_ok("redis://redis.example-1.net:65535/0", 0);
    assert_string_equal(u.host, "redis.example-1.net");
    assert_int_equal(u.port, 65535);
    assert_int_equal(u.db, 0);
    u = parse_ok("redis://[::1]", 0);
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 6379);
    u = parse_ok("redis://[2001:db8::7]:6380/15", 0);
    assert_string_equal(u.host, "2001:db8::7");
    assert_int_equal(u.port, 6380);
    assert_int_equal(u.db, 15);
    u = parse_ok("redis://localhost", 0);
    assert_string_equal(u.host, "localhost");
}

static void test_tcp_names(void **state)
{
    (void)state;
    rurl u = parse_ok("redis://127.0.0.1:6379/jobs", 1);
    assert_int_equal(u.db, -1);
    assert_string_equal(u.name, "jobs");
    u = parse_ok("redis://127.0.0.1/2/my.queue:v1_x-y", 1);
    assert_int_equal(u.db, 2);
    assert_string_equal(u.name, "my.queue:v1_x-y");
    /* A name of digits alone is a name where a name is wanted. */
    u = parse_ok("redis://127.0.0.1/123", 1);
    assert_int_equal(u.db, -1);
    assert_string_equal(u.name, "123");
    char url[128] = "redis://h/";
    memset(url + strlen(url), 'n', RURL_NAME_MAX);
    u = parse_ok(url, 1);
    assert_int_equal(strlen(u.name), RURL_NAME_MAX);
}

static void test_unix_forms(void **state)
{
    (void)state;
    rurl u = parse_ok("unix:/tmp/redis.sock", 0);
    assert_string_equal(u.path, "/tmp/redis.sock");
    assert_string_equal(u.host, "");
    assert_int_equal(u.port, 0);
    assert_int_equal(u.db, -1);
    u = parse_ok("unix:/tmp/redis.sock?db=4", 0);
    assert_int_equal(u.db, 4);
    u = parse_ok("unix:/r.sock?db=1&name=q1", 1);
    assert_int_equal(u.db, 1);
    assert_string_equal(u.name, "q1");
    u = parse_ok("unix:/r.sock?name=q2&db=9", 1);
    assert_int_equal(u.db, 9);
    assert_string_equal(u.name, "q2");
    u = parse_ok("unix:/r.sock?name=q3", 1);
    assert_int_equal(u.db, -1);
    assert_string_equal(u.name, "q3");
}

static void test_split(void **state)
{
    int db;
    char name[RURL_NAME_MAX + 1];
    const char *why = NULL;
    (void)state;
    assert_int_equal(rurl_split_db_name("", 0, &db, name, &why), 0);
    assert_int_equal(db, -1);
    assert_int_equal(rurl_split_db_name("7", 0, &db, name, &why), 0);
    assert_int_equal(db, 7);
    assert_int_equal(rurl_split_db_name("7/q", 1, &db, name, &why), 0);
    assert_int_equal(db, 7);
    assert_string_equal(name, "q");
    assert_int_equal(rurl_split_db_name("q", 1, &db, name, &why), 0);
    assert_int_equal(db, -1);
    assert_string_equal(name, "q");
    assert_int_equal(rurl_split_db_name("q", 0, &db, name, &why), -EINVAL);
    assert_string_equal(why, "the database must be a number");
}

struct bad { const char *url; int want_name; const char *why; };

static void test_rejections(void **state)
{
    static char longurl[600];
    static char longname[128];
    static char longpath[160];
    memset(longurl, 0, sizeof longurl);
    strcpy(longurl, "redis://");
    memset(longurl + 8, 'a', 520);
    strcpy(longname, "redis://h/");
    memset(longname + strlen(longname), 'n', RURL_NAME_MAX + 1);
    strcpy(longpath, "unix:/");
    memset(longpath + 6, 'p', 120);
    static char longhost[300];
    strcpy(longhost, "redis://");
    memset(longhost + 8, 'h', 260);
    const struct bad bad[] = {
        { "", 0, "the Redis URL is empty" },
        { longurl, 0, "the Redis URL is too long" },
        { "redis://h /0", 0, "the Redis URL holds a space or a control character" },
        { "redis://h\t", 0, "the Redis URL holds a space or a control character" },
        { "http://h:1", 0, "a Redis URL starts with redis:// or unix:" },
        { "127.0.0.1:6379", 0, "a Redis URL starts with redis:// or unix:" },
        { "rediss://h:1", 0, "TLS (rediss://) is not supported" },
        { "redis://", 0, "the host is empty" },
        { "redis:///0", 0, "the host is empty" },
        { "redis://:6379", 0, "the host is empty" },
        { "redis://user:pw@h:1", 0, "a user or password in the URL is not supported" },
        { "redis://[::1", 0, "an IPv6 address needs its closing ]" },
        { "redis://[]:1", 0, "not an IPv6 address in [ ]" },
        { "redis://[1.2.3.4]:1", 0, "not an IPv6 address in [ ]" },
        { "redis://[::1]x", 0, "after ] only :PORT may follow" },
        { "redis://::1:6379", 0, "an IPv6 address must be written in [ ]" },
        { "redis://h!x", 0, "the host may hold only letters, digits, . - _" },
        { longhost, 0, "the host name is too long" },
        { "redis://h:", 0, "the port must be a number from 1 to 65535" },
        { "redis://h:0", 0, "the port must be a number from 1 to 65535" },
        { "redis://h:65536", 0, "the port must be a number from 1 to 65535" },
        { "redis://h:123456", 0, "the port must be a number from 1 to 65535" },
        { "redis://h:-1", 0, "the port must be a number from 1 to 65535" },
        { "redis://h:6o", 0, "the port must be a number from 1 to 65535" },
        { "redis://h/0?x=1", 0, "redis:// takes no ?query or #fragment" },
        { "redis://h/0#f", 0, "redis:// takes no ?query or #fragment" },
        { "redis://h/x", 0, "the database must be a number" },
        { "redis://h/-1", 0, "the database must be a number" },
        { "redis://h/1234567890", 0, "the database number is too large" },
        { "redis://h/1/q", 0, "no queue name is taken here: give at most /DB" },
        { "redis://h", 1, "a queue name is needed: /NAME or /DB/NAME" },
        { "redis://h/", 1, "a queue name is needed: /NAME or /DB/NAME" },
        { "redis://h/1/", 1, "the queue name is empty" },
        { "redis://h/x/q", 1, "the database must be a number" },
        { "redis://h/q/r", 1, "the database must be a number" },
        { "redis://h/1/q/r", 1, "the queue name may hold only A-Z a-z 0-9 . _ : -" },
        { "redis://h/q$", 1, "the queue name may hold only A-Z a-z 0-9 . _ : -" },
        { longname, 1, "the queue name is longer than 64 characters" },
        { "unix:", 0, "the unix socket path is empty" },
        { "unix:?db=1", 0, "the unix socket path is empty" },
        { "unix:tmp/r.sock", 0, "the unix socket path must be absolute" },
        { longpath, 0, "the unix socket path is too long" },
        { "unix:/r?db=", 0, "unix: takes only ?db=N and &name=NAME" },
        { "unix:/r?db=x", 0, "the database must be a number" },
        { "unix:/r?db=1&db=2", 0, "db= is given twice" },
        { "unix:/r?name=a&name=b", 1, "name= is given twice" },
        { "unix:/r?name=", 1, "the queue name is empty" },
        { "unix:/r?user=x", 0, "unix: takes only ?db=N and &name=NAME" },
        { "unix:/r?db=1&", 0, "unix: takes only ?db=N and &name=NAME" },
        { "unix:/r", 1, "a queue name is needed: ?name=NAME" },
        { "unix:/r?db=2", 1, "a queue name is needed: ?name=NAME" },
        { "unix:/r?name=q", 0, "no queue name is taken here: drop name=" },
    };
    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rurl u;
        const char *why = NULL;
        int rc = rurl_parse(bad[i].url, bad[i].want_name, &u, &why);
        if (rc != -EINVAL)
            fail_msg("%s: accepted (rc %d), want refused: %s", bad[i].url, rc, bad[i].why);
        if (!why || strcmp(why, bad[i].why) != 0)
            fail_msg("%s: reason \"%s\", want \"%s\"", bad[i].url, why ? why : "(none)",
                     bad[i].why);
    }
    /* A NULL why is allowed. */
    rurl u;
    assert_int_equal(rurl_parse("nope", 0, &u, NULL), -EINVAL);
    assert_int_equal(rurl_parse(NULL, 0, &u, NULL), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tcp_forms),
        cmocka_unit_test(test_tcp_names),
        cmocka_unit_test(test_unix_forms),
        cmocka_unit_test(test_split),
        cmocka_unit_test(test_rejections),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
