/*
 * lower_tensor.c — lowerings of the data-movement and reduction ops: Gather, Transpose,
 * Slice, Concat, Split, Expand, Tile, Pad, the ReduceX family, ArgMax/ArgMin, CumSum,
 * DepthToSpace/SpaceToDepth, Resize/Upsample; and the ops kiln has no kernel for, built
 * from others: Trilu and OneHot (comparisons and Where), Einsum (reductions, transposes
 * and a batched MatMul), GatherElements/GatherND (a Gather at flat indices) and
 * ScatterND/ScatterElements (on constant indices). Every shape argument is resolved to
 * constants here.
 */
#include "compiler/lower_impl.h"

#include <math.h>
#include <string.h>

kiln_status kc_lower_gather(kc_ctx *c, const kg_node *n)
{
    kc_val x, idx;
    int axis;
    int64_t shape[2 * KILN_MAX_DIMS];
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_arg(c, n, 1, &idx));
    KC_TRY(kc_check_rank(c, n, &x, "data", 1, KILN_MAX_DIMS));
    if (idx.dt != KILN_I32 && idx.dt != KILN_I64)
        return kc_fail(c, n, KILN_ERR_SHAPE, "indices must be i32 or i64, got %s",
                       kiln_dtype_name(idx.dt));
    KC_TRY(kc_axis(c, n, kg_attr_int(n, "axis", 0), x.ndim, &axis));
    int r = 0;
    for (int i = 0; i < axis; i++)
        shape[r++] = x.shape[i];
    for (int i = 0; i < idx.ndim; i++)
        shape[r++] = idx.shape[i];
    for (int i = axis + 1; i < x.ndim; i++)
        shape[r++] = x.shape[i];
    int64_t ia = axis;
    int in[2] = {x.id, idx.id};
    return kc_emit_out(c, n, KP_GATHER, 0, in, 2, x.dt, r, shape, &ia, 1, NULL, 0);
}

/* x permuted (Y.shape[i] = X.shape[perm[i]]); a free reshape when only extent-1 dims move. */
static kiln_status transpose(kc_ctx *c, const kg_node *n, const kc_val *x, const int64_t *perm,
                             kc_val *out)
{
    int64_t shape[KILN_MAX_DIMS];
    int last = -1;
    bool order_kept = true;
    for (int i = 0; i < x->ndim; i++) {
        shape[i] = x->shape[perm[i]];
        if (shape[i] == 1)
            continue;
        order_kept &= perm[i] > last;
        last = (int)perm[i];
    }
    if (order_kept)
        return kc_reshape(c, n, x, x->ndim, shape, out);
    return kc_emit1(c, n, KP_TRANSPOSE, 0, &x->id, 1, x->dt, x->ndim, shape, perm, x->ndim, NULL,
                    0, out);
}

kiln_status kc_lower_transpose(kc_ctx *c, const kg_node *n)
{
    kc_val x, y;
    int64_t perm[KILN_MAX_DIMS];
    size_t cnt;
    bool seen[KILN_MAX_DIMS] = {false};
    KC_TRY(kc_arg(c, n, 0, &x));
    const int64_t *p = kg_attr_ints(n, "perm", &cnt);
    if (p && (int)cnt != x.ndim)
        return kc_fail(c, n, KILN_ERR_SHAPE, "perm has %zu values for rank %d", cnt, x.ndim);
    for (int i = 0; i < x.ndim; i++) {
        perm[i] = p ? p[i] : x.ndim - 1 - i;
        if (perm[i] < 0 || perm[i] >= x.ndim || seen[perm[i]])
            return kc_fail(c, n, KILN_ERR_SHAPE, "perm is not a permutation");
        seen[perm[i]] = true;
    }
    KC_TRY(transpose(c, n, &x, perm, &y));
    return kc_out(c, n, 0, &y);
}

kiln_status kc_lower_slice(kc_ctx *c, const kg_node *n)
{
    kc_val x, y;
    int64_t st[KILN_MAX_DIMS], en[KILN_MAX_DIMS], ax[KILN_MAX_DIMS], sp[KILN_MAX_DIMS];
    int ns, ne, na, nsp;
    bool p_st, p_en, p_ax, p_sp, seen[KILN_MAX_DIMS] = {false};
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_ints_arg(c, n, "starts", 1, st, KILN_MAX_DIMS, &ns, &p_st));
    KC_TRY(kc_ints_arg(c, n, "ends", 2, en, KILN_MAX_DIMS, &ne, &p_en));
    KC_TRY(kc_ints_arg(c, n, "axes", 3, ax, KILN_MAX_DIMS, &na, &p_ax));
    KC_TRY(kc_ints_arg(c, n, NULL, 4, sp, KILN_MAX_DIMS, &nsp, &p_sp));
    if (!p_st || !p_en || ns != ne || (p_ax && na != ns) || (p_sp && nsp != ns))
        return kc_fail(c, n, KILN_ERR_SHAPE, "starts, ends, axes and steps disagree in length");
    int64_t ia[2 * KILN_MAX_DIMS], *starts = ia, *steps = ia + x.ndim, shape[KILN_MAX_DIMS];
    for (int d = 0; d < x.ndim; d++) {
        starts[d] = 0;
        steps[d] = 1;
        shape[d] = x.shape[d];
    }
    for (int i = 0; i < ns; i++) {
        int d;
        KC_TRY(kc_axis(c, n, p_ax ? ax[i] : i, x.ndim, &d));
        if (seen[d])
            return kc_fail(c, n, KILN_ERR_SHAPE, "axis %d sliced twice", d);
        seen[d] = true;
        int64_t dim = x.shape[d], step = p_sp ? sp[i] : 1, s = st[i], e = en[i], len;
        if (step == 0)
            return kc_fail(c, n, KILN_ERR_SHAPE, "step 0 on axis %d", d);
        if (s < 0)
            s += dim;
        if (e < 0)
            e += dim;
        int64_t mag = step > 0 ? step : step == INT64_MIN ? INT64_MAX : -step;
        if (step > 0) {
            s = s < 0 ? 0 : s > dim ? dim : s;
            e = e < 0 ? 0 : e > dim ? dim : e;
            len = e > s ? (e - s - 1) / mag + 1 : 0;
        } else {
            s = s < 0 ? 0 : s > dim - 1 ? dim - 1 : s;
            e = e < -1 ? -1 : e > dim - 1 ? dim - 1 : e;
            len = s > e ? (s - e - 1) / mag + 1 : 0;
        }
        starts[d] = len ? s : 0;
        steps[d] = step;
        shape[d] = len;
    }
    bool whole = true;
    for (int d = 0; d < x.ndim; d++)
        whole &= shape[d] == x.shape[d] && (steps[d] == 1 || shape[d] <= 1) && starts[d] == 0;
    if (whole)
        return kc_out(c, n, 0, &x);
    KC_TRY(kc_emit1(c, n, KP_SLICE, 0, &x.id, 1, x.dt, x.ndim, shape, ia, 2 * x.ndim, NULL, 0, &y));
    return kc_out(c, n, 0, &y);
}

kiln_status kc_lower_concat(kc_ctx *c, const kg_node *n)
{
    kc_val first, t;
    int axis, in[64], k = 0;
    int64_t shape[KILN_MAX_DIMS];
    const kg_attr *a = kg_attr_find(n, "axis");
    if (!a || a->type != KG_ATTR_INT)
        return kc_fail(c, n, KILN_ERR_FORMAT, "missing attribute 'axis'");
    if (n->n_in < 1 || n->n_in > 64)
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "%d inputs (1..64)", n->n_in);
    for (int i = n->n_in - 1; i >= 0; i--) {      /* the first input with elements leads */
        KC_TRY(kc_arg(c, n, i, &t));
        if (i == n->n_in - 1 || kc_numel(&t) > 0)
            first = t;
    }
    KC_TRY(kc_check_rank(c, n, &first, "input", 1, KILN_MAX_DIMS));
    KC_TRY(kc_axis(c, n, a->i, first.ndim, &axis));
    memcpy(shape, first.shape, sizeof shape);
    shape[axis] = 0;
    for (int i = 0; i < n->n_in; i++) {
        KC_TRY(kc_arg(c, n, i, &t));
        if (kc_numel(&t) == 0 && (t.ndim != first.ndim || t.shape[axis] == 0))
            continue;                       /* empty inputs add nothing */
        KC_TRY(kc_same_dtype(c, n, &first, &t));
        if (t.ndim != first.ndim)
            return kc_fail(c, n, KILN_ERR_SHAPE, "input %d has rank %d, not %d", i, t.ndim,
                           first.ndim);
        for (int d = 0; d < t.ndim; d++)
            if (d != axis && t.shape[d] != first.shape[d])
                return kc_fail(c, n, KILN_ERR_SHAPE, "input %d differs from the others on axis %d",
                               i, d);
        shape[axis] += t.shape[axis];
        in[k++] = t.id;
    }
    if (k == 1) {
        kc_snap(c, in[0], &t);
        return kc_out(c, n, 0, &t);
    }
    int64_t ia = axis;
    return kc_emit_out(c, n, KP_CONCAT, 0, in, k, first.dt, first.ndim, shape, &ia, 1, NULL, 0);
}

