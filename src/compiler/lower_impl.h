/*
 * lower_impl.h — private to the op lowerings (lower_*.c): value snapshots, the helpers they
 * share for reading inputs and attributes, normalising axes and emitting ops into new
 * values, and the lowering functions the table in lower_ops.c points at.
 */
#ifndef KILN_LOWER_IMPL_H
#define KILN_LOWER_IMPL_H

#include "compiler/lower.h"

#define KC_TRY(e) do { kiln_status kc_s_ = (e); if (kc_s_ != KILN_OK) return kc_s_; } while (0)

/* A snapshot of a value: id, dtype and shape. Lowerings work on snapshots because the
 * kp_value pointers kc_value returns do not survive making new values. */
typedef struct kc_val {
    int        id;
    kiln_dtype dt;
    int        ndim;
    int64_t    shape[KILN_MAX_DIMS];
} kc_val;

KILN_INTERNAL void    kc_snap(const kc_ctx *c, int v, kc_val *out);
static inline int64_t kc_numel(const kc_val *t) { return kiln__numel(t->ndim, t->shape); }
/* Required input i (KILN_ERR_FORMAT when absent). */
KILN_INTERNAL kiln_status kc_arg(const kc_ctx *c, const kg_node *n, int i, kc_val *out);
/* Optional input i: false when absent. */
KILN_INTERNAL bool kc_opt_arg(const kc_ctx *c, const kg_node *n, int i, kc_val *out);
/* KILN_ERR_SHAPE unless lo <= rank of t <= hi. */
KILN_INTERNAL kiln_status kc_check_rank(const kc_ctx *c, const kg_node *n, const kc_val *t,
                                        const char *what, int lo, int hi);
/* KILN_ERR_SHAPE unless a and b have the same dtype. */
KILN_INTERNAL kiln_status kc_same_dtype(const kc_ctx *c, const kg_node *n, const kc_val *a,
                                        const kc_val *b);
KILN_INTERNAL bool kc_is_float(kiln_dtype t);
/* Whether v, passed to a kernel as a float attribute, keeps its value for dtype t
 * (integer dtypes need v exact in float; infinities are fine). */
KILN_INTERNAL bool kc_float_exact(kiln_dtype t, double v);
KILN_INTERNAL bool kc_same_shape(int na, const int64_t *a, int nb, const int64_t *b);

/* ---- attributes ---- */
/* INT or FLOAT attribute as a double. */
KILN_INTERNAL double kc_attr_num(const kg_node *n, const char *name, double dflt);
/* Integers from attribute `attr` if the node has it, else from constant input `input`
 * (-1: none). *present is false when neither is there. At most max values. */
KILN_INTERNAL kiln_status kc_ints_arg(const kc_ctx *c, const kg_node *n, const char *attr,
                                      int input, int64_t *out, int max, int *count,
                                      bool *present);
/* ONNX TensorProto.DataType -> kiln dtype; false when kiln has no such dtype. */
KILN_INTERNAL bool kc_onnx_dtype(int64_t onnx, kiln_dtype *out);

/* ---- axes ---- */
/* a in [-rank, rank) -> 0..rank-1; KILN_ERR_SHAPE otherwise. */
KILN_INTERNAL kiln_status kc_axis(const kc_ctx *c, const kg_node *n, int64_t a, int rank,
                                  int *out);
/* Normalises, sorts ascending and checks for duplicates. */
KILN_INTERNAL kiln_status kc_axes(const kc_ctx *c, const kg_node *n, const int64_t *a, int cnt,
                                  int rank, int *out);

/* ---- making values and emitting ops ---- */
/* Emits an op with one new output value of dtype dt and the given shape into *out. An output
 * with no elements becomes an empty constant (nothing to compute). */
KILN_INTERNAL kiln_status kc_emit1(kc_ctx *c, const kg_node *n, kp_op_kind kind, int sub,
                                   const int *in, int n_in, kiln_dtype dt, int ndim,
                                   const int64_t *shape, const int64_t *ia, int n_ia,
                                   const float *fa, int n_fa, kc_val *out);
KILN_INTERNAL kiln_status kc_unary(kc_ctx *c, const kg_node *n, int alg, const kc_val *x,
                                   float alpha, float beta, kc_val *out);
