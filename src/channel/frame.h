/*
 * frame.h - the channel's wire format, and its codec.
 *
 * One socketpair(AF_UNIX, SOCK_STREAM) per child carries frames both ways:
 *
 *   offset  size  field
 *   0       4     length of the payload, big-endian, <= the reader's maximum
 *   4       2     type, big-endian (see enum chan_type)
 *   6       2     flags, big-endian (CHAN_F_FD: one descriptor rides along)
 *   8       len   payload
 *
 * A frame with CHAN_F_FD is sent with the descriptor in an SCM_RIGHTS
 * message attached to the frame's first byte, so the reader has it by the
 * time the header is complete. The reader checks the length against its
 * maximum before allocating anything. Partial reads and writes at any byte,
 * EINTR, EAGAIN and EOF are normal cases.
 *
 * Nothing here knows about processes or the event loop: the decoder eats
 * bytes and descriptors and returns frames; the queue holds encoded frames
 * until the socket takes them.
 */
#ifndef SF_CHANNEL_FRAME_H
#define SF_CHANNEL_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CHAN_HDR_LEN 8
#define CHAN_MAX_DEFAULT (64 * 1024)   /* payload bytes */
#define CHAN_MAX_LIMIT (16 * 1024 * 1024)
#define CHAN_F_FD 0x0001
#define CHAN_FDS_MAX 4                 /* descriptors received ahead of their frame */

enum chan_type {
    CHAN_T_DATA = 1,   /* opaque bytes: routed, never interpreted */
    CHAN_T_JSON = 2,   /* one JSON object (a message of docs/protocol.md) */
    CHAN_T_LOG = 3,    /* a log line from the child */
    CHAN_T_STATUS = 4, /* a short status text from the child */
    /* Bus requests from a child (docs/protocol.md); u16 and u32 big-endian. */
    CHAN_T_SEND = 16,        /* [u32 pid][data] */
    CHAN_T_SEND_NAME = 17,   /* [u16 n][name][data] */
    CHAN_T_BROADCAST = 18,   /* [data] */
    CHAN_T_PUBLISH = 19,     /* [u16 n][topic][data] */
    CHAN_T_SUBSCRIBE = 20,   /* [u32 history][topic] */
    CHAN_T_UNSUBSCRIBE = 21, /* [topic] */
    CHAN_T_CLAIM = 22,       /* [name] */
    CHAN_T_RELEASE = 23,     /* [name] */
    CHAN_T_WILL = 24,        /* [u16 n][topic][data]; n 0: no will */
    CHAN_T_MEMBERS = 25,     /* [topic] */
    CHAN_T_TOPICS = 26,      /* [prefix] (may be empty) */
    /* Output offload (supervisor/bus_out.h has the payloads). */
    CHAN_T_OUT_OPEN = 27,      /* + the client's socket (CHAN_F_FD) */
    CHAN_T_OUT_WRITE = 28,
    CHAN_T_SUBSCRIBE_OUT = 29,
    CHAN_T_OUT_GATE = 30,
    /* To a child: [u8 kind][u8 ok][u16 n][u32 from][topic n bytes][data]. */
    CHAN_T_MESSAGE = 32,
    /* The task pool's workers (src/pool/); be64/be32 big-endian. */
    CHAN_T_TASK = 40,          /* to a worker: [be64 seq][be32 slot][be32 attempt][u8 last][arg] */
    CHAN_T_TASK_DONE = 41,     /* from it: [be32 return value] */
    CHAN_T_TASK_PROGRESS = 42, /* [be64 done][be64 total], IEEE doubles' bits */
    CHAN_T_TASK_RESULT = 43,   /* [result bytes] */
    /* A prefork worker's connections (src/server/worker.c, docs/design.md). */
    CHAN_T_CONN_BEGIN = 48,    /* from it: [u8 listener][u8 n][peer: n bytes][local sockaddr] */
    CHAN_T_CONN_END = 49,      /* from it: [be32 the handler's return value] */
    CHAN_T_CONN_ENDED = 50,    /* to it: everything before this was for an ended connection */
    CHAN_T_CONN_VERDICT = 51,  /* to it: [u8 1 serve, 0 refused][the access rule's
                                * "KEY=VALUE\0" pairs] (per-IP limit, rules) */
    CHAN_T_CONN_DROPPED = 52,  /* from it: [u8 why][u8 n][peer: n bytes][text]: a PROXY
                                * listener's connection closed before serving */
};

