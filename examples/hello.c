/*
 * hello.c - the smallest sockfork server: greets each client from its own
 * process.
 *
 *   ./build/examples/hello [ADDR]     (default 127.0.0.1:4444; unix:PATH works)
 *   telnet 127.0.0.1 4444
 *
 * Built by `make`; after `make install`, on its own:
 *   cc hello.c $(pkg-config --cflags --libs sockfork)
 */
#include <sockfork.h>

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void log_to_stderr(void *arg, int level, const char *line)
{
    (void)arg;
    (void)level;
    fprintf(stderr, "hello: %s\n", line);
}

/* Runs in its own forked child, once per connection; the return value is
 * the child's exit status. */
static int hello(sf_conn *conn, void *arg)
{
    char peer[SF_ADDR_TEXT_MAX], line[160];
    int n;

    (void)arg;
    sf_addr_format(sf_conn_peer(conn), peer, sizeof peer);
    n = snprintf(line, sizeof line, "hello %s, this is pid %d\n", peer, (int)getpid());
    return write(sf_conn_fd(conn), line, (size_t)n) == n ? 0 : 1;
}

int main(int argc, char **argv)
{
    const char *addr = argc > 1 ? argv[1] : "127.0.0.1:4444";
    sf_server_opts opts;
    sf_server *srv;
    int rc;

    sf_server_opts_init(&opts);
    opts.max_conns = 200;
    opts.log = log_to_stderr;
    if ((rc = sf_server_new(&srv, &opts, hello, NULL)) < 0) {
        fprintf(stderr, "hello: cannot start: %s\n", strerror(-rc));
        return 1;
    }
    if ((rc = sf_server_listen(srv, addr)) < 0) {
        fprintf(stderr, "hello: cannot listen on %s: %s\n", addr, strerror(-rc));
        sf_server_free(srv);
        return 2;
    }
    rc = sf_server_run(srv); /* until SIGTERM or SIGINT */
    sf_server_free(srv);
    return rc < 0;
}
