/*
 * program.h — the compiled program: what trace produces, the artifact stores and the
 * runtime places and runs. A flat list of ops over a table of values (tensors), with all
 * shapes static, constants folded, ops fused, activations given offsets in one arena and
 * weights gathered into one weight section.
 *
 * Everything variable-length lives in program-wide pools (io, ia, fa, blob, strings) that
 * ops and values index into, so the whole program is a handful of flat arrays: the
 * artifact writes them as they are and the reader checks every index against its pool.
 *
 * Op attribute layouts (ia = int64 attributes, fa = float attributes) are documented per
 * kind below; every axis is already normalised to 0..ndim-1 by the compiler and every
 * output shape is in the output value. Inputs marked [opt] may be -1 (absent).
 */
#ifndef KILN_PROGRAM_H
#define KILN_PROGRAM_H

#include "base/base.h"

typedef enum kp_op_kind {
    /* in: X, W, B[opt], then one operand per SUM/BINARY post-op.  out: Y.
     * X is N x C x spatial..., W is O x C/group x k... (plain, or packed: see kp_value.layout).
     * ia: group, nsp, strides[nsp], dilations[nsp] (ONNX meaning: 1 = dense),
     *     pads_begin[nsp], pads_end[nsp], then the post-op list (see KP_POST_*). */
    KP_CONV = 1,
    /* in: X, W (C x O/group x k...), B[opt], post operands. out: Y.
     * ia: group, nsp, strides[nsp], dilations[nsp], pads_begin[nsp], pads_end[nsp],
     *     output_padding[nsp], then the post-op list. */
    KP_CONV_TRANSPOSE,
    /* numpy matmul with broadcast batch dims. in: A, B, bias[opt] (1-D of N, or
     * broadcastable to Y), post operands. out: Y. ia: the post-op list. */
    KP_MATMUL,
    /* sub: KP_POOL_MAX / KP_POOL_AVG. in: X (N x C x spatial). out: Y, [opt, MAX only]
     * Indices (i64, ONNX MaxPool's flattened index).
     * ia: nsp, kernel[nsp], strides[nsp], dilations[nsp], pads_begin[nsp], pads_end[nsp],
     *     count_include_pad, ceil_mode.  Output spatial extent is Y's shape; pads_* are the
     *     ONNX pads (windows may run past pads_end when ceil_mode = 1; such positions never
     *     count, not even with count_include_pad). */
    KP_POOL,
    /* sub: KP_POOL_MAX / KP_POOL_AVG over all spatial dims. in: X. out: Y (N x C x 1...). */
    KP_GLOBAL_POOL,
    /* sub: kp_unary. in: X. out: Y (same shape; dtype as X except KP_U_NOT on bool, and
     * KP_U_ISNAN/ISINF -> bool). fa: alpha, beta (meaning per algorithm). */
    KP_UNARY,
    /* sub: kp_binary. in: A, B (numpy broadcasting to Y's shape). out: Y.
     * Comparisons and logic ops produce bool. ia: fmod (KP_B_MOD only: 1 = C fmod). */
    KP_BINARY,
    /* in: Cond (bool), X, Y (broadcast). out: Z. */
    KP_WHERE,
    /* sub: 0 softmax, 1 log-softmax. in: X. out: Y. ia: axis (softmax over that one axis). */
    KP_SOFTMAX,
    /* in: X, Scale, B[opt]. out: Y, Mean[opt], InvStdDev[opt]. Normalises over dims
     * axis..ndim-1. ia: axis. fa: epsilon. */
    KP_LAYERNORM,
    /* inference BatchNormalization. in: X, scale, B, mean, var (each of C). out: Y.
     * fa: epsilon. */
    KP_BATCHNORM,
    /* in: X (N x C x ...), scale, B. out: Y. Normalises each (n, group) over its channels
     * and spatial dims. ia: num_groups (C for InstanceNormalization)[, activation].
     * fa: epsilon. scale and B have C elements. activation (optional, absent in older
     * artifacts: none): a kp_unary applied to Y, KP_U_IDENTITY or KP_U_SILU (fused). */
    KP_GROUPNORM,
    /* in: data, indices (i32 or i64, negative counts from the end). out: Y. ia: axis. */
    KP_GATHER,
    /* in: X. out: Y. ia: perm[ndim]. */
    KP_TRANSPOSE,
    /* in: X. out: Y. ia: starts[ndim], steps[ndim]: Y[i...] = X[starts[d] + i_d*steps[d]...]
     * (already clamped by the compiler; steps may be negative). */
    KP_SLICE,
    /* in: X0..Xn-1. out: Y. ia: axis. */
    KP_CONCAT,
    /* in: X. out: Y0..Yn-1 (their extents along axis give the split). ia: axis. */
    KP_SPLIT,
    /* in: X. out: Y with the same number of bytes (a reshape that could not be an alias). */
    KP_COPY,
    /* in: X. out: Y (dtype of Y; ONNX Cast semantics: float->int truncates, ->bool is !=0). */
    KP_CAST,
    /* in: X. out: Y: X broadcast (numpy rules) to Y's shape (Expand, Tile is KP_TILE). */
    KP_EXPAND,
    /* in: X. out: Y: X repeated Y.shape[d] / X.shape[d] times along each d. */
    KP_TILE,
    /* sub: kp_pad_mode. in: X. out: Y. ia: pads_begin[ndim], pads_end[ndim] (negative crops).
     * fa: constant value. */
    KP_PAD,
    /* sub: kp_reduce. in: X. out: Y (keepdims shape or not: same element order).
     * ia: n_axes, axes[n_axes] (sorted). */
    KP_REDUCE,
    /* sub: kp_resize_mode. in: X. out: Y.
     * ia: coordinate_transformation_mode (kp_resize_coord), nearest_mode (kp_resize_nearest),
     *     exclude_outside. fa: scales[ndim] (Y/X when sizes were given), cubic_coeff_a,
     *     extrapolation_value. */
    KP_RESIZE,
    /* sub: 0 ArgMax, 1 ArgMin. in: X. out: Y (i64). ia: axis, keepdims, select_last_index. */
    KP_ARGREDUCE,
    /* in: X. out: Y. ia: axis, exclusive, reverse. */
    KP_CUMSUM,
    /* sub: 0 DepthToSpace DCR, 1 DepthToSpace CRD, 2 SpaceToDepth. in: X. out: Y.
     * ia: blocksize. */
    KP_DEPTH_SPACE,
    /* sub: 0 the k largest, 1 the k smallest. in: X. out: Values (X's dtype), Indices (i64),
     * both X's shape with k along axis, best first (ties: lower index first; NaN counts as
     * larger than every number). ia: axis. */
    KP_TOPK,
    /* sub: 0 ScatterElements, 1 ScatterND, with indices given at run time (reduction none:
     * a repeated index keeps the last update). in: Data, Indices (i32 or i64, negative
     * counts from the end), Updates. out: Y (Data's shape and dtype). ia: axis (ScatterND
     * ignores it). An index out of range fails the run (KILN_ERR_ARG). */
    KP_SCATTER,
    KP_OP_KIND_COUNT
} kp_op_kind;

