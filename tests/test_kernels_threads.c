/*
 * test_kernels_threads.c — creating a core's kernels off the core's thread (kernels.h,
 * "Threads"): three threads create a resnet-like conv chain's kernels at once while the
 * core's thread (this one) runs kernels that already exist — another replica's, and, as
 * in streaming placement, the new replica's own ops as soon as each kernel is published.
 * The chain has activations stored nhwc, sum post-ops, weights packed at "trace time" and
 * used in place, one weight in a foreign layout and one plain weight oneDNN wants blocked
 * (both reordered at creation, off the core's thread), and ops whose scratch needs grow as
 * the forward goes (so the core's scratchpad grows on its own thread while others create).
 * Every output is compared with the reference kernels. Meant to run under TSan as well.
 */
#include "kernels/kernels_impl.h"
#include "testutil.h"

#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ---- a resnet-like program built by hand ---- */

enum { MV = 48, MO = 16, N_CREATORS = 3 };

typedef struct prog {
    kp_program p;
    kp_value vals[MV];
    kp_op    ops[MO];
    int32_t  io[8 * MO];
    int64_t  ia[32 * MO];
    float    fa[8 * MO];
    uint32_t outputs[4], inputs[1];
    uint8_t  blob[16384];
    char     strings[8];
    void    *w[MV];             /* CONST data: plain, or as packed/laid out */
    int      d, g, h;           /* the graph outputs */
    int      nhwc[8], n_nhwc;   /* values the chain must store channels-last */
} prog;

static uint64_t rng;
static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.f - 1.f;
}

static int val(prog *t, int kind, int nd, const int64_t *shape)
{
    kp_program *p = &t->p;
    int v = (int)p->n_values++;
    KILN_ASSERT(v < MV);
    kp_value *x = &t->vals[v];
    x->dtype = KILN_F32;
    x->ndim = (uint8_t)nd;
    x->kind = (uint8_t)kind;
    memcpy(x->shape, shape, (size_t)nd * sizeof *shape);
    x->nbytes = (uint64_t)kiln__numel(nd, shape) * 4;
    if (kind != KP_VAL_CONST) {   /* every activation its own range: no reuse to reason about */
        x->offset = p->arena_bytes;
        p->arena_bytes += kiln__align_up(x->nbytes, KP_ALIGN);
    }
    return v;
}

static int op(prog *t, int kind, int sub, const int *in, int n_in, int y, const int64_t *ia,
              int n_ia, const float *fa, int n_fa)
{
    kp_program *p = &t->p;
    kp_op *o = &t->ops[p->n_ops++];
    o->kind = (uint16_t)kind;
    o->sub = (uint16_t)sub;
    o->n_in = (uint16_t)n_in;
    o->n_out = 1;
    o->io = p->n_io;
    o->ia = p->n_ia;
    o->fa = p->n_fa;
    o->n_ia = (uint32_t)n_ia;
    o->n_fa = (uint32_t)n_fa;
    memcpy(t->io + p->n_io, in, (size_t)n_in * sizeof *in);
    t->io[p->n_io + n_in] = y;
    p->n_io += (uint32_t)n_in + 1;
    if (n_ia)
        memcpy(t->ia + p->n_ia, ia, (size_t)n_ia * sizeof *ia);
    if (n_fa)
        memcpy(t->fa + p->n_fa, fa, (size_t)n_fa * sizeof *fa);
    p->n_ia += (uint32_t)n_ia;
    p->n_fa += (uint32_t)n_fa;
    return y;
}

/* k x k conv, stride s, pad p, bias, then [sum of `sum`], [relu]. Weights random, scaled to
 * keep magnitudes near 1 down the chain. */
