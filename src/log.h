/* log.h - format a line and hand it, with its record, to the user's log
 * callbacks. */
#ifndef SF_LOG_H
#define SF_LOG_H

#include "sockfork.h"

typedef struct sf_logger {
    sf_log_cb cb;
    void *arg;
    sf_log_record_cb record_cb;
    void *record_arg;
    int level;
} sf_logger;

/* Lines longer than this are truncated (marked with "..."). */
#define SF_LOG_LINE_MAX 1024

/*
 * The one way a line is logged: `event` (docs/design.md, "Structured
 * logs"), the process and peer it is about (0, NULL: none), its fields, and
 * the text line from fmt. Nothing is formatted when no callback takes
 * `level`. errno is kept.
 */
void sf_logev(const sf_logger *lg, int level, const char *event, int pid, const char *peer,
              const sf_log_field *fields, size_t nfields, const char *fmt, ...)
    __attribute__((format(printf, 8, 9)));

/* A line with a name and nothing more. */
#define sf_logn(lg, level, event, ...) sf_logev(lg, level, event, 0, NULL, NULL, 0, __VA_ARGS__)

/* A line without a name (the event "message"): for code not yet given one. */
#define sf_logf(lg, level, ...) sf_logn(lg, level, "message", __VA_ARGS__)

/* Fields, for sf_logev: SF_FIELDS(SF_F_INT("active", n), SF_F_STR("why", w))
 * gives the array and its length. */
#define SF_F_INT(k, x) {.key = (k), .type = SF_LOG_FIELD_INT, .v.i = (long long)(x)}
#define SF_F_UINT(k, x) {.key = (k), .type = SF_LOG_FIELD_UINT, .v.u = (unsigned long long)(x)}
#define SF_F_DBL(k, x) {.key = (k), .type = SF_LOG_FIELD_DOUBLE, .v.d = (double)(x)}
#define SF_F_STR(k, x) {.key = (k), .type = SF_LOG_FIELD_STR, .v.s = (x)}
#define SF_F_BOOL(k, x) {.key = (k), .type = SF_LOG_FIELD_BOOL, .v.b = !!(x)}
#define SF_F_STATUS(k, x) {.key = (k), .type = SF_LOG_FIELD_STATUS, .v.status = (x)}
#define SF_FIELDS(...)                                                                    \
    (const sf_log_field[]){__VA_ARGS__},                                                  \
        sizeof((const sf_log_field[]){__VA_ARGS__}) / sizeof(sf_log_field)

#define sf_log_enabled(lg, lvl) (((lg)->cb || (lg)->record_cb) && (lvl) <= (lg)->level)

#endif
