/*
 * test_ref_kernels.c — the plain C reference kernels (kr_check / kr_create) op kind by op
 * kind: tiny one-op programs built by hand, checked against hand-computed values (and, for
 * Conv, ConvTranspose and MatMul, against naive loops on random data).
 */
#include "kernels/kernels_impl.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- a one-op program ---- */

#define MAXV 24
static kp_value V[MAXV];
static void *PTR[MAXV];
static int NV;
static kp_op OP;
static int32_t IO[64];
static int64_t IA[128];
static float FA[64];
static char STR[] = "\0node";

static void reset(void) { NV = 0; memset(V, 0, sizeof V); }

/* A value of dtype dt and shape (nd dims) whose storage is data. */
static int val(kiln_dtype dt, int nd, const int64_t *shape, void *data)
{
    KILN_ASSERT(NV < MAXV);
    kp_value *v = &V[NV];
    v->dtype = (uint8_t)dt;
    v->ndim = (uint8_t)nd;
    for (int i = 0; i < nd; i++)
        v->shape[i] = shape[i];
    v->nbytes = (uint64_t)kiln__numel(nd, shape) * kiln_dtype_size(dt);
    PTR[NV] = data;
    return NV++;
}
#define S(...) ((const int64_t[]){__VA_ARGS__})
#define NDIM(...) ((int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))
#define VAL(dt, data, ...) val(dt, NDIM(__VA_ARGS__), S(__VA_ARGS__), data)

static void build(kp_program *p, int kind, int sub, int nin, const int *in, int nout,
                  const int *out, int nia, const int64_t *ia, int nfa, const float *fa)
{
    memset(p, 0, sizeof *p);
    memset(&OP, 0, sizeof OP);
    OP.kind = (uint16_t)kind;
    OP.sub = (uint16_t)sub;
    OP.n_in = (uint16_t)nin;
    OP.n_out = (uint16_t)nout;
    OP.name = 1;
    OP.n_ia = (uint32_t)nia;
    OP.n_fa = (uint32_t)nfa;
    for (int i = 0; i < nin; i++)
        IO[i] = in[i];
    for (int i = 0; i < nout; i++)
        IO[nin + i] = out[i];
    if (nia)
        memcpy(IA, ia, (size_t)nia * sizeof *ia);
    if (nfa)
        memcpy(FA, fa, (size_t)nfa * sizeof *fa);
    p->n_values = (uint32_t)NV;
    p->values = V;
    p->n_ops = 1;
    p->ops = &OP;
    p->n_io = (uint32_t)(nin + nout);
    p->io = IO;
    p->n_ia = (uint32_t)nia;
    p->ia = IA;
    p->n_fa = (uint32_t)nfa;
    p->fa = FA;
    p->n_strings = sizeof STR;
    p->strings = STR;
}

/* kr_check, kr_create, run, destroy. */
static kiln_status run_op(int kind, int sub, int nin, const int *in, int nout, const int *out,
                          int nia, const int64_t *ia, int nfa, const float *fa)
{
    kp_program p;
    build(&p, kind, sub, nin, in, nout, out, nia, ia, nfa, fa);
    kiln_status s = kr_check(&p, 0);
    if (s != KILN_OK)
        return s;
    kk_kernel *k = NULL;
    s = kr_create(&p, 0, PTR, &k);
    if (s != KILN_OK)
        return s;
    CHECK(k->prog == &p && k->op == 0);
    s = k->run(k);
    if (s == KILN_OK)
        s = k->run(k);  /* running twice gives the same result */
    k->destroy(k);
    return s;
}

static kiln_status check_op(int kind, int sub, int nin, const int *in, int nout, const int *out,
                            int nia, const int64_t *ia, int nfa, const float *fa)
{
    kp_program p;
    build(&p, kind, sub, nin, in, nout, out, nia, ia, nfa, fa);
    return kr_check(&p, 0);
}

#define IN(...) (int)(sizeof((const int[]){__VA_ARGS__}) / sizeof(int)), ((const int[]){__VA_ARGS__})
#define IAS(...) (int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), ((const int64_t[]){__VA_ARGS__})
#define FAS(...) (int)(sizeof((const float[]){__VA_ARGS__}) / sizeof(float)), ((const float[]){__VA_ARGS__})
#define NOIA 0, NULL
#define NOFA 0, NULL

static int close_f32(const float *got, const float *want, int64_t n, double tol)
{
    for (int64_t i = 0; i < n; i++) {
        double g = got[i], w = want[i];
        if (isnan(w) ? !isnan(g) : !(fabs(g - w) <= tol * (1 + fabs(w)))) {
            fprintf(stderr, "  element %lld: got %.9g, want %.9g\n", (long long)i, g, w);
            return 0;
        }
    }
    return 1;
}
static int close_f64(const double *got, const double *want, int64_t n, double tol)
{
    for (int64_t i = 0; i < n; i++)
        if (!(fabs(got[i] - want[i]) <= tol * (1 + fabs(want[i])))) {
            fprintf(stderr, "  element %lld: got %.17g, want %.17g\n", (long long)i, got[i], want[i]);
            return 0;
        }
    return 1;
}
#define SAME(got, want, n) CHECK(memcmp((got), (want), (n) * sizeof *(got)) == 0)
#define NEAR(got, want, n) CHECK(close_f32((got), (want), (n), 1e-5))

static uint32_t rng = 12345;
static float frand(void)
{
    rng = rng * 1664525u + 1013904223u;
    return (float)((rng >> 8) & 0xffff) / 32768.0f - 1.0f;
}
static void fill_rand(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = frand();
}

/* ================================ element-wise ================================ */

static void test_unary(void)
{
    {
        float x[6] = {-2, -0.5f, 0, 0.5f, 1, 3}, y[6];
        float relu[6] = {0, 0, 0, 0.5f, 1, 3};
        reset();
        int a = VAL(KILN_F32, x, 2, 3), b = VAL(KILN_F32, y, 2, 3);
        CHECK_OK(run_op(KP_UNARY, KP_U_RELU, IN(a), IN(b), NOIA, FAS(0, 0)));
        NEAR(y, relu, 6);
        CHECK_OK(run_op(KP_UNARY, KP_U_LEAKY_RELU, IN(a), IN(b), NOIA, FAS(0.1f, 0)));
        float lrelu[6] = {-0.2f, -0.05f, 0, 0.5f, 1, 3};
        NEAR(y, lrelu, 6);
        CHECK_OK(run_op(KP_UNARY, KP_U_CLIP, IN(a), IN(b), NOIA, FAS(-1, 0.75f)));
        float clip[6] = {-1, -0.5f, 0, 0.5f, 0.75f, 0.75f};
        NEAR(y, clip, 6);
        CHECK_OK(run_op(KP_UNARY, KP_U_SIGMOID, IN(a), IN(b), NOIA, FAS(0, 0)));
        for (int i = 0; i < 6; i++)
            CHECK(fabsf(y[i] - 1.0f / (1.0f + expf(-x[i]))) < 1e-6f);
        CHECK_OK(run_op(KP_UNARY, KP_U_GELU, IN(a), IN(b), NOIA, FAS(0, 0)));
        float gelu[6] = {-0.0455002639f, -0.154268769f, 0, 0.345731231f, 0.841344746f, 2.99595031f};
        NEAR(y, gelu, 6);
        CHECK_OK(run_op(KP_UNARY, KP_U_GELU_TANH, IN(a), IN(b), NOIA, FAS(0, 0)));
        float gelut[6] = {-0.0454023059f, -0.15428599f, 0, 0.34571401f, 0.84119199f, 2.99636261f};
        NEAR(y, gelut, 6);
        CHECK_OK(run_op(KP_UNARY, KP_U_HARD_SWISH, IN(a), IN(b), NOIA, FAS(0, 0)));
        float hsw[6] = {-1.0f / 3, -0.5f * 2.5f / 6, 0, 0.5f * 3.5f / 6, 4.0f / 6, 3};
        NEAR(y, hsw, 6);
        CHECK_OK(run_op(KP_UNARY, KP_U_HARD_SIGMOID, IN(a), IN(b), NOIA, FAS(0.2f, 0.5f)));
        float hsg[6] = {0.1f, 0.4f, 0.5f, 0.6f, 0.7f, 1};
        NEAR(y, hsg, 6);
        CHECK_OK(run_op(KP_UNARY, KP_U_ELU, IN(a), IN(b), NOIA, FAS(1, 0)));
        CHECK(fabsf(y[0] - (expf(-2) - 1)) < 1e-6f && y[5] == 3);
        CHECK_OK(run_op(KP_UNARY, KP_U_SELU, IN(a), IN(b), NOIA, FAS(1.67326319f, 1.05070102f)));
        CHECK(fabsf(y[0] - 1.05070102f * 1.67326319f * (expf(-2) - 1)) < 1e-5f && fabsf(y[5] - 3 * 1.05070102f) < 1e-5f);
        CHECK_OK(run_op(KP_UNARY, KP_U_SOFTPLUS, IN(a), IN(b), NOIA, FAS(0, 0)));
        CHECK(fabsf(y[0] - logf(1 + expf(-2))) < 1e-6f && fabsf(y[5] - logf(1 + expf(3))) < 1e-6f);
        CHECK_OK(run_op(KP_UNARY, KP_U_MISH, IN(a), IN(b), NOIA, FAS(0, 0)));
        CHECK(fabsf(y[4] - tanhf(logf(1 + expf(1)))) < 1e-6f);
        CHECK_OK(run_op(KP_UNARY, KP_U_THRESHOLDED_RELU, IN(a), IN(b), NOIA, FAS(0.5f, 0)));
        float thr[6] = {0, 0, 0, 0, 1, 3};
        NEAR(y, thr, 6);
        CHECK_OK(run_op(KP_UNARY, KP_U_POW_SCALAR, IN(a), IN(b), NOIA, FAS(2, 0)));
        float sq[6] = {4, 0.25f, 0, 0.25f, 1, 9};
        NEAR(y, sq, 6);
        CHECK_OK(run_op(KP_UNARY, KP_U_LINEAR, IN(a), IN(b), NOIA, FAS(2, 1)));
        float lin[6] = {-3, 0, 1, 2, 3, 7};
        NEAR(y, lin, 6);
        CHECK_OK(run_op(KP_UNARY, KP_U_IDENTITY, IN(a), IN(b), NOIA, NOFA));
        SAME(y, x, 6);
    }
    {   /* Round: half to even; Sign; f64 */
        double x[8] = {0.5, 1.5, 2.5, -0.5, -1.5, 2.4, -2.6, 0}, y[8];
        double rnd[8] = {0, 2, 2, -0.0, -2, 2, -3, 0};
        reset();
        int a = VAL(KILN_F64, x, 8), b = VAL(KILN_F64, y, 8);
        CHECK_OK(run_op(KP_UNARY, KP_U_ROUND, IN(a), IN(b), NOIA, FAS(0, 0)));
        CHECK(close_f64(y, rnd, 8, 0));
        CHECK_OK(run_op(KP_UNARY, KP_U_SIGN, IN(a), IN(b), NOIA, FAS(0, 0)));
        double sgn[8] = {1, 1, 1, -1, -1, 1, -1, 0};
        CHECK(close_f64(y, sgn, 8, 0));
        CHECK_OK(run_op(KP_UNARY, KP_U_EXP, IN(a), IN(b), NOIA, FAS(0, 0)));
        CHECK(fabs(y[1] - exp(1.5)) < 1e-15);
    }
    {   /* integers: Abs, Neg, Sign, Clip, Relu */
        int64_t x[5] = {-5, -1, 0, 2, INT64_MIN}, y[5];
        reset();
        int a = VAL(KILN_I64, x, 5), b = VAL(KILN_I64, y, 5);
        CHECK_OK(run_op(KP_UNARY, KP_U_ABS, IN(a), IN(b), NOIA, FAS(0, 0)));
        int64_t ab[5] = {5, 1, 0, 2, INT64_MIN};
        SAME(y, ab, 5);
        CHECK_OK(run_op(KP_UNARY, KP_U_NEG, IN(a), IN(b), NOIA, FAS(0, 0)));
        int64_t ng[5] = {5, 1, 0, -2, INT64_MIN};
        SAME(y, ng, 5);
        CHECK_OK(run_op(KP_UNARY, KP_U_CLIP, IN(a), IN(b), NOIA, FAS(-2, INFINITY)));
        int64_t cl[5] = {-2, -1, 0, 2, -2};
        SAME(y, cl, 5);
        int32_t xi[4] = {-3, 0, 7, -8}, yi[4];
        int c = VAL(KILN_I32, xi, 4), d = VAL(KILN_I32, yi, 4);
        CHECK_OK(run_op(KP_UNARY, KP_U_SIGN, IN(c), IN(d), NOIA, FAS(0, 0)));
        int32_t sg[4] = {-1, 0, 1, -1};
        SAME(yi, sg, 4);
        CHECK_OK(run_op(KP_UNARY, KP_U_RELU, IN(c), IN(d), NOIA, FAS(0, 0)));
        int32_t rl[4] = {0, 0, 7, 0};
        SAME(yi, rl, 4);
    }
    {   /* Not, IsNaN, IsInf */
        uint8_t b[3] = {0, 1, 0}, nb[3];
        float x[4] = {NAN, INFINITY, -INFINITY, 1};
        uint8_t m[4];
        reset();
        int a = VAL(KILN_BOOL, b, 3), c = VAL(KILN_BOOL, nb, 3);
        int fx = VAL(KILN_F32, x, 4), fm = VAL(KILN_BOOL, m, 4);
        CHECK_OK(run_op(KP_UNARY, KP_U_NOT, IN(a), IN(c), NOIA, FAS(0, 0)));
        uint8_t want[3] = {1, 0, 1};
        SAME(nb, want, 3);
        CHECK_OK(run_op(KP_UNARY, KP_U_ISNAN, IN(fx), IN(fm), NOIA, FAS(0, 0)));
        uint8_t isn[4] = {1, 0, 0, 0};
        SAME(m, isn, 4);
        CHECK_OK(run_op(KP_UNARY, KP_U_ISINF, IN(fx), IN(fm), NOIA, FAS(0, 1)));
        uint8_t isi[4] = {0, 1, 0, 0};
        SAME(m, isi, 4);
        CHECK_OK(run_op(KP_UNARY, KP_U_ISINF, IN(fx), IN(fm), NOIA, FAS(1, 1)));
        uint8_t isi2[4] = {0, 1, 1, 0};
        SAME(m, isi2, 4);
        /* refused: Not on floats, Exp on ints, anything on f16 */
        CHECK_STATUS(check_op(KP_UNARY, KP_U_NOT, IN(fx), IN(fx), NOIA, FAS(0, 0)), KILN_ERR_UNSUPPORTED);
        int64_t xi[1];
        int ii = VAL(KILN_I64, xi, 1);
        CHECK_STATUS(check_op(KP_UNARY, KP_U_EXP, IN(ii), IN(ii), NOIA, FAS(0, 0)), KILN_ERR_UNSUPPORTED);
        uint16_t h[1];
        int hh = VAL(KILN_F16, h, 1);
        CHECK_STATUS(check_op(KP_UNARY, KP_U_RELU, IN(hh), IN(hh), NOIA, FAS(0, 0)), KILN_ERR_UNSUPPORTED);
        CHECK(strstr(kiln_last_error(), "node") != NULL);
        CHECK_STATUS(check_op(KP_UNARY, KP_UNARY_COUNT, IN(fx), IN(fx), NOIA, FAS(0, 0)), KILN_ERR_UNSUPPORTED);
    }
}

