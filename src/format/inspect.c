/*
 * inspect.c — kiln_inspect: a human-readable description of an artifact (header, flags,
 * interface, op counts, sizes, packed weights, sections) and a check of every checksum.
 * Reads through the format module's reader, so it trusts the file exactly as far as a load
 * would.
 */
#include "format/artifact_impl.h"
#include "kernels/kernels.h"

#include <inttypes.h>
#include <string.h>

#define LABEL 16 /* width of the label column */

/* "640 bytes", or "48234496 bytes (46.0 MiB)" from 1 KiB on. */
static const char *size_str(uint64_t n, char *buf, size_t size)
{
    static const char *const units[] = { "KiB", "MiB", "GiB", "TiB" };
    if (n < 1024) {
        snprintf(buf, size, "%" PRIu64 " bytes", n);
        return buf;
    }
    double x = (double)n / 1024.0;
    int u = 0;
    while (x >= 1024.0 && u < 3) {
        x /= 1024.0;
        u++;
    }
    snprintf(buf, size, "%" PRIu64 " bytes (%.1f %s)", n, x, units[u]);
    return buf;
}

/* Width of the name column of a sub-list: its entries' values start at the label column's
 * end when the names are short, and stay aligned with each other when they are not. */
static int list_width(int longest)
{
    int w = longest + 2 > LABEL - 2 ? longest + 2 : LABEL - 2;
    return w > 48 ? 48 : w;
}

static const char *value_name(const kp_program *p, const kp_value *v)
{
    const char *name = kp_str(p, v->name);
    return *name ? name : "(unnamed)";
}

static void print_tensors(FILE *out, const char *label, const kp_program *p, const uint32_t *ids, uint32_t n)
{
    fprintf(out, "%-*s%u\n", LABEL, label, n);
    int longest = 0;
    for (uint32_t i = 0; i < n; i++) {
        int len = (int)strlen(value_name(p, &p->values[ids[i]]));
        longest = len > longest ? len : longest;
    }
    int w = list_width(longest);
    for (uint32_t i = 0; i < n; i++) {
        const kp_value *v = &p->values[ids[i]];
        char shape[128];
        fprintf(out, "  %-*s%-5s %s\n", w, value_name(p, v), kiln_dtype_name((kiln_dtype)v->dtype),
                kiln__shape_str(v->ndim, v->shape, shape, sizeof shape));
    }
}

