/*
 * test_dnnl_kernels.c — the oneDNN kernels against the reference kernels: for every op kind
 * oneDNN takes, a one-op program built by hand runs through kd_create (must succeed) and
 * kr_create on the same random inputs, and the outputs must agree within 1e-4 of the
 * largest reference magnitude. Also: the dispatcher (kk_create) on supported and declined
 * ops, trace-time weight packing and reuse in place (also of one weight shared by two
 * ops), reorder of foreign layouts (with the bytes counted in *copied), unpacking for the
 * reference kernels, corrupt layout descriptors, and cores of one and two threads.
 */
#include "kernels/kernels_impl.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- a one-op program built by hand ---- */

enum { TV = 24 };

enum { TOPS = 8 };

typedef struct tp {
    kp_program p;
    kp_value vals[TV];
    kp_op    ops[TOPS];
    int32_t  io[4 * TV];
    int64_t  ia[256];
    float    fa[64];
    uint32_t outputs[TV];
    uint64_t arena;         /* next free offset: every value gets its own range */
    uint8_t  blob[4096];
    char     strings[8];
    void    *buf[TV];       /* storage of each value (this test's "arena") */
    bool     positive;      /* fill inputs with values in (0.1, 2] instead of [-1, 1) */
} tp;

static uint64_t rng = 88172645463325252ull;
static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.f - 1.f;
}

static tp *tp_new(void)
{
    tp *t = calloc(1, sizeof *t);
    t->p.values = t->vals;
    t->p.ops = t->ops;
    t->p.outputs = t->outputs;
    t->p.io = t->io;
    t->p.ia = t->ia;
    t->p.fa = t->fa;
    t->p.blob = t->blob;
    t->p.strings = t->strings;
    t->p.n_strings = 1;
    return t;
}

static void tp_free(tp *t)
{
    for (int j = 0; j < TV; j++)
        free(t->buf[j]);
    free(t);
}

static int64_t numel_of(int nd, const int64_t *s)
{
    int64_t n = 1;
    for (int d = 0; d < nd; d++)
        n *= s[d];
    return n;
}

/* A f32 value; inputs are filled with random numbers, outputs left for the kernels. */
static int tp_val(tp *t, int kind, int nd, const int64_t *shape)
{
    int v = (int)t->p.n_values++;
    kp_value *x = &t->vals[v];
    x->dtype = KILN_F32;
    x->ndim = (uint8_t)nd;
    x->kind = (uint8_t)kind;
    memcpy(x->shape, shape, nd * sizeof *shape);
    int64_t n = numel_of(nd, shape);
    x->nbytes = (uint64_t)n * 4;
    if (kind != KP_VAL_CONST) {
        x->offset = t->arena;
        t->arena += kiln__align_up(x->nbytes, KP_ALIGN);
    }
    t->buf[v] = aligned_alloc(64, (size_t)kiln__align_up(x->nbytes, 64));
    float *f = t->buf[v];
    for (int64_t j = 0; j < n; j++)
        f[j] = t->positive ? 0.1f + 1.9f * (0.5f + 0.5f * frand()) : frand();
    return v;
}

static int act(tp *t, int nd, const int64_t *s) { return tp_val(t, KP_VAL_ACT, nd, s); }
static int cst(tp *t, int nd, const int64_t *s) { return tp_val(t, KP_VAL_CONST, nd, s); }

/* Appends an op; the outputs of the first op are the graph's outputs unless the test says
 * otherwise (tp_outputs). */
static void tp_op(tp *t, int kind, int sub, const int *in, int n_in, const int *out, int n_out,
                  const int64_t *ia, int n_ia, const float *fa, int n_fa)
{
    kp_program *p = &t->p;
    kp_op *op = &t->ops[p->n_ops++];
    op->kind = (uint16_t)kind;
    op->sub = (uint16_t)sub;
    op->n_in = (uint16_t)n_in;
    op->n_out = (uint16_t)n_out;
    op->io = p->n_io;
    op->ia = p->n_ia;
    op->fa = p->n_fa;
    memcpy(t->io + p->n_io, in, n_in * sizeof *in);
    memcpy(t->io + p->n_io + n_in, out, n_out * sizeof *out);
    p->n_io += (uint32_t)(n_in + n_out);
    if (n_ia)
        memcpy(t->ia + p->n_ia, ia, n_ia * sizeof *ia);
    if (n_fa)
        memcpy(t->fa + p->n_fa, fa, n_fa * sizeof *fa);
    op->n_ia = (uint32_t)n_ia;
    op->n_fa = (uint32_t)n_fa;
    p->n_ia += (uint32_t)n_ia;
    p->n_fa += (uint32_t)n_fa;
    if (p->n_ops == 1)
        for (int j = 0; j < n_out; j++)
            if (out[j] >= 0)
                t->outputs[p->n_outputs++] = (uint32_t)out[j];
}

static const int32_t *outs(tp *t) { return kp_op_out(&t->p, &t->ops[0]); }

/* ---- running and comparing ---- */

static kk_core *core;

/* max |a - b| / max |b| over n floats (NaN counts as a mismatch). */
static double rel_err(const float *a, const float *b, int64_t n)
{
    double md = 0, mr = 0;
    for (int64_t j = 0; j < n; j++) {
        double d = fabs((double)a[j] - b[j]);
        if (isnan(a[j]) != isnan(b[j]))
            return INFINITY;
        if (!isnan(d) && d > md)
            md = d;
        if (fabs(b[j]) > mr)
            mr = fabs(b[j]);
    }
    return mr > 0 ? md / mr : md;
}

/* Runs the op through `create_dnnl` (kd_create, or kk_create when via_kk) and through the
 * reference, each into its own output buffers; compares. alias_sum: the dnnl run gets the
 * sum operand `alias_sum` in the output's own buffer. Returns the worst relative error. */
static double run_compare(tp *t, const char *what, bool via_kk, int alias_sum,
                          uint64_t *copied)
{
    kp_program *p = &t->p;
    void *pd[TV], *pr[TV];
    float *yd[4] = { 0 }, *yr[4] = { 0 };
    for (uint32_t v = 0; v < p->n_values; v++)
        pd[v] = pr[v] = t->buf[v];
    const int32_t *out = outs(t);
    for (int j = 0; j < t->ops[0].n_out; j++) {
        if (out[j] < 0)
            continue;
        size_t n = (size_t)kiln__align_up(p->values[out[j]].nbytes, 64);
        yd[j] = aligned_alloc(64, n);
        yr[j] = aligned_alloc(64, n);
        memset(yd[j], 0x7f, n);
        memset(yr[j], 0x7f, n);
        pd[out[j]] = yd[j];
        pr[out[j]] = yr[j];
    }
    if (alias_sum >= 0) {
        memcpy(yd[0], t->buf[alias_sum], p->values[alias_sum].nbytes);
        pd[alias_sum] = yd[0];
    }
    /* the reference always takes dense weights: a packed weight's plain twin is buf[v+TV/2]
     * when the test set one up (see with_packed) */
    for (uint32_t v = 0; v < p->n_values; v++)
        if (p->values[v].n_layout && v + TV / 2 < TV && t->buf[v + TV / 2])
            pr[v] = t->buf[v + TV / 2];

    double worst = INFINITY;
    kk_kernel *kd = NULL, *kr = NULL;
    kiln_status s = via_kk ? kk_create(core, p, 0, pd, &kd, copied)
                           : kd_create(core, NULL, p, 0, pd, &kd, copied);
    if (!CHECK_OK(s)) {
        fprintf(stderr, "  in %s\n", what);
        goto out;
    }
    /* the reference side must not see packed layouts */
    kp_value saved[TV];
    memcpy(saved, p->values, p->n_values * sizeof *saved);
    for (uint32_t v = 0; v < p->n_values; v++)
        if (p->values[v].n_layout) {
            p->values[v].n_layout = 0;
            p->values[v].nbytes = (uint64_t)kp_value_numel(&p->values[v]) * 4;
        }
    s = kr_create(p, 0, pr, &kr);
    memcpy(p->values, saved, p->n_values * sizeof *saved);
    if (!CHECK_OK(s)) {
        fprintf(stderr, "  in %s (reference)\n", what);
        goto out;
    }
    if (!CHECK_OK(kk_run(kd)) || !CHECK_OK(kk_run(kr)))
        goto out;
    /* a second run must give the same (sum copy, scratchpad reuse) */
    if (alias_sum >= 0)
        memcpy(yd[0], t->buf[alias_sum], p->values[alias_sum].nbytes);
    if (!CHECK_OK(kk_run(kd)))
        goto out;
    worst = 0;
    for (int j = 0; j < t->ops[0].n_out; j++) {
        if (!yd[j])
            continue;
        double e = rel_err(yd[j], yr[j], kp_value_numel(&p->values[out[j]]));
        if (e > worst)
            worst = e;
    }
    if (!CHECK(worst <= 1e-4))
        fprintf(stderr, "  %s: relative error %g\n", what, worst);
    else if (getenv("KILN_TEST_VERBOSE"))
        printf("  %-64s %s %.2e\n", what, via_kk ? "kk" : "kd", worst);
out:
    kk_free(kd);
    kk_free(kr);
    for (int j = 0; j < 4; j++) {
        free(yd[j]);
        free(yr[j]);
    }
    return worst;
}

