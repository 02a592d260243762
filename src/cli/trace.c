/*
 * trace.c — `kiln trace`: open the ONNX model, fix its input shapes from the model and the
 * --shape options, trace, set the load flags, save, and print a summary.
 */
#define _GNU_SOURCE
#include "cli/cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct cli_shape_opt {
    const char *spec;          /* the option's text, NAME=DIMS */
    char       *name;          /* NAME (owned) */
    int         ndim;
    int64_t     shape[KILN_MAX_DIMS];
    int         used;
} cli_shape_opt;

/* "x, y, z" into buf: the graph's input names, for messages. */
static const char *input_list(const kiln_onnx *g, char *buf, size_t n)
{
    size_t at = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < kiln_onnx_num_inputs(g) && at < n; i++) {
        const char *name;
        kiln_tensor spec;
        if (kiln_onnx_input(g, i, &name, &spec) != KILN_OK)
            name = "?";
        int w = snprintf(buf + at, n - at, "%s%s", i ? ", " : "", name);
        if (w < 0)
            break;
        at += (size_t)w;
    }
    if (!buf[0])
        snprintf(buf, n, "none");
    return buf;
}

/* Decides input i's shape: the model's, with dynamic dimensions from --shape. */
static int fix_input(const kiln_onnx *g, size_t i, cli_shape_opt *opts, int n_opts,
                     const char **name_out, kiln_tensor *spec)
{
    const char *name;
    kiln_status s = kiln_onnx_input(g, i, &name, spec);
    if (s != KILN_OK)
        return cli_lib_error(s, "cannot read the model's inputs");
    *name_out = name;
    char have[300], want[300];
    cli_shape_opt *opt = NULL;
    for (int k = 0; k < n_opts; k++)
        if (strcmp(opts[k].name, name) == 0)
            opt = &opts[k];
    if (opt) {
        opt->used = 1;
        cli_shape_str(spec->ndim, spec->shape, have, sizeof have);
        cli_shape_str(opt->ndim, opt->shape, want, sizeof want);
        if (spec->ndim >= 0 && spec->ndim != opt->ndim)
            return cli_error("--shape %s: input '%s' has %d dimensions (%s), not %d", opt->spec,
                             name, (int)spec->ndim, have, opt->ndim);
        for (int d = 0; d < spec->ndim; d++)
            if (spec->shape[d] >= 0 && spec->shape[d] != opt->shape[d])
                return cli_error("--shape %s: dimension %d of input '%s' is fixed at %lld by the "
                                 "model (%s)", opt->spec, d, name, (long long)spec->shape[d], have);
        spec->ndim = opt->ndim;
        memcpy(spec->shape, opt->shape, sizeof opt->shape);
        return 0;
    }
    if (spec->ndim < 0)
        return cli_error("input '%s' has no declared shape: give it with --shape %s=DIMS", name, name);
    char dyn[128] = "";
    size_t at = 0;
    for (int d = 0; d < spec->ndim; d++) {
        if (spec->shape[d] >= 0)
            continue;
        int w = snprintf(dyn + at, sizeof dyn - at, "%s%d", at ? ", " : "", d);
        if (w > 0 && (size_t)w < sizeof dyn - at)
            at += (size_t)w;
    }
    if (at) {
        /* a ready-to-edit example: the model's shape with 1 for each dynamic dimension */
        kiln_tensor ex = *spec;
        for (int d = 0; d < ex.ndim; d++)
            if (ex.shape[d] < 0)
                ex.shape[d] = 1;
        return cli_error("input '%s' (%s) has dynamic dimension%s %s: fix %s with --shape %s=%s",
                         name, cli_shape_str(spec->ndim, spec->shape, have, sizeof have),
                         strchr(dyn, ',') ? "s" : "", dyn, strchr(dyn, ',') ? "them" : "it",
                         name, cli_shape_str(ex.ndim, ex.shape, want, sizeof want));
    }
    return 0;
}

static const char *load_mode(int lazy, int async)
{
    return lazy ? (async ? "lazy + async" : "lazy") : async ? "eager, async" : "eager";
}

static void print_tensor_line(const char *role, const char *name, const kiln_tensor *t)
{
    char spec[300];
    printf("  %-7s %s: %s\n", role, name, cli_spec_str(t, spec, sizeof spec));
}

