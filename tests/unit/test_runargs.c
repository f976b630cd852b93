/* Unit tests: the command line of one `sockfork run` task (runargs.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runargs.h"

/* Expands cmd (a NULL-terminated list) and compares with want (same). */
static void check(char *const *cmd, const char *const *args, size_t nargs, unsigned long seq,
                  unsigned slot, const char *const *want)
{
    size_t ncmd = 0, i;
    char **argv;

    while (cmd[ncmd])
        ncmd++;
    argv = runargs_expand(cmd, ncmd, args, nargs, seq, slot, 0);
    assert_non_null(argv);
    for (i = 0; want[i]; i++) {
        assert_non_null(argv[i]);
        assert_string_equal(argv[i], want[i]);
    }
    assert_null(argv[i]);
    free(argv);
}

static void test_no_replacement_appends_the_arguments(void **state)
{
    char *cmd[] = {"echo", "-n", NULL};
    const char *args[] = {"a b", "c"};
    const char *want[] = {"echo", "-n", "a b", "c", NULL};
    (void)state;
    check(cmd, args, 2, 1, 1, want);
}

static void test_the_replacement_strings(void **state)
{
    char *cmd[] = {"x", "{}", "{.}", "{/}", "{//}", "{/.}", "{#}", "{%}", "pre-{/.}-post", NULL};
    const char *args[] = {"dir/sub/a.tar.gz"};
    const char *want[] = {"x", "dir/sub/a.tar.gz", "dir/sub/a.tar", "a.tar.gz", "dir/sub", "a.tar",
                          "17", "3", "pre-a.tar-post", NULL};
    (void)state;
    check(cmd, args, 1, 17, 3, want);
}

static void test_names_without_a_directory_or_an_extension(void **state)
{
    char *cmd[] = {"{.}", "{//}", "{/.}", NULL};
    const char *plain[] = {"file"};
    const char *want_plain[] = {"file", ".", "file", NULL};
    const char *dotfile[] = {"dir.d/.profile"};
    const char *want_dotfile[] = {"dir.d/.profile", "dir.d", ".profile", NULL};
    const char *root[] = {"/etc"};
    const char *want_root[] = {"/etc", "/", "etc", NULL};
    (void)state;
    check(cmd, plain, 1, 1, 1, want_plain);
    check(cmd, dotfile, 1, 1, 1, want_dotfile);
    check(cmd, root, 1, 1, 1, want_root);
}

static void test_groups_by_number_and_all_together(void **state)
{
    char *cmd[] = {"cp", "{1}", "{2//}/{1/}", "{}", "{2.}", NULL};
    const char *args[] = {"src/a.c", "out/b.o"};
    const char *want[] = {"cp", "src/a.c", "out/a.c", "src/a.c out/b.o", "out/b", NULL};
    (void)state;
    check(cmd, args, 2, 1, 1, want);
}

static void test_what_is_not_a_replacement_string_stays(void **state)
{
    char *cmd[] = {"{0}", "{x}", "{", "}{", "{1", "a{}b", NULL};
    const char *args[] = {"v"};
    const char *want[] = {"{0}", "{x}", "{", "}{", "{1", "avb", NULL};
    (void)state;
    check(cmd, args, 1, 1, 1, want);
}

static void test_a_group_that_does_not_exist_is_an_error(void **state)
{
    char *cmd[] = {"{3}"};
    const char *args[] = {"a", "b"};
    (void)state;
    errno = 0;
    assert_null(runargs_expand(cmd, 1, args, 2, 1, 1, 0));
    assert_int_equal(errno, EINVAL);
}

