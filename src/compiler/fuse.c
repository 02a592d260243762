/*
 * fuse.c — the fusion pass: folds BatchNormalization into the convolution before it, and
 * turns what follows a Conv/ConvTranspose/MatMul into its bias and post-ops:
 *
 *   Conv -> BatchNormalization        new weights and bias, BN gone
 *   MatMul -> Add(constant row)       bias input
 *   X -> activation                   KP_POST_UNARY
 *   X -> Add(same-shape tensor)       KP_POST_SUM  (the residual add of ResNets)
 *   X -> Add/Sub/Mul/Div(broadcast)   KP_POST_BINARY (attention scaling, broadcast bias)
 *
 * A result is fused into its producer only when that op is its one consumer, it is not a
 * graph output, nothing aliases it, and any extra operand is ready before the producer runs.
 * Rewritten ops get fresh pool entries (seal compacts the pools); fused-away ops get kind 0.
 */
#include "compiler/trace.h"

#include <math.h>
#include <string.h>

typedef struct fuse_state {
    kc_ctx   *c;
    uint32_t *uses;       /* per value: op inputs reading it */
    int32_t  *consumer;   /* per value: the last op reading it */
    int32_t  *producer;   /* per value: the op writing it, -1 for inputs and constants */
    uint8_t  *pinned;     /* per value: graph output, aliased, or an alias */
} fuse_state;

static int post_base(const kp_program *p, const kp_op *op)
{
    const int64_t *ia = kp_op_ia(p, op);
    switch (op->kind) {
    case KP_CONV: return 2 + 4 * (int)ia[1];
    case KP_CONV_TRANSPOSE: return 2 + 5 * (int)ia[1];
    default: return 0; /* KP_MATMUL */
    }
}

/* Rewrites op i with new inputs/attributes (appended to the pools). The arrays may point
 * into the pools themselves: they are copied before the pools grow. KILN_ERR_UNSUPPORTED
 * (no message) when the op is too long to rewrite: it then stays as it was. */
static kiln_status rewrite_op(fuse_state *f, uint32_t i, const int *in, int n_in, int out,
                              const int64_t *ia, int n_ia, const float *fa, int n_fa)
{
    kc_ctx *c = f->c;
    int64_t lia[64];
    float lfa[64];
    int lin[64];
    if (n_in > 64 || n_ia > 64 || n_fa > 64)
        return KILN_ERR_UNSUPPORTED; /* stays unfused */
    memcpy(lin, in, sizeof(int) * (size_t)n_in);
    memcpy(lia, ia, sizeof(int64_t) * (size_t)n_ia);
    memcpy(lfa, fa, sizeof(float) * (size_t)n_fa);
    kp_op old = c->p.ops[i];
    int j = kc__push_op(c, old.kind, old.sub, old.name, lin, n_in, &out, 1, lia, n_ia, lfa, n_fa);
    if (j < 0)
        return KILN_ERR_NOMEM;
    c->p.ops[i] = c->p.ops[j];
    c->p.n_ops--;
    return KILN_OK;
}

/* Adds a post-op (and its operand, -1 for none) to op i, whose output becomes `out`. */
static kiln_status add_post(fuse_state *f, uint32_t i, int type, int alg, float alpha, float beta,
                            int operand, int out)
{
    kp_program *p = &f->c->p;
    const kp_op *op = &p->ops[i];
    int base = post_base(p, op);
    int64_t ia[64];
    float fa[64];
    int in[64];
    if (op->n_ia + 2 > 64 || op->n_fa + 2 > 64 || op->n_in + 1 > 64)
        return KILN_ERR_UNSUPPORTED; /* long chains stay unfused */
    const int64_t *oia = kp_op_ia(p, op);
    memcpy(ia, oia, sizeof(int64_t) * op->n_ia);
    ia[base] += 1;
    ia[op->n_ia] = type;
    ia[op->n_ia + 1] = alg;
    memcpy(fa, kp_op_fa(p, op), sizeof(float) * op->n_fa);
    fa[op->n_fa] = alpha;
    fa[op->n_fa + 1] = beta;
    int n_in = op->n_in;
    for (int k = 0; k < n_in; k++)
        in[k] = kp_op_in(p, op)[k];
    if (operand >= 0)
        in[n_in++] = operand;
    return rewrite_op(f, i, in, n_in, out, ia, (int)op->n_ia + 2, fa, (int)op->n_fa + 2);
}

