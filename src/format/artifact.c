/*
 * artifact.c — the .kiln file: writing a program atomically and reading it back without
 * trusting a byte of it. Owns the byte layout below (also in docs/FORMAT.md), the
 * checksums, the atomic save and the read-only mapping that loaded weights live in.
 *
 * ---- Layout (format version 1). Every integer is little-endian, fixed width. ----
 *
 * A file is a header, then sections. Version 1 writes two sections, the program and the
 * weights, in that order:
 *
 *   [0, H)            header (H = header_size = 72 + 32 * n_sections; 136 for two)
 *   [H, H + P)        program section (P bytes)
 *   [H + P, W)        zero padding up to W = the next multiple of 4096
 *   [W, W + S)        weight section (S = weight_bytes); the file ends at W + S
 *
 * Header:
 *   off  size  field
 *     0     4  magic, the bytes "KILN"
 *     4     4  u32 format version (1)
 *     8     4  u32 endianness marker 0x0A0B0C0D (bytes 0D 0C 0B 0A)
 *    12     4  u32 header_size H, including the trailing header checksum
 *    16     4  u32 flags: bit 0 KP_FLAG_LAZY, bit 1 KP_FLAG_ASYNC (others ignored)
 *    20     4  u32 n_sections (1..16)
 *    24     8  u64 file_size: the exact size of the file
 *    32    32  ISA tag of the machine that traced it, printable ASCII, NUL-padded (at
 *              least one NUL), e.g. "x86_64-avx512". Informational: packed weights are
 *              reordered at placement if this machine's kernels want another layout.
 *    64  32*n  section table, one entry per section, in file order:
 *                +0  u32 type (1 program, 2 weights; readers skip other types)
 *                +4  u32 reserved (0)
 *                +8  u64 offset in the file
 *               +16  u64 size in bytes
 *               +24  u64 checksum (XXH3-64, see below)
 *   H-8     8  u64 header checksum: XXH3-64 of bytes [0, H-8)
 *
 * Program section (all kp_program arrays, each field written on its own; no struct is
 * ever dumped, so compiler padding and host endianness never reach the file):
 *     0  u32 n_values, n_ops, n_io, n_ia, n_fa, n_blob, n_strings, n_inputs, n_outputs
 *    36  u32 reserved (0)
 *    40  u64 arena_bytes
 *    48  u64 weight_bytes (must equal the weight section's size)
 *    56  values:  n_values x 104 bytes: u32 name, u8 dtype, u8 ndim, u8 kind, u8 reserved,
 *                 i64 shape[8], u64 offset, u64 nbytes, u32 layout, u32 n_layout, u64 hash
 *        ops:     n_ops x 32 bytes: u16 kind, u16 sub, u16 n_in, u16 n_out, u32 io, u32 ia,
 *                 u32 n_ia, u32 fa, u32 n_fa, u32 name
 *        ia:      n_ia x i64
 *        fa:      n_fa x f32 (IEEE-754 binary32 bit patterns)
 *        io:      n_io x i32
 *        inputs:  n_inputs x u32
 *        outputs: n_outputs x u32
 *        blob:    n_blob bytes (packed-layout descriptors, owned by the kernels)
 *        strings: n_strings bytes (NUL-terminated names back to back)
 *   Its size must equal exactly 56 + the sum of the arrays' sizes.
 *
 * Weight section: the program's weight section verbatim (tensor data in the host's
 * little-endian byte order). It starts at a 4096-aligned file offset, so mapping the file
 * gives page-aligned weights that kernels use in place; each CONST value lives at its
 * kp_value.offset (a multiple of KP_ALIGN) within it.
 *
 * ---- Checksums: every byte of the file is covered. ----
 *   - header checksum: bytes [0, H-8), incl. flags, ISA tag and the section table;
 *   - program section: XXH3-64 of its bytes, checked by ka_open;
 *   - each CONST value: kp_value.hash = XXH3-64 of its nbytes at its offset (stored in the
 *     program section, so itself covered by the program checksum);
 *   - weight section checksum: XXH3-64 of the stream
 *         hash(v) as u64 LE, for every CONST value v in id order,
 *         then every byte of the section not inside any CONST value, in offset order.
 *     With the tensor hashes standing in for the tensors' bytes, this covers the whole
 *     section while hashing every byte once: ka_verify_weights hashes each tensor (values
 *     sharing storage, i.e. aliases, once), then only the gaps between tensors.
 *   - padding between sections (and between the header and the first section) must be
 *     zero; ka_open checks it.
 * Verifying is therefore one XXH3 pass over the weights (>10 GB/s), and ka_open touches
 * only the header and program (a few KB) and never the weights.
 *
 * ---- Versioning ----
 * The version changes whenever a version-1 reader would misread a file. A reader rejects
 * any other version with a clear message. Compatible additions (a new optional section,
 * a new flag bit) keep the version: readers bounds- and checksum-check sections of
 * unknown type and skip them, and ignore unknown flag bits.
 */
#define _GNU_SOURCE
#include "format/artifact_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>
#if defined(__x86_64__) && defined(__has_include)
#if __has_include(<xxh_x86dispatch.h>)
#include <xxh_x86dispatch.h>     /* same hashes, with the widest vector unit at run time */
#endif
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "kiln artifacts hold little-endian weights used in place; big-endian hosts are not supported"
#endif

#define KA_MAGIC         "KILN"
#define KA_ENDIAN_MARK   0x0A0B0C0Du
#define KA_FIXED_HEADER  64u   /* bytes before the section table */
#define KA_SECTION_ENTRY 32u
#define KA_MAX_SECTIONS  16u
#define KA_PROGRAM_HEAD  56u
#define KA_VALUE_BYTES   104u
#define KA_OP_BYTES      32u
#define KA_KNOWN_FLAGS   (KP_FLAG_LAZY | KP_FLAG_ASYNC)

