/* fdpass.c - see fdpass.h. */
#include "channel/fdpass.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

ssize_t fdpass_send(int sock, const struct iovec *iov, int niov, const int *fds, int nfds, int flags)
{
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(int) * FDPASS_MAX)];
    } ctl;
    struct msghdr msg;
    ssize_t n;

    if (nfds < 0 || nfds > FDPASS_MAX)
        return -EINVAL;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = (struct iovec *)iov;
    msg.msg_iovlen = (size_t)niov;
    if (nfds > 0) {
        memset(&ctl, 0, sizeof ctl);
        msg.msg_control = ctl.space;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    do
        n = sendmsg(sock, &msg, flags | MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    return n;
}

ssize_t fdpass_recv(int sock, void *buf, size_t len, int flags, int *fds, int max, int *nfds,
                    int *lost)
{
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(int) * FDPASS_MAX)];
    } ctl;
    struct iovec iov = {buf, len};
    struct msghdr msg;
    ssize_t n;

    *nfds = 0;
    *lost = 0;
    do {
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctl.space;
        msg.msg_controllen = sizeof ctl.space;
        n = recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            if (*nfds < max) {
                fds[(*nfds)++] = fd;
            } else {
                close(fd);
                *lost = 1;
            }
        }
    }
    if (msg.msg_flags & MSG_CTRUNC)
        *lost = 1;
    return n;
}
