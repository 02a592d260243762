/*
 * trace.c — the compiler's framework: turns an imported ONNX graph plus example input shapes
 * into a sealed kp_program.
 *
 *   lower     each node through its lowering (lower_*.c) into program ops over program
 *             values; kc_emit folds any op whose inputs are all constant by running its
 *             kernel right away, so exporters' shape arithmetic disappears here
 *   fuse      Conv+BatchNorm into the weights; Conv/MatMul + bias, activation, residual Add
 *             and scalar scaling into post-ops (fuse.c)
 *   prune     ops whose results nobody uses
 *   pack      weights into the layout this machine's kernels want (kk_pack_weight)
 *   plan      one arena for activations: storage roots placed by lifetime, best fit
 *   seal      renumber live values and ops into compact pools, gather weights into one
 *             KP_ALIGN-aligned section
 *
 * The compiler never sees threads: it runs on the caller's thread with a temporary
 * one-thread kernel core used for folding and packing.
 */
#include "compiler/trace.h"

#include "kernels/kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------
 * Building the program
 * ------------------------------------------------------------------------------------- */

static bool push_string(kc_ctx *c, const char *s, uint32_t *off)
{
    size_t n = strlen(s) + 1;
    if (n == 1) {
        *off = 0;
        return true;
    }
    if (!kiln__grow((void **)&c->p.strings, &c->cap_strings, c->p.n_strings + n, 1))
        return false;
    memcpy(c->p.strings + c->p.n_strings, s, n);
    *off = c->p.n_strings;
    c->p.n_strings += (uint32_t)n;
    return true;
}

/* Why the last push_value failed (its callers return it). */
static _Thread_local kiln_status push_status;

/* Appends a value; returns its id or -1 (error set, its status in push_status). */
static int push_value(kc_ctx *c, kiln_dtype dt, int ndim, const int64_t *shape, int kind)
{
    size_t n = c->p.n_values;
    if (ndim < 0 || ndim > KILN_MAX_DIMS) {
        push_status = kiln__fail(KILN_ERR_UNSUPPORTED, "tensors of rank %d are not supported", ndim);
        return -1;
    }
    int64_t numel = kiln__numel(ndim, shape);
    uint64_t bytes;
    if (numel < 0 || !kiln__mul_ok((uint64_t)numel, kiln_dtype_size(dt), &bytes) || kiln_dtype_size(dt) == 0) {
        push_status = kiln__fail(KILN_ERR_SHAPE, "tensor shape or dtype out of range");
        return -1;
    }
    size_t cap = c->cap_values;
    if (!kiln__grow((void **)&c->p.values, &cap, n + 1, sizeof(kp_value)) ||
        !kiln__grow((void **)&c->cdata, &c->cap_cdata, n + 1, sizeof(void *)) ||
        !kiln__grow((void **)&c->cowned, &c->cap_cowned, n + 1, 1) ||
        !kiln__grow((void **)&c->root, &c->cap_root, n + 1, sizeof(int32_t))) {
        c->cap_values = cap;
        push_status = kiln__fail(KILN_ERR_NOMEM, "out of memory while tracing");
        return -1;
    }
    c->cap_values = cap;
    kp_value *v = &c->p.values[n];
    memset(v, 0, sizeof *v);
    v->dtype = (uint8_t)dt;
    v->ndim = (uint8_t)ndim;
    v->kind = (uint8_t)kind;
    for (int i = 0; i < ndim; i++)
        v->shape[i] = shape[i];
    v->nbytes = bytes;
    c->cdata[n] = NULL;
    c->cowned[n] = 0;
    c->root[n] = (int32_t)n;
    c->p.n_values++;
    return (int)n;
}

int kc_num_inputs(const kc_ctx *c, const kg_node *n) { return n->n_in; }

int kc_input(const kc_ctx *c, const kg_node *n, int i)
{
    if (i < 0 || i >= n->n_in || n->in[i] < 0)
        return -1;
    return c->gmap[n->in[i]];
}

const kp_value *kc_value(const kc_ctx *c, int v) { return &c->p.values[v]; }
bool kc_is_const(const kc_ctx *c, int v) { return v >= 0 && c->p.values[v].kind == KP_VAL_CONST; }
const void *kc_const_data(const kc_ctx *c, int v) { return kc_is_const(c, v) ? c->cdata[v] : NULL; }
int64_t kc_opset(const kc_ctx *c) { return c->g->opset; }

kiln_status kc_fail(const kc_ctx *c, const kg_node *n, kiln_status s, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return kiln__fail(s, "%s '%s': %s", n->op_type, n->name, msg);
}

/* Element i of a constant as double / int64, whatever its dtype. */
static double const_elem_f(const kp_value *v, const void *d, int64_t i)
{
    switch ((kiln_dtype)v->dtype) {
    case KILN_F32: return ((const float *)d)[i];
    case KILN_F64: return ((const double *)d)[i];
    case KILN_I32: return ((const int32_t *)d)[i];
    case KILN_I64: return (double)((const int64_t *)d)[i];
    case KILN_I8: return ((const int8_t *)d)[i];
    case KILN_U8: case KILN_BOOL: return ((const uint8_t *)d)[i];
    default: return NAN;
    }
}

static int64_t const_elem_i(const kp_value *v, const void *d, int64_t i)
{
    switch ((kiln_dtype)v->dtype) {
    case KILN_I64: return ((const int64_t *)d)[i];
    case KILN_I32: return ((const int32_t *)d)[i];
    case KILN_I8: return ((const int8_t *)d)[i];
    case KILN_U8: case KILN_BOOL: return ((const uint8_t *)d)[i];
    default: {
        double x = const_elem_f(v, d, i);
        return x != x ? 0 : x >= 9.2e18 ? INT64_MAX : x <= -9.2e18 ? INT64_MIN : (int64_t)x;
    }
    }
}

