/* conn.c - the connection as its child sees it, and exec with tcpserver's
 * environment. Runs only in children. */
#include "server/conn.h"
#include "server/rules.h"
#include "channel/be.h"
#include "process/process.h"
#include "server/execplan.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

PROC_CHILD_CODE int sf_conn_fd(const sf_conn *c)
{
    return c->fd;
}

const sf_addr *sf_conn_peer(const sf_conn *c)
{
    return &c->peer;
}

/* The local address, asked of the kernel at its first use in fork mode: a
 * system call less per connection for the handlers that never want it.
 * An sf_conn is its child's own, never shared, so filling it in behind
 * the const is safe. */
static const sf_addr *conn_local(const sf_conn *c)
{
    sf_conn *own = (sf_conn *)c;

    if (own->local_unknown) {
        own->local_unknown = 0;
        own->local.len = sizeof own->local.u;
        if (getsockname(own->fd, &own->local.u.sa, &own->local.len) < 0)
            own->local = own->peer;
    }
    return &own->local;
}

const sf_addr *sf_conn_local(const sf_conn *c)
{
    return conn_local(c);
}

/* The connection's variables (execplan.h, the same ones the server's exec
 * mode gives a program) applied to our own environment. */
static int set_conn_env(const sf_conn *c)
{
    execplan_env e;
    int rc;

    memset(&e, 0, sizeof e);
    if ((rc = execplan_conn_env(&e, &c->peer, conn_local(c), c->fd)) < 0)
        return rc;
    for (size_t i = 0; i < e.nunset; i++)
        (void)unsetenv(e.unset[i]);
    for (size_t i = 0; i < e.nset; i++) {
        char name[64];
        const char *eq = strchr(e.set[i], '=');
        size_t nlen = (size_t)(eq - e.set[i]);

        if (nlen >= sizeof name)
            return -EINVAL;
        memcpy(name, e.set[i], nlen);
        name[nlen] = '\0';
        if (setenv(name, eq + 1, 1) < 0)
            return -errno;
    }
    return 0;
}

const char *sf_conn_rule_value(const sf_conn *c, const char *key)
{
    char name[256];
    const char *value;
    size_t off = 0;

    while (key && rule_pairs_next(c->env, c->env_len, &off, name, sizeof name, &value) == 1)
        if (strcmp(name, key) == 0)
            return value;
    return NULL;
}

/* The access rule's pairs, into the environment (after tcpserver's). */
static int set_rule_env(const sf_conn *c)
{
    char name[256];
    const char *value;
    size_t off = 0;
    int rc;

    while ((rc = rule_pairs_next(c->env, c->env_len, &off, name, sizeof name, &value)) == 1)
        if (setenv(name, value, 1) < 0)
            return -errno;
    return rc;
}

int sf_conn_exec(sf_conn *c, char *const argv[])
{
    char file[PATH_MAX];
    int rc;

    if (!argv || !argv[0])
        return -EINVAL;
    if ((rc = set_conn_env(c)) < 0 || (rc = set_rule_env(c)) < 0)
        return rc;
    /* dup2 clears close-on-exec on 0, 1 and 3; the originals (3 and 4)
     * keep it: the connection's fd 3 is replaced by the channel, fd 4
     * disappears at exec. */
    if (dup2(c->fd, 0) < 0 || dup2(c->fd, 1) < 0)
        return -errno;
    /* Fork mode makes the channel now, if the handler has not used it:
     * the program gets one either way. */
    if ((rc = conn_channel_open(c)) < 0)
        return rc;
    if (c->chan >= 0) {
        if (dup2(c->chan, 3) < 0)
            return -errno;
        if (setenv("SOCKFORK_FD", "3", 1) < 0)
            return -errno;
    }
    /* As execvp: found in PATH (-ENOENT, -EACCES), and a script without
     * "#!" run by /bin/sh. */
    if ((rc = proc_path_find(argv[0], getenv("PATH"), file, sizeof file)) < 0)
        return rc;
    /* Programs written for tcpserver expect the default SIGPIPE, and no
     * blocked SIGUSR2 (a prefork worker blocks it while a handler runs). */
    sigset_t usr2, old;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    signal(SIGPIPE, SIG_DFL);
    sigprocmask(SIG_UNBLOCK, &usr2, &old);
    rc = proc_execve(file, argv, environ);
    sigprocmask(SIG_SETMASK, &old, NULL);
    signal(SIGPIPE, SIG_IGN);
    return rc;
}

/* ------------------------------------------------------------ the channel */

