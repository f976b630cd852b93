/*
 * run.c - `sockfork run`: GNU parallel's job, on the library's task pool.
 * The arguments come from ::: groups (their cross product) or one per line
 * from stdin or --arg-file; each task's output is grouped (or passed on
 * line by line with --line-buffer); the joblog, --results and the summary
 * record how each task ended.
 */
#include "cli.h"
#include "logsink.h"
#include "runargs.h"
#include "runlog.h"
#include "runout.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define EXIT_RUN_USAGE 255
#define EXIT_RUN_ERROR 255 /* as GNU parallel's "other error" */
#define EXIT_FAILED_MAX 101
#define LINE_MAX_BYTES (128 * 1024) /* the kernel's limit on one argument */
#define RETRY_ON_MAX 64
#define MAX_OUTPUT_DEFAULT (1ULL << 30)
#define MAX_OUTPUT_QUEUE (1ULL << 20) /* --queue: it travels through Redis */

/* --help: this, a line per option of run_options (below), then the tail. */
static const char run_usage_head[] =
    "usage: sockfork run [OPTIONS] COMMAND [ARGS...] [::: A B ... [::: C D ...]]\n"
    "\n"
    "Runs COMMAND once per argument: the cross product of the ::: groups, or one\n"
    "argument per line of stdin (or --arg-file). {} {.} {/} {//} {/.} {#} {%} and {N}\n"
    "are replaced as in GNU parallel; with none, the arguments are appended.\n"
    "COMMAND is exec'd directly, never through a shell, unless --shell.\n"
    "\n"
    "options:\n";

static const char run_usage_tail[] =
    "\n"
    "A task may write JSON lines on fd 3 (SOCKFORK_FD=3): {\"progress\": 0.4},\n"
    "{\"progress\": {\"done\": 3, \"total\": 10}}, {\"log\": \"text\"}, {\"result\": ...}.\n"
    "Exit status: 0 if every task succeeded, else the number that failed (at most\n"
    "101); 255 for a usage error, input that could not be read, a --joblog or\n"
    "--results file that could not be written or a task's output that could not\n"
    "be held (the run stops at the first); 141 if stdout or stderr could not be\n"
    "written; 128+N after signal N stopped the run.\n";

/* One task of the run, from its input to its output being written. */
typedef struct run_task {
    unsigned long seq;            /* input order, from 1: {#} */
    char **args;                  /* its arguments, one per ::: group */
    size_t nargs;
    char *line;                   /* owned storage of a line's argument */
    runout out[2];                /* stdout, stderr of the current attempt */
    char *tag;                    /* --tag: the arguments and a tab */
    size_t taglen;
    int finished;                 /* reported by the pool (keep-order) */
    int bol[2];                   /* --line-buffer with --tag */
    char *partial[2];             /* --line-buffer: an unfinished line */
    size_t plen[2];
} run_task;

#define SKIPPED ((run_task *)1)

typedef struct run_state {
    /* options */
    char **cmd;
    size_t ncmd;
    char ***groups;
    size_t *gsize, ngroups;
    const char *arg_file, *results_path, *joblog_path;
    int shell, keep_order, line_buffer, tag, resume, resume_failed, quiet;
    int progress;                 /* -1: when stderr is a terminal */
    int jobs_given;
    unsigned long long max_output; /* 0: the default, when output is grouped */
    sf_pool_opts po;
    int retry_codes[RETRY_ON_MAX], retry_signals[RETRY_ON_MAX];

    /* input */
    size_t *gidx;
    int groups_left;
    int in_fd;
    char *inbuf;                  /* LINE_MAX_BYTES + one read */
    size_t inlen;
    int in_eof;
    unsigned long lineno;
    int input_error;
    unsigned long next_seq;       /* the next input's seq */
    unsigned long skipped;
    unsigned long total;          /* 0: not known yet */

    /* keep-order: tasks by seq, in a window */
    run_task **ring;
    size_t window;
    unsigned long next_print;

    runlog_done done;
    int joblog_fd, results_fd;    /* -1: none, or no more (a write failed) */
    int data_lost;                /* a record, or a task's output, could not be kept */
    int record_failed;            /* a record could not be written: no more go in */
    int write_error;              /* stdout or stderr is gone */
    sf_pool *pool;
    double t0;
    int progress_shown;
    int pool_running;             /* in sf_pool_run: the progress line may be drawn */
    int shell_hinted;             /* said once that a name looks like a shell line */
} run_state;

static volatile sig_atomic_t stop_signal;
static sf_pool *volatile signal_pool;

static void on_stop_signal(int sig)
{
    stop_signal = sig;
    if (signal_pool)
        sf_pool_cancel(signal_pool);
}

/* Caught, not ignored: a write past RLIMIT_FSIZE then fails with EFBIG,
 * which is handled as a full disk is, instead of killing the run and
 * leaving its tasks running; and the pool puts a caught signal back to
 * its default in the tasks. */
