/*
 * test_npy.c — the CLI's .npy reader/writer (src/cli/npy.c): round trips for every dtype
 * and ranks 0..4, files written by NumPy itself (versions 1.0/2.0/3.0, Fortran order) and
 * files of ours read back by NumPy (when a python3 with numpy is around), and hostile
 * input: every truncation, bad magic/version, overflowing shapes, unknown dtypes, broken
 * dicts, and random mutations — each must give an error, never a crash.
 */
#include "cli/npy.h"
#include "testutil.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPECT(call, want) expect_status((call), (want), #call, __LINE__)

static int expect_status(kiln_status got, kiln_status want, const char *what, int line)
{
    if (got == want)
        return test_check(1, what, __FILE__, line);
    fprintf(stderr, "FAIL %s:%d: %s returned %s (wanted %s): %s\n", __FILE__, line, what,
            kiln_status_name(got), kiln_status_name(want), npy_last_error());
    test_failed++;
    return 0;
}

static const kiln_dtype all_dtypes[] = {KILN_F32, KILN_F64, KILN_F16, KILN_I8,
                                        KILN_U8,  KILN_I32, KILN_I64, KILN_BOOL};
#define N_DTYPES (sizeof all_dtypes / sizeof all_dtypes[0])

static size_t numel(const kiln_tensor *t)
{
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= (size_t)t->shape[i];
    return n;
}

static unsigned char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(n > 0 ? (size_t)n : 1);
    *len = fread(b, 1, (size_t)n, f);
    fclose(f);
    return b;
}

