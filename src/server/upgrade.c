/* upgrade.c - zero-downtime binary upgrade (upgrade.h tells the protocol). */
#include "server/upgrade.h"
#include "server/server_internal.h"
#include "server/metrics.h"
#include "supervisor/bus_link.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define UPGRADE_ENV "SOCKFORK_UPGRADE"
#define HELLO_WAIT_MS 5000   /* the HELLO is written before we are started */

extern char **environ;

/* ------------------------------------------------------------ the link */

/* One '\n'-ended line from a stream socket, consumed exactly (what follows
 * stays in the socket: a bus bridge may run on it next). Non-blocking:
 * 1 a line in buf (NUL instead of '\n'), 0 not yet, -errno, -EPIPE at EOF,
 * -EMSGSIZE when no line ends within len bytes. */
static int read_line(int fd, char *buf, size_t len)
{
    ssize_t n = recv(fd, buf, len - 1, MSG_PEEK | MSG_DONTWAIT);
    char *nl;

    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
    if (n == 0)
        return -EPIPE;
    if (!(nl = memchr(buf, '\n', (size_t)n)))
        return (size_t)n >= len - 1 ? -EMSGSIZE : 0;
    n = recv(fd, buf, (size_t)(nl - buf) + 1, MSG_DONTWAIT);
    if (n < 0)
        return -errno;
    buf[n - 1] = '\0';
    return 1;
}

static int write_line(int fd, const char *text)
{
    size_t len = strlen(text), off = 0;

    /* A line of a few hundred bytes into an empty socket: never short in
     * practice, but a short write must not cut the line. */
    while (off < len) {
        ssize_t n = send(fd, text + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        off += (size_t)n;
    }
    return 0;
}

static int json_line(int fd, json_t *o)
{
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    char *line;
    int rc;

    json_decref(o);
    if (!text)
        return -ENOMEM;
    line = malloc(strlen(text) + 2);
    if (!line) {
        free(text);
        return -ENOMEM;
    }
    sprintf(line, "%s\n", text);
    free(text);
    rc = write_line(fd, line);
    free(line);
    return rc;
}

/* ------------------------------------------------ the new generation */

static int hello_wait(int fd, char *buf, size_t len)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);

    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        long waited;
        int rc = read_line(fd, buf, len);
        if (rc != 0)
            return rc < 0 ? rc : 0;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        waited = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
        if (waited >= HELLO_WAIT_MS)
            return -ETIMEDOUT;
        if (poll(&p, 1, (int)(HELLO_WAIT_MS - waited)) < 0 && errno != EINTR)
            return -errno;
    }
}

/* {"v":1,"pid":N,"generation":G,"control":PATH,"listeners":[{"fd":5,
 * "addr":"127.0.0.1:4444","dev":D,"ino":I}]}: what the previous
 * generation gave us. The descriptors are ours from now on. */
static int hello_parse(sf_server *s, const char *line)
{
    upgrade *u = &s->up;
    json_error_t err;
    json_t *o = json_loads(line, 0, &err), *ls, *l;
    const char *control = NULL;
    json_int_t pid = 0, gen = 0;
    size_t i;
    int rc = -EPROTO;

    if (!o || json_unpack(o, "{s:I, s:I, s?s, s:o}", "pid", &pid, "generation", &gen, "control",
                          &control, "listeners", &ls) < 0 || !json_is_array(ls) ||
        json_array_size(ls) > sizeof u->inh / sizeof u->inh[0] || pid <= 0 || gen < 1)
        goto done;
    u->prev_pid = (pid_t)pid;
    u->generation = (unsigned)gen + 1;
    if (control)
        snprintf(u->prev_control, sizeof u->prev_control, "%s", control);
    json_array_foreach(ls, i, l) {
        upgrade_inherited *in = &u->inh[u->ninh];
        const char *addr;
        json_int_t fd, dev = 0, ino = 0;
        int metrics = 0;
        if (json_unpack(l, "{s:I, s:s, s?I, s?I, s?b}", "fd", &fd, "addr", &addr, "dev", &dev, "ino",
                        &ino, "metrics", &metrics) < 0 || fd < 3 || fd > INT_MAX ||
            sf_addr_parse(&in->addr, addr) < 0)
            goto done;
        in->metrics = metrics;
        in->fd = (int)fd;
        in->dev = (dev_t)dev;
        in->ino = (ino_t)ino;
        in->owns_path = ino != 0;
        if (fcntl(in->fd, F_SETFD, FD_CLOEXEC) < 0) {
            rc = -errno;
            goto done;
        }
        u->ninh++;
    }
    rc = 0;
done:
    json_decref(o);
    return rc;
}

/*
 * The file an upgrade starts: argv[0] as it was run (found in PATH now,
 * made absolute), so that a deploy which moves a symlink (current -> v2)
 * or installs a new file there is what runs next; /proc/self/exe has the
 * links resolved, so it is only the fallback. 0 or -errno.
 */