/* An op oneDNN must take: kd_supports, then kd_create vs reference, then kk_create. */
static void expect_dnnl(tp *t, const char *what)
{
    if (!CHECK(kd_supports(&t->p, 0))) {
        fprintf(stderr, "  kd_supports declined %s\n", what);
        return;
    }
    CHECK_OK(kk_check(&t->p, 0));
    run_compare(t, what, false, -1, NULL);
    run_compare(t, what, true, -1, NULL);
}

/* An op oneDNN declines: kk_create must still run it (the reference). */
static void expect_ref(tp *t, const char *what)
{
    if (!CHECK(!kd_supports(&t->p, 0)))
        fprintf(stderr, "  kd_supports took %s\n", what);
    run_compare(t, what, true, -1, NULL);
}

/* An op oneDNN may or may not take on this machine (kd_create may decline the shapes):
 * kk_create must run it either way. */
static void expect_any(tp *t, const char *what)
{
    CHECK_OK(kk_check(&t->p, 0));
    run_compare(t, what, true, -1, NULL);
}

/* ---- op builders ---- */

enum { POST_MAX = 6 };
typedef struct post_spec {
    int n;
    int type[POST_MAX], alg[POST_MAX];
    float alpha[POST_MAX], beta[POST_MAX];
    int nd[POST_MAX];
    int64_t shape[POST_MAX][KILN_MAX_DIMS];   /* operand shape (SUM: Y's) */
} post_spec;

/* Appends post-ops to ia/fa/in; creates operand values. */
static void add_post(tp *t, const post_spec *ps, int64_t *ia, int *nia, float *fa, int *nfa,
                     int *in, int *nin)
{
    ia[(*nia)++] = ps ? ps->n : 0;
    for (int j = 0; ps && j < ps->n; j++) {
        ia[(*nia)++] = ps->type[j];
        ia[(*nia)++] = ps->alg[j];
        fa[(*nfa)++] = ps->alpha[j];
        fa[(*nfa)++] = ps->beta[j];
        if (ps->type[j] != KP_POST_UNARY)
            in[(*nin)++] = act(t, ps->nd[j], ps->shape[j]);
    }
}

typedef struct conv_spec {
    int64_t n, c, o, g, nsp;
    int64_t in[3], k[3], s[3], d[3], pb[3], pe[3], op[3];
    bool bias, transpose, const_w;
} conv_spec;

static tp *make_conv(const conv_spec *cs, post_spec *ps)
{
    tp *t = tp_new();
    int64_t xs[5] = { cs->n, cs->c }, ws[5], ys[5] = { cs->n, cs->o };
    int nd = 2 + (int)cs->nsp;
    if (cs->transpose) {
        ws[0] = cs->c;
        ws[1] = cs->o / cs->g;
    } else {
        ws[0] = cs->o;
        ws[1] = cs->c / cs->g;
    }
    for (int d = 0; d < cs->nsp; d++) {
        xs[2 + d] = cs->in[d];
        ws[2 + d] = cs->k[d];
        int64_t range = (cs->k[d] - 1) * cs->d[d] + 1;
        ys[2 + d] = cs->transpose
                        ? cs->s[d] * (cs->in[d] - 1) + cs->op[d] + range - cs->pb[d] - cs->pe[d]
                        : (cs->in[d] + cs->pb[d] + cs->pe[d] - range) / cs->s[d] + 1;
    }
    int in[8], nin = 0;
    in[nin++] = act(t, nd, xs);
    in[nin++] = cs->const_w ? cst(t, nd, ws) : act(t, nd, ws);
    if (cs->bias) {
        int64_t bs[1] = { cs->o };
        in[nin++] = cst(t, 1, bs);
    } else if (ps && ps->n) {
        in[nin++] = -1;   /* the bias slot stays when post-op operands follow */
    }
    int y = act(t, nd, ys);
    if (ps)
        for (int j = 0; j < ps->n; j++)
            if (ps->type[j] == KP_POST_SUM) {
                ps->nd[j] = nd;
                memcpy(ps->shape[j], ys, sizeof ys);
            }
    int64_t ia[64];
    float fa[16];
    int nia = 0, nfa = 0;
    ia[nia++] = cs->g;
    ia[nia++] = cs->nsp;
    for (int d = 0; d < cs->nsp; d++) ia[nia++] = cs->s[d];
    for (int d = 0; d < cs->nsp; d++) ia[nia++] = cs->d[d];
    for (int d = 0; d < cs->nsp; d++) ia[nia++] = cs->pb[d];
    for (int d = 0; d < cs->nsp; d++) ia[nia++] = cs->pe[d];
    if (cs->transpose)
        for (int d = 0; d < cs->nsp; d++) ia[nia++] = cs->op[d];
    add_post(t, ps, ia, &nia, fa, &nfa, in, &nin);
    tp_op(t, cs->transpose ? KP_CONV_TRANSPOSE : KP_CONV, 0, in, nin, &y, 1, ia, nia, fa, nfa);
    return t;
}

static conv_spec conv2d(int64_t n, int64_t c, int64_t o, int64_t g, int64_t h, int64_t w,
                        int64_t k, int64_t s, int64_t p)
{
    conv_spec cs = { .n = n, .c = c, .o = o, .g = g, .nsp = 2, .in = { h, w }, .k = { k, k },
                     .s = { s, s }, .d = { 1, 1 }, .pb = { p, p }, .pe = { p, p },
                     .const_w = true };
    return cs;
}

static void post_unary(post_spec *ps, int alg, float a, float b)
{
    int j = ps->n++;
    ps->type[j] = KP_POST_UNARY;
    ps->alg[j] = alg;
    ps->alpha[j] = a;
    ps->beta[j] = b;
}

static void post_sum(post_spec *ps)
{
    int j = ps->n++;
    ps->type[j] = KP_POST_SUM;
    ps->alg[j] = 0;
}

static void post_binary(post_spec *ps, int alg, int nd, const int64_t *shape)
{
    int j = ps->n++;
    ps->type[j] = KP_POST_BINARY;
    ps->alg[j] = alg;
    ps->nd[j] = nd;
    memcpy(ps->shape[j], shape, nd * sizeof *shape);
}

/* ---- tests ---- */

static void test_conv(void)
{
    conv_spec cs = conv2d(2, 3, 4, 1, 9, 9, 3, 1, 1);
    cs.bias = true;
    tp *t = make_conv(&cs, NULL);
    expect_dnnl(t, "conv 3x3 pad 1 bias");
    tp_free(t);

    cs = conv2d(1, 4, 6, 2, 11, 10, 3, 2, 0);
    cs.d[0] = 2;
    cs.pb[0] = 1; cs.pe[0] = 2; cs.pb[1] = 0; cs.pe[1] = 1;
    cs.s[1] = 1;
    t = make_conv(&cs, NULL);
    expect_dnnl(t, "conv groups=2 strides dilations asymmetric pads");
    tp_free(t);

    post_spec ps = { 0 };
    post_unary(&ps, KP_U_RELU, 0, 0);
    cs = conv2d(2, 8, 8, 8, 7, 7, 3, 1, 1);
    cs.bias = true;
    t = make_conv(&cs, &ps);
    expect_dnnl(t, "depthwise conv + relu");
    tp_free(t);

    /* 1x1 conv with activation (non-const) weights */
    cs = conv2d(1, 16, 32, 1, 5, 5, 1, 1, 0);
    cs.const_w = false;
    t = make_conv(&cs, NULL);
    expect_dnnl(t, "1x1 conv, weights computed at run time");
    tp_free(t);

    /* 1-D and 3-D */
    cs = (conv_spec){ .n = 2, .c = 3, .o = 5, .g = 1, .nsp = 1, .in = { 20 }, .k = { 4 },
                      .s = { 2 }, .d = { 1 }, .pb = { 1 }, .pe = { 2 }, .bias = true,
                      .const_w = true };
    t = make_conv(&cs, NULL);
    expect_dnnl(t, "conv 1-D");
    tp_free(t);
    cs = (conv_spec){ .n = 1, .c = 2, .o = 4, .g = 1, .nsp = 3, .in = { 5, 6, 7 },
                      .k = { 3, 3, 3 }, .s = { 1, 2, 1 }, .d = { 1, 1, 2 }, .pb = { 1, 1, 1 },
                      .pe = { 1, 0, 1 }, .bias = true, .const_w = true };
    t = make_conv(&cs, NULL);
    expect_dnnl(t, "conv 3-D");
    tp_free(t);
}

