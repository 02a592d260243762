/*
 * ref.c — the plain C reference kernels' front door: kr_check / kr_create dispatch by op
 * kind, the checks every op shares, and the iteration engines the kind files build on
 * (strided copy, per-dim index maps, numpy broadcasting) plus dtype conversions.
 */
#include "kernels/ref.h"

#include <math.h>
#include <stdio.h>

/* ---- errors and kernel allocation ---- */

static kiln_status vfail(const kp_program *p, uint32_t i, kiln_status s, const char *fmt,
                         va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    const kp_op *op = &p->ops[i];
    return kiln__fail(s, "%s '%s': %s", kp_op_kind_name(op->kind), kp_str(p, op->name), msg);
}

kiln_status kr_bad(const kr_op *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    kiln_status s = vfail(o->p, o->index, KILN_ERR_UNSUPPORTED, fmt, ap);
    va_end(ap);
    return s;
}

kiln_status kr_fail(const kp_program *p, uint32_t op, kiln_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s = vfail(p, op, s, fmt, ap);
    va_end(ap);
    return s;
}

void kr_kernel_free_plain(kk_kernel *k) { kiln__free(k); }

void *kr_kernel_new(const kr_op *o, size_t size, kiln_status (*run)(kk_kernel *))
{
    KILN_ASSERT(size >= sizeof(kk_kernel));
    kk_kernel *k = kiln__calloc(1, size);
    if (!k) {
        kr_fail(o->p, o->index, KILN_ERR_NOMEM, "out of memory creating its kernel");
        return NULL;
    }
    k->run = run;
    k->destroy = kr_kernel_free_plain;
    k->prog = o->p;
    k->op = o->index;
    return k;
}

kiln_status kr_check_values(const kr_op *o)
{
    for (int i = 0; i < o->op->n_in + o->op->n_out; i++) {
        int32_t id = o->in[i];  /* outputs follow inputs in io */
        if (id < 0)
            continue;
        if ((uint32_t)id >= o->p->n_values)
            return kr_bad(o, "operand %d refers to value %d of %u", i, id, o->p->n_values);
        const kp_value *v = &o->p->values[id];
        if (!kr_dtype_valid(v->dtype))
            return kr_bad(o, "value '%s' has unknown dtype %d", kp_str(o->p, v->name), v->dtype);
        if (v->ndim > KILN_MAX_DIMS || kp_value_numel(v) < 0)
            return kr_bad(o, "value '%s' has a bad shape", kp_str(o->p, v->name));
        for (int d = 0; d < v->ndim; d++)   /* keeps the kernels' index arithmetic in range */
            if (v->shape[d] > KR_MAX_EXTENT)
                return kr_bad(o, "value '%s' has an extent of %lld", kp_str(o->p, v->name),
                              (long long)v->shape[d]);
    }
    return KILN_OK;
}

/* ---- dispatch ---- */

static const struct {
    kr_check_fn check;
    kr_create_fn create;
} kinds[KP_OP_KIND_COUNT] = {
    [KP_CONV] = {kr_check_conv, kr_create_conv},
    [KP_CONV_TRANSPOSE] = {kr_check_conv_transpose, kr_create_conv_transpose},
    [KP_MATMUL] = {kr_check_matmul, kr_create_matmul},
    [KP_POOL] = {kr_check_pool, kr_create_pool},
    [KP_GLOBAL_POOL] = {kr_check_global_pool, kr_create_global_pool},
    [KP_UNARY] = {kr_check_unary, kr_create_unary},
    [KP_BINARY] = {kr_check_binary, kr_create_binary},
    [KP_WHERE] = {kr_check_where, kr_create_where},
    [KP_SOFTMAX] = {kr_check_softmax, kr_create_softmax},
    [KP_LAYERNORM] = {kr_check_layernorm, kr_create_layernorm},
    [KP_BATCHNORM] = {kr_check_batchnorm, kr_create_batchnorm},
    [KP_GROUPNORM] = {kr_check_groupnorm, kr_create_groupnorm},
    [KP_GATHER] = {kr_check_gather, kr_create_gather},
    [KP_TRANSPOSE] = {kr_check_transpose, kr_create_transpose},
    [KP_SLICE] = {kr_check_slice, kr_create_slice},
    [KP_CONCAT] = {kr_check_concat, kr_create_concat},
    [KP_SPLIT] = {kr_check_split, kr_create_split},
    [KP_COPY] = {kr_check_copy, kr_create_copy},
    [KP_CAST] = {kr_check_cast, kr_create_cast},
    [KP_EXPAND] = {kr_check_expand, kr_create_expand},
    [KP_TILE] = {kr_check_tile, kr_create_tile},
    [KP_PAD] = {kr_check_pad, kr_create_pad},
    [KP_REDUCE] = {kr_check_reduce, kr_create_reduce},
    [KP_RESIZE] = {kr_check_resize, kr_create_resize},
    [KP_ARGREDUCE] = {kr_check_argreduce, kr_create_argreduce},
    [KP_CUMSUM] = {kr_check_cumsum, kr_create_cumsum},
    [KP_DEPTH_SPACE] = {kr_check_depth_space, kr_create_depth_space},
    [KP_TOPK] = {kr_check_topk, kr_create_topk},
    [KP_SCATTER] = {kr_check_scatter, kr_create_scatter},
};

