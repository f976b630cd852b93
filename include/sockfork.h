/*
 * sockfork.h - the one public header of libsockfork.
 *
 * A supervisor process owns listening sockets and forks one child per
 * connection; the child runs a handler (or execs a program) and exits.
 *
 * Conventions (after libuv):
 *   - every public name starts with sf_ / SF_;
 *   - a call that can fail returns 0 or a negative errno value (a call
 *     that returns a count or a length says so, and is then >= 0 or a
 *     negative errno); a constructor returns the object it makes through
 *     an out-parameter (sf_server_new, sf_pool_new);
 *   - callback types end in _cb; the options naming them start with on_
 *     (or are named for what they do: log, feed, task);
 *   - durations are seconds as a double, and their names end in _s;
 *   - the library never prints and never exits: diagnostics go to the
 *     log callback given in the options, errors are returned;
 *   - "who frees what" is said at each function and each callback;
 *   - threads: the library starts none. A server's or a pool's calls are
 *     made from the thread that runs it (or before and after it runs),
 *     and its callbacks are called from that thread, never from a signal
 *     handler; the exceptions say so: sf_server_stop and sf_pool_cancel
 *     may be called from anywhere, and a connection handler (sf_conn_cb)
 *     or a C task (sf_task_cb) runs in a forked child, not in the caller.
 */
#ifndef SOCKFORK_H
#define SOCKFORK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <netinet/in.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(SF_BUILDING_LIBRARY)
#define SF_EXTERN __attribute__((visibility("default")))
#else
#define SF_EXTERN
#endif

/* 0.2.0 changed the calling convention (issue 12: durations named _s,
 * sf_conn_wait in seconds, out-parameters for sf_pool_new and
 * sf_pool_submit*), so the library's soname moved to libsockfork.so.1.
 * 0.3.0 added fields at the end of sf_server_opts (prefork, the user to
 * run as, PROXY timeout, the exec'd program): a program built against
 * 0.2.0 has a smaller struct than sf_server_opts_init now fills, so the
 * soname moved again, to libsockfork.so.2. 0.6.0 only adds (output
 * offload: sf_conn_out_*, sf_conn_subscribe_out, SF_MSG_OUT_STALLED): the
 * soname stays libsockfork.so.4. */
#define SF_VERSION "0.6.0"

/* Version string of the library actually linked. Static storage. */
SF_EXTERN const char *sf_version(void);

/* ---------------------------------------------------------------- logging */

enum sf_log_level {
    SF_LOG_ERROR = 0,
    SF_LOG_WARN = 1,
    SF_LOG_NOTICE = 2, /* start, stop, limits reached and left */
    SF_LOG_INFO = 3,   /* one line per connect and per disconnect */
    SF_LOG_DEBUG = 4
};

/*
 * Receives one complete log line (no trailing newline) at `level` (enum
 * sf_log_level). Called from the loop of the server or pool that logs, in
 * the thread that runs it; never from a signal handler or a child. The
 * line belongs to the library and is only valid during the call.
 */
typedef void (*sf_log_cb)(void *arg, int level, const char *line);

/* -------------------------------------------------------------- addresses */

/* A listening or peer address: TCP over IPv4/IPv6, or a Unix socket path. */
typedef struct sf_addr {
    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
        struct sockaddr_un un;
        struct sockaddr_storage ss;
    } u;
    socklen_t len;
} sf_addr;

/* Longest text sf_addr_format can produce, with its NUL. */
#define SF_ADDR_TEXT_MAX (sizeof(struct sockaddr_un) + 8)

/*
 * Parses "HOST:PORT", "[V6]:PORT" or "unix:PATH". HOST is a numeric IPv4
 * address or a name that resolves to one (the first result is used); PORT
 * is 0..65535, 0 meaning "any free port". Returns 0, -EINVAL for a malformed
 * address (a missing port, a port out of range, an empty or too long path),
 * or -ENOENT when HOST does not resolve.
 */
SF_EXTERN int sf_addr_parse(sf_addr *out, const char *text);

/*
 * Checks a bus URL (sf_server_opts.bus_url): "redis://HOST[:PORT][/DB]"
 * (HOST a name, an IPv4 or a [V6] literal; PORT 1..65535, default 6379;
 * DB digits) or "unix:PATH[?db=N]" (PATH absolute). Returns 0, or -EINVAL
 * with *why (if why is not NULL) set to a static one-line reason.
 */
SF_EXTERN int sf_bus_url_check(const char *url, const char **why);

/*
 * Writes "1.2.3.4:80", "[::1]:80" or "unix:/path" into buf. Returns the
 * length written, or -ENOSPC if buf is too small (buf is then truncated
 * but NUL-terminated), or -EAFNOSUPPORT for another family.
 */
SF_EXTERN int sf_addr_format(const sf_addr *a, char *buf, size_t len);

/* The numeric host part ("1.2.3.4", "::1"; the path for Unix) and port. */
SF_EXTERN int sf_addr_host(const sf_addr *a, char *buf, size_t len);
SF_EXTERN unsigned sf_addr_port(const sf_addr *a);

/* ------------------------------------------------------------ exit status */

typedef struct sf_status {
    int exited;  /* 1: exited normally with `code` */
    int code;    /* exit code, valid when exited */
    int signal;  /* terminating signal, valid when !exited */
    int core;    /* 1 when a core was dumped */
} sf_status;

/* Decodes a wait status as returned by waitpid(). */
SF_EXTERN sf_status sf_status_decode(int wstatus);

/*
 * Writes "exited 3", "killed by SIGSEGV (core dumped)" or
 * "killed by signal 77" into buf. Returns the length, or -ENOSPC.
 */
SF_EXTERN int sf_status_format(const sf_status *st, char *buf, size_t len);

/* "SIGTERM" for SIGTERM, NULL for an unknown number. Static storage. */
SF_EXTERN const char *sf_signal_name(int sig);

/* ---------------------------------------------------- structured log records */

/*
 * Besides its text line (sf_log_cb), every log line is a record: an event
 * name from a fixed set, the process and peer it is about, and typed
 * fields. docs/design.md ("Structured logs") and sockfork(1) list the
 * events with their levels and fields; an event's name and its fields'
 * names and types are kept from one release to the next (fields may be
 * added). A line logged without a name has the event "message".
 */
enum sf_log_field_type {
    SF_LOG_FIELD_INT = 0,    /* v.i */
    SF_LOG_FIELD_UINT = 1,   /* v.u */
    SF_LOG_FIELD_DOUBLE = 2, /* v.d; seconds for a name ending in _s */
    SF_LOG_FIELD_STR = 3,    /* v.s, NUL-terminated, never NULL */
    SF_LOG_FIELD_BOOL = 4,   /* v.b, 0 or 1 */
    SF_LOG_FIELD_STATUS = 5  /* v.status: how a process ended */
};

typedef struct sf_log_field {
    const char *key; /* lower case, words joined by '_' */
    int type;        /* enum sf_log_field_type */
    union {
        long long i;
        unsigned long long u;
        double d;
        const char *s;
        int b;
        sf_status status;
    } v;
} sf_log_field;

