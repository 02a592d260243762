/*
 * npy.h — NumPy .npy files as kiln tensors, for the command line.
 *
 * Reads format versions 1.0, 2.0 and 3.0 and writes 1.0. The header is a Python dict
 * literal with exactly the keys 'descr', 'fortran_order' and 'shape'. Supported dtypes
 * (descr) and the kiln dtype each maps to:
 *
 *     <f4 f32   <f8 f64   <f2 f16   |i1 i8   |u1 u8   <i4 i32   <i8 i64   |b1 bool
 *
 * ('<' and '|' are interchangeable for the one-byte types). Big-endian data and kiln's
 * bf16 (no NumPy dtype) are KILN_ERR_UNSUPPORTED. A Fortran-order array is transposed to
 * C order on reading. Every count and size in a file is checked against the file's length
 * before use: a hostile file yields an error, never a crash or a huge allocation.
 *
 * Uses only the public kiln.h types, and keeps its own error message (npy_last_error),
 * since the CLI never reaches into the library's internals.
 */
#ifndef KILN_NPY_H
#define KILN_NPY_H

#include "kiln.h"

#include <stddef.h>

/* Reads the .npy file at path into *t: dtype, ndim, shape, and data in C order, allocated
 * with malloc (the caller frees t->data; never NULL on success, even for zero elements).
 * Errors: KILN_ERR_IO (cannot open/read), KILN_ERR_FORMAT (not a valid .npy file, or its
 * length disagrees with its header), KILN_ERR_UNSUPPORTED (dtype, byte order, more than
 * KILN_MAX_DIMS dimensions), KILN_ERR_NOMEM. On failure *t is untouched. */
kiln_status npy_read(const char *path, kiln_tensor *t);

/* The same from a whole file's bytes in memory (buf need not be aligned). */
kiln_status npy_read_mem(const void *buf, size_t len, kiln_tensor *t);

/* Writes t (dense, C order) as a version 1.0 .npy file, header padded so the data starts
 * at a multiple of 64 bytes. Errors: KILN_ERR_ARG (bad ndim, shape or dtype),
 * KILN_ERR_UNSUPPORTED (bf16), KILN_ERR_IO. Not atomic: a failed write may leave a
 * partial file at path. */
kiln_status npy_write(const char *path, const kiln_tensor *t);

/* The message of this thread's last npy_* failure ("" if none). */
const char *npy_last_error(void);

#endif
