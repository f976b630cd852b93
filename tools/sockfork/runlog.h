/*
 * runlog.h - what `sockfork run` records of finished tasks: the joblog in
 * GNU parallel's format (its readers, and --resume, work on it), the
 * --results JSON lines, and the set of tasks a resumed run skips.
 */
#ifndef SOCKFORK_RUNLOG_H
#define SOCKFORK_RUNLOG_H

#include <sockfork.h>
#include <stdio.h>

/* One finished task, as both files need it. */
typedef struct runlog_entry {
    unsigned long seq;             /* input order, from 1 */
    const sf_task_report *r;
} runlog_entry;

/* The seqs found in a joblog: all of them, or (failed_only) only those
 * that succeeded, which --resume-failed skips. Sorted, for runlog_has. */
typedef struct runlog_done {
    unsigned long *seq;
    size_t n, cap;
} runlog_done;

/* Reads path; a missing file is an empty set. Returns 0 or -errno (-EPROTO
 * with *line set for a line that is not a joblog line). */
int runlog_done_load(runlog_done *d, const char *path, int skip_failed_too, unsigned long *line);
int runlog_has(const runlog_done *d, unsigned long seq);
void runlog_done_free(runlog_done *d);

/* Opens the joblog: appended to when resuming (the header only if the file
 * is new or empty), else truncated with a new header. NULL with errno. */
FILE *runlog_joblog_open(const char *path, int append);
int runlog_joblog_write(FILE *f, const runlog_entry *e);
int runlog_results_write(FILE *f, const runlog_entry *e);

#endif
