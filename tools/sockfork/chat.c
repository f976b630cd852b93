/*
 * chat.c - `sockfork chat`: the chat rules, run in each client's process.
 *
 * The supervisor only routes (docs/protocol.md): a room is the topic
 * "room:NAME", a nickname the bus name "nick:NAME", /msg a send to a name,
 * "left (connection lost)" a will. Each child keeps its client's state,
 * reads its client and its channel together, and never blocks on either:
 * what waits for a slow client is bounded (cfg.backlog), and a client that
 * lets it fill is cut off, costing nobody else anything.
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#define NICK_MAX 32
#define ROOM_MAX 32
#define FLUSH_AT_EXIT_MS 3000
#define SLOW_S 2.0                /* a full backlog the client takes nothing of */
#define JOIN_WAIT_S 5.0           /* for the bus to confirm a subscription */
#define SKIP_NOTE_MAX 128         /* held keeps room for the line that tells of a gap */
#define HISTORY_MARK "[history] " /* before each replayed line */

/* Set by chat_option in the supervisor before it runs; children inherit it. */
static struct {
    size_t line_max;
    double rate, burst;
    size_t backlog;
    unsigned history;
} cfg = {4096, 10.0, 20.0, 256 * 1024, 20};

enum { ASKING, CLAIMING, ACTIVE };

typedef struct chat {
    sf_conn *conn;
    jmp_buf done;               /* leave() ends the handler from anywhere in it */
    int fd;
    int state;
    char nick[NICK_MAX + 1];
    char room[ROOM_MAX + 1];    /* "" until the first join is confirmed */
    char wanted[NICK_MAX + 1];  /* the nickname being claimed */
    pid_t pid;
    /* A join waits for the bus to confirm the subscription (a message to
     * ourselves, after it), so that a join that failed is never announced;
     * the new room's lines wait in `held` meanwhile, and so do the client's
     * lines after the /join. */
    char joining[ROOM_MAX + 1];
    int greet;                  /* the first join: say hello when it is done */
    char join_error[256];       /* why the subscription was refused; "" if it was not */
    char *held;                 /* at most cfg.backlog; once joined, moved to out as it frees */
    size_t held_len;
    unsigned held_skipped;      /* lines of the joined room that did not fit in held */
    double join_deadline;       /* the confirmation is given up on then */
    unsigned join_seq;          /* which join a confirmation is for */
    int msg_failed;             /* the /msg being answered went nowhere */
    char *in;                   /* the client's unfinished line */
    size_t in_len;
    int discarding;             /* inside a line that was too long */
    char *out;                  /* what waits for the client, at most cfg.backlog */
    size_t out_len;
    char sent_last;             /* the last byte the client was sent */
    double full_since;          /* the backlog has had no room since; 0: it has */
    double tokens, last;        /* the flood limit's bucket */
    int warned;
    /* Output offload (docs/design.md): once the nickname is set, the
     * supervisor writes to the client, this process never again: its own
     * lines go as requests (say_line), the rooms' lines from the bus
     * straight to the socket. out stays empty from then on. */
    int off;
    char cut_note[128];         /* a history cut, told when the join is done */
} chat;

static volatile sig_atomic_t got_term;

static void on_term(int sig)
{
    (void)sig;
    got_term = 1;
}

/* ------------------------------------------------------------ options */

int chat_option(const char *name, const char *value, sf_server_opts *opts)
{
    unsigned u;

    if (strcmp(name, "history") == 0) {
        if (cli_parse_uint(value, 100000, &u) < 0) {
            cli_error("chat: --history wants a number from 0 to 100000, not '%s'", value);
            return -1;
        }
        cfg.history = u;
        opts->topic_history = u;
    } else if (strcmp(name, "line-max") == 0) {
        if (cli_parse_size(value, 60 * 1024, &u) < 0 || u < 16) {
            cli_error("chat: --line-max wants a size from 16 to 60K, not '%s'", value);
            return -1;
        }
        cfg.line_max = u;
    } else if (strcmp(name, "client-backlog") == 0) {
        if (cli_parse_size(value, 1u << 30, &u) < 0 || u < 1024) {
            cli_error("chat: --client-backlog wants a size from 1K to 1024M, not '%s'", value);
            return -1;
        }
        cfg.backlog = u;
    } else if (strcmp(name, "flood") == 0) {
        char *end;
        double rate = strtod(value, &end), burst;
        if (end == value || !(rate > 0) || rate > 1e6)
            goto bad_flood;
        burst = *end == '/' ? strtod(end + 1, &end) : 2 * rate;
        if (*end || !(burst >= 1) || burst > 1e6)
            goto bad_flood;
        cfg.rate = rate;
        cfg.burst = burst;
    }
    return 0;
bad_flood:
    cli_error("chat: --flood wants RATE or RATE/BURST (lines a second, a burst of at least 1), "
              "not '%s'", value);
    return -1;
}

/* 0.3 ms: a room's burst, each member's line read over a few loop passes,
 * then goes out in one flush per member, not one per pass (a wake-up of
 * each member's process per pass); a lone line waits that long. Measured
 * in docs/benchmarks.md, "One instance ahead of Redis". */
#define CHAT_BUS_GATHER_S 0.0003

void chat_tune(sf_server_opts *opts)
{
    opts->bus_gather_s = CHAT_BUS_GATHER_S;
}

int chat_check(const sf_server_opts *opts)
{
    /* A line's worst case after cleaning (every byte a U+FFFD) plus a
     * nickname and the "<nick> " around it must fit in one message, and in
     * a receiver's backlog, or a client could be cut off for one line. */
    size_t worst = 3 * cfg.line_max + 2 * NICK_MAX + 16 + sizeof HISTORY_MARK;

    if (worst > opts->chan_max) {
        cli_error("chat: --line-max %zu needs --channel-max of at least %zu (a line of control "
                  "characters triples when they are replaced)", cfg.line_max, worst);
        return -1;
    }
    if (worst + 2 > cfg.backlog) {
        cli_error("chat: --client-backlog must hold one line: at least %zu for --line-max %zu",
                  worst + 2, cfg.line_max);
        return -1;
    }
    return 0;
}

