/*
 * program.c — the compiled program's own helpers: freeing it, naming op kinds, and
 * validating one that came from outside (an artifact on disk). Validation is the only
 * thing standing between an untrusted file and the kernels' unchecked accessors, so it
 * checks every index against its pool and every size and offset with overflow-safe
 * arithmetic before anything else reads the program.
 */
#include "compiler/program.h"

void kp_program_free(kp_program *p)
{
    if (!p)
        return;
    kiln__free(p->values);
    kiln__free(p->ops);
    kiln__free(p->io);
    kiln__free(p->ia);
    kiln__free(p->fa);
    kiln__free(p->blob);
    kiln__free(p->strings);
    kiln__free(p->inputs);
    kiln__free(p->outputs);
    if (p->owns_weights)
        kiln__free((void *)p->weights);
    kiln__free(p);
}

static const char *const op_kind_names[KP_OP_KIND_COUNT] = {
    [KP_CONV] = "Conv",
    [KP_CONV_TRANSPOSE] = "ConvTranspose",
    [KP_MATMUL] = "MatMul",
    [KP_POOL] = "Pool",
    [KP_GLOBAL_POOL] = "GlobalPool",
    [KP_UNARY] = "Unary",
    [KP_BINARY] = "Binary",
    [KP_WHERE] = "Where",
    [KP_SOFTMAX] = "Softmax",
    [KP_LAYERNORM] = "LayerNorm",
    [KP_BATCHNORM] = "BatchNorm",
    [KP_GROUPNORM] = "GroupNorm",
    [KP_GATHER] = "Gather",
    [KP_TRANSPOSE] = "Transpose",
    [KP_SLICE] = "Slice",
    [KP_CONCAT] = "Concat",
    [KP_SPLIT] = "Split",
    [KP_COPY] = "Copy",
    [KP_CAST] = "Cast",
    [KP_EXPAND] = "Expand",
    [KP_TILE] = "Tile",
    [KP_PAD] = "Pad",
    [KP_REDUCE] = "Reduce",
    [KP_RESIZE] = "Resize",
    [KP_ARGREDUCE] = "ArgReduce",
    [KP_CUMSUM] = "CumSum",
    [KP_DEPTH_SPACE] = "DepthSpace",
    [KP_TOPK] = "TopK",
    [KP_SCATTER] = "Scatter",
};

const char *kp_op_kind_name(int kind)
{
    if (kind > 0 && kind < KP_OP_KIND_COUNT && op_kind_names[kind])
        return op_kind_names[kind];
    return "?";
}

/* ---- validation ---- */

/* Whether [off, off + n) lies inside a pool of `size` elements, without overflow. */
static bool range_ok(uint64_t off, uint64_t n, uint64_t size)
{
    uint64_t end;
    return kiln__add_ok(off, n, &end) && end <= size;
}

static const char *value_kind_name(int kind)
{
    switch (kind) {
    case KP_VAL_ACT: return "activation";
    case KP_VAL_INPUT: return "input";
    case KP_VAL_CONST: return "constant";
    }
    return "?";
}

/* The name at a string offset, or "?" when the offset is not (yet) known to be safe. */
static const char *safe_str(const kp_program *p, uint32_t off)
{
    return off < p->n_strings ? p->strings + off : "?";
}

