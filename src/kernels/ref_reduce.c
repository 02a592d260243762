/*
 * ref_reduce.c — reference kernels for the reducing op kinds: Reduce (every kp_reduce
 * kind over a sorted axis list, accumulated in double for floats and in wrapping int64 for
 * integers), ArgMax/ArgMin (select_last_index, NaN counts as the extreme like numpy) and
 * CumSum (exclusive, reverse).
 */
#include "kernels/ref.h"

#include <math.h>

/* ================================ Reduce ================================ */

typedef struct reduce_k {
    kk_kernel base;
    int kind, xdt, ydt;
    bool empty;             /* X has no elements: only the initial values are stored */
    int nd;                 /* merged dims of X */
    int64_t n[KILN_MAX_DIMS], ystride[KILN_MAX_DIMS];
    bool red[KILN_MAX_DIMS];
    int64_t ny;             /* elements of Y */
    double count;           /* elements folded into each output */
    const void *x;
    void *y;
    double *acc;            /* ny accumulators (floats) */
    int64_t *iacc;          /* ny accumulators (integers) */
    double *mx;             /* ny maxima, LogSumExp only */
} reduce_k;

static kiln_status reduce_run(kk_kernel *kk);

static bool reduce_int_ok(int kind)
{
    return kind == KP_R_SUM || kind == KP_R_MAX || kind == KP_R_MIN || kind == KP_R_PROD;
}

kiln_status kr_check_reduce(const kr_op *o)
{
    const kp_op *op = o->op;
    if (op->n_in != 1 || op->n_out != 1 || !kr_in(o, 0) || !kr_out(o, 0))
        return kr_bad(o, "expects 1 input and 1 output");
    if (op->sub >= KP_REDUCE_COUNT)
        return kr_bad(o, "unknown reduction %u", op->sub);
    const kp_value *x = kr_in(o, 0), *y = kr_out(o, 0);
    if (op->n_ia < 1 || op->n_fa != 0 || o->ia[0] < 0 || o->ia[0] > x->ndim ||
        op->n_ia != 1 + o->ia[0])
        return kr_bad(o, "expects n_axes and that many axes");
    if (y->dtype != x->dtype)
        return kr_bad(o, "output dtype differs from the input's");
    if (!kr_is_float(x->dtype) && !(kr_is_int(x->dtype) && reduce_int_ok(op->sub)))
        return kr_bad(o, "dtype %s not supported for reduction %u", kr_dtname(x->dtype), op->sub);
    bool red[KILN_MAX_DIMS] = {false};
    int64_t prev = -1;
    for (int64_t i = 0; i < o->ia[0]; i++) {
        int64_t a = o->ia[1 + i];
        if (a <= prev || a >= x->ndim)
            return kr_bad(o, "axes must be sorted, distinct and inside rank %d", x->ndim);
        red[a] = true;
        prev = a;
    }
    /* Y: X's shape with the reduced axes 1 (keepdims) or gone */
    bool keep = y->ndim == x->ndim, ok = true;
    if (!keep && y->ndim != x->ndim - o->ia[0])
        ok = false;
    for (int d = 0, e = 0; ok && d < x->ndim; d++) {
        if (red[d] && !keep)
            continue;
        ok = y->shape[e++] == (red[d] ? 1 : x->shape[d]);
    }
    if (!ok)
        return kr_bad(o, "output shape does not match the reduced input");
    return KILN_OK;
}

static void reduce_destroy(kk_kernel *kk)
{
    reduce_k *k = (reduce_k *)kk;
    kiln__free(k->acc);
    kiln__free(k->iacc);
    kiln__free(k->mx);
    kiln__free(k);
}