static void test_conv_post(void)
{
    /* relu, then + residual (sum), then * per-channel scale (binary), then clip */
    conv_spec cs = conv2d(2, 16, 16, 1, 8, 8, 3, 1, 1);
    cs.bias = true;
    post_spec ps = { 0 };
    int64_t chan[4] = { 1, 16, 1, 1 };
    post_unary(&ps, KP_U_RELU, 0, 0);
    post_sum(&ps);
    post_binary(&ps, KP_B_MUL, 4, chan);
    post_unary(&ps, KP_U_CLIP, -0.5f, 0.75f);
    tp *t = make_conv(&cs, &ps);
    expect_dnnl(t, "conv + relu + sum + mul(per channel) + clip");
    /* the sum operand in the output's own buffer (the planner's usual choice) */
    int sum_operand = t->io[3];
    CHECK(run_compare(t, "conv + sum, operand aliasing dst", false, sum_operand, NULL) <= 1e-4);
    tp_free(t);

    /* full-tensor binary add, scalar binary sub, a second sum (becomes a binary add) */
    ps = (post_spec){ 0 };
    int64_t full[4] = { 2, 16, 8, 8 }, one[1] = { 1 };
    post_binary(&ps, KP_B_ADD, 4, full);
    post_binary(&ps, KP_B_SUB, 1, one);
    post_sum(&ps);
    post_sum(&ps);
    post_unary(&ps, KP_U_SILU, 0, 0);
    t = make_conv(&cs, &ps);
    expect_dnnl(t, "conv + add(full) + sub(scalar) + sum + sum + silu");
    /* the sum after an unfused post-op would find its operand overwritten: declined */
    {
        void *ptr[TV];
        for (int v = 0; v < TV; v++)
            ptr[v] = t->buf[v];
        ptr[t->io[5]] = t->buf[outs(t)[0]];
        kk_kernel *k = NULL;
        CHECK_STATUS(kd_create(core, NULL, &t->p, 0, ptr, &k, NULL), KILN_ERR_UNSUPPORTED);
        CHECK(k == NULL);
    }
    tp_free(t);

    /* 1x1 conv (plain gemm path) with a sum, operand apart and aliasing dst */
    cs = conv2d(1, 24, 40, 1, 6, 5, 1, 1, 0);
    ps = (post_spec){ 0 };
    post_sum(&ps);
    post_unary(&ps, KP_U_RELU, 0, 0);
    t = make_conv(&cs, &ps);
    expect_dnnl(t, "1x1 conv + sum + relu");
    CHECK(run_compare(t, "1x1 conv + sum aliasing dst + relu", false, t->io[3], NULL) <= 1e-4);
    tp_free(t);

    /* a post-op oneDNN has no equivalent for: declined, the reference runs it */
    ps = (post_spec){ 0 };
    post_unary(&ps, KP_U_SELU, 1.67f, 1.05f);
    t = make_conv(&cs, &ps);
    expect_ref(t, "conv + selu");
    tp_free(t);
}

static void test_conv_transpose(void)
{
    conv_spec cs = conv2d(2, 4, 6, 2, 5, 6, 3, 2, 1);
    cs.transpose = true;
    cs.op[0] = 1; cs.op[1] = 0;
    cs.bias = true;
    tp *t = make_conv(&cs, NULL);
    expect_dnnl(t, "conv-transpose groups=2 stride 2 output_padding");
    tp_free(t);

    post_spec ps = { 0 };
    post_unary(&ps, KP_U_RELU, 0, 0);
    cs = conv2d(1, 8, 3, 1, 7, 7, 4, 2, 1);
    cs.transpose = true;
    cs.d[1] = 2;
    t = make_conv(&cs, &ps);
    expect_dnnl(t, "conv-transpose k4 s2 dilation + relu");
    tp_free(t);
}

static tp *make_matmul(int nda, const int64_t *as, int ndb, const int64_t *bs, int ndy,
                       const int64_t *ys, int ndbias, const int64_t *bias, bool const_b,
                       post_spec *ps)
{
    tp *t = tp_new();
    int in[8], nin = 0;
    in[nin++] = act(t, nda, as);
    in[nin++] = const_b ? cst(t, ndb, bs) : act(t, ndb, bs);
    if (ndbias)
        in[nin++] = cst(t, ndbias, bias);
    else if (ps && ps->n)
        in[nin++] = -1;
    int y = act(t, ndy, ys);
    if (ps)
        for (int j = 0; j < ps->n; j++)
            if (ps->type[j] == KP_POST_SUM) {
                ps->nd[j] = ndy;
                memcpy(ps->shape[j], ys, ndy * sizeof *ys);
            }
    int64_t ia[16];
    float fa[16];
    int nia = 0, nfa = 0;
    add_post(t, ps, ia, &nia, fa, &nfa, in, &nin);
    tp_op(t, KP_MATMUL, 0, in, nin, &y, 1, ia, nia, fa, nfa);
    return t;
}

static void test_matmul(void)
{
    int64_t a[4] = { 5, 7 }, b[4] = { 7, 9 }, y[4] = { 5, 9 }, bias[1] = { 9 };
    post_spec ps = { 0 };
    post_unary(&ps, KP_U_GELU, 0, 0);
    tp *t = make_matmul(2, a, 2, b, 2, y, 1, bias, true, &ps);
    expect_dnnl(t, "matmul 2-D x const + bias + gelu");
    tp_free(t);

    int64_t a4[4] = { 2, 3, 5, 7 }, y4[4] = { 2, 3, 5, 9 };
    t = make_matmul(4, a4, 2, b, 4, y4, 0, NULL, true, NULL);
    expect_dnnl(t, "matmul batched A x 2-D const B");
    tp_free(t);

    /* both batched, broadcasting each other; bias broadcastable (5 x 1) */
    int64_t a3[4] = { 2, 1, 5, 7 }, b3[4] = { 1, 3, 7, 9 }, bias2[2] = { 5, 1 };
    int64_t row[2] = { 1, 9 };
    ps = (post_spec){ 0 };
    post_sum(&ps);
    post_binary(&ps, KP_B_MAX, 2, row);
    t = make_matmul(4, a3, 4, b3, 4, y4, 2, bias2, false, &ps);
    expect_any(t, "matmul broadcast batch + bias(5x1) + sum + max(row)");
    tp_free(t);
    int64_t bias3[1] = { 9 };
    ps = (post_spec){ 0 };
    post_sum(&ps);
    post_binary(&ps, KP_B_MAX, 2, row);
    t = make_matmul(4, a3, 4, b3, 4, y4, 1, bias3, false, &ps);
    expect_dnnl(t, "matmul broadcast batch + bias(9) + sum + max(row)");
    tp_free(t);

    /* batch folded into M (B not batched): bias, full and per-row operands fold too */
    int64_t af[3] = { 64, 1, 256 }, bf[2] = { 256, 96 }, yf[3] = { 64, 1, 96 },
            full[3] = { 64, 1, 96 }, col[3] = { 1, 1, 96 };
    ps = (post_spec){ 0 };
    post_binary(&ps, KP_B_ADD, 3, full);
    post_binary(&ps, KP_B_MUL, 3, col);
    post_sum(&ps);
    post_unary(&ps, KP_U_GELU_TANH, 0, 0);
    int64_t nb[1] = { 96 };
    t = make_matmul(3, af, 2, bf, 3, yf, 1, nb, true, &ps);
    expect_dnnl(t, "matmul 64x1x256 by 256x96 (folded) + bias + add + mul + sum + gelu");
    tp_free(t);
    /* an operand varying over the batch but not over M cannot fold: still right */
    int64_t a5[3] = { 4, 8, 16 }, b5[2] = { 16, 12 }, y5[3] = { 4, 8, 12 }, per_b[3] = { 4, 1, 12 };
    ps = (post_spec){ 0 };
    post_binary(&ps, KP_B_SUB, 3, per_b);
    t = make_matmul(3, a5, 2, b5, 3, y5, 0, NULL, true, &ps);
    expect_any(t, "matmul 4x8x16 by 16x12 - (4x1x12) (not folded)");
    tp_free(t);

    /* attention-like: 3-D x 3-D, both activations */
    int64_t q[3] = { 4, 16, 8 }, k[3] = { 4, 8, 16 }, s[3] = { 4, 16, 16 };
    t = make_matmul(3, q, 3, k, 3, s, 0, NULL, false, NULL);
    expect_dnnl(t, "matmul 3-D x 3-D");
    tp_free(t);
}

static tp *make_pool(int kind, int sub, int nsp, const int64_t *in, const int64_t *k,
                     const int64_t *s, const int64_t *d, const int64_t *pb, const int64_t *pe,
                     int include_pad, int ceil_mode)
{
    tp *t = tp_new();
    int64_t xs[5] = { 2, 3 }, ys[5] = { 2, 3 };
    for (int j = 0; j < nsp; j++) {
        xs[2 + j] = in[j];
        if (kind == KP_GLOBAL_POOL) {
            ys[2 + j] = 1;
            continue;
        }
        int64_t range = (k[j] - 1) * d[j] + 1, num = in[j] + pb[j] + pe[j] - range;
        int64_t o = (ceil_mode ? (num + s[j] - 1) / s[j] : num / s[j]) + 1;
        if (ceil_mode && (o - 1) * s[j] >= in[j] + pb[j])
            o--;
        ys[2 + j] = o;
    }
    int x = act(t, 2 + nsp, xs), y = act(t, 2 + nsp, ys);
    int64_t ia[32];
    int nia = 0;
    if (kind == KP_POOL) {
        ia[nia++] = nsp;
        for (int j = 0; j < nsp; j++) ia[nia++] = k[j];
        for (int j = 0; j < nsp; j++) ia[nia++] = s[j];
        for (int j = 0; j < nsp; j++) ia[nia++] = d[j];
        for (int j = 0; j < nsp; j++) ia[nia++] = pb[j];
        for (int j = 0; j < nsp; j++) ia[nia++] = pe[j];
        ia[nia++] = include_pad;
        ia[nia++] = ceil_mode;
    }
    tp_op(t, kind, sub, &x, 1, &y, 1, ia, nia, NULL, 0);
    return t;
}

