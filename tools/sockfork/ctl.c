/* ctl.c - `sockfork ctl`: one request to a running server's control socket,
 * its answer printed for people, or as JSON with --json. */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define REPLY_MAX (16 << 20)
#define CTL_TIMEOUT_MS 10000

static const char ctl_usage[] =
    "usage: sockfork ctl [--control PATH] [--json] COMMAND [ARGS]\n"
    "\n"
    "Talks to a running `sockfork serve` through its control socket.\n"
    "\n"
    "commands:\n"
    "  list             children: pid, peer, state, since, bytes in and out, status\n"
    "  send PID TEXT    push TEXT to that child's channel (it reaches its client\n"
    "                   at once, though the client has sent nothing)\n"
    "  broadcast TEXT   push TEXT to every child\n"
    "  kick PID         end that connection's child\n"
    "  stats            counters: accepted, active, refused, exits by code and\n"
    "                   signal, channel frames and drops\n"
    "\n"
    "options:\n"
    "  --control PATH  the server's control socket; default: the only live one under\n"
    "                  $XDG_RUNTIME_DIR/sockfork/ (else /tmp/sockfork-$UID/)\n"
    "  --json          print the server's JSON answer as it is\n"
    "  -h, --help      this text\n"
    "\n"
    "Exit status: 0 done, 1 the server said no (e.g. no such pid) or cannot be\n"
    "reached, 2 bad usage.\n";

