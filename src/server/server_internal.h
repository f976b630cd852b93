/* server_internal.h - the server's state, shared by server.c (accept,
 * fork, limits) and commands.c (what the control socket can ask). */
#ifndef SF_SERVER_INTERNAL_H
#define SF_SERVER_INTERNAL_H

#include <sys/resource.h>

#include "server/broker.h"
#include "server/conn.h"
#include "server/control.h"
#include "server/listener.h"
#include "supervisor/bus.h"
#include "supervisor/supervisor.h"
#include "log.h"
#include "os/os.h"
#include "process/backoff.h"
#include "server/sizing.h"
#include "server/slot.h"
#include "server/upgrade.h"

#define LISTENERS_MAX 64
#define ACCEPT_BATCH 32      /* accepts per wakeup, so reaping is not starved */

enum { PAUSE_LIMIT = 1, PAUSE_ACCEPT_ERR = 2, PAUSE_FORK_ERR = 4 };

/* Why a prefork worker ended (workers.c): the first reason given wins. */
enum worker_end {
    WORKER_END_NONE = 0,      /* nobody asked: it crashed or exited */
    WORKER_END_IDLE,          /* above the minimum, idle too long */
    WORKER_END_MAX_REQUESTS,  /* served its max_requests, replaced */
    WORKER_END_CONN_TIMEOUT,  /* held a connection past conn_timeout_s */
    WORKER_END_IDLE_TIMEOUT,  /* its client was silent past idle_timeout_s */
    WORKER_END_KICKED,        /* `ctl kick` */
    WORKER_END_CHANNEL,       /* the bus cut it off (bad input, full queue) */
    WORKER_END_SHUTDOWN,
    WORKER_END_CRASHED,       /* counted, never asked for */
    WORKER_END_REASONS
};

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
    uint64_t denied;           /* closed at once: an access rule said deny */
    uint64_t proxy_refused;    /* on a PROXY listener from a source not in --proxy-from */
    uint64_t proxy_bad;        /* a malformed PROXY header, or none before EOF */
    uint64_t proxy_timed_out;  /* no whole PROXY header within proxy_timeout_s */
    /* Prefork mode: workers started, and why each one ended. */
    uint64_t workers_started;
    uint64_t workers_ended[WORKER_END_REASONS];
    uint64_t exited[256];      /* by exit code (fork mode: the child's;
                                * prefork: the handler's return value) */
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
    /* Access (access.c): a PROXY header's destination, and what the rule
     * that let the connection in hands it. */
    sf_addr local;        /* with has_local: the header's destination */
    int has_local;
    char *env;            /* the rule's "KEY=VALUE\0" pairs (malloc'd), or NULL */
    size_t env_len;
    struct proxy_wait *proxy_wait; /* its PROXY header is being read */
    /* A prefork worker (workers.c): the record lives as long as the process,
     * the fields above describe its current connection. */
    int worker;
    int wstate;           /* WORKER_STARTING, WORKER_UP */
    int ending;           /* enum worker_end: why it was told to go, or killed */
    int in_conn;          /* between its CONN_BEGIN and CONN_END frames */
    int refused;          /* that connection was refused (per-IP limit) */
    int tuple_set;        /* `tuple` is in by_tuple (workers_index_tuples) */
    uint64_t limit;       /* max_requests with its jitter; 0: none */
    ev_tstamp born;
    worker_slot *slot;    /* what it says of its connections (slot.h) */
    struct conn_rec *replacing; /* the worker this one was started to replace */
    int replaced;         /* a replacement is starting for it */
    ev_timer retire_timer; /* while told to go: the signal is sent again */
} conn_rec;

enum { WORKER_STARTING = 1, WORKER_UP };

/* Why a worker closed a PROXY listener's connection unserved (CONN_DROPPED). */
enum { WORKER_DROP_SOURCE = 1, WORKER_DROP_BAD = 2, WORKER_DROP_TIMEOUT = 3 };
#define RULE_ENV_MAX 4096 /* an access rule's pairs a worker is sent (a rule's line is
                           * at most 4096 bytes, so they fit) */

/* What a worker needs that it cannot be sent in a spawn request's blob:
 * the listeners (the array is plain memory, made before the spawner is
 * forked, so the spawner and so every worker has it at the same address). */
