/* bus_bridge.c - see bus_bridge.h. */
#include "supervisor/bus_bridge.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUCKETS 4096

/* A child of the peer's that holds something here. */
struct rproc {
    rproc *next;            /* bucket chain */
    pid_t pid;
    rname *names;           /* its names, newest first */
    unsigned nsubs;         /* topics it subscribes to */
    char *will;             /* topic then data; NULL: none */
    size_t will_topic_len, will_len;
};

struct rname {
    rname *next;            /* bucket chain */
    rname *pnext;           /* the holder's names */
    rproc *proc;
    size_t len;
    char name[];
};

typedef struct rsub {
    struct rsub *next;
    rproc *proc;
} rsub;

struct rtopic {
    rtopic *next;           /* bucket chain */
    rsub *subs;
    unsigned nsubs;
    size_t len;
    char name[];
};

/* ------------------------------------------------------------ tables */

static uint32_t hash(const void *p, size_t n)
{
    const unsigned char *c = p;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ c[i]) * 16777619u;
    return h;
}

static rproc **proc_slot(bus_bridge *br, pid_t pid)
{
    rproc **p = &br->procs[hash(&pid, sizeof pid) % BUCKETS];
    while (*p && (*p)->pid != pid)
        p = &(*p)->next;
    return p;
}

static rname **name_slot(bus_bridge *br, const char *name, size_t len)
{
    rname **n = &br->names[hash(name, len) % BUCKETS];
    while (*n && !((*n)->len == len && memcmp((*n)->name, name, len) == 0))
        n = &(*n)->next;
    return n;
}

static rtopic **topic_slot(bus_bridge *br, const char *name, size_t len)
{
    rtopic **t = &br->topics[hash(name, len) % BUCKETS];
    while (*t && !((*t)->len == len && memcmp((*t)->name, name, len) == 0))
        t = &(*t)->next;
    return t;
}

static int room(bus_bridge *br)
{
    return br->entries < BRIDGE_ENTRIES_MAX;
}

static rproc *proc_get(bus_bridge *br, pid_t pid)
{
    rproc **slot = proc_slot(br, pid), *p;

    if (*slot)
        return *slot;
    if (!room(br) || !(p = calloc(1, sizeof *p)))
        return NULL;
    p->pid = pid;
    *slot = p;
    br->entries++;
    return p;
}

/* A child of the peer's holding nothing here any more is forgotten. */
static void proc_maybe_free(bus_bridge *br, rproc *p)
{
    if (p->names || p->nsubs || p->will)
        return;
    *proc_slot(br, p->pid) = p->next;
    br->entries--;
    free(p);
}

static void name_unlink(bus_bridge *br, rname *n)
{
    rproc *p = n->proc;

    *name_slot(br, n->name, n->len) = n->next;
    for (rname **x = &p->names; *x; x = &(*x)->pnext) {
        if (*x == n) {
            *x = n->pnext;
            break;
        }
    }
    br->entries--;
    free(n);
    proc_maybe_free(br, p);
}

/* Records the peer's claim (replacing a holder it named before). */
static int name_add(bus_bridge *br, const char *name, size_t len, pid_t pid)
{
    rname **slot = name_slot(br, name, len), *n;
    rproc *p;

    if (*slot) {
        if ((*slot)->proc->pid == pid)
            return 0;
        name_unlink(br, *slot);
        slot = name_slot(br, name, len);
    }
    if (!(p = proc_get(br, pid)))
        return -ENOSPC;
    if (!room(br) || !(n = calloc(1, sizeof *n + len + 1))) {
        proc_maybe_free(br, p);
        return -ENOSPC;
    }
    memcpy(n->name, name, len);
    n->len = len;
    n->proc = p;
    n->pnext = p->names;
    p->names = n;
    *slot = n;
    br->entries++;
    return 0;
}