/* Post-ops of KP_CONV/KP_CONV_TRANSPOSE/KP_MATMUL, applied in order to the op's result.
 * Encoded at the end of ia as: n_post, then per post-op {type, alg}; and at the end of fa
 * as per post-op {alpha, beta}. SUM and BINARY post-ops take the op's next operand input:
 *   KP_POST_UNARY:  y = unary_alg(y; alpha, beta)            (alg: kp_unary)
 *   KP_POST_SUM:    y = y + operand (same shape as Y)        (alg: 0)
 *   KP_POST_BINARY: y = binary_alg(y, operand) broadcast     (alg: kp_binary) */
enum { KP_POST_UNARY = 1, KP_POST_SUM = 2, KP_POST_BINARY = 3 };

enum { KP_POOL_MAX = 0, KP_POOL_AVG = 1 };

typedef enum kp_unary {
    KP_U_IDENTITY = 0,
    KP_U_RELU,          /* */
    KP_U_LEAKY_RELU,    /* alpha */
    KP_U_CLIP,          /* alpha = min, beta = max (use -inf/+inf when absent) */
    KP_U_SIGMOID,
    KP_U_HARD_SIGMOID,  /* alpha, beta: max(0, min(1, alpha*x + beta)) */
    KP_U_HARD_SWISH,    /* x * max(0, min(1, x/6 + 0.5)) */
    KP_U_TANH,
    KP_U_ERF,
    KP_U_GELU,          /* exact (erf) GELU */
    KP_U_GELU_TANH,     /* tanh approximation */
    KP_U_EXP,
    KP_U_LOG,
    KP_U_SQRT,
    KP_U_ABS,
    KP_U_NEG,
    KP_U_RECIPROCAL,
    KP_U_ELU,           /* alpha */
    KP_U_SELU,          /* alpha, beta = gamma */
    KP_U_SOFTPLUS,
    KP_U_SOFTSIGN,
    KP_U_SILU,          /* x * sigmoid(x) */
    KP_U_MISH,
    KP_U_FLOOR,
    KP_U_CEIL,
    KP_U_ROUND,         /* half to even */
    KP_U_SIGN,
    KP_U_NOT,           /* bool */
    KP_U_SIN,
    KP_U_COS,
    KP_U_TAN,
    KP_U_ASIN, KP_U_ACOS, KP_U_ATAN, KP_U_SINH, KP_U_COSH, KP_U_ASINH, KP_U_ACOSH, KP_U_ATANH,
    KP_U_THRESHOLDED_RELU, /* alpha */
    KP_U_ISNAN, KP_U_ISINF, /* ISINF: alpha = detect_negative, beta = detect_positive */
    KP_U_POW_SCALAR,    /* x ^ alpha */
    KP_U_LINEAR,        /* alpha * x + beta */
    KP_UNARY_COUNT
} kp_unary;

