/*
 * test_zoo.c — the model zoo: real architectures exported from PyTorch without hand edits
 * (tests/models/export_zoo.py), traced by kiln, run, and compared with PyTorch.
 *
 *     test_zoo [ZOODIR] [NAME]...        (default: $KILN_ZOO_DIR; all of ZOODIR/zoo.list)
 *
 * For each model: trace (shapes and dtypes from NAME.input_K.npy), forward on the traced
 * model, compare every output with NAME.output_K.npy (max|diff| / max|ref| <= 1e-4); then
 * save, load, forward again and compare again (the packed weights survive the artifact).
 * Each model runs in its own child process with a time limit, so a crash or hang fails that
 * model only. A model whose export failed (NAME.error) is reported failed with the cause.
 * Prints one line per model (result, export/trace/load/forward times, relative error, and on
 * failure the reason), then `zoo: N passed, N failed`.
 */
#define _GNU_SOURCE
#include "testutil.h"
#include "cli/npy.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REL_TOL    1e-4
#define MAX_IO     8
#define TIMEOUT_S  240
#define FWD_RUNS   3
#define MAX_MODELS 64

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static size_t numel(const kiln_tensor *t)
{
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= (size_t)t->shape[i];
    return n;
}

static int same_spec(const kiln_tensor *a, const kiln_tensor *b)
{
    if (a->dtype != b->dtype || a->ndim != b->ndim)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return 0;
    return 1;
}

/* max|got - ref| / max|ref| over f32 tensors; INFINITY on NaN or Inf. */
static double rel_err(const float *got, const float *ref, size_t n)
{
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (!(d <= md))
            md = isfinite(d) ? d : INFINITY;
        if (fabs(ref[i]) > mr)
            mr = fabs(ref[i]);
    }
    return mr > 0 ? md / mr : md;
}

/* A whole small text file into buf ("" if absent), newlines turned into spaces. */
static int read_text(const char *path, char *buf, size_t n)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        buf[0] = '\0';
        return 0;
    }
    size_t k = fread(buf, 1, n - 1, f);
    fclose(f);
    buf[k] = '\0';
    while (k && (buf[k - 1] == '\n' || buf[k - 1] == ' '))
        buf[--k] = '\0';
    for (char *c = buf; *c; c++)
        if (*c == '\n')
            *c = ' ';
    return 1;
}

/* "export_seconds" from NAME.json (-1 if absent). */
static double export_seconds(const char *dir, const char *name)
{
    char path[1024], text[65536];
    snprintf(path, sizeof path, "%s/%s.json", dir, name);
    if (!read_text(path, text, sizeof text))
        return -1;
    const char *p = strstr(text, "\"export_seconds\":");
    return p ? atof(p + 17) : -1;
}

typedef struct io {
    kiln_tensor in[MAX_IO], ref[MAX_IO], out[MAX_IO];
    size_t n_in, n_out;
} io;

typedef struct times {
    double exp_s, trace_ms, save_ms, load_ms, fwd_ms, err;
} times;

static char why[2048];

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    return 0;
}

static int fail_kiln(const char *what, kiln_status st)
{
    return fail("%s: %s: %s", what, kiln_status_name(st), kiln_last_error());
}

/* Allocates m's outputs (as the model declares them) after checking them against PyTorch's. */
static int alloc_outputs(kiln_model *m, io *x)
{
    if (kiln_model_num_outputs(m) != x->n_out)
        return fail("kiln has %zu outputs, PyTorch %zu", kiln_model_num_outputs(m), x->n_out);
    for (size_t i = 0; i < x->n_out; i++) {
        const char *name;
        kiln_tensor spec;
        kiln_status st = kiln_model_output(m, i, &name, &spec);
        if (st != KILN_OK)
            return fail_kiln("kiln_model_output", st);
        if (!same_spec(&spec, &x->ref[i]))
            return fail("output %zu '%s': kiln declares %s rank %d, PyTorch's is %s rank %d", i,
                        name, kiln_dtype_name(spec.dtype), spec.ndim,
                        kiln_dtype_name(x->ref[i].dtype), x->ref[i].ndim);
        free(x->out[i].data);
        x->out[i] = spec;
        x->out[i].data = calloc(numel(&spec) ? numel(&spec) : 1, kiln_dtype_size(spec.dtype));
        if (!x->out[i].data)
            return fail("out of memory");
    }
    return 1;
}