/* What identifies a file's contents without reading them (see the verified-file cache). */
typedef struct ka_file_id {
    dev_t           dev;
    ino_t           ino;
    off_t           size;
    struct timespec mtim, ctim;
} ka_file_id;

struct ka_file {
    ka_file_id     id;
    char          *path;
    const uint8_t *map;       /* the whole file, PROT_READ, MAP_PRIVATE */
    uint64_t       size;
    uint32_t       version, flags, n_sections;
    char           isa[KA_ISA_LEN + 1];
    ka_section     sec[KA_MAX_SECTIONS];     /* table order (= file order when we wrote it) */
    const ka_section *program, *weights;
};

/* ---- little-endian fields ---- */

static uint8_t *put16(uint8_t *b, uint16_t v)
{
    b[0] = (uint8_t)v;
    b[1] = (uint8_t)(v >> 8);
    return b + 2;
}
static uint8_t *put32(uint8_t *b, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    return b + 4;
}
static uint8_t *put64(uint8_t *b, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    return b + 8;
}
static uint16_t get16(const uint8_t *b) { return (uint16_t)(b[0] | b[1] << 8); }
static uint32_t get32(const uint8_t *b)
{
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}
static uint64_t get64(const uint8_t *b) { return (uint64_t)get32(b) | (uint64_t)get32(b + 4) << 32; }

/* ---- the target tag ---- */

const char *ka_isa_tag(void)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return "x86_64-avx512";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return "x86_64-avx2";
    if (__builtin_cpu_supports("avx"))
        return "x86_64-avx";
    if (__builtin_cpu_supports("sse4.1"))
        return "x86_64-sse41";
    return "x86_64";
#elif defined(__aarch64__)
    return "aarch64";
#else
    return "unknown";
#endif
}

/* ---- weight checksums ---- */

/* Storage of one CONST value. Sorted by (offset, nbytes), aliases end up side by side. */
typedef struct span {
    uint64_t off, n;
    uint32_t id;
} span;

static int span_cmp(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->off != y->off)
        return x->off < y->off ? -1 : 1;
    if (x->n != y->n)
        return x->n < y->n ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* The CONST values of a validated program, sorted (NULL when there are none). */
static kiln_status const_spans(const kp_program *p, span **out, uint32_t *n)
{
    uint32_t count = 0;
    for (uint32_t i = 0; i < p->n_values; i++)
        count += p->values[i].kind == KP_VAL_CONST;
    *out = NULL;
    *n = 0;
    if (!count)
        return KILN_OK;
    span *s = kiln__malloc((size_t)count * sizeof *s);
    if (!s)
        return kiln__fail(KILN_ERR_NOMEM, "out of memory sorting %u weights", count);
    uint32_t k = 0;
    for (uint32_t i = 0; i < p->n_values; i++) {
        if (p->values[i].kind == KP_VAL_CONST)
            s[k++] = (span){ p->values[i].offset, p->values[i].nbytes, i };
    }
    qsort(s, count, sizeof *s, span_cmp);
    *out = s;
    *n = count;
    return KILN_OK;
}

/* The weight section checksum (see the top of this file): the stored per-tensor hashes
 * in id order, then the bytes no tensor covers. */
static uint64_t weights_digest(const kp_program *p, const span *s, uint32_t n, const uint8_t *w)
{
    XXH3_state_t st;
    XXH3_INITSTATE(&st);
    XXH3_64bits_reset(&st);
    uint8_t buf[8 * 64];
    size_t at = 0;
    for (uint32_t i = 0; i < p->n_values; i++) {
        if (p->values[i].kind != KP_VAL_CONST)
            continue;
        put64(buf + at, p->values[i].hash);
        at += 8;
        if (at == sizeof buf) {
            XXH3_64bits_update(&st, buf, at);
            at = 0;
        }
    }
    XXH3_64bits_update(&st, buf, at);
    uint64_t pos = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (s[i].off > pos)
            XXH3_64bits_update(&st, w + pos, (size_t)(s[i].off - pos));
        if (s[i].off + s[i].n > pos)
            pos = s[i].off + s[i].n;
    }
    if (pos < p->weight_bytes)
        XXH3_64bits_update(&st, w + pos, (size_t)(p->weight_bytes - pos));
    return XXH3_64bits_digest(&st);
}

static uint64_t hash_bytes(const uint8_t *b, uint64_t n)
{
    static const uint8_t empty[1];
    return XXH3_64bits(n ? (const void *)b : empty, (size_t)n);
}

void ka_hash_weights(kp_program *p)
{
    for (uint32_t i = 0; i < p->n_values; i++) {
        kp_value *v = &p->values[i];
        if (v->kind == KP_VAL_CONST)
            v->hash = hash_bytes(p->weights + v->offset, v->nbytes);
    }
}

