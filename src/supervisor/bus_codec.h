/*
 * bus_codec.h - the bus's messages on the wire, both ways and in both
 * codecs: what a child asks (a bus_op, decoded from a frame or a JSON
 * line), and what it is sent (a bus_msg, encoded as a MESSAGE frame or a
 * JSON line). Pure functions: no sockets, no loop (fuzzed by fuzz_bus).
 */
#ifndef SF_SUPERVISOR_BUS_CODEC_H
#define SF_SUPERVISOR_BUS_CODEC_H

#include "supervisor/bus.h"

enum { OP_SEND = 1, OP_SEND_NAME, OP_BROADCAST, OP_PUBLISH, OP_SUBSCRIBE, OP_UNSUBSCRIBE,
       OP_CLAIM, OP_RELEASE, OP_LOG, OP_STATUS, OP_WILL, OP_MEMBERS, OP_TOPICS };

typedef struct bus_op {
    int op;
    pid_t to;
    const char *name;       /* topic or name */
    size_t name_len;
    const unsigned char *data;
    size_t len;
    unsigned history;
} bus_op;

/* A frame into an op (pointing into the frame's payload). Returns 0 or
 * -EPROTO for a malformed one. */
int bus_op_from_frame(const chan_frame *f, bus_op *op);

/* A JSON object into an op (pointing into the object). Returns 0, or -1
 * with *why set to the reason for the child's error reply. */
int bus_op_from_json(json_t *o, bus_op *op, const char **why);

/* A message as one MESSAGE frame, or as one JSON line ({"op":"message",
 * ...}; bytes that are not UTF-8 travel as "data_b64"). *out is malloc'ed.
 * Return 0 or -ENOMEM. */
int bus_encode_frame(const bus_msg *m, unsigned char **out, size_t *len);
int bus_encode_json(const bus_msg *m, char **out, size_t *len);

/* Copies what a child says into out (NUL-terminated, at most len - 1
 * bytes) as one line of valid UTF-8: control characters (a newline would
 * let it forge log lines) and bytes that are not UTF-8 become '?', and it
 * is cut at a character boundary (sf_text_clean). Returns the length. */
size_t bus_text_clean(char *out, size_t len, const unsigned char *in, size_t n);

#endif
