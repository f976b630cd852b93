/* bus_rcodec.c - the bytes of an entry of the bus across instances. */
#include "supervisor/bus_rcodec.h"

#include <errno.h>
#include <string.h>

static void put_u16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

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
    put_u64(buf + 3, e->origin);
    put_u64(buf + 11, e->seq);
    put_u64(buf + 19, e->target);
    put_u32(buf + 27, e->pid);
    put_u16(buf + 31, (uint16_t)e->name_len);
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
    e.origin = get_u64(p + 3);
    e.seq = get_u64(p + 11);
    e.target = get_u64(p + 19);
    e.pid = get_u32(p + 27);
    e.name_len = (size_t)p[31] << 8 | p[32];
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