static kiln_status check_weights(const ka_file *f, const kp_program *p, uint8_t *bad,
                                 uint32_t *n_bad, uint32_t *first_bad, bool *section_ok)
{
    if (!f || !p)
        return kiln__fail(KILN_ERR_ARG, "ka_verify_weights: no file or program");
    const uint8_t *w = f->map + f->weights->offset;
    if (p->weights != w || p->weight_bytes != f->weights->size)
        return kiln__fail(KILN_ERR_ARG, "%s: the program's weights are not this file's", f->path);
    span *s;
    uint32_t n;
    kiln_status st = const_spans(p, &s, &n);
    if (st != KILN_OK)
        return st;
    *n_bad = 0;
    *first_bad = UINT32_MAX;
    uint64_t h = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (i == 0 || s[i].off != s[i - 1].off || s[i].n != s[i - 1].n)
            h = hash_bytes(w + s[i].off, s[i].n); /* aliases of the previous span reuse h */
        if (h != p->values[s[i].id].hash) {
            if (bad)
                bad[s[i].id] = 1;
            ++*n_bad;
            if (s[i].id < *first_bad)
                *first_bad = s[i].id;
        }
    }
    *section_ok = weights_digest(p, s, n, w) == f->weights->checksum;
    kiln__free(s);
    return KILN_OK;
}

kiln_status ka_check_weights(const ka_file *f, const kp_program *p, uint8_t *bad, uint32_t *n_bad,
                             bool *section_ok)
{
    uint32_t first;
    return check_weights(f, p, bad, n_bad, &first, section_ok);
}

/* ---- the verified-file cache ----
 * A process that loads the same artifact again (a second model, a reload) need not hash its
 * weights again: files whose weights verified are remembered by device, inode, size, mtime
 * and ctime, and a later ka_verify_weights of the same unchanged file returns at once. Any
 * write to the file changes its ctime (which user space cannot set back), so a changed file
 * is always hashed again. Timestamps have a coarse clock (a few ms), so, as git does with
 * its index, a file written less than a second before it was verified is not remembered:
 * a write in the same clock tick could otherwise go unnoticed. */

#define KA_CACHE_SLOTS 64
static struct {
    pthread_mutex_t mu;
    ka_file_id      id[KA_CACHE_SLOTS];
    int             n, next;
} verified = { .mu = PTHREAD_MUTEX_INITIALIZER };

static bool same_id(const ka_file_id *a, const ka_file_id *b)
{
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtim.tv_sec == b->mtim.tv_sec && a->mtim.tv_nsec == b->mtim.tv_nsec &&
           a->ctim.tv_sec == b->ctim.tv_sec && a->ctim.tv_nsec == b->ctim.tv_nsec;
}

static atomic_ulong cache_hits;

unsigned long ka__test_cache_hits(void) { return atomic_load(&cache_hits); }

static bool cache_has(const ka_file_id *id)
{
    bool hit = false;
    pthread_mutex_lock(&verified.mu);
    for (int i = 0; i < verified.n && !hit; i++)
        hit = same_id(&verified.id[i], id);
    pthread_mutex_unlock(&verified.mu);
    if (hit)
        atomic_fetch_add(&cache_hits, 1);
    return hit;
}

static void cache_add(const ka_file_id *id)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (now.tv_sec - id->mtim.tv_sec < 2 || now.tv_sec - id->ctim.tv_sec < 2)
        return; /* too fresh to trust its timestamps */
    pthread_mutex_lock(&verified.mu);
    verified.id[verified.next] = *id;
    verified.next = (verified.next + 1) % KA_CACHE_SLOTS;
    if (verified.n < KA_CACHE_SLOTS)
        verified.n++;
    pthread_mutex_unlock(&verified.mu);
}

/* Maps the pages of [b, b + n) of the file mapping in one call (Linux 5.14+; elsewhere a
 * no-op), which costs far less than taking a page fault per 16 pages while hashing. */
static void populate(const uint8_t *b, uint64_t n)
{
#ifdef MADV_POPULATE_READ
    if (!n)
        return;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = (uintptr_t)b & ~(page - 1);
    (void)madvise((void *)lo, (uintptr_t)b + n - lo, MADV_POPULATE_READ);
#else
    (void)b;
    (void)n;
#endif
}

/* Benchmark hook: the weights are brought in (every page read) but not hashed. */
static atomic_bool skip_verify;

void ka__bench_skip_verify(bool skip) { atomic_store(&skip_verify, skip); }

static void touch_pages(const uint8_t *b, uint64_t n)
{
    volatile uint8_t sink = 0;
    for (uint64_t i = 0; i < n; i += 4096)
        sink ^= b[i];
    (void)sink;
}

/* "tensor 'name'" or, for a constant the compiler made (e.g. a BatchNorm folded into conv
 * weights), "unnamed tensor #id". */
static void tensor_name(const kp_program *p, uint32_t id, char *name, size_t n)
{
    const char *nm = kp_str(p, p->values[id].name);
    if (*nm)
        snprintf(name, n, "tensor '%.80s'", nm);
    else
        snprintf(name, n, "unnamed tensor #%u", id);
}

static kiln_status section_mismatch(const ka_file *f)
{
    return kiln__fail(KILN_ERR_FORMAT, "%s: weight section checksum mismatch (in the bytes between tensors)",
                      f->path);
}

kiln_status ka_verify_weights(const ka_file *f, const kp_program *p)
{
    if (ka_verify_cached(f))
        return KILN_OK;
    if (atomic_load(&skip_verify)) {
        if (f->weights)
            touch_pages(f->map + f->weights->offset, f->weights->size);
        return KILN_OK;
    }
    uint32_t n_bad = 0, first = 0;
    bool section_ok = false;
    if (f->weights)
        populate(f->map + f->weights->offset, f->weights->size);
    kiln_status st = check_weights(f, p, NULL, &n_bad, &first, &section_ok);
    if (st != KILN_OK)
        return st;
    char name[96];
    if (n_bad)
        tensor_name(p, first, name, sizeof name);
    if (n_bad == 1)
        return kiln__fail(KILN_ERR_FORMAT, "%s: %s checksum mismatch", f->path, name);
    if (n_bad > 1)
        return kiln__fail(KILN_ERR_FORMAT, "%s: %s checksum mismatch (and %u more)", f->path, name, n_bad - 1);
    if (!section_ok)
        return section_mismatch(f);
    cache_add(&f->id);
    return KILN_OK;
}

