/* ctlpath.c - where control sockets live when no --control is given:
 * $XDG_RUNTIME_DIR/sockfork/, else /tmp/sockfork-$UID/, one file per server
 * (serve-PID.sock, chat-PID.sock); ctl looks in both. */
#include "cli.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

int cli_control_dir(char *buf, size_t len)
{
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    int n;

    if (xdg && xdg[0] == '/')
        n = snprintf(buf, len, "%s/sockfork", xdg);
    else
        n = snprintf(buf, len, "/tmp/sockfork-%u", (unsigned)getuid());
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* Ours and closed to others: under /tmp anybody could have made it first,
 * to read our control sockets or to stand in for our servers. */
static int dir_is_private(const struct stat *st)
{
    return S_ISDIR(st->st_mode) && st->st_uid == getuid() && !(st->st_mode & 077);
}

static int ensure_private_dir(const char *dir)
{
    struct stat st;

    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return -errno;
    if (lstat(dir, &st) < 0)
        return -errno;
    return dir_is_private(&st) ? 0 : -EPERM;
}

int cli_control_default(const char *kind, char *buf, size_t len)
{
    char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int rc, n;

    if ((rc = cli_control_dir(dir, sizeof dir)) < 0 || (rc = ensure_private_dir(dir)) < 0)
        return rc;
    n = snprintf(buf, len, "%s/%s-%d.sock", dir, kind, (int)getpid());
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

int cli_control_default_for(const char *kind, uid_t uid, gid_t gid, char *buf, size_t len)
{
    char dir[64];
    struct stat st;
    int n;

    /* The user's own /tmp/sockfork-UID, made for it: the server, once it
     * runs as that user, must be able to remove its socket there. */
    snprintf(dir, sizeof dir, "/tmp/sockfork-%u", (unsigned)uid);
    if (mkdir(dir, 0700) == 0) {
        if (chown(dir, uid, gid) < 0)
            return -errno;
    } else if (errno != EEXIST) {
        return -errno;
    }
    if (lstat(dir, &st) < 0)
        return -errno;
    if (!S_ISDIR(st.st_mode) || st.st_uid != uid || (st.st_mode & 077))
        return -EPERM;
    n = snprintf(buf, len, "%s/%s-%d.sock", dir, kind, (int)getpid());
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

int cli_control_connect(const char *path)
{
    struct sockaddr_un un;
    int fd;

    memset(&un, 0, sizeof un);
    un.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof un.sun_path)
        return -ENAMETOOLONG;
    strcpy(un.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&un, sizeof un) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

/* A name a server gives its socket: serve-*.sock or chat-*.sock. */
static int is_control_name(const char *name)
{
    size_t n = strlen(name);

    return (strncmp(name, "serve-", 6) == 0 || strncmp(name, "chat-", 5) == 0) && n > 5 &&
           strcmp(name + n - 5, ".sock") == 0;
}

/* Live, and served by a process of ours: the socket file is ours, and the
 * process that listens on it runs as us (SO_PEERCRED: the credentials of
 * the listener at listen() time). Returns the connected descriptor that
 * was checked, which is the one to talk on (connecting again by path could
 * reach whatever was put there since), with *pid the server's; or -1. */
static int connect_if_ours(int dfd, const char *dir, const char *name, int *pid)
{
    char path[CLI_CONTROL_PATH_MAX];
    struct stat st;
    struct ucred cred;
    socklen_t clen = sizeof cred;
    int fd;

    if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISSOCK(st.st_mode) ||
        st.st_uid != getuid())
        return -1;
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
        return -1;
    fd = cli_control_connect(path);
    if (fd < 0)
        return -1;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0 || cred.uid != getuid()) {
        close(fd);
        return -1;
    }
    *pid = (int)cred.pid;
    return fd;
}

int cli_control_dirs(char dirs[][CLI_CONTROL_PATH_MAX], int max)
{
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    int n = 0, len;

    if (max < 2)
        return -EINVAL;
    if (xdg && xdg[0] == '/') {
        len = snprintf(dirs[n], CLI_CONTROL_PATH_MAX, "%s/sockfork", xdg);
        if (len < 0 || len >= CLI_CONTROL_PATH_MAX)
            return -ENAMETOOLONG;
        n++;
    }
    snprintf(dirs[n++], CLI_CONTROL_PATH_MAX, "/tmp/sockfork-%u", (unsigned)getuid());
    return n;
}

/* dir opened for listing if it is a directory of ours closed to others,
 * checked through the descriptor then read: O_NOFOLLOW, so the directory
 * checked is the one listed, not what a symlink points to. */
static DIR *open_private_dir(const char *dir, struct stat *dst, int *rc)
{
    DIR *d;
    int dfd;

    memset(dst, 0, sizeof *dst);
    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) {
        *rc = -errno;
        if (*rc == -ELOOP || *rc == -ENOTDIR) {
            (void)lstat(dir, dst); /* for the message: what is there instead */
            *rc = -EPERM;
        }
        return NULL;
    }
    if (fstat(dfd, dst) < 0 || !dir_is_private(dst)) {
        *rc = -EPERM;
        close(dfd);
        return NULL;
    }
    d = fdopendir(dfd);
    if (!d) {
        *rc = -errno;
        close(dfd);
    }
    return d;
}

int cli_control_scan(const char *dir, cli_control_entry *found, int max, int *kept, int *total,
                     struct stat *dst)
{
    struct dirent *e;
    DIR *d;
    int rc = 0;

    d = open_private_dir(dir, dst, &rc);
    if (!d)
        return rc;
    /* Bounded by the directory's size, a private directory of ours; past
     * max, servers are counted (and their connection closed), not kept. */
    while ((e = readdir(d)) != NULL) {
        cli_control_entry *c = &found[*kept < max ? *kept : 0];
        int pid = 0, fd;

        if (!is_control_name(e->d_name))
            continue;
        fd = connect_if_ours(dirfd(d), dir, e->d_name, &pid);
        if (fd < 0)
            continue;
        ++*total;
        if (*kept >= max ||
            snprintf(c->path, sizeof c->path, "%s/%s", dir, e->d_name) >= (int)sizeof c->path) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->pid = pid;
        ++*kept;
    }
    closedir(d);
    return 0;
}

void cli_control_release(cli_control_entry *found, int n)
{
    for (int i = 0; i < n; i++) {
        if (found[i].fd >= 0)
            close(found[i].fd);
        found[i].fd = -1;
    }
}