static void on_xfsz(int sig)
{
    (void)sig;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------ output */

static void progress_clear(run_state *st)
{
    if (st->progress_shown) {
        (void)runout_write_all(2, "\r\033[K", 4);
        st->progress_shown = 0;
    }
}

/* The progress line, drawn afresh (it starts with its own \r and erase). */
static void progress_draw(run_state *st)
{
    sf_pool *p = st->pool;
    sf_pool_stats s;
    sf_task_info run[4];
    char line[512];
    double el = now_s() - st->t0, rate;
    unsigned long done;
    size_t n, k;
    int len;

    sf_pool_get_stats(p, &s);
    done = s.ok + s.failed;
    rate = el > 0 ? (double)done / el : 0;
    len = snprintf(line, sizeof line, "\r\033[Kdone %lu", done);
    if (st->total)
        len += snprintf(line + len, sizeof line - (size_t)len, "/%lu", st->total - st->skipped);
    len += snprintf(line + len, sizeof line - (size_t)len, "  failed %lu  running %lu  %.1f/s",
                    s.failed, s.running, rate);
    if (st->total && rate > 0) {
        double eta = (double)(st->total - st->skipped - done) / rate;
        len += snprintf(line + len, sizeof line - (size_t)len, "  ETA %lu:%02lu",
                        (unsigned long)eta / 60, (unsigned long)eta % 60);
    }
    n = sf_pool_running(p, run, sizeof run / sizeof run[0]);
    for (k = 0; k < n && len < (int)sizeof line - 40; k++) {
        const run_task *t = run[k].data;
        if (run[k].progress_total > 0)
            len += snprintf(line + len, sizeof line - (size_t)len, "  #%lu %g/%g", t->seq,
                            run[k].progress_done, run[k].progress_total);
        else if (run[k].progress_total == 0)
            len += snprintf(line + len, sizeof line - (size_t)len, "  #%lu %.0f%%", t->seq,
                            run[k].progress_done * 100);
    }
    if (len > (int)sizeof line - 1)
        len = (int)sizeof line - 1;
    (void)runout_write_all(2, line, (size_t)len);
    st->progress_shown = 1;
}

/*
 * Every line run and the pool log while the run is on goes through here:
 * on a terminal the progress line has no newline, so it is erased first
 * (or the log line would be glued to it), and drawn again after, so it
 * stays in sight below the log.
 */
static void run_log(void *arg, int level, const char *line)
{
    run_state *st = arg;

    progress_clear(st);
    cli_log(NULL, level, line);
    if (st->pool_running && st->progress)
        progress_draw(st);
}

/* The pool's records (--log-format json), as run_log has its lines. */
static void run_record(void *arg, const sf_log_record *rec)
{
    run_state *st = arg;

    progress_clear(st);
    logsink_record(&cli_sink, rec);
    if (st->pool_running && st->progress)
        progress_draw(st);
}

static void say(run_state *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(run_state *st, const char *fmt, ...)
{
    char line[1024]; /* cli_error cuts a longer line too */
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (cli_sink.format == LOGSINK_JSON) {
        sf_log_record rec = {.level = SF_LOG_WARN, .event = "run_warning", .line = line};
        run_record(st, &rec);
    } else {
        run_log(st, SF_LOG_WARN, line);
    }
}

static void output_failed(run_state *st, int fd, int err)
{
    if (st->write_error)
        return;
    st->write_error = 1;
    if (err == -ETIMEDOUT)
        say(st, "run: %s is not being read: the rest of the output is dropped",
            fd == 1 ? "stdout" : "stderr");
    else
        say(st, "run: writing to %s: %s; stopping", fd == 1 ? "stdout" : "stderr",
            strerror(-err));
    sf_pool_cancel(st->pool);
}

static void task_emit(run_state *st, run_task *t)
{
    for (int s = 0; s < 2; s++) {
        runout_writer w;
        if (!t->out[s].len && t->out[s].spill < 0 && !t->plen[s])
            continue;
        progress_clear(st);
        runout_writer_init(&w, s + 1, st->tag ? t->tag : NULL, t->taglen);
        w.bol = t->bol[s];
        if (t->plen[s])
            runout_write(&w, t->partial[s], t->plen[s]);
        runout_emit(&t->out[s], &w);
        if (runout_flush(&w) < 0)
            output_failed(st, s + 1, w.err);
    }
}

static void task_free(run_task *t)
{
    if (!t || t == SKIPPED)
        return;
    for (int s = 0; s < 2; s++) {
        runout_reset(&t->out[s]);
        free(t->partial[s]);
    }
    free(t->tag);
    free(t->line);
    free(t->args);
    free(t);
}

/* --keep-order: write out every finished task at the head of the window. */
static void keep_order_flush(run_state *st)
{
    for (;;) {
        run_task **at = &st->ring[(st->next_print - 1) % st->window];
        if (!*at || (*at != SKIPPED && !(*at)->finished))
            return;
        if (*at != SKIPPED)
            task_emit(st, *at);
        task_free(*at);
        *at = NULL;
        st->next_print++;
    }
}

/* A task's output could not be held (no memory, or the disk of its spill
 * file is full): some of it is lost, and the run has failed as when a
 * record cannot be written: said once, the run stops, the status is 255. */
static void output_lost(run_state *st, const run_task *t, int err)
{
    if (st->data_lost)
        return;
    st->data_lost = 1;
    say(st, "run: task %lu: cannot hold its output: %s (past %d KiB it goes to a file in "
        "$TMPDIR); stopping", t->seq, strerror(-err), RUNOUT_MEM / 1024);
    sf_pool_cancel(st->pool);
}

/* --line-buffer: pass on every whole line now, keep the unfinished one
 * (up to RUNOUT_MEM: a longer one goes out as it is). */
static void line_output(run_state *st, run_task *t, int s, const char *buf, size_t n)
{
    const char *last = NULL;
    runout_writer w;

    for (size_t i = n; i-- > 0;)
        if (buf[i] == '\n') {
            last = buf + i;
            break;
        }
    runout_writer_init(&w, s + 1, st->tag ? t->tag : NULL, t->taglen);
    w.bol = t->bol[s];
    if (last || t->plen[s] + n > RUNOUT_MEM) {
        size_t k = last ? (size_t)(last - buf) + 1 : n;
        progress_clear(st);
        if (t->plen[s])
            runout_write(&w, t->partial[s], t->plen[s]);
        runout_write(&w, buf, k);
        t->plen[s] = 0;
        buf += k;
        n -= k;
    }
    if (runout_flush(&w) < 0)
        output_failed(st, s + 1, w.err);
    t->bol[s] = w.bol;
    if (n) {
        if (!t->partial[s] && !(t->partial[s] = malloc(RUNOUT_MEM))) {
            output_lost(st, t, -ENOMEM);
            return;
        }
        memcpy(t->partial[s] + t->plen[s], buf, n);
        t->plen[s] += n;
    }
}

/* ------------------------------------------------------------ the pool's callbacks */

static char **build_argv(unsigned long seq, unsigned slot, void *data, void *cmd_arg)
{
    run_state *st = cmd_arg;
    run_task *t = data;
    char **words, *script, **argv;
    size_t n = 0, len = 0;
    (void)seq; /* the pool's; {#} is the input's */

    words = runargs_expand(st->cmd, st->ncmd, (const char *const *)t->args, t->nargs, t->seq,
                           slot, st->shell ? RUNARGS_QUOTE : 0);
    if (!words || !st->shell)
        return words;
    /* --shell: the words are one script for sh -c. */
    for (n = 0; words[n]; n++)
        len += strlen(words[n]) + 1;
    argv = malloc(4 * sizeof *argv + sizeof "/bin/sh" + sizeof "-c" + len + 1);
    if (!argv) {
        free(words);
        return NULL;
    }
    script = (char *)(argv + 4);
    memcpy(script, "/bin/sh", sizeof "/bin/sh");
    argv[0] = script;
    script += sizeof "/bin/sh";
    memcpy(script, "-c", sizeof "-c");
    argv[1] = script;
    script += sizeof "-c";
    argv[2] = script;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(words[i]);
        if (i)
            *script++ = ' ';
        memcpy(script, words[i], l);
        script += l;
    }
    *script = '\0';
    argv[3] = NULL;
    free(words);
    return argv;
}

static void on_start(sf_pool *p, const sf_task_info *i, void *arg)
{
    run_task *t = i->data;
    (void)p;
    (void)arg;
    /* A retry: what the failed attempt wrote is dropped. */
    for (int s = 0; s < 2; s++) {
        runout_reset(&t->out[s]);
        t->plen[s] = 0;
        t->bol[s] = 1;
    }
}

static void on_output(sf_pool *p, const sf_task_info *i, int stream, const char *buf,
                      size_t n, void *arg)
{
    run_state *st = arg;
    run_task *t = i->data;
    int rc;
    (void)p;

    if (st->line_buffer) {
        line_output(st, t, stream - 1, buf, n);
        return;
    }
    if ((rc = runout_add(&t->out[stream - 1], buf, n)) < 0)
        output_lost(st, t, rc);
}

/*
 * A task's record could not be written (a full disk, /dev/full): the run
 * has failed. A task that ends from now on could not be recorded either,
 * and one that ran unrecorded runs again on --resume, so the run stops as
 * on a closed stdout: nothing more starts, the running are stopped, and
 * the exit status says so. One message per file; nothing more is written
 * to it (the other one goes on recording what ends).
 */
static void record_failed(run_state *st, int *fd, const char *path, int err)
{
    close(*fd);
    *fd = -1;
    st->data_lost = st->record_failed = 1;
    say(st, "run: cannot write to %s: %s; stopping", path, strerror(-err));
    sf_pool_cancel(st->pool);
}

/*
 * Whether a task that ended goes into the records. A task in the joblog
 * never runs again on --resume, so only one that really ended does: not
 * one that never ran; not, once a record could not be written, any more
 * (it would be in one file and not the other); and not one the run itself
 * stopped, after a lost output or a closed stdout, or whose retry it
 * dropped (no pid: it was waiting for it): these did not finish and run
 * again on --resume. A stop signal or --halt ends tasks as the user asked:
 * recorded as they ended, as GNU parallel does.
 */
static int recordable(const run_state *st, const sf_task_report *r)
{
    int stopped_self = (st->data_lost || st->write_error) && !stop_signal;

    if (r->state == SF_TASK_CANCELLED || st->record_failed)
        return 0;
    return !(stopped_self && (r->killed || (!r->pid && !r->spawn_error)));
}

/*
 * The results line first, then the joblog entry: the joblog is what
 * --resume trusts, so it gets an entry only once the results line is in.
 * If the joblog entry then fails, the results line is taken out again
 * (where the file can be cut), so the task, which runs again on --resume,
 * ends with one line in each.
 */
static void record(run_state *st, const runlog_entry *e)
{
    off_t at = -1;
    int rc;

    if (st->results_fd >= 0 && (rc = runlog_results_write(st->results_fd, e, &at)) < 0) {
        record_failed(st, &st->results_fd, st->results_path, rc);
        return;
    }
    if (st->joblog_fd >= 0 && (rc = runlog_joblog_write(st->joblog_fd, e)) < 0) {
        if (st->results_fd >= 0)
            runlog_undo(st->results_fd, at);
        record_failed(st, &st->joblog_fd, st->joblog_path, rc);
    }
}

/* "echo hi" as one word is no program: the pool has said it cannot run
 * it; say once what was meant. */
static void hint_shell(run_state *st, const sf_task_report *r)
{
    char name[512];

    if (st->shell || st->shell_hinted || r->spawn_error != ENOENT || !r->argv || !r->argv[0] ||
        !strpbrk(r->argv[0], " \t|;&<>$`"))
        return;
    st->shell_hinted = 1;
    /* The name may be input data: escaped as every log line of a task is. */
    sf_text_clean(name, sizeof name, r->argv[0], strlen(r->argv[0]), "?");
    say(st, "run: hint: no program is named '%s': to run COMMAND as a shell command line, "
        "use --shell", name);
}

static void on_done(sf_pool *p, const sf_task_report *r, void *arg)
{
    run_state *st = arg;
    run_task *t = r->data;
    runlog_entry e = {t->seq, r};
    (void)p;

    hint_shell(st, r);
    if (recordable(st, r))
        record(st, &e);
    if (st->keep_order) {
        t->finished = 1;
        keep_order_flush(st);
        return;
    }
    task_emit(st, t);
    task_free(t);
}

static void on_tick(sf_pool *p, void *arg)
{
    (void)p;
    progress_draw(arg);
}

/* ------------------------------------------------------------ input */

static run_task *task_new(run_state *st)
{
    run_task *t = calloc(1, sizeof *t);

    if (!t)
        return NULL;
    t->seq = st->next_seq;
    for (int s = 0; s < 2; s++) {
        runout_init(&t->out[s]);
        t->bol[s] = 1;
    }
    return t;
}

static int task_tag(run_task *t)
{
    size_t len = 0;
    char *p;

    for (size_t i = 0; i < t->nargs; i++)
        len += strlen(t->args[i]) + 1;
    t->tag = malloc(len + 1);
    if (!t->tag)
        return -ENOMEM;
    p = t->tag;
    for (size_t i = 0; i < t->nargs; i++) {
        size_t l = strlen(t->args[i]);
        memcpy(p, t->args[i], l);
        p += l;
        *p++ = i + 1 < t->nargs ? ' ' : '\t';
    }
    if (!t->nargs)
        *p++ = '\t';
    *p = '\0';
    t->taglen = (size_t)(p - t->tag);
    return 0;
}

/* Hands the next input to the pool, or skips it (resumed). 0, or -errno. */
static int submit(run_state *st, run_task *t)
{
    int rc;

    st->next_seq++;
    if (st->resume && runlog_has(&st->done, t->seq)) {
        st->skipped++;
        if (st->keep_order) {
            st->ring[(t->seq - 1) % st->window] = SKIPPED;
            keep_order_flush(st);
        }
        task_free(t);
        return 0;
    }
    if (st->tag && task_tag(t) < 0) {
        task_free(t);
        return -ENOMEM;
    }
    if (st->keep_order)
        st->ring[(t->seq - 1) % st->window] = t;
    /* The pool numbers tasks as they come; after skipped ones, tell it the
     * input's number, which the task sees as SOCKFORK_TASK. */
    if (st->skipped && (rc = sf_pool_set_next_seq(st->pool, t->seq)) < 0) {
        task_free(t);
        return rc;
    }
    rc = sf_pool_submit_cmd(st->pool, build_argv, st, t, NULL);
    if (rc < 0) {
        if (st->keep_order)
            st->ring[(t->seq - 1) % st->window] = NULL;
        task_free(t);
        return rc;
    }
    return 0;
}

/* --keep-order holds finished output until the tasks before it are out;
 * the window bounds how far ahead it may run. */
static int window_full(const run_state *st)
{
    return st->keep_order && st->next_seq >= st->next_print + st->window;
}

static int feed_groups(run_state *st)
{
    unsigned jobs = sf_pool_jobs(st->pool);

    for (unsigned k = 0; k < jobs && st->groups_left; k++) {
        run_task *t;
        int rc;
        if (window_full(st))
            return SF_FEED_WAIT;
        if (!(t = task_new(st)) || !(t->args = malloc(st->ngroups * sizeof *t->args))) {
            task_free(t);
            return -ENOMEM;
        }
        t->nargs = st->ngroups;
        for (size_t g = 0; g < st->ngroups; g++)
            t->args[g] = st->groups[g][st->gidx[g]];
        st->groups_left = runargs_next(st->gidx, st->gsize, st->ngroups);
        if ((rc = submit(st, t)) < 0)
            return rc;
    }
    return st->groups_left ? SF_FEED_MORE : SF_FEED_END;
}

/* One line (without its LF) becomes a task. */
static int line_task(run_state *st, const char *s, size_t n)
{
    run_task *t;

    st->lineno++;
    if (memchr(s, '\0', n)) {
        say(st, "run: input line %lu holds a NUL byte: input stopped there", st->lineno);
        return -EINVAL;
    }
    t = task_new(st);
    if (!t || !(t->args = malloc(sizeof *t->args)) || !(t->line = malloc(n + 1))) {
        task_free(t);
        return -ENOMEM;
    }
    memcpy(t->line, s, n);
    t->line[n] = '\0';
    t->args[0] = t->line;
    t->nargs = 1;
    return submit(st, t);
}

static int feed_lines(run_state *st)
{
    unsigned jobs = sf_pool_jobs(st->pool);
    unsigned made = 0;
    size_t off = 0;
    int rc = 0;

    for (;;) {
        char *nl = memchr(st->inbuf + off, '\n', st->inlen - off);
        if (!nl || made >= jobs || window_full(st))
            break;
        if ((rc = line_task(st, st->inbuf + off, (size_t)(nl - (st->inbuf + off)))) < 0)
            break;
        made++;
        off = (size_t)(nl - st->inbuf) + 1;
    }
    memmove(st->inbuf, st->inbuf + off, st->inlen - off);
    st->inlen -= off;
    if (rc < 0)
        return rc;
    if (window_full(st))
        return SF_FEED_WAIT;
    if (memchr(st->inbuf, '\n', st->inlen))
        return SF_FEED_READY; /* lines at hand: no need to wait for stdin */
    if (made)
        return SF_FEED_MORE;
    if (st->in_eof) {
        if (st->inlen && (rc = line_task(st, st->inbuf, st->inlen)) < 0)
            return rc;
        st->inlen = 0;
        return SF_FEED_END;
    }
    if (st->inlen > LINE_MAX_BYTES) {
        say(st, "run: input line %lu is longer than %d bytes: input stopped there",
            st->lineno + 1, LINE_MAX_BYTES);
        return -EMSGSIZE;
    }
    /* One read: the pool only calls when the descriptor is readable. */
    for (;;) {
        ssize_t k = read(st->in_fd, st->inbuf + st->inlen, LINE_MAX_BYTES + 65536 - st->inlen);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            say(st, "run: reading %s: %s", st->arg_file ? st->arg_file : "stdin",
                strerror(errno));
            return -errno;
        }
        if (k == 0)
            st->in_eof = 1;
        st->inlen += (size_t)k;
        break;
    }
    /* What was read is handed over at once, not when stdin is readable
     * again (a pipe may stay silent for long after these lines). */
    return st->in_eof || memchr(st->inbuf, '\n', st->inlen) ? SF_FEED_READY : SF_FEED_MORE;
}

