/*
 * onnx_node_tests.c — the ONNX conformance runner: every backend node test of ONNX's test
 * data (model.onnx + test_data_set_0/{input,output}_N.pb) traced by kiln, run, and compared
 * with the reference outputs. Each test runs in its own child process with a time limit, so
 * a crash or hang fails that test only.
 *
 *   onnx_node_tests [DIR] [--filter SUBSTR] [-v] [--ops-out FILE] [--table-out FILE]
 *                   [--exclusions FILE]
 *
 * A test is: passed (outputs match), unsupported (the import or trace says
 * KILN_ERR_UNSUPPORTED: a deliberate gap, reported with its reason), FAILED (any other error,
 * a mismatch, a crash or a timeout), or excluded (listed in the exclusions file, with the
 * reason). Floats match when max|got - ref| <= atol + rtol * max|ref| (NaN matches NaN);
 * integers and bools match exactly. Exit status 1 if any test failed.
 *
 * When trace says an input "must be known at trace time" (a shape, axes, bounds, scales:
 * kiln compiles for fixed shapes), the graph input it is (or is computed from) becomes an
 * initializer holding the test's data and the test is traced again; such passes are counted
 * apart ("bound at trace time").
 * An op is supported when kiln lowers it (kc_op_table) and at least one of its tests passes;
 * the summary also lists the unsupported variants of supported ops with their reasons, the
 * ops that pass only as written-out functions (_expanded tests), and the ops kiln lowers
 * that no test passes. --ops-out writes the supported ops, one a line; --table-out a
 * tab-separated table of all that (lines "op", "unsupported", "expanded", "untested",
 * "excluded", and one "test" line per test: name, op, verdict, bound inputs, message), which
 * tests/operators_doc.py turns into docs/OPERATORS.md.
 */
#define _GNU_SOURCE
#include "kiln.h"
#include "onnx/graph.h"
#include "compiler/lower.h"
#include "onnx.pb-c.h"

#include <dirent.h>
#include <stdarg.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_DIR "/usr/share/libonnx-testdata/data/node"
#define TIMEOUT_S   20
#define ATOL        1e-5
#define MAX_IO      64

/* ---- small utilities ---- */

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fprintf(stderr, "onnx_node_tests: out of memory\n");
        exit(2);
    }
    return q;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(xrealloc(NULL, n), s, n);
}

/* A growing string. */
typedef struct strbuf {
    char  *s;
    size_t n, cap;
} strbuf;

static void sb_add(strbuf *b, const char *data, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->s = xrealloc(b->s, b->cap);
    }
    memcpy(b->s + b->n, data, n);
    b->n += n;
    b->s[b->n] = '\0';
}

/* path = printf(fmt, ...) into a PATH_LEN buffer (an over-long path just fails to open). */
#define PATH_LEN 4096
static void mkpath(char *path, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void mkpath(char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(path, PATH_LEN, fmt, ap);
    va_end(ap);
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* ---- exclusions: "test_name  reason", # comments ---- */

typedef struct exclusion {
    char *name, *reason;
    bool  seen;
} exclusion;

static exclusion *excl;
static size_t     n_excl;

static void read_exclusions(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "onnx_node_tests: cannot read exclusions %s (%s): running everything\n",
                path, strerror(errno));
        return;
    }
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        char *name = p;
        while (*p && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
            p++;
        if (p == name)
            continue;
        if (*p)
            *p++ = '\0';
        while (*p == ' ' || *p == '\t')
            p++;
        char *reason = p;
        size_t rl = strlen(reason);
        while (rl && (reason[rl - 1] == '\n' || reason[rl - 1] == '\r' || reason[rl - 1] == ' '
                      || reason[rl - 1] == '\t'))
            reason[--rl] = '\0';
        excl = xrealloc(excl, (n_excl + 1) * sizeof *excl);
        excl[n_excl].name = xstrdup(name);
        excl[n_excl].reason = xstrdup(rl ? reason : "(no reason given)");
        excl[n_excl].seen = false;
        n_excl++;
    }
    fclose(f);
}

static exclusion *find_exclusion(const char *name)
{
    for (size_t i = 0; i < n_excl; i++) {
        if (strcmp(excl[i].name, name) == 0)
            return &excl[i];
    }
    return NULL;
}

/* ---- the child: one test, reported on a pipe as lines "O op", "M message", "R P|U|F" ---- */

static FILE *report;