bool ka_verify_cached(const ka_file *f) { return cache_has(&f->id); }

kiln_status ka_verify_value(const ka_file *f, const kp_program *p, uint32_t id)
{
    if (!f || !p || id >= p->n_values || p->values[id].kind != KP_VAL_CONST)
        return kiln__fail(KILN_ERR_ARG, "ka_verify_value: no file, or value %u is not a weight", id);
    const kp_value *v = &p->values[id];
    if (atomic_load(&skip_verify)) {
        touch_pages(p->weights + v->offset, v->nbytes);
        return KILN_OK;
    }
    populate(p->weights + v->offset, v->nbytes);
    if (hash_bytes(p->weights + v->offset, v->nbytes) == v->hash)
        return KILN_OK;
    char name[96];
    tensor_name(p, id, name, sizeof name);
    return kiln__fail(KILN_ERR_FORMAT, "%s: %s checksum mismatch", f->path, name);
}

kiln_status ka_verify_finish(const ka_file *f, const kp_program *p)
{
    if (!f || !p || !f->weights || p->weights != f->map + f->weights->offset ||
        p->weight_bytes != f->weights->size)
        return kiln__fail(KILN_ERR_ARG, "ka_verify_finish: the program's weights are not this file's");
    if (atomic_load(&skip_verify))
        return KILN_OK;
    span *s;
    uint32_t n;
    kiln_status st = const_spans(p, &s, &n);
    if (st != KILN_OK)
        return st;
    bool ok = weights_digest(p, s, n, p->weights) == f->weights->checksum;
    kiln__free(s);
    if (!ok)
        return section_mismatch(f);
    cache_add(&f->id);
    return KILN_OK;
}

/* ---- writing ---- */

static uint64_t program_bytes(const kp_program *p)
{
    /* Counts are u32, so no term can overflow 64 bits. */
    return KA_PROGRAM_HEAD + (uint64_t)p->n_values * KA_VALUE_BYTES + (uint64_t)p->n_ops * KA_OP_BYTES +
           (uint64_t)p->n_ia * 8 + (uint64_t)p->n_fa * 4 + (uint64_t)p->n_io * 4 +
           (uint64_t)p->n_inputs * 4 + (uint64_t)p->n_outputs * 4 + p->n_blob + p->n_strings;
}

static uint8_t *put_program(uint8_t *b, const kp_program *p)
{
    const uint32_t counts[] = { p->n_values, p->n_ops, p->n_io, p->n_ia, p->n_fa,
                                p->n_blob, p->n_strings, p->n_inputs, p->n_outputs, 0 };
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++)
        b = put32(b, counts[i]);
    b = put64(b, p->arena_bytes);
    b = put64(b, p->weight_bytes);
    for (uint32_t i = 0; i < p->n_values; i++) {
        const kp_value *v = &p->values[i];
        b = put32(b, v->name);
        *b++ = v->dtype;
        *b++ = v->ndim;
        *b++ = v->kind;
        *b++ = 0;
        for (int d = 0; d < KILN_MAX_DIMS; d++)
            b = put64(b, (uint64_t)v->shape[d]);
        b = put64(b, v->offset);
        b = put64(b, v->nbytes);
        b = put32(b, v->layout);
        b = put32(b, v->n_layout);
        b = put64(b, v->hash);
    }
    for (uint32_t i = 0; i < p->n_ops; i++) {
        const kp_op *op = &p->ops[i];
        b = put16(b, op->kind);
        b = put16(b, op->sub);
        b = put16(b, op->n_in);
        b = put16(b, op->n_out);
        b = put32(b, op->io);
        b = put32(b, op->ia);
        b = put32(b, op->n_ia);
        b = put32(b, op->fa);
        b = put32(b, op->n_fa);
        b = put32(b, op->name);
    }
    for (uint32_t i = 0; i < p->n_ia; i++)
        b = put64(b, (uint64_t)p->ia[i]);
    for (uint32_t i = 0; i < p->n_fa; i++) {
        uint32_t bits;
        memcpy(&bits, &p->fa[i], 4);
        b = put32(b, bits);
    }
    for (uint32_t i = 0; i < p->n_io; i++)
        b = put32(b, (uint32_t)p->io[i]);
    for (uint32_t i = 0; i < p->n_inputs; i++)
        b = put32(b, p->inputs[i]);
    for (uint32_t i = 0; i < p->n_outputs; i++)
        b = put32(b, p->outputs[i]);
    if (p->n_blob)
        memcpy(b, p->blob, p->n_blob);
    b += p->n_blob;
    memcpy(b, p->strings, p->n_strings);
    return b + p->n_strings;
}

/* Fault injection: file-system calls of ka_save left before one fails (-1: never). */
static atomic_long io_budget = -1;

void ka__test_fail_io_after(long n) { atomic_store(&io_budget, n); }

static atomic_bool skip_fsync;

void ka__test_skip_fsync(bool skip) { atomic_store(&skip_fsync, skip); }

/* How injected failures look: their errno (0: EIO), and a cap on the bytes one write()
 * takes (0: none), so writes come back short and a failure can land mid-file. */
static atomic_int io_errno;
static atomic_size_t io_max_write;

void ka__test_io_fault(int err, size_t max_write)
{
    atomic_store(&io_errno, err);
    atomic_store(&io_max_write, max_write);
}