static bool same_shape(const kp_value *a, const kp_value *b)
{
    if (a->ndim != b->ndim)
        return false;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d])
            return false;
    return true;
}

static bool fusable_unary(int alg)
{
    switch (alg) {
    case KP_U_RELU: case KP_U_LEAKY_RELU: case KP_U_CLIP: case KP_U_SIGMOID: case KP_U_TANH:
    case KP_U_GELU: case KP_U_GELU_TANH: case KP_U_ELU: case KP_U_SILU: case KP_U_HARD_SWISH:
    case KP_U_HARD_SIGMOID:
        return true;
    default:
        return false;
    }
}

/* Conv (weights W, bias B constant) followed by inference BatchNormalization. */
static kiln_status fold_batchnorm(fuse_state *f, uint32_t pi, const kp_op *bn, int z, bool *done)
{
    kc_ctx *c = f->c;
    kp_program *p = &c->p;
    const kp_op *conv = &p->ops[pi];
    const int32_t *cin = kp_op_in(p, conv), *bin = kp_op_in(p, bn);
    int w = cin[1], b = conv->n_in > 2 ? cin[2] : -1;
    *done = false;
    if (conv->n_in > 3 || kp_op_ia(p, conv)[post_base(p, conv)] != 0 || !kc_is_const(c, w) ||
        (b >= 0 && !kc_is_const(c, b)) || p->values[w].n_layout)
        return KILN_OK;
    for (int k = 1; k < 5; k++)
        if (!kc_is_const(c, bin[k]) || p->values[bin[k]].dtype != KILN_F32)
            return KILN_OK;
    const kp_value *wv = &p->values[w];
    int64_t O = wv->shape[0];
    for (int k = 1; k < 5; k++)
        if (kp_value_numel(&p->values[bin[k]]) != O)
            return KILN_OK;
    float eps = bn->n_fa ? kp_op_fa(p, bn)[0] : 1e-5f;
    const float *scale = c->cdata[bin[1]], *shift = c->cdata[bin[2]], *mean = c->cdata[bin[3]],
                *var = c->cdata[bin[4]], *bias = b >= 0 ? c->cdata[b] : NULL;
    int64_t per = kp_value_numel(wv) / (O ? O : 1);
    float *nw = kiln__malloc(sizeof(float) * (size_t)kp_value_numel(wv) + 1);
    float *nb = kiln__malloc(sizeof(float) * (size_t)O + 1);
    if (!nw || !nb) {
        kiln__free(nw);
        kiln__free(nb);
        return kiln__fail(KILN_ERR_NOMEM, "out of memory folding BatchNormalization");
    }
    const float *ow = c->cdata[w];
    for (int64_t o = 0; o < O; o++) {
        float g = scale[o] / sqrtf(var[o] + eps);
        for (int64_t k = 0; k < per; k++)
            nw[o * per + k] = ow[o * per + k] * g;
        nb[o] = ((bias ? bias[o] : 0.0f) - mean[o]) * g + shift[o];
    }
    int64_t wshape[KILN_MAX_DIMS];
    memcpy(wshape, wv->shape, sizeof wshape);
    int nwv = kc_new_const(c, KILN_F32, wv->ndim, wshape, nw);
    int nbv = nwv < 0 ? -1 : kc_new_const(c, KILN_F32, 1, &O, nb);
    kiln__free(nw);
    kiln__free(nb);
    if (nwv < 0 || nbv < 0)
        return KILN_ERR_NOMEM;
    /* refresh: kc_new_const may have moved the pools */
    conv = &p->ops[pi];
    int in[3] = { kp_op_in(p, conv)[0], nwv, nbv };
    int64_t ia[64];
    if (conv->n_ia > 64)
        return KILN_OK;
    memcpy(ia, kp_op_ia(p, conv), sizeof(int64_t) * conv->n_ia);
    kiln_status s = rewrite_op(f, pi, in, 3, z, ia, (int)conv->n_ia, kp_op_fa(p, conv), (int)conv->n_fa);
    *done = s == KILN_OK;
    return s == KILN_ERR_UNSUPPORTED ? KILN_OK : s;
}

