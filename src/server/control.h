/*
 * control.h - the control socket: a Unix socket (mode 0600) on which
 * `sockfork ctl` sends one JSON object per line and reads one back.
 *
 * This file is the transport only: bounded clients, bounded lines, bounded
 * replies. What a command means is the owner's callback.
 */
#ifndef SF_CONTROL_H
#define SF_CONTROL_H

#include <ev.h>
#include <jansson.h>

#include "server/listener.h"
#include "log.h"

#define CTL_CLIENTS_MAX 16
#define CTL_LINE_MAX (64 * 1024)     /* a request */
#define CTL_REPLY_MAX (16 << 20)     /* replies queued to one client */

/*
 * Answers one request. `req` is an object with a string "cmd" (borrowed).
 * Returns a new reference to the reply object; the transport adds nothing
 * to it. NULL means out of memory (the client gets an error reply).
 */
typedef json_t *(*ctl_cb)(void *arg, const char *cmd, json_t *req);

/* A ctl_cb's answer that comes later (an upgrade's outcome): the client's
 * further requests wait until ctl_answer_waiting gives it. */
extern char ctl_later_tag;
#define CTL_LATER ((json_t *)(void *)&ctl_later_tag)

typedef struct ctl_client {
    int fd;                 /* -1: slot free */
    ev_io io;
    char *in;               /* CTL_LINE_MAX bytes: the unfinished request */
    size_t in_have;
    char *out;              /* answers not yet written, up to CTL_REPLY_MAX */
    size_t out_len, out_sent;
    size_t discarding;      /* >0: answered an over-long line, draining before close */
    int waiting;            /* its last request was answered CTL_LATER */
    int read_eof;           /* it has shut down its side while waiting */
    struct ctl_server *owner;
} ctl_client;

typedef struct ctl_server {
    struct ev_loop *loop;
    listener lis;
    ctl_client clients[CTL_CLIENTS_MAX];
    ctl_cb cb;
    void *arg;
    const sf_logger *log;
    int open;
} ctl_server;

/* Binds the socket at path (mode 0600; a stale socket is replaced, a live
 * one is -EADDRINUSE) and starts accepting on loop. With take_over, a live
 * one's path is taken from it: bound beside it and renamed over it, so the
 * path never names nothing (an upgrade's new generation). Returns 0 or
 * -errno. */
int ctl_open(ctl_server *c, struct ev_loop *loop, const char *path, ctl_cb cb, void *arg,
             const sf_logger *log, int take_over);

/* Disconnects every client, closes the socket and removes its path. */
void ctl_close(ctl_server *c);

/* Answers every client waiting after CTL_LATER with make(arg) (a new
 * reference each), and goes on with their next requests. */
void ctl_answer_waiting(ctl_server *c, json_t *(*make)(void *arg), void *arg);

/* A reply {"ok": false, "error": msg}. New reference, or NULL. */
json_t *ctl_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
