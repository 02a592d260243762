/*
 * test_models.c — real models end to end: PyTorch -> ONNX -> kiln, compared with PyTorch.
 *
 *     test_models [MODELDIR]        (default: $KILN_MODEL_DIR)
 *
 * MODELDIR holds what tests/models/export_models.py writes: NAME.onnx, NAME.input_K.npy,
 * NAME.output_K.npy. For each model present it traces (shapes and dtypes from the .npy
 * inputs), saves, frees, loads, checks the load (LOADED, one placement), runs and compares
 * with PyTorch's output: max|diff| / max|ref| <= 1e-4. It also checks that the lazy and
 * async flags set before kiln_save come back from kiln_load and behave: a lazy model is
 * placed by its first forward, an async one is ready after kiln_wait.
 * Prints per model: trace, save, load and forward times and the relative error, then
 * `models: N passed, N failed` (models, not checks).
 */
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define REL_TOL 1e-4
#define MAX_IO  8

static const char *const MODELS[] = { "resnet18", "mobilenet_v2", "bert" };

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- a small .npy reader (little-endian f4 / i8 / i4, C order, format 1-3) ------------ */

static int npy_load(const char *path, kiln_tensor *t)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    unsigned char pre[12];
    int ok = 0;
    char *hdr = NULL;
    memset(t, 0, sizeof *t);
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0)
        goto out;
    size_t hlen = pre[8] | (size_t)pre[9] << 8;
    if (pre[6] >= 2) {
        if (fread(pre + 10, 1, 2, f) != 2)
            goto out;
        hlen |= (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
    }
    if (hlen > 65536 || !(hdr = calloc(1, hlen + 1)) || fread(hdr, 1, hlen, f) != hlen)
        goto out;
    const char *d = strstr(hdr, "'descr':");
    const char *s = strstr(hdr, "'shape':");
    if (!d || !s || strstr(hdr, "'fortran_order': True"))
        goto out;
    d = strchr(d + 8, '\'');
    if (!d)
        goto out;
    if (!strncmp(d, "'<f4'", 5))
        t->dtype = KILN_F32;
    else if (!strncmp(d, "'<i8'", 5))
        t->dtype = KILN_I64;
    else if (!strncmp(d, "'<i4'", 5))
        t->dtype = KILN_I32;
    else
        goto out;
    s = strchr(s, '(');
    if (!s)
        goto out;
    s++;
    int64_t n = 1;
    while (*s && *s != ')') {
        char *end;
        long long v = strtoll(s, &end, 10);
        if (end == s) {
            s++;
            continue;
        }
        if (t->ndim == KILN_MAX_DIMS || v < 0)
            goto out;
        t->shape[t->ndim++] = v;
        n *= v;
        s = end;
    }
    size_t bytes = (size_t)n * kiln_dtype_size(t->dtype);
    t->data = malloc(bytes ? bytes : 1);
    if (!t->data || fread(t->data, 1, bytes, f) != bytes) {
        free(t->data);
        t->data = NULL;
        goto out;
    }
    ok = 1;
out:
    free(hdr);
    fclose(f);
    return ok;
}

static int file_exists(const char *path)
{
    return access(path, R_OK) == 0;
}


static int same_shape(const kiln_tensor *a, const kiln_tensor *b)
{
    if (a->dtype != b->dtype || a->ndim != b->ndim)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return 0;
    return 1;
}


/* ---- one model ------------------------------------------------------------------------ */

typedef struct io {
    kiln_tensor in[MAX_IO], ref[MAX_IO], out[MAX_IO];
    size_t n_in, n_out;
} io;