static void test_binary(void)
{
    {   /* [2,3] + [3], [2,1] * [1,3], scalar - [2,3] */
        float a[6] = {1, 2, 3, 4, 5, 6}, b[3] = {10, 20, 30}, c[2] = {2, 3}, d[3] = {1, 2, 3}, s = 1, y[6];
        reset();
        int va = VAL(KILN_F32, a, 2, 3), vb = VAL(KILN_F32, b, 3), vc = VAL(KILN_F32, c, 2, 1);
        int vd = VAL(KILN_F32, d, 1, 3), vs = val(KILN_F32, 0, NULL, &s), vy = VAL(KILN_F32, y, 2, 3);
        CHECK_OK(run_op(KP_BINARY, KP_B_ADD, IN(va, vb), IN(vy), NOIA, NOFA));
        float w1[6] = {11, 22, 33, 14, 25, 36};
        NEAR(y, w1, 6);
        CHECK_OK(run_op(KP_BINARY, KP_B_MUL, IN(vc, vd), IN(vy), NOIA, NOFA));
        float w2[6] = {2, 4, 6, 3, 6, 9};
        NEAR(y, w2, 6);
        CHECK_OK(run_op(KP_BINARY, KP_B_SUB, IN(vs, va), IN(vy), NOIA, NOFA));
        float w3[6] = {0, -1, -2, -3, -4, -5};
        NEAR(y, w3, 6);
        CHECK_OK(run_op(KP_BINARY, KP_B_DIV, IN(va, vb), IN(vy), NOIA, NOFA));
        float w4[6] = {0.1f, 0.1f, 0.1f, 0.4f, 0.25f, 0.2f};
        NEAR(y, w4, 6);
        CHECK_OK(run_op(KP_BINARY, KP_B_PRELU, IN(va, vb), IN(vy), NOIA, NOFA));
        NEAR(y, a, 6);
        /* shapes that do not broadcast */
        float z[4];
        int vz = VAL(KILN_F32, z, 4);
        CHECK_STATUS(check_op(KP_BINARY, KP_B_ADD, IN(va, vz), IN(vy), NOIA, NOFA), KILN_ERR_UNSUPPORTED);
    }
    {   /* PRelu with negative inputs and slope per channel [2,1] */
        float x[4] = {-1, 2, -3, 4}, sl[2] = {0.5f, 0.25f}, y[4];
        reset();
        int vx = VAL(KILN_F32, x, 2, 2), vs = VAL(KILN_F32, sl, 2, 1), vy = VAL(KILN_F32, y, 2, 2);
        CHECK_OK(run_op(KP_BINARY, KP_B_PRELU, IN(vx, vs), IN(vy), NOIA, NOFA));
        float w[4] = {-0.5f, 2, -0.75f, 4};
        NEAR(y, w, 4);
    }
    {   /* Max/Min propagate NaN like numpy; Pow */
        float a[4] = {1, NAN, 3, -2}, b[4] = {2, 1, NAN, -3}, y[4];
        reset();
        int va = VAL(KILN_F32, a, 4), vb = VAL(KILN_F32, b, 4), vy = VAL(KILN_F32, y, 4);
        CHECK_OK(run_op(KP_BINARY, KP_B_MAX, IN(va, vb), IN(vy), NOIA, NOFA));
        CHECK(y[0] == 2 && isnan(y[1]) && isnan(y[2]) && y[3] == -2);
        CHECK_OK(run_op(KP_BINARY, KP_B_MIN, IN(va, vb), IN(vy), NOIA, NOFA));
        CHECK(y[0] == 1 && isnan(y[1]) && isnan(y[2]) && y[3] == -3);
        CHECK_OK(run_op(KP_BINARY, KP_B_POW, IN(va, vb), IN(vy), NOIA, NOFA));
        CHECK(y[0] == 1 && fabsf(y[3] - (-0.125f)) < 1e-7f);
    }
    {   /* integer Div truncates; Mod (python / fmod); division by zero does not trap */
        int32_t a[6] = {-7, 7, -7, 7, 5, INT32_MIN}, b[6] = {2, -2, 3, -3, 0, -1}, y[6];
        reset();
        int va = VAL(KILN_I32, a, 6), vb = VAL(KILN_I32, b, 6), vy = VAL(KILN_I32, y, 6);
        CHECK_OK(run_op(KP_BINARY, KP_B_DIV, IN(va, vb), IN(vy), NOIA, NOFA));
        int32_t dv[6] = {-3, -3, -2, -2, 0, INT32_MIN};
        SAME(y, dv, 6);
        CHECK_OK(run_op(KP_BINARY, KP_B_MOD, IN(va, vb), IN(vy), IAS(0), NOFA));
        int32_t md[6] = {1, -1, 2, -2, 0, 0};
        SAME(y, md, 6);
        CHECK_OK(run_op(KP_BINARY, KP_B_MOD, IN(va, vb), IN(vy), IAS(1), NOFA));
        int32_t fm[6] = {-1, 1, -1, 1, 0, 0};
        SAME(y, fm, 6);
        CHECK_STATUS(check_op(KP_BINARY, KP_B_MOD, IN(va, vb), IN(vy), NOIA, NOFA), KILN_ERR_UNSUPPORTED);
        CHECK_OK(run_op(KP_BINARY, KP_B_ADD, IN(va, vb), IN(vy), NOIA, NOFA));
        CHECK(y[5] == INT32_MAX);   /* wraps */
        CHECK_OK(run_op(KP_BINARY, KP_B_SUB, IN(va, vb), IN(vy), NOIA, NOFA));
        int32_t sb[6] = {-9, 9, -10, 10, 5, INT32_MIN + 1};
        SAME(y, sb, 6);
    }
    {   /* float Mod, fmod = 1 and 0 */
        float a[4] = {-4.3f, 4.3f, 5.0f, -5.0f}, b[4] = {2.1f, -2.1f, 3.0f, 3.0f}, y[4];
        reset();
        int va = VAL(KILN_F32, a, 4), vb = VAL(KILN_F32, b, 4), vy = VAL(KILN_F32, y, 4);
        CHECK_OK(run_op(KP_BINARY, KP_B_MOD, IN(va, vb), IN(vy), IAS(1), NOFA));
        float w[4] = {fmodf(-4.3f, 2.1f), fmodf(4.3f, -2.1f), 2, -2};
        NEAR(y, w, 4);
        CHECK_OK(run_op(KP_BINARY, KP_B_MOD, IN(va, vb), IN(vy), IAS(0), NOFA));
        float w2[4] = {fmodf(-4.3f, 2.1f) + 2.1f, fmodf(4.3f, -2.1f) - 2.1f, 2, 1};
        NEAR(y, w2, 4);
    }
    {   /* Pow of int32 by float (mixed), int64 by int64 */
        int32_t a[3] = {1, 2, 3}, y[3];
        float e[3] = {4, 5, 6};
        int64_t ai[4] = {2, -3, 2, 5}, ei[4] = {10, 3, -1, 0}, yi[4];
        reset();
        int va = VAL(KILN_I32, a, 3), ve = VAL(KILN_F32, e, 3), vy = VAL(KILN_I32, y, 3);
        CHECK_OK(run_op(KP_BINARY, KP_B_POW, IN(va, ve), IN(vy), NOIA, NOFA));
        int32_t w[3] = {1, 32, 729};
        SAME(y, w, 3);
        int vai = VAL(KILN_I64, ai, 4), vei = VAL(KILN_I64, ei, 4), vyi = VAL(KILN_I64, yi, 4);
        CHECK_OK(run_op(KP_BINARY, KP_B_POW, IN(vai, vei), IN(vyi), NOIA, NOFA));
        int64_t wi[4] = {1024, -27, 0, 1};
        SAME(yi, wi, 4);
    }
    {   /* comparisons and logic -> bool; Equal on bool */
        int64_t a[4] = {1, 2, 3, 4}, b[1] = {3};
        uint8_t y[4];
        reset();
        int va = VAL(KILN_I64, a, 4), vb = VAL(KILN_I64, b, 1), vy = VAL(KILN_BOOL, y, 4);
        CHECK_OK(run_op(KP_BINARY, KP_B_LESS, IN(va, vb), IN(vy), NOIA, NOFA));
        uint8_t lt[4] = {1, 1, 0, 0};
        SAME(y, lt, 4);
        CHECK_OK(run_op(KP_BINARY, KP_B_GREATER_EQUAL, IN(va, vb), IN(vy), NOIA, NOFA));
        uint8_t ge[4] = {0, 0, 1, 1};
        SAME(y, ge, 4);
        CHECK_OK(run_op(KP_BINARY, KP_B_EQUAL, IN(va, vb), IN(vy), NOIA, NOFA));
        uint8_t eq[4] = {0, 0, 1, 0};
        SAME(y, eq, 4);
        uint8_t p[4] = {0, 0, 1, 1}, q[4] = {0, 1, 0, 1}, r[4];
        int vp = VAL(KILN_BOOL, p, 4), vq = VAL(KILN_BOOL, q, 4), vr = VAL(KILN_BOOL, r, 4);
        CHECK_OK(run_op(KP_BINARY, KP_B_AND, IN(vp, vq), IN(vr), NOIA, NOFA));
        uint8_t an[4] = {0, 0, 0, 1};
        SAME(r, an, 4);
        CHECK_OK(run_op(KP_BINARY, KP_B_OR, IN(vp, vq), IN(vr), NOIA, NOFA));
        uint8_t orr[4] = {0, 1, 1, 1};
        SAME(r, orr, 4);
        CHECK_OK(run_op(KP_BINARY, KP_B_XOR, IN(vp, vq), IN(vr), NOIA, NOFA));
        uint8_t xo[4] = {0, 1, 1, 0};
        SAME(r, xo, 4);
        CHECK_OK(run_op(KP_BINARY, KP_B_EQUAL, IN(vp, vq), IN(vr), NOIA, NOFA));
        uint8_t eb[4] = {1, 0, 0, 1};
        SAME(r, eb, 4);
        /* a comparison must produce bool; And must take bool */
        CHECK_STATUS(check_op(KP_BINARY, KP_B_LESS, IN(va, vb), IN(va), NOIA, NOFA), KILN_ERR_UNSUPPORTED);
        CHECK_STATUS(check_op(KP_BINARY, KP_B_AND, IN(va, vb), IN(vy), NOIA, NOFA), KILN_ERR_UNSUPPORTED);
    }
    {   /* BitShift on u8, f64 add, i8 Max */
        uint8_t a[3] = {16, 4, 1}, b[3] = {1, 2, 9}, y[3];
        reset();
        int va = VAL(KILN_U8, a, 3), vb = VAL(KILN_U8, b, 3), vy = VAL(KILN_U8, y, 3);
        CHECK_OK(run_op(KP_BINARY, KP_B_BITSHIFT_RIGHT, IN(va, vb), IN(vy), NOIA, NOFA));
        uint8_t r[3] = {8, 1, 0};
        SAME(y, r, 3);
        CHECK_OK(run_op(KP_BINARY, KP_B_BITSHIFT_LEFT, IN(va, vb), IN(vy), NOIA, NOFA));
        uint8_t l[3] = {32, 16, 0};
        SAME(y, l, 3);
        CHECK_OK(run_op(KP_BINARY, KP_B_DIV, IN(va, vb), IN(vy), NOIA, NOFA));
        uint8_t d[3] = {16, 2, 0};
        SAME(y, d, 3);
        double x1[2] = {0.1, 0.2}, x2[2] = {0.3, 0.4}, z[2];
        int v1 = VAL(KILN_F64, x1, 2), v2 = VAL(KILN_F64, x2, 2), vz = VAL(KILN_F64, z, 2);
        CHECK_OK(run_op(KP_BINARY, KP_B_ADD, IN(v1, v2), IN(vz), NOIA, NOFA));
        CHECK(z[0] == 0.1 + 0.3 && z[1] == 0.2 + 0.4);
        int8_t i1[3] = {-5, 3, 0}, i2[1] = {-1}, i3[3];
        int w1 = VAL(KILN_I8, i1, 3), w2 = VAL(KILN_I8, i2, 1), w3 = VAL(KILN_I8, i3, 3);
        CHECK_OK(run_op(KP_BINARY, KP_B_MAX, IN(w1, w2), IN(w3), NOIA, NOFA));
        int8_t mx[3] = {-1, 3, 0};
        SAME(i3, mx, 3);
    }
}

