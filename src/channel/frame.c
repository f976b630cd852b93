/* frame.c - see frame.h. */
#include "channel/frame.h"
#include "channel/fdpass.h"
#include "channel/be.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

/* ------------------------------------------------------------ decoding */

void chan_decoder_init(chan_decoder *d, uint32_t max)
{
    memset(d, 0, sizeof *d);
    d->max = max == 0 ? CHAN_MAX_DEFAULT : max > CHAN_MAX_LIMIT ? CHAN_MAX_LIMIT : max;
    d->cur.fd = -1;
}

void chan_decoder_fini(chan_decoder *d)
{
    free(d->cur.payload);
    d->cur.payload = NULL;
    if (d->cur.fd >= 0)
        close(d->cur.fd);
    d->cur.fd = -1;
    for (int i = 0; i < d->nfds; i++)
        close(d->fds[i]);
    d->nfds = 0;
}

int chan_decoder_push_fd(chan_decoder *d, int fd)
{
    if (d->nfds >= CHAN_FDS_MAX) {
        close(fd);
        return -EPROTO;
    }
    d->fds[d->nfds++] = fd;
    return 0;
}



/* The header is complete: check it before anything is allocated. */
static int start_frame(chan_decoder *d)
{
    chan_frame *f = &d->cur;

    f->len = be32_get(d->hdr);
    f->type = be16_get(d->hdr + 4);
    f->flags = be16_get(d->hdr + 6);
    f->payload = NULL;
    f->fd = -1;
    if (f->len > d->max)
        return -EMSGSIZE;
    if (f->flags & ~CHAN_F_FD)
        return -EPROTO;
    if (f->flags & CHAN_F_FD) {
        if (d->nfds == 0)
            return -EPROTO;
        f->fd = d->fds[0];
        memmove(d->fds, d->fds + 1, (size_t)(d->nfds - 1) * sizeof d->fds[0]);
        d->nfds--;
    }
    if (f->len > 0) {
        f->payload = malloc(f->len);
        if (!f->payload)
            return -ENOMEM;
    }
    d->payload_have = 0;
    return 0;
}

int chan_decoder_feed(chan_decoder *d, const void *buf, size_t len, size_t *used, chan_frame *out)
{
    const unsigned char *p = buf;
    size_t off = 0;
    int rc;

    *used = 0;
    for (;;) {
        if (d->hdr_have < CHAN_HDR_LEN) {
            size_t n = CHAN_HDR_LEN - d->hdr_have;
            if (n > len - off)
                n = len - off;
            memcpy(d->hdr + d->hdr_have, p + off, n);
            d->hdr_have += n;
            off += n;
            *used = off;
            if (d->hdr_have < CHAN_HDR_LEN)
                return 0;
            if ((rc = start_frame(d)) < 0)
                return rc;
        }
        size_t n = d->cur.len - d->payload_have;
        if (n > len - off)
            n = len - off;
        if (n)
            memcpy(d->cur.payload + d->payload_have, p + off, n);
        d->payload_have += n;
        off += n;
        *used = off;
        if (d->payload_have < d->cur.len)
            return 0;
        *out = d->cur;
        d->cur.payload = NULL;
        d->cur.fd = -1;
        d->hdr_have = 0;
        return 1;
    }
}

static ssize_t chan_read_flags(int fd, chan_decoder *d, void *buf, size_t len, int flags)
{
    int fds[CHAN_FDS_MAX], nfds, lost, bad;
    ssize_t n = fdpass_recv(fd, buf, len, flags, fds, CHAN_FDS_MAX, &nfds, &lost);

    if (n < 0)
        return n;
    bad = lost; /* descriptors were lost: the stream no longer matches */
    for (int i = 0; i < nfds; i++) {
        if (chan_decoder_push_fd(d, fds[i]) < 0)
            bad = 1;
    }
    return bad ? -EPROTO : n;
}

ssize_t chan_read(int fd, chan_decoder *d, void *buf, size_t len)
{
    return chan_read_flags(fd, d, buf, len, 0);
}

/* ------------------------------------------------------------ encoding */

void chan_header_encode(unsigned char hdr[CHAN_HDR_LEN], uint16_t type, uint16_t flags, uint32_t len)
{
    hdr[0] = (unsigned char)(len >> 24);
    hdr[1] = (unsigned char)(len >> 16);
    hdr[2] = (unsigned char)(len >> 8);
    hdr[3] = (unsigned char)len;
    hdr[4] = (unsigned char)(type >> 8);
    hdr[5] = (unsigned char)type;
    hdr[6] = (unsigned char)(flags >> 8);
    hdr[7] = (unsigned char)flags;
}

/* One sendmsg of iov[0..niov), with attach_fd (if >= 0) riding on its
 * first byte. Returns bytes sent or -errno. */
static ssize_t send_iov(int sock, struct iovec *iov, int niov, int attach_fd, int flags)
{
    return fdpass_send(sock, iov, niov, &attach_fd, attach_fd >= 0 ? 1 : 0, flags);
}

