/* conn.h - what a child knows of its connection. */
#ifndef SF_CONN_H
#define SF_CONN_H

#include "sockfork.h"
#include "channel/frame.h"

struct sf_conn {
    int fd;
    int chan;             /* the channel's child end */
    chan_reader reader;   /* what was read of it past the last message */
    sf_addr peer;   /* for Unix connections: the listener's path */
    sf_addr local;
    /* Fork mode: local is asked of the kernel (getsockname) at its first
     * use, if any (conn_local). */
    int local_unknown;
    /* A prefork worker's (worker.c): called before every use of the
     * channel, so that the connection's first use opens it (tells the
     * supervisor); 0 or -errno. NULL in fork mode. */
    int (*open_channel)(void *arg);
    void *open_arg;
    const char *env;      /* the access rule's "KEY=VALUE\0" pairs, env_len bytes */
    size_t env_len;
    int out_open;         /* sf_conn_out_open was sent for this connection */
};

/* The open_channel hook, if any. */
static inline int conn_channel_open(const sf_conn *c)
{
    return c->open_channel ? c->open_channel(c->open_arg) : 0;
}

#endif
