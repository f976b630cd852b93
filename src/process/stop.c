/* stop.c - see stop.h: TERM, grace, KILL, decided once for every caller. */
#include "process/stop.h"
#include "process/process.h"

#include <signal.h>

static int send_sig(const proc_stop *st, pid_t pid, int sig)
{
    if (st->send)
        return st->send(pid, sig, st->arg);
    return proc_signal_group(pid, sig);
}

int proc_stop_begin(const proc_stop *st, pid_t pid, double *kill_in)
{
    int rc;

    if (st->grace <= 0 && st->no_grace_kills) {
        *kill_in = -1;
        return send_sig(st, pid, SIGKILL);
    }
    *kill_in = st->grace > 0 ? st->grace : 0;
    rc = send_sig(st, pid, SIGTERM);
    if (rc == 0)
        (void)send_sig(st, pid, SIGCONT); /* a stopped process would never act on TERM */
    return rc;
}

int proc_stop_kill(const proc_stop *st, pid_t pid)
{
    return send_sig(st, pid, SIGKILL);
}
