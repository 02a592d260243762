/*
 * lower_nn.c — lowerings of the neural-network ops: Conv and ConvTranspose (auto_pad and
 * output_shape resolved into explicit pads), Gemm and MatMul, the pools, the
 * normalisations (Batch, Layer, Instance, Group) and Softmax/LogSoftmax.
 */
#include "compiler/lower_impl.h"

#include <string.h>

#define MAX_SP (KILN_MAX_DIMS - 2)

enum { PAD_NOTSET, PAD_VALID, PAD_SAME_UPPER, PAD_SAME_LOWER };

static kiln_status auto_pad(const kc_ctx *c, const kg_node *n, int *out)
{
    const char *s = kg_attr_string(n, "auto_pad", "NOTSET");
    if (!strcmp(s, "NOTSET") || !*s)
        *out = PAD_NOTSET;
    else if (!strcmp(s, "VALID"))
        *out = PAD_VALID;
    else if (!strcmp(s, "SAME_UPPER"))
        *out = PAD_SAME_UPPER;
    else if (!strcmp(s, "SAME_LOWER"))
        *out = PAD_SAME_LOWER;
    else
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "auto_pad '%s'", s);
    return KILN_OK;
}

/* An INTS attribute of nsp values (or `mult` * nsp for pads), each >= lo; dflt if absent. */
static kiln_status sp_ints(const kc_ctx *c, const kg_node *n, const char *name, int cnt,
                           int64_t dflt, int64_t lo, int64_t *out)
{
    size_t k;
    const int64_t *a = kg_attr_ints(n, name, &k);
    for (int i = 0; i < cnt; i++)
        out[i] = dflt;
    if (!a)
        return KILN_OK;
    if ((int)k != cnt)
        return kc_fail(c, n, KILN_ERR_SHAPE, "%s has %zu values, expected %d", name, k, cnt);
    for (int i = 0; i < cnt; i++) {
        if (a[i] < lo)
            return kc_fail(c, n, a[i] < 0 ? KILN_ERR_UNSUPPORTED : KILN_ERR_SHAPE,
                           "%s[%d] = %lld", name, i, (long long)a[i]);
        out[i] = a[i];
    }
    return KILN_OK;
}

/* The spatial geometry Conv and the pools share. */
typedef struct geom {
    int     nsp;
    int64_t k[MAX_SP], s[MAX_SP], d[MAX_SP], pb[MAX_SP], pe[MAX_SP], out[MAX_SP];
} geom;

/* kernel_shape (checked against wk, the weight's kernel, when given), strides, dilations,
 * pads and auto_pad of a node over X (N x C x spatial); auto_pad resolved into explicit
 * pads and the output extent computed (with ceil_mode for the pools: the last window must
 * start inside the input or its left padding). */
