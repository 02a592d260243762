/*
 * lower.h — the compiler's interface between its framework (trace.c: values, folding,
 * fusion, memory plan, weight packing) and its op lowerings (lower_*.c: one function per
 * ONNX op type that checks attributes, infers output dtypes and shapes, and emits program
 * ops). A lowering never sees how folding or planning work; the framework never sees an
 * op's attributes.
 *
 * Value ids below are program value ids (kp_program.values). A value is constant when
 * its data is known at trace time (initializers, Constant nodes, and anything computed only
 * from constants: the Shape/Gather/Concat/Reshape arithmetic exporters emit). Constants
 * are dense C order.
 */
#ifndef KILN_LOWER_H
#define KILN_LOWER_H

#include "compiler/program.h"
#include "onnx/graph.h"

typedef struct kc_ctx kc_ctx;

/* ---- reading a node's inputs ---- */
KILN_INTERNAL int  kc_num_inputs(const kc_ctx *c, const kg_node *n);  /* n->n_in */
/* Program value id of node input i; -1 when absent (optional input left empty, or i >= n_in). */
KILN_INTERNAL int  kc_input(const kc_ctx *c, const kg_node *n, int i);
KILN_INTERNAL const kp_value *kc_value(const kc_ctx *c, int v);
KILN_INTERNAL bool kc_is_const(const kc_ctx *c, int v);
KILN_INTERNAL const void *kc_const_data(const kc_ctx *c, int v);      /* NULL unless constant */
/* Reads a constant integer (i32/i64/u8/i8/bool) or float tensor as int64 values into out
 * (at most max). KILN_ERR_UNSUPPORTED naming the node when v is not constant (a
 * data-dependent shape), or KILN_ERR_FORMAT when it has more than max elements. */
KILN_INTERNAL kiln_status kc_const_ints(const kc_ctx *c, const kg_node *n, int v, int64_t *out,
                                        int max, int *count);
/* The same as doubles (for float scalars such as Clip's min/max or Pad's value). */
KILN_INTERNAL kiln_status kc_const_floats(const kc_ctx *c, const kg_node *n, int v, double *out,
                                          int max, int *count);

/* ---- making values ---- */
/* A new activation value (data computed at run time). Returns its id, or -1 (NOMEM set). */
KILN_INTERNAL int kc_new_value(kc_ctx *c, kiln_dtype dt, int ndim, const int64_t *shape);
/* A new constant value holding a copy of `data` (numel * dtype size bytes). -1 on NOMEM. */
KILN_INTERNAL int kc_new_const(kc_ctx *c, kiln_dtype dt, int ndim, const int64_t *shape,
                               const void *data);
/* A value with v's storage seen under another shape (same dtype and element count): a free
 * Reshape/Flatten/Squeeze/Unsqueeze. Constant if v is. -1 on NOMEM. */
KILN_INTERNAL int kc_alias(kc_ctx *c, int v, int ndim, const int64_t *shape);
/* Node output i is program value v (dtype/shape must match what ONNX says the output is). */
KILN_INTERNAL kiln_status kc_set_output(kc_ctx *c, const kg_node *n, int i, int v);
/* Whether the node's output i is used (present in the node and wanted by the graph). */
KILN_INTERNAL bool kc_output_wanted(const kc_ctx *c, const kg_node *n, int i);

/* ---- emitting ops ---- */
/* Appends an op (attribute layouts in program.h). When every present input is constant
 * and the op is foldable, it runs now on the trace-time core and its outputs become
 * constants instead. Checks the op with kk_check so nothing the kernels cannot run is ever
 * emitted. Returns the status; on failure the message names the node. */
KILN_INTERNAL kiln_status kc_emit(kc_ctx *c, const kg_node *n, kp_op_kind kind, int sub,
                                  const int *in, int n_in, const int *out, int n_out,
                                  const int64_t *ia, int n_ia, const float *fa, int n_fa);

/* ---- helpers for lowerings ---- */
KILN_INTERNAL int64_t kc_opset(const kc_ctx *c);
/* Failure naming the node: "Conv 'conv1': <message>". */
KILN_INTERNAL kiln_status kc_fail(const kc_ctx *c, const kg_node *n, kiln_status s,
                                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* numpy broadcast of two shapes into out; KILN_ERR_SHAPE (naming the node) if incompatible. */
KILN_INTERNAL kiln_status kc_broadcast(const kc_ctx *c, const kg_node *n, int na, const int64_t *a,
                                       int nb, const int64_t *b, int *nout, int64_t *out);

/* One lowering per ONNX op type (default domain). */
typedef kiln_status (*kc_lower_fn)(kc_ctx *c, const kg_node *n);
typedef struct kc_op_def {
    const char *op_type;
    kc_lower_fn lower;
} kc_op_def;
/* The table of every op kiln implements (lower_ops.c), terminated by {NULL, NULL}. */
KILN_INTERNAL extern const kc_op_def kc_op_table[];

#endif
