/*
 * libFuzzer target: what a child may send the supervisor, through the
 * supervisor's real code (the bus: decoding either codec, then routing).
 * The first byte picks the codec (even: frames, odd: JSON lines); the rest
 * is written to the child's end of a socketpair and the event loop runs
 * until the bus has read it all or closed the channel. Each input gets a
 * bus of its own, freed after it (bus_fini must free every topic, name
 * and kept message: the bus's tables live in mmap'd memory LeakSanitizer
 * does not scan, so what they hold would look leaked across inputs).
 * The output offload's request decoders get the input too (bus_out.h).
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include "supervisor/bus.h"
#include "supervisor/bus_out.h"

static struct ev_loop *loop;
static bus b;
static endpoint ep;
static sf_logger quiet; /* no callback: lines are formatted nowhere */

static endpoint *find(bus *bb, pid_t pid, void *arg)
{
    (void)bb;
    (void)arg;
    return pid == ep.pid && endpoint_is_open(&ep) ? &ep : NULL;
}

static void on_kick(bus *bb, endpoint *e, const char *why, void *arg)
{
    (void)bb;
    (void)e;
    (void)why;
    (void)arg;
}

static void drain(int fd)
{
    char buf[65536];
    while (recv(fd, buf, sizeof buf, MSG_DONTWAIT) > 0)
        ;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2];

    bus_config cfg;

    if (!loop && !(loop = ev_loop_new(EVFLAG_AUTO)))
        abort();
    memset(&cfg, 0, sizeof cfg);
    cfg.chan_max = 1024;
    cfg.queue_limit = 4096;
    cfg.history = 4;
    cfg.on_kick = on_kick;
    cfg.find = find;
    cfg.log = &quiet;
    if (size < 1)
        return 0;
    /* Output offload's request decoders, on the bytes as they are (the
     * bus below cannot get OUT_OPEN's descriptor from a fuzzer's input). */
    {
        bus_out_open o;
        bus_out_write w;
        bus_out_sub s;
        bus_out_gate g;
        (void)bus_out_open_decode(data + 1, size - 1, &o);
        (void)bus_out_write_decode(data + 1, size - 1, &w);
        (void)bus_out_sub_decode(data + 1, size - 1, &s);
        (void)bus_out_gate_decode(data + 1, size - 1, &g);
    }
    if (bus_init(&b, loop, &cfg) < 0)
        return 0;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0) {
        bus_fini(&b);
        return 0;
    }
    if (endpoint_open(&b, &ep, sv[0], 4242, data[0] & 1, NULL) < 0) {
        close(sv[1]);
        bus_fini(&b);
        return 0;
    }
    size_t off = 1;
    /* Bounded: every round either writes, or the bus reads, or it stops. */
    for (int round = 0; round < 10000 && endpoint_is_open(&ep); round++) {
        if (off < size) {
            ssize_t n = send(sv[1], data + off, size - off, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0)
                off += (size_t)n;
        } else {
            shutdown(sv[1], SHUT_WR); /* EOF: the bus closes the endpoint */
        }
        ev_run(loop, EVRUN_NOWAIT);
        drain(sv[1]);
    }
    endpoint_close(&ep);
    close(sv[1]);
    if (b.nendpoints != 0 || b.nnames != 0)
        abort(); /* an endpoint's names outlived it */
    bus_fini(&b);
    return 0;
}
