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
 * Before that, GELU written out in elementary ops (what exporters emit for torch's gelu and
 * GPT-2's gelu_new) becomes one KP_UNARY GELU / GELU_TANH, which then fuses like any
 * activation (see "GELU written out" below), and a MatMul operand multiplied or divided by
 * a scalar constant becomes a scaling post-op of the MatMul (scale_into_matmul).
 *
 * A result is fused into its producer only when that op is its one consumer, it is not a
 * graph output, nothing aliases it (but see sum_through_alias: a MatMul whose result reaches
 * its residual Add only through a reshape), and any extra operand is ready before the
 * producer runs.
 * Rewritten ops get fresh pool entries (seal compacts the pools); fused-away ops get kind 0.
 */
#include "compiler/trace.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct fuse_state {
    kc_ctx   *c;
    uint32_t *uses;       /* per value: op inputs reading it */
    int32_t  *consumer;   /* per value: the last op reading it */
    int32_t  *producer;   /* per value: the op writing it, -1 for inputs and constants */
    uint8_t  *pinned;     /* per value: graph output, aliased, or an alias */
    const uint32_t *outputs;  /* graph output value ids */
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
static kiln_status replace_op(fuse_state *f, uint32_t i, int kind, int sub, const int *in,
                              int n_in, int out, const int64_t *ia, int n_ia, const float *fa,
                              int n_fa)
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
    int j = kc__push_op(c, kind, sub, c->p.ops[i].name, lin, n_in, &out, 1, lia, n_ia, lfa, n_fa);
    if (j < 0)
        return KILN_ERR_NOMEM;
    c->p.ops[i] = c->p.ops[j];
    c->p.n_ops--;
    return KILN_OK;
}

