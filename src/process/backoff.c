/* backoff.c - see backoff.h. */
#include "process/backoff.h"

void proc_backoff_reset(proc_backoff *b)
{
    b->delay = 0;
}

double proc_backoff_delay(const proc_backoff *b)
{
    return b->delay < PROC_BACKOFF_MIN ? PROC_BACKOFF_MIN : b->delay;
}

double proc_backoff_arm(proc_backoff *b)
{
    b->delay = proc_backoff_delay(b);
    return b->delay;
}

void proc_backoff_grow(proc_backoff *b)
{
    if (b->delay <= 0)
        return; /* reset since it was armed */
    b->delay = b->delay * 2 > PROC_BACKOFF_MAX ? PROC_BACKOFF_MAX : b->delay * 2;
}

double proc_backoff_next(proc_backoff *b)
{
    double d = proc_backoff_arm(b);

    proc_backoff_grow(b);
    return d;
}