static kiln_status const_read(const kc_ctx *c, const kg_node *n, int v, int max, int *count,
                              int64_t *oi, double *of)
{
    if (v < 0)
        return kc_fail(c, n, KILN_ERR_ARG, "a required input is missing");
    const kp_value *val = &c->p.values[v];
    if (val->kind != KP_VAL_CONST)
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED,
                       "input '%s' must be known at trace time (data-dependent shapes and "
                       "parameters are not supported)", kp_str(&c->p, val->name));
    if (val->dtype == KILN_F16 || val->dtype == KILN_BF16)
        return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "constant of dtype %s used as a parameter",
                       kiln_dtype_name(val->dtype));
    int64_t numel = kp_value_numel(val);
    if (numel > max)
        return kc_fail(c, n, KILN_ERR_SHAPE, "input '%s' has %lld elements, at most %d expected",
                       kp_str(&c->p, val->name), (long long)numel, max);
    for (int64_t i = 0; i < numel; i++) {
        if (oi)
            oi[i] = const_elem_i(val, c->cdata[v], i);
        if (of)
            of[i] = const_elem_f(val, c->cdata[v], i);
    }
    *count = (int)numel;
    return KILN_OK;
}

kiln_status kc_const_ints(const kc_ctx *c, const kg_node *n, int v, int64_t *out, int max, int *count)
{
    return const_read(c, n, v, max, count, out, NULL);
}

kiln_status kc_const_floats(const kc_ctx *c, const kg_node *n, int v, double *out, int max, int *count)
{
    return const_read(c, n, v, max, count, NULL, out);
}

int kc_new_value(kc_ctx *c, kiln_dtype dt, int ndim, const int64_t *shape)
{
    return push_value(c, dt, ndim, shape, KP_VAL_ACT);
}

int kc_new_const(kc_ctx *c, kiln_dtype dt, int ndim, const int64_t *shape, const void *data)
{
    int v = push_value(c, dt, ndim, shape, KP_VAL_CONST);
    if (v < 0)
        return -1;
    size_t bytes = c->p.values[v].nbytes;
    void *d = kiln__aligned_alloc(KP_ALIGN, bytes);
    if (!d) {
        c->p.n_values--;
        kiln__fail(KILN_ERR_NOMEM, "out of memory for a %zu-byte constant", bytes);
        return -1;
    }
    if (bytes)
        memcpy(d, data, bytes);
    c->cdata[v] = d;
    c->cowned[v] = 1;
    return v;
}

int kc_alias(kc_ctx *c, int v, int ndim, const int64_t *shape)
{
    const kp_value *src = &c->p.values[v];
    if (kiln__numel(ndim, shape) != kp_value_numel(src)) {
        kiln__fail(KILN_ERR_SHAPE, "reshape of %lld elements to %lld", (long long)kp_value_numel(src),
                   (long long)kiln__numel(ndim, shape));
        return -1;
    }
    if (src->kind == KP_VAL_CONST)
        return kc_new_const(c, (kiln_dtype)src->dtype, ndim, shape, c->cdata[v]);
    int w = push_value(c, (kiln_dtype)c->p.values[v].dtype, ndim, shape, KP_VAL_ACT);
    if (w >= 0)
        c->root[w] = c->root[v];
    return w;
}

bool kc_output_wanted(const kc_ctx *c, const kg_node *n, int i)
{
    return i >= 0 && i < n->n_out && n->out[i] >= 0;
}

kiln_status kc_set_output(kc_ctx *c, const kg_node *n, int i, int v)
{
    if (!kc_output_wanted(c, n, i))
        return KILN_OK;
    if (v < 0 || (uint32_t)v >= c->p.n_values)
        return kc_fail(c, n, KILN_ERR_INTERNAL, "output %d bound to no value", i);
    const kg_value *gv = &c->g->values[n->out[i]];
    c->gmap[n->out[i]] = v;
    if (c->p.values[v].name == 0 && !push_string(c, gv->name, &c->p.values[v].name))
        return kiln__fail(KILN_ERR_NOMEM, "out of memory while tracing");
    return KILN_OK;
}

kiln_status kc_broadcast(const kc_ctx *c, const kg_node *n, int na, const int64_t *a, int nb,
                         const int64_t *b, int *nout, int64_t *out)
{
    int nd = na > nb ? na : nb;
    int64_t tmp[KILN_MAX_DIMS];
    for (int i = 0; i < nd; i++) {
        int64_t da = i < nd - na ? 1 : a[i - (nd - na)];
        int64_t db = i < nd - nb ? 1 : b[i - (nd - nb)];
        if (da != db && da != 1 && db != 1) {
            char sa[128], sb[128];
            return kc_fail(c, n, KILN_ERR_SHAPE, "shapes %s and %s do not broadcast",
                           kiln__shape_str(na, a, sa, sizeof sa), kiln__shape_str(nb, b, sb, sizeof sb));
        }
        tmp[i] = da == 1 ? db : da;
    }
    memcpy(out, tmp, sizeof(int64_t) * (size_t)nd);
    *nout = nd;
    return KILN_OK;
}

