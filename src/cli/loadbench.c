/*
 * loadbench.c — `kiln load-bench`: loads several artifacts in a chosen mode, as a server
 * starting a pipeline would, runs each model once, and shows when each phase of each load
 * happened (a table, and optionally an SVG timeline of the overlapping loads).
 *
 *   eager        kiln_load one after another (each places before it returns)
 *   async        every kiln_load returns at once; placements overlap in the background
 *   lazy         loads place nothing; each first forward places its model, one by one
 *   lazy-async   loads place nothing; all first forwards start together, placements overlap
 *   as-saved     each artifact's own flags
 * --no-run (eager and async only) runs nothing: the round ends when every model is loaded.
 * Inputs of the first forward are zeros. Uses only the public API.
 */
#define _GNU_SOURCE
#include "cli/cli.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct lb_model {
    const char      *path;
    kiln_model      *m;
    kiln_tensor     *in, *out;
    size_t           n_in, n_out;
    double           t_load_ret, t_fwd_start, t_fwd_end;
    kiln_status      status;
    kiln_load_report rep;
} lb_model;

static const struct { const char *name; kiln_load_mode mode; } modes[] = {
    { "as-saved", KILN_LOAD_AS_SAVED }, { "eager", KILN_LOAD_EAGER }, { "lazy", KILN_LOAD_LAZY },
    { "async", KILN_LOAD_ASYNC }, { "lazy-async", KILN_LOAD_LAZY_ASYNC },
};

static void free_tensors(kiln_tensor *t, size_t n)
{
    for (size_t i = 0; t && i < n; i++)
        free(t[i].data);
    free(t);
}

/* Zero inputs and output buffers shaped as the model declares. */
static int make_tensors(lb_model *b)
{
    b->n_in = kiln_model_num_inputs(b->m);
    b->n_out = kiln_model_num_outputs(b->m);
    b->in = calloc(b->n_in + 1, sizeof(kiln_tensor));
    b->out = calloc(b->n_out + 1, sizeof(kiln_tensor));
    if (!b->in || !b->out)
        return 0;
    for (size_t k = 0; k < b->n_in + b->n_out; k++) {
        kiln_tensor *t = k < b->n_in ? &b->in[k] : &b->out[k - b->n_in];
        if (k < b->n_in)
            kiln_model_input(b->m, k, NULL, t);
        else
            kiln_model_output(b->m, k - b->n_in, NULL, t);
        size_t n = kiln_dtype_size(t->dtype);
        for (int d = 0; d < t->ndim; d++)
            n *= (size_t)t->shape[d];
        t->data = calloc(1, n + 1);
        if (!t->data)
            return 0;
    }
    return 1;
}

static void *forward_main(void *arg)
{
    lb_model *b = arg;
    b->t_fwd_start = kiln_clock_ms();
    b->status = kiln_forward(b->m, b->in, b->n_in, b->out, b->n_out);
    b->t_fwd_end = kiln_clock_ms();
    if (b->status != KILN_OK)
        fprintf(stderr, "kiln: %s: forward failed: %s\n", b->path, kiln_last_error());
    return NULL;
}

/* One round: load all, run each once (or, without run, wait for every load). Returns the
 * time from the first load to the last first output (last load ready), or a negative value
 * on failure. */
static double round_once(lb_model *bs, int n, kiln_load_mode mode, bool run, double *t0_out)
{
    kiln_load_params prm = kiln_load_default_params();
    prm.mode = mode;
    double t0 = kiln_clock_ms();
    *t0_out = t0;
    for (int i = 0; i < n; i++) {
        kiln_status s = kiln_load_ex(bs[i].path, &prm, &bs[i].m);
        bs[i].t_load_ret = kiln_clock_ms();
        if (s != KILN_OK) {
            cli_lib_error(s, bs[i].path);
            return -1;
        }
        if (!make_tensors(&bs[i])) {
            cli_error("out of memory");
            return -1;
        }
    }
    if (!run) {
        double end = 0;
        for (int i = 0; i < n; i++) {
            kiln_status s = kiln_wait(bs[i].m);
            double t = kiln_clock_ms();
            if (s != KILN_OK) {
                cli_lib_error(s, bs[i].path);
                return -1;
            }
            kiln_model_load_report(bs[i].m, &bs[i].rep);
            end = t > end ? t : end;
        }
        return end - t0;
    }
    bool together = true;
    for (int i = 0; i < n; i++) {
        bool async = mode == KILN_LOAD_ASYNC || mode == KILN_LOAD_LAZY_ASYNC ||
                     (mode == KILN_LOAD_AS_SAVED && kiln_model_is_async(bs[i].m));
        together = together && async;
    }
    pthread_t th[256];
    for (int i = 0; i < n; i++) {
        if (together)
            pthread_create(&th[i], NULL, forward_main, &bs[i]);
        else
            forward_main(&bs[i]);
    }
    double end = 0;
    for (int i = 0; i < n; i++) {
        if (together)
            pthread_join(th[i], NULL);
        if (bs[i].status != KILN_OK)
            return -1;
        kiln_model_load_report(bs[i].m, &bs[i].rep);
        if (bs[i].t_fwd_end > end)
            end = bs[i].t_fwd_end;
    }
    return end - t0;
}

