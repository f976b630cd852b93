/* rules.h - access rules (`--rules FILE`): which peers may connect, and the
 * KEY=VALUE pairs a matching rule hands to the connection.
 *
 * The format (docs/design.md, "Access rules"): one rule per line, first
 * match wins, in file order:
 *
 *     # comment
 *     deny  10.1.2.0/24                 # a comment after a rule
 *     allow 10.0.0.0/8   ZONE=lan  NOTE="two words"
 *     allow 2001:db8::/32
 *     allow 192.0.2.7                   # a bare address: /32 (/128 for IPv6)
 *     deny  unix                        # Unix-socket peers
 *     default deny                      # the last rule; "default allow" when absent
 *
 * A loaded set is immutable: readers may share it without locks, and a
 * reload builds a new one and swaps a pointer. Matching costs one walk
 * down a binary trie, at most 33 (IPv4) or 129 (IPv6) nodes, whatever the
 * number of rules.
 */
#ifndef SF_RULES_H
#define SF_RULES_H

#include <stddef.h>

#include "sockfork.h"

/* The bounds: a file larger, a line longer (without its newline), or more
 * allow/deny lines (the default not counted) is refused. */
#define RULES_FILE_MAX (64u * 1024 * 1024)
#define RULES_LINE_MAX 4096u
#define RULES_COUNT_MAX 1000000u
/* At most this many KEY=VALUE pairs on one rule (bounds the duplicate check). */
#define RULES_PAIRS_MAX 64u

enum rule_action { RULE_DENY = 0, RULE_ALLOW = 1 };

enum rule_kind {
    RULE_V4 = 1,      /* an IPv4 prefix; also matches IPv4-mapped IPv6 peers */
    RULE_V6 = 2,      /* an IPv6 prefix; never matches an IPv4-mapped peer */
    RULE_UNIX = 3,    /* every Unix-socket peer */
    RULE_DEFAULT = 4  /* every peer: the last rule, explicit or implicit */
};

/* One rule, as read from the file. Owned by its rules_set. */
typedef struct rule {
    int action;             /* enum rule_action */
    int kind;               /* enum rule_kind */
    unsigned line;          /* 1-based line in the file; 0 for the implicit default */
    unsigned prefix_len;    /* RULE_V4: 0..32, RULE_V6: 0..128, else 0 */
    unsigned char addr[16]; /* the network, host bits zero (RULE_V4: the first 4 bytes) */
    size_t nenv;            /* how many KEY=VALUE pairs, in file order */
    const char *const *env; /* nenv "KEY=VALUE" strings, ready for an environment */
} rule;

typedef struct rules_set rules_set;

/*
 * Reads and parses the rules file at path. On success returns 0 and sets
 * *out to a new set (free it with rules_free). On failure returns a
 * negative errno, leaves *out alone and writes one line into err (without
 * a newline; truncated to errlen):
 *   -EINVAL   a parse error: "PATH:LINE: what is wrong"
 *   -EFBIG    the file is larger than RULES_FILE_MAX: "PATH: ..."
 *   -ENOMEM   out of memory
 *   other     open/read failed: "PATH: strerror"
 */
int rules_load(const char *path, rules_set **out, char *err, size_t errlen);

/*
 * Parses len bytes of buf as a rules file (NUL bytes are an error, not an
 * end); name stands for the file in error messages. Returns and sets as
 * rules_load does (-EFBIG when len > RULES_FILE_MAX). buf is not kept.
 */
int rules_parse(const char *buf, size_t len, const char *name, rules_set **out, char *err,
                size_t errlen);

/*
 * The first rule that matches peer, in file order: never NULL (the default
 * rule matches every peer). AF_INET peers and IPv4-mapped AF_INET6 peers
 * (::ffff:a.b.c.d) are matched by the IPv4 rules, other AF_INET6 peers by
 * the IPv6 rules, AF_UNIX peers by the `unix` rules; a peer of any other
 * family (or with len too short to hold its family) gets the default.
 * Reads the set only: safe from any number of threads and processes at once.
 * The rule belongs to s.
 */
const rule *rules_match(const rules_set *s, const sf_addr *peer);

/* The same answer by a plain scan of every rule in order: for tests, the
 * fuzzer and the benchmark, which check the trie against it. */
const rule *rules_match_linear(const rules_set *s, const sf_addr *peer);

/* How many rules, the default (explicit or implicit) included. */
size_t rules_count(const rules_set *s);

/* The i-th rule in file order, the default last; NULL when i >= rules_count. */
const rule *rules_at(const rules_set *s, size_t i);

/* The VALUE of KEY in r's pairs, or NULL if r sets no KEY. Points into the set. */
const char *rule_getenv(const rule *r, const char *key);

/*
 * A rule's pairs as a connection carries them to its child: "KEY=VALUE\0"
 * each, len bytes in all (access.c packs them). The next from *off: KEY
 * copied into name (cap bytes), *value at its VALUE. Returns 1, 0 at the
 * end, or -EINVAL for a malformed pair or a KEY longer than cap - 1.
 */
int rule_pairs_next(const char *pairs, size_t len, size_t *off, char *name, size_t cap,
                    const char **value);

/* Frees s and everything in it. NULL is allowed. */
void rules_free(rules_set *s);

#endif
