/*
 * test_fuse.c — GELU written out in elementary ops must become one GELU (fuse.c), and only
 * when it is one: on the graphs of tests/fuse/make_fuse_models.py (directory in
 * KILN_FUSE_MODELS), each spelling after a MatMul + bias must trace to that one MatMul with
 * a GELU / GELU_TANH post-op (alone: one GELU unary), the look-alikes must keep their
 * Erf/Tanh and no GELU. A MatMul operand scaled by a constant must become the MatMul's
 * LINEAR post-op (ahead of the bias, which then must not be scaled), unless the scaled value
 * is used elsewhere. A 2-D MatMul + bias reshaped back to 3-D before a residual Add must
 * become one MatMul with a sum post-op, unless the 2-D result is wanted too or the reshape
 * changes the last dim. Every output is checked against numpy's evaluation of the graph as
 * written, after trace and after save -> load.
 */
#include "testutil.h"

#include "cli/npy.h"
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


/* Runs m on x; every output against NAME.out<i>.npy. */
static void check_outputs(kiln_model *m, const char *name, const kiln_tensor *x, const char *when)
{
    size_t no = kiln_model_num_outputs(m);
    kiln_tensor outs[2], refs[2];
    if (!CHECK(no >= 1 && no <= 2))
        return;
    for (size_t i = 0; i < no; i++) {
        char ext[32];
        snprintf(ext, sizeof ext, ".out%zu.npy", i);
        CHECK(npy_read(model_path(name, ext), &refs[i]) == KILN_OK);
        CHECK_OK(kiln_model_output(m, i, NULL, &outs[i]));
        CHECK(test_numel(&outs[i]) == test_numel(&refs[i]));
        outs[i].data = calloc(test_numel(&outs[i]) + 1, sizeof(float));
    }
    if (CHECK_OK(kiln_forward(m, x, 1, outs, no)))
        for (size_t i = 0; i < no; i++) {
            double e = test_rel_err(outs[i].data, refs[i].data, test_numel(&refs[i]));
            if (!CHECK(e <= 1e-4))
                fprintf(stderr, "  %s %s, output %zu: relative error %g\n", name, when, i, e);
        }
    for (size_t i = 0; i < no; i++) {
        free(outs[i].data);
        free(refs[i].data);
    }
}

enum { GELU_POST = 1, GELU_ALONE, NOT_GELU, SCALED, NOT_SCALED, RESIDUAL, NOT_RESIDUAL };

/* Whether op carries unary algorithm alg: itself, or as a post-op of a MatMul. */
static bool has_unary(const kp_program *p, const kp_op *op, int alg)
{
    if (op->kind == KP_UNARY)
        return op->sub == alg;
    if (op->kind != KP_MATMUL)
        return false;
    const int64_t *ia = kp_op_ia(p, op);
    for (int j = 0; j < (int)ia[0]; j++)
        if (ia[1 + 2 * j] == KP_POST_UNARY && ia[2 + 2 * j] == alg)
            return true;
    return false;
}

static int count_unary(const kp_program *p, int alg)
{
    int n = 0;
    for (uint32_t i = 0; i < p->n_ops; i++)
        n += has_unary(p, &p->ops[i], alg);
    return n;
}

static int count_kind(const kp_program *p, int kind)
{
    int n = 0;
    for (uint32_t i = 0; i < p->n_ops; i++)
        n += p->ops[i].kind == kind;
    return n;
}

/* SCALED: one MatMul whose first post-op is LINEAR(scale), then the bias Add as a binary
 * post-op if `bias`. */
static bool scaled(const kp_program *p, float scale, bool bias)
{
    const kp_op *op = &p->ops[0];
    if (p->n_ops != 1 || op->kind != KP_MATMUL || (op->n_in > 2 && kp_op_in(p, op)[2] >= 0))
        return false;
    const int64_t *ia = kp_op_ia(p, op);
    const float *fa = kp_op_fa(p, op);
    if (ia[0] != 1 + bias || ia[1] != KP_POST_UNARY || ia[2] != KP_U_LINEAR || fa[0] != scale ||
        fa[1] != 0.0f)
        return false;
    return !bias || (ia[3] == KP_POST_BINARY && ia[4] == KP_B_ADD);
}

/* Traces NAME and checks its program has the shape `want` says (gelu: the GELU algorithm
 * expected, erf_or_tanh: the op it must come from), then its outputs, then again after a
 * save and a load. */
