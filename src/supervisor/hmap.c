/* hmap.c - see hmap.h. */
#include "supervisor/hmap.h"
#include "os/os.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static uint64_t hash_key(const hmap *m, const hmap_key *k)
{
    /* FNV-1a over the key, seeded, then a 64-bit finalizer to spread the
     * low bits that the mask keeps. */
    uint64_t h = 0xcbf29ce484222325ULL ^ m->seed;
    for (size_t i = 0; i < HMAP_KEY_MAX; i++) {
        h ^= k->b[i];
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

#define HMAP_MIN_SLOTS 16

int hmap_init(hmap *m, size_t max)
{
    memset(m, 0, sizeof *m);
    m->slots = os_nofork_calloc(HMAP_MIN_SLOTS, sizeof *m->slots);
    if (!m->slots)
        return -ENOMEM;
    m->mask = HMAP_MIN_SLOTS - 1;
    m->max = max;
    if (getrandom(&m->seed, sizeof m->seed, GRND_NONBLOCK) != sizeof m->seed)
        m->seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    return 0;
}

int hmap_reserve(hmap *m, size_t n)
{
    size_t size = m->mask + 1, newsize = size;
    hmap_slot *old = m->slots, *slots;

    if (n > m->max)
        return -ENOSPC;
    while (newsize < 2 * n)
        newsize <<= 1;
    if (newsize == size)
        return 0;
    slots = os_nofork_calloc(newsize, sizeof *slots);
    if (!slots)
        return -ENOMEM;
    m->slots = slots;
    m->mask = newsize - 1;
    for (size_t i = 0; i < size; i++) {
        if (old[i].used) {
            size_t j = hash_key(m, &old[i].key) & m->mask;
            while (slots[j].used)
                j = (j + 1) & m->mask;
            slots[j] = old[i];
        }
    }
    os_nofork_free(old);
    return 0;
}

void hmap_free(hmap *m)
{
    os_nofork_free(m->slots);
    m->slots = NULL;
}

static size_t find(const hmap *m, const hmap_key *key, int *found)
{
    size_t i = hash_key(m, key) & m->mask;

    /* Terminates: the table is never more than half full. */
    while (m->slots[i].used) {
        if (memcmp(&m->slots[i].key, key, sizeof *key) == 0) {
            *found = 1;
            return i;
        }
        i = (i + 1) & m->mask;
    }
    *found = 0;
    return i;
}

uint32_t *hmap_get(const hmap *m, const hmap_key *key)
{
    int found;
    size_t i = find(m, key, &found);
    return found ? &m->slots[i].value : NULL;
}

int hmap_put(hmap *m, const hmap_key *key, uint32_t value)
{
    int found;
    size_t i = find(m, key, &found);

    if (!found) {
        int rc;
        if (m->count >= m->max)
            return -ENOSPC;
        if (2 * (m->count + 1) > m->mask + 1) {
            if ((rc = hmap_reserve(m, m->count + 1)) < 0)
                return rc;
            i = find(m, key, &found);
        }
        m->slots[i].key = *key;
        m->slots[i].used = 1;
        m->count++;
    }
    m->slots[i].value = value;
    return 0;
}

int hmap_del(hmap *m, const hmap_key *key)
{
    int found;
    size_t hole = find(m, key, &found);

    if (!found)
        return -ENOENT;
    /* Backward shift: move later members of the probe run into the hole
     * when their home slot does not lie cyclically in (hole, j]. */
    size_t j = hole;
    for (;;) {
        j = (j + 1) & m->mask;
        if (!m->slots[j].used)
            break;
        size_t home = hash_key(m, &m->slots[j].key) & m->mask;
        int stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
        if (!stays) {
            m->slots[hole] = m->slots[j];
            hole = j;
        }
    }
    m->slots[hole].used = 0;
    m->count--;
    return 0;
}

hmap_key hmap_key_int(int64_t v)
{
    hmap_key k;
    memset(&k, 0, sizeof k);
    memcpy(k.b, &v, sizeof v);
    return k;
}