typedef struct sf_log_record {
    int level;          /* enum sf_log_level */
    const char *event;  /* "connected", "disconnected", "refused"... */
    int pid;            /* the process the event is about; 0: none */
    const char *peer;   /* the client, as sf_addr_format writes it; NULL: none */
    const char *line;   /* the text line sf_log_cb gets, byte for byte */
    const sf_log_field *fields;
    size_t nfields;
} sf_log_record;

/*
 * Receives each log record at or under the log level, from where sf_log_cb
 * would be called (same thread, same moment; when both are set, `log` gets
 * the line first). The record and everything it points to belong to the
 * library and are only valid during the call.
 */
typedef void (*sf_log_record_cb)(void *arg, const sf_log_record *rec);

/* ------------------------------------------------------------ connections */

/* One accepted connection, seen from the child that serves it. */
typedef struct sf_conn sf_conn;

/*
 * A connection handler. Runs in a forked child with the connection's socket
 * (blocking) and the inherited stdin/stdout/stderr; every other descriptor
 * of the supervisor is closed and the signal mask and dispositions are the
 * defaults, except SIGPIPE, which stays ignored (writes to a closed peer
 * fail with EPIPE). The child leaves with _exit(return value & 255) after
 * flushing stdout: other FILE streams the handler writes to, it must flush
 * or close itself (atexit handlers of the program do not run in the child).
 * `arg` is the pointer given to sf_server_new. `conn` and everything it
 * holds belong to the library and stay valid until the handler returns.
 */
typedef int (*sf_conn_cb)(sf_conn *conn, void *arg);

/* The connection's socket. Owned by the library; do not close it. */
SF_EXTERN int sf_conn_fd(const sf_conn *c);

/* The peer and local addresses. Owned by the library. */
SF_EXTERN const sf_addr *sf_conn_peer(const sf_conn *c);
SF_EXTERN const sf_addr *sf_conn_local(const sf_conn *c);

/*
 * Replaces the child with a program serving the connection the way
 * tcpserver does: the socket becomes fd 0 and fd 1, fd 2 is kept, the
 * channel becomes fd 3 (SOCKFORK_FD=3 in the environment; a server for
 * exec'd programs sets opts.channel_jsonl so it speaks JSON lines), and the
 * environment gets PROTO=TCP, TCPREMOTEIP, TCPREMOTEPORT, TCPLOCALIP and
 * TCPLOCALPORT (TCPLOCALHOST, TCPREMOTEHOST and TCPREMOTEINFO are removed,
 * as with tcpserver -H -R). IPv6 connections get PROTO=TCP6 and the TCP6*
 * names as well; Unix connections get PROTO=IPC, IPCLOCALPATH,
 * IPCREMOTEEUID, IPCREMOTEEGID and IPCREMOTEPID; then the KEY=VALUE pairs
 * of the access rule that let the connection in. SIGPIPE is reset to its
 * default for the program. The program is looked up in PATH.
 * Returns only on failure, with -errno.
 */
SF_EXTERN int sf_conn_exec(sf_conn *c, char *const argv[]);

/* The VALUE of KEY in the access rule that let this connection in
 * (sf_server_rules: `allow 10.0.0.0/8 ZONE=lan`), or NULL. Valid while
 * the handler runs. */
SF_EXTERN const char *sf_conn_rule_value(const sf_conn *c, const char *key);

/*
 * Finds a program as sf_conn_exec and the pool's commands do, with
 * execvp's search of PATH: a name with a '/' is taken as it is, an empty
 * entry of PATH is the current directory, PATH unset is "/bin:/usr/bin".
 * For a caller that would rather refuse a program at once than fail every
 * connection or task. Writes the file into buf (len bytes) and returns 0,
 * or -ENOENT (nothing of that name), -EACCES (found, but not a regular
 * file we may execute; or a directory of PATH we may not search),
 * -EISDIR (a name with a '/' that is a directory), -ENAMETOOLONG.
 */
SF_EXTERN int sf_program_find(const char *name, char *buf, size_t len);

/* ------------------------------------------------------------ the channel */

/*
 * Every child has a channel to the supervisor: a socketpair whose child end
 * is sf_conn_channel_fd (blocking). Through it the child receives messages
 * (pushed by `sockfork ctl send`/`broadcast`, or routed by the bus from
 * its siblings) and sends bus requests, log lines and a status text. The
 * supervisor routes and never interprets: see docs/protocol.md for the
 * wire format, which exec'd programs speak as JSON lines on fd 3.
 *
 * In fork mode a C handler's channel is made at its first use (any call
 * below, or sf_conn_exec): a handler that never uses it costs nothing for
 * it. Until then what is sent to the child waits in its queue. A process
 * the handler forks shares the channel only if it was made before the
 * fork; made in such a process first, it is refused (its end is closed).
 *
 * Sends are blocking writes. The supervisor reads every channel without
 * ever blocking, so a send waits only while it is busy, or while it holds
 * this child for backpressure: a request that would deliver to a sibling
 * whose queue is over half its limit waits, and the channel is not read,
 * until that queue is down to a quarter (docs/design.md). Meanwhile the
 * send keeps receiving: what comes on the channel is read into the
 * library's buffer (up to sixteen of the largest messages; past that the send
 * waits for the channel alone), and sf_conn_recv and sf_conn_msg_pending
 * return it afterwards. A message longer than the server's chan_max gets
 * the child disconnected.
 */
enum sf_msg_kind {
    SF_MSG_DIRECT = 1,    /* sent to this pid (by a sibling, or by ctl send) */
    SF_MSG_NAME = 2,      /* sent to a name this child holds; topic: the name */
    SF_MSG_BROADCAST = 3, /* sent to every child */
    SF_MSG_TOPIC = 4,     /* published on a topic this child subscribes to */
    SF_MSG_HISTORY = 5,   /* a topic's earlier message, replayed on subscribe */
    SF_MSG_CLAIMED = 6,   /* answer to sf_conn_claim: ok, topic = the name */
    SF_MSG_ERROR = 7,     /* a request of this child was refused: topic, why;
                           * ok, an errno value (ESRCH: no such pid or name,
                           * ENOSPC: a limit, EINVAL: a bad request); data,
                           * what it concerns (the pid, name or topic) */
    SF_MSG_MEMBERS = 8,   /* answer to sf_conn_members: topic; data, a line per
                           * subscriber: "PID NAME NAME...\n" */
    SF_MSG_TOPICS = 9,    /* answer to sf_conn_topics: topic, the prefix; data,
                           * a line per topic: "TOPIC SUBSCRIBERS\n" */
    SF_MSG_OUT_STALLED = 10, /* output offload (sf_conn_out_open): the client
                           * took nothing for a while with its buffer high, or
                           * a write of ours did not fit (ok 1); data, "BYTES
                           * SECONDS": what waits for it, for how long */
};