static kiln_status check_op(const kp_program *p, uint32_t i, kr_op *o)
{
    KILN_ASSERT(p && i < p->n_ops);
    const kp_op *op = &p->ops[i];
    *o = (kr_op){p, op, i, kp_op_in(p, op), kp_op_out(p, op), kp_op_ia(p, op), kp_op_fa(p, op)};
    if (op->kind == 0 || op->kind >= KP_OP_KIND_COUNT || !kinds[op->kind].check)
        return kiln__fail(KILN_ERR_UNSUPPORTED, "op %u '%s': unknown op kind %u", i,
                          kp_str(p, op->name), op->kind);
    kiln_status s = kr_check_values(o);
    if (s != KILN_OK)
        return s;
    return kinds[op->kind].check(o);
}

kiln_status kr_check(const kp_program *p, uint32_t i)
{
    kr_op o;
    return check_op(p, i, &o);
}

kiln_status kr_create(const kp_program *p, uint32_t i, void *const *ptr, kk_kernel **out)
{
    kr_op o;
    *out = NULL;
    kiln_status s = check_op(p, i, &o);
    if (s != KILN_OK)
        return s;
    return kinds[o.op->kind].create(&o, ptr, out);
}

/* ---- f16 / bf16 ---- */

static double small_to_f64(uint16_t h, int ebits, int mbits)
{
    int bias = (1 << (ebits - 1)) - 1;
    int e = (h >> mbits) & ((1 << ebits) - 1);
    int m = h & ((1 << mbits) - 1);
    double v;
    if (e == (1 << ebits) - 1)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp((double)m, 1 - bias - mbits);
    else
        v = ldexp((double)(m | (1 << mbits)), e - bias - mbits);
    return (h >> 15) ? -v : v;
}

/* Rounds x (to nearest even) into a 16-bit float with ebits exponent and mbits mantissa bits. */
static uint16_t f64_to_small(double x, int ebits, int mbits)
{
    int bias = (1 << (ebits - 1)) - 1, emax = (1 << ebits) - 1;
    uint16_t sign = signbit(x) ? 0x8000u : 0;
    if (isnan(x))
        return (uint16_t)(sign | (emax << mbits) | (1 << (mbits - 1)));
    double a = fabs(x);
    if (isinf(a))
        return (uint16_t)(sign | (emax << mbits));
    if (a == 0)
        return sign;
    int e;
    frexp(a, &e);   /* a = f * 2^e, f in [0.5, 1): unbiased exponent e - 1 */
    int E = e - 1;
    if (E < 1 - bias) {
        /* subnormal: units of 2^(1 - bias - mbits); may round up into the smallest normal */
        double q = rint(ldexp(a, bias - 1 + mbits));
        return (uint16_t)(sign | (uint16_t)q);
    }
    double q = rint(ldexp(a, mbits - E));   /* in [2^mbits, 2^(mbits+1)] */
    if (q >= (double)(1 << (mbits + 1))) {
        q /= 2;
        E++;
    }
    if (E + bias >= emax)
        return (uint16_t)(sign | (emax << mbits));
    return (uint16_t)(sign | ((E + bias) << mbits) | ((uint16_t)q - (1 << mbits)));
}