int cli_trace(int argc, char **argv)
{
    const char *model_path = NULL, *out_path = NULL, *val;
    int lazy = 0, async = 0, n_opts = 0, rc = 0, r;
    cli_shape_opt *opts = calloc((size_t)argc, sizeof *opts);
    kiln_tensor *specs = NULL;
    kiln_onnx *g = NULL;
    kiln_model *m = NULL;
    kiln_status s;
    if (!opts)
        return cli_error("out of memory");

    for (int i = 2; i < argc && rc == 0; i++) {
        const char *a = argv[i];
        if ((r = cli_option(argc, argv, &i, "-o", &val, "trace")) ||
            (r = cli_option(argc, argv, &i, "--output", &val, "trace"))) {
            if (r < 0)
                rc = CLI_USAGE;
            else if (out_path)
                rc = cli_usage_error("trace", "-o given twice");
            else if (!*val)
                rc = cli_usage_error("trace", "-o needs a file name");
            else
                out_path = val;
        } else if ((r = cli_option(argc, argv, &i, "--shape", &val, "trace"))) {
            if (r < 0) {
                rc = CLI_USAGE;
                break;
            }
            cli_shape_opt *o = &opts[n_opts];
            const char *eq = strrchr(val, '=');
            char err[200];
            if (!eq || eq == val) {
                rc = cli_usage_error("trace", "--shape '%s': expected NAME=DIMS, e.g. x=1x3x224x224", val);
            } else if (!cli_parse_dims(eq + 1, &o->ndim, o->shape, err, sizeof err)) {
                rc = cli_usage_error("trace", "--shape '%s': bad shape '%s': %s", val, eq + 1, err);
            } else {
                o->spec = val;
                o->name = strndup(val, (size_t)(eq - val));
                if (!o->name) {
                    rc = cli_error("out of memory");
                    break;
                }
                for (int k = 0; k < n_opts; k++)
                    if (strcmp(opts[k].name, o->name) == 0)
                        rc = cli_usage_error("trace", "--shape given twice for input '%s'", o->name);
                n_opts++;
            }
        } else if (cli_flag(a, "--lazy")) {
            lazy = 1;
        } else if (cli_flag(a, "--async")) {
            async = 1;
        } else if (a[0] == '-' && a[1]) {
            rc = cli_usage_error("trace", "unknown option '%s'", a);
        } else if (model_path) {
            rc = cli_usage_error("trace", "unexpected argument '%s' (one model at a time)", a);
        } else {
            model_path = a;
        }
    }
    if (rc)
        goto done;
    if (!model_path) {
        rc = cli_usage_error("trace", "trace needs an ONNX model path");
        goto done;
    }
    if (!out_path) {
        rc = cli_usage_error("trace", "trace needs an output path: -o OUT.kiln");
        goto done;
    }

    if ((s = kiln_onnx_open(model_path, &g)) != KILN_OK) {
        rc = cli_lib_error(s, model_path);
        goto done;
    }
    size_t n_in = kiln_onnx_num_inputs(g);
    char names[1024];
    for (int k = 0; k < n_opts; k++) {
        int found = 0;
        for (size_t i = 0; i < n_in && !found; i++) {
            const char *name;
            kiln_tensor spec;
            found = kiln_onnx_input(g, i, &name, &spec) == KILN_OK && strcmp(name, opts[k].name) == 0;
        }
        if (!found) {
            rc = cli_error("--shape %s: the model has no input '%s' (inputs: %s)", opts[k].spec,
                           opts[k].name, input_list(g, names, sizeof names));
            goto done;
        }
    }
    specs = calloc(n_in ? n_in : 1, sizeof *specs);
    if (!specs) {
        rc = cli_error("out of memory");
        goto done;
    }
    for (size_t i = 0; i < n_in; i++) {
        const char *name;
        if ((rc = fix_input(g, i, opts, n_opts, &name, &specs[i])) != 0)
            goto done;
    }

    double t0 = cli_now_ms();
    if ((s = kiln_onnx_trace(g, specs, n_in, &m)) != KILN_OK) {
        rc = cli_lib_error(s, model_path);
        goto done;
    }
    double t1 = cli_now_ms();
    if ((s = kiln_lazy_load(m, lazy)) != KILN_OK || (s = kiln_async_load(m, async)) != KILN_OK) {
        rc = cli_lib_error(s, "cannot set the load flags");
        goto done;
    }
    double t2 = cli_now_ms();
    if ((s = kiln_save(m, out_path)) != KILN_OK) {
        rc = cli_lib_error(s, out_path);
        goto done;
    }
    double t3 = cli_now_ms();

    printf("traced %s in %.2f ms\n", model_path, t1 - t0);
    for (size_t i = 0; i < kiln_model_num_inputs(m); i++) {
        const char *name;
        kiln_tensor spec;
        if (kiln_model_input(m, i, &name, &spec) == KILN_OK)
            print_tensor_line("input", name, &spec);
    }
    for (size_t i = 0; i < kiln_model_num_outputs(m); i++) {
        const char *name;
        kiln_tensor spec;
        if (kiln_model_output(m, i, &name, &spec) == KILN_OK)
            print_tensor_line("output", name, &spec);
    }
    printf("  %-7s %s\n", "load", load_mode(lazy, async));
    struct stat st;
    char size[64] = "size unknown";
    if (stat(out_path, &st) == 0) {
        char human[32];
        snprintf(size, sizeof size, "%s, %lld bytes", cli_bytes_str((uint64_t)st.st_size, human,
                 sizeof human), (long long)st.st_size);
    }
    printf("saved %s in %.2f ms (%s)\n", out_path, t3 - t2, size);

done:
    kiln_model_free(m);
    kiln_onnx_free(g);
    for (int k = 0; k < n_opts; k++)
        free(opts[k].name);
    free(opts);
    free(specs);
    return rc;
}
