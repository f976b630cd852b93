/* benchlib.c - see benchlib.h. */
#include "benchlib.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static const char *name = "bench";
static char watchdog_msg[128];
static size_t watchdog_len;

void bench_init(const char *prog)
{
    int n;

    name = prog;
    /* Composed now: the handler may only write(). */
    n = snprintf(watchdog_msg, sizeof watchdog_msg, "%s: watchdog: run exceeded its hard cap\n", prog);
    watchdog_len = n < 0 ? 0 : (size_t)n < sizeof watchdog_msg ? (size_t)n : sizeof watchdog_msg - 1;
}

uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

void bench_die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", name);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static void on_watchdog(int sig)
{
    (void)sig;
    (void)!write(2, watchdog_msg, watchdog_len);
    _exit(3);
}

void bench_watchdog(unsigned secs)
{
    signal(SIGALRM, on_watchdog);
    alarm(secs);
}

void bench_parse_addr(const char *text, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[64], *end;
    const char *colon;
    long port;
    size_t hl;

    memset(ss, 0, sizeof *ss);
    if (strncmp(text, "unix:", 5) == 0) {
        struct sockaddr_un *un = (struct sockaddr_un *)ss;
        const char *path = text + 5;
        if (path[0] == '\0' || strlen(path) >= sizeof un->sun_path)
            bench_die("bad unix path in '%s'", text);
        un->sun_family = AF_UNIX;
        strcpy(un->sun_path, path);
        *len = sizeof *un;
        return;
    }
    colon = strrchr(text, ':');
    if (!colon || colon == text || (size_t)(colon - text) >= sizeof host)
        bench_die("address '%s' is not HOST:PORT", text);
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || colon[1] == '\0' || port < 1 || port > 65535)
        bench_die("bad port in '%s'", text);
    hl = strlen(host);
    if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
        host[hl - 1] = '\0';
        if (inet_pton(AF_INET6, host + 1, &in6->sin6_addr) != 1)
            bench_die("bad IPv6 address in '%s'", text);
        if (!IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
            bench_die("refusing %s: only loopback targets are allowed", text);
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        *len = sizeof *in6;
        return;
    }
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    if (inet_pton(AF_INET, host, &in4->sin_addr) != 1)
        bench_die("bad IPv4 address in '%s' (numeric only)", text);
    if ((ntohl(in4->sin_addr.s_addr) >> 24) != 127)
        bench_die("refusing %s: only loopback targets are allowed", text);
    in4->sin_family = AF_INET;
    in4->sin_port = htons((uint16_t)port);
    *len = sizeof *in4;
}

double bench_parse_num(const char *s, double lo, double hi, const char *what)
{
    char *end;
    double v = strtod(s, &end);

    if (*s == '\0' || *end != '\0' || !(v >= lo && v <= hi))
        bench_die("%s must be a number in [%g, %g], got '%s'", what, lo, hi, s);
    return v;
}

void bench_raise_nofile(long need)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        bench_die("getrlimit: %s", strerror(errno));
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
        bench_die("setrlimit: %s", strerror(errno));
    if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)need > rl.rlim_cur)
        bench_die("need %ld file descriptors but the hard limit is %llu (raise it: ulimit -Hn, "
                  "as root)", need, (unsigned long long)rl.rlim_cur);
}

void bench_sample_add(bench_samples *s, uint64_t ns)
{
    if (s->n == s->cap) {
        if (s->cap >= s->max)
            return;
        size_t cap = s->cap ? s->cap * 2 : 4096;
        uint64_t *v = realloc(s->v, cap * sizeof *v);
        if (!v)
            return; /* keep what we have; the counts are still right */
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = ns;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

void bench_samples_sort(bench_samples *s)
{
    if (s->n)
        qsort(s->v, s->n, sizeof *s->v, cmp_u64);
}

double bench_pct_us(const bench_samples *s, double p)
{
    if (s->n == 0)
        return 0;
    size_t rank = (size_t)(p / 100.0 * (double)s->n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > s->n)
        rank = s->n;
    return (double)s->v[rank - 1] / 1000.0;
}

int bench_probe(const struct sockaddr_storage *ss, socklen_t len, double secs)
{
    uint64_t end = bench_now_ns() + (uint64_t)(secs * NS_PER_S);

    for (;;) { /* bounded by secs */
        int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct timeval tv = {.tv_sec = 1};
        int r;

        if (fd < 0)
            bench_die("socket: %s", strerror(errno));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        r = connect(fd, (const struct sockaddr *)ss, len);
        close(fd);
        if (r == 0)
            return 0;
        if (bench_now_ns() >= end)
            return 1;
        struct timespec ts = {.tv_nsec = 20 * NS_PER_MS};
        nanosleep(&ts, NULL);
    }
}

int bench_freeport(void)
{
    struct sockaddr_in in4 = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof in4;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0 || bind(fd, (struct sockaddr *)&in4, sizeof in4) < 0 ||
        getsockname(fd, (struct sockaddr *)&in4, &len) < 0)
        bench_die("freeport: %s", strerror(errno));
    close(fd);
    printf("%u\n", ntohs(in4.sin_port));
    return 0;
}
