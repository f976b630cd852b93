/* Unit tests: the fixed-capacity hash map, against a plain array model. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "supervisor/hmap.h"

static void test_basic(void **state)
{
    hmap m;
    hmap_key a = hmap_key_int(42), b = hmap_key_int(43);
    (void)state;
    assert_int_equal(hmap_init(&m, 4), 0);
    assert_null(hmap_get(&m, &a));
    assert_int_equal(hmap_put(&m, &a, 7), 0);
    assert_int_equal(*hmap_get(&m, &a), 7);
    assert_int_equal(hmap_put(&m, &a, 8), 0); /* replace */
    assert_int_equal(*hmap_get(&m, &a), 8);
    assert_int_equal(m.count, 1);
    assert_int_equal(hmap_del(&m, &b), -ENOENT);
    assert_int_equal(hmap_del(&m, &a), 0);
    assert_null(hmap_get(&m, &a));
    hmap_free(&m);
}

static void test_full(void **state)
{
    hmap m;
    (void)state;
    assert_int_equal(hmap_init(&m, 3), 0);
    for (int i = 0; i < 3; i++) {
        hmap_key k = hmap_key_int(i);
        assert_int_equal(hmap_put(&m, &k, (uint32_t)i), 0);
    }
    hmap_key k = hmap_key_int(99);
    assert_int_equal(hmap_put(&m, &k, 1), -ENOSPC);
    hmap_key k0 = hmap_key_int(0);
    assert_int_equal(hmap_put(&m, &k0, 5), 0); /* replacing still works */
    hmap_free(&m);
}

/* Random puts and deletes, checked after every step against an array:
 * backward-shift deletion must never lose a key that is still there. */
static void test_random_model(void **state)
{
    enum { KEYS = 300, STEPS = 20000 };
    static int present[KEYS];
    static uint32_t value[KEYS];
    hmap m;
    (void)state;
    srand(1);
    memset(present, 0, sizeof present);
    assert_int_equal(hmap_init(&m, KEYS), 0);
    for (int step = 0; step < STEPS; step++) {
        int i = rand() % KEYS;
        hmap_key k = hmap_key_int(i * 7919);
        if (rand() % 2) {
            value[i] = (uint32_t)rand();
            assert_int_equal(hmap_put(&m, &k, value[i]), 0);
            present[i] = 1;
        } else {
            assert_int_equal(hmap_del(&m, &k), present[i] ? 0 : -ENOENT);
            present[i] = 0;
        }
        if (step % 97 == 0) {
            size_t n = 0;
            for (int j = 0; j < KEYS; j++) {
                hmap_key kj = hmap_key_int(j * 7919);
                uint32_t *v = hmap_get(&m, &kj);
                if (present[j]) {
                    assert_non_null(v);
                    assert_int_equal(*v, value[j]);
                    n++;
                } else {
                    assert_null(v);
                }
            }
            assert_int_equal(m.count, n);
        }
    }
    hmap_free(&m);
}

/* The table starts small and grows; reserve makes later puts certain. */
static void test_growth(void **state)
{
    hmap m;
    (void)state;
    assert_int_equal(hmap_init(&m, 1000), 0);
    size_t initial = m.mask + 1;
    assert_true(initial < 100);
    for (int i = 0; i < 1000; i++) {
        hmap_key k = hmap_key_int(i);
        assert_int_equal(hmap_put(&m, &k, (uint32_t)i * 3), 0);
        assert_true(2 * m.count <= m.mask + 1);
    }
    for (int i = 0; i < 1000; i++) {
        hmap_key k = hmap_key_int(i);
        assert_non_null(hmap_get(&m, &k));
        assert_int_equal(*hmap_get(&m, &k), (uint32_t)i * 3);
    }
    hmap_key k = hmap_key_int(5000);
    assert_int_equal(hmap_put(&m, &k, 1), -ENOSPC);
    assert_int_equal(hmap_reserve(&m, 1001), -ENOSPC);
    assert_int_equal(hmap_reserve(&m, 1000), 0);
    hmap_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_random_model),
        cmocka_unit_test(test_growth),
    };
    return cmocka_run_group_tests_name("hmap", tests, NULL, NULL);
}
