/* Unit tests: the backoff, the TERM->KILL escalation and the PATH lookup
 * shared by the supervisor, the server, the pool and the takedown. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "process/backoff.h"
#include "process/process.h"
#include "process/stop.h"

extern char **environ;

/* ------------------------------------------------------------- backoff */

static void test_backoff_doubles_to_cap_and_resets(void **state)
{
    const double want[] = {0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0};
    proc_backoff b = {0};
    (void)state;

    for (unsigned i = 0; i < sizeof want / sizeof want[0]; i++) {
        assert_float_equal(proc_backoff_delay(&b), want[i], 1e-12);
        assert_float_equal(proc_backoff_next(&b), want[i], 1e-12);
    }
    proc_backoff_reset(&b);
    assert_float_equal(proc_backoff_delay(&b), PROC_BACKOFF_MIN, 1e-12);
    assert_float_equal(proc_backoff_next(&b), 0.05, 1e-12);
    assert_float_equal(proc_backoff_next(&b), 0.1, 1e-12);
}

/* The server's way: many failures under one timer, one growth per expiry;
 * a success while the timer runs wins over the growth. */
static void test_backoff_armed_once_grown_per_expiry(void **state)
{
    proc_backoff b;
    (void)state;

    proc_backoff_reset(&b);
    proc_backoff_grow(&b); /* nothing armed: nothing grows */
    assert_float_equal(proc_backoff_delay(&b), 0.05, 1e-12);
    for (int i = 0; i < 5; i++)
        assert_float_equal(proc_backoff_arm(&b), 0.05, 1e-12);
    proc_backoff_grow(&b);
    assert_float_equal(proc_backoff_delay(&b), 0.1, 1e-12);
    assert_float_equal(proc_backoff_arm(&b), 0.1, 1e-12);

    proc_backoff_reset(&b); /* a success before the expiry */
    proc_backoff_grow(&b);
    assert_float_equal(proc_backoff_arm(&b), 0.05, 1e-12);
}

/* ---------------------------------------------------------- escalation */

typedef struct sent {
    pid_t pid[8];
    int sig[8];
    int n;
    int fail_sig; /* this one returns -ESRCH */
} sent;

static int record(pid_t pid, int sig, void *arg)
{
    sent *s = arg;
    if (s->n < 8) {
        s->pid[s->n] = pid;
        s->sig[s->n] = sig;
    }
    s->n++;
    return sig == s->fail_sig ? -ESRCH : 0;
}

static void test_stop_term_cont_then_kill(void **state)
{
    sent s = {.fail_sig = -1};
    proc_stop st = {.grace = 2.5, .send = record, .arg = &s};
    double kill_in = 99;
    (void)state;

    assert_int_equal(proc_stop_begin(&st, 123, &kill_in), 0);
    assert_float_equal(kill_in, 2.5, 1e-12);
    assert_int_equal(s.n, 2);
    assert_int_equal(s.sig[0], SIGTERM);
    assert_int_equal(s.sig[1], SIGCONT);
    assert_int_equal(s.pid[0], 123);
    assert_int_equal(s.pid[1], 123);
    assert_int_equal(proc_stop_kill(&st, 123), 0);
    assert_int_equal(s.n, 3);
    assert_int_equal(s.sig[2], SIGKILL);
}

static void test_stop_zero_grace(void **state)
{
    sent s = {.fail_sig = -1};
    proc_stop st = {.grace = 0, .no_grace_kills = 1, .send = record, .arg = &s};
    double kill_in = 99;
    (void)state;

    /* The pool's: SIGKILL at once, no SIGTERM. */
    assert_int_equal(proc_stop_begin(&st, 7, &kill_in), 0);
    assert_true(kill_in < 0);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.sig[0], SIGKILL);

    /* The supervisor's: SIGTERM still first, SIGKILL due at once. */
    s.n = 0;
    st.no_grace_kills = 0;
    assert_int_equal(proc_stop_begin(&st, 7, &kill_in), 0);
    assert_float_equal(kill_in, 0, 0);
    assert_int_equal(s.n, 2);
    assert_int_equal(s.sig[0], SIGTERM);
    assert_int_equal(s.sig[1], SIGCONT);
}

