/* Unit tests: the JSON-lines codec of exec'd programs' channel. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "channel/jsonl.h"

static const char stream[] = "{\"a\":1}\n\r\n{\"b\":\"h\xc3\xa9\"}\r\n\n{\"c\":[1,2]}\n";

/* Feeds stream split at a and b; returns the objects' keys concatenated. */
static void feed_split(size_t a, size_t b, char *keys)
{
    jsonl_decoder d;
    size_t len = strlen(stream), cuts[4] = {0, a, b, len};
    int n = 0;

    assert_int_equal(jsonl_decoder_init(&d, 64), 0);
    for (int p = 0; p < 3; p++) {
        size_t off = cuts[p];
        while (off < cuts[p + 1]) {
            json_t *o = NULL;
            size_t used;
            int rc = jsonl_decoder_feed(&d, stream + off, cuts[p + 1] - off, &used, &o);
            assert_true(rc >= 0);
            off += used;
            if (rc == 1) {
                const char *k;
                json_t *v;
                json_object_foreach(o, k, v) keys[n++] = k[0];
                json_decref(o);
            }
        }
    }
    keys[n] = '\0';
    jsonl_decoder_fini(&d);
}

static void test_split_everywhere(void **state)
{
    size_t len = strlen(stream);
    char keys[8];
    (void)state;
    for (size_t a = 0; a <= len; a++)
        for (size_t b = a; b <= len; b++) {
            feed_split(a, b, keys);
            assert_string_equal(keys, "abc");
        }
}

static void test_bad_lines(void **state)
{
    static const char in[] = "not json\n[1,2]\n\"s\"\n{\"k\":1,\"k\":2}\n{\"ok\":true}\n";
    jsonl_decoder d;
    size_t off = 0, len = strlen(in);
    int bad = 0, good = 0;
    (void)state;

    assert_int_equal(jsonl_decoder_init(&d, 0), 0);
    while (off < len) {
        json_t *o = NULL;
        size_t used;
        int rc = jsonl_decoder_feed(&d, in + off, len - off, &used, &o);
        off += used;
        if (rc == -EPROTO)
            bad++;
        else if (rc == 1) {
            assert_true(json_is_true(json_object_get(o, "ok")));
            json_decref(o);
            good++;
        }
    }
    assert_int_equal(bad, 4);
    assert_int_equal(good, 1);
    jsonl_decoder_fini(&d);
}

static void test_overlong(void **state)
{
    jsonl_decoder d;
    char line[40];
    json_t *o = NULL;
    size_t used;
    (void)state;

    memset(line, ' ', sizeof line);
    assert_int_equal(jsonl_decoder_init(&d, 32), 0);
    assert_int_equal(jsonl_decoder_feed(&d, line, 30, &used, &o), 0);
    assert_int_equal(jsonl_decoder_feed(&d, line, 10, &used, &o), -EMSGSIZE);
    jsonl_decoder_fini(&d);
}

static void test_encode_roundtrip(void **state)
{
    json_t *o = json_pack("{s:s, s:i}", "text", "h\xc3\xa9llo\nworld", "n", 7), *back = NULL;
    jsonl_decoder d;
    char *line;
    size_t len, used;
    (void)state;

    assert_int_equal(jsonl_encode(o, &line, &len), 0);
    assert_int_equal(line[len - 1], '\n');
    assert_null(memchr(line, '\n', len - 1)); /* one line, whatever the content */
    assert_int_equal(jsonl_decoder_init(&d, 0), 0);
    assert_int_equal(jsonl_decoder_feed(&d, line, len, &used, &back), 1);
    assert_true(json_equal(o, back));
    free(line);
    json_decref(back);
    jsonl_decoder_fini(&d);
    json_t *arr = json_array();
    assert_int_equal(jsonl_encode(arr, &line, &len), -EINVAL);
    json_decref(arr);
    json_decref(o);
}

/* "\u0000" is valid JSON: carried, with its length, and back out the
 * same; in a key jansson refuses it, and that is a bad line (-EPROTO), not
 * the end of the decoder. */
static void test_nul_in_strings(void **state)
{
    static const char in[] = "{\"data\":\"a\\u0000b\"}\n{\"k\\u0000\":1}\n{\"ok\":1}\n";
    jsonl_decoder d;
    json_t *o = NULL, *v;
    char *line;
    size_t used, off, len;
    (void)state;

    assert_int_equal(jsonl_decoder_init(&d, 0), 0);
    assert_int_equal(jsonl_decoder_feed(&d, in, strlen(in), &used, &o), 1);
    v = json_object_get(o, "data");
    assert_int_equal(json_string_length(v), 3);
    assert_memory_equal(json_string_value(v), "a\0b", 3);
    assert_int_equal(jsonl_encode(o, &line, &len), 0);
    assert_non_null(strstr(line, "\\u0000"));
    free(line);
    json_decref(o);
    off = used;
    assert_int_equal(jsonl_decoder_feed(&d, in + off, strlen(in) - off, &used, &o), -EPROTO);
    off += used;
    assert_int_equal(jsonl_decoder_feed(&d, in + off, strlen(in) - off, &used, &o), 1);
    json_decref(o);
    jsonl_decoder_fini(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_everywhere),
        cmocka_unit_test(test_bad_lines),
        cmocka_unit_test(test_overlong),
        cmocka_unit_test(test_encode_roundtrip),
        cmocka_unit_test(test_nul_in_strings),
    };
    return cmocka_run_group_tests_name("jsonl", tests, NULL, NULL);
}