/* Runs m `runs` times; the worst relative error into *err, the median time into *ms. */
static int run_compare(kiln_model *m, io *x, int runs, double *ms, double *err)
{
    double t[FWD_RUNS];
    *err = 0;
    for (int r = 0; r < runs; r++) {
        for (size_t i = 0; i < x->n_out; i++)
            memset(x->out[i].data, 0xff, numel(&x->out[i]) * kiln_dtype_size(x->out[i].dtype));
        double t0 = now_ms();
        kiln_status st = kiln_forward(m, x->in, x->n_in, x->out, x->n_out);
        t[r] = now_ms() - t0;
        if (st != KILN_OK)
            return fail_kiln("forward", st);
        for (size_t i = 0; i < x->n_out; i++) {
            double e = x->ref[i].dtype == KILN_F32
                     ? rel_err(x->out[i].data, x->ref[i].data, numel(&x->ref[i]))
                     : memcmp(x->out[i].data, x->ref[i].data,
                              numel(&x->ref[i]) * kiln_dtype_size(x->ref[i].dtype)) ? INFINITY : 0;
            if (!(e <= *err))
                *err = e;
        }
    }
    for (int i = 1; i < runs; i++) /* insertion sort for the median */
        for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
            double s = t[j];
            t[j] = t[j - 1];
            t[j - 1] = s;
        }
    *ms = t[runs / 2];
    if (!(*err <= REL_TOL))
        return fail("relative error %.3g > %g", *err, REL_TOL);
    return 1;
}

static int load_io(const char *dir, const char *name, io *x)
{
    char path[1024];
    for (int out = 0; out < 2; out++) {
        kiln_tensor *ts = out ? x->ref : x->in;
        size_t *n = out ? &x->n_out : &x->n_in;
        for (size_t i = 0; i < MAX_IO; i++) {
            snprintf(path, sizeof path, "%s/%s.%s_%zu.npy", dir, name, out ? "output" : "input", i);
            if (access(path, R_OK) != 0)
                break;
            if (npy_read(path, &ts[i]) != KILN_OK)
                return fail("%s: %s", path, npy_last_error());
            ++*n;
        }
    }
    if (!x->n_in || !x->n_out)
        return fail("no inputs or outputs in %s (run export_zoo.py)", dir);
    return 1;
}

/* One model, in the child: returns 1 if it passed; the reason in `why` otherwise. */
static int zoo_model(const char *dir, const char *name, times *tm)
{
    char path[1024];
    io x;
    memset(&x, 0, sizeof x);
    kiln_model *m = NULL, *loaded = NULL;
    kiln_status st;
    int ok = 0;
    double err;

    snprintf(path, sizeof path, "%s/%s.error", dir, name);
    if (read_text(path, why, sizeof why) && why[0]) {
        char e[sizeof why];
        memcpy(e, why, sizeof e);
        snprintf(why, sizeof why, "export failed: %.1900s", e);
        return 0;
    }
    tm->exp_s = export_seconds(dir, name);
    if (!load_io(dir, name, &x))
        goto out;

    snprintf(path, sizeof path, "%s/%s.onnx", dir, name);
    double t0 = now_ms();
    if ((st = kiln_trace(path, x.in, x.n_in, &m)) != KILN_OK) {
        fail_kiln("trace", st);
        goto out;
    }
    tm->trace_ms = now_ms() - t0;
    if (!alloc_outputs(m, &x) || !run_compare(m, &x, FWD_RUNS, &tm->fwd_ms, &tm->err))
        goto out;

    /* the artifact: save, load (eager), run again */
    const char *art = test_path(name);
    t0 = now_ms();
    if ((st = kiln_save(m, art)) != KILN_OK) {
        fail_kiln("save", st);
        goto out;
    }
    tm->save_ms = now_ms() - t0;
    t0 = now_ms();
    st = kiln_load(art, &loaded);
    tm->load_ms = now_ms() - t0;
    unlink(art);
    if (st != KILN_OK) {
        fail_kiln("load", st);
        goto out;
    }
    double ms;
    if (!run_compare(loaded, &x, 1, &ms, &err)) {
        char e[sizeof why];
        memcpy(e, why, sizeof e);
        snprintf(why, sizeof why, "after save/load: %.1900s", e);
        goto out;
    }
    if (err > tm->err)
        tm->err = err;
    ok = 1;
out:
    kiln_model_free(loaded);
    kiln_model_free(m);
    for (size_t i = 0; i < MAX_IO; i++) {
        free(x.in[i].data);
        free(x.ref[i].data);
        free(x.out[i].data);
    }
    return ok;
}

