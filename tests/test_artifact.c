/*
 * test_artifact.c — the artifact format and the program helpers: save/open round trips of
 * hand-made programs, truncation at every length, every single-byte flip, hostile but
 * well-checksummed files, atomic save under I/O and allocation failures, allocation-failure
 * loops over ka_save and ka_open, kp_program_validate on bad programs, and kiln_inspect.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "compiler/program.h"
#include "format/artifact.h"
#include "format/artifact_impl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

/* ---- building programs by hand ---- */

static void *dup_mem(const void *src, size_t n)
{
    void *d = kiln__malloc(n ? n : 1);
    if (n)
        memcpy(d, src, n);
    return d;
}

static uint32_t str_off(const char *pool, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i += strlen(pool + i) + 1) {
        if (strcmp(pool + i, s) == 0)
            return (uint32_t)i;
    }
    fprintf(stderr, "test bug: no string '%s'\n", s);
    abort();
}

static kp_value val(uint32_t name, kiln_dtype dt, int ndim, const int64_t *shape, int kind, uint64_t off)
{
    kp_value v;
    memset(&v, 0, sizeof v);
    v.name = name;
    v.dtype = (uint8_t)dt;
    v.ndim = (uint8_t)ndim;
    v.kind = (uint8_t)kind;
    if (ndim)
        memcpy(v.shape, shape, sizeof(int64_t) * (size_t)ndim);
    v.offset = off;
    v.nbytes = (uint64_t)kp_value_numel(&v) * kiln_dtype_size(dt);
    return v;
}

/* A small program: Conv (with a packed weight and a bias), Relu, MaxPool with an absent
 * Indices output, a Mul by a scalar constant; one constant aliases another; the weight
 * section has non-zero bytes between tensors. `extra_weights` grows the last constant to
 * make a bigger file. */
static kp_program *make_program(uint32_t flags, uint64_t extra_weights)
{
    static const char strings[] = "\0x\0conv1.weight\0conv1.bias\0conv_out\0y\0w_flat\0scale\0pooled\0"
                                  "out\0conv1\0relu1\0pool1\0mul1\0big";
    const size_t ns = sizeof strings; /* includes the final NUL */
    kp_program *p = kiln__calloc(1, sizeof *p);
    p->flags = flags;
    p->n_strings = (uint32_t)ns;
    p->strings = dup_mem(strings, ns);
#define S(name) str_off(strings, ns, name)
    const int64_t sx[] = { 1, 3, 8, 8 }, sw[] = { 4, 3, 3, 3 }, sb[] = { 4 }, sc[] = { 1, 4, 6, 6 },
                  sf[] = { 4, 27 }, sp[] = { 1, 4, 3, 3 }, sbig[] = { 0 };
    kp_value v[9];
    v[0] = val(S("x"), KILN_F32, 4, sx, KP_VAL_INPUT, 0);
    v[1] = val(S("conv1.weight"), KILN_F32, 4, sw, KP_VAL_CONST, 0);
    v[1].nbytes = 448; /* "packed": padded storage */
    v[1].layout = 4;
    v[1].n_layout = 12;
    v[2] = val(S("conv1.bias"), KILN_F32, 1, sb, KP_VAL_CONST, 448);
    v[3] = val(S("conv_out"), KILN_F32, 4, sc, KP_VAL_ACT, 768);
    v[4] = val(S("y"), KILN_F32, 4, sc, KP_VAL_ACT, 1344);
    v[5] = val(S("w_flat"), KILN_F32, 2, sf, KP_VAL_CONST, 0); /* alias of conv1.weight */
    v[6] = val(S("scale"), KILN_F32, 0, NULL, KP_VAL_CONST, 576);
    v[7] = val(S("pooled"), KILN_F32, 4, sp, KP_VAL_ACT, 1920);
    v[8] = val(S("out"), KILN_F32, 4, sp, KP_VAL_ACT, 2112);
    uint32_t nv = 9;
    uint64_t wbytes = 640;
    kp_value big;
    if (extra_weights) {
        int64_t n = (int64_t)(extra_weights / 4);
        big = val(S("big"), KILN_F32, 1, sbig, KP_VAL_CONST, 640);
        big.shape[0] = n;
        big.nbytes = (uint64_t)n * 4;
        wbytes = kiln__align_up(640 + big.nbytes + 100, 64);
    }
    p->n_values = nv + (extra_weights ? 1 : 0);
    p->values = kiln__calloc(p->n_values, sizeof(kp_value));
    memcpy(p->values, v, sizeof v);
    if (extra_weights)
        p->values[nv] = big;

    const int32_t io[] = { 0, 1, 2, 3,     /* conv: x, w, b -> conv_out */
                           3, 4,           /* relu: conv_out -> y */
                           4, 7, -1,       /* maxpool: y -> pooled, (no indices) */
                           7, 6, 8 };      /* mul: pooled, scale -> out */
    p->n_io = sizeof io / sizeof io[0];
    p->io = dup_mem(io, sizeof io);
    const int64_t ia[] = { 1, 2, 1, 1, 1, 1, 0, 0, 0, 0, 0, /* conv: group, nsp, ..., n_post */
                           2, 2, 2, 2, 2, 1, 1, 0, 0, 0, 0, 0, 0, /* pool */
                           INT64_MIN, INT64_MAX, -1 };
    p->n_ia = sizeof ia / sizeof ia[0];
    p->ia = dup_mem(ia, sizeof ia);
    float fa[] = { 0.0f, -0.0f, 1.5f, INFINITY, 0 };
    uint32_t nan_bits = 0x7fc12345u; /* a NaN with a payload must survive bit for bit */
    memcpy(&fa[4], &nan_bits, 4);
    p->n_fa = sizeof fa / sizeof fa[0];
    p->fa = dup_mem(fa, sizeof fa);
    const uint8_t blob[] = { 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x55 };
    p->n_blob = sizeof blob;
    p->blob = dup_mem(blob, sizeof blob);

    p->n_ops = 4;
    p->ops = kiln__calloc(4, sizeof(kp_op));
    p->ops[0] = (kp_op){ .kind = KP_CONV, .n_in = 3, .n_out = 1, .io = 0, .ia = 0, .n_ia = 11, .name = S("conv1") };
    p->ops[1] = (kp_op){ .kind = KP_UNARY, .sub = KP_U_RELU, .n_in = 1, .n_out = 1, .io = 4, .fa = 0, .n_fa = 2,
                         .name = S("relu1") };
    p->ops[2] = (kp_op){ .kind = KP_POOL, .sub = KP_POOL_MAX, .n_in = 1, .n_out = 2, .io = 6, .ia = 11, .n_ia = 13,
                         .name = S("pool1") };
    p->ops[3] = (kp_op){ .kind = KP_BINARY, .sub = KP_B_MUL, .n_in = 2, .n_out = 1, .io = 9, .ia = 24, .n_ia = 3,
                         .fa = 2, .n_fa = 3, .name = S("mul1") };
    uint32_t inputs[] = { 0 }, outputs[] = { 8, 4 };
    p->n_inputs = 1;
    p->inputs = dup_mem(inputs, sizeof inputs);
    p->n_outputs = 2;
    p->outputs = dup_mem(outputs, sizeof outputs);
    p->arena_bytes = 2112 + 192;
    p->weight_bytes = wbytes;
    uint8_t *w = kiln__aligned_alloc(KP_ALIGN, wbytes);
    for (uint64_t i = 0; i < wbytes; i++)
        w[i] = (uint8_t)(i * 131 + 7); /* non-zero everywhere, gaps included */
    p->weights = w;
    p->owns_weights = true;
#undef S
    return p;
}