static void test_where(void)
{
    uint8_t c[2] = {1, 0};
    int64_t x[3] = {1, 2, 3}, y[1] = {-1}, z[6];
    reset();
    int vc = VAL(KILN_BOOL, c, 2, 1), vx = VAL(KILN_I64, x, 3), vy = VAL(KILN_I64, y, 1);
    int vz = VAL(KILN_I64, z, 2, 3);
    CHECK_OK(run_op(KP_WHERE, 0, IN(vc, vx, vy), IN(vz), NOIA, NOFA));
    int64_t w[6] = {1, 2, 3, -1, -1, -1};
    SAME(z, w, 6);
    float f[4] = {1, 2, 3, 4}, g[4] = {5, 6, 7, 8}, h[4];
    uint8_t cc[4] = {0, 1, 1, 0};
    int a = VAL(KILN_BOOL, cc, 4), b = VAL(KILN_F32, f, 4), d = VAL(KILN_F32, g, 4), e = VAL(KILN_F32, h, 4);
    CHECK_OK(run_op(KP_WHERE, 0, IN(a, b, d), IN(e), NOIA, NOFA));
    float wf[4] = {5, 2, 3, 8};
    SAME(h, wf, 4);
    CHECK_STATUS(check_op(KP_WHERE, 0, IN(b, b, d), IN(e), NOIA, NOFA), KILN_ERR_UNSUPPORTED);
}

static void test_cast(void)
{
    float x[6] = {-1.7f, 0.0f, 2.9f, 1.0f, 65504.0f, -0.0f};
    int32_t i[6];
    uint8_t b[6];
    uint16_t h[6], bf[6];
    float back[6];
    double d[6];
    reset();
    int vx = VAL(KILN_F32, x, 6), vi = VAL(KILN_I32, i, 6), vb = VAL(KILN_BOOL, b, 6);
    int vh = VAL(KILN_F16, h, 6), vbf = VAL(KILN_BF16, bf, 6), vback = VAL(KILN_F32, back, 6);
    int vd = VAL(KILN_F64, d, 6);
    CHECK_OK(run_op(KP_CAST, 0, IN(vx), IN(vi), NOIA, NOFA));
    int32_t wi[6] = {-1, 0, 2, 1, 65504, 0};
    SAME(i, wi, 6);
    CHECK_OK(run_op(KP_CAST, 0, IN(vx), IN(vb), NOIA, NOFA));
    uint8_t wb[6] = {1, 0, 1, 1, 1, 0};
    SAME(b, wb, 6);
    CHECK_OK(run_op(KP_CAST, 0, IN(vx), IN(vh), NOIA, NOFA));
    CHECK(h[3] == 0x3C00 && h[4] == 0x7BFF && h[1] == 0 && h[5] == 0x8000);
    CHECK_OK(run_op(KP_CAST, 0, IN(vh), IN(vback), NOIA, NOFA));
    CHECK(back[3] == 1.0f && back[4] == 65504.0f && back[0] == -1.7001953125f);
    CHECK_OK(run_op(KP_CAST, 0, IN(vx), IN(vbf), NOIA, NOFA));
    CHECK(bf[3] == 0x3F80 && bf[0] == 0xBFDA);   /* -1.7 rounds to -1.703125 */
    CHECK_OK(run_op(KP_CAST, 0, IN(vbf), IN(vd), NOIA, NOFA));
    CHECK(d[3] == 1.0 && d[0] == -1.703125 && d[4] == 65536.0);
    CHECK_OK(run_op(KP_CAST, 0, IN(vh), IN(vi), NOIA, NOFA));
    SAME(i, wi, 6);
    /* f16 specials: NaN, inf, overflow, subnormals, round to even */
    double s[7] = {NAN, INFINITY, 70000.0, 5.960464477539063e-08, 2.98e-08, 1.00048828125, -1e-10};
    uint16_t hs[7];
    int vs = VAL(KILN_F64, s, 7), vhs = VAL(KILN_F16, hs, 7);
    CHECK_OK(run_op(KP_CAST, 0, IN(vs), IN(vhs), NOIA, NOFA));
    CHECK((hs[0] & 0x7C00) == 0x7C00 && (hs[0] & 0x3FF) != 0);
    CHECK(hs[1] == 0x7C00 && hs[2] == 0x7C00 && hs[3] == 0x0001 && hs[4] == 0x0000);
    CHECK(hs[5] == 0x3C00 && hs[6] == 0x8000);
    /* integers: i64 -> i8 wraps, bool -> f32, u8 -> i64 */
    int64_t l[3] = {300, -1, 127};
    int8_t c8[3];
    int vl = VAL(KILN_I64, l, 3), vc8 = VAL(KILN_I8, c8, 3);
    CHECK_OK(run_op(KP_CAST, 0, IN(vl), IN(vc8), NOIA, NOFA));
    int8_t wc8[3] = {44, -1, 127};
    SAME(c8, wc8, 3);
    uint8_t bb[3] = {1, 0, 1};
    float fb[3];
    int vbb = VAL(KILN_BOOL, bb, 3), vfb = VAL(KILN_F32, fb, 3);
    CHECK_OK(run_op(KP_CAST, 0, IN(vbb), IN(vfb), NOIA, NOFA));
    float wfb[3] = {1, 0, 1};
    SAME(fb, wfb, 3);
    /* NaN -> int does not trap */
    float nn[1] = {NAN};
    int64_t ni[1];
    int vnn = VAL(KILN_F32, nn, 1), vni = VAL(KILN_I64, ni, 1);
    CHECK_OK(run_op(KP_CAST, 0, IN(vnn), IN(vni), NOIA, NOFA));
}

/* ================================ data movement ================================ */

static void test_gather(void)
{
    float x[6] = {1, 2, 3, 4, 5, 6}, y[6];
    int64_t idx[2] = {2, 0}, neg[2] = {-1, 0}, bad[2] = {0, 3};
    int32_t idx32[2][1] = {{1}, {0}};
    reset();
    int vx = VAL(KILN_F32, x, 3, 2), vi = VAL(KILN_I64, idx, 2), vy = VAL(KILN_F32, y, 2, 2);
    CHECK_OK(run_op(KP_GATHER, 0, IN(vx, vi), IN(vy), IAS(0), NOFA));
    float w[4] = {5, 6, 1, 2};
    SAME(y, w, 4);
    int vn = VAL(KILN_I64, neg, 2);
    CHECK_OK(run_op(KP_GATHER, 0, IN(vx, vn), IN(vy), IAS(0), NOFA));
    float wn[4] = {5, 6, 1, 2};
    SAME(y, wn, 4);
    int vi32 = VAL(KILN_I32, idx32, 2, 1), vy3 = VAL(KILN_F32, y, 3, 2, 1);
    CHECK_OK(run_op(KP_GATHER, 0, IN(vx, vi32), IN(vy3), IAS(1), NOFA));
    float w1[6] = {2, 1, 4, 3, 6, 5};
    SAME(y, w1, 6);
    int vb = VAL(KILN_I64, bad, 2);
    CHECK_STATUS(run_op(KP_GATHER, 0, IN(vx, vb), IN(vy), IAS(0), NOFA), KILN_ERR_ARG);
    CHECK(strstr(kiln_last_error(), "Gather 'node'") != NULL && strstr(kiln_last_error(), "3") != NULL);
    /* scalar index removes the axis */
    int64_t one = 1;
    float ys[2];
    int vone = val(KILN_I64, 0, NULL, &one), vys = VAL(KILN_F32, ys, 2);
    CHECK_OK(run_op(KP_GATHER, 0, IN(vx, vone), IN(vys), IAS(0), NOFA));
    CHECK(ys[0] == 3 && ys[1] == 4);
    CHECK_STATUS(check_op(KP_GATHER, 0, IN(vx, vone), IN(vys), IAS(2), NOFA), KILN_ERR_UNSUPPORTED);
}

