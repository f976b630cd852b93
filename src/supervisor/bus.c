/* bus.c - see bus.h. */
#include "supervisor/bus.h"
#include "supervisor/bus_codec.h"
#include "supervisor/bus_out.h"
#include "os/os.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>

#define TOPIC_BUCKETS (BUS_TOPICS_MAX * 2)
#define NAME_BUCKETS 4096

typedef struct hist_item {
    struct hist_item *next;      /* the topic's next, newer */
    TAILQ_ENTRY(hist_item) glink; /* every topic's, oldest first */
    bus_topic *topic;
    pid_t from;
    size_t len;
    unsigned char data[];
} hist_item;

struct bus_sub {
    bus_topic *topic;
    endpoint *ep;
    bus_sub *tprev, *tnext;  /* the topic's subscribers */
    bus_sub *enext;          /* the endpoint's subscriptions */
    /* Written to the child's client (output offload), not sent on its
     * channel: prefix, history prefix and suffix, plen + hlen + slen bytes
     * (NULL: a plain subscription); gated: behind the gate. */
    unsigned char *fmt;
    size_t plen, hlen, slen, nlen; /* then the notices' prefix, nlen bytes */
    int gated;
};

typedef struct bus_out bus_out;

/* An output offload (see "output offload" below). */
struct bus_out {
    bus *owner;
    endpoint *e;            /* NULL once lingering */
    int fd;
    ev_io w;                /* writable, while the socket is full */
    bus_outbuf ob;
    double report_s;        /* 0: no reports */
    double stall_since;     /* mono: high and nothing taken since; 0: not */
    int reported;           /* this stall was told */
    unsigned char *kick, *down; /* words written last (NULL: none) */
    size_t kick_len, down_len;
    double linger_until;
    struct bus_out *lprev, *lnext; /* the lingering list, newest first */
};


struct bus_topic {
    bus_topic *next;         /* bucket chain */
    TAILQ_ENTRY(bus_topic) ilink; /* the idle list, while idle */
    int idle;                /* no subscribers, some history: evictable */
    bus_sub *subs;
    unsigned nsubs;
    unsigned ncongested;     /* subscribers whose queue holds senders */
    hist_item *hist_head, *hist_tail;
    unsigned nhist;
    size_t hist_bytes;
    size_t len;
    char name[];
};

struct bus_name {
    bus_name *next;          /* bucket chain */
    bus_name *enext;         /* the holder's names */
    endpoint *holder;
    size_t len;
    char name[];
};

/* ------------------------------------------------------------ tables */

static uint32_t hash(const char *p, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a: chains are short, the tables bounded */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 16777619u;
    return h;
}

static bus_topic **topic_slot(bus *b, const char *name, size_t len)
{
    bus_topic **t = &b->topics[hash(name, len) % TOPIC_BUCKETS];
    while (*t && !((*t)->len == len && memcmp((*t)->name, name, len) == 0))
        t = &(*t)->next;
    return t;
}

static bus_name **name_slot(bus *b, const char *name, size_t len)
{
    bus_name **n = &b->names[hash(name, len) % NAME_BUCKETS];
    while (*n && !((*n)->len == len && memcmp((*n)->name, name, len) == 0))
        n = &(*n)->next;
    return n;
}

/*
 * The bridge's hooks (bus.h, bus_bridge_ops): what must reach the peer is
 * told to it from here, and only from the handlers of what local children
 * (or `ctl`) do; what comes from the peer (bus_inject_*) never calls them,
 * so nothing crosses twice.
 */
static void bridge_name(bus *b, const bus_name *n, int held)
{
    if (b->bridge)
        b->bridge->name(b->bridge_ctx, n->name, n->len, n->holder->pid, held);
}

static void bridge_member(bus *b, const bus_topic *t, pid_t pid, int joined)
{
    if (b->bridge)
        b->bridge->member(b->bridge_ctx, t->name, t->len, pid, joined);
}

static void bridge_will(bus *b, const endpoint *e)
{
    if (!b->bridge)
        return;
    if (e->will)
        b->bridge->will(b->bridge_ctx, e->pid, e->will, e->will_topic_len,
                        (const unsigned char *)e->will + e->will_topic_len, e->will_len);
    else
        b->bridge->will(b->bridge_ctx, e->pid, NULL, 0, NULL, 0);
}

static void bridge_published(bus *b, const char *topic, size_t topic_len, pid_t from,
                             const unsigned char *data, size_t len)
{
    if (b->bridge)
        b->bridge->published(b->bridge_ctx, topic, topic_len, from, data, len);
}

static int bridge_name_held(bus *b, const char *name, size_t len)
{
    return b->bridge && b->bridge->name_held(b->bridge_ctx, name, len);
}

/*
 * History and eviction. A topic lives while it has subscribers or history.
 * One with history and no subscribers is idle: it waits on the idle list,
 * least recently used first, so a room's history survives a moment with
 * nobody in it. Idle topics are evicted, their history with them, when a
 * topic is to be made and the table is full, and when the history of all
 * topics passes its budget (cfg.history_bytes); past that budget with no
 * idle topic left, the oldest message of any topic goes. So neither a
 * flood of topics nor their history can pin memory or the table.
 */
static void idle_remove(bus *b, bus_topic *t)
{
    if (!t->idle)
        return;
    TAILQ_REMOVE(&b->idle, t, ilink);
    t->idle = 0;
}

/* Makes t the most recently used idle topic. */
static void idle_touch(bus *b, bus_topic *t)
{
    idle_remove(b, t);
    t->idle = 1;
    TAILQ_INSERT_TAIL(&b->idle, t, ilink);
}

/* What a kept message costs the budgets: its bytes and its bookkeeping,
 * so that empty messages cannot pin memory either. */
static size_t hist_cost(size_t len)
{
    return sizeof(hist_item) + len;
}

static void topic_drop_oldest(bus *b, bus_topic *t)
{
    hist_item *h = t->hist_head;

    t->hist_head = h->next;
    if (!t->hist_head)
        t->hist_tail = NULL;
    t->nhist--;
    t->hist_bytes -= hist_cost(h->len);
    TAILQ_REMOVE(&b->hist, h, glink);
    b->hist_bytes -= hist_cost(h->len);
    free(h);
}

static void topic_free(bus *b, bus_topic *t)
{
    bus_topic **slot = topic_slot(b, t->name, t->len);

    while (t->hist_head)
        topic_drop_oldest(b, t);
    idle_remove(b, t);
    *slot = t->next;
    b->ntopics--;
    free(t);
}

/* After its last subscriber left, or a publish: a topic with neither
 * subscribers nor history is freed; one with history alone is idle. */
static void topic_maybe_free(bus *b, bus_topic *t)
{
    if (t->subs)
        return;
    if (!t->hist_head)
        topic_free(b, t);
    else
        idle_touch(b, t);
}

static bus_topic *topic_get(bus *b, const char *name, size_t len, int create)
{
    bus_topic **slot = topic_slot(b, name, len), *t;

    if (*slot || !create)
        return *slot;
    if (b->ntopics >= BUS_TOPICS_MAX) {
        if (TAILQ_EMPTY(&b->idle))
            return NULL; /* every topic has subscribers */
        topic_free(b, TAILQ_FIRST(&b->idle));
        slot = topic_slot(b, name, len); /* the chain may have changed */
    }
    t = calloc(1, sizeof *t + len + 1);
    if (!t)
        return NULL;
    memcpy(t->name, name, len);
    t->len = len;
    *slot = t;
    b->ntopics++;
    return t;
}

static void history_trim(bus *b, bus_topic *t);

/* Keeps a message in t's history, within the topic's bounds and the bus's
 * budget. Nothing is kept if memory is short. */
static void history_add(bus *b, bus_topic *t, pid_t from, const unsigned char *data, size_t len)
{
    hist_item *h;

    if (hist_cost(len) > BUS_HISTORY_BYTES || !(h = malloc(sizeof *h + len)))
        return;
    h->next = NULL;
    h->topic = t;
    h->from = from;
    h->len = len;
    if (len)
        memcpy(h->data, data, len);
    if (t->hist_tail)
        t->hist_tail->next = h;
    else
        t->hist_head = h;
    t->hist_tail = h;
    t->nhist++;
    t->hist_bytes += hist_cost(len);
    TAILQ_INSERT_TAIL(&b->hist, h, glink);
    b->hist_bytes += hist_cost(len);
    history_trim(b, t);
}

/* After a message was kept in t: t's bounds, then the bus's budget. */
static void history_trim(bus *b, bus_topic *t)
{
    while (t->nhist > b->cfg.history || t->hist_bytes > BUS_HISTORY_BYTES)
        topic_drop_oldest(b, t);
    /* Bounded: each pass frees a topic or a message (t is freed by the
     * caller if this empties it; a message just added at its tail stays,
     * as the budget is at least BUS_HISTORY_BYTES). */
    while (b->hist_bytes > b->cfg.history_bytes) {
        bus_topic *old = TAILQ_FIRST(&b->idle);
        if (old == t)
            old = TAILQ_NEXT(t, ilink);
        if (old) {
            topic_free(b, old);
            continue;
        }
        old = TAILQ_FIRST(&b->hist)->topic;
        topic_drop_oldest(b, old);
        if (old != t && !old->subs && !old->hist_head)
            topic_free(b, old);
    }
}

/* A message encoded once per codec, on first need. */
typedef struct encoded {
    const bus_msg *m;
    unsigned char *bytes[2];
    size_t len[2];
    int failed[2];
} encoded;

static void encoded_fini(encoded *x)
{
    free(x->bytes[0]);
    free(x->bytes[1]);
}

/*
 * Deliveries only queue. What they leave to do (queues to flush, children
 * to disconnect) waits on the attention list until the loop is about to
 * block (the prepare watcher), for two reasons: every message queued for
 * a child in one round of events goes out in one sendmsg (a busy room's
 * fan-out is one system call per member, not per line), and nothing is
 * ever closed in the middle of a delivery loop (closing publishes a will,
 * which delivers to others, who may be closed in turn).
 */
static void attention(endpoint *e)
{
    bus *b = e->owner;

    if (e->listed)
        return;
    e->listed = 1;
    e->aprev = NULL;
    e->anext = b->attn;
    if (b->attn)
        b->attn->aprev = e;
    b->attn = e;
}

static void attention_remove(endpoint *e)
{
    if (!e->listed)
        return;
    if (e->aprev)
        e->aprev->anext = e->anext;
    else
        e->owner->attn = e->anext;
    if (e->anext)
        e->anext->aprev = e->aprev;
    e->listed = 0;
    e->aprev = e->anext = NULL;
}

