/* bus_rcodec.c - the bytes of an entry of the bus across instances. */
#include "supervisor/bus_rcodec.h"
#include "channel/be.h"

#include <errno.h>
#include <string.h>

/* What a kind needs of the fields: the one check both ways use. */
static int valid(const rc_entry *e)
{
    int named = e->name_len > 0, has_data = e->len > 0;

    if (e->origin == 0 || e->name_len > RC_NAME_MAX || (e->flags & ~(unsigned)RC_F_FIRST))
        return 0;
    if (e->seq == 0 && e->kind != RC_WILL)
        return 0;
    switch (e->kind) {
    case RC_PUBLISH:
        return named && e->target == 0;
    case RC_WILL: /* set, or cleared */
        return (named || !has_data) && e->target == 0;
    case RC_BROADCAST:
        return !named && e->target == 0;
    case RC_SEND_NAME:
        return named && e->target != 0;
    case RC_NO_NAME:
        return named && !has_data && e->target != 0;
    case RC_JOIN:
    case RC_LEAVE:
    case RC_CLAIM:
    case RC_RELEASE:
        return named && !has_data && e->target == 0;
    case RC_WILL_DONE:
        return !named && !has_data && e->target == 0;
    case RC_GONE:
        return !named && !has_data && e->target != 0;
    case RC_PROBE:
        return !named && !has_data;
    default:
        return 0;
    }
}

size_t rc_encoded_len(const rc_entry *e)
{
    return RC_HEADER_LEN + e->name_len + e->len;
}

long rc_encode(const rc_entry *e, unsigned char *buf, size_t cap)
{
    size_t n = rc_encoded_len(e);

    if (!valid(e) || (e->name_len && !e->name) || (e->len && !e->data))
        return -EINVAL;
    if (cap < n)
        return -EMSGSIZE;
    buf[0] = RC_VERSION;
    buf[1] = (unsigned char)e->kind;
    buf[2] = (unsigned char)e->flags;
    be64_put(buf + 3, e->origin);
    be64_put(buf + 11, e->seq);
    be64_put(buf + 19, e->target);
    be32_put(buf + 27, e->pid);
    be16_put(buf + 31, (uint16_t)e->name_len);
    if (e->name_len)
        memcpy(buf + RC_HEADER_LEN, e->name, e->name_len);
    if (e->len)
        memcpy(buf + RC_HEADER_LEN + e->name_len, e->data, e->len);
    return (long)n;
}

int rc_decode(const unsigned char *p, size_t n, size_t data_max, rc_entry *out)
{
    rc_entry e;

    if (n < RC_HEADER_LEN || p[0] != RC_VERSION)
        return -EPROTO;
    memset(&e, 0, sizeof e);
    e.kind = p[1];
    e.flags = p[2];
    e.origin = be64_get(p + 3);
    e.seq = be64_get(p + 11);
    e.target = be64_get(p + 19);
    e.pid = be32_get(p + 27);
    e.name_len = be16_get(p + 31);
    if (e.name_len > n - RC_HEADER_LEN)
        return -EPROTO;
    e.len = n - RC_HEADER_LEN - e.name_len;
    if (e.len > data_max)
        return -EPROTO;
    e.name = e.name_len ? (const char *)p + RC_HEADER_LEN : NULL;
    e.data = e.len ? p + RC_HEADER_LEN + e.name_len : NULL;
    if (!valid(&e))
        return -EPROTO;
    *out = e;
    return 0;
}
