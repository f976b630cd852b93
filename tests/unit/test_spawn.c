/* Unit tests: the after-fork routine, checked from inside real children. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "process/process.h"
#include "os/os.h"

extern char **environ;

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

/*
 * In a child of the test (its descriptors are its own to renumber): puts
 * pipe write ends at the numbers `at` asks, keeps them in that order with
 * proc_fork, and checks that the grandchild has them as 3 and 4 and
 * nothing else past 2. Exits 0 when all holds.
 */
static void __attribute__((noreturn)) keep_case(int at0, int at1)
{
    int p0[2], p1[2], ws = 0;
    char c0 = 0, c1 = 0;
    proc_fork_opts o;
    pid_t pid;

    os_closefrom(3);
    /* Pipes made high, then moved where the case wants them. */
    if (pipe(p0) < 0 || pipe(p1) < 0)
        _exit(10);
    int r0 = fcntl(p0[0], F_DUPFD_CLOEXEC, 60), w0 = fcntl(p0[1], F_DUPFD_CLOEXEC, 62);
    int r1 = fcntl(p1[0], F_DUPFD_CLOEXEC, 64), w1 = fcntl(p1[1], F_DUPFD_CLOEXEC, 66);
    close(p0[0]), close(p0[1]), close(p1[0]), close(p1[1]);
    if (dup3(w0, at0, O_CLOEXEC) < 0 || dup3(w1, at1, O_CLOEXEC) < 0)
        _exit(11);
    close(w0), close(w1);
    memset(&o, 0, sizeof o);
    o.keep[0] = at0;
    o.keep[1] = at1;
    o.nkeep = 2;
    pid = proc_fork(&o);
    if (pid == 0) {
        int ok = write(3, "A", 1) == 1 && write(4, "B", 1) == 1 &&
                 fcntl(3, F_GETFD) == FD_CLOEXEC && fcntl(4, F_GETFD) == FD_CLOEXEC;
        for (int fd = 5; fd < 70; fd++)
            if (fcntl(fd, F_GETFD) >= 0)
                ok = 0;
        _exit(ok ? 0 : 1);
    }
    if (pid < 0 || waitpid(pid, &ws, 0) != pid || !WIFEXITED(ws) || WEXITSTATUS(ws) != 0)
        _exit(12);
    close(at0), close(at1);
    if (read(r0, &c0, 1) != 1 || read(r1, &c1, 1) != 1 || c0 != 'A' || c1 != 'B')
        _exit(13);
    _exit(0);
}

/* Every way the kept descriptors can sit against their targets 3 and 4:
 * in place, swapped, above, and one in the range at the other's place
 * (moved straight where nothing collides, through copies where it does). */
static void test_keep_layouts(void **state)
{
    static const int cases[][2] = {{3, 4}, {4, 3}, {40, 41}, {41, 40}, {4, 40}, {40, 3},
                                   {3, 40}, {40, 4}};
    (void)state;

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int ws = 0;
        pid_t pid = fork();
        if (pid == 0)
            keep_case(cases[i][0], cases[i][1]);
        assert_true(pid > 0);
        assert_int_equal(waitpid(pid, &ws, 0), pid);
        assert_true(WIFEXITED(ws));
        if (WEXITSTATUS(ws) != 0)
            fail_msg("keep {%d, %d}: status %d", cases[i][0], cases[i][1], WEXITSTATUS(ws));
    }
}

/* plain_signals (the spawner's way): the child only empties its mask; the
 * parent's mask is as it was, and what it ignores stays ignored. */
static void test_plain_signals(void **state)
{
    sigset_t blocked, old, now;
    struct sigaction sa, old_pipe;
    proc_fork_opts o;
    int ws = 0;
    pid_t pid;
    (void)state;

    sigemptyset(&blocked);
    sigaddset(&blocked, SIGCHLD);
    sigaddset(&blocked, SIGINT);
    sigprocmask(SIG_BLOCK, &blocked, &old);
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, &old_pipe);
    memset(&o, 0, sizeof o);
    o.plain_signals = 1;
    o.parent = getpid();
    o.parent_death_signal = SIGTERM;
    pid = proc_fork(&o);
    if (pid == 0) {
        sigset_t mask;
        struct sigaction cur;
        int bad = 0;
        sigprocmask(SIG_SETMASK, NULL, &mask);
        if (sigismember(&mask, SIGCHLD) || sigismember(&mask, SIGINT))
            bad |= 1;
        sigaction(SIGPIPE, NULL, &cur);
        if (cur.sa_handler != SIG_IGN)
            bad |= 2;
        if (getpgrp() != getpid())
            bad |= 4;
        _exit(bad);
    }
    assert_true(pid > 0);
    sigprocmask(SIG_SETMASK, NULL, &now);
    assert_true(sigismember(&now, SIGCHLD) && sigismember(&now, SIGINT));
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    assert_true(WIFEXITED(ws));
    assert_int_equal(WEXITSTATUS(ws), 0);
    sigaction(SIGPIPE, &old_pipe, NULL);
    sigprocmask(SIG_SETMASK, &old, NULL);
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