kiln_status kr_create_reduce(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    reduce_k *k = kr_kernel_new(o, sizeof *k, reduce_run);
    if (!k)
        return KILN_ERR_NOMEM;
    k->base.destroy = reduce_destroy;
    const kp_value *x = kr_in(o, 0), *y = kr_out(o, 0);
    k->kind = o->op->sub;
    k->xdt = x->dtype;
    k->ydt = y->dtype;
    k->ny = kr_numel(y);
    k->x = ptr[o->in[0]];
    k->y = ptr[o->out[0]];
    bool red[KILN_MAX_DIMS] = {false};
    for (int64_t i = 0; i < o->ia[0]; i++)
        red[o->ia[1 + i]] = true;
    /* Y strides over X's dims (0 on reduced ones), then drop unit dims and merge runs */
    int64_t ys[KILN_MAX_DIMS], s = 1;
    k->count = 1;
    for (int d = x->ndim - 1; d >= 0; d--) {
        ys[d] = red[d] ? 0 : s;
        if (!red[d])
            s *= x->shape[d];
        else
            k->count *= (double)x->shape[d];
    }
    int m = 0;
    for (int d = 0; d < x->ndim; d++) {
        int64_t n = x->shape[d];
        if (n == 0)
            k->empty = true;
        if (n <= 1)
            continue;
        if (m > 0 && k->red[m - 1] == red[d]) {
            k->n[m - 1] *= n;
            k->ystride[m - 1] = ys[d];
        } else {
            k->n[m] = n;
            k->red[m] = red[d];
            k->ystride[m] = ys[d];
            m++;
        }
    }
    if (m == 0) {
        k->n[0] = 1;
        k->red[0] = false;
        k->ystride[0] = 1;
        m = 1;
    }
    k->nd = m;
    size_t ny = (size_t)(k->ny ? k->ny : 1);
    if (kr_is_float(x->dtype)) {
        k->acc = kiln__malloc(ny * sizeof(double));
        if (k->kind == KP_R_LOG_SUM_EXP)
            k->mx = kiln__malloc(ny * sizeof(double));
        if (!k->acc || (k->kind == KP_R_LOG_SUM_EXP && !k->mx))
            goto nomem;
    } else {
        k->iacc = kiln__malloc(ny * sizeof(int64_t));
        if (!k->iacc)
            goto nomem;
    }
    *out = &k->base;
    return KILN_OK;
nomem:
    reduce_destroy(&k->base);
    return kr_fail(o->p, o->index, KILN_ERR_NOMEM, "out of memory for accumulators");
}

/* Folds one row of X into the accumulators: into acc[0] when the row's axis is reduced,
 * element-wise into acc[0..n) otherwise. mx: the per-output maxima (LogSumExp). */
#define FMAX(a, v) (((v) > (a) || (v) != (v)) ? (v) : (a))
#define FMIN(a, v) (((v) < (a) || (v) != (v)) ? (v) : (a))
#define FOLD(F, COMB, ID)                                                              \
    do {                                                                               \
        if (red) {                                                                     \
            double s[4] = {acc[0], ID, ID, ID};                                        \
            int64_t j = 0;                                                             \
            for (; j + 4 <= n; j += 4)                                                 \
                for (int l = 0; l < 4; l++) {                                          \
                    double v = (double)x[j + l];                                       \
                    s[l] = COMB(s[l], (F));                                            \
                }                                                                      \
            for (; j < n; j++) {                                                       \
                double v = (double)x[j];                                               \
                s[0] = COMB(s[0], (F));                                                \
            }                                                                          \
            acc[0] = COMB(COMB(s[0], s[1]), COMB(s[2], s[3]));                         \
        } else {                                                                       \
            for (int64_t j = 0; j < n; j++) {                                          \
                double v = (double)x[j];                                               \
                (void)v;                                                               \
                acc[j] = COMB(acc[j], (F));                                            \
            }                                                                          \
        }                                                                              \
    } while (0)
#define ADD(a, b) ((a) + (b))
#define MUL(a, b) ((a) * (b))