static void test_pool(void)
{
    int64_t in[3] = { 112, 112 }, k[3] = { 3, 3 }, s[3] = { 2, 2 }, d[3] = { 1, 1 },
            p1[3] = { 1, 1 }, p0[3] = { 0, 0 };
    tp *t = make_pool(KP_POOL, KP_POOL_MAX, 2, in, k, s, d, p1, p1, 0, 0);
    expect_dnnl(t, "maxpool 3x3 s2 p1");
    tp_free(t);

    int64_t in2[3] = { 10, 11 }, k2[3] = { 3, 2 };
    t = make_pool(KP_POOL, KP_POOL_MAX, 2, in2, k2, s, d, p0, p0, 0, 1);
    expect_dnnl(t, "maxpool ceil_mode");
    tp_free(t);
    t = make_pool(KP_POOL, KP_POOL_AVG, 2, in2, k2, s, d, p0, p0, 0, 1);
    expect_dnnl(t, "avgpool ceil_mode exclude pad");
    tp_free(t);
    t = make_pool(KP_POOL, KP_POOL_AVG, 2, in2, k2, s, d, p1, p1, 1, 0);
    expect_dnnl(t, "avgpool include pad");
    tp_free(t);
    t = make_pool(KP_POOL, KP_POOL_AVG, 2, in2, k2, s, d, p1, p0, 0, 0);
    expect_dnnl(t, "avgpool exclude pad, floor drops a column");
    tp_free(t);
    /* ceil_mode windows past pads_end with count_include_pad: oneDNN would count them */
    t = make_pool(KP_POOL, KP_POOL_AVG, 2, in2, k2, s, d, p1, p1, 1, 1);
    expect_ref(t, "avgpool ceil_mode include pad (differs from ONNX)");
    tp_free(t);

    int64_t d2[3] = { 2, 2 };
    t = make_pool(KP_POOL, KP_POOL_MAX, 2, in2, k2, s, d2, p1, p1, 0, 0);
    expect_ref(t, "maxpool dilated");
    tp_free(t);
    t = make_pool(KP_POOL, KP_POOL_AVG, 2, in2, k2, s, d2, p1, p1, 0, 0);
    expect_ref(t, "avgpool dilated");
    tp_free(t);

    int64_t in1[1] = { 17 }, k1[1] = { 4 }, s1[1] = { 3 }, d1[1] = { 1 }, pb1[1] = { 1 },
            pe1[1] = { 2 };
    t = make_pool(KP_POOL, KP_POOL_AVG, 1, in1, k1, s1, d1, pb1, pe1, 1, 0);
    expect_dnnl(t, "avgpool 1-D include pad");
    tp_free(t);
    int64_t in3[3] = { 6, 7, 8 }, k3[3] = { 2, 3, 2 }, s3[3] = { 2, 1, 2 }, d3[3] = { 1, 1, 1 },
            p3[3] = { 0, 1, 0 };
    t = make_pool(KP_POOL, KP_POOL_MAX, 3, in3, k3, s3, d3, p3, p3, 0, 1);
    expect_dnnl(t, "maxpool 3-D ceil_mode");
    tp_free(t);

    int64_t g[3] = { 7, 9 };
    t = make_pool(KP_GLOBAL_POOL, KP_POOL_AVG, 2, g, NULL, NULL, NULL, NULL, NULL, 0, 0);
    expect_dnnl(t, "global avgpool");
    tp_free(t);
    t = make_pool(KP_GLOBAL_POOL, KP_POOL_MAX, 2, g, NULL, NULL, NULL, NULL, NULL, 0, 0);
    expect_dnnl(t, "global maxpool");
    tp_free(t);
}

static void test_softmax_norms(void)
{
    int64_t s[3] = { 2, 5, 3 };
    for (int sub = 0; sub < 2; sub++)
        for (int64_t axis = 0; axis < 3; axis++) {
            tp *t = tp_new();
            int x = act(t, 3, s), y = act(t, 3, s);
            tp_op(t, KP_SOFTMAX, sub, &x, 1, &y, 1, &axis, 1, NULL, 0);
            char what[64];
            snprintf(what, sizeof what, "%s axis %d", sub ? "log-softmax" : "softmax", (int)axis);
            if (axis == 2)
                expect_dnnl(t, what);
            else
                expect_ref(t, what);   /* not innermost: oneDNN has only its reference */
            tp_free(t);
        }

    int64_t ls[3] = { 2, 3, 16 };
    for (int64_t axis = 1; axis < 3; axis++)
        for (int with_b = 0; with_b < 2; with_b++) {
            tp *t = tp_new();
            int in[3];
            in[0] = act(t, 3, ls);
            in[1] = cst(t, 3 - (int)axis, ls + axis);
            if (with_b)
                in[2] = cst(t, 3 - (int)axis, ls + axis);
            int y = act(t, 3, ls);
            float eps = 1e-5f;
            tp_op(t, KP_LAYERNORM, 0, in, 2 + with_b, &y, 1, &axis, 1, &eps, 1);
            expect_dnnl(t, with_b ? "layernorm with bias" : "layernorm without bias");
            tp_free(t);
        }
    {   /* Mean wanted: the reference's */
        tp *t = tp_new();
        int64_t axis = 2, ms[3] = { 2, 3, 1 };
        int in[3] = { act(t, 3, ls), cst(t, 1, ls + 2), cst(t, 1, ls + 2) };
        int out[3] = { act(t, 3, ls), act(t, 3, ms), -1 };
        float eps = 1e-5f;
        tp_op(t, KP_LAYERNORM, 0, in, 3, out, 3, &axis, 1, &eps, 1);
        expect_ref(t, "layernorm with Mean output");
        tp_free(t);
    }

    int64_t bs[4][4] = { { 2, 3, 4, 5 }, { 2, 3 }, { 1, 4, 2, 3 } };
    int bnd[3] = { 4, 2, 4 };
    for (int c = 0; c < 3; c++) {
        tp *t = tp_new();
        int in[5];
        in[0] = act(t, bnd[c], bs[c]);
        for (int j = 1; j < 5; j++)
            in[j] = cst(t, 1, &bs[c][1]);
        float *var = t->buf[in[4]];
        for (int j = 0; j < bs[c][1]; j++)
            var[j] = fabsf(var[j]) + 0.5f;
        int y = act(t, bnd[c], bs[c]);
        float eps = 1e-5f;
        tp_op(t, KP_BATCHNORM, 0, in, 5, &y, 1, NULL, 0, &eps, 1);
        expect_dnnl(t, "batchnorm");
        tp_free(t);
    }
}

static void test_unary(void)
{
    static const struct { int alg; float a, b; bool positive; const char *name; } u[] = {
        { KP_U_IDENTITY, 0, 0, false, "identity" },
        { KP_U_RELU, 0, 0, false, "relu" },
        { KP_U_LEAKY_RELU, 0.1f, 0, false, "leaky_relu" },
        { KP_U_CLIP, -0.3f, 0.6f, false, "clip" },
        { KP_U_CLIP, -INFINITY, 0.2f, false, "clip (max only)" },
        { KP_U_SIGMOID, 0, 0, false, "sigmoid" },
        { KP_U_HARD_SWISH, 0, 0, false, "hardswish" },
        { KP_U_TANH, 0, 0, false, "tanh" },
        { KP_U_GELU, 0, 0, false, "gelu" },
        { KP_U_GELU_TANH, 0, 0, false, "gelu_tanh" },
        { KP_U_EXP, 0, 0, false, "exp" },
        { KP_U_SQRT, 0, 0, true, "sqrt" },
        { KP_U_ABS, 0, 0, false, "abs" },
        { KP_U_NEG, 0, 0, false, "neg" },
        { KP_U_RECIPROCAL, 0, 0, true, "reciprocal" },
        { KP_U_ELU, 0.7f, 0, false, "elu" },
        { KP_U_SILU, 0, 0, false, "silu" },
        { KP_U_MISH, 0, 0, false, "mish" },
        { KP_U_POW_SCALAR, 2.5f, 0, true, "pow 2.5" },
        { KP_U_POW_SCALAR, 2.f, 0, false, "pow 2" },
        { KP_U_LINEAR, 1.5f, -0.25f, false, "linear" },
    };
    int64_t s[3] = { 2, 3, 37 };
    for (size_t j = 0; j < sizeof u / sizeof u[0]; j++) {
        tp *t = tp_new();
        t->positive = u[j].positive;
        int x = act(t, 3, s), y = act(t, 3, s);
        float fa[2] = { u[j].a, u[j].b };
        tp_op(t, KP_UNARY, u[j].alg, &x, 1, &y, 1, NULL, 0, fa, 2);
        expect_dnnl(t, u[j].name);
        tp_free(t);
    }
    {   /* log and softplus stay with the reference: oneDNN's are not accurate enough */
        static const struct { int alg; bool positive; const char *name; } r[] = {
            { KP_U_LOG, true, "log" }, { KP_U_SOFTPLUS, false, "softplus" },
        };
        for (size_t j = 0; j < sizeof r / sizeof r[0]; j++) {
            tp *t = tp_new();
            t->positive = r[j].positive;
            int x = act(t, 3, s), y = act(t, 3, s);
            float fa[2] = { 0, 0 };
            tp_op(t, KP_UNARY, r[j].alg, &x, 1, &y, 1, NULL, 0, fa, 2);
            expect_ref(t, r[j].name);
            tp_free(t);
        }
    }
    {   /* round: half to even, on exact halves */
        tp *t = tp_new();
        int x = act(t, 3, s), y = act(t, 3, s);
        float *xv = t->buf[x];
        for (int j = 0; j < 2 * 3 * 37; j++)
            xv[j] = (float)(j - 111) * 0.5f;
        float fa[2] = { 0, 0 };
        tp_op(t, KP_UNARY, KP_U_ROUND, &x, 1, &y, 1, NULL, 0, fa, 2);
        expect_dnnl(t, "round");
        tp_free(t);
    }
    {   /* in place (the planner may give Y the input's slot) */
        tp *t = tp_new();
        int x = act(t, 3, s), y = act(t, 3, s);
        float fa[2] = { 0, 0 };
        tp_op(t, KP_UNARY, KP_U_TANH, &x, 1, &y, 1, NULL, 0, fa, 2);
        int64_t n = numel_of(3, s);
        float *ref = malloc(n * 4);
        for (int64_t j = 0; j < n; j++)
            ref[j] = tanhf(((float *)t->buf[x])[j]);
        void *ptr[2] = { t->buf[x], t->buf[x] };
        kk_kernel *k = NULL;
        CHECK_OK(kd_create(core, NULL, &t->p, 0, ptr, &k, NULL));
        if (k) {
            CHECK_OK(kk_run(k));
            CHECK(rel_err(t->buf[x], ref, n) <= 1e-5);
        }
        kk_free(k);
        free(ref);
        tp_free(t);
    }
    {
        tp *t = tp_new();
        int x = act(t, 3, s), y = act(t, 3, s);
        float fa[2] = { 1.67f, 1.05f };
        tp_op(t, KP_UNARY, KP_U_SELU, &x, 1, &y, 1, NULL, 0, fa, 2);
        expect_ref(t, "selu");
        tp_free(t);
    }
}

