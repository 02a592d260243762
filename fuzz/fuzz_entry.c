/*
 * fuzz_entry.c — what each fuzz target does with one input (see fuzz_entry.h): the
 * artifact reader and the load/forward behind it, the ONNX importer and trace, the .npy
 * reader. Shared by the libFuzzer targets and by the regression replay in the test suite,
 * so a kept input runs exactly the code that found it.
 */
#define _GNU_SOURCE
#include "fuzz_entry.h"

#include "cli/npy.h"
#include "format/artifact_impl.h"
#include "onnx/graph.h"
#include "runtime/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <xxhash.h>

static uint32_t rd32(const uint8_t *b)
{
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}
static uint64_t rd64(const uint8_t *b) { return (uint64_t)rd32(b) | (uint64_t)rd32(b + 4) << 32; }
static void wr64(uint8_t *b, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i));
}

/* A scratch directory for re-saved artifacts: tmpfs when there is one. Removed at exit. */
static char scratch[512];

static void scratch_remove(void)
{
    char p[600];
    snprintf(p, sizeof p, "%s/fixed.kiln", scratch);
    unlink(p);
    rmdir(scratch);
}

static const char *scratch_dir(void)
{
    if (!scratch[0]) {
        const char *base = getenv("KF_TMPDIR");
        if (!base || !*base)
            base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(scratch, sizeof scratch, "%s/kiln-fuzz-XXXXXX", base);
        if (!mkdtemp(scratch)) {
            perror("kiln fuzz: mkdtemp");
            abort();
        }
        atexit(scratch_remove);
    }
    return scratch;
}

/* The bytes as a file that ka_open can open by path: a memfd, reached via /proc. */
static int bytes_file(const uint8_t *data, size_t n, char *path, size_t path_len)
{
    int fd = memfd_create("kiln-fuzz", MFD_CLOEXEC);
    if (fd < 0) {
        perror("kiln fuzz: memfd_create");
        abort();
    }
    for (size_t at = 0; at < n;) {
        ssize_t w = write(fd, data + at, n - at);
        if (w <= 0) {
            perror("kiln fuzz: write");
            abort();
        }
        at += (size_t)w;
    }
    snprintf(path, path_len, "/proc/self/fd/%d", fd);
    return fd;
}

/* Recomputes the file size field and every checksum the reader checks at open (header,
 * program and unknown sections; not the weight section's), so mutations get past them.
 * False when the bytes do not even hold a section table. */
static bool repair_checksums(uint8_t *b, size_t n)
{
    if (n < 64 || memcmp(b, "KILN", 4) != 0)
        return false;
    uint32_t n_sec = rd32(b + 20), hsize = rd32(b + 12);
    if (n_sec < 1 || n_sec > 16 || hsize != 64 + 32 * n_sec + 8 || n < hsize)
        return false;
    wr64(b + 24, n);
    for (uint32_t i = 0; i < n_sec; i++) {
        uint8_t *e = b + 64 + 32 * i;
        uint64_t off = rd64(e + 8), size = rd64(e + 16);
        if (rd32(e) != KA_SEC_WEIGHTS && off <= n && size <= n - off)
            wr64(e + 24, XXH3_64bits(b + off, (size_t)size));
    }
    wr64(b + hsize - 8, XXH3_64bits(b, hsize - 8));
    return true;
}

/* Bytes of value v, or UINT64_MAX if it is over the cap. */
static uint64_t capped_bytes(const kiln_tensor *t)
{
    int64_t e = kiln__numel(t->ndim, t->shape);
    if (e < 0 || e > KF_MAX_ELEMS)
        return UINT64_MAX;
    return (uint64_t)e * kiln_dtype_size(t->dtype);
}

/* Runs m once on zero inputs (skipped when an input or output is over the cap). */
static void forward_zeros(kiln_model *m)
{
    size_t ni = kiln_model_num_inputs(m), no = kiln_model_num_outputs(m);
    kiln_tensor *t = calloc(ni + no + 1, sizeof *t);
    bool ok = t != NULL;
    for (size_t i = 0; ok && i < ni + no; i++) {
        ok = (i < ni ? kiln_model_input(m, i, NULL, &t[i]) : kiln_model_output(m, i - ni, NULL, &t[i])) == KILN_OK;
        uint64_t nb = ok ? capped_bytes(&t[i]) : UINT64_MAX;
        ok = nb != UINT64_MAX && (t[i].data = calloc(1, nb ? nb : 1)) != NULL;
    }
    if (ok) {
        (void)kiln_forward(m, t, ni, t + ni, no);
        (void)kiln_wait(m);
    }
    for (size_t i = 0; t && i < ni + no; i++)
        free(t[i].data);
    free(t);
}

