/*
 * test_pipeline.c — the Stable-Diffusion-shaped pipeline of four models, end to end.
 *
 *     test_pipeline [MODELDIR]        (default: $KILN_SD_MODEL_DIR)
 *
 * MODELDIR holds what tests/models/export_sd.py writes for text_encoder, unet, vae_decoder
 * and post_quant_conv: NAME.onnx, NAME.input_K.npy, NAME.output_0.npy (PyTorch's output).
 * The test traces all four with the flags a diffusion server would use (unet lazy + async,
 * the others async), saves, frees, loads all four and checks what each kiln_load left:
 * the unet UNLOADED with no placement, the others LOADING or LOADED. Then it runs the
 * pipeline end to end (text_encoder -> a few unet denoising steps with a DDIM update in C
 * -> post_quant_conv -> vae_decoder), checks the unet was placed exactly once by its first
 * forward, and compares each model's single forward on PyTorch's inputs with PyTorch's
 * output (max|diff| / max|ref| <= 1e-4).
 */
#include "testutil.h"
#include "cli/npy.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define REL_TOL 1e-4
#define MAX_IN  4

enum { TEXT, UNET, PQC, VAE, N_MODELS };

static const struct {
    const char *name;
    int         lazy, async, n_in;
} MODELS[N_MODELS] = {
    [TEXT] = { "text_encoder", 0, 1, 1 },
    [UNET] = { "unet", 1, 1, 3 },
    [PQC]  = { "post_quant_conv", 0, 1, 1 },
    [VAE]  = { "vae_decoder", 0, 1, 1 },
};

typedef struct sd_model {
    kiln_tensor in[MAX_IN], ref;      /* PyTorch's inputs and output */
    kiln_model *m;
} sd_model;

static int read_npy(const char *dir, const char *name, const char *what, kiln_tensor *t)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.%s.npy", dir, name, what);
    if (npy_read(path, t) != KILN_OK) {
        fprintf(stderr, "test_pipeline: %s: %s\n", path, npy_last_error());
        return 0;
    }
    return 1;
}

/* An output tensor shaped as model m declares its output 0 (data zeroed, caller frees). */
static kiln_tensor output_of(const kiln_model *m)
{
    kiln_tensor t;
    memset(&t, 0, sizeof t);
    if (kiln_model_output(m, 0, NULL, &t) == KILN_OK)
        t.data = calloc(test_numel(&t) + 1, kiln_dtype_size(t.dtype));
    return t;
}

/* DDIM (eta 0) with Stable Diffusion's scaled-linear betas over 1000 training steps. */
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

/* text_encoder -> unet x steps -> post_quant_conv -> vae_decoder; checks the image. */
static void run_pipeline(sd_model *sd)
{
    kiln_tensor ctx = output_of(sd[TEXT].m), eps = output_of(sd[UNET].m);
    kiln_tensor lat2 = output_of(sd[PQC].m), img = output_of(sd[VAE].m);
    kiln_tensor lat = sd[UNET].in[0], ts = sd[UNET].in[1];
    float tval;
    size_t nl = test_numel(&lat);
    float *latent = malloc(nl * sizeof(float));
    if (!CHECK(ctx.data && eps.data && lat2.data && img.data && latent))
        goto out;
    memcpy(latent, sd[UNET].in[0].data, nl * sizeof(float));   /* seeded noise */
    lat.data = latent;
    ts.data = &tval;

    if (!CHECK_OK(kiln_forward(sd[TEXT].m, sd[TEXT].in, 1, &ctx, 1)))
        goto out;
    CHECK(kiln_model_state(sd[UNET].m) == KILN_UNLOADED);
    static const int steps[] = { 999, 666, 333 };
    for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
        kiln_tensor in[3] = { lat, ts, ctx };
        tval = (float)steps[s];
        if (!CHECK_OK(kiln_forward(sd[UNET].m, in, 3, &eps, 1)))
            goto out;
        /* placed once, by its first forward, and never again */
        CHECK(kiln_model_placements(sd[UNET].m, -1) == 1);
        CHECK(kiln_model_state(sd[UNET].m) == KILN_LOADED);
        int prev = s + 1 < sizeof steps / sizeof steps[0] ? steps[s + 1] : -1;
        ddim_step(latent, eps.data, nl, steps[s], prev);
    }
    for (size_t i = 0; i < nl; i++)
        latent[i] /= 0.18215f;                           /* SD's latent scaling */
    if (!CHECK_OK(kiln_forward(sd[PQC].m, &lat, 1, &lat2, 1)) ||
        !CHECK_OK(kiln_forward(sd[VAE].m, &lat2, 1, &img, 1)))
        goto out;
    CHECK(img.ndim == 4 && img.shape[1] == 3);
    const float *p = img.data;
    size_t finite = 0, n = test_numel(&img);
    double lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        finite += isfinite(p[i]) != 0;
        lo = fmin(lo, p[i]);
        hi = fmax(hi, p[i]);
    }
    CHECK(finite == n);
    CHECK(hi > lo);                                      /* not a constant image */
    printf("pipeline: %zu denoising steps, image %lldx%lldx%lld in [%.3g, %.3g]\n",
           sizeof steps / sizeof steps[0], (long long)img.shape[1], (long long)img.shape[2],
           (long long)img.shape[3], lo, hi);