/* Marks a child to be disconnected once the current deliveries are done. */
static void doom(endpoint *e, const char *why, int bad)
{
    if (e->doom)
        return;
    e->doom = why;
    e->doom_bad = bad;
    e->owner->urgent = 1;
    attention(e);
}

static void kick(endpoint *e, const char *why, int bad);

/*
 * Holding senders. A burst sent at once to many recipients must not be
 * poured into their queues faster than they read them (a full queue drops
 * or disconnects a child that is reading, only slower than the burst), so
 * the pressure goes back to the senders: while a recipient's queue is over
 * half its limit, it is congested, and a child whose next request would
 * deliver to a congested recipient (other than itself) is held: that
 * request waits, decoded, with what was read after it, and the child's
 * channel is not read; its own writes then block in the child, which
 * stops reading its client, and TCP slows the client down. When the
 * queue is down to a quarter, the held children are retried, in the order
 * they were held. A recipient whose queue is not down to a quarter
 * BUS_STALL_S after it passed half is stuck: it holds nobody any more, and
 * its queue fills up to the policy (drop or kick) as before. Any shrink is
 * not enough: a reader that takes a little now and then would set the pace
 * of everyone sending to it for as long as it likes. Nothing is held but requests from children: `ctl`
 * texts, wills and replays are queued at once. With nothing congested
 * (the common case) the cost is one comparison per request and per push.
 */
static size_t high_water(const bus *b) { return b->cfg.queue_limit / 2; }
static size_t low_water(const bus *b) { return b->cfg.queue_limit / 4; }


static void set_congested(endpoint *e, int on)
{
    bus *b = e->owner;
    int d = on ? 1 : -1;

    if (e->congested == on)
        return;
    e->congested = on;
    b->ncongested += (unsigned)d;
    for (bus_sub *s = e->subs; s; s = s->enext)
        s->topic->ncongested += (unsigned)d;
    if (on) {
        e->congested_at = os_mono_now();
        if (!ev_is_active(&b->stall)) {
            ev_timer_again(b->loop, &b->stall);
            ev_unref(b->loop); /* it must not keep the loop running */
        }
    } else {
        b->wake = 1;
    }
}

/* After a flush: the end of congestion at the low mark. */
static int out_low(const bus_out *o);

static void flushed(endpoint *e, size_t before)
{
    (void)before;
    if ((e->congested || e->stuck) && e->q.bytes <= low_water(e->owner) &&
        (!e->out || out_low(e->out))) {
        e->stuck = 0;
        set_congested(e, 0);
    }
}

static void stall_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    bus *b = w->data;
    double now = os_mono_now();
    (void)revents;

    for (endpoint *e = b->all; e && b->ncongested; e = e->next) {
        if (e->congested && now - e->congested_at >= BUS_STALL_S) {
            sf_logev(b->cfg.log, SF_LOG_WARN, "bus_stalled", (int)e->pid, NULL,
                     SF_FIELDS(SF_F_DBL("after_s", BUS_STALL_S)),
                     "pid %d: its queue did not drain to a quarter in %g s: not holding its senders",
                     (int)e->pid, BUS_STALL_S);
            e->stuck = 1;
            set_congested(e, 0);
        }
    }
    if (b->ncongested == 0) {
        ev_ref(loop);
        ev_timer_stop(loop, w);
    }
}

static bus_topic *topic_get(bus *b, const char *name, size_t len, int create);
static bus_name **name_slot(bus *b, const char *name, size_t len);

/* Whether a recipient holds its senders back: congested, and not a held
 * child that may be blocked writing without reading. A held child's channel
 * is not read; an exec'd program (JSON lines) may then block in a write
 * and stop reading its own channel, and holding anyone for it could close
 * a cycle of children waiting on each other (docs/design.md, "no cycle of
 * holds"). A C child keeps reading while its send waits (sf_conn_send),
 * so its queue drains even while it is held: it holds senders as usual,
 * or the room would pour into a chat child that, its client's backlog
 * full, is not reading on purpose. */
static int holds_senders(const endpoint *to)
{
    return to->congested && !(to->held && to->jsonl);
}

/* Whether this request of e would deliver to a recipient that holds its
 * senders (e itself never holds e). */
static int blocked(endpoint *e, const bus_op *op)
{
    bus *b = e->owner;
    endpoint *to;

    if (b->ncongested == 0 || e->draining || b->closing)
        return 0;
    switch (op->op) {
    case OP_PUBLISH: {
        bus_topic *t = topic_get(b, op->name, op->name_len, 0);
        if (!t || t->ncongested == 0)
            return 0;
        for (const bus_sub *s = t->subs; s; s = s->tnext) {
            if (s->ep != e && holds_senders(s->ep))
                return 1;
        }
        return 0;
    }
    case OP_SEND:
        to = bus_find_pid(b, op->to);
        return to && to != e && holds_senders(to);
    case OP_SEND_NAME: {
        bus_name *n = *name_slot(b, op->name, op->name_len);
        return n && n->holder != e && holds_senders(n->holder);
    }
    case OP_BROADCAST:
        for (const endpoint *x = b->all; x; x = x->next) {
            if (x != e && holds_senders(x))
                return 1;
        }
        return 0;
    default:
        return 0;
    }
}

static void held_unlink(endpoint *e)
{
    bus *b = e->owner;

    if (!e->held)
        return;
    TAILQ_REMOVE(&b->held, e, hlink);
    b->nheld--;
    e->held = 0;
}

static void hold(endpoint *e)
{
    bus *b = e->owner;

    if (e->held)
        return;
    e->held = 1;
    TAILQ_INSERT_TAIL(&b->held, e, hlink);
    b->nheld++;
    if (!e->retrying)
        b->counted.holds++; /* a new hold, not the same one tried again */
    ev_io_stop(b->loop, &e->rd);
}

static void pending_drop(endpoint *e)
{
    if (e->has_pend_f) {
        free(e->pend_f.payload);
        if (e->pend_f.fd >= 0)
            close(e->pend_f.fd);
        e->has_pend_f = 0;
    }
    if (e->pend_j) {
        json_decref(e->pend_j);
        e->pend_j = NULL;
    }
}

/* The child has closed its end (it exited): nothing more can reach it, but
 * what it wrote before is still to be read, up to the EOF that closes the
 * endpoint (a goodbye, a cleared will). */
static void stop_writing(endpoint *e)
{
    e->broken = 1;
    chan_queue_fini(&e->q);
    chan_queue_init(&e->q, e->owner->cfg.queue_limit);
    ev_io_stop(e->owner->loop, &e->wr);
    e->stuck = 0;
    set_congested(e, 0);
}

static void wake_held(bus *b);
static int out_flush(bus_out *o);

/*
 * Gathering (cfg.gather_s > 0; `sockfork chat` sets it). A room's members
 * publish at nearly the same moment, each from its own process, and the
 * supervisor reads them over a few loop passes; flushing after each pass
 * wakes every member once per pass, and each wake-up is a poll, a read and
 * a write to its client in that member's process. So while what waits is
 * only publishes, the flush waits until no input has come for gather_s,
 * and at most BUS_GATHER_SPAN times that since the first waited: one
 * flush, one wake-up per member for most of a burst. Anything else queued
 * (a reply to one child, a listing, an error, a kick), a recipient past
 * its high mark, held senders to retry, or shutdown, flushes at once, as
 * every pass did before. The deadline is a timerfd: the loop's timers
 * round up to a millisecond. With a bridge, its injected publishes are
 * input too, and while it expects more of the burst (its own lines not
 * back from Redis yet) the wait may last up to BUS_GATHER_SPAN_CROSSING
 * gaps: a burst's lines from both sides then go out in one flush.
 */
static void gather_reset(bus *b)
{
    b->gathering = 0;
    b->gather_armed = 0;
    b->urgent = 0;
}

/* Input that extends a gathering: frames from children, and publishes a
 * bridge injects (the lines of other instances arrive in bursts too, one
 * reply of Redis or one frame of the link after another). */
static uint64_t gather_input(const bus *b)
{
    return b->counted.frames_in + b->injected;
}

static int gather_wait(bus *b)
{
    double now, due, cap;
    struct itimerspec its;
    int crossing;

    if (b->gather_fd < 0 || b->urgent || b->wake || b->ncongested || b->closing)
        return 0;
    now = os_mono_now();
    if (!b->gathering) {
        b->gathering = 1;
        b->gather_first = b->gather_last = now;
        b->gather_in = gather_input(b);
    } else if (gather_input(b) != b->gather_in) {
        b->gather_in = gather_input(b);
        b->gather_last = now;
    }
    /* More of the burst is on its way through the bridge: waited for up to
     * a longer cap (its path is longer); what brings it wakes the loop, and
     * the flush follows a gap after the last input, as for any burst. */
    crossing = b->bridge && b->bridge->expecting && b->bridge->expecting(b->bridge_ctx);
    due = b->gather_last + b->cfg.gather_s;
    cap = b->gather_first + (crossing ? BUS_GATHER_SPAN_CROSSING : BUS_GATHER_SPAN) * b->cfg.gather_s;
    if (due > cap || crossing)
        due = cap;
    if (now >= due)
        return 0;
    if (due == b->gather_armed)
        return 1; /* the timerfd holds it already (a pass with nothing new) */
    memset(&its, 0, sizeof its);
    its.it_value.tv_sec = (time_t)(due - now);
    its.it_value.tv_nsec = (long)((due - now - (double)its.it_value.tv_sec) * 1e9) + 1; /* never 0: that disarms */
    if (its.it_value.tv_nsec > 999999999L)
        its.it_value.tv_nsec = 999999999L;
    if (timerfd_settime(b->gather_fd, 0, &its, NULL) < 0)
        return 0;
    b->gather_armed = due;
    return 1;
}

static void gather_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    uint64_t expired;
    (void)loop;
    (void)revents;

    /* Only to wake the loop: the prepare watcher flushes (or arms it
     * again). */
    (void)!read(w->fd, &expired, sizeof expired);
    ((bus *)w->data)->gather_armed = 0;
}

static void gather_init(bus *b)
{
    b->gather_fd = -1;
    if (b->cfg.gather_s <= 0)
        return;
    /* Without it (no descriptor left), nothing is gathered: each pass
     * flushes, as with gather_s 0. */
    b->gather_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (b->gather_fd < 0)
        return;
    ev_io_init(&b->gather_w, gather_cb, b->gather_fd, EV_READ);
    b->gather_w.data = b;
    ev_io_start(b->loop, &b->gather_w);
    ev_unref(b->loop); /* it must not keep the loop running */
}

static void gather_fini(bus *b)
{
    if (b->gather_fd < 0)
        return;
    ev_ref(b->loop);
    ev_io_stop(b->loop, &b->gather_w);
    close(b->gather_fd);
    b->gather_fd = -1;
}

