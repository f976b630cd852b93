/* metrics.c - see metrics.h. The renderer first, then the endpoint. */
#include "server/metrics.h"
#include "server/addr.h"
#include "server/server_internal.h"
#include "os/os.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* ------------------------------------------------------------- renderer */

static void buf_put(metrics_buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->max) {
        b->failed = -ENOSPC;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        char *p;
        while (cap < b->len + n + 1)
            cap *= 2;
        if (cap > b->max)
            cap = b->max;
        if (!(p = realloc(b->p, cap))) {
            b->failed = -ENOMEM;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_puts(metrics_buf *b, const char *s)
{
    buf_put(b, s, strlen(s));
}

static void buf_printf(metrics_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(metrics_buf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp) {
        b->failed = b->failed ? b->failed : -ENOSPC;
        return;
    }
    buf_put(b, tmp, (size_t)n);
}

void metrics_put_label_value(metrics_buf *out, const char *s, size_t len)
{
    size_t from = 0;

    for (size_t i = 0; i < len; i++) {
        const char *esc = s[i] == '\\' ? "\\\\" : s[i] == '"' ? "\\\"" : s[i] == '\n' ? "\\n" : NULL;
        if (!esc)
            continue;
        buf_put(out, s + from, i - from);
        buf_puts(out, esc);
        from = i + 1;
    }
    buf_put(out, s + from, len - from);
}

/* How a family's samples come from the snapshot. */
enum metric_how {
    M_ONE,     /* the number at path, no label */
    M_LABEL,   /* the number at path, with label="value" */
    M_BY_KEY,  /* the object at path: a sample per member, label=its key */
    M_INFO,    /* the string at path as label's value; the sample is 1 */
};

typedef struct metric_def {
    const char *name;
    const char *type;   /* "counter" or "gauge" */
    const char *help;
    int how;
    const char *path;   /* "key" or "object.key" in the stats object */
    const char *label;
    const char *value;  /* M_LABEL: the label's value */
} metric_def;

/* The families, in order; samples of one family are consecutive rows. The
 * keys are those of commands.c's server_stats (docs/protocol.md). */
static const metric_def server_defs[] = {
    {"sockfork_connections_accepted_total", "counter", "Connections handed to a child or worker.",
     M_ONE, "accepted", NULL, NULL},
    {"sockfork_connections_active", "gauge", "Connections being served now.", M_ONE, "active",
     NULL, NULL},
    {"sockfork_connections_max", "gauge", "Connections served at once at most (--max-conns).",
     M_ONE, "max_conns", NULL, NULL},
    {"sockfork_connections_refused_total", "counter",
     "Connections closed unserved, by reason.", M_LABEL, "refused_per_ip", "reason", "per_ip"},
    {"sockfork_connections_refused_total", NULL, NULL, M_LABEL, "denied", "reason", "denied"},
    {"sockfork_connections_refused_total", NULL, NULL, M_LABEL, "proxy_refused", "reason",
     "proxy_source"},
    {"sockfork_connections_refused_total", NULL, NULL, M_LABEL, "proxy_bad", "reason",
     "proxy_bad"},
    {"sockfork_connections_refused_total", NULL, NULL, M_LABEL, "proxy_timed_out", "reason",
     "proxy_timeout"},
    {"sockfork_connections_limit_reached_total", "counter",
     "Times accepting paused at the connection limit.", M_ONE, "limit_reached", NULL, NULL},
    {"sockfork_connections_ended_total", "counter",
     "Connections the server ended, by reason.", M_LABEL, "idle_closed", "reason", "idle"},
    {"sockfork_connections_ended_total", NULL, NULL, M_LABEL, "conn_timed_out", "reason",
     "timeout"},
    {"sockfork_connections_ended_total", NULL, NULL, M_LABEL, "kicked", "reason", "kicked"},
    {"sockfork_fork_failures_total", "counter", "Children or workers that could not be started.",
     M_ONE, "fork_failures", NULL, NULL},
    {"sockfork_accept_failures_total", "counter",
     "accept() failures for lack of descriptors or memory.", M_ONE, "accept_failures", NULL,
     NULL},
    {"sockfork_children", "gauge", "Children (fork mode) by state.", M_BY_KEY, "children",
     "state", NULL},
    {"sockfork_children_exited_total", "counter",
     "Children that exited, by exit code (prefork: handler return values).", M_BY_KEY,
     "exited", "code", NULL},
    {"sockfork_children_killed_total", "counter", "Children killed, by signal.", M_BY_KEY,
     "killed", "signal", NULL},
    {"sockfork_workers", "gauge", "Prefork workers by state.", M_LABEL, "workers.idle", "state",
     "idle"},
    {"sockfork_workers", NULL, NULL, M_LABEL, "workers.busy", "state", "busy"},
    {"sockfork_workers", NULL, NULL, M_LABEL, "workers.starting", "state", "starting"},
    {"sockfork_workers", NULL, NULL, M_LABEL, "workers.retiring", "state", "retiring"},
    {"sockfork_workers_min", "gauge", "Prefork workers kept running (--workers).", M_ONE,
     "workers.min", NULL, NULL},
    {"sockfork_workers_max", "gauge", "Prefork workers at most (--workers).", M_ONE,
     "workers.max", NULL, NULL},
    {"sockfork_workers_started_total", "counter", "Prefork workers started.", M_ONE,
     "workers.started", NULL, NULL},
    {"sockfork_workers_ended_total", "counter", "Prefork workers ended, by reason.", M_BY_KEY,
     "workers.ended", "reason", NULL},
    {"sockfork_bus_frames_read_total", "counter", "Frames or lines read from children's channels.",
     M_ONE, "channel.frames_in", NULL, NULL},
    {"sockfork_bus_messages_in_total", "counter", "Requests from children handled, by kind.",
     M_BY_KEY, "messages_in", "kind", NULL},
    {"sockfork_bus_messages_out_total", "counter", "Messages queued for children, by kind.",
     M_BY_KEY, "messages_out", "kind", NULL},
    {"sockfork_bus_messages_dropped_total", "counter",
     "Messages dropped at a full queue, by kind.", M_BY_KEY, "messages_dropped", "kind", NULL},
    {"sockfork_bus_disconnects_total", "counter", "Children cut off by the bus, by reason.",
     M_LABEL, "channel.kicked_full", "reason", "queue_full"},
    {"sockfork_bus_disconnects_total", NULL, NULL, M_LABEL, "channel.kicked_bad", "reason",
     "bad_input"},
    {"sockfork_spawner_restarts_total", "counter", "Times the spawner process was restarted.",
     M_ONE, "channel.spawner_restarts", NULL, NULL},
    {"sockfork_bus_channels", "gauge", "Children's channels open.", M_ONE, "bus.channels", NULL,
     NULL},
    {"sockfork_bus_queued_bytes", "gauge", "Bytes waiting in the channels' outbound queues.",
     M_ONE, "bus.queued_bytes", NULL, NULL},
    {"sockfork_bus_topics", "gauge", "Topics with subscribers or history (chat: rooms).", M_ONE,
     "bus.topics", NULL, NULL},
    {"sockfork_bus_subscriptions", "gauge", "Subscriptions to topics (chat: room members).",
     M_ONE, "bus.subscriptions", NULL, NULL},
    {"sockfork_bus_topic_subscribers", "gauge",
     "Subscribers of the most subscribed topics (at most 10).", M_BY_KEY, "top_topics",
     "topic", NULL},
    {"sockfork_bus_names", "gauge", "Names claimed on the bus.", M_ONE, "bus.names", NULL, NULL},
    {"sockfork_bus_history_bytes", "gauge", "Bytes the topics' history keeps.", M_ONE,
     "bus.history_bytes", NULL, NULL},
    {"sockfork_bus_redis_connected", "gauge",
     "The bus bridge to Redis is up (both connections, the others' state read): 1 or 0.", M_ONE,
     "bus_redis.connected", NULL, NULL},
    {"sockfork_bus_redis_reconnects_total", "counter", "Redis connections of the bridge lost.",
     M_ONE, "bus_redis.reconnects", NULL, NULL},
    {"sockfork_bus_redis_entries_total", "counter", "Stream entries written and read, by way.",
     M_LABEL, "bus_redis.entries_out", "way", "out"},
    {"sockfork_bus_redis_entries_total", NULL, NULL, M_LABEL, "bus_redis.entries_in", "way", "in"},
    {"sockfork_bus_redis_duplicates_total", "counter", "Entries read twice and dropped.", M_ONE,
     "bus_redis.duplicates", NULL, NULL},
    {"sockfork_bus_redis_missed_total", "counter",
     "Entries of other instances never read (trimmed, or dropped from a full outbox).", M_ONE,
     "bus_redis.missed", NULL, NULL},
    {"sockfork_bus_redis_outbox_bytes", "gauge", "Bytes waiting to be written to Redis.", M_ONE,
     "bus_redis.outbox_bytes", NULL, NULL},
    {"sockfork_bus_redis_outbox_dropped_total", "counter",
     "Writes that did not fit in the outbox.", M_ONE, "bus_redis.outbox_dropped", NULL, NULL},
    {"sockfork_bus_redis_instances", "gauge", "Other instances known.", M_ONE,
     "bus_redis.instances", NULL, NULL},
    {"sockfork_bus_redis_lag_seconds", "gauge",
     "The last entry read: from its write (its id's time) to its reading here.", M_ONE,
     "bus_redis.lag_s", NULL, NULL},
};

/* The task pool's families (`sockfork run --metrics`), from the object
 * pool_stats_json builds (src/pool/scrape.c): sf_pool_stats's names.
 * Its "failed" is the sum of the five failed_total reasons, and left out. */
static const metric_def pool_defs[] = {
    {"sockfork_tasks_submitted_total", "counter", "Tasks submitted to the pool.", M_ONE,
     "submitted", NULL, NULL},
    {"sockfork_tasks_started_total", "counter", "Attempts started, retries included.", M_ONE,
     "started", NULL, NULL},
    {"sockfork_tasks_retried_total", "counter", "Attempts beyond a task's first.", M_ONE,
     "retried", NULL, NULL},
    {"sockfork_tasks_succeeded_total", "counter", "Tasks whose last attempt succeeded.", M_ONE,
     "ok", NULL, NULL},
    {"sockfork_tasks_failed_total", "counter",
     "Tasks that failed, by how their last attempt ended.", M_LABEL, "failed_by_code", "reason",
     "exit_code"},
    {"sockfork_tasks_failed_total", NULL, NULL, M_LABEL, "killed_by_signal", "reason", "signal"},
    {"sockfork_tasks_failed_total", NULL, NULL, M_LABEL, "timed_out", "reason", "timeout"},
    {"sockfork_tasks_failed_total", NULL, NULL, M_LABEL, "output_limited", "reason",
     "output_limit"},
    {"sockfork_tasks_failed_total", NULL, NULL, M_LABEL, "spawn_errors", "reason", "spawn_error"},
    {"sockfork_tasks_cancelled_total", "counter",
     "Tasks never run: the pool halted or was cancelled first.", M_ONE, "cancelled", NULL, NULL},
    {"sockfork_tasks_running", "gauge", "Attempts running now.", M_ONE, "running", NULL, NULL},
    {"sockfork_tasks_pending", "gauge", "Tasks submitted and waiting to start.", M_ONE, "pending",
     NULL, NULL},
    {"sockfork_tasks_max", "gauge", "Tasks run at once at most (-j).", M_ONE, "jobs", NULL, NULL},
    {"sockfork_task_workers_started_total", "counter", "Worker processes forked for C tasks.",
     M_ONE, "workers_started", NULL, NULL},
    {"sockfork_tasks_halted", "gauge", "1 once a halt condition was met (--halt).", M_ONE,
     "halted", NULL, NULL},
    {"sockfork_tasks_cancel_requested", "gauge", "1 once the run was cancelled (a stop signal).",
     M_ONE, "cancelled_by_request", NULL, NULL},
};

/* Every endpoint's last families: the process that serves it (the
 * supervisor, or the pool's runner), from the snapshot's "process" object
 * (metrics_process_numbers), named as every client library names them. */
static const metric_def process_defs[] = {
    {"process_cpu_seconds_total", "counter",
     "User and system CPU time of the process (the supervisor, or sockfork run).", M_ONE,
     "process.cpu_seconds", NULL, NULL},
    {"process_resident_memory_bytes", "gauge", "Resident memory of the process.", M_ONE,
     "process.resident_bytes", NULL, NULL},
    {"process_start_time_seconds", "gauge",
     "Start time of the process since the Unix epoch.", M_ONE, "process.start_time_seconds",
     NULL, NULL},
    {"sockfork_build_info", "gauge", "The version of sockfork, as a label.", M_INFO,
     "process.version", "version", NULL},
};

struct metrics_table {
    const metric_def *defs;
    size_t n;
};

#define TABLE(defs) {defs, sizeof defs / sizeof defs[0]}
const metrics_table metrics_server_table = TABLE(server_defs);
const metrics_table metrics_pool_table = TABLE(pool_defs);
static const metrics_table process_table = TABLE(process_defs);

/* The value at "key" or "object.key". */
static const json_t *lookup(const json_t *stats, const char *path)
{
    const char *dot = strchr(path, '.');
    char first[64];

    if (!dot)
        return json_object_get(stats, path);
    if ((size_t)(dot - path) >= sizeof first)
        return NULL;
    memcpy(first, path, (size_t)(dot - path));
    first[dot - path] = '\0';
    return json_object_get(json_object_get(stats, first), dot + 1);
}

/* HELP and TYPE, before a family's first sample. */
static void family_head(metrics_buf *b, const metric_def *d, const metric_def **family)
{
    if (*family && strcmp((*family)->name, d->name) == 0)
        return;
    *family = d;
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", d->name, d->help, d->name, d->type);
}

/* An integer as it is; a real in the fewest digits that read back as the
 * same double (the JSON has 17: the same number). */
static void put_number(metrics_buf *b, const json_t *v)
{
    char text[40];
    double d = json_real_value(v);

    if (json_is_integer(v)) {
        buf_printf(b, "%lld", (long long)json_integer_value(v));
        return;
    }
    snprintf(text, sizeof text, "%.15g", d);
    if (strtod(text, NULL) != d)
        snprintf(text, sizeof text, "%.17g", d);
    buf_puts(b, text);
}

/* The start of a line: name{label="value"} and a space; the number
 * follows. */
static void sample_name(metrics_buf *b, const char *name, const char *label, const char *value,
                        size_t value_len)
{
    buf_puts(b, name);
    if (label) {
        buf_printf(b, "{%s=\"", label);
        metrics_put_label_value(b, value, value_len);
        buf_puts(b, "\"}");
    }
    buf_puts(b, " ");
}

/* The row that starts row i's family: it has the HELP and TYPE. */
static const metric_def *head_of(const metrics_table *t, size_t i)
{
    while (i > 0 && !t->defs[i].help)
        i--;
    return &t->defs[i];
}

static void render_table(const metrics_table *t, const json_t *stats, metrics_buf *out)
{
    const metric_def *family = NULL;

    for (size_t i = 0; i < t->n; i++) {
        const metric_def *d = &t->defs[i], *head = head_of(t, i);
        const json_t *v = lookup(stats, d->path), *member;
        const char *key;

        if (!v)
            continue;
        switch (d->how) {
        case M_ONE:
        case M_LABEL:
            if (!json_is_number(v))
                break;
            family_head(out, head, &family);
            sample_name(out, d->name, d->label, d->value, d->value ? strlen(d->value) : 0);
            put_number(out, v);
            buf_puts(out, "\n");
            break;
        case M_BY_KEY:
            json_object_foreach((json_t *)v, key, member) {
                if (!json_is_number(member))
                    continue;
                family_head(out, head, &family);
                sample_name(out, d->name, d->label, key, strlen(key));
                put_number(out, member);
                buf_puts(out, "\n");
            }
            break;
        case M_INFO:
            if (!json_is_string(v))
                break;
            family_head(out, head, &family);
            sample_name(out, d->name, d->label, json_string_value(v), json_string_length(v));
            buf_puts(out, "1\n");
            break;
        }
    }
}

int metrics_render(const metrics_table *t, const json_t *stats, metrics_buf *out)
{
    render_table(t, stats, out);
    render_table(&process_table, stats, out);
    return out->failed;
}

json_t *metrics_process_numbers(void)
{
    os_proc_usage u;

    (void)os_proc_self(&u);
    return json_pack("{s:o, s:o, s:o, s:s}", "cpu_seconds",
                     u.cpu_seconds < 0 ? json_null() : json_real(u.cpu_seconds),
                     "resident_bytes",
                     u.resident_bytes < 0 ? json_null()
                                          : json_integer((json_int_t)u.resident_bytes),
                     "start_time_seconds",
                     u.start_time < 0 ? json_null() : json_real(u.start_time), "version",
                     sf_version());
}

/* ------------------------------------------------------------- endpoint */

typedef struct scraper {
    metrics *m;
    int fd;                   /* -1: the slot is free */
    ev_io io;                 /* reading its request, then writing the answer */
    ev_timer deadline;        /* METRICS_DEADLINE_S from its accept */
    char req[HTTP_HEAD_MAX];
    size_t req_len;
    char head[256];           /* the answer's status line and headers */
    size_t head_len;
    char *body;               /* malloc'd, or NULL */
    size_t body_len;          /* sent only if send_body */
    int send_body;
    size_t sent;              /* of head, then body */
    int lingering;            /* answered: reading to the client's end */
} scraper;

struct metrics {
    struct ev_loop *loop;
    listener lis;
    ev_io accept_io;
    ev_timer accept_pause;    /* accept failed for lack of descriptors */
    const metrics_table *table;
    metrics_snapshot_cb snapshot;
    void *arg;
    unsigned active;
    int stopped;              /* metrics_stop_accepting: upgraded */
    scraper slots[METRICS_SCRAPERS_MAX];
};

static void scraper_close(scraper *sc)
{
    if (sc->fd < 0)
        return;
    ev_io_stop(sc->m->loop, &sc->io);
    ev_timer_stop(sc->m->loop, &sc->deadline);
    close(sc->fd);
    sc->fd = -1;
    free(sc->body);
    sc->body = NULL;
    sc->lingering = 0;
    sc->m->active--;
}

/* All is sent: our end of the stream is closed, and what the client may
 * still send (the rest of a request cut at 431, a body) is read and
 * dropped until it closes its end or the deadline comes. Closing at once
 * with such bytes unread would make the kernel reset the connection, and
 * the client could lose the answer. */
static void scraper_linger(scraper *sc)
{
    free(sc->body);
    sc->body = NULL;
    if (shutdown(sc->fd, SHUT_WR) < 0) {
        scraper_close(sc);
        return;
    }
    sc->lingering = 1;
    ev_io_stop(sc->m->loop, &sc->io);
    ev_io_set(&sc->io, sc->fd, EV_READ);
    ev_io_start(sc->m->loop, &sc->io);
}

/* Bounded per wakeup, like every read of the loop's. */
static void scraper_drain(scraper *sc)
{
    for (int i = 0; i < 4; i++) {
        ssize_t n = recv(sc->fd, sc->req, sizeof sc->req, 0);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        if (n <= 0) {
            scraper_close(sc);
            return;
        }
    }
}

/* Writes what the socket takes; lingers once all is sent, closes on an
 * error. */
static void scraper_write(scraper *sc)
{
    size_t total = sc->head_len + (sc->send_body ? sc->body_len : 0);

    while (sc->sent < total) {
        struct iovec iov[2];
        struct msghdr mh;
        int n = 0;
        ssize_t w;

        memset(&mh, 0, sizeof mh);
        if (sc->sent < sc->head_len) {
            iov[n].iov_base = sc->head + sc->sent;
            iov[n++].iov_len = sc->head_len - sc->sent;
        }
        if (sc->send_body && sc->body_len > 0) {
            size_t off = sc->sent > sc->head_len ? sc->sent - sc->head_len : 0;
            iov[n].iov_base = sc->body + off;
            iov[n++].iov_len = sc->body_len - off;
        }
        mh.msg_iov = iov;
        mh.msg_iovlen = (size_t)n;
        w = sendmsg(sc->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return; /* the write watcher calls again */
        if (w < 0) {
            scraper_close(sc);
            return;
        }
        sc->sent += (size_t)w;
    }
    scraper_linger(sc);
}

/* Sets the answer, and writes it as the socket takes it. body: malloc'd
 * (taken) or NULL for a short static text. */
static void scraper_answer(scraper *sc, int status, char *body, const char *text, int head_only,
                           const char *extra)
{
    size_t len = body ? strlen(body) : strlen(text);
    int n;

    n = snprintf(sc->head, sizeof sc->head,
                 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                 "Connection: close\r\n%s\r\n",
                 status, http_reason(status),
                 status == 200 ? METRICS_CONTENT_TYPE : "text/plain; charset=utf-8", len,
                 extra ? extra : "");
    sc->head_len = n < 0 ? 0 : (size_t)n >= sizeof sc->head ? sizeof sc->head - 1 : (size_t)n;
    if (!body && len > 0 && !(body = strdup(text))) {
        scraper_close(sc);
        return;
    }
    sc->body = body;
    sc->body_len = len;
    sc->send_body = !head_only;
    sc->sent = 0;
    ev_io_stop(sc->m->loop, &sc->io);
    ev_io_set(&sc->io, sc->fd, EV_WRITE);
    ev_io_start(sc->m->loop, &sc->io);
    scraper_write(sc);
}

/* The exposition, rendered from one snapshot; NULL on failure. */
static char *render_body(metrics *m, int *status)
{
    json_t *stats = m->snapshot(m->arg);
    metrics_buf b = {NULL, 0, 0, METRICS_BODY_MAX, 0};

    *status = 500;
    if (!stats)
        return NULL;
    if (metrics_render(m->table, stats, &b) < 0 || !b.p) {
        json_decref(stats);
        free(b.p);
        return NULL;
    }
    json_decref(stats);
    *status = 200;
    return b.p;
}

static void scraper_route(scraper *sc, const http_request *req)
{
    int head = strcmp(req->method, "HEAD") == 0, status;
    char *body;

    if (strcmp(req->method, "GET") != 0 && !head) {
        scraper_answer(sc, 405, NULL, "only GET and HEAD\n", 0, "Allow: GET, HEAD\r\n");
        return;
    }
    if (strcmp(req->path, "/metrics") != 0) {
        scraper_answer(sc, 404, NULL, "not found: the metrics are at /metrics\n", head, NULL);
        return;
    }
    body = render_body(sc->m, &status);
    if (!body)
        scraper_answer(sc, 500, NULL, "cannot render the metrics\n", head, NULL);
    else
        scraper_answer(sc, status, body, NULL, head, NULL);
}

static void scraper_read(scraper *sc)
{
    http_request req;
    ssize_t n;
    int rc;

    n = recv(sc->fd, sc->req + sc->req_len, sizeof sc->req - sc->req_len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        scraper_close(sc); /* gone before a whole request */
        return;
    }
    sc->req_len += (size_t)n;
    rc = http_parse(sc->req, sc->req_len, &req);
    if (rc == HTTP_MORE)
        return;
    if (rc < 0) {
        char text[64];
        snprintf(text, sizeof text, "%s\n", http_reason(http_error_status(rc)));
        scraper_answer(sc, http_error_status(rc), NULL, text, 0, NULL);
        return;
    }
    scraper_route(sc, &req);
}

static void scraper_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    scraper *sc = w->data;

    (void)loop;
    if ((revents & EV_READ) && sc->lingering)
        scraper_drain(sc);
    else if (revents & EV_READ)
        scraper_read(sc);
    else if (revents & EV_WRITE)
        scraper_write(sc);
}

/* Too slow to send its request, or to read its answer. */
static void scraper_deadline_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    scraper_close(w->data);
}

/* One over METRICS_SCRAPERS_MAX: told so in one try, never waited for. */
static void refuse_busy(int fd)
{
    static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\n"
                               "Content-Type: text/plain; charset=utf-8\r\n"
                               "Content-Length: 29\r\nConnection: close\r\n\r\n"
                               "too many scrapers: try again\n";

    (void)send(fd, busy, sizeof busy - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    close(fd);
}

static void scraper_start(metrics *m, int fd)
{
    scraper *sc = NULL;

    for (unsigned i = 0; i < METRICS_SCRAPERS_MAX && !sc; i++) {
        if (m->slots[i].fd < 0)
            sc = &m->slots[i];
    }
    if (!sc) {
        refuse_busy(fd);
        return;
    }
    sc->fd = fd;
    sc->req_len = 0;
    sc->body = NULL;
    ev_io_init(&sc->io, scraper_io_cb, fd, EV_READ);
    sc->io.data = sc;
    ev_timer_init(&sc->deadline, scraper_deadline_cb, METRICS_DEADLINE_S, 0.);
    sc->deadline.data = sc;
    ev_io_start(m->loop, &sc->io);
    ev_timer_start(m->loop, &sc->deadline);
    m->active++;
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    metrics *m = w->data;

    (void)revents;
    for (int i = 0; i < METRICS_ACCEPT_BATCH; i++) {
        int fd = accept4(m->lis.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd >= 0) {
            scraper_start(m, fd);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            /* The listener stays readable: without a pause this would spin. */
            ev_io_stop(loop, &m->accept_io);
            ev_timer_set(&m->accept_pause, METRICS_ACCEPT_PAUSE_S, 0.);
            ev_timer_start(loop, &m->accept_pause);
        }
        return; /* EAGAIN, or an error of that connection only */
    }
}

static void accept_pause_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    metrics *m = w->data;

    (void)revents;
    if (!m->stopped)
        ev_io_start(loop, &m->accept_io);
}

static int open_with(metrics **out, struct ev_loop *loop, const sf_addr *a, const listener *taken,
                     const metrics_table *table, metrics_snapshot_cb snapshot, void *arg)
{
    metrics *m;
    int rc;

    *out = NULL;
    if (!(m = os_nofork_calloc(1, sizeof *m)))
        return -ENOMEM;
    m->loop = loop;
    m->table = table;
    m->snapshot = snapshot;
    m->arg = arg;
    for (unsigned i = 0; i < METRICS_SCRAPERS_MAX; i++) {
        m->slots[i].fd = -1;
        m->slots[i].m = m;
    }
    if (taken)
        m->lis = *taken;
    else if ((rc = listener_open(&m->lis, a, METRICS_SCRAPERS_MAX * 2, 0)) < 0) {
        os_nofork_free(m);
        return rc;
    }
    ev_io_init(&m->accept_io, accept_cb, m->lis.fd, EV_READ);
    m->accept_io.data = m;
    ev_timer_init(&m->accept_pause, accept_pause_cb, 0., 0.);
    m->accept_pause.data = m;
    ev_io_start(loop, &m->accept_io);
    *out = m;
    return 0;
}

int metrics_open(metrics **out, struct ev_loop *loop, const char *addr,
                 const metrics_table *table, metrics_snapshot_cb snapshot, void *arg)
{
    sf_addr a;
    int rc;

    *out = NULL;
    if ((rc = addr_parse(&a, addr, 1)) < 0)
        return rc;
    return open_with(out, loop, &a, NULL, table, snapshot, arg);
}

int metrics_open_on(metrics **out, struct ev_loop *loop, const listener *taken,
                    const metrics_table *table, metrics_snapshot_cb snapshot, void *arg)
{
    return open_with(out, loop, &taken->addr, taken, table, snapshot, arg);
}

const sf_addr *metrics_addr(const metrics *m)
{
    return &m->lis.addr;
}

listener *metrics_listener(metrics *m)
{
    return &m->lis;
}

void metrics_stop_accepting(metrics *m)
{
    if (!m)
        return;
    ev_io_stop(m->loop, &m->accept_io);
    ev_timer_stop(m->loop, &m->accept_pause);
    m->lis.owns_path = 0; /* the next generation's now */
    m->stopped = 1;
}

void metrics_close(metrics *m)
{
    if (!m)
        return;
    for (unsigned i = 0; i < METRICS_SCRAPERS_MAX; i++)
        scraper_close(&m->slots[i]);
    ev_io_stop(m->loop, &m->accept_io);
    ev_timer_stop(m->loop, &m->accept_pause);
    listener_close(&m->lis);
    os_nofork_free(m);
}

/* The server's (sockfork.h). */
const sf_addr *sf_server_metrics_addr(const sf_server *s)
{
    return s->metrics ? metrics_addr(s->metrics) : NULL;
}
