/*
 * ref_shape.c — reference kernels for the data-movement op kinds, any dtype: Gather,
 * Transpose, Slice, Concat, Split, Copy, Expand, Tile, Pad (constant/reflect/edge/wrap)
 * and DepthToSpace/SpaceToDepth. Most are one strided copy (kr_copy) or one set of
 * per-dim index maps (kr_map) worked out at create time.
 */
#include "kernels/ref.h"

/* ---- a kernel that is one strided copy ---- */

typedef struct copy_k {
    kk_kernel base;
    kr_copy plan;
    const char *x;      /* already offset to the first element read */
    char *y;
} copy_k;

static kiln_status copy_run(kk_kernel *kk)
{
    copy_k *k = (copy_k *)kk;
    kr_copy_run(&k->plan, k->x, k->y);
    return KILN_OK;
}

/* Y (dense, shape n[0..nd)) from X at element offset x_off with element strides ss. */
static kiln_status make_copy(const kr_op *o, void *const *ptr, int nd, const int64_t *n,
                             const int64_t *ss, int64_t x_off, kk_kernel **out)
{
    copy_k *k = kr_kernel_new(o, sizeof *k, copy_run);
    if (!k)
        return KILN_ERR_NOMEM;
    const kp_value *y = kr_out(o, 0);
    size_t es = kr_esize(y->dtype);
    int64_t ds[KR_COPY_MAXD];
    kr_strides(nd, n, ds);
    kr_copy_init(&k->plan, nd, n, ss, ds, es);
    k->x = (const char *)ptr[o->in[0]] + x_off * (int64_t)es;
    k->y = ptr[o->out[0]];
    *out = &k->base;
    return KILN_OK;
}

/* The usual one-in, one-out, same-dtype frame. */
static kiln_status check_unary_frame(const kr_op *o, int n_ia, int n_fa)
{
    const kp_op *op = o->op;
    if (op->n_in != 1 || op->n_out != 1 || !kr_in(o, 0) || !kr_out(o, 0))
        return kr_bad(o, "expects 1 input and 1 output");
    if (op->n_ia != (uint32_t)n_ia || op->n_fa != (uint32_t)n_fa)
        return kr_bad(o, "expects %d int and %d float attributes, got %u and %u", n_ia, n_fa,
                      op->n_ia, op->n_fa);
    if (kr_in(o, 0)->dtype != kr_out(o, 0)->dtype)
        return kr_bad(o, "input dtype %s and output dtype %s differ",
                      kr_dtname(kr_in(o, 0)->dtype), kr_dtname(kr_out(o, 0)->dtype));
    return KILN_OK;
}

/* ================================ Gather ================================ */

typedef struct gather_k {
    kk_kernel base;
    const char *x;
    const void *idx;
    char *y;
    bool idx64;
    int axis;
    int64_t outer, dim, inner, nidx;
    size_t es;
} gather_k;

static kiln_status gather_run(kk_kernel *kk)
{
    gather_k *k = (gather_k *)kk;
    const int64_t D = k->dim, n = k->nidx;
    for (int64_t j = 0; j < n; j++) {
        int64_t v = k->idx64 ? ((const int64_t *)k->idx)[j] : ((const int32_t *)k->idx)[j];
        if (v < -D || v >= D)
            return kr_fail(k->base.prog, k->base.op, KILN_ERR_ARG,
                           "index %lld out of range for axis %d of size %lld", (long long)v,
                           k->axis, (long long)D);
    }
    const size_t row = (size_t)k->inner * k->es;
    char *y = k->y;
    for (int64_t o = 0; o < k->outer; o++) {
        const char *x = k->x + (size_t)(o * D) * row;
        for (int64_t j = 0; j < n; j++, y += row) {
            int64_t v = k->idx64 ? ((const int64_t *)k->idx)[j] : ((const int32_t *)k->idx)[j];
            if (v < 0)
                v += D;
            memcpy(y, x + (size_t)v * row, row);
        }
    }
    return KILN_OK;
}