/* -------------------------------------------------------------- output */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Writes what the socket takes now. Returns 0, or -1 if the client is gone. */
static int flush_some(chat *ch)
{
    while (ch->out_len > 0) {
        ssize_t n = write(ch->fd, ch->out, ch->out_len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        }
        if (n == 0)
            return 0;
        ch->sent_last = ch->out[n - 1];
        ch->full_since = 0; /* the client takes what it is sent */
        memmove(ch->out, ch->out + n, ch->out_len - (size_t)n);
        ch->out_len -= (size_t)n;
    }
    return 0;
}

/* The longest line a sibling may send us, as we show it. */
static size_t longest_line(void)
{
    return 3 * cfg.line_max + 2 * NICK_MAX + 16 + sizeof HISTORY_MARK;
}

/* After a join: moves the lines held for it to the backlog, whole lines,
 * as far as they fit. */
static void move_held(chat *ch)
{
    size_t i = 0;

    while (i < ch->held_len) {
        char *end = memchr(ch->held + i, '\n', ch->held_len - i);
        size_t n = (size_t)(end - (ch->held + i)) + 1;
        if (ch->out_len + n > cfg.backlog)
            break;
        memcpy(ch->out + ch->out_len, ch->held + i, n);
        ch->out_len += n;
        i += n;
    }
    memmove(ch->held, ch->held + i, ch->held_len - i);
    ch->held_len -= i;
    if (ch->held_len == 0) {
        free(ch->held);
        ch->held = NULL;
    }
}

/* Lines held for a join that is done, still to go to the backlog: until
 * they have, nothing else is read from the channel or the client. */
static int pouring(const chat *ch)
{
    return !ch->joining[0] && ch->held_len > 0;
}

/* Whether the backlog has room for one more line from the channel. What
 * does not fit waits in the channel, whose queue in the supervisor then
 * holds the senders (backpressure): a client that reads, however slowly,
 * is never cut off for a burst. */
static int has_room(chat *ch)
{
    if (pouring(ch)) {
        move_held(ch);
        if (pouring(ch)) {
            (void)flush_some(ch);
            move_held(ch);
        }
        if (pouring(ch))
            return 0;
    }
    if (cfg.backlog - ch->out_len >= longest_line())
        return 1;
    (void)flush_some(ch); /* a client gone is seen by the loop */
    return cfg.backlog - ch->out_len >= longest_line();
}

static void leave(chat *ch, const char *announce, const char *to_client, int status)
    __attribute__((noreturn));

/* What the client is told when the bus cut this process off: its queue in
 * the supervisor filled, which for chat means the client took its lines
 * more slowly than they came (this process reads the channel only while
 * the client's backlog has room). */
#define KICKED_TEXT "*** You were disconnected: messages for you piled up faster than you read them."

/* The client lets its backlog fill and takes nothing of it for SLOW_S: it
 * is not reading, and its room (held behind it) may not wait longer. What
 * waits is dropped; the client is told why, after the end of the line it
 * has part of. */
/* Offloaded, on the way out: no line of a room may follow the last words
 * (the supervisor writes the rooms' lines until it reads this). */
static void topic_of(char *buf, size_t len, const char *room);

static void rooms_off(chat *ch)
{
    char topic[ROOM_MAX + 8];

    if (ch->room[0]) {
        topic_of(topic, sizeof topic, ch->room);
        (void)sf_conn_unsubscribe(ch->conn, topic);
    }
    if (ch->joining[0] && strcmp(ch->joining, ch->room) != 0) {
        topic_of(topic, sizeof topic, ch->joining);
        (void)sf_conn_unsubscribe(ch->conn, topic);
    }
}

static void __attribute__((noreturn)) too_slow_for(chat *ch, size_t waiting)
{
    char text[160], why[160];

    snprintf(text, sizeof text, "slow client: %zu bytes waiting for it; disconnected", waiting);
    (void)sf_conn_log(ch->conn, text);
    if (ch->off) {
        rooms_off(ch);
        /* The supervisor drops what waits and ends the line the client has
         * part of (the part of CRLF it has not had), then says why. */
        snprintf(why, sizeof why, "*** You were disconnected: you are not reading "
                 "(%zu bytes were waiting for you).\r\n", waiting);
        (void)sf_conn_out_reset(ch->conn, "\r\n", why, strlen(why));
        leave(ch, "was disconnected (not reading)", NULL, 0);
    }
    snprintf(why, sizeof why, "%s*** You were disconnected: you are not reading "
             "(%zu bytes were waiting for you).",
             ch->sent_last == '\r' ? "\n" : ch->sent_last && ch->sent_last != '\n' ? "\r\n" : "", waiting);
    ch->out_len = 0;
    leave(ch, "was disconnected (not reading)", why, 0);
}

static void __attribute__((noreturn)) too_slow(chat *ch)
{
    too_slow_for(ch, ch->out_len);
}

/* The bus cut us off. What waits for the client goes if the reason does
 * not fit behind it: the reason matters more. */
static void __attribute__((noreturn)) kicked(chat *ch)
{
    char why[sizeof KICKED_TEXT + 2], last;

    if (ch->off)
        leave(ch, NULL, NULL, 0); /* the supervisor wrote KICKED_TEXT last */

    if (ch->out_len + sizeof why + 2 > cfg.backlog)
        ch->out_len = 0;
    last = ch->out_len ? ch->out[ch->out_len - 1] : ch->sent_last;
    snprintf(why, sizeof why, "%s%s", last == '\r' ? "\n" : last && last != '\n' ? "\r\n" : "",
             KICKED_TEXT);
    leave(ch, NULL, why, 0);
}

/* Whether the supervisor has closed its end of the channel, waiting up to
 * ms for it: after SIGTERM, a closed channel means a bus kick (the bus
 * signals first, then closes: bus.c, kick), an open one a kick through
 * `sockfork ctl` or the idle timeout. POLLRDHUP says so even with
 * messages still unread. */
