/* main.c - the sockfork command: subcommand dispatch and shared helpers. */
#include "cli.h"
#include "logsink.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage_text[] =
    "usage: sockfork COMMAND [OPTIONS]\n"
    "\n"
    "commands:\n"
    "  serve     serve TCP or Unix connections, one forked process each\n"
    "  chat      a chat server: one process per client, lines relayed by the bus\n"
    "  ctl       talk to a running server: list, send, broadcast, kick, stats\n"
    "  run       run a command for many arguments, in parallel (like GNU parallel)\n"
    "  worker    run the tasks of a Redis queue that 'run --queue' fills\n"
    "\n"
    "options:\n"
    "  -h, --help     this text; 'sockfork COMMAND --help' for a command's\n"
    "  -V, --version  print the version\n";

static void write_all_stderr(const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(2, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        buf += n;
        len -= (size_t)n;
    }
}

static void vline(const char *fmt, va_list ap)
{
    char line[1200];
    int n = snprintf(line, sizeof line, "sockfork: ");
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);

    if (m < 0)
        m = 0;
    if ((size_t)(n + m) > sizeof line - 2)
        m = (int)(sizeof line - 2) - n;
    line[n + m] = '\n';
    write_all_stderr(line, (size_t)(n + m + 1));
}

void cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vline(fmt, ap);
    va_end(ap);
}

void cli_log(void *arg, int level, const char *line)
{
    (void)arg;
    logsink_line(&cli_sink, level, line);
}

int cli_parse_uint(const char *s, unsigned max, unsigned *out)
{
    unsigned long v = 0;

    if (!s || !*s)
        return -1;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (unsigned long)(*p - '0');
        if (v > max)
            return -1;
    }
    *out = (unsigned)v;
    return 0;
}

int cli_parse_bytes(const char *s, unsigned long long max, unsigned long long *out)
{
    static const char units[] = "KMGT";
    size_t n = s ? strlen(s) : 0;
    unsigned long long v = 0, mult = 1;
    const char *u = NULL;
    char c = n > 0 ? s[n - 1] : '\0';

    if (c >= 'a' && c <= 'z')
        c = (char)(c - 'a' + 'A');
    if (c && (u = strchr(units, c))) {
        for (const char *k = units; k <= u; k++)
            mult *= 1024;
        n--;
    }
    if (n == 0 || n > 19)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned long long)(s[i] - '0');
        if (v > max / mult)
            return -1;
    }
    *out = v * mult;
    return 0;
}

int cli_parse_size(const char *s, unsigned max, unsigned *out)
{
    unsigned long long v;

    if (cli_parse_bytes(s, max, &v) < 0)
        return -1;
    *out = (unsigned)v;
    return 0;
}

int cli_parse_seconds(const char *s, double *out)
{
    char *end;
    double v, mult = 1.0;

    if (!s || !*s || *s == '-' || *s == '+')
        return -1;
    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || !isfinite(v) || v < 0)
        return -1;
    if (strcmp(end, "ms") == 0)
        mult = 0.001;
    else if (strcmp(end, "m") == 0)
        mult = 60;
    else if (strcmp(end, "h") == 0)
        mult = 3600;
    else if (*end && strcmp(end, "s") != 0)
        return -1;
    *out = v * mult;
    return 0;
}

char **cli_main_argv;

int main(int argc, char **argv)
{
    cli_main_argv = argv;
    if (argc < 2) {
        fputs(usage_text, stderr);
        return EXIT_USAGE;
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        fputs(usage_text, stdout);
        return 0;
    }
    if (strcmp(argv[1], "-V") == 0 || strcmp(argv[1], "--version") == 0) {
        printf("sockfork %s\n", sf_version());
        return 0;
    }
    if (strcmp(argv[1], "serve") == 0)
        return cmd_serve(argc - 1, argv + 1);
    if (strcmp(argv[1], "chat") == 0)
        return cmd_chat(argc - 1, argv + 1);
    if (strcmp(argv[1], "ctl") == 0)
        return cmd_ctl(argc - 1, argv + 1);
    if (strcmp(argv[1], "run") == 0)
        return cmd_run(argc - 1, argv + 1);
    if (strcmp(argv[1], "worker") == 0)
        return cmd_worker(argc - 1, argv + 1);
    cli_error("unknown command '%s' (try 'sockfork --help')", argv[1]);
    return EXIT_USAGE;
}
