/*
 * dnnl.c — the oneDNN side of the kernels, and the only file in kiln that includes dnnl.h.
 * It owns: which ops oneDNN runs (kd_supports), the process-wide CPU engine, each core's
 * stream and scratchpad, building one primitive per op with its memory objects bound to the
 * op's fixed buffers, weights in the layout a primitive wants (packed at trace time, reused
 * in place at placement when the layout still fits, reordered once otherwise), and the
 * byte format of a packed-layout descriptor (kp_value.layout).
 *
 * Activations are dense C order (nchw, ab, ...) f32 as the rest of kiln sees them; only
 * between oneDNN convolutions and poolings (and the reference GroupNorm, nearest Resize
 * and channel Concat between them) are they kept nhwc (see kd_plan_layouts).
 * Convolutions run channels-last inside (brgemm kernels), reordering whatever meets them
 * dense.
 *
 * Threads (kernels.h): kd_create runs on any thread, several at once, while the core's
 * thread runs that core's kernels. What stays with the core's thread: its stream, its
 * scratchpad (grown only on that thread: by kd_create there, kd_run, kd_core_reserve;
 * kd_create elsewhere records its need in the atomic kd_core.want) and every kernel once
 * created. What this relies on from oneDNN 2.6:
 * the engine, primitive descriptor and primitive creation (with its global primitive
 * cache) may be used from several threads at once; a primitive whose attributes ask for a
 * user scratchpad, as every primitive here does, may be created on one thread and run on
 * another, concurrently with other primitives, as long as no two executions share a
 * scratchpad (the documentation of dnnl_scratchpad_mode_user; library mode would instead
 * tie a primitive to the thread that made it); a stream is only ever used by one thread
 * (each core's by the core's thread; a weight reorder at creation makes its own, see
 * reorder()). Memory objects made at creation are re-pointed (set_data_handle) only by
 * kd_run, after the runtime has handed the kernel over to the core's thread.
 *
 * Packed-layout descriptor (version 1), little-endian, all integers signed 64-bit unless
 * noted; it describes a oneDNN "blocked" memory layout over the weight's oneDNN dims:
 *     u8 version (1), u8 format (1 = blocked), u8 dtype (kiln_dtype), u8 ndims,
 *     u8 inner_nblks, u8[3] zero, offset0,
 *     per dim:   dims, padded_dims, padded_offsets, strides, plain_strides
 *     per block: inner_blks, inner_idxs
 * plain_strides gives where the dense ONNX-ordered tensor keeps each oneDNN dim (e.g. a
 * ConvTranspose weight is C x O/g x k in ONNX but g x O/g x C/g x k for oneDNN), so
 * kd_unpack can restore the dense form without knowing the op.
 */
#include "kernels/kernels_impl.h"

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { KD_MAX_POST = 16, KD_MAX_ARGS = 8 + KD_MAX_POST };

/* ---------------------------------------------------------------------------------------
 * Engine (one per process) and per-core state
 * ------------------------------------------------------------------------------------- */

static pthread_once_t engine_once = PTHREAD_ONCE_INIT;
static dnnl_engine_t engine;
static dnnl_status_t engine_status = dnnl_runtime_error;

static void engine_init(void) { engine_status = dnnl_engine_create(&engine, dnnl_cpu, 0); }

static kiln_status get_engine(dnnl_engine_t *e)
{
    pthread_once(&engine_once, engine_init);
    if (engine_status != dnnl_success)
        return kiln__fail(KILN_ERR_INTERNAL, "oneDNN: cannot create the CPU engine (%s)",
                          dnnl_status2str(engine_status));
    *e = engine;
    return KILN_OK;
}

/* A core's oneDNN state. stream, scratch and scratch_bytes belong to the core's thread
 * (kd_run, kd_core_reserve, kd_create there); kernels created on other threads only raise
 * `want` (atomically) and never read the others, so creation and running need no lock. */
typedef struct kd_core {
    pthread_t owner;            /* the core's thread (the one that made it) */
    dnnl_stream_t stream;
    void   *scratch;            /* shared by the core's kernels (they run one at a time) */
    size_t  scratch_bytes;
    _Atomic size_t want;        /* the largest scratch need of any kernel created so far */
} kd_core;

kiln_status kd_core_init(kk_core *c)
{
    dnnl_engine_t e = NULL;
    kiln_status st = get_engine(&e);
    if (st)
        return st;
    kd_core *d = kiln__calloc(1, sizeof *d);
    if (!d)
        return kiln__fail(KILN_ERR_NOMEM, "kernels: out of memory for a core");
    atomic_init(&d->want, 0);
    d->owner = pthread_self();
    dnnl_status_t s = dnnl_stream_create(&d->stream, e, dnnl_stream_default_flags);
    if (s != dnnl_success) {
        kiln__free(d);
        return kiln__fail(s == dnnl_out_of_memory ? KILN_ERR_NOMEM : KILN_ERR_INTERNAL,
                          "oneDNN: cannot create a stream (%s)", dnnl_status2str(s));
    }
    c->dnnl = d;
    return KILN_OK;
}

void kd_core_fini(kk_core *c)
{
    kd_core *d = c ? c->dnnl : NULL;
    if (!d)
        return;
    dnnl_stream_destroy(d->stream);
    kiln__big_free(d->scratch, d->scratch_bytes);
    kiln__free(d);
    c->dnnl = NULL;
}

/* Records that a kernel of the core needs n bytes of scratch (any thread). */
static void core_want(kd_core *d, size_t n)
{
    size_t cur = atomic_load_explicit(&d->want, memory_order_relaxed);
    while (cur < n &&
           !atomic_compare_exchange_weak_explicit(&d->want, &cur, n, memory_order_relaxed,
                                                  memory_order_relaxed))
        ;
}

/* On the core's thread: grows the scratchpad to at least n bytes, and to what every kernel
 * created so far wants, so it grows once rather than kernel by kernel (contents need not
 * survive). */
static kiln_status core_scratch(kd_core *d, size_t n)
{
    size_t want = atomic_load_explicit(&d->want, memory_order_relaxed);
    if (want > n)
        n = want;
    if (n <= d->scratch_bytes)
        return KILN_OK;
    size_t cap = (size_t)kiln__align_up(n, 4096);
    void *b = kiln__big_alloc(cap);
    if (!b)
        return kiln__fail(KILN_ERR_NOMEM, "kernels: out of memory for a %zu-byte scratchpad", n);
    kiln__big_free(d->scratch, d->scratch_bytes);
    d->scratch = b;
    d->scratch_bytes = cap;
    return KILN_OK;
}

kiln_status kd_core_reserve(kk_core *c)
{
    kd_core *d = c->dnnl;
    return d ? core_scratch(d, 0) : KILN_OK;
}

/* ---------------------------------------------------------------------------------------
 * Plans: what oneDNN would be asked to do for an op (shared by kd_supports, kd_create and
 * kd_pack_weight so they always agree)
 * ------------------------------------------------------------------------------------- */

typedef struct kd_post {
    int   type;                 /* KP_POST_* */
    dnnl_alg_kind_t alg;        /* eltwise or binary algorithm */
    float alpha, beta;
    int   operand;              /* SUM/BINARY: value id; else -1 */
    dnnl_dims_t dims;           /* operand dims, left-padded to the destination's rank */
} kd_post;

typedef struct kd_plan {
    int kind;
    int x, w, b, y;             /* main input, weights (or second input), bias, output */
    int extra[3];               /* batchnorm: mean, var; layernorm: -; (value ids or -1) */
    int nd;                     /* rank of src and dst as oneDNN sees them */
    dnnl_dims_t src, dst;
    int wnd;                    /* weights / second input rank */
    dnnl_dims_t wei, wplain;    /* its dims, and strides of its dense (ONNX) layout */
    int bnd;
    dnnl_dims_t bias;
    dnnl_dims_t strides, kernel, dil, pl, pr;   /* oneDNN meaning: dil 0 = dense */
    dnnl_alg_kind_t alg;
    float alpha, beta, eps;
    int axis;
    bool cl;                    /* the primitive runs channels-last (see plan_conv) */
    bool extended;              /* pooling: ceil mode ran windows past pads_end */
    int n_post;
    int n_fused;                /* post-ops fused into the primitive; the rest run as steps */
    kd_post post[KD_MAX_POST];
} kd_plan;

static bool val_f32(const kp_program *p, int v)
{
    if (v < 0 || (uint32_t)v >= p->n_values)
        return false;
    const kp_value *x = &p->values[v];
    return x->dtype == KILN_F32 && x->ndim <= KILN_MAX_DIMS && kp_value_numel(x) > 0;
}

/* dims of value v left-padded with 1s to rank nd (false if v has more dims). */
static bool pad_dims(const kp_value *v, int nd, dnnl_dims_t out)
{
    if (v->ndim > nd)
        return false;
    int lead = nd - v->ndim;
    for (int d = 0; d < nd; d++)
        out[d] = d < lead ? 1 : v->shape[d - lead];
    return true;
}

static void dense_strides(int nd, const dnnl_dims_t dims, dnnl_dims_t st)
{
    int64_t s = 1;
    for (int d = nd - 1; d >= 0; d--) {
        st[d] = s;
        s *= dims[d];
    }
}

static bool same_dims(int nd, const dnnl_dims_t a, const dnnl_dims_t b)
{
    for (int d = 0; d < nd; d++)
        if (a[d] != b[d])
            return false;
    return true;
}

/* Every dim of b equals the one of a or is 1. */
static bool bcast_to(int nd, const dnnl_dims_t b, const dnnl_dims_t a)
{
    for (int d = 0; d < nd; d++)
        if (b[d] != a[d] && b[d] != 1)
            return false;
    return true;
}

/* kiln unary -> oneDNN eltwise (false when oneDNN 2.6 has no exact equivalent). Log and
 * Softplus stay with the reference (libm): oneDNN 2.6's log is off by up to ~15 ulps (T5's
 * relative-position buckets truncate log ratios to integers, and landed one bucket off),
 * its soft_relu goes negative for x below about -16. */
static bool eltwise_of(int u, float a, float b, dnnl_alg_kind_t *alg, float *alpha, float *beta)
{
    *alpha = 0.f;
    *beta = 0.f;
    switch (u) {
    case KP_U_IDENTITY:   *alg = dnnl_eltwise_linear; *alpha = 1.f; return true;
    case KP_U_RELU:       *alg = dnnl_eltwise_relu; return true;
    case KP_U_LEAKY_RELU: *alg = dnnl_eltwise_relu; *alpha = a; return true;
    case KP_U_CLIP:
        if (!(a <= b))
            return false;   /* min > max (or NaN): leave ONNX's ordering to the reference */
        *alg = dnnl_eltwise_clip; *alpha = a; *beta = b; return true;
    case KP_U_SIGMOID:    *alg = dnnl_eltwise_logistic; return true;
    case KP_U_HARD_SWISH: *alg = dnnl_eltwise_hardswish; return true;
    case KP_U_TANH:       *alg = dnnl_eltwise_tanh; return true;
    case KP_U_GELU:       *alg = dnnl_eltwise_gelu_erf; return true;
    case KP_U_GELU_TANH:  *alg = dnnl_eltwise_gelu_tanh; return true;
    case KP_U_EXP:        *alg = dnnl_eltwise_exp; return true;
    case KP_U_SQRT:       *alg = dnnl_eltwise_sqrt; return true;
    case KP_U_ABS:        *alg = dnnl_eltwise_abs; return true;
    case KP_U_NEG:        *alg = dnnl_eltwise_linear; *alpha = -1.f; return true;
    case KP_U_RECIPROCAL: *alg = dnnl_eltwise_pow; *alpha = 1.f; *beta = -1.f; return true;
    case KP_U_ELU:        *alg = dnnl_eltwise_elu; *alpha = a; return true;
    case KP_U_SILU:       *alg = dnnl_eltwise_swish; *alpha = 1.f; return true;
    case KP_U_MISH:       *alg = dnnl_eltwise_mish; return true;
    case KP_U_ROUND:      *alg = dnnl_eltwise_round; return true;
    case KP_U_POW_SCALAR: *alg = dnnl_eltwise_pow; *alpha = 1.f; *beta = a; return true;
    case KP_U_LINEAR:     *alg = dnnl_eltwise_linear; *alpha = a; *beta = b; return true;
    default:              return false;
    }
}

