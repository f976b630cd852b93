/* Unit tests: two buses in one process, on one loop, bridged by a
 * bus_link over a socketpair; their children are socketpairs speaking
 * JSON lines (pids 100.. on side A, 200.. on side B). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include "supervisor/bus.h"
#include "supervisor/bus_bridge.h"
#include "supervisor/bus_link.h"

#define KIDS 3

typedef struct side {
    bus b;
    endpoint ep[KIDS];
    int peer[KIDS];             /* the children's ends */
    char *acc[KIDS];            /* what each child was sent */
    size_t acc_len[KIDS];
    pid_t base;
    bus_link *link;
    int downs;
    char why[128];
} side;

typedef struct fixture {
    struct ev_loop *loop;
    side s[2];
    int share_a;                /* A sends its history on open */
} fixture;

static endpoint *find(bus *b, pid_t pid, void *arg)
{
    side *s = arg;
    (void)b;
    for (int i = 0; i < KIDS; i++) {
        if (s->ep[i].pid == pid && endpoint_is_open(&s->ep[i]))
            return &s->ep[i];
    }
    return NULL;
}

static void down(bus_link *l, const char *why, void *arg)
{
    side *s = arg;
    (void)l;
    s->downs++;
    snprintf(s->why, sizeof s->why, "%s", why);
}

static void setup_side(fixture *f, side *s, pid_t base, size_t queue_limit)
{
    bus_config cfg;

    memset(&cfg, 0, sizeof cfg);
    cfg.history = 20;
    cfg.queue_limit = queue_limit;
    cfg.find = find;
    cfg.arg = s;
    s->base = base;
    assert_int_equal(bus_init(&s->b, f->loop, &cfg), 0);
    for (int i = 0; i < KIDS; i++) {
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        assert_int_equal(fcntl(sv[0], F_SETFL, O_NONBLOCK), 0);
        s->peer[i] = sv[1];
        assert_int_equal(endpoint_open(&s->b, &s->ep[i], sv[0], base + i, 1, NULL), 0);
    }
}

/* Two buses, not yet linked. */
static void setup(fixture *f)
{
    memset(f, 0, sizeof *f);
    f->loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(f->loop);
    setup_side(f, &f->s[0], 100, 0);
    setup_side(f, &f->s[1], 200, 0);
}

static void link_up_type(fixture *f, int type, size_t outbox_a)
{
    int sv[2];
    bus_link_opts o;

    assert_int_equal(socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv), 0);
    for (int i = 0; i < 2; i++) {
        memset(&o, 0, sizeof o);
        o.rank = (unsigned)i; /* A, the old generation, ranks lower: it wins ties */
        o.outbox_max = i == 0 ? outbox_a : 0;
        o.share_history = i == 0 && f->share_a;
        o.on_down = down;
        o.arg = &f->s[i];
        assert_int_equal(bus_link_open(&f->s[i].b, sv[i], &o, &f->s[i].link), 0);
    }
}

static void link_up(fixture *f)
{
    link_up_type(f, SOCK_STREAM, 0);
}

static void teardown(fixture *f)
{
    for (int k = 0; k < 2; k++) {
        side *s = &f->s[k];
        bus_link_close(s->link);
        bus_fini(&s->b);
        for (int i = 0; i < KIDS; i++) {
            if (s->peer[i] >= 0)
                close(s->peer[i]);
            free(s->acc[i]);
        }
    }
    ev_loop_destroy(f->loop);
}

/* Turns the loop, reading what every child is sent, until nothing moves. */
static void pump(fixture *f)
{
    char buf[65536];
    int idle = 0;

    for (int k = 0; k < 20000 && idle < 20; k++) {
        int got = 0;
        ev_run(f->loop, EVRUN_NOWAIT);
        for (int j = 0; j < 2; j++) {
            side *s = &f->s[j];
            for (int i = 0; i < KIDS; i++) {
                ssize_t n;
                if (s->peer[i] < 0)
                    continue;
                while ((n = recv(s->peer[i], buf, sizeof buf, MSG_DONTWAIT)) > 0) {
                    char *p = realloc(s->acc[i], s->acc_len[i] + (size_t)n + 1);
                    assert_non_null(p);
                    memcpy(p + s->acc_len[i], buf, (size_t)n);
                    s->acc_len[i] += (size_t)n;
                    p[s->acc_len[i]] = '\0';
                    s->acc[i] = p;
                    got = 1;
                }
            }
        }
        idle = got ? 0 : idle + 1;
    }
}

/* Child i of side k writes a line (the bus reads it on the next pump). */
static void tell(fixture *f, int k, int i, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void tell(fixture *f, int k, int i, const char *fmt, ...)
{
    char line[8192];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof line - 1);
    line[n++] = '\n';
    assert_int_equal(send(f->s[k].peer[i], line, (size_t)n, 0), n);
}

