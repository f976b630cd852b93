/*
 * runlog.h - what `sockfork run` records of finished tasks: the joblog in
 * GNU parallel's format (its readers, and --resume, work on it), the
 * --results JSON lines, and the set of tasks a resumed run skips.
 *
 * Both files hold whole lines only: an entry is written with one write
 * at the end of the file, and one that fails (a full disk) is cut off
 * again, so a later reader never meets half an entry that we wrote.
 */
#ifndef SOCKFORK_RUNLOG_H
#define SOCKFORK_RUNLOG_H

#include <sockfork.h>
#include <stdio.h>
#include <sys/types.h>

/* One finished task, as both files need it. */
typedef struct runlog_entry {
    unsigned long seq;             /* input order, from 1 */
    const sf_task_report *r;
} runlog_entry;

/* The last line of a joblog that has no newline after it. */
enum runlog_tail {
    RUNLOG_TAIL_NONE = 0,    /* the file ends with a newline (or is empty) */
    RUNLOG_TAIL_WHOLE,       /* its fields up to Command are all there: counted */
    RUNLOG_TAIL_CUT,         /* cut inside a field (a crash): ignored */
    RUNLOG_TAIL_CUT_HEADER,  /* the header is the last line: cut, written again */
};

/* The seqs found in a joblog: all of them, or (failed_only) only those
 * that succeeded, which --resume-failed skips. Sorted, for runlog_has.
 * tail says how the file ends; whole_end is where its last line that ends
 * with a newline ends. */
typedef struct runlog_done {
    unsigned long *seq;
    size_t n, cap;
    int tail;                      /* enum runlog_tail */
    off_t whole_end;
} runlog_done;

/* Reads path; a missing file is an empty set. Returns 0 or -errno (-EPROTO
 * with *line set for a line that is not a joblog line; an incomplete last
 * line, which a crash can leave, is not an error: see tail). */
int runlog_done_load(runlog_done *d, const char *path, int skip_failed_too, unsigned long *line);
int runlog_has(const runlog_done *d, unsigned long seq);
void runlog_done_free(runlog_done *d);

/* Opens (creating) a file to record into, without emptying it yet: the
 * caller first checks it is not a file the run reads. Returns a
 * close-on-exec descriptor, or -errno. */
int runlog_open(const char *path);

/* Makes fd ready for entries. Not resuming: emptied, and a joblog gets its
 * header. Resuming: the header only if the file is empty; a joblog cut
 * inside its last line (resumed->tail, as runlog_done_load saw it) loses
 * that line, and a file whose last line has no newline gets one, so the
 * next entry starts a line of its own. 0 or -errno. */
int runlog_joblog_begin(int fd, const runlog_done *resumed);
int runlog_results_begin(int fd, int resuming);

/* Appends one entry. 0, or -errno: nothing of it is left in the file
 * then, if the file can be cut (a regular file). */
int runlog_joblog_write(int fd, const runlog_entry *e);
/* *at is where the entry starts (-1: a file that cannot be cut), for
 * runlog_undo. */
int runlog_results_write(int fd, const runlog_entry *e, off_t *at);
/* Cuts fd back to at, dropping an entry written there: a task whose
 * results line went in but whose joblog entry did not runs again on
 * --resume, and must not have two results lines then. */
void runlog_undo(int fd, off_t at);

#endif
