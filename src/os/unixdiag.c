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
#include "os/sockdiag.h"

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

/* The kernel reports the file's device in its own encoding (major << 20 |
 * minor) and the inode's low 32 bits. */
static int same_file(const struct unix_diag_vfs *v, dev_t dev, ino_t ino)
{
    return v->udiag_vfs_ino == (uint32_t)ino && (v->udiag_vfs_dev >> 20) == major(dev) &&
           (v->udiag_vfs_dev & 0xfffff) == minor(dev);
}

struct want {
    dev_t dev;
    ino_t ino;
    int found;
};

/* Notes whether this listener is bound to the file we look for. */
static int handle_msg(void *arg, const struct nlmsghdr *h)
{
    struct want *w = arg;
    const struct unix_diag_msg *m;
    const struct rtattr *rta;
    int rtlen;

    if (h->nlmsg_len < NLMSG_LENGTH(sizeof *m))
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
        if (same_file(&v, w->dev, w->ino))
            w->found = 1;
    }
    return 0;
}

int os_unix_listening(dev_t dev, ino_t ino)
{
    struct unix_diag_req req;
    struct want w = {dev, ino, 0};
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    int rc;

    if (fd < 0)
        return -errno;
    memset(&req, 0, sizeof req);
    req.sdiag_family = AF_UNIX;
    req.udiag_states = 1u << ST_LISTEN;
    req.udiag_show = UDIAG_SHOW_VFS;
    /* The whole dump is read even after a match: a socket left mid-dump is
     * closed anyway, and the dump is short (listeners only). */
    rc = os_sockdiag_dump(fd, &req, sizeof req, handle_msg, &w);
    close(fd);
    return rc < 0 ? rc : w.found;
}
