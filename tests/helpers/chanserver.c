/*
 * chanserver - an sf_server whose C handler drives the channel API, for
 * tests/integration/test_bus.py and test_channel.py.
 *
 *   chanserver serve [-l ADDR]... [--control PATH | --no-control] [-c N]
 *                    [--queue BYTES] [--kick] [--history N] [--chan-max BYTES]
 *                    [--grace S] [--count N] [--size BYTES] [--what BCAST|PUB|SEND]
 *                    [--target T] [--garbage KIND] [--workers MIN[:MAX]]
 *                    [--max-requests N] [--worker-idle S] [--conn-timeout S]
 *                    [--crash-if PATH] MODE
 *
 * The command line looks like `sockfork serve`'s, and so does stderr
 * ("sockfork: listening on ADDR", "sockfork: control socket unix:PATH", then
 * the library's log lines), so the tests' Server class runs it unchanged.
 *
 * Every child greets its client with "HELLO <pid>" and then, in every mode,
 * takes one command per line from the client (text arguments are
 * %XX-decoded, so a test can send any byte):
 *
 *   PID                       -> PID <pid>
 *   SYNC                      -> OK SYNC
 *   SUB topic N | UNSUB topic | PUB topic text | PUBBIG topic N
 *   SEND pid text | SENDBIG pid N | SENDNAME name text | BCAST text
 *   CLAIM name | RELEASE name | STATUS text | LOG text
 *                             -> OK <CMD>, or ERR <CMD> <rc> if the call failed
 *   DEAF                      -> OK DEAF; the channel is never read again
 *   GRANDSEND pid text        -> OK GRANDSEND <status>: a process this child
 *                                forks sends it (status 0: its send returned 0)
 *   HEAR                      -> OK HEAR; the channel is read from now on (in
 *                                noread mode: its first use, in fork mode the
 *                                moment the child makes it)
 *   MUTE                      -> OK MUTE; messages are counted, not written
 *   COUNT                     -> COUNT total=N direct=N ... error=N
 *   FLOOD BCAST|PUB|SEND N SIZE [topic|pid]
 *                             -> OK FLOOD sent=N (or ERR FLOOD rc after=N)
 *   GARBAGE KIND              -> OK GARBAGE (bytes that are not a frame; or
 *                                outopen, outpipe, outshort: an OUT_OPEN frame
 *                                with the client's socket, with a pipe, or
 *                                malformed with the socket)
 *   QUIT                      -> BYE, and the handler returns 0; EXIT N: returns N
 *                                (the child exits with it; a prefork worker lives on)
 *   FDS                       -> FDS fd=target fd=target ... (what /proc/self/fd
 *                                holds, the listing's own descriptor left out)
 *   ABORT                     -> nothing: the process aborts (SIGABRT)
 *   DIE N                     -> nothing: the process _exits N (in prefork
 *                                mode, the worker with it)
 *
 * A bus request is followed by a send to the child's own pid, and OK comes
 * only once that message is back: the supervisor handles a child's
 * requests in order, so OK means the request has been carried out
 * (delivered to every recipient's channel). Not while DEAF.
 *
 * Every message received is written as one line
 *   MSG <kind> <from> <ok> <topic|-> <len> <data|->
 * topic and data %XX-encoded (bytes <= space, '%', >= 0x7f), data cut at
 * 200 bytes (len is the whole length). "CLOSED" when the supervisor closes
 * the channel; "ERR RECV <rc>" when sf_conn_recv fails.
 *
 * MODE: bus (commands only); flood (at once: --count messages of --size
 * bytes, --what to --target, then DONE sent=N and exit 0); noread (DEAF
 * from the start); garbage (GARBAGE --garbage at once).
 *
 * --workers, --max-requests, --worker-idle, --conn-timeout set the fields of
 * sf_server_opts of the same names (prefork mode: test_prefork.py). With
 * --crash-if PATH, a handler aborts before its greeting while PATH exists:
 * a handler that crashes on every connection, until the test says stop.
 */
#include <sockfork.h>

#include <errno.h>
#include <dirent.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_LISTEN 8
#define LINE_MAX_BYTES (256 * 1024)
#define SHOW_MAX 200

/* --------------------------------------------------------------- output */

static void write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;

    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        p += n;
        len -= (size_t)n;
    }
}

