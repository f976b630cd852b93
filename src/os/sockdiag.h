/*
 * sockdiag.h - one NETLINK_SOCK_DIAG dump, the part tcpdiag.c and
 * unixdiag.c share: send the family's request, read the reply to its end,
 * hand each socket's message to a callback.
 */
#ifndef SF_OS_SOCKDIAG_H
#define SF_OS_SOCKDIAG_H

#include <stddef.h>
#include <linux/netlink.h>

/* Called with each SOCK_DIAG_BY_FAMILY message of the dump. Returns 0 to go
 * on, or -errno to stop the dump with that error. */
typedef int (*os_sockdiag_cb)(void *arg, const struct nlmsghdr *h);

/* Sends req (the family's request: inet_diag_req_v2, unix_diag_req...) as
 * a dump request on fd, a NETLINK_SOCK_DIAG socket, and reads the whole
 * reply, at most a bound of messages far above any real table. Returns 0
 * at the dump's end, or -errno (the kernel's, the callback's, -E2BIG past
 * the bound). A socket left mid-dump must be closed, not reused. */
int os_sockdiag_dump(int fd, const void *req, size_t reqlen, os_sockdiag_cb cb, void *arg);

#endif
