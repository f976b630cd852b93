/*
 * room.c - one process per client, and the clients talking through the
 * supervisor's bus: every line a client sends is published on the topic
 * "room"; every line published there reaches every other client, and a
 * newcomer first gets the last 10. The handler waits on its client and its
 * channel together, so a message arrives while the client is silent.
 *
 *   ./build/examples/room [ADDR]      (default 127.0.0.1:4444)
 *   telnet 127.0.0.1 4444             (twice, and type)
 *
 * It opens no control socket, so `sockfork ctl` cannot reach it: a server
 * that wants one calls sf_server_control before sf_server_run, as
 * `sockfork serve` does.
 */
#include <sockfork.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int room(sf_conn *conn, void *arg)
{
    int fd = sf_conn_fd(conn);
    char line[1024], clean[3 * sizeof line + 1];
    size_t have = 0;
    (void)arg;

    if (sf_conn_subscribe(conn, "room", 10) < 0)
        return 1;
    for (;;) {
        int ready = sf_conn_wait(conn, -1);
        if (ready < 0)
            return 1;
        if (ready & SF_READY_CHANNEL) {
            sf_msg m;
            if (sf_conn_recv(conn, &m) <= 0)
                return 0; /* the server is going away */
            char head[64];
            /* A publisher does not get its own lines back; the lines a
             * newcomer is replayed are marked as such. */
            int n = snprintf(head, sizeof head, "%s[%d] ",
                             m.kind == SF_MSG_HISTORY ? "(earlier) " : "", m.from);
            int rc = write_all(fd, head, (size_t)n) < 0 || write_all(fd, m.data, m.len) < 0 ||
                     write_all(fd, "\n", 1) < 0;
            sf_msg_free(&m);
            if (rc)
                return 0;
        }
        if (ready & SF_READY_CLIENT) {
            ssize_t n = read(fd, line + have, sizeof line - have);
            if (n <= 0)
                return 0;
            have += (size_t)n;
            char *nl;
            while ((nl = memchr(line, '\n', have)) != NULL) {
                size_t len = (size_t)(nl - line);
                if (len > 0 && line[len - 1] == '\r')
                    len--;
                /* Passed on as valid UTF-8 without control or invisible
                 * format characters: nobody's terminal takes orders
                 * from another client. */
                size_t n = sf_text_clean(clean, sizeof clean, line, len, "\xef\xbf\xbd");
                (void)sf_conn_publish(conn, "room", clean, n);
                have -= (size_t)(nl + 1 - line);
                memmove(line, nl + 1, have);
            }
            if (have == sizeof line)
                have = 0; /* an overlong line is dropped */
        }
    }
}

static void log_line(void *arg, int level, const char *line)
{
    (void)arg;
    (void)level;
    fprintf(stderr, "room: %s\n", line);
}

int main(int argc, char **argv)
{
    sf_server_opts opts;
    sf_server *srv;

    sf_server_opts_init(&opts);
    opts.log = log_line;
    if (sf_server_new(&srv, &opts, room, NULL) < 0 ||
        sf_server_listen(srv, argc > 1 ? argv[1] : "127.0.0.1:4444") < 0)
        return 1;
    int rc = sf_server_run(srv); /* until SIGTERM or SIGINT */
    sf_server_free(srv);
    return rc < 0;
}
