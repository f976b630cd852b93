/*
 * spawnlink.c - the supervisor's side of the spawner (process/spawner.h):
 * starting it, asking it for children and signals without ever blocking,
 * taking its answers, and what happens when it dies.
 *
 * Requests wait in `out` until the socket takes them; fork requests then
 * wait in `wait` for their answer, which comes in request order. If the
 * spawner dies, the fork requests it had taken are failed with -ECHILD
 * (it may have forked some of them: those children get SIGTERM as it dies,
 * and a connection must never be served twice), the ones it had not taken
 * go to the next spawner, and its children, now ours (we are their
 * subreaper), are signalled and reaped directly.
 */
#include "supervisor/supervisor.h"
#include "process/process.h"
#include "os/os.h"

#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

#define ANSWERS_PER_WAKEUP 512 /* whole messages of up to SPAWN_MSGS_MAX */

struct sup_req {
    sup_req *next;
    void *data;
    int fds[SPAWN_FDS_MAX];
    int nfds;
    spawn_req req;
};

static void list_push(sup_req **head, sup_req **tail, sup_req *r)
{
    r->next = NULL;
    if (*tail)
        (*tail)->next = r;
    else
        *head = r;
    *tail = r;
}

static sup_req *list_pop(sup_req **head, sup_req **tail)
{
    sup_req *r = *head;
    if (r) {
        *head = r->next;
        if (!*head)
            *tail = NULL;
    }
    return r;
}

/* ------------------------------------------------------------ sending */

static void flush_out(sup *s)
{
    while (s->out_head && s->spawner_fd >= 0) {
        sup_req *r = s->out_head;
        int rc = spawner_send(s->spawner_fd, &r->req, r->fds, r->nfds);

        if (rc == -EAGAIN) {
            if (!ev_is_active(&s->spawner_out))
                ev_io_start(s->loop, &s->spawner_out);
            return;
        }
        if (rc < 0)
            return; /* the spawner is gone: its EOF is on the way in */
        (void)list_pop(&s->out_head, &s->out_tail);
        if (r->req.kind == SPAWN_REQ_FORK)
            list_push(&s->wait_head, &s->wait_tail, r);
        else
            free(r);
    }
    if (ev_is_active(&s->spawner_out))
        ev_io_stop(s->loop, &s->spawner_out);
}

static void spawner_out_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    flush_out(w->data);
}

static sup_req *req_new(uint32_t kind, size_t blob_len)
{
    /* Whole, SPAWN_BLOB_MAX included: only the blob's bytes are sent, and
     * requests wait here only while the spawner is behind. */
    sup_req *r = malloc(sizeof *r);

    if (!r)
        return NULL;
    memset(r, 0, offsetof(sup_req, req.blob)); /* the blob is written, never read past its length */
    r->req.kind = kind;
    r->req.blob_len = (uint32_t)blob_len;
    return r;
}

int sup_spawn(sup *s, const void *blob, size_t len, const int *fds, int nfds, void *data)
{
    sup_req *r;
    int rc;

    if (!s->cfg.spawn_child || len > SPAWN_BLOB_MAX || nfds < 0 || nfds > SPAWN_FDS_MAX)
        return -EINVAL;
    if ((rc = sup_reserve(s)) < 0)
        return rc;
    if (!(r = req_new(SPAWN_REQ_FORK, len)))
        return -ENOMEM;
    r->req.cookie = ++s->next_cookie;
    /* memcpy from NULL is undefined even for 0 bytes: a request may come
     * with no blob or no descriptors. */
    if (len)
        memcpy(r->req.blob, blob, len);
    if (nfds)
        memcpy(r->fds, fds, sizeof(int) * (size_t)nfds);
    r->nfds = nfds;
    r->data = data;
    s->spawning++;
    list_push(&s->out_head, &s->out_tail, r);
    flush_out(s);
    return 0;
}

void sup_signal(sup *s, pid_t pid, int sig)
{
    sup_child *c = sup_child_find(s, pid);
    sup_req *r;

    if (!c)
        return;
    if (!c->via_spawner) {
        (void)proc_signal_group(pid, sig);
        return;
    }
    /* Bounded: a child has at most three signals coming (TERM, CONT, KILL),
     * and the list goes when the spawner does. Out of memory, sending it
     * ourselves risks only a pid the spawner reaped a moment ago. */
    if (!(r = req_new(SPAWN_REQ_SIGNAL, 0))) {
        (void)proc_signal_group(pid, sig);
        return;
    }
    r->req.pid = pid;
    r->req.sig = sig;
    list_push(&s->out_head, &s->out_tail, r);
    flush_out(s);
}

