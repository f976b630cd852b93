/* procself.c - what this process costs, for `ctl stats` and /metrics:
 * CPU time (getrusage), resident memory (/proc/self/statm) and the start
 * time (/proc/self/stat's starttime after /proc/stat's btime, as
 * Prometheus's client libraries compute process_start_time_seconds). */
#include "os/os.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Reads a small /proc file whole into buf (NUL-terminated). Returns the
 * length or -errno. */
static ssize_t read_small(const char *path, char *buf, size_t len)
{
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return -errno;
    n = read(fd, buf, len - 1);
    if (n < 0)
        n = -errno;
    close(fd);
    if (n >= 0)
        buf[n] = '\0';
    return n;
}

static double resident_bytes(void)
{
    char buf[256];
    unsigned long size, resident;

    if (read_small("/proc/self/statm", buf, sizeof buf) < 0 ||
        sscanf(buf, "%lu %lu", &size, &resident) != 2)
        return -1;
    return (double)resident * (double)sysconf(_SC_PAGESIZE);
}

/* Boot time, seconds since the epoch: /proc/stat's "btime" line, read in
 * pieces (its "intr" line, before it, is long on a machine with many
 * interrupts). */
static double boot_time(void)
{
    char buf[256];
    unsigned long long btime;
    int at_line_start = 1;
    double found = -1;
    FILE *f = fopen("/proc/stat", "re");

    if (!f)
        return -1;
    while (found < 0 && fgets(buf, sizeof buf, f)) {
        if (at_line_start && strncmp(buf, "btime ", 6) == 0 && sscanf(buf + 6, "%llu", &btime) == 1)
            found = (double)btime;
        at_line_start = strchr(buf, '\n') != NULL;
    }
    fclose(f);
    return found;
}

/* The 22nd field of /proc/self/stat, in clock ticks after boot. The second
 * field (the command, in parentheses) may hold spaces: count from its
 * last ')'. */
static double start_ticks(void)
{
    char buf[1024], *p;
    unsigned long long ticks;
    int field = 2;

    if (read_small("/proc/self/stat", buf, sizeof buf) < 0 || !(p = strrchr(buf, ')')))
        return -1;
    for (p++; *p && field < 22; p++) {
        if (*p == ' ')
            field++;
    }
    if (field != 22 || sscanf(p, " %llu", &ticks) != 1)
        return -1;
    return (double)ticks / (double)sysconf(_SC_CLK_TCK);
}

int os_proc_self(os_proc_usage *out)
{
    struct rusage ru;
    double boot, ticks;

    out->cpu_seconds = -1;
    out->resident_bytes = -1;
    out->start_time = -1;
    if (getrusage(RUSAGE_SELF, &ru) < 0)
        return -errno;
    out->cpu_seconds = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    out->resident_bytes = resident_bytes();
    boot = boot_time();
    ticks = start_ticks();
    out->start_time = boot < 0 || ticks < 0 ? -1 : boot + ticks;
    return out->resident_bytes < 0 || out->start_time < 0 ? -EIO : 0;
}