/* Lines child i of side k was sent that hold every needle given. */
static int count(fixture *f, int k, int i, const char *a, const char *b)
{
    const char *acc = f->s[k].acc[i];
    int n = 0;

    for (const char *l = acc; l && *l;) {
        const char *end = strchr(l, '\n');
        size_t len = end ? (size_t)(end - l) : strlen(l);
        char *line = strndup(l, len);
        assert_non_null(line);
        if (strstr(line, a) && (!b || strstr(line, b)))
            n++;
        free(line);
        l = end ? end + 1 : NULL;
    }
    return n;
}

/* Forgets what child i of side k was sent so far. */
static void forget(fixture *f, int k, int i)
{
    free(f->s[k].acc[i]);
    f->s[k].acc[i] = NULL;
    f->s[k].acc_len[i] = 0;
}

static void subscribe(fixture *f, int k, int i, const char *topic, int history)
{
    tell(f, k, i, "{\"op\":\"subscribe\",\"topic\":\"%s\",\"history\":%d}", topic, history);
}

static void test_a_publish_crosses_both_ways_once_and_is_kept_on_both_sides(void **state)
{
    fixture f;
    (void)state;

    setup(&f);
    link_up(&f);
    subscribe(&f, 0, 0, "room:x", 0);
    subscribe(&f, 1, 0, "room:x", 0);
    pump(&f);
    tell(&f, 0, 1, "{\"op\":\"publish\",\"topic\":\"room:x\",\"data\":\"hello-from-a\"}");
    tell(&f, 1, 1, "{\"op\":\"publish\",\"topic\":\"room:x\",\"data\":\"hello-from-b\"}");
    pump(&f);
    for (int k = 0; k < 2; k++) {
        assert_int_equal(count(&f, k, 0, "\"hello-from-a\"", "\"kind\":\"topic\""), 1);
        assert_int_equal(count(&f, k, 0, "\"hello-from-b\"", "\"kind\":\"topic\""), 1);
    }
    /* The sender's pid travels with it. */
    assert_int_equal(count(&f, 1, 0, "\"hello-from-a\"", "\"from\":101"), 1);
    assert_int_equal(count(&f, 0, 0, "\"hello-from-b\"", "\"from\":201"), 1);
    /* Neither publisher got its own line back (no loop through the peer). */
    assert_int_equal(count(&f, 0, 1, "hello-from", NULL), 0);
    assert_int_equal(count(&f, 1, 1, "hello-from", NULL), 0);
    /* History on both sides, each line once. */
    subscribe(&f, 0, 2, "room:x", 10);
    subscribe(&f, 1, 2, "room:x", 10);
    pump(&f);
    for (int k = 0; k < 2; k++) {
        assert_int_equal(count(&f, k, 2, "\"hello-from-a\"", "\"kind\":\"history\""), 1);
        assert_int_equal(count(&f, k, 2, "\"hello-from-b\"", "\"kind\":\"history\""), 1);
    }
    /* A topic nobody subscribes to on the far side keeps its history there too. */
    tell(&f, 0, 1, "{\"op\":\"publish\",\"topic\":\"room:quiet\",\"data\":\"kept\"}");
    pump(&f);
    subscribe(&f, 1, 1, "room:quiet", 10);
    pump(&f);
    assert_int_equal(count(&f, 1, 1, "\"kept\"", "\"kind\":\"history\""), 1);
    teardown(&f);
}

/* Where needle first is in what child i of side k was sent (-1: nowhere). */
static long where(fixture *f, int k, int i, const char *needle)
{
    const char *acc = f->s[k].acc[i], *hit = acc ? strstr(acc, needle) : NULL;

    return hit ? hit - acc : -1;
}

static void test_the_old_side_history_seeds_the_new_one_in_order(void **state)
{
    fixture f;
    (void)state;

    setup(&f);
    f.share_a = 1;
    for (int i = 1; i <= 3; i++)
        tell(&f, 0, 0, "{\"op\":\"publish\",\"topic\":\"room:x\",\"data\":\"old-%d\"}", i);
    pump(&f);
    link_up(&f);
    pump(&f);
    tell(&f, 1, 1, "{\"op\":\"publish\",\"topic\":\"room:x\",\"data\":\"new-b\"}");
    pump(&f);
    subscribe(&f, 1, 0, "room:x", 10);
    subscribe(&f, 0, 1, "room:x", 10);
    pump(&f);
    for (int k = 0; k < 2; k++) {
        int i = k ? 0 : 1;
        long a1 = where(&f, k, i, "\"old-1\""), a2 = where(&f, k, i, "\"old-2\"");
        long a3 = where(&f, k, i, "\"old-3\""), b = where(&f, k, i, "\"new-b\"");
        assert_true(a1 >= 0 && a1 < a2 && a2 < a3 && a3 < b);
        assert_int_equal(count(&f, k, i, "\"kind\":\"history\"", NULL), 4);
    }
    /* Only what was kept before the link crossed as history: nothing is
     * delivered live for it, and B's own history is not sent back. */
    assert_int_equal(count(&f, 0, 0, "old-", NULL), 0);
    teardown(&f);
}

