/*
 * runworker.c - the submitter's own worker (see runworker.h).
 */
#include "runworker.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/wait.h>

static volatile pid_t worker_pid;        /* 0: none */
static volatile sig_atomic_t worker_ended; /* reaped by the handler */
static volatile int worker_status;
static volatile sig_atomic_t run_over;   /* runworker_finish began */
static volatile sig_atomic_t failed_early; /* it failed while the run went on */
static sf_pool *worker_pool;

/* SIGCHLD: only our worker is reaped here (by pid: the pool reaps its own
 * tasks by pid too). waitpid and sf_pool_cancel are async-signal-safe. */
static void on_child(int sig)
{
    int saved = errno, status;

    (void)sig;
    if (worker_pid > 0 && !worker_ended && waitpid(worker_pid, &status, WNOHANG) == worker_pid) {
        worker_status = status;
        worker_ended = 1;
        /* Exit 0 is a worker that saw the run end: nothing to stop. */
        if (!run_over && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
            failed_early = 1;
            if (worker_pool)
                sf_pool_cancel(worker_pool);
        }
    }
    errno = saved;
}

int runworker_start(const char *url, unsigned jobs, const char *log_format,
                    const char *log_file, sf_pool *pool)
{
    char jobs_text[16];
    const char *argv[12];
    int n = 0;
    struct sigaction sa;
    pid_t parent = getpid(), pid;

    snprintf(jobs_text, sizeof jobs_text, "%u", jobs);
    argv[n++] = "sockfork";
    argv[n++] = "worker";
    argv[n++] = "-j";
    argv[n++] = jobs_text;
    if (log_format) {
        argv[n++] = "--log-format";
        argv[n++] = log_format;
    }
    if (log_file) {
        argv[n++] = "--log-file";
        argv[n++] = log_file;
    }
    argv[n++] = url;
    argv[n] = NULL;

    worker_pool = pool;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_child;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    if (sigaction(SIGCHLD, &sa, NULL) < 0)
        return -errno;
    pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        /* Its own group: ^C on a terminal is the submitter's to handle
         * (it cancels the run through the queue, which this worker
         * watches). Dies with the submitter: SIGTERM gives its tasks back. */
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        sigaction(SIGCHLD, &dfl, NULL);
        (void)setpgid(0, 0);
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != parent)
            _exit(1);
        closefrom(3); /* the pool's epoll and Redis sockets are not its */
        execv("/proc/self/exe", (char *const *)argv);
        fprintf(stderr, "sockfork: run: cannot start its worker: %s\n", strerror(errno));
        _exit(127);
    }
    worker_pid = pid;
    return 0;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Waits up to wait_s for the handler to reap it; 1 if it did. */
static int wait_ended(double wait_s)
{
    for (long waited = 0; !worker_ended && waited < (long)(wait_s * 1000); waited += 10) {
        on_child(SIGCHLD); /* a SIGCHLD that came before the flag was read */
        if (!worker_ended)
            sleep_ms(10);
    }
    return worker_ended;
}

int runworker_finish(double wait_s, int *early, char *why, size_t len)
{
    int status;

    *early = 0;
    if (worker_pid <= 0)
        return 0;
    run_over = 1;
    if (!wait_ended(wait_s)) {
        kill(worker_pid, SIGTERM);
        if (!wait_ended(5.0)) {
            kill(worker_pid, SIGKILL);
            (void)wait_ended(5.0);
        }
    }
    status = worker_status;
    worker_pid = 0;
    *early = failed_early;
    if (!worker_ended) {
        snprintf(why, len, "its worker did not end, even after SIGKILL");
        return -1;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;
    if (WIFEXITED(status))
        snprintf(why, len, "its worker exited %d", WEXITSTATUS(status));
    else
        snprintf(why, len, "its worker was killed by signal %d", WTERMSIG(status));
    return -1;
}
