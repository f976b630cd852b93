/* supervisor.c - see supervisor.h. */
#include "supervisor/supervisor.h"
#include "process/process.h"
#include "process/stop.h"
#include "os/os.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

sup_child *sup_child_find(sup *s, pid_t pid)
{
    hmap_key k = hmap_key_int(pid);
    uint32_t *slot = hmap_get(&s->by_pid, &k);
    return slot ? &s->children[*slot] : NULL;
}

/* Only the spawner signals the children it will reap (sup_signal). */
static int send_via_spawner(pid_t pid, int sig, void *arg)
{
    sup_signal(arg, pid, sig);
    return 0;
}

static proc_stop stop_policy(sup *s)
{
    proc_stop st = {.grace = s->cfg.kill_grace, .send = send_via_spawner, .arg = s};
    return st;
}

static void kill_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    sup_child *c = (sup_child *)((char *)w - offsetof(sup_child, kill_timer));
    proc_stop st = stop_policy(c->owner);
    (void)loop;
    (void)revents;
    sf_logev(c->owner->cfg.log, SF_LOG_WARN, "killed", (int)c->pid, NULL,
             SF_FIELDS(SF_F_STR("signal", "SIGKILL"), SF_F_STR("after", "SIGTERM")),
             "pid %d did not exit after SIGTERM: sending SIGKILL", (int)c->pid);
    (void)proc_stop_kill(&st, c->pid);
}

void sup_terminate(sup *s, pid_t pid)
{
    sup_child *c = sup_child_find(s, pid);
    proc_stop st = stop_policy(s);
    double kill_in;

    if (!c || c->terminating)
        return;
    c->terminating = 1;
    (void)proc_stop_begin(&st, pid, &kill_in);
    if (kill_in >= 0) {
        ev_timer_set(&c->kill_timer, kill_in, 0.);
        ev_timer_start(s->loop, &c->kill_timer);
    }
}

int sup_is_terminating(sup *s, pid_t pid)
{
    sup_child *c = sup_child_find(s, pid);
    return c && c->terminating;
}

static void terminate_all(sup *s)
{
    s->shutting_down = 2;
    ev_timer_stop(s->loop, &s->grace_timer);
    for (unsigned i = 0; i < s->touched; i++) {
        if (s->children[i].pid > 0)
            sup_terminate(s, s->children[i].pid);
    }
}

void sup_check_done(sup *s)
{
    /* A fork request still unanswered may yet become a child. */
    if (s->shutting_down && s->count == 0 && s->spawning == 0 && !s->done) {
        s->done = 1;
        ev_timer_stop(s->loop, &s->grace_timer);
        ev_break(s->loop, EVBREAK_ALL);
    }
}

/* "1 child", "2 children". */
static const char *children_word(unsigned n)
{
    return n == 1 ? "child" : "children";
}

static void grace_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    sup *s = w->data;
    (void)loop;
    (void)revents;
    sf_logev(s->cfg.log, SF_LOG_NOTICE, "grace_over", 0, NULL,
             SF_FIELDS(SF_F_UINT("children", s->count)), "grace period over: terminating %u %s",
             s->count, children_word(s->count));
    terminate_all(s);
}

void sup_shutdown(sup *s)
{
    if (s->shutting_down == 1) {
        /* Asked twice: the operator does not want to wait. */
        sf_logev(s->cfg.log, SF_LOG_NOTICE, "stopping_now", 0, NULL,
                 SF_FIELDS(SF_F_UINT("children", s->count)), "asked again: terminating %u %s now",
                 s->count, children_word(s->count));
        terminate_all(s);
        return;
    }
    if (s->shutting_down)
        return;
    s->shutting_down = 1;
    if (s->cfg.on_shutdown)
        s->cfg.on_shutdown(s, s->cfg.arg);
    sup_spawner_cancel(s);
    sf_logev(s->cfg.log, SF_LOG_NOTICE, "stopping", 0, NULL,
             SF_FIELDS(SF_F_UINT("children", s->count), SF_F_DBL("grace_s", s->cfg.grace)),
             "shutting down: %u %s, up to %g s to finish", s->count, children_word(s->count),
             s->cfg.grace);
    /* A fork request the spawner has taken may still become a child: it
     * gets the grace period too, so the timer runs for it as well. */
    if (s->count > 0 || s->spawning > 0) {
        if (s->cfg.grace > 0) {
            ev_timer_set(&s->grace_timer, s->cfg.grace, 0.);
            ev_timer_start(s->loop, &s->grace_timer);
        } else {
            terminate_all(s);
        }
    }
    sup_check_done(s);
}

void sup_shutdown_now(sup *s)
{
    double grace = s->cfg.grace;

    s->cfg.grace = 0;
    sup_shutdown(s); /* terminates at once: no grace, or asked again */
    s->cfg.grace = grace;
}

static void sigterm_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    sup *s = w->data;
    (void)loop;
    (void)revents;
    /* SIGHUP is a reload when the owner has one (the server's: its rules
     * file); else (a closed terminal, or an operator's kill -HUP) it stops
     * the supervisor as SIGTERM does rather than killing it as by default,
     * which would leave its socket files behind. Said so, since it is the
     * one that may have come unasked. */
    if (w->signum == SIGHUP && s->cfg.on_reload) {
        if (!s->shutting_down)
            s->cfg.on_reload(s, s->cfg.arg);
        return;
    }
    if (w->signum == SIGHUP && !s->shutting_down)
        sf_logev(s->cfg.log, SF_LOG_NOTICE, "signal", 0, NULL,
                 SF_FIELDS(SF_F_STR("signal", "SIGHUP")), "SIGHUP: stopping as for SIGTERM");
    sup_shutdown(s);
}

