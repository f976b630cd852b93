/*
 * runworker.h - `sockfork run --queue URL -j N`: the submitter also runs
 * tasks, through a `sockfork worker -j N URL` of its own. The worker is a
 * separate process (the same binary, exec'd), so it takes tasks from the
 * queue exactly as a worker on another machine does: the queue's
 * semantics (leases, give-back, dead letters, exactly-once results) hold
 * for it unchanged, and the submitter's pool stays a submitter.
 */
#ifndef SF_TOOLS_RUNWORKER_H
#define SF_TOOLS_RUNWORKER_H

#include <sockfork.h>
#include <sys/types.h>

/* Starts the worker (own process group, so a terminal's ^C reaches only
 * the submitter, which cancels through the queue; SIGTERM to it if the
 * submitter dies). If it ends before runworker_finish, pool is cancelled
 * (from a SIGCHLD handler: sf_pool_cancel is async-signal-safe).
 * log_format/log_file: passed on (NULL: none). Returns 0 or -errno. */
int runworker_start(const char *url, unsigned jobs, const char *log_format,
                    const char *log_file, sf_pool *pool);

/* After the run: waits for the worker, which ends once the run is over
 * (SIGTERM after wait_s, SIGKILL after 5 s more). Returns 0 when it
 * exited 0 before the run ended or after, else -1 with why (at most len
 * bytes) and *early 1 if it ended before the run did. No worker: 0. */
int runworker_finish(double wait_s, int *early, char *why, size_t len);

#endif
