/* log.h - format a line and hand it to the user's log callback. */
#ifndef SF_LOG_H
#define SF_LOG_H

#include "sockfork.h"

typedef struct sf_logger {
    sf_log_cb cb;
    void *arg;
    int level;
} sf_logger;

/* Lines longer than this are truncated (marked with "..."). */
#define SF_LOG_LINE_MAX 1024

void sf_logf(const sf_logger *lg, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define sf_log_enabled(lg, lvl) ((lg)->cb && (lvl) <= (lg)->level)

#endif
