/* ctlpath.c - where control sockets live when no --control is given:
 * $XDG_RUNTIME_DIR/sockfork/, else /tmp/sockfork-$UID/, one file per server
 * (serve-PID.sock). */
#include "cli.h"

#include <dirent.h>
#include <errno.h>
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

/* The directory must be ours and closed to others: under /tmp anybody
 * could have made it first, to read our control socket. */
static int ensure_private_dir(const char *dir)
{
    struct stat st;

    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return -errno;
    if (lstat(dir, &st) < 0)
        return -errno;
    if (!S_ISDIR(st.st_mode) || st.st_uid != getuid() || (st.st_mode & 077))
        return -EPERM;
    return 0;
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

/* Live: something accepts on it. */
static int socket_is_live(const char *path)
{
    struct sockaddr_un un;
    int fd, live;

    memset(&un, 0, sizeof un);
    un.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof un.sun_path)
        return 0;
    strcpy(un.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    live = connect(fd, (struct sockaddr *)&un, sizeof un) == 0;
    close(fd);
    return live;
}

int cli_control_find(char *buf, size_t len)
{
    char dir[108], path[sizeof dir + 256 + 2], found[sizeof path] = "";
    struct dirent *e;
    DIR *d;
    int nlive = 0, rc;

    if ((rc = cli_control_dir(dir, sizeof dir)) < 0)
        return rc;
    d = opendir(dir);
    if (!d)
        return -ENOENT;
    /* Bounded by the directory's size; a private directory of ours. */
    while ((e = readdir(d)) != NULL) {
        size_t nl = strlen(e->d_name);
        if ((strncmp(e->d_name, "serve-", 6) != 0 && strncmp(e->d_name, "chat-", 5) != 0) || nl < 5 ||
            strcmp(e->d_name + nl - 5, ".sock") != 0)
            continue;
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path)
            continue;
        if (socket_is_live(path)) {
            nlive++;
            snprintf(found, sizeof found, "%s", path);
        }
    }
    closedir(d);
    if (nlive == 0)
        return -ENOENT;
    if (nlive > 1)
        return -EEXIST;
    if (strlen(found) >= len)
        return -ENAMETOOLONG;
    strcpy(buf, found);
    return 0;
}