static int feed(sf_pool *p, void *arg)
{
    run_state *st = arg;
    int rc;
    (void)p;

    if (st->input_error)
        return SF_FEED_END;
    rc = st->ngroups ? feed_groups(st) : feed_lines(st);
    if (rc < 0) {
        if (rc == -ENOMEM)
            say(st, "run: out of memory reading the input");
        st->input_error = 1;
        return SF_FEED_END;
    }
    if (rc == SF_FEED_END && !st->total)
        st->total = st->next_seq - 1;
    return rc;
}

/* ------------------------------------------------------------ options */

static int usage_error(const char *fmt, const char *what)
{
    char msg[512];
    snprintf(msg, sizeof msg, fmt, what);
    cli_error("run: %s (try 'sockfork run --help')", msg);
    return -1;
}

static int signal_by_name(const char *s)
{
    for (int sig = 1; sig < 65; sig++) {
        const char *n = sf_signal_name(sig);
        if (n && (strcmp(s, n) == 0 || strcmp(s, n + 3) == 0))
            return sig;
    }
    return -1;
}

static int parse_retry_on(run_state *st, const char *list)
{
    char buf[1024], *save = NULL, *item;

    if (strlen(list) >= sizeof buf || !*list)
        return usage_error("--retry-on: '%s' is not a list of codes, signals, timeout", list);
    strcpy(buf, list);
    for (item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        unsigned code;
        int sig;
        if (strcmp(item, "timeout") == 0) {
            st->po.retry_timeout = 1;
        } else if (cli_parse_uint(item, 255, &code) == 0 && code > 0) {
            if (st->po.nretry_codes == RETRY_ON_MAX)
                return usage_error("--retry-on: more than 64 codes in '%s'", list);
            st->retry_codes[st->po.nretry_codes++] = (int)code;
        } else if ((sig = signal_by_name(item)) > 0) {
            if (st->po.nretry_signals == RETRY_ON_MAX)
                return usage_error("--retry-on: more than 64 signals in '%s'", list);
            st->retry_signals[st->po.nretry_signals++] = sig;
        } else {
            return usage_error("--retry-on: '%s' is not an exit code 1-255, a signal name or "
                               "'timeout'", item);
        }
    }
    st->po.retry_codes = st->retry_codes;
    st->po.retry_signals = st->retry_signals;
    return 0;
}

