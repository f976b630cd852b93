/* bus_link.c - see bus_link.h. */
#include "supervisor/bus_link.h"
#include "supervisor/bus_bridge.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

struct bus_link {
    bus *bus;
    bus_bridge br;
    int fd;                     /* -1 once down */
    ev_io rd, wr;
    ev_timer end;               /* ends a link cut inside a bus call (see cut) */
    chan_decoder dec;
    unsigned char *out;         /* the outbox: bytes [out_start, out_end) wait */
    size_t out_start, out_end, out_cap, out_max;
    const char *why;            /* set once cut: why */
    uint64_t frames_in, frames_out;
    bus_link_down_cb on_down;
    void *arg;
};

/* ------------------------------------------------------------ ending */

/* Stops everything and drops the peer's state (publishing its wills). */
static void stop(bus_link *l)
{
    struct ev_loop *loop = l->bus->loop;

    ev_io_stop(loop, &l->rd);
    ev_io_stop(loop, &l->wr);
    ev_timer_stop(loop, &l->end);
    bus_bridge_stop(&l->br);
    if (l->fd >= 0) {
        close(l->fd);
        l->fd = -1;
    }
}

static void end_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    bus_link *l = w->data;
    (void)loop;
    (void)revents;

    stop(l);
    if (l->on_down)
        l->on_down(l, l->why, l->arg); /* the last thing: it may free l */
}

/*
 * Cuts the link. It may be cut inside a call of the bus's (a frame that
 * does not fit the outbox, queued from a bus hook while the bus walks its
 * tables): the peer's state and the bridge must stay as they are until
 * that call returns, so the end runs from the loop, at once after. Until
 * then nothing more is read or written.
 */
static void cut(bus_link *l, const char *why)
{
    if (l->why)
        return;
    l->why = why;
    ev_io_stop(l->bus->loop, &l->rd);
    ev_io_stop(l->bus->loop, &l->wr);
    ev_timer_set(&l->end, 0, 0);
    ev_timer_start(l->bus->loop, &l->end);
}

/* ------------------------------------------------------------ outbox */

static size_t outbox_bytes(const bus_link *l)
{
    return l->out_end - l->out_start;
}

/* Room for n more bytes at out_end, within out_max. Returns 0 or -ENOBUFS. */
static int outbox_room(bus_link *l, size_t n)
{
    size_t have = outbox_bytes(l), cap;
    unsigned char *p;

    if (have + n > l->out_max)
        return -ENOBUFS;
    if (l->out_start > 0 && l->out_end + n > l->out_cap) {
        memmove(l->out, l->out + l->out_start, have);
        l->out_start = 0;
        l->out_end = have;
    }
    if (l->out_end + n <= l->out_cap)
        return 0;
    cap = l->out_cap ? l->out_cap : 4096;
    while (cap < l->out_end + n)
        cap *= 2;
    if (cap > l->out_max)
        cap = l->out_max;
    if (!(p = realloc(l->out, cap)))
        return -ENOBUFS;
    l->out = p;
    l->out_cap = cap;
    return 0;
}

static int link_out(void *arg, uint16_t type, const void *head, size_t head_len, const void *data,
                    size_t data_len)
{
    bus_link *l = arg;
    size_t len = head_len + data_len;
    unsigned char *p;

    if (l->why)
        return -EPIPE;
    if (len > CHAN_MAX_LIMIT || outbox_room(l, CHAN_HDR_LEN + len) < 0) {
        cut(l, "its outbox is full (the peer does not read it)");
        return -ENOBUFS;
    }
    p = l->out + l->out_end;
    chan_header_encode(p, type, 0, (uint32_t)len);
    if (head_len)
        memcpy(p + CHAN_HDR_LEN, head, head_len);
    if (data_len)
        memcpy(p + CHAN_HDR_LEN + head_len, data, data_len);
    l->out_end += CHAN_HDR_LEN + len;
    l->frames_out++;
    /* Written when the loop next looks: what one round of events queues
     * goes out in as few writes as it takes. */
    ev_io_start(l->bus->loop, &l->wr);
    return 0;
}

/* Writes what the socket takes, a chunk at a time (a SOCK_SEQPACKET
 * record each). Returns 1 when empty, 0 when the rest must wait, -errno. */
