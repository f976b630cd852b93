/* conn.h - what a child knows of its connection. */
#ifndef SF_CONN_H
#define SF_CONN_H

#include "sockfork.h"

struct sf_conn {
    int fd;
    sf_addr peer;   /* for Unix connections: the listener's path */
    sf_addr local;
};

#endif