static int conv(prog *t, int x, int o, int k, int s, int p, int sum, bool relu)
{
    const kp_value *X = &t->vals[x];
    int64_t c = X->shape[1];
    int64_t ws[4] = { o, c, k, k }, bs[1] = { o },
            ys[4] = { X->shape[0], o, (X->shape[2] + 2 * p - k) / s + 1,
                      (X->shape[3] + 2 * p - k) / s + 1 };
    int in[4] = { x, val(t, KP_VAL_CONST, 4, ws), val(t, KP_VAL_CONST, 1, bs), sum };
    for (int j = 1; j < 3; j++) {
        int64_t n = kp_value_numel(&t->vals[in[j]]);
        float *f = t->w[in[j]] = aligned_alloc(64, (size_t)kiln__align_up(n * 4, 64));
        float scale = j == 1 ? 1.7f / sqrtf((float)(c * k * k)) : 0.1f;
        for (int64_t e = 0; e < n; e++)
            f[e] = frand() * scale;
    }
    int y = val(t, KP_VAL_ACT, 4, ys);
    int64_t ia[16] = { 1, 2, s, s, 1, 1, p, p, p, p, 0 };
    float fa[4] = { 0 };
    int nia = 11, npost = 0;
    if (sum >= 0) {
        ia[nia++] = KP_POST_SUM;
        ia[nia++] = 0;
        npost++;
    }
    if (relu) {
        ia[nia++] = KP_POST_UNARY;
        ia[nia++] = KP_U_RELU;
        npost++;
    }
    ia[10] = npost;
    return op(t, KP_CONV, 0, in, sum >= 0 ? 4 : 3, y, ia, nia, fa, 2 * npost);
}

static int maxpool(prog *t, int x, int k, int s, int p)
{
    const kp_value *X = &t->vals[x];
    int64_t ys[4] = { X->shape[0], X->shape[1], (X->shape[2] + 2 * p - k) / s + 1,
                      (X->shape[3] + 2 * p - k) / s + 1 };
    int64_t ia[13] = { 2, k, k, s, s, 1, 1, p, p, p, p, 0, 0 };
    return op(t, KP_POOL, KP_POOL_MAX, &x, 1, val(t, KP_VAL_ACT, 4, ys), ia, 13, NULL, 0);
}

static int gap(prog *t, int x)
{
    const kp_value *X = &t->vals[x];
    int64_t ys[4] = { X->shape[0], X->shape[1], 1, 1 };
    return op(t, KP_GLOBAL_POOL, KP_POOL_AVG, &x, 1, val(t, KP_VAL_ACT, 4, ys), NULL, 0, NULL, 0);
}

/* Weight of op i stored as O x kh x kw x I ("ohwi"): a layout no conv kernel here wants. */
static void lay_out_ohwi(prog *t, uint32_t i)
{
    int w = kp_op_in(&t->p, &t->ops[i])[1];
    kp_value *wv = &t->vals[w];
    int64_t o = wv->shape[0], c = wv->shape[1], kh = wv->shape[2], kw = wv->shape[3];
    float *src = t->w[w], *dst = aligned_alloc(64, (size_t)kiln__align_up(wv->nbytes, 64));
    for (int64_t a = 0; a < o; a++)
        for (int64_t b = 0; b < c; b++)
            for (int64_t y = 0; y < kh; y++)
                for (int64_t x = 0; x < kw; x++)
                    dst[((a * kh + y) * kw + x) * c + b] = src[((a * c + b) * kh + y) * kw + x];
    free(src);
    t->w[w] = dst;
    /* descriptor (dnnl.c's format, version 1, little-endian): dims O,I,h,w with strides of ohwi */
    int64_t dims[4] = { o, c, kh, kw }, st[4] = { kh * kw * c, 1, kw * c, c },
            plain[4] = { c * kh * kw, kh * kw, kw, 1 };
    uint8_t *b = t->blob + t->p.n_blob;
    memset(b, 0, 16);
    b[0] = 1; b[1] = 1; b[2] = KILN_F32; b[3] = 4; b[4] = 0;
    uint8_t *q = b + 16;
    for (int d = 0; d < 4; d++, q += 40) {
        int64_t f[5] = { dims[d], dims[d], 0, st[d], plain[d] };
        memcpy(q, f, 40);
    }
    wv->layout = t->p.n_blob;
    wv->n_layout = (uint32_t)(q - b);
    t->p.n_blob += wv->n_layout;
}

/* Packs op i's weight the way its kernel wants it (kk_pack_weight), as trace would. */
static void pack(prog *t, uint32_t i)
{
    int w = kp_op_in(&t->p, &t->ops[i])[1];
    void *packed = NULL, *layout = NULL;
    size_t n_packed = 0, n_layout = 0;
    CHECK_OK(kk_pack_weight(&t->p, i, 1, t->w[w], &packed, &n_packed, &layout, &n_layout));
    if (!packed)
        return;   /* this machine's conv takes it plain */
    KILN_ASSERT(t->p.n_blob + n_layout <= sizeof t->blob);
    free(t->w[w]);
    t->w[w] = aligned_alloc(64, (size_t)kiln__align_up(n_packed, 64));
    memcpy(t->w[w], packed, n_packed);
    memcpy(t->blob + t->p.n_blob, layout, n_layout);
    t->vals[w].layout = t->p.n_blob;
    t->vals[w].n_layout = (uint32_t)n_layout;
    t->vals[w].nbytes = n_packed;
    t->p.n_blob += (uint32_t)n_layout;
    kiln__free(packed);
    kiln__free(layout);
}

