/*
 * rulesbench.c - the cost of access rules (src/server/rules.c): loading a
 * rules file and matching peers against it, for 10, 10,000 and (the bound)
 * 1,000,000 rules.
 *
 * Each set is random with a fixed seed: half IPv4 prefixes (/8../32), half
 * IPv6 (/16../128), allow or deny, drawn near 16 base addresses so that
 * rules nest and overlap as real lists do, the last line `default deny`.
 * It is written to a file in $TMPDIR (or /tmp) and loaded with rules_load,
 * timed (read, parse and the trie; median of 5 loads, 1 for 1,000,000).
 *
 * Lookups: 4096 peers, cycled: half of them inside a random rule's prefix
 * (random host bits, so the walk goes deep), half random; half IPv4 (a
 * quarter of those IPv4-mapped IPv6), half IPv6. rules_match is timed over
 * N lookups (-n, default 1,000,000) after a warm-up; the plain first-match
 * scan (rules_match_linear) over N / 100 (fewer for big sets: at most
 * 5e7 rule steps) for comparison. The trie's answers are checked against
 * the scan first (on all 4096 peers, fewer for big sets).
 *
 *   usage: rulesbench [-n LOOKUPS] [-s] (-s: skip the 1,000,000-rule set)
 *
 * Times are the process's CPU time (CLOCK_PROCESS_CPUTIME_ID), not the
 * wall clock, so that other work on a shared machine does not count.
 * Prints a markdown table on stdout.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "server/rules.h"

#define PEERS 4096

static uint64_t rng = 0x2545f4914f6cdd1dull;

static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "rulesbench: %s\n", what);
    exit(2);
}

static unsigned char bases[16][16];

/* Keeps the first len bits of a (nbytes long), zeroes the rest. */
static void mask_bytes(unsigned char *a, unsigned nbytes, unsigned len)
{
    for (unsigned i = 0; i < nbytes; i++) {
        unsigned keep = len >= 8 * (i + 1) ? 8 : len > 8 * i ? len - 8 * i : 0;
        a[i] &= (unsigned char)(0xff00u >> keep);
    }
}

/* Random bytes that share a random number of leading bits with a base. */
static void near_base(unsigned char *a, unsigned nbytes)
{
    const unsigned char *base = bases[rnd() % 16];
    unsigned keep = (unsigned)(rnd() % (8 * nbytes + 1));
    for (unsigned i = 0; i < nbytes; i++) {
        unsigned k = keep >= 8 * (i + 1) ? 8 : keep > 8 * i ? keep - 8 * i : 0;
        unsigned char m = (unsigned char)(0xff00u >> k);
        a[i] = (unsigned char)((base[i] & m) | ((unsigned char)rnd() & ~m));
    }
}

/* Writes n random rules and a default to a temporary file; returns its path. */
static char *write_rules(size_t n)
{
    const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char *path = malloc(strlen(dir) + 32);
    FILE *f;
    int fd;

    sprintf(path, "%s/rulesbench.XXXXXX", dir);
    if ((fd = mkstemp(path)) < 0 || !(f = fdopen(fd, "w")))
        die("cannot create a temporary file");
    for (size_t i = 0; i < n; i++) {
        unsigned char a[16];
        char host[INET6_ADDRSTRLEN];
        int v6 = (int)(rnd() % 2);
        unsigned plen = v6 ? 16 + (unsigned)(rnd() % 113) : 8 + (unsigned)(rnd() % 25);
        near_base(a, v6 ? 16 : 4);
        if (v6 && a[0] == 0)
            a[0] = 0x20; /* never an IPv4-mapped prefix */
        mask_bytes(a, v6 ? 16 : 4, plen);
        inet_ntop(v6 ? AF_INET6 : AF_INET, a, host, sizeof host);
        fprintf(f, "%s %s/%u\n", rnd() % 2 ? "allow" : "deny", host, plen);
    }
    fprintf(f, "default deny\n");
    if (fclose(f) != 0)
        die("cannot write the rules file");
    return path;
}

