/*
 * lower_elementwise.c — lowerings of the elementwise ONNX ops: unary activations and math
 * (one table: op -> algorithm and its attribute defaults), binary arithmetic, comparison
 * and logic (one table), the variadic Max/Min/Sum/Mean, Clip, Gelu, Celu, Where and Cast.
 */
#include "compiler/lower_impl.h"

#include <math.h>
#include <string.h>

typedef struct unary_def {
    const char *op;
    uint8_t     alg;
    const char *a_name;          /* attribute giving alpha (NULL: none) */
    float       a_dflt;
    const char *b_name;          /* attribute giving beta */
    float       b_dflt;
} unary_def;

static const unary_def unary_defs[] = {
    {"Relu", KP_U_RELU, NULL, 0, NULL, 0},
    {"LeakyRelu", KP_U_LEAKY_RELU, "alpha", 0.01f, NULL, 0},
    {"Sigmoid", KP_U_SIGMOID, NULL, 0, NULL, 0},
    {"HardSigmoid", KP_U_HARD_SIGMOID, "alpha", 0.2f, "beta", 0.5f},
    {"HardSwish", KP_U_HARD_SWISH, NULL, 0, NULL, 0},
    {"Tanh", KP_U_TANH, NULL, 0, NULL, 0},
    {"Erf", KP_U_ERF, NULL, 0, NULL, 0},
    {"Exp", KP_U_EXP, NULL, 0, NULL, 0},
    {"Log", KP_U_LOG, NULL, 0, NULL, 0},
    {"Sqrt", KP_U_SQRT, NULL, 0, NULL, 0},
    {"Abs", KP_U_ABS, NULL, 0, NULL, 0},
    {"Neg", KP_U_NEG, NULL, 0, NULL, 0},
    {"Reciprocal", KP_U_RECIPROCAL, NULL, 0, NULL, 0},
    {"Elu", KP_U_ELU, "alpha", 1.0f, NULL, 0},
    {"Selu", KP_U_SELU, "alpha", 1.67326319217681884765625f, "gamma", 1.05070102214813232421875f},
    {"Softplus", KP_U_SOFTPLUS, NULL, 0, NULL, 0},
    {"Softsign", KP_U_SOFTSIGN, NULL, 0, NULL, 0},
    {"Mish", KP_U_MISH, NULL, 0, NULL, 0},
    {"Floor", KP_U_FLOOR, NULL, 0, NULL, 0},
    {"Ceil", KP_U_CEIL, NULL, 0, NULL, 0},
    {"Round", KP_U_ROUND, NULL, 0, NULL, 0},
    {"Sign", KP_U_SIGN, NULL, 0, NULL, 0},
    {"Not", KP_U_NOT, NULL, 0, NULL, 0},
    {"Sin", KP_U_SIN, NULL, 0, NULL, 0},
    {"Cos", KP_U_COS, NULL, 0, NULL, 0},
    {"Tan", KP_U_TAN, NULL, 0, NULL, 0},
    {"Asin", KP_U_ASIN, NULL, 0, NULL, 0},
    {"Acos", KP_U_ACOS, NULL, 0, NULL, 0},
    {"Atan", KP_U_ATAN, NULL, 0, NULL, 0},
    {"Sinh", KP_U_SINH, NULL, 0, NULL, 0},
    {"Cosh", KP_U_COSH, NULL, 0, NULL, 0},
    {"Asinh", KP_U_ASINH, NULL, 0, NULL, 0},
    {"Acosh", KP_U_ACOSH, NULL, 0, NULL, 0},
    {"Atanh", KP_U_ATANH, NULL, 0, NULL, 0},
    {"ThresholdedRelu", KP_U_THRESHOLDED_RELU, "alpha", 1.0f, NULL, 0},
    {"IsNaN", KP_U_ISNAN, NULL, 0, NULL, 0},
    {"IsInf", KP_U_ISINF, "detect_negative", 1.0f, "detect_positive", 1.0f},
};

kiln_status kc_lower_unary(kc_ctx *c, const kg_node *n)
{
    const unary_def *d = NULL;
    for (size_t i = 0; i < sizeof unary_defs / sizeof *unary_defs; i++)
        if (!strcmp(unary_defs[i].op, n->op_type))
            d = &unary_defs[i];
    KILN_ASSERT(d);
    kc_val x, y;
    KC_TRY(kc_arg(c, n, 0, &x));
    if ((d->alg == KP_U_NOT) != (x.dt == KILN_BOOL))
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "input dtype %s", kiln_dtype_name(x.dt));
    float alpha = d->a_name ? (float)kc_attr_num(n, d->a_name, d->a_dflt) : 0.0f;
    float beta = d->b_name ? (float)kc_attr_num(n, d->b_name, d->b_dflt) : 0.0f;
    KC_TRY(kc_unary(c, n, d->alg, &x, alpha, beta, &y));
    return kc_out(c, n, 0, &y);
}

