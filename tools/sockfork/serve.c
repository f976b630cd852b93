/* serve.c - `sockfork serve` and `sockfork chat`: options in, a running
 * server out. The two share every listen, limit, channel and control
 * option; they differ in the handler their children run. */
#include "cli.h"
#include "logsink.h"

#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


#define DEFAULT_LISTEN "127.0.0.1:4444"
#define MAX_LISTEN 64
#define MAX_PROXY_FROM 256

static const char serve_usage[] =
    "usage: sockfork serve [OPTIONS] [--echo | -- PROGRAM [ARGS...]]\n"
    "\n"
    "Accepts connections and serves each in a forked process of its own:\n"
    "with the built-in interactive handler (a greeting, every line echoed,\n"
    "'quit' closes), with --echo (bytes echoed, nothing else), or by\n"
    "running PROGRAM with the connection on stdin and stdout and the\n"
    "tcpserver environment (PROTO, TCPREMOTEIP, TCPREMOTEPORT, TCPLOCALIP,\n"
    "TCPLOCALPORT). Every child has a channel to the server: the built-in\n"
    "handler writes what `sockfork ctl send` and `broadcast` push to its\n"
    "client; PROGRAM gets it as fd 3 (SOCKFORK_FD=3), JSON lines both ways\n"
    "(docs/protocol.md).\n"
    "\n"
    "options:\n"
    "  -l, --listen ADDR     HOST:PORT, [V6]:PORT or unix:PATH; repeatable;\n"
    "                        default " DEFAULT_LISTEN " (none when systemd passes\n"
    "                        sockets: LISTEN_FDS); port 0 picks a free port\n"
    "  -u, --user USER[:GROUP]  once the sockets are open, run as USER (name or\n"
    "                        number) and GROUP (default: USER's, with its groups)\n"
    "  -c, --max-conns N     connections served at once (default 1000); at the\n"
    "                        limit new clients wait in the kernel's backlog\n"
    "      --max-per-ip N    connections at once from one address (default: no limit)\n"
    "      --rules FILE      access rules, first match wins: 'allow|deny CIDR|unix\n"
    "                        [KEY=VALUE...]', 'default allow|deny'; re-read at SIGHUP\n"
    "                        and 'sockfork ctl reload'\n"
    "      --proxy-from CIDR a balancer allowed to send PROXY protocol headers to\n"
    "                        the listeners given as -l ADDR,proxy; repeatable\n"
    "      --proxy-timeout S a PROXY listener's client must send its header within\n"
    "                        S (default 5s)\n"
    "      --idle-timeout S  close TCP clients that send nothing for S seconds\n"
    "      --conn-timeout S  end a child that has held its connection S seconds\n"
    "      --workers MIN[:MAX]  prefork: MIN to MAX (default MIN) workers, started\n"
    "                        ahead, each serving one connection after another;\n"
    "                        more start (1, 2, 4... a second) while all are busy,\n"
    "                        idle ones above MIN retire; not with a PROGRAM\n"
    "      --max-requests N  prefork: replace a worker after about N connections\n"
    "      --worker-idle S   prefork: idle time before a worker above MIN retires\n"
    "                        (default 5s)\n"
    "      --grace S         at SIGTERM/SIGINT, and after an upgrade, time children\n"
    "                        get to finish before they are terminated (default 10)\n"
    "      --upgrade-timeout S  at SIGUSR2 or 'sockfork ctl upgrade', time the new\n"
    "                        binary has to be ready before it is killed and this\n"
    "                        server serves on (default 30)\n"
    "      --backlog N       listen backlog (default: the system maximum)\n"
    "      --control PATH    control socket for `sockfork ctl` (mode 0600); default\n"
    "                        $XDG_RUNTIME_DIR/sockfork/serve-PID.sock, else\n"
    "                        /tmp/sockfork-$UID/serve-PID.sock\n"
    "      --no-control      no control socket\n"
    "      --metrics ADDR    serve Prometheus metrics over HTTP at ADDR (HOST:PORT,\n"
    "                        [V6]:PORT or unix:PATH): GET /metrics, the numbers\n"
    "                        of `sockfork ctl stats`\n"
    "      --channel-max SIZE    largest message a child may send on its channel\n"
    "                        (default 64K; larger: the child is disconnected)\n"
    "      --channel-queue SIZE  bytes queued for a child that does not read its\n"
    "                        channel (default 256K)\n"
    "      --channel-full POLICY  when that queue is full: drop (the message, counted;\n"
    "                        the default) or kick (end the child)\n"
    "      --topic-history N messages kept per topic for late subscribers (default 20)\n"
    "      --bus URL         bridge the bus to every instance sharing one Redis\n"
    "                        (redis://HOST[:PORT][/DB] or unix:PATH[?db=N]): topics,\n"
    "                        names, sends to a name, wills and broadcasts span them\n"
    "      --bus-outbox SIZE bytes waiting for Redis while it is away (default 8M);\n"
    "                        past it writes are dropped (members told of the gap)\n"
    "      --bus-lease S     names' and the instance's lease in Redis (default 10s):\n"
    "                        a dead instance's nicknames are free again after it\n"
    "      --bus-stream-len N  entries kept per stream in Redis (default 1000)\n"
    "      --bus-timeout S   Redis connect and command deadline (default 2s and 3s)\n"
    "      --bus-ping S      PING Redis when idle, to notice a silent cut (default 1s)\n"
    "      --bus-backoff-max S  longest wait between reconnects (default 5s)\n"
    "  -q, --quiet           no line per connection\n"
    "      --log-format FORMAT  text (the default) or json: one JSON object a line\n"
    "      --log-file PATH   append the log to PATH instead of stderr; reopened at\n"
    "                        SIGHUP and 'sockfork ctl reload'\n"
    "      --echo            echo bytes back, no greeting\n"
    "  -h, --help            this text\n"
    "  -V, --version         print the version\n"
    "\n"
    "Durations take fractions and a unit: 500ms, 2s, 1.5m, 1h.\n"
    "Exit status: 0 after a clean shutdown, 1 on a runtime error, 2 on bad usage.\n";

