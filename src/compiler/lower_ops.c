/*
 * lower_ops.c — the table of every ONNX op kiln lowers (kc_op_table), and the helpers the
 * lowerings share (lower_impl.h): value snapshots, input and attribute reading, axis
 * normalisation, and emitting ops into new values.
 */
#include "compiler/lower_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- values ---- */

void kc_snap(const kc_ctx *c, int v, kc_val *out)
{
    const kp_value *pv = kc_value(c, v);
    memset(out, 0, sizeof *out);
    out->id = v;
    out->dt = (kiln_dtype)pv->dtype;
    out->ndim = pv->ndim;
    memcpy(out->shape, pv->shape, sizeof out->shape);
}

kiln_status kc_arg(const kc_ctx *c, const kg_node *n, int i, kc_val *out)
{
    int v = kc_input(c, n, i);
    if (v < 0)
        return kc_fail(c, n, KILN_ERR_FORMAT, "required input %d is missing", i);
    kc_snap(c, v, out);
    return KILN_OK;
}

bool kc_opt_arg(const kc_ctx *c, const kg_node *n, int i, kc_val *out)
{
    int v = kc_input(c, n, i);
    if (v < 0)
        return false;
    kc_snap(c, v, out);
    return true;
}

kiln_status kc_check_rank(const kc_ctx *c, const kg_node *n, const kc_val *t, const char *what,
                          int lo, int hi)
{
    if (t->ndim < lo || t->ndim > hi) {
        if (lo == hi)
            return kc_fail(c, n, KILN_ERR_SHAPE, "%s must be %d-D, got %d-D", what, lo, t->ndim);
        return kc_fail(c, n, KILN_ERR_SHAPE, "%s must have rank %d..%d, got %d", what, lo, hi,
                       t->ndim);
    }
    return KILN_OK;
}

kiln_status kc_same_dtype(const kc_ctx *c, const kg_node *n, const kc_val *a, const kc_val *b)
{
    if (a->dt != b->dt)
        return kc_fail(c, n, KILN_ERR_SHAPE, "inputs have different dtypes (%s and %s)",
                       kiln_dtype_name(a->dt), kiln_dtype_name(b->dt));
    return KILN_OK;
}

bool kc_is_float(kiln_dtype t)
{
    return t == KILN_F32 || t == KILN_F16 || t == KILN_BF16 || t == KILN_F64;
}

bool kc_float_exact(kiln_dtype t, double v)
{
    return kc_is_float(t) || v != v || isinf(v) || (double)(float)v == v;
}

bool kc_same_shape(int na, const int64_t *a, int nb, const int64_t *b)
{
    if (na != nb)
        return false;
    for (int i = 0; i < na; i++)
        if (a[i] != b[i])
            return false;
    return true;
}

/* ---- attributes ---- */

double kc_attr_num(const kg_node *n, const char *name, double dflt)
{
    const kg_attr *a = kg_attr_find(n, name);
    if (!a)
        return dflt;
    if (a->type == KG_ATTR_INT)
        return (double)a->i;
    if (a->type == KG_ATTR_FLOAT)
        return a->f;
    return dflt;
}

kiln_status kc_ints_arg(const kc_ctx *c, const kg_node *n, const char *attr, int input,
                        int64_t *out, int max, int *count, bool *present)
{
    *count = 0;
    *present = false;
    const kg_attr *a = attr ? kg_attr_find(n, attr) : NULL;
    if (a) {
        if (a->type == KG_ATTR_INT) {
            out[0] = a->i;
            *count = 1;
        } else if (a->type == KG_ATTR_INTS) {
            if (a->n > (size_t)max)
                return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "attribute '%s' has %zu values (at most %d)",
                               attr, a->n, max);
            if (a->n)
                memcpy(out, a->ints, a->n * sizeof *out);
            *count = (int)a->n;
        } else {
            return kc_fail(c, n, KILN_ERR_FORMAT, "attribute '%s' is not a list of integers", attr);
        }
        *present = true;
        return KILN_OK;
    }
    int v = input >= 0 ? kc_input(c, n, input) : -1;
    if (v < 0)
        return KILN_OK;
    if (kp_value_numel(kc_value(c, v)) > max)
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "input %d has %lld values (at most %d)", input,
                       (long long)kp_value_numel(kc_value(c, v)), max);
    KC_TRY(kc_const_ints(c, n, v, out, max, count));
    *present = true;
    return KILN_OK;
}

