/*
 * bench_kiln.c — the kiln side of the benchmark (bench/run.sh): load-to-ready with a warm or
 * cold page cache, time to first inference, forward latency, peak memory and the raw read
 * floor of one artifact, printed as one JSON line. Also the page-cache tool the other sides
 * use (--evict, --resident), so that every side is made cold the same way.
 *
 *     kiln_bench ARTIFACT.kiln --first          a fresh process: first load, first forward,
 *                                               peak RSS (the caller sets the cache state)
 *     kiln_bench ARTIFACT.kiln --load-only      only the first load (for profiling a load)
 *     ... --no-verify                            (with --first) the weights' checksums are
 *                                               not computed, every page of the weights is
 *                                               read instead: what verifying adds to a
 *                                               load is the difference (bench/run.sh)
 *     kiln_bench ARTIFACT.kiln [--loads N] [--cold-loads N] [--runs N] [--warmup N]
 *                [--budget S]                   a warm process (see below)
 *     kiln_bench --make OUT.kiln MODEL.onnx      trace at the ONNX-declared shapes, save
 *     kiln_bench --evict FILE...                 drop FILEs from the page cache
 *                                               (posix_fadvise DONTNEED), then report
 *                                               how many of their pages are still resident
 *     kiln_bench --resident FILE...              only report residency (mincore)
 *
 * --first prints first_load_ms (kiln_load until the model is LOADED, in a process that has
 * loaded nothing yet: kiln's and oneDNN's start-up included), first_forward_ms, ttfi_ms (the
 * two together), rss_before_kb (VmRSS before the load), maxrss_kb (getrusage ru_maxrss after
 * the forward), the page faults of the load and of the first forward, and the load report.
 * It reads nothing else of the file first, so the cache is as the caller left it.
 *
 * The warm-process mode, after a first load and forward, measures (medians and bests):
 *   forward_ms     kiln_forward after --warmup (5) runs, --runs (50) times
 *   read_ms        the floor: reading the whole file into a freshly mapped anonymous buffer
 *                  (page faults of the fresh buffer included), warm page cache, --loads times
 *   read_prefaulted_ms  the same into a buffer touched beforehand (the copy alone)
 *   load_ms        kiln_load until LOADED in a fresh handle, warm page cache, --loads times
 *   cold_load_ms / cold_read_ms  the same after evicting the file from the page cache
 *                  (posix_fadvise; the residency left is reported), --cold-loads (3) times,
 *                  a load and a read taking turns
 * --budget S stops the forward and the warm-load loops early once they have 5 samples and
 * have taken S seconds each (default: no limit); "n" in the output says how many ran.
 * Set KILN_VISIBLE_CORES / KILN_CORE_SIZE to choose the core (bench/run.sh: one thread is
 * KILN_VISIBLE_CORES=0 KILN_CORE_SIZE=1, two threads KILN_VISIBLE_CORES=0-1 KILN_CORE_SIZE=2).
 * Inputs are synthetic: floats in [-1, 1), integers i % 100 (valid token ids for any
 * vocabulary of 100 or more).
 */
#define _GNU_SOURCE
#include "kiln.h"

/* libkiln's benchmark hook (src/format/artifact_impl.h; kiln_bench links the static
 * library): loads read every page of the weights but do not hash them. */
void ka__bench_skip_verify(_Bool skip);

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
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

/* Sorts xs; returns the median (xs[0] is then the best). */
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

/* ---- the page cache ---- */

/* Pages of the file at fd resident in the page cache (mincore on a fresh mapping, which
 * faults nothing in); -1 if it cannot tell. *pages gets the file's page count. */
static long resident_pages(int fd, long *pages)
{
    struct stat st;
    *pages = 0;
    if (fstat(fd, &st) != 0)
        return -1;
    long pg = sysconf(_SC_PAGESIZE);
    *pages = (long)((st.st_size + pg - 1) / pg);
    if (st.st_size == 0)
        return 0;
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED)
        return -1;
    unsigned char *vec = malloc((size_t)*pages);
    long n = -1;
    if (vec && mincore(map, (size_t)st.st_size, vec) == 0) {
        n = 0;
        for (long i = 0; i < *pages; i++)
            n += vec[i] & 1;
    }
    free(vec);
    munmap(map, (size_t)st.st_size);
    return n;
}