kiln_status kc_lower_gelu(kc_ctx *c, const kg_node *n)
{
    kc_val x, y;
    KC_TRY(kc_arg(c, n, 0, &x));
    const char *approx = kg_attr_string(n, "approximate", "none");
    int alg;
    if (!strcmp(approx, "none"))
        alg = KP_U_GELU;
    else if (!strcmp(approx, "tanh"))
        alg = KP_U_GELU_TANH;
    else
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "approximate '%s'", approx);
    KC_TRY(kc_unary(c, n, alg, &x, 0, 0, &y));
    return kc_out(c, n, 0, &y);
}

/* celu(x; a) = a * elu(x / a; 1) */
kiln_status kc_lower_celu(kc_ctx *c, const kg_node *n)
{
    kc_val x, t, y;
    KC_TRY(kc_arg(c, n, 0, &x));
    float a = (float)kc_attr_num(n, "alpha", 1.0);
    if (a == 0.0f)
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "alpha 0");
    if (a == 1.0f) {
        KC_TRY(kc_unary(c, n, KP_U_ELU, &x, 1.0f, 0, &y));
    } else {
        KC_TRY(kc_unary(c, n, KP_U_LINEAR, &x, 1.0f / a, 0, &t));
        KC_TRY(kc_unary(c, n, KP_U_ELU, &t, 1.0f, 0, &t));
        KC_TRY(kc_unary(c, n, KP_U_LINEAR, &t, a, 0, &y));
    }
    return kc_out(c, n, 0, &y);
}

/* One scalar bound of Clip: the constant input i, or the attribute (opset < 11). */
static kiln_status clip_bound(kc_ctx *c, const kg_node *n, int i, const char *attr, double *b)
{
    kc_val t;
    if (kc_opt_arg(c, n, i, &t)) {
        int cnt;
        if (kc_numel(&t) != 1)
            return kc_fail(c, n, KILN_ERR_SHAPE, "%s must be a scalar", attr);
        return kc_const_floats(c, n, t.id, b, 1, &cnt);
    }
    *b = kc_attr_num(n, attr, *b);
    return KILN_OK;
}

kiln_status kc_lower_clip(kc_ctx *c, const kg_node *n)
{
    kc_val x, y;
    double lo = -INFINITY, hi = INFINITY;
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(clip_bound(c, n, 1, "min", &lo));
    KC_TRY(clip_bound(c, n, 2, "max", &hi));
    if (!kc_float_exact(x.dt, lo) || !kc_float_exact(x.dt, hi))
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "bounds %g, %g not exact as floats", lo, hi);
    KC_TRY(kc_unary(c, n, KP_U_CLIP, &x, (float)lo, (float)hi, &y));
    return kc_out(c, n, 0, &y);
}

static const struct { const char *op; uint8_t alg; } binary_defs[] = {
    {"Add", KP_B_ADD}, {"Sub", KP_B_SUB}, {"Mul", KP_B_MUL}, {"Div", KP_B_DIV},
    {"Pow", KP_B_POW}, {"Mod", KP_B_MOD}, {"Equal", KP_B_EQUAL}, {"Less", KP_B_LESS},
    {"LessOrEqual", KP_B_LESS_EQUAL}, {"Greater", KP_B_GREATER},
    {"GreaterOrEqual", KP_B_GREATER_EQUAL}, {"And", KP_B_AND}, {"Or", KP_B_OR},
    {"Xor", KP_B_XOR}, {"PRelu", KP_B_PRELU}, {"BitShift", KP_B_BITSHIFT_LEFT},
    {"Max", KP_B_MAX}, {"Min", KP_B_MIN}, {"Sum", KP_B_ADD}, {"Mean", KP_B_ADD},
};

static int binary_alg(const kg_node *n)
{
    for (size_t i = 0; i < sizeof binary_defs / sizeof *binary_defs; i++)
        if (!strcmp(binary_defs[i].op, n->op_type))
            return binary_defs[i].alg;
    KILN_ASSERT(!"op not in binary table");
    return -1;
}

/* Pow with a constant scalar exponent that does not change A's shape: a unary x^alpha. */
static bool pow_scalar(const kc_ctx *c, const kg_node *n, const kc_val *a, const kc_val *b,
                       float *e)
{
    double d;
    int cnt;
    if (!kc_is_float(a->dt) || !kc_is_const(c, b->id) || kc_numel(b) != 1 || b->ndim > a->ndim)
        return false;
    if (kc_const_floats(c, n, b->id, &d, 1, &cnt) != KILN_OK || (double)(float)d != d)
        return false;
    *e = (float)d;
    return true;
}

