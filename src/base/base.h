/*
 * base.h — what every kiln module shares: error reporting (status + thread-local message),
 * assertions for broken invariants, allocation (one place to inject failures), dtype
 * helpers, checked arithmetic and a monotonic clock. Internal: never seen by users.
 */
#ifndef KILN_BASE_H
#define KILN_BASE_H

#include "kiln.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KILN_INTERNAL __attribute__((visibility("hidden")))

/* A broken internal invariant is a bug: print file and line, abort. */
#define KILN_ASSERT(c) \
    do { if (!(c)) kiln__panic(__FILE__, __LINE__, #c); } while (0)
KILN_INTERNAL _Noreturn void kiln__panic(const char *file, int line, const char *what);

/* Records this thread's last error message (printf format) and returns s, so that
 *   return kiln__fail(KILN_ERR_FORMAT, "%s: bad magic", path);
 * is the one way to fail. */
KILN_INTERNAL kiln_status kiln__fail(kiln_status s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Prepends "prefix: " to this thread's last message (for adding context on the way up). */
KILN_INTERNAL void kiln__error_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
KILN_INTERNAL void kiln__clear_error(void);

/* Allocation: every kiln allocation goes through these, so tests can fail the Nth one.
 * They return NULL on failure and never set an error themselves. */
KILN_INTERNAL void *kiln__malloc(size_t n);
KILN_INTERNAL void *kiln__calloc(size_t n, size_t size);
KILN_INTERNAL void *kiln__realloc(void *p, size_t n);
KILN_INTERNAL void *kiln__aligned_alloc(size_t align, size_t n); /* free with kiln__free */
/* Large buffers (activation arenas, scratchpads): page-aligned anonymous memory of n bytes,
 * in transparent huge pages where the system allows (from 2 MiB up: first touch then
 * faults once per 2 MiB instead of once per page). Free with kiln__big_free(p, n). */
KILN_INTERNAL void *kiln__big_alloc(size_t n);
KILN_INTERNAL void  kiln__big_free(void *p, size_t n);
KILN_INTERNAL char *kiln__strdup(const char *s);
KILN_INTERNAL void  kiln__free(void *p);
/* Fault injection for tests: fail the allocation after `n` more succeed (-1: never). */
KILN_API void kiln__test_fail_alloc_after(long n);

/* Grows *p (element size `size`) to hold at least `need` elements; *cap tracks capacity.
 * Returns false (and leaves *p as it was) when out of memory. */
KILN_INTERNAL bool kiln__grow(void **p, size_t *cap, size_t need, size_t size);

/* Checked arithmetic: false on overflow. */
static inline bool kiln__add_ok(uint64_t a, uint64_t b, uint64_t *r) { return !__builtin_add_overflow(a, b, r); }
static inline bool kiln__mul_ok(uint64_t a, uint64_t b, uint64_t *r) { return !__builtin_mul_overflow(a, b, r); }

/* Elements of a shape (1 for ndim 0); -1 if any dim is negative or the product overflows. */
KILN_INTERNAL int64_t kiln__numel(int ndim, const int64_t *shape);
/* "1x3x224x224" into buf (always NUL-terminated). */
KILN_INTERNAL const char *kiln__shape_str(int ndim, const int64_t *shape, char *buf, size_t n);

/* Seconds on a monotonic clock. */
KILN_INTERNAL double kiln__now(void);

static inline uint64_t kiln__align_up(uint64_t x, uint64_t a) { return (x + a - 1) & ~(a - 1); }

#endif
