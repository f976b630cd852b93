/* Unit tests: an exec'd program's environment, built in the spawner
 * (server/execplan.c) with the effect sf_conn_exec's setenv calls have. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include "server/execplan.h"

#define CAP 32

/* The value of NAME in envp, or NULL. */
static const char *lookup(char *const *envp, const char *name)
{
    size_t n = strlen(name);
    for (; *envp; envp++)
        if (strncmp(*envp, name, n) == 0 && (*envp)[n] == '=')
            return *envp + n + 1;
    return NULL;
}

static int count(char *const *envp, const char *name)
{
    size_t n = strlen(name);
    int k = 0;
    for (; *envp; envp++)
        k += strncmp(*envp, name, n) == 0 && (*envp)[n] == '=';
    return k;
}

/* Replaced in place (the first of a name; a later one stays, as setenv
 * leaves it), appended in the order set, removed (every one). */
static void test_merge_as_setenv(void **state)
{
    char *base[] = {"A=1", "PROTO=stale", "TCPREMOTEHOST=x", "B=2", "PROTO=again",
                    "TCPREMOTEHOST=y", "NOEQUALS", NULL};
    execplan_env e;
    char *out[CAP];
    (void)state;

    memset(&e, 0, sizeof e);
    assert_int_equal(execplan_unsetenv(&e, "TCPREMOTEHOST"), 0);
    assert_int_equal(execplan_setenv(&e, "PROTO", "TCP"), 0);
    assert_int_equal(execplan_setenv(&e, "NEW1", "a"), 0);
    assert_int_equal(execplan_setenv(&e, "NEW2", "b"), 0);
    assert_int_equal(execplan_setenv(&e, "NEW1", "c"), 0); /* the later set wins */
    assert_int_equal(execplan_merge(&e, base, out, CAP), 7);
    assert_string_equal(out[0], "A=1");
    assert_string_equal(out[1], "PROTO=TCP");
    assert_string_equal(out[2], "B=2");
    assert_string_equal(out[3], "PROTO=again");
    assert_string_equal(out[4], "NOEQUALS");
    assert_string_equal(out[5], "NEW1=c");
    assert_string_equal(out[6], "NEW2=b");
    assert_null(out[7]);
    /* No base at all: only the variables set. */
    assert_int_equal(execplan_merge(&e, NULL, out, CAP), 3);
    assert_string_equal(out[0], "PROTO=TCP");
}

static void test_merge_and_set_bounds(void **state)
{
    char *base[] = {"A=1", "B=2", NULL};
    execplan_env e;
    char *out[CAP], big[EXECPLAN_TEXT_MAX];
    (void)state;

    memset(&e, 0, sizeof e);
    assert_int_equal(execplan_setenv(&e, "C", "3"), 0);
    /* Room for 3 variables and the NULL: 4; 3 is too few. */
    assert_int_equal(execplan_merge(&e, base, out, 4), 3);
    assert_int_equal(execplan_merge(&e, base, out, 3), -E2BIG);
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(execplan_setenv(&e, "BIG", big), -E2BIG);
    memset(&e, 0, sizeof e);
    for (int i = 0; i < EXECPLAN_VARS_MAX; i++) {
        char name[8];
        snprintf(name, sizeof name, "V%d", i);
        assert_int_equal(execplan_setenv(&e, name, "v"), 0);
    }
    assert_int_equal(execplan_setenv(&e, "ONEMORE", "v"), -E2BIG);
    assert_int_equal(execplan_setenv(&e, "V3", "again"), 0); /* a replacement fits */
}

static void conn_env(execplan_env *e, const char *peer, const char *local, char **out)
{
    sf_addr p, l;
    char *base[] = {"TCPLOCALHOST=stale", "KEEP=1", "SOCKFORK_FD=9", NULL};

    assert_int_equal(sf_addr_parse(&p, peer), 0);
    assert_int_equal(sf_addr_parse(&l, local), 0);
    memset(e, 0, sizeof *e);
    assert_int_equal(execplan_conn_env(e, &p, &l, -1), 0);
    assert_true(execplan_merge(e, base, out, CAP) > 0);
}