static bool binary_of(int b, dnnl_alg_kind_t *alg)
{
    switch (b) {
    case KP_B_ADD: *alg = dnnl_binary_add; return true;
    case KP_B_SUB: *alg = dnnl_binary_sub; return true;
    case KP_B_MUL: *alg = dnnl_binary_mul; return true;
    case KP_B_DIV: *alg = dnnl_binary_div; return true;
    case KP_B_MAX: *alg = dnnl_binary_max; return true;
    case KP_B_MIN: *alg = dnnl_binary_min; return true;
    default:       return false;
    }
}

/* Parses the post-op list at ia[at..] / fa[0..] of a conv/matmul op whose destination is
 * pl->dst (rank pl->nd). Sets pl->post, pl->n_post and *n_operands. */
static bool plan_post(const kp_program *p, const kp_op *op, uint32_t at, kd_plan *pl,
                      int *n_operands)
{
    const int64_t *ia = kp_op_ia(p, op);
    const float *fa = kp_op_fa(p, op);
    if (at >= op->n_ia)
        return false;
    int64_t n = ia[at];
    if (n < 0 || n > KD_MAX_POST || op->n_ia != at + 1 + 2 * (uint64_t)n ||
        op->n_fa < 2 * (uint64_t)n)
        return false;
    int nop = 0;
    for (int j = 0; j < n; j++)
        if (ia[at + 1 + 2 * j] == KP_POST_SUM || ia[at + 1 + 2 * j] == KP_POST_BINARY)
            nop++;
    if (nop > op->n_in)
        return false;
    const int32_t *in = kp_op_in(p, op);
    int first = op->n_in - nop, k = 0, sums = 0;
    for (int j = 0; j < n; j++) {
        kd_post *q = &pl->post[j];
        int64_t type = ia[at + 1 + 2 * j], alg = ia[at + 2 + 2 * j];
        q->type = (int)type;
        q->operand = -1;
        if (type == KP_POST_UNARY) {
            if (!eltwise_of((int)alg, fa[2 * j], fa[2 * j + 1], &q->alg, &q->alpha, &q->beta))
                return false;
            continue;
        }
        if (type != KP_POST_SUM && type != KP_POST_BINARY)
            return false;
        q->operand = in[first + k++];
        if (!val_f32(p, q->operand) || !pad_dims(&p->values[q->operand], pl->nd, q->dims))
            return false;
        if (type == KP_POST_SUM) {
            if (alg != 0 || !same_dims(pl->nd, q->dims, pl->dst))
                return false;
            /* oneDNN takes one sum; further sums become a binary add of the same shape */
            q->alg = sums++ ? dnnl_binary_add : dnnl_alg_kind_undef;
            if (q->alg == dnnl_binary_add)
                q->type = KP_POST_BINARY;
        } else if (!binary_of((int)alg, &q->alg) || !bcast_to(pl->nd, q->dims, pl->dst)) {
            return false;
        }
    }
    pl->n_post = (int)n;
    *n_operands = nop;
    return true;
}

/* A conv/pool's spatial attributes come from the artifact, untrusted: bounded like the
 * reference kernels' (ref.h), so the window arithmetic below cannot overflow. */
static bool spatial_ok(int64_t k, int64_t s, int64_t dl, int64_t b, int64_t e, int64_t in, int64_t out)
{
    const int64_t max_attr = INT64_C(1) << 20, max_extent = INT64_C(1) << 40;
    return k >= 1 && s >= 1 && dl >= 1 && b >= 0 && e >= 0 && k <= max_extent && s <= max_attr &&
           dl <= max_attr && b <= max_attr && e <= max_attr && in <= max_extent && out <= max_extent;
}

static bool plan_conv(const kp_program *p, const kp_op *op, kd_plan *pl, bool transpose)
{
    const int64_t *ia = kp_op_ia(p, op);
    const int32_t *in = kp_op_in(p, op);
    if (op->n_out < 1 || op->n_in < 2 || op->n_ia < 2)
        return false;
    int64_t g = ia[0], nsp = ia[1];
    if (nsp < 1 || nsp > 3 || g < 1 || g > (INT64_C(1) << 20))
        return false;
    uint32_t fixed = 2 + (uint32_t)((transpose ? 5 : 4) * nsp);
    pl->x = in[0];
    pl->w = in[1];
    pl->y = kp_op_out(p, op)[0];
    if (!val_f32(p, pl->x) || !val_f32(p, pl->w) || !val_f32(p, pl->y))
        return false;
    const kp_value *X = &p->values[pl->x], *W = &p->values[pl->w], *Y = &p->values[pl->y];
    int nd = 2 + (int)nsp;
    if (X->ndim != nd || W->ndim != nd || Y->ndim != nd)
        return false;
    pl->nd = nd;
    for (int d = 0; d < nd; d++) {
        pl->src[d] = X->shape[d];
        pl->dst[d] = Y->shape[d];
    }
    int nop;
    if (!plan_post(p, op, fixed, pl, &nop))
        return false;
    int main = op->n_in - nop;   /* operands follow the bias slot (-1 when absent) */
    if (main != 3 && !(main == 2 && nop == 0))
        return false;
    pl->b = main == 3 ? in[2] : -1;
    int64_t N = X->shape[0], C = X->shape[1], O = Y->shape[1];
    if (Y->shape[0] != N || C % g || O % g || W->shape[1] > (INT64_C(1) << 40))
        return false;   /* (bounds: W->shape[1] * g below stays in range) */
    if (transpose ? (W->shape[0] != C || W->shape[1] * g != O)
                  : (W->shape[0] != O || W->shape[1] * g != C))
        return false;
    if (pl->b >= 0) {
        const kp_value *B = &p->values[pl->b];
        if (!val_f32(p, pl->b) || B->ndim != 1 || B->shape[0] != O)
            return false;
        pl->bnd = 1;
        pl->bias[0] = O;
    }
    int64_t K = 1;
    for (int d = 0; d < nsp; d++) {
        int64_t s = ia[2 + d], dl = ia[2 + nsp + d], b = ia[2 + 2 * nsp + d],
                e = ia[2 + 3 * nsp + d], k = W->shape[2 + d];
        int64_t in_sp = X->shape[2 + d], out_sp = Y->shape[2 + d];
        if (!spatial_ok(k, s, dl, b, e, in_sp, out_sp))
            return false;
        int64_t range = (k - 1) * dl + 1;
        pl->strides[d] = s;
        pl->dil[d] = dl - 1;
        pl->pl[d] = b;
        if (!transpose) {
            int64_t num = in_sp + b + e - range;
            if (num < 0 || num / s + 1 != out_sp)
                return false;
            pl->pr[d] = e;
        } else {
            int64_t r = (in_sp - 1) * s + range - b - out_sp;   /* pads_end - output_padding */
            if (r < 0)
                return false;
            pl->pr[d] = r;
        }
        K *= k;
    }
    /* Channels-last inside: with dense nchw activations oneDNN 2.6 only has its im2col
     * gemm convolution, which is slow (and applies fused eltwise post-ops 5-20x slower
     * than the conv itself); its brgemm convolutions want nhwc. Reordering in and out
     * around brgconv costs far less (resnet18's convs: 14.8 ms against 22.2 ms on one
     * core; mobilenet_v2's 1x1 convs with relu6: 0.19 ms against 5 ms). */
    pl->cl = !transpose;
    /* oneDNN weights: (O, C, k...) or (g, O/g, C/g, k...); plain strides of the ONNX layout */
    int wnd = g > 1 ? nd + 1 : nd, sp0 = wnd - (int)nsp;
    if (g > 1) {
        pl->wei[0] = g;
        pl->wei[1] = O / g;
        pl->wei[2] = C / g;
    } else {
        pl->wei[0] = O;
        pl->wei[1] = C;
    }
    for (int d = 0; d < nsp; d++)
        pl->wei[sp0 + d] = W->shape[2 + d];
    pl->wnd = wnd;
    dense_strides(wnd, pl->wei, pl->wplain);
    if (transpose) {   /* ONNX: (g, C/g, O/g, k...) in memory */
        int64_t og = O / g, cg = C / g;
        pl->wplain[sp0 - 2] = K;            /* O/g (or O) */
        pl->wplain[sp0 - 1] = og * K;       /* C/g (or C) */
        if (g > 1)
            pl->wplain[0] = cg * og * K;
    }
    return true;
}

/* Folds dims 0..nd-2 of an operand into one row dim: (1 or rows, last). False when the
 * operand neither spans all of them (as dst does) nor is 1 in all of them. */
static bool fold_operand(int nd, dnnl_dims_t d, const dnnl_dims_t dst, int64_t rows)
{
    bool all1 = true, full = true;
    for (int j = 0; j < nd - 1; j++) {
        all1 = all1 && d[j] == 1;
        full = full && d[j] == dst[j];
    }
    if (!all1 && !full)
        return false;
    int64_t last = d[nd - 1];
    d[0] = all1 ? 1 : rows;
    d[1] = last;
    return true;
}

/* A batched matmul whose B is not batched (an activation times a weight, as transformer
 * exports produce: 64x1x256 by 256x768) is one 2-D product with the batch folded into M;
 * oneDNN runs that several times faster than as a batch of tiny products. */
static void fold_rows(kd_plan *pl)
{
    int nd = pl->nd;
    if (nd <= 2)
        return;
    for (int d = 0; d < nd - 2; d++)
        if (pl->wei[d] != 1 || pl->src[d] != pl->dst[d])
            return;
    int64_t rows = 1;
    for (int d = 0; d < nd - 1; d++)
        rows *= pl->dst[d];
    dnnl_dims_t bias, post[KD_MAX_POST];
    memcpy(bias, pl->bias, sizeof bias);
    if (pl->bnd && !fold_operand(nd, bias, pl->dst, rows))
        return;
    for (int j = 0; j < pl->n_post; j++) {
        memcpy(post[j], pl->post[j].dims, sizeof post[j]);
        if (pl->post[j].operand >= 0 && !fold_operand(nd, post[j], pl->dst, rows))
            return;
    }
    int64_t K = pl->src[nd - 1], N = pl->dst[nd - 1];
    pl->src[0] = rows;
    pl->src[1] = K;
    pl->dst[0] = rows;
    pl->dst[1] = N;
    pl->wei[0] = K;
    pl->wei[1] = N;
    dense_strides(2, pl->wei, pl->wplain);
    if (pl->bnd) {
        memcpy(pl->bias, bias, sizeof bias);
        pl->bnd = 2;
    }
    for (int j = 0; j < pl->n_post; j++)
        if (pl->post[j].operand >= 0)
            memcpy(pl->post[j].dims, post[j], sizeof post[j]);
    pl->nd = pl->wnd = 2;
}

static bool plan_matmul(const kp_program *p, const kp_op *op, kd_plan *pl)
{
    const int32_t *in = kp_op_in(p, op);
    if (op->n_out < 1 || op->n_in < 2)
        return false;
    pl->x = in[0];
    pl->w = in[1];
    pl->y = kp_op_out(p, op)[0];
    if (!val_f32(p, pl->x) || !val_f32(p, pl->w) || !val_f32(p, pl->y))
        return false;
    const kp_value *A = &p->values[pl->x], *B = &p->values[pl->w], *Y = &p->values[pl->y];
    int nd = Y->ndim;
    if (A->ndim < 2 || B->ndim < 2 || nd < 2 || !pad_dims(A, nd, pl->src) ||
        !pad_dims(B, nd, pl->wei) || !pad_dims(Y, nd, pl->dst))
        return false;
    pl->nd = pl->wnd = nd;
    if (pl->src[nd - 1] != pl->wei[nd - 2] || pl->dst[nd - 2] != pl->src[nd - 2] ||
        pl->dst[nd - 1] != pl->wei[nd - 1])
        return false;
    for (int d = 0; d < nd - 2; d++)
        if ((pl->src[d] != pl->dst[d] && pl->src[d] != 1) ||
            (pl->wei[d] != pl->dst[d] && pl->wei[d] != 1))
            return false;
    dense_strides(nd, pl->wei, pl->wplain);
    int nop;
    if (!plan_post(p, op, 0, pl, &nop))
        return false;
    int main = op->n_in - nop;   /* operands follow the bias slot (-1 when absent) */
    if (main != 3 && !(main == 2 && nop == 0))
        return false;
    pl->b = main == 3 ? in[2] : -1;
    if (pl->b >= 0) {
        if (!val_f32(p, pl->b) || !pad_dims(&p->values[pl->b], nd, pl->bias) ||
            !bcast_to(nd, pl->bias, pl->dst))
            return false;
        pl->bnd = nd;
    }
    fold_rows(pl);
    return true;
}

