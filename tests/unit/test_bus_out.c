/* Unit tests: output offload's buffer and request decoders (bus_out.h). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "supervisor/bus_out.h"

#define P(s) {s, sizeof s - 1}

/* What waits in front of the gate, as a string. */
static const char *waiting(const bus_outbuf *o)
{
    static char text[4096];
    size_t n;
    const unsigned char *p = bus_outbuf_data(o, &n);

    assert_true(n < sizeof text);
    if (n)
        memcpy(text, p, n);
    text[n] = '\0';
    return text;
}

static void append(bus_outbuf *o, const char *s, int gate, int want)
{
    bus_piece p = {s, strlen(s)};
    assert_int_equal(bus_outbuf_append(o, &p, 1, gate, 0), want);
}

static void test_units_in_order_and_consumed(void **state)
{
    bus_outbuf o;
    bus_piece line[3] = {P("[h] "), P("hello"), P("\r\n")};
    (void)state;

    bus_outbuf_init(&o, 64);
    assert_int_equal(bus_outbuf_append(&o, line, 3, 0, 0), 0);
    append(&o, "reply\r\n", 0, 0);
    assert_string_equal(waiting(&o), "[h] hello\r\nreply\r\n");
    assert_int_equal(bus_outbuf_bytes(&o), 18);
    bus_outbuf_consumed(&o, 5);
    assert_string_equal(waiting(&o), "ello\r\nreply\r\n");
    bus_outbuf_consumed(&o, 13);
    assert_int_equal(bus_outbuf_bytes(&o), 0);
    assert_true(o.written == 18);
    assert_memory_equal(o.tail, "\nreply\r\n", 8);
    bus_outbuf_fini(&o);
}

static void test_limit_drops_whole_units_force_passes(void **state)
{
    bus_outbuf o;
    bus_piece words = P("bye\r\n");
    (void)state;

    bus_outbuf_init(&o, 10);
    append(&o, "12345678", 0, 0);
    append(&o, "abc", 0, -ENOBUFS); /* 11 > 10: nothing of it kept */
    assert_string_equal(waiting(&o), "12345678");
    assert_true(o.dropped == 1);
    append(&o, "ab", 0, 0); /* exactly the limit */
    assert_int_equal(bus_outbuf_append(&o, &words, 1, 0, BUS_OUT_ALWAYS), 0);
    assert_string_equal(waiting(&o), "12345678abbye\r\n");
    bus_outbuf_fini(&o);
}

/* A note may pass the limit, but only once: with the buffer past it
 * already (an earlier note, a client that reads nothing), the next is
 * dropped, so gap notices and gate notes cannot grow a buffer without
 * bound. The words at the end and the gate's move always go. */
static void test_notes_pass_the_limit_once(void **state)
{
    bus_outbuf o;
    bus_piece note = P("*** 3 messages of room:x missed\r\n"), words = P("bye\r\n");
    (void)state;

    bus_outbuf_init(&o, 40);
    append(&o, "0123456789012345678901234567890123456789", 0, 0); /* at the limit */
    assert_int_equal(bus_outbuf_append(&o, &note, 1, 0, BUS_OUT_NOTE), 0);
    assert_int_equal(bus_outbuf_bytes(&o), 40 + note.n);
    for (int i = 0; i < 100; i++) /* past it now: no more notes */
        assert_int_equal(bus_outbuf_append(&o, &note, 1, i & 1, BUS_OUT_NOTE), -ENOBUFS);
    assert_int_equal(bus_outbuf_bytes(&o), 40 + note.n);
    assert_true(o.dropped == 100);
    assert_int_equal(bus_outbuf_append(&o, &words, 1, 0, BUS_OUT_ALWAYS), 0);
    assert_int_equal(bus_outbuf_bytes(&o), 40 + note.n + words.n);
    bus_outbuf_fini(&o);

    /* The gate's note: after its move, only while not past the limit. */
    bus_outbuf_init(&o, 10);
    append(&o, "12345", 0, 0);
    append(&o, "abcde", 1, 0);
    append(&o, "x", 1, -ENOBUFS); /* skipped: 1 */
    assert_int_equal(bus_outbuf_gate_open(&o, "*** ", 4, " more\r\n", 7, " more\r\n", 7), 1);
    assert_string_equal(waiting(&o), "12345abcde*** 1 more\r\n");
    assert_int_equal(bus_outbuf_gate_open(&o, "*** ", 4, " more\r\n", 7, " more\r\n", 7), 0);
    append(&o, "y", 1, -ENOBUFS);
    assert_int_equal(bus_outbuf_gate_open(&o, "*** ", 4, " more\r\n", 7, " more\r\n", 7), 1);
    assert_string_equal(waiting(&o), "12345abcde*** 1 more\r\n"); /* past it: no second */
    bus_outbuf_fini(&o);
}

