/* libFuzzer target: the JSON-lines decoder, fed in pieces sized by the
 * first byte; every object returned is released, nothing leaks. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#include "channel/jsonl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    jsonl_decoder d;
    size_t off = 1, piece;

    if (size < 1 || jsonl_decoder_init(&d, 512) < 0)
        return 0;
    piece = (size_t)data[0] % 31 + 1;
    while (off < size) {
        size_t n = size - off < piece ? size - off : piece;
        size_t used;
        json_t *o = NULL;
        int rc = jsonl_decoder_feed(&d, (const char *)data + off, n, &used, &o);

        if (rc == -EMSGSIZE)
            break;
        if (used > n || (rc == 1 && !json_is_object(o)))
            abort();
        json_decref(o);
        off += used;
    }
    jsonl_decoder_fini(&d);
    return 0;
}
