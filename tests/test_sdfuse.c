/*
 * test_sdfuse.c — the Stable-Diffusion patterns trace fuses and the layout the kernels then
 * agree on, on small graphs from tests/trace/make_sdfuse_models.py (directory in
 * KILN_SDFUSE_MODELS): torch's GroupNorm export (Reshape -> InstanceNormalization ->
 * Reshape -> Mul -> Add) becomes one GroupNorm, Sigmoid -> Mul becomes SiLU, SiLU after a
 * GroupNorm runs inside it and after a Conv as its post-op; the GroupNorms and the nearest
 * Resize between convolutions keep their tensors channels-last (no reorder per conv).
 * A time-embedding operand computed after its conv moves before it and becomes the conv's
 * post-op. Intermediates used twice are not fused. Every output is checked against an unfused
 * float64 numpy reference (max |got - ref| <= 1e-5 * max |ref|), also after save/load.
 */
#include "testutil.h"

#include "cli/npy.h"
#include "kernels/kernels_impl.h"
#include "runtime/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *dir;

static const char *model_path(const char *name, const char *ext)
{
    static char buf[4][1024];
    static int at;
    char *b = buf[at++ % 4];
    snprintf(b, sizeof buf[0], "%s/%s%s", dir, name, ext);
    return b;
}


static int count_kind(const kp_program *p, int kind)
{
    int n = 0;
    for (uint32_t i = 0; i < p->n_ops; i++)
        n += p->ops[i].kind == kind;
    return n;
}

/* Runs m on x and checks each of its n_out outputs against NAME.out<K>.npy. */
static void check_outputs(kiln_model *m, const char *name, const kiln_tensor *x, size_t n_out)
{
    kiln_tensor outs[4], ref;
    if (!CHECK(kiln_model_num_outputs(m) == n_out && n_out <= 4))
        return;
    for (size_t i = 0; i < n_out; i++) {
        CHECK_OK(kiln_model_output(m, i, NULL, &outs[i]));
        outs[i].data = calloc(test_numel(&outs[i]) + 1, sizeof(float));
    }
    if (CHECK_OK(kiln_forward(m, x, 1, outs, n_out))) {
        for (size_t i = 0; i < n_out; i++) {
            char ext[32];
            snprintf(ext, sizeof ext, ".out%zu.npy", i);
            if (!CHECK(npy_read(model_path(name, ext), &ref) == KILN_OK))
                continue;
            size_t n = test_numel(&ref);
            CHECK(test_numel(&outs[i]) == n);
            double e = test_rel_err(outs[i].data, ref.data, n);
            if (!CHECK(e <= 1e-5))
                fprintf(stderr, "  %s output %zu: relative error %g\n", name, i, e);
            free(ref.data);
        }
    }
    for (size_t i = 0; i < n_out; i++)
        free(outs[i].data);
}

/* Traces NAME, checks it, and checks it again after save -> load. The traced model is
 * returned (for counting), with its input in *x. */
static kiln_model *trace_and_check(const char *name, kiln_tensor *x, size_t n_out)
{
    if (!CHECK(npy_read(model_path(name, ".in.npy"), x) == KILN_OK))
        return NULL;
    kiln_model *m = NULL;
    kiln_tensor spec = *x;
    spec.data = NULL;
    if (!CHECK_OK(kiln_trace(model_path(name, ".onnx"), &spec, 1, &m)))
        return NULL;
    check_outputs(m, name, x, n_out);
    const char *art = test_path("sdfuse.kiln");
    CHECK_OK(kiln_save(m, art));
    kiln_model *l = NULL;
    if (CHECK_OK(kiln_load(art, &l))) {
        check_outputs(l, name, x, n_out);
        kiln_model_free(l);
    }
    return m;
}

static void test_block(void)
{
    kiln_tensor x;
    kiln_model *m = trace_and_check("sd_block", &x, 1);
    if (!m)
        return;
    const kp_program *p = m->prog;
    /* conv, GroupNorm+SiLU, conv+SiLU, Resize, conv, GroupNorm+SiLU, conv: nothing else */
    CHECK(p->n_ops == 7);
    CHECK(count_kind(p, KP_CONV) == 4 && count_kind(p, KP_GROUPNORM) == 2 &&
          count_kind(p, KP_RESIZE) == 1);
    int silu_posts = 0;
    for (uint32_t i = 0; i < p->n_ops; i++) {
        const kp_op *op = &p->ops[i];
        const int64_t *ia = kp_op_ia(p, op);
        if (op->kind == KP_GROUPNORM) {
            /* the real groups and affine, over the N x C x H x W tensor, SiLU inside */
            const kp_value *v = &p->values[kp_op_in(p, op)[0]];
            CHECK(op->n_ia == 2 && ia[1] == KP_U_SILU && v->ndim == 4);
            CHECK(ia[0] == (v->shape[1] == 16 ? 4 : 2));
        }
        if (op->kind == KP_CONV) {
            int base = 2 + 4 * (int)ia[1];
            for (int j = 0; j < ia[base]; j++)
                silu_posts += ia[base + 1 + 2 * j] == KP_POST_UNARY &&
                              ia[base + 2 + 2 * j] == KP_U_SILU;
        }
    }
    CHECK(silu_posts == 1);
    /* the planner keeps every tensor between the convolutions channels-last: the
     * GroupNorms' and the Resize's inputs and outputs */
    kk_plan *plan = NULL;
    if (CHECK_OK(kk_program_plan(p, &plan))) {
        int n_cl = 0;
        for (uint32_t i = 0; i < p->n_ops; i++) {
            const kp_op *op = &p->ops[i];
            if (op->kind == KP_GROUPNORM || op->kind == KP_RESIZE) {
                CHECK(plan->cl[kp_op_in(p, op)[0]] && plan->cl[kp_op_out(p, op)[0]]);
                n_cl++;
            }
        }
        CHECK(n_cl == 3);
        /* graph input and output stay dense */
        CHECK(!plan->cl[p->inputs[0]] && !plan->cl[p->outputs[0]]);
        kk_plan_free(plan);
    }
    kiln_model_free(m);
    free(x.data);
}

