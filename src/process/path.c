/* path.c - finding a program in PATH, as execvp does, once per name. */
#include "process/process.h"

#include "sockfork.h"

#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* What execvp searches when PATH is unset or empty (glibc's _CS_PATH). */
#define PATH_DEFAULT "/bin:/usr/bin"

/* Whether dir/name (dl bytes of dir; 0: the current directory) fits in
 * buf; writes it there. */
static int join(char *buf, size_t size, const char *dir, size_t dl, const char *name)
{
    int n = dl ? snprintf(buf, size, "%.*s/%s", (int)dl, dir, name)
               : snprintf(buf, size, "%s", name);
    return n > 0 && (size_t)n < size;
}

int proc_path_find(const char *name, const char *path, char *buf, size_t size)
{
    int seen = 0, too_long = 0;

    if (!name || !buf || size == 0)
        return -EINVAL;
    if (!*name)
        return -ENOENT;
    if (strchr(name, '/')) {
        if (strlen(name) >= size)
            return -ENAMETOOLONG;
        memcpy(buf, name, strlen(name) + 1);
        return 0;
    }
    /* As glibc: unset is the default; set but empty is one empty entry,
     * the current directory. */
    if (!path)
        path = PATH_DEFAULT;
    for (const char *dir = path;;) {
        const char *end = strchr(dir, ':');
        size_t dl = end ? (size_t)(end - dir) : strlen(dir);
        struct stat sb;

        if (!join(buf, size, dir, dl, name)) {
            too_long = 1; /* skipped, and said if nothing else is found */
        } else if (stat(buf, &sb) == 0) {
            /* A directory, or a file without execute permission, is what
             * execvp meets as EACCES: remembered, and the search goes on. */
            if (S_ISREG(sb.st_mode) && access(buf, X_OK) == 0)
                return 0;
            seen = 1;
        } else if (errno == EACCES) {
            seen = 1; /* a directory of PATH we may not search: execvp's EACCES */
        }
        if (!end)
            break;
        dir = end + 1; /* after a last ':', an empty entry: the cwd */
    }
    buf[0] = '\0';
    return seen ? -EACCES : too_long ? -ENAMETOOLONG : -ENOENT;
}

/* The public face: the lookup sf_conn_exec makes, with the file it finds
 * checked, so that a caller can refuse a program before any connection
 * rather than fail each one. */
int sf_program_find(const char *name, char *buf, size_t len)
{
    struct stat sb;
    int rc = proc_path_find(name, getenv("PATH"), buf, len);

    if (rc < 0 || !strchr(name, '/'))
        return rc;
    /* A name with a '/' is not searched: check it as execve would, which
     * runs only a regular file (a FIFO or a device, even executable, is
     * EACCES). A directory is told apart, for a clearer message. */
    if (stat(buf, &sb) < 0)
        return -errno;
    if (S_ISDIR(sb.st_mode))
        return -EISDIR;
    if (!S_ISREG(sb.st_mode))
        return -EACCES;
    return access(buf, X_OK) == 0 ? 0 : -errno;
}