static void prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    bus *b = w->data;
    (void)loop;
    (void)revents;

    if (b->attn && gather_wait(b))
        return;
    gather_reset(b);

    /* Bounded: each pass takes one endpoint off; one is put back only by a
     * will or a delivery, and a closed one never comes back. A wake-up
     * retries the held senders, whose requests are bounded by what they
     * had read. */
    while (b->attn || b->wake) {
        endpoint *e = b->attn;
        size_t before;
        int rc;

        if (b->wake) {
            wake_held(b);
            continue;
        }
        attention_remove(e);
        if (e->doom) {
            kick(e, e->doom, e->doom_bad);
            continue;
        }
        if (e->out && !ev_is_active(&e->out->w))
            (void)out_flush(e->out);
        if (!endpoint_is_open(e) || endpoint_waiting(e) || ev_is_active(&e->wr))
            continue; /* the write watcher has it, or endpoint_attach will */
        before = e->q.bytes;
        rc = chan_queue_flush(&e->q, e->fd);
        flushed(e, before);
        if (rc == 0)
            ev_io_start(b->loop, &e->wr);
        else if (rc < 0)
            stop_writing(e);
    }
}

static unsigned kind_index(int kind)
{
    return kind > 0 && kind < BUS_KINDS ? (unsigned)kind : 0;
}

static int push(endpoint *e, encoded *x)
{
    int j = e->jsonl, rc;

    if (!endpoint_is_open(e) || e->doom || e->broken)
        return -EPIPE;
    /* More than a child may send is more than a child's reader takes
     * (ctl's texts are bounded by its own line limit, not by chan_max). */
    if (x->m->len > e->owner->cfg.chan_max)
        return -EMSGSIZE;
    if (!x->bytes[j] && !x->failed[j]) {
        rc = j ? bus_encode_json(x->m, (char **)&x->bytes[j], &x->len[j])
               : bus_encode_frame(x->m, &x->bytes[j], &x->len[j]);
        if (rc < 0)
            x->failed[j] = 1;
    }
    if (x->failed[j])
        return -ENOMEM;
    /* A worker's queue keeps BUS_CONTROL_ROOM for the frames that mark its
     * connections (endpoint_session_end): messages stop short of it. */
    if (e->sessions && e->q.bytes + x->len[j] > e->owner->cfg.queue_limit)
        rc = -ENOBUFS;
    else
        rc = chan_queue_push_raw(&e->q, x->bytes[j], x->len[j]);
    if (rc == -ENOBUFS) {
        e->drops++;
        e->owner->counted.drops++;
        e->owner->counted.dropped_by_kind[kind_index(x->m->kind)]++;
        if (e->owner->cfg.full_policy == BUS_FULL_KICK) {
            e->owner->counted.kicked_full++;
            doom(e, "its channel queue is full (it does not read it)", 0);
        }
        return rc;
    }
    if (rc < 0)
        return rc;
    e->frames_out++;
    e->owner->counted.frames_out++;
    e->owner->counted.out_by_kind[kind_index(x->m->kind)]++;
    if (!e->congested && !e->stuck && e->q.bytes >= high_water(e->owner))
        set_congested(e, 1);
    if (x->m->kind != SF_MSG_TOPIC)
        e->owner->urgent = 1; /* only publishes are gathered */
    attention(e);
    return 0;
}

int bus_deliver(endpoint *to, const bus_msg *m)
{
    encoded x = {m, {NULL, NULL}, {0, 0}, {0, 0}};
    int rc = push(to, &x);
    encoded_fini(&x);
    return rc;
}

static unsigned broadcast_local(bus *b, const bus_msg *m, const endpoint *except)
{
    encoded x = {m, {NULL, NULL}, {0, 0}, {0, 0}};
    unsigned n = 0;
    endpoint *e = b->all, *next;

    for (; e; e = next) {
        next = e->next;
        if (e != except && endpoint_reachable(e) && push(e, &x) == 0)
            n++;
    }
    encoded_fini(&x);
    return n;
}

unsigned bus_broadcast(bus *b, const bus_msg *m, const endpoint *except)
{
    if (b->bridge)
        b->bridge->broadcast(b->bridge_ctx, m->from, m->data, m->len);
    return broadcast_local(b, m, except);
}

/* -------------------------------------------------------- output offload */

/*
 * Output offload (bus_out.h, docs/design.md). A child handed over its
 * client's socket: what its client is to get waits here, in one bounded
 * buffer, in the order the child's requests and the topics' messages
 * came, and is written when the loop is about to block (the prepare
 * watcher, as the channel queues are: gathering applies), or by the write
 * watcher once the socket is full. The buffer counts for backpressure as
 * the channel queue does: past half its limit the child is congested and
 * holds its senders; a client that takes nothing for report_s with it
 * that high is reported to the child, which decides. The output outlives
 * the connection by a bounded last flush (lingering), then its descriptor
 * closes, so the client sees the end.
 */

static void send_error(endpoint *e, int code, const char *subject, size_t subject_len,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static int out_high(const bus_out *o) { return bus_outbuf_bytes(&o->ob) >= o->ob.limit / 2; }
static int out_low(const bus_out *o) { return bus_outbuf_bytes(&o->ob) <= o->ob.limit / 4; }

static void out_timer_need(bus *b)
{
    if (!ev_is_active(&b->out_timer)) {
        ev_timer_again(b->loop, &b->out_timer);
        ev_unref(b->loop); /* it must not keep the loop running */
    }
}

static void linger_unlink(bus_out *o)
{
    bus *b = o->owner;

    if (o->lprev)
        o->lprev->lnext = o->lnext;
    else if (b->lingering == o)
        b->lingering = o->lnext;
    if (o->lnext)
        o->lnext->lprev = o->lprev;
    o->lprev = o->lnext = NULL;
}

/* Closes the bus's copy of the socket and frees the output: the client
 * sees the end once the child's copy is closed too. */
static void out_free(bus_out *o)
{
    bus *b = o->owner;

    ev_io_stop(b->loop, &o->w);
    if (o->e) {
        o->e->out = NULL;
        b->nouts--;
    } else {
        linger_unlink(o);
        b->nlingering--;
    }
    if (o->fd >= 0)
        close(o->fd);
    bus_outbuf_fini(&o->ob);
    free(o->kick);
    free(o->down);
    free(o);
}

static void out_report(bus_out *o, int refused);

/* Writes what the socket takes. Returns 0, or -1 when the output was
 * closed (a write error: the client is gone; its child sees that on its
 * own side of the socket). */
static int out_flush(bus_out *o)
{
    bus *b = o->owner;
    size_t len;
    const unsigned char *p;

    while ((p = bus_outbuf_data(&o->ob, &len)) && len > 0) {
        ssize_t n = send(o->fd, p, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!ev_is_active(&o->w))
                ev_io_start(b->loop, &o->w);
            break;
        }
        if (n <= 0) {
            endpoint *e = o->e;
            b->counted.out_failed++;
            if (e)
                e->out_state = 2;
            out_free(o);
            if (e)
                flushed(e, 0); /* nothing of it waits any more */
            return -1;
        }
        bus_outbuf_consumed(&o->ob, (size_t)n);
        b->counted.out_written += (size_t)n;
        o->stall_since = 0; /* it takes what it is sent */
        o->reported = 0;
    }
    if (len == 0 && ev_is_active(&o->w))
        ev_io_stop(b->loop, &o->w);
    if (o->e) {
        flushed(o->e, 0);
    } else if (len == 0) {
        out_free(o); /* lingering, and all written */
        return -1;
    }
    return 0;
}

static void out_wr_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    (void)out_flush(w->data);
}

/* After bytes were added: congestion at half the limit, the stall clock,
 * and a flush when the loop is about to block. */
static void out_added(endpoint *e)
{
    bus_out *o = e->out;

    if (out_high(o)) {
        if (!e->congested && !e->stuck)
            set_congested(e, 1);
        if (o->stall_since == 0)
            o->stall_since = os_mono_now();
        out_timer_need(e->owner);
    }
    attention(e);
}

/* SF_MSG_OUT_STALLED to the child: what waits, for how long. */
static void out_report(bus_out *o, int refused)
{
    char text[64];
    bus_msg m;
    double since = o->stall_since ? os_mono_now() - o->stall_since : 0;
    int n = snprintf(text, sizeof text, "%zu %.3f", bus_outbuf_bytes(&o->ob), since);

    memset(&m, 0, sizeof m);
    m.kind = SF_MSG_OUT_STALLED;
    m.ok = refused;
    m.data = (const unsigned char *)text;
    m.len = (size_t)n;
    o->owner->counted.out_reports++;
    (void)bus_deliver(o->e, &m);
}

/* Every BUS_OUT_TICK_S while an output exists: reports due, lingering
 * outputs past their time. */
static void out_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    bus *b = w->data;
    double now = os_mono_now();
    (void)revents;

    for (endpoint *e = b->all; e; e = e->next) {
        bus_out *o = e->out;
        if (!o)
            continue;
        if (!out_high(o))
            o->stall_since = 0;
        else if (o->report_s > 0 && !o->reported && o->stall_since &&
                 now - o->stall_since >= o->report_s) {
            o->reported = 1;
            out_report(o, 0);
        }
    }
    for (bus_out *o = b->lingering, *next; o; o = next) {
        next = o->lnext;
        if (now >= o->linger_until)
            out_free(o);
    }
    if (b->nouts == 0 && b->nlingering == 0) {
        ev_ref(loop);
        ev_timer_stop(loop, w);
    }
}

/* Copies words (n bytes) for later; NULL for none. */
static unsigned char *words_dup(const unsigned char *p, size_t n)
{
    unsigned char *c;

    if (n == 0 || !(c = malloc(n)))
        return NULL;
    memcpy(c, p, n);
    return c;
}

/* CHAN_T_OUT_OPEN. Returns 0, or -EPROTO (malformed: e is kicked). */
static int out_open(endpoint *e, chan_frame *f)
{
    bus *b = e->owner;
    bus_out_open r;
    struct stat st;
    bus_out *o;
    bus_piece first;

    if (f->fd < 0 || bus_out_open_decode(f->payload, f->len, &r) < 0)
        return -EPROTO;
    if (fstat(f->fd, &st) < 0 || !S_ISSOCK(st.st_mode)) {
        send_error(e, EINVAL, NULL, 0, "out: not a socket");
        return 0;
    }
    if (e->out_state != 0) {
        send_error(e, EALREADY, NULL, 0, "out: the client's output was handed over already");
        return 0;
    }
    if (!(o = calloc(1, sizeof *o))) {
        send_error(e, ENOMEM, NULL, 0, "out: out of memory");
        return 0;
    }
    o->owner = b;
    o->e = e;
    o->fd = f->fd;
    f->fd = -1;
    bus_outbuf_init(&o->ob, r.limit && r.limit < b->cfg.queue_limit ? r.limit : b->cfg.queue_limit);
    o->report_s = r.report_ms / 1000.0;
    o->kick = words_dup(r.kick, r.kick_len);
    o->kick_len = o->kick ? r.kick_len : 0;
    o->down = words_dup(r.down, r.down_len);
    o->down_len = o->down ? r.down_len : 0;
    ev_io_init(&o->w, out_wr_cb, o->fd, EV_WRITE);
    o->w.data = o;
    e->out = o;
    e->out_state = 1;
    b->nouts++;
    b->counted.out_opened++;
    out_timer_need(b);
    first.p = r.first;
    first.n = r.first_len;
    if (first.n && bus_outbuf_append(&o->ob, &first, 1, 0, BUS_OUT_NOTE) < 0)
        b->counted.out_dropped++;
    b->urgent = 1;
    out_added(e);
    return 0;
}

