/* text.c - what a child passes on from a client, made safe (sockfork.h). */
#include "sockfork.h"

#include <stdio.h>
#include <string.h>

/* The length of the valid UTF-8 character at p (1 to 4), or 0: a stray or
 * truncated byte, an overlong form, a surrogate, past U+10FFFF. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    unsigned char c = p[0];
    size_t k = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;

    if (k == 0 || k > n)
        return 0;
    for (size_t j = 1; j < k; j++) {
        if ((p[j] & 0xc0) != 0x80)
            return 0;
    }
    if ((k == 2 && c < 0xc2) ||
        (k == 3 && ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] >= 0xa0))) ||
        (k == 4 && (c > 0xf4 || (c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] >= 0x90))))
        return 0;
    return k;
}

/* C0 controls but tab, DEL, and the C1 controls U+0080..U+009F. */
static int is_control(const unsigned char *p, size_t k)
{
    if (k == 1)
        return (p[0] < 0x20 && p[0] != '\t') || p[0] == 0x7f;
    return k == 2 && p[0] == 0xc2 && p[1] <= 0x9f;
}

/* The code point of the valid UTF-8 character at p, k bytes long. */
static unsigned long code_point(const unsigned char *p, size_t k)
{
    static const unsigned char lead[] = {0, 0x7f, 0x1f, 0x0f, 0x07};
    unsigned long c = p[0] & lead[k];

    for (size_t j = 1; j < k; j++)
        c = (c << 6) | (p[j] & 0x3f);
    return c;
}

/* Characters that change how text around them reads or hide text, shown as
 * nothing or elsewhere: Unicode's Default_Ignorable_Code_Point set (bidi
 * marks, embeddings, overrides and isolates among them; zero-width and
 * invisible format characters; Hangul fillers; Mongolian free variation
 * selectors; musical format controls; tags), the prepended concatenation
 * marks (Arabic, Syriac, Kaithi number signs), the interlinear annotation
 * characters, and the line and paragraph separators. Kept: U+200C and
 * U+200D (ZWNJ, ZWJ), which Persian, Indic scripts and emoji sequences
 * need, and the variation selectors U+FE00..U+FE0F and U+E0100..U+E01EF
 * (emoji and CJK presentation). */
static int is_format(const unsigned char *p, size_t k)
{
    unsigned long c;

    if (k == 1)
        return 0;
    c = code_point(p, k);
    if (c < 0x2000)
        return c == 0xad || c == 0x34f || (c >= 0x600 && c <= 0x605) || c == 0x61c ||
               c == 0x6dd || c == 0x70f || c == 0x8e2 || c == 0x115f || c == 0x1160 ||
               c == 0x17b4 || c == 0x17b5 || (c >= 0x180b && c <= 0x180f);
    if (c < 0x10000)
        return (c >= 0x200b && c <= 0x200f && c != 0x200c && c != 0x200d) ||
               (c >= 0x2028 && c <= 0x202e) || (c >= 0x2060 && c <= 0x206f) || c == 0x3164 ||
               c == 0xfeff || c == 0xffa0 || (c >= 0xfff0 && c <= 0xfffb);
    return c == 0x110bd || c == 0x110cd || (c >= 0x1bca0 && c <= 0x1bca3) ||
           (c >= 0x1d173 && c <= 0x1d17a) ||
           (c >= 0xe0000 && c <= 0xe0fff && !(c >= 0xe0100 && c <= 0xe01ef));
}

size_t sf_text_clean(char *out, size_t len, const void *in, size_t n, const char *replacement)
{
    const unsigned char *p = in;
    size_t rl = strlen(replacement), o = 0, i = 0;

    if (len == 0)
        return 0;
    while (i < n) {
        size_t k = utf8_len(p + i, n - i);
        int bad = k == 0 || is_control(p + i, k) || is_format(p + i, k);
        size_t w = bad ? rl : k;

        if (o + w + 1 > len)
            break; /* it would not fit whole */
        memcpy(out + o, bad ? (const unsigned char *)replacement : p + i, w);
        o += w;
        i += k ? k : 1; /* a control character is replaced once, a stray byte each */
    }
    out[o] = '\0';
    return o;
}

/* How sf_text_escape writes the character at p (k bytes; 0: a byte that is
 * not UTF-8) into piece (at least 11 bytes). Returns its length. */
static size_t escape_one(const unsigned char *p, size_t k, char *piece)
{
    unsigned long c;

    if (k == 0 || (k == 1 && (is_control(p, 1) || p[0] == '\t')))
        return (size_t)snprintf(piece, 11, "\\x%02x", p[0]);
    if (k == 1 && p[0] == '\\')
        return (size_t)snprintf(piece, 11, "\\\\");
    if (!is_control(p, k) && !is_format(p, k)) {
        memcpy(piece, p, k);
        return k;
    }
    c = code_point(p, k);
    return (size_t)snprintf(piece, 11, c > 0xffff ? "\\U%08lx" : "\\u%04lx", c);
}

size_t sf_text_escape(char *out, size_t len, const void *in, size_t n)
{
    const unsigned char *p = in;
    size_t o = 0, need = 0, i = 0;

    while (i < n) {
        char piece[11];
        size_t k = utf8_len(p + i, n - i), w = escape_one(p + i, k, piece);

        if (need == o && o + w < len) { /* whole, and room for the NUL */
            memcpy(out + o, piece, w);
            o += w;
        }
        need += w;
        i += k ? k : 1;
    }
    if (len > 0)
        out[o] = '\0';
    return need;
}
