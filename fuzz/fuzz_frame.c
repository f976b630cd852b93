/* libFuzzer target: the frame decoder. The first byte of the input picks
 * the sizes of the pieces the rest is fed in; every frame returned must be
 * within the maximum, and everything must be freed. */
#include <stdint.h>
#include <stdlib.h>

#include "channel/frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    chan_decoder d;
    size_t off = 1, piece;

    if (size < 1)
        return 0;
    piece = (size_t)data[0] % 17 + 1;
    chan_decoder_init(&d, 256);
    while (off < size) {
        size_t n = size - off < piece ? size - off : piece;
        size_t used;
        chan_frame f;
        int rc = chan_decoder_feed(&d, data + off, n, &used, &f);

        if (rc < 0)
            break;
        if (used > n)
            abort();
        off += used;
        if (rc == 1) {
            if (f.len > 256 || (f.len > 0) != (f.payload != NULL) || f.fd != -1)
                abort();
            free(f.payload);
        }
    }
    chan_decoder_fini(&d);
    return 0;
}