static void test_binary(void)
{
    /* dnnl: 1 oneDNN takes it, 2 kd_supports does and oneDNN may decline, 0 reference */
    static const struct { int nda, ndb, ndy; int64_t a[4], b[4], y[4]; int alg, dnnl; } c[] = {
        { 4, 4, 4, { 2, 3, 4, 5 }, { 2, 3, 4, 5 }, { 2, 3, 4, 5 }, KP_B_ADD, 1 },
        { 4, 3, 4, { 2, 3, 4, 5 }, { 3, 1, 5 }, { 2, 3, 4, 5 }, KP_B_SUB, 2 },
        { 4, 1, 4, { 2, 3, 4, 5 }, { 1 }, { 2, 3, 4, 5 }, KP_B_MUL, 1 },
        { 4, 4, 4, { 2, 3, 4, 5 }, { 1, 3, 1, 1 }, { 2, 3, 4, 5 }, KP_B_DIV, 1 },
        { 2, 4, 4, { 4, 1 }, { 2, 3, 4, 5 }, { 2, 3, 4, 5 }, KP_B_MAX, 2 },     /* swapped */
        { 0, 2, 2, { 0 }, { 3, 4 }, { 3, 4 }, KP_B_MIN, 1 },                    /* scalar A */
        { 3, 1, 3, { 4, 6, 8 }, { 8 }, { 4, 6, 8 }, KP_B_ADD, 2 },               /* row bias */
        { 2, 4, 4, { 4, 1 }, { 2, 3, 4, 5 }, { 2, 3, 4, 5 }, KP_B_SUB, 0 },     /* A broadcasts */
        { 2, 2, 2, { 3, 1 }, { 1, 4 }, { 3, 4 }, KP_B_ADD, 0 },                 /* both do */
        { 2, 2, 2, { 3, 4 }, { 3, 4 }, { 3, 4 }, KP_B_POW, 0 },
    };
    for (size_t j = 0; j < sizeof c / sizeof c[0]; j++) {
        tp *t = tp_new();
        t->positive = c[j].alg == KP_B_DIV || c[j].alg == KP_B_POW;
        int in[2] = { act(t, c[j].nda, c[j].a), act(t, c[j].ndb, c[j].b) };
        int y = act(t, c[j].ndy, c[j].y);
        int64_t fmod = 0;
        tp_op(t, KP_BINARY, c[j].alg, in, 2, &y, 1, &fmod, 0, NULL, 0);
        char what[64];
        snprintf(what, sizeof what, "binary case %zu", j);
        if (c[j].dnnl == 1)
            expect_dnnl(t, what);
        else if (c[j].dnnl == 2)
            expect_any(t, what);
        else
            expect_ref(t, what);
        tp_free(t);
    }
}

/* Serialises a layout by hand (the format documented in dnnl.c), for foreign layouts. */
static size_t put_layout(uint8_t *b, int nd, const int64_t *dims, const int64_t *strides,
                         const int64_t *plain, int nb, const int64_t *blks, const int64_t *idxs,
                         const int64_t *padded)
{
    memset(b, 0, 16);
    b[0] = 1; b[1] = 1; b[2] = KILN_F32; b[3] = (uint8_t)nd; b[4] = (uint8_t)nb;
    uint8_t *q = b + 16;
    int64_t f[5];
    for (int d = 0; d < nd; d++) {
        f[0] = dims[d]; f[1] = padded ? padded[d] : dims[d]; f[2] = 0; f[3] = strides[d];
        f[4] = plain[d];
        memcpy(q, f, 40);   /* little-endian machine */
        q += 40;
    }
    for (int j = 0; j < nb; j++) {
        memcpy(q, &blks[j], 8);
        memcpy(q + 8, &idxs[j], 8);
        q += 16;
    }
    return (size_t)(q - b);
}

/* Installs packed bytes as weight w (keeping the plain data as its twin for the reference). */
static void use_packed(tp *t, int w, const void *packed, size_t n_packed, const void *layout,
                       size_t n_layout)
{
    kp_value *wv = &t->vals[w];
    if (!t->buf[w + TV / 2]) {
        t->buf[w + TV / 2] = t->buf[w];
        t->buf[w] = NULL;
    }
    free(t->buf[w]);
    t->buf[w] = aligned_alloc(64, kiln__align_up(n_packed, 64));
    memcpy(t->buf[w], packed, n_packed);
    memcpy(t->blob, layout, n_layout);
    t->p.n_blob = (uint32_t)n_layout;
    wv->layout = 0;
    wv->n_layout = (uint32_t)n_layout;
    wv->nbytes = n_packed;
}

static kiln_status create_at(tp *t, kk_kernel **k)
{
    void *ptr[TV];
    for (int v = 0; v < TV; v++)
        ptr[v] = t->buf[v];
    return kk_create(core, &t->p, 0, ptr, k, NULL);
}