kiln_status kc_lower_split(kc_ctx *c, const kg_node *n)
{
    kc_val x;
    int axis, cnt, outs[64];
    int64_t sizes[64];
    bool present;
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_check_rank(c, n, &x, "input", 1, KILN_MAX_DIMS));
    KC_TRY(kc_axis(c, n, kg_attr_int(n, "axis", 0), x.ndim, &axis));
    int n_out = n->n_out;
    if (n_out < 1 || n_out > 64)
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "%d outputs (1..64)", n_out);
    int64_t dim = x.shape[axis];
    KC_TRY(kc_ints_arg(c, n, "split", 1, sizes, 64, &cnt, &present));
    if (!present) {                  /* equal parts; the last smaller if they do not divide */
        int64_t parts = kg_attr_int(n, "num_outputs", n_out);
        if (parts != n_out)
            return kc_fail(c, n, KILN_ERR_SHAPE, "num_outputs %lld but %d outputs",
                           (long long)parts, n_out);
        int64_t chunk = (dim + n_out - 1) / n_out;
        for (int i = 0; i < n_out; i++)
            sizes[i] = i < n_out - 1 ? chunk : dim - chunk * (n_out - 1);
        cnt = n_out;
    }
    int64_t total = 0;
    for (int i = 0; i < cnt; i++) {
        if (sizes[i] < 0)
            return kc_fail(c, n, KILN_ERR_SHAPE, "cannot split %lld into %d parts", (long long)dim,
                           n_out);
        total += sizes[i];
    }
    if (cnt != n_out || total != dim)
        return kc_fail(c, n, KILN_ERR_SHAPE, "split sizes do not add up to %lld in %d parts",
                       (long long)dim, n_out);
    if (n_out == 1)
        return kc_out(c, n, 0, &x);
    int64_t shape[KILN_MAX_DIMS], ia = axis;
    memcpy(shape, x.shape, sizeof shape);
    for (int i = 0; i < n_out; i++) {
        shape[axis] = sizes[i];
        if ((outs[i] = kc_new_value(c, x.dt, x.ndim, shape)) < 0)
            return KILN_ERR_NOMEM;
    }
    KC_TRY(kc_emit(c, n, KP_SPLIT, 0, &x.id, 1, outs, n_out, &ia, 1, NULL, 0));
    for (int i = 0; i < n_out; i++)
        if (kc_output_wanted(c, n, i))
            KC_TRY(kc_set_output(c, n, i, outs[i]));
    return KILN_OK;
}

kiln_status kc_lower_expand(kc_ctx *c, const kg_node *n)
{
    kc_val x, s;
    int64_t want[KILN_MAX_DIMS], shape[KILN_MAX_DIMS];
    int cnt, nd;
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_arg(c, n, 1, &s));
    if (s.ndim != 1 || s.shape[0] > KILN_MAX_DIMS)
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "shape must be 1-D of at most %d", KILN_MAX_DIMS);
    KC_TRY(kc_const_ints(c, n, s.id, want, KILN_MAX_DIMS, &cnt));
    KC_TRY(kc_broadcast(c, n, x.ndim, x.shape, cnt, want, &nd, shape));
    if (kc_same_shape(nd, shape, x.ndim, x.shape))
        return kc_out(c, n, 0, &x);
    if (kiln__numel(nd, shape) == kc_numel(&x)) {     /* only adds leading 1s */
        KC_TRY(kc_reshape(c, n, &x, nd, shape, &s));
        return kc_out(c, n, 0, &s);
    }
    return kc_emit_out(c, n, KP_EXPAND, 0, &x.id, 1, x.dt, nd, shape, NULL, 0, NULL, 0);
}

kiln_status kc_lower_tile(kc_ctx *c, const kg_node *n)
{
    kc_val x, r;
    int64_t rep[KILN_MAX_DIMS], shape[KILN_MAX_DIMS];
    int cnt;
    bool ones = true;
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_arg(c, n, 1, &r));
    if (kc_numel(&r) != x.ndim)
        return kc_fail(c, n, KILN_ERR_SHAPE, "repeats has %lld values for rank %d",
                       (long long)kc_numel(&r), x.ndim);
    KC_TRY(kc_const_ints(c, n, r.id, rep, KILN_MAX_DIMS, &cnt));
    for (int i = 0; i < x.ndim; i++) {
        if (rep[i] < 0)
            return kc_fail(c, n, KILN_ERR_SHAPE, "repeats[%d] = %lld", i, (long long)rep[i]);
        ones &= rep[i] == 1;
        if (__builtin_mul_overflow(x.shape[i], rep[i], &shape[i]))
            return kc_fail(c, n, KILN_ERR_SHAPE, "repeats overflow axis %d", i);
    }
    if (ones)
        return kc_out(c, n, 0, &x);
    return kc_emit_out(c, n, KP_TILE, 0, &x.id, 1, x.dt, x.ndim, shape, NULL, 0, NULL, 0);
}

kiln_status kc_lower_pad(kc_ctx *c, const kg_node *n)
{
    kc_val x, t;
    int64_t pads[2 * KILN_MAX_DIMS], ax[KILN_MAX_DIMS], ia[2 * KILN_MAX_DIMS] = {0};
    int np, na, axes[KILN_MAX_DIMS];
    bool p_pads, p_ax;
    double value = kc_attr_num(n, "value", 0.0);
    KC_TRY(kc_arg(c, n, 0, &x));
    const char *ms = kg_attr_string(n, "mode", "constant");
    int mode;
    if (!strcmp(ms, "constant"))
        mode = KP_PAD_CONSTANT;
    else if (!strcmp(ms, "reflect"))
        mode = KP_PAD_REFLECT;
    else if (!strcmp(ms, "edge"))
        mode = KP_PAD_EDGE;
    else if (!strcmp(ms, "wrap"))
        mode = KP_PAD_WRAP;
    else
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "mode '%s'", ms);
    KC_TRY(kc_ints_arg(c, n, "pads", 1, pads, 2 * KILN_MAX_DIMS, &np, &p_pads));
    KC_TRY(kc_ints_arg(c, n, NULL, 3, ax, KILN_MAX_DIMS, &na, &p_ax));
    if (!p_pads)
        return kc_fail(c, n, KILN_ERR_FORMAT, "missing pads");
    if (kc_opt_arg(c, n, 2, &t) && kc_numel(&t) > 0) {
        int cnt;
        KC_TRY(kc_const_floats(c, n, t.id, &value, 1, &cnt));
    }
    if (p_ax) {
        KC_TRY(kc_axes(c, n, ax, na, x.ndim, axes));
        /* kc_axes sorts; pads follow the given order, so map each given axis */
        for (int i = 0; i < na; i++)
            KC_TRY(kc_axis(c, n, ax[i], x.ndim, &axes[i]));
    } else {
        na = x.ndim;
        for (int i = 0; i < na; i++)
            axes[i] = i;
    }
    if (np != 2 * na)
        return kc_fail(c, n, KILN_ERR_SHAPE, "%d pads for %d axes", np, na);
    int64_t *pb = ia, *pe = ia + x.ndim, shape[KILN_MAX_DIMS];
    bool none = true;
    for (int i = 0; i < na; i++) {
        pb[axes[i]] = pads[i];
        pe[axes[i]] = pads[na + i];
    }
    for (int d = 0; d < x.ndim; d++) {
        int64_t dim = x.shape[d];
        shape[d] = dim + pb[d] + pe[d];
        none &= pb[d] == 0 && pe[d] == 0;
        if (shape[d] < 0)
            return kc_fail(c, n, KILN_ERR_SHAPE, "pads crop axis %d below zero", d);
        int64_t lim = mode == KP_PAD_REFLECT ? dim - 1 : mode == KP_PAD_CONSTANT ? INT64_MAX : dim;
        if ((pb[d] > 0 && pb[d] > lim) || (pe[d] > 0 && pe[d] > lim))
            return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "%s pad wider than axis %d (extent %lld)",
                           ms, d, (long long)dim);
    }
    if (none)
        return kc_out(c, n, 0, &x);
    if (!kc_float_exact(x.dt, value))
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "pad value %g not exact as a float", value);
    float fv = (float)value;
    return kc_emit_out(c, n, KP_PAD, mode, &x.id, 1, x.dt, x.ndim, shape, ia, 2 * x.ndim, &fv, 1);
}

