/*
 * sockdiag.c - one NETLINK_SOCK_DIAG dump (sockdiag.h).
 */
#include "os/sockdiag.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <linux/sock_diag.h>

#define DIAG_BUF (64 * 1024)
#define DIAG_MAX_MSGS (1 << 22) /* a bound on one dump, far above any table */

static int send_request(int fd, const void *req, size_t reqlen)
{
    struct nlmsghdr nlh;
    struct sockaddr_nl nl = {.nl_family = AF_NETLINK};
    struct iovec iov[2] = {{&nlh, sizeof nlh}, {(void *)req, reqlen}};
    struct msghdr msg = {.msg_name = &nl, .msg_namelen = sizeof nl, .msg_iov = iov, .msg_iovlen = 2};

    memset(&nlh, 0, sizeof nlh);
    nlh.nlmsg_len = (unsigned)(sizeof nlh + reqlen);
    nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    for (;;) {
        ssize_t n = sendmsg(fd, &msg, 0);
        if (n == (ssize_t)nlh.nlmsg_len)
            return 0;
        if (n < 0 && errno == EINTR)
            continue;
        return n < 0 ? -errno : -EIO;
    }
}

/* 1 at the end of the dump, 0 to go on, or -errno. */
static int handle_msg(const struct nlmsghdr *h, os_sockdiag_cb cb, void *arg)
{
    if (h->nlmsg_type == NLMSG_DONE)
        return 1;
    if (h->nlmsg_type == NLMSG_ERROR) {
        const struct nlmsgerr *e = NLMSG_DATA(h);
        if (h->nlmsg_len < NLMSG_LENGTH(sizeof *e))
            return -EIO;
        return e->error ? e->error : 1;
    }
    if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY)
        return 0;
    return cb(arg, h);
}

int os_sockdiag_dump(int fd, const void *req, size_t reqlen, os_sockdiag_cb cb, void *arg)
{
    static char buf[DIAG_BUF] __attribute__((aligned(NLMSG_ALIGNTO)));
    long msgs = 0;
    int rc;

    if ((rc = send_request(fd, req, reqlen)) < 0)
        return rc;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n);
             h = NLMSG_NEXT(h, n)) {
            if (++msgs > DIAG_MAX_MSGS)
                return -E2BIG;
            rc = handle_msg(h, cb, arg);
            if (rc != 0)
                return rc < 0 ? rc : 0;
        }
    }
}