static void test_transpose(void)
{
    int32_t x[24], y[24];
    for (int i = 0; i < 24; i++)
        x[i] = i;
    reset();
    int vx = VAL(KILN_I32, x, 2, 3, 4), vy = VAL(KILN_I32, y, 4, 2, 3);
    CHECK_OK(run_op(KP_TRANSPOSE, 0, IN(vx), IN(vy), IAS(2, 0, 1), NOFA));
    int ok = 1;
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 3; b++)
            for (int c = 0; c < 4; c++)
                ok &= y[(c * 2 + a) * 3 + b] == x[(a * 3 + b) * 4 + c];
    CHECK(ok);
    CHECK_STATUS(check_op(KP_TRANSPOSE, 0, IN(vx), IN(vy), IAS(2, 0, 0), NOFA), KILN_ERR_UNSUPPORTED);
    /* a big 2-D transpose (the tiled path), 8-byte elements */
    enum { R = 67, C = 45 };
    static int64_t bx[R * C], by[R * C];
    for (int i = 0; i < R * C; i++)
        bx[i] = i * 7;
    int vbx = VAL(KILN_I64, bx, R, C), vby = VAL(KILN_I64, by, C, R);
    CHECK_OK(run_op(KP_TRANSPOSE, 0, IN(vbx), IN(vby), IAS(1, 0), NOFA));
    ok = 1;
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++)
            ok &= by[c * R + r] == bx[r * C + c];
    CHECK(ok);
}

static void test_slice(void)
{
    float x[20], y[6];
    for (int i = 0; i < 20; i++)
        x[i] = (float)i;
    reset();
    int vx = VAL(KILN_F32, x, 4, 5);
    /* rows 3, 1 (step -2); columns 4, 2, 0 (step -2) */
    int vy = VAL(KILN_F32, y, 2, 3);
    CHECK_OK(run_op(KP_SLICE, 0, IN(vx), IN(vy), IAS(3, 4, -2, -2), NOFA));
    float w[6] = {19, 17, 15, 9, 7, 5};
    SAME(y, w, 6);
    int vy2 = VAL(KILN_F32, y, 1, 3);
    CHECK_OK(run_op(KP_SLICE, 0, IN(vx), IN(vy2), IAS(2, 1, 1, 1), NOFA));
    float w2[3] = {11, 12, 13};
    SAME(y, w2, 3);
    /* runs past the end */
    CHECK_STATUS(check_op(KP_SLICE, 0, IN(vx), IN(vy), IAS(3, 4, 1, 1), NOFA), KILN_ERR_UNSUPPORTED);
    /* empty output is fine */
    int ve = VAL(KILN_F32, y, 0, 5);
    CHECK_OK(run_op(KP_SLICE, 0, IN(vx), IN(ve), IAS(0, 0, 1, 1), NOFA));
}

static void test_concat_split(void)
{
    int64_t a[4] = {1, 2, 3, 4}, b[2] = {5, 6}, y[6];
    reset();
    int va = VAL(KILN_I64, a, 2, 2), vb = VAL(KILN_I64, b, 2, 1), vy = VAL(KILN_I64, y, 2, 3);
    CHECK_OK(run_op(KP_CONCAT, 0, IN(va, vb), IN(vy), IAS(1), NOFA));
    int64_t w[6] = {1, 2, 5, 3, 4, 6};
    SAME(y, w, 6);
    int64_t p[2], q[4];
    int vp = VAL(KILN_I64, p, 2, 1), vq = VAL(KILN_I64, q, 2, 2);
    CHECK_OK(run_op(KP_SPLIT, 0, IN(vy), IN(vp, vq), IAS(1), NOFA));
    int64_t wp[2] = {1, 3}, wq[4] = {2, 5, 4, 6};
    SAME(p, wp, 2);
    SAME(q, wq, 4);
    uint8_t s[6] = {1, 2, 3, 4, 5, 6}, s1[2], s2[4];
    int vs = VAL(KILN_U8, s, 6), v1 = VAL(KILN_U8, s1, 2), v2 = VAL(KILN_U8, s2, 4);
    CHECK_OK(run_op(KP_SPLIT, 0, IN(vs), IN(v1, v2), IAS(0), NOFA));
    CHECK(s1[1] == 2 && s2[0] == 3 && s2[3] == 6);
    CHECK_STATUS(check_op(KP_CONCAT, 0, IN(va, va), IN(vy), IAS(1), NOFA), KILN_ERR_UNSUPPORTED);
}

static void test_copy_expand_tile(void)
{
    float x[3] = {1, 2, 3}, c[3];
    reset();
    int vx = VAL(KILN_F32, x, 3, 1), vc = VAL(KILN_F32, c, 1, 3);
    CHECK_OK(run_op(KP_COPY, 0, IN(vx), IN(vc), NOIA, NOFA));
    SAME(c, x, 3);
    float e[24];
    int ve = VAL(KILN_F32, e, 2, 3, 4);
    CHECK_OK(run_op(KP_EXPAND, 0, IN(vx), IN(ve), NOIA, NOFA));
    int ok = 1;
    for (int i = 0; i < 24; i++)
        ok &= e[i] == x[(i / 4) % 3];
    CHECK(ok);
    CHECK_STATUS(check_op(KP_EXPAND, 0, IN(ve), IN(vx), NOIA, NOFA), KILN_ERR_UNSUPPORTED);
    uint8_t t[4] = {1, 2, 3, 4}, ty[24];
    int vt = VAL(KILN_U8, t, 2, 2), vty = VAL(KILN_U8, ty, 4, 6);
    CHECK_OK(run_op(KP_TILE, 0, IN(vt), IN(vty), NOIA, NOFA));
    ok = 1;
    for (int r = 0; r < 4; r++)
        for (int q = 0; q < 6; q++)
            ok &= ty[r * 6 + q] == t[(r % 2) * 2 + q % 2];
    CHECK(ok);
}

static void test_pad(void)
{
    float x[6] = {1, 2, 3, 4, 5, 6}, y[40];
    reset();
    int vx = VAL(KILN_F32, x, 2, 3);
    int vy = VAL(KILN_F32, y, 4, 5);   /* pads: rows 1, 1; cols 2, 0 */
    CHECK_OK(run_op(KP_PAD, KP_PAD_CONSTANT, IN(vx), IN(vy), IAS(1, 2, 1, 0), FAS(9)));
    float wc[20] = {9, 9, 9, 9, 9, 9, 9, 1, 2, 3, 9, 9, 4, 5, 6, 9, 9, 9, 9, 9};
    SAME(y, wc, 20);
    CHECK_OK(run_op(KP_PAD, KP_PAD_REFLECT, IN(vx), IN(vy), IAS(1, 2, 1, 0), FAS(0)));
    float wr[20] = {6, 5, 4, 5, 6, 3, 2, 1, 2, 3, 6, 5, 4, 5, 6, 3, 2, 1, 2, 3};
    SAME(y, wr, 20);
    CHECK_OK(run_op(KP_PAD, KP_PAD_EDGE, IN(vx), IN(vy), IAS(1, 2, 1, 0), FAS(0)));
    float we[20] = {1, 1, 1, 2, 3, 1, 1, 1, 2, 3, 4, 4, 4, 5, 6, 4, 4, 4, 5, 6};
    SAME(y, we, 20);
    CHECK_OK(run_op(KP_PAD, KP_PAD_WRAP, IN(vx), IN(vy), IAS(1, 2, 1, 0), FAS(0)));
    float ww[20] = {5, 6, 4, 5, 6, 2, 3, 1, 2, 3, 5, 6, 4, 5, 6, 2, 3, 1, 2, 3};
    SAME(y, ww, 20);
    /* negative pads crop: drop the first column, add one at the end */
    int vy2 = VAL(KILN_F32, y, 2, 3);
    CHECK_OK(run_op(KP_PAD, KP_PAD_CONSTANT, IN(vx), IN(vy2), IAS(0, -1, 0, 1), FAS(0)));
    float wn[6] = {2, 3, 0, 5, 6, 0};
    SAME(y, wn, 6);
    /* int64 constant */
    int64_t xi[2] = {7, 8}, yi[4];
    int vxi = VAL(KILN_I64, xi, 2), vyi = VAL(KILN_I64, yi, 4);
    CHECK_OK(run_op(KP_PAD, KP_PAD_CONSTANT, IN(vxi), IN(vyi), IAS(1, 1), FAS(-3)));
    int64_t wi[4] = {-3, 7, 8, -3};
    SAME(yi, wi, 4);
    CHECK_STATUS(check_op(KP_PAD, KP_PAD_CONSTANT, IN(vx), IN(vy), IAS(1, 2, 1, 1), FAS(0)), KILN_ERR_UNSUPPORTED);
}

static void test_depth_space(void)
{
    /* ONNX's DepthToSpace examples: x is 1x8x2x3 holding 0..47, blocksize 2 */
    float x[48], y[48], z[48];
    for (int i = 0; i < 48; i++)
        x[i] = (float)i;
    reset();
    int vx = VAL(KILN_F32, x, 1, 8, 2, 3), vy = VAL(KILN_F32, y, 1, 2, 4, 6), vz = VAL(KILN_F32, z, 1, 8, 2, 3);
    CHECK_OK(run_op(KP_DEPTH_SPACE, 0, IN(vx), IN(vy), IAS(2), NOFA));
    float dcr[48] = {0, 12, 1, 13, 2, 14, 24, 36, 25, 37, 26, 38, 3, 15, 4, 16, 5, 17,
                     27, 39, 28, 40, 29, 41, 6, 18, 7, 19, 8, 20, 30, 42, 31, 43, 32, 44,
                     9, 21, 10, 22, 11, 23, 33, 45, 34, 46, 35, 47};
    SAME(y, dcr, 48);
    /* SpaceToDepth inverts DCR */
    CHECK_OK(run_op(KP_DEPTH_SPACE, 2, IN(vy), IN(vz), IAS(2), NOFA));
    SAME(z, x, 48);
    CHECK_OK(run_op(KP_DEPTH_SPACE, 1, IN(vx), IN(vy), IAS(2), NOFA));
    float crd[48] = {0, 6, 1, 7, 2, 8, 12, 18, 13, 19, 14, 20, 3, 9, 4, 10, 5, 11,
                     15, 21, 16, 22, 17, 23, 24, 30, 25, 31, 26, 32, 36, 42, 37, 43, 38, 44,
                     27, 33, 28, 34, 29, 35, 39, 45, 40, 46, 41, 47};
    SAME(y, crd, 48);
    CHECK_STATUS(check_op(KP_DEPTH_SPACE, 0, IN(vx), IN(vy), IAS(3), NOFA), KILN_ERR_UNSUPPORTED);
}

/* ================================ reductions ================================ */

