/*
 * broker.h - fork mode's channels made at their first use (the supervisor's
 * side of channel/chanreq.h).
 *
 * A forked child gets its connection and the children's end of the broker;
 * its endpoint is opened without a descriptor (ENDPOINT_FD_LATER), so that
 * `ctl send PID` and every other message to it is queued as before, and
 * goes out once the child has made its channel and handed us its end. A
 * child that never uses its channel costs no socketpair, no epoll
 * registration, no close and no wakeup at its exit.
 *
 * The child's offer and the spawner's STARTED travel on two sockets, so an
 * offer may come first: it waits in a short list (`pending`) while starts
 * are unanswered. An offer from a pid that is no child of ours (a process
 * the handler forked, which inherited the broker) is closed: its sender
 * sees its channel end.
 */
#ifndef SF_SERVER_BROKER_H
#define SF_SERVER_BROKER_H

#include <ev.h>
#include <sys/types.h>

#define BROKER_PENDING_MAX 256 /* offers ahead of their STARTED; at the bound the
                                * oldest is closed */
#define BROKER_READS 64        /* offers taken per wakeup */

typedef struct broker_offer {
    pid_t pid;
    int fd;
} broker_offer;

typedef struct chan_broker {
    int fd;               /* ours: non-blocking, SO_PASSCRED; -1 without a broker */
    int child_fd;         /* the children's end, the spawner's shared_fd */
    /* One byte per record, shared with the children (MAP_SHARED, made
     * before the spawner): a child sets its own before it sends its offer,
     * so that at its exit the broker is read only if an offer may wait
     * there (a system call per connection saved). */
    unsigned char *offered;
    size_t offered_len;
    ev_io io;
    broker_offer pending[BROKER_PENDING_MAX];
    unsigned npending;
} chan_broker;

struct sf_server;
struct conn_rec;

/* Makes the broker (fork mode with a C handler). 0 or -errno. */
int broker_init(struct sf_server *s);
void broker_fini(struct sf_server *s);
/* r's child has started and its endpoint waits: an offer already here is
 * its channel. */
void broker_started(struct sf_server *s, struct conn_rec *r);
/* Before r's exit is handled: if its child made a channel, the offer was
 * sent before it exited and may hold its last words, so every offer queued
 * now is taken. */
void broker_exited(struct sf_server *s, struct conn_rec *r);
/* The flag r's child sets before its offer, cleared (before it starts). */
unsigned char *broker_flag(struct sf_server *s, const struct conn_rec *r);

#endif
