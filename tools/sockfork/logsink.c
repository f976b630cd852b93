/* logsink.c - see logsink.h. */
#include "logsink.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

logsink cli_sink = {LOGSINK_TEXT, NULL, 2};

/* The text line's buffer, as cli_error has always cut it. */
#define TEXT_LINE_MAX 1200

int logsink_parse_format(const char *word, int *out)
{
    if (word && strcmp(word, "text") == 0)
        *out = LOGSINK_TEXT;
    else if (word && strcmp(word, "json") == 0)
        *out = LOGSINK_JSON;
    else
        return -1;
    return 0;
}

static int open_append(const char *path)
{
    int fd;

    do
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0644);
    while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
}

int logsink_open(logsink *ls, char *err, size_t len)
{
    int fd;

    err[0] = '\0';
    if (!ls->path)
        return 0;
    if ((fd = open_append(ls->path)) < 0) {
        snprintf(err, len, "cannot open the log file %s: %s", ls->path, strerror(-fd));
        return fd;
    }
    ls->fd = fd;
    return 0;
}

int logsink_reopen(void *arg, char *why, size_t len)
{
    logsink *ls = arg;
    int fd;

    why[0] = '\0';
    if (!ls->path)
        return 0;
    /* The new one first: if it cannot be had, the old one stays. */
    if ((fd = open_append(ls->path)) < 0) {
        snprintf(why, len, "log file %s: %s", ls->path, strerror(-fd));
        return fd;
    }
    if (ls->fd > 2)
        close(ls->fd);
    ls->fd = fd;
    snprintf(why, len, "log file %s reopened", ls->path);
    return 0;
}

void logsink_close(logsink *ls)
{
    if (ls->fd > 2)
        close(ls->fd);
    ls->fd = 2;
}

/* One line, one write(2): lines from a busy server never interleave. */
static void write_line(const logsink *ls, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(ls->fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return; /* nowhere to say it */
        }
        buf += n;
        len -= (size_t)n;
    }
}

static void write_text(const logsink *ls, const char *text)
{
    char line[TEXT_LINE_MAX];
    int n = snprintf(line, sizeof line, "sockfork: ");
    size_t m = strlen(text);

    if (m > sizeof line - 2 - (size_t)n)
        m = sizeof line - 2 - (size_t)n;
    memcpy(line + n, text, m);
    line[(size_t)n + m] = '\n';
    write_line(ls, line, (size_t)n + m + 1);
}

void logsink_line(void *arg, int level, const char *line)
{
    (void)level;
    write_text(arg, line);
}

int logsink_format_ts(const struct timespec *ts, char *buf, size_t len)
{
    struct tm tm;
    char day[32];
    int n;

    if (!gmtime_r(&ts->tv_sec, &tm) || !strftime(day, sizeof day, "%Y-%m-%dT%H:%M:%S", &tm))
        return -1;
    n = snprintf(buf, len, "%s.%06ldZ", day, (long)(ts->tv_nsec / 1000));
    return n < 0 || (size_t)n >= len ? -1 : n;
}

const char *logsink_level_name(int level)
{
    static const char *const names[] = {"error", "warn", "notice", "info", "debug"};

    if (level < SF_LOG_ERROR)
        return "error";
    return level <= SF_LOG_DEBUG ? names[level] : "debug";
}

json_t *logsink_status_json(const sf_status *st)
{
    const char *name;

    if (st->exited)
        return json_pack("{s:i}", "exited", st->code);
    if ((name = sf_signal_name(st->signal)) != NULL)
        return json_pack("{s:s, s:b}", "signal", name, "core", st->core);
    return json_pack("{s:i, s:b}", "signal", st->signal, "core", st->core);
}

/*
 * A string, at most max bytes of it (cut on a character's boundary and
 * marked "..."); *cut says it was. Bytes that are not UTF-8 become '?':
 * JSON holds text only.
 */
static json_t *bounded_string(const char *s, size_t max, int *cut)
{
    char buf[LOGSINK_LINE_MAX + 4];
    size_t n = strlen(s);
    json_t *j;

    if (max > LOGSINK_LINE_MAX)
        max = LOGSINK_LINE_MAX;
    if (n > max) {
        n = max;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--; /* not inside a character */
        *cut = 1;
    }
    memcpy(buf, s, n);
    if (n < strlen(s)) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    if ((j = json_stringn(buf, n)) != NULL)
        return j;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)buf[i] >= 0x80)
            buf[i] = '?';
    return json_stringn(buf, n);
}

