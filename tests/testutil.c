/* testutil.c — see testutil.h. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

_Atomic int test_passed, test_failed; /* checks may run on several threads */

int test_check(int ok, const char *what, const char *file, int line)
{
    if (ok) {
        test_passed++;
        return 1;
    }
    test_failed++;
    fprintf(stderr, "FAIL %s:%d: %s\n", file, line, what);
    return 0;
}

int test_check_status(kiln_status got, kiln_status want, const char *what, const char *file, int line)
{
    if (got == want) {
        test_passed++;
        return 1;
    }
    test_failed++;
    fprintf(stderr, "FAIL %s:%d: %s returned %s (wanted %s): %s\n", file, line, what,
            kiln_status_name(got), kiln_status_name(want), kiln_last_error());
    return 0;
}

const char *test_tmpdir(void)
{
    static char dir[1024];
    if (!dir[0]) {
        const char *base = getenv("KILN_TEST_TMP");
        if (!base || !*base)
            base = "/tmp";
        mkdir(base, 0755);
        snprintf(dir, sizeof dir, "%s/kiln-test-%d", base, (int)getpid());
        mkdir(dir, 0755);
    }
    return dir;
}

const char *test_path(const char *name)
{
    static char bufs[8][1200];
    static int at;
    char *b = bufs[at++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", test_tmpdir(), name);
    return b;
}

int test_done(const char *name)
{
    printf("%s: %d passed, %d failed\n", name, test_passed, test_failed);
    return test_failed ? 1 : 0;
}

size_t test_numel(const kiln_tensor *t)
{
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= (size_t)t->shape[i];
    return n;
}

double test_rel_err(const float *got, const float *ref, size_t n)
{
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (!(d <= md))
            md = isnan(d) ? INFINITY : d;
        if (fabs(ref[i]) > mr)
            mr = fabs(ref[i]);
    }
    return mr > 0 ? md / mr : md;
}