static int binary_path(const sf_server *s, char *buf, size_t len)
{
    char found[PATH_MAX], cwd[PATH_MAX];
    const char *arg0 = s->opts.upgrade_argv ? s->opts.upgrade_argv[0] : NULL;
    ssize_t n;
    int w;

    if (arg0 && sf_program_find(arg0, found, sizeof found) == 0) {
        if (found[0] == '/')
            w = snprintf(buf, len, "%s", found);
        else if (getcwd(cwd, sizeof cwd))
            w = snprintf(buf, len, "%s/%s", cwd, found);
        else
            w = -1;
        if (w > 0 && (size_t)w < len)
            return 0;
    }
    n = readlink("/proc/self/exe", buf, len - 1);
    if (n <= 0)
        return -errno;
    buf[n] = '\0';
    return 0;
}

int upgrade_init(sf_server *s)
{
    upgrade *u = &s->up;
    const char *env = getenv(UPGRADE_ENV);
    char exe[PATH_MAX], *line = NULL;
    long fd;
    char *end;
    int rc;

    u->link = u->from = -1;
    u->generation = 1;
    /* In memory the spawner and children do not get (a pointer to it
     * would be a leak there); upgrade_begin copies it before its fork. */
    if (binary_path(s, exe, sizeof exe) == 0 && (u->exe = os_nofork_calloc(1, strlen(exe) + 1)))
        strcpy(u->exe, exe);
    if (!env)
        return 0;
    /* Ours only: a program we start must not think it is an upgrade. */
    errno = 0;
    fd = strtol(env, &end, 10);
    unsetenv(UPGRADE_ENV);
    if (errno || *end || fd < 3 || fd > INT_MAX || fcntl((int)fd, F_SETFD, FD_CLOEXEC) < 0)
        return -EBADF;
    u->from = (int)fd;
    u->upgraded = 1;
    if (!(line = malloc(UPGRADE_HELLO_MAX)))
        return -ENOMEM;
    rc = hello_wait(u->from, line, UPGRADE_HELLO_MAX);
    if (rc == 0)
        rc = hello_parse(s, line);
    free(line);
    return rc;
}

static int addr_same(const sf_addr *want, const sf_addr *have)
{
    int fam = want->u.sa.sa_family;

    if (fam != have->u.sa.sa_family)
        return 0;
    if (fam == AF_UNIX) /* an abstract name has no NUL: its length says */
        return want->len == have->len &&
               memcmp(want->u.un.sun_path, have->u.un.sun_path,
                      want->len - offsetof(struct sockaddr_un, sun_path)) == 0;
    if (fam == AF_INET)
        return want->u.in4.sin_addr.s_addr == have->u.in4.sin_addr.s_addr &&
               (!want->u.in4.sin_port || want->u.in4.sin_port == have->u.in4.sin_port);
    return memcmp(&want->u.in6.sin6_addr, &have->u.in6.sin6_addr, sizeof want->u.in6.sin6_addr) == 0 &&
           (!want->u.in6.sin6_port || want->u.in6.sin6_port == have->u.in6.sin6_port);
}

void upgrade_claim_path(sf_server *s, listener *l)
{
    upgrade *u = &s->up;

    if (l->path_ino && u->nclaim < sizeof u->claim / sizeof u->claim[0])
        u->claim[u->nclaim++] = l;
}

static int take(sf_server *s, const sf_addr *a, listener *l, int metrics)
{
    upgrade *u = &s->up;

    for (unsigned i = 0; i < u->ninh; i++) {
        upgrade_inherited *in = &u->inh[i];
        int fl;
        if (in->fd < 0 || in->metrics != metrics || !addr_same(a, &in->addr))
            continue;
        /* The file status flags are the socket's, shared with the previous
         * generation: its prefork workers block in accept(), and must not
         * find the socket made non-blocking under them (they would spin).
         * Ours (workers_init, or the accept loop of fork mode, which the
         * previous generation ran too) are set as they were. */
        if ((fl = fcntl(in->fd, F_GETFL)) < 0 || listener_adopt(l, in->fd) < 0)
            continue;
        (void)fcntl(in->fd, F_SETFL, fl);
        l->adopted = 0; /* bound, by a generation before us */
        /* A Unix socket file the previous generation made becomes ours
         * (removed when we close, as if we had bound it) once we are
         * ready: upgrade_say_ready. */
        if (in->owns_path) {
            l->path_dev = in->dev;
            l->path_ino = in->ino;
            if (!metrics) /* its listener is copied: metrics_open_on's caller claims it */
                upgrade_claim_path(s, l);
        }
        in->fd = -1;
        return 1;
    }
    return 0;
}

int upgrade_take_listener(sf_server *s, const sf_addr *a, listener *l)
{
    return take(s, a, l, 0);
}

int upgrade_take_metrics(sf_server *s, const sf_addr *a, listener *l)
{
    return take(s, a, l, 1);
}

int upgrade_takes_control(const sf_server *s)
{
    return s->up.upgraded;
}

/* The link to the other generation ended: it exited (the previous one,
 * drained; the next one, killed or crashed), or the link was cut (its
 * outbox full). Its names and members are gone from our bus already. */
