/*
 * ref_scatter.c — the reference kernel of KP_SCATTER: ScatterElements and ScatterND with
 * indices known only at run time (a decoder writing this step's keys and values into a
 * static cache at a position it is given). Y starts as a copy of Data; updates are written
 * in order (a repeated index keeps the last). An index out of range fails the run.
 */
#include "kernels/ref.h"

typedef struct scatter_k {
    kk_kernel base;
    bool nd, idx64;
    int axis, nd_x, k;                  /* k: ScatterND's index depth */
    size_t es, bytes;
    int64_t xs[KILN_MAX_DIMS], st[KILN_MAX_DIMS];   /* Data's shape and element strides */
    int64_t is[KILN_MAX_DIMS];          /* ScatterElements: the indices' (= updates') shape */
    int64_t n_idx, block;               /* updates (ScatterND: rows of `block` elements) */
    const char *x, *u;
    const void *idx;
    char *y;
} scatter_k;

static inline int64_t load_index(const scatter_k *k, int64_t i)
{
    return k->idx64 ? ((const int64_t *)k->idx)[i] : ((const int32_t *)k->idx)[i];
}

static kiln_status scatter_run(kk_kernel *kk)
{
    scatter_k *k = (scatter_k *)kk;
    if (k->y != k->x)
        memcpy(k->y, k->x, k->bytes);
    if (k->nd) {
        for (int64_t b = 0; b < k->n_idx; b++) {
            int64_t off = 0;
            for (int d = 0; d < k->k; d++) {
                int64_t v = load_index(k, b * k->k + d), D = k->xs[d];
                if (v < -D || v >= D)
                    return kr_fail(k->base.prog, k->base.op, KILN_ERR_ARG,
                                   "index %lld out of range for axis %d of size %lld",
                                   (long long)v, d, (long long)D);
                off += (v < 0 ? v + D : v) * k->st[d];
            }
            memcpy(k->y + (size_t)off * k->es, k->u + (size_t)(b * k->block) * k->es,
                   (size_t)k->block * k->es);
        }
        return KILN_OK;
    }
    int64_t co[KILN_MAX_DIMS] = {0};
    const int64_t D = k->xs[k->axis];
    for (int64_t e = 0; e < k->n_idx; e++) {
        int64_t v = load_index(k, e);
        if (v < -D || v >= D)
            return kr_fail(k->base.prog, k->base.op, KILN_ERR_ARG,
                           "index %lld out of range for axis %d of size %lld", (long long)v,
                           k->axis, (long long)D);
        int64_t off = 0;
        for (int d = 0; d < k->nd_x; d++)
            off += (d == k->axis ? (v < 0 ? v + D : v) : co[d]) * k->st[d];
        memcpy(k->y + (size_t)off * k->es, k->u + (size_t)e * k->es, k->es);
        for (int d = k->nd_x - 1; d >= 0; d--) {            /* next update coordinate */
            if (++co[d] < k->is[d])
                break;
            co[d] = 0;
        }
    }
    return KILN_OK;
}

kiln_status kr_check_scatter(const kr_op *o)
{
    const kp_op *op = o->op;
    if (op->n_in != 3 || op->n_out != 1 || !kr_in(o, 0) || !kr_in(o, 1) || !kr_in(o, 2) ||
        !kr_out(o, 0))
        return kr_bad(o, "expects 3 inputs and 1 output");
    if (op->sub > 1)
        return kr_bad(o, "unknown variant %u", op->sub);
    if (op->n_ia != 1 || op->n_fa != 0)
        return kr_bad(o, "expects 1 int attribute (axis)");
    const kp_value *x = kr_in(o, 0), *i = kr_in(o, 1), *u = kr_in(o, 2), *y = kr_out(o, 0);
    if (u->dtype != x->dtype || y->dtype != x->dtype || !kr_same_shape(x, y))
        return kr_bad(o, "data, updates and output must agree");
    if (i->dtype != KILN_I64 && i->dtype != KILN_I32)
        return kr_bad(o, "indices must be i32 or i64");
    if (op->sub == 0) {
        int64_t axis = o->ia[0];
        if (x->ndim < 1 || axis < 0 || axis >= x->ndim)
            return kr_bad(o, "axis %lld out of range for rank %d", (long long)axis, x->ndim);
        if (!kr_same_shape(i, u) || i->ndim != x->ndim)
            return kr_bad(o, "indices and updates must have data's rank and one shape");
        for (int d = 0; d < x->ndim; d++)
            if (d != axis && i->shape[d] > x->shape[d])
                return kr_bad(o, "indices exceed data on axis %d", d);
        return KILN_OK;
    }
    int k = i->ndim ? (int)i->shape[i->ndim - 1] : 0;
    bool ok = i->ndim >= 1 && k >= 1 && k <= x->ndim && u->ndim == i->ndim - 1 + x->ndim - k;
    for (int d = 0; ok && d < u->ndim; d++)
        ok = u->shape[d] == (d < i->ndim - 1 ? i->shape[d] : x->shape[k + d - (i->ndim - 1)]);
    return ok ? KILN_OK : kr_bad(o, "indices and updates do not fit data");
}

kiln_status kr_create_scatter(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    scatter_k *k = kr_kernel_new(o, sizeof *k, scatter_run);
    if (!k)
        return KILN_ERR_NOMEM;
    const kp_value *x = kr_in(o, 0), *i = kr_in(o, 1);
    k->nd = o->op->sub == 1;
    k->idx64 = i->dtype == KILN_I64;
    k->axis = (int)o->ia[0];
    k->nd_x = x->ndim;
    k->es = kr_esize(x->dtype);
    k->bytes = (size_t)kr_numel(x) * k->es;
    memcpy(k->xs, x->shape, sizeof k->xs);
    kr_strides(x->ndim, x->shape, k->st);
    memcpy(k->is, i->shape, sizeof k->is);
    if (k->nd) {
        k->k = (int)i->shape[i->ndim - 1];
        k->n_idx = kr_prod(i->shape, 0, i->ndim - 1);
        k->block = kr_prod(x->shape, k->k, x->ndim);
    } else {
        k->n_idx = kr_numel(i);
    }
    k->x = ptr[o->in[0]];
    k->idx = ptr[o->in[1]];
    k->u = ptr[o->in[2]];
    k->y = ptr[o->out[0]];
    *out = &k->base;
    return KILN_OK;
}