kiln_status kr_check_gather(const kr_op *o)
{
    const kp_op *op = o->op;
    if (op->n_in != 2 || op->n_out != 1 || !kr_in(o, 0) || !kr_in(o, 1) || !kr_out(o, 0))
        return kr_bad(o, "expects 2 inputs and 1 output");
    if (op->n_ia != 1 || op->n_fa != 0)
        return kr_bad(o, "expects 1 int attribute (axis)");
    const kp_value *x = kr_in(o, 0), *ix = kr_in(o, 1), *y = kr_out(o, 0);
    int64_t axis = o->ia[0];
    if (x->ndim < 1 || axis < 0 || axis >= x->ndim)
        return kr_bad(o, "axis %lld out of range for rank %d", (long long)axis, x->ndim);
    if (ix->dtype != KILN_I32 && ix->dtype != KILN_I64)
        return kr_bad(o, "indices dtype %s not supported", kr_dtname(ix->dtype));
    if (y->dtype != x->dtype)
        return kr_bad(o, "output dtype differs from the data's");
    if (y->ndim != x->ndim - 1 + ix->ndim)
        return kr_bad(o, "output rank %d, expected %d", y->ndim, x->ndim - 1 + ix->ndim);
    int a = (int)axis, d = 0;
    for (int i = 0; i < a; i++)
        if (y->shape[d++] != x->shape[i])
            return kr_bad(o, "output shape does not match");
    for (int i = 0; i < ix->ndim; i++)
        if (y->shape[d++] != ix->shape[i])
            return kr_bad(o, "output shape does not match");
    for (int i = a + 1; i < x->ndim; i++)
        if (y->shape[d++] != x->shape[i])
            return kr_bad(o, "output shape does not match");
    return KILN_OK;
}

kiln_status kr_create_gather(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    gather_k *k = kr_kernel_new(o, sizeof *k, gather_run);
    if (!k)
        return KILN_ERR_NOMEM;
    const kp_value *x = kr_in(o, 0), *ix = kr_in(o, 1);
    k->axis = (int)o->ia[0];
    k->outer = kr_prod(x->shape, 0, k->axis);
    k->dim = x->shape[k->axis];
    k->inner = kr_prod(x->shape, k->axis + 1, x->ndim);
    k->nidx = kr_numel(ix);
    k->idx64 = ix->dtype == KILN_I64;
    k->es = kr_esize(x->dtype);
    k->x = ptr[o->in[0]];
    k->idx = ptr[o->in[1]];
    k->y = ptr[o->out[0]];
    *out = &k->base;
    return KILN_OK;
}

/* ================================ Transpose ================================ */

kiln_status kr_check_transpose(const kr_op *o)
{
    const kp_value *x = kr_in(o, 0);
    kiln_status s = check_unary_frame(o, x ? x->ndim : 0, 0);
    if (s != KILN_OK)
        return s;
    const kp_value *y = kr_out(o, 0);
    if (y->ndim != x->ndim)
        return kr_bad(o, "output rank differs from the input's");
    bool seen[KILN_MAX_DIMS] = {false};
    for (int d = 0; d < x->ndim; d++) {
        int64_t p = o->ia[d];
        if (p < 0 || p >= x->ndim || seen[p])
            return kr_bad(o, "perm is not a permutation");
        seen[p] = true;
        if (y->shape[d] != x->shape[p])
            return kr_bad(o, "output shape does not match the permutation");
    }
    return KILN_OK;
}

kiln_status kr_create_transpose(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    const kp_value *x = kr_in(o, 0), *y = kr_out(o, 0);
    int64_t xs[KILN_MAX_DIMS], ss[KILN_MAX_DIMS];
    kr_strides(x->ndim, x->shape, xs);
    for (int d = 0; d < x->ndim; d++)
        ss[d] = xs[o->ia[d]];
    return make_copy(o, ptr, y->ndim, y->shape, ss, 0, out);
}

/* ================================ Slice ================================ */