static const struct { const char *op; uint8_t alg; } reduce_defs[] = {
    {"ReduceSum", KP_R_SUM}, {"ReduceMean", KP_R_MEAN}, {"ReduceMax", KP_R_MAX},
    {"ReduceMin", KP_R_MIN}, {"ReduceProd", KP_R_PROD}, {"ReduceL1", KP_R_L1},
    {"ReduceL2", KP_R_L2}, {"ReduceLogSum", KP_R_LOG_SUM},
    {"ReduceLogSumExp", KP_R_LOG_SUM_EXP}, {"ReduceSumSquare", KP_R_SUM_SQUARE},
};

kiln_status kc_lower_reduce(kc_ctx *c, const kg_node *n)
{
    kc_val x, y;
    int64_t a[KILN_MAX_DIMS], ia[1 + KILN_MAX_DIMS], shape[KILN_MAX_DIMS];
    int cnt, axes[KILN_MAX_DIMS], alg = -1;
    bool present, red[KILN_MAX_DIMS] = {false};
    for (size_t i = 0; i < sizeof reduce_defs / sizeof *reduce_defs; i++)
        if (!strcmp(reduce_defs[i].op, n->op_type))
            alg = reduce_defs[i].alg;
    KILN_ASSERT(alg >= 0);
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_ints_arg(c, n, "axes", 1, a, KILN_MAX_DIMS, &cnt, &present));
    bool keep = kg_attr_int(n, "keepdims", 1) != 0;
    if (cnt == 0 && kg_attr_int(n, "noop_with_empty_axes", 0))
        return kc_out(c, n, 0, &x);
    kc_val src = x;
    if (x.ndim == 0) {                       /* a scalar: reduce it as [1] */
        int64_t one = 1;
        KC_TRY(kc_reshape(c, n, &x, 1, &one, &src));
        cnt = 0;
    }
    if (cnt == 0) {
        cnt = src.ndim;
        for (int i = 0; i < cnt; i++)
            axes[i] = i;
    } else {
        KC_TRY(kc_axes(c, n, a, cnt, src.ndim, axes));
    }
    ia[0] = cnt;
    for (int i = 0; i < cnt; i++) {
        ia[1 + i] = axes[i];
        red[axes[i]] = true;
    }
    int r = 0;
    for (int d = 0; d < src.ndim; d++)
        if (!red[d] || keep)
            shape[r++] = red[d] ? 1 : src.shape[d];
    KC_TRY(kc_emit1(c, n, KP_REDUCE, alg, &src.id, 1, src.dt, r, shape, ia, 1 + cnt, NULL, 0, &y));
    if (x.ndim == 0)
        KC_TRY(kc_reshape(c, n, &y, 0, NULL, &y));
    return kc_out(c, n, 0, &y);
}

/* TopK: k must be known at trace time (it is the output's extent); always sorted. */
kiln_status kc_lower_topk(kc_ctx *c, const kg_node *n)
{
    kc_val x;
    int axis, cnt = 0;
    int64_t k = 0;
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_check_rank(c, n, &x, "input", 1, KILN_MAX_DIMS));
    KC_TRY(kc_axis(c, n, kg_attr_int(n, "axis", -1), x.ndim, &axis));
    if (kc_opset(c) < 10) {
        k = kg_attr_int(n, "k", -1);
    } else {
        kc_val kv;
        KC_TRY(kc_arg(c, n, 1, &kv));
        if (kc_numel(&kv) != 1)
            return kc_fail(c, n, KILN_ERR_SHAPE, "K must hold one value");
        KC_TRY(kc_const_ints(c, n, kv.id, &k, 1, &cnt));
    }
    if (k < 0 || k > x.shape[axis])
        return kc_fail(c, n, KILN_ERR_SHAPE, "k = %lld for an axis of %lld", (long long)k,
                       (long long)x.shape[axis]);
    int64_t shape[KILN_MAX_DIMS], ia = axis;
    memcpy(shape, x.shape, sizeof shape);
    shape[axis] = k;
    int sub = kg_attr_int(n, "largest", 1) ? 0 : 1, outs[2];
    kc_val v[2];
    if (kiln__numel(x.ndim, shape) == 0) {
        KC_TRY(kc_const(c, x.dt, x.ndim, shape, NULL, &v[0]));
        KC_TRY(kc_const(c, KILN_I64, x.ndim, shape, NULL, &v[1]));
    } else {
        if ((outs[0] = kc_new_value(c, x.dt, x.ndim, shape)) < 0 ||
            (outs[1] = kc_new_value(c, KILN_I64, x.ndim, shape)) < 0)
            return KILN_ERR_NOMEM;
        KC_TRY(kc_emit(c, n, KP_TOPK, sub, &x.id, 1, outs, 2, &ia, 1, NULL, 0));
        kc_snap(c, outs[0], &v[0]);
        kc_snap(c, outs[1], &v[1]);
    }
    KC_TRY(kc_out(c, n, 0, &v[0]));
    return kc_out(c, n, 1, &v[1]);
}

kiln_status kc_lower_argreduce(kc_ctx *c, const kg_node *n)
{
    kc_val x;
    int axis, r = 0;
    int64_t shape[KILN_MAX_DIMS];
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_check_rank(c, n, &x, "input", 1, KILN_MAX_DIMS));
    KC_TRY(kc_axis(c, n, kg_attr_int(n, "axis", 0), x.ndim, &axis));
    int64_t ia[3] = {axis, kg_attr_int(n, "keepdims", 1) != 0,
                     kg_attr_int(n, "select_last_index", 0) != 0};
    for (int d = 0; d < x.ndim; d++)
        if (d != axis || ia[1])
            shape[r++] = d == axis ? 1 : x.shape[d];
    return kc_emit_out(c, n, KP_ARGREDUCE, !strcmp(n->op_type, "ArgMin"), &x.id, 1, KILN_I64, r,
                       shape, ia, 3, NULL, 0);
}

kiln_status kc_lower_cumsum(kc_ctx *c, const kg_node *n)
{
    kc_val x, t;
    int64_t a;
    int cnt, axis;
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_arg(c, n, 1, &t));
    KC_TRY(kc_check_rank(c, n, &x, "input", 1, KILN_MAX_DIMS));
    if (kc_numel(&t) != 1)
        return kc_fail(c, n, KILN_ERR_SHAPE, "axis must be a scalar");
    KC_TRY(kc_const_ints(c, n, t.id, &a, 1, &cnt));
    KC_TRY(kc_axis(c, n, a, x.ndim, &axis));
    int64_t ia[3] = {axis, kg_attr_int(n, "exclusive", 0) != 0, kg_attr_int(n, "reverse", 0) != 0};
    return kc_emit_out(c, n, KP_CUMSUM, 0, &x.id, 1, x.dt, x.ndim, x.shape, ia, 3, NULL, 0);
}

kiln_status kc_lower_depth_space(kc_ctx *c, const kg_node *n)
{
    kc_val x;
    int sub;
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_check_rank(c, n, &x, "input", 4, 4));
    int64_t b = kg_attr_int(n, "blocksize", 0), shape[4];
    if (b < 1)
        return kc_fail(c, n, KILN_ERR_FORMAT, "blocksize %lld", (long long)b);
    if (!strcmp(n->op_type, "SpaceToDepth")) {
        sub = 2;
        if (x.shape[2] % b || x.shape[3] % b)
            return kc_fail(c, n, KILN_ERR_SHAPE, "spatial dims not divisible by blocksize %lld",
                           (long long)b);
        int64_t s[4] = {x.shape[0], x.shape[1] * b * b, x.shape[2] / b, x.shape[3] / b};
        memcpy(shape, s, sizeof s);
    } else {
        const char *mode = kg_attr_string(n, "mode", "DCR");
        if (!strcmp(mode, "DCR"))
            sub = 0;
        else if (!strcmp(mode, "CRD"))
            sub = 1;
        else
            return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "mode '%s'", mode);
        if (x.shape[1] % (b * b))
            return kc_fail(c, n, KILN_ERR_SHAPE, "channels not divisible by blocksize^2");
        int64_t s[4] = {x.shape[0], x.shape[1] / (b * b), x.shape[2] * b, x.shape[3] * b};
        memcpy(shape, s, sizeof s);
    }
    return kc_emit_out(c, n, KP_DEPTH_SPACE, sub, &x.id, 1, x.dt, 4, shape, &b, 1, NULL, 0);
}

