/* listener.c - TCP (v4, v6) and Unix listening sockets. */
#include "server/listener.h"
#include "os/os.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/*
 * A path that exists may be a socket left by a server that died without
 * cleaning up: if nobody accepts on it, it is stale and may be replaced.
 * Anything that is not a socket is never removed. The kernel is asked
 * first whether a socket listens there: connecting to a live server to
 * find out would make it accept, serve and log a connection nobody made.
 * Only if it says no (or cannot say) does a connect confirm it, since it
 * sees only this network namespace's sockets.
 */
static int unix_path_is_stale(const struct sockaddr_un *un, socklen_t len)
{
    struct stat st;
    int fd, rc, stale;

    if (un->sun_path[0] == '\0')
        return 0; /* abstract: no file */
    if (lstat(un->sun_path, &st) < 0 || !S_ISSOCK(st.st_mode))
        return 0;
    if (os_unix_listening(st.st_dev, st.st_ino) == 1)
        return 0;
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    rc = connect(fd, (const struct sockaddr *)un, len);
    stale = rc < 0 && errno == ECONNREFUSED;
    close(fd);
    return stale;
}

/* The umask decides a Unix socket file's mode at bind; set it for that
 * call only (the supervisor is single-threaded here). */
static int bind_with_mode(int fd, const sf_addr *a, mode_t unix_mode)
{
    mode_t old = 0;
    int rc, e;

    if (a->u.sa.sa_family == AF_UNIX && unix_mode)
        old = umask((mode_t)(~unix_mode & 0777));
    rc = bind(fd, &a->u.sa, a->len);
    e = errno;
    if (a->u.sa.sa_family == AF_UNIX && unix_mode)
        umask(old);
    errno = e;
    return rc;
}

int listener_open(listener *l, const sf_addr *a, int backlog, mode_t unix_mode)
{
    int fam = a->u.sa.sa_family;
    int one = 1;
    int fd = -1, rc;
    struct stat st;

    memset(l, 0, sizeof *l);
    l->fd = -1;
    fd = socket(fam, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        goto fail;
    if (fam == AF_INET || fam == AF_INET6) {
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
            goto fail;
        /* v6 listeners take v6 only, so [::]:P and 0.0.0.0:P can coexist. */
        if (fam == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) < 0)
            goto fail;
    }
    rc = bind_with_mode(fd, a, unix_mode);
    if (rc < 0 && errno == EADDRINUSE && fam == AF_UNIX) {
        if (lstat(a->u.un.sun_path, &st) == 0 && !S_ISSOCK(st.st_mode) && a->u.un.sun_path[0]) {
            errno = EEXIST;
            goto fail;
        }
        if (unix_path_is_stale(&a->u.un, a->len)) {
            (void)unlink(a->u.un.sun_path);
            rc = bind_with_mode(fd, a, unix_mode);
        } else {
            errno = EADDRINUSE;
        }
    }
    if (rc < 0)
        goto fail;
    if (fam == AF_UNIX && a->u.un.sun_path[0] && lstat(a->u.un.sun_path, &st) == 0) {
        l->owns_path = 1;
        l->path_dev = st.st_dev;
        l->path_ino = st.st_ino;
    }
    /* Linux clamps the backlog to net.core.somaxconn: asking for INT_MAX
     * gets the system maximum. A small backlog makes clients under load
     * wait for SYN retransmissions (1 s, then 3 s). */
    if (listen(fd, backlog > 0 ? backlog : INT_MAX) < 0)
        goto fail;
    l->addr = *a;
    if (fam != AF_UNIX) {
        l->addr.len = sizeof l->addr.u;
        if (getsockname(fd, &l->addr.u.sa, &l->addr.len) < 0)
            goto fail;
    }
    l->fd = fd;
    return 0;

fail:
    rc = -errno;
    if (fd >= 0) {
        if (l->owns_path)
            (void)unlink(a->u.un.sun_path);
        close(fd);
    }
    l->owns_path = 0;
    return rc;
}

void listener_close(listener *l)
{
    struct stat st;

    if (l->fd < 0)
        return;
    /* Only remove the path if it is still the socket we bound: another
     * server may have replaced it since. */
    if (l->owns_path && lstat(l->addr.u.un.sun_path, &st) == 0 && st.st_dev == l->path_dev &&
        st.st_ino == l->path_ino)
        (void)unlink(l->addr.u.un.sun_path);
    l->owns_path = 0;
    close(l->fd);
    l->fd = -1;
}

int listener_local_addr(const sf_addr *addr, int fd, sf_addr *local)
{
    *local = *addr;
    if ((addr->u.sa.sa_family == AF_INET && addr->u.in4.sin_addr.s_addr == htonl(INADDR_ANY)) ||
        (addr->u.sa.sa_family == AF_INET6 && IN6_IS_ADDR_UNSPECIFIED(&addr->u.in6.sin6_addr))) {
        local->len = sizeof local->u;
        if (getsockname(fd, &local->u.sa, &local->len) < 0)
            return -errno;
    }
    return 0;
}

int listener_adopt(listener *l, int fd)
{
    int type = 0, listening = 0, fl;
    socklen_t len = sizeof type;

    memset(l, 0, sizeof *l);
    l->fd = -1;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
        return -errno;
    len = sizeof listening;
    if (type != SOCK_STREAM ||
        getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0 || !listening)
        return -EINVAL;
    l->adopted = 1;
    l->addr.len = sizeof l->addr.u;
    if (getsockname(fd, &l->addr.u.sa, &l->addr.len) < 0)
        return -errno;
    if (l->addr.u.sa.sa_family != AF_INET && l->addr.u.sa.sa_family != AF_INET6 &&
        l->addr.u.sa.sa_family != AF_UNIX)
        return -EINVAL;
    if ((fl = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ||
        fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
        return -errno;
    l->fd = fd;
    return 0;
}
