/* Unit tests: a channel made at its first use (channel/chanreq.h). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include "channel/chanreq.h"

/* Waits (bounded) until the broker has something to read. */
static void wait_readable(int fd)
{
    struct pollfd p = {fd, POLLIN, 0};
    assert_int_equal(poll(&p, 1, 5000), 1);
}

/* A forked child makes its channel and says "hi" on it: the offer names
 * the child's pid, as the kernel knows it, and carries the channel. */
static void test_offer_from_child(void **state)
{
    int sv[2], fd = -1;
    pid_t pid, got = 0;
    char buf[8];
    (void)state;

    assert_int_equal(chanreq_broker(sv), 0);
    assert_true(fcntl(sv[0], F_GETFL) & O_NONBLOCK);
    assert_false(fcntl(sv[1], F_GETFL) & O_NONBLOCK);
    assert_true(fcntl(sv[0], F_GETFD) & FD_CLOEXEC);
    assert_true(fcntl(sv[1], F_GETFD) & FD_CLOEXEC);
    assert_int_equal(chanreq_recv(sv[0], &got, &fd), -EAGAIN);

    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int chan = chanreq_open(sv[1]);
        if (chan < 0 || (fcntl(chan, F_GETFL) & O_NONBLOCK) || !(fcntl(chan, F_GETFD) & FD_CLOEXEC))
            _exit(1);
        _exit(write(chan, "hi", 2) == 2 ? 0 : 2);
    }
    wait_readable(sv[0]);
    assert_int_equal(chanreq_recv(sv[0], &got, &fd), 1);
    assert_int_equal(got, pid);
    assert_true(fd > 2);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    assert_int_equal(read(fd, buf, sizeof buf), 2);
    assert_memory_equal(buf, "hi", 2);
    int ws;
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    assert_int_equal(read(fd, buf, sizeof buf), 0); /* its end is closed: it exited */
    close(fd);
    assert_int_equal(chanreq_recv(sv[0], &got, &fd), -EAGAIN);
    close(sv[0]);
    close(sv[1]);
}

/* Sends a datagram with nfds copies of fd attached. */
static void send_raw(int sock, const void *data, size_t len, int fd, int nfds)
{
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(int) * 2)];
    } ctl;
    struct iovec iov = {(void *)data, len};
    struct msghdr msg;

    memset(&msg, 0, sizeof msg);
    memset(&ctl, 0, sizeof ctl);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (nfds > 0) {
        int fds[2] = {fd, fd};
        msg.msg_control = ctl.space;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    assert_int_equal(sendmsg(sock, &msg, 0), (ssize_t)len);
}

/* What is not an offer is dropped, and what came with it is closed: the
 * write end of a pipe sent along is gone once ours is, so its reader
 * sees EOF. */
static void check_refused(const void *data, size_t len, int nfds)
{
    int sv[2], p[2], fd = -1;
    pid_t got = 0;
    char c;

    assert_int_equal(chanreq_broker(sv), 0);
    assert_int_equal(pipe(p), 0);
    send_raw(sv[1], data, len, p[1], nfds);
    close(p[1]);
    wait_readable(sv[0]);
    assert_int_equal(chanreq_recv(sv[0], &got, &fd), 0);
    assert_int_equal(fd, -1);
    assert_int_equal(read(p[0], &c, 1), 0);
    close(p[0]);
    close(sv[0]);
    close(sv[1]);
}

static void test_wrong_magic(void **state)
{
    (void)state;
    check_refused("XXXX", 4, 1);
}

static void test_wrong_size(void **state)
{
    (void)state;
    check_refused("SFC1!", 5, 1);
    check_refused("SFC", 3, 1);
}

static void test_no_descriptor(void **state)
{
    (void)state;
    check_refused("SFC1", 4, 0);
}

static void test_two_descriptors(void **state)
{
    (void)state;
    check_refused("SFC1", 4, 2);
}

/* With the supervisor's end gone, a child's first use fails, and leaves
 * nothing open. */
static void test_broker_gone(void **state)
{
    int sv[2], after;
    (void)state;

    assert_int_equal(chanreq_broker(sv), 0);
    close(sv[0]);
    assert_true(chanreq_open(sv[1]) < 0);
    after = dup(0);
    assert_true(after >= 0);
    close(after);
    /* The lowest free descriptor is where it was: nothing leaked. */
    assert_int_equal(after, sv[0]);
    close(sv[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_offer_from_child),
        cmocka_unit_test(test_wrong_magic),
        cmocka_unit_test(test_wrong_size),
        cmocka_unit_test(test_no_descriptor),
        cmocka_unit_test(test_two_descriptors),
        cmocka_unit_test(test_broker_gone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