static int sub_add(bus_bridge *br, const char *topic, size_t len, pid_t pid)
{
    rtopic **slot = topic_slot(br, topic, len), *t = *slot;
    rproc *p;
    rsub *s;

    if (t) {
        for (s = t->subs; s; s = s->next) {
            if (s->proc->pid == pid)
                return 0;
        }
    }
    if (!(p = proc_get(br, pid)))
        return -ENOSPC;
    if (!t) {
        if (!room(br) || !(t = calloc(1, sizeof *t + len + 1))) {
            proc_maybe_free(br, p);
            return -ENOSPC;
        }
        memcpy(t->name, topic, len);
        t->len = len;
        *slot = t;
        br->entries++;
    }
    if (!room(br) || !(s = calloc(1, sizeof *s))) {
        if (!t->subs) {
            *slot = t->next;
            br->entries--;
            free(t);
        }
        proc_maybe_free(br, p);
        return -ENOSPC;
    }
    s->proc = p;
    s->next = t->subs;
    t->subs = s;
    t->nsubs++;
    p->nsubs++;
    br->entries++;
    return 0;
}

static void sub_remove(bus_bridge *br, const char *topic, size_t len, pid_t pid)
{
    rtopic **slot = topic_slot(br, topic, len), *t = *slot;
    rproc *p;

    if (!t)
        return;
    for (rsub **x = &t->subs; *x; x = &(*x)->next) {
        rsub *s = *x;
        if (s->proc->pid != pid)
            continue;
        *x = s->next;
        p = s->proc;
        free(s);
        br->entries--;
        t->nsubs--;
        p->nsubs--;
        proc_maybe_free(br, p);
        break;
    }
    if (!t->subs) {
        *slot = t->next;
        br->entries--;
        free(t);
    }
}

static int will_set(bus_bridge *br, pid_t pid, const char *topic, size_t topic_len,
                    const unsigned char *data, size_t len)
{
    rproc *p = topic_len ? proc_get(br, pid) : *proc_slot(br, pid);

    if (!p)
        return topic_len ? -ENOSPC : 0;
    free(p->will);
    p->will = NULL;
    p->will_topic_len = p->will_len = 0;
    if (topic_len) {
        if (!(p->will = malloc(topic_len + len + 1))) {
            proc_maybe_free(br, p);
            return -ENOSPC;
        }
        memcpy(p->will, topic, topic_len);
        if (len)
            memcpy(p->will + topic_len, data, len);
        p->will_topic_len = topic_len;
        p->will_len = len;
    }
    proc_maybe_free(br, p);
    return 0;
}

/* ------------------------------------------------------------ encoding */