typedef struct sf_msg {
    int kind;              /* enum sf_msg_kind */
    int ok;                /* SF_MSG_CLAIMED: 1 if the name is now ours;
                            * SF_MSG_ERROR: an errno value */
    int from;              /* sender's pid; 0 for the supervisor or ctl */
    char topic[256];       /* topic, name, or error text, NUL-terminated */
    unsigned char *data;   /* len bytes (plus a NUL not counted), malloc'ed */
    size_t len;
} sf_msg;

/* The child's end of its channel, for poll() beside sf_conn_fd. Owned by
 * the library. Before polling it, check sf_conn_msg_pending: a message may
 * already be buffered. */
SF_EXTERN int sf_conn_channel_fd(const sf_conn *c);
SF_EXTERN int sf_conn_msg_pending(const sf_conn *c);

/*
 * Waits until the client socket is readable or a message has come, at
 * most timeout_s seconds (a negative value: no limit; the wait is rounded
 * up to whole milliseconds). Returns a mask of SF_READY_CLIENT and
 * SF_READY_CHANNEL (0 on timeout), or -errno (-EINVAL for a NaN timeout).
 * Hangups count as readable.
 */
#define SF_READY_CLIENT 1
#define SF_READY_CHANNEL 2
SF_EXTERN int sf_conn_wait(sf_conn *c, double timeout_s);

/*
 * Receives one message, blocking until one comes. Returns 1 with *m filled
 * (free it with sf_msg_free), 0 when the supervisor has closed the
 * channel, or -errno (-EPROTO for bytes that are not a message, -EMSGSIZE
 * for one longer than the channel allows: neither should happen with a
 * sockfork supervisor; after either the channel is unusable).
 */
SF_EXTERN int sf_conn_recv(sf_conn *c, sf_msg *m);
SF_EXTERN void sf_msg_free(sf_msg *m);

/* Bus requests. Each returns 0 once sent, or -errno (-EINVAL for a name
 * or topic that is empty, over 255 bytes, or holds a space or a control
 * character). Refusals (no such pid or name, a limit reached) come back
 * later as SF_MSG_ERROR. */
SF_EXTERN int sf_conn_send(sf_conn *c, int pid, const void *data, size_t len);
SF_EXTERN int sf_conn_send_name(sf_conn *c, const char *name, const void *data, size_t len);
SF_EXTERN int sf_conn_broadcast(sf_conn *c, const void *data, size_t len);
SF_EXTERN int sf_conn_publish(sf_conn *c, const char *topic, const void *data, size_t len);
/* history: how many of the topic's kept messages to replay first. */
SF_EXTERN int sf_conn_subscribe(sf_conn *c, const char *topic, unsigned history);
SF_EXTERN int sf_conn_unsubscribe(sf_conn *c, const char *topic);
/* Asks for a unique name; the answer comes as SF_MSG_CLAIMED. */
SF_EXTERN int sf_conn_claim(sf_conn *c, const char *name);
SF_EXTERN int sf_conn_release(sf_conn *c, const char *name);
/*
 * A will: data the supervisor publishes on `topic` if this child's channel
 * closes while it is set (the child crashed, was killed or disconnected),
 * but not at shutdown. A NULL topic clears it. One per child; a new one
 * replaces it.
 */
SF_EXTERN int sf_conn_will(sf_conn *c, const char *topic, const void *data, size_t len);
/* Who subscribes to a topic, and which topics starting with a prefix have
 * subscribers (prefix "" or NULL: all): answered by SF_MSG_MEMBERS and
 * SF_MSG_TOPICS. */
SF_EXTERN int sf_conn_members(sf_conn *c, const char *topic);
SF_EXTERN int sf_conn_topics(sf_conn *c, const char *prefix);

/*
 * Output offload (docs/design.md, "Output offload"; binary channels only:
 * an exec'd JSON-lines program cannot pass a descriptor). sf_conn_out_open
 * hands the supervisor a copy of the client's socket: from then on it is
 * that client's only writer, until this connection ends (the child exits,
 * or a prefork worker's handler returns), after a bounded last flush.
 * first (len bytes: what the child had not written yet) goes first. The
 * child writes with sf_conn_out_write, in order with its other requests,
 * and never to the socket itself again. The buffer holds at most
 * o->limit bytes (0 or more than the server's channel queue limit: that
 * limit); it counts for backpressure as a channel queue does (senders to
 * the child are held while it is past half). With o->report_s > 0, a
 * client that took nothing for that long with its buffer past half is
 * reported (SF_MSG_OUT_STALLED; the child decides). kick_words and
 * shutdown_words (NULL: none; at most 255 bytes each) are written last
 * when the supervisor ends the connection itself: the child was cut off
 * by the bus, or the server shuts down. Returns 0 or -errno (-EALREADY:
 * opened already).
 */
typedef struct sf_out_opts {
    size_t limit;
    double report_s;
    const char *kick_words;
    const char *shutdown_words;
} sf_out_opts;
SF_EXTERN int sf_conn_out_open(sf_conn *c, const sf_out_opts *o, const void *first, size_t len);
/* Bytes for the client, after everything sent before. One that does not fit
 * is dropped and reported (SF_MSG_OUT_STALLED, ok 1). */
SF_EXTERN int sf_conn_out_write(sf_conn *c, const void *data, size_t len);
/* Drops what waits for the client (not what waits behind the gate), writes
 * the part of sep (NULL: none) it has not had (so a line cut short is
 * ended), then data. */
SF_EXTERN int sf_conn_out_reset(sf_conn *c, const char *sep, const void *data, size_t len);
/* Subscribes as sf_conn_subscribe, but the topic's messages are written
 * to the client (prefix + data + suffix; replayed ones with
 * history_prefix; the supervisor's notices with notice_prefix), not sent
 * on the channel. gated: they wait behind the
 * gate until sf_conn_out_gate (a join the child confirms first). */
typedef struct sf_out_format {
    const char *prefix, *history_prefix, *suffix; /* NULL: none; at most 255 bytes each */
    int gated;
    /* The supervisor's own notices about the topic (messages of it missed
     * on the way: a bus bridge's gap) are written in their place too, as
     * notice_prefix + "N messages of TOPIC missed" + suffix, not sent on the
     * channel as an error. */
    const char *notice_prefix;
} sf_out_format;
SF_EXTERN int sf_conn_subscribe_out(sf_conn *c, const char *topic, unsigned history,
                                    const sf_out_format *f);
/* Opens the gate: what waited behind it goes to the client now, in its
 * place; the gated subscriptions write directly from now on. If some did
 * not fit, before + their count + after_one (one) or after_more follows
 * (NULL: nothing). */
SF_EXTERN int sf_conn_out_gate(sf_conn *c, const char *before, const char *after_one,
                               const char *after_more);
/* A line for the supervisor's log, and a status text for `ctl list`. */
SF_EXTERN int sf_conn_log(sf_conn *c, const char *text);
SF_EXTERN int sf_conn_status(sf_conn *c, const char *text);

