/*
 * npy.c — NumPy .npy files (see npy.h): the preamble (magic, version, header length), a
 * parser for the header's Python dict literal, the dtype table, Fortran-to-C reordering,
 * and the version 1.0 writer. Nothing read from a file is trusted before it is checked
 * against the file's length.
 */
#define _GNU_SOURCE
#include "cli/npy.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define NPY_MAGIC      "\x93NUMPY"
#define NPY_MAGIC_LEN  6
#define NPY_ALIGN      64
/* A real header is under a few hundred bytes; numpy itself refuses more than 10000. */
#define NPY_MAX_HEADER (1u << 20)

static _Thread_local char npy_err[512];

const char *npy_last_error(void) { return npy_err; }

static kiln_status npy_fail(kiln_status s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static kiln_status npy_fail(kiln_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(npy_err, sizeof npy_err, fmt, ap);
    va_end(ap);
    return s;
}

/* ---- dtypes ---- */

static const struct npy_type {
    const char *code;     /* descr without the byte-order character */
    kiln_dtype  dtype;
    size_t      size;
} npy_types[] = {
    {"f4", KILN_F32, 4}, {"f8", KILN_F64, 8}, {"f2", KILN_F16, 2}, {"i1", KILN_I8, 1},
    {"u1", KILN_U8, 1},  {"i4", KILN_I32, 4}, {"i8", KILN_I64, 8}, {"b1", KILN_BOOL, 1},
};
#define NPY_NTYPES (sizeof npy_types / sizeof npy_types[0])
#define NPY_SUPPORTED "<f4 <f8 <f2 |i1 |u1 <i4 <i8 |b1"

static const struct npy_type *npy_type_of(kiln_dtype dt)
{
    for (size_t i = 0; i < NPY_NTYPES; i++)
        if (npy_types[i].dtype == dt)
            return &npy_types[i];
    return NULL;
}

static kiln_status npy_descr(const char *what, const char *descr, const struct npy_type **out)
{
    char order = descr[0];
    const char *code = descr + (order ? 1 : 0);
    for (size_t i = 0; i < NPY_NTYPES; i++) {
        if (strcmp(code, npy_types[i].code) != 0)
            continue;
        if (order == '<' || (order == '|' && npy_types[i].size == 1)) {
            *out = &npy_types[i];
            return KILN_OK;
        }
        if (order == '>')
            return npy_fail(KILN_ERR_UNSUPPORTED,
                            "%s: dtype '%s' is big-endian (only little-endian is supported)",
                            what, descr);
        break;
    }
    return npy_fail(KILN_ERR_UNSUPPORTED, "%s: unsupported dtype '%s' (supported: " NPY_SUPPORTED ")",
                    what, descr);
}

/* ---- the header dict: {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } ---- */

typedef struct npy_header {
    const struct npy_type *type;
    int      fortran;
    int      ndim;
    int64_t  shape[KILN_MAX_DIMS];
    uint64_t numel, nbytes;
} npy_header;

typedef struct npy_lexer {
    const char *p, *end;
    const char *what;
} npy_lexer;

static void npy_skip_ws(npy_lexer *lx)
{
    while (lx->p < lx->end && (*lx->p == ' ' || *lx->p == '\t' || *lx->p == '\n' || *lx->p == '\r'))
        lx->p++;
}

/* Skips white space, then consumes c if it is next. */
static int npy_accept(npy_lexer *lx, char c)
{
    npy_skip_ws(lx);
    if (lx->p < lx->end && *lx->p == c) {
        lx->p++;
        return 1;
    }
    return 0;
}

static kiln_status npy_syntax(const npy_lexer *lx, const char *expected)
{
    return npy_fail(KILN_ERR_FORMAT, "%s: malformed .npy header: expected %s", lx->what, expected);
}

/* A quoted string without escapes, into buf (at most cap-1 characters). */
static kiln_status npy_string(npy_lexer *lx, char *buf, size_t cap)
{
    npy_skip_ws(lx);
    if (lx->p >= lx->end || (*lx->p != '\'' && *lx->p != '"'))
        return npy_syntax(lx, "a quoted string");
    char quote = *lx->p++;
    size_t n = 0;
    while (lx->p < lx->end && *lx->p != quote) {
        if (*lx->p == '\\' || n + 1 >= cap)
            return npy_syntax(lx, "a short string without escapes");
        buf[n++] = *lx->p++;
    }
    if (lx->p >= lx->end)
        return npy_syntax(lx, "a closing quote");
    lx->p++;
    buf[n] = '\0';
    return KILN_OK;
}

static kiln_status npy_bool(npy_lexer *lx, int *v)
{
    npy_skip_ws(lx);
    size_t left = (size_t)(lx->end - lx->p);
    if (left >= 4 && memcmp(lx->p, "True", 4) == 0) {
        lx->p += 4;
        *v = 1;
    } else if (left >= 5 && memcmp(lx->p, "False", 5) == 0) {
        lx->p += 5;
        *v = 0;
    } else {
        return npy_syntax(lx, "True or False for 'fortran_order'");
    }
    return KILN_OK;
}

/* A non-negative decimal integer (Python 2 files may add an 'L'). */
static kiln_status npy_int(npy_lexer *lx, int64_t *v)
{
    npy_skip_ws(lx);
    if (lx->p >= lx->end || *lx->p < '0' || *lx->p > '9')
        return npy_syntax(lx, "a non-negative integer in 'shape'");
    uint64_t x = 0;
    while (lx->p < lx->end && *lx->p >= '0' && *lx->p <= '9') {
        x = x * 10 + (uint64_t)(*lx->p++ - '0');
        if (x > (uint64_t)INT64_MAX)
            return npy_fail(KILN_ERR_FORMAT, "%s: .npy shape dimension overflows", lx->what);
    }
    if (lx->p < lx->end && *lx->p == 'L')
        lx->p++;
    *v = (int64_t)x;
    return KILN_OK;
}

/* '(' [int (',' int)* [',']] ')' */
static kiln_status npy_shape(npy_lexer *lx, npy_header *h)
{
    if (!npy_accept(lx, '('))
        return npy_syntax(lx, "a tuple for 'shape'");
    h->ndim = 0;
    if (npy_accept(lx, ')'))
        return KILN_OK;
    for (;;) {
        int64_t d = 0;
        kiln_status s = npy_int(lx, &d);
        if (s != KILN_OK)
            return s;
        if (h->ndim == KILN_MAX_DIMS)
            return npy_fail(KILN_ERR_UNSUPPORTED, "%s: array has more than %d dimensions",
                            lx->what, KILN_MAX_DIMS);
        h->shape[h->ndim++] = d;
        if (npy_accept(lx, ')'))
            return KILN_OK;
        if (!npy_accept(lx, ','))
            return npy_syntax(lx, "',' or ')' in 'shape'");
        if (npy_accept(lx, ')'))
            return KILN_OK;
    }
}

static kiln_status npy_dict(const char *text, size_t len, const char *what, npy_header *h)
{
    npy_lexer lx = {text, text + len, what};
    enum { DESCR = 1, FORTRAN = 2, SHAPE = 4 };
    unsigned seen = 0;
    kiln_status s;

    if (!npy_accept(&lx, '{'))
        return npy_syntax(&lx, "'{'");
    while (!npy_accept(&lx, '}')) {
        char key[32], descr[32];
        if ((s = npy_string(&lx, key, sizeof key)) != KILN_OK)
            return s;
        if (!npy_accept(&lx, ':'))
            return npy_syntax(&lx, "':' after a key");
        unsigned bit;
        if (strcmp(key, "descr") == 0) {
            bit = DESCR;
            npy_skip_ws(&lx);
            if (lx.p < lx.end && *lx.p == '[')
                return npy_fail(KILN_ERR_UNSUPPORTED, "%s: structured dtypes are not supported", what);
            if ((s = npy_string(&lx, descr, sizeof descr)) != KILN_OK ||
                (s = npy_descr(what, descr, &h->type)) != KILN_OK)
                return s;
        } else if (strcmp(key, "fortran_order") == 0) {
            bit = FORTRAN;
            if ((s = npy_bool(&lx, &h->fortran)) != KILN_OK)
                return s;
        } else if (strcmp(key, "shape") == 0) {
            bit = SHAPE;
            if ((s = npy_shape(&lx, h)) != KILN_OK)
                return s;
        } else {
            return npy_fail(KILN_ERR_FORMAT, "%s: unknown key '%s' in .npy header", what, key);
        }
        if (seen & bit)
            return npy_fail(KILN_ERR_FORMAT, "%s: key '%s' twice in .npy header", what, key);
        seen |= bit;
        if (!npy_accept(&lx, ',')) {
            if (!npy_accept(&lx, '}'))
                return npy_syntax(&lx, "',' or '}'");
            break;
        }
    }
    npy_skip_ws(&lx);
    if (lx.p != lx.end)
        return npy_syntax(&lx, "only padding after the dict");
    if (seen != (DESCR | FORTRAN | SHAPE))
        return npy_fail(KILN_ERR_FORMAT, "%s: .npy header lacks '%s'", what,
                        !(seen & DESCR) ? "descr" : !(seen & FORTRAN) ? "fortran_order" : "shape");

    uint64_t n = 1;
    for (int i = 0; i < h->ndim; i++) /* every partial product fits int64, as kiln__numel wants */
        if (__builtin_mul_overflow(n, (uint64_t)h->shape[i], &n) || n > (uint64_t)INT64_MAX)
            return npy_fail(KILN_ERR_FORMAT, "%s: .npy shape is too large", what);
    h->numel = n;
    if (__builtin_mul_overflow(n, (uint64_t)h->type->size, &h->nbytes) || h->nbytes > SIZE_MAX / 2)
        return npy_fail(KILN_ERR_FORMAT, "%s: .npy shape is too large", what);
    return KILN_OK;
}

/* Magic, version and header length from the first bytes of a file of file_len bytes
 * (avail of them in p). On success the header text is at [*hstart, *hstart + *hlen). */
static kiln_status npy_preamble(const unsigned char *p, size_t avail, uint64_t file_len,
                                const char *what, size_t *hstart, size_t *hlen)
{
    if (avail < NPY_MAGIC_LEN + 2 || memcmp(p, NPY_MAGIC, NPY_MAGIC_LEN) != 0)
        return npy_fail(KILN_ERR_FORMAT, "%s: not a .npy file (bad magic)", what);
    unsigned major = p[6], minor = p[7];
    if (major < 1 || major > 3 || minor != 0)
        return npy_fail(KILN_ERR_FORMAT, "%s: unsupported .npy format version %u.%u", what,
                        major, minor);
    size_t start = major == 1 ? 10 : 12;
    if (avail < start || file_len < start)
        return npy_fail(KILN_ERR_FORMAT, "%s: .npy file truncated in its preamble", what);
    uint64_t n = (uint64_t)p[8] | (uint64_t)p[9] << 8;
    if (major > 1)
        n |= (uint64_t)p[10] << 16 | (uint64_t)p[11] << 24;
    if (n > NPY_MAX_HEADER)
        return npy_fail(KILN_ERR_FORMAT, "%s: .npy header length %llu is implausible", what,
                        (unsigned long long)n);
    if (n > file_len - start)
        return npy_fail(KILN_ERR_FORMAT, "%s: .npy file truncated in its header", what);
    *hstart = start;
    *hlen = (size_t)n;
    return KILN_OK;
}

static kiln_status npy_check_data_len(const npy_header *h, uint64_t have, const char *what)
{
    if (have == h->nbytes)
        return KILN_OK;
    return npy_fail(KILN_ERR_FORMAT, "%s: .npy header declares %llu bytes of data, file holds %llu",
                    what, (unsigned long long)h->nbytes, (unsigned long long)have);
}

/* Copies numel elements of size es from Fortran order (src) to C order (dst). */
static void npy_fortran_to_c(const unsigned char *src, unsigned char *dst, const npy_header *h)
{
    size_t es = h->type->size, fstride[KILN_MAX_DIMS], s = 1, off = 0;
    int64_t idx[KILN_MAX_DIMS] = {0};
    for (int k = 0; k < h->ndim; k++) {
        fstride[k] = s;
        s *= (size_t)h->shape[k];
    }
    for (uint64_t n = 0; n < h->numel; n++) {
        memcpy(dst + n * es, src + off * es, es);
        for (int k = h->ndim - 1; k >= 0; k--) {
            if (++idx[k] < h->shape[k]) {
                off += fstride[k];
                break;
            }
            off -= fstride[k] * (size_t)(h->shape[k] - 1);
            idx[k] = 0;
        }
    }
}

/* Hands the data over to *t, reordering it to C order if needed (frees or keeps raw). */
static kiln_status npy_finish(const npy_header *h, void *raw, const char *what, kiln_tensor *t)
{
    void *data = raw;
    if (h->fortran && h->ndim > 1 && h->numel > 1) {
        data = malloc(h->nbytes);
        if (!data) {
            free(raw);
            return npy_fail(KILN_ERR_NOMEM, "%s: out of memory", what);
        }
        npy_fortran_to_c(raw, data, h);
        free(raw);
    }
    memset(t, 0, sizeof *t);
    t->dtype = h->type->dtype;
    t->ndim = h->ndim;
    memcpy(t->shape, h->shape, sizeof h->shape[0] * (size_t)h->ndim);
    t->data = data;
    return KILN_OK;
}

kiln_status npy_read_mem(const void *buf, size_t len, kiln_tensor *t)
{
    const char *what = "<memory>";
    const unsigned char *p = buf;
    size_t hstart = 0, hlen = 0;
    npy_header h = {0};
    kiln_status s;

    if (!buf || !t)
        return npy_fail(KILN_ERR_ARG, "npy_read_mem: NULL argument");
    if ((s = npy_preamble(p, len, len, what, &hstart, &hlen)) != KILN_OK ||
        (s = npy_dict((const char *)p + hstart, hlen, what, &h)) != KILN_OK ||
        (s = npy_check_data_len(&h, len - hstart - hlen, what)) != KILN_OK)
        return s;
    void *raw = malloc(h.nbytes ? h.nbytes : 1);
    if (!raw)
        return npy_fail(KILN_ERR_NOMEM, "%s: out of memory", what);
    memcpy(raw, p + hstart + hlen, h.nbytes);
    return npy_finish(&h, raw, what, t);
}

kiln_status npy_read(const char *path, kiln_tensor *t)
{
    if (!path || !t)
        return npy_fail(KILN_ERR_ARG, "npy_read: NULL argument");
    FILE *f = fopen(path, "rb");
    if (!f)
        return npy_fail(KILN_ERR_IO, "%s: %s", path, strerror(errno));

    kiln_status s;
    unsigned char pre[12];
    char *text = NULL;
    void *raw = NULL;
    size_t hstart = 0, hlen = 0;
    npy_header h = {0};
    struct stat st;

    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        s = npy_fail(KILN_ERR_IO, "%s: not a regular file", path);
        goto done;
    }
    uint64_t file_len = (uint64_t)st.st_size;
    size_t got = fread(pre, 1, sizeof pre, f);
    if ((s = npy_preamble(pre, got, file_len, path, &hstart, &hlen)) != KILN_OK)
        goto done;
    text = malloc(hlen + 1);
    if (!text) {
        s = npy_fail(KILN_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    if (fseek(f, (long)hstart, SEEK_SET) != 0 || fread(text, 1, hlen, f) != hlen) {
        s = npy_fail(KILN_ERR_IO, "%s: read failed in the .npy header", path);
        goto done;
    }
    if ((s = npy_dict(text, hlen, path, &h)) != KILN_OK ||
        (s = npy_check_data_len(&h, file_len - hstart - hlen, path)) != KILN_OK)
        goto done;
    raw = malloc(h.nbytes ? h.nbytes : 1);
    if (!raw) {
        s = npy_fail(KILN_ERR_NOMEM, "%s: out of memory for %llu bytes", path,
                     (unsigned long long)h.nbytes);
        goto done;
    }
    if (fread(raw, 1, h.nbytes, f) != h.nbytes) {
        s = npy_fail(KILN_ERR_IO, "%s: read failed (file shrank?)", path);
        goto done;
    }
    s = npy_finish(&h, raw, path, t);
    raw = NULL;
done:
    free(raw);
    free(text);
    fclose(f);
    return s;
}

/* ---- writing ---- */

kiln_status npy_write(const char *path, const kiln_tensor *t)
{
    if (!path || !t)
        return npy_fail(KILN_ERR_ARG, "npy_write: NULL argument");
    if (t->ndim < 0 || t->ndim > KILN_MAX_DIMS)
        return npy_fail(KILN_ERR_ARG, "%s: cannot write a tensor of %d dimensions", path, (int)t->ndim);
    const struct npy_type *type = npy_type_of(t->dtype);
    if (!type)
        return npy_fail(t->dtype == KILN_BF16 ? KILN_ERR_UNSUPPORTED : KILN_ERR_ARG,
                        "%s: dtype %d has no .npy equivalent", path, (int)t->dtype);

    /* numpy's own layout: "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }" */
    char hdr[NPY_ALIGN * 8];
    uint64_t nbytes = type->size;
    int n = snprintf(hdr, sizeof hdr, "{'descr': '%c%s', 'fortran_order': False, 'shape': (",
                     type->size == 1 ? '|' : '<', type->code);
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0 || __builtin_mul_overflow(nbytes, (uint64_t)t->shape[i], &nbytes))
            return npy_fail(KILN_ERR_ARG, "%s: bad shape dimension %lld", path,
                            (long long)t->shape[i]);
        n += snprintf(hdr + n, sizeof hdr - (size_t)n, "%s%lld", i ? ", " : "",
                      (long long)t->shape[i]);
    }
    n += snprintf(hdr + n, sizeof hdr - (size_t)n, "%s), }", t->ndim == 1 ? "," : "");
    if (nbytes && !t->data)
        return npy_fail(KILN_ERR_ARG, "%s: tensor has no data", path);
    /* pad with spaces so that preamble (10) + header ends at a multiple of 64, then '\n' */
    size_t total = (10 + (size_t)n + 1 + NPY_ALIGN - 1) / NPY_ALIGN * NPY_ALIGN;
    size_t hlen = total - 10;
    memset(hdr + n, ' ', hlen - 1 - (size_t)n);
    hdr[hlen - 1] = '\n';

    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                             (unsigned char)(hlen & 0xff), (unsigned char)(hlen >> 8)};
    FILE *f = fopen(path, "wb");
    if (!f)
        return npy_fail(KILN_ERR_IO, "%s: %s", path, strerror(errno));
    int ok = fwrite(pre, 1, sizeof pre, f) == sizeof pre && fwrite(hdr, 1, hlen, f) == hlen &&
             (nbytes == 0 || fwrite(t->data, 1, nbytes, f) == nbytes);
    int err = errno;
    if (fclose(f) != 0 && ok) {
        ok = 0;
        err = errno;
    }
    if (!ok)
        return npy_fail(KILN_ERR_IO, "%s: write failed: %s", path, strerror(err));
    return KILN_OK;
}