/* Appends an op with its pools; returns its index or -1 (NOMEM). */
int kc__push_op(kc_ctx *c, int kind, int sub, uint32_t name, const int *in, int n_in,
                const int *out, int n_out, const int64_t *ia, int n_ia, const float *fa, int n_fa)
{
    kp_program *p = &c->p;
    if (!kiln__grow((void **)&p->ops, &c->cap_ops, p->n_ops + 1, sizeof(kp_op)) ||
        !kiln__grow((void **)&p->io, &c->cap_io, p->n_io + (size_t)n_in + (size_t)n_out, sizeof(int32_t)) ||
        !kiln__grow((void **)&p->ia, &c->cap_ia, p->n_ia + (size_t)n_ia, sizeof(int64_t)) ||
        !kiln__grow((void **)&p->fa, &c->cap_fa, p->n_fa + (size_t)n_fa, sizeof(float))) {
        kiln__fail(KILN_ERR_NOMEM, "out of memory while tracing");
        return -1;
    }
    kp_op *op = &p->ops[p->n_ops];
    memset(op, 0, sizeof *op);
    op->kind = (uint16_t)kind;
    op->sub = (uint16_t)sub;
    op->n_in = (uint16_t)n_in;
    op->n_out = (uint16_t)n_out;
    op->io = p->n_io;
    op->ia = p->n_ia;
    op->n_ia = (uint32_t)n_ia;
    op->fa = p->n_fa;
    op->n_fa = (uint32_t)n_fa;
    op->name = name;
    for (int i = 0; i < n_in; i++)
        p->io[p->n_io++] = in[i];
    for (int i = 0; i < n_out; i++)
        p->io[p->n_io++] = out[i];
    for (int i = 0; i < n_ia; i++)
        p->ia[p->n_ia++] = ia[i];
    for (int i = 0; i < n_fa; i++)
        p->fa[p->n_fa++] = fa[i];
    return (int)p->n_ops++;
}

/* Removes the last op and its pool entries (they were appended last). */
static void pop_op(kc_ctx *c)
{
    kp_op *op = &c->p.ops[--c->p.n_ops];
    c->p.n_io = op->io;
    c->p.n_ia = op->ia;
    c->p.n_fa = op->fa;
}

/* Runs op `i` (the last one) on the trace-time core with constant inputs; its outputs
 * become constants. */
static kiln_status fold_last(kc_ctx *c, uint32_t i)
{
    kp_program *p = &c->p;
    const kp_op *op = &p->ops[i];
    const int32_t *out = kp_op_out(p, op);
    kiln_status s = KILN_OK;
    for (int k = 0; k < op->n_out && s == KILN_OK; k++) {
        if (out[k] < 0)
            continue;
        kp_value *v = &p->values[out[k]];
        void *d = kiln__aligned_alloc(KP_ALIGN, v->nbytes);
        if (!d)
            s = kiln__fail(KILN_ERR_NOMEM, "out of memory folding a constant of %llu bytes",
                           (unsigned long long)v->nbytes);
        else {
            memset(d, 0, v->nbytes);
            c->cdata[out[k]] = d;
            c->cowned[out[k]] = 1;
        }
    }
    kk_kernel *k = NULL;
    if (s == KILN_OK)
        s = kk_create(c->core, p, i, c->cdata, &k, NULL);
    if (s == KILN_OK)
        s = kk_run(k);
    kk_free(k);
    for (int j = 0; j < op->n_out; j++) {
        if (out[j] < 0)
            continue;
        if (s == KILN_OK) {
            p->values[out[j]].kind = KP_VAL_CONST;
        } else {
            kiln__free(c->cdata[out[j]]);
            c->cdata[out[j]] = NULL;
            c->cowned[out[j]] = 0;
        }
    }
    return s;
}

kiln_status kc_emit(kc_ctx *c, const kg_node *n, kp_op_kind kind, int sub, const int *in, int n_in,
                    const int *out, int n_out, const int64_t *ia, int n_ia, const float *fa, int n_fa)
{
    for (int k = 0; k < n_out; k++)
        if (out[k] >= 0 && c->p.values[out[k]].kind != KP_VAL_ACT)
            return kc_fail(c, n, KILN_ERR_INTERNAL, "op output %d is not a fresh value", k);
    int i = kc__push_op(c, kind, sub, c->node_name, in, n_in, out, n_out, ia, n_ia, fa, n_fa);
    if (i < 0)
        return KILN_ERR_NOMEM;
    kiln_status s = kk_check(&c->p, (uint32_t)i);
    if (s != KILN_OK) {
        pop_op(c);
        return s;
    }
    bool foldable = false;
    for (int k = 0; k < n_in; k++) {
        if (in[k] < 0)
            continue;
        if (c->p.values[in[k]].kind != KP_VAL_CONST) {
            foldable = false;
            break;
        }
        foldable = true;
    }
    if (foldable) {
        s = fold_last(c, (uint32_t)i);
        pop_op(c);
        if (s != KILN_OK)
            kiln__error_prefix("%s '%s': folding constants", n->op_type, n->name);
    }
    return s;
}

/* ---------------------------------------------------------------------------------------
 * Lowering the graph
 * ------------------------------------------------------------------------------------- */

static const kc_op_def *find_op(const char *op_type)
{
    for (const kc_op_def *d = kc_op_table; d->op_type; d++)
        if (strcmp(d->op_type, op_type) == 0)
            return d;
    return NULL;
}