static bool plan_pool(const kp_program *p, const kp_op *op, kd_plan *pl, bool global)
{
    const int64_t *ia = kp_op_ia(p, op);
    const int32_t *out = kp_op_out(p, op);
    if (op->n_in < 1 || op->n_out < 1 || (op->n_out > 1 && out[1] >= 0))
        return false;   /* MaxPool's Indices: reference */
    if (op->sub != KP_POOL_MAX && op->sub != KP_POOL_AVG)
        return false;
    pl->x = kp_op_in(p, op)[0];
    pl->y = out[0];
    if (!val_f32(p, pl->x) || !val_f32(p, pl->y))
        return false;
    const kp_value *X = &p->values[pl->x], *Y = &p->values[pl->y];
    int nd = X->ndim, nsp = nd - 2;
    if (nsp < 1 || nsp > 3 || Y->ndim != nd || Y->shape[0] != X->shape[0] ||
        Y->shape[1] != X->shape[1])
        return false;
    pl->nd = nd;
    for (int d = 0; d < nd; d++) {
        pl->src[d] = X->shape[d];
        pl->dst[d] = Y->shape[d];
    }
    if (global) {
        for (int d = 0; d < nsp; d++) {
            if (Y->shape[2 + d] != 1)
                return false;
            pl->kernel[d] = X->shape[2 + d];
            pl->strides[d] = 1;
        }
        pl->alg = op->sub == KP_POOL_MAX ? dnnl_pooling_max : dnnl_pooling_avg_exclude_padding;
        return true;
    }
    if (op->n_ia != 1 + 5 * (uint32_t)nsp + 2 || ia[0] != nsp)
        return false;
    bool include_pad = ia[1 + 5 * nsp] != 0;
    for (int d = 0; d < nsp; d++) {
        int64_t k = ia[1 + d], s = ia[1 + nsp + d], dl = ia[1 + 2 * nsp + d],
                b = ia[1 + 3 * nsp + d], e = ia[1 + 4 * nsp + d];
        int64_t in_sp = X->shape[2 + d], out_sp = Y->shape[2 + d];
        if (dl != 1 || !spatial_ok(k, s, dl, b, e, in_sp, out_sp))
            return false;   /* dilated pooling: oneDNN 2.6 has only its reference */
        int64_t range = (k - 1) * dl + 1;
        int64_t num = in_sp + b + e - range;
        if (num >= 0 && num / s + 1 == out_sp) {
            pl->pr[d] = e;   /* floor mode, or ceil mode that changed nothing */
        } else {
            /* ceil mode: the last window runs past pads_end; those positions never count,
             * which oneDNN matches for max and exclude-pad average, not include-pad */
            int64_t r = (out_sp - 1) * s + range - in_sp - b;
            if (r <= e || include_pad)
                return false;
            pl->pr[d] = r;
            pl->extended = true;
        }
        pl->kernel[d] = k;
        pl->strides[d] = s;
        pl->dil[d] = dl - 1;
        pl->pl[d] = b;
    }
    pl->alg = op->sub == KP_POOL_MAX ? dnnl_pooling_max
              : include_pad          ? dnnl_pooling_avg_include_padding
                                     : dnnl_pooling_avg_exclude_padding;
    return true;
}

/* Whole tensor of value v as 1-D (for element-wise ops). */
static bool plan_flat(const kp_program *p, int v, kd_plan *pl)
{
    pl->nd = 1;
    pl->src[0] = pl->dst[0] = kp_value_numel(&p->values[v]);
    return true;
}

static bool plan_op(const kp_program *p, uint32_t i, kd_plan *pl)
{
    if (!p || i >= p->n_ops)
        return false;
    const kp_op *op = &p->ops[i];
    memset(pl, 0, sizeof *pl);
    pl->kind = op->kind;
    pl->x = pl->w = pl->b = pl->y = -1;
    pl->extra[0] = pl->extra[1] = pl->extra[2] = -1;
    const int32_t *in = kp_op_in(p, op), *out = kp_op_out(p, op);
    switch (op->kind) {
    case KP_CONV:
        return plan_conv(p, op, pl, false);
    case KP_CONV_TRANSPOSE:
        return plan_conv(p, op, pl, true);
    case KP_MATMUL:
        return plan_matmul(p, op, pl);
    case KP_POOL:
        return plan_pool(p, op, pl, false);
    case KP_GLOBAL_POOL:
        return plan_pool(p, op, pl, true);
    case KP_UNARY: {
        if (op->n_in != 1 || op->n_out != 1 || op->n_fa < 2)
            return false;
        pl->x = in[0];
        pl->y = out[0];
        if (!val_f32(p, pl->x) || !val_f32(p, pl->y) ||
            kp_value_numel(&p->values[pl->x]) != kp_value_numel(&p->values[pl->y]))
            return false;
        const float *fa = kp_op_fa(p, op);
        if (!eltwise_of(op->sub, fa[0], fa[1], &pl->alg, &pl->alpha, &pl->beta))
            return false;
        return plan_flat(p, pl->y, pl);
    }
    case KP_BINARY: {
        if (op->n_in != 2 || op->n_out != 1 || !binary_of(op->sub, &pl->alg))
            return false;
        pl->x = in[0];
        pl->w = in[1];
        pl->y = out[0];
        if (!val_f32(p, pl->x) || !val_f32(p, pl->w) || !val_f32(p, pl->y))
            return false;
        const kp_value *Y = &p->values[pl->y];
        int nd = Y->ndim ? Y->ndim : 1;
        if (!pad_dims(&p->values[pl->x], nd, pl->src) ||
            !pad_dims(&p->values[pl->w], nd, pl->wei) || !pad_dims(Y, nd, pl->dst))
            return false;
        pl->nd = pl->wnd = nd;
        bool commutes = op->sub == KP_B_ADD || op->sub == KP_B_MUL || op->sub == KP_B_MAX ||
                        op->sub == KP_B_MIN;
        if (!same_dims(nd, pl->src, pl->dst) && commutes && same_dims(nd, pl->wei, pl->dst)) {
            int t = pl->x; pl->x = pl->w; pl->w = t;
            dnnl_dims_t td;
            memcpy(td, pl->src, sizeof td);
            memcpy(pl->src, pl->wei, sizeof td);
            memcpy(pl->wei, td, sizeof td);
        }
        return same_dims(nd, pl->src, pl->dst) && bcast_to(nd, pl->wei, pl->dst);
    }
    case KP_SOFTMAX: {
        if (op->n_in != 1 || op->n_out != 1 || op->n_ia != 1 || op->sub > 1)
            return false;
        pl->x = in[0];
        pl->y = out[0];
        if (!val_f32(p, pl->x) || !val_f32(p, pl->y))
            return false;
        const kp_value *X = &p->values[pl->x];
        int64_t axis = kp_op_ia(p, op)[0];
        if (X->ndim < 1 || axis < 0 || axis >= X->ndim ||
            kp_value_numel(&p->values[pl->y]) != kp_value_numel(X))
            return false;
        /* collapse to (outer, axis, inner): same memory, fewer dims */
        int64_t outer = 1, inner = 1;
        for (int d = 0; d < axis; d++)
            outer *= X->shape[d];
        for (int d = (int)axis + 1; d < X->ndim; d++)
            inner *= X->shape[d];
        if (inner != 1)
            return false;   /* not the innermost axis: oneDNN 2.6 has only its reference */
        pl->nd = 3;
        pl->src[0] = outer;
        pl->src[1] = X->shape[axis];
        pl->src[2] = inner;
        memcpy(pl->dst, pl->src, sizeof pl->dst);
        pl->axis = 1;
        pl->alg = op->sub ? dnnl_softmax_log : dnnl_softmax_accurate;
        return true;
    }
    case KP_LAYERNORM: {
        if (op->n_in < 2 || op->n_in > 3 || op->n_out < 1 || op->n_ia != 1 || op->n_fa < 1)
            return false;
        for (int j = 1; j < op->n_out; j++)
            if (out[j] >= 0)
                return false;   /* Mean / InvStdDev wanted: reference */
        pl->x = in[0];
        pl->w = in[1];
        pl->b = op->n_in == 3 ? in[2] : -1;
        pl->y = out[0];
        if (!val_f32(p, pl->x) || !val_f32(p, pl->w) || !val_f32(p, pl->y) ||
            (pl->b >= 0 && !val_f32(p, pl->b)))
            return false;
        const kp_value *X = &p->values[pl->x];
        int64_t axis = kp_op_ia(p, op)[0];
        if (X->ndim < 1 || axis < 0 || axis >= X->ndim ||
            kp_value_numel(&p->values[pl->y]) != kp_value_numel(X))
            return false;
        int64_t outer = 1, inner = 1;
        for (int d = 0; d < axis; d++)
            outer *= X->shape[d];
        for (int d = (int)axis; d < X->ndim; d++)
            inner *= X->shape[d];
        if (kp_value_numel(&p->values[pl->w]) != inner ||
            (pl->b >= 0 && kp_value_numel(&p->values[pl->b]) != inner))
            return false;
        pl->nd = 2;
        pl->src[0] = pl->dst[0] = outer;
        pl->src[1] = pl->dst[1] = inner;
        pl->eps = kp_op_fa(p, op)[0];
        return true;
    }
    case KP_BATCHNORM: {
        if (op->n_in != 5 || op->n_out != 1 || op->n_fa < 1)
            return false;
        pl->x = in[0];
        pl->y = out[0];
        if (!val_f32(p, pl->x) || !val_f32(p, pl->y))
            return false;
        const kp_value *X = &p->values[pl->x];
        if (X->ndim < 2 || kp_value_numel(&p->values[pl->y]) != kp_value_numel(X))
            return false;
        int64_t C = X->shape[1];
        for (int j = 1; j < 5; j++)
            if (!val_f32(p, in[j]) || kp_value_numel(&p->values[in[j]]) != C)
                return false;
        pl->w = in[1];          /* scale */
        pl->b = in[2];          /* shift */
        pl->extra[0] = in[3];   /* mean */
        pl->extra[1] = in[4];   /* var */
        if (X->ndim <= 5) {
            pl->nd = X->ndim;
            for (int d = 0; d < X->ndim; d++)
                pl->src[d] = X->shape[d];
        } else {   /* N x C x (spatial collapsed) */
            pl->nd = 3;
            pl->src[0] = X->shape[0];
            pl->src[1] = C;
            pl->src[2] = kp_value_numel(X) / (X->shape[0] * C);
        }
        memcpy(pl->dst, pl->src, sizeof pl->dst);
        pl->eps = kp_op_fa(p, op)[0];
        return true;
    }
    default:
        return false;
    }
}

bool kd_supports(const kp_program *p, uint32_t i)
{
    kd_plan pl;
    return plan_op(p, i, &pl);
}

