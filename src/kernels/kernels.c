/*
 * kernels.c — the kernels dispatcher: cores (thread count + the oneDNN side's per-core
 * state), the OpenMP count of threads that create kernels, program plans, and for each op
 * the choice between a oneDNN kernel (dnnl.c, when kd_supports says so and oneDNN accepts
 * the shapes) and the plain C reference kernel (ref_*.c), which can run every op kiln emits.
 * A reference kernel always sees dense weights: a packed constant is unpacked into memory
 * owned by a small wrapper around it.
 */
#include "kernels/kernels_impl.h"

#include <omp.h>
#include <string.h>

kiln_status kk_core_create(int n_threads, kk_core **out)
{
    if (!out || n_threads < 1)
        return kiln__fail(KILN_ERR_ARG, "kk_core_create: need an out pointer and n_threads >= 1"
                          " (got %d)", n_threads);
    kk_core *c = kiln__calloc(1, sizeof *c);
    if (!c)
        return kiln__fail(KILN_ERR_NOMEM, "kernels: out of memory for a core");
    c->n_threads = n_threads;
    c->prev_threads = omp_get_max_threads();
    /* oneDNN specialises primitives to the OpenMP team size in force when they are made:
     * fix it on this (the core's) thread before anything is created here. */
    omp_set_num_threads(n_threads);
    kiln_status st = kd_core_init(c);
    if (st) {
        omp_set_num_threads(c->prev_threads);
        kiln__free(c);
        return st;
    }
    *out = c;
    return KILN_OK;
}

void kk_core_free(kk_core *c)
{
    if (!c)
        return;
    kd_core_fini(c);
    omp_set_num_threads(c->prev_threads);
    kiln__free(c);
}

kiln_status kk_core_reserve(kk_core *c)
{
    if (!c)
        return kiln__fail(KILN_ERR_ARG, "kk_core_reserve: no core");
    return kd_core_reserve(c);
}

int kk_thread_prepare(const kk_core *c)
{
    int prev = omp_get_max_threads();
    if (c)
        omp_set_num_threads(c->n_threads);
    return prev;
}

void kk_thread_restore(int prev)
{
    if (prev >= 1)
        omp_set_num_threads(prev);
}

kiln_status kk_program_plan(const kp_program *p, kk_plan **out)
{
    if (!p || !out)
        return kiln__fail(KILN_ERR_ARG, "kk_program_plan: %s is NULL", p ? "out" : "program");
    kk_plan *pl = kiln__calloc(1, sizeof *pl);
    uint8_t *cl = pl ? kiln__malloc(p->n_values ? p->n_values : 1) : NULL;
    if (!cl) {
        kiln__free(pl);
        return kiln__fail(KILN_ERR_NOMEM, "kernels: out of memory planning %u values",
                          p->n_values);
    }
    memset(cl, 1, p->n_values);
    kiln_status st = kd_plan_layouts(p, cl);
    if (st) {
        kiln__free(cl);
        kiln__free(pl);
        return st;
    }
    pl->prog = p;
    pl->cl = cl;
    *out = pl;
    return KILN_OK;
}

void kk_plan_free(kk_plan *pl)
{
    if (!pl)
        return;
    kiln__free(pl->cl);
    kiln__free(pl);
}

kiln_status kk_check(const kp_program *p, uint32_t i)
{
    if (!p || i >= p->n_ops)
        return kiln__fail(KILN_ERR_ARG, "kk_check: op %u out of range", i);
    return kr_check(p, i);
}

/* A reference kernel plus the dense copies of packed weights it reads, and the pointer
 * table it was created with (kept: a kernel may read ptr[] again when it runs). */
typedef struct kk_unpacked {
    kk_kernel  base;
    kk_kernel *inner;
    void     **ptr;
    int        n;
    void      *buf[];
} kk_unpacked;

static kiln_status unpacked_run(kk_kernel *k)
{
    kk_unpacked *u = (kk_unpacked *)k;
    return u->inner->run(u->inner);
}

static void unpacked_destroy(kk_kernel *k)
{
    kk_unpacked *u = (kk_unpacked *)k;
    if (u->inner)
        u->inner->destroy(u->inner);
    for (int j = 0; j < u->n; j++)
        kiln__free(u->buf[j]);
    kiln__free(u->ptr);
    kiln__free(u);
}

static bool packed_const(const kp_program *p, int v)
{
    return v >= 0 && (uint32_t)v < p->n_values && p->values[v].kind == KP_VAL_CONST &&
           p->values[v].n_layout > 0;
}