static void test_gate_holds_counts_and_notes(void **state)
{
    bus_outbuf o;
    (void)state;

    bus_outbuf_init(&o, 20);
    append(&o, "old\r\n", 0, 0);
    append(&o, "h1\r\n", 1, 0);
    append(&o, "reply\r\n", 0, 0); /* in front of what the gate holds */
    assert_string_equal(waiting(&o), "old\r\nreply\r\n");
    assert_int_equal(bus_outbuf_bytes(&o), 16); /* the gate counts */
    append(&o, "h2-long\r\n", 1, -ENOBUFS);
    append(&o, "h3-long\r\n", 1, -ENOBUFS);
    assert_true(bus_outbuf_gate_open(&o, "* ", 2, " one\r\n", 6, " more\r\n", 7) == 2);
    assert_string_equal(waiting(&o), "old\r\nreply\r\nh1\r\n* 2 more\r\n");
    /* Opened again with nothing behind it: nothing more. */
    assert_true(bus_outbuf_gate_open(&o, "* ", 2, " one\r\n", 6, " more\r\n", 7) == 0);
    assert_string_equal(waiting(&o), "old\r\nreply\r\nh1\r\n* 2 more\r\n");
    bus_outbuf_fini(&o);

    bus_outbuf_init(&o, 8);
    append(&o, "abcdefg", 1, 0);
    append(&o, "xy", 1, -ENOBUFS);
    assert_true(bus_outbuf_gate_open(&o, "", 0, "1 skipped", 9, "n skipped", 9) == 1);
    assert_string_equal(waiting(&o), "abcdefg11 skipped");
    bus_outbuf_fini(&o);
}

static void test_gate_drop(void **state)
{
    bus_outbuf o;
    (void)state;

    bus_outbuf_init(&o, 100);
    append(&o, "front", 0, 0);
    append(&o, "behind", 1, 0);
    bus_outbuf_gate_drop(&o);
    assert_int_equal(bus_outbuf_bytes(&o), 5);
    assert_true(bus_outbuf_gate_open(&o, "", 0, "", 0, "", 0) == 0);
    assert_string_equal(waiting(&o), "front");
    bus_outbuf_fini(&o);
}

/* reset: drops what waits, and ends a line the client has part of. */
static void test_reset_completes_the_separator(void **state)
{
    bus_outbuf o;
    (void)state;

    bus_outbuf_init(&o, 100);
    /* Nothing written ever: no separator. */
    append(&o, "line\r\n", 0, 0);
    assert_int_equal(bus_outbuf_reset(&o, "\r\n", 2), 6);
    assert_string_equal(waiting(&o), "");
    /* Cut in the middle of a line: the whole separator. */
    append(&o, "first\r\nsecond\r\n", 0, 0);
    bus_outbuf_consumed(&o, 10);
    assert_int_equal(bus_outbuf_reset(&o, "\r\n", 2), 5);
    assert_string_equal(waiting(&o), "\r\n");
    bus_outbuf_consumed(&o, 2);
    /* After the CR: only the LF. */
    append(&o, "third\r\n", 0, 0);
    bus_outbuf_consumed(&o, 6);
    bus_outbuf_reset(&o, "\r\n", 2);
    assert_string_equal(waiting(&o), "\n");
    bus_outbuf_consumed(&o, 1);
    /* At a line's end: nothing. */
    append(&o, "fourth\r\nrest", 0, 0);
    bus_outbuf_consumed(&o, 8);
    bus_outbuf_reset(&o, "\r\n", 2);
    assert_string_equal(waiting(&o), "");
    /* The gate is not touched. */
    append(&o, "gated", 1, 0);
    bus_outbuf_reset(&o, "\r\n", 2);
    assert_int_equal(bus_outbuf_bytes(&o), 5);
    bus_outbuf_fini(&o);
}

