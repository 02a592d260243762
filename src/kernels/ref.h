/*
 * ref.h — private to the plain C reference kernels (ref*.c): the per-op context every
 * check/create function receives, the shared iteration engines (strided copy, per-dim
 * index maps, numpy broadcasting), the f32 element-wise helpers the fused post-ops reuse,
 * and the per-kind check/create entry points that ref.c dispatches to.
 *
 * Contract between kr_check and the create functions: kr_create runs the kind's check
 * first, so a create function may rely on everything its check verified (dtypes, ranks,
 * attribute counts and values, shapes that fit together) and never reads out of bounds.
 */
#ifndef KILN_REF_H
#define KILN_REF_H

#include "kernels/kernels_impl.h"

#include <string.h>

/* One op as the reference kernels see it. */
typedef struct kr_op {
    const kp_program *p;
    const kp_op *op;
    uint32_t index;
    const int32_t *in, *out;    /* value ids, -1 absent */
    const int64_t *ia;
    const float *fa;
} kr_op;

/* KILN_ERR_UNSUPPORTED "Kind 'node': <message>". */
KILN_INTERNAL kiln_status kr_bad(const kr_op *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The same with another status (run-time data errors use KILN_ERR_ARG). */
KILN_INTERNAL kiln_status kr_fail(const kp_program *p, uint32_t op, kiln_status s,
                                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Input/output i as a value, NULL when absent or past the op's count. */
static inline const kp_value *kr_in(const kr_op *o, int i)
{
    return (i < o->op->n_in && o->in[i] >= 0) ? &o->p->values[o->in[i]] : NULL;
}
static inline const kp_value *kr_out(const kr_op *o, int i)
{
    return (i < o->op->n_out && o->out[i] >= 0) ? &o->p->values[o->out[i]] : NULL;
}

/* Allocates a zeroed kernel of `size` bytes (first member kk_kernel) with its header set.
 * destroy defaults to freeing the block. NULL (and KILN_ERR_NOMEM set) on failure. */
KILN_INTERNAL void *kr_kernel_new(const kr_op *o, size_t size, kiln_status (*run)(kk_kernel *));
KILN_INTERNAL void kr_kernel_free_plain(kk_kernel *k);

static inline bool kr_is_float(int dt) { return dt == KILN_F32 || dt == KILN_F64; }
static inline bool kr_is_int(int dt)
{
    return dt == KILN_I8 || dt == KILN_U8 || dt == KILN_I32 || dt == KILN_I64;
}
static inline bool kr_dtype_valid(int dt) { return dt >= KILN_F32 && dt <= KILN_BOOL; }
static inline size_t kr_esize(int dt) { return kiln_dtype_size((kiln_dtype)dt); }
static inline const char *kr_dtname(int dt) { return kiln_dtype_name((kiln_dtype)dt); }
static inline int64_t kr_numel(const kp_value *v) { return kp_value_numel(v); }
static inline bool kr_same_shape(const kp_value *a, const kp_value *b)
{
    if (a->ndim != b->ndim)
        return false;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d])
            return false;
    return true;
}
/* Product of shape[from..to). */
static inline int64_t kr_prod(const int64_t *shape, int from, int to)
{
    int64_t n = 1;
    for (int d = from; d < to; d++)
        n *= shape[d];
    return n;
}
/* Dense C-order element strides of a shape. */
static inline void kr_strides(int nd, const int64_t *shape, int64_t *st)
{
    int64_t s = 1;
    for (int d = nd - 1; d >= 0; d--) {
        st[d] = s;
        s *= shape[d];
    }
}

/* Sums for statistics: sum(x) and sum((x - m)^2) in double, with independent partial sums
 * so the loop is not bound by the latency of one long addition chain. */
#define KR_SUM_FNS(T, SUF)                                                                    \
    static inline double kr_sum_##SUF(const T *x, int64_t n)                                  \
    {                                                                                         \
        double s[8] = {0};                                                                    \
        int64_t j = 0;                                                                        \
        for (; j + 8 <= n; j += 8)                                                            \
            for (int l = 0; l < 8; l++)                                                       \
                s[l] += (double)x[j + l];                                                     \
        for (; j < n; j++)                                                                    \
            s[0] += (double)x[j];                                                             \
        return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));             \
    }                                                                                         \
    static inline double kr_sumsq_dev_##SUF(const T *x, int64_t n, double m)                  \
    {                                                                                         \
        double s[8] = {0};                                                                    \
        int64_t j = 0;                                                                        \
        for (; j + 8 <= n; j += 8)                                                            \
            for (int l = 0; l < 8; l++) {                                                     \
                double d = (double)x[j + l] - m;                                              \
                s[l] += d * d;                                                                \
            }                                                                                 \
        for (; j < n; j++) {                                                                  \
            double d = (double)x[j] - m;                                                      \
            s[0] += d * d;                                                                    \
        }                                                                                     \
        return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));             \
    }