/*   x -> a = conv3x3+relu -> m = maxpool -> b1 = conv+relu -> c1 = conv(+m)+relu
 *     -> b2 = conv+relu [ohwi weight] -> c2 = conv(+c1)+relu [plain weight]
 *     -> d = 1x1 conv s2 (output) ; e = conv s2+relu -> f = conv+relu -> g = gap (output)
 *   a -> h = 1x1 conv to 64 channels (output; its dense output is the largest scratch need,
 *        and it runs last)
 * packed: weights packed by kk_pack_weight (in place at creation); else plain weights. */
static prog *make(bool packed, uint64_t seed)
{
    prog *t = calloc(1, sizeof *t);
    kp_program *p = &t->p;
    p->values = t->vals;
    p->ops = t->ops;
    p->io = t->io;
    p->ia = t->ia;
    p->fa = t->fa;
    p->blob = t->blob;
    p->strings = t->strings;
    p->n_strings = 1;
    p->outputs = t->outputs;
    p->inputs = t->inputs;
    rng = seed;
    int64_t xs[4] = { 1, 16, 20, 20 };
    int x = val(t, KP_VAL_INPUT, 4, xs);
    t->inputs[p->n_inputs++] = (uint32_t)x;
    int a = conv(t, x, 16, 3, 1, 1, -1, true);
    int m = maxpool(t, a, 3, 2, 1);
    int b1 = conv(t, m, 16, 3, 1, 1, -1, true);
    int c1 = conv(t, b1, 16, 3, 1, 1, m, true);
    int b2 = conv(t, c1, 16, 3, 1, 1, -1, true);
    int c2 = conv(t, b2, 16, 3, 1, 1, c1, true);
    t->d = conv(t, c2, 32, 1, 2, 0, -1, false);
    int e = conv(t, c2, 32, 3, 2, 1, -1, true);
    int f = conv(t, e, 32, 3, 1, 1, -1, true);
    t->g = gap(t, f);
    t->h = conv(t, a, 64, 1, 1, 0, -1, false);
    t->outputs[p->n_outputs++] = (uint32_t)t->d;
    t->outputs[p->n_outputs++] = (uint32_t)t->g;
    t->outputs[p->n_outputs++] = (uint32_t)t->h;
    int cl[] = { a, m, b1, c1, b2, c2, e, f };
    memcpy(t->nhwc, cl, sizeof cl);
    t->n_nhwc = 8;
    if (packed) {
        for (uint32_t i = 0; i < p->n_ops; i++)
            if (p->ops[i].kind == KP_CONV && i != 4 && i != 5)
                pack(t, i);
        lay_out_ohwi(t, 4);   /* b2's weight: foreign layout; c2's (op 5): plain */
    }
    return t;
}

static void prog_free(prog *t)
{
    for (int v = 0; v < MV; v++)
        free(t->w[v]);
    free(t);
}

/* ---- replicas: one arena and pointer table each ---- */

typedef struct replica {
    prog     *t;
    char     *arena;
    void     *ptr[MV];
    _Atomic(kk_kernel *) k[MO];     /* published by whichever thread created it */
    atomic_uint next;               /* the next op a creator takes */
    _Atomic uint64_t copied;        /* sum of the creators' counts */
    atomic_int failed;
} replica;

static kk_kernel failed_marker;     /* published instead of a kernel when creation failed */

static void replica_init(replica *r, prog *t, const float *input)
{
    memset(r, 0, sizeof *r);
    r->t = t;
    r->arena = aligned_alloc(4096, (size_t)kiln__align_up(t->p.arena_bytes, 4096));
    memset(r->arena, 0x7f, t->p.arena_bytes);   /* NaN-ish: nothing may read unwritten data */
    for (uint32_t v = 0; v < t->p.n_values; v++)
        r->ptr[v] = t->vals[v].kind == KP_VAL_CONST ? t->w[v] : r->arena + t->vals[v].offset;
    int x = (int)t->p.inputs[0];
    memcpy(r->ptr[x], input, t->vals[x].nbytes);
}