/* The tail follows writes of every size, one byte at a time included. */
static void test_tail_over_small_writes(void **state)
{
    bus_outbuf o;
    (void)state;

    bus_outbuf_init(&o, 100);
    append(&o, "0123456789abc\r", 0, 0);
    for (int i = 0; i < 14; i++)
        bus_outbuf_consumed(&o, 1);
    assert_int_equal(o.ntail, BUS_OUT_TAIL);
    assert_memory_equal(o.tail, "6789abc\r", BUS_OUT_TAIL);
    bus_outbuf_reset(&o, "\r\n", 2);
    assert_string_equal(waiting(&o), "\n");
    bus_outbuf_fini(&o);
}

static void test_decoders(void **state)
{
    bus_out_open op;
    bus_out_write w;
    bus_out_sub s;
    bus_out_gate g;
    (void)state;

    static const unsigned char open[] = {0, 1, 0, 0, 0, 0, 7, 208, 3, 'k', 'i', 'k', 2, 'd', 'n',
                                         'h', 'i'};
    assert_int_equal(bus_out_open_decode(open, sizeof open, &op), 0);
    assert_true(op.limit == 65536 && op.report_ms == 2000);
    assert_true(op.kick_len == 3 && memcmp(op.kick, "kik", 3) == 0);
    assert_true(op.down_len == 2 && op.first_len == 2 && memcmp(op.first, "hi", 2) == 0);
    for (size_t n = 0; n < 12; n++) /* cut anywhere before the words end */
        assert_int_equal(bus_out_open_decode(open, n, &op), -EPROTO);

    static const unsigned char wr[] = {1, 2, '\r', '\n', 'x'};
    assert_int_equal(bus_out_write_decode(wr, sizeof wr, &w), 0);
    assert_true(w.flags == OUT_W_RESET && w.sep_len == 2 && w.len == 1);
    static const unsigned char badflag[] = {2, 0};
    assert_int_equal(bus_out_write_decode(badflag, sizeof badflag, &w), -EPROTO);
    assert_int_equal(bus_out_write_decode(wr, 0, &w), -EPROTO);
    assert_int_equal(bus_out_write_decode(wr, 3, &w), -EPROTO);

    static const unsigned char sub[] = {0, 0, 0, 20, 1, 2, 'r', '1', 0, 2, '[', ']', 2, '\r', '\n',
                                        2, '*', ' '};
    assert_int_equal(bus_out_sub_decode(sub, sizeof sub, &s), 0);
    assert_true(s.history == 20 && s.flags == OUT_S_GATED && s.topic_len == 2);
    assert_true(s.prefix_len == 0 && s.hprefix_len == 2 && s.suffix_len == 2 && s.nprefix_len == 2);
    assert_int_equal(bus_out_sub_decode(sub, sizeof sub - 1, &s), -EPROTO);
    unsigned char extra[sizeof sub + 1];
    memcpy(extra, sub, sizeof sub);
    extra[sizeof sub] = 'x';
    assert_int_equal(bus_out_sub_decode(extra, sizeof extra, &s), -EPROTO);
    unsigned char space[sizeof sub];
    memcpy(space, sub, sizeof sub);
    space[6] = ' '; /* a topic with a space */
    assert_int_equal(bus_out_sub_decode(space, sizeof space, &s), -EPROTO);
    static const unsigned char notopic[] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
    assert_int_equal(bus_out_sub_decode(notopic, sizeof notopic, &s), -EPROTO);

    static const unsigned char gate[] = {0, 1, '*', 0, 2, 'o', 'n', 'm', 'o', 'r', 'e'};
    assert_int_equal(bus_out_gate_decode(gate, sizeof gate, &g), 0);
    assert_true(g.before_len == 1 && g.one_len == 2 && g.more_len == 4);
    assert_int_equal(bus_out_gate_decode(gate, 4, &g), -EPROTO);
    assert_int_equal(bus_out_gate_decode(gate, 0, &g), -EPROTO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_units_in_order_and_consumed),
        cmocka_unit_test(test_limit_drops_whole_units_force_passes),
        cmocka_unit_test(test_gate_holds_counts_and_notes),
        cmocka_unit_test(test_notes_pass_the_limit_once),
        cmocka_unit_test(test_gate_drop),
        cmocka_unit_test(test_reset_completes_the_separator),
        cmocka_unit_test(test_tail_over_small_writes),
        cmocka_unit_test(test_decoders),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
