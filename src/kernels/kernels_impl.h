/*
 * kernels_impl.h — private to the kernels module: how kernels.c's dispatcher, the oneDNN
 * kernels (dnnl.c, the only file that includes dnnl.h) and the plain C reference kernels
 * (ref_*.c) fit together.
 *
 * Every kernel instance starts with a kk_kernel header. kk_create asks the oneDNN side
 * first (kd_supports); if it declines, the reference side builds the kernel. The reference
 * side implements every op kind and dtype kiln accepts (it is also the yardstick tests
 * compare oneDNN against); the oneDNN side implements the hot f32 ops fast.
 */
#ifndef KILN_KERNELS_IMPL_H
#define KILN_KERNELS_IMPL_H

#include "kernels/kernels.h"

struct kk_kernel {
    kiln_status (*run)(kk_kernel *k);
    void (*destroy)(kk_kernel *k);      /* frees everything, k included */
    const kp_program *prog;
    uint32_t op;                        /* index of the op in prog */
};

/* ---- reference kernels (ref_*.c) ---- */
/* Whether the reference kernels can run op i (kind, sub, dtypes, ranks, attributes);
 * KILN_ERR_UNSUPPORTED with the reason otherwise. */
KILN_INTERNAL kiln_status kr_check(const kp_program *p, uint32_t i);
/* Builds the reference kernel of op i. CONST inputs are always dense C order here
 * (kk_create unpacks a packed weight before handing it to a reference kernel). */
KILN_INTERNAL kiln_status kr_create(const kp_program *p, uint32_t i, void *const *ptr,
                                    kk_kernel **out);
/* Reference kernels that also work on channels-last activations (ref_layout.c: f32
 * GroupNorm, nearest Resize, Concat over channels): how many of op i's leading inputs its
 * kernel can read stored channels-last, in which case it can write its output 0 so too;
 * 0 for every other op. The layout planner (kd_plan_layouts) counts on it. */
KILN_INTERNAL int         kr_cl_inputs(const kp_program *p, uint32_t i);
/* kr_create for such an op, told how its values are stored: cl[v] != 0 for each value v
 * stored channels-last (indexed by value id, as kk_plan.cl). */
KILN_INTERNAL kiln_status kr_create_cl(const kp_program *p, uint32_t i, void *const *ptr,
                                       const uint8_t *cl, kk_kernel **out);

/* ---- oneDNN kernels (dnnl.c) ---- */
/* Whether op i runs on oneDNN on this machine (f32 conv, matmul, pooling, ...). */
KILN_INTERNAL bool        kd_supports(const kp_program *p, uint32_t i);
KILN_INTERNAL kiln_status kd_core_init(kk_core *c);     /* engine, stream for this thread */
KILN_INTERNAL void        kd_core_fini(kk_core *c);
/* On the core's thread: grows its scratchpad to the largest need recorded so far. */
KILN_INTERNAL kiln_status kd_core_reserve(kk_core *c);
/* Decides which activations are stored channels-last. On entry cl[v] != 0 asks about value
 * v (cl has p->n_values bytes); on return cl[v] is 1 for those stored channels-last, 0 for
 * the rest. The answer for a value does not depend on which others were asked about. */
KILN_INTERNAL kiln_status kd_plan_layouts(const kp_program *p, uint8_t *cl);
/* plan: the program's plan (plan->prog == p), or NULL to decide layouts for this op alone.
 * Safe from any thread (see kernels.h); touches nothing a running kernel of c uses. */
KILN_INTERNAL kiln_status kd_create(kk_core *c, const kk_plan *plan, const kp_program *p,
                                    uint32_t i, void *const *ptr, kk_kernel **out,
                                    uint64_t *copied);
KILN_INTERNAL kiln_status kd_pack_weight(const kp_program *p, uint32_t i, int which,
                                         const void *plain, void **packed, size_t *n_packed,
                                         void **layout, size_t *n_layout);
/* Packed (layout-described) weight -> dense C order, into dst (numel * dtype size bytes). */
KILN_INTERNAL kiln_status kd_unpack(const kp_value *v, const void *layout, size_t n_layout,
                                    const void *packed, void *dst);
KILN_INTERNAL const char *kd_layout_name(const void *layout, size_t n_layout, char *buf, size_t n);

struct kk_core {
    int   n_threads;
    int   prev_threads;                 /* the thread's OpenMP count before kk_core_create */
    void *dnnl;                         /* dnnl.c's per-core state (stream, scratchpad) */
};

/* A program's plan (kk_program_plan): immutable once made. */
struct kk_plan {
    const kp_program *prog;
    uint8_t *cl;                        /* per value: 1 = stored channels-last (dnnl.c) */
};

#endif