/* ---------------------------------------------------------------------------------------
 * Activations stored channels-last
 *
 * Every activation is dense C order as far as the rest of kiln knows. But an activation
 * that only oneDNN kernels ever touch may be stored in whatever order they agree on: one
 * that a convolution or pooling writes and only convolutions and poolings read (as their
 * input, or as a convolution's sum operand) is stored nhwc, so a chain of them runs with
 * no reorders between its links. The few reference kernels that work channels-last too
 * (kr_cl_inputs: the f32 GroupNorm, nearest Resize, Concat over channels) count as such
 * links for their output 0 and their first kr_cl_inputs inputs, so a UNet's conv ->
 * GroupNorm -> conv -> Resize -> Concat -> conv stays nhwc. The rule is a function of the program alone, so the
 * kernel that writes such a value and every kernel that reads it agree without talking.
 * Graph inputs and outputs, values nothing reads (a result being folded at trace time),
 * and values a free reshape (a value no op produces, sharing the storage) reads, stay
 * dense. A kernel that touches an nhwc value never declines to the reference kernels: it
 * reorders around whatever primitive it gets, or fails (KILN_ERR_INTERNAL).
 *
 * kd_plan_layouts decides it for a whole program once (kk_program_plan: one pass over the
 * ops, then per candidate a look at the few free reshapes meeting its storage); kd_create
 * without a plan asks the same function about its own op's values only.
 * ------------------------------------------------------------------------------------- */

/* Whether op j's oneDNN kernel (plan pl) can read value v channels-last: as its input, or
 * as a convolution's sum operand. */
static bool reads_cl(const kd_plan *pl, int v)
{
    if (pl->x == v)
        return true;
    for (int k = 0; k < pl->n_post; k++)
        if (pl->post[k].type == KP_POST_SUM && pl->post[k].operand == v)
            return true;
    return false;
}

static bool ranges_meet(const kp_value *a, const kp_value *b)
{
    return a->offset < b->offset + b->nbytes && b->offset < a->offset + a->nbytes;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* What one pass over the program learns about every value. */
typedef struct cl_scan {
    const kp_program *p;
    int32_t  *prod;             /* the first op that writes v, or -1 */
    uint8_t  *nprod;            /* how many ops write v (at most 2 counted) */
    int32_t  *first;            /* the first op that reads v, or -1 */
    uint8_t  *is_out;           /* v is a graph output */
    int32_t  *alias;            /* ACT values no op writes (free reshapes' views) */
    uint32_t  n_alias;
    int32_t **writes;           /* per alias u (built lazily): sorted ops writing storage
                                   that meets u's */
    int32_t  *n_writes;
} cl_scan;

/* The sorted list of ops that write a value whose storage meets alias u's (built once). */
static kiln_status alias_writes(cl_scan *sc, int u)
{
    if (sc->writes[u])
        return KILN_OK;
    const kp_program *p = sc->p;
    int32_t n = 0, *w = kiln__malloc((size_t)p->n_values * sizeof *w + 1);
    if (!w)
        return kiln__fail(KILN_ERR_NOMEM, "kernels: out of memory planning layouts");
    for (uint32_t t = 0; t < p->n_values; t++)
        if (sc->nprod[t] && ranges_meet(&p->values[t], &p->values[u]))
            w[n++] = sc->prod[t];
    qsort(w, (size_t)n, sizeof *w, cmp_i32);
    sc->writes[u] = w;
    sc->n_writes[u] = n;
    return KILN_OK;
}

/* Whether some value no op produces (a free reshape) reads v's data: one whose storage
 * meets v's and that is first read (by an op, or as a graph output after the last op)
 * after v is written, with no other write to that storage in between (the arena reuses
 * storage, so meeting alone proves nothing). */
static kiln_status aliased(cl_scan *sc, int v, bool *out)
{
    const kp_program *p = sc->p;
    int32_t pv = sc->prod[v];
    *out = false;
    for (uint32_t a = 0; a < sc->n_alias; a++) {
        int u = sc->alias[a];
        if (!ranges_meet(&p->values[u], &p->values[v]))
            continue;
        int64_t cw = sc->first[u] >= 0 ? sc->first[u] : sc->is_out[u] ? (int64_t)p->n_ops : -1;
        if (cw <= pv)
            continue;   /* never read, or read before v exists */
        kiln_status st = alias_writes(sc, u);
        if (st)
            return st;
        /* the first write after pv: rewritten if it comes before cw */
        const int32_t *w = sc->writes[u];
        int32_t lo = 0, hi = sc->n_writes[u];
        while (lo < hi) {
            int32_t mid = lo + (hi - lo) / 2;
            if (w[mid] <= pv)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo == sc->n_writes[u] || w[lo] >= cw) {
            *out = true;
            return KILN_OK;
        }
    }
    return KILN_OK;
}

/* The channels-last rule above, for every value asked about (cl[v] != 0), in one pass over
 * the ops plus, per value asked about, a look at the free reshapes whose storage meets it. */
kiln_status kd_plan_layouts(const kp_program *p, uint8_t *cl)
{
    uint32_t nv = p->n_values;
    if (!nv)
        return KILN_OK;
    kiln_status st = KILN_OK;
    cl_scan sc = { .p = p };
    sc.prod = kiln__malloc(nv * sizeof *sc.prod);
    sc.first = kiln__malloc(nv * sizeof *sc.first);
    sc.alias = kiln__malloc(nv * sizeof *sc.alias);
    sc.n_writes = kiln__malloc(nv * sizeof *sc.n_writes);
    sc.nprod = kiln__calloc(nv, 1);
    sc.is_out = kiln__calloc(nv, 1);
    sc.writes = kiln__calloc(nv, sizeof *sc.writes);
    if (!sc.prod || !sc.first || !sc.alias || !sc.n_writes || !sc.nprod || !sc.is_out ||
        !sc.writes) {
        st = kiln__fail(KILN_ERR_NOMEM, "kernels: out of memory planning layouts");
        goto done;
    }
    for (uint32_t v = 0; v < nv; v++)
        sc.prod[v] = sc.first[v] = -1;
    for (uint32_t j = 0; j < p->n_ops; j++) {
        const kp_op *op = &p->ops[j];
        const int32_t *in = kp_op_in(p, op), *out = kp_op_out(p, op);
        bool asked = false;
        for (int k = 0; k < op->n_out && !asked; k++)
            asked = out[k] >= 0 && (uint32_t)out[k] < nv && cl[out[k]];
        for (int k = 0; k < op->n_in && !asked; k++)
            asked = in[k] >= 0 && (uint32_t)in[k] < nv && cl[in[k]];
        kd_plan pl;
        bool dnnl_cl = asked &&
                       (op->kind == KP_CONV || op->kind == KP_POOL || op->kind == KP_GLOBAL_POOL) &&
                       plan_op(p, j, &pl) && !pl.extended;
        /* a reference kernel that reads its first ref_cl inputs and writes its output 0
         * either way */
        int ref_cl = asked && !dnnl_cl ? kr_cl_inputs(p, j) : 0;
        for (int k = 0; k < op->n_out; k++) {
            int v = out[k];
            if (v < 0 || (uint32_t)v >= nv)
                continue;
            if (!sc.nprod[v])
                sc.prod[v] = (int32_t)j;
            if (sc.nprod[v] < 2)
                sc.nprod[v]++;
            if (cl[v] && !(dnnl_cl && pl.y == v) && !(ref_cl > 0 && k == 0))
                cl[v] = 0;
        }
        for (int k = 0; k < op->n_in; k++) {
            int v = in[k];
            if (v < 0 || (uint32_t)v >= nv)
                continue;
            if (sc.first[v] < 0)
                sc.first[v] = (int32_t)j;
            if (cl[v] && !(dnnl_cl && reads_cl(&pl, v)) && k >= ref_cl)
                cl[v] = 0;
        }
    }
    for (uint32_t j = 0; j < p->n_outputs; j++)
        if (p->outputs[j] < nv)
            sc.is_out[p->outputs[j]] = 1;
    for (uint32_t u = 0; u < nv; u++)
        if (p->values[u].kind == KP_VAL_ACT && !sc.nprod[u])
            sc.alias[sc.n_alias++] = (int32_t)u;
    for (uint32_t v = 0; v < nv; v++) {
        if (!cl[v])
            continue;
        const kp_value *x = &p->values[v];
        /* written by exactly one op and read by some (an op being folded at trace time has
         * no readers yet, and the compiler reads its result dense) */
        bool ok = x->kind == KP_VAL_ACT && x->dtype == KILN_F32 && x->ndim >= 3 &&
                  x->ndim <= 5 && !x->n_layout && !sc.is_out[v] && sc.nprod[v] == 1 &&
                  sc.first[v] >= 0;
        bool al = false;
        if (ok && (st = aliased(&sc, (int)v, &al)))
            goto done;
        cl[v] = ok && !al;
    }
done:
    if (sc.writes)
        for (uint32_t u = 0; u < nv; u++)
            kiln__free(sc.writes[u]);
    kiln__free(sc.writes);
    kiln__free(sc.prod);
    kiln__free(sc.first);
    kiln__free(sc.alias);
    kiln__free(sc.n_writes);
    kiln__free(sc.nprod);
    kiln__free(sc.is_out);
    return st;
}

/* ---------------------------------------------------------------------------------------
 * Packed-layout descriptors
 * ------------------------------------------------------------------------------------- */

enum { LAYOUT_VERSION = 1, LAYOUT_BLOCKED = 1, LAYOUT_HEAD = 16 };

static size_t layout_size(int nd, int nb) { return LAYOUT_HEAD + 40 * (size_t)nd + 16 * (size_t)nb; }

static void put64(uint8_t *b, int64_t v)
{
    for (int j = 0; j < 8; j++)
        b[j] = (uint8_t)((uint64_t)v >> (8 * j));
}

static int64_t get64(const uint8_t *b)
{
    uint64_t v = 0;
    for (int j = 0; j < 8; j++)
        v |= (uint64_t)b[j] << (8 * j);
    return (int64_t)v;
}

/* Serialises a blocked f32 desc plus the plain strides (kiln__malloc'd). */
static kiln_status layout_write(const dnnl_memory_desc_t *md, const dnnl_dims_t plain,
                                void **out, size_t *n_out)
{
    const dnnl_blocking_desc_t *bd = &md->format_desc.blocking;
    int nd = md->ndims, nb = bd->inner_nblks;
    KILN_ASSERT(md->format_kind == dnnl_blocked && nd >= 1 && nd <= DNNL_MAX_NDIMS &&
                nb >= 0 && nb <= DNNL_MAX_NDIMS && md->data_type == dnnl_f32);
    size_t n = layout_size(nd, nb);
    uint8_t *b = kiln__calloc(1, n);
    if (!b)
        return kiln__fail(KILN_ERR_NOMEM, "kernels: out of memory for a layout descriptor");
    b[0] = LAYOUT_VERSION;
    b[1] = LAYOUT_BLOCKED;
    b[2] = KILN_F32;
    b[3] = (uint8_t)nd;
    b[4] = (uint8_t)nb;
    put64(b + 8, md->offset0);
    uint8_t *q = b + LAYOUT_HEAD;
    for (int d = 0; d < nd; d++, q += 40) {
        put64(q, md->dims[d]);
        put64(q + 8, md->padded_dims[d]);
        put64(q + 16, md->padded_offsets[d]);
        put64(q + 24, bd->strides[d]);
        put64(q + 32, plain[d]);
    }
    for (int j = 0; j < nb; j++, q += 16) {
        put64(q, bd->inner_blks[j]);
        put64(q + 8, bd->inner_idxs[j]);
    }
    *out = b;
    *n_out = n;
    return KILN_OK;
}

/* Reads and validates a descriptor. v (may be NULL: only the structure is checked) is
 * the value it describes: the element count must match and every byte the layout can
 * address must lie within v->nbytes. Fills md and the plain strides. */
static bool layout_read(const void *layout, size_t n, const kp_value *v, dnnl_memory_desc_t *md,
                        dnnl_dims_t plain, const char **why)
{
    const uint8_t *b = layout;
    *why = "truncated";
    if (!b || n < LAYOUT_HEAD)
        return false;
    *why = "unknown version or kind";
    if (b[0] != LAYOUT_VERSION || b[1] != LAYOUT_BLOCKED || b[5] || b[6] || b[7])
        return false;
    *why = "not f32";
    if (b[2] != KILN_F32 || (v && v->dtype != KILN_F32))
        return false;
    int nd = b[3], nb = b[4];
    *why = "bad rank or block count";
    if (nd < 1 || nd > DNNL_MAX_NDIMS || nb > DNNL_MAX_NDIMS)
        return false;
    *why = "size does not match its rank";
    if (n != layout_size(nd, nb))
        return false;
    memset(md, 0, sizeof *md);
    md->ndims = nd;
    md->data_type = dnnl_f32;
    md->format_kind = dnnl_blocked;
    md->offset0 = get64(b + 8);
    dnnl_blocking_desc_t *bd = &md->format_desc.blocking;
    bd->inner_nblks = nb;
    const uint8_t *q = b + LAYOUT_HEAD;
    for (int d = 0; d < nd; d++, q += 40) {
        md->dims[d] = get64(q);
        md->padded_dims[d] = get64(q + 8);
        md->padded_offsets[d] = get64(q + 16);
        bd->strides[d] = get64(q + 24);
        plain[d] = get64(q + 32);
    }
    int64_t blk[DNNL_MAX_NDIMS];
    for (int d = 0; d < nd; d++)
        blk[d] = 1;
    uint64_t inner = 1;
    *why = "bad inner blocks";
    for (int j = 0; j < nb; j++, q += 16) {
        int64_t bs = get64(q), idx = get64(q + 8);
        if (bs < 1 || bs > (1 << 16) || idx < 0 || idx >= nd)
            return false;
        bd->inner_blks[j] = bs;
        bd->inner_idxs[j] = idx;
        blk[idx] *= bs;
        if (blk[idx] > (1 << 16) || !kiln__mul_ok(inner, (uint64_t)bs, &inner))
            return false;
    }
    *why = "offsets or padding not supported";
    if (md->offset0 != 0)
        return false;
    uint64_t numel = 1, maxoff = inner - 1, plain_max = 0;
    const int64_t lim = (int64_t)1 << 40;
    for (int d = 0; d < nd; d++) {
        int64_t dim = md->dims[d], pd = md->padded_dims[d], st = bd->strides[d], ps = plain[d];
        *why = "bad dims";
        if (md->padded_offsets[d] != 0 || dim < 1 || dim > lim || pd < dim || pd > lim ||
            pd % blk[d])
            return false;
        *why = "bad strides";
        if (st < 0 || st > lim || ps < 0 || ps > lim)
            return false;
        uint64_t t;
        *why = "sizes overflow";
        if (!kiln__mul_ok(numel, (uint64_t)dim, &numel) ||
            !kiln__mul_ok((uint64_t)(pd / blk[d] - 1), (uint64_t)st, &t) ||
            !kiln__add_ok(maxoff, t, &maxoff) ||
            !kiln__mul_ok((uint64_t)(dim - 1), (uint64_t)ps, &t) ||
            !kiln__add_ok(plain_max, t, &plain_max))
            return false;
    }
    *why = "plain strides are not a dense layout";
    if (plain_max + 1 != numel)
        return false;
    if (v) {
        uint64_t bytes;
        *why = "element count differs from the value's shape";
        if ((int64_t)numel != kp_value_numel(v))
            return false;
        *why = "layout addresses more bytes than the value stores";
        if (!kiln__mul_ok(maxoff + 1, sizeof(float), &bytes) || bytes > v->nbytes ||
            dnnl_memory_desc_get_size(md) > v->nbytes)
            return false;
    }
    return true;
}

const char *kd_layout_name(const void *layout, size_t n_layout, char *buf, size_t n)
{
    dnnl_memory_desc_t md;
    dnnl_dims_t plain;
    const char *why;
    if (!buf || !n)
        return "";
    if (!layout_read(layout, n_layout, NULL, &md, plain, &why)) {
        snprintf(buf, n, "invalid (%s)", why);
        return buf;
    }
    /* dims outermost first by stride (ties: logical order); capital = blocked dim */
    const dnnl_blocking_desc_t *bd = &md.format_desc.blocking;
    int nd = md.ndims, order[DNNL_MAX_NDIMS];
    bool blocked[DNNL_MAX_NDIMS] = { false };
    for (int j = 0; j < bd->inner_nblks; j++)
        blocked[bd->inner_idxs[j]] = true;
    for (int d = 0; d < nd; d++)
        order[d] = d;
    for (int a = 1; a < nd; a++)
        for (int c = a; c > 0 && bd->strides[order[c]] > bd->strides[order[c - 1]]; c--) {
            int t = order[c]; order[c] = order[c - 1]; order[c - 1] = t;
        }
    char tag[256];
    size_t at = 0;
    for (int d = 0; d < nd; d++)
        tag[at++] = (char)((blocked[order[d]] ? 'A' : 'a') + order[d]);
    for (int j = 0; j < bd->inner_nblks && at < sizeof tag - 24; j++)
        at += (size_t)snprintf(tag + at, sizeof tag - at, "%lld%c",
                               (long long)bd->inner_blks[j], (char)('a' + bd->inner_idxs[j]));
    tag[at] = '\0';
    snprintf(buf, n, "blocked:%s", tag);
    return buf;
}

/* ---------------------------------------------------------------------------------------
 * Small oneDNN helpers
 * ------------------------------------------------------------------------------------- */

static kiln_status dfail(dnnl_status_t s, const kp_program *p, uint32_t i, const char *what)
{
    kiln_status k = s == dnnl_out_of_memory ? KILN_ERR_NOMEM
                    : (s == dnnl_unimplemented || s == dnnl_invalid_arguments)
                        ? KILN_ERR_UNSUPPORTED
                        : KILN_ERR_INTERNAL;
    const char *name = p && i < p->n_ops ? kp_str(p, p->ops[i].name) : "";
    return kiln__fail(k, "op %u '%s': oneDNN %s: %s", i, name, what, dnnl_status2str(s));
}

#define DNNL_TRY(call, what)                                   \
    do {                                                       \
        dnnl_status_t s_ = (call);                             \
        if (s_ != dnnl_success) {                              \
            st = dfail(s_, p, i, what);                        \
            goto done;                                         \
        }                                                      \
    } while (0)

static void md_plain(dnnl_memory_desc_t *md, int nd, const dnnl_dims_t dims)
{
    dnnl_dims_t st;
    dense_strides(nd, dims, st);
    dnnl_status_t s = dnnl_memory_desc_init_by_strides(md, nd, dims, dnnl_f32, st);
    KILN_ASSERT(s == dnnl_success);
}

static void md_strided(dnnl_memory_desc_t *md, int nd, const dnnl_dims_t dims,
                       const dnnl_dims_t st)
{
    dnnl_status_t s = dnnl_memory_desc_init_by_strides(md, nd, dims, dnnl_f32, st);
    KILN_ASSERT(s == dnnl_success);
}

/* N x C x spatial... stored channels-last (nhwc, ndhwc, nwc). */
static void md_cl(dnnl_memory_desc_t *md, int nd, const dnnl_dims_t dims)
{
    dnnl_dims_t st;
    int64_t s = dims[1];
    st[1] = 1;
    for (int d = nd - 1; d >= 2; d--) {
        st[d] = s;
        s *= dims[d];
    }
    st[0] = s;
    md_strided(md, nd, dims, st);
}

static void md_any(dnnl_memory_desc_t *md, int nd, const dnnl_dims_t dims)
{
    dnnl_status_t s = dnnl_memory_desc_init_by_tag(md, nd, dims, dnnl_f32, dnnl_format_tag_any);
    KILN_ASSERT(s == dnnl_success);
}

/* One-off reorder src -> dst (weights: at creation, packing, unpacking), on the calling
 * thread: on a stream made for it here (a core's stream belongs to the core's thread, and
 * oneDNN streams are not for sharing between threads) and with a scratchpad of its own
 * (user mode: nothing shared with other threads' primitives). */
static dnnl_status_t reorder(const dnnl_memory_desc_t *smd, const void *src,
                             const dnnl_memory_desc_t *dmd, void *dst)
{
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    dnnl_memory_t ms = NULL, md = NULL, mp = NULL;
    dnnl_stream_t stream = NULL;
    void *pad = NULL;
    dnnl_engine_t e = engine;   /* get_engine has succeeded before any caller gets here */
    dnnl_status_t r = dnnl_primitive_attr_create(&attr);
    if (r == dnnl_success)
        r = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if (r == dnnl_success)
        r = dnnl_reorder_primitive_desc_create(&pd, smd, e, dmd, e, attr);
    if (r == dnnl_success)
        r = dnnl_primitive_create(&prim, pd);
    if (r == dnnl_success)
        r = dnnl_memory_create(&ms, smd, e, (void *)src);
    if (r == dnnl_success)
        r = dnnl_memory_create(&md, dmd, e, dst);
    const dnnl_memory_desc_t *spmd =
        r == dnnl_success ? dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0) : NULL;
    size_t nsp = spmd ? dnnl_memory_desc_get_size(spmd) : 0;
    if (nsp && !(pad = kiln__aligned_alloc(4096, (size_t)kiln__align_up(nsp, 4096))))
        r = dnnl_out_of_memory;
    if (r == dnnl_success && nsp)
        r = dnnl_memory_create(&mp, spmd, e, pad);
    if (r == dnnl_success)
        r = dnnl_stream_create(&stream, e, dnnl_stream_default_flags);
    if (r == dnnl_success) {
        dnnl_exec_arg_t args[3] = { { DNNL_ARG_FROM, ms }, { DNNL_ARG_TO, md },
                                    { DNNL_ARG_SCRATCHPAD, mp } };
        r = dnnl_primitive_execute(prim, stream, nsp ? 3 : 2, args);
    }
    if (r == dnnl_success)
        r = dnnl_stream_wait(stream);
    if (stream)
        dnnl_stream_destroy(stream);
    dnnl_memory_destroy(ms);
    dnnl_memory_destroy(md);
    dnnl_memory_destroy(mp);
    kiln__free(pad);
    dnnl_primitive_destroy(prim);
    dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_attr_destroy(attr);
    return r;
}