static const char chat_usage[] =
    "usage: sockfork chat [OPTIONS]\n"
    "\n"
    "A chat server: one process per client, every line relayed through the\n"
    "server's bus. telnet or nc connects; the first line is the nickname;\n"
    "everyone starts in room 'lobby'. Commands: /nick NAME, /join ROOM,\n"
    "/who [ROOM], /rooms, /msg NICK TEXT, /me ACTION, /quit, /help.\n"
    "\n"
    "options: as `sockfork serve` (listen, limits, --workers, --max-requests,\n"
    "--worker-idle, --grace, --upgrade-timeout, --control, --metrics, --channel-*,\n"
    "--bus, --bus-*,\n"
    "-q, --log-format, --log-file; --channel-full is kick here: a member that\n"
    "cannot keep up is cut off, never left with a gap), and:\n"
    "      --history N       lines a joiner gets of the room's past (default 20)\n"
    "      --line-max SIZE   longest line a client may send (default 4K); longer\n"
    "                        ones are refused with a notice\n"
    "      --flood RATE[/BURST]  lines per second a client may send, with bursts\n"
    "                        of BURST (default 10/20); past it a warning, then at\n"
    "                        twice the burst the client is disconnected\n"
    "      --client-backlog SIZE  bytes waiting for a client that does not read\n"
    "                        (default 256K); full, and nothing taken for 2 s, it is\n"
    "                        disconnected (the room waits for it meanwhile)\n"
    "  -h, --help            this text\n"
    "  -V, --version         print the version\n";

enum { OPT_RULES = 200, OPT_PROXY_FROM, OPT_PROXY_TIMEOUT, OPT_MAX_PER_IP = 256, OPT_IDLE, OPT_CONN_TIMEOUT, OPT_WORKERS, OPT_MAX_REQUESTS,
       OPT_WORKER_IDLE, OPT_GRACE, OPT_UPGRADE_TIMEOUT, OPT_BACKLOG, OPT_ECHO, OPT_CONTROL, OPT_NO_CONTROL,
       OPT_CHAN_MAX, OPT_CHAN_QUEUE, OPT_CHAN_FULL, OPT_TOPIC_HISTORY, OPT_METRICS,
       OPT_LOG_FORMAT, OPT_LOG_FILE,
       OPT_BUS, OPT_BUS_OUTBOX, OPT_BUS_LEASE, OPT_BUS_STREAM_LEN, OPT_BUS_TIMEOUT, OPT_BUS_PING,
       OPT_BUS_BACKOFF_MAX,
       /* chat only */
       OPT_HISTORY, OPT_LINE_MAX, OPT_FLOOD, OPT_CLIENT_BACKLOG };

static const struct option serve_options[] = {
    {"listen", required_argument, NULL, 'l'},
    {"user", required_argument, NULL, 'u'},
    {"max-conns", required_argument, NULL, 'c'},
    {"max-per-ip", required_argument, NULL, OPT_MAX_PER_IP},
    {"rules", required_argument, NULL, OPT_RULES},
    {"proxy-from", required_argument, NULL, OPT_PROXY_FROM},
    {"proxy-timeout", required_argument, NULL, OPT_PROXY_TIMEOUT},
    {"idle-timeout", required_argument, NULL, OPT_IDLE},
    {"conn-timeout", required_argument, NULL, OPT_CONN_TIMEOUT},
    {"workers", required_argument, NULL, OPT_WORKERS},
    {"max-requests", required_argument, NULL, OPT_MAX_REQUESTS},
    {"worker-idle", required_argument, NULL, OPT_WORKER_IDLE},
    {"grace", required_argument, NULL, OPT_GRACE},
    {"upgrade-timeout", required_argument, NULL, OPT_UPGRADE_TIMEOUT},
    {"backlog", required_argument, NULL, OPT_BACKLOG},
    {"quiet", no_argument, NULL, 'q'},
    {"echo", no_argument, NULL, OPT_ECHO},
    {"control", required_argument, NULL, OPT_CONTROL},
    {"no-control", no_argument, NULL, OPT_NO_CONTROL},
    {"channel-max", required_argument, NULL, OPT_CHAN_MAX},
    {"channel-queue", required_argument, NULL, OPT_CHAN_QUEUE},
    {"channel-full", required_argument, NULL, OPT_CHAN_FULL},
    {"topic-history", required_argument, NULL, OPT_TOPIC_HISTORY},
    {"metrics", required_argument, NULL, OPT_METRICS},
    {"log-format", required_argument, NULL, OPT_LOG_FORMAT},
    {"log-file", required_argument, NULL, OPT_LOG_FILE},
    {"bus", required_argument, NULL, OPT_BUS},
    {"bus-outbox", required_argument, NULL, OPT_BUS_OUTBOX},
    {"bus-lease", required_argument, NULL, OPT_BUS_LEASE},
    {"bus-stream-len", required_argument, NULL, OPT_BUS_STREAM_LEN},
    {"bus-timeout", required_argument, NULL, OPT_BUS_TIMEOUT},
    {"bus-ping", required_argument, NULL, OPT_BUS_PING},
    {"bus-backoff-max", required_argument, NULL, OPT_BUS_BACKOFF_MAX},
    {"history", required_argument, NULL, OPT_HISTORY},
    {"line-max", required_argument, NULL, OPT_LINE_MAX},
    {"flood", required_argument, NULL, OPT_FLOOD},
    {"client-backlog", required_argument, NULL, OPT_CLIENT_BACKLOG},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

/* Finds PROGRAM the way execvp will, so a typo fails at start with a
 * clear message rather than once per connection. Returns 0, -ENOENT (not
 * there; in PATH: nowhere), -EACCES (there, not executable), -EISDIR. */
static int program_check(const char *prog)
{
    char file[4096];

    return sf_program_find(prog, file, sizeof file);
}

static void program_error(const char *cmd, const char *prog, int rc)
{
    if (rc == -ENOENT && !strchr(prog, '/'))
        cli_error("%s: cannot find program '%s' in PATH", cmd, prog);
    else if (rc == -ENOENT)
        cli_error("%s: cannot find program '%s': %s", cmd, prog, strerror(ENOENT));
    else if (rc == -EISDIR)
        cli_error("%s: program '%s' is a directory", cmd, prog);
    else if (rc == -EACCES)
        cli_error("%s: program '%s' is not executable: %s", cmd, prog, strerror(EACCES));
    else
        cli_error("%s: cannot run program '%s': %s", cmd, prog, strerror(-rc));
}

/* What is wrong with a HOST:PORT or [V6]:PORT that sf_addr_parse calls
 * malformed (-EINVAL): the library says only that it is. */
static void tcp_addr_problem(const char *text, char *why, size_t len)
{
    const char *colon, *port;
    unsigned long v = 0;
    size_t hostlen;

    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (!close) {
            snprintf(why, len, "no ']' after the IPv6 address");
            return;
        }
        if (close[1] != ':') {
            snprintf(why, len, "no ':PORT' after ']'");
            return;
        }
        colon = close + 1;
        hostlen = (size_t)(close - text - 1);
    } else {
        colon = strrchr(text, ':');
        if (!colon) {
            snprintf(why, len, "no port (expected HOST:PORT, [V6]:PORT or unix:PATH)");
            return;
        }
        if (memchr(text, ':', (size_t)(colon - text))) {
            snprintf(why, len, "an IPv6 address goes in brackets: [V6]:PORT");
            return;
        }
        hostlen = (size_t)(colon - text);
    }
    port = colon + 1;
    if (hostlen == 0) {
        snprintf(why, len, "no host before ':PORT' (0.0.0.0 or [::] for every address)");
        return;
    }
    if (!*port) {
        snprintf(why, len, "no port after ':'");
        return;
    }
    for (const char *p = port; *p; p++) {
        if (*p < '0' || *p > '9') {
            snprintf(why, len, "port '%s' is not a number", port);
            return;
        }
        if (v <= 65535)
            v = v * 10 + (unsigned long)(*p - '0');
    }
    if (v > 65535) {
        snprintf(why, len, "port %s out of range (0-65535)", port);
        return;
    }
    if (text[0] == '[')
        snprintf(why, len, "'%.*s' is not an IPv6 address (brackets are for IPv6 only)",
                 (int)hostlen, text + 1);
    else
        snprintf(why, len, "'%.*s' is not a host address", (int)hostlen, text);
}