/* Program value for graph value gv if it is an initializer (made on first use). */
static kiln_status resolve_const(kc_ctx *c, int gv)
{
    const kg_value *g = &c->g->values[gv];
    if (c->gmap[gv] >= 0 || !g->constant)
        return KILN_OK;
    int v = push_value(c, g->constant->dtype, g->constant->ndim, g->constant->shape, KP_VAL_CONST);
    if (v < 0) {
        kiln__error_prefix("initializer '%s'", g->name);
        return push_status;
    }
    c->cdata[v] = g->constant->data;
    c->cowned[v] = 0;
    if (!push_string(c, g->name, &c->p.values[v].name))
        return kiln__fail(KILN_ERR_NOMEM, "out of memory while tracing");
    c->gmap[gv] = v;
    return KILN_OK;
}

static kiln_status lower_graph(kc_ctx *c)
{
    const kg_graph *g = c->g;
    for (int ni = 0; ni < g->n_nodes; ni++) {
        const kg_node *n = &g->nodes[ni];
        if (n->domain[0])
            return kiln__fail(KILN_ERR_UNSUPPORTED, "%s '%s': operators of domain '%s' are not supported",
                              n->op_type, n->name, n->domain);
        const kc_op_def *d = find_op(n->op_type);
        if (!d)
            return kiln__fail(KILN_ERR_UNSUPPORTED, "%s '%s': operator %s is not supported",
                              n->op_type, n->name, n->op_type);
        for (int k = 0; k < n->n_in; k++) {
            if (n->in[k] < 0)
                continue;
            kiln_status s = resolve_const(c, n->in[k]);
            if (s != KILN_OK)
                return s;
            if (c->gmap[n->in[k]] < 0)
                return kiln__fail(KILN_ERR_FORMAT, "%s '%s': input '%s' is not produced by any node",
                                  n->op_type, n->name, g->values[n->in[k]].name);
        }
        if (!push_string(c, n->name, &c->node_name))
            return kiln__fail(KILN_ERR_NOMEM, "out of memory while tracing");
        kiln_status s = d->lower(c, n);
        if (s != KILN_OK)
            return s;
        for (int k = 0; k < n->n_out; k++)
            if (n->out[k] >= 0 && c->gmap[n->out[k]] < 0)
                return kc_fail(c, n, KILN_ERR_UNSUPPORTED, "output %d ('%s') is not produced",
                               k, g->values[n->out[k]].name);
    }
    return KILN_OK;
}

/* Binds graph inputs to INPUT values after checking the example inputs against them. */
static kiln_status bind_inputs(kc_ctx *c, const kiln_tensor *ex, size_t n_ex)
{
    const kg_graph *g = c->g;
    if (n_ex != (size_t)g->n_inputs)
        return kiln__fail(KILN_ERR_SHAPE, "the model has %d inputs, %zu example inputs given",
                          g->n_inputs, n_ex);
    if (!ex && n_ex)
        return kiln__fail(KILN_ERR_ARG, "example_inputs is NULL");
    for (int i = 0; i < g->n_inputs; i++) {
        const kg_value *gv = &g->values[g->inputs[i]];
        const kiln_tensor *t = &ex[i];
        char s1[128], s2[128];
        if (t->ndim < 0 || t->ndim > KILN_MAX_DIMS)
            return kiln__fail(KILN_ERR_SHAPE, "input '%s': rank %d out of range", gv->name, t->ndim);
        if (gv->dtype && gv->dtype != t->dtype)
            return kiln__fail(KILN_ERR_SHAPE, "input '%s' is %s, example input is %s", gv->name,
                              kiln_dtype_name(gv->dtype), kiln_dtype_name(t->dtype));
        if (kiln_dtype_size(t->dtype) == 0)
            return kiln__fail(KILN_ERR_SHAPE, "input '%s': unknown dtype %d", gv->name, (int)t->dtype);
        if (gv->ndim >= 0) {
            bool ok = gv->ndim == t->ndim;
            for (int d = 0; ok && d < t->ndim; d++)
                ok = gv->shape[d] < 0 || gv->shape[d] == t->shape[d];
            if (!ok)
                return kiln__fail(KILN_ERR_SHAPE, "input '%s' has shape %s (-1: any), example input is %s",
                                  gv->name, kiln__shape_str(gv->ndim, gv->shape, s1, sizeof s1),
                                  kiln__shape_str(t->ndim, t->shape, s2, sizeof s2));
        }
        for (int d = 0; d < t->ndim; d++)
            if (t->shape[d] < 0)
                return kiln__fail(KILN_ERR_SHAPE, "input '%s': example shape %s has a negative dimension",
                                  gv->name, kiln__shape_str(t->ndim, t->shape, s1, sizeof s1));
        int v = push_value(c, t->dtype, t->ndim, t->shape, KP_VAL_INPUT);
        if (v < 0)
            return push_status;
        if (!push_string(c, gv->name, &c->p.values[v].name))
            return kiln__fail(KILN_ERR_NOMEM, "out of memory while tracing");
        c->gmap[g->inputs[i]] = v;
    }
    return KILN_OK;
}

/* Graph outputs: each a value named as the graph names it (an alias where the value already
 * has another name, e.g. an Identity of an input). */
