/*
 * pipeline.c — kiln's demo: a pipeline of models traced, saved with load flags, loaded
 * eagerly, lazily and asynchronously, and run.
 *
 *     kiln_demo MODEL_DIR WORK_DIR
 *
 * MODEL_DIR holds NAME.onnx, NAME.input_0.npy and NAME.output_0.npy (PyTorch's output) for
 * each model (tests/models/export_models.py writes them). For each model the demo traces
 * it for its input's shape, sets the flags below, saves WORK_DIR/NAME.kiln, then loads all
 * of them one after another as a serving process would, shows each model's state right
 * after kiln_load, runs each on its input and compares with PyTorch.
 */
#include "kiln.h"
#include "cli/npy.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const struct {
    const char *name;
    int         lazy, async;
} models[] = {
    { "bert", 0, 1 },          /* async: starts loading at kiln_load, in the background */
    { "resnet18", 1, 1 },      /* lazy + async: nothing until the first forward */
    { "mobilenet_v2", 1, 0 },  /* lazy: placed by its first forward */
};
#define N_MODELS (sizeof models / sizeof models[0])

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static const char *state_name(kiln_load_state s)
{
    static const char *names[] = { "UNLOADED", "LOADING", "LOADED", "FAILED" };
    return names[s];
}

static int fail(const char *what)
{
    fprintf(stderr, "kiln_demo: %s: %s\n", what, kiln_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: kiln_demo MODEL_DIR WORK_DIR\n");
        return 2;
    }
    const char *mdir = argv[1], *wdir = argv[2];
    char path[4096];
    kiln_tensor in[N_MODELS], ref[N_MODELS];

    printf("kiln demo: %d core(s) visible\n\n1. trace and save\n", kiln_num_cores());
    for (size_t i = 0; i < N_MODELS; i++) {
        snprintf(path, sizeof path, "%s/%s.input_0.npy", mdir, models[i].name);
        if (npy_read(path, &in[i]) != KILN_OK) {
            fprintf(stderr, "kiln_demo: %s: %s\n", path, npy_last_error());
            return 1;
        }
        snprintf(path, sizeof path, "%s/%s.output_0.npy", mdir, models[i].name);
        if (npy_read(path, &ref[i]) != KILN_OK) {
            fprintf(stderr, "kiln_demo: %s: %s\n", path, npy_last_error());
            return 1;
        }
        kiln_model *m;
        double t0 = now_ms();
        snprintf(path, sizeof path, "%s/%s.onnx", mdir, models[i].name);
        if (kiln_trace(path, &in[i], 1, &m) != KILN_OK)
            return fail(path);
        double t1 = now_ms();
        kiln_lazy_load(m, models[i].lazy);
        kiln_async_load(m, models[i].async);
        snprintf(path, sizeof path, "%s/%s.kiln", wdir, models[i].name);
        if (kiln_save(m, path) != KILN_OK)
            return fail(path);
        printf("   %-13s traced in %6.1f ms, saved in %5.1f ms  (lazy=%d async=%d)\n",
               models[i].name, t1 - t0, now_ms() - t1, models[i].lazy, models[i].async);
        kiln_model_free(m);
    }

    printf("\n2. load all (as a server starting up would)\n");
    kiln_model *loaded[N_MODELS];
    double t_start = now_ms();
    for (size_t i = 0; i < N_MODELS; i++) {
        snprintf(path, sizeof path, "%s/%s.kiln", wdir, models[i].name);
        double t0 = now_ms();
        if (kiln_load(path, &loaded[i]) != KILN_OK)
            return fail(path);
        printf("   kiln_load(%-13s) returned after %6.2f ms: %-8s placements=%u\n", models[i].name,
               now_ms() - t0, state_name(kiln_model_state(loaded[i])),
               kiln_model_placements(loaded[i], -1));
    }

    printf("\n3. run each (a lazy model is placed by its first forward, an async one waited for)\n");
    int bad = 0;
    for (size_t i = 0; i < N_MODELS; i++) {
        kiln_tensor out;
        kiln_model_output(loaded[i], 0, NULL, &out);
        size_t n = 1;
        for (int d = 0; d < out.ndim; d++)
            n *= (size_t)out.shape[d];
        out.data = malloc(n * sizeof(float) + 1);
        double t0 = now_ms();
        if (kiln_forward(loaded[i], &in[i], 1, &out, 1) != KILN_OK)
            return fail(models[i].name);
        double t1 = now_ms();
        const float *y = out.data, *r = ref[i].data;
        double maxdiff = 0, maxref = 0;
        for (size_t k = 0; k < n; k++) {
            maxdiff = fmax(maxdiff, fabs((double)y[k] - r[k]));
            maxref = fmax(maxref, fabs((double)r[k]));
        }
        double rel = maxdiff / (maxref > 0 ? maxref : 1);
        bad += !(rel <= 1e-4);
        kiln_load_report rep;
        kiln_model_load_report(loaded[i], &rep);
        printf("   %-13s first forward %7.2f ms  (load: read %.2f, verify %.2f, place %.2f, kernels %.2f ms "
               "on core %d)  vs PyTorch: rel err %.1e %s\n",
               models[i].name, t1 - t0, rep.read_ms, rep.verify_ms, rep.place_ms, rep.kernels_ms,
               rep.core, rel, rel <= 1e-4 ? "ok" : "MISMATCH");
        free(out.data);
    }
    printf("\nall %zu models ready and run %.1f ms after the first kiln_load\n", N_MODELS, now_ms() - t_start);
    for (size_t i = 0; i < N_MODELS; i++) {
        kiln_model_free(loaded[i]);
        free(in[i].data);
        free(ref[i].data);
    }
    return bad ? 1 : 0;
}