/* Why a listen (or control) socket at addr could not be opened. */
static const char *listen_error(const char *addr, int rc, char *why, size_t len)
{
    char plain[300];
    const char *comma = strrchr(addr, ',');

    /* ADDR,proxy: what is wrong is in ADDR. */
    if (comma && strcmp(comma, ",proxy") == 0 && (size_t)(comma - addr) < sizeof plain) {
        memcpy(plain, addr, (size_t)(comma - addr));
        plain[comma - addr] = '\0';
        addr = plain;
    }
    int is_unix = strncmp(addr, "unix:", 5) == 0;

    if (rc == -EINVAL && is_unix)
        snprintf(why, len, addr[5] ? "path longer than %zu bytes" : "empty path",
                 sizeof(((sf_addr *)0)->u.un.sun_path) - 1);
    else if (rc == -EINVAL)
        tcp_addr_problem(addr, why, len);
    else if (rc == -ENOENT && !is_unix)
        snprintf(why, len, "host not found");
    else if (rc == -EEXIST)
        snprintf(why, len, "path exists and is not a socket");
    else
        snprintf(why, len, "%s", strerror(-rc));
    return why;
}

/* Which commands take an option. */
#define KIND_SERVE 1
#define KIND_CHAT 2

typedef struct server_kind server_kind;

/* What the command line asks for, read before anything starts. */
typedef struct server_cmdline {
    const server_kind *kind;
    sf_server_opts opts;
    const char *listen_addrs[MAX_LISTEN];
    size_t nlisten;
    int nsystemd;           /* sockets systemd passed (LISTEN_FDS), fds 3... */
    char **systemd_names;   /* their names (LISTEN_FDNAMES) */
    char user[256], group[256];
    const char *rules;      /* --rules FILE */
    const char *proxy_from[MAX_PROXY_FROM];
    int nproxy_from;
    uid_t uid;              /* -u's, for the default control socket's directory */
    gid_t gid;
    const char *control;    /* --control PATH, or NULL: the default */
    int no_control, echo;
    int max_conns_given, worker_idle_given;
    const char *bus_option; /* a --bus-* option given, for "needs --bus" */
    const char *last_optarg; /* the last option's value: "--" there is no end of options */
    sf_conn_cb handler;
    void *handler_arg;
} server_cmdline;

/* Announced from inside sf_server_run, once SIGTERM is handled: whoever
 * waits for these lines may stop the server at once. */
static void announce_listeners(sf_server *srv, void *arg)
{
    const server_cmdline *cl = arg;

    for (size_t i = 0; i < sf_server_listener_count(srv); i++) {
        char name[SF_ADDR_TEXT_MAX];
        sf_addr_format(sf_server_listener_addr(srv, i), name, sizeof name);
        /* systemd's sockets come first (start_server). */
        const char *unit_name = (int)i < cl->nsystemd && cl->systemd_names &&
                                        cl->systemd_names[i] ? cl->systemd_names[i] : "?";
        const sf_log_field f[] = {
            {.key = "addr", .type = SF_LOG_FIELD_STR, .v.s = name},
            {.key = "systemd", .type = SF_LOG_FIELD_STR, .v.s = unit_name},
        };
        if ((int)i < cl->nsystemd)
            logsink_say(&cli_sink, SF_LOG_NOTICE, "listening", f, 2,
                        "listening on %s (from systemd: %s)", name, unit_name);
        else
            logsink_say(&cli_sink, SF_LOG_NOTICE, "listening", f, 1, "listening on %s", name);
    }
    if (sf_server_control_path(srv)) {
        const sf_log_field f = {.key = "path", .type = SF_LOG_FIELD_STR,
                                .v.s = sf_server_control_path(srv)};
        logsink_say(&cli_sink, SF_LOG_NOTICE, "control", &f, 1, "control socket unix:%s",
                    sf_server_control_path(srv));
    }
    if (sf_server_metrics_addr(srv)) {
        char name[SF_ADDR_TEXT_MAX];
        sf_addr_format(sf_server_metrics_addr(srv), name, sizeof name);
        const sf_log_field f = {.key = "addr", .type = SF_LOG_FIELD_STR, .v.s = name};
        logsink_say(&cli_sink, SF_LOG_NOTICE, "metrics", &f, 1, "metrics on %s", name);
    }
}

/* What tells the two commands apart. */
struct server_kind {
    const char *name;
    const char *usage;
    int kind;           /* KIND_*: the options it takes */
    int chan_full_kick; /* --channel-full's default */
    /* The handler, from the words after the options (argv[first..argc-1]).
     * 0, or -1 after saying what is wrong. */
    int (*pick_handler)(server_cmdline *cl, int argc, char **argv, int first);
};

/* One handler per option: v is its value (none for a flag). 0, -1 after
 * saying what is wrong, or 1: done (--help, --version), exit 0. */
static int set_listen(server_cmdline *cl, const char *v)
{
    if (cl->nlisten >= MAX_LISTEN) {
        cli_error("%s: at most %d listeners", cl->kind->name, MAX_LISTEN);
        return -1;
    }
    cl->listen_addrs[cl->nlisten++] = v;
    return 0;
}

/* -u USER[:GROUP]: both must exist now, so a typo fails at start with
 * one line (the library resolves them again when it drops). */