/* ---- Resize ---- */

static int str_index(const char *s, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (names[i] && !strcmp(s, names[i]))
            return i;
    return -1;
}

kiln_status kc_lower_resize(kc_ctx *c, const kg_node *n)
{
    static const char *const modes[] = {"nearest", "linear", "cubic"};
    static const char *const coords[] = {"half_pixel", "pytorch_half_pixel", "align_corners",
                                         "asymmetric", NULL, "half_pixel_symmetric"};
    static const char *const nearest[] = {"round_prefer_floor", "round_prefer_ceil", "floor", "ceil"};
    kc_val x, t, y;
    double sc[KILN_MAX_DIMS];
    int64_t sizes[KILN_MAX_DIMS], ax[KILN_MAX_DIMS], shape[KILN_MAX_DIMS];
    int nsc = 0, nsz = 0, na, axes[KILN_MAX_DIMS];
    bool p_ax, legacy = !strcmp(n->op_type, "Upsample") || kc_opset(c) < 11;
    KC_TRY(kc_arg(c, n, 0, &x));
    const char *ms = kg_attr_string(n, "mode", "nearest");
    int mode = str_index(ms, modes, 3);
    if (!strcmp(ms, "bilinear"))
        mode = KP_RESIZE_LINEAR;
    if (mode < 0)
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "mode '%s'", ms);
    int64_t ia[3] = {KP_RC_ASYMMETRIC, KP_RN_FLOOR, 0};
    if (!legacy) {
        const char *cs = kg_attr_string(n, "coordinate_transformation_mode", "half_pixel");
        const char *ns = kg_attr_string(n, "nearest_mode", "round_prefer_floor");
        if ((ia[0] = str_index(cs, coords, 6)) < 0)
            return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "coordinate_transformation_mode '%s'", cs);
        if ((ia[1] = str_index(ns, nearest, 4)) < 0)
            return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "nearest_mode '%s'", ns);
        ia[2] = kg_attr_int(n, "exclude_outside", 0) != 0;
        if (kg_attr_int(n, "antialias", 0))
            return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "antialias");
    }
    /* scales: Upsample-7 attribute, Upsample-9 / Resize-10 input 1, Resize-11+ input 2;
     * sizes: Resize-11+ input 3. An empty tensor is an absent input. */
    const kg_attr *sa = kg_attr_find(n, "scales");
    if (sa && sa->type == KG_ATTR_FLOATS) {
        if (sa->n > KILN_MAX_DIMS)
            return kc_fail(c, n, KILN_ERR_SHAPE, "%zu scales", sa->n);
        nsc = (int)sa->n;
        for (int i = 0; i < nsc; i++)
            sc[i] = sa->floats[i];
    } else if (kc_opt_arg(c, n, legacy ? 1 : 2, &t) && kc_numel(&t) > 0) {
        if (kc_numel(&t) > KILN_MAX_DIMS)
            return kc_fail(c, n, KILN_ERR_SHAPE, "%lld scales", (long long)kc_numel(&t));
        KC_TRY(kc_const_floats(c, n, t.id, sc, KILN_MAX_DIMS, &nsc));
    }
    if (!legacy && kc_opt_arg(c, n, 3, &t) && kc_numel(&t) > 0) {
        if (kc_numel(&t) > KILN_MAX_DIMS)
            return kc_fail(c, n, KILN_ERR_SHAPE, "%lld sizes", (long long)kc_numel(&t));
        KC_TRY(kc_const_ints(c, n, t.id, sizes, KILN_MAX_DIMS, &nsz));
    }
    if ((nsc > 0) == (nsz > 0))
        return kc_fail(c, n, KILN_ERR_SHAPE, "exactly one of scales and sizes must be given");
    KC_TRY(kc_ints_arg(c, n, "axes", -1, ax, KILN_MAX_DIMS, &na, &p_ax));
    if (p_ax) {
        KC_TRY(kc_axes(c, n, ax, na, x.ndim, axes));
        for (int i = 0; i < na; i++)
            KC_TRY(kc_axis(c, n, ax[i], x.ndim, &axes[i]));   /* keep the given order */
    } else {
        na = x.ndim;
        for (int i = 0; i < na; i++)
            axes[i] = i;
    }
    if ((nsc ? nsc : nsz) != na)
        return kc_fail(c, n, KILN_ERR_SHAPE, "%d scales/sizes for %d axes", nsc ? nsc : nsz, na);
    if (nsz && strcmp(kg_attr_string(n, "keep_aspect_ratio_policy", "stretch"), "stretch"))
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "keep_aspect_ratio_policy other than stretch");
    float fa[KILN_MAX_DIMS + 2];
    bool same = true;
    for (int d = 0; d < x.ndim; d++) {
        shape[d] = x.shape[d];
        fa[d] = 1.0f;
    }
    for (int i = 0; i < na; i++) {
        int d = axes[i];
        if (nsc) {
            if (!(sc[i] > 0))
                return kc_fail(c, n, KILN_ERR_SHAPE, "scale %g on axis %d", sc[i], d);
            fa[d] = (float)sc[i];
            shape[d] = (int64_t)floor((double)x.shape[d] * (double)fa[d]);
        } else {
            if (sizes[i] < 0)
                return kc_fail(c, n, KILN_ERR_SHAPE, "size %lld on axis %d", (long long)sizes[i], d);
            shape[d] = sizes[i];
            fa[d] = x.shape[d] ? (float)sizes[i] / (float)x.shape[d] : 1.0f;   /* as ORT */
        }
        same &= shape[d] == x.shape[d] && fa[d] == 1.0f;
    }
    if (legacy && mode == KP_RESIZE_NEAREST) {
        /* Upsample / Resize-10 nearest: floor when enlarging, ceil when shrinking */
        bool up = false, down = false;
        for (int d = 0; d < x.ndim; d++) {
            up |= fa[d] > 1.0f;
            down |= fa[d] < 1.0f;
        }
        if (up && down)
            return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "nearest resize enlarging some axes and "
                           "shrinking others (opset < 11)");
        ia[1] = down ? KP_RN_CEIL : KP_RN_FLOOR;
    }
    if (same)
        return kc_out(c, n, 0, &x);
    fa[x.ndim] = (float)kc_attr_num(n, "cubic_coeff_a", -0.75);
    fa[x.ndim + 1] = (float)kc_attr_num(n, "extrapolation_value", 0.0);
    KC_TRY(kc_emit1(c, n, KP_RESIZE, mode, &x.id, 1, x.dt, x.ndim, shape, ia, 3, fa, x.ndim + 2, &y));
    return kc_out(c, n, 0, &y);
}

/* ---- Trilu, OneHot: comparisons against constants and a Where ---- */

kiln_status kc_lower_trilu(kc_ctx *c, const kg_node *n)
{
    kc_val x, t, mask, zero, y;
    int64_t k = 0;
    int cnt;
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_check_rank(c, n, &x, "input", 2, KILN_MAX_DIMS));
    if (kc_opt_arg(c, n, 1, &t)) {
        if (kc_numel(&t) != 1)
            return kc_fail(c, n, KILN_ERR_SHAPE, "k must be a scalar");
        KC_TRY(kc_const_ints(c, n, t.id, &k, 1, &cnt));
    }
    bool upper = kg_attr_int(n, "upper", 1) != 0;
    int64_t rows = x.shape[x.ndim - 2], cols = x.shape[x.ndim - 1];
    uint8_t *m = kiln__malloc((size_t)(rows * cols) + 1);
    if (!m)
        return kiln__fail(KILN_ERR_NOMEM, "out of memory for a Trilu mask");
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++)
            m[i * cols + j] = upper ? j - i >= k : j - i <= k;
    kiln_status s = kc_const(c, KILN_BOOL, 2, x.shape + x.ndim - 2, m, &mask);
    kiln__free(m);
    KC_TRY(s);
    uint64_t z = 0;
    KC_TRY(kc_const(c, x.dt, 0, NULL, &z, &zero));
    int in[3] = {mask.id, x.id, zero.id};
    KC_TRY(kc_emit1(c, n, KP_WHERE, 0, in, 3, x.dt, x.ndim, x.shape, NULL, 0, NULL, 0, &y));
    return kc_out(c, n, 0, &y);
}

/* y = where(unsqueeze(idx < 0 ? idx + depth : idx, axis) == arange(depth) placed at axis,
 *           on, off) */