/*
 * Text from a client made safe to pass on (to other clients, to a log):
 * copies n bytes of `in` into out as valid UTF-8 with no control character
 * but tab, replacing each control character (C0, DEL, C1), each
 * bidirectional or invisible format character (U+00AD, U+061C, U+180E,
 * U+200B, U+200E..U+200F, U+2028..U+202E, U+2060..U+206F, U+FEFF,
 * U+FFF9..U+FFFB, tags U+E0000..U+E007F; U+200C and U+200D are kept), each byte
 * that is not UTF-8 (stray, truncated, overlong, a surrogate, past
 * U+10FFFF) with `replacement` ("\xEF\xBF\xBD" for U+FFFD, or "?"). out
 * gets at most len - 1 bytes and a NUL; a character that would not fit
 * whole ends the copy (with a 3-byte replacement, 3 * n + 1 always fits).
 * Returns the bytes written.
 */
SF_EXTERN size_t sf_text_clean(char *out, size_t len, const void *in, size_t n,
                               const char *replacement);

/*
 * Text from somewhere untrusted made safe to print on a terminal, with
 * nothing lost: copies n bytes of `in` into out, writing printable UTF-8 as
 * it is and escaping the rest in ASCII: each C0 control (tab included) and
 * DEL as \xNN, each C1 control and each character sf_text_clean replaces as
 * bidirectional or invisible format as \uNNNN (\UNNNNNNNN past U+FFFF),
 * each byte that is not UTF-8 as \xNN, and '\' as \\. `in` may hold
 * NULs (written \x00). The caller owns both buffers; nothing is allocated.
 * out gets whole characters and escapes only, as many as fit in len - 1
 * bytes, then a NUL (nothing if len is 0). Returns the length the whole
 * escaped text has, as snprintf does: a value >= len means out holds only
 * its beginning; 4 * n + 1 bytes always fit.
 */
SF_EXTERN size_t sf_text_escape(char *out, size_t len, const void *in, size_t n);

/* ----------------------------------------------------------------- server */

typedef struct sf_server sf_server;

/*
 * Called once from sf_server_run, in the supervisor, when SIGTERM and
 * SIGINT are already handled and just before the first connection is
 * accepted: the moment to announce the listeners (a supervisor watching
 * for that announcement may send SIGTERM at once and get a graceful
 * shutdown). `arg` is opts.ready_arg; s stays the caller's.
 */
typedef void (*sf_ready_cb)(sf_server *s, void *arg);

/*
 * Called in the supervisor on reload (SIGHUP, `ctl reload`) after the new
 * access rules were read (not yet in force): re-read what the application
 * reads from files (reopen a log file). Returns 0, with what it did in
 * `why` (len bytes, NUL-terminated; "" when nothing), or -errno with why
 * not, having changed nothing: the reload then fails whole, the old rules
 * stay, and `ctl reload` and the NOTICE line say why. `arg` is
 * opts.reload_arg. Log lines from the callback are fine.
 */
typedef int (*sf_reload_cb)(void *arg, char *why, size_t len);

/* Bytes queued for one child by default (sf_server_opts.chan_queue). */
#define SF_CHAN_QUEUE_DEFAULT (256u * 1024)

/*
 * The smallest chan_queue a server accepts for a given chan_max (0: the
 * default chan_max): one message of chan_max bytes with the headers and
 * the longest topic the channel adds to it.
 */
SF_EXTERN size_t sf_chan_queue_min(unsigned chan_max);

typedef struct sf_server_opts {
    unsigned max_conns;   /* children at once; 0 = the default, 1000 */
    unsigned max_per_ip;  /* connections at once from one address; 0 = off */
    double idle_timeout_s; /* without data from a TCP client; 0 = off */
    double conn_timeout_s; /* a child holding its connection longer is ended
                            * (SIGTERM to its group, SIGKILL after
                            * kill_grace_s) and logged; 0 = off */
    double grace_s;       /* children may finish at shutdown; default 10 */
    double kill_grace_s;  /* between SIGTERM and SIGKILL; default 2 */
    int backlog;          /* listen backlog; 0 = the system maximum */
    int log_level;        /* highest level passed to `log`; default INFO */
    sf_log_cb log;        /* NULL = no logging */
    void *log_arg;
    sf_ready_cb on_ready; /* NULL = none */
    void *ready_arg;
    /* The channel (see above). */
    int channel_jsonl;    /* 1: children speak JSON lines (they exec programs) */
    unsigned chan_max;    /* largest message from a child; default 64 KiB */
    size_t chan_queue;    /* bytes queued for one child; 0 = the default,
                           * SF_CHAN_QUEUE_DEFAULT; at least
                           * sf_chan_queue_min(chan_max) */
    int chan_full_kick;   /* at a full queue: 0 drop (counted), 1 end the child */
    unsigned topic_history; /* messages kept per topic; default 20 */
    /* Prefork mode (docs/design.md), when workers_max > 0: workers forked
     * ahead accept connections themselves and run the handler once per
     * connection, one connection at a time; the handler sees the same
     * sf_conn API as in fork mode. Without it, a child per connection. */
    unsigned workers_min;  /* kept running (at least 1) */
    unsigned workers_max;  /* at most; more are started, 1, 2, 4... a second
                            * apart, while every worker is busy; at most
                            * max_conns, which then bounds nothing else */
    unsigned max_requests; /* a worker is replaced after about this many
                            * connections (up to 10 % more, at random, so
                            * they do not all go at once); 0 = never */
    double worker_idle_s;  /* an idle worker above workers_min retires after
                            * this; 0 = the default, 5 */
    /* Who the server runs as once its sockets are open: sf_server_run
     * drops to this user (a name or a number) for the whole process tree,
     * with `group` (name or number; NULL = the user's own, with its
     * supplementary groups), before it starts anything. NULL = stay. */
    const char *user;
    const char *group;
    double proxy_timeout_s; /* a ",proxy" listener's connection must send its
                             * whole PROXY header within this; default 5 */
    /* NULL, or the program each connection runs instead of a handler
     * (sf_server_new's handler then NULL), as sf_conn_exec would run it:
     * the connection on fd 0 and 1, the channel on fd 3 (SOCKFORK_FD=3;
     * usually with channel_jsonl), tcpserver's variables, SIGPIPE at its
     * default. Found in PATH once, by sf_server_new; each child is
     * started with vfork+execve, copying nothing of the server. A program
     * that cannot be exec'd is a child that exits 127 (not found) or 126,
     * the reason logged. NULL-terminated; must stay valid until
     * sf_server_free. */
    char *const *program_argv;
    /* Zero-downtime upgrade (SIGUSR2, `ctl upgrade`): the new generation is
     * the binary now at /proc/self/exe's path as sf_server_new found it,
     * started with upgrade_argv (usually main's argv; must stay valid
     * until sf_server_free; NULL = upgrades are refused). It is handed the
     * listening sockets and must be ready within upgrade_timeout_s
     * (default 30) or it is killed and this server serves on. Once it is
     * ready, this one accepts no more, serves its connections to their end
     * or for grace_s, and sf_server_run returns. The new generation's
     * sf_server_new and sf_server_listen find the sockets by their
     * addresses (systemd's come again as LISTEN_FDS: sf_listen_fds). */
    char *const *upgrade_argv;
    double upgrade_timeout_s;
    /* metrics */
    /* NULL, or where to serve Prometheus metrics over HTTP (GET /metrics,
     * the text format 0.0.4; docs/design.md, "Metrics"): an address in
     * sf_addr_parse's syntax, bound by sf_server_new (which then fails
     * with its -errno: -EADDRINUSE, -EINVAL, ...), served on the
     * supervisor's loop while sf_server_run runs, closed (its Unix path
     * removed) by sf_server_free. The numbers are `ctl stats`'s. */
    const char *metrics_addr;
    /* structured logs */
    sf_log_record_cb log_record; /* each line as a record; NULL = none */
    void *log_record_arg;
    /* Called on reload (SIGHUP, `ctl reload`), once the new rules are read
     * and before they are put in place: the moment to reopen a log file. */
    sf_reload_cb on_reload;      /* NULL = none */
    void *reload_arg;
    /* Fan-out: how long a burst of topic publishes may wait in the
     * supervisor for more of it (no input for this long, and at most 8
     * times this in all) before it goes to the subscribers, so each is
     * woken once for many lines (docs/design.md, "Gathering"). Anything
     * else goes at once. 0 = off (the default): every loop pass flushes.
     * `sockfork chat` sets 0.0003. */
    double bus_gather_s;
    /* The bus across instances (docs/design.md, "The bus across instances
     * (Redis)"): NULL, or the Redis every instance of the service shares,
     * "redis://HOST[:PORT][/DB]" or "unix:PATH[?db=N]" (sf_bus_url_check);
     * sf_server_new fails with -EINVAL for another. The bus is then bridged
     * to Redis while sf_server_run runs: topics, names, sends to a name,
     * wills and `ctl broadcast` reach every instance (sends to a pid stay
     * local); local delivery never waits for Redis. The upgrade link is
     * not opened then (both generations are on Redis). 0 below: defaults. */
    const char *bus_url;
    size_t bus_outbox;           /* bytes waiting while Redis is away; 8 MiB */
    double bus_lease_s;          /* names' and the instance's lease; 10 s */
    unsigned bus_stream_len;     /* entries kept per stream (XADD MAXLEN ~); 1000 */
    double bus_timeout_s;        /* connect and command deadline; 2 s and 3 s */
    double bus_ping_s;           /* a PING when idle, so a silent cut is seen; 1 s */
    double bus_backoff_max_s;    /* longest wait between reconnects; 5 s */
} sf_server_opts;

