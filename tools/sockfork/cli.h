/* cli.h - what the subcommands share. Uses only the public header. */
#ifndef SOCKFORK_CLI_H
#define SOCKFORK_CLI_H

#include <sockfork.h>

/* Exit statuses of the command. */
#define EXIT_USAGE 2

/* Prints "sockfork: <fmt>\n" on stderr in one write. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The log callback the subcommands hand to the library: one line on
 * stderr, prefixed "sockfork: ", written with a single write(2) so lines
 * from a busy server never interleave. */
void cli_log(void *arg, int level, const char *line);

/* Parses a count: digits only, 0..max. Returns 0 or -1. */
int cli_parse_uint(const char *s, unsigned max, unsigned *out);
/* Parses a byte count: digits with an optional K, M, G or T (KiB, MiB...)
 * suffix, at most max. Returns 0 or -1. */
int cli_parse_size(const char *s, unsigned max, unsigned *out);
/* The same, for counts past 4 GiB. */
int cli_parse_bytes(const char *s, unsigned long long max, unsigned long long *out);
/* Parses seconds: a non-negative decimal number (fractions allowed) with
 * an optional unit suffix ms, s, m or h. Returns 0 or -1. */
int cli_parse_seconds(const char *s, double *out);

/* main's argv, whole: what an upgrade starts the new server with. */
extern char **cli_main_argv;

int cmd_serve(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_ctl(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_worker(int argc, char **argv);

/* Control sockets without --control (ctlpath.c). Each returns 0 or -errno. */
#define CLI_CONTROL_PATH_MAX 300
int cli_control_dir(char *buf, size_t len);     /* the directory */
/* A new server's path, KIND-PID.sock (kind: "serve", "chat"); makes the dir. */
int cli_control_default(const char *kind, char *buf, size_t len);
/* The same for a server that will run as uid (-u): under /tmp/sockfork-UID,
 * made for that user if it is not there. */
int cli_control_default_for(const char *kind, uid_t uid, gid_t gid, char *buf, size_t len);
/* A connected socket to the control socket at path, or -errno. */
int cli_control_connect(const char *path);

typedef struct cli_control_entry {
    char path[CLI_CONTROL_PATH_MAX];
    int fd;  /* connected to it: the connection whose peer was checked */
    int pid; /* the server's, from the socket's peer credentials */
} cli_control_entry;

/* Where servers may have put their sockets, to look through in this
 * order: $XDG_RUNTIME_DIR/sockfork when it is set, and /tmp/sockfork-$UID
 * (where a server started without it, from cron or ssh, puts its socket).
 * dirs holds max >= 2. Returns their number, or -errno. */
int cli_control_dirs(char dirs[][CLI_CONTROL_PATH_MAX], int max);

/* The live servers under dir: sockets that are ours, on which a process of
 * ours listens. Appends them to found, which holds *kept of max, each with
 * the connection that was checked, for the caller to use and to close
 * (cli_control_release); counts every one in *total, those past max too
 * (their connection closed). Returns 0; -ENOENT if there is no directory;
 * -EPERM if it is not a directory of ours closed to others (*dst then says
 * whose it is and its mode: nothing in it is trusted); other -errno. */
struct stat;
int cli_control_scan(const char *dir, cli_control_entry *found, int max, int *kept, int *total,
                     struct stat *dst);
/* Closes the connections of n entries. */
void cli_control_release(cli_control_entry *found, int n);

/* Built-in connection handlers (handlers.c). */
int handler_interactive(sf_conn *c, void *arg);
int handler_echo(sf_conn *c, void *arg);

/* The chat server (chat.c): its handler, and its options (--history,
 * --line-max, --flood, --client-backlog: the name without dashes).
 * chat_option returns 0, or -1 after saying what is wrong. */
int handler_chat(sf_conn *c, void *arg);
int chat_option(const char *name, const char *value, sf_server_opts *opts);
/* After all options: whether they fit together (one line must fit in a
 * message and in a backlog). Returns 0, or -1 after saying why. */
int chat_check(const sf_server_opts *opts);
/* What chat sets in the server's options besides its own: the bus's
 * gathering of a room's burst (sf_server_opts.bus_gather_s). */
void chat_tune(sf_server_opts *opts);

#endif
