/* bus_redis_peer.c - the other instances' replicas, and
 * reading one again; the files of the Redis bridge are listed in
 * bus_redis_int.h, the why is in docs/design.md, "The bus across
 * instances (Redis)". */
#include "supervisor/bus_redis_int.h"
#include "channel/be.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REFRESH_KEEP_MAX 1024 /* entries kept while a replica is read again */

/* ------------------------------------------------------------ replicas */

peer *rb_peer_find(bus_redis *r, uint64_t id)
{
    for (unsigned i = 0; i < BUS_REDIS_PEERS_MAX; i++)
        if (r->peers[i].used && r->peers[i].id == id)
            return &r->peers[i];
    return NULL;
}

static int replica_out(void *arg, uint16_t type, const void *head, size_t head_len,
                       const void *data, size_t data_len)
{
    /* A replica never sends: it is never started, and its rank keeps the
     * local holder on a tie (Redis's lease decides). */
    (void)arg, (void)type, (void)head, (void)head_len, (void)data, (void)data_len;
    return 0;
}

peer *rb_peer_get(bus_redis *r, uint64_t id)
{
    peer *p = rb_peer_find(r, id);
    unsigned char hello[5] = {BRIDGE_VERSION, 0, 0, 0, 1};

    if (p)
        return p;
    for (unsigned i = 0; i < BUS_REDIS_PEERS_MAX && !p; i++)
        if (!r->peers[i].used)
            p = &r->peers[i];
    if (!p)
        return NULL;
    if (bus_bridge_init(&p->replica, r->bus, 0, 0, replica_out, r) < 0)
        return NULL;
    if (bus_bridge_input(&p->replica, BRIDGE_HELLO, hello, sizeof hello) < 0) {
        bus_bridge_fini(&p->replica);
        return NULL;
    }
    p->id = id;
    p->used = 1;
    r->st.peers++;
    return p;
}

/* An instance gone: the wills it had are published here, its names and
 * members vanish, and it is forgotten. */
void rb_peer_gone(bus_redis *r, peer *p, const char *why)
{
    char hex[17];

    snprintf(hex, sizeof hex, "%016" PRIx64, p->id);
    sf_logev(r->log, SF_LOG_INFO, "bus_redis_peer_gone", 0, NULL,
             SF_FIELDS(SF_F_STR("instance", hex), SF_F_STR("why", why)),
             "bus bridge: instance %s is gone (%s): its members' wills published here", hex, why);
    bus_bridge_fini(&p->replica);
    bus_dedup_forget(&r->seen, p->id);
    rb_refresh_forget(p);
    p->used = 0;
    r->st.peers--;
}

/* A state entry of another instance into its replica, as the upgrade
 * bridge's frame of the same meaning. */
static void replica_feed_to(bus_redis *r, bus_bridge *br, const rc_entry *e)
{
    unsigned char f[4 + 2 + BUS_NAME_MAX];
    unsigned char *big = NULL;
    uint16_t type;
    size_t n = 4;

    switch (e->kind) {
    case RC_JOIN: type = BRIDGE_JOIN; break;
    case RC_LEAVE: type = BRIDGE_LEAVE; break;
    case RC_CLAIM: type = BRIDGE_CLAIM; break;
    case RC_RELEASE: type = BRIDGE_RELEASE; break;
    case RC_WILL: type = BRIDGE_WILL; break;
    case RC_WILL_DONE: type = BRIDGE_WILL_DONE; break;
    default: return;
    }
    be32_put(f, (uint32_t)e->pid);
    if (type == BRIDGE_WILL) {
        be16_put(f + 4, (uint32_t)e->name_len);
        n = 6;
    }
    if (e->name_len) {
        memcpy(f + n, e->name, e->name_len);
        n += e->name_len;
    }
    if (e->len) {
        if (!(big = malloc(n + e->len)))
            return;
        memcpy(big, f, n);
        memcpy(big + n, e->data, e->len);
        n += e->len;
    }
    if (bus_bridge_input(br, type, big ? big : f, n) < 0)
        r->st.bad++;
    free(big);
}

void rb_replica_feed(bus_redis *r, const rc_entry *e)
{
    peer *p = rb_peer_get(r, e->origin);

    if (p) /* else past BUS_REDIS_PEERS_MAX */
        replica_feed_to(r, &p->replica, e);
}


/* ------------------------------------------------------------ replicas read again */

/* A gap in an instance's seq on sf:x means state events of it were never
 * read here (trimmed first): its replica may keep, for ever, a member or a
 * name it dropped. So its state hash is read again, and its sf:x entries
 * from the gap on are kept meanwhile and replayed on top of what the hash
 * says: the entry that showed the gap may be written to the hash only
 * after our HGETALL (its XADD and HSET are two commands), and whatever
 * comes after the HGETALL is not in the hash. Replaying events the hash
 * has already sets or clears the same facts again. */

void rb_refresh_forget(peer *p)
{
    for (unsigned i = 0; i < p->nkept; i++)
        free(p->kept[i]);
    free(p->kept);
    free(p->kept_len);
    p->kept = NULL;
    p->kept_len = NULL;
    p->nkept = 0;
    p->refreshing = p->refresh_sent = p->refresh_again = 0;
}