/* ---------------------------------------------------------------------------------------
 * Primitive descriptors from plans
 * ------------------------------------------------------------------------------------- */

/* Whether the operand of post-op j is described channels-last: a sum operand as it is
 * stored (sum_cl); a binary one that does not vary over space reads the same either way,
 * so it matches dst's order. */
static bool operand_cl(const kd_plan *pl, int j, bool dst_cl, bool sum_cl)
{
    const kd_post *q = &pl->post[j];
    if (q->type == KP_POST_SUM)
        return sum_cl;
    for (int d = 2; d < pl->nd; d++)
        if (q->dims[d] != 1)
            return false;
    return dst_cl;
}

/* Attributes: user scratchpad plus the op's post-ops. */
static dnnl_status_t make_attr(const kd_plan *pl, dnnl_primitive_attr_t *out)
{
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    dnnl_status_t s = dnnl_primitive_attr_create(&attr);
    if (s == dnnl_success)
        s = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if (s == dnnl_success && pl->n_fused) {
        s = dnnl_post_ops_create(&po);
        for (int j = 0; j < pl->n_fused && s == dnnl_success; j++) {
            const kd_post *q = &pl->post[j];
            if (q->type == KP_POST_UNARY) {
                s = dnnl_post_ops_append_eltwise(po, 1.f, q->alg, q->alpha, q->beta);
            } else if (q->type == KP_POST_SUM) {
                s = dnnl_post_ops_append_sum(po, 1.f);
            } else {
                dnnl_memory_desc_t md;
                if (operand_cl(pl, j, pl->cl, false))
                    md_cl(&md, pl->nd, q->dims);
                else
                    md_plain(&md, pl->nd, q->dims);
                s = dnnl_post_ops_append_binary(po, q->alg, &md);
            }
        }
        if (s == dnnl_success)
            s = dnnl_primitive_attr_set_post_ops(attr, po);
        dnnl_post_ops_destroy(po);
    }
    if (s != dnnl_success) {
        dnnl_primitive_attr_destroy(attr);
        return s;
    }
    *out = attr;
    return s;
}