static bool io_allowed(void)
{
    long b = atomic_load(&io_budget);
    while (b >= 0) {
        if (b == 0) {
            errno = atomic_load(&io_errno) ? atomic_load(&io_errno) : EIO;
            return false;
        }
        if (atomic_compare_exchange_weak(&io_budget, &b, b - 1))
            return true;
    }
    return true;
}

static bool write_all(int fd, const uint8_t *b, uint64_t n)
{
    while (n > 0) {
        size_t chunk = n > (1u << 30) ? (1u << 30) : (size_t)n;
        size_t cap = atomic_load(&io_max_write);
        if (cap && chunk > cap)
            chunk = cap;
        ssize_t w = io_allowed() ? write(fd, b, chunk) : -1;
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return false;
        }
        if (w == 0) {
            errno = ENOSPC;
            return false;
        }
        b += w;
        n -= (uint64_t)w;
    }
    return true;
}

/* Writes head then weights to a temporary file beside path, syncs it and renames it over
 * path; the directory is synced afterwards. On failure the temporary file is removed and
 * path is untouched. */
static kiln_status write_atomically(const char *path, const uint8_t *head, size_t n_head,
                                    const uint8_t *weights, uint64_t n_weights)
{
    static const char suffix[] = ".tmp-XXXXXX";
    size_t plen = strlen(path);
    const char *slash = strrchr(path, '/');
    char *tmp = kiln__malloc(plen + sizeof suffix);
    char *dir = kiln__malloc(plen + 2);
    if (!tmp || !dir) {
        kiln__free(tmp);
        kiln__free(dir);
        return kiln__fail(KILN_ERR_NOMEM, "%s: out of memory", path);
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, suffix, sizeof suffix);
    if (!slash)
        strcpy(dir, ".");
    else if (slash == path)
        strcpy(dir, "/");
    else {
        memcpy(dir, path, (size_t)(slash - path));
        dir[slash - path] = '\0';
    }

    kiln_status st = KILN_OK;
    int fd = io_allowed() ? mkostemp(tmp, O_CLOEXEC) : -1;
    if (fd < 0) {
        st = kiln__fail(KILN_ERR_IO, "%s: cannot create a temporary file beside it: %s", path, strerror(errno));
        goto out;
    }
    /* mkstemp makes the file 0600; give it the mode of the file it replaces, or 0644. */
    struct stat old;
    fchmod(fd, stat(path, &old) == 0 && S_ISREG(old.st_mode) ? (old.st_mode & 07777) : 0644);
    if (!write_all(fd, head, n_head) || !write_all(fd, weights, n_weights)) {
        st = kiln__fail(KILN_ERR_IO, "%s: write failed: %s", path, strerror(errno));
        goto fail;
    }
    if (!io_allowed() || (!atomic_load(&skip_fsync) && fsync(fd) != 0)) {
        st = kiln__fail(KILN_ERR_IO, "%s: fsync failed: %s", path, strerror(errno));
        goto fail;
    }
    int rc = io_allowed() ? close(fd) : (close(fd), -1); /* errno: io_allowed's */
    fd = -1;
    if (rc != 0) {
        st = kiln__fail(KILN_ERR_IO, "%s: close failed: %s", path, strerror(errno));
        goto fail;
    }
    if (!io_allowed() || rename(tmp, path) != 0) {
        st = kiln__fail(KILN_ERR_IO, "%s: cannot rename the temporary file over it: %s", path, strerror(errno));
        goto fail;
    }
    /* The artifact is complete at path now. Syncing the directory makes the rename
     * durable; if that fails there is nothing left to undo, so it is not an error. */
    int dfd = atomic_load(&skip_fsync) ? -1 : open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    goto out;
fail:
    if (fd >= 0)
        close(fd);
    unlink(tmp);
out:
    kiln__free(tmp);
    kiln__free(dir);
    return st;
}

kiln_status ka_save(const kp_program *p, const char *path)
{
    if (!p || !path || !*path)
        return kiln__fail(KILN_ERR_ARG, "ka_save: no program or path");
    kiln_status st = kp_program_validate(p, path);
    if (st != KILN_OK)
        return st;

    /* Hash the weights into a copy of the value table: the caller's program is const. */
    kp_program q = *p;
    kp_value *values = NULL;
    span *s = NULL;
    uint8_t *head = NULL;
    uint32_t n_spans;
    if (p->n_values) {
        values = kiln__malloc((size_t)p->n_values * sizeof *values);
        if (!values) {
            st = kiln__fail(KILN_ERR_NOMEM, "%s: out of memory", path);
            goto out;
        }
        memcpy(values, p->values, (size_t)p->n_values * sizeof *values);
    }
    q.values = values;
    ka_hash_weights(&q);
    if ((st = const_spans(&q, &s, &n_spans)) != KILN_OK)
        goto out;
    uint64_t wsum = weights_digest(&q, s, n_spans, q.weights);

    const uint32_t n_sections = 2;
    const uint32_t hsize = KA_FIXED_HEADER + KA_SECTION_ENTRY * n_sections + 8;
    uint64_t psize = program_bytes(&q);
    uint64_t woff = kiln__align_up(hsize + psize, KA_WEIGHT_ALIGN), fsize;
    if (!kiln__add_ok(woff, q.weight_bytes, &fsize) || woff > SIZE_MAX) {
        st = kiln__fail(KILN_ERR_ARG, "%s: program too large to write", path);
        goto out;
    }
    head = kiln__calloc(1, (size_t)woff);
    if (!head) {
        st = kiln__fail(KILN_ERR_NOMEM, "%s: out of memory", path);
        goto out;
    }
    uint8_t *end = put_program(head + hsize, &q);
    KILN_ASSERT((uint64_t)(end - head) == hsize + psize);

    uint8_t *b = head;
    memcpy(b, KA_MAGIC, 4);
    b = put32(b + 4, KA_VERSION);
    b = put32(b, KA_ENDIAN_MARK);
    b = put32(b, hsize);
    b = put32(b, q.flags & KA_KNOWN_FLAGS);
    b = put32(b, n_sections);
    b = put64(b, fsize);
    const char *isa = ka_isa_tag();
    size_t isa_len = strlen(isa);
    memcpy(b, isa, isa_len < KA_ISA_LEN ? isa_len : KA_ISA_LEN - 1);
    b += KA_ISA_LEN;
    const uint64_t sec[2][4] = {
        { KA_SEC_PROGRAM, hsize, psize, XXH3_64bits(head + hsize, (size_t)psize) },
        { KA_SEC_WEIGHTS, woff, q.weight_bytes, wsum },
    };
    for (uint32_t i = 0; i < n_sections; i++) {
        b = put32(b, (uint32_t)sec[i][0]);
        b = put32(b, 0);
        b = put64(b, sec[i][1]);
        b = put64(b, sec[i][2]);
        b = put64(b, sec[i][3]);
    }
    put64(b, XXH3_64bits(head, hsize - 8));

    st = write_atomically(path, head, (size_t)woff, q.weights, q.weight_bytes);
out:
    kiln__free(head);
    kiln__free(s);
    kiln__free(values);
    return st;
}