/* Fills opts with the defaults above. */
SF_EXTERN void sf_server_opts_init(sf_server_opts *opts);

/*
 * Creates a server that runs `handler(conn, arg)` in a new child for every
 * accepted connection, or with opts->program_argv set (and handler NULL)
 * that program. `opts` is copied; NULL means the defaults. On success *out
 * owns the server until sf_server_free. Returns 0, -EINVAL for bad options
 * (neither or both of handler and program_argv), the error of
 * sf_program_find for a program it cannot find, or -ENOMEM.
 */
SF_EXTERN int sf_server_new(sf_server **out, const sf_server_opts *opts,
                            sf_conn_cb handler, void *arg);

/*
 * Adds a listening socket for an address in sf_addr_parse's syntax. Binds
 * and listens at once, so the caller learns of -EADDRINUSE, -EACCES or
 * -EINVAL here. A Unix path is created (a stale socket left by a dead
 * server is replaced, a live one gives -EADDRINUSE) and removed by
 * sf_server_free. "ADDR,proxy" is a listener behind a balancer: each
 * connection starts with a PROXY protocol header (sf_server_proxy_from).
 */
SF_EXTERN int sf_server_listen(sf_server *s, const char *addr);

/*
 * Access rules (docs/design.md, "Access rules"): loads the rules file at
 * `path` (one rule per line, first match wins: `allow|deny CIDR|unix
 * [KEY=VALUE...]`, `default allow|deny`). A denied peer is closed before
 * anything is forked, logged with the rule's line, and counted; an allowed
 * one gets its rule's KEY=VALUE pairs (sf_conn_rule_value; an exec'd
 * program's environment). SIGHUP and `ctl reload` read the file again,
 * whole or not at all. Returns 0, or -errno with one line in err ("FILE:
 * LINE: what is wrong" for a parse error, -EINVAL). Before sf_server_run.
 */
SF_EXTERN int sf_server_rules(sf_server *s, const char *path, char *err, size_t errlen);

/*
 * A balancer allowed to send PROXY protocol headers (v1 or v2) to the
 * listeners added as "ADDR,proxy": an IPv4 or IPv6 prefix ("10.0.0.0/8",
 * a bare address, "unix"). Repeatable; a PROXY listener takes a header
 * only from these, refuses any other source (logged, counted), and never
 * guesses whether a header is there. The header's client address is the
 * peer for everything (logs, limits, rules, `ctl list`, sf_conn_peer,
 * TCPREMOTEIP). Returns 0, -EINVAL or -EBUSY. sf_server_run refuses a PROXY
 * listener with none (-EDESTADDRREQ).
 */
SF_EXTERN int sf_server_proxy_from(sf_server *s, const char *cidr);

/*
 * The sockets systemd passed this process (socket activation: LISTEN_PID
 * is ours, LISTEN_FDS of them as descriptors 3, 4, ...), for
 * sf_server_listen_fd. Returns their number (0: none, or not ours) and
 * sets *names to a NULL-terminated array of their names (LISTEN_FDNAMES;
 * "unknown" for a missing one; free each and the array), or -errno. The
 * descriptors are made close-on-exec, and the three variables are taken
 * out of the environment, so no child sees them. Call it early, before
 * anything else opens descriptors.
 */
SF_EXTERN int sf_listen_fds(char ***names);

/*
 * Serves a socket that is already listening: one systemd passed (socket
 * activation: the caller takes them with sf_listen_fds), or one inherited.
 * A TCP or Unix stream socket in the listen state; s takes it (closes it
 * in sf_server_free) and never removes its Unix path. Returns 0,
 * -ENOTSOCK, -EINVAL (not a listening stream socket), -EMFILE (64
 * listeners already) or -EBUSY (running).
 */
SF_EXTERN int sf_server_listen_fd(sf_server *s, int fd);

/*
 * Opens the control socket at `path`: a Unix socket, mode 0600 from its
 * creation, on which `sockfork ctl` (or any program speaking the JSON-lines
 * protocol of docs/protocol.md) lists, kicks and counts children. A stale
 * socket file is replaced; a live one gives -EADDRINUSE. Removed by
 * sf_server_free. Call before sf_server_run, at most once.
 */
SF_EXTERN int sf_server_control(sf_server *s, const char *path);

/* The control socket's path, or NULL if there is none. Owned by s. */
SF_EXTERN const char *sf_server_control_path(const sf_server *s);

/* The metrics endpoint's address (opts.metrics_addr, a port 0 resolved),
 * or NULL if there is none. Owned by s. */
SF_EXTERN const sf_addr *sf_server_metrics_addr(const sf_server *s);

/* Number of listeners, and the address the i-th one really has (port 0
 * resolved to the port the kernel chose). NULL if i is out of range. */
