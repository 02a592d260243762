/*
 * ref_nn.c — reference kernels for the network op kinds: Conv and ConvTranspose (1-D to
 * 3-D, groups, strides, dilations, pads, bias, fused post-ops; f32), MatMul (numpy batch
 * broadcasting, 1-D operands, bias, post-ops; f32), Pool (max with optional Indices,
 * average; dilations, pads, ceil mode) and GlobalPool.
 *
 * Spatial ops work on three spatial dims; 1-D and 2-D ops get leading unit dims. Per
 * kernel offset and per dim, the range of output positions that read inside the input is
 * worked out at create time, so the inner loops carry no bounds tests.
 */
#include "kernels/ref.h"

#include <math.h>

static inline int64_t floor_div(int64_t a, int64_t b) /* b > 0 */
{
    return a >= 0 ? a / b : -((-a + b - 1) / b);
}
static inline int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

/* [*lo, *hi): the t in [0, n) with 0 <= t*s + k*d - p < bound. */
static void valid_range(int64_t n, int64_t bound, int64_t s, int64_t d, int64_t p, int64_t k,
                        int64_t *lo, int64_t *hi)
{
    int64_t a = ceil_div(p - k * d, s), b = floor_div(bound - 1 + p - k * d, s) + 1;
    *lo = a < 0 ? 0 : a;
    *hi = b > n ? n : b;
    if (*hi < *lo)
        *hi = *lo;
}

/* ---- a small GEMM: C[M x N] = A[M x K] * B[K x N], row-major with leading dims ---- */

