/* tcpinfo.c - byte counts and idle time of a TCP socket (Linux TCP_INFO). */
#include "os/os.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <linux/tcp.h> /* not netinet/tcp.h: glibc's struct lacks tcpi_bytes_* */

int os_tcp_stats_get(int fd, os_tcp_stats *out)
{
    struct tcp_info ti;
    socklen_t len = sizeof ti;

    memset(&ti, 0, sizeof ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
        return errno == EOPNOTSUPP || errno == ENOPROTOOPT ? -ENOTSUP : -errno;
    out->idle_in_ms = ti.tcpi_last_data_recv;
    /* Kernels before 4.1 return a shorter struct without the counters. */
    if (len >= offsetof(struct tcp_info, tcpi_bytes_received) + sizeof ti.tcpi_bytes_received) {
        out->bytes_in = ti.tcpi_bytes_received;
        out->bytes_out = ti.tcpi_bytes_acked;
    } else {
        out->bytes_in = out->bytes_out = UINT64_MAX;
    }
    return 0;
}