static int set_user(server_cmdline *cl, const char *v)
{
    const char *colon = strchr(v, ':');
    size_t n = colon ? (size_t)(colon - v) : strlen(v);
    const char *name = cl->kind->name;
    char *end;

    if (n == 0 || n >= sizeof cl->user || (colon && (!colon[1] || strlen(colon + 1) >= sizeof cl->group))) {
        cli_error("%s: -u wants USER or USER:GROUP, not '%s'", name, v);
        return -1;
    }
    memcpy(cl->user, v, n);
    cl->user[n] = '\0';
    strcpy(cl->group, colon ? colon + 1 : "");
    errno = 0;
    if (cl->user[0] >= '0' && cl->user[0] <= '9') {
        unsigned long uid = strtoul(cl->user, &end, 10);
        struct passwd *pw = *end ? NULL : getpwuid((uid_t)uid);
        if (*end || (!pw && !cl->group[0])) {
            cli_error("%s: user '%s': %s", name, cl->user,
                      *end ? "not a name or a number" : "no such uid (give a group too: -u UID:GID)");
            return -1;
        }
        cl->uid = (uid_t)uid;
        cl->gid = pw ? pw->pw_gid : 0;
    } else {
        struct passwd *pw = getpwnam(cl->user);
        if (!pw) {
            cli_error("%s: no such user '%s'", name, cl->user);
            return -1;
        }
        cl->uid = pw->pw_uid;
        cl->gid = pw->pw_gid;
    }
    if (cl->group[0] >= '0' && cl->group[0] <= '9') {
        unsigned long gid = strtoul(cl->group, &end, 10);
        if (*end) {
            cli_error("%s: group '%s': not a name or a number", name, cl->group);
            return -1;
        }
        cl->gid = (gid_t)gid;
    } else if (cl->group[0]) {
        struct group *gr = getgrnam(cl->group);
        if (!gr) {
            cli_error("%s: no such group '%s'", name, cl->group);
            return -1;
        }
        cl->gid = gr->gr_gid;
    }
    cl->opts.user = cl->user;
    cl->opts.group = cl->group[0] ? cl->group : NULL;
    return 0;
}

static int set_max_conns(server_cmdline *cl, const char *v)
{
    unsigned u;

    if (cli_parse_uint(v, 1u << 24, &u) < 0 || u == 0) {
        cli_error("%s: -c wants a number from 1 to %u, not '%s'", cl->kind->name, 1u << 24, v);
        return -1;
    }
    cl->opts.max_conns = u;
    cl->max_conns_given = 1;
    return 0;
}

static int set_rules(server_cmdline *cl, const char *v)
{
    cl->rules = v;
    return 0;
}

static int set_proxy_from(server_cmdline *cl, const char *v)
{
    if (cl->nproxy_from >= MAX_PROXY_FROM) {
        cli_error("%s: at most %d --proxy-from", cl->kind->name, MAX_PROXY_FROM);
        return -1;
    }
    cl->proxy_from[cl->nproxy_from++] = v;
    return 0;
}

static int set_upgrade_timeout(server_cmdline *cl, const char *v)
{
    if (cli_parse_seconds(v, &cl->opts.upgrade_timeout_s) < 0 || cl->opts.upgrade_timeout_s <= 0 ||
        cl->opts.upgrade_timeout_s > 3600) {
        cli_error("%s: --upgrade-timeout wants a duration above 0, up to 3600 s, not '%s'",
                  cl->kind->name, v);
        return -1;
    }
    return 0;
}

static int set_proxy_timeout(server_cmdline *cl, const char *v)
{
    if (cli_parse_seconds(v, &cl->opts.proxy_timeout_s) < 0 || cl->opts.proxy_timeout_s <= 0) {
        cli_error("%s: --proxy-timeout wants a duration above 0, not '%s'", cl->kind->name, v);
        return -1;
    }
    return 0;
}

static int set_max_per_ip(server_cmdline *cl, const char *v)
{
    unsigned u;

    if (cli_parse_uint(v, 1u << 24, &u) < 0) {
        cli_error("%s: --max-per-ip wants a number, not '%s'", cl->kind->name, v);
        return -1;
    }
    cl->opts.max_per_ip = u;
    return 0;
}

/* A duration option: v into *out, or one line naming the option. */
static int set_seconds(server_cmdline *cl, const char *option, const char *v, double *out)
{
    if (cli_parse_seconds(v, out) < 0) {
        cli_error("%s: %s wants a duration, not '%s'", cl->kind->name, option, v);
        return -1;
    }
    return 0;
}

static int set_conn_timeout(server_cmdline *cl, const char *v)
{
    return set_seconds(cl, "--conn-timeout", v, &cl->opts.conn_timeout_s);
}

/* --workers MIN[:MAX], 1 <= MIN <= MAX <= 2^24. */
static int set_workers(server_cmdline *cl, const char *v)
{
    char min[32];
    const char *colon = strchr(v, ':');
    size_t n = colon ? (size_t)(colon - v) : strlen(v);
    unsigned lo, hi;

    if (n >= sizeof min)
        goto bad;
    memcpy(min, v, n);
    min[n] = '\0';
    if (cli_parse_uint(min, 1u << 24, &lo) < 0 || lo == 0)
        goto bad;
    hi = lo;
    if (colon && (cli_parse_uint(colon + 1, 1u << 24, &hi) < 0 || hi < lo))
        goto bad;
    cl->opts.workers_min = lo;
    cl->opts.workers_max = hi;
    return 0;
bad:
    cli_error("%s: --workers wants MIN or MIN:MAX, 1 <= MIN <= MAX <= %u, not '%s'",
              cl->kind->name, 1u << 24, v);
    return -1;
}

static int set_max_requests(server_cmdline *cl, const char *v)
{
    unsigned u;

    if (cli_parse_uint(v, 1u << 30, &u) < 0 || u == 0) {
        cli_error("%s: --max-requests wants a number from 1 to %u, not '%s'", cl->kind->name,
                  1u << 30, v);
        return -1;
    }
    cl->opts.max_requests = u;
    return 0;
}

static int set_worker_idle(server_cmdline *cl, const char *v)
{
    if (set_seconds(cl, "--worker-idle", v, &cl->opts.worker_idle_s) < 0)
        return -1;
    cl->worker_idle_given = 1;
    if (cl->opts.worker_idle_s <= 0) {
        cli_error("%s: --worker-idle wants a duration above 0, not '%s'", cl->kind->name, v);
        return -1;
    }
    return 0;
}

static int set_idle_timeout(server_cmdline *cl, const char *v)
{
    return set_seconds(cl, "--idle-timeout", v, &cl->opts.idle_timeout_s);
}

static int set_grace(server_cmdline *cl, const char *v)
{
    return set_seconds(cl, "--grace", v, &cl->opts.grace_s);
}

