/*
 * commands.c - what the control socket can ask of a server: list, kick,
 * stats. Each answer is one JSON object (docs/protocol.md).
 */
#include "server/server_internal.h"
#include "server/metrics.h"
#include "supervisor/bus_codec.h"
#include "supervisor/bus_redis.h"
#include "os/os.h"

#include <errno.h>
#include <linux/sockios.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Byte counts of live TCP connections, filled from one kernel dump per
 * listener (os_tcpdiag), matched to records by the whole tuple. */
typedef struct list_ctx {
    sf_server *s;
    uint64_t *bytes; /* 2 per record: in, out; UINT64_MAX unknown */
} list_ctx;

static void list_bytes_one(void *arg, const sf_addr *local, const sf_addr *peer,
                           const os_tcp_stats *st)
{
    list_ctx *lc = arg;
    hmap_key k = server_tuple_key(peer, local);
    uint32_t *slot = hmap_get(&lc->s->by_tuple, &k);

    if (slot) {
        lc->bytes[2 * *slot] = st->bytes_in;
        lc->bytes[2 * *slot + 1] = st->bytes_out;
    }
}

/* On an error the counts not read stay unknown (null): `list` still
 * answers. */
static void collect_bytes(sf_server *s, uint64_t *bytes)
{
    list_ctx lc = {s, bytes};

    if (s->prefork)
        workers_index_tuples(s);
    (void)server_tcp_dump(s, list_bytes_one, &lc);
}

static json_t *json_bytes(uint64_t v)
{
    return v == UINT64_MAX ? json_null() : json_integer((json_int_t)v);
}

/* A prefork worker: its state and count; peer, since and bytes are its
 * current connection's (null while it is idle), from its slot. */
static json_t *worker_entry(sf_server *s, const conn_rec *r, const uint64_t *bytes)
{
    worker_slot sl;
    char peer[SF_ADDR_TEXT_MAX];
    int busy;

    busy = workers_slot(r, &sl) == 0 && sl.busy;
    if (!busy || sf_addr_format(&sl.peer, peer, sizeof peer) < 0)
        strcpy(peer, "?");
    return json_pack("{s:i, s:b, s:s, s:o, s:o, s:f, s:I, s:o, s:o, s:s, s:I, s:I}", "pid",
                     (int)r->pid, "worker", 1, "state", worker_state_name(s, r), "peer",
                     busy ? json_string(peer) : json_null(), "since",
                     busy ? json_real(sl.started) : json_null(), "started", r->born, "served",
                     (json_int_t)sl.ended, "bytes_in",
                     json_bytes(busy && r->tuple_set ? bytes[0] : UINT64_MAX), "bytes_out",
                     json_bytes(busy && r->tuple_set ? bytes[1] : UINT64_MAX), "status",
                     r->ep.status, "queued", (json_int_t)r->ep.q.bytes, "dropped",
                     (json_int_t)r->ep.drops);
}

static json_t *cmd_list(sf_server *s)
{
    json_t *children = json_array(), *reply;
    uint64_t *bytes = calloc(2 * (size_t)(s->recs_touched ? s->recs_touched : 1), sizeof *bytes);

    if (!children || !bytes) {
        json_decref(children);
        free(bytes);
        return NULL;
    }
    for (unsigned i = 0; i < 2 * s->recs_touched; i++)
        bytes[i] = UINT64_MAX;
    collect_bytes(s, bytes);
    for (unsigned i = 0; i < s->recs_touched; i++) {
        conn_rec *r = &s->recs[i];
        char peer[SF_ADDR_TEXT_MAX];
        const char *state;

        if (r->pid <= 0)
            continue;
        if (r->worker) {
            json_array_append_new(children, worker_entry(s, r, bytes + 2 * i));
            continue;
        }
        if (sf_addr_format(&r->peer, peer, sizeof peer) < 0)
            strcpy(peer, "?");
        state = sup_is_terminating(&s->sup, r->pid) ? "terminating" : "running";
        json_array_append_new(children,
                              json_pack("{s:i, s:s, s:s, s:f, s:o, s:o, s:s, s:I, s:I}", "pid",
                                        (int)r->pid, "peer", peer, "state", state, "since",
                                        r->started, "bytes_in", json_bytes(bytes[2 * i]),
                                        "bytes_out", json_bytes(bytes[2 * i + 1]), "status",
                                        r->ep.status, "queued", (json_int_t)r->ep.q.bytes,
                                        "dropped", (json_int_t)r->ep.drops));
    }
    free(bytes);
    reply = json_pack("{s:b, s:s, s:o}", "ok", 1, "mode", s->prefork ? "prefork" : "fork",
                      "children", children);
    /* Upgraded: the connections of the generation before us are its own,
     * listed there (nothing silently vanishes from the list). */
    if (reply && upgrade_put_generations(s, reply) < 0) {
        json_decref(reply);
        return NULL;
    }
    return reply;
}

