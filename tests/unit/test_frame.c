/* Unit tests: channel frames, fd passing and the outbound queue. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include "channel/frame.h"

/* Three frames, encoded back to back. */
static size_t encode_sample(unsigned char *buf)
{
    static const char *payloads[] = {"hello", "", "a longer payload, 32 bytes long!"};
    size_t off = 0;
    for (int i = 0; i < 3; i++) {
        uint32_t len = (uint32_t)strlen(payloads[i]);
        chan_header_encode(buf + off, (uint16_t)(i + 1), 0, len);
        memcpy(buf + off + CHAN_HDR_LEN, payloads[i], len);
        off += CHAN_HDR_LEN + len;
    }
    return off;
}

static void check_sample_frame(int i, const chan_frame *f)
{
    static const char *payloads[] = {"hello", "", "a longer payload, 32 bytes long!"};
    assert_int_equal(f->type, i + 1);
    assert_int_equal(f->len, strlen(payloads[i]));
    assert_int_equal(f->fd, -1);
    if (f->len)
        assert_memory_equal(f->payload, payloads[i], f->len);
    else
        assert_null(f->payload);
}

/* Feeds buf[0..len) in pieces of the given sizes; checks the three frames. */
static void feed_in_pieces(const unsigned char *buf, size_t len, size_t split1, size_t split2)
{
    chan_decoder d;
    size_t cuts[4] = {0, split1, split2, len};
    int got = 0;

    chan_decoder_init(&d, 64);
    for (int p = 0; p < 3; p++) {
        size_t off = cuts[p];
        while (off < cuts[p + 1]) {
            chan_frame f;
            size_t used;
            int rc = chan_decoder_feed(&d, buf + off, cuts[p + 1] - off, &used, &f);
            assert_true(rc >= 0);
            off += used;
            if (rc == 1) {
                check_sample_frame(got++, &f);
                free(f.payload);
            } else {
                assert_int_equal(off, cuts[p + 1]);
            }
        }
    }
    assert_int_equal(got, 3);
    chan_decoder_fini(&d);
}

static void test_split_everywhere(void **state)
{
    unsigned char buf[256];
    size_t len = encode_sample(buf);
    (void)state;
    for (size_t a = 0; a <= len; a++)
        for (size_t b = a; b <= len; b++)
            feed_in_pieces(buf, len, a, b);
}

static void test_max_size(void **state)
{
    unsigned char buf[CHAN_HDR_LEN + 16];
    chan_decoder d;
    chan_frame f;
    size_t used;
    (void)state;

    chan_decoder_init(&d, 16);
    chan_header_encode(buf, 1, 0, 16);
    memset(buf + CHAN_HDR_LEN, 'x', 16);
    assert_int_equal(chan_decoder_feed(&d, buf, sizeof buf, &used, &f), 1);
    assert_int_equal(f.len, 16);
    free(f.payload);
    /* One more than the maximum, and a huge one: refused at the header,
     * before any allocation. */
    chan_header_encode(buf, 1, 0, 17);
    assert_int_equal(chan_decoder_feed(&d, buf, CHAN_HDR_LEN, &used, &f), -EMSGSIZE);
    assert_null(d.cur.payload);
    chan_decoder_fini(&d);
    chan_decoder_init(&d, 16);
    chan_header_encode(buf, 1, 0, 0xFFFFFFFFu);
    assert_int_equal(chan_decoder_feed(&d, buf, CHAN_HDR_LEN, &used, &f), -EMSGSIZE);
    assert_null(d.cur.payload);
    chan_decoder_fini(&d);
}

static void test_bad_flags(void **state)
{
    unsigned char buf[CHAN_HDR_LEN];
    chan_decoder d;
    chan_frame f;
    size_t used;
    (void)state;

    chan_decoder_init(&d, 0);
    chan_header_encode(buf, 1, CHAN_F_FD, 0); /* announces a descriptor; none came */
    assert_int_equal(chan_decoder_feed(&d, buf, sizeof buf, &used, &f), -EPROTO);
    chan_decoder_fini(&d);
    chan_decoder_init(&d, 0);
    chan_header_encode(buf, 1, 0x8000, 0);
    assert_int_equal(chan_decoder_feed(&d, buf, sizeof buf, &used, &f), -EPROTO);
    chan_decoder_fini(&d);
}

static void test_fd_passing(void **state)
{
    int sv[2], pipefd[2];
    chan_reader r;
    chan_frame f;
    char c;
    (void)state;

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    assert_int_equal(pipe2(pipefd, O_CLOEXEC), 0);
    assert_int_equal(chan_send(sv[0], CHAN_T_DATA, "with fd", 7, pipefd[1]), 0);
    assert_int_equal(chan_send(sv[0], CHAN_T_LOG, "plain", 5, -1), 0);
    close(pipefd[1]);
    chan_reader_init(&r, 0);
    assert_int_equal(chan_recv(sv[1], &r, &f), 1);
    assert_int_equal(f.type, CHAN_T_DATA);
    assert_int_equal(f.flags, CHAN_F_FD);
    assert_memory_equal(f.payload, "with fd", 7);
    assert_true(f.fd >= 0);
    assert_true(fcntl(f.fd, F_GETFD) & FD_CLOEXEC);
    assert_int_equal(write(f.fd, "!", 1), 1); /* the received end writes into our pipe */
    close(f.fd);
    free(f.payload);
    assert_int_equal(read(pipefd[0], &c, 1), 1);
    assert_int_equal(c, '!');
    assert_int_equal(chan_recv(sv[1], &r, &f), 1);
    assert_int_equal(f.fd, -1);
    assert_memory_equal(f.payload, "plain", 5);
    free(f.payload);
    /* EOF between frames: 0. */
    close(sv[0]);
    assert_int_equal(chan_recv(sv[1], &r, &f), 0);
    chan_reader_fini(&r);
    close(sv[1]);
    close(pipefd[0]);
}