static void test_stop_gone_group(void **state)
{
    sent s = {.fail_sig = SIGTERM};
    proc_stop st = {.grace = 1, .send = record, .arg = &s};
    double kill_in = 99;
    (void)state;

    /* SIGTERM found nobody: said, and no SIGCONT after it. */
    assert_int_equal(proc_stop_begin(&st, 7, &kill_in), -ESRCH);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.sig[0], SIGTERM);
}

static volatile sig_atomic_t got_term;

static void on_term(int sig)
{
    (void)sig;
    got_term = 1;
}

/* With the default delivery (proc_signal_group), a stopped child with a
 * SIGTERM handler acts on it: the SIGCONT came too. */
static void test_stop_real_stopped_child(void **state)
{
    proc_fork_opts po;
    int p[2];
    char c;
    int ws;
    pid_t pid;
    proc_stop st = {.grace = 5};
    double kill_in;
    (void)state;

    assert_int_equal(pipe(p), 0);
    memset(&po, 0, sizeof po);
    po.keep[0] = p[1];
    po.nkeep = 1;
    pid = proc_fork(&po);
    assert_true(pid >= 0);
    if (pid == 0) {
        signal(SIGTERM, on_term);
        if (write(3, "r", 1) != 1)
            _exit(1);
        while (!got_term)
            pause();
        _exit(7);
    }
    close(p[1]);
    assert_int_equal(read(p[0], &c, 1), 1);
    close(p[0]);
    assert_int_equal(kill(pid, SIGSTOP), 0);
    assert_int_equal(waitpid(pid, &ws, WUNTRACED), pid);
    assert_true(WIFSTOPPED(ws));

    assert_int_equal(proc_stop_begin(&st, pid, &kill_in), 0);
    assert_float_equal(kill_in, 5, 0);
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    assert_true(WIFEXITED(ws));
    assert_int_equal(WEXITSTATUS(ws), 7);
}

/* --------------------------------------------------------- PATH lookup */

static char tmp[64];

static void mk(const char *rel, mode_t mode)
{
    char f[PATH_MAX];
    int fd;

    snprintf(f, sizeof f, "%s/%s", tmp, rel);
    fd = open(f, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "exit 5\n", 7), 7);
    close(fd);
    assert_int_equal(chmod(f, mode), 0);
}

static void mkd(const char *rel)
{
    char d[PATH_MAX];
    snprintf(d, sizeof d, "%s/%s", tmp, rel);
    assert_int_equal(mkdir(d, 0755), 0);
}

static int setup_tree(void **state)
{
    (void)state;
    snprintf(tmp, sizeof tmp, "/tmp/sf-path-XXXXXX");
    if (!mkdtemp(tmp))
        return -1;
    mkd("a");
    mkd("b");
    mkd("c");
    mkd("c/prog"); /* a directory of that name */
    mk("a/prog", 0644);  /* not executable */
    mk("b/prog", 0755);
    mk("a/onlyread", 0644);
    mk("here", 0755);
    return 0;
}