static void bridge_down(bus_link *l, const char *why, void *arg)
{
    sf_server *s = arg;
    upgrade *u = &s->up;

    if (u->bridge_to_prev) {
        sf_logev(&s->log, SF_LOG_NOTICE, "previous_gone", (int)u->prev_pid, NULL,
                 SF_FIELDS(SF_F_STR("why", why)),
                 "upgrade: the previous generation (pid %d) has gone: %s", (int)u->prev_pid, why);
        u->prev_alive = 0;
        u->prev_control[0] = '\0';
    } else {
        sf_logev(&s->log, SF_LOG_WARN, "bridge", (int)u->new_pid, NULL,
                 SF_FIELDS(SF_F_STR("what", "ended"), SF_F_STR("why", why)),
                 "upgrade: the bus link to the next generation (pid %d) ended: %s",
                 (int)u->new_pid, why);
    }
    bus_link_close(l);
    u->bridge = NULL;
}

/*
 * Bridges our bus to the other generation's over fd (taken): chat rooms,
 * names and wills span both while the old one drains (docs/design.md, "Two
 * generations, one bus"). The new generation has the higher rank (its
 * claim gives way on a tie) and the old one shares its history. A bus has
 * one bridge: a generation upgraded again before the one before it has
 * drained leaves that one on its own (said in the log).
 */
static void bridge_open(sf_server *s, int fd, int to_prev)
{
    upgrade *u = &s->up;
    bus_link_opts o;
    int rc;

    if (s->bus_redis) {
        close(fd); /* both generations are bridged through Redis already (--bus) */
        return;
    }
    if (u->bridge) {
        sf_logev(&s->log, SF_LOG_WARN, "bridge", (int)u->prev_pid, NULL,
                 SF_FIELDS(SF_F_STR("what", "moved"), SF_F_UINT("generation", u->generation - 1)),
                 "upgrade: the bus is bridged to the next generation now, no longer to "
                 "generation %u (pid %d), which still drains: its clients and the others' see "
                 "each other leave", u->generation - 1, (int)u->prev_pid);
        bus_link_close(u->bridge);
        u->bridge = NULL;
        u->prev_alive = 0;
    }
    memset(&o, 0, sizeof o);
    o.rank = to_prev ? 1 : 0;
    o.share_history = !to_prev;
    o.on_down = bridge_down;
    o.arg = s;
    rc = bus_link_open(&s->bus, fd, &o, &u->bridge);
    if (rc < 0) {
        u->bridge = NULL;
        sf_logev(&s->log, SF_LOG_WARN, "bridge", 0, NULL,
                 SF_FIELDS(SF_F_STR("what", "failed"), SF_F_STR("error", strerror(-rc))),
                 "upgrade: cannot bridge the buses of the two generations: %s", strerror(-rc));
        return;
    }
    u->bridge_to_prev = to_prev;
}

void upgrade_start_watching(sf_server *s)
{
    upgrade *u = &s->up;
    char name[SF_ADDR_TEXT_MAX];

    for (unsigned i = 0; i < u->ninh; i++) {
        if (u->inh[i].fd < 0)
            continue;
        /* Not in our arguments any more (they are the same argv, so this
         * is a changed binary's default): its waiting clients are reset. */
        if (sf_addr_format(&u->inh[i].addr, name, sizeof name) < 0)
            snprintf(name, sizeof name, "?");
        sf_logev(&s->log, SF_LOG_WARN, "stray_listener", 0, NULL,
                 SF_FIELDS(SF_F_STR("addr", name)),
                 "upgrade: %s of the previous generation is not ours to serve: closed", name);
        close(u->inh[i].fd);
        u->inh[i].fd = -1;
    }
    ev_signal_start(s->loop, &u->usr2);
}

int upgrade_say_ready(sf_server *s)
{
    upgrade *u = &s->up;
    int rc;

    if (u->from < 0)
        return 0;
    rc = json_line(u->from, json_pack("{s:b, s:i, s:i}", "ready", 1, "pid", (int)getpid(),
                                      "generation", (int)u->generation));
    if (rc < 0) {
        /* It is gone (killed, or gave up on us): we serve on our own, and
         * systemd hears READY from us. */
        sf_logev(&s->log, SF_LOG_WARN, "previous_gone", (int)u->prev_pid, NULL,
                 SF_FIELDS(SF_F_STR("why", strerror(-rc))),
                 "upgrade: cannot tell the previous generation (pid %d) we are ready: %s",
                 (int)u->prev_pid, strerror(-rc));
        close(u->from);
        u->from = -1;
        return 0;
    }
    for (unsigned i = 0; i < u->nclaim; i++)
        u->claim[i]->owns_path = 1;
    u->nclaim = 0;
    sf_logev(&s->log, SF_LOG_NOTICE, "upgrade_ready", (int)getpid(), NULL,
             SF_FIELDS(SF_F_UINT("generation", u->generation), SF_F_INT("previous_pid", u->prev_pid)),
             "upgrade: generation %u ready, taking over from pid %d", u->generation,
             (int)u->prev_pid);
    u->prev_alive = 1;
    bridge_open(s, u->from, 1);
    u->from = -1;
    return 1;
}

/* ------------------------------------------------ the old generation */