int sf_conn_channel_fd(const sf_conn *c)
{
    /* A failure leaves the descriptor to say it: its end is closed. */
    (void)conn_channel_open(c);
    return c->chan;
}

int sf_conn_msg_pending(const sf_conn *c)
{
    (void)conn_channel_open(c);
    return chan_reader_pending(&c->reader);
}

/* Seconds to poll()'s milliseconds: negative is -1 (no limit), a fraction
 * of a millisecond rounds up (a short wait must not become a busy poll),
 * and what does not fit an int is INT_MAX. */
static int wait_ms(double timeout_s)
{
    double ms;

    if (timeout_s < 0)
        return -1;
    ms = ceil(timeout_s * 1000.0);
    return ms >= (double)INT_MAX ? INT_MAX : (int)ms;
}

int sf_conn_wait(sf_conn *c, double timeout_s)
{
    struct pollfd p[2];
    int n, ready = 0, timeout_ms;

    if (isnan(timeout_s))
        return -EINVAL;
    if ((n = conn_channel_open(c)) < 0)
        return n;
    timeout_ms = wait_ms(timeout_s);

    /* A message already read (part of an earlier read) must not wait for
     * the socket to become readable again. */
    if (chan_reader_pending(&c->reader))
        ready |= SF_READY_CHANNEL;
    p[0].fd = c->fd;
    p[0].events = POLLIN;
    p[1].fd = c->chan;
    p[1].events = POLLIN;
    do
        n = poll(p, 2, ready ? 0 : timeout_ms);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    if (p[0].revents)
        ready |= SF_READY_CLIENT;
    if (p[1].revents)
        ready |= SF_READY_CHANNEL;
    return ready;
}


int sf_conn_recv(sf_conn *c, sf_msg *m)
{
    chan_frame f;
    size_t tlen;
    int rc;

    memset(m, 0, sizeof *m);
    if ((rc = conn_channel_open(c)) < 0)
        return rc;
    rc = chan_recv(c->chan, &c->reader, &f);
    if (rc <= 0)
        return rc;
    if (f.fd >= 0)
        close(f.fd);
    if (f.type != CHAN_T_MESSAGE || f.len < 8 || (tlen = be16_get(f.payload + 2)) > f.len - 8 ||
        tlen >= sizeof m->topic) {
        free(f.payload);
        return -EPROTO;
    }
    m->kind = f.payload[0];
    m->ok = f.payload[1];
    m->from = (int)be32_get(f.payload + 4);
    memcpy(m->topic, f.payload + 8, tlen);
    m->topic[tlen] = '\0';
    m->len = f.len - 8 - tlen;
    /* The data moves to the front of the payload, NUL-terminated for
     * handlers that treat it as text (the frame has 8 + tlen bytes spare). */
    memmove(f.payload, f.payload + 8 + tlen, m->len);
    f.payload[m->len] = '\0';
    m->data = f.payload;
    return 1;
}

void sf_msg_free(sf_msg *m)
{
    free(m->data);
    m->data = NULL;
    m->len = 0;
}

/* One request: a header of up to 6 bytes, a name, data. */
static int send_req(sf_conn *c, uint16_t type, const unsigned char *head, size_t hlen,
                    const char *name, size_t nlen, const void *data, size_t len)
{
    size_t total = hlen + nlen + len;
    unsigned char small[512], *buf;
    int rc;

    if (total > CHAN_MAX_LIMIT)
        return -EMSGSIZE; /* before any allocation: nothing to free */
    buf = total <= sizeof small ? small : malloc(total);
    if (!buf)
        return -ENOMEM;
    if ((rc = conn_channel_open(c)) < 0) {
        if (buf != small)
            free(buf);
        return rc;
    }
    if (hlen)
        memcpy(buf, head, hlen);
    if (nlen)
        memcpy(buf + hlen, name, nlen);
    if (len)
        memcpy(buf + hlen + nlen, data, len);
    /* While the supervisor holds this child (backpressure), the channel is
     * read into the reader, up to sixteen of the largest messages (1 MiB
     * at the default chan_max): a burst of long lines to a held chat child
     * must not stop its queue from draining (docs/design.md). */
    rc = chan_send_reading(c->chan, &c->reader, 16 * ((size_t)c->reader.dec.max + CHAN_HDR_LEN),
                           type, buf, (uint32_t)total);
    if (buf != small)
        free(buf);
    return rc;
}

/* Names and topics: 1 to 255 bytes, no space or control character. */
static int name_len(const char *name, size_t *n)
{
    *n = name ? strlen(name) : 0;
    if (*n == 0 || *n > 255)
        return -EINVAL;
    for (size_t i = 0; i < *n; i++) {
        if ((unsigned char)name[i] <= 0x20 || name[i] == 0x7f)
            return -EINVAL;
    }
    return 0;
}

