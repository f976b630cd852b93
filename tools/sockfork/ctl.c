/* ctl.c - `sockfork ctl`: one request to a running server's control socket,
 * its answer printed for people, or as JSON with --json.
 *
 * Whatever the server answers is printed with every control, bidi and
 * invisible format character escaped: without --control, the server is
 * one found in a directory, and what answers there is not trusted with
 * the terminal. */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define REPLY_MAX (16 << 20)
#define CTL_TIMEOUT_MS 10000
#define UPGRADE_WAIT_MAX_S 3600 /* serve's --upgrade-timeout is at most this */
#define PROBE_TIMEOUT_MS 2000 /* each server, when several answer */
#define SERVERS_MAX 64 /* listed when several run; the others are counted */
/* The longest request line the server reads, without its newline:
 * CTL_LINE_MAX - 1 (src/server/control.h, docs/protocol.md). */
#define REQUEST_MAX (64 * 1024 - 1)
#define FIELD_MAX 2048 /* a server's string, escaped, as printed */

static const char ctl_usage[] =
    "usage: sockfork ctl [OPTIONS] COMMAND [ARGS] [--] [TEXT]\n"
    "\n"
    "Talks to a running `sockfork serve` or `chat` through its control socket.\n"
    "\n"
    "commands:\n"
    "  list             children: pid, peer, state, since, bytes in and out, status\n"
    "  send PID TEXT    queue TEXT on that child's channel; the built-in handler and\n"
    "                   chat write it to their client at once, an --echo child never\n"
    "                   reads it, a PROGRAM only if it reads fd 3\n"
    "  broadcast TEXT   queue TEXT for every child\n"
    "  kick PID         end that connection's child\n"
    "  stats            counters: accepted, active, refused, exits by code and\n"
    "                   signal, channel frames and drops; the server's pid and\n"
    "                   listeners\n"
    "  reload           re-read the files the server reads (as SIGHUP): its rules;\n"
    "                   a file that does not read changes nothing, and says why\n"
    "  upgrade          start the binary now on disk as the new server (as\n"
    "                   SIGUSR2), hand it the listening sockets, and wait until it\n"
    "                   serves; the old one then drains its connections and exits.\n"
    "                   Exit 1 with the reason if the new one fails: the old one\n"
    "                   serves on\n"
    "\n"
    "options (before or after the command; '--' ends them, for a TEXT that\n"
    "begins with '-': sockfork ctl send 1234 -- '-1'):\n"
    "  --control PATH  the server's control socket; default: the only live one\n"
    "                  under $XDG_RUNTIME_DIR/sockfork/ and /tmp/sockfork-$UID/,\n"
    "                  directories that must be yours and closed to others; with\n"
    "                  several there, they are listed\n"
    "  --json          print the server's JSON answer (non-ASCII escaped)\n"
    "  -h, --help      this text\n"
    "  -V, --version   print the version\n"
    "\n"
    "A request is at most 65535 bytes: a TEXT of up to about 65490 bytes, less\n"
    "when quotes, backslashes or control characters need escaping.\n"
    "Exit status: 0 done, 1 the server said no (e.g. no such pid), cannot be\n"
    "reached, or several servers run; 2 bad usage.\n";

/* ------------------------------------------------------------ safe text */

/*
 * A server's string as printed: n bytes of s escaped into out (cap bytes,
 * at least 4) by sf_text_escape, the library's classifier (controls, bidi
 * and invisible format characters, bytes that are not UTF-8, '\'). A
 * string too long ends in "..." (room for which is always kept). Returns
 * out.
 */
static const char *clean(const char *s, size_t n, char *out, size_t cap)
{
    if (sf_text_escape(out, cap - 3, s, n) >= cap - 3)
        strcat(out, "...");
    return out;
}

/* A string member of o, cleaned; dflt if it is missing or not a string. */
static const char *clean_member(json_t *o, const char *key, const char *dflt, char *out, size_t cap)
{
    json_t *v = json_object_get(o, key);

    if (!json_is_string(v))
        return dflt;
    return clean(json_string_value(v), json_string_length(v), out, cap);
}

/* v as JSON, ASCII only: jansson escapes controls and, with
 * JSON_ENSURE_ASCII, everything past U+007F; DEL, which JSON allows raw,
 * can only be inside a string here, so \u007f is as valid. */