/* A peer inside rule r's prefix (random host bits), or a random one. */
static void make_peer(sf_addr *p, const rule *r)
{
    int v6 = r ? r->kind == RULE_V6 : (int)(rnd() % 2);
    unsigned char a[16];

    memset(p, 0, sizeof *p);
    near_base(a, v6 ? 16 : 4);
    if (r) {
        unsigned nbytes = v6 ? 16 : 4;
        unsigned char net[16];
        memcpy(net, r->addr, nbytes);
        for (unsigned i = 0; i < nbytes; i++) {
            unsigned char m = 0xff;
            mask_bytes(&m, 1, r->prefix_len > 8 * i ? r->prefix_len - 8 * i : 0);
            a[i] = (unsigned char)((net[i] & m) | ((unsigned char)rnd() & ~m));
        }
    }
    if (v6) {
        p->u.in6.sin6_family = AF_INET6;
        memcpy(p->u.in6.sin6_addr.s6_addr, a, 16);
        p->len = sizeof p->u.in6;
    } else if (rnd() % 4 == 0) { /* IPv4-mapped */
        p->u.in6.sin6_family = AF_INET6;
        p->u.in6.sin6_addr.s6_addr[10] = p->u.in6.sin6_addr.s6_addr[11] = 0xff;
        memcpy(p->u.in6.sin6_addr.s6_addr + 12, a, 4);
        p->len = sizeof p->u.in6;
    } else {
        p->u.in4.sin_family = AF_INET;
        memcpy(&p->u.in4.sin_addr, a, 4);
        p->len = sizeof p->u.in4;
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void run(size_t nrules, long lookups)
{
    static sf_addr peers[PEERS];
    char *path = write_rules(nrules), err[512];
    rules_set *s = NULL;
    uint64_t loads[5], t0, lookup_ns, linear_ns;
    int nloads = nrules >= 1000000 ? 1 : 5;
    unsigned long sum = 0, matched = 0;
    /* The scan costs a step per rule: bound its work to ~5e7 steps. */
    long linear = lookups / 100, checked = (long)(50000000 / nrules);

    if (linear > checked)
        linear = checked;
    if (linear < 100)
        linear = 100;
    if (checked > PEERS)
        checked = PEERS;
    if (checked < 64)
        checked = 64;

    for (int i = 0; i < nloads; i++) {
        rules_free(s);
        s = NULL;
        t0 = now_ns();
        if (rules_load(path, &s, err, sizeof err) != 0)
            die(err);
        loads[i] = now_ns() - t0;
    }
    qsort(loads, (size_t)nloads, sizeof loads[0], cmp_u64);
    unlink(path);
    free(path);

    for (int i = 0; i < PEERS; i++) {
        make_peer(&peers[i], i % 2 ? NULL : rules_at(s, rnd() % nrules));
        const rule *r = rules_match(s, &peers[i]);
        if (i < checked && r != rules_match_linear(s, &peers[i]))
            die("the trie and the linear scan disagree");
        matched += r->kind != RULE_DEFAULT;
    }
    for (long i = 0; i < lookups / 10; i++) /* warm-up */
        sum += rules_match(s, &peers[i % PEERS])->line;
    t0 = now_ns();
    for (long i = 0; i < lookups; i++)
        sum += rules_match(s, &peers[i % PEERS])->line;
    lookup_ns = now_ns() - t0;
    t0 = now_ns();
    for (long i = 0; i < linear; i++)
        sum += rules_match_linear(s, &peers[i % PEERS])->line;
    linear_ns = now_ns() - t0;
    printf("| %zu | %.2f | %.1f | %.1f | %lu/%d |\n", nrules, loads[nloads / 2] / 1e6,
           (double)lookup_ns / (double)lookups, (double)linear_ns / (double)linear, matched,
           PEERS);
    fprintf(stderr, "rulesbench: %zu rules: checksum %lu\n", nrules, sum);
    rules_free(s);
}

int main(int argc, char **argv)
{
    long lookups = 1000000;
    int skip_max = 0, opt;
    struct rusage ru;

    while ((opt = getopt(argc, argv, "n:s")) != -1) {
        if (opt == 'n')
            lookups = strtol(optarg, NULL, 10);
        else if (opt == 's')
            skip_max = 1;
        else
            die("usage: rulesbench [-n LOOKUPS] [-s]");
    }
    if (lookups < 1000)
        die("-n: at least 1000");
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++)
            bases[i][j] = (unsigned char)rnd();

    printf("| rules | load (ms) | rules_match (ns) | linear scan (ns) | peers matching a rule |\n");
    printf("|---:|---:|---:|---:|---:|\n");
    run(10, lookups);
    run(10000, lookups);
    if (!skip_max)
        run(1000000, lookups);
    getrusage(RUSAGE_SELF, &ru);
    fprintf(stderr, "rulesbench: max RSS %ld MiB\n", ru.ru_maxrss / 1024);
    return 0;
}