/* --------------------------------------------------------- answers */

static void spawner_lost(sup *s);

static void answer(sup *s, const spawn_msg *m)
{
    sup_req *r;

    if (m->kind == SPAWN_MSG_EXITED) {
        sup_child_exited(s, m->pid, m->value);
        sup_check_done(s);
        return;
    }
    r = list_pop(&s->wait_head, &s->wait_tail);
    if (!r || r->req.cookie != m->cookie) {
        sf_logn(s->cfg.log, SF_LOG_ERROR, "spawner_failed", "spawner answered out of turn: restarting it");
        if (r)
            list_push(&s->wait_head, &s->wait_tail, r); /* failed with the rest */
        kill(s->spawner_pid, SIGKILL);
        spawner_lost(s);
        return;
    }
    s->spawning--;
    if (m->kind == SPAWN_MSG_STARTED) {
        proc_backoff_reset(&s->spawner_backoff);
        (void)sup_add_child(s, m->pid, r->data, 1); /* reserved in sup_spawn */
        if (s->cfg.on_started)
            s->cfg.on_started(s, m->pid, r->data, s->cfg.arg);
        /* A program that could not be exec'd: its child exits 126 or 127
         * and is reported as any other; here is why. */
        if (m->value)
            sf_logev(s->cfg.log, SF_LOG_WARN, "exec_failed", (int)m->pid, NULL,
                     SF_FIELDS(SF_F_STR("error", strerror(m->value))),
                     "pid %d: cannot run the program: %s", (int)m->pid, strerror(m->value));
    } else if (s->cfg.on_spawn_failed) {
        s->cfg.on_spawn_failed(s, -m->value, r->data, s->cfg.arg);
    }
    free(r);
    sup_check_done(s);
}

static void spawner_in_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    sup *s = w->data;
    spawn_msg m[SPAWN_MSGS_MAX];
    (void)loop;
    (void)revents;

    /* Bounded per wakeup, so that a burst of exits cannot starve accepting. */
    for (int i = 0; i < ANSWERS_PER_WAKEUP / SPAWN_MSGS_MAX && s->spawner_fd >= 0; i++) {
        int n = spawner_recv(s->spawner_fd, m, SPAWN_MSGS_MAX);
        if (n == -EAGAIN)
            return;
        if (n <= 0) {
            spawner_lost(s);
            return;
        }
        for (int k = 0; k < n && s->spawner_fd >= 0; k++)
            answer(s, &m[k]);
    }
}

/* ---------------------------------------------------- start and death */

static void spawner_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);

/* A restart after the backoff; the next one waits twice as long. */
static void schedule_start(sup *s)
{
    ev_timer_stop(s->loop, &s->spawner_timer);
    ev_timer_set(&s->spawner_timer, proc_backoff_next(&s->spawner_backoff), 0.);
    ev_timer_start(s->loop, &s->spawner_timer);
}

static int start_spawner(sup *s)
{
    spawner_opts o;
    int fd = -1;
    pid_t pid;

    memset(&o, 0, sizeof o);
    o.child = s->cfg.spawn_child;
    o.plan = s->cfg.spawn_plan;
    o.fdlimit = s->cfg.child_fdlimit ? &s->child_fdlimit : NULL;
    o.shared_fd = s->cfg.spawn_shared_fd > 0 ? s->cfg.spawn_shared_fd : -1;
    o.max_children = s->cfg.max_children;
    o.kill_grace = s->cfg.kill_grace;
    pid = spawner_start(&o, &fd);
    if (pid < 0) {
        sf_logev(s->cfg.log, SF_LOG_WARN, "fork_failed", 0, NULL,
                 SF_FIELDS(SF_F_STR("error", strerror((int)-pid)),
                           SF_F_DBL("retry_s", proc_backoff_delay(&s->spawner_backoff))),
                 "cannot fork: %s; retrying in %g s", strerror((int)-pid),
                 proc_backoff_delay(&s->spawner_backoff));
        schedule_start(s);
        return (int)pid;
    }
    s->spawner_pid = pid;
    s->spawner_fd = fd;
    ev_io_set(&s->spawner_in, fd, EV_READ);
    ev_io_set(&s->spawner_out, fd, EV_WRITE);
    ev_io_start(s->loop, &s->spawner_in);
    sf_logev(s->cfg.log, SF_LOG_DEBUG, "spawner_started", (int)pid, NULL, NULL, 0,
             "spawner started: pid %d", (int)pid);
    flush_out(s);
    return 0;
}

