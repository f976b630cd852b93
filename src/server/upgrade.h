/*
 * upgrade.h - replacing the running binary without dropping a connection
 * (SIGUSR2, `sockfork ctl upgrade`).
 *
 * The old generation starts the binary now on disk with the same argv and
 * a link (a stream socketpair) at SOCKFORK_UPGRADE=FD: the listening
 * sockets go along as descriptors (systemd's at 3... with LISTEN_FDS, as
 * systemd passed them; the bound ones after them, described in a HELLO line
 * on the link). The new generation adopts them instead of binding, takes
 * the control socket's path, starts serving, and says READY on the link.
 * Only then does the old one stop accepting and drain: its connections run
 * on (channels, bus, ctl on a path of its own) until they end or the grace
 * period is over, and it exits. If the new one fails to start, dies, or is
 * not ready within the deadline, the old one serves on as before.
 * docs/design.md, "Zero-downtime upgrade", tells the whole protocol.
 */
#ifndef SF_UPGRADE_H
#define SF_UPGRADE_H

#include <ev.h>
#include <jansson.h>
#include <sys/types.h>

#include "sockfork.h"
#include "server/listener.h"

#define UPGRADE_HELLO_MAX (64 * 1024)  /* the HELLO line: 65 sockets with Unix paths */
#define UPGRADE_LINE_MAX 512           /* a READY line */
#define UPGRADE_TIMEOUT_DEFAULT 30.0   /* s the new generation may take */

enum upgrade_state {
    UPGRADE_NONE = 0,    /* never asked */
    UPGRADE_STARTING,    /* a new generation runs, not ready yet */
    UPGRADE_DONE,        /* it is ready; we drain */
    UPGRADE_FAILED       /* it was not; we serve on */
};

/* A listening socket handed over by the previous generation. */
typedef struct upgrade_inherited {
    int fd;              /* -1 once adopted or closed */
    int metrics;         /* the metrics endpoint's, not a listener's */
    sf_addr addr;
    dev_t dev;           /* Unix: the socket file it owns, if any */
    ino_t ino;
    int owns_path;
} upgrade_inherited;

typedef struct upgrade {
    /* The old generation's side. */
    char *exe;                 /* /proc/self/exe at sf_server_new: the path now on disk */
    int state;                 /* enum upgrade_state of the last try */
    pid_t child;               /* the new generation while starting; 0 */
    int link;                  /* our end of the link, -1 */
    ev_io link_io;
    ev_timer deadline;
    char in[UPGRADE_LINE_MAX];
    size_t in_have;
    char why[256];             /* the last try's outcome, for ctl and the log */
    pid_t new_pid;             /* the last try's process */
    char ctl_home[108];        /* our control path before the upgrade; "" none */
    int ctl_moved;             /* we answer at ctl path + ".PID" meanwhile */
    int restore_pending;       /* failed: the path comes back once the child is reaped */
    int draining;
    ev_timer drain_timer;      /* grace over: the rest are ended */
    ev_timer drained;          /* the last connection went: exit */
    ev_signal usr2;

    /* The new generation's side. */
    int upgraded;              /* started by an upgrade */
    int from;                  /* link to the previous generation until READY, -1 */
    int prev_alive;            /* the previous generation drains, bridged to us */
    pid_t prev_pid;
    char prev_control[120];    /* where the previous generation answers now */
    upgrade_inherited inh[64];
    unsigned ninh;
    unsigned generation;       /* 1 for a server started by hand */
    /* Unix socket files of the previous generation's that become ours
     * (removed when we close) only once we have said READY: before, a
     * failed start must leave them to it. */
    struct listener *claim[65];
    unsigned nclaim;

    /* Both: the bus bridged over the link to the other generation (one at
     * a time: the previous one, then the next one once we drain). */
    struct bus_link *bridge;
    int bridge_to_prev;
} upgrade;

typedef struct sf_server sf_server;

/* At sf_server_new, before anything else: the watchers' callbacks. */
void upgrade_watchers_init(sf_server *s);

/* At sf_server_new: where our binary is, and, when started by an upgrade,
 * the HELLO of the previous generation (its listeners). 0 or -errno. */
int upgrade_init(sf_server *s);
void upgrade_fini(sf_server *s);

/* sf_server_listen: the previous generation's socket for this address, if
 * it handed one over (port 0 takes any port of the same host). Fills l and
 * returns 1; 0 when there is none. */
int upgrade_take_listener(sf_server *s, const sf_addr *a, listener *l);
/* The same for the metrics endpoint's socket (opts.metrics_addr); its
 * final listener is then given to upgrade_claim_path. */
int upgrade_take_metrics(sf_server *s, const sf_addr *a, listener *l);
/* l's Unix socket file (l->path_dev, path_ino) is ours once we are ready. */
void upgrade_claim_path(sf_server *s, listener *l);

/* 1 when the control socket should take its path over from a live previous
 * generation (rename over it, never a moment without one). */
int upgrade_takes_control(const sf_server *s);

/* At sf_server_run, once the supervisor runs: the SIGUSR2 watcher; the
 * previous generation's sockets nobody asked for are closed (logged). */
void upgrade_start_watching(sf_server *s);

/* At sf_server_run, when the server serves: READY to the previous
 * generation. Returns 1 if there was one (systemd then hears from it). */
int upgrade_say_ready(sf_server *s);

/* SIGUSR2 or `ctl upgrade`: starts a new generation. 0 when started;
 * -EALREADY (one is starting), -ESHUTDOWN (we are stopping or draining),
 * -ENOTSUP (no argv to start it with) or -errno; `why` says it in words. */
int upgrade_begin(sf_server *s, char *why, size_t len);

/* A child that is not the supervisor's was reaped: ours, if it is the new
 * generation. */
void upgrade_reaped(sf_server *s, pid_t pid, int wstatus);

/* `previous_generation` {pid, control} while the one before us drains,
 * `next_generation` {pid} while we drain: added to a control answer. 0 or
 * -ENOMEM. */
int upgrade_put_generations(const sf_server *s, json_t *reply);

/* The `upgrade` and `upgrade_status` answers of the control socket. */
json_t *upgrade_status_json(const sf_server *s);

/* Shutdown began: a new generation still starting is killed (stopping
 * means stopping; one that is ready serves on). */
void upgrade_on_shutdown(sf_server *s);

/* A record was released: while draining, the last one ends us. */
void upgrade_check_drained(sf_server *s);

#endif
