/* runlog.c - see runlog.h. */
#include "runlog.h"
#include "runout.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char joblog_header[] =
    "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n";

static int add_seq(runlog_done *d, unsigned long seq)
{
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 256;
        unsigned long *p = realloc(d->seq, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        d->seq = p;
        d->cap = cap;
    }
    d->seq[d->n++] = seq;
    return 0;
}

static int cmp_seq(const void *a, const void *b)
{
    unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;
    return x < y ? -1 : x > y;
}

/* Field i (0-based) of a tab-separated line, as a number; -1 if absent.
 * *next is the byte after it. */
static int field_long(const char *line, int i, long *out, char *next)
{
    char *end;

    for (; i > 0; i--) {
        line = strchr(line, '\t');
        if (!line)
            return -1;
        line++;
    }
    errno = 0;
    *out = strtol(line, &end, 10);
    if (errno || end == line || (*end != '\t' && *end != '\n' && *end != '\0'))
        return -1;
    *next = *end;
    return 0;
}

/* A joblog entry's Seq, Exitval and Signal. A last line without its
 * newline counts only if Signal is whole, that is followed by a tab:
 * "1\t:\t...\t0\t1" may be the start of "0\t15". 0, or -1. */
static int parse_entry(const char *line, int last, long *seq, long *exitval, long *sig)
{
    char next;

    if (field_long(line, 0, seq, &next) < 0 || *seq < 1 ||
        field_long(line, 6, exitval, &next) < 0 || field_long(line, 7, sig, &next) < 0)
        return -1;
    return last && next != '\t' ? -1 : 0;
}

int runlog_done_load(runlog_done *d, const char *path, int failed_only, unsigned long *lineno)
{
    FILE *f = fopen(path, "re");
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0;

    memset(d, 0, sizeof *d);
    *lineno = 0;
    if (!f)
        return errno == ENOENT ? 0 : -errno;
    while ((n = getline(&line, &cap, f)) > 0) {
        long seq, exitval, sig;
        int last = line[n - 1] != '\n'; /* only the last line can lack it */
        ++*lineno;
        if (!last)
            d->whole_end += n;
        else
            d->tail = RUNLOG_TAIL_WHOLE;
        if (*lineno == 1 && strncmp(line, "Seq\t", 4) == 0) {
            if (last) /* a header cut short (or without its newline): written anew */
                d->tail = RUNLOG_TAIL_CUT_HEADER;
            continue;
        }
        if (line[0] == '\n')
            continue;
        if (parse_entry(line, last, &seq, &exitval, &sig) < 0) {
            if (last) { /* cut by a crash: that task runs again */
                d->tail = RUNLOG_TAIL_CUT;
                break;
            }
            rc = -EPROTO;
            goto out;
        }
        if (failed_only && (exitval != 0 || sig != 0))
            continue;
        if ((rc = add_seq(d, (unsigned long)seq)) < 0)
            goto out;
    }
    if (ferror(f))
        rc = -EIO;
    if (d->n) /* qsort takes no NULL, even for none */
        qsort(d->seq, d->n, sizeof *d->seq, cmp_seq);
out:
    free(line);
    fclose(f);
    if (rc < 0)
        runlog_done_free(d);
    return rc;
}

int runlog_has(const runlog_done *d, unsigned long seq)
{
    return d->n && bsearch(&seq, d->seq, d->n, sizeof *d->seq, cmp_seq) != NULL;
}

void runlog_done_free(runlog_done *d)
{
    free(d->seq);
    d->seq = NULL;
    d->n = d->cap = 0;
}

int runlog_open(const char *path)
{
    struct stat sb;
    int fd, rw;

    /* Read access too, where it can be had, to see how a resumed file
     * ends; O_RDWR would not block on a FIFO as O_WRONLY does, so only
     * for a regular file. */
    rw = stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
    fd = open(path, (rw ? O_RDWR : O_WRONLY) | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
    if (fd < 0 && rw && errno == EACCES)
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
    return fd < 0 ? -errno : fd;
}

/* Whether fd is a regular file whose last byte is not a newline. */
static int lacks_newline(int fd)
{
    struct stat sb;
    char c;

    if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode) || sb.st_size == 0)
        return 0;
    /* Unreadable (opened write-only): a newline goes in to be sure; an
     * empty line is skipped by every reader of ours. */
    if (pread(fd, &c, 1, sb.st_size - 1) != 1)
        return 1;
    return c != '\n';
}

