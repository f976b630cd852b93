/*
 * nofork.c - memory that fork() does not give to children (Linux
 * MADV_DONTFORK).
 *
 * The supervisor's bookkeeping (child table, hash maps, connection
 * records) is written on every accept and every exit. Were it shared with
 * the children, each fork() would write-protect it again and the next write
 * would copy the page, leaving the old copy to the child that never reads
 * it. Children get none of it, so forks copy fewer page tables, the
 * supervisor takes no copy-on-write faults on it, and a held connection
 * costs less memory. Code that runs in a child must never touch it.
 */
#include "os/os.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

/* The mapping's length is kept in front of the block, 16-byte aligned. */
#define HEADER 16

void *os_nofork_calloc(size_t n, size_t size)
{
    size_t len;
    unsigned char *p;

    if (size && n > (SIZE_MAX - HEADER) / size) {
        errno = ENOMEM;
        return NULL;
    }
    len = HEADER + n * size;
    p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
#ifdef MADV_DONTFORK
    /* Not fatal: without it the memory is merely shared copy-on-write. */
    (void)madvise(p, len, MADV_DONTFORK);
#endif
    memcpy(p, &len, sizeof len);
    return p + HEADER; /* mmap memory is already zero */
}

void os_nofork_free(void *block)
{
    unsigned char *p = block;
    size_t len;

    if (!p)
        return;
    p -= HEADER;
    memcpy(&len, p, sizeof len);
    (void)munmap(p, len);
}