kiln_status kr_check_slice(const kr_op *o)
{
    const kp_value *x = kr_in(o, 0);
    kiln_status s = check_unary_frame(o, x ? 2 * x->ndim : 0, 0);
    if (s != KILN_OK)
        return s;
    const kp_value *y = kr_out(o, 0);
    if (y->ndim != x->ndim)
        return kr_bad(o, "output rank differs from the input's");
    if (kr_numel(y) == 0)
        return KILN_OK;
    for (int d = 0; d < x->ndim; d++) {
        int64_t start = o->ia[d], step = o->ia[x->ndim + d], n = y->shape[d];
        if (step == 0)
            return kr_bad(o, "step 0 on axis %d", d);
        if (start < 0 || start >= x->shape[d])
            return kr_bad(o, "start %lld outside axis %d of size %lld", (long long)start, d,
                          (long long)x->shape[d]);
        /* the last element read must be inside too (overflow-safe for sane sizes) */
        if (n > x->shape[d] && (step == 1 || step == -1))
            return kr_bad(o, "slice of axis %d runs past its end", d);
        double last = (double)start + (double)(n - 1) * (double)step;
        if (last < 0 || last >= (double)x->shape[d])
            return kr_bad(o, "slice of axis %d runs past its end", d);
    }
    return KILN_OK;
}

kiln_status kr_create_slice(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    const kp_value *x = kr_in(o, 0), *y = kr_out(o, 0);
    int64_t xs[KILN_MAX_DIMS], ss[KILN_MAX_DIMS], off = 0;
    kr_strides(x->ndim, x->shape, xs);
    bool empty = kr_numel(y) == 0;
    for (int d = 0; d < x->ndim; d++) {
        ss[d] = o->ia[x->ndim + d] * xs[d];
        if (!empty)
            off += o->ia[d] * xs[d];
    }
    return make_copy(o, ptr, y->ndim, y->shape, ss, off, out);
}

/* ================================ Concat / Split ================================ */

/* Concat: Y's rows are the inputs' rows side by side along axis; Split the reverse. */
typedef struct part {
    char *p;                /* input (Concat) or output (Split) */
    size_t bytes;           /* of one outer row of this part */
} part;

typedef struct concat_k {
    kk_kernel base;
    int n;
    int64_t outer;
    size_t row;             /* bytes of one outer row of the whole tensor */
    char *whole;            /* Y (Concat) or X (Split) */
    bool split;
    part parts[];
} concat_k;

static kiln_status concat_run(kk_kernel *kk)
{
    concat_k *k = (concat_k *)kk;
    for (int64_t o = 0; o < k->outer; o++) {
        char *w = k->whole + (size_t)o * k->row;
        for (int i = 0; i < k->n; i++) {
            char *q = k->parts[i].p + (size_t)o * k->parts[i].bytes;
            if (k->split)
                memcpy(q, w, k->parts[i].bytes);
            else
                memcpy(w, q, k->parts[i].bytes);
            w += k->parts[i].bytes;
        }
    }
    return KILN_OK;
}

/* whole: the tensor with the full axis; parts: n_parts values cut along axis. */
static kiln_status check_parts(const kr_op *o, const kp_value *whole, int first, int n_parts,
                               bool outputs)
{
    const kp_op *op = o->op;
    if (op->n_ia != 1 || op->n_fa != 0)
        return kr_bad(o, "expects 1 int attribute (axis)");
    int64_t axis = o->ia[0];
    if (whole->ndim < 1 || axis < 0 || axis >= whole->ndim)
        return kr_bad(o, "axis %lld out of range for rank %d", (long long)axis, whole->ndim);
    int64_t sum = 0;
    for (int i = 0; i < n_parts; i++) {
        const kp_value *v = outputs ? kr_out(o, first + i) : kr_in(o, first + i);
        if (!v)
            return kr_bad(o, "%s %d missing", outputs ? "output" : "input", first + i);
        if (v->dtype != whole->dtype)
            return kr_bad(o, "dtypes differ");
        if (v->ndim != whole->ndim)
            return kr_bad(o, "ranks differ");
        for (int d = 0; d < v->ndim; d++)
            if (d != axis && v->shape[d] != whole->shape[d])
                return kr_bad(o, "shapes differ outside the axis");
        sum += v->shape[axis];
    }
    if (sum != whole->shape[axis])
        return kr_bad(o, "parts add up to %lld along the axis, not %lld", (long long)sum,
                      (long long)whole->shape[axis]);
    return KILN_OK;
}

