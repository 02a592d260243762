/*
 * run.c — `kiln run`: load an artifact, read its inputs from .npy files (by name or in
 * graph order), run it on one core or data-parallel, write every output to
 * DIR/<output name>.npy, and print the load report and forward times.
 */
#define _GNU_SOURCE
#include "cli/cli.h"
#include "cli/npy.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct cli_run_opts {
    const char  *artifact;
    const char **inputs;       /* the --input values, in order */
    int          n_inputs;
    const char  *out_dir;      /* NULL: current directory */
    const char  *cores_arg;    /* NULL: single core */
    int         *cores;
    size_t       n_cores;      /* 0 with cores_arg: all visible cores */
    int          dim, dim_given, dynamic_batching, dyn_given;
    long         repeat;
} cli_run_opts;

/* Everything one run owns, freed in one place. */
typedef struct cli_run_state {
    kiln_model  *m;
    kiln_dp     *dp;
    size_t       n_in, n_out;
    const char **in_names, **out_names;
    const char **in_paths;
    kiln_tensor *in_specs, *ins;
    kiln_tensor *outs;
    double      *times;
} cli_run_state;

static void run_state_free(cli_run_state *st)
{
    kiln_dp_free(st->dp);
    kiln_model_free(st->m);
    for (size_t i = 0; st->ins && i < st->n_in; i++)
        free(st->ins[i].data);
    for (size_t i = 0; st->outs && i < st->n_out; i++)
        free(st->outs[i].data);
    free(st->in_names);
    free(st->out_names);
    free(st->in_paths);
    free(st->in_specs);
    free(st->ins);
    free(st->outs);
    free(st->times);
}

/* "0,1", "0-3", "1,4-5" or "all" (n = 0). */
static int parse_cores(const char *s, int **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (strcmp(s, "all") == 0)
        return 0;
    size_t cap = 0;
    const char *p = s;
    for (;;) {
        long lo, hi;
        char *end;
        if (*p < '0' || *p > '9')
            return cli_usage_error("run", "--cores '%s': expected core ids like 0,1 or 0-3 or all", s);
        errno = 0;
        lo = hi = strtol(p, &end, 10);
        if (errno || lo > INT_MAX)
            return cli_usage_error("run", "--cores '%s': core id too large", s);
        p = end;
        if (*p == '-') {
            p++;
            if (*p < '0' || *p > '9')
                return cli_usage_error("run", "--cores '%s': bad range", s);
            hi = strtol(p, &end, 10);
            if (errno || hi > INT_MAX || hi < lo || hi - lo > 4096)
                return cli_usage_error("run", "--cores '%s': bad range", s);
            p = end;
        }
        for (long c = lo; c <= hi; c++) {
            for (size_t k = 0; k < *n; k++)
                if ((*out)[k] == c)
                    return cli_usage_error("run", "--cores '%s': core %ld listed twice", s, c);
            if (*n == cap) {
                cap = cap ? cap * 2 : 8;
                int *grown = realloc(*out, cap * sizeof **out);
                if (!grown)
                    return cli_error("out of memory");
                *out = grown;
            }
            (*out)[(*n)++] = (int)c;
        }
        if (!*p)
            return 0;
        if (*p != ',')
            return cli_usage_error("run", "--cores '%s': unexpected '%c'", s, *p);
        p++;
    }
}

static int parse_count(const char *opt, const char *s, long lo, long hi, long *v)
{
    char *end;
    errno = 0;
    long x = strtol(s, &end, 10);
    if (!*s || *end || errno || x < lo || x > hi)
        return cli_usage_error("run", "%s '%s': expected an integer from %ld to %ld", opt, s, lo, hi);
    *v = x;
    return 0;
}