/* Tries to fuse the one consumer of op pi's output into it. */
static kiln_status fuse_one(fuse_state *f, uint32_t pi, bool *fused)
{
    kc_ctx *c = f->c;
    kp_program *p = &c->p;
    *fused = false;
    const kp_op *op = &p->ops[pi];
    if (op->n_out != 1)
        return KILN_OK;
    int y = kp_op_out(p, op)[0];
    if (y < 0 || p->values[y].dtype != KILN_F32 || f->uses[y] != 1 || f->pinned[y])
        return KILN_OK;
    int32_t qi = f->consumer[y];
    if (qi <= (int32_t)pi || !p->ops[qi].kind)
        return KILN_OK;
    const kp_op *q = &p->ops[qi];
    const int32_t *qin = kp_op_in(p, q);
    if (q->n_out != 1 || kp_op_out(p, q)[0] < 0)
        return KILN_OK;
    int z = kp_op_out(p, q)[0];
    if (!same_shape(&p->values[z], &p->values[y]) || p->values[z].dtype != KILN_F32)
        return KILN_OK;
    kiln_status s = KILN_OK;
    if (q->kind == KP_BATCHNORM && op->kind == KP_CONV && qin[0] == y) {
        s = fold_batchnorm(f, pi, q, z, fused);
    } else if (q->kind == KP_UNARY && fusable_unary(q->sub)) {
        const float *qfa = kp_op_fa(p, q);
        float a = q->n_fa > 0 ? qfa[0] : 0.0f, b = q->n_fa > 1 ? qfa[1] : 0.0f;
        s = add_post(f, pi, KP_POST_UNARY, q->sub, a, b, -1, z);
        *fused = s == KILN_OK;
        if (s == KILN_ERR_UNSUPPORTED)
            s = KILN_OK;
    } else if (q->kind == KP_BINARY && q->n_in == 2 && qin[0] != qin[1] &&
               (q->sub == KP_B_ADD || q->sub == KP_B_MUL ||
                ((q->sub == KP_B_SUB || q->sub == KP_B_DIV) && qin[0] == y))) {
        int o = qin[0] == y ? qin[1] : qin[0];
        const kp_value *ov = &p->values[o];
        bool ready = ov->kind != KP_VAL_ACT || (f->producer[o] >= 0 && f->producer[o] < (int32_t)pi);
        if (!ready || ov->dtype != KILN_F32 || ov->ndim > p->values[y].ndim)
            return KILN_OK;
        int n_post = (int)kp_op_ia(p, op)[post_base(p, op)];
        int64_t N = p->values[y].ndim ? p->values[y].shape[p->values[y].ndim - 1] : 1;
        bool row = ov->kind == KP_VAL_CONST && ov->ndim == 1 && ov->shape[0] == N;
        bool no_bias = op->n_in == 2 || (op->n_in == 3 && kp_op_in(p, op)[2] < 0);
        if (op->kind == KP_MATMUL && q->sub == KP_B_ADD && n_post == 0 && no_bias && row) {
            int in[3] = { kp_op_in(p, op)[0], kp_op_in(p, op)[1], o };
            s = rewrite_op(f, pi, in, 3, z, kp_op_ia(p, op), (int)op->n_ia, kp_op_fa(p, op), (int)op->n_fa);
        } else if (q->sub == KP_B_ADD && same_shape(ov, &p->values[y])) {
            s = add_post(f, pi, KP_POST_SUM, 0, 0.0f, 0.0f, o, z);
        } else {
            s = add_post(f, pi, KP_POST_BINARY, q->sub, 0.0f, 0.0f, o, z);
        }
        *fused = s == KILN_OK;
        if (s == KILN_ERR_UNSUPPORTED)
            s = KILN_OK;
    }
    if (*fused) {
        p->ops[qi].kind = 0;
        f->uses[y] = 0;
        f->producer[z] = (int32_t)pi;
        if (kk_check(p, pi) != KILN_OK)
            return kiln__fail(KILN_ERR_INTERNAL, "fused op rejected: %s", kiln_last_error());
    }
    return s;
}

/* ---------------------------------------------------------------------------------------
 * Normalisation and activation patterns (run before the post-op fusion above):
 *
 *   Reshape(N,G,-1) -> InstanceNormalization -> Reshape back -> Mul/Add(per-channel const)...
 *                                     one KP_GROUPNORM over the N x C x ... tensor, its
 *                                     scale and bias folded from all of them (torch's
 *                                     GroupNorm export)
 *   Sigmoid(x) -> Mul(x, that)        KP_UNARY KP_U_SILU (torch's SiLU export)
 *   GroupNorm -> SiLU                 the GroupNorm's fused activation (ia[1])
 *   Conv -> Binary(y, t) with t computed after the Conv but not from it (a UNet's
 *                                     time embedding): t's ops move before the Conv, so
 *                                     the Binary becomes its post-op below
 *
 * Same rules as above: an intermediate is fused away only when one op reads it (through
 * any alias), it is not a graph output and nothing else aliases it. Fused-away ops get
 * kind 0 and no inputs or outputs (so later use counts do not see them).
 * ------------------------------------------------------------------------------------- */

