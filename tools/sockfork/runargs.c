/* runargs.c - see runargs.h. */
#include "runargs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum part { WHOLE, NOEXT, BASE, DIR, BASE_NOEXT };

/* Where the basename of s starts. */
static const char *base_of(const char *s)
{
    const char *slash = strrchr(s, '/');
    return slash ? slash + 1 : s;
}

/* The piece of s a replacement string asks for, as (pointer, length); the
 * dirname of a name with no slash is ".". */
static void piece(const char *s, enum part p, const char **out, size_t *len)
{
    const char *base = base_of(s), *dot;

    switch (p) {
    case WHOLE:
        *out = s;
        *len = strlen(s);
        return;
    case BASE:
        *out = base;
        *len = strlen(base);
        return;
    case DIR:
        if (base == s) {
            *out = ".";
            *len = 1;
        } else {
            *out = s;
            *len = (size_t)(base - s) - 1;
            if (*len == 0) /* "/a": the root */
                *len = 1;
        }
        return;
    case NOEXT:
    case BASE_NOEXT:
        dot = strrchr(base, '.');
        if (!dot || dot == base) /* no extension; ".profile" is a name */
            dot = base + strlen(base);
        *out = p == NOEXT ? s : base;
        *len = (size_t)(dot - *out);
        return;
    }
}

/* Parses a replacement string at s ("{...}"). Returns its length, 0 if s
 * does not start one; sets *group (0: all, N: the N-th) and *p, or *special
 * ('#', '%'). */
static size_t parse(const char *s, size_t *group, enum part *p, char *special)
{
    static const struct { const char *text; enum part p; } parts[] = {
        {"}", WHOLE}, {".}", NOEXT}, {"/}", BASE}, {"//}", DIR}, {"/.}", BASE_NOEXT},
    };
    const char *q = s + 1;
    size_t n = 0;

    if (s[0] != '{')
        return 0;
    *special = 0;
    if ((q[0] == '#' || q[0] == '%') && q[1] == '}') {
        *special = q[0];
        return 3;
    }
    while (*q >= '0' && *q <= '9' && n < 100000)
        n = n * 10 + (size_t)(*q++ - '0');
    if (q != s + 1 && n == 0)
        return 0; /* "{0}" is not one */
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        size_t l = strlen(parts[i].text);
        if (strncmp(q, parts[i].text, l) == 0) {
            *group = n;
            *p = parts[i].p;
            return (size_t)(q - s) + l;
        }
    }
    return 0;
}

/* Whether a shell takes c as it is in a word: GNU parallel's set. */
static int shell_safe(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_' || c == '.' || c == '+' || c == '/';
}

/*
 * Copies s (len bytes) to out+n, or only measures with out NULL. Returns
 * the bytes it takes. With quote, as one shell word, as GNU parallel
 * quotes (shell_quote_scalar_default), so the same command lines work:
 * a word of safe characters only is left as it is ("3" stays 3, and
 * `$(( {} * 2 ))` is arithmetic), the empty word is '', anything else
 * goes in single quotes with ' as '"'"', less the '' that leaves at
 * either end ("it's" is 'it'"'"'s, "'" is "'").
 */
static size_t put(char *out, size_t n, const char *s, size_t len, int quote)
{
    size_t quotes = 0, total, skip_lead, skip_trail, k = 0, at = 0;
    int safe = 1;

    for (size_t i = 0; i < len; i++) {
        quotes += s[i] == '\'';
        safe &= shell_safe((unsigned char)s[i]);
    }
    if (!quote || (safe && len)) {
        if (out)
            memcpy(out + n, s, len);
        return len;
    }
    /* The whole form, 'body' with each ' as '"'"', written from skip_lead
     * to total - skip_trail. */
    total = 2 + len + 4 * quotes;
    skip_lead = len && s[0] == '\'' ? 2 : 0;
    skip_trail = len && s[len - 1] == '\'' ? 2 : 0;
#define EMIT(c)                                                                  \
    do {                                                                         \
        if (at >= skip_lead && at < total - skip_trail) {                        \
            if (out)                                                             \
                out[n + k] = (c);                                                \
            k++;                                                                 \
        }                                                                        \
        at++;                                                                    \
    } while (0)
    EMIT('\'');
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '\'') {
            EMIT('\'');
            EMIT('"');
            EMIT('\'');
            EMIT('"');
            EMIT('\'');
        } else {
            EMIT(s[i]);
        }
    }
    EMIT('\'');
#undef EMIT
    return k;
}

/* Expands one word into out (NULL: only measures). Returns its length, or
 * (size_t)-1 for a group out of range. Sets *found if it held any. */
static size_t expand_word(const char *w, const char *const *args, size_t nargs,
                          unsigned long seq, unsigned slot, int quote, char *out, int *found)
{
    size_t n = 0;

    while (*w) {
        size_t group = 0, l;
        enum part p = WHOLE;
        char special, num[24];

        l = parse(w, &group, &p, &special);
        if (l == 0) {
            if (out)
                out[n] = *w;
            n++;
            w++;
            continue;
        }
        *found = 1;
        w += l;
        if (special) {
            int k = snprintf(num, sizeof num, "%lu", special == '#' ? seq : (unsigned long)slot);
            if (out)
                memcpy(out + n, num, (size_t)k);
            n += (size_t)k;
            continue;
        }
        if (group > nargs)
            return (size_t)-1;
        for (size_t i = group ? group - 1 : 0; i < (group ? group : nargs); i++) {
            const char *s = "";
            size_t len = 0;
            if (i > (group ? group - 1 : 0)) {
                if (out)
                    out[n] = ' ';
                n++;
            }
            piece(args[i], p, &s, &len);
            n += put(out, n, s, len, quote);
        }
    }
    return n;
}

char **runargs_expand(char *const *cmd, size_t ncmd, const char *const *args, size_t nargs,
                      unsigned long seq, unsigned slot, int flags)
{
    int quote = (flags & RUNARGS_QUOTE) != 0;
    size_t words = ncmd, bytes = 0;
    int found = 0;
    char **argv, *text;

    /* First measure every word, then lay them out in one block. */
    for (size_t i = 0; i < ncmd; i++) {
        size_t l = expand_word(cmd[i], args, nargs, seq, slot, quote, NULL, &found);
        if (l == (size_t)-1) {
            errno = EINVAL;
            return NULL;
        }
        bytes += l + 1;
    }
    if (!found) {
        words += nargs;
        for (size_t i = 0; i < nargs; i++)
            bytes += put(NULL, 0, args[i], strlen(args[i]), quote) + 1;
    }
    argv = malloc((words + 1) * sizeof *argv + bytes);
    if (!argv)
        return NULL;
    text = (char *)(argv + words + 1);
    for (size_t i = 0; i < ncmd; i++) {
        int dummy = 0;
        size_t l = expand_word(cmd[i], args, nargs, seq, slot, quote, text, &dummy);
        argv[i] = text;
        text[l] = '\0';
        text += l + 1;
    }
    if (!found) {
        for (size_t i = 0; i < nargs; i++) {
            size_t l = put(text, 0, args[i], strlen(args[i]), quote);
            argv[ncmd + i] = text;
            text[l] = '\0';
            text += l + 1;
        }
    }
    argv[words] = NULL;
    return argv;
}

int runargs_next(size_t *idx, const size_t *sizes, size_t ngroups)
{
    for (size_t g = ngroups; g-- > 0;) {
        if (++idx[g] < sizes[g])
            return 1;
        idx[g] = 0;
    }
    return 0;
}
