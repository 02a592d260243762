/*
 * ref_elementwise.c — reference kernels for the element-wise op kinds: Unary (every
 * kp_unary algorithm), Binary (every kp_binary algorithm, numpy broadcasting), Where,
 * Cast (every pair of dtypes), and the fused post-op lists of Conv/ConvTranspose/MatMul.
 */
#include "kernels/ref.h"

#include <math.h>

/* ================================ unary ================================ */

#define ULOOP(T, E)                                  \
    for (int64_t i = 0; i < n; i++) {                \
        T v = x[i];                                  \
        y[i] = (E);                                  \
    }                                                \
    break

/* S is the libm suffix (f for float, empty for double). */
#define UNARY_FLOAT(T, S, NAME)                                                              \
    static void NAME(int alg, T alpha, T beta, const T *x, T *y, int64_t n)                 \
    {                                                                                        \
        const T one = 1, zero = 0, half = (T)0.5;                                            \
        switch (alg) {                                                                       \
        case KP_U_IDENTITY: ULOOP(T, v);                                                     \
        case KP_U_RELU: ULOOP(T, v < zero ? zero : v);                                       \
        case KP_U_LEAKY_RELU: ULOOP(T, v < zero ? alpha * v : v);                            \
        case KP_U_CLIP: ULOOP(T, (v < alpha ? alpha : v) > beta ? beta : (v < alpha ? alpha : v)); \
        case KP_U_SIGMOID: ULOOP(T, one / (one + exp##S(-v)));                               \
        case KP_U_HARD_SIGMOID: {                                                            \
            for (int64_t i = 0; i < n; i++) {                                                \
                T t = alpha * x[i] + beta;                                                   \
                y[i] = t < zero ? zero : (t > one ? one : t);                                \
            }                                                                                \
            break;                                                                           \
        }                                                                                    \
        case KP_U_HARD_SWISH: {                                                              \
            for (int64_t i = 0; i < n; i++) {                                                \
                T v = x[i], t = v * (T)(1.0 / 6.0) + half;                                   \
                y[i] = v * (t < zero ? zero : (t > one ? one : t));                          \
            }                                                                                \
            break;                                                                           \
        }                                                                                    \
        case KP_U_TANH: ULOOP(T, tanh##S(v));                                                \
        case KP_U_ERF: ULOOP(T, erf##S(v));                                                  \
        case KP_U_GELU: ULOOP(T, half * v * (one + erf##S(v * (T)0.70710678118654752440)));  \
        case KP_U_GELU_TANH:                                                                 \
            ULOOP(T, half * v * (one + tanh##S((T)0.79788456080286535588 *                   \
                                               (v + (T)0.044715 * v * v * v))));             \
        case KP_U_EXP: ULOOP(T, exp##S(v));                                                  \
        case KP_U_LOG: ULOOP(T, log##S(v));                                                  \
        case KP_U_SQRT: ULOOP(T, sqrt##S(v));                                                \
        case KP_U_ABS: ULOOP(T, fabs##S(v));                                                 \
        case KP_U_NEG: ULOOP(T, -v);                                                         \
        case KP_U_RECIPROCAL: ULOOP(T, one / v);                                             \
        case KP_U_ELU: ULOOP(T, v < zero ? alpha * expm1##S(v) : v);                         \
        case KP_U_SELU: ULOOP(T, v <= zero ? beta * (alpha * exp##S(v) - alpha) : beta * v); \
        case KP_U_SOFTPLUS:                                                                  \
            ULOOP(T, v > zero ? v + log1p##S(exp##S(-v)) : log1p##S(exp##S(v)));             \
        case KP_U_SOFTSIGN: ULOOP(T, v / (one + fabs##S(v)));                                \
        case KP_U_SILU: ULOOP(T, v / (one + exp##S(-v)));                                    \
        case KP_U_MISH:                                                                      \
            ULOOP(T, v * tanh##S(v > zero ? v + log1p##S(exp##S(-v)) : log1p##S(exp##S(v)))); \
        case KP_U_FLOOR: ULOOP(T, floor##S(v));                                              \
        case KP_U_CEIL: ULOOP(T, ceil##S(v));                                                \
        case KP_U_ROUND: ULOOP(T, nearbyint##S(v));                                          \
        case KP_U_SIGN: ULOOP(T, v > zero ? one : (v < zero ? -one : (v == zero ? zero : v))); \
        case KP_U_SIN: ULOOP(T, sin##S(v));                                                  \
        case KP_U_COS: ULOOP(T, cos##S(v));                                                  \
        case KP_U_TAN: ULOOP(T, tan##S(v));                                                  \
        case KP_U_ASIN: ULOOP(T, asin##S(v));                                                \
        case KP_U_ACOS: ULOOP(T, acos##S(v));                                                \
        case KP_U_ATAN: ULOOP(T, atan##S(v));                                                \
        case KP_U_SINH: ULOOP(T, sinh##S(v));                                                \
        case KP_U_COSH: ULOOP(T, cosh##S(v));                                                \
        case KP_U_ASINH: ULOOP(T, asinh##S(v));                                              \
        case KP_U_ACOSH: ULOOP(T, acosh##S(v));                                              \
        case KP_U_ATANH: ULOOP(T, atanh##S(v));                                              \
        case KP_U_THRESHOLDED_RELU: ULOOP(T, v > alpha ? v : zero);                          \
        case KP_U_POW_SCALAR: ULOOP(T, pow##S(v, alpha));                                    \
        case KP_U_LINEAR: ULOOP(T, alpha * v + beta);                                        \
        default: KILN_ASSERT(!"unary algorithm not valid for a float dtype");                \
        }                                                                                    \
    }

UNARY_FLOAT(float, f, unary_f32)
UNARY_FLOAT(double, , unary_f64)

void kr_unary_f32(int alg, float alpha, float beta, const float *x, float *y, int64_t n)
{
    unary_f32(alg, alpha, beta, x, y, n);
}

/* v < 0 for any integer type, without "always false" warnings for unsigned ones. */
static inline bool lt0_(int64_t v) { return v < 0; }
#define lt0(v) lt0_((int64_t)(v))

/* A Clip bound (float) for an integer type: clamped into the type's range. */
static int64_t int_bound(double b, int64_t lo, int64_t hi)
{
    if (b != b)
        return lo;
    if (b <= (double)lo)
        return lo;
    if (b >= (double)hi)
        return hi;
    return (int64_t)b;
}

#define UNARY_INT(T, UT, TMIN, TMAX, NAME)                                                   \
    static void NAME(int alg, double alpha, double beta, const T *x, T *y, int64_t n)       \
    {                                                                                        \
        switch (alg) {                                                                       \
        case KP_U_IDENTITY: ULOOP(T, v);                                                     \
        case KP_U_RELU: ULOOP(T, lt0(v) ? 0 : v);                                            \
        case KP_U_ABS: ULOOP(T, lt0(v) ? (T)(UT)(0u - (UT)v) : v);                            \
        case KP_U_NEG: ULOOP(T, (T)(UT)(0u - (UT)v));                                         \
        case KP_U_SIGN: ULOOP(T, (T)(v > 0 ? 1 : (lt0(v) ? -1 : 0)));                        \
        case KP_U_CLIP: {                                                                    \
            T lo = (T)int_bound(alpha, TMIN, TMAX), hi = (T)int_bound(beta, TMIN, TMAX);     \
            ULOOP(T, (v < lo ? lo : v) > hi ? hi : (v < lo ? lo : v));                       \
        }                                                                                    \
        default: KILN_ASSERT(!"unary algorithm not valid for an integer dtype");             \
        }                                                                                    \
    }

UNARY_INT(int8_t, uint8_t, INT8_MIN, INT8_MAX, unary_i8)
UNARY_INT(uint8_t, uint8_t, 0, UINT8_MAX, unary_u8)
UNARY_INT(int32_t, uint32_t, INT32_MIN, INT32_MAX, unary_i32)
UNARY_INT(int64_t, uint64_t, INT64_MIN, INT64_MAX, unary_i64)

bool kr_unary_dtype_ok(int alg, int dt, int ydt)
{
    switch (alg) {
    case KP_U_NOT:
        return dt == KILN_BOOL && ydt == KILN_BOOL;
    case KP_U_ISNAN:
    case KP_U_ISINF:
        return kr_is_float(dt) && ydt == KILN_BOOL;
    case KP_U_IDENTITY:
        return ydt == dt;
    case KP_U_RELU:
    case KP_U_CLIP:
    case KP_U_ABS:
    case KP_U_NEG:
    case KP_U_SIGN:
        return ydt == dt && (kr_is_float(dt) || kr_is_int(dt));
    default:
        return ydt == dt && kr_is_float(dt) && alg >= 0 && alg < KP_UNARY_COUNT;
    }
}

typedef struct unary_k {
    kk_kernel base;
    int alg, dt;
    float alpha, beta;
    int64_t n;
    const void *x;
    void *y;
} unary_k;

static kiln_status unary_run(kk_kernel *kk)
{
    unary_k *k = (unary_k *)kk;
    const int64_t n = k->n;
    if (k->alg == KP_U_NOT) {
        const uint8_t *x = k->x;
        uint8_t *y = k->y;
        for (int64_t i = 0; i < n; i++)
            y[i] = !x[i];
        return KILN_OK;
    }
    if (k->alg == KP_U_ISNAN || k->alg == KP_U_ISINF) {
        uint8_t *y = k->y;
        bool neg = k->alpha != 0, pos = k->beta != 0, nan = k->alg == KP_U_ISNAN;
        for (int64_t i = 0; i < n; i++) {
            double v = k->dt == KILN_F32 ? ((const float *)k->x)[i] : ((const double *)k->x)[i];
            y[i] = nan ? isnan(v) : (isinf(v) && (v < 0 ? neg : pos));
        }
        return KILN_OK;
    }
    if (k->alg == KP_U_IDENTITY) {
        if (k->x != k->y)
            memmove(k->y, k->x, (size_t)n * kr_esize(k->dt));
        return KILN_OK;
    }
    switch (k->dt) {
    case KILN_F32: unary_f32(k->alg, k->alpha, k->beta, k->x, k->y, n); break;
    case KILN_F64: unary_f64(k->alg, k->alpha, k->beta, k->x, k->y, n); break;
    case KILN_I8: unary_i8(k->alg, k->alpha, k->beta, k->x, k->y, n); break;
    case KILN_U8: unary_u8(k->alg, k->alpha, k->beta, k->x, k->y, n); break;
    case KILN_I32: unary_i32(k->alg, k->alpha, k->beta, k->x, k->y, n); break;
    case KILN_I64: unary_i64(k->alg, k->alpha, k->beta, k->x, k->y, n); break;
    default: KILN_ASSERT(!"unary dtype");
    }
    return KILN_OK;
}

kiln_status kr_check_unary(const kr_op *o)
{
    const kp_op *op = o->op;
    if (op->n_in != 1 || op->n_out != 1 || !kr_in(o, 0) || !kr_out(o, 0))
        return kr_bad(o, "expects 1 input and 1 output");
    if (op->sub >= KP_UNARY_COUNT)
        return kr_bad(o, "unknown unary algorithm %u", op->sub);
    if (op->n_ia != 0 || (op->n_fa != 2 && op->n_fa != 0))
        return kr_bad(o, "expects 2 float attributes, got %u int and %u float", op->n_ia, op->n_fa);
    const kp_value *x = kr_in(o, 0), *y = kr_out(o, 0);
    if (!kr_unary_dtype_ok(op->sub, x->dtype, y->dtype))
        return kr_bad(o, "dtype %s -> %s not supported for unary algorithm %u",
                      kr_dtname(x->dtype), kr_dtname(y->dtype), op->sub);
    if (!kr_same_shape(x, y))
        return kr_bad(o, "output shape differs from the input's");
    return KILN_OK;
}

kiln_status kr_create_unary(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    unary_k *k = kr_kernel_new(o, sizeof *k, unary_run);
    if (!k)
        return KILN_ERR_NOMEM;
    k->alg = o->op->sub;
    k->dt = kr_in(o, 0)->dtype;
    k->alpha = o->op->n_fa ? o->fa[0] : 0;
    k->beta = o->op->n_fa ? o->fa[1] : 0;
    k->n = kr_numel(kr_in(o, 0));
    k->x = ptr[o->in[0]];
    k->y = ptr[o->out[0]];
    *out = &k->base;
    return KILN_OK;
}

/* ================================ binary ================================ */

/* y[i] = EXPR(a, b) for i < n, with a and b advancing by sa and sb (0 or 1). */
#define BIN_FN(NAME, TA, TB, TY, EXPR)                                                        \
    static void NAME(const void *pa, int64_t sa, const void *pb, int64_t sb, void *py,       \
                     int64_t n)                                                              \
    {                                                                                        \
        const TA *A = pa;                                                                    \
        const TB *B = pb;                                                                    \
        TY *Y = py;                                                                          \
        if (sa == 1 && sb == 1) {                                                            \
            for (int64_t i = 0; i < n; i++) {                                                \
                TA a = A[i];                                                                 \
                TB b = B[i];                                                                 \
                Y[i] = (TY)(EXPR);                                                           \
            }                                                                                \
        } else if (sa == 1 && sb == 0) {                                                     \
            const TB b = B[0];                                                               \
            for (int64_t i = 0; i < n; i++) {                                                \
                TA a = A[i];                                                                 \
                Y[i] = (TY)(EXPR);                                                           \
            }                                                                                \
        } else if (sa == 0 && sb == 1) {                                                     \
            const TA a = A[0];                                                               \
            for (int64_t i = 0; i < n; i++) {                                                \
                TB b = B[i];                                                                 \
                Y[i] = (TY)(EXPR);                                                           \
            }                                                                                \
        } else {                                                                             \
            for (int64_t i = 0; i < n; i++) {                                                \
                TA a = A[i * sa];                                                            \
                TB b = B[i * sb];                                                            \
                Y[i] = (TY)(EXPR);                                                           \
            }                                                                                \
        }                                                                                    \
    }

/* Python-style modulo (result takes the divisor's sign). */
static inline float pymod_f32(float a, float b)
{
    float r = fmodf(a, b);
    return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
static inline double pymod_f64(double a, double b)
{
    double r = fmod(a, b);
    return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}

/* Integer power with wrap-around; negative exponents as 1 / a^-b truncated. */
static inline int64_t ipow(int64_t a, int64_t b)
{
    if (b < 0)
        return a == 1 ? 1 : a == -1 ? ((b & 1) ? -1 : 1) : 0;
    uint64_t r = 1, base = (uint64_t)a;
    while (b) {
        if (b & 1)
            r *= base;
        base *= base;
        b >>= 1;
    }
    return (int64_t)r;
}

#define BIN_COMPARE(T, SUF)                                   \
    BIN_FN(eq_##SUF, T, T, uint8_t, a == b)                   \
    BIN_FN(lt_##SUF, T, T, uint8_t, a < b)                    \
    BIN_FN(le_##SUF, T, T, uint8_t, a <= b)                   \
    BIN_FN(gt_##SUF, T, T, uint8_t, a > b)                    \
    BIN_FN(ge_##SUF, T, T, uint8_t, a >= b)

#define BIN_FLOAT(T, SUF, S)                                                  \
    BIN_FN(add_##SUF, T, T, T, a + b)                                         \
    BIN_FN(sub_##SUF, T, T, T, a - b)                                         \
    BIN_FN(mul_##SUF, T, T, T, a * b)                                         \
    BIN_FN(div_##SUF, T, T, T, a / b)                                         \
    BIN_FN(pow_##SUF, T, T, T, pow##S(a, b))                                  \
    BIN_FN(max_##SUF, T, T, T, (a > b || a != a) ? a : b)                     \
    BIN_FN(min_##SUF, T, T, T, (a < b || a != a) ? a : b)                     \
    BIN_FN(mod_##SUF, T, T, T, pymod_##SUF(a, b))                             \
    BIN_FN(fmod_##SUF, T, T, T, fmod##S(a, b))                                \
    BIN_FN(prelu_##SUF, T, T, T, a < 0 ? a * b : a)                           \
    BIN_COMPARE(T, SUF)

BIN_FLOAT(float, f32, f)
BIN_FLOAT(double, f64, )

/* Integer arithmetic wraps (computed unsigned); division by zero gives 0 rather than a
 * trap, and so does the one overflowing division (MIN / -1 wraps to MIN). */
#define BIN_INT(T, UT, SUF, BITS, SG)                                                         \
    BIN_FN(add_##SUF, T, T, T, (UT)((UT)a + (UT)b))                                           \
    BIN_FN(sub_##SUF, T, T, T, (UT)((UT)a - (UT)b))                                           \
    BIN_FN(mul_##SUF, T, T, T, (UT)((UT)a * (UT)b))                                           \
    BIN_FN(div_##SUF, T, T, T, b == 0 ? 0 : ((SG && b == (T)-1) ? (UT)(0u - (UT)a) : (UT)(a / b))) \
    BIN_FN(pow_##SUF, T, T, T, (UT)(uint64_t)ipow(a, b))                                      \
    BIN_FN(max_##SUF, T, T, T, a > b ? a : b)                                                 \
    BIN_FN(min_##SUF, T, T, T, a < b ? a : b)                                                 \
    BIN_FN(fmod_##SUF, T, T, T, (b == 0 || (SG && b == (T)-1)) ? 0 : a % b)                   \
    BIN_FN(mod_##SUF, T, T, T, imod_##SUF(a, b))                                              \
    BIN_FN(prelu_##SUF, T, T, T, lt0(a) ? (UT)((UT)a * (UT)b) : (UT)a)                       \
    BIN_FN(shl_##SUF, T, T, T, (uint64_t)b >= BITS ? 0 : (UT)((UT)a << (UT)b))               \
    BIN_FN(shr_##SUF, T, T, T, (uint64_t)b >= BITS ? 0 : (UT)((UT)a >> (UT)b))               \
    BIN_COMPARE(T, SUF)

/* Python-style integer modulo; 0 for a zero divisor. */
#define IMOD(T, SUF, SG)                                                 \
    static inline T imod_##SUF(T a, T b)                                 \
    {                                                                    \
        if (b == 0 || (SG && b == (T)-1))                                \
            return 0;                                                    \
        T r = (T)(a % b);                                                \
        if (r != 0 && (lt0(r) != lt0(b)))                                \
            r = (T)(r + b);                                              \
        return r;                                                        \
    }
IMOD(int8_t, i8, 1)
IMOD(uint8_t, u8, 0)
IMOD(int32_t, i32, 1)
IMOD(int64_t, i64, 1)

BIN_INT(int8_t, uint8_t, i8, 8, 1)
BIN_INT(uint8_t, uint8_t, u8, 8, 0)
BIN_INT(int32_t, uint32_t, i32, 32, 1)
BIN_INT(int64_t, uint64_t, i64, 64, 1)

BIN_FN(and_b, uint8_t, uint8_t, uint8_t, (a != 0) & (b != 0))
BIN_FN(or_b, uint8_t, uint8_t, uint8_t, (a != 0) | (b != 0))
BIN_FN(xor_b, uint8_t, uint8_t, uint8_t, (a != 0) ^ (b != 0))
BIN_FN(eq_b, uint8_t, uint8_t, uint8_t, (a != 0) == (b != 0))

#define KR_B_FMOD KP_BINARY_COUNT   /* table row of Mod with fmod = 1 */

#define ENTRIES_COMMON(DT, SUF)                                                            \
    [KP_B_ADD][DT] = add_##SUF, [KP_B_SUB][DT] = sub_##SUF, [KP_B_MUL][DT] = mul_##SUF,    \
    [KP_B_DIV][DT] = div_##SUF, [KP_B_POW][DT] = pow_##SUF, [KP_B_MAX][DT] = max_##SUF,    \
    [KP_B_MIN][DT] = min_##SUF, [KP_B_MOD][DT] = mod_##SUF, [KR_B_FMOD][DT] = fmod_##SUF,  \
    [KP_B_PRELU][DT] = prelu_##SUF, [KP_B_EQUAL][DT] = eq_##SUF,                           \
    [KP_B_LESS][DT] = lt_##SUF, [KP_B_LESS_EQUAL][DT] = le_##SUF,                          \
    [KP_B_GREATER][DT] = gt_##SUF, [KP_B_GREATER_EQUAL][DT] = ge_##SUF
#define ENTRIES_INT(DT, SUF) ENTRIES_COMMON(DT, SUF),                                      \
    [KP_B_BITSHIFT_LEFT][DT] = shl_##SUF, [KP_B_BITSHIFT_RIGHT][DT] = shr_##SUF

static const kr_bin_fn bin_table[KP_BINARY_COUNT + 1][KILN_BOOL + 1] = {
    ENTRIES_COMMON(KILN_F32, f32),
    ENTRIES_COMMON(KILN_F64, f64),
    ENTRIES_INT(KILN_I8, i8),
    ENTRIES_INT(KILN_U8, u8),
    ENTRIES_INT(KILN_I32, i32),
    ENTRIES_INT(KILN_I64, i64),
    [KP_B_AND][KILN_BOOL] = and_b,
    [KP_B_OR][KILN_BOOL] = or_b,
    [KP_B_XOR][KILN_BOOL] = xor_b,
    [KP_B_EQUAL][KILN_BOOL] = eq_b,
};

kr_bin_fn kr_binary_fn(int alg, int dt, int fmod)
{
    if (alg < 0 || alg >= KP_BINARY_COUNT || dt < 0 || dt > KILN_BOOL)
        return NULL;
    if (alg == KP_B_MOD && fmod)
        alg = KR_B_FMOD;
    return bin_table[alg][dt];
}

typedef struct binary_k {
    kk_kernel base;
    kr_bin_fn fn;           /* NULL: mixed-dtype Pow, element by element */
    int adt, bdt, ydt;
    size_t ea, eb, ey;
    const char *a, *b;
    char *y;
    kr_bcast bc;
} binary_k;

static void pow_mixed_row(const binary_k *k, const char *a, int64_t sa, const char *b,
                          int64_t sb, char *y, int64_t n)
{
    bool ints = !kr_is_float(k->adt) && !kr_is_float(k->bdt);
    for (int64_t i = 0; i < n; i++) {
        double av = kr_load_f64(a, k->adt, i * sa), bv = kr_load_f64(b, k->bdt, i * sb);
        if (ints && kr_is_int(k->ydt))
            kr_store_f64(y, k->ydt, i, (double)ipow((int64_t)av, (int64_t)bv));
        else
            kr_store_f64(y, k->ydt, i, pow(av, bv));
    }
}

static kiln_status binary_run(kk_kernel *kk)
{
    binary_k *k = (binary_k *)kk;
    const kr_bcast *bc = &k->bc;
    int64_t idx[KILN_MAX_DIMS] = {0}, off[3] = {0};
    const int64_t sa = bc->st[0][bc->nd - 1], sb = bc->st[1][bc->nd - 1], inner = bc->inner;
    char *y = k->y;
    for (int64_t r = 0; r < bc->rows; r++, y += inner * (int64_t)k->ey) {
        const char *a = k->a + off[0] * (int64_t)k->ea, *b = k->b + off[1] * (int64_t)k->eb;
        if (k->fn)
            k->fn(a, sa, b, sb, y, inner);
        else
            pow_mixed_row(k, a, sa, b, sb, y, inner);
        kr_bcast_next(bc, idx, off);
    }
    return KILN_OK;
}

kiln_status kr_check_binary(const kr_op *o)
{
    const kp_op *op = o->op;
    if (op->n_in != 2 || op->n_out != 1 || !kr_in(o, 0) || !kr_in(o, 1) || !kr_out(o, 0))
        return kr_bad(o, "expects 2 inputs and 1 output");
    if (op->sub >= KP_BINARY_COUNT)
        return kr_bad(o, "unknown binary algorithm %u", op->sub);
    if (op->n_fa != 0 || op->n_ia > 1 || (op->sub == KP_B_MOD && op->n_ia != 1))
        return kr_bad(o, "unexpected attributes (%u int, %u float)", op->n_ia, op->n_fa);
    const kp_value *a = kr_in(o, 0), *b = kr_in(o, 1), *y = kr_out(o, 0);
    int fmod = op->sub == KP_B_MOD ? (int)(o->ia[0] != 0) : 0;
    if (op->sub == KP_B_POW && a->dtype != b->dtype) {
        bool num_a = kr_is_float(a->dtype) || kr_is_int(a->dtype);
        bool num_b = kr_is_float(b->dtype) || kr_is_int(b->dtype);
        if (!num_a || !num_b || y->dtype != a->dtype)
            return kr_bad(o, "Pow of %s by %s -> %s not supported", kr_dtname(a->dtype),
                          kr_dtname(b->dtype), kr_dtname(y->dtype));
    } else {
        int want = kr_binary_is_logical(op->sub) ? KILN_BOOL : a->dtype;
        if (a->dtype != b->dtype || y->dtype != want || !kr_binary_fn(op->sub, a->dtype, fmod))
            return kr_bad(o, "dtypes %s, %s -> %s not supported for binary algorithm %u",
                          kr_dtname(a->dtype), kr_dtname(b->dtype), kr_dtname(y->dtype), op->sub);
    }
    const kp_value *ins[2] = {a, b};
    if (!kr_bcast_ok(2, ins, y->ndim, y->shape))
        return kr_bad(o, "inputs do not broadcast to the output shape");
    return KILN_OK;
}

kiln_status kr_create_binary(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    binary_k *k = kr_kernel_new(o, sizeof *k, binary_run);
    if (!k)
        return KILN_ERR_NOMEM;
    const kp_value *a = kr_in(o, 0), *b = kr_in(o, 1), *y = kr_out(o, 0);
    int fmod = o->op->sub == KP_B_MOD ? (int)(o->ia[0] != 0) : 0;
    k->adt = a->dtype;
    k->bdt = b->dtype;
    k->ydt = y->dtype;
    k->ea = kr_esize(a->dtype);
    k->eb = kr_esize(b->dtype);
    k->ey = kr_esize(y->dtype);
    k->fn = a->dtype == b->dtype ? kr_binary_fn(o->op->sub, a->dtype, fmod) : NULL;
    k->a = ptr[o->in[0]];
    k->b = ptr[o->in[1]];
    k->y = ptr[o->out[0]];
    const kp_value *ins[2] = {a, b};
    kr_bcast_init(&k->bc, 2, ins, y->ndim, y->shape);
    *out = &k->base;
    return KILN_OK;
}

/* ================================ where ================================ */

#define WHERE_ROW(T)                                                               \
    do {                                                                           \
        const T *X = (const T *)x;                                                 \
        const T *Y = (const T *)yv;                                                \
        T *Z = (T *)z;                                                             \
        for (int64_t i = 0; i < n; i++)                                            \
            Z[i] = c[i * sc] ? X[i * sx] : Y[i * sy];                              \
    } while (0)

typedef struct where_k {
    kk_kernel base;
    size_t es;
    const uint8_t *c;
    const char *x, *y;
    char *z;
    kr_bcast bc;
} where_k;

static kiln_status where_run(kk_kernel *kk)
{
    where_k *k = (where_k *)kk;
    const kr_bcast *bc = &k->bc;
    int64_t idx[KILN_MAX_DIMS] = {0}, off[3] = {0};
    const int64_t sc = bc->st[0][bc->nd - 1], sx = bc->st[1][bc->nd - 1],
                  sy = bc->st[2][bc->nd - 1], n = bc->inner, es = (int64_t)k->es;
    char *z = k->z;
    for (int64_t r = 0; r < bc->rows; r++, z += n * es) {
        const uint8_t *c = k->c + off[0];
        const char *x = k->x + off[1] * es, *yv = k->y + off[2] * es;
        switch (es) {
        case 1: WHERE_ROW(uint8_t); break;
        case 2: WHERE_ROW(uint16_t); break;
        case 4: WHERE_ROW(uint32_t); break;
        default: WHERE_ROW(uint64_t); break;
        }
        kr_bcast_next(bc, idx, off);
    }
    return KILN_OK;
}

kiln_status kr_check_where(const kr_op *o)
{
    const kp_op *op = o->op;
    if (op->n_in != 3 || op->n_out != 1 || !kr_in(o, 0) || !kr_in(o, 1) || !kr_in(o, 2) ||
        !kr_out(o, 0))
        return kr_bad(o, "expects 3 inputs and 1 output");
    if (op->n_ia || op->n_fa)
        return kr_bad(o, "unexpected attributes");
    const kp_value *c = kr_in(o, 0), *x = kr_in(o, 1), *y = kr_in(o, 2), *z = kr_out(o, 0);
    if (c->dtype != KILN_BOOL)
        return kr_bad(o, "condition dtype %s is not bool", kr_dtname(c->dtype));
    if (x->dtype != y->dtype || z->dtype != x->dtype)
        return kr_bad(o, "dtypes %s, %s -> %s differ", kr_dtname(x->dtype), kr_dtname(y->dtype),
                      kr_dtname(z->dtype));
    const kp_value *ins[3] = {c, x, y};
    if (!kr_bcast_ok(3, ins, z->ndim, z->shape))
        return kr_bad(o, "inputs do not broadcast to the output shape");
    return KILN_OK;
}

kiln_status kr_create_where(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    where_k *k = kr_kernel_new(o, sizeof *k, where_run);
    if (!k)
        return KILN_ERR_NOMEM;
    const kp_value *ins[3] = {kr_in(o, 0), kr_in(o, 1), kr_in(o, 2)};
    const kp_value *z = kr_out(o, 0);
    k->es = kr_esize(z->dtype);
    k->c = ptr[o->in[0]];
    k->x = ptr[o->in[1]];
    k->y = ptr[o->in[2]];
    k->z = ptr[o->out[0]];
    kr_bcast_init(&k->bc, 3, ins, z->ndim, z->shape);
    *out = &k->base;
    return KILN_OK;
}

/* ================================ cast ================================ */

/* Float -> integer truncates toward zero (saturating at the int64 range, NaN -> 0), then
 * wraps into narrower types the way a C cast of that int64 would. */
static inline int64_t f2i(double x)
{
    if (x != x)
        return 0;
    if (x >= 9223372036854775807.0)
        return INT64_MAX;
    if (x <= -9223372036854775808.0)
        return INT64_MIN;
    return (int64_t)x;
}

static inline float cv_f32_f(double x) { return (float)x; }
static inline double cv_f64_f(double x) { return x; }
static inline int8_t cv_i8_f(double x) { return (int8_t)(uint8_t)f2i(x); }
static inline uint8_t cv_u8_f(double x) { return (uint8_t)f2i(x); }
static inline int32_t cv_i32_f(double x) { return (int32_t)(uint32_t)f2i(x); }
static inline int64_t cv_i64_f(double x) { return f2i(x); }
static inline uint8_t cv_b8_f(double x) { return x != 0; }
static inline float cv_f32_i(int64_t x) { return (float)x; }
static inline double cv_f64_i(int64_t x) { return (double)x; }
static inline int8_t cv_i8_i(int64_t x) { return (int8_t)(uint8_t)x; }
static inline uint8_t cv_u8_i(int64_t x) { return (uint8_t)x; }
static inline int32_t cv_i32_i(int64_t x) { return (int32_t)(uint32_t)x; }
static inline int64_t cv_i64_i(int64_t x) { return x; }
static inline uint8_t cv_b8_i(int64_t x) { return x != 0; }

typedef void (*cast_fn)(const void *s, void *d, int64_t n);

/* K: f (float source, read as double), i (integer source), b (bool source, read as 0/1). */
#define CAST1(SN, ST, K, DN, DT)                                                 \
    static void cast_##SN##_##DN(const void *s, void *d, int64_t n)             \
    {                                                                            \
        const ST *x = s;                                                         \
        DT *y = d;                                                               \
        for (int64_t i = 0; i < n; i++)                                          \
            y[i] = CV_##K(DN, x[i]);                                             \
    }
#define CV_f(DN, v) cv_##DN##_f((double)(v))
#define CV_i(DN, v) cv_##DN##_i((int64_t)(v))
#define CV_b(DN, v) cv_##DN##_i((int64_t)((v) != 0))
#define CAST_ROW(SN, ST, K)                                                      \
    CAST1(SN, ST, K, f32, float) CAST1(SN, ST, K, f64, double)                   \
    CAST1(SN, ST, K, i8, int8_t) CAST1(SN, ST, K, u8, uint8_t)                   \
    CAST1(SN, ST, K, i32, int32_t) CAST1(SN, ST, K, i64, int64_t)                \
    CAST1(SN, ST, K, b8, uint8_t)

CAST_ROW(f32, float, f)
CAST_ROW(f64, double, f)
CAST_ROW(i8, int8_t, i)
CAST_ROW(u8, uint8_t, i)
CAST_ROW(i32, int32_t, i)
CAST_ROW(i64, int64_t, i)
CAST_ROW(b8, uint8_t, b)

#define CAST_TABLE_ROW(SDT, SN)                                                          \
    [SDT] = {[KILN_F32] = cast_##SN##_f32, [KILN_F64] = cast_##SN##_f64,                  \
             [KILN_I8] = cast_##SN##_i8, [KILN_U8] = cast_##SN##_u8,                      \
             [KILN_I32] = cast_##SN##_i32, [KILN_I64] = cast_##SN##_i64,                  \
             [KILN_BOOL] = cast_##SN##_b8}

static const cast_fn cast_table[KILN_BOOL + 1][KILN_BOOL + 1] = {
    CAST_TABLE_ROW(KILN_F32, f32), CAST_TABLE_ROW(KILN_F64, f64),
    CAST_TABLE_ROW(KILN_I8, i8),   CAST_TABLE_ROW(KILN_U8, u8),
    CAST_TABLE_ROW(KILN_I32, i32), CAST_TABLE_ROW(KILN_I64, i64),
    CAST_TABLE_ROW(KILN_BOOL, b8),
};

static bool is_half(int dt) { return dt == KILN_F16 || dt == KILN_BF16; }

typedef struct cast_k {
    kk_kernel base;
    int sdt, ddt;
    int64_t n;
    const void *x;
    void *y;
} cast_k;

static kiln_status cast_run(kk_kernel *kk)
{
    cast_k *k = (cast_k *)kk;
    if (!is_half(k->sdt) && !is_half(k->ddt)) {
        cast_table[k->sdt][k->ddt](k->x, k->y, k->n);
        return KILN_OK;
    }
    /* through doubles, a chunk at a time */
    enum { CHUNK = 256 };
    double buf[CHUNK];
    const char *x = k->x;
    char *y = k->y;
    size_t es = kr_esize(k->sdt), ed = kr_esize(k->ddt);
    for (int64_t at = 0; at < k->n; at += CHUNK) {
        int64_t m = k->n - at < CHUNK ? k->n - at : CHUNK;
        const char *xs = x + at * (int64_t)es;
        char *yd = y + at * (int64_t)ed;
        if (k->sdt == KILN_F16) {
            for (int64_t i = 0; i < m; i++)
                buf[i] = kr_f16_to_f64(((const uint16_t *)xs)[i]);
        } else if (k->sdt == KILN_BF16) {
            for (int64_t i = 0; i < m; i++)
                buf[i] = kr_bf16_to_f64(((const uint16_t *)xs)[i]);
        } else {
            cast_table[k->sdt][KILN_F64](xs, buf, m);
        }
        if (k->ddt == KILN_F16) {
            for (int64_t i = 0; i < m; i++)
                ((uint16_t *)yd)[i] = kr_f64_to_f16(buf[i]);
        } else if (k->ddt == KILN_BF16) {
            for (int64_t i = 0; i < m; i++)
                ((uint16_t *)yd)[i] = kr_f64_to_bf16(buf[i]);
        } else {
            cast_table[KILN_F64][k->ddt](buf, yd, m);
        }
    }
    return KILN_OK;
}

kiln_status kr_check_cast(const kr_op *o)
{
    const kp_op *op = o->op;
    if (op->n_in != 1 || op->n_out != 1 || !kr_in(o, 0) || !kr_out(o, 0))
        return kr_bad(o, "expects 1 input and 1 output");
    if (op->n_ia || op->n_fa)
        return kr_bad(o, "unexpected attributes");
    if (kr_numel(kr_in(o, 0)) != kr_numel(kr_out(o, 0)))
        return kr_bad(o, "input and output sizes differ");
    return KILN_OK;
}

kiln_status kr_create_cast(const kr_op *o, void *const *ptr, kk_kernel **out)
{
    cast_k *k = kr_kernel_new(o, sizeof *k, cast_run);
    if (!k)
        return KILN_ERR_NOMEM;
    k->sdt = kr_in(o, 0)->dtype;
    k->ddt = kr_out(o, 0)->dtype;
    k->n = kr_numel(kr_in(o, 0));
    k->x = ptr[o->in[0]];
    k->y = ptr[o->out[0]];
    *out = &k->base;
    return KILN_OK;
}

/* ================================ post-ops ================================ */

kiln_status kr_post_check(const kr_op *o, int at, int first_operand, int *n_operands)
{
    const kp_op *op = o->op;
    const kp_value *y = kr_out(o, 0);
    *n_operands = 0;
    if ((int64_t)op->n_ia < at + 1)
        return kr_bad(o, "int attributes end before the post-op list");
    int64_t n_post = o->ia[at];
    if (n_post < 0 || n_post > 64 || (int64_t)op->n_ia != at + 1 + 2 * n_post)
        return kr_bad(o, "post-op list of %lld entries does not fit %u int attributes",
                      (long long)n_post, op->n_ia);
    if ((int64_t)op->n_fa != 2 * n_post)
        return kr_bad(o, "%u float attributes for %lld post-ops", op->n_fa, (long long)n_post);
    int next = first_operand;
    for (int j = 0; j < n_post; j++) {
        int64_t type = o->ia[at + 1 + 2 * j], alg = o->ia[at + 2 + 2 * j];
        if (type == KP_POST_UNARY) {
            if (alg < 0 || alg >= KP_UNARY_COUNT || !kr_unary_dtype_ok((int)alg, KILN_F32, KILN_F32))
                return kr_bad(o, "post-op %d: unary algorithm %lld not valid on f32", j, (long long)alg);
            continue;
        }
        if (type == KP_POST_SUM) {
            if (alg != 0)
                return kr_bad(o, "post-op %d: sum with algorithm %lld", j, (long long)alg);
        } else if (type == KP_POST_BINARY) {
            if (alg < 0 || alg >= KP_BINARY_COUNT || kr_binary_is_logical((int)alg) ||
                !kr_binary_fn((int)alg, KILN_F32, 0))
                return kr_bad(o, "post-op %d: binary algorithm %lld not valid on f32", j, (long long)alg);
        } else {
            return kr_bad(o, "post-op %d: unknown type %lld", j, (long long)type);
        }
        const kp_value *v = kr_in(o, next);
        if (!v)
            return kr_bad(o, "post-op %d: operand input %d missing", j, next);
        if (v->dtype != KILN_F32)
            return kr_bad(o, "post-op %d: operand dtype %s not supported", j, kr_dtname(v->dtype));
        if (!kr_bcast_ok(1, &v, y->ndim, y->shape))
            return kr_bad(o, "post-op %d: operand does not broadcast to the output", j);
        next++;
    }
    if (op->n_in != next)
        return kr_bad(o, "%u inputs, expected %d", op->n_in, next);
    *n_operands = next - first_operand;
    return KILN_OK;
}

kiln_status kr_post_init(kr_post *pp, const kr_op *o, int at, int first_operand, void *const *ptr)
{
    const kp_value *y = kr_out(o, 0);
    pp->n = (int)o->ia[at];
    pp->numel = kr_numel(y);
    pp->ops = NULL;
    if (pp->n == 0)
        return KILN_OK;
    pp->ops = kiln__calloc((size_t)pp->n, sizeof *pp->ops);
    if (!pp->ops)
        return kr_fail(o->p, o->index, KILN_ERR_NOMEM, "out of memory for post-ops");
    int next = first_operand;
    const uint8_t *ylo = ptr[o->out[0]], *yhi = ylo + y->nbytes;
    for (int j = 0; j < pp->n; j++) {
        kr_post_op *q = &pp->ops[j];
        q->type = (int)o->ia[at + 1 + 2 * j];
        q->alg = (int)o->ia[at + 2 + 2 * j];
        q->alpha = o->fa[2 * j];
        q->beta = o->fa[2 * j + 1];
        if (q->type == KP_POST_UNARY)
            continue;
        const kp_value *v = kr_in(o, next);
        const kp_value *ins[2] = {y, v};
        q->operand = ptr[o->in[next]];
        q->fn = kr_binary_fn(q->type == KP_POST_SUM ? KP_B_ADD : q->alg, KILN_F32, 0);
        kr_bcast_init(&q->bc, 2, ins, y->ndim, y->shape);
        next++;
        const uint8_t *lo = (const uint8_t *)q->operand, *hi = lo + v->nbytes;
        if (lo < yhi && ylo < hi) {
            q->snap_bytes = v->nbytes;
            q->snap = kiln__malloc(v->nbytes);
            if (!q->snap) {
                kr_post_free(pp);
                return kr_fail(o->p, o->index, KILN_ERR_NOMEM, "out of memory for a post-op operand");
            }
            q->snap_src = q->operand;
            q->operand = q->snap;
        }
    }
    return KILN_OK;
}

void kr_post_pre(const kr_post *pp)
{
    for (int j = 0; j < pp->n; j++)
        if (pp->ops[j].snap)
            memcpy(pp->ops[j].snap, pp->ops[j].snap_src, pp->ops[j].snap_bytes);
}

void kr_post_run(const kr_post *pp, float *y)
{
    for (int j = 0; j < pp->n; j++) {
        const kr_post_op *q = &pp->ops[j];
        if (q->type == KP_POST_UNARY) {
            kr_unary_f32(q->alg, q->alpha, q->beta, y, y, pp->numel);
            continue;
        }
        const kr_bcast *bc = &q->bc;
        int64_t idx[KILN_MAX_DIMS] = {0}, off[3] = {0};
        const int64_t sb = bc->st[1][bc->nd - 1], n = bc->inner;
        for (int64_t r = 0; r < bc->rows; r++) {
            float *row = y + r * n;
            q->fn(row, 1, q->operand + off[1], sb, row, n);
            kr_bcast_next(bc, idx, off);
        }
    }
}

void kr_post_free(kr_post *pp)
{
    for (int j = 0; pp->ops && j < pp->n; j++)
        kiln__free(pp->ops[j].snap);
    kiln__free(pp->ops);
    pp->ops = NULL;
    pp->n = 0;
}