kiln_status kc_lower_onehot(kc_ctx *c, const kg_node *n)
{
    kc_val idx, dep, val, t, zero, dv, neg, sum, on, off, range, eq, y;
    int64_t depth, s[KILN_MAX_DIMS];
    double dd;
    int cnt, axis;
    KC_TRY(kc_arg(c, n, 0, &idx));
    KC_TRY(kc_arg(c, n, 1, &dep));
    KC_TRY(kc_arg(c, n, 2, &val));
    if (kc_numel(&dep) != 1 || kc_numel(&val) != 2)
        return kc_fail(c, n, KILN_ERR_SHAPE, "depth must be a scalar and values have 2 elements");
    KC_TRY(kc_const_floats(c, n, dep.id, &dd, 1, &cnt));
    depth = (int64_t)dd;
    if (depth < 1)
        return kc_fail(c, n, KILN_ERR_SHAPE, "depth %lld", (long long)depth);
    int r = idx.ndim + 1;
    if (r > KILN_MAX_DIMS)
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "output rank %d", r);
    KC_TRY(kc_axis(c, n, kg_attr_int(n, "axis", -1), r, &axis));
    if (idx.dt != KILN_I64)
        KC_TRY(kc_emit1(c, n, KP_CAST, 0, &idx.id, 1, KILN_I64, idx.ndim, idx.shape, NULL, 0, NULL,
                        0, &idx));
    int64_t z = 0;
    KC_TRY(kc_const(c, KILN_I64, 0, NULL, &z, &zero));
    KC_TRY(kc_const(c, KILN_I64, 0, NULL, &depth, &dv));
    KC_TRY(kc_binary(c, n, KP_B_LESS, &idx, &zero, &neg));
    KC_TRY(kc_binary(c, n, KP_B_ADD, &idx, &dv, &sum));
    int in[3] = {neg.id, sum.id, idx.id};
    KC_TRY(kc_emit1(c, n, KP_WHERE, 0, in, 3, KILN_I64, idx.ndim, idx.shape, NULL, 0, NULL, 0, &idx));
    for (int i = 0, j = 0; i < r; i++)
        s[i] = i == axis ? 1 : idx.shape[j++];
    KC_TRY(kc_reshape(c, n, &idx, r, s, &idx));
    int64_t *ar = kiln__malloc((size_t)depth * sizeof *ar);
    if (!ar)
        return kiln__fail(KILN_ERR_NOMEM, "out of memory for OneHot");
    for (int64_t i = 0; i < depth; i++)
        ar[i] = i;
    for (int i = 0; i < r; i++)
        s[i] = i == axis ? depth : 1;
    kiln_status st = kc_const(c, KILN_I64, r - axis, s + axis, ar, &range);
    kiln__free(ar);
    KC_TRY(st);
    KC_TRY(kc_binary(c, n, KP_B_EQUAL, &idx, &range, &eq));
    /* off = values[0], on = values[1] */
    int64_t i0 = 0, i1 = 1, flat = 2, gi = 0;
    KC_TRY(kc_reshape(c, n, &val, 1, &flat, &val));
    KC_TRY(kc_const(c, KILN_I64, 0, NULL, &i0, &t));
    int g0[2] = {val.id, t.id};
    KC_TRY(kc_emit1(c, n, KP_GATHER, 0, g0, 2, val.dt, 0, NULL, &gi, 1, NULL, 0, &off));
    KC_TRY(kc_const(c, KILN_I64, 0, NULL, &i1, &t));
    int g1[2] = {val.id, t.id};
    KC_TRY(kc_emit1(c, n, KP_GATHER, 0, g1, 2, val.dt, 0, NULL, &gi, 1, NULL, 0, &on));
    int w[3] = {eq.id, on.id, off.id};
    KC_TRY(kc_emit1(c, n, KP_WHERE, 0, w, 3, val.dt, eq.ndim, eq.shape, NULL, 0, NULL, 0, &y));
    return kc_out(c, n, 0, &y);
}

/* ---- Einsum: one operand (sums and a transpose) or two (a batched matmul between
 * transposes and reshapes); labels repeated within one operand (diagonals) unsupported ---- */

typedef struct ein_term {
    int  n;
    char l[KILN_MAX_DIMS];
} ein_term;

/* Parses term s[0..len) for an operand of `rank` dims (-1: the output). The ellipsis
 * becomes labels 1..E (control characters, never letters), right-aligned. *ne: how many
 * dims the ellipsis covers (set when rank >= 0). */
static bool ein_parse(const char *s, size_t len, int rank, int E, ein_term *t, int *ne)
{
    int letters = 0;
    bool ell = false;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '.') {
            if (ell || i + 2 >= len || s[i + 1] != '.' || s[i + 2] != '.')
                return false;
            ell = true;
            i += 2;
        } else if ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z')) {
            letters++;
        } else {
            return false;
        }
    }
    int e = rank < 0 ? E : rank - letters;
    if (e < 0 || (e > 0 && !ell) || letters + e > KILN_MAX_DIMS || (rank >= 0 && e > E))
        return false;
    if (ne)
        *ne = e;
    t->n = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '.') {
            for (int j = 0; j < e; j++)
                t->l[t->n++] = (char)(1 + E - e + j);
            i += 2;
        } else {
            t->l[t->n++] = s[i];
        }
    }
    return true;
}

/* Whether a term repeats a label (a diagonal, which kiln does not take). */
static bool ein_repeats(const ein_term *t)
{
    for (int i = 0; i < t->n; i++)
        for (int j = 0; j < i; j++)
            if (t->l[i] == t->l[j])
                return true;
    return false;
}

static int ein_find(const ein_term *t, char l)
{
    for (int i = 0; i < t->n; i++)
        if (t->l[i] == l)
            return i;
    return -1;
}

/* Sums x over its labels that `keep1` and `keep2` (either may be NULL) both lack. */
static kiln_status ein_reduce(kc_ctx *c, const kg_node *n, kc_val *x, ein_term *t,
                              const ein_term *keep1, const ein_term *keep2)
{
    int64_t ia[1 + KILN_MAX_DIMS] = {0}, shape[KILN_MAX_DIMS];
    ein_term r = {0};
    int k = 0;
    for (int i = 0; i < t->n; i++) {
        bool kept = (keep1 && ein_find(keep1, t->l[i]) >= 0) || (keep2 && ein_find(keep2, t->l[i]) >= 0);
        if (kept) {
            shape[k++] = x->shape[i];
            r.l[r.n++] = t->l[i];
        } else {
            ia[1 + ia[0]++] = i;
        }
    }
    if (!ia[0])
        return KILN_OK;
    *t = r;
    return kc_emit1(c, n, KP_REDUCE, KP_R_SUM, &x->id, 1, x->dt, k, shape, ia, 1 + (int)ia[0], NULL,
                    0, x);
}

/* Transposes x (labels t) so its labels are in the order of `want`. */
static kiln_status ein_order(kc_ctx *c, const kg_node *n, kc_val *x, ein_term *t,
                             const ein_term *want)
{
    int64_t perm[KILN_MAX_DIMS];
    for (int i = 0; i < want->n; i++)
        perm[i] = ein_find(t, want->l[i]);
    *t = *want;
    return transpose(c, n, x, perm, x);
}