static void test_reduce(void)
{
    float x[12];
    for (int i = 0; i < 12; i++)
        x[i] = (float)(i + 1);
    float y[12];
    reset();
    int vx = VAL(KILN_F32, x, 2, 3, 2);
    int vk = VAL(KILN_F32, y, 2, 1, 2);     /* over axis 1, keepdims */
    CHECK_OK(run_op(KP_REDUCE, KP_R_SUM, IN(vx), IN(vk), IAS(1, 1), NOFA));
    float ws[4] = {9, 12, 27, 30};
    NEAR(y, ws, 4);
    CHECK_OK(run_op(KP_REDUCE, KP_R_MEAN, IN(vx), IN(vk), IAS(1, 1), NOFA));
    float wm[4] = {3, 4, 9, 10};
    NEAR(y, wm, 4);
    CHECK_OK(run_op(KP_REDUCE, KP_R_MAX, IN(vx), IN(vk), IAS(1, 1), NOFA));
    float wx[4] = {5, 6, 11, 12};
    NEAR(y, wx, 4);
    CHECK_OK(run_op(KP_REDUCE, KP_R_PROD, IN(vx), IN(vk), IAS(1, 1), NOFA));
    float wp[4] = {15, 48, 693, 960};
    NEAR(y, wp, 4);
    CHECK_OK(run_op(KP_REDUCE, KP_R_L2, IN(vx), IN(vk), IAS(1, 1), NOFA));
    float wl2[4] = {sqrtf(35), sqrtf(56), sqrtf(7 * 7 + 9 * 9 + 11 * 11), sqrtf(8 * 8 + 10 * 10 + 12 * 12)};
    NEAR(y, wl2, 4);
    CHECK_OK(run_op(KP_REDUCE, KP_R_LOG_SUM_EXP, IN(vx), IN(vk), IAS(1, 1), NOFA));
    float wlse[4] = {logf(expf(1) + expf(3) + expf(5)), logf(expf(2) + expf(4) + expf(6)),
                     logf(expf(7) + expf(9) + expf(11)), logf(expf(8) + expf(10) + expf(12))};
    NEAR(y, wlse, 4);
    /* axes 0 and 2, no keepdims */
    int vr = VAL(KILN_F32, y, 3);
    CHECK_OK(run_op(KP_REDUCE, KP_R_MIN, IN(vx), IN(vr), IAS(2, 0, 2), NOFA));
    float wn[3] = {1, 3, 5};
    NEAR(y, wn, 3);
    CHECK_OK(run_op(KP_REDUCE, KP_R_SUM_SQUARE, IN(vx), IN(vr), IAS(2, 0, 2), NOFA));
    float wsq[3] = {1 + 4 + 49 + 64, 9 + 16 + 81 + 100, 25 + 36 + 121 + 144};
    NEAR(y, wsq, 3);
    /* everything, to a scalar */
    int vs = val(KILN_F32, 0, NULL, y);
    CHECK_OK(run_op(KP_REDUCE, KP_R_L1, IN(vx), IN(vs), IAS(3, 0, 1, 2), NOFA));
    CHECK(y[0] == 78);
    CHECK_OK(run_op(KP_REDUCE, KP_R_LOG_SUM, IN(vx), IN(vs), IAS(3, 0, 1, 2), NOFA));
    CHECK(fabsf(y[0] - logf(78)) < 1e-6f);
    /* empty axis list: nothing reduced (SumSquare still squares) */
    int vsame = VAL(KILN_F32, y, 2, 3, 2);
    CHECK_OK(run_op(KP_REDUCE, KP_R_SUM_SQUARE, IN(vx), IN(vsame), IAS(0), NOFA));
    CHECK(y[0] == 1 && y[11] == 144);
    /* integers */
    int32_t xi[6] = {3, -1, 4, 1, -5, 9}, yi[3];
    int vxi = VAL(KILN_I32, xi, 2, 3), vyi = VAL(KILN_I32, yi, 2);
    CHECK_OK(run_op(KP_REDUCE, KP_R_SUM, IN(vxi), IN(vyi), IAS(1, 1), NOFA));
    CHECK(yi[0] == 6 && yi[1] == 5);
    CHECK_OK(run_op(KP_REDUCE, KP_R_MAX, IN(vxi), IN(vyi), IAS(1, 1), NOFA));
    CHECK(yi[0] == 4 && yi[1] == 9);
    CHECK_OK(run_op(KP_REDUCE, KP_R_PROD, IN(vxi), IN(vyi), IAS(1, 1), NOFA));
    CHECK(yi[0] == -12 && yi[1] == -45);
    int vyi3 = VAL(KILN_I32, yi, 3);
    CHECK_OK(run_op(KP_REDUCE, KP_R_MIN, IN(vxi), IN(vyi3), IAS(1, 0), NOFA));
    CHECK(yi[0] == 1 && yi[1] == -5 && yi[2] == 4);
    CHECK_STATUS(check_op(KP_REDUCE, KP_R_MEAN, IN(vxi), IN(vyi), IAS(1, 1), NOFA), KILN_ERR_UNSUPPORTED);
    CHECK_STATUS(check_op(KP_REDUCE, KP_R_SUM, IN(vx), IN(vk), IAS(1, 0), NOFA), KILN_ERR_UNSUPPORTED);
    /* f64 mean over the last axis */
    double xd[4] = {1, 2, 3, 5}, yd[2];
    int vxd = VAL(KILN_F64, xd, 2, 2), vyd = VAL(KILN_F64, yd, 2, 1);
    CHECK_OK(run_op(KP_REDUCE, KP_R_MEAN, IN(vxd), IN(vyd), IAS(1, 1), NOFA));
    CHECK(yd[0] == 1.5 && yd[1] == 4);
}

static void test_argreduce(void)
{
    float x[6] = {2, 7, 7, 1, 1, 0};
    int64_t y[3];
    reset();
    int vx = VAL(KILN_F32, x, 2, 3), vy = VAL(KILN_I64, y, 2, 1);
    CHECK_OK(run_op(KP_ARGREDUCE, 0, IN(vx), IN(vy), IAS(1, 1, 0), NOFA));
    CHECK(y[0] == 1 && y[1] == 0);
    CHECK_OK(run_op(KP_ARGREDUCE, 0, IN(vx), IN(vy), IAS(1, 1, 1), NOFA));
    CHECK(y[0] == 2 && y[1] == 1);
    CHECK_OK(run_op(KP_ARGREDUCE, 1, IN(vx), IN(vy), IAS(1, 1, 1), NOFA));
    CHECK(y[0] == 0 && y[1] == 2);
    int vy0 = VAL(KILN_I64, y, 3);
    CHECK_OK(run_op(KP_ARGREDUCE, 1, IN(vx), IN(vy0), IAS(0, 0, 0), NOFA));
    CHECK(y[0] == 1 && y[1] == 1 && y[2] == 1);
    CHECK_OK(run_op(KP_ARGREDUCE, 0, IN(vx), IN(vy0), IAS(0, 0, 0), NOFA));
    CHECK(y[0] == 0 && y[1] == 0 && y[2] == 0);
    uint8_t u[4] = {3, 9, 9, 2};
    int64_t uy;
    int vu = VAL(KILN_U8, u, 4), vuy = val(KILN_I64, 0, NULL, &uy);
    CHECK_OK(run_op(KP_ARGREDUCE, 0, IN(vu), IN(vuy), IAS(0, 0, 0), NOFA));
    CHECK(uy == 1);
    CHECK_STATUS(check_op(KP_ARGREDUCE, 0, IN(vx), IN(vx), IAS(1, 1, 0), NOFA), KILN_ERR_UNSUPPORTED);
}

static void test_cumsum(void)
{
    float x[6] = {1, 2, 3, 4, 5, 6}, y[6];
    reset();
    int vx = VAL(KILN_F32, x, 2, 3), vy = VAL(KILN_F32, y, 2, 3);
    CHECK_OK(run_op(KP_CUMSUM, 0, IN(vx), IN(vy), IAS(1, 0, 0), NOFA));
    float w[6] = {1, 3, 6, 4, 9, 15};
    NEAR(y, w, 6);
    CHECK_OK(run_op(KP_CUMSUM, 0, IN(vx), IN(vy), IAS(1, 1, 0), NOFA));
    float we[6] = {0, 1, 3, 0, 4, 9};
    NEAR(y, we, 6);
    CHECK_OK(run_op(KP_CUMSUM, 0, IN(vx), IN(vy), IAS(1, 0, 1), NOFA));
    float wr[6] = {6, 5, 3, 15, 11, 6};
    NEAR(y, wr, 6);
    CHECK_OK(run_op(KP_CUMSUM, 0, IN(vx), IN(vy), IAS(1, 1, 1), NOFA));
    float wer[6] = {5, 3, 0, 11, 6, 0};
    NEAR(y, wer, 6);
    CHECK_OK(run_op(KP_CUMSUM, 0, IN(vx), IN(vy), IAS(0, 0, 0), NOFA));
    float w0[6] = {1, 2, 3, 5, 7, 9};
    NEAR(y, w0, 6);
    int64_t xi[4] = {1, 2, 3, 4}, yi[4];
    int vxi = VAL(KILN_I64, xi, 4), vyi = VAL(KILN_I64, yi, 4);
    CHECK_OK(run_op(KP_CUMSUM, 0, IN(vxi), IN(vyi), IAS(0, 1, 1), NOFA));
    int64_t wi[4] = {9, 7, 4, 0};
    SAME(yi, wi, 4);
    /* in place (Y aliases X), exclusive */
    float z[6] = {1, 2, 3, 4, 5, 6};
    int vz = VAL(KILN_F32, z, 2, 3);
    CHECK_OK(run_op(KP_CUMSUM, 0, IN(vz), IN(vz), IAS(1, 1, 0), NOFA));
    float wz[6] = {0, 0, 1, 0, 0, 4};   /* run twice in place: the second sees the first's output */
    NEAR(z, wz, 6);
}

/* ================================ normalisation ================================ */

static void test_softmax(void)
{
    float x[6] = {1, 2, 3, 1, 1, 1}, y[6];
    reset();
    int vx = VAL(KILN_F32, x, 2, 3), vy = VAL(KILN_F32, y, 2, 3);
    CHECK_OK(run_op(KP_SOFTMAX, 0, IN(vx), IN(vy), IAS(1), NOFA));
    float s = expf(1) + expf(2) + expf(3);
    float w[6] = {expf(1) / s, expf(2) / s, expf(3) / s, 1.0f / 3, 1.0f / 3, 1.0f / 3};
    NEAR(y, w, 6);
    CHECK_OK(run_op(KP_SOFTMAX, 1, IN(vx), IN(vy), IAS(1), NOFA));
    float wl[6] = {1 - logf(s), 2 - logf(s), 3 - logf(s), -logf(3), -logf(3), -logf(3)};
    NEAR(y, wl, 6);
    /* over axis 0 (strided), large values stay finite */
    float xb[6] = {1000, 0, 1, 0, 2, 1}, yb[6];
    int vxb = VAL(KILN_F32, xb, 2, 3), vyb = VAL(KILN_F32, yb, 2, 3);
    CHECK_OK(run_op(KP_SOFTMAX, 0, IN(vxb), IN(vyb), IAS(0), NOFA));
    float e = 1.0f / (1.0f + expf(2)), e2 = 1.0f / (1.0f + expf(-2));
    float wb[6] = {1, e, 0.5f, 0, e2, 0.5f};
    NEAR(yb, wb, 6);
    double xd[3] = {0, 0, 0}, yd[3];
    int vxd = VAL(KILN_F64, xd, 3), vyd = VAL(KILN_F64, yd, 3);
    CHECK_OK(run_op(KP_SOFTMAX, 1, IN(vxd), IN(vyd), IAS(0), NOFA));
    CHECK(fabs(yd[1] + log(3)) < 1e-15);
}

static void test_layernorm(void)
{
    float x[6] = {1, 2, 3, 2, 4, 6}, sc[3] = {1, 2, 0.5f}, b[3] = {0, 1, -1}, y[6], mean[2], inv[2];
    reset();
    int vx = VAL(KILN_F32, x, 2, 3), vs = VAL(KILN_F32, sc, 3), vb = VAL(KILN_F32, b, 3);
    int vy = VAL(KILN_F32, y, 2, 3), vm = VAL(KILN_F32, mean, 2, 1), vi = VAL(KILN_F32, inv, 2, 1);
    CHECK_OK(run_op(KP_LAYERNORM, 0, IN(vx, vs, vb), IN(vy, vm, vi), IAS(1), FAS(1e-5f)));
    float i0 = 1.0f / sqrtf(2.0f / 3 + 1e-5f), i1 = 1.0f / sqrtf(8.0f / 3 + 1e-5f);
    float w[6] = {-i0, 1, 0.5f * i0 - 1, -2 * i1, 1, 0.5f * 2 * i1 - 1};
    NEAR(y, w, 6);
    CHECK(fabsf(mean[0] - 2) < 1e-6f && fabsf(mean[1] - 4) < 1e-6f);
    CHECK(fabsf(inv[0] - i0) < 1e-5f && fabsf(inv[1] - i1) < 1e-5f);
    /* no bias, scale broadcast from [1] over axis 0 */
    float one = 2;
    int v1 = VAL(KILN_F32, &one, 1);
    CHECK_OK(run_op(KP_LAYERNORM, 0, IN(vx, v1), IN(vy), IAS(0), FAS(0)));
    double m = 3, var = (4 + 1 + 0 + 1 + 1 + 9) / 6.0;
    for (int i = 0; i < 6; i++)
        CHECK(fabsf(y[i] - (float)(2 * (x[i] - m) / sqrt(var))) < 1e-5f);
    float bad[2];
    int vbad = VAL(KILN_F32, bad, 2);
    CHECK_STATUS(check_op(KP_LAYERNORM, 0, IN(vx, vbad), IN(vy), IAS(1), FAS(0)), KILN_ERR_UNSUPPORTED);
}