static kiln_status geometry(const kc_ctx *c, const kg_node *n, const kc_val *x,
                            const int64_t *wk, bool ceil_mode, geom *g)
{
    int nsp = x->ndim - 2, ap;
    int64_t pads[2 * MAX_SP];
    size_t kn;
    const int64_t *ks = kg_attr_ints(n, "kernel_shape", &kn);
    g->nsp = nsp;
    if (ks) {
        if ((int)kn != nsp)
            return kc_fail(c, n, KILN_ERR_SHAPE, "kernel_shape has %zu values for %d spatial dims",
                           kn, nsp);
        for (int i = 0; i < nsp; i++)
            if (wk && ks[i] != wk[i])
                return kc_fail(c, n, KILN_ERR_SHAPE, "kernel_shape disagrees with W");
    } else if (!wk) {
        return kc_fail(c, n, KILN_ERR_FORMAT, "missing attribute 'kernel_shape'");
    }
    KC_TRY(sp_ints(c, n, "strides", nsp, 1, 1, g->s));
    KC_TRY(sp_ints(c, n, "dilations", nsp, 1, 1, g->d));
    KC_TRY(sp_ints(c, n, "pads", 2 * nsp, 0, 0, pads));
    KC_TRY(auto_pad(c, n, &ap));
    for (int i = 0; i < nsp; i++) {
        int64_t in = x->shape[2 + i], k = ks ? ks[i] : wk[i];
        if (k < 1)
            return kc_fail(c, n, KILN_ERR_SHAPE, "kernel extent %lld", (long long)k);
        int64_t s = g->s[i], ek = (k - 1) * g->d[i] + 1, out;
        g->k[i] = k;
        if (ap == PAD_SAME_UPPER || ap == PAD_SAME_LOWER) {
            out = (in + s - 1) / s;
            int64_t total = (out - 1) * s + ek - in;
            if (total < 0)
                total = 0;
            g->pb[i] = ap == PAD_SAME_UPPER ? total / 2 : total - total / 2;
            g->pe[i] = total - g->pb[i];
        } else {
            g->pb[i] = ap == PAD_VALID ? 0 : pads[i];
            g->pe[i] = ap == PAD_VALID ? 0 : pads[nsp + i];
            int64_t span = in + g->pb[i] + g->pe[i] - ek;
            if (span < 0)
                return kc_fail(c, n, KILN_ERR_SHAPE,
                               "kernel extent %lld exceeds padded input %lld on spatial axis %d",
                               (long long)ek, (long long)(in + g->pb[i] + g->pe[i]), i);
            out = (ceil_mode ? (span + s - 1) / s : span / s) + 1;
            if (ceil_mode && (out - 1) * s >= in + g->pb[i])
                out--;
        }
        if (out < 1)
            return kc_fail(c, n, KILN_ERR_SHAPE, "empty output on spatial axis %d", i);
        g->out[i] = out;
    }
    return KILN_OK;
}

/* The geometry part of ia: a Conv's "group, nsp, strides, dilations, pads_begin, pads_end"
 * (group > 0) or a pool's "nsp, kernel, strides, ..." (group 0). Returns the count. */
static int geom_ia(const geom *g, int64_t group, int64_t *ia)
{
    int k = 0;
    if (group > 0)
        ia[k++] = group;
    ia[k++] = g->nsp;
    const int64_t *lists[5] = {g->k, g->s, g->d, g->pb, g->pe};
    for (int l = group > 0; l < 5; l++)
        for (int i = 0; i < g->nsp; i++)
            ia[k++] = lists[l][i];
    return k;
}

static kiln_status check_vec(const kc_ctx *c, const kg_node *n, const kc_val *t,
                             const char *what, int64_t len)
{
    if (t->ndim != 1 || t->shape[0] != len)
        return kc_fail(c, n, KILN_ERR_SHAPE, "%s must be 1-D of %lld", what, (long long)len);
    return KILN_OK;
}

kiln_status kc_lower_conv(kc_ctx *c, const kg_node *n)
{
    kc_val x, w, b;
    geom g;
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_arg(c, n, 1, &w));
    bool has_b = kc_opt_arg(c, n, 2, &b);
    KC_TRY(kc_check_rank(c, n, &x, "X", 3, KILN_MAX_DIMS));
    KC_TRY(kc_check_rank(c, n, &w, "W", x.ndim, x.ndim));
    KC_TRY(kc_same_dtype(c, n, &x, &w));
    int64_t group = kg_attr_int(n, "group", 1), C = x.shape[1], M = w.shape[0];
    if (group < 1 || M % group || w.shape[1] * group != C)
        return kc_fail(c, n, KILN_ERR_SHAPE, "X has %lld channels; W is %lld x %lld with group %lld",
                       (long long)C, (long long)M, (long long)w.shape[1], (long long)group);
    if (has_b)
        KC_TRY(check_vec(c, n, &b, "B", M));
    KC_TRY(geometry(c, n, &x, w.shape + 2, false, &g));
    int64_t ia[2 + 4 * MAX_SP + 1], shape[KILN_MAX_DIMS] = {x.shape[0], M};
    int k = geom_ia(&g, group, ia);
    ia[k++] = 0;                                    /* no post-ops */
    memcpy(shape + 2, g.out, g.nsp * sizeof *shape);
    int in[3] = {x.id, w.id, has_b ? b.id : -1};
    return kc_emit_out(c, n, KP_CONV, 0, in, 3, x.dt, x.ndim, shape, ia, k, NULL, 0);
}