/* Evicts the file's clean pages from the page cache (evict) or only looks; returns the
 * pages still resident, or -1. */
static long cache_state(const char *path, int evict, long *pages)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    if (evict) {
        (void)fdatasync(fd); /* dirty pages (a file just written) are not dropped */
        (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    }
    long n = resident_pages(fd, pages);
    close(fd);
    return n;
}

/* --evict / --resident FILE...: one JSON line, {"files": [{file, pages, resident}...]}.
 * Exit status 1 if a file cannot be opened or (with --evict) is not fully evicted. */
static int cache_tool(int evict, int n, char **files)
{
    int rc = 0;
    printf("{\"method\": \"%s\", \"files\": [", evict ? "posix_fadvise" : "mincore");
    for (int i = 0; i < n; i++) {
        long pages, res = cache_state(files[i], evict, &pages);
        if (res < 0 || (evict && res > 0))
            rc = 1;
        printf("%s{\"file\": \"%s\", \"pages\": %ld, \"resident\": %ld}", i ? ", " : "", files[i],
               pages, res);
    }
    printf("]}\n");
    return rc;
}

/* ---- the floor ---- */

/* Reads the whole file into buf (NULL: a freshly mapped anonymous buffer, unmapped after);
 * returns the time taken including the buffer's mapping, or -1. */
static double read_file_ms(const char *path, char *buf, size_t cap)
{
    double t = now_ms();
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    size_t size = (size_t)st.st_size, got = 0;
    char *b = buf;
    if (!b) {
        b = mmap(NULL, size ? size : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (b == MAP_FAILED) {
            close(fd);
            return -1;
        }
    } else if (cap < size) {
        close(fd);
        return -1;
    }
    while (got < size) {
        ssize_t r = read(fd, b + got, size - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    double ms = now_ms() - t;
    if (!buf)
        munmap(b, size ? size : 1);
    return got == size ? ms : -1;
}

/* ---- process figures ---- */

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6))
            kb = atol(line + 6);
    if (f)
        fclose(f);
    return kb;
}

typedef struct faults {
    long minor, major;
} faults;

static faults faults_now(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (faults){ ru.ru_minflt, ru.ru_majflt };
}

/* ---- loading and running ---- */