/* The smallest valid program: no values, no ops, just the empty string. */
static kp_program *make_empty_program(void)
{
    kp_program *p = kiln__calloc(1, sizeof *p);
    p->n_strings = 1;
    p->strings = kiln__calloc(1, 1);
    return p;
}

/* Deep copy (weights owned by the copy). */
static kp_program *copy_program(const kp_program *p)
{
    kp_program *q = kiln__calloc(1, sizeof *q);
    *q = *p;
    q->values = dup_mem(p->values, p->n_values * sizeof *p->values);
    q->ops = dup_mem(p->ops, p->n_ops * sizeof *p->ops);
    q->io = dup_mem(p->io, p->n_io * sizeof *p->io);
    q->ia = dup_mem(p->ia, p->n_ia * sizeof *p->ia);
    q->fa = dup_mem(p->fa, p->n_fa * sizeof *p->fa);
    q->blob = dup_mem(p->blob, p->n_blob);
    q->strings = dup_mem(p->strings, p->n_strings);
    q->inputs = dup_mem(p->inputs, p->n_inputs * sizeof *p->inputs);
    q->outputs = dup_mem(p->outputs, p->n_outputs * sizeof *p->outputs);
    uint8_t *w = kiln__aligned_alloc(KP_ALIGN, p->weight_bytes ? p->weight_bytes : 1);
    if (p->weight_bytes)
        memcpy(w, p->weights, p->weight_bytes);
    q->weights = w;
    q->owns_weights = true;
    return q;
}

#define SAME_ARRAY(a, b, n) ((n) == 0 || memcmp((a), (b), (n)) == 0)

/* Every field of b equals a's (b read back from a file written from a, hashes included). */
static void check_same_program(const kp_program *a, const kp_program *b)
{
    CHECK(a->flags == b->flags);
    CHECK(a->n_values == b->n_values);
    CHECK(a->n_ops == b->n_ops);
    CHECK(a->n_io == b->n_io);
    CHECK(a->n_ia == b->n_ia);
    CHECK(a->n_fa == b->n_fa);
    CHECK(a->n_blob == b->n_blob);
    CHECK(a->n_strings == b->n_strings);
    CHECK(a->n_inputs == b->n_inputs);
    CHECK(a->n_outputs == b->n_outputs);
    CHECK(a->arena_bytes == b->arena_bytes);
    CHECK(a->weight_bytes == b->weight_bytes);
    if (a->n_values != b->n_values || a->n_ops != b->n_ops)
        return;
    for (uint32_t i = 0; i < a->n_values; i++) {
        const kp_value *x = &a->values[i], *y = &b->values[i];
        CHECK(x->name == y->name && x->dtype == y->dtype && x->ndim == y->ndim && x->kind == y->kind);
        CHECK(memcmp(x->shape, y->shape, sizeof x->shape) == 0);
        CHECK(x->offset == y->offset && x->nbytes == y->nbytes);
        CHECK(x->layout == y->layout && x->n_layout == y->n_layout);
        CHECK(x->hash == y->hash);
    }
    for (uint32_t i = 0; i < a->n_ops; i++) {
        const kp_op *x = &a->ops[i], *y = &b->ops[i];
        CHECK(x->kind == y->kind && x->sub == y->sub && x->n_in == y->n_in && x->n_out == y->n_out);
        CHECK(x->io == y->io && x->ia == y->ia && x->n_ia == y->n_ia && x->fa == y->fa && x->n_fa == y->n_fa);
        CHECK(x->name == y->name);
    }
    CHECK(SAME_ARRAY(a->io, b->io, a->n_io * sizeof *a->io));
    CHECK(SAME_ARRAY(a->ia, b->ia, a->n_ia * sizeof *a->ia));
    CHECK(SAME_ARRAY(a->fa, b->fa, a->n_fa * sizeof *a->fa)); /* bit for bit: -0.0, NaN payload */
    CHECK(SAME_ARRAY(a->blob, b->blob, a->n_blob));
    CHECK(SAME_ARRAY(a->strings, b->strings, a->n_strings));
    CHECK(SAME_ARRAY(a->inputs, b->inputs, a->n_inputs * sizeof *a->inputs));
    CHECK(SAME_ARRAY(a->outputs, b->outputs, a->n_outputs * sizeof *a->outputs));
    CHECK(SAME_ARRAY(a->weights, b->weights, a->weight_bytes));
}