static void test_packing_matmul(void)
{
    int64_t a[2] = { 8, 64 }, b[2] = { 64, 96 }, y[2] = { 8, 96 }, bias[1] = { 96 };
    post_spec ps = { 0 };
    post_unary(&ps, KP_U_RELU, 0, 0);
    tp *t = make_matmul(2, a, 2, b, 2, y, 1, bias, true, &ps);
    int w = t->io[1];
    kp_value *wv = &t->vals[w];
    const uint64_t plain_bytes = wv->nbytes;
    void *packed = NULL, *layout = NULL;
    size_t n_packed = 0, n_layout = 0;
    CHECK_OK(kk_pack_weight(&t->p, 0, 1, t->buf[w], &packed, &n_packed, &layout, &n_layout));
    /* on an AVX-512 machine oneDNN's matmul wants a constant B blocked */
    if (!CHECK(packed && layout && n_packed >= plain_bytes))
        goto out;
    char name[128];
    const char *nm = kk_layout_name(layout, n_layout, name, sizeof name);
    CHECK(strncmp(nm, "blocked:", 8) == 0);
    printf("  packed matmul B: %s, %zu bytes (plain %llu)\n", nm, n_packed,
           (unsigned long long)plain_bytes);
    CHECK(((uintptr_t)packed % KP_ALIGN) == 0);
    use_packed(t, w, packed, n_packed, layout, n_layout);

    /* used in place */
    uint64_t copied = 0;
    run_compare(t, "matmul with its packed B", true, -1, &copied);
    CHECK(copied == 0);

    /* unpack gives back the plain data */
    float *back = malloc(plain_bytes);
    CHECK_OK(kd_unpack(wv, layout, n_layout, t->buf[w], back));
    CHECK(memcmp(back, t->buf[w + TV / 2], plain_bytes) == 0);
    free(back);

    /* declined op (a post-op oneDNN lacks): unpacked for the reference, bytes counted */
    int alg_at = 2;   /* ia: n_post, type, alg */
    t->ia[alg_at] = KP_U_SELU;
    t->fa[0] = 1.67f;
    t->fa[1] = 1.05f;
    CHECK(!kd_supports(&t->p, 0));
    copied = 0;
    run_compare(t, "declined matmul with a packed B (unpacked for the reference)", true, -1,
                &copied);
    CHECK(copied == plain_bytes);
    t->ia[alg_at] = KP_U_RELU;

    /* corrupt descriptors: KILN_ERR_FORMAT, nothing created */
    kk_kernel *k = NULL;
    t->blob[0] = 9;   /* version */
    CHECK_STATUS(create_at(t, &k), KILN_ERR_FORMAT);
    t->blob[0] = 1;
    wv->nbytes = n_packed - 64;   /* layout addresses more than the value stores */
    CHECK_STATUS(create_at(t, &k), KILN_ERR_FORMAT);
    wv->nbytes = n_packed;
    t->blob[4] = 13;   /* too many blocks */
    CHECK_STATUS(create_at(t, &k), KILN_ERR_FORMAT);
    t->blob[4] = ((uint8_t *)layout)[4];
    t->blob[3] = 3;   /* rank does not match the size */
    CHECK_STATUS(create_at(t, &k), KILN_ERR_FORMAT);
    t->blob[3] = ((uint8_t *)layout)[3];
    wv->n_layout = (uint32_t)n_layout - 1;   /* truncated */
    CHECK_STATUS(create_at(t, &k), KILN_ERR_FORMAT);
    wv->n_layout = (uint32_t)n_layout;
    int64_t big = (int64_t)1 << 50;   /* huge stride of dim 0 */
    memcpy(t->blob + 16 + 24, &big, 8);
    CHECK_STATUS(create_at(t, &k), KILN_ERR_FORMAT);
    memcpy(t->blob, layout, n_layout);
    int64_t zero = 0;   /* a dim of 0 */
    memcpy(t->blob + 16, &zero, 8);
    CHECK_STATUS(create_at(t, &k), KILN_ERR_FORMAT);
    memcpy(t->blob, layout, n_layout);
    t->vals[w].layout = 4000;   /* outside the blob */
    CHECK_STATUS(create_at(t, &k), KILN_ERR_FORMAT);
    t->vals[w].layout = 0;
    CHECK(k == NULL);
    char name2[64];
    CHECK(strncmp(kk_layout_name(t->blob, 3, name2, sizeof name2), "invalid", 7) == 0);
    CHECK(strcmp(kk_layout_name(NULL, 0, name2, sizeof name2), "dense") == 0);
    CHECK_OK(create_at(t, &k));   /* and intact again */
    kk_free(k);

    /* plain B, but the primitive wants it packed: reordered once, counted */
    wv->n_layout = 0;
    wv->nbytes = plain_bytes;
    memcpy(t->buf[w], t->buf[w + TV / 2], plain_bytes);
    copied = 0;
    run_compare(t, "matmul with a plain B oneDNN wants packed", true, -1, &copied);
    CHECK(copied == n_packed);
out:
    kiln__free(packed);
    kiln__free(layout);
    tp_free(t);
}

/* One weight read by two MatMuls of the same shapes (BERT's layers share theirs): packing it
 * for either op gives the same bytes and descriptor, so the compiler may store it packed
 * once; both kernels then use it in place (nothing copied), with or without a plan. */
static void test_packing_shared(void)
{
    tp *t = tp_new();
    int64_t as[2] = { 64, 256 }, bs[2] = { 256, 768 }, ys[2] = { 64, 768 }, bias[1] = { 768 };
    int a1 = act(t, 2, as), a2 = act(t, 2, as), b = cst(t, 2, bs), bb = cst(t, 1, bias);
    int y1 = act(t, 2, ys), y2 = act(t, 2, ys);
    int in1[3] = { a1, b, bb }, in2[3] = { a2, b, bb };
    int64_t ia1[1] = { 0 }, ia2[3] = { 1, KP_POST_UNARY, KP_U_RELU };
    float fa2[2] = { 0, 0 };
    tp_op(t, KP_MATMUL, 0, in1, 3, &y1, 1, ia1, 1, NULL, 0);
    tp_op(t, KP_MATMUL, 0, in2, 3, &y2, 1, ia2, 3, fa2, 2);
    t->outputs[t->p.n_outputs++] = (uint32_t)y2;
    const int ys_[2] = { y1, y2 };

    /* reference outputs, from the dense weight */
    float *want[2] = { NULL, NULL };
    kk_kernel *k[2] = { NULL, NULL };
    void *packed[2] = { NULL, NULL }, *layout[2] = { NULL, NULL };
    size_t n_packed[2] = { 0, 0 }, n_layout[2] = { 0, 0 };
    kk_plan *plan = NULL;
    for (int j = 0; j < 2; j++) {
        bool ok = CHECK_OK(kr_create(&t->p, (uint32_t)j, t->buf, &k[j])) && CHECK_OK(kk_run(k[j]));
        kk_free(k[j]);
        if (!ok)
            goto out;
        size_t n = t->vals[ys_[j]].nbytes;
        want[j] = malloc(n);
        memcpy(want[j], t->buf[ys_[j]], n);
        memset(t->buf[ys_[j]], 0x7f, n);
    }
    for (int j = 0; j < 2; j++)
        CHECK_OK(kk_pack_weight(&t->p, (uint32_t)j, 1, t->buf[b], &packed[j], &n_packed[j],
                                &layout[j], &n_layout[j]));
    if (!CHECK(packed[0] && packed[1]))   /* AVX-512: oneDNN's matmul wants B blocked */
        goto out;
    CHECK(n_layout[0] == n_layout[1] && memcmp(layout[0], layout[1], n_layout[0]) == 0);
    CHECK(n_packed[0] == n_packed[1] && memcmp(packed[0], packed[1], n_packed[0]) == 0);
    use_packed(t, b, packed[0], n_packed[0], layout[0], n_layout[0]);

    CHECK_OK(kk_program_plan(&t->p, &plan));
    for (int with_plan = 0; with_plan < 2; with_plan++) {
        uint64_t copied = 0;
        for (int j = 0; j < 2; j++) {
            kiln_status s = with_plan
                                ? kk_create_planned(core, plan, (uint32_t)j, t->buf, &k[j], &copied)
                                : kk_create(core, &t->p, (uint32_t)j, t->buf, &k[j], &copied);
            if (CHECK_OK(s) && CHECK_OK(kk_run(k[j])))
                CHECK(rel_err(t->buf[ys_[j]], want[j], kp_value_numel(&t->vals[ys_[j]])) <= 1e-4);
            kk_free(k[j]);
            memset(t->buf[ys_[j]], 0x7f, t->vals[ys_[j]].nbytes);
        }
        CHECK(copied == 0);
    }
out:
    kk_plan_free(plan);
    for (int j = 0; j < 2; j++) {
        kiln__free(packed[j]);
        kiln__free(layout[j]);
        free(want[j]);
    }
    tp_free(t);
}

static void test_packing_conv(void)
{
    conv_spec cs = conv2d(1, 32, 64, 1, 14, 14, 3, 1, 1);
    cs.bias = true;
    tp *t = make_conv(&cs, NULL);
    int w = t->io[1];
    kp_value *wv = &t->vals[w];
    const uint64_t plain_bytes = wv->nbytes;
    void *packed = NULL, *layout = NULL;
    size_t n_packed = 0, n_layout = 0;
    CHECK_OK(kk_pack_weight(&t->p, 0, 1, t->buf[w], &packed, &n_packed, &layout, &n_layout));
    CHECK((packed == NULL) == (layout == NULL));
    if (packed) {
        char name[128];
        printf("  packed conv weight: %s\n", kk_layout_name(layout, n_layout, name, sizeof name));
        use_packed(t, w, packed, n_packed, layout, n_layout);
        uint64_t copied = 0;
        run_compare(t, "conv with its packed weight", true, -1, &copied);
        CHECK(copied == 0);
    } else {
        printf("  conv weight: oneDNN keeps it plain (dense activations)\n");
    }
    kiln__free(packed);
    kiln__free(layout);

    /* a foreign layout (dims O,I,h,w stored as O h w I) is reordered to what conv wants */
    float *src = t->buf[w + TV / 2] ? t->buf[w + TV / 2] : t->buf[w];
    float *ohwi = aligned_alloc(64, plain_bytes);
    for (int o = 0; o < 64; o++)
        for (int i = 0; i < 32; i++)
            for (int h = 0; h < 3; h++)
                for (int x = 0; x < 3; x++)
                    ohwi[o * 288 + h * 96 + x * 32 + i] = src[o * 288 + i * 9 + h * 3 + x];
    uint8_t lay[256];
    int64_t dims[4] = { 64, 32, 3, 3 }, st[4] = { 9 * 32, 1, 3 * 32, 32 },
            plain[4] = { 32 * 9, 9, 3, 1 };
    size_t nl = put_layout(lay, 4, dims, st, plain, 0, NULL, NULL, NULL);
    char name3[64];
    CHECK(strcmp(kk_layout_name(lay, nl, name3, sizeof name3), "blocked:acdb") == 0);
    use_packed(t, w, ohwi, plain_bytes, lay, nl);
    free(ohwi);
    uint64_t copied = 0;
    run_compare(t, "conv with a foreign (ohwi) weight layout", true, -1, &copied);
    CHECK(copied >= plain_bytes);
    float *back = malloc(plain_bytes);
    CHECK_OK(kd_unpack(wv, lay, nl, t->buf[w], back));
    CHECK(memcmp(back, t->buf[w + TV / 2], plain_bytes) == 0);
    free(back);

    /* a blocked foreign layout with padding: O blocked by 48 (64 -> 96 padded) */
    int64_t pdims[4] = { 96, 32, 3, 3 }, bst[4] = { 48 * 288, 48 * 9, 48 * 3, 48 };
    int64_t blk[1] = { 48 }, idx[1] = { 0 };
    nl = put_layout(lay, 4, dims, bst, plain, 1, blk, idx, pdims);
    CHECK(strcmp(kk_layout_name(lay, nl, name3, sizeof name3), "blocked:Abcd48a") == 0);
    size_t nbk = 96 * 288 * 4;
    float *bk = aligned_alloc(64, nbk);
    memset(bk, 0, nbk);
    src = t->buf[w + TV / 2];
    for (int o = 0; o < 64; o++)
        for (int r = 0; r < 288; r++)
            bk[(o / 48) * 48 * 288 + r * 48 + o % 48] = src[o * 288 + r];
    use_packed(t, w, bk, nbk, lay, nl);
    free(bk);
    copied = 0;
    run_compare(t, "conv with a foreign blocked (Abcd48a) weight layout", true, -1, &copied);
    CHECK(copied >= plain_bytes);
    tp_free(t);

    /* conv-transpose weight (ONNX layout C x O/g x k) round trip through pack/unpack */
    cs = conv2d(1, 32, 48, 2, 6, 6, 3, 2, 1);
    cs.transpose = true;
    cs.op[0] = cs.op[1] = 1;
    t = make_conv(&cs, NULL);
    w = t->io[1];
    wv = &t->vals[w];
    packed = layout = NULL;
    CHECK_OK(kk_pack_weight(&t->p, 0, 1, t->buf[w], &packed, &n_packed, &layout, &n_layout));
    if (packed) {
        char name[128];
        printf("  packed conv-transpose weight: %s\n",
               kk_layout_name(layout, n_layout, name, sizeof name));
        kp_value pv = *wv;
        pv.nbytes = n_packed;
        float *b2 = malloc(wv->nbytes);
        CHECK_OK(kd_unpack(&pv, layout, n_layout, packed, b2));
        CHECK(memcmp(b2, t->buf[w], wv->nbytes) == 0);
        free(b2);
        use_packed(t, w, packed, n_packed, layout, n_layout);
        copied = 0;
        run_compare(t, "conv-transpose with its packed weight", true, -1, &copied);
        CHECK(copied == 0);
    } else {
        printf("  conv-transpose weight: oneDNN keeps it plain\n");
    }
    kiln__free(packed);
    kiln__free(layout);
    tp_free(t);
}

