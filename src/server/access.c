/*
 * access.c - who gets served, decided before any fork: the PROXY protocol
 * header of a ",proxy" listener's connection (proxy.h), then the access
 * rules (rules.h), then what server.c decides (the per-IP limit, the start).
 *
 * A PROXY listener takes headers only from the balancers --proxy-from
 * names (kept as a rules set: "allow CIDR" lines and a default deny): any
 * other source is refused at once, never guessed at. The header is read
 * without blocking, on the connection's own watcher, with a deadline
 * (proxy_timeout_s); the connection holds its record meanwhile, so it
 * counts against the connection limit, and the supervisor goes on. Once
 * the header is in, the address it gives is the client for everything:
 * logs, the per-IP limit, the rules, `ctl list`, the program's
 * environment, sf_conn_peer; the kernel's tuple (by_tuple, for the idle
 * timeout's dump) stays the socket's own.
 *
 * The rules are swapped whole on reload (SIGHUP, `ctl reload`): a set is
 * immutable, and what a connection keeps of its rule (its KEY=VALUE pairs)
 * is copied, so the old set goes at once.
 */
#include "server/server_internal.h"
#include "server/proxy.h"
#include "server/rules.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct proxy_wait {
    proxy_parser p;
    ev_io io;
    ev_timer timer;
    conn_rec *r;
    sf_server *s;
} proxy_wait;

/* ----------------------------------------------------------- the rules */

/* The rule's pairs, packed for the child: "KEY=VALUE\0"... */
static int pack_env(conn_rec *r, const rule *ru)
{
    size_t len = 0, off = 0;

    free(r->env);
    r->env = NULL;
    r->env_len = 0;
    if (ru->nenv == 0)
        return 0;
    for (size_t i = 0; i < ru->nenv; i++)
        len += strlen(ru->env[i]) + 1;
    if (!(r->env = malloc(len)))
        return -ENOMEM;
    for (size_t i = 0; i < ru->nenv; i++) {
        size_t n = strlen(ru->env[i]) + 1;
        memcpy(r->env + off, ru->env[i], n);
        off += n;
    }
    r->env_len = len;
    return 0;
}

int access_check_rules(sf_server *s, conn_rec *r)
{
    const rule *ru;

    if (!s->rules)
        return 1;
    ru = rules_match(s->rules, &r->peer);
    if (ru->action == RULE_DENY) {
        s->stats.denied++;
        if (sf_log_enabled(&s->log, SF_LOG_NOTICE)) {
            char peer[SF_ADDR_TEXT_MAX];
            server_peer_text(r, peer, sizeof peer);
            if (ru->line)
                sf_logev(&s->log, SF_LOG_NOTICE, "denied", 0, peer,
                         SF_FIELDS(SF_F_STR("rules", s->rules_path), SF_F_UINT("line", ru->line)),
                         "[%s] denied by rule %s:%u", peer, s->rules_path, ru->line);
            else
                sf_logev(&s->log, SF_LOG_NOTICE, "denied", 0, peer,
                         SF_FIELDS(SF_F_STR("rules", s->rules_path), SF_F_UINT("line", 0)),
                         "[%s] denied by %s's default", peer, s->rules_path);
        }
        return 0;
    }
    return pack_env(r, ru) < 0 ? -ENOMEM : 1;
}

/* After the header (if any): the rules, then server.c's start. */
static void admit(sf_server *s, conn_rec *r)
{
    int rc = access_check_rules(s, r);

    if (rc == 1) {
        server_start_conn(s, r);
        return;
    }
    server_drop(s, r, "", rc < 0 ? strerror(-rc) : NULL);
}

int sf_server_rules(sf_server *s, const char *path, char *err, size_t errlen)
{
    rules_set *set = NULL;
    char *copy;
    int rc;

    if (s->ran)
        return -EBUSY;
    if ((rc = rules_load(path, &set, err, errlen)) < 0)
        return rc;
    if (!(copy = strdup(path))) {
        rules_free(set);
        snprintf(err, errlen, "%s: %s", path, strerror(ENOMEM));
        return -ENOMEM;
    }
    rules_free(s->rules);
    free(s->rules_path);
    s->rules = set;
    s->rules_path = copy;
    return 0;
}

