/* taskio.c - what comes out of a running task: its captured output, the
 * JSON lines a command writes on fd 3, the frames of a worker. */
#include "pool/pool_internal.h"
#include "channel/be.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

/* Reads per wakeup when not draining: one, so a chatty task cannot starve
 * the others. After the leader has exited, a drain reads what is left, but
 * at most this many times (a grandchild may hold the pipe and keep
 * writing: what it writes later is not the task's). */
#define DRAIN_READS 64

/* The seq of the slot's task, for log lines (0 between tasks). */
static unsigned long slot_seq(const pool_slot *s)
{
    return s->task ? s->task->seq : 0UL;
}

void pool_info(const pool_slot *s, sf_task_info *out)
{
    out->seq = s->task ? s->task->seq : 0;
    out->data = s->task ? s->task->data : NULL;
    out->slot = s->index;
    out->attempt = s->task ? s->task->attempts : 0;
    out->pid = (int)s->pid;
    out->elapsed_s = s->task ? pool_now() - s->started : 0;
    out->progress_done = s->pdone;
    out->progress_total = s->ptotal;
}

/* At output_max: what is read past it is not passed on, neither stream is
 * read again (a writer then gets EPIPE), and the attempt is stopped. An
 * attempt being stopped already (a timeout, a halt) keeps that as the
 * reason: its output is only cut. *cut says the streams are to close. */
static size_t output_room(sf_pool *p, pool_slot *s, size_t n, int *cut)
{
    unsigned long long held = s->outb + s->errb;

    *cut = 0;
    if (!p->o.output_max || held + n <= p->o.output_max)
        return n;
    *cut = 1;
    pool_stop_attempt(p, s, STOP_OUTPUT, pool_now());
    return held < p->o.output_max ? (size_t)(p->o.output_max - held) : 0;
}

void pool_read_output(sf_pool *p, pool_slot *s, int stream, int drain)
{
    int *fd = stream == 1 ? &s->out : &s->err;

    for (int i = 0; *fd >= 0 && i < (drain ? DRAIN_READS : 1); i++) {
        ssize_t n = read(*fd, p->readbuf, POOL_READ);
        size_t keep;
        int cut;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            pool_fd_del(p, fd);
            return;
        }
        keep = output_room(p, s, (size_t)n, &cut);
        if (stream == 1)
            s->outb += keep;
        else
            s->errb += keep;
        if (keep && p->o.on_output && s->task) {
            sf_task_info info;
            pool_info(s, &info);
            p->o.on_output(p, &info, stream, p->readbuf, keep, p->o.arg);
        }
        if (cut) {
            pool_fd_del(p, &s->out);
            pool_fd_del(p, &s->err);
            return;
        }
    }
}

static void task_log(sf_pool *p, pool_slot *s, const void *text, size_t n)
{
    char clean[SF_LOG_LINE_MAX];

    if (!sf_log_enabled(&p->log, SF_LOG_INFO))
        return;
    sf_text_clean(clean, sizeof clean, text, n, "?");
    sf_logev(&p->log, SF_LOG_INFO, "said", (int)s->pid, NULL,
             SF_FIELDS(SF_F_UINT("task", slot_seq(s)), SF_F_STR("text", clean)), "task %lu: %s",
             slot_seq(s), clean);
}

static void keep_result(sf_pool *p, pool_slot *s, const void *data, size_t n)
{
    unsigned char *copy;

    if (n > p->o.result_max) {
        sf_logev(&p->log, SF_LOG_WARN, "task_bad_output", (int)s->pid, NULL,
                 SF_FIELDS(SF_F_UINT("task", slot_seq(s))),
                 "task %lu: a result of %zu bytes is over %zu: dropped", slot_seq(s), n,
                 p->o.result_max);
        return;
    }
    copy = malloc(n ? n : 1);
    if (!copy) {
        sf_logev(&p->log, SF_LOG_ERROR, "task_bad_output", (int)s->pid, NULL,
                 SF_FIELDS(SF_F_UINT("task", slot_seq(s))), "task %lu: no memory for its result",
                 slot_seq(s));
        return;
    }
    memcpy(copy, data, n);
    free(s->result);
    s->result = copy;
    s->result_len = n;
}

static void set_progress(pool_slot *s, double done, double total)
{
    if (!isfinite(done) || !isfinite(total) || done < 0 || total < 0)
        return;
    if (total == 0 && done > 1)
        done = 1;
    s->pdone = done;
    s->ptotal = total;
}

/*
 * One fd-3 line of a command (docs/protocol.md, "Tasks"): any of
 *   {"progress": 0.4}   {"progress": {"done": 3, "total": 10}}
 *   {"log": "text"}     {"result": <any JSON value>}
 * in one object. Other keys are ignored, so tasks can carry more.
 */
static void command_line(sf_pool *p, pool_slot *s, json_t *obj)
{
    json_t *v;

    if ((v = json_object_get(obj, "progress")) != NULL) {
        if (json_is_number(v)) {
            set_progress(s, json_number_value(v), 0);
        } else if (json_is_object(v) && json_is_number(json_object_get(v, "done")) &&
                   json_is_number(json_object_get(v, "total"))) {
            set_progress(s, json_number_value(json_object_get(v, "done")),
                         json_number_value(json_object_get(v, "total")));
        } else {
            sf_logev(&p->log, SF_LOG_WARN, "task_bad_output", (int)s->pid, NULL,
                     SF_FIELDS(SF_F_UINT("task", slot_seq(s))),
                     "task %lu: fd 3: progress is a number or {\"done\": N, \"total\": M}",
                     slot_seq(s));
        }
    }
    if ((v = json_object_get(obj, "log")) != NULL) {
        if (json_is_string(v))
            task_log(p, s, json_string_value(v), json_string_length(v));
        else
            sf_logev(&p->log, SF_LOG_WARN, "task_bad_output", (int)s->pid, NULL,
                     SF_FIELDS(SF_F_UINT("task", slot_seq(s))), "task %lu: fd 3: log is a string",
                     slot_seq(s));
    }
    if ((v = json_object_get(obj, "result")) != NULL) {
        char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        if (text) {
            keep_result(p, s, text, strlen(text));
            free(text);
        }
    }
}