static int is_state_kind(int kind)
{
    return kind == RC_JOIN || kind == RC_LEAVE || kind == RC_CLAIM || kind == RC_RELEASE ||
           kind == RC_WILL || kind == RC_WILL_DONE;
}

/* One entry of p on sf:x (bytes as read) kept for the replay if it is a
 * state event (lines are not: at most REFRESH_KEEP_MAX entries of at most
 * chan_max bytes each). Past REFRESH_KEEP_MAX the kept ones go, this one
 * stays, and the hash is read again once more (after this entry: it covers
 * what went). */
void rb_refresh_keep(bus_redis *r, peer *p, int kind, const unsigned char *e, size_t n)
{
    unsigned char *copy;

    if (!is_state_kind(kind)) {
        p->refreshing = 1;
        if (!p->refresh_sent)
            rb_refresh_send(r, p);
        return;
    }
    if (p->nkept == REFRESH_KEEP_MAX) {
        for (unsigned i = 0; i < p->nkept; i++)
            free(p->kept[i]);
        p->nkept = 0;
        p->refresh_again = p->refresh_sent;
    }
    if (!p->kept) {
        p->kept = malloc(REFRESH_KEEP_MAX * sizeof *p->kept);
        p->kept_len = malloc(REFRESH_KEEP_MAX * sizeof *p->kept_len);
    }
    if (!p->kept || !p->kept_len || !(copy = malloc(n ? n : 1))) {
        rb_refresh_forget(p); /* tried again at its next gap */
        return;
    }
    memcpy(copy, e, n);
    p->kept[p->nkept] = copy;
    p->kept_len[p->nkept++] = n;
    p->refreshing = 1;
    if (!p->refresh_sent)
        rb_refresh_send(r, p);
}

/* The replica made again: the hash, then the kept entries (a will
 * published meanwhile is only cleared: its publishing was done here when
 * it was read), then put in place of the old one, whose wills are
 * published only for children the new one does not have at all. */
static void refresh_apply(bus_redis *r, peer *p, const redisReply *reply)
{
    unsigned char hello[5] = {BRIDGE_VERSION, 0, 0, 0, 1};
    bus_bridge now;
    rc_entry e;

    if (bus_bridge_init(&now, r->bus, 0, 0, replica_out, r) < 0)
        return;
    if (bus_bridge_input(&now, BRIDGE_HELLO, hello, sizeof hello) < 0) {
        bus_bridge_fini(&now);
        return;
    }
    for (size_t k = 0; k + 1 < reply->elements; k += 2) {
        const redisReply *v = reply->element[k + 1];
        if (v->type != REDIS_REPLY_STRING ||
            rc_decode((const unsigned char *)v->str, v->len, r->bus->cfg.chan_max, &e) < 0 ||
            e.origin != p->id) {
            r->st.bad++;
            continue;
        }
        replica_feed_to(r, &now, &e);
    }
    for (unsigned i = 0; i < p->nkept; i++) {
        if (rc_decode(p->kept[i], p->kept_len[i], r->bus->cfg.chan_max, &e) < 0)
            continue;
        if (e.kind == RC_WILL_DONE) {
            e.kind = RC_WILL; /* cleared, not published again */
            e.name = NULL;
            e.name_len = 0;
            e.data = NULL;
            e.len = 0;
        }
        replica_feed_to(r, &now, &e);
    }
    bus_bridge_stop_keeping(&p->replica, &now);
    bus_bridge_fini(&p->replica);
    p->replica = now;
}

/* A command about another instance's key (PREFIX + its id), answered to
 * cb with the instance's id: by then its slot may be free, or another's. */
typedef struct peer_ask {
    bus_redis *r;
    uint64_t id;
} peer_ask;

int rb_peer_ask(bus_redis *r, const peer *p, const char *cmd, const char *prefix,
                rconn_reply_cb cb)
{
    peer_ask *a = malloc(sizeof *a);
    char key[24];

    if (!a)
        return -ENOMEM;
    a->r = r;
    a->id = p->id;
    snprintf(key, sizeof key, "%s%016" PRIx64, prefix, p->id);
    const char *argv[] = {cmd, key};
    size_t argvlen[] = {strlen(cmd), strlen(key)};
    int rc = rconn_command(r->cmd, cb, a, 0, 2, argv, argvlen);
    if (rc < 0)
        free(a);
    return rc;
}

peer *rb_peer_answered(void *priv, bus_redis **r)
{
    peer_ask *a = priv;
    peer *p;

    *r = a->r;
    p = rb_peer_find(a->r, a->id);
    free(a);
    return p;
}

static void refresh_reply(rconn *c, struct redisReply *reply, void *priv)
{
    bus_redis *r;
    peer *p = rb_peer_answered(priv, &r);

    (void)c;
    if (!p || !p->refreshing)
        return;
    p->refresh_sent = 0;
    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        if (reply)
            r->st.bad++;
        return; /* sent again on the next tick */
    }
    if (p->refresh_again) {
        p->refresh_again = 0;
        rb_refresh_send(r, p);
        return;
    }
    refresh_apply(r, p, reply);
    rb_refresh_forget(p);
}

void rb_refresh_send(bus_redis *r, peer *p)
{
    if (p->refresh_sent || !rconn_is_up(r->cmd))
        return;
    if (rb_peer_ask(r, p, "HGETALL", "sf:s:", refresh_reply) == 0)
        p->refresh_sent = 1;
}
