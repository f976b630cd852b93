/* Unit tests: exit status decoding on real children. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include "sockfork.h"

/* Runs a child that ends the way `how` says, returns its wait status. */
static int child_status(int how)
{
    pid_t pid = fork();
    int ws = 0;

    if (pid == 0) {
        if (how >= 0)
            _exit(how);
        struct rlimit rl = {0, 0}; /* no core files from the test */
        setrlimit(RLIMIT_CORE, &rl);
        signal(-how, SIG_DFL);
        raise(-how);
        _exit(99);
    }
    assert_true(pid > 0);
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    return ws;
}

static void format_is(int ws, const char *want)
{
    char buf[64];
    sf_status st = sf_status_decode(ws);
    assert_true(sf_status_format(&st, buf, sizeof buf) > 0);
    assert_string_equal(buf, want);
}

static void test_exited(void **state)
{
    (void)state;
    sf_status st = sf_status_decode(child_status(0));
    assert_int_equal(st.exited, 1);
    assert_int_equal(st.code, 0);
    format_is(child_status(0), "exited 0");
    format_is(child_status(3), "exited 3");
    format_is(child_status(255), "exited 255");
}

static void test_signaled(void **state)
{
    (void)state;
    sf_status st = sf_status_decode(child_status(-SIGKILL));
    assert_int_equal(st.exited, 0);
    assert_int_equal(st.signal, SIGKILL);
    assert_int_equal(st.core, 0);
    format_is(child_status(-SIGKILL), "killed by SIGKILL");
    format_is(child_status(-SIGTERM), "killed by SIGTERM");
}

static void test_core_flag(void **state)
{
    (void)state;
    /* Built by hand: whether a real core is dumped depends on the host. */
    format_is(SIGSEGV | 0x80, "killed by SIGSEGV (core dumped)");
    format_is(SIGABRT, "killed by SIGABRT");
    format_is(77, "killed by signal 77");
}

static void test_names(void **state)
{
    (void)state;
    assert_string_equal(sf_signal_name(SIGPIPE), "SIGPIPE");
    assert_null(sf_signal_name(0));
    assert_null(sf_signal_name(1000));
}

static void test_small_buffer(void **state)
{
    char buf[4];
    sf_status st = sf_status_decode(child_status(-SIGKILL));
    (void)state;
    assert_int_equal(sf_status_format(&st, buf, sizeof buf), -ENOSPC);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exited),
        cmocka_unit_test(test_signaled),
        cmocka_unit_test(test_core_flag),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_small_buffer),
    };
    return cmocka_run_group_tests_name("status", tests, NULL, NULL);
}