#define FLOAT_ROW(T, SUF)                                                                    \
    static void frow_##SUF(int kind, const T *x, int64_t n, bool red, double *acc,          \
                           const double *mx)                                                 \
    {                                                                                        \
        switch (kind) {                                                                      \
        case KP_R_SUM: case KP_R_MEAN: case KP_R_LOG_SUM: FOLD(v, ADD, 0); break;            \
        case KP_R_L1: FOLD(fabs(v), ADD, 0); break;                                          \
        case KP_R_L2: case KP_R_SUM_SQUARE: FOLD(v * v, ADD, 0); break;                      \
        case KP_R_PROD: FOLD(v, MUL, 1); break;                                              \
        case KP_R_MAX: FOLD(v, FMAX, -INFINITY); break;                                      \
        case KP_R_MIN: FOLD(v, FMIN, INFINITY); break;                                       \
        case KP_R_LOG_SUM_EXP:                                                               \
            if (red) {                                                                       \
                double m = isfinite(mx[0]) ? mx[0] : 0, s = acc[0];                          \
                for (int64_t j = 0; j < n; j++)                                              \
                    s += exp((double)x[j] - m);                                              \
                acc[0] = s;                                                                  \
            } else {                                                                         \
                for (int64_t j = 0; j < n; j++)                                              \
                    acc[j] += exp((double)x[j] - (isfinite(mx[j]) ? mx[j] : 0));             \
            }                                                                                \
            break;                                                                           \
        }                                                                                    \
    }
FLOAT_ROW(float, f32)
FLOAT_ROW(double, f64)

#define IFOLD(EXPR)                                                                    \
    do {                                                                               \
        if (red) {                                                                     \
            int64_t a = acc[0];                                                        \
            for (int64_t j = 0; j < n; j++) {                                          \
                int64_t v = (int64_t)x[j];                                             \
                a = (EXPR);                                                            \
            }                                                                          \
            acc[0] = a;                                                                \
        } else {                                                                       \
            for (int64_t j = 0; j < n; j++) {                                          \
                int64_t a = acc[j], v = (int64_t)x[j];                                 \
                acc[j] = (EXPR);                                                       \
            }                                                                          \
        }                                                                              \
    } while (0)

#define INT_ROW(T, SUF)                                                                      \
    static void irow_##SUF(int kind, const T *x, int64_t n, bool red, int64_t *acc)         \
    {                                                                                        \
        switch (kind) {                                                                      \
        case KP_R_SUM: IFOLD((int64_t)((uint64_t)a + (uint64_t)v)); break;                   \
        case KP_R_PROD: IFOLD((int64_t)((uint64_t)a * (uint64_t)v)); break;                  \
        case KP_R_MAX: IFOLD(v > a ? v : a); break;                                          \
        case KP_R_MIN: IFOLD(v < a ? v : a); break;                                          \
        }                                                                                    \
    }
INT_ROW(int8_t, i8)
INT_ROW(uint8_t, u8)
INT_ROW(int32_t, i32)
INT_ROW(int64_t, i64)

/* One pass over X folding with `kind` into acc (float) or iacc (int). */
static void reduce_pass(const reduce_k *k, int kind, double *acc, int64_t *iacc, const double *mx)
{
    if (k->empty)
        return;
    const int nd = k->nd;
    const int64_t inner = k->n[nd - 1];
    const bool red = k->red[nd - 1];
    int64_t rows = 1;
    for (int d = 0; d < nd - 1; d++)
        rows *= k->n[d];
    int64_t idx[KILN_MAX_DIMS] = {0}, yoff = 0;
    for (int64_t r = 0; r < rows; r++) {
        int64_t xo = r * inner;
        switch (k->xdt) {
        case KILN_F32: frow_f32(kind, (const float *)k->x + xo, inner, red, acc + yoff, mx ? mx + yoff : NULL); break;
        case KILN_F64: frow_f64(kind, (const double *)k->x + xo, inner, red, acc + yoff, mx ? mx + yoff : NULL); break;
        case KILN_I8: irow_i8(kind, (const int8_t *)k->x + xo, inner, red, iacc + yoff); break;
        case KILN_U8: irow_u8(kind, (const uint8_t *)k->x + xo, inner, red, iacc + yoff); break;
        case KILN_I32: irow_i32(kind, (const int32_t *)k->x + xo, inner, red, iacc + yoff); break;
        case KILN_I64: irow_i64(kind, (const int64_t *)k->x + xo, inner, red, iacc + yoff); break;
        }
        for (int d = nd - 2; d >= 0; d--) {
            if (++idx[d] < k->n[d]) {
                yoff += k->ystride[d];
                break;
            }
            idx[d] = 0;
            yoff -= k->ystride[d] * (k->n[d] - 1);
        }
    }
}