static kiln_status bind_outputs(kc_ctx *c, uint32_t **outputs)
{
    const kg_graph *g = c->g;
    uint32_t *o = kiln__calloc((size_t)g->n_outputs + 1, sizeof *o);
    if (!o)
        return kiln__fail(KILN_ERR_NOMEM, "out of memory while tracing");
    for (int i = 0; i < g->n_outputs; i++) {
        int gv = g->outputs[i];
        kiln_status s = resolve_const(c, gv);
        if (s != KILN_OK) {
            kiln__free(o);
            return s;
        }
        int v = c->gmap[gv];
        if (v < 0) {
            kiln__free(o);
            return kiln__fail(KILN_ERR_FORMAT, "graph output '%s' is not produced by any node",
                              g->values[gv].name);
        }
        bool taken = strcmp(kp_str(&c->p, c->p.values[v].name), g->values[gv].name) != 0 ||
                     c->p.values[v].kind == KP_VAL_INPUT;
        for (int j = 0; j < i && !taken; j++)
            taken = o[j] == (uint32_t)v;
        if (taken) {
            kp_value *src = &c->p.values[v];
            int64_t shape[KILN_MAX_DIMS];
            memcpy(shape, src->shape, sizeof shape);
            int w = kc_alias(c, v, src->ndim, shape);
            if (w < 0 || !push_string(c, g->values[gv].name, &c->p.values[w].name)) {
                kiln__free(o);
                return kiln__fail(KILN_ERR_NOMEM, "out of memory while tracing");
            }
            v = w;
        }
        o[i] = (uint32_t)v;
    }
    *outputs = o;
    return KILN_OK;
}

/* ---------------------------------------------------------------------------------------
 * Prune, plan, seal
 * ------------------------------------------------------------------------------------- */

/* live[v] for every value reachable backwards from the graph outputs; dead ops get kind 0. */
static kiln_status prune(kc_ctx *c, const uint32_t *outputs, uint8_t *live)
{
    kp_program *p = &c->p;
    for (uint32_t i = 0; i < (uint32_t)c->g->n_outputs; i++) {
        live[outputs[i]] = 1;
        live[c->root[outputs[i]]] = 1;
    }
    /* An alias keeps its root's producer alive. */
    for (uint32_t i = p->n_ops; i-- > 0;) {
        kp_op *op = &p->ops[i];
        if (!op->kind)
            continue;
        const int32_t *out = kp_op_out(p, op);
        bool any = false;
        for (int k = 0; k < op->n_out; k++)
            if (out[k] >= 0 && live[out[k]])
                any = true;
        if (!any) {
            op->kind = 0;
            continue;
        }
        const int32_t *in = kp_op_in(p, op);
        for (int k = 0; k < op->n_in; k++)
            if (in[k] >= 0) {
                live[in[k]] = 1;
                live[c->root[in[k]]] = 1;
            }
        /* Unused optional outputs still need storage when the op is kept. */
        for (int k = 0; k < op->n_out; k++)
            if (out[k] >= 0)
                live[out[k]] = 1;
    }
    /* Roots of live aliases are live too (covers aliases of values made by kept ops). */
    for (uint32_t v = 0; v < p->n_values; v++)
        if (live[v])
            live[c->root[v]] = 1;
    for (uint32_t i = 0; i < p->n_inputs; i++)
        live[p->inputs[i]] = 1;
    return KILN_OK;
}

typedef struct interval {
    int32_t  root;
    int32_t  first, last;   /* op indices: produced before op `first` runs... used up to `last` */
    uint64_t bytes;
    uint64_t offset;
} interval;

static int cmp_interval_size(const void *a, const void *b)
{
    const interval *x = a, *y = b;
    if (x->bytes != y->bytes)
        return x->bytes < y->bytes ? 1 : -1;
    return x->first - y->first;
}

/* The operand of op's first SUM post-op, or -1. */
static int sum_operand(const kp_program *p, const kp_op *op)
{
    int base;
    const int64_t *ia = kp_op_ia(p, op);
    switch (op->kind) {
    case KP_CONV: base = 2 + 4 * (int)ia[1]; break;
    case KP_CONV_TRANSPOSE: base = 2 + 5 * (int)ia[1]; break;
    case KP_MATMUL: base = 0; break;
    default: return -1;
    }
    int operand = 3; /* operands follow the bias slot, one per SUM/BINARY post-op */
    for (int j = 0; j < (int)ia[base]; j++) {
        int type = (int)ia[base + 1 + 2 * j];
        if (type == KP_POST_SUM)
            return operand < op->n_in ? kp_op_in(p, op)[operand] : -1;
        if (type == KP_POST_BINARY)
            operand++;
    }
    return -1;
}

/* A residual add done in place: when an op's SUM operand dies at that op and its result is
 * born there, the result takes over the operand's storage (the kernels then add into what
 * is already there instead of copying the operand first). Merges storage roots in c->root
 * and extends the merged lifetime. */
static void sum_in_place(kc_ctx *c, const int32_t *first, int32_t *last)
{
    kp_program *p = &c->p;
    for (uint32_t i = 0; i < p->n_ops; i++) {
        const kp_op *op = &p->ops[i];
        if (!op->kind || op->n_out != 1 || kp_op_out(p, op)[0] < 0)
            continue;
        int o = sum_operand(p, op);
        if (o < 0)
            continue;
        int32_t ro = c->root[o], ry = c->root[kp_op_out(p, op)[0]];
        if (ro == ry || p->values[ro].kind == KP_VAL_CONST || last[ro] != (int32_t)i ||
            first[ry] != (int32_t)i || p->values[ro].nbytes != p->values[ry].nbytes)
            continue;
        /* the op must not read that storage as anything but the operand (a conv of x plus x) */
        int uses = 0;
        for (int k = 0; k < op->n_in; k++)
            uses += kp_op_in(p, op)[k] >= 0 && c->root[kp_op_in(p, op)[k]] == ro;
        if (uses != 1)
            continue;
        for (uint32_t v = 0; v < p->n_values; v++)
            if (c->root[v] == ry)
                c->root[v] = ro;
        last[ro] = last[ry];
    }
}

/* Arena offsets for every live ACT/INPUT storage root: greedy by size, each placed at the
 * lowest offset that no overlapping-in-time placed interval occupies. */