static void say(char kind, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(char kind, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (char *c = msg; *c; c++) {
        if (*c == '\n' || *c == '\r')
            *c = ' ';
    }
    fprintf(report, "%c %s\n", kind, msg);
    fflush(report);
}

/* The op types of the model's nodes, in order, without repeats; Constant only if alone. */
static void report_ops(const char *model)
{
    FILE *f = fopen(model, "rb");
    if (!f)
        return;
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap)
            buf = xrealloc(buf, cap = cap ? cap * 2 : 65536);
        size_t r = fread(buf + n, 1, cap - n, f);
        if (r == 0)
            break;
        n += r;
    }
    fclose(f);
    Onnx__ModelProto *mp = onnx__model_proto__unpack(NULL, n, buf);
    free(buf);
    if (!mp)
        return;
    if (mp->graph) {
        const Onnx__GraphProto *g = mp->graph;
        int reported = 0;
        for (int pass = 0; pass < 2 && !reported; pass++) {
            for (size_t i = 0; i < g->n_node; i++) {
                const char *op = g->node[i]->op_type ? g->node[i]->op_type : "?";
                if (pass == 0 && strcmp(op, "Constant") == 0)
                    continue;
                bool dup = false;
                for (size_t j = 0; j < i; j++)
                    dup |= g->node[j]->op_type && strcmp(g->node[j]->op_type, op) == 0;
                if (!dup) {
                    say('O', "%s", op);
                    reported++;
                }
            }
        }
    }
    onnx__model_proto__free_unpacked(mp, NULL);
}

/* kg_read_tensor_file, except that a uint16 tensor is taken as bfloat16 where the graph
 * declares bfloat16: ONNX's test data stores bfloat16 that way (numpy has no bfloat16). */
static kiln_status read_tensor(const char *path, kiln_dtype want, kg_tensor **out)
{
    kiln_status st = kg_read_tensor_file(path, out, NULL);
    if (st != KILN_ERR_UNSUPPORTED || want != KILN_BF16)
        return st;
    FILE *f = fopen(path, "rb");
    if (!f)
        return st;
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap)
            buf = xrealloc(buf, cap = cap ? cap * 2 : 65536);
        size_t r = fread(buf + n, 1, cap - n, f);
        if (r == 0)
            break;
        n += r;
    }
    fclose(f);
    Onnx__TensorProto *tp = onnx__tensor_proto__unpack(NULL, n, buf);
    free(buf);
    kg_tensor *t = NULL;
    if (tp && tp->data_type == ONNX__TENSOR_PROTO__DATA_TYPE__UINT16 && tp->n_dims <= KILN_MAX_DIMS) {
        t = kiln__calloc(1, sizeof *t);
        t->dtype = KILN_BF16;
        t->ndim = (int)tp->n_dims;
        for (int d = 0; d < t->ndim; d++)
            t->shape[d] = tp->dims[d];
        int64_t numel = kiln__numel(t->ndim, t->shape);
        t->nbytes = numel > 0 ? (size_t)numel * 2 : 0;
        t->data = t->nbytes ? kiln__malloc(t->nbytes) : NULL;
        if (numel < 0 || (t->nbytes && !t->data)) {
            kg_tensor_free(t);
            t = NULL;
        } else if (tp->has_raw_data && tp->raw_data.len == t->nbytes) {
            if (t->nbytes)
                memcpy(t->data, tp->raw_data.data, t->nbytes);
        } else if (tp->n_int32_data == (size_t)numel) {
            for (int64_t i = 0; i < numel; i++)
                ((uint16_t *)t->data)[i] = (uint16_t)tp->int32_data[i];
        } else {
            kg_tensor_free(t);
            t = NULL;
        }
    }
    onnx__tensor_proto__free_unpacked(tp, NULL);
    if (!t)
        return st;
    *out = t;
    return KILN_OK;
}

static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp == 0) {
        float v = ldexpf((float)man, -24);
        return sign ? -v : v;
    } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static double elem_as_double(const void *data, kiln_dtype t, size_t i)
{
    switch (t) {
    case KILN_F32: return ((const float *)data)[i];
    case KILN_F64: return ((const double *)data)[i];
    case KILN_F16: return f16_to_f32(((const uint16_t *)data)[i]);
    case KILN_BF16: {
        uint32_t bits = (uint32_t)((const uint16_t *)data)[i] << 16;
        float f;
        memcpy(&f, &bits, 4);
        return f;
    }
    case KILN_I8: return ((const int8_t *)data)[i];
    case KILN_U8: return ((const uint8_t *)data)[i];
    case KILN_I32: return ((const int32_t *)data)[i];
    case KILN_I64: return (double)((const int64_t *)data)[i];
    case KILN_BOOL: return ((const uint8_t *)data)[i] != 0;
    }
    return 0;
}

static bool is_float(kiln_dtype t)
{
    return t == KILN_F32 || t == KILN_F64 || t == KILN_F16 || t == KILN_BF16;
}

/* Relative tolerance per dtype: f16/bf16 results are rounded to far fewer bits. */
static double rtol_of(kiln_dtype t)
{
    return t == KILN_F16 ? 1e-3 : t == KILN_BF16 ? 1e-2 : 1e-4;
}