/* ---- files ---- */

static uint8_t *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(len > 0 ? (size_t)len : 1);
    *n = fread(b, 1, (size_t)len, f);
    fclose(f);
    return b;
}

static void write_file(const char *path, const void *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b, 1, n, f) != n) {
        fprintf(stderr, "test: cannot write %s: %s\n", path, strerror(errno));
        abort();
    }
    fclose(f);
}

static bool file_equals(const char *path, const uint8_t *b, size_t n)
{
    size_t m;
    uint8_t *c = read_file(path, &m);
    bool same = c && m == n && memcmp(b, c, n) == 0;
    free(c);
    return same;
}

/* Number of files in the test directory whose name contains `part`. */
static int count_files(const char *part)
{
    DIR *d = opendir(test_tmpdir());
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        n += strstr(e->d_name, part) != NULL;
    if (d)
        closedir(d);
    return n;
}

/* Opens path, expecting `want` from ka_open (and, when it opens, the weights to verify). */
static kiln_status open_and_verify(const char *path)
{
    ka_file *f = NULL;
    kp_program *p = NULL;
    kiln_status st = ka_open(path, &f, &p);
    if (st == KILN_OK) {
        st = ka_verify_weights(f, p);
        kp_program_free(p);
        ka_close(f);
    }
    return st;
}

/* ---- little-endian helpers for crafting files ---- */

static uint32_t rd32(const uint8_t *b) { return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24; }
static uint64_t rd64(const uint8_t *b) { return rd32(b) | (uint64_t)rd32(b + 4) << 32; }
static void wr32(uint8_t *b, uint32_t v) { for (int i = 0; i < 4; i++) b[i] = (uint8_t)(v >> 8 * i); }
static void wr64(uint8_t *b, uint64_t v) { for (int i = 0; i < 8; i++) b[i] = (uint8_t)(v >> 8 * i); }

/* Recomputes the program section's and the header's checksums of a crafted file (the
 * section table entry 0 is the program in files we write). */
static void reseal(uint8_t *b, size_t n)
{
    uint32_t hsize = rd32(b + 12);
    uint8_t *e = b + 64;
    uint64_t off = rd64(e + 8), size = rd64(e + 16);
    if (off <= n && size <= n - off)
        wr64(e + 24, XXH3_64bits(b + off, (size_t)size));
    wr64(b + hsize - 8, XXH3_64bits(b, hsize - 8));
}

/* ---- tests ---- */

static void test_round_trip(void)
{
    for (int variant = 0; variant < 3; variant++) {
        kp_program *p = variant == 2 ? make_empty_program()
                                     : make_program(variant ? KP_FLAG_LAZY | KP_FLAG_ASYNC : 0, 0);
        kp_program *before = copy_program(p);
        const char *path = test_path("rt.kiln");
        CHECK_OK(ka_save(p, path));
        /* The caller's program is untouched (hashes computed on a copy). */
        CHECK(SAME_ARRAY(before->values, p->values, p->n_values * sizeof *p->values));
        for (uint32_t i = 0; i < p->n_values; i++)
            CHECK(p->values[i].hash == 0);

        kp_program *want = copy_program(p);
        ka_hash_weights(want);
        for (uint32_t i = 0; i < want->n_values; i++) {
            if (want->values[i].kind == KP_VAL_CONST)
                CHECK(want->values[i].hash == XXH3_64bits(want->weights + want->values[i].offset,
                                                          want->values[i].nbytes));
        }
        ka_file *f = NULL;
        kp_program *q = NULL;
        CHECK_OK(ka_open(path, &f, &q));
        if (q) {
            check_same_program(want, q);
            CHECK(!q->owns_weights);
            CHECK(((uintptr_t)q->weights % 4096) == 0);
            CHECK_OK(ka_verify_weights(f, q));
            struct stat sb;
            stat(path, &sb);
            CHECK(ka_file_size(f) == (uint64_t)sb.st_size);
            CHECK(strcmp(ka_file_path(f), path) == 0);
            CHECK(ka_file_version(f) == 1);
            CHECK(strcmp(ka_file_isa(f), ka_isa_tag()) == 0);
            CHECK(strncmp(ka_isa_tag(), "x86_64", 6) != 0 || strlen(ka_isa_tag()) >= 6);
            /* Saving what was loaded (weights in the mapping) gives the same bytes. */
            const char *path2 = test_path("rt2.kiln");
            CHECK_OK(ka_save(q, path2));
            size_t n1, n2;
            uint8_t *b1 = read_file(path, &n1), *b2 = read_file(path2, &n2);
            CHECK(b1 && b2 && n1 == n2 && memcmp(b1, b2, n1) == 0);
            free(b1);
            free(b2);
            unlink(path2);
        }
        kp_program_free(q);
        ka_close(f);
        kp_program_free(want);
        kp_program_free(before);
        kp_program_free(p);
    }
    /* Mode of a new artifact: readable, not the temp file's 0600. */
    struct stat sb;
    CHECK(stat(test_path("rt.kiln"), &sb) == 0 && (sb.st_mode & 0777) == 0644);
    CHECK(count_files(".tmp-") == 0);
    kp_program_free(NULL);
    ka_close(NULL);
}

