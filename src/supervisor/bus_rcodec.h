/*
 * bus_rcodec.h - one entry of the bus across instances (bus_redis.c), as
 * the bytes of a Redis stream entry's field `e` or of a state hash's value
 * (docs/design.md, "The bus across instances (Redis)").
 *
 * Layout (integers big-endian), 33 bytes of header then two byte strings:
 *   [u8 version 1][u8 kind][u8 flags][u64 origin][u64 seq][u64 target]
 *   [u32 pid][u16 name_len][name: topic or name][data: the rest]
 * origin: the writing instance's id (never 0); seq: its count on the
 * stream written to (never 0, but for RC_WILL, a hash value); flags:
 * RC_F_FIRST on the first entry of a count (the origin's first on that
 * stream, or a count started again higher up after it forgot the old one:
 * no gap before it); target: an
 * instance id where the kind needs one (else 0); pid: the child on the
 * origin that sent or holds. What each kind needs is checked on decode
 * (rc_decode) as on encode: a name where one is meant, no data where none
 * is.
 */
#ifndef SF_SUPERVISOR_BUS_RCODEC_H
#define SF_SUPERVISOR_BUS_RCODEC_H

#include <stddef.h>
#include <stdint.h>

#define RC_VERSION 1
#define RC_HEADER_LEN 33
#define RC_F_FIRST 0x01 /* the only flag: others are refused */
#define RC_NAME_MAX 255 /* BUS_NAME_MAX */

enum rc_kind {
    RC_PUBLISH = 1, /* name: topic; data: the message */
    RC_BROADCAST,   /* data: the message */
    RC_SEND_NAME,   /* target: the name's holder; name; data */
    RC_NO_NAME,     /* target: the send's origin; pid: its sender; name */
    RC_JOIN,        /* pid subscribed to the topic `name` */
    RC_LEAVE,       /* ... left it */
    RC_CLAIM,       /* pid holds the name */
    RC_RELEASE,     /* ... holds it no more */
    RC_WILL,        /* pid's will: name its topic, data; no name: cleared (seq 0
                     * allowed: a state hash's value) */
    RC_WILL_DONE,   /* pid's will was published on its origin: publish the copy */
    RC_GONE,        /* target: an instance gone (its own at shutdown, or found dead) */
    RC_PROBE,       /* a stale-cursor probe: read back by its origin only */
    RC_KIND_MAX = RC_PROBE,
};

typedef struct rc_entry {
    int kind;
    unsigned flags;             /* RC_F_* */
    uint64_t origin, seq, target;
    uint32_t pid;
    const char *name;           /* name_len bytes, not NUL-terminated */
    size_t name_len;
    const unsigned char *data;  /* len bytes */
    size_t len;
} rc_entry;

/* Bytes rc_encode writes for e. */
size_t rc_encoded_len(const rc_entry *e);

/* Writes e into buf (cap bytes). Returns the bytes written, -EINVAL (e is
 * not a valid entry of its kind) or -EMSGSIZE (cap too small). */
long rc_encode(const rc_entry *e, unsigned char *buf, size_t cap);

/* Reads one entry of n bytes. out's name and data point into p. Returns 0,
 * or -EPROTO: wrong version, unknown kind, a length past the end, data
 * over data_max, or fields that kind does not allow. */
int rc_decode(const unsigned char *p, size_t n, size_t data_max, rc_entry *out);

#endif