static json_t *field_value(const sf_log_field *f, size_t max, int *cut)
{
    switch (f->type) {
    case SF_LOG_FIELD_INT:
        return json_integer(f->v.i);
    case SF_LOG_FIELD_UINT:
        /* json_int_t is signed: past its range, the largest it holds. */
        return json_integer(f->v.u > (unsigned long long)LLONG_MAX ? LLONG_MAX
                                                                   : (json_int_t)f->v.u);
    case SF_LOG_FIELD_DOUBLE:
        return f->v.d == f->v.d && f->v.d - f->v.d == 0 ? json_real(f->v.d) : json_null();
    case SF_LOG_FIELD_STR:
        return bounded_string(f->v.s ? f->v.s : "", max, cut);
    case SF_LOG_FIELD_BOOL:
        return json_boolean(f->v.b);
    case SF_LOG_FIELD_STATUS:
        return logsink_status_json(&f->v.status);
    default:
        return json_null();
    }
}

/* The object with every string at most max bytes; NULL without memory. */
static json_t *build(const sf_log_record *rec, const char *ts, size_t max)
{
    json_t *o = json_object();
    int cut = 0, bad = !o;

    if (bad)
        return NULL;
    bad |= json_object_set_new(o, "ts", json_string(ts));
    bad |= json_object_set_new(o, "level", json_string(logsink_level_name(rec->level)));
    bad |= json_object_set_new(o, "event", bounded_string(rec->event ? rec->event : "message",
                                                          max, &cut));
    bad |= json_object_set_new(o, "pid", rec->pid > 0 ? json_integer(rec->pid) : json_null());
    bad |= json_object_set_new(o, "peer",
                               rec->peer ? bounded_string(rec->peer, max, &cut) : json_null());
    bad |= json_object_set_new(o, "msg", bounded_string(rec->line ? rec->line : "", max, &cut));
    for (size_t i = 0; i < rec->nfields && !bad; i++) {
        /* The fixed keys above keep their meaning. */
        if (json_object_get(o, rec->fields[i].key))
            continue;
        bad |= json_object_set_new(o, rec->fields[i].key, field_value(&rec->fields[i], max, &cut));
    }
    if (cut && !bad)
        bad |= json_object_set_new(o, "truncated", json_true());
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int logsink_render_json(const sf_log_record *rec, const struct timespec *ts, char *buf,
                        size_t len)
{
    char when[64];
    size_t max = SIZE_MAX;

    if (len < 256 || logsink_format_ts(ts, when, sizeof when) < 0)
        return -1;
    /* Whole if it fits; else every string cut shorter, until it does. */
    for (;;) {
        json_t *o = build(rec, when, max);
        size_t n;

        if (!o)
            return -1;
        n = json_dumpb(o, buf, len - 1, JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
        json_decref(o);
        if (n > 0 && n <= len - 1) {
            buf[n] = '\n';
            return (int)n + 1;
        }
        if (n == 0 || max == 0)
            return -1;
        max = max == SIZE_MAX ? len / 2 : max / 2;
    }
}

void logsink_record(void *arg, const sf_log_record *rec)
{
    logsink *ls = arg;
    char line[LOGSINK_LINE_MAX];
    struct timespec now;
    int n;

    clock_gettime(CLOCK_REALTIME, &now);
    if ((n = logsink_render_json(rec, &now, line, sizeof line)) > 0)
        write_line(ls, line, (size_t)n);
    else
        write_text(ls, rec->line); /* no memory for JSON: the line at least */
}

void logsink_say(logsink *ls, int level, const char *event, const sf_log_field *fields,
                 size_t nfields, const char *fmt, ...)
{
    char text[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (ls->format == LOGSINK_JSON) {
        sf_log_record rec = {
            .level = level,
            .event = event,
            .pid = 0,
            .peer = NULL,
            .line = text,
            .fields = fields,
            .nfields = nfields,
        };
        logsink_record(ls, &rec);
    } else {
        write_text(ls, text);
    }
}
