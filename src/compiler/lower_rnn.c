/*
 * lower_rnn.c — the recurrent ops RNN, GRU and LSTM, unrolled over time. kiln compiles for
 * fixed shapes, so the sequence length is known at trace time: each direction becomes one
 * MatMul of the whole input sequence with W (biases folded in), then per time step a MatMul
 * of the previous hidden state with R and the gates' element-wise arithmetic, all in
 * existing program ops (constant weights are transposed and split at trace time).
 * sequence_lens (constant or given at run time) masks the steps past each sequence's end:
 * there the state is carried over and Y is zero, as ONNX specifies.
 */
#include "compiler/lower_impl.h"

#include <string.h>
#include <strings.h>

enum { RNN_PLAIN = 0, RNN_GRU, RNN_LSTM };
#define RNN_MAX_T 4096               /* time steps unrolled at most */

/* One activation function of the `activations` attribute. */
typedef struct rnn_act {
    int alg;                         /* kp_unary; -1: ScaledTanh */
    float alpha, beta;
} rnn_act;

typedef struct rnn_ctx {
    int kind, dirs, gates;
    int64_t T, B, H;
    bool lbr, input_forget, has_clip;
    float clip;
    rnn_act act[2][3];               /* per direction: f, g, h (as many as the op takes) */
    bool masked;                     /* sequence_lens given and not all T */
    kc_val seq;                      /* sequence_lens, when masked */
    const int64_t *seq_const;        /* its values when constant (converted), else NULL */
    int64_t seq_vals[4096];
} rnn_ctx;

/* ---- activations ---- */

static kiln_status parse_acts(kc_ctx *c, const kg_node *n, rnn_ctx *r)
{
    static const char *dflt[3][3] = {{"Tanh"}, {"Sigmoid", "Tanh"}, {"Sigmoid", "Tanh", "Tanh"}};
    int per = r->kind == RNN_PLAIN ? 1 : r->kind == RNN_GRU ? 2 : 3;
    const kg_attr *names = kg_attr_find(n, "activations");
    const kg_attr *alphas = kg_attr_find(n, "activation_alpha");
    const kg_attr *betas = kg_attr_find(n, "activation_beta");
    size_t na = 0, nb = 0;
    if (names && (names->type != KG_ATTR_STRINGS || names->n != (size_t)(per * r->dirs)))
        return kc_fail(c, n, KILN_ERR_FORMAT, "attribute 'activations' must list %d names",
                       per * r->dirs);
    for (int d = 0; d < r->dirs; d++)
        for (int k = 0; k < per; k++) {
            const char *s = names ? names->strings[d * per + k] : dflt[r->kind][k];
            rnn_act *a = &r->act[d][k];
            bool uses_alpha = true, uses_beta = false;
            a->alpha = 0;
            a->beta = 0;
            if (!strcasecmp(s, "Tanh")) {
                a->alg = KP_U_TANH, uses_alpha = false;
            } else if (!strcasecmp(s, "Sigmoid")) {
                a->alg = KP_U_SIGMOID, uses_alpha = false;
            } else if (!strcasecmp(s, "Relu")) {
                a->alg = KP_U_RELU, uses_alpha = false;
            } else if (!strcasecmp(s, "Softsign")) {
                a->alg = KP_U_SOFTSIGN, uses_alpha = false;
            } else if (!strcasecmp(s, "Softplus")) {
                a->alg = KP_U_SOFTPLUS, uses_alpha = false;
            } else if (!strcasecmp(s, "LeakyRelu")) {
                a->alg = KP_U_LEAKY_RELU, a->alpha = 0.01f;
            } else if (!strcasecmp(s, "ThresholdedRelu")) {
                a->alg = KP_U_THRESHOLDED_RELU, a->alpha = 1.0f;
            } else if (!strcasecmp(s, "Elu")) {
                a->alg = KP_U_ELU, a->alpha = 1.0f;
            } else if (!strcasecmp(s, "HardSigmoid")) {
                a->alg = KP_U_HARD_SIGMOID, a->alpha = 0.2f, a->beta = 0.5f, uses_beta = true;
            } else if (!strcasecmp(s, "Affine")) {
                a->alg = KP_U_LINEAR, a->alpha = 1.0f, uses_beta = true;
            } else if (!strcasecmp(s, "ScaledTanh")) {
                a->alg = -1, a->alpha = 1.0f, a->beta = 1.0f, uses_beta = true;
            } else {
                return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "activation '%s'", s);
            }
            if (uses_alpha && alphas && alphas->type == KG_ATTR_FLOATS && na < alphas->n)
                a->alpha = alphas->floats[na++];
            if (uses_beta && betas && betas->type == KG_ATTR_FLOATS && nb < betas->n)
                a->beta = betas->floats[nb++];
        }
    return KILN_OK;
}

