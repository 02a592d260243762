/*
 * test_onnx_import.c — the ONNX importer (src/onnx): models built in memory with the
 * protobuf-c structs generated from onnx.proto, the real files of ONNX's node tests when
 * installed, hostile input (random bytes, every truncation, byte flips), allocation
 * failures, and the public kiln_onnx_open / kiln_onnx_input.
 */
#include "testutil.h"

#include "onnx/graph.h"
#include "onnx.pb-c.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define NODE_TEST_DIR "/usr/share/libonnx-testdata/data/node"

enum {
    T_FLOAT = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, T_UINT8 = ONNX__TENSOR_PROTO__DATA_TYPE__UINT8,
    T_INT8 = ONNX__TENSOR_PROTO__DATA_TYPE__INT8, T_UINT16 = ONNX__TENSOR_PROTO__DATA_TYPE__UINT16,
    T_INT32 = ONNX__TENSOR_PROTO__DATA_TYPE__INT32, T_INT64 = ONNX__TENSOR_PROTO__DATA_TYPE__INT64,
    T_STRING = ONNX__TENSOR_PROTO__DATA_TYPE__STRING, T_BOOL = ONNX__TENSOR_PROTO__DATA_TYPE__BOOL,
    T_FLOAT16 = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16, T_DOUBLE = ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE,
    T_BFLOAT16 = ONNX__TENSOR_PROTO__DATA_TYPE__BFLOAT16,
};
enum { DYN = -1, UNSET = -2 };  /* dims in vi(): a dim_param, or a dimension with nothing set */

/* ---- building ModelProtos in memory ---- */

#define POOL 64
typedef struct mb {
    Onnx__ModelProto model;
    Onnx__OperatorSetIdProto opset[2], *opsetp[2];
    Onnx__GraphProto graph;
    Onnx__NodeProto node[POOL], *nodep[POOL];
    Onnx__AttributeProto attr[POOL], *attrp[POOL];
    int n_attr;
    Onnx__ValueInfoProto vi[POOL], *inp[POOL], *outp[POOL], *vinfop[POOL];
    int n_vi;
    Onnx__TypeProto type[POOL];
    Onnx__TypeProto__Tensor tt[POOL];
    Onnx__TensorShapeProto shape[POOL];
    Onnx__TensorShapeProto__Dimension dim[POOL * 4], *dimp[POOL * 4];
    int n_dim;
    Onnx__TensorProto tensor[POOL], *initp[POOL];
    int n_tensor;
    int64_t tdims[POOL * 8];
    int n_tdims;
    char *strs[POOL * 4];
    int n_str;
} mb;

static mb *mb_new(int64_t opset)
{
    mb *b = calloc(1, sizeof *b);
    onnx__model_proto__init(&b->model);
    b->model.has_ir_version = 1;
    b->model.ir_version = 8;
    onnx__operator_set_id_proto__init(&b->opset[0]);
    b->opset[0].domain = "";
    b->opset[0].has_version = 1;
    b->opset[0].version = opset;
    b->opsetp[0] = &b->opset[0];
    b->model.n_opset_import = 1;
    b->model.opset_import = b->opsetp;
    onnx__graph_proto__init(&b->graph);
    b->graph.name = "g";
    b->graph.node = b->nodep;
    b->graph.input = b->inp;
    b->graph.output = b->outp;
    b->graph.value_info = b->vinfop;
    b->graph.initializer = b->initp;
    b->model.graph = &b->graph;
    return b;
}

/* A ValueInfo: elem < 0 gives no type; ndim < 0 no shape; dims DYN / UNSET as above. */
static Onnx__ValueInfoProto *vi(mb *b, const char *name, int elem, int ndim, const int64_t *dims)
{
    int i = b->n_vi++;
    Onnx__ValueInfoProto *v = &b->vi[i];
    onnx__value_info_proto__init(v);
    v->name = (char *)name;
    if (elem < 0)
        return v;
    onnx__type_proto__init(&b->type[i]);
    onnx__type_proto__tensor__init(&b->tt[i]);
    b->type[i].value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    b->type[i].tensor_type = &b->tt[i];
    b->tt[i].has_elem_type = 1;
    b->tt[i].elem_type = elem;
    v->type = &b->type[i];
    if (ndim < 0)
        return v;
    onnx__tensor_shape_proto__init(&b->shape[i]);
    b->tt[i].shape = &b->shape[i];
    b->shape[i].n_dim = (size_t)ndim;
    b->shape[i].dim = &b->dimp[b->n_dim];
    for (int d = 0; d < ndim; d++) {
        Onnx__TensorShapeProto__Dimension *dm = &b->dim[b->n_dim];
        onnx__tensor_shape_proto__dimension__init(dm);
        if (dims[d] == DYN) {
            dm->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
            dm->dim_param = "N";
        } else if (dims[d] != UNSET) {
            dm->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
            dm->dim_value = dims[d];
        }
        b->dimp[b->n_dim++] = dm;
    }
    return v;
}

static void input(mb *b, const char *name, int elem, int ndim, const int64_t *dims)
{
    b->inp[b->graph.n_input++] = vi(b, name, elem, ndim, dims);
}
static void output(mb *b, const char *name, int elem, int ndim, const int64_t *dims)
{
    b->outp[b->graph.n_output++] = vi(b, name, elem, ndim, dims);
}
static void value_info(mb *b, const char *name, int elem, int ndim, const int64_t *dims)
{
    b->vinfop[b->graph.n_value_info++] = vi(b, name, elem, ndim, dims);
}

static Onnx__TensorProto *tensor(mb *b, const char *name, int dtype, int ndim, const int64_t *dims)
{
    Onnx__TensorProto *t = &b->tensor[b->n_tensor++];
    onnx__tensor_proto__init(t);
    t->name = (char *)name;
    t->has_data_type = 1;
    t->data_type = dtype;
    t->n_dims = (size_t)ndim;
    t->dims = &b->tdims[b->n_tdims];
    for (int d = 0; d < ndim; d++)
        b->tdims[b->n_tdims++] = dims[d];
    return t;
}

static Onnx__TensorProto *raw(Onnx__TensorProto *t, const void *data, size_t n)
{
    t->has_raw_data = 1;
    t->raw_data.data = (uint8_t *)data;
    t->raw_data.len = n;
    return t;
}

static void initializer(mb *b, Onnx__TensorProto *t) { b->initp[b->graph.n_initializer++] = t; }