/* Compares one output; false (with a message) on a mismatch. */
static bool compare(const char *name, kiln_dtype t, size_t n, const void *got, const void *ref,
                    char *msg, size_t msgn)
{
    if (!is_float(t)) {
        size_t sz = kiln_dtype_size(t);
        for (size_t i = 0; i < n; i++) {
            bool same = t == KILN_BOOL ? ((((const uint8_t *)got)[i] != 0) == (((const uint8_t *)ref)[i] != 0))
                                       : memcmp((const char *)got + i * sz, (const char *)ref + i * sz, sz) == 0;
            if (!same) {
                size_t bad = 0;
                for (size_t j = i; j < n; j++)
                    bad += memcmp((const char *)got + j * sz, (const char *)ref + j * sz, sz) != 0;
                snprintf(msg, msgn, "output '%s' (%s): %zu of %zu elements differ, first at %zu: got %.17g, want %.17g",
                         name, kiln_dtype_name(t), bad, n, i, elem_as_double(got, t, i),
                         elem_as_double(ref, t, i));
                return false;
            }
        }
        return true;
    }
    double maxref = 0;
    for (size_t i = 0; i < n; i++) {
        double r = elem_as_double(ref, t, i);
        if (isfinite(r) && fabs(r) > maxref)
            maxref = fabs(r);
    }
    double tol = ATOL + rtol_of(t) * maxref, worst = 0;
    size_t bad = 0, first = n;
    for (size_t i = 0; i < n; i++) {
        double r = elem_as_double(ref, t, i), o = elem_as_double(got, t, i);
        bool ok;
        if (isnan(r))
            ok = isnan(o);
        else if (isinf(r))
            ok = o == r;
        else
            ok = isfinite(o) && fabs(o - r) <= tol;
        if (!ok) {
            bad++;
            if (first == n)
                first = i;
            double d = isfinite(o) ? fabs(o - r) : INFINITY;
            if (d > worst || isnan(d))
                worst = d;
        }
    }
    if (!bad)
        return true;
    snprintf(msg, msgn, "output '%s' (%s): %zu of %zu elements off, max |diff| %.3g > tolerance %.3g; "
             "first at %zu: got %.9g, want %.9g",
             name, kiln_dtype_name(t), bad, n, worst, tol, first, elem_as_double(got, t, first),
             elem_as_double(ref, t, first));
    return false;
}

static bool same_shape(int na, const int64_t *a, int nb, const int64_t *b)
{
    if (na != nb)
        return false;
    for (int i = 0; i < na; i++) {
        if (a[i] != b[i])
            return false;
    }
    return true;
}

/* ---- parameters bound at trace time ----
 * kiln compiles for fixed shapes, so what decides a shape or a lowering (Reshape's shape,
 * Slice's starts/ends, Unsqueeze's axes, Clip's bounds, Resize's scales, ...) must be known at
 * trace time. Many node tests feed those as graph inputs; a user of kiln would make them
 * initializers. When trace refuses a test because such an input is not known, the runner
 * does that for the user: it turns that graph input (or the graph inputs the value is
 * computed from) into initializers holding the test's data and traces again (for as many
 * inputs as it takes). Such a test passes "with
 * parameters bound at trace time" and is counted apart. */

/* The input name in trace's "input 'NAME' must be known at trace time" message, if any. */
static bool trace_time_input(const char *msg, char *name, size_t n)
{
    const char *end = strstr(msg, "' must be known at trace time");
    if (!end)
        return false;
    const char *start = end;
    while (start > msg && start[-1] != '\'')
        start--;
    if (start == msg || start - 7 < msg || strncmp(start - 7, "input '", 7) != 0)
        return false;
    size_t l = (size_t)(end - start);
    if (l == 0 || l >= n)
        return false;
    memcpy(name, start, l);
    name[l] = '\0';
    return true;
}

/* Adds to in_mask the graph inputs (positions in g->inputs) that value v is computed from
 * (v itself if it is one). */
static void upstream_inputs(const kg_graph *g, int v, bool *seen, bool *in_mask)
{
    if (v < 0 || seen[v])
        return;
    seen[v] = true;
    for (int i = 0; i < g->n_inputs; i++) {
        if (g->inputs[i] == v) {
            in_mask[i] = true;
            return;
        }
    }
    for (int k = 0; k < g->n_nodes; k++) {
        const kg_node *nd = &g->nodes[k];
        for (int o = 0; o < nd->n_out; o++) {
            if (nd->out[o] == v) {
                for (int j = 0; j < nd->n_in; j++)
                    upstream_inputs(g, nd->in[j], seen, in_mask);
                return;
            }
        }
    }
}

/* Makes graph input `name` of g an initializer holding a copy of t. False if g has no such
 * input, or on NOMEM. */
static bool bind_input(kiln_onnx *g, const char *name, const kg_tensor *t)
{
    kg_graph *gr = g->graph;
    for (int i = 0; i < gr->n_inputs; i++) {
        kg_value *v = &gr->values[gr->inputs[i]];
        if (strcmp(v->name, name) != 0)
            continue;
        kg_tensor *c = kiln__calloc(1, sizeof *c);
        if (!c)
            return false;
        *c = *t;
        c->data = t->nbytes ? kiln__malloc(t->nbytes) : NULL;
        if (t->nbytes && !c->data) {
            kiln__free(c);
            return false;
        }
        if (t->nbytes)
            memcpy(c->data, t->data, t->nbytes);
        v->constant = c;
        v->dtype = c->dtype;
        v->ndim = c->ndim;
        for (int d = 0; d < KILN_MAX_DIMS; d++)
            v->shape[d] = d < c->ndim ? c->shape[d] : -1;
        memmove(&gr->inputs[i], &gr->inputs[i + 1], sizeof *gr->inputs * (size_t)(gr->n_inputs - i - 1));
        gr->n_inputs--;
        return true;
    }
    return false;
}