/* The history sent is bounded by half the outbox: the newest go. */
static void test_the_history_sent_on_open_is_bounded(void **state)
{
    fixture f;
    (void)state;

    setup(&f);
    f.share_a = 1;
    for (int i = 0; i < 10; i++)
        tell(&f, 0, 0, "{\"op\":\"publish\",\"topic\":\"t\",\"data\":\"m%d-%0500d\"}", i, 0);
    pump(&f);
    link_up_type(&f, SOCK_STREAM, 4096); /* 2 KiB of history: three messages */
    pump(&f);
    subscribe(&f, 1, 0, "t", 20);
    pump(&f);
    assert_int_equal(count(&f, 1, 0, "\"kind\":\"history\"", NULL), 3);
    assert_int_equal(count(&f, 1, 0, "\"m9-", NULL), 1);
    assert_int_equal(count(&f, 1, 0, "\"m7-", NULL), 1);
    assert_int_equal(count(&f, 1, 0, "\"m6-", NULL), 0);
    assert_true(bus_link_is_up(f.s[0].link));
    teardown(&f);
}

static void test_big_messages_cross_a_seqpacket_link(void **state)
{
    fixture f;
    char *line = malloc(70000);
    (void)state;

    assert_non_null(line);
    setup(&f);
    link_up_type(&f, SOCK_SEQPACKET, 0);
    subscribe(&f, 1, 0, "big", 0);
    pump(&f);
    for (int i = 0; i < 5; i++) {
        int n = snprintf(line, 100, "{\"op\":\"publish\",\"topic\":\"big\",\"data\":\"%d", i);
        memset(line + n, 'y', 60000);
        strcpy(line + n + 60000, "\"}\n");
        size_t len = strlen(line), off = 0;
        while (off < len) {
            ssize_t w = send(f.s[0].peer[0], line + off, len - off, MSG_DONTWAIT);
            if (w > 0)
                off += (size_t)w;
            else
                ev_run(f.loop, EVRUN_NOWAIT);
        }
    }
    pump(&f);
    for (int i = 0; i < 5; i++) {
        char needle[16];
        snprintf(needle, sizeof needle, "\"data\":\"%dyyy", i);
        assert_int_equal(count(&f, 1, 0, needle, "\"kind\":\"topic\""), 1);
    }
    assert_true(bus_link_is_up(f.s[0].link) && bus_link_is_up(f.s[1].link));
    free(line);
    teardown(&f);
}

static void test_a_send_to_a_name_reaches_its_holder_on_the_peer(void **state)
{
    fixture f;
    (void)state;

    setup(&f);
    link_up(&f);
    tell(&f, 1, 0, "{\"op\":\"claim\",\"name\":\"nick:bob\"}");
    pump(&f);
    tell(&f, 0, 0, "{\"op\":\"send\",\"name\":\"nick:bob\",\"data\":\"psst\"}");
    tell(&f, 0, 0, "{\"op\":\"send\",\"name\":\"nick:nobody\",\"data\":\"lost\"}");
    pump(&f);
    assert_int_equal(count(&f, 1, 0, "\"psst\"", "\"kind\":\"name\""), 1);
    assert_int_equal(count(&f, 1, 0, "\"psst\"", "\"from\":100"), 1);
    assert_int_equal(count(&f, 0, 0, "\"not_found\"", "nick:nobody"), 1);
    assert_int_equal(count(&f, 0, 0, "not_found", NULL), 1);
    /* The holder lets go while a send to it crosses: the sender is told
     * (the peer answers NO_NAME), nothing vanishes. */
    forget(&f, 0, 0);
    tell(&f, 1, 0, "{\"op\":\"release\",\"name\":\"nick:bob\"}");
    tell(&f, 0, 0, "{\"op\":\"send\",\"name\":\"nick:bob\",\"data\":\"late\"}");
    pump(&f);
    assert_int_equal(count(&f, 1, 0, "\"late\"", NULL), 0);
    assert_int_equal(count(&f, 0, 0, "\"not_found\"", "nick:bob"), 1);
    /* Sends to a pid stay local: pid 200 is not known on side A. */
    forget(&f, 0, 0);
    tell(&f, 0, 0, "{\"op\":\"send\",\"to\":200,\"data\":\"by-pid\"}");
    pump(&f);
    assert_int_equal(count(&f, 1, 0, "by-pid", NULL), 0);
    assert_int_equal(count(&f, 0, 0, "\"not_found\"", "200"), 1);
    teardown(&f);
}