static int teardown_tree(void **state)
{
    char cmd[128];
    (void)state;
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_path_search_order_and_errors(void **state)
{
    char path[3 * PATH_MAX], buf[PATH_MAX], want[PATH_MAX];
    (void)state;

    /* A directory and a non-executable file are passed over. */
    snprintf(path, sizeof path, "%s/c:%s/a:%s/b", tmp, tmp, tmp);
    assert_int_equal(proc_path_find("prog", path, buf, sizeof buf), 0);
    snprintf(want, sizeof want, "%s/b/prog", tmp);
    assert_string_equal(buf, want);

    /* Found, but nothing executable: EACCES, as execvp. */
    snprintf(path, sizeof path, "%s/a:%s/c", tmp, tmp);
    assert_int_equal(proc_path_find("prog", path, buf, sizeof buf), -EACCES);
    snprintf(path, sizeof path, "%s/c", tmp);
    assert_int_equal(proc_path_find("prog", path, buf, sizeof buf), -EACCES);
    snprintf(path, sizeof path, "%s/a:%s/b", tmp, tmp);
    assert_int_equal(proc_path_find("onlyread", path, buf, sizeof buf), -EACCES);

    /* Nothing: ENOENT. */
    assert_int_equal(proc_path_find("nosuch", path, buf, sizeof buf), -ENOENT);
    assert_int_equal(proc_path_find("", path, buf, sizeof buf), -ENOENT);

    /* A name with a '/' is used as is, found or not. */
    assert_int_equal(proc_path_find("./nosuch", path, buf, sizeof buf), 0);
    assert_string_equal(buf, "./nosuch");
    assert_int_equal(proc_path_find("/x/y", path, buf, 4), -ENAMETOOLONG);

    /* An entry too long for buf is passed over; with nothing found, that
     * is what is said. */
    assert_int_equal(proc_path_find("prog", path, buf, 8), -ENAMETOOLONG);
    assert_int_equal(proc_path_find(NULL, path, buf, sizeof buf), -EINVAL);
}

static void test_path_empty_entries_are_cwd(void **state)
{
    char old[PATH_MAX], path[PATH_MAX], buf[PATH_MAX];
    (void)state;

    assert_non_null(getcwd(old, sizeof old));
    assert_int_equal(chdir(tmp), 0);
    snprintf(path, sizeof path, "%s/a", tmp);
    assert_int_equal(proc_path_find("here", path, buf, sizeof buf), -ENOENT);
    snprintf(path, sizeof path, ":%s/a", tmp);   /* leading */
    assert_int_equal(proc_path_find("here", path, buf, sizeof buf), 0);
    assert_string_equal(buf, "here");
    snprintf(path, sizeof path, "%s/a::%s/b", tmp, tmp); /* between */
    assert_int_equal(proc_path_find("here", path, buf, sizeof buf), 0);
    assert_string_equal(buf, "here");
    snprintf(path, sizeof path, "%s/a:", tmp);   /* trailing */
    assert_int_equal(proc_path_find("here", path, buf, sizeof buf), 0);
    assert_string_equal(buf, "here");
    assert_int_equal(chdir(old), 0);
}

static void test_path_default(void **state)
{
    char buf[PATH_MAX];
    (void)state;

    char old[PATH_MAX], small[8];

    /* Unset: /bin:/usr/bin, where sh is. */
    assert_int_equal(proc_path_find("sh", NULL, buf, sizeof buf), 0);
    assert_true(strcmp(buf, "/bin/sh") == 0 || strcmp(buf, "/usr/bin/sh") == 0);
    /* Set but empty: the current directory only, as glibc's execvp. */
    assert_non_null(getcwd(old, sizeof old));
    assert_int_equal(chdir(tmp), 0);
    assert_int_equal(proc_path_find("sh", "", buf, sizeof buf), -ENOENT);
    assert_int_equal(proc_path_find("here", "", buf, sizeof buf), 0);
    assert_string_equal(buf, "here");
    assert_int_equal(chdir(old), 0);
    /* Found nowhere because no entry fits the buffer: said so. */
    assert_int_equal(proc_path_find("sh", "/usr/bin", small, sizeof small), -ENAMETOOLONG);
}

/* ---------------------------------------------------------- proc_execve */

static int exec_status(const char *file)
{
    char *argv[] = {(char *)file, NULL};
    int ws;
    pid_t pid = fork();

    if (pid == 0) {
        int rc = proc_execve(file, argv, environ);
        _exit(rc == -ENOENT ? 40 : rc == -EACCES ? 41 : 42);
    }
    assert_true(pid > 0);
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    assert_true(WIFEXITED(ws));
    return WEXITSTATUS(ws);
}

static void test_execve_script_and_errors(void **state)
{
    char f[PATH_MAX];
    (void)state;

    snprintf(f, sizeof f, "%s/b/prog", tmp); /* "exit 5", no #! line */
    assert_int_equal(exec_status(f), 5);
    snprintf(f, sizeof f, "%s/nosuch", tmp);
    assert_int_equal(exec_status(f), 40);
    snprintf(f, sizeof f, "%s/c/prog", tmp); /* a directory */
    assert_int_equal(exec_status(f), 41);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backoff_doubles_to_cap_and_resets),
        cmocka_unit_test(test_backoff_armed_once_grown_per_expiry),
        cmocka_unit_test(test_stop_term_cont_then_kill),
        cmocka_unit_test(test_stop_zero_grace),
        cmocka_unit_test(test_stop_gone_group),
        cmocka_unit_test(test_stop_real_stopped_child),
        cmocka_unit_test(test_path_search_order_and_errors),
        cmocka_unit_test(test_path_empty_entries_are_cwd),
        cmocka_unit_test(test_path_default),
        cmocka_unit_test(test_execve_script_and_errors),
    };
    return cmocka_run_group_tests_name("process", tests, setup_tree, teardown_tree);
}
