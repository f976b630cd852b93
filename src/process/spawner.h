/*
 * spawner.h - the small process that forks the supervisor's children.
 *
 * Why: the supervisor holds one channel descriptor per child. If it forked
 * the children itself, every fork() would copy, and every child close
 * again, a descriptor table as large as the number of children: about 1 ms
 * per fork at 10,000 children (docs/design.md). So at start the supervisor
 * forks one spawner, which holds nothing but its socket to the supervisor,
 * and asks it for each child. A fork costs the same at 10 children or at
 * 10,000, and it happens on the other core while the supervisor goes on.
 *
 * The spawner is the parent of the children it forks: it reaps them and
 * reports each exit over its socket, and it signals them on request, so a
 * pid is only ever signalled by the process that will reap it (a recycled
 * pid is never hit). The supervisor is the spawner's parent and, on Linux,
 * the subreaper of everything below it: if the spawner dies, its children
 * get SIGTERM (parent-death signal) and the supervisor reaps them itself.
 * If the supervisor dies, the spawner sees its socket close and ends the
 * children's process groups, grandchildren included.
 *
 * The socket is a SOCK_SEQPACKET pair: one request per message,
 * descriptors riding along with SCM_RIGHTS; answers go back several to a
 * message. Answers to fork requests come in the order of the requests, and
 * a child's STARTED always comes before its EXITED.
 */
#ifndef SF_PROCESS_SPAWNER_H
#define SF_PROCESS_SPAWNER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/types.h>

#include "process/process.h"

#define SPAWN_BLOB_MAX 8192 /* what a request tells the child function: a connection's
                             * addresses and the KEY=VALUE pairs of its access rule */
#define SPAWN_FDS_MAX 66    /* descriptors a child gets, as 3, 4, 5...: a prefork worker
                             * gets every listener (64 at most) and its channel */

enum spawn_req_kind { SPAWN_REQ_FORK = 1, SPAWN_REQ_SIGNAL = 2 };
enum spawn_msg_kind { SPAWN_MSG_STARTED = 1, SPAWN_MSG_FAILED = 2, SPAWN_MSG_EXITED = 3 };

typedef struct spawn_req {
    uint32_t kind;
    uint32_t cookie;        /* FORK: the supervisor's, echoed in the answer */
    int32_t pid;            /* SIGNAL: whom */
    int32_t sig;            /* SIGNAL: what; its process group gets it */
    uint32_t blob_len;      /* FORK: bytes of blob used */
    unsigned char blob[SPAWN_BLOB_MAX];
} spawn_req;

typedef struct spawn_msg {
    uint32_t kind;
    uint32_t cookie;        /* STARTED, FAILED: the request's */
    int32_t pid;            /* STARTED, EXITED */
    int32_t value;          /* FAILED: errno; EXITED: wait status;
                             * STARTED: 0, or the errno of a program's
                             * failed exec (the child exits 126 or 127) */
} spawn_msg;

/*
 * A request's child is one of two kinds, as the spawner's plan function
 * says for each request (decided in the spawner, before anything is
 * forked):
 *
 * - forked: a copy of the spawner runs the child function (a C handler);
 * - exec'd: a program started with vfork+execve (proc_exec_or_exit), for
 *   which nothing of the spawner's memory is copied, and which gets what
 *   the plan laid out: its argv, its whole environment (built by the plan
 *   in the spawner, so the child sets nothing) and its descriptors 0, 1,
 *   ... from the request's.
 *
 * Both start the same way otherwise: a process group of their own, the
 * signal mask empty (the spawner catches no signal: it blocks SIGCHLD,
 * which it reads from a signalfd, and SIGINT, so its children have no
 * handler of its to reset), the children's RLIMIT_NOFILE
 * (spawner_opts.fdlimit), SIGTERM if the spawner dies; and are reaped,
 * reported and signalled alike. An
 * exec'd program also gets SIGPIPE at its default (the server ignores it
 * for itself and its C handlers; programs written for tcpserver expect
 * the default). A program that cannot be exec'd is still a child that
 * started: it exits 127 (not found) or 126, as a shell's child does, and
 * its STARTED answer carries the exec's errno.
 */

/*
 * A forked child runs this, with the request's blob and the request's
 * descriptors laid out as 3, 4, ... (everything else closed, signals at
 * their defaults, a process group of its own). Must not return: leave
 * with _exit().
 */
typedef void (*spawner_child_fn)(const void *blob, size_t len, int nfds);
/* (nfds counts spawner_opts.shared_fd too, the last of them, if set.) */

/* What an exec'd child runs, as a plan function fills it in. */
typedef struct spawn_exec {
    const char *file;     /* the path execve takes (no PATH search here) */
    char *const *argv;
    char *const *envp;    /* the whole environment */
    /* The program's descriptors 0 .. nfds-1, from the request's (the
     * plan function's fds); -1 leaves that one as the spawner has it.
     * Every other descriptor is closed. */
    int fds[PROC_KEEP_MAX];
    int nfds;
} spawn_exec;

/*
 * Runs in the spawner for each fork request, before anything is forked,
 * with the request's blob and descriptors (still the spawner's; they are
 * closed after the child starts). Returns 0 for a forked child (the child
 * function runs), 1 for an exec'd one with *ex filled in (what it points
 * to must stay valid until the next call), or -errno to fail the request
 * with that error. Must not block.
 */
typedef int (*spawner_plan_fn)(const void *blob, size_t len, const int *fds, int nfds,
                               spawn_exec *ex);

typedef struct spawner_opts {
    spawner_child_fn child;
    /* NULL: every child is forked. */
    spawner_plan_fn plan;
    /* The children's RLIMIT_NOFILE; NULL leaves the spawner's. */
    const struct rlimit *fdlimit;
    /* Children at once (0: no limit but memory); a fork request past it
     * fails with EAGAIN. */
    unsigned max_children;
    /* If the supervisor dies: seconds between SIGTERM and SIGKILL to the
     * children's groups. */
    double kill_grace;
    /* -1, or a descriptor of the caller's that the spawner keeps and every
     * forked child gets after its request's (one more in the child
     * function's nfds): fork mode's broker (server/broker.h), sent once
     * rather than with every request. The spawner holds it as 4, so that
     * with a request of one descriptor (received as 3) the child moves
     * nothing. Exec'd children do not get it. */
    int shared_fd;
} spawner_opts;

/*
 * Forks the spawner. In the caller returns the spawner's pid and sets
 * *sock to the caller's end of the socket (close-on-exec, non-blocking),
 * or returns -errno with nothing left behind. When the caller closes its
 * end, or dies (even by SIGKILL), the spawner takes its children's process
 * groups down (SIGTERM, kill_grace, SIGKILL; process/groups.h) and exits.
 */
pid_t spawner_start(const spawner_opts *opts, int *sock);

/* Sends one request without blocking; fds (nfds of them, may be 0) ride
 * along. Returns 0, -EAGAIN when the socket is full, or -errno. */
int spawner_send(int sock, const spawn_req *req, const int *fds, int nfds);

/* Answers come several to a message, up to SPAWN_MSGS_MAX. */
#define SPAWN_MSGS_MAX 64

/* Receives one message of answers without blocking, into msgs (room for
 * max, which should be SPAWN_MSGS_MAX). Returns how many, 0 at EOF (the
 * spawner is gone), -EAGAIN when there are none, or -errno (-EPROTO for a
 * message of the wrong size). */
int spawner_recv(int sock, spawn_msg *msgs, int max);

#endif
