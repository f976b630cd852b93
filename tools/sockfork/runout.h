/*
 * runout.h - a task's output, for `sockfork run`: held whole until the task
 * ends (grouped, never interleaved with another task's), in memory up to
 * RUNOUT_MEM bytes per stream and in an unlinked temporary file past that,
 * as GNU parallel does, so memory stays bounded however much a task
 * writes. Also the writing of it: whole lines with an optional tag.
 */
#ifndef SOCKFORK_RUNOUT_H
#define SOCKFORK_RUNOUT_H

#include <signal.h>
#include <stddef.h>

#define RUNOUT_MEM (64 * 1024)

typedef struct runout {
    char *mem;               /* RUNOUT_MEM bytes once anything came */
    size_t len;
    int spill;               /* the file past mem, or -1 */
    unsigned long long spilled;
} runout;

void runout_init(runout *o);
/* Drops what is held (a failed attempt's output before its retry). */
void runout_reset(runout *o);
/* Appends. Returns 0, or -errno when neither memory nor a file could take
 * it (the bytes are then lost, and the caller says so). */
int runout_add(runout *o, const char *buf, size_t n);

/* A writer to fd that puts tag before every line (tag NULL: none) and
 * batches small writes. Errors stick: every call after one returns it. */
typedef struct runout_writer {
    int fd;
    const char *tag;
    size_t taglen;
    int bol;                 /* at the beginning of a line */
    char buf[16 * 1024];
    size_t len;
    int err;                 /* -errno of the first failed write */
} runout_writer;

void runout_writer_init(runout_writer *w, int fd, const char *tag, size_t taglen);
int runout_write(runout_writer *w, const char *buf, size_t n);
int runout_flush(runout_writer *w);
/* Writes everything o holds through w (then o is reset). */
int runout_emit(runout *o, runout_writer *w);

/* Writes all of buf to fd, over partial writes and EINTR. 0 or -errno;
 * -ETIMEDOUT once stopping and fd has had no room for RUNOUT_ABORT_WAIT_MS
 * (see runout.c). */
int runout_write_all(int fd, const char *buf, size_t n);
/* From now on, *flag set means the run is stopping. */
void runout_abort_on(volatile sig_atomic_t *flag);

#define RUNOUT_ABORT_WAIT_MS 1000

#endif
