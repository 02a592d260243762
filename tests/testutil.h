/*
 * testutil.h — the tiny harness every C test uses: CHECK/CHECK_OK record a failure with
 * file and line and go on; test_done() prints "N passed, N failed" and gives the exit code.
 */
#ifndef KILN_TESTUTIL_H
#define KILN_TESTUTIL_H

#include "kiln.h"
#include <stddef.h>
#include <stdio.h>

extern _Atomic int test_passed, test_failed;

#define CHECK(c) test_check((c), #c, __FILE__, __LINE__)
#define CHECK_OK(call) test_check_status((call), KILN_OK, #call, __FILE__, __LINE__)
#define CHECK_STATUS(call, want) test_check_status((call), (want), #call, __FILE__, __LINE__)

int  test_check(int ok, const char *what, const char *file, int line);
int  test_check_status(kiln_status got, kiln_status want, const char *what, const char *file, int line);
/* A scratch directory for this test program (created; KILN_TEST_TMP or /tmp based). */
const char *test_tmpdir(void);
/* path = test_tmpdir()/name, in a static rotating buffer. */
const char *test_path(const char *name);
int  test_done(const char *name);
/* Elements of t (the product of its shape). */
size_t test_numel(const kiln_tensor *t);
/* max|got - ref| / max|ref| over n floats (max|got - ref| when ref is all zero); INFINITY
 * if got has a NaN where it should not. */
double test_rel_err(const float *got, const float *ref, size_t n);

#endif