#define GEMM_FN(T, SUF)                                                                       \
    static void gemm_##SUF(int64_t M, int64_t N, int64_t K, const T *A, int64_t lda,          \
                           const T *B, int64_t ldb, T *C, int64_t ldc)                        \
    {                                                                                         \
        if (N < 8) {                                                                          \
            for (int64_t i = 0; i < M; i++)                                                   \
                for (int64_t j = 0; j < N; j++) {                                             \
                    T s = 0;                                                                  \
                    for (int64_t k = 0; k < K; k++)                                           \
                        s += A[i * lda + k] * B[k * ldb + j];                                 \
                    C[i * ldc + j] = s;                                                       \
                }                                                                             \
            return;                                                                           \
        }                                                                                     \
        enum { NB = 512, KB = 128 };                                                          \
        for (int64_t jb = 0; jb < N; jb += NB) {                                              \
            const int64_t nb = N - jb < NB ? N - jb : NB;                                     \
            for (int64_t i = 0; i < M; i++)                                                   \
                memset(C + i * ldc + jb, 0, (size_t)nb * sizeof(T));                          \
            for (int64_t kb = 0; kb < K; kb += KB) {                                          \
                const int64_t ke = K - kb < KB ? K : kb + KB;                                 \
                int64_t i = 0;                                                                \
                for (; i + 4 <= M; i += 4) {                                                  \
                    T *restrict c0 = C + i * ldc + jb, *restrict c1 = c0 + ldc;               \
                    T *restrict c2 = c1 + ldc, *restrict c3 = c2 + ldc;                       \
                    for (int64_t k = kb; k < ke; k++) {                                       \
                        const T a0 = A[i * lda + k], a1 = A[(i + 1) * lda + k];               \
                        const T a2 = A[(i + 2) * lda + k], a3 = A[(i + 3) * lda + k];         \
                        const T *restrict b = B + k * ldb + jb;                               \
                        for (int64_t j = 0; j < nb; j++) {                                    \
                            const T bj = b[j];                                                \
                            c0[j] += a0 * bj;                                                 \
                            c1[j] += a1 * bj;                                                 \
                            c2[j] += a2 * bj;                                                 \
                            c3[j] += a3 * bj;                                                 \
                        }                                                                     \
                    }                                                                         \
                }                                                                             \
                for (; i < M; i++) {                                                          \
                    T *restrict c0 = C + i * ldc + jb;                                        \
                    for (int64_t k = kb; k < ke; k++) {                                       \
                        const T a0 = A[i * lda + k];                                          \
                        const T *restrict b = B + k * ldb + jb;                               \
                        for (int64_t j = 0; j < nb; j++)                                      \
                            c0[j] += a0 * b[j];                                               \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }
GEMM_FN(float, f32)
GEMM_FN(double, f64)

/* ---- spatial geometry shared by Conv, ConvTranspose and Pool ---- */

typedef struct geom {
    int nsp;
    int64_t in[3], out[3], k[3], s[3], d[3], pb[3], pe[3];  /* padded to 3 dims, leading */
} geom;

/* Reads nsp spatial attributes starting at ia[at] in the order given by `which`
 * ("k" kernel, "s" strides, "d" dilations, "b" pads_begin, "e" pads_end). */
static void geom_read(geom *g, const int64_t *ia, int at, const char *which, int nsp,
                      const kp_value *x, const kp_value *y, const kp_value *w)
{
    int lead = 3 - nsp;
    g->nsp = nsp;
    for (int i = 0; i < 3; i++) {
        g->in[i] = g->out[i] = g->k[i] = g->s[i] = g->d[i] = 1;
        g->pb[i] = g->pe[i] = 0;
    }
    for (int i = 0; i < nsp; i++) {
        g->in[lead + i] = x->shape[2 + i];
        g->out[lead + i] = y->shape[2 + i];
        if (w)
            g->k[lead + i] = w->shape[2 + i];
    }
    for (int f = 0; which[f]; f++) {
        int64_t *dst = which[f] == 'k' ? g->k : which[f] == 's' ? g->s : which[f] == 'd' ? g->d
                     : which[f] == 'b' ? g->pb : g->pe;
        for (int i = 0; i < nsp; i++)
            dst[lead + i] = ia[at + f * nsp + i];
    }
}

static kiln_status geom_check(const kr_op *o, const geom *g)
{
    int lead = 3 - g->nsp;
    for (int i = lead; i < 3; i++) {
        if (g->k[i] < 1 || g->s[i] < 1 || g->d[i] < 1 || g->pb[i] < 0 || g->pe[i] < 0)
            return kr_bad(o, "bad kernel, stride, dilation or pad on spatial axis %d", i - lead);
        if (g->k[i] > KR_MAX_EXTENT || g->s[i] > KR_MAX_ATTR || g->d[i] > KR_MAX_ATTR ||
            g->pb[i] > KR_MAX_ATTR || g->pe[i] > KR_MAX_ATTR)
            return kr_bad(o, "spatial attribute too large on axis %d", i - lead);
    }
    return KILN_OK;
}

/* ================================ Conv / ConvTranspose ================================ */

typedef struct conv_k {
    kk_kernel base;
    bool transpose, one_by_one;
    geom g;
    int64_t N, C, O, group;
    const float *x, *w, *bias;
    float *y;
    int64_t *lo[3], *hi[3];     /* per spatial dim, per kernel offset */
    int64_t *buf;
    kr_post post;
} conv_k;

static void conv_destroy(kk_kernel *kk)
{
    conv_k *k = (conv_k *)kk;
    kr_post_free(&k->post);
    kiln__free(k->buf);
    kiln__free(k);
}

static void conv_forward(const conv_k *k)
{
    const geom *g = &k->g;
    const int64_t Cg = k->C / k->group, Og = k->O / k->group;
    const int64_t IH = g->in[1], IW = g->in[2], OH = g->out[1], OW = g->out[2];
    const int64_t IS = g->in[0] * IH * IW, OS = g->out[0] * OH * OW;
    const int64_t KD = g->k[0], KH = g->k[1], KW = g->k[2], KS = KD * KH * KW;
    const int64_t sw = g->s[2];
    for (int64_t n = 0; n < k->N; n++) {
        for (int64_t gr = 0; gr < k->group; gr++) {
            const float *xg = k->x + (n * k->C + gr * Cg) * IS;
            float *yg = k->y + (n * k->O + gr * Og) * OS;
            if (k->one_by_one) {
                gemm_f32(Og, OS, Cg, k->w + gr * Og * Cg, Cg, xg, IS, yg, OS);
                continue;
            }
            for (int64_t oc = 0; oc < Og; oc++) {
                float *ypl = yg + oc * OS;
                memset(ypl, 0, (size_t)OS * sizeof(float));
                for (int64_t ic = 0; ic < Cg; ic++) {
                    const float *xpl = xg + ic * IS;
                    const float *wk = k->w + ((gr * Og + oc) * Cg + ic) * KS;
                    for (int64_t kd = 0; kd < KD; kd++)
                        for (int64_t kh = 0; kh < KH; kh++)
                            for (int64_t kw = 0; kw < KW; kw++) {
                                const float wv = wk[(kd * KH + kh) * KW + kw];
                                const int64_t ow0 = k->lo[2][kw], ow1 = k->hi[2][kw];
                                if (ow1 <= ow0)
                                    continue;
                                for (int64_t od = k->lo[0][kd]; od < k->hi[0][kd]; od++) {
                                    const int64_t id = od * g->s[0] + kd * g->d[0] - g->pb[0];
                                    for (int64_t oh = k->lo[1][kh]; oh < k->hi[1][kh]; oh++) {
                                        const int64_t ih = oh * g->s[1] + kh * g->d[1] - g->pb[1];
                                        float *restrict yr = ypl + (od * OH + oh) * OW;
                                        const float *xr = xpl + (id * IH + ih) * IW +
                                                          (ow0 * sw + kw * g->d[2] - g->pb[2]);
                                        if (sw == 1)
                                            for (int64_t ow = ow0; ow < ow1; ow++)
                                                yr[ow] += wv * xr[ow - ow0];
                                        else
                                            for (int64_t ow = ow0; ow < ow1; ow++)
                                                yr[ow] += wv * xr[(ow - ow0) * sw];
                                    }
                                }
                            }
                }
            }
        }
    }
}

static void conv_transpose_forward(const conv_k *k)
{
    const geom *g = &k->g;
    const int64_t Cg = k->C / k->group, Og = k->O / k->group;
    const int64_t IH = g->in[1], IW = g->in[2], OH = g->out[1], OW = g->out[2];
    const int64_t IS = g->in[0] * IH * IW, OS = g->out[0] * OH * OW;
    const int64_t KD = g->k[0], KH = g->k[1], KW = g->k[2], KS = KD * KH * KW;
    const int64_t sw = g->s[2];
    memset(k->y, 0, (size_t)(k->N * k->O * OS) * sizeof(float));
    for (int64_t n = 0; n < k->N; n++) {
        for (int64_t gr = 0; gr < k->group; gr++) {
            for (int64_t ic = 0; ic < Cg; ic++) {
                const float *xpl = k->x + (n * k->C + gr * Cg + ic) * IS;
                for (int64_t oc = 0; oc < Og; oc++) {
                    float *ypl = k->y + (n * k->O + gr * Og + oc) * OS;
                    const float *wk = k->w + ((gr * Cg + ic) * Og + oc) * KS;
                    for (int64_t kd = 0; kd < KD; kd++)
                        for (int64_t kh = 0; kh < KH; kh++)
                            for (int64_t kw = 0; kw < KW; kw++) {
                                const float wv = wk[(kd * KH + kh) * KW + kw];
                                const int64_t iw0 = k->lo[2][kw], iw1 = k->hi[2][kw];
                                if (iw1 <= iw0)
                                    continue;
                                for (int64_t id = k->lo[0][kd]; id < k->hi[0][kd]; id++) {
                                    const int64_t od = id * g->s[0] + kd * g->d[0] - g->pb[0];
                                    for (int64_t ih = k->lo[1][kh]; ih < k->hi[1][kh]; ih++) {
                                        const int64_t oh = ih * g->s[1] + kh * g->d[1] - g->pb[1];
                                        const float *xr = xpl + (id * IH + ih) * IW;
                                        float *yr = ypl + (od * OH + oh) * OW +
                                                    (iw0 * sw + kw * g->d[2] - g->pb[2]);
                                        for (int64_t iw = iw0; iw < iw1; iw++)
                                            yr[(iw - iw0) * sw] += wv * xr[iw];
                                    }
                                }
                            }
                }
            }
        }
    }
}

static kiln_status conv_run(kk_kernel *kk)
{
    conv_k *k = (conv_k *)kk;
    kr_post_pre(&k->post);
    if (k->transpose)
        conv_transpose_forward(k);
    else
        conv_forward(k);
    const int64_t OS = k->g.out[0] * k->g.out[1] * k->g.out[2];
    if (k->bias)
        for (int64_t n = 0; n < k->N; n++)
            for (int64_t c = 0; c < k->O; c++) {
                float *yp = k->y + (n * k->O + c) * OS;
                const float b = k->bias[c];
                for (int64_t j = 0; j < OS; j++)
                    yp[j] += b;
            }
    kr_post_run(&k->post, k->y);
    return KILN_OK;
}

static kiln_status check_conv_common(const kr_op *o, bool transpose)
{
    const kp_op *op = o->op;
    if (op->n_out != 1 || op->n_in < 2 || !kr_in(o, 0) || !kr_in(o, 1) || !kr_out(o, 0))
        return kr_bad(o, "expects X, W, [B], post-op operands and one output");
    if (op->n_ia < 2)
        return kr_bad(o, "int attributes too short");
    int64_t group = o->ia[0], nsp = o->ia[1];
    if (nsp < 1 || nsp > 3)
        return kr_bad(o, "%lld spatial dims not supported (1 to 3)", (long long)nsp);
    int nattr = transpose ? 5 : 4, post_at = 2 + nattr * (int)nsp;
    int n_operands;
    kiln_status s = kr_post_check(o, post_at, op->n_in >= 3 ? 3 : 2, &n_operands);
    if (s != KILN_OK)
        return s;
    const kp_value *x = kr_in(o, 0), *w = kr_in(o, 1), *b = kr_in(o, 2), *y = kr_out(o, 0);
    if (x->dtype != KILN_F32 || w->dtype != KILN_F32 || y->dtype != KILN_F32 ||
        (b && b->dtype != KILN_F32))
        return kr_bad(o, "dtype %s not supported (f32 only)",
                      kr_dtname(x->dtype != KILN_F32 ? x->dtype : w->dtype != KILN_F32 ? w->dtype
                                : y->dtype != KILN_F32 ? y->dtype : b->dtype));
    if (x->ndim != 2 + nsp || w->ndim != 2 + nsp || y->ndim != 2 + nsp)
        return kr_bad(o, "X, W and Y must have rank %lld", (long long)(2 + nsp));
    int64_t C = x->shape[1], O = y->shape[1];
    if (group < 1 || C % group || O % group)
        return kr_bad(o, "group %lld does not divide %lld input and %lld output channels",
                      (long long)group, (long long)C, (long long)O);
    if (y->shape[0] != x->shape[0])
        return kr_bad(o, "batch of Y differs from X's");
    if (transpose ? (w->shape[0] != C || w->shape[1] * group != O)
                  : (w->shape[0] != O || w->shape[1] * group != C))
        return kr_bad(o, "weight shape does not match the channels");
    if (b && kr_numel(b) != O)
        return kr_bad(o, "bias has %lld elements, not %lld", (long long)kr_numel(b), (long long)O);
    geom g;
    geom_read(&g, o->ia, 2, "sdbe", (int)nsp, x, y, w);
    s = geom_check(o, &g);
    if (s != KILN_OK)
        return s;
    /* Conv's output extents must follow from the geometry; ConvTranspose's come from Y
     * (output_shape and output_padding only add positions no input reaches). */
    for (int i = 3 - (int)nsp; i < 3; i++) {
        if (transpose) {
            int64_t op_ = o->ia[2 + 4 * nsp + (i - (3 - nsp))];
            if (op_ < 0 || op_ > KR_MAX_ATTR)
                return kr_bad(o, "output_padding %lld", (long long)op_);
            continue;
        }
        int64_t eff = (g.k[i] - 1) * g.d[i] + 1;
        int64_t want = floor_div(g.in[i] + g.pb[i] + g.pe[i] - eff, g.s[i]) + 1;
        if (g.out[i] != want)
            return kr_bad(o, "output extent %lld on spatial axis %d, expected %lld",
                          (long long)g.out[i], i - (3 - (int)nsp), (long long)want);
    }
    return KILN_OK;
}

kiln_status kr_check_conv(const kr_op *o) { return check_conv_common(o, false); }
kiln_status kr_check_conv_transpose(const kr_op *o) { return check_conv_common(o, true); }

static kiln_status create_conv_common(const kr_op *o, void *const *ptr, bool transpose,
                                      kk_kernel **out)
{
    conv_k *k = kr_kernel_new(o, sizeof *k, conv_run);
    if (!k)
        return KILN_ERR_NOMEM;
    k->base.destroy = conv_destroy;
    const kp_value *x = kr_in(o, 0), *w = kr_in(o, 1), *y = kr_out(o, 0);
    int nsp = (int)o->ia[1];
    k->transpose = transpose;
    k->group = o->ia[0];
    k->N = x->shape[0];
    k->C = x->shape[1];
    k->O = y->shape[1];
    geom_read(&k->g, o->ia, 2, "sdbe", nsp, x, y, w);
    k->x = ptr[o->in[0]];
    k->w = ptr[o->in[1]];
    k->bias = kr_in(o, 2) ? ptr[o->in[2]] : NULL;
    k->y = ptr[o->out[0]];
    const geom *g = &k->g;
    k->buf = kiln__malloc(2 * (size_t)(g->k[0] + g->k[1] + g->k[2]) * sizeof(int64_t));
    kiln_status s = k->buf ? KILN_OK : kiln__fail(KILN_ERR_NOMEM, "out of memory");
    if (s == KILN_OK) {
        int64_t *p = k->buf;
        for (int i = 0; i < 3; i++) {
            k->lo[i] = p;
            k->hi[i] = p + g->k[i];
            p += 2 * g->k[i];
            for (int64_t t = 0; t < g->k[i]; t++) {
                if (transpose)
                    valid_range(g->in[i], g->out[i], g->s[i], g->d[i], g->pb[i], t, &k->lo[i][t], &k->hi[i][t]);
                else
                    valid_range(g->out[i], g->in[i], g->s[i], g->d[i], g->pb[i], t, &k->lo[i][t], &k->hi[i][t]);
            }
        }
        k->one_by_one = !transpose;
        for (int i = 0; i < 3; i++)
            if (g->k[i] != 1 || g->s[i] != 1 || g->pb[i] != 0 || g->pe[i] != 0)
                k->one_by_one = false;
        int post_at = 2 + (transpose ? 5 : 4) * nsp;
        s = kr_post_init(&k->post, o, post_at, o->op->n_in >= 3 ? 3 : 2, ptr);
    }
    if (s != KILN_OK) {
        conv_destroy(&k->base);
        return kr_fail(o->p, o->index, s, "out of memory");
    }
    *out = &k->base;
    return KILN_OK;
}

kiln_status kr_create_conv(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    return create_conv_common(o, ptr, false, out);
}

kiln_status kr_create_conv_transpose(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    return create_conv_common(o, ptr, true, out);
}

/* ================================ MatMul ================================ */

typedef struct matmul_k {
    kk_kernel base;
    bool f64;
    int64_t M, N, K, nbatch;
    const void *a, *b;
    void *y;
    int64_t *aoff, *boff;       /* per batch element offsets */
    const void *bias;
    kr_bcast bias_bc;
    kr_post post;
} matmul_k;

static void matmul_destroy(kk_kernel *kk)
{
    matmul_k *k = (matmul_k *)kk;
    kr_post_free(&k->post);
    kiln__free(k->aoff);
    kiln__free(k);
}

static kiln_status matmul_run(kk_kernel *kk)
{
    matmul_k *k = (matmul_k *)kk;
    const int64_t M = k->M, N = k->N, K = k->K;
    kr_post_pre(&k->post);
    for (int64_t t = 0; t < k->nbatch; t++) {
        if (k->f64)
            gemm_f64(M, N, K, (const double *)k->a + k->aoff[t], K, (const double *)k->b + k->boff[t],
                     N, (double *)k->y + t * M * N, N);
        else
            gemm_f32(M, N, K, (const float *)k->a + k->aoff[t], K, (const float *)k->b + k->boff[t],
                     N, (float *)k->y + t * M * N, N);
    }
    if (k->bias) {
        const kr_bcast *bc = &k->bias_bc;
        const size_t es = k->f64 ? sizeof(double) : sizeof(float);
        kr_bin_fn add = kr_binary_fn(KP_B_ADD, k->f64 ? KILN_F64 : KILN_F32, 0);
        int64_t idx[KILN_MAX_DIMS] = {0}, off[3] = {0};
        for (int64_t r = 0; r < bc->rows; r++) {
            char *row = (char *)k->y + (size_t)(r * bc->inner) * es;
            add(row, 1, (const char *)k->bias + (size_t)off[1] * es, bc->st[1][bc->nd - 1], row,
                bc->inner);
            kr_bcast_next(bc, idx, off);
        }
    }
    if (!k->f64)
        kr_post_run(&k->post, k->y);
    return KILN_OK;
}

/* Shapes of a numpy matmul: batch dims of A and B (padded to nb), M, K, N. */
typedef struct mm_shape {
    int nb;
    int64_t ab[KILN_MAX_DIMS], bb[KILN_MAX_DIMS], yb[KILN_MAX_DIMS];
    int64_t M, K, N, Kb;
} mm_shape;

static bool mm_shape_of(const kp_value *a, const kp_value *b, mm_shape *s)
{
    int na = a->ndim >= 2 ? a->ndim - 2 : 0, nbb = b->ndim >= 2 ? b->ndim - 2 : 0;
    s->nb = na > nbb ? na : nbb;
    s->M = a->ndim >= 2 ? a->shape[a->ndim - 2] : 1;
    s->K = a->shape[a->ndim - 1];
    s->Kb = b->ndim >= 2 ? b->shape[b->ndim - 2] : b->shape[0];
    s->N = b->ndim >= 2 ? b->shape[b->ndim - 1] : 1;
    for (int d = 0; d < s->nb; d++) {
        int da = d - (s->nb - na), db = d - (s->nb - nbb);
        s->ab[d] = da >= 0 ? a->shape[da] : 1;
        s->bb[d] = db >= 0 ? b->shape[db] : 1;
        if (s->ab[d] != s->bb[d] && s->ab[d] != 1 && s->bb[d] != 1)
            return false;
        s->yb[d] = s->ab[d] == 1 ? s->bb[d] : s->ab[d];
    }
    return s->K == s->Kb;
}

kiln_status kr_check_matmul(const kr_op *o)
{
    const kp_op *op = o->op;
    if (op->n_out != 1 || op->n_in < 2 || !kr_in(o, 0) || !kr_in(o, 1) || !kr_out(o, 0))
        return kr_bad(o, "expects A, B, [bias], post-op operands and one output");
    int n_operands;
    kiln_status s = kr_post_check(o, 0, op->n_in >= 3 ? 3 : 2, &n_operands);
    if (s != KILN_OK)
        return s;
    const kp_value *a = kr_in(o, 0), *b = kr_in(o, 1), *bias = kr_in(o, 2), *y = kr_out(o, 0);
    if (!kr_is_float(a->dtype) || b->dtype != a->dtype || y->dtype != a->dtype ||
        (bias && bias->dtype != a->dtype))
        return kr_bad(o, "dtypes %s x %s -> %s not supported (f32, f64)", kr_dtname(a->dtype),
                      kr_dtname(b->dtype), kr_dtname(y->dtype));
    if (a->dtype == KILN_F64 && o->ia[0] != 0)
        return kr_bad(o, "post-ops on f64 not supported");
    if (a->ndim < 1 || b->ndim < 1)
        return kr_bad(o, "operands must have rank 1 or more");
    mm_shape ms;
    if (!mm_shape_of(a, b, &ms))
        return kr_bad(o, "operand shapes do not multiply");
    /* Y: batch, then M unless A is 1-D, then N unless B is 1-D */
    int64_t want[KILN_MAX_DIMS + 2];
    int nd = 0;
    for (int d = 0; d < ms.nb; d++)
        want[nd++] = ms.yb[d];
    if (a->ndim >= 2)
        want[nd++] = ms.M;
    if (b->ndim >= 2)
        want[nd++] = ms.N;
    bool ok = y->ndim == nd;
    for (int d = 0; ok && d < nd; d++)
        ok = y->shape[d] == want[d];
    if (!ok)
        return kr_bad(o, "output shape does not match the operands");
    if (bias && !kr_bcast_ok(1, &bias, y->ndim, y->shape))
        return kr_bad(o, "bias does not broadcast to the output");
    return KILN_OK;
}

kiln_status kr_create_matmul(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    matmul_k *k = kr_kernel_new(o, sizeof *k, matmul_run);
    if (!k)
        return KILN_ERR_NOMEM;
    k->base.destroy = matmul_destroy;
    const kp_value *a = kr_in(o, 0), *b = kr_in(o, 1), *bias = kr_in(o, 2), *y = kr_out(o, 0);
    mm_shape ms;
    mm_shape_of(a, b, &ms);
    k->f64 = a->dtype == KILN_F64;
    k->M = ms.M;
    k->N = ms.N;
    k->K = ms.K;
    k->nbatch = kr_prod(ms.yb, 0, ms.nb);
    k->a = ptr[o->in[0]];
    k->b = ptr[o->in[1]];
    k->y = ptr[o->out[0]];
    kiln_status s = KILN_OK;
    k->aoff = kiln__malloc(2 * (size_t)(k->nbatch ? k->nbatch : 1) * sizeof(int64_t));
    if (!k->aoff) {
        s = kiln__fail(KILN_ERR_NOMEM, "out of memory");
    } else {
        k->boff = k->aoff + k->nbatch;
        int64_t as[KILN_MAX_DIMS], bs[KILN_MAX_DIMS], sa = ms.M * ms.K, sb = ms.K * ms.N;
        for (int d = ms.nb - 1; d >= 0; d--) {
            as[d] = ms.ab[d] == 1 ? 0 : sa;
            bs[d] = ms.bb[d] == 1 ? 0 : sb;
            sa *= ms.ab[d];
            sb *= ms.bb[d];
        }
        int64_t idx[KILN_MAX_DIMS] = {0};
        for (int64_t t = 0; t < k->nbatch; t++) {
            int64_t ao = 0, bo = 0;
            for (int d = 0; d < ms.nb; d++) {
                ao += idx[d] * as[d];
                bo += idx[d] * bs[d];
            }
            k->aoff[t] = ao;
            k->boff[t] = bo;
            for (int d = ms.nb - 1; d >= 0; d--) {
                if (++idx[d] < ms.yb[d])
                    break;
                idx[d] = 0;
            }
        }
        if (bias) {
            const kp_value *ins[2] = {y, bias};
            k->bias = ptr[o->in[2]];
            kr_bcast_init(&k->bias_bc, 2, ins, y->ndim, y->shape);
        }
        s = kr_post_init(&k->post, o, 0, o->op->n_in >= 3 ? 3 : 2, ptr);
    }
    if (s != KILN_OK) {
        matmul_destroy(&k->base);
        return kr_fail(o->p, o->index, s, "out of memory");
    }
    *out = &k->base;
    return KILN_OK;
}

/* ================================ Pool ================================ */

typedef struct pool_k {
    kk_kernel base;
    bool avg, include_pad;
    int dt;
    geom g;
    int64_t NC;
    const void *x;
    void *y;
    int64_t *ind;               /* MaxPool Indices, or NULL */
    int64_t *klo[3], *khi[3], *cnt[3];   /* per dim, per output position */
    int64_t *buf;
} pool_k;

#define POOL_FN(T, SUF, LOWEST)                                                                \
    static void pool_##SUF(const pool_k *k)                                                    \
    {                                                                                          \
        const geom *g = &k->g;                                                                 \
        const int64_t IH = g->in[1], IW = g->in[2], OD = g->out[0], OH = g->out[1],            \
                      OW = g->out[2];                                                          \
        const int64_t IS = g->in[0] * IH * IW, OS = OD * OH * OW;                              \
        const int64_t sd = g->s[0], sh = g->s[1], sw = g->s[2];                                \
        const int64_t dd = g->d[0], dh = g->d[1], dw = g->d[2];                                \
        const int64_t *const lo0 = k->klo[0], *const hi0 = k->khi[0];                          \
        const int64_t *const lo1 = k->klo[1], *const hi1 = k->khi[1];                          \
        const int64_t *const lo2 = k->klo[2], *const hi2 = k->khi[2];                          \
        const bool avg = k->avg, incl = k->include_pad;                                        \
        for (int64_t nc = 0; nc < k->NC; nc++) {                                               \
            const T *x = (const T *)k->x + nc * IS;                                            \
            T *y = (T *)k->y + nc * OS;                                                        \
            int64_t *ind = k->ind ? k->ind + nc * OS : NULL;                                   \
            for (int64_t od = 0; od < OD; od++) {                                              \
                const int64_t d0 = od * sd - g->pb[0], a0 = lo0[od], a1 = hi0[od];             \
                for (int64_t oh = 0; oh < OH; oh++) {                                          \
                    const int64_t h0 = oh * sh - g->pb[1], b0 = lo1[oh], b1 = hi1[oh];         \
                    T *yr = y + (od * OH + oh) * OW;                                           \
                    for (int64_t ow = 0; ow < OW; ow++) {                                      \
                        const int64_t w0 = ow * sw - g->pb[2], c0 = lo2[ow], c1 = hi2[ow];     \
                        if (avg) {                                                             \
                            double s = 0;                                                      \
                            for (int64_t a = a0; a < a1; a++)                                  \
                                for (int64_t b = b0; b < b1; b++) {                            \
                                    const T *xr = x + ((d0 + a * dd) * IH + h0 + b * dh) * IW  \
                                                  + w0;                                        \
                                    for (int64_t c = c0; c < c1; c++)                          \
                                        s += xr[c * dw];                                       \
                                }                                                              \
                            int64_t cnt = incl ? k->cnt[0][od] * k->cnt[1][oh] * k->cnt[2][ow] \
                                               : (a1 - a0) * (b1 - b0) * (c1 - c0);            \
                            yr[ow] = (T)(cnt > 0 ? s / (double)cnt : 0);                       \
                        } else if (!ind) {                                                     \
                            T best = LOWEST;                                                   \
                            for (int64_t a = a0; a < a1; a++)                                  \
                                for (int64_t b = b0; b < b1; b++) {                            \
                                    const T *xr = x + ((d0 + a * dd) * IH + h0 + b * dh) * IW  \
                                                  + w0;                                        \
                                    for (int64_t c = c0; c < c1; c++)                          \
                                        best = xr[c * dw] > best ? xr[c * dw] : best;          \
                                }                                                              \
                            yr[ow] = best;                                                     \
                        } else {                                                               \
                            T best = LOWEST;                                                   \
                            int64_t bi = -1;                                                   \
                            for (int64_t a = a0; a < a1; a++)                                  \
                                for (int64_t b = b0; b < b1; b++) {                            \
                                    const int64_t r = ((d0 + a * dd) * IH + h0 + b * dh) * IW  \
                                                      + w0;                                    \
                                    for (int64_t c = c0; c < c1; c++) {                        \
                                        const T v = x[r + c * dw];                             \
                                        if (v > best || bi < 0) {                              \
                                            best = v;                                          \
                                            bi = r + c * dw;                                   \
                                        }                                                      \
                                    }                                                          \
                                }                                                              \
                            yr[ow] = best;                                                     \
                            ind[(od * OH + oh) * OW + ow] = bi < 0 ? -1 : nc * IS + bi;        \
                        }                                                                      \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }
POOL_FN(float, f32, -INFINITY)
POOL_FN(double, f64, -INFINITY)
POOL_FN(int8_t, i8, INT8_MIN)
POOL_FN(uint8_t, u8, 0)

static kiln_status pool_run(kk_kernel *kk)
{
    pool_k *k = (pool_k *)kk;
    switch (k->dt) {
    case KILN_F32: pool_f32(k); break;
    case KILN_F64: pool_f64(k); break;
    case KILN_I8: pool_i8(k); break;
    case KILN_U8: pool_u8(k); break;
    }
    return KILN_OK;
}

static void pool_destroy(kk_kernel *kk)
{
    pool_k *k = (pool_k *)kk;
    kiln__free(k->buf);
    kiln__free(k);
}

kiln_status kr_check_pool(const kr_op *o)
{
    const kp_op *op = o->op;
    if (op->n_in != 1 || op->n_out < 1 || op->n_out > 2 || !kr_in(o, 0) || !kr_out(o, 0))
        return kr_bad(o, "expects X and Y, [Indices]");
    if (op->sub > KP_POOL_AVG)
        return kr_bad(o, "unknown pooling %u", op->sub);
    if (op->n_ia < 1)
        return kr_bad(o, "int attributes too short");
    int64_t nsp = o->ia[0];
    if (nsp < 1 || nsp > 3)
        return kr_bad(o, "%lld spatial dims not supported (1 to 3)", (long long)nsp);
    if (op->n_ia != 1 + 5 * nsp + 2 || op->n_fa != 0)
        return kr_bad(o, "expects %lld int attributes, got %u", (long long)(3 + 5 * nsp), op->n_ia);
    const kp_value *x = kr_in(o, 0), *y = kr_out(o, 0), *ind = kr_out(o, 1);
    bool avg = op->sub == KP_POOL_AVG;
    if (!(kr_is_float(x->dtype) || (!avg && (x->dtype == KILN_I8 || x->dtype == KILN_U8))))
        return kr_bad(o, "dtype %s not supported", kr_dtname(x->dtype));
    if (y->dtype != x->dtype)
        return kr_bad(o, "output dtype differs from the input's");
    if (x->ndim != 2 + nsp || y->ndim != 2 + nsp || y->shape[0] != x->shape[0] ||
        y->shape[1] != x->shape[1])
        return kr_bad(o, "X and Y must be N x C x %lld spatial dims alike", (long long)nsp);
    if (ind && (avg || ind->dtype != KILN_I64 || !kr_same_shape(ind, y)))
        return kr_bad(o, "Indices must be i64 shaped like Y, for max pooling only");
    int64_t cip = o->ia[1 + 5 * nsp], ceil_mode = o->ia[2 + 5 * nsp];
    if ((cip != 0 && cip != 1) || (ceil_mode != 0 && ceil_mode != 1))
        return kr_bad(o, "count_include_pad and ceil_mode must be 0 or 1");
    geom g;
    geom_read(&g, o->ia, 1, "ksdbe", (int)nsp, x, y, NULL);
    kiln_status s = geom_check(o, &g);
    if (s != KILN_OK)
        return s;
    for (int i = 0; i < 3; i++)
        if (g.k[i] > KR_MAX_ATTR)
            return kr_bad(o, "kernel extent %lld", (long long)g.k[i]);
    for (int i = 3 - (int)nsp; i < 3; i++) {
        int64_t span = g.in[i] + g.pb[i] + g.pe[i] - ((g.k[i] - 1) * g.d[i] + 1);
        int64_t fl = floor_div(span, g.s[i]) + 1, ce = ceil_div(span, g.s[i]) + 1, ce2 = ce;
        if ((ce2 - 1) * g.s[i] >= g.in[i] + g.pb[i])   /* the last window must start inside */
            ce2--;
        if (!(g.out[i] == fl || (ceil_mode && (g.out[i] == ce || g.out[i] == ce2))))
            return kr_bad(o, "output extent %lld on spatial axis %d, expected %lld",
                          (long long)g.out[i], i - (3 - (int)nsp), (long long)(ceil_mode ? ce : fl));
    }
    return KILN_OK;
}

kiln_status kr_create_pool(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    pool_k *k = kr_kernel_new(o, sizeof *k, pool_run);
    if (!k)
        return KILN_ERR_NOMEM;
    k->base.destroy = pool_destroy;
    const kp_value *x = kr_in(o, 0), *y = kr_out(o, 0);
    int nsp = (int)o->ia[0];
    k->avg = o->op->sub == KP_POOL_AVG;
    k->include_pad = o->ia[1 + 5 * nsp] != 0;
    k->dt = x->dtype;
    geom_read(&k->g, o->ia, 1, "ksdbe", nsp, x, y, NULL);
    k->NC = x->shape[0] * x->shape[1];
    k->x = ptr[o->in[0]];
    k->y = ptr[o->out[0]];
    k->ind = kr_out(o, 1) ? ptr[o->out[1]] : NULL;
    const geom *g = &k->g;
    k->buf = kiln__malloc(3 * (size_t)(g->out[0] + g->out[1] + g->out[2] + 1) * sizeof(int64_t));
    if (!k->buf) {
        pool_destroy(&k->base);
        return kr_fail(o->p, o->index, KILN_ERR_NOMEM, "out of memory");
    }
    int64_t *p = k->buf;
    for (int i = 0; i < 3; i++) {
        k->klo[i] = p;
        k->khi[i] = p + g->out[i];
        k->cnt[i] = p + 2 * g->out[i];
        p += 3 * g->out[i];
        for (int64_t t = 0; t < g->out[i]; t++) {
            /* window positions start + j*d, j < K; valid inside [0, in); counted with
             * count_include_pad inside [-pb, in + pe) */
            const int64_t start = t * g->s[i] - g->pb[i], K = g->k[i], d = g->d[i];
            int64_t lo = ceil_div(-start, d), hi = floor_div(g->in[i] - 1 - start, d) + 1;
            int64_t n_incl = floor_div(g->in[i] + g->pe[i] - 1 - start, d) + 1;  /* start >= -pb */
            lo = lo < 0 ? 0 : lo > K ? K : lo;
            hi = hi < lo ? lo : hi > K ? K : hi;
            n_incl = n_incl < 0 ? 0 : n_incl > K ? K : n_incl;
            k->klo[i][t] = lo;
            k->khi[i][t] = hi;
            k->cnt[i][t] = n_incl;
        }
    }
    *out = &k->base;
    return KILN_OK;
}

/* ================================ GlobalPool ================================ */

typedef struct gpool_k {
    kk_kernel base;
    bool avg;
    int dt;
    int64_t NC, S;
    const void *x;
    void *y;
} gpool_k;

#define GPOOL_FN(T, SUF)                                                                   \
    static void gpool_##SUF(const gpool_k *k)                                              \
    {                                                                                      \
        for (int64_t nc = 0; nc < k->NC; nc++) {                                           \
            const T *x = (const T *)k->x + nc * k->S;                                      \
            if (k->avg) {                                                                  \
                double s = kr_sum_##SUF(x, k->S);                                          \
                ((T *)k->y)[nc] = (T)(k->S ? s / (double)k->S : 0);                        \
            } else {                                                                       \
                T m = -INFINITY;                                                           \
                for (int64_t j = 0; j < k->S; j++)                                         \
                    m = (x[j] > m || x[j] != x[j]) ? x[j] : m;                             \
                ((T *)k->y)[nc] = m;                                                       \
            }                                                                              \
        }                                                                                  \
    }
GPOOL_FN(float, f32)
GPOOL_FN(double, f64)

static kiln_status gpool_run(kk_kernel *kk)
{
    gpool_k *k = (gpool_k *)kk;
    if (k->dt == KILN_F32)
        gpool_f32(k);
    else
        gpool_f64(k);
    return KILN_OK;
}

kiln_status kr_check_global_pool(const kr_op *o)
{
    const kp_op *op = o->op;
    if (op->n_in != 1 || op->n_out != 1 || !kr_in(o, 0) || !kr_out(o, 0))
        return kr_bad(o, "expects 1 input and 1 output");
    if (op->sub > KP_POOL_AVG)
        return kr_bad(o, "unknown pooling %u", op->sub);
    if (op->n_ia || op->n_fa)
        return kr_bad(o, "unexpected attributes");
    const kp_value *x = kr_in(o, 0), *y = kr_out(o, 0);
    if (!kr_is_float(x->dtype) || y->dtype != x->dtype)
        return kr_bad(o, "dtype %s not supported", kr_dtname(x->dtype));
    if (x->ndim < 2 || y->ndim != x->ndim || y->shape[0] != x->shape[0] ||
        y->shape[1] != x->shape[1] || kr_numel(y) != x->shape[0] * x->shape[1])
        return kr_bad(o, "Y must be N x C x 1...");
    return KILN_OK;
}

kiln_status kr_create_global_pool(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    gpool_k *k = kr_kernel_new(o, sizeof *k, gpool_run);
    if (!k)
        return KILN_ERR_NOMEM;
    const kp_value *x = kr_in(o, 0);
    k->avg = o->op->sub == KP_POOL_AVG;
    k->dt = x->dtype;
    k->NC = x->shape[0] * x->shape[1];
    k->S = kr_prod(x->shape, 2, x->ndim);
    k->x = ptr[o->in[0]];
    k->y = ptr[o->out[0]];
    *out = &k->base;
    return KILN_OK;
}
