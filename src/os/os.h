/*
 * os.h - the non-portable calls, one small file each, so that a port to
 * another kernel replaces these files and nothing else.
 */
#ifndef SF_OS_H
#define SF_OS_H

#include <stdint.h>
#include <sys/resource.h>

/* Closes every descriptor >= lowfd. Async-signal-safe; for use after fork. */
void os_closefrom(int lowfd);

/*
 * Raises the RLIMIT_NOFILE soft limit to the hard limit. Stores the limit
 * found at entry in *saved so a child can be given it back. Returns 0 or
 * -errno.
 */
int os_fdlimit_raise(struct rlimit *saved);

/*
 * Asks the kernel to send `sig` to this process when its parent dies, and
 * sends it at once if the parent `expected_parent` is already gone (the
 * race between fork and the prctl). Returns 0 or -errno; where the kernel
 * has no such feature, returns -ENOSYS and nothing happens.
 */
int os_parentdeath_signal(int sig, int expected_parent);

/* What the kernel knows of a TCP connection. */
typedef struct os_tcp_stats {
    uint64_t bytes_in;     /* data bytes received from the peer */
    uint64_t bytes_out;    /* data bytes written to the peer (sent or queued) */
    uint32_t idle_in_ms;   /* ms since data last came from the peer */
} os_tcp_stats;

/* Reads the stats of a TCP socket. Returns 0 or -errno (-ENOTSUP if not TCP). */
int os_tcp_stats_get(int fd, os_tcp_stats *out);

#endif