static int parse_halt(run_state *st, const char *spec)
{
    const char *cond;
    size_t wlen;

    if (strcmp(spec, "never") == 0 || strcmp(spec, "0") == 0) {
        st->po.halt = SF_HALT_NEVER;
        return 0;
    }
    if (strcmp(spec, "1") == 0 || strcmp(spec, "2") == 0) { /* parallel's old forms */
        st->po.halt = spec[0] == '1' ? SF_HALT_SOON : SF_HALT_NOW;
        st->po.halt_fail = 1;
        return 0;
    }
    cond = strchr(spec, ',');
    wlen = cond ? (size_t)(cond - spec) : strlen(spec);
    if (wlen == 3 && strncmp(spec, "now", 3) == 0)
        st->po.halt = SF_HALT_NOW;
    else if (wlen == 4 && strncmp(spec, "soon", 4) == 0)
        st->po.halt = SF_HALT_SOON;
    else
        return usage_error("--halt: '%s' is not never, now[,fail=N|P%%] or soon[,...]", spec);
    st->po.halt_fail = 1;
    if (!cond)
        return 0;
    cond++;
    if (strncmp(cond, "fail=", 5) != 0)
        return usage_error("--halt: '%s': the condition is fail=N or fail=P%%", spec);
    cond += 5;
    if (*cond && cond[strlen(cond) - 1] == '%') {
        char num[32];
        double pct;
        char *end;
        size_t n = strlen(cond) - 1;
        if (n == 0 || n >= sizeof num)
            return usage_error("--halt: '%s': fail=P%% needs a percentage", spec);
        memcpy(num, cond, n);
        num[n] = '\0';
        pct = strtod(num, &end);
        if (*end || !(pct > 0 && pct <= 100))
            return usage_error("--halt: '%s': the percentage is over 0, at most 100", spec);
        st->po.halt_fail = 0;
        st->po.halt_fail_pct = pct;
        return 0;
    }
    if (cli_parse_uint(cond, 1000000000, &st->po.halt_fail) < 0 || st->po.halt_fail == 0)
        return usage_error("--halt: '%s': fail=N needs a count of 1 or more", spec);
    return 0;
}

/* One handler per option: v is its value (NULL, or to be ignored, for an
 * option that takes none). 0, -1 after saying what is wrong, or 1: done
 * (--help, --version), exit 0. */
static int opt_jobs(run_state *st, const char *v)
{
    if (cli_parse_uint(v, 65536, &st->po.jobs) < 0 || st->po.jobs == 0)
        return usage_error("-j: '%s' is not a number of tasks from 1 to 65536", v);
    st->jobs_given = 1;
    return 0;
}

static int opt_arg_file(run_state *st, const char *v)
{
    st->arg_file = v;
    return 0;
}

static int opt_shell(run_state *st, const char *v)
{
    (void)v;
    st->shell = 1;
    return 0;
}

static int opt_timeout(run_state *st, const char *v)
{
    if (cli_parse_seconds(v, &st->po.timeout_s) < 0 || st->po.timeout_s <= 0)
        return usage_error("--timeout: '%s' is not a duration over 0 (e.g. 1.5, 300ms, 2m)", v);
    return 0;
}

static int opt_kill_grace(run_state *st, const char *v)
{
    if (cli_parse_seconds(v, &st->po.kill_grace_s) < 0)
        return usage_error("--kill-grace: '%s' is not a duration", v);
    return 0;
}

static int opt_retries(run_state *st, const char *v)
{
    if (cli_parse_uint(v, 1000000, &st->po.retries) < 0)
        return usage_error("--retries: '%s' is not a count", v);
    return 0;
}

static int opt_keep_order(run_state *st, const char *v)
{
    (void)v;
    st->keep_order = 1;
    return 0;
}

