/*
 * worker.c - `sockfork worker URL -j N`: runs the tasks of a Redis queue
 * that `sockfork run --queue URL` fills, each exactly as a local run runs
 * it (the library's pool, queue_role 2), until that run is over.
 */
#include "cli.h"
#include "logsink.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXIT_WORKER_FAILED 1

static const char worker_usage[] =
    "usage: sockfork worker [OPTIONS] URL\n"
    "\n"
    "Takes tasks from the Redis queue at URL (redis://HOST[:PORT]/[DB/]NAME or\n"
    "unix:PATH?name=NAME), as `sockfork run --queue URL` put them there, runs them\n"
    "as `sockfork run` would, and writes each outcome back. Exits when that run is\n"
    "over; SIGTERM or SIGINT gives the running tasks back to the queue.\n"
    "\n"
    "options:\n"
    "  -j, --jobs N          tasks at once (default: the number of CPUs)\n"
    "      --host NAME       the host name results carry (default: this one's)\n"
    "      --log-format F    text (the default) or json: one JSON object a line\n"
    "      --log-file PATH   append the log to PATH, not stderr\n"
    "  -h, --help            this help\n"
    "\n"
    "Exit status: 0 once the run is over; 1 if the queue could not be reached or\n"
    "is not a sockfork queue; 2 for a usage error; 128+N after signal N.\n";

static volatile sig_atomic_t worker_signal;
static sf_pool *volatile worker_pool;

static void on_worker_signal(int sig)
{
    if (!worker_signal)
        worker_signal = sig;
    if (worker_pool)
        sf_pool_cancel(worker_pool);
}

static void on_done(sf_pool *p, const sf_task_report *r, void *arg)
{
    (void)p;
    (void)r;
    (void)arg;
}

static int usage(const char *fmt, const char *what)
{
    char line[600];
    snprintf(line, sizeof line, fmt, what);
    cli_error("worker: %s (try 'sockfork worker --help')", line);
    return EXIT_USAGE;
}

static int parse(int argc, char **argv, sf_pool_opts *o)
{
    static const struct option longs[] = {
        {"jobs", required_argument, NULL, 'j'},
        {"host", required_argument, NULL, 'H'},
        {"log-format", required_argument, NULL, 'F'},
        {"log-file", required_argument, NULL, 'L'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;

    opterr = 0;
    optind = 1;
    /* No program follows the URL, so options may come after it too
     * (`sockfork worker URL -j 4`): getopt permutes. */
    while ((c = getopt_long(argc, argv, "j:h", longs, NULL)) != -1) {
        switch (c) {
        case 'j':
            if (cli_parse_uint(optarg, 65536, &o->jobs) < 0 || o->jobs == 0)
                return usage("-j: '%s' is not a number of tasks from 1 to 65536", optarg);
            break;
        case 'H':
            if (!*optarg || strlen(optarg) > 200 || strpbrk(optarg, " \t\r\n"))
                return usage("--host: '%s' is not a host name", optarg);
            o->queue_host = optarg;
            break;
        case 'F':
            if (logsink_parse_format(optarg, &cli_sink.format) < 0)
                return usage("--log-format is text or json, not '%s'", optarg);
            break;
        case 'L':
            if (!*optarg)
                return usage("%s", "--log-file wants a path");
            cli_sink.path = optarg;
            break;
        case 'h':
            fputs(worker_usage, stdout);
            return -1;
        default:
            return usage("unknown option or missing value: '%s'", argv[optind - 1]);
        }
    }
    if (optind != argc - 1)
        return usage("%s", optind >= argc ? "the queue's URL is missing" : "one URL only");
    o->queue_url = argv[optind];
    return 0;
}

static void catch_signals(sf_pool *p)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_worker_signal;
    worker_pool = p;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

int cmd_worker(int argc, char **argv)
{
    sf_pool_opts o;
    sf_pool *p = NULL;
    char err[512];
    int rc;

    sf_pool_opts_init(&o);
    o.on_done = on_done;
    o.queue_role = 2;
    if ((rc = parse(argc, argv, &o)) != 0)
        return rc < 0 ? 0 : rc;
    if (logsink_open(&cli_sink, err, sizeof err) < 0) {
        cli_error("worker: %s", err);
        return EXIT_USAGE;
    }
    if (cli_sink.format == LOGSINK_JSON) {
        o.log_record = logsink_record;
        o.log_record_arg = &cli_sink;
    } else {
        o.log = logsink_line;
        o.log_arg = &cli_sink;
    }
    if ((rc = sf_pool_new(&p, &o)) < 0) {
        if (rc == -EINVAL)
            cli_error("worker: '%s' is not a queue URL (redis://HOST[:PORT]/[DB/]NAME or "
                      "unix:PATH?name=NAME)", o.queue_url);
        else
            cli_error("worker: %s", strerror(-rc));
        logsink_close(&cli_sink);
        return rc == -EINVAL ? EXIT_USAGE : EXIT_WORKER_FAILED;
    }
    catch_signals(p);
    rc = sf_pool_run(p);
    worker_pool = NULL;
    sf_pool_free(p);
    logsink_close(&cli_sink);
    if (worker_signal)
        return 128 + worker_signal;
    /* A queue that failed was said by the pool's log (event queue_down). */
    return rc < 0 ? EXIT_WORKER_FAILED : 0;
}
