/* libFuzzer target: the access rules parser (src/server/rules.c). Any
 * input parses or is refused with a "fuzz:LINE: ..." message; what parses
 * is well formed (the default last, every pair "KEY=VALUE" with a valid
 * KEY), and the trie gives the linear scan's answer for each rule's own
 * network, its last address, and addresses taken from the input. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/rules.h"

static void check_same(const rules_set *s, const sf_addr *a)
{
    const rule *t = rules_match(s, a);
    if (!t || t != rules_match_linear(s, a))
        abort();
}

/* The peer at r's network (last: with every host bit set). */
static void peer_of(sf_addr *a, const rule *r, int last)
{
    unsigned char b[16];
    unsigned n = r->kind == RULE_V4 ? 4 : 16;

    memcpy(b, r->addr, n);
    if (last)
        for (unsigned i = r->prefix_len; i < 8 * n; i++)
            b[i / 8] |= (unsigned char)(0x80u >> (i % 8));
    memset(a, 0, sizeof *a);
    if (n == 4) {
        a->u.in4.sin_family = AF_INET;
        memcpy(&a->u.in4.sin_addr, b, 4);
        a->len = sizeof a->u.in4;
    } else {
        a->u.in6.sin6_family = AF_INET6;
        memcpy(a->u.in6.sin6_addr.s6_addr, b, 16);
        a->len = sizeof a->u.in6;
    }
}

static int is_mapped(const sf_addr *a)
{
    static const unsigned char prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return a->u.sa.sa_family == AF_INET6 &&
           memcmp(a->u.in6.sin6_addr.s6_addr, prefix, sizeof prefix) == 0;
}

static void check_pairs(const rule *r)
{
    for (size_t i = 0; i < r->nenv; i++) {
        const char *eq = strchr(r->env[i], '=');
        if (!eq || eq == r->env[i] || (r->env[i][0] >= '0' && r->env[i][0] <= '9'))
            abort();
        for (const char *k = r->env[i]; k < eq; k++)
            if (!(*k == '_' || (*k >= 'A' && *k <= 'Z') || (*k >= 'a' && *k <= 'z') ||
                  (*k >= '0' && *k <= '9')))
                abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rules_set *s = NULL;
    char err[256] = "";
    sf_addr a;
    int rc = rules_parse((const char *)data, size, "fuzz", &s, err, sizeof err);

    if (rc != 0) {
        if (rc != -EINVAL || s || strncmp(err, "fuzz:", 5) != 0)
            abort();
        return 0;
    }
    size_t n = rules_count(s);
    if (n == 0 || rules_at(s, n - 1)->kind != RULE_DEFAULT || rules_at(s, n))
        abort();
    for (size_t i = 0; i < n; i++) {
        const rule *r = rules_at(s, i);
        check_pairs(r);
        if (i + 1 < n && r->kind == RULE_DEFAULT)
            abort();
        if (i >= 64 || (r->kind != RULE_V4 && r->kind != RULE_V6))
            continue;
        for (int last = 0; last < 2; last++) {
            peer_of(&a, r, last);
            check_same(s, &a);
            /* r matches it, so the answer is r or before; but an IPv6 rule
             * never matches an IPv4-mapped peer (::/80's last address). */
            if (rules_match(s, &a) > r && !is_mapped(&a))
                abort();
        }
    }
    /* Addresses made of the input's first bytes, each family. */
    memset(&a, 0, sizeof a);
    a.u.in6.sin6_family = AF_INET6;
    memcpy(a.u.in6.sin6_addr.s6_addr, data, size < 16 ? size : 16);
    a.len = sizeof a.u.in6;
    check_same(s, &a);
    memset(&a, 0, sizeof a);
    a.u.in4.sin_family = AF_INET;
    memcpy(&a.u.in4.sin_addr, data, size < 4 ? size : 4);
    a.len = sizeof a.u.in4;
    check_same(s, &a);
    a.u.sa.sa_family = AF_UNIX;
    a.len = sizeof(sa_family_t);
    check_same(s, &a);
    rules_free(s);
    return 0;
}