/* One sendmsg of header and payload from byte `off` of the two. */
static ssize_t send_pieces(int sock, const unsigned char *hdr, const void *payload, size_t len,
                           size_t off, int attach_fd, int flags)
{
    struct iovec iov[2];
    int niov = 0;

    if (off < CHAN_HDR_LEN) {
        iov[niov].iov_base = (void *)(hdr + off);
        iov[niov++].iov_len = CHAN_HDR_LEN - off;
        if (len) {
            iov[niov].iov_base = (void *)payload;
            iov[niov++].iov_len = len;
        }
    } else {
        iov[niov].iov_base = (char *)payload + (off - CHAN_HDR_LEN);
        iov[niov++].iov_len = len - (off - CHAN_HDR_LEN);
    }
    return send_iov(sock, iov, niov, attach_fd, flags);
}

int chan_send(int sock, uint16_t type, const void *payload, uint32_t len, int pass_fd)
{
    unsigned char hdr[CHAN_HDR_LEN];
    size_t total = CHAN_HDR_LEN + (size_t)len, off = 0;

    if (len > CHAN_MAX_LIMIT)
        return -EMSGSIZE;
    chan_header_encode(hdr, type, pass_fd >= 0 ? CHAN_F_FD : 0, len);
    while (off < total) {
        ssize_t n = send_pieces(sock, hdr, payload, len, off, off == 0 ? pass_fd : -1, 0);
        if (n == -EINTR)
            continue;
        if (n < 0)
            return (int)n;
        off += (size_t)n;
    }
    return 0;
}

void chan_reader_init(chan_reader *r, uint32_t max)
{
    chan_decoder_init(&r->dec, max);
    r->buf = NULL;
    r->cap = r->start = r->end = 0;
    r->err = 0;
}

void chan_reader_fini(chan_reader *r)
{
    chan_decoder_fini(&r->dec);
    free(r->buf);
    r->buf = NULL;
    r->cap = r->start = r->end = 0;
}

int chan_reader_pending(const chan_reader *r)
{
    return r->start < r->end;
}

int chan_recv(int sock, chan_reader *r, chan_frame *out)
{
    for (;;) {
        if (r->start < r->end) {
            size_t used;
            int rc = chan_decoder_feed(&r->dec, r->buf + r->start, r->end - r->start, &used, out);
            r->start += used;
            if (rc != 0)
                return rc;
        }
        if (r->err)
            return r->err; /* met while a send waited, after what it read */
        if (!r->buf) {
            if (!(r->buf = malloc(CHAN_READ_BUF)))
                return -ENOMEM;
            r->cap = CHAN_READ_BUF;
        }
        ssize_t n = chan_read(sock, &r->dec, r->buf, r->cap);
        if (n < 0)
            return (int)n;
        if (n == 0)
            return r->dec.hdr_have == 0 ? 0 : -EPIPE;
        r->start = 0;
        r->end = (size_t)n;
    }
}

/* Reads what the socket has now behind what r holds, up to `keep` bytes
 * in all. Returns 1 to read again later, 0 when reading is over for this
 * send (EOF, an error kept in r->err, or `keep` reached). */
static int reader_fill(int sock, chan_reader *r, size_t keep)
{
    ssize_t n;

    if (r->start > 0) {
        memmove(r->buf, r->buf + r->start, r->end - r->start);
        r->end -= r->start;
        r->start = 0;
    }
    if (r->end >= keep)
        return 0;
    if (r->cap - r->end < CHAN_READ_BUF && r->cap < keep) {
        size_t cap = r->cap ? 2 * r->cap : CHAN_READ_BUF;
        unsigned char *p;
        if (cap > keep)
            cap = keep;
        if (!(p = realloc(r->buf, cap))) {
            r->err = -ENOMEM;
            return 0;
        }
        r->buf = p;
        r->cap = cap;
    }
    n = chan_read_flags(sock, &r->dec, r->buf + r->end, r->cap - r->end, MSG_DONTWAIT);
    if (n == -EAGAIN || n == -EWOULDBLOCK)
        return 1;
    if (n <= 0) {
        /* EOF is met again by chan_recv, which reads the socket once the
         * buffer is used; an error is kept for it. */
        if (n < 0)
            r->err = (int)n;
        return 0;
    }
    r->end += (size_t)n;
    return 1;
}

int chan_send_reading(int sock, chan_reader *r, size_t keep, uint16_t type, const void *payload,
                      uint32_t len)
{
    return chan_send_reading_fd(sock, r, keep, type, payload, len, -1);
}

