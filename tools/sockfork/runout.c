/* runout.c - see runout.h. */
#include "runout.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void runout_init(runout *o)
{
    o->mem = NULL;
    o->len = 0;
    o->spill = -1;
    o->spilled = 0;
}

void runout_reset(runout *o)
{
    free(o->mem);
    if (o->spill >= 0)
        close(o->spill);
    runout_init(o);
}

/* An unlinked file in $TMPDIR (or /tmp): nothing is left behind, whatever
 * happens to the process. */
static int spill_open(void)
{
    const char *dir = getenv("TMPDIR");
    int fd;

    if (!dir || !*dir)
        dir = "/tmp";
    fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == ENOENT)) {
        char path[4096];
        size_t n = strlen(dir);
        if (n + sizeof "/sockfork-run-XXXXXX" > sizeof path)
            return -ENAMETOOLONG;
        memcpy(path, dir, n);
        memcpy(path + n, "/sockfork-run-XXXXXX", sizeof "/sockfork-run-XXXXXX");
        fd = mkostemp(path, O_CLOEXEC);
        if (fd >= 0)
            unlink(path);
    }
    return fd < 0 ? -errno : fd;
}

static volatile sig_atomic_t *abort_flag;
static int dead_fd[3];       /* 1, 2: gave up on it while stopping */

void runout_abort_on(volatile sig_atomic_t *flag)
{
    abort_flag = flag;
}

/*
 * Once the run is stopping (*abort_flag set by a signal), a reader that
 * does not read must not hold it: each write first waits for room at most
 * RUNOUT_ABORT_WAIT_MS and writes no more than PIPE_BUF, which a pipe with
 * room takes without blocking; past the wait the descriptor is given up
 * (-ETIMEDOUT, now and for every later write). Before that, writes block
 * as usual: a slow reader slows the run, it loses nothing.
 */
int runout_write_all(int fd, const char *buf, size_t n)
{
    int stopping;

    while (n > 0) {
        size_t k = n;
        ssize_t w;
        stopping = abort_flag && *abort_flag;
        if (stopping && fd >= 0 && fd < 3 && dead_fd[fd])
            return -ETIMEDOUT;
        if (stopping) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            int r = poll(&pfd, 1, RUNOUT_ABORT_WAIT_MS);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0)
                return -errno;
            if (r == 0) {
                if (fd >= 0 && fd < 3)
                    dead_fd[fd] = 1;
                return -ETIMEDOUT;
            }
            if (k > PIPE_BUF)
                k = PIPE_BUF;
        }
        w = write(fd, buf, k);
        if (w < 0) {
            if (errno == EINTR)
                continue; /* a stop signal: go round, now with the wait */
            return -errno;
        }
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

int runout_add(runout *o, const char *buf, size_t n)
{
    size_t room;
    int rc;

    if (o->spill < 0) {
        if (!o->mem && !(o->mem = malloc(RUNOUT_MEM)))
            return -ENOMEM;
        room = RUNOUT_MEM - o->len;
        if (n <= room) {
            memcpy(o->mem + o->len, buf, n);
            o->len += n;
            return 0;
        }
        memcpy(o->mem + o->len, buf, room);
        o->len += room;
        buf += room;
        n -= room;
        if ((o->spill = spill_open()) < 0) {
            rc = o->spill;
            o->spill = -1;
            return rc;
        }
    }
    if ((rc = runout_write_all(o->spill, buf, n)) < 0)
        return rc;
    o->spilled += n;
    return 0;
}

void runout_writer_init(runout_writer *w, int fd, const char *tag, size_t taglen)
{
    w->fd = fd;
    w->tag = tag;
    w->taglen = tag ? taglen : 0;
    w->bol = 1;
    w->len = 0;
    w->err = 0;
}

int runout_flush(runout_writer *w)
{
    if (!w->err && w->len)
        w->err = runout_write_all(w->fd, w->buf, w->len);
    w->len = 0;
    return w->err;
}

static int put(runout_writer *w, const char *buf, size_t n)
{
    if (w->len + n > sizeof w->buf && runout_flush(w) < 0)
        return w->err;
    if (n > sizeof w->buf) {
        if (!w->err)
            w->err = runout_write_all(w->fd, buf, n);
        return w->err;
    }
    memcpy(w->buf + w->len, buf, n);
    w->len += n;
    return 0;
}

int runout_write(runout_writer *w, const char *buf, size_t n)
{
    if (!w->tag)
        return put(w, buf, n);
    while (n > 0 && !w->err) {
        const char *nl = memchr(buf, '\n', n);
        size_t k = nl ? (size_t)(nl - buf) + 1 : n;
        if (w->bol)
            put(w, w->tag, w->taglen);
        put(w, buf, k);
        w->bol = nl != NULL;
        buf += k;
        n -= k;
    }
    return w->err;
}

int runout_emit(runout *o, runout_writer *w)
{
    char chunk[16 * 1024];
    off_t off = 0;

    if (o->len)
        runout_write(w, o->mem, o->len);
    while (o->spill >= 0 && !w->err && (unsigned long long)off < o->spilled) {
        ssize_t k = pread(o->spill, chunk, sizeof chunk, off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            w->err = k < 0 ? -errno : -EIO;
            break;
        }
        runout_write(w, chunk, (size_t)k);
        off += k;
    }
    runout_reset(o);
    return w->err;
}
