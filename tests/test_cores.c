/*
 * test_cores.c — cores: KILN_VISIBLE_CORES / KILN_CORE_SIZE parsing and errors, core
 * numbering, workers pinned to their core's CPUs, and oneDNN's OpenMP threads staying on
 * them (they inherit the affinity of the worker that starts them). Each scenario runs in a
 * forked child, since the environment is read once per process.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <dirent.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *dir;

static int allowed_cpus(cpu_set_t *set)
{
    return sched_getaffinity(0, sizeof *set, set) == 0 ? CPU_COUNT(set) : 0;
}

/* Runs fn in a child with the given environment; the child's exit code is its failures. */
static void in_child(const char *visible, const char *size, void (*fn)(void), const char *what)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        if (visible)
            setenv("KILN_VISIBLE_CORES", visible, 1);
        else
            unsetenv("KILN_VISIBLE_CORES");
        if (size)
            setenv("KILN_CORE_SIZE", size, 1);
        else
            unsetenv("KILN_CORE_SIZE");
        test_failed = 0;
        fn();
        fflush(NULL);
        _exit(test_failed ? 1 : 0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    if (!CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        fprintf(stderr, "  scenario '%s' (KILN_VISIBLE_CORES=%s KILN_CORE_SIZE=%s) failed\n", what,
                visible ? visible : "(unset)", size ? size : "(unset)");
}

/* Loads and runs the small conv model on the default core. */
static void run_model(void)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/conv_bn_relu.onnx", dir);
    kiln_tensor spec = { KILN_F32, 4, { 1, 4, 8, 8 }, NULL };
    kiln_model *m = NULL;
    if (!CHECK_OK(kiln_trace(p, &spec, 1, &m)))
        return;
    float x[256] = { 0 }, y[256];
    kiln_tensor in = spec, out = spec;
    in.data = x;
    out.data = y;
    CHECK_OK(kiln_forward(m, &in, 1, &out, 1));
    kiln_model_free(m);
}

/* Every thread of this process except the caller's, the loaders' and the main one must be
 * allowed only the CPUs in `want`. */
static void check_thread_affinity(const cpu_set_t *want, int expect_min_threads)
{
    DIR *d = opendir("/proc/self/task");
    if (!CHECK(d != NULL))
        return;
    struct dirent *e;
    int checked = 0;
    pid_t self = getpid();
    while ((e = readdir(d))) {
        pid_t tid = (pid_t)atoi(e->d_name);
        if (tid <= 0 || tid == self)
            continue;
        char path[128], name[64] = "";
        snprintf(path, sizeof path, "/proc/self/task/%d/comm", tid);
        FILE *f = fopen(path, "r");
        if (f) {
            if (fgets(name, sizeof name, f))
                name[strcspn(name, "\n")] = '\0';
            fclose(f);
        }
        if (strncmp(name, "kiln-loader", 11) == 0)
            continue;
        cpu_set_t s;
        if (sched_getaffinity(tid, sizeof s, &s) != 0)
            continue;
        if (!CHECK(CPU_EQUAL(&s, want)))
            fprintf(stderr, "  thread %d (%s) may run on %d CPUs outside its core\n", tid, name, CPU_COUNT(&s));
        checked++;
    }
    closedir(d);
    CHECK(checked >= expect_min_threads);
}

static void scenario_default(void)
{
    cpu_set_t all;
    int n = allowed_cpus(&all);
    CHECK(kiln_num_cores() == n);
}

static void scenario_one_cpu(void)
{
    cpu_set_t all, want;
    int n = allowed_cpus(&all);
    CPU_ZERO(&want);
    CPU_SET(n > 1 ? 1 : 0, &want);
    CHECK(kiln_num_cores() == 1);
    run_model();
    check_thread_affinity(&want, 1); /* the worker of core 0, pinned to that CPU */
}

static void scenario_big_core(void)
{
    cpu_set_t all;
    int n = allowed_cpus(&all);
    CHECK(kiln_num_cores() == 1);
    run_model();
    /* the worker and the OpenMP team it started all stay on the core's CPUs */
    check_thread_affinity(&all, n);
}

static void scenario_bad_list(void)
{
    CHECK(kiln_num_cores() == 0);
    kiln_model *m = NULL;
    CHECK_STATUS(kiln_load("whatever.kiln", &m), KILN_ERR_CORE);
    CHECK(strstr(kiln_last_error(), "KILN_VISIBLE_CORES") != NULL);
}

static void scenario_bad_size(void)
{
    CHECK(kiln_num_cores() == 0);
    kiln_model *m = NULL;
    CHECK_STATUS(kiln_load("whatever.kiln", &m), KILN_ERR_CORE);
    CHECK(strstr(kiln_last_error(), "KILN_CORE_SIZE") != NULL);
}

int main(void)
{
    dir = getenv("KILN_TRACE_MODELS");
    if (!dir) {
        fprintf(stderr, "KILN_TRACE_MODELS is not set (run through ctest)\n");
        return 1;
    }
    cpu_set_t all;
    int n = allowed_cpus(&all);
    char list[32];
    in_child(NULL, NULL, scenario_default, "all CPUs, one per core");
    snprintf(list, sizeof list, "%d", n > 1 ? 1 : 0);
    in_child(list, "1", scenario_one_cpu, "one CPU");
    snprintf(list, sizeof list, "0-%d", n - 1);
    snprintf(list + 16, 16, "%d", n);
    in_child(list, list + 16, scenario_big_core, "one core of every CPU");
    in_child("0-", NULL, scenario_bad_list, "malformed list");
    in_child("1,x", NULL, scenario_bad_list, "malformed list");
    in_child("4095", NULL, scenario_bad_list, "CPU not available");
    in_child(NULL, "0", scenario_bad_size, "core size 0");
    snprintf(list, sizeof list, "%d", n + 1);
    in_child(NULL, list, scenario_bad_size, "core bigger than the machine");
    return test_done("test_cores");
}