static int write_all(const char *path, const void *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    int ok = fwrite(b, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

/* A .npy image: preamble of version `major`, the dict text as given (no padding added),
 * then nbytes of data. Returns its length. */
static size_t make_npy(unsigned char *out, int major, const char *dict, const void *data,
                       size_t nbytes)
{
    size_t h = strlen(dict), at = 0;
    memcpy(out, "\x93NUMPY", 6);
    out[6] = (unsigned char)major;
    out[7] = 0;
    out[8] = (unsigned char)(h & 0xff);
    out[9] = (unsigned char)(h >> 8);
    at = 10;
    if (major > 1) {
        out[10] = (unsigned char)(h >> 16);
        out[11] = (unsigned char)(h >> 24);
        at = 12;
    }
    memcpy(out + at, dict, h);
    at += h;
    if (nbytes)
        memcpy(out + at, data, nbytes);
    return at + nbytes;
}

/* ---- round trips ---- */

static void fill(kiln_tensor *t, unsigned seed)
{
    unsigned char *p = t->data;
    size_t n = numel(t) * kiln_dtype_size(t->dtype);
    for (size_t i = 0; i < n; i++)
        p[i] = t->dtype == KILN_BOOL ? (unsigned char)((i + seed) % 2)
                                     : (unsigned char)(i * 37 + seed * 11 + 5);
}

static void test_round_trips(void)
{
    static const int64_t dims[] = {2, 3, 1, 4};
    for (size_t d = 0; d < N_DTYPES; d++) {
        for (int rank = 0; rank <= 4; rank++) {
            kiln_tensor t = {all_dtypes[d], rank, {0}, NULL};
            memcpy(t.shape, dims, sizeof dims[0] * (size_t)rank);
            size_t nbytes = numel(&t) * kiln_dtype_size(t.dtype);
            t.data = malloc(nbytes);
            fill(&t, (unsigned)(d * 5 + (size_t)rank));
            char name[64];
            snprintf(name, sizeof name, "rt_%d_%d.npy", (int)t.dtype, rank);
            const char *path = test_path(name);
            if (!EXPECT(npy_write(path, &t), KILN_OK)) {
                free(t.data);
                continue;
            }
            size_t len = 0;
            unsigned char *file = read_all(path, &len);
            CHECK(file && len >= nbytes && (len - nbytes) % 64 == 0);

            kiln_tensor r, m;
            if (EXPECT(npy_read(path, &r), KILN_OK)) {
                CHECK(r.dtype == t.dtype && r.ndim == rank);
                CHECK(memcmp(r.shape, t.shape, sizeof t.shape[0] * (size_t)rank) == 0);
                CHECK(r.data && memcmp(r.data, t.data, nbytes) == 0);
                free(r.data);
            }
            if (file && EXPECT(npy_read_mem(file, len, &m), KILN_OK)) {
                CHECK(m.dtype == t.dtype && m.ndim == rank && memcmp(m.data, t.data, nbytes) == 0);
                free(m.data);
            }
            free(file);
            free(t.data);
        }
    }

    /* zero elements: data is still a valid allocation */
    kiln_tensor z = {KILN_F32, 2, {0, 3}, NULL}, r;
    const char *path = test_path("zero.npy");
    EXPECT(npy_write(path, &z), KILN_OK);
    if (EXPECT(npy_read(path, &r), KILN_OK)) {
        CHECK(r.ndim == 2 && r.shape[0] == 0 && r.shape[1] == 3 && r.data != NULL);
        free(r.data);
    }

    /* write errors */
    float x = 1;
    kiln_tensor bad = {KILN_BF16, 1, {1}, &x};
    EXPECT(npy_write(test_path("bf16.npy"), &bad), KILN_ERR_UNSUPPORTED);
    bad.dtype = KILN_F32;
    bad.ndim = 9;
    EXPECT(npy_write(test_path("nine.npy"), &bad), KILN_ERR_ARG);
    bad.ndim = 1;
    bad.shape[0] = -1;
    EXPECT(npy_write(test_path("neg.npy"), &bad), KILN_ERR_ARG);
    bad.shape[0] = 1;
    EXPECT(npy_write(test_path("no-such-dir/x.npy"), &bad), KILN_ERR_IO);
    EXPECT(npy_read(test_path("no-such-file.npy"), &r), KILN_ERR_IO);
    EXPECT(npy_read(test_tmpdir(), &r), KILN_ERR_IO);
}

/* ---- Fortran order, built by hand ---- */

static void test_fortran(void)
{
    /* C-order [[0,1,2],[3,4,5]] stored in Fortran order: 0 3 1 4 2 5 */
    int32_t f[6] = {0, 3, 1, 4, 2, 5};
    unsigned char buf[256];
    size_t n = make_npy(buf, 1, "{'descr': '<i4', 'fortran_order': True, 'shape': (2, 3), }\n", f,
                        sizeof f);
    kiln_tensor t;
    if (EXPECT(npy_read_mem(buf, n, &t), KILN_OK)) {
        int32_t *v = t.data;
        int ok = t.ndim == 2 && t.shape[0] == 2 && t.shape[1] == 3;
        for (int i = 0; i < 6 && ok; i++)
            ok = v[i] == i;
        CHECK(ok);
        free(t.data);
    }
    /* Python 2 style 'L' suffixes, double quotes, no trailing comma, extra white space */
    n = make_npy(buf, 1, "{ \"shape\" : (2L,3L) , \"fortran_order\":False,\"descr\":\"<i4\"}   \n", f,
                 sizeof f);
    if (EXPECT(npy_read_mem(buf, n, &t), KILN_OK)) {
        CHECK(t.ndim == 2 && t.shape[0] == 2 && t.shape[1] == 3 && ((int32_t *)t.data)[1] == 3);
        free(t.data);
    }
}

/* ---- hostile input ---- */

static void expect_bad(int major, const char *dict, size_t nbytes, kiln_status want, int line)
{
    static unsigned char data[4096], buf[8192];
    size_t n = make_npy(buf, major, dict, data, nbytes);
    kiln_tensor t;
    kiln_status s = npy_read_mem(buf, n, &t);
    char what[300];
    snprintf(what, sizeof what, "hostile header %s", dict);
    if (s == KILN_OK)
        free(t.data);
    expect_status(s, want, what, line);
}
#define BAD(dict, nbytes, want) expect_bad(1, dict, nbytes, want, __LINE__)

static void test_hostile(void)
{
    const char *good = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n";
    float data[6] = {1, 2, 3, 4, 5, 6};
    unsigned char buf[512];
    size_t n = make_npy(buf, 1, good, data, sizeof data);
    kiln_tensor t;

    /* the good file, then every truncation of it, from memory and from disk */
    if (EXPECT(npy_read_mem(buf, n, &t), KILN_OK))
        free(t.data);
    int all_failed = 1;
    for (size_t len = 0; len < n; len++) {
        unsigned char *copy = malloc(len ? len : 1); /* exact size, so ASan sees overreads */
        memcpy(copy, buf, len);
        if (npy_read_mem(copy, len, &t) == KILN_OK) {
            all_failed = 0;
            free(t.data);
        }
        free(copy);
        const char *path = test_path("trunc.npy");
        write_all(path, buf, len);
        if (npy_read(path, &t) == KILN_OK) {
            all_failed = 0;
            free(t.data);
        }
    }
    CHECK(all_failed);
    /* one byte too many */
    unsigned char longer[600];
    memcpy(longer, buf, n);
    longer[n] = 0;
    EXPECT(npy_read_mem(longer, n + 1, &t), KILN_ERR_FORMAT);

    /* preamble */
    unsigned char bad[600];
    memcpy(bad, buf, n);
    bad[1] = 'n';
    EXPECT(npy_read_mem(bad, n, &t), KILN_ERR_FORMAT);
    memcpy(bad, buf, n);
    bad[6] = 4;
    EXPECT(npy_read_mem(bad, n, &t), KILN_ERR_FORMAT);
    bad[6] = 1, bad[7] = 1;
    EXPECT(npy_read_mem(bad, n, &t), KILN_ERR_FORMAT);
    memcpy(bad, buf, n);
    bad[8] = 0xff, bad[9] = 0xff; /* header longer than the file */
    EXPECT(npy_read_mem(bad, n, &t), KILN_ERR_FORMAT);
    size_t m = make_npy(bad, 2, good, data, sizeof data);
    bad[10] = 0xff, bad[11] = 0xff; /* v2: 4 GB header */
    EXPECT(npy_read_mem(bad, m, &t), KILN_ERR_FORMAT);

    /* versions 2.0 and 3.0 are fine */
    m = make_npy(bad, 2, good, data, sizeof data);
    if (EXPECT(npy_read_mem(bad, m, &t), KILN_OK))
        free(t.data);
    m = make_npy(bad, 3, good, data, sizeof data);
    if (EXPECT(npy_read_mem(bad, m, &t), KILN_OK))
        free(t.data);

    /* shapes */
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4611686018427387904), }", 0, KILN_ERR_FORMAT);
    BAD("{'descr': '<f8', 'fortran_order': False, 'shape': (9223372036854775807, 2), }", 0, KILN_ERR_FORMAT);
    BAD("{'descr': '<f8', 'fortran_order': False, 'shape': (2305843009213693952,), }", 0, KILN_ERR_FORMAT);
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", 0, KILN_ERR_FORMAT);
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", 0, KILN_ERR_FORMAT);
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 1, 1, 1, 1, 1, 1), }", 4, KILN_ERR_UNSUPPORTED);
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 1, 1, 1, 1, 1), }", 4, KILN_OK);
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", 4, KILN_OK);
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", 3, KILN_ERR_FORMAT);
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 20, KILN_ERR_FORMAT);
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': (2,, 3), }", 24, KILN_ERR_FORMAT);
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': (2 3), }", 24, KILN_ERR_FORMAT);
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3], }", 24, KILN_ERR_FORMAT);
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3", 24, KILN_ERR_FORMAT);
    /* dtypes */
    BAD("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", 8, KILN_ERR_UNSUPPORTED);
    BAD("{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }", 4, KILN_ERR_UNSUPPORTED);
    BAD("{'descr': '|f4', 'fortran_order': False, 'shape': (1,), }", 4, KILN_ERR_UNSUPPORTED);
    BAD("{'descr': 'f4', 'fortran_order': False, 'shape': (1,), }", 4, KILN_ERR_UNSUPPORTED);
    BAD("{'descr': '', 'fortran_order': False, 'shape': (1,), }", 4, KILN_ERR_UNSUPPORTED);
    BAD("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", 4, KILN_ERR_UNSUPPORTED);
    BAD("{'descr': '|i1', 'fortran_order': False, 'shape': (1,), }", 1, KILN_OK);
    BAD("{'descr': '<i1', 'fortran_order': False, 'shape': (1,), }", 1, KILN_OK);
    BAD("{'descr': '<u1', 'fortran_order': False, 'shape': (1,), }", 1, KILN_OK);
    BAD("{'descr': '<b1', 'fortran_order': False, 'shape': (1,), }", 1, KILN_OK);
    /* the dict */
    BAD("", 0, KILN_ERR_FORMAT);
    BAD("{", 0, KILN_ERR_FORMAT);
    BAD("{}", 0, KILN_ERR_FORMAT);
    BAD("{'descr': '<f4', 'shape': (1,), }", 4, KILN_ERR_FORMAT);
    BAD("{'descr': '<f4', 'fortran_order': False}", 4, KILN_ERR_FORMAT);
    BAD("{'fortran_order': False, 'shape': (1,)}", 4, KILN_ERR_FORMAT);
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'descr': '<f4'}", 4, KILN_ERR_FORMAT);
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1}", 4, KILN_ERR_FORMAT);
    BAD("{'descr': '<f4', 'fortran_order': false, 'shape': (1,)}", 4, KILN_ERR_FORMAT);
    BAD("{'descr': '<f4', 'fortran_order': Tru", 0, KILN_ERR_FORMAT);
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'unterminated}", 4, KILN_ERR_FORMAT);
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} x", 4, KILN_ERR_FORMAT);
    BAD("{'descr': '<f4' 'fortran_order': False, 'shape': (1,)}", 4, KILN_ERR_FORMAT);
    BAD("{'descr': '<f\\4', 'fortran_order': False, 'shape': (1,)}", 4, KILN_ERR_FORMAT);
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)}\n\n  \t", 4, KILN_OK);
    BAD("{'descr': '<f4', 'fortran_order': True, 'shape': (0, 5)}", 0, KILN_OK);

    /* random mutations of a good file: errors or valid tensors, never a crash */
    unsigned char good3[512];
    size_t n3 = make_npy(good3, 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }\n",
                         data, sizeof data);
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    int sane = 1;
    for (int iter = 0; iter < 20000; iter++) {
        unsigned char *copy = malloc(n3);
        memcpy(copy, good3, n3);
        int flips = 1 + iter % 4;
        for (int k = 0; k < flips; k++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            size_t at = (size_t)(rng >> 33) % n3;
            const char alphabet[] = "0123456789(),: '\"{}<>|fiubTrueFalsL\n";
            copy[at] = (rng >> 20) & 1 ? (unsigned char)(rng >> 40)
                                       : (unsigned char)alphabet[(rng >> 24) % (sizeof alphabet - 1)];
        }
        size_t len = n3 - (size_t)((rng >> 50) % 3 == 0 ? (rng >> 8) % 8 : 0);
        if (npy_read_mem(copy, len, &t) == KILN_OK) {
            sane &= t.ndim >= 0 && t.ndim <= KILN_MAX_DIMS && t.data != NULL;
            free(t.data);
        }
        free(copy);
    }
    CHECK(sane);
}

