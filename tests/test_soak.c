/*
 * test_soak.c — a stress/soak run of the runtime: several threads (KILN_SOAK_THREADS,
 * default 6) for a fixed time (KILN_SOAK_SECONDS, default 5; scripts/soak.sh runs minutes
 * under TSan and ASan) pick operations at random on a shared table of loaded models:
 *
 *   forward       kiln_forward on a shared model (many threads at once), output checked
 *   dp            kiln_data_parallel over a random set of cores + kiln_dp_forward on a random
 *                 batch (dynamic batching; sometimes switched off on an exact batch), each
 *                 output row checked, kiln_dp_free; or kiln_dp_forward on the table entry's
 *                 shared kiln_dp (all cores), used by several threads at once
 *   load          replace a table entry: free the old model (and its dp), kiln_load_ex the
 *                 artifact of a random model in a random mode (as saved, eager, lazy, async,
 *                 lazy+async) on a random core or the default one; half the time make it a
 *                 shared kiln_dp over every core
 *   free          free a table entry
 *   query         kiln_model_state / placements / load report / kiln_wait on a shared model
 *   load+free     a private model loaded async (or lazy+async and triggered) and freed at
 *                 once, while its placement may still be queued or running
 *   trace+save    kiln_trace, flags, kiln_save to a per-thread path, load it back, forward
 *
 * A table entry is guarded by a reader-writer lock (the API contract: kiln_model_free must
 * not run concurrently with other calls on the same model; everything else may). A
 * watchdog aborts with a message after KILN_SOAK_WATCHDOG seconds (default 60) without
 * progress. No call may fail, no output may be wrong; leaks show in the ASan build at exit.
 * Prints the count of every operation. Models: tests/trace/make_trace_models.py and
 * tests/reliability_models.py, as in test_faults.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "base/base.h"
#include "cli/npy.h"

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct soak_model {
    const char *name;
    char        onnx[1024];
    const char *art;            /* traced and saved once, no flags */
    kiln_tensor x, ref;         /* traced input and its reference output */
} soak_model;

#define MAX_MODELS 4
static soak_model models[MAX_MODELS];
static int n_models;

enum { N_SLOTS = 8 };
typedef struct slot {
    pthread_rwlock_t lock;      /* read: calls on m and dp; write: replace/free them */
    kiln_model      *m;
    kiln_dp         *dp;        /* NULL, or data-parallel over every core, shared by threads */
    int              model;     /* index in models[] */
} slot;
static slot slots[N_SLOTS];

enum op_kind { OP_FORWARD, OP_DP, OP_LOAD, OP_FREE, OP_QUERY, OP_LOAD_FREE, OP_TRACE_SAVE, N_OPS };
static const char *const op_names[N_OPS] = { "forward", "dp", "load", "free", "query", "load+free", "trace+save" };
/* percent of picks */
static const int op_weight[N_OPS] = { 45, 15, 12, 6, 10, 8, 4 };

static atomic_long op_count[N_OPS];
static atomic_long progress;            /* bumped by every finished operation */
static atomic_int  stop;
static atomic_long wrong_outputs, failures;
static _Atomic(const char *) doing[64]; /* per thread: the operation in progress */
static int n_threads;
static double deadline;
static int n_cores;

static size_t numel(const kiln_tensor *t) { return (size_t)kiln__numel(t->ndim, t->shape); }

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static bool load_model(soak_model *sm, const char *dir, const char *name)
{
    char p[1024];
    sm->name = name;
    snprintf(sm->onnx, sizeof sm->onnx, "%s/%s.onnx", dir, name);
    snprintf(p, sizeof p, "%s/%s.in.npy", dir, name);
    if (!CHECK(npy_read(p, &sm->x) == KILN_OK))
        return false;
    snprintf(p, sizeof p, "%s/%s.out.npy", dir, name);
    if (!CHECK(npy_read(p, &sm->ref) == KILN_OK))
        return false;
    kiln_tensor spec = sm->x;
    spec.data = NULL;
    kiln_model *m = NULL;
    if (!CHECK_OK(kiln_trace(sm->onnx, &spec, 1, &m)))
        return false;
    char f[256];
    snprintf(f, sizeof f, "%s.kiln", name);
    sm->art = strdup(test_path(f));
    bool ok = CHECK_OK(kiln_save(m, sm->art));
    kiln_model_free(m);
    return ok;
}