kiln_status kr_check_concat(const kr_op *o)
{
    if (o->op->n_in < 1 || o->op->n_out != 1 || !kr_out(o, 0))
        return kr_bad(o, "expects inputs and 1 output");
    return check_parts(o, kr_out(o, 0), 0, o->op->n_in, false);
}

kiln_status kr_check_split(const kr_op *o)
{
    if (o->op->n_in != 1 || o->op->n_out < 1 || !kr_in(o, 0))
        return kr_bad(o, "expects 1 input and outputs");
    return check_parts(o, kr_in(o, 0), 0, o->op->n_out, true);
}

static kiln_status create_parts(const kr_op *o, void *const *ptr, bool split, kk_kernel **out)
{
    int n = split ? o->op->n_out : o->op->n_in;
    concat_k *k = kr_kernel_new(o, sizeof *k + (size_t)n * sizeof(part), concat_run);
    if (!k)
        return KILN_ERR_NOMEM;
    const kp_value *whole = split ? kr_in(o, 0) : kr_out(o, 0);
    int axis = (int)o->ia[0];
    size_t es = kr_esize(whole->dtype);
    int64_t inner = kr_prod(whole->shape, axis + 1, whole->ndim);
    k->n = n;
    k->split = split;
    k->outer = kr_prod(whole->shape, 0, axis);
    k->row = (size_t)(whole->shape[axis] * inner) * es;
    k->whole = ptr[split ? o->in[0] : o->out[0]];
    for (int i = 0; i < n; i++) {
        const kp_value *v = split ? kr_out(o, i) : kr_in(o, i);
        k->parts[i].p = ptr[split ? o->out[i] : o->in[i]];
        k->parts[i].bytes = (size_t)(v->shape[axis] * inner) * es;
    }
    *out = &k->base;
    return KILN_OK;
}

kiln_status kr_create_concat(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    return create_parts(o, ptr, false, out);
}

kiln_status kr_create_split(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    return create_parts(o, ptr, true, out);
}

/* ================================ Copy ================================ */

typedef struct bytes_k {
    kk_kernel base;
    const void *x;
    void *y;
    size_t n;
} bytes_k;

static kiln_status bytes_run(kk_kernel *kk)
{
    bytes_k *k = (bytes_k *)kk;
    if (k->x != k->y)
        memmove(k->y, k->x, k->n);
    return KILN_OK;
}

kiln_status kr_check_copy(const kr_op *o)
{
    const kp_op *op = o->op;
    if (op->n_in != 1 || op->n_out != 1 || !kr_in(o, 0) || !kr_out(o, 0))
        return kr_bad(o, "expects 1 input and 1 output");
    if (op->n_ia || op->n_fa)
        return kr_bad(o, "unexpected attributes");
    const kp_value *x = kr_in(o, 0), *y = kr_out(o, 0);
    if ((uint64_t)kr_numel(x) * kr_esize(x->dtype) != (uint64_t)kr_numel(y) * kr_esize(y->dtype))
        return kr_bad(o, "input and output sizes differ");
    return KILN_OK;
}

kiln_status kr_create_copy(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    bytes_k *k = kr_kernel_new(o, sizeof *k, bytes_run);
    if (!k)
        return KILN_ERR_NOMEM;
    const kp_value *y = kr_out(o, 0);
    k->x = ptr[o->in[0]];
    k->y = ptr[o->out[0]];
    k->n = (size_t)kr_numel(y) * kr_esize(y->dtype);
    *out = &k->base;
    return KILN_OK;
}

/* ================================ Expand / Tile ================================ */

kiln_status kr_check_expand(const kr_op *o)
{
    kiln_status s = check_unary_frame(o, 0, 0);
    if (s != KILN_OK)
        return s;
    const kp_value *x = kr_in(o, 0), *y = kr_out(o, 0);
    if (!kr_bcast_ok(1, &x, y->ndim, y->shape))
        return kr_bad(o, "input does not broadcast to the output shape");
    return KILN_OK;
}

kiln_status kr_create_expand(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    const kp_value *x = kr_in(o, 0), *y = kr_out(o, 0);
    int64_t ss[KILN_MAX_DIMS], s = 1;
    for (int d = y->ndim - 1; d >= 0; d--) {
        int xd = d - (y->ndim - x->ndim);
        int64_t n = xd >= 0 ? x->shape[xd] : 1;
        ss[d] = n == 1 ? 0 : s;
        s *= n;
    }
    return make_copy(o, ptr, y->ndim, y->shape, ss, 0, out);
}