static int parse_run_args(int argc, char **argv, cli_run_opts *o)
{
    const char *val;
    int r, rc = 0;
    o->inputs = calloc((size_t)argc, sizeof *o->inputs);
    o->dynamic_batching = 1;
    o->repeat = 1;
    if (!o->inputs)
        return cli_error("out of memory");
    for (int i = 2; i < argc && rc == 0; i++) {
        const char *a = argv[i];
        long v;
        if ((r = cli_option(argc, argv, &i, "--input", &val, "run")) ||
            (r = cli_option(argc, argv, &i, "-i", &val, "run"))) {
            if (r < 0)
                return CLI_USAGE;
            if (!*val)
                return cli_usage_error("run", "--input needs a FILE.npy or NAME=FILE.npy");
            o->inputs[o->n_inputs++] = val;
        } else if ((r = cli_option(argc, argv, &i, "--out", &val, "run"))) {
            if (r < 0)
                return CLI_USAGE;
            if (!*val)
                return cli_usage_error("run", "--out needs a directory");
            o->out_dir = val;
        } else if ((r = cli_option(argc, argv, &i, "--cores", &val, "run"))) {
            if (r < 0)
                return CLI_USAGE;
            free(o->cores);
            o->cores_arg = val;
            rc = parse_cores(val, &o->cores, &o->n_cores);
        } else if ((r = cli_option(argc, argv, &i, "--dim", &val, "run"))) {
            if (r < 0)
                return CLI_USAGE;
            rc = parse_count("--dim", val, 0, KILN_MAX_DIMS - 1, &v);
            o->dim = (int)v;
            o->dim_given = 1;
        } else if ((r = cli_option(argc, argv, &i, "--repeat", &val, "run"))) {
            if (r < 0)
                return CLI_USAGE;
            rc = parse_count("--repeat", val, 1, 1000000, &o->repeat);
        } else if (cli_flag(a, "--no-dynamic-batching")) {
            o->dynamic_batching = 0;
            o->dyn_given = 1;
        } else if (a[0] == '-' && a[1]) {
            rc = cli_usage_error("run", "unknown option '%s'", a);
        } else if (o->artifact) {
            rc = cli_usage_error("run", "unexpected argument '%s' (inputs go with --input)", a);
        } else {
            o->artifact = a;
        }
    }
    if (rc)
        return rc;
    if (!o->artifact)
        return cli_usage_error("run", "run needs an artifact path");
    if (!o->cores_arg && o->dim_given)
        return cli_usage_error("run", "--dim only applies with --cores");
    if (!o->cores_arg && o->dyn_given)
        return cli_usage_error("run", "--no-dynamic-batching only applies with --cores");
    return 0;
}

/* "x, y" for messages */
static const char *name_list(const char **names, size_t n, char *buf, size_t cap)
{
    size_t at = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n && at < cap; i++) {
        int w = snprintf(buf + at, cap - at, "%s%s", i ? ", " : "", names[i]);
        if (w < 0)
            break;
        at += (size_t)w;
    }
    if (!n)
        snprintf(buf, cap, "none");
    return buf;
}

/* Matches each --input to a graph input: NAME=FILE by name, a plain FILE by position. */
static int assign_inputs(const cli_run_opts *o, cli_run_state *st)
{
    char list[1024];
    size_t next = 0;
    for (int k = 0; k < o->n_inputs; k++) {
        const char *arg = o->inputs[k], *path = arg;
        size_t slot = st->n_in;
        /* the longest input name that is followed by '=' (names may contain '=') */
        size_t best = 0;
        for (size_t i = 0; i < st->n_in; i++) {
            size_t len = strlen(st->in_names[i]);
            if (strncmp(arg, st->in_names[i], len) == 0 && arg[len] == '=' && len + 1 > best) {
                best = len + 1;
                slot = i;
            }
        }
        if (slot < st->n_in) {
            path = arg + best;
            if (!*path)
                return cli_usage_error("run", "--input %s: no file given", arg);
        } else {
            const char *eq = strchr(arg, '=');
            struct stat sb;
            if (eq && stat(arg, &sb) != 0)
                return cli_error("--input %s: the model has no input '%.*s' (inputs: %s)", arg,
                                 (int)(eq - arg), arg, name_list(st->in_names, st->n_in, list,
                                                                 sizeof list));
            if (next >= st->n_in)
                return cli_error("--input %s: too many inputs (the model takes %zu: %s)", arg,
                                 st->n_in, name_list(st->in_names, st->n_in, list, sizeof list));
            slot = next++;
        }
        if (st->in_paths[slot])
            return cli_error("--input %s: input '%s' is already given (%s)", arg,
                             st->in_names[slot], st->in_paths[slot]);
        st->in_paths[slot] = path;
    }
    for (size_t i = 0; i < st->n_in; i++) {
        if (!st->in_paths[i]) {
            char spec[300];
            return cli_error("missing input '%s' (%s): give --input %s=FILE.npy", st->in_names[i],
                             cli_spec_str(&st->in_specs[i], spec, sizeof spec), st->in_names[i]);
        }
    }
    return 0;
}