static int connect_control(const char *path)
{
    struct sockaddr_un un;
    int fd;

    memset(&un, 0, sizeof un);
    un.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof un.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(un.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&un, sizeof un) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* Sends one line, reads one line back (bounded in size and time). */
static json_t *roundtrip(int fd, json_t *req, char *err, size_t errlen)
{
    char *text = json_dumps(req, JSON_COMPACT);
    size_t len, have = 0, cap = 4096;
    char *buf = NULL, *nl = NULL;
    json_t *reply = NULL;
    json_error_t jerr;

    if (!text)
        goto nomem;
    len = strlen(text);
    if (write(fd, text, len) != (ssize_t)len || write(fd, "\n", 1) != 1) {
        snprintf(err, errlen, "cannot send: %s", strerror(errno));
        goto fail;
    }
    buf = malloc(cap);
    if (!buf)
        goto nomem;
    while (!nl) {
        struct pollfd p = {fd, POLLIN, 0};
        ssize_t n;

        if (poll(&p, 1, CTL_TIMEOUT_MS) <= 0) {
            snprintf(err, errlen, "no answer within %d s", CTL_TIMEOUT_MS / 1000);
            goto fail;
        }
        if (have == cap) {
            char *nb;
            if (cap >= REPLY_MAX) {
                snprintf(err, errlen, "answer longer than %d bytes", REPLY_MAX);
                goto fail;
            }
            nb = realloc(buf, cap * 2);
            if (!nb)
                goto nomem;
            buf = nb;
            cap *= 2;
        }
        n = read(fd, buf + have, cap - have);
        if (n <= 0) {
            snprintf(err, errlen, "the server closed the connection");
            goto fail;
        }
        nl = memchr(buf + have, '\n', (size_t)n);
        have += (size_t)n;
    }
    reply = json_loadb(buf, (size_t)(nl - buf), 0, &jerr);
    if (!reply || !json_is_object(reply)) {
        snprintf(err, errlen, "the server's answer is not a JSON object");
        json_decref(reply);
        reply = NULL;
    }
    free(buf);
    free(text);
    return reply;
nomem:
    snprintf(err, errlen, "out of memory");
fail:
    free(buf);
    free(text);
    return NULL;
}

static void fmt_bytes(json_t *v, char *buf, size_t len)
{
    if (json_is_integer(v))
        snprintf(buf, len, "%lld", (long long)json_integer_value(v));
    else
        snprintf(buf, len, "-");
}

static void print_list(json_t *reply)
{
    json_t *children = json_object_get(reply, "children"), *c;
    size_t i;

    printf("%-8s %-40s %-12s %-20s %12s %12s  %s\n", "PID", "PEER", "STATE", "SINCE", "IN", "OUT",
           "STATUS");
    json_array_foreach(children, i, c) {
        char since[32] = "-", in[24], out[24];
        time_t t = (time_t)json_real_value(json_object_get(c, "since"));
        struct tm tm;

        if (localtime_r(&t, &tm))
            strftime(since, sizeof since, "%Y-%m-%d %H:%M:%S", &tm);
        fmt_bytes(json_object_get(c, "bytes_in"), in, sizeof in);
        fmt_bytes(json_object_get(c, "bytes_out"), out, sizeof out);
        printf("%-8lld %-40s %-12s %-20s %12s %12s  %s\n",
               (long long)json_integer_value(json_object_get(c, "pid")),
               json_string_value(json_object_get(c, "peer")),
               json_string_value(json_object_get(c, "state")), since, in, out,
               json_string_value(json_object_get(c, "status")) ? json_string_value(json_object_get(c, "status")) : "");
    }
}

static void print_stats(json_t *reply)
{
    const char *key;
    json_t *v;

    json_object_foreach(reply, key, v) {
        if (strcmp(key, "ok") == 0)
            continue;
        if (json_is_object(v)) {
            const char *k2;
            json_t *v2;
            printf("%s:", key);
            if (json_object_size(v) == 0)
                printf(" none");
            json_object_foreach(v, k2, v2)
                printf(" %s=%lld", k2, (long long)json_integer_value(v2));
            printf("\n");
        } else {
            printf("%s: %lld\n", key, (long long)json_integer_value(v));
        }
    }
}

enum { OPT_CONTROL = 256, OPT_JSON };

static const struct option ctl_options[] = {
    {"control", required_argument, NULL, OPT_CONTROL},
    {"json", no_argument, NULL, OPT_JSON},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

int cmd_ctl(int argc, char **argv)
{
    char pathbuf[300], err[300];
    const char *path = NULL, *cmd;
    int as_json = 0, opt, fd, rc = 1;
    json_t *req = NULL, *reply = NULL;
    unsigned pid = 0;

    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "+:h", ctl_options, NULL)) != -1) {
        switch (opt) {
        case OPT_CONTROL:
            path = optarg;
            break;
        case OPT_JSON:
            as_json = 1;
            break;
        case 'h':
            fputs(ctl_usage, stdout);
            return 0;
        case ':':
            cli_error("ctl: option '%s' needs a value", argv[optind - 1]);
            return EXIT_USAGE;
        default:
            cli_error("ctl: unknown option '%s' (try 'sockfork ctl --help')", argv[optind - 1]);
            return EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        cli_error("ctl: which command? (list, send PID TEXT, broadcast TEXT, kick PID, stats)");
        return EXIT_USAGE;
    }
    cmd = argv[optind];
    if (strcmp(cmd, "list") == 0 || strcmp(cmd, "stats") == 0) {
        if (optind + 1 != argc) {
            cli_error("ctl: %s takes no arguments", cmd);
            return EXIT_USAGE;
        }
        req = json_pack("{s:s}", "cmd", cmd);
    } else if (strcmp(cmd, "kick") == 0) {
        if (optind + 2 != argc || cli_parse_uint(argv[optind + 1], 1u << 30, &pid) < 0 || !pid) {
            cli_error("ctl: kick wants one PID");
            return EXIT_USAGE;
        }
        req = json_pack("{s:s, s:i}", "cmd", cmd, "pid", (int)pid);
    } else if (strcmp(cmd, "send") == 0) {
        if (optind + 3 != argc || cli_parse_uint(argv[optind + 1], 1u << 30, &pid) < 0 || !pid) {
            cli_error("ctl: send wants a PID and one TEXT argument");
            return EXIT_USAGE;
        }
        req = json_pack("{s:s, s:i, s:s}", "cmd", cmd, "pid", (int)pid, "text", argv[optind + 2]);
        if (!req) {
            cli_error("ctl: TEXT must be UTF-8");
            return EXIT_USAGE;
        }
    } else if (strcmp(cmd, "broadcast") == 0) {
        if (optind + 2 != argc) {
            cli_error("ctl: broadcast wants one TEXT argument");
            return EXIT_USAGE;
        }
        req = json_pack("{s:s, s:s}", "cmd", cmd, "text", argv[optind + 1]);
        if (!req) {
            cli_error("ctl: TEXT must be UTF-8");
            return EXIT_USAGE;
        }
    } else {
        cli_error("ctl: unknown command '%s' (list, send PID TEXT, broadcast TEXT, kick PID, stats)", cmd);
        return EXIT_USAGE;
    }
    if (!req) {
        cli_error("ctl: out of memory");
        return 1;
    }
    if (!path) {
        int frc = cli_control_find(pathbuf, sizeof pathbuf);
        if (frc < 0) {
            char dir[200];
            cli_control_dir(dir, sizeof dir);
            cli_error(frc == -EEXIST ? "ctl: several servers run under %s: say which with --control"
                                     : "ctl: no running server found under %s (give --control PATH)",
                      dir);
            json_decref(req);
            return 1;
        }
        path = pathbuf;
    }
    fd = connect_control(path);
    if (fd < 0) {
        cli_error("ctl: cannot connect to %s: %s", path, strerror(errno));
        json_decref(req);
        return 1;
    }
    reply = roundtrip(fd, req, err, sizeof err);
    close(fd);
    json_decref(req);
    if (!reply) {
        cli_error("ctl: %s", err);
        return 1;
    }
    if (!json_is_true(json_object_get(reply, "ok"))) {
        const char *msg = json_string_value(json_object_get(reply, "error"));
        if (as_json) {
            char *text = json_dumps(reply, JSON_COMPACT);
            if (text)
                puts(text);
            free(text);
        }
        cli_error("ctl: %s", msg ? msg : "the server said no");
        json_decref(reply);
        return 1;
    }
    if (as_json) {
        char *text = json_dumps(reply, JSON_COMPACT);
        if (text)
            puts(text);
        free(text);
    } else if (strcmp(cmd, "list") == 0) {
        print_list(reply);
    } else if (strcmp(cmd, "stats") == 0) {
        print_stats(reply);
    } else if (strcmp(cmd, "send") == 0) {
        printf("sent to %u\n", pid);
    } else if (strcmp(cmd, "broadcast") == 0) {
        printf("delivered to %lld, dropped for %lld\n",
               (long long)json_integer_value(json_object_get(reply, "delivered")),
               (long long)json_integer_value(json_object_get(reply, "dropped")));
    } else {
        printf("kicked %u\n", pid);
    }
    rc = 0;
    json_decref(reply);
    return rc;
}