static void replica_fini(replica *r)
{
    for (uint32_t i = 0; i < r->t->p.n_ops; i++) {
        kk_kernel *k = atomic_load(&r->k[i]);
        if (k != &failed_marker)
            kk_free(k);
    }
    free(r->arena);
}

/* The reference forward: every output of the plain program by the reference kernels. */
static void reference(prog *t, const float *input, float *out[3])
{
    replica r;
    replica_init(&r, t, input);
    for (uint32_t i = 0; i < t->p.n_ops; i++) {
        kk_kernel *k = NULL;
        if (!CHECK_OK(kr_create(&t->p, i, r.ptr, &k)) || !CHECK_OK(kk_run(k))) {
            kk_free(k);
            break;
        }
        kk_free(k);
    }
    int ov[3] = { t->d, t->g, t->h };
    for (int j = 0; j < 3; j++) {
        out[j] = malloc(t->vals[ov[j]].nbytes);
        memcpy(out[j], r.ptr[ov[j]], t->vals[ov[j]].nbytes);
    }
    replica_fini(&r);
}

static double rel_err(const float *a, const float *b, int64_t n)
{
    double md = 0, mr = 0;
    for (int64_t j = 0; j < n; j++) {
        double d = fabs((double)a[j] - b[j]);
        if (isnan(a[j]) != isnan(b[j]) || isnan(d))
            return INFINITY;
        if (d > md)
            md = d;
        if (fabs(b[j]) > mr)
            mr = fabs(b[j]);
    }
    return mr > 0 ? md / mr : md;
}

static bool outputs_match(const replica *r, float *const want[3], const char *what)
{
    const prog *t = r->t;
    int ov[3] = { t->d, t->g, t->h };
    bool ok = true;
    for (int j = 0; j < 3; j++) {
        double e = rel_err(r->ptr[ov[j]], want[j], kp_value_numel(&t->vals[ov[j]]));
        if (!CHECK(e <= 1e-4)) {
            fprintf(stderr, "  %s: output %d relative error %g\n", what, j, e);
            ok = false;
        }
    }
    return ok;
}

/* ---- creators ---- */

typedef struct creator {
    pthread_t   th;
    kk_core    *core;
    const kk_plan *plan;            /* NULL: kk_create (layouts worked out per op) */
    replica    *r;
} creator;

static void *creator_main(void *arg)
{
    creator *cr = arg;
    replica *r = cr->r;
    int prev = kk_thread_prepare(cr->core);
    uint64_t copied = 0;
    for (;;) {
        unsigned i = atomic_fetch_add(&r->next, 1u);
        if (i >= r->t->p.n_ops)
            break;
        kk_kernel *k = NULL;
        kiln_status s = cr->plan ? kk_create_planned(cr->core, cr->plan, i, r->ptr, &k, &copied)
                                 : kk_create(cr->core, &r->t->p, i, r->ptr, &k, &copied);
        if (s != KILN_OK) {
            fprintf(stderr, "  creator: op %u: %s\n", i, kiln_last_error());
            atomic_store(&r->failed, 1);
            k = &failed_marker;
        }
        atomic_store_explicit(&r->k[i], k, memory_order_release);
    }
    atomic_fetch_add(&r->copied, copied);
    kk_thread_restore(prev);
    return NULL;
}

static void start_creators(creator *cr, kk_core *core, const kk_plan *plan, replica *r)
{
    for (int j = 0; j < N_CREATORS; j++) {
        cr[j] = (creator){ .core = core, .plan = plan, .r = r };
        if (pthread_create(&cr[j].th, NULL, creator_main, &cr[j]) != 0) {
            CHECK(!"pthread_create");
            creator_main(&cr[j]);   /* run it here instead: the test still means something */
            cr[j].th = 0;
        }
    }
}

static void join_creators(creator *cr)
{
    for (int j = 0; j < N_CREATORS; j++)
        if (cr[j].th)
            pthread_join(cr[j].th, NULL);
}

/* Runs every op of a fully created replica (on the core's thread). */
static bool run_all(replica *r)
{
    for (uint32_t i = 0; i < r->t->p.n_ops; i++)
        if (!CHECK_OK(kk_run(atomic_load_explicit(&r->k[i], memory_order_acquire))))
            return false;
    return true;
}

/* Streaming forward of r: each op waits only for its own kernel; while it waits, `busy` (if
 * any, fully created) runs whole forwards on the same core. Returns false if a kernel failed. */
