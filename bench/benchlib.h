/*
 * benchlib.h - what the load generators share (loadgen, chatload): the
 * clock, dying with a message, the watchdog, loopback-only addresses,
 * latency samples, and the probe and freeport modes the bench scripts use.
 */
#ifndef SOCKFORK_BENCHLIB_H
#define SOCKFORK_BENCHLIB_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull

/* The program's name, the prefix of every message. Call first. */
void bench_init(const char *name);

uint64_t bench_now_ns(void);

/* "NAME: message" on stderr, exit 2 (bad usage or setup). */
void bench_die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

/* Ends the process (exit 3, with a line) after secs, whatever it is doing:
 * the last bound behind every loop's own. */
void bench_watchdog(unsigned secs);

/* HOST:PORT (numeric IPv4), [V6]:PORT or unix:PATH; anything but loopback
 * is refused. Dies on a bad one. */
void bench_parse_addr(const char *text, struct sockaddr_storage *ss, socklen_t *len);

/* A number from an option, in [lo, hi]; dies naming `what` otherwise. */
double bench_parse_num(const char *s, double lo, double hi, const char *what);

/* Soft RLIMIT_NOFILE up to the hard limit; dies if `need` fds won't fit. */
void bench_raise_nofile(long need);

/* Latency samples, in ns; past max (or out of memory) more are dropped. */
typedef struct bench_samples {
    uint64_t *v;
    size_t n, cap, max;
} bench_samples;

void bench_sample_add(bench_samples *s, uint64_t ns);
void bench_samples_sort(bench_samples *s);
/* Nearest-rank percentile of sorted samples, in µs; 0 when there are none. */
double bench_pct_us(const bench_samples *s, double p);

/* probe: 0 once a connection to addr succeeds, 1 if none did in secs. */
int bench_probe(const struct sockaddr_storage *ss, socklen_t len, double secs);
/* freeport: prints a TCP port free on 127.0.0.1 now. Returns 0. */
int bench_freeport(void);

#endif
