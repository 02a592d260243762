/*
 * bench_kiln.c — the kiln side of the benchmark: load-to-ready, forward latency and the raw
 * read floor of one artifact, printed as one JSON line.
 *
 *     kiln_bench ARTIFACT.kiln [--loads N] [--runs N] [--first-only]
 *     kiln_bench --make OUT.kiln MODEL.onnx      trace at the ONNX-declared shapes, save
 *
 * Measures, in this order:
 *   first_load_ms   the first kiln_load in this process (until the model is LOADED): what a
 *                   fresh process pays, library and kernel-library start-up included
 *   first_forward_ms the first forward after it
 *   read_ms         reading the whole file into a freshly allocated buffer (median of
 *                   --loads): the floor a loader that copies the file cannot beat
 *   load_ms         kiln_load until LOADED in a fresh handle each time, warm page cache
 *                   (median and best of --loads)
 *   forward_ms      kiln_forward after warm-up (median and best of --runs)
 * plus the load report of the last load (phases, bytes mapped/copied).
 * Set KILN_VISIBLE_CORES / KILN_CORE_SIZE to choose the core (the bench runner uses one
 * CPU: KILN_VISIBLE_CORES=0 KILN_CORE_SIZE=1). Inputs are synthetic: floats in [-1, 1),
 * integers i % 100 (valid token ids for any vocabulary of 100 or more).
 */
#include "kiln.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_IO 16

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *xs, int n)
{
    qsort(xs, (size_t)n, sizeof xs[0], cmp_double);
    return n % 2 ? xs[n / 2] : (xs[n / 2 - 1] + xs[n / 2]) / 2;
}

static int die(const char *what, kiln_status s)
{
    fprintf(stderr, "kiln_bench: %s: %s: %s\n", what, kiln_status_name(s), kiln_last_error());
    return 1;
}

static size_t numel(const kiln_tensor *t)
{
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= (size_t)t->shape[i];
    return n;
}