static void test_eof_mid_frame(void **state)
{
    int sv[2];
    unsigned char hdr[CHAN_HDR_LEN];
    chan_reader r;
    chan_frame f;
    (void)state;

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    chan_header_encode(hdr, 1, 0, 10);
    assert_int_equal(write(sv[0], hdr, sizeof hdr), (ssize_t)sizeof hdr);
    assert_int_equal(write(sv[0], "abc", 3), 3);
    close(sv[0]);
    chan_reader_init(&r, 0);
    assert_int_equal(chan_recv(sv[1], &r, &f), -EPIPE);
    chan_reader_fini(&r);
    close(sv[1]);
}

/* The queue: bounded, partial writes resumed, order kept, fds passed. */
static void test_queue(void **state)
{
    enum { N = 200, LEN = 1000 };
    int sv[2], sndbuf = 4096;
    chan_queue q;
    chan_decoder d;
    unsigned char payload[LEN], buf[8192];
    int pushed = 0, got = 0, flushed = 0;
    (void)state;

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    chan_queue_init(&q, 50 * (LEN + CHAN_HDR_LEN));
    for (int i = 0; i < N; i++) {
        memset(payload, i & 0xff, LEN);
        int rc = chan_queue_push(&q, CHAN_T_DATA, payload, LEN, -1);
        if (rc == 0)
            pushed++;
        else
            assert_int_equal(rc, -ENOBUFS);
    }
    assert_int_equal(pushed, 50);
    assert_int_equal(q.dropped, N - 50);
    assert_int_equal(chan_queue_push_raw(&q, "x", 1), -ENOBUFS);

    chan_decoder_init(&d, 0);
    /* Bounded: each round moves at least one byte or the test fails. */
    for (int round = 0; round < 100000 && got < pushed; round++) {
        int rc = chan_queue_flush(&q, sv[0]);
        assert_true(rc >= 0);
        flushed = rc;
        ssize_t n = read(sv[1], buf, 333); /* a slow, small reader */
        if (n <= 0) {
            assert_int_equal(flushed, 1);
            break;
        }
        size_t off = 0;
        while (off < (size_t)n) {
            chan_frame f;
            size_t used;
            int dr = chan_decoder_feed(&d, buf + off, (size_t)n - off, &used, &f);
            assert_true(dr >= 0);
            off += used;
            if (dr == 1) {
                assert_int_equal(f.len, LEN);
                assert_int_equal(f.payload[0], got & 0xff);
                assert_int_equal(f.payload[LEN - 1], got & 0xff);
                free(f.payload);
                got++;
            }
        }
    }
    assert_int_equal(got, pushed);
    assert_true(chan_queue_empty(&q));
    assert_int_equal(q.bytes, 0);
    chan_decoder_fini(&d);
    chan_queue_fini(&q);
    close(sv[0]);
    close(sv[1]);
}

static void test_queue_passes_fd(void **state)
{
    int sv[2], pipefd[2];
    chan_queue q;
    chan_reader r;
    chan_frame f;
    char c;
    (void)state;

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    assert_int_equal(pipe2(pipefd, O_CLOEXEC), 0);
    chan_queue_init(&q, 1 << 16);
    assert_int_equal(chan_queue_push(&q, CHAN_T_DATA, "fd", 2, pipefd[1]), 0);
    close(pipefd[1]); /* the queue holds its own copy */
    assert_int_equal(chan_queue_flush(&q, sv[0]), 1);
    chan_reader_init(&r, 0);
    assert_int_equal(chan_recv(sv[1], &r, &f), 1);
    assert_true(f.fd >= 0);
    assert_int_equal(write(f.fd, "y", 1), 1);
    close(f.fd);
    free(f.payload);
    assert_int_equal(read(pipefd[0], &c, 1), 1);
    assert_int_equal(c, 'y');
    chan_reader_fini(&r);
    chan_queue_fini(&q);
    close(pipefd[0]);
    close(sv[0]);
    close(sv[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_everywhere),
        cmocka_unit_test(test_max_size),
        cmocka_unit_test(test_bad_flags),
        cmocka_unit_test(test_fd_passing),
        cmocka_unit_test(test_eof_mid_frame),
        cmocka_unit_test(test_queue),
        cmocka_unit_test(test_queue_passes_fd),
    };
    return cmocka_run_group_tests_name("frame", tests, NULL, NULL);
}
