/*
 * ref_resize.c — the reference Resize kernel (ONNX-13 semantics): nearest (any dtype,
 * every nearest_mode), linear and cubic (f32, f64; cubic_coeff_a, exclude_outside) under
 * every coordinate_transformation_mode except tf_crop_and_resize (which needs the roi the
 * program does not carry).
 *
 * Each output coordinate of each dim is mapped to input taps and weights at create time,
 * following the ONNX reference: the source coordinate x picks the n nearest input indices
 * (n = 2 linear, 4 cubic) of the edge-padded axis, weights come from the fractional part.
 * Nearest is one index-map copy (also on f32 tensors stored channels-last, for the layout
 * planner: see ref_layout.c); linear and cubic run one separable pass per resized dim
 * (through double intermediates), skipping dims whose mapping is the identity.
 */
#include "kernels/ref.h"

#include <math.h>

typedef struct rdim {
    int d;                  /* axis */
    int ntap;
    int64_t in, out;
    int64_t *idx;           /* out * ntap input indices (clamped into [0, in)) */
    double *w;              /* out * ntap weights */
} rdim;

typedef struct resize_k {
    kk_kernel base;
    bool nearest;
    int dt;
    kr_map map;             /* nearest */
    int nd, npass;
    int64_t shape[KILN_MAX_DIMS];   /* X's */
    rdim pass[KILN_MAX_DIMS];       /* linear / cubic: the dims to resize, in order */
    double *tmp[2];
    const void *x;
    void *y;
    int64_t n_x;
} resize_k;

/* Source coordinate of output coordinate x along an axis of `in` resized to `out`. */
static double source_coord(int mode, double x, double scale, int64_t in, int64_t out)
{
    double out_w = scale * (double)in;
    switch (mode) {
    case KP_RC_ALIGN_CORNERS:
        return out_w == 1 ? 0 : x * (double)(in - 1) / (out_w - 1);
    case KP_RC_ASYMMETRIC:
        return x / scale;
    case KP_RC_PYTORCH_HALF_PIXEL:
        return out_w == 1 ? -0.5 : (x + 0.5) / scale - 0.5;
    case KP_RC_HALF_PIXEL_SYMMETRIC: {
        double adjustment = (double)out / out_w, center = (double)in / 2;
        return center * (1 - adjustment) + (x + 0.5) / scale - 0.5;
    }
    default: /* half_pixel */
        return (x + 0.5) / scale - 0.5;
    }
}

static void cubic_coeffs(double r, double A, double *c)
{
    double s = r + 1, t = 1 - r, u = t + 1;
    c[0] = ((A * s - 5 * A) * s + 8 * A) * s - 4 * A;
    c[1] = ((A + 2) * r - (A + 3)) * r * r + 1;
    c[2] = ((A + 2) * t - (A + 3)) * t * t + 1;
    c[3] = ((A * u - 5 * A) * u + 8 * A) * u - 4 * A;
}

/* The taps of output coordinate o: the first input index of the window (before clamping)
 * and n weights. */
static int64_t taps(const resize_k *k, int mode, int nearest_mode, bool exclude, double A,
                    double scale, int64_t in, int64_t out, int64_t o, int n, double *w)
{
    double x = source_coord(mode, (double)o, scale, in, out);
    double fl = floor(x);
    bool integral = x == fl;
    double r = integral ? 1 : x - fl;
    double c = ceil(x);
    if (c < 0)
        c = 0;
    if (c > (double)in)
        c = (double)in;
    int64_t start = (int64_t)c - n / 2;
    if (k->nearest) {
        bool hi;
        if (integral)
            hi = true;
        else if (nearest_mode == KP_RN_ROUND_PREFER_FLOOR)
            hi = r > 0.5;
        else if (nearest_mode == KP_RN_ROUND_PREFER_CEIL)
            hi = r >= 0.5;
        else
            hi = nearest_mode == KP_RN_CEIL;
        w[0] = hi ? 0 : 1;
        w[1] = hi ? 1 : 0;
    } else if (n == 2) {
        w[0] = 1 - r;
        w[1] = r;
    } else {
        cubic_coeffs(r, A, w);
    }
    if (exclude && !k->nearest) {
        double sum = 0;
        for (int t = 0; t < n; t++) {
            int64_t i = start + t;
            if (i < 0 || i >= in)
                w[t] = 0;
            sum += w[t];
        }
        for (int t = 0; t < n; t++)
            w[t] = sum != 0 ? w[t] / sum : 0;
    }
    return start;
}