kiln_status kc_lower_einsum(kc_ctx *c, const kg_node *n)
{
    const char *eq = kg_attr_string(n, "equation", NULL);
    char buf[256];
    size_t len = 0;
    kc_val x[2];
    ein_term t[2], out;
    int ne[2], E = 0, nin = n->n_in;
    if (!eq)
        return kc_fail(c, n, KILN_ERR_FORMAT, "missing attribute 'equation'");
    for (const char *p = eq; *p; p++)
        if (*p != ' ' && len + 1 < sizeof buf)
            buf[len++] = *p;
    buf[len] = 0;
    if (nin < 1 || nin > 2)
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "Einsum of %d operands", nin);
    char *arrow = strstr(buf, "->"), *comma = strchr(buf, ',');
    size_t lhs = arrow ? (size_t)(arrow - buf) : len;
    if ((nin == 2) != (comma && (size_t)(comma - buf) < lhs))
        return kc_fail(c, n, KILN_ERR_SHAPE, "equation '%s' does not match %d inputs", eq, nin);
    size_t start[2] = {0, comma ? (size_t)(comma - buf) + 1 : 0};
    size_t tlen[2] = {nin == 2 ? (size_t)(comma - buf) : lhs, nin == 2 ? lhs - start[1] : 0};
    for (int pass = 0; pass < 2; pass++)       /* first pass: how wide the ellipsis is */
        for (int i = 0; i < nin; i++) {
            if (pass == 0)
                KC_TRY(kc_arg(c, n, i, &x[i]));
            if (!ein_parse(buf + start[i], tlen[i], x[i].ndim, pass ? E : KILN_MAX_DIMS, &t[i], &ne[i]))
                return kc_fail(c, n, KILN_ERR_SHAPE, "equation '%s' does not fit operand %d", eq, i);
            if (ein_repeats(&t[i]))
                return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "equation '%s': repeated labels "
                               "(diagonals) are not supported", eq);
            if (pass == 0 && ne[i] > E)
                E = ne[i];
        }
    if (nin == 2)
        KC_TRY(kc_same_dtype(c, n, &x[0], &x[1]));
    if (arrow) {
        if (!ein_parse(arrow + 2, strlen(arrow + 2), -1, E, &out, NULL) || ein_repeats(&out))
            return kc_fail(c, n, KILN_ERR_SHAPE, "equation '%s': bad output term", eq);
    } else {                                   /* implicit: ellipsis, then labels seen once */
        out.n = 0;
        for (int j = 0; j < E; j++)
            out.l[out.n++] = (char)(1 + j);
        for (char l = 'A'; l <= 'z'; l++) {
            int seen = 0;
            for (int i = 0; i < nin; i++)
                seen += ein_find(&t[i], l) >= 0;
            if (seen == 1 && out.n < KILN_MAX_DIMS)
                out.l[out.n++] = l;
        }
    }
    for (int i = 0; i < out.n; i++)
        if (ein_find(&t[0], out.l[i]) < 0 && (nin < 2 || ein_find(&t[1], out.l[i]) < 0))
            return kc_fail(c, n, KILN_ERR_SHAPE, "output label of '%s' not in any input", eq);
    if (nin == 1) {
        KC_TRY(ein_reduce(c, n, &x[0], &t[0], &out, NULL));
        KC_TRY(ein_order(c, n, &x[0], &t[0], &out));
        return kc_out(c, n, 0, &x[0]);
    }
    KC_TRY(ein_reduce(c, n, &x[0], &t[0], &out, &t[1]));
    KC_TRY(ein_reduce(c, n, &x[1], &t[1], &out, &t[0]));
    /* A -> [batch, afree, contr], B -> [batch, contr, bfree] */
    ein_term ta = {0}, tb = {0}, ty = {0};
    int nb = 0, nf[2] = {0, 0};
    for (int i = 0; i < out.n; i++)
        if (ein_find(&t[0], out.l[i]) >= 0 && ein_find(&t[1], out.l[i]) >= 0) {
            ta.l[ta.n++] = tb.l[tb.n++] = ty.l[ty.n++] = out.l[i];
            nb++;
        }
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < out.n; i++)
            if (ein_find(&t[s], out.l[i]) >= 0 && ein_find(&t[1 - s], out.l[i]) < 0) {
                (s ? &tb : &ta)->l[nb + nf[s]++] = out.l[i];
                ty.l[ty.n++] = out.l[i];
            }
    ta.n = nb + nf[0];
    int64_t K = 1, M = 1, N = 1;
    for (int i = 0; i < t[0].n; i++) {
        char l = t[0].l[i];
        int j = ein_find(&t[1], l);
        if (j < 0 || ein_find(&out, l) >= 0)
            continue;
        if (x[0].shape[i] != x[1].shape[j])
            return kc_fail(c, n, KILN_ERR_SHAPE, "summed label '%c' has extents %lld and %lld", l,
                           (long long)x[0].shape[i], (long long)x[1].shape[j]);
        ta.l[ta.n++] = l;
        K *= x[0].shape[i];
    }
    for (int i = nb + nf[0]; i < ta.n; i++)
        tb.l[nb + (i - nb - nf[0])] = ta.l[i];
    tb.n = nb + (ta.n - nb - nf[0]);
    for (int i = 0; i < nf[1]; i++)
        tb.l[tb.n++] = ty.l[nb + nf[0] + i];
    KC_TRY(ein_order(c, n, &x[0], &t[0], &ta));
    KC_TRY(ein_order(c, n, &x[1], &t[1], &tb));
    int64_t sa[KILN_MAX_DIMS], sb[KILN_MAX_DIMS], sy[KILN_MAX_DIMS], bs[KILN_MAX_DIMS];
    int nbs;
    for (int i = 0; i < nf[0]; i++)
        M *= x[0].shape[nb + i];
    for (int i = 0; i < nf[1]; i++)
        N *= x[1].shape[x[1].ndim - nf[1] + i];
    memcpy(sa, x[0].shape, nb * sizeof *sa);
    memcpy(sb, x[1].shape, nb * sizeof *sb);
    KC_TRY(kc_broadcast(c, n, nb, sa, nb, sb, &nbs, bs));
    sa[nb] = M, sa[nb + 1] = K;
    sb[nb] = K, sb[nb + 1] = N;
    memcpy(sy, bs, nb * sizeof *sy);
    for (int i = 0; i < nf[0]; i++)
        sy[nb + i] = x[0].shape[nb + i];
    for (int i = 0; i < nf[1]; i++)
        sy[nb + nf[0] + i] = x[1].shape[x[1].ndim - nf[1] + i];
    KC_TRY(kc_reshape(c, n, &x[0], nb + 2, sa, &x[0]));
    KC_TRY(kc_reshape(c, n, &x[1], nb + 2, sb, &x[1]));
    int in[3] = {x[0].id, x[1].id, -1};
    int64_t npost = 0, mshape[KILN_MAX_DIMS];
    kc_val y;
    memcpy(mshape, bs, nb * sizeof *mshape);
    mshape[nb] = M, mshape[nb + 1] = N;
    KC_TRY(kc_emit1(c, n, KP_MATMUL, 0, in, 3, x[0].dt, nb + 2, mshape, &npost, 1, NULL, 0, &y));
    KC_TRY(kc_reshape(c, n, &y, ty.n, sy, &y));
    KC_TRY(ein_order(c, n, &y, &ty, &out));
    return kc_out(c, n, 0, &y);
}

static kiln_status const_i64(kc_ctx *c, int ndim, const int64_t *shape, const int64_t *data,
                             kc_val *out)
{
    return kc_const(c, KILN_I64, ndim, shape, data, out);
}

/* ---- ScatterND, ScatterElements: no kernel. With constant indices and no reduction, a
 * Gather of the updates and a Where over run-time data; ScatterND on all-constant inputs
 * (Swin's attention masks are built so from shapes) is computed here, reductions too ---- */

#define SCATTER_REDUCE(T)                                                                   \
    do {                                                                                    \
        T *d = (T *)dst;                                                                    \
        const T *u = (const T *)src;                                                        \
        for (int64_t e = 0; e < block; e++)                                                 \
            d[e] = red == 1 ? d[e] + u[e] : red == 2 ? d[e] * u[e] : red == 3 ?             \
                   (d[e] > u[e] ? d[e] : u[e]) : (d[e] < u[e] ? d[e] : u[e]);               \
    } while (0)

/* Index i along an axis of extent dim, negative counting from the end; false if outside. */
static bool index_in(int64_t *i, int64_t dim)
{
    if (*i < 0)
        *i += dim;
    return *i >= 0 && *i < dim;
}

/* A scatter without reduction over run-time data: x as `rows` rows of `block` elements,
 * update row b written to row target[b] (constant). y = where(row written, updates gathered
 * at the row's (last) update, x). */
static kiln_status scatter_rows(kc_ctx *c, const kg_node *n, const kc_val *x, const kc_val *upd,
                                int64_t rows, int64_t block, int64_t nb, const int64_t *target)
{
    int64_t *map = kiln__calloc((size_t)rows + 1, sizeof *map);
    uint8_t *mask = kiln__calloc((size_t)rows + 1, 1);
    kiln_status s = KILN_OK;
    if (!map || !mask)
        s = kiln__fail(KILN_ERR_NOMEM, "out of memory for %s", n->op_type);
    for (int64_t b = 0; b < nb && s == KILN_OK; b++) {
        map[target[b]] = b;
        mask[target[b]] = 1;
    }
    kc_val m, mk, u2, x2, g, y;
    int64_t ms[2] = {rows, 1}, us[2] = {nb, block}, xs[2] = {rows, block}, ia = 0;
    if (s == KILN_OK)
        s = const_i64(c, 1, &rows, map, &m);
    if (s == KILN_OK)
        s = kc_const(c, KILN_BOOL, 2, ms, mask, &mk);
    kiln__free(map);
    kiln__free(mask);
    KC_TRY(s);
    KC_TRY(kc_reshape(c, n, upd, 2, us, &u2));
    KC_TRY(kc_reshape(c, n, x, 2, xs, &x2));
    int gin[2] = {u2.id, m.id};
    KC_TRY(kc_emit1(c, n, KP_GATHER, 0, gin, 2, x->dt, 2, xs, &ia, 1, NULL, 0, &g));
    int win[3] = {mk.id, g.id, x2.id};
    KC_TRY(kc_emit1(c, n, KP_WHERE, 0, win, 3, x->dt, 2, xs, NULL, 0, NULL, 0, &y));
    KC_TRY(kc_reshape(c, n, &y, x->ndim, x->shape, &y));
    return kc_out(c, n, 0, &y);
}