static void put_u16(unsigned char *p, size_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* A frame whose head is [u32 pid][u16 n][text] (with_len) or [u32 pid][text].
 * Returns 0 or -errno (the transport could not take it). */
static int send_pid_text(bus_bridge *br, uint16_t type, pid_t pid, int with_len, const char *text,
                          size_t text_len, const void *data, size_t len)
{
    unsigned char head[4 + 2 + BUS_NAME_MAX];
    size_t n = 4;

    if (text_len > BUS_NAME_MAX)
        return -EINVAL; /* the bus never makes one */
    put_u32(head, (uint32_t)pid);
    if (with_len) {
        put_u16(head + n, text_len);
        n += 2;
    }
    if (text_len)
        memcpy(head + n, text, text_len);
    return br->out(br->out_arg, type, head, n + text_len, data, len);
}

/* ------------------------------------------------ the bus's questions */

static void op_published(void *ctx, const char *topic, size_t topic_len, pid_t from,
                         const unsigned char *data, size_t len)
{
    (void)send_pid_text(ctx, BRIDGE_PUBLISH, from, 1, topic, topic_len, data, len);
}

static void op_broadcast(void *ctx, pid_t from, const unsigned char *data, size_t len)
{
    (void)send_pid_text(ctx, BRIDGE_BROADCAST, from, 0, NULL, 0, data, len);
}

static int op_send_name(void *ctx, const char *name, size_t name_len, pid_t from,
                        const unsigned char *data, size_t len)
{
    bus_bridge *br = ctx;

    if (!*name_slot(br, name, name_len))
        return -ESRCH;
    /* A link cut meanwhile: its sender is told there is nobody, rather
     * than the message going nowhere. */
    return send_pid_text(br, BRIDGE_SEND_NAME, from, 1, name, name_len, data, len) < 0 ? -ESRCH : 0;
}

static void op_name(void *ctx, const char *name, size_t len, pid_t pid, int held)
{
    (void)send_pid_text(ctx, held ? BRIDGE_CLAIM : BRIDGE_RELEASE, pid, 0, name, len, NULL, 0);
}

static void op_member(void *ctx, const char *topic, size_t len, pid_t pid, int joined)
{
    (void)send_pid_text(ctx, joined ? BRIDGE_JOIN : BRIDGE_LEAVE, pid, 0, topic, len, NULL, 0);
}

static void op_will(void *ctx, pid_t pid, const char *topic, size_t topic_len,
                    const unsigned char *data, size_t len)
{
    (void)send_pid_text(ctx, BRIDGE_WILL, pid, 1, topic, topic_len, data, len);
}

static void op_will_published(void *ctx, pid_t pid)
{
    (void)send_pid_text(ctx, BRIDGE_WILL_DONE, pid, 0, NULL, 0, NULL, 0);
}

static int op_name_held(void *ctx, const char *name, size_t len)
{
    return *name_slot(ctx, name, len) != NULL;
}

static int op_members(void *ctx, const char *topic, size_t len, char **text, size_t *text_len)
{
    rtopic *t = *topic_slot(ctx, topic, len);
    size_t need = 0, at = 0;
    char *p;

    *text = NULL;
    *text_len = 0;
    if (!t)
        return 0;
    for (rsub *s = t->subs; s; s = s->next) {
        need += 13;
        for (rname *n = s->proc->names; n; n = n->pnext)
            need += n->len + 1;
    }
    if (!(p = malloc(need + 1)))
        return -ENOMEM;
    for (rsub *s = t->subs; s; s = s->next) {
        at += (size_t)snprintf(p + at, need + 1 - at, "%d", (int)s->proc->pid);
        for (rname *n = s->proc->names; n; n = n->pnext) {
            p[at++] = ' ';
            memcpy(p + at, n->name, n->len);
            at += n->len;
        }
        p[at++] = '\n';
    }
    *text = p;
    *text_len = at;
    return 0;
}

static unsigned op_topic_count(void *ctx, const char *topic, size_t len)
{
    rtopic *t = *topic_slot(ctx, topic, len);

    return t ? t->nsubs : 0;
}

static void op_each_topic(void *ctx, const char *prefix, size_t len, bus_topic_cb cb, void *arg)
{
    bus_bridge *br = ctx;

    for (unsigned i = 0; i < BUCKETS; i++) {
        for (rtopic *t = br->topics[i]; t; t = t->next) {
            if (t->len >= len && (len == 0 || memcmp(t->name, prefix, len) == 0))
                cb(t->name, t->len, t->nsubs, arg);
        }
    }
}

static const bus_bridge_ops bridge_ops = {
    op_published, op_broadcast, op_send_name, op_name, op_member, op_will,
    op_will_published, op_name_held, op_members, op_topic_count, op_each_topic, NULL,
};

/* ------------------------------------------------ the peer's frames */

/* [u32 pid][text] or [u32 pid][u16 n][text][data], cut into its parts;
 * the text as a bus name (1 to BUS_NAME_MAX bytes, or empty for a will
 * cleared). Returns 0 or -EPROTO. */
typedef struct parsed {
    pid_t pid;
    const char *text;
    size_t text_len;
    const unsigned char *data;
    size_t len;
} parsed;

static int parse(const unsigned char *p, size_t len, int with_len, parsed *out)
{
    memset(out, 0, sizeof *out);
    if (len < 4)
        return -EPROTO;
    out->pid = (pid_t)get_u32(p);
    p += 4;
    len -= 4;
    if (!with_len) {
        out->text = (const char *)p;
        out->text_len = len;
    } else {
        if (len < 2)
            return -EPROTO;
        out->text_len = (size_t)p[0] << 8 | p[1];
        if (out->text_len > len - 2)
            return -EPROTO;
        out->text = (const char *)p + 2;
        out->data = p + 2 + out->text_len;
        out->len = len - 2 - out->text_len;
    }
    if (out->text_len > BUS_NAME_MAX || out->pid <= 0)
        return -EPROTO;
    /* As the bus takes a name from a child (bus_codec.c): a space or a
     * newline would forge lines of a MEMBERS or TOPICS answer. */
    for (size_t i = 0; i < out->text_len; i++) {
        unsigned char c = (unsigned char)out->text[i];
        if (c <= 0x20 || c == 0x7f)
            return -EPROTO;
    }
    return 0;
}

static int hello(bus_bridge *br, const unsigned char *p, size_t len)
{
    if (br->hello || len != 5 || p[0] != BRIDGE_VERSION)
        return -EPROTO;
    br->peer_rank = get_u32(p + 1);
    if (br->peer_rank == br->rank)
        return -EPROTO; /* no rule could pick between two claims */
    br->hello = 1;
    return 0;
}

/* A claim of the peer's. A tie with a local holder goes to the lower rank
 * (bus_bridge.h). */
static int claim(bus_bridge *br, const parsed *x)
{
    if (bus_name_holder(br->bus, x->text, x->text_len)) {
        if (br->rank < br->peer_rank)
            return 0; /* ours stays; the peer revokes its own */
        (void)bus_revoke_name(br->bus, x->text, x->text_len,
                              "claimed at the same moment on the other side of the bridge, "
                              "which keeps it");
    }
    return name_add(br, x->text, x->text_len, x->pid);
}

/* The peer published a child's will: so does this side, from its copy. */
static void will_done(bus_bridge *br, pid_t pid)
{
    rproc *p = *proc_slot(br, pid);

    if (!p || !p->will)
        return;
    (void)bus_inject_publish(br->bus, p->will, p->will_topic_len, pid,
                             (unsigned char *)p->will + p->will_topic_len, p->will_len);
    free(p->will);
    p->will = NULL;
    proc_maybe_free(br, p);
}

static void release(bus_bridge *br, const parsed *x)
{
    rname *n = *name_slot(br, x->text, x->text_len);

    if (n && n->proc->pid == x->pid)
        name_unlink(br, n);
}

static void send_name(bus_bridge *br, const parsed *x)
{
    if (bus_inject_send_name(br->bus, x->text, x->text_len, x->pid, x->data, x->len) != -ESRCH)
        return;
    /* Released here while the message crossed: its sender is told, as
     * it would have been on one bus (no silent loss). */
    (void)send_pid_text(br, BRIDGE_NO_NAME, x->pid, 0, x->text, x->text_len, NULL, 0);
}

static void no_name(bus_bridge *br, const parsed *x)
{
    char why[BUS_NAME_MAX + 64];

    snprintf(why, sizeof why, "send: nobody holds the name %.*s", (int)x->text_len, x->text);
    (void)bus_inject_error(br->bus, x->pid, ESRCH, x->text, x->text_len, why);
}

int bus_bridge_input(bus_bridge *br, uint16_t type, const unsigned char *p, size_t len)
{
    int with_len = type == BRIDGE_PUBLISH || type == BRIDGE_SEND_NAME || type == BRIDGE_WILL ||
                   type == BRIDGE_HISTORY;
    parsed x;

    if (type == BRIDGE_HELLO)
        return hello(br, p, len);
    if (!br->hello)
        return -EPROTO;
    if (type == BRIDGE_BROADCAST) {
        if (len < 4)
            return -EPROTO;
        (void)bus_inject_broadcast(br->bus, (pid_t)get_u32(p), p + 4, len - 4);
        return 0;
    }
    if (parse(p, len, with_len, &x) < 0)
        return -EPROTO;
    /* Every frame but a will's clearing and WILL_DONE names something. */
    if ((x.text_len == 0) != (type == BRIDGE_WILL_DONE) && type != BRIDGE_WILL)
        return -EPROTO;
    switch (type) {
    case BRIDGE_PUBLISH:
        (void)bus_inject_publish(br->bus, x.text, x.text_len, x.pid, x.data, x.len);
        return 0;
    case BRIDGE_HISTORY:
        bus_inject_history(br->bus, x.text, x.text_len, x.pid, x.data, x.len);
        return 0;
    case BRIDGE_SEND_NAME:
        send_name(br, &x);
        return 0;
    case BRIDGE_NO_NAME:
        no_name(br, &x);
        return 0;
    case BRIDGE_CLAIM:
        return claim(br, &x);
    case BRIDGE_RELEASE:
        release(br, &x);
        return 0;
    case BRIDGE_JOIN:
        return sub_add(br, x.text, x.text_len, x.pid);
    case BRIDGE_LEAVE:
        sub_remove(br, x.text, x.text_len, x.pid);
        return 0;
    case BRIDGE_WILL:
        return will_set(br, x.pid, x.text, x.text_len, x.data, x.len);
    case BRIDGE_WILL_DONE:
        will_done(br, x.pid);
        return 0;
    default:
        return -EPROTO;
    }
}

/* ------------------------------------------------------------ life */

int bus_bridge_init(bus_bridge *br, bus *b, unsigned rank, size_t history_budget,
                    bus_bridge_out_cb out, void *out_arg)
{
    memset(br, 0, sizeof *br);
    br->bus = b;
    br->rank = rank;
    br->history_budget = history_budget;
    br->out = out;
    br->out_arg = out_arg;
    br->procs = calloc(BUCKETS, sizeof *br->procs);
    br->names = calloc(BUCKETS, sizeof *br->names);
    br->topics = calloc(BUCKETS, sizeof *br->topics);
    if (!br->procs || !br->names || !br->topics) {
        bus_bridge_fini(br);
        return -ENOMEM;
    }
    return 0;
}

static void export_one(const char *topic, size_t topic_len, pid_t from, const unsigned char *data,
                       size_t len, void *arg)
{
    (void)send_pid_text(arg, BRIDGE_HISTORY, from, 1, topic, topic_len, data, len);
}

void bus_bridge_start(bus_bridge *br)
{
    unsigned char h[5];

    h[0] = BRIDGE_VERSION;
    put_u32(h + 1, br->rank);
    (void)br->out(br->out_arg, BRIDGE_HELLO, h, sizeof h, NULL, 0);
    if (br->history_budget)
        bus_history_export(br->bus, br->history_budget, CHAN_HDR_LEN + 6, export_one, br);
    br->started = 1;
    bus_set_bridge(br->bus, &bridge_ops, br); /* and the state, as events */
}

void bus_bridge_stop(bus_bridge *br)
{
    bus_bridge_stop_keeping(br, NULL);
}

void bus_bridge_stop_keeping(bus_bridge *br, bus_bridge *now)
{
    if (br->started && br->bus->bridge == &bridge_ops && br->bus->bridge_ctx == br)
        bus_set_bridge(br->bus, NULL, NULL);
    br->started = 0;
    if (!br->topics)
        return;
    /* The peer's state goes at once; its wills are published here first:
     * those children's departures are seen, and no ghost stays. */
    for (unsigned i = 0; i < BUCKETS; i++) {
        for (rproc *p = br->procs[i]; p; p = p->next) {
            /* In now at all: alive there, its will cleared, not done. */
            if (p->will && !(now && now->procs && *proc_slot(now, p->pid)))
                (void)bus_inject_publish(br->bus, p->will, p->will_topic_len, p->pid,
                                         (unsigned char *)p->will + p->will_topic_len, p->will_len);
        }
    }
    for (unsigned i = 0; i < BUCKETS; i++) {
        while (br->topics[i]) {
            rtopic *t = br->topics[i];
            br->topics[i] = t->next;
            while (t->subs) {
                rsub *s = t->subs;
                t->subs = s->next;
                free(s);
            }
            free(t);
        }
        while (br->names[i]) {
            rname *n = br->names[i];
            br->names[i] = n->next;
            free(n);
        }
        while (br->procs[i]) {
            rproc *p = br->procs[i];
            br->procs[i] = p->next;
            free(p->will);
            free(p);
        }
    }
    br->entries = 0;
}

void bus_bridge_fini(bus_bridge *br)
{
    bus_bridge_stop(br);
    free(br->procs);
    free(br->names);
    free(br->topics);
    br->procs = NULL;
    br->names = NULL;
    br->topics = NULL;
}

const bus_bridge_ops *bus_bridge_peer_ops(void)
{
    return &bridge_ops;
}

void bus_bridge_get_counts(const bus_bridge *br, bus_bridge_counts *out)
{
    memset(out, 0, sizeof *out);
    if (!br->topics)
        return;
    for (unsigned i = 0; i < BUCKETS; i++) {
        for (rproc *p = br->procs[i]; p; p = p->next) {
            out->procs++;
            out->wills += p->will != NULL;
        }
        for (rname *n = br->names[i]; n; n = n->next)
            out->names++;
        for (rtopic *t = br->topics[i]; t; t = t->next) {
            out->topics++;
            out->subs += t->nsubs;
        }
    }
}
