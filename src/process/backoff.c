/* backoff.c - see backoff.h. */
#include "process/backoff.h"

void proc_backoff_reset(proc_backoff *b)
{
    b->delay = 0;
    b->tries = 0;
}

double proc_backoff_delay(const proc_backoff *b)
{
    return b->delay < PROC_BACKOFF_MIN ? PROC_BACKOFF_MIN : b->delay;
}

void proc_backoff_grow(proc_backoff *b)
{
    double d = proc_backoff_delay(b) * 2;

    b->delay = d > PROC_BACKOFF_MAX ? PROC_BACKOFF_MAX : d;
    if (b->tries < ~0u)
        b->tries++;
}

double proc_backoff_next(proc_backoff *b)
{
    double d = proc_backoff_delay(b);

    proc_backoff_grow(b);
    return d;
}
