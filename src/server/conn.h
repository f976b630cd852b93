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
};

#endif
