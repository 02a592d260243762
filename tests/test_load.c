/*
 * test_load.c — the load behaviours of SPEC sections 2 and 3: eager, lazy, async and
 * lazy+async placement counts; async kiln_load returning while its placement is held
 * (observed through state, not timing); forward and wait blocking until it ends; a failed
 * background load surfacing at wait and forward with its cause; free during a load; eight
 * threads forwarding a loading model with exactly one placement; default-core spreading;
 * streaming: a forward running each op as soon as its kernel exists and its weights passed
 * their checksums, and a damaged late layer failing that forward with nothing output.
 * Placements are held at their start with the runtime's test gate. Run under TSan in CI.
 */
#include "testutil.h"

#include "cli/npy.h"
#include "format/artifact_impl.h"
#include "runtime/model.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static kiln_tensor x, ref;
static const char *art_plain, *art_async, *art_lazy, *art_lazy_async, *art_bad_async, *art_bad;

static void make_artifacts(const char *dir)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/conv_bn_relu.in.npy", dir);
    CHECK(npy_read(p, &x) == KILN_OK);
    snprintf(p, sizeof p, "%s/conv_bn_relu.out.npy", dir);
    CHECK(npy_read(p, &ref) == KILN_OK);
    snprintf(p, sizeof p, "%s/conv_bn_relu.onnx", dir);
    kiln_tensor spec = x;
    spec.data = NULL;
    kiln_model *m = NULL;
    if (!CHECK_OK(kiln_trace(p, &spec, 1, &m)))
        exit(test_done("test_load"));
    static const struct { int lazy, async; const char **path; const char *name; } arts[] = {
        { 0, 0, &art_plain, "plain.kiln" }, { 0, 1, &art_async, "async.kiln" },
        { 1, 0, &art_lazy, "lazy.kiln" }, { 1, 1, &art_lazy_async, "lazy_async.kiln" },
        { 0, 1, &art_bad_async, "bad_async.kiln" }, { 0, 0, &art_bad, "bad.kiln" },
    };
    for (size_t i = 0; i < sizeof arts / sizeof arts[0]; i++) {
        *arts[i].path = strdup(test_path(arts[i].name));
        CHECK_OK(kiln_lazy_load(m, arts[i].lazy));
        CHECK_OK(kiln_async_load(m, arts[i].async));
        CHECK_OK(kiln_save(m, *arts[i].path));
    }
    kiln_model_free(m);
    /* damage the last weight byte: the header and program still check out */
    const char *bad[] = { art_bad_async, art_bad };
    for (int i = 0; i < 2; i++) {
        FILE *f = fopen(bad[i], "r+b");
        fseek(f, -1, SEEK_END);
        int c = fgetc(f);
        fseek(f, -1, SEEK_END);
        fputc(c ^ 0x5a, f);
        fclose(f);
    }
}

static size_t out_bytes(void) { return (size_t)(ref.shape[0] * ref.shape[1] * ref.shape[2] * ref.shape[3]) * 4; }

/* Forward on m and compare with the reference; returns the status. */
static kiln_status run(kiln_model *m)
{
    kiln_tensor out = ref;
    out.data = malloc(out_bytes());
    kiln_status s = kiln_forward(m, &x, 1, &out, 1);
    if (s == KILN_OK) {
        double md = 0, mr = 0;
        for (size_t i = 0; i < out_bytes() / 4; i++) {
            md = fmax(md, fabs(((float *)out.data)[i] - ((float *)ref.data)[i]));
            mr = fmax(mr, fabs(((float *)ref.data)[i]));
        }
        CHECK(md <= 1e-4 * mr);
    }
    free(out.data);
    return s;
}

static void wait_gate(int n)
{
    while (rt_test_gate_waiting() < n)
        usleep(1000);
}

