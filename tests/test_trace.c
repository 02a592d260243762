/*
 * test_trace.c — what trace must do, on small graphs from tests/trace/make_trace_models.py
 * (directory in KILN_TRACE_MODELS): shape arithmetic folded away, Conv+BN+activation and
 * residual adds fused, Identity/Dropout dropped, activation memory reused, errors named;
 * every result checked against numpy, directly and after save/load, eager and lazy.
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

static double rel_err(const kiln_tensor *a, const kiln_tensor *ref)
{
    size_t n = 1;
    for (int d = 0; d < ref->ndim; d++)
        n *= (size_t)ref->shape[d];
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        double x = ((const float *)a->data)[i], r = ((const float *)ref->data)[i];
        if (isnan(x))
            return INFINITY;
        md = fmax(md, fabs(x - r));
        mr = fmax(mr, fabs(r));
    }
    return md / (mr > 0 ? mr : 1);
}

static size_t bytes_of(const kiln_tensor *t)
{
    size_t n = kiln_dtype_size(t->dtype);
    for (int d = 0; d < t->ndim; d++)
        n *= (size_t)t->shape[d];
    return n;
}

static int count_kind(const kiln_model *m, int kind)
{
    int n = 0;
    for (uint32_t i = 0; i < m->prog->n_ops; i++)
        n += m->prog->ops[i].kind == kind;
    return n;
}

/* Runs m on x and checks output `which` against ref. */
static void check_run(kiln_model *m, const kiln_tensor *x, const kiln_tensor *ref, size_t which, const char *what)
{
    size_t no = kiln_model_num_outputs(m);
    kiln_tensor outs[4];
    CHECK(no >= 1 && no <= 4);
    for (size_t i = 0; i < no && i < 4; i++) {
        CHECK_OK(kiln_model_output(m, i, NULL, &outs[i]));
        outs[i].data = calloc(1, bytes_of(&outs[i]) + 1);
    }
    if (CHECK_OK(kiln_forward(m, x, 1, outs, no))) {
        double e = rel_err(&outs[which], ref);
        if (!CHECK(e <= 1e-4))
            fprintf(stderr, "  %s: relative error %g\n", what, e);
    }
    for (size_t i = 0; i < no && i < 4; i++)
        free(outs[i].data);
}

/* Traces NAME for its input, checks the traced model, then save -> load -> check again. */
static kiln_model *trace_and_check(const char *name, kiln_tensor *x, kiln_tensor *ref)
{
    CHECK(npy_read(model_path(name, ".in.npy"), x) == KILN_OK);
    CHECK(npy_read(model_path(name, ".out.npy"), ref) == KILN_OK);
    kiln_model *m = NULL;
    kiln_tensor spec = *x;
    spec.data = NULL;
    if (!CHECK_OK(kiln_trace(model_path(name, ".onnx"), &spec, 1, &m)))
        return NULL;
    check_run(m, x, ref, 0, name);
    const char *art = test_path("trace.kiln");
    CHECK_OK(kiln_save(m, art));
    kiln_model *l = NULL;
    if (CHECK_OK(kiln_load(art, &l))) {
        CHECK(kiln_model_state(l) == KILN_LOADED);
        CHECK(kiln_model_placements(l, -1) == 1);
        check_run(l, x, ref, 0, name);
        kiln_model_free(l);
    }
    return m;
}

static void done_with(kiln_model *m, kiln_tensor *x, kiln_tensor *ref)
{
    kiln_model_free(m);
    free(x->data);
    free(ref->data);
}

static void test_fold(void)
{
    kiln_tensor x, ref;
    kiln_model *m = trace_and_check("fold", &x, &ref);
    if (!m)
        return;
    /* Shape, Gather, Unsqueeze, Concat fold; Reshape is an alias: only the Relu runs. */
    CHECK(m->prog->n_ops == 1);
    CHECK(count_kind(m, KP_UNARY) == 1);
    done_with(m, &x, &ref);
}