static void put_json(json_t *v)
{
    char *text = json_dumps(v, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_ENCODE_ANY);

    if (!text)
        return;
    for (const char *p = text; *p; p++) {
        if (*p == 0x7f)
            fputs("\\u007f", stdout);
        else
            putchar(*p);
    }
    free(text);
}

static void print_json(json_t *reply)
{
    put_json(reply);
    putchar('\n');
}

/* ------------------------------------------------------------ the exchange */

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for fd to be ready for events until the deadline. Returns 1, or 0
 * at the deadline. */
static int wait_fd(int fd, short events, long long deadline)
{
    for (;;) {
        struct pollfd p = {fd, events, 0};
        long long left = deadline - now_ms();
        int rc;

        if (left <= 0)
            return 0;
        rc = poll(&p, 1, (int)left);
        if (rc > 0)
            return 1;
        if (rc < 0 && errno != EINTR)
            return 1; /* let the read or write say what is wrong */
    }
}

/* Writes the request line. Returns 0, or -errno (-ETIMEDOUT at the deadline). */
static int send_line(int fd, const char *text, size_t len, long long deadline)
{
    size_t off = 0;

    while (off < len + 1) {
        const char *p = off < len ? text + off : "\n";
        size_t n = off < len ? len - off : 1;
        ssize_t w;

        if (!wait_fd(fd, POLLOUT, deadline))
            return -ETIMEDOUT;
        w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            return -errno;
        }
        off += (size_t)w;
    }
    return 0;
}

/* Reads one line (bounded in size and time); parses it. */
static json_t *read_reply(int fd, long long deadline, int timeout_ms, char *err, size_t errlen)
{
    size_t have = 0, cap = 4096;
    char *buf = malloc(cap), *nl = NULL;
    json_t *reply = NULL;
    json_error_t jerr;

    if (!buf) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    while (!nl) {
        ssize_t n;

        if (!wait_fd(fd, POLLIN, deadline)) {
            snprintf(err, errlen, "no answer within %d s", timeout_ms / 1000);
            goto fail;
        }
        if (have == cap) {
            char *nb;
            if (cap >= REPLY_MAX) {
                snprintf(err, errlen, "answer longer than %d bytes", REPLY_MAX);
                goto fail;
            }
            nb = realloc(buf, cap * 2);
            if (!nb) {
                snprintf(err, errlen, "out of memory");
                goto fail;
            }
            buf = nb;
            cap *= 2;
        }
        n = read(fd, buf + have, cap - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(err, errlen, "the server closed the connection without an answer");
            goto fail;
        }
        nl = memchr(buf + have, '\n', (size_t)n);
        have += (size_t)n;
    }
    /* A string may hold U+0000: every string printed is length-aware. */
    reply = json_loadb(buf, (size_t)(nl - buf), JSON_ALLOW_NUL, &jerr);
    if (!json_is_object(reply)) {
        snprintf(err, errlen, "the server's answer is not a JSON object");
        json_decref(reply);
        reply = NULL;
    }
fail:
    free(buf);
    return reply;
}

/* Sends one request line, reads one line back. */
static json_t *roundtrip(int fd, const char *text, int timeout_ms, char *err, size_t errlen)
{
    long long deadline = now_ms() + timeout_ms;
    int rc = send_line(fd, text, strlen(text), deadline);

    if (rc == -ETIMEDOUT) {
        snprintf(err, errlen, "the server does not read its control socket");
        return NULL;
    }
    /* A server that hung up may have said why first: read that. */
    if (rc < 0 && rc != -EPIPE && rc != -ECONNRESET) {
        snprintf(err, errlen, "cannot send: %s", strerror(-rc));
        return NULL;
    }
    return read_reply(fd, deadline, timeout_ms, err, errlen);
}

/* ------------------------------------------------------------ answers */

static void fmt_bytes(json_t *v, char *buf, size_t len)
{
    if (json_is_integer(v))
        snprintf(buf, len, "%lld", (long long)json_integer_value(v));
    else
        snprintf(buf, len, "-");
}

/* After an upgrade, where the other generation's connections are. */
static void print_generations(json_t *reply)
{
    json_t *prev = json_object_get(reply, "previous_generation");
    json_t *next = json_object_get(reply, "next_generation");
    char path[FIELD_MAX];

    if (json_is_object(prev))
        printf("the previous generation (pid %lld) serves its own connections to their end: "
               "sockfork ctl --control %s list\n",
               (long long)json_integer_value(json_object_get(prev, "pid")),
               clean_member(prev, "control", "?", path, sizeof path));
    if (json_is_object(next))
        printf("upgraded: new connections go to pid %lld; this generation drains\n",
               (long long)json_integer_value(json_object_get(next, "pid")));
}

