/*
 * fdcount - prints every descriptor this process holds, one per line as
 * "FD TARGET" (TARGET being what /proc/self/fd/FD links to), leaving out
 * the directory descriptor it opened itself to list them. Ends with a line
 * "end". Run under `sockfork serve -- fdcount`, its stdout is the client's
 * socket, so a test reads exactly what the exec'd program inherited.
 *
 * With --wait it first reads stdin up to a newline (or EOF), so a test can
 * hold several connections open and choose when each one lists.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void wait_for_line(void)
{
    char c;
    for (;;) {
        ssize_t n = read(0, &c, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || c == '\n')
            return;
    }
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--wait") == 0)
        wait_for_line();
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL) {
        fprintf(stderr, "fdcount: cannot open /proc/self/fd: %s\n", strerror(errno));
        return 1;
    }
    int self = dirfd(d);
    char out[65536];
    size_t used = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char *end;
        long fd = strtol(e->d_name, &end, 10);
        if (*end != '\0' || fd == self)
            continue;
        char path[64], target[4096];
        snprintf(path, sizeof path, "/proc/self/fd/%ld", fd);
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n < 0)
            n = 0;
        target[n] = '\0';
        int w = snprintf(out + used, sizeof out - used, "%ld %s\n", fd, target);
        if (w < 0 || (size_t)w >= sizeof out - used)
            break;
        used += (size_t)w;
    }
    closedir(d);
    /* One write after the listing is complete, so the descriptors printed
     * are exactly those present before stdout was touched. */
    int w = snprintf(out + used, sizeof out - used, "end\n");
    if (w > 0 && (size_t)w < sizeof out - used)
        used += (size_t)w;
    size_t off = 0;
    while (off < used) {
        ssize_t n = write(1, out + off, used - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return 1;
        }
        off += (size_t)n;
    }
    return 0;
}