static int opt_line_buffer(run_state *st, const char *v)
{
    (void)v;
    st->line_buffer = 1;
    return 0;
}

static int opt_tag(run_state *st, const char *v)
{
    (void)v;
    st->tag = 1;
    return 0;
}

static int opt_max_output(run_state *st, const char *v)
{
    if (cli_parse_bytes(v, 1ULL << 50, &st->max_output) < 0 || st->max_output == 0)
        return usage_error("--max-output: '%s' is not a size from 1 to 1024T (e.g. 500M)", v);
    return 0;
}

static int opt_results(run_state *st, const char *v)
{
    st->results_path = v;
    return 0;
}

static int opt_joblog(run_state *st, const char *v)
{
    st->joblog_path = v;
    return 0;
}

static int opt_resume(run_state *st, const char *v)
{
    (void)v;
    st->resume = 1;
    return 0;
}

static int opt_resume_failed(run_state *st, const char *v)
{
    (void)v;
    st->resume = st->resume_failed = 1;
    return 0;
}

static int opt_progress(run_state *st, const char *v)
{
    (void)v;
    st->progress = 1;
    return 0;
}

static int opt_no_progress(run_state *st, const char *v)
{
    (void)v;
    st->progress = 0;
    return 0;
}

static int opt_log_format(run_state *st, const char *v)
{
    (void)st;
    if (logsink_parse_format(v, &cli_sink.format) < 0)
        return usage_error("--log-format is text or json, not '%s'", v);
    return 0;
}

static int opt_log_file(run_state *st, const char *v)
{
    (void)st;
    if (!*v)
        return usage_error("%s", "--log-file wants a path");
    cli_sink.path = v;
    return 0;
}

/* The syntax is checked here, so that what sf_pool_new then says is about
 * binding (a port taken, a path not writable). */
static int opt_metrics(run_state *st, const char *v)
{
    sf_addr a;
    int rc = sf_addr_parse(&a, v);

    if (rc == -ENOENT)
        return usage_error("--metrics: '%s': host not found", v);
    if (rc < 0)
        return usage_error("--metrics: '%s' is not HOST:PORT, [V6]:PORT or unix:PATH", v);
    st->po.metrics_addr = v;
    return 0;
}

/* The URL's syntax is the library's to check: sf_pool_new says -EINVAL. */
static int opt_queue(run_state *st, const char *v)
{
    if (!*v)
        return usage_error("%s", "--queue wants a URL: redis://HOST[:PORT]/[DB/]NAME");
    st->po.queue_url = v;
    st->po.queue_role = 1;
    return 0;
}

static int opt_lease(run_state *st, const char *v)
{
    if (cli_parse_seconds(v, &st->po.queue_lease_s) < 0 || st->po.queue_lease_s < 0.1 ||
        st->po.queue_lease_s > 86400)
        return usage_error("--lease: '%s' is not a duration from 0.1s to 24h", v);
    return 0;
}

static int opt_quiet(run_state *st, const char *v)
{
    (void)v;
    st->quiet = 1;
    return 0;
}

static int opt_help(run_state *st, const char *v);

static int opt_version(run_state *st, const char *v)
{
    (void)st;
    (void)v;
    printf("sockfork %s\n", sf_version());
    return 1;
}

#define OPT_VALUE 1    /* takes a value: the next word, or --name=VALUE */
#define OPT_ATTACHED 2 /* the short form may carry it too: -j4 */

/* run's options, in the order --help lists them; an alias has no help. */
typedef struct run_option {
    const char *name;  /* the long form, without "--" */
    char short_name;   /* or 0 */
    int flags;         /* OPT_* */
    int (*set)(run_state *st, const char *v);
    const char *arg;   /* the value's name in --help */
    const char *help;  /* its lines in --help, or NULL: not listed */
} run_option;

static const run_option run_options[] = {
    {"jobs", 'j', OPT_VALUE | OPT_ATTACHED, opt_jobs, "N",
     "tasks at once (default: the number of CPUs)"},
    {"arg-file", 'a', OPT_VALUE, opt_arg_file, "FILE", "arguments from FILE, one per line"},
    {"shell", 0, 0, opt_shell, NULL,
     "run COMMAND ARGS... as one sh -c line; the arguments\n"
     "put in are quoted where the shell needs it, as GNU\n"
     "parallel quotes them"},
    {"timeout", 0, OPT_VALUE, opt_timeout, "D",
     "per attempt (seconds; ms, s, m, h suffixes): SIGTERM to\n"
     "the task's process group, SIGKILL after --kill-grace"},
    {"kill-grace", 0, OPT_VALUE, opt_kill_grace, "D", "from SIGTERM to SIGKILL (default 2s)"},
    {"retries", 0, OPT_VALUE, opt_retries, "N",
     "retry a failed task up to N times (not one whose\n"
     "command cannot start: not found, not executable)"},
    {"retry-on", 0, OPT_VALUE, parse_retry_on, "LIST",
     "only for these: exit codes, signal names, 'timeout'\n"
     "(e.g. 1,3,SIGKILL,timeout)"},
    {"halt", 0, OPT_VALUE, parse_halt, "SPEC",
     "never | now|soon[,fail=N|fail=P%] (now: stop the running)"},
    {"halt-on-error", 0, OPT_VALUE, parse_halt, NULL, NULL},
    {"keep-order", 'k', 0, opt_keep_order, NULL, "output in input order"},
    {"line-buffer", 0, 0, opt_line_buffer, NULL, "pass output on line by line as it comes"},
    {"lb", 0, 0, opt_line_buffer, NULL, NULL},
    {"tag", 0, 0, opt_tag, NULL, "prefix output lines with the arguments and a tab"},
    {"max-output", 0, OPT_VALUE, opt_max_output, "SIZE",
     "a task's output, stdout and stderr together (K, M, G, T\n"
     "suffixes; default 1G while grouping, none with\n"
     "--line-buffer): past it the task is stopped as on a\n"
     "timeout and fails; what fit is written"},
    {"results", 0, OPT_VALUE, opt_results, "FILE", "one JSON object per finished task"},
    {"joblog", 0, OPT_VALUE, opt_joblog, "FILE", "GNU parallel's joblog"},
    {"resume", 0, 0, opt_resume, NULL, "skip the tasks the joblog has"},
    {"resume-failed", 0, 0, opt_resume_failed, NULL, "skip the tasks the joblog has as succeeded"},
    {"progress", 0, 0, opt_progress, NULL,
     "live progress on stderr (default: when it is a terminal)"},
    {"no-progress", 0, 0, opt_no_progress, NULL, "none"},
    {"metrics", 0, OPT_VALUE, opt_metrics, "ADDR",
     "serve Prometheus metrics over HTTP at ADDR (HOST:PORT,\n"
     "[V6]:PORT or unix:PATH) while the tasks run: GET\n"
     "/metrics, the task counts of the summary and more"},
    {"queue", 0, OPT_VALUE, opt_queue, "URL",
     "put the tasks in the Redis queue at URL\n"
     "(redis://HOST[:PORT]/[DB/]NAME) for `sockfork worker`s\n"
     "to run, and record what they report"},
    {"lease", 0, OPT_VALUE, opt_lease, "D",
     "with --queue: a worker silent this long loses its\n"
     "tasks to another (default 30s)"},
    {"quiet", 'q', 0, opt_quiet, NULL, "no summary at the end"},
    {"log-format", 0, OPT_VALUE, opt_log_format, "FORMAT",
     "text (the default) or json: one JSON object a line"},
    {"log-file", 0, OPT_VALUE, opt_log_file, "PATH",
     "append the log and the summary to PATH, not stderr"},
    {"help", 'h', 0, opt_help, NULL, "this help"},
    {"version", 'V', 0, opt_version, NULL, "print the version"},
};