typedef struct nfuse {
    kc_ctx   *c;
    uint32_t  nv;         /* values when counted: newer ones are never asked about */
    uint32_t *uses;       /* per value: op inputs reading it */
    uint32_t *ruses;      /* per storage root: op inputs reading any value of it */
    int32_t  *rcons;      /* per storage root: the last op reading any value of it */
    uint32_t *nalias;     /* per storage root: values sharing it besides the root */
    uint8_t  *out;        /* per storage root: some value of it is a graph output */
    int32_t  *nprod;      /* per value: the op writing it, -1 for inputs and constants */
} nfuse;

static void nfuse_free(nfuse *n)
{
    kiln__free(n->uses);
    kiln__free(n->ruses);
    kiln__free(n->rcons);
    kiln__free(n->nalias);
    kiln__free(n->out);
    kiln__free(n->nprod);
}

static kiln_status nfuse_count(nfuse *n, kc_ctx *c, const uint32_t *outputs)
{
    kp_program *p = &c->p;
    uint32_t nv = p->n_values;
    nfuse_free(n);
    n->c = c;
    n->nv = nv;
    n->uses = kiln__calloc(nv + 1, sizeof *n->uses);
    n->ruses = kiln__calloc(nv + 1, sizeof *n->ruses);
    n->rcons = kiln__malloc((nv + 1) * sizeof *n->rcons);
    n->nalias = kiln__calloc(nv + 1, sizeof *n->nalias);
    n->out = kiln__calloc(nv + 1, 1);
    n->nprod = kiln__malloc((nv + 1) * sizeof *n->nprod);
    if (!n->uses || !n->ruses || !n->rcons || !n->nalias || !n->out || !n->nprod)
        return kiln__fail(KILN_ERR_NOMEM, "out of memory fusing normalisations");
    for (uint32_t v = 0; v < nv; v++) {
        n->rcons[v] = n->nprod[v] = -1;
        if (c->root[v] != (int32_t)v)
            n->nalias[c->root[v]]++;
    }
    for (int i = 0; i < c->g->n_outputs; i++)
        n->out[c->root[outputs[i]]] = 1;
    for (uint32_t i = 0; i < p->n_ops; i++) {
        const kp_op *op = &p->ops[i];
        if (!op->kind)
            continue;
        for (int k = 0; k < op->n_in; k++) {
            int v = kp_op_in(p, op)[k];
            if (v < 0)
                continue;
            n->uses[v]++;
            n->ruses[c->root[v]]++;
            n->rcons[c->root[v]] = (int32_t)i;
        }
        for (int k = 0; k < op->n_out; k++)
            if (kp_op_out(p, op)[k] >= 0)
                n->nprod[kp_op_out(p, op)[k]] = (int32_t)i;
    }
    return KILN_OK;
}

/* The one op reading v (directly, nothing else sharing its storage), or -1. */
static int32_t sole_reader(const nfuse *n, int v)
{
    const kc_ctx *c = n->c;
    if (v < 0 || (uint32_t)v >= n->nv || c->root[v] != v || n->nalias[v] || n->out[v] ||
        n->uses[v] != 1 || n->ruses[v] != 1)
        return -1;
    return n->rcons[v];
}

static void kill_op(kp_op *op)
{
    op->kind = 0;
    op->n_in = op->n_out = 0;
}

/* A constant f32 with one value per channel of y (dim 1), broadcastable to y. */
static bool per_channel(const kc_ctx *c, int v, const kp_value *y)
{
    const kp_value *w = &c->p.values[v];
    if (!kc_is_const(c, v) || w->dtype != KILN_F32 || w->ndim > y->ndim || y->ndim < 2 ||
        kp_value_numel(w) != y->shape[1])
        return false;
    for (int d = 0; d < w->ndim; d++) {
        int a = d + y->ndim - w->ndim;
        if (w->shape[d] != (a == 1 ? y->shape[1] : 1))
            return false;
    }
    return true;
}

/* Op gi is KP_GROUPNORM over a reshaped view (N x G x rest, one group per channel, as
 * InstanceNormalization): if the result is viewed back as N x C x ... and only goes
 * through per-channel Mul/Add constants, make it one GroupNorm with G groups over the
 * N x C x ... view writing the last result. */