double kr_f16_to_f64(uint16_t h) { return small_to_f64(h, 5, 10); }
double kr_bf16_to_f64(uint16_t h) { return small_to_f64(h, 8, 7); }
uint16_t kr_f64_to_f16(double x) { return f64_to_small(x, 5, 10); }
uint16_t kr_f64_to_bf16(double x) { return f64_to_small(x, 8, 7); }

double kr_load_f64(const void *p, int dt, int64_t i)
{
    switch (dt) {
    case KILN_F32: return ((const float *)p)[i];
    case KILN_F64: return ((const double *)p)[i];
    case KILN_F16: return kr_f16_to_f64(((const uint16_t *)p)[i]);
    case KILN_BF16: return kr_bf16_to_f64(((const uint16_t *)p)[i]);
    case KILN_I8: return ((const int8_t *)p)[i];
    case KILN_U8: return ((const uint8_t *)p)[i];
    case KILN_I32: return ((const int32_t *)p)[i];
    case KILN_I64: return (double)((const int64_t *)p)[i];
    case KILN_BOOL: return ((const uint8_t *)p)[i] != 0;
    }
    return 0;
}

static int64_t trunc_i64(double x)
{
    if (x != x)
        return 0;
    if (x >= 9223372036854775807.0)
        return INT64_MAX;
    if (x <= -9223372036854775808.0)
        return INT64_MIN;
    return (int64_t)x;
}

void kr_store_f64(void *p, int dt, int64_t i, double x)
{
    switch (dt) {
    case KILN_F32: ((float *)p)[i] = (float)x; break;
    case KILN_F64: ((double *)p)[i] = x; break;
    case KILN_F16: ((uint16_t *)p)[i] = kr_f64_to_f16(x); break;
    case KILN_BF16: ((uint16_t *)p)[i] = kr_f64_to_bf16(x); break;
    case KILN_I8: ((int8_t *)p)[i] = (int8_t)(uint8_t)trunc_i64(x); break;
    case KILN_U8: ((uint8_t *)p)[i] = (uint8_t)trunc_i64(x); break;
    case KILN_I32: ((int32_t *)p)[i] = (int32_t)(uint32_t)trunc_i64(x); break;
    case KILN_I64: ((int64_t *)p)[i] = trunc_i64(x); break;
    case KILN_BOOL: ((uint8_t *)p)[i] = x != 0; break;
    }
}

/* ---- strided copy ---- */

void kr_copy_init(kr_copy *c, int nd, const int64_t *n, const int64_t *ss, const int64_t *ds,
                  size_t es)
{
    KILN_ASSERT(nd <= KR_COPY_MAXD);
    c->es = es;
    int m = 0;
    for (int d = 0; d < nd; d++) {
        if (n[d] == 0) {
            c->nd = 0;
            return;
        }
        if (n[d] == 1)
            continue;
        if (m > 0 && c->ss[m - 1] == ss[d] * n[d] && c->ds[m - 1] == ds[d] * n[d]) {
            c->n[m - 1] *= n[d];
            c->ss[m - 1] = ss[d];
            c->ds[m - 1] = ds[d];
        } else {
            c->n[m] = n[d];
            c->ss[m] = ss[d];
            c->ds[m] = ds[d];
            m++;
        }
    }
    if (m == 0) {
        c->n[0] = 1;
        c->ss[0] = c->ds[0] = 1;
        m = 1;
    }
    c->nd = m;
}

#define COPY_ROW(T)                                            \
    do {                                                       \
        const T *s_ = (const T *)s;                            \
        T *d_ = (T *)d;                                        \
        for (int64_t j = 0; j < n; j++)                        \
            d_[j * ds] = s_[j * ss];                           \
    } while (0)

static void copy_row(const char *s, int64_t ss, char *d, int64_t ds, int64_t n, size_t es)
{
    if (ss == 1 && ds == 1) {
        memcpy(d, s, (size_t)n * es);
        return;
    }
    switch (es) {
    case 1: COPY_ROW(uint8_t); break;
    case 2: COPY_ROW(uint16_t); break;
    case 4: COPY_ROW(uint32_t); break;
    case 8: COPY_ROW(uint64_t); break;
    default:
        for (int64_t j = 0; j < n; j++)
            memcpy(d + j * ds * (int64_t)es, s + j * ss * (int64_t)es, es);
    }
}