static int set_backlog(server_cmdline *cl, const char *v)
{
    unsigned u;

    if (cli_parse_uint(v, 1u << 30, &u) < 0) {
        cli_error("%s: --backlog wants a number, not '%s'", cl->kind->name, v);
        return -1;
    }
    cl->opts.backlog = (int)u;
    return 0;
}

static int set_quiet(server_cmdline *cl, const char *v)
{
    (void)v;
    cl->opts.log_level = SF_LOG_NOTICE;
    return 0;
}

static int set_log_format(server_cmdline *cl, const char *v)
{
    if (logsink_parse_format(v, &cli_sink.format) < 0) {
        cli_error("%s: --log-format is text or json, not '%s'", cl->kind->name, v);
        return -1;
    }
    return 0;
}

static int set_log_file(server_cmdline *cl, const char *v)
{
    if (!*v) {
        cli_error("%s: --log-file wants a path", cl->kind->name);
        return -1;
    }
    cli_sink.path = v;
    return 0;
}

static int set_echo(server_cmdline *cl, const char *v)
{
    (void)v;
    cl->echo = 1;
    return 0;
}

static int set_control(server_cmdline *cl, const char *v)
{
    cl->control = v;
    return 0;
}

static int set_metrics(server_cmdline *cl, const char *v)
{
    cl->opts.metrics_addr = v;
    return 0;
}

static int set_no_control(server_cmdline *cl, const char *v)
{
    (void)v;
    cl->no_control = 1;
    return 0;
}

static int set_chan_max(server_cmdline *cl, const char *v)
{
    unsigned u;

    if (cli_parse_size(v, 16u << 20, &u) < 0 || u < 64) {
        cli_error("%s: --channel-max wants a size from 64 to 16M, not '%s'", cl->kind->name, v);
        return -1;
    }
    cl->opts.chan_max = u;
    return 0;
}

static int set_chan_queue(server_cmdline *cl, const char *v)
{
    unsigned u;

    if (cli_parse_size(v, 1u << 30, &u) < 0 || u < 1024) {
        cli_error("%s: --channel-queue wants a size from 1K to 1024M, not '%s'", cl->kind->name,
                  v);
        return -1;
    }
    cl->opts.chan_queue = u;
    return 0;
}

static int set_chan_full(server_cmdline *cl, const char *v)
{
    if (strcmp(v, "drop") == 0) {
        cl->opts.chan_full_kick = 0;
    } else if (strcmp(v, "kick") == 0) {
        cl->opts.chan_full_kick = 1;
    } else {
        cli_error("%s: --channel-full wants drop or kick, not '%s'", cl->kind->name, v);
        return -1;
    }
    return 0;
}

static int set_topic_history(server_cmdline *cl, const char *v)
{
    unsigned u;

    if (cli_parse_uint(v, 100000, &u) < 0) {
        cli_error("%s: --topic-history wants a number from 0 to 100000, not '%s'", cl->kind->name,
                  v);
        return -1;
    }
    cl->opts.topic_history = u;
    return 0;
}

/* The bus across instances. */
static int set_bus(server_cmdline *cl, const char *v)
{
    const char *why = "";

    if (sf_bus_url_check(v, &why) < 0) {
        cli_error("%s: --bus wants redis://HOST[:PORT][/DB] or unix:PATH[?db=N], not '%s': %s",
                  cl->kind->name, v, why);
        return -1;
    }
    cl->opts.bus_url = v;
    return 0;
}

static int set_bus_outbox(server_cmdline *cl, const char *v)
{
    unsigned u;

    cl->bus_option = "--bus-outbox";
    if (cli_parse_size(v, 1u << 30, &u) < 0 || u < 64 * 1024) {
        cli_error("%s: --bus-outbox wants a size from 64K to 1024M, not '%s'", cl->kind->name, v);
        return -1;
    }
    cl->opts.bus_outbox = u;
    return 0;
}

/* A duration from min to max: 0, or -1 after saying what is wrong. */
static int bus_seconds(server_cmdline *cl, const char *opt, const char *v, double min, double max,
                       double *out)
{
    cl->bus_option = opt;
    if (cli_parse_seconds(v, out) < 0 || *out < min || *out > max) {
        cli_error("%s: %s wants a duration from %g s to %g s, not '%s'", cl->kind->name, opt, min,
                  max, v);
        return -1;
    }
    return 0;
}

static int set_bus_lease(server_cmdline *cl, const char *v)
{
    return bus_seconds(cl, "--bus-lease", v, 0.3, 3600, &cl->opts.bus_lease_s);
}

static int set_bus_timeout(server_cmdline *cl, const char *v)
{
    return bus_seconds(cl, "--bus-timeout", v, 0.05, 600, &cl->opts.bus_timeout_s);
}

static int set_bus_ping(server_cmdline *cl, const char *v)
{
    return bus_seconds(cl, "--bus-ping", v, 0.05, 600, &cl->opts.bus_ping_s);
}

static int set_bus_backoff_max(server_cmdline *cl, const char *v)
{
    return bus_seconds(cl, "--bus-backoff-max", v, 0.1, 600, &cl->opts.bus_backoff_max_s);
}

static int set_bus_stream_len(server_cmdline *cl, const char *v)
{
    unsigned u;

    cl->bus_option = "--bus-stream-len";
    if (cli_parse_uint(v, 10000000, &u) < 0 || u < 10) {
        cli_error("%s: --bus-stream-len wants a number from 10 to 10000000, not '%s'",
                  cl->kind->name, v);
        return -1;
    }
    cl->opts.bus_stream_len = u;
    return 0;
}

/* chat's own options, read by chat.c. */
static int set_history(server_cmdline *cl, const char *v)
{
    return chat_option("history", v, &cl->opts);
}

static int set_line_max(server_cmdline *cl, const char *v)
{
    return chat_option("line-max", v, &cl->opts);
}

static int set_flood(server_cmdline *cl, const char *v)
{
    return chat_option("flood", v, &cl->opts);
}

static int set_client_backlog(server_cmdline *cl, const char *v)
{
    return chat_option("client-backlog", v, &cl->opts);
}

static int show_help(server_cmdline *cl, const char *v)
{
    (void)v;
    fputs(cl->kind->usage, stdout);
    return 1;
}

static int show_version(server_cmdline *cl, const char *v)
{
    (void)cl;
    (void)v;
    printf("sockfork %s\n", sf_version());
    return 1;
}

/* Each option's handler, and the commands that take it (getopt_long's
 * value in serve_options: the short letter or an OPT_). */