static void log_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void log_line(const char *fmt, ...)
{
    char line[1200];
    int n = snprintf(line, sizeof line, "sockfork: ");
    va_list ap;
    int m;

    va_start(ap, fmt);
    m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    if ((size_t)(n + m) > sizeof line - 2)
        m = (int)(sizeof line - 2) - n;
    line[n + m] = '\n';
    write_all(2, line, (size_t)(n + m + 1));
}

static void on_log(void *arg, int level, const char *line)
{
    (void)arg;
    (void)level;
    log_line("%s", line);
}

static void on_ready(sf_server *srv, void *arg)
{
    (void)arg;
    for (size_t i = 0; i < sf_server_listener_count(srv); i++) {
        char name[SF_ADDR_TEXT_MAX];
        sf_addr_format(sf_server_listener_addr(srv, i), name, sizeof name);
        log_line("listening on %s", name);
    }
    if (sf_server_control_path(srv))
        log_line("control socket unix:%s", sf_server_control_path(srv));
}

/* ------------------------------------------------------------ the child */

typedef struct opts {
    const char *mode;
    unsigned long count, size;
    const char *what, *target, *garbage;
    const char *crash_if;
} opts;

typedef struct state {
    sf_conn *c;
    int fd;
    int deaf, mute, chan_open;
    unsigned long seq;
    unsigned long counts[8];
    const opts *o;
} state;

static const char *kind_name(int kind)
{
    static const char *names[] = {"?", "direct", "name", "broadcast", "topic", "history",
                                  "claimed", "error"};
    return kind >= 1 && kind <= 7 ? names[kind] : "?";
}