static inline int64_t clampi(int64_t i, int64_t n) { return i < 0 ? 0 : i >= n ? n - 1 : i; }

/* One separable pass along an axis: dst[o][a][i] = sum_t w * src[o][idx][i]. */
#define PASS_FN(NAME, TS, TD)                                                                 \
    static void NAME(const rdim *r, int64_t outer, int64_t inner, const TS *src, TD *dst)     \
    {                                                                                         \
        const int n = r->ntap;                                                                \
        for (int64_t o = 0; o < outer; o++) {                                                 \
            const TS *s = src + o * r->in * inner;                                            \
            TD *d = dst + o * r->out * inner;                                                 \
            for (int64_t a = 0; a < r->out; a++) {                                            \
                const int64_t *ix = r->idx + a * n;                                           \
                const double *w = r->w + a * n;                                               \
                TD *dr = d + a * inner;                                                       \
                if (inner == 1) {                                                             \
                    double acc = 0;                                                           \
                    for (int t = 0; t < n; t++)                                               \
                        acc += w[t] * (double)s[ix[t]];                                       \
                    dr[0] = (TD)acc;                                                          \
                    continue;                                                                 \
                }                                                                             \
                for (int64_t i = 0; i < inner; i++)                                           \
                    dr[i] = 0;                                                                \
                for (int t = 0; t < n; t++) {                                                 \
                    if (w[t] == 0)                                                            \
                        continue;                                                             \
                    const TS *sr = s + ix[t] * inner;                                         \
                    const TD wt = (TD)w[t];                                                   \
                    for (int64_t i = 0; i < inner; i++)                                       \
                        dr[i] += wt * (TD)sr[i];                                              \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }
PASS_FN(pass_f32_f64, float, double)
PASS_FN(pass_f64_f64, double, double)
PASS_FN(pass_f64_f32, double, float)
PASS_FN(pass_f32_f32, float, float)

static kiln_status resize_run(kk_kernel *kk)
{
    resize_k *k = (resize_k *)kk;
    if (k->nearest) {
        kr_map_run(&k->map, k->x, k->y);
        return KILN_OK;
    }
    size_t es = kr_esize(k->dt);
    if (k->npass == 0) {
        memcpy(k->y, k->x, (size_t)k->n_x * es);
        return KILN_OK;
    }
    int64_t shape[KILN_MAX_DIMS];
    memcpy(shape, k->shape, sizeof shape);
    const void *src = k->x;
    bool src_is_x = true;
    for (int p = 0; p < k->npass; p++) {
        const rdim *r = &k->pass[p];
        int64_t outer = kr_prod(shape, 0, r->d), inner = kr_prod(shape, r->d + 1, k->nd);
        bool last = p == k->npass - 1;
        void *dst = last ? k->y : k->tmp[p & 1];
        bool f32 = k->dt == KILN_F32;
        if (src_is_x && last)
            f32 ? pass_f32_f32(r, outer, inner, src, dst) : pass_f64_f64(r, outer, inner, src, dst);
        else if (src_is_x)
            f32 ? pass_f32_f64(r, outer, inner, src, dst) : pass_f64_f64(r, outer, inner, src, dst);
        else if (last)
            f32 ? pass_f64_f32(r, outer, inner, src, dst) : pass_f64_f64(r, outer, inner, src, dst);
        else
            pass_f64_f64(r, outer, inner, src, dst);
        shape[r->d] = r->out;
        src = dst;
        src_is_x = false;
    }
    return KILN_OK;
}

static void resize_destroy(kk_kernel *kk)
{
    resize_k *k = (resize_k *)kk;
    kr_map_free(&k->map);
    for (int p = 0; p < k->npass; p++) {
        kiln__free(k->pass[p].idx);
        kiln__free(k->pass[p].w);
    }
    kiln__free(k->tmp[0]);
    kiln__free(k->tmp[1]);
    kiln__free(k);
}

kiln_status kr_check_resize(const kr_op *o)
{
    const kp_op *op = o->op;
    if (op->n_in != 1 || op->n_out != 1 || !kr_in(o, 0) || !kr_out(o, 0))
        return kr_bad(o, "expects 1 input and 1 output");
    const kp_value *x = kr_in(o, 0), *y = kr_out(o, 0);
    if (op->sub > KP_RESIZE_CUBIC)
        return kr_bad(o, "unknown mode %u", op->sub);
    if (op->n_ia != 3 || op->n_fa != (uint32_t)x->ndim + 2)
        return kr_bad(o, "expects 3 int and %d float attributes", x->ndim + 2);
    int64_t coord = o->ia[0], nmode = o->ia[1], excl = o->ia[2];
    if (coord == KP_RC_TF_CROP_AND_RESIZE)
        return kr_bad(o, "coordinate_transformation_mode tf_crop_and_resize not supported");
    if (coord < 0 || coord > KP_RC_HALF_PIXEL_SYMMETRIC || nmode < 0 || nmode > KP_RN_CEIL ||
        (excl != 0 && excl != 1))
        return kr_bad(o, "bad coordinate, nearest or exclude_outside attribute");
    if (y->dtype != x->dtype || y->ndim != x->ndim || x->ndim < 1)
        return kr_bad(o, "output differs from the input in dtype or rank");
    if (op->sub != KP_RESIZE_NEAREST && !kr_is_float(x->dtype))
        return kr_bad(o, "dtype %s not supported for linear/cubic", kr_dtname(x->dtype));
    for (int d = 0; d < x->ndim; d++) {
        float s = o->fa[d];
        if (!(s > 0) || isinf(s))
            return kr_bad(o, "scale %g on axis %d", (double)s, d);
        if (x->shape[d] == 0 && y->shape[d] != 0)
            return kr_bad(o, "cannot resize an empty axis %d", d);
    }
    if (!isfinite(o->fa[x->ndim]))
        return kr_bad(o, "cubic_coeff_a is not finite");
    return KILN_OK;
}

/* The nearest index map, walking Y in its storage order. x_cl / y_cl: X / Y stored
 * channels-last (N x spatial... x C) rather than dense. */
static kiln_status nearest_map(resize_k *k, const kr_op *o, bool x_cl, bool y_cl)
{
    const kp_value *x = kr_in(o, 0), *y = kr_out(o, 0);
    int coord = (int)o->ia[0], nmode = (int)o->ia[1], nd = y->ndim;
    double A = o->fa[x->ndim], w[4];
    int64_t xs[KILN_MAX_DIMS], yn[KILN_MAX_DIMS];
    int perm[KILN_MAX_DIMS];        /* Y's storage order of its dims */
    kr_strides(nd, x->shape, xs);
    if (x_cl) {                     /* C innermost, then the spatial dims, then N */
        int64_t st = 1;
        xs[1] = st;
        st *= x->shape[1];
        for (int d = nd - 1; d >= 2; d--) {
            xs[d] = st;
            st *= x->shape[d];
        }
        xs[0] = st;
    }
    for (int j = 0; j < nd; j++)
        perm[j] = !y_cl ? j : j == 0 ? 0 : j == nd - 1 ? 1 : j + 1;
    for (int j = 0; j < nd; j++)
        yn[j] = y->shape[perm[j]];
    kr_map_free(&k->map);
    kiln_status s = kr_map_alloc(&k->map, nd, yn, kr_esize(y->dtype));
    if (s != KILN_OK)
        return s;
    for (int j = 0; j < nd; j++) {
        int d = perm[j];
        for (int64_t a = 0; a < y->shape[d]; a++) {
            int64_t start = taps(k, coord, nmode, false, A, o->fa[d], x->shape[d], y->shape[d], a,
                                 2, w);
            k->map.off[j][a] = clampi(start + (w[1] != 0), x->shape[d]) * xs[d];
        }
    }
    kr_map_finish(&k->map);
    return KILN_OK;
}

bool kr_resize_takes_cl(const kp_program *p, uint32_t i)
{
    const kp_op *op = &p->ops[i];
    const kp_value *x = &p->values[kp_op_in(p, op)[0]], *y = &p->values[kp_op_out(p, op)[0]];
    return op->sub == KP_RESIZE_NEAREST && x->dtype == KILN_F32 && x->ndim >= 3 &&
           y->ndim == x->ndim;
}

kiln_status kr_resize_set_cl(kk_kernel *kk, const kr_op *o, bool x_cl, bool y_cl)
{
    resize_k *k = (resize_k *)kk;
    kiln_status s = nearest_map(k, o, x_cl, y_cl);
    return s ? kr_fail(o->p, o->index, s, "out of memory") : KILN_OK;
}

kiln_status kr_create_resize(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    resize_k *k = kr_kernel_new(o, sizeof *k, resize_run);
    if (!k)
        return KILN_ERR_NOMEM;
    k->base.destroy = resize_destroy;
    const kp_value *x = kr_in(o, 0), *y = kr_out(o, 0);
    int coord = (int)o->ia[0], nmode = (int)o->ia[1];
    bool exclude = o->ia[2] != 0;
    double A = o->fa[x->ndim];
    k->nearest = o->op->sub == KP_RESIZE_NEAREST;
    k->dt = x->dtype;
    k->nd = x->ndim;
    memcpy(k->shape, x->shape, sizeof k->shape);
    k->n_x = kr_numel(x);
    k->x = ptr[o->in[0]];
    k->y = ptr[o->out[0]];
    kiln_status s = KILN_OK;
    int n = k->nearest ? 2 : o->op->sub == KP_RESIZE_LINEAR ? 2 : 4;
    double w[4];
    if (k->nearest) {
        s = nearest_map(k, o, false, false);
    } else {
        int64_t cur = k->n_x, biggest = 0;
        for (int d = 0; d < x->ndim && s == KILN_OK; d++) {
            int64_t in = x->shape[d], outn = y->shape[d];
            rdim *r = &k->pass[k->npass];
            r->d = d;
            r->ntap = n;
            r->in = in;
            r->out = outn;
            r->idx = kiln__malloc((size_t)(outn * n + 1) * sizeof(int64_t));
            r->w = kiln__malloc((size_t)(outn * n + 1) * sizeof(double));
            k->npass++;
            if (!r->idx || !r->w) {
                s = kiln__fail(KILN_ERR_NOMEM, "out of memory");
                break;
            }
            bool identity = in == outn;
            for (int64_t a = 0; a < outn; a++) {
                int64_t start = taps(k, coord, nmode, exclude, A, o->fa[d], in, outn, a, n, w);
                for (int t = 0; t < n; t++) {
                    int64_t i = clampi(start + t, in);
                    r->idx[a * n + t] = i;
                    r->w[a * n + t] = w[t];
                    if (w[t] != 0 && (i != a || w[t] != 1))
                        identity = false;
                }
            }
            if (identity) {
                k->npass--;
                kiln__free(r->idx);
                kiln__free(r->w);
                r->idx = NULL;
                r->w = NULL;
                continue;
            }
            cur = in ? cur / in * outn : 0;
            if (cur > biggest)
                biggest = cur;
        }
        /* the last pass writes Y; the others ping-pong through two double buffers */
        if (s == KILN_OK && k->npass > 1) {
            for (int b = 0; b < 2 && s == KILN_OK; b++) {
                k->tmp[b] = kiln__malloc((size_t)(biggest ? biggest : 1) * sizeof(double));
                if (!k->tmp[b])
                    s = kiln__fail(KILN_ERR_NOMEM, "out of memory");
            }
        }
    }
    if (s != KILN_OK) {
        resize_destroy(&k->base);
        return kr_fail(o->p, o->index, s, "out of memory");
    }
    *out = &k->base;
    return KILN_OK;
}
