/*
 * ref_norm.c — reference kernels for the normalising op kinds (f32, f64): Softmax and
 * LogSoftmax over one axis (max-subtracted), LayerNormalization (with the optional Mean
 * and InvStdDev outputs), inference BatchNormalization and GroupNormalization (which
 * also serves InstanceNormalization; with an optional fused SiLU). Statistics are
 * accumulated in double. The f32 GroupNorm also works on channels-last activations
 * (kr_groupnorm_set_cl, see ref_layout.c): the layout planner keeps the tensors between
 * convolutions nhwc through it.
 */
#include "kernels/ref.h"

#include <math.h>

/* ================================ Softmax ================================ */

typedef struct softmax_k {
    kk_kernel base;
    bool log;
    int dt;
    int64_t outer, dim, inner;
    const void *x;
    void *y;
    double *mx, *sum;       /* inner each, when inner > 1 */
} softmax_k;

#define SOFTMAX_FN(T, SUF, S)                                                                \
    static void softmax_##SUF(const softmax_k *k)                                            \
    {                                                                                        \
        const int64_t D = k->dim, inner = k->inner;                                          \
        for (int64_t o = 0; o < k->outer; o++) {                                             \
            const T *x = (const T *)k->x + o * D * inner;                                    \
            T *y = (T *)k->y + o * D * inner;                                                \
            if (inner == 1) {                                                                \
                T m = x[0];                                                                  \
                for (int64_t a = 1; a < D; a++)                                              \
                    m = x[a] > m ? x[a] : m;                                                 \
                double s = 0;                                                                \
                for (int64_t a = 0; a < D; a++) {                                            \
                    T e = exp##S(x[a] - m);                                                  \
                    s += e;                                                                  \
                    if (!k->log)                                                             \
                        y[a] = e;                                                            \
                }                                                                            \
                if (k->log) {                                                                \
                    T sub = (T)(m + log(s));                                                 \
                    for (int64_t a = 0; a < D; a++)                                          \
                        y[a] = x[a] - sub;                                                   \
                } else {                                                                     \
                    T inv = (T)(1.0 / s);                                                    \
                    for (int64_t a = 0; a < D; a++)                                          \
                        y[a] *= inv;                                                         \
                }                                                                            \
                continue;                                                                    \
            }                                                                                \
            double *mx = k->mx, *sum = k->sum;                                               \
            for (int64_t j = 0; j < inner; j++) {                                            \
                mx[j] = x[j];                                                                \
                sum[j] = 0;                                                                  \
            }                                                                                \
            for (int64_t a = 1; a < D; a++)                                                  \
                for (int64_t j = 0; j < inner; j++)                                          \
                    mx[j] = x[a * inner + j] > mx[j] ? x[a * inner + j] : mx[j];             \
            for (int64_t a = 0; a < D; a++)                                                  \
                for (int64_t j = 0; j < inner; j++) {                                        \
                    T e = exp##S(x[a * inner + j] - (T)mx[j]);                               \
                    sum[j] += e;                                                             \
                    if (!k->log)                                                             \
                        y[a * inner + j] = e;                                                \
                }                                                                            \
            if (k->log) {                                                                    \
                for (int64_t j = 0; j < inner; j++)                                          \
                    sum[j] = mx[j] + log(sum[j]);                                            \
                for (int64_t a = 0; a < D; a++)                                              \
                    for (int64_t j = 0; j < inner; j++)                                      \
                        y[a * inner + j] = x[a * inner + j] - (T)sum[j];                     \
            } else {                                                                         \
                for (int64_t j = 0; j < inner; j++)                                          \
                    sum[j] = 1.0 / sum[j];                                                   \
                for (int64_t a = 0; a < D; a++)                                              \
                    for (int64_t j = 0; j < inner; j++)                                      \
                        y[a * inner + j] *= (T)sum[j];                                       \
            }                                                                                \
        }                                                                                    \
    }
SOFTMAX_FN(float, f32, f)
SOFTMAX_FN(double, f64, )

static kiln_status softmax_run(kk_kernel *kk)
{
    softmax_k *k = (softmax_k *)kk;
    if (k->dt == KILN_F32)
        softmax_f32(k);
    else
        softmax_f64(k);
    return KILN_OK;
}

static void softmax_destroy(kk_kernel *kk)
{
    softmax_k *k = (softmax_k *)kk;
    kiln__free(k->mx);
    kiln__free(k);
}