int sf_conn_send(sf_conn *c, int pid, const void *data, size_t len)
{
    unsigned char h[4] = {(unsigned char)(pid >> 24), (unsigned char)(pid >> 16),
                          (unsigned char)(pid >> 8), (unsigned char)pid};
    if (pid <= 0)
        return -EINVAL;
    return send_req(c, CHAN_T_SEND, h, 4, NULL, 0, data, len);
}

static int send_named(sf_conn *c, uint16_t type, const char *name, const void *data, size_t len)
{
    unsigned char h[2];
    size_t n;

    if (name_len(name, &n) < 0)
        return -EINVAL;
    h[0] = (unsigned char)(n >> 8);
    h[1] = (unsigned char)n;
    return send_req(c, type, h, 2, name, n, data, len);
}

int sf_conn_send_name(sf_conn *c, const char *name, const void *data, size_t len)
{
    return send_named(c, CHAN_T_SEND_NAME, name, data, len);
}

int sf_conn_publish(sf_conn *c, const char *topic, const void *data, size_t len)
{
    return send_named(c, CHAN_T_PUBLISH, topic, data, len);
}

int sf_conn_broadcast(sf_conn *c, const void *data, size_t len)
{
    return send_req(c, CHAN_T_BROADCAST, NULL, 0, NULL, 0, data, len);
}

int sf_conn_subscribe(sf_conn *c, const char *topic, unsigned history)
{
    unsigned char h[4] = {(unsigned char)(history >> 24), (unsigned char)(history >> 16),
                          (unsigned char)(history >> 8), (unsigned char)history};
    size_t n;

    if (name_len(topic, &n) < 0)
        return -EINVAL;
    return send_req(c, CHAN_T_SUBSCRIBE, h, 4, topic, n, NULL, 0);
}

static int send_name_only(sf_conn *c, uint16_t type, const char *name)
{
    size_t n;

    if (name_len(name, &n) < 0)
        return -EINVAL;
    return send_req(c, type, NULL, 0, name, n, NULL, 0);
}

int sf_conn_unsubscribe(sf_conn *c, const char *topic)
{
    return send_name_only(c, CHAN_T_UNSUBSCRIBE, topic);
}

int sf_conn_claim(sf_conn *c, const char *name)
{
    return send_name_only(c, CHAN_T_CLAIM, name);
}

int sf_conn_release(sf_conn *c, const char *name)
{
    return send_name_only(c, CHAN_T_RELEASE, name);
}

int sf_conn_log(sf_conn *c, const char *text)
{
    return send_req(c, CHAN_T_LOG, NULL, 0, NULL, 0, text, strlen(text));
}

int sf_conn_status(sf_conn *c, const char *text)
{
    return send_req(c, CHAN_T_STATUS, NULL, 0, NULL, 0, text, strlen(text));
}

int sf_conn_will(sf_conn *c, const char *topic, const void *data, size_t len)
{
    if (!topic)
        return send_req(c, CHAN_T_WILL, (const unsigned char *)"\0\0", 2, NULL, 0, NULL, 0);
    return send_named(c, CHAN_T_WILL, topic, data, len);
}

int sf_conn_members(sf_conn *c, const char *topic)
{
    return send_name_only(c, CHAN_T_MEMBERS, topic);
}

int sf_conn_topics(sf_conn *c, const char *prefix)
{
    size_t n = 0;

    if (prefix && *prefix && name_len(prefix, &n) < 0)
        return -EINVAL;
    return send_req(c, CHAN_T_TOPICS, NULL, 0, prefix, n, NULL, 0);
}

/* ------------------------------------------------------- output offload */

/* A request whose payload the caller built (fd: a descriptor to pass, or
 * -1), sent as send_req sends, reading meanwhile. */
static int send_built(sf_conn *c, uint16_t type, const void *payload, size_t len, int fd)
{
    int rc;

    if (len > CHAN_MAX_LIMIT)
        return -EMSGSIZE;
    if ((rc = conn_channel_open(c)) < 0)
        return rc;
    return chan_send_reading_fd(c->chan, &c->reader, 16 * ((size_t)c->reader.dec.max + CHAN_HDR_LEN),
                                type, payload, (uint32_t)len, fd);
}

/* Bytes of a short piece (NULL: none): -1 when over 255. */
static int short_len(const char *s, size_t *n)
{
    *n = s ? strlen(s) : 0;
    return *n > 255 ? -1 : 0;
}