static void command_bytes(sf_pool *p, pool_slot *s, const char *buf, size_t len)
{
    while (len > 0) {
        size_t used = 0;
        json_t *obj = NULL;
        int rc;

        if (s->jskip) {
            const char *nl = memchr(buf, '\n', len);
            if (!nl)
                return;
            s->jskip = 0;
            len -= (size_t)(nl + 1 - buf);
            buf = nl + 1;
            continue;
        }
        rc = jsonl_decoder_feed(&s->jd, buf, len, &used, &obj);
        buf += used;
        len -= used;
        if (rc == 1) {
            command_line(p, s, obj);
            json_decref(obj);
        } else if (rc == -EPROTO) {
            sf_logev(&p->log, SF_LOG_WARN, "task_bad_output", (int)s->pid, NULL,
                     SF_FIELDS(SF_F_UINT("task", slot_seq(s))),
                     "task %lu: fd 3: a line that is not a JSON object, ignored", slot_seq(s));
        } else if (rc == -EMSGSIZE || rc == -ENOMEM) {
            sf_logev(&p->log, SF_LOG_WARN, "task_bad_output", (int)s->pid, NULL,
                     SF_FIELDS(SF_F_UINT("task", slot_seq(s))),
                     "task %lu: fd 3: a line over %zu bytes, ignored", slot_seq(s),
                     p->o.result_max);
            s->jd.have = 0;
            s->jskip = 1;
        } else {
            return; /* all consumed, line unfinished */
        }
    }
}

/* A frame from a worker. Returns 0, or -EPROTO for one that makes no sense. */
static int worker_frame(sf_pool *p, pool_slot *s, const chan_frame *f)
{
    switch (f->type) {
    case CHAN_T_TASK_DONE:
        if (f->len != 4 || !s->task || s->task_done)
            return -EPROTO;
        s->task_done = 1;
        s->task_rc = (int)be32_get(f->payload);
        return 0;
    case CHAN_T_TASK_PROGRESS: {
        uint64_t a, b;
        double done, total;
        if (f->len != 16)
            return -EPROTO;
        a = be64_get(f->payload);
        b = be64_get(f->payload + 8);
        memcpy(&done, &a, sizeof done);
        memcpy(&total, &b, sizeof total);
        set_progress(s, done, total);
        return 0;
    }
    case CHAN_T_TASK_RESULT:
        keep_result(p, s, f->payload, f->len);
        return 0;
    case CHAN_T_LOG:
        task_log(p, s, f->payload, f->len);
        return 0;
    default:
        return -EPROTO;
    }
}

static int worker_bytes(sf_pool *p, pool_slot *s, const char *buf, size_t len)
{
    while (len > 0) {
        size_t used = 0;
        chan_frame f;
        int rc = chan_decoder_feed(&s->fd_dec, buf, len, &used, &f);

        buf += used;
        len -= used;
        if (rc < 0)
            return rc;
        if (rc == 0)
            return 0;
        if (f.fd >= 0) {
            close(f.fd);
            rc = -EPROTO;
        } else {
            rc = worker_frame(p, s, &f);
        }
        free(f.payload);
        if (rc < 0)
            return rc;
    }
    return 0;
}

void pool_read_chan(sf_pool *p, pool_slot *s, int drain)
{
    for (int i = 0; s->chan >= 0 && i < (drain ? DRAIN_READS : 1); i++) {
        ssize_t n;
        int rc = 0;

        if (s->is_worker)
            n = chan_read(s->chan, &s->fd_dec, p->readbuf, POOL_READ);
        else if ((n = read(s->chan, p->readbuf, POOL_READ)) < 0)
            n = -errno;
        if (n == -EINTR)
            continue;
        if (n == -EAGAIN)
            return;
        if (n <= 0) {
            /* EOF or an error: the task closed fd 3, or it is gone. A
             * worker's channel closing is seen as its exit, on the pidfd;
             * an idle one takes no more tasks meanwhile. */
            pool_fd_del(p, &s->chan);
            if (s->state == SLOT_IDLE)
                pool_slot_to(p, s, SLOT_RETIRING);
            return;
        }
        if (s->is_worker)
            rc = worker_bytes(p, s, p->readbuf, (size_t)n);
        else
            command_bytes(p, s, p->readbuf, (size_t)n);
        if (rc < 0) {
            sf_logev(&p->log, SF_LOG_ERROR, "worker_broke", (int)s->pid, NULL,
                     SF_FIELDS(SF_F_UINT("slot", s->index), SF_F_STR("error", strerror(-rc))),
                     "slot %u: worker %ld broke the protocol (%s): killed", s->index,
                     (long)s->pid, strerror(-rc));
            pool_worker_broke(p, s, pool_now());
            return;
        }
    }
}

/* Something on a slot's channel: room to write the rest of a worker's task
 * frame, frames or fd-3 lines to read; a worker's task that returned ends
 * its attempt. */
void pool_on_chan(sf_pool *p, pool_slot *s, uint32_t events, double now)
{
    if (s->is_worker && (events & EPOLLOUT) && s->chan >= 0)
        pool_worker_flush(p, s, now);
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
        pool_read_chan(p, s, 0);
    if (s->state == SLOT_RUNNING && s->task_done)
        pool_task_returned(p, s, now);
}
