/* rules.c - access rules: the parser, and a path-compressed binary trie
 * per address family for first-match-wins lookups in O(address bits).
 *
 * Rules are numbered in file order, the default last. Each trie node holds
 * a prefix and the smallest number of a rule with exactly that prefix; the
 * first rule matching an address is the smallest number met on the walk
 * from the root along the address's bits, since the nodes on that path are
 * exactly the prefixes that contain the address. A node has at most two
 * children and only branching or rule-carrying nodes exist, so n prefixes
 * make at most 2n nodes, and a walk visits at most 33 (IPv4) or 129 (IPv6).
 * Each node also keeps the smallest number in its subtree, so a walk stops
 * as soon as nothing below can come before the rule it has already found.
 */
#include "server/rules.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NO_NODE UINT32_MAX

typedef struct trie_node {
    uint64_t key[2];   /* the prefix, left-aligned (IPv4 in the top 32 bits), host bits zero */
    uint32_t child[2]; /* by the bit after the prefix; NO_NODE when none */
    uint32_t first;    /* smallest rule number with exactly this prefix; UINT32_MAX if none */
    uint32_t below;    /* smallest `first` in this node's subtree, itself included */
    uint32_t len;      /* prefix length in bits */
} trie_node;

struct rules_set {
    rule *rules;       /* nrules + 1, in file order, the default last */
    size_t nrules;     /* allow/deny rules, the default not counted */
    const char **env;  /* every rule's "KEY=VALUE" pointers, in file order */
    char *text;        /* the pairs' strings */
    trie_node *nodes;
    uint32_t nnodes;
    uint32_t root[2];  /* the IPv4 and the IPv6 trie */
    uint32_t unix_first; /* the first `unix` rule, or the default's number */
};

/* The parser's state while it reads one file. */
typedef struct builder {
    const char *name;
    char *err;
    size_t errlen;
    unsigned line;
    rule *rules;
    size_t nrules, rules_cap; /* the default included once read */
    unsigned default_line;    /* nonzero once a `default` line was read */
    char *text;
    size_t text_len, text_cap;
    size_t *pair_off;         /* each pair's offset in text */
    size_t npairs, pairs_cap;
    char shown[64];           /* a token, made printable for a message */
} builder;