static kiln_status create_ref(const kp_program *p, uint32_t i, void *const *ptr,
                              kk_kernel **out, uint64_t *copied)
{
    const kp_op *op = &p->ops[i];
    const int32_t *in = kp_op_in(p, op);
    int n = 0;
    for (int j = 0; j < op->n_in; j++)
        n += packed_const(p, in[j]);
    if (!n)
        return kr_create(p, i, ptr, out);

    kiln_status st = KILN_OK;
    uint64_t bytes = 0;
    void **ptr2 = kiln__malloc((p->n_values ? p->n_values : 1) * sizeof *ptr2);
    kk_unpacked *u = kiln__calloc(1, sizeof *u + (size_t)n * sizeof u->buf[0]);
    if (!ptr2 || !u) {
        st = kiln__fail(KILN_ERR_NOMEM, "op %u '%s': out of memory unpacking weights", i,
                        kp_str(p, op->name));
        goto fail;
    }
    memcpy(ptr2, ptr, p->n_values * sizeof *ptr2);
    u->ptr = ptr2;
    for (int j = 0; j < op->n_in; j++) {
        int v = in[j];
        if (!packed_const(p, v) || ptr2[v] != ptr[v])
            continue;   /* dense, or already unpacked (the same weight used twice) */
        const kp_value *val = &p->values[v];
        if ((uint64_t)val->layout + val->n_layout > p->n_blob) {
            st = kiln__fail(KILN_ERR_FORMAT, "op %u '%s': layout of '%s' outside the blob", i,
                            kp_str(p, op->name), kp_str(p, val->name));
            goto fail;
        }
        size_t nb = (size_t)kp_value_numel(val) * kiln_dtype_size((kiln_dtype)val->dtype);
        void *b = kiln__aligned_alloc(KP_ALIGN, nb ? nb : 1);
        if (!b) {
            st = kiln__fail(KILN_ERR_NOMEM, "op %u '%s': out of memory unpacking '%s'", i,
                            kp_str(p, op->name), kp_str(p, val->name));
            goto fail;
        }
        u->buf[u->n++] = b;
        st = kd_unpack(val, p->blob + val->layout, val->n_layout, ptr[v], b);
        if (st) {
            kiln__error_prefix("op %u '%s': weight '%s'", i, kp_str(p, op->name),
                               kp_str(p, val->name));
            goto fail;
        }
        ptr2[v] = b;
        bytes += nb;
    }
    if ((st = kr_create(p, i, ptr2, &u->inner)))
        goto fail;
    u->base.run = unpacked_run;
    u->base.destroy = unpacked_destroy;
    u->base.prog = p;
    u->base.op = i;
    if (copied)
        *copied += bytes;
    *out = &u->base;
    return KILN_OK;
fail:
    if (u)
        unpacked_destroy(&u->base);
    else
        kiln__free(ptr2);
    return st;
}

/* A reference kernel that may meet channels-last activations (kr_cl_inputs): the plan
 * says how its values are stored, or without one kd_plan_layouts asked about this op's
 * values alone. */
static kiln_status create_ref_cl(const kk_plan *plan, const kp_program *p, uint32_t i,
                                 void *const *ptr, int n_cl, kk_kernel **out)
{
    if (plan)
        return kr_create_cl(p, i, ptr, plan->cl, out);
    const kp_op *op = &p->ops[i];
    uint8_t *cl = kiln__calloc(p->n_values ? p->n_values : 1, 1);
    if (!cl)
        return kiln__fail(KILN_ERR_NOMEM, "kernels: out of memory planning op %u", i);
    for (int k = 0; k < n_cl && k < op->n_in; k++)
        if (kp_op_in(p, op)[k] >= 0)
            cl[kp_op_in(p, op)[k]] = 1;
    if (kp_op_out(p, op)[0] >= 0)
        cl[kp_op_out(p, op)[0]] = 1;
    kiln_status st = kd_plan_layouts(p, cl);
    if (st == KILN_OK)
        st = kr_create_cl(p, i, ptr, cl, out);
    kiln__free(cl);
    return st;
}

static kiln_status create(kk_core *c, const kk_plan *plan, const kp_program *p, uint32_t i,
                          void *const *ptr, kk_kernel **out, uint64_t *copied)
{
    if (!c || !p || !ptr || !out || i >= p->n_ops)
        return kiln__fail(KILN_ERR_ARG, "kk_create: bad argument (op %u)", i);
    int nt = omp_get_max_threads();
    if (nt != c->n_threads)
        return kiln__fail(KILN_ERR_STATE, "op %u '%s': creating a kernel of a %d-thread core on "
                          "a thread whose OpenMP count is %d (kk_thread_prepare first)", i,
                          kp_str(p, p->ops[i].name), c->n_threads, nt);
    if (kd_supports(p, i)) {
        kiln_status st = kd_create(c, plan, p, i, ptr, out, copied);
        if (st != KILN_ERR_UNSUPPORTED)
            return st;
        kiln__clear_error();   /* oneDNN declined these shapes: the reference runs it */
    }
    int n_cl = kr_cl_inputs(p, i);
    if (n_cl > 0)
        return create_ref_cl(plan, p, i, ptr, n_cl, out);
    return create_ref(p, i, ptr, out, copied);
}

kiln_status kk_create_planned(kk_core *c, const kk_plan *plan, uint32_t i, void *const *ptr,
                              kk_kernel **out, uint64_t *copied)
{
    if (!plan)
        return kiln__fail(KILN_ERR_ARG, "kk_create_planned: no plan (op %u)", i);
    return create(c, plan, plan->prog, i, ptr, out, copied);
}

kiln_status kk_create(kk_core *c, const kp_program *p, uint32_t i, void *const *ptr,
                      kk_kernel **out, uint64_t *copied)
{
    return create(c, NULL, p, i, ptr, out, copied);
}

kiln_status kk_run(kk_kernel *k) { return k->run(k); }

void kk_free(kk_kernel *k)
{
    if (k)
        k->destroy(k);
}

kiln_status kk_pack_weight(const kp_program *p, uint32_t i, int which, const void *plain,
                           void **packed, size_t *n_packed, void **layout, size_t *n_layout)
{
    if (!p || i >= p->n_ops || !packed || !n_packed || !layout || !n_layout)
        return kiln__fail(KILN_ERR_ARG, "kk_pack_weight: bad argument (op %u)", i);
    *packed = *layout = NULL;
    *n_packed = *n_layout = 0;
    if (!kd_supports(p, i))
        return KILN_OK;
    return kd_pack_weight(p, i, which, plain, packed, n_packed, layout, n_layout);
}

const char *kk_layout_name(const void *layout, size_t n_layout, char *buf, size_t n)
{
    if (!layout || !n_layout)
        return "dense";
    return kd_layout_name(layout, n_layout, buf, n);
}
