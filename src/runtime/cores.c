/*
 * cores.c — kiln's cores: which CPUs are visible (KILN_VISIBLE_CORES, KILN_CORE_SIZE),
 * one worker thread per core pinned to that core's CPUs, and the job queue each worker
 * serves. Every placement and forward on a core runs on its worker, so oneDNN primitives
 * are created and run under the same OpenMP thread count (the core's CPU count).
 */
#define _GNU_SOURCE
#include "runtime/runtime.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RT_MAX_CORES 1024

static struct {
    pthread_once_t  once;
    kiln_status     init_status;
    char            init_error[512];
    int             n_cores;
    rt_core        *cores;
    pthread_mutex_t mu;      /* guards cores[].replicas and n_started */
    pthread_cond_t  started; /* a worker made its kernel context (or failed to) */
    int             n_started;
} rt = { .once = PTHREAD_ONCE_INIT, .mu = PTHREAD_MUTEX_INITIALIZER, .started = PTHREAD_COND_INITIALIZER };

/* Parses a CPU list such as "0-7" or "0,2,4-6" into set. */
static kiln_status parse_cpu_list(const char *s, cpu_set_t *set)
{
    CPU_ZERO(set);
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long a = strtol(p, &end, 10);
        if (end == p || errno || a < 0 || a >= CPU_SETSIZE)
            return kiln__fail(KILN_ERR_CORE, "KILN_VISIBLE_CORES='%s': expected a CPU list such as 0-7 or 0,2,4", s);
        long b = a;
        p = end;
        if (*p == '-') {
            p++;
            b = strtol(p, &end, 10);
            if (end == p || errno || b < a || b >= CPU_SETSIZE)
                return kiln__fail(KILN_ERR_CORE, "KILN_VISIBLE_CORES='%s': bad range", s);
            p = end;
        }
        for (long c = a; c <= b; c++)
            CPU_SET((int)c, set);
        if (*p == ',')
            p++;
        else if (*p)
            return kiln__fail(KILN_ERR_CORE, "KILN_VISIBLE_CORES='%s': unexpected '%c'", s, *p);
    }
    return KILN_OK;
}

static void queue_init(rt_queue *q)
{
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->work, NULL);
    pthread_cond_init(&q->done, NULL);
    q->head = q->tail = NULL;
}

static void queue_push(rt_queue *q, rt_job *job)
{
    job->done = false;
    job->next = NULL;
    job->status = KILN_OK;
    job->error[0] = '\0';
    pthread_mutex_lock(&q->mu);
    if (q->tail)
        q->tail->next = job;
    else
        q->head = job;
    q->tail = job;
    pthread_cond_signal(&q->work);
    pthread_mutex_unlock(&q->mu);
}

/* Blocks for the next job (q->mu held on entry and exit). */
static rt_job *queue_pop_locked(rt_queue *q)
{
    while (!q->head)
        pthread_cond_wait(&q->work, &q->mu);
    rt_job *job = q->head;
    q->head = job->next;
    if (!q->head)
        q->tail = NULL;
    return job;
}

static void *worker_main(void *arg)
{
    rt_core *core = arg;
    char name[16];
    snprintf(name, sizeof name, "kiln-core-%d", core->index);
    pthread_setname_np(pthread_self(), name);
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < core->n_cpus; i++)
        CPU_SET(core->cpus[i], &set);
    int e = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    if (e)
        fprintf(stderr, "kiln: warning: could not pin core %d's worker to its CPUs: %s\n",
                core->index, strerror(e));
    /* The kernel context decides the OpenMP thread count of this thread. If it cannot be
     * made, every job on this core fails with the reason. */
    kiln_status ks = kk_core_create(core->n_cpus, &core->kk);
    char kerr[512];
    snprintf(kerr, sizeof kerr, "%s", ks == KILN_OK ? "" : kiln_last_error());
    core->kk_status = ks;
    snprintf(core->kk_error, sizeof core->kk_error, "core %d: %.400s", core->index, kerr);
    pthread_mutex_lock(&rt.mu); /* core->kk is read by other threads once init returns */
    rt.n_started++;
    pthread_cond_broadcast(&rt.started);
    pthread_mutex_unlock(&rt.mu);
    rt_queue *q = &core->q;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        rt_job *job = queue_pop_locked(q);
        pthread_mutex_unlock(&q->mu);
        kiln__clear_error();
        if (ks != KILN_OK) {
            job->status = ks;
            snprintf(job->error, sizeof job->error, "core %d: %.480s", core->index, kerr);
        } else {
            job->fn(core, job);
            if (job->status != KILN_OK)
                snprintf(job->error, sizeof job->error, "%s", kiln_last_error());
        }
        pthread_mutex_lock(&q->mu);
        job->done = true;
        pthread_cond_broadcast(&q->done);
    }
    return NULL;
}

