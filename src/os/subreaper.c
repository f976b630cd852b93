/* subreaper.c - orphans below us are reparented to us (Linux). */
#include "os/os.h"

#include <errno.h>
#include <sys/prctl.h>

/*
 * The supervisor's children are forked by the spawner; if the spawner
 * dies, they would go to init and their exit statuses would be lost. As a
 * subreaper the supervisor gets them, and reaps them itself.
 */
int os_subreaper(void)
{
#ifdef PR_SET_CHILD_SUBREAPER
    return prctl(PR_SET_CHILD_SUBREAPER, 1) < 0 ? -errno : 0;
#else
    return -ENOSYS;
#endif
}