bool kc_onnx_dtype(int64_t onnx, kiln_dtype *out)
{
    switch (onnx) {
    case 1:  *out = KILN_F32; return true;
    case 2:  *out = KILN_U8; return true;
    case 3:  *out = KILN_I8; return true;
    case 6:  *out = KILN_I32; return true;
    case 7:  *out = KILN_I64; return true;
    case 9:  *out = KILN_BOOL; return true;
    case 10: *out = KILN_F16; return true;
    case 11: *out = KILN_F64; return true;
    case 16: *out = KILN_BF16; return true;
    default: return false;
    }
}

/* ---- axes ---- */

kiln_status kc_axis(const kc_ctx *c, const kg_node *n, int64_t a, int rank, int *out)
{
    if (a < -rank || a >= rank)
        return kc_fail(c, n, KILN_ERR_SHAPE, "axis %lld out of range for rank %d", (long long)a,
                       rank);
    *out = (int)(a < 0 ? a + rank : a);
    return KILN_OK;
}

kiln_status kc_axes(const kc_ctx *c, const kg_node *n, const int64_t *a, int cnt, int rank,
                    int *out)
{
    for (int i = 0; i < cnt; i++) {
        int ax = 0;
        KC_TRY(kc_axis(c, n, a[i], rank, &ax));
        int j = i;                       /* insertion sort: at most KILN_MAX_DIMS axes */
        while (j > 0 && out[j - 1] > ax) {
            out[j] = out[j - 1];
            j--;
        }
        if (j > 0 && out[j - 1] == ax)
            return kc_fail(c, n, KILN_ERR_SHAPE, "axis %d given twice", ax);
        out[j] = ax;
    }
    return KILN_OK;
}

/* ---- emitting ---- */

static kiln_status check_shape(const kc_ctx *c, const kg_node *n, int ndim, const int64_t *shape)
{
    char buf[128];
    if (ndim > KILN_MAX_DIMS)
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "output rank %d exceeds %d", ndim, KILN_MAX_DIMS);
    if (kiln__numel(ndim, shape) < 0)
        return kc_fail(c, n, KILN_ERR_SHAPE, "invalid output shape %s",
                       kiln__shape_str(ndim, shape, buf, sizeof buf));
    return KILN_OK;
}

kiln_status kc_const(kc_ctx *c, kiln_dtype dt, int ndim, const int64_t *shape, const void *data,
                     kc_val *out)
{
    static const uint64_t empty = 0;
    int v = kc_new_const(c, dt, ndim, shape, data ? data : &empty);
    if (v < 0)
        return KILN_ERR_NOMEM;
    kc_snap(c, v, out);
    return KILN_OK;
}

kiln_status kc_emit1(kc_ctx *c, const kg_node *n, kp_op_kind kind, int sub, const int *in,
                     int n_in, kiln_dtype dt, int ndim, const int64_t *shape, const int64_t *ia,
                     int n_ia, const float *fa, int n_fa, kc_val *out)
{
    KC_TRY(check_shape(c, n, ndim, shape));
    if (kiln__numel(ndim, shape) == 0)
        return kc_const(c, dt, ndim, shape, NULL, out);
    int v = kc_new_value(c, dt, ndim, shape);
    if (v < 0)
        return KILN_ERR_NOMEM;
    KC_TRY(kc_emit(c, n, kind, sub, in, n_in, &v, 1, ia, n_ia, fa, n_fa));
    kc_snap(c, v, out);
    return KILN_OK;
}

kiln_status kc_emit_out(kc_ctx *c, const kg_node *n, kp_op_kind kind, int sub, const int *in,
                        int n_in, kiln_dtype dt, int ndim, const int64_t *shape,
                        const int64_t *ia, int n_ia, const float *fa, int n_fa)
{
    kc_val y;
    KC_TRY(kc_emit1(c, n, kind, sub, in, n_in, dt, ndim, shape, ia, n_ia, fa, n_fa, &y));
    return kc_out(c, n, 0, &y);
}

