/* rurl.c - Redis URL parsing (see rurl.h for the accepted forms). */
#include "redis/rurl.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#define DB_DIGITS_MAX 9 /* fits an int; Redis checks the real range */

static int fail(const char **why, const char *reason)
{
    if (why)
        *why = reason;
    return -EINVAL;
}

static int all_digits(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

static int name_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
           (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == ':' || ch == '-';
}

static int host_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
           (ch >= '0' && ch <= '9') || ch == '.' || ch == '-' || ch == '_';
}

/* s[0..n) as a DB number. */
static int parse_db(const char *s, size_t n, int *db, const char **why)
{
    if (!all_digits(s, n))
        return fail(why, "the database must be a number");
    if (n > DB_DIGITS_MAX)
        return fail(why, "the database number is too large");
    int v = 0;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    *db = v;
    return 0;
}

/* s[0..n) as a NAME. */
static int parse_name(const char *s, size_t n, char *name, const char **why)
{
    if (n == 0)
        return fail(why, "the queue name is empty");
    if (n > RURL_NAME_MAX)
        return fail(why, "the queue name is longer than 64 characters");
    for (size_t i = 0; i < n; i++)
        if (!name_char(s[i]))
            return fail(why, "the queue name may hold only A-Z a-z 0-9 . _ : -");
    memcpy(name, s, n);
    name[n] = '\0';
    return 0;
}

int rurl_split_db_name(const char *rest, int want_name, int *db, char *name,
                       const char **why)
{
    *db = -1;
    name[0] = '\0';
    const char *slash = strchr(rest, '/');
    size_t len = strlen(rest);

    if (slash) {
        int rc = parse_db(rest, (size_t)(slash - rest), db, why);
        if (rc < 0)
            return rc;
        if (!want_name)
            return fail(why, "no queue name is taken here: give at most /DB");
        return parse_name(slash + 1, strlen(slash + 1), name, why);
    }
    if (want_name) {
        if (len == 0)
            return fail(why, "a queue name is needed: /NAME or /DB/NAME");
        return parse_name(rest, len, name, why);
    }
    if (len == 0)
        return 0;
    return parse_db(rest, len, db, why);
}

/* HOST[:PORT] in s[0..n). */
static int parse_hostport(const char *s, size_t n, rurl *out, const char **why)
{
    const char *host = s, *colon;
    size_t hostlen;

    if (n == 0)
        return fail(why, "the host is empty");
    if (memchr(s, '@', n))
        return fail(why, "a user or password in the URL is not supported");
    if (s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close)
            return fail(why, "an IPv6 address needs its closing ]");
        host = s + 1;
        hostlen = (size_t)(close - host);
        char tmp[64];
        struct in6_addr a6;
        if (hostlen == 0 || hostlen >= sizeof tmp)
            return fail(why, "not an IPv6 address in [ ]");
        memcpy(tmp, host, hostlen);
        tmp[hostlen] = '\0';
        if (inet_pton(AF_INET6, tmp, &a6) != 1)
            return fail(why, "not an IPv6 address in [ ]");
        colon = close + 1 < s + n ? close + 1 : NULL;
        if (colon && *colon != ':')
            return fail(why, "after ] only :PORT may follow");
    } else {
        colon = memchr(s, ':', n);
        hostlen = colon ? (size_t)(colon - s) : n;
        if (colon && memchr(colon + 1, ':', n - hostlen - 1))
            return fail(why, "an IPv6 address must be written in [ ]");
        if (hostlen == 0)
            return fail(why, "the host is empty");
        for (size_t i = 0; i < hostlen; i++)
            if (!host_char(s[i]))
                return fail(why, "the host may hold only letters, digits, . - _");
    }
    if (hostlen >= sizeof out->host)
        return fail(why, "the host name is too long");
    memcpy(out->host, host, hostlen);
    out->host[hostlen] = '\0';

    out->port = RURL_DEFAULT_PORT;
    if (colon) {
        const char *p = colon + 1;
        size_t plen = (size_t)(s + n - p);
        if (!all_digits(p, plen) || plen > 5)
            return fail(why, "the port must be a number from 1 to 65535");
        unsigned v = 0;
        for (size_t i = 0; i < plen; i++)
            v = v * 10 + (unsigned)(p[i] - '0');
        if (v < 1 || v > 65535)
            return fail(why, "the port must be a number from 1 to 65535");
        out->port = v;
    }
    return 0;
}

static int parse_tcp(const char *s, int want_name, rurl *out, const char **why)
{
    const char *slash = strchr(s, '/');
    size_t hplen = slash ? (size_t)(slash - s) : strlen(s);
    int rc = parse_hostport(s, hplen, out, why);

    if (rc < 0)
        return rc;
    if (strpbrk(s, "?#"))
        return fail(why, "redis:// takes no ?query or #fragment");
    return rurl_split_db_name(slash ? slash + 1 : "", want_name, &out->db, out->name, why);
}

/* One key=value of unix:PATH?... in s[0..n). */
static int parse_unix_param(const char *s, size_t n, int *seen_db, int *seen_name,
                            rurl *out, const char **why)
{
    if (n > 3 && memcmp(s, "db=", 3) == 0) {
        if ((*seen_db)++)
            return fail(why, "db= is given twice");
        return parse_db(s + 3, n - 3, &out->db, why);
    }
    if (n >= 5 && memcmp(s, "name=", 5) == 0) {
        if ((*seen_name)++)
            return fail(why, "name= is given twice");
        return parse_name(s + 5, n - 5, out->name, why);
    }
    return fail(why, "unix: takes only ?db=N and &name=NAME");
}

static int parse_unix(const char *s, int want_name, rurl *out, const char **why)
{
    const char *q = strchr(s, '?');
    size_t plen = q ? (size_t)(q - s) : strlen(s);
    int seen_db = 0, seen_name = 0;

    if (plen == 0)
        return fail(why, "the unix socket path is empty");
    if (s[0] != '/')
        return fail(why, "the unix socket path must be absolute");
    if (plen >= sizeof ((struct sockaddr_un *)0)->sun_path || plen >= sizeof out->path)
        return fail(why, "the unix socket path is too long");
    memcpy(out->path, s, plen);
    out->path[plen] = '\0';
    while (q) {
        const char *p = q + 1, *amp = strchr(p, '&');
        size_t n = amp ? (size_t)(amp - p) : strlen(p);
        int rc = parse_unix_param(p, n, &seen_db, &seen_name, out, why);
        if (rc < 0)
            return rc;
        q = amp;
    }
    if (want_name && !seen_name)
        return fail(why, "a queue name is needed: ?name=NAME");
    if (!want_name && seen_name)
        return fail(why, "no queue name is taken here: drop name=");
    return 0;
}

int rurl_parse(const char *s, int want_name, rurl *out, const char **why)
{
    memset(out, 0, sizeof *out);
    out->db = -1;
    if (!s || !*s)
        return fail(why, "the Redis URL is empty");
    if (strlen(s) >= sizeof out->text)
        return fail(why, "the Redis URL is too long");
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f)
            return fail(why, "the Redis URL holds a space or a control character");
    memcpy(out->text, s, strlen(s) + 1);
    if (strncmp(s, "redis://", 8) == 0)
        return parse_tcp(s + 8, want_name, out, why);
    if (strncmp(s, "unix:", 5) == 0)
        return parse_unix(s + 5, want_name, out, why);
    if (strncmp(s, "rediss://", 9) == 0)
        return fail(why, "TLS (rediss://) is not supported");
    return fail(why, "a Redis URL starts with redis:// or unix:");
}