kiln_status kr_check_softmax(const kr_op *o)
{
    const kp_op *op = o->op;
    if (op->n_in != 1 || op->n_out != 1 || !kr_in(o, 0) || !kr_out(o, 0))
        return kr_bad(o, "expects 1 input and 1 output");
    if (op->sub > 1)
        return kr_bad(o, "unknown variant %u", op->sub);
    if (op->n_ia != 1 || op->n_fa != 0)
        return kr_bad(o, "expects 1 int attribute (axis)");
    const kp_value *x = kr_in(o, 0), *y = kr_out(o, 0);
    if (!kr_is_float(x->dtype))
        return kr_bad(o, "dtype %s not supported", kr_dtname(x->dtype));
    if (y->dtype != x->dtype || !kr_same_shape(x, y))
        return kr_bad(o, "output differs from the input in dtype or shape");
    if (x->ndim < 1 || o->ia[0] < 0 || o->ia[0] >= x->ndim)
        return kr_bad(o, "axis %lld out of range for rank %d", (long long)o->ia[0], x->ndim);
    return KILN_OK;
}

kiln_status kr_create_softmax(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    softmax_k *k = kr_kernel_new(o, sizeof *k, softmax_run);
    if (!k)
        return KILN_ERR_NOMEM;
    k->base.destroy = softmax_destroy;
    const kp_value *x = kr_in(o, 0);
    int axis = (int)o->ia[0];
    k->log = o->op->sub == 1;
    k->dt = x->dtype;
    k->outer = kr_prod(x->shape, 0, axis);
    k->dim = x->shape[axis];
    k->inner = kr_prod(x->shape, axis + 1, x->ndim);
    k->x = ptr[o->in[0]];
    k->y = ptr[o->out[0]];
    if (k->dim == 0 || k->inner == 0)
        k->outer = 0;
    if (k->inner > 1) {
        k->mx = kiln__malloc(2 * (size_t)k->inner * sizeof(double));
        if (!k->mx) {
            softmax_destroy(&k->base);
            return kr_fail(o->p, o->index, KILN_ERR_NOMEM, "out of memory");
        }
        k->sum = k->mx + k->inner;
    }
    *out = &k->base;
    return KILN_OK;
}

/* ================================ LayerNormalization ================================ */

typedef struct layernorm_k {
    kk_kernel base;
    int dt, mean_dt, inv_dt;
    float eps;
    int64_t outer, n;
    const void *x, *scale, *bias;
    void *y, *mean, *inv;
    int64_t *smap, *bmap;   /* broadcast index maps of scale / bias over the n elements, or NULL */
} layernorm_k;

#define LAYERNORM_FN(T, SUF)                                                                 \
    static void layernorm_##SUF(const layernorm_k *k)                                        \
    {                                                                                        \
        const int64_t n = k->n;                                                              \
        const T *sc = k->scale, *bi = k->bias;                                               \
        for (int64_t o = 0; o < k->outer; o++) {                                             \
            const T *x = (const T *)k->x + o * n;                                            \
            T *y = (T *)k->y + o * n;                                                        \
            double mean = kr_sum_##SUF(x, n) / (double)n;                                    \
            double v = kr_sumsq_dev_##SUF(x, n, mean);                                       \
            double inv = 1.0 / sqrt(v / (double)n + (double)k->eps);                         \
            const T m = (T)mean, iv = (T)inv;                                                \
            if (!k->smap && !k->bmap && bi) {                                                \
                for (int64_t j = 0; j < n; j++)                                              \
                    y[j] = (x[j] - m) * iv * sc[j] + bi[j];                                  \
            } else {                                                                         \
                for (int64_t j = 0; j < n; j++) {                                            \
                    T t = (x[j] - m) * iv * sc[k->smap ? k->smap[j] : j];                    \
                    y[j] = bi ? t + bi[k->bmap ? k->bmap[j] : j] : t;                        \
                }                                                                            \
            }                                                                                \
            if (k->mean)                                                                     \
                kr_store_f64(k->mean, k->mean_dt, o, mean);                                  \
            if (k->inv)                                                                      \
                kr_store_f64(k->inv, k->inv_dt, o, inv);                                     \
        }                                                                                    \
    }
LAYERNORM_FN(float, f32)
LAYERNORM_FN(double, f64)