static void set_why(upgrade *u, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_why(upgrade *u, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(u->why, sizeof u->why, fmt, ap);
    va_end(ap);
}

/* Our control socket answers at PATH.PID too from now on: the new
 * generation renames its own over PATH, and we keep a path of our own.
 * Returns 0 or -errno. */
static int control_step_aside(sf_server *s)
{
    upgrade *u = &s->up;
    char *path, aside[sizeof u->ctl_home];
    int n;

    if (!s->ctl.open)
        return 0;
    path = s->ctl.lis.addr.u.un.sun_path;
    n = snprintf(aside, sizeof aside, "%s.%d", path, (int)getpid());
    /* The new generation binds PATH.newPID beside it (control.c): that
     * must fit too, whatever its pid (at most 7 digits: pid_max). */
    if (n < 0 || strlen(path) + sizeof ".new" - 1 + 7 >= sizeof s->ctl.lis.addr.u.un.sun_path)
        return -ENAMETOOLONG;
    (void)unlink(aside); /* a stale one of a pid like ours: not a live server's */
    if (link(path, aside) < 0)
        return -errno;
    snprintf(u->ctl_home, sizeof u->ctl_home, "%s", path);
    strcpy(path, aside); /* listener_close removes this name (same inode) */
    u->ctl_moved = 1;
    return 0;
}

/* The upgrade failed: our path is ours again, whatever the other left. */
static void control_back_home(sf_server *s)
{
    upgrade *u = &s->up;
    char *path = s->ctl.lis.addr.u.un.sun_path;
    struct stat st;

    if (!u->ctl_moved)
        return;
    /* Still ours (rename between two links of one file does nothing), or
     * taken by the one that failed: either way ours again, at once. */
    if (lstat(u->ctl_home, &st) == 0 && st.st_dev == s->ctl.lis.path_dev &&
        st.st_ino == s->ctl.lis.path_ino) {
        (void)unlink(path);
        strcpy(path, u->ctl_home);
    } else if (rename(path, u->ctl_home) == 0) {
        strcpy(path, u->ctl_home);
    }
    u->ctl_moved = 0;
    u->ctl_home[0] = '\0';
}

/* The new generation is ready: the old name is its, or, when it chose
 * another (a default path has our pid in it), nobody's. */
static void control_leave_home(sf_server *s)
{
    upgrade *u = &s->up;
    struct stat st;

    if (!u->ctl_moved)
        return;
    if (lstat(u->ctl_home, &st) == 0 && st.st_dev == s->ctl.lis.path_dev &&
        st.st_ino == s->ctl.lis.path_ino)
        (void)unlink(u->ctl_home);
}

/* What the new generation is given: HELLO's text, and the descriptors in
 * the order they take in it (systemd's first, as LISTEN_FDS wants). */
typedef struct handover {
    int fds[LISTENERS_MAX + 2];  /* listeners, the metrics socket, then the link */
    int nfds;
    int nsystemd;
    char *hello;
    char **envp;
    size_t ninherited;           /* envp[0 .. ninherited) are environ's; the rest ours */
    char listen_pid[32];         /* "LISTEN_PID=" + the child's pid, written in it */
} handover;

/* A bound socket's entry in HELLO, and its place among the descriptors. */
static int hello_add(json_t *ls, handover *h, const listener *l, int metrics)
{
    char name[SF_ADDR_TEXT_MAX];

    if (sf_addr_format(&l->addr, name, sizeof name) < 0 ||
        json_array_append_new(ls, json_pack("{s:i, s:s, s:I, s:I, s:b}", "fd", 3 + h->nfds, "addr",
                                            name, "dev", (json_int_t)(l->owns_path ? l->path_dev : 0),
                                            "ino", (json_int_t)(l->owns_path ? l->path_ino : 0),
                                            "metrics", metrics)) < 0)
        return -ENOMEM;
    h->fds[h->nfds++] = l->fd;
    return 0;
}

static int build_hello(sf_server *s, handover *h)
{
    json_t *ls = json_array(), *o;
    char *text;

    if (!ls)
        return -ENOMEM;
    /* systemd's sockets go first, at 3..., passed on as it passed them. */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < s->nlisteners; i++) {
            listener *l = &s->listeners[i];
            if (l->fd < 0 || (pass == 0) != (l->adopted != 0))
                continue;
            if (pass == 0) {
                h->nsystemd++;
                h->fds[h->nfds++] = l->fd;
            } else if (hello_add(ls, h, l, 0) < 0) {
                json_decref(ls);
                return -ENOMEM;
            }
        }
    }
    /* The metrics endpoint's socket too: it is bound to its address. */
    if (s->metrics && hello_add(ls, h, metrics_listener(s->metrics), 1) < 0) {
        json_decref(ls);
        return -ENOMEM;
    }
    o = json_pack("{s:i, s:i, s:i, s:s?, s:o}", "v", 1, "pid", (int)getpid(), "generation",
                  (int)s->up.generation, "control", s->ctl.open ? s->ctl.lis.addr.u.un.sun_path : NULL,
                  "listeners", ls);
    text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text || !(h->hello = malloc(strlen(text) + 2))) {
        free(text);
        return -ENOMEM;
    }
    sprintf(h->hello, "%s\n", text);
    free(text);
    return 0;
}

static int drops_var(const char *e)
{
    static const char *const ours[] = {"LISTEN_PID=", "LISTEN_FDS=", "LISTEN_FDNAMES=",
                                       "NOTIFY_SOCKET=", "WATCHDOG_USEC=", "WATCHDOG_PID=",
                                       UPGRADE_ENV "="};
    for (size_t i = 0; i < sizeof ours / sizeof ours[0]; i++)
        if (strncmp(e, ours[i], strlen(ours[i])) == 0)
            return 1;
    return 0;
}