static void test_names_are_unique_across_both_and_a_tie_goes_to_the_lower_rank(void **state)
{
    fixture f;
    (void)state;

    setup(&f);
    link_up(&f);
    /* Taken on the peer: refused here. */
    tell(&f, 1, 0, "{\"op\":\"claim\",\"name\":\"nick:dave\"}");
    pump(&f);
    tell(&f, 0, 0, "{\"op\":\"claim\",\"name\":\"nick:dave\"}");
    pump(&f);
    assert_int_equal(count(&f, 0, 0, "\"claimed\"", "\"ok\":false"), 1);
    assert_int_equal(count(&f, 1, 0, "\"claimed\"", "\"ok\":true"), 1);
    /* Both claim at the same moment: each is granted where it is, then
     * the higher rank (B) gives its up and its holder is told. */
    tell(&f, 0, 1, "{\"op\":\"claim\",\"name\":\"nick:carol\"}");
    tell(&f, 1, 1, "{\"op\":\"claim\",\"name\":\"nick:carol\"}");
    pump(&f);
    assert_int_equal(count(&f, 0, 1, "\"claimed\"", "\"ok\":true"), 1);
    assert_int_equal(count(&f, 1, 1, "\"claimed\"", "\"ok\":true"), 1);
    assert_int_equal(count(&f, 0, 1, "\"error\"", NULL), 0);
    assert_int_equal(count(&f, 1, 1, "\"code\":\"taken\"", "\"about\":\"nick:carol\""), 1);
    assert_int_equal(bus_name_holder(&f.s[0].b, "nick:carol", 10), 100 + 1);
    assert_int_equal(bus_name_holder(&f.s[1].b, "nick:carol", 10), 0);
    /* One holder left, everywhere: claims on either side fail, sends from
     * either side reach A's child. */
    tell(&f, 0, 2, "{\"op\":\"claim\",\"name\":\"nick:carol\"}");
    tell(&f, 1, 2, "{\"op\":\"claim\",\"name\":\"nick:carol\"}");
    tell(&f, 1, 2, "{\"op\":\"send\",\"name\":\"nick:carol\",\"data\":\"to-carol-b\"}");
    tell(&f, 0, 2, "{\"op\":\"send\",\"name\":\"nick:carol\",\"data\":\"to-carol-a\"}");
    pump(&f);
    assert_int_equal(count(&f, 0, 2, "\"claimed\"", "\"ok\":false"), 1);
    assert_int_equal(count(&f, 1, 2, "\"claimed\"", "\"ok\":false"), 1);
    assert_int_equal(count(&f, 0, 1, "to-carol-b", NULL), 1);
    assert_int_equal(count(&f, 0, 1, "to-carol-a", NULL), 1);
    assert_int_equal(count(&f, 1, 1, "to-carol", NULL), 0);
    /* Once released, it is free on both sides. */
    tell(&f, 0, 1, "{\"op\":\"release\",\"name\":\"nick:carol\"}");
    pump(&f);
    forget(&f, 1, 2);
    tell(&f, 1, 2, "{\"op\":\"claim\",\"name\":\"nick:carol\"}");
    pump(&f);
    assert_int_equal(count(&f, 1, 2, "\"claimed\"", "\"ok\":true"), 1);
    teardown(&f);
}

/* The tie when the loser had let go and the winner claims again, all
 * before either saw the other: still one holder, and no stale name. */
static void test_a_tie_after_a_release_leaves_no_stale_name(void **state)
{
    fixture f;
    (void)state;

    setup(&f);
    link_up(&f);
    tell(&f, 0, 0, "{\"op\":\"claim\",\"name\":\"n\"}");
    tell(&f, 0, 0, "{\"op\":\"release\",\"name\":\"n\"}");
    tell(&f, 1, 0, "{\"op\":\"claim\",\"name\":\"n\"}");
    pump(&f);
    /* B's claim stands (A had let go before it heard of it, or B gave
     * it up and A let go: either way the two sides agree). */
    pid_t a = bus_name_holder(&f.s[0].b, "n", 1), b = bus_name_holder(&f.s[1].b, "n", 1);
    assert_int_equal(a, 0);
    forget(&f, 0, 1);
    forget(&f, 1, 1);
    tell(&f, 0, 1, "{\"op\":\"claim\",\"name\":\"n\"}");
    pump(&f);
    tell(&f, 1, 1, "{\"op\":\"claim\",\"name\":\"n\"}");
    pump(&f);
    /* Exactly one of the later claims can succeed, and only if n was free. */
    int oks = count(&f, 0, 1, "\"ok\":true", NULL) + count(&f, 1, 1, "\"ok\":true", NULL);
    assert_int_equal(oks, b ? 0 : 1);
    teardown(&f);
}