static kiln_status check_value(const kp_program *p, const char *what, uint32_t i)
{
    const kp_value *v = &p->values[i];
    if (v->name >= p->n_strings)
        return kiln__fail(KILN_ERR_FORMAT, "%s: value %u: name offset %u out of range (%u bytes of strings)",
                          what, i, v->name, p->n_strings);
    const char *name = p->strings + v->name;
    if (v->dtype < KILN_F32 || v->dtype > KILN_BOOL)
        return kiln__fail(KILN_ERR_FORMAT, "%s: value %u ('%s'): invalid dtype %u", what, i, name, v->dtype);
    if (v->ndim > KILN_MAX_DIMS)
        return kiln__fail(KILN_ERR_FORMAT, "%s: value %u ('%s'): %u dims (at most %d)", what, i, name,
                          v->ndim, KILN_MAX_DIMS);
    if (v->kind > KP_VAL_CONST)
        return kiln__fail(KILN_ERR_FORMAT, "%s: value %u ('%s'): invalid kind %u", what, i, name, v->kind);
    for (int d = 0; d < KILN_MAX_DIMS; d++) {
        if (d < v->ndim && v->shape[d] < 0)
            return kiln__fail(KILN_ERR_FORMAT, "%s: value %u ('%s'): negative dim %d (%lld)", what, i, name,
                              d, (long long)v->shape[d]);
        if (d >= v->ndim && v->shape[d] != 0)
            return kiln__fail(KILN_ERR_FORMAT, "%s: value %u ('%s'): unused dim %d is %lld, not 0", what, i,
                              name, d, (long long)v->shape[d]);
    }
    int64_t numel = kp_value_numel(v);
    uint64_t need;
    if (numel < 0 || !kiln__mul_ok((uint64_t)numel, kiln_dtype_size((kiln_dtype)v->dtype), &need))
        return kiln__fail(KILN_ERR_FORMAT, "%s: value %u ('%s'): shape overflows", what, i, name);
    if (v->nbytes < need)
        return kiln__fail(KILN_ERR_FORMAT, "%s: value %u ('%s'): %llu bytes of storage, shape needs %llu",
                          what, i, name, (unsigned long long)v->nbytes, (unsigned long long)need);
    if (v->n_layout && !range_ok(v->layout, v->n_layout, p->n_blob))
        return kiln__fail(KILN_ERR_FORMAT, "%s: value %u ('%s'): layout descriptor [%u, +%u) outside the blob (%u bytes)",
                          what, i, name, v->layout, v->n_layout, p->n_blob);
    if (v->offset % KP_ALIGN)
        return kiln__fail(KILN_ERR_FORMAT, "%s: value %u ('%s'): offset %llu not a multiple of %u", what, i,
                          name, (unsigned long long)v->offset, KP_ALIGN);
    uint64_t limit = v->kind == KP_VAL_CONST ? p->weight_bytes : p->arena_bytes;
    if (!range_ok(v->offset, v->nbytes, limit))
        return kiln__fail(KILN_ERR_FORMAT, "%s: value %u ('%s'): %llu bytes at offset %llu past the end of the %s (%llu bytes)",
                          what, i, name, (unsigned long long)v->nbytes, (unsigned long long)v->offset,
                          v->kind == KP_VAL_CONST ? "weight section" : "arena", (unsigned long long)limit);
    return KILN_OK;
}

static kiln_status check_op(const kp_program *p, const char *what, uint32_t i)
{
    const kp_op *op = &p->ops[i];
    const char *name = safe_str(p, op->name);
    if (op->kind == 0 || op->kind >= KP_OP_KIND_COUNT)
        return kiln__fail(KILN_ERR_FORMAT, "%s: op %u ('%s'): invalid kind %u", what, i, name, op->kind);
    const char *kind = kp_op_kind_name(op->kind);
    if (op->name >= p->n_strings)
        return kiln__fail(KILN_ERR_FORMAT, "%s: op %u (%s): name offset %u out of range", what, i, kind, op->name);
    if (op->n_out == 0)
        return kiln__fail(KILN_ERR_FORMAT, "%s: op %u (%s '%s'): no outputs", what, i, kind, name);
    if (!range_ok(op->io, (uint64_t)op->n_in + op->n_out, p->n_io))
        return kiln__fail(KILN_ERR_FORMAT, "%s: op %u (%s '%s'): operands [%u, +%u) outside the io pool (%u)",
                          what, i, kind, name, op->io, (unsigned)op->n_in + op->n_out, p->n_io);
    if (!range_ok(op->ia, op->n_ia, p->n_ia))
        return kiln__fail(KILN_ERR_FORMAT, "%s: op %u (%s '%s'): int attributes [%u, +%u) outside the pool (%u)",
                          what, i, kind, name, op->ia, op->n_ia, p->n_ia);
    if (!range_ok(op->fa, op->n_fa, p->n_fa))
        return kiln__fail(KILN_ERR_FORMAT, "%s: op %u (%s '%s'): float attributes [%u, +%u) outside the pool (%u)",
                          what, i, kind, name, op->fa, op->n_fa, p->n_fa);
    const int32_t *in = p->io + op->io;
    for (uint32_t k = 0; k < op->n_in; k++) {
        if (in[k] != -1 && (in[k] < 0 || (uint32_t)in[k] >= p->n_values))
            return kiln__fail(KILN_ERR_FORMAT, "%s: op %u (%s '%s'): input %u out of range (%d)", what, i,
                              kind, name, k, in[k]);
    }
    const int32_t *out = in + op->n_in;
    for (uint32_t k = 0; k < op->n_out; k++) {
        if (out[k] == -1 && k > 0)
            continue; /* an absent optional output */
        if (out[k] < 0 || (uint32_t)out[k] >= p->n_values)
            return kiln__fail(KILN_ERR_FORMAT, "%s: op %u (%s '%s'): output %u out of range (%d)", what, i,
                              kind, name, k, out[k]);
        const kp_value *v = &p->values[out[k]];
        if (v->kind != KP_VAL_ACT)
            return kiln__fail(KILN_ERR_FORMAT, "%s: op %u (%s '%s'): output %u writes %s value '%s'", what, i,
                              kind, name, k, value_kind_name(v->kind), p->strings + v->name);
    }
    return KILN_OK;
}

