/*
 * lower_shape.c — lowerings that cost nothing at run time: Identity/Dropout (the input
 * itself), the metadata reshapes (Reshape, Flatten, Squeeze, Unsqueeze: aliases), and the
 * ops whose result is known at trace time (Shape, Size, Constant, ConstantOfShape, Range,
 * EyeLike: constants).
 */
#include "compiler/lower_impl.h"

#include <math.h>
#include <string.h>

/* A constant of `shape` with every element equal to the one element of dtype dt at `elem`. */
static kiln_status filled_const(kc_ctx *c, kiln_dtype dt, int ndim, const int64_t *shape,
                                const void *elem, kc_val *out)
{
    int64_t cnt = kiln__numel(ndim, shape);
    size_t es = kiln_dtype_size(dt);
    uint8_t *buf = kiln__malloc((size_t)cnt * es + 1);
    if (!buf)
        return kiln__fail(KILN_ERR_NOMEM, "out of memory for a %lld-element constant", (long long)cnt);
    for (int64_t i = 0; i < cnt; i++)
        memcpy(buf + i * es, elem, es);
    kiln_status s = kc_const(c, dt, ndim, shape, buf, out);
    kiln__free(buf);
    return s;
}

/* The value 1 of dtype dt, stored at p. */
static void put_one(kiln_dtype dt, void *p)
{
    switch (dt) {
    case KILN_F32: *(float *)p = 1.0f; break;
    case KILN_F64: *(double *)p = 1.0; break;
    case KILN_F16: *(uint16_t *)p = 0x3c00; break;
    case KILN_BF16: *(uint16_t *)p = 0x3f80; break;
    case KILN_I32: *(int32_t *)p = 1; break;
    case KILN_I64: *(int64_t *)p = 1; break;
    default: *(uint8_t *)p = 1; break;                 /* i8, u8, bool */
    }
}

kiln_status kc_lower_identity(kc_ctx *c, const kg_node *n)
{
    kc_val x, mask;
    KC_TRY(kc_arg(c, n, 0, &x));
    if (!strcmp(n->op_type, "Dropout")) {
        kc_val t;
        int64_t train = 0;
        int cnt;
        if (kc_opt_arg(c, n, 2, &t))
            KC_TRY(kc_const_ints(c, n, t.id, &train, 1, &cnt));
        if (train) {
            double ratio = 0.5;
            if (kc_opt_arg(c, n, 1, &t))
                KC_TRY(kc_const_floats(c, n, t.id, &ratio, 1, &cnt));
            if (ratio != 0.0)
                return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "training_mode (random dropout)");
        }
        if (kc_output_wanted(c, n, 1)) {               /* nothing dropped: all ones */
            kiln_dtype mdt = kc_opset(c) < 10 ? x.dt : KILN_BOOL;
            uint64_t one = 0;
            put_one(mdt, &one);
            KC_TRY(filled_const(c, mdt, x.ndim, x.shape, &one, &mask));
            KC_TRY(kc_out(c, n, 1, &mask));
        }
    }
    return kc_out(c, n, 0, &x);
}

kiln_status kc_lower_reshape(kc_ctx *c, const kg_node *n)
{
    kc_val x, y;
    int64_t s[KILN_MAX_DIMS];
    int cnt;
    bool present;
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_ints_arg(c, n, "shape", 1, s, KILN_MAX_DIMS, &cnt, &present));
    if (!present)
        return kc_fail(c, n, KILN_ERR_FORMAT, "missing shape");
    bool allowzero = kg_attr_int(n, "allowzero", 0) != 0;
    int infer = -1;
    int64_t known = 1;
    for (int i = 0; i < cnt; i++) {
        if (s[i] == 0 && !allowzero) {
            if (i >= x.ndim)
                return kc_fail(c, n, KILN_ERR_SHAPE, "shape[%d] = 0 copies a dim the input lacks", i);
            s[i] = x.shape[i];
        }
        if (s[i] == -1) {
            if (infer >= 0)
                return kc_fail(c, n, KILN_ERR_SHAPE, "more than one -1 in shape");
            infer = i;
        } else if (s[i] < 0) {
            return kc_fail(c, n, KILN_ERR_SHAPE, "shape[%d] = %lld", i, (long long)s[i]);
        } else {
            uint64_t k2;
            if (!kiln__mul_ok((uint64_t)known, (uint64_t)s[i], &k2) || k2 > (uint64_t)INT64_MAX)
                return kc_fail(c, n, KILN_ERR_SHAPE, "shape[%d] = %lld: the shape's size overflows", i,
                               (long long)s[i]);
            known = (int64_t)k2;
        }
    }
    if (infer >= 0) {
        if (known == 0 || kc_numel(&x) % known)
            return kc_fail(c, n, KILN_ERR_SHAPE, "cannot infer the -1 dim of the shape");
        s[infer] = kc_numel(&x) / known;
    }
    KC_TRY(kc_reshape(c, n, &x, cnt, s, &y));
    return kc_out(c, n, 0, &y);
}

