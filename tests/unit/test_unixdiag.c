/* Unit tests: os_unix_listening tells a live Unix socket file from a
 * stale one without connecting to it. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "os/os.h"

static void test_live_then_stale(void **state)
{
    char dir[] = "/tmp/sf-unixdiag-XXXXXX";
    struct sockaddr_un un;
    struct stat st;
    int fd, rc;
    (void)state;

    assert_non_null(mkdtemp(dir));
    memset(&un, 0, sizeof un);
    un.sun_family = AF_UNIX;
    snprintf(un.sun_path, sizeof un.sun_path, "%s/s.sock", dir);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&un, sizeof un), 0);
    assert_int_equal(stat(un.sun_path, &st), 0);

    rc = os_unix_listening(st.st_dev, st.st_ino);
    if (rc == -EINVAL || rc == -ENOENT || rc == -EPROTONOSUPPORT) {
        close(fd);
        unlink(un.sun_path);
        rmdir(dir);
        skip(); /* a kernel without unix_diag */
    }
    assert_int_equal(rc, 0); /* bound, not listening */
    assert_int_equal(listen(fd, 1), 0);
    assert_int_equal(os_unix_listening(st.st_dev, st.st_ino), 1);
    assert_int_equal(os_unix_listening(st.st_dev, st.st_ino + 1), 0);
    close(fd);
    assert_int_equal(os_unix_listening(st.st_dev, st.st_ino), 0); /* the file stays */
    unlink(un.sun_path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_live_then_stale),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
