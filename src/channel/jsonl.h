/*
 * jsonl.h - newline-delimited JSON, the channel as exec'd programs see it
 * (fd 3, SOCKFORK_FD=3): one JSON object per line, each way.
 *
 * The splitter holds at most `max` bytes of an unfinished line: a longer
 * line is an error (the peer is disconnected), never silently cut. CRLF is
 * accepted as LF; blank lines are skipped. Strings may hold U+0000
 * ("\u0000", valid JSON): read them with json_string_length.
 */
#ifndef SF_CHANNEL_JSONL_H
#define SF_CHANNEL_JSONL_H

#include <stddef.h>
#include <jansson.h>

#define JSONL_MAX_DEFAULT (64 * 1024)

typedef struct jsonl_decoder {
    size_t max;
    char *line;        /* the unfinished line; grows up to max, as lines need */
    size_t have, cap;
} jsonl_decoder;

/* Returns 0. max 0 means JSONL_MAX_DEFAULT. Nothing is allocated until a
 * line is fed. */
int jsonl_decoder_init(jsonl_decoder *d, size_t max);
void jsonl_decoder_fini(jsonl_decoder *d);

/*
 * Eats up to len bytes; *used says how many. Returns 1 with *out set to a
 * new reference to a JSON object (the caller json_decref()s it), 0 when buf
 * was consumed with no complete line, -EMSGSIZE for a line over max,
 * -EPROTO for a line that is not a JSON object (invalid JSON, or an array,
 * string...). After -EMSGSIZE the decoder is unusable; after -EPROTO the
 * bad line has been consumed and decoding may go on (the caller decides).
 */
int jsonl_decoder_feed(jsonl_decoder *d, const char *buf, size_t len, size_t *used, json_t **out);
/* (-ENOMEM too, when the line buffer cannot grow.) */

/* Encodes obj compactly followed by '\n' into a malloc'ed buffer (*out,
 * *len; the caller frees). Returns 0, -EINVAL (not an object) or -ENOMEM. */
int jsonl_encode(const json_t *obj, char **out, size_t *len);

#endif
