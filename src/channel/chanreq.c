/* chanreq.c - see chanreq.h. */
#include "channel/chanreq.h"
#include "channel/fdpass.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define CHANREQ_MAGIC "SFC1"
#define CHANREQ_LEN 4
#define CHANREQ_FDS_SEEN 4 /* room for more than one, so that extras are seen and closed */

int chanreq_broker(int sv[2])
{
    int on = 1, e;

    if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    if (setsockopt(sv[0], SOL_SOCKET, SO_PASSCRED, &on, sizeof on) == 0 &&
        fcntl(sv[0], F_SETFL, O_NONBLOCK) == 0)
        return 0;
    e = errno;
    close(sv[0]);
    close(sv[1]);
    sv[0] = sv[1] = -1;
    return -e;
}

int chanreq_open(int broker)
{
    struct iovec iov = {(void *)CHANREQ_MAGIC, CHANREQ_LEN};
    int sv[2];
    ssize_t n;

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    /* No SCM_CREDENTIALS of ours: the receiver's SO_PASSCRED makes the
     * kernel attach the real ones. */
    n = fdpass_send(broker, &iov, 1, &sv[1], 1, 0);
    close(sv[1]);
    if (n < 0) {
        close(sv[0]);
        return (int)n;
    }
    return sv[0];
}

/* Closes every descriptor a message brought. */
static void close_passed(struct msghdr *msg)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < n; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            close(fd);
        }
    }
}

int chanreq_recv(int sock, pid_t *pid, int *fd)
{
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int) * CHANREQ_FDS_SEEN)];
    } ctl;
    unsigned char buf[CHANREQ_LEN + 1];
    struct iovec iov = {buf, sizeof buf};
    struct msghdr msg;
    struct ucred cred;
    int got_cred = 0, nfds = 0, passed = -1;
    ssize_t n;

    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl.space;
    msg.msg_controllen = sizeof ctl.space;
    do
        n = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET)
            continue;
        if (c->cmsg_type == SCM_CREDENTIALS && c->cmsg_len == CMSG_LEN(sizeof cred)) {
            memcpy(&cred, CMSG_DATA(c), sizeof cred);
            got_cred = 1;
        } else if (c->cmsg_type == SCM_RIGHTS) {
            size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            if (k >= 1)
                memcpy(&passed, CMSG_DATA(c), sizeof passed);
            nfds += (int)k;
        }
    }
    if (n != CHANREQ_LEN || memcmp(buf, CHANREQ_MAGIC, CHANREQ_LEN) != 0 || !got_cred ||
        cred.pid <= 0 || nfds != 1 || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
        close_passed(&msg);
        return 0;
    }
    *pid = cred.pid;
    *fd = passed;
    return 1;
}
