/*
 * fdpass.h - sendmsg and recvmsg with descriptors (SCM_RIGHTS), the one
 * place that builds and reads the control messages: the channel's frames
 * and the spawner's requests both pass descriptors this way.
 */
#ifndef SF_CHANNEL_FDPASS_H
#define SF_CHANNEL_FDPASS_H

#include <sys/types.h>
#include <sys/uio.h>

#define FDPASS_MAX 68 /* descriptors one message can carry (a spawn request: a prefork
                      * worker's listeners and channel) */

/* One sendmsg of iov[0..niov) with fds[0..nfds) attached (nfds may be 0),
 * MSG_NOSIGNAL added to flags, EINTR retried. Returns the bytes sent or
 * -errno (-EAGAIN for EWOULDBLOCK too); -EINVAL for more than FDPASS_MAX. */
ssize_t fdpass_send(int sock, const struct iovec *iov, int niov, const int *fds, int nfds, int flags);

/*
 * One recvmsg into buf, MSG_CMSG_CLOEXEC added to flags, EINTR retried.
 * Descriptors received go to fds (up to max, *nfds set); any beyond max,
 * or lost to a truncated control message, are closed and *lost set to 1.
 * Returns the bytes read (0 at EOF) or -errno (-EAGAIN for EWOULDBLOCK).
 */
ssize_t fdpass_recv(int sock, void *buf, size_t len, int flags, int *fds, int max, int *nfds,
                    int *lost);

#endif