static void test_eager(void)
{
    kiln_model *m = NULL;
    if (!CHECK_OK(kiln_load(art_plain, &m)))
        return;
    CHECK(kiln_model_state(m) == KILN_LOADED);
    CHECK(kiln_model_placements(m, -1) == 1);
    kiln_load_report r;
    CHECK_OK(kiln_model_load_report(m, &r));
    CHECK(r.core >= 0 && r.core < kiln_num_cores() && kiln_model_placements(m, r.core) == 1);
    CHECK(r.placements == 1 && r.file_bytes > 0 && r.weight_bytes > 0);
    CHECK_OK(kiln_wait(m));
    CHECK_OK(run(m));
    CHECK(kiln_model_placements(m, -1) == 1);
    kiln_model_free(m);

    /* A damaged weight in an eager artifact: kiln_load itself fails with the cause. */
    CHECK_STATUS(kiln_load(art_bad, &m), KILN_ERR_FORMAT);
    CHECK(strstr(kiln_last_error(), "checksum") != NULL);
}

typedef struct fwd_thread {
    kiln_model *m;
    kiln_status status;
    atomic_int  finished;
    uint32_t    placements_seen;
} fwd_thread;

static void *fwd_main(void *arg)
{
    fwd_thread *t = arg;
    t->status = run(t->m);
    t->placements_seen = kiln_model_placements(t->m, -1);
    atomic_store(&t->finished, 1);
    return NULL;
}

typedef struct stream_arg {
    kiln_model  *m;
    kiln_tensor *in, *out;
    kiln_status  s;
    atomic_int   done;
    char         error[600];   /* kiln_last_error() of the forward's thread */
} stream_arg;

static void *streaming_forward(void *arg)
{
    stream_arg *a = arg;
    a->s = kiln_forward(a->m, a->in, 1, a->out, 1);
    snprintf(a->error, sizeof a->error, "%s", a->s == KILN_OK ? "" : kiln_last_error());
    atomic_store(&a->done, 1);
    return NULL;
}

static void *wait_main(void *arg)
{
    fwd_thread *t = arg;
    t->status = kiln_wait(t->m);
    atomic_store(&t->finished, 1);
    return NULL;
}

static void test_async(void)
{
    rt_test_gate(true);
    kiln_model *m = NULL;
    if (!CHECK_OK(kiln_load(art_async, &m))) {
        rt_test_gate(false);
        return;
    }
    /* kiln_load returned while its placement is held at the gate. */
    CHECK(kiln_model_state(m) == KILN_LOADING);
    CHECK(kiln_model_placements(m, -1) == 0);
    wait_gate(1);
    fwd_thread f = { m, KILN_ERR_INTERNAL, 0, 0 }, w = { m, KILN_ERR_INTERNAL, 0, 0 };
    pthread_t tf, tw;
    pthread_create(&tf, NULL, fwd_main, &f);
    pthread_create(&tw, NULL, wait_main, &w);
    usleep(50 * 1000);
    CHECK(!atomic_load(&f.finished)); /* forward blocks on the pending placement */
    CHECK(!atomic_load(&w.finished)); /* so does wait */
    CHECK(kiln_model_state(m) == KILN_LOADING);
    rt_test_gate(false);
    pthread_join(tf, NULL);
    pthread_join(tw, NULL);
    CHECK_OK(f.status);
    CHECK_OK(w.status);
    CHECK(f.placements_seen == 1);
    CHECK(kiln_model_state(m) == KILN_LOADED);
    CHECK(kiln_model_placements(m, -1) == 1);
    kiln_model_free(m);
}

static void test_lazy_async(void)
{
    kiln_model *m = NULL;
    if (!CHECK_OK(kiln_load(art_lazy_async, &m)))
        return;
    CHECK(kiln_model_is_lazy(m) && kiln_model_is_async(m));
    CHECK(kiln_model_state(m) == KILN_UNLOADED);
    CHECK(kiln_model_placements(m, -1) == 0);
    CHECK_OK(kiln_wait(m)); /* nothing pending: returns at once */
    CHECK(kiln_model_placements(m, -1) == 0);
    rt_test_gate(true);
    fwd_thread f = { m, KILN_ERR_INTERNAL, 0, 0 };
    pthread_t tf;
    pthread_create(&tf, NULL, fwd_main, &f);
    wait_gate(1); /* the forward triggered a background placement */
    CHECK(kiln_model_state(m) == KILN_LOADING);
    CHECK(!atomic_load(&f.finished));
    rt_test_gate(false);
    pthread_join(tf, NULL);
    CHECK_OK(f.status);
    CHECK(kiln_model_placements(m, -1) == 1);
    kiln_model_free(m);

    if (CHECK_OK(kiln_load(art_lazy, &m))) {
        CHECK(kiln_model_state(m) == KILN_UNLOADED && kiln_model_placements(m, -1) == 0);
        CHECK_OK(run(m));
        CHECK(kiln_model_state(m) == KILN_LOADED && kiln_model_placements(m, -1) == 1);
        kiln_model_free(m);
    }
}