kiln_status kc_lower_conv_transpose(kc_ctx *c, const kg_node *n)
{
    kc_val x, w, b;
    int ap;
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_arg(c, n, 1, &w));
    bool has_b = kc_opt_arg(c, n, 2, &b);
    KC_TRY(kc_check_rank(c, n, &x, "X", 3, KILN_MAX_DIMS));
    KC_TRY(kc_check_rank(c, n, &w, "W", x.ndim, x.ndim));
    KC_TRY(kc_same_dtype(c, n, &x, &w));
    int nsp = x.ndim - 2;
    int64_t group = kg_attr_int(n, "group", 1), C = x.shape[1];
    if (group < 1 || w.shape[0] != C || C % group)
        return kc_fail(c, n, KILN_ERR_SHAPE, "X has %lld channels; W is %lld x %lld with group %lld",
                       (long long)C, (long long)w.shape[0], (long long)w.shape[1], (long long)group);
    int64_t M = w.shape[1] * group;
    if (has_b)
        KC_TRY(check_vec(c, n, &b, "B", M));

    int64_t s[MAX_SP], d[MAX_SP], op[MAX_SP], pads[2 * MAX_SP], k[MAX_SP], os[KILN_MAX_DIMS];
    size_t kn, osn;
    const int64_t *ks = kg_attr_ints(n, "kernel_shape", &kn);
    if (ks && ((int)kn != nsp || memcmp(ks, w.shape + 2, kn * sizeof *ks)))
        return kc_fail(c, n, KILN_ERR_SHAPE, "kernel_shape disagrees with W");
    memcpy(k, w.shape + 2, nsp * sizeof *k);
    KC_TRY(sp_ints(c, n, "strides", nsp, 1, 1, s));
    KC_TRY(sp_ints(c, n, "dilations", nsp, 1, 1, d));
    KC_TRY(sp_ints(c, n, "output_padding", nsp, 0, 0, op));
    KC_TRY(sp_ints(c, n, "pads", 2 * nsp, 0, 0, pads));
    KC_TRY(auto_pad(c, n, &ap));
    const int64_t *osa = kg_attr_ints(n, "output_shape", &osn);
    if (osa) {
        if ((int)osn != nsp && (int)osn != nsp + 2)
            return kc_fail(c, n, KILN_ERR_SHAPE, "output_shape has %zu values", osn);
        memcpy(os, osa + (osn - nsp), nsp * sizeof *os);
    }

    int64_t ia[2 + 5 * MAX_SP + 1], shape[KILN_MAX_DIMS] = {x.shape[0], M};
    int64_t *pb = pads, *pe = pads + nsp;
    for (int i = 0; i < nsp; i++) {
        int64_t full = s[i] * (x.shape[2 + i] - 1) + op[i] + (k[i] - 1) * d[i] + 1;
        if (osa || ap == PAD_SAME_UPPER || ap == PAD_SAME_LOWER) {
            int64_t want = osa ? os[i] : x.shape[2 + i] * s[i];
            int64_t total = full - want;
            if (total >= 0) {
                pb[i] = ap == PAD_SAME_UPPER ? total / 2 : total - total / 2;
                pe[i] = total - pb[i];
            } else {                     /* grows past the full output: more output padding */
                pb[i] = pe[i] = 0;
                op[i] -= total;
            }
        } else if (ap == PAD_VALID) {
            pb[i] = pe[i] = 0;
        }
        shape[2 + i] = s[i] * (x.shape[2 + i] - 1) + op[i] + (k[i] - 1) * d[i] + 1 - pb[i] - pe[i];
        if (shape[2 + i] < 1)
            return kc_fail(c, n, KILN_ERR_SHAPE, "empty output on spatial axis %d", i);
    }
    int j = 0;
    ia[j++] = group;
    ia[j++] = nsp;
    const int64_t *lists[5] = {s, d, pb, pe, op};
    for (int l = 0; l < 5; l++)
        for (int i = 0; i < nsp; i++)
            ia[j++] = lists[l][i];
    ia[j++] = 0;                                    /* no post-ops */
    int in[3] = {x.id, w.id, has_b ? b.id : -1};
    return kc_emit_out(c, n, KP_CONV_TRANSPOSE, 0, in, 3, x.dt, x.ndim, shape, ia, j, NULL, 0);
}

