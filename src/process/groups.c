/* groups.c - see groups.h: the set of groups and their takedown. */
#include "process/groups.h"
#include "process/process.h"
#include "process/stop.h"
#include "os/os.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#define GROUPS_MIN 16
#define TAKEDOWN_POLL_MS 20

/* ------------------------------------------------------------- the set */

void proc_groups_init(proc_groups *g, unsigned max)
{
    g->slot = NULL;
    g->size = 0;
    g->count = 0;
    g->max = max;
    g->own_children = 0;
}

static unsigned home(const proc_groups *g, pid_t pg)
{
    return ((uint32_t)pg * 2654435761u) & (g->size - 1);
}

static void put(proc_groups *g, pid_t pg)
{
    unsigned i = home(g, pg);

    while (g->slot[i] != 0 && g->slot[i] != pg)
        i = (i + 1) & (g->size - 1);
    if (g->slot[i] == 0)
        g->count++;
    g->slot[i] = pg;
}

/* Kept at most half full, so probes stay short and a free slot is near. */
static int grow(proc_groups *g)
{
    proc_groups bigger = *g;
    unsigned size = g->size ? g->size * 2 : GROUPS_MIN;

    if (size == 0) /* past 2^31 slots */
        return -ENOMEM;
    bigger.slot = os_nofork_calloc(size, sizeof *bigger.slot);
    if (!bigger.slot)
        return -ENOMEM;
    bigger.size = size;
    bigger.count = 0;
    for (unsigned i = 0; i < g->size; i++)
        if (g->slot[i] != 0)
            put(&bigger, g->slot[i]);
    os_nofork_free(g->slot);
    *g = bigger;
    return 0;
}

int proc_groups_reserve(proc_groups *g)
{
    if (g->count >= g->max)
        return -ENOSPC;
    if ((uint64_t)(g->count + 1) * 2 > g->size)
        return grow(g);
    return 0;
}

int proc_groups_add(proc_groups *g, pid_t pg)
{
    int rc;

    if (pg <= 0)
        return -EINVAL;
    if ((rc = proc_groups_reserve(g)) < 0)
        return rc;
    put(g, pg);
    return 0;
}

/* Backward-shift deletion: the entries after the hole that would no
 * longer be found from their home slot move into it. No tombstones. */
void proc_groups_del(proc_groups *g, pid_t pg)
{
    unsigned mask = g->size - 1, i, j;

    if (g->size == 0 || pg <= 0)
        return;
    for (i = home(g, pg); g->slot[i] != pg; i = (i + 1) & mask)
        if (g->slot[i] == 0)
            return;
    g->slot[i] = 0;
    g->count--;
    for (j = (i + 1) & mask; g->slot[j] != 0; j = (j + 1) & mask) {
        unsigned h = home(g, g->slot[j]);
        /* Move j into the hole at i unless its home lies in (i, j]. */
        if (((j - h) & mask) >= ((j - i) & mask)) {
            g->slot[i] = g->slot[j];
            g->slot[j] = 0;
            i = j;
        }
    }
}

void proc_groups_free(proc_groups *g)
{
    int own = g->own_children;

    os_nofork_free(g->slot);
    proc_groups_init(g, g->max);
    g->own_children = own;
}

/* ------------------------------------------------------------ takedown */

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Whether pid is our child, not reaped and not exited: then, and only then,
 * the pid is still its and it may be signalled alone. */
static int running_child(pid_t pid)
{
    siginfo_t si;

    memset(&si, 0, sizeof si);
    return waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == 0;
}

/*
 * sig to group pg. Returns 0 if anybody got it (or is there: EPERM), -1
 * if the group is gone: the caller drops it. Never kill(pg) on a guess:
 * the id of a group nobody is left in may be reused, by anybody, and a
 * pid that is not our unreaped child may be anybody's. Only for the
 * spawner's own children (own_children), a leader that left its group
 * (setsid) is signalled alone while it is our running child.
 */
static int signal_one(const proc_groups *g, pid_t pg, int sig)
{
    if (kill(-pg, sig) == 0 || errno != ESRCH)
        return 0;
    if (g->own_children && running_child(pg)) {
        (void)kill(pg, sig);
        return 0;
    }
    return -1;
}

/* sig to every group of g; a group found gone is dropped (a deletion may
 * shift another entry into i, which is then looked at next). */
static void signal_all(proc_groups *g, int sig)
{
    for (unsigned i = 0; i < g->size;) {
        pid_t pg = g->slot[i];
        if (pg != 0 && signal_one(g, pg, sig) < 0) {
            proc_groups_del(g, pg);
            continue;
        }
        i++;
    }
}

static int send_group(pid_t pg, int sig, void *arg)
{
    return signal_one(arg, pg, sig) < 0 ? -ESRCH : 0;
}

/* Begins stopping every group of g (stop.h: SIGTERM and SIGCONT); a group
 * found gone is dropped. Returns the seconds until SIGKILL is due. */
static double stop_all(proc_groups *g, const proc_stop *st)
{
    double kill_in = st->grace;

    for (unsigned i = 0; i < g->size;) {
        pid_t pg = g->slot[i];
        if (pg != 0 && proc_stop_begin(st, pg, &kill_in) < 0) {
            proc_groups_del(g, pg);
            continue;
        }
        i++;
    }
    return kill_in;
}

/* The grace is over: SIGKILL to every group left. */
static void kill_all(proc_groups *g, const proc_stop *st)
{
    for (unsigned i = 0; i < g->size; i++)
        if (g->slot[i] != 0)
            (void)proc_stop_kill(st, g->slot[i]);
}

void proc_groups_takedown(proc_groups *g, double grace_s, proc_groups_tick_fn tick, void *arg)
{
    proc_stop st = {.grace = grace_s, .send = send_group, .arg = g};
    double deadline;

    if (g->count == 0)
        goto done;
    deadline = mono_now() + stop_all(g, &st);
    for (;;) {
        if (tick)
            tick(arg);
        signal_all(g, 0); /* drops the groups nobody is left in */
        if (g->count == 0 || mono_now() >= deadline)
            break;
        (void)poll(NULL, 0, TAKEDOWN_POLL_MS);
    }
    kill_all(g, &st);
done:
    proc_groups_free(g);
}