static void spawner_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    sup *s = w->data;
    (void)loop;
    (void)revents;
    if (s->spawner_fd < 0 && !s->done)
        (void)start_spawner(s);
}

static unsigned count_list(const sup_req *r)
{
    unsigned n = 0;
    for (; r; r = r->next)
        n++;
    return n;
}

static void spawner_lost(sup *s)
{
    sup_req *r, *keep_head = NULL, *keep_tail = NULL;

    if (s->spawner_fd < 0)
        return;
    ev_io_stop(s->loop, &s->spawner_in);
    ev_io_stop(s->loop, &s->spawner_out);
    close(s->spawner_fd);
    s->spawner_fd = -1;
    if (!s->done)
        sf_logev(s->cfg.log, SF_LOG_ERROR, "spawner_lost", 0, NULL,
                 SF_FIELDS(SF_F_UINT("dropped", count_list(s->wait_head))),
                 "the spawner is gone: %u connections it was starting are dropped; "
                 "its children are ours now; restarting it", (unsigned)count_list(s->wait_head));
    /* From now on we signal its children ourselves. They are reparented
     * to us (the subreaper) as it exits, a moment after its socket closed;
     * until then nobody can reap them, so their pids cannot change hands. */
    for (unsigned i = 0; i < s->touched; i++)
        s->children[i].via_spawner = 0;
    while ((r = list_pop(&s->wait_head, &s->wait_tail))) {
        s->spawning--;
        if (s->cfg.on_spawn_failed)
            s->cfg.on_spawn_failed(s, -ECHILD, r->data, s->cfg.arg);
        free(r);
    }
    while ((r = list_pop(&s->out_head, &s->out_tail))) {
        if (r->req.kind == SPAWN_REQ_SIGNAL) {
            /* Only to a child still in the table: the loop may have reaped
             * some of the spawner's children (ours now) before this ran,
             * and a reaped pid may already be someone else's. */
            if (sup_child_find(s, r->req.pid))
                (void)proc_signal_group(r->req.pid, r->req.sig);
            free(r);
        } else {
            list_push(&keep_head, &keep_tail, r);
        }
    }
    s->out_head = keep_head;
    s->out_tail = keep_tail;
    s->spawner_restarts++;
    if (!s->done) {
        schedule_start(s);
    }
    sup_check_done(s);
}

int sup_spawner_init(sup *s)
{
    s->spawner_fd = -1;
    ev_io_init(&s->spawner_in, spawner_in_cb, 0, EV_READ);
    ev_io_init(&s->spawner_out, spawner_out_cb, 0, EV_WRITE);
    ev_timer_init(&s->spawner_timer, spawner_timer_cb, 0., 0.);
    s->spawner_in.data = s->spawner_out.data = s->spawner_timer.data = s;
    if (!s->cfg.spawn_child)
        return 0;
    if (s->cfg.child_fdlimit)
        s->child_fdlimit = *s->cfg.child_fdlimit;
    /* Orphans of a dead spawner come to us, to be reaped with a status. */
    (void)os_subreaper();
    (void)start_spawner(s); /* a failure is retried from the timer */
    return 0;
}

/* Shutdown: requests not yet sent will not be. */
void sup_spawner_cancel(sup *s)
{
    sup_req *r, *keep_head = NULL, *keep_tail = NULL;

    while ((r = list_pop(&s->out_head, &s->out_tail))) {
        if (r->req.kind == SPAWN_REQ_FORK) {
            s->spawning--;
            if (s->cfg.on_spawn_failed)
                s->cfg.on_spawn_failed(s, -ECANCELED, r->data, s->cfg.arg);
            free(r);
        } else {
            list_push(&keep_head, &keep_tail, r);
        }
    }
    s->out_head = keep_head;
    s->out_tail = keep_tail;
}

void sup_spawner_fini(sup *s)
{
    sup_req *r;

    ev_timer_stop(s->loop, &s->spawner_timer);
    ev_io_stop(s->loop, &s->spawner_in);
    ev_io_stop(s->loop, &s->spawner_out);
    if (s->spawner_fd >= 0) {
        close(s->spawner_fd);
        s->spawner_fd = -1;
    }
    /* It exits when its socket closes; with children left (a run cut
     * short), it ends their groups first (SIGTERM, kill_grace, SIGKILL). */
    if (s->spawner_pid > 0) {
        while (waitpid(s->spawner_pid, NULL, 0) < 0 && errno == EINTR)
            ;
        s->spawner_pid = 0;
    }
    while ((r = list_pop(&s->out_head, &s->out_tail)))
        free(r);
    while ((r = list_pop(&s->wait_head, &s->wait_tail)))
        free(r);
}