out:
    free(latent);
    free(ctx.data);
    free(eps.data);
    free(lat2.data);
    free(img.data);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : getenv("KILN_SD_MODEL_DIR");
    if (!dir || !*dir) {
        fprintf(stderr, "usage: test_pipeline MODELDIR (or set KILN_SD_MODEL_DIR); "
                "make the models with tests/models/export_sd.py MODELDIR\n");
        return 1;
    }
    sd_model sd[N_MODELS];
    memset(sd, 0, sizeof sd);
    char path[1024];

    /* 1. trace, set the flags, save */
    for (int i = 0; i < N_MODELS; i++) {
        for (int k = 0; k < MODELS[i].n_in; k++) {
            char what[32];
            snprintf(what, sizeof what, "input_%d", k);
            if (!CHECK(read_npy(dir, MODELS[i].name, what, &sd[i].in[k])))
                goto out;
        }
        if (!CHECK(read_npy(dir, MODELS[i].name, "output_0", &sd[i].ref)))
            goto out;
        kiln_model *t;
        snprintf(path, sizeof path, "%s/%s.onnx", dir, MODELS[i].name);
        if (!CHECK_OK(kiln_trace(path, sd[i].in, (size_t)MODELS[i].n_in, &t)))
            goto out;
        CHECK_OK(kiln_lazy_load(t, MODELS[i].lazy));
        CHECK_OK(kiln_async_load(t, MODELS[i].async));
        snprintf(path, sizeof path, "%s.kiln", MODELS[i].name);
        CHECK_OK(kiln_save(t, test_path(path)));
        kiln_model_free(t);
    }

    /* 2. load all four: none of the calls waits for a placement */
    for (int i = 0; i < N_MODELS; i++) {
        snprintf(path, sizeof path, "%s.kiln", MODELS[i].name);
        if (!CHECK_OK(kiln_load(test_path(path), &sd[i].m)))
            goto out;
        kiln_load_state st = kiln_model_state(sd[i].m);
        CHECK(kiln_model_is_lazy(sd[i].m) == MODELS[i].lazy);
        CHECK(kiln_model_is_async(sd[i].m) == MODELS[i].async);
        if (MODELS[i].lazy) {
            CHECK(st == KILN_UNLOADED);
            CHECK(kiln_model_placements(sd[i].m, -1) == 0);
        } else {
            CHECK(st == KILN_LOADING || st == KILN_LOADED);
        }
    }

    /* 3. the pipeline end to end */
    run_pipeline(sd);

    /* 4. each model once on PyTorch's inputs */
    for (int i = 0; i < N_MODELS; i++) {
        kiln_tensor out = output_of(sd[i].m);
        double e = INFINITY;
        if (CHECK(out.data != NULL) && CHECK(test_numel(&out) == test_numel(&sd[i].ref)) &&
            CHECK_OK(kiln_forward(sd[i].m, sd[i].in, (size_t)MODELS[i].n_in, &out, 1)))
            e = test_rel_err(out.data, sd[i].ref.data, test_numel(&out));
        if (!CHECK(e <= REL_TOL))
            fprintf(stderr, "  %s: rel err %.3g > %g\n", MODELS[i].name, e, REL_TOL);
        CHECK(kiln_model_state(sd[i].m) == KILN_LOADED);
        CHECK(kiln_model_placements(sd[i].m, -1) == 1);
        printf("%-16s rel err vs PyTorch %.2e\n", MODELS[i].name, e);
        free(out.data);
    }

out:
    for (int i = 0; i < N_MODELS; i++) {
        kiln_model_free(sd[i].m);
        for (int k = 0; k < MAX_IN; k++)
            free(sd[i].in[k].data);
        free(sd[i].ref.data);
        snprintf(path, sizeof path, "%s.kiln", MODELS[i].name);
        unlink(test_path(path));
    }
    rmdir(test_tmpdir());
    return test_done("test_pipeline");
}