static void check_case(const char *name, int want, int gelu, int erf_or_tanh)
{
    kiln_tensor x;
    if (!CHECK(npy_read(model_path(name, ".in.npy"), &x) == KILN_OK))
        return;
    kiln_tensor spec = x;
    spec.data = NULL;
    kiln_model *m = NULL;
    if (!CHECK_OK(kiln_trace(model_path(name, ".onnx"), &spec, 1, &m))) {
        free(x.data);
        return;
    }
    const kp_program *p = m->prog;
    bool ok;
    if (want == GELU_POST) {
        /* one MatMul (bias fused) whose first post-op is the GELU, nothing else left */
        const kp_op *op = &p->ops[0];
        const int64_t *ia = kp_op_ia(p, op);
        ok = p->n_ops == 1 && op->kind == KP_MATMUL && op->n_in >= 3 && kp_op_in(p, op)[2] >= 0 &&
             ia[0] >= 1 && ia[1] == KP_POST_UNARY && ia[2] == gelu;
        /* gelu_then_scale: the * 3 follows as a binary post-op */
        if (ok && !strcmp(name, "gelu_then_scale"))
            ok = ia[0] == 2 && ia[3] == KP_POST_BINARY && ia[4] == KP_B_MUL;
        else if (ok)
            ok = ia[0] == 1;
    } else if (want == GELU_ALONE) {
        ok = p->n_ops == 1 && p->ops[0].kind == KP_UNARY && p->ops[0].sub == gelu &&
             kp_op_in(p, &p->ops[0])[0] == (int32_t)p->inputs[0];
    } else if (want == NOT_GELU) {
        ok = count_unary(p, KP_U_GELU) == 0 && count_unary(p, KP_U_GELU_TANH) == 0 &&
             count_unary(p, erf_or_tanh) >= 1;
    } else if (want == SCALED) {
        ok = !strcmp(name, "scale_a") ? scaled(p, 0.125f, true) : scaled(p, 0.25f, false);
    } else if (want == NOT_SCALED) {
        ok = count_kind(p, KP_MATMUL) == 1 && count_kind(p, KP_BINARY) == 2 &&
             count_unary(p, KP_U_LINEAR) == 0;
    } else if (want == RESIDUAL) {
        /* the MatMul writes the 3-D sum itself: bias, then the residual as a sum post-op */
        const kp_op *op = &p->ops[0];
        const int64_t *ia = kp_op_ia(p, op);
        ok = p->n_ops == 1 && op->kind == KP_MATMUL && op->n_in == 4 && kp_op_in(p, op)[2] >= 0 &&
             ia[0] == 1 && ia[1] == KP_POST_SUM && p->values[kp_op_out(p, op)[0]].ndim == 3;
    } else {
        ok = count_kind(p, KP_MATMUL) == 1 && count_kind(p, KP_BINARY) == 1;
    }
    if (!CHECK(ok)) {
        fprintf(stderr, "  %s: %u ops:", name, p->n_ops);
        for (uint32_t i = 0; i < p->n_ops; i++)
            fprintf(stderr, " %s/%d", kp_op_kind_name(p->ops[i].kind), p->ops[i].sub);
        fprintf(stderr, "\n");
    }
    check_outputs(m, name, &x, "traced");
    const char *art = test_path("fuse.kiln");
    kiln_model *l = NULL;
    if (CHECK_OK(kiln_save(m, art)) && CHECK_OK(kiln_load(art, &l))) {
        check_outputs(l, name, &x, "loaded");
        kiln_model_free(l);
    }
    kiln_model_free(m);
    free(x.data);
}

int main(void)
{
    dir = getenv("KILN_FUSE_MODELS");
    if (!dir) {
        fprintf(stderr, "KILN_FUSE_MODELS is not set (run through ctest)\n");
        return 1;
    }
    static const struct { const char *name; int want, gelu, from; } cases[] = {
        { "gelu_erf_torch", GELU_POST, KP_U_GELU, KP_U_ERF },
        { "gelu_erf_half_first", GELU_POST, KP_U_GELU, KP_U_ERF },
        { "gelu_erf_short", GELU_POST, KP_U_GELU, KP_U_ERF },
        { "gelu_erf_div2", GELU_POST, KP_U_GELU, KP_U_ERF },
        { "gelu_tanh_gpt2", GELU_POST, KP_U_GELU_TANH, KP_U_TANH },
        { "gelu_tanh_torch", GELU_POST, KP_U_GELU_TANH, KP_U_TANH },
        { "gelu_tanh_factored", GELU_POST, KP_U_GELU_TANH, KP_U_TANH },
        { "gelu_then_scale", GELU_POST, KP_U_GELU, KP_U_ERF },
        { "gelu_erf_alone", GELU_ALONE, KP_U_GELU, KP_U_ERF },
        { "gelu_tanh_alone", GELU_ALONE, KP_U_GELU_TANH, KP_U_TANH },
        { "nogelu_twice_used", NOT_GELU, 0, KP_U_ERF },
        { "nogelu_erf_output", NOT_GELU, 0, KP_U_ERF },
        { "nogelu_wrong_scale", NOT_GELU, 0, KP_U_ERF },
        { "nogelu_wrong_cubic", NOT_GELU, 0, KP_U_TANH },
        { "nogelu_no_half", NOT_GELU, 0, KP_U_ERF },
        { "scale_a", SCALED, 0, 0 },
        { "scale_b", SCALED, 0, 0 },
        { "noscale_twice", NOT_SCALED, 0, 0 },
        { "residual_reshaped", RESIDUAL, 0, 0 },
        { "noresidual_2d_output", NOT_RESIDUAL, 0, 0 },
        { "noresidual_last_dim", NOT_RESIDUAL, 0, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        check_case(cases[i].name, cases[i].want, cases[i].gelu, cases[i].from);
    return test_done("test_fuse");
}
