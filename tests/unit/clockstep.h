/*
 * clockstep.h - the wall clock stepped, for unit tests of deadlines.
 *
 * The wall clock may be stepped (NTP, an operator); deadlines must not
 * follow it. These definitions take the place of libc's for the whole test
 * program (libev's ev_time() and ev_now() included): the wall clock is
 * shifted by realtime_shift_s, as a step of the system clock would be.
 * Include it in exactly one file of a test program.
 */
#ifndef SF_TESTS_CLOCKSTEP_H
#define SF_TESTS_CLOCKSTEP_H

#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static double realtime_shift_s;

static void shift_ns(time_t *sec, long *ns, long unit)
{
    long long t = (long long)*sec * 1000000000LL + (long long)*ns * (1000000000LL / unit) +
                  (long long)(realtime_shift_s * 1e9);
    *sec = (time_t)(t / 1000000000LL);
    *ns = (long)(t % 1000000000LL / (1000000000LL / unit));
}

int clock_gettime(clockid_t id, struct timespec *ts)
{
    if (syscall(SYS_clock_gettime, id, ts) != 0)
        return -1;
    if (id == CLOCK_REALTIME && realtime_shift_s != 0)
        shift_ns(&ts->tv_sec, &ts->tv_nsec, 1000000000L);
    return 0;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz)
{
    (void)tz;
    if (syscall(SYS_gettimeofday, tv, NULL) != 0)
        return -1;
    if (realtime_shift_s != 0) {
        long us = (long)tv->tv_usec;
        shift_ns(&tv->tv_sec, &us, 1000000L);
        tv->tv_usec = us;
    }
    return 0;
}

#endif
