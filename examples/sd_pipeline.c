/*
 * sd_pipeline.c — kiln's demo: a Stable-Diffusion-shaped pipeline of four models traced,
 * saved with the load flags a server would use, loaded (placements overlapping in the
 * background) and run end to end into an image.
 *
 *     kiln_sd_demo MODEL_DIR WORK_DIR [STEPS]
 *
 * MODEL_DIR holds what tests/models/export_sd.py writes (random weights, so the image is
 * noise with structure, not a picture): NAME.onnx, NAME.input_K.npy and NAME.output_0.npy
 * (PyTorch's output) for text_encoder, unet, post_quant_conv and vae_decoder. The demo
 *   1. traces each for its inputs' shapes, sets its flags and saves WORK_DIR/NAME.kiln;
 *   2. loads all four: the async ones start placing in the background and kiln_load
 *      returns at once; the unet (lazy + async) waits for its first forward;
 *   3. generates: token ids -> text_encoder -> STEPS (default 4) DDIM steps of the unet
 *      -> post_quant_conv -> vae_decoder -> WORK_DIR/image.ppm;
 *   4. prints how each model loaded (kiln_model_load_report) and the time to first image;
 *   5. runs each model once on PyTorch's inputs and compares with PyTorch's output.
 */
#include "kiln.h"
#include "cli/npy.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TEXT, UNET, PQC, VAE, N_MODELS };

static const struct {
    const char *name;
    int         lazy, async, n_in;
    const char *why;
} models[N_MODELS] = {
    [TEXT] = { "text_encoder", 0, 1, 1, "async: placed in the background from kiln_load on" },
    [UNET] = { "unet", 1, 1, 3, "lazy+async: placed when it first runs" },
    [PQC]  = { "post_quant_conv", 0, 1, 1, "async" },
    [VAE]  = { "vae_decoder", 0, 1, 1, "async" },
};

#define MAX_IN 3

static const char *state_name(kiln_load_state s)
{
    static const char *names[] = { "UNLOADED", "LOADING", "LOADED", "FAILED" };
    return (unsigned)s < 4 ? names[s] : "?";
}

static int fail(const char *what)
{
    fprintf(stderr, "kiln_sd_demo: %s: %s\n", what, kiln_last_error());
    return 1;
}

static size_t numel(const kiln_tensor *t)
{
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= (size_t)t->shape[i];
    return n;
}

static int read_npy(const char *dir, const char *name, const char *what, kiln_tensor *t)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.%s.npy", dir, name, what);
    if (npy_read(path, t) != KILN_OK) {
        fprintf(stderr, "kiln_sd_demo: %s: %s\n", path, npy_last_error());
        return 0;
    }
    return 1;
}

/* An f32 output buffer shaped as m declares its output 0. */
static kiln_tensor output_of(const kiln_model *m)
{
    kiln_tensor t;
    memset(&t, 0, sizeof t);
    if (kiln_model_output(m, 0, NULL, &t) == KILN_OK)
        t.data = calloc(numel(&t) + 1, kiln_dtype_size(t.dtype));
    return t;
}

/* DDIM (eta 0) on Stable Diffusion's schedule: scaled-linear betas, 1000 training steps. */
static double alpha_bar(int t)
{
    double a = 1, b0 = sqrt(0.00085), b1 = sqrt(0.012);
    for (int i = 0; i <= t; i++) {
        double b = b0 + (b1 - b0) * i / 999.0;
        a *= 1 - b * b;
    }
    return a;
}

static void ddim_step(float *x, const float *eps, size_t n, int t, int t_prev)
{
    double a = alpha_bar(t), ap = t_prev >= 0 ? alpha_bar(t_prev) : 1.0;
    for (size_t i = 0; i < n; i++) {
        double x0 = (x[i] - sqrt(1 - a) * eps[i]) / sqrt(a);
        x[i] = (float)(sqrt(ap) * x0 + sqrt(1 - ap) * eps[i]);
    }
}

