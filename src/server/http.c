/* http.c - see http.h. */
#include "server/http.h"

#include <errno.h>
#include <string.h>

/* RFC 9110 5.6.2: tchar. */
static int is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* A field value's bytes: VCHAR, obs-text, SP, HTAB. */
static int is_value_char(unsigned char c)
{
    return c == ' ' || c == '\t' || (c > 0x20 && c != 0x7f);
}

/* The next line of buf[at, len): its length without the line end in
 * *line_len; returns where the following line starts, or 0 when the line
 * is not complete yet. A CR is part of the end only right before LF. */
static size_t next_line(const char *buf, size_t len, size_t at, size_t *line_len)
{
    const char *lf = memchr(buf + at, '\n', len - at);
    size_t end;

    if (!lf)
        return 0;
    end = (size_t)(lf - buf);
    *line_len = end - at;
    if (*line_len > 0 && buf[end - 1] == '\r')
        (*line_len)--;
    return end + 1;
}

static int parse_request_line(const char *p, size_t n, http_request *req)
{
    size_t i = 0, start, target_len, path_len;

    while (i < n && is_tchar((unsigned char)p[i]))
        i++;
    if (i == 0 || i > HTTP_METHOD_MAX || i >= n || p[i] != ' ')
        return -EINVAL;
    memcpy(req->method, p, i);
    req->method[i] = '\0';
    start = ++i;
    while (i < n && (unsigned char)p[i] > 0x20 && (unsigned char)p[i] < 0x7f)
        i++;
    target_len = i - start;
    if (target_len == 0 || p[start] != '/' || i >= n || p[i] != ' ')
        return -EINVAL;
    /* The version must still be right: a long target is 414 only in an
     * otherwise good line. */
    if (n - i - 1 != 8 || memcmp(p + i + 1, "HTTP/", 5) != 0 || p[i + 7] != '.' ||
        p[i + 6] < '0' || p[i + 6] > '9' || p[i + 8] < '0' || p[i + 8] > '9')
        return -EINVAL;
    if (p[i + 6] != '1')
        return -EPROTONOSUPPORT;
    if (target_len > HTTP_TARGET_MAX)
        return -ENAMETOOLONG;
    req->minor = p[i + 8] - '0';
    path_len = target_len;
    for (size_t k = 0; k < target_len; k++) {
        if (p[start + k] == '?') {
            path_len = k;
            break;
        }
    }
    memcpy(req->path, p + start, path_len);
    req->path[path_len] = '\0';
    return 0;
}

static int parse_header_line(const char *p, size_t n)
{
    size_t i = 0;

    while (i < n && is_tchar((unsigned char)p[i]))
        i++;
    if (i == 0 || i >= n || p[i] != ':')
        return -EINVAL;
    for (i++; i < n; i++) {
        if (!is_value_char((unsigned char)p[i]))
            return -EINVAL;
    }
    return 0;
}

int http_parse(const char *buf, size_t len, http_request *req)
{
    size_t at = 0, next, n;
    int rc;

    memset(req, 0, sizeof *req);
    if (len > HTTP_HEAD_MAX)
        len = HTTP_HEAD_MAX;
    /* The request line: a bare CR or any control character in it is
     * refused by the character checks. */
    next = next_line(buf, len, at, &n);
    if (!next)
        return len == HTTP_HEAD_MAX ? -EMSGSIZE : HTTP_MORE;
    if ((rc = parse_request_line(buf, n, req)) < 0)
        return rc;
    for (at = next;; at = next) {
        next = next_line(buf, len, at, &n);
        if (!next)
            return len == HTTP_HEAD_MAX ? -EMSGSIZE : HTTP_MORE;
        if (n == 0) {
            req->head_len = next;
            return HTTP_DONE;
        }
        if (req->nheaders == HTTP_HEADERS_MAX)
            return -EMSGSIZE;
        if (parse_header_line(buf + at, n) < 0)
            return -EINVAL;
        req->nheaders++;
    }
}

int http_error_status(int err)
{
    switch (err) {
    case -EMSGSIZE: return 431;
    case -ENAMETOOLONG: return 414;
    case -EPROTONOSUPPORT: return 505;
    default: return 400;
    }
}

const char *http_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}