/* CHAN_T_OUT_WRITE: the child's own bytes, in order. */
static int out_write(endpoint *e, const chan_frame *f)
{
    bus_out_write r;
    bus_piece data;

    if (bus_out_write_decode(f->payload, f->len, &r) < 0)
        return -EPROTO;
    if (e->out_state == 0) {
        send_error(e, EINVAL, NULL, 0, "out: no output handed over");
        return 0;
    }
    if (!e->out)
        return 0; /* the client is gone */
    if (r.flags & OUT_W_RESET) {
        if (bus_outbuf_reset(&e->out->ob, r.sep, r.sep_len))
            e->owner->counted.out_dropped++;
    }
    data.p = r.data;
    data.n = r.len;
    if (r.len && bus_outbuf_append(&e->out->ob, &data, 1, 0, BUS_OUT_FIT) < 0) {
        e->owner->counted.out_dropped++;
        out_report(e->out, 1);
    }
    e->owner->urgent = 1; /* an answer goes at once */
    out_added(e);
    return 0;
}

/* A topic's message for an output subscriber: appended as prefix + data +
 * suffix, behind the gate if the subscription waits for it. Returns 0, or
 * -errno as push(). */
static int out_deliver(bus_sub *s, const bus_msg *m)
{
    endpoint *e = s->ep;
    bus *b = e->owner;
    bus_piece pc[3];
    int hist = m->kind == SF_MSG_HISTORY, rc;

    if (!endpoint_is_open(e) || e->doom || e->broken)
        return -EPIPE;
    if (!e->out)
        return -EPIPE; /* its client is gone */
    pc[0].p = s->fmt + (hist ? s->plen : 0);
    pc[0].n = hist ? s->hlen : s->plen;
    pc[1].p = m->data;
    pc[1].n = m->len;
    pc[2].p = s->fmt + s->plen + s->hlen;
    pc[2].n = s->slen;
    rc = bus_outbuf_append(&e->out->ob, pc, 3, s->gated, BUS_OUT_FIT);
    if (rc == -ENOBUFS) {
        e->drops++;
        b->counted.drops++;
        b->counted.out_dropped++;
        b->counted.dropped_by_kind[kind_index(m->kind)]++;
        /* Behind the gate it is counted (skipped) and the gate's note tells
         * the client how many: no silent gap, so no reason to cut it off
         * (a join in a busy room; chat counted them itself before). */
        if (b->cfg.full_policy == BUS_FULL_KICK && !s->gated) {
            b->counted.kicked_full++;
            doom(e, "its client's output buffer is full (the client does not read it)", 0);
        }
        return rc;
    }
    if (rc < 0)
        return rc;
    e->frames_out++;
    b->counted.frames_out++;
    b->counted.out_by_kind[kind_index(m->kind)]++;
    if (m->kind != SF_MSG_TOPIC)
        b->urgent = 1; /* only publishes are gathered */
    out_added(e);
    return 0;
}

/* A notice of the bus's own about an output subscription's topic, in its
 * place among the topic's messages: notice prefix + text + suffix, past
 * the limit if need be (it is short, and a gap is not to be silent), but
 * not once the buffer is past it already: a client that reads nothing
 * would have its notices pile up without bound (dropped and counted). */