static kiln_status plan_arena(kc_ctx *c, const uint8_t *live, const uint32_t *outputs,
                              uint64_t *offset_of_root, uint64_t *arena_bytes)
{
    kp_program *p = &c->p;
    uint32_t nv = p->n_values;
    int32_t *first = kiln__malloc(sizeof(int32_t) * nv);
    int32_t *last = kiln__malloc(sizeof(int32_t) * nv);
    interval *iv = kiln__malloc(sizeof(interval) * (nv ? nv : 1));
    if (!first || !last || !iv) {
        kiln__free(first);
        kiln__free(last);
        kiln__free(iv);
        return kiln__fail(KILN_ERR_NOMEM, "out of memory planning memory");
    }
    for (uint32_t v = 0; v < nv; v++) {
        first[v] = INT32_MAX;
        last[v] = -1;
    }
    int32_t end = (int32_t)p->n_ops + 1;
    for (uint32_t i = 0; i < p->n_inputs; i++) {
        first[p->inputs[i]] = -1;
        last[p->inputs[i]] = -1;
    }
    for (uint32_t i = 0; i < p->n_ops; i++) {
        const kp_op *op = &p->ops[i];
        if (!op->kind)
            continue;
        const int32_t *in = kp_op_in(p, op), *out = kp_op_out(p, op);
        for (int k = 0; k < op->n_in; k++) {
            if (in[k] < 0)
                continue;
            int32_t r = c->root[in[k]];
            if ((int32_t)i > last[r])
                last[r] = (int32_t)i;
        }
        for (int k = 0; k < op->n_out; k++) {
            if (out[k] < 0)
                continue;
            int32_t r = c->root[out[k]];
            if ((int32_t)i < first[r])
                first[r] = (int32_t)i;
            if ((int32_t)i > last[r])
                last[r] = (int32_t)i;
        }
    }
    for (int i = 0; i < c->g->n_outputs; i++)
        last[c->root[outputs[i]]] = end;
    sum_in_place(c, first, last);
    size_t n = 0;
    for (uint32_t v = 0; v < nv; v++) {
        const kp_value *val = &p->values[v];
        if (!live[v] || c->root[v] != (int32_t)v || val->kind == KP_VAL_CONST)
            continue;
        iv[n].root = (int32_t)v;
        iv[n].first = first[v] == INT32_MAX ? -1 : first[v];
        iv[n].last = last[v] < iv[n].first ? iv[n].first : last[v];
        iv[n].bytes = kiln__align_up(val->nbytes, KP_ALIGN);
        n++;
    }
    qsort(iv, n, sizeof *iv, cmp_interval_size);
    uint64_t top = 0;
    for (size_t i = 0; i < n; i++) {
        /* candidate offsets: 0 and the end of every overlapping placed interval */
        uint64_t best = UINT64_MAX;
        for (size_t j = 0; j <= i; j++) {
            uint64_t cand = j == i ? 0 : iv[j].offset + iv[j].bytes;
            if (j < i && (iv[j].last < iv[i].first || iv[i].last < iv[j].first))
                continue;
            bool fits = true;
            for (size_t k = 0; k < i && fits; k++) {
                if (iv[k].last < iv[i].first || iv[i].last < iv[k].first)
                    continue;
                fits = cand + iv[i].bytes <= iv[k].offset || iv[k].offset + iv[k].bytes <= cand;
            }
            if (fits && cand < best)
                best = cand;
        }
        iv[i].offset = best;
        if (best + iv[i].bytes > top)
            top = best + iv[i].bytes;
        offset_of_root[iv[i].root] = best;
    }
    *arena_bytes = top;
    kiln__free(first);
    kiln__free(last);
    kiln__free(iv);
    return KILN_OK;
}

/* Packs constant weights into the layout the kernels want: a weight read by several ops is
 * packed when every one of them asks for the very same layout (e.g. one MatMul weight
 * shared by several projections), else it stays dense. A graph output stays dense. */
