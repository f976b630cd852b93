/*
 * failinject.so - an LD_PRELOAD module that makes a process's first calls
 * to fork() and accept()/accept4() fail, so tests can watch the supervisor
 * back off:
 *
 *   SF_FAIL_FORK=N    the first N fork() calls fail with EAGAIN
 *   SF_FAIL_ACCEPT=N  the first N accept()/accept4() calls fail with EMFILE
 *   SF_FAIL_SPAWN=N   the first N fork() calls fail with EAGAIN in the
 *                     supervisor's spawner (the child of the loading process
 *                     that forks: the one that forks the connections' children)
 *   SF_FAIL_DIAG=N    the first N recv() calls on a netlink socket (the
 *                     NETLINK_SOCK_DIAG dumps) fail with ENOBUFS, reading
 *                     nothing: the dump's reply is left queued
 *   SF_STOP_AT_UNIX_LISTEN=1  the first listen() on a Unix socket (the
 *                     control socket's) stops the process (SIGSTOP) once
 *                     it succeeded, so a test can signal it at that point
 *
 * The counts belong to the process that loaded the module first: the
 * constructor reads and then removes both variables, and the wrappers only
 * fail in that pid, so children (which inherit LD_PRELOAD) and programs they
 * exec run unharmed. Every other call goes to the real function found with
 * dlsym(RTLD_NEXT).
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

static atomic_int fail_fork;
static atomic_int fail_accept;
static atomic_int fail_spawn;
static atomic_int stop_at_unix_listen;
static atomic_int fail_diag;
static pid_t owner;

static int env_count(const char *name)
{
    const char *v = getenv(name);
    if (v == NULL)
        return 0;
    int n = atoi(v);
    unsetenv(name);
    return n > 0 ? n : 0;
}

__attribute__((constructor)) static void failinject_init(void)
{
    owner = getpid();
    atomic_store(&fail_fork, env_count("SF_FAIL_FORK"));
    atomic_store(&fail_accept, env_count("SF_FAIL_ACCEPT"));
    atomic_store(&fail_spawn, env_count("SF_FAIL_SPAWN"));
    atomic_store(&stop_at_unix_listen, env_count("SF_STOP_AT_UNIX_LISTEN"));
    atomic_store(&fail_diag, env_count("SF_FAIL_DIAG"));
}

/* Takes one failure from *counter if any are left and this process is the
 * owner (in_child 0) or a direct child of the owner, with its own copy of
 * the counter (in_child 1). */
static int take_where(atomic_int *counter, int in_child)
{
    int here = in_child ? getpid() != owner && getppid() == owner : getpid() == owner;
    if (!here)
        return 0;
    int n = atomic_load(counter);
    while (n > 0) {
        if (atomic_compare_exchange_weak(counter, &n, n - 1))
            return 1;
    }
    return 0;
}

static void *real(const char *name)
{
    void *f = dlsym(RTLD_NEXT, name);
    if (f == NULL)
        abort();
    return f;
}

static int take(atomic_int *counter)
{
    return take_where(counter, 0);
}

pid_t fork(void)
{
    static pid_t (*real_fork)(void);
    if (take(&fail_fork) || take_where(&fail_spawn, 1)) {
        errno = EAGAIN;
        return -1;
    }
    if (real_fork == NULL)
        *(void **)&real_fork = real("fork");
    return real_fork();
}

int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
    static int (*real_accept)(int, struct sockaddr *, socklen_t *);
    if (take(&fail_accept)) {
        errno = EMFILE;
        return -1;
    }
    if (real_accept == NULL)
        *(void **)&real_accept = real("accept");
    return real_accept(fd, addr, len);
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    static int (*real_accept4)(int, struct sockaddr *, socklen_t *, int);
    if (take(&fail_accept)) {
        errno = EMFILE;
        return -1;
    }
    if (real_accept4 == NULL)
        *(void **)&real_accept4 = real("accept4");
    return real_accept4(fd, addr, len, flags);
}

int listen(int fd, int backlog)
{
    static int (*real_listen)(int, int);
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int rc;

    if (real_listen == NULL)
        *(void **)&real_listen = real("listen");
    rc = real_listen(fd, backlog);
    if (rc == 0 && getsockname(fd, (struct sockaddr *)&ss, &len) == 0 &&
        ss.ss_family == AF_UNIX && take(&stop_at_unix_listen))
        raise(SIGSTOP);
    return rc;
}

ssize_t recv(int fd, void *buf, size_t len, int flags)
{
    static ssize_t (*real_recv)(int, void *, size_t, int);
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof ss;

    if (real_recv == NULL)
        *(void **)&real_recv = real("recv");
    if (atomic_load(&fail_diag) > 0 && getsockname(fd, (struct sockaddr *)&ss, &sslen) == 0 &&
        ss.ss_family == AF_NETLINK && take(&fail_diag)) {
        errno = ENOBUFS;
        return -1;
    }
    return real_recv(fd, buf, len, flags);
}