static kiln_status layernorm_run(kk_kernel *kk)
{
    layernorm_k *k = (layernorm_k *)kk;
    if (k->dt == KILN_F32)
        layernorm_f32(k);
    else
        layernorm_f64(k);
    return KILN_OK;
}

static void layernorm_destroy(kk_kernel *kk)
{
    layernorm_k *k = (layernorm_k *)kk;
    kiln__free(k->smap);
    kiln__free(k->bmap);
    kiln__free(k);
}

/* Whether p broadcasts (numpy, one way) to X's dims axis..end. */
static bool param_fits(const kp_value *p, const kp_value *x, int axis)
{
    int nr = x->ndim - axis;
    for (int d = 0; d < p->ndim; d++) {
        int xd = d - (p->ndim - nr);   /* aligned dim in the normalised shape */
        if (xd < 0) {
            if (p->shape[d] != 1)
                return false;
        } else if (p->shape[d] != 1 && p->shape[d] != x->shape[axis + xd]) {
            return false;
        }
    }
    return true;
}

kiln_status kr_check_layernorm(const kr_op *o)
{
    const kp_op *op = o->op;
    if (op->n_in < 2 || op->n_in > 3 || op->n_out < 1 || op->n_out > 3 || !kr_in(o, 0) ||
        !kr_in(o, 1) || !kr_out(o, 0))
        return kr_bad(o, "expects X, Scale, [B] and Y, [Mean], [InvStdDev]");
    if (op->n_ia != 1 || op->n_fa != 1)
        return kr_bad(o, "expects 1 int attribute (axis) and 1 float (epsilon)");
    const kp_value *x = kr_in(o, 0), *y = kr_out(o, 0);
    if (!kr_is_float(x->dtype))
        return kr_bad(o, "dtype %s not supported", kr_dtname(x->dtype));
    if (y->dtype != x->dtype || !kr_same_shape(x, y))
        return kr_bad(o, "output differs from the input in dtype or shape");
    int64_t axis = o->ia[0];
    if (axis < 0 || axis >= x->ndim)
        return kr_bad(o, "axis %lld out of range for rank %d", (long long)axis, x->ndim);
    for (int i = 1; i < 3; i++) {
        const kp_value *p = kr_in(o, i);
        if (!p)
            continue;
        if (p->dtype != x->dtype)
            return kr_bad(o, "%s dtype %s differs from X's", i == 1 ? "Scale" : "B", kr_dtname(p->dtype));
        if (!param_fits(p, x, (int)axis))
            return kr_bad(o, "%s does not broadcast to the normalised shape", i == 1 ? "Scale" : "B");
    }
    int64_t outer = kr_prod(x->shape, 0, (int)axis);
    for (int i = 1; i < 3; i++) {
        const kp_value *s = kr_out(o, i);
        if (s && (!kr_is_float(s->dtype) || kr_numel(s) != outer))
            return kr_bad(o, "%s output must be float with %lld elements",
                          i == 1 ? "Mean" : "InvStdDev", (long long)outer);
    }
    return KILN_OK;
}

/* The map from the normalised block's element j to p's element, or NULL when identical. */
static kiln_status param_map(const kp_value *p, const kp_value *x, int axis, int64_t **out)
{
    *out = NULL;
    int nr = x->ndim - axis;
    int64_t n = kr_prod(x->shape, axis, x->ndim);
    if (kr_numel(p) == n)
        return KILN_OK;
    int64_t pst[KILN_MAX_DIMS] = {0}, s = 1;
    for (int d = p->ndim - 1; d >= 0; d--) {
        int xd = d - (p->ndim - nr);
        if (xd >= 0)
            pst[xd] = p->shape[d] == 1 ? 0 : s;
        s *= p->shape[d];
    }
    int64_t *m = kiln__malloc((size_t)(n ? n : 1) * sizeof *m);
    if (!m)
        return kiln__fail(KILN_ERR_NOMEM, "out of memory");
    int64_t idx[KILN_MAX_DIMS] = {0};
    for (int64_t j = 0; j < n; j++) {
        int64_t off = 0;
        for (int d = 0; d < nr; d++)
            off += idx[d] * pst[d];
        m[j] = off;
        for (int d = nr - 1; d >= 0; d--) {
            if (++idx[d] < x->shape[axis + d])
                break;
            idx[d] = 0;
        }
    }
    *out = m;
    return KILN_OK;
}

