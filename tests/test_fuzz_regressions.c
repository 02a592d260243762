/*
 * test_fuzz_regressions.c — replays every input the fuzzers found (fuzz/regressions/<target>/,
 * directory from KILN_FUZZ_REGRESSIONS) through the same entry points as the fuzz targets
 * (fuzz/fuzz_entry.c), plus a few hand-made edge inputs, in the normal test run. A
 * regression shows as a crash, a sanitizer report or (ASan build) a leak at exit.
 */
#include "testutil.h"

#include "fuzz_entry.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>

typedef int (*entry_fn)(const uint8_t *, size_t);

static uint8_t *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, len = 0;
    uint8_t *b = malloc(cap);
    for (size_t r; b && (r = fread(b + len, 1, cap - len, f)) > 0;) {
        len += r;
        if (len == cap) {
            uint8_t *nb = realloc(b, cap *= 2);
            if (!nb)
                free(b);
            b = nb;
        }
    }
    fclose(f);
    *n = len;
    return b;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Replays the files of root/sub in name order; returns how many files ran. */
static int replay_dir(const char *root, const char *sub, entry_fn fn)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", root, sub);
    DIR *d = opendir(dir);
    if (!CHECK(d != NULL)) {
        fprintf(stderr, "cannot open %s\n", dir);
        return 0;
    }
    char **names = NULL;
    size_t n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue; /* ., .., .gitkeep */
        names = realloc(names, (n + 1) * sizeof *names);
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        size_t len = 0;
        uint8_t *b = read_all(path, &len);
        if (CHECK(b != NULL)) {
            printf("  %s/%s (%zu bytes)\n", sub, names[i], len);
            fflush(stdout);
            CHECK(fn(b, len) == 0);
        }
        free(b);
        free(names[i]);
    }
    free(names);
    return (int)n;
}

/* Inputs every target must take in its stride whatever the corpus holds. */
static void edge_inputs(void)
{
    static const uint8_t one[1] = { 0 };
    /* a valid .npy: 2 floats, the header padded to 128 bytes */
    static const char dict[] = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
    uint8_t npy_ok[128 + 8];
    memcpy(npy_ok, "\x93NUMPY\x01\x00\x76\x00", 10);
    memcpy(npy_ok + 10, dict, sizeof dict - 1);
    memset(npy_ok + 10 + sizeof dict - 1, ' ', 128 - 10 - (sizeof dict - 1));
    npy_ok[127] = '\n';
    const float two[2] = { 1.0f, 2.0f };
    memcpy(npy_ok + 128, two, sizeof two);
    entry_fn fns[] = { kf_artifact, kf_onnx, kf_npy };
    for (size_t i = 0; i < 3; i++) {
        CHECK(fns[i](one, 0) == 0);
        CHECK(fns[i](one, 1) == 0);
        CHECK(fns[i]((const uint8_t *)"KILN", 4) == 0);
        CHECK(fns[i](npy_ok, sizeof npy_ok) == 0);
    }
}

int main(void)
{
    const char *root = getenv("KILN_FUZZ_REGRESSIONS");
    if (!CHECK(root && *root)) {
        fprintf(stderr, "KILN_FUZZ_REGRESSIONS is not set\n");
        return test_done("test_fuzz_regressions");
    }
    edge_inputs();
    int n = replay_dir(root, "artifact", kf_artifact);
    n += replay_dir(root, "onnx", kf_onnx);
    n += replay_dir(root, "npy", kf_npy);
    printf("replayed %d regression inputs\n", n);
    return test_done("test_fuzz_regressions");
}