static void print_list(json_t *reply, unsigned pid)
{
    json_t *children = json_object_get(reply, "children"), *c;
    size_t i;
    (void)pid;

    /* Prefork: a worker's connections served, between STATE and SINCE. */
    int workers = json_is_string(json_object_get(reply, "mode")) &&
                  strcmp(json_string_value(json_object_get(reply, "mode")), "prefork") == 0;

    if (workers)
        printf("%-8s %-40s %-14s %8s %-20s %12s %12s  %s\n", "PID", "PEER", "STATE", "SERVED",
               "SINCE", "IN", "OUT", "STATUS");
    else
        printf("%-8s %-40s %-12s %-20s %12s %12s  %s\n", "PID", "PEER", "STATE", "SINCE", "IN",
               "OUT", "STATUS");
    json_array_foreach(children, i, c) {
        char since[32] = "-", in[24], out[24], peer[FIELD_MAX], state[FIELD_MAX], status[FIELD_MAX];
        json_t *sv = json_object_get(c, "since");
        time_t t = (time_t)json_number_value(sv);
        struct tm tm;

        if (json_is_number(sv) && localtime_r(&t, &tm))
            strftime(since, sizeof since, "%Y-%m-%d %H:%M:%S", &tm);
        fmt_bytes(json_object_get(c, "bytes_in"), in, sizeof in);
        fmt_bytes(json_object_get(c, "bytes_out"), out, sizeof out);
        if (workers) {
            printf("%-8lld %-40s %-14s %8lld %-20s %12s %12s  %s\n",
                   (long long)json_integer_value(json_object_get(c, "pid")),
                   clean_member(c, "peer", "-", peer, sizeof peer),
                   clean_member(c, "state", "-", state, sizeof state),
                   (long long)json_integer_value(json_object_get(c, "served")), since, in, out,
                   clean_member(c, "status", "", status, sizeof status));
            continue;
        }
        printf("%-8lld %-40s %-12s %-20s %12s %12s  %s\n",
               (long long)json_integer_value(json_object_get(c, "pid")),
               clean_member(c, "peer", "-", peer, sizeof peer),
               clean_member(c, "state", "-", state, sizeof state), since, in, out,
               clean_member(c, "status", "", status, sizeof status));
    }
    print_generations(reply);
}

/* A list of strings and integers only, which reads as words. */
static int is_flat_list(json_t *v)
{
    json_t *e;
    size_t i;

    if (!json_is_array(v))
        return 0;
    json_array_foreach(v, i, e) {
        if (!json_is_string(e) && !json_is_integer(e))
            return 0;
    }
    return 1;
}

/* One value of stats: a string (escaped) or an integer as it is, a list of
 * them space-separated ("none" if empty); anything else (an object inside
 * an object, a list of lists, a fraction, true, null) as ASCII JSON. */
static void print_value(json_t *v)
{
    char buf[FIELD_MAX];
    json_t *e;
    size_t i;

    if (json_is_string(v)) {
        fputs(clean(json_string_value(v), json_string_length(v), buf, sizeof buf), stdout);
    } else if (json_is_integer(v)) {
        printf("%lld", (long long)json_integer_value(v));
    } else if (is_flat_list(v)) {
        if (json_array_size(v) == 0)
            fputs("none", stdout);
        json_array_foreach(v, i, e) {
            if (i)
                putchar(' ');
            print_value(e);
        }
    } else {
        put_json(v);
    }
}

static void print_stats(json_t *reply, unsigned pid)
{
    char k[FIELD_MAX], k2[FIELD_MAX];
    const char *key;
    json_t *v;
    (void)pid;

    json_object_foreach(reply, key, v) {
        if (strcmp(key, "ok") == 0)
            continue;
        printf("%s:", clean(key, strlen(key), k, sizeof k));
        if (json_is_object(v)) {
            const char *key2;
            json_t *v2;
            if (json_object_size(v) == 0)
                printf(" none");
            json_object_foreach(v, key2, v2) {
                printf(" %s=", clean(key2, strlen(key2), k2, sizeof k2));
                print_value(v2);
            }
        } else {
            putchar(' ');
            print_value(v);
        }
        putchar('\n');
    }
}