/* Our environment (LISTEN_* and NOTIFY_SOCKET were taken out of it at
 * start) with what the new generation needs put back. */
static int build_env(sf_server *s, handover *h, int link_fd)
{
    size_t n = 0, k = 0;
    char buf[160];

    while (environ[n])
        n++;
    if (!(h->envp = calloc(n + 8, sizeof *h->envp)))
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        if (!drops_var(environ[i]))
            h->envp[k++] = environ[i];
    h->ninherited = k;
    /* Allocated ones are freed by free_handover: it knows them by their
     * place after the inherited ones. */
    snprintf(buf, sizeof buf, UPGRADE_ENV "=%d", link_fd);
    if (!(h->envp[k++] = strdup(buf)))
        return -ENOMEM;
    if (h->nsystemd > 0) {
        snprintf(buf, sizeof buf, "LISTEN_FDS=%d", h->nsystemd);
        if (!(h->envp[k++] = strdup(buf)))
            return -ENOMEM;
        h->envp[k++] = h->listen_pid; /* filled in by the child */
    }
    if (s->notify.fd >= 0) {
        size_t plen = s->notify.addr_len - offsetof(struct sockaddr_un, sun_path);
        char *e = malloc(sizeof "NOTIFY_SOCKET=" + plen);
        if (!e)
            return -ENOMEM;
        memcpy(e, "NOTIFY_SOCKET=", sizeof "NOTIFY_SOCKET=" - 1);
        memcpy(e + sizeof "NOTIFY_SOCKET=" - 1, s->notify.addr.sun_path, plen);
        e[sizeof "NOTIFY_SOCKET=" - 1 + plen] = '\0';
        if (e[sizeof "NOTIFY_SOCKET=" - 1] == '\0')
            e[sizeof "NOTIFY_SOCKET=" - 1] = '@';
        h->envp[k++] = e;
        if (s->notify.watchdog_s > 0) {
            snprintf(buf, sizeof buf, "WATCHDOG_USEC=%llu",
                     (unsigned long long)(s->notify.watchdog_s * 1e6));
            if (!(h->envp[k++] = strdup(buf)))
                return -ENOMEM;
        }
    }
    h->envp[k] = NULL;
    return 0;
}

static void free_handover(handover *h)
{
    free(h->hello);
    if (h->envp) {
        for (size_t i = h->ninherited; h->envp[i]; i++)
            if (h->envp[i] != h->listen_pid)
                free(h->envp[i]);
        free(h->envp);
    }
}

/* Writes n in decimal at p; async-signal-safe. */
static void put_decimal(char *p, long n)
{
    char tmp[24];
    int len = 0;

    do
        tmp[len++] = (char)('0' + n % 10);
    while ((n /= 10) > 0);
    while (len > 0)
        *p++ = tmp[--len];
    *p = '\0';
}

/*
 * The child of fork(), before execve: only async-signal-safe calls, and
 * nothing of the server's memory (it lives in os_nofork memory, which the
 * child does not have): everything it needs is in h, on the stack or in
 * plain malloc'd memory.
 */
static void __attribute__((noreturn)) exec_new_generation(const char *exe, char *const *argv,
                                                          handover *h, const struct rlimit *fdlimit)
{
    sigset_t none;
    struct sigaction dfl;
    int high = 3 + h->nfds + 1, tmp[LISTENERS_MAX + 2];
    int errnum, report = h->fds[h->nfds - 1]; /* the link, wherever it is now */

    /* Our own process group: a failed start is killed whole (a wrapper
     * that forks included). */
    (void)setpgid(0, 0);
    /* Every descriptor to its place: first out of the way of the places
     * (a source may sit on another's target), then down into them. */
    for (int i = 0; i < h->nfds; i++)
        if ((tmp[i] = fcntl(h->fds[i], F_DUPFD_CLOEXEC, high)) < 0)
            goto fail;
    report = tmp[h->nfds - 1];
    for (int i = 0; i < h->nfds; i++)
        if (dup2(tmp[i], 3 + i) < 0)
            goto fail;
    report = 3 + h->nfds - 1;
    os_closefrom(3 + h->nfds);
    if (h->nsystemd > 0) {
        memcpy(h->listen_pid, "LISTEN_PID=", sizeof "LISTEN_PID=");
        put_decimal(h->listen_pid + sizeof "LISTEN_PID=" - 1, (long)getpid());
    }
    if (fdlimit)
        (void)setrlimit(RLIMIT_NOFILE, fdlimit);
    /* A fresh start: default SIGPIPE (the server ignores it itself), no
     * signal blocked. Handled signals go back to default at exec. */
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGPIPE, &dfl, NULL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(exe, argv, h->envp);
fail:
    /* Told on the link as a line the parent reads like a READY. */
    errnum = errno;
    {
        char line[48] = "{\"exec_error\":";
        size_t len = strlen(line);
        put_decimal(line + len, errnum);
        len = strlen(line);
        line[len++] = '}';
        line[len++] = '\n';
        (void)write(report, line, len);
    }
    _exit(127);
}

