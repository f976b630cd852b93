/* bus_dedup.c - per (origin, stream), the highest seq seen. */
#include "supervisor/bus_dedup.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct dedup_key {
    uint64_t origin, seq, seen; /* seen: the tick of its last entry */
    int32_t next;               /* the next key of its bucket, -1: none */
    uint16_t len;
    char stream[BUS_DEDUP_STREAM_MAX];
};

static uint64_t hash_of(uint64_t origin, const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ull ^ origin;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

int bus_dedup_init(bus_dedup *d, unsigned max)
{
    memset(d, 0, sizeof *d);
    d->max = max ? max : BUS_DEDUP_DEFAULT_MAX;
    d->nbuckets = 1;
    while (d->nbuckets < d->max)
        d->nbuckets <<= 1;
    d->keys = calloc(d->max, sizeof *d->keys);
    d->buckets = malloc(d->nbuckets * sizeof *d->buckets);
    if (!d->keys || !d->buckets) {
        bus_dedup_fini(d);
        return -ENOMEM;
    }
    for (unsigned i = 0; i < d->nbuckets; i++)
        d->buckets[i] = -1;
    return 0;
}

void bus_dedup_fini(bus_dedup *d)
{
    free(d->keys);
    free(d->buckets);
    d->keys = NULL;
    d->buckets = NULL;
    d->used = 0;
}

static int32_t *head_of(bus_dedup *d, const dedup_key *k)
{
    return &d->buckets[hash_of(k->origin, k->stream, k->len) & (d->nbuckets - 1)];
}

static void unlink_key(bus_dedup *d, int32_t i)
{
    int32_t *p = head_of(d, &d->keys[i]);

    while (*p != i)
        p = &d->keys[*p].next;
    *p = d->keys[i].next;
}

/* Takes key i out, moving the last key into its place: the keys stay
 * packed in keys[0..used). */
static void remove_key(bus_dedup *d, int32_t i)
{
    int32_t last = (int32_t)d->used - 1;

    unlink_key(d, i);
    if (i != last) {
        unlink_key(d, last);
        d->keys[i] = d->keys[last];
        int32_t *h = head_of(d, &d->keys[i]);
        d->keys[i].next = *h;
        *h = i;
    }
    d->used--;
}

static int32_t find(bus_dedup *d, uint64_t origin, const char *s, size_t len)
{
    int32_t i = d->buckets[hash_of(origin, s, len) & (d->nbuckets - 1)];

    for (; i >= 0; i = d->keys[i].next) {
        const dedup_key *k = &d->keys[i];
        if (k->origin == origin && k->len == len && memcmp(k->stream, s, len) == 0)
            return i;
    }
    return -1;
}

static void evict_oldest(bus_dedup *d)
{
    int32_t oldest = 0;

    for (unsigned i = 1; i < d->used; i++)
        if (d->keys[i].seen < d->keys[oldest].seen)
            oldest = (int32_t)i;
    remove_key(d, oldest);
    d->evicted++;
}

static void add_key(bus_dedup *d, uint64_t origin, const char *s, size_t len, uint64_t seq)
{
    if (d->used == d->max)
        evict_oldest(d);
    int32_t i = (int32_t)d->used++;
    dedup_key *k = &d->keys[i];
    k->origin = origin;
    k->seq = seq;
    k->seen = d->tick;
    k->len = (uint16_t)len;
    memcpy(k->stream, s, len);
    int32_t *h = head_of(d, k);
    k->next = *h;
    *h = i;
}

int bus_dedup_check(bus_dedup *d, uint64_t origin, const char *stream, size_t len,
                    uint64_t seq, int first, uint64_t *missed)
{
    int32_t i;

    if (seq == 0 || len == 0 || len > BUS_DEDUP_STREAM_MAX)
        return -EINVAL;
    *missed = 0;
    d->tick++;
    i = find(d, origin, stream, len);
    if (i < 0) {
        add_key(d, origin, stream, len, seq);
        return DEDUP_NEW;
    }
    dedup_key *k = &d->keys[i];
    k->seen = d->tick;
    if (seq <= k->seq)
        return DEDUP_DUP;
    *missed = first ? 0 : seq - k->seq - 1;
    k->seq = seq;
    return DEDUP_NEW;
}

void bus_dedup_forget(bus_dedup *d, uint64_t origin)
{
    for (unsigned i = 0; i < d->used;) {
        if (d->keys[i].origin == origin)
            remove_key(d, (int32_t)i); /* the last one moved here: look again */
        else
            i++;
    }
}
