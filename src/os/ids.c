/*
 * ids.c - dropping root for good: the user and group a server runs as once
 * its sockets are open (tcpserver's -U, s6's s6-applyuidgid).
 */
#include "os/os.h"

#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A name, or a number for an id that has none. 1 with *out, 0 when text
 * is not a number. */
static int numeric_id(const char *text, unsigned long *out)
{
    char *end;

    if (!*text || *text < '0' || *text > '9')
        return 0;
    errno = 0;
    *out = strtoul(text, &end, 10);
    return !*end && errno == 0 && *out < (unsigned long)UINT_MAX;
}

int os_ids_resolve(const char *user, const char *group, os_ids *out)
{
    char buf[16384];
    struct passwd pw, *pwp = NULL;
    struct group gr, *grp = NULL;
    unsigned long n;
    int rc;

    memset(out, 0, sizeof *out);
    if (!user || !*user)
        return -EINVAL;
    if (numeric_id(user, &n)) {
        out->uid = (uid_t)n;
        /* A number may still name a user: its groups then come along. */
        rc = getpwuid_r(out->uid, &pw, buf, sizeof buf, &pwp);
    } else {
        rc = getpwnam_r(user, &pw, buf, sizeof buf, &pwp);
        if (rc == 0 && !pwp)
            return -ENOENT; /* no such user */
    }
    if (rc != 0)
        return -rc;
    if (pwp) {
        out->uid = pwp->pw_uid;
        out->gid = pwp->pw_gid;
        out->has_name = strlen(pwp->pw_name) < sizeof out->name;
        if (out->has_name)
            strcpy(out->name, pwp->pw_name);
    } else if (!group || !*group) {
        return -ESRCH; /* a bare uid with no user: its group must be given */
    }
    if (group && *group) {
        out->explicit_group = 1;
        if (numeric_id(group, &n)) {
            out->gid = (gid_t)n;
        } else {
            rc = getgrnam_r(group, &gr, buf, sizeof buf, &grp);
            if (rc != 0)
                return -rc;
            if (!grp)
                return -ENXIO; /* no such group */
            out->gid = grp->gr_gid;
        }
    }
    return 0;
}

int os_ids_drop(const os_ids *ids)
{
    /* Groups first: once the uid is not 0 nothing else may change. The
     * supplementary groups are the user's own (initgroups) when the user
     * has a name and no group was forced, else none. */
    if (ids->has_name && !ids->explicit_group) {
        if (initgroups(ids->name, ids->gid) < 0)
            return -errno;
    } else if (setgroups(0, NULL) < 0) {
        return -errno;
    }
    if (setresgid(ids->gid, ids->gid, ids->gid) < 0)
        return -errno;
    if (setresuid(ids->uid, ids->uid, ids->uid) < 0)
        return -errno;
    /* Permanent, or not at all: getting root back must fail. */
    if (ids->uid != 0 && (setuid(0) == 0 || seteuid(0) == 0))
        return -EPERM;
    if (ids->gid != 0 && ids->uid != 0 && (setgid(0) == 0 || setegid(0) == 0))
        return -EPERM;
    return 0;
}