static kiln_status fuse_groupnorm_view(nfuse *n, uint32_t gi, bool *done)
{
    kc_ctx *c = n->c;
    kp_program *p = &c->p;
    const kp_op *g = &p->ops[gi];
    *done = false;
    if (g->n_in != 3 || g->n_out != 1 || g->n_ia != 1 || g->n_fa != 1)
        return KILN_OK;
    const int32_t *gin = kp_op_in(p, g);
    int xp = gin[0], sp = gin[1], bp = gin[2], yp = kp_op_out(p, g)[0];
    if (xp < 0 || sp < 0 || bp < 0 || yp < 0 || (uint32_t)yp >= n->nv)
        return KILN_OK;
    const kp_value *xv = &p->values[xp];
    int64_t G = kp_op_ia(p, g)[0];
    if (xv->dtype != KILN_F32 || xv->ndim != 3 || xv->shape[1] != G || !kc_is_const(c, sp) ||
        !kc_is_const(c, bp) || p->values[sp].dtype != KILN_F32 ||
        p->values[bp].dtype != KILN_F32 || kp_value_numel(&p->values[sp]) != G ||
        kp_value_numel(&p->values[bp]) != G)
        return KILN_OK;
    /* the result is read once, through a view of another shape */
    if (c->root[yp] != yp || n->out[yp] || n->uses[yp] || n->ruses[yp] != 1)
        return KILN_OK;
    int32_t qi = n->rcons[yp];
    if (qi <= (int32_t)gi)
        return KILN_OK;
    int y1 = -1;
    for (int k = 0; k < p->ops[qi].n_in; k++) {
        int v = kp_op_in(p, &p->ops[qi])[k];
        if (v >= 0 && c->root[v] == yp)
            y1 = v;
    }
    if (y1 < 0)
        return KILN_OK;
    const kp_value *yv = &p->values[y1];
    if (yv->ndim < 3 || yv->shape[0] != xv->shape[0] || yv->shape[1] % G != 0 ||
        kp_value_numel(yv) != kp_value_numel(xv))
        return KILN_OK;
    int64_t C = yv->shape[1];
    /* the chain of per-channel affine ops: y*a[c] + b[c] */
    enum { MAX_CHAIN = 8 };
    int32_t chain[MAX_CHAIN], nc = 0;
    int cur = y1, z = -1;
    int32_t oi = qi;
    while (oi >= 0 && nc < MAX_CHAIN) {
        const kp_op *q = &p->ops[oi];
        if (q->kind != KP_BINARY || (q->sub != KP_B_MUL && q->sub != KP_B_ADD) || q->n_in != 2 ||
            q->n_out != 1)
            break;
        const int32_t *qin = kp_op_in(p, q);
        int o = qin[0] == cur ? qin[1] : qin[1] == cur ? qin[0] : -1;
        int r = kp_op_out(p, q)[0];
        if (o < 0 || o == cur || r < 0 || !per_channel(c, o, yv) || !same_shape(&p->values[r], yv) ||
            p->values[r].dtype != KILN_F32)
            break;
        chain[nc++] = oi;
        z = cur = r;
        oi = sole_reader(n, r);
    }
    if (!nc)
        return KILN_OK;
    float *ab = kiln__malloc(sizeof(float) * 2 * (size_t)C);
    if (!ab)
        return kiln__fail(KILN_ERR_NOMEM, "out of memory fusing GroupNorm");
    float *a = ab, *b = ab + C;
    const float *s0 = c->cdata[sp], *b0 = c->cdata[bp];
    for (int64_t ch = 0; ch < C; ch++) {
        a[ch] = s0[ch / (C / G)];
        b[ch] = b0[ch / (C / G)];
    }
    int cv = y1;
    for (int k = 0; k < nc; k++) {
        const kp_op *q = &p->ops[chain[k]];
        const int32_t *qin = kp_op_in(p, q);
        const float *w = c->cdata[qin[0] == cv ? qin[1] : qin[0]];
        for (int64_t ch = 0; ch < C; ch++) {
            if (q->sub == KP_B_MUL) {
                a[ch] *= w[ch];
                b[ch] *= w[ch];
            } else {
                b[ch] += w[ch];
            }
        }
        cv = kp_op_out(p, q)[0];
    }
    int64_t yshape[KILN_MAX_DIMS];
    memcpy(yshape, yv->shape, sizeof yshape);
    int yndim = yv->ndim;
    int sc = kc_new_const(c, KILN_F32, 1, &C, a);
    int bi = sc < 0 ? -1 : kc_new_const(c, KILN_F32, 1, &C, b);
    kiln__free(ab);
    if (sc < 0 || bi < 0)
        return KILN_ERR_NOMEM;
    /* X as N x C x ...: the storage root when it has that shape, else a new view */
    int xr = c->root[xp], xf = xr;
    if (p->values[xr].kind == KP_VAL_CONST || p->values[xr].ndim != yndim ||
        memcmp(p->values[xr].shape, yshape, sizeof(int64_t) * (size_t)yndim) != 0 ||
        p->values[xr].dtype != KILN_F32)
        xf = kc_alias(c, xp, yndim, yshape);
    if (xf < 0)
        return KILN_ERR_NOMEM;
    g = &p->ops[gi];
    float eps = kp_op_fa(p, g)[0];
    int in[3] = { xf, sc, bi };
    fuse_state f = { c, NULL, NULL, NULL, NULL };
    kiln_status s = rewrite_op(&f, gi, in, 3, z, &G, 1, &eps, 1);
    if (s == KILN_ERR_UNSUPPORTED)
        return KILN_OK;
    if (s)
        return s;
    for (int k = 0; k < nc; k++)
        kill_op(&p->ops[chain[k]]);
    *done = true;
    return KILN_OK;
}