static void test_conv_fusion(void)
{
    kiln_tensor x, ref;
    kiln_model *m = trace_and_check("conv_bn_relu", &x, &ref);
    if (m) {
        CHECK(m->prog->n_ops == 1 && count_kind(m, KP_CONV) == 1);
        done_with(m, &x, &ref);
    }
    m = trace_and_check("conv_residual", &x, &ref);
    if (m) {
        CHECK(m->prog->n_ops == 1 && count_kind(m, KP_CONV) == 1);
        /* post-ops: sum then relu */
        const kp_op *op = &m->prog->ops[0];
        const int64_t *ia = kp_op_ia(m->prog, op);
        int base = 2 + 4 * (int)ia[1];
        CHECK(ia[base] == 2 && ia[base + 1] == KP_POST_SUM && ia[base + 3] == KP_POST_UNARY &&
              ia[base + 4] == KP_U_RELU);
        done_with(m, &x, &ref);
    }
}

static void test_residual_in_place(void)
{
    kiln_tensor x, ref;
    kiln_model *m = trace_and_check("residual_block", &x, &ref);
    if (!m)
        return;
    CHECK(m->prog->n_ops == 3 && count_kind(m, KP_CONV) == 3);
    /* the last conv writes its result where its residual operand (the first's output) was */
    const kp_op *c2 = &m->prog->ops[2];
    int operand = kp_op_in(m->prog, c2)[3], y = kp_op_out(m->prog, c2)[0];
    CHECK(operand >= 0 && m->prog->values[operand].offset == m->prog->values[y].offset);
    done_with(m, &x, &ref);
}

static void test_noops(void)
{
    kiln_tensor x, ref;
    kiln_model *m = trace_and_check("noops", &x, &ref);
    if (!m)
        return;
    CHECK(m->prog->n_ops == 1);
    CHECK(kiln_model_num_outputs(m) == 2);
    const char *n0 = NULL, *n1 = NULL;
    kiln_model_output(m, 0, &n0, NULL);
    kiln_model_output(m, 1, &n1, NULL);
    CHECK(n0 && strcmp(n0, "y") == 0);
    CHECK(n1 && strcmp(n1, "x2") == 0);
    check_run(m, &x, &x, 1, "noops x2 == x");
    done_with(m, &x, &ref);
}

static void test_chain_memory(void)
{
    kiln_tensor x, ref;
    kiln_model *m = trace_and_check("chain", &x, &ref);
    if (!m)
        return;
    CHECK(m->prog->n_ops == 12);
    uint64_t t = bytes_of(&x);
    /* input slot + two working buffers, not twelve */
    if (!CHECK(m->prog->arena_bytes <= 3 * t))
        fprintf(stderr, "  arena %llu bytes for a %llu-byte tensor\n", (unsigned long long)m->prog->arena_bytes,
                (unsigned long long)t);
    done_with(m, &x, &ref);
}

static void test_matmul_bias(void)
{
    kiln_tensor x, ref;
    kiln_model *m = trace_and_check("matmul_gelu", &x, &ref);
    if (!m)
        return;
    CHECK(count_kind(m, KP_MATMUL) == 1);
    const kp_op *mm = NULL;
    for (uint32_t i = 0; i < m->prog->n_ops; i++)
        if (m->prog->ops[i].kind == KP_MATMUL)
            mm = &m->prog->ops[i];
    CHECK(mm && mm->n_in >= 3 && kp_op_in(m->prog, mm)[2] >= 0); /* bias fused */
    done_with(m, &x, &ref);
}

static void test_lazy(void)
{
    kiln_tensor x, ref, spec;
    CHECK(npy_read(model_path("conv_bn_relu", ".in.npy"), &x) == KILN_OK);
    CHECK(npy_read(model_path("conv_bn_relu", ".out.npy"), &ref) == KILN_OK);
    spec = x;
    kiln_model *m = NULL;
    if (!CHECK_OK(kiln_trace(model_path("conv_bn_relu", ".onnx"), &spec, 1, &m)))
        return;
    CHECK_OK(kiln_lazy_load(m, 1));
    CHECK_OK(kiln_async_load(m, 1));
    CHECK_OK(kiln_async_load(m, 0));
    const char *art = test_path("lazy.kiln");
    CHECK_OK(kiln_save(m, art));
    kiln_model *l = NULL;
    if (CHECK_OK(kiln_load(art, &l))) {
        CHECK(kiln_model_is_lazy(l) == 1 && kiln_model_is_async(l) == 0);
        CHECK(kiln_model_state(l) == KILN_UNLOADED);
        CHECK(kiln_model_placements(l, -1) == 0);
        CHECK_STATUS(kiln_lazy_load(l, 0), KILN_ERR_STATE);
        check_run(l, &x, &ref, 0, "lazy");
        CHECK(kiln_model_state(l) == KILN_LOADED);
        CHECK(kiln_model_placements(l, -1) == 1);
        check_run(l, &x, &ref, 0, "lazy again");
        CHECK(kiln_model_placements(l, -1) == 1);
        kiln_model_free(l);
    }
    done_with(m, &x, &ref);
}

