/*
 * base.c — errors (status names, the thread-local last message), allocation with fault
 * injection, dtype helpers, shape arithmetic and the clock.
 */
#define _GNU_SOURCE
#include "base/base.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static _Thread_local char last_error[1024];

static const char *const status_names[] = {
    [KILN_OK] = "KILN_OK",
    [KILN_ERR_ARG] = "KILN_ERR_ARG",
    [KILN_ERR_IO] = "KILN_ERR_IO",
    [KILN_ERR_FORMAT] = "KILN_ERR_FORMAT",
    [KILN_ERR_UNSUPPORTED] = "KILN_ERR_UNSUPPORTED",
    [KILN_ERR_SHAPE] = "KILN_ERR_SHAPE",
    [KILN_ERR_NOMEM] = "KILN_ERR_NOMEM",
    [KILN_ERR_CORE] = "KILN_ERR_CORE",
    [KILN_ERR_LOAD] = "KILN_ERR_LOAD",
    [KILN_ERR_STATE] = "KILN_ERR_STATE",
    [KILN_ERR_INTERNAL] = "KILN_ERR_INTERNAL",
};

KILN_API const char *kiln_status_name(kiln_status s)
{
    if ((unsigned)s < sizeof status_names / sizeof status_names[0] && status_names[s])
        return status_names[s];
    return "KILN_ERR_UNKNOWN";
}

KILN_API const char *kiln_last_error(void) { return last_error; }

void kiln__clear_error(void) { last_error[0] = '\0'; }

kiln_status kiln__fail(kiln_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return s;
}

void kiln__error_prefix(const char *fmt, ...)
{
    char prefix[512], old[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, last_error, sizeof old);
    snprintf(last_error, sizeof last_error, "%.500s: %.500s", prefix, old);
}

void kiln__panic(const char *file, int line, const char *what)
{
    fprintf(stderr, "kiln: internal error at %s:%d: %s\n", file, line, what);
    abort();
}

/* ---- allocation with fault injection ---- */

static atomic_long alloc_budget = -1; /* allocations left before one fails; -1: never */

KILN_API void kiln__test_fail_alloc_after(long n) { atomic_store(&alloc_budget, n); }

static bool alloc_allowed(void)
{
    long b = atomic_load(&alloc_budget);
    while (b >= 0) {
        if (b == 0)
            return false;
        if (atomic_compare_exchange_weak(&alloc_budget, &b, b - 1))
            return true;
    }
    return true;
}

void *kiln__malloc(size_t n) { return alloc_allowed() ? malloc(n ? n : 1) : NULL; }
void *kiln__calloc(size_t n, size_t size) { return alloc_allowed() ? calloc(n ? n : 1, size ? size : 1) : NULL; }
void *kiln__realloc(void *p, size_t n) { return alloc_allowed() ? realloc(p, n ? n : 1) : NULL; }
void kiln__free(void *p) { free(p); }

void *kiln__aligned_alloc(size_t align, size_t n)
{
    void *p = NULL;
    if (!alloc_allowed() || posix_memalign(&p, align, n ? n : 1) != 0)
        return NULL;
    return p;
}

#define BIG_HUGE ((size_t)2 << 20)

static size_t big_size(size_t n)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    n = n ? n : 1;
    return n >= BIG_HUGE ? (n + BIG_HUGE - 1) & ~(BIG_HUGE - 1) : (n + page - 1) & ~(page - 1);
}

void *kiln__big_alloc(size_t n)
{
    if (!alloc_allowed() || n > SIZE_MAX - 2 * BIG_HUGE)
        return NULL;
    size_t size = big_size(n);
    if (size < BIG_HUGE) {
        void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        return p == MAP_FAILED ? NULL : p;
    }
    /* map with room to put the start on a 2 MiB boundary, then give the slack back */
    uint8_t *raw = mmap(NULL, size + BIG_HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    uint8_t *p = (uint8_t *)(((uintptr_t)raw + BIG_HUGE - 1) & ~(uintptr_t)(BIG_HUGE - 1));
    if (p > raw)
        munmap(raw, (size_t)(p - raw));
    if (p + size < raw + size + BIG_HUGE)
        munmap(p + size, (size_t)(raw + size + BIG_HUGE - (p + size)));
    (void)madvise(p, size, MADV_HUGEPAGE); /* a hint: without THP, plain pages */
    return p;
}

void kiln__big_free(void *p, size_t n)
{
    if (p)
        munmap(p, big_size(n));
}

char *kiln__strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = kiln__malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

bool kiln__grow(void **p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return true;
    size_t c = *cap ? *cap : 8;
    while (c < need)
        c *= 2;
    uint64_t bytes;
    if (!kiln__mul_ok(c, size, &bytes))
        return false;
    void *q = kiln__realloc(*p, bytes);
    if (!q)
        return false;
    *p = q;
    *cap = c;
    return true;
}

/* ---- dtypes and shapes ---- */

KILN_API size_t kiln_dtype_size(kiln_dtype t)
{
    switch (t) {
    case KILN_F32: case KILN_I32: return 4;
    case KILN_F16: case KILN_BF16: return 2;
    case KILN_F64: case KILN_I64: return 8;
    case KILN_I8: case KILN_U8: case KILN_BOOL: return 1;
    }
    return 0;
}

KILN_API const char *kiln_dtype_name(kiln_dtype t)
{
    switch (t) {
    case KILN_F32: return "f32";
    case KILN_F16: return "f16";
    case KILN_BF16: return "bf16";
    case KILN_F64: return "f64";
    case KILN_I8: return "i8";
    case KILN_U8: return "u8";
    case KILN_I32: return "i32";
    case KILN_I64: return "i64";
    case KILN_BOOL: return "bool";
    }
    return "?";
}

int64_t kiln__numel(int ndim, const int64_t *shape)
{
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || !kiln__mul_ok(n, (uint64_t)shape[i], &n) || n > (uint64_t)INT64_MAX)
            return -1;
    }
    return (int64_t)n;
}

const char *kiln__shape_str(int ndim, const int64_t *shape, char *buf, size_t n)
{
    size_t at = 0;
    buf[0] = '\0';
    if (ndim == 0)
        snprintf(buf, n, "scalar");
    for (int i = 0; i < ndim && at < n; i++) {
        int w = snprintf(buf + at, n - at, i ? "x%lld" : "%lld", (long long)shape[i]);
        if (w < 0)
            break;
        at += (size_t)w;
    }
    return buf;
}

double kiln__now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
