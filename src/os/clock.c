/* clock.c - now, on the monotonic clock. */
#include "os/os.h"

#include <time.h>

double os_mono_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}
