/*
 * unixdiag.c - whether a Unix socket file has a listener, asked of the
 * kernel (NETLINK_SOCK_DIAG, AF_UNIX: the interface behind `ss -xl`)
 * rather than found out by connecting.
 *
 * A server finding its path taken must tell a live server from a file left
 * by one that died. Connecting tells them apart, but the live server then
 * accepts the probe, starts a child for it and logs a connection nobody
 * made. The kernel can say instead which listening sockets are bound to
 * which file (device and inode), touching nobody.
 */
#include "os/os.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h> /* RTA_* */
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>

#define ST_LISTEN 10 /* the kernel's TCP_LISTEN, which Unix sockets share */
#define DIAG_BUF (32 * 1024)
#define DIAG_MAX_MSGS (1 << 22)

static int send_request(int fd)
{
    struct {
        struct nlmsghdr nlh;
        struct unix_diag_req req;
    } msg;
    struct sockaddr_nl nl = {.nl_family = AF_NETLINK};

    memset(&msg, 0, sizeof msg);
    msg.nlh.nlmsg_len = sizeof msg;
    msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    msg.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    msg.req.sdiag_family = AF_UNIX;
    msg.req.udiag_states = 1u << ST_LISTEN;
    msg.req.udiag_show = UDIAG_SHOW_VFS;
    for (;;) {
        ssize_t n = sendto(fd, &msg, sizeof msg, 0, (struct sockaddr *)&nl, sizeof nl);
        if (n == (ssize_t)sizeof msg)
            return 0;
        if (n < 0 && errno == EINTR)
            continue;
        return n < 0 ? -errno : -EIO;
    }
}

/* The kernel reports the file's device in its own encoding (major << 20 |
 * minor) and the inode's low 32 bits. */
static int same_file(const struct unix_diag_vfs *v, dev_t dev, ino_t ino)
{
    return v->udiag_vfs_ino == (uint32_t)ino && (v->udiag_vfs_dev >> 20) == major(dev) &&
           (v->udiag_vfs_dev & 0xfffff) == minor(dev);
}

/* 1: a listener on the file, 0: not this message, -errno: error; 2: done. */
static int handle_msg(const struct nlmsghdr *h, dev_t dev, ino_t ino)
{
    const struct unix_diag_msg *m;
    const struct rtattr *rta;
    int rtlen;

    if (h->nlmsg_type == NLMSG_DONE)
        return 2;
    if (h->nlmsg_type == NLMSG_ERROR) {
        const struct nlmsgerr *e = NLMSG_DATA(h);
        if (h->nlmsg_len < NLMSG_LENGTH(sizeof *e))
            return -EIO;
        return e->error ? e->error : 2;
    }
    if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY || h->nlmsg_len < NLMSG_LENGTH(sizeof *m))
        return 0;
    m = NLMSG_DATA(h);
    if (m->udiag_state != ST_LISTEN)
        return 0;
    rta = (const struct rtattr *)(m + 1);
    rtlen = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof *m));
    for (; RTA_OK(rta, rtlen); rta = RTA_NEXT(rta, rtlen)) {
        struct unix_diag_vfs v;
        if (rta->rta_type != UNIX_DIAG_VFS || RTA_PAYLOAD(rta) < sizeof v)
            continue;
        memcpy(&v, RTA_DATA(rta), sizeof v);
        if (same_file(&v, dev, ino))
            return 1;
    }
    return 0;
}

/* Reads the whole dump (a socket left mid-dump is closed anyway). */
static int scan(int fd, dev_t dev, ino_t ino)
{
    static char buf[DIAG_BUF] __attribute__((aligned(NLMSG_ALIGNTO)));
    long msgs = 0;
    int found = 0, rc;

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
            rc = handle_msg(h, dev, ino);
            if (rc < 0)
                return rc;
            if (rc == 2)
                return found;
            found |= rc;
        }
    }
}

int os_unix_listening(dev_t dev, ino_t ino)
{
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    int rc;

    if (fd < 0)
        return -errno;
    rc = send_request(fd);
    if (rc == 0)
        rc = scan(fd, dev, ino);
    close(fd);
    return rc;
}