kiln_status kr_create_layernorm(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    layernorm_k *k = kr_kernel_new(o, sizeof *k, layernorm_run);
    if (!k)
        return KILN_ERR_NOMEM;
    k->base.destroy = layernorm_destroy;
    const kp_value *x = kr_in(o, 0);
    int axis = (int)o->ia[0];
    k->dt = x->dtype;
    k->eps = o->fa[0];
    k->outer = kr_prod(x->shape, 0, axis);
    k->n = kr_prod(x->shape, axis, x->ndim);
    if (k->n == 0)
        k->outer = 0;
    k->x = ptr[o->in[0]];
    k->scale = ptr[o->in[1]];
    k->bias = kr_in(o, 2) ? ptr[o->in[2]] : NULL;
    k->y = ptr[o->out[0]];
    if (kr_out(o, 1)) {
        k->mean = ptr[o->out[1]];
        k->mean_dt = kr_out(o, 1)->dtype;
    }
    if (kr_out(o, 2)) {
        k->inv = ptr[o->out[2]];
        k->inv_dt = kr_out(o, 2)->dtype;
    }
    kiln_status s = param_map(kr_in(o, 1), x, axis, &k->smap);
    if (s == KILN_OK && kr_in(o, 2))
        s = param_map(kr_in(o, 2), x, axis, &k->bmap);
    if (s != KILN_OK) {
        layernorm_destroy(&k->base);
        return kr_fail(o->p, o->index, s, "out of memory");
    }
    *out = &k->base;
    return KILN_OK;
}

/* ================================ BatchNorm / GroupNorm ================================ */

/* Both end in y = x * a[c] + b[c] over each channel's spatial block. */
typedef struct chnorm_k {
    kk_kernel base;
    bool group;                     /* GroupNorm: statistics from the data */
    int act;                        /* GroupNorm's fused activation (kp_unary) */
    int dt, pdt[4];                 /* X's dtype; dtypes of scale, B, mean, var */
    float eps;
    int64_t N, C, S, G;
    const void *x, *prm[4];         /* scale, B, mean, var (BatchNorm) */
    void *y;
    double *a, *b;                  /* C each */
} chnorm_k;

#define APPLY_FN(T, SUF)                                                                     \
    static void apply_##SUF(const T *x, T *y, int64_t S, double a, double b)                 \
    {                                                                                        \
        const T av = (T)a, bv = (T)b;                                                        \
        for (int64_t j = 0; j < S; j++)                                                      \
            y[j] = x[j] * av + bv;                                                           \
    }                                                                                        \
    static void stats_##SUF(const T *x, int64_t n, double *mean, double *var)                \
    {                                                                                        \
        double m = n ? kr_sum_##SUF(x, n) / (double)n : 0;                                   \
        *mean = m;                                                                           \
        *var = n ? kr_sumsq_dev_##SUF(x, n, m) / (double)n : 0;                              \
    }
APPLY_FN(float, f32)
APPLY_FN(double, f64)

static kiln_status chnorm_run(kk_kernel *kk)
{
    chnorm_k *k = (chnorm_k *)kk;
    const int64_t C = k->C, S = k->S;
    const size_t es = kr_esize(k->dt);
    if (!k->group) {
        for (int64_t c = 0; c < C; c++) {
            double sc = kr_load_f64(k->prm[0], k->pdt[0], c), bi = kr_load_f64(k->prm[1], k->pdt[1], c);
            double mu = kr_load_f64(k->prm[2], k->pdt[2], c), var = kr_load_f64(k->prm[3], k->pdt[3], c);
            k->a[c] = sc / sqrt(var + (double)k->eps);
            k->b[c] = bi - mu * k->a[c];
        }
    }
    const int64_t cg = k->group ? C / k->G : 1;
    for (int64_t n = 0; n < k->N; n++) {
        for (int64_t c0 = 0; c0 < C; c0 += cg) {
            const char *x = (const char *)k->x + (size_t)((n * C + c0) * S) * es;
            char *y = (char *)k->y + (size_t)((n * C + c0) * S) * es;
            double mean = 0, var = 0, inv = 1;
            if (k->group) {
                if (k->dt == KILN_F32)
                    stats_f32((const float *)x, cg * S, &mean, &var);
                else
                    stats_f64((const double *)x, cg * S, &mean, &var);
                inv = 1.0 / sqrt(var + (double)k->eps);
            }
            for (int64_t c = c0; c < c0 + cg; c++) {
                double a = k->a[c], b = k->b[c];
                if (k->group) {
                    double sc = kr_load_f64(k->prm[0], k->pdt[0], c);
                    double bi = kr_load_f64(k->prm[1], k->pdt[1], c);
                    a = sc * inv;
                    b = bi - mean * a;
                }
                size_t at = (size_t)((c - c0) * S) * es;
                if (k->dt == KILN_F32)
                    apply_f32((const float *)(x + at), (float *)(y + at), S, a, b);
                else
                    apply_f64((const double *)(x + at), (double *)(y + at), S, a, b);
                if (k->act == KP_U_SILU && k->dt == KILN_F32)
                    for (float *v = (float *)(y + at), *e = v + S; v < e; v++)
                        *v = *v / (1.0f + expf(-*v));
                else if (k->act == KP_U_SILU)
                    for (double *v = (double *)(y + at), *e = v + S; v < e; v++)
                        *v = *v / (1.0 + exp(-*v));
            }
        }
    }
    return KILN_OK;
}