SF_EXTERN size_t sf_server_listener_count(const sf_server *s);
SF_EXTERN const sf_addr *sf_server_listener_addr(const sf_server *s, size_t i);

/*
 * Runs the supervisor until SIGTERM or SIGINT (or sf_server_stop), then
 * shuts down gracefully (SIGHUP reloads what is read from files): listeners are closed, children get `grace_s`
 * seconds to finish, then SIGTERM, then SIGKILL after `kill_grace_s`; a second
 * signal skips what is left of the grace. Returns 0 once every
 * child has been reaped, or -errno if the loop could not start.
 * Installs handlers for SIGTERM, SIGINT, SIGHUP and SIGCHLD and ignores
 * SIGPIPE for the process while it runs (C handlers inherit it ignored);
 * if the process is killed, even by SIGKILL, the children's process groups
 * are ended (SIGTERM, `kill_grace_s`, SIGKILL). Unblocks SIGTERM, SIGINT and
 * SIGHUP once its handlers run: a caller may block them from before
 * sf_server_listen/sf_server_control, so that a signal during startup stops
 * the server cleanly (its socket files removed) instead of killing it.
 * Raises the descriptor soft limit to the
 * hard limit (children get the original back). Call at most once.
 *
 * With opts.user, drops to that user and group for good once the
 * listeners and the control socket are open (the control socket is given
 * to the user), before anything is forked; returns -ENOENT (no such user),
 * -ENXIO (no such group), -ESRCH (a uid with no user and no group given)
 * or -EPERM (not permitted, or root could be had back) without serving.
 * Under systemd (NOTIFY_SOCKET set) it sends READY=1 once it accepts,
 * STATUS= with the connections being served (at most once a second),
 * STOPPING=1 when shutdown begins, and WATCHDOG=1 at half of
 * WATCHDOG_USEC; it takes those variables out of the environment first,
 * so no child can speak for the service.
 *
 * Children are forked by a spawner: a process sf_server_run forks at
 * start, so that the supervisor, which holds one channel per child, never
 * forks with them open. A handler therefore runs in a copy of the program
 * as it was when sf_server_run began (like Python's "forkserver"): what
 * the program changes in its memory afterwards, later children do not
 * see. On Linux the process becomes a child subreaper (orphans of a dead
 * spawner are reaped here) for the rest of its life.
 */
SF_EXTERN int sf_server_run(sf_server *s);

/* Asks a running server to shut down as SIGTERM would. Async-signal-safe
 * and thread-safe (an ev_async_send): it may be called from a signal
 * handler or from any thread, at any time between sf_server_new and
 * sf_server_free. */
SF_EXTERN void sf_server_stop(sf_server *s);

/* Closes listeners, removes Unix paths, frees everything. NULL is fine. */
SF_EXTERN void sf_server_free(sf_server *s);


/* ------------------------------------------------------------ task pool */

/*
 * A pool runs tasks in child processes, at most `jobs` at once, with a
 * timeout per attempt, retries and halting. A task is either a command
 * (exec'd from a vfork() child: no page tables copied) or a call of the pool's
 * C function in a forked worker, which can run many tasks one after the
 * other. Every task's child is the leader of a process group of its own:
 * a timeout or a cancel sends SIGTERM to the group, then SIGKILL to the
 * group after the kill grace or as soon as the leader has exited, so no
 * grandchild left in the group survives it. The pool waits for its own
 * children only (never waitpid(-1): it reaps no child of the program that
 * is not its own) and installs no signal handler; sf_pool_run blocks in its
 * own loop.
 *
 * While it runs, sf_pool_run:
 * - reads which signals the program catches when it starts, and puts those
 *   back to SIG_DFL in its children: in a command's vfork child (which
 *   shares the program's memory until its exec) and in a worker (a C task
 *   runs with none of the program's handlers; ignored signals stay
 *   ignored). Install handlers before sf_pool_run, not from its callbacks
 *   or another thread while it runs.
 * - asks the kernel for a short scheduler slice (0.1 ms) for its own
 *   thread, so that it starts the next task soon after one ends even when
 *   its children keep every CPU busy (a kernel without the setting leaves
 *   the slice as it was). Its commands and workers run with the thread's
 *   previous slice, and the thread gets it back when sf_pool_run returns;
 *   processes a callback starts itself (system(), popen) inherit the short
 *   slice.
 * - forks one small guard process (its child until sf_pool_run returns,
 *   then reaped), told each task's process group: if the program is
 *   killed, even by SIGKILL, the guard ends the groups still running
 *   (SIGTERM, the kill grace, SIGKILL). A waitpid(-1) of the program may
 *   reap it too; that is harmless.
 *
 * Every submitted task is reported exactly once, to on_done.
 *
 * Threads and signals: sf_pool_cancel is async-signal-safe and
 * thread-safe (see there). No other sf_pool_* call is: none may run at the
 * same time as another call on the same pool, and none from a signal
 * handler. While sf_pool_run runs, make them from its callbacks only (so
 * in its thread), never from another thread; before and after it, from
 * any one thread. The sf_task_* calls are made from inside a C task only,
 * in its worker. The callbacks below (all but sf_task_cb) are called from
 * within sf_pool_run, in the thread that called it (on_done and log also
 * from within sf_pool_free, for what it ends), never from a signal handler
 * or a child.
 * A callback may call sf_pool_submit, sf_pool_submit_cmd,
 * sf_pool_set_next_seq, sf_pool_cancel and the getters; not sf_pool_run or
 * sf_pool_free.
 *
 * Log lines (the `log` callback of sf_pool_opts, lines above log_level not
 * passed): ERROR, the pool itself failed (its loop, a task start that can
 * never succeed, a worker that broke the protocol, no memory for a result);
 * WARN, something went wrong that the pool works around or that a task
 * did wrong (a start retried later, a command that cannot run, a bad fd-3
 * line, a result over result_max, an idle worker that died, no guard);
 * NOTICE, the run changes course (halting, cancelled, an output limit hit,
 * start failures counted at the end of an episode, exits polled for lack of
 * pidfds); INFO, one line per task event (a timeout, a task's own log
 * line). Each line is valid during the call only.
 */
typedef struct sf_pool sf_pool;

/* The task a worker is running, seen from inside it. */
typedef struct sf_task sf_task;

/*
 * A C task: runs in a worker process (a forked copy of the program, so never
 * in the thread of sf_pool_run) with the argument bytes the task was
 * submitted with; t, arg and its len bytes are the worker's, valid during
 * the call. task_arg is sf_pool_opts.task_arg. Returns 0 for success, or a
 * failure code (1..255 as an exit code would be). The worker may be reused:
 * leave no state behind that the next task would trip on. Exiting or
 * crashing fails the task with that status; the pool replaces the worker.
 */
typedef int (*sf_task_cb)(sf_task *t, const void *arg, size_t len, void *task_arg);

/* From inside a C task (t as given to sf_task_cb). The getters return
 * what they say; the others return 0 or -errno. */