kiln_status kr_check_tile(const kr_op *o)
{
    kiln_status s = check_unary_frame(o, 0, 0);
    if (s != KILN_OK)
        return s;
    const kp_value *x = kr_in(o, 0), *y = kr_out(o, 0);
    if (y->ndim != x->ndim)
        return kr_bad(o, "output rank differs from the input's");
    for (int d = 0; d < x->ndim; d++) {
        int64_t a = x->shape[d], b = y->shape[d];
        if (a == 0 ? b != 0 : b % a != 0)
            return kr_bad(o, "output extent %lld is not a multiple of %lld on axis %d",
                          (long long)b, (long long)a, d);
    }
    return KILN_OK;
}

kiln_status kr_create_tile(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    /* Y's axis d of extent r*n is the pair (repeat r, element n): C order over the pairs. */
    const kp_value *x = kr_in(o, 0), *y = kr_out(o, 0);
    int64_t xs[KILN_MAX_DIMS], n[KR_COPY_MAXD], ss[KR_COPY_MAXD];
    kr_strides(x->ndim, x->shape, xs);
    int nd = 0;
    for (int d = 0; d < x->ndim; d++) {
        int64_t e = x->shape[d];
        n[nd] = e ? y->shape[d] / e : 0;
        ss[nd++] = 0;
        n[nd] = e;
        ss[nd++] = xs[d];
    }
    return make_copy(o, ptr, nd, n, ss, 0, out);
}

/* ================================ Pad ================================ */

typedef struct map_k {
    kk_kernel base;
    kr_map map;
    const void *x;
    void *y;
} map_k;

static kiln_status map_run(kk_kernel *kk)
{
    map_k *k = (map_k *)kk;
    kr_map_run(&k->map, k->x, k->y);
    return KILN_OK;
}

static void map_destroy(kk_kernel *kk)
{
    map_k *k = (map_k *)kk;
    kr_map_free(&k->map);
    kiln__free(k);
}

kiln_status kr_check_pad(const kr_op *o)
{
    const kp_value *x = kr_in(o, 0);
    kiln_status s = check_unary_frame(o, x ? 2 * x->ndim : 0, 1);
    if (s != KILN_OK)
        return s;
    const kp_value *y = kr_out(o, 0);
    if (o->op->sub > KP_PAD_WRAP)
        return kr_bad(o, "unknown pad mode %u", o->op->sub);
    if (y->ndim != x->ndim)
        return kr_bad(o, "output rank differs from the input's");
    for (int d = 0; d < x->ndim; d++) {
        int64_t pb = o->ia[d], pe = o->ia[x->ndim + d], n = x->shape[d];
        if (pb < -n || pe < -n || pb > (INT64_MAX >> 2) || pe > (INT64_MAX >> 2) ||
            n + pb + pe != y->shape[d])
            return kr_bad(o, "pads do not give the output extent on axis %d", d);
        int64_t kept = n - (pb < 0 ? -pb : 0) - (pe < 0 ? -pe : 0);
        if (kept < 0)
            return kr_bad(o, "pads crop more than axis %d holds", d);
        if (kept == 0 && y->shape[d] > 0 && o->op->sub != KP_PAD_CONSTANT)
            return kr_bad(o, "cannot pad an empty axis %d in this mode", d);
    }
    return KILN_OK;
}