static int channel_closed(int chan, int ms)
{
    struct pollfd p = {chan, POLLRDHUP, 0};
    int n;

    do
        n = poll(&p, 1, ms);
    while (n < 0 && errno == EINTR);
    return n > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

/* The channel ended (EOF or an error). SIGTERM with it means a bus kick:
 * the bus asks for the signal before it closes the channel, but a child
 * forked by the spawner is signalled through it, so the signal may come a
 * moment after the end: it is waited for, briefly. At shutdown the
 * channels close first and the signal comes only after the grace period
 * (a shutdown with --grace 0 may be told as a kick). */
#define KICK_SIGNAL_WAIT_MS 500
#define SHUTDOWN_TEXT "*** The server is shutting down. Bye."
static void __attribute__((noreturn)) channel_ended(chat *ch)
{
    sigset_t term;
    struct timespec wait = {0, KICK_SIGNAL_WAIT_MS * 1000000L};
    int sig;

    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    /* Offloaded, the supervisor wrote why itself (kick or shutdown words):
     * nothing is left to tell the client. */
    if (ch->off)
        leave(ch, NULL, NULL, 0);
    if (got_term)
        kicked(ch);
    do
        sig = sigtimedwait(&term, NULL, &wait); /* SIGTERM is blocked outside ppoll */
    while (sig < 0 && errno == EINTR);
    if (sig == SIGTERM)
        kicked(ch);
    leave(ch, NULL, SHUTDOWN_TEXT, 0);
}

/* Queues one line as it is (CRLF added) for the client: what say formats,
 * and the lines siblings send, relayed without formatting. The loop reads
 * the channel only while the backlog has room for one more line, and
 * writes once it has handled everything at hand: one write for a whole
 * burst of lines. */
static void say_line(chat *ch, const void *data, size_t n)
{
    if (ch->off) {
        /* In order with every other request; one that does not fit the
         * client's buffer in the supervisor is reported (out_stalled). */
        char small[1024], *line = n + 2 <= sizeof small ? small : malloc(n + 2);
        if (!line)
            return;
        memcpy(line, data, n);
        memcpy(line + n, "\r\n", 2);
        (void)sf_conn_out_write(ch->conn, line, n + 2);
        if (line != small)
            free(line);
        return;
    }
    if (ch->out_len + n + 2 > cfg.backlog)
        (void)flush_some(ch);
    if (ch->out_len + n + 2 > cfg.backlog)
        too_slow(ch); /* only a line longer than a sibling's can (a notice) */
    memcpy(ch->out + ch->out_len, data, n);
    memcpy(ch->out + ch->out_len + n, "\r\n", 2);
    ch->out_len += n + 2;
}

static void say(chat *ch, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(chat *ch, const char *fmt, ...)
{
    char *line;
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vasprintf(&line, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    say_line(ch, line, (size_t)n);
    free(line);
}

/* ---------------------------------------------------------------- text */

/* Copies a client's line into out (room for 3 * n + 1) as valid UTF-8 with
 * no control character (C0, DEL, C1) but tab: anything else becomes U+FFFD. */
static size_t clean(const unsigned char *in, size_t n, char *out)
{
    return sf_text_clean(out, 3 * n + 1, in, n, "\xef\xbf\xbd"); /* U+FFFD */
}

/* Nicknames and rooms: 1 to max of letters, digits, '-', '_'. */
static int valid_name(const char *s, size_t max)
{
    size_t n = strlen(s);

    if (n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return 0;
    }
    return 1;
}

/* A nickname as the bus knows it: "nick:" and the name with ASCII letters
 * in lower case, so ALICE and alice are one nickname (nicknames are ASCII:
 * valid_name). What the others see keeps the user's case: it is also held
 * as the name "as:NAME", for /who. */
static void nick_name(char *buf, size_t len, const char *nick)
{
    size_t n = (size_t)snprintf(buf, len, "nick:%s", nick);

    for (size_t i = 5; i < n && i < len; i++) {
        if (buf[i] >= 'A' && buf[i] <= 'Z')
            buf[i] = (char)(buf[i] - 'A' + 'a');
    }
}

static int same_nick(const char *a, const char *b)
{
    char x[NICK_MAX + 8], y[NICK_MAX + 8];

    nick_name(x, sizeof x, a);
    nick_name(y, sizeof y, b);
    return strcmp(x, y) == 0;
}

/* ------------------------------------------------------------ the bus */

static void topic_of(char *buf, size_t len, const char *room)
{
    snprintf(buf, len, "room:%s", room);
}

/* Whether a message's topic is ROOM's (never for no room): what topic_of
 * makes, compared without making it, as it is for every line relayed. */
static int is_room_topic(const char *topic, const char *room)
{
    return room[0] && strncmp(topic, "room:", 5) == 0 && strcmp(topic + 5, room) == 0;
}

/* A message to ourselves: it comes back once the bus has carried out
 * every request sent before it (one child's requests are handled in
 * order), after any error they caused. Its first byte says what for. */
static int marker(chat *ch, char what, const char *text)
{
    char *buf;
    int n, rc;

    if ((n = asprintf(&buf, "%c%s", what, text)) < 0)
        return -ENOMEM;
    rc = sf_conn_send(ch->conn, (int)ch->pid, buf, (size_t)n);
    free(buf);
    return rc;
}

static void publish(chat *ch, const char *room, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void publish(chat *ch, const char *room, const char *fmt, ...)
{
    char topic[ROOM_MAX + 8], *text;
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vasprintf(&text, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    topic_of(topic, sizeof topic, room);
    if (room[0])
        (void)sf_conn_publish(ch->conn, topic, text, (size_t)n);
    free(text);
}

/* What the room hears if this process dies without saying goodbye. */
static void set_will(chat *ch)
{
    char topic[ROOM_MAX + 8], text[128];
    int n = snprintf(text, sizeof text, "*** %s has left %s (connection lost)", ch->nick, ch->room);

    topic_of(topic, sizeof topic, ch->room);
    (void)sf_conn_will(ch->conn, topic, text, (size_t)n);
    snprintf(text, sizeof text, "%s in %s", ch->nick, ch->room);
    (void)sf_conn_status(ch->conn, text);
}

static void say(chat *ch, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A join the bus did not confirm in JOIN_WAIT_S (its answer dropped: a
 * full queue under --channel-full drop), or whose request could not be
 * sent. It is reported failed, not confirmed: the subscription may have
 * been refused, and a join is never announced unless it is known to have
 * happened. The subscription, if made, is undone; a late confirmation is
 * for an old join_seq and ignored. */
static void join_failed(chat *ch, const char *why)
{
    char topic[ROOM_MAX + 8];

    if (strcmp(ch->joining, ch->room) != 0) {
        topic_of(topic, sizeof topic, ch->joining);
        (void)sf_conn_unsubscribe(ch->conn, topic);
    }
    if (ch->greet)
        say(ch, "*** Hello %s. You cannot be put in %s (%s): /join another room.", ch->nick,
            ch->joining, why);
    else
        say(ch, "*** cannot join %s (%s)%s%s", ch->joining, why,
            ch->room[0] ? "; you are still in " : "", ch->room);
    ch->greet = 0;
    ch->joining[0] = '\0';
    ch->held_len = 0;
}

/* Offloaded, the room's lines go from the supervisor to the client, each
 * as "LINE\r\n" (a replayed one after HISTORY_MARK), held behind the gate
 * until the join is confirmed (joined). */
static int subscribe_room(chat *ch, const char *topic)
{
    sf_out_format f = {"", HISTORY_MARK, "\r\n", 1, "*** "};

    if (ch->off)
        return sf_conn_subscribe_out(ch->conn, topic, cfg.history, &f);
    return sf_conn_subscribe(ch->conn, topic, cfg.history);
}

/* Subscribes to a room and asks for the bus's confirmation: the rest is
 * done by joined(), when it comes, or by join_failed(). */
static void join(chat *ch, const char *room)
{
    char topic[ROOM_MAX + 8], seq[16];

    snprintf(ch->joining, sizeof ch->joining, "%s", room);
    ch->join_error[0] = '\0';
    ch->held_len = 0;
    ch->held_skipped = 0;
    ch->join_deadline = now_s() + JOIN_WAIT_S;
    snprintf(seq, sizeof seq, "%u", ++ch->join_seq);
    topic_of(topic, sizeof topic, room);
    ch->cut_note[0] = '\0';
    if (subscribe_room(ch, topic) < 0 || marker(ch, 'j', seq) < 0)
        join_failed(ch, "the server did not take the request");
}

/* A line of the room being joined, kept until the join is confirmed; past
 * the backlog's size, the earliest are what the client sees, and the rest
 * are counted, to be told (never dropped silently). */
static void hold_line(chat *ch, const char *mark, const void *data, size_t n)
{
    size_t ml = strlen(mark);

    if (!ch->held && !(ch->held = malloc(cfg.backlog))) {
        ch->held_skipped++;
        return;
    }
    if (ch->held_skipped || ch->held_len + ml + n + 2 + SKIP_NOTE_MAX > cfg.backlog) {
        ch->held_skipped++;
        return;
    }
    memcpy(ch->held + ch->held_len, mark, ml);
    memcpy(ch->held + ch->held_len + ml, data, n);
    memcpy(ch->held + ch->held_len + ml + n, "\r\n", 2);
    ch->held_len += ml + n + 2;
}

static void say_line(chat *ch, const void *data, size_t n);

/* The bus has handled the subscription: now the move is made and told. */
static void joined(chat *ch)
{
    char topic[ROOM_MAX + 8], room[ROOM_MAX + 1];

    memcpy(room, ch->joining, sizeof room);
    ch->joining[0] = '\0';
    if (ch->join_error[0]) {
        if (ch->greet)
            say(ch, "*** Hello %s. You cannot be put in %s (%s): /join another room.", ch->nick,
                room, ch->join_error);
        else
            say(ch, "*** cannot join %s (%s)%s%s", room, ch->join_error,
                ch->room[0] ? "; you are still in " : "", ch->room);
        ch->greet = 0;
        ch->held_len = 0;
        return;
    }
    if (ch->room[0]) {
        publish(ch, ch->room, "*** %s has left %s", ch->nick, ch->room);
        topic_of(topic, sizeof topic, ch->room);
        (void)sf_conn_unsubscribe(ch->conn, topic);
    }
    memcpy(ch->room, room, sizeof ch->room);
    if (ch->greet)
        say(ch, "*** Hello %s, you are in %s. /help lists the commands.", ch->nick, room);
    else
        say(ch, "*** you are now in %s", room);
    ch->greet = 0;
    if (ch->off) {
        /* The old room was left above, before the reply; the new one's
         * history and lines since wait behind the gate, in order: they go
         * now, after the note of a history cut, if any. */
        char one[ROOM_MAX + 80], more[ROOM_MAX + 80];
        if (ch->cut_note[0])
            say(ch, "%s", ch->cut_note);
        ch->cut_note[0] = '\0';
        snprintf(one, sizeof one, " more line of %s skipped while you were joining (too many "
                 "to keep)\r\n", room);
        snprintf(more, sizeof more, " more lines of %s skipped while you were joining (too many "
                 "to keep)\r\n", room);
        (void)sf_conn_out_gate(ch->conn, "*** ", one, more);
    }
    /* The room's history and what was said since, in order: moved to the
     * backlog as it has room (move_held), before anything else of the
     * room is read. */
    if (ch->held_skipped) {
        char text[SKIP_NOTE_MAX];
        int n = snprintf(text, sizeof text - 2, "*** %u more line%s of %s skipped while you were "
                         "joining (too many to keep)", ch->held_skipped,
                         ch->held_skipped == 1 ? "" : "s", room);
        if (ch->held) {
            memcpy(ch->held + ch->held_len, text, (size_t)n);
            memcpy(ch->held + ch->held_len + n, "\r\n", 2);
            ch->held_len += (size_t)n + 2;
        } else {
            say_line(ch, text, (size_t)n);
        }
        ch->held_skipped = 0;
    }
    publish(ch, room, "*** %s has joined %s", ch->nick, room);
    set_will(ch);
}

/* Says goodbye to the room (unless announce is NULL) and the client, gives
 * the client a moment to read it, and ends the handler: it returns status
 * (a prefork worker goes on to its next client with nothing of this one's
 * left: the buffers are freed here). */
static void leave(chat *ch, const char *announce, const char *to_client, int status)
{
    if (ch->state == ACTIVE && announce)
        publish(ch, ch->room, "*** %s %s", ch->nick, announce);
    (void)sf_conn_will(ch->conn, NULL, NULL, 0);
    if (ch->off) {
        rooms_off(ch);
        /* The supervisor writes it, after everything before, and gives
         * the client its bounded last flush once this process is gone. */
        if (to_client)
            say_line(ch, to_client, strlen(to_client));
        free(ch->in);
        free(ch->out);
        free(ch->held);
        ch->in = ch->out = ch->held = NULL;
        longjmp(ch->done, status + 1);
    }
    if (to_client && ch->out_len + strlen(to_client) + 2 <= cfg.backlog) {
        size_t n = strlen(to_client);
        memcpy(ch->out + ch->out_len, to_client, n);
        memcpy(ch->out + ch->out_len + n, "\r\n", 2);
        ch->out_len += n + 2;
    }
    /* Meanwhile the channel is read and what comes is dropped: a room must
     * not be held (backpressure) by a member on its way out. */
    int chan = sf_conn_channel_fd(ch->conn);
    double deadline = now_s() + FLUSH_AT_EXIT_MS / 1000.0;
    while (ch->out_len > 0 && flush_some(ch) == 0) {
        struct pollfd p[2] = {{ch->fd, POLLOUT, 0}, {chan, POLLIN, 0}};
        int left = (int)((deadline - now_s()) * 1000);
        if (left <= 0 || poll(p, 2, left) < 0)
            break;
        while (p[1].revents || sf_conn_msg_pending(ch->conn)) {
            sf_msg m;
            if (sf_conn_recv(ch->conn, &m) <= 0) {
                p[1].fd = -1;
                break;
            }
            sf_msg_free(&m);
            if (!sf_conn_msg_pending(ch->conn))
                break;
        }
        if (p[1].fd < 0)
            chan = -1; /* closed (or broken): poll the client alone */
    }
    free(ch->in);
    free(ch->out);
    free(ch->held);
    ch->in = ch->out = ch->held = NULL;
    longjmp(ch->done, status + 1);
}

/* ------------------------------------------------------------ commands */

static void cmd_help(chat *ch)
{
    say(ch, "*** /nick NAME  /join ROOM  /who [ROOM]  /rooms  /msg NICK TEXT  /me ACTION  /quit  /help");
}

/* Splits "/cmd rest": returns the command, *rest points past its spaces. */
static const char *split(char *line, char **rest)
{
    char *sp = strchr(line, ' ');

    if (!sp) {
        *rest = line + strlen(line);
        return line;
    }
    *sp = '\0';
    for (sp++; *sp == ' '; sp++)
        ;
    *rest = sp;
    return line;
}

static void command(chat *ch, char *line)
{
    char *rest, topic[ROOM_MAX + 8], name[NICK_MAX + 8];
    const char *cmd = split(line, &rest);

    if (strcmp(cmd, "/help") == 0) {
        cmd_help(ch);
    } else if (strcmp(cmd, "/quit") == 0) {
        leave(ch, "has quit", "*** Bye.", 0);
    } else if (strcmp(cmd, "/me") == 0) {
        if (!*rest)
            say(ch, "*** usage: /me ACTION");
        else if (!ch->room[0])
            say(ch, "*** you are in no room: /join ROOM");
        else
            publish(ch, ch->room, "* %s %s", ch->nick, rest);
    } else if (strcmp(cmd, "/nick") == 0) {
        if (!valid_name(rest, NICK_MAX)) {
            say(ch, "*** usage: /nick NAME (1 to %d letters, digits, '-' or '_')", NICK_MAX);
        } else if (strcmp(rest, ch->nick) == 0) {
            say(ch, "*** you are %s already", ch->nick);
        } else {
            snprintf(ch->wanted, sizeof ch->wanted, "%s", rest);
            nick_name(name, sizeof name, rest);
            (void)sf_conn_claim(ch->conn, name);
        }
    } else if (strcmp(cmd, "/join") == 0) {
        if (!valid_name(rest, ROOM_MAX)) {
            say(ch, "*** usage: /join ROOM (1 to %d letters, digits, '-' or '_')", ROOM_MAX);
        } else if (strcmp(rest, ch->room) == 0) {
            say(ch, "*** you are in %s already", ch->room);
        } else {
            join(ch, rest);
        }
    } else if (strcmp(cmd, "/who") == 0) {
        const char *room = *rest ? rest : ch->room;
        if (!*room) {
            say(ch, "*** you are in no room: /who ROOM");
        } else if (!valid_name(room, ROOM_MAX)) {
            say(ch, "*** usage: /who [ROOM]");
        } else {
            topic_of(topic, sizeof topic, room);
            (void)sf_conn_members(ch->conn, topic);
        }
    } else if (strcmp(cmd, "/rooms") == 0) {
        (void)sf_conn_topics(ch->conn, "room:");
    } else if (strcmp(cmd, "/msg") == 0) {
        char *text;
        const char *to = split(rest, &text);
        if (!valid_name(to, NICK_MAX) || !*text) {
            say(ch, "*** usage: /msg NICK TEXT");
        } else {
            /* The echo comes back with a marker, after the bus's "no such
             * nick" if there is one: the sender is answered once. */
            char *msg, *echo;
            int n = asprintf(&msg, "*%s* %s", ch->nick, text);
            nick_name(name, sizeof name, to);
            if (n > 0 && sf_conn_send_name(ch->conn, name, msg, (size_t)n) == 0 &&
                asprintf(&echo, "-> *%s* %s", to, text) > 0) {
                (void)marker(ch, 'm', echo);
                free(echo);
            }
            if (n > 0)
                free(msg);
        }
    } else {
        say(ch, "*** unknown command %s (try /help)", cmd);
    }
}

/* The token bucket. Returns 1 if the line may go, 0 if it is dropped; a
 * client still flooding at twice the burst is cut off. */
static int flood_ok(chat *ch)
{
    double t = now_s();

    ch->tokens += (t - ch->last) * cfg.rate;
    if (ch->tokens > cfg.burst)
        ch->tokens = cfg.burst;
    ch->last = t;
    if (ch->tokens >= 1) {
        ch->tokens -= 1;
        ch->warned = 0;
        return 1;
    }
    ch->tokens -= 1;
    if (ch->tokens < -cfg.burst) {
        (void)sf_conn_log(ch->conn, "flooding: disconnected");
        leave(ch, "was disconnected (flooding)", "*** You were disconnected for flooding.", 0);
    }
    if (!ch->warned) {
        say(ch, "*** slow down: at most %g lines a second; lines are dropped until you do", cfg.rate);
        ch->warned = 1;
    }
    return 0;
}

/* One whole line from the client (no CR or LF). */
static void line(chat *ch, const unsigned char *raw, size_t n)
{
    char *text = malloc(3 * n + 1);

    if (!text)
        leave(ch, "has quit (out of memory)", NULL, 1);
    clean(raw, n, text);
    if (ch->state == ASKING && !flood_ok(ch)) {
        free(text);
        return; /* nickname attempts count against the flood limit too */
    }
    if (ch->state == ASKING && strcmp(text, "/quit") == 0) {
        free(text);
        leave(ch, NULL, "*** Bye.", 0);
    }
    if (ch->state == ASKING) {
        if (!valid_name(text, NICK_MAX)) {
            say(ch, "*** a nickname is 1 to %d letters, digits, '-' or '_'. Your nickname?", NICK_MAX);
        } else {
            char name[NICK_MAX + 8];
            snprintf(ch->wanted, sizeof ch->wanted, "%s", text);
            nick_name(name, sizeof name, text);
            (void)sf_conn_claim(ch->conn, name);
            ch->state = CLAIMING;
        }
    } else if (ch->state == ACTIVE && text[0] && flood_ok(ch)) {
        if (text[0] == '/')
            command(ch, text);
        else if (!ch->room[0])
            say(ch, "*** you are in no room: /join ROOM");
        else
            publish(ch, ch->room, "<%s> %s", ch->nick, text);
    }
    free(text);
}

/* The whole lines in the input buffer: handled in order; a line over the
 * limit is refused and skipped up to its newline, never cut. Stops while a
 * nickname is being claimed or a room joined: the lines after it wait for
 * the answer. */
/* Whether the client's lines wait: for a nickname's answer, a join's, or
 * the lines held for a join to reach the backlog. */
static int waiting(const chat *ch)
{
    return ch->state == CLAIMING || ch->joining[0] || pouring(ch);
}

/* While the client's lines wait, a /quit among them is not kept waiting:
 * the client leaves at once (the lines before it, not yet handled, go). */
static void quit_if_asked(chat *ch)
{
    for (size_t start = 0; start < ch->in_len;) {
        char *nl = memchr(ch->in + start, '\n', ch->in_len - start);
        size_t len;
        if (!nl)
            return;
        len = (size_t)(nl - (ch->in + start));
        if (len > 0 && ch->in[start + len - 1] == '\r')
            len--;
        if (len == 5 && memcmp(ch->in + start, "/quit", 5) == 0 &&
            !(start == 0 && ch->discarding))
            leave(ch, ch->state == ACTIVE ? "has quit" : NULL, "*** Bye.", 0);
        start += (size_t)(nl - (ch->in + start)) + 1;
    }
}

static void client_lines(chat *ch)
{
    size_t start = 0;

    while (!waiting(ch)) {
        char *nl = memchr(ch->in + start, '\n', ch->in_len - start);
        size_t len;

        if (!nl)
            break;
        len = (size_t)(nl - (ch->in + start));
        if (ch->discarding) {
            ch->discarding = 0;
        } else {
            if (len > 0 && ch->in[start + len - 1] == '\r')
                len--;
            if (len > cfg.line_max)
                say(ch, "*** line too long (over %zu bytes): not sent", cfg.line_max);
            else
                line(ch, (const unsigned char *)ch->in + start, len);
        }
        start += (size_t)(nl - (ch->in + start)) + 1;
    }
    memmove(ch->in, ch->in + start, ch->in_len - start);
    ch->in_len -= start;
    if (waiting(ch))
        quit_if_asked(ch); /* among the lines that now wait */
    if (ch->in_len > cfg.line_max + 1 && !memchr(ch->in, '\n', ch->in_len)) {
        if (!ch->discarding)
            say(ch, "*** line too long (over %zu bytes): not sent", cfg.line_max);
        ch->discarding = 1;
        ch->in_len = 0;
    }
}

static void client_input(chat *ch)
{
    /* Room for the line, a CR, and one byte more to see that it is over. */
    size_t room = cfg.line_max + 2 - ch->in_len;
    ssize_t n;

    if (room == 0)
        return; /* lines waiting fill it: read once they are handled */
    n = read(ch->fd, ch->in + ch->in_len, room);

    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    if (n <= 0)
        leave(ch, "has quit (connection closed)", NULL, 0); /* a line cut short is dropped */
    ch->in_len += (size_t)n;
    client_lines(ch);
}

/* ------------------------------------------------------------ messages */

/* Once the nickname is set: the supervisor becomes the client's writer,
 * with what waits here going first. Its buffer is the client's backlog;
 * a client that takes nothing of it for SLOW_S is reported (too_slow);
 * a kick or a shutdown is told by the supervisor itself, last. Without
 * it (an older supervisor, no memory) this process goes on writing. */
static void offload(chat *ch)
{
    sf_out_opts o = {cfg.backlog, SLOW_S, KICKED_TEXT "\r\n", SHUTDOWN_TEXT "\r\n"};

    if (sf_conn_out_open(ch->conn, &o, ch->out, ch->out_len) == 0) {
        ch->off = 1;
        ch->out_len = 0;
    }
}

static void claimed(chat *ch, const sf_msg *m)
{
    char want[NICK_MAX + 8], old[NICK_MAX + 8], got[NICK_MAX + 1];

    if (strncmp(m->topic, "as:", 3) == 0) {
        /* The shown name follows the nickname: one granted after the
         * nickname changed again is given back; our own refused (held a
         * moment longer by a process on its way out) leaves /who showing
         * the nickname as the bus folds it, and is logged. */
        if (m->ok && strcmp(m->topic + 3, ch->nick) != 0)
            (void)sf_conn_release(ch->conn, m->topic);
        else if (!m->ok && strcmp(m->topic + 3, ch->nick) == 0)
            (void)sf_conn_log(ch->conn, "the shown name of this nickname is taken: /who shows it folded");
        return;
    }
    nick_name(want, sizeof want, ch->wanted);
    if (!ch->wanted[0] || strcmp(m->topic, want) != 0) {
        /* An answer to an earlier /nick, overtaken by a later one: a name
         * granted for it is not wanted any more. */
        nick_name(old, sizeof old, ch->nick);
        if (m->ok && strcmp(m->topic, old) != 0)
            (void)sf_conn_release(ch->conn, m->topic);
        return;
    }
    memcpy(got, ch->wanted, sizeof got); /* the same text, of a size known to fit */
    ch->wanted[0] = '\0';
    if (ch->state == CLAIMING) {
        if (!m->ok) {
            say(ch, "*** the nickname %s is taken. Your nickname?", got);
            ch->state = ASKING;
            return;
        }
        memcpy(ch->nick, got, sizeof ch->nick);
        offload(ch);
        snprintf(old, sizeof old, "as:%s", got);
        (void)sf_conn_claim(ch->conn, old);
        ch->state = ACTIVE;
        ch->greet = 1;
        join(ch, "lobby");
        return;
    }
    if (!m->ok) {
        say(ch, "*** the nickname %s is taken", got);
        return;
    }
    /* The shown name goes first, so that once the nickname is free its
     * shown name is too. A change of case only keeps the nickname. */
    snprintf(old, sizeof old, "as:%s", ch->nick);
    (void)sf_conn_release(ch->conn, old);
    if (!same_nick(ch->nick, got)) {
        nick_name(old, sizeof old, ch->nick);
        (void)sf_conn_release(ch->conn, old);
    }
    snprintf(old, sizeof old, "as:%s", got);
    (void)sf_conn_claim(ch->conn, old);
    publish(ch, ch->room, "*** %s is now known as %s", ch->nick, got);
    say(ch, "*** you are now known as %s", got);
    memcpy(ch->nick, got, sizeof ch->nick);
    if (ch->room[0])
        set_will(ch);
}

/* "PID NAME NAME...\n" lines: each member's shown name ("as:NAME"), or
 * its nickname, among its names. */
static const char *member_name(const char *l, int *len)
{
    const char *w = strstr(l, " as:"), *start;

    if (w)
        start = w + 4;
    else if ((w = strstr(l, " nick:")))
        start = w + 6;
    else
        return NULL;
    const char *stop = strchr(start, ' ');
    *len = stop ? (int)(stop - start) : (int)strlen(start);
    return start;
}

static void who(chat *ch, const sf_msg *m)
{
    char list[4096];
    size_t n = 0;
    int count = 0;
    const char *room = strncmp(m->topic, "room:", 5) == 0 ? m->topic + 5 : m->topic;

    for (char *l = (char *)m->data; l && *l;) {
        char *end = strchr(l, '\n');
        const char *name;
        int len;
        if (end)
            *end = '\0';
        if ((name = member_name(l, &len))) {
            if (n + (size_t)len + 3 < sizeof list)
                n += (size_t)snprintf(list + n, sizeof list - n, "%s%.*s", count ? ", " : "", len, name);
            count++;
        }
        l = end ? end + 1 : NULL;
    }
    list[n] = '\0';
    if (count)
        say(ch, "*** in %s (%d): %s", room, count, list);
    else
        say(ch, "*** nobody is in %s", room);
}

/* "room:NAME COUNT\n" lines. */
static void rooms(chat *ch, const sf_msg *m)
{
    char list[4096];
    size_t n = 0;

    for (char *l = (char *)m->data; l && *l;) {
        char *end = strchr(l, '\n'), *sp;
        if (end)
            *end = '\0';
        sp = strrchr(l, ' ');
        if (sp && strncmp(l, "room:", 5) == 0 && n + (size_t)(sp - l) + 16 < sizeof list)
            n += (size_t)snprintf(list + n, sizeof list - n, "%s%.*s (%s)", n ? ", " : "",
                                  (int)(sp - l - 5), l + 5, sp + 1);
        l = end ? end + 1 : NULL;
    }
    list[n] = '\0';
    say(ch, "*** rooms: %s", n ? list : "none");
}

/* A message to ourselves (see marker()). */
static void marked(chat *ch, const sf_msg *m)
{
    const char *text = (const char *)m->data;

    if (m->len == 0)
        return;
    if (text[0] == 'j' && ch->joining[0] && strtoul(text + 1, NULL, 10) == ch->join_seq) {
        joined(ch);
    } else if (text[0] == 'm') {
        /* The echo, "-> *NICK* TEXT", or, if the bus found nobody, that
         * NICK as the user typed it (the bus knows it folded). */
        if (!ch->msg_failed) {
            say_line(ch, text + 1, m->len - 1);
        } else {
            const char *nick = text + 5, *end = strchr(nick, '*');
            if (m->len > 5 && strncmp(text + 1, "-> *", 4) == 0 && end)
                say(ch, "*** no such nick: %.*s", (int)(end - nick), nick);
        }
        ch->msg_failed = 0;
    }
}

/* The bus replays only the newest of a room's history that fit in our
 * queue, after saying how many it skipped: the joiner is told, in its
 * place (before the replayed lines). */
static void history_cut(chat *ch, const sf_msg *m)
{
    char joining[ROOM_MAX + 8], text[128];
    const char *n = strstr(m->topic, " cut: ");
    unsigned cut;
    int len;

    topic_of(joining, sizeof joining, ch->joining);
    if (!n || sscanf(n + 6, "%u", &cut) != 1 || ch->state != ACTIVE || !ch->joining[0] ||
        m->len != strlen(joining) || memcmp(m->data, joining, m->len) != 0)
        return; /* not the room being joined: nothing of it is shown */
    len = snprintf(text, sizeof text, "*** %u earlier line%s of %s's history skipped (too many to "
                   "send at once)", cut, cut == 1 ? "" : "s", ch->joining);
    if (ch->off)
        snprintf(ch->cut_note, sizeof ch->cut_note, "%s", text); /* told before the gate opens */
    else
        hold_line(ch, "", text, (size_t)len);
}

static void message(chat *ch, sf_msg *m)
{
    switch (m->kind) {
    case SF_MSG_CLAIMED:
        claimed(ch, m);
        break;
    case SF_MSG_MEMBERS:
        who(ch, m);
        break;
    case SF_MSG_TOPICS:
        rooms(ch, m);
        break;
    case SF_MSG_ERROR:
        if (m->ok == ESRCH && strncmp((const char *)m->data, "nick:", 5) == 0) {
            ch->msg_failed = 1; /* told with the echo's marker, as the user typed it */
        } else if (m->ok == ENOSPC && strncmp(m->topic, "history of ", 11) == 0) {
            history_cut(ch, m);
        } else if (strncmp(m->topic, "subscribe:", 10) == 0 && ch->joining[0]) {
            snprintf(ch->join_error, sizeof ch->join_error, "%s", m->topic);
        } else {
            say(ch, "*** %s", m->topic);
        }
        break;
    case SF_MSG_DIRECT:
        if (m->from == (int)ch->pid)
            marked(ch, m);
        else /* from the server (`sockfork ctl send`) */
            say(ch, "*** NOTICE: %s", (const char *)m->data);
        break;
    case SF_MSG_OUT_STALLED:
        /* The client took nothing for SLOW_S with its buffer in the
         * supervisor high, or a line of ours did not fit in it. */
        if (ch->off)
            too_slow_for(ch, (size_t)strtoull((const char *)m->data, NULL, 10));
        break;
    case SF_MSG_BROADCAST:
        /* From the server (`sockfork ctl broadcast`). */
        say(ch, "*** NOTICE: %s", (const char *)m->data);
        break;
    case SF_MSG_TOPIC:
    case SF_MSG_HISTORY: {
        /* Lines made by the sender's rules: the room we are in, and the one
         * being joined (held until the join is confirmed). The history of
         * a room left a moment ago may still be coming: dropped. Replayed
         * lines are marked as such. */
        const char *mark = m->kind == SF_MSG_HISTORY ? HISTORY_MARK : "";
        if (ch->state != ACTIVE)
            break;
        if (is_room_topic(m->topic, ch->joining)) {
            hold_line(ch, mark, m->data, m->len);
        } else if (is_room_topic(m->topic, ch->room)) {
            if (*mark)
                say(ch, "%s%.*s", mark, (int)m->len, (const char *)m->data);
            else
                say_line(ch, m->data, m->len);
        }
        break;
    }
    default: /* SF_MSG_NAME: a /msg */
        if (ch->state == ACTIVE)
            say(ch, "%s", (const char *)m->data);
        break;
    }
}

/* ------------------------------------------------------------ the loop */

int handler_chat(sf_conn *c, void *arg)
{
    /* Static, not on the stack: nothing it holds may be lost in a register
     * by longjmp (one handler runs at a time in a process). */
    static chat ch;
    struct sigaction sa;
    int chan = sf_conn_channel_fd(c), status;
    (void)arg;

    memset(&ch, 0, sizeof ch);
    got_term = 0;
    ch.conn = c;
    ch.pid = getpid();
    ch.fd = sf_conn_fd(c);
    ch.in = malloc(cfg.line_max + 2);
    ch.out = malloc(cfg.backlog);
    if (!ch.in || !ch.out) {
        free(ch.in);
        free(ch.out);
        return 1;
    }
    if ((status = setjmp(ch.done)) != 0)
        return status - 1;
    (void)fcntl(ch.fd, F_SETFL, O_NONBLOCK);
    /* Lines go out as they are written: with Nagle, a line written while
     * the previous one is unacknowledged waits for the client's delayed
     * ACK (40 ms). The loop already writes each burst in one call. */
    (void)setsockopt(ch.fd, IPPROTO_TCP, TCP_NODELAY, &(int){1}, sizeof(int));
    /* SIGTERM with the channel still open: a kick (or the idle timeout).
     * At shutdown the channel closes first, and that is what we act on. */
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    /* SIGTERM is taken only inside ppoll, so it cannot slip in between the
     * check of got_term and the wait. */
    sigset_t term, waitmask;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigprocmask(SIG_BLOCK, &term, &waitmask);
    sigdelset(&waitmask, SIGTERM);

    ch.last = now_s();
    ch.tokens = cfg.burst;
    say(&ch, "*** Welcome to sockfork chat (pid %d). Your nickname?", (int)getpid());
    for (;;) {
        struct pollfd p[2];
        struct timespec wait = {0, 0};
        int room = has_room(&ch);

        if (got_term) {
            if (channel_closed(chan, 200))
                kicked(&ch);
            leave(&ch, "was disconnected by the server", "*** You were disconnected by the server.", 0);
        }
        if (!waiting(&ch) && ch.in_len && memchr(ch.in, '\n', ch.in_len)) {
            client_lines(&ch); /* they waited for held lines to be moved */
            continue;
        }
        double left = -1; /* till what the loop waits for, if anything: < 0 none */
        if (ch.joining[0]) {
            left = ch.join_deadline - now_s();
            if (left <= 0) {
                join_failed(&ch, "no answer from the server");
                if (ch.in_len)
                    client_lines(&ch);
                continue;
            }
        }
        if (!room) {
            double slow;
            if (ch.full_since == 0)
                ch.full_since = now_s();
            slow = ch.full_since + SLOW_S - now_s();
            if (slow <= 0)
                too_slow(&ch);
            if (left < 0 || slow < left)
                left = slow;
        }
        if (sf_conn_msg_pending(c))
            left = 0;
        if (left >= 0) {
            wait.tv_sec = (time_t)left;
            wait.tv_nsec = (long)((left - (double)wait.tv_sec) * 1e9);
        }
        p[0].fd = ch.fd;
        /* The client is read while its lines wait too (for a /quit), as
         * long as there is room for them. */
        p[0].events = (ch.in_len < cfg.line_max + 2 ? POLLIN : 0) | (ch.out_len ? POLLOUT : 0);
        p[1].fd = room ? chan : -1; /* not even its hangup, till there is room */
        p[1].events = POLLIN;
        p[0].revents = p[1].revents = 0;
        if (ppoll(p, 2, left >= 0 ? &wait : NULL, &waitmask) < 0 && errno != EINTR)
            leave(&ch, "has quit (connection lost)", NULL, 1);
        if (room && (p[1].revents || sf_conn_msg_pending(c))) {
            /* Every message already read, then what one more read brings:
             * bounded, so the client's side gets its turn, and only while
             * the backlog has room. */
            for (int i = 0; i < 256 && !got_term && has_room(&ch); i++) {
                sf_msg m;
                int rc = sf_conn_recv(c, &m);
                if (rc == 0 || (rc < 0 && rc != -EINTR))
                    channel_ended(&ch);
                if (rc > 0) {
                    message(&ch, &m);
                    sf_msg_free(&m);
                    if (!waiting(&ch) && ch.in_len)
                        client_lines(&ch); /* what came behind a nickname or a join */
                }
                if (!sf_conn_msg_pending(c))
                    break;
            }
        }
        if (p[0].revents & (POLLIN | POLLHUP | POLLERR))
            client_input(&ch);
        if (ch.out_len && flush_some(&ch) < 0)
            leave(&ch, "has quit (connection lost)", NULL, 0);
    }
}
