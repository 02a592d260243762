/*
 * artifact_impl.h — what the format module shares between its own files (artifact.c,
 * inspect.c) and its tests, beyond the contract in artifact.h: the header's informational
 * fields, the section table, per-checksum verification for reports, and a write-failure
 * hook for the atomic-save tests.
 */
#ifndef KILN_ARTIFACT_IMPL_H
#define KILN_ARTIFACT_IMPL_H

#include "format/artifact.h"

#define KA_VERSION      1u      /* the format version this kiln writes and reads */
#define KA_WEIGHT_ALIGN 4096u   /* file offset alignment of the weight section */
#define KA_ISA_LEN      32u     /* bytes of the ISA tag field (NUL-padded) */

enum { KA_SEC_PROGRAM = 1, KA_SEC_WEIGHTS = 2 };

typedef struct ka_section {
    uint32_t type;              /* KA_SEC_* (others: skipped, but bounds- and checksum-checked) */
    uint64_t offset, size;      /* in the file */
    uint64_t checksum;          /* XXH3-64; for weights, see artifact.c */
} ka_section;

/* The target tag of this machine, e.g. "x86_64-avx512" (from the CPU's features). */
KILN_INTERNAL const char *ka_isa_tag(void);

KILN_INTERNAL uint32_t    ka_file_version(const ka_file *f);
KILN_INTERNAL const char *ka_file_isa(const ka_file *f);
KILN_INTERNAL uint32_t    ka_file_num_sections(const ka_file *f);
KILN_INTERNAL const ka_section *ka_file_section(const ka_file *f, uint32_t i); /* file order */

/* Checks every weight checksum without stopping at the first failure: bad[v] (n_values
 * bytes, may be NULL) is set to 1 for each CONST value whose bytes do not match its hash,
 * *n_bad counts them, *section_ok says whether the weight section's own checksum (which
 * covers the bytes between tensors) holds. KILN_ERR_NOMEM or KILN_ERR_ARG only; the
 * outcome of the check is in the out-parameters. */
KILN_INTERNAL kiln_status ka_check_weights(const ka_file *f, const kp_program *p, uint8_t *bad,
                                           uint32_t *n_bad, bool *section_ok);

/* Test hooks: make the (n+1)-th file-system call of ka_save fail with EIO (-1: never);
 * skip ka_save's fsyncs (tests that write hundreds of files on a busy disk). */
KILN_INTERNAL void ka__test_fail_io_after(long n);
KILN_INTERNAL void ka__test_skip_fsync(bool skip);
/* ... and how the failing call fails: errno `err` (0: EIO, e.g. ENOSPC), with every write()
 * taking at most max_write bytes (0: no cap), so writes return short and a failure can
 * land in the middle of the file. Stays set until changed. */
KILN_INTERNAL void ka__test_io_fault(int err, size_t max_write);

/* Benchmark hook (bench/bench_kiln.c --no-verify): ka_verify_weights reads one byte of
 * every page of the weights instead of hashing them, so that a benchmark can measure what
 * the hashing itself adds to a load (the weights are in memory at ready either way). */
KILN_INTERNAL void ka__bench_skip_verify(bool skip);

/* Test hook: how many ka_verify_weights calls the verified-file cache answered. */
KILN_INTERNAL unsigned long ka__test_cache_hits(void);

#endif