static bool run_streaming(replica *r, replica *busy, int *busy_runs)
{
    for (uint32_t i = 0; i < r->t->p.n_ops; i++) {
        kk_kernel *k;
        while (!(k = atomic_load_explicit(&r->k[i], memory_order_acquire))) {
            if (busy) {
                if (!run_all(busy))
                    return false;
                ++*busy_runs;
            } else {
                sched_yield();
            }
        }
        if (k == &failed_marker || !CHECK_OK(kk_run(k)))
            return false;
    }
    return true;
}

/* ---- the tests ---- */

static void *wrong_count_main(void *arg)
{
    kk_core *core = arg;
    prog *t = make(false, 7);
    replica r;
    float *in = calloc(1, t->vals[0].nbytes);
    replica_init(&r, t, in);
    int prev = omp_get_max_threads();
    omp_set_num_threads(core->n_threads + 1);
    kk_kernel *k = NULL;
    CHECK_STATUS(kk_create(core, &t->p, 0, r.ptr, &k, NULL), KILN_ERR_STATE);
    CHECK(k == NULL);
    omp_set_num_threads(prev);
    replica_fini(&r);
    free(in);
    prog_free(t);
    return NULL;
}

static void test_wrong_thread_count(kk_core *core)
{
    pthread_t th;
    if (CHECK(pthread_create(&th, NULL, wrong_count_main, core) == 0))
        pthread_join(th, NULL);
}

static void test_plan(void)
{
    prog *t = make(true, 11);
    kk_plan *plan = NULL;
    if (!CHECK_OK(kk_program_plan(&t->p, &plan)))
        goto out;
    for (int j = 0; j < t->n_nhwc; j++)
        if (!CHECK(plan->cl[t->nhwc[j]]))
            fprintf(stderr, "  value %d should be stored nhwc\n", t->nhwc[j]);
    CHECK(!plan->cl[0] && !plan->cl[t->d] && !plan->cl[t->g] && !plan->cl[t->h]);
    for (uint32_t v = 0; v < t->p.n_values; v++)
        if (t->vals[v].kind == KP_VAL_CONST)
            CHECK(!plan->cl[v]);
    /* the same answers asked one value at a time (kk_create's way without a plan) */
    uint8_t one[MV];
    for (uint32_t v = 0; v < t->p.n_values; v++) {
        memset(one, 0, sizeof one);
        one[v] = 1;
        CHECK_OK(kd_plan_layouts(&t->p, one));
        CHECK(one[v] == plan->cl[v]);
    }
    kk_kernel *k = NULL;
    CHECK_STATUS(kk_create_planned(NULL, plan, 0, NULL, &k, NULL), KILN_ERR_ARG);
    CHECK_STATUS(kk_create_planned(NULL, NULL, 0, NULL, &k, NULL), KILN_ERR_ARG);
    CHECK_STATUS(kk_program_plan(NULL, &plan), KILN_ERR_ARG);
out:
    kk_plan_free(plan);
    kk_plan_free(NULL);
    prog_free(t);
}

/* Allocation failures: fail the k-th allocation of planning, creating and first running
 * every kernel (the scratchpad grows at that first run), k = 0, 1, ... until it all
 * succeeds; every failure must be KILN_ERR_NOMEM and leave nothing behind (ASan). */
static void test_alloc_failures(void)
{
    prog *t = make(true, 5);
    int x = (int)t->p.inputs[0];
    float *input = calloc(1, t->vals[x].nbytes);
    bool done = false;
    for (long k = 0; k < 100000 && !done; k++) {
        kk_core *core = NULL;
        if (!CHECK_OK(kk_core_create(1, &core)))
            break;
        replica *r = calloc(1, sizeof *r);
        replica_init(r, t, input);
        kk_plan *plan = NULL;
        kiln__test_fail_alloc_after(k);
        kiln_status s = kk_program_plan(&t->p, &plan);
        for (uint32_t i = 0; i < t->p.n_ops && s == KILN_OK; i++) {
            kk_kernel *kn = NULL;
            s = kk_create_planned(core, plan, i, r->ptr, &kn, NULL);
            atomic_store(&r->k[i], kn);
            if (s == KILN_OK)
                s = kk_run(kn);
        }
        kiln__test_fail_alloc_after(-1);
        if (s == KILN_OK)
            done = true;
        else if (!CHECK_STATUS(s, KILN_ERR_NOMEM))
            fprintf(stderr, "  allocation %ld failed: %s\n", k, kiln_last_error());
        replica_fini(r);
        free(r);
        kk_plan_free(plan);
        kk_core_free(core);
    }
    CHECK(done);
    free(input);
    prog_free(t);
}

