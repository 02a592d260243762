/*
 * ref_topk.c — the reference kernel of KP_TOPK: the k largest (or smallest) elements along
 * one axis with their indices, best first. Ties keep the lower index first; NaN counts as
 * larger than every number (as torch.topk and torch.sort order it): first among the
 * largest, last among the smallest.
 */
#include "kernels/ref.h"

typedef struct topk_k {
    kk_kernel base;
    bool smallest;
    int dt;
    int64_t outer, dim, inner, k;
    const void *x;
    void *vals;
    int64_t *idx;
    int64_t *heap;                  /* k candidate indices into the current slice */
    void *slice;                    /* the slice along the axis, contiguous */
} topk_k;

/* BEFORE(a, b): element a ranks before element b (values va, vb; indices ia, ib). */
#define TK_NAN_F(v) ((v) != (v))
#define TK_NAN_I(v) 0
#define TK_BEFORE(ISNAN, va, ia, vb, ib)                                                       \
    (ISNAN(va) ? (ISNAN(vb) ? (ia) < (ib) : !smallest)                                         \
               : ISNAN(vb) ? smallest                                                          \
               : (smallest ? (va) < (vb) : (va) > (vb)) || ((va) == (vb) && (ia) < (ib)))

/* A heap of k indices whose root is the worst candidate kept so far; each slice element
 * that ranks before the root replaces it. Then the k kept are sorted best first. */
#define TOPK_FN(T, SUF, ISNAN)                                                                 \
    static void topk_##SUF(const topk_k *t)                                                    \
    {                                                                                          \
        const bool smallest = t->smallest;                                                     \
        const int64_t D = t->dim, inner = t->inner, K = t->k;                                  \
        int64_t *h = t->heap;                                                                  \
        T *s = t->slice;                                                                       \
        for (int64_t o = 0; o < t->outer; o++)                                                 \
            for (int64_t j = 0; j < inner; j++) {                                              \
                const T *x = (const T *)t->x + o * D * inner + j;                              \
                for (int64_t a = 0; a < D; a++)                                                \
                    s[a] = x[a * inner];                                                       \
                int64_t n = 0;                                                                 \
                for (int64_t a = 0; a < D; a++) {                                              \
                    if (n == K) {                                                              \
                        if (!TK_BEFORE(ISNAN, s[a], a, s[h[0]], h[0]))                         \
                            continue;                                                          \
                        h[0] = a;                       /* replace the worst, sift down */     \
                        for (int64_t i = 0;;) {                                                \
                            int64_t l = 2 * i + 1, r = l + 1, w = i;                           \
                            if (l < n && TK_BEFORE(ISNAN, s[h[w]], h[w], s[h[l]], h[l]))       \
                                w = l;                                                         \
                            if (r < n && TK_BEFORE(ISNAN, s[h[w]], h[w], s[h[r]], h[r]))       \
                                w = r;                                                         \
                            if (w == i)                                                        \
                                break;                                                         \
                            int64_t tmp = h[i];                                                \
                            h[i] = h[w];                                                       \
                            h[w] = tmp;                                                        \
                            i = w;                                                             \
                        }                                                                      \
                        continue;                                                              \
                    }                                                                          \
                    int64_t i = n++;                    /* push, sift up */                    \
                    h[i] = a;                                                                  \
                    while (i > 0) {                                                            \
                        int64_t p = (i - 1) / 2;                                               \
                        if (!TK_BEFORE(ISNAN, s[h[p]], h[p], s[h[i]], h[i]))                   \
                            break;                                                             \
                        int64_t tmp = h[i];                                                    \
                        h[i] = h[p];                                                           \
                        h[p] = tmp;                                                            \
                        i = p;                                                                 \
                    }                                                                          \
                }                                                                              \
                /* pop the worst to the back: the array ends sorted best first */              \
                for (int64_t m = n - 1; m > 0; m--) {                                          \
                    int64_t tmp = h[0];                                                        \
                    h[0] = h[m];                                                               \
                    h[m] = tmp;                                                                \
                    for (int64_t i = 0;;) {                                                    \
                        int64_t l = 2 * i + 1, r = l + 1, w = i;                               \
                        if (l < m && TK_BEFORE(ISNAN, s[h[w]], h[w], s[h[l]], h[l]))           \
                            w = l;                                                             \
                        if (r < m && TK_BEFORE(ISNAN, s[h[w]], h[w], s[h[r]], h[r]))           \
                            w = r;                                                             \
                        if (w == i)                                                            \
                            break;                                                             \
                        int64_t t2 = h[i];                                                     \
                        h[i] = h[w];                                                           \
                        h[w] = t2;                                                             \
                        i = w;                                                                 \
                    }                                                                          \
                }                                                                              \
                T *yv = (T *)t->vals + o * K * inner + j;                                      \
                int64_t *yi = t->idx + o * K * inner + j;                                      \
                for (int64_t m = 0; m < K; m++) {                                              \
                    yv[m * inner] = s[h[m]];                                                   \
                    yi[m * inner] = h[m];                                                      \
                }                                                                              \
            }                                                                                  \
    }