static kiln_status pack_weights(kc_ctx *c, const uint32_t *outputs)
{
    kp_program *p = &c->p;
    uint32_t nv = p->n_values;
    /* the (op, slot) reads of every value, as lists in one array */
    uint32_t *start = kiln__calloc((size_t)nv + 2, sizeof *start);
    uint8_t *is_output = kiln__calloc((size_t)nv + 1, 1);
    uint32_t *reads = NULL;
    kiln_status s = KILN_OK;
    if (!start || !is_output)
        goto nomem;
    uint32_t n_reads = 0;
    for (uint32_t i = 0; i < p->n_ops; i++) {
        const kp_op *op = &p->ops[i];
        for (int k = 0; op->kind && k < op->n_in; k++)
            if (kp_op_in(p, op)[k] >= 0) {
                start[kp_op_in(p, op)[k] + 1]++;
                n_reads++;
            }
    }
    for (uint32_t v = 0; v < nv; v++)
        start[v + 1] += start[v];
    reads = kiln__malloc(sizeof *reads * 2 * ((size_t)n_reads + 1));
    uint32_t *fill = kiln__calloc((size_t)nv + 1, sizeof *fill);
    if (!reads || !fill) {
        kiln__free(fill);
        goto nomem;
    }
    for (uint32_t i = 0; i < p->n_ops; i++) {
        const kp_op *op = &p->ops[i];
        for (int k = 0; op->kind && k < op->n_in; k++) {
            int v = kp_op_in(p, op)[k];
            if (v < 0)
                continue;
            uint32_t at = start[v] + fill[v]++;
            reads[2 * at] = i;
            reads[2 * at + 1] = (uint32_t)k;
        }
    }
    kiln__free(fill);
    for (int i = 0; i < c->g->n_outputs; i++)
        is_output[outputs[i]] = 1;
    for (uint32_t v = 0; v < nv && s == KILN_OK; v++) {
        if (p->values[v].kind != KP_VAL_CONST || is_output[v] || p->values[v].n_layout || start[v] == start[v + 1])
            continue;
        void *packed = NULL, *layout = NULL;
        size_t n_packed = 0, n_layout = 0;
        bool same = true;
        for (uint32_t r = start[v]; r < start[v + 1] && same && s == KILN_OK; r++) {
            void *pk = NULL, *ly = NULL;
            size_t npk = 0, nly = 0;
            s = kk_pack_weight(p, reads[2 * r], (int)reads[2 * r + 1], c->cdata[v], &pk, &npk, &ly, &nly);
            if (r == start[v]) {
                packed = pk, layout = ly, n_packed = npk, n_layout = nly;
                same = pk != NULL;
                continue;
            }
            same = pk && npk == n_packed && nly == n_layout && memcmp(ly, layout, nly) == 0;
            kiln__free(pk);
            kiln__free(ly);
        }
        if (s != KILN_OK || !same || !packed) {
            kiln__free(packed);
            kiln__free(layout);
            continue;
        }
        if (!kiln__grow((void **)&p->blob, &c->cap_blob, p->n_blob + n_layout, 1)) {
            kiln__free(packed);
            kiln__free(layout);
            goto nomem;
        }
        memcpy(p->blob + p->n_blob, layout, n_layout);
        p->values[v].layout = p->n_blob;
        p->values[v].n_layout = (uint32_t)n_layout;
        p->n_blob += (uint32_t)n_layout;
        kiln__free(layout);
        if (c->cowned[v])
            kiln__free(c->cdata[v]);
        c->cdata[v] = packed;
        c->cowned[v] = 1;
        p->values[v].nbytes = n_packed;
    }
    kiln__free(start);
    kiln__free(is_output);
    kiln__free(reads);
    return s;
nomem:
    kiln__free(start);
    kiln__free(is_output);
    kiln__free(reads);
    return kiln__fail(KILN_ERR_NOMEM, "out of memory packing weights");
}

/* Compacts the live program into *out (a fresh kp_program owning its weights). */
static kiln_status seal(kc_ctx *c, const uint8_t *live, const uint32_t *outputs,
                        const uint64_t *offset_of_root, uint64_t arena_bytes, kp_program **out)
{
    kp_program *p = &c->p;
    kp_program *q = kiln__calloc(1, sizeof *q);
    int32_t *remap = kiln__malloc(sizeof(int32_t) * (p->n_values ? p->n_values : 1));
    if (!q || !remap)
        goto nomem;
    uint32_t nv = 0, nops = 0, nio = 0, nia = 0, nfa = 0;
    uint64_t wbytes = 0;
    for (uint32_t v = 0; v < p->n_values; v++) {
        remap[v] = live[v] ? (int32_t)nv++ : -1;
        if (live[v] && p->values[v].kind == KP_VAL_CONST)
            wbytes = kiln__align_up(wbytes, KP_ALIGN) + p->values[v].nbytes;
    }
    for (uint32_t i = 0; i < p->n_ops; i++) {
        const kp_op *op = &p->ops[i];
        if (!op->kind)
            continue;
        nops++;
        nio += (uint32_t)op->n_in + op->n_out;
        nia += op->n_ia;
        nfa += op->n_fa;
    }
    q->values = kiln__calloc(nv ? nv : 1, sizeof(kp_value));
    q->ops = kiln__calloc(nops ? nops : 1, sizeof(kp_op));
    q->io = kiln__malloc(sizeof(int32_t) * (nio ? nio : 1));
    q->ia = kiln__malloc(sizeof(int64_t) * (nia ? nia : 1));
    q->fa = kiln__malloc(sizeof(float) * (nfa ? nfa : 1));
    q->blob = kiln__malloc(p->n_blob ? p->n_blob : 1);
    q->strings = kiln__malloc(p->n_strings);
    q->inputs = kiln__malloc(sizeof(uint32_t) * (p->n_inputs ? p->n_inputs : 1));
    q->outputs = kiln__malloc(sizeof(uint32_t) * ((size_t)c->g->n_outputs + 1));
    uint8_t *w = kiln__aligned_alloc(KP_ALIGN > 4096 ? KP_ALIGN : 4096, wbytes ? wbytes : 1);
    q->weights = w;
    q->owns_weights = true;
    if (!q->values || !q->ops || !q->io || !q->ia || !q->fa || !q->blob || !q->strings ||
        !q->inputs || !q->outputs || !w)
        goto nomem;
    memset(w, 0, wbytes); /* the alignment gaps between tensors too: no stale heap in the file */
    if (p->n_blob)
        memcpy(q->blob, p->blob, p->n_blob);
    memcpy(q->strings, p->strings, p->n_strings);
    q->n_blob = p->n_blob;
    q->n_strings = p->n_strings;
    uint64_t woff = 0;
    for (uint32_t v = 0; v < p->n_values; v++) {
        if (remap[v] < 0)
            continue;
        kp_value *d = &q->values[remap[v]];
        *d = p->values[v];
        if (d->kind == KP_VAL_CONST) {
            woff = kiln__align_up(woff, KP_ALIGN);
            d->offset = woff;
            if (d->nbytes)
                memcpy(w + woff, c->cdata[v], d->nbytes);
            woff += d->nbytes;
        } else {
            d->offset = offset_of_root[c->root[v]];
        }
    }
    for (uint32_t i = 0; i < p->n_ops; i++) {
        const kp_op *op = &p->ops[i];
        if (!op->kind)
            continue;
        kp_op *d = &q->ops[q->n_ops++];
        *d = *op;
        d->io = q->n_io;
        d->ia = q->n_ia;
        d->fa = q->n_fa;
        const int32_t *io = p->io + op->io;
        for (int k = 0; k < op->n_in + op->n_out; k++)
            q->io[q->n_io++] = io[k] < 0 ? -1 : remap[io[k]];
        if (op->n_ia)
            memcpy(q->ia + q->n_ia, p->ia + op->ia, sizeof(int64_t) * op->n_ia);
        q->n_ia += op->n_ia;
        if (op->n_fa)
            memcpy(q->fa + q->n_fa, p->fa + op->fa, sizeof(float) * op->n_fa);
        q->n_fa += op->n_fa;
    }
    for (uint32_t i = 0; i < p->n_inputs; i++)
        q->inputs[i] = (uint32_t)remap[p->inputs[i]];
    q->n_inputs = p->n_inputs;
    for (int i = 0; i < c->g->n_outputs; i++)
        q->outputs[i] = (uint32_t)remap[outputs[i]];
    q->n_outputs = (uint32_t)c->g->n_outputs;
    q->n_values = nv;
    q->arena_bytes = arena_bytes;
    q->weight_bytes = wbytes;
    kiln__free(remap);
    kiln_status s = kp_program_validate(q, "traced program");
    if (s != KILN_OK) {
        kp_program_free(q);
        return kiln__fail(KILN_ERR_INTERNAL, "%s", kiln_last_error());
    }
    *out = q;
    return KILN_OK;
nomem:
    kiln__free(remap);
    kp_program_free(q);
    return kiln__fail(KILN_ERR_NOMEM, "out of memory sealing the program");
}

