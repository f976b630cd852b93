/* conn.c - the connection as its child sees it, and exec with tcpserver's
 * environment. Runs only in children. */
#include "server/conn.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

int sf_conn_fd(const sf_conn *c)
{
    return c->fd;
}

const sf_addr *sf_conn_peer(const sf_conn *c)
{
    return &c->peer;
}

const sf_addr *sf_conn_local(const sf_conn *c)
{
    return &c->local;
}

static int set_host_port(const char *proto, const char *side, const sf_addr *a)
{
    char name[32], host[SF_ADDR_TEXT_MAX], port[8];

    if (sf_addr_host(a, host, sizeof host) < 0)
        return -EINVAL;
    snprintf(port, sizeof port, "%u", sf_addr_port(a));
    snprintf(name, sizeof name, "%s%sIP", proto, side);
    if (setenv(name, host, 1) < 0)
        return -errno;
    snprintf(name, sizeof name, "%s%sPORT", proto, side);
    if (setenv(name, port, 1) < 0)
        return -errno;
    return 0;
}

static int set_tcp_env(const sf_conn *c)
{
    int v6 = c->peer.u.sa.sa_family == AF_INET6;
    int rc;

    /* tcpserver -H -R: no DNS names, no ident; drop stale values that the
     * supervisor's own environment may carry. */
    unsetenv("TCPLOCALHOST");
    unsetenv("TCPREMOTEHOST");
    unsetenv("TCPREMOTEINFO");
    if (setenv("PROTO", v6 ? "TCP6" : "TCP", 1) < 0)
        return -errno;
    if ((rc = set_host_port("TCP", "REMOTE", &c->peer)) < 0 ||
        (rc = set_host_port("TCP", "LOCAL", &c->local)) < 0)
        return rc;
    if (v6 && ((rc = set_host_port("TCP6", "REMOTE", &c->peer)) < 0 ||
               (rc = set_host_port("TCP6", "LOCAL", &c->local)) < 0))
        return rc;
    return 0;
}

/* The ucspi-ipc names (s6-ipcserver): who is on the other end. */
static int set_ipc_env(const sf_conn *c)
{
    char path[SF_ADDR_TEXT_MAX], num[24];
    struct ucred cred;
    socklen_t len = sizeof cred;

    if (setenv("PROTO", "IPC", 1) < 0)
        return -errno;
    if (sf_addr_host(&c->peer, path, sizeof path) >= 0 && setenv("IPCLOCALPATH", path, 1) < 0)
        return -errno;
    if (getsockopt(c->fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
        snprintf(num, sizeof num, "%u", (unsigned)cred.uid);
        setenv("IPCREMOTEEUID", num, 1);
        snprintf(num, sizeof num, "%u", (unsigned)cred.gid);
        setenv("IPCREMOTEEGID", num, 1);
        snprintf(num, sizeof num, "%d", (int)cred.pid);
        setenv("IPCREMOTEPID", num, 1);
    }
    return 0;
}

int sf_conn_exec(sf_conn *c, char *const argv[])
{
    int rc;

    if (!argv || !argv[0])
        return -EINVAL;
    rc = c->peer.u.sa.sa_family == AF_UNIX ? set_ipc_env(c) : set_tcp_env(c);
    if (rc < 0)
        return rc;
    /* dup2 clears close-on-exec on 0 and 1; the original (fd 3 or so)
     * keeps it and disappears at exec. */
    if (dup2(c->fd, 0) < 0 || dup2(c->fd, 1) < 0)
        return -errno;
    /* Programs written for tcpserver expect the default SIGPIPE. */
    signal(SIGPIPE, SIG_DFL);
    execvp(argv[0], argv);
    rc = -errno;
    signal(SIGPIPE, SIG_IGN);
    return rc;
}