void sup_child_exited(sup *s, pid_t pid, int wstatus)
{
    sup_child *c = sup_child_find(s, pid);
    hmap_key k = hmap_key_int(pid);
    void *data;

    if (!c) {
        /* Not ours: a child the embedding program forked itself, or the
         * server's next generation. */
        if (s->cfg.on_other_exit)
            s->cfg.on_other_exit(s, pid, wstatus, s->cfg.arg);
        return;
    }
    ev_timer_stop(s->loop, &c->kill_timer);
    data = c->data;
    (void)hmap_del(&s->by_pid, &k);
    c->pid = 0;
    c->data = NULL;
    c->next_free = s->free_head;
    s->free_head = (unsigned)(c - s->children);
    s->count--;
    s->cfg.on_exit(s, pid, wstatus, data, s->cfg.arg);
}

static void sigchld_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    sup *s = w->data;
    int wstatus;
    pid_t pid;
    (void)loop;
    (void)revents;

    /* Signals coalesce: one SIGCHLD may stand for many exits, so reap until
     * nothing is left. Bounded by the number of children that exited. */
    while ((pid = waitpid(-1, &wstatus, WNOHANG)) > 0) {
        if (pid == s->spawner_pid) {
            char text[64];
            sf_status st = sf_status_decode(wstatus);
            sf_status_format(&st, text, sizeof text);
            sf_logev(s->cfg.log, s->done ? SF_LOG_DEBUG : SF_LOG_ERROR, "spawner_exited",
                     (int)pid, NULL, SF_FIELDS(SF_F_STATUS("status", st)), "spawner (pid %d) %s",
                     (int)pid, text);
            s->spawner_pid = 0;
            continue;
        }
        sup_child_exited(s, pid, wstatus);
    }
    sup_check_done(s);
}

int sup_init(sup *s, struct ev_loop *loop, const sup_config *cfg)
{
    memset(s, 0, sizeof *s);
    s->loop = loop;
    s->cfg = *cfg;
    s->children = os_nofork_calloc(cfg->max_children, sizeof *s->children);
    if (!s->children)
        return -ENOMEM;
    if (hmap_init(&s->by_pid, cfg->max_children) < 0) {
        os_nofork_free(s->children);
        s->children = NULL;
        return -ENOMEM;
    }
    /* Slots are set up when first used (see sup_add), so that a large
     * max_children costs no memory, and no fork() time, until it is used. */
    s->free_head = 0;

    ev_signal_init(&s->sigchld, sigchld_cb, SIGCHLD);
    ev_signal_init(&s->sigterm, sigterm_cb, SIGTERM);
    ev_signal_init(&s->sigint, sigterm_cb, SIGINT);
    ev_signal_init(&s->sighup, sigterm_cb, SIGHUP);
    s->sigchld.data = s->sigterm.data = s->sigint.data = s->sighup.data = s;
    ev_signal_start(loop, &s->sigchld);
    ev_signal_start(loop, &s->sigterm);
    ev_signal_start(loop, &s->sigint);
    ev_signal_start(loop, &s->sighup);
    ev_timer_init(&s->grace_timer, grace_timer_cb, 0., 0.);
    s->grace_timer.data = s;
    return sup_spawner_init(s);
}

void sup_fini(sup *s)
{
    if (!s->children)
        return;
    ev_signal_stop(s->loop, &s->sigchld);
    ev_signal_stop(s->loop, &s->sigterm);
    ev_signal_stop(s->loop, &s->sigint);
    ev_signal_stop(s->loop, &s->sighup);
    ev_timer_stop(s->loop, &s->grace_timer);
    for (unsigned i = 0; i < s->touched; i++)
        ev_timer_stop(s->loop, &s->children[i].kill_timer);
    sup_spawner_fini(s);
    hmap_free(&s->by_pid);
    os_nofork_free(s->children);
    s->children = NULL;
}

int sup_reserve(sup *s)
{
    if (s->count + s->spawning >= s->cfg.max_children)
        return -ENOSPC;
    return hmap_reserve(&s->by_pid, s->count + s->spawning + 1);
}

int sup_add(sup *s, pid_t pid, void *data)
{
    return sup_add_child(s, pid, data, 0);
}

int sup_add_child(sup *s, pid_t pid, void *data, int via_spawner)
{
    sup_child *c;
    hmap_key k = hmap_key_int(pid);
    int rc;

    if (s->free_head >= s->cfg.max_children)
        return -ENOSPC;
    c = &s->children[s->free_head];
    if (s->free_head == s->touched) {
        c->next_free = ++s->touched;
        c->owner = s;
        ev_timer_init(&c->kill_timer, kill_timer_cb, 0., 0.);
    }
    rc = hmap_put(&s->by_pid, &k, s->free_head);
    if (rc < 0)
        return rc;
    s->free_head = c->next_free;
    c->pid = pid;
    c->terminating = 0;
    c->via_spawner = via_spawner;
    c->data = data;
    s->count++;
    /* Shutdown already past its grace: a late child is ended at once. */
    if (s->shutting_down == 2)
        sup_terminate(s, pid);
    return 0;
}

void sup_run(sup *s)
{
    ev_run(s->loop, 0);
}

void *sup_child_data(sup *s, pid_t pid)
{
    sup_child *c = sup_child_find(s, pid);
    return c ? c->data : NULL;
}

void sup_get_stats(const sup *s, sup_stats *out)
{
    memset(out, 0, sizeof *out);
    out->children = s->count;
    out->spawning = s->spawning;
    out->max_children = s->cfg.max_children;
    out->spawner_pid = s->spawner_pid;
    out->spawner_restarts = s->spawner_restarts;
}