/* A reload in two steps (server_reload): the new rules are read and
 * parsed first, and put in place only once everything else reloaded has
 * succeeded; a reload that fails anywhere leaves the old set in force. */
int access_reload_prepare(sf_server *s, struct rules_set **out, char *what, size_t len)
{
    char err[512];
    int rc;

    *out = NULL;
    what[0] = '\0';
    if (!s->rules_path)
        return 0; /* no rules file: nothing to read */
    if ((rc = rules_load(s->rules_path, out, err, sizeof err)) < 0) {
        snprintf(what, len, "%s", err);
        return rc;
    }
    snprintf(what, len, "%s: %zu rules", s->rules_path, rules_count(*out));
    return 0;
}

void access_reload_commit(sf_server *s, struct rules_set *set)
{
    if (!set)
        return;
    /* Whole: the next connection meets the new rules, none meets a mix. */
    rules_free(s->rules);
    s->rules = set;
}

void access_reload_discard(struct rules_set *set)
{
    rules_free(set);
}

/* ------------------------------------------------------ the PROXY header */

int sf_server_proxy_from(sf_server *s, const char *cidr)
{
    char line[160], err[256];
    rules_set *one = NULL;
    char *text;
    int n, rc;

    if (s->ran)
        return -EBUSY;
    n = snprintf(line, sizeof line, "allow %s\n", cidr);
    if (n < 0 || (size_t)n >= sizeof line || strchr(cidr, '\n') || strchr(cidr, '#') ||
        strchr(cidr, ' '))
        return -EINVAL;
    /* One line alone first: a bad prefix is the caller's to hear now. */
    if ((rc = rules_parse(line, (size_t)n, "--proxy-from", &one, err, sizeof err)) < 0)
        return rc == -ENOMEM ? rc : -EINVAL;
    rules_free(one);
    if (!(text = realloc(s->proxy_from_text, s->proxy_from_len + (size_t)n + 1)))
        return -ENOMEM;
    memcpy(text + s->proxy_from_len, line, (size_t)n + 1);
    s->proxy_from_text = text;
    s->proxy_from_len += (size_t)n;
    return 0;
}

int access_ready(sf_server *s)
{
    static const char deny[] = "default deny\n";
    char err[256], *text;
    size_t i;
    int rc;

    for (i = 0; i < s->nlisteners && !s->listeners[i].proxy; i++)
        ;
    if (i == s->nlisteners)
        return 0;
    /* A PROXY listener with nobody allowed to send a header would refuse
     * every connection: the caller has forgotten --proxy-from. */
    if (!s->proxy_from_text)
        return -EDESTADDRREQ;
    if (!(text = realloc(s->proxy_from_text, s->proxy_from_len + sizeof deny)))
        return -ENOMEM;
    memcpy(text + s->proxy_from_len, deny, sizeof deny);
    s->proxy_from_text = text;
    rc = rules_parse(text, s->proxy_from_len + sizeof deny - 1, "--proxy-from", &s->proxy_from,
                     err, sizeof err);
    return rc < 0 ? rc : 0;
}

static void proxy_wait_free(sf_server *s, conn_rec *r)
{
    proxy_wait *w = r->proxy_wait;

    if (!w)
        return;
    ev_io_stop(s->loop, &w->io);
    ev_timer_stop(s->loop, &w->timer);
    free(w);
    r->proxy_wait = NULL;
}

void access_cancel(sf_server *s, conn_rec *r)
{
    proxy_wait_free(s, r);
    free(r->env);
    r->env = NULL;
    r->env_len = 0;
}