static void test_async_failure(void)
{
    kiln_model *m = NULL;
    if (!CHECK_OK(kiln_load(art_bad_async, &m))) /* header and program are fine */
        return;
    CHECK_STATUS(kiln_wait(m), KILN_ERR_LOAD);
    CHECK(strstr(kiln_last_error(), "checksum") != NULL);
    CHECK(kiln_model_state(m) == KILN_FAILED);
    CHECK_STATUS(run(m), KILN_ERR_LOAD);
    CHECK(strstr(kiln_last_error(), "checksum") != NULL);
    CHECK_STATUS(kiln_wait(m), KILN_ERR_LOAD);
    CHECK(kiln_model_placements(m, -1) == 0);
    kiln_model_free(m);
}

static void *free_main(void *arg)
{
    kiln_model_free(arg);
    return NULL;
}

static void test_free_during_load(void)
{
    /* held at the gate: free waits for it */
    rt_test_gate(true);
    kiln_model *m = NULL;
    if (CHECK_OK(kiln_load(art_async, &m))) {
        wait_gate(1);
        pthread_t t;
        pthread_create(&t, NULL, free_main, m);
        usleep(20 * 1000);
        rt_test_gate(false);
        pthread_join(t, NULL);
    }
    rt_test_gate(false);
    /* freed at once, whether queued (cancelled) or running */
    for (int i = 0; i < 20; i++) {
        if (!CHECK_OK(kiln_load(art_async, &m)))
            break;
        kiln_model_free(m);
    }
}

static void test_many_forwards(void)
{
    rt_test_gate(true);
    kiln_model *m = NULL;
    if (!CHECK_OK(kiln_load(art_lazy_async, &m))) {
        rt_test_gate(false);
        return;
    }
    enum { N = 8 };
    fwd_thread f[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        f[i] = (fwd_thread){ m, KILN_ERR_INTERNAL, 0, 0 };
        pthread_create(&t[i], NULL, fwd_main, &f[i]);
    }
    wait_gate(1);
    usleep(20 * 1000);
    CHECK(rt_test_gate_waiting() == 1); /* one placement, however many callers */
    rt_test_gate(false);
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        CHECK_OK(f[i].status);
    }
    CHECK(kiln_model_placements(m, -1) == 1);
    kiln_model_free(m);
}

/* The number of ops of m's replica on any core that ran so far (0 if none is placed). */
static uint64_t ops_ran(kiln_model *m)
{
    uint64_t ran = 0;
    pthread_mutex_lock(&m->mu);
    for (int c = 0; c < m->n_cores; c++)
        if (m->replicas[c])
            ran = __atomic_load_n(&m->replicas[c]->ran, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&m->mu);
    return ran;
}

/* Waits (up to 10 s) until `want` ops ran, then a little longer: returns how many ran. */
static uint64_t wait_ran(kiln_model *m, uint64_t want)
{
    for (int i = 0; i < 10000 && ops_ran(m) < want; i++)
        usleep(1000);
    usleep(20 * 1000);
    return ops_ran(m);
}

/* Streaming placement: a forward on a model whose kernels are still being made runs each op
 * as soon as its own kernel exists. Creation is held before op 6 of the 12-op chain model:
 * the forward must get through ops 0-5 and wait there, the model still LOADING. */
/* Reads NAME.in.npy and NAME.out.npy of dir into *in and *ref, traces NAME.onnx for that
 * input, checks it has n_ops ops, marks it async and saves it at each of paths[0..n). */