static void fail(const char *what, const soak_model *sm, kiln_status s)
{
    atomic_fetch_add(&failures, 1);
    CHECK(!"operation failed");
    fprintf(stderr, "  %s on %s: %s: %s\n", what, sm->name, kiln_status_name(s), kiln_last_error());
}

static bool close_rows(const float *out, const float *ref, size_t n)
{
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        md = fmax(md, fabs((double)out[i] - ref[i]));
        mr = fmax(mr, fabs((double)ref[i]));
    }
    return md <= 1e-4 * (mr > 0 ? mr : 1);
}

static void check_output(const char *what, const soak_model *sm, const float *out, const float *ref, size_t n)
{
    if (close_rows(out, ref, n))
        return;
    atomic_fetch_add(&wrong_outputs, 1);
    CHECK(!"wrong output");
    fprintf(stderr, "  %s on %s: wrong output\n", what, sm->name);
}

static void forward_checked(const char *what, const soak_model *sm, kiln_model *m)
{
    kiln_tensor out = sm->ref;
    out.data = malloc(numel(&sm->ref) * sizeof(float));
    kiln_status s = kiln_forward(m, &sm->x, 1, &out, 1);
    if (s != KILN_OK)
        fail(what, sm, s);
    else
        check_output(what, sm, out.data, sm->ref.data, numel(&sm->ref));
    free(out.data);
}

/* Data-parallel on a random set of cores and a random batch: row r of the input is row
 * r mod T of the traced input (T its traced batch), so row r of every output is row r mod T
 * of the reference. With `shared`, on that dp (other threads use it at the same time). */
static void dp_checked(const soak_model *sm, kiln_model *m, kiln_dp *shared, uint64_t *seed)
{
    int cores[64], n = 0;
    if (rnd(seed) % 4 != 0) {
        for (int c = 0; c < n_cores && c < 64; c++)
            if (rnd(seed) % 2)
                cores[n++] = c;
        if (n == 0)
            cores[n++] = (int)(rnd(seed) % (uint64_t)n_cores);
    }
    int n_rep = n ? n : n_cores;
    int64_t T = sm->x.shape[0], To = sm->ref.shape[0];
    if (shared)
        n = 0;
    bool exact = !shared && rnd(seed) % 4 == 0; /* dynamic batching switched off, batch = n x T */
    int64_t B = exact ? n_rep * T : 1 + (int64_t)(rnd(seed) % 6);
    size_t in_row = numel(&sm->x) / (size_t)T, out_row = numel(&sm->ref) / (size_t)To;
    int64_t Bo = B * To / T;
    kiln_tensor x = sm->x, y = sm->ref;
    x.shape[0] = B;
    y.shape[0] = Bo;
    x.data = malloc((size_t)B * in_row * sizeof(float));
    y.data = calloc((size_t)Bo * out_row, sizeof(float));
    for (int64_t r = 0; r < B; r++)
        memcpy((float *)x.data + r * in_row, (float *)sm->x.data + (r % T) * in_row, in_row * sizeof(float));
    kiln_dp *dp = shared;
    kiln_status s = shared ? KILN_OK : kiln_data_parallel(m, n ? cores : NULL, (size_t)n, 0, 1, &dp);
    if (s == KILN_OK && exact)
        s = kiln_dp_disable_dynamic_batching(dp);
    if (s == KILN_OK)
        s = kiln_dp_forward(dp, &x, 1, &y, 1);
    if (s != KILN_OK) {
        fail("dp", sm, s);
    } else {
        for (int64_t r = 0; r < Bo; r++)
            check_output("dp", sm, (float *)y.data + r * out_row, (float *)sm->ref.data + (r % To) * out_row,
                         out_row);
    }
    if (!shared)
        kiln_dp_free(dp);
    free(x.data);
    free(y.data);
}