/* Reads what is in a pipe's read end until EOF, at most n-1 bytes. */
static size_t read_all(int fd, char *buf, size_t n)
{
    size_t len = 0;
    ssize_t k;

    while (len + 1 < n && (k = read(fd, buf + len, n - 1 - len)) > 0)
        len += (size_t)k;
    buf[len] = '\0';
    return len;
}

/*
 * proc_exec's layout, in a forked test child (its stdio is free to move):
 * its fd 1 and fd 3 are two pipes' write ends, given to the program the
 * other way round (a source inside the target range, elsewhere in it),
 * fd 0 and 2 left as they are (-1), a stray descriptor at 9 closed, and
 * SIGUSR1, blocked in the caller, unblocked in the program. Each failed
 * check is a bit of the test child's exit code.
 */
/* plain: as the spawner calls it (no signal blocked around the vfork, its
 * own pid given); the program's mask is empty all the same. */
static int exec_layout_check(int plain)
{
    int a[2], b[2], bad = 0, st;
    char out1[64], out3[64];
    char *argv[] = {"sh", "-c",
                    "echo to1; echo to3 >&3; [ -e /proc/self/fd/9 ] && exit 9; "
                    "exec grep ^SigBlk /proc/self/status >&3", NULL};
    proc_exec_opts o;
    sigset_t usr1;
    pid_t pid;

    if (pipe(a) < 0 || pipe(b) < 0)
        return 0x80;
    /* The read ends at 20 and 21, the write ends at 3 (a) and 1 (b), a
     * stray at 9: all four moved high first, as pipe() may have used 3. */
    if (dup2(a[0], 20) < 0 || dup2(b[0], 21) < 0 || dup2(a[1], 22) < 0 || dup2(b[1], 23) < 0)
        return 0x80;
    close(a[0]);
    close(b[0]);
    close(a[1]);
    close(b[1]);
    if (dup2(22, 3) < 0 || dup2(23, 1) < 0 || dup2(0, 9) < 0)
        return 0x80;
    close(22);
    close(23);
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    memset(&o, 0, sizeof o);
    o.plain_signals = plain;
    o.parent = plain ? getpid() : 0;
    o.nfds = 4;
    o.fds[0] = -1;
    o.fds[1] = 3; /* pipe a */
    o.fds[2] = -1;
    o.fds[3] = 1; /* pipe b */
    pid = proc_exec("/bin/sh", argv, environ, &o);
    if (pid <= 0)
        return 0x40 | (int)(-pid & 0x3f);
    close(1);
    close(3);
    read_all(20, out1, sizeof out1);
    read_all(21, out3, sizeof out3);
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        bad |= 1;
    if (strcmp(out1, "to1\n") != 0)
        bad |= 2;
    if (strcmp(out3, "to3\nSigBlk:\t0000000000000000\n") != 0)
        bad |= 4;
    /* A failed exec is the call's error, its child already reaped. */
    o.nfds = 3;
    o.fds[0] = o.fds[1] = o.fds[2] = -1;
    if (proc_exec("/nonexistent/sockfork", argv, environ, &o) != -ENOENT)
        bad |= 8;
    if (waitpid(-1, NULL, WNOHANG) != -1 || errno != ECHILD)
        bad |= 16;
    return bad;
}

/*
 * A script without a "#!" line (ENOEXEC for execve) is run by /bin/sh with
 * its arguments, as execvp runs it; also with no argument at all.
 */
static int exec_script_child(void)
{
    char path[] = "/tmp/sockfork-noshebang-XXXXXX";
    const char text[] = "echo \"$0|$#|$1|$2\"\n";
    char *argv2[] = {"name", "one", "two words", NULL};
    char *argv0[] = {"name", NULL};
    char out[256], want[512];
    int fd, p[2], st, bad = 0;
    proc_exec_opts o;
    pid_t pid;

    fd = mkstemp(path);
    if (fd < 0 || write(fd, text, sizeof text - 1) != (ssize_t)(sizeof text - 1) ||
        fchmod(fd, 0700) < 0 || close(fd) < 0)
        return 0x80;
    memset(&o, 0, sizeof o);
    o.nfds = 3;
    o.fds[0] = o.fds[2] = -1;
    for (int k = 0; k < 2; k++) {
        if (pipe(p) < 0)
            return 0x80;
        o.fds[1] = p[1];
        pid = proc_exec(path, k ? argv0 : argv2, environ, &o);
        close(p[1]);
        if (pid <= 0) {
            close(p[0]);
            bad |= 1 << k;
            continue;
        }
        read_all(p[0], out, sizeof out);
        close(p[0]);
        if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            bad |= 4 << k;
        snprintf(want, sizeof want, k ? "%s|0||\n" : "%s|2|one|two words\n", path);
        if (strcmp(out, want) != 0)
            bad |= 16 << k;
    }
    unlink(path);
    return bad;
}