/* A 2-D tile of a transposing copy: both inner strides are large on one side, so walk
 * blocks to keep both the source and the destination lines in cache. */
static void copy_tile2(const char *s, int64_t ss0, int64_t ss1, char *d, int64_t ds0,
                       int64_t ds1, int64_t n0, int64_t n1, size_t es)
{
    const int64_t B = 32;
    for (int64_t i0 = 0; i0 < n0; i0 += B) {
        int64_t e0 = i0 + B < n0 ? i0 + B : n0;
        for (int64_t i1 = 0; i1 < n1; i1 += B) {
            int64_t e1 = i1 + B < n1 ? i1 + B : n1;
            for (int64_t a = i0; a < e0; a++)
                copy_row(s + (a * ss0 + i1 * ss1) * (int64_t)es, ss1,
                         d + (a * ds0 + i1 * ds1) * (int64_t)es, ds1, e1 - i1, es);
        }
    }
}

void kr_copy_run(const kr_copy *c, const void *src, void *dst)
{
    if (c->nd == 0)
        return;
    const int nd = c->nd;
    const int64_t es = (int64_t)c->es;
    const char *s = src;
    char *d = dst;
    /* a transpose-like innermost pair: tile it */
    bool tile = nd >= 2 && c->ds[nd - 1] == 1 && c->ss[nd - 1] != 1 && c->ss[nd - 2] == 1 &&
                c->n[nd - 1] >= 16 && c->n[nd - 2] >= 16;
    int outer = tile ? nd - 2 : nd - 1;
    int64_t rows = 1;
    for (int k = 0; k < outer; k++)
        rows *= c->n[k];
    int64_t idx[KR_COPY_MAXD] = {0}, so = 0, dof = 0;
    for (int64_t r = 0; r < rows; r++) {
        if (tile)
            copy_tile2(s + so * es, c->ss[nd - 2], c->ss[nd - 1], d + dof * es, c->ds[nd - 2],
                       c->ds[nd - 1], c->n[nd - 2], c->n[nd - 1], c->es);
        else
            copy_row(s + so * es, c->ss[nd - 1], d + dof * es, c->ds[nd - 1], c->n[nd - 1], c->es);
        for (int k = outer - 1; k >= 0; k--) {
            if (++idx[k] < c->n[k]) {
                so += c->ss[k];
                dof += c->ds[k];
                break;
            }
            idx[k] = 0;
            so -= c->ss[k] * (c->n[k] - 1);
            dof -= c->ds[k] * (c->n[k] - 1);
        }
    }
}

/* ---- index maps ---- */

kiln_status kr_map_alloc(kr_map *m, int nd, const int64_t *n, size_t es)
{
    memset(m, 0, sizeof *m);
    m->es = es;
    if (nd == 0) {
        m->nd = 1;
        m->n[0] = 1;
    } else {
        m->nd = nd;
        for (int d = 0; d < nd; d++)
            m->n[d] = n[d];
    }
    int64_t total = 0;
    for (int d = 0; d < m->nd; d++)
        total += m->n[d];
    m->buf = kiln__malloc((size_t)(total ? total : 1) * sizeof(int64_t));
    if (!m->buf)
        return kiln__fail(KILN_ERR_NOMEM, "out of memory for index maps");
    int64_t at = 0;
    for (int d = 0; d < m->nd; d++) {
        m->off[d] = m->buf + at;
        at += m->n[d];
    }
    return KILN_OK;
}

void kr_map_finish(kr_map *m)
{
    const int64_t *o = m->off[m->nd - 1];
    int64_t n = m->n[m->nd - 1];
    m->inner_contig = n > 0 && o[0] >= 0;
    for (int64_t j = 1; j < n && m->inner_contig; j++)
        if (o[j] != o[0] + j)
            m->inner_contig = false;
}

void kr_map_free(kr_map *m)
{
    kiln__free(m->buf);
    m->buf = NULL;
}

#define MAP_ROW(T)                                                     \
    do {                                                               \
        const T *s_ = (const T *)s;                                    \
        T *d_ = (T *)d;                                                \
        T f_;                                                          \
        memcpy(&f_, m->fill, sizeof f_);                               \
        for (int64_t j = 0; j < n; j++)                                \
            d_[j] = o[j] < 0 ? f_ : s_[o[j]];                          \
    } while (0)