static conn_rec *find_child(sf_server *s, json_int_t pid)
{
    if (pid <= 0 || pid > INT32_MAX)
        return NULL;
    return sup_child_data(&s->sup, (pid_t)pid);
}

/* What ctl sends is text: the "text" member, a string. */
static int get_text(json_t *req, const char **text, size_t *len)
{
    json_t *t = json_object_get(req, "text");
    if (!json_is_string(t))
        return -1;
    *text = json_string_value(t);
    *len = json_string_length(t);
    return 0;
}

/* Whether, at this moment, the child has left part of what was sent to it
 * unread: bytes still in the supervisor's queue for it, or in the socket
 * (SIOCOUTQ on our end of an AF_UNIX stream counts what the peer has not
 * consumed yet; the kernel counts buffers, not payload, so it says only
 * whether, not how much). A snapshot, and said as one: a child that reads
 * its channel may just not have got to the last message yet, and only one
 * that never reads shows it every time (from the second message on). */
static int has_unread(const endpoint *e)
{
    int n = 0;

    if (e->q.bytes > 0)
        return 1;
    return e->fd >= 0 && ioctl(e->fd, SIOCOUTQ, &n) == 0 && n > 0;
}

static json_t *cmd_send(sf_server *s, json_t *req)
{
    json_t *pid = json_object_get(req, "pid");
    bus_msg m;
    conn_rec *r;
    int rc, unread;

    memset(&m, 0, sizeof m);
    if (!json_is_integer(pid) || get_text(req, (const char **)&m.data, &m.len) < 0)
        return ctl_error("send needs an integer \"pid\" and a string \"text\"");
    r = find_child(s, json_integer_value(pid));
    if (!r)
        return ctl_error("no child with pid %lld", (long long)json_integer_value(pid));
    if (r->worker && !endpoint_reachable(&r->ep))
        return ctl_error("pid %d is a worker between connections, or its connection has not "
                         "opened its channel: nobody would read it", (int)r->pid);
    m.kind = SF_MSG_DIRECT;
    unread = has_unread(&r->ep);
    rc = bus_deliver(&r->ep, &m);
    if (rc == -ENOBUFS)
        return ctl_error("pid %d does not read its channel: its queue is full, message dropped",
                         (int)r->pid);
    if (rc < 0)
        return ctl_error("pid %d: %s", (int)r->pid,
                         rc == -EPIPE      ? "its channel is closed"
                         : rc == -EMSGSIZE ? "text longer than the channel's maximum (--channel-max)"
                                           : strerror(-rc));
    return json_pack("{s:b, s:i, s:b}", "ok", 1, "pid", (int)r->pid, "unread_before", unread);
}

static uint64_t bus_drops(const bus *b)
{
    bus_stats bs;

    bus_get_stats(b, &bs);
    return bs.counted.drops;
}