int chan_send_reading_fd(int sock, chan_reader *r, size_t keep, uint16_t type,
                         const void *payload, uint32_t len, int pass_fd)
{
    unsigned char hdr[CHAN_HDR_LEN];
    size_t total = CHAN_HDR_LEN + (size_t)len, off = 0;
    int reading = !r->err;

    if (len > CHAN_MAX_LIMIT)
        return -EMSGSIZE;
    chan_header_encode(hdr, type, pass_fd >= 0 ? CHAN_F_FD : 0, len);
    while (off < total) {
        ssize_t n = send_pieces(sock, hdr, payload, len, off, off == 0 ? pass_fd : -1, MSG_DONTWAIT);
        struct pollfd p;

        if (n == -EINTR)
            continue;
        if (n >= 0) {
            off += (size_t)n;
            continue;
        }
        if (n != -EAGAIN && n != -EWOULDBLOCK)
            return (int)n;
        /* The peer takes nothing now: wait for room, reading meanwhile. */
        p.fd = sock;
        p.events = (short)(POLLOUT | (reading ? POLLIN : 0));
        p.revents = 0;
        if (poll(&p, 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (reading && (p.revents & (POLLIN | POLLHUP | POLLERR)))
            reading = reader_fill(sock, r, keep);
    }
    return 0;
}

/* ------------------------------------------------------ outbound queue */

void chan_queue_init(chan_queue *q, size_t limit)
{
    memset(q, 0, sizeof *q);
    q->limit = limit;
}

void chan_queue_fini(chan_queue *q)
{
    for (int i = 0; i < q->nfds; i++)
        close(q->fds[i].fd);
    free(q->buf);
    q->buf = NULL;
    q->cap = q->start = q->end = q->bytes = 0;
    q->nfds = 0;
}

/* Room for n more bytes at the end: the unsent bytes moved to the front,
 * then the buffer doubled, never past the limit (push checked it). */
static int make_room(chan_queue *q, size_t n)
{
    size_t cap;
    unsigned char *p;

    if (q->end + n <= q->cap)
        return 0;
    if (q->start > 0) {
        memmove(q->buf, q->buf + q->start, q->bytes);
        for (int i = 0; i < q->nfds; i++)
            q->fds[i].off -= q->start;
        q->start = 0;
        q->end = q->bytes;
        if (q->end + n <= q->cap)
            return 0;
    }
    cap = q->cap ? q->cap : 1024;
    while (cap < q->end + n)
        cap *= 2;
    if (cap > q->limit)
        cap = q->limit;
    if (!(p = realloc(q->buf, cap)))
        return -ENOMEM;
    q->buf = p;
    q->cap = cap;
    return 0;
}

static int queue_bytes(chan_queue *q, const unsigned char *hdr, const void *bytes, size_t len,
                       int pass_fd)
{
    size_t hl = hdr ? CHAN_HDR_LEN : 0;
    int fd = -1;

    if (q->bytes + hl + len > q->limit || (pass_fd >= 0 && q->nfds == CHAN_QUEUE_FDS)) {
        q->dropped++;
        return -ENOBUFS;
    }
    if (make_room(q, hl + len) < 0)
        return -ENOMEM;
    if (pass_fd >= 0) {
        if ((fd = fcntl(pass_fd, F_DUPFD_CLOEXEC, 3)) < 0)
            return -errno;
        q->fds[q->nfds].off = q->end;
        q->fds[q->nfds++].fd = fd;
    }
    if (hl)
        memcpy(q->buf + q->end, hdr, hl);
    if (len)
        memcpy(q->buf + q->end + hl, bytes, len);
    q->end += hl + len;
    q->bytes += hl + len;
    q->pushed++;
    return 0;
}

int chan_queue_push(chan_queue *q, uint16_t type, const void *payload, uint32_t len, int pass_fd)
{
    unsigned char hdr[CHAN_HDR_LEN];

    if (len > CHAN_MAX_LIMIT)
        return -EMSGSIZE;
    chan_header_encode(hdr, type, pass_fd >= 0 ? CHAN_F_FD : 0, len);
    return queue_bytes(q, hdr, payload, len, pass_fd);
}

int chan_queue_push_raw(chan_queue *q, const void *bytes, size_t len)
{
    if (len > CHAN_MAX_LIMIT)
        return -EMSGSIZE;
    return queue_bytes(q, NULL, bytes, len, -1);
}

int chan_queue_flush(chan_queue *q, int sock)
{
    while (q->start < q->end) {
        size_t stop = q->end;
        int attach = -1;
        struct iovec iov;
        ssize_t n;

        /* A frame with a descriptor starts a sendmsg of its own. */
        if (q->nfds > 0) {
            if (q->fds[0].off == q->start) {
                attach = q->fds[0].fd;
                if (q->nfds > 1)
                    stop = q->fds[1].off;
            } else {
                stop = q->fds[0].off;
            }
        }
        iov.iov_base = q->buf + q->start;
        iov.iov_len = stop - q->start;
        n = send_iov(sock, &iov, 1, attach, 0);
        if (n == -EINTR)
            continue;
        if (n == -EAGAIN || n == -EWOULDBLOCK)
            return 0;
        if (n < 0)
            return (int)n;
        if (attach >= 0) {
            close(attach); /* it went with the first byte */
            memmove(q->fds, q->fds + 1, (size_t)(q->nfds - 1) * sizeof q->fds[0]);
            q->nfds--;
        }
        q->start += (size_t)n;
        q->bytes -= (size_t)n;
    }
    q->start = q->end = 0;
    if (q->cap > CHAN_QUEUE_KEEP) {
        /* A burst is over: give the memory back. */
        free(q->buf);
        q->buf = NULL;
        q->cap = 0;
    }
    return 1;
}