kiln_status kr_create_pad(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    const kp_value *x = kr_in(o, 0), *y = kr_out(o, 0);
    map_k *k = kr_kernel_new(o, sizeof *k, map_run);
    if (!k)
        return KILN_ERR_NOMEM;
    k->base.destroy = map_destroy;
    kiln_status s = kr_map_alloc(&k->map, y->ndim, y->shape, kr_esize(y->dtype));
    if (s != KILN_OK) {
        kiln__free(k);
        return s;
    }
    int64_t xs[KILN_MAX_DIMS];
    kr_strides(x->ndim, x->shape, xs);
    int mode = o->op->sub;
    for (int d = 0; d < y->ndim; d++) {
        int64_t pb = o->ia[d], pe = o->ia[x->ndim + d];
        int64_t lo = pb < 0 ? -pb : 0;
        int64_t kept = x->shape[d] - lo - (pe < 0 ? -pe : 0);
        int64_t shift = pb > 0 ? pb : 0;
        for (int64_t i = 0; i < y->shape[d]; i++) {
            int64_t j = i - shift;   /* index into the kept part of X */
            if (j < 0 || j >= kept) {
                switch (mode) {
                case KP_PAD_CONSTANT:
                    j = -1;
                    break;
                case KP_PAD_EDGE:
                    j = j < 0 ? 0 : kept - 1;
                    break;
                case KP_PAD_WRAP:
                    j = ((j % kept) + kept) % kept;
                    break;
                default: /* reflect, without repeating the edge */
                    if (kept == 1) {
                        j = 0;
                    } else {
                        int64_t period = 2 * (kept - 1);
                        j = ((j % period) + period) % period;
                        if (j >= kept)
                            j = period - j;
                    }
                }
            }
            k->map.off[d][i] = j < 0 ? -1 : (lo + j) * xs[d];
        }
    }
    kr_map_finish(&k->map);
    kr_store_f64(k->map.fill, y->dtype, 0, o->fa[0]);
    k->x = ptr[o->in[0]];
    k->y = ptr[o->out[0]];
    *out = &k->base;
    return KILN_OK;
}

/* ================================ DepthToSpace / SpaceToDepth ================================ */

kiln_status kr_check_depth_space(const kr_op *o)
{
    kiln_status s = check_unary_frame(o, 1, 0);
    if (s != KILN_OK)
        return s;
    const kp_value *x = kr_in(o, 0), *y = kr_out(o, 0);
    int64_t b = o->ia[0];
    if (o->op->sub > 2)
        return kr_bad(o, "unknown mode %u", o->op->sub);
    if (x->ndim != 4 || y->ndim != 4)
        return kr_bad(o, "expects 4-D input and output");
    if (b < 1 || b > 65536)
        return kr_bad(o, "blocksize %lld", (long long)b);
    const int64_t *xs = x->shape, *ys = y->shape;
    bool ok;
    if (o->op->sub < 2)
        ok = xs[1] % (b * b) == 0 && ys[0] == xs[0] && ys[1] == xs[1] / (b * b) &&
             ys[2] == xs[2] * b && ys[3] == xs[3] * b;
    else
        ok = xs[2] % b == 0 && xs[3] % b == 0 && ys[0] == xs[0] && ys[1] == xs[1] * b * b &&
             ys[2] == xs[2] / b && ys[3] == xs[3] / b;
    if (!ok)
        return kr_bad(o, "shapes do not match blocksize %lld", (long long)b);
    return KILN_OK;
}

kiln_status kr_create_depth_space(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    const kp_value *x = kr_in(o, 0);
    int64_t b = o->ia[0], N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    int64_t HW = H * W, CHW = C * HW;
    int64_t n[6], ss[6];
    if (o->op->sub < 2) {
        int64_t Cp = C / (b * b);
        /* Y viewed as [N, C', H, b, W, b] */
        int64_t dims[6] = {N, Cp, H, b, W, b};
        memcpy(n, dims, sizeof n);
        if (o->op->sub == 0) { /* DCR: X is [N, b, b, C', H, W] */
            int64_t st[6] = {CHW, HW, W, b * Cp * HW, 1, Cp * HW};
            memcpy(ss, st, sizeof ss);
        } else {               /* CRD: X is [N, C', b, b, H, W] */
            int64_t st[6] = {CHW, b * b * HW, W, b * HW, 1, HW};
            memcpy(ss, st, sizeof ss);
        }
    } else {
        /* X viewed as [N, C, H', b, W', b]; Y is [N, b, b, C, H', W'] */
        int64_t Hp = H / b, Wp = W / b;
        int64_t dims[6] = {N, b, b, C, Hp, Wp};
        int64_t st[6] = {CHW, W, 1, HW, b * W, b};
        memcpy(n, dims, sizeof n);
        memcpy(ss, st, sizeof ss);
    }
    return make_copy(o, ptr, 6, n, ss, 0, out);
}