/* Runs one model in a child process; prints its line; returns 1 if it passed. */
static int zoo_isolated(const char *dir, const char *name)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        alarm(TIMEOUT_S);
        times tm = { -1, 0, 0, 0, 0, INFINITY };
        int ok = zoo_model(dir, name, &tm);
        printf("%-16s %s  export %5.1f s  trace %7.1f ms  forward %7.2f ms  save %6.1f ms  "
               "load %6.1f ms  rel err %.2e\n", name, ok ? "ok  " : "FAIL", tm.exp_s, tm.trace_ms,
               tm.fwd_ms, tm.save_ms, tm.load_ms, tm.err);
        if (!ok)
            printf("  %s: %s\n", name, why);
        fflush(stdout);
        exit(ok ? 0 : 1); /* exit, not _exit: lets a sanitizer's leak check run */
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        printf("%-16s FAIL  %s\n", name, sig == SIGALRM ? "timed out" : "crashed");
        printf("  %s: %s (signal %d, %s)\n", name,
               sig == SIGALRM ? "no result within the time limit" : "the child died", sig,
               strsignal(sig));
        fflush(stdout);
        return 0;
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : getenv("KILN_ZOO_DIR");
    if (!dir || !*dir) {
        fprintf(stderr, "usage: test_zoo ZOODIR [NAME]... (or set KILN_ZOO_DIR); make the zoo "
                "with tests/models/export_zoo.py ZOODIR\n");
        printf("zoo: 0 passed, 1 failed\n");
        return 1;
    }
    char path[1024], line[256];
    int passed = 0, failed = 0;
    double t0 = now_ms();
    if (argc > 2) {
        for (int i = 2; i < argc; i++)
            zoo_isolated(dir, argv[i]) ? passed++ : failed++;
    } else {
        /* Read whole before forking: a child's exit would otherwise rewind the shared
         * file offset of a stdio stream still holding buffered input. */
        snprintf(path, sizeof path, "%s/zoo.list", dir);
        FILE *f = fopen(path, "r");
        if (!f) {
            fprintf(stderr, "test_zoo: cannot read %s (%s): run tests/models/export_zoo.py %s\n",
                    path, strerror(errno), dir);
            printf("zoo: 0 passed, 1 failed\n");
            return 1;
        }
        char names[MAX_MODELS][sizeof line];
        int n = 0;
        while (n < MAX_MODELS && fgets(line, sizeof line, f)) {
            line[strcspn(line, " \t\r\n")] = '\0';
            if (line[0] && line[0] != '#')
                snprintf(names[n++], sizeof names[0], "%s", line);
        }
        fclose(f);
        for (int i = 0; i < n; i++)
            zoo_isolated(dir, names[i]) ? passed++ : failed++;
    }
    if (passed + failed == 0) {
        fprintf(stderr, "test_zoo: no model in %s\n", dir);
        failed = 1;
    }
    printf("(%.1f s)\n", (now_ms() - t0) / 1e3);
    printf("zoo: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