static void test_truncation(void)
{
    /* A small file: every length. A big one (weights past 64 KiB): every length up to
     * 8 KiB, then a spread. */
    for (int big = 0; big < 2; big++) {
        kp_program *p = make_program(KP_FLAG_ASYNC, big ? 100000 : 0);
        const char *path = test_path("full.kiln"), *cut = test_path("cut.kiln");
        CHECK_OK(ka_save(p, path));
        size_t n;
        uint8_t *b = read_file(path, &n);
        int bad = 0, tried = 0;
        write_file(cut, b, n);
        /* Shrink one file step by step (cheaper than writing thousands of files). */
        size_t len = n - 1;
        if (len > 8192)
            len = 8192 + (len - 8192) / 997 * 997;
        for (;; len -= (len > 8192 ? 997 : 1)) {
            if (truncate(cut, (off_t)len) != 0)
                abort();
            kiln_status st = open_and_verify(cut);
            tried++;
            if (st != KILN_ERR_FORMAT) {
                if (bad++ < 5)
                    fprintf(stderr, "truncated to %zu of %zu: %s (%s)\n", len, n, kiln_status_name(st),
                            kiln_last_error());
            }
            if (len == 0)
                break;
        }
        CHECK(bad == 0);
        CHECK(tried > 4000);
        /* Appended bytes are damage too. */
        uint8_t *longer = malloc(n + 1);
        memcpy(longer, b, n);
        longer[n] = 0;
        write_file(cut, longer, n + 1);
        CHECK_STATUS(open_and_verify(cut), KILN_ERR_FORMAT);
        free(longer);
        write_file(cut, b, 0);
        CHECK_STATUS(open_and_verify(cut), KILN_ERR_FORMAT);
        CHECK(strstr(kiln_last_error(), "empty") != NULL);
        free(b);
        unlink(cut);
        kp_program_free(p);
    }
}

static void test_every_byte_flip(void)
{
    kp_program *p = make_program(KP_FLAG_LAZY, 0);
    const char *path = test_path("flip-src.kiln"), *flip = test_path("flip.kiln");
    CHECK_OK(ka_save(p, path));
    size_t n;
    uint8_t *b = read_file(path, &n);
    int missed = 0, at_open = 0, at_verify = 0;
    const uint8_t masks[] = { 0xff, 0x01, 0x80 };
    write_file(flip, b, n);
    int fd = open(flip, O_WRONLY);
    for (size_t m = 0; m < sizeof masks; m++) {
        for (size_t i = 0; i < n; i++) {
            /* Flip byte i in place, try the file, put the byte back. */
            uint8_t x = b[i] ^ masks[m];
            if (pwrite(fd, &x, 1, (off_t)i) != 1)
                abort();
            ka_file *f = NULL;
            kp_program *q = NULL;
            kiln_status st = ka_open(flip, &f, &q);
            if (st == KILN_OK) {
                st = ka_verify_weights(f, q);
                at_verify += st == KILN_ERR_FORMAT;
                kp_program_free(q);
                ka_close(f);
            } else {
                at_open += st == KILN_ERR_FORMAT;
            }
            if (st != KILN_ERR_FORMAT && missed++ < 5)
                fprintf(stderr, "flip 0x%02x at byte %zu of %zu undetected: %s\n", masks[m], i, n,
                        kiln_status_name(st));
            if (pwrite(fd, &b[i], 1, (off_t)i) != 1)
                abort();
        }
    }
    close(fd);
    CHECK(missed == 0);
    CHECK(at_open > 0 && at_verify > 0);
    /* A flip inside a tensor names the tensor; one between tensors names the section. */
    uint64_t wstart = n - p->weight_bytes;
    b[wstart + 10] ^= 1; /* inside conv1.weight (and its alias w_flat) */
    write_file(flip, b, n);
    CHECK_STATUS(open_and_verify(flip), KILN_ERR_FORMAT);
    CHECK(strstr(kiln_last_error(), "tensor 'conv1.weight' checksum mismatch") != NULL);
    CHECK(strstr(kiln_last_error(), "flip.kiln") != NULL);
    b[wstart + 10] ^= 1;
    b[wstart + 470] ^= 1; /* between conv1.bias (448..464) and scale (576) */
    write_file(flip, b, n);
    CHECK_STATUS(open_and_verify(flip), KILN_ERR_FORMAT);
    CHECK(strstr(kiln_last_error(), "weight section checksum mismatch") != NULL);
    b[wstart + 470] ^= 1;
    write_file(flip, b, n);
    CHECK_OK(open_and_verify(flip));
    free(b);
    unlink(flip);
    kp_program_free(p);
}

