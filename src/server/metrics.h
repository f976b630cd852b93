/*
 * metrics.h - the Prometheus endpoint (`--metrics ADDR`): an HTTP server
 * on a libev loop that answers GET /metrics in the text exposition format
 * 0.0.4, rendered from a JSON snapshot through a table chosen by the
 * caller: the server's (on the supervisor's loop, from the object `ctl
 * stats` answers with) or the task pool's (on a loop of the pool's own,
 * from pool_stats_json). One source: the renderer only renames and labels
 * what the snapshot says.
 *
 * It never blocks the loop, and everything about a scraper is bounded
 * (docs/design.md, "Metrics"):
 *   - at most METRICS_SCRAPERS_MAX at once; one more is answered 503 with
 *     one non-blocking send and closed;
 *   - a request's head is at most HTTP_HEAD_MAX bytes (431 beyond);
 *   - each scraper has METRICS_DEADLINE_S from its accept to the last
 *     byte of its answer: one that sends half a request, or never reads
 *     its answer, is closed then;
 *   - the answer is rendered once, at most METRICS_BODY_MAX bytes (500
 *     beyond), and written as the socket takes it (a write watcher);
 *   - one answer per connection (Connection: close).
 */
#ifndef SF_SERVER_METRICS_H
#define SF_SERVER_METRICS_H

#include <ev.h>
#include <jansson.h>
#include <stddef.h>

#include "server/http.h"
#include "server/listener.h"
#include "sockfork.h"

#define METRICS_SCRAPERS_MAX 8
#define METRICS_DEADLINE_S 5.0
#define METRICS_BODY_MAX (1024 * 1024)
#define METRICS_ACCEPT_BATCH 16     /* accepts per wakeup */
#define METRICS_ACCEPT_PAUSE_S 0.5  /* after accept failed for lack of descriptors */
#define METRICS_TOPICS_TOP 10       /* topics labelled by name (the most subscribed) */
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* The snapshot to render: a new reference (the caller decrefs it), or
 * NULL (out of memory: 500). */
typedef json_t *(*metrics_snapshot_cb)(void *arg);

/* ------------------------------------------------------------- renderer */

/* A text buffer that grows up to max bytes. */
typedef struct metrics_buf {
    char *p;       /* malloc'd; the caller frees it */
    size_t len, cap, max;
    int failed;    /* -ENOSPC (past max) or -ENOMEM: what was cut */
} metrics_buf;

/* Which numbers of a snapshot are which metric families (metrics.c). */
typedef struct metrics_table metrics_table;
extern const metrics_table metrics_server_table; /* `ctl stats`'s object (server_stats) */
extern const metrics_table metrics_pool_table;   /* the task pool's (pool_stats_json) */

/* A snapshot in the text format, through table t and then the process
 * families every endpoint has (its "process" object): a HELP and a TYPE
 * line before each family's first sample, families without a sample left
 * out. Appends to out; returns 0 or out->failed. */
int metrics_render(const metrics_table *t, const json_t *stats, metrics_buf *out);

/* The snapshot's "process" object, for this process: CPU seconds,
 * resident bytes, start time (each null if /proc cannot tell) and
 * sf_version(). A new reference, or NULL (out of memory). */
json_t *metrics_process_numbers(void);

/* Appends a label value, escaped as the format wants (backslash, double
 * quote, newline). */
void metrics_put_label_value(metrics_buf *out, const char *s, size_t len);

/* ------------------------------------------------------------- endpoint */

typedef struct metrics metrics;

/*
 * Listens on addr (sf_addr_parse's syntax; a Unix path is created, a stale
 * socket replaced, and removed by metrics_close) and serves scrapers on
 * loop, each answer rendered through table from snapshot(arg), called on
 * the loop. The listener and every scraper's socket are close-on-exec.
 * Returns 0 with *out set, or -errno (-EINVAL for a malformed address,
 * -EADDRINUSE, ...).
 */
int metrics_open(metrics **out, struct ev_loop *loop, const char *addr,
                 const metrics_table *table, metrics_snapshot_cb snapshot, void *arg);

/* As metrics_open, on a socket listening already (taken: an upgrade's
 * previous generation handed it over), never bound again. */
int metrics_open_on(metrics **out, struct ev_loop *loop, const listener *taken,
                    const metrics_table *table, metrics_snapshot_cb snapshot, void *arg);

/* The bound address (a port 0 resolved). */
const sf_addr *metrics_addr(const metrics *m);

/* Its listening socket, for an upgrade to hand over. */
listener *metrics_listener(metrics *m);

/* Upgraded: the socket is the next generation's; scrapes under way end,
 * no new one is taken here. */
void metrics_stop_accepting(metrics *m);

/* Closes every scraper and the listener. NULL is fine. */
void metrics_close(metrics *m);

#endif
