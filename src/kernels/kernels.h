/*
 * kernels.h — the compute kernels behind every program op: oneDNN primitives where oneDNN
 * has the op (all dnnl_ code lives in kernels/dnnl*.c), plain C elsewhere and for every
 * dtype oneDNN does not take. The rest of kiln sees only these calls.
 *
 * Life of a kernel:
 *   trace time   kk_pack_weight: store a weight in the layout this machine's kernel wants;
 *                kk_create + kk_run on a temporary core: constant folding.
 *   placement    kk_core_create on the core's worker thread (it sets that thread's OpenMP
 *                thread count, so primitives are made for the count they will run with);
 *                kk_create per op, with the address of every value's storage.
 *   forward      kk_run per op, in program order, on the same thread as kk_core_create.
 */
#ifndef KILN_KERNELS_H
#define KILN_KERNELS_H

#include "compiler/program.h"

/* Per-core execution context: oneDNN engine/stream, scratchpad, thread count. Created,
 * used and freed on one thread. kk_core_create sets the calling thread's OpenMP thread
 * count to n_threads; kk_core_free puts back the count it found (trace runs on the user's
 * thread and must not change it). */
typedef struct kk_core kk_core;
KILN_INTERNAL kiln_status kk_core_create(int n_threads, kk_core **out);
KILN_INTERNAL void        kk_core_free(kk_core *c);

/* One op's runnable instance on one core. */
typedef struct kk_kernel kk_kernel;

/* Checks that op i of p is something the kernels can run (kind, sub, dtypes, ranks,
 * attributes); KILN_ERR_UNSUPPORTED naming the op and reason otherwise. The compiler calls
 * this for every op it emits, so nothing unsupported survives to run time. */
KILN_INTERNAL kiln_status kk_check(const kp_program *p, uint32_t i);

/* Creates the kernel of op i of p on core c. ptr[v] is the address of value v's storage
 * (arena slot for ACT/INPUT, weight for CONST), valid for the kernel's life. A CONST input
 * stored in a packed layout this machine's kernel does not want is reordered into memory
 * the kernel owns; the bytes are added to *copied (may be NULL). */
KILN_INTERNAL kiln_status kk_create(kk_core *c, const kp_program *p, uint32_t i,
                                    void *const *ptr, kk_kernel **out, uint64_t *copied);
/* Runs it. Fails only on bad data (e.g. a Gather index out of range: KILN_ERR_ARG). */
KILN_INTERNAL kiln_status kk_run(kk_kernel *k);
KILN_INTERNAL void        kk_free(kk_kernel *k);

/* Trace time: input `which` of op i is a CONST whose dense C-order data is `plain`. If the
 * op's kernel wants it in another layout on this machine, returns in *packed (kiln__malloc'd,
 * KP_ALIGN-aligned via kiln__aligned_alloc) the packed bytes and in *layout (kiln__malloc'd)
 * the descriptor to store in kp_value.layout; otherwise sets both to NULL. The compiler
 * packs a weight only when one op uses it. */
KILN_INTERNAL kiln_status kk_pack_weight(const kp_program *p, uint32_t i, int which,
                                         const void *plain, void **packed, size_t *n_packed,
                                         void **layout, size_t *n_layout);
/* Human-readable form of a packed-layout descriptor (for inspect), e.g. "OIhw16i16o". */
KILN_INTERNAL const char *kk_layout_name(const void *layout, size_t n_layout, char *buf, size_t n);

#endif