/* ------------------------------------------------------------ several servers */

/* The server's command line, from /proc (a process of ours), its program
 * named by its basename. */
static void command_of(int pid, char *out, size_t cap)
{
    char path[64], buf[1024], *sp, *start = buf;
    ssize_t n = -1;
    int fd;

    snprintf(path, sizeof path, "/proc/%d/cmdline", pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        n = read(fd, buf, sizeof buf - 1);
        close(fd);
    }
    if (n <= 0) {
        snprintf(out, cap, "?");
        return;
    }
    while (n > 0 && buf[n - 1] == '\0')
        n--;
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] == '\0')
            buf[i] = ' ';
    }
    buf[n] = '\0';
    sp = strchr(buf, ' ');
    for (char *p = buf; p < (sp ? sp : buf + n); p++) {
        if (*p == '/')
            start = p + 1;
    }
    clean(start, (size_t)(buf + n - start), out, cap);
}

/* What a server says it listens on, asked over fd, the connection to it
 * that was checked. */
static void listeners_of(int fd, char *out, size_t cap)
{
    char err[200];
    json_t *reply, *ls, *e;
    size_t i, o = 0;

    snprintf(out, cap, "?");
    reply = roundtrip(fd, "{\"cmd\":\"stats\"}", PROBE_TIMEOUT_MS, err, sizeof err);
    ls = json_object_get(reply, "listeners");
    if (json_is_array(ls)) {
        out[0] = '\0';
        json_array_foreach(ls, i, e) {
            char one[FIELD_MAX];
            if (!json_is_string(e))
                continue;
            clean(json_string_value(e), json_string_length(e), one, sizeof one);
            if (o + strlen(one) + 2 > cap)
                break;
            if (o)
                out[o++] = ' ';
            memcpy(out + o, one, strlen(one) + 1);
            o += strlen(one);
        }
    }
    json_decref(reply);
}

/* The table of servers found: n of them kept, total found. */
static void list_servers(const cli_control_entry *s, int n, int total)
{
    fprintf(stderr, "  %-8s %-30s %-40s %s\n", "PID", "LISTENING ON", "CONTROL", "COMMAND");
    for (int i = 0; i < n; i++) {
        char cmd[256], lis[512], path[FIELD_MAX];

        command_of(s[i].pid, cmd, sizeof cmd);
        listeners_of(s[i].fd, lis, sizeof lis);
        fprintf(stderr, "  %-8d %-30s %-40s %s\n", s[i].pid, lis,
                clean(s[i].path, strlen(s[i].path), path, sizeof path), cmd);
    }
    if (total > n)
        fprintf(stderr, "  and %d more (only the first %d are listed)\n", total - n, n);
}

/* "A", "A or B", "A and B": the directories named in dirs (n of them),
 * escaped, those with mask's bit set (bit i: dirs[i]). */
static void dir_names(char dirs[][CLI_CONTROL_PATH_MAX], int n, unsigned mask, const char *conj,
                      char *out, size_t cap)
{
    size_t o = 0;
    int shown = 0;

    out[0] = '\0';
    for (int i = 0; i < n; i++) {
        char one[FIELD_MAX];

        if (!(mask & (1u << i)))
            continue;
        clean(dirs[i], strlen(dirs[i]), one, sizeof one);
        o += (size_t)snprintf(out + o, o < cap ? cap - o : 0, "%s%s", shown ? conj : "", one);
        shown++;
    }
}

/* Says why the directory dir cannot be trusted (scan said -EPERM; st: what
 * is there). */
static void refuse_dir(const char *dir, const struct stat *st)
{
    char shown[FIELD_MAX];

    clean(dir, strlen(dir), shown, sizeof shown);
    if (!S_ISDIR(st->st_mode))
        cli_error("ctl: %s is not a directory: refusing to look for servers there "
                  "(remove it, or give --control PATH)", shown);
    else
        cli_error("ctl: %s is not private to you (owner uid %u, mode %04o; wanted uid %u, "
                  "mode 0700): refusing to talk to anything in it (remove it, or give "
                  "--control PATH)", shown, (unsigned)st->st_uid, (unsigned)(st->st_mode & 07777),
                  (unsigned)getuid());
}