kiln_status kc_unary(kc_ctx *c, const kg_node *n, int alg, const kc_val *x, float alpha,
                     float beta, kc_val *out)
{
    float fa[2] = {alpha, beta};
    kiln_dtype dt = (alg == KP_U_ISNAN || alg == KP_U_ISINF) ? KILN_BOOL : x->dt;
    return kc_emit1(c, n, KP_UNARY, alg, &x->id, 1, dt, x->ndim, x->shape, NULL, 0, fa, 2, out);
}

kiln_status kc_binary(kc_ctx *c, const kg_node *n, int alg, const kc_val *a, const kc_val *b,
                      kc_val *out)
{
    int ndim;
    int64_t shape[KILN_MAX_DIMS];
    if (alg != KP_B_POW)
        KC_TRY(kc_same_dtype(c, n, a, b));
    KC_TRY(kc_broadcast(c, n, a->ndim, a->shape, b->ndim, b->shape, &ndim, shape));
    bool logical = alg >= KP_B_EQUAL && alg <= KP_B_XOR;
    int64_t fmod = 0;
    int in[2] = {a->id, b->id};
    if (alg == KP_B_MOD)
        fmod = kg_attr_int(n, "fmod", 0);
    return kc_emit1(c, n, KP_BINARY, alg, in, 2, logical ? KILN_BOOL : a->dt, ndim, shape,
                    alg == KP_B_MOD ? &fmod : NULL, alg == KP_B_MOD ? 1 : 0, NULL, 0, out);
}

kiln_status kc_reshape(kc_ctx *c, const kg_node *n, const kc_val *x, int ndim,
                       const int64_t *shape, kc_val *out)
{
    char b1[128], b2[128];
    KC_TRY(check_shape(c, n, ndim, shape));
    if (kiln__numel(ndim, shape) != kc_numel(x))
        return kc_fail(c, n, KILN_ERR_SHAPE, "cannot reshape %s into %s",
                       kiln__shape_str(x->ndim, x->shape, b1, sizeof b1),
                       kiln__shape_str(ndim, shape, b2, sizeof b2));
    if (kc_same_shape(ndim, shape, x->ndim, x->shape)) {
        *out = *x;
        return KILN_OK;
    }
    int v = kc_alias(c, x->id, ndim, shape);
    if (v < 0)
        return KILN_ERR_NOMEM;
    kc_snap(c, v, out);
    return KILN_OK;
}

kiln_status kc_out(kc_ctx *c, const kg_node *n, int i, const kc_val *t)
{
    if (i >= n->n_out || n->out[i] < 0)
        return KILN_OK;
    return kc_set_output(c, n, i, t->id);
}

/* ---- the table ---- */

