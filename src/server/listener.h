/* listener.h - one listening socket. */
#ifndef SF_LISTENER_H
#define SF_LISTENER_H

#include <ev.h>
#include <sys/types.h>

#include "sockfork.h"

typedef struct listener {
    int fd;
    sf_addr addr;       /* the bound address, port 0 resolved */
    dev_t path_dev;     /* Unix: the socket file we created, to remove */
    ino_t path_ino;     /*   only that one at close */
    int owns_path;
    int proxy;          /* clients come with a PROXY protocol header (",proxy") */
    int adopted;        /* given as a descriptor (systemd's), not bound by us */
    ev_io io;
} listener;

/*
 * Creates a non-blocking, close-on-exec socket bound to `a` and listening.
 * backlog <= 0 asks for the system maximum. unix_mode, if not 0, is the
 * permission of a Unix socket file from its creation on (no window with
 * wider ones). Returns 0 or -errno
 * (-EADDRINUSE for a port or live Unix socket in use, -EEXIST for a path
 * that exists and is not a socket).
 */
int listener_open(listener *l, const sf_addr *a, int backlog, mode_t unix_mode);

/* Takes a socket that is already listening (systemd's socket activation,
 * or one inherited): a stream socket in the listen state, TCP or Unix. It
 * is made non-blocking and close-on-exec; its Unix path, if any, is not
 * ours to remove. Returns 0, -ENOTSOCK, -EINVAL (not a listening stream
 * socket, or a family we do not serve) or -errno. */
int listener_adopt(listener *l, int fd);

/* A connection's own local address: the listener's `addr`, unless that is
 * a wildcard (then one getsockname on fd, only for those). Returns 0 or
 * -errno (the client is gone already: ENOTCONN). */
int listener_local_addr(const sf_addr *addr, int fd, sf_addr *local);

/* Closes the socket and removes the Unix path if it is still ours. */
void listener_close(listener *l);

#endif