/* Allocates m's outputs (shapes as the model declares) and checks them against the refs. */
static int alloc_outputs(kiln_model *m, io *x)
{
    if (!CHECK(kiln_model_num_outputs(m) == x->n_out))
        return 0;
    for (size_t i = 0; i < x->n_out; i++) {
        const char *name;
        kiln_tensor spec;
        if (!CHECK_OK(kiln_model_output(m, i, &name, &spec)))
            return 0;
        if (!CHECK(same_shape(&spec, &x->ref[i]))) {
            fprintf(stderr, "  output %zu '%s': kiln declares a different dtype/shape than "
                    "PyTorch's output\n", i, name);
            return 0;
        }
        free(x->out[i].data);
        x->out[i] = spec;
        x->out[i].data = calloc(test_numel(&spec), kiln_dtype_size(spec.dtype));
    }
    return 1;
}

/* Runs m once; returns the worst relative error over the outputs (INFINITY on failure). */
static double run_and_compare(kiln_model *m, io *x, double *ms)
{
    double t = now_ms();
    if (!CHECK_OK(kiln_forward(m, x->in, x->n_in, x->out, x->n_out)))
        return INFINITY;
    if (ms)
        *ms = now_ms() - t;
    double worst = 0;
    for (size_t i = 0; i < x->n_out; i++) {
        double e = x->ref[i].dtype == KILN_F32
                 ? test_rel_err(x->out[i].data, x->ref[i].data, test_numel(&x->ref[i]))
                 : (memcmp(x->out[i].data, x->ref[i].data,
                           test_numel(&x->ref[i]) * kiln_dtype_size(x->ref[i].dtype)) ? INFINITY : 0);
        if (e > worst || isnan(e))
            worst = isnan(e) ? INFINITY : e;
    }
    return worst;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Saves `traced` with the given flags, loads it back and checks flags, state and output. */
static int check_flags(kiln_model *traced, const char *name, int lazy, int async, io *x)
{
    char file[256];
    snprintf(file, sizeof file, "%s.l%d.a%d.kiln", name, lazy, async);
    const char *path = test_path(file);
    int before = test_failed;
    kiln_model *m = NULL;

    if (!CHECK_OK(kiln_lazy_load(traced, lazy)) || !CHECK_OK(kiln_async_load(traced, async)) ||
        !CHECK_OK(kiln_save(traced, path)) || !CHECK_OK(kiln_load(path, &m)))
        goto out;
    CHECK(kiln_model_is_lazy(m) == lazy);
    CHECK(kiln_model_is_async(m) == async);
    if (lazy) {
        CHECK(kiln_model_state(m) == KILN_UNLOADED);
        CHECK(kiln_model_placements(m, -1) == 0);
    }
    if (!lazy && async) {
        kiln_load_state st = kiln_model_state(m);
        CHECK(st == KILN_LOADING || st == KILN_LOADED);
        CHECK_OK(kiln_wait(m));
        CHECK(kiln_model_state(m) == KILN_LOADED);
        CHECK(kiln_model_placements(m, -1) == 1);
    }
    if (alloc_outputs(m, x)) {
        double e = run_and_compare(m, x, NULL);
        if (!CHECK(e <= REL_TOL))
            fprintf(stderr, "  %s lazy=%d async=%d: rel err %.3g\n", name, lazy, async, e);
    }
    CHECK_OK(kiln_wait(m));
    CHECK(kiln_model_state(m) == KILN_LOADED);
    CHECK(kiln_model_placements(m, -1) == 1);
out:
    kiln_model_free(m);
    unlink(path);
    return test_failed == before;
}

static int test_model(const char *dir, const char *name)
{
    char path[1024];
    io x;
    memset(&x, 0, sizeof x);
    int before = test_failed;
    kiln_model *traced = NULL, *m = NULL;
    double trace_ms = 0, save_ms = 0, load_ms = 0, fwd_ms = 0, err = INFINITY;

    for (size_t i = 0; i < MAX_IO; i++) {
        snprintf(path, sizeof path, "%s/%s.input_%zu.npy", dir, name, i);
        if (!file_exists(path))
            break;
        if (!CHECK(npy_load(path, &x.in[i])))
            goto out;
        x.n_in++;
    }
    for (size_t i = 0; i < MAX_IO; i++) {
        snprintf(path, sizeof path, "%s/%s.output_%zu.npy", dir, name, i);
        if (!file_exists(path))
            break;
        if (!CHECK(npy_load(path, &x.ref[i])))
            goto out;
        x.n_out++;
    }
    if (!CHECK(x.n_in > 0 && x.n_out > 0))
        goto out;

    snprintf(path, sizeof path, "%s/%s.onnx", dir, name);
    double t = now_ms();
    if (!CHECK_OK(kiln_trace(path, x.in, x.n_in, &traced)))
        goto out;
    trace_ms = now_ms() - t;
    CHECK(kiln_model_num_inputs(traced) == x.n_in);
    CHECK(kiln_model_is_lazy(traced) == 0 && kiln_model_is_async(traced) == 0);

    /* The eager artifact: save, free, load, run. */
    const char *art = test_path("model.kiln");
    t = now_ms();
    if (!CHECK_OK(kiln_save(traced, art)))
        goto out;
    save_ms = now_ms() - t;

    /* Flags round-trip (the traced model stays UNLOADED: no forward on it). */
    check_flags(traced, name, 1, 1, &x);
    if (!strcmp(name, "bert")) { /* the smallest: every combination */
        check_flags(traced, name, 1, 0, &x);
        check_flags(traced, name, 0, 1, &x);
    }
    kiln_model_free(traced);
    traced = NULL;

    t = now_ms();
    if (!CHECK_OK(kiln_load(art, &m)))
        goto out;
    load_ms = now_ms() - t;
    CHECK(kiln_model_state(m) == KILN_LOADED);
    CHECK(kiln_model_placements(m, -1) == 1);
    CHECK(kiln_model_is_lazy(m) == 0 && kiln_model_is_async(m) == 0);
    if (!alloc_outputs(m, &x))
        goto out;
    double runs[5];
    err = 0;
    for (int r = 0; r < 5; r++) {
        double e = run_and_compare(m, &x, &runs[r]);
        if (e > err || isnan(e))
            err = isnan(e) ? INFINITY : e;
    }
    qsort(runs, 5, sizeof runs[0], cmp_double);
    fwd_ms = runs[2];
    CHECK(kiln_model_placements(m, -1) == 1);
    if (!CHECK(err <= REL_TOL))
        fprintf(stderr, "  %s: rel err %.3g > %g\n", name, err, REL_TOL);
    unlink(art);

out:
    kiln_model_free(m);
    kiln_model_free(traced);
    for (size_t i = 0; i < MAX_IO; i++) {
        free(x.in[i].data);
        free(x.ref[i].data);
        free(x.out[i].data);
    }
    int ok = test_failed == before;
    printf("%-13s %s  trace %8.1f ms  save %7.1f ms  load %7.2f ms  forward %7.2f ms  "
           "rel err %.2e\n", name, ok ? "ok  " : "FAIL", trace_ms, save_ms, load_ms, fwd_ms, err);
    if (!ok && *kiln_last_error())
        printf("  last error: %s\n", kiln_last_error());
    fflush(stdout);
    return ok;
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : getenv("KILN_MODEL_DIR");
    if (!dir || !*dir) {
        fprintf(stderr, "usage: test_models MODELDIR (or set KILN_MODEL_DIR); "
                "make the models with tests/models/export_models.py MODELDIR\n");
        printf("models: 0 passed, 1 failed\n");
        return 1;
    }
    int passed = 0, failed = 0;
    for (size_t i = 0; i < sizeof MODELS / sizeof MODELS[0]; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s.onnx", dir, MODELS[i]);
        if (!file_exists(path)) {
            printf("%-13s missing (%s)\n", MODELS[i], path);
            continue;
        }
        if (test_model(dir, MODELS[i]))
            passed++;
        else
            failed++;
    }
    if (passed + failed == 0) {
        fprintf(stderr, "test_models: no model in %s\n", dir);
        failed = 1;
    }
    printf("models: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