/* ---- Gemm, MatMul ---- */

/* x (2-D) transposed: a new constant when x is constant, else a KP_TRANSPOSE. */
static kiln_status transpose2d(kc_ctx *c, const kg_node *n, kc_val *x)
{
    int64_t shape[2] = {x->shape[1], x->shape[0]};
    const uint8_t *src = kc_const_data(c, x->id);
    if (src) {
        size_t es = kiln_dtype_size(x->dt), r = (size_t)x->shape[0], cols = (size_t)x->shape[1];
        uint8_t *dst = kiln__malloc(r * cols * es + 1);
        if (!dst)
            return kiln__fail(KILN_ERR_NOMEM, "out of memory transposing %lldx%lld",
                              (long long)r, (long long)cols);
        enum { T = 32 };                            /* tiles keep both sides in cache */
        for (size_t i0 = 0; i0 < r; i0 += T)
            for (size_t j0 = 0; j0 < cols; j0 += T)
                for (size_t i = i0; i < i0 + T && i < r; i++)
                    for (size_t j = j0; j < j0 + T && j < cols; j++)
                        memcpy(dst + (j * r + i) * es, src + (i * cols + j) * es, es);
        kiln_status s = kc_const(c, x->dt, 2, shape, dst, x);
        kiln__free(dst);
        return s;
    }
    int64_t perm[2] = {1, 0};
    return kc_emit1(c, n, KP_TRANSPOSE, 0, &x->id, 1, x->dt, 2, shape, perm, 2, NULL, 0, x);
}

kiln_status kc_lower_gemm(kc_ctx *c, const kg_node *n)
{
    kc_val a, b, bias, y;
    KC_TRY(kc_arg(c, n, 0, &a));
    KC_TRY(kc_arg(c, n, 1, &b));
    bool has_c = kc_opt_arg(c, n, 2, &bias);
    KC_TRY(kc_check_rank(c, n, &a, "A", 2, 2));
    KC_TRY(kc_check_rank(c, n, &b, "B", 2, 2));
    KC_TRY(kc_same_dtype(c, n, &a, &b));
    float alpha = kg_attr_float(n, "alpha", 1.0f), beta = kg_attr_float(n, "beta", 1.0f);
    if (kg_attr_int(n, "transA", 0))
        KC_TRY(transpose2d(c, n, &a));
    if (kg_attr_int(n, "transB", 0))
        KC_TRY(transpose2d(c, n, &b));
    if (a.shape[1] != b.shape[0])
        return kc_fail(c, n, KILN_ERR_SHAPE, "A is %lldx%lld but B is %lldx%lld",
                       (long long)a.shape[0], (long long)a.shape[1], (long long)b.shape[0],
                       (long long)b.shape[1]);
    int64_t shape[2] = {a.shape[0], b.shape[1]};
    if (alpha != 1.0f) {             /* folded into a constant operand when there is one */
        if (kc_is_const(c, b.id) || !kc_is_const(c, a.id))
            KC_TRY(kc_unary(c, n, KP_U_LINEAR, &b, alpha, 0, &b));
        else
            KC_TRY(kc_unary(c, n, KP_U_LINEAR, &a, alpha, 0, &a));
    }
    if (has_c && beta != 0.0f) {
        int nd;
        int64_t bs[KILN_MAX_DIMS];
        KC_TRY(kc_same_dtype(c, n, &a, &bias));
        KC_TRY(kc_broadcast(c, n, bias.ndim, bias.shape, 2, shape, &nd, bs));
        if (!kc_same_shape(nd, bs, 2, shape))
            return kc_fail(c, n, KILN_ERR_SHAPE, "C does not broadcast to %lldx%lld",
                           (long long)shape[0], (long long)shape[1]);
        if (beta != 1.0f)
            KC_TRY(kc_unary(c, n, KP_U_LINEAR, &bias, beta, 0, &bias));
    } else {
        has_c = false;
    }
    int in[3] = {a.id, b.id, has_c ? bias.id : -1};
    int64_t npost = 0;
    KC_TRY(kc_emit1(c, n, KP_MATMUL, 0, in, 3, a.dt, 2, shape, &npost, 1, NULL, 0, &y));
    return kc_out(c, n, 0, &y);
}

