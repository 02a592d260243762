/*
 * kernels.h — the compute kernels behind every program op: oneDNN primitives where oneDNN
 * has the op (all dnnl_ code lives in kernels/dnnl*.c), plain C elsewhere and for every
 * dtype oneDNN does not take. The rest of kiln sees only these calls.
 *
 * Life of a kernel:
 *   trace time   kk_pack_weight: store a weight in the layout this machine's kernel wants;
 *                kk_create + kk_run on a temporary core: constant folding.
 *   placement    kk_program_plan once per program (shared by every replica); kk_core_create
 *                on the core's thread; kk_create_planned per op, on any thread (see below),
 *                with the address of every value's storage.
 *   forward      kk_run per op, in program order, on the core's thread.
 *
 * Threads. A core (kk_core) belongs to one thread, "the core's thread": the one that called
 * kk_core_create. Only that thread runs kernels (kk_run), calls kk_core_reserve and frees the
 * core. Kernels of a core may be created on ANY thread, several at once, while the core's
 * thread runs kernels of the same core that already exist ("streaming placement": op i runs
 * as soon as its own kernel exists), provided:
 *   - the creating thread's OpenMP thread count equals the core's (oneDNN specialises a
 *     primitive to the count in force when it is made): call kk_thread_prepare(c) on that
 *     thread before creating and kk_thread_restore(prev) after. kk_create fails with
 *     KILN_ERR_STATE on a thread whose count differs. The core's thread is already prepared.
 *   - a kernel reaches the core's thread through a happens-before edge (a mutex, a condition
 *     variable, or an atomic store-release / load-acquire of the pointer); kk_create itself
 *     publishes nothing.
 *   - the program and every ptr[] table stay unchanged and alive while kernels made from
 *     them exist (kernels keep pointers into both); a plan only while kernels are being
 *     created from it (kernels do not keep it). A kernel is freed (kk_free) when no thread
 *     can run it any more; kk_core_free comes after every kernel of the core is freed.
 * Creation never touches what a running kernel uses: it only reads the program and the plan,
 * makes its own oneDNN objects, reorders weights on a stream of its own, and records how much
 * of the core's scratchpad it needs (an atomic maximum). The scratchpad is grown only on the
 * core's thread: by kk_create there (as ever: running out of memory fails the creation), and
 * for kernels made elsewhere by kk_core_reserve, or else by the first kk_run that finds it
 * too small (which can then fail with KILN_ERR_NOMEM).
 */
#ifndef KILN_KERNELS_H
#define KILN_KERNELS_H

#include "compiler/program.h"

/* Per-core execution context: oneDNN stream, scratchpad, thread count. Created, run and
 * freed on the core's thread. kk_core_create sets the calling thread's OpenMP thread count
 * to n_threads; kk_core_free puts back the count it found (trace runs on the user's thread
 * and must not change it). */
typedef struct kk_core kk_core;
KILN_INTERNAL kiln_status kk_core_create(int n_threads, kk_core **out);
KILN_INTERNAL void        kk_core_free(kk_core *c);
/* On the core's thread: grows the core's scratchpad to what every kernel created so far
 * needs, so no later kk_run allocates (call it when a placement's kernels made on other
 * threads are all there, to report running out of memory as a placement failure). Optional:
 * kk_run grows it otherwise. KILN_ERR_NOMEM. */
KILN_INTERNAL kiln_status kk_core_reserve(kk_core *c);

/* On a thread that is not the core's, before creating kernels of c there: sets this
 * thread's OpenMP thread count to c's and returns the count it had, which the caller gives
 * back to kk_thread_restore when it is done creating. */
KILN_INTERNAL int         kk_thread_prepare(const kk_core *c);
KILN_INTERNAL void        kk_thread_restore(int prev);

/* What every kernel of a program agrees on without talking to the others (which activations
 * are stored channels-last, see dnnl.c), computed once per program in about linear time
 * (kk_create without a plan works out its own op's share, which costs a scan of the whole
 * program per op: quadratic over a placement). Immutable once made: shared by every core
 * and thread. p must outlive it and must not change. */
typedef struct kk_plan kk_plan;
KILN_INTERNAL kiln_status kk_program_plan(const kp_program *p, kk_plan **out);
KILN_INTERNAL void        kk_plan_free(kk_plan *pl);

/* One op's runnable instance on one core. */
typedef struct kk_kernel kk_kernel;

/* Checks that op i of p is something the kernels can run (kind, sub, dtypes, ranks,
 * attributes); KILN_ERR_UNSUPPORTED naming the op and reason otherwise. The compiler calls
 * this for every op it emits, so nothing unsupported survives to run time. */
KILN_INTERNAL kiln_status kk_check(const kp_program *p, uint32_t i);

/* Creates the kernel of op i of the plan's program on core c, from any thread (see Threads
 * above). ptr[v] is the address of value v's storage (arena slot for ACT/INPUT, weight for
 * CONST), valid for the kernel's life. A CONST input stored in a packed layout this
 * machine's kernel does not want is reordered into memory the kernel owns; the bytes are
 * added to *copied (may be NULL; not atomic: one counter per creating thread). Creating the
 * same op twice on one core gives two independent kernels. */
KILN_INTERNAL kiln_status kk_create_planned(kk_core *c, const kk_plan *plan, uint32_t i,
                                            void *const *ptr, kk_kernel **out, uint64_t *copied);
/* The same without a plan (trace time, where the program grows between calls; tests). */
KILN_INTERNAL kiln_status kk_create(kk_core *c, const kp_program *p, uint32_t i,
                                    void *const *ptr, kk_kernel **out, uint64_t *copied);
/* Runs it, on the core's thread. Fails on bad data (e.g. a Gather index out of range:
 * KILN_ERR_ARG), or KILN_ERR_NOMEM when the core's scratchpad must grow and cannot. */
KILN_INTERNAL kiln_status kk_run(kk_kernel *k);
KILN_INTERNAL void        kk_free(kk_kernel *k);

/* Trace time: input `which` of op i is a CONST whose dense C-order data is `plain`. If the
 * op's kernel wants it in another layout on this machine, returns in *packed (kiln__malloc'd,
 * KP_ALIGN-aligned via kiln__aligned_alloc) the packed bytes and in *layout (kiln__malloc'd)
 * the descriptor to store in kp_value.layout; otherwise sets both to NULL. Deterministic:
 * the same weight asked for by ops that want the same layout (e.g. one weight shared by
 * several MatMuls of the same shapes) gives byte-identical *layout and *packed, so the
 * compiler may pack a shared weight once when every user's descriptor is identical; each
 * of those ops then uses the packed bytes in place. */
KILN_INTERNAL kiln_status kk_pack_weight(const kp_program *p, uint32_t i, int which,
                                         const void *plain, void **packed, size_t *n_packed,
                                         void **layout, size_t *n_layout);
/* Human-readable form of a packed-layout descriptor (for inspect), e.g. "OIhw16i16o". */
KILN_INTERNAL const char *kk_layout_name(const void *layout, size_t n_layout, char *buf, size_t n);

#endif