static void test_tcp_variables(void **state)
{
    execplan_env e;
    char *out[CAP];
    (void)state;

    conn_env(&e, "127.0.0.1:40000", "127.0.0.2:4444", out);
    assert_string_equal(lookup(out, "PROTO"), "TCP");
    assert_string_equal(lookup(out, "TCPREMOTEIP"), "127.0.0.1");
    assert_string_equal(lookup(out, "TCPREMOTEPORT"), "40000");
    assert_string_equal(lookup(out, "TCPLOCALIP"), "127.0.0.2");
    assert_string_equal(lookup(out, "TCPLOCALPORT"), "4444");
    assert_string_equal(lookup(out, "SOCKFORK_FD"), "9"); /* not the connection's to set */
    assert_string_equal(lookup(out, "KEEP"), "1");
    assert_null(lookup(out, "TCPLOCALHOST"));
    assert_null(lookup(out, "TCP6REMOTEIP"));

    conn_env(&e, "[::1]:40001", "[::1]:4445", out);
    assert_string_equal(lookup(out, "PROTO"), "TCP6");
    assert_string_equal(lookup(out, "TCPREMOTEIP"), "::1");
    assert_string_equal(lookup(out, "TCP6REMOTEIP"), "::1");
    assert_string_equal(lookup(out, "TCP6REMOTEPORT"), "40001");
    assert_string_equal(lookup(out, "TCP6LOCALPORT"), "4445");
}

/* A Unix connection: the listener's path, and who is on the other end. */
static void test_ipc_variables(void **state)
{
    execplan_env e;
    sf_addr a;
    char *out[CAP], num[24];
    int sv[2];
    (void)state;

    assert_int_equal(sf_addr_parse(&a, "unix:/tmp/some.sock"), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    memset(&e, 0, sizeof e);
    assert_int_equal(execplan_conn_env(&e, &a, &a, sv[0]), 0);
    assert_true(execplan_merge(&e, NULL, out, CAP) > 0);
    assert_string_equal(lookup(out, "PROTO"), "IPC");
    assert_string_equal(lookup(out, "IPCLOCALPATH"), "/tmp/some.sock");
    snprintf(num, sizeof num, "%u", (unsigned)geteuid());
    assert_string_equal(lookup(out, "IPCREMOTEEUID"), num);
    snprintf(num, sizeof num, "%d", (int)getpid());
    assert_string_equal(lookup(out, "IPCREMOTEPID"), num);
    assert_null(lookup(out, "TCPREMOTEIP"));
    close(sv[0]);
    close(sv[1]);
}

/* The whole plan: file and argv as given, the connection on 0 and 1, the
 * channel on 3 made blocking, stderr left. */
static void test_plan_for_a_connection(void **state)
{
    char *argv[] = {"cat", NULL};
    spawn_exec ex;
    sf_addr peer;
    int conn[2], chan[2];
    (void)state;

    assert_int_equal(sf_addr_parse(&peer, "unix:/tmp/plan.sock"), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, conn), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, chan), 0);
    memset(&ex, 0, sizeof ex);
    assert_int_equal(execplan_conn(&ex, "/bin/cat", argv, &peer, NULL, 0, conn[0], chan[1], NULL, 0), 1);
    assert_string_equal(ex.file, "/bin/cat");
    assert_ptr_equal(ex.argv, argv);
    assert_int_equal(ex.nfds, 4);
    assert_int_equal(ex.fds[0], conn[0]);
    assert_int_equal(ex.fds[1], conn[0]);
    assert_int_equal(ex.fds[2], -1);
    assert_int_equal(ex.fds[3], chan[1]);
    assert_false(fcntl(chan[1], F_GETFL) & O_NONBLOCK);
    assert_string_equal(lookup(ex.envp, "PROTO"), "IPC");
    assert_string_equal(lookup(ex.envp, "SOCKFORK_FD"), "3");
    assert_int_equal(count(ex.envp, "SOCKFORK_FD"), 1);
    assert_int_equal(execplan_conn(&ex, "/bin/cat", NULL, &peer, NULL, 0, conn[0], chan[1], NULL, 0), -EINVAL);
    close(conn[0]);
    close(conn[1]);
    close(chan[0]);
    close(chan[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_merge_as_setenv),
        cmocka_unit_test(test_merge_and_set_bounds),
        cmocka_unit_test(test_tcp_variables),
        cmocka_unit_test(test_ipc_variables),
        cmocka_unit_test(test_plan_for_a_connection),
    };
    return cmocka_run_group_tests_name("execplan", tests, NULL, NULL);
}
