/* libFuzzer target: the HTTP request-head parser (src/server/http.c). The
 * input is parsed whole and as every prefix a socket reader could have
 * had (pieces of a size its length picks, and one byte at a time up to
 * 256): a prefix needs more or gives the whole's answer, and once a prefix
 * has an answer every longer one has the same. A head that is done never
 * claims more bytes than it was given, nor more than HTTP_HEAD_MAX, and
 * ends in a blank line. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/http.h"

static int same(int rc, const http_request *a, const http_request *b)
{
    if (rc != HTTP_DONE)
        return 1;
    return a->head_len == b->head_len && a->minor == b->minor && a->nheaders == b->nheaders &&
           strcmp(a->method, b->method) == 0 && strcmp(a->path, b->path) == 0;
}

static void check_prefixes(const char *data, size_t size, size_t step, int whole_rc,
                           const http_request *whole)
{
    http_request req;
    int decided = 0;

    for (size_t n = 0; n < size; n += step) {
        int rc = http_parse(data, n, &req);
        if (rc == HTTP_MORE && !decided)
            continue;
        if (rc != whole_rc || !same(rc, whole, &req))
            abort();
        decided = 1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    http_request whole;
    int rc = http_parse(text, size, &whole);

    if (rc != HTTP_MORE && rc != HTTP_DONE && rc != -EINVAL && rc != -EMSGSIZE &&
        rc != -ENAMETOOLONG && rc != -EPROTONOSUPPORT)
        abort();
    if (rc == HTTP_DONE) {
        size_t h = whole.head_len;
        if (h > size || h > HTTP_HEAD_MAX || h < 2 || text[h - 1] != '\n' ||
            whole.nheaders > HTTP_HEADERS_MAX || whole.path[0] != '/' || !whole.method[0] ||
            strlen(whole.path) > HTTP_TARGET_MAX)
            abort();
    }
    if (rc == HTTP_MORE && size >= HTTP_HEAD_MAX)
        abort();
    check_prefixes(text, size, size % 23 + 1, rc, &whole);
    check_prefixes(text, size < 256 ? size : 256, 1, rc, &whole);
    return 0;
}
