/*
 * dp_bench.c — data-parallel throughput: one model at batch B on one core against
 * kiln_data_parallel over two cores (each core running batch B/2), in the same process.
 *
 *     dp_bench MODEL.onnx B ITERS
 *
 * MODEL.onnx must have a dynamic batch dimension 0. Prints one JSON line: samples per
 * second on one core and on two, and their ratio.
 */
#include "kiln.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void *alloc_fill(const kiln_tensor *t, size_t *bytes)
{
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= (size_t)t->shape[d];
    *bytes = n * kiln_dtype_size(t->dtype);
    unsigned char *p = malloc(*bytes + 1);
    for (size_t i = 0; i < n; i++) {
        if (t->dtype == KILN_I64)
            ((int64_t *)p)[i] = (int64_t)(i * 7 % 100);
        else if (t->dtype == KILN_F32)
            ((float *)p)[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
        else
            memset(p, 0, *bytes);
    }
    return p;
}

static kiln_model *traced(kiln_onnx *g, int64_t batch)
{
    kiln_tensor spec;
    const char *name;
    kiln_onnx_input(g, 0, &name, &spec);
    spec.shape[0] = batch;
    kiln_model *m = NULL;
    if (kiln_onnx_trace(g, &spec, 1, &m) != KILN_OK) {
        fprintf(stderr, "dp_bench: trace: %s\n", kiln_last_error());
        exit(1);
    }
    return m;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: dp_bench MODEL.onnx B ITERS\n");
        return 2;
    }
    int64_t B = atoll(argv[2]);
    int iters = atoi(argv[3]);
    if (kiln_num_cores() < 2 || B < 2 || B % 2) {
        fprintf(stderr, "dp_bench: needs two cores and an even batch\n");
        return 1;
    }
    kiln_onnx *g;
    if (kiln_onnx_open(argv[1], &g) != KILN_OK) {
        fprintf(stderr, "dp_bench: %s\n", kiln_last_error());
        return 1;
    }
    kiln_model *one = traced(g, B), *half = traced(g, B / 2);
    kiln_onnx_free(g);
    kiln_tensor in, out;
    kiln_model_input(one, 0, NULL, &in);
    kiln_model_output(one, 0, NULL, &out);
    size_t ib, ob;
    in.data = alloc_fill(&in, &ib);
    out.data = alloc_fill(&out, &ob);
    int c0 = 0, cores[2] = { 0, 1 };
    kiln_dp *dp1, *dp2;
    /* one core: data-parallel over core 0 alone (the same code path, one replica) */
    if (kiln_data_parallel(one, &c0, 1, 0, 0, &dp1) != KILN_OK ||
        kiln_data_parallel(half, cores, 2, 0, 0, &dp2) != KILN_OK) {
        fprintf(stderr, "dp_bench: %s\n", kiln_last_error());
        return 1;
    }
    double *t1 = malloc(sizeof(double) * iters), *t2 = malloc(sizeof(double) * iters);
    for (int w = 0; w < 3; w++) {
        kiln_dp_forward(dp1, &in, 1, &out, 1);
        kiln_dp_forward(dp2, &in, 1, &out, 1);
    }
    for (int i = 0; i < iters; i++) { /* alternate, so drift hits both alike */
        double a = kiln_clock_ms();
        if (kiln_dp_forward(dp1, &in, 1, &out, 1) != KILN_OK)
            return fprintf(stderr, "dp_bench: %s\n", kiln_last_error()), 1;
        double b = kiln_clock_ms();
        if (kiln_dp_forward(dp2, &in, 1, &out, 1) != KILN_OK)
            return fprintf(stderr, "dp_bench: %s\n", kiln_last_error()), 1;
        t1[i] = b - a;
        t2[i] = kiln_clock_ms() - b;
    }
    qsort(t1, iters, sizeof(double), cmp);
    qsort(t2, iters, sizeof(double), cmp);
    double m1 = t1[iters / 2], m2 = t2[iters / 2];
    printf("{\"model\": \"%s\", \"batch\": %lld, \"one_core_ms\": %.3f, \"two_cores_ms\": %.3f, "
           "\"one_core_per_s\": %.1f, \"two_cores_per_s\": %.1f, \"speedup\": %.3f}\n",
           argv[1], (long long)B, m1, m2, B * 1000.0 / m1, B * 1000.0 / m2, m1 / m2);
    kiln_dp_free(dp1);
    kiln_dp_free(dp2);
    kiln_model_free(one);
    kiln_model_free(half);
    free(in.data);
    free(out.data);
    free(t1);
    free(t2);
    return 0;
}