static void test_members_and_topics_list_both_sides(void **state)
{
    fixture f;
    (void)state;

    setup(&f);
    /* State made before the link: each side learns the other's on open. */
    tell(&f, 1, 0, "{\"op\":\"claim\",\"name\":\"nick:bo\"}");
    subscribe(&f, 1, 0, "room:x", 0);
    subscribe(&f, 1, 1, "room:y", 0);
    pump(&f);
    link_up(&f);
    tell(&f, 0, 0, "{\"op\":\"claim\",\"name\":\"nick:al\"}");
    subscribe(&f, 0, 0, "room:x", 0);
    pump(&f);
    tell(&f, 0, 1, "{\"op\":\"members\",\"topic\":\"room:x\"}");
    tell(&f, 0, 1, "{\"op\":\"topics\",\"prefix\":\"room:\"}");
    tell(&f, 1, 2, "{\"op\":\"members\",\"topic\":\"room:x\"}");
    tell(&f, 1, 2, "{\"op\":\"topics\",\"prefix\":\"room:\"}");
    tell(&f, 0, 2, "{\"op\":\"claim\",\"name\":\"nick:bo\"}");
    pump(&f);
    for (int k = 0; k < 2; k++) {
        int i = k ? 2 : 1;
        assert_int_equal(count(&f, k, i, "\"kind\":\"members\"", "100 nick:al\\n"), 1);
        assert_int_equal(count(&f, k, i, "\"kind\":\"members\"", "200 nick:bo\\n"), 1);
        assert_int_equal(count(&f, k, i, "\"kind\":\"topics\"", "room:x 2\\n"), 1);
        assert_int_equal(count(&f, k, i, "\"kind\":\"topics\"", "room:y 1\\n"), 1);
    }
    assert_int_equal(count(&f, 0, 2, "\"claimed\"", "\"ok\":false"), 1);
    bus_link_stats st;
    bus_link_get_stats(f.s[0].link, &st);
    assert_true(st.up && st.frames_in > 0 && st.frames_out > 0);
    assert_int_equal(st.peer_names, 1);
    assert_int_equal(st.peer_members, 2);
    assert_int_equal(st.outbox_bytes, 0);
    /* A member leaves on B: gone from A's answers. */
    tell(&f, 1, 0, "{\"op\":\"unsubscribe\",\"topic\":\"room:x\"}");
    pump(&f);
    forget(&f, 0, 1);
    tell(&f, 0, 1, "{\"op\":\"members\",\"topic\":\"room:x\"}");
    tell(&f, 0, 1, "{\"op\":\"topics\",\"prefix\":\"room:\"}");
    pump(&f);
    assert_int_equal(count(&f, 0, 1, "\"kind\":\"members\"", "200"), 0);
    assert_int_equal(count(&f, 0, 1, "\"kind\":\"topics\"", "room:x 1\\n"), 1);
    teardown(&f);
}

static void test_broadcasts_cross_and_wills_reach_both_once(void **state)
{
    fixture f;
    bus_msg m;
    (void)state;

    setup(&f);
    link_up(&f);
    tell(&f, 0, 0, "{\"op\":\"broadcast\",\"data\":\"all-of-you\"}");
    pump(&f);
    for (int i = 0; i < KIDS; i++)
        assert_int_equal(count(&f, 1, i, "\"all-of-you\"", "\"kind\":\"broadcast\""), 1);
    assert_int_equal(count(&f, 0, 0, "all-of-you", NULL), 0);
    assert_int_equal(count(&f, 0, 1, "all-of-you", NULL), 1);
    /* `ctl broadcast` (bus_broadcast from the owner) crosses too. */
    memset(&m, 0, sizeof m);
    m.kind = SF_MSG_BROADCAST;
    m.data = (const unsigned char *)"from-ctl";
    m.len = 8;
    assert_int_equal(bus_broadcast(&f.s[1].b, &m, NULL), KIDS);
    pump(&f);
    for (int i = 0; i < KIDS; i++)
        assert_int_equal(count(&f, 0, i, "\"from-ctl\"", "\"from\":0"), 1);
    /* A child of A's dies with its will set: the room hears it on both. */
    subscribe(&f, 0, 0, "room:x", 0);
    subscribe(&f, 0, 1, "room:x", 0);
    subscribe(&f, 1, 0, "room:x", 0);
    tell(&f, 0, 0, "{\"op\":\"will\",\"topic\":\"room:x\",\"data\":\"al-left\"}");
    pump(&f);
    close(f.s[0].peer[0]);
    f.s[0].peer[0] = -1;
    pump(&f);
    assert_int_equal(count(&f, 0, 1, "\"al-left\"", "\"kind\":\"topic\""), 1);
    assert_int_equal(count(&f, 1, 0, "\"al-left\"", "\"kind\":\"topic\""), 1);
    /* Published and cleared: the end of the link does not publish it again. */
    bus_link_close(f.s[1].link);
    f.s[1].link = NULL;
    pump(&f);
    assert_int_equal(count(&f, 0, 1, "al-left", NULL), 1);
    assert_int_equal(count(&f, 1, 0, "al-left", NULL), 1);
    assert_int_equal(f.s[0].downs, 1);
    teardown(&f);
}