/* Empties a regular file; other files (a pipe, /dev/null) are left. */
static int empty_file(int fd)
{
    struct stat sb;

    if (fstat(fd, &sb) < 0)
        return -errno;
    if (S_ISREG(sb.st_mode) && ftruncate(fd, 0) < 0)
        return -errno;
    return 0;
}

/*
 * Appends buf with one write where it can (a regular file takes it whole
 * unless the disk is full). If it fails, what went in is cut off again,
 * so the file ends on a whole line: a reader (or --resume) never meets a
 * half entry, and the next entry does not glue onto one. 0 or -errno.
 */
static int put_entry_at(int fd, const char *buf, size_t n, off_t *where)
{
    off_t at = lseek(fd, 0, SEEK_END); /* -1 on a pipe: nothing to cut */
    int rc = runout_write_all(fd, buf, n);

    if (rc < 0 && at >= 0 && ftruncate(fd, at) < 0) {
        /* /dev/full and the like: nothing was kept anyway. */
    }
    if (where)
        *where = at;
    return rc;
}

static int put_entry(int fd, const char *buf, size_t n)
{
    return put_entry_at(fd, buf, n, NULL);
}

void runlog_undo(int fd, off_t at)
{
    if (at >= 0 && ftruncate(fd, at) < 0) {
        /* Not a file that can be cut: the entry stays. */
    }
}

int runlog_joblog_begin(int fd, const runlog_done *resumed)
{
    struct stat sb;
    int rc;

    if (!resumed)
        rc = empty_file(fd);
    else if (resumed->tail == RUNLOG_TAIL_CUT || resumed->tail == RUNLOG_TAIL_CUT_HEADER)
        rc = ftruncate(fd, resumed->whole_end) < 0 ? -errno : 0;
    else if (lacks_newline(fd))
        rc = put_entry(fd, "\n", 1);
    else
        rc = 0;
    if (rc < 0)
        return rc;
    if (fstat(fd, &sb) < 0)
        return -errno;
    /* A new or emptied file, or not a regular one (a pipe): the header. */
    if (!S_ISREG(sb.st_mode) || sb.st_size == 0)
        return put_entry(fd, joblog_header, sizeof joblog_header - 1);
    return 0;
}

int runlog_results_begin(int fd, int resuming)
{
    if (!resuming)
        return empty_file(fd);
    return lacks_newline(fd) ? put_entry(fd, "\n", 1) : 0;
}

/* A word as a shell would need it to read back the same: plain if it is
 * made of safe characters, else in single quotes; control characters
 * (which would break the joblog's lines) as $'\n'-style escapes. */
static void put_word(FILE *f, const char *w)
{
    int plain = *w != '\0', ctl = 0;

    for (const unsigned char *p = (const unsigned char *)w; *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            ctl = 1;
        if (!(*p >= 0x80 || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
              (*p >= '0' && *p <= '9') || strchr("-_./=:,+@%", *p)))
            plain = 0;
    }
    if (plain) {
        fputs(w, f);
        return;
    }
    fputs(ctl ? "$'" : "'", f);
    for (const unsigned char *p = (const unsigned char *)w; *p; p++) {
        if (ctl && (*p < 0x20 || *p == 0x7f || *p == '\\' || *p == '\''))
            fprintf(f, "\\x%02x", *p);
        else if (!ctl && *p == '\'')
            fputs("'\\''", f);
        else
            fputc(*p, f);
    }
    fputc('\'', f);
}