static Onnx__NodeProto *node(mb *b, const char *op, const char *name, int n_in, const char **in,
                             int n_out, const char **out)
{
    Onnx__NodeProto *n = &b->node[b->graph.n_node];
    b->nodep[b->graph.n_node++] = n;
    onnx__node_proto__init(n);
    n->op_type = (char *)op;
    n->name = (char *)name;
    n->n_input = (size_t)n_in;
    n->input = &b->strs[b->n_str];
    for (int i = 0; i < n_in; i++)
        b->strs[b->n_str++] = (char *)in[i];
    n->n_output = (size_t)n_out;
    n->output = &b->strs[b->n_str];
    for (int i = 0; i < n_out; i++)
        b->strs[b->n_str++] = (char *)out[i];
    n->attribute = &b->attrp[b->n_attr]; /* a node's attributes are added right after it */
    return n;
}

static Onnx__AttributeProto *attr(mb *b, Onnx__NodeProto *n, const char *name, int type)
{
    Onnx__AttributeProto *a = &b->attr[b->n_attr];
    b->attrp[b->n_attr++] = a;
    n->n_attribute++;
    onnx__attribute_proto__init(a);
    a->name = (char *)name;
    if (type) {
        a->has_type = 1;
        a->type = type;
    }
    return a;
}

static uint8_t *pack(mb *b, size_t *n)
{
    *n = onnx__model_proto__get_packed_size(&b->model);
    uint8_t *buf = malloc(*n ? *n : 1);
    onnx__model_proto__pack(&b->model, buf);
    return buf;
}

static kiln_status import(mb *b, kg_graph **g)
{
    size_t n;
    uint8_t *buf = pack(b, &n);
    kiln_status st = kg_import_buffer(buf, n, "test.onnx", g);
    free(buf);
    return st;
}

static int vidx(const kg_graph *g, const char *name)
{
    for (int i = 0; i < g->n_values; i++) {
        if (strcmp(g->values[i].name, name) == 0)
            return i;
    }
    return -1;
}

static const kg_value *val(const kg_graph *g, const char *name)
{
    int i = vidx(g, name);
    return i >= 0 ? &g->values[i] : NULL;
}

static int has(const char *s, const char *sub) { return strstr(s, sub) != NULL; }

/* ---- the conv + relu model most tests start from ---- */

static const float W_DATA[6] = { 1, 2, 3, 4, 5, 6 };
static const float B_DATA[2] = { 0.5f, -0.5f };