/* One round: a fresh core; replica A streamed while three threads create it (kk_create, no
 * plan); replica B created by three threads (with the plan) while A runs over and over on
 * the core's thread, B streamed as its kernels appear; then both again, and a replica C
 * created on the core's thread alone: every output equal to the reference, and the same
 * weight bytes copied by every replica. */
static void round_trip(int n_threads, int round)
{
    char what[96];
    prog *t = make(true, 1000 + (uint64_t)round), *plain = make(false, 1000 + (uint64_t)round);
    int x = (int)t->p.inputs[0];
    float *input = malloc(t->vals[x].nbytes), *want[3] = { 0 };
    rng = 99 + (uint64_t)round;
    for (int64_t j = 0; j < kp_value_numel(&t->vals[x]); j++)
        input[j] = frand();
    reference(plain, input, want);

    kk_core *core = NULL;
    kk_plan *plan = NULL;
    if (!CHECK_OK(kk_core_create(n_threads, &core)) || !CHECK_OK(kk_program_plan(&t->p, &plan)))
        goto out;
    replica *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b), *c = calloc(1, sizeof *c);
    replica_init(a, t, input);
    replica_init(b, t, input);
    replica_init(c, t, input);
    creator cr[N_CREATORS];

    start_creators(cr, core, NULL, a);
    bool ok = run_streaming(a, NULL, NULL);
    join_creators(cr);
    snprintf(what, sizeof what, "round %d (%d threads), replica A streamed", round, n_threads);
    CHECK(ok && !atomic_load(&a->failed));
    if (ok)
        outputs_match(a, want, what);

    int busy_runs = 0;
    start_creators(cr, core, plan, b);
    ok = run_streaming(b, ok ? a : NULL, &busy_runs);
    join_creators(cr);
    snprintf(what, sizeof what, "round %d, replica B streamed while A ran %d times", round,
             busy_runs);
    CHECK(ok && !atomic_load(&b->failed));
    if (ok) {
        outputs_match(b, want, what);
        if (getenv("KILN_TEST_VERBOSE"))
            printf("  %s\n", what);
    }

    /* C: all on the core's thread, with the plan */
    uint64_t copied_c = 0;
    for (uint32_t i = 0; i < t->p.n_ops && ok; i++) {
        kk_kernel *k = NULL;
        ok = CHECK_OK(kk_create_planned(core, plan, i, c->ptr, &k, &copied_c));
        atomic_store(&c->k[i], ok ? k : &failed_marker);
    }
    if (ok && run_all(c))
        outputs_match(c, want, "replica C (core's thread only)");
    /* everyone again, after all the scratch growth */
    if (ok && run_all(a) && run_all(b)) {
        outputs_match(a, want, "replica A again");
        outputs_match(b, want, "replica B again");
    }
    CHECK_OK(kk_core_reserve(core));
    /* b2's ohwi weight and c2's plain one are reordered at creation, the packed ones are not */
    uint64_t ohwi = t->vals[kp_op_in(&t->p, &t->ops[4])[1]].nbytes;
    CHECK(copied_c >= ohwi);
    CHECK(atomic_load(&a->copied) == copied_c && atomic_load(&b->copied) == copied_c);

    replica_fini(a);
    replica_fini(b);
    replica_fini(c);
    free(a);
    free(b);
    free(c);
out:
    kk_plan_free(plan);
    kk_core_free(core);
    for (int j = 0; j < 3; j++)
        free(want[j]);
    free(input);
    prog_free(t);
    prog_free(plain);
}

int main(void)
{
    /* every primitive made afresh (JIT and all), so creations take long enough to overlap
     * the runs, and concurrent creation is really exercised (not just cache lookups) */
    setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0", 0);
    kk_core *core = NULL;
    if (CHECK_OK(kk_core_create(1, &core))) {
        test_wrong_thread_count(core);
        kk_core_free(core);
    }
    test_plan();
    test_alloc_failures();
    int rounds = getenv("KILN_TEST_ROUNDS") ? atoi(getenv("KILN_TEST_ROUNDS")) : 4;
    for (int r = 0; r < rounds; r++)
        round_trip(1, r);
    /* a two-thread core: primitives made for a team of two on the creating threads too */
    round_trip(2, rounds);
    return test_done("test_kernels_threads");
}