/* ---- reading ---- */

static const char *section_name(uint32_t type)
{
    switch (type) {
    case KA_SEC_PROGRAM: return "program";
    case KA_SEC_WEIGHTS: return "weights";
    }
    return "unknown";
}

static bool all_zero(const uint8_t *b, uint64_t n, uint64_t *at)
{
    for (uint64_t i = 0; i < n; i++) {
        if (b[i]) {
            *at = i;
            return false;
        }
    }
    return true;
}

static kiln_status parse_header(ka_file *f)
{
    const uint8_t *b = f->map;
    const char *path = f->path;
    uint64_t size = f->size;
    if (size < 4 || memcmp(b, KA_MAGIC, 4) != 0)
        return kiln__fail(KILN_ERR_FORMAT, "%s: not a kiln artifact (bad magic)", path);
    if (size < KA_FIXED_HEADER)
        return kiln__fail(KILN_ERR_FORMAT, "%s: truncated (%llu bytes, shorter than the header)", path,
                          (unsigned long long)size);
    f->version = get32(b + 4);
    if (f->version != KA_VERSION)
        return kiln__fail(KILN_ERR_FORMAT, "%s: artifact format version %u, this kiln reads %u", path,
                          f->version, KA_VERSION);
    uint32_t mark = get32(b + 8);
    if (mark == __builtin_bswap32(KA_ENDIAN_MARK))
        return kiln__fail(KILN_ERR_FORMAT, "%s: big-endian artifact, this kiln reads little-endian ones", path);
    if (mark != KA_ENDIAN_MARK)
        return kiln__fail(KILN_ERR_FORMAT, "%s: bad endianness marker 0x%08x", path, mark);
    uint32_t hsize = get32(b + 12);
    f->flags = get32(b + 16);
    f->n_sections = get32(b + 20);
    if (f->n_sections < 1 || f->n_sections > KA_MAX_SECTIONS)
        return kiln__fail(KILN_ERR_FORMAT, "%s: header: %u sections (1 to %u allowed)", path, f->n_sections,
                          KA_MAX_SECTIONS);
    if (hsize != KA_FIXED_HEADER + KA_SECTION_ENTRY * f->n_sections + 8)
        return kiln__fail(KILN_ERR_FORMAT, "%s: header size %u does not fit its %u sections", path, hsize,
                          f->n_sections);
    if (size < hsize)
        return kiln__fail(KILN_ERR_FORMAT, "%s: truncated (%llu bytes, shorter than the %u-byte header)", path,
                          (unsigned long long)size, hsize);
    if (XXH3_64bits(b, hsize - 8) != get64(b + hsize - 8))
        return kiln__fail(KILN_ERR_FORMAT, "%s: header checksum mismatch (file is corrupt)", path);
    uint64_t want = get64(b + 24);
    if (size < want)
        return kiln__fail(KILN_ERR_FORMAT, "%s: truncated (%llu of %llu bytes)", path,
                          (unsigned long long)size, (unsigned long long)want);
    if (size > want)
        return kiln__fail(KILN_ERR_FORMAT, "%s: %llu bytes of trailing data after the artifact's %llu", path,
                          (unsigned long long)(size - want), (unsigned long long)want);

    const uint8_t *isa = b + 32;
    size_t isa_len = strnlen((const char *)isa, KA_ISA_LEN);
    if (isa_len == KA_ISA_LEN)
        return kiln__fail(KILN_ERR_FORMAT, "%s: ISA tag not NUL-terminated", path);
    for (size_t i = 0; i < isa_len; i++) {
        if (isa[i] < 0x20 || isa[i] > 0x7e)
            return kiln__fail(KILN_ERR_FORMAT, "%s: ISA tag not printable", path);
    }
    memcpy(f->isa, isa, isa_len + 1);

    /* Section table: every entry inside the file, no two overlapping, zero in between. */
    uint32_t order[KA_MAX_SECTIONS];
    for (uint32_t i = 0; i < f->n_sections; i++) {
        const uint8_t *e = b + KA_FIXED_HEADER + KA_SECTION_ENTRY * i;
        ka_section *s = &f->sec[i];
        s->type = get32(e);
        s->offset = get64(e + 8);
        s->size = get64(e + 16);
        s->checksum = get64(e + 24);
        uint64_t end;
        if (!kiln__add_ok(s->offset, s->size, &end) || s->offset < hsize || end > size)
            return kiln__fail(KILN_ERR_FORMAT, "%s: section %u (%s): [%llu, +%llu) outside the file's %llu bytes",
                              path, i, section_name(s->type), (unsigned long long)s->offset,
                              (unsigned long long)s->size, (unsigned long long)size);
        if (s->type == KA_SEC_PROGRAM || s->type == KA_SEC_WEIGHTS) {
            const ka_section **slot = s->type == KA_SEC_PROGRAM ? &f->program : &f->weights;
            if (*slot)
                return kiln__fail(KILN_ERR_FORMAT, "%s: two %s sections", path, section_name(s->type));
            *slot = s;
        }
        /* insertion sort by offset (at most 16 entries) */
        uint32_t k = i;
        while (k > 0 && f->sec[order[k - 1]].offset > s->offset) {
            order[k] = order[k - 1];
            k--;
        }
        order[k] = i;
    }
    if (!f->program)
        return kiln__fail(KILN_ERR_FORMAT, "%s: no program section", path);
    if (!f->weights)
        return kiln__fail(KILN_ERR_FORMAT, "%s: no weight section", path);
    uint64_t pos = hsize, at;
    for (uint32_t k = 0; k <= f->n_sections; k++) {
        const ka_section *s = k < f->n_sections ? &f->sec[order[k]] : NULL;
        uint64_t next = s ? s->offset : size;
        if (next < pos)
            return kiln__fail(KILN_ERR_FORMAT, "%s: section %u (%s) overlaps the one before it", path, order[k],
                              section_name(s->type));
        if (!all_zero(b + pos, next - pos, &at))
            return kiln__fail(KILN_ERR_FORMAT, "%s: nonzero padding byte at offset %llu (file is corrupt)", path,
                              (unsigned long long)(pos + at));
        if (s)
            pos = s->offset + s->size;
    }
    if (f->weights->offset % KA_WEIGHT_ALIGN)
        return kiln__fail(KILN_ERR_FORMAT, "%s: weight section at offset %llu, not a multiple of %u", path,
                          (unsigned long long)f->weights->offset, KA_WEIGHT_ALIGN);
    for (uint32_t i = 0; i < f->n_sections; i++) {
        const ka_section *s = &f->sec[i];
        if (s == f->weights)
            continue; /* verified by ka_verify_weights, on demand */
        if (XXH3_64bits(b + s->offset, (size_t)s->size) != s->checksum)
            return kiln__fail(KILN_ERR_FORMAT, "%s: %s section checksum mismatch (file is corrupt)", path,
                              section_name(s->type));
    }
    return KILN_OK;
}

