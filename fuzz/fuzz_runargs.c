/* libFuzzer target: runargs_expand on words and arguments cut from the
 * input at NUL bytes (the first byte: how many are command words). Every
 * result must be a NULL-terminated argv of NUL-terminated strings. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runargs.h"

#define MAXW 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy, *words[MAXW], *p;
    size_t n = 0, ncmd;
    char **argv;

    if (size < 1)
        return 0;
    copy = malloc(size);
    if (!copy)
        return 0;
    memcpy(copy, data + 1, size - 1);
    copy[size - 1] = '\0';
    for (p = copy; n < MAXW && p < copy + size - 1; p += strlen(p) + 1)
        words[n++] = p;
    if (n == 0)
        words[n++] = copy;
    ncmd = data[0] % n + 1;
    if (ncmd > n)
        ncmd = n;
    argv = runargs_expand(words, ncmd, (const char *const *)words + ncmd, n - ncmd, data[0], 3, data[0] & 1);
    if (argv) {
        size_t i = 0;
        while (argv[i]) {
            (void)strlen(argv[i]);
            i++;
        }
        if (i < ncmd)
            abort(); /* every command word stays a word */
        free(argv);
    } else if (errno != EINVAL && errno != ENOMEM) {
        abort();
    }
    free(copy);
    return 0;
}