static void out_notice(bus_sub *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_notice(bus_sub *s, const char *fmt, ...)
{
    char text[256];
    va_list ap;
    int n;
    bus_piece pc[3];

    va_start(ap, fmt);
    n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    pc[0].p = s->fmt + s->plen + s->hlen + s->slen;
    pc[0].n = s->nlen;
    pc[1].p = text;
    pc[1].n = (size_t)n < sizeof text ? (size_t)n : sizeof text - 1;
    pc[2].p = s->fmt + s->plen + s->hlen;
    pc[2].n = s->slen;
    if (bus_outbuf_append(&s->ep->out->ob, pc, 3, s->gated, BUS_OUT_NOTE) == 0) {
        s->ep->owner->urgent = 1;
        out_added(s->ep);
    } else {
        s->ep->owner->counted.out_dropped++;
    }
}

/* A message for a subscriber: to its client if it subscribed so (and
 * handed its output over), else on its channel. */
static int deliver_sub(bus_sub *s, encoded *x)
{
    if (s->fmt && s->ep->out_state != 0)
        return out_deliver(s, x->m);
    return push(s->ep, x);
}

/* CHAN_T_OUT_GATE: what waited behind the gate goes, in its place. */
static int out_gate(endpoint *e, const chan_frame *f)
{
    bus_out_gate r;

    if (bus_out_gate_decode(f->payload, f->len, &r) < 0)
        return -EPROTO;
    for (bus_sub *s = e->subs; s; s = s->enext)
        s->gated = 0;
    if (!e->out)
        return 0;
    (void)bus_outbuf_gate_open(&e->out->ob, r.before, r.before_len, r.one, r.one_len, r.more,
                               r.more_len);
    e->owner->urgent = 1;
    out_added(e);
    return 0;
}

/* The connection is over (the channel closed, or a worker's connection
 * ended): the output lingers until written or BUS_OUT_LINGER_S, with the
 * words for why (kick, shutdown) if the bus ends it. */
static void out_detach(endpoint *e)
{
    bus *b = e->owner;
    bus_out *o = e->out;
    bus_piece words = {NULL, 0};

    e->out_state = 0;
    if (!o)
        return;
    if (b->closing)
        words.p = o->down, words.n = o->down_len;
    else if (e->kicking)
        words.p = o->kick, words.n = o->kick_len;
    bus_outbuf_gate_drop(&o->ob);
    if (words.n)
        (void)bus_outbuf_append(&o->ob, &words, 1, 0, BUS_OUT_ALWAYS);
    e->out = NULL;
    b->nouts--;
    o->e = NULL;
    o->linger_until = os_mono_now() + BUS_OUT_LINGER_S;
    o->lnext = b->lingering;
    if (b->lingering)
        b->lingering->lprev = o;
    b->lingering = o;
    b->nlingering++;
    if (out_flush(o) < 0)
        return; /* written (or failed): closed */
    if (b->nlingering > BUS_OUT_LINGER_MAX) {
        bus_out *old = b->lingering;
        while (old->lnext)
            old = old->lnext;
        out_free(old);
    }
    out_timer_need(b);
}

/* bus_fini: each lingering output gets what is left of its time, waiting
 * for its socket (nothing else runs now: the server is exiting), then
 * closes. Bounded by BUS_OUT_LINGER_S. */
static void out_fini_all(bus *b)
{
    while (b->lingering) {
        bus_out *o = b->lingering;
        double left = o->linger_until - os_mono_now();
        struct pollfd p = {o->fd, POLLOUT, 0};

        if (left <= 0 || bus_outbuf_bytes(&o->ob) == 0) {
            out_free(o);
            continue;
        }
        if (poll(&p, 1, (int)(left * 1000) + 1) <= 0) {
            out_free(o);
            continue;
        }
        (void)out_flush(o);
    }
}

/* To the topic's subscribers but the sender, as a broadcast is: a chat
 * line is not echoed to its author. */
static unsigned publish(bus *b, bus_topic *t, const bus_msg *m, const endpoint *sender)
{
    encoded x = {m, {NULL, NULL}, {0, 0}, {0, 0}};
    unsigned n = 0;
    bus_sub *s, *next;

    for (s = t->subs; s; s = next) {
        next = s->tnext;
        if (s->ep != sender && deliver_sub(s, &x) == 0)
            n++;
    }
    encoded_fini(&x);
    (void)b;
    return n;
}

/* A message as the bus routes it (the rest zero: ok, and no subject). */
static bus_msg msg_of(int kind, pid_t from, const char *topic, size_t topic_len,
                      const unsigned char *data, size_t len)
{
    bus_msg m;

    memset(&m, 0, sizeof m);
    m.kind = kind;
    m.from = from;
    m.topic = topic;
    m.topic_len = topic_len;
    m.data = data;
    m.len = len;
    return m;
}

/* An error message back to a child: `code` (an errno value) in the
 * message's ok byte, the reason as its topic, and what it concerns (a pid,
 * a name, a topic) as its data, so a handler can act on it. */
static void send_error(endpoint *e, int code, const char *subject, size_t subject_len,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void send_error(endpoint *e, int code, const char *subject, size_t subject_len,
                       const char *fmt, ...)
{
    char text[256];
    va_list ap;
    bus_msg m;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    m = msg_of(SF_MSG_ERROR, 0, text,
               n < 0 ? 0 : (size_t)n >= sizeof text ? sizeof text - 1 : (size_t)n,
               (const unsigned char *)subject, subject_len);
    m.ok = code;
    (void)bus_deliver(e, &m);
}

/* ------------------------------------------------------------- routing */

endpoint *bus_find_pid(bus *b, pid_t pid)
{
    endpoint *e = b->cfg.find ? b->cfg.find(b, pid, b->cfg.arg) : NULL;

    return e && endpoint_reachable(e) ? e : NULL;
}

void bus_get_stats(const bus *b, bus_stats *out)
{
    memset(out, 0, sizeof *out);
    out->counted = b->counted;
    out->endpoints = b->nendpoints;
    out->topics = b->ntopics;
    out->names = b->nnames;
    out->history_bytes = b->hist_bytes;
    out->congested = b->ncongested;
    out->held = b->nheld;
    out->out_clients = b->nouts;
    out->out_lingering = b->nlingering;
    for (const endpoint *e = b->all; e; e = e->next)
        if (e->out)
            out->out_bytes += bus_outbuf_bytes(&e->out->ob);
    for (const bus_out *o = b->lingering; o; o = o->lnext)
        out->out_bytes += bus_outbuf_bytes(&o->ob);
}

void bus_each_topic(const bus *b, bus_each_topic_cb cb, void *arg)
{
    for (unsigned i = 0; b->topics && i < TOPIC_BUCKETS; i++) {
        for (const bus_topic *t = b->topics[i]; t; t = t->next) {
            if (t->nsubs > 0)
                cb(arg, t->name, t->len, t->nsubs);
        }
    }
}

/* What m takes in e's queue (0 if it cannot be encoded: it is not sent). */
static size_t queued_size(const endpoint *e, const bus_msg *m)
{
    char *p;
    size_t n;

    if (!e->jsonl)
        return CHAN_HDR_LEN + 8 + m->topic_len + m->len;
    if (bus_encode_json(m, &p, &n) < 0)
        return 0;
    free(p);
    return n;
}

static void history_msg(bus_msg *m, const bus_topic *t, const hist_item *h)
{
    memset(m, 0, sizeof *m);
    m->kind = SF_MSG_HISTORY;
    m->from = h->from;
    m->topic = t->name;
    m->topic_len = t->len;
    m->data = h->data;
    m->len = h->len;
}

/* Replays the last `want` kept messages of t to e, oldest first: as many
 * of the newest as fit in e's queue below its high mark (a replay never
 * fills a queue, so it neither drops, kicks nor holds anyone), after an
 * error message that says how many earlier ones were skipped, if any. */
/* What m takes in s's subscriber's queue, or its client's buffer. */
static size_t sub_size(const bus_sub *s, const bus_msg *m)
{
    if (s->fmt && s->ep->out)
        return s->hlen + m->len + s->slen;
    return queued_size(s->ep, m);
}

static void replay(bus_sub *s, unsigned want)
{
    endpoint *e = s->ep;
    bus_topic *t = s->topic;
    size_t hw = high_water(e->owner), used = e->q.bytes, room, total = 0;
    unsigned skip = want >= t->nhist ? 0 : t->nhist - want, cut = 0, i = 0;
    hist_item *h, *first;
    bus_msg m;

    if (s->fmt && e->out) { /* into its client's buffer: that one's high mark */
        hw = e->out->ob.limit / 2;
        used = bus_outbuf_bytes(&e->out->ob);
    }
    room = used + 512 < hw ? hw - used - 512 : 0; /* 512: the notice */
    for (h = t->hist_head; h; h = h->next, i++) {
        if (i < skip)
            continue;
        history_msg(&m, t, h);
        total += sub_size(s, &m);
    }
    for (first = t->hist_head, i = 0; first && i < skip; first = first->next)
        i++;
    for (; first && total > room; first = first->next, cut++) {
        history_msg(&m, t, first);
        total -= sub_size(s, &m);
    }
    if (cut)
        send_error(e, ENOSPC, t->name, t->len, "history of %.*s cut: %u earlier messages skipped",
                   (int)t->len, t->name, cut);
    for (h = first; h && endpoint_is_open(e); h = h->next) {
        encoded x = {&m, {NULL, NULL}, {0, 0}, {0, 0}};
        history_msg(&m, t, h);
        (void)deliver_sub(s, &x);
        encoded_fini(&x);
    }
}

/* A subscription's output format (bus_out_sub; NULL: a plain one). Returns
 * 0 or -ENOMEM. */
static int sub_set_format(bus_sub *s, const bus_out_sub *f)
{
    unsigned char *fmt = NULL;

    if (f) {
        size_t n = f->prefix_len + f->hprefix_len + f->suffix_len + f->nprefix_len;
        if (!(fmt = malloc(n ? n : 1)))
            return -ENOMEM;
        if (f->nprefix_len)
            memcpy(fmt + n - f->nprefix_len, f->nprefix, f->nprefix_len);
        if (f->prefix_len)
            memcpy(fmt, f->prefix, f->prefix_len);
        if (f->hprefix_len)
            memcpy(fmt + f->prefix_len, f->hprefix, f->hprefix_len);
        if (f->suffix_len)
            memcpy(fmt + f->prefix_len + f->hprefix_len, f->suffix, f->suffix_len);
        s->plen = f->prefix_len;
        s->hlen = f->hprefix_len;
        s->slen = f->suffix_len;
        s->nlen = f->nprefix_len;
        s->gated = (f->flags & OUT_S_GATED) != 0;
    } else {
        s->plen = s->hlen = s->slen = s->nlen = 0;
        s->gated = 0;
    }
    free(s->fmt);
    s->fmt = fmt;
    return 0;
}

static void subscribe_as(endpoint *e, const bus_op *op, const bus_out_sub *f);

static void subscribe(endpoint *e, const bus_op *op)
{
    subscribe_as(e, op, NULL);
}

/* CHAN_T_SUBSCRIBE_OUT: a subscription whose messages go to the client. */
static int subscribe_out(endpoint *e, const chan_frame *f)
{
    bus_out_sub r;
    bus_op op;

    if (bus_out_sub_decode(f->payload, f->len, &r) < 0)
        return -EPROTO;
    memset(&op, 0, sizeof op);
    op.op = OP_SUBSCRIBE;
    op.name = r.topic;
    op.name_len = r.topic_len;
    op.history = r.history;
    e->owner->counted.in_by_op[OP_SUBSCRIBE]++;
    subscribe_as(e, &op, &r);
    return 0;
}

/* A subscription, plain (f NULL) or to the client (the format f): made,
 * or changed to f's format; then the history wanted is replayed. */
static void subscribe_as(endpoint *e, const bus_op *op, const bus_out_sub *f)
{
    bus *b = e->owner;
    bus_topic *t;
    bus_sub *s;

    for (s = e->subs; s; s = s->enext) {
        if (s->topic->len == op->name_len && memcmp(s->topic->name, op->name, op->name_len) == 0)
            break;
    }
    if (!s) {
        if (e->nsubs >= BUS_SUBS_PER_CHILD) {
            send_error(e, ENOSPC, op->name, op->name_len, "subscribe: at most %d topics per child",
                       BUS_SUBS_PER_CHILD);
            return;
        }
        if (!(t = topic_get(b, op->name, op->name_len, 1))) {
            send_error(e, ENOSPC, op->name, op->name_len, "subscribe: too many topics (at most %d)",
                       BUS_TOPICS_MAX);
            return;
        }
        if (!(s = calloc(1, sizeof *s))) {
            topic_maybe_free(b, t);
            send_error(e, ENOMEM, op->name, op->name_len, "subscribe: out of memory");
            return;
        }
        idle_remove(b, t);
        if (e->congested)
            t->ncongested++;
        s->topic = t;
        s->ep = e;
        s->tnext = t->subs;
        if (t->subs)
            t->subs->tprev = s;
        t->subs = s;
        t->nsubs++;
        s->enext = e->subs;
        e->subs = s;
        e->nsubs++;
        bridge_member(b, t, e->pid, 1);
    }
    if ((f || s->fmt) && sub_set_format(s, f) < 0) {
        send_error(e, ENOMEM, op->name, op->name_len, "subscribe: out of memory");
        return;
    }
    replay(s, op->history);
}

static void sub_free(bus *b, bus_sub *s)
{
    bus_topic *t = s->topic;

    bridge_member(b, t, s->ep->pid, 0);
    if (s->tprev)
        s->tprev->tnext = s->tnext;
    else
        t->subs = s->tnext;
    if (s->tnext)
        s->tnext->tprev = s->tprev;
    t->nsubs--;
    if (s->ep->congested) {
        t->ncongested--;
        b->wake = 1; /* a sender held for this topic may go now */
    }
    if (s->gated && s->ep->out) {
        /* What waits behind the gate is for the gated subscriptions: the
         * last one undone (a join given up), it goes. */
        int others = 0;
        for (bus_sub *x = s->ep->subs; x; x = x->enext)
            others |= x != s && x->gated;
        if (!others) {
            bus_outbuf_gate_drop(&s->ep->out->ob);
            flushed(s->ep, 0);
        }
    }
    free(s->fmt);
    free(s);
    topic_maybe_free(b, t);
}

static void unsubscribe(endpoint *e, const bus_op *op)
{
    for (bus_sub **p = &e->subs; *p; p = &(*p)->enext) {
        bus_sub *s = *p;
        if (s->topic->len == op->name_len && memcmp(s->topic->name, op->name, op->name_len) == 0) {
            *p = s->enext;
            e->nsubs--;
            sub_free(e->owner, s);
            return;
        }
    }
}

/* Publishes on a topic: to its subscribers but `except`, and into its
 * history. Returns 0, or -ENOSPC when the topic cannot be made (too many). */
static int topic_publish(bus *b, const char *name, size_t name_len, pid_t from,
                         const unsigned char *data, size_t len, const endpoint *except)
{
    bus_topic *t = topic_get(b, name, name_len, b->cfg.history > 0);
    bus_msg m;

    m = msg_of(SF_MSG_TOPIC, from, name, name_len, data, len);
    if (!t)
        return b->cfg.history > 0 ? -ENOSPC : 0; /* nobody subscribes, nothing is kept */
    (void)publish(b, t, &m, except);
    /* A delivery may have disconnected a subscriber (the kick policy), and
     * with it freed a topic that had nothing else: look it up again. */
    if (!(t = topic_get(b, name, name_len, b->cfg.history > 0)))
        return 0;
    if (b->cfg.history > 0)
        history_add(b, t, from, data, len);
    topic_maybe_free(b, t);
    return 0;
}

static void do_publish(endpoint *e, const bus_op *op)
{
    if (topic_publish(e->owner, op->name, op->name_len, e->pid, op->data, op->len, e) < 0)
        send_error(e, ENOSPC, op->name, op->name_len, "publish: too many topics (at most %d)",
                   BUS_TOPICS_MAX);
    else
        bridge_published(e->owner, op->name, op->name_len, e->pid, op->data, op->len);
}

/* A will: what the bus publishes for a child whose channel closes before
 * it cleared it (it crashed, was killed, was cut off). Empty topic: none. */
static void set_will(endpoint *e, const bus_op *op)
{
    free(e->will);
    e->will = NULL;
    e->will_topic_len = e->will_len = 0;
    if (op->name_len == 0) {
        bridge_will(e->owner, e);
        return;
    }
    if (!(e->will = malloc(op->name_len + op->len + 1))) {
        send_error(e, ENOMEM, op->name, op->name_len, "will: out of memory");
        bridge_will(e->owner, e);
        return;
    }
    memcpy(e->will, op->name, op->name_len);
    if (op->len)
        memcpy(e->will + op->name_len, op->data, op->len);
    e->will_topic_len = op->name_len;
    e->will_len = op->len;
    bridge_will(e->owner, e);
}

/* A listing being built for a child: text that grows as needed. */
typedef struct listing {
    char *text;
    size_t len, cap;
    int failed;
} listing;

/* Room for n more bytes at text + len, or NULL (and the listing failed). */
static char *listing_room(listing *l, size_t n)
{
    if (l->failed)
        return NULL;
    if (l->len + n > l->cap) {
        size_t cap = (l->cap ? l->cap * 2 : 256) + n;
        char *p = realloc(l->text, cap);
        if (!p) {
            l->failed = 1;
            return NULL;
        }
        l->text = p;
        l->cap = cap;
    }
    return l->text + l->len;
}

/* Sends a listing (or why there is none) to the child that asked. */
static void listing_send(endpoint *e, const bus_op *op, int kind, listing *l, const char *what)
{
    bus_msg m;

    m = msg_of(kind, 0, op->name, op->name_len, (const unsigned char *)l->text, l->len);
    if (l->failed)
        send_error(e, ENOMEM, op->name, op->name_len, "%s: out of memory", what);
    else if (bus_deliver(e, &m) == -EMSGSIZE)
        send_error(e, EMSGSIZE, op->name, op->name_len, "%s: too many to list", what);
    free(l->text);
}

/* The peer's subscribers of a topic, after the local ones. */
static void members_remote(bus *b, const bus_op *op, listing *l)
{
    char *text = NULL;
    size_t len = 0;
    char *p;

    if (l->failed)
        return;
    if (b->bridge->members(b->bridge_ctx, op->name, op->name_len, &text, &len) < 0)
        l->failed = 1;
    else if (len && (p = listing_room(l, len))) {
        memcpy(p, text, len);
        l->len += len;
    }
    free(text);
}

/* The subscribers of a topic, a line each: "PID NAME NAME...\n". */
static void members(endpoint *e, const bus_op *op)
{
    bus_topic *t = topic_get(e->owner, op->name, op->name_len, 0);
    listing l = {NULL, 0, 0, 0};

    for (bus_sub *s = t ? t->subs : NULL; s; s = s->tnext) {
        size_t need = 13; /* a pid, the newline, the NUL of snprintf */
        char *p;

        for (bus_name *n = s->ep->names; n; n = n->enext)
            need += n->len + 1;
        if (!(p = listing_room(&l, need)))
            break;
        l.len += (size_t)snprintf(p, need, "%d", (int)s->ep->pid);
        for (bus_name *n = s->ep->names; n; n = n->enext) {
            l.text[l.len++] = ' ';
            memcpy(l.text + l.len, n->name, n->len);
            l.len += n->len;
        }
        l.text[l.len++] = '\n';
    }
    if (e->owner->bridge)
        members_remote(e->owner, op, &l);
    listing_send(e, op, SF_MSG_MEMBERS, &l, "members");
}

typedef struct topics_remote_arg {
    bus *b;
    listing *l;
} topics_remote_arg;

/* A topic with subscribers on the peer: listed here unless it has local
 * ones too (then it was listed with both counts). */
static void topic_remote(const char *name, size_t len, unsigned n, void *arg)
{
    topics_remote_arg *a = arg;
    bus_topic *t = topic_get(a->b, name, len, 0);
    char *p;

    if ((t && t->nsubs) || !(p = listing_room(a->l, len + 16)))
        return;
    memcpy(p, name, len);
    a->l->len += len;
    a->l->len += (size_t)snprintf(p + len, 16, " %u\n", n);
}

/* The topics with subscribers whose names start with a prefix, a line
 * each: "TOPIC SUBSCRIBERS\n", in no particular order. */
static void topics(endpoint *e, const bus_op *op)
{
    bus *b = e->owner;
    listing l = {NULL, 0, 0, 0};

    for (unsigned i = 0; i < TOPIC_BUCKETS && !l.failed; i++) {
        for (bus_topic *t = b->topics[i]; t; t = t->next) {
            char *p;

            if (!t->nsubs || t->len < op->name_len ||
                (op->name_len && memcmp(t->name, op->name, op->name_len) != 0))
                continue; /* (no prefix: op->name may be NULL) */
            if (!(p = listing_room(&l, t->len + 16)))
                break;
            memcpy(p, t->name, t->len);
            l.len += t->len;
            l.len += (size_t)snprintf(p + t->len, 16, " %u\n", t->nsubs + (b->bridge ?
                                      b->bridge->topic_count(b->bridge_ctx, t->name, t->len) : 0));
        }
    }
    if (b->bridge) {
        topics_remote_arg a = {b, &l};
        b->bridge->each_topic(b->bridge_ctx, op->name, op->name_len, topic_remote, &a);
    }
    listing_send(e, op, SF_MSG_TOPICS, &l, "topics");
}

static void claim(endpoint *e, const bus_op *op)
{
    bus *b = e->owner;
    bus_name **slot = name_slot(b, op->name, op->name_len), *n;
    bus_msg m;

    memset(&m, 0, sizeof m);
    m.kind = SF_MSG_CLAIMED;
    m.topic = op->name;
    m.topic_len = op->name_len;
    if (*slot) {
        m.ok = (*slot)->holder == e;
    } else if (bridge_name_held(b, op->name, op->name_len)) {
        m.ok = 0; /* the peer's */
    } else if (e->nnames < BUS_NAMES_PER_CHILD && (n = calloc(1, sizeof *n + op->name_len + 1))) {
        memcpy(n->name, op->name, op->name_len);
        n->len = op->name_len;
        n->holder = e;
        *slot = n;
        n->enext = e->names;
        e->names = n;
        e->nnames++;
        b->nnames++;
        m.ok = 1;
        bridge_name(b, n, 1);
    }
    (void)bus_deliver(e, &m);
}

static void name_free(bus *b, bus_name *n)
{
    bus_name **slot = name_slot(b, n->name, n->len);

    bridge_name(b, n, 0);
    if (n->holder->congested)
        b->wake = 1; /* a sender held for this name may go now */
    *slot = n->next;
    b->nnames--;
    free(n);
}

static void release(endpoint *e, const bus_op *op)
{
    for (bus_name **p = &e->names; *p; p = &(*p)->enext) {
        bus_name *n = *p;
        if (n->len == op->name_len && memcmp(n->name, op->name, op->name_len) == 0) {
            *p = n->enext;
            e->nnames--;
            name_free(e->owner, n);
            return;
        }
    }
}

static void execute(endpoint *e, const bus_op *op)
{
    bus *b = e->owner;
    bus_msg m;
    endpoint *to;

    b->counted.in_by_op[kind_index(op->op)]++;
    memset(&m, 0, sizeof m);
    m.from = e->pid;
    m.data = op->data;
    m.len = op->len;
    switch (op->op) {
    case OP_SEND:
        to = bus_find_pid(b, op->to);
        if (!to || !endpoint_is_open(to)) {
            char pid[16];
            int n = snprintf(pid, sizeof pid, "%d", (int)op->to);
            send_error(e, ESRCH, pid, (size_t)n, "send: no child with pid %d", (int)op->to);
            return;
        }
        m.kind = SF_MSG_DIRECT;
        (void)bus_deliver(to, &m);
        return;
    case OP_SEND_NAME: {
        bus_name *n = *name_slot(b, op->name, op->name_len);
        if (!n && b->bridge &&
            b->bridge->send_name(b->bridge_ctx, op->name, op->name_len, e->pid, op->data, op->len) == 0)
            return; /* the peer's holder's */
        if (!n) {
            send_error(e, ESRCH, op->name, op->name_len, "send: nobody holds the name %.*s",
                       (int)op->name_len, op->name);
            return;
        }
        m.kind = SF_MSG_NAME;
        m.topic = op->name;
        m.topic_len = op->name_len;
        (void)bus_deliver(n->holder, &m);
        return;
    }
    case OP_BROADCAST:
        m.kind = SF_MSG_BROADCAST;
        (void)bus_broadcast(b, &m, e);
        return;
    case OP_PUBLISH:
        do_publish(e, op);
        return;
    case OP_SUBSCRIBE:
        subscribe(e, op);
        return;
    case OP_UNSUBSCRIBE:
        unsubscribe(e, op);
        return;
    case OP_CLAIM:
        claim(e, op);
        return;
    case OP_RELEASE:
        release(e, op);
        return;
    case OP_WILL:
        set_will(e, op);
        return;
    case OP_MEMBERS:
        members(e, op);
        return;
    case OP_TOPICS:
        topics(e, op);
        return;
    case OP_LOG: {
        char text[901];
        (void)bus_text_clean(text, sizeof text, op->data, op->len);
        sf_logev(b->cfg.log, SF_LOG_INFO, "said", (int)e->pid, NULL,
                 SF_FIELDS(SF_F_STR("text", text)), "pid %d says: %s", (int)e->pid, text);
        return;
    }
    case OP_STATUS:
        (void)bus_text_clean(e->status, sizeof e->status, op->data, op->len);
        return;
    }
}

/* ------------------------------------------------------------ the io */

static void kick(endpoint *e, const char *why, int bad)
{
    bus *b = e->owner;

    if (!endpoint_is_open(e))
        return;
    if (bad)
        b->counted.kicked_bad++;
    e->kicking = 1;
    sf_logev(b->cfg.log, SF_LOG_WARN, "channel_cut", (int)e->pid, NULL,
             SF_FIELDS(SF_F_STR("reason", why)), "pid %d: %s: closing its channel and ending it",
             (int)e->pid, why);
    /* The owner signals the child before its channel ends: a child that
     * sees the end of its channel with SIGTERM pending knows it was cut
     * off, not that the server is shutting down. */
    if (b->cfg.on_kick)
        b->cfg.on_kick(b, e, why, b->cfg.arg);
    endpoint_close(e);
}

/* ------------------------------------------------ a worker's connections */

/* What a connection leaves in the bus: its subscriptions, its names, its
 * will (published unless the whole bus is closing) and its status. */
static void drop_connection_state(endpoint *e)
{
    bus *b = e->owner;

    while (e->subs) {
        bus_sub *s = e->subs;
        e->subs = s->enext;
        sub_free(b, s);
    }
    e->nsubs = 0;
    while (e->names) {
        bus_name *n = e->names;
        e->names = n->enext;
        name_free(b, n);
    }
    e->nnames = 0;
    if (e->will && !b->closing) {
        (void)topic_publish(b, e->will, e->will_topic_len, e->pid,
                            (const unsigned char *)e->will + e->will_topic_len, e->will_len, NULL);
        if (b->bridge)
            b->bridge->will_published(b->bridge_ctx, e->pid);
    }
    /* Not published (the bus is closing): the peer keeps it, and
     * publishes it itself when the bridge goes (bus.h). */
    free(e->will);
    e->will = NULL;
    e->status[0] = '\0';
}

/* A frame about the worker's connections, in the order it sent it: what
 * it asked before is done, what it asks after is the next connection's. */
static int session_frame(endpoint *e)
{
    const chan_frame *f = &e->pend_f;

    /* A begin or a drop inside a connection, or an end outside one. */
    if ((f->type != CHAN_T_CONN_END) == (e->in_session != 0))
        return -1;
    if (!e->owner->cfg.on_session)
        return -1;
    return e->owner->cfg.on_session(e->owner, e, f, e->owner->cfg.arg);
}

void endpoint_use_sessions(endpoint *e)
{
    e->sessions = 1;
    e->in_session = 0;
    /* Past the limit by BUS_CONTROL_ROOM, which push() keeps free. */
    e->q.limit = e->owner->cfg.queue_limit + BUS_CONTROL_ROOM;
}

void endpoint_session_begin(endpoint *e)
{
    e->in_session = 1;
}

int endpoint_session_end(endpoint *e)
{
    e->in_session = 0;
    drop_connection_state(e);
    out_detach(e); /* the worker's next client has its own */
    /* The worker drops what it reads before this mark: it was sent to the
     * connection that ended. */
    return endpoint_send_control(e, CHAN_T_CONN_ENDED, NULL, 0);
}

int endpoint_send_control(endpoint *e, uint16_t type, const void *payload, uint32_t len)
{
    int rc;

    if (!endpoint_is_open(e) || e->broken)
        return -EPIPE;
    rc = chan_queue_push(&e->q, type, payload, len, -1);
    if (rc < 0)
        return rc;
    e->owner->urgent = 1;
    attention(e);
    return 0;
}

/* An output offload request (CHAN_T_OUT_*, SUBSCRIBE_OUT): never held, as
 * it delivers to nobody but the child's own client. Returns 0, or -EPROTO
 * for a malformed one. */
static int out_request(endpoint *e, chan_frame *f)
{
    if (f->type != CHAN_T_SUBSCRIBE_OUT)
        e->owner->counted.in_by_op[0]++; /* that one counts as a subscribe */
    switch (f->type) {
    case CHAN_T_OUT_OPEN:
        return out_open(e, f);
    case CHAN_T_OUT_WRITE:
        return out_write(e, f);
    case CHAN_T_SUBSCRIBE_OUT:
        return subscribe_out(e, f);
    default:
        return out_gate(e, f);
    }
}

/* Carries out the request that waits (decoded last), unless it would
 * deliver to a congested recipient: then e is held with it. Returns 0, or
 * -1 when e was closed. */
static int run_pending(endpoint *e)
{
    const char *why = NULL;
    bus_op op;

    if (e->has_pend_f && e->sessions &&
        (e->pend_f.type == CHAN_T_CONN_BEGIN || e->pend_f.type == CHAN_T_CONN_END ||
         e->pend_f.type == CHAN_T_CONN_DROPPED)) {
        int rc = session_frame(e);
        pending_drop(e);
        if (rc < 0)
            kick(e, "a malformed connection frame", 1);
        return endpoint_is_open(e) ? 0 : -1;
    }
    if (e->has_pend_f && e->pend_f.fd >= 0 && e->pend_f.type != CHAN_T_OUT_OPEN) {
        /* Only OUT_OPEN takes a descriptor from a child: one with another
         * frame must not be kept open here. */
        pending_drop(e);
        kick(e, "a descriptor it should not have sent", 1);
        return -1;
    }
    if (e->has_pend_f && e->pend_f.type >= CHAN_T_OUT_OPEN && e->pend_f.type <= CHAN_T_OUT_GATE) {
        int rc = out_request(e, &e->pend_f);
        pending_drop(e);
        if (rc < 0)
            kick(e, "a malformed output request", 1);
        return endpoint_is_open(e) ? 0 : -1;
    }
    if (e->has_pend_f) {
        if (bus_op_from_frame(&e->pend_f, &op) < 0) {
            pending_drop(e);
            kick(e, "a malformed frame", 1);
            return -1;
        }
    } else if (e->pend_j) {
        if (bus_op_from_json(e->pend_j, &op, &why) < 0) {
            send_error(e, EINVAL, NULL, 0, "%s", why);
            pending_drop(e);
            return 0;
        }
    } else {
        return 0;
    }
    if (blocked(e, &op)) {
        hold(e);
        return 0;
    }
    execute(e, &op);
    pending_drop(e);
    return endpoint_is_open(e) ? 0 : -1;
}

/* Keeps what was read after a held request, to be fed when it goes. */
static int stash(endpoint *e, const unsigned char *buf, size_t len)
{
    unsigned char *p;

    if (len == 0)
        return 0;
    if (!(p = malloc(len))) {
        kick(e, "out of memory for its held requests", 0);
        return -1;
    }
    memcpy(p, buf, len);
    e->stash = p;
    e->stash_len = len;
    return 0;
}

/* Feeds what was read. Returns 0, or -1 when e was closed. */
static int feed(endpoint *e, const unsigned char *buf, size_t len)
{
    while (len > 0 && endpoint_is_open(e)) {
        size_t used = 0;
        int rc;

        if (e->jsonl) {
            json_t *o = NULL;
            rc = jsonl_decoder_feed(&e->jdec, (const char *)buf, len, &used, &o);
            buf += used;
            len -= used;
            if (rc == 0)
                return 0;
            if (rc == -EMSGSIZE) {
                kick(e, "a line over the channel's limit", 1);
                return -1;
            }
            if (rc < 0) {
                kick(e, "a line that is not a JSON object", 1);
                return -1;
            }
            e->pend_j = o;
        } else {
            rc = chan_decoder_feed(&e->fdec, buf, len, &used, &e->pend_f);
            buf += used;
            len -= used;
            if (rc == 0)
                return 0;
            if (rc < 0) {
                kick(e, rc == -EMSGSIZE ? "a frame over the channel's limit" : "a malformed frame", 1);
                return -1;
            }
            e->has_pend_f = 1;
        }
        e->frames_in++;
        e->owner->counted.frames_in++;
        if (run_pending(e) < 0)
            return -1;
        if (e->held)
            return stash(e, buf, len);
    }
    return endpoint_is_open(e) ? 0 : -1;
}

/* A held child's turn again: its waiting request, then what it had read
 * after it, then its channel. */
static void resume(endpoint *e)
{
    unsigned char *p = e->stash;
    size_t n = e->stash_len;
    int rc;

    held_unlink(e);
    e->retrying = 1;
    rc = run_pending(e);
    e->retrying = 0;
    if (rc < 0 || e->held)
        return;
    e->stash = NULL;
    e->stash_len = 0;
    if (n > 0) {
        rc = feed(e, p, n);
        free(p);
        if (rc < 0 || e->held)
            return;
    }
    if (endpoint_is_open(e))
        ev_io_start(e->owner->loop, &e->rd);
}

static void wake_held(bus *b)
{
    b->wake = 0;
    /* Each held child once, in the order they were held; one held again
     * goes to the end, after those still waiting. Bounded by the list's
     * length at entry: a resume may close others (taking them off), never
     * add one but the child it resumed. */
    for (unsigned n = b->nheld; n > 0 && !TAILQ_EMPTY(&b->held); n--)
        resume(TAILQ_FIRST(&b->held));
}

static int stray_fd(const endpoint *e)
{
    return endpoint_is_open(e) && !e->held && e->fdec.nfds > 0 &&
           (e->fdec.hdr_have == 0 || e->fdec.hdr_have == CHAN_HDR_LEN);
}

/* Reads and handles up to `budget` bytes of what the child sent. Returns 1
 * when the socket has nothing more for now, 0 when the budget is spent,
 * -1 when the endpoint was closed (EOF, or the child was cut off). A read
 * that returns less than asked is taken to have emptied the socket, unless
 * to_eof: the watcher is level-triggered and calls again if it had not,
 * and the read that would say EAGAIN would cost a system call before the
 * answers go out (a round trip's latency). */
static int read_some(endpoint *e, size_t budget, int to_eof)
{
    if (endpoint_waiting(e))
        return 1; /* nothing to read yet */
    while (budget > 0 && endpoint_is_open(e)) {
        if (e->held)
            return 1; /* its channel waits: resume() restarts it */
        size_t want = budget < BUS_READ_BUDGET ? budget : BUS_READ_BUDGET;
        ssize_t n = chan_read(e->fd, &e->fdec, e->owner->rbuf, want);

        if (n == -EAGAIN || n == -EWOULDBLOCK)
            return 1;
        if (n == 0 || n == -ECONNRESET) {
            endpoint_close(e); /* the child closed it, or exited */
            return -1;
        }
        if (n < 0) {
            kick(e, n == -EPROTO ? "a descriptor it should not have sent" : "its channel is broken", 1);
            return -1;
        }
        if (feed(e, e->owner->rbuf, (size_t)n) < 0)
            return -1;
        if (stray_fd(e)) {
            /* A descriptor rides on its frame's first byte, so it is taken
             * by the time that frame's header is read: one left over once
             * a header is complete (or none is begun) came without its
             * frame's flag, a protocol error, and must not be kept here. */
            kick(e, "a descriptor it should not have sent", 1);
            return -1;
        }
        budget -= (size_t)n;
        if (e->held)
            return 1;
        if ((size_t)n < want && !to_eof)
            return endpoint_is_open(e) ? 1 : -1;
    }
    return endpoint_is_open(e) ? 0 : -1;
}


static void rd_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    (void)read_some(w->data, BUS_READ_BUDGET, 0);
}

void endpoint_drain(endpoint *e)
{
    /* The child has exited: all it wrote is in the socket already, at most
     * what its send buffer held. Its last words (a goodbye, a cleared will)
     * are handled before its will would be published, held or not. */
    e->draining = 1;
    if (e->held)
        resume(e);
    while (read_some(e, BUS_READ_BUDGET, 1) == 0)
        ;
}

void endpoint_read_now(endpoint *e)
{
    /* Bounded: a few budgets, then what is left stays unread. */
    for (int i = 0; i < 4 && endpoint_is_open(e) && !e->held; i++)
        if (read_some(e, BUS_READ_BUDGET, 0) != 0)
            return;
}

static void wr_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    endpoint *e = w->data;
    size_t before = e->q.bytes;
    int rc = chan_queue_flush(&e->q, e->fd);
    (void)revents;

    flushed(e, before);
    if (rc == 1)
        ev_io_stop(loop, w);
    else if (rc < 0)
        stop_writing(e);
}