#define FILL_ROW(T)                                                    \
    do {                                                               \
        T *d_ = (T *)d;                                                \
        T f_;                                                          \
        memcpy(&f_, m->fill, sizeof f_);                               \
        for (int64_t j = 0; j < n; j++)                                \
            d_[j] = f_;                                                \
    } while (0)

void kr_map_run(const kr_map *m, const void *src, void *dst)
{
    const int nd = m->nd;
    const int64_t n = m->n[nd - 1];
    const int64_t es = (int64_t)m->es;
    const int64_t *o = m->off[nd - 1];
    int64_t rows = 1;
    for (int k = 0; k < nd - 1; k++)
        rows *= m->n[k];
    if (n == 0 || rows == 0)
        return;
    int64_t idx[KILN_MAX_DIMS] = {0};
    char *d = dst;
    for (int64_t r = 0; r < rows; r++, d += n * es) {
        int64_t base = 0;
        bool fill = false;
        for (int k = 0; k < nd - 1; k++) {
            int64_t v = m->off[k][idx[k]];
            if (v < 0)
                fill = true;
            base += v;
        }
        const char *s = (const char *)src + base * es;
        if (fill) {
            switch (es) {
            case 1: FILL_ROW(uint8_t); break;
            case 2: FILL_ROW(uint16_t); break;
            case 4: FILL_ROW(uint32_t); break;
            default: FILL_ROW(uint64_t); break;
            }
        } else if (m->inner_contig) {
            memcpy(d, s + o[0] * es, (size_t)(n * es));
        } else {
            switch (es) {
            case 1: MAP_ROW(uint8_t); break;
            case 2: MAP_ROW(uint16_t); break;
            case 4: MAP_ROW(uint32_t); break;
            default: MAP_ROW(uint64_t); break;
            }
        }
        for (int k = nd - 2; k >= 0; k--) {
            if (++idx[k] < m->n[k])
                break;
            idx[k] = 0;
        }
    }
}

/* ---- numpy broadcasting ---- */

bool kr_bcast_ok(int nin, const kp_value *const *in, int out_nd, const int64_t *out_shape)
{
    for (int k = 0; k < nin; k++) {
        const kp_value *v = in[k];
        if (v->ndim > out_nd)
            return false;
        for (int d = 0; d < v->ndim; d++) {
            int64_t s = v->shape[d], o = out_shape[out_nd - v->ndim + d];
            if (s != o && s != 1)
                return false;
        }
    }
    return true;
}

void kr_bcast_init(kr_bcast *b, int nin, const kp_value *const *in, int out_nd,
                   const int64_t *out_shape)
{
    KILN_ASSERT(nin >= 1 && nin <= 3 && out_nd <= KILN_MAX_DIMS);
    memset(b, 0, sizeof *b);
    b->nin = nin;
    int64_t st[3][KILN_MAX_DIMS];
    for (int k = 0; k < nin; k++) {
        const kp_value *v = in[k];
        int64_t s = 1;
        for (int d = out_nd - 1; d >= 0; d--) {
            int vd = d - (out_nd - v->ndim);
            int64_t sz = vd >= 0 ? v->shape[vd] : 1;
            st[k][d] = sz == 1 ? 0 : s;
            s *= sz;
        }
    }
    int m = 0;
    for (int d = 0; d < out_nd; d++) {
        int64_t n = out_shape[d];
        if (n == 0) {
            b->nd = 1;
            b->n[0] = 0;
            b->rows = 0;
            b->inner = 0;
            return;
        }
        if (n == 1)
            continue;
        bool merge = m > 0;
        for (int k = 0; k < nin && merge; k++)
            if (b->st[k][m - 1] != st[k][d] * n)
                merge = false;
        if (merge) {
            b->n[m - 1] *= n;
            for (int k = 0; k < nin; k++)
                b->st[k][m - 1] = st[k][d];
        } else {
            b->n[m] = n;
            for (int k = 0; k < nin; k++)
                b->st[k][m] = st[k][d];
            m++;
        }
    }
    if (m == 0) {
        b->n[0] = 1;
        for (int k = 0; k < nin; k++)
            b->st[k][0] = 0;
        m = 1;
    }
    b->nd = m;
    b->inner = b->n[m - 1];
    b->rows = 1;
    for (int d = 0; d < m - 1; d++)
        b->rows *= b->n[d];
}