static kiln_load_params random_params(uint64_t *seed)
{
    kiln_load_params p = kiln_load_default_params();
    p.mode = (kiln_load_mode)(rnd(seed) % 5);
    p.core = rnd(seed) % 2 ? -1 : (int)(rnd(seed) % (uint64_t)n_cores);
    return p;
}

static void op_forward(slot *sl)
{
    pthread_rwlock_rdlock(&sl->lock);
    if (sl->m)
        forward_checked("forward", &models[sl->model], sl->m);
    pthread_rwlock_unlock(&sl->lock);
}

static void op_dp(slot *sl, uint64_t *seed)
{
    pthread_rwlock_rdlock(&sl->lock);
    if (sl->m)
        dp_checked(&models[sl->model], sl->m, sl->dp && rnd(seed) % 2 ? sl->dp : NULL, seed);
    pthread_rwlock_unlock(&sl->lock);
}

static void op_load(slot *sl, uint64_t *seed)
{
    int mi = (int)(rnd(seed) % (uint64_t)n_models);
    kiln_load_params prm = random_params(seed);
    pthread_rwlock_wrlock(&sl->lock);
    kiln_dp_free(sl->dp);
    sl->dp = NULL;
    kiln_model_free(sl->m);
    sl->m = NULL;
    kiln_status s = kiln_load_ex(models[mi].art, &prm, &sl->m);
    if (s != KILN_OK)
        fail("load", &models[mi], s);
    else if (rnd(seed) % 2 && (s = kiln_data_parallel(sl->m, NULL, 0, 0, 1, &sl->dp)) != KILN_OK)
        fail("data_parallel (shared)", &models[mi], s);
    sl->model = mi;
    pthread_rwlock_unlock(&sl->lock);
}

static void op_free(slot *sl)
{
    pthread_rwlock_wrlock(&sl->lock);
    kiln_dp_free(sl->dp);
    sl->dp = NULL;
    kiln_model_free(sl->m);
    sl->m = NULL;
    pthread_rwlock_unlock(&sl->lock);
}

static void op_query(slot *sl, uint64_t *seed)
{
    pthread_rwlock_rdlock(&sl->lock);
    kiln_model *m = sl->m;
    if (m) {
        const soak_model *sm = &models[sl->model];
        kiln_load_state st = kiln_model_state(m);
        CHECK(st != KILN_FAILED);
        uint32_t all = kiln_model_placements(m, -1), sum = 0;
        for (int c = 0; c < n_cores; c++)
            sum += kiln_model_placements(m, c);
        CHECK(sum >= all); /* placements only grow between the two reads */
        kiln_load_report r;
        kiln_status s = kiln_model_load_report(m, &r);
        if (s != KILN_OK)
            fail("load report", sm, s);
        if (rnd(seed) % 2 && (s = kiln_wait(m)) != KILN_OK)
            fail("wait", sm, s);
        const char *name = NULL;
        kiln_tensor spec;
        CHECK(kiln_model_num_inputs(m) == 1 && kiln_model_input(m, 0, &name, &spec) == KILN_OK && name);
    }
    pthread_rwlock_unlock(&sl->lock);
}

