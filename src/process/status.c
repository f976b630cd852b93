/* status.c - what a wait status means, in words. */
#include "sockfork.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>

sf_status sf_status_decode(int wstatus)
{
    sf_status st = {0, 0, 0, 0};

    if (WIFEXITED(wstatus)) {
        st.exited = 1;
        st.code = WEXITSTATUS(wstatus);
    } else if (WIFSIGNALED(wstatus)) {
        st.signal = WTERMSIG(wstatus);
#ifdef WCOREDUMP
        st.core = WCOREDUMP(wstatus) ? 1 : 0;
#endif
    }
    return st;
}

const char *sf_signal_name(int sig)
{
    /* Only the portable names: the numbers of the others differ by arch. */
    switch (sig) {
    case SIGHUP: return "SIGHUP";
    case SIGINT: return "SIGINT";
    case SIGQUIT: return "SIGQUIT";
    case SIGILL: return "SIGILL";
    case SIGTRAP: return "SIGTRAP";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGKILL: return "SIGKILL";
    case SIGUSR1: return "SIGUSR1";
    case SIGSEGV: return "SIGSEGV";
    case SIGUSR2: return "SIGUSR2";
    case SIGPIPE: return "SIGPIPE";
    case SIGALRM: return "SIGALRM";
    case SIGTERM: return "SIGTERM";
    case SIGCHLD: return "SIGCHLD";
    case SIGCONT: return "SIGCONT";
    case SIGSTOP: return "SIGSTOP";
    case SIGTSTP: return "SIGTSTP";
    case SIGTTIN: return "SIGTTIN";
    case SIGTTOU: return "SIGTTOU";
    case SIGURG: return "SIGURG";
    case SIGXCPU: return "SIGXCPU";
    case SIGXFSZ: return "SIGXFSZ";
    case SIGVTALRM: return "SIGVTALRM";
    case SIGPROF: return "SIGPROF";
    case SIGWINCH: return "SIGWINCH";
    case SIGIO: return "SIGIO";
    case SIGSYS: return "SIGSYS";
    default: return NULL;
    }
}

int sf_status_format(const sf_status *st, char *buf, size_t len)
{
    const char *name;
    int n;

    if (st->exited) {
        n = snprintf(buf, len, "exited %d", st->code);
    } else if ((name = sf_signal_name(st->signal)) != NULL) {
        n = snprintf(buf, len, "killed by %s%s", name, st->core ? " (core dumped)" : "");
    } else {
        n = snprintf(buf, len, "killed by signal %d%s", st->signal,
                     st->core ? " (core dumped)" : "");
    }
    if (n < 0)
        return -EINVAL;
    return (size_t)n >= len ? -ENOSPC : n;
}