static void release(lb_model *bs, int n)
{
    for (int i = 0; i < n; i++) {
        kiln_model_free(bs[i].m);
        free_tensors(bs[i].in, bs[i].n_in);
        free_tensors(bs[i].out, bs[i].n_out);
        bs[i].m = NULL;
        bs[i].in = bs[i].out = NULL;
    }
}

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static double rel(double t, double t0) { return t > 0 ? t - t0 : 0; }

static void print_timeline(const lb_model *bs, int n, double t0)
{
    printf("%-20s %4s %14s %15s %15s %15s %9s %15s\n", "model", "core", "kiln_load ret", "read",
           "verify", "place+kernels", "ready", "first forward");
    for (int i = 0; i < n; i++) {
        const kiln_load_report *r = &bs[i].rep;
        char rd[32], vf[32], pk[32], fw[32];
        snprintf(rd, sizeof rd, "%.1f-%.1f", rel(r->t_load, t0), rel(r->t_read_end, t0));
        if (r->t_verify_end > 0)
            snprintf(vf, sizeof vf, "%.1f-%.1f", rel(r->t_verify_start, t0), rel(r->t_verify_end, t0));
        else
            snprintf(vf, sizeof vf, "-");
        snprintf(pk, sizeof pk, "%.1f-%.1f", rel(r->t_place_start, t0), rel(r->t_ready, t0));
        if (bs[i].t_fwd_end > 0)
            snprintf(fw, sizeof fw, "%.1f-%.1f", bs[i].t_fwd_start - t0, bs[i].t_fwd_end - t0);
        else
            snprintf(fw, sizeof fw, "-");
        printf("%-20.20s %4d %11.2f ms %15s %15s %15s %6.1f ms %15s\n", base_name(bs[i].path), r->core,
               bs[i].t_load_ret - t0, rd, vf, pk, rel(r->t_ready, t0), fw);
    }
}