typedef struct worker_listener {
    sf_addr addr;
    int is_tcp;
    int proxy;            /* ",proxy": the worker reads the header (access.c's rules) */
} worker_listener;

/* The blob of a worker's spawn request (worker.c reads it). */
typedef struct worker_start {
    sf_conn_cb handler;
    void *arg;
    const worker_listener *listeners;
    unsigned nlisteners;  /* its descriptors 3 .. 3+n-1; the channel is 3+n */
    uint32_t chan_max;
    int ask_verdict;      /* wait for the supervisor's word on each connection */
    int eager;            /* tell of every connection (CONN_BEGIN/END): the
                           * supervisor logs each, or gives a verdict */
    worker_slot *slot;    /* its slot (slot.h), shared */
    const struct rules_set *proxy_from; /* PROXY listeners: who may send a header */
    double proxy_timeout_s;
    uint64_t limit;       /* max_requests with its jitter: it goes by itself after
                           * taking that many connections; 0: never */
} worker_start;

/* The prefork pool's state in the supervisor (workers.c). */
typedef struct worker_pool {
    unsigned min, max;
    unsigned starting, retiring; /* asked for; told to go and alive */
    unsigned recycling;   /* replacements starting for workers at their limit */
    double idle_s;
    sizing_ramp ramp;
    worker_listener *listeners;
    worker_slot *slots;   /* max_conns of them, shared; a record's is slots[index] */
    size_t slots_len;     /* bytes mapped */
    ev_timer tick;        /* reads the slots: sizing, conn_timeout, recycling */
    proc_backoff crash_backoff;
    double hold_until;    /* no start before (crash loop, or fork failed) */
    uint64_t crash_streak; /* workers that died young since one lived */
    ev_tstamp crash_since;
    uint64_t gone_begun, gone_ended, gone_refused; /* counts of workers gone */
    uint64_t failed;      /* connections whose handler returned non-zero */
    uint64_t rng;
} worker_pool;

/* What the slots say now (workers_count). */
typedef struct worker_counts {
    unsigned idle, busy;  /* workers up, not told to go */
    unsigned busy_all;    /* serving a connection, told to go or not */
    uint64_t begun, ended, refused; /* every worker's, gone ones' too */
} worker_counts;

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
    struct rurl *bus_where;     /* opts.bus_url parsed (sf_server_new); NULL: no bridge */
    struct bus_redis *bus_redis; /* the bridge to Redis while sf_server_run runs */
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
    int prefork;          /* opts.workers_max > 0 */

    /* Access (access.c). */
    struct rules_set *rules;   /* --rules, or NULL */
    char *rules_path;
    struct rules_set *proxy_from; /* the balancers a PROXY listener takes headers from */
    char *proxy_from_text;     /* as a rules file: "allow CIDR" lines */
    size_t proxy_from_len;
    worker_pool wp;

    /* systemd (os_notify): readiness, status, watchdog. */
    os_notify notify;
    ev_timer status_timer, watchdog_timer;
    uint64_t status_sent; /* the last STATUS= count, +1; 0: none yet */

    upgrade up;           /* upgrade.c: this generation's and its neighbours' */
    struct metrics *metrics; /* opts.metrics_addr's endpoint, or NULL */
    chan_broker broker;   /* fork mode's channels at first use (broker.h) */
};

/* Sends systemd one notification (nothing without NOTIFY_SOCKET). */
void server_notify(sf_server *s, const char *text);
/* Upgraded: the listeners are the next generation's; we accept no more. */
void server_stop_accepting(sf_server *s);

/* Access (access.c): the PROXY header of a ",proxy" listener's connection,
 * then the access rules, then the per-IP limit and the start (fork mode). */
void access_accepted(sf_server *s, conn_rec *r, const listener *l);
void access_cancel(sf_server *s, conn_rec *r);   /* at its release */
/* Reload: the rules file read into *out (NULL without one; what says
 * "FILE: N rules", or "" without one, or the error), then put in force
 * (commit) or dropped (discard, after another part of the reload failed). */
