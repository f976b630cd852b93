/*
 * hmap.h - a bounded hash map from a short byte key to a 32-bit value.
 *
 * Open addressing with linear probing and backward-shift deletion, no
 * tombstones, at most half full. It starts small and doubles as it fills,
 * up to room for `max` entries: a table sized for the maximum up front
 * would be written all over (keys land at random), and every page of it
 * would then be copied into each fork()ed child's page tables. Growth only
 * happens in hmap_reserve and hmap_put, so a caller that reserved can put
 * without failing. Used for pid -> child slot and address -> count. The
 * slots live in memory that forked children do not inherit (os_nofork).
 */
#ifndef SF_HMAP_H
#define SF_HMAP_H

#include <stddef.h>
#include <stdint.h>

#define HMAP_KEY_MAX 37 /* family, two IPv6 addresses, two ports: a TCP connection */

typedef struct hmap_key {
    uint8_t b[HMAP_KEY_MAX]; /* unused bytes must be zero */
} hmap_key;

typedef struct hmap_slot {
    hmap_key key;
    uint8_t used;
    uint32_t value;
} hmap_slot;

typedef struct hmap {
    hmap_slot *slots;
    size_t mask;     /* number of slots - 1 */
    size_t count;
    size_t max;      /* entries allowed: what init was given */
    uint64_t seed;   /* per map, so clients cannot aim at one chain */
} hmap;

/* An empty map that will hold up to `max` entries. Returns 0 or -ENOMEM. */
int hmap_init(hmap *m, size_t max);

/* Makes room for `n` entries in all, so that puts up to that count cannot
 * fail. Returns 0, -ENOSPC if n > max, or -ENOMEM. */
int hmap_reserve(hmap *m, size_t n);
void hmap_free(hmap *m);

/* The value stored for key, or NULL. Valid until the next put or del. */
uint32_t *hmap_get(const hmap *m, const hmap_key *key);

/* Inserts or replaces. Returns 0, -ENOSPC when `max` entries exist, or
 * -ENOMEM if the table had to grow and could not. */
int hmap_put(hmap *m, const hmap_key *key, uint32_t value);

/* Removes key. Returns 0, or -ENOENT. */
int hmap_del(hmap *m, const hmap_key *key);

/* A key holding an integer (a pid). */
hmap_key hmap_key_int(int64_t v);

#endif