static void test_batch_group_norm(void)
{
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8};  /* 1 x 2 x 4 */
    float sc[2] = {2, 1}, b[2] = {1, 0}, mu[2] = {2, 6}, var[2] = {4, 1}, y[8];
    reset();
    int vx = VAL(KILN_F32, x, 1, 2, 4), vs = VAL(KILN_F32, sc, 2), vb = VAL(KILN_F32, b, 2);
    int vm = VAL(KILN_F32, mu, 2), vv = VAL(KILN_F32, var, 2), vy = VAL(KILN_F32, y, 1, 2, 4);
    CHECK_OK(run_op(KP_BATCHNORM, 0, IN(vx, vs, vb, vm, vv), IN(vy), NOIA, FAS(0)));
    float w[8] = {0, 1, 2, 3, -1, 0, 1, 2};
    NEAR(y, w, 8);
    /* GroupNorm with one group over both channels; InstanceNorm (2 groups) */
    CHECK_OK(run_op(KP_GROUPNORM, 0, IN(vx, vs, vb), IN(vy), IAS(1), FAS(0)));
    double m = 4.5, sd = sqrt(5.25);
    for (int i = 0; i < 8; i++)
        CHECK(fabsf(y[i] - (float)((x[i] - m) / sd * sc[i / 4] + b[i / 4])) < 1e-5f);
    CHECK_OK(run_op(KP_GROUPNORM, 0, IN(vx, vs, vb), IN(vy), IAS(2), FAS(0)));
    for (int i = 0; i < 8; i++) {
        double mm = i < 4 ? 2.5 : 6.5;
        CHECK(fabsf(y[i] - (float)((x[i] - mm) / sqrt(1.25) * sc[i / 4] + b[i / 4])) < 1e-5f);
    }
    CHECK_STATUS(check_op(KP_GROUPNORM, 0, IN(vx, vs, vb), IN(vy), IAS(3), FAS(0)), KILN_ERR_UNSUPPORTED);
}

/* ================================ resize ================================ */

static void test_resize(void)
{
    float x[16], y[48];
    for (int i = 0; i < 16; i++)
        x[i] = (float)(i + 1);
    reset();
    int vx = VAL(KILN_F32, x, 1, 1, 4, 4);
    /* values from the ONNX reference (onnx/backend/test/case/node/resize.py) */
    int vy = VAL(KILN_F32, y, 1, 1, 8, 6);
    CHECK_OK(run_op(KP_RESIZE, KP_RESIZE_LINEAR, IN(vx), IN(vy), IAS(KP_RC_HALF_PIXEL, 0, 0),
                    FAS(1, 1, 2, 1.5f, -0.75f, 0)));
    float lin[48] = {1.0f, 1.5f, 2.16666675f, 2.83333325f, 3.5f, 4.0f, 2.0f, 2.5f, 3.16666675f,
                     3.83333325f, 4.5f, 5.0f, 4.0f, 4.5f, 5.16666651f, 5.83333349f, 6.5f, 7.0f,
                     6.0f, 6.5f, 7.16666651f, 7.83333349f, 8.5f, 9.0f, 8.0f, 8.5f, 9.16666698f,
                     9.83333302f, 10.5f, 11.0f, 10.0f, 10.5f, 11.166667f, 11.833333f, 12.5f, 13.0f,
                     12.0f, 12.5f, 13.166667f, 13.833333f, 14.5f, 15.0f, 13.0f, 13.5f, 14.166667f,
                     14.833333f, 15.5f, 16.0f};
    NEAR(y, lin, 48);
    int vc = VAL(KILN_F32, y, 1, 1, 3, 3);
    CHECK_OK(run_op(KP_RESIZE, KP_RESIZE_CUBIC, IN(vx), IN(vc), IAS(KP_RC_HALF_PIXEL, 0, 1),
                    FAS(1, 1, 0.8f, 0.8f, -0.5f, 0)));
    float cub[9] = {1.36812675f, 2.6695013f, 4.01333666f, 6.57362509f, 7.875f, 9.21883488f,
                    11.948966f, 13.2503414f, 14.5941763f};
    NEAR(y, cub, 9);
    CHECK_OK(run_op(KP_RESIZE, KP_RESIZE_CUBIC, IN(vx), IN(vc), IAS(KP_RC_ALIGN_CORNERS, 0, 0),
                    FAS(1, 1, 0.75f, 0.75f, -0.75f, 0)));
    float cac[9] = {1, 2.5f, 4, 7, 8.5f, 10, 13, 14.5f, 16};
    NEAR(y, cac, 9);
    int vp = VAL(KILN_F32, y, 1, 1, 3, 1);
    CHECK_OK(run_op(KP_RESIZE, KP_RESIZE_LINEAR, IN(vx), IN(vp), IAS(KP_RC_PYTORCH_HALF_PIXEL, 0, 0),
                    FAS(1, 1, 0.75f, 0.25f, -0.75f, 0)));
    float lpt[3] = {1.66666663f, 7.0f, 12.333333f};
    NEAR(y, lpt, 3);
    /* nearest on 1x1x2x3 -> 1x1x3x5, any dtype */
    int32_t xi[6] = {1, 2, 3, 4, 5, 6}, yi[15];
    int vxi = VAL(KILN_I32, xi, 1, 1, 2, 3), vyi = VAL(KILN_I32, yi, 1, 1, 3, 5);
    CHECK_OK(run_op(KP_RESIZE, KP_RESIZE_NEAREST, IN(vxi), IN(vyi),
                    IAS(KP_RC_ASYMMETRIC, KP_RN_ROUND_PREFER_CEIL, 0), FAS(1, 1, 1.5f, 5.0f / 3, -0.75f, 0)));
    int32_t nc[15] = {1, 2, 2, 3, 3, 4, 5, 5, 6, 6, 4, 5, 5, 6, 6};
    SAME(yi, nc, 15);
    CHECK_OK(run_op(KP_RESIZE, KP_RESIZE_NEAREST, IN(vxi), IN(vyi),
                    IAS(KP_RC_HALF_PIXEL, KP_RN_FLOOR, 0), FAS(1, 1, 1.5f, 5.0f / 3, -0.75f, 0)));
    int32_t nf[15] = {1, 1, 2, 2, 3, 1, 1, 2, 2, 3, 4, 4, 5, 5, 6};
    SAME(yi, nf, 15);
    CHECK_STATUS(check_op(KP_RESIZE, KP_RESIZE_LINEAR, IN(vx), IN(vy), IAS(KP_RC_TF_CROP_AND_RESIZE, 0, 0),
                          FAS(1, 1, 2, 1.5f, -0.75f, 0)), KILN_ERR_UNSUPPORTED);
    CHECK(strstr(kiln_last_error(), "tf_crop_and_resize") != NULL);
    CHECK_STATUS(check_op(KP_RESIZE, KP_RESIZE_LINEAR, IN(vxi), IN(vyi), IAS(0, 0, 0),
                          FAS(1, 1, 1.5f, 5.0f / 3, -0.75f, 0)), KILN_ERR_UNSUPPORTED);
}

/* ================================ pooling ================================ */

static void test_pool(void)
{
    float x[16], y[16];
    int64_t ind[16];
    for (int i = 0; i < 16; i++)
        x[i] = (float)(i + 1);
    reset();
    int vx = VAL(KILN_F32, x, 1, 1, 4, 4);
    /* max 2x2 stride 2, with Indices */
    int vy = VAL(KILN_F32, y, 1, 1, 2, 2), vi = VAL(KILN_I64, ind, 1, 1, 2, 2);
    CHECK_OK(run_op(KP_POOL, KP_POOL_MAX, IN(vx), IN(vy, vi), IAS(2, 2, 2, 2, 2, 1, 1, 0, 0, 0, 0, 0, 0), NOFA));
    float w[4] = {6, 8, 14, 16};
    SAME(y, w, 4);
    int64_t wi[4] = {5, 7, 13, 15};
    SAME(ind, wi, 4);
    /* avg 3x3 stride 1 pad 1: count_include_pad 0 and 1 */
    int vy4 = VAL(KILN_F32, y, 1, 1, 4, 4);
    CHECK_OK(run_op(KP_POOL, KP_POOL_AVG, IN(vx), IN(vy4), IAS(2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0), NOFA));
    CHECK(fabsf(y[0] - (1 + 2 + 5 + 6) / 4.0f) < 1e-6f && fabsf(y[5] - (1 + 2 + 3 + 5 + 6 + 7 + 9 + 10 + 11) / 9.0f) < 1e-6f);
    CHECK_OK(run_op(KP_POOL, KP_POOL_AVG, IN(vx), IN(vy4), IAS(2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0), NOFA));
    CHECK(fabsf(y[0] - (1 + 2 + 5 + 6) / 9.0f) < 1e-6f);
    /* ceil mode: 4 wide, kernel 3, stride 2 -> 2 outputs; the second window runs past the
     * end and its missing positions never count (not even with count_include_pad) */
    int vyc = VAL(KILN_F32, y, 1, 1, 2, 2);
    CHECK_OK(run_op(KP_POOL, KP_POOL_AVG, IN(vx), IN(vyc), IAS(2, 3, 3, 2, 2, 1, 1, 0, 0, 0, 0, 1, 1), NOFA));
    float wc[4] = {6, 7.5f, 12, 13.5f};
    NEAR(y, wc, 4);
    CHECK_OK(run_op(KP_POOL, KP_POOL_MAX, IN(vx), IN(vyc), IAS(2, 3, 3, 2, 2, 1, 1, 0, 0, 0, 0, 0, 1), NOFA));
    float wcm[4] = {11, 12, 15, 16};
    SAME(y, wcm, 4);
    /* without ceil mode that output extent is wrong */
    CHECK_STATUS(check_op(KP_POOL, KP_POOL_MAX, IN(vx), IN(vyc), IAS(2, 3, 3, 2, 2, 1, 1, 0, 0, 0, 0, 0, 0), NOFA),
                 KILN_ERR_UNSUPPORTED);
    /* dilation 2, kernel 2: taps (0,2) */
    CHECK_OK(run_op(KP_POOL, KP_POOL_MAX, IN(vx), IN(vyc), IAS(2, 2, 2, 1, 1, 2, 2, 0, 0, 0, 0, 0, 0), NOFA));
    float wd[4] = {11, 12, 15, 16};
    SAME(y, wd, 4);
    /* 1-D avg with pads */
    float x1[5] = {1, 2, 3, 4, 5}, y1[3];
    int vx1 = VAL(KILN_F32, x1, 1, 1, 5), vy1 = VAL(KILN_F32, y1, 1, 1, 3);
    CHECK_OK(run_op(KP_POOL, KP_POOL_AVG, IN(vx1), IN(vy1), IAS(1, 3, 2, 1, 1, 1, 0, 0), NOFA));
    float w1[3] = {1.5f, 3, 4.5f};
    NEAR(y1, w1, 3);
    /* u8 max pool */
    uint8_t u[4] = {3, 200, 7, 9}, uy[1];
    int vu = VAL(KILN_U8, u, 1, 1, 2, 2), vuy = VAL(KILN_U8, uy, 1, 1, 1, 1);
    CHECK_OK(run_op(KP_POOL, KP_POOL_MAX, IN(vu), IN(vuy), IAS(2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0), NOFA));
    CHECK(uy[0] == 200);
    /* GlobalPool */
    float g[2];
    int vg = VAL(KILN_F32, g, 1, 1, 1, 1);
    CHECK_OK(run_op(KP_GLOBAL_POOL, KP_POOL_AVG, IN(vx), IN(vg), NOIA, NOFA));
    CHECK(g[0] == 8.5f);
    CHECK_OK(run_op(KP_GLOBAL_POOL, KP_POOL_MAX, IN(vx), IN(vg), NOIA, NOFA));
    CHECK(g[0] == 16);
}

