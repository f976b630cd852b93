/* execplan.c - see execplan.h. Runs in the spawner. */
#include "server/execplan.h"
#include "server/rules.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

extern char **environ;

/* Whether the environment entry is NAME=... */
static int entry_is(const char *entry, const char *name, size_t nlen)
{
    return strncmp(entry, name, nlen) == 0 && entry[nlen] == '=';
}

static size_t name_len(const char *assignment)
{
    return (size_t)(strchr(assignment, '=') - assignment);
}

int execplan_setenv(execplan_env *e, const char *name, const char *value)
{
    size_t nlen = strlen(name), vlen = strlen(value), need = nlen + vlen + 2;
    char *at = e->text + e->used;
    size_t k;

    if (need > sizeof e->text - e->used)
        return -E2BIG;
    for (k = 0; k < e->nset && !entry_is(e->set[k], name, nlen); k++)
        ;
    if (k == e->nset && e->nset == EXECPLAN_VARS_MAX)
        return -E2BIG;
    memcpy(at, name, nlen);
    at[nlen] = '=';
    memcpy(at + nlen + 1, value, vlen + 1);
    e->used += need;
    e->set[k] = at; /* a second set of a name replaces the first */
    if (k == e->nset)
        e->nset++;
    return 0;
}

int execplan_unsetenv(execplan_env *e, const char *name)
{
    if (e->nunset == EXECPLAN_VARS_MAX)
        return -E2BIG;
    e->unset[e->nunset++] = name;
    return 0;
}

static int set_host_port(execplan_env *e, const char *proto, const char *side, const sf_addr *a)
{
    char name[32], host[SF_ADDR_TEXT_MAX], port[8];
    int rc;

    if (sf_addr_host(a, host, sizeof host) < 0)
        return -EINVAL;
    snprintf(port, sizeof port, "%u", sf_addr_port(a));
    snprintf(name, sizeof name, "%s%sIP", proto, side);
    if ((rc = execplan_setenv(e, name, host)) < 0)
        return rc;
    snprintf(name, sizeof name, "%s%sPORT", proto, side);
    return execplan_setenv(e, name, port);
}

static int tcp_env(execplan_env *e, const sf_addr *peer, const sf_addr *local)
{
    int v6 = peer->u.sa.sa_family == AF_INET6;
    int rc;

    /* tcpserver -H -R: no DNS names, no ident; drop stale values that the
     * supervisor's own environment may carry. */
    if ((rc = execplan_unsetenv(e, "TCPLOCALHOST")) < 0 ||
        (rc = execplan_unsetenv(e, "TCPREMOTEHOST")) < 0 ||
        (rc = execplan_unsetenv(e, "TCPREMOTEINFO")) < 0 ||
        (rc = execplan_setenv(e, "PROTO", v6 ? "TCP6" : "TCP")) < 0 ||
        (rc = set_host_port(e, "TCP", "REMOTE", peer)) < 0 ||
        (rc = set_host_port(e, "TCP", "LOCAL", local)) < 0)
        return rc;
    if (v6 && ((rc = set_host_port(e, "TCP6", "REMOTE", peer)) < 0 ||
               (rc = set_host_port(e, "TCP6", "LOCAL", local)) < 0))
        return rc;
    return 0;
}

