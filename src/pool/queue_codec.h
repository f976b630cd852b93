/*
 * queue_codec.h - the entries of a task queue in Redis (docs/design.md,
 * "Tasks over a Redis queue"): a task, its result, a control message, each
 * a stream entry's field/value pairs. Pure: no Redis, no I/O, so the
 * decoders (which read what any client could have written) are unit-tested
 * and fuzzed alone.
 *
 * Encoding fills a qc_fields with the pairs for XADD (after `XADD key *`);
 * decoding reads the pairs of one entry as Redis gave them. Every decoder
 * checks each field's syntax and bound and returns 0, or -EPROTO with *why
 * set to a static one-line reason (or -ENOMEM). An unknown field is
 * ignored (a newer writer may add some); a repeated one, a missing one, or
 * another version `v` is an error.
 */
#ifndef SF_POOL_QUEUE_CODEC_H
#define SF_POOL_QUEUE_CODEC_H

#include <stddef.h>

#define QC_VERSION "1"
#define QC_FIELDS_MAX 24              /* pairs in one entry we write */
#define QC_ARGV_WORDS_MAX 4096        /* a task's command words */
#define QC_ARGV_BYTES_MAX (256 * 1024) /* their bytes, NULs included */
#define QC_RETRY_MAX 64               /* codes, and signals, in retry_on */
#define QC_RESULT_MAX (64 * 1024)     /* a task's fd-3 result */
#define QC_HOST_MAX 255               /* host and worker names */
#define QC_OUT_MAX (64ULL << 20)      /* out_max: captured output we carry */

/* Bytes that are not NUL-terminated: a field or value as Redis gave it. */
typedef struct qc_bytes {
    const char *p;
    size_t n;
} qc_bytes;

/* The pairs of one entry to write. Values point into what was encoded
 * (the caller's memory, which must outlive the XADD's call) or into num
 * and argv_blob, which the struct owns: qc_fields_free. */
typedef struct qc_fields {
    unsigned n;
    const char *f[QC_FIELDS_MAX];
    size_t flen[QC_FIELDS_MAX];
    const char *v[QC_FIELDS_MAX];
    size_t vlen[QC_FIELDS_MAX];
    char num[QC_FIELDS_MAX][24];    /* numbers as decimal text */
    char retry_text[QC_RETRY_MAX * 2 * 9 + 16]; /* QC_RETRY_TEXT */
    char *argv_blob;                /* malloc'ed: every word and a NUL */
} qc_fields;

void qc_fields_free(qc_fields *out);

/* Which failures a retry is for: all empty means any failure. */
typedef struct qc_retry_on {
    unsigned ncodes, nsignals;
    int codes[QC_RETRY_MAX];
    int signals[QC_RETRY_MAX];
    int timeout;
} qc_retry_on;

/* A task as it travels (docs/design.md lists the fields). */
typedef struct qc_task {
    unsigned long seq;            /* >= 1 */
    char **argv;                  /* decoded: one malloc'ed block, NULL-terminated,
                                   * the caller's (free); encoding: the caller's */
    unsigned attempt;             /* the attempt this entry starts, >= 1 */
    unsigned tries;               /* attempts allowed in all, >= attempt */
    unsigned max_deliveries;      /* >= 1 */
    unsigned long long timeout_ms, grace_ms; /* 0: none */
    unsigned long long out_max;   /* <= QC_OUT_MAX */
    qc_retry_on retry_on;
} qc_task;

int qc_task_encode(const qc_task *t, qc_fields *out);
/* On success t->argv is the caller's to free; on failure nothing is held. */
int qc_task_decode(const qc_bytes *fields, const qc_bytes *values, size_t n, qc_task *t,
                   const char **why);

/* retry_on as the entry and the meta hash carry it ("code:3,sig:9,timeout");
 * cap at least QC_RETRY_TEXT. 0, or -EINVAL for a code or signal out of range. */
#define QC_RETRY_TEXT (QC_RETRY_MAX * 2 * 9 + 16)
int qc_retry_format(const qc_retry_on *r, char *buf, size_t cap);

/* Whether a failed attempt (exited with code, or killed by signal when
 * !exited; timed_out) may be retried by t's retry_on, attempts aside. */
int qc_retry_allows(const qc_retry_on *r, int exited, int code, int signal, int timed_out);

enum qc_state {
    QC_OK = 0,      /* succeeded */
    QC_FAILED,      /* its last attempt failed */
    QC_DEAD,        /* delivered more than max_deliveries times: dead-lettered */
    QC_KILLED,      /* stopped by a halt-now or a cancel */
};

/* A task's outcome. Decoded, host, worker, out, err and result point into
 * the values given (valid while they are). */
typedef struct qc_result {
    unsigned long seq;
    int state;                    /* enum qc_state */
    unsigned attempts;
    int exited;                   /* 1: code is the exit code; 0: signal (0: none,
                                   * a dead task) */
    int code, signal;
    int timed_out, output_limited;
    int spawn_error;              /* errno, 0: none */
    unsigned slot;
    long pid;
    long long start_us;           /* microseconds since the epoch */
    unsigned long long dur_us;
    unsigned long long out_bytes, err_bytes; /* what the task wrote */
    qc_bytes host, worker;        /* at most QC_HOST_MAX, printable, no space */
    qc_bytes out, err;            /* what was kept of it */
    qc_bytes result;              /* fd-3 result, JSON text; n 0: none */
} qc_result;

int qc_result_encode(const qc_result *r, qc_fields *out);
int qc_result_decode(const qc_bytes *fields, const qc_bytes *values, size_t n, qc_result *r,
                     const char **why);

enum qc_control {
    QC_HALT_SOON = 1,  /* take nothing more */
    QC_HALT_NOW,       /* and stop what runs */
    QC_CANCEL,         /* the same, for a signal on the submitter */
    QC_RETURNED,       /* a worker gave tasks back: scan the pending list now */
};

int qc_control_encode(int op, qc_fields *out);
/* *op is an enum qc_control. */
int qc_control_decode(const qc_bytes *fields, const qc_bytes *values, size_t n, int *op,
                      const char **why);

#endif