kiln_status kc_lower_matmul(kc_ctx *c, const kg_node *n)
{
    kc_val a, b, y;
    KC_TRY(kc_arg(c, n, 0, &a));
    KC_TRY(kc_arg(c, n, 1, &b));
    KC_TRY(kc_check_rank(c, n, &a, "A", 1, KILN_MAX_DIMS));
    KC_TRY(kc_check_rank(c, n, &b, "B", 1, KILN_MAX_DIMS));
    KC_TRY(kc_same_dtype(c, n, &a, &b));
    /* 1-D operands per numpy: A [K] -> [1, K], B [K] -> [K, 1], that dim dropped after;
     * batch dims broadcast (the kernel takes operands of different ranks) */
    bool vec_a = a.ndim == 1, vec_b = b.ndim == 1;
    int64_t sa[KILN_MAX_DIMS], sb[KILN_MAX_DIMS], shape[KILN_MAX_DIMS];
    int ra = vec_a ? 2 : a.ndim, rb = vec_b ? 2 : b.ndim, r;
    if (vec_a) {
        sa[0] = 1;
        sa[1] = a.shape[0];
    } else {
        memcpy(sa, a.shape, ra * sizeof *sa);
    }
    if (vec_b) {
        sb[0] = b.shape[0];
        sb[1] = 1;
    } else {
        memcpy(sb, b.shape, rb * sizeof *sb);
    }
    if (sa[ra - 1] != sb[rb - 2])
        return kc_fail(c, n, KILN_ERR_SHAPE, "inner dimensions differ (%lld and %lld)",
                       (long long)sa[ra - 1], (long long)sb[rb - 2]);
    KC_TRY(kc_broadcast(c, n, ra - 2, sa, rb - 2, sb, &r, shape));
    shape[r] = sa[ra - 2];
    shape[r + 1] = sb[rb - 1];
    r += 2;
    KC_TRY(kc_reshape(c, n, &a, ra, sa, &a));
    KC_TRY(kc_reshape(c, n, &b, rb, sb, &b));
    int in[3] = {a.id, b.id, -1};
    int64_t npost = 0;
    KC_TRY(kc_emit1(c, n, KP_MATMUL, 0, in, 3, a.dt, r, shape, &npost, 1, NULL, 0, &y));
    if (vec_a || vec_b) {
        int k = 0;
        int64_t ys[KILN_MAX_DIMS];
        for (int i = 0; i < r - 2; i++)
            ys[k++] = shape[i];
        if (!vec_a)
            ys[k++] = shape[r - 2];
        if (!vec_b)
            ys[k++] = shape[r - 1];
        KC_TRY(kc_reshape(c, n, &y, k, ys, &y));
    }
    return kc_out(c, n, 0, &y);
}

/* ---- pools ---- */

/* Row-major flat indices i = (nc * H + h) * W + w of an N x C x H x W tensor rewritten
 * column-major per image, nc * H * W + w * H + h (MaxPool's storage_order 1). */
static kiln_status column_major(kc_ctx *c, const kg_node *n, kc_val *idx, int64_t H, int64_t W)
{
    kc_val hw, w_, h_, nc, r, h, w;
    int64_t v[3] = {H * W, W, H};
    KC_TRY(kc_const(c, KILN_I64, 0, NULL, &v[0], &hw));
    KC_TRY(kc_const(c, KILN_I64, 0, NULL, &v[1], &w_));
    KC_TRY(kc_const(c, KILN_I64, 0, NULL, &v[2], &h_));
    KC_TRY(kc_binary(c, n, KP_B_DIV, idx, &hw, &nc));       /* n * C + c */
    KC_TRY(kc_binary(c, n, KP_B_MUL, &nc, &hw, &nc));       /* its first index */
    KC_TRY(kc_binary(c, n, KP_B_SUB, idx, &nc, &r));        /* h * W + w */
    KC_TRY(kc_binary(c, n, KP_B_DIV, &r, &w_, &h));
    KC_TRY(kc_binary(c, n, KP_B_MUL, &h, &w_, &w));
    KC_TRY(kc_binary(c, n, KP_B_SUB, &r, &w, &w));
    KC_TRY(kc_binary(c, n, KP_B_MUL, &w, &h_, &w));
    KC_TRY(kc_binary(c, n, KP_B_ADD, &nc, &w, idx));
    return kc_binary(c, n, KP_B_ADD, idx, &h, idx);
}