static json_t *cmd_broadcast(sf_server *s, json_t *req)
{
    bus_msg m;
    uint64_t drops = bus_drops(&s->bus);
    unsigned n;

    memset(&m, 0, sizeof m);
    if (get_text(req, (const char **)&m.data, &m.len) < 0)
        return ctl_error("broadcast needs a string \"text\"");
    m.kind = SF_MSG_BROADCAST;
    n = bus_broadcast(&s->bus, &m, NULL);
    return json_pack("{s:b, s:i, s:I}", "ok", 1, "delivered", (int)n, "dropped",
                     (json_int_t)(bus_drops(&s->bus) - drops));
}

static json_t *cmd_kick(sf_server *s, json_t *req)
{
    json_t *pid = json_object_get(req, "pid");
    conn_rec *r;
    char peer[SF_ADDR_TEXT_MAX];

    if (!json_is_integer(pid))
        return ctl_error("kick needs an integer \"pid\"");
    r = find_child(s, json_integer_value(pid));
    if (!r)
        return ctl_error("no child with pid %lld", (long long)json_integer_value(pid));
    /* A kick ends a connection: an idle worker has none (its peer is an
     * earlier connection's), and ending it would only cost a fork. */
    if (r->worker) {
        worker_slot sl;
        if (workers_slot(r, &sl) < 0 || !sl.busy)
            return ctl_error("pid %d is a worker between connections: no connection to end",
                             (int)r->pid);
        r->peer = sl.peer; /* the worker wrote the listener's path for a Unix peer */
    }
    if (sf_addr_format(&r->peer, peer, sizeof peer) < 0)
        strcpy(peer, "?");
    sf_logev(&s->log, SF_LOG_NOTICE, "kicked", (int)r->pid, peer, NULL, 0,
             "[%s] kicked through the control socket: pid=%d", peer, (int)r->pid);
    s->stats.kicked++;
    server_end_child(s, r, WORKER_END_KICKED);
    return json_pack("{s:b, s:i}", "ok", 1, "pid", (int)r->pid);
}

/* The addresses the server listens on, as sf_addr_format writes them. */
static json_t *listener_names(sf_server *s)
{
    json_t *a = json_array();
    char name[SF_ADDR_TEXT_MAX];

    for (size_t i = 0; a && i < s->nlisteners; i++) {
        if (sf_addr_format(&s->listeners[i].addr, name, sizeof name) >= 0)
            json_array_append_new(a, json_string(name));
    }
    return a;
}

/* A count under its key, in the reply's order. */
typedef struct stat_count {
    const char *key;
    uint64_t n;
} stat_count;

static int put_counts(json_t *o, const stat_count *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (json_object_set_new(o, c[i].key, json_integer((json_int_t)c[i].n)) < 0)
            return -1;
    }
    return 0;
}

/* The connections: how many came and run, the limit, and what stopped or
 * ended the others. */
static int put_connections(json_t *o, const sf_server_stats *st, const sup_stats *ss,
                           uint64_t active)
{
    const stat_count c[] = {
        {"accepted", st->accepted},
        {"active", active},
        {"max_conns", ss->max_children}, /* sup_init was given opts.max_conns */
        {"refused_per_ip", st->refused_per_ip},
        {"denied", st->denied},
        {"proxy_refused", st->proxy_refused},
        {"proxy_bad", st->proxy_bad},
        {"proxy_timed_out", st->proxy_timed_out},
        {"limit_reached", st->limit_reached},
        {"idle_closed", st->idle_closed},
        {"conn_timed_out", st->conn_timed_out},
        {"kicked", st->kicked},
        {"fork_failures", st->fork_failures},
        {"accept_failures", st->accept_failures},
    };
    return put_counts(o, c, sizeof c / sizeof c[0]);
}