/* Runs fn in a forked test child; its exit code, 0, says every check held. */
static void assert_child_ok(int (*fn)(void))
{
    int st;
    pid_t pid;

    fflush(NULL);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(fn());
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

static int exec_layout_child(void)
{
    return exec_layout_check(0);
}

static int exec_layout_plain_child(void)
{
    return exec_layout_check(1);
}

static void test_exec_layout_mask_and_errors(void **state)
{
    (void)state;
    assert_child_ok(exec_layout_child);
    assert_child_ok(exec_layout_plain_child);
}

static void test_exec_script_without_shebang(void **state)
{
    (void)state;
    assert_child_ok(exec_script_child);
}

/*
 * proc_exec_or_exit: a program that cannot be exec'd is still a child,
 * exiting as a shell's would (127 not found, 126 not executable), with the
 * error said; a program that runs gets the RLIMIT_NOFILE asked for and
 * SIGPIPE back at its default though the caller ignores it.
 */
static int exec_or_exit_child(void)
{
    char path[] = "/tmp/sockfork-noexec-XXXXXX";
    char *argv[] = {"sh", "-c", "ulimit -n; grep ^SigIgn /proc/self/status", NULL};
    struct rlimit lim = {77, 77};
    proc_exec_opts o;
    sigset_t pipe_set;
    char out[128];
    int p[2], err = -1, st, fd, bad = 0;
    pid_t pid;

    memset(&o, 0, sizeof o);
    o.nfds = 3;
    o.fds[0] = o.fds[2] = -1;
    o.fds[1] = -1;
    pid = proc_exec_or_exit("/nonexistent/sockfork", argv, environ, &o, &err);
    if (pid <= 0 || err != ENOENT || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) ||
        WEXITSTATUS(st) != 127)
        bad |= 1;
    fd = mkstemp(path);
    if (fd < 0 || close(fd) < 0) /* mode 0600: not executable */
        return 0x80;
    pid = proc_exec_or_exit(path, argv, environ, &o, &err);
    unlink(path);
    if (pid <= 0 || err != EACCES || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) ||
        WEXITSTATUS(st) != 126)
        bad |= 2;

    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    if (pipe(p) < 0)
        return 0x80;
    o.fds[1] = p[1];
    o.fdlimit = &lim;
    o.reset = &pipe_set;
    o.parent_death_signal = SIGTERM;
    pid = proc_exec_or_exit("/bin/sh", argv, environ, &o, &err);
    close(p[1]);
    read_all(p[0], out, sizeof out);
    close(p[0]);
    if (pid <= 0 || err != 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) ||
        WEXITSTATUS(st) != 0)
        bad |= 4;
    if (strncmp(out, "77\nSigIgn:\t", 11) != 0 ||
        (strtoull(out + 11, NULL, 16) & (1ull << (SIGPIPE - 1))))
        bad |= 8;
    return bad;
}

static void test_exec_or_exit(void **state)
{
    (void)state;
    assert_child_ok(exec_or_exit_child);
}

static int closefrom_child(void)
{
    int bad = 0;

    for (int fd = 5; fd <= 40; fd++)
        if (dup2(0, fd) < 0)
            return 0x80;
    if (os_closefrom_proc(12) < 0)
        return 0x40;
    for (int fd = 5; fd <= 40; fd++)
        if ((fcntl(fd, F_GETFD) >= 0) != (fd < 12))
            bad |= 1;
    return bad;
}

/* The /proc walk of os_closefrom, for kernels without close_range. */
static void test_closefrom_proc(void **state)
{
    (void)state;
    assert_child_ok(closefrom_child);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_after_fork),
        cmocka_unit_test(test_keep_swapped),
        cmocka_unit_test(test_keep_layouts),
        cmocka_unit_test(test_plain_signals),
        cmocka_unit_test(test_signal_group),
        cmocka_unit_test(test_exec_layout_mask_and_errors),
        cmocka_unit_test(test_exec_script_without_shebang),
        cmocka_unit_test(test_exec_or_exit),
        cmocka_unit_test(test_closefrom_proc),
    };
    return cmocka_run_group_tests_name("spawn", tests, NULL, NULL);
}
