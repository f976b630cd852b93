/* worker.c - a worker's life, in the forked child: run the first task
 * (already in memory), then take tasks from the channel (fd 3) until the
 * pool closes it or says a task is the last. */
#include "pool/pool_internal.h"
#include "channel/be.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WORKER_CHAN 3

struct sf_task {
    unsigned long seq;
    unsigned slot, attempt;
    int chan;
    size_t result_max;
};

unsigned long sf_task_seq(const sf_task *t) { return t->seq; }
unsigned sf_task_slot(const sf_task *t) { return t->slot; }
unsigned sf_task_attempt(const sf_task *t) { return t->attempt; }

int sf_task_progress(sf_task *t, double done, double total)
{
    unsigned char b[16];
    uint64_t a, c;

    if (!t || !(done >= 0) || !(total >= 0))
        return -EINVAL;
    memcpy(&a, &done, sizeof a);
    memcpy(&c, &total, sizeof c);
    be64_put(b, a);
    be64_put(b + 8, c);
    return chan_send(t->chan, CHAN_T_TASK_PROGRESS, b, sizeof b, -1);
}

int sf_task_result(sf_task *t, const void *data, size_t len)
{
    if (!t || (len && !data))
        return -EINVAL;
    if (len > t->result_max)
        return -EMSGSIZE;
    return chan_send(t->chan, CHAN_T_TASK_RESULT, data, (uint32_t)len, -1);
}

int sf_task_log(sf_task *t, const char *text)
{
    size_t n;

    if (!t || !text)
        return -EINVAL;
    n = strlen(text);
    if (n > t->result_max)
        n = t->result_max;
    return chan_send(t->chan, CHAN_T_LOG, text, (uint32_t)n, -1);
}

/* Runs one task and says it returned. Output is flushed first, so that
 * what the task printed is written before the pool hears it is done. */
static int run_one(sf_pool *p, sf_task *t, const void *arg, size_t len)
{
    unsigned char b[4];
    int rc = p->o.task(t, arg, len, p->o.task_arg);

    fflush(NULL);
    be32_put(b, (uint32_t)rc);
    return chan_send(t->chan, CHAN_T_TASK_DONE, b, sizeof b, -1);
}

void pool_worker_main(sf_pool *p, pool_task *first, unsigned slot, int last)
{
    sf_task t = {first->seq, slot, first->attempts, WORKER_CHAN, p->o.result_max};
    chan_reader rd;

    /* The pool's memory is a copy here: only read it, never free it. */
    if (run_one(p, &t, first->arg, first->len) < 0)
        _exit(111);
    if (last)
        _exit(0);
    chan_reader_init(&rd, (uint32_t)p->o.result_max + 17);
    for (;;) {
        chan_frame f;
        int rc = chan_recv(WORKER_CHAN, &rd, &f);

        if (rc == 0)
            _exit(0); /* the pool closed the channel: retired */
        if (rc < 0)
            _exit(111);
        if (f.type != CHAN_T_TASK || f.len < 17 || f.fd >= 0)
            _exit(111);
        t.seq = (unsigned long)be64_get(f.payload);
        t.slot = be32_get(f.payload + 8);
        t.attempt = be32_get(f.payload + 12);
        last = f.payload[16];
        rc = run_one(p, &t, f.payload + 17, f.len - 17);
        free(f.payload);
        if (rc < 0)
            _exit(111);
        if (last)
            _exit(0);
    }
}