/* A 1x3xHxW image in [-1, 1] as a binary PPM. */
static int write_ppm(const char *path, const kiln_tensor *img)
{
    int64_t h = img->shape[2], w = img->shape[3];
    const float *p = img->data;
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    fprintf(f, "P6\n%lld %lld\n255\n", (long long)w, (long long)h);
    for (int64_t y = 0; y < h; y++)
        for (int64_t x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) {
                double v = (p[(c * h + y) * w + x] + 1) * 127.5;
                fputc(v < 0 ? 0 : v > 255 ? 255 : (int)lrint(v), f);
            }
    return fclose(f) == 0;
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: kiln_sd_demo MODEL_DIR WORK_DIR [STEPS]\n");
        return 2;
    }
    const char *mdir = argv[1], *wdir = argv[2];
    int steps = argc == 4 ? atoi(argv[3]) : 4;
    if (steps < 1 || steps > 50) {
        fprintf(stderr, "kiln_sd_demo: STEPS is 1 to 50\n");
        return 2;
    }
    char path[4096];
    kiln_tensor in[N_MODELS][MAX_IN], ref[N_MODELS];
    kiln_model *m[N_MODELS];
    memset(in, 0, sizeof in);
    memset(m, 0, sizeof m);

    printf("kiln demo: a Stable-Diffusion-shaped pipeline, %d core(s) visible\n\n"
           "1. trace and save (the load flags are stored in each artifact)\n", kiln_num_cores());
    for (int i = 0; i < N_MODELS; i++) {
        for (int k = 0; k < models[i].n_in; k++) {
            char what[32];
            snprintf(what, sizeof what, "input_%d", k);
            if (!read_npy(mdir, models[i].name, what, &in[i][k]))
                return 1;
        }
        if (!read_npy(mdir, models[i].name, "output_0", &ref[i]))
            return 1;
        kiln_model *t;
        double t0 = kiln_clock_ms();
        snprintf(path, sizeof path, "%s/%s.onnx", mdir, models[i].name);
        if (kiln_trace(path, in[i], (size_t)models[i].n_in, &t) != KILN_OK)
            return fail(path);
        double t1 = kiln_clock_ms();
        kiln_lazy_load(t, models[i].lazy);
        kiln_async_load(t, models[i].async);
        snprintf(path, sizeof path, "%s/%s.kiln", wdir, models[i].name);
        if (kiln_save(t, path) != KILN_OK)
            return fail(path);
        printf("   %-16s traced in %6.1f ms, saved in %5.1f ms  (%s)\n", models[i].name, t1 - t0,
               kiln_clock_ms() - t1, models[i].lazy ? "lazy+async" : "async");
        kiln_model_free(t);
    }

    printf("\n2. load all four, as a server starting up would\n");
    double t_start = kiln_clock_ms();
    for (int i = 0; i < N_MODELS; i++) {
        snprintf(path, sizeof path, "%s/%s.kiln", wdir, models[i].name);
        double t0 = kiln_clock_ms();
        kiln_status s = kiln_load(path, &m[i]);
        double t1 = kiln_clock_ms();
        if (s != KILN_OK)
            return fail(path);
        printf("   kiln_load(%-16s) = %s after %5.2f ms: %-8s placements %u  (%s)\n",
               models[i].name, kiln_status_name(s), t1 - t0, state_name(kiln_model_state(m[i])),
               kiln_model_placements(m[i], -1), models[i].why);
    }

    printf("\n3. generate: text_encoder -> unet x %d (DDIM) -> post_quant_conv -> vae_decoder\n", steps);
    kiln_tensor ctx = output_of(m[TEXT]), eps = output_of(m[UNET]);
    kiln_tensor lat2 = output_of(m[PQC]), img = output_of(m[VAE]);
    kiln_tensor lat = in[UNET][0], ts = in[UNET][1];
    size_t nl = numel(&lat);
    float *latent = malloc(nl * sizeof(float)), tval;
    if (!ctx.data || !eps.data || !lat2.data || !img.data || !latent) {
        fprintf(stderr, "kiln_sd_demo: out of memory\n");
        return 1;
    }
    memcpy(latent, in[UNET][0].data, nl * sizeof(float));    /* seeded noise */
    lat.data = latent;
    ts.data = &tval;

    double t0 = kiln_clock_ms();
    if (kiln_forward(m[TEXT], in[TEXT], 1, &ctx, 1) != KILN_OK)
        return fail("text_encoder");
    printf("   text_encoder        %7.2f ms  (waits for its load if still running)\n",
           kiln_clock_ms() - t0);
    for (int s = 0; s < steps; s++) {
        int t = 999 - s * (1000 / steps), t_prev = s + 1 < steps ? t - 1000 / steps : -1;
        kiln_tensor ui[3] = { lat, ts, ctx };
        tval = (float)t;
        t0 = kiln_clock_ms();
        if (kiln_forward(m[UNET], ui, 3, &eps, 1) != KILN_OK)
            return fail("unet");
        printf("   unet step %d/%d t=%3d %7.2f ms%s\n", s + 1, steps, t, kiln_clock_ms() - t0,
               s == 0 ? "  (first forward: places the lazy unet, then runs)" : "");
        ddim_step(latent, eps.data, nl, t, t_prev);
    }
    for (size_t i = 0; i < nl; i++)
        latent[i] /= 0.18215f;                               /* SD's latent scaling */
    t0 = kiln_clock_ms();
    if (kiln_forward(m[PQC], &lat, 1, &lat2, 1) != KILN_OK)
        return fail("post_quant_conv");
    double t1 = kiln_clock_ms();
    if (kiln_forward(m[VAE], &lat2, 1, &img, 1) != KILN_OK)
        return fail("vae_decoder");
    double t_image = kiln_clock_ms();
    printf("   post_quant_conv     %7.2f ms\n   vae_decoder         %7.2f ms\n", t1 - t0,
           t_image - t1);
    snprintf(path, sizeof path, "%s/image.ppm", wdir);
    if (!write_ppm(path, &img)) {
        fprintf(stderr, "kiln_sd_demo: %s: cannot write the image\n", path);
        return 1;
    }
    printf("   image: %s (%lldx%lld)\n", path, (long long)img.shape[3], (long long)img.shape[2]);

    printf("\n4. how each model loaded (kiln_model_load_report; ms)\n"
           "   %-16s %4s %6s %7s %6s %8s %15s %10s\n", "model", "core", "read", "verify", "place",
           "kernels", "ready after load", "placements");
    for (int i = 0; i < N_MODELS; i++) {
        kiln_load_report r;
        if (kiln_model_load_report(m[i], &r) != KILN_OK)
            return fail(models[i].name);
        printf("   %-16s %4d %6.2f %7.2f %6.2f %8.2f %12.2f ms %10u\n", models[i].name, r.core,
               r.read_ms, r.verify_ms, r.place_ms, r.kernels_ms,
               r.t_ready > 0 ? r.t_ready - t_start : 0, r.placements);
    }
    printf("   first image %.1f ms after the first kiln_load (loads, %d unet steps and the decoder)\n",
           t_image - t_start, steps);

    printf("\n5. check: each model once on PyTorch's inputs, against PyTorch's output\n");
    int bad = 0;
    for (int i = 0; i < N_MODELS; i++) {
        kiln_tensor out = output_of(m[i]);
        if (!out.data || numel(&out) != numel(&ref[i]) ||
            kiln_forward(m[i], in[i], (size_t)models[i].n_in, &out, 1) != KILN_OK)
            return fail(models[i].name);
        const float *y = out.data, *r = ref[i].data;
        double maxdiff = 0, maxref = 0;
        for (size_t k = 0; k < numel(&out); k++) {
            double d = fabs((double)y[k] - r[k]);
            maxdiff = d > maxdiff || isnan(d) ? d : maxdiff;
            maxref = fmax(maxref, fabs((double)r[k]));
        }
        double rel = maxdiff / (maxref > 0 ? maxref : 1);
        bad += !(rel <= 1e-4);
        printf("   %-16s rel err %.1e %s\n", models[i].name, rel, rel <= 1e-4 ? "ok" : "MISMATCH");
        free(out.data);
    }

    free(latent);
    free(ctx.data);
    free(eps.data);
    free(lat2.data);
    free(img.data);
    for (int i = 0; i < N_MODELS; i++) {
        kiln_model_free(m[i]);
        for (int k = 0; k < MAX_IN; k++)
            free(in[i][k].data);
        free(ref[i].data);
    }
    return bad ? 1 : 0;
}