/* Reads the whole file into a new buffer; returns the time taken, or -1. */
static double read_file_ms(const char *path)
{
    double t = now_ms();
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (buf && got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    double ms = now_ms() - t;
    free(buf);
    return got == (size_t)st.st_size ? ms : -1;
}

/* Loads until the model is ready to run (eager: on return; async: after kiln_wait). */
static kiln_status load_ready(const char *path, kiln_model **m, double *ms)
{
    double t = now_ms();
    kiln_status s = kiln_load(path, m);
    if (s == KILN_OK && !kiln_model_is_lazy(*m))
        s = kiln_wait(*m);
    *ms = now_ms() - t;
    return s;
}

typedef struct io {
    kiln_tensor in[MAX_IO], out[MAX_IO];
    size_t n_in, n_out;
} io;

static int io_make(kiln_model *m, io *x)
{
    memset(x, 0, sizeof *x);
    x->n_in = kiln_model_num_inputs(m);
    x->n_out = kiln_model_num_outputs(m);
    if (x->n_in > MAX_IO || x->n_out > MAX_IO)
        return 0;
    for (size_t i = 0; i < x->n_in + x->n_out; i++) {
        int is_in = i < x->n_in;
        size_t k = is_in ? i : i - x->n_in;
        const char *name;
        kiln_tensor *t = is_in ? &x->in[k] : &x->out[k];
        if ((is_in ? kiln_model_input(m, k, &name, t) : kiln_model_output(m, k, &name, t)) != KILN_OK)
            return 0;
        size_t n = numel(t);
        t->data = calloc(n ? n : 1, kiln_dtype_size(t->dtype));
        if (!t->data)
            return 0;
        if (!is_in)
            continue;
        uint32_t r = 12345;
        for (size_t j = 0; j < n; j++) {
            r = r * 1664525u + 1013904223u;
            switch (t->dtype) {
            case KILN_F32: ((float *)t->data)[j] = (float)(r >> 8) / (float)(1u << 23) - 1.0f; break;
            case KILN_F64: ((double *)t->data)[j] = (double)(r >> 8) / (double)(1u << 23) - 1.0; break;
            case KILN_I64: ((int64_t *)t->data)[j] = (int64_t)(j % 100); break;
            case KILN_I32: ((int32_t *)t->data)[j] = (int32_t)(j % 100); break;
            default: break; /* zeros */
            }
        }
    }
    return 1;
}

static void io_free(io *x)
{
    for (size_t i = 0; i < MAX_IO; i++) {
        free(x->in[i].data);
        free(x->out[i].data);
    }
}

/* --make OUT.kiln MODEL.onnx: trace at the declared shapes (dynamic dims are an error). */
static int make(const char *out, const char *onnx)
{
    kiln_onnx *g;
    kiln_status s = kiln_onnx_open(onnx, &g);
    if (s)
        return die(onnx, s);
    size_t n = kiln_onnx_num_inputs(g);
    kiln_tensor ex[MAX_IO];
    if (n > MAX_IO) {
        kiln_onnx_free(g);
        fprintf(stderr, "kiln_bench: %s: too many inputs\n", onnx);
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        const char *name;
        if ((s = kiln_onnx_input(g, i, &name, &ex[i])) != KILN_OK) {
            kiln_onnx_free(g);
            return die(onnx, s);
        }
    }
    kiln_model *m;
    double t = now_ms();
    s = kiln_onnx_trace(g, ex, n, &m);
    double trace_ms = now_ms() - t;
    kiln_onnx_free(g);
    if (s)
        return die(onnx, s);
    t = now_ms();
    s = kiln_save(m, out);
    double save_ms = now_ms() - t;
    kiln_model_free(m);
    if (s)
        return die(out, s);
    printf("{\"trace_ms\": %.3f, \"save_ms\": %.3f}\n", trace_ms, save_ms);
    return 0;
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    int loads = 10, runs = 50, first_only = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--make") && i + 2 < argc)
            return make(argv[i + 1], argv[i + 2]);
        else if (!strcmp(argv[i], "--loads") && i + 1 < argc)
            loads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
            runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--first-only"))
            first_only = 1;
        else if (argv[i][0] != '-' && !path)
            path = argv[i];
        else
            path = NULL, argc = 0;
    }
    if (!path || loads < 1 || loads > 1000 || runs < 1 || runs > 100000) {
        fprintf(stderr, "usage: kiln_bench ARTIFACT.kiln [--loads N] [--runs N] [--first-only]\n"
                        "       kiln_bench --make OUT.kiln MODEL.onnx\n");
        return 2;
    }

    /* Warm the page cache, then the first load of this process. */
    if (read_file_ms(path) < 0) {
        fprintf(stderr, "kiln_bench: %s: cannot read\n", path);
        return 1;
    }
    kiln_model *m;
    double first_load, t;
    kiln_status s = load_ready(path, &m, &first_load);
    if (s)
        return die(path, s);
    io x;
    if (!io_make(m, &x)) {
        kiln_model_free(m);
        io_free(&x);
        fprintf(stderr, "kiln_bench: %s: cannot set up inputs/outputs\n", path);
        return 1;
    }
    t = now_ms();
    s = kiln_forward(m, x.in, x.n_in, x.out, x.n_out);
    double first_fwd = now_ms() - t;
    if (s) {
        kiln_model_free(m);
        io_free(&x);
        return die("forward", s);
    }
    printf("{\"artifact\": \"%s\", \"cores\": %d, \"first_load_ms\": %.3f, "
           "\"first_forward_ms\": %.3f", path, kiln_num_cores(), first_load, first_fwd);
    if (first_only) {
        kiln_model_free(m);
        io_free(&x);
        printf("}\n");
        return 0;
    }

    /* Forward latency on this (first) handle. */
    double *ts = malloc(sizeof(double) * (size_t)(runs > loads ? runs : loads));
    if (!ts)
        return 1;
    for (int i = 0; i < 5 && !s; i++)
        s = kiln_forward(m, x.in, x.n_in, x.out, x.n_out);
    for (int i = 0; i < runs && !s; i++) {
        t = now_ms();
        s = kiln_forward(m, x.in, x.n_in, x.out, x.n_out);
        ts[i] = now_ms() - t;
    }
    kiln_model_free(m);
    if (s) {
        free(ts);
        io_free(&x);
        return die("forward", s);
    }
    double fwd_med = median(ts, runs), fwd_best = ts[0];

    /* The raw read floor. */
    for (int i = 0; i < loads; i++)
        ts[i] = read_file_ms(path);
    double read_med = median(ts, loads), read_best = ts[0];

    /* Load-to-ready in fresh handles (warm process, warm page cache). */
    kiln_load_report rep;
    memset(&rep, 0, sizeof rep);
    for (int i = 0; i < loads && !s; i++) {
        s = load_ready(path, &m, &ts[i]);
        if (!s && i == loads - 1)
            s = kiln_model_load_report(m, &rep);
        if (!s)
            kiln_model_free(m);
    }
    io_free(&x);
    if (s) {
        free(ts);
        return die(path, s);
    }
    double load_med = median(ts, loads), load_best = ts[0];
    free(ts);

    printf(", \"forward_ms\": {\"median\": %.4f, \"best\": %.4f, \"n\": %d}"
           ", \"read_ms\": {\"median\": %.4f, \"best\": %.4f, \"n\": %d}"
           ", \"load_ms\": {\"median\": %.4f, \"best\": %.4f, \"n\": %d}"
           ", \"report\": {\"read_ms\": %.4f, \"verify_ms\": %.4f, \"place_ms\": %.4f, "
           "\"kernels_ms\": %.4f, \"total_ms\": %.4f, \"file_bytes\": %llu, "
           "\"weight_bytes\": %llu, \"copied_bytes\": %llu, \"arena_bytes\": %llu, \"core\": %d}}\n",
           fwd_med, fwd_best, runs, read_med, read_best, loads, load_med, load_best, loads,
           rep.read_ms, rep.verify_ms, rep.place_ms, rep.kernels_ms, rep.total_ms,
           (unsigned long long)rep.file_bytes, (unsigned long long)rep.weight_bytes,
           (unsigned long long)rep.copied_bytes, (unsigned long long)rep.arena_bytes, rep.core);
    return 0;
}