/* The one live server of ours under the control directories. Returns the
 * connection to it that was checked (its path in path), or -1 after saying
 * why there is none to talk to. A directory that cannot be trusted stops
 * the search before anything is sent anywhere: it is a sign that somebody
 * else is at work, which the user should hear about. */
static int find_server(char *path, size_t len)
{
    cli_control_entry found[SERVERS_MAX];
    char dirs[2][CLI_CONTROL_PATH_MAX], names[2 * FIELD_MAX + 8];
    unsigned all = 0, with = 0;
    int ndirs = cli_control_dirs(dirs, 2), kept = 0, total = 0, fd = -1;

    if (ndirs < 0) {
        cli_error("ctl: cannot look for servers: %s", strerror(-ndirs));
        return -1;
    }
    for (int i = 0; i < ndirs; i++) {
        struct stat st;
        int before = total, rc = cli_control_scan(dirs[i], found, SERVERS_MAX, &kept, &total, &st);

        all |= 1u << i;
        if (total > before)
            with |= 1u << i;
        if (rc == -EPERM) {
            refuse_dir(dirs[i], &st);
            goto out;
        }
        if (rc < 0 && rc != -ENOENT) {
            char shown[FIELD_MAX];
            cli_error("ctl: cannot look for servers under %s: %s",
                      clean(dirs[i], strlen(dirs[i]), shown, sizeof shown), strerror(-rc));
            goto out;
        }
    }
    if (total == 0) {
        dir_names(dirs, ndirs, all, " or ", names, sizeof names);
        cli_error("ctl: no running server found under %s (give --control PATH)", names);
    } else if (total > 1) {
        dir_names(dirs, ndirs, with, " and ", names, sizeof names);
        cli_error("ctl: %d servers run under %s: say which with --control PATH", total, names);
        list_servers(found, kept, total);
    } else if (kept == 0 || strlen(found[0].path) >= len) { /* its path did not fit */
        cli_error("ctl: %s", strerror(ENAMETOOLONG));
    } else {
        strcpy(path, found[0].path);
        fd = found[0].fd;
        found[0].fd = -1; /* the caller's now */
    }
out:
    cli_control_release(found, kept);
    return fd;
}

/* Says that TEXT does not fit in a request (req, dumped, is len bytes):
 * how long it is, escaped too if that made it longer, and how much fits. */
static void text_too_long(json_t *req, size_t len)
{
    size_t raw = json_string_length(json_object_get(req, "text")), bare = 0;
    json_t *empty = json_deep_copy(req);
    char *text = NULL;

    if (empty && json_object_set_new(empty, "text", json_string("")) == 0)
        text = json_dumps(empty, JSON_COMPACT);
    if (text)
        bare = strlen(text);
    if (len - bare == raw)
        cli_error("ctl: TEXT is too long: %zu bytes; at most %zu fit in a request", raw,
                  (size_t)REQUEST_MAX - bare);
    else
        cli_error("ctl: TEXT is too long: %zu bytes, %zu once escaped for JSON; at most %zu "
                  "fit in a request", raw, len - bare, (size_t)REQUEST_MAX - bare);
    free(text);
    json_decref(empty);
}

/* The request's line, or NULL after saying what is wrong: a TEXT that does
 * not fit is reported before connecting (a server would answer an error
 * about a request the user never wrote, and may hang up mid-write). */
static char *request_text(json_t *req)
{
    char *text = json_dumps(req, JSON_COMPACT);
    size_t len = text ? strlen(text) : 0;

    if (!text) {
        cli_error("ctl: out of memory");
        return NULL;
    }
    if (len > REQUEST_MAX) {
        if (json_is_string(json_object_get(req, "text")))
            text_too_long(req, len);
        else
            cli_error("ctl: the request is longer than %d bytes", REQUEST_MAX);
        free(text);
        return NULL;
    }
    return text;
}

/* ------------------------------------------------------------ the command */

/* How each answer is printed for people; pid: the command's, if it has one. */
static void print_sent(json_t *reply, unsigned pid)
{
    /* A fact of the moment, not a judgement on the program: a child that
     * reads its channel may simply not have got to it yet. */
    if (json_is_true(json_object_get(reply, "unread_before")))
        printf("queued for %u, behind earlier text it has not read yet\n", pid);
    else
        printf("queued for %u\n", pid);
}