static bool save_async(const char *dir, const char *name, uint32_t n_ops, kiln_tensor *in,
                       kiln_tensor *ref, const char *const *paths, int n)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/%s.in.npy", dir, name);
    CHECK(npy_read(p, in) == KILN_OK);
    snprintf(p, sizeof p, "%s/%s.out.npy", dir, name);
    CHECK(npy_read(p, ref) == KILN_OK);
    snprintf(p, sizeof p, "%s/%s.onnx", dir, name);
    kiln_tensor spec = *in;
    spec.data = NULL;
    kiln_model *m = NULL;
    if (!CHECK_OK(kiln_trace(p, &spec, 1, &m)))
        return false;
    CHECK(m->prog->n_ops == n_ops);
    kiln_async_load(m, 1);
    for (int i = 0; i < n; i++)
        CHECK_OK(kiln_save(m, paths[i]));
    kiln_model_free(m);
    return true;
}

/* Whether out is within 1e-4 (relative to the largest reference value) of ref. */
static bool matches(const kiln_tensor *out, const kiln_tensor *ref)
{
    return test_rel_err(out->data, ref->data, test_numel(ref)) <= 1e-4;
}

static void test_streaming(const char *dir)
{
    kiln_tensor cx, cref;
    const char *art = test_path("chain_async.kiln");
    if (!save_async(dir, "chain", 12, &cx, &cref, &art, 1))
        return;
    kiln_model *m = NULL;
    rt_test_hold_ops_from(6);
    if (CHECK_OK(kiln_load(art, &m))) {
        size_t bytes = (size_t)kiln__numel(cref.ndim, cref.shape) * 4;
        kiln_tensor out = cref;
        out.data = malloc(bytes);
        stream_arg a = { m, &cx, &out, KILN_ERR_INTERNAL, 0, "" };
        pthread_t t;
        pthread_create(&t, NULL, streaming_forward, &a);
        CHECK(wait_ran(m, 6) == 6); /* ops 0-5 ran before ops 6-11 had kernels */
        CHECK(!atomic_load(&a.done));
        CHECK(kiln_model_state(m) == KILN_LOADING);
        CHECK(kiln_model_placements(m, -1) == 0);
        rt_test_hold_ops_from(-1);
        pthread_join(t, NULL);
        CHECK_OK(a.s);
        CHECK(matches(&out, &cref));
        CHECK(kiln_model_state(m) == KILN_LOADED && kiln_model_placements(m, -1) == 1);
        free(out.data);
        kiln_model_free(m);
    }
    rt_test_hold_ops_from(-1);
    free(cx.data);
    free(cref.data);
}

/* Flips one byte in the middle of the weights of op `op` of the artifact at path. */
static void damage_op_weights(const char *path, uint32_t op)
{
    ka_file *f = NULL;
    kp_program *p = NULL;
    if (!CHECK_OK(ka_open(path, &f, &p)))
        return;
    uint64_t at = 0;
    for (uint32_t i = 0; i < ka_file_num_sections(f); i++)
        if (ka_file_section(f, i)->type == KA_SEC_WEIGHTS)
            at = ka_file_section(f, i)->offset;
    const int32_t *in = kp_op_in(p, &p->ops[op]);
    int32_t w = -1;
    for (uint32_t j = 0; j < p->ops[op].n_in && w < 0; j++)
        if (in[j] >= 0 && p->values[in[j]].kind == KP_VAL_CONST)
            w = in[j];
    CHECK(w >= 0 && at > 0);
    if (w >= 0)
        at += p->values[w].offset + p->values[w].nbytes / 2;
    kp_program_free(p);
    ka_close(f);
    FILE *fp = fopen(path, "r+b");
    fseek(fp, (long)at, SEEK_SET);
    int c = fgetc(fp);
    fseek(fp, (long)at, SEEK_SET);
    fputc(c ^ 0x5a, fp);
    fclose(fp);
}

/* Streaming checks: on the 8-layer model (each layer one op with weights of its own), weight
 * checks are held before layer 5: a forward must run layers 0-4 and wait, the model still
 * LOADING, then finish correctly once released. With layer 6's weights damaged, a forward
 * runs layers 0-5 and then fails with the checksum error; its output is left untouched. */