static void chnorm_destroy(kk_kernel *kk)
{
    chnorm_k *k = (chnorm_k *)kk;
    kiln__free(k->a);
    kiln__free(k);
}

static kiln_status check_chnorm(const kr_op *o, int n_params, int n_ia)
{
    const kp_op *op = o->op;
    if (op->n_in != 1 + n_params || op->n_out != 1 || !kr_out(o, 0))
        return kr_bad(o, "expects %d inputs and 1 output", 1 + n_params);
    for (int i = 0; i <= n_params; i++)
        if (!kr_in(o, i))
            return kr_bad(o, "input %d missing", i);
    if (op->n_ia != (uint32_t)n_ia || op->n_fa != 1)
        return kr_bad(o, "expects %d int attributes and 1 float (epsilon)", n_ia);
    const kp_value *x = kr_in(o, 0), *y = kr_out(o, 0);
    if (!kr_is_float(x->dtype))
        return kr_bad(o, "dtype %s not supported", kr_dtname(x->dtype));
    if (y->dtype != x->dtype || !kr_same_shape(x, y))
        return kr_bad(o, "output differs from the input in dtype or shape");
    if (x->ndim < 2)
        return kr_bad(o, "input rank %d below 2", x->ndim);
    for (int i = 1; i <= n_params; i++) {
        const kp_value *p = kr_in(o, i);
        if (!kr_is_float(p->dtype) || kr_numel(p) != x->shape[1])
            return kr_bad(o, "parameter %d must be float with %lld elements", i,
                          (long long)x->shape[1]);
    }
    return KILN_OK;
}

kiln_status kr_check_batchnorm(const kr_op *o) { return check_chnorm(o, 4, 0); }

kiln_status kr_check_groupnorm(const kr_op *o)
{
    /* ia: num_groups[, activation (KP_U_IDENTITY or KP_U_SILU, fused by the compiler)] */
    kiln_status s = check_chnorm(o, 2, o->op->n_ia == 2 ? 2 : 1);
    if (s != KILN_OK)
        return s;
    if (o->op->n_ia == 2 && o->ia[1] != KP_U_IDENTITY && o->ia[1] != KP_U_SILU)
        return kr_bad(o, "fused activation %lld not supported", (long long)o->ia[1]);
    int64_t g = o->ia[0], c = kr_in(o, 0)->shape[1];
    if (g < 1 || c % g != 0)
        return kr_bad(o, "%lld groups do not divide %lld channels", (long long)g, (long long)c);
    return KILN_OK;
}

static kiln_status create_chnorm(const kr_op *o, void *const *ptr, bool group, kk_kernel **out)
{
    chnorm_k *k = kr_kernel_new(o, sizeof *k, chnorm_run);
    if (!k)
        return KILN_ERR_NOMEM;
    k->base.destroy = chnorm_destroy;
    const kp_value *x = kr_in(o, 0);
    k->group = group;
    k->dt = x->dtype;
    k->eps = o->fa[0];
    k->N = x->shape[0];
    k->C = x->shape[1];
    k->S = kr_prod(x->shape, 2, x->ndim);
    k->G = group ? o->ia[0] : 1;
    k->act = group && o->op->n_ia > 1 ? (int)o->ia[1] : KP_U_IDENTITY;
    k->x = ptr[o->in[0]];
    k->y = ptr[o->out[0]];
    for (int i = 0; i < (group ? 2 : 4); i++) {
        k->prm[i] = ptr[o->in[1 + i]];
        k->pdt[i] = kr_in(o, 1 + i)->dtype;
    }
    k->a = kiln__malloc(2 * (size_t)(k->C ? k->C : 1) * sizeof(double));
    if (!k->a) {
        chnorm_destroy(&k->base);
        return kr_fail(o->p, o->index, KILN_ERR_NOMEM, "out of memory");
    }
    k->b = k->a + k->C;
    *out = &k->base;
    return KILN_OK;
}

