/* tcpinfo.c - byte counts and idle time of a TCP socket (Linux TCP_INFO). */
#include "os/os.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <linux/tcp.h> /* not netinet/tcp.h: glibc's struct lacks tcpi_bytes_* */

/* The kernel's TCP states (include/net/tcp_states.h); glibc's names for
 * them live in netinet/tcp.h, which cannot be included beside linux/tcp.h. */
enum {
    ST_TIME_WAIT = 6,
    ST_CLOSE = 7,
    ST_CLOSE_WAIT = 8,
    ST_LAST_ACK = 9,
    ST_CLOSING = 11,
};

/* Whether the peer's FIN has arrived, which the kernel counts as one byte
 * in tcpi_bytes_received. */
static int fin_received(int fd, int state)
{
    int err = 0;
    socklen_t len = sizeof err;

    switch (state) {
    case ST_CLOSE_WAIT:
    case ST_LAST_ACK:
    case ST_CLOSING:
    case ST_TIME_WAIT:
        return 1;
    case ST_CLOSE:
        /* Closed by a FIN after ours, or by a reset: only a reset leaves
         * an error behind. */
        return getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0;
    default:
        return 0;
    }
}

#define HAS_FIELD(len, f) ((len) >= offsetof(struct tcp_info, f) + sizeof(((struct tcp_info *)0)->f))

int os_tcp_stats_get(int fd, os_tcp_stats *out)
{
    struct tcp_info ti;
    socklen_t len = sizeof ti;

    memset(&ti, 0, sizeof ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
        return errno == EOPNOTSUPP || errno == ENOPROTOOPT ? -ENOTSUP : -errno;
    out->idle_in_ms = ti.tcpi_last_data_recv;
    out->bytes_in = out->bytes_out = UINT64_MAX;
    /* Older kernels return a shorter struct: the counters came in 4.1
     * (received) and 4.19 (sent, retransmitted). */
    if (HAS_FIELD(len, tcpi_bytes_received)) {
        out->bytes_in = ti.tcpi_bytes_received;
        if (out->bytes_in > 0 && fin_received(fd, ti.tcpi_state))
            out->bytes_in--;
    }
    /* Everything the application wrote: sent once, or still waiting in
     * the send queue. (Acknowledged bytes would miss the last segment,
     * which the peer may not have acknowledged yet.) */
    if (HAS_FIELD(len, tcpi_bytes_retrans))
        out->bytes_out = ti.tcpi_bytes_sent - ti.tcpi_bytes_retrans + ti.tcpi_notsent_bytes;
    return 0;
}