typedef struct chan_frame {
    uint16_t type;
    uint16_t flags;
    uint32_t len;
    unsigned char *payload; /* len bytes, owned by the caller (free()) once returned; NULL if len 0 */
    int fd;                 /* with CHAN_F_FD: owned by the caller; else -1 */
} chan_frame;

/* ------------------------------------------------------------ decoding */

typedef struct chan_decoder {
    uint32_t max;                       /* payload limit, checked before allocating */
    unsigned char hdr[CHAN_HDR_LEN];
    size_t hdr_have;
    chan_frame cur;                     /* the frame being filled */
    size_t payload_have;
    int fds[CHAN_FDS_MAX];              /* received, not yet claimed by a frame */
    int nfds;
} chan_decoder;

/* max: 0 means CHAN_MAX_DEFAULT; more than CHAN_MAX_LIMIT is cut to it. */
void chan_decoder_init(chan_decoder *d, uint32_t max);
/* Frees a half-read payload and closes descriptors still held. */
void chan_decoder_fini(chan_decoder *d);

/* Hands the decoder a descriptor that came with the bytes about to be fed.
 * Returns 0, or -EPROTO (and closes fd) when CHAN_FDS_MAX are already waiting. */
int chan_decoder_push_fd(chan_decoder *d, int fd);

/*
 * Eats up to len bytes. Sets *used to the bytes consumed. Returns 1 when
 * *out holds a complete frame (the caller owns its payload and fd; call
 * again with the rest of the buffer), 0 when all of buf was consumed with
 * no frame complete, -EMSGSIZE for a length over the maximum, -EPROTO for a
 * frame that announces a descriptor none came with (or flags unknown). After
 * an error the decoder is unusable: the peer is to be disconnected.
 */
int chan_decoder_feed(chan_decoder *d, const void *buf, size_t len, size_t *used, chan_frame *out);

/*
 * Reads once from a socket with recvmsg (taking SCM_RIGHTS descriptors,
 * MSG_CMSG_CLOEXEC) into buf, pushing any descriptors into d. Returns the
 * bytes read, 0 at EOF, or -errno (-EAGAIN on a non-blocking socket with
 * nothing to read; EINTR is retried). Descriptors beyond CHAN_FDS_MAX or
 * of a truncated control message are closed and give -EPROTO.
 */
ssize_t chan_read(int fd, chan_decoder *d, void *buf, size_t len);

/* ------------------------------------------------------------ encoding */

/* Writes the 8-byte header for a frame. */
void chan_header_encode(unsigned char hdr[CHAN_HDR_LEN], uint16_t type, uint16_t flags, uint32_t len);

/*
 * Sends one whole frame on a blocking socket (the child's side): loops over
 * partial writes and EINTR, attaches pass_fd (if >= 0) to the first byte.
 * Returns 0, -EMSGSIZE if len > CHAN_MAX_LIMIT, or -errno.
 */
int chan_send(int sock, uint16_t type, const void *payload, uint32_t len, int pass_fd);

/*
 * The child's blocking reader: a decoder plus the bytes read past the last
 * frame, kept between calls to chan_recv. 16 KiB: what the supervisor
 * flushes at once to a chat child in a busy room (a line from each of 99
 * members is about 6 KiB) comes in one read, not two.
 */
#define CHAN_READ_BUF (16 * 1024)

typedef struct chan_reader {
    chan_decoder dec;
    unsigned char *buf;                /* cap bytes, from the first read on */
    size_t cap;                        /* CHAN_READ_BUF, more while a send waits */
    size_t start, end;                 /* unconsumed bytes in buf */
    int err;                           /* a read error met while sending, for chan_recv */
} chan_reader;

void chan_reader_init(chan_reader *r, uint32_t max);
void chan_reader_fini(chan_reader *r);