/* The header is read as far as it came: done, waiting, or the end. */
static void proxy_step(sf_server *s, conn_rec *r)
{
    proxy_wait *w = r->proxy_wait;
    char peer[SF_ADDR_TEXT_MAX];
    const char *why;
    int rc = proxy_read(r->fd, &w->p);

    if (rc == 0 || rc == -EAGAIN)
        return; /* more to come: the watcher calls again */
    if (rc == 1) {
        if (w->p.kind == PROXY_KIND_ADDRS) {
            r->peer = w->p.src;
            r->local = w->p.dst;
            r->has_local = 1;
        }
        /* LOCAL (a balancer's health check), UNKNOWN, UNSPEC: the
         * socket's own addresses, as the spec says. */
        proxy_wait_free(s, r);
        admit(s, r);
        return;
    }
    s->stats.proxy_bad++;
    server_peer_text(r, peer, sizeof peer);
    why = rc == -EPROTO || rc == -EPIPE ? w->p.error : strerror(-rc);
    sf_logev(&s->log, SF_LOG_NOTICE, "proxy_bad", 0, peer, SF_FIELDS(SF_F_STR("error", why)),
             "[%s] bad PROXY header: %s; closed", peer, why);
    server_rec_release(s, r); /* frees w */
}

static void proxy_readable(struct ev_loop *loop, ev_io *w, int revents)
{
    proxy_wait *pw = w->data;
    (void)loop;
    (void)revents;
    proxy_step(pw->s, pw->r);
}

static void proxy_late(struct ev_loop *loop, ev_timer *w, int revents)
{
    proxy_wait *pw = w->data;
    sf_server *s = pw->s;
    conn_rec *r = pw->r;
    char peer[SF_ADDR_TEXT_MAX];
    (void)loop;
    (void)revents;

    s->stats.proxy_timed_out++;
    server_peer_text(r, peer, sizeof peer);
    sf_logev(&s->log, SF_LOG_NOTICE, "proxy_timed_out", 0, peer,
             SF_FIELDS(SF_F_DBL("after_s", s->opts.proxy_timeout_s), SF_F_UINT("bytes", pw->p.have)),
             "[%s] no whole PROXY header within %g s (%zu bytes came); closed", peer,
             s->opts.proxy_timeout_s, pw->p.have);
    server_rec_release(s, r);
}

void access_accepted(sf_server *s, conn_rec *r, const listener *l)
{
    proxy_wait *w;

    if (!l->proxy) {
        admit(s, r);
        return;
    }
    /* Never guess whether a header is there: only the named balancers
     * may send one, and on this listener every connection must. */
    if (rules_match(s->proxy_from, &r->peer)->action != RULE_ALLOW) {
        char peer[SF_ADDR_TEXT_MAX];
        s->stats.proxy_refused++;
        server_peer_text(r, peer, sizeof peer);
        sf_logev(&s->log, SF_LOG_NOTICE, "refused", 0, peer,
                 SF_FIELDS(SF_F_STR("reason", "proxy_source")),
                 "[%s] refused: a PROXY listener, and not a source --proxy-from allows", peer);
        server_rec_release(s, r);
        return;
    }
    if (!(w = calloc(1, sizeof *w))) {
        server_rec_release(s, r);
        return;
    }
    proxy_parser_init(&w->p);
    w->r = r;
    w->s = s;
    r->proxy_wait = w;
    ev_io_init(&w->io, proxy_readable, r->fd, EV_READ);
    w->io.data = w;
    ev_timer_init(&w->timer, proxy_late, s->opts.proxy_timeout_s, 0.);
    w->timer.data = w;
    ev_io_start(s->loop, &w->io);
    ev_timer_start(s->loop, &w->timer);
    /* It usually came with the connection: no need to wait for the loop. */
    proxy_step(s, r);
}

void access_fini(sf_server *s)
{
    rules_free(s->rules);
    rules_free(s->proxy_from);
    free(s->rules_path);
    free(s->proxy_from_text);
    s->rules = s->proxy_from = NULL;
    s->rules_path = s->proxy_from_text = NULL;
}