/* ================================ Conv / ConvTranspose / MatMul ================================ */

/* The straightforward definition, with bounds tests per tap (3 spatial dims, leading 1s). */
static void naive_conv(int transpose, const float *x, const float *w, const float *b, float *y,
                       int64_t N, int64_t C, int64_t O, int64_t G, const int64_t *in,
                       const int64_t *out, const int64_t *k, const int64_t *s, const int64_t *d,
                       const int64_t *p)
{
    int64_t IS = in[0] * in[1] * in[2], OS = out[0] * out[1] * out[2], KS = k[0] * k[1] * k[2];
    int64_t Cg = C / G, Og = O / G;
    for (int64_t i = 0; i < N * O * OS; i++)
        y[i] = b ? b[(i / OS) % O] : 0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t g = 0; g < G; g++)
            for (int64_t oc = 0; oc < Og; oc++)
                for (int64_t ic = 0; ic < Cg; ic++)
                    for (int64_t a = 0; a < (transpose ? in[0] : out[0]); a++)
                        for (int64_t bb = 0; bb < (transpose ? in[1] : out[1]); bb++)
                            for (int64_t c = 0; c < (transpose ? in[2] : out[2]); c++)
                                for (int64_t kd = 0; kd < k[0]; kd++)
                                    for (int64_t kh = 0; kh < k[1]; kh++)
                                        for (int64_t kw = 0; kw < k[2]; kw++) {
                                            int64_t t0 = a * s[0] + kd * d[0] - p[0];
                                            int64_t t1 = bb * s[1] + kh * d[1] - p[1];
                                            int64_t t2 = c * s[2] + kw * d[2] - p[2];
                                            const int64_t *lim = transpose ? out : in;
                                            if (t0 < 0 || t1 < 0 || t2 < 0 || t0 >= lim[0] ||
                                                t1 >= lim[1] || t2 >= lim[2])
                                                continue;
                                            int64_t kk = (kd * k[1] + kh) * k[2] + kw;
                                            if (!transpose) {
                                                float wv = w[((g * Og + oc) * Cg + ic) * KS + kk];
                                                y[(n * O + g * Og + oc) * OS + (a * out[1] + bb) * out[2] + c] +=
                                                    wv * x[(n * C + g * Cg + ic) * IS + (t0 * in[1] + t1) * in[2] + t2];
                                            } else {
                                                float wv = w[((g * Cg + ic) * Og + oc) * KS + kk];
                                                y[(n * O + g * Og + oc) * OS + (t0 * out[1] + t1) * out[2] + t2] +=
                                                    wv * x[(n * C + g * Cg + ic) * IS + (a * in[1] + bb) * in[2] + c];
                                            }
                                        }
}

typedef struct conv_case {
    int nsp;
    int64_t N, C, O, G;
    int64_t in[3], k[3], s[3], d[3], pb[3], pe[3], op[3];
    int bias;
} conv_case;

static void run_conv_case(int transpose, const conv_case *cc)
{
    int nsp = cc->nsp;
    int64_t in3[3] = {1, 1, 1}, out3[3] = {1, 1, 1}, k3[3] = {1, 1, 1}, s3[3] = {1, 1, 1},
            d3[3] = {1, 1, 1}, p3[3] = {0, 0, 0};
    int64_t xs[5] = {cc->N, cc->C}, ys[5] = {cc->N, cc->O}, ws[5];
    if (transpose) {
        ws[0] = cc->C;
        ws[1] = cc->O / cc->G;
    } else {
        ws[0] = cc->O;
        ws[1] = cc->C / cc->G;
    }
    for (int i = 0; i < nsp; i++) {
        int j = 3 - nsp + i;
        int64_t eff = (cc->k[i] - 1) * cc->d[i] + 1, o;
        if (transpose)
            o = cc->s[i] * (cc->in[i] - 1) + cc->op[i] + eff - cc->pb[i] - cc->pe[i];
        else
            o = (cc->in[i] + cc->pb[i] + cc->pe[i] - eff) / cc->s[i] + 1;
        in3[j] = cc->in[i];
        out3[j] = o;
        k3[j] = cc->k[i];
        s3[j] = cc->s[i];
        d3[j] = cc->d[i];
        p3[j] = cc->pb[i];
        xs[2 + i] = cc->in[i];
        ys[2 + i] = o;
        ws[2 + i] = cc->k[i];
    }
    int64_t nx = kiln__numel(2 + nsp, xs), ny = kiln__numel(2 + nsp, ys), nw = kiln__numel(2 + nsp, ws);
    float *x = malloc((size_t)nx * 4), *w = malloc((size_t)nw * 4), *b = malloc((size_t)cc->O * 4);
    float *y = malloc((size_t)ny * 4), *want = malloc((size_t)ny * 4);
    fill_rand(x, nx);
    fill_rand(w, nw);
    fill_rand(b, cc->O);
    naive_conv(transpose, x, w, cc->bias ? b : NULL, want, cc->N, cc->C, cc->O, cc->G, in3, out3,
               k3, s3, d3, p3);
    reset();
    int vx = val(KILN_F32, 2 + nsp, xs, x), vw = val(KILN_F32, 2 + nsp, ws, w);
    int vb = VAL(KILN_F32, b, cc->O), vy = val(KILN_F32, 2 + nsp, ys, y);
    int64_t ia[32];
    int n = 0;
    ia[n++] = cc->G;
    ia[n++] = nsp;
    const int64_t *lists[5] = {cc->s, cc->d, cc->pb, cc->pe, cc->op};
    for (int l = 0; l < (transpose ? 5 : 4); l++)
        for (int i = 0; i < nsp; i++)
            ia[n++] = lists[l][i];
    ia[n++] = 0;
    int in[3] = {vx, vw, cc->bias ? vb : -1};
    CHECK_OK(run_op(transpose ? KP_CONV_TRANSPOSE : KP_CONV, 0, 3, in, IN(vy), n, ia, NOFA));
    CHECK(close_f32(y, want, ny, 1e-4));
    free(x);
    free(w);
    free(b);
    free(y);
    free(want);
}

