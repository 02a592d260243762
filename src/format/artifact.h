/*
 * artifact.h — the .kiln file: writing a program atomically, and reading one back without
 * trusting a byte of it. The byte-by-byte layout is documented in artifact.c's opening
 * comment and in docs/FORMAT.md.
 */
#ifndef KILN_ARTIFACT_H
#define KILN_ARTIFACT_H

#include "compiler/program.h"

/* An open artifact: the file mapping that a loaded program's weights point into. */
typedef struct ka_file ka_file;

/* Writes p (flags, program, weights, checksums) to path atomically: a temporary file in the
 * same directory, fsync, rename, fsync of the directory. On failure nothing at path changed
 * and the temporary file is gone. */
KILN_INTERNAL kiln_status ka_save(const kp_program *p, const char *path);

/* Opens path, checks magic, version, endianness, header and section table (every count,
 * size and offset against the file's size, overflow-safe), verifies the program section's
 * checksum, and builds *prog (kp_program_validate'd) whose weights point into a read-only
 * mapping owned by *file. Weight checksums are NOT checked here: see ka_verify_weights. */
KILN_INTERNAL kiln_status ka_open(const char *path, ka_file **file, kp_program **prog);

/* Verifies the checksum of every CONST value's bytes (and the weight section's own).
 * KILN_ERR_FORMAT naming the file and tensor on mismatch. */
KILN_INTERNAL kiln_status ka_verify_weights(const ka_file *file, const kp_program *prog);

/* The same in steps, for a placement that lets a forward run each op as soon as that op's
 * weights have passed: ka_verify_cached says whether this unchanged file's weights were
 * verified before in this process (nothing to do then); ka_verify_value checks one CONST
 * value's bytes (KILN_ERR_FORMAT naming file and tensor); once every CONST value passed,
 * ka_verify_finish checks the weight section's own checksum (the bytes between tensors)
 * and remembers the file as verified. */
KILN_INTERNAL bool        ka_verify_cached(const ka_file *file);
KILN_INTERNAL kiln_status ka_verify_value(const ka_file *file, const kp_program *prog, uint32_t value);
KILN_INTERNAL kiln_status ka_verify_finish(const ka_file *file, const kp_program *prog);

KILN_INTERNAL uint64_t    ka_file_size(const ka_file *file);
KILN_INTERNAL const char *ka_file_path(const ka_file *file);
/* Unmaps and closes. Programs from this file must be freed first (their weights point here). */
KILN_INTERNAL void        ka_close(ka_file *file);

/* Sets kp_value.hash of every CONST value of p from its bytes (ka_save calls it on a copy
 * of the value table; exposed for tests). */
KILN_INTERNAL void        ka_hash_weights(kp_program *p);

#endif
