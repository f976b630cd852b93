/*
 * execplan.h - what an exec'd program gets for one connection, worked out
 * in the spawner before it vforks (process/spawner.h): the whole
 * environment, tcpserver's variables included, and the descriptors. The
 * child then only lays out descriptors and execs: no setenv, no PATH
 * search, no memory of ours written.
 *
 * The variables are those sf_conn_exec sets, with the same effect as its
 * setenv and unsetenv calls on the spawner's environment: a variable that
 * is there already is replaced in place, a new one goes at the end, an
 * unset one is gone.
 */
#ifndef SF_SERVER_EXECPLAN_H
#define SF_SERVER_EXECPLAN_H

#include <stddef.h>

#include "sockfork.h"
#include "process/spawner.h"

#define EXECPLAN_VARS_MAX 96   /* variables set or unset for one connection (an access
                                * rule may add 64) */
#define EXECPLAN_TEXT_MAX 8192 /* their NAME=VALUE text */

/* One connection's variables. */
typedef struct execplan_env {
    char text[EXECPLAN_TEXT_MAX];
    size_t used;                         /* of text */
    const char *set[EXECPLAN_VARS_MAX];  /* "NAME=VALUE", in text */
    size_t nset;
    const char *unset[EXECPLAN_VARS_MAX]; /* "NAME" */
    size_t nunset;
} execplan_env;

/* Sets NAME to VALUE (replacing an earlier set of NAME). Returns 0, or
 * -E2BIG when e has no room. */
int execplan_setenv(execplan_env *e, const char *name, const char *value);
/* Removes NAME from the environment. Returns 0 or -E2BIG. */
int execplan_unsetenv(execplan_env *e, const char *name);

/*
 * The connection's variables, as sf_conn_exec sets them: for TCP, PROTO
 * (TCP or TCP6), TCPREMOTEIP/PORT, TCPLOCALIP/PORT (and the TCP6 names
 * for IPv6), TCPLOCALHOST, TCPREMOTEHOST and TCPREMOTEINFO removed; for a
 * Unix socket, PROTO=IPC, IPCLOCALPATH, and IPCREMOTEEUID/EGID/PID from
 * the peer's credentials on conn_fd. (SOCKFORK_FD, which names the
 * channel, is the caller's to add.) Returns 0, -EINVAL (an address
 * without a host) or -E2BIG.
 */
int execplan_conn_env(execplan_env *e, const sf_addr *peer, const sf_addr *local, int conn_fd);

/*
 * base with e applied, into out (room for cap pointers, NULL-terminated).
 * The strings are base's and e's: out is good while both are. Returns the
 * number of variables, or -E2BIG when cap is too small.
 */
int execplan_merge(const execplan_env *e, char *const *base, char **out, size_t cap);

/*
 * Fills ex for a connection's program: file and argv as given; the
 * spawner's environment with the connection's variables and
 * SOCKFORK_FD=3 (in storage of this module, good until the next call); the connection as 0 and 1,
 * stderr left, the channel as 3 (made blocking, as a forked child makes
 * it). peer and is_tcp as the supervisor accepted it; the local address
 * is `local` (a PROXY header's), or read from conn_fd when NULL. `pairs`
 * (pairs_len bytes of "KEY=VALUE\0"...) are the access rule's, set last. Runs in the spawner. Returns 1 (spawner_plan_fn's
 * "exec'd"), or -errno.
 */
int execplan_conn(spawn_exec *ex, const char *file, char *const *argv, const sf_addr *peer,
                  const sf_addr *local, int is_tcp, int conn_fd, int chan_fd, const char *pairs,
                  size_t pairs_len);

#endif
