/*
 * notify.c - telling systemd how we are (sd_notify's protocol: one
 * datagram of KEY=VALUE lines to the socket named by NOTIFY_SOCKET).
 *
 * Why not libsystemd's sd_notify: it finds the socket in the environment at
 * each call, and the environment is what every child inherits, exec'd
 * programs included. A program serving one connection must not be able to
 * say READY=1 or STOPPING=1 for the whole service (with NotifyAccess=all
 * systemd would believe it), so the variables are taken out of the
 * environment at start and the socket is kept here. The protocol is a
 * single sendto on a datagram socket; `@` names an abstract socket.
 */
#include "os/os.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

int os_notify_init(os_notify *n)
{
    const char *path = getenv("NOTIFY_SOCKET");
    const char *wusec = getenv("WATCHDOG_USEC"), *wpid = getenv("WATCHDOG_PID");
    size_t len;

    memset(n, 0, sizeof *n);
    n->fd = -1;
    if (wusec && (!wpid || strtol(wpid, NULL, 10) == (long)getpid())) {
        char *end;
        unsigned long long us = strtoull(wusec, &end, 10);
        if (*end == '\0' && us > 0)
            n->watchdog_s = (double)us / 1e6;
    }
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    if (!path || (path[0] != '/' && path[0] != '@'))
        return 0; /* not under systemd (or an address we do not speak) */
    len = strlen(path);
    if (len >= sizeof n->addr.sun_path)
        return -ENAMETOOLONG;
    n->addr.sun_family = AF_UNIX;
    memcpy(n->addr.sun_path, path, len);
    if (path[0] == '@')
        n->addr.sun_path[0] = '\0'; /* abstract: no NUL at its end */
    n->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    return n->fd < 0 ? -errno : 1;
}

int os_notify_send(const os_notify *n, const char *text)
{
    if (n->fd < 0)
        return 0;
    if (sendto(n->fd, text, strlen(text), MSG_NOSIGNAL, (const struct sockaddr *)&n->addr,
               n->addr_len) < 0)
        return -errno;
    return 0;
}

void os_notify_fini(os_notify *n)
{
    if (n->fd >= 0)
        close(n->fd);
    n->fd = -1;
}