kiln_status kc_lower_pool(kc_ctx *c, const kg_node *n)
{
    bool is_max = !strcmp(n->op_type, "MaxPool");
    kc_val x;
    geom g;
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_check_rank(c, n, &x, "X", 3, KILN_MAX_DIMS));
    int64_t ceil_mode = kg_attr_int(n, "ceil_mode", 0);
    int64_t cip = is_max ? 0 : kg_attr_int(n, "count_include_pad", 0);
    bool want_idx = is_max && kc_output_wanted(c, n, 1);
    bool col_major = want_idx && kg_attr_int(n, "storage_order", 0) != 0;
    if (col_major && x.ndim != 4)
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "storage_order 1 on %d-D pooling", x.ndim - 2);
    KC_TRY(geometry(c, n, &x, NULL, ceil_mode != 0, &g));
    int64_t ia[1 + 5 * MAX_SP + 2], shape[KILN_MAX_DIMS] = {x.shape[0], x.shape[1]};
    int k = geom_ia(&g, 0, ia);          /* a pool's */
    ia[k++] = cip != 0;
    ia[k++] = ceil_mode != 0;
    memcpy(shape + 2, g.out, g.nsp * sizeof *shape);
    if (!want_idx)
        return kc_emit_out(c, n, KP_POOL, is_max ? KP_POOL_MAX : KP_POOL_AVG, &x.id, 1, x.dt,
                           x.ndim, shape, ia, k, NULL, 0);
    int out[2] = {kc_new_value(c, x.dt, x.ndim, shape), kc_new_value(c, KILN_I64, x.ndim, shape)};
    if (out[0] < 0 || out[1] < 0)
        return KILN_ERR_NOMEM;
    KC_TRY(kc_emit(c, n, KP_POOL, KP_POOL_MAX, &x.id, 1, out, 2, ia, k, NULL, 0));
    KC_TRY(kc_set_output(c, n, 0, out[0]));
    kc_val idx;
    kc_snap(c, out[1], &idx);
    if (col_major)
        KC_TRY(column_major(c, n, &idx, x.shape[2], x.shape[3]));
    return kc_out(c, n, 1, &idx);
}

kiln_status kc_lower_global_pool(kc_ctx *c, const kg_node *n)
{
    kc_val x;
    int64_t shape[KILN_MAX_DIMS];
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_check_rank(c, n, &x, "X", 3, KILN_MAX_DIMS));
    for (int i = 0; i < x.ndim; i++)
        shape[i] = i < 2 ? x.shape[i] : 1;
    int sub = !strcmp(n->op_type, "GlobalMaxPool") ? KP_POOL_MAX : KP_POOL_AVG;
    return kc_emit_out(c, n, KP_GLOBAL_POOL, sub, &x.id, 1, x.dt, x.ndim, shape, NULL, 0, NULL, 0);
}

/* ---- normalisations ---- */

