/*
 * os.h - the non-portable calls, one small file each, so that a port to
 * another kernel replaces these files and nothing else.
 */
#ifndef SF_OS_H
#define SF_OS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/un.h>

#include "sockfork.h"

/* Closes every descriptor >= lowfd. Async-signal-safe; for use after fork. */
void os_closefrom(int lowfd);
/* Its way where close_range is missing: the open ones, from /proc/self/fd.
 * Returns 0, or -1 when /proc cannot be read. */
int os_closefrom_proc(int lowfd);

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

/* Who a server runs as once its sockets are open (os_ids_drop). */
typedef struct os_ids {
    uid_t uid;
    gid_t gid;
    int explicit_group;  /* a group was given: no supplementary groups */
    int has_name;        /* the uid has a user: its groups come along */
    char name[256];
} os_ids;

/* Resolves USER (a name or a number) and GROUP (a name, a number, or NULL:
 * the user's own). Returns 0, -ENOENT (no such user), -ENXIO (no such
 * group), -ESRCH (a number that is no user's, and no group given),
 * -EINVAL, or -errno of the lookup. */
int os_ids_resolve(const char *user, const char *group, os_ids *out);

/* setgroups (the user's, or none), setgid, setuid, for good: checks that
 * root cannot be had back. Returns 0 or -errno (-EPERM: not permitted, or
 * not permanent). */
int os_ids_drop(const os_ids *ids);

/* The sockets systemd passed (socket activation), as descriptors 3, 4, ...
 * when LISTEN_PID is ours: returns their number (0: none, or not ours)
 * with *names (NULL-terminated, malloc'd; "unknown" for a missing name),
 * or -errno. Made close-on-exec; the variables are taken out of the
 * environment either way. listenfds.c says why not libsystemd. */
int os_listen_fds(char ***names);

/* systemd's notification socket (notify.c: why not sd_notify). */
typedef struct os_notify {
    int fd;                 /* -1: not under systemd */
    struct sockaddr_un addr;
    socklen_t addr_len;
    double watchdog_s;      /* WATCHDOG_USEC for us, in s; 0: none */
} os_notify;

/* Takes NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID out of the
 * environment (children must not see them) and keeps what they said.
 * Returns 1 (a socket to notify), 0 (none) or -errno. */
int os_notify_init(os_notify *n);
/* Sends one datagram of KEY=VALUE lines; 0 without a socket, or -errno. */
int os_notify_send(const os_notify *n, const char *text);
void os_notify_fini(os_notify *n);

/* Makes this process the reaper of orphaned descendants. Returns 0, or
 * -ENOSYS where the kernel has no such feature. */
int os_subreaper(void);

/*
 * Zeroed memory that forked children do not inherit (their copy of the
 * range is unmapped). For the supervisor's own bookkeeping only: code that
 * runs in a child must never touch it. Returns NULL with errno set.
 */
void *os_nofork_calloc(size_t n, size_t size);
void os_nofork_free(void *block);

/* The scheduling attributes os_slice_short changed, to put back. */
typedef struct os_sched_saved {
    int set;
    unsigned long long runtime;  /* the slice, ns */
} os_sched_saved;

/*
 * Gives the calling thread a short scheduler slice (0.1 ms), so that it
 * runs soon after it is woken even when its children keep every CPU busy.
 * Only for a thread of the normal policy with a longer slice. Returns 1 if
 * changed, 0 if left as it was, or -errno. Children inherit the slice:
 * os_slice_restore puts back the saved slice (if any; nice and policy stay
 * as they are then), in the thread or in a child before it execs;
 * async-signal-safe, vfork-safe.
 */
int os_slice_short(os_sched_saved *saved);
void os_slice_restore(const os_sched_saved *saved);

/*
 * Whether a listening Unix socket is bound to the file (dev, ino), asked of
 * the kernel (NETLINK_SOCK_DIAG) without connecting to it. Returns 1 or 0,
 * or -errno when the kernel cannot say (no unix_diag support). Only
 * sockets of this network namespace are seen.
 */
int os_unix_listening(dev_t dev, ino_t ino);

/* What the kernel knows of a TCP connection. */
typedef struct os_tcp_stats {
    uint64_t bytes_in;     /* data bytes received from the peer; UINT64_MAX: unknown */
    uint64_t bytes_out;    /* data bytes written to the peer (sent or queued); same */
    uint32_t idle_in_ms;   /* ms since data last came from the peer */
} os_tcp_stats;

/* One connection of a dump: local and peer address, and its stats. */
typedef void (*os_tcpdiag_cb)(void *arg, const sf_addr *local, const sf_addr *peer,
                              const os_tcp_stats *st);

/* A NETLINK_SOCK_DIAG socket (close-on-exec). Returns it, or -errno. */
int os_tcpdiag_open(void);

/*
 * Calls cb for every TCP connection of `family` (AF_INET or AF_INET6)
 * whose local port is `local_port`, listeners excepted, in this network
 * namespace. Returns 0 at the end of the dump, or -errno.
 */
int os_tcpdiag_dump(int fd, int family, uint16_t local_port, os_tcpdiag_cb cb, void *arg);

/* What this process costs now (procself.c). */
typedef struct os_proc_usage {
    double cpu_seconds;    /* user and system, since it started; -1: unknown */
    double resident_bytes; /* -1: unknown */
    double start_time;     /* seconds since the epoch; -1: unknown */
} os_proc_usage;

/* Fills out; 0, or -errno when part of it is unknown (-1 in it: getrusage
 * failed, or /proc could not be read). */
int os_proc_self(os_proc_usage *out);

/* Now, in seconds on the monotonic clock (clock.c). Deadlines and ages are
 * kept on it, never on ev_now(), which is the wall clock: a step of that
 * (NTP, an operator) would move them by as long as the step. */
double os_mono_now(void);

#endif
