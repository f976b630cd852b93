/* jsonl.c - see jsonl.h. */
#include "channel/jsonl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int jsonl_decoder_init(jsonl_decoder *d, size_t max)
{
    d->max = max ? max : JSONL_MAX_DEFAULT;
    d->have = 0;
    d->cap = 0;
    d->line = NULL; /* grows with the longest line seen, up to max */
    return 0;
}

/* Room for n bytes of line: doubling from 256, never past max. */
static int reserve(jsonl_decoder *d, size_t n)
{
    size_t cap = d->cap ? d->cap : 256;
    char *p;

    if (n <= d->cap)
        return 0;
    while (cap < n)
        cap *= 2;
    if (cap > d->max + 1)
        cap = d->max + 1;
    p = realloc(d->line, cap);
    if (!p)
        return -ENOMEM;
    d->line = p;
    d->cap = cap;
    return 0;
}

void jsonl_decoder_fini(jsonl_decoder *d)
{
    free(d->line);
    d->line = NULL;
    d->have = d->cap = 0;
}

/* One whole line (no LF): an object, -EPROTO, or 0 for a blank line. */
static int parse_line(const char *p, size_t n, json_t **out)
{
    json_error_t err;
    json_t *v;

    if (n > 0 && p[n - 1] == '\r')
        n--;
    if (n == 0)
        return 0;
    /* Duplicate keys are refused: which one would count is ambiguous.
     * U+0000 ("\u0000") is valid JSON and is taken: every consumer reads
     * strings with json_string_length, never as C strings alone (jansson
     * refuses it in keys whatever the flags). */
    v = json_loadb(p, n, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &err);
    if (!json_is_object(v)) {
        json_decref(v);
        return -EPROTO;
    }
    *out = v;
    return 1;
}

int jsonl_decoder_feed(jsonl_decoder *d, const char *buf, size_t len, size_t *used, json_t **out)
{
    size_t off = 0;

    *used = 0;
    while (off < len) {
        const char *nl = memchr(buf + off, '\n', len - off);
        size_t n = nl ? (size_t)(nl - (buf + off)) : len - off;
        int rc;

        /* The limit is on the line; a CR before its LF is not counted. */
        if (d->have + n > d->max + 1 ||
            (n > 0 && d->have + n == d->max + 1 && buf[off + n - 1] != '\r'))
            return -EMSGSIZE;
        if (n) {
            if ((rc = reserve(d, d->have + n)) < 0)
                return rc;
            memcpy(d->line + d->have, buf + off, n);
        }
        d->have += n;
        off += n;
        *used = off;
        if (!nl)
            return 0;
        off++; /* the LF */
        *used = off;
        rc = parse_line(d->line, d->have, out);
        d->have = 0;
        if (rc != 0)
            return rc;
    }
    return 0;
}

int jsonl_encode(const json_t *obj, char **out, size_t *len)
{
    char *text, *line;
    size_t n;

    if (!json_is_object(obj))
        return -EINVAL;
    text = json_dumps(obj, JSON_COMPACT);
    if (!text)
        return -ENOMEM;
    n = strlen(text);
    line = realloc(text, n + 2);
    if (!line) {
        free(text);
        return -ENOMEM;
    }
    line[n] = '\n';
    line[n + 1] = '\0';
    *out = line;
    *len = n + 1;
    return 0;
}
