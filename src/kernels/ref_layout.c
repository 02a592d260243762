/*
 * ref_layout.c — the reference kernels that also work on activations stored channels-last
 * (N x spatial... x C), so that the layout planner (kd_plan_layouts in dnnl.c) can keep a
 * UNet's or VAE decoder's tensors nhwc from one oneDNN convolution to the next: which ops
 * those are (kr_cl_inputs), creating them for the layouts the plan chose (kr_create_cl),
 * and the channels-last Concat kernel. f32 only; the GroupNorm and nearest Resize kernels
 * live with their op kinds (ref_norm.c, ref_resize.c).
 */
#include "kernels/ref.h"

#include <string.h>

/* ---- Concat over channels (axis 1), each input and the output dense or channels-last ---- */

typedef struct cat_in {
    const float *x;
    int64_t C;                      /* its channels */
    bool cl;
} cat_in;

typedef struct cat_k {
    kk_kernel base;
    int64_t N, S, C;                /* images, spatial positions, output channels */
    float *y;
    bool y_cl;
    int n;
    cat_in in[];
} cat_k;

static kiln_status cat_run(kk_kernel *kk)
{
    cat_k *k = (cat_k *)kk;
    const int64_t S = k->S, C = k->C;
    for (int64_t n = 0; n < k->N; n++) {
        int64_t c0 = 0;
        for (int j = 0; j < k->n; j++) {
            const int64_t Ck = k->in[j].C;
            const float *x = k->in[j].x + n * Ck * S;
            float *y = k->y + n * C * S;
            if (k->y_cl && k->in[j].cl) {
                for (int64_t s = 0; s < S; s++)
                    memcpy(y + s * C + c0, x + s * Ck, (size_t)Ck * sizeof(float));
            } else if (k->y_cl) {
                for (int64_t s = 0; s < S; s++)
                    for (int64_t c = 0; c < Ck; c++)
                        y[s * C + c0 + c] = x[c * S + s];
            } else if (k->in[j].cl) {
                for (int64_t c = 0; c < Ck; c++)
                    for (int64_t s = 0; s < S; s++)
                        y[(c0 + c) * S + s] = x[s * Ck + c];
            } else {
                memcpy(y + c0 * S, x, (size_t)(Ck * S) * sizeof(float));
            }
            c0 += Ck;
        }
    }
    return KILN_OK;
}

/* Whether op i is a Concat this file can run: f32, over axis 1 of N x C x spatial... */
static bool cat_ok(const kp_program *p, const kp_op *op)
{
    const kp_value *y = &p->values[kp_op_out(p, op)[0]];
    if (op->n_ia != 1 || kp_op_ia(p, op)[0] != 1 || y->dtype != KILN_F32 || y->ndim < 3)
        return false;
    for (int k = 0; k < op->n_in; k++)
        if (kp_op_in(p, op)[k] < 0)
            return false;
    return true;
}

static kiln_status create_cat(const kp_program *p, uint32_t i, void *const *ptr, const uint8_t *cl,
                              kk_kernel **out)
{
    const kp_op *op = &p->ops[i];
    kr_op o = { p, op, i, kp_op_in(p, op), kp_op_out(p, op), kp_op_ia(p, op), kp_op_fa(p, op) };
    cat_k *k = kr_kernel_new(&o, sizeof *k + (size_t)op->n_in * sizeof(cat_in), cat_run);
    if (!k)
        return KILN_ERR_NOMEM;
    const kp_value *y = kr_out(&o, 0);
    k->N = y->shape[0];
    k->C = y->shape[1];
    k->S = kr_prod(y->shape, 2, y->ndim);
    k->y = ptr[o.out[0]];
    k->y_cl = cl[o.out[0]] != 0;
    k->n = op->n_in;
    for (int j = 0; j < op->n_in; j++) {
        k->in[j].x = ptr[o.in[j]];
        k->in[j].C = kr_in(&o, j)->shape[1];
        k->in[j].cl = cl[o.in[j]] != 0;
    }
    *out = &k->base;
    return KILN_OK;
}

/* ---- which ops, and creating them ---- */

int kr_cl_inputs(const kp_program *p, uint32_t i)
{
    if (!p || i >= p->n_ops)
        return 0;
    const kp_op *op = &p->ops[i];
    if (op->kind != KP_GROUPNORM && op->kind != KP_RESIZE && op->kind != KP_CONCAT)
        return 0;
    if (op->n_in < 1 || op->n_out != 1 || kr_check(p, i) != KILN_OK) {
        kiln__clear_error();
        return 0;
    }
    switch (op->kind) {
    case KP_RESIZE:
        return kr_resize_takes_cl(p, i) ? 1 : 0;
    case KP_CONCAT:
        return cat_ok(p, op) ? op->n_in : 0;
    default: {  /* KP_GROUPNORM */
        const kp_value *x = &p->values[kp_op_in(p, op)[0]];
        return x->dtype == KILN_F32 && x->ndim >= 3 ? 1 : 0;
    }
    }
}

kiln_status kr_create_cl(const kp_program *p, uint32_t i, void *const *ptr, const uint8_t *cl,
                         kk_kernel **out)
{
    const kp_op *op = &p->ops[i];
    int n = kr_cl_inputs(p, i);
    bool any = cl[kp_op_out(p, op)[0]] != 0;
    for (int k = 0; k < op->n_in; k++) {
        int v = kp_op_in(p, op)[k];
        if (v >= 0 && cl[v]) {
            if (k >= n)
                return kiln__fail(KILN_ERR_INTERNAL, "op %u '%s': input %d is channels-last but "
                                  "its kernel cannot read it so", i, kp_str(p, op->name), k);
            any = true;
        }
    }
    if (!any)
        return kr_create(p, i, ptr, out);
    if (n == 0)
        return kiln__fail(KILN_ERR_INTERNAL, "op %u '%s': reference kernel asked to run "
                          "channels-last", i, kp_str(p, op->name));
    if (op->kind == KP_CONCAT)
        return create_cat(p, i, ptr, cl, out);
    kiln_status s = kr_create(p, i, ptr, out);
    if (s != KILN_OK)
        return s;
    bool x_cl = cl[kp_op_in(p, op)[0]] != 0, y_cl = cl[kp_op_out(p, op)[0]] != 0;
    if (op->kind == KP_GROUPNORM) {
        kr_groupnorm_set_cl(*out, x_cl, y_cl);
        return KILN_OK;
    }
    kr_op o = { p, op, i, kp_op_in(p, op), kp_op_out(p, op), kp_op_ia(p, op), kp_op_fa(p, op) };
    if ((s = kr_resize_set_cl(*out, &o, x_cl, y_cl)) != KILN_OK) {
        kk_free(*out);
        *out = NULL;
    }
    return s;
}