/* ---- programs of several ops: activations kept channels-last between oneDNN kernels ---- */

/* Runs every op of t in order, once through kk_create (oneDNN where it can) and once through
 * the reference kernels, each on its own buffers for values the ops produce; compares the
 * graph outputs. alias[v] >= 0: v shares that value's storage in both runs (a free
 * reshape). dnnl_share[v] >= 0: in the oneDNN run only, v shares that value's buffer (the
 * planner's in-place choice). Returns the worst relative error; fills dnnl_buf/ref_buf (the
 * caller frees them) when given. */
static double run_program(tp *t, const char *what, const int *alias, const int *dnnl_share,
                          void **dnnl_buf, void **ref_buf)
{
    kp_program *p = &t->p;
    bool prod[TV] = { false };
    for (uint32_t j = 0; j < p->n_ops; j++) {
        const int32_t *out = kp_op_out(p, &p->ops[j]);
        for (int k = 0; k < p->ops[j].n_out; k++)
            if (out[k] >= 0)
                prod[out[k]] = true;
    }
    void *pd[TV] = { 0 }, *pr[TV] = { 0 }, *own[2 * TV] = { 0 };
    int nown = 0;
    for (uint32_t v = 0; v < p->n_values; v++) {
        pd[v] = pr[v] = t->buf[v];
        if (prod[v]) {
            size_t n = (size_t)kiln__align_up(p->values[v].nbytes, 64);
            pd[v] = own[nown++] = aligned_alloc(64, n);
            pr[v] = own[nown++] = aligned_alloc(64, n);
            memset(pd[v], 0x7f, n);
            memset(pr[v], 0x7f, n);
        }
    }
    for (uint32_t v = 0; v < p->n_values; v++) {
        if (alias && alias[v] >= 0) {
            p->values[v].offset = p->values[alias[v]].offset;
            pd[v] = pd[alias[v]];
            pr[v] = pr[alias[v]];
        }
        if (dnnl_share && dnnl_share[v] >= 0)
            pd[v] = pd[dnnl_share[v]];
    }
    kk_kernel *kd[TOPS] = { 0 }, *kr[TOPS] = { 0 };
    double worst = INFINITY;
    for (uint32_t j = 0; j < p->n_ops; j++) {
        if (!CHECK_OK(kk_create(core, p, j, pd, &kd[j], NULL)) ||
            !CHECK_OK(kr_create(p, j, pr, &kr[j]))) {
            fprintf(stderr, "  in %s, op %u\n", what, j);
            goto out;
        }
    }
    for (int rep = 0; rep < 2; rep++)
        for (uint32_t j = 0; j < p->n_ops; j++)
            if (!CHECK_OK(kk_run(kd[j])))
                goto out;
    for (uint32_t j = 0; j < p->n_ops; j++)
        if (!CHECK_OK(kk_run(kr[j])))
            goto out;
    worst = 0;
    for (uint32_t o = 0; o < p->n_outputs; o++) {
        int v = (int)p->outputs[o];
        double e = rel_err(pd[v], pr[v], kp_value_numel(&p->values[v]));
        if (e > worst)
            worst = e;
    }
    if (!CHECK(worst <= 1e-4))
        fprintf(stderr, "  %s: relative error %g\n", what, worst);
    else if (getenv("KILN_TEST_VERBOSE"))
        printf("  %-64s pr %.2e\n", what, worst);
out:
    for (uint32_t j = 0; j < p->n_ops; j++) {
        kk_free(kd[j]);
        kk_free(kr[j]);
    }
    for (uint32_t v = 0; v < p->n_values; v++) {
        if (dnnl_buf)
            dnnl_buf[v] = pd[v];
        if (ref_buf)
            ref_buf[v] = pr[v];
    }
    if (!dnnl_buf)
        for (int j = 0; j < nown; j++)
            free(own[j]);
    return worst;
}