int endpoint_open(bus *b, endpoint *e, int fd, pid_t pid, int jsonl, void *data)
{
    int rc;

    memset(e, 0, sizeof *e);
    e->fd = -1;
    if (b->closing) {
        if (fd >= 0)
            close(fd); /* shutdown: the child sees its channel end at once */
        return -ESHUTDOWN;
    }
    e->owner = b;
    e->pid = pid;
    e->jsonl = jsonl;
    e->data = data;
    e->pend_f.fd = -1;
    chan_decoder_init(&e->fdec, b->cfg.chan_max);
    if (jsonl && (rc = jsonl_decoder_init(&e->jdec, b->cfg.chan_max)) < 0) {
        chan_decoder_fini(&e->fdec);
        if (fd >= 0)
            close(fd);
        return rc;
    }
    chan_queue_init(&e->q, b->cfg.queue_limit);
    e->fd = fd;
    ev_io_init(&e->rd, rd_cb, fd, EV_READ);
    ev_io_init(&e->wr, wr_cb, fd, EV_WRITE);
    e->rd.data = e->wr.data = e;
    if (fd >= 0)
        ev_io_start(b->loop, &e->rd);
    e->next = b->all;
    if (b->all)
        b->all->prev = e;
    b->all = e;
    b->nendpoints++;
    return 0;
}