kiln_status kc_lower_batchnorm(kc_ctx *c, const kg_node *n)
{
    kc_val x, p[4];
    static const char *names[4] = {"scale", "B", "mean", "var"};
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_check_rank(c, n, &x, "X", 2, KILN_MAX_DIMS));
    if (kg_attr_int(n, "training_mode", 0) != 0)
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "training_mode 1");
    if (kg_attr_int(n, "spatial", 1) == 0)
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "spatial 0 (per-activation statistics)");
    for (int i = 1; i < 5; i++)
        if (kc_output_wanted(c, n, i))
            return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "training outputs (running mean/var)");
    int in[5] = {x.id};
    for (int i = 0; i < 4; i++) {
        KC_TRY(kc_arg(c, n, i + 1, &p[i]));
        KC_TRY(check_vec(c, n, &p[i], names[i], x.shape[1]));
        in[i + 1] = p[i].id;
    }
    float eps = kg_attr_float(n, "epsilon", 1e-5f);
    return kc_emit_out(c, n, KP_BATCHNORM, 0, in, 5, x.dt, x.ndim, x.shape, NULL, 0, &eps, 1);
}

/* p brought to exactly `shape` (it must broadcast to it): a free reshape when the element
 * count matches, else an expand (folded when p is constant). */
static kiln_status fit_param(kc_ctx *c, const kg_node *n, kc_val *p, int nd, const int64_t *shape)
{
    int bn;
    int64_t bs[KILN_MAX_DIMS];
    KC_TRY(kc_broadcast(c, n, p->ndim, p->shape, nd, shape, &bn, bs));
    if (!kc_same_shape(bn, bs, nd, shape))
        return kc_fail(c, n, KILN_ERR_SHAPE, "scale/bias do not broadcast to the normalised shape");
    if (kc_numel(p) == kiln__numel(nd, shape))
        return kc_reshape(c, n, p, nd, shape, p);
    return kc_emit1(c, n, KP_EXPAND, 0, &p->id, 1, p->dt, nd, shape, NULL, 0, NULL, 0, p);
}

kiln_status kc_lower_layernorm(kc_ctx *c, const kg_node *n)
{
    kc_val x, scale, b;
    int axis;
    KC_TRY(kc_arg(c, n, 0, &x));
    if (!kc_opt_arg(c, n, 1, &scale)) {
        /* torch 1.13 exports LayerNorm(elementwise_affine=False) at opset 17 with Scale left
         * empty (which ONNX does not allow): it means a scale of one */
        static const float one32 = 1.0f;
        static const double one64 = 1.0;
        static const uint16_t one16 = 0x3C00, one_bf16 = 0x3F80;
        const void *one = NULL;
        switch (x.dt) {
        case KILN_F32:  one = &one32; break;
        case KILN_F64:  one = &one64; break;
        case KILN_F16:  one = &one16; break;
        case KILN_BF16: one = &one_bf16; break;
        default: break;
        }
        if (!one)
            return kc_fail(c, n, KILN_ERR_FORMAT, "required input 1 (Scale) is missing");
        KC_TRY(kc_const(c, x.dt, 0, NULL, one, &scale));
    }
    bool has_b = kc_opt_arg(c, n, 2, &b);
    KC_TRY(kc_check_rank(c, n, &x, "X", 1, KILN_MAX_DIMS));
    KC_TRY(kc_axis(c, n, kg_attr_int(n, "axis", -1), x.ndim, &axis));
    int nd = x.ndim - axis;
    KC_TRY(fit_param(c, n, &scale, nd, x.shape + axis));
    if (has_b)
        KC_TRY(fit_param(c, n, &b, nd, x.shape + axis));
    float eps = kg_attr_float(n, "epsilon", 1e-5f);
    int64_t ia = axis, stat[KILN_MAX_DIMS];
    for (int i = 0; i < x.ndim; i++)
        stat[i] = i < axis ? x.shape[i] : 1;
    int in[3] = {x.id, scale.id, has_b ? b.id : -1}, out[3] = {-1, -1, -1};
    out[0] = kc_new_value(c, x.dt, x.ndim, x.shape);
    if (out[0] < 0)
        return KILN_ERR_NOMEM;
    int n_out = 1;
    for (int i = 1; i < 3; i++)
        if (kc_output_wanted(c, n, i)) {
            if ((out[i] = kc_new_value(c, KILN_F32, x.ndim, stat)) < 0)
                return KILN_ERR_NOMEM;
            n_out = 3;
        }
    KC_TRY(kc_emit(c, n, KP_LAYERNORM, 0, in, 3, out, n_out, &ia, 1, &eps, 1));
    for (int i = 0; i < 3; i++)
        if (out[i] >= 0)
            KC_TRY(kc_set_output(c, n, i, out[i]));
    return KILN_OK;
}