typedef enum kp_binary {
    KP_B_ADD = 0, KP_B_SUB, KP_B_MUL, KP_B_DIV, KP_B_POW, KP_B_MAX, KP_B_MIN, KP_B_MOD,
    KP_B_EQUAL, KP_B_LESS, KP_B_LESS_EQUAL, KP_B_GREATER, KP_B_GREATER_EQUAL,
    KP_B_AND, KP_B_OR, KP_B_XOR, KP_B_PRELU, /* PRelu: A<0 ? A*B : A */
    KP_B_BITSHIFT_LEFT, KP_B_BITSHIFT_RIGHT,
    KP_BINARY_COUNT
} kp_binary;

typedef enum kp_reduce {
    KP_R_SUM = 0, KP_R_MEAN, KP_R_MAX, KP_R_MIN, KP_R_PROD, KP_R_L1, KP_R_L2,
    KP_R_LOG_SUM, KP_R_LOG_SUM_EXP, KP_R_SUM_SQUARE, KP_REDUCE_COUNT
} kp_reduce;

typedef enum kp_pad_mode { KP_PAD_CONSTANT = 0, KP_PAD_REFLECT, KP_PAD_EDGE, KP_PAD_WRAP } kp_pad_mode;

typedef enum kp_resize_mode { KP_RESIZE_NEAREST = 0, KP_RESIZE_LINEAR, KP_RESIZE_CUBIC } kp_resize_mode;
typedef enum kp_resize_coord {
    KP_RC_HALF_PIXEL = 0, KP_RC_PYTORCH_HALF_PIXEL, KP_RC_ALIGN_CORNERS, KP_RC_ASYMMETRIC,
    KP_RC_TF_CROP_AND_RESIZE, KP_RC_HALF_PIXEL_SYMMETRIC
} kp_resize_coord;
typedef enum kp_resize_nearest {
    KP_RN_ROUND_PREFER_FLOOR = 0, KP_RN_ROUND_PREFER_CEIL, KP_RN_FLOOR, KP_RN_CEIL
} kp_resize_nearest;

typedef enum kp_value_kind {
    KP_VAL_ACT = 0,    /* activation: lives in the replica's arena at `offset` */
    KP_VAL_INPUT = 1,  /* graph input: copied into the arena at `offset` by forward */
    KP_VAL_CONST = 2   /* weight/constant: in the weight section at `offset` */
} kp_value_kind;