/* The weights argument of conv/deconv/matmul (input 1), and whether it is a weight that
 * may take whatever layout the primitive likes. */
static bool weights_free_layout(const kp_program *p, const kd_plan *pl)
{
    return (pl->kind == KP_CONV || pl->kind == KP_CONV_TRANSPOSE || pl->kind == KP_MATMUL) &&
           p->values[pl->w].kind == KP_VAL_CONST;
}

/* Creates the primitive descriptor for a plan. any_weights: let the primitive choose the
 * weights layout (conv/deconv/matmul only). */
static dnnl_status_t make_pd(const kd_plan *pl, bool any_weights, dnnl_engine_t e,
                             dnnl_primitive_desc_t *pd)
{
    dnnl_memory_desc_t src, dst, wei, bias, aux;
    dnnl_primitive_attr_t attr;
    dnnl_status_t s = make_attr(pl, &attr);
    if (s != dnnl_success)
        return s;
    if (pl->cl) {
        md_cl(&src, pl->nd, pl->src);
        md_cl(&dst, pl->nd, pl->dst);
    } else {
        md_plain(&src, pl->nd, pl->src);
        md_plain(&dst, pl->nd, pl->dst);
    }
    if (pl->wnd) {
        if (any_weights)
            md_any(&wei, pl->wnd, pl->wei);
        else
            md_strided(&wei, pl->wnd, pl->wei, pl->wplain);
    }
    if (pl->bnd)
        md_plain(&bias, pl->bnd, pl->bias);
    const dnnl_memory_desc_t *pb = pl->b >= 0 && pl->bnd ? &bias : NULL;
    union {
        dnnl_convolution_desc_t conv;
        dnnl_deconvolution_desc_t deconv;
        dnnl_matmul_desc_t matmul;
        dnnl_pooling_v2_desc_t pool;
        dnnl_eltwise_desc_t eltwise;
        dnnl_binary_desc_t binary;
        dnnl_softmax_v2_desc_t softmax;
        dnnl_layer_normalization_desc_t lnorm;
        dnnl_batch_normalization_desc_t bnorm;
    } d;
    switch (pl->kind) {
    case KP_CONV:
        s = dnnl_dilated_convolution_forward_desc_init(&d.conv, dnnl_forward_inference,
                dnnl_convolution_direct, &src, &wei, pb, &dst, pl->strides, pl->dil, pl->pl,
                pl->pr);
        break;
    case KP_CONV_TRANSPOSE:
        s = dnnl_dilated_deconvolution_forward_desc_init(&d.deconv, dnnl_forward_inference,
                dnnl_deconvolution_direct, &src, &wei, pb, &dst, pl->strides, pl->dil, pl->pl,
                pl->pr);
        break;
    case KP_MATMUL:
        s = dnnl_matmul_desc_init(&d.matmul, &src, &wei, pb, &dst);
        break;
    case KP_POOL:
    case KP_GLOBAL_POOL:
        s = dnnl_pooling_v2_forward_desc_init(&d.pool, dnnl_forward_inference, pl->alg, &src,
                &dst, pl->strides, pl->kernel, pl->dil, pl->pl, pl->pr);
        break;
    case KP_UNARY:
        s = dnnl_eltwise_forward_desc_init(&d.eltwise, dnnl_forward_inference, pl->alg, &src,
                                           pl->alpha, pl->beta);
        break;
    case KP_BINARY:
        md_plain(&aux, pl->wnd, pl->wei);
        s = dnnl_binary_desc_init(&d.binary, pl->alg, &src, &aux, &dst);
        break;
    case KP_SOFTMAX:
        s = dnnl_softmax_v2_forward_desc_init(&d.softmax, dnnl_forward_inference, pl->alg, &src,
                                              &dst, pl->axis);
        break;
    case KP_LAYERNORM:
        s = dnnl_layer_normalization_forward_desc_init(&d.lnorm, dnnl_forward_inference, &src,
                NULL, pl->eps, dnnl_use_scale | (pl->b >= 0 ? dnnl_use_shift : 0u));
        break;
    case KP_BATCHNORM:
        s = dnnl_batch_normalization_forward_desc_init(&d.bnorm, dnnl_forward_inference, &src,
                pl->eps, dnnl_use_global_stats | dnnl_use_scale | dnnl_use_shift);
        break;
    default:
        s = dnnl_unimplemented;
    }
    if (s == dnnl_success)
        s = dnnl_primitive_desc_create(pd, &d, attr, e, NULL);
    dnnl_primitive_attr_destroy(attr);
    return s;
}

/* ---------------------------------------------------------------------------------------
 * Kernels
 * ------------------------------------------------------------------------------------- */

enum { KD_MAX_STEPS = 4 + KD_MAX_POST, KD_MAX_MEMS = 4 * KD_MAX_ARGS, KD_MAX_BOUND = 8 + KD_MAX_POST };

/* One primitive execution of a kernel with its arguments. */
typedef struct kd_step {
    dnnl_primitive_t prim;
    int nargs;
    dnnl_exec_arg_t args[KD_MAX_ARGS];
} kd_step;

/* A kernel: its steps run in order on the core's stream. Usually one step (the op's
 * primitive); a channels-last conv has reorder in, [reorder of the sum operand], conv,
 * reorder out, with its channels-last tensors in the core's scratch buffer; post-ops not
 * fused into the primitive follow as in-place steps on the destination. Memory objects
 * are made once, by kd_create on whatever thread creates the kernel; after that only the
 * core's thread touches the kernel: kd_run grows the core's scratch if it is smaller than
 * scratch_need and points the scratch-bound memories into it whenever it is not the
 * buffer they saw last (new kernel, or the scratch grew for another kernel). */
typedef struct kd_kernel {
    kk_kernel base;
    kd_core  *core;
    int       nsteps;
    kd_step  *steps;                    /* kiln__calloc'd */
    int       nmems;
    dnnl_memory_t mems[KD_MAX_MEMS];    /* owned */
    int       nbound;
    struct { dnnl_memory_t mem; size_t off; } bound[KD_MAX_BOUND];   /* in core scratch */
    size_t    scratch_need;             /* bytes of core scratch this kernel uses */
    void     *scratch_seen;             /* the core scratch the bound memories point at (NULL:
                                           not yet pointed) */
    void     *owned;                    /* reordered weights (kiln__aligned_alloc) */
    const void *sum_src;                /* sum post-op operand to copy into dst first */
    void     *sum_dst;
    size_t    sum_bytes;
} kd_kernel;

static kiln_status kd_run(kk_kernel *kk)
{
    kd_kernel *k = (kd_kernel *)kk;
    kd_core *core = k->core;
    if (k->scratch_need > core->scratch_bytes) {
        kiln_status st = core_scratch(core, k->scratch_need);
        if (st) {
            kiln__error_prefix("op %u '%s'", kk->op, kp_str(kk->prog, kk->prog->ops[kk->op].name));
            return st;
        }
    }
    if (k->nbound && k->scratch_seen != core->scratch) {
        for (int j = 0; j < k->nbound; j++)
            dnnl_memory_set_data_handle(k->bound[j].mem, (char *)core->scratch + k->bound[j].off);
        k->scratch_seen = core->scratch;
    }
    if (k->sum_src)
        memmove(k->sum_dst, k->sum_src, k->sum_bytes);
    dnnl_status_t s = dnnl_success;
    for (int j = 0; j < k->nsteps && s == dnnl_success; j++)
        s = dnnl_primitive_execute(k->steps[j].prim, core->stream, k->steps[j].nargs,
                                   k->steps[j].args);
    if (s == dnnl_success)
        s = dnnl_stream_wait(core->stream);
    if (s != dnnl_success)
        return dfail(s, kk->prog, kk->op, "execute");
    return KILN_OK;
}

static void kd_destroy(kk_kernel *kk)
{
    kd_kernel *k = (kd_kernel *)kk;
    for (int j = 0; j < k->nmems; j++)
        dnnl_memory_destroy(k->mems[j]);
    for (int j = 0; j < k->nsteps; j++)
        dnnl_primitive_destroy(k->steps[j].prim);
    kiln__free(k->steps);
    kiln__free(k->owned);
    kiln__free(k);
}

/* A memory object owned by the kernel over ptr (NULL on failure, status in *s). */
static dnnl_memory_t new_mem(kd_kernel *k, const dnnl_memory_desc_t *md, void *ptr,
                             dnnl_status_t *s)
{
    dnnl_memory_t m = NULL;
    KILN_ASSERT(k->nmems < KD_MAX_MEMS);
    *s = dnnl_memory_create(&m, md, engine, ptr);
    if (*s != dnnl_success)
        return NULL;
    k->mems[k->nmems++] = m;
    return m;
}

/* The same over bytes [off, off + size of md) of the core's scratch buffer: made without a
 * buffer (the scratch may not exist yet, and only the core's thread may look at it); kd_run
 * points it into the scratch before the kernel first runs. */
static dnnl_memory_t bound_mem(kd_kernel *k, const dnnl_memory_desc_t *md, size_t off,
                               dnnl_status_t *s)
{
    KILN_ASSERT(k->nbound < KD_MAX_BOUND);
    dnnl_memory_t m = new_mem(k, md, DNNL_MEMORY_NONE, s);
    if (m) {
        k->bound[k->nbound].mem = m;
        k->bound[k->nbound].off = off;
        k->nbound++;
    }
    return m;
}

static void step_arg(kd_step *st, int arg, dnnl_memory_t m)
{
    KILN_ASSERT(st->nargs < KD_MAX_ARGS);
    st->args[st->nargs].arg = arg;
    st->args[st->nargs].memory = m;
    st->nargs++;
}

/* Adds a memory over ptr as argument `arg` of step st. */
static dnnl_status_t add_arg(kd_kernel *k, kd_step *st, int arg, const dnnl_memory_desc_t *md,
                             void *ptr)
{
    dnnl_status_t s;
    dnnl_memory_t m = new_mem(k, md, ptr, &s);
    if (m)
        step_arg(st, arg, m);
    return s;
}

static size_t scratch_size(const_dnnl_primitive_desc_t pd)
{
    const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    return md ? dnnl_memory_desc_get_size(md) : 0;
}

/* Creates step st's primitive from pd and binds its scratchpad (if any) at scratch offset 0. */
static dnnl_status_t finish_step(kd_kernel *k, kd_step *st, const_dnnl_primitive_desc_t pd)
{
    dnnl_status_t s = dnnl_success;
    const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    if (md && dnnl_memory_desc_get_size(md)) {
        dnnl_memory_t m = bound_mem(k, md, 0, &s);
        if (!m)
            return s;
        step_arg(st, DNNL_ARG_SCRATCHPAD, m);
    }
    return dnnl_primitive_create(&st->prim, pd);
}

/* Reorder pd with a user scratchpad (it shares the core's scratch like every step). */
static dnnl_status_t reorder_pd(const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to,
                                dnnl_primitive_desc_t *pd)
{
    dnnl_primitive_attr_t attr;
    dnnl_status_t s = dnnl_primitive_attr_create(&attr);
    if (s != dnnl_success)
        return s;
    s = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if (s == dnnl_success)
        s = dnnl_reorder_primitive_desc_create(pd, from, engine, to, engine, attr);
    dnnl_primitive_attr_destroy(attr);
    return s;
}

static bool overlaps(const void *a, size_t na, const void *b, size_t nb)
{
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return x < y + nb && y < x + na;
}

static size_t val_bytes(const kp_program *p, int v)
{
    return (size_t)kp_value_numel(&p->values[v]) * sizeof(float);
}

/* In-place rules: element-wise ops may write over their first input exactly; nothing
 * else may overlap the output (except a sum operand sharing it exactly). */