static void reply(state *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reply(state *st, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    write_all(st->fd, line, (size_t)n);
}

/* %XX for bytes that would break a line or a field; "-" for nothing. */
static size_t escape(char *out, const unsigned char *p, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;

    if (n == 0) {
        out[o++] = '-';
        return o;
    }
    for (size_t i = 0; i < n; i++) {
        if (p[i] <= ' ' || p[i] == '%' || p[i] >= 0x7f) {
            out[o++] = '%';
            out[o++] = hex[p[i] >> 4];
            out[o++] = hex[p[i] & 15];
        } else {
            out[o++] = (char)p[i];
        }
    }
    return o;
}

static void emit(state *st, const sf_msg *m)
{
    char line[64 + 3 * 256 + 3 * SHOW_MAX + 8];
    size_t n, show = m->len < SHOW_MAX ? m->len : SHOW_MAX;

    if (m->kind >= 1 && m->kind <= 7)
        st->counts[m->kind]++;
    st->counts[0]++;
    if (st->mute)
        return;
    n = (size_t)snprintf(line, sizeof line, "MSG %s %d %d ", kind_name(m->kind), m->from, m->ok);
    n += escape(line + n, (const unsigned char *)m->topic, strlen(m->topic));
    n += (size_t)snprintf(line + n, sizeof line - n, " %zu ", m->len);
    n += escape(line + n, m->data, show);
    line[n++] = '\n';
    write_all(st->fd, line, n);
}

/* One message from the channel, waiting at most timeout_ms. Returns 1 with
 * *m, 0 on timeout, -EPIPE when the channel is closed, or -errno. */
static int recv_one(state *st, sf_msg *m, int timeout_ms)
{
    int rc;

    if (!sf_conn_msg_pending(st->c)) {
        struct pollfd p = {sf_conn_channel_fd(st->c), POLLIN, 0};
        do
            rc = poll(&p, 1, timeout_ms);
        while (rc < 0 && errno == EINTR);
        if (rc < 0)
            return -errno;
        if (rc == 0)
            return 0;
    }
    rc = sf_conn_recv(st->c, m);
    if (rc == 0) {
        st->chan_open = 0;
        reply(st, "CLOSED");
        return -EPIPE;
    }
    if (rc < 0) {
        st->chan_open = 0;
        reply(st, "ERR RECV %d", rc);
        return rc;
    }
    return 1;
}

/* Sends a token to our own pid and writes out what comes before it. */
static int sync_chan(state *st)
{
    char token[64];
    int n, rc;

    if (st->deaf || !st->chan_open)
        return 0;
    n = snprintf(token, sizeof token, "\001sync %lu", ++st->seq);
    rc = sf_conn_send(st->c, (int)getpid(), token, (size_t)n);
    if (rc < 0)
        return rc;
    for (;;) {
        sf_msg m;
        rc = recv_one(st, &m, 10000);
        if (rc == 0)
            return -ETIMEDOUT;
        if (rc < 0)
            return rc;
        if (m.kind == SF_MSG_DIRECT && m.from == (int)getpid() && m.len == (size_t)n &&
            memcmp(m.data, token, (size_t)n) == 0) {
            sf_msg_free(&m);
            return 0;
        }
        emit(st, &m);
        sf_msg_free(&m);
    }
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* %XX-decodes s in place; returns the length. */
static size_t unescape(char *s)
{
    size_t o = 0;

    for (size_t i = 0; s[i]; i++) {
        if (s[i] == '%' && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            s[o++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        } else {
            s[o++] = s[i];
        }
    }
    s[o] = '\0';
    return o;
}

/* Splits off the next space-separated word; *rest is what follows. */
static char *word(char **rest)
{
    char *p = *rest, *w;

    while (*p == ' ')
        p++;
    if (!*p) {
        *rest = p;
        return NULL;
    }
    w = p;
    while (*p && *p != ' ')
        p++;
    if (*p)
        *p++ = '\0';
    *rest = p;
    return w;
}

static void write_header(unsigned char *h, uint32_t len, uint16_t type, uint16_t flags)
{
    h[0] = (unsigned char)(len >> 24);
    h[1] = (unsigned char)(len >> 16);
    h[2] = (unsigned char)(len >> 8);
    h[3] = (unsigned char)len;
    h[4] = (unsigned char)(type >> 8);
    h[5] = (unsigned char)type;
    h[6] = (unsigned char)(flags >> 8);
    h[7] = (unsigned char)flags;
}

/* Writes bytes that are not a valid frame (or a frame with a descriptor
 * the supervisor did not ask for) to the channel. */
static int garbage(state *st, const char *kind)
{
    int cfd = sf_conn_channel_fd(st->c);
    unsigned char buf[64];
    size_t len = 8;
    int pass_fd = -1, pipe_fds[2] = {-1, -1}, rc = 0;

    memset(buf, 0, sizeof buf);
    if (strcmp(kind, "type") == 0) {
        write_header(buf, 0, 99, 0);                 /* unknown type */
    } else if (strcmp(kind, "big") == 0) {
        write_header(buf, 1u << 20, 18, 0);          /* 1 MiB: over the 64 KiB maximum */
    } else if (strcmp(kind, "flags") == 0) {
        write_header(buf, 2, 3, 0x0100);             /* an unknown flag */
        buf[8] = 'h', buf[9] = 'i';
        len = 10;
    } else if (strcmp(kind, "short") == 0) {
        write_header(buf, 2, 16, 0);                 /* SEND: 2 bytes, no room for a pid */
        len = 10;
    } else if (strcmp(kind, "badname") == 0) {
        write_header(buf, 6, 19, 0);                 /* PUBLISH: name of 300 bytes in 4 */
        buf[8] = 300 >> 8, buf[9] = 300 & 255;
        memcpy(buf + 10, "abcd", 4);
        len = 14;
    } else if (strcmp(kind, "fd") == 0) {
        write_header(buf, 2, 3, 0x0001);             /* LOG with a descriptor */
        buf[8] = 'h', buf[9] = 'i';
        len = 10;
        pass_fd = 2;
    } else if (strcmp(kind, "strayfd") == 0) {
        write_header(buf, 5, 3, 0);                  /* LOG, a descriptor, no flag */
        memcpy(buf + 8, "stray", 5);
        len = 13;
        pass_fd = 2;
    } else if (strcmp(kind, "outopen") == 0 || strcmp(kind, "outpipe") == 0) {
        /* OUT_OPEN (no limit, no reports, no words) with the client's socket,
         * or with a pipe: not a socket, refused. */
        write_header(buf, 10, 27, 0x0001);
        len = 18;
        pass_fd = st->fd;
        if (kind[3] == 'p') {
            if (pipe(pipe_fds) < 0)
                return -errno;
            pass_fd = pipe_fds[0];
        }
    } else if (strcmp(kind, "outshort") == 0) {
        write_header(buf, 3, 27, 0x0001);            /* OUT_OPEN, 3 bytes: malformed */
        len = 11;
        pass_fd = st->fd;
    } else {
        return -EINVAL;
    }
    if (pass_fd >= 0) {
        union {
            struct cmsghdr h;
            char space[CMSG_SPACE(sizeof(int))];
        } ctl;
        struct iovec iov = {buf, len};
        struct msghdr msg;
        struct cmsghdr *cm;

        memset(&msg, 0, sizeof msg);
        memset(&ctl, 0, sizeof ctl);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctl.space;
        msg.msg_controllen = sizeof ctl.space;
        cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &pass_fd, sizeof pass_fd);
        if (sendmsg(cfd, &msg, MSG_NOSIGNAL) != (ssize_t)len)
            rc = -errno;
        if (pipe_fds[0] >= 0) {
            close(pipe_fds[0]);
            close(pipe_fds[1]);
        }
        return rc;
    }
    write_all(cfd, buf, len);
    return 0;
}

/* count messages of size bytes, as fast as the channel takes them. */
static int flood(state *st, const char *what, unsigned long count, unsigned long size,
                 const char *target, unsigned long *sent)
{
    unsigned char *data = malloc(size ? size : 1);
    int rc = 0;

    *sent = 0;
    if (!data)
        return -ENOMEM;
    memset(data, 'f', size);
    for (unsigned long i = 0; i < count; i++) {
        if (strcmp(what, "BCAST") == 0)
            rc = sf_conn_broadcast(st->c, data, size);
        else if (strcmp(what, "PUB") == 0)
            rc = sf_conn_publish(st->c, target ? target : "flood", data, size);
        else if (strcmp(what, "SEND") == 0)
            rc = sf_conn_send(st->c, target ? atoi(target) : 0, data, size);
        else
            rc = -EINVAL;
        if (rc < 0)
            break;
        (*sent)++;
    }
    free(data);
    return rc;
}

static unsigned long num(const char *s)
{
    return s ? strtoul(s, NULL, 10) : 0;
}

/* A request of the bus, then the sync. */
static void finish(state *st, const char *cmd, int rc)
{
    if (rc >= 0)
        rc = sync_chan(st);
    if (rc < 0)
        reply(st, "ERR %s %d", cmd, rc);
    else
        reply(st, "OK %s", cmd);
}

static unsigned char *filled(unsigned long n)
{
    unsigned char *p = malloc(n ? n : 1);
    if (p)
        memset(p, 'x', n);
    return p;
}

/* FDS: every descriptor this process holds, as fd=target. */
static void list_fds(state *st)
{
    char line[8192];
    size_t n = (size_t)snprintf(line, sizeof line, "FDS");
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;

    if (!d) {
        reply(st, "ERR FDS %d", -errno);
        return;
    }
    while ((e = readdir(d)) != NULL && n < sizeof line - 1) {
        char path[300], target[512];
        ssize_t len;
        int w;

        if (e->d_name[0] == '.' || atoi(e->d_name) == dirfd(d))
            continue;
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        len = readlink(path, target, sizeof target - 1);
        target[len < 0 ? 0 : len] = '\0';
        w = snprintf(line + n, sizeof line - n, " %s=%s", e->d_name, target);
        if (w < 0 || (size_t)w >= sizeof line - n)
            break;
        n += (size_t)w;
    }
    closedir(d);
    reply(st, "%s", line);
}

/* One command line. Returns -1 to go on, or the exit status. */
static int command(state *st, char *line)
{
    char *rest = line, *cmd = word(&rest), *a, *b;
    int rc;

    if (!cmd)
        return -1;
    if (strcmp(cmd, "PID") == 0) {
        reply(st, "PID %d", (int)getpid());
    } else if (strcmp(cmd, "SYNC") == 0) {
        finish(st, cmd, 0);
    } else if (strcmp(cmd, "SUB") == 0) {
        a = word(&rest);
        b = word(&rest);
        if (a)
            unescape(a);
        finish(st, cmd, sf_conn_subscribe(st->c, a, (unsigned)num(b)));
    } else if (strcmp(cmd, "UNSUB") == 0 || strcmp(cmd, "CLAIM") == 0 ||
               strcmp(cmd, "RELEASE") == 0) {
        a = word(&rest);
        if (a)
            unescape(a);
        rc = cmd[0] == 'U' ? sf_conn_unsubscribe(st->c, a)
             : cmd[0] == 'C' ? sf_conn_claim(st->c, a) : sf_conn_release(st->c, a);
        finish(st, cmd, rc);
    } else if (strcmp(cmd, "PUB") == 0 || strcmp(cmd, "SENDNAME") == 0) {
        a = word(&rest);
        if (a)
            unescape(a);
        size_t n = unescape(rest);
        rc = cmd[0] == 'P' ? sf_conn_publish(st->c, a, rest, n) : sf_conn_send_name(st->c, a, rest, n);
        finish(st, cmd, rc);
    } else if (strcmp(cmd, "SEND") == 0) {
        a = word(&rest);
        size_t n = unescape(rest);
        finish(st, cmd, sf_conn_send(st->c, (int)num(a), rest, n));
    } else if (strcmp(cmd, "GRANDSEND") == 0) {
        /* Sent by a process of ours, not by us: in fork mode, with no
         * channel made yet, its own is refused. */
        a = word(&rest);
        size_t n = unescape(rest);
        pid_t kid = fork();
        int ws = 0;
        if (kid == 0)
            _exit(sf_conn_send(st->c, (int)num(a), rest, n) < 0);
        if (kid < 0 || waitpid(kid, &ws, 0) != kid)
            reply(st, "ERR GRANDSEND %d", -errno);
        else
            reply(st, "OK GRANDSEND %d", WIFEXITED(ws) ? WEXITSTATUS(ws) : -1);
    } else if (strcmp(cmd, "PUBBIG") == 0 || strcmp(cmd, "SENDBIG") == 0) {
        a = word(&rest);
        unsigned long n = num(word(&rest));
        unsigned char *p = filled(n);
        if (!p) {
            reply(st, "ERR %s %d", cmd, -ENOMEM);
            return -1;
        }
        rc = cmd[1] == 'U' ? sf_conn_publish(st->c, a, p, n) : sf_conn_send(st->c, (int)num(a), p, n);
        free(p);
        finish(st, cmd, rc);
    } else if (strcmp(cmd, "BCAST") == 0) {
        size_t n = unescape(rest);
        finish(st, cmd, sf_conn_broadcast(st->c, rest, n));
    } else if (strcmp(cmd, "STATUS") == 0 || strcmp(cmd, "LOG") == 0) {
        unescape(rest);
        finish(st, cmd, cmd[0] == 'S' ? sf_conn_status(st->c, rest) : sf_conn_log(st->c, rest));
    } else if (strcmp(cmd, "DEAF") == 0) {
        st->deaf = 1;
        reply(st, "OK DEAF");
    } else if (strcmp(cmd, "HEAR") == 0) {
        st->deaf = 0;
        reply(st, "OK HEAR");
    } else if (strcmp(cmd, "MUTE") == 0) {
        st->mute = 1;
        reply(st, "OK MUTE");
    } else if (strcmp(cmd, "COUNT") == 0) {
        reply(st, "COUNT total=%lu direct=%lu name=%lu broadcast=%lu topic=%lu history=%lu "
                  "claimed=%lu error=%lu", st->counts[0], st->counts[1], st->counts[2],
              st->counts[3], st->counts[4], st->counts[5], st->counts[6], st->counts[7]);
    } else if (strcmp(cmd, "FLOOD") == 0) {
        unsigned long sent;
        const char *what = word(&rest);
        unsigned long count = num(word(&rest)), size = num(word(&rest));
        rc = flood(st, what ? what : "", count, size, word(&rest), &sent);
        if (rc >= 0)
            rc = sync_chan(st);
        if (rc < 0)
            reply(st, "ERR FLOOD %d after=%lu", rc, sent);
        else
            reply(st, "OK FLOOD sent=%lu", sent);
    } else if (strcmp(cmd, "GARBAGE") == 0) {
        a = word(&rest);
        rc = garbage(st, a ? a : "");
        if (rc < 0)
            reply(st, "ERR GARBAGE %d", rc);
        else
            reply(st, "OK GARBAGE");
    } else if (strcmp(cmd, "QUIT") == 0) {
        reply(st, "BYE");
        return 0;
    } else if (strcmp(cmd, "EXIT") == 0) {
        return (int)(num(word(&rest)) & 255);
    } else if (strcmp(cmd, "DIE") == 0) {
        _exit((int)(num(word(&rest)) & 255));
    } else if (strcmp(cmd, "FDS") == 0) {
        list_fds(st);
    } else if (strcmp(cmd, "ABORT") == 0) {
        abort();
    } else {
        reply(st, "ERR unknown command %s", cmd);
    }
    return -1;
}

static int handler(sf_conn *c, void *arg)
{
    static char buf[LINE_MAX_BYTES + 1];
    const opts *o = arg;
    state st;
    size_t have = 0;

    memset(&st, 0, sizeof st);
    st.c = c;
    st.fd = sf_conn_fd(c);
    st.chan_open = 1;
    st.o = o;
    if (o->crash_if && access(o->crash_if, F_OK) == 0)
        abort();
    /* Answers are several small writes (MSG lines, then OK): without this,
     * Nagle holds the last one for the client's delayed ACK, 40 ms. Fails
     * harmlessly on a Unix socket. */
    (void)setsockopt(st.fd, IPPROTO_TCP, TCP_NODELAY, &(int){1}, sizeof(int));
    reply(&st, "HELLO %d", (int)getpid());
    if (strcmp(o->mode, "flood") == 0) {
        unsigned long sent;
        int rc = flood(&st, o->what, o->count, o->size, o->target, &sent);
        reply(&st, "DONE sent=%lu rc=%d", sent, rc);
        return rc < 0;
    }
    if (strcmp(o->mode, "noread") == 0)
        st.deaf = 1;
    if (strcmp(o->mode, "garbage") == 0) {
        int rc = garbage(&st, o->garbage ? o->garbage : "type");
        if (rc < 0)
            reply(&st, "ERR GARBAGE %d", rc);
        else
            reply(&st, "OK GARBAGE");
    }
    for (;;) {
        int ready;

        if (!st.deaf && st.chan_open) {
            ready = sf_conn_wait(c, -1);
        } else {
            struct pollfd p = {st.fd, POLLIN, 0};
            ready = poll(&p, 1, -1);
            ready = ready < 0 ? (errno == EINTR ? 0 : -errno) : SF_READY_CLIENT;
        }
        if (ready < 0)
            return 1;
        if (ready & SF_READY_CHANNEL) {
            sf_msg m;
            if (recv_one(&st, &m, 0) > 0) {
                emit(&st, &m);
                sf_msg_free(&m);
            }
        }
        if (ready & SF_READY_CLIENT) {
            ssize_t n = read(st.fd, buf + have, LINE_MAX_BYTES - have);
            char *nl;
            size_t start = 0;

            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                return 0;
            have += (size_t)n;
            while ((nl = memchr(buf + start, '\n', have - start)) != NULL) {
                int ex;
                *nl = '\0';
                if (nl > buf + start && nl[-1] == '\r')
                    nl[-1] = '\0';
                ex = command(&st, buf + start);
                if (ex >= 0)
                    return ex;
                start = (size_t)(nl - buf) + 1;
            }
            memmove(buf, buf + start, have - start);
            have -= start;
            if (have == LINE_MAX_BYTES)
                return 2; /* a line longer than any test sends */
        }
    }
}

/* ------------------------------------------------------------- the main */

static const char usage[] =
    "usage: chanserver serve [-l ADDR]... [--control PATH | --no-control] [-c N] [-q]\n"
    "                        [--queue BYTES] [--kick] [--history N] [--chan-max BYTES]\n"
    "                        [--grace S] [--count N] [--size BYTES] [--what BCAST|PUB|SEND]\n"
    "                        [--target T] [--garbage KIND] [--workers MIN[:MAX]]\n"
    "                        [--max-requests N] [--worker-idle S] [--conn-timeout S]\n"
    "                        [--crash-if PATH] bus|flood|noread|garbage\n";

enum { O_CONTROL = 256, O_NO_CONTROL, O_QUEUE, O_KICK, O_HISTORY, O_CHAN_MAX, O_GRACE, O_COUNT,
       O_SIZE, O_WHAT, O_TARGET, O_GARBAGE, O_WORKERS, O_MAX_REQUESTS, O_WORKER_IDLE,
       O_CONN_TIMEOUT, O_CRASH_IF };

static const struct option longopts[] = {
    {"listen", required_argument, NULL, 'l'},
    {"control", required_argument, NULL, O_CONTROL},
    {"no-control", no_argument, NULL, O_NO_CONTROL},
    {"queue", required_argument, NULL, O_QUEUE},
    {"kick", no_argument, NULL, O_KICK},
    {"history", required_argument, NULL, O_HISTORY},
    {"chan-max", required_argument, NULL, O_CHAN_MAX},
    {"grace", required_argument, NULL, O_GRACE},
    {"count", required_argument, NULL, O_COUNT},
    {"size", required_argument, NULL, O_SIZE},
    {"what", required_argument, NULL, O_WHAT},
    {"target", required_argument, NULL, O_TARGET},
    {"garbage", required_argument, NULL, O_GARBAGE},
    {"workers", required_argument, NULL, O_WORKERS},
    {"max-requests", required_argument, NULL, O_MAX_REQUESTS},
    {"worker-idle", required_argument, NULL, O_WORKER_IDLE},
    {"conn-timeout", required_argument, NULL, O_CONN_TIMEOUT},
    {"crash-if", required_argument, NULL, O_CRASH_IF},
    {NULL, 0, NULL, 0},
};

int main(int argc, char **argv)
{
    static opts o = {"bus", 200000, 1024, "BCAST", NULL, NULL, NULL};
    const char *listen[MAX_LISTEN], *control = NULL;
    size_t nlisten = 0;
    int no_control = 0, opt, rc;
    sf_server_opts so;
    sf_server *srv;

    if (argc < 2 || strcmp(argv[1], "serve") != 0) {
        fputs(usage, stderr);
        return 2;
    }
    sf_server_opts_init(&so);
    so.log = on_log;
    so.on_ready = on_ready;
    optind = 2;
    while ((opt = getopt_long(argc, argv, "l:c:q", longopts, NULL)) != -1) {
        switch (opt) {
        case 'l':
            if (nlisten == MAX_LISTEN) {
                fputs(usage, stderr);
                return 2;
            }
            listen[nlisten++] = optarg;
            break;
        case 'c': so.max_conns = (unsigned)num(optarg); break;
        case 'q': so.log_level = SF_LOG_NOTICE; break;
        case O_CONTROL: control = optarg; break;
        case O_NO_CONTROL: no_control = 1; break;
        case O_QUEUE: so.chan_queue = num(optarg); break;
        case O_KICK: so.chan_full_kick = 1; break;
        case O_HISTORY: so.topic_history = (unsigned)num(optarg); break;
        case O_CHAN_MAX: so.chan_max = (unsigned)num(optarg); break;
        case O_GRACE: so.grace_s = strtod(optarg, NULL); break;
        case O_COUNT: o.count = num(optarg); break;
        case O_SIZE: o.size = num(optarg); break;
        case O_WHAT: o.what = optarg; break;
        case O_TARGET: o.target = optarg; break;
        case O_GARBAGE: o.garbage = optarg; break;
        case O_WORKERS: {
            char *colon = strchr(optarg, ':');
            so.workers_min = (unsigned)num(optarg);
            so.workers_max = colon ? (unsigned)num(colon + 1) : so.workers_min;
            break;
        }
        case O_MAX_REQUESTS: so.max_requests = (unsigned)num(optarg); break;
        case O_WORKER_IDLE: so.worker_idle_s = strtod(optarg, NULL); break;
        case O_CONN_TIMEOUT: so.conn_timeout_s = strtod(optarg, NULL); break;
        case O_CRASH_IF: o.crash_if = optarg; break;
        default:
            fputs(usage, stderr);
            return 2;
        }
    }
    if (optind + 1 != argc) {
        fputs(usage, stderr);
        return 2;
    }
    o.mode = argv[optind];
    if (strcmp(o.mode, "bus") != 0 && strcmp(o.mode, "flood") != 0 &&
        strcmp(o.mode, "noread") != 0 && strcmp(o.mode, "garbage") != 0) {
        fputs(usage, stderr);
        return 2;
    }
    if (nlisten == 0)
        listen[nlisten++] = "127.0.0.1:0";
    if ((rc = sf_server_new(&srv, &so, handler, &o)) < 0) {
        log_line("cannot start: %s", strerror(-rc));
        return 1;
    }
    for (size_t i = 0; i < nlisten; i++) {
        if ((rc = sf_server_listen(srv, listen[i])) < 0) {
            log_line("cannot listen on %s: %s", listen[i], strerror(-rc));
            sf_server_free(srv);
            return 2;
        }
    }
    if (!no_control && control && (rc = sf_server_control(srv, control)) < 0) {
        log_line("cannot open the control socket %s: %s", control, strerror(-rc));
        sf_server_free(srv);
        return 2;
    }
    rc = sf_server_run(srv);
    sf_server_free(srv);
    if (rc < 0) {
        log_line("cannot serve: %s", strerror(-rc));
        return 1;
    }
    return 0;
}
