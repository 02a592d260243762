/*
 * main.c — the `kiln` command: dispatch to trace / run / inspect, usage texts, and the
 * helpers every command shares (cli.h): the one-line error report, option matching,
 * shape and size strings, the clock. Uses only the public API in kiln.h.
 */
#define _GNU_SOURCE
#include "cli/cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char usage_main[] =
    "usage: kiln <command> [options]\n"
    "\n"
    "commands:\n"
    "  trace MODEL.onnx -o OUT.kiln [--shape NAME=1x3x224x224]... [--lazy] [--async]\n"
    "        compile an ONNX model for fixed input shapes into a .kiln artifact\n"
    "  run OUT.kiln [--input NAME=FILE.npy | --input FILE.npy]... [--out DIR]\n"
    "        [--cores 0,1 [--dim 0] [--no-dynamic-batching]] [--repeat N]\n"
    "        load an artifact, run it on .npy inputs, write DIR/<output>.npy\n"
    "  inspect OUT.kiln\n"
    "        print an artifact's flags, inputs, outputs, ops, sizes and checksums\n"
    "  load-bench A.kiln [B.kiln ...] [--mode MODE] [--no-run] [--repeat N] [--svg FILE]\n"
    "        load several artifacts eagerly, lazily or asynchronously; show a timeline\n"
    "\n"
    "  kiln help [COMMAND] | kiln COMMAND --help | kiln --version\n"
    "\n"
    "Cores are set by the environment: KILN_VISIBLE_CORES (e.g. 0-7), KILN_CORE_SIZE.\n"
    "Exit status: 0 success, 1 failure, 2 bad command line.\n";

static const char usage_trace[] =
    "usage: kiln trace MODEL.onnx -o OUT.kiln [--shape NAME=DIMS]... [--lazy] [--async]\n"
    "\n"
    "Compiles MODEL.onnx for fixed input shapes and saves the artifact OUT.kiln.\n"
    "\n"
    "  -o, --output OUT.kiln   where to write the artifact (written atomically)\n"
    "  --shape NAME=DIMS       the shape of input NAME, e.g. x=1x3x224x224 (or 1,3,224,224);\n"
    "                          required for every input with a dynamic dimension\n"
    "  --lazy                  the artifact loads lazily: nothing is placed on a core until\n"
    "                          the first forward or data-parallel call\n"
    "  --async                 the artifact loads in the background: kiln_load returns at once\n"
    "\n"
    "Input dtypes come from the model. Prints the inputs, outputs and the time taken.\n";

static const char usage_run[] =
    "usage: kiln run OUT.kiln [--input NAME=FILE.npy | --input FILE.npy]... [--out DIR]\n"
    "                [--cores LIST [--dim D] [--no-dynamic-batching]] [--repeat N]\n"
    "\n"
    "Loads the artifact, runs it on NumPy .npy inputs and writes every output to\n"
    "DIR/<output name>.npy. Prints how the load went and how long the forward took.\n"
    "\n"
    "  -i, --input NAME=FILE.npy  input NAME from FILE.npy\n"
    "  -i, --input FILE.npy       the next input in the graph's order\n"
    "                             (every input is required; dtype and shape must match)\n"
    "  --out DIR                  where outputs go (default: the current directory;\n"
    "                             created if missing)\n"
    "  --cores LIST               run data-parallel on these cores: 0,1 or 0-3 or all\n"
    "  --dim D                    the dimension inputs are split along (default 0)\n"
    "  --no-dynamic-batching      the batch along D must be exactly cores x traced size\n"
    "  --repeat N                 run the forward N times; print min and median\n";

static const char usage_load_bench[] =
    "usage: kiln load-bench A.kiln [B.kiln ...] [--mode MODE] [--no-run] [--repeat N] [--svg FILE]\n"
    "\n"
    "Loads the artifacts as a server starting a pipeline would, runs each once on zero\n"
    "inputs, and prints when each phase of each load happened (read, verify, place,\n"
    "kernels, first forward), in ms from the first kiln_load.\n"
    "\n"
    "  --mode MODE   as-saved (default: each artifact's flags), eager (one after another),\n"
    "                async (all in the background at once), lazy (each placed by its first\n"
    "                forward, in turn), lazy-async (placed by first forwards run together)\n"
    "  --no-run      (eager and async) run nothing: time until every model is loaded\n"
    "  --repeat N    repeat the whole round N times; print the median\n"
    "  --svg FILE    draw the last round's timeline as an SVG picture\n";

static const char usage_inspect[] =
    "usage: kiln inspect OUT.kiln\n"
    "\n"
    "Prints the artifact's load flags, inputs and outputs, op counts, sizes and whether\n"
    "every checksum holds. Exits non-zero if the artifact is damaged.\n";

/* ---- errors ---- */

static void cli_verror(const char *fmt, va_list ap)
{
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    fflush(stdout);
    fprintf(stderr, "kiln: error: %s\n", msg);
}

int cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cli_verror(fmt, ap);
    va_end(ap);
    return CLI_FAIL;
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (cmd)
        cli_error("%s (see 'kiln %s --help')", msg, cmd);
    else
        cli_error("%s (see 'kiln --help')", msg);
    return CLI_USAGE;
}

int cli_lib_error(kiln_status s, const char *what)
{
    const char *msg = kiln_last_error();
    return cli_error("%s: %s", kiln_status_name(s), msg && *msg ? msg : what);
}

/* ---- options ---- */

static int cli_is_help(const char *arg)
{
    return strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0;
}

int cli_flag(const char *arg, const char *name)
{
    return strcmp(arg, name) == 0;
}