static void test_bad_headers(void)
{
    kp_program *p = make_program(0, 0);
    const char *path = test_path("hdr-src.kiln"), *bad = test_path("hdr.kiln");
    CHECK_OK(ka_save(p, path));
    size_t n;
    uint8_t *b = read_file(path, &n);
    uint8_t *c = malloc(n);

    memcpy(c, b, n);
    memcpy(c, "GGUF", 4);
    write_file(bad, c, n);
    CHECK_STATUS(open_and_verify(bad), KILN_ERR_FORMAT);
    CHECK(strstr(kiln_last_error(), "not a kiln artifact (bad magic)") != NULL);

    memcpy(c, b, n);
    wr32(c + 4, 2);
    write_file(bad, c, n);
    CHECK_STATUS(open_and_verify(bad), KILN_ERR_FORMAT);
    CHECK(strstr(kiln_last_error(), "artifact format version 2, this kiln reads 1") != NULL);

    memcpy(c, b, n);
    wr32(c + 8, 0x0D0C0B0Au);
    write_file(bad, c, n);
    CHECK_STATUS(open_and_verify(bad), KILN_ERR_FORMAT);
    CHECK(strstr(kiln_last_error(), "big-endian") != NULL);

    /* Hostile but well-checksummed: every check must hold on its own. */
    struct { const char *what; size_t at; int width; uint64_t value; const char *msg; } cases[] = {
        { "section past the end", 64 + 32 + 16, 8, 1u << 20, "outside the file" },
        { "section offset overflow", 64 + 32 + 8, 8, UINT64_MAX - 10, "outside the file" },
        { "section inside the header", 64 + 8, 8, 8, "outside the file" },
        { "overlapping sections", 64 + 32 + 8, 8, 136 + 8, "overlaps" },
        { "two program sections", 64 + 32, 4, 1, "two program sections" },
        { "no weight section", 64 + 32, 4, 7, "no weight section" },
        { "too many sections", 20, 4, 1000, "sections" },
        { "zero sections", 20, 4, 0, "sections" },
        { "header size", 12, 4, 200, "header size" },
        { "file size", 24, 8, 12345678, "truncated" },
        { "program counts", 136 + 0, 4, 1000, "counts need" },
        { "program counts overflow", 136 + 24, 4, UINT32_MAX, "counts need" },
        { "weight bytes", 136 + 48, 8, 64, "weight section has" },
        { "op input out of range", 0, 0, 0, "op 0 (Conv 'conv1'): input 1 out of range" },
        { "value dtype", 0, 0, 0, "invalid dtype" },
        { "ISA tag", 32, 8, 0x0101010101010101ull, "ISA tag" },
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        memcpy(c, b, n);
        size_t at = cases[k].at;
        if (strcmp(cases[k].what, "op input out of range") == 0) {
            /* io[1] is in the program after values, ops, ia and fa. */
            at = 136 + 56 + 104 * p->n_values + 32 * p->n_ops + 8 * p->n_ia + 4 * p->n_fa + 4;
            wr32(c + at, 99);
        } else if (strcmp(cases[k].what, "value dtype") == 0) {
            c[136 + 56 + 104 * 2 + 4] = 42;
        } else if (strcmp(cases[k].what, "ISA tag") == 0) {
            memset(c + 32, 'a', 32);
        } else if (cases[k].width == 4) {
            wr32(c + at, (uint32_t)cases[k].value);
        } else {
            wr64(c + at, cases[k].value);
        }
        reseal(c, n);
        write_file(bad, c, n);
        kiln_status st = open_and_verify(bad);
        CHECK_STATUS(st, KILN_ERR_FORMAT);
        if (!strstr(kiln_last_error(), cases[k].msg)) {
            fprintf(stderr, "case '%s': message '%s' lacks '%s'\n", cases[k].what, kiln_last_error(), cases[k].msg);
            CHECK(0);
        }
    }
    /* Nonzero padding between the program and the weights. */
    memcpy(c, b, n);
    c[n - p->weight_bytes - 1] = 1;
    write_file(bad, c, n);
    CHECK_STATUS(open_and_verify(bad), KILN_ERR_FORMAT);
    CHECK(strstr(kiln_last_error(), "padding") != NULL);

    /* Random damage to the program section with valid checksums: never a crash. */
    srand(1234);
    uint64_t poff = rd64(b + 64 + 8), psize = rd64(b + 64 + 16);
    int opened = 0;
    for (int round = 0; round < 3000; round++) {
        memcpy(c, b, n);
        int edits = 1 + rand() % 4;
        for (int e = 0; e < edits; e++) {
            size_t at = (size_t)(poff + (uint64_t)rand() % psize);
            c[at] = rand() % 3 == 0 ? 0xff : (uint8_t)rand();
        }
        reseal(c, n);
        write_file(bad, c, n);
        kiln_status st = open_and_verify(bad);
        CHECK(st == KILN_OK || st == KILN_ERR_FORMAT);
        opened += st == KILN_OK;
    }
    (void)opened;
    free(c);
    free(b);
    unlink(bad);
    kp_program_free(p);
}