static json_t *status_answer(void *arg)
{
    const sf_server *s = arg;
    json_t *o = upgrade_status_json(s);

    /* A failure is an error answer: `ctl upgrade` exits 1 with the reason. */
    if (o && s->up.state == UPGRADE_FAILED) {
        json_decref(o);
        o = ctl_error("upgrade failed, the server serves on: %s", s->up.why);
    }
    return o;
}

/* A failed try's new process is gone: our control path back, the waiting
 * `ctl upgrade` answered, systemd told we serve as before. */
static void failed_and_gone(sf_server *s)
{
    upgrade *u = &s->up;

    u->restore_pending = 0;
    control_back_home(s);
    ctl_answer_waiting(&s->ctl, status_answer, s);
    if (s->notify.fd >= 0 && !s->sup.shutting_down) {
        char text[320];
        snprintf(text, sizeof text, "READY=1\nSTATUS=upgrade failed: %s", u->why);
        server_notify(s, text);
    }
}

static void finish(sf_server *s, int ok)
{
    upgrade *u = &s->up;

    ev_io_stop(s->loop, &u->link_io);
    ev_timer_stop(s->loop, &u->deadline);
    u->in_have = 0;
    if (ok) {
        /* The link is the bus bridge's next, and `ctl upgrade` is answered
         * once we drain (link_cb): a request after it is then refused. */
        u->state = UPGRADE_DONE;
        return;
    }
    if (u->link >= 0)
        close(u->link);
    u->link = -1;
    if (u->child > 0) {
        /* Its group (exec_new_generation made it one); its own spawner
         * takes its children down when it dies. */
        if (kill(-u->child, SIGKILL) < 0)
            kill(u->child, SIGKILL);
    }
    u->state = UPGRADE_FAILED;
    sf_logev(&s->log, SF_LOG_ERROR, "upgrade_failed", (int)u->child, NULL,
             SF_FIELDS(SF_F_STR("why", u->why)), "upgrade failed, serving on: %s", u->why);
    /* SIGKILL is not instant: until it is reaped, the dying one might
     * still rename its control socket over our path. Ours is put back,
     * and `ctl upgrade` answered, once it is gone (upgrade_reaped). */
    if (u->child > 0)
        u->restore_pending = 1;
    else
        failed_and_gone(s);
}

static void drain_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    sf_server *s = w->data;
    (void)loop;
    (void)revents;
    sf_logev(&s->log, SF_LOG_NOTICE, "drain_grace_over", 0, NULL,
             SF_FIELDS(SF_F_UINT("left", s->recs_used)),
             "upgrade: grace period over: ending the %u connections left", s->recs_used);
    sup_shutdown_now(&s->sup);
}

static void drained_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    sf_server *s = w->data;
    (void)loop;
    (void)revents;
    sf_logn(&s->log, SF_LOG_NOTICE, "drained",
            "upgrade: drained: the last connection of this generation ended");
    sup_shutdown(&s->sup);
}

void upgrade_check_drained(sf_server *s)
{
    upgrade *u = &s->up;

    if (u->draining && s->recs_used == 0 && !ev_is_active(&u->drained) && !s->sup.shutting_down)
        ev_timer_start(s->loop, &u->drained);
}

static void begin_drain(sf_server *s, pid_t new_pid)
{
    upgrade *u = &s->up;
    char text[96];

    u->draining = 1;
    server_stop_accepting(s);
    metrics_stop_accepting(s->metrics);
    control_leave_home(s);
    if (s->notify.fd >= 0) {
        ev_timer_stop(s->loop, &s->status_timer);
        ev_timer_stop(s->loop, &s->watchdog_timer);
        snprintf(text, sizeof text, "MAINPID=%d\nREADY=1\nSTATUS=upgraded to pid %d", (int)new_pid,
                 (int)new_pid);
        server_notify(s, text);
    }
    sf_logev(&s->log, SF_LOG_NOTICE, "upgrade_done", (int)new_pid, NULL,
             SF_FIELDS(SF_F_UINT("draining", s->recs_used), SF_F_DBL("grace_s", s->opts.grace_s),
                       SF_F_STR("control", s->ctl.open ? s->ctl.lis.addr.u.un.sun_path : "")),
             "upgrade: pid %d serves now; draining %u connections (up to %g s), control socket %s",
             (int)new_pid, s->recs_used, s->opts.grace_s,
             s->ctl.open ? s->ctl.lis.addr.u.un.sun_path : "none");
    ev_timer_set(&u->drain_timer, s->opts.grace_s, 0.);
    ev_timer_start(s->loop, &u->drain_timer);
    upgrade_check_drained(s);
}

