/* control.c - see control.h. */
#include "server/control.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

json_t *ctl_error(const char *fmt, ...)
{
    char msg[512], safe[3 * sizeof msg + 1];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    /* A message may quote the request (a parser's "near '...'"): valid
     * UTF-8 only, or there would be no JSON answer at all. */
    sf_text_clean(safe, sizeof safe, msg, strnlen(msg, sizeof msg), "?");
    return json_pack("{s:b, s:s}", "ok", 0, "error", safe);
}

char ctl_later_tag;

static void client_close(ctl_client *cl)
{
    if (cl->fd < 0)
        return;
    ev_io_stop(cl->owner->loop, &cl->io);
    close(cl->fd);
    cl->fd = -1;
    free(cl->in);
    free(cl->out);
    cl->in = cl->out = NULL;
    cl->in_have = cl->out_len = cl->out_sent = cl->discarding = 0;
    cl->waiting = cl->read_eof = 0;
}

/* Watch for reading always, for writing while answers wait. */
static void client_watch(ctl_client *cl)
{
    int events = (cl->read_eof ? 0 : EV_READ) | (cl->out_sent < cl->out_len ? EV_WRITE : 0);

    if (ev_is_active(&cl->io) && (cl->io.events & (EV_READ | EV_WRITE)) == events)
        return;
    ev_io_stop(cl->owner->loop, &cl->io);
    if (!events)
        return;
    ev_io_set(&cl->io, cl->fd, events);
    ev_io_start(cl->owner->loop, &cl->io);
}

/* Appends an answer line. Returns 0, or -ENOBUFS when the client has let
 * CTL_REPLY_MAX of answers pile up unread, or -ENOMEM. */
static int client_reply(ctl_client *cl, json_t *reply)
{
    char *text;
    size_t len;

    if (!reply)
        reply = ctl_error("out of memory");
    if (!reply)
        return -ENOMEM;
    text = json_dumps(reply, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(reply);
    if (!text)
        return -ENOMEM;
    len = strlen(text);
    if (cl->out_sent == cl->out_len)
        cl->out_sent = cl->out_len = 0; /* all written: start over */
    if (cl->out_len + len + 1 > CTL_REPLY_MAX) {
        free(text);
        return -ENOBUFS;
    }
    char *nb = realloc(cl->out, cl->out_len + len + 1);
    if (!nb) {
        free(text);
        return -ENOMEM;
    }
    cl->out = nb;
    memcpy(cl->out + cl->out_len, text, len);
    cl->out[cl->out_len + len] = '\n';
    cl->out_len += len + 1;
    free(text);
    return 0;
}

/* Writes what the socket takes. Returns 0, or -1 if the client is gone. */
static int client_flush(ctl_client *cl)
{
    while (cl->out_sent < cl->out_len) {
        ssize_t n = send(cl->fd, cl->out + cl->out_sent, cl->out_len - cl->out_sent, MSG_NOSIGNAL);
        if (n < 0)
            return errno == EAGAIN || errno == EINTR ? 0 : -1;
        cl->out_sent += (size_t)n;
    }
    return 0;
}

/* "cmd" is compared as a C string: one holding U+0000 could pass for
 * another ("list\u0000x"), so it is refused by name. Other strings are
 * taken with their length (a "text" may carry U+0000 to a child). */
static json_t *answer(ctl_server *c, const char *line, size_t len)
{
    json_error_t jerr;
    json_t *req, *cmd, *reply;

    req = json_loadb(line, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!req)
        return ctl_error("a request is one JSON object on one line: %s (column %d)", jerr.text,
                         jerr.column);
    if (!json_is_object(req)) {
        json_decref(req);
        return ctl_error("a request is one JSON object on one line, not an array or a value");
    }
    cmd = json_object_get(req, "cmd");
    if (!json_is_string(cmd))
        reply = ctl_error("a request needs a string \"cmd\"");
    else if (strlen(json_string_value(cmd)) != json_string_length(cmd))
        reply = ctl_error("\"cmd\" may not contain U+0000");
    else
        reply = c->cb(c->arg, json_string_value(cmd), req);
    json_decref(req);
    return reply;
}

/* Answers every complete line in the buffer. Returns 0, or -1 when the
 * client has to go (too much unread, or a line past the limit). */
static int client_process(ctl_client *cl)
{
    size_t start = 0;
    char *nl;

    /* Answers go in request order: after a CTL_LATER, the next request
     * waits in the buffer for it. */
    while (!cl->waiting && (nl = memchr(cl->in + start, '\n', cl->in_have - start)) != NULL) {
        const char *line = cl->in + start;
        size_t len = (size_t)(nl - line);
        json_t *reply;
        if (len > 0 && line[len - 1] == '\r')
            len--;
        start = (size_t)(nl - cl->in) + 1;
        if (len == 0)
            continue;
        reply = answer(cl->owner, line, len);
        if (reply == CTL_LATER) {
            cl->waiting = 1;
            break;
        }
        if (client_reply(cl, reply) < 0) {
            sf_logn(cl->owner->log, SF_LOG_WARN, "control_dropped",
                    "control client not reading its answers: dropped");
            return -1;
        }
    }
    memmove(cl->in, cl->in + start, cl->in_have - start);
    cl->in_have -= start;
    if (cl->in_have == CTL_LINE_MAX) {
        /* A line past the limit: say so, then hang up once the client has
         * stopped sending (closing with its bytes unread would reset the
         * connection, and the client might never read the answer). */
        if (client_reply(cl, ctl_error("request longer than %d bytes", CTL_LINE_MAX)) < 0)
            return -1;
        (void)shutdown(cl->fd, SHUT_RD);
        cl->in_have = 0;
        cl->discarding = 1;
    }
    return 0;
}

static void client_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    ctl_client *cl = w->data;
    (void)loop;

    if ((revents & EV_READ) && cl->discarding) {
        /* Bounded: a client that keeps sending past CTL_LINE_MAX more is cut. */
        ssize_t n = read(cl->fd, cl->in, CTL_LINE_MAX);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) ||
            (cl->discarding += (size_t)(n > 0 ? n : 0)) > CTL_LINE_MAX) {
            (void)client_flush(cl);
            client_close(cl);
            return;
        }
        revents &= ~EV_READ;
    }
    if (revents & EV_READ) {
        ssize_t n = read(cl->fd, cl->in + cl->in_have, CTL_LINE_MAX - cl->in_have);

        if (n == 0 && cl->waiting) {
            /* Shut down its side (socat, nc -N) after a request answered
             * later: the answer still goes out, then it is closed. */
            cl->read_eof = 1;
            client_watch(cl);
            return;
        }
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            client_close(cl);
            return;
        }
        if (n > 0) {
            cl->in_have += (size_t)n;
            if (client_process(cl) < 0) {
                client_close(cl);
                return;
            }
        }
    }
    if (client_flush(cl) < 0 || (cl->read_eof && !cl->waiting && cl->out_sent == cl->out_len)) {
        client_close(cl);
        return;
    }
    if (cl->discarding && cl->out_sent == cl->out_len)
        (void)shutdown(cl->fd, SHUT_WR); /* the answer is out: EOF follows it */
    client_watch(cl);
}