kiln_status kc_lower_binary(kc_ctx *c, const kg_node *n)
{
    int alg = binary_alg(n);
    kc_val a, b, y;
    KC_TRY(kc_arg(c, n, 0, &a));
    KC_TRY(kc_arg(c, n, 1, &b));
    if (alg == KP_B_BITSHIFT_LEFT) {
        const char *dir = kg_attr_string(n, "direction", "");
        if (!strcmp(dir, "RIGHT"))
            alg = KP_B_BITSHIFT_RIGHT;
        else if (strcmp(dir, "LEFT"))
            return kc_fail(c, n, KILN_ERR_FORMAT, "direction '%s'", dir);
    }
    if (alg == KP_B_PRELU) {
        /* the slope broadcasts to X, never the other way */
        int nd;
        int64_t shape[KILN_MAX_DIMS];
        KC_TRY(kc_broadcast(c, n, a.ndim, a.shape, b.ndim, b.shape, &nd, shape));
        if (!kc_same_shape(nd, shape, a.ndim, a.shape))
            return kc_fail(c, n, KILN_ERR_SHAPE, "slope does not broadcast to X");
    }
    if (alg == KP_B_AND || alg == KP_B_OR || alg == KP_B_XOR) {
        if (a.dt != KILN_BOOL || b.dt != KILN_BOOL)
            return kc_fail(c, n, KILN_ERR_SHAPE, "inputs must be bool");
    }
    if (alg == KP_B_POW) {
        float e;
        if (pow_scalar(c, n, &a, &b, &e)) {
            KC_TRY(kc_unary(c, n, KP_U_POW_SCALAR, &a, e, 0, &y));
            return kc_out(c, n, 0, &y);
        }
        /* a float base with an integer exponent: the exponent as the base's dtype is exact */
        if (kc_is_float(a.dt) && !kc_is_float(b.dt))
            KC_TRY(kc_emit1(c, n, KP_CAST, 0, &b.id, 1, a.dt, b.ndim, b.shape, NULL, 0, NULL, 0,
                            &b));
    }
    KC_TRY(kc_binary(c, n, alg, &a, &b, &y));
    return kc_out(c, n, 0, &y);
}

/* Max, Min, Sum, Mean: a chain of binary ops (Mean then divides by the count). */
kiln_status kc_lower_variadic(kc_ctx *c, const kg_node *n)
{
    int alg = binary_alg(n);
    kc_val acc, x;
    if (n->n_in < 1)
        return kc_fail(c, n, KILN_ERR_FORMAT, "no inputs");
    KC_TRY(kc_arg(c, n, 0, &acc));
    for (int i = 1; i < n->n_in; i++) {
        KC_TRY(kc_arg(c, n, i, &x));
        KC_TRY(kc_binary(c, n, alg, &acc, &x, &acc));
    }
    if (!strcmp(n->op_type, "Mean") && n->n_in > 1) {
        kc_val cnt;
        float f = (float)n->n_in;
        if (!kc_is_float(acc.dt))
            return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "dtype %s", kiln_dtype_name(acc.dt));
        KC_TRY(kc_const(c, KILN_F32, 0, NULL, &f, &cnt));
        if (acc.dt != KILN_F32)                 /* folded: the count in acc's dtype */
            KC_TRY(kc_emit1(c, n, KP_CAST, 0, &cnt.id, 1, acc.dt, 0, NULL, NULL, 0, NULL, 0, &cnt));
        KC_TRY(kc_binary(c, n, KP_B_DIV, &acc, &cnt, &acc));
    }
    return kc_out(c, n, 0, &acc);
}

kiln_status kc_lower_where(kc_ctx *c, const kg_node *n)
{
    kc_val cond, x, y, z;
    int nd;
    int64_t shape[KILN_MAX_DIMS];
    KC_TRY(kc_arg(c, n, 0, &cond));
    KC_TRY(kc_arg(c, n, 1, &x));
    KC_TRY(kc_arg(c, n, 2, &y));
    if (cond.dt != KILN_BOOL)
        return kc_fail(c, n, KILN_ERR_SHAPE, "condition must be bool, got %s",
                       kiln_dtype_name(cond.dt));
    KC_TRY(kc_same_dtype(c, n, &x, &y));
    KC_TRY(kc_broadcast(c, n, cond.ndim, cond.shape, x.ndim, x.shape, &nd, shape));
    KC_TRY(kc_broadcast(c, n, nd, shape, y.ndim, y.shape, &nd, shape));
    int in[3] = {cond.id, x.id, y.id};
    KC_TRY(kc_emit1(c, n, KP_WHERE, 0, in, 3, x.dt, nd, shape, NULL, 0, NULL, 0, &z));
    return kc_out(c, n, 0, &z);
}

kiln_status kc_lower_cast(kc_ctx *c, const kg_node *n)
{
    kc_val x, y;
    kiln_dtype to;
    KC_TRY(kc_arg(c, n, 0, &x));
    if (!strcmp(n->op_type, "CastLike")) {
        kc_val like;
        KC_TRY(kc_arg(c, n, 1, &like));
        to = like.dt;
    } else {
        const kg_attr *a = kg_attr_find(n, "to");
        if (!a || a->type != KG_ATTR_INT)
            return kc_fail(c, n, KILN_ERR_FORMAT, "missing attribute 'to'");
        if (!kc_onnx_dtype(a->i, &to))
            return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "cast to ONNX dtype %lld", (long long)a->i);
    }
    if (to == x.dt)
        return kc_out(c, n, 0, &x);
    KC_TRY(kc_emit1(c, n, KP_CAST, 0, &x.id, 1, to, x.ndim, x.shape, NULL, 0, NULL, 0, &y));
    return kc_out(c, n, 0, &y);
}