static cpu_set_t process_cpus; /* the CPUs this process may run on, read at init */

static void init_once(void)
{
    cpu_set_t allowed, visible;
    rt.init_status = KILN_OK;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) {
        CPU_ZERO(&allowed);
        CPU_SET(0, &allowed);
    }
    process_cpus = allowed;
    const char *env = getenv("KILN_VISIBLE_CORES");
    if (env && *env) {
        kiln_status s = parse_cpu_list(env, &visible);
        if (s != KILN_OK)
            goto fail;
        for (int c = 0; c < CPU_SETSIZE; c++)
            if (CPU_ISSET(c, &visible) && !CPU_ISSET(c, &allowed)) {
                kiln__fail(KILN_ERR_CORE, "KILN_VISIBLE_CORES='%s': CPU %d is not available to this process", env, c);
                goto fail;
            }
    } else {
        visible = allowed;
    }
    int size = 1;
    const char *cs = getenv("KILN_CORE_SIZE");
    if (cs && *cs) {
        char *end;
        long v = strtol(cs, &end, 10);
        if (*end || v < 1 || v > 64) {
            kiln__fail(KILN_ERR_CORE, "KILN_CORE_SIZE='%s': expected a number of CPUs from 1 to 64", cs);
            goto fail;
        }
        size = (int)v;
    }
    int n_cpus = CPU_COUNT(&visible);
    int n = n_cpus / size;
    if (n < 1) {
        kiln__fail(KILN_ERR_CORE, "%d visible CPU(s) cannot make a core of KILN_CORE_SIZE=%d", n_cpus, size);
        goto fail;
    }
    if (n > RT_MAX_CORES)
        n = RT_MAX_CORES;
    rt.cores = calloc((size_t)n, sizeof(rt_core)); /* lives for the process: not kiln__ */
    if (!rt.cores) {
        kiln__fail(KILN_ERR_NOMEM, "out of memory starting cores");
        goto fail;
    }
    int cpu = 0;
    for (int i = 0; i < n; i++) {
        rt_core *core = &rt.cores[i];
        core->index = i;
        while (core->n_cpus < size) {
            if (CPU_ISSET(cpu, &visible))
                core->cpus[core->n_cpus++] = cpu;
            cpu++;
        }
        queue_init(&core->q);
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int e = pthread_create(&core->thread, &attr, worker_main, core);
        pthread_attr_destroy(&attr);
        if (e) {
            kiln__fail(KILN_ERR_CORE, "cannot start core %d's worker: %s", i, strerror(e));
            if (i == 0)
                goto fail;
            n = i; /* run with the cores that started */
            break;
        }
    }
    rt.n_cores = n;
    /* kernels of a core may be created on other threads, which need its context */
    pthread_mutex_lock(&rt.mu);
    while (rt.n_started < n)
        pthread_cond_wait(&rt.started, &rt.mu);
    pthread_mutex_unlock(&rt.mu);
    return;
fail:
    rt.init_status = KILN_ERR_CORE;
    snprintf(rt.init_error, sizeof rt.init_error, "%s", kiln_last_error());
}

kiln_status rt_init(void)
{
    pthread_once(&rt.once, init_once);
    if (rt.init_status != KILN_OK)
        return kiln__fail(rt.init_status, "%s", rt.init_error);
    return KILN_OK;
}

int rt_num_cores(void) { return rt_init() == KILN_OK ? rt.n_cores : 0; }

rt_core *rt_core_get(int index) { return &rt.cores[index]; }

