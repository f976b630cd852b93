/*
 * bare_forkserver.c - the least a fork-per-connection echo server can do:
 * accept, fork, the child echoes until EOF and exits. It is the floor that
 * the benchmark holds sockfork's fork mode against.
 *
 * usage: bare-forkserver [PORT]   (0 or nothing: any free port)
 * Listens on 127.0.0.1 only and says "listening on 127.0.0.1:PORT" on stderr.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* Reaps every child that has exited, so none is left a zombie. */
static void on_sigchld(int sig)
{
    int saved = errno;
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
    errno = saved;
}

static void echo(int fd)
{
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR)) {
        for (ssize_t off = 0; n > 0 && off < n;) {
            ssize_t w = write(fd, buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0)
                return;
            off += w;
        }
    }
}

int main(int argc, char **argv)
{
    struct sockaddr_in sin = { .sin_family = AF_INET,
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                               .sin_port = htons(argc > 1 ? (unsigned short)atoi(argv[1]) : 0) };
    socklen_t len = sizeof sin;
    int one = 1;
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(lfd, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(lfd, 4096) < 0 ||
        getsockname(lfd, (struct sockaddr *)&sin, &len) < 0) {
        perror("bare-forkserver: listen");
        return 1;
    }
    fprintf(stderr, "listening on 127.0.0.1:%u\n", ntohs(sin.sin_port));

    /* SA_RESTART keeps accept() going; SA_NOCLDSTOP: only exits matter. */
    struct sigaction sa = { .sa_handler = on_sigchld, .sa_flags = SA_RESTART | SA_NOCLDSTOP };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGCHLD, &sa, NULL);
    signal(SIGPIPE, SIG_IGN); /* a write to a reset peer fails with EPIPE */

    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EINTR && errno != ECONNABORTED)
                perror("bare-forkserver: accept"); /* e.g. EMFILE; keep going */
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                usleep(1000); /* don't spin while the shortage lasts */
            continue;
        }
        pid_t pid = fork();
        if (pid == 0) {
            close(lfd);
            echo(fd);
            _exit(0);
        }
        if (pid < 0)
            perror("bare-forkserver: fork");
        close(fd); /* the child has its own copy */
    }
}