/* Element e of a constant integer tensor. */
static int64_t const_index(const kc_ctx *c, const kc_val *idx, int64_t e)
{
    const void *iv = kc_const_data(c, idx->id);
    return idx->dt == KILN_I64 ? ((const int64_t *)iv)[e] : ((const int32_t *)iv)[e];
}

/* ScatterND's target rows: row b is the flat index of idx[b, 0..k) over x's first k dims. */
static kiln_status nd_targets(const kc_ctx *c, const kg_node *n, const kc_val *x,
                              const kc_val *idx, int k, int64_t nb, int64_t *target)
{
    for (int64_t b = 0; b < nb; b++) {
        int64_t off = 0;
        for (int j = 0; j < k; j++) {
            int64_t i = const_index(c, idx, b * k + j);
            if (!index_in(&i, x->shape[j]))
                return kc_fail(c, n, KILN_ERR_SHAPE, "index out of range on axis %d", j);
            off = off * x->shape[j] + i;
        }
        target[b] = off;
    }
    return KILN_OK;
}

kiln_status kc_lower_scatter_nd(kc_ctx *c, const kg_node *n)
{
    static const char *const reds[] = {"none", "add", "mul", "max", "min"};
    kc_val x, idx, upd, y;
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_arg(c, n, 1, &idx));
    KC_TRY(kc_arg(c, n, 2, &upd));
    const char *rs = kg_attr_string(n, "reduction", "none");
    int red = str_index(rs, reds, 5);
    if (red < 0)
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "reduction '%s'", rs);
    bool all_const = kc_is_const(c, x.id) && kc_is_const(c, idx.id) && kc_is_const(c, upd.id);
    if (!kc_is_const(c, idx.id)) {  /* indices known only at run time: the scatter kernel */
        if (red)
            return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "reduction '%s' with run-time indices", rs);
        KC_TRY(kc_same_dtype(c, n, &x, &upd));
        int64_t ia = 0;
        int in[3] = {x.id, idx.id, upd.id};
        return kc_emit_out(c, n, KP_SCATTER, 1, in, 3, x.dt, x.ndim, x.shape, &ia, 1, NULL, 0);
    }
    if (red && !all_const)
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "reduction '%s' over run-time data", rs);
    KC_TRY(kc_same_dtype(c, n, &x, &upd));
    if (idx.dt != KILN_I64 && idx.dt != KILN_I32)
        return kc_fail(c, n, KILN_ERR_SHAPE, "indices must be i64");
    if (red && x.dt != KILN_F32 && x.dt != KILN_F64 && x.dt != KILN_I32 && x.dt != KILN_I64)
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "reduction on dtype %s", kiln_dtype_name(x.dt));
    int k = idx.ndim ? (int)idx.shape[idx.ndim - 1] : 0;
    bool ok = idx.ndim >= 1 && k >= 1 && k <= x.ndim && upd.ndim == idx.ndim - 1 + x.ndim - k;
    for (int d = 0; ok && d < upd.ndim; d++)
        ok = upd.shape[d] == (d < idx.ndim - 1 ? idx.shape[d] : x.shape[k + d - (idx.ndim - 1)]);
    if (!ok)
        return kc_fail(c, n, KILN_ERR_SHAPE, "indices and updates do not fit data");
    size_t es = kiln_dtype_size(x.dt);
    int64_t block = kiln__numel(x.ndim - k, x.shape + k), nb = kiln__numel(idx.ndim - 1, idx.shape);
    int64_t *target = kiln__malloc((size_t)nb * sizeof *target + 1);
    uint8_t *buf = all_const ? kiln__malloc((size_t)kc_numel(&x) * es + 1) : NULL;
    kiln_status s = KILN_OK;
    if (!target || (all_const && !buf))
        s = kiln__fail(KILN_ERR_NOMEM, "out of memory for ScatterND");
    if (s == KILN_OK)
        s = nd_targets(c, n, &x, &idx, k, nb, target);
    if (s != KILN_OK || !all_const) {
        if (s == KILN_OK)
            s = scatter_rows(c, n, &x, &upd, kiln__numel(k, x.shape), block, nb, target);
        kiln__free(target);
        kiln__free(buf);
        return s;
    }
    memcpy(buf, kc_const_data(c, x.id), (size_t)kc_numel(&x) * es);
    const uint8_t *uv = kc_const_data(c, upd.id);
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *dst = buf + (size_t)(target[b] * block) * es;
        const uint8_t *src = uv + (size_t)(b * block) * es;
        if (red == 0)
            memcpy(dst, src, (size_t)block * es);
        else if (x.dt == KILN_F32)
            SCATTER_REDUCE(float);
        else if (x.dt == KILN_F64)
            SCATTER_REDUCE(double);
        else if (x.dt == KILN_I32)
            SCATTER_REDUCE(int32_t);
        else
            SCATTER_REDUCE(int64_t);
    }
    s = kc_const(c, x.dt, x.ndim, x.shape, buf, &y);
    kiln__free(buf);
    kiln__free(target);
    KC_TRY(s);
    return kc_out(c, n, 0, &y);
}

/* ScatterElements (and Scatter-9/10) without reduction: update e goes to the position of e
 * with its coordinate on `axis` replaced by indices[e]. Constant indices become row copies;
 * run-time ones a KP_SCATTER. */
kiln_status kc_lower_scatter_elements(kc_ctx *c, const kg_node *n)
{
    kc_val x, idx, upd;
    int axis;
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_arg(c, n, 1, &idx));
    KC_TRY(kc_arg(c, n, 2, &upd));
    const char *rs = kg_attr_string(n, "reduction", "none");
    if (strcmp(rs, "none"))
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "reduction '%s'", rs);
    KC_TRY(kc_check_rank(c, n, &x, "data", 1, KILN_MAX_DIMS));
    KC_TRY(kc_same_dtype(c, n, &x, &upd));
    KC_TRY(kc_axis(c, n, kg_attr_int(n, "axis", 0), x.ndim, &axis));
    if (!kc_is_const(c, idx.id)) {  /* indices known only at run time: the scatter kernel */
        int64_t ia = axis;
        int in[3] = {x.id, idx.id, upd.id};
        return kc_emit_out(c, n, KP_SCATTER, 0, in, 3, x.dt, x.ndim, x.shape, &ia, 1, NULL, 0);
    }
    if ((idx.dt != KILN_I64 && idx.dt != KILN_I32) || !kc_same_shape(idx.ndim, idx.shape, upd.ndim, upd.shape) ||
        idx.ndim != x.ndim)
        return kc_fail(c, n, KILN_ERR_SHAPE, "indices and updates must have data's rank and one shape");
    for (int d = 0; d < x.ndim; d++)
        if (d != axis && idx.shape[d] > x.shape[d])
            return kc_fail(c, n, KILN_ERR_SHAPE, "indices exceed data on axis %d", d);
    int64_t nb = kc_numel(&idx);
    int64_t *target = kiln__malloc((size_t)nb * sizeof *target + 1);
    if (!target)
        return kiln__fail(KILN_ERR_NOMEM, "out of memory for %s", n->op_type);
    kiln_status s = KILN_OK;
    for (int64_t e = 0; e < nb && s == KILN_OK; e++) {
        int64_t rem = e, off = 0, mul = 1;
        for (int d = x.ndim - 1; d >= 0; d--) {
            int64_t co = rem % idx.shape[d];
            rem /= idx.shape[d];
            if (d == axis) {
                co = const_index(c, &idx, e);
                if (!index_in(&co, x.shape[d]))
                    s = kc_fail(c, n, KILN_ERR_SHAPE, "index out of range on axis %d", d);
            }
            off += co * mul;
            mul *= x.shape[d];
        }
        target[e] = off;
    }
    if (s == KILN_OK)
        s = scatter_rows(c, n, &x, &upd, kc_numel(&x), 1, nb, target);
    kiln__free(target);
    return s;
}