/* Op si is Sigmoid(x): when its one reader is Mul(x, sigmoid(x)) of x's shape, op si
 * becomes SiLU(x) writing the Mul's result. */
static kiln_status fuse_silu(nfuse *n, uint32_t si, bool *done)
{
    kc_ctx *c = n->c;
    kp_program *p = &c->p;
    const kp_op *sg = &p->ops[si];
    *done = false;
    if (sg->n_in != 1 || sg->n_out != 1)
        return KILN_OK;
    int x = kp_op_in(p, sg)[0], s = kp_op_out(p, sg)[0];
    if (x < 0 || s < 0 || p->values[x].dtype != KILN_F32)
        return KILN_OK;
    int32_t qi = sole_reader(n, s);
    if (qi <= (int32_t)si)
        return KILN_OK;
    const kp_op *q = &p->ops[qi];
    if (q->kind != KP_BINARY || q->sub != KP_B_MUL || q->n_in != 2 || q->n_out != 1)
        return KILN_OK;
    const int32_t *qin = kp_op_in(p, q);
    int m = kp_op_out(p, q)[0];
    if (!((qin[0] == x && qin[1] == s) || (qin[0] == s && qin[1] == x)) || m < 0 ||
        !same_shape(&p->values[m], &p->values[x]) || p->values[m].dtype != KILN_F32)
        return KILN_OK;
    kp_op old = *sg;
    float fa[2] = { 0.0f, 0.0f };
    int j = kc__push_op(c, KP_UNARY, KP_U_SILU, old.name, &x, 1, &m, 1, NULL, 0, fa, 2);
    if (j < 0)
        return KILN_ERR_NOMEM;
    p->ops[si] = p->ops[j];
    p->n_ops--;
    kill_op(&p->ops[qi]);
    *done = true;
    return KILN_OK;
}

/* Op gi is a GroupNorm without an activation: when its one reader is SiLU of the same
 * shape, the GroupNorm applies it (ia[1] = KP_U_SILU) and writes the SiLU's result. */
static kiln_status fuse_groupnorm_act(nfuse *n, uint32_t gi, bool *done)
{
    kc_ctx *c = n->c;
    kp_program *p = &c->p;
    const kp_op *g = &p->ops[gi];
    *done = false;
    if (g->n_in != 3 || g->n_out != 1 || g->n_ia != 1 || g->n_fa != 1)
        return KILN_OK;
    int z = kp_op_out(p, g)[0];
    if (z < 0 || p->values[z].dtype != KILN_F32)
        return KILN_OK;
    int32_t qi = sole_reader(n, z);
    if (qi <= (int32_t)gi)
        return KILN_OK;
    const kp_op *q = &p->ops[qi];
    if (q->kind != KP_UNARY || q->sub != KP_U_SILU || q->n_in != 1 || q->n_out != 1 ||
        kp_op_in(p, q)[0] != z)
        return KILN_OK;
    int w = kp_op_out(p, q)[0];
    if (w < 0 || !same_shape(&p->values[w], &p->values[z]) || p->values[w].dtype != KILN_F32)
        return KILN_OK;
    int64_t ia[2] = { kp_op_ia(p, g)[0], KP_U_SILU };
    int in[3];
    memcpy(in, kp_op_in(p, g), sizeof in);
    fuse_state f = { c, NULL, NULL, NULL, NULL };
    kiln_status s = rewrite_op(&f, gi, in, 3, w, ia, 2, kp_op_fa(p, g), 1);
    if (s == KILN_ERR_UNSUPPORTED)
        return KILN_OK;
    if (s)
        return s;
    kill_op(&p->ops[qi]);
    *done = true;
    return KILN_OK;
}