static void test_when_the_link_closes_the_peer_state_goes_and_its_wills_are_published(void **state)
{
    fixture f;
    bus_bridge_counts c;
    (void)state;

    setup(&f);
    link_up(&f);
    tell(&f, 1, 0, "{\"op\":\"claim\",\"name\":\"nick:bo\"}");
    subscribe(&f, 1, 0, "room:x", 0);
    tell(&f, 1, 0, "{\"op\":\"will\",\"topic\":\"room:x\",\"data\":\"bo-lost\"}");
    subscribe(&f, 0, 0, "room:x", 0);
    pump(&f);
    assert_int_equal(count(&f, 0, 0, "bo-lost", NULL), 0);
    /* B shuts its bus (its children go with no will published there),
     * then the link: A publishes the will B's child still had, once. */
    bus_close_all(&f.s[1].b);
    pump(&f);
    assert_int_equal(count(&f, 0, 0, "bo-lost", NULL), 0);
    bus_link_close(f.s[1].link);
    f.s[1].link = NULL;
    pump(&f);
    assert_int_equal(count(&f, 0, 0, "\"bo-lost\"", "\"from\":200"), 1);
    assert_int_equal(f.s[0].downs, 1);
    assert_string_equal(f.s[0].why, "the peer closed the link");
    assert_false(bus_link_is_up(f.s[0].link));
    assert_null(f.s[0].b.bridge);
    /* Nothing of B is left on A. */
    tell(&f, 0, 1, "{\"op\":\"claim\",\"name\":\"nick:bo\"}");
    tell(&f, 0, 1, "{\"op\":\"members\",\"topic\":\"room:x\"}");
    pump(&f);
    assert_int_equal(count(&f, 0, 1, "\"claimed\"", "\"ok\":true"), 1);
    assert_int_equal(count(&f, 0, 1, "\"kind\":\"members\"", "200"), 0);
    assert_int_equal(count(&f, 0, 1, "\"kind\":\"members\"", "\"data\":\"100\\n\""), 1);
    (void)c;
    teardown(&f);
}

/* At the outbox limit the link is cut, the owner told, and both sides
 * drop the other's names and members, publishing the wills they knew. */
static void test_a_full_outbox_cuts_the_link_and_both_sides_forget_the_peer(void **state)
{
    fixture f;
    char line[8192];
    (void)state;

    setup(&f);
    link_up_type(&f, SOCK_STREAM, 4096);
    tell(&f, 0, 0, "{\"op\":\"claim\",\"name\":\"nick:al\"}");
    subscribe(&f, 0, 0, "room:x", 0);
    tell(&f, 0, 0, "{\"op\":\"will\",\"topic\":\"room:x\",\"data\":\"al-lost\"}");
    tell(&f, 1, 0, "{\"op\":\"claim\",\"name\":\"nick:bo\"}");
    subscribe(&f, 1, 0, "room:x", 0);
    tell(&f, 1, 0, "{\"op\":\"will\",\"topic\":\"room:x\",\"data\":\"bo-lost\"}");
    pump(&f);
    /* A frame larger than A's whole outbox. */
    int n = snprintf(line, sizeof line, "{\"op\":\"publish\",\"topic\":\"room:x\",\"data\":\"");
    memset(line + n, 'z', 5000);
    snprintf(line + n + 5000, sizeof line - (size_t)n - 5000, "\"}");
    tell(&f, 0, 1, "%s", line);
    pump(&f);
    assert_int_equal(f.s[0].downs, 1);
    assert_non_null(strstr(f.s[0].why, "outbox is full"));
    assert_int_equal(f.s[1].downs, 1);
    assert_false(bus_link_is_up(f.s[0].link));
    assert_false(bus_link_is_up(f.s[1].link));
    /* Each side saw the other's member leave (its will), once. */
    assert_int_equal(count(&f, 0, 0, "\"bo-lost\"", NULL), 1);
    assert_int_equal(count(&f, 1, 0, "\"al-lost\"", NULL), 1);
    /* And its names are free again on each side. */
    tell(&f, 0, 2, "{\"op\":\"claim\",\"name\":\"nick:bo\"}");
    tell(&f, 1, 2, "{\"op\":\"claim\",\"name\":\"nick:al\"}");
    pump(&f);
    assert_int_equal(count(&f, 0, 2, "\"claimed\"", "\"ok\":true"), 1);
    assert_int_equal(count(&f, 1, 2, "\"claimed\"", "\"ok\":true"), 1);
    teardown(&f);
}