void ctl_answer_waiting(ctl_server *c, json_t *(*make)(void *arg), void *arg)
{
    for (int i = 0; c->open && i < CTL_CLIENTS_MAX; i++) {
        ctl_client *cl = &c->clients[i];
        if (cl->fd < 0 || !cl->waiting)
            continue;
        cl->waiting = 0;
        /* Written at once: the server may be on its way out after it. */
        if (client_reply(cl, make(arg)) < 0 || client_process(cl) < 0 || client_flush(cl) < 0 ||
            (cl->read_eof && cl->out_sent == cl->out_len)) {
            client_close(cl);
            continue;
        }
        client_watch(cl);
    }
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    ctl_server *c = w->data;
    (void)loop;
    (void)revents;

    /* Bounded: at most CTL_CLIENTS_MAX accepts per wakeup. */
    for (int tries = 0; tries < CTL_CLIENTS_MAX; tries++) {
        ctl_client *cl = NULL;
        int fd = accept4(c->lis.fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

        if (fd < 0)
            return; /* EAGAIN, or a transient error: the watcher calls again */
        for (int i = 0; i < CTL_CLIENTS_MAX && !cl; i++) {
            if (c->clients[i].fd < 0)
                cl = &c->clients[i];
        }
        if (cl)
            cl->in = malloc(CTL_LINE_MAX);
        if (!cl || !cl->in) {
            static const char busy[] = "{\"ok\":false,\"error\":\"too many control clients\"}\n";
            (void)!send(fd, busy, sizeof busy - 1, MSG_NOSIGNAL);
            close(fd);
            continue;
        }
        cl->fd = fd;
        cl->owner = c;
        cl->in_have = cl->out_len = cl->out_sent = 0;
        cl->out = NULL;
        ev_io_init(&cl->io, client_cb, fd, EV_READ);
        cl->io.data = cl;
        ev_io_start(c->loop, &cl->io);
    }
}

int ctl_open(ctl_server *c, struct ev_loop *loop, const char *path, ctl_cb cb, void *arg,
             const sf_logger *log, int take_over)
{
    sf_addr a;
    int rc;
    int n;

    memset(c, 0, sizeof *c);
    c->loop = loop;
    c->cb = cb;
    c->arg = arg;
    c->log = log;
    for (int i = 0; i < CTL_CLIENTS_MAX; i++)
        c->clients[i].fd = -1;
    memset(&a, 0, sizeof a);
    if (!path[0] || strlen(path) >= sizeof a.u.un.sun_path)
        return -ENAMETOOLONG;
    a.u.un.sun_family = AF_UNIX;
    strcpy(a.u.un.sun_path, path);
    a.len = sizeof a.u.un;
    rc = listener_open(&c->lis, &a, 0, 0600);
    if (rc == -EADDRINUSE && take_over) {
        n = snprintf(a.u.un.sun_path, sizeof a.u.un.sun_path, "%s.new%d", path, (int)getpid());
        if (n < 0 || (size_t)n >= sizeof a.u.un.sun_path)
            return -ENAMETOOLONG;
        if ((rc = listener_open(&c->lis, &a, 0, 0600)) < 0)
            return rc;
        if (rename(a.u.un.sun_path, path) < 0) {
            rc = -errno;
            listener_close(&c->lis);
            return rc;
        }
        strcpy(c->lis.addr.u.un.sun_path, path); /* the same file: dev and ino hold */
    }
    if (rc < 0)
        return rc;
    ev_io_init(&c->lis.io, accept_cb, c->lis.fd, EV_READ);
    c->lis.io.data = c;
    ev_io_start(loop, &c->lis.io);
    c->open = 1;
    return 0;
}

void ctl_close(ctl_server *c)
{
    if (!c->open)
        return;
    for (int i = 0; i < CTL_CLIENTS_MAX; i++)
        client_close(&c->clients[i]);
    ev_io_stop(c->loop, &c->lis.io);
    listener_close(&c->lis);
    c->open = 0;
}