/* Op q is a Binary of op pi's result y (a Conv/ConvTranspose/MatMul result read by q
 * alone) and an operand computed after pi by ops that do not depend on pi (a UNet's
 * time-embedding projection, computed after the conv it is added to): moves those ops
 * (their order kept) before pi, so the post-op fusion finds the operand ready. */
static kiln_status hoist_operand(nfuse *n, uint32_t qi, bool *done)
{
    enum { MAX_HOIST = 8 };
    kc_ctx *c = n->c;
    kp_program *p = &c->p;
    const kp_op *q = &p->ops[qi];
    *done = false;
    if (q->n_in != 2 || q->n_out != 1)
        return KILN_OK;
    for (int side = 0; side < 2; side++) {
        int y = kp_op_in(p, q)[side], o = kp_op_in(p, q)[1 - side];
        if (y < 0 || o < 0 || y == o || sole_reader(n, y) != (int32_t)qi || n->nprod[y] < 0)
            continue;
        int32_t pi = n->nprod[y];
        int pk = p->ops[pi].kind;
        int32_t j = n->nprod[c->root[o]];
        if ((pk != KP_CONV && pk != KP_CONV_TRANSPOSE && pk != KP_MATMUL) || j <= pi || j >= (int32_t)qi)
            continue;
        /* the ops in (pi, j] that o depends on, none of them on pi's or later results
         * outside that set */
        int32_t set[MAX_HOIST];
        int ns = 0;
        bool ok = true;
        set[ns++] = j;
        for (int a = 0; a < ns && ok; a++) {
            const kp_op *op = &p->ops[set[a]];
            for (int k = 0; k < op->n_in && ok; k++) {
                int v = kp_op_in(p, op)[k];
                if (v < 0)
                    continue;
                int32_t pv = n->nprod[c->root[v]];
                if (pv < pi)
                    continue;           /* ready before pi (or not written by an op) */
                if (pv == pi) {
                    ok = false;
                    break;
                }
                bool seen = false;
                for (int b = 0; b < ns; b++)
                    seen |= set[b] == pv;
                if (!seen) {
                    if (ns == MAX_HOIST)
                        ok = false;
                    else
                        set[ns++] = pv;
                }
            }
        }
        if (!ok)
            continue;
        /* the new order of ops pi..j: the set (in program order), pi, the rest */
        uint32_t len = (uint32_t)(j - pi + 1);
        kp_op *tmp = kiln__malloc(sizeof *tmp * len);
        if (!tmp)
            return kiln__fail(KILN_ERR_NOMEM, "out of memory fusing ops");
        uint32_t at = 0;
        for (int32_t k = pi + 1; k <= j; k++)
            for (int b = 0; b < ns; b++)
                if (set[b] == k)
                    tmp[at++] = p->ops[k];
        tmp[at++] = p->ops[pi];
        for (int32_t k = pi + 1; k <= j; k++) {
            bool in_set = false;
            for (int b = 0; b < ns; b++)
                in_set |= set[b] == k;
            if (!in_set)
                tmp[at++] = p->ops[k];
        }
        memcpy(&p->ops[pi], tmp, sizeof *tmp * len);
        kiln__free(tmp);
        *done = true;
        return KILN_OK;
    }
    return KILN_OK;
}

/* The patterns above, in that order, each over the whole program. */
static kiln_status fuse_norm_act(kc_ctx *c, const uint32_t *outputs)
{
    nfuse n = { 0 };
    kiln_status s = KILN_OK;
    for (int pass = 0; pass < 4 && s == KILN_OK; pass++) {
        if ((s = nfuse_count(&n, c, outputs)) != KILN_OK)
            break;
        uint32_t n_ops = c->p.n_ops;
        for (uint32_t i = 0; i < n_ops && s == KILN_OK; i++) {
            const kp_op *op = &c->p.ops[i];
            bool done = false;
            if (pass == 3 && op->kind == KP_BINARY) {
                /* ops move: count again before the next one */
                if ((s = hoist_operand(&n, i, &done)) == KILN_OK && done)
                    s = nfuse_count(&n, c, outputs);
                continue;
            }
            if (pass == 0 && op->kind == KP_GROUPNORM)
                s = fuse_groupnorm_view(&n, i, &done);
            else if (pass == 1 && op->kind == KP_UNARY && op->sub == KP_U_SIGMOID)
                s = fuse_silu(&n, i, &done);
            else if (pass == 2 && op->kind == KP_GROUPNORM)
                s = fuse_groupnorm_act(&n, i, &done);
            if (s == KILN_OK && done && kk_check(&c->p, i) != KILN_OK)
                s = kiln__fail(KILN_ERR_INTERNAL, "fused op rejected: %s", kiln_last_error());
        }
    }
    nfuse_free(&n);
    return s;
}