kiln_status kc_lower_flatten(kc_ctx *c, const kg_node *n)
{
    kc_val x, y;
    int64_t axis = kg_attr_int(n, "axis", 1);
    KC_TRY(kc_arg(c, n, 0, &x));
    if (axis < -x.ndim || axis > x.ndim)
        return kc_fail(c, n, KILN_ERR_SHAPE, "axis %lld out of range for rank %d", (long long)axis,
                       x.ndim);
    if (axis < 0)
        axis += x.ndim;
    int64_t s[2] = {kiln__numel((int)axis, x.shape), kiln__numel(x.ndim - (int)axis, x.shape + axis)};
    KC_TRY(kc_reshape(c, n, &x, 2, s, &y));
    return kc_out(c, n, 0, &y);
}

kiln_status kc_lower_squeeze(kc_ctx *c, const kg_node *n)
{
    kc_val x, y;
    int64_t a[KILN_MAX_DIMS], s[KILN_MAX_DIMS];
    int cnt, axes[KILN_MAX_DIMS], k = 0;
    bool present, drop[KILN_MAX_DIMS] = {false};
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_ints_arg(c, n, "axes", 1, a, KILN_MAX_DIMS, &cnt, &present));
    if (present) {
        KC_TRY(kc_axes(c, n, a, cnt, x.ndim, axes));
        for (int i = 0; i < cnt; i++) {
            if (x.shape[axes[i]] != 1)
                return kc_fail(c, n, KILN_ERR_SHAPE, "cannot squeeze axis %d of extent %lld",
                               axes[i], (long long)x.shape[axes[i]]);
            drop[axes[i]] = true;
        }
    } else {
        for (int i = 0; i < x.ndim; i++)
            drop[i] = x.shape[i] == 1;
    }
    for (int i = 0; i < x.ndim; i++)
        if (!drop[i])
            s[k++] = x.shape[i];
    KC_TRY(kc_reshape(c, n, &x, k, s, &y));
    return kc_out(c, n, 0, &y);
}

kiln_status kc_lower_unsqueeze(kc_ctx *c, const kg_node *n)
{
    kc_val x, y;
    int64_t a[KILN_MAX_DIMS], s[KILN_MAX_DIMS];
    int cnt, axes[KILN_MAX_DIMS];
    bool present, ins[KILN_MAX_DIMS] = {false};
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_ints_arg(c, n, "axes", 1, a, KILN_MAX_DIMS, &cnt, &present));
    if (!present)
        return kc_fail(c, n, KILN_ERR_FORMAT, "missing axes");
    int r = x.ndim + cnt;
    if (r > KILN_MAX_DIMS)
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "output rank %d exceeds %d", r, KILN_MAX_DIMS);
    KC_TRY(kc_axes(c, n, a, cnt, r, axes));
    for (int i = 0; i < cnt; i++)
        ins[axes[i]] = true;
    for (int i = 0, j = 0; i < r; i++)
        s[i] = ins[i] ? 1 : x.shape[j++];
    KC_TRY(kc_reshape(c, n, &x, r, s, &y));
    return kc_out(c, n, 0, &y);
}

kiln_status kc_lower_shape(kc_ctx *c, const kg_node *n)
{
    kc_val x, y;
    KC_TRY(kc_arg(c, n, 0, &x));
    int64_t r = x.ndim, start = kg_attr_int(n, "start", 0), end = kg_attr_int(n, "end", r);
    if (start < 0)
        start += r;
    if (end < 0)
        end += r;
    start = start < 0 ? 0 : start > r ? r : start;
    end = end < 0 ? 0 : end > r ? r : end;
    int64_t len = end > start ? end - start : 0;
    KC_TRY(kc_const(c, KILN_I64, 1, &len, x.shape + start, &y));
    return kc_out(c, n, 0, &y);
}

kiln_status kc_lower_size(kc_ctx *c, const kg_node *n)
{
    kc_val x, y;
    KC_TRY(kc_arg(c, n, 0, &x));
    int64_t numel = kc_numel(&x);
    KC_TRY(kc_const(c, KILN_I64, 0, NULL, &numel, &y));
    return kc_out(c, n, 0, &y);
}

static kiln_status tensor_const(kc_ctx *c, const kg_node *n, const kg_tensor *t, kc_val *out)
{
    if (!t->dtype || !kiln_dtype_size(t->dtype))
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "tensor dtype");
    return kc_const(c, t->dtype, t->ndim, t->shape, t->data, out);
}