kiln_status kp_program_validate(const kp_program *p, const char *what)
{
    if (!what)
        what = "program";
    if (!p)
        return kiln__fail(KILN_ERR_ARG, "%s: no program", what);
    struct { uint32_t n; const void *ptr; const char *name; } pools[] = {
        { p->n_values, p->values, "values" }, { p->n_ops, p->ops, "ops" },
        { p->n_io, p->io, "io" },             { p->n_ia, p->ia, "ia" },
        { p->n_fa, p->fa, "fa" },             { p->n_blob, p->blob, "blob" },
        { p->n_strings, p->strings, "strings" }, { p->n_inputs, p->inputs, "inputs" },
        { p->n_outputs, p->outputs, "outputs" },
    };
    for (size_t k = 0; k < sizeof pools / sizeof pools[0]; k++) {
        if (pools[k].n && !pools[k].ptr)
            return kiln__fail(KILN_ERR_FORMAT, "%s: %u %s but no array", what, pools[k].n, pools[k].name);
    }
    if (p->weight_bytes && !p->weights)
        return kiln__fail(KILN_ERR_FORMAT, "%s: %llu bytes of weights but no weight data", what,
                          (unsigned long long)p->weight_bytes);
    if (p->n_strings == 0 || p->strings[p->n_strings - 1] != '\0')
        return kiln__fail(KILN_ERR_FORMAT, "%s: string pool empty or not NUL-terminated", what);

    kiln_status st;
    for (uint32_t i = 0; i < p->n_values; i++) {
        if ((st = check_value(p, what, i)) != KILN_OK)
            return st;
    }
    for (uint32_t i = 0; i < p->n_ops; i++) {
        if ((st = check_op(p, what, i)) != KILN_OK)
            return st;
    }
    for (uint32_t i = 0; i < p->n_inputs; i++) {
        if (p->inputs[i] >= p->n_values)
            return kiln__fail(KILN_ERR_FORMAT, "%s: graph input %u: value %u out of range", what, i, p->inputs[i]);
        const kp_value *v = &p->values[p->inputs[i]];
        if (v->kind != KP_VAL_INPUT)
            return kiln__fail(KILN_ERR_FORMAT, "%s: graph input %u ('%s') is a %s value, not an input", what,
                              i, p->strings + v->name, value_kind_name(v->kind));
    }
    for (uint32_t i = 0; i < p->n_outputs; i++) {
        if (p->outputs[i] >= p->n_values)
            return kiln__fail(KILN_ERR_FORMAT, "%s: graph output %u: value %u out of range", what, i, p->outputs[i]);
    }
    return KILN_OK;
}