/* ---- interoperability with NumPy ---- */

static const char *find_python(void)
{
    static const char *const candidates[] = {NULL, "python3", "/usr/bin/python3"};
    const char *env = getenv("KILN_PYTHON");
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++) {
        const char *py = i == 0 ? env : candidates[i];
        if (!py || !*py)
            continue;
        char cmd[512];
        snprintf(cmd, sizeof cmd, "%s -c 'import numpy' >/dev/null 2>&1", py);
        if (system(cmd) == 0)
            return py;
    }
    return NULL;
}

/* numpy writes, for each case: NAME.npy and NAME.bin (C-order bytes) and NAME.txt (dtype
 * str, ndim, dims); then it checks the files this test wrote (c_*.npy against c_*.bin). */
static const char numpy_script[] =
    "import sys, os, numpy as np\n"
    "d = sys.argv[1]; mode = sys.argv[2]\n"
    "from numpy.lib import format as F\n"
    "def put(name, a, version=None, fortran=False):\n"
    "    b = np.asfortranarray(a) if fortran else a\n"
    "    with open(os.path.join(d, name + '.npy'), 'wb') as f:\n"
    "        F.write_array(f, b, version=version)\n"
    "    open(os.path.join(d, name + '.bin'), 'wb').write(np.ascontiguousarray(a).tobytes())\n"
    "    open(os.path.join(d, name + '.txt'), 'w').write(\n"
    "        '%s %d %s' % (a.dtype.str, a.ndim, ' '.join(str(s) for s in a.shape)))\n"
    "if mode == 'make':\n"
    "    names = []\n"
    "    for dt in ['<f4', '<f8', '<f2', '|i1', '|u1', '<i4', '<i8', '|b1']:\n"
    "        for r in range(5):\n"
    "            shape = (3, 2, 4, 1)[:r]\n"
    "            a = (np.arange(int(np.prod(shape))) * 7 - 5).reshape(shape)\n"
    "            a = (a % 2 == 1) if dt == '|b1' else a.astype(dt)\n"
    "            n = 'np_%s_%d' % (dt[1:], r); put(n, a); names.append(n)\n"
    "    a = np.arange(24, dtype='<f4').reshape(2, 3, 4) / 3\n"
    "    put('np_fortran', a, fortran=True); names.append('np_fortran')\n"
    "    put('np_v2', a, version=(2, 0)); names.append('np_v2')\n"
    "    put('np_v3', a, version=(3, 0)); names.append('np_v3')\n"
    "    put('np_fortran_v3', a.astype('<i8'), version=(3, 0), fortran=True); names.append('np_fortran_v3')\n"
    "    open(os.path.join(d, 'names.txt'), 'w').write('\\n'.join(names) + '\\n')\n"
    "else:\n"
    "    bad = 0\n"
    "    for n in open(os.path.join(d, 'cnames.txt')).read().split():\n"
    "        a = np.load(os.path.join(d, n + '.npy'))\n"
    "        exp = open(os.path.join(d, n + '.txt')).read().split()\n"
    "        raw = open(os.path.join(d, n + '.bin'), 'rb').read()\n"
    "        if a.dtype.str != exp[0] or a.ndim != int(exp[1]) or list(a.shape) != [int(x) for x in exp[2:]] or a.tobytes() != raw:\n"
    "            print('numpy disagrees with', n); bad += 1\n"
    "    sys.exit(1 if bad else 0)\n";