KR_SUM_FNS(float, f32)
KR_SUM_FNS(double, f64)

/* Every value an op touches must have a known dtype, a rank of at most KILN_MAX_DIMS and
 * no extent above KR_MAX_EXTENT; spatial attributes (kernel, stride, dilation, pads) stay
 * at or below KR_MAX_ATTR. Within these, index arithmetic cannot overflow int64. */
#define KR_MAX_EXTENT (INT64_C(1) << 40)
#define KR_MAX_ATTR   (INT64_C(1) << 20)
KILN_INTERNAL kiln_status kr_check_values(const kr_op *o);

/* f16 / bf16 <-> double, round to nearest even; NaN and infinities kept. */
KILN_INTERNAL double   kr_f16_to_f64(uint16_t h);
KILN_INTERNAL double   kr_bf16_to_f64(uint16_t h);
KILN_INTERNAL uint16_t kr_f64_to_f16(double x);
KILN_INTERNAL uint16_t kr_f64_to_bf16(double x);
/* Element i of a buffer of dtype dt as a double / stored from a double (ints truncate,
 * bool is x != 0). For the few places where per-element dtype dispatch is fine. */
KILN_INTERNAL double kr_load_f64(const void *p, int dt, int64_t i);
KILN_INTERNAL void   kr_store_f64(void *p, int dt, int64_t i, double x);

/* ---- strided copy: dst[sum i_d*ds_d] = src[sum i_d*ss_d] over a box of up to 16 dims ---- */
#define KR_COPY_MAXD 16
typedef struct kr_copy {
    int nd;                         /* 0: nothing to copy */
    size_t es;                      /* element size */
    int64_t n[KR_COPY_MAXD];
    int64_t ss[KR_COPY_MAXD], ds[KR_COPY_MAXD];   /* element strides, may be negative */
} kr_copy;
/* Drops unit dims and merges dims that are contiguous in both src and dst. */
KILN_INTERNAL void kr_copy_init(kr_copy *c, int nd, const int64_t *n, const int64_t *ss,
                                const int64_t *ds, size_t es);
KILN_INTERNAL void kr_copy_run(const kr_copy *c, const void *src, void *dst);

/* ---- index maps: Y[i...] = X[sum map_d[i_d]] or `fill` where any map_d[i_d] < 0 ---- */
typedef struct kr_map {
    int nd;                         /* >= 1 */
    size_t es;
    int64_t n[KILN_MAX_DIMS];
    int64_t *off[KILN_MAX_DIMS];    /* off[d][0..n[d]): element offsets into X, or -1 */
    int64_t *buf;                   /* owns every off[d] */
    bool inner_contig;              /* off[nd-1][j] == off[nd-1][0] + j, none < 0 */
    _Alignas(8) uint8_t fill[8];   /* one element of the fill value */
} kr_map;
/* Allocates the maps for an output of shape n (nd 0 is treated as one dim of 1). The
 * caller fills off[d][*] and then calls kr_map_finish. */
KILN_INTERNAL kiln_status kr_map_alloc(kr_map *m, int nd, const int64_t *n, size_t es);
KILN_INTERNAL void kr_map_finish(kr_map *m);
KILN_INTERNAL void kr_map_run(const kr_map *m, const void *src, void *dst);
KILN_INTERNAL void kr_map_free(kr_map *m);

/* ---- numpy broadcasting of up to 3 inputs to an output shape ---- */
typedef struct kr_bcast {
    int nd;                         /* merged dims, >= 1 */
    int nin;
    int64_t n[KILN_MAX_DIMS];
    int64_t st[3][KILN_MAX_DIMS];   /* per input element strides, 0 where broadcast */
    int64_t rows, inner;            /* rows = product of n[0..nd-1), inner = n[nd-1] */
} kr_bcast;
/* Whether each input broadcasts to (out_nd, out_shape) by numpy rules. */
KILN_INTERNAL bool kr_bcast_ok(int nin, const kp_value *const *in, int out_nd,
                               const int64_t *out_shape);
/* Requires kr_bcast_ok. */
KILN_INTERNAL void kr_bcast_init(kr_bcast *b, int nin, const kp_value *const *in, int out_nd,
                                 const int64_t *out_shape);
/* Advances the row odometer idx (over dims 0..nd-2) and each input's element offset. */
static inline void kr_bcast_next(const kr_bcast *b, int64_t *idx, int64_t *off)
{
    for (int d = b->nd - 2; d >= 0; d--) {
        if (++idx[d] < b->n[d]) {
            for (int k = 0; k < b->nin; k++)
                off[k] += b->st[k][d];
            return;
        }
        idx[d] = 0;
        for (int k = 0; k < b->nin; k++)
            off[k] -= b->st[k][d] * (b->n[d] - 1);
    }
}