const kc_op_def kc_op_table[] = {
    /* elementwise (lower_elementwise.c) */
    {"Relu", kc_lower_unary}, {"LeakyRelu", kc_lower_unary}, {"Sigmoid", kc_lower_unary},
    {"HardSigmoid", kc_lower_unary}, {"HardSwish", kc_lower_unary}, {"Tanh", kc_lower_unary},
    {"Erf", kc_lower_unary}, {"Exp", kc_lower_unary}, {"Log", kc_lower_unary},
    {"Sqrt", kc_lower_unary}, {"Abs", kc_lower_unary}, {"Neg", kc_lower_unary},
    {"Reciprocal", kc_lower_unary}, {"Elu", kc_lower_unary}, {"Selu", kc_lower_unary},
    {"Softplus", kc_lower_unary}, {"Softsign", kc_lower_unary}, {"Mish", kc_lower_unary},
    {"Floor", kc_lower_unary}, {"Ceil", kc_lower_unary}, {"Round", kc_lower_unary},
    {"Sign", kc_lower_unary}, {"Not", kc_lower_unary}, {"Sin", kc_lower_unary},
    {"Cos", kc_lower_unary}, {"Tan", kc_lower_unary}, {"Asin", kc_lower_unary},
    {"Acos", kc_lower_unary}, {"Atan", kc_lower_unary}, {"Sinh", kc_lower_unary},
    {"Cosh", kc_lower_unary}, {"Asinh", kc_lower_unary}, {"Acosh", kc_lower_unary},
    {"Atanh", kc_lower_unary}, {"ThresholdedRelu", kc_lower_unary}, {"IsNaN", kc_lower_unary},
    {"IsInf", kc_lower_unary},
    {"Gelu", kc_lower_gelu}, {"Celu", kc_lower_celu}, {"Clip", kc_lower_clip},
    {"Add", kc_lower_binary}, {"Sub", kc_lower_binary}, {"Mul", kc_lower_binary},
    {"Div", kc_lower_binary}, {"Pow", kc_lower_binary}, {"Mod", kc_lower_binary},
    {"Equal", kc_lower_binary}, {"Less", kc_lower_binary}, {"LessOrEqual", kc_lower_binary},
    {"Greater", kc_lower_binary}, {"GreaterOrEqual", kc_lower_binary},
    {"And", kc_lower_binary}, {"Or", kc_lower_binary}, {"Xor", kc_lower_binary},
    {"PRelu", kc_lower_binary}, {"BitShift", kc_lower_binary},
    {"Max", kc_lower_variadic}, {"Min", kc_lower_variadic}, {"Sum", kc_lower_variadic},
    {"Mean", kc_lower_variadic},
    {"Where", kc_lower_where}, {"Cast", kc_lower_cast}, {"CastLike", kc_lower_cast},
    /* neural-network ops (lower_nn.c) */
    {"Conv", kc_lower_conv}, {"ConvTranspose", kc_lower_conv_transpose},
    {"Gemm", kc_lower_gemm}, {"MatMul", kc_lower_matmul},
    {"MaxPool", kc_lower_pool}, {"AveragePool", kc_lower_pool},
    {"GlobalAveragePool", kc_lower_global_pool}, {"GlobalMaxPool", kc_lower_global_pool},
    {"BatchNormalization", kc_lower_batchnorm}, {"LayerNormalization", kc_lower_layernorm},
    {"InstanceNormalization", kc_lower_instancenorm},
    {"GroupNormalization", kc_lower_groupnorm},
    {"Softmax", kc_lower_softmax}, {"LogSoftmax", kc_lower_softmax},
    /* metadata and constants (lower_shape.c) */
    {"Identity", kc_lower_identity}, {"Dropout", kc_lower_identity},
    {"Reshape", kc_lower_reshape}, {"Flatten", kc_lower_flatten},
    {"Squeeze", kc_lower_squeeze}, {"Unsqueeze", kc_lower_unsqueeze},
    {"Shape", kc_lower_shape}, {"Size", kc_lower_size}, {"Constant", kc_lower_constant},
    {"ConstantOfShape", kc_lower_constant_of_shape}, {"Range", kc_lower_range},
    {"EyeLike", kc_lower_eye_like}, {"NonZero", kc_lower_nonzero},
    /* data movement and reductions (lower_tensor.c) */
    {"Gather", kc_lower_gather}, {"Transpose", kc_lower_transpose}, {"Slice", kc_lower_slice},
    {"Concat", kc_lower_concat}, {"Split", kc_lower_split}, {"Expand", kc_lower_expand},
    {"Tile", kc_lower_tile}, {"Pad", kc_lower_pad},
    {"ReduceSum", kc_lower_reduce}, {"ReduceMean", kc_lower_reduce},
    {"ReduceMax", kc_lower_reduce}, {"ReduceMin", kc_lower_reduce},
    {"ReduceProd", kc_lower_reduce}, {"ReduceL1", kc_lower_reduce},
    {"ReduceL2", kc_lower_reduce}, {"ReduceLogSum", kc_lower_reduce},
    {"ReduceLogSumExp", kc_lower_reduce}, {"ReduceSumSquare", kc_lower_reduce},
    {"ArgMax", kc_lower_argreduce}, {"ArgMin", kc_lower_argreduce}, {"TopK", kc_lower_topk},
    {"CumSum", kc_lower_cumsum},
    {"DepthToSpace", kc_lower_depth_space}, {"SpaceToDepth", kc_lower_depth_space},
    {"Resize", kc_lower_resize}, {"Upsample", kc_lower_resize},
    {"Trilu", kc_lower_trilu}, {"OneHot", kc_lower_onehot}, {"Einsum", kc_lower_einsum},
    {"ScatterND", kc_lower_scatter_nd}, {"ScatterElements", kc_lower_scatter_elements},
    {"Scatter", kc_lower_scatter_elements}, {"GatherElements", kc_lower_gather_elements},
    {"GatherND", kc_lower_gather_nd},
    /* recurrent networks, unrolled over time (lower_rnn.c) */
    {"RNN", kc_lower_rnn}, {"GRU", kc_lower_rnn}, {"LSTM", kc_lower_rnn},
    {NULL, NULL},
};