static const struct server_option {
    int id;
    int kinds;
    int (*set)(server_cmdline *cl, const char *v);
} server_option_table[] = {
    {'l', KIND_SERVE | KIND_CHAT, set_listen},
    {'u', KIND_SERVE | KIND_CHAT, set_user},
    {'c', KIND_SERVE | KIND_CHAT, set_max_conns},
    {OPT_MAX_PER_IP, KIND_SERVE | KIND_CHAT, set_max_per_ip},
    {OPT_RULES, KIND_SERVE | KIND_CHAT, set_rules},
    {OPT_PROXY_FROM, KIND_SERVE | KIND_CHAT, set_proxy_from},
    {OPT_PROXY_TIMEOUT, KIND_SERVE | KIND_CHAT, set_proxy_timeout},
    {OPT_IDLE, KIND_SERVE | KIND_CHAT, set_idle_timeout},
    {OPT_CONN_TIMEOUT, KIND_SERVE | KIND_CHAT, set_conn_timeout},
    {OPT_WORKERS, KIND_SERVE | KIND_CHAT, set_workers},
    {OPT_MAX_REQUESTS, KIND_SERVE | KIND_CHAT, set_max_requests},
    {OPT_WORKER_IDLE, KIND_SERVE | KIND_CHAT, set_worker_idle},
    {OPT_GRACE, KIND_SERVE | KIND_CHAT, set_grace},
    {OPT_UPGRADE_TIMEOUT, KIND_SERVE | KIND_CHAT, set_upgrade_timeout},
    {OPT_BACKLOG, KIND_SERVE | KIND_CHAT, set_backlog},
    {'q', KIND_SERVE | KIND_CHAT, set_quiet},
    {OPT_ECHO, KIND_SERVE, set_echo},
    {OPT_CONTROL, KIND_SERVE | KIND_CHAT, set_control},
    {OPT_NO_CONTROL, KIND_SERVE | KIND_CHAT, set_no_control},
    {OPT_CHAN_MAX, KIND_SERVE | KIND_CHAT, set_chan_max},
    {OPT_CHAN_QUEUE, KIND_SERVE | KIND_CHAT, set_chan_queue},
    {OPT_CHAN_FULL, KIND_SERVE | KIND_CHAT, set_chan_full},
    {OPT_TOPIC_HISTORY, KIND_SERVE, set_topic_history},
    {OPT_METRICS, KIND_SERVE | KIND_CHAT, set_metrics},
    {OPT_LOG_FORMAT, KIND_SERVE | KIND_CHAT, set_log_format},
    {OPT_LOG_FILE, KIND_SERVE | KIND_CHAT, set_log_file},
    {OPT_BUS, KIND_SERVE | KIND_CHAT, set_bus},
    {OPT_BUS_OUTBOX, KIND_SERVE | KIND_CHAT, set_bus_outbox},
    {OPT_BUS_LEASE, KIND_SERVE | KIND_CHAT, set_bus_lease},
    {OPT_BUS_STREAM_LEN, KIND_SERVE | KIND_CHAT, set_bus_stream_len},
    {OPT_BUS_TIMEOUT, KIND_SERVE | KIND_CHAT, set_bus_timeout},
    {OPT_BUS_PING, KIND_SERVE | KIND_CHAT, set_bus_ping},
    {OPT_BUS_BACKOFF_MAX, KIND_SERVE | KIND_CHAT, set_bus_backoff_max},
    {OPT_HISTORY, KIND_CHAT, set_history},
    {OPT_LINE_MAX, KIND_CHAT, set_line_max},
    {OPT_FLOOD, KIND_CHAT, set_flood},
    {OPT_CLIENT_BACKLOG, KIND_CHAT, set_client_backlog},
    {'h', KIND_SERVE | KIND_CHAT, show_help},
    {'V', KIND_SERVE | KIND_CHAT, show_version},
};

/* The handler of getopt_long's value id for this command, or NULL. */
static const struct server_option *server_option_of(int id, const server_kind *k)
{
    for (size_t i = 0; i < sizeof server_option_table / sizeof server_option_table[0]; i++)
        if (server_option_table[i].id == id)
            return server_option_table[i].kinds & k->kind ? &server_option_table[i] : NULL;
    return NULL;
}

/* 0: the options are read, the rest starts at optind; 1: done (--help,
 * --version); -1 after saying what is wrong. */
static int parse_server_options(server_cmdline *cl, int argc, char **argv)
{
    const struct server_option *o;
    int opt, rc;

    opterr = 0;
    optind = 1;
    /* '+': stop at the first non-option, so PROGRAM's own flags stay its. */
    while ((opt = getopt_long(argc, argv, "+:l:u:c:qhV", serve_options, NULL)) != -1) {
        cl->last_optarg = optarg;
        if (opt == ':') {
            cli_error("%s: option '%s' needs a value", cl->kind->name, argv[optind - 1]);
            return -1;
        }
        if (!(o = server_option_of(opt, cl->kind))) {
            /* An option of the other command, with its value in the next
             * word: name the option, not the value. */
            const char *word = optarg && optind >= 2 && optarg == argv[optind - 1]
                                   ? argv[optind - 2] : argv[optind - 1];
            cli_error("%s: unknown option '%s' (try 'sockfork %s --help')", cl->kind->name,
                      word, cl->kind->name);
            return -1;
        }
        if ((rc = o->set(cl, optarg)) != 0)
            return rc;
    }
    return 0;
}

/* serve: PROGRAM [ARGS...] after the options, --echo, or the built-in
 * interactive handler. */
static int serve_pick_handler(server_cmdline *cl, int argc, char **argv, int first)
{
    const char *name = cl->kind->name;
    int rc;

    /* "--" read as the end of options (not as an option's value), with
     * nothing after it: a PROGRAM was meant and forgotten. */
    if (first == argc && first > 1 && strcmp(argv[first - 1], "--") == 0 &&
        argv[first - 1] != cl->last_optarg) {
        cli_error("%s: '--' must be followed by PROGRAM [ARGS...] (try 'sockfork %s --help')",
                  name, name);
        return -1;
    }
    if (first < argc) {
        if (cl->echo) {
            cli_error("%s: --echo and a PROGRAM exclude each other", name);
            return -1;
        }
        if ((rc = program_check(argv[first])) < 0) {
            program_error(name, argv[first], rc);
            return -1;
        }
        cl->handler = NULL; /* the library execs it: opts.program_argv */
        cl->handler_arg = NULL;
        cl->opts.program_argv = argv + first;
        cl->opts.channel_jsonl = 1; /* fd 3 speaks JSON lines to the program */
    } else if (cl->echo) {
        cl->handler = handler_echo;
    }
    return 0;
}

/* chat: its own handler, no words after the options. */
static int chat_pick_handler(server_cmdline *cl, int argc, char **argv, int first)
{
    if (first < argc) {
        cli_error("chat: unexpected argument '%s' (try 'sockfork chat --help')", argv[first]);
        return -1;
    }
    cl->handler = handler_chat;
    chat_tune(&cl->opts);
    cl->handler_arg = NULL;
    return chat_check(&cl->opts);
}