/* The test itself; returns 'P', 'U' or 'F' after saying why (and "B name" for each input
bound at trace time). */
static char run_one(const char *dir)
{
    char path[PATH_LEN], s1[128], s2[128];
    mkpath(path, "%s/model.onnx", dir);
    report_ops(path);

    kiln_onnx *g = NULL;
    kiln_model *m = NULL;
    kg_tensor *in_t[MAX_IO] = { 0 }, *ref_t[MAX_IO] = { 0 };
    char *in_name[MAX_IO] = { 0 };
    void *out_buf[MAX_IO] = { 0 };
    size_t n_in = 0, n_out = 0;
    char verdict = 'F';

    kiln_status st = kiln_onnx_open(path, &g);
    if (st != KILN_OK) {
        say('M', "import: %s: %s", kiln_status_name(st), kiln_last_error());
        return st == KILN_ERR_UNSUPPORTED ? 'U' : 'F';
    }

    /* example inputs: test_data_set_0/input_N.pb, in the graph's input order */
    n_in = kiln_onnx_num_inputs(g);
    size_t files = 0;
    for (;; files++) {
        mkpath(path, "%s/test_data_set_0/input_%zu.pb", dir, files);
        if (!file_exists(path))
            break;
    }
    if (n_in > MAX_IO || files != n_in) {
        say('M', "the graph has %zu inputs, test_data_set_0 has %zu input files", n_in, files);
        goto done;
    }
    kiln_tensor inputs[MAX_IO];
    for (size_t i = 0; i < n_in; i++) {
        const char *name;
        kiln_tensor spec;
        if ((st = kiln_onnx_input(g, i, &name, &spec)) != KILN_OK) {
            say('M', "kiln_onnx_input(%zu): %s: %s", i, kiln_status_name(st), kiln_last_error());
            goto done;
        }
        mkpath(path, "%s/test_data_set_0/input_%zu.pb", dir, i);
        if ((st = read_tensor(path, spec.dtype, &in_t[i])) != KILN_OK) {
            say('M', "reading input_%zu.pb: %s: %s", i, kiln_status_name(st), kiln_last_error());
            verdict = st == KILN_ERR_UNSUPPORTED ? 'U' : 'F';
            goto done;
        }
        kg_tensor *t = in_t[i];
        if (t->dtype != spec.dtype || t->ndim != spec.ndim) {
            say('M', "input '%s': the data is %s %s, the graph declares %s rank %d", name,
                kiln_dtype_name(t->dtype), kiln__shape_str(t->ndim, t->shape, s1, sizeof s1),
                kiln_dtype_name(spec.dtype), spec.ndim);
            goto done;
        }
        in_name[i] = xstrdup(name);
        memset(&inputs[i], 0, sizeof inputs[i]);
        inputs[i].dtype = t->dtype;
        inputs[i].ndim = t->ndim;
        memcpy(inputs[i].shape, t->shape, sizeof t->shape);
        inputs[i].data = t->data ? t->data : (void *)&inputs[i]; /* empty: any valid pointer */
    }

    /* trace; an input that must be known at trace time becomes an initializer, and again */
    bool bound[MAX_IO] = { false };
    kiln_tensor live[MAX_IO]; /* the inputs still inputs, in the graph's order */
    size_t n_live = n_in;
    memcpy(live, inputs, sizeof inputs[0] * n_in);
    for (;;) {
        st = kiln_onnx_trace(g, live, n_live, &m);
        if (st == KILN_OK)
            break;
        /* the graph inputs the named value is (or is computed from) */
        char bname[256];
        bool want[MAX_IO] = { false }, any = false;
        if (st == KILN_ERR_UNSUPPORTED && trace_time_input(kiln_last_error(), bname, sizeof bname)) {
            const kg_graph *gr = g->graph;
            bool *seen = calloc((size_t)gr->n_values + 1, 1), in_mask[MAX_IO] = { false };
            for (int v = 0; v < gr->n_values && seen; v++) {
                if (strcmp(gr->values[v].name, bname) == 0) {
                    upstream_inputs(gr, v, seen, in_mask);
                    break;
                }
            }
            free(seen);
            for (int i = 0; i < gr->n_inputs && i < MAX_IO; i++) {
                if (!in_mask[i])
                    continue;
                const char *iname = gr->values[gr->inputs[i]].name;
                for (size_t k = 0; k < n_in; k++) {
                    if (!bound[k] && strcmp(in_name[k], iname) == 0)
                        want[k] = any = true;
                }
            }
        }
        if (!any) {
            say('M', "trace: %s: %s", kiln_status_name(st), kiln_last_error());
            verdict = st == KILN_ERR_UNSUPPORTED ? 'U' : 'F';
            goto done;
        }
        for (size_t k = 0; k < n_in; k++) {
            if (!want[k])
                continue;
            if (!bind_input(g, in_name[k], in_t[k])) {
                say('M', "binding input '%s' at trace time failed", in_name[k]);
                goto done;
            }
            bound[k] = true;
            say('B', "%s", in_name[k]);
        }
        n_live = 0;
        for (size_t i = 0; i < n_in; i++) {
            if (!bound[i])
                live[n_live++] = inputs[i];
        }
    }

    /* outputs: shapes and dtypes as the model declares them, checked against the reference */
    n_out = kiln_model_num_outputs(m);
    files = 0;
    for (;; files++) {
        mkpath(path, "%s/test_data_set_0/output_%zu.pb", dir, files);
        if (!file_exists(path))
            break;
    }
    if (n_out > MAX_IO || files != n_out) {
        say('M', "the model has %zu outputs, test_data_set_0 has %zu output files", n_out, files);
        n_out = 0;
        goto done;
    }
    kiln_tensor outputs[MAX_IO];
    const char *out_name[MAX_IO];
    for (size_t i = 0; i < n_out; i++) {
        if ((st = kiln_model_output(m, i, &out_name[i], &outputs[i])) != KILN_OK) {
            say('M', "kiln_model_output(%zu): %s: %s", i, kiln_status_name(st), kiln_last_error());
            goto done;
        }
        mkpath(path, "%s/test_data_set_0/output_%zu.pb", dir, i);
        if ((st = read_tensor(path, outputs[i].dtype, &ref_t[i])) != KILN_OK) {
            say('M', "reading output_%zu.pb: %s: %s", i, kiln_status_name(st), kiln_last_error());
            verdict = st == KILN_ERR_UNSUPPORTED ? 'U' : 'F';
            goto done;
        }
        const kg_tensor *r = ref_t[i];
        if (outputs[i].dtype != r->dtype
            || !same_shape(outputs[i].ndim, outputs[i].shape, r->ndim, r->shape)) {
            say('M', "output '%s': kiln declares %s %s, the reference is %s %s", out_name[i],
                kiln_dtype_name(outputs[i].dtype),
                kiln__shape_str(outputs[i].ndim, outputs[i].shape, s1, sizeof s1),
                kiln_dtype_name(r->dtype), kiln__shape_str(r->ndim, r->shape, s2, sizeof s2));
            goto done;
        }
        out_buf[i] = calloc(1, r->nbytes ? r->nbytes : 1);
        outputs[i].data = out_buf[i];
    }

    if ((st = kiln_forward(m, live, n_live, outputs, n_out)) != KILN_OK) {
        say('M', "forward: %s: %s", kiln_status_name(st), kiln_last_error());
        goto done;
    }
    verdict = 'P';
    for (size_t i = 0; i < n_out; i++) {
        char msg[1024];
        const kg_tensor *r = ref_t[i];
        size_t n = r->nbytes / kiln_dtype_size(r->dtype);
        if (!compare(out_name[i], r->dtype, n, out_buf[i], r->data, msg, sizeof msg)) {
            say('M', "%s", msg);
            verdict = 'F';
        }
    }

done:
    for (size_t i = 0; i < MAX_IO; i++) {
        kg_tensor_free(in_t[i]);
        kg_tensor_free(ref_t[i]);
        free(in_name[i]);
        free(out_buf[i]);
    }
    kiln_model_free(m);
    kiln_onnx_free(g);
    return verdict;
}