static void print_broadcast(json_t *reply, unsigned pid)
{
    (void)pid;
    printf("delivered to %lld, dropped for %lld\n",
           (long long)json_integer_value(json_object_get(reply, "delivered")),
           (long long)json_integer_value(json_object_get(reply, "dropped")));
}

static void print_reloaded(json_t *reply, unsigned pid)
{
    char what[FIELD_MAX];
    (void)pid;
    printf("reloaded: %s\n", clean_member(reply, "reloaded", "?", what, sizeof what));
}

/* The upgrade's outcome, from the old generation's last status. */
static void print_upgraded(json_t *reply, unsigned pid)
{
    char msg[FIELD_MAX];
    (void)pid;
    printf("upgraded: %s\n", clean_member(reply, "message", "?", msg, sizeof msg));
}

static void print_kicked(json_t *reply, unsigned pid)
{
    (void)reply;
    printf("kicked %u\n", pid);
}

/* The commands: the words after the name, which are a PID (the first) and
 * a TEXT (the last), what to say when they are not right, and how the
 * answer is printed. */
typedef struct ctl_command {
    const char *name;
    const char *synopsis; /* in the messages that list the commands */
    int nargs;            /* exactly this many words after the name */
    int has_pid, has_text;
    const char *wrong;    /* the usage error; NULL: "takes no arguments" */
    void (*print)(json_t *reply, unsigned pid);
} ctl_command;

static const ctl_command ctl_commands[] = {
    {"list", "list", 0, 0, 0, NULL, print_list},
    {"send", "send PID TEXT", 2, 1, 1, "send wants a PID and one TEXT argument", print_sent},
    {"broadcast", "broadcast TEXT", 1, 0, 1, "broadcast wants one TEXT argument", print_broadcast},
    {"kick", "kick PID", 1, 1, 0, "kick wants one PID", print_kicked},
    {"stats", "stats", 0, 0, 0, NULL, print_stats},
    {"reload", "reload", 0, 0, 0, NULL, print_reloaded},
    {"upgrade", "upgrade", 0, 0, 0, NULL, print_upgraded},
};

#define NCTL_COMMANDS (sizeof ctl_commands / sizeof ctl_commands[0])

/* "list, send PID TEXT, ...": every command, for the usage errors. */
static const char *command_synopses(char *out, size_t cap)
{
    size_t o = 0;

    out[0] = '\0';
    for (size_t i = 0; i < NCTL_COMMANDS; i++)
        o += (size_t)snprintf(out + o, o < cap ? cap - o : 0, "%s%s", i ? ", " : "",
                              ctl_commands[i].synopsis);
    return out;
}

static const ctl_command *ctl_command_of(const char *name)
{
    for (size_t i = 0; i < NCTL_COMMANDS; i++)
        if (strcmp(ctl_commands[i].name, name) == 0)
            return &ctl_commands[i];
    return NULL;
}

/* Whether args fit the command (its PID in *pid); 0, or -1 after saying
 * what is wrong. */
static int check_args(const ctl_command *c, int nargs, char **args, unsigned *pid)
{
    if (nargs == c->nargs && (!c->has_pid || (cli_parse_uint(args[0], 1u << 30, pid) == 0 && *pid)))
        return 0;
    if (c->wrong)
        cli_error("ctl: %s", c->wrong);
    else
        cli_error("ctl: %s takes no arguments, not '%s'", c->name, args[0]);
    return -1;
}

/* The request for command c with args, or NULL after saying what is
 * wrong (*rc: the exit status). */
static json_t *make_request(const ctl_command *c, int nargs, char **args, unsigned *pid, int *rc)
{
    json_t *req, *text = NULL;
    int failed;

    *rc = EXIT_USAGE;
    if (check_args(c, nargs, args, pid) < 0)
        return NULL;
    if (c->has_text && !(text = json_string(args[nargs - 1]))) {
        cli_error("ctl: TEXT must be UTF-8");
        return NULL;
    }
    /* json_object_set_new takes the value even when it fails (req NULL
     * too): nothing leaks on any path. */
    req = json_object();
    failed = json_object_set_new(req, "cmd", json_string(c->name)) < 0;
    if (c->has_pid)
        failed |= json_object_set_new(req, "pid", json_integer((int)*pid)) < 0;
    if (text)
        failed |= json_object_set_new(req, "text", text) < 0;
    if (failed) {
        json_decref(req);
        cli_error("ctl: out of memory");
        *rc = 1;
        return NULL;
    }
    return req;
}