int runlog_joblog_write(int fd, const runlog_entry *e)
{
    const sf_task_report *r = e->r;
    /* A task stopped for its timeout is -1, whatever it exited with, so
     * that --resume-failed and joblog readers see it failed. */
    int exitval = r->timed_out ? -1 : (r->status.exited ? r->status.code : 0);
    int sig = r->status.exited ? 0 : r->status.signal;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    int rc;

    if (!f)
        return -ENOMEM;
    fprintf(f, "%lu\t%s\t%.3f\t%10.3f\t0\t%llu\t%d\t%d\t", e->seq, r->host ? r->host : ":",
            r->start_time, r->duration_s, r->stdout_bytes, exitval, sig);
    for (size_t i = 0; r->argv && r->argv[i]; i++) {
        if (i)
            fputc(' ', f);
        put_word(f, r->argv[i]);
    }
    fputc('\n', f);
    rc = ferror(f) ? -ENOMEM : 0;
    if (fclose(f) == EOF)
        rc = -ENOMEM;
    if (rc == 0)
        rc = put_entry(fd, text, len);
    free(text);
    return rc;
}

/* A string as JSON wants it: valid UTF-8, else cleaned. */
static json_t *json_text(const char *s)
{
    json_t *j = json_string(s);
    if (!j) {
        size_t n = strlen(s), cap = 3 * n + 1;
        char *clean = malloc(cap);
        if (!clean)
            return NULL;
        sf_text_clean(clean, cap, s, n, "\xEF\xBF\xBD");
        j = json_string(clean);
        free(clean);
    }
    return j;
}

int runlog_results_write(int fd, const runlog_entry *e, off_t *at)
{
    const sf_task_report *r = e->r;
    json_t *o = json_object(), *cmd = json_array(), *result = json_null();
    char signame[16];
    const char *name = NULL;
    char *text, *line;
    size_t len;
    int rc;

    if (!o || !cmd)
        goto nomem;
    for (size_t i = 0; r->argv && r->argv[i]; i++)
        json_array_append_new(cmd, json_text(r->argv[i]));
    if (!r->status.exited && r->status.signal) {
        name = sf_signal_name(r->status.signal);
        if (!name) {
            snprintf(signame, sizeof signame, "SIG%d", r->status.signal);
            name = signame;
        }
    }
    if (r->result) {
        /* JSON_ALLOW_NUL: fd 3 takes \u0000 in a string, so must this. */
        json_t *v = json_loadb(r->result, r->result_len, JSON_DECODE_ANY | JSON_ALLOW_NUL,
                               NULL);
        if (v) {
            json_decref(result);
            result = v;
        }
    }
    json_object_set_new(o, "seq", json_integer((json_int_t)e->seq));
    json_object_set_new(o, "command", cmd);
    cmd = NULL;
    json_object_set_new(o, "exit_code",
                        r->status.exited ? json_integer(r->status.code) : json_null());
    json_object_set_new(o, "signal", name ? json_string(name) : json_null());
    json_object_set_new(o, "timed_out", json_boolean(r->timed_out));
    json_object_set_new(o, "attempts", json_integer(r->attempts));
    json_object_set_new(o, "duration_s", json_real(r->duration_s));
    json_object_set_new(o, "stdout_bytes", json_integer((json_int_t)r->stdout_bytes));
    json_object_set_new(o, "stderr_bytes", json_integer((json_int_t)r->stderr_bytes));
    json_object_set_new(o, "result", result);
    result = NULL;
    json_object_set_new(o, "ok", json_boolean(r->state == SF_TASK_OK));
    json_object_set_new(o, "start_time", json_real(r->start_time));
    json_object_set_new(o, "slot", json_integer(r->slot));
    if (r->host)
        json_object_set_new(o, "host", json_text(r->host));
    if (r->spawn_error)
        json_object_set_new(o, "error", json_string(strerror(r->spawn_error)));
    if (r->killed)
        json_object_set_new(o, "stopped", json_true());
    if (r->output_limited)
        json_object_set_new(o, "output_limited", json_true());
    /* The line and its newline in one piece, written at once. */
    text = json_dumps(o, JSON_COMPACT);
    if (!text)
        goto nomem;
    len = strlen(text);
    line = realloc(text, len + 1);
    if (!line) {
        free(text);
        goto nomem;
    }
    line[len] = '\n';
    rc = put_entry_at(fd, line, len + 1, at);
    free(line);
    json_decref(o);
    return rc;

nomem:
    json_decref(o);
    json_decref(cmd);
    json_decref(result);
    return -ENOMEM;
}