/* replace_op keeping the op's kind and algorithm. */
static kiln_status rewrite_op(fuse_state *f, uint32_t i, const int *in, int n_in, int out,
                              const int64_t *ia, int n_ia, const float *fa, int n_fa)
{
    const kp_op *op = &f->c->p.ops[i];
    return replace_op(f, i, op->kind, op->sub, in, n_in, out, ia, n_ia, fa, n_fa);
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

/* ---------------------------------------------------------------------------------------
 * GELU written out
 *
 * Exporters spell GELU in elementary ops: torch's exact gelu as x * (1 + erf(x / sqrt 2)) *
 * 0.5 (or with 0.5 * x first, or a Mul by 1/sqrt 2), the tanh form (GPT-2's gelu_new) as
 * 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))) with x^3 a Pow or x * x * x, or
 * factored as x * (1 + 0.044715 * x * x). Rather than list the spellings, the pass takes
 * the region around each Erf/Tanh built from one tensor x, scalar constants and
 * Add/Sub/Mul/Div/Neg/Linear/Pow(1, 2 or 3), and works out what it computes: every value of
 * the region is p(x) + q(x) * t, p and q polynomials in x of degree <= 3 and t the Erf/Tanh
 * result. It is GELU when the Erf/Tanh argument is k * x with k = 1/sqrt 2 (Erf), or
 * k * (x + 0.044715 * x^3) with k = sqrt(2/pi) (Tanh), and the region's result is
 * 0.5 x + 0.5 x t. k and 0.044715 match within GELU_TOL (relative: a model's 1.4142 or
 * 0.7071 is 1e-5 off), the 0.5s and the zero terms within GELU_TOL_EXACT. The region then
 * becomes one KP_UNARY GELU/GELU_TANH of x at its last op. Every intermediate of the region
 * has its one consumer inside it and is neither a graph output nor aliased; x itself may be
 * used anywhere else.
 * ------------------------------------------------------------------------------------- */

enum { GELU_MAX_OPS = 16, GELU_DEG = 3 };
#define GELU_TOL 1e-4
#define GELU_TOL_EXACT 1e-9

typedef struct gelu_form {
    double p[GELU_DEG + 1], q[GELU_DEG + 1]; /* p(x) + q(x) * t, coefficients by degree */
} gelu_form;

typedef struct gelu_region {
    int       x;                    /* the one non-constant leaf, -1 until found */
    int       n;
    int32_t   ops[GELU_MAX_OPS];    /* op indices (ops[0]: the Erf/Tanh) */
    int       vals[GELU_MAX_OPS];   /* after gelu_eval: ops' outputs in index order, */
    gelu_form forms[GELU_MAX_OPS];  /* and what they compute */
} gelu_region;

/* A finite f32 constant of one element: its value. */
static bool scalar_const(const fuse_state *f, int v, double *out)
{
    const kc_ctx *c = f->c;
    const kp_value *val = &c->p.values[v];
    if (val->kind != KP_VAL_CONST || val->dtype != KILN_F32 || kp_value_numel(val) != 1 ||
        val->n_layout || !c->cdata[v])
        return false;
    float k;
    memcpy(&k, c->cdata[v], sizeof k);
    *out = k;
    return isfinite(k);
}

/* The ops a region may hold besides its Erf/Tanh. */
static bool gelu_piece(const kp_op *op)
{
    if (op->n_out != 1)
        return false;
    if (op->kind == KP_BINARY)
        return op->n_in == 2 && (op->sub == KP_B_ADD || op->sub == KP_B_SUB ||
                                 op->sub == KP_B_MUL || op->sub == KP_B_DIV);
    if (op->kind == KP_UNARY)
        return op->n_in == 1 && op->n_fa >= 2 &&
               (op->sub == KP_U_IDENTITY || op->sub == KP_U_NEG || op->sub == KP_U_LINEAR ||
                op->sub == KP_U_POW_SCALAR);
    return false;
}

/* Adds to r what computes v, an input of a region op: nothing for a scalar constant or x;
 * v's producer (and, recursively, its inputs') when v is an intermediate (one consumer, not
 * pinned) made by a region piece; else v is x, the region's one tensor leaf. */
static bool gelu_collect(fuse_state *f, gelu_region *r, int v, int depth)
{
    const kp_program *p = &f->c->p;
    double k;
    if (v < 0 || depth > GELU_MAX_OPS)
        return false;
    if (v == r->x || scalar_const(f, v, &k))
        return true;
    int32_t pi = f->producer[v];
    if (f->uses[v] == 1 && !f->pinned[v] && pi >= 0 && p->ops[pi].kind && gelu_piece(&p->ops[pi])) {
        if (r->n == GELU_MAX_OPS)
            return false;
        for (int j = 0; j < r->n; j++)
            if (r->ops[j] == pi)
                return false;
        r->ops[r->n++] = pi;
        const kp_op *op = &p->ops[pi];
        for (int j = 0; j < op->n_in; j++)
            if (!gelu_collect(f, r, kp_op_in(p, op)[j], depth + 1))
                return false;
        return true;
    }
    if (r->x >= 0)
        return false;   /* a second tensor leaf */
    r->x = v;
    return true;
}

static bool gelu_zero(const double *a)
{
    for (int d = 0; d <= GELU_DEG; d++)
        if (fabs(a[d]) > GELU_TOL_EXACT)
            return false;
    return true;
}

static bool near(double v, double want, double tol) { return fabs(v - want) <= tol * fabs(want); }

/* a * b into out (out may be a or b); false when the product has degree > GELU_DEG. */
static bool poly_mul(const double *a, const double *b, double *out)
{
    double r[2 * GELU_DEG + 1] = {0};
    for (int i = 0; i <= GELU_DEG; i++)
        for (int j = 0; j <= GELU_DEG; j++)
            r[i + j] += a[i] * b[j];
    for (int d = GELU_DEG + 1; d <= 2 * GELU_DEG; d++)
        if (r[d] != 0.0)
            return false;
    memcpy(out, r, sizeof(double) * (GELU_DEG + 1));
    return true;
}

static bool form_mul(const gelu_form *a, const gelu_form *b, gelu_form *out)
{
    gelu_form r;
    double t[GELU_DEG + 1];
    if (!gelu_zero(a->q) && !gelu_zero(b->q))
        return false;   /* t^2 */
    if (!poly_mul(a->p, b->p, r.p) || !poly_mul(a->p, b->q, r.q) || !poly_mul(a->q, b->p, t))
        return false;
    for (int d = 0; d <= GELU_DEG; d++)
        r.q[d] += t[d];
    *out = r;
    return true;
}

static void form_scale(gelu_form *a, double s, double add)
{
    for (int d = 0; d <= GELU_DEG; d++) {
        a->p[d] *= s;
        a->q[d] *= s;
    }
    a->p[0] += add;
}

/* The form of value v, an input of a region op. */
static bool form_in(const fuse_state *f, const gelu_region *r, int done, int v, gelu_form *out)
{
    double k;
    memset(out, 0, sizeof *out);
    if (v == r->x) {
        out->p[1] = 1.0;
        return true;
    }
    if (scalar_const(f, v, &k)) {
        out->p[0] = k;
        return true;
    }
    for (int j = 0; j < done; j++)
        if (r->vals[j] == v) {
            *out = r->forms[j];
            return true;
        }
    return false;
}

/* Whether the Erf/Tanh argument is GELU's. */
static bool gelu_arg(int alg, const gelu_form *a)
{
    if (!gelu_zero(a->q) || fabs(a->p[0]) > GELU_TOL_EXACT || fabs(a->p[2]) > GELU_TOL_EXACT)
        return false;
    if (alg == KP_U_ERF)
        return near(a->p[1], 0.70710678118654752440, GELU_TOL) && fabs(a->p[3]) <= GELU_TOL_EXACT;
    double k = 0.79788456080286535588;
    return near(a->p[1], k, GELU_TOL) && near(a->p[3] / a->p[1], 0.044715, GELU_TOL);
}

/* Whether a form is 0.5 x + 0.5 x t. */
static bool gelu_result(const gelu_form *a)
{
    return fabs(a->p[0]) <= GELU_TOL_EXACT && fabs(a->q[0]) <= GELU_TOL_EXACT &&
           near(a->p[1], 0.5, GELU_TOL_EXACT) && near(a->q[1], 0.5, GELU_TOL_EXACT) &&
           fabs(a->p[2]) <= GELU_TOL_EXACT && fabs(a->q[2]) <= GELU_TOL_EXACT &&
           fabs(a->p[3]) <= GELU_TOL_EXACT && fabs(a->q[3]) <= GELU_TOL_EXACT;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Works out the form of every op's output of r, in program order; false when some op is
 * not polynomial in x and t, changes x's shape, or the Erf/Tanh argument is not GELU's.
 * *last: the form of the last op's output. */
static bool gelu_eval(const fuse_state *f, gelu_region *r, gelu_form *last)
{
    const kp_program *p = &f->c->p;
    const kp_value *X = &p->values[r->x];
    int32_t order[GELU_MAX_OPS];
    memcpy(order, r->ops, sizeof(int32_t) * (size_t)r->n);
    qsort(order, (size_t)r->n, sizeof *order, cmp_i32);
    for (int j = 0; j < r->n; j++) {
        const kp_op *op = &p->ops[order[j]];
        const int32_t *in = kp_op_in(p, op);
        const float *fa = kp_op_fa(p, op);
        int y = kp_op_out(p, op)[0];
        if (y < 0 || p->values[y].dtype != KILN_F32 || !same_shape(&p->values[y], X))
            return false;
        gelu_form a, b, o;
        if (!form_in(f, r, j, in[0], &a) || (op->n_in > 1 && !form_in(f, r, j, in[1], &b)))
            return false;
        o = a;
        if (op->kind == KP_UNARY) {
            switch (op->sub) {
            case KP_U_ERF:
            case KP_U_TANH:
                if (!gelu_arg(op->sub, &a))
                    return false;
                memset(&o, 0, sizeof o);
                o.q[0] = 1.0;
                break;
            case KP_U_IDENTITY: break;
            case KP_U_NEG: form_scale(&o, -1.0, 0.0); break;
            case KP_U_LINEAR: form_scale(&o, fa[0], fa[1]); break;
            default: { /* KP_U_POW_SCALAR */
                if (fa[0] != 1.0f && fa[0] != 2.0f && fa[0] != 3.0f)
                    return false;
                for (int e = 1; e < (int)fa[0]; e++)
                    if (!form_mul(&o, &a, &o))
                        return false;
                break;
            }
            }
        } else {
            switch (op->sub) {
            case KP_B_ADD: case KP_B_SUB: {
                double s = op->sub == KP_B_ADD ? 1.0 : -1.0;
                for (int d = 0; d <= GELU_DEG; d++) {
                    o.p[d] += s * b.p[d];
                    o.q[d] += s * b.q[d];
                }
                break;
            }
            case KP_B_MUL:
                if (!form_mul(&a, &b, &o))
                    return false;
                break;
            default: { /* KP_B_DIV: by a constant only */
                double c = b.p[0];
                b.p[0] = 0.0;
                if (!gelu_zero(b.p) || !gelu_zero(b.q) || c == 0.0)
                    return false;
                form_scale(&o, 1.0 / c, 0.0);
                break;
            }
            }
        }
        r->vals[j] = y;
        r->forms[j] = o;
    }
    *last = r->forms[r->n - 1];
    return true;
}

/* Tries to make a GELU of the region around op ti (an Erf or a Tanh). */
static kiln_status gelu_at(fuse_state *f, uint32_t ti)
{
    kp_program *p = &f->c->p;
    const kp_op *t = &p->ops[ti];
    if (t->kind != KP_UNARY || (t->sub != KP_U_ERF && t->sub != KP_U_TANH) || t->n_in != 1 ||
        t->n_out != 1)
        return KILN_OK;
    int alg = t->sub == KP_U_ERF ? KP_U_GELU : KP_U_GELU_TANH;
    gelu_region r = { .x = -1, .n = 1, .ops = { (int32_t)ti } };
    if (!gelu_collect(f, &r, kp_op_in(p, t)[0], 0) || r.x < 0 || p->values[r.x].dtype != KILN_F32)
        return KILN_OK;
    int cur = kp_op_out(p, t)[0];
    gelu_form form;
    for (;;) {
        if (cur < 0 || !gelu_eval(f, &r, &form))
            return KILN_OK;
        if (r.n > 1 && gelu_result(&form))
            break;
        if (f->uses[cur] != 1 || f->pinned[cur] || r.n == GELU_MAX_OPS)
            return KILN_OK;
        int32_t qi = f->consumer[cur];
        const kp_op *q = &p->ops[qi];
        if (qi <= (int32_t)ti || !q->kind || !gelu_piece(q))
            return KILN_OK;
        r.ops[r.n++] = qi;
        for (int j = 0; j < q->n_in; j++)
            if (kp_op_in(p, q)[j] != cur && !gelu_collect(f, &r, kp_op_in(p, q)[j], 0))
                return KILN_OK;
        cur = kp_op_out(p, q)[0];
    }
    /* the last op computed becomes the GELU; the rest go */
    int32_t last = r.ops[0];
    for (int j = 1; j < r.n; j++)
        if (r.ops[j] > last)
            last = r.ops[j];
    int in[1] = { r.x };
    int64_t no_ia[1] = { 0 };
    float fa[2] = { 0.0f, 0.0f };
    kiln_status s = replace_op(f, (uint32_t)last, KP_UNARY, alg, in, 1, cur, no_ia, 0, fa, 2);
    if (s == KILN_ERR_UNSUPPORTED)
        return KILN_OK;
    if (s != KILN_OK)
        return s;
    for (int j = 0; j < r.n; j++)
        if (r.ops[j] != last)
            p->ops[r.ops[j]].kind = 0;
    if (kk_check(p, (uint32_t)last) != KILN_OK)
        return kiln__fail(KILN_ERR_INTERNAL, "GELU made of op %d rejected: %s", last,
                          kiln_last_error());
    return KILN_OK;
}

/* A MatMul operand scaled by a constant, (A * s) @ B or A @ (B / c), is the product scaled:
 * the Mul/Div goes and the MatMul gets a KP_POST_UNARY LINEAR(s) (attention's
 * Q / sqrt(d_head) before Q @ K^T: one op less, and the scaling happens in the MatMul's
 * epilogue). Only while the MatMul has no bias and no post-ops (a bias would get scaled
 * too), so it runs before the fusions that add them. */
static kiln_status scale_into_matmul(fuse_state *f, uint32_t mi)
{
    kp_program *p = &f->c->p;
    const kp_op *mm = &p->ops[mi];
    if (mm->kind != KP_MATMUL || mm->n_in < 2 || mm->n_in > 3 ||
        (mm->n_in == 3 && kp_op_in(p, mm)[2] >= 0) || mm->n_out != 1 || mm->n_ia != 1 ||
        kp_op_ia(p, mm)[0] != 0 || kp_op_out(p, mm)[0] < 0)
        return KILN_OK;
    for (int k = 0; k < 2; k++) {
        int a = kp_op_in(p, mm)[k];
        if (a < 0 || f->uses[a] != 1 || f->pinned[a] || f->producer[a] < 0)
            continue;
        uint32_t si = (uint32_t)f->producer[a];
        const kp_op *sc = &p->ops[si];
        if (!sc->kind || sc->kind != KP_BINARY || sc->n_in != 2 || sc->n_out != 1 ||
            (sc->sub != KP_B_MUL && sc->sub != KP_B_DIV))
            continue;
        const int32_t *sin = kp_op_in(p, sc);
        double c;
        int v;
        if (scalar_const(f, sin[1], &c))
            v = sin[0];
        else if (sc->sub == KP_B_MUL && scalar_const(f, sin[0], &c))
            v = sin[1];
        else
            continue;
        double s = sc->sub == KP_B_MUL ? c : 1.0 / c;
        if (v < 0 || kc_is_const(f->c, v) || p->values[v].dtype != KILN_F32 ||
            p->values[a].dtype != KILN_F32 || !same_shape(&p->values[v], &p->values[a]) ||
            c == 0.0 || !isfinite((float)s))
            continue;
        int in[3] = { kp_op_in(p, mm)[0], kp_op_in(p, mm)[1], -1 };
        in[k] = v;
        int64_t ia[3] = { 1, KP_POST_UNARY, KP_U_LINEAR };
        float fa[2] = { (float)s, 0.0f };
        kiln_status st = rewrite_op(f, mi, in, mm->n_in, kp_op_out(p, mm)[0], ia, 3, fa, 2);
        if (st == KILN_ERR_UNSUPPORTED)
            return KILN_OK;
        if (st != KILN_OK)
            return st;
        p->ops[si].kind = 0;
        f->uses[a] = 0;
        f->consumer[v] = (int32_t)mi;
        if (kk_check(p, mi) != KILN_OK)
            return kiln__fail(KILN_ERR_INTERNAL, "scaled MatMul rejected: %s", kiln_last_error());
        return KILN_OK;
    }
    return KILN_OK;
}

static bool is_output(const fuse_state *f, int v)
{
    for (int i = 0; i < f->c->g->n_outputs; i++)
        if (f->outputs[i] == (uint32_t)v)
            return true;
    return false;
}

/* A MatMul whose result reaches a residual Add only through a free reshape (a Gemm's 2-D
 * result reshaped back to batch x seq x hidden, as transformer exports have it): the MatMul
 * is recast in the reshaped shape, its A aliased to match (the same memory: rows x K), so
 * the Add becomes its KP_POST_SUM as it would without the reshape. Needs: no op reads the
 * result itself, exactly one of its aliases is read, once, by that Add; none of them is a
 * graph output; the reshape keeps the last dim; B is 2-D and the bias 1-D (they do not
 * depend on the batch shape); no post-op operands yet. */
static kiln_status sum_through_alias(fuse_state *f, uint32_t pi, bool *fused)
{
    kc_ctx *c = f->c;
    kp_program *p = &c->p;
    const kp_op *op = &p->ops[pi];
    *fused = false;
    if (op->kind != KP_MATMUL || op->n_out != 1 || op->n_in < 2 || op->n_in > 3 ||
        op->n_ia + 2 > 64 || op->n_fa + 2 > 64)
        return KILN_OK;
    const int32_t *in = kp_op_in(p, op);
    int y = kp_op_out(p, op)[0];
    if (y < 0 || c->root[y] != y || f->uses[y] != 0 || is_output(f, y))
        return KILN_OK;
    int a = -1;
    for (uint32_t v = 0; v < p->n_values; v++) {
        if ((int)v == y || c->root[v] != y)
            continue;
        if (is_output(f, (int)v) || (f->uses[v] && (f->uses[v] != 1 || a >= 0)))
            return KILN_OK;
        if (f->uses[v])
            a = (int)v;
    }
    if (a < 0)
        return KILN_OK;
    int32_t qi = f->consumer[a];
    if (qi <= (int32_t)pi || !p->ops[qi].kind)
        return KILN_OK;
    const kp_op *q = &p->ops[qi];
    const int32_t *qin = kp_op_in(p, q);
    if (q->kind != KP_BINARY || q->sub != KP_B_ADD || q->n_in != 2 || q->n_out != 1 ||
        qin[0] == qin[1] || kp_op_out(p, q)[0] < 0)
        return KILN_OK;
    int z = kp_op_out(p, q)[0], o = qin[0] == a ? qin[1] : qin[0];
    const kp_value *Y = &p->values[y], *Av = &p->values[a], *ov = &p->values[o];
    const kp_value *X = &p->values[in[0]], *W = &p->values[in[1]];
    bool ready = ov->kind != KP_VAL_ACT || (f->producer[o] >= 0 && f->producer[o] < (int32_t)pi);
    if (!ready || c->root[o] == y || ov->dtype != KILN_F32 || !same_shape(ov, Av) ||
        !same_shape(&p->values[z], Av) || p->values[z].dtype != KILN_F32 || Av->ndim < 2 ||
        Av->shape[Av->ndim - 1] != Y->shape[Y->ndim - 1] || W->ndim != 2 || X->ndim < 1 ||
        (op->n_in == 3 && in[2] >= 0 && p->values[in[2]].ndim != 1))
        return KILN_OK;
    /* A seen as the Add's shape with its own last dim: rows x K, the same elements */
    int64_t shape[KILN_MAX_DIMS];
    memcpy(shape, Av->shape, sizeof shape);
    shape[Av->ndim - 1] = X->shape[X->ndim - 1];
    if (kiln__numel(Av->ndim, shape) != kp_value_numel(X))
        return KILN_OK;
    int ax = kc_alias(c, in[0], Av->ndim, shape);
    if (ax < 0)
        return KILN_ERR_NOMEM;
    /* kc_alias may have moved the pools; the main loop gives ax its per-value entries */
    op = &p->ops[pi];
    f->pinned[c->root[kp_op_in(p, op)[0]]] = 1;
    int nin[3] = { ax, kp_op_in(p, op)[1], op->n_in == 3 ? kp_op_in(p, op)[2] : -1 };
    kiln_status s = rewrite_op(f, pi, nin, op->n_in, a, kp_op_ia(p, op), (int)op->n_ia,
                               kp_op_fa(p, op), (int)op->n_fa);
    if (s == KILN_OK)
        s = add_post(f, pi, KP_POST_SUM, 0, 0.0f, 0.0f, o, z);
    if (s != KILN_OK)
        return s == KILN_ERR_UNSUPPORTED ? kiln__fail(KILN_ERR_INTERNAL, "MatMul recast half done") : s;
    p->ops[qi].kind = 0;
    f->uses[a] = 0;
    f->producer[z] = (int32_t)pi;
    *fused = true;
    if (kk_check(p, pi) != KILN_OK)
        return kiln__fail(KILN_ERR_INTERNAL, "recast MatMul rejected: %s", kiln_last_error());
    return KILN_OK;
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
    if (y >= 0 && f->pinned[y] && f->uses[y] == 0 && op->kind == KP_MATMUL)
        return sum_through_alias(f, pi, fused);
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
    fuse_state f = { c, NULL, NULL, NULL, NULL, NULL };
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
    fuse_state f = { c, NULL, NULL, NULL, NULL, NULL };
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

/* Fills uses, consumer and producer for values 0..nv-1 from the live ops. */
static void count_uses(fuse_state *f, uint32_t nv)
{
    const kp_program *p = &f->c->p;
    for (uint32_t v = 0; v < nv; v++) {
        f->uses[v] = 0;
        f->consumer[v] = -1;
        f->producer[v] = -1;
    }
    for (uint32_t i = 0; i < p->n_ops; i++) {
        const kp_op *op = &p->ops[i];
        if (!op->kind)
            continue;
        for (int k = 0; k < op->n_in; k++) {
            int v = kp_op_in(p, op)[k];
            if (v >= 0) {
                f->uses[v]++;
                f->consumer[v] = (int32_t)i;
            }
        }
        for (int k = 0; k < op->n_out; k++) {
            int v = kp_op_out(p, op)[k];
            if (v >= 0)
                f->producer[v] = (int32_t)i;
        }
    }
    /* a view (alias) is written when its storage root is */
    const int32_t *root = f->c->root;
    for (uint32_t v = 0; v < nv; v++)
        if (root[v] != (int32_t)v)
            f->producer[v] = f->producer[root[v]];
}

kiln_status kc__fuse(kc_ctx *c, const uint32_t *outputs)
{
    kp_program *p = &c->p;
    uint32_t nv = p->n_values;
    fuse_state f = { c, NULL, NULL, NULL, NULL, outputs };
    kiln_status s = fuse_norm_act(c, outputs);
    if (s != KILN_OK)
        return s;
    nv = p->n_values; /* the patterns above may have added values */
    f.uses = kiln__calloc(nv + 1, sizeof *f.uses);
    f.consumer = kiln__malloc(sizeof(int32_t) * (nv + 1));
    f.producer = kiln__malloc(sizeof(int32_t) * (nv + 1));
    f.pinned = kiln__calloc(nv + 1, 1);
    if (!f.uses || !f.consumer || !f.producer || !f.pinned) {
        s = kiln__fail(KILN_ERR_NOMEM, "out of memory fusing ops");
        goto done;
    }
    for (uint32_t v = 0; v < nv; v++)
        if (c->root[v] != (int32_t)v) {
            f.pinned[v] = 1;
            f.pinned[c->root[v]] = 1;
        }
    for (int i = 0; i < c->g->n_outputs; i++)
        f.pinned[outputs[i]] = 1;
    count_uses(&f, nv);
    for (uint32_t i = 0; i < p->n_ops && s == KILN_OK; i++) {
        uint32_t before = p->n_ops;
        int kind = p->ops[i].kind;
        if (kind == KP_UNARY && (s = gelu_at(&f, i)) == KILN_OK && p->ops[i].kind != kind)
            count_uses(&f, nv);   /* op i went (a region's last op is always after it) */
        KILN_ASSERT(p->n_ops == before);
    }
    count_uses(&f, nv);
    for (uint32_t i = 0; i < p->n_ops && s == KILN_OK; i++)
        s = scale_into_matmul(&f, i);
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
