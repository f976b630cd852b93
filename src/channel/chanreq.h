/*
 * chanreq.h - a child's channel, made at its first use.
 *
 * A forked child of fork mode does not get a channel with its connection:
 * most handlers (an echo, a request and its answer) never use one, and
 * each cost the supervisor a socketpair, an epoll registration, two
 * closes and a wakeup at the child's exit. Instead every such child
 * inherits one end of the server's *broker*, a SOCK_DGRAM socketpair made
 * once. At its first use of the channel the child makes its own pair and
 * sends one end over the broker; the kernel stamps the message with the
 * sender's pid (SO_PASSCRED on the supervisor's end), so the supervisor
 * knows whose channel it is without trusting what the child says.
 * docs/design.md, "What a fork costs".
 */
#ifndef SF_CHANNEL_CHANREQ_H
#define SF_CHANNEL_CHANREQ_H

#include <sys/types.h>

/* Makes the broker: sv[0] the supervisor's end (non-blocking, close-on-exec,
 * SO_PASSCRED), sv[1] the children's (close-on-exec, blocking: a child
 * waits while the supervisor's queue is full). Returns 0 or -errno, with
 * nothing left open on failure. */
int chanreq_broker(int sv[2]);

/* In a child: makes a channel (a SOCK_STREAM pair), hands one end to the
 * supervisor over `broker` and returns the other (blocking,
 * close-on-exec), or -errno with nothing left open. */
int chanreq_open(int broker);

/*
 * In the supervisor: takes one offer from the broker without blocking.
 * Returns 1 with *pid the sender (as the kernel says) and *fd the
 * channel's supervisor end (close-on-exec, still blocking: the caller sets
 * what it needs); 0 for a message that is not an offer (wrong size or
 * magic, no credentials, not exactly one descriptor: whatever came with
 * it is closed); -EAGAIN when there is none; or -errno.
 */
int chanreq_recv(int sock, pid_t *pid, int *fd);

#endif