static bool aliasing_ok(const kp_program *p, const kd_plan *pl, void *const *ptr)
{
    void *y = ptr[pl->y];
    size_t ny = val_bytes(p, pl->y);
    bool inplace_ok = pl->kind == KP_UNARY || pl->kind == KP_BINARY || pl->kind == KP_SOFTMAX ||
                      pl->kind == KP_LAYERNORM || pl->kind == KP_BATCHNORM;
    int ins[5] = { pl->x, pl->w, pl->b, pl->extra[0], pl->extra[1] };
    for (int j = 0; j < 5; j++) {
        int v = ins[j];
        if (v < 0)
            continue;
        if (j == 0 && inplace_ok && ptr[v] == y)
            continue;
        if (overlaps(ptr[v], val_bytes(p, v), y, ny))
            return false;
    }
    for (int j = 0; j < pl->n_post; j++) {
        int v = pl->post[j].operand;
        if (v < 0)
            continue;
        if (pl->post[j].type == KP_POST_SUM && ptr[v] == y)
            continue;
        if (overlaps(ptr[v], val_bytes(p, v), y, ny))
            return false;
    }
    return true;
}

/* Binds the weights: in place when they already are in the layout the primitive wants,
 * else reordered once into memory the kernel owns. */
static kiln_status bind_weights(kd_kernel *k, kd_step *step, const kp_program *p, uint32_t i,
                                const kd_plan *pl, dnnl_primitive_desc_t pd, void *const *ptr,
                                uint64_t *copied)
{
    kiln_status st = KILN_OK;
    const kp_value *w = &p->values[pl->w];
    const dnnl_memory_desc_t *want = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    dnnl_memory_desc_t have;
    dnnl_dims_t plain;
    if (w->n_layout) {
        const char *why;
        if ((uint64_t)w->layout + w->n_layout > p->n_blob ||
            !layout_read(p->blob + w->layout, w->n_layout, w, &have, plain, &why))
            return kiln__fail(KILN_ERR_FORMAT, "op %u '%s': packed layout of '%s': %s", i,
                              kp_str(p, p->ops[i].name), kp_str(p, w->name), why);
        if (have.ndims != pl->wnd || !same_dims(pl->wnd, have.dims, pl->wei))
            return kiln__fail(KILN_ERR_FORMAT,
                              "op %u '%s': packed layout of '%s' does not fit the op's weights",
                              i, kp_str(p, p->ops[i].name), kp_str(p, w->name));
    } else {
        md_strided(&have, pl->wnd, pl->wei, pl->wplain);
    }
    void *data = ptr[pl->w];
    if (!dnnl_memory_desc_equal(&have, want)) {
        size_t n = dnnl_memory_desc_get_size(want);
        k->owned = kiln__aligned_alloc(KP_ALIGN, n ? n : 1);
        if (!k->owned)
            return kiln__fail(KILN_ERR_NOMEM, "op %u '%s': out of memory reordering weights", i,
                              kp_str(p, p->ops[i].name));
        if (n > val_bytes(p, pl->w))
            memset(k->owned, 0, n);   /* padded blocks: zeros, whatever the reorder writes */
        DNNL_TRY(reorder(&have, data, want, k->owned), "weight reorder");
        data = k->owned;
        if (copied)
            *copied += n;
    }
    DNNL_TRY(add_arg(k, step, DNNL_ARG_WEIGHTS, want, data), "memory");
done:
    return st;
}

static const char *impl_name(const_dnnl_primitive_desc_t pd)
{
    const char *s = NULL;
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &s) != dnnl_success || !s)
        return "";
    return s;
}

/* Whether oneDNN's choice is worth taking: never a reference implementation (far slower
 * than kiln's own: a matmul with a per-row bias took 300 ms against 0.2 ms), and for a
 * convolution not the gemm one when running channels-last (the reorders would buy nothing)
 * or with fused post-ops (it applies them element by element). */
static bool impl_ok(const kd_plan *pl, const_dnnl_primitive_desc_t pd)
{
    const char *name = impl_name(pd);
    if (strncmp(name, "ref", 3) == 0)
        return false;
    bool conv = pl->kind == KP_CONV || pl->kind == KP_CONV_TRANSPOSE;
    if (conv && strstr(name, "gemm") && (pl->cl || pl->n_fused > 0))
        return false;
    return true;
}

/* The op's primitive descriptor, trying in order of preference: channels-last (convs),
 * then plain; all post-ops fused, then those before the first operand that varies over
 * space (a layout mismatch with dst), then none (the rest run as separate steps); for a
 * constant weight the layout the primitive likes, then plain. Sets pl->cl, pl->n_fused. */
static dnnl_status_t choose_pd(kd_plan *pl, const kp_program *p, dnnl_engine_t e,
                               dnnl_primitive_desc_t *pd)
{
    bool any = weights_free_layout(p, pl);
    int cand[3], nc = 0;
    cand[nc++] = pl->n_post;
    if (pl->kind == KP_CONV || pl->kind == KP_CONV_TRANSPOSE) {
        int split = pl->n_post;
        for (int j = 0; j < pl->n_post && split == pl->n_post; j++)
            if (pl->post[j].type == KP_POST_BINARY)
                for (int d = 2; d < pl->nd; d++)
                    if (pl->post[j].dims[d] != 1)
                        split = j;
        if (split < pl->n_post)
            cand[nc++] = split;
    }
    if (cand[nc - 1] > 0)
        cand[nc++] = 0;
    bool layouts[2] = { pl->cl, false };
    dnnl_status_t s = dnnl_unimplemented;
    for (int f = pl->cl ? 0 : 1; f < 2; f++) {
        pl->cl = layouts[f];
        for (int c = 0; c < nc; c++) {
            pl->n_fused = cand[c];
            for (int w = any ? 0 : 1; w < 2; w++) {
                s = make_pd(pl, w == 0, e, pd);
                if (s != dnnl_success)
                    continue;
                if (impl_ok(pl, *pd))
                    return s;
                dnnl_primitive_desc_destroy(*pd);
                *pd = NULL;
                s = dnnl_unimplemented;
            }
        }
    }
    return s;
}

/* A separate step for post-op j (not fused): in place on the destination as stored. */
static dnnl_status_t post_step_pd(const kd_plan *pl, int j, bool dst_cl, bool src1_cl,
                                  dnnl_engine_t e, dnnl_primitive_desc_t *pd)
{
    const kd_post *q = &pl->post[j];
    dnnl_primitive_attr_t attr;
    dnnl_status_t s = dnnl_primitive_attr_create(&attr);
    if (s != dnnl_success)
        return s;
    s = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    dnnl_memory_desc_t dst, src1;
    if (dst_cl)
        md_cl(&dst, pl->nd, pl->dst);
    else
        md_plain(&dst, pl->nd, pl->dst);
    if (s == dnnl_success && q->type == KP_POST_UNARY) {
        dnnl_eltwise_desc_t d;
        s = dnnl_eltwise_forward_desc_init(&d, dnnl_forward_inference, q->alg, &dst, q->alpha,
                                           q->beta);
        if (s == dnnl_success)
            s = dnnl_primitive_desc_create(pd, &d, attr, e, NULL);
    } else if (s == dnnl_success) {
        dnnl_binary_desc_t d;
        if (operand_cl(pl, j, dst_cl, src1_cl))
            md_cl(&src1, pl->nd, q->dims);
        else
            md_plain(&src1, pl->nd, q->dims);
        s = dnnl_binary_desc_init(&d, q->type == KP_POST_SUM ? dnnl_binary_add : q->alg, &dst,
                                  &src1, &dst);
        if (s == dnnl_success)
            s = dnnl_primitive_desc_create(pd, &d, attr, e, NULL);
    }
    dnnl_primitive_attr_destroy(attr);
    return s;
}

static void md_layout(dnnl_memory_desc_t *md, int nd, const dnnl_dims_t dims, bool cl)
{
    if (cl)
        md_cl(md, nd, dims);
    else
        md_plain(md, nd, dims);
}

/* How a spatial op's X, Y and sum operands are stored: from the program's plan, or worked
 * out for these values alone. */
static kiln_status op_layouts(const kk_plan *plan, const kp_program *p, const kd_plan *pl,
                              bool *xs_cl, bool *ys_cl, bool *op_cl)
{
    uint8_t *cl = plan ? plan->cl : kiln__calloc(p->n_values ? p->n_values : 1, 1);
    if (!cl)
        return kiln__fail(KILN_ERR_NOMEM, "kernels: out of memory planning layouts");
    if (!plan) {
        cl[pl->x] = cl[pl->y] = 1;
        for (int j = 0; j < pl->n_post; j++)
            if (pl->post[j].type == KP_POST_SUM)
                cl[pl->post[j].operand] = 1;
        kiln_status st = kd_plan_layouts(p, cl);
        if (st) {
            kiln__free(cl);
            return st;
        }
    }
    *xs_cl = cl[pl->x];
    *ys_cl = cl[pl->y];
    for (int j = 0; j < pl->n_post; j++)
        op_cl[j] = pl->post[j].type == KP_POST_SUM && cl[pl->post[j].operand];
    if (!plan)
        kiln__free(cl);
    return KILN_OK;
}

