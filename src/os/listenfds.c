/*
 * listenfds.c - the sockets systemd passes (socket activation): LISTEN_PID,
 * LISTEN_FDS, LISTEN_FDNAMES, as sd_listen_fds_with_names(3) reads them.
 *
 * Why not libsystemd's: linking it brings six more shared libraries
 * (libgcrypt, liblzma, libzstd, liblz4, libcap, libgpg-error) into the
 * sockfork process, whose mappings every forked connection child copies
 * and tears down again: the spawner went from 40 to 73 mappings and fork
 * mode lost connections per second to it (docs/benchmarks.md). The
 * protocol is three variables read once at start.
 */
#include "os/os.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A decimal number with nothing around it, or -1. */
static long number(const char *s)
{
    char *end;
    long v;

    if (!s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    v = strtol(s, &end, 10);
    return *end || errno ? -1 : v;
}

int os_listen_fds(char ***names_out)
{
    long pid = number(getenv("LISTEN_PID")), n = number(getenv("LISTEN_FDS"));
    const char *names = getenv("LISTEN_FDNAMES");
    char **out = NULL;
    int rc = 0;

    *names_out = NULL;
    if (pid < 0 || n < 0 || pid != (long)getpid()) {
        n = 0; /* not for us (a parent's, inherited): ignored */
        goto done;
    }
    if (n > INT_MAX - 3) {
        rc = -EINVAL;
        goto done;
    }
    for (long i = 0; i < n; i++) {
        int fd = 3 + (int)i;
        if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
            rc = -errno;
            goto done;
        }
    }
    /* Names, ':'-separated; missing ones are "unknown", as systemd says. */
    if (!(out = calloc((size_t)n + 1, sizeof *out))) {
        rc = -ENOMEM;
        goto done;
    }
    for (long i = 0; i < n; i++) {
        const char *end = names ? strchr(names, ':') : NULL;
        size_t len = names ? (end ? (size_t)(end - names) : strlen(names)) : 0;
        out[i] = names && len ? strndup(names, len) : strdup("unknown");
        if (!out[i]) {
            rc = -ENOMEM;
            goto done;
        }
        names = names && end ? end + 1 : NULL;
    }
done:
    /* Taken: children must not see them (and would take them for theirs). */
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    if (rc < 0) {
        for (long i = 0; out && out[i]; i++)
            free(out[i]);
        free(out);
        return rc;
    }
    *names_out = out;
    return (int)n;
}
