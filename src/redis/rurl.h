/*
 * rurl.h - where a Redis server is: the URL the bus (--bus) and the task
 * queue (--queue, `sockfork worker`) are given.
 *
 * Accepted forms, anything else is refused with a one-line reason:
 *   redis://HOST[:PORT][/REST]   HOST an IPv4 literal, an [IPv6] literal or a
 *                                name; PORT 1..65535, default 6379
 *   unix:PATH[?db=N][&name=NAME] PATH absolute, shorter than sun_path
 * REST is DB (all digits), NAME, or DB/NAME; NAME is [A-Za-z0-9._:-]{1,64}.
 * The DB number is only checked for digits: Redis itself refuses one out of
 * its range at SELECT. No user or password (we take none), no TLS.
 *
 * A name is resolved when rconn connects (hiredis calls getaddrinfo there,
 * synchronously), not here.
 */
#ifndef SF_REDIS_RURL_H
#define SF_REDIS_RURL_H

#include <stddef.h>

#define RURL_NAME_MAX 64
#define RURL_DEFAULT_PORT 6379

typedef struct rurl {
    char host[256];     /* "" for unix; an IPv6 literal without its brackets */
    unsigned port;      /* 0 for unix */
    char path[108];     /* the unix socket's path, "" for tcp */
    int db;             /* -1: none given (no SELECT) */
    char name[RURL_NAME_MAX + 1]; /* the queue's name, "" if none */
    char text[512];     /* the URL as given, for logs (it holds no secret) */
} rurl;

/* Parses s into *out. want_name: 1, the caller needs a NAME (the queue);
 * 0, it must have none (the bus). Returns 0, or -EINVAL with *why (if why is
 * not NULL) set to a static one-line reason; *out is then unspecified. */
int rurl_parse(const char *s, int want_name, rurl *out, const char **why);

/* Splits REST (the text after "redis://HOST[:PORT]/", which may be "") into
 * a DB number and a NAME: "" (none), "DB", "NAME" (want_name only), "DB/NAME".
 * *db is -1 and name "" when absent; name holds RURL_NAME_MAX + 1 bytes.
 * Returns 0 or -EINVAL with *why set, as rurl_parse. */
int rurl_split_db_name(const char *rest, int want_name, int *db, char *name,
                       const char **why);

/* The URL's text for logs: out->text. */
static inline const char *rurl_text(const rurl *u) { return u->text; }

#endif