/* A private model freed right after its load was triggered. */
static void op_load_free(uint64_t *seed)
{
    const soak_model *sm = &models[rnd(seed) % (uint64_t)n_models];
    kiln_load_params prm = kiln_load_default_params();
    prm.mode = rnd(seed) % 2 ? KILN_LOAD_ASYNC : KILN_LOAD_LAZY_ASYNC;
    kiln_model *m = NULL;
    kiln_status s = kiln_load_ex(sm->art, &prm, &m);
    if (s != KILN_OK) {
        fail("load+free", sm, s);
        return;
    }
    if (prm.mode == KILN_LOAD_LAZY_ASYNC && rnd(seed) % 2) {
        /* trigger the placement through data-parallel (async: returns at once) */
        kiln_dp *dp = NULL;
        if ((s = kiln_data_parallel(m, NULL, 0, 0, 1, &dp)) != KILN_OK)
            fail("load+free dp", sm, s);
        kiln_dp_free(dp);
    }
    kiln_model_free(m);
}

static void op_trace_save(int thread, uint64_t *seed)
{
    const soak_model *sm = &models[rnd(seed) % (uint64_t)n_models];
    kiln_tensor spec = sm->x;
    spec.data = NULL;
    kiln_model *m = NULL;
    kiln_status s = kiln_trace(sm->onnx, &spec, 1, &m);
    if (s != KILN_OK) {
        fail("trace", sm, s);
        return;
    }
    int lazy = (int)(rnd(seed) % 2), async = (int)(rnd(seed) % 2);
    kiln_lazy_load(m, lazy);
    kiln_async_load(m, async);
    char path[1200]; /* not test_path(): its rotating buffer is not for threads */
    snprintf(path, sizeof path, "%s/soak-thread-%d.kiln", test_tmpdir(), thread);
    if ((s = kiln_save(m, path)) != KILN_OK)
        fail("save", sm, s);
    if (rnd(seed) % 2)
        forward_checked("forward (traced)", sm, m);
    kiln_model_free(m);
    if (s == KILN_OK) {
        kiln_model *l = NULL;
        if ((s = kiln_load(path, &l)) != KILN_OK) {
            fail("load saved", sm, s);
        } else {
            CHECK(kiln_model_is_lazy(l) == lazy && kiln_model_is_async(l) == async);
            forward_checked("forward (saved)", sm, l);
        }
        kiln_model_free(l);
    }
}

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    uint64_t seed = 0x9e3779b97f4a7c15ull * (uint64_t)(id + 1) ^ (uint64_t)atol(getenv("KILN_SOAK_SEED") ?
                                                                                getenv("KILN_SOAK_SEED") : "1");
    if (!seed)
        seed = 1;
    while (!atomic_load(&stop) && kiln__now() < deadline) {
        int pick = (int)(rnd(&seed) % 100), op = 0;
        while (pick >= op_weight[op])
            pick -= op_weight[op++];
        slot *sl = &slots[rnd(&seed) % N_SLOTS];
        atomic_store(&doing[id], op_names[op]);
        switch (op) {
        case OP_FORWARD: op_forward(sl); break;
        case OP_DP: op_dp(sl, &seed); break;
        case OP_LOAD: op_load(sl, &seed); break;
        case OP_FREE: op_free(sl); break;
        case OP_QUERY: op_query(sl, &seed); break;
        case OP_LOAD_FREE: op_load_free(&seed); break;
        case OP_TRACE_SAVE: op_trace_save(id, &seed); break;
        }
        atomic_store(&doing[id], "idle");
        atomic_fetch_add(&op_count[op], 1);
        atomic_fetch_add(&progress, 1);
    }
    return NULL;
}

/* Aborts when no operation finishes for `limit` seconds: a deadlock or a lost wakeup. */
static void *watchdog(void *arg)
{
    double limit = *(double *)arg, last_change = kiln__now();
    long last = -1;
    while (!atomic_load(&stop)) {
        usleep(100 * 1000);
        long p = atomic_load(&progress);
        if (p != last) {
            last = p;
            last_change = kiln__now();
        } else if (kiln__now() - last_change > limit) {
            fprintf(stderr, "test_soak: WATCHDOG: no operation finished for %.0f s (%ld done); threads are in:\n",
                    limit, p);
            for (int i = 0; i < n_threads; i++)
                fprintf(stderr, "  thread %d: %s\n", i, atomic_load(&doing[i]));
            abort();
        }
    }
    return NULL;
}