static void test_streaming_verify(const char *dir)
{
    kiln_tensor lx, lref;
    const char *good = strdup(test_path("layers_async.kiln")), *bad = test_path("layers_bad.kiln");
    const char *paths[] = { good, bad };
    if (!save_async(dir, "layers", 8, &lx, &lref, paths, 2)) /* MatMul + bias + Relu per layer */
        return;
    kiln_model *m = NULL;
    damage_op_weights(bad, 6);

    size_t bytes = (size_t)kiln__numel(lref.ndim, lref.shape) * 4;
    kiln_tensor out = lref;
    out.data = malloc(bytes);
    rt_test_hold_verify_from(5);
    if (CHECK_OK(kiln_load(good, &m))) {
        stream_arg a = { m, &lx, &out, KILN_ERR_INTERNAL, 0, "" };
        pthread_t t;
        pthread_create(&t, NULL, streaming_forward, &a);
        CHECK(wait_ran(m, 5) == 5); /* layers 0-4 ran before layer 5's weights were checked */
        CHECK(!atomic_load(&a.done));
        CHECK(kiln_model_state(m) == KILN_LOADING);
        rt_test_hold_verify_from(-1);
        pthread_join(t, NULL);
        CHECK_OK(a.s);
        CHECK(matches(&out, &lref));
        CHECK(kiln_model_state(m) == KILN_LOADED && kiln_model_placements(m, -1) == 1);
        kiln_model_free(m);
    }

    rt_test_hold_verify_from(6);
    if (CHECK_OK(kiln_load(bad, &m))) { /* async: the damage shows at placement */
        memset(out.data, 0x7f, bytes);
        stream_arg a = { m, &lx, &out, KILN_ERR_INTERNAL, 0, "" };
        pthread_t t;
        pthread_create(&t, NULL, streaming_forward, &a);
        CHECK(wait_ran(m, 6) == 6);
        CHECK(!atomic_load(&a.done));
        rt_test_hold_verify_from(-1);
        pthread_join(t, NULL);
        CHECK(a.s == KILN_ERR_LOAD);
        CHECK(strstr(a.error, "checksum mismatch") != NULL && strstr(a.error, "layers_bad.kiln"));
        bool untouched = true;
        for (size_t i = 0; i < bytes; i++)
            untouched = untouched && ((unsigned char *)out.data)[i] == 0x7f;
        CHECK(untouched);
        CHECK(kiln_model_state(m) == KILN_FAILED && kiln_model_placements(m, -1) == 0);
        CHECK(kiln_wait(m) == KILN_ERR_LOAD);
        kiln_model_free(m);
    }
    rt_test_hold_verify_from(-1);
    free((char *)good);
    free(out.data);
    free(lx.data);
    free(lref.data);
}

static void test_spread_and_concurrent(void)
{
    int n = kiln_num_cores();
    kiln_model *a = NULL, *b = NULL;
    if (n >= 2 && CHECK_OK(kiln_load(art_plain, &a)) && CHECK_OK(kiln_load(art_plain, &b))) {
        kiln_load_report ra, rb;
        kiln_model_load_report(a, &ra);
        kiln_model_load_report(b, &rb);
        CHECK(ra.core != rb.core); /* least-used core */
    }
    kiln_model_free(a);
    kiln_model_free(b);
    enum { M = 4 };
    kiln_model *ms[M] = { 0 };
    for (int i = 0; i < M; i++)
        CHECK_OK(kiln_load(art_async, &ms[i]));
    for (int i = 0; i < M; i++) {
        if (!ms[i])
            continue;
        CHECK_OK(kiln_wait(ms[i]));
        CHECK(kiln_model_state(ms[i]) == KILN_LOADED);
        CHECK_OK(run(ms[i]));
        kiln_model_free(ms[i]);
    }
}

int main(void)
{
    const char *dir = getenv("KILN_TRACE_MODELS");
    if (!dir) {
        fprintf(stderr, "KILN_TRACE_MODELS is not set (run through ctest)\n");
        return 1;
    }
    make_artifacts(dir);
    test_eager();
    test_async();
    test_lazy_async();
    test_async_failure();
    test_free_during_load();
    test_many_forwards();
    test_streaming(dir);
    test_streaming_verify(dir);
    test_spread_and_concurrent();
    free(x.data);
    free(ref.data);
    return test_done("test_load");
}
