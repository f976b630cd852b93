/* logsink.h - where the command's log lines go (--log-format, --log-file):
 * text ("sockfork: LINE") or JSON lines, on stderr or appended to a file
 * that a reload reopens. Uses only the public header and jansson. */
#ifndef SOCKFORK_LOGSINK_H
#define SOCKFORK_LOGSINK_H

#include <sockfork.h>
#include <stddef.h>
#include <time.h>

enum logsink_format { LOGSINK_TEXT = 0, LOGSINK_JSON = 1 };

/* The longest line written, its newline included: one write(2), atomic on
 * a pipe (PIPE_BUF). A longer JSON line has its strings cut, never its
 * structure; a text line is cut as cli_error cuts it. */
#define LOGSINK_LINE_MAX 4096

typedef struct logsink {
    int format;       /* enum logsink_format */
    const char *path; /* --log-file, or NULL: stderr */
    int fd;           /* 2, or the file's (O_APPEND, close-on-exec) */
} logsink;

/* The command's one sink (stderr, text, until the options change it). */
extern logsink cli_sink;

/* "text" or "json" into *out: 0, or -1 for another word. */
int logsink_parse_format(const char *word, int *out);

/* Opens ls->path for appending (created 0644), when there is one.
 * 0, or -errno with one line in err. */
int logsink_open(logsink *ls, char *err, size_t len);

/* An sf_reload_cb (arg: a logsink): opens ls->path again (logrotate has
 * renamed it: a new file appears) and only then lets the old one go. 0 with
 * "log file PATH reopened" in why ("" without a file), or -errno with why
 * it could not, the old file still in use. */
int logsink_reopen(void *arg, char *why, size_t len);

void logsink_close(logsink *ls);

/* The library's callbacks (arg: a logsink): sf_log_cb for text, and
 * sf_log_record_cb for JSON. */
void logsink_line(void *arg, int level, const char *line);
void logsink_record(void *arg, const sf_log_record *rec);

/* The command's own lines (listening, control, run's warnings and its
 * summary), as the library's: text or JSON, to the sink. */
void logsink_say(logsink *ls, int level, const char *event, const sf_log_field *fields,
                 size_t nfields, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* Pieces, unit-tested (tests/unit/test_logsink.c). */

/* "2026-12-07T18:00:00.123456Z" for ts; the length, or -1. */
int logsink_format_ts(const struct timespec *ts, char *buf, size_t len);

/* "error", "warn", "notice", "info", "debug" (past them: the nearest). */
const char *logsink_level_name(int level);

/* One JSON line for rec at ts, its newline included, at most len bytes
 * (len >= 256): {"ts", "level", "event", "pid" (null: none), "peer" (null:
 * none), "msg", then the fields}. Strings too long for len are cut (marked
 * "...", "truncated": true added). The length, or -1 (no memory). */
int logsink_render_json(const sf_log_record *rec, const struct timespec *ts, char *buf,
                        size_t len);

/* A status as JSON: {"exited": CODE} or {"signal": "SIGSEGV", "core": true}
 * (a signal without a name is its number). New reference, or NULL. */
struct json_t;
struct json_t *logsink_status_json(const sf_status *st);

#endif