/* ============================ GroupNorm, f32 (dense or channels-last) ============================ */

/* Statistics of each channel in one sweep, shifted by the channel's first element (so the
 * sums of squares do not cancel): s1 = sum(x - K), s2 = sum((x - K)^2), accumulated in
 * float lanes over short runs and in double across runs. The group's mean and variance
 * then come exactly from the per-channel sums (x - m = (x - K) + (K - m)). Then one sweep
 * writes y = act(x * a[c] + b[c]). Works on N x C x S stored dense (nchw) or channels-last
 * (nhwc: S x C per image), input and output each either way. */
typedef struct gn_k {
    kk_kernel base;
    int64_t N, C, S, G;
    float eps;
    int act;                        /* KP_U_IDENTITY or KP_U_SILU */
    bool x_cl, y_cl;                /* stored channels-last */
    int pdt[2];                     /* dtypes of scale, B */
    const float *x;
    const void *prm[2];             /* scale, B */
    float *y;
    float *a, *b, *k, *p1, *p2;     /* C each */
    double *s1, *s2;                /* C each */
} gn_k;

enum { GN_RUN = 64, GN_LANES = 16 };

/* The hot loops below are compiled for AVX-512 and AVX2 too and picked at load time
 * (GCC/Clang function multi-versioning) where the toolchain offers it; not under the
 * sanitizers (an instrumented ifunc resolver runs before their runtime is up: TSan
 * crashes at relocation). */
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define GN_NO_CLONES 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define GN_NO_CLONES 1
#endif
#endif
#if !defined(GN_NO_CLONES) && defined(__x86_64__) && defined(__ELF__) &&                    \
    (defined(__clang__) ? __clang_major__ >= 14 : __GNUC__ >= 8)
#define GN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GN_CLONES
#endif

/* y = x * sigmoid(x) in place, 16 at a time (GCC/Clang vector extensions), exp by range
 * reduction and a degree-6 polynomial (relative error of the result about 2e-7; -x
 * clamped to +-88 first). */
typedef float gn_vf __attribute__((vector_size(64)));
typedef int32_t gn_vi __attribute__((vector_size(64)));
enum { GN_VW = (int)(sizeof(gn_vf) / sizeof(float)) };

GN_CLONES static void gn_silu(float *y, int64_t n)
{
    int64_t j = 0;
    for (; j + GN_VW <= n; j += GN_VW) {
        gn_vf v, hi = (gn_vf){ 0 } + 88.0f, lo = -hi, magic = (gn_vf){ 0 } + 12582912.0f;
        memcpy(&v, y + j, sizeof v);
        gn_vf t = -v;
        gn_vi m = t > hi;
        t = (gn_vf)(((gn_vi)t & ~m) | ((gn_vi)hi & m));
        m = t < lo;
        t = (gn_vf)(((gn_vi)t & ~m) | ((gn_vi)lo & m));
        gn_vf r0 = t * 1.44269504088896341f + magic;    /* 1.5 * 2^23: rounds t / ln 2 */
        gn_vf nn = r0 - magic;
        gn_vf scale = (gn_vf)((((gn_vi)r0) - (0x4B400000 - 127)) << 23);   /* 2^nn */
        gn_vf r = t - nn * 0.693359375f + nn * 2.12194440e-4f;
        gn_vf q = r * 1.9875691500e-4f + 1.3981999507e-3f;
        q = q * r + 8.3334519073e-3f;
        q = q * r + 4.1665795894e-2f;
        q = q * r + 1.6666665459e-1f;
        q = q * r + 5.0000001201e-1f;
        gn_vf e = (q * r * r + r + 1.0f) * scale;
        v = v / (1.0f + e);
        memcpy(y + j, &v, sizeof v);
    }
    for (; j < n; j++)
        y[j] = y[j] / (1.0f + expf(-y[j]));
}

