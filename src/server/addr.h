/* addr.h - address parsing, with name resolution optional (the fuzzer
 * must not send DNS queries). */
#ifndef SF_ADDR_H
#define SF_ADDR_H

#include "sockfork.h"

/* sf_addr_parse; with resolve_names 0, a HOST that is not numeric is -ENOENT. */
int addr_parse(sf_addr *out, const char *text, int resolve_names);

#endif