/* Allocates a copy target for n elements of `size` bytes; NULL (and *ok untouched) when n
 * is 0, NULL with *ok = false when out of memory. */
/* Never NULL on success, even for n == 0: index arithmetic on a pool is then always defined. */
static void *alloc_array(uint32_t n, size_t size, bool *ok)
{
    void *a = kiln__malloc((size_t)(n ? n : 1) * size);
    if (!a)
        *ok = false;
    return a;
}

static kiln_status parse_program(const ka_file *f, kp_program **out)
{
    const uint8_t *b = f->map + f->program->offset;
    uint64_t size = f->program->size;
    const char *path = f->path;
    if (size < KA_PROGRAM_HEAD)
        return kiln__fail(KILN_ERR_FORMAT, "%s: program section too small (%llu bytes)", path,
                          (unsigned long long)size);
    kp_program *p = kiln__calloc(1, sizeof *p);
    if (!p)
        return kiln__fail(KILN_ERR_NOMEM, "%s: out of memory reading the program", path);
    p->n_values = get32(b);
    p->n_ops = get32(b + 4);
    p->n_io = get32(b + 8);
    p->n_ia = get32(b + 12);
    p->n_fa = get32(b + 16);
    p->n_blob = get32(b + 20);
    p->n_strings = get32(b + 24);
    p->n_inputs = get32(b + 28);
    p->n_outputs = get32(b + 32);
    p->arena_bytes = get64(b + 40);
    p->weight_bytes = get64(b + 48);
    p->flags = f->flags & KA_KNOWN_FLAGS;
    p->weights = f->map + f->weights->offset;
    p->owns_weights = false;
    kiln_status st;
    uint64_t need = program_bytes(p);
    if (need != size) {
        st = kiln__fail(KILN_ERR_FORMAT, "%s: program section is %llu bytes, its counts need %llu", path,
                        (unsigned long long)size, (unsigned long long)need);
        goto fail;
    }
    if (p->weight_bytes != f->weights->size) {
        st = kiln__fail(KILN_ERR_FORMAT, "%s: program expects %llu bytes of weights, the weight section has %llu",
                        path, (unsigned long long)p->weight_bytes, (unsigned long long)f->weights->size);
        goto fail;
    }
    /* From here every count is bounded by the section's size, so no allocation is huge. */
    bool ok = true;
    p->values = alloc_array(p->n_values, sizeof *p->values, &ok);
    p->ops = alloc_array(p->n_ops, sizeof *p->ops, &ok);
    p->ia = alloc_array(p->n_ia, sizeof *p->ia, &ok);
    p->fa = alloc_array(p->n_fa, sizeof *p->fa, &ok);
    p->io = alloc_array(p->n_io, sizeof *p->io, &ok);
    p->inputs = alloc_array(p->n_inputs, sizeof *p->inputs, &ok);
    p->outputs = alloc_array(p->n_outputs, sizeof *p->outputs, &ok);
    p->blob = alloc_array(p->n_blob, 1, &ok);
    p->strings = alloc_array(p->n_strings, 1, &ok);
    if (!ok) {
        st = kiln__fail(KILN_ERR_NOMEM, "%s: out of memory reading the program", path);
        goto fail;
    }
    const uint8_t *c = b + KA_PROGRAM_HEAD;
    for (uint32_t i = 0; i < p->n_values; i++, c += KA_VALUE_BYTES) {
        kp_value *v = &p->values[i];
        v->name = get32(c);
        v->dtype = c[4];
        v->ndim = c[5];
        v->kind = c[6];
        v->pad0 = 0;
        for (int d = 0; d < KILN_MAX_DIMS; d++)
            v->shape[d] = (int64_t)get64(c + 8 + 8 * d);
        v->offset = get64(c + 72);
        v->nbytes = get64(c + 80);
        v->layout = get32(c + 88);
        v->n_layout = get32(c + 92);
        v->hash = get64(c + 96);
    }
    for (uint32_t i = 0; i < p->n_ops; i++, c += KA_OP_BYTES) {
        kp_op *op = &p->ops[i];
        op->kind = get16(c);
        op->sub = get16(c + 2);
        op->n_in = get16(c + 4);
        op->n_out = get16(c + 6);
        op->io = get32(c + 8);
        op->ia = get32(c + 12);
        op->n_ia = get32(c + 16);
        op->fa = get32(c + 20);
        op->n_fa = get32(c + 24);
        op->name = get32(c + 28);
    }
    for (uint32_t i = 0; i < p->n_ia; i++, c += 8)
        p->ia[i] = (int64_t)get64(c);
    for (uint32_t i = 0; i < p->n_fa; i++, c += 4) {
        uint32_t bits = get32(c);
        memcpy(&p->fa[i], &bits, 4);
    }
    for (uint32_t i = 0; i < p->n_io; i++, c += 4)
        p->io[i] = (int32_t)get32(c);
    for (uint32_t i = 0; i < p->n_inputs; i++, c += 4)
        p->inputs[i] = get32(c);
    for (uint32_t i = 0; i < p->n_outputs; i++, c += 4)
        p->outputs[i] = get32(c);
    if (p->n_blob)
        memcpy(p->blob, c, p->n_blob);
    c += p->n_blob;
    if (p->n_strings)
        memcpy(p->strings, c, p->n_strings);
    c += p->n_strings;
    KILN_ASSERT(c == b + size);
    if ((st = kp_program_validate(p, path)) != KILN_OK)
        goto fail;
    *out = p;
    return KILN_OK;
fail:
    kp_program_free(p);
    return st;
}

