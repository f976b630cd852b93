/*
 * http.h - the head of an HTTP/1.x request (RFC 9112), for the metrics
 * endpoint: the request line and the header lines, up to the blank line.
 * Pure: bytes in, a parsed request, "need more", or an error out; no
 * sockets, no allocation (fuzzed by fuzz_http).
 *
 * The caller keeps what it has read in one buffer and parses it whole
 * each time more arrives: the parser looks at the first HTTP_HEAD_MAX
 * bytes only, and says the same thing of a buffer and of every longer one
 * that starts with it, once it has said anything but HTTP_MORE.
 *
 * What is accepted: "METHOD SP TARGET SP HTTP/1.x" then header lines
 * "name: value", each line ending in CRLF or a bare LF (RFC 9112 2.2 lets a
 * server take either), then an empty line. A method is 1 to HTTP_METHOD_MAX
 * token characters; the target is in origin form (it starts with '/'),
 * visible ASCII only; a header's name is token characters, its value
 * visible characters, spaces and tabs (bytes 0x80-0xff too, as obs-text).
 * Refused: a bare CR, a control character, a line starting with white
 * space (obs-fold), empty lines before the request line, a missing colon.
 * The body, if any, is not read: the endpoint answers and closes.
 */
#ifndef SF_SERVER_HTTP_H
#define SF_SERVER_HTTP_H

#include <stddef.h>

#define HTTP_HEAD_MAX 8192   /* bytes of a request's head, its blank line included */
#define HTTP_HEADERS_MAX 64  /* header lines */
#define HTTP_METHOD_MAX 16
#define HTTP_TARGET_MAX 1024

enum { HTTP_MORE = 0, HTTP_DONE = 1 };

typedef struct http_request {
    char method[HTTP_METHOD_MAX + 1];
    char path[HTTP_TARGET_MAX + 1]; /* the target up to its '?', if any */
    int minor;                      /* HTTP/1.<minor> */
    unsigned nheaders;
    size_t head_len;                /* the head's bytes, its blank line included */
} http_request;

/*
 * Parses the head at the start of buf. Returns HTTP_DONE (req filled;
 * the head is req->head_len bytes), HTTP_MORE (no blank line yet, and
 * nothing wrong so far), or:
 *   -EINVAL          malformed (400),
 *   -EMSGSIZE        no end within HTTP_HEAD_MAX bytes, or more than
 *                    HTTP_HEADERS_MAX header lines (431),
 *   -ENAMETOOLONG    a target over HTTP_TARGET_MAX bytes (414),
 *   -EPROTONOSUPPORT an HTTP version other than 1.x (505).
 */
int http_parse(const char *buf, size_t len, http_request *req);

/* The status code that answers an error of http_parse (400 for any other). */
int http_error_status(int err);

/* The reason phrase of a status code this server sends ("OK", "Not
 * Found"); "Error" for another. Static storage. */
const char *http_reason(int status);

#endif
