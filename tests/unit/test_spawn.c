/* Unit tests: the after-fork routine, checked from inside real children. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "process/process.h"

static void noop_handler(int sig)
{
    (void)sig;
}

/* In the child: the bit set for each property that does not hold. */
static int child_checks(int pair_end)
{
    int bad = 0, n = 0;
    struct sigaction sa;
    sigset_t mask;
    DIR *d;
    struct dirent *e;
    char c = 0;

    /* Only 0, 1, 2 and the kept descriptor (now 3) are open. */
    d = opendir("/proc/self/fd");
    if (!d)
        return 0x80;
    while ((e = readdir(d)) != NULL) {
        int fd;
        if (e->d_name[0] == '.')
            continue;
        fd = atoi(e->d_name);
        if (fd == dirfd(d))
            continue;
        if (fd > 3)
            bad |= 1;
        n++;
    }
    closedir(d);
    if (n != 4)
        bad |= 1;
    /* fd 3 is the kept end of the pair, still close-on-exec. */
    if (read(3, &c, 1) != 1 || c != 'x')
        bad |= 2;
    if (!(fcntl(3, F_GETFD) & FD_CLOEXEC))
        bad |= 2;
    (void)pair_end;
    /* The caught SIGTERM is back to default; the ignored SIGPIPE stays. */
    sigaction(SIGTERM, NULL, &sa);
    if (sa.sa_handler != SIG_DFL)
        bad |= 4;
    sigaction(SIGPIPE, NULL, &sa);
    if (sa.sa_handler != SIG_IGN)
        bad |= 8;
    /* Nothing blocked; a process group of its own. */
    sigprocmask(SIG_SETMASK, NULL, &mask);
    if (sigismember(&mask, SIGTERM) || sigismember(&mask, SIGCHLD))
        bad |= 16;
    if (getpgrp() != getpid())
        bad |= 32;
    return bad;
}

static void test_after_fork(void **state)
{
    int sv[2], extra[3], ws = 0;
    pid_t pid;
    proc_fork_opts o;
    struct sigaction sa, old_term, old_pipe;
    (void)state;

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    /* Descriptors that must not reach the child, some of them not CLOEXEC. */
    extra[0] = open("/dev/null", O_RDONLY);
    extra[1] = open("/dev/null", O_RDONLY | O_CLOEXEC);
    extra[2] = dup(sv[1]);
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = noop_handler;
    sigaction(SIGTERM, &sa, &old_term);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, &old_pipe);

    memset(&o, 0, sizeof o);
    o.keep[0] = sv[1];
    o.nkeep = 1;
    o.parent_death_signal = SIGTERM;
    pid = proc_fork(&o);
    if (pid == 0)
        _exit(child_checks(sv[1]));
    assert_true(pid > 0);
    assert_int_equal(write(sv[0], "x", 1), 1);
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    assert_true(WIFEXITED(ws));
    assert_int_equal(WEXITSTATUS(ws), 0);

    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGPIPE, &old_pipe, NULL);
    for (int i = 0; i < 3; i++)
        close(extra[i]);
    close(sv[0]);
    close(sv[1]);
}

/* Keeping descriptors whose numbers collide with the targets. */
static void test_keep_swapped(void **state)
{
    int a[2], b[2], ws = 0;
    proc_fork_opts o;
    pid_t pid;
    (void)state;

    assert_int_equal(pipe2(a, O_CLOEXEC), 0);
    assert_int_equal(pipe2(b, O_CLOEXEC), 0);
    memset(&o, 0, sizeof o);
    /* Ask for b's write end at 3 and a's write end at 4. */
    o.keep[0] = b[1];
    o.keep[1] = a[1];
    o.nkeep = 2;
    pid = proc_fork(&o);
    if (pid == 0) {
        int ok = write(3, "b", 1) == 1 && write(4, "a", 1) == 1;
        _exit(ok ? 0 : 1);
    }
    assert_true(pid > 0);
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    char c;
    assert_int_equal(read(a[0], &c, 1), 1);
    assert_int_equal(c, 'a');
    assert_int_equal(read(b[0], &c, 1), 1);
    assert_int_equal(c, 'b');
    close(a[0]);
    close(a[1]);
    close(b[0]);
    close(b[1]);
}

static void test_signal_group(void **state)
{
    int ws = 0;
    proc_fork_opts o;
    pid_t pid;
    (void)state;

    int ready[2];
    char c;
    assert_int_equal(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    assert_int_equal(pipe2(ready, O_CLOEXEC), 0);
    memset(&o, 0, sizeof o);
    o.keep[0] = ready[1];
    o.nkeep = 1;
    pid = proc_fork(&o);
    if (pid == 0) {
        /* A grandchild in the same group: both must die. It says when it
         * is running, so the kill cannot come before it exists. */
        if (fork() == 0) {
            if (write(3, "g", 1) != 1)
                _exit(1);
            for (;;)
                pause();
        }
        for (;;)
            pause();
    }
    assert_true(pid > 0);
    close(ready[1]);
    assert_int_equal(read(ready[0], &c, 1), 1);
    close(ready[0]);
    assert_int_equal(proc_signal_group(pid, SIGKILL), 0);
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    assert_true(WIFSIGNALED(ws));
    assert_int_equal(WTERMSIG(ws), SIGKILL);
    /* The grandchild was in the group: it died too, and as a subreaper we
     * get to reap it (waitpid on the group returns only once it is dead). */
    pid_t g = waitpid(-pid, &ws, 0);
    assert_true(g > 0);
    assert_true(WIFSIGNALED(ws));
    assert_int_equal(WTERMSIG(ws), SIGKILL);
    assert_int_equal(proc_signal_group(0, SIGTERM), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_after_fork),
        cmocka_unit_test(test_keep_swapped),
        cmocka_unit_test(test_signal_group),
    };
    return cmocka_run_group_tests_name("spawn", tests, NULL, NULL);
}