/* The ucspi-ipc names (s6-ipcserver): who is on the other end. */
static int ipc_env(execplan_env *e, const sf_addr *peer, int conn_fd)
{
    char path[SF_ADDR_TEXT_MAX], num[24];
    struct ucred cred;
    socklen_t len = sizeof cred;
    int rc;

    if ((rc = execplan_setenv(e, "PROTO", "IPC")) < 0)
        return rc;
    if (sf_addr_host(peer, path, sizeof path) >= 0 &&
        (rc = execplan_setenv(e, "IPCLOCALPATH", path)) < 0)
        return rc;
    if (getsockopt(conn_fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
        snprintf(num, sizeof num, "%u", (unsigned)cred.uid);
        if ((rc = execplan_setenv(e, "IPCREMOTEEUID", num)) < 0)
            return rc;
        snprintf(num, sizeof num, "%u", (unsigned)cred.gid);
        if ((rc = execplan_setenv(e, "IPCREMOTEEGID", num)) < 0)
            return rc;
        snprintf(num, sizeof num, "%d", (int)cred.pid);
        if ((rc = execplan_setenv(e, "IPCREMOTEPID", num)) < 0)
            return rc;
    }
    return 0;
}

int execplan_conn_env(execplan_env *e, const sf_addr *peer, const sf_addr *local, int conn_fd)
{
    return peer->u.sa.sa_family == AF_UNIX ? ipc_env(e, peer, conn_fd) : tcp_env(e, peer, local);
}

static int is_unset(const execplan_env *e, const char *entry)
{
    for (size_t k = 0; k < e->nunset; k++)
        if (entry_is(entry, e->unset[k], strlen(e->unset[k])))
            return 1;
    return 0;
}

/* Index of the variable of e that entry sets, or -1. */
static int set_index(const execplan_env *e, const char *entry)
{
    for (size_t k = 0; k < e->nset; k++)
        if (entry_is(entry, e->set[k], name_len(e->set[k])))
            return (int)k;
    return -1;
}

int execplan_merge(const execplan_env *e, char *const *base, char **out, size_t cap)
{
    unsigned char placed[EXECPLAN_VARS_MAX] = {0};
    size_t n = 0;

    /* As setenv: the first entry of a name is replaced in place (later
     * ones of the same name stay); as unsetenv: every entry goes. */
    for (; base && *base; base++) {
        int k;

        if (is_unset(e, *base))
            continue;
        if (n + 1 >= cap)
            return -E2BIG;
        k = set_index(e, *base);
        if (k >= 0 && !placed[k]) {
            placed[k] = 1;
            out[n++] = (char *)e->set[k];
        } else {
            out[n++] = *base;
        }
    }
    for (size_t k = 0; k < e->nset; k++) {
        if (placed[k])
            continue;
        if (n + 1 >= cap)
            return -E2BIG;
        out[n++] = (char *)e->set[k];
    }
    out[n] = NULL;
    return (int)n;
}

/* The spawner's: one connection's plan at a time, kept until the next. */
static execplan_env conn_env;
static char **conn_envp;
static size_t conn_envp_cap;

/* Room for the spawner's environment and a connection's variables. Its
 * environment does not change once it runs: this grows once. */
static int envp_room(void)
{
    size_t need = EXECPLAN_VARS_MAX + 1;
    char **p;

    for (char **v = environ; v && *v; v++)
        need++;
    if (need <= conn_envp_cap)
        return 0;
    if (!(p = realloc(conn_envp, need * sizeof *p)))
        return -ENOMEM;
    conn_envp = p;
    conn_envp_cap = need;
    return 0;
}

/* The access rule's "KEY=VALUE\0" pairs, as setenv would set them. */
static int set_pairs(execplan_env *e, const char *pairs, size_t len)
{
    char name[256];
    const char *value;
    size_t off = 0;
    int rc;

    while ((rc = rule_pairs_next(pairs, len, &off, name, sizeof name, &value)) == 1)
        if ((rc = execplan_setenv(e, name, value)) < 0)
            return rc;
    return rc;
}

int execplan_conn(spawn_exec *ex, const char *file, char *const *argv, const sf_addr *peer,
                  const sf_addr *local_given, int is_tcp, int conn_fd, int chan_fd,
                  const char *pairs, size_t pairs_len)
{
    sf_addr local;
    int rc;

    if (!file || !argv || !argv[0])
        return -EINVAL;
    /* As a forked child finds it (server.c, child_main): a Unix
     * connection's local address is the listener's path, as its peer's. */
    local.len = sizeof local.u;
    if (local_given)
        local = *local_given;
    else if (!is_tcp || getsockname(conn_fd, &local.u.sa, &local.len) < 0)
        local = *peer;
    memset(&conn_env, 0, sizeof conn_env);
    if ((rc = execplan_conn_env(&conn_env, peer, &local, conn_fd)) < 0 ||
        (rc = execplan_setenv(&conn_env, "SOCKFORK_FD", "3")) < 0 ||
        (rc = set_pairs(&conn_env, pairs, pairs_len)) < 0 || (rc = envp_room()) < 0)
        return rc;
    if ((rc = execplan_merge(&conn_env, environ, conn_envp, conn_envp_cap)) < 0)
        return rc;
    /* The supervisor made both ends non-blocking; the program gets its
     * end blocking, as a forked child makes it. */
    if (fcntl(chan_fd, F_SETFL, 0) < 0)
        return -errno;
    ex->file = file;
    ex->argv = argv;
    ex->envp = conn_envp;
    ex->fds[0] = conn_fd;
    ex->fds[1] = conn_fd;
    ex->fds[2] = -1; /* stderr: the server's */
    ex->fds[3] = chan_fd;
    ex->nfds = 4;
    return 1;
}