static void test_errors(void)
{
    kiln_tensor spec = { KILN_F32, 2, { 2, 3 }, NULL };
    kiln_model *m = NULL;
    CHECK_STATUS(kiln_trace(model_path("unsupported", ".onnx"), &spec, 1, &m), KILN_ERR_UNSUPPORTED);
    CHECK(strstr(kiln_last_error(), "nz_node") && strstr(kiln_last_error(), "NonZero"));
    CHECK(m == NULL);

    kiln_tensor bad = { KILN_F32, 4, { 1, 4, 9, 8 }, NULL };
    CHECK_STATUS(kiln_trace(model_path("conv_bn_relu", ".onnx"), &bad, 1, &m), KILN_ERR_SHAPE);
    kiln_tensor badt = { KILN_I64, 4, { 1, 4, 8, 8 }, NULL };
    CHECK_STATUS(kiln_trace(model_path("conv_bn_relu", ".onnx"), &badt, 1, &m), KILN_ERR_SHAPE);
    CHECK_STATUS(kiln_trace(model_path("conv_bn_relu", ".onnx"), &spec, 2, &m), KILN_ERR_SHAPE);
    CHECK_STATUS(kiln_trace(model_path("no_such_model", ".onnx"), &spec, 1, &m), KILN_ERR_IO);
    const char *junk = test_path("junk.onnx");
    FILE *f = fopen(junk, "wb");
    fputs("this is not an ONNX model at all, just text\n", f);
    fclose(f);
    CHECK_STATUS(kiln_trace(junk, &spec, 1, &m), KILN_ERR_FORMAT);
    CHECK_STATUS(kiln_trace(NULL, &spec, 1, &m), KILN_ERR_ARG);

    kiln_tensor ok = { KILN_F32, 4, { 1, 4, 8, 8 }, NULL };
    if (!CHECK_OK(kiln_trace(model_path("conv_bn_relu", ".onnx"), &ok, 1, &m)))
        return;
    float buf[256], obuf[256];
    kiln_tensor in = ok, out = ok;
    in.data = buf;
    out.data = obuf;
    memset(buf, 0, sizeof buf);
    kiln_tensor win = in;
    win.shape[2] = 7;
    CHECK_STATUS(kiln_forward(m, &win, 1, &out, 1), KILN_ERR_SHAPE);
    CHECK(strstr(kiln_last_error(), "1x4x8x8") != NULL);
    win = in;
    win.dtype = KILN_F64;
    CHECK_STATUS(kiln_forward(m, &win, 1, &out, 1), KILN_ERR_SHAPE);
    CHECK_STATUS(kiln_forward(m, &in, 0, &out, 1), KILN_ERR_SHAPE);
    CHECK_STATUS(kiln_forward(m, &in, 1, &out, 2), KILN_ERR_SHAPE);
    win = in;
    win.data = NULL;
    CHECK_STATUS(kiln_forward(m, &win, 1, &out, 1), KILN_ERR_ARG);
    CHECK_OK(kiln_forward(m, &in, 1, &out, 1));
    CHECK_STATUS(kiln_model_input(m, 1, NULL, NULL), KILN_ERR_ARG);
    kiln_model_free(m);
    kiln_model_free(NULL);
}

int main(void)
{
    dir = getenv("KILN_TRACE_MODELS");
    if (!dir) {
        fprintf(stderr, "KILN_TRACE_MODELS is not set (run through ctest)\n");
        return 1;
    }
    test_fold();
    test_conv_fusion();
    test_residual_in_place();
    test_noops();
    test_chain_memory();
    test_matmul_bias();
    test_lazy();
    test_errors();
    return test_done("test_trace");
}
