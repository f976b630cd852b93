/* log.c - the library formats lines; the application decides where they go. */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void sf_logf(const sf_logger *lg, int level, const char *fmt, ...)
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
    lg->cb(lg->arg, level, line);
    errno = saved_errno;
}