static void test_io_errors(void)
{
    ka_file *f = (ka_file *)1;
    kp_program *p = (kp_program *)1;
    CHECK_STATUS(ka_open(test_path("does-not-exist.kiln"), &f, &p), KILN_ERR_IO);
    CHECK(strstr(kiln_last_error(), "does-not-exist.kiln") && strstr(kiln_last_error(), "No such file"));
    CHECK(f == (ka_file *)1 && p == (kp_program *)1); /* untouched on failure */
    CHECK_STATUS(ka_open(test_tmpdir(), &f, &p), KILN_ERR_IO);
    CHECK(strstr(kiln_last_error(), "directory") != NULL);
    CHECK_STATUS(ka_open(NULL, &f, &p), KILN_ERR_ARG);
    CHECK_STATUS(ka_save(NULL, "x"), KILN_ERR_ARG);

    kp_program *prog = make_program(0, 0);
    CHECK_STATUS(ka_save(prog, test_path("no-such-dir/a.kiln")), KILN_ERR_IO);
    CHECK(strstr(kiln_last_error(), "no-such-dir/a.kiln") != NULL);
    /* Saving over a directory fails and leaves nothing behind. */
    mkdir(test_path("a-dir.kiln"), 0755);
    CHECK_STATUS(ka_save(prog, test_path("a-dir.kiln")), KILN_ERR_IO);
    CHECK(count_files(".tmp-") == 0);
    rmdir(test_path("a-dir.kiln"));
    /* An invalid program is refused before anything is written. */
    prog->io[0] = 1000;
    CHECK_STATUS(ka_save(prog, test_path("invalid.kiln")), KILN_ERR_FORMAT);
    CHECK(access(test_path("invalid.kiln"), F_OK) != 0);
    kp_program_free(prog);
}

static void test_atomic_save(void)
{
    kp_program *a = make_program(0, 0), *b = make_program(KP_FLAG_LAZY, 20000);
    const char *path = test_path("atomic.kiln");
    CHECK_OK(ka_save(a, path));
    size_t na;
    uint8_t *ba = read_file(path, &na);

    /* Fail each file-system step of saving B in turn: A stays, no temp file is left.
     * (With real fsyncs here; the rest of the test skips them.) */
    ka__test_skip_fsync(false);
    int steps = 0;
    for (long k = 0; k < 100; k++) {
        ka__test_fail_io_after(k);
        kiln_status st = ka_save(b, path);
        ka__test_fail_io_after(-1);
        if (st == KILN_OK)
            break;
        steps++;
        CHECK_STATUS(st, KILN_ERR_IO);
        CHECK(file_equals(path, ba, na));
        CHECK(count_files(".tmp-") == 0);
    }
    CHECK(steps >= 4); /* create, write, write, fsync, close, rename */
    CHECK_OK(open_and_verify(path)); /* B is there now */
    CHECK(!file_equals(path, ba, na));
    ka__test_skip_fsync(true);

    /* Allocation failures during the save: clean NOMEM, A untouched, nothing leaked. */
    CHECK_OK(ka_save(a, path));
    int fails = 0;
    for (long k = 0; k < 100; k++) {
        kiln__test_fail_alloc_after(k);
        kiln_status st = ka_save(b, path);
        kiln__test_fail_alloc_after(-1);
        if (st == KILN_OK)
            break;
        fails++;
        CHECK_STATUS(st, KILN_ERR_NOMEM);
        CHECK(file_equals(path, ba, na));
        CHECK(count_files(".tmp-") == 0);
    }
    CHECK(fails >= 3);
    CHECK_OK(open_and_verify(path));
    free(ba);
    kp_program_free(a);
    kp_program_free(b);
}

static void test_alloc_failures_open(void)
{
    kp_program *p = make_program(KP_FLAG_ASYNC, 0);
    const char *path = test_path("alloc.kiln");
    CHECK_OK(ka_save(p, path));
    int fails = 0;
    for (long k = 0; k < 100; k++) {
        ka_file *f = NULL;
        kp_program *q = NULL;
        kiln__test_fail_alloc_after(k);
        kiln_status st = ka_open(path, &f, &q);
        if (st == KILN_OK)
            st = ka_verify_weights(f, q);
        kiln__test_fail_alloc_after(-1);
        kp_program_free(q);
        ka_close(f);
        if (st == KILN_OK)
            break;
        fails++;
        CHECK_STATUS(st, KILN_ERR_NOMEM);
    }
    CHECK(fails >= 5);
    /* kiln_inspect too */
    fails = 0;
    for (long k = 0; k < 100; k++) {
        char *text = NULL;
        size_t len = 0;
        FILE *out = open_memstream(&text, &len);
        kiln__test_fail_alloc_after(k);
        kiln_status st = kiln_inspect(path, out);
        kiln__test_fail_alloc_after(-1);
        fclose(out);
        free(text);
        if (st == KILN_OK)
            break;
        fails++;
        CHECK_STATUS(st, KILN_ERR_NOMEM);
    }
    CHECK(fails >= 5);
    kp_program_free(p);
}

