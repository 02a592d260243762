/*
 * graph.h — kiln's in-memory form of an ONNX graph, as the importer produces it and the
 * compiler consumes it: named values (edges, with dtype/shape where known and data when
 * constant) and nodes (op type, attributes, value indices). No protobuf types appear here.
 */
#ifndef KILN_GRAPH_H
#define KILN_GRAPH_H

#include "base/base.h"

typedef enum kg_attr_type {
    KG_ATTR_FLOAT = 1, KG_ATTR_INT, KG_ATTR_STRING, KG_ATTR_TENSOR,
    KG_ATTR_FLOATS, KG_ATTR_INTS, KG_ATTR_STRINGS, KG_ATTR_GRAPH /* not supported: subgraph */
} kg_attr_type;

/* A dense constant tensor (initializer, Constant node value, tensor attribute). */
typedef struct kg_tensor {
    kiln_dtype dtype;
    int        ndim;
    int64_t    shape[KILN_MAX_DIMS];
    void      *data;         /* owned, C order, kiln__malloc'd; NULL only if nbytes == 0 */
    size_t     nbytes;       /* numel * dtype size */
} kg_tensor;

typedef struct kg_attr {
    char        *name;
    kg_attr_type type;
    int64_t      i;
    float        f;
    char        *s;          /* STRING (NUL-terminated copy) */
    int64_t     *ints;       /* INTS */
    float       *floats;     /* FLOATS */
    char       **strings;    /* STRINGS */
    size_t       n;          /* element count of INTS/FLOATS/STRINGS */
    kg_tensor   *t;          /* TENSOR */
} kg_attr;

/* A value: one named edge of the graph. */
typedef struct kg_value {
    char      *name;
    kiln_dtype dtype;                    /* 0: not known yet */
    int        ndim;                     /* -1: not known yet */
    int64_t    shape[KILN_MAX_DIMS];     /* -1: dynamic dimension */
    kg_tensor *constant;                 /* non-NULL: an initializer (owned) */
} kg_value;

typedef struct kg_node {
    char    *op_type;
    char    *name;                       /* "" if the node has none */
    char    *domain;                     /* "" for the default ONNX domain */
    int      n_in, n_out;
    int     *in;                         /* value indices; -1: optional input left empty */
    int     *out;                        /* value indices; -1: optional output not wanted */
    int      n_attr;
    kg_attr *attrs;
} kg_node;

typedef struct kg_graph {
    char     *name;
    int64_t   opset;                     /* opset version of the default domain */
    int       n_values, n_nodes;
    kg_value *values;
    kg_node  *nodes;                     /* in the file's order (topologically sorted per ONNX) */
    int       n_inputs, n_outputs;
    int      *inputs;                    /* graph inputs that are not initializers, in order */
    int      *outputs;                   /* graph outputs, in order */
} kg_graph;

/* The public kiln_onnx handle (kiln.h) is an imported graph. */
struct kiln_onnx {
    kg_graph *graph;
};

/* Reads an ONNX model file. KILN_ERR_IO: cannot read; KILN_ERR_FORMAT: not a valid ONNX
 * ModelProto (message says what); KILN_ERR_UNSUPPORTED: external data, subgraphs, string
 * tensors or an opset outside what kiln implements (message names the node). */
KILN_INTERNAL kiln_status kg_import(const char *path, kg_graph **out);
/* The same from bytes in memory (`what` names the source in messages). */
KILN_INTERNAL kiln_status kg_import_buffer(const void *data, size_t n, const char *what, kg_graph **out);
KILN_INTERNAL void        kg_graph_free(kg_graph *g);

/* Reads a serialized onnx.TensorProto (the .pb files of ONNX's test data) into a tensor. */
KILN_INTERNAL kiln_status kg_read_tensor_file(const char *path, kg_tensor **out, char **name);
KILN_INTERNAL void        kg_tensor_free(kg_tensor *t);

/* Attribute lookup on a node: NULL if absent. */
KILN_INTERNAL const kg_attr *kg_attr_find(const kg_node *n, const char *name);
KILN_INTERNAL int64_t        kg_attr_int(const kg_node *n, const char *name, int64_t dflt);
KILN_INTERNAL float          kg_attr_float(const kg_node *n, const char *name, float dflt);
KILN_INTERNAL const char    *kg_attr_string(const kg_node *n, const char *name, const char *dflt);
/* INTS attribute: count in *n (0 and NULL if absent). */
KILN_INTERNAL const int64_t *kg_attr_ints(const kg_node *n, const char *name, size_t *count);

#endif