#define NRUN_OPTIONS (sizeof run_options / sizeof run_options[0])
#define HELP_COLUMN 24

static int opt_help(run_state *st, const char *v)
{
    (void)st;
    (void)v;
    fputs(run_usage_head, stdout);
    for (size_t i = 0; i < NRUN_OPTIONS; i++) {
        const run_option *o = &run_options[i];
        char left[64];

        if (!o->help)
            continue;
        snprintf(left, sizeof left, "%c%c%c --%s%s%s", o->short_name ? '-' : ' ',
                 o->short_name ? o->short_name : ' ', o->short_name ? ',' : ' ', o->name,
                 o->arg ? " " : "", o->arg ? o->arg : "");
        printf("  %-*s", HELP_COLUMN - 2, left);
        if (strlen(left) >= HELP_COLUMN - 2) /* no room for a space: the help below */
            printf("\n%*s", HELP_COLUMN, "");
        for (const char *p = o->help; *p; p++) {
            putchar(*p);
            if (*p == '\n')
                printf("%*s", HELP_COLUMN, "");
        }
        putchar('\n');
    }
    fputs(run_usage_tail, stdout);
    return 1;
}

/* The option a word spells out in full, or NULL: "--name" or
 * "--name=VALUE", "-x", or "-xVALUE" for an OPT_ATTACHED one. */
static const run_option *option_spelled(const char *word)
{
    for (size_t i = 0; i < NRUN_OPTIONS; i++) {
        const run_option *o = &run_options[i];
        size_t n = strlen(o->name);

        if (word[1] == '-' && strncmp(word + 2, o->name, n) == 0 &&
            (word[2 + n] == '\0' || word[2 + n] == '='))
            return o;
        if (word[1] != '-' && o->short_name && word[1] == o->short_name &&
            (word[2] == '\0' || (o->flags & OPT_ATTACHED)))
            return o;
    }
    return NULL;
}

/* getopt_long's tables, made from run_options. */
static void getopt_tables(struct option *longs, char *shorts)
{
    char *s = shorts;

    *s++ = '+'; /* stop at COMMAND: what follows it is its own */
    *s++ = ':'; /* a missing value returns ':', not '?' */
    for (size_t i = 0; i < NRUN_OPTIONS; i++) {
        const run_option *o = &run_options[i];

        longs[i].name = o->name;
        longs[i].has_arg = o->flags & OPT_VALUE ? required_argument : no_argument;
        longs[i].flag = NULL;
        longs[i].val = 256 + (int)i;
        if (o->short_name) {
            *s++ = o->short_name;
            if (o->flags & OPT_VALUE)
                *s++ = ':';
        }
    }
    memset(&longs[NRUN_OPTIONS], 0, sizeof longs[NRUN_OPTIONS]);
    *s = '\0';
}

static const run_option *option_of(int c)
{
    if (c >= 256 && c < 256 + (int)NRUN_OPTIONS)
        return &run_options[c - 256];
    for (size_t i = 0; i < NRUN_OPTIONS; i++)
        if (run_options[i].short_name == c)
            return &run_options[i];
    return NULL;
}

/*
 * The options before COMMAND, each one word spelled out in full as GNU
 * parallel's users write them: getopt_long alone would also take bundles
 * (-kq), abbreviations (--kee) and -aFILE, which run never did, so every
 * word is checked before getopt_long reads it. 0: COMMAND is at optind;
 * 1: done (--help, --version); -1 after saying what is wrong.
 */
static int parse_options(run_state *st, int argc, char **argv)
{
    struct option longs[NRUN_OPTIONS + 1];
    char shorts[3 + 2 * NRUN_OPTIONS];
    const run_option *o;
    int c, rc;

    getopt_tables(longs, shorts);
    opterr = 0;
    optind = 1;
    for (;;) {
        const char *word = optind < argc ? argv[optind] : "";

        if (word[0] == '-' && word[1] && strcmp(word, "--") != 0) {
            if (!(o = option_spelled(word)))
                return usage_error("unknown option '%s'", word);
            /* "--shell=no" must not quietly mean --shell. */
            if (!(o->flags & OPT_VALUE) && word[1] == '-' && strchr(word, '=')) {
                char what[300];
                snprintf(what, sizeof what, "--%s takes no value: '%.*s'", o->name, 256, word);
                return usage_error("%s", what);
            }
        }
        c = getopt_long(argc, argv, shorts, longs, NULL);
        if (c == -1)
            return 0;
        if (c == ':')
            return usage_error("%s needs a value", word);
        if (!(o = option_of(c)))
            return usage_error("unknown option '%s'", word);
        if ((rc = o->set(st, optarg)) != 0)
            return rc;
    }
}

/* COMMAND [ARGS...] up to the first :::, then the groups. 0, or -1 after
 * saying what is wrong. */
static int parse_command(run_state *st, int argc, char **argv, int i)
{
    st->cmd = argv + i;
    while (i < argc && strcmp(argv[i], ":::") != 0 && strcmp(argv[i], "::::") != 0)
        i++;
    st->ncmd = (size_t)(argv + i - st->cmd);
    if (st->ncmd == 0)
        return usage_error("%s", "no COMMAND given");
    if (i < argc) {
        size_t max = (size_t)(argc - i);
        st->groups = calloc(max, sizeof *st->groups);
        st->gsize = calloc(max, sizeof *st->gsize);
        st->gidx = calloc(max, sizeof *st->gidx);
        if (!st->groups || !st->gsize || !st->gidx)
            return usage_error("%s", "out of memory");
    }
    while (i < argc) {
        if (strcmp(argv[i], "::::") == 0)
            return usage_error("%s", ":::: (arguments from files) is not supported: use "
                                     "--arg-file");
        i++;
        st->groups[st->ngroups] = argv + i;
        while (i < argc && strcmp(argv[i], ":::") != 0 && strcmp(argv[i], "::::") != 0)
            i++;
        st->gsize[st->ngroups] = (size_t)(argv + i - st->groups[st->ngroups]);
        if (st->gsize[st->ngroups] == 0)
            return usage_error("%s", "a ::: group with no arguments");
        st->ngroups++;
    }
    return 0;
}

/* A replacement string naming a group that is not there ({3} with two
 * groups) is a usage error now, not one failure per task. */
static int check_replacements(const run_state *st)
{
    const char *probe[64] = {0};
    size_t n = st->ngroups ? st->ngroups : 1;
    char **w;

    if (n > 64)
        n = 64;
    for (size_t g = 0; g < n; g++)
        probe[g] = "x";
    w = runargs_expand(st->cmd, st->ncmd, probe, n, 1, 1, 0);
    if (!w && errno == EINVAL)
        return usage_error("%s", "a replacement string names a ::: group that is not there");
    free(w);
    return 0;
}