kiln_status kc_lower_constant(kc_ctx *c, const kg_node *n)
{
    kc_val y;
    for (int i = 0; i < n->n_attr; i++) {
        const kg_attr *a = &n->attrs[i];
        int64_t len = (int64_t)a->n;
        if (!strcmp(a->name, "value") && a->type == KG_ATTR_TENSOR && a->t)
            KC_TRY(tensor_const(c, n, a->t, &y));
        else if (!strcmp(a->name, "value_float") && a->type == KG_ATTR_FLOAT)
            KC_TRY(kc_const(c, KILN_F32, 0, NULL, &a->f, &y));
        else if (!strcmp(a->name, "value_floats") && a->type == KG_ATTR_FLOATS)
            KC_TRY(kc_const(c, KILN_F32, 1, &len, a->floats, &y));
        else if (!strcmp(a->name, "value_int") && a->type == KG_ATTR_INT)
            KC_TRY(kc_const(c, KILN_I64, 0, NULL, &a->i, &y));
        else if (!strcmp(a->name, "value_ints") && a->type == KG_ATTR_INTS)
            KC_TRY(kc_const(c, KILN_I64, 1, &len, a->ints, &y));
        else
            continue;
        return kc_out(c, n, 0, &y);
    }
    return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "no tensor, float or int value (sparse or string?)");
}

kiln_status kc_lower_constant_of_shape(kc_ctx *c, const kg_node *n)
{
    kc_val x, y;
    int64_t s[KILN_MAX_DIMS];
    int cnt;
    KC_TRY(kc_arg(c, n, 0, &x));
    if (kc_numel(&x) > KILN_MAX_DIMS)
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "output rank %lld exceeds %d",
                       (long long)kc_numel(&x), KILN_MAX_DIMS);
    KC_TRY(kc_const_ints(c, n, x.id, s, KILN_MAX_DIMS, &cnt));
    for (int i = 0; i < cnt; i++)
        if (s[i] < 0)
            return kc_fail(c, n, KILN_ERR_SHAPE, "negative dim %lld", (long long)s[i]);
    const kg_attr *a = kg_attr_find(n, "value");
    float zero = 0.0f;
    if (!a)
        KC_TRY(filled_const(c, KILN_F32, cnt, s, &zero, &y));
    else if (a->type != KG_ATTR_TENSOR || !a->t || a->t->nbytes != kiln_dtype_size(a->t->dtype) ||
             !kiln_dtype_size(a->t->dtype))
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "value must be a one-element tensor");
    else
        KC_TRY(filled_const(c, a->t->dtype, cnt, s, a->t->data, &y));
    return kc_out(c, n, 0, &y);
}

/* NonZero of a constant (torch exports arange at opsets 9-10 as NonZero(ConstantOfShape)):
 * computed at trace time, since the output's shape is the count of non-zero elements. */
kiln_status kc_lower_nonzero(kc_ctx *c, const kg_node *n)
{
    kc_val x, y;
    KC_TRY(kc_arg(c, n, 0, &x));
    const uint8_t *d = kc_const_data(c, x.id);
    if (!d) {                      /* fails: "input 'NAME' must be known at trace time" */
        int64_t unused;
        int cnt;
        KC_TRY(kc_const_ints(c, n, x.id, &unused, 1, &cnt));
        return kc_fail(c, n, KILN_ERR_INTERNAL, "NonZero input neither constant nor not");
    }
    int64_t numel = kc_numel(&x), nnz = 0;
    size_t es = kiln_dtype_size(x.dt);
    uint8_t *nz = kiln__malloc((size_t)numel + 1);
    if (!nz)
        return kiln__fail(KILN_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < numel; i++) {
        const uint8_t *e = d + (size_t)i * es;
        bool on = false;
        switch (x.dt) {                              /* floats: -0 is zero, NaN is not */
        case KILN_F32: { float v; memcpy(&v, e, sizeof v); on = v != 0; break; }
        case KILN_F64: { double v; memcpy(&v, e, sizeof v); on = v != 0; break; }
        case KILN_F16:
        case KILN_BF16: { uint16_t v; memcpy(&v, e, sizeof v); on = (v & 0x7FFF) != 0; break; }
        default:
            for (size_t b = 0; b < es; b++)
                on |= e[b] != 0;
        }
        nz[i] = on;
        nnz += on;
    }
    int rank = x.ndim;
    int64_t shape[2] = {rank, nnz}, st[KILN_MAX_DIMS];
    int64_t *out = kiln__malloc((size_t)(rank * nnz + 1) * sizeof *out);
    if (!out) {
        kiln__free(nz);
        return kiln__fail(KILN_ERR_NOMEM, "out of memory");
    }
    for (int k = rank - 1; k >= 0; k--)
        st[k] = k == rank - 1 ? 1 : st[k + 1] * x.shape[k + 1];
    for (int64_t i = 0, j = 0; i < numel; i++) {
        if (!nz[i])
            continue;
        for (int k = 0; k < rank; k++)
            out[k * nnz + j] = (i / st[k]) % x.shape[k];
        j++;
    }
    kiln_status s = kc_const(c, KILN_I64, 2, shape, out, &y);
    kiln__free(nz);
    kiln__free(out);
    KC_TRY(s);
    return kc_out(c, n, 0, &y);
}