static void link_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    sf_server *s = w->data;
    upgrade *u = &s->up;
    json_t *o;
    json_int_t pid = 0, exec_error = 0;
    int rc;
    (void)loop;
    (void)revents;

    rc = read_line(u->link, u->in, sizeof u->in);
    if (rc == 0)
        return;
    if (rc < 0) {
        /* Closed before READY: it is exiting (its own words are on our
         * stderr). Its status, which says why, comes with SIGCHLD: waited
         * for a moment, then it is killed. */
        set_why(u, "the new process (pid %d) closed its link before it was ready", (int)u->child);
        ev_io_stop(s->loop, &u->link_io);
        close(u->link);
        u->link = -1;
        ev_timer_stop(s->loop, &u->deadline);
        ev_timer_set(&u->deadline, 2.0, 0.);
        ev_timer_start(s->loop, &u->deadline);
        return;
    }
    o = json_loads(u->in, 0, NULL);
    if (o && json_unpack(o, "{s:I}", "exec_error", &exec_error) == 0) {
        set_why(u, "cannot execute %s: %s", u->exe, strerror((int)exec_error));
        json_decref(o);
        finish(s, 0);
        return;
    }
    if (!o || json_unpack(o, "{s:I}", "pid", &pid) < 0 || pid != u->child) {
        set_why(u, "the new process (pid %d) said something other than READY", (int)u->child);
        json_decref(o);
        finish(s, 0);
        return;
    }
    json_decref(o);
    u->new_pid = u->child;
    u->child = 0;
    set_why(u, "pid %d is ready and serves; this generation drains", (int)u->new_pid);
    finish(s, 1);
    /* What follows READY on the link is the new generation's bus. */
    bridge_open(s, u->link, 0);
    u->link = -1;
    begin_drain(s, u->new_pid);
    ctl_answer_waiting(&s->ctl, status_answer, s);
}

static void deadline_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    sf_server *s = w->data;
    (void)loop;
    (void)revents;
    if (s->up.link >= 0)
        set_why(&s->up, "the new process (pid %d) was not ready within %g s", (int)s->up.child,
                s->opts.upgrade_timeout_s);
    finish(s, 0);
}

void upgrade_reaped(sf_server *s, pid_t pid, int wstatus)
{
    upgrade *u = &s->up;
    char text[64];
    sf_status st;

    if (pid != u->child && pid != u->new_pid)
        return;
    st = sf_status_decode(wstatus);
    sf_status_format(&st, text, sizeof text);
    if (pid == u->child && u->state == UPGRADE_STARTING) {
        u->child = 0; /* nothing to kill any more */
        set_why(u, "the new process (pid %d) %s before it was ready", (int)pid, text);
        finish(s, 0);
        return;
    }
    if (pid == u->child) {
        u->child = 0;
        if (u->restore_pending)
            failed_and_gone(s);
    }
    sf_logev(&s->log, SF_LOG_WARN, "upgrade_child_exited", (int)pid, NULL,
             SF_FIELDS(SF_F_STATUS("status", st), SF_F_BOOL("next", pid == u->new_pid)),
             "upgrade: pid %d (%s) %s", (int)pid,
             pid == u->new_pid ? "the generation after us" : "a new generation that failed", text);
}

int upgrade_begin(sf_server *s, char *why, size_t len)
{
    upgrade *u = &s->up;
    handover h;
    int sv[2] = {-1, -1}, rc, has_fdlimit;
    char exe[PATH_MAX];
    char *const *argv;
    struct rlimit fdlimit;
    pid_t pid;

    if (u->state == UPGRADE_STARTING || u->restore_pending) {
        snprintf(why, len, "an upgrade is under way (pid %d)", (int)u->child);
        return -EALREADY;
    }
    if (u->draining || s->sup.shutting_down) {
        snprintf(why, len, "%s", u->draining ? "this generation was upgraded already and drains"
                                             : "the server is stopping");
        return -ESHUTDOWN;
    }
    if (!s->opts.upgrade_argv || !s->opts.upgrade_argv[0] || !u->exe) {
        snprintf(why, len, "this server was not given the arguments to start a new one with");
        return -ENOTSUP;
    }
    memset(&h, 0, sizeof h);
    /* First: HELLO tells the new generation where we answer from now on. */
    if ((rc = control_step_aside(s)) < 0) {
        snprintf(why, len, "cannot give the control socket a path of its own: %s", strerror(-rc));
        return rc;
    }
    if ((rc = build_hello(s, &h)) < 0 ||
        (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 && (rc = -errno)) ||
        (rc = build_env(s, &h, 3 + h.nfds)) < 0)
        goto fail;
    h.fds[h.nfds++] = sv[1]; /* the link: its place is 3 + listeners */
    if ((rc = write_line(sv[0], h.hello)) < 0)
        goto fail;
    /* fork, not vfork: the child moves descriptors about first. One fork
     * per upgrade of a process that may be large: fine. What the child
     * reads is copied out of s first: s is os_nofork memory, which the
     * child does not have. */
    snprintf(exe, sizeof exe, "%s", u->exe);
    argv = s->opts.upgrade_argv;
    fdlimit = s->orig_fdlimit;
    has_fdlimit = s->have_orig_fdlimit;
    pid = fork();
    if (pid < 0) {
        rc = -errno;
        goto fail;
    }
    if (pid == 0)
        exec_new_generation(exe, argv, &h, has_fdlimit ? &fdlimit : NULL);
    close(sv[1]);
    free_handover(&h);
    u->child = pid;
    u->new_pid = 0;
    u->link = sv[0];
    u->state = UPGRADE_STARTING;
    set_why(u, "pid %d is starting", (int)pid);
    ev_io_init(&u->link_io, link_cb, u->link, EV_READ);
    u->link_io.data = s;
    ev_io_start(s->loop, &u->link_io);
    ev_timer_set(&u->deadline, s->opts.upgrade_timeout_s, 0.);
    ev_timer_start(s->loop, &u->deadline);
    if (s->notify.fd >= 0) {
        /* systemd 253 wants the moment with RELOADING=1 (Type=notify-reload). */
        struct timespec ts;
        char text[96];
        clock_gettime(CLOCK_MONOTONIC, &ts);
        snprintf(text, sizeof text, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=upgrading",
                 (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000);
        server_notify(s, text);
    }
    sf_logev(&s->log, SF_LOG_NOTICE, "upgrade_started", (int)pid, NULL,
             SF_FIELDS(SF_F_STR("binary", u->exe), SF_F_UINT("generation", u->generation + 1)),
             "upgrade: started %s as pid %d (generation %u)", u->exe, (int)pid,
             u->generation + 1);
    snprintf(why, len, "%s", u->why);
    return 0;

fail:
    snprintf(why, len, "cannot start %s: %s", u->exe, strerror(-rc));
    control_back_home(s);
    if (sv[0] >= 0)
        close(sv[0]);
    if (sv[1] >= 0)
        close(sv[1]);
    free_handover(&h);
    return rc;
}

void upgrade_on_shutdown(sf_server *s)
{
    upgrade *u = &s->up;
    pid_t pid;
    int st;

    ev_timer_stop(s->loop, &u->drain_timer); /* the shutdown's grace rules now */
    if (u->state != UPGRADE_STARTING)
        return;
    set_why(u, "the server is stopping: the new process (pid %d) was killed", (int)u->child);
    pid = u->child;
    finish(s, 0);
    /* Reaped here: the loop may end before SIGCHLD is handled, and an
     * embedding program must not be left a zombie. SIGKILL was sent. */
    if (pid > 0 && waitpid(pid, &st, 0) == pid) {
        u->child = 0;
        if (u->restore_pending)
            failed_and_gone(s);
    }
}

static void usr2_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    sf_server *s = w->data;
    char why[300];
    int rc;
    (void)loop;
    (void)revents;

    rc = upgrade_begin(s, why, sizeof why);
    if (rc < 0)
        sf_logev(&s->log, SF_LOG_WARN, "upgrade_refused", 0, NULL,
                 SF_FIELDS(SF_F_STR("why", why), SF_F_STR("from", "SIGUSR2")),
                 "SIGUSR2: no upgrade: %s", why);
}