/* Receives one whole frame from a blocking socket. Returns 1 with *out
 * filled (caller owns payload and fd), 0 at EOF between frames, -EPIPE at
 * EOF inside a frame, or a decoder error / -errno (-ENOMEM if the read
 * buffer cannot be had). The buffer is allocated on the first call: a
 * child that never reads its channel never pays for it. */
int chan_recv(int sock, chan_reader *r, chan_frame *out);

/* True when a frame (or part of one) is already buffered, so a caller that
 * polls the socket before chan_recv must not wait. */
int chan_reader_pending(const chan_reader *r);

/*
 * chan_send for a child that also receives on the socket: the frame is
 * written without blocking, and while the socket takes nothing (the peer
 * is not reading it: the supervisor holds this child for backpressure) the
 * child reads what comes the other way into r's buffer, so the peer's
 * queue for it keeps draining; chan_recv returns it later. At most `keep`
 * bytes are buffered: past that the send waits for the socket alone. A
 * read error is kept for chan_recv. When the socket takes the frame at
 * once (the common case) this is one sendmsg, as chan_send. Returns as
 * chan_send.
 */
int chan_send_reading(int sock, chan_reader *r, size_t keep, uint16_t type, const void *payload,
                      uint32_t len);
/* The same with a descriptor riding on the frame's first byte (pass_fd
 * >= 0; the caller keeps its own). */
int chan_send_reading_fd(int sock, chan_reader *r, size_t keep, uint16_t type,
                         const void *payload, uint32_t len, int pass_fd);

/* ------------------------------------------------------ outbound queue */

/*
 * The supervisor's non-blocking outbound side: whole frames are queued
 * (header, payload, optional descriptor) up to a byte limit; chan_queue_flush
 * writes as much as the socket takes, resuming mid-frame. What happens when
 * a frame does not fit is the caller's policy: chan_queue_push says so and
 * leaves the queue as it was.
 *
 * The frames are bytes in one buffer (grown as needed up to the limit,
 * given back when drained past CHAN_QUEUE_KEEP): queuing is one copy, and a
 * flush sends everything waiting in one sendmsg, but for a frame that
 * passes a descriptor, which starts a sendmsg of its own so the descriptor
 * rides on its first byte. At most CHAN_QUEUE_FDS descriptors wait at once.
 */
#define CHAN_QUEUE_FDS 4
#define CHAN_QUEUE_KEEP (64 * 1024)

typedef struct chan_qfd {
    size_t off;         /* the frame's first byte, in buf */
    int fd;             /* a copy, closed once sent */
} chan_qfd;

typedef struct chan_queue {
    unsigned char *buf;
    size_t cap;         /* bytes allocated */
    size_t start, end;  /* unsent bytes: buf[start, end) */
    size_t bytes;       /* end - start: queued bytes, headers included */
    size_t limit;       /* push fails beyond this */
    chan_qfd fds[CHAN_QUEUE_FDS];
    int nfds;
    uint64_t pushed, dropped;
} chan_queue;

void chan_queue_init(chan_queue *q, size_t limit);
/* Frees the buffer and closes the descriptors still waiting. */
void chan_queue_fini(chan_queue *q);

/* Copies the frame in. Returns 0, -ENOBUFS when it would pass the limit
 * or CHAN_QUEUE_FDS descriptors wait already (nothing queued, `dropped`
 * counted), -EMSGSIZE over CHAN_MAX_LIMIT, or -ENOMEM. A passed descriptor is dup'ed (F_DUPFD_CLOEXEC); the caller keeps
 * its own. */
int chan_queue_push(chan_queue *q, uint16_t type, const void *payload, uint32_t len, int pass_fd);

/* Queues bytes as they are, no header: for the JSON-lines side of exec'd
 * programs. Same returns as chan_queue_push. */
int chan_queue_push_raw(chan_queue *q, const void *bytes, size_t len);

/* Writes what the non-blocking socket takes. Returns 1 when the queue is
 * empty, 0 when data is left (wait for writability), or -errno (-EPIPE,
 * -ECONNRESET...) when the peer is gone. */
int chan_queue_flush(chan_queue *q, int sock);

static inline int chan_queue_empty(const chan_queue *q) { return q->bytes == 0; }

#endif