static void test_numpy(void)
{
    const char *py = find_python();
    if (!py) {
        printf("note: no python3 with numpy found (set KILN_PYTHON): NumPy interop skipped\n");
        return;
    }
    char script[1200];
    snprintf(script, sizeof script, "%s", test_path("npy_interop.py"));
    CHECK(write_all(script, numpy_script, sizeof numpy_script - 1));
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s '%s' '%s' make", py, script, test_tmpdir());
    if (!CHECK(system(cmd) == 0))
        return;

    /* read everything numpy wrote */
    FILE *names = fopen(test_path("names.txt"), "r");
    FILE *cnames = fopen(test_path("cnames.txt"), "w");
    char name[128];
    int count = 0;
    while (names && cnames && fscanf(names, "%127s", name) == 1) {
        char file[160], dtstr[16];
        int ndim;
        int64_t shape[KILN_MAX_DIMS] = {0};
        size_t blen = 0;
        snprintf(file, sizeof file, "%s.txt", name);
        FILE *txt = fopen(test_path(file), "r");
        int ok = txt && fscanf(txt, "%15s %d", dtstr, &ndim) == 2;
        for (int i = 0; ok && i < ndim; i++)
            ok = fscanf(txt, "%lld", (long long *)&shape[i]) == 1;
        if (txt)
            fclose(txt);
        snprintf(file, sizeof file, "%s.bin", name);
        unsigned char *bin = read_all(test_path(file), &blen);
        snprintf(file, sizeof file, "%s.npy", name);
        kiln_tensor t;
        if (CHECK(ok && bin) && EXPECT(npy_read(test_path(file), &t), KILN_OK)) {
            int same = t.ndim == ndim && memcmp(t.shape, shape, sizeof shape[0] * (size_t)ndim) == 0 &&
                       numel(&t) * kiln_dtype_size(t.dtype) == blen && memcmp(t.data, bin, blen) == 0;
            if (!same)
                fprintf(stderr, "FAIL: %s.npy read differently from numpy's bytes\n", name);
            CHECK(same);
            /* write it back as ours for numpy to check */
            char cname[140];
            snprintf(cname, sizeof cname, "c_%s", name);
            snprintf(file, sizeof file, "%s.npy", cname);
            EXPECT(npy_write(test_path(file), &t), KILN_OK);
            snprintf(file, sizeof file, "%s.bin", cname);
            write_all(test_path(file), bin, blen);
            snprintf(file, sizeof file, "%s.txt", cname);
            FILE *o = fopen(test_path(file), "w");
            fprintf(o, "%s %d", dtstr, ndim);
            for (int i = 0; i < ndim; i++)
                fprintf(o, " %lld", (long long)shape[i]);
            fclose(o);
            fprintf(cnames, "%s\n", cname);
            free(t.data);
        }
        free(bin);
        count++;
    }
    if (names)
        fclose(names);
    if (cnames)
        fclose(cnames);
    CHECK(count == 8 * 5 + 4);
    snprintf(cmd, sizeof cmd, "%s '%s' '%s' check", py, script, test_tmpdir());
    CHECK(system(cmd) == 0);
}

int main(void)
{
    test_round_trips();
    test_fortran();
    test_hostile();
    test_numpy();
    return test_done("test_npy");
}