int endpoint_attach(endpoint *e, int fd)
{
    if (!endpoint_waiting(e)) {
        close(fd);
        return -EBADF;
    }
    e->fd = fd;
    ev_io_set(&e->rd, fd, EV_READ);
    ev_io_set(&e->wr, fd, EV_WRITE);
    ev_io_start(e->owner->loop, &e->rd);
    if (e->q.bytes > 0)
        attention(e); /* what was queued for it goes out */
    return 0;
}

void endpoint_close(endpoint *e)
{
    bus *b = e->owner;

    if (!endpoint_is_open(e))
        return;
    attention_remove(e);
    e->doom = NULL;
    held_unlink(e);
    pending_drop(e);
    free(e->stash);
    e->stash = NULL;
    e->stash_len = 0;
    e->stuck = 0;
    set_congested(e, 0);
    ev_io_stop(b->loop, &e->rd);
    ev_io_stop(b->loop, &e->wr);
    out_detach(e);
    e->kicking = 0;
    if (e->fd >= 0)
        close(e->fd);
    e->fd = -1;
    chan_decoder_fini(&e->fdec);
    if (e->jsonl)
        jsonl_decoder_fini(&e->jdec);
    chan_queue_fini(&e->q);
    /* Its will, unless the whole bus is closing (shutdown: everyone goes). */
    drop_connection_state(e);
    if (e->prev)
        e->prev->next = e->next;
    else
        b->all = e->next;
    if (e->next)
        e->next->prev = e->prev;
    e->prev = e->next = NULL;
    b->nendpoints--;
}

