/*
 * tcpdiag.c - what the kernel knows of many TCP connections at once, read
 * through NETLINK_SOCK_DIAG (the interface behind `ss -ti`).
 *
 * The supervisor does not keep the connections' sockets: holding one
 * descriptor per connection makes every fork() copy, and every child
 * close, the whole descriptor table, so each accept would cost time in
 * proportion to the connections already open. Asking the kernel by
 * address instead costs one dump per poll, whatever the number of forks.
 */
#include "os/os.h"
#include "os/sockdiag.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h> /* RTA_* */
#include <linux/sock_diag.h>
#include <linux/tcp.h> /* not netinet/tcp.h: glibc's struct lacks tcpi_bytes_* */

/* The kernel's TCP states (include/net/tcp_states.h); glibc's names for
 * them live in netinet/tcp.h, which cannot be included beside linux/tcp.h. */
enum {
    ST_ESTABLISHED = 1,
    ST_TIME_WAIT = 6,
    ST_CLOSE = 7,
    ST_CLOSE_WAIT = 8,
    ST_LAST_ACK = 9,
    ST_LISTEN = 10,
    ST_CLOSING = 11,
};

int os_tcpdiag_open(void)
{
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    return fd < 0 ? -errno : fd;
}

static void build_request(struct inet_diag_req_v2 *req, int family, uint16_t local_port)
{
    memset(req, 0, sizeof *req);
    req->sdiag_family = (uint8_t)family;
    req->sdiag_protocol = IPPROTO_TCP;
    req->idiag_ext = 1 << (INET_DIAG_INFO - 1);
    /* Every state a served connection can be in; not listeners, not
     * time-wait (those carry no tcp_info). */
    req->idiag_states = ~((1u << ST_LISTEN) | (1u << ST_TIME_WAIT)) & 0xfff;
    /* The kernel skips sockets whose local port differs. */
    req->id.idiag_sport = htons(local_port);
}

/* Whether the peer's FIN has arrived, which the kernel counts as one byte
 * in tcpi_bytes_received. */
static int fin_received(int state)
{
    return state == ST_CLOSE_WAIT || state == ST_LAST_ACK || state == ST_CLOSING;
}

#define HAS_FIELD(len, f) ((len) >= offsetof(struct tcp_info, f) + sizeof(((struct tcp_info *)0)->f))

static void fill_stats(const struct inet_diag_msg *m, const struct tcp_info *ti, size_t len,
                       os_tcp_stats *st)
{
    st->idle_in_ms = ti->tcpi_last_data_recv;
    st->bytes_in = st->bytes_out = UINT64_MAX;
    /* Older kernels send a shorter struct: the counters came in 4.1
     * (received) and 4.19 (sent, retransmitted). */
    if (HAS_FIELD(len, tcpi_bytes_received)) {
        st->bytes_in = ti->tcpi_bytes_received;
        if (st->bytes_in > 0 && fin_received(m->idiag_state))
            st->bytes_in--;
    }
    /* Everything the application wrote: sent once, or still queued.
     * (Acknowledged bytes would miss a last segment not yet acked.) */
    if (HAS_FIELD(len, tcpi_bytes_retrans))
        st->bytes_out = ti->tcpi_bytes_sent - ti->tcpi_bytes_retrans + ti->tcpi_notsent_bytes;
}

static void fill_addr(sf_addr *a, int family, const __be32 *ip, __be16 port)
{
    memset(a, 0, sizeof *a);
    if (family == AF_INET) {
        a->u.in4.sin_family = AF_INET;
        memcpy(&a->u.in4.sin_addr, ip, 4);
        a->u.in4.sin_port = port;
        a->len = sizeof a->u.in4;
    } else {
        a->u.in6.sin6_family = AF_INET6;
        memcpy(&a->u.in6.sin6_addr, ip, 16);
        a->u.in6.sin6_port = port;
        a->len = sizeof a->u.in6;
    }
}

struct dump {
    int family;
    os_tcpdiag_cb cb;
    void *arg;
};

/* Hands one socket's message to the caller's callback. */
static int handle_msg(void *arg, const struct nlmsghdr *h)
{
    const struct dump *d = arg;
    const struct inet_diag_msg *m;
    const struct rtattr *rta;
    int rtlen;

    if (h->nlmsg_len < NLMSG_LENGTH(sizeof *m))
        return 0;
    m = NLMSG_DATA(h);
    if (m->idiag_family != d->family)
        return 0;
    rta = (const struct rtattr *)(m + 1);
    rtlen = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof *m));
    for (; RTA_OK(rta, rtlen); rta = RTA_NEXT(rta, rtlen)) {
        if (rta->rta_type == INET_DIAG_INFO) {
            struct tcp_info ti;
            size_t len = RTA_PAYLOAD(rta);
            sf_addr local, peer;
            os_tcp_stats st;

            /* Copy: the attribute may be shorter than our struct, and is
             * not aligned for it. */
            memset(&ti, 0, sizeof ti);
            memcpy(&ti, RTA_DATA(rta), len < sizeof ti ? len : sizeof ti);
            fill_stats(m, &ti, len, &st);
            fill_addr(&local, d->family, m->id.idiag_src, m->id.idiag_sport);
            fill_addr(&peer, d->family, m->id.idiag_dst, m->id.idiag_dport);
            d->cb(d->arg, &local, &peer, &st);
        }
    }
    return 0;
}

int os_tcpdiag_dump(int fd, int family, uint16_t local_port, os_tcpdiag_cb cb, void *arg)
{
    struct inet_diag_req_v2 req;
    struct dump d = {family, cb, arg};

    if (family != AF_INET && family != AF_INET6)
        return -EAFNOSUPPORT;
    build_request(&req, family, local_port);
    return os_sockdiag_dump(fd, &req, sizeof req, handle_msg, &d);
}