enum { OPT_CONTROL = 256, OPT_JSON };

static const struct option ctl_options[] = {
    {"control", required_argument, NULL, OPT_CONTROL},
    {"json", no_argument, NULL, OPT_JSON},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

/* 0: the command is at optind; 1: done (--help, --version); -1 after
 * saying what is wrong. */
static int parse_ctl_options(int argc, char **argv, const char **path, int *as_json)
{
    int opt;

    opterr = 0;
    optind = 1;
    /* No '+': options may follow the command, as with GNU tools; '--'
     * ends them. */
    while ((opt = getopt_long(argc, argv, ":hV", ctl_options, NULL)) != -1) {
        switch (opt) {
        case OPT_CONTROL:
            *path = optarg;
            break;
        case OPT_JSON:
            *as_json = 1;
            break;
        case 'h':
            fputs(ctl_usage, stdout);
            return 1;
        case 'V':
            printf("sockfork %s\n", sf_version());
            return 1;
        case ':':
            cli_error("ctl: option '%s' needs a value", argv[optind - 1]);
            return -1;
        default:
            cli_error("ctl: unknown option '%s' (try 'sockfork ctl --help'; a TEXT that begins "
                      "with '-' goes after '--')", argv[optind - 1]);
            return -1;
        }
    }
    return 0;
}

/* A connection to the server at path, or to the only one running; -1
 * after saying why not. */
static int connect_server(const char *path)
{
    char pathbuf[CLI_CONTROL_PATH_MAX], shown[FIELD_MAX];
    int fd;

    /* The request goes on the connection whose peer was checked. */
    if (!path)
        return find_server(pathbuf, sizeof pathbuf);
    fd = cli_control_connect(path);
    if (fd < 0) {
        cli_error("ctl: cannot connect to %s: %s", clean(path, strlen(path), shown, sizeof shown),
                  strerror(-fd));
        return -1;
    }
    return fd;
}

/* Sends the request line text, prints the answer. Returns the exit status. */
static int exchange(const ctl_command *c, const char *path, const char *text, int as_json,
                    unsigned pid)
{
    char err[300], msg[FIELD_MAX];
    json_t *reply;
    int fd = connect_server(path), rc = 1;

    if (fd < 0)
        return 1;
    /* An upgrade is answered when the new server is ready or has failed,
     * within the server's --upgrade-timeout (at most UPGRADE_WAIT_MAX_S). */
    reply = roundtrip(fd, text, c->print == print_upgraded ? (UPGRADE_WAIT_MAX_S + 10) * 1000
                                                            : CTL_TIMEOUT_MS, err, sizeof err);
    close(fd);
    if (!reply) {
        cli_error("ctl: %s", err);
        return 1;
    }
    if (as_json)
        print_json(reply);
    if (!json_is_true(json_object_get(reply, "ok"))) {
        cli_error("ctl: %s", clean_member(reply, "error", "the server said no", msg, sizeof msg));
    } else {
        if (!as_json)
            c->print(reply, pid);
        rc = 0;
    }
    json_decref(reply);
    return rc;
}

int cmd_ctl(int argc, char **argv)
{
    char names[256], shown[FIELD_MAX], *text;
    const char *path = NULL;
    const ctl_command *c;
    int as_json = 0, rc;
    json_t *req;
    unsigned pid = 0;

    /* A server that hangs up mid-request is an error to report, not a
     * signal to die of. */
    signal(SIGPIPE, SIG_IGN);
    rc = parse_ctl_options(argc, argv, &path, &as_json);
    if (rc != 0)
        return rc > 0 ? 0 : EXIT_USAGE;
    if (optind >= argc) {
        cli_error("ctl: which command? (%s)", command_synopses(names, sizeof names));
        return EXIT_USAGE;
    }
    if (!(c = ctl_command_of(argv[optind]))) {
        cli_error("ctl: unknown command '%s' (%s)",
                  clean(argv[optind], strlen(argv[optind]), shown, sizeof shown),
                  command_synopses(names, sizeof names));
        return EXIT_USAGE;
    }
    if (!(req = make_request(c, argc - optind - 1, argv + optind + 1, &pid, &rc)))
        return rc;
    text = request_text(req);
    json_decref(req);
    if (!text)
        return 1;
    rc = exchange(c, path, text, as_json, pid);
    free(text);
    return rc;
}