/* Reads input i and checks it against the model; data-parallel lets dim differ. */
static int read_input(const cli_run_opts *o, cli_run_state *st, size_t i)
{
    const char *name = st->in_names[i], *path = st->in_paths[i];
    kiln_tensor *t = &st->ins[i];
    const kiln_tensor *want = &st->in_specs[i];
    kiln_status s = npy_read(path, t);
    if (s != KILN_OK)
        return cli_error("%s: input '%s': %s", kiln_status_name(s), name, npy_last_error());
    if (o->cores_arg && o->dim >= want->ndim)
        return cli_usage_error("run", "--dim %d: input '%s' has only %d dimensions", o->dim, name,
                               (int)want->ndim);
    int ok = t->dtype == want->dtype && t->ndim == want->ndim;
    for (int d = 0; ok && d < t->ndim; d++)
        ok = t->shape[d] == want->shape[d] || (o->cores_arg && d == o->dim && t->shape[d] > 0);
    if (!ok) {
        char ws[300], gs[300];
        cli_spec_str(want, ws, sizeof ws);
        cli_spec_str(t, gs, sizeof gs);
        if (o->cores_arg && t->dtype == want->dtype && t->ndim == want->ndim)
            return cli_error("%s: input '%s': expected %s (any size along --dim %d), got %s from %s",
                             kiln_status_name(KILN_ERR_SHAPE), name, ws, o->dim, gs, path);
        return cli_error("%s: input '%s': expected %s, got %s from %s",
                         kiln_status_name(KILN_ERR_SHAPE), name, ws, gs, path);
    }
    return 0;
}

/* Output i's tensor: the model's spec; with data-parallel, dim scaled like the first input's. */
static int alloc_output(const cli_run_opts *o, cli_run_state *st, size_t i)
{
    kiln_tensor *t = &st->outs[i];
    const char *name = st->out_names[i];
    if (o->cores_arg && st->n_in > 0) {
        int64_t traced_in = st->in_specs[0].shape[o->dim], given = st->ins[0].shape[o->dim];
        if (o->dim >= t->ndim)
            return cli_error("--dim %d: output '%s' has only %d dimensions, so data-parallel "
                             "cannot concatenate it", o->dim, name, (int)t->ndim);
        int64_t scaled;
        if (traced_in <= 0 || __builtin_mul_overflow(t->shape[o->dim], given, &scaled) ||
            scaled % traced_in != 0)
            return cli_error("output '%s': cannot size dimension %d for an input batch of %lld "
                             "(traced %lld)", name, o->dim, (long long)given, (long long)traced_in);
        t->shape[o->dim] = scaled / traced_in;
    }
    uint64_t bytes = kiln_dtype_size(t->dtype);
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] < 0 || __builtin_mul_overflow(bytes, (uint64_t)t->shape[d], &bytes))
            return cli_error("output '%s': bad shape", name);
    if (bytes > SIZE_MAX / 2 || !(t->data = malloc(bytes ? (size_t)bytes : 1)))
        return cli_error("out of memory for output '%s' (%llu bytes)", name, (unsigned long long)bytes);
    return 0;
}

/* A file name from an output name: only [A-Za-z0-9._-] kept, others (and a leading '.')
 * become '_', so no name can leave the output directory or hide itself. */