/* A peer that does not read: the outbox grows to its bound, never past. */
static void test_the_outbox_is_bounded_when_the_peer_does_not_read(void **state)
{
    fixture f;
    bus_link_opts o;
    bus_link *l;
    int sv[2], cut_at = -1;
    (void)state;

    setup(&f);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    memset(&o, 0, sizeof o);
    o.outbox_max = 64 * 1024;
    o.on_down = down;
    o.arg = &f.s[0];
    assert_int_equal(bus_link_open(&f.s[0].b, sv[0], &o, &l), 0);
    f.s[0].link = l;
    for (int i = 0; i < 2000 && cut_at < 0; i++) {
        tell(&f, 0, 0, "{\"op\":\"publish\",\"topic\":\"t\",\"data\":\"%01000d\"}", i);
        ev_run(f.loop, EVRUN_NOWAIT);
        assert_true(bus_link_outbox_bytes(l) <= o.outbox_max);
        if (f.s[0].downs)
            cut_at = i;
    }
    assert_true(cut_at > 0);
    assert_non_null(strstr(f.s[0].why, "outbox is full"));
    assert_null(f.s[0].b.bridge);
    close(sv[1]);
    teardown(&f);
}

static void test_a_peer_speaking_nonsense_is_cut(void **state)
{
    fixture f;
    bus_link_opts o;
    int sv[2];
    unsigned char bad[12] = {0, 0, 0, 4, 0, BRIDGE_CLAIM, 0, 0, 0, 0, 0, 1};
    (void)state;

    setup(&f);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    memset(&o, 0, sizeof o);
    o.on_down = down;
    o.arg = &f.s[0];
    assert_int_equal(bus_link_open(&f.s[0].b, sv[0], &o, &f.s[0].link), 0);
    /* A claim before any HELLO. */
    assert_int_equal(write(sv[1], bad, sizeof bad), (ssize_t)sizeof bad);
    pump(&f);
    assert_int_equal(f.s[0].downs, 1);
    assert_string_equal(f.s[0].why, "the peer sent a frame out of the protocol");
    /* A bus has one bridge at a time; after the cut, a new link may come. */
    int sv2[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv2), 0);
    bus_link *l2;
    bus_link_close(f.s[0].link);
    f.s[0].link = NULL;
    assert_int_equal(bus_link_open(&f.s[0].b, sv2[0], &o, &l2), 0);
    int sv3[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv3), 0);
    bus_link *l3;
    assert_int_equal(bus_link_open(&f.s[0].b, sv3[0], &o, &l3), -EBUSY);
    f.s[0].link = l2;
    close(sv[1]);
    close(sv2[1]);
    close(sv3[1]);
    teardown(&f);
}

/* The owner may finish the bus before it closes the link: the wills the
 * link kept find no bus to go to, and nothing breaks. */
static void test_a_link_closed_after_its_bus_is_finished_is_harmless(void **state)
{
    fixture f;
    (void)state;

    setup(&f);
    link_up(&f);
    tell(&f, 1, 0, "{\"op\":\"will\",\"topic\":\"t\",\"data\":\"w\"}");
    pump(&f);
    bus_fini(&f.s[0].b);
    bus_link_close(f.s[0].link);
    f.s[0].link = NULL;
    pump(&f);
    assert_int_equal(f.s[1].downs, 1);
    assert_null(f.s[1].b.bridge);
    bus_config cfg = f.s[0].b.cfg;
    assert_int_equal(bus_init(&f.s[0].b, f.loop, &cfg), 0); /* for teardown's bus_fini */
    teardown(&f);
}

static int sink(void *arg, uint16_t type, const void *head, size_t head_len, const void *data,
                size_t data_len)
{
    (void)type;
    (void)head;
    (void)data;
    *(size_t *)arg += head_len + data_len;
    return 0;
}

/* The peer's frames are checked before they are used: each malformed one
 * is refused (the link is then cut), and changes nothing. */