/* Appends [u8 n][bytes] at p. */
static unsigned char *put_short(unsigned char *p, const char *s, size_t n)
{
    *p++ = (unsigned char)n;
    if (n)
        memcpy(p, s, n);
    return p + n;
}

static unsigned char *put_be32(unsigned char *p, uint32_t v)
{
    be32_put(p, v);
    return p + 4;
}

int sf_conn_out_open(sf_conn *c, const sf_out_opts *o, const void *first, size_t len)
{
    size_t kn, dn;
    unsigned char *buf, *p;
    double ms;
    int rc;

    if (!o || c->fd < 0 || short_len(o->kick_words, &kn) < 0 ||
        short_len(o->shutdown_words, &dn) < 0 || isnan(o->report_s) || (len && !first))
        return -EINVAL;
    if (c->out_open)
        return -EALREADY;
    if (!(buf = malloc(10 + kn + dn + len)))
        return -ENOMEM;
    ms = o->report_s > 0 ? ceil(o->report_s * 1000.0) : 0;
    p = put_be32(buf, o->limit > UINT32_MAX ? UINT32_MAX : (uint32_t)o->limit);
    p = put_be32(p, ms > (double)UINT32_MAX ? UINT32_MAX : (uint32_t)ms);
    p = put_short(p, o->kick_words, kn);
    p = put_short(p, o->shutdown_words, dn);
    if (len)
        memcpy(p, first, len);
    rc = send_built(c, CHAN_T_OUT_OPEN, buf, (size_t)(p - buf) + len, c->fd);
    free(buf);
    if (rc == 0)
        c->out_open = 1;
    return rc;
}

static int out_write(sf_conn *c, int flags, const char *sep, const void *data, size_t len)
{
    unsigned char small[1024], *buf;
    size_t sn, total;
    int rc;

    if (short_len(sep, &sn) < 0 || (len && !data))
        return -EINVAL;
    total = 2 + sn + len;
    buf = total <= sizeof small ? small : malloc(total);
    if (!buf)
        return -ENOMEM;
    buf[0] = (unsigned char)flags;
    put_short(buf + 1, sep, sn);
    if (len)
        memcpy(buf + 2 + sn, data, len);
    rc = send_built(c, CHAN_T_OUT_WRITE, buf, total, -1);
    if (buf != small)
        free(buf);
    return rc;
}

int sf_conn_out_write(sf_conn *c, const void *data, size_t len)
{
    return out_write(c, 0, NULL, data, len);
}

int sf_conn_out_reset(sf_conn *c, const char *sep, const void *data, size_t len)
{
    return out_write(c, 1, sep, data, len);
}

int sf_conn_subscribe_out(sf_conn *c, const char *topic, unsigned history, const sf_out_format *f)
{
    unsigned char buf[5 + 5 * 256], *p;
    size_t tn, pn, hn, sn, nn;

    if (!f || name_len(topic, &tn) < 0 || short_len(f->prefix, &pn) < 0 ||
        short_len(f->history_prefix, &hn) < 0 || short_len(f->suffix, &sn) < 0 ||
        short_len(f->notice_prefix, &nn) < 0)
        return -EINVAL;
    p = put_be32(buf, history);
    *p++ = f->gated ? 1 : 0;
    p = put_short(p, topic, tn);
    p = put_short(p, f->prefix, pn);
    p = put_short(p, f->history_prefix, hn);
    p = put_short(p, f->suffix, sn);
    p = put_short(p, f->notice_prefix, nn);
    return send_built(c, CHAN_T_SUBSCRIBE_OUT, buf, (size_t)(p - buf), -1);
}

int sf_conn_out_gate(sf_conn *c, const char *before, const char *after_one, const char *after_more)
{
    size_t bn = before ? strlen(before) : 0, on = after_one ? strlen(after_one) : 0;
    size_t mn = after_more ? strlen(after_more) : 0;
    unsigned char *buf;
    int rc;

    if (bn > 65535 || on > 65535)
        return -EINVAL;
    if (!(buf = malloc(4 + bn + on + mn)))
        return -ENOMEM;
    buf[0] = (unsigned char)(bn >> 8);
    buf[1] = (unsigned char)bn;
    if (bn)
        memcpy(buf + 2, before, bn);
    buf[2 + bn] = (unsigned char)(on >> 8);
    buf[3 + bn] = (unsigned char)on;
    if (on)
        memcpy(buf + 4 + bn, after_one, on);
    if (mn)
        memcpy(buf + 4 + bn + on, after_more, mn);
    rc = send_built(c, CHAN_T_OUT_GATE, buf, 4 + bn + on + mn, -1);
    free(buf);
    return rc;
}