static kiln_status reduce_run(kk_kernel *kk)
{
    reduce_k *k = (reduce_k *)kk;
    const int64_t ny = k->ny;
    if (k->iacc) {
        int64_t init = k->kind == KP_R_PROD ? 1 : k->kind == KP_R_MAX ? INT64_MIN
                     : k->kind == KP_R_MIN ? INT64_MAX : 0;
        for (int64_t i = 0; i < ny; i++)
            k->iacc[i] = init;
        reduce_pass(k, k->kind, NULL, k->iacc, NULL);
        for (int64_t i = 0; i < ny; i++) {
            int64_t v = k->iacc[i];
            switch (k->ydt) {
            case KILN_I8: ((int8_t *)k->y)[i] = (int8_t)(uint8_t)v; break;
            case KILN_U8: ((uint8_t *)k->y)[i] = (uint8_t)v; break;
            case KILN_I32: ((int32_t *)k->y)[i] = (int32_t)(uint32_t)v; break;
            default: ((int64_t *)k->y)[i] = v; break;
            }
        }
        return KILN_OK;
    }
    double init = k->kind == KP_R_PROD ? 1 : k->kind == KP_R_MAX ? -INFINITY
                : k->kind == KP_R_MIN ? INFINITY : 0;
    if (k->kind == KP_R_LOG_SUM_EXP) {
        for (int64_t i = 0; i < ny; i++)
            k->mx[i] = -INFINITY;
        reduce_pass(k, KP_R_MAX, k->mx, NULL, NULL);
    }
    for (int64_t i = 0; i < ny; i++)
        k->acc[i] = init;
    reduce_pass(k, k->kind, k->acc, NULL, k->mx);
    for (int64_t i = 0; i < ny; i++) {
        double v = k->acc[i];
        switch (k->kind) {
        case KP_R_MEAN: v /= k->count; break;
        case KP_R_L2: v = sqrt(v); break;
        case KP_R_LOG_SUM: v = log(v); break;
        case KP_R_LOG_SUM_EXP: v = log(v) + (isfinite(k->mx[i]) ? k->mx[i] : 0); break;
        }
        if (k->ydt == KILN_F32)
            ((float *)k->y)[i] = (float)v;
        else
            ((double *)k->y)[i] = v;
    }
    return KILN_OK;
}

/* ================================ ArgMax / ArgMin ================================ */

typedef struct argreduce_k {
    kk_kernel base;
    bool is_max, last;
    int dt;
    int64_t outer, dim, inner;
    const void *x;
    int64_t *y;
    void *best;             /* inner values */
} argreduce_k;

#define ISNAN_F(v) ((v) != (v))
#define ISNAN_I(v) 0
/* whether v replaces the current best b */
#define BETTER(ISNAN, v, b)                                                                 \
    (ISNAN(v) ? (last || !ISNAN(b))                                                         \
              : ISNAN(b) ? 0                                                                \
              : is_max ? ((v) > (b) || (last && (v) == (b))) : ((v) < (b) || (last && (v) == (b))))

#define ARG_FN(T, SUF, ISNAN)                                                                 \
    static void arg_##SUF(const argreduce_k *k)                                               \
    {                                                                                         \
        const bool is_max = k->is_max, last = k->last;                                        \
        const int64_t D = k->dim, inner = k->inner;                                           \
        T *best = k->best;                                                                    \
        for (int64_t o = 0; o < k->outer; o++) {                                              \
            const T *x = (const T *)k->x + o * D * inner;                                     \
            int64_t *y = k->y + o * inner;                                                    \
            if (inner == 1) {                                                                 \
                T b = x[0];                                                                   \
                int64_t bi = 0;                                                               \
                for (int64_t a = 1; a < D; a++)                                               \
                    if (BETTER(ISNAN, x[a], b)) {                                             \
                        b = x[a];                                                             \
                        bi = a;                                                               \
                    }                                                                         \
                y[0] = bi;                                                                    \
                continue;                                                                     \
            }                                                                                 \
            for (int64_t j = 0; j < inner; j++) {                                             \
                best[j] = x[j];                                                               \
                y[j] = 0;                                                                     \
            }                                                                                 \
            for (int64_t a = 1; a < D; a++) {                                                 \
                const T *row = x + a * inner;                                                 \
                for (int64_t j = 0; j < inner; j++)                                           \
                    if (BETTER(ISNAN, row[j], best[j])) {                                     \
                        best[j] = row[j];                                                     \
                        y[j] = a;                                                             \
                    }                                                                         \
            }                                                                                 \
        }                                                                                     \
    }
