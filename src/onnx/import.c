/*
 * import.c — the ONNX importer: reads a ModelProto with the protobuf-c code generated from
 * onnx.proto and builds a kg_graph (values by name, constants from initializers and
 * Constant nodes, nodes with copied attributes, calls of model-local functions replaced by
 * their bodies); also reads lone TensorProto files (the .pb files of ONNX's test data).
 * Checks here are structural — names resolve, nodes come in topological order, tensor data
 * agrees with its shape — whether kiln can run an op is the compiler's question.
 */
#define _GNU_SOURCE
#include "onnx/graph.h"

#include "onnx.pb-c.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the ONNX importer copies little-endian raw_data as is: it needs a little-endian host"
#endif

/* Default-domain opsets kiln implements. */
#define KG_MIN_OPSET 7
#define KG_MAX_OPSET 18

/* ---- protobuf-c allocation through kiln's allocator (so fault injection reaches it) ---- */

typedef struct pb_alloc_state {
    bool failed;                      /* an allocation failed: a NULL unpack means NOMEM */
} pb_alloc_state;

static void *pb_alloc(void *state, size_t n)
{
    void *p = kiln__malloc(n);
    if (!p)
        ((pb_alloc_state *)state)->failed = true;
    return p;
}

static void pb_free(void *state, void *p)
{
    (void)state;
    kiln__free(p);
}

/* ---- files ---- */

