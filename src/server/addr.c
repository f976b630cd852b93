/* addr.c - the text forms of listening and peer addresses. */
#include "server/addr.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HOST_MAX 256

static int parse_port(const char *p, unsigned *port)
{
    unsigned long v = 0;

    if (!*p)
        return -EINVAL;
    for (; *p; p++) {
        if (!isdigit((unsigned char)*p))
            return -EINVAL;
        v = v * 10 + (unsigned long)(*p - '0');
        if (v > 65535)
            return -EINVAL;
    }
    *port = (unsigned)v;
    return 0;
}

static int parse_unix(sf_addr *out, const char *path)
{
    size_t n = strlen(path);
    struct sockaddr_un *un = &out->u.un;

    if (n == 0 || n >= sizeof un->sun_path)
        return -EINVAL;
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, path, n);
    if (path[0] == '@') {
        /* Linux abstract namespace: a leading NUL, no file. */
        un->sun_path[0] = '\0';
        out->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    } else {
        out->len = (socklen_t)sizeof *un;
    }
    return 0;
}

/* A numeric address of either family, or (if allowed) a name, resolved. */
static int resolve_host(sf_addr *out, const char *host, unsigned port, int want_v6, int names)
{
    struct addrinfo hints, *res = NULL;
    int rc;

    memset(&hints, 0, sizeof hints);
    hints.ai_family = want_v6 ? AF_INET6 : AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = want_v6 || !names ? AI_NUMERICHOST : 0;
    rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0)
        return rc == EAI_NONAME || rc == EAI_NODATA || rc == EAI_FAIL ? -ENOENT : -EINVAL;
    if (res->ai_addrlen > sizeof out->u) {
        freeaddrinfo(res);
        return -EINVAL;
    }
    memcpy(&out->u, res->ai_addr, res->ai_addrlen);
    out->len = res->ai_addrlen;
    freeaddrinfo(res);
    if (out->u.sa.sa_family == AF_INET)
        out->u.in4.sin_port = htons((uint16_t)port);
    else if (out->u.sa.sa_family == AF_INET6)
        out->u.in6.sin6_port = htons((uint16_t)port);
    else
        return -EINVAL;
    return 0;
}

int sf_addr_parse(sf_addr *out, const char *text)
{
    return addr_parse(out, text, 1);
}

int addr_parse(sf_addr *out, const char *text, int resolve_names)
{
    char host[HOST_MAX];
    const char *colon, *hs, *he;
    unsigned port;
    int want_v6 = 0, rc;

    memset(out, 0, sizeof *out);
    if (!text)
        return -EINVAL;
    if (strncmp(text, "unix:", 5) == 0)
        return parse_unix(out, text + 5);

    if (text[0] == '[') {
        hs = text + 1;
        he = strchr(hs, ']');
        if (!he || he[1] != ':')
            return -EINVAL;
        colon = he + 1;
        want_v6 = 1;
    } else {
        hs = text;
        colon = strrchr(text, ':');
        if (!colon)
            return -EINVAL;
        he = colon;
        /* "::1:80" is ambiguous: IPv6 literals need brackets. */
        if (memchr(hs, ':', (size_t)(he - hs)))
            return -EINVAL;
    }
    if (he == hs || (size_t)(he - hs) >= sizeof host)
        return -EINVAL;
    if (parse_port(colon + 1, &port) < 0)
        return -EINVAL;
    memcpy(host, hs, (size_t)(he - hs));
    host[he - hs] = '\0';
    rc = resolve_host(out, host, port, want_v6, resolve_names);
    /* "[1.2.3.4]:80": brackets are for IPv6 literals only. */
    if (rc == 0 && want_v6 && out->u.sa.sa_family != AF_INET6)
        return -EINVAL;
    return rc;
}

int sf_addr_host(const sf_addr *a, char *buf, size_t len)
{
    const char *r;

    switch (a->u.sa.sa_family) {
    case AF_INET:
        r = inet_ntop(AF_INET, &a->u.in4.sin_addr, buf, (socklen_t)len);
        break;
    case AF_INET6:
        r = inet_ntop(AF_INET6, &a->u.in6.sin6_addr, buf, (socklen_t)len);
        break;
    case AF_UNIX: {
        size_t plen = a->len > offsetof(struct sockaddr_un, sun_path)
                          ? a->len - offsetof(struct sockaddr_un, sun_path) : 0;
        if (plen > 0 && a->u.un.sun_path[0] == '\0') {
            int n = snprintf(buf, len, "@%.*s", (int)(plen - 1), a->u.un.sun_path + 1);
            return n < 0 ? -EINVAL : (size_t)n >= len ? -ENOSPC : n;
        }
        int n = snprintf(buf, len, "%.*s", (int)strnlen(a->u.un.sun_path, plen), a->u.un.sun_path);
        return n < 0 ? -EINVAL : (size_t)n >= len ? -ENOSPC : n;
    }
    default:
        return -EAFNOSUPPORT;
    }
    return r ? (int)strlen(buf) : -ENOSPC;
}

unsigned sf_addr_port(const sf_addr *a)
{
    switch (a->u.sa.sa_family) {
    case AF_INET: return ntohs(a->u.in4.sin_port);
    case AF_INET6: return ntohs(a->u.in6.sin6_port);
    default: return 0;
    }
}

int sf_addr_format(const sf_addr *a, char *buf, size_t len)
{
    char host[SF_ADDR_TEXT_MAX];
    int n, rc;

    if (len > 0)
        buf[0] = '\0';
    rc = sf_addr_host(a, host, sizeof host);
    if (rc < 0)
        return rc;
    switch (a->u.sa.sa_family) {
    case AF_INET: n = snprintf(buf, len, "%s:%u", host, sf_addr_port(a)); break;
    case AF_INET6: n = snprintf(buf, len, "[%s]:%u", host, sf_addr_port(a)); break;
    default: n = snprintf(buf, len, "unix:%s", host); break;
    }
    if (n < 0)
        return -EINVAL;
    return (size_t)n >= len ? -ENOSPC : n;
}