/* ---- the parent: fork, collect the child's report, enforce the time limit ---- */

typedef struct result {
    char *name;
    char *op;        /* the op type the test belongs to (see assign_ops) */
    char *ops;       /* the model's op types, space separated */
    char  verdict;   /* 'P' passed, 'U' unsupported, 'F' failed, 'X' excluded */
    char *msg;
    char *bound;     /* graph inputs bound at trace time, space separated ("" if none) */
} result;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void run_isolated(const char *dir, result *r)
{
    int fds[2];
    if (pipe(fds) != 0) {
        perror("pipe");
        exit(2);
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        close(fds[0]);
        report = fdopen(fds[1], "w");
        if (!report)
            _exit(3);
        char v = run_one(dir);
        say('R', "%c", v);
        fclose(report);
        exit(0); /* exit, not _exit: lets a sanitizer's leak check run in the child */
    }
    close(fds[1]);
    strbuf out = { 0 };
    double deadline = now() + TIMEOUT_S;
    bool timed_out = false;
    for (;;) {
        double left = deadline - now();
        if (left <= 0) {
            timed_out = true;
            break;
        }
        struct pollfd p = { fds[0], POLLIN, 0 };
        int k = poll(&p, 1, (int)(left * 1000) + 1);
        if (k < 0 && errno == EINTR)
            continue;
        if (k == 0)
            continue;
        char buf[4096];
        ssize_t n = read(fds[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        sb_add(&out, buf, (size_t)n);
    }
    close(fds[0]);
    if (timed_out)
        kill(pid, SIGKILL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;

    /* parse the report */
    strbuf ops = { 0 }, msg = { 0 }, bound = { 0 };
    char verdict = 0;
    for (char *line = out.s; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        if (line[0] && line[1] == ' ') {
            const char *text = line + 2;
            if (line[0] == 'O') {
                if (ops.n)
                    sb_add(&ops, " ", 1);
                sb_add(&ops, text, strlen(text));
            } else if (line[0] == 'M') {
                if (msg.n)
                    sb_add(&msg, "; ", 2);
                sb_add(&msg, text, strlen(text));
            } else if (line[0] == 'B') {
                if (bound.n)
                    sb_add(&bound, " ", 1);
                sb_add(&bound, text, strlen(text));
            } else if (line[0] == 'R') {
                verdict = text[0];
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    free(out.s);
    char why[256] = "";
    if (timed_out)
        snprintf(why, sizeof why, "timed out after %d s", TIMEOUT_S);
    else if (WIFSIGNALED(status))
        snprintf(why, sizeof why, "crashed (signal %d, %s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else if (!verdict)
        snprintf(why, sizeof why, "the child exited (status %d) without a result (sanitizer?)",
                 WEXITSTATUS(status));
    else if (WEXITSTATUS(status) != 0)
        snprintf(why, sizeof why, "the child exited with status %d after its result (sanitizer?)",
                 WEXITSTATUS(status));
    if (why[0]) {
        verdict = 'F';
        if (msg.n)
            sb_add(&msg, "; ", 2);
        sb_add(&msg, why, strlen(why));
    }
    r->verdict = verdict;
    r->ops = ops.s ? ops.s : xstrdup("");
    r->msg = msg.s ? msg.s : xstrdup("");
    r->bound = bound.s ? bound.s : xstrdup("");
}

/* ---- which op a test belongs to ---- */

/* lowercase without underscores, for matching "test_reduce_sum_square_..." with ReduceSumSquare */
static void squash(const char *s, char *out, size_t n)
{
    size_t k = 0;
    for (; *s && k + 1 < n; s++) {
        if (*s != '_')
            out[k++] = (char)(*s >= 'A' && *s <= 'Z' ? *s - 'A' + 'a' : *s);
    }
    out[k] = '\0';
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static bool single_op(const result *r) { return r->ops[0] && !strchr(r->ops, ' '); }

static bool is_expanded(const char *name)
{
    size_t l = strlen(name);
    return l > 9 && strcmp(name + l - 9, "_expanded") == 0;
}

/* The op of a test that is not simply its model's one op type: the op, among those that
 * single-op tests exercise, whose name is the longest prefix of the test's name
 * ("test_reduce_sum_square_..." -> ReduceSumSquare); failing that, the model's first op. */
static char *op_by_name(const result *r, char **primary, size_t n_primary)
{
    char tname[512], oname[512];
    squash(r->name + (strncmp(r->name, "test_", 5) == 0 ? 5 : 0), tname, sizeof tname);
    const char *best = NULL;
    size_t best_len = 0;
    for (size_t k = 0; k < n_primary; k++) {
        squash(primary[k], oname, sizeof oname);
        size_t l = strlen(oname);
        if (l > best_len && strncmp(tname, oname, l) == 0) {
            best = primary[k];
            best_len = l;
        }
    }
    if (best)
        return xstrdup(best);
    if (r->ops[0]) {
        char *op = xstrdup(r->ops);
        op[strcspn(op, " ")] = '\0';
        return op;
    }
    return xstrdup("(unknown)");
}

/* Which op each test belongs to: a test of one op type belongs to that op; an "_expanded"
 * test (a function op written out in primitive ops) to the op of the test it expands;
 * anything else goes by its name (op_by_name). */
static void assign_ops(result *res, size_t n)
{
    char **primary = NULL;
    size_t n_primary = 0;
    for (size_t i = 0; i < n; i++) {
        if (single_op(&res[i]) && !is_expanded(res[i].name)) {
            res[i].op = xstrdup(res[i].ops);
            primary = xrealloc(primary, (n_primary + 1) * sizeof *primary);
            primary[n_primary++] = res[i].op;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (!res[i].op && !is_expanded(res[i].name))
            res[i].op = op_by_name(&res[i], primary, n_primary);
    }
    for (size_t i = 0; i < n; i++) {
        if (res[i].op)
            continue;
        size_t l = strlen(res[i].name) - 9;
        for (size_t k = 0; k < n && !res[i].op; k++) {
            if (res[k].op && strlen(res[k].name) == l && strncmp(res[k].name, res[i].name, l) == 0)
                res[i].op = xstrdup(res[k].op);
        }
        if (!res[i].op)
            res[i].op = single_op(&res[i]) ? xstrdup(res[i].ops) : op_by_name(&res[i], primary, n_primary);
    }
    free(primary);
}

/* Whether kiln lowers op (it is in the compiler's table). */
static bool is_lowered(const char *op)
{
    for (const kc_op_def *d = kc_op_table; d->op_type; d++) {
        if (strcmp(d->op_type, op) == 0)
            return true;
    }
    return false;
}

typedef struct op_count {
    int passed, run, bound;
} op_count;

static op_count count_op(const result *res, size_t n, const char *op)
{
    op_count c = { 0, 0, 0 };
    for (size_t i = 0; i < n; i++) {
        if (strcmp(res[i].op, op) == 0 && res[i].verdict != 'X') {
            c.run++;
            c.passed += res[i].verdict == 'P';
            c.bound += res[i].verdict == 'P' && res[i].bound[0];
        }
    }
    return c;
}

/* ---- main ---- */

/* Global, so that a child's leak check (under a sanitizer) sees the parent's results as
 * reachable rather than leaked. */
static result *res;
static size_t  n_res;

static void usage(void)
{
    fprintf(stderr, "usage: onnx_node_tests [DIR] [--filter SUBSTR] [-v] [--ops-out FILE] "
                    "[--table-out FILE] [--exclusions FILE]\n  DIR defaults to " DEFAULT_DIR "\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *dir = DEFAULT_DIR, *filter = NULL, *ops_out = NULL, *table_out = NULL;
    bool table_failed = false;
#ifdef KILN_NODE_EXCLUSIONS
    const char *excl_path = KILN_NODE_EXCLUSIONS;
#else
    const char *excl_path = NULL;
#endif
    bool verbose = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-v") == 0)
            verbose = true;
        else if (strcmp(argv[i], "--filter") == 0 && i + 1 < argc)
            filter = argv[++i];
        else if (strcmp(argv[i], "--ops-out") == 0 && i + 1 < argc)
            ops_out = argv[++i];
        else if (strcmp(argv[i], "--table-out") == 0 && i + 1 < argc)
            table_out = argv[++i];
        else if (strcmp(argv[i], "--exclusions") == 0 && i + 1 < argc)
            excl_path = argv[++i];
        else if (argv[i][0] == '-')
            usage();
        else
            dir = argv[i];
    }
    if (excl_path)
        read_exclusions(excl_path);

    struct dirent **ents;
    int n_ents = scandir(dir, &ents, NULL, alphasort);
    if (n_ents < 0) {
        fprintf(stderr, "onnx_node_tests: cannot read %s (%s)\n", dir, strerror(errno));
        return 2;
    }
    char path[PATH_LEN];
    double t0 = now();
    for (int e = 0; e < n_ents; e++) {
        const char *name = ents[e]->d_name;
        mkpath(path, "%s/%s/model.onnx", dir, name);
        if (name[0] == '.' || (filter && !strstr(name, filter)) || !file_exists(path))
            continue;
        res = xrealloc(res, (n_res + 1) * sizeof *res);
        result *r = &res[n_res++];
        memset(r, 0, sizeof *r);
        r->name = xstrdup(name);
        exclusion *x = find_exclusion(name);
        if (x) {
            x->seen = true;
            r->verdict = 'X';
            r->ops = xstrdup("");
            r->msg = xstrdup(x->reason);
            r->bound = xstrdup("");
            printf("excluded    %s: %s\n", name, x->reason);
            continue;
        }
        mkpath(path, "%s/%s", dir, name);
        run_isolated(path, r);
        if (r->verdict == 'F')
            printf("FAILED      %s [%s]%s%s%s: %s\n", name, r->ops, r->bound[0] ? " (bound at trace time: " : "",
                   r->bound, r->bound[0] ? ")" : "", r->msg);
        else if (verbose)
            printf("%-11s %s [%s]%s%s%s%s%s\n", r->verdict == 'P' ? "passed" : "unsupported", name,
                   r->ops, r->bound[0] ? " (bound at trace time: " : "", r->bound,
                   r->bound[0] ? ")" : "", r->msg[0] ? ": " : "", r->msg);
    }
    for (int e = 0; e < n_ents; e++)
        free(ents[e]);
    free(ents);
    for (size_t i = 0; i < n_excl; i++) {
        if (!excl[i].seen && !filter)
            printf("note: excluded test %s does not exist in %s\n", excl[i].name, dir);
    }

    /* per-op tables: ops kiln lowers (kc_op_table) with at least one passing test */
    assign_ops(res, n_res);
    char **ops = NULL, **fn_ops = NULL;
    size_t n_ops = 0, n_fn_ops = 0;
    for (size_t i = 0; i < n_res; i++) {
        if (res[i].verdict != 'P')
            continue;
        bool lowered = is_lowered(res[i].op);
        char ***list = lowered ? &ops : &fn_ops;
        size_t *n = lowered ? &n_ops : &n_fn_ops;
        bool dup = false;
        for (size_t k = 0; k < *n && !dup; k++)
            dup = strcmp((*list)[k], res[i].op) == 0;
        if (!dup) {
            *list = xrealloc(*list, (*n + 1) * sizeof **list);
            (*list)[(*n)++] = res[i].op;
        }
    }
    if (n_ops)
        qsort(ops, n_ops, sizeof *ops, cmp_str);
    if (n_fn_ops)
        qsort(fn_ops, n_fn_ops, sizeof *fn_ops, cmp_str);
    FILE *table = NULL;
    if (table_out && !(table = fopen(table_out, "w"))) {
        fprintf(stderr, "onnx_node_tests: cannot write %s (%s)\n", table_out, strerror(errno));
        table_failed = true;
    }
    printf("\nsupported ops (tests passed / run, of them with parameters bound at trace time):\n");
    for (size_t k = 0; k < n_ops; k++) {
        op_count c = count_op(res, n_res, ops[k]);
        printf("  %-28s %3d / %-3d", ops[k], c.passed, c.run);
        if (c.bound)
            printf("  (%d bound)", c.bound);
        printf("\n");
        if (table)
            fprintf(table, "op\t%s\t%d\t%d\t%d\n", ops[k], c.passed, c.run, c.bound);
    }
    printf("\nunsupported variants of those ops:\n");
    int listed = 0;
    for (size_t k = 0; k < n_ops; k++) {
        for (size_t i = 0; i < n_res; i++) {
            if (res[i].verdict == 'U' && strcmp(res[i].op, ops[k]) == 0) {
                printf("  %s (%s): %s\n", res[i].name, ops[k], res[i].msg);
                if (table)
                    fprintf(table, "unsupported\t%s\t%s\t%s\n", ops[k], res[i].name, res[i].msg);
                listed++;
            }
        }
    }
    if (!listed)
        printf("  (none)\n");
    if (n_fn_ops) {
        printf("\nfunctions kiln runs only written out in primitive ops (their _expanded tests):\n");
        for (size_t k = 0; k < n_fn_ops; k++) {
            op_count c = count_op(res, n_res, fn_ops[k]);
            printf("  %-28s %3d / %-3d\n", fn_ops[k], c.passed, c.run);
            if (table)
                fprintf(table, "expanded\t%s\t%d\t%d\t%d\n", fn_ops[k], c.passed, c.run, c.bound);
        }
    }
    if (!filter) {
        /* ops kiln lowers that no node test passes: say why */
        bool head = false;
        for (const kc_op_def *d = kc_op_table; d->op_type; d++) {
            bool passing = false;
            for (size_t k = 0; k < n_ops && !passing; k++)
                passing = strcmp(ops[k], d->op_type) == 0;
            if (passing)
                continue;
            if (!head) {
                printf("\nops kiln lowers that no node test passes:\n");
                head = true;
            }
            op_count c = count_op(res, n_res, d->op_type);
            printf("  %-28s %3d / %-3d", d->op_type, c.passed, c.run);
            const char *why = "no node test in this test data";
            for (size_t i = 0; i < n_res; i++) {
                if (strcmp(res[i].op, d->op_type) == 0 && res[i].verdict != 'P') {
                    why = res[i].msg;
                    break;
                }
            }
            printf("  %s\n", why);
            if (table)
                fprintf(table, "untested\t%s\t%d\t%d\t%s\n", d->op_type, c.passed, c.run, why);
        }
    }
    for (size_t i = 0; i < n_res && table; i++) {
        if (res[i].verdict == 'X')
            fprintf(table, "excluded\t%s\t%s\n", res[i].name, res[i].msg);
        fprintf(table, "test\t%s\t%s\t%c\t%s\t%s\n", res[i].name, res[i].op, res[i].verdict,
                res[i].bound, res[i].msg);
    }
    if (table && fclose(table) != 0) {
        fprintf(stderr, "onnx_node_tests: cannot write %s (%s)\n", table_out, strerror(errno));
        table_failed = true;
    }

    int n_pass = 0, n_fail = 0, n_unsup = 0, n_ex = 0, n_bound = 0;
    for (size_t i = 0; i < n_res; i++) {
        n_pass += res[i].verdict == 'P';
        n_fail += res[i].verdict == 'F';
        n_unsup += res[i].verdict == 'U';
        n_ex += res[i].verdict == 'X';
        n_bound += res[i].verdict == 'P' && res[i].bound[0];
    }
    n_fail += table_failed;
    if (n_fail) {
        printf("\nfailed:");
        for (size_t i = 0; i < n_res; i++) {
            if (res[i].verdict == 'F')
                printf(" %s", res[i].name);
        }
        printf("\n");
    }
    if (ops_out) {
        FILE *f = fopen(ops_out, "w");
        if (!f) {
            fprintf(stderr, "onnx_node_tests: cannot write %s (%s)\n", ops_out, strerror(errno));
            n_fail++;
        } else {
            for (size_t k = 0; k < n_ops; k++)
                fprintf(f, "%s\n", ops[k]);
            fclose(f);
        }
    }
    printf("\n%d supported ops; %d of the %d passed tests with parameters bound at trace time "
           "(graph inputs made initializers holding the test's data)\n", (int)n_ops, n_bound, n_pass);
    printf("(%.1f s)\n", now() - t0);
    printf("onnx node tests: %d passed, %d failed, %d unsupported, %d excluded\n", n_pass, n_fail,
           n_unsup, n_ex);

    for (size_t i = 0; i < n_res; i++) {
        free(res[i].name);
        free(res[i].op);
        free(res[i].ops);
        free(res[i].msg);
        free(res[i].bound);
    }
    free(res);
    free(ops);
    free(fn_ops);
    for (size_t i = 0; i < n_excl; i++) {
        free(excl[i].name);
        free(excl[i].reason);
    }
    free(excl);
    return n_fail ? 1 : 0;
}