static void ctx_free(kc_ctx *c)
{
    for (uint32_t v = 0; v < c->p.n_values; v++)
        if (c->cowned[v])
            kiln__free(c->cdata[v]);
    kiln__free(c->cdata);
    kiln__free(c->cowned);
    kiln__free(c->root);
    kiln__free(c->gmap);
    kiln__free(c->p.values);
    kiln__free(c->p.ops);
    kiln__free(c->p.io);
    kiln__free(c->p.ia);
    kiln__free(c->p.fa);
    kiln__free(c->p.blob);
    kiln__free(c->p.strings);
    kiln__free(c->p.inputs);
    kk_core_free(c->core);
}

kiln_status kc_trace(const kg_graph *g, const kiln_tensor *ex, size_t n_ex, kp_program **out)
{
    kc_ctx c;
    memset(&c, 0, sizeof c);
    c.g = g;
    kiln_status s = KILN_OK;
    uint32_t *outputs = NULL;
    uint8_t *live = NULL;
    uint64_t *offsets = NULL;
    c.gmap = kiln__malloc(sizeof(int) * ((size_t)g->n_values + 1));
    c.p.strings = kiln__calloc(1, 1);
    c.cap_strings = 1;
    c.p.n_strings = 1;
    c.p.inputs = kiln__malloc(sizeof(uint32_t) * ((size_t)g->n_inputs + 1));
    /* pools start non-empty so that index arithmetic on them is always defined */
    c.p.io = kiln__malloc(sizeof(int32_t) * (c.cap_io = 64));
    c.p.ia = kiln__malloc(sizeof(int64_t) * (c.cap_ia = 64));
    c.p.fa = kiln__malloc(sizeof(float) * (c.cap_fa = 64));
    c.p.blob = kiln__malloc(c.cap_blob = 64);
    if (!c.gmap || !c.p.strings || !c.p.inputs || !c.p.io || !c.p.ia || !c.p.fa || !c.p.blob) {
        s = kiln__fail(KILN_ERR_NOMEM, "out of memory while tracing");
        goto done;
    }
    for (int i = 0; i < g->n_values; i++)
        c.gmap[i] = -1;
    if ((s = kk_core_create(1, &c.core)) != KILN_OK)
        goto done;
    if ((s = bind_inputs(&c, ex, n_ex)) != KILN_OK)
        goto done;
    for (int i = 0; i < g->n_inputs; i++)
        c.p.inputs[i] = (uint32_t)c.gmap[g->inputs[i]];
    c.p.n_inputs = (uint32_t)g->n_inputs;
    if ((s = lower_graph(&c)) != KILN_OK)
        goto done;
    if ((s = bind_outputs(&c, &outputs)) != KILN_OK)
        goto done;
    if ((s = kc__fuse(&c, outputs)) != KILN_OK)
        goto done;
    live = kiln__calloc(c.p.n_values + 1, 1);
    offsets = kiln__calloc(c.p.n_values + 1, sizeof *offsets);
    if (!live || !offsets) {
        s = kiln__fail(KILN_ERR_NOMEM, "out of memory while tracing");
        goto done;
    }
    if ((s = prune(&c, outputs, live)) != KILN_OK)
        goto done;
    if ((s = pack_weights(&c, outputs)) != KILN_OK)
        goto done;
    uint64_t arena = 0;
    if ((s = plan_arena(&c, live, outputs, offsets, &arena)) != KILN_OK)
        goto done;
    s = seal(&c, live, outputs, offsets, arena, out);
done:
    kiln__free(outputs);
    kiln__free(live);
    kiln__free(offsets);
    ctx_free(&c);
    return s;
}
