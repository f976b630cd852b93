/* broker.c - see broker.h. */
#include "server/broker.h"
#include "channel/chanreq.h"
#include "server/server_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#define BROKER_READ_ALL_MAX 4096 /* offers read in one broker_read_all */

/* Gives r's waiting endpoint its channel; fd is closed if r has none
 * waiting. Made non-blocking here, whatever the child sent: the
 * supervisor must never block on a child. */
static void attach(sf_server *s, conn_rec *r, int fd)
{
    (void)s;
    if (fcntl(fd, F_SETFL, O_NONBLOCK) < 0) {
        close(fd);
        return;
    }
    (void)endpoint_attach(&r->ep, fd);
}

static void pending_drop(chan_broker *b, unsigned i)
{
    close(b->pending[i].fd);
    memmove(&b->pending[i], &b->pending[i + 1], sizeof b->pending[0] * (b->npending - i - 1));
    b->npending--;
}

/* Once no start is unanswered, an offer still waiting can be nobody's. */
static void pending_prune(sf_server *s)
{
    chan_broker *b = &s->broker;

    if (s->sup.spawning > 0)
        return;
    while (b->npending > 0)
        pending_drop(b, b->npending - 1);
}

static void take(sf_server *s, pid_t pid, int fd)
{
    chan_broker *b = &s->broker;
    conn_rec *r = sup_child_data(&s->sup, pid);

    if (r && !r->worker) {
        attach(s, r, fd);
        return;
    }
    if (r || s->sup.spawning == 0) {
        close(fd); /* a worker, or a stranger */
        return;
    }
    if (b->npending == BROKER_PENDING_MAX)
        pending_drop(b, 0);
    b->pending[b->npending].pid = pid;
    b->pending[b->npending].fd = fd;
    b->npending++;
}

/* Reads up to max offers; returns how many messages were read. */
static unsigned read_offers(sf_server *s, unsigned max)
{
    unsigned n = 0;

    while (n < max && s->broker.fd >= 0) {
        pid_t pid;
        int fd, rc = chanreq_recv(s->broker.fd, &pid, &fd);

        if (rc < 0)
            break; /* -EAGAIN; anything else: the next wakeup tries again */
        n++;
        if (rc == 1)
            take(s, pid, fd);
    }
    return n;
}

static void broker_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    sf_server *s = w->data;
    (void)loop;
    (void)revents;

    (void)read_offers(s, BROKER_READS);
    pending_prune(s);
}

int broker_init(sf_server *s)
{
    chan_broker *b = &s->broker;
    int sv[2], rc;
    void *m;

    b->fd = b->child_fd = -1;
    b->offered_len = s->opts.max_conns;
    m = mmap(NULL, b->offered_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return -errno;
    b->offered = m;
    if ((rc = chanreq_broker(sv)) < 0) {
        munmap(b->offered, b->offered_len);
        b->offered = NULL;
        return rc;
    }
    b->fd = sv[0];
    b->child_fd = sv[1];
    ev_io_init(&b->io, broker_cb, b->fd, EV_READ);
    b->io.data = s;
    ev_io_start(s->loop, &b->io);
    return 0;
}

void broker_fini(sf_server *s)
{
    chan_broker *b = &s->broker;

    if (b->fd < 0)
        return;
    if (s->loop)
        ev_io_stop(s->loop, &b->io);
    while (b->npending > 0)
        pending_drop(b, b->npending - 1);
    close(b->fd);
    close(b->child_fd);
    b->fd = b->child_fd = -1;
    munmap(b->offered, b->offered_len);
    b->offered = NULL;
}

void broker_started(sf_server *s, conn_rec *r)
{
    chan_broker *b = &s->broker;

    for (unsigned i = 0; i < b->npending; i++) {
        if (b->pending[i].pid == r->pid) {
            attach(s, r, b->pending[i].fd);
            memmove(&b->pending[i], &b->pending[i + 1],
                    sizeof b->pending[0] * (b->npending - i - 1));
            b->npending--;
            break;
        }
    }
    pending_prune(s);
}

unsigned char *broker_flag(sf_server *s, const conn_rec *r)
{
    return &s->broker.offered[r - s->recs];
}

void broker_exited(sf_server *s, conn_rec *r)
{
    if (endpoint_waiting(&r->ep) && __atomic_load_n(broker_flag(s, r), __ATOMIC_ACQUIRE))
        (void)read_offers(s, BROKER_READ_ALL_MAX);
}