/* Stores v as element i of a buffer of dtype dt (integer or float). */
static void put_num(void *buf, kiln_dtype dt, int64_t i, double v, int64_t iv)
{
    switch (dt) {
    case KILN_F32: ((float *)buf)[i] = (float)v; break;
    case KILN_F64: ((double *)buf)[i] = v; break;
    case KILN_I32: ((int32_t *)buf)[i] = (int32_t)iv; break;
    case KILN_I64: ((int64_t *)buf)[i] = iv; break;
    case KILN_I8:  ((int8_t *)buf)[i] = (int8_t)iv; break;
    case KILN_U8:  ((uint8_t *)buf)[i] = (uint8_t)iv; break;
    default: KILN_ASSERT(!"put_num dtype");
    }
}

kiln_status kc_lower_range(kc_ctx *c, const kg_node *n)
{
    kc_val a[3], y;
    double f[3];
    int64_t iv[3], len;
    int cnt;
    for (int i = 0; i < 3; i++) {
        KC_TRY(kc_arg(c, n, i, &a[i]));
        if (kc_numel(&a[i]) != 1)
            return kc_fail(c, n, KILN_ERR_SHAPE, "input %d must be a scalar", i);
        KC_TRY(kc_same_dtype(c, n, &a[0], &a[i]));
        KC_TRY(kc_const_floats(c, n, a[i].id, &f[i], 1, &cnt));
        KC_TRY(kc_const_ints(c, n, a[i].id, &iv[i], 1, &cnt));
    }
    kiln_dtype dt = a[0].dt;
    bool fl = dt == KILN_F32 || dt == KILN_F64;
    if (!fl && dt != KILN_I32 && dt != KILN_I64 && dt != KILN_I8 && dt != KILN_U8)
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "dtype %s", kiln_dtype_name(dt));
    if (fl ? f[2] == 0.0 : iv[2] == 0)
        return kc_fail(c, n, KILN_ERR_SHAPE, "delta is 0");
    if (dt == KILN_F32) {
        len = (int64_t)ceilf(((float)f[1] - (float)f[0]) / (float)f[2]);
    } else if (fl) {
        len = (int64_t)ceil((f[1] - f[0]) / f[2]);
    } else {
        int64_t d = iv[1] - iv[0], q = d / iv[2];
        len = q + (q * iv[2] != d && ((d > 0) == (iv[2] > 0)));
    }
    if (len < 0)
        len = 0;
    if (len > ((int64_t)1 << 32))
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "%lld elements", (long long)len);
    void *buf = kiln__malloc((size_t)len * kiln_dtype_size(dt) + 1);
    if (!buf)
        return kiln__fail(KILN_ERR_NOMEM, "out of memory for a range of %lld", (long long)len);
    for (int64_t i = 0; i < len; i++) {
        if (dt == KILN_F32)
            put_num(buf, dt, i, (float)f[0] + (float)i * (float)f[2], 0);
        else
            put_num(buf, dt, i, f[0] + (double)i * f[2], iv[0] + i * iv[2]);
    }
    kiln_status s = kc_const(c, dt, 1, &len, buf, &y);
    kiln__free(buf);
    KC_TRY(s);
    return kc_out(c, n, 0, &y);
}

kiln_status kc_lower_eye_like(kc_ctx *c, const kg_node *n)
{
    kc_val x, y;
    kiln_dtype dt;
    KC_TRY(kc_arg(c, n, 0, &x));
    KC_TRY(kc_check_rank(c, n, &x, "input", 2, 2));
    const kg_attr *a = kg_attr_find(n, "dtype");
    dt = x.dt;
    if (a && !kc_onnx_dtype(a->i, &dt))
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "dtype %lld", (long long)a->i);
    int64_t k = kg_attr_int(n, "k", 0), rows = x.shape[0], cols = x.shape[1];
    size_t es = kiln_dtype_size(dt);
    uint8_t *buf = kiln__calloc((size_t)(rows * cols) + 1, es);
    if (!buf)
        return kiln__fail(KILN_ERR_NOMEM, "out of memory for EyeLike");
    for (int64_t i = 0; i < rows; i++) {
        int64_t j = i + k;
        if (j < 0 || j >= cols)
            continue;
        put_one(dt, buf + (i * cols + j) * es);
    }
    kiln_status s = kc_const(c, dt, 2, x.shape, buf, &y);
    kiln__free(buf);
    KC_TRY(s);
    return kc_out(c, n, 0, &y);
}
