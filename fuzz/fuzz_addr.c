/* libFuzzer target: the address parser. Whatever parses must format, and
 * what it formats to must parse back to the same address. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/addr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char text[512], out[SF_ADDR_TEXT_MAX];
    sf_addr a, b;
    int n;

    if (size >= sizeof text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    if (addr_parse(&a, text, 0) != 0)
        return 0;
    n = sf_addr_format(&a, out, sizeof out);
    if (n < 0)
        abort();
    if (addr_parse(&b, out, 0) != 0)
        abort();
    if (a.u.sa.sa_family != b.u.sa.sa_family || sf_addr_port(&a) != sf_addr_port(&b))
        abort();
    char ha[SF_ADDR_TEXT_MAX], hb[SF_ADDR_TEXT_MAX];
    if (sf_addr_host(&a, ha, sizeof ha) < 0 || sf_addr_host(&b, hb, sizeof hb) < 0 ||
        strcmp(ha, hb) != 0)
        abort();
    return 0;
}