static mb *conv_model(void)
{
    mb *b = mb_new(13);
    int64_t xd[4] = { DYN, 3, 4, UNSET }, wd[4] = { 2, 3, 1, 1 }, bd[1] = { 2 },
            yd[4] = { DYN, 2, 4, 4 };
    input(b, "x", T_FLOAT, 4, xd);
    input(b, "w", T_FLOAT, 4, wd); /* an initializer listed as input: a constant */
    initializer(b, raw(tensor(b, "w", T_FLOAT, 4, wd), W_DATA, sizeof W_DATA));
    Onnx__TensorProto *bias = tensor(b, "b", T_FLOAT, 1, bd);
    bias->n_float_data = 2;
    bias->float_data = (float *)B_DATA;
    initializer(b, bias);
    const char *cin[] = { "x", "w", "b" }, *cout[] = { "c" };
    Onnx__NodeProto *conv = node(b, "Conv", "conv1", 3, cin, 1, cout);
    static int64_t ks[2] = { 1, 1 }, strides[2] = { 1, 1 };
    Onnx__AttributeProto *a = attr(b, conv, "kernel_shape", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
    a->n_ints = 2;
    a->ints = ks;
    a = attr(b, conv, "strides", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
    a->n_ints = 2;
    a->ints = strides;
    a = attr(b, conv, "auto_pad", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING);
    a->has_s = 1;
    a->s.data = (uint8_t *)"NOTSET";
    a->s.len = 6;
    a = attr(b, conv, "group", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
    a->has_i = 1;
    a->i = 1;
    const char *rin[] = { "c" }, *rout[] = { "y" };
    Onnx__NodeProto *relu = node(b, "Relu", NULL, 1, rin, 1, rout);
    a = attr(b, relu, "alpha", 0); /* no type field (IR < 3): inferred from f */
    a->has_f = 1;
    a->f = 0.25f;
    value_info(b, "c", T_FLOAT, 4, yd);
    output(b, "y", T_FLOAT, 4, yd);
    return b;
}

static void test_basic(void)
{
    mb *b = conv_model();
    kg_graph *g = NULL;
    if (!CHECK_OK(import(b, &g))) {
        free(b);
        return;
    }
    CHECK(g->opset == 13);
    CHECK(strcmp(g->name, "g") == 0);
    CHECK(g->n_values == 5); /* x w b c y */
    CHECK(g->n_inputs == 1 && g->inputs[0] == vidx(g, "x"));
    CHECK(g->n_outputs == 1 && g->outputs[0] == vidx(g, "y"));

    const kg_value *x = val(g, "x");
    CHECK(x && x->dtype == KILN_F32 && x->ndim == 4 && x->shape[0] == -1 && x->shape[1] == 3
          && x->shape[2] == 4 && x->shape[3] == -1 && !x->constant);
    const kg_value *w = val(g, "w");
    CHECK(w && w->constant && w->dtype == KILN_F32 && w->ndim == 4 && w->shape[0] == 2);
    CHECK(w && w->constant && w->constant->nbytes == sizeof W_DATA
          && memcmp(w->constant->data, W_DATA, sizeof W_DATA) == 0);
    const kg_value *bv = val(g, "b");
    CHECK(bv && bv->constant && bv->constant->ndim == 1 && bv->constant->shape[0] == 2
          && bv->constant->nbytes == 8 && memcmp(bv->constant->data, B_DATA, 8) == 0);
    const kg_value *c = val(g, "c");
    CHECK(c && !c->constant && c->dtype == KILN_F32 && c->ndim == 4 && c->shape[3] == 4);
    const kg_value *y = val(g, "y");
    CHECK(y && y->dtype == KILN_F32 && y->ndim == 4 && y->shape[0] == -1);

    CHECK(g->n_nodes == 2);
    const kg_node *conv = &g->nodes[0], *relu = &g->nodes[1];
    CHECK(strcmp(conv->op_type, "Conv") == 0 && strcmp(conv->name, "conv1") == 0
          && strcmp(conv->domain, "") == 0);
    CHECK(conv->n_in == 3 && conv->in[0] == vidx(g, "x") && conv->in[1] == vidx(g, "w")
          && conv->in[2] == vidx(g, "b"));
    CHECK(conv->n_out == 1 && conv->out[0] == vidx(g, "c"));
    size_t n = 0;
    const int64_t *ks = kg_attr_ints(conv, "kernel_shape", &n);
    CHECK(ks && n == 2 && ks[0] == 1 && ks[1] == 1);
    CHECK(kg_attr_ints(conv, "pads", &n) == NULL && n == 0);
    CHECK(strcmp(kg_attr_string(conv, "auto_pad", "x"), "NOTSET") == 0);
    CHECK(strcmp(kg_attr_string(conv, "nope", "dflt"), "dflt") == 0);
    CHECK(kg_attr_int(conv, "group", 7) == 1);
    CHECK(kg_attr_int(conv, "auto_pad", 7) == 7); /* wrong type: the default */
    CHECK(kg_attr_find(conv, "strides") && kg_attr_find(conv, "strides")->type == KG_ATTR_INTS);
    CHECK(kg_attr_find(conv, "dilations") == NULL);
    CHECK(strcmp(relu->op_type, "Relu") == 0 && strcmp(relu->name, "") == 0);
    CHECK(kg_attr_float(relu, "alpha", 0) == 0.25f);
    CHECK(kg_attr_float(relu, "beta", 2.5f) == 2.5f);
    kg_graph_free(g);

    /* "ai.onnx" is the default domain too; other domains are kept */
    b->opset[0].domain = "ai.onnx";
    b->node[1].domain = "ai.onnx";
    b->node[0].domain = "com.example";
    g = NULL;
    if (CHECK_OK(import(b, &g))) {
        CHECK(strcmp(g->nodes[1].domain, "") == 0);
        CHECK(strcmp(g->nodes[0].domain, "com.example") == 0);
        kg_graph_free(g);
    }
    free(b);
    kg_graph_free(NULL);
}

static void test_optional_and_attrs(void)
{
    mb *b = mb_new(18);
    int64_t d[1] = { 4 };
    input(b, "x", T_FLOAT, 1, d);
    input(b, "hi", T_FLOAT, 0, NULL);
    const char *cin[] = { "x", "", "hi" }, *cout[] = { "y" };
    node(b, "Clip", "clip", 3, cin, 1, cout);
    const char *din[] = { "y" }, *dout[] = { "z", "" };
    Onnx__NodeProto *drop = node(b, "Dropout", "drop", 1, din, 2, dout);
    static float fl[3] = { 1.5f, 2.5f, -1 };
    Onnx__AttributeProto *a = attr(b, drop, "fl", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS);
    a->n_floats = 3;
    a->floats = fl;
    static ProtobufCBinaryData ss[2] = { { 2, (uint8_t *)"ab" }, { 0, NULL } };
    a = attr(b, drop, "ss", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRINGS);
    a->n_strings = 2;
    a->strings = ss;
    static const int32_t i8[3] = { -1, 2, -128 };
    int64_t td[1] = { 3 };
    Onnx__TensorProto *t = tensor(b, "attr_t", T_INT8, 1, td);
    t->n_int32_data = 3;
    t->int32_data = (int32_t *)i8;
    a = attr(b, drop, "t", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR);
    a->t = t;
    a = attr(b, drop, "empty_ints", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
    output(b, "z", T_FLOAT, 1, d);
    kg_graph *g = NULL;
    if (CHECK_OK(import(b, &g))) {
        CHECK(g->n_inputs == 2 && g->inputs[1] == vidx(g, "hi"));
        CHECK(val(g, "hi")->ndim == 0);
        const kg_node *clip = &g->nodes[0], *dn = &g->nodes[1];
        CHECK(clip->n_in == 3 && clip->in[1] == -1 && clip->in[2] == vidx(g, "hi"));
        CHECK(dn->n_out == 2 && dn->out[0] == vidx(g, "z") && dn->out[1] == -1);
        CHECK(val(g, "y") && val(g, "y")->ndim == -1 && val(g, "y")->dtype == 0);
        const kg_attr *fa = kg_attr_find(dn, "fl");
        CHECK(fa && fa->type == KG_ATTR_FLOATS && fa->n == 3 && fa->floats[1] == 2.5f);
        const kg_attr *sa = kg_attr_find(dn, "ss");
        CHECK(sa && sa->type == KG_ATTR_STRINGS && sa->n == 2 && strcmp(sa->strings[0], "ab") == 0
              && strcmp(sa->strings[1], "") == 0);
        const kg_attr *ta = kg_attr_find(dn, "t");
        CHECK(ta && ta->type == KG_ATTR_TENSOR && ta->t && ta->t->dtype == KILN_I8
              && ta->t->nbytes == 3 && ((int8_t *)ta->t->data)[2] == -128);
        size_t n = 9;
        CHECK(kg_attr_find(dn, "empty_ints") && kg_attr_ints(dn, "empty_ints", &n) && n == 0);
        kg_graph_free(g);
    }
    free(b);
}

/* Constant nodes fold into constant values and leave the node list. */
static void test_constant_nodes(void)
{
    mb *b = mb_new(13);
    int64_t d[1] = { 2 };
    input(b, "x", T_FLOAT, 1, d);
    const char *none[1] = { NULL };
    const char *o1[] = { "k_tensor" }, *o2[] = { "k_float" }, *o3[] = { "k_floats" },
               *o4[] = { "k_int" }, *o5[] = { "k_ints" };
    static const int64_t i64[2] = { 7, -8 };
    Onnx__NodeProto *n = node(b, "Constant", "c1", 0, none, 1, o1);
    Onnx__AttributeProto *a = attr(b, n, "value", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR);
    a->t = raw(tensor(b, "", T_INT64, 1, d), i64, sizeof i64);
    n = node(b, "Constant", "c2", 0, none, 1, o2);
    a = attr(b, n, "value_float", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT);
    a->has_f = 1;
    a->f = 3.5f;
    n = node(b, "Constant", "c3", 0, none, 1, o3);
    a = attr(b, n, "value_floats", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS);
    a->n_floats = 2;
    a->floats = (float *)B_DATA;
    n = node(b, "Constant", "", 0, none, 1, o4);
    a = attr(b, n, "value_int", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
    a->has_i = 1;
    a->i = -42;
    n = node(b, "Constant", "c5", 0, none, 1, o5);
    a = attr(b, n, "value_ints", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
    a->n_ints = 2;
    a->ints = (int64_t *)i64;
    const char *sin[] = { "x", "k_tensor", "k_float", "k_floats", "k_int", "k_ints" }, *sout[] = { "y" };
    node(b, "Sum", "s", 6, sin, 1, sout);
    output(b, "y", T_FLOAT, 1, d);
    kg_graph *g = NULL;
    if (CHECK_OK(import(b, &g))) {
        CHECK(g->n_nodes == 1 && strcmp(g->nodes[0].op_type, "Sum") == 0);
        CHECK(g->nodes[0].n_in == 6 && g->nodes[0].in[1] == vidx(g, "k_tensor"));
        const kg_value *v = val(g, "k_tensor");
        CHECK(v && v->constant && v->dtype == KILN_I64 && v->ndim == 1 && v->shape[0] == 2
              && ((int64_t *)v->constant->data)[1] == -8);
        v = val(g, "k_float");
        CHECK(v && v->constant && v->dtype == KILN_F32 && v->ndim == 0
              && v->constant->nbytes == 4 && *(float *)v->constant->data == 3.5f);
        v = val(g, "k_floats");
        CHECK(v && v->constant && v->dtype == KILN_F32 && v->ndim == 1 && v->shape[0] == 2
              && ((float *)v->constant->data)[1] == -0.5f);
        v = val(g, "k_int");
        CHECK(v && v->constant && v->dtype == KILN_I64 && v->ndim == 0
              && *(int64_t *)v->constant->data == -42);
        v = val(g, "k_ints");
        CHECK(v && v->constant && v->dtype == KILN_I64 && v->ndim == 1
              && ((int64_t *)v->constant->data)[0] == 7);
        kg_graph_free(g);
    }

    /* value_string / sparse_value: unsupported, naming the node */
    b->attr[1].name = "value_string";
    b->attr[1].type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING;
    CHECK_STATUS(import(b, &g), KILN_ERR_UNSUPPORTED);
    CHECK(has(kiln_last_error(), "c2") && has(kiln_last_error(), "value_string"));
    b->attr[1].name = "sparse_value";
    CHECK_STATUS(import(b, &g), KILN_ERR_UNSUPPORTED);
    b->attr[1].name = "bogus";
    CHECK_STATUS(import(b, &g), KILN_ERR_FORMAT);
    b->attr[1].name = "value_float";
    b->attr[1].type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT;
    b->node[1].n_output = 0; /* a Constant without an output */
    CHECK_STATUS(import(b, &g), KILN_ERR_FORMAT);
    free(b);
}

/* One initializer of the given dtype/dims and typed or raw data; returns the status. */
static kiln_status one_tensor(Onnx__TensorProto *(*fill)(mb *, Onnx__TensorProto *), int dtype,
                              int ndim, const int64_t *dims, kg_graph **g)
{
    mb *b = mb_new(13);
    int64_t d[1] = { 1 };
    input(b, "x", T_FLOAT, 1, d);
    Onnx__TensorProto *t = tensor(b, "tname", dtype, ndim, dims);
    fill(b, t);
    initializer(b, t);
    const char *in[] = { "x", "tname" }, *out[] = { "y" };
    node(b, "Add", "add", 2, in, 1, out);
    output(b, "y", T_FLOAT, 1, d);
    *g = NULL;
    kiln_status st = import(b, g);
    free(b);
    return st;
}

static const int32_t I32S[4] = { -1, 200, 1, 0x3c00 };
static const int64_t I64S[4] = { 1, -2, INT64_MAX, INT64_MIN };
static const double F64S[4] = { 1.5, -2.25, 1e300, 0 };
static const uint8_t RAW8[16] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 };

static Onnx__TensorProto *fill_i32(mb *b, Onnx__TensorProto *t)
{
    t->n_int32_data = 4;
    t->int32_data = (int32_t *)I32S;
    return t;
}
static Onnx__TensorProto *fill_i32_3(mb *b, Onnx__TensorProto *t)
{
    fill_i32(b, t);
    t->n_int32_data = 3;
    return t;
}
static Onnx__TensorProto *fill_i64(mb *b, Onnx__TensorProto *t)
{
    t->n_int64_data = 4;
    t->int64_data = (int64_t *)I64S;
    return t;
}
static Onnx__TensorProto *fill_f64(mb *b, Onnx__TensorProto *t)
{
    t->n_double_data = 4;
    t->double_data = (double *)F64S;
    return t;
}
static Onnx__TensorProto *fill_raw16(mb *b, Onnx__TensorProto *t) { return raw(t, RAW8, 16); }
static Onnx__TensorProto *fill_raw15(mb *b, Onnx__TensorProto *t) { return raw(t, RAW8, 15); }
static Onnx__TensorProto *fill_raw_and_typed(mb *b, Onnx__TensorProto *t)
{
    return fill_i32(b, raw(t, RAW8, 16));
}
static Onnx__TensorProto *fill_none(mb *b, Onnx__TensorProto *t) { return t; }
static Onnx__TensorProto *fill_external(mb *b, Onnx__TensorProto *t)
{
    t->has_data_location = 1;
    t->data_location = ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
    return t;
}

static const void *tdata(kg_graph *g) { return val(g, "tname")->constant->data; }

static void test_tensor_data(void)
{
    int64_t d4[1] = { 4 }, d22[2] = { 2, 2 }, d0[1] = { 0 };
    kg_graph *g;
    if (CHECK_OK(one_tensor(fill_i32, T_INT32, 1, d4, &g))) {
        CHECK(memcmp(tdata(g), I32S, 16) == 0 && val(g, "tname")->dtype == KILN_I32);
        kg_graph_free(g);
    }
    if (CHECK_OK(one_tensor(fill_i32, T_INT8, 2, d22, &g))) {
        const int8_t *p = tdata(g);
        CHECK(p[0] == -1 && p[1] == (int8_t)200 && p[2] == 1 && val(g, "tname")->constant->nbytes == 4);
        kg_graph_free(g);
    }
    if (CHECK_OK(one_tensor(fill_i32, T_UINT8, 1, d4, &g))) {
        const uint8_t *p = tdata(g);
        CHECK(p[0] == 255 && p[1] == 200 && p[2] == 1);
        kg_graph_free(g);
    }
    if (CHECK_OK(one_tensor(fill_i32, T_BOOL, 1, d4, &g))) {
        const uint8_t *p = tdata(g);
        CHECK(p[0] == 1 && p[1] == 1 && p[2] == 1 && p[3] == 1 && val(g, "tname")->dtype == KILN_BOOL);
        kg_graph_free(g);
    }
    if (CHECK_OK(one_tensor(fill_i32, T_FLOAT16, 1, d4, &g))) {
        const uint16_t *p = tdata(g);
        CHECK(p[3] == 0x3c00 && p[0] == 0xffff && val(g, "tname")->dtype == KILN_F16);
        kg_graph_free(g);
    }
    if (CHECK_OK(one_tensor(fill_i32, T_BFLOAT16, 1, d4, &g))) {
        CHECK(((const uint16_t *)tdata(g))[1] == 200 && val(g, "tname")->dtype == KILN_BF16);
        kg_graph_free(g);
    }
    if (CHECK_OK(one_tensor(fill_i64, T_INT64, 1, d4, &g))) {
        CHECK(memcmp(tdata(g), I64S, 32) == 0);
        kg_graph_free(g);
    }
    if (CHECK_OK(one_tensor(fill_f64, T_DOUBLE, 2, d22, &g))) {
        CHECK(memcmp(tdata(g), F64S, 32) == 0 && val(g, "tname")->dtype == KILN_F64);
        kg_graph_free(g);
    }
    if (CHECK_OK(one_tensor(fill_raw16, T_FLOAT, 2, d22, &g))) {
        CHECK(memcmp(tdata(g), RAW8, 16) == 0);
        kg_graph_free(g);
    }
    if (CHECK_OK(one_tensor(fill_raw16, T_INT64, 1, (int64_t[]){ 2 }, &g))) {
        CHECK(memcmp(tdata(g), RAW8, 16) == 0);
        kg_graph_free(g);
    }
    if (CHECK_OK(one_tensor(fill_none, T_FLOAT, 1, d0, &g))) { /* empty tensor, no data */
        CHECK(val(g, "tname")->constant->nbytes == 0 && val(g, "tname")->shape[0] == 0);
        kg_graph_free(g);
    }
    if (CHECK_OK(one_tensor(fill_raw16, T_FLOAT, 1, d4, &g))) {
        CHECK(((const float *)tdata(g))[0] == ((const float *)RAW8)[0]);
        kg_graph_free(g);
    }

    /* wrong counts and sizes */
    CHECK_STATUS(one_tensor(fill_i32_3, T_INT32, 1, d4, &g), KILN_ERR_FORMAT);
    CHECK(has(kiln_last_error(), "tname") && has(kiln_last_error(), "int32_data"));
    CHECK_STATUS(one_tensor(fill_raw15, T_FLOAT, 2, d22, &g), KILN_ERR_FORMAT);
    CHECK(has(kiln_last_error(), "test.onnx") && has(kiln_last_error(), "raw_data"));
    CHECK_STATUS(one_tensor(fill_i32, T_INT32, 0, NULL, &g), KILN_ERR_FORMAT); /* scalar, 4 values */
    CHECK_STATUS(one_tensor(fill_raw16, T_DOUBLE, 1, d4, &g), KILN_ERR_FORMAT);
    CHECK_STATUS(one_tensor(fill_raw_and_typed, T_INT32, 1, d4, &g), KILN_ERR_FORMAT);
    CHECK_STATUS(one_tensor(fill_none, T_FLOAT, 1, d4, &g), KILN_ERR_FORMAT);
    CHECK_STATUS(one_tensor(fill_i64, T_FLOAT, 1, d4, &g), KILN_ERR_FORMAT); /* wrong field */
    CHECK_STATUS(one_tensor(fill_raw16, T_FLOAT, 1, (int64_t[]){ -4 }, &g), KILN_ERR_FORMAT);
    CHECK_STATUS(one_tensor(fill_raw16, T_FLOAT, 2, (int64_t[]){ INT64_MAX, 4 }, &g), KILN_ERR_FORMAT);
    CHECK_STATUS(one_tensor(fill_raw16, 0, 1, d4, &g), KILN_ERR_FORMAT);
    /* unsupported: dtypes, rank, external data */
    CHECK_STATUS(one_tensor(fill_raw16, T_UINT16, 1, (int64_t[]){ 8 }, &g), KILN_ERR_UNSUPPORTED);
    CHECK(has(kiln_last_error(), "tname") && has(kiln_last_error(), "uint16"));
    CHECK_STATUS(one_tensor(fill_none, T_STRING, 1, d0, &g), KILN_ERR_UNSUPPORTED);
    CHECK_STATUS(one_tensor(fill_none, 14 /* complex64 */, 1, d0, &g), KILN_ERR_UNSUPPORTED);
    CHECK_STATUS(one_tensor(fill_none, 99, 1, d0, &g), KILN_ERR_UNSUPPORTED);
    int64_t d9[9] = { 1, 1, 1, 1, 1, 1, 1, 1, 1 };
    CHECK_STATUS(one_tensor(fill_raw16, T_FLOAT, 9, d9, &g), KILN_ERR_UNSUPPORTED);
    CHECK_STATUS(one_tensor(fill_external, T_FLOAT, 1, d4, &g), KILN_ERR_UNSUPPORTED);
    CHECK(has(kiln_last_error(), "external"));
}

/* Structural errors: each names what is wrong. */
static void test_errors(void)
{
    kg_graph *g = (kg_graph *)0x1;
    mb *b = conv_model();

    b->opset[0].version = 6;
    CHECK_STATUS(import(b, &g), KILN_ERR_UNSUPPORTED);
    CHECK(has(kiln_last_error(), "opset 6"));
    b->opset[0].version = 19;
    CHECK_STATUS(import(b, &g), KILN_ERR_UNSUPPORTED);
    b->opset[0].version = 7;
    kg_graph *ok = NULL;
    CHECK_OK(import(b, &ok));
    kg_graph_free(ok);
    b->opset[0].domain = "ai.onnx.ml";
    CHECK_STATUS(import(b, &g), KILN_ERR_UNSUPPORTED);
    b->opset[0].domain = "";
    b->opset[0].has_version = 0;
    CHECK_STATUS(import(b, &g), KILN_ERR_FORMAT);
    b->opset[0].has_version = 1;
    b->model.n_opset_import = 0;
    CHECK_STATUS(import(b, &g), KILN_ERR_FORMAT);
    b->model.n_opset_import = 1;
    CHECK(g == (kg_graph *)0x1); /* out-parameter untouched on failure */

    b->model.graph = NULL;
    CHECK_STATUS(import(b, &g), KILN_ERR_FORMAT);
    CHECK(has(kiln_last_error(), "test.onnx: not an ONNX model"));
    b->model.graph = &b->graph;

    /* nodes out of order: relu before conv */
    Onnx__NodeProto *n0 = b->nodep[0];
    b->nodep[0] = b->nodep[1];
    b->nodep[1] = n0;
    CHECK_STATUS(import(b, &g), KILN_ERR_FORMAT);
    CHECK(has(kiln_last_error(), "later node") && has(kiln_last_error(), "Relu"));
    b->nodep[1] = b->nodep[0];
    b->nodep[0] = n0;

    /* an input nobody produces */
    b->strs[0] = "nothing";
    CHECK_STATUS(import(b, &g), KILN_ERR_FORMAT);
    CHECK(has(kiln_last_error(), "nothing") && has(kiln_last_error(), "conv1"));
    b->strs[0] = "x";
    /* a value produced twice */
    b->strs[5] = "c"; /* relu's output */
    CHECK_STATUS(import(b, &g), KILN_ERR_FORMAT);
    b->strs[5] = "x";
    CHECK_STATUS(import(b, &g), KILN_ERR_FORMAT);
    b->strs[5] = "y";
    /* a graph output nobody produces */
    b->outp[0]->name = "zz";
    CHECK_STATUS(import(b, &g), KILN_ERR_FORMAT);
    b->outp[0]->name = "y";
    b->graph.n_output = 0;
    CHECK_STATUS(import(b, &g), KILN_ERR_FORMAT);
    b->graph.n_output = 1;
    /* missing op_type, unnamed input, duplicate input, duplicate initializer */
    b->node[0].op_type = NULL;
    CHECK_STATUS(import(b, &g), KILN_ERR_FORMAT);
    b->node[0].op_type = "Conv";
    b->inp[0]->name = "";
    CHECK_STATUS(import(b, &g), KILN_ERR_FORMAT);
    b->inp[0]->name = "x";
    b->inp[1] = b->inp[0];
    CHECK_STATUS(import(b, &g), KILN_ERR_FORMAT);
    b->inp[1] = &b->vi[1];
    b->initp[1] = b->initp[0];
    CHECK_STATUS(import(b, &g), KILN_ERR_FORMAT);
    b->initp[1] = &b->tensor[1];
    /* duplicate attribute */
    b->attr[1].name = "kernel_shape";
    CHECK_STATUS(import(b, &g), KILN_ERR_FORMAT);
    b->attr[1].name = "strides";
    /* an attribute without type or value */
    b->attr[4].has_f = 0;
    CHECK_STATUS(import(b, &g), KILN_ERR_FORMAT);
    b->attr[4].has_f = 1;
    /* negative dimension in a type */
    b->dim[1].dim_value = -3;
    CHECK_STATUS(import(b, &g), KILN_ERR_FORMAT);
    b->dim[1].dim_value = 3;

    /* unsupported: subgraph attribute, sequence/uint16 types, sparse initializers */
    Onnx__GraphProto sub;
    onnx__graph_proto__init(&sub);
    b->attr[4].has_type = 1;
    b->attr[4].type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPH;
    b->attr[4].g = &sub;
    CHECK_STATUS(import(b, &g), KILN_ERR_UNSUPPORTED);
    CHECK(has(kiln_last_error(), "subgraphs") && has(kiln_last_error(), "Relu"));
    b->attr[4].type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPHS;
    b->attr[4].g = NULL;
    CHECK_STATUS(import(b, &g), KILN_ERR_UNSUPPORTED);
    b->attr[4].has_type = 0;
    b->tt[0].elem_type = T_UINT16;
    CHECK_STATUS(import(b, &g), KILN_ERR_UNSUPPORTED);
    CHECK(has(kiln_last_error(), "'x'"));
    b->tt[0].elem_type = T_FLOAT;
    Onnx__TypeProto__Sequence seq;
    onnx__type_proto__sequence__init(&seq);
    b->type[0].value_case = ONNX__TYPE_PROTO__VALUE_SEQUENCE_TYPE;
    b->type[0].sequence_type = &seq;
    CHECK_STATUS(import(b, &g), KILN_ERR_UNSUPPORTED);
    b->type[0].value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    b->type[0].tensor_type = &b->tt[0];
    ok = NULL;
    CHECK_OK(import(b, &ok)); /* everything restored */
    kg_graph_free(ok);

    /* not protobuf at all, and NULL arguments */
    CHECK_STATUS(kg_import_buffer("\xff\xff\xff", 3, "junk", &g), KILN_ERR_FORMAT);
    CHECK(has(kiln_last_error(), "junk: not an ONNX model"));
    CHECK_STATUS(kg_import_buffer("", 0, "empty", &g), KILN_ERR_FORMAT);
    CHECK_STATUS(kg_import_buffer(NULL, 3, "x", &g), KILN_ERR_ARG);
    CHECK_STATUS(kg_import_buffer("", 0, "x", NULL), KILN_ERR_ARG);
    CHECK_STATUS(kg_import(NULL, &g), KILN_ERR_ARG);
    CHECK_STATUS(kg_import(test_path("does-not-exist.onnx"), &g), KILN_ERR_IO);
    CHECK_STATUS(kg_import(test_tmpdir(), &g), KILN_ERR_IO);
    CHECK(g == (kg_graph *)0x1);
    free(b);
}

/* ---- files ---- */

static int write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    int ok = fwrite(data, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

static void test_tensor_file(void)
{
    mb *b = mb_new(13);
    int64_t d[2] = { 2, 3 };
    static const float v[6] = { 1, 2, 3, 4, 5, 6 };
    Onnx__TensorProto *t = tensor(b, "input_0", T_FLOAT, 2, d);
    t->n_float_data = 6;
    t->float_data = (float *)v;
    size_t n = onnx__tensor_proto__get_packed_size(t);
    uint8_t *buf = malloc(n);
    onnx__tensor_proto__pack(t, buf);
    const char *path = test_path("t.pb");
    CHECK(write_file(path, buf, n));
    kg_tensor *kt = NULL;
    char *name = NULL;
    if (CHECK_OK(kg_read_tensor_file(path, &kt, &name))) {
        CHECK(strcmp(name, "input_0") == 0);
        CHECK(kt->dtype == KILN_F32 && kt->ndim == 2 && kt->shape[1] == 3 && kt->nbytes == 24
              && memcmp(kt->data, v, 24) == 0);
        kiln__free(name);
        kg_tensor_free(kt);
    }
    if (CHECK_OK(kg_read_tensor_file(path, &kt, NULL)))
        kg_tensor_free(kt);
    kg_tensor_free(NULL);

    /* every truncation: an error or a (smaller) tensor, never a crash */
    const char *tp = test_path("trunc.pb");
    int errors = 0;
    for (size_t len = 0; len < n; len++) {
        CHECK(write_file(tp, buf, len));
        kiln_status st = kg_read_tensor_file(tp, &kt, &name);
        if (st == KILN_OK) {
            kg_tensor_free(kt);
            kiln__free(name);
        } else {
            errors++;
        }
    }
    CHECK(errors > 0); /* (a prefix that ends between fields may still be a valid tensor) */
    free(buf);
    CHECK_STATUS(kg_read_tensor_file(test_path("none.pb"), &kt, &name), KILN_ERR_IO);
    CHECK(write_file(tp, "\x08\x01\x08", 3));
    CHECK_STATUS(kg_read_tensor_file(tp, &kt, &name), KILN_ERR_FORMAT);
    CHECK_STATUS(kg_read_tensor_file(NULL, &kt, &name), KILN_ERR_ARG);

    /* allocation failures: NOMEM, then success, never a leak */
    int nomem = 0;
    for (long k = 0;; k++) {
        kiln__test_fail_alloc_after(k);
        kiln_status st = kg_read_tensor_file(path, &kt, &name);
        kiln__test_fail_alloc_after(-1);
        if (st == KILN_OK) {
            kg_tensor_free(kt);
            kiln__free(name);
            break;
        }
        nomem += st == KILN_ERR_NOMEM;
        if (!CHECK_STATUS(st, KILN_ERR_NOMEM) || k > 1000)
            break;
    }
    CHECK(nomem > 0);
    free(b);
}

/* kiln_onnx_open / kiln_onnx_input on a file. */
static void test_public_api(void)
{
    mb *b = conv_model();
    int64_t d[2] = { 5, UNSET };
    input(b, "notype", -1, -1, NULL);
    input(b, "noshape", T_INT64, -1, NULL);
    input(b, "mask", T_BOOL, 2, d);
    size_t n;
    uint8_t *buf = pack(b, &n);
    const char *path = test_path("model.onnx");
    CHECK(write_file(path, buf, n));
    kiln_onnx *o = NULL;
    if (CHECK_OK(kiln_onnx_open(path, &o))) {
        CHECK(kiln_onnx_num_inputs(o) == 4);
        kiln_tensor spec;
        const char *name = NULL;
        if (CHECK_OK(kiln_onnx_input(o, 0, &name, &spec))) {
            CHECK(strcmp(name, "x") == 0 && spec.dtype == KILN_F32 && spec.ndim == 4
                  && spec.shape[0] == -1 && spec.shape[1] == 3 && spec.shape[3] == -1 && !spec.data);
        }
        CHECK_STATUS(kiln_onnx_input(o, 1, &name, &spec), KILN_ERR_FORMAT);
        CHECK(has(kiln_last_error(), "notype"));
        CHECK_STATUS(kiln_onnx_input(o, 2, &name, &spec), KILN_ERR_FORMAT);
        if (CHECK_OK(kiln_onnx_input(o, 3, NULL, &spec)))
            CHECK(spec.dtype == KILN_BOOL && spec.ndim == 2 && spec.shape[0] == 5 && spec.shape[1] == -1);
        CHECK_STATUS(kiln_onnx_input(o, 4, &name, &spec), KILN_ERR_ARG);
        CHECK_STATUS(kiln_onnx_input(o, 0, &name, NULL), KILN_ERR_ARG);
        CHECK_STATUS(kiln_onnx_input(NULL, 0, &name, &spec), KILN_ERR_ARG);
        kiln_onnx_free(o);
    }
    CHECK(kiln_onnx_num_inputs(NULL) == 0);
    kiln_onnx_free(NULL);
    o = (kiln_onnx *)0x1;
    CHECK_STATUS(kiln_onnx_open(test_path("missing.onnx"), &o), KILN_ERR_IO);
    CHECK(o == (kiln_onnx *)0x1);
    CHECK_STATUS(kiln_onnx_open(NULL, &o), KILN_ERR_ARG);
    CHECK(write_file(test_path("junk.onnx"), "\x12\x34\x56\x78\x9a", 5));
    CHECK_STATUS(kiln_onnx_open(test_path("junk.onnx"), &o), KILN_ERR_FORMAT);
    CHECK(has(kiln_last_error(), "junk.onnx: not an ONNX model"));

    /* allocation failures through the whole open */
    int nomem = 0;
    for (long k = 0;; k++) {
        kiln__test_fail_alloc_after(k);
        kiln_status st = kiln_onnx_open(path, &o);
        kiln__test_fail_alloc_after(-1);
        if (st == KILN_OK) {
            kiln_onnx_free(o);
            break;
        }
        nomem += st == KILN_ERR_NOMEM;
        if (!CHECK_STATUS(st, KILN_ERR_NOMEM) || k > 10000)
            break;
    }
    CHECK(nomem > 10);
    free(buf);
    free(b);
}

/* ---- hostile input ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void try_import(const uint8_t *data, size_t n, int *ok, int *err)
{
    kg_graph *g = NULL;
    kiln_status st = kg_import_buffer(data, n, "fuzz", &g);
    if (st == KILN_OK) {
        (*ok)++;
        /* whatever imports is internally consistent */
        for (int i = 0; i < g->n_nodes; i++) {
            for (int j = 0; j < g->nodes[i].n_in; j++)
                KILN_ASSERT(g->nodes[i].in[j] >= -1 && g->nodes[i].in[j] < g->n_values);
            for (int j = 0; j < g->nodes[i].n_out; j++)
                KILN_ASSERT(g->nodes[i].out[j] >= -1 && g->nodes[i].out[j] < g->n_values);
        }
        for (int i = 0; i < g->n_inputs; i++)
            KILN_ASSERT(g->inputs[i] >= 0 && g->inputs[i] < g->n_values);
        for (int i = 0; i < g->n_outputs; i++)
            KILN_ASSERT(g->outputs[i] >= 0 && g->outputs[i] < g->n_values);
        kg_graph_free(g);
    } else {
        KILN_ASSERT(st == KILN_ERR_FORMAT || st == KILN_ERR_UNSUPPORTED);
        KILN_ASSERT(kiln_last_error()[0] != '\0');
        (*err)++;
    }
}

static void test_hostile(void)
{
    int ok = 0, err = 0;
    /* random bytes */
    uint8_t junk[512];
    for (int i = 0; i < 300; i++) {
        size_t n = rng() % sizeof junk;
        for (size_t j = 0; j < n; j++)
            junk[j] = (uint8_t)rng();
        try_import(junk, n, &ok, &err);
    }
    CHECK(err > 250);

    mb *b = conv_model();
    size_t n;
    uint8_t *buf = pack(b, &n);
    /* every truncation */
    ok = err = 0;
    for (size_t len = 0; len < n; len++)
        try_import(buf, len, &ok, &err);
    CHECK(ok + err == (int)n && err > 0);
    try_import(buf, n, &ok, &err);
    CHECK(ok >= 1);

    /* byte flips: one to four random bytes set to random values */
    uint8_t *m = malloc(n);
    ok = err = 0;
    for (int i = 0; i < 600; i++) {
        memcpy(m, buf, n);
        int flips = 1 + (int)(rng() % 4);
        for (int f = 0; f < flips; f++)
            m[rng() % n] = (uint8_t)rng();
        try_import(m, n, &ok, &err);
    }
    CHECK(ok + err == 600 && ok > 0 && err > 0);
    printf("byte flips: %d imported, %d rejected\n", ok, err);
    free(m);

    /* allocation failures: NOMEM at every step, then success */
    int nomem = 0;
    for (long k = 0;; k++) {
        kg_graph *g = NULL;
        kiln__test_fail_alloc_after(k);
        kiln_status st = kg_import_buffer(buf, n, "alloc", &g);
        kiln__test_fail_alloc_after(-1);
        if (st == KILN_OK) {
            kg_graph_free(g);
            break;
        }
        nomem++;
        if (!CHECK_STATUS(st, KILN_ERR_NOMEM) || k > 10000)
            break;
    }
    CHECK(nomem > 20);
    free(buf);
    free(b);
}

/* ---- ONNX's node tests, when installed ---- */

static void test_real_files(void)
{
    char path[1024];
    const char *dir = NODE_TEST_DIR "/test_conv_with_strides_padding";
    struct stat st;
    if (stat(dir, &st) != 0) {
        printf("skipping real files: %s not installed\n", NODE_TEST_DIR);
        return;
    }
    snprintf(path, sizeof path, "%s/model.onnx", dir);
    kg_graph *g = NULL;
    if (CHECK_OK(kg_import(path, &g))) {
        CHECK(g->n_nodes == 1 && strcmp(g->nodes[0].op_type, "Conv") == 0);
        CHECK(g->n_inputs == 2 && g->n_outputs == 1);
        const kg_value *x = &g->values[g->inputs[0]], *w = &g->values[g->inputs[1]];
        CHECK(x->dtype == KILN_F32 && x->ndim == 4 && x->shape[2] == 7 && x->shape[3] == 5);
        CHECK(w->ndim == 4 && w->shape[2] == 3 && w->shape[3] == 3);
        size_t n;
        const int64_t *s = kg_attr_ints(&g->nodes[0], "strides", &n);
        CHECK(s && n == 2 && s[0] == 2 && s[1] == 2);
        const int64_t *p = kg_attr_ints(&g->nodes[0], "pads", &n);
        CHECK(p && n == 4 && p[0] == 1);
        kg_graph_free(g);
    }
    snprintf(path, sizeof path, "%s/test_data_set_0/input_0.pb", dir);
    kg_tensor *t;
    char *name = NULL;
    if (CHECK_OK(kg_read_tensor_file(path, &t, &name))) {
        CHECK(strcmp(name, "x") == 0);
        CHECK(t->dtype == KILN_F32 && t->ndim == 4 && t->shape[2] == 7 && t->nbytes == 35 * 4);
        CHECK(((float *)t->data)[34] == 34.0f);
        kg_tensor_free(t);
        kiln__free(name);
    }

    /* every node-test model imports or is cleanly unsupported, and so do its tensors */
    DIR *d = opendir(NODE_TEST_DIR);
    if (!CHECK(d != NULL))
        return;
    int imported = 0, unsupported = 0, bad = 0, tensors = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s/model.onnx", NODE_TEST_DIR, e->d_name);
        kiln_status s = kg_import(path, &g);
        if (s == KILN_ERR_UNSUPPORTED) {
            unsupported++;
            continue;
        }
        if (s != KILN_OK) {
            fprintf(stderr, "%s: %s %s\n", e->d_name, kiln_status_name(s), kiln_last_error());
            bad++;
            continue;
        }
        imported++;
        kg_graph_free(g);
        for (int k = 0; k < 16; k++) {
            for (int io = 0; io < 2; io++) {
                snprintf(path, sizeof path, "%s/%s/test_data_set_0/%s_%d.pb", NODE_TEST_DIR,
                         e->d_name, io ? "output" : "input", k);
                if (stat(path, &st) != 0)
                    continue;
                s = kg_read_tensor_file(path, &t, NULL);
                if (s == KILN_OK) {
                    kg_tensor_free(t);
                    tensors++;
                } else if (s != KILN_ERR_UNSUPPORTED) {
                    fprintf(stderr, "%s\n", kiln_last_error());
                    bad++;
                }
            }
        }
    }
    closedir(d);
    printf("node-test models: %d imported (%d tensors read), %d unsupported\n", imported, tensors,
           unsupported);
    CHECK(bad == 0 && imported > 700);
}

int main(void)
{
    test_basic();
    test_optional_and_attrs();
    test_constant_nodes();
    test_tensor_data();
    test_errors();
    test_tensor_file();
    test_public_api();
    test_hostile();
    test_real_files();
    return test_done("test_onnx_import");
}