static void safe_name(const char *name, size_t index, char *buf, size_t n)
{
    size_t at = 0;
    for (const char *p = name; *p && at + 1 < n; p++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '_' || c == '-' || (c == '.' && at > 0);
        buf[at++] = ok ? c : '_';
    }
    buf[at] = '\0';
    if (!at)
        snprintf(buf, n, "output%zu", index);
}

static int ensure_dir(const char *dir)
{
    struct stat sb;
    if (stat(dir, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode))
            return cli_error("--out %s: not a directory", dir);
        return 0;
    }
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return cli_error("--out %s: cannot create the directory: %s", dir, strerror(errno));
    return 0;
}

static int write_outputs(const cli_run_opts *o, cli_run_state *st)
{
    int rc = 0;
    char (*files)[256] = calloc(st->n_out ? st->n_out : 1, sizeof *files);
    if (!files)
        return cli_error("out of memory");
    for (size_t i = 0; i < st->n_out && rc == 0; i++) {
        char base[200], path[4096], spec[300];
        safe_name(st->out_names[i], i, base, sizeof base);
        snprintf(files[i], sizeof files[i], "%s", base);
        for (size_t k = 0; k < i; k++)
            if (strcmp(files[k], files[i]) == 0)
                snprintf(files[i], sizeof files[i], "%s_%zu", base, i);
        if (o->out_dir)
            snprintf(path, sizeof path, "%s/%s.npy", o->out_dir, files[i]);
        else
            snprintf(path, sizeof path, "%s.npy", files[i]);
        kiln_status s = npy_write(path, &st->outs[i]);
        if (s != KILN_OK) {
            rc = cli_error("%s: output '%s': %s", kiln_status_name(s), st->out_names[i],
                           npy_last_error());
            break;
        }
        printf("output %s: %s -> %s\n", st->out_names[i],
               cli_spec_str(&st->outs[i], spec, sizeof spec), path);
    }
    free(files);
    return rc;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static const char *mode_str(const kiln_model *m)
{
    int lazy = kiln_model_is_lazy(m), async = kiln_model_is_async(m);
    return lazy ? (async ? "lazy + async" : "lazy") : async ? "eager, async" : "eager";
}

static int print_load_report(const cli_run_opts *o, const cli_run_state *st)
{
    kiln_load_report r;
    kiln_status s = kiln_model_load_report(st->m, &r);
    if (s != KILN_OK)
        return cli_lib_error(s, "cannot read the load report");
    char b1[32], b2[32], b3[32], b4[32];
    printf("load report:\n");
    printf("  phases  read %.2f ms, verify %.2f ms, place %.2f ms, kernels %.2f ms, total %.2f ms\n",
           r.read_ms, r.verify_ms, r.place_ms, r.kernels_ms, r.total_ms);
    printf("  bytes   file %s, weights %s (copied %s), arena %s per replica\n",
           cli_bytes_str(r.file_bytes, b1, sizeof b1), cli_bytes_str(r.weight_bytes, b2, sizeof b2),
           cli_bytes_str(r.copied_bytes, b3, sizeof b3), cli_bytes_str(r.arena_bytes, b4, sizeof b4));
    if (o->cores_arg && o->n_cores) {
        printf("  placed  %u placement%s:", r.placements, r.placements == 1 ? "" : "s");
        for (size_t k = 0; k < o->n_cores; k++)
            printf("%s core %d x%u", k ? "," : "", o->cores[k],
                   kiln_model_placements(st->m, o->cores[k]));
        printf("\n");
    } else if (r.core >= 0) {
        printf("  placed  %u placement%s, latest on core %d\n", r.placements,
               r.placements == 1 ? "" : "s", r.core);
    } else {
        printf("  placed  nothing yet\n");
    }
    return 0;
}

int cli_run(int argc, char **argv)
{
    cli_run_opts o = {0};
    cli_run_state st = {0};
    kiln_status s;
    int rc = parse_run_args(argc, argv, &o);
    if (rc)
        goto done;

    double t0 = cli_now_ms();
    if ((s = kiln_load(o.artifact, &st.m)) != KILN_OK) {
        rc = cli_lib_error(s, o.artifact);
        goto done;
    }
    double load_ms = cli_now_ms() - t0;

    st.n_in = kiln_model_num_inputs(st.m);
    st.n_out = kiln_model_num_outputs(st.m);
    size_t ni = st.n_in ? st.n_in : 1, no = st.n_out ? st.n_out : 1;
    st.in_names = calloc(ni, sizeof *st.in_names);
    st.in_paths = calloc(ni, sizeof *st.in_paths);
    st.in_specs = calloc(ni, sizeof *st.in_specs);
    st.ins = calloc(ni, sizeof *st.ins);
    st.out_names = calloc(no, sizeof *st.out_names);
    st.outs = calloc(no, sizeof *st.outs);
    st.times = calloc((size_t)o.repeat, sizeof *st.times);
    if (!st.in_names || !st.in_paths || !st.in_specs || !st.ins || !st.out_names || !st.outs ||
        !st.times) {
        rc = cli_error("out of memory");
        goto done;
    }
    for (size_t i = 0; i < st.n_in; i++)
        if ((s = kiln_model_input(st.m, i, &st.in_names[i], &st.in_specs[i])) != KILN_OK) {
            rc = cli_lib_error(s, "cannot read the model's inputs");
            goto done;
        }
    for (size_t i = 0; i < st.n_out; i++)
        if ((s = kiln_model_output(st.m, i, &st.out_names[i], &st.outs[i])) != KILN_OK) {
            rc = cli_lib_error(s, "cannot read the model's outputs");
            goto done;
        }
    if (o.cores_arg && st.n_in == 0) {
        rc = cli_error("--cores: the model has no input to split across cores");
        goto done;
    }
    if ((rc = assign_inputs(&o, &st)) != 0)
        goto done;
    for (size_t i = 0; i < st.n_in; i++)
        if ((rc = read_input(&o, &st, i)) != 0)
            goto done;
    for (size_t i = 0; i < st.n_out; i++)
        if ((rc = alloc_output(&o, &st, i)) != 0)
            goto done;

    if (o.out_dir && (rc = ensure_dir(o.out_dir)) != 0)
        goto done;

    printf("loaded %s (%s) in %.2f ms\n", o.artifact, mode_str(st.m), load_ms);
    if (o.cores_arg) {
        t0 = cli_now_ms();
        s = kiln_data_parallel(st.m, o.cores, o.n_cores, o.dim, o.dynamic_batching, &st.dp);
        if (s != KILN_OK) {
            rc = cli_lib_error(s, "data-parallel set-up failed");
            goto done;
        }
        printf("data-parallel on %s%s (dim %d, dynamic batching %s) set up in %.2f ms\n",
               o.n_cores ? "cores " : "all cores", o.n_cores ? o.cores_arg : "", o.dim,
               o.dynamic_batching ? "on" : "off", cli_now_ms() - t0);
    }
    for (long r = 0; r < o.repeat; r++) {
        t0 = cli_now_ms();
        s = st.dp ? kiln_dp_forward(st.dp, st.ins, st.n_in, st.outs, st.n_out)
                  : kiln_forward(st.m, st.ins, st.n_in, st.outs, st.n_out);
        if (s != KILN_OK) {
            rc = cli_lib_error(s, "forward failed");
            goto done;
        }
        st.times[r] = cli_now_ms() - t0;
    }
    if ((rc = print_load_report(&o, &st)) != 0)
        goto done;
    if (o.repeat == 1) {
        printf("forward %.3f ms\n", st.times[0]);
    } else {
        double first = st.times[0];
        qsort(st.times, (size_t)o.repeat, sizeof *st.times, cmp_double);
        double median = o.repeat % 2 ? st.times[o.repeat / 2]
                                     : (st.times[o.repeat / 2 - 1] + st.times[o.repeat / 2]) / 2;
        printf("forward x%ld: min %.3f ms, median %.3f ms, first %.3f ms\n", o.repeat, st.times[0],
               median, first);
    }
    rc = write_outputs(&o, &st);

done:
    run_state_free(&st);
    free(o.inputs);
    free(o.cores);
    return rc;
}