static int conv_op(tp *t, int x, int o, int k, int s, int p, bool relu, int sum_operand)
{
    const kp_value *X = &t->vals[x];
    int64_t c = X->shape[1], h = X->shape[2], w = X->shape[3];
    int64_t ws[4] = { o, c, k, k }, bs[1] = { o },
            ys[4] = { X->shape[0], o, (h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1 };
    int in[4] = { x, cst(t, 4, ws), cst(t, 1, bs), sum_operand };
    float *wf = t->buf[in[1]];   /* keep magnitudes near 1 through the chain */
    for (int64_t j = 0; j < o * c * k * k; j++)
        wf[j] *= 1.7f / sqrtf((float)(c * k * k));
    int y = act(t, 4, ys);
    int64_t ia[16] = { 1, 2, s, s, 1, 1, p, p, p, p, 0 };
    float fa[4] = { 0 };
    int nia = 11, npost = 0;
    if (sum_operand >= 0) {
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
    tp_op(t, KP_CONV, 0, in, sum_operand >= 0 ? 4 : 3, &y, 1, ia, nia, fa, 2 * npost);
    return y;
}

static int pool_op(tp *t, int x, int k, int s, int p)
{
    const kp_value *X = &t->vals[x];
    int64_t ys[4] = { X->shape[0], X->shape[1], (X->shape[2] + 2 * p - k) / s + 1,
                      (X->shape[3] + 2 * p - k) / s + 1 };
    int y = act(t, 4, ys);
    int64_t ia[13] = { 2, k, k, s, s, 1, 1, p, p, p, p, 0, 0 };
    tp_op(t, KP_POOL, KP_POOL_MAX, &x, 1, &y, 1, ia, 13, NULL, 0);
    return y;
}

static int gap_op(tp *t, int x)
{
    const kp_value *X = &t->vals[x];
    int64_t ys[4] = { X->shape[0], X->shape[1], 1, 1 };
    int y = act(t, 4, ys);
    tp_op(t, KP_GLOBAL_POOL, KP_POOL_AVG, &x, 1, &y, 1, NULL, 0, NULL, 0);
    return y;
}

/* nhwc buffer -> nchw, to check how a value was stored */
static void nhwc_to_nchw(const float *src, float *dst, const kp_value *v)
{
    int64_t n = v->shape[0], c = v->shape[1], hw = v->shape[2] * v->shape[3];
    for (int64_t a = 0; a < n; a++)
        for (int64_t ch = 0; ch < c; ch++)
            for (int64_t q = 0; q < hw; q++)
                dst[(a * c + ch) * hw + q] = src[(a * hw + q) * c + ch];
}

/* 1 stored nhwc, 0 stored nchw, -1 neither matches the reference */
static int stored_as(const kp_value *v, const float *d, const float *r)
{
    int64_t n = kp_value_numel(v);
    if (rel_err(d, r, n) <= 1e-4)
        return 0;
    float *t = malloc(n * 4);
    nhwc_to_nchw(d, t, v);
    int res = rel_err(t, r, n) <= 1e-4 ? 1 : -1;
    free(t);
    return res;
}

/* resnet-like: conv -> maxpool -> conv -> conv(+sum of the pool's output) -> 1x1 conv s2,
 * and a global pool of the block's output. Intermediates stay nhwc; outputs are dense. */
static tp *make_chain(int *vals)
{
    tp *t = tp_new();
    int64_t xs[4] = { 2, 16, 20, 20 };
    int x = tp_val(t, KP_VAL_INPUT, 4, xs);
    int a = conv_op(t, x, 16, 3, 1, 1, true, -1);
    int m = pool_op(t, a, 3, 2, 1);
    int b = conv_op(t, m, 16, 3, 1, 1, true, -1);
    int c = conv_op(t, b, 16, 3, 1, 1, true, m);
    int d = conv_op(t, c, 32, 1, 2, 0, false, -1);
    int g = gap_op(t, c);
    t->p.n_outputs = 0;
    t->outputs[t->p.n_outputs++] = (uint32_t)d;
    t->outputs[t->p.n_outputs++] = (uint32_t)g;
    int v[7] = { x, a, m, b, c, d, g };
    memcpy(vals, v, sizeof v);
    return t;
}

static void free_bufs(tp *t, void **bd, void **br)
{
    for (uint32_t v = 0; v < t->p.n_values; v++) {
        if (bd[v] != t->buf[v]) {
            bool dup = false;
            for (uint32_t u = 0; u < v; u++)
                dup |= bd[u] == bd[v];
            if (!dup)
                free(bd[v]);
        }
        if (br[v] != t->buf[v]) {
            bool dup = false;
            for (uint32_t u = 0; u < v; u++)
                dup |= br[u] == br[v];
            if (!dup)
                free(br[v]);
        }
    }
}

static void test_chains(void)
{
    int v[7];
    void *bd[TV], *br[TV];
    int none[TV];
    for (int j = 0; j < TV; j++)
        none[j] = -1;

    tp *t = make_chain(v);
    run_program(t, "conv/pool chain", NULL, NULL, bd, br);
    /* a, m, b, c only ever meet oneDNN convs and pools: nhwc. Outputs d, g: dense. */
    static const char *const names[7] = { "x", "a", "m", "b", "c", "d", "g" };
    static const int want[7] = { 0, 1, 1, 1, 1, 0, 0 };
    for (int j = 1; j < 7; j++)
        if (!CHECK(stored_as(&t->vals[v[j]], bd[v[j]], br[v[j]]) == want[j]))
            fprintf(stderr, "  value %s stored unexpectedly\n", names[j]);
    free_bufs(t, bd, br);

    /* the sum operand m in c's own buffer (in place, both nhwc) */
    int share[TV];
    memcpy(share, none, sizeof share);
    share[v[4]] = v[2];
    run_program(t, "conv/pool chain, sum operand in the output's buffer", NULL, share, NULL,
                NULL);
    tp_free(t);

    /* c also read by an element-wise op through a reshape (an alias of its storage): c
     * dense, its producer and readers adapt */
    t = make_chain(v);
    int64_t es[2] = { 2, 16 * 10 * 10 };
    int e = act(t, 2, es), u = act(t, 2, es);
    float fa[2] = { 0, 0 };
    tp_op(t, KP_UNARY, KP_U_TANH, &e, 1, &u, 1, NULL, 0, fa, 2);
    t->outputs[t->p.n_outputs++] = (uint32_t)u;
    int alias[TV];
    memcpy(alias, none, sizeof alias);
    alias[e] = v[4];
    run_program(t, "conv/pool chain, block output reshaped", alias, NULL, bd, br);
    CHECK(stored_as(&t->vals[v[4]], bd[v[4]], br[v[4]]) == 0);
    CHECK(stored_as(&t->vals[v[3]], bd[v[3]], br[v[3]]) == 1);
    free_bufs(t, bd, br);
    tp_free(t);

    /* c also a graph output through a reshape no op reads: c dense */
    t = make_chain(v);
    e = act(t, 2, es);
    t->outputs[t->p.n_outputs++] = (uint32_t)e;
    memcpy(alias, none, sizeof alias);
    alias[e] = v[4];
    run_program(t, "conv/pool chain, block output reshaped into a graph output", alias, NULL,
                bd, br);
    CHECK(stored_as(&t->vals[v[4]], bd[v[4]], br[v[4]]) == 0);
    CHECK(rel_err(bd[e], br[e], kp_value_numel(&t->vals[e])) <= 1e-4);
    free_bufs(t, bd, br);
    tp_free(t);

    /* a conv being folded at trace time: its result has no readers and is no graph output
     * yet, and the compiler reads it dense */
    t = make_chain(v);
    t->p.n_ops = 1;
    t->p.n_outputs = 0;
    run_program(t, "conv with nothing reading its output", NULL, NULL, bd, br);
    CHECK(stored_as(&t->vals[v[1]], bd[v[1]], br[v[1]]) == 0);
    free_bufs(t, bd, br);
    tp_free(t);

    /* b also read by an element-wise op: b dense; conv c reads it dense, writes nhwc */
    t = make_chain(v);
    int w = act(t, 4, t->vals[v[3]].shape);
    tp_op(t, KP_UNARY, KP_U_SIGMOID, &v[3], 1, &w, 1, NULL, 0, fa, 2);
    t->outputs[t->p.n_outputs++] = (uint32_t)w;
    run_program(t, "conv/pool chain, a conv output read by sigmoid", NULL, NULL, bd, br);
    CHECK(stored_as(&t->vals[v[3]], bd[v[3]], br[v[3]]) == 0);
    CHECK(stored_as(&t->vals[v[4]], bd[v[4]], br[v[4]]) == 1);
    free_bufs(t, bd, br);
    tp_free(t);
}

static void test_cores(void)
{
    /* a kernel made on a one-thread core (this thread's team set to 1) */
    kk_core *c1 = NULL;
    CHECK_OK(kk_core_create(1, &c1));
    kk_core *saved = core;
    core = c1;
    conv_spec cs = conv2d(1, 16, 16, 1, 12, 12, 3, 1, 1);
    cs.bias = true;
    tp *t = make_conv(&cs, NULL);
    expect_dnnl(t, "conv on a 1-thread core");
    tp_free(t);
    int64_t a[2] = { 33, 40 }, b[2] = { 40, 17 }, y[2] = { 33, 17 };
    t = make_matmul(2, a, 2, b, 2, y, 0, NULL, true, NULL);
    expect_dnnl(t, "matmul on a 1-thread core");
    tp_free(t);
    core = saved;
    kk_core_free(c1);

    /* a kernel whose core scratch moved (a later kernel needed more) still runs right */
    cs = conv2d(1, 8, 8, 1, 6, 6, 3, 1, 1);
    tp *small = make_conv(&cs, NULL);
    cs = conv2d(2, 64, 64, 1, 30, 30, 3, 1, 1);
    tp *big = make_conv(&cs, NULL);
    kk_core *c2 = NULL;
    CHECK_OK(kk_core_create(2, &c2));
    void *ps_[TV], *pb_[TV];
    for (int v = 0; v < TV; v++) {
        ps_[v] = small->buf[v];
        pb_[v] = big->buf[v];
    }
    kk_kernel *ks = NULL, *kb = NULL, *kr = NULL;
    CHECK_OK(kd_create(c2, NULL, &small->p, 0, ps_, &ks, NULL));
    CHECK_OK(kd_create(c2, NULL, &big->p, 0, pb_, &kb, NULL));
    int yv = outs(small)[0];
    size_t ny = small->vals[yv].nbytes;
    float *want = malloc(ny), *got = small->buf[yv];
    void *pr_[TV];
    memcpy(pr_, ps_, sizeof pr_);
    pr_[yv] = want;
    CHECK_OK(kr_create(&small->p, 0, pr_, &kr));
    if (CHECK(ks && kb && kr && ny > 0)) {
        CHECK_OK(kk_run(kr));
        CHECK_OK(kk_run(ks));
        CHECK(rel_err(got, want, (int64_t)ny / 4) <= 1e-4);
        CHECK_OK(kk_run(kb));
        memset(got, 0, ny);
        CHECK_OK(kk_run(ks));
        CHECK(rel_err(got, want, (int64_t)ny / 4) <= 1e-4);
    }
    kk_free(ks);
    kk_free(kb);
    kk_free(kr);
    free(want);
    kk_core_free(c2);
    tp_free(small);
    tp_free(big);
    kk_core_free(NULL);
    kk_core *bad = NULL;
    CHECK_STATUS(kk_core_create(0, &bad), KILN_ERR_ARG);
    CHECK(bad == NULL);
}

int main(void)
{
    if (!CHECK_OK(kk_core_create(2, &core)))
        return test_done("test_dnnl_kernels");
    test_conv();
    test_conv_post();
    test_conv_transpose();
    test_matmul();
    test_pool();
    test_softmax_norms();
    test_unary();
    test_binary();
    test_packing_matmul();
    test_packing_shared();
    test_packing_conv();
    test_chains();
    test_cores();
    kk_core_free(core);
    return test_done("test_dnnl_kernels");
}
