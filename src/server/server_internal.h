/* server_internal.h - the server's state, shared by server.c (accept,
 * fork, limits) and commands.c (what the control socket can ask). */
#ifndef SF_SERVER_INTERNAL_H
#define SF_SERVER_INTERNAL_H

#include <sys/resource.h>

#include "server/conn.h"
#include "server/control.h"
#include "server/listener.h"
#include "supervisor/bus.h"
#include "supervisor/supervisor.h"
#include "log.h"
#include "os/os.h"
#include "process/backoff.h"

#define LISTENERS_MAX 64
#define ACCEPT_BATCH 32      /* accepts per wakeup, so reaping is not starved */

enum { PAUSE_LIMIT = 1, PAUSE_ACCEPT_ERR = 2, PAUSE_FORK_ERR = 4 };

/* Counters for `sockfork ctl stats`. */
typedef struct sf_server_stats {
    uint64_t accepted;         /* connections handed to a child */
    uint64_t refused_per_ip;   /* closed at once: per-IP limit */
    uint64_t limit_reached;    /* times accepting paused at the connection limit */
    uint64_t fork_failures;
    uint64_t accept_failures;  /* EMFILE, ENFILE, ENOBUFS, ENOMEM */
    uint64_t idle_closed;
    uint64_t conn_timed_out;   /* ended for holding a connection too long */
    uint64_t kicked;
    uint64_t chan_kicked;      /* ended for bad channel input or a full queue */
    uint64_t exited[256];      /* by exit code */
    uint64_t killed[65];       /* by signal number (64 = any higher) */
} sf_server_stats;

typedef struct conn_rec {
    int fd;               /* the accepted socket until the child has it; then -1 */
    int cfd;              /* the child's end of its channel, likewise */
    int sfd;              /* our end, until the endpoint takes it */
    pid_t pid;            /* 0 until forked */
    int is_tcp;
    int idle_closed;
    int counted_ip;       /* counted in per_ip */
    endpoint ep;          /* the channel, while the child runs */
    hmap_key tuple;       /* TCP: its whole tuple, to find it in a dump */
    sf_addr peer;
    ev_tstamp started;
    ev_timer held_timer;  /* with conn_timeout_s: its end, from the start */
    struct conn_rec *next_free;  /* free list, and the retry list */
} conn_rec;

struct sf_server {
    sf_server_opts opts;
    sf_logger log;
    sf_conn_cb handler;
    void *arg;
    char *program_file;   /* opts.program_argv[0] as found in PATH; plain
                           * malloc, for the spawner reads it */

    struct ev_loop *loop;
    listener listeners[LISTENERS_MAX];
    size_t nlisteners;

    sup sup;
    int sup_ready;
    bus bus;
    int bus_ready;
    conn_rec *recs;       /* opts.max_conns records */
    unsigned recs_touched; /* recs[0 .. recs_touched) have been used */
    conn_rec *free_recs;
    unsigned recs_used;   /* children plus a connection waiting for fork */
    hmap per_ip;          /* address -> connections open from it */
    hmap by_tuple;        /* TCP tuple -> record */
    int diag_fd;          /* NETLINK_SOCK_DIAG socket; with idle_timeout */

    unsigned paused;
    proc_backoff backoff; /* after accept() or a start failed for lack of resources */
    ev_timer backoff_timer;
    conn_rec *retry_head, *retry_tail; /* could not start: sent again after backoff */
    uint64_t retry_failures; /* in the current episode of failed starts; 0: none */
    ev_tstamp retry_since;   /* when it began */
    ev_timer idle_timer;
    ev_async stop_async;

    struct rlimit orig_fdlimit;
    int have_orig_fdlimit;
    int ran;

    ctl_server ctl;
    sf_server_stats stats;
};

/* Answers a control request (commands.c). */
json_t *server_command(void *arg, const char *cmd, json_t *req);

/* The by_tuple key of a TCP connection: peer and local address and port. */
hmap_key server_tuple_key(const sf_addr *peer, const sf_addr *local);

/* Ends a child as the idle timeout and `ctl kick` do. */
void server_end_child(sf_server *s, conn_rec *r);
/* One NETLINK_SOCK_DIAG dump per TCP listener port (two listeners on one
 * port: one dump), each connection handed to cb. Opens the diag socket if
 * there is none; on an error closes it (it may be left mid-dump) so the
 * next call opens a new one. Returns 0 or the first -errno. */
int server_tcp_dump(sf_server *s, os_tcpdiag_cb cb, void *arg);

#endif
