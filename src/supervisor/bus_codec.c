/* bus_codec.c - see bus_codec.h. */
#include "supervisor/bus_codec.h"
#include "channel/be.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ encoding */


static const char *kind_name(int kind)
{
    switch (kind) {
    case SF_MSG_DIRECT: return "direct";
    case SF_MSG_NAME: return "name";
    case SF_MSG_BROADCAST: return "broadcast";
    case SF_MSG_TOPIC: return "topic";
    case SF_MSG_HISTORY: return "history";
    case SF_MSG_CLAIMED: return "claimed";
    case SF_MSG_MEMBERS: return "members";
    case SF_MSG_TOPICS: return "topics";
    default: return "error";
    }
}

static char *base64(const unsigned char *p, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc(4 * ((n + 2) / 3) + 1), *o = out;

    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) |
                     (i + 2 < n ? p[i + 2] : 0);
        *o++ = tab[v >> 18 & 63];
        *o++ = tab[v >> 12 & 63];
        *o++ = i + 1 < n ? tab[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? tab[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

int bus_encode_json(const bus_msg *m, char **out, size_t *len)
{
    json_t *o = json_object();
    int rc = -ENOMEM;

    if (!o)
        return -ENOMEM;
    if (m->kind == SF_MSG_CLAIMED) {
        json_object_set_new(o, "op", json_string("claimed"));
        json_object_set_new(o, "name", json_stringn(m->topic, m->topic_len));
        json_object_set_new(o, "ok", json_boolean(m->ok));
    } else if (m->kind == SF_MSG_ERROR) {
        json_object_set_new(o, "op", json_string("error"));
        json_object_set_new(o, "error", json_stringn(m->topic, m->topic_len));
        json_object_set_new(o, "code", json_string(m->ok == ESRCH ? "not_found"
                                                   : m->ok == ENOSPC ? "limit"
                                                   : m->ok == EMSGSIZE ? "too_big"
                                                   : m->ok == ENOMEM ? "no_memory"
                                                   : m->ok == EEXIST ? "taken" : "bad_request"));
        if (m->len)
            json_object_set_new(o, "about", json_stringn((const char *)m->data, m->len));
    } else {
        json_t *d = json_stringn(m->len ? (const char *)m->data : "", m->len);
        json_object_set_new(o, "op", json_string("message"));
        json_object_set_new(o, "kind", json_string(kind_name(m->kind)));
        json_object_set_new(o, "from", json_integer(m->from));
        if (m->topic_len)
            json_object_set_new(o, m->kind == SF_MSG_NAME ? "name" : "topic",
                                json_stringn(m->topic, m->topic_len));
        if (d) {
            json_object_set_new(o, "data", d);
        } else {
            char *b = base64(m->data, m->len);
            if (!b)
                goto out;
            json_object_set_new(o, "data_b64", json_string(b));
            free(b);
        }
    }
    rc = jsonl_encode(o, out, len);
out:
    json_decref(o);
    return rc;
}

int bus_encode_frame(const bus_msg *m, unsigned char **out, size_t *len)
{
    size_t plen = 8 + m->topic_len + m->len;
    unsigned char *p = malloc(CHAN_HDR_LEN + plen);

    if (!p)
        return -ENOMEM;
    chan_header_encode(p, CHAN_T_MESSAGE, 0, (uint32_t)plen);
    p[8] = (unsigned char)m->kind;
    p[9] = (unsigned char)m->ok; /* CLAIMED: 0 or 1; ERROR: an errno value */
    be16_put(p + 10, (uint32_t)m->topic_len);
    be32_put(p + 12, (uint32_t)m->from);
    if (m->topic_len)
        memcpy(p + 16, m->topic, m->topic_len);
    if (m->len)
        memcpy(p + 16 + m->topic_len, m->data, m->len);
    *out = p;
    *len = CHAN_HDR_LEN + plen;
    return 0;
}

/* ------------------------------------------------------------ decoding */

/* Names and topics: 1 to 255 bytes, no space or control character (they
 * are listed space-separated, a line each, in MEMBERS and TOPICS). */
static int name_ok(const void *p, size_t n)
{
    const unsigned char *c = p;
    if (n == 0 || n > BUS_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (c[i] <= 0x20 || c[i] == 0x7f)
            return 0;
    }
    return 1;
}

int bus_op_from_frame(const chan_frame *f, bus_op *op)
{
    /* An empty frame has no payload buffer: point at "" rather than NULL,
     * so that no memcpy below is ever given a null pointer. */
    const unsigned char *p = f->payload ? f->payload : (const unsigned char *)"";
    size_t n = f->len;

    memset(op, 0, sizeof *op);
    if (f->fd >= 0)
        return -EPROTO; /* nothing takes a descriptor from a child yet */
    switch (f->type) {
    case CHAN_T_SEND:
        if (n < 4)
            return -EPROTO;
        op->op = OP_SEND;
        op->to = (pid_t)be32_get(p);
        op->data = p + 4;
        op->len = n - 4;
        return 0;
    case CHAN_T_SEND_NAME:
    case CHAN_T_PUBLISH:
        if (n < 2 || n < 2 + (size_t)be16_get(p) || !name_ok(p + 2, be16_get(p)))
            return -EPROTO;
        op->op = f->type == CHAN_T_SEND_NAME ? OP_SEND_NAME : OP_PUBLISH;
        op->name = (const char *)p + 2;
        op->name_len = be16_get(p);
        op->data = p + 2 + op->name_len;
        op->len = n - 2 - op->name_len;
        return 0;
    case CHAN_T_BROADCAST:
    case CHAN_T_LOG:
    case CHAN_T_STATUS:
        op->op = f->type == CHAN_T_BROADCAST ? OP_BROADCAST : f->type == CHAN_T_LOG ? OP_LOG : OP_STATUS;
        op->data = p;
        op->len = n;
        return 0;
    case CHAN_T_SUBSCRIBE:
        if (n < 4 || !name_ok(p + 4, n - 4))
            return -EPROTO;
        op->op = OP_SUBSCRIBE;
        op->history = be32_get(p);
        op->name = (const char *)p + 4;
        op->name_len = n - 4;
        return 0;
    case CHAN_T_UNSUBSCRIBE:
    case CHAN_T_CLAIM:
    case CHAN_T_RELEASE:
    case CHAN_T_MEMBERS:
        if (!name_ok(p, n))
            return -EPROTO;
        op->op = f->type == CHAN_T_UNSUBSCRIBE ? OP_UNSUBSCRIBE
                 : f->type == CHAN_T_CLAIM     ? OP_CLAIM
                 : f->type == CHAN_T_RELEASE   ? OP_RELEASE
                                               : OP_MEMBERS;
        op->name = (const char *)p;
        op->name_len = n;
        return 0;
    case CHAN_T_TOPICS: /* a prefix, possibly empty */
        if (n > 0 && !name_ok(p, n))
            return -EPROTO;
        op->op = OP_TOPICS;
        op->name = (const char *)p;
        op->name_len = n;
        return 0;
    case CHAN_T_WILL: /* n 0: clear it */
        if (n < 2 || n < 2 + (size_t)be16_get(p) || (be16_get(p) && !name_ok(p + 2, be16_get(p))))
            return -EPROTO;
        op->op = OP_WILL;
        op->name = (const char *)p + 2;
        op->name_len = be16_get(p);
        op->data = p + 2 + op->name_len;
        op->len = n - 2 - op->name_len;
        return 0;
    default:
        return -EPROTO;
    }
}

static int json_str(json_t *o, const char *key, const char **s, size_t *n)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v))
        return -1;
    *s = json_string_value(v);
    *n = json_string_length(v);
    return 0;
}