/* Prefork: --workers with its companions; -c bounds the workers too.
 * 0, or -1 after saying what is wrong. */
static int check_prefork(server_cmdline *cl, int max_conns_given)
{
    sf_server_opts *o = &cl->opts;
    const char *name = cl->kind->name;

    if (!o->workers_max) {
        if (o->max_requests || cl->worker_idle_given) {
            cli_error("%s: %s works with --workers only", name,
                      o->max_requests ? "--max-requests" : "--worker-idle");
            return -1;
        }
        return 0;
    }
    if (cl->opts.program_argv) {
        cli_error("%s: --workers runs C handlers (--echo, the built-in ones); a PROGRAM is "
                  "exec'd once per connection, so it cannot be pre-forked", name);
        return -1;
    }
    if (!max_conns_given) {
        o->max_conns = o->workers_max; /* one connection per worker */
    } else if (o->max_conns < o->workers_min) {
        cli_error("%s: -c %u is below --workers' minimum %u", name, o->max_conns, o->workers_min);
        return -1;
    } else if (o->max_conns < o->workers_max) {
        o->workers_max = o->max_conns; /* at most -c connections at once */
    }
    return 0;
}

/* What only the options together can say is wrong. 0, or -1. */
static int check_channel_sizes(const server_cmdline *cl)
{
    const sf_server_opts *o = &cl->opts;

    if (o->chan_queue < sf_chan_queue_min(o->chan_max)) {
        cli_error("%s: --channel-queue (%zu) must hold one message of --channel-max (%u) "
                  "and its %zu bytes of headers", cl->kind->name, o->chan_queue, o->chan_max,
                  sf_chan_queue_min(o->chan_max) - o->chan_max);
        return -1;
    }
    return 0;
}

/* A ",proxy" listener needs the balancers that may send headers, and
 * --proxy-from is for such listeners only. 0, or -1 after saying so. */
static int check_proxy(const server_cmdline *cl)
{
    int proxied = 0;

    for (size_t i = 0; i < cl->nlisten; i++) {
        const char *comma = strrchr(cl->listen_addrs[i], ',');
        proxied |= comma && strcmp(comma, ",proxy") == 0;
    }
    if (proxied && cl->nproxy_from == 0) {
        cli_error("%s: a PROXY listener (-l ADDR,proxy) needs --proxy-from CIDR: the balancers "
                  "allowed to send the header", cl->kind->name);
        return -1;
    }
    if (!proxied && cl->nproxy_from > 0) {
        cli_error("%s: --proxy-from is for PROXY listeners (-l ADDR,proxy), and there is none",
                  cl->kind->name);
        return -1;
    }
    return 0;
}

/* Reads the command line into cl. 0: serve; 1: done (--help, --version),
 * exit 0; -1 after saying what is wrong. */
static int read_cmdline(server_cmdline *cl, int argc, char **argv)
{
    int rc = parse_server_options(cl, argc, argv);

    if (rc != 0)
        return rc;
    if (cl->kind->pick_handler(cl, argc, argv, optind) < 0 || check_channel_sizes(cl) < 0 ||
        check_prefork(cl, cl->max_conns_given) < 0)
        return -1;
    if (cl->bus_option && !cl->opts.bus_url) {
        cli_error("%s: %s needs --bus URL", cl->kind->name, cl->bus_option);
        return -1;
    }
    if (cl->nlisten == 0 && cl->nsystemd == 0)
        cl->listen_addrs[cl->nlisten++] = DEFAULT_LISTEN;
    return check_proxy(cl);
}

/* systemd's sockets (socket activation), taken before anything else can
 * use descriptors 3...; the variables go from the environment with them,
 * so children do not see them. */
static int take_systemd_sockets(server_cmdline *cl)
{
    int n = sf_listen_fds(&cl->systemd_names);

    if (n < 0) {
        cli_error("%s: cannot take systemd's sockets: %s", cl->kind->name, strerror(-n));
        return -1;
    }
    cl->nsystemd = n;
    return 0;
}

static void free_systemd_names(server_cmdline *cl)
{
    for (int i = 0; cl->systemd_names && cl->systemd_names[i]; i++)
        free(cl->systemd_names[i]);
    free(cl->systemd_names);
    cl->systemd_names = NULL;
}

/* A server listening on every address. 0, or the exit status after
 * saying why (nothing left open). */
static int start_server(sf_server **srvp, server_cmdline *cl)
{
    char why[600];
    const char *metrics = cl->opts.metrics_addr;
    sf_addr a;
    int rc;

    /* sf_server_new binds the metrics address: its errors are told apart
     * from the others' (-ENOMEM, -EINVAL) by checking the syntax first. */
    if (metrics && (rc = sf_addr_parse(&a, metrics)) < 0) {
        cli_error("cannot serve metrics on %s: %s", metrics, listen_error(metrics, rc, why, sizeof why));
        return EXIT_USAGE;
    }
    rc = sf_server_new(srvp, &cl->opts, cl->handler, cl->handler_arg);
    if (rc < 0 && metrics && rc != -ENOMEM && rc != -EINVAL) {
        cli_error("cannot serve metrics on %s: %s", metrics, listen_error(metrics, rc, why, sizeof why));
        return EXIT_USAGE;
    }
    if (rc < 0) {
        cli_error("cannot start: %s", strerror(-rc));
        return 1;
    }
    if (cl->rules && (rc = sf_server_rules(*srvp, cl->rules, why, sizeof why)) < 0) {
        cli_error("%s: bad rules: %s", cl->kind->name, why);
        for (int j = 0; j < cl->nsystemd; j++)
            close(3 + j);
        sf_server_free(*srvp);
        return EXIT_USAGE;
    }
    for (int i = 0; i < cl->nproxy_from; i++) {
        if ((rc = sf_server_proxy_from(*srvp, cl->proxy_from[i])) < 0) {
            cli_error("%s: --proxy-from wants an IPv4 or IPv6 prefix (10.0.0.0/8, ::1) or unix, "
                      "not '%s'", cl->kind->name, cl->proxy_from[i]);
            for (int j = 0; j < cl->nsystemd; j++)
                close(3 + j);
            sf_server_free(*srvp);
            return EXIT_USAGE;
        }
    }
    for (int i = 0; i < cl->nsystemd; i++) {
        const char *fdname = cl->systemd_names && cl->systemd_names[i] ? cl->systemd_names[i] : "?";
        rc = sf_server_listen_fd(*srvp, 3 + i);
        if (rc < 0) {
            cli_error("cannot serve systemd's socket %d (%s): %s", 3 + i, fdname,
                      rc == -EINVAL || rc == -ENOTSOCK ? "not a listening stream socket" : strerror(-rc));
            for (int j = i; j < cl->nsystemd; j++)
                close(3 + j);
            sf_server_free(*srvp);
            return EXIT_USAGE;
        }
    }
    for (size_t i = 0; i < cl->nlisten; i++) {
        rc = sf_server_listen(*srvp, cl->listen_addrs[i]);
        if (rc < 0) {
            cli_error("cannot listen on %s: %s", cl->listen_addrs[i],
                      listen_error(cl->listen_addrs[i], rc, why, sizeof why));
            sf_server_free(*srvp);
            return EXIT_USAGE;
        }
    }
    return 0;
}