ARG_FN(float, f32, ISNAN_F)
ARG_FN(double, f64, ISNAN_F)
ARG_FN(int8_t, i8, ISNAN_I)
ARG_FN(uint8_t, u8, ISNAN_I)
ARG_FN(int32_t, i32, ISNAN_I)
ARG_FN(int64_t, i64, ISNAN_I)

static kiln_status argreduce_run(kk_kernel *kk)
{
    argreduce_k *k = (argreduce_k *)kk;
    switch (k->dt) {
    case KILN_F32: arg_f32(k); break;
    case KILN_F64: arg_f64(k); break;
    case KILN_I8: arg_i8(k); break;
    case KILN_U8: arg_u8(k); break;
    case KILN_I32: arg_i32(k); break;
    case KILN_I64: arg_i64(k); break;
    }
    return KILN_OK;
}

static void argreduce_destroy(kk_kernel *kk)
{
    argreduce_k *k = (argreduce_k *)kk;
    kiln__free(k->best);
    kiln__free(k);
}

kiln_status kr_check_argreduce(const kr_op *o)
{
    const kp_op *op = o->op;
    if (op->n_in != 1 || op->n_out != 1 || !kr_in(o, 0) || !kr_out(o, 0))
        return kr_bad(o, "expects 1 input and 1 output");
    if (op->sub > 1)
        return kr_bad(o, "unknown variant %u", op->sub);
    if (op->n_ia != 3 || op->n_fa != 0)
        return kr_bad(o, "expects 3 int attributes (axis, keepdims, select_last_index)");
    const kp_value *x = kr_in(o, 0), *y = kr_out(o, 0);
    int64_t axis = o->ia[0];
    if (!kr_is_float(x->dtype) && !kr_is_int(x->dtype))
        return kr_bad(o, "dtype %s not supported", kr_dtname(x->dtype));
    if (y->dtype != KILN_I64)
        return kr_bad(o, "output dtype must be i64");
    if (x->ndim < 1 || axis < 0 || axis >= x->ndim)
        return kr_bad(o, "axis %lld out of range for rank %d", (long long)axis, x->ndim);
    if (x->shape[axis] == 0 && kr_numel(y) > 0)
        return kr_bad(o, "reduces an empty axis");
    if (kr_numel(y) * x->shape[axis] != kr_numel(x))
        return kr_bad(o, "output shape does not match");
    return KILN_OK;
}

kiln_status kr_create_argreduce(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    argreduce_k *k = kr_kernel_new(o, sizeof *k, argreduce_run);
    if (!k)
        return KILN_ERR_NOMEM;
    k->base.destroy = argreduce_destroy;
    const kp_value *x = kr_in(o, 0);
    int axis = (int)o->ia[0];
    k->is_max = o->op->sub == 0;
    k->last = o->ia[2] != 0;
    k->dt = x->dtype;
    k->outer = kr_prod(x->shape, 0, axis);
    k->dim = x->shape[axis];
    k->inner = kr_prod(x->shape, axis + 1, x->ndim);
    k->x = ptr[o->in[0]];
    k->y = ptr[o->out[0]];
    k->best = kiln__malloc((size_t)(k->inner ? k->inner : 1) * kr_esize(x->dtype));
    if (!k->best) {
        argreduce_destroy(&k->base);
        return kr_fail(o->p, o->index, KILN_ERR_NOMEM, "out of memory");
    }
    if (k->dim == 0)
        k->outer = 0;
    *out = &k->base;
    return KILN_OK;
}

/* ================================ CumSum ================================ */

typedef struct cumsum_k {
    kk_kernel base;
    bool exclusive, reverse;
    int dt;
    int64_t outer, dim, inner;
    const void *x;
    void *y;
    void *run;              /* inner running sums */
} cumsum_k;