kiln_status ka_open(const char *path, ka_file **file, kp_program **prog)
{
    if (!path || !file || !prog)
        return kiln__fail(KILN_ERR_ARG, "ka_open: NULL argument");
    ka_file *f = kiln__calloc(1, sizeof *f);
    if (!f || !(f->path = kiln__strdup(path))) {
        kiln__free(f);
        return kiln__fail(KILN_ERR_NOMEM, "%s: out of memory", path);
    }
    kiln_status st;
    kp_program *p = NULL;
    /* O_NONBLOCK: a FIFO (or device) must not block the open; it is refused below. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        st = kiln__fail(KILN_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st = kiln__fail(KILN_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        st = kiln__fail(KILN_ERR_IO, "%s: %s", path, S_ISDIR(sb.st_mode) ? "is a directory" : "not a regular file");
        close(fd);
        goto fail;
    }
    if (sb.st_size == 0) {
        st = kiln__fail(KILN_ERR_FORMAT, "%s: not a kiln artifact (empty file)", path);
        close(fd);
        goto fail;
    }
    f->size = (uint64_t)sb.st_size;
    f->id = (ka_file_id){ sb.st_dev, sb.st_ino, sb.st_size, sb.st_mtim, sb.st_ctim };
    void *map = mmap(NULL, (size_t)f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (map == MAP_FAILED) {
        st = kiln__fail(KILN_ERR_IO, "%s: cannot map: %s", path, strerror(map_errno));
        goto fail;
    }
    f->map = map;
    if ((st = parse_header(f)) != KILN_OK || (st = parse_program(f, &p)) != KILN_OK)
        goto fail;
    if (f->weights->size) {
        /* Start reading the weights in now; placement will want them. */
        uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
        uintptr_t lo = (uintptr_t)(f->map + f->weights->offset) & ~(page - 1);
        uintptr_t hi = (uintptr_t)(f->map + f->weights->offset + f->weights->size);
        (void)madvise((void *)lo, hi - lo, MADV_WILLNEED);
    }
    *file = f;
    *prog = p;
    return KILN_OK;
fail:
    ka_close(f);
    return st;
}

uint64_t ka_file_size(const ka_file *f) { return f->size; }
const char *ka_file_path(const ka_file *f) { return f->path; }
uint32_t ka_file_version(const ka_file *f) { return f->version; }
const char *ka_file_isa(const ka_file *f) { return f->isa; }
uint32_t ka_file_num_sections(const ka_file *f) { return f->n_sections; }
const ka_section *ka_file_section(const ka_file *f, uint32_t i) { return i < f->n_sections ? &f->sec[i] : NULL; }

void ka_close(ka_file *f)
{
    if (!f)
        return;
    if (f->map)
        munmap((void *)f->map, (size_t)f->size);
    kiln__free(f->path);
    kiln__free(f);
}