static int flush(bus_link *l)
{
    while (outbox_bytes(l) > 0) {
        size_t n = outbox_bytes(l) < BUS_LINK_CHUNK ? outbox_bytes(l) : BUS_LINK_CHUNK;
        ssize_t w = send(l->fd, l->out + l->out_start, n, MSG_DONTWAIT | MSG_NOSIGNAL);

        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (w < 0)
            return -errno;
        l->out_start += (size_t)w;
    }
    l->out_start = l->out_end = 0;
    if (l->out_cap > BUS_LINK_CHUNK) {
        free(l->out); /* a burst is over: give the memory back */
        l->out = NULL;
        l->out_cap = 0;
    }
    return 1;
}

static void wr_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    bus_link *l = w->data;
    int rc = flush(l);
    (void)revents;

    if (rc == 1)
        ev_io_stop(loop, w);
    else if (rc < 0)
        cut(l, "writing to the peer failed");
}

/* ------------------------------------------------------------ reading */

/* Reads one chunk and hands its frames to the bridge. */
static void rd_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    bus_link *l = w->data;
    unsigned char buf[BUS_LINK_CHUNK];
    struct iovec iov = {buf, sizeof buf};
    struct msghdr mh;
    const unsigned char *p = buf;
    ssize_t n;
    (void)loop;
    (void)revents;

    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    n = recvmsg(l->fd, &mh, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    if (n <= 0) {
        cut(l, n == 0 ? "the peer closed the link" : "reading from the peer failed");
        return;
    }
    if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        cut(l, "the peer sent a record too long, or a descriptor");
        return;
    }
    while (n > 0 && !l->why) {
        size_t used = 0;
        chan_frame f;
        int rc = chan_decoder_feed(&l->dec, p, (size_t)n, &used, &f);

        p += used;
        n -= (ssize_t)used;
        if (rc == 0)
            break;
        if (rc < 0) {
            cut(l, "the peer sent what is not a frame");
            break;
        }
        l->frames_in++;
        rc = bus_bridge_input(&l->br, f.type, f.payload, f.len);
        free(f.payload);
        if (rc == -ENOSPC)
            cut(l, "the peer holds more than the bridge keeps");
        else if (rc < 0)
            cut(l, "the peer sent a frame out of the protocol");
    }
}

/* ------------------------------------------------------------ life */

int bus_link_open(bus *b, int fd, const bus_link_opts *opts, bus_link **out)
{
    bus_link *l = NULL;
    int fl, rc;

    *out = NULL;
    if (b->bridge) {
        rc = -EBUSY;
        goto fail;
    }
    if ((fl = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        rc = -errno;
        goto fail;
    }
    if (!(l = calloc(1, sizeof *l))) {
        rc = -ENOMEM;
        goto fail;
    }
    l->bus = b;
    l->fd = fd;
    l->out_max = opts->outbox_max ? opts->outbox_max : BUS_LINK_OUTBOX_DEFAULT;
    l->on_down = opts->on_down;
    l->arg = opts->arg;
    if ((rc = bus_bridge_init(&l->br, b, opts->rank, opts->share_history ? l->out_max / 2 : 0,
                              link_out, l)) < 0)
        goto fail;
    chan_decoder_init(&l->dec, CHAN_MAX_LIMIT);
    ev_io_init(&l->rd, rd_cb, fd, EV_READ);
    ev_io_init(&l->wr, wr_cb, fd, EV_WRITE);
    ev_init(&l->end, end_cb);
    l->rd.data = l->wr.data = l->end.data = l;
    ev_io_start(b->loop, &l->rd);
    bus_bridge_start(&l->br); /* HELLO and the state, into the outbox */
    *out = l;
    return 0;
fail:
    free(l);
    close(fd);
    return rc;
}

int bus_link_is_up(const bus_link *l)
{
    return l->why == NULL;
}

size_t bus_link_outbox_bytes(const bus_link *l)
{
    return outbox_bytes(l);
}

void bus_link_get_stats(const bus_link *l, bus_link_stats *out)
{
    bus_bridge_counts c;

    memset(out, 0, sizeof *out);
    bus_bridge_get_counts(&l->br, &c);
    out->up = l->why == NULL;
    out->frames_in = l->frames_in;
    out->frames_out = l->frames_out;
    out->outbox_bytes = outbox_bytes(l);
    out->outbox_max = l->out_max;
    out->peer_names = c.names;
    out->peer_members = c.subs;
}

void bus_link_close(bus_link *l)
{
    if (!l)
        return;
    if (l->fd >= 0 && !l->why)
        (void)flush(l); /* the last frames, if the socket takes them now */
    stop(l);
    bus_bridge_fini(&l->br);
    chan_decoder_fini(&l->dec);
    free(l->out);
    free(l);
}