/* ---- element-wise helpers shared with the fused post-ops (f32) ---- */
/* Whether unary `alg` is valid for dtype dt (and what it outputs). */
KILN_INTERNAL bool kr_unary_dtype_ok(int alg, int dt, int ydt);
KILN_INTERNAL void kr_unary_f32(int alg, float alpha, float beta, const float *x, float *y,
                                int64_t n);
/* Row function of binary op `alg` on dtype dt (A and B), NULL if not supported.
 * fmod selects C fmod semantics for KP_B_MOD. sa/sb are 0 or 1 (broadcast or not). */
typedef void (*kr_bin_fn)(const void *a, int64_t sa, const void *b, int64_t sb, void *y,
                          int64_t n);
KILN_INTERNAL kr_bin_fn kr_binary_fn(int alg, int dt, int fmod);
/* Whether the binary algorithm makes bool from its inputs (comparison and logic ops). */
static inline bool kr_binary_is_logical(int alg) { return alg >= KP_B_EQUAL && alg <= KP_B_XOR; }

/* y = alg(y, operand) in place over Y's dense shape (the operand broadcasts). */
typedef struct kr_post_op {
    int type, alg;
    float alpha, beta;
    const float *operand;           /* SUM / BINARY operand, NULL for unary */
    kr_bin_fn fn;
    kr_bcast bc;
    float *snap;                    /* owned copy of an operand stored where Y is (the */
    const float *snap_src;          /* planner may put a residual in the output's slot) */
    size_t snap_bytes;
} kr_post_op;
typedef struct kr_post {
    int n;
    int64_t numel;                  /* of output 0 */
    kr_post_op *ops;                /* owned */
} kr_post;
/* Checks the post-op list that starts at ia[at] (n_post, then {type, alg} each; it must end
 * ia, and fa must be exactly its {alpha, beta} pairs) against output 0 (f32), with SUM and
 * BINARY operands at inputs first_operand, first_operand + 1, ...; the op must have exactly
 * first_operand + *n_operands inputs. */
KILN_INTERNAL kiln_status kr_post_check(const kr_op *o, int at, int first_operand,
                                        int *n_operands);
/* Requires kr_post_check. Operand addresses are taken from ptr now. */
KILN_INTERNAL kiln_status kr_post_init(kr_post *pp, const kr_op *o, int at, int first_operand,
                                       void *const *ptr);
/* Before the op computes Y: saves operands that share Y's storage. */
KILN_INTERNAL void kr_post_pre(const kr_post *pp);
/* Applies the list in place to y, which holds output 0 (dense). */
KILN_INTERNAL void kr_post_run(const kr_post *pp, float *y);
KILN_INTERNAL void kr_post_free(kr_post *pp);

/* ---- per-kind entry points (ref_*.c) ---- */
typedef kiln_status (*kr_check_fn)(const kr_op *o);
typedef kiln_status (*kr_create_fn)(const kr_op *o, void *const *ptr, kk_kernel **out);

#define KR_KIND(name)                                                                \
    KILN_INTERNAL kiln_status kr_check_##name(const kr_op *o);                       \
    KILN_INTERNAL kiln_status kr_create_##name(const kr_op *o, void *const *ptr, kk_kernel **out);
/* ref_nn.c */
KR_KIND(conv)
KR_KIND(conv_transpose)
KR_KIND(matmul)
KR_KIND(pool)
KR_KIND(global_pool)
/* ref_elementwise.c */
KR_KIND(unary)
KR_KIND(binary)
KR_KIND(where)
KR_KIND(cast)
/* ref_norm.c */
KR_KIND(softmax)
KR_KIND(layernorm)
KR_KIND(batchnorm)
KR_KIND(groupnorm)
/* ref_shape.c */
KR_KIND(gather)
KR_KIND(transpose)
KR_KIND(slice)
KR_KIND(concat)
KR_KIND(split)
KR_KIND(copy)
KR_KIND(expand)
KR_KIND(tile)
KR_KIND(pad)
KR_KIND(depth_space)
/* ref_reduce.c */
KR_KIND(reduce)
KR_KIND(argreduce)
KR_KIND(cumsum)
/* ref_resize.c */
KR_KIND(resize)
/* ref_topk.c */
KR_KIND(topk)
/* ref_scatter.c */
KR_KIND(scatter)
#undef KR_KIND

/* Channels-last support (ref_layout.c dispatches kr_cl_inputs / kr_create_cl to these):
 * whether op i (a checked KP_RESIZE) can run channels-last, and re-pointing kernels made
 * by kr_create_resize / kr_create_groupnorm (f32) at X / Y stored channels-last. */
KILN_INTERNAL bool kr_resize_takes_cl(const kp_program *p, uint32_t i);
KILN_INTERNAL kiln_status kr_resize_set_cl(kk_kernel *k, const kr_op *o, bool x_cl, bool y_cl);
KILN_INTERNAL void kr_groupnorm_set_cl(kk_kernel *k, bool x_cl, bool y_cl);

#endif