TOPK_FN(float, f32, TK_NAN_F)
TOPK_FN(double, f64, TK_NAN_F)
TOPK_FN(int8_t, i8, TK_NAN_I)
TOPK_FN(uint8_t, u8, TK_NAN_I)
TOPK_FN(int32_t, i32, TK_NAN_I)
TOPK_FN(int64_t, i64, TK_NAN_I)

static kiln_status topk_run(kk_kernel *kk)
{
    topk_k *t = (topk_k *)kk;
    switch (t->dt) {
    case KILN_F32: topk_f32(t); break;
    case KILN_F64: topk_f64(t); break;
    case KILN_I8: topk_i8(t); break;
    case KILN_U8: topk_u8(t); break;
    case KILN_I32: topk_i32(t); break;
    case KILN_I64: topk_i64(t); break;
    }
    return KILN_OK;
}

static void topk_destroy(kk_kernel *kk)
{
    topk_k *t = (topk_k *)kk;
    kiln__free(t->heap);
    kiln__free(t->slice);
    kiln__free(t);
}

kiln_status kr_check_topk(const kr_op *o)
{
    const kp_op *op = o->op;
    if (op->n_in != 1 || op->n_out != 2 || !kr_in(o, 0) || !kr_out(o, 0) || !kr_out(o, 1))
        return kr_bad(o, "expects 1 input and 2 outputs");
    if (op->sub > 1)
        return kr_bad(o, "unknown variant %u", op->sub);
    if (op->n_ia != 1 || op->n_fa != 0)
        return kr_bad(o, "expects 1 int attribute (axis)");
    const kp_value *x = kr_in(o, 0), *v = kr_out(o, 0), *i = kr_out(o, 1);
    int64_t axis = o->ia[0];
    if (!kr_is_float(x->dtype) && !kr_is_int(x->dtype))
        return kr_bad(o, "dtype %s not supported", kr_dtname(x->dtype));
    if (v->dtype != x->dtype || i->dtype != KILN_I64)
        return kr_bad(o, "outputs must be %s and i64", kr_dtname(x->dtype));
    if (x->ndim < 1 || axis < 0 || axis >= x->ndim)
        return kr_bad(o, "axis %lld out of range for rank %d", (long long)axis, x->ndim);
    if (!kr_same_shape(v, i) || v->ndim != x->ndim)
        return kr_bad(o, "output shapes do not match");
    for (int d = 0; d < x->ndim; d++)
        if (d != axis && v->shape[d] != x->shape[d])
            return kr_bad(o, "output shapes do not match");
    if (v->shape[axis] > x->shape[axis])
        return kr_bad(o, "k = %lld exceeds the axis (%lld)", (long long)v->shape[axis],
                      (long long)x->shape[axis]);
    return KILN_OK;
}

kiln_status kr_create_topk(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    topk_k *t = kr_kernel_new(o, sizeof *t, topk_run);
    if (!t)
        return KILN_ERR_NOMEM;
    t->base.destroy = topk_destroy;
    const kp_value *x = kr_in(o, 0), *v = kr_out(o, 0);
    int axis = (int)o->ia[0];
    t->smallest = o->op->sub == 1;
    t->dt = x->dtype;
    t->outer = kr_prod(x->shape, 0, axis);
    t->dim = x->shape[axis];
    t->inner = kr_prod(x->shape, axis + 1, x->ndim);
    t->k = v->shape[axis];
    t->x = ptr[o->in[0]];
    t->vals = ptr[o->out[0]];
    t->idx = ptr[o->out[1]];
    t->heap = kiln__malloc((size_t)(t->k + 1) * sizeof *t->heap);
    t->slice = kiln__malloc((size_t)(t->dim + 1) * kr_esize(x->dtype));
    if (!t->heap || !t->slice) {
        topk_destroy(&t->base);
        return kr_fail(o->p, o->index, KILN_ERR_NOMEM, "out of memory");
    }
    if (t->k == 0 || t->inner == 0)
        t->outer = 0;
    *out = &t->base;
    return KILN_OK;
}
