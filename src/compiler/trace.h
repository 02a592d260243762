/*
 * trace.h — private to the compiler: the trace context shared by the framework (trace.c)
 * and its passes (fuse.c), and the entry point the public kiln_trace calls.
 */
#ifndef KILN_TRACE_H
#define KILN_TRACE_H

#include "compiler/lower.h"
#include "kernels/kernels.h"

struct kc_ctx {
    const kg_graph *g;
    kp_program      p;          /* the program being built (not sealed: pools hold garbage) */
    size_t          cap_values, cap_ops, cap_io, cap_ia, cap_fa, cap_blob, cap_strings;
    size_t          cap_cdata, cap_cowned, cap_root;
    void          **cdata;      /* per value: constant data, or NULL (also the ptr array
                                   handed to kk_create when folding) */
    uint8_t        *cowned;     /* per value: cdata is ours (1) or the graph's (0) */
    int32_t        *root;       /* per value: the value whose storage it shares (aliases) */
    int            *gmap;       /* graph value -> program value, -1 until produced */
    kk_core        *core;       /* trace-time core for folding and packing */
    uint32_t        node_name;  /* string offset of the node being lowered */
};

/* Compiles g for the example input shapes into a sealed program owning its weights. */
KILN_INTERNAL kiln_status kc_trace(const kg_graph *g, const kiln_tensor *ex, size_t n_ex,
                                   kp_program **out);

/* Appends an op without checks or folding; returns its index or -1 (NOMEM). */
KILN_INTERNAL int kc__push_op(kc_ctx *c, int kind, int sub, uint32_t name, const int *in, int n_in,
                              const int *out, int n_out, const int64_t *ia, int n_ia,
                              const float *fa, int n_fa);
/* Fusion pass (fuse.c). outputs: graph output value ids. */
KILN_INTERNAL kiln_status kc__fuse(kc_ctx *c, const uint32_t *outputs);

#endif