static void test_shared(void)
{
    kiln_tensor x;
    kiln_model *m = trace_and_check("sd_shared", &x, 2);
    if (!m)
        return;
    const kp_program *p = m->prog;
    /* the GroupNorm pattern fuses (writing the graph output z), nothing after it does */
    CHECK(p->n_ops == 4 && count_kind(p, KP_GROUPNORM) == 1 && count_kind(p, KP_UNARY) == 1 &&
          count_kind(p, KP_BINARY) == 2);
    for (uint32_t i = 0; i < p->n_ops; i++) {
        const kp_op *op = &p->ops[i];
        if (op->kind == KP_GROUPNORM)
            CHECK(op->n_ia == 1 && kp_op_ia(p, op)[0] == 2);
        if (op->kind == KP_UNARY)
            CHECK(op->sub == KP_U_SIGMOID);
    }
    kiln_model_free(m);
    free(x.data);
}

static void test_norm_twice(void)
{
    kiln_tensor x;
    kiln_model *m = trace_and_check("sd_norm_twice", &x, 1);
    if (!m)
        return;
    const kp_program *p = m->prog;
    /* InstanceNormalization over the N x G x rest view, Mul, Add, Add: as lowered */
    CHECK(p->n_ops == 4 && count_kind(p, KP_GROUPNORM) == 1 && count_kind(p, KP_BINARY) == 3);
    for (uint32_t i = 0; i < p->n_ops; i++)
        if (p->ops[i].kind == KP_GROUPNORM)
            CHECK(p->values[kp_op_in(p, &p->ops[i])[0]].ndim == 3);
    kiln_model_free(m);
    free(x.data);
}

static void test_concat(void)
{
    kiln_tensor x;
    kiln_model *m = trace_and_check("sd_cat", &x, 1);
    if (!m)
        return;
    const kp_program *p = m->prog;
    CHECK(p->n_ops == 5 && count_kind(p, KP_CONV) == 3 && count_kind(p, KP_CONCAT) == 1 &&
          count_kind(p, KP_GROUPNORM) == 1);
    kk_plan *plan = NULL;
    if (CHECK_OK(kk_program_plan(p, &plan))) {
        for (uint32_t i = 0; i < p->n_ops; i++) {
            const kp_op *op = &p->ops[i];
            if (op->kind != KP_CONCAT)
                continue;
            /* the conv results and the result channels-last, the graph input dense */
            const int32_t *in = kp_op_in(p, op);
            CHECK(op->n_in == 3 && plan->cl[in[0]] && plan->cl[in[1]] && !plan->cl[in[2]]);
            CHECK(plan->cl[kp_op_out(p, op)[0]]);
        }
        kk_plan_free(plan);
    }
    kiln_model_free(m);
    free(x.data);
}

static void test_temb(void)
{
    kiln_tensor x;
    kiln_model *m = trace_and_check("sd_temb", &x, 1);
    if (!m)
        return;
    const kp_program *p = m->prog;
    /* ReduceMean, SiLU, MatMul, then the conv with the Add as its broadcast post-op */
    CHECK(p->n_ops == 4 && count_kind(p, KP_BINARY) == 0 && count_kind(p, KP_CONV) == 1);
    const kp_op *conv = &p->ops[p->n_ops - 1];
    if (CHECK(conv->kind == KP_CONV)) {
        const int64_t *ia = kp_op_ia(p, conv);
        int base = 2 + 4 * (int)ia[1];
        CHECK(ia[base] == 1 && ia[base + 1] == KP_POST_BINARY && ia[base + 2] == KP_B_ADD);
    }
    kiln_model_free(m);
    free(x.data);
}

int main(void)
{
    dir = getenv("KILN_SDFUSE_MODELS");
    if (!dir) {
        fprintf(stderr, "KILN_SDFUSE_MODELS is not set (run through ctest)\n");
        return 1;
    }
    test_block();
    test_shared();
    test_norm_twice();
    test_concat();
    test_temb();
    return test_done("test_sdfuse");
}