static void print_program(FILE *out, const ka_file *f, const kp_program *p)
{
    char sz[64];
    fprintf(out, "%-*s%s\n", LABEL, "kiln artifact", ka_file_path(f));
    fprintf(out, "%-*s%s\n", LABEL, "file size", size_str(ka_file_size(f), sz, sizeof sz));
    fprintf(out, "%-*s%u\n", LABEL, "format version", ka_file_version(f));
    const char *isa = *ka_file_isa(f) ? ka_file_isa(f) : "(unknown)";
    if (strcmp(isa, ka_isa_tag()) == 0)
        fprintf(out, "%-*s%s\n", LABEL, "traced for", isa);
    else
        fprintf(out, "%-*s%s (this machine: %s; packed weights are reordered when placed)\n", LABEL,
                "traced for", isa, ka_isa_tag());
    const char *flags = "none (eager, synchronous)";
    if ((p->flags & KP_FLAG_LAZY) && (p->flags & KP_FLAG_ASYNC))
        flags = "lazy, async";
    else if (p->flags & KP_FLAG_LAZY)
        flags = "lazy";
    else if (p->flags & KP_FLAG_ASYNC)
        flags = "async";
    fprintf(out, "%-*s%s\n", LABEL, "flags", flags);
    print_tensors(out, "inputs", p, p->inputs, p->n_inputs);
    print_tensors(out, "outputs", p, p->outputs, p->n_outputs);

    uint32_t counts[KP_OP_KIND_COUNT] = { 0 };
    for (uint32_t i = 0; i < p->n_ops; i++)
        counts[p->ops[i].kind]++; /* validated: 1 <= kind < KP_OP_KIND_COUNT */
    fprintf(out, "%-*s%u\n", LABEL, "ops", p->n_ops);
    for (int k = 1; k < KP_OP_KIND_COUNT; k++) {
        if (counts[k])
            fprintf(out, "  %-*s%u\n", LABEL - 2, kp_op_kind_name(k), counts[k]);
    }
    fprintf(out, "%-*s%u\n", LABEL, "values", p->n_values);

    uint32_t n_const = 0, n_packed = 0;
    int longest = 0;
    for (uint32_t i = 0; i < p->n_values; i++) {
        const kp_value *v = &p->values[i];
        if (v->kind != KP_VAL_CONST)
            continue;
        n_const++;
        if (v->n_layout) {
            n_packed++;
            int len = (int)strlen(value_name(p, v));
            longest = len > longest ? len : longest;
        }
    }
    fprintf(out, "%-*s%u tensors, %s\n", LABEL, "weights", n_const, size_str(p->weight_bytes, sz, sizeof sz));
    fprintf(out, "%-*s%s per replica\n", LABEL, "arena", size_str(p->arena_bytes, sz, sizeof sz));
    fprintf(out, "%-*s%u\n", LABEL, "packed weights", n_packed);
    int w = list_width(longest);
    for (uint32_t i = 0; i < p->n_values; i++) {
        const kp_value *v = &p->values[i];
        if (v->kind != KP_VAL_CONST || v->n_layout == 0)
            continue;
        char layout[128], shape[128];
        const char *lname = kk_layout_name(p->blob + v->layout, v->n_layout, layout, sizeof layout);
        fprintf(out, "  %-*s%-24s %s, %s\n", w, value_name(p, v), lname,
                kiln__shape_str(v->ndim, v->shape, shape, sizeof shape), size_str(v->nbytes, sz, sizeof sz));
    }
    fprintf(out, "%-*s%u\n", LABEL, "sections", ka_file_num_sections(f));
    for (uint32_t i = 0; i < ka_file_num_sections(f); i++) {
        const ka_section *s = ka_file_section(f, i);
        const char *name = s->type == KA_SEC_PROGRAM ? "program" : s->type == KA_SEC_WEIGHTS ? "weights" : "other";
        fprintf(out, "  %-*sat %-10" PRIu64 " %s\n", LABEL - 2, name, s->offset, size_str(s->size, sz, sizeof sz));
    }
}

KILN_API kiln_status kiln_inspect(const char *path, FILE *out)
{
    if (!path || !out)
        return kiln__fail(KILN_ERR_ARG, "kiln_inspect: %s is NULL", path ? "out" : "path");
    kiln__clear_error();
    ka_file *f;
    kp_program *p;
    kiln_status st = ka_open(path, &f, &p);
    if (st != KILN_OK)
        return st;
    print_program(out, f, p);

    /* ka_open has checked the header and every section but the weights; check those. */
    uint8_t *bad = p->n_values ? kiln__calloc(p->n_values, 1) : NULL;
    uint32_t n_bad = 0, n_const = 0;
    bool section_ok = true;
    if (p->n_values && !bad)
        st = kiln__fail(KILN_ERR_NOMEM, "%s: out of memory", path);
    else
        st = ka_check_weights(f, p, bad, &n_bad, &section_ok);
    if (st != KILN_OK)
        goto out;
    for (uint32_t i = 0; i < p->n_values; i++)
        n_const += p->values[i].kind == KP_VAL_CONST;
    uint32_t total = ka_file_num_sections(f) + 1 + n_const; /* header, sections, tensors */
    uint32_t failed = n_bad + !section_ok;
    if (!failed) {
        fprintf(out, "%-*sall %u ok\n", LABEL, "checksums", total);
        goto out;
    }
    fprintf(out, "%-*sFAILED: %u of %u\n", LABEL, "checksums", failed, total);
    const char *first = NULL;
    for (uint32_t i = 0; i < p->n_values; i++) {
        if (bad[i]) {
            fprintf(out, "  tensor '%s' (value %u): checksum mismatch\n", kp_str(p, p->values[i].name), i);
            if (!first)
                first = kp_str(p, p->values[i].name);
        }
    }
    if (!section_ok)
        fprintf(out, "  weight section (bytes between tensors): checksum mismatch\n");
    if (first)
        st = kiln__fail(KILN_ERR_FORMAT, "%s: tensor '%s' checksum mismatch%s", path, first,
                        failed > 1 ? " (and more)" : "");
    else
        st = kiln__fail(KILN_ERR_FORMAT, "%s: weight section checksum mismatch", path);
out:
    kiln__free(bad);
    kp_program_free(p);
    ka_close(f);
    return st;
}
