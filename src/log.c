/* log.c - the library formats lines and records; the application decides
 * where they go. */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void sf_logev(const sf_logger *lg, int level, const char *event, int pid, const char *peer,
              const sf_log_field *fields, size_t nfields, const char *fmt, ...)
{
    char line[SF_LOG_LINE_MAX];
    va_list ap;
    int saved_errno = errno;
    int n;

    if (!lg || !sf_log_enabled(lg, level))
        return; /* a component configured without a logger logs nothing */
    va_start(ap, fmt);
    n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof line)
        memcpy(line + sizeof line - 4, "...", 4);
    if (lg->cb)
        lg->cb(lg->arg, level, line);
    if (lg->record_cb) {
        sf_log_record rec = {
            .level = level,
            .event = event,
            .pid = pid,
            .peer = peer,
            .line = line,
            .fields = fields,
            .nfields = nfields,
        };
        lg->record_cb(lg->record_arg, &rec);
    }
    errno = saved_errno;
}