static void gn_act(float *y, int64_t n, int act)
{
    if (act == KP_U_SILU)
        gn_silu(y, n);
}

/* y = x * a + b over n contiguous values (one channel, dense). */
GN_CLONES static void gn_affine1(const float *restrict x, float *restrict y, int64_t n, float a,
                                 float b)
{
    for (int64_t j = 0; j < n; j++)
        y[j] = x[j] * a + b;
}

/* y[s][c] = x[s][c] * a[c] + b[c] over ns pixels of C channels (channels-last). */
GN_CLONES static void gn_affine_cl(const float *restrict x, float *restrict y, int64_t ns,
                                   int64_t C, const float *restrict a, const float *restrict b)
{
    for (int64_t s = 0; s < ns; s++)
        for (int64_t c = 0; c < C; c++)
            y[s * C + c] = x[s * C + c] * a[c] + b[c];
}

/* One channel stored contiguously (dense): shifted sums. */
GN_CLONES static void gn_chan_dense(const float *x, int64_t S, float K, double *s1, double *s2)
{
    double t1 = 0, t2 = 0;
    for (int64_t j0 = 0; j0 < S; j0 += GN_RUN * GN_LANES) {
        int64_t e = S - j0 < GN_RUN * GN_LANES ? S : j0 + GN_RUN * GN_LANES;
        float l1[GN_LANES] = { 0 }, l2[GN_LANES] = { 0 };
        int64_t j = j0;
        for (; j + GN_LANES <= e; j += GN_LANES)
            for (int l = 0; l < GN_LANES; l++) {
                float d = x[j + l] - K;
                l1[l] += d;
                l2[l] += d * d;
            }
        for (; j < e; j++) {
            float d = x[j] - K;
            l1[0] += d;
            l2[0] += d * d;
        }
        for (int l = 0; l < GN_LANES; l++) {
            t1 += l1[l];
            t2 += l2[l];
        }
    }
    *s1 = t1;
    *s2 = t2;
}

/* Every channel of one image stored channels-last (S x C): shifted sums per channel, the
 * shifts K being the first pixel. p1, p2: C floats of scratch. */
