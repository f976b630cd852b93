/*
 * childsys.h - the few system calls a forked child makes between fork()
 * and its handler, made without the C library where we can (x86-64).
 *
 * Why: a fork copies no page-table entries for code, so each C library
 * function the child calls first is a page fault for its 64 KiB window
 * of libc's text (prctl, pthread_sigmask and their neighbours: two of a
 * fork-mode child's 14 faults, counted with `perf record -e page-faults`
 * in bench/forkcost.sh's runs). Inlined into PROC_CHILD_CODE, these run
 * from the pages the child has already faulted in. Elsewhere they are
 * the C library's calls. Each returns 0 or -errno.
 */
#ifndef SF_PROCESS_CHILDSYS_H
#define SF_PROCESS_CHILDSYS_H

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#include "os/os.h"

#if defined(__x86_64__) && defined(__linux__)
static inline long childsys_call4(long n, long a, long b, long c, long d)
{
    long ret;
    register long r10 __asm__("r10") = d;

    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
                     : "rcx", "r11", "memory");
    return ret;
}
#define CHILDSYS_RAW 1
#endif

/* setpgid(0, 0). */
static inline int childsys_own_group(void)
{
#ifdef CHILDSYS_RAW
    return (int)childsys_call4(SYS_setpgid, 0, 0, 0, 0);
#else
    return setpgid(0, 0) < 0 ? -errno : 0;
#endif
}

/* PR_SET_PDEATHSIG, then sig at once if the parent (expected_parent) has
 * died already (what os_parentdeath_signal does). */
static inline int childsys_parent_death(int sig, pid_t expected_parent)
{
#ifdef CHILDSYS_RAW
    long rc = childsys_call4(SYS_prctl, PR_SET_PDEATHSIG, sig, 0, 0);
    if (rc < 0)
        return (int)rc;
    if ((pid_t)childsys_call4(SYS_getppid, 0, 0, 0, 0) != expected_parent)
        (void)raise(sig);
    return 0;
#else
    return os_parentdeath_signal(sig, expected_parent);
#endif
}

/* Closes every descriptor from lowfd up; 0, or -1 where close_range is
 * missing (the caller then falls back to os_closefrom). */
static inline int childsys_close_from(int lowfd)
{
#if defined(CHILDSYS_RAW) && defined(SYS_close_range)
    return childsys_call4(SYS_close_range, lowfd, ~0U, 0, 0) == 0 ? 0 : -1;
#else
    (void)lowfd;
    return -1;
#endif
}

/* The signal mask emptied. */
static inline int childsys_unblock_all(void)
{
#ifdef CHILDSYS_RAW
    unsigned long none = 0; /* the kernel's sigset: 64 bits */
    return (int)childsys_call4(SYS_rt_sigprocmask, SIG_SETMASK, (long)&none, 0, sizeof none);
#else
    sigset_t none;
    memset(&none, 0, sizeof none);
    return -pthread_sigmask(SIG_SETMASK, &none, NULL);
#endif
}

#endif