int upgrade_put_generations(const sf_server *s, json_t *reply)
{
    const upgrade *u = &s->up;

    if (u->prev_alive &&
        json_object_set_new(reply, "previous_generation",
                            json_pack("{s:i, s:s?}", "pid", (int)u->prev_pid, "control",
                                      u->prev_control[0] ? u->prev_control : NULL)) < 0)
        return -ENOMEM;
    if (u->draining &&
        json_object_set_new(reply, "next_generation", json_pack("{s:i}", "pid", (int)u->new_pid)) < 0)
        return -ENOMEM;
    return 0;
}

json_t *upgrade_status_json(const sf_server *s)
{
    const upgrade *u = &s->up;
    static const char *const names[] = {"none", "starting", "done", "failed"};

    return json_pack("{s:b, s:s, s:s, s:i, s:i, s:b, s:i, s:s?, s:f}", "ok", 1, "state", names[u->state],
                     "message", u->why, "pid", (int)(u->child ? u->child : u->new_pid),
                     "generation", (int)u->generation, "draining", u->draining,
                     "previous_pid", (int)(u->prev_alive ? u->prev_pid : 0), "previous_control",
                     u->prev_alive && u->prev_control[0] ? u->prev_control : NULL, "timeout_s",
                     s->opts.upgrade_timeout_s);
}

void upgrade_fini(sf_server *s)
{
    upgrade *u = &s->up;

    if (s->loop) {
        ev_io_stop(s->loop, &u->link_io);
        ev_timer_stop(s->loop, &u->deadline);
        ev_timer_stop(s->loop, &u->drain_timer);
        ev_timer_stop(s->loop, &u->drained);
        ev_signal_stop(s->loop, &u->usr2);
    }
    bus_link_close(u->bridge); /* before bus_fini (sf_server_free's order) */
    u->bridge = NULL;
    if (u->link >= 0)
        close(u->link);
    if (u->from >= 0)
        close(u->from);
    u->link = u->from = -1;
    for (unsigned i = 0; i < u->ninh; i++)
        if (u->inh[i].fd >= 0)
            close(u->inh[i].fd);
    u->ninh = 0;
    os_nofork_free(u->exe);
    u->exe = NULL;
}

void upgrade_watchers_init(sf_server *s)
{
    upgrade *u = &s->up;

    ev_timer_init(&u->deadline, deadline_cb, 0., 0.);
    ev_timer_init(&u->drain_timer, drain_timer_cb, 0., 0.);
    ev_timer_init(&u->drained, drained_cb, 0., 0.);
    ev_signal_init(&u->usr2, usr2_cb, SIGUSR2);
    u->deadline.data = u->drain_timer.data = u->drained.data = u->usr2.data = s;
}
