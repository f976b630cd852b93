/* Unit tests: a prefork worker's shared slot (src/server/slot.h), its
 * sequence lock seen from a reader in another process. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "server/slot.h"

static worker_slot *shared_slot(void)
{
    worker_slot *s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(s != MAP_FAILED);
    memset(s, 0, sizeof *s);
    return s;
}

/* A write done is read whole; the state read stops before the addresses. */
static void test_written_is_read(void **state)
{
    worker_slot *s = shared_slot(), out;
    (void)state;

    slot_write_begin(s);
    s->busy = 1;
    s->begun = 7;
    s->started = 12.5;
    s->peer.len = 16;
    slot_write_end(s);
    memset(&out, 0xff, sizeof out);
    assert_int_equal(slot_read(s, &out, sizeof out), 0);
    assert_int_equal(out.busy, 1);
    assert_int_equal(out.begun, 7);
    assert_true(out.started == 12.5);
    assert_int_equal(out.peer.len, 16);
    memset(&out, 0xff, sizeof out);
    assert_int_equal(slot_read(s, &out, SLOT_STATE_SIZE), 0);
    assert_int_equal(out.begun, 7);
    assert_int_equal(out.peer.len, (socklen_t)0xffffffff); /* not copied */
    munmap(s, sizeof *s);
}

/* A writer that died mid-write leaves gen odd: the reader gives up. */
static void test_half_written_is_refused(void **state)
{
    worker_slot *s = shared_slot(), out;
    (void)state;

    slot_write_begin(s);
    s->busy = 1;
    assert_int_equal(slot_read(s, &out, sizeof out), -1);
    slot_write_end(s);
    assert_int_equal(slot_read(s, &out, sizeof out), 0);
    munmap(s, sizeof *s);
}

/* A writer in another process writes begun == ended + busy, over and over;
 * every snapshot the reader gets keeps that invariant. */
static void test_snapshots_are_consistent(void **state)
{
    worker_slot *s = shared_slot(), out;
    int got = 0, status;
    pid_t pid;
    (void)state;

    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        alarm(30); /* never outlive a failed test */
        for (uint64_t i = 0;; i++) {
            slot_write_begin(s);
            s->busy = 1;
            s->begun = i + 1;
            s->started = (double)(i + 1);
            slot_write_end(s);
            slot_write_begin(s);
            s->busy = 0;
            s->ended = i + 1;
            s->idle_since = (double)(i + 1);
            slot_write_end(s);
        }
    }
    for (int i = 0; i < 200000; i++) {
        if (slot_read(s, &out, SLOT_STATE_SIZE) < 0)
            continue;
        got++;
        assert_true(out.begun == out.ended + out.busy);
        assert_true(out.busy ? out.started == (double)out.begun
                             : out.idle_since == (double)out.ended);
    }
    kill(pid, SIGKILL);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(got > 0);
    munmap(s, sizeof *s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_written_is_read),
        cmocka_unit_test(test_half_written_is_refused),
        cmocka_unit_test(test_snapshots_are_consistent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