/* KP_BINARY with numpy broadcasting; comparisons and logic give bool. */
KILN_INTERNAL kiln_status kc_binary(kc_ctx *c, const kg_node *n, int alg, const kc_val *a,
                                    const kc_val *b, kc_val *out);
KILN_INTERNAL kiln_status kc_reshape(kc_ctx *c, const kg_node *n, const kc_val *x, int ndim,
                                     const int64_t *shape, kc_val *out);
KILN_INTERNAL kiln_status kc_const(kc_ctx *c, kiln_dtype dt, int ndim, const int64_t *shape,
                                   const void *data, kc_val *out);
/* Node output i is t (no-op when the node does not have output i). */
KILN_INTERNAL kiln_status kc_out(kc_ctx *c, const kg_node *n, int i, const kc_val *t);
/* Emits into a new value and makes it node output 0. */
KILN_INTERNAL kiln_status kc_emit_out(kc_ctx *c, const kg_node *n, kp_op_kind kind, int sub,
                                      const int *in, int n_in, kiln_dtype dt, int ndim,
                                      const int64_t *shape, const int64_t *ia, int n_ia,
                                      const float *fa, int n_fa);

/* ---- the lowerings ---- */
#define KC_LOWER(name) KILN_INTERNAL kiln_status name(kc_ctx *c, const kg_node *n)
/* lower_elementwise.c */
KC_LOWER(kc_lower_unary);      /* every op of its unary table */
KC_LOWER(kc_lower_binary);     /* every op of its binary table */
KC_LOWER(kc_lower_variadic);   /* Max, Min, Sum, Mean */
KC_LOWER(kc_lower_clip);
KC_LOWER(kc_lower_gelu);
KC_LOWER(kc_lower_celu);
KC_LOWER(kc_lower_where);
KC_LOWER(kc_lower_cast);       /* Cast, CastLike */
/* lower_nn.c */
KC_LOWER(kc_lower_conv);
KC_LOWER(kc_lower_conv_transpose);
KC_LOWER(kc_lower_gemm);
KC_LOWER(kc_lower_matmul);
KC_LOWER(kc_lower_pool);       /* MaxPool, AveragePool */
KC_LOWER(kc_lower_global_pool);
KC_LOWER(kc_lower_batchnorm);
KC_LOWER(kc_lower_layernorm);
KC_LOWER(kc_lower_instancenorm);
KC_LOWER(kc_lower_groupnorm);
KC_LOWER(kc_lower_softmax);    /* Softmax, LogSoftmax */
/* lower_shape.c */
KC_LOWER(kc_lower_identity);   /* Identity, Dropout */
KC_LOWER(kc_lower_reshape);
KC_LOWER(kc_lower_flatten);
KC_LOWER(kc_lower_squeeze);
KC_LOWER(kc_lower_unsqueeze);
KC_LOWER(kc_lower_shape);
KC_LOWER(kc_lower_size);
KC_LOWER(kc_lower_constant);
KC_LOWER(kc_lower_constant_of_shape);
KC_LOWER(kc_lower_range);
KC_LOWER(kc_lower_eye_like);
KC_LOWER(kc_lower_nonzero);    /* of a constant only */
/* lower_tensor.c */
KC_LOWER(kc_lower_gather);
KC_LOWER(kc_lower_transpose);
KC_LOWER(kc_lower_slice);
KC_LOWER(kc_lower_concat);
KC_LOWER(kc_lower_split);
KC_LOWER(kc_lower_expand);
KC_LOWER(kc_lower_tile);
KC_LOWER(kc_lower_pad);
KC_LOWER(kc_lower_reduce);     /* every ReduceX */
KC_LOWER(kc_lower_argreduce);  /* ArgMax, ArgMin */
KC_LOWER(kc_lower_topk);
KC_LOWER(kc_lower_cumsum);
KC_LOWER(kc_lower_depth_space);
KC_LOWER(kc_lower_resize);     /* Resize, Upsample */
KC_LOWER(kc_lower_trilu);
KC_LOWER(kc_lower_onehot);
KC_LOWER(kc_lower_einsum);
KC_LOWER(kc_lower_scatter_nd);
KC_LOWER(kc_lower_scatter_elements); /* Scatter, ScatterElements */
KC_LOWER(kc_lower_gather_elements);
KC_LOWER(kc_lower_gather_nd);
/* lower_rnn.c */
KC_LOWER(kc_lower_rnn);        /* RNN, GRU, LSTM */

#endif