SF_EXTERN unsigned long sf_task_seq(const sf_task *t);  /* from 1, in submission order */
SF_EXTERN unsigned sf_task_slot(const sf_task *t);      /* 1..jobs */
SF_EXTERN unsigned sf_task_attempt(const sf_task *t);   /* 1 for the first */
/* Progress: done of total, or a fraction in [0, 1] when total is 0. */
SF_EXTERN int sf_task_progress(sf_task *t, double done, double total);
/* The result bytes (at most the pool's result_max; -EMSGSIZE past it),
 * copied; a later call replaces an earlier one. */
SF_EXTERN int sf_task_result(sf_task *t, const void *data, size_t len);
/* A line for the pool's log callback (INFO), copied. */
SF_EXTERN int sf_task_log(sf_task *t, const char *text);

/* How a task ended, once and for all. */
enum sf_task_state {
    SF_TASK_OK = 0,     /* its last attempt succeeded */
    SF_TASK_FAILED,     /* every attempt allowed failed */
    SF_TASK_CANCELLED,  /* never ran: the pool halted or was cancelled first */
};

/* A task's end, given to on_done. The report and everything it points to
 * (argv, result) belong to the pool and are freed when on_done returns:
 * copy what is to be kept. */
typedef struct sf_task_report {
    unsigned long seq;          /* submission order, from 1 */
    void *data;                 /* the pointer given at submission (the caller's) */
    int state;                  /* enum sf_task_state */
    sf_status status;           /* how the last attempt ended (a C task's return
                                   value is an exit code) */
    int timed_out;              /* the last attempt ran out of time */
    int killed;                 /* the last attempt was stopped by sf_pool_cancel
                                   or a halt (SF_HALT_NOW) */
    int spawn_error;            /* errno when the command could not be started
                                   (status then says exited 127 or 126), else 0 */
    unsigned attempts;          /* attempts made, retries included */
    unsigned slot;              /* 1..jobs, of the last attempt */
    int pid;                    /* of the last attempt's process (reaped) */
    double start_time;          /* of the last attempt, seconds since the epoch */
    double duration_s;          /* of the last attempt */
    unsigned long long stdout_bytes, stderr_bytes; /* commands with capture_output */
    char *const *argv;          /* a command's argv (last attempt), else NULL */
    const void *result;         /* the last result of the last attempt, or NULL: a */
    size_t result_len;          /*   command's is compact JSON text, a C task's bytes */
    int output_limited;         /* stopped (or cut) for writing more than output_max */
    const char *host;           /* queue_role 1: the host that ran it; else NULL */
} sf_task_report;

/* What a running task is doing: filled by sf_pool_running into the
 * caller's array, and given to on_start and on_output (the pool's, valid
 * during the call). */
typedef struct sf_task_info {
    unsigned long seq;
    void *data;                 /* the pointer given at submission */
    unsigned slot, attempt;
    int pid;
    double elapsed_s;
    double progress_done, progress_total; /* total 0: done is a fraction; -1: none */
} sf_task_info;

/*
 * Builds a command's argv for one attempt: called in sf_pool_run's thread
 * just before each attempt starts, with the task's seq, the slot it will
 * run in (1..jobs), the data and cmd_arg given to sf_pool_submit_cmd.
 * Returns a NULL-terminated array in one malloc'ed block, which the pool
 * then owns: it is given back in the report's argv and free()d when
 * on_done returns (or when the attempt is retried). NULL with errno set
 * fails the task with spawn_error set (for a lack of resources, ENOMEM,
 * EAGAIN..., the attempt is put back and tried again later).
 */
typedef char **(*sf_pool_cmd_cb)(unsigned long seq, unsigned slot, void *data, void *cmd_arg);

/* What a feed callback returns. */
enum sf_pool_feed {
    SF_FEED_END = 0,   /* nothing more will ever be submitted */
    SF_FEED_MORE = 1,  /* call again when there is room (and feed_fd is readable);
                          with no feed_fd to poll, at once: say WAIT when there is
                          nothing to give until a task ends */
    SF_FEED_WAIT = 2,  /* call again only after a task has ended */
    SF_FEED_READY = 3, /* more is at hand (read already): call again when there is
                          room, without waiting for feed_fd */
};

/* Asks for more tasks: submits some (sf_pool_submit*) and returns an enum
 * sf_pool_feed. Called when fewer than `jobs` tasks wait to start (with
 * feed_fd >= 0, only when that descriptor is readable, or after READY). */
typedef int (*sf_pool_feed_cb)(sf_pool *p, void *arg);
/* A task has ended: once per task. r: see sf_task_report (freed when this
 * returns). */
typedef void (*sf_pool_done_cb)(sf_pool *p, const sf_task_report *r, void *arg);
/* An attempt has started (its process runs). t is valid during the call. */
typedef void (*sf_pool_start_cb)(sf_pool *p, const sf_task_info *t, void *arg);
/* Captured output of a running attempt: stream 1 (stdout) or 2 (stderr),
 * len bytes as they were read (a bounded chunk, no NUL added). t and buf
 * are the pool's, valid during the call. */
typedef void (*sf_pool_output_cb)(sf_pool *p, const sf_task_info *t, int stream,
                                  const char *buf, size_t len, void *arg);
/* Called every tick_s seconds while sf_pool_run runs. */
typedef void (*sf_pool_tick_cb)(sf_pool *p, void *arg);

enum sf_pool_halt { SF_HALT_NEVER = 0, SF_HALT_SOON, SF_HALT_NOW };