static kiln_status groupnorm(kc_ctx *c, const kg_node *n, int64_t groups, kc_val *scale,
                             kc_val *b)
{
    kc_val x;
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_check_rank(c, n, &x, "X", 3, KILN_MAX_DIMS));
    int64_t C = x.shape[1];
    if (groups < 1 || C % groups)
        return kc_fail(c, n, KILN_ERR_SHAPE, "%lld channels in %lld groups", (long long)C,
                       (long long)groups);
    kc_val *p[2] = {scale, b};
    for (int i = 0; i < 2; i++) {
        if (kc_numel(p[i]) == groups && groups != C) {
            /* one value per group (GroupNormalization-18): repeat each C/groups times */
            int64_t col[2] = {groups, 1}, rep[2] = {groups, C / groups};
            KC_TRY(kc_reshape(c, n, p[i], 2, col, p[i]));
            KC_TRY(kc_emit1(c, n, KP_EXPAND, 0, &p[i]->id, 1, p[i]->dt, 2, rep, NULL, 0, NULL, 0,
                            p[i]));
        }
        if (kc_numel(p[i]) != C)
            return kc_fail(c, n, KILN_ERR_SHAPE, "scale/bias must have %lld elements", (long long)C);
        KC_TRY(kc_reshape(c, n, p[i], 1, &C, p[i]));
    }
    float eps = kg_attr_float(n, "epsilon", 1e-5f);
    int in[3] = {x.id, scale->id, b->id};
    return kc_emit_out(c, n, KP_GROUPNORM, 0, in, 3, x.dt, x.ndim, x.shape, &groups, 1, &eps, 1);
}

kiln_status kc_lower_instancenorm(kc_ctx *c, const kg_node *n)
{
    kc_val x, scale, b;
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_arg(c, n, 1, &scale));
    KC_TRY(kc_arg(c, n, 2, &b));
    KC_TRY(kc_check_rank(c, n, &x, "X", 3, KILN_MAX_DIMS));
    return groupnorm(c, n, x.shape[1], &scale, &b);
}

kiln_status kc_lower_groupnorm(kc_ctx *c, const kg_node *n)
{
    kc_val scale, b;
    KC_TRY(kc_arg(c, n, 1, &scale));
    KC_TRY(kc_arg(c, n, 2, &b));
    const kg_attr *g = kg_attr_find(n, "num_groups");
    if (!g || g->type != KG_ATTR_INT)
        return kc_fail(c, n, KILN_ERR_FORMAT, "missing attribute 'num_groups'");
    return groupnorm(c, n, g->i, &scale, &b);
}

kiln_status kc_lower_softmax(kc_ctx *c, const kg_node *n)
{
    kc_val x, t, y;
    int axis;
    bool old = kc_opset(c) < 13;
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_check_rank(c, n, &x, "input", 1, KILN_MAX_DIMS));
    KC_TRY(kc_axis(c, n, kg_attr_int(n, "axis", old ? 1 : -1), x.ndim, &axis));
    int sub = !strcmp(n->op_type, "LogSoftmax");
    if (!old || axis == x.ndim - 1) {
        int64_t ia = axis;
        return kc_emit_out(c, n, KP_SOFTMAX, sub, &x.id, 1, x.dt, x.ndim, x.shape, &ia, 1, NULL, 0);
    }
    /* before opset 13: the input is coerced to 2-D at axis and normalised over dim 1 */
    int64_t s2[2] = {kiln__numel(axis, x.shape), kiln__numel(x.ndim - axis, x.shape + axis)}, ia = 1;
    KC_TRY(kc_reshape(c, n, &x, 2, s2, &t));
    KC_TRY(kc_emit1(c, n, KP_SOFTMAX, sub, &t.id, 1, x.dt, 2, s2, &ia, 1, NULL, 0, &t));
    KC_TRY(kc_reshape(c, n, &t, x.ndim, x.shape, &y));
    return kc_out(c, n, 0, &y);
}