void rt_submit(rt_core *core, rt_job *job) { queue_push(&core->q, job); }

void rt_wait(rt_core *core, rt_job *job)
{
    pthread_mutex_lock(&core->q.mu);
    while (!job->done)
        pthread_cond_wait(&core->q.done, &core->q.mu);
    pthread_mutex_unlock(&core->q.mu);
}

kiln_status rt_run(rt_core *core, void (*fn)(rt_core *, rt_job *), void *arg)
{
    rt_job job = { .fn = fn, .arg = arg };
    rt_submit(core, &job);
    rt_wait(core, &job);
    if (job.status != KILN_OK)
        return kiln__fail(job.status, "%s", job.error);
    return KILN_OK;
}

int rt_reserve_default_core(const bool *excluded)
{
    pthread_mutex_lock(&rt.mu);
    int best = -1;
    for (int i = 0; i < rt.n_cores; i++) {
        if (excluded && excluded[i])
            continue;
        if (best < 0 || rt.cores[i].replicas < rt.cores[best].replicas)
            best = i;
    }
    if (best >= 0)
        rt.cores[best].replicas++;
    pthread_mutex_unlock(&rt.mu);
    return best;
}

void rt_core_replicas_add(int core, int delta)
{
    pthread_mutex_lock(&rt.mu);
    rt.cores[core].replicas = (uint32_t)((int)rt.cores[core].replicas + delta);
    pthread_mutex_unlock(&rt.mu);
}

KILN_API int kiln_num_cores(void) { return rt_num_cores(); }

/* ---- the loader pool ---- */

static struct {
    pthread_once_t once;
    rt_queue       q;
} loader = { .once = PTHREAD_ONCE_INIT };

static _Thread_local bool on_loader;

bool rt_off_core_begin(int core, void *saved)
{
    if (!on_loader)
        return false; /* never re-pin a caller's thread */
    cpu_set_t set = process_cpus;
    const rt_core *c = &rt.cores[core];
    for (int i = 0; i < c->n_cpus; i++)
        CPU_CLR(c->cpus[i], &set);
    if (CPU_COUNT(&set) == 0)
        return false;
    if (pthread_getaffinity_np(pthread_self(), sizeof(cpu_set_t), saved) != 0)
        return false;
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
}

void rt_off_core_end(const void *saved)
{
    pthread_setaffinity_np(pthread_self(), sizeof(cpu_set_t), saved);
}

static void *loader_main(void *arg)
{
    on_loader = true;
    char name[16];
    snprintf(name, sizeof name, "kiln-loader-%d", (int)(intptr_t)arg);
    pthread_setname_np(pthread_self(), name);
    pthread_mutex_lock(&loader.q.mu);
    for (;;) {
        rt_job *job = queue_pop_locked(&loader.q);
        pthread_mutex_unlock(&loader.q.mu);
        kiln__clear_error();
        job->fn(NULL, job); /* detached: job may be gone once fn returns */
        pthread_mutex_lock(&loader.q.mu);
    }
    return NULL;
}

static void loader_start(void)
{
    queue_init(&loader.q);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 2)
        n = 2;
    if (n > 16)
        n = 16;
    int started = 0;
    for (long i = 0; i < n; i++) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &attr, loader_main, (void *)(intptr_t)i) == 0)
            started++;
        pthread_attr_destroy(&attr);
    }
    if (!started) /* cannot happen in practice; without a loader nothing async would run */
        kiln__panic(__FILE__, __LINE__, "no loader thread could be started");
}

void rt_loader_submit(rt_job *job)
{
    pthread_once(&loader.once, loader_start);
    queue_push(&loader.q, job);
}

bool rt_loader_cancel(rt_job *job)
{
    pthread_once(&loader.once, loader_start);
    bool removed = false;
    pthread_mutex_lock(&loader.q.mu);
    for (rt_job **pp = &loader.q.head, *prev = NULL; *pp; prev = *pp, pp = &(*pp)->next) {
        if (*pp != job)
            continue;
        *pp = job->next;
        if (loader.q.tail == job)
            loader.q.tail = prev;
        removed = true;
        break;
    }
    pthread_mutex_unlock(&loader.q.mu);
    return removed;
}