typedef struct sf_pool_opts {
    unsigned jobs;                /* at once; 0: the number of CPUs online */
    double timeout_s;             /* per attempt; 0: none */
    double kill_grace_s;          /* SIGTERM to SIGKILL (default 2) */
    unsigned retries;             /* extra attempts for a failed task */
    /* Retry only failures that match one of these; all three empty/0: any.
     * The arrays are the caller's and must outlive the pool. */
    const int *retry_codes; size_t nretry_codes;
    const int *retry_signals; size_t nretry_signals;
    int retry_timeout;
    /* Halting: after halt_fail failed tasks (or halt_fail_pct percent of the
     * tasks ended so far), SOON starts nothing more and lets the running
     * ones finish; NOW also stops the running ones. */
    int halt;                     /* enum sf_pool_halt */
    unsigned halt_fail;           /* 0: not by count */
    double halt_fail_pct;         /* 0: not by percentage */
    unsigned queue_max;           /* submitted, not started (default 65536) */

    /* C tasks: the function, its argument, and how many tasks one worker
     * runs before it is replaced (0: no limit; 1: a fork per task). task
     * and what task_arg points to must exist before sf_pool_run: workers
     * are forked copies of the program. */
    sf_task_cb task;
    void *task_arg;
    unsigned max_tasks_per_worker;
    /* Commands: stdout and stderr go to on_output instead of being
     * inherited; stdin is /dev/null. */
    int capture_output;
    /* Largest result, log line or fd-3 line of a task (default 64 KiB). */
    size_t result_max;

    sf_pool_feed_cb feed;         /* NULL: only what is submitted */
    int feed_fd;                  /* -1 (the default): none to poll */
    sf_pool_done_cb on_done;      /* required */
    sf_pool_start_cb on_start;    /* NULL = none */
    sf_pool_output_cb on_output;  /* NULL = output read and dropped */
    sf_pool_tick_cb on_tick;      /* NULL = none */
    double tick_s;                /* 0: no ticks */
    void *arg;                    /* for every sf_pool_*_cb callback above */
    int log_level;                /* highest level passed to `log`; default INFO */
    sf_log_cb log;                /* the pool's and the tasks' log lines; NULL: none */
    void *log_arg;
    /* Captured output of one attempt, stdout and stderr together, passed to
     * on_output (0: no limit; the pool itself holds none of it). Past it,
     * on_output gets what fits, nothing more is read, and the attempt is
     * stopped as a timed-out one is (or, if it has exited already, only
     * cut); it fails with output_limited set and is not retried (it would
     * write as much again). An attempt already being stopped (a timeout, a
     * halt) is only cut and keeps its reason. */
    unsigned long long output_max;
    /* structured logs */
    sf_log_record_cb log_record; /* each line as a record; NULL = none */
    void *log_record_arg;
    /* metrics */
    /* NULL, or where to serve Prometheus metrics over HTTP (GET /metrics,
     * the text format 0.0.4; docs/design.md, "Metrics"), with the server's
     * syntax, bounds and answers (sf_server_opts.metrics_addr): bound by
     * sf_pool_new (which then fails with its -errno: -EADDRINUSE,
     * -EINVAL, ...), answered while sf_pool_run runs (a scraper that comes
     * before or after waits in the listen backlog), closed (its Unix path
     * removed) by sf_pool_free. The numbers are sf_pool_get_stats's, with
     * jobs and the process's CPU, memory and start time. Its descriptors
     * are close-on-exec and never reach a task. */
    const char *metrics_addr;
    /* task queue (issue 17) */
    /* NULL, or a task queue in Redis: redis://HOST[:PORT]/[DB/]NAME or
     * unix:PATH?name=NAME (docs/design.md, "Tasks over a Redis queue").
     * queue_role 1: submit the tasks there instead of running them (a
     * command's argv is built once, with slot 0) and report what workers
     * wrote back (each task's captured output through on_output, then
     * on_done, its host in the report); jobs is then how many tasks may be
     * outstanding at once (queue_max if 0). queue_role 2: run tasks taken
     * from there (`sockfork worker`): feed, on_output and capture_output
     * are the queue's; timeout_s, kill_grace_s and output_max come from the
     * queue; sf_pool_cancel gives the running tasks back. sf_pool_run then
     * returns -ECONNREFUSED (or the connection's -errno) if Redis cannot be
     * reached at all, -EEXIST if the queue holds another or a finished run. */
    const char *queue_url;
    int queue_role;               /* 0 none; 1 submit; 2 work */
    double queue_lease_s;         /* submit: how long a worker may go silent
                                     before its tasks go to another (default 30) */
    const char *queue_host;       /* work: the host name its results carry
                                     (NULL: gethostname) */
} sf_pool_opts;

/* Fills o with the defaults above. */
SF_EXTERN void sf_pool_opts_init(sf_pool_opts *o);

/*
 * Creates a pool. `o` is copied (what its pointers point to is not). On
 * success *out owns the pool until sf_pool_free; on failure *out is NULL.
 * Returns 0, -EINVAL for bad options (o NULL, no on_done, a negative or
 * non-finite duration, jobs over 65536...), -ENOMEM, or the
 * -errno of a descriptor the pool could not open (-EMFILE...).
 */
SF_EXTERN int sf_pool_new(sf_pool **out, const sf_pool_opts *o);

/*
 * Submits a C task (the pool's task callback gets a copy of the len bytes
 * at arg; len at most result_max) or a command (its argv built by cmd for
 * each attempt). data is the caller's, given back in the task's report and
 * info. Returns 0 and, if seq is not NULL, the task's number (>= 1) in
 * *seq; or -EINVAL, -ENOBUFS past queue_max, -ENOMEM, -ECANCELED once
 * halting (the task is then not reported).
 */
SF_EXTERN int sf_pool_submit(sf_pool *p, const void *arg, size_t len, void *data,
                             unsigned long *seq);
SF_EXTERN int sf_pool_submit_cmd(sf_pool *p, sf_pool_cmd_cb cmd, void *cmd_arg, void *data,
                                 unsigned long *seq);
/* Numbers the next submitted task seq instead of the last one + 1, for a
 * caller that skips some (a resumed run). Returns 0, or -EINVAL unless seq
 * is above every seq given so far. */
SF_EXTERN int sf_pool_set_next_seq(sf_pool *p, unsigned long seq);

/* Runs until every task submitted or fed has ended, or until a halt or a
 * cancel has stopped everything. Returns 0, -EBUSY if it is running
 * already (called from a callback), or -errno when the pool itself failed
 * (its children are then stopped and reaped before it returns). */
SF_EXTERN int sf_pool_run(sf_pool *p);

/*
 * Asks the pool to start nothing more and stop the running tasks; the
 * tasks not started are reported CANCELLED (FAILED if they were waiting
 * for a retry). It only sets an atomic flag and
 * writes to an eventfd (errno is left as it was), and sf_pool_run acts on
 * it in its own thread: so it is async-signal-safe (meant for a SIGINT or
 * SIGTERM handler) and thread-safe, and may be called at any time between
 * sf_pool_new and sf_pool_free (not during sf_pool_free), from a callback
 * too. Called before sf_pool_run, the run starts nothing.
 */
SF_EXTERN void sf_pool_cancel(sf_pool *p);

typedef struct sf_pool_stats {
    unsigned long submitted, started, running, pending;
    unsigned long ok, failed, cancelled;  /* ended tasks, by state */
    unsigned long timed_out, killed_by_signal, failed_by_code, spawn_errors;
    unsigned long retried;                /* attempts beyond the first */
    unsigned long workers_started;        /* C tasks: processes forked */
    int halted;                           /* a halt condition was met */
    int cancelled_by_request;             /* sf_pool_cancel was called */
    unsigned long output_limited;         /* failed: stopped for their output */
} sf_pool_stats;

/* Getters (in sf_pool_run's thread, see above): the counters; up to max
 * entries about the running tasks in the caller's array, returning how
 * many; the number of job slots. */
SF_EXTERN void sf_pool_get_stats(const sf_pool *p, sf_pool_stats *out);
SF_EXTERN size_t sf_pool_running(const sf_pool *p, sf_task_info *out, size_t max);
SF_EXTERN unsigned sf_pool_jobs(const sf_pool *p);
/* The metrics endpoint's address (opts.metrics_addr, a port 0 resolved),
 * or NULL if there is none. Owned by p. */
SF_EXTERN const sf_addr *sf_pool_metrics_addr(const sf_pool *p);
/* Kills and reaps what still runs (reporting its tasks, and those never
 * started, to on_done), frees everything. Not from a callback. NULL is
 * fine. */
SF_EXTERN void sf_pool_free(sf_pool *p);

#ifdef __cplusplus
}
#endif
#endif /* SOCKFORK_H */