int cli_option(int argc, char **argv, int *i, const char *name, const char **val,
               const char *cmd)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0)
        return 0;
    if (a[n] == '=') {
        *val = a + n + 1;
    } else if (a[n] == '\0') {
        if (*i + 1 >= argc) {
            cli_usage_error(cmd, "option %s needs a value", name);
            return -1;
        }
        *val = argv[++*i];
    } else {
        return 0;
    }
    return 1;
}

/* ---- shapes, sizes, time ---- */

int cli_parse_dims(const char *s, int *ndim, int64_t *shape, char *err, size_t errn)
{
    int n = 0;
    const char *p = s;
    if (!*p) {
        snprintf(err, errn, "the shape is empty");
        return 0;
    }
    int64_t total = 1;
    for (;;) {
        const char *start = p;
        int64_t v = 0;
        while (*p >= '0' && *p <= '9') {
            if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, *p - '0', &v)) {
                snprintf(err, errn, "dimension %d is too large", n);
                return 0;
            }
            p++;
        }
        if (p == start) {
            if (*p == 'x' || *p == 'X' || *p == ',' || !*p)
                snprintf(err, errn, "dimension %d is empty", n);
            else
                snprintf(err, errn, "dimension %d: '%c' is not a digit (dimensions are positive "
                         "integers joined by 'x')", n, *p);
            return 0;
        }
        if (*p && *p != 'x' && *p != 'X' && *p != ',') {
            snprintf(err, errn, "dimension %d: '%c' is not a digit (dimensions are positive "
                     "integers joined by 'x')", n, *p);
            return 0;
        }
        if (v == 0) {
            snprintf(err, errn, "dimension %d is 0 (dimensions must be positive)", n);
            return 0;
        }
        if (n == KILN_MAX_DIMS) {
            snprintf(err, errn, "more than %d dimensions", KILN_MAX_DIMS);
            return 0;
        }
        if (__builtin_mul_overflow(total, v, &total)) {
            snprintf(err, errn, "too many elements");
            return 0;
        }
        shape[n++] = v;
        if (!*p)
            break;
        p++;
    }
    *ndim = n;
    return 1;
}

const char *cli_shape_str(int ndim, const int64_t *shape, char *buf, size_t n)
{
    size_t at = 0;
    buf[0] = '\0';
    if (ndim <= 0) {
        snprintf(buf, n, ndim == 0 ? "scalar" : "?");
        return buf;
    }
    for (int i = 0; i < ndim && at < n; i++) {
        int w = shape[i] < 0 ? snprintf(buf + at, n - at, "%s?", i ? "x" : "")
                             : snprintf(buf + at, n - at, "%s%lld", i ? "x" : "", (long long)shape[i]);
        if (w < 0)
            break;
        at += (size_t)w;
    }
    return buf;
}

const char *cli_spec_str(const kiln_tensor *t, char *buf, size_t n)
{
    char shape[256];
    snprintf(buf, n, "%s %s", kiln_dtype_name(t->dtype), cli_shape_str(t->ndim, t->shape, shape,
                                                                        sizeof shape));
    return buf;
}

const char *cli_bytes_str(uint64_t b, char *buf, size_t n)
{
    if (b < 1024)
        snprintf(buf, n, "%llu B", (unsigned long long)b);
    else if (b < 1024 * 1024)
        snprintf(buf, n, "%.1f KiB", (double)b / 1024);
    else if (b < 1024ull * 1024 * 1024)
        snprintf(buf, n, "%.1f MiB", (double)b / (1024 * 1024));
    else
        snprintf(buf, n, "%.2f GiB", (double)b / (1024.0 * 1024 * 1024));
    return buf;
}

double cli_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- inspect ---- */

static int cli_inspect(int argc, char **argv)
{
    const char *path = NULL;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] == '-' && a[1])
            return cli_usage_error("inspect", "unknown option '%s'", a);
        if (path)
            return cli_usage_error("inspect", "unexpected argument '%s'", a);
        path = a;
    }
    if (!path)
        return cli_usage_error("inspect", "inspect needs an artifact path");
    kiln_status s = kiln_inspect(path, stdout);
    fflush(stdout);
    return s == KILN_OK ? 0 : cli_lib_error(s, path);
}

/* ---- dispatch ---- */

static const struct {
    const char *name;
    int (*run)(int, char **);
    const char *usage;
} commands[] = {
    {"trace", cli_trace, usage_trace},
    {"run", cli_run, usage_run},
    {"inspect", cli_inspect, usage_inspect},
    {"load-bench", cli_load_bench, usage_load_bench},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static int find_command(const char *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(name, commands[i].name) == 0)
            return (int)i;
    return -1;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return cli_usage_error(NULL, "no command given (commands: trace, run, inspect)");
    const char *cmd = argv[1];
    if (cli_is_help(cmd) || strcmp(cmd, "help") == 0) {
        if (argc > 2 && strcmp(cmd, "help") == 0) {
            int c = find_command(argv[2]);
            if (c < 0)
                return cli_usage_error(NULL, "unknown command '%s' (commands: trace, run, inspect)",
                                       argv[2]);
            fputs(commands[c].usage, stdout);
            return 0;
        }
        fputs(usage_main, stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("kiln %d.%d.%d\n", KILN_VERSION_MAJOR, KILN_VERSION_MINOR, KILN_VERSION_PATCH);
        return 0;
    }
    int c = find_command(cmd);
    if (c < 0) {
        if (cmd[0] == '-')
            return cli_usage_error(NULL, "unknown option '%s'", cmd);
        return cli_usage_error(NULL, "unknown command '%s' (commands: trace, run, inspect)", cmd);
    }
    for (int i = 2; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            fputs(commands[c].usage, stdout);
            return 0;
        }
    }
    int rc = commands[c].run(argc, argv);
    if (fflush(stdout) != 0 && rc == 0)
        return cli_error("writing to standard output failed: %s", strerror(errno));
    return rc;
}