/* What cannot go together. 0, or -1 after saying why. */
static int check_combinations(const run_state *st)
{
    if (st->ngroups && st->arg_file)
        return usage_error("%s", "--arg-file and ::: cannot be used together");
    if (st->resume && !st->joblog_path)
        return usage_error("%s", "--resume and --resume-failed need --joblog FILE");
    if (st->line_buffer && st->keep_order)
        return usage_error("%s", "--line-buffer and --keep-order together are not supported");
    if (st->po.queue_lease_s > 0 && !st->po.queue_url)
        return usage_error("%s", "--lease is for --queue");
    if (st->po.queue_url && st->jobs_given)
        return usage_error("%s", "--queue runs nothing here: start a `sockfork worker -j N` "
                                 "instead of -j");
    if (st->po.queue_url && st->po.metrics_addr)
        return usage_error("%s", "--queue and --metrics together are not supported");
    for (size_t i = 0; st->po.queue_url && i < st->ncmd; i++)
        if (strstr(st->cmd[i], "{%}"))
            return usage_error("%s", "{%} (the job slot) is the worker's: not with --queue");
    return 0;
}

/* 0: run; 1: done (--help, --version); -1 after saying what is wrong. */
static int parse_args(run_state *st, int argc, char **argv)
{
    int rc = parse_options(st, argc, argv);

    if (rc != 0)
        return rc;
    if (parse_command(st, argc, argv, optind) < 0 || check_combinations(st) < 0)
        return -1;
    return check_replacements(st);
}

/* ------------------------------------------------------------ main */

/* Whether a and b are one regular file (by device and inode: a symlink or
 * another name for it is the same). Two names for /dev/null are not. */
