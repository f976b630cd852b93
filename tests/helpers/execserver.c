/*
 * execserver - an sf_server whose C handler calls sf_conn_exec: a program
 * run from a forked child, as `sockfork serve -- PROGRAM` did before the
 * library exec'd programs itself (sf_server_opts.program_argv, started
 * with vfork). test_exec.py runs both and expects the program to see the
 * same thing either way.
 *
 *   execserver serve [-l ADDR]... [--no-control] [-q] -- PROGRAM [ARGS...]
 *   execserver serve [-l ADDR]... [--workers N] [--rules FILE] [--proxy-from CIDR]...
 *                    --say KEY
 *
 * --say KEY: no program; the handler writes "PEER LOCAL KEY=VALUE\n" (the
 * access rule's value, or "-") and returns: what a C handler sees of the
 * PROXY header and the rules, in fork and prefork mode (test_access.py).
 *
 * The command line and stderr look like `sockfork serve`'s ("sockfork:
 * listening on ADDR", then the library's log lines), so the tests' Server
 * class runs it unchanged. There is never a control socket.
 */
#include <sockfork.h>

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_LISTEN 8

static void log_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void log_line(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fputs("sockfork: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    fflush(stderr);
    va_end(ap);
}

static void on_log(void *arg, int level, const char *line)
{
    (void)arg;
    (void)level;
    log_line("%s", line);
}

static void on_ready(sf_server *srv, void *arg)
{
    (void)arg;
    for (size_t i = 0; i < sf_server_listener_count(srv); i++) {
        char name[SF_ADDR_TEXT_MAX];
        sf_addr_format(sf_server_listener_addr(srv, i), name, sizeof name);
        log_line("listening on %s", name);
    }
}

/* --say KEY: what the handler sees, in one line. */
static int say(sf_conn *c, void *arg)
{
    const char *key = arg, *v = sf_conn_rule_value(c, key);
    char peer[SF_ADDR_TEXT_MAX], local[SF_ADDR_TEXT_MAX], line[512];
    int n;

    if (sf_addr_format(sf_conn_peer(c), peer, sizeof peer) < 0)
        strcpy(peer, "?");
    if (sf_addr_format(sf_conn_local(c), local, sizeof local) < 0)
        strcpy(local, "?");
    n = snprintf(line, sizeof line, "%s %s %s=%s\n", peer, local, key, v ? v : "-");
    return write(sf_conn_fd(c), line, (size_t)n) == n ? 0 : 1;
}

/* As the sockfork command's handler did: 127 not found, 126 otherwise. */
static int handler(sf_conn *c, void *arg)
{
    char **argv = arg;
    int rc = sf_conn_exec(c, argv);

    log_line("cannot run %s: %s", argv[0], strerror(-rc));
    return rc == -ENOENT ? 127 : 126;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"no-control", no_argument, NULL, 'n'},
        {"quiet", no_argument, NULL, 'q'},
        {"workers", required_argument, NULL, 'w'},
        {"rules", required_argument, NULL, 'r'},
        {"proxy-from", required_argument, NULL, 'p'},
        {"say", required_argument, NULL, 's'},
        {NULL, 0, NULL, 0},
    };
    const char *rules = NULL, *proxy_from[8], *say_key = NULL;
    size_t nproxy = 0;
    char err[512];
    const char *listen[MAX_LISTEN];
    size_t nlisten = 0;
    sf_server_opts so;
    sf_server *srv;
    int opt, rc;

    if (argc < 2 || strcmp(argv[1], "serve") != 0)
        goto usage;
    signal(SIGPIPE, SIG_IGN); /* as the sockfork command */
    sf_server_opts_init(&so);
    so.log = on_log;
    so.on_ready = on_ready;
    so.channel_jsonl = 1;
    optind = 2;
    while ((opt = getopt_long(argc, argv, "+l:q", longopts, NULL)) != -1) {
        if (opt == 'l' && nlisten < MAX_LISTEN)
            listen[nlisten++] = optarg;
        else if (opt == 'q')
            so.log_level = SF_LOG_NOTICE;
        else if (opt == 'w')
            so.workers_min = so.workers_max = (unsigned)atoi(optarg);
        else if (opt == 'r')
            rules = optarg;
        else if (opt == 'p' && nproxy < 8)
            proxy_from[nproxy++] = optarg;
        else if (opt == 's')
            say_key = optarg;
        else if (opt != 'n')
            goto usage;
    }
    if ((!say_key && optind >= argc) || nlisten == 0)
        goto usage;
    if (so.workers_max)
        so.max_conns = so.workers_max;
    if ((rc = say_key ? sf_server_new(&srv, &so, say, (void *)say_key)
                      : sf_server_new(&srv, &so, handler, argv + optind)) < 0) {
        log_line("cannot start: %s", strerror(-rc));
        return 1;
    }
    if (rules && (rc = sf_server_rules(srv, rules, err, sizeof err)) < 0) {
        log_line("bad rules: %s", err);
        sf_server_free(srv);
        return 2;
    }
    for (size_t i = 0; i < nproxy; i++) {
        if ((rc = sf_server_proxy_from(srv, proxy_from[i])) < 0) {
            log_line("bad --proxy-from %s", proxy_from[i]);
            sf_server_free(srv);
            return 2;
        }
    }
    for (size_t i = 0; i < nlisten; i++) {
        if ((rc = sf_server_listen(srv, listen[i])) < 0) {
            log_line("cannot listen on %s: %s", listen[i], strerror(-rc));
            sf_server_free(srv);
            return 2;
        }
    }
    rc = sf_server_run(srv);
    sf_server_free(srv);
    if (rc < 0) {
        log_line("cannot serve: %s", strerror(-rc));
        return 1;
    }
    return 0;

usage:
    fputs("usage: execserver serve -l ADDR... [--no-control] [-q] -- PROGRAM [ARGS...]\n", stderr);
    return 2;
}
