/* handlers.c - the built-in connection handlers. They run in the child. */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define ECHO_BUF (64 * 1024)
#define LINE_BUF 4096 /* longer lines are echoed in pieces, never held whole */

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Returns bytes read, 0 at EOF or when the peer reset the connection
 * (both mean the client is gone), -1 on another error. */
static ssize_t read_some(int fd, char *buf, size_t len)
{
    for (;;) {
        ssize_t n = read(fd, buf, len);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        return errno == ECONNRESET ? 0 : -1;
    }
}

int handler_echo(sf_conn *c, void *arg)
{
    /* Static, not on the stack: a 64 KiB frame is probed page by page
     * (-fstack-clash-protection), dirtying 16 pages in every child; in .bss
     * only the pages a read() fills are ever copied. */
    static char buf[ECHO_BUF];
    int fd = sf_conn_fd(c);
    ssize_t n;
    (void)arg;

    while ((n = read_some(fd, buf, sizeof buf)) > 0) {
        if (write_all(fd, buf, (size_t)n) < 0)
            return errno == EPIPE || errno == ECONNRESET ? 0 : 1;
    }
    return n < 0 ? 1 : 0;
}

static int is_quit(const char *line, size_t len)
{
    return (len == 5 && memcmp(line, "quit\n", 5) == 0) ||
           (len == 6 && memcmp(line, "quit\r\n", 6) == 0);
}

/* A message pushed to this child (ctl send, ctl broadcast, a sibling):
 * its text goes to the client as a line. Returns -1 if the client is gone,
 * 1 if the channel is closed (the supervisor is going away), else 0. */
static int relay_push(sf_conn *c, int fd)
{
    sf_msg m;
    int rc = sf_conn_recv(c, &m);

    if (rc <= 0)
        return 1;
    if (m.kind != SF_MSG_ERROR && m.kind != SF_MSG_CLAIMED) {
        size_t len = m.len;
        while (len > 0 && (m.data[len - 1] == '\n' || m.data[len - 1] == '\r'))
            len--;
        if (write_all(fd, (const char *)m.data, len) < 0 || write_all(fd, "\r\n", 2) < 0)
            rc = -1;
    }
    sf_msg_free(&m);
    return rc < 0 ? -1 : 0;
}

/*
 * The seed's interactive session: a greeting, each line sent back as it
 * came, "quit" to leave; and the first seed's open question answered:
 * while the client is silent, the child waits on its channel too, so a
 * message pushed with `sockfork ctl send` reaches the client at once.
 * Only whole lines are echoed, so "quit" is seen before it would be
 * echoed; a line longer than the buffer goes back in pieces and is then
 * never taken for "quit".
 */
int handler_interactive(sf_conn *c, void *arg)
{
    char buf[LINE_BUF], greeting[160];
    int fd = sf_conn_fd(c);
    size_t have = 0;
    int in_long_line = 0, channel_open = 1;
    ssize_t n = 0;
    (void)arg;

    snprintf(greeting, sizeof greeting,
             "Welcome to sockfork (pid %d). Lines you send come back; \"quit\" closes.\r\n",
             (int)getpid());
    if (write_all(fd, greeting, strlen(greeting)) < 0)
        return 0;
    for (;;) {
        size_t start = 0;
        char *nl;

        if (channel_open) {
            int ready = sf_conn_wait(c, -1);
            if (ready < 0)
                return 1;
            if (ready & SF_READY_CHANNEL) {
                int rc = relay_push(c, fd);
                if (rc < 0)
                    return 0;
                channel_open = rc == 0;
            }
            if (!(ready & SF_READY_CLIENT))
                continue;
        }
        if ((n = read_some(fd, buf + have, sizeof buf - have)) <= 0)
            break;
        have += (size_t)n;
        while ((nl = memchr(buf + start, '\n', have - start)) != NULL) {
            size_t len = (size_t)(nl - (buf + start)) + 1;
            if (!in_long_line && is_quit(buf + start, len))
                return write_all(fd, "Bye.\r\n", 6) < 0 ? 0 : 0;
            if (write_all(fd, buf + start, len) < 0)
                return 0;
            in_long_line = 0;
            start += len;
        }
        memmove(buf, buf + start, have - start);
        have -= start;
        if (have == sizeof buf) {
            if (write_all(fd, buf, have) < 0)
                return 0;
            have = 0;
            in_long_line = 1;
        }
    }
    /* The client stopped sending mid-line: what it sent still comes back. */
    if (have > 0)
        (void)write_all(fd, buf, have);
    return n < 0 ? 1 : 0;
}