static int same_file(int a, int b)
{
    struct stat sa, sb;

    if (a < 0 || b < 0 || fstat(a, &sa) < 0 || fstat(b, &sb) < 0)
        return 0;
    return S_ISREG(sa.st_mode) && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* Refuses a record file that is the input or the other record file: it
 * would be emptied before it is read, or get two kinds of lines. Checked
 * on the open descriptors, before either is emptied. 0, or -1 after
 * saying why. */
static int check_distinct(const run_state *st)
{
    const char *input = st->arg_file ? st->arg_file : "stdin";
    const char *what = st->arg_file ? "--arg-file" : "the file on";

    if (same_file(st->joblog_fd, st->results_fd)) {
        cli_error("run: --joblog %s and --results %s are the same file", st->joblog_path,
                  st->results_path);
        return -1;
    }
    if (same_file(st->joblog_fd, st->in_fd)) {
        cli_error("run: --joblog %s is %s %s: it would be emptied before it is read",
                  st->joblog_path, what, input);
        return -1;
    }
    if (same_file(st->results_fd, st->in_fd)) {
        cli_error("run: --results %s is %s %s: it would be emptied before it is read",
                  st->results_path, what, input);
        return -1;
    }
    return 0;
}

/* Opens --joblog and --results and makes them ready (emptied, or resumed
 * on a line of their own), after the input is open. 0, or -1 after
 * saying why. */
static int open_records(run_state *st)
{
    int rc;

    if (st->joblog_path) {
        if ((rc = runlog_open(st->joblog_path)) < 0)
            goto joblog_fail;
        st->joblog_fd = rc;
    }
    if (st->results_path) {
        if ((rc = runlog_open(st->results_path)) < 0)
            goto results_fail;
        st->results_fd = rc;
    }
    if (check_distinct(st) < 0)
        return -1;
    if (st->joblog_fd >= 0 &&
        (rc = runlog_joblog_begin(st->joblog_fd, st->resume ? &st->done : NULL)) < 0)
        goto joblog_fail;
    if (st->results_fd >= 0 && (rc = runlog_results_begin(st->results_fd, st->resume)) < 0)
        goto results_fail;
    return 0;

joblog_fail:
    cli_error("run: cannot write to %s: %s", st->joblog_path, strerror(-rc));
    return -1;
results_fail:
    cli_error("run: cannot write to %s: %s", st->results_path, strerror(-rc));
    return -1;
}

static void summary(const run_state *st, const sf_pool_stats *s, double el)
{
    char line[512];
    int n;

    n = snprintf(line, sizeof line, "run: %lu task%s in %.2f s: %lu succeeded", s->ok + s->failed,
                 s->ok + s->failed == 1 ? "" : "s", el, s->ok);
    if (s->failed_by_code)
        n += snprintf(line + n, sizeof line - (size_t)n, ", %lu failed (exit code)",
                      s->failed_by_code);
    if (s->killed_by_signal)
        n += snprintf(line + n, sizeof line - (size_t)n, ", %lu killed by a signal",
                      s->killed_by_signal);
    if (s->timed_out)
        n += snprintf(line + n, sizeof line - (size_t)n, ", %lu timed out", s->timed_out);
    if (s->output_limited)
        n += snprintf(line + n, sizeof line - (size_t)n, ", %lu stopped for their output",
                      s->output_limited);
    if (s->spawn_errors)
        n += snprintf(line + n, sizeof line - (size_t)n, ", %lu could not start", s->spawn_errors);
    n += snprintf(line + n, sizeof line - (size_t)n, "; %lu retr%s", s->retried,
                  s->retried == 1 ? "y" : "ies");
    /* Not run: with a known input, all it held but what ended or was
     * skipped (a halt leaves ::: combinations never even read); else what
     * the pool had queued, and a word for the input left unread. */
    if (st->total) {
        unsigned long ended = s->ok + s->failed, not_run = st->total - st->skipped - ended;
        if (st->total > st->skipped + ended && not_run)
            n += snprintf(line + n, sizeof line - (size_t)n, "; %lu not run", not_run);
    } else if (s->cancelled || !st->in_eof) {
        n += snprintf(line + n, sizeof line - (size_t)n, "; %lu not run%s", s->cancelled,
                      st->in_eof ? "" : " and the rest of the input not read");
    }
    if (st->skipped)
        n += snprintf(line + n, sizeof line - (size_t)n, "; %lu skipped (resumed)", st->skipped);
    (void)n;
    {
        const sf_log_field f[] = {
            {.key = "tasks", .type = SF_LOG_FIELD_UINT, .v.u = s->ok + s->failed},
            {.key = "succeeded", .type = SF_LOG_FIELD_UINT, .v.u = s->ok},
            {.key = "failed", .type = SF_LOG_FIELD_UINT, .v.u = s->failed},
            {.key = "timed_out", .type = SF_LOG_FIELD_UINT, .v.u = s->timed_out},
            {.key = "killed", .type = SF_LOG_FIELD_UINT, .v.u = s->killed_by_signal},
            {.key = "retried", .type = SF_LOG_FIELD_UINT, .v.u = s->retried},
            {.key = "elapsed_s", .type = SF_LOG_FIELD_DOUBLE, .v.d = el},
        };
        logsink_say(&cli_sink, SF_LOG_NOTICE, "summary", f, sizeof f / sizeof f[0], "%s", line);
    }
}

static void run_state_init(run_state *st)
{
    memset(st, 0, sizeof *st);
    st->progress = -1;
    st->in_fd = -1;
    st->joblog_fd = st->results_fd = -1;
    st->next_seq = 1;
    st->next_print = 1;
    sf_pool_opts_init(&st->po);
}

static void run_state_free(run_state *st)
{
    signal_pool = NULL;
    sf_pool_free(st->pool);
    if (st->ring) {
        for (size_t k = 0; k < st->window; k++)
            task_free(st->ring[k]);
        free(st->ring);
    }
    if (st->joblog_fd >= 0)
        close(st->joblog_fd);
    if (st->results_fd >= 0)
        close(st->results_fd);
    if (st->in_fd > 0)
        close(st->in_fd);
    runlog_done_free(&st->done);
    free(st->inbuf);
    free(st->groups);
    free(st->gsize);
    free(st->gidx);
}

static void setup_process(void)
{
    struct sigaction sa;
    struct rlimit rl;

    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_xfsz;
    sigaction(SIGXFSZ, &sa, NULL);
    /* Grouped output may hold a spill file per task and stream. */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* --resume: the tasks the joblog has. 0, or -1 after saying why. */
static int load_resume(run_state *st)
{
    unsigned long line;
    int rc = runlog_done_load(&st->done, st->joblog_path, st->resume_failed, &line);

    if (rc < 0) {
        if (rc == -EPROTO)
            cli_error("run: %s:%lu: not a joblog line", st->joblog_path, line);
        else
            cli_error("run: reading %s: %s", st->joblog_path, strerror(-rc));
        return -1;
    }
    if (st->done.tail == RUNLOG_TAIL_CUT)
        cli_error("run: %s: its last line is cut short (a crash?): ignored, and its task "
                  "runs again", st->joblog_path);
    return 0;
}

/* The ::: groups' count, or the lines' descriptor and buffer. 0, or -1
 * after saying why. */
static int open_input(run_state *st)
{
    if (st->ngroups) {
        st->groups_left = 1;
        st->total = 1;
        for (size_t g = 0; g < st->ngroups; g++)
            st->total = st->total * st->gsize[g];
        return 0;
    }
    if (st->arg_file) {
        st->in_fd = open(st->arg_file, O_RDONLY | O_CLOEXEC);
        if (st->in_fd < 0) {
            cli_error("run: %s: %s", st->arg_file, strerror(errno));
            return -1;
        }
    } else {
        st->in_fd = 0;
    }
    st->inbuf = malloc(LINE_MAX_BYTES + 65536);
    if (!st->inbuf) {
        cli_error("run: out of memory");
        return -1;
    }
    st->po.feed_fd = st->in_fd;
    return 0;
}

/* "metrics on ADDR", as serve says it (the port 0 resolved). */
static void say_metrics(const sf_addr *a)
{
    char name[SF_ADDR_TEXT_MAX];

    sf_addr_format(a, name, sizeof name);
    const sf_log_field f = {.key = "addr", .type = SF_LOG_FIELD_STR, .v.s = name};
    logsink_say(&cli_sink, SF_LOG_NOTICE, "metrics", &f, 1, "metrics on %s", name);
}

/* The pool, with run's callbacks, and the --keep-order window. 0, or -1
 * after saying why. */
static int pool_start(run_state *st)
{
    int rc;

    st->po.capture_output = 1;
    /* Grouped output is held until the task ends: bounded by default.
     * --line-buffer holds at most a line, so only a limit asked for. */
    st->po.output_max = st->max_output ? st->max_output : st->line_buffer ? 0 : MAX_OUTPUT_DEFAULT;
    if (st->po.queue_url && !st->max_output)
        st->po.output_max = MAX_OUTPUT_QUEUE;
    st->po.feed = feed;
    st->po.on_start = on_start;
    st->po.on_output = on_output;
    st->po.on_done = on_done;
    st->po.on_tick = st->progress ? on_tick : NULL;
    st->po.tick_s = st->progress ? 0.2 : 0;
    st->po.arg = st;
    if (cli_sink.format == LOGSINK_JSON) {
        st->po.log_record = run_record;
        st->po.log_record_arg = st;
    } else {
        st->po.log = run_log;
        st->po.log_arg = st;
    }
    st->po.queue_max = 65536 + 65536;
    if ((rc = sf_pool_new(&st->pool, &st->po)) < 0 && st->po.metrics_addr && rc != -ENOMEM &&
        rc != -EINVAL) {
        cli_error("run: cannot serve metrics on %s: %s", st->po.metrics_addr, strerror(-rc));
        return -1;
    }
    if (rc == -EINVAL && st->po.queue_url) {
        cli_error("run: --queue: '%s' is not a queue URL (redis://HOST[:PORT]/[DB/]NAME or "
                  "unix:PATH?name=NAME)", st->po.queue_url);
        return -1;
    }
    if (rc < 0) {
        cli_error("run: %s", strerror(-rc));
        return -1;
    }
    if (sf_pool_metrics_addr(st->pool))
        say_metrics(sf_pool_metrics_addr(st->pool));
    if (st->keep_order) {
        st->window = 4 * (size_t)sf_pool_jobs(st->pool) + 64;
        st->ring = calloc(st->window, sizeof *st->ring);
        if (!st->ring) {
            cli_error("run: out of memory");
            return -1;
        }
    }
    return 0;
}

/* Everything before the pool runs: 0, or the exit status after saying why. */
static int prepare(run_state *st)
{
    char err[512];

    if (st->progress < 0)
        st->progress = isatty(2);
    setup_process();
    if (logsink_open(&cli_sink, err, sizeof err) < 0) {
        cli_error("run: %s", err);
        return EXIT_RUN_USAGE;
    }
    if (st->resume && load_resume(st) < 0)
        return EXIT_RUN_USAGE;
    if (open_input(st) < 0)
        return EXIT_RUN_USAGE;
    if (open_records(st) < 0)
        return EXIT_RUN_ERROR;
    if (pool_start(st) < 0)
        return EXIT_RUN_USAGE;
    return 0;
}

/* The tasks' groups are their own: a terminal's ^C reaches only us, and
 * we stop them. SIGPIPE is ignored: a closed stdout is an error we handle
 * (stop), not a death that would leave the tasks running. */
static void catch_stop_signals(run_state *st)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_stop_signal;
    signal_pool = st->pool;
    runout_abort_on(&stop_signal);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* The first reason wins: a stop signal, a lost stdout or stderr, a run
 * that failed itself, else the number of tasks that failed. */
static int exit_status(const run_state *st, const sf_pool_stats *s, int pool_rc)
{
    if (stop_signal)
        return 128 + stop_signal;
    if (st->write_error)
        return 128 + SIGPIPE;
    if (st->data_lost || st->input_error || pool_rc < 0)
        return EXIT_RUN_ERROR;
    return s->failed > EXIT_FAILED_MAX ? EXIT_FAILED_MAX : (int)s->failed;
}

/* Runs the pool to its end, says how it went; returns the exit status. */
static int run_pool(run_state *st)
{
    sf_pool_stats s;
    int rc;

    catch_stop_signals(st);
    st->t0 = now_s();
    st->pool_running = 1;
    rc = sf_pool_run(st->pool);
    st->pool_running = 0;
    progress_clear(st);
    sf_pool_get_stats(st->pool, &s);
    /* A queue that cannot be used was said by the pool's log (queue_down):
     * one line, no summary of a run that never began. */
    if (rc < 0 && !st->po.queue_url)
        cli_error("run: the pool failed: %s", strerror(-rc));
    if (!st->quiet && !(rc < 0 && st->po.queue_url))
        summary(st, &s, now_s() - st->t0);
    return exit_status(st, &s, rc);
}

int cmd_run(int argc, char **argv)
{
    run_state st;
    int rc, status;

    run_state_init(&st);
    rc = parse_args(&st, argc, argv);
    if (rc != 0)
        status = rc > 0 ? 0 : EXIT_RUN_USAGE;
    else if ((status = prepare(&st)) == 0)
        status = run_pool(&st);
    run_state_free(&st);
    logsink_close(&cli_sink);
    return status;
}