int access_reload_prepare(sf_server *s, struct rules_set **out, char *what, size_t len);
void access_reload_commit(sf_server *s, struct rules_set *set);
void access_reload_discard(struct rules_set *set);
int access_ready(sf_server *s);                  /* at run: the allowlist parsed */
void access_fini(sf_server *s);
/* The rule for a peer, for a worker's verdict: 1 allowed (its pairs packed
 * into *env, malloc'd, and *env_len), 0 denied (logged, counted), -errno. */
int access_check_rules(sf_server *s, conn_rec *r);
void server_start_conn(sf_server *s, conn_rec *r);

/* Re-reads what the server reads from files (SIGHUP, `ctl reload`); what
 * gets one line saying what was done, or why nothing changed. 0 or -errno. */
int server_reload(sf_server *s, char *what, size_t len);

/* Answers a control request (commands.c). */
json_t *server_command(void *arg, const char *cmd, json_t *req);
/* `ctl stats`'s answer, which /metrics renders too (metrics_snapshot_cb):
 * a new object, or NULL (out of memory). */
json_t *server_stats(void *arg);

/* The by_tuple key of a TCP connection: peer and local address and port. */
hmap_key server_tuple_key(const sf_addr *peer, const sf_addr *local);

/* Ends a child as the idle timeout and `ctl kick` do; for a worker, `why`
 * (enum worker_end) is counted when it has gone. */
void server_end_child(sf_server *s, conn_rec *r, int why);

/* Shared by server.c and workers.c. */
conn_rec *server_rec_alloc(sf_server *s);
void server_rec_release(sf_server *s, conn_rec *r);
/* r goes unserved: "[peer] dropped: WHAT WHY" logged (not when why is
 * NULL), its record released. */
void server_drop(sf_server *s, conn_rec *r, const char *what, const char *why);
void server_peer_text(const conn_rec *r, char *buf, size_t len);
void server_per_ip_add(sf_server *s, conn_rec *r, int delta);
unsigned server_per_ip_count(const sf_server *s, const conn_rec *r);
void server_tuple_forget(sf_server *s, const conn_rec *r);
void server_held_too_long(struct ev_loop *loop, ev_timer *w, int revents);
/* r's connection passed conn_timeout_s (why WORKER_END_CONN_TIMEOUT) or
 * idle_timeout_s (WORKER_END_IDLE_TIMEOUT): counted, logged, ended. */
void server_end_timed_out(sf_server *s, conn_rec *r, int why);
void server_log_exit(sf_server *s, const conn_rec *r, pid_t pid, const sf_status *st);

/* Prefork mode (workers.c). */
void worker_main(const void *blob, size_t len, int nfds) __attribute__((noreturn));
int workers_init(sf_server *s);          /* before sup_init: the listener table */
void workers_fini(sf_server *s);
void workers_start(sf_server *s);        /* once the supervisor runs */
void workers_on_started(sf_server *s, conn_rec *r, pid_t pid);
void workers_on_spawn_failed(sf_server *s, conn_rec *r, int err);
void workers_on_exit(sf_server *s, conn_rec *r, pid_t pid, int wstatus);
int workers_on_session(sf_server *s, conn_rec *r, const chan_frame *f);
void workers_shutdown(sf_server *s);
void workers_drain(sf_server *s);   /* upgraded: retire all, start none */
void workers_read_all(sf_server *s);     /* what the channels hold, before they close */
void workers_end(sf_server *s, conn_rec *r, int why); /* kill it (server_end_child) */
void workers_count(sf_server *s, worker_counts *out);
/* Puts every busy worker's connection in by_tuple (for a kernel dump). */
void workers_index_tuples(sf_server *s);
/* A consistent copy of r's slot; 0, or -1 (none could be had). */
int workers_slot(const conn_rec *r, worker_slot *out);
const char *worker_end_name(int why);
const char *worker_state_name(const sf_server *s, const conn_rec *r);
/* One NETLINK_SOCK_DIAG dump per TCP listener port (two listeners on one
 * port: one dump), each connection handed to cb. Opens the diag socket if
 * there is none; on an error closes it (it may be left mid-dump) so the
 * next call opens a new one. Returns 0 or the first -errno. */
int server_tcp_dump(sf_server *s, os_tcpdiag_cb cb, void *arg);

#endif