/* An SVG picture: one row per model, a bar per phase, time along x. */
static int write_svg(const char *path, const lb_model *bs, int n, double t0, const char *mode, double total)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return cli_error("%s: cannot write the timeline", path);
    double span = total > 0 ? total : 1;
    int W = 900, left = 150, row = 34, top = 40, H = top + row * n + 50;
    double sx = (W - left - 20) / span;
    fprintf(f, "<svg xmlns='http://www.w3.org/2000/svg' width='%d' height='%d' font-family='sans-serif' font-size='12'>\n", W, H);
    fprintf(f, "<rect width='100%%' height='100%%' fill='white'/>\n");
    fprintf(f, "<text x='10' y='20' font-size='14'>kiln load-bench, mode %s: %d models ready and run in %.1f ms</text>\n",
            mode, n, total);
    static const struct { const char *name, *color; } ph[] = {
        { "read", "#8da0cb" }, { "verify", "#fc8d62" }, { "place", "#a6d854" }, { "kernels", "#66c2a5" },
        { "wait/forward", "#e78ac3" },
    };
    for (int i = 0; i < n; i++) {
        const kiln_load_report *r = &bs[i].rep;
        double y = top + i * row;
        double seg[5][2] = {
            { r->t_load, r->t_read_end }, { r->t_verify_start, r->t_verify_end },
            { r->t_place_start, r->t_kernels_start }, { r->t_kernels_start, r->t_ready },
            { r->t_ready > bs[i].t_fwd_start ? r->t_ready : bs[i].t_fwd_start, bs[i].t_fwd_end },
        };
        fprintf(f, "<text x='10' y='%.0f'>%.20s (core %d)</text>\n", y + 16, base_name(bs[i].path), r->core);
        for (int k = 0; k < 5; k++) {
            if (seg[k][0] <= 0 || seg[k][1] <= seg[k][0])
                continue;
            double x = left + (seg[k][0] - t0) * sx, w = (seg[k][1] - seg[k][0]) * sx;
            fprintf(f, "<rect x='%.1f' y='%.0f' width='%.1f' height='22' fill='%s'><title>%s %.2f-%.2f ms</title></rect>\n",
                    x, y, w < 1 ? 1 : w, ph[k].color, ph[k].name, seg[k][0] - t0, seg[k][1] - t0);
        }
    }
    double ly = top + row * n + 20;
    for (int k = 0; k < 5; k++) {
        fprintf(f, "<rect x='%d' y='%.0f' width='12' height='12' fill='%s'/><text x='%d' y='%.0f'>%s</text>\n",
                left + k * 130, ly, ph[k].color, left + k * 130 + 16, ly + 11, ph[k].name);
    }
    fprintf(f, "<line x1='%d' y1='%d' x2='%d' y2='%.0f' stroke='#999'/>\n", left, top - 4, left, ly - 6);
    fprintf(f, "<text x='%d' y='%.0f' text-anchor='end'>%.1f ms</text>\n", W - 20, ly - 8, span);
    fprintf(f, "</svg>\n");
    if (fclose(f) != 0)
        return cli_error("%s: cannot write the timeline", path);
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int cli_load_bench(int argc, char **argv)
{
    const char *svg = NULL, *mode_name = "as-saved";
    int repeat = 1;
    bool run = true;
    lb_model bs[256];
    int n = 0;
    for (int i = 2; i < argc; i++) {
        const char *val;
        int r;
        if ((r = cli_option(argc, argv, &i, "--mode", &val, "load-bench")) != 0) {
            if (r < 0)
                return CLI_USAGE;
            mode_name = val;
        } else if ((r = cli_option(argc, argv, &i, "--svg", &val, "load-bench")) != 0) {
            if (r < 0)
                return CLI_USAGE;
            svg = val;
        } else if ((r = cli_option(argc, argv, &i, "--repeat", &val, "load-bench")) != 0) {
            if (r < 0)
                return CLI_USAGE;
            char *end;
            long v = strtol(val, &end, 10);
            if (*end || v < 1 || v > 10000)
                return cli_usage_error("load-bench", "--repeat wants a count from 1 to 10000, got '%s'", val);
            repeat = (int)v;
        } else if (strcmp(argv[i], "--no-run") == 0) {
            run = false;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return cli_usage_error("load-bench", "unknown option '%s'", argv[i]);
        } else {
            if (n == 256)
                return cli_usage_error("load-bench", "at most 256 artifacts");
            memset(&bs[n], 0, sizeof bs[n]);
            bs[n++].path = argv[i];
        }
    }
    if (n == 0)
        return cli_usage_error("load-bench", "no artifact given");
    int mi = -1;
    for (size_t k = 0; k < sizeof modes / sizeof modes[0]; k++)
        if (strcmp(modes[k].name, mode_name) == 0)
            mi = (int)k;
    if (mi < 0)
        return cli_usage_error("load-bench", "--mode is one of as-saved, eager, lazy, async, lazy-async; got '%s'",
                               mode_name);
    if (!run && modes[mi].mode != KILN_LOAD_EAGER && modes[mi].mode != KILN_LOAD_ASYNC)
        return cli_usage_error("load-bench", "--no-run wants --mode eager or async (a lazy load is placed by its first forward)");
    double totals[10000], t0 = 0;
    for (int r = 0; r < repeat; r++) {
        totals[r] = round_once(bs, n, modes[mi].mode, run, &t0);
        if (totals[r] < 0) {
            release(bs, n);
            return CLI_FAIL;
        }
        if (r + 1 < repeat)
            release(bs, n);
    }
    printf("load-bench: %d model(s), mode %s, %d core(s)\n", n, modes[mi].name, kiln_num_cores());
    print_timeline(bs, n, t0);
    double sorted[10000];
    memcpy(sorted, totals, sizeof(double) * (size_t)repeat);
    qsort(sorted, (size_t)repeat, sizeof(double), cmp_double);
    printf("all ready%s: %.2f ms (median of %d; min %.2f ms)\n", run ? " and run once" : "", sorted[repeat / 2],
           repeat, sorted[0]);
    int rc = 0;
    if (svg) {
        rc = write_svg(svg, bs, n, t0, modes[mi].name, totals[repeat - 1]);
        if (!rc)
            printf("timeline: %s\n", svg);
    }
    release(bs, n);
    return rc;
}