kiln_status kd_create(kk_core *c, const kk_plan *plan, const kp_program *p, uint32_t i,
                      void *const *ptr, kk_kernel **out, uint64_t *copied)
{
    kd_plan pl;
    if (!c || !c->dnnl || !ptr || !out || (plan && plan->prog != p))
        return kiln__fail(KILN_ERR_ARG, "kd_create: bad argument");
    if (!plan_op(p, i, &pl))
        return kiln__fail(KILN_ERR_UNSUPPORTED, "op %u '%s': not a oneDNN op", i,
                          p && i < p->n_ops ? kp_str(p, p->ops[i].name) : "");
    /* How X, Y and sum operands are stored (see kd_plan_layouts). A kernel that touches a
     * value stored channels-last must not hand the op to the reference kernels (they read
     * dense C order): it fails instead of declining. */
    bool spatial = pl.kind == KP_CONV || pl.kind == KP_POOL || pl.kind == KP_GLOBAL_POOL;
    bool xs_cl = false, ys_cl = false, touches = false;
    bool op_cl[KD_MAX_POST] = { false };
    kiln_status st = KILN_OK;
    if (spatial && (st = op_layouts(plan, p, &pl, &xs_cl, &ys_cl, op_cl)))
        return st;
    for (int j = 0; j < pl.n_post; j++)
        touches |= op_cl[j];
    touches |= xs_cl || ys_cl;
    const kiln_status decline = touches ? KILN_ERR_INTERNAL : KILN_ERR_UNSUPPORTED;
    if (pl.kind == KP_POOL || pl.kind == KP_GLOBAL_POOL)
        pl.cl = xs_cl || ys_cl;
    if (!aliasing_ok(p, &pl, ptr))
        return kiln__fail(decline, "op %u '%s': buffers overlap in a way oneDNN cannot run", i,
                          kp_str(p, p->ops[i].name));
    kd_core *core = c->dnnl;
    dnnl_engine_t e = NULL;
    if ((st = get_engine(&e)))
        return st;
    /* pds: [0] the op, [1] reorder of X, [2] reorder of Y, [3] sum operand into dst,
     * [4 + j] unfused post-op j */
    dnnl_primitive_desc_t pds[4 + KD_MAX_POST] = { NULL };
    uint64_t ncopied = 0;
    kd_kernel *k = kiln__calloc(1, sizeof *k);
    if (k)
        k->steps = kiln__calloc(KD_MAX_STEPS, sizeof *k->steps);
    if (!k || !k->steps) {
        kiln__free(k);
        return kiln__fail(KILN_ERR_NOMEM, "op %u: out of memory for a kernel", i);
    }
    k->base.run = kd_run;
    k->base.destroy = kd_destroy;
    k->base.prog = p;
    k->base.op = i;
    k->core = core;

    dnnl_status_t s = choose_pd(&pl, p, e, &pds[0]);
    if (s != dnnl_success) {
        st = dfail(s, p, i, "primitive descriptor");
        if (st == KILN_ERR_UNSUPPORTED)
            st = decline;
        goto done;
    }
    /* a fused sum takes its operand in dst before the primitive runs; an unfused one is an
     * add after it, so its operand must not live in dst (overwritten by then) */
    int fused_sum = -1;
    bool fs_cl = false;
    for (int j = 0; j < pl.n_post; j++) {
        const kd_post *q = &pl.post[j];
        if (q->type == KP_POST_SUM && j < pl.n_fused) {
            fused_sum = q->operand;
            fs_cl = op_cl[j];
        } else if (q->operand >= 0 && j >= pl.n_fused && ptr[q->operand] == ptr[pl.y]) {
            st = kiln__fail(decline, "op %u '%s': post-op operand in the output's buffer", i,
                            kp_str(p, p->ops[i].name));
            goto done;
        }
    }
    /* X and Y as stored and as the primitive takes them; where they differ, the primitive
     * works on a copy in the core's scratch and a reorder step converts */
    dnnl_memory_desc_t md, x_st, x_p, y_st, y_p;
    md_layout(&x_st, pl.nd, pl.src, xs_cl);
    md_layout(&x_p, pl.nd, pl.src, pl.cl);
    md_layout(&y_st, pl.nd, pl.dst, ys_cl);
    md_layout(&y_p, pl.nd, pl.dst, pl.cl);
    bool x_re = xs_cl != pl.cl, y_re = ys_cl != pl.cl;
    if (fused_sum >= 0 && ptr[fused_sum] == ptr[pl.y] && fs_cl != pl.cl)
        y_re = true;   /* operand in dst's buffer but in another order: convert via scratch */
    if (x_re)
        DNNL_TRY(reorder_pd(&x_st, &x_p, &pds[1]), "reorder of the input");
    if (y_re)
        DNNL_TRY(reorder_pd(&y_p, &y_st, &pds[2]), "reorder of the output");
    bool sum_in_place = fused_sum >= 0 && !y_re && ptr[fused_sum] == ptr[pl.y];
    bool sum_move = fused_sum >= 0 && !y_re && !sum_in_place && fs_cl == pl.cl;
    dnnl_memory_desc_t s_st;
    if (fused_sum >= 0 && !sum_in_place && !sum_move) {
        md_layout(&s_st, pl.nd, pl.dst, fs_cl);
        DNNL_TRY(reorder_pd(&s_st, &y_p, &pds[3]), "reorder of the sum operand");
    }
    for (int j = pl.n_fused; j < pl.n_post; j++)
        DNNL_TRY(post_step_pd(&pl, j, ys_cl, pl.post[j].type == KP_POST_SUM && op_cl[j], e,
                              &pds[4 + j]), "post-op step");

    /* Scratch layout: [0, sp) every step's scratchpad (steps run one after another);
     * then X and Y as the primitive takes them when they need converting. */
    size_t sp = 0, off_x = 0, off_y = 0, need;
    for (int j = 0; j < 4 + KD_MAX_POST; j++)
        if (pds[j] && scratch_size(pds[j]) > sp)
            sp = scratch_size(pds[j]);
    need = off_x = off_y = (size_t)kiln__align_up(sp, 4096);
    if (x_re)
        need = off_y = off_x + (size_t)kiln__align_up(val_bytes(p, pl.x), 4096);
    if (y_re)
        need = off_y + val_bytes(p, pl.y);
    /* Only the core's thread touches the scratch: made there, the kernel grows it now (so
     * running out of memory is a creation failure, as before any of this could run on other
     * threads); made elsewhere, the core's thread grows it (kd_core_reserve, or kd_run). */
    k->scratch_need = need;
    core_want(core, need);
    if (pthread_equal(pthread_self(), core->owner) && (st = core_scratch(core, need)))
        goto done;

    kd_step *main, *r;
    dnnl_memory_t xm = NULL, xp = NULL, ym = NULL, yp = NULL;   /* stored / primitive's */
    xm = new_mem(k, &x_st, ptr[pl.x], &s);
    if (s == dnnl_success)
        ym = new_mem(k, &y_st, ptr[pl.y], &s);
    if (s == dnnl_success)
        xp = x_re ? bound_mem(k, &x_p, off_x, &s) : xm;
    if (s == dnnl_success)
        yp = y_re ? bound_mem(k, &y_p, off_y, &s) : ym;
    DNNL_TRY(s, "memory");
    if (x_re) {
        r = &k->steps[k->nsteps++];
        step_arg(r, DNNL_ARG_FROM, xm);
        step_arg(r, DNNL_ARG_TO, xp);
        DNNL_TRY(finish_step(k, r, pds[1]), "reorder");
    }
    if (pds[3]) {
        r = &k->steps[k->nsteps++];
        DNNL_TRY(add_arg(k, r, DNNL_ARG_FROM, &s_st, ptr[fused_sum]), "memory");
        step_arg(r, DNNL_ARG_TO, yp);
        DNNL_TRY(finish_step(k, r, pds[3]), "reorder");
    } else if (sum_move) {
        k->sum_src = ptr[fused_sum];
        k->sum_dst = ptr[pl.y];
        k->sum_bytes = val_bytes(p, pl.y);
    }
    main = &k->steps[k->nsteps++];
    step_arg(main, pl.kind == KP_BINARY ? DNNL_ARG_SRC_0 : DNNL_ARG_SRC, xp);
    step_arg(main, DNNL_ARG_DST, yp);
    if (y_re) {
        r = &k->steps[k->nsteps++];
        step_arg(r, DNNL_ARG_FROM, yp);
        step_arg(r, DNNL_ARG_TO, ym);
        DNNL_TRY(finish_step(k, r, pds[2]), "reorder");
    }
    switch (pl.kind) {
    case KP_CONV:
    case KP_CONV_TRANSPOSE:
    case KP_MATMUL:
        if ((st = bind_weights(k, main, p, i, &pl, pds[0], ptr, &ncopied)))
            goto done;
        if (pl.b >= 0) {
            md_plain(&md, pl.bnd, pl.bias);
            DNNL_TRY(add_arg(k, main, DNNL_ARG_BIAS, &md, ptr[pl.b]), "memory");
        }
        for (int j = 0; j < pl.n_fused; j++) {
            const kd_post *q = &pl.post[j];
            if (q->type == KP_POST_BINARY) {
                md_layout(&md, pl.nd, q->dims, operand_cl(&pl, j, pl.cl, false));
                DNNL_TRY(add_arg(k, main, DNNL_ARG_ATTR_MULTIPLE_POST_OP(j) | DNNL_ARG_SRC_1, &md,
                                 ptr[q->operand]), "memory");
            }
        }
        break;
    case KP_BINARY:
        md_plain(&md, pl.wnd, pl.wei);
        DNNL_TRY(add_arg(k, main, DNNL_ARG_SRC_1, &md, ptr[pl.w]), "memory");
        break;
    case KP_LAYERNORM: {
        dnnl_dims_t cdim = { pl.src[1] };
        md_plain(&md, 1, cdim);
        DNNL_TRY(add_arg(k, main, DNNL_ARG_SCALE, &md, ptr[pl.w]), "memory");
        if (pl.b >= 0)
            DNNL_TRY(add_arg(k, main, DNNL_ARG_SHIFT, &md, ptr[pl.b]), "memory");
        break;
    }
    case KP_BATCHNORM: {
        dnnl_dims_t cdim = { pl.src[1] };
        md_plain(&md, 1, cdim);
        DNNL_TRY(add_arg(k, main, DNNL_ARG_SCALE, &md, ptr[pl.w]), "memory");
        DNNL_TRY(add_arg(k, main, DNNL_ARG_SHIFT, &md, ptr[pl.b]), "memory");
        DNNL_TRY(add_arg(k, main, DNNL_ARG_MEAN, &md, ptr[pl.extra[0]]), "memory");
        DNNL_TRY(add_arg(k, main, DNNL_ARG_VARIANCE, &md, ptr[pl.extra[1]]), "memory");
        break;
    }
    default:
        break;
    }
    DNNL_TRY(finish_step(k, main, pds[0]), "primitive");

    /* unfused post-ops, in place on the output as stored */
    for (int j = pl.n_fused; j < pl.n_post; j++) {
        const kd_post *q = &pl.post[j];
        r = &k->steps[k->nsteps++];
        if (q->type == KP_POST_UNARY) {
            step_arg(r, DNNL_ARG_SRC, ym);
            step_arg(r, DNNL_ARG_DST, ym);
        } else {
            step_arg(r, DNNL_ARG_SRC_0, ym);
            md_layout(&md, pl.nd, q->dims, operand_cl(&pl, j, ys_cl, op_cl[j]));
            DNNL_TRY(add_arg(k, r, DNNL_ARG_SRC_1, &md, ptr[q->operand]), "memory");
            step_arg(r, DNNL_ARG_DST, ym);
        }
        DNNL_TRY(finish_step(k, r, pds[4 + j]), "post-op step");
    }
done:
    for (int j = 0; j < 4 + KD_MAX_POST; j++)
        dnnl_primitive_desc_destroy(pds[j]);
    if (st) {
        kd_destroy(&k->base);
        return st;
    }
    if (copied)
        *copied += ncopied;
    *out = &k->base;
    return KILN_OK;
}

/* ---------------------------------------------------------------------------------------
 * Trace-time packing and unpacking
 * ------------------------------------------------------------------------------------- */

kiln_status kd_pack_weight(const kp_program *p, uint32_t i, int which, const void *plain,
                           void **packed, size_t *n_packed, void **layout, size_t *n_layout)
{
    kd_plan pl;
    *packed = *layout = NULL;
    *n_packed = *n_layout = 0;
    if (!plan_op(p, i, &pl) || which != 1 || !plain ||
        (pl.kind != KP_CONV && pl.kind != KP_CONV_TRANSPOSE && pl.kind != KP_MATMUL))
        return KILN_OK;
    kiln_status st = KILN_OK;
    dnnl_engine_t e = NULL;
    if ((st = get_engine(&e)))
        return st;
    dnnl_primitive_desc_t pd = NULL;
    void *buf = NULL;
    if (choose_pd(&pl, p, e, &pd) != dnnl_success)
        return KILN_OK;   /* no implementation: keep it plain */
    const dnnl_memory_desc_t *want = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    dnnl_memory_desc_t have;
    md_strided(&have, pl.wnd, pl.wei, pl.wplain);
    if (!want || want->format_kind != dnnl_blocked || want->data_type != dnnl_f32 ||
        dnnl_memory_desc_equal(&have, want) || want->extra.flags != 0)
        goto done;   /* plain is what it wants (or a layout we do not store) */
    size_t n = dnnl_memory_desc_get_size(want);
    buf = kiln__aligned_alloc(KP_ALIGN, n ? n : 1);
    if (!buf) {
        st = kiln__fail(KILN_ERR_NOMEM, "op %u: out of memory packing weights", i);
        goto done;
    }
    memset(buf, 0, n);
    DNNL_TRY(reorder(&have, plain, want, buf), "weight reorder");
    if ((st = layout_write(want, pl.wplain, layout, n_layout)))
        goto done;
    *packed = buf;
    *n_packed = n;
    buf = NULL;
done:
    kiln__free(buf);
    dnnl_primitive_desc_destroy(pd);
    return st;
}

kiln_status kd_unpack(const kp_value *v, const void *layout, size_t n_layout, const void *packed,
                      void *dst)
{
    dnnl_memory_desc_t have, plain_md;
    dnnl_dims_t plain;
    const char *why;
    if (!v || !packed || !dst)
        return kiln__fail(KILN_ERR_ARG, "kd_unpack: bad argument");
    if (!layout_read(layout, n_layout, v, &have, plain, &why))
        return kiln__fail(KILN_ERR_FORMAT, "packed layout: %s", why);
    md_strided(&plain_md, have.ndims, have.dims, plain);
    dnnl_engine_t e = NULL;
    kiln_status st = get_engine(&e);
    if (st)
        return st;
    dnnl_status_t s = reorder(&have, packed, &plain_md, dst);
    if (s != dnnl_success)
        return kiln__fail(s == dnnl_out_of_memory ? KILN_ERR_NOMEM : KILN_ERR_INTERNAL,
                          "oneDNN: unpacking a weight: %s", dnnl_status2str(s));
    return KILN_OK;
}