GN_CLONES static void gn_chan_cl(const float *restrict x, int64_t S, int64_t C,
                                 float *restrict K, float *restrict p1, float *restrict p2,
                                 double *restrict s1, double *restrict s2)
{
    for (int64_t c = 0; c < C; c++) {
        K[c] = x[c];
        s1[c] = s2[c] = 0;
    }
    for (int64_t s0 = 0; s0 < S; s0 += GN_RUN) {
        int64_t e = S - s0 < GN_RUN ? S : s0 + GN_RUN;
        for (int64_t c = 0; c < C; c++)
            p1[c] = p2[c] = 0;
        int64_t s = s0;
        for (; s + 4 <= e; s += 4) {   /* four pixels per update of p1, p2 */
            const float *x0 = x + s * C, *x1 = x0 + C, *x2 = x1 + C, *x3 = x2 + C;
            for (int64_t c = 0; c < C; c++) {
                float d0 = x0[c] - K[c], d1 = x1[c] - K[c], d2 = x2[c] - K[c], d3 = x3[c] - K[c];
                p1[c] += (d0 + d1) + (d2 + d3);
                p2[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
            }
        }
        for (; s < e; s++) {
            const float *xs = x + s * C;
            for (int64_t c = 0; c < C; c++) {
                float d = xs[c] - K[c];
                p1[c] += d;
                p2[c] += d * d;
            }
        }
        for (int64_t c = 0; c < C; c++) {
            s1[c] += p1[c];
            s2[c] += p2[c];
        }
    }
}

static kiln_status gn_run(kk_kernel *kk)
{
    gn_k *k = (gn_k *)kk;
    const int64_t C = k->C, S = k->S, cg = C / k->G;
    for (int64_t n = 0; n < k->N; n++) {
        const float *x = k->x + n * C * S;
        float *y = k->y + n * C * S;
        /* per-channel shifted sums */
        if (k->x_cl) {
            gn_chan_cl(x, S, C, k->k, k->p1, k->p2, k->s1, k->s2);
        } else {
            for (int64_t c = 0; c < C; c++) {
                k->k[c] = S ? x[c * S] : 0.0f;
                gn_chan_dense(x + c * S, S, k->k[c], &k->s1[c], &k->s2[c]);
            }
        }
        /* per group: mean, variance, then each channel's a and b */
        for (int64_t c0 = 0; c0 < C; c0 += cg) {
            double cnt = (double)(cg * S), sum = 0, sq = 0;
            for (int64_t c = c0; c < c0 + cg; c++)
                sum += k->s1[c] + (double)S * k->k[c];
            double m = cnt > 0 ? sum / cnt : 0;
            for (int64_t c = c0; c < c0 + cg; c++) {
                double dk = (double)k->k[c] - m;
                sq += k->s2[c] + 2 * dk * k->s1[c] + (double)S * dk * dk;
            }
            double var = cnt > 0 ? sq / cnt : 0;
            double inv = 1.0 / sqrt((var > 0 ? var : 0) + (double)k->eps);
            for (int64_t c = c0; c < c0 + cg; c++) {
                double a = kr_load_f64(k->prm[0], k->pdt[0], c) * inv;
                k->a[c] = (float)a;
                k->b[c] = (float)(kr_load_f64(k->prm[1], k->pdt[1], c) - m * a);
            }
        }
        const float *a = k->a, *b = k->b;
        if (k->x_cl && k->y_cl) {
            for (int64_t s0 = 0; s0 < S; s0 += GN_RUN) {
                int64_t e = S - s0 < GN_RUN ? S : s0 + GN_RUN;
                gn_affine_cl(x + s0 * C, y + s0 * C, e - s0, C, a, b);
                gn_act(y + s0 * C, (e - s0) * C, k->act);
            }
        } else if (!k->x_cl && !k->y_cl) {
            for (int64_t c = 0; c < C; c++) {
                gn_affine1(x + c * S, y + c * S, S, a[c], b[c]);
                gn_act(y + c * S, S, k->act);
            }
        } else {
            /* one side channels-last, the other dense: walk the output in order */
            for (int64_t c = 0; c < C; c++)
                for (int64_t s = 0; s < S; s++) {
                    int64_t xi = k->x_cl ? s * C + c : c * S + s;
                    int64_t yi = k->y_cl ? s * C + c : c * S + s;
                    y[yi] = x[xi] * a[c] + b[c];
                }
            gn_act(y, C * S, k->act);
        }
    }
    return KILN_OK;
}

static void gn_destroy(kk_kernel *kk)
{
    gn_k *k = (gn_k *)kk;
    kiln__free(k->a);
    kiln__free(k->s1);
    kiln__free(k);
}

static kiln_status create_gn_f32(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    gn_k *k = kr_kernel_new(o, sizeof *k, gn_run);
    if (!k)
        return KILN_ERR_NOMEM;
    k->base.destroy = gn_destroy;
    const kp_value *x = kr_in(o, 0);
    k->N = x->shape[0];
    k->C = x->shape[1];
    k->S = kr_prod(x->shape, 2, x->ndim);
    k->G = o->ia[0];
    k->act = o->op->n_ia > 1 ? (int)o->ia[1] : KP_U_IDENTITY;
    k->eps = o->fa[0];
    k->x = ptr[o->in[0]];
    k->y = ptr[o->out[0]];
    for (int i = 0; i < 2; i++) {
        k->prm[i] = ptr[o->in[1 + i]];
        k->pdt[i] = kr_in(o, 1 + i)->dtype;
    }
    size_t C = (size_t)(k->C ? k->C : 1);
    k->a = kiln__malloc(5 * C * sizeof(float));
    k->s1 = kiln__malloc(2 * C * sizeof(double));
    if (!k->a || !k->s1) {
        gn_destroy(&k->base);
        return kr_fail(o->p, o->index, KILN_ERR_NOMEM, "out of memory");
    }
    k->b = k->a + C;
    k->k = k->a + 2 * C;
    k->p1 = k->a + 3 * C;
    k->p2 = k->a + 4 * C;
    k->s2 = k->s1 + C;
    *out = &k->base;
    return KILN_OK;
}

void kr_groupnorm_set_cl(kk_kernel *kk, bool x_cl, bool y_cl)
{
    gn_k *k = (gn_k *)kk;
    k->x_cl = x_cl;
    k->y_cl = y_cl;
}

kiln_status kr_create_batchnorm(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    return create_chnorm(o, ptr, false, out);
}

kiln_status kr_create_groupnorm(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    if (kr_in(o, 0)->dtype == KILN_F32)
        return create_gn_f32(o, ptr, out);
    return create_chnorm(o, ptr, true, out);
}