static double env_num(const char *name, double dflt)
{
    const char *v = getenv(name);
    return v && *v ? atof(v) : dflt;
}

int main(void)
{
    const char *trace_dir = getenv("KILN_TRACE_MODELS"), *rel_dir = getenv("KILN_RELIABILITY_MODELS");
    if (!trace_dir || !rel_dir) {
        fprintf(stderr, "KILN_TRACE_MODELS and KILN_RELIABILITY_MODELS must be set (run through ctest)\n");
        return 1;
    }
    double seconds = env_num("KILN_SOAK_SECONDS", 5), limit = env_num("KILN_SOAK_WATCHDOG", 60);
    n_threads = (int)env_num("KILN_SOAK_THREADS", 6);
    if (n_threads < 1 || n_threads > 64)
        n_threads = 6;
    static const struct { int rel; const char *name; } list[] = {
        { 0, "conv_bn_relu" }, { 0, "residual_block" }, { 0, "matmul_gelu" }, { 1, "attention" },
    };
    for (size_t i = 0; i < sizeof list / sizeof list[0]; i++)
        if (load_model(&models[n_models], list[i].rel ? rel_dir : trace_dir, list[i].name))
            n_models++;
    if (n_models != MAX_MODELS)
        return test_done("test_soak");
    n_cores = kiln_num_cores();
    CHECK(n_cores >= 1);

    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    for (int i = 0; i < N_SLOTS; i++) {
        pthread_rwlock_init(&slots[i].lock, &ra);
        slots[i].model = i % n_models;
        CHECK_OK(kiln_load(models[i % n_models].art, &slots[i].m));
    }
    pthread_rwlockattr_destroy(&ra);

    double t0 = kiln__now();
    deadline = t0 + seconds;
    pthread_t th[64], wd;
    pthread_create(&wd, NULL, watchdog, &limit);
    for (int i = 0; i < n_threads; i++)
        pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i);
    for (int i = 0; i < n_threads; i++)
        pthread_join(th[i], NULL);
    double elapsed = kiln__now() - t0;
    /* the table's models all still run correctly */
    for (int i = 0; i < N_SLOTS; i++) {
        if (slots[i].m) {
            forward_checked("final forward", &models[slots[i].model], slots[i].m);
            CHECK(kiln_model_state(slots[i].m) == KILN_LOADED);
        }
        kiln_dp_free(slots[i].dp);
        kiln_model_free(slots[i].m);
        pthread_rwlock_destroy(&slots[i].lock);
    }
    atomic_store(&stop, 1);
    pthread_join(wd, NULL);

    long total = 0;
    printf("test_soak: %.1f s, %d threads, %d cores, %d models:", elapsed, n_threads, n_cores, n_models);
    for (int i = 0; i < N_OPS; i++) {
        printf(" %s %ld%s", op_names[i], atomic_load(&op_count[i]), i + 1 < N_OPS ? "," : "");
        total += atomic_load(&op_count[i]);
    }
    printf("; %ld operations (%.0f/s), %ld failed, %ld wrong outputs\n", total, total / elapsed,
           atomic_load(&failures), atomic_load(&wrong_outputs));
    CHECK(total > 0);
    for (int i = 0; i < n_models; i++) {
        free(models[i].x.data);
        free(models[i].ref.data);
        unlink(models[i].art);
        free((void *)models[i].art);
    }
    for (int i = 0; i < n_threads; i++) {
        char f[64];
        snprintf(f, sizeof f, "soak-thread-%d.kiln", i);
        unlink(test_path(f));
    }
    rmdir(test_tmpdir());
    return test_done("test_soak");
}