int bus_op_from_json(json_t *o, bus_op *op, const char **why)
{
    static const struct { const char *name; int op; } ops[] = {
        {"send", OP_SEND}, {"broadcast", OP_BROADCAST}, {"publish", OP_PUBLISH},
        {"subscribe", OP_SUBSCRIBE}, {"unsubscribe", OP_UNSUBSCRIBE}, {"claim", OP_CLAIM},
        {"release", OP_RELEASE}, {"log", OP_LOG}, {"status", OP_STATUS},
        {"will", OP_WILL}, {"members", OP_MEMBERS}, {"topics", OP_TOPICS},
    };
    const char *name;
    json_t *v;
    size_t n;
    memset(op, 0, sizeof *op);
    if (json_str(o, "op", &name, &n) < 0) {
        *why = "a message needs \"op\": a string";
        return -1;
    }
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        if (n == strlen(ops[i].name) && strcmp(name, ops[i].name) == 0) /* no "send\u0000x" */
            op->op = ops[i].op;
    }
    if (!op->op) {
        *why = "unknown op";
        return -1;
    }
    if (op->op == OP_LOG || op->op == OP_STATUS) {
        if (json_str(o, "text", (const char **)&op->data, &op->len) < 0) {
            *why = "log and status need \"text\": a string";
            return -1;
        }
        return 0;
    }
    if (op->op == OP_SEND || op->op == OP_BROADCAST || op->op == OP_PUBLISH) {
        if (json_str(o, "data", (const char **)&op->data, &op->len) < 0) {
            *why = "send, broadcast and publish need \"data\": a string";
            return -1;
        }
    }
    if (op->op == OP_SEND) {
        v = json_object_get(o, "to");
        if (json_is_integer(v) && json_integer_value(v) > 0 && json_integer_value(v) < INT32_MAX) {
            op->to = (pid_t)json_integer_value(v);
            return 0;
        }
        if (json_str(o, "name", &op->name, &op->name_len) == 0 && name_ok(op->name, op->name_len)) {
            op->op = OP_SEND_NAME;
            return 0;
        }
        *why = "send needs \"to\": a pid, or \"name\": a name (1 to 255 bytes, no spaces)";
        return -1;
    }
    if (op->op == OP_BROADCAST)
        return 0;
    if (op->op == OP_WILL || op->op == OP_TOPICS) {
        /* will: no topic clears it; topics: no prefix lists them all */
        const char *key = op->op == OP_WILL ? "topic" : "prefix";
        if (json_object_get(o, key) &&
            (json_str(o, key, &op->name, &op->name_len) < 0 ||
             (op->name_len && !name_ok(op->name, op->name_len)))) {
            *why = "\"topic\" and \"prefix\" are names: 1 to 255 bytes, no spaces";
            return -1;
        }
        if (op->op == OP_WILL && op->name_len &&
            json_str(o, "data", (const char **)&op->data, &op->len) < 0) {
            *why = "a will needs \"data\": a string";
            return -1;
        }
        return 0;
    }
    if (json_str(o, op->op == OP_CLAIM || op->op == OP_RELEASE ? "name" : "topic", &op->name,
                 &op->name_len) < 0 || !name_ok(op->name, op->name_len)) {
        *why = op->op == OP_CLAIM || op->op == OP_RELEASE
                   ? "claim and release need \"name\": 1 to 255 bytes, no spaces"
                   : "this op needs \"topic\": 1 to 255 bytes, no spaces";
        return -1;
    }
    if (op->op == OP_SUBSCRIBE) {
        v = json_object_get(o, "history");
        if (v && !(json_is_integer(v) && json_integer_value(v) >= 0)) {
            *why = "\"history\" must be a count";
            return -1;
        }
        op->history = v ? (unsigned)(json_integer_value(v) > 100000 ? 100000 : json_integer_value(v)) : 0;
    }
    return 0;
}

/* ---------------------------------------------------------------- text */

size_t bus_text_clean(char *out, size_t len, const unsigned char *in, size_t n)
{
    return sf_text_clean(out, len, in, n, "?");
}