/* ---- GatherElements, GatherND: a Gather from the flattened data at flat indices, which
 * are computed here when the indices are constant and by index arithmetic otherwise (an
 * index out of range at run time then reads another element instead of failing) ---- */

/* idx (any integer dtype) as i64 with negative entries counted from `dims` (a constant
 * broadcasting against idx) */
static kiln_status normalise_indices(kc_ctx *c, const kg_node *n, kc_val *idx, const kc_val *dims)
{
    kc_val zero, neg, adj;
    int64_t z = 0;
    if (idx->dt != KILN_I64)
        KC_TRY(kc_emit1(c, n, KP_CAST, 0, &idx->id, 1, KILN_I64, idx->ndim, idx->shape, NULL, 0,
                        NULL, 0, idx));
    KC_TRY(const_i64(c, 0, NULL, &z, &zero));
    KC_TRY(kc_binary(c, n, KP_B_LESS, idx, &zero, &neg));
    KC_TRY(kc_binary(c, n, KP_B_ADD, idx, dims, &adj));
    int in[3] = {neg.id, adj.id, idx->id};
    return kc_emit1(c, n, KP_WHERE, 0, in, 3, KILN_I64, idx->ndim, idx->shape, NULL, 0, NULL, 0, idx);
}

/* Node output 0: rows of x seen as [rows, trailing dims...] (rows: the product of x's
 * leading dims) gathered at the flat row indices `flat`. */
static kiln_status gather_rows(kc_ctx *c, const kg_node *n, const kc_val *x, int64_t rows,
                               const kc_val *flat)
{
    kc_val xf;
    int64_t s[KILN_MAX_DIMS], shape[2 * KILN_MAX_DIMS], r = 1, ia = 0;
    int lead = 0, nd = 0, k = 0;
    while (lead < x->ndim && r != rows)
        r *= x->shape[lead++];
    KILN_ASSERT(r == rows);
    s[nd++] = rows;
    for (int d = lead; d < x->ndim; d++)
        s[nd++] = x->shape[d];
    KC_TRY(kc_reshape(c, n, x, nd, s, &xf));
    for (int d = 0; d < flat->ndim; d++)
        shape[k++] = flat->shape[d];
    for (int d = 1; d < nd; d++)
        shape[k++] = s[d];
    int in[2] = {xf.id, flat->id};
    return kc_emit_out(c, n, KP_GATHER, 0, in, 2, x->dt, k, shape, &ia, 1, NULL, 0);
}

kiln_status kc_lower_gather_elements(kc_ctx *c, const kg_node *n)
{
    kc_val x, idx, dims, t;
    int axis;
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_arg(c, n, 1, &idx));
    KC_TRY(kc_check_rank(c, n, &x, "data", 1, KILN_MAX_DIMS));
    if (idx.dt != KILN_I32 && idx.dt != KILN_I64)
        return kc_fail(c, n, KILN_ERR_SHAPE, "indices must be i32 or i64");
    KC_TRY(kc_axis(c, n, kg_attr_int(n, "axis", 0), x.ndim, &axis));
    if (idx.ndim != x.ndim)
        return kc_fail(c, n, KILN_ERR_SHAPE, "indices rank %d, data rank %d", idx.ndim, x.ndim);
    int64_t stride[KILN_MAX_DIMS], count = kc_numel(&idx);
    for (int d = x.ndim - 1; d >= 0; d--) {
        stride[d] = d == x.ndim - 1 ? 1 : stride[d + 1] * x.shape[d + 1];
        if (d != axis && idx.shape[d] > x.shape[d])
            return kc_fail(c, n, KILN_ERR_SHAPE, "indices extent %lld exceeds data's %lld on axis %d",
                           (long long)idx.shape[d], (long long)x.shape[d], d);
    }
    /* base: the flat offset of every index position with its axis coordinate 0 */
    int64_t *base = kiln__malloc((size_t)count * sizeof *base + 1);
    if (!base)
        return kiln__fail(KILN_ERR_NOMEM, "out of memory for GatherElements");
    int64_t iv = 0;
    const void *cidx = kc_const_data(c, idx.id);
    kiln_status s = KILN_OK;
    for (int64_t e = 0; e < count && s == KILN_OK; e++) {
        int64_t rem = e, off = 0;
        for (int d = x.ndim - 1; d >= 0; d--) {
            int64_t co = rem % idx.shape[d];
            rem /= idx.shape[d];
            if (d != axis)
                off += co * stride[d];
        }
        if (cidx) {
            iv = idx.dt == KILN_I64 ? ((const int64_t *)cidx)[e] : ((const int32_t *)cidx)[e];
            if (iv < 0)
                iv += x.shape[axis];
            if (iv < 0 || iv >= x.shape[axis])
                s = kc_fail(c, n, KILN_ERR_SHAPE, "index out of range on axis %d", axis);
            off += iv * stride[axis];
        }
        base[e] = off;
    }
    if (s == KILN_OK)
        s = const_i64(c, idx.ndim, idx.shape, base, &t);
    kiln__free(base);
    KC_TRY(s);
    if (!cidx) {
        kc_val st;
        KC_TRY(const_i64(c, 0, NULL, &x.shape[axis], &dims));
        KC_TRY(normalise_indices(c, n, &idx, &dims));
        KC_TRY(const_i64(c, 0, NULL, &stride[axis], &st));
        KC_TRY(kc_binary(c, n, KP_B_MUL, &idx, &st, &idx));
        KC_TRY(kc_binary(c, n, KP_B_ADD, &idx, &t, &t));
    }
    return gather_rows(c, n, &x, kc_numel(&x), &t);
}

kiln_status kc_lower_gather_nd(kc_ctx *c, const kg_node *n)
{
    kc_val x, idx, dims, st, flat;
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_arg(c, n, 1, &idx));
    if (idx.dt != KILN_I64 && idx.dt != KILN_I32)
        return kc_fail(c, n, KILN_ERR_SHAPE, "indices must be i64");
    int64_t b = kg_attr_int(n, "batch_dims", 0);
    int k = idx.ndim ? (int)idx.shape[idx.ndim - 1] : -1;
    if (idx.ndim < 1 || b < 0 || b >= idx.ndim || k < 1 || b + k > x.ndim)
        return kc_fail(c, n, KILN_ERR_SHAPE, "indices do not fit data (batch_dims %lld)", (long long)b);
    for (int d = 0; d < b; d++)
        if (idx.shape[d] != x.shape[d])
            return kc_fail(c, n, KILN_ERR_SHAPE, "batch dim %d differs", d);
    /* flat row of [batch..., k indexed dims] = batch_offset + sum_j idx_j * stride_j */
    int64_t dimv[KILN_MAX_DIMS], strv[KILN_MAX_DIMS], inner = 1, rows = 1;
    for (int j = k - 1; j >= 0; j--) {
        dimv[j] = x.shape[b + j];
        strv[j] = inner;
        inner *= dimv[j];
    }
    for (int d = 0; d < b + k; d++)
        rows *= x.shape[d];
    int64_t kk = k;
    KC_TRY(const_i64(c, 1, &kk, dimv, &dims));
    KC_TRY(const_i64(c, 1, &kk, strv, &st));
    KC_TRY(normalise_indices(c, n, &idx, &dims));
    KC_TRY(kc_binary(c, n, KP_B_MUL, &idx, &st, &idx));
    int64_t ia[2] = {1, idx.ndim - 1};
    KC_TRY(kc_emit1(c, n, KP_REDUCE, KP_R_SUM, &idx.id, 1, KILN_I64, idx.ndim - 1, idx.shape, ia, 2,
                    NULL, 0, &flat));
    if (b > 0) {
        /* batch offsets: shape [batch..., 1 for each other index dim] */
        int64_t bn = kiln__numel((int)b, x.shape), shape[KILN_MAX_DIMS];
        int64_t *off = kiln__malloc((size_t)bn * sizeof *off);
        kc_val bo;
        if (!off)
            return kiln__fail(KILN_ERR_NOMEM, "out of memory for GatherND");
        for (int64_t i = 0; i < bn; i++)
            off[i] = i * inner;
        for (int d = 0; d < flat.ndim; d++)
            shape[d] = d < b ? x.shape[d] : 1;
        kiln_status s = const_i64(c, flat.ndim, shape, off, &bo);
        kiln__free(off);
        KC_TRY(s);
        KC_TRY(kc_binary(c, n, KP_B_ADD, &flat, &bo, &flat));
    }
    return gather_rows(c, n, &x, rows, &flat);
}