/* One tensor of the program. Graph outputs are ordinary values listed in kp_program.outputs
 * (forward copies them out). */
typedef struct kp_value {
    uint32_t name;                  /* offset in strings */
    uint8_t  dtype;                 /* kiln_dtype */
    uint8_t  ndim;                  /* 0..KILN_MAX_DIMS */
    uint8_t  kind;                  /* kp_value_kind */
    uint8_t  pad0;
    int64_t  shape[KILN_MAX_DIMS];  /* logical shape, C order (unused dims 0) */
    uint64_t offset;                /* arena offset (ACT/INPUT) or weight-section offset (CONST);
                                       multiple of KP_ALIGN */
    uint64_t nbytes;                /* bytes of storage (packed layouts may be larger than
                                       numel * dtype size) */
    uint32_t layout;                /* offset in blob of a packed-layout descriptor, */
    uint32_t n_layout;              /* and its size; 0: dense C order. Only the kernels module
                                       reads or writes these bytes. */
    uint64_t hash;                  /* CONST: XXH3-64 of its nbytes of data (set by kp_seal) */
} kp_value;

typedef struct kp_op {
    uint16_t kind;                  /* kp_op_kind */
    uint16_t sub;                   /* kind-specific algorithm (see above) */
    uint16_t n_in, n_out;
    uint32_t io;                    /* io[io .. io+n_in) inputs, then n_out outputs (-1: absent) */
    uint32_t ia, n_ia;              /* ia[ia .. ia+n_ia) */
    uint32_t fa, n_fa;              /* fa[fa .. fa+n_fa) */
    uint32_t name;                  /* offset in strings: the ONNX node it came from */
} kp_op;

#define KP_ALIGN 64u                /* alignment of every arena and weight offset */

enum { KP_FLAG_LAZY = 1u, KP_FLAG_ASYNC = 2u };

typedef struct kp_program {
    uint32_t  flags;                /* KP_FLAG_* */
    uint32_t  n_values, n_ops, n_io, n_ia, n_fa, n_blob, n_strings, n_inputs, n_outputs;
    kp_value *values;
    kp_op    *ops;                  /* in execution order */
    int32_t  *io;
    int64_t  *ia;
    float    *fa;
    uint8_t  *blob;
    char     *strings;              /* NUL-terminated names, back to back; offset 0 is "" */
    uint32_t *inputs;               /* value ids of graph inputs, graph order */
    uint32_t *outputs;              /* value ids of graph outputs, graph order */
    uint64_t  arena_bytes;          /* activation arena per replica */
    uint64_t  weight_bytes;         /* size of the weight section */
    const uint8_t *weights;         /* weight section (KP_ALIGN-aligned): owned when
                                       owns_weights, else borrowed (e.g. a file mapping) */
    bool      owns_weights;         /* weights came from kiln__aligned_alloc */
} kp_program;

/* Accessors (no checks: the program was validated when it was built or read). */
static inline const char *kp_str(const kp_program *p, uint32_t off) { return p->strings + off; }
static inline const int32_t *kp_op_in(const kp_program *p, const kp_op *op) { return p->io + op->io; }
static inline const int32_t *kp_op_out(const kp_program *p, const kp_op *op) { return p->io + op->io + op->n_in; }
static inline const int64_t *kp_op_ia(const kp_program *p, const kp_op *op) { return p->ia + op->ia; }
static inline const float *kp_op_fa(const kp_program *p, const kp_op *op) { return p->fa + op->fa; }
static inline int64_t kp_value_numel(const kp_value *v) { return kiln__numel(v->ndim, v->shape); }

/* Frees all arrays, the weights when owned, and p itself (NULL: no-op). */
KILN_INTERNAL void kp_program_free(kp_program *p);
/* Checks every index of a program against its pools and every value's shape, size and
 * offset against the arena and weight section; KILN_ERR_FORMAT naming what is wrong.
 * Used by the artifact reader on untrusted input. */
KILN_INTERNAL kiln_status kp_program_validate(const kp_program *p, const char *what);
/* Name of an op kind ("Conv", ...) for messages and inspect. */
KILN_INTERNAL const char *kp_op_kind_name(int kind);

#endif