kiln_status kc__fuse(kc_ctx *c, const uint32_t *outputs)
{
    kp_program *p = &c->p;
    uint32_t nv = p->n_values;
    fuse_state f = { c, NULL, NULL, NULL, NULL };
    kiln_status s = fuse_norm_act(c, outputs);
    if (s != KILN_OK)
        return s;
    nv = p->n_values;   /* the patterns above may have added values */
    f.uses = kiln__calloc(nv + 1, sizeof *f.uses);
    f.consumer = kiln__malloc(sizeof(int32_t) * (nv + 1));
    f.producer = kiln__malloc(sizeof(int32_t) * (nv + 1));
    f.pinned = kiln__calloc(nv + 1, 1);
    if (!f.uses || !f.consumer || !f.producer || !f.pinned) {
        s = kiln__fail(KILN_ERR_NOMEM, "out of memory fusing ops");
        goto done;
    }
    for (uint32_t v = 0; v < nv; v++) {
        f.consumer[v] = -1;
        f.producer[v] = -1;
        if (c->root[v] != (int32_t)v) {
            f.pinned[v] = 1;
            f.pinned[c->root[v]] = 1;
        }
    }
    for (int i = 0; i < c->g->n_outputs; i++)
        f.pinned[outputs[i]] = 1;
    for (uint32_t i = 0; i < p->n_ops; i++) {
        const kp_op *op = &p->ops[i];
        for (int k = 0; k < op->n_in; k++) {
            int v = kp_op_in(p, op)[k];
            if (v >= 0) {
                f.uses[v]++;
                f.consumer[v] = (int32_t)i;
            }
        }
        for (int k = 0; k < op->n_out; k++) {
            int v = kp_op_out(p, op)[k];
            if (v >= 0)
                f.producer[v] = (int32_t)i;
        }
    }
    /* a view (alias) is written when its storage root is */
    for (uint32_t v = 0; v < nv; v++)
        if (c->root[v] != (int32_t)v)
            f.producer[v] = f.producer[c->root[v]];
    uint32_t n_ops = p->n_ops; /* rewrite_op appends then pops: n_ops stays */
    for (uint32_t i = 0; i < n_ops && s == KILN_OK; i++) {
        int kind = p->ops[i].kind;
        if (kind != KP_CONV && kind != KP_CONV_TRANSPOSE && kind != KP_MATMUL)
            continue;
        bool fused = true;
        while (fused && s == KILN_OK) {
            /* kc_new_const (BN folding) may add values: grow the per-value arrays' view */
            if (p->n_values > nv) {
                uint32_t nn = p->n_values;
                uint32_t *u = kiln__realloc(f.uses, sizeof *u * (nn + 1));
                if (u) f.uses = u;
                int32_t *cs = kiln__realloc(f.consumer, sizeof *cs * (nn + 1));
                if (cs) f.consumer = cs;
                int32_t *pr = kiln__realloc(f.producer, sizeof *pr * (nn + 1));
                if (pr) f.producer = pr;
                uint8_t *pn = kiln__realloc(f.pinned, nn + 1);
                if (pn) f.pinned = pn;
                if (!u || !cs || !pr || !pn) {
                    s = kiln__fail(KILN_ERR_NOMEM, "out of memory fusing ops");
                    break;
                }
                for (uint32_t v = nv; v < nn; v++) {
                    f.uses[v] = 1;
                    f.consumer[v] = (int32_t)i;
                    f.producer[v] = -1;
                    f.pinned[v] = 0;
                }
                nv = nn;
            }
            s = fuse_one(&f, i, &fused);
        }
    }
done:
    kiln__free(f.uses);
    kiln__free(f.consumer);
    kiln__free(f.producer);
    kiln__free(f.pinned);
    return s;
}