static kiln_status file_read(const char *path, uint8_t **out, size_t *n_out)
{
    /* O_NONBLOCK: a FIFO (or device) must not block the open; it is refused below. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return kiln__fail(KILN_ERR_IO, "%s: cannot open (%s)", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return kiln__fail(KILN_ERR_IO, "%s: cannot stat (%s)", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return kiln__fail(KILN_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX / 2) {
        close(fd);
        return kiln__fail(KILN_ERR_IO, "%s: too large to read", path);
    }
    size_t n = (size_t)st.st_size;
    uint8_t *buf = kiln__malloc(n);
    if (!buf) {
        close(fd);
        return kiln__fail(KILN_ERR_NOMEM, "%s: out of memory reading %zu bytes", path, n);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            kiln__free(buf);
            return kiln__fail(KILN_ERR_IO, "%s: read failed (%s)", path, strerror(e));
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (got != n) {
        kiln__free(buf);
        return kiln__fail(KILN_ERR_IO, "%s: file changed size while being read", path);
    }
    *out = buf;
    *n_out = n;
    return KILN_OK;
}

/* ---- dtypes and tensors ---- */

static bool dtype_from_onnx(int32_t t, kiln_dtype *out)
{
    switch (t) {
    case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT:    *out = KILN_F32; return true;
    case ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE:   *out = KILN_F64; return true;
    case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16:  *out = KILN_F16; return true;
    case ONNX__TENSOR_PROTO__DATA_TYPE__BFLOAT16: *out = KILN_BF16; return true;
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT8:     *out = KILN_I8; return true;
    case ONNX__TENSOR_PROTO__DATA_TYPE__UINT8:    *out = KILN_U8; return true;
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT32:    *out = KILN_I32; return true;
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT64:    *out = KILN_I64; return true;
    case ONNX__TENSOR_PROTO__DATA_TYPE__BOOL:     *out = KILN_BOOL; return true;
    default: return false;
    }
}

/* For messages about element types kiln does not have. */
static const char *onnx_dtype_name(int32_t t)
{
    switch (t) {
    case ONNX__TENSOR_PROTO__DATA_TYPE__UNDEFINED:  return "undefined";
    case ONNX__TENSOR_PROTO__DATA_TYPE__UINT16:     return "uint16";
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT16:      return "int16";
    case ONNX__TENSOR_PROTO__DATA_TYPE__STRING:     return "string";
    case ONNX__TENSOR_PROTO__DATA_TYPE__UINT32:     return "uint32";
    case ONNX__TENSOR_PROTO__DATA_TYPE__UINT64:     return "uint64";
    case ONNX__TENSOR_PROTO__DATA_TYPE__COMPLEX64:  return "complex64";
    case ONNX__TENSOR_PROTO__DATA_TYPE__COMPLEX128: return "complex128";
    default: {
        kiln_dtype d;
        return dtype_from_onnx(t, &d) ? kiln_dtype_name(d) : "unknown";
    }
    }
}

static kg_tensor *tensor_new(kiln_dtype dtype, int ndim, const int64_t *shape, size_t nbytes)
{
    kg_tensor *t = kiln__calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    t->nbytes = nbytes;
    if (nbytes) {
        t->data = kiln__malloc(nbytes);
        if (!t->data) {
            kiln__free(t);
            return NULL;
        }
    }
    return t;
}

/* A tensor from a TensorProto. With the protobuf allocator being kiln's, raw_data's buffer
 * is moved into the tensor rather than copied (tp is left without raw_data). Messages carry
 * no context: callers prefix the tensor's role and name. */
static kiln_status tensor_from_proto(Onnx__TensorProto *tp, kg_tensor **out)
{
    if ((tp->has_data_location && tp->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL)
        || tp->n_external_data)
        return kiln__fail(KILN_ERR_UNSUPPORTED,
                          "external data is not supported (save the model with its weights inside)");
    if (tp->segment)
        return kiln__fail(KILN_ERR_UNSUPPORTED, "segmented tensors are not supported");
    if (!tp->has_data_type || tp->data_type == ONNX__TENSOR_PROTO__DATA_TYPE__UNDEFINED)
        return kiln__fail(KILN_ERR_FORMAT, "tensor has no data type");
    kiln_dtype dt;
    if (!dtype_from_onnx(tp->data_type, &dt))
        return kiln__fail(KILN_ERR_UNSUPPORTED, "%s tensors are not supported",
                          onnx_dtype_name(tp->data_type));
    if (tp->n_dims > KILN_MAX_DIMS)
        return kiln__fail(KILN_ERR_UNSUPPORTED, "rank %zu is not supported (at most %d)",
                          tp->n_dims, KILN_MAX_DIMS);
    int ndim = (int)tp->n_dims;
    int64_t shape[KILN_MAX_DIMS];
    for (int i = 0; i < ndim; i++) {
        if (tp->dims[i] < 0)
            return kiln__fail(KILN_ERR_FORMAT, "negative dimension %lld", (long long)tp->dims[i]);
        shape[i] = tp->dims[i];
    }
    int64_t numel = kiln__numel(ndim, shape);
    uint64_t nbytes;
    if (numel < 0 || !kiln__mul_ok((uint64_t)numel, kiln_dtype_size(dt), &nbytes)
        || nbytes > SIZE_MAX / 2)
        return kiln__fail(KILN_ERR_FORMAT, "tensor size overflows");

    size_t n_typed;
    const char *field;
    switch (dt) {
    case KILN_F32: n_typed = tp->n_float_data; field = "float_data"; break;
    case KILN_F64: n_typed = tp->n_double_data; field = "double_data"; break;
    case KILN_I64: n_typed = tp->n_int64_data; field = "int64_data"; break;
    default:       n_typed = tp->n_int32_data; field = "int32_data"; break;
    }
    char sh[128];
    bool use_raw = tp->has_raw_data && (tp->raw_data.len > 0 || n_typed == 0);
    if (use_raw) {
        if (n_typed)
            return kiln__fail(KILN_ERR_FORMAT, "tensor has both raw_data and %s", field);
        if (tp->raw_data.len != nbytes)
            return kiln__fail(KILN_ERR_FORMAT, "raw_data holds %zu bytes, expected %llu (%s %s)",
                              tp->raw_data.len, (unsigned long long)nbytes, kiln_dtype_name(dt),
                              kiln__shape_str(ndim, shape, sh, sizeof sh));
        kg_tensor *t;
        if (nbytes && tp->raw_data.data) {
            t = tensor_new(dt, ndim, shape, 0);
            if (!t)
                return kiln__fail(KILN_ERR_NOMEM, "out of memory");
            t->data = tp->raw_data.data; /* allocated by pb_alloc: ours to keep */
            t->nbytes = (size_t)nbytes;
            tp->raw_data.data = NULL;
            tp->raw_data.len = 0;
        } else {
            t = tensor_new(dt, ndim, shape, 0);
            if (!t)
                return kiln__fail(KILN_ERR_NOMEM, "out of memory");
        }
        *out = t;
        return KILN_OK;
    }

    if (n_typed != (uint64_t)numel)
        return kiln__fail(KILN_ERR_FORMAT, "%s holds %zu values, expected %lld (%s %s)",
                          field, n_typed, (long long)numel, kiln_dtype_name(dt),
                          kiln__shape_str(ndim, shape, sh, sizeof sh));
    kg_tensor *t = tensor_new(dt, ndim, shape, (size_t)nbytes);
    if (!t)
        return kiln__fail(KILN_ERR_NOMEM, "out of memory for a %llu-byte tensor",
                          (unsigned long long)nbytes);
    size_t n = (size_t)numel;
    const int32_t *i32 = tp->int32_data;
    switch (dt) {
    case KILN_F32: if (n) memcpy(t->data, tp->float_data, n * sizeof(float)); break;
    case KILN_F64: if (n) memcpy(t->data, tp->double_data, n * sizeof(double)); break;
    case KILN_I64: if (n) memcpy(t->data, tp->int64_data, n * sizeof(int64_t)); break;
    case KILN_I32: if (n) memcpy(t->data, i32, n * sizeof(int32_t)); break;
    case KILN_I8:
        for (size_t i = 0; i < n; i++) ((int8_t *)t->data)[i] = (int8_t)i32[i];
        break;
    case KILN_U8:
        for (size_t i = 0; i < n; i++) ((uint8_t *)t->data)[i] = (uint8_t)i32[i];
        break;
    case KILN_BOOL:
        for (size_t i = 0; i < n; i++) ((uint8_t *)t->data)[i] = i32[i] != 0;
        break;
    case KILN_F16: case KILN_BF16: /* the 16-bit patterns, one per int32 */
        for (size_t i = 0; i < n; i++) ((uint16_t *)t->data)[i] = (uint16_t)i32[i];
        break;
    }
    *out = t;
    return KILN_OK;
}

/* ---- the importer's working state ---- */

enum { NOT_PRODUCED = -2, BY_GRAPH = -1 }; /* producer of a value, else the node's index */

typedef struct importer {
    kg_graph *g;
    size_t    cap_values;  /* g->values' length: bounds the distinct names in the model */
    int      *slots;       /* open-addressing hash: value name -> index, -1 empty */
    size_t    mask;        /* slot count - 1 (a power of two, more than twice cap_values) */
    int      *producer;    /* per value: NOT_PRODUCED, BY_GRAPH (input, initializer) or node */
} importer;

static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static bool empty(const char *s) { return !s || !*s; }

/* Index of the value called name (non-empty), created with unknown dtype and shape if new.
 * -1 with the error set when out of memory. */
static int value_get(importer *im, const char *name, bool *created)
{
    kg_graph *g = im->g;
    size_t i = (size_t)name_hash(name) & im->mask;
    while (im->slots[i] >= 0) {
        int v = im->slots[i];
        if (strcmp(g->values[v].name, name) == 0) {
            if (created)
                *created = false;
            return v;
        }
        i = (i + 1) & im->mask;
    }
    KILN_ASSERT((size_t)g->n_values < im->cap_values);
    char *copy = kiln__strdup(name);
    if (!copy) {
        kiln__fail(KILN_ERR_NOMEM, "out of memory");
        return -1;
    }
    int v = g->n_values++;
    kg_value *val = &g->values[v];
    val->name = copy;
    val->dtype = 0;
    val->ndim = -1;
    for (int d = 0; d < KILN_MAX_DIMS; d++)
        val->shape[d] = -1;
    val->constant = NULL;
    im->producer[v] = NOT_PRODUCED;
    im->slots[i] = v;
    if (created)
        *created = true;
    return v;
}

static void value_set_constant(kg_value *v, kg_tensor *t)
{
    v->constant = t;
    v->dtype = t->dtype;
    v->ndim = t->ndim;
    for (int d = 0; d < KILN_MAX_DIMS; d++)
        v->shape[d] = d < t->ndim ? t->shape[d] : -1;
}

/* Fills in what a ValueInfo's type says about v, where v does not know it yet. */
static kiln_status apply_type(kg_value *v, const Onnx__TypeProto *tp)
{
    if (!tp || tp->value_case == ONNX__TYPE_PROTO__VALUE__NOT_SET)
        return KILN_OK;
    if (tp->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE) {
        const char *kind = tp->value_case == ONNX__TYPE_PROTO__VALUE_SEQUENCE_TYPE ? "sequence"
                         : tp->value_case == ONNX__TYPE_PROTO__VALUE_MAP_TYPE ? "map"
                         : tp->value_case == ONNX__TYPE_PROTO__VALUE_OPTIONAL_TYPE ? "optional"
                         : tp->value_case == ONNX__TYPE_PROTO__VALUE_SPARSE_TENSOR_TYPE ? "sparse tensor"
                         : "non-tensor";
        return kiln__fail(KILN_ERR_UNSUPPORTED, "%s types are not supported", kind);
    }
    const Onnx__TypeProto__Tensor *tt = tp->tensor_type;
    if (!tt)
        return KILN_OK;
    if (tt->has_elem_type && tt->elem_type != ONNX__TENSOR_PROTO__DATA_TYPE__UNDEFINED) {
        kiln_dtype dt;
        if (!dtype_from_onnx(tt->elem_type, &dt))
            return kiln__fail(KILN_ERR_UNSUPPORTED, "%s tensors are not supported",
                              onnx_dtype_name(tt->elem_type));
        if (v->dtype == 0)
            v->dtype = dt;
    }
    if (tt->shape && v->ndim < 0) {
        const Onnx__TensorShapeProto *sp = tt->shape;
        if (sp->n_dim > KILN_MAX_DIMS)
            return kiln__fail(KILN_ERR_UNSUPPORTED, "rank %zu is not supported (at most %d)",
                              sp->n_dim, KILN_MAX_DIMS);
        int64_t shape[KILN_MAX_DIMS];
        for (size_t d = 0; d < sp->n_dim; d++) {
            const Onnx__TensorShapeProto__Dimension *dim = sp->dim[d];
            shape[d] = -1; /* dim_param (symbolic) or nothing: dynamic */
            if (dim->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE) {
                if (dim->dim_value < 0)
                    return kiln__fail(KILN_ERR_FORMAT, "negative dimension %lld",
                                      (long long)dim->dim_value);
                shape[d] = dim->dim_value;
            }
        }
        v->ndim = (int)sp->n_dim;
        for (int d = 0; d < v->ndim; d++)
            v->shape[d] = shape[d];
    }
    return KILN_OK;
}

/* ---- attributes ---- */

/* The attribute's type; models before IR version 3 lack the field: infer it from what is set. */
static int attr_kind(const Onnx__AttributeProto *a)
{
    if (a->has_type && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__UNDEFINED)
        return a->type;
    if (a->n_floats) return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS;
    if (a->n_ints) return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS;
    if (a->n_strings) return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRINGS;
    if (a->n_tensors) return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSORS;
    if (a->n_graphs) return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPHS;
    if (a->t) return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR;
    if (a->g) return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPH;
    if (a->has_s) return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING;
    if (a->has_f) return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT;
    if (a->has_i) return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT;
    return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__UNDEFINED;
}

/* A NUL-terminated copy of protobuf bytes (NULL when out of memory). */
static char *bytes_dup(const ProtobufCBinaryData *b)
{
    char *s = kiln__malloc(b->len + 1);
    if (s) {
        if (b->len)
            memcpy(s, b->data, b->len);
        s[b->len] = '\0';
    }
    return s;
}

/* Copies attribute a into dst (zeroed); on failure dst holds only what has to be freed. */
static kiln_status attr_copy(kg_attr *dst, Onnx__AttributeProto *a)
{
    if (empty(a->name))
        return kiln__fail(KILN_ERR_FORMAT, "attribute without a name");
    if (!(dst->name = kiln__strdup(a->name)))
        return kiln__fail(KILN_ERR_NOMEM, "out of memory");
    kiln_status st = KILN_OK;
    switch (attr_kind(a)) {
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT:
        dst->type = KG_ATTR_FLOAT;
        dst->f = a->f;
        return KILN_OK;
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT:
        dst->type = KG_ATTR_INT;
        dst->i = a->i;
        return KILN_OK;
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING:
        dst->type = KG_ATTR_STRING;
        if (!(dst->s = bytes_dup(&a->s)))
            return kiln__fail(KILN_ERR_NOMEM, "out of memory");
        return KILN_OK;
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR:
        dst->type = KG_ATTR_TENSOR;
        if (!a->t)
            st = kiln__fail(KILN_ERR_FORMAT, "tensor attribute without a tensor");
        else
            st = tensor_from_proto(a->t, &dst->t);
        break;
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS:
        dst->type = KG_ATTR_FLOATS;
        if (!(dst->floats = kiln__malloc(a->n_floats * sizeof(float))))
            return kiln__fail(KILN_ERR_NOMEM, "out of memory");
        if (a->n_floats)
            memcpy(dst->floats, a->floats, a->n_floats * sizeof(float));
        dst->n = a->n_floats;
        return KILN_OK;
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS:
        dst->type = KG_ATTR_INTS;
        if (!(dst->ints = kiln__malloc(a->n_ints * sizeof(int64_t))))
            return kiln__fail(KILN_ERR_NOMEM, "out of memory");
        if (a->n_ints)
            memcpy(dst->ints, a->ints, a->n_ints * sizeof(int64_t));
        dst->n = a->n_ints;
        return KILN_OK;
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRINGS:
        dst->type = KG_ATTR_STRINGS;
        if (!(dst->strings = kiln__calloc(a->n_strings, sizeof(char *))))
            return kiln__fail(KILN_ERR_NOMEM, "out of memory");
        dst->n = a->n_strings;
        for (size_t i = 0; i < a->n_strings; i++) {
            if (!(dst->strings[i] = bytes_dup(&a->strings[i])))
                return kiln__fail(KILN_ERR_NOMEM, "out of memory");
        }
        return KILN_OK;
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPH:
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPHS:
        st = kiln__fail(KILN_ERR_UNSUPPORTED, "subgraphs (If/Loop/Scan) are not supported");
        break;
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSORS:
        st = kiln__fail(KILN_ERR_UNSUPPORTED, "tensor-list attributes are not supported");
        break;
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__SPARSE_TENSOR:
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__SPARSE_TENSORS:
        st = kiln__fail(KILN_ERR_UNSUPPORTED, "sparse tensor attributes are not supported");
        break;
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TYPE_PROTO:
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TYPE_PROTOS:
        st = kiln__fail(KILN_ERR_UNSUPPORTED, "type attributes are not supported");
        break;
    default:
        st = kiln__fail(KILN_ERR_FORMAT, "attribute has no type");
        break;
    }
    if (st != KILN_OK)
        kiln__error_prefix("attribute '%s'", a->name);
    return st;
}

/* ---- nodes ---- */

static void node_error_prefix(const Onnx__NodeProto *np, size_t k)
{
    const char *op = empty(np->op_type) ? "?" : np->op_type;
    if (!empty(np->name))
        kiln__error_prefix("node '%s' (%s)", np->name, op);
    else
        kiln__error_prefix("node #%zu (%s)", k, op);
}

static bool default_domain(const char *d) { return empty(d) || strcmp(d, "ai.onnx") == 0; }

static kiln_status scalar_or_vector(kiln_dtype dt, int ndim, const void *src, size_t n, kg_tensor **out)
{
    int64_t shape[1] = { (int64_t)n };
    kg_tensor *t = tensor_new(dt, ndim, shape, n * kiln_dtype_size(dt));
    if (!t)
        return kiln__fail(KILN_ERR_NOMEM, "out of memory");
    if (n)
        memcpy(t->data, src, n * kiln_dtype_size(dt));
    *out = t;
    return KILN_OK;
}

/* A Constant node becomes its output value's constant; the node itself is dropped. */
static kiln_status constant_node(importer *im, Onnx__NodeProto *np)
{
    if (np->n_output != 1 || empty(np->output[0]))
        return kiln__fail(KILN_ERR_FORMAT, "a Constant node needs exactly one output");
    if (np->n_input != 0)
        return kiln__fail(KILN_ERR_FORMAT, "a Constant node takes no inputs");
    if (np->n_attribute != 1)
        return kiln__fail(KILN_ERR_FORMAT, "a Constant node needs exactly one attribute, has %zu",
                          np->n_attribute);
    Onnx__AttributeProto *a = np->attribute[0];
    const char *name = a->name ? a->name : "";
    int kind = attr_kind(a);
    kg_tensor *t = NULL;
    kiln_status st;
    if (strcmp(name, "value") == 0) {
        if (kind != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR || !a->t)
            return kiln__fail(KILN_ERR_FORMAT, "attribute 'value' holds no tensor");
        st = tensor_from_proto(a->t, &t);
        if (st != KILN_OK)
            kiln__error_prefix("attribute 'value'");
    } else if (strcmp(name, "value_float") == 0) {
        if (kind != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT)
            return kiln__fail(KILN_ERR_FORMAT, "attribute 'value_float' holds no float");
        st = scalar_or_vector(KILN_F32, 0, &a->f, 1, &t);
    } else if (strcmp(name, "value_floats") == 0) {
        if (kind != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS)
            return kiln__fail(KILN_ERR_FORMAT, "attribute 'value_floats' holds no floats");
        st = scalar_or_vector(KILN_F32, 1, a->floats, a->n_floats, &t);
    } else if (strcmp(name, "value_int") == 0) {
        if (kind != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT)
            return kiln__fail(KILN_ERR_FORMAT, "attribute 'value_int' holds no int");
        st = scalar_or_vector(KILN_I64, 0, &a->i, 1, &t);
    } else if (strcmp(name, "value_ints") == 0) {
        if (kind != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS)
            return kiln__fail(KILN_ERR_FORMAT, "attribute 'value_ints' holds no ints");
        st = scalar_or_vector(KILN_I64, 1, a->ints, a->n_ints, &t);
    } else if (strcmp(name, "sparse_value") == 0 || strcmp(name, "value_string") == 0
               || strcmp(name, "value_strings") == 0) {
        return kiln__fail(KILN_ERR_UNSUPPORTED, "Constant attribute '%s' is not supported", name);
    } else {
        return kiln__fail(KILN_ERR_FORMAT, "unknown Constant attribute '%s'", name);
    }
    if (st != KILN_OK)
        return st;
    int v = value_get(im, np->output[0], NULL);
    if (v < 0) {
        kg_tensor_free(t);
        return KILN_ERR_NOMEM;
    }
    value_set_constant(&im->g->values[v], t);
    return KILN_OK;
}

/* One non-Constant node, appended to g->nodes (counted as soon as it holds anything). */
static kiln_status node_add(importer *im, Onnx__NodeProto *np)
{
    kg_graph *g = im->g;
    kg_node *n = &g->nodes[g->n_nodes++];
    if (!(n->op_type = kiln__strdup(np->op_type))
        || !(n->name = kiln__strdup(np->name ? np->name : ""))
        || !(n->domain = kiln__strdup(default_domain(np->domain) ? "" : np->domain))
        || !(n->in = kiln__malloc(np->n_input * sizeof(int)))
        || !(n->out = kiln__malloc(np->n_output * sizeof(int)))
        || !(n->attrs = kiln__calloc(np->n_attribute, sizeof(kg_attr))))
        return kiln__fail(KILN_ERR_NOMEM, "out of memory");
    n->n_in = (int)np->n_input;
    n->n_out = (int)np->n_output;
    for (size_t j = 0; j < np->n_input; j++) {
        n->in[j] = -1;
        if (!empty(np->input[j]) && (n->in[j] = value_get(im, np->input[j], NULL)) < 0)
            return KILN_ERR_NOMEM;
    }
    for (size_t j = 0; j < np->n_output; j++) {
        n->out[j] = -1;
        if (!empty(np->output[j]) && (n->out[j] = value_get(im, np->output[j], NULL)) < 0)
            return KILN_ERR_NOMEM;
    }
    for (size_t j = 0; j < np->n_attribute; j++) {
        kg_attr *a = &n->attrs[n->n_attr++];
        kiln_status st = attr_copy(a, np->attribute[j]);
        if (st != KILN_OK)
            return st;
        for (int k = 0; k + 1 < n->n_attr; k++) {
            if (strcmp(n->attrs[k].name, a->name) == 0)
                return kiln__fail(KILN_ERR_FORMAT, "attribute '%s' appears twice", a->name);
        }
    }
    return KILN_OK;
}

/* ---- model-local functions ----
 * A node calling a FunctionProto of the model (torch's export_modules_as_functions writes
 * one per module) is replaced by the function's body, recursively: formal inputs and
 * outputs become the call's names, every other name in the body gets a prefix unique to the
 * call, and attributes that refer to the call's (ref_attr_name) take the call's value or,
 * when the call has none, are dropped (the op's default). The copies live in an arena of
 * allocations freed once the graph is built. */

#define INL_MAX_DEPTH 32
#define INL_MAX_NODES (1u << 18)          /* nodes after inlining (bounds a hostile model) */

typedef struct inliner {
    const Onnx__ModelProto *mp;
    int64_t opset;
    Onnx__NodeProto **nodes;             /* the flattened node list */
    size_t n, cap;
    void **owned;                        /* every allocation below, freed by inl_free */
    size_t n_owned, cap_owned;
    unsigned long calls;
} inliner;

static void *inl_alloc(inliner *in, size_t n)
{
    if (in->n_owned == in->cap_owned) {
        size_t cap = in->cap_owned ? 2 * in->cap_owned : 64;
        void **o = kiln__realloc(in->owned, cap * sizeof *o);
        if (!o)
            return NULL;
        in->owned = o;
        in->cap_owned = cap;
    }
    void *p = kiln__calloc(1, n ? n : 1);
    if (p)
        in->owned[in->n_owned++] = p;
    return p;
}

static void inl_free(inliner *in)
{
    for (size_t i = 0; i < in->n_owned; i++)
        kiln__free(in->owned[i]);
    kiln__free(in->owned);
    kiln__free(in->nodes);
}

static const Onnx__FunctionProto *inl_find(const inliner *in, const Onnx__NodeProto *np)
{
    if (default_domain(np->domain) || empty(np->op_type))
        return NULL;
    for (size_t f = 0; f < in->mp->n_functions; f++) {
        const Onnx__FunctionProto *fp = in->mp->functions[f];
        if (fp->name && fp->domain && strcmp(fp->name, np->op_type) == 0
            && strcmp(fp->domain, np->domain) == 0)
            return fp;
    }
    return NULL;
}

static kiln_status inl_push(inliner *in, Onnx__NodeProto *np)
{
    if (in->n == in->cap) {
        if (in->cap >= INL_MAX_NODES)
            return kiln__fail(KILN_ERR_UNSUPPORTED, "more than %u nodes once functions are inlined",
                              INL_MAX_NODES);
        size_t cap = in->cap ? 2 * in->cap : 256;
        Onnx__NodeProto **a = kiln__realloc(in->nodes, cap * sizeof *a);
        if (!a)
            return kiln__fail(KILN_ERR_NOMEM, "out of memory");
        in->nodes = a;
        in->cap = cap;
    }
    in->nodes[in->n++] = np;
    return KILN_OK;
}

/* The name a body value takes in the call's scope. */
static const char *inl_name(inliner *in, const Onnx__FunctionProto *fp, const Onnx__NodeProto *call,
                            const char *prefix, const char *s)
{
    if (empty(s))
        return "";
    for (size_t i = 0; i < fp->n_input; i++)
        if (fp->input[i] && strcmp(fp->input[i], s) == 0)
            return i < call->n_input && call->input[i] ? call->input[i] : "";
    for (size_t i = 0; i < fp->n_output; i++)
        if (fp->output[i] && strcmp(fp->output[i], s) == 0 && i < call->n_output
            && !empty(call->output[i]))
            return call->output[i];
    size_t lp = strlen(prefix), ls = strlen(s);
    char *r = inl_alloc(in, lp + ls + 1);
    if (r) {
        memcpy(r, prefix, lp);
        memcpy(r + lp, s, ls + 1);
    }
    return r;
}

static kiln_status inl_node(inliner *in, Onnx__NodeProto *np, int depth);

static kiln_status inl_call(inliner *in, const Onnx__FunctionProto *fp, Onnx__NodeProto *call,
                            int depth)
{
    if (depth >= INL_MAX_DEPTH)
        return kiln__fail(KILN_ERR_UNSUPPORTED, "functions nested more than %d deep (or recursive)",
                          INL_MAX_DEPTH);
    if (call->n_input > fp->n_input || call->n_output > fp->n_output)
        return kiln__fail(KILN_ERR_FORMAT, "calls function '%s' with %zu inputs and %zu outputs "
                          "(it has %zu and %zu)", fp->name, call->n_input, call->n_output,
                          fp->n_input, fp->n_output);
    for (size_t i = 0; i < fp->n_opset_import; i++) {
        const Onnx__OperatorSetIdProto *o = fp->opset_import[i];
        if (default_domain(o->domain) && o->has_version && o->version != in->opset)
            return kiln__fail(KILN_ERR_UNSUPPORTED, "function '%s' imports opset %lld, the model "
                              "%lld", fp->name, (long long)o->version, (long long)in->opset);
    }
    char prefix[48];
    snprintf(prefix, sizeof prefix, "kiln.fn%lu/", ++in->calls);
    for (size_t k = 0; k < fp->n_node; k++) {
        const Onnx__NodeProto *b = fp->node[k];
        Onnx__NodeProto *c = inl_alloc(in, sizeof *c);
        if (!c)
            return kiln__fail(KILN_ERR_NOMEM, "out of memory");
        *c = *b;                                        /* op_type, domain, name, ... */
        c->input = inl_alloc(in, b->n_input * sizeof *c->input);
        c->output = inl_alloc(in, b->n_output * sizeof *c->output);
        c->attribute = inl_alloc(in, b->n_attribute * sizeof *c->attribute);
        if (!c->input || !c->output || !c->attribute)
            return kiln__fail(KILN_ERR_NOMEM, "out of memory");
        for (size_t j = 0; j < b->n_input; j++)
            if (!(c->input[j] = (char *)inl_name(in, fp, call, prefix, b->input[j])))
                return kiln__fail(KILN_ERR_NOMEM, "out of memory");
        for (size_t j = 0; j < b->n_output; j++)
            if (!(c->output[j] = (char *)inl_name(in, fp, call, prefix, b->output[j])))
                return kiln__fail(KILN_ERR_NOMEM, "out of memory");
        c->n_attribute = 0;
        for (size_t j = 0; j < b->n_attribute; j++) {
            Onnx__AttributeProto *a = b->attribute[j];
            if (empty(a->ref_attr_name)) {
                c->attribute[c->n_attribute++] = a;
                continue;
            }
            for (size_t q = 0; q < call->n_attribute; q++) {
                Onnx__AttributeProto *v = call->attribute[q];
                if (v->name && strcmp(v->name, a->ref_attr_name) == 0) {
                    Onnx__AttributeProto *r = inl_alloc(in, sizeof *r);
                    if (!r)
                        return kiln__fail(KILN_ERR_NOMEM, "out of memory");
                    *r = *v;
                    r->name = a->name;
                    r->ref_attr_name = NULL;
                    c->attribute[c->n_attribute++] = r;
                    break;
                }
            }
        }
        const char *nm = empty(b->name) ? b->op_type : b->name;
        size_t l1 = empty(call->name) ? 0 : strlen(call->name), l2 = nm ? strlen(nm) : 0;
        if (!(c->name = inl_alloc(in, l1 + l2 + 2)))
            return kiln__fail(KILN_ERR_NOMEM, "out of memory");
        snprintf(c->name, l1 + l2 + 2, "%s/%s", l1 ? call->name : "", nm ? nm : "");
        kiln_status st = inl_node(in, c, depth + 1);
        if (st != KILN_OK)
            return st;
    }
    return KILN_OK;
}

static kiln_status inl_node(inliner *in, Onnx__NodeProto *np, int depth)
{
    const Onnx__FunctionProto *fp = inl_find(in, np);
    if (!fp)
        return inl_push(in, np);
    kiln_status st = inl_call(in, fp, np, depth);
    if (st != KILN_OK && depth == 0)
        kiln__error_prefix("node '%s' (%s, a model-local function)", np->name ? np->name : "",
                           np->op_type);
    return st;
}

/* ---- the graph ---- */

static kiln_status graph_opset(const Onnx__ModelProto *mp, int64_t *out)
{
    bool found = false;
    for (size_t i = 0; i < mp->n_opset_import; i++) {
        const Onnx__OperatorSetIdProto *o = mp->opset_import[i];
        if (!default_domain(o->domain))
            continue;
        if (!o->has_version)
            return kiln__fail(KILN_ERR_FORMAT, "opset_import of the default domain has no version");
        *out = o->version;
        found = true;
    }
    if (!found && mp->n_opset_import) /* valid ONNX, but only ops kiln does not have */
        return kiln__fail(KILN_ERR_UNSUPPORTED, "the model imports only domain '%s', not the default ONNX domain",
                          mp->opset_import[0]->domain);
    if (!found)
        return kiln__fail(KILN_ERR_FORMAT, "no opset_import for the default ONNX domain");
    if (*out < KG_MIN_OPSET || *out > KG_MAX_OPSET)
        return kiln__fail(KILN_ERR_UNSUPPORTED, "opset %lld is not supported (kiln supports %d to %d)",
                          (long long)*out, KG_MIN_OPSET, KG_MAX_OPSET);
    return KILN_OK;
}

static bool sum_ok(size_t *acc, size_t n)
{
    uint64_t r;
    if (!kiln__add_ok(*acc, n, &r) || r > (uint64_t)INT_MAX / 4)
        return false;
    *acc = (size_t)r;
    return true;
}

static kiln_status graph_alloc(importer *im, const Onnx__GraphProto *gp,
                               Onnx__NodeProto *const *nodes, size_t n_nodes)
{
    kg_graph *g = im->g;
    size_t est = 0; /* every name occurrence: an upper bound on distinct values */
    bool ok = sum_ok(&est, gp->n_input) && sum_ok(&est, gp->n_output)
           && sum_ok(&est, gp->n_initializer) && sum_ok(&est, gp->n_value_info);
    for (size_t k = 0; ok && k < n_nodes; k++)
        ok = sum_ok(&est, nodes[k]->n_input) && sum_ok(&est, nodes[k]->n_output);
    if (!ok || n_nodes > (size_t)INT_MAX / 4)
        return kiln__fail(KILN_ERR_FORMAT, "graph too large");
    size_t slots = 16;
    while (slots < 2 * est + 1)
        slots *= 2;
    im->cap_values = est;
    if (!(g->values = kiln__calloc(est, sizeof(kg_value)))
        || !(im->producer = kiln__malloc(est * sizeof(int)))
        || !(im->slots = kiln__malloc(slots * sizeof(int)))
        || !(g->nodes = kiln__calloc(n_nodes, sizeof(kg_node)))
        || !(g->inputs = kiln__malloc(gp->n_input * sizeof(int)))
        || !(g->outputs = kiln__malloc(gp->n_output * sizeof(int))))
        return kiln__fail(KILN_ERR_NOMEM, "out of memory");
    memset(im->slots, 0xff, slots * sizeof(int)); /* all -1 */
    im->mask = slots - 1;
    return KILN_OK;
}

static kiln_status graph_nodes(importer *im, Onnx__ModelProto *mp, Onnx__NodeProto **nodes,
                               size_t n_nodes);

static kiln_status graph_build(importer *im, Onnx__ModelProto *mp)
{
    kg_graph *g = im->g;
    Onnx__GraphProto *gp = mp->graph;
    kiln_status st = graph_opset(mp, &g->opset);
    if (st != KILN_OK)
        return st;
    /* calls of model-local functions replaced by their bodies (only when there are some) */
    inliner inl = { .mp = mp, .opset = g->opset };
    Onnx__NodeProto **nodes = gp->node;
    size_t n_nodes = gp->n_node;
    if (mp->n_functions) {
        for (size_t k = 0; k < gp->n_node && st == KILN_OK; k++)
            st = inl_node(&inl, gp->node[k], 0);
        nodes = inl.nodes;
        n_nodes = inl.n;
    }
    if (st == KILN_OK)
        st = graph_nodes(im, mp, nodes, n_nodes);
    inl_free(&inl);
    return st;
}

/* The graph from its (function-free) node list. */
static kiln_status graph_nodes(importer *im, Onnx__ModelProto *mp, Onnx__NodeProto **nodes,
                               size_t n_nodes)
{
    kg_graph *g = im->g;
    Onnx__GraphProto *gp = mp->graph;
    kiln_status st;
    if (gp->n_sparse_initializer)
        return kiln__fail(KILN_ERR_UNSUPPORTED, "sparse initializers are not supported");
    if (!(g->name = kiln__strdup(gp->name ? gp->name : "")))
        return kiln__fail(KILN_ERR_NOMEM, "out of memory");
    if ((st = graph_alloc(im, gp, nodes, n_nodes)) != KILN_OK)
        return st;
    bool created;

    /* Initializers: constants. */
    for (size_t i = 0; i < gp->n_initializer; i++) {
        Onnx__TensorProto *tp = gp->initializer[i];
        if (empty(tp->name))
            return kiln__fail(KILN_ERR_FORMAT, "initializer #%zu has no name", i);
        int v = value_get(im, tp->name, &created);
        if (v < 0)
            return KILN_ERR_NOMEM;
        if (!created)
            return kiln__fail(KILN_ERR_FORMAT, "initializer '%s' appears twice", tp->name);
        im->producer[v] = BY_GRAPH;
        kg_tensor *t;
        if ((st = tensor_from_proto(tp, &t)) != KILN_OK) {
            kiln__error_prefix("initializer '%s'", tp->name);
            return st;
        }
        value_set_constant(&g->values[v], t);
    }

    /* Graph inputs; those that are initializers too are constants, not inputs. */
    for (size_t i = 0; i < gp->n_input; i++) {
        const Onnx__ValueInfoProto *vi = gp->input[i];
        if (empty(vi->name))
            return kiln__fail(KILN_ERR_FORMAT, "graph input #%zu has no name", i);
        int v = value_get(im, vi->name, &created);
        if (v < 0)
            return KILN_ERR_NOMEM;
        if (g->values[v].constant)
            continue;
        if (!created)
            return kiln__fail(KILN_ERR_FORMAT, "graph input '%s' appears twice", vi->name);
        im->producer[v] = BY_GRAPH;
        if ((st = apply_type(&g->values[v], vi->type)) != KILN_OK) {
            kiln__error_prefix("graph input '%s'", vi->name);
            return st;
        }
        g->inputs[g->n_inputs++] = v;
    }

    /* Who produces what: every value has at most one producer. */
    for (size_t k = 0; k < n_nodes; k++) {
        Onnx__NodeProto *np = nodes[k];
        if (empty(np->op_type))
            return kiln__fail(KILN_ERR_FORMAT, "node #%zu has no op_type", k);
        for (size_t j = 0; j < np->n_output; j++) {
            if (empty(np->output[j]))
                continue;
            int v = value_get(im, np->output[j], NULL);
            if (v < 0)
                return KILN_ERR_NOMEM;
            if (im->producer[v] != NOT_PRODUCED) {
                kiln__fail(KILN_ERR_FORMAT, "output '%s' is already produced by %s", np->output[j],
                           im->producer[v] == BY_GRAPH ? "a graph input or initializer"
                                                       : "an earlier node");
                node_error_prefix(np, k);
                return KILN_ERR_FORMAT;
            }
            im->producer[v] = (int)k;
        }
    }

    /* Nodes in order: inputs must already exist (topological order); Constants fold. */
    for (size_t k = 0; k < n_nodes; k++) {
        Onnx__NodeProto *np = nodes[k];
        st = KILN_OK;
        for (size_t j = 0; j < np->n_input && st == KILN_OK; j++) {
            if (empty(np->input[j]))
                continue;
            int v = value_get(im, np->input[j], NULL);
            if (v < 0)
                return KILN_ERR_NOMEM;
            if (im->producer[v] == NOT_PRODUCED)
                st = kiln__fail(KILN_ERR_FORMAT,
                                "input '%s' is not a graph input, initializer or node output",
                                np->input[j]);
            else if (im->producer[v] >= (int)k)
                st = kiln__fail(KILN_ERR_FORMAT,
                                "input '%s' comes from a later node (nodes must be in topological order)",
                                np->input[j]);
        }
        if (st == KILN_OK) {
            if (strcmp(np->op_type, "Constant") == 0 && default_domain(np->domain))
                st = constant_node(im, np);
            else
                st = node_add(im, np);
        }
        if (st != KILN_OK) {
            node_error_prefix(np, k);
            return st;
        }
    }

    /* Types of intermediate values. */
    for (size_t i = 0; i < gp->n_value_info; i++) {
        const Onnx__ValueInfoProto *vi = gp->value_info[i];
        if (empty(vi->name))
            return kiln__fail(KILN_ERR_FORMAT, "value_info #%zu has no name", i);
        int v = value_get(im, vi->name, NULL);
        if (v < 0)
            return KILN_ERR_NOMEM;
        if (!g->values[v].constant && (st = apply_type(&g->values[v], vi->type)) != KILN_OK) {
            kiln__error_prefix("value '%s'", vi->name);
            return st;
        }
    }

    /* Graph outputs. */
    if (gp->n_output == 0)
        return kiln__fail(KILN_ERR_FORMAT, "graph has no outputs");
    for (size_t i = 0; i < gp->n_output; i++) {
        const Onnx__ValueInfoProto *vi = gp->output[i];
        if (empty(vi->name))
            return kiln__fail(KILN_ERR_FORMAT, "graph output #%zu has no name", i);
        int v = value_get(im, vi->name, NULL);
        if (v < 0)
            return KILN_ERR_NOMEM;
        if (im->producer[v] == NOT_PRODUCED)
            return kiln__fail(KILN_ERR_FORMAT, "graph output '%s' is not produced by any node",
                              vi->name);
        if (!g->values[v].constant && (st = apply_type(&g->values[v], vi->type)) != KILN_OK) {
            kiln__error_prefix("graph output '%s'", vi->name);
            return st;
        }
        g->outputs[g->n_outputs++] = v;
    }
    return KILN_OK;
}

/* ---- entry points ---- */

kiln_status kg_import_buffer(const void *data, size_t n, const char *what, kg_graph **out)
{
    if (!out || (!data && n))
        return kiln__fail(KILN_ERR_ARG, "kg_import_buffer: NULL argument");
    if (!what)
        what = "<memory>";
    pb_alloc_state as = { false };
    ProtobufCAllocator alloc = { pb_alloc, pb_free, &as };
    Onnx__ModelProto *mp = onnx__model_proto__unpack(&alloc, n, data);
    if (!mp) {
        if (as.failed)
            return kiln__fail(KILN_ERR_NOMEM, "%s: out of memory parsing the ONNX model", what);
        return kiln__fail(KILN_ERR_FORMAT, "%s: not an ONNX model (protobuf parse failed)", what);
    }
    if (!mp->graph) {
        onnx__model_proto__free_unpacked(mp, &alloc);
        return kiln__fail(KILN_ERR_FORMAT, "%s: not an ONNX model (no graph)", what);
    }
    importer im = { 0 };
    kiln_status st = KILN_OK;
    if (!(im.g = kiln__calloc(1, sizeof *im.g)))
        st = kiln__fail(KILN_ERR_NOMEM, "out of memory");
    else
        st = graph_build(&im, mp);
    kiln__free(im.slots);
    kiln__free(im.producer);
    onnx__model_proto__free_unpacked(mp, &alloc);
    if (st != KILN_OK) {
        kg_graph_free(im.g);
        kiln__error_prefix("%s", what);
        return st;
    }
    *out = im.g;
    return KILN_OK;
}

kiln_status kg_import(const char *path, kg_graph **out)
{
    if (!path || !out)
        return kiln__fail(KILN_ERR_ARG, "kg_import: NULL argument");
    uint8_t *buf = NULL;
    size_t n = 0;
    kiln_status st = file_read(path, &buf, &n);
    if (st != KILN_OK)
        return st;
    st = kg_import_buffer(buf, n, path, out);
    kiln__free(buf);
    return st;
}

kiln_status kg_read_tensor_file(const char *path, kg_tensor **out, char **name)
{
    if (!path || !out)
        return kiln__fail(KILN_ERR_ARG, "kg_read_tensor_file: NULL argument");
    uint8_t *buf = NULL;
    size_t n = 0;
    kiln_status st = file_read(path, &buf, &n);
    if (st != KILN_OK)
        return st;
    pb_alloc_state as = { false };
    ProtobufCAllocator alloc = { pb_alloc, pb_free, &as };
    Onnx__TensorProto *tp = onnx__tensor_proto__unpack(&alloc, n, buf);
    kiln__free(buf);
    if (!tp) {
        if (as.failed)
            return kiln__fail(KILN_ERR_NOMEM, "%s: out of memory parsing the tensor", path);
        return kiln__fail(KILN_ERR_FORMAT, "%s: not an ONNX TensorProto (protobuf parse failed)", path);
    }
    char *nm = NULL;
    kg_tensor *t = NULL;
    if (name && !(nm = kiln__strdup(tp->name ? tp->name : "")))
        st = kiln__fail(KILN_ERR_NOMEM, "%s: out of memory", path);
    else if ((st = tensor_from_proto(tp, &t)) != KILN_OK)
        kiln__error_prefix("%s: tensor '%s'", path, tp->name ? tp->name : "");
    onnx__tensor_proto__free_unpacked(tp, &alloc);
    if (st != KILN_OK) {
        kiln__free(nm);
        return st;
    }
    *out = t;
    if (name)
        *name = nm;
    return KILN_OK;
}
