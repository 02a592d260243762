/*
 * fuzz_entry.h — the entry points kiln's fuzz targets drive (fuzz/fuzz_*.c wrap each in
 * LLVMFuzzerTestOneInput) and tests/test_fuzz_regressions.c replays every kept input
 * through. Each takes one input's bytes, exercises a parser and what follows it, and
 * returns 0; a bug shows as a crash, a sanitizer report, a leak or an abort.
 */
#ifndef KILN_FUZZ_ENTRY_H
#define KILN_FUZZ_ENTRY_H

#include <stddef.h>
#include <stdint.h>

/* The artifact reader: the bytes as a .kiln file through ka_open, ka_verify_weights and
 * kp_program_validate; then (so the fuzzer gets past the checksums) the same bytes with
 * the header and program checksums recomputed; a program that opens is re-saved with
 * fresh weight hashes and loaded eagerly with kiln_load_ex, then run on zero inputs. */
int kf_artifact(const uint8_t *data, size_t n);

/* The ONNX importer and trace: kg_import_buffer, then kiln_onnx_trace with example inputs
 * from the graph's declared inputs (dynamic dims -> 1; graphs asking for more than
 * KF_MAX_ELEMS elements are skipped); a traced program must pass kp_program_validate. */
int kf_onnx(const uint8_t *data, size_t n);

/* The .npy reader of the command line (npy_read_mem); every byte of a result is read. */
int kf_npy(const uint8_t *data, size_t n);

/* Caps that keep one input from asking for gigabytes or minutes. */
#define KF_MAX_ELEMS      (1 << 20)          /* per example input or model input/output */
#define KF_MAX_ARENA      (64ull << 20)      /* activation arena of a loaded/traced program */

#endif
