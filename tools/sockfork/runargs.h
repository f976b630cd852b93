/*
 * runargs.h - the command line of one task of `sockfork run` (issue 5):
 * GNU parallel's replacement strings and its ::: argument groups. Pure
 * functions: no processes, no I/O.
 *
 *   {}     the argument (several groups: all of them, space-separated)
 *   {.}    without its extension ("dir/a.txt" -> "dir/a")
 *   {/}    its basename ("dir/a.txt" -> "a.txt")
 *   {//}   its dirname ("dir/a.txt" -> "dir"; "a.txt" -> ".")
 *   {/.}   its basename without extension ("a")
 *   {#}    the task's number, from 1 in input order
 *   {%}    the slot running it, 1 to -j
 *   {N} {N.} {N/} {N//} {N/.}   the same, for the N-th ::: group's argument
 *
 * A word with no replacement string is kept as it is; if no word of the
 * command has one, the arguments are appended as words of their own.
 */
#ifndef SOCKFORK_RUNARGS_H
#define SOCKFORK_RUNARGS_H

#include <stddef.h>

/* RUNARGS_QUOTE: each argument put in (replacing or appended) becomes one
 * shell word, for a command line run by sh -c, quoted as GNU parallel
 * quotes it: as it is if made only of [-_.+/A-Za-z0-9], '' if empty, else
 * in single quotes (' as '"'"'). */
#define RUNARGS_QUOTE 1

/*
 * The argv of one task: a NULL-terminated array in one malloc'ed block
 * (free() it), or NULL with errno ENOMEM, or EINVAL for a replacement
 * string that names a group that does not exist ({3} with two groups).
 */
char **runargs_expand(char *const *cmd, size_t ncmd, const char *const *args, size_t nargs,
                      unsigned long seq, unsigned slot, int flags);

/*
 * The cross product of ::: groups, as GNU parallel orders it (the last
 * group varies fastest): idx holds one index per group, all 0 to start.
 * Moves idx to the next combination; returns 0 when every one was visited.
 */
int runargs_next(size_t *idx, const size_t *sizes, size_t ngroups);

#endif