static void test_cross_product_order(void **state)
{
    size_t sizes[] = {2, 3}, idx[] = {0, 0};
    const char *seen[7];
    const char *names[2][3] = {{"a", "b"}, {"1", "2", "3"}};
    char buf[7][3];
    int n = 0;
    (void)state;
    int more;
    do {
        buf[n][0] = names[0][idx[0]][0];
        buf[n][1] = names[1][idx[1]][0];
        buf[n][2] = '\0';
        seen[n] = buf[n];
        n++;
        more = runargs_next(idx, sizes, 2);
    } while (more && n < 6);
    /* Six combinations, and no seventh. */
    assert_int_equal(n, 6);
    assert_false(more);
    assert_string_equal(seen[0], "a1");
    assert_string_equal(seen[1], "a2");
    assert_string_equal(seen[2], "a3");
    assert_string_equal(seen[3], "b1");
    assert_string_equal(seen[5], "b3");
    /* After the last combination it says so, and starts over at zero. */
    size_t last[] = {1, 2};
    assert_int_equal(runargs_next(last, sizes, 2), 0);
    assert_int_equal(last[0], 0);
    assert_int_equal(last[1], 0);
}

/* For --shell: what is put in is one shell word, quoted as GNU parallel
 * quotes it; the command's own text is left as shell code. */
static void test_quoting_for_the_shell(void **state)
{
    char *cmd[] = {"echo {} | wc -c", NULL};
    char *bare[] = {"echo", NULL};
    const char *args[] = {"it's $HOME; rm -rf /"};
    char **argv;
    (void)state;
    argv = runargs_expand(cmd, 1, args, 1, 1, 1, RUNARGS_QUOTE);
    assert_non_null(argv);
    assert_string_equal(argv[0], "echo 'it'\"'\"'s $HOME; rm -rf /' | wc -c");
    assert_null(argv[1]);
    free(argv);
    argv = runargs_expand(bare, 1, args, 1, 1, 1, RUNARGS_QUOTE);
    assert_non_null(argv);
    assert_string_equal(argv[0], "echo");
    assert_string_equal(argv[1], "'it'\"'\"'s $HOME; rm -rf /'");
    assert_null(argv[2]);
    free(argv);
}

/* Word by word as `parallel --dry-run 'echo {} X{}Y' ::: ...` prints it
 * (GNU parallel 20221122): safe characters stay bare, so
 * `--shell 'echo $(( {} * 2 ))' ::: 3` is arithmetic. */
static void test_quoting_matches_gnu_parallel(void **state)
{
    static const struct { const char *arg, *word; } cases[] = {
        {"3", "3"},
        {"a-b_c.d+e/f", "a-b_c.d+e/f"},
        {"ABCxyz019", "ABCxyz019"},
        {"", "''"},
        {"a b", "'a b'"},
        {"it's", "'it'\"'\"'s'"},
        {"'", "\"'\""},
        {"''", "\"'\"''\"'\""},
        {"'a", "\"'\"'a'"},
        {"a'", "'a'\"'\""},
        {"$HOME", "'$HOME'"},
        {"*", "'*'"},
        {"~", "'~'"},
        {"a=b", "'a=b'"},
        {"x,y", "'x,y'"},
        {"a:b", "'a:b'"},
        {"@%", "'@%'"},
        {"a\\b", "'a\\b'"},
        {"\xc3\xa9", "'\xc3\xa9'"},
        {"a\nb", "'a\nb'"},
    };
    char *cmd[] = {"X{}Y", NULL};
    char *bare[] = {"echo", NULL};
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *args[] = {cases[i].arg};
        char want[64];
        char **argv = runargs_expand(bare, 1, args, 1, 1, 1, RUNARGS_QUOTE);
        assert_non_null(argv);
        assert_string_equal(argv[1], cases[i].word);
        free(argv);
        argv = runargs_expand(cmd, 1, args, 1, 1, 1, RUNARGS_QUOTE);
        assert_non_null(argv);
        snprintf(want, sizeof want, "X%sY", cases[i].word);
        assert_string_equal(argv[0], want);
        free(argv);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_replacement_appends_the_arguments),
        cmocka_unit_test(test_the_replacement_strings),
        cmocka_unit_test(test_names_without_a_directory_or_an_extension),
        cmocka_unit_test(test_groups_by_number_and_all_together),
        cmocka_unit_test(test_what_is_not_a_replacement_string_stays),
        cmocka_unit_test(test_a_group_that_does_not_exist_is_an_error),
        cmocka_unit_test(test_cross_product_order),
        cmocka_unit_test(test_quoting_for_the_shell),
        cmocka_unit_test(test_quoting_matches_gnu_parallel),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