/* The control socket, at --control or the default path. 0, or the exit
 * status after saying why. */
static int open_control(sf_server *srv, const server_cmdline *cl)
{
    char control_buf[300], why[200], control_addr[310];
    const char *control = cl->control;
    int rc;

    if (!control) {
        if (cl->opts.user)
            rc = cli_control_default_for(cl->kind->name, cl->uid, cl->gid, control_buf,
                                         sizeof control_buf);
        else
            rc = cli_control_default(cl->kind->name, control_buf, sizeof control_buf);
        if (rc < 0) {
            cli_error("cannot make a control socket path: %s%s", strerror(-rc),
                      rc == -EPERM ? " (the directory is not private to this user)" : "");
            return 1;
        }
        control = control_buf;
    }
    rc = sf_server_control(srv, control);
    if (rc < 0) {
        snprintf(control_addr, sizeof control_addr, "unix:%s", control);
        cli_error("cannot open the control socket %s: %s", control,
                  listen_error(control_addr, rc, why, sizeof why));
        return EXIT_USAGE;
    }
    return 0;
}

/* Opens the control socket and serves until stopped; frees srv. Returns
 * the exit status. */
static int serve_until_stopped(sf_server *srv, const server_cmdline *cl)
{
    sigset_t hold, old_mask;
    int status = 0, rc = 0;

    /* From the control socket's creation until the loop handles them,
     * TERM, INT and HUP must not kill us with their default action: the
     * socket would be left behind. Held here; sf_server_run unblocks them
     * once its watchers run, and a pending one then stops the server
     * cleanly. On an error path the old mask comes back after the socket
     * is gone (a pending signal then acts as it would have). */
    sigemptyset(&hold);
    sigaddset(&hold, SIGTERM);
    sigaddset(&hold, SIGINT);
    sigaddset(&hold, SIGHUP);
    sigaddset(&hold, SIGUSR2);
    sigprocmask(SIG_BLOCK, &hold, &old_mask);
    if (!cl->no_control)
        status = open_control(srv, cl);
    if (status == 0)
        rc = sf_server_run(srv);
    sf_server_free(srv);
    sigprocmask(SIG_SETMASK, &old_mask, NULL);
    if (rc < 0 && cl->opts.user && (rc == -EPERM || rc == -ENOENT || rc == -ENXIO || rc == -ESRCH)) {
        cli_error("cannot run as user %s%s%s: %s", cl->opts.user, cl->opts.group ? ":" : "",
                  cl->opts.group ? cl->opts.group : "",
                  rc == -EPERM ? "not permitted (start as root), or root could be had back"
                               : "no such user or group");
        return EXIT_USAGE;
    }
    if (rc < 0) {
        cli_error("cannot serve: %s", strerror(-rc));
        return 1;
    }
    return status;
}

/* The log as the options say: its file opened (before -u drops privileges:
 * a reload reopens it as the user), text or records. 0, or -1 after saying
 * why. */
static int use_log_sink(server_cmdline *cl)
{
    char err[512];

    if (logsink_open(&cli_sink, err, sizeof err) < 0) {
        cli_error("%s: %s", cl->kind->name, err);
        return -1;
    }
    if (cli_sink.format == LOGSINK_JSON) {
        cl->opts.log = NULL;
        cl->opts.log_record = logsink_record;
        cl->opts.log_record_arg = &cli_sink;
    } else {
        cl->opts.log = logsink_line;
        cl->opts.log_arg = &cli_sink;
    }
    if (cli_sink.path) {
        cl->opts.on_reload = logsink_reopen;
        cl->opts.reload_arg = &cli_sink;
    }
    return 0;
}

static int run_server(int argc, char **argv, const server_kind *k)
{
    server_cmdline cl;
    sf_server *srv = NULL;
    int rc;

    /* Our log is stderr, which may be a pipe whose reader has gone (`serve
     * 2>&1 | tee log`, then Ctrl-C): a line must cost an EPIPE, never the
     * process before it has cleaned up. C handlers inherit this; exec'd
     * programs get the default back (the library's exec mode). */
    signal(SIGPIPE, SIG_IGN);
    memset(&cl, 0, sizeof cl);
    cl.kind = k;
    cl.handler = handler_interactive;
    sf_server_opts_init(&cl.opts);
    cl.opts.log = cli_log;
    cl.opts.on_ready = announce_listeners;
    cl.opts.upgrade_argv = cli_main_argv;
    cl.opts.ready_arg = &cl;
    cl.opts.chan_full_kick = k->chan_full_kick;
    if (take_systemd_sockets(&cl) < 0)
        return EXIT_USAGE;
    rc = read_cmdline(&cl, argc, argv);
    if (rc != 0) {
        free_systemd_names(&cl);
        return rc > 0 ? 0 : EXIT_USAGE;
    }
    if (use_log_sink(&cl) < 0) {
        free_systemd_names(&cl);
        return EXIT_USAGE;
    }
    if ((rc = start_server(&srv, &cl)) != 0) {
        free_systemd_names(&cl);
        logsink_close(&cli_sink);
        return rc;
    }
    if (cl.control && cl.no_control) {
        cli_error("%s: --control and --no-control exclude each other", k->name);
        sf_server_free(srv);
        free_systemd_names(&cl);
        return EXIT_USAGE;
    }
    rc = serve_until_stopped(srv, &cl);
    free_systemd_names(&cl);
    logsink_close(&cli_sink);
    return rc;
}

int cmd_serve(int argc, char **argv)
{
    static const server_kind serve = {"serve", serve_usage, KIND_SERVE, 0, serve_pick_handler};
    return run_server(argc, argv, &serve);
}

/* A chat member either gets every line of its room or is cut off: never
 * a silent gap (--channel-full drop says otherwise). */
int cmd_chat(int argc, char **argv)
{
    static const server_kind chat = {"chat", chat_usage, KIND_CHAT, 1, chat_pick_handler};
    return run_server(argc, argv, &chat);
}