/* ------------------------------------------------------------- messages */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* "NAME:LINE: what" into the caller's buffer; returns -EINVAL. */
static int fail_at(builder *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail_at(builder *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (!b->err || b->errlen == 0)
        return -EINVAL;
    n = snprintf(b->err, b->errlen, "%s:%u: ", b->name, b->line);
    if (n >= 0 && (size_t)n < b->errlen) {
        va_start(ap, fmt);
        vsnprintf(b->err + n, b->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

/* A token as it may be printed: at most 40 bytes, other than printable
 * ASCII shown as '?'. Valid until the next call. */
static const char *show(builder *b, const char *p, size_t n)
{
    size_t i, keep = n > 40 ? 40 : n;

    for (i = 0; i < keep; i++)
        b->shown[i] = p[i] >= 0x20 && p[i] < 0x7f ? p[i] : '?';
    if (keep < n)
        memcpy(b->shown + keep, "...", 4);
    else
        b->shown[keep] = '\0';
    return b->shown;
}

/* ----------------------------------------------------------------- keys */

static uint64_t load_be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static uint64_t load_be32(const unsigned char *p)
{
    return (uint64_t)p[0] << 24 | (uint64_t)p[1] << 16 | (uint64_t)p[2] << 8 | p[3];
}

static void key_v4(uint64_t key[2], const unsigned char *a)
{
    key[0] = load_be32(a) << 32;
    key[1] = 0;
}

static void key_v6(uint64_t key[2], const unsigned char *a)
{
    key[0] = load_be64(a);
    key[1] = load_be64(a + 8);
}

static unsigned key_bit(const uint64_t key[2], unsigned i)
{
    return i < 64 ? (unsigned)(key[0] >> (63 - i)) & 1u : (unsigned)(key[1] >> (127 - i)) & 1u;
}

/* How many leading bits a and b share, at most max. */
static unsigned common_bits(const uint64_t a[2], const uint64_t b[2], unsigned max)
{
    uint64_t x = a[0] ^ b[0];
    unsigned n;

    if (x) {
        n = (unsigned)__builtin_clzll(x);
    } else {
        x = a[1] ^ b[1];
        n = x ? 64 + (unsigned)__builtin_clzll(x) : 128;
    }
    return n < max ? n : max;
}

/* Zeroes every bit from len on. */
static void key_mask(uint64_t key[2], unsigned len)
{
    if (len == 0) {
        key[0] = key[1] = 0;
    } else if (len < 64) {
        key[0] &= ~0ull << (64 - len);
        key[1] = 0;
    } else if (len == 64) {
        key[1] = 0;
    } else if (len < 128) {
        key[1] &= ~0ull << (128 - len);
    }
}

/* ----------------------------------------------------------------- trie */

/* The capacity was reserved before the first insert (2 nodes per prefix),
 * so this never moves the array under the caller's pointers. */
static uint32_t node_new(rules_set *s, const uint64_t key[2], unsigned len, uint32_t first)
{
    uint32_t i = s->nnodes++;
    trie_node *n = &s->nodes[i];

    n->key[0] = key[0];
    n->key[1] = key[1];
    key_mask(n->key, len);
    n->len = len;
    n->first = first;
    n->below = first;
    n->child[0] = n->child[1] = NO_NODE;
    return i;
}

static void trie_insert(rules_set *s, uint32_t *root, const uint64_t key[2], unsigned len,
                        uint32_t number)
{
    uint32_t *slot = root;

    for (;;) {
        if (*slot == NO_NODE) {
            *slot = node_new(s, key, len, number);
            return;
        }
        trie_node *n = &s->nodes[*slot];
        unsigned common = common_bits(key, n->key, len < n->len ? len : n->len);
        if (common == n->len) {
            if (len == n->len) {
                if (number < n->first)
                    n->first = number;
                return;
            }
            slot = &n->child[key_bit(key, n->len)];
            continue;
        }
        /* n's prefix is not a prefix of key: a node goes in above n, the
         * new prefix itself or the branch where the two part. */
        uint32_t old = *slot, up;
        if (common == len) {
            up = node_new(s, key, len, number);
        } else {
            up = node_new(s, key, common, UINT32_MAX);
            s->nodes[up].child[key_bit(key, common)] = node_new(s, key, len, number);
        }
        s->nodes[up].child[key_bit(s->nodes[old].key, common)] = old;
        *slot = up;
        return;
    }
}

/* Sets each node's `below` from its children's, once every prefix is in.
 * Recursion depth: at most 130, one level per distinct prefix length. */
static uint32_t trie_fill_below(rules_set *s, uint32_t i)
{
    trie_node *n;
    uint32_t m;

    if (i == NO_NODE)
        return UINT32_MAX;
    n = &s->nodes[i];
    m = n->first;
    for (int c = 0; c < 2; c++) {
        uint32_t b = trie_fill_below(s, n->child[c]);
        if (b < m)
            m = b;
    }
    n->below = m;
    return m;
}

/* The smallest rule number on key's path, or best if smaller. */
static uint32_t trie_first(const rules_set *s, uint32_t i, const uint64_t key[2], uint32_t best)
{
    while (i != NO_NODE) {
        const trie_node *n = &s->nodes[i];
        if (n->below >= best)
            break;
        if (common_bits(key, n->key, n->len) < n->len)
            break;
        if (n->first < best)
            best = n->first;
        if (n->len >= 128)
            break;
        i = n->child[key_bit(key, n->len)];
    }
    return best;
}

/* -------------------------------------------------------------- parsing */

static int is_space(char c)
{
    return c == ' ' || c == '\t';
}

static const char *skip_space(const char *p, const char *end)
{
    while (p < end && is_space(*p))
        p++;
    return p;
}

/* The word at p (up to a space or the line's end); moves p past it. */
static size_t take_word(const char **p, const char *end)
{
    const char *start = *p;
    while (*p < end && !is_space(**p))
        (*p)++;
    return (size_t)(*p - start);
}

static int word_is(const char *w, size_t n, const char *lit)
{
    return n == strlen(lit) && memcmp(w, lit, n) == 0;
}

static int grow(void **buf, size_t *cap, size_t need, size_t size)
{
    size_t ncap = *cap ? *cap : 16;
    void *nbuf;

    if (need <= *cap)
        return 0;
    while (ncap < need)
        ncap *= 2;
    nbuf = realloc(*buf, ncap * size);
    if (!nbuf)
        return -ENOMEM;
    *buf = nbuf;
    *cap = ncap;
    return 0;
}

static int text_put(builder *b, const char *p, size_t n)
{
    void *buf = b->text;
    if (grow(&buf, &b->text_cap, b->text_len + n, 1) < 0)
        return -ENOMEM;
    b->text = buf;
    memcpy(b->text + b->text_len, p, n);
    b->text_len += n;
    return 0;
}

static int is_mapped_v4(const unsigned char *a)
{
    static const unsigned char prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(a, prefix, sizeof prefix) == 0;
}

static int parse_len(builder *b, const char *p, size_t n, unsigned max, unsigned *len)
{
    unsigned v = 0;

    if (n == 0 || n > 3)
        return fail_at(b, "bad prefix length \"/%s\"", show(b, p, n));
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return fail_at(b, "bad prefix length \"/%s\"", show(b, p, n));
        v = v * 10 + (unsigned)(p[i] - '0');
    }
    if (v > max)
        return fail_at(b, "prefix length /%u out of range (0..%u for IPv%d)", v, max,
                       max == 32 ? 4 : 6);
    *len = v;
    return 0;
}

/* "unix", or ADDRESS[/LEN] with the host bits beyond LEN zero. */
static int parse_peer(builder *b, const char *tok, size_t n, rule *r)
{
    const char *slash = memchr(tok, '/', n);
    size_t alen = slash ? (size_t)(slash - tok) : n;
    char text[INET6_ADDRSTRLEN + 8];
    int v6;
    unsigned max;
    uint64_t key[2], net[2];

    if (word_is(tok, n, "unix")) {
        r->kind = RULE_UNIX;
        return 0;
    }
    if (alen == 0 || alen >= sizeof text)
        goto bad;
    memcpy(text, tok, alen);
    text[alen] = '\0';
    v6 = memchr(text, ':', alen) != NULL;
    if (inet_pton(v6 ? AF_INET6 : AF_INET, text, r->addr) != 1)
        goto bad;
    max = v6 ? 128 : 32;
    r->kind = v6 ? RULE_V6 : RULE_V4;
    r->prefix_len = max;
    if (slash && parse_len(b, slash + 1, n - alen - 1, max, &r->prefix_len) < 0)
        return -EINVAL;
    if (v6 && r->prefix_len >= 96 && is_mapped_v4(r->addr))
        return fail_at(b, "\"%s\" is an IPv4-mapped prefix: write it in IPv4 "
                       "(IPv4-mapped peers are matched by the IPv4 rules)", show(b, tok, n));
    if (v6)
        key_v6(key, r->addr);
    else
        key_v4(key, r->addr);
    net[0] = key[0];
    net[1] = key[1];
    key_mask(net, r->prefix_len);
    if (net[0] != key[0] || net[1] != key[1]) {
        unsigned char a[16] = {0};
        char want[INET6_ADDRSTRLEN];
        for (int i = 0; i < 16; i++)
            a[i] = (unsigned char)((i < 8 ? net[0] : net[1]) >> (56 - 8 * (i % 8)));
        inet_ntop(v6 ? AF_INET6 : AF_INET, a, want, sizeof want);
        return fail_at(b, "%s has host bits set beyond /%u (the network is %s/%u)", text,
                       r->prefix_len, want, r->prefix_len);
    }
    return 0;
bad:
    return fail_at(b, "bad address \"%s\" (expected IPv4 or IPv6 with an optional /LEN, or unix)",
                   show(b, tok, n));
}

static int is_key_start(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static int is_key_char(char c)
{
    return is_key_start(c) || (c >= '0' && c <= '9');
}

/* Was KEY (n bytes) already set on the rule whose pairs start at first? */
static int key_seen(const builder *b, size_t first, const char *key, size_t n)
{
    for (size_t i = first; i < b->npairs; i++) {
        const char *k = b->text + b->pair_off[i]; /* "KEY=VALUE\0", complete */
        if (strcspn(k, "=") == n && memcmp(k, key, n) == 0)
            return 1;
    }
    return 0;
}

/* The VALUE after '=': a word, or "..." where \" and \\ stand for " and \. */
static int parse_value(builder *b, const char **pp, const char *end)
{
    const char *p = *pp;

    if (p < end && *p == '"') {
        for (p++;; p++) {
            if (p == end)
                return fail_at(b, "a value's quote is not closed");
            if (*p == '"')
                break;
            if (*p == '\\') {
                if (p + 1 == end || (p[1] != '"' && p[1] != '\\'))
                    return fail_at(b, "bad escape in a quoted value (only \\\" and \\\\)");
                p++;
            }
            if (text_put(b, p, 1) < 0)
                return -ENOMEM;
        }
        p++;
        if (p < end && !is_space(*p))
            return fail_at(b, "text after a value's closing quote");
    } else {
        const char *start = p;
        while (p < end && !is_space(*p)) {
            if (*p == '"')
                return fail_at(b, "a '\"' inside a value: quote the whole value");
            p++;
        }
        if (text_put(b, start, (size_t)(p - start)) < 0)
            return -ENOMEM;
    }
    *pp = p;
    return text_put(b, "", 1);
}

/* KEY=VALUE, stored as a "KEY=VALUE" string. */
static int parse_pair(builder *b, const char **pp, const char *end, size_t first, rule *r)
{
    const char *p = *pp, *key = p;
    size_t klen;
    void *offs = b->pair_off;

    while (p < end && *p != '=' && !is_space(*p))
        p++;
    klen = (size_t)(p - key);
    if (p == end || *p != '=') {
        const char *q = key;
        return fail_at(b, "\"%s\" is not KEY=VALUE", show(b, key, take_word(&q, end)));
    }
    if (klen == 0 || !is_key_start(key[0]))
        goto bad_key;
    for (size_t i = 1; i < klen; i++)
        if (!is_key_char(key[i]))
            goto bad_key;
    if (r->nenv >= RULES_PAIRS_MAX)
        return fail_at(b, "more than %u KEY=VALUE pairs on one rule", RULES_PAIRS_MAX);
    if (key_seen(b, first, key, klen))
        return fail_at(b, "%s is set twice on this rule", show(b, key, klen));
    if (grow(&offs, &b->pairs_cap, b->npairs + 1, sizeof *b->pair_off) < 0)
        return -ENOMEM;
    b->pair_off = offs;
    b->pair_off[b->npairs] = b->text_len;
    if (text_put(b, key, klen + 1) < 0)
        return -ENOMEM;
    p++;
    int rc = parse_value(b, &p, end);
    if (rc < 0)
        return rc;
    b->npairs++;
    r->nenv++;
    *pp = p;
    return 0;
bad_key:
    return fail_at(b, "bad variable name \"%s\" (letters, digits and _, not starting with a digit)",
                   show(b, key, klen));
}

static int parse_action(builder *b, const char *w, size_t n, const char *after, rule *r)
{
    if (word_is(w, n, "allow"))
        r->action = RULE_ALLOW;
    else if (word_is(w, n, "deny"))
        r->action = RULE_DENY;
    else if (n == 0 || w[0] == '#')
        return fail_at(b, "%s: expected allow or deny", after);
    else
        return fail_at(b, "%s: \"%s\" is not allow or deny", after, show(b, w, n));
    return 0;
}

/* One line, without its newline (or a CR before it). */
static int parse_line(builder *b, const char *p, const char *end)
{
    const char *w;
    size_t n, first = b->npairs;
    void *rules = b->rules;
    rule *r;
    int rc;

    p = skip_space(p, end);
    if (p == end || *p == '#')
        return 0;
    if (b->default_line)
        return fail_at(b, "a rule after the default (line %u): default must be the last rule",
                       b->default_line);
    if (grow(&rules, &b->rules_cap, b->nrules + 1, sizeof *b->rules) < 0)
        return -ENOMEM;
    b->rules = rules;
    r = &b->rules[b->nrules];
    memset(r, 0, sizeof *r);
    r->line = b->line;

    w = p;
    n = take_word(&p, end);
    if (word_is(w, n, "default")) {
        r->kind = RULE_DEFAULT;
        p = skip_space(p, end);
        w = p;
        n = take_word(&p, end);
        if ((rc = parse_action(b, w, n, "default", r)) < 0)
            return rc;
        b->default_line = b->line;
    } else if (word_is(w, n, "allow") || word_is(w, n, "deny")) {
        if (b->nrules >= RULES_COUNT_MAX)
            return fail_at(b, "more than %u rules", RULES_COUNT_MAX);
        r->action = word_is(w, n, "allow") ? RULE_ALLOW : RULE_DENY;
        p = skip_space(p, end);
        w = p;
        n = take_word(&p, end);
        if (n == 0 || w[0] == '#')
            return fail_at(b, "%s: missing address (a CIDR prefix or unix)",
                           r->action == RULE_ALLOW ? "allow" : "deny");
        if ((rc = parse_peer(b, w, n, r)) < 0)
            return rc;
    } else {
        return fail_at(b, "unknown keyword \"%s\": expected allow, deny or default",
                       show(b, w, n));
    }
    for (;;) {
        p = skip_space(p, end);
        if (p == end || *p == '#')
            break;
        if ((rc = parse_pair(b, &p, end, first, r)) < 0)
            return rc;
    }
    if (r->kind != RULE_DEFAULT)
        b->nrules++;
    return 0;
}

/* ------------------------------------------------------------- building */

static int build_trie(rules_set *s)
{
    size_t prefixes = 0;
    uint64_t key[2];

    for (size_t i = 0; i < s->nrules; i++)
        prefixes += s->rules[i].kind == RULE_V4 || s->rules[i].kind == RULE_V6;
    s->nodes = malloc((2 * prefixes + 1) * sizeof *s->nodes);
    if (!s->nodes)
        return -ENOMEM;
    s->root[0] = s->root[1] = NO_NODE;
    s->unix_first = (uint32_t)s->nrules;
    for (size_t i = 0; i < s->nrules; i++) {
        const rule *r = &s->rules[i];
        if (r->kind == RULE_V4) {
            key_v4(key, r->addr);
            trie_insert(s, &s->root[0], key, r->prefix_len, (uint32_t)i);
        } else if (r->kind == RULE_V6) {
            key_v6(key, r->addr);
            trie_insert(s, &s->root[1], key, r->prefix_len, (uint32_t)i);
        } else if (r->kind == RULE_UNIX && s->unix_first == s->nrules) {
            s->unix_first = (uint32_t)i;
        }
    }
    trie_fill_below(s, s->root[0]);
    trie_fill_below(s, s->root[1]);
    return 0;
}

/* Moves what b read into a new set: the default last (allow, line 0,
 * when the file has none), each rule's pairs pointed at. */
static int finish(builder *b, rules_set **out)
{
    rules_set *s = calloc(1, sizeof *s);
    void *rules = b->rules;
    size_t total = b->nrules + 1, next = 0;

    if (!s)
        return -ENOMEM;
    if (!b->default_line) {
        if (grow(&rules, &b->rules_cap, total, sizeof *b->rules) < 0)
            goto nomem;
        b->rules = rules;
        memset(&b->rules[b->nrules], 0, sizeof *b->rules);
        b->rules[b->nrules].action = RULE_ALLOW;
        b->rules[b->nrules].kind = RULE_DEFAULT;
    }
    s->env = malloc((b->npairs + 1) * sizeof *s->env);
    if (!s->env)
        goto nomem;
    for (size_t i = 0; i < b->npairs; i++)
        s->env[i] = b->text + b->pair_off[i];
    for (size_t i = 0; i < total; i++) {
        rule *r = &b->rules[i];
        r->env = r->nenv ? s->env + next : NULL;
        next += r->nenv;
    }
    s->rules = b->rules;
    s->nrules = b->nrules;
    s->text = b->text;
    b->rules = NULL;
    b->text = NULL;
    if (build_trie(s) < 0) {
        rules_free(s);
        return -ENOMEM;
    }
    *out = s;
    return 0;
nomem:
    free(s);
    return -ENOMEM;
}

int rules_parse(const char *buf, size_t len, const char *name, rules_set **out, char *err,
                size_t errlen)
{
    builder b;
    const char *p = buf, *end = len ? buf + len : buf; /* buf may be NULL when len is 0 */
    int rc = 0;

    if (len > RULES_FILE_MAX) {
        set_err(err, errlen, "%s: larger than %u bytes", name, RULES_FILE_MAX);
        return -EFBIG;
    }
    memset(&b, 0, sizeof b);
    b.name = name;
    b.err = err;
    b.errlen = errlen;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl ? nl : end;
        b.line++;
        if ((size_t)(eol - p) > RULES_LINE_MAX) {
            rc = fail_at(&b, "line longer than %u bytes", RULES_LINE_MAX);
            goto done;
        }
        if (memchr(p, '\0', (size_t)(eol - p))) {
            rc = fail_at(&b, "a NUL byte");
            goto done;
        }
        if (eol > p && eol[-1] == '\r')
            eol--;
        if ((rc = parse_line(&b, p, eol)) < 0)
            goto done;
        p = nl ? nl + 1 : end;
    }
    rc = finish(&b, out);
done:
    if (rc == -ENOMEM)
        set_err(err, errlen, "%s: out of memory", name);
    free(b.rules);
    free(b.text);
    free(b.pair_off);
    return rc;
}

/* Reads the whole file, at most RULES_FILE_MAX bytes. */
static int read_file(const char *path, char **data, size_t *len, char *err, size_t errlen)
{
    struct stat st;
    size_t cap = 64 * 1024, n = 0;
    char *buf = NULL;
    int fd, rc;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        goto fail_errno;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        if ((uintmax_t)st.st_size > RULES_FILE_MAX)
            goto too_big;
        cap = (size_t)st.st_size + 1;
    }
    for (;;) {
        if (n == cap) {
            void *nbuf;
            if (cap > RULES_FILE_MAX)
                goto too_big;
            cap = cap * 2 > (size_t)RULES_FILE_MAX + 1 ? (size_t)RULES_FILE_MAX + 1 : cap * 2;
            nbuf = realloc(buf, cap);
            if (!nbuf)
                goto nomem;
            buf = nbuf;
        } else if (!buf && !(buf = malloc(cap))) {
            goto nomem;
        }
        ssize_t got = read(fd, buf + n, cap - n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            goto fail_errno;
        if (got == 0)
            break;
        n += (size_t)got;
    }
    if (n > RULES_FILE_MAX)
        goto too_big;
    close(fd);
    *data = buf;
    *len = n;
    return 0;
fail_errno:
    rc = -errno;
    set_err(err, errlen, "%s: %s", path, strerror(errno));
    goto out;
too_big:
    rc = -EFBIG;
    set_err(err, errlen, "%s: larger than %u bytes", path, RULES_FILE_MAX);
    goto out;
nomem:
    rc = -ENOMEM;
    set_err(err, errlen, "%s: out of memory", path);
out:
    if (fd >= 0)
        close(fd);
    free(buf);
    return rc;
}

int rules_load(const char *path, rules_set **out, char *err, size_t errlen)
{
    char *data = NULL;
    size_t len = 0;
    int rc = read_file(path, &data, &len, err, errlen);

    if (rc < 0)
        return rc;
    rc = rules_parse(data, len, path, out, err, errlen);
    free(data);
    return rc;
}

/* ------------------------------------------------------------- matching */

/* The peer's kind (RULE_V4, RULE_V6, RULE_UNIX) and, for an address, its
 * key; 0 for a family no rule names. */
static int peer_key(const sf_addr *peer, uint64_t key[2])
{
    if (peer->len < sizeof(sa_family_t))
        return 0;
    switch (peer->u.sa.sa_family) {
    case AF_INET:
        if (peer->len < sizeof(struct sockaddr_in))
            return 0;
        key_v4(key, (const unsigned char *)&peer->u.in4.sin_addr);
        return RULE_V4;
    case AF_INET6:
        if (peer->len < sizeof(struct sockaddr_in6))
            return 0;
        if (is_mapped_v4(peer->u.in6.sin6_addr.s6_addr)) {
            key_v4(key, peer->u.in6.sin6_addr.s6_addr + 12);
            return RULE_V4;
        }
        key_v6(key, peer->u.in6.sin6_addr.s6_addr);
        return RULE_V6;
    case AF_UNIX:
        return RULE_UNIX;
    default:
        return 0;
    }
}

const rule *rules_match(const rules_set *s, const sf_addr *peer)
{
    uint64_t key[2] = {0, 0};
    uint32_t best = (uint32_t)s->nrules;

    switch (peer_key(peer, key)) {
    case RULE_V4:
        best = trie_first(s, s->root[0], key, best);
        break;
    case RULE_V6:
        best = trie_first(s, s->root[1], key, best);
        break;
    case RULE_UNIX:
        best = s->unix_first;
        break;
    }
    return &s->rules[best];
}

const rule *rules_match_linear(const rules_set *s, const sf_addr *peer)
{
    uint64_t key[2] = {0, 0}, net[2];
    int kind = peer_key(peer, key);

    for (size_t i = 0; i < s->nrules; i++) {
        const rule *r = &s->rules[i];
        if (r->kind != kind)
            continue;
        if (kind == RULE_UNIX)
            return r;
        if (kind == RULE_V4)
            key_v4(net, r->addr);
        else
            key_v6(net, r->addr);
        if (common_bits(key, net, r->prefix_len) == r->prefix_len)
            return r;
    }
    return &s->rules[s->nrules];
}

size_t rules_count(const rules_set *s)
{
    return s->nrules + 1;
}

const rule *rules_at(const rules_set *s, size_t i)
{
    return i <= s->nrules ? &s->rules[i] : NULL;
}

const char *rule_getenv(const rule *r, const char *key)
{
    size_t n = strlen(key);

    for (size_t i = 0; i < r->nenv; i++)
        if (strncmp(r->env[i], key, n) == 0 && r->env[i][n] == '=')
            return r->env[i] + n + 1;
    return NULL;
}

int rule_pairs_next(const char *pairs, size_t len, size_t *off, char *name, size_t cap,
                    const char **value)
{
    const char *p, *eq;
    size_t n;

    if (*off >= len)
        return 0;
    p = pairs + *off;
    n = strnlen(p, len - *off);
    eq = memchr(p, '=', n);
    if (!eq || (size_t)(eq - p) >= cap)
        return -EINVAL;
    memcpy(name, p, (size_t)(eq - p));
    name[eq - p] = '\0';
    *value = eq + 1;
    *off += n + 1;
    return 1;
}

void rules_free(rules_set *s)
{
    if (!s)
        return;
    free(s->rules);
    free(s->env);
    free(s->text);
    free(s->nodes);
    free(s);
}
