/*
 * sizing.c - the prefork pool's sizing decision (rules in sizing.h).
 */
#include "server/sizing.h"

/* The earlier of two times, 0 meaning "none". */
static double earliest(double a, double b)
{
    if (a == 0)
        return b;
    if (b == 0)
        return a;
    return a < b ? a : b;
}

/* Fewer than min: the missing ones, all at once (a start, or a worker that
 * died), unless the crash-loop backoff holds them back. */
static int refill(const sizing_cfg *cfg, const sizing_load *load, unsigned total, sizing_plan *plan)
{
    if (total >= cfg->min)
        return 0;
    if (load->now < load->hold_until) {
        plan->recheck_at = load->hold_until;
        return 1;
    }
    plan->start = cfg->min - total;
    return 1;
}

/* Every worker busy and room for more: one round of the ramp, if a second
 * has passed since the last one; the next round may start twice as many. */
static void grow(const sizing_cfg *cfg, sizing_ramp *ramp, const sizing_load *load, unsigned total,
                 sizing_plan *plan)
{
    unsigned n = ramp->next ? ramp->next : 1;

    if (load->now < load->hold_until) {
        plan->recheck_at = load->hold_until;
        return;
    }
    if (load->now < ramp->not_before) {
        plan->recheck_at = ramp->not_before;
        return;
    }
    plan->start = n < cfg->max - total ? n : cfg->max - total;
    ramp->next = n * 2 > SIZING_RAMP_MAX ? SIZING_RAMP_MAX : n * 2;
    ramp->not_before = load->now + SIZING_ROUND_S;
}

/* Idle workers above min that have waited long enough go, down to min. */
static void shrink(const sizing_cfg *cfg, const sizing_load *load, unsigned total, sizing_plan *plan)
{
    unsigned extra = total - cfg->min;

    plan->retire = load->idle_long < extra ? load->idle_long : extra;
    if (total - plan->retire > cfg->min)
        plan->recheck_at = earliest(plan->recheck_at, load->idle_long_next);
}

sizing_plan sizing_decide(const sizing_cfg *cfg, sizing_ramp *ramp, const sizing_load *load)
{
    sizing_plan plan = {0, 0, 0};
    unsigned total = load->idle + load->busy + load->starting;

    if (refill(cfg, load, total, &plan))
        return plan;
    if (load->idle == 0 && load->starting == 0) {
        if (total < cfg->max)
            grow(cfg, ramp, load, total, &plan);
        return plan;
    }
    /* Someone is idle (or about to be): the burst is met, the ramp starts
     * again from one. The round's one-second spacing stays. */
    ramp->next = 1;
    if (total > cfg->min)
        shrink(cfg, load, total, &plan);
    return plan;
}