/* Applies `edit` to a fresh valid program and expects kp_program_validate to fail with a
 * message containing `msg`. */
#define EXPECT_INVALID(edit, msg)                                                                  \
    do {                                                                                           \
        kp_program *q = make_program(0, 0);                                                        \
        edit;                                                                                      \
        kiln_status st_ = kp_program_validate(q, "bad.kiln");                                      \
        CHECK_STATUS(st_, KILN_ERR_FORMAT);                                                        \
        if (st_ == KILN_ERR_FORMAT && !strstr(kiln_last_error(), msg)) {                           \
            fprintf(stderr, "%s:%d: message '%s' lacks '%s'\n", __FILE__, __LINE__,                \
                    kiln_last_error(), msg);                                                       \
            CHECK(0);                                                                              \
        }                                                                                          \
        kp_program_free(q);                                                                        \
    } while (0)

static void test_validate(void)
{
    kp_program *good = make_program(0, 0);
    CHECK_OK(kp_program_validate(good, "good"));
    kp_program_free(good);
    kp_program *empty = make_empty_program();
    CHECK_OK(kp_program_validate(empty, NULL));
    kp_program_free(empty);

    EXPECT_INVALID(q->io[1] = 9, "bad.kiln: op 0 (Conv 'conv1'): input 1 out of range");
    EXPECT_INVALID(q->io[1] = -2, "input 1 out of range");
    EXPECT_INVALID(q->io[3] = -1, "output 0 out of range");
    EXPECT_INVALID(q->io[8] = 100, "op 2 (Pool 'pool1'): output 1 out of range");
    EXPECT_INVALID(q->io[3] = 1, "output 0 writes constant value 'conv1.weight'");
    EXPECT_INVALID(q->io[5] = 0, "writes input value 'x'");
    EXPECT_INVALID(q->ops[1].io = q->n_io - 1, "outside the io pool");
    EXPECT_INVALID(q->ops[1].io = UINT32_MAX, "outside the io pool");
    EXPECT_INVALID(q->ops[0].ia = UINT32_MAX - 3, "int attributes");
    EXPECT_INVALID(q->ops[3].n_fa = 4, "float attributes");
    EXPECT_INVALID(q->ops[0].kind = 0, "invalid kind");
    EXPECT_INVALID(q->ops[0].kind = KP_OP_KIND_COUNT, "invalid kind");
    EXPECT_INVALID(q->ops[0].name = q->n_strings, "name offset");
    EXPECT_INVALID(q->ops[0].n_out = 0, "no outputs");
    EXPECT_INVALID(q->values[3].dtype = 0, "value 3 ('conv_out'): invalid dtype 0");
    EXPECT_INVALID(q->values[3].dtype = KILN_BOOL + 1, "invalid dtype");
    EXPECT_INVALID(q->values[3].ndim = 9, "9 dims");
    EXPECT_INVALID(q->values[3].kind = 3, "invalid kind");
    EXPECT_INVALID(q->values[3].name = 100000, "name offset");
    EXPECT_INVALID(q->values[3].shape[1] = -4, "negative dim");
    EXPECT_INVALID(q->values[3].shape[5] = 2, "unused dim 5");
    EXPECT_INVALID((q->values[3].shape[0] = 1ll << 40, q->values[3].shape[1] = 1ll << 40), "shape overflows");
    EXPECT_INVALID((q->values[3].shape[0] = 1ll << 61), "shape overflows"); /* x 4 bytes */
    EXPECT_INVALID(q->values[3].nbytes = 100, "storage");
    EXPECT_INVALID(q->values[3].offset = 2112, "past the end of the arena");
    EXPECT_INVALID(q->values[3].offset = UINT64_MAX - 63, "past the end of the arena");
    EXPECT_INVALID(q->values[3].offset = 770, "not a multiple of 64");
    EXPECT_INVALID(q->values[2].offset = 640, "past the end of the weight section");
    EXPECT_INVALID(q->values[2].offset = 65, "not a multiple");
    EXPECT_INVALID(q->values[0].offset = q->arena_bytes, "arena");
    EXPECT_INVALID(q->values[1].layout = q->n_blob - 4, "layout descriptor");
    EXPECT_INVALID(q->values[1].layout = UINT32_MAX, "layout descriptor");
    EXPECT_INVALID(q->inputs[0] = 3, "graph input 0 ('conv_out') is a activation value");
    EXPECT_INVALID(q->inputs[0] = 99, "graph input 0: value 99 out of range");
    EXPECT_INVALID(q->outputs[1] = 99, "graph output 1");
    EXPECT_INVALID(q->strings[q->n_strings - 1] = 'x', "not NUL-terminated");
    EXPECT_INVALID(q->n_strings = 0, "string pool empty");
    EXPECT_INVALID((kiln__free(q->values), q->values = NULL), "no array");
    EXPECT_INVALID((q->owns_weights = false, kiln__free((void *)q->weights), q->weights = NULL),
                   "no weight data");

    CHECK(strcmp(kp_op_kind_name(KP_CONV), "Conv") == 0);
    CHECK(strcmp(kp_op_kind_name(KP_DEPTH_SPACE), "DepthSpace") == 0);
    CHECK(strcmp(kp_op_kind_name(0), "?") == 0);
    CHECK(strcmp(kp_op_kind_name(KP_OP_KIND_COUNT), "?") == 0);
    for (int k = 1; k < KP_OP_KIND_COUNT; k++)
        CHECK(strcmp(kp_op_kind_name(k), "?") != 0);
}