void bus_close_all(bus *b)
{
    b->closing = 1;
    while (b->all)
        endpoint_close(b->all);
}

int bus_init(bus *b, struct ev_loop *loop, const bus_config *cfg)
{
    memset(b, 0, sizeof *b);
    b->gather_fd = -1;
    TAILQ_INIT(&b->idle);
    TAILQ_INIT(&b->hist);
    TAILQ_INIT(&b->held);
    b->loop = loop;
    b->cfg = *cfg;
    if (!b->cfg.chan_max)
        b->cfg.chan_max = CHAN_MAX_DEFAULT;
    if (!b->cfg.queue_limit)
        b->cfg.queue_limit = SF_CHAN_QUEUE_DEFAULT;
    if (!b->cfg.history_bytes)
        b->cfg.history_bytes = BUS_HISTORY_TOTAL;
    if (b->cfg.history_bytes < BUS_HISTORY_BYTES)
        b->cfg.history_bytes = BUS_HISTORY_BYTES;
    /* Supervisor bookkeeping, in memory forked processes (the spawner)
     * do not inherit: os/nofork.c says why. */
    b->topics = os_nofork_calloc(TOPIC_BUCKETS, sizeof *b->topics);
    b->names = os_nofork_calloc(NAME_BUCKETS, sizeof *b->names);
    b->rbuf = os_nofork_calloc(1, BUS_READ_BUDGET);
    ev_init(&b->out_timer, out_timer_cb);
    b->out_timer.repeat = BUS_OUT_TICK_S;
    b->out_timer.data = b;
    ev_init(&b->stall, stall_cb);
    b->stall.repeat = BUS_STALL_S / 4;
    b->stall.data = b;
    gather_init(b);
    ev_prepare_init(&b->prepare, prepare_cb);
    b->prepare.data = b;
    ev_prepare_start(loop, &b->prepare);
    ev_unref(loop); /* it must not keep the loop running by itself */
    if (!b->topics || !b->names || !b->rbuf) {
        bus_fini(b);
        return -ENOMEM;
    }
    return 0;
}

void bus_fini(bus *b)
{
    bus_close_all(b);
    out_fini_all(b);
    if (b->loop && ev_is_active(&b->out_timer)) {
        ev_ref(b->loop);
        ev_timer_stop(b->loop, &b->out_timer);
    }
    b->bridge = NULL; /* a link closed after this finds nothing to tell */
    if (b->loop && ev_is_active(&b->stall)) {
        ev_ref(b->loop);
        ev_timer_stop(b->loop, &b->stall);
    }
    if (b->loop && ev_is_active(&b->prepare)) {
        ev_ref(b->loop);
        ev_prepare_stop(b->loop, &b->prepare);
    }
    if (b->loop)
        gather_fini(b);
    if (b->topics) {
        for (unsigned i = 0; i < TOPIC_BUCKETS; i++) {
            while (b->topics[i]) {
                bus_topic *t = b->topics[i];
                while (t->hist_head)
                    topic_drop_oldest(b, t);
                b->topics[i] = t->next;
                free(t);
            }
        }
    }
    os_nofork_free(b->topics);
    os_nofork_free(b->names);
    os_nofork_free(b->rbuf);
    b->topics = NULL;
    b->names = NULL;
    b->rbuf = NULL;
}

/* ------------------------------------------------------------ bridge */

void bus_set_bridge(bus *b, const bus_bridge_ops *ops, void *ctx)
{
    b->bridge = ops;
    b->bridge_ctx = ctx;
    if (!ops)
        return;
    for (endpoint *e = b->all; e; e = e->next) {
        for (bus_name *n = e->names; n; n = n->enext)
            bridge_name(b, n, 1);
        for (bus_sub *x = e->subs; x; x = x->enext)
            bridge_member(b, x->topic, e->pid, 1);
        if (e->will)
            bridge_will(b, e);
    }
}

int bus_inject_publish(bus *b, const char *topic, size_t topic_len, pid_t from,
                       const unsigned char *data, size_t len)
{
    if (!b->topics)
        return -ESHUTDOWN; /* after bus_fini */
    b->injected++;
    return topic_publish(b, topic, topic_len, from, data, len, NULL);
}

unsigned bus_inject_broadcast(bus *b, pid_t from, const unsigned char *data, size_t len)
{
    bus_msg m;

    m = msg_of(SF_MSG_BROADCAST, from, NULL, 0, data, len);
    return broadcast_local(b, &m, NULL);
}

int bus_inject_send_name(bus *b, const char *name, size_t name_len, pid_t from,
                         const unsigned char *data, size_t len)
{
    bus_name *n = *name_slot(b, name, name_len);
    bus_msg m;

    if (!n)
        return -ESRCH;
    m = msg_of(SF_MSG_NAME, from, name, name_len, data, len);
    return bus_deliver(n->holder, &m);
}

unsigned bus_inject_gap(bus *b, const char *topic, size_t topic_len, uint64_t missed)
{
    bus_topic *t;
    unsigned n = 0;

    if (!b->topics || !(t = topic_get(b, topic, topic_len, 0)))
        return 0;
    for (bus_sub *s = t->subs; s; s = s->tnext) {
        endpoint *e = s->ep;

        if (!endpoint_reachable(e) || e->doom)
            continue;
        n++;
        if (b->cfg.full_policy == BUS_FULL_KICK) {
            b->counted.kicked_full++;
            doom(e, "messages of its topic were missed on the way (bus bridge)", 0);
        } else if (s->fmt && e->out) {
            out_notice(s, "%llu messages of %.*s missed", (unsigned long long)missed,
                       (int)topic_len, topic);
        } else {
            send_error(e, ENOSPC, topic, topic_len, "%llu messages of %.*s missed",
                       (unsigned long long)missed, (int)topic_len, topic);
        }
    }
    return n;
}

int bus_inject_error(bus *b, pid_t to, int code, const char *subject, size_t subject_len,
                     const char *text)
{
    endpoint *e = bus_find_pid(b, to);

    if (!e)
        return -ESRCH;
    send_error(e, code, subject, subject_len, "%s", text);
    return 0;
}

pid_t bus_name_holder(bus *b, const char *name, size_t len)
{
    bus_name *n = *name_slot(b, name, len);

    return n ? n->holder->pid : 0;
}

int bus_revoke_name(bus *b, const char *name, size_t len, const char *why)
{
    bus_name *n = *name_slot(b, name, len);
    endpoint *e;

    if (!n)
        return -ENOENT;
    e = n->holder;
    for (bus_name **p = &e->names; *p; p = &(*p)->enext) {
        if (*p == n) {
            *p = n->enext;
            break;
        }
    }
    e->nnames--;
    name_free(b, n); /* the bridge hears of it */
    send_error(e, EEXIST, name, len, "claim: %.*s taken back: %s", (int)len, name, why);
    return 0;
}

/* A message older than every one kept: first in t's history and in the
 * bus's (the first to go), within the same bounds. */
static void history_add_oldest(bus *b, bus_topic *t, pid_t from, const unsigned char *data,
                               size_t len)
{
    hist_item *h;

    if (hist_cost(len) > BUS_HISTORY_BYTES || !(h = malloc(sizeof *h + len)))
        return;
    h->topic = t;
    h->from = from;
    h->len = len;
    if (len)
        memcpy(h->data, data, len);
    h->next = t->hist_head;
    t->hist_head = h;
    if (!t->hist_tail)
        t->hist_tail = h;
    t->nhist++;
    t->hist_bytes += hist_cost(len);
    TAILQ_INSERT_HEAD(&b->hist, h, glink);
    b->hist_bytes += hist_cost(len);
    history_trim(b, t);
}

void bus_inject_history(bus *b, const char *topic, size_t topic_len, pid_t from,
                        const unsigned char *data, size_t len)
{
    bus_topic *t;

    if (!b->topics || b->cfg.history == 0 || !(t = topic_get(b, topic, topic_len, 1)))
        return;
    history_add_oldest(b, t, from, data, len);
    topic_maybe_free(b, t);
}

void bus_history_export(bus *b, size_t budget, size_t overhead, bus_history_cb cb, void *arg)
{
    hist_item *h;

    TAILQ_FOREACH_REVERSE(h, &b->hist, hist_list, glink) {
        size_t cost = overhead + h->topic->len + h->len;
        if (cost > budget)
            return;
        budget -= cost;
        cb(h->topic->name, h->topic->len, h->from, h->data, h->len, arg);
    }
}