static kiln_status apply_act(kc_ctx *c, const kg_node *n, const rnn_act *a, const kc_val *x,
                             kc_val *out)
{
    if (a->alg >= 0)
        return kc_unary(c, n, a->alg, x, a->alpha, a->beta, out);
    kc_val t;                                           /* ScaledTanh: alpha * tanh(beta * x) */
    KC_TRY(kc_unary(c, n, KP_U_LINEAR, x, a->beta, 0, &t));
    KC_TRY(kc_unary(c, n, KP_U_TANH, &t, 0, 0, &t));
    return kc_unary(c, n, KP_U_LINEAR, &t, a->alpha, 0, out);
}

/* A gate's pre-activation clipped to [-clip, clip] (attribute `clip`), then activated. */
static kiln_status gate(kc_ctx *c, const kg_node *n, const rnn_ctx *r, const rnn_act *a,
                        const kc_val *x, kc_val *out)
{
    kc_val t = *x;
    if (r->has_clip)
        KC_TRY(kc_unary(c, n, KP_U_CLIP, &t, -r->clip, r->clip, &t));
    return apply_act(c, n, a, &t, out);
}

/* ---- tensor plumbing ---- */

/* x[d] of a tensor whose first dim is the direction: that dim dropped. */
static kiln_status pick(kc_ctx *c, const kg_node *n, const kc_val *x, int d, kc_val *out)
{
    int64_t ia[2 * KILN_MAX_DIMS], shape[KILN_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    if (x->shape[0] == 1)
        return kc_reshape(c, n, x, x->ndim - 1, x->shape + 1, out);
    shape[0] = 1;
    for (int i = 0; i < x->ndim; i++) {
        ia[i] = i == 0 ? d : 0;
        ia[x->ndim + i] = 1;
    }
    kc_val t;
    KC_TRY(kc_emit1(c, n, KP_SLICE, 0, &x->id, 1, x->dt, x->ndim, shape, ia, 2 * x->ndim, NULL, 0,
                    &t));
    return kc_reshape(c, n, &t, x->ndim - 1, x->shape + 1, out);
}

/* Splits x along axis into parts of the given sizes (parts[i] receive the pieces). */
static kiln_status split(kc_ctx *c, const kg_node *n, const kc_val *x, int axis, int cnt,
                         const int64_t *sizes, kc_val *parts)
{
    if (cnt == 1) {
        parts[0] = *x;
        return KILN_OK;
    }
    int ids[4];
    int64_t shape[KILN_MAX_DIMS], ia = axis;
    KILN_ASSERT(cnt <= 4);
    memcpy(shape, x->shape, sizeof shape);
    for (int i = 0; i < cnt; i++) {
        shape[axis] = sizes[i];
        if ((ids[i] = kc_new_value(c, x->dt, x->ndim, shape)) < 0)
            return KILN_ERR_NOMEM;
    }
    KC_TRY(kc_emit(c, n, KP_SPLIT, 0, &x->id, 1, ids, cnt, &ia, 1, NULL, 0));
    for (int i = 0; i < cnt; i++)
        kc_snap(c, ids[i], &parts[i]);
    return KILN_OK;
}

/* cnt equal parts of the last axis. */
static kiln_status split_last(kc_ctx *c, const kg_node *n, const kc_val *x, int cnt, kc_val *parts)
{
    int64_t sizes[4];
    for (int i = 0; i < cnt; i++)
        sizes[i] = x->shape[x->ndim - 1] / cnt;
    return split(c, n, x, x->ndim - 1, cnt, sizes, parts);
}

static kiln_status transpose(kc_ctx *c, const kg_node *n, const kc_val *x, const int64_t *perm,
                             kc_val *out)
{
    int64_t shape[KILN_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++)
        shape[i] = x->shape[perm[i]];
    return kc_emit1(c, n, KP_TRANSPOSE, 0, &x->id, 1, x->dt, x->ndim, shape, perm, x->ndim, NULL,
                    0, out);
}

/* a [M, K] @ b [K, N] (+ bias, 1-D of N or [M, N]). */
static kiln_status matmul(kc_ctx *c, const kg_node *n, const kc_val *a, const kc_val *b,
                          const kc_val *bias, kc_val *out)
{
    int64_t shape[2] = {a->shape[0], b->shape[1]}, npost = 0;
    int in[3] = {a->id, b->id, bias ? bias->id : -1};
    return kc_emit1(c, n, KP_MATMUL, 0, in, 3, a->dt, 2, shape, &npost, 1, NULL, 0, out);
}

static kiln_status concat(kc_ctx *c, const kg_node *n, const int *ids, int cnt, int axis,
                          kc_val *out)
{
    kc_val first;
    kc_snap(c, ids[0], &first);
    if (cnt == 1) {
        *out = first;
        return KILN_OK;
    }
    int64_t shape[KILN_MAX_DIMS], ia = axis;
    memcpy(shape, first.shape, sizeof shape);
    shape[axis] = 0;
    for (int i = 0; i < cnt; i++)
        shape[axis] += kc_value(c, ids[i])->shape[axis];
    return kc_emit1(c, n, KP_CONCAT, 0, ids, cnt, first.dt, first.ndim, shape, &ia, 1, NULL, 0,
                    out);
}

/* ---- one direction ---- */

typedef struct rnn_dir {
    kc_val w, r, b;                  /* W[d] [G*H, I], R[d] [G*H, H], B[d] [2*G*H] */
    bool has_b, has_h0, has_c0, has_p;
    kc_val h0, c0, p;                /* [B, H], [B, H], [3*H] */
} rnn_dir;

/* The run-time mask of step t ([B, 1] bool: t < sequence_lens), or false when every
 * sequence reaches t (no masking needed). */
static kiln_status step_mask(kc_ctx *c, const kg_node *n, const rnn_ctx *r, int64_t t, bool *use,
                             kc_val *m)
{
    *use = false;
    if (!r->masked)
        return KILN_OK;
    if (r->seq_const) {
        bool all = true;
        for (int64_t b = 0; b < r->B; b++)
            all &= t < r->seq_const[b];
        if (all)
            return KILN_OK;
    }
    kc_val tv;
    int64_t t64 = t;
    int32_t t32 = (int32_t)t;
    const void *tp = r->seq.dt == KILN_I64 ? (const void *)&t64 : (const void *)&t32;
    KC_TRY(kc_const(c, r->seq.dt, 0, NULL, tp, &tv));
    KC_TRY(kc_binary(c, n, KP_B_LESS, &tv, &r->seq, m));
    int64_t shape[2] = {r->B, 1};
    KC_TRY(kc_reshape(c, n, m, 2, shape, m));
    *use = true;
    return KILN_OK;
}

static kiln_status where(kc_ctx *c, const kg_node *n, const kc_val *m, const kc_val *a,
                         const kc_val *b, kc_val *out)
{
    int in[3] = {m->id, a->id, b->id};
    return kc_emit1(c, n, KP_WHERE, 0, in, 3, a->dt, a->ndim, a->shape, NULL, 0, NULL, 0, out);
}

/* Runs direction d over x [T*B, I]; writes Y's [T, 1, B, H] part and the final states. */
static kiln_status run_dir(kc_ctx *c, const kg_node *n, const rnn_ctx *r, int d, bool reverse,
                           const kc_val *x, rnn_dir *dir, kc_val *y_out, kc_val *h_out,
                           kc_val *c_out)
{
    const int64_t H = r->H, T = r->T, B = r->B;
    const rnn_act *act = r->act[d];
    int64_t perm[2] = {1, 0};
    kc_val wt, rt, xbias, rb_h;
    bool has_rb_h = false;
    KC_TRY(transpose(c, n, &dir->w, perm, &wt));        /* [I, G*H] */
    KC_TRY(transpose(c, n, &dir->r, perm, &rt));        /* [H, G*H] */
    if (dir->has_b) {
        kc_val wb_rb[2];
        KC_TRY(split_last(c, n, &dir->b, 2, wb_rb));
        if (r->kind == RNN_GRU) {               /* R's h bias stays inside r * (...) or not */
            kc_val rb[2];
            int64_t sizes[2] = {2 * H, H};
            KC_TRY(split(c, n, &wb_rb[1], 0, 2, sizes, rb));
            rb_h = rb[1];
            has_rb_h = true;
            if (!r->lbr) {
                KC_TRY(kc_binary(c, n, KP_B_ADD, &wb_rb[0], &wb_rb[1], &xbias));
                has_rb_h = false;
            } else {
                kc_val wb[2], zr;
                KC_TRY(split(c, n, &wb_rb[0], 0, 2, sizes, wb));
                KC_TRY(kc_binary(c, n, KP_B_ADD, &wb[0], &rb[0], &zr));
                int ids[2] = {zr.id, wb[1].id};
                KC_TRY(concat(c, n, ids, 2, 0, &xbias));
            }
        } else {
            KC_TRY(kc_binary(c, n, KP_B_ADD, &wb_rb[0], &wb_rb[1], &xbias));
        }
    }
    kc_val xw;                                          /* [T*B, G*H] */
    KC_TRY(matmul(c, n, x, &wt, dir->has_b ? &xbias : NULL, &xw));

    /* the per-step slices of xw (and for GRU the z/r and h parts, and R's columns) */
    kc_val xw_parts[2], rt_parts[2];
    int nparts = 1;
    xw_parts[0] = xw;
    rt_parts[0] = rt;
    if (r->kind == RNN_GRU && !r->lbr) {
        int64_t sizes[2] = {2 * H, H};
        KC_TRY(split(c, n, &xw, 1, 2, sizes, xw_parts));
        KC_TRY(split(c, n, &rt, 1, 2, sizes, rt_parts));
        nparts = 2;
    }
    int *steps = kiln__calloc((size_t)(2 * T), sizeof *steps);
    int *ys = kiln__calloc((size_t)T, sizeof *ys);
    int *outs = kiln__calloc((size_t)T, sizeof *outs);
    kiln_status s = KILN_OK;
    if (!steps || !ys || !outs)
        s = kiln__fail(KILN_ERR_NOMEM, "out of memory");
    for (int p = 0; p < nparts && s == KILN_OK; p++) {
        kc_val v = xw_parts[p];
        int64_t shape[3] = {T, B, v.shape[1]};
        s = kc_reshape(c, n, &v, 3, shape, &v);
        if (s == KILN_OK && T == 1) {
            steps[p] = v.id;
            continue;
        }
        shape[0] = 1;
        for (int64_t t = 0; t < T && s == KILN_OK; t++)
            if ((outs[t] = kc_new_value(c, v.dt, 3, shape)) < 0)
                s = KILN_ERR_NOMEM;
        int64_t ia = 0;
        if (s == KILN_OK)
            s = kc_emit(c, n, KP_SPLIT, 0, &v.id, 1, outs, (int)T, &ia, 1, NULL, 0);
        for (int64_t t = 0; t < T && s == KILN_OK; t++)
            steps[t * 2 + p] = outs[t];
    }
    if (s != KILN_OK)
        goto done;

    kc_val hp = dir->h0, cp = dir->c0, p3[3];
    bool has_h = dir->has_h0, has_c = dir->has_c0;
    if (dir->has_p && (s = split_last(c, n, &dir->p, 3, p3)) != KILN_OK)
        goto done;
    for (int64_t st = 0; st < T; st++) {
        int64_t t = reverse ? T - 1 - st : st;
        kc_val xt[2], hn, cn;
        for (int p = 0; p < nparts; p++) {
            kc_snap(c, steps[t * 2 + p], &xt[p]);
            int64_t shape[2] = {B, xt[p].shape[2]};
            if ((s = kc_reshape(c, n, &xt[p], 2, shape, &xt[p])) != KILN_OK)
                goto done;
        }
#define S(e) do { if ((s = (e)) != KILN_OK) goto done; } while (0)
        if (r->kind == RNN_PLAIN) {
            kc_val g = xt[0];
            if (has_h)
                S(matmul(c, n, &hp, &rt, &xt[0], &g));
            S(gate(c, n, r, &act[0], &g, &hn));
        } else if (r->kind == RNN_LSTM) {
            kc_val g = xt[0], q[4], it, ot, ft, ct, t1;
            if (has_h)
                S(matmul(c, n, &hp, &rt, &xt[0], &g));
            S(split_last(c, n, &g, 4, q));              /* i, o, f, c */
            if (dir->has_p && has_c) {
                S(kc_binary(c, n, KP_B_MUL, &p3[0], &cp, &t1));
                S(kc_binary(c, n, KP_B_ADD, &q[0], &t1, &q[0]));
                S(kc_binary(c, n, KP_B_MUL, &p3[2], &cp, &t1));
                S(kc_binary(c, n, KP_B_ADD, &q[2], &t1, &q[2]));
            }
            S(gate(c, n, r, &act[0], &q[0], &it));
            if (r->input_forget)
                S(kc_unary(c, n, KP_U_LINEAR, &it, -1.0f, 1.0f, &ft));
            else
                S(gate(c, n, r, &act[0], &q[2], &ft));
            S(gate(c, n, r, &act[1], &q[3], &ct));
            S(kc_binary(c, n, KP_B_MUL, &it, &ct, &cn));
            if (has_c) {
                S(kc_binary(c, n, KP_B_MUL, &ft, &cp, &t1));
                S(kc_binary(c, n, KP_B_ADD, &cn, &t1, &cn));
            }
            if (dir->has_p) {
                S(kc_binary(c, n, KP_B_MUL, &p3[1], &cn, &t1));
                S(kc_binary(c, n, KP_B_ADD, &q[1], &t1, &q[1]));
            }
            S(gate(c, n, r, &act[0], &q[1], &ot));
            S(apply_act(c, n, &act[2], &cn, &t1));
            S(kc_binary(c, n, KP_B_MUL, &ot, &t1, &hn));
        } else {                                        /* GRU: z, r, h */
            kc_val zr = xt[0], q[3], zt, rt_, hh, t1;
            if (r->lbr) {
                kc_val rh;
                if (has_h)
                    S(matmul(c, n, &hp, &rt, NULL, &zr));
                S(split_last(c, n, has_h ? &zr : &xt[0], 3, q));
                if (has_h) {                            /* x parts + h parts */
                    kc_val xq[3];
                    S(split_last(c, n, &xt[0], 3, xq));
                    S(kc_binary(c, n, KP_B_ADD, &xq[0], &q[0], &q[0]));
                    S(kc_binary(c, n, KP_B_ADD, &xq[1], &q[1], &q[1]));
                    rh = q[2];
                    if (has_rb_h)
                        S(kc_binary(c, n, KP_B_ADD, &rh, &rb_h, &rh));
                    q[2] = xq[2];
                }
                S(gate(c, n, r, &act[0], &q[0], &zt));
                S(gate(c, n, r, &act[0], &q[1], &rt_));
                if (has_h) {
                    S(kc_binary(c, n, KP_B_MUL, &rt_, &rh, &t1));
                    S(kc_binary(c, n, KP_B_ADD, &q[2], &t1, &t1));
                } else if (has_rb_h) {
                    S(kc_binary(c, n, KP_B_MUL, &rt_, &rb_h, &t1));
                    S(kc_binary(c, n, KP_B_ADD, &q[2], &t1, &t1));
                } else {
                    t1 = q[2];
                }
                S(gate(c, n, r, &act[1], &t1, &hh));
            } else {
                if (has_h)
                    S(matmul(c, n, &hp, &rt_parts[0], &xt[0], &zr));
                S(split_last(c, n, &zr, 2, q));
                S(gate(c, n, r, &act[0], &q[0], &zt));
                S(gate(c, n, r, &act[0], &q[1], &rt_));
                t1 = xt[1];
                if (has_h) {
                    kc_val rhp;
                    S(kc_binary(c, n, KP_B_MUL, &rt_, &hp, &rhp));
                    S(matmul(c, n, &rhp, &rt_parts[1], &xt[1], &t1));
                }
                S(gate(c, n, r, &act[1], &t1, &hh));
            }
            /* h = (1 - z) * hh + z * h_prev = hh + z * (h_prev - hh) */
            if (has_h)
                S(kc_binary(c, n, KP_B_SUB, &hp, &hh, &t1));
            else
                S(kc_unary(c, n, KP_U_NEG, &hh, 0, 0, &t1));
            S(kc_binary(c, n, KP_B_MUL, &zt, &t1, &t1));
            S(kc_binary(c, n, KP_B_ADD, &hh, &t1, &hn));
        }
        kc_val yt = hn, m;
        bool use_mask;
        S(step_mask(c, n, r, t, &use_mask, &m));
        if (use_mask) {
            kc_val zero;
            static const double z64 = 0;
            static const float z32 = 0;
            const void *zp = hn.dt == KILN_F64 ? (const void *)&z64 : (const void *)&z32;
            S(kc_const(c, hn.dt, 0, NULL, zp, &zero));
            S(where(c, n, &m, &hn, &zero, &yt));
            S(where(c, n, &m, &hn, has_h ? &hp : &zero, &hn));
            if (r->kind == RNN_LSTM)
                S(where(c, n, &m, &cn, has_c ? &cp : &zero, &cn));
        }
        int64_t s3[3] = {1, B, H};
        S(kc_reshape(c, n, &yt, 3, s3, &yt));
        ys[t] = yt.id;
        hp = hn;
        has_h = true;
        if (r->kind == RNN_LSTM) {
            cp = cn;
            has_c = true;
        }
    }
    kc_val y;
    S(concat(c, n, ys, (int)T, 0, &y));
    int64_t s4[4] = {T, 1, B, H}, s3[3] = {1, B, H};
    S(kc_reshape(c, n, &y, 4, s4, y_out));
    S(kc_reshape(c, n, &hp, 3, s3, h_out));
    if (r->kind == RNN_LSTM)
        S(kc_reshape(c, n, &cp, 3, s3, c_out));
#undef S
done:
    kiln__free(steps);
    kiln__free(ys);
    kiln__free(outs);
    return s;
}

/* ---- the op ---- */

static kiln_status lower_rnn(kc_ctx *c, const kg_node *n, int kind)
{
    rnn_ctx *r = kiln__calloc(1, sizeof *r);
    if (!r)
        return kiln__fail(KILN_ERR_NOMEM, "out of memory");
    kiln_status s = KILN_OK;
#define S(e) do { if ((s = (e)) != KILN_OK) goto done; } while (0)
    r->kind = kind;
    r->gates = kind == RNN_PLAIN ? 1 : kind == RNN_GRU ? 3 : 4;
    kc_val x, w, rr, b, h0, c0, p;
    S(kc_arg(c, n, 0, &x));
    S(kc_arg(c, n, 1, &w));
    S(kc_arg(c, n, 2, &rr));
    S(kc_check_rank(c, n, &x, "X", 3, 3));
    S(kc_check_rank(c, n, &w, "W", 3, 3));
    S(kc_check_rank(c, n, &rr, "R", 3, 3));
    S(kc_same_dtype(c, n, &x, &w));
    S(kc_same_dtype(c, n, &x, &rr));
    if (!kc_is_float(x.dt)) {
        s = kc_fail(c, n, KILN_ERR_UNSUPPORTED, "%s input", kiln_dtype_name(x.dt));
        goto done;
    }
    const char *dir = kg_attr_string(n, "direction", "forward");
    bool bidi = !strcmp(dir, "bidirectional"), reverse = !strcmp(dir, "reverse");
    if (!bidi && !reverse && strcmp(dir, "forward")) {
        s = kc_fail(c, n, KILN_ERR_FORMAT, "direction '%s'", dir);
        goto done;
    }
    r->dirs = bidi ? 2 : 1;
    int64_t layout = kg_attr_int(n, "layout", 0);
    if (layout != 0 && layout != 1) {
        s = kc_fail(c, n, KILN_ERR_FORMAT, "layout %lld", (long long)layout);
        goto done;
    }
    r->lbr = kg_attr_int(n, "linear_before_reset", 0) != 0;
    r->input_forget = kg_attr_int(n, "input_forget", 0) != 0;
    const kg_attr *clip = kg_attr_find(n, "clip");
    if (clip) {
        r->has_clip = true;
        r->clip = (float)kc_attr_num(n, "clip", 0);
    }
    if (layout) {                                       /* [B, T, I] -> [T, B, I] */
        int64_t perm[3] = {1, 0, 2};
        S(transpose(c, n, &x, perm, &x));
    }
    r->T = x.shape[0];
    r->B = x.shape[1];
    r->H = rr.shape[2];
    int64_t G = r->gates, H = r->H, I = x.shape[2];
    int64_t hs = kg_attr_int(n, "hidden_size", H);
    if (hs != H || w.shape[0] != r->dirs || rr.shape[0] != r->dirs || w.shape[1] != G * H ||
        rr.shape[1] != G * H || w.shape[2] != I) {
        s = kc_fail(c, n, KILN_ERR_SHAPE, "W [%lld, %lld, %lld] and R [%lld, %lld, %lld] do not "
                    "fit %d direction(s), hidden size %lld and input size %lld",
                    (long long)w.shape[0], (long long)w.shape[1], (long long)w.shape[2],
                    (long long)rr.shape[0], (long long)rr.shape[1], (long long)rr.shape[2],
                    r->dirs, (long long)hs, (long long)I);
        goto done;
    }
    if (r->T < 1 || r->T > RNN_MAX_T || r->B < 1) {
        s = kc_fail(c, n, KILN_ERR_UNSUPPORTED, "%lld time steps and batch %lld (1..%d steps are "
                    "unrolled)", (long long)r->T, (long long)r->B, RNN_MAX_T);
        goto done;
    }
    S(parse_acts(c, n, r));
    bool has_b = kc_opt_arg(c, n, 3, &b), has_seq = kc_opt_arg(c, n, 4, &r->seq);
    bool has_h0 = kc_opt_arg(c, n, 5, &h0);
    bool has_c0 = kind == RNN_LSTM && kc_opt_arg(c, n, 6, &c0);
    bool has_p = kind == RNN_LSTM && kc_opt_arg(c, n, 7, &p);
    int64_t want_b[2] = {r->dirs, 2 * G * H}, want_p[2] = {r->dirs, 3 * H};
    int64_t want_h[3] = {r->dirs, r->B, H}, want_hl[3] = {r->B, r->dirs, H};
    if ((has_b && !kc_same_shape(b.ndim, b.shape, 2, want_b)) ||
        (has_p && !kc_same_shape(p.ndim, p.shape, 2, want_p)) ||
        (has_h0 && !kc_same_shape(h0.ndim, h0.shape, 3, layout ? want_hl : want_h)) ||
        (has_c0 && !kc_same_shape(c0.ndim, c0.shape, 3, layout ? want_hl : want_h))) {
        s = kc_fail(c, n, KILN_ERR_SHAPE, "B, initial_h, initial_c or P has the wrong shape");
        goto done;
    }
    if ((has_b && b.dt != x.dt) || (has_p && p.dt != x.dt) || (has_h0 && h0.dt != x.dt) ||
        (has_c0 && c0.dt != x.dt)) {
        s = kc_fail(c, n, KILN_ERR_SHAPE, "inputs have different dtypes");
        goto done;
    }
    if (layout) {
        int64_t perm[3] = {1, 0, 2};
        if (has_h0)
            S(transpose(c, n, &h0, perm, &h0));
        if (has_c0)
            S(transpose(c, n, &c0, perm, &c0));
    }
    if (has_seq) {
        if (r->seq.ndim != 1 || r->seq.shape[0] != r->B ||
            (r->seq.dt != KILN_I32 && r->seq.dt != KILN_I64)) {
            s = kc_fail(c, n, KILN_ERR_SHAPE, "sequence_lens must be an integer tensor of %lld",
                        (long long)r->B);
            goto done;
        }
        r->masked = true;
        if (kc_is_const(c, r->seq.id) && r->B <= 4096) {
            int cnt = 0;
            S(kc_const_ints(c, n, r->seq.id, r->seq_vals, 4096, &cnt));
            bool all = true;
            for (int64_t i = 0; i < r->B; i++) {
                if (r->seq_vals[i] < 0 || r->seq_vals[i] > r->T) {
                    s = kc_fail(c, n, KILN_ERR_SHAPE, "sequence_lens[%lld] = %lld is not in "
                                "0..%lld", (long long)i, (long long)r->seq_vals[i],
                                (long long)r->T);
                    goto done;
                }
                all &= r->seq_vals[i] == r->T;
            }
            r->seq_const = r->seq_vals;
            r->masked = !all;
        }
    }
    int64_t flat[2] = {r->T * r->B, I};
    S(kc_reshape(c, n, &x, 2, flat, &x));
    int y_ids[2], h_ids[2], c_ids[2];
    for (int d = 0; d < r->dirs; d++) {
        rnn_dir dd;
        memset(&dd, 0, sizeof dd);
        S(pick(c, n, &w, d, &dd.w));
        S(pick(c, n, &rr, d, &dd.r));
        if ((dd.has_b = has_b))
            S(pick(c, n, &b, d, &dd.b));
        if ((dd.has_h0 = has_h0))
            S(pick(c, n, &h0, d, &dd.h0));
        if ((dd.has_c0 = has_c0))
            S(pick(c, n, &c0, d, &dd.c0));
        if ((dd.has_p = has_p))
            S(pick(c, n, &p, d, &dd.p));
        kc_val yd, hd, cd;
        S(run_dir(c, n, r, d, reverse || d == 1, &x, &dd, &yd, &hd, &cd));
        y_ids[d] = yd.id;
        h_ids[d] = hd.id;
        c_ids[d] = kind == RNN_LSTM ? cd.id : -1;
    }
    kc_val y, yh, yc;
    if (kc_output_wanted(c, n, 0)) {
        S(concat(c, n, y_ids, r->dirs, 1, &y));         /* [T, D, B, H] */
        if (layout) {
            int64_t perm[4] = {2, 0, 1, 3};
            S(transpose(c, n, &y, perm, &y));
        }
        S(kc_out(c, n, 0, &y));
    }
    for (int k = 1; k <= (kind == RNN_LSTM ? 2 : 1); k++) {
        if (!kc_output_wanted(c, n, k))
            continue;
        kc_val *v = k == 1 ? &yh : &yc;
        S(concat(c, n, k == 1 ? h_ids : c_ids, r->dirs, 0, v));     /* [D, B, H] */
        if (layout) {
            int64_t perm[3] = {1, 0, 2};
            S(transpose(c, n, v, perm, v));
        }
        S(kc_out(c, n, k, v));
    }
#undef S
done:
    kiln__free(r);
    return s;
}

kiln_status kc_lower_rnn(kc_ctx *c, const kg_node *n)
{
    int kind = !strcmp(n->op_type, "LSTM") ? RNN_LSTM : !strcmp(n->op_type, "GRU") ? RNN_GRU
                                                                                  : RNN_PLAIN;
    return lower_rnn(c, n, kind);
}