static char *inspect_text(const char *path, kiln_status *st)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    *st = kiln_inspect(path, out);
    fclose(out);
    return text;
}

static void test_inspect(void)
{
    kp_program *p = make_program(KP_FLAG_LAZY | KP_FLAG_ASYNC, 0);
    const char *path = test_path("inspect.kiln"), *bad = test_path("inspect-bad.kiln");
    CHECK_OK(ka_save(p, path));
    kiln_status st;
    char *text = inspect_text(path, &st);
    CHECK_OK(st);
    const char *want[][2] = { { "kiln artifact", "" }, { "format version", "1" }, { "flags", "lazy, async" },
                              { "inputs", "1" }, { "outputs", "2" }, { "  Conv", "1" }, { "  Pool", "1" },
                              { "  Unary", "1" }, { "  Binary", "1" }, { "ops", "4" }, { "values", "9" },
                              { "weights", "4 tensors, 640 bytes" }, { "arena", "2304 bytes" },
                              { "packed weights", "1" }, { "sections", "2" }, { "checksums", "all 7 ok" } };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        char line[128];
        snprintf(line, sizeof line, "%-16s%s", want[i][0], want[i][1]);
        if (!strstr(text, line)) {
            fprintf(stderr, "inspect output lacks '%s':\n%s", line, text);
            CHECK(0);
        }
    }
    CHECK(strstr(text, "inspect.kiln") && strstr(text, "1x3x8x8") && strstr(text, "1x4x3x3"));
    CHECK(strstr(text, "conv1.weight") && strstr(text, "traced for"));
    if (getenv("KILN_TEST_VERBOSE"))
        fputs(text, stdout);
    free(text);

    size_t n;
    uint8_t *b = read_file(path, &n);
    b[n - p->weight_bytes + 449] ^= 0x10; /* conv1.bias */
    b[n - p->weight_bytes + 600] ^= 0x10; /* a gap */
    write_file(bad, b, n);
    text = inspect_text(bad, &st);
    CHECK_STATUS(st, KILN_ERR_FORMAT);
    CHECK(strstr(text, "checksums       FAILED: 2 of 7") != NULL); /* label padded to 16 */
    CHECK(strstr(text, "tensor 'conv1.bias'") != NULL);
    CHECK(strstr(text, "weight section") != NULL);
    CHECK(strstr(kiln_last_error(), "conv1.bias") != NULL);
    if (getenv("KILN_TEST_VERBOSE"))
        fputs(text, stdout);
    free(text);
    /* Damage ka_open sees: an error, nothing half-printed to rely on. */
    b[5] ^= 1;
    write_file(bad, b, n);
    text = inspect_text(bad, &st);
    CHECK_STATUS(st, KILN_ERR_FORMAT);
    free(text);
    text = inspect_text(test_path("missing.kiln"), &st);
    CHECK_STATUS(st, KILN_ERR_IO);
    free(text);
    CHECK_STATUS(kiln_inspect(NULL, stdout), KILN_ERR_ARG);
    free(b);
    kp_program_free(p);
}

/* The verified-file cache: an unchanged file that verified is not hashed again; a file
 * written less than two seconds before is not remembered; a file changed in place after it
 * was remembered is hashed again and its damage found. */
static void test_verified_cache(void)
{
    kp_program *p = make_program(0, 0);
    const char *path = test_path("cache.kiln");
    CHECK_OK(ka_save(p, path));
    ka_file *f = NULL;
    kp_program *q = NULL;
    unsigned long h0 = ka__test_cache_hits();
    for (int i = 0; i < 2; i++) { /* fresh file: verified both times */
        if (CHECK_OK(ka_open(path, &f, &q))) {
            CHECK_OK(ka_verify_weights(f, q));
            kp_program_free(q);
            ka_close(f);
        }
    }
    CHECK(ka__test_cache_hits() == h0);
    sleep(2); /* let the file settle: its timestamps are now trusted */
    for (int i = 0; i < 2; i++) {
        if (CHECK_OK(ka_open(path, &f, &q))) {
            CHECK_OK(ka_verify_weights(f, q));
            kp_program_free(q);
            ka_close(f);
        }
    }
    CHECK(ka__test_cache_hits() == h0 + 1); /* the second was answered by the cache */
    /* damage the last weight byte in place: ctime changes, so the damage is found */
    FILE *fp = fopen(path, "r+b");
    fseek(fp, -1, SEEK_END);
    int c = fgetc(fp);
    fseek(fp, -1, SEEK_END);
    fputc(c ^ 0x10, fp);
    fclose(fp);
    if (CHECK_OK(ka_open(path, &f, &q))) {
        CHECK_STATUS(ka_verify_weights(f, q), KILN_ERR_FORMAT);
        kp_program_free(q);
        ka_close(f);
    }
    kp_program_free(p);
}

int main(void)
{
    /* Real fsyncs for the atomic-save test only: the rest writes hundreds of files. */
    ka__test_skip_fsync(true);
    test_round_trip();
    test_validate();
    test_io_errors();
    test_bad_headers();
    test_truncation();
    test_every_byte_flip();
    test_atomic_save();
    test_alloc_failures_open();
    test_inspect();
    test_verified_cache();
    return test_done("test_artifact");
}