static void test_conv(void)
{
    /* ONNX's test_basic_conv_with_padding: 5x5 ramp, 3x3 ones, pad 1 */
    float x[25], w[9], y[25];
    for (int i = 0; i < 25; i++)
        x[i] = (float)i;
    for (int i = 0; i < 9; i++)
        w[i] = 1;
    reset();
    int vx = VAL(KILN_F32, x, 1, 1, 5, 5), vw = VAL(KILN_F32, w, 1, 1, 3, 3), vy = VAL(KILN_F32, y, 1, 1, 5, 5);
    CHECK_OK(run_op(KP_CONV, 0, IN(vx, vw, -1), IN(vy), IAS(1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 0), NOFA));
    float want[25] = {12, 21, 27, 33, 24, 33, 54, 63, 72, 51, 63, 99, 108, 117, 81,
                      93, 144, 153, 162, 111, 72, 111, 117, 123, 84};
    NEAR(y, want, 25);
    /* stride 2 without padding: test_conv_with_strides_no_padding */
    float x2[35], y2[6];
    for (int i = 0; i < 35; i++)
        x2[i] = (float)i;
    int vx2 = VAL(KILN_F32, x2, 1, 1, 7, 5), vy2 = VAL(KILN_F32, y2, 1, 1, 3, 2);
    CHECK_OK(run_op(KP_CONV, 0, IN(vx2, vw), IN(vy2), IAS(1, 2, 2, 2, 1, 1, 0, 0, 0, 0, 0), NOFA));
    float want2[6] = {54, 72, 144, 162, 234, 252};
    NEAR(y2, want2, 6);
    /* wrong output extent, f16, bad group */
    CHECK_STATUS(check_op(KP_CONV, 0, IN(vx2, vw), IN(vy), IAS(1, 2, 2, 2, 1, 1, 0, 0, 0, 0, 0), NOFA),
                 KILN_ERR_UNSUPPORTED);
    CHECK_STATUS(check_op(KP_CONV, 0, IN(vx, vw), IN(vy), IAS(2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 0), NOFA),
                 KILN_ERR_UNSUPPORTED);
    uint16_t h[25];
    int vh = VAL(KILN_F16, h, 1, 1, 5, 5);
    CHECK_STATUS(check_op(KP_CONV, 0, IN(vh, vw), IN(vy), IAS(1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 0), NOFA),
                 KILN_ERR_UNSUPPORTED);
    CHECK(strstr(kiln_last_error(), "Conv 'node'") && strstr(kiln_last_error(), "f16"));

    /* against the naive loops: 1-D to 3-D, groups, strides, dilations, asymmetric pads, 1x1 */
    conv_case cases[] = {
        {2, 2, 4, 6, 2, {7, 6}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, {0}, 1},
        {2, 1, 6, 6, 6, {9, 8}, {3, 3}, {2, 2}, {1, 1}, {1, 0}, {1, 1}, {0}, 1},   /* depthwise */
        {2, 1, 3, 4, 1, {9, 9}, {3, 2}, {2, 3}, {2, 1}, {0, 2}, {3, 0}, {0}, 0},   /* dilated */
        {2, 2, 8, 5, 1, {4, 5}, {1, 1}, {1, 1}, {1, 1}, {0, 0}, {0, 0}, {0}, 1},   /* 1x1 */
        {2, 1, 8, 4, 2, {4, 5}, {1, 1}, {1, 1}, {1, 1}, {0, 0}, {0, 0}, {0}, 0},   /* grouped 1x1 */
        {1, 2, 3, 5, 1, {11}, {4}, {3}, {2}, {2}, {1}, {0}, 1},
        {3, 1, 2, 4, 2, {5, 4, 6}, {2, 3, 2}, {1, 2, 2}, {2, 1, 1}, {1, 1, 0}, {0, 1, 1}, {0}, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        run_conv_case(0, &cases[i]);
}

static void test_conv_post_ops(void)
{
    /* y = relu(conv(x) + b) + sum_operand, then * per-channel scale (binary, broadcast) */
    float x[2 * 9], w[3 * 2 * 4], b[3], sumop[3 * 4], scale[3], y[3 * 4], want[3 * 4];
    fill_rand(x, 18);
    fill_rand(w, 24);
    fill_rand(b, 3);
    fill_rand(sumop, 12);
    fill_rand(scale, 3);
    int64_t in3[3] = {1, 3, 3}, out3[3] = {1, 2, 2}, k3[3] = {1, 2, 2}, one[3] = {1, 1, 1}, zero[3] = {0};
    naive_conv(0, x, w, b, want, 1, 2, 3, 1, in3, out3, k3, one, one, zero);
    for (int i = 0; i < 12; i++)
        want[i] = (fmaxf(want[i], 0) + sumop[i]) * scale[i / 4];
    reset();
    int vx = VAL(KILN_F32, x, 1, 2, 3, 3), vw = VAL(KILN_F32, w, 3, 2, 2, 2), vb = VAL(KILN_F32, b, 3);
    int vs = VAL(KILN_F32, sumop, 1, 3, 2, 2), vc = VAL(KILN_F32, scale, 3, 1, 1), vy = VAL(KILN_F32, y, 1, 3, 2, 2);
    CHECK_OK(run_op(KP_CONV, 0, IN(vx, vw, vb, vs, vc), IN(vy),
                    IAS(1, 2, 1, 1, 1, 1, 0, 0, 0, 0, 3, KP_POST_UNARY, KP_U_RELU, KP_POST_SUM, 0,
                        KP_POST_BINARY, KP_B_MUL),
                    FAS(0, 0, 0, 0, 0, 0)));
    CHECK(close_f32(y, want, 12, 1e-5));
    /* operand count must match the list */
    CHECK_STATUS(check_op(KP_CONV, 0, IN(vx, vw, vb, vs), IN(vy),
                          IAS(1, 2, 1, 1, 1, 1, 0, 0, 0, 0, 3, KP_POST_UNARY, KP_U_RELU, KP_POST_SUM, 0,
                              KP_POST_BINARY, KP_B_MUL),
                          FAS(0, 0, 0, 0, 0, 0)), KILN_ERR_UNSUPPORTED);
    CHECK_STATUS(check_op(KP_CONV, 0, IN(vx, vw, vb), IN(vy),
                          IAS(1, 2, 1, 1, 1, 1, 0, 0, 0, 0, 1, KP_POST_UNARY, KP_U_RELU), NOFA),
                 KILN_ERR_UNSUPPORTED);
    /* a clip post-op with alpha/beta */
    naive_conv(0, x, w, NULL, want, 1, 2, 3, 1, in3, out3, k3, one, one, zero);
    for (int i = 0; i < 12; i++)
        want[i] = fminf(fmaxf(want[i], -0.1f), 0.2f);
    CHECK_OK(run_op(KP_CONV, 0, IN(vx, vw, -1), IN(vy),
                    IAS(1, 2, 1, 1, 1, 1, 0, 0, 0, 0, 1, KP_POST_UNARY, KP_U_CLIP), FAS(-0.1f, 0.2f)));
    CHECK(close_f32(y, want, 12, 1e-5));
}

static void test_conv_transpose(void)
{
    /* ONNX's test_convtranspose: 3x3 ramp, 2 output channels of 3x3 ones */
    float x[9], w[18], y[50];
    for (int i = 0; i < 9; i++)
        x[i] = (float)i;
    for (int i = 0; i < 18; i++)
        w[i] = 1;
    reset();
    int vx = VAL(KILN_F32, x, 1, 1, 3, 3), vw = VAL(KILN_F32, w, 1, 2, 3, 3), vy = VAL(KILN_F32, y, 1, 2, 5, 5);
    CHECK_OK(run_op(KP_CONV_TRANSPOSE, 0, IN(vx, vw, -1), IN(vy),
                    IAS(1, 2, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0), NOFA));
    float want[25] = {0, 1, 3, 3, 2, 3, 8, 15, 12, 7, 9, 21, 36, 27, 15, 9, 20, 33, 24, 13, 6, 13, 21, 15, 8};
    NEAR(y, want, 25);
    NEAR(y + 25, want, 25);
    conv_case cases[] = {
        {2, 1, 2, 4, 1, {3, 4}, {3, 3}, {2, 2}, {1, 1}, {1, 0}, {1, 1}, {1, 0}, 1},
        {2, 2, 4, 6, 2, {3, 3}, {2, 3}, {3, 2}, {2, 1}, {0, 1}, {1, 0}, {2, 1}, 1},
        {1, 1, 3, 2, 1, {5}, {3}, {2}, {1}, {1}, {1}, {1}, 0},
        {3, 1, 2, 2, 1, {2, 3, 2}, {2, 2, 3}, {2, 1, 2}, {1, 2, 1}, {0, 1, 1}, {0, 0, 1}, {1, 0, 0}, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        run_conv_case(1, &cases[i]);
    /* Y wider than the positions inputs reach (output_shape / output_padding): bias only */
    float x1[3] = {1, 2, 3}, w1[2] = {1, 1}, b1[1] = {0.5f}, y1[6];
    int vx1 = VAL(KILN_F32, x1, 1, 1, 3), vw1 = VAL(KILN_F32, w1, 1, 1, 2), vb1 = VAL(KILN_F32, b1, 1);
    int vy1 = VAL(KILN_F32, y1, 1, 1, 6);
    CHECK_OK(run_op(KP_CONV_TRANSPOSE, 0, IN(vx1, vw1, vb1), IN(vy1), IAS(1, 1, 1, 1, 0, 0, 2, 0), NOFA));
    float w1y[6] = {1.5f, 3.5f, 5.5f, 3.5f, 0.5f, 0.5f};
    NEAR(y1, w1y, 6);
}

static void naive_matmul(const float *a, const float *b, float *y, int64_t M, int64_t K, int64_t N)
{
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0;
            for (int64_t k = 0; k < K; k++)
                s += (double)a[i * K + k] * b[k * N + j];
            y[i * N + j] = (float)s;
        }
}

static void test_matmul(void)
{
    /* batch broadcast: [2,1,3,4] x [3,4,5] -> [2,3,3,5], with bias [5] and a tanh post-op */
    float a[2 * 3 * 4], b[3 * 4 * 5], bias[5], y[2 * 3 * 3 * 5], want[2 * 3 * 3 * 5];
    fill_rand(a, 24);
    fill_rand(b, 60);
    fill_rand(bias, 5);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++)
            naive_matmul(a + i * 12, b + j * 20, want + (i * 3 + j) * 15, 3, 4, 5);
    for (int i = 0; i < 90; i++)
        want[i] = tanhf(want[i] + bias[i % 5]);
    reset();
    int va = VAL(KILN_F32, a, 2, 1, 3, 4), vb = VAL(KILN_F32, b, 3, 4, 5), vbias = VAL(KILN_F32, bias, 5);
    int vy = VAL(KILN_F32, y, 2, 3, 3, 5);
    CHECK_OK(run_op(KP_MATMUL, 0, IN(va, vb, vbias), IN(vy), IAS(1, KP_POST_UNARY, KP_U_TANH), FAS(0, 0)));
    CHECK(close_f32(y, want, 90, 1e-5));
    int vbad = VAL(KILN_F32, y, 2, 3, 3, 4);
    CHECK_STATUS(check_op(KP_MATMUL, 0, IN(va, vb, -1), IN(vbad), IAS(0), NOFA), KILN_ERR_UNSUPPORTED);
    /* 1-D operands: [4] x [3,4,5] -> [3,5]; [2,1,3,4] x [4] -> [2,1,3] */
    int v1 = VAL(KILN_F32, a, 4), vy1 = VAL(KILN_F32, y, 3, 5);
    CHECK_OK(run_op(KP_MATMUL, 0, IN(v1, vb, -1), IN(vy1), IAS(0), NOFA));
    for (int j = 0; j < 3; j++)
        naive_matmul(a, b + j * 20, want + j * 5, 1, 4, 5);
    CHECK(close_f32(y, want, 15, 1e-5));
    int vb1 = VAL(KILN_F32, b, 4), vy2 = VAL(KILN_F32, y, 2, 1, 3);
    CHECK_OK(run_op(KP_MATMUL, 0, IN(va, vb1), IN(vy2), IAS(0), NOFA));
    naive_matmul(a, b, want, 6, 4, 1);
    CHECK(close_f32(y, want, 6, 1e-5));
    /* f64, with a bias; post-ops are f32 only */
    double da[6] = {1, 2, 3, 4, 5, 6}, db[6] = {1, 0, 0, 1, 1, 1}, dbias[2] = {0.5, -0.5}, dy[4];
    int vda = VAL(KILN_F64, da, 2, 3), vdb = VAL(KILN_F64, db, 3, 2), vdbias = VAL(KILN_F64, dbias, 2);
    int vdy = VAL(KILN_F64, dy, 2, 2);
    CHECK_OK(run_op(KP_MATMUL, 0, IN(vda, vdb, vdbias), IN(vdy), IAS(0), NOFA));
    double dw[4] = {4.5, 4.5, 10.5, 10.5};
    CHECK(close_f64(dy, dw, 4, 0));
    CHECK_STATUS(check_op(KP_MATMUL, 0, IN(vda, vdb, vdbias), IN(vdy), IAS(1, KP_POST_UNARY, KP_U_RELU),
                          FAS(0, 0)), KILN_ERR_UNSUPPORTED);
    /* a bigger one through the blocked path, with a binary-add post-op of a row vector */
    enum { M = 37, K = 300, N = 530 };
    float *A = malloc(M * K * 4), *B = malloc(K * N * 4), *Y = malloc(M * N * 4), *W = malloc(M * N * 4);
    float *R = malloc(N * 4);
    fill_rand(A, M * K);
    fill_rand(B, K * N);
    fill_rand(R, N);
    naive_matmul(A, B, W, M, K, N);
    for (int i = 0; i < M * N; i++)
        W[i] += R[i % N];
    int vA = VAL(KILN_F32, A, M, K), vB = VAL(KILN_F32, B, K, N), vR = VAL(KILN_F32, R, 1, N);
    int vY = VAL(KILN_F32, Y, M, N);
    CHECK_OK(run_op(KP_MATMUL, 0, IN(vA, vB, -1, vR), IN(vY), IAS(1, KP_POST_BINARY, KP_B_ADD), FAS(0, 0)));
    CHECK(close_f32(Y, W, M * N, 1e-4));
    free(A);
    free(B);
    free(Y);
    free(W);
    free(R);
}

static void test_check_rejects(void)
{
    float x[4];
    reset();
    int vx = VAL(KILN_F32, x, 4);
    /* unknown kind */
    CHECK_STATUS(check_op(0, 0, IN(vx), IN(vx), NOIA, NOFA), KILN_ERR_UNSUPPORTED);
    CHECK_STATUS(check_op(KP_OP_KIND_COUNT, 0, IN(vx), IN(vx), NOIA, NOFA), KILN_ERR_UNSUPPORTED);
    /* wrong attribute counts */
    CHECK_STATUS(check_op(KP_SOFTMAX, 0, IN(vx), IN(vx), NOIA, NOFA), KILN_ERR_UNSUPPORTED);
    CHECK(strstr(kiln_last_error(), "node") != NULL);
    CHECK_STATUS(check_op(KP_CUMSUM, 0, IN(vx), IN(vx), IAS(0, 0), NOFA), KILN_ERR_UNSUPPORTED);
    CHECK_STATUS(check_op(KP_TRANSPOSE, 0, IN(vx), IN(vx), IAS(0, 1), NOFA), KILN_ERR_UNSUPPORTED);
    /* missing input */
    CHECK_STATUS(check_op(KP_BINARY, KP_B_ADD, IN(vx, -1), IN(vx), NOIA, NOFA), KILN_ERR_UNSUPPORTED);
    /* f16 anywhere but Cast */
    uint16_t h[4];
    int vh = VAL(KILN_F16, h, 4);
    CHECK_STATUS(check_op(KP_SOFTMAX, 0, IN(vh), IN(vh), IAS(0), NOFA), KILN_ERR_UNSUPPORTED);
    CHECK_STATUS(check_op(KP_REDUCE, KP_R_SUM, IN(vh), IN(vh), IAS(0), NOFA), KILN_ERR_UNSUPPORTED);
    CHECK_OK(check_op(KP_CAST, 0, IN(vh), IN(vx), NOIA, NOFA));
    /* bf16 data movement is fine (dtype-agnostic copies) */
    CHECK_OK(check_op(KP_TRANSPOSE, 0, IN(vh), IN(vh), IAS(0), NOFA));
}

int main(void)
{
    test_unary();
    test_binary();
    test_where();
    test_cast();
    test_gather();
    test_transpose();
    test_slice();
    test_concat_split();
    test_copy_expand_tile();
    test_pad();
    test_depth_space();
    test_reduce();
    test_argreduce();
    test_cumsum();
    test_softmax();
    test_layernorm();
    test_batch_group_norm();
    test_resize();
    test_pool();
    test_conv();
    test_conv_post_ops();
    test_conv_transpose();
    test_matmul();
    test_check_rejects();
    return test_done("test_ref_kernels");
}