/* Each X row is read before the Y row at the same place is written, so Y may alias X. */
#define CUM_FN(T, SUF, PLUS)                                                                 \
    static void cum_##SUF(const cumsum_k *k)                                                 \
    {                                                                                        \
        const int64_t D = k->dim, inner = k->inner;                                          \
        T *run = k->run;                                                                     \
        for (int64_t o = 0; o < k->outer; o++) {                                             \
            const T *x = (const T *)k->x + o * D * inner;                                    \
            T *y = (T *)k->y + o * D * inner;                                                \
            for (int64_t j = 0; j < inner; j++)                                              \
                run[j] = 0;                                                                  \
            for (int64_t t = 0; t < D; t++) {                                                \
                const int64_t a = k->reverse ? D - 1 - t : t;                                \
                const T *xr = x + a * inner;                                                 \
                T *yr = y + a * inner;                                                       \
                for (int64_t j = 0; j < inner; j++) {                                        \
                    const T v = xr[j], s = PLUS(T, run[j], v);                               \
                    yr[j] = k->exclusive ? run[j] : s;                                       \
                    run[j] = s;                                                              \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
    }
#define FPLUS(T, a, b) ((a) + (b))
#define IPLUS(T, a, b) ((T)(uint64_t)((uint64_t)(a) + (uint64_t)(b)))
CUM_FN(float, f32, FPLUS)
CUM_FN(double, f64, FPLUS)
CUM_FN(int8_t, i8, IPLUS)
CUM_FN(uint8_t, u8, IPLUS)
CUM_FN(int32_t, i32, IPLUS)
CUM_FN(int64_t, i64, IPLUS)

static kiln_status cumsum_run(kk_kernel *kk)
{
    cumsum_k *k = (cumsum_k *)kk;
    switch (k->dt) {
    case KILN_F32: cum_f32(k); break;
    case KILN_F64: cum_f64(k); break;
    case KILN_I8: cum_i8(k); break;
    case KILN_U8: cum_u8(k); break;
    case KILN_I32: cum_i32(k); break;
    case KILN_I64: cum_i64(k); break;
    }
    return KILN_OK;
}

kiln_status kr_check_cumsum(const kr_op *o)
{
    const kp_op *op = o->op;
    if (op->n_in != 1 || op->n_out != 1 || !kr_in(o, 0) || !kr_out(o, 0))
        return kr_bad(o, "expects 1 input and 1 output");
    if (op->n_ia != 3 || op->n_fa != 0)
        return kr_bad(o, "expects 3 int attributes (axis, exclusive, reverse)");
    const kp_value *x = kr_in(o, 0), *y = kr_out(o, 0);
    if (!kr_is_float(x->dtype) && !kr_is_int(x->dtype))
        return kr_bad(o, "dtype %s not supported", kr_dtname(x->dtype));
    if (y->dtype != x->dtype || !kr_same_shape(x, y))
        return kr_bad(o, "output differs from the input in dtype or shape");
    if (x->ndim < 1 || o->ia[0] < 0 || o->ia[0] >= x->ndim)
        return kr_bad(o, "axis %lld out of range for rank %d", (long long)o->ia[0], x->ndim);
    return KILN_OK;
}

static void cumsum_destroy(kk_kernel *kk)
{
    cumsum_k *k = (cumsum_k *)kk;
    kiln__free(k->run);
    kiln__free(k);
}

kiln_status kr_create_cumsum(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    cumsum_k *k = kr_kernel_new(o, sizeof *k, cumsum_run);
    if (!k)
        return KILN_ERR_NOMEM;
    k->base.destroy = cumsum_destroy;
    const kp_value *x = kr_in(o, 0);
    int axis = (int)o->ia[0];
    k->exclusive = o->ia[1] != 0;
    k->reverse = o->ia[2] != 0;
    k->dt = x->dtype;
    k->outer = kr_prod(x->shape, 0, axis);
    k->dim = x->shape[axis];
    k->inner = kr_prod(x->shape, axis + 1, x->ndim);
    k->x = ptr[o->in[0]];
    k->y = ptr[o->out[0]];
    k->run = kiln__malloc((size_t)(k->inner ? k->inner : 1) * kr_esize(x->dtype));
    if (!k->run) {
        cumsum_destroy(&k->base);
        return kr_fail(o->p, o->index, KILN_ERR_NOMEM, "out of memory");
    }
    *out = &k->base;
    return KILN_OK;
}