/* `exited`: children by exit code, the codes that occurred. */
static json_t *exits_by_code(const sf_server_stats *st)
{
    json_t *o = json_object();
    char key[32];

    for (int i = 0; o && i < 256; i++) {
        if (!st->exited[i])
            continue;
        snprintf(key, sizeof key, "%d", i);
        if (json_object_set_new(o, key, json_integer((json_int_t)st->exited[i])) < 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

/* `killed`: children by signal, named when it has a name ("64+": any
 * signal from 64 on). */
static json_t *kills_by_signal(const sf_server_stats *st)
{
    json_t *o = json_object();
    char key[32];

    for (int i = 1; o && i <= 64; i++) {
        const char *name = i < 64 ? sf_signal_name(i) : NULL;

        if (!st->killed[i])
            continue;
        if (!name)
            snprintf(key, sizeof key, i < 64 ? "%d" : "64+", i);
        if (json_object_set_new(o, name ? name : key, json_integer((json_int_t)st->killed[i])) < 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

/* `channel`: the bus's counters, and the spawner's restarts. */
static json_t *channel_counts(const bus_stats *bs, const sup_stats *ss)
{
    json_t *o = json_object();
    const stat_count c[] = {
        {"frames_in", bs->counted.frames_in},
        {"frames_out", bs->counted.frames_out},
        {"dropped", bs->counted.drops},
        {"kicked_full", bs->counted.kicked_full},
        {"kicked_bad", bs->counted.kicked_bad},
        {"spawner_restarts", ss->spawner_restarts},
    };

    if (o && put_counts(o, c, sizeof c / sizeof c[0]) < 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* `workers` (prefork): how many in each state, started, ended by reason,
 * and the connections each live one has served (the spread of accept). */
static json_t *worker_numbers(sf_server *s, const worker_counts *wc)
{
    const worker_pool *wp = &s->wp;
    const sf_server_stats *st = &s->stats;
    json_t *o = json_object(), *ended = json_object(), *served = json_object();
    char key[24];

    if (!o || !ended || !served)
        goto fail;
    for (int i = 1; i < WORKER_END_REASONS; i++)
        if (json_object_set_new(ended, worker_end_name(i),
                                json_integer((json_int_t)st->workers_ended[i])) < 0)
            goto fail;
    for (unsigned i = 0; i < s->recs_touched; i++) {
        const conn_rec *r = &s->recs[i];
        worker_slot sl;
        if (!r->worker || r->pid <= 0 || r->wstate != WORKER_UP)
            continue;
        (void)workers_slot(r, &sl);
        snprintf(key, sizeof key, "%d", (int)r->pid);
        if (json_object_set_new(served, key, json_integer((json_int_t)sl.ended)) < 0)
            goto fail;
    }
    /* set_new takes its value even when it fails: from here o owns all. */
    if (json_object_set_new(o, "ended", ended) < 0 ||
        json_object_set_new(o, "served", served) < 0 ||
        json_object_set_new(o, "min", json_integer(wp->min)) < 0 ||
        json_object_set_new(o, "max", json_integer(wp->max)) < 0 ||
        json_object_set_new(o, "idle", json_integer(wc->idle)) < 0 ||
        json_object_set_new(o, "busy", json_integer(wc->busy)) < 0 ||
        json_object_set_new(o, "starting", json_integer(wp->starting)) < 0 ||
        json_object_set_new(o, "retiring", json_integer(wp->retiring)) < 0 ||
        json_object_set_new(o, "started", json_integer((json_int_t)st->workers_started)) < 0) {
        json_decref(o);
        return NULL;
    }
    return o;
fail:
    json_decref(ended);
    json_decref(served);
    json_decref(o);
    return NULL;
}

/* `children` (fork mode): running, or told to end (SIGTERM sent, waiting
 * for its exit). */
static json_t *children_by_state(sf_server *s)
{
    unsigned running = 0, terminating = 0;

    for (unsigned i = 0; i < s->recs_touched; i++) {
        const conn_rec *r = &s->recs[i];
        if (r->pid <= 0 || r->worker)
            continue;
        if (sup_is_terminating(&s->sup, r->pid))
            terminating++;
        else
            running++;
    }
    return json_pack("{s:i, s:i}", "running", (int)running, "terminating", (int)terminating);
}

/* The names of the bus's kinds (bus_counters' *_by_*), as the JSON codec
 * spells them; index 0 and any unnamed one count as "other". */
static const char *const op_names[BUS_KINDS] = {
    [OP_SEND] = "send",           [OP_SEND_NAME] = "send_name", [OP_BROADCAST] = "broadcast",
    [OP_PUBLISH] = "publish",     [OP_SUBSCRIBE] = "subscribe", [OP_UNSUBSCRIBE] = "unsubscribe",
    [OP_CLAIM] = "claim",         [OP_RELEASE] = "release",     [OP_LOG] = "log",
    [OP_STATUS] = "status",       [OP_WILL] = "will",           [OP_MEMBERS] = "members",
    [OP_TOPICS] = "topics",
};
static const char *const msg_kind_names[BUS_KINDS] = {
    [SF_MSG_DIRECT] = "direct",   [SF_MSG_NAME] = "name",       [SF_MSG_BROADCAST] = "broadcast",
    [SF_MSG_TOPIC] = "topic",     [SF_MSG_HISTORY] = "history", [SF_MSG_CLAIMED] = "claimed",
    [SF_MSG_ERROR] = "error",     [SF_MSG_MEMBERS] = "members", [SF_MSG_TOPICS] = "topics",
};

/* Every named kind, zeros too (a rate needs the series from the start);
 * "other" when there is any. */
static json_t *counts_by_kind(const uint64_t *n, const char *const *names)
{
    json_t *o = json_object();
    uint64_t other = 0;

    for (unsigned i = 0; o && i < BUS_KINDS; i++) {
        if (!names[i]) {
            other += n[i];
            continue;
        }
        if (json_object_set_new(o, names[i], json_integer((json_int_t)n[i])) < 0)
            goto fail;
    }
    if (o && other && json_object_set_new(o, "other", json_integer((json_int_t)other)) < 0)
        goto fail;
    return o;
fail:
    json_decref(o);
    return NULL;
}

/* The most subscribed topics, most first, and every topic's subscribers
 * summed (bus_each_topic). */
typedef struct topic_top {
    struct {
        char name[BUS_NAME_MAX + 1];
        size_t len;
        unsigned subs;
    } top[METRICS_TOPICS_TOP];
    unsigned n;
    uint64_t subscriptions;
} topic_top;

static void topic_seen(void *arg, const char *name, size_t len, unsigned subs)
{
    topic_top *t = arg;
    unsigned at;

    t->subscriptions += subs;
    if (len > BUS_NAME_MAX)
        len = BUS_NAME_MAX;
    for (at = t->n; at > 0 && t->top[at - 1].subs < subs; at--)
        ;
    if (at == METRICS_TOPICS_TOP)
        return;
    if (t->n < METRICS_TOPICS_TOP)
        t->n++;
    memmove(&t->top[at + 1], &t->top[at], (t->n - 1 - at) * sizeof t->top[0]);
    memcpy(t->top[at].name, name, len);
    t->top[at].len = len;
    t->top[at].subs = subs;
}

/* `top_topics`: the most subscribed topics (chat: rooms) and their
 * subscribers. A topic's name is what a child sent: made valid UTF-8 for a
 * JSON key. */
static json_t *top_topics(const topic_top *t)
{
    json_t *top = json_object();
    char key[3 * BUS_NAME_MAX + 1];

    for (unsigned i = 0; top && i < t->n; i++) {
        bus_text_clean(key, sizeof key, (const unsigned char *)t->top[i].name, t->top[i].len);
        if (json_object_set_new(top, key, json_integer(t->top[i].subs)) < 0) {
            json_decref(top);
            return NULL;
        }
    }
    return top;
}

/* `bus`: what the channels hold now. */
static json_t *bus_numbers(sf_server *s, const bus_stats *bs, const topic_top *t)
{
    uint64_t queued = 0;

    for (const endpoint *e = s->bus.all; e; e = e->next)
        queued += e->q.bytes;
    return json_pack("{s:i, s:I, s:i, s:I, s:i, s:I}", "channels", (int)bs->endpoints,
                     "queued_bytes", (json_int_t)queued, "topics", (int)bs->topics,
                     "subscriptions", (json_int_t)t->subscriptions, "names", (int)bs->names,
                     "history_bytes", (json_int_t)bs->history_bytes);
}

/* `output`: output offload (only once a child handed its client over). */
static json_t *output_numbers(const bus_stats *bs)
{
    return json_pack("{s:i, s:i, s:I, s:I, s:I, s:I, s:I, s:I}", "clients", (int)bs->out_clients,
                     "lingering", (int)bs->out_lingering, "bytes", (json_int_t)bs->out_bytes,
                     "opened", (json_int_t)bs->counted.out_opened,
                     "written", (json_int_t)bs->counted.out_written,
                     "dropped", (json_int_t)bs->counted.out_dropped,
                     "reports", (json_int_t)bs->counted.out_reports,
                     "failed", (json_int_t)bs->counted.out_failed);
}

/* `bus_redis`: the bridge to the other instances (only with --bus). */
static json_t *bus_redis_numbers(sf_server *s)
{
    bus_redis_stats rs;

    bus_redis_get_stats(s->bus_redis, &rs);
    return json_pack("{s:i, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:i, s:f}",
                     "connected", rs.up, "instance", rs.id,
                     "reconnects", (json_int_t)rs.reconnects,
                     "entries_out", (json_int_t)rs.entries_out,
                     "entries_in", (json_int_t)rs.entries_in,
                     "duplicates", (json_int_t)rs.duplicates, "missed", (json_int_t)rs.missed,
                     "bad", (json_int_t)rs.bad, "outbox_dropped", (json_int_t)rs.outbox_dropped,
                     "stale", (json_int_t)rs.stale,
                     "cursor_resets", (json_int_t)rs.cursor_resets,
                     "outbox_bytes", (json_int_t)rs.outbox_bytes,
                     "outbox_max", (json_int_t)rs.outbox_max, "instances", (int)rs.peers,
                     "lag_s", rs.lag_ms / 1000.0);
}

/* Every number comes from one of four snapshots: the server's own
 * counters, the supervisor's (sup_get_stats), the bus's (bus_get_stats,
 * bus_each_topic) and the process's (metrics_process_numbers). `ctl
 * stats` answers with it, and /metrics renders it (metrics.c): one source
 * for both. */
json_t *server_stats(void *arg)
{
    sf_server *s = arg;
    sf_server_stats *st = &s->stats, pf;
    json_t *r = json_object();
    sup_stats ss;
    bus_stats bs;
    worker_counts wc;
    topic_top *tt = calloc(1, sizeof *tt);
    uint64_t active;

    if (!tt) {
        json_decref(r);
        return NULL;
    }
    sup_get_stats(&s->sup, &ss);
    bus_get_stats(&s->bus, &bs);
    bus_each_topic(&s->bus, topic_seen, tt);
    active = ss.children;
    if (s->prefork) {
        /* Prefork: what the workers' slots say. A handler's return of 0
         * is counted there only (CONN_END tells of the others). */
        workers_count(s, &wc);
        pf = *st;
        pf.accepted = wc.begun - wc.refused;
        pf.exited[0] += wc.ended - s->wp.failed;
        st = &pf;
        active = wc.busy_all;
    }
    /* json_object_set_new takes the value, and fails on a NULL one (out
     * of memory): the reply is then freed whole. */
    if (!r || json_object_set_new(r, "ok", json_true()) < 0 ||
        json_object_set_new(r, "pid", json_integer(getpid())) < 0 ||
        json_object_set_new(r, "listeners", listener_names(s)) < 0 ||
        put_connections(r, st, &ss, active) < 0 ||
        (s->prefork && json_object_set_new(r, "workers", worker_numbers(s, &wc)) < 0) ||
        json_object_set_new(r, "exited", exits_by_code(st)) < 0 ||
        json_object_set_new(r, "killed", kills_by_signal(st)) < 0 ||
        json_object_set_new(r, "channel", channel_counts(&bs, &ss)) < 0 ||
        json_object_set_new(r, "spawner_pid", json_integer(ss.spawner_pid)) < 0 ||
        (!s->prefork && json_object_set_new(r, "children", children_by_state(s)) < 0) ||
        json_object_set_new(r, "messages_in", counts_by_kind(bs.counted.in_by_op, op_names)) < 0 ||
        json_object_set_new(r, "messages_out",
                            counts_by_kind(bs.counted.out_by_kind, msg_kind_names)) < 0 ||
        json_object_set_new(r, "messages_dropped",
                            counts_by_kind(bs.counted.dropped_by_kind, msg_kind_names)) < 0 ||
        json_object_set_new(r, "bus", bus_numbers(s, &bs, tt)) < 0 ||
        (s->bus_redis && json_object_set_new(r, "bus_redis", bus_redis_numbers(s)) < 0) ||
        (bs.counted.out_opened && json_object_set_new(r, "output", output_numbers(&bs)) < 0) ||
        json_object_set_new(r, "top_topics", top_topics(tt)) < 0 ||
        json_object_set_new(r, "process", metrics_process_numbers()) < 0) {
        json_decref(r);
        r = NULL;
    }
    free(tt);
    return r;
}

/* As SIGHUP: re-read the files; the answer says what was done, or why
 * nothing changed. Logged as well, like a SIGHUP. */
static json_t *cmd_reload(sf_server *s)
{
    char what[512];
    int rc = server_reload(s, what, sizeof what);

    sf_logev(&s->log, rc < 0 ? SF_LOG_WARN : SF_LOG_NOTICE, "reload", 0, NULL,
             SF_FIELDS(SF_F_STR("by", "ctl"), SF_F_BOOL("ok", rc >= 0), SF_F_STR("what", what)),
             "ctl reload: %s: %s", rc < 0 ? "failed, nothing changed" : "done", what);
    if (rc < 0)
        return ctl_error("reload failed, nothing changed: %s", what);
    return json_pack("{s:b, s:s}", "ok", 1, "reloaded", what);
}

/* As SIGUSR2: starts the new generation; the answer is its outcome, given
 * when the new one is ready or has failed (upgrade.c). */
static json_t *cmd_upgrade(sf_server *s)
{
    char why[300];
    int rc = upgrade_begin(s, why, sizeof why);

    if (rc < 0) {
        sf_logev(&s->log, SF_LOG_WARN, "upgrade_refused", 0, NULL,
                 SF_FIELDS(SF_F_STR("why", why), SF_F_STR("from", "ctl")),
                 "ctl upgrade: no upgrade: %s", why);
        return ctl_error("no upgrade: %s", why);
    }
    return CTL_LATER; /* upgrade.c answers when it is ready, or has failed */
}

json_t *server_command(void *arg, const char *cmd, json_t *req)
{
    sf_server *s = arg;

    if (strcmp(cmd, "list") == 0)
        return cmd_list(s);
    if (strcmp(cmd, "kick") == 0)
        return cmd_kick(s, req);
    if (strcmp(cmd, "stats") == 0)
        return server_stats(s);
    if (strcmp(cmd, "send") == 0)
        return cmd_send(s, req);
    if (strcmp(cmd, "broadcast") == 0)
        return cmd_broadcast(s, req);
    if (strcmp(cmd, "reload") == 0)
        return cmd_reload(s);
    if (strcmp(cmd, "upgrade") == 0)
        return cmd_upgrade(s);
    if (strcmp(cmd, "upgrade_status") == 0)
        return upgrade_status_json(s);
    return ctl_error("unknown command \"%s\" (list, kick, stats, send, broadcast, reload, "
                     "upgrade, upgrade_status)", cmd);
}