/* A timed loop stops early once it has at least 5 samples and has run budget_ms (0: never). */
static int over_budget(int n, double t0, double budget_ms)
{
    return n >= 5 && budget_ms > 0 && now_ms() - t0 > budget_ms;
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

static kiln_status forward(kiln_model *m, io *x)
{
    return kiln_forward(m, x->in, x->n_in, x->out, x->n_out);
}

static void print_report(const char *key, const kiln_load_report *r)
{
    printf(", \"%s\": {\"read_ms\": %.4f, \"verify_ms\": %.4f, \"place_ms\": %.4f, "
           "\"kernels_ms\": %.4f, \"total_ms\": %.4f, \"file_bytes\": %llu, \"weight_bytes\": %llu, "
           "\"copied_bytes\": %llu, \"arena_bytes\": %llu, \"core\": %d}",
           key, r->read_ms, r->verify_ms, r->place_ms, r->kernels_ms, r->total_ms,
           (unsigned long long)r->file_bytes, (unsigned long long)r->weight_bytes,
           (unsigned long long)r->copied_bytes, (unsigned long long)r->arena_bytes, r->core);
}

static void print_stat(const char *key, double *xs, int n)
{
    if (n < 1)
        return;
    double med = median(xs, n);
    printf(", \"%s\": {\"median\": %.4f, \"best\": %.4f, \"n\": %d}", key, med, xs[0], n);
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

/* The warm-process measurements after the first load and forward (see the top); frees m. */
static int warm_process(const char *path, kiln_model *m, io *x, int loads, int cold_loads,
                        int runs, int warmup, double budget_ms)
{
    int cap = runs > loads ? runs : loads;
    double *ts = malloc(sizeof(double) * (size_t)(cap > cold_loads ? cap : cold_loads));
    double *cold_read = malloc(sizeof(double) * (size_t)(cold_loads ? cold_loads : 1));
    struct stat st;
    char *pre = NULL;
    kiln_status s = KILN_OK;
    if (!ts || !cold_read || stat(path, &st) != 0 ||
        !(pre = malloc((size_t)st.st_size + 1))) {
        kiln_model_free(m);
        free(ts);
        free(cold_read);
        fprintf(stderr, "kiln_bench: %s: out of memory\n", path);
        return 1;
    }
    memset(pre, 1, (size_t)st.st_size + 1);

    /* Forward latency on the first handle. */
    for (int i = 0; i < warmup && !s; i++)
        s = forward(m, x);
    int n = 0;
    double t0 = now_ms();
    while (n < runs && !s && !over_budget(n, t0, budget_ms)) {
        double t = now_ms();
        s = forward(m, x);
        ts[n++] = now_ms() - t;
    }
    if (s) {
        kiln_model_free(m);
        free(ts), free(cold_read), free(pre);
        return die("forward", s);
    }
    print_stat("forward_ms", ts, n);
    /* Unmapped, so that evicting the file below can drop every page of it. */
    kiln_model_free(m);

    /* The floor, warm: into fresh buffers, then into the touched one. */
    for (int i = 0; i < loads; i++)
        ts[i] = read_file_ms(path, NULL, 0);
    print_stat("read_ms", ts, loads);
    for (int i = 0; i < loads; i++)
        ts[i] = read_file_ms(path, pre, (size_t)st.st_size + 1);
    print_stat("read_prefaulted_ms", ts, loads);
    free(pre);

    /* Load-to-ready in fresh handles, warm page cache. */
    kiln_load_report rep;
    memset(&rep, 0, sizeof rep);
    kiln_model *m2;
    faults f0 = faults_now();
    n = 0;
    t0 = now_ms();
    while (n < loads && !s && !over_budget(n, t0, budget_ms)) {
        s = load_ready(path, &m2, &ts[n]);
        if (!s)
            s = kiln_model_load_report(m2, &rep);
        if (!s)
            kiln_model_free(m2), n++;
    }
    faults f1 = faults_now();
    if (s) {
        free(ts), free(cold_read);
        return die(path, s);
    }
    print_stat("load_ms", ts, n);
    print_report("report", &rep);
    printf(", \"load_minflt\": %.1f", (double)(f1.minor - f0.minor) / n);

    /* Cold: evict the file, then a load; evict, then a read. */
    long worst = 0, pages = 0;
    memset(&rep, 0, sizeof rep);
    for (int i = 0; i < cold_loads && !s; i++) {
        long res = cache_state(path, 1, &pages);
        worst = res < 0 || res > worst ? (res < 0 ? pages : res) : worst;
        s = load_ready(path, &m2, &ts[i]);
        if (!s && i == cold_loads - 1)
            s = kiln_model_load_report(m2, &rep);
        if (!s)
            kiln_model_free(m2);
        res = cache_state(path, 1, &pages);
        worst = res < 0 || res > worst ? (res < 0 ? pages : res) : worst;
        cold_read[i] = read_file_ms(path, NULL, 0);
    }
    if (s) {
        free(ts), free(cold_read);
        return die(path, s);
    }
    if (cold_loads > 0) {
        print_stat("cold_load_ms", ts, cold_loads);
        print_stat("cold_read_ms", cold_read, cold_loads);
        print_report("cold_report", &rep);
        printf(", \"cold_evict\": {\"method\": \"posix_fadvise\", \"pages\": %ld, "
               "\"max_resident\": %ld}", pages, worst);
    }
    free(ts);
    free(cold_read);
    return 0;
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    int loads = 10, cold_loads = 3, runs = 50, warmup = 5, first = 0, load_only = 0;
    double budget = 0;
    if (argc >= 2 && (!strcmp(argv[1], "--evict") || !strcmp(argv[1], "--resident")))
        return cache_tool(!strcmp(argv[1], "--evict"), argc - 2, argv + 2);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--make") && i + 2 < argc)
            return make(argv[i + 1], argv[i + 2]);
        else if (!strcmp(argv[i], "--loads") && i + 1 < argc)
            loads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--cold-loads") && i + 1 < argc)
            cold_loads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
            runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--warmup") && i + 1 < argc)
            warmup = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--budget") && i + 1 < argc)
            budget = atof(argv[++i]);
        else if (!strcmp(argv[i], "--first") || !strcmp(argv[i], "--first-only"))
            first = 1;
        else if (!strcmp(argv[i], "--load-only"))
            load_only = 1;
        else if (!strcmp(argv[i], "--no-verify"))
            ka__bench_skip_verify(1);
        else if (argv[i][0] != '-' && !path)
            path = argv[i];
        else
            path = NULL, argc = 0;
    }
    if (!path || loads < 1 || loads > 1000 || cold_loads < 0 || cold_loads > 1000 || runs < 1 ||
        runs > 100000 || warmup < 0 || warmup > 1000 || budget < 0) {
        fprintf(stderr, "usage: kiln_bench ARTIFACT.kiln --first | --load-only [--no-verify]\n"
                        "       kiln_bench ARTIFACT.kiln [--loads N] [--cold-loads N] [--runs N] [--warmup N] [--budget S]\n"
                        "       kiln_bench --make OUT.kiln MODEL.onnx\n"
                        "       kiln_bench --evict|--resident FILE...\n");
        return 2;
    }

    /* The first load and forward of this process, the page cache as the caller left it. */
    long pages = 0, resident = 0;
    {
        int fd = open(path, O_RDONLY);
        if (fd < 0) {
            fprintf(stderr, "kiln_bench: %s: cannot open\n", path);
            return 1;
        }
        resident = load_only ? 0 : resident_pages(fd, &pages); /* not in a profile */
        close(fd);
    }
    long rss0 = rss_kb();
    kiln_model *m;
    double load_ms, fwd_ms;
    faults f0 = faults_now();
    kiln_status s = load_ready(path, &m, &load_ms);
    faults f1 = faults_now();
    if (s)
        return die(path, s);
    if (load_only) {
        printf("{\"artifact\": \"%s\", \"first_load_ms\": %.3f}\n", path, load_ms);
        kiln_model_free(m);
        return 0;
    }
    kiln_load_report rep;
    memset(&rep, 0, sizeof rep);
    io x;
    if (kiln_model_load_report(m, &rep) != KILN_OK || !io_make(m, &x)) {
        kiln_model_free(m);
        io_free(&x);
        fprintf(stderr, "kiln_bench: %s: cannot set up inputs/outputs\n", path);
        return 1;
    }
    faults f2 = faults_now();
    double t = now_ms();
    s = forward(m, &x);
    fwd_ms = now_ms() - t;
    faults f3 = faults_now();
    if (s) {
        kiln_model_free(m);
        io_free(&x);
        return die("forward", s);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"artifact\": \"%s\", \"cores\": %d, \"file_pages\": %ld, \"resident_before\": %ld, "
           "\"first_load_ms\": %.3f, \"first_forward_ms\": %.3f, \"ttfi_ms\": %.3f, "
           "\"rss_before_kb\": %ld, \"maxrss_kb\": %ld, \"load_faults\": [%ld, %ld], "
           "\"forward_faults\": [%ld, %ld]",
           path, kiln_num_cores(), pages, resident, load_ms, fwd_ms, load_ms + fwd_ms, rss0,
           (long)ru.ru_maxrss, f1.minor - f0.minor, f1.major - f0.major, f3.minor - f2.minor,
           f3.major - f2.major);
    print_report("first_report", &rep);
    int rc = 0;
    if (!first)
        rc = warm_process(path, m, &x, loads, cold_loads, runs, warmup, budget * 1e3);
    else
        kiln_model_free(m);
    io_free(&x);
    printf("}\n");
    return rc;
}