static void test_malformed_bridge_frames_are_refused(void **state)
{
    fixture f;
    bus_bridge br;
    bus_bridge_counts c;
    size_t sent = 0;
    unsigned char hello[5] = {BRIDGE_VERSION, 0, 0, 0, 7};
    unsigned char big[4 + 300];
    static const struct {
        uint16_t type;
        const char *bytes;
        size_t len;
    } bad[] = {
        {BRIDGE_CLAIM, "\0\0\0", 3},                    /* no room for a pid */
        {BRIDGE_CLAIM, "\0\0\0\1", 4},                 /* no name */
        {BRIDGE_CLAIM, "\0\0\0\0n", 5},                /* pid 0 */
        {BRIDGE_CLAIM, "\xff\xff\xff\xffn", 5},        /* pid -1 */
        {BRIDGE_PUBLISH, "\0\0\0\1\0", 5},            /* a length cut short */
        {BRIDGE_PUBLISH, "\0\0\0\1\0\5ab", 8},       /* a topic longer than the frame */
        {BRIDGE_PUBLISH, "\0\0\0\1\0\0data", 10},    /* no topic */
        {BRIDGE_WILL_DONE, "\0\0\0\1x", 5},            /* WILL_DONE names nothing */
        {BRIDGE_CLAIM, "\0\0\0\1a b", 7},              /* a space in a name */
        {BRIDGE_JOIN, "\0\0\0\1t\n9 x", 9},            /* a newline in a topic */
        {BRIDGE_BROADCAST, "\0\0\1", 3},
        {999, "\0\0\0\1n", 5},                        /* unknown */
        {BRIDGE_HELLO, "\1\0\0\0\7", 5},              /* a second HELLO */
    };
    (void)state;

    setup(&f);
    assert_int_equal(bus_bridge_init(&br, &f.s[0].b, 3, 0, sink, &sent), 0);
    /* Before HELLO, nothing is taken. */
    assert_int_equal(bus_bridge_input(&br, BRIDGE_CLAIM, (const unsigned char *)"\0\0\0\1n", 5),
                     -EPROTO);
    /* An equal rank, or another version, is refused. */
    hello[4] = 3;
    assert_int_equal(bus_bridge_input(&br, BRIDGE_HELLO, hello, 5), -EPROTO);
    hello[4] = 7;
    hello[0] = BRIDGE_VERSION + 1;
    assert_int_equal(bus_bridge_input(&br, BRIDGE_HELLO, hello, 5), -EPROTO);
    hello[0] = BRIDGE_VERSION;
    assert_int_equal(bus_bridge_input(&br, BRIDGE_HELLO, hello, 4), -EPROTO);
    assert_int_equal(bus_bridge_input(&br, BRIDGE_HELLO, hello, 5), 0);
    bus_bridge_start(&br);
    assert_true(sent >= 5);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(bus_bridge_input(&br, bad[i].type, (const unsigned char *)bad[i].bytes,
                                          bad[i].len), -EPROTO);
    /* A name over BUS_NAME_MAX. */
    memset(big, 'n', sizeof big);
    big[0] = big[1] = big[2] = 0;
    big[3] = 1;
    assert_int_equal(bus_bridge_input(&br, BRIDGE_CLAIM, big, sizeof big), -EPROTO);
    bus_bridge_get_counts(&br, &c);
    assert_int_equal(c.procs + c.names + c.topics + c.subs + c.wills, 0);
    /* Well formed, it is taken; a will of an unknown pid done: nothing. */
    assert_int_equal(bus_bridge_input(&br, BRIDGE_CLAIM, (const unsigned char *)"\0\0\0\1n", 5), 0);
    assert_int_equal(bus_bridge_input(&br, BRIDGE_WILL_DONE, (const unsigned char *)"\0\0\0\2", 4), 0);
    assert_int_equal(bus_bridge_input(&br, BRIDGE_BROADCAST, (const unsigned char *)"\0\0\0\0", 4), 0);
    bus_bridge_get_counts(&br, &c);
    assert_int_equal(c.names, 1);
    assert_int_equal(c.procs, 1);
    bus_bridge_fini(&br);
    assert_null(f.s[0].b.bridge);
    teardown(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_publish_crosses_both_ways_once_and_is_kept_on_both_sides),
        cmocka_unit_test(test_the_old_side_history_seeds_the_new_one_in_order),
        cmocka_unit_test(test_the_history_sent_on_open_is_bounded),
        cmocka_unit_test(test_big_messages_cross_a_seqpacket_link),
        cmocka_unit_test(test_a_send_to_a_name_reaches_its_holder_on_the_peer),
        cmocka_unit_test(test_names_are_unique_across_both_and_a_tie_goes_to_the_lower_rank),
        cmocka_unit_test(test_a_tie_after_a_release_leaves_no_stale_name),
        cmocka_unit_test(test_members_and_topics_list_both_sides),
        cmocka_unit_test(test_broadcasts_cross_and_wills_reach_both_once),
        cmocka_unit_test(test_when_the_link_closes_the_peer_state_goes_and_its_wills_are_published),
        cmocka_unit_test(test_a_full_outbox_cuts_the_link_and_both_sides_forget_the_peer),
        cmocka_unit_test(test_the_outbox_is_bounded_when_the_peer_does_not_read),
        cmocka_unit_test(test_a_peer_speaking_nonsense_is_cut),
        cmocka_unit_test(test_malformed_bridge_frames_are_refused),
        cmocka_unit_test(test_a_link_closed_after_its_bus_is_finished_is_harmless),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
