/* libFuzzer target: the entry decoder of the bus across instances (what
 * comes out of Redis, written by any instance or by anyone with access to
 * it). A decoded entry must lie within the input, and encode back to the
 * same bytes; the dedup window is fed what decodes and must stay bounded. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "supervisor/bus_dedup.h"
#include "supervisor/bus_rcodec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bus_dedup d;
    static int ready;
    rc_entry e;
    unsigned char out[4096 + RC_HEADER_LEN + RC_NAME_MAX];
    uint64_t missed;

    if (!ready) {
        if (bus_dedup_init(&d, 16) != 0)
            abort();
        ready = 1;
    }
    if (rc_decode(data, size, 4096, &e) != 0)
        return 0;
    if (e.name_len > RC_NAME_MAX || e.len > 4096 ||
        RC_HEADER_LEN + e.name_len + e.len != size)
        abort();
    if (e.name_len && ((const uint8_t *)e.name < data || (const uint8_t *)e.name + e.name_len > data + size))
        abort();
    long n = rc_encode(&e, out, sizeof out);
    if (n < 0 || (size_t)n != size || memcmp(out, data, size) != 0)
        abort();
    if (e.name_len && e.seq) {
        int rc = bus_dedup_check(&d, e.origin, e.name, e.name_len, e.seq, e.flags & RC_F_FIRST, &missed);
        if (rc != DEDUP_NEW && rc != DEDUP_DUP)
            abort();
        if (bus_dedup_count(&d) > 16)
            abort();
    }
    return 0;
}