static bool program_fits(const kp_program *p)
{
    if (p->arena_bytes > KF_MAX_ARENA)
        return false;
    for (uint32_t i = 0; i < p->n_inputs + p->n_outputs; i++) {
        const kp_value *v = &p->values[i < p->n_inputs ? p->inputs[i] : p->outputs[i - p->n_inputs]];
        int64_t e = kp_value_numel(v);
        if (e < 0 || e > KF_MAX_ELEMS)
            return false;
    }
    return true;
}

/* Opens path as an artifact and checks it; on success *prog and *file stay open. */
static kiln_status open_and_check(const char *path, ka_file **file, kp_program **prog)
{
    *file = NULL;
    *prog = NULL;
    kiln_status s = ka_open(path, file, prog);
    if (s != KILN_OK)
        return s;
    if (kp_program_validate(*prog, path) != KILN_OK) {
        fprintf(stderr, "kiln fuzz: ka_open returned a program that kp_program_validate refuses: %s\n",
                kiln_last_error());
        abort();
    }
    return ka_verify_weights(*file, *prog);
}

int kf_artifact(const uint8_t *data, size_t n)
{
    char path[64];
    ka_file *file = NULL;
    kp_program *prog = NULL;
    int fd = bytes_file(data, n, path, sizeof path);
    kiln_status verified = open_and_check(path, &file, &prog);
    int fd2 = -1;
    if (!prog) {
        /* The same bytes with the open-time checksums recomputed. */
        uint8_t *copy = malloc(n ? n : 1);
        if (copy && n)
            memcpy(copy, data, n);
        if (copy && repair_checksums(copy, n) && memcmp(copy, data, n) != 0) {
            fd2 = bytes_file(copy, n, path, sizeof path);
            verified = open_and_check(path, &file, &prog);
        }
        free(copy);
    }
    if (prog && program_fits(prog)) {
        /* Load what opened: this file when its weights verify, else the program re-saved
         * with fresh weight hashes (so placement and kernels see the fuzzed program). */
        char fixed[600];
        const char *load_path = path;
        bool saved = false;
        if (verified != KILN_OK) {
            snprintf(fixed, sizeof fixed, "%s/fixed.kiln", scratch_dir());
            ka_hash_weights(prog);
            ka__test_skip_fsync(true);
            saved = ka_save(prog, fixed) == KILN_OK;
            load_path = saved ? fixed : NULL;
        }
        kiln_model *m = NULL;
        kiln_load_params prm = kiln_load_default_params();
        prm.mode = KILN_LOAD_EAGER;
        if (load_path && kiln_load_ex(load_path, &prm, &m) == KILN_OK) {
            forward_zeros(m);
            kiln_model_free(m);
        }
        if (saved)
            unlink(fixed);
    }
    kp_program_free(prog);
    ka_close(file);
    close(fd);
    if (fd2 >= 0)
        close(fd2);
    return 0;
}

int kf_onnx(const uint8_t *data, size_t n)
{
    kg_graph *g = NULL;
    if (kg_import_buffer(data, n, "fuzz.onnx", &g) != KILN_OK)
        return 0;
    kiln_onnx h = { g };
    size_t ni = kiln_onnx_num_inputs(&h);
    kiln_tensor *ex = calloc(ni + 1, sizeof *ex);
    bool ok = ex != NULL;
    for (size_t i = 0; ok && i < ni; i++) {
        const char *name = NULL;
        ok = kiln_onnx_input(&h, i, &name, &ex[i]) == KILN_OK && name;
        for (int d = 0; ok && d < ex[i].ndim; d++)
            if (ex[i].shape[d] < 0)
                ex[i].shape[d] = 1;
        ok = ok && capped_bytes(&ex[i]) != UINT64_MAX;
    }
    kiln_model *m = NULL;
    if (ok && kiln_onnx_trace(&h, ex, ni, &m) == KILN_OK) {
        if (kp_program_validate(m->prog, "traced") != KILN_OK) {
            fprintf(stderr, "kiln fuzz: trace produced a program that kp_program_validate refuses: %s\n",
                    kiln_last_error());
            abort();
        }
        if (program_fits(m->prog))
            forward_zeros(m);
        kiln_model_free(m);
    }
    free(ex);
    kg_graph_free(g);
    return 0;
}

int kf_npy(const uint8_t *data, size_t n)
{
    kiln_tensor t;
    if (npy_read_mem(data, n, &t) != KILN_OK)
        return 0;
    int64_t e = kiln__numel(t.ndim, t.shape);
    if (e < 0 || t.ndim < 0 || t.ndim > KILN_MAX_DIMS || kiln_dtype_size(t.dtype) == 0 || !t.data) {
        fprintf(stderr, "kiln fuzz: npy_read_mem returned a malformed tensor\n");
        abort();
    }
    /* Read every byte the tensor claims to have (ASan catches a short buffer). */
    const volatile uint8_t *b = t.data;
    uint8_t acc = 0;
    for (uint64_t i = 0; i < (uint64_t)e * kiln_dtype_size(t.dtype); i++)
        acc ^= b[i];
    (void)acc;
    free(t.data);
    return 0;
}
