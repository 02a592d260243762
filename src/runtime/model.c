/*
 * model.c — kiln_model: trace and load produce one, placement puts replicas of it on cores,
 * forward runs a replica on its core's worker.
 *
 * Loading is one state machine for every schedule:
 *
 *     UNLOADED --trigger--> LOADING --placement done--> LOADED
 *                              |
 *                              +--placement failed--> FAILED (error kept, nothing placed)
 *
 * A placement gives every value its address (arena for activations, the mapped weight
 * section for constants), creates every kernel (on the loader pool, in parallel) while the
 * placing thread checks the weights' checksums (once per model) op by op, and publishes the
 * replica at once: a forward may stream through it, running each op as soon as its kernel
 * exists and its weights passed. Eager kiln_load triggers
 * one placement and waits for it; lazy leaves the model UNLOADED until the first forward
 * (or data-parallel) triggers it; async triggers it and returns.
 */
#define _GNU_SOURCE
#include "runtime/model.h"

#include "compiler/trace.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------
 * Construction and introspection
 * ------------------------------------------------------------------------------------- */

static kiln_status model_new(kp_program *prog, ka_file *file, const char *path, kiln_model **out)
{
    int n = rt_num_cores();
    kiln_model *m = kiln__calloc(1, sizeof *m);
    if (!m)
        return kiln__fail(KILN_ERR_NOMEM, "out of memory");
    m->n_cores = n > 0 ? n : 1;
    m->replicas = kiln__calloc((size_t)m->n_cores, sizeof *m->replicas);
    m->placements = kiln__calloc((size_t)m->n_cores, sizeof *m->placements);
    m->slots = kiln__calloc((size_t)m->n_cores, sizeof *m->slots);
    m->placing = kiln__calloc((size_t)m->n_cores, 1);
    m->path = kiln__strdup(path ? path : "");
    if (!m->replicas || !m->placements || !m->slots || !m->placing || !m->path) {
        kiln__free(m->placing);
        kiln__free(m->replicas);
        kiln__free(m->placements);
        kiln__free(m->slots);
        kiln__free(m->path);
        kiln__free(m);
        return kiln__fail(KILN_ERR_NOMEM, "out of memory");
    }
    kiln_status s = kk_program_plan(prog, &m->plan);
    if (s != KILN_OK) {
        kiln__free(m->placing);
        kiln__free(m->replicas);
        kiln__free(m->placements);
        kiln__free(m->slots);
        kiln__free(m->path);
        kiln__free(m);
        return s;
    }
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->cv, NULL);
    pthread_mutex_init(&m->verify_mu, NULL);
    m->prog = prog;
    m->file = file;
    m->flags = prog->flags;
    m->behaviour = prog->flags;
    m->first_core = -1;
    m->state = KILN_UNLOADED;
    m->verified = file == NULL; /* traced weights were made here, not read */
    m->report.core = -1;
    if (file)
        m->report.file_bytes = ka_file_size(file);
    m->report.weight_bytes = prog->weight_bytes;
    m->report.arena_bytes = prog->arena_bytes;
    *out = m;
    return KILN_OK;
}

static kiln_status trace_graph(const kg_graph *g, const kiln_tensor *ex, size_t n, kiln_model **out)
{
    kp_program *prog = NULL;
    kiln_status s = kc_trace(g, ex, n, &prog);
    if (s != KILN_OK)
        return s;
    s = model_new(prog, NULL, NULL, out);
    if (s != KILN_OK)
        kp_program_free(prog);
    return s;
}

KILN_API kiln_status kiln_onnx_trace(const kiln_onnx *g, const kiln_tensor *ex, size_t n, kiln_model **out)
{
    if (!g || !out)
        return kiln__fail(KILN_ERR_ARG, "kiln_onnx_trace: %s is NULL", g ? "out" : "g");
    kiln__clear_error();
    return trace_graph(g->graph, ex, n, out);
}

KILN_API kiln_status kiln_trace(const char *onnx_path, const kiln_tensor *ex, size_t n, kiln_model **out)
{
    if (!onnx_path || !out)
        return kiln__fail(KILN_ERR_ARG, "kiln_trace: %s is NULL", onnx_path ? "out" : "onnx_path");
    kiln__clear_error();
    kg_graph *g = NULL;
    kiln_status s = kg_import(onnx_path, &g);
    if (s != KILN_OK)
        return s;
    s = trace_graph(g, ex, n, out);
    if (s != KILN_OK)
        kiln__error_prefix("%s", onnx_path);
    kg_graph_free(g);
    return s;
}

static kiln_status set_flag(kiln_model *m, uint32_t flag, int enable, const char *what)
{
    if (!m)
        return kiln__fail(KILN_ERR_ARG, "%s: model is NULL", what);
    if (m->file)
        return kiln__fail(KILN_ERR_STATE, "%s: the flag is set on a traced model before kiln_save, "
                          "not on a loaded one", what);
    pthread_mutex_lock(&m->mu);
    m->flags = enable ? (m->flags | flag) : (m->flags & ~flag);
    m->behaviour = m->flags;
    pthread_mutex_unlock(&m->mu);
    return KILN_OK;
}

KILN_API kiln_status kiln_lazy_load(kiln_model *m, int enable) { return set_flag(m, KP_FLAG_LAZY, enable, "kiln_lazy_load"); }
KILN_API kiln_status kiln_async_load(kiln_model *m, int enable) { return set_flag(m, KP_FLAG_ASYNC, enable, "kiln_async_load"); }
KILN_API int kiln_model_is_lazy(const kiln_model *m) { return m && (m->flags & KP_FLAG_LAZY) ? 1 : 0; }
KILN_API int kiln_model_is_async(const kiln_model *m) { return m && (m->flags & KP_FLAG_ASYNC) ? 1 : 0; }

KILN_API kiln_status kiln_save(kiln_model *m, const char *path)
{
    if (!m || !path)
        return kiln__fail(KILN_ERR_ARG, "kiln_save: %s is NULL", m ? "path" : "model");
    kiln__clear_error();
    kp_program copy = *m->prog; /* the flags are the model's; the program is shared and immutable */
    pthread_mutex_lock(&m->mu);
    copy.flags = m->flags;
    pthread_mutex_unlock(&m->mu);
    return ka_save(&copy, path);
}

KILN_API size_t kiln_model_num_inputs(const kiln_model *m) { return m ? m->prog->n_inputs : 0; }
KILN_API size_t kiln_model_num_outputs(const kiln_model *m) { return m ? m->prog->n_outputs : 0; }

static kiln_status value_spec(const kiln_model *m, uint32_t v, const char **name, kiln_tensor *spec)
{
    const kp_value *val = &m->prog->values[v];
    if (name)
        *name = kp_str(m->prog, val->name);
    if (spec) {
        memset(spec, 0, sizeof *spec);
        spec->dtype = (kiln_dtype)val->dtype;
        spec->ndim = val->ndim;
        for (int d = 0; d < val->ndim; d++)
            spec->shape[d] = val->shape[d];
    }
    return KILN_OK;
}

KILN_API kiln_status kiln_model_input(const kiln_model *m, size_t i, const char **name, kiln_tensor *spec)
{
    if (!m || i >= m->prog->n_inputs)
        return kiln__fail(KILN_ERR_ARG, "kiln_model_input: %s", m ? "index out of range" : "model is NULL");
    return value_spec(m, m->prog->inputs[i], name, spec);
}

KILN_API kiln_status kiln_model_output(const kiln_model *m, size_t i, const char **name, kiln_tensor *spec)
{
    if (!m || i >= m->prog->n_outputs)
        return kiln__fail(KILN_ERR_ARG, "kiln_model_output: %s", m ? "index out of range" : "model is NULL");
    return value_spec(m, m->prog->outputs[i], name, spec);
}

KILN_API kiln_load_state kiln_model_state(const kiln_model *m)
{
    if (!m)
        return KILN_UNLOADED;
    kiln_model *mm = (kiln_model *)m;
    pthread_mutex_lock(&mm->mu);
    kiln_load_state s = mm->state;
    pthread_mutex_unlock(&mm->mu);
    return s;
}

KILN_API uint32_t kiln_model_placements(const kiln_model *m, int core)
{
    if (!m)
        return 0;
    kiln_model *mm = (kiln_model *)m;
    uint32_t n = 0;
    pthread_mutex_lock(&mm->mu);
    for (int c = 0; c < mm->n_cores; c++)
        if (core < 0 || core == c)
            n += mm->placements[c];
    pthread_mutex_unlock(&mm->mu);
    return n;
}

KILN_API kiln_status kiln_model_load_report(const kiln_model *m, kiln_load_report *out)
{
    if (!m || !out)
        return kiln__fail(KILN_ERR_ARG, "kiln_model_load_report: %s is NULL", m ? "out" : "model");
    kiln_model *mm = (kiln_model *)m;
    pthread_mutex_lock(&mm->mu);
    *out = mm->report;
    out->placements = 0;
    for (int c = 0; c < mm->n_cores; c++)
        out->placements += mm->placements[c];
    pthread_mutex_unlock(&mm->mu);
    return KILN_OK;
}

/* ---------------------------------------------------------------------------------------
 * Placement
 * ------------------------------------------------------------------------------------- */

static void replica_free(rt_replica *r, uint32_t n_ops)
{
    if (!r)
        return;
    for (uint32_t i = 0; r->kernels && i < n_ops; i++)
        kk_free(r->kernels[i]);
    kiln__free(r->kernels);
    kiln__free(r->ptr);
    kiln__big_free(r->arena, r->arena_bytes);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    kiln__free(r);
}

static void hold_verify(uint32_t i);

/* Raises r->verified to n (never lowers it) and wakes forwards waiting for it. */
static void verified_raise(rt_replica *r, uint32_t n)
{
    pthread_mutex_lock(&r->mu);
    if (n > r->verified) {
        __atomic_store_n(&r->verified, n, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
}

/* Checks the weights' checksums once per model (whichever placement comes first), op by op
 * in program order, raising r->verified as it goes so that a forward streaming through r
 * runs op i as soon as op i's weights passed; then the constants no op reads and the
 * section's own checksum. A placement that finds the model verified raises r at once. */
static kiln_status verify_stream(kiln_model *m, rt_replica *r)
{
    const kp_program *p = m->prog;
    kiln_status s = KILN_OK;
    pthread_mutex_lock(&m->verify_mu);
    if (!m->verified && !ka_verify_cached(m->file)) {
        double t0 = kiln__now();
        uint8_t *done = kiln__calloc(p->n_values ? p->n_values : 1, 1);
        if (!done)
            s = kiln__fail(KILN_ERR_NOMEM, "out of memory checking the weights");
        for (uint32_t i = 0; s == KILN_OK && i < p->n_ops; i++) {
            const kp_op *op = &p->ops[i];
            const int32_t *in = kp_op_in(p, op);
            for (uint32_t j = 0; s == KILN_OK && j < op->n_in; j++) {
                int32_t v = in[j];
                if (v < 0 || p->values[v].kind != KP_VAL_CONST || done[v])
                    continue;
                verified_raise(r, i); /* ops before i read nothing unchecked */
                hold_verify(i);
                s = ka_verify_value(m->file, p, (uint32_t)v);
                done[v] = 1;
            }
        }
        for (uint32_t v = 0; s == KILN_OK && v < p->n_values; v++)
            if (p->values[v].kind == KP_VAL_CONST && !done[v])
                s = ka_verify_value(m->file, p, v);
        if (s == KILN_OK)
            s = ka_verify_finish(m->file, p);
        kiln__free(done);
        double t1 = kiln__now();
        pthread_mutex_lock(&m->mu);
        m->report.verify_ms += (t1 - t0) * 1e3;
        m->report.t_verify_start = t0 * 1e3;
        m->report.t_verify_end = t1 * 1e3;
        pthread_mutex_unlock(&m->mu);
    }
    m->verified = s == KILN_OK;
    pthread_mutex_unlock(&m->verify_mu);
    if (s == KILN_OK)
        verified_raise(r, p->n_ops + 1);
    return s;
}

/* A replica with its arena and value addresses, no kernels yet. */
static kiln_status replica_new(const kp_program *p, int core, rt_replica **out)
{
    rt_replica *r = kiln__calloc(1, sizeof *r);
    if (!r)
        return kiln__fail(KILN_ERR_NOMEM, "out of memory placing the model");
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->core = core;
    r->arena_bytes = (size_t)p->arena_bytes;
    r->arena = kiln__big_alloc(r->arena_bytes);
    r->ptr = kiln__calloc(p->n_values ? p->n_values : 1, sizeof(void *));
    r->kernels = kiln__calloc(p->n_ops ? p->n_ops : 1, sizeof(kk_kernel *));
    if (!r->arena || !r->ptr || !r->kernels) {
        replica_free(r, 0);
        return kiln__fail(KILN_ERR_NOMEM, "out of memory placing the model (arena of %llu bytes)",
                          (unsigned long long)p->arena_bytes);
    }
    for (uint32_t v = 0; v < p->n_values; v++) {
        const kp_value *val = &p->values[v];
        r->ptr[v] = val->kind == KP_VAL_CONST ? (void *)(p->weights + val->offset) : r->arena + val->offset;
    }
    *out = r;
    return KILN_OK;
}

static void hold_op(uint32_t i);

/* ---- creating a replica's kernels on several threads ----
 * The placing thread and up to RT_MAX_HELPERS loader threads take ops in program order from
 * one counter, create each op's kernel under the core's OpenMP thread count, and publish it
 * (store-release) so that a forward already running on the core's worker can run op i the
 * moment its kernel exists: streaming placement. */

#define RT_MAX_HELPERS 7

typedef struct rt_build {
    kiln_model *m;
    rt_replica *r;
    uint32_t    next;                     /* atomic: the next op to create */
    int         running;                  /* helper jobs not finished (under r->mu) */
    int         n_helpers;
    rt_job      helpers[RT_MAX_HELPERS];
} rt_build;

static void create_loop(rt_build *b)
{
    const kp_program *p = b->m->prog;
    rt_replica *r = b->r;
    rt_core *core = rt_core_get(r->core);
    int prev = kk_thread_prepare(core->kk);
    cpu_set_t saved;
    bool moved = rt_off_core_begin(r->core, &saved);
    uint64_t copied = 0;
    for (;;) {
        uint32_t i = __atomic_fetch_add(&b->next, 1, __ATOMIC_RELAXED);
        if (i >= p->n_ops || __atomic_load_n(&r->failed, __ATOMIC_ACQUIRE))
            break;
        hold_op(i);
        kk_kernel *k = NULL;
        kiln_status s = kk_create_planned(core->kk, b->m->plan, i, r->ptr, &k, &copied);
        pthread_mutex_lock(&r->mu);
        if (s == KILN_OK) {
            __atomic_store_n(&r->kernels[i], k, __ATOMIC_RELEASE);
        } else if (!r->failed) {
            r->error = s;
            snprintf(r->error_msg, sizeof r->error_msg, "%s", kiln_last_error());
            __atomic_store_n(&r->failed, true, __ATOMIC_RELEASE);
        }
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        if (s != KILN_OK)
            break;
    }
    if (moved)
        rt_off_core_end(&saved);
    kk_thread_restore(prev);
    pthread_mutex_lock(&r->mu);
    r->copied += copied;
    pthread_mutex_unlock(&r->mu);
}

static void helper_job(rt_core *unused, rt_job *job)
{
    rt_build *b = job->arg;
    rt_replica *r = b->r;
    create_loop(b);
    pthread_mutex_lock(&r->mu);
    b->running--;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu); /* b may be gone after this */
}

/* Starts helper jobs creating r's kernels on the loader pool. */
static void build_start(rt_build *b, kiln_model *m, rt_replica *r)
{
    *b = (rt_build){ .m = m, .r = r, .next = 0 };
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int nh = (int)(cpus > 1 ? cpus - 1 : 0);
    if (nh > RT_MAX_HELPERS)
        nh = RT_MAX_HELPERS;
    if ((uint32_t)nh >= m->prog->n_ops)
        nh = m->prog->n_ops > 0 ? (int)m->prog->n_ops - 1 : 0;
    b->running = nh;
    b->n_helpers = nh;
    for (int j = 0; j < nh; j++) {
        b->helpers[j].fn = helper_job;
        b->helpers[j].arg = b;
        rt_loader_submit(&b->helpers[j]);
    }
}

/* Joins the creation (this thread takes ops too unless the build already failed), waits for
 * the helpers, and returns the first failure. */
static kiln_status build_finish(rt_build *b)
{
    rt_replica *r = b->r;
    create_loop(b);
    /* helpers that have not started are not needed any more (this thread did their share;
     * waiting for them could deadlock when every loader thread is such a placing thread) */
    for (int j = 0; j < b->n_helpers; j++)
        if (rt_loader_cancel(&b->helpers[j])) {
            pthread_mutex_lock(&r->mu);
            b->running--;
            pthread_mutex_unlock(&r->mu);
        }
    pthread_mutex_lock(&r->mu);
    while (b->running > 0)
        pthread_cond_wait(&r->cv, &r->mu);
    kiln_status s = r->failed ? r->error : KILN_OK;
    if (s != KILN_OK)
        kiln__fail(s, "%s", r->error_msg);
    pthread_mutex_unlock(&r->mu);
    return s;
}

/* Stops a build (helpers finish the op they are on): r->failed with cause s. */
static void build_abort(rt_replica *r, kiln_status s, const char *msg)
{
    pthread_mutex_lock(&r->mu);
    if (!r->failed) {
        r->error = s;
        snprintf(r->error_msg, sizeof r->error_msg, "%.500s", msg);
        __atomic_store_n(&r->failed, true, __ATOMIC_RELEASE);
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* Whether op i of r can run: its kernel exists and its weights passed their checksums
 * (i == n_ops: every checksum of the file passed, so outputs may leave). */
static bool op_ready(rt_replica *r, uint32_t i, uint32_t n_ops)
{
    return (i >= n_ops || __atomic_load_n(&r->kernels[i], __ATOMIC_ACQUIRE)) &&
           __atomic_load_n(&r->verified, __ATOMIC_ACQUIRE) > i;
}

/* Waits until op i of a replica that may still be being placed can run. false if the
 * placement failed (the cause is made this thread's error). */
static bool replica_wait(rt_replica *r, uint32_t i, uint32_t n_ops)
{
    if (op_ready(r, i, n_ops))
        return true;
    pthread_mutex_lock(&r->mu);
    while (!op_ready(r, i, n_ops) && !r->failed)
        pthread_cond_wait(&r->cv, &r->mu);
    bool ok = !r->failed;
    if (!ok)
        kiln__fail(KILN_ERR_LOAD, "the model's placement failed: %s", r->error_msg);
    pthread_mutex_unlock(&r->mu);
    return ok;
}

static void reserve_job(rt_core *core, rt_job *job)
{
    job->status = kk_core_reserve(core->kk);
}

typedef struct place_arg {
    kiln_model *m;
    rt_replica *rep;
    double      t_place, t_kernels, t_ready; /* seconds */
} place_arg;

/* Test hook: while the gate is closed, placements wait at their start (so tests can see a
 * model LOADING, or free it mid-load, without relying on timing). */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t  cv;
    bool            closed;
    int             waiting;
    long            hold_from;   /* -1: no hold (see rt_test_hold_ops_from) */
    long            hold_verify; /* -1: no hold (see rt_test_hold_verify_from) */
} gate = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0, -1, -1 };

void rt_test_gate(bool closed)
{
    pthread_mutex_lock(&gate.mu);
    gate.closed = closed;
    pthread_cond_broadcast(&gate.cv);
    pthread_mutex_unlock(&gate.mu);
}

int rt_test_gate_waiting(void)
{
    pthread_mutex_lock(&gate.mu);
    int n = gate.waiting;
    pthread_mutex_unlock(&gate.mu);
    return n;
}

void rt_test_hold_ops_from(long first)
{
    pthread_mutex_lock(&gate.mu);
    gate.hold_from = first;
    pthread_cond_broadcast(&gate.cv);
    pthread_mutex_unlock(&gate.mu);
}

void rt_test_hold_verify_from(long first)
{
    pthread_mutex_lock(&gate.mu);
    gate.hold_verify = first;
    pthread_cond_broadcast(&gate.cv);
    pthread_mutex_unlock(&gate.mu);
}

/* Test hooks: kernel creation stops before op `hold_from`, weight checks before the weights
 * of op `hold_verify`, until released. */
static void hold_at(long *from, uint32_t i)
{
    if (__atomic_load_n(from, __ATOMIC_RELAXED) < 0)
        return;
    pthread_mutex_lock(&gate.mu);
    while (*from >= 0 && (long)i >= *from)
        pthread_cond_wait(&gate.cv, &gate.mu);
    pthread_mutex_unlock(&gate.mu);
}

static void hold_op(uint32_t i) { hold_at(&gate.hold_from, i); }
static void hold_verify(uint32_t i) { hold_at(&gate.hold_verify, i); }

static void gate_pass(void)
{
    pthread_mutex_lock(&gate.mu);
    gate.waiting++;
    pthread_cond_broadcast(&gate.cv);
    while (gate.closed)
        pthread_cond_wait(&gate.cv, &gate.mu);
    gate.waiting--;
    pthread_mutex_unlock(&gate.mu);
}

static kiln_status place_on(kiln_model *m, int core, place_arg *a)
{
    a->m = m;
    a->rep = NULL;
    gate_pass();
    rt_core *c = rt_core_get(core);
    if (c->kk_status != KILN_OK)
        return kiln__fail(c->kk_status, "%s", c->kk_error);
    a->t_place = kiln__now();
    rt_replica *r = NULL;
    kiln_status s = replica_new(m->prog, core, &r);
    if (s != KILN_OK)
        return s;
    /* Kernels are made (by helpers) while this thread checks the weights; from now on a
     * forward may stream through the replica: op i runs once its kernel exists and its
     * weights passed (nothing read from unchecked weights is used before that). */
    rt_build b;
    a->t_kernels = kiln__now();
    build_start(&b, m, r);
    pthread_mutex_lock(&m->mu);
    m->replicas[core] = r;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
    s = verify_stream(m, r);
    if (s != KILN_OK) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s", kiln_last_error());
        build_abort(r, s, msg);
    }
    kiln_status sb = build_finish(&b); /* after an abort: the verification's failure */
    if (s == KILN_OK)
        s = sb;
    if (s == KILN_OK) /* the core's scratchpad grown now, so no forward allocates */
        s = rt_run(c, reserve_job, NULL);
    a->t_ready = kiln__now();
    if (s != KILN_OK) {
        /* take it back once no forward uses it; nothing half-placed stays */
        char msg[600];
        snprintf(msg, sizeof msg, "%s", kiln_last_error());
        pthread_mutex_lock(&m->mu);
        m->replicas[core] = NULL;
        m->state = KILN_FAILED; /* before waiting: forwards streaming through r wait for it */
        if (!m->error) {
            m->error = s;
            snprintf(m->error_msg, sizeof m->error_msg, "%.500s", msg);
        }
        pthread_cond_broadcast(&m->cv);
        while (r->users > 0)
            pthread_cond_wait(&m->cv, &m->mu);
        pthread_mutex_unlock(&m->mu);
        replica_free(r, m->prog->n_ops);
        return kiln__fail(s, "%s", msg);
    }
    a->rep = r;
    return KILN_OK;
}

/* Records a finished placement (m->mu held). On failure the model turns FAILED with the
 * cause, and the core's reservation is released. */
static void place_finish(kiln_model *m, int core, kiln_status s, const place_arg *a, double t_trigger)
{
    m->pending--;
    m->placing[core] = 0;
    if (s == KILN_OK) {
        m->replicas[core] = a->rep; /* published already (streaming); now complete */
        a->rep->complete = true;
        m->placements[core]++;
        m->report.place_ms = (a->t_kernels - a->t_place) * 1e3;
        m->report.kernels_ms = (a->t_ready - a->t_kernels) * 1e3;
        m->report.copied_bytes = a->rep->copied;
        m->report.core = core;
        m->report.t_trigger = t_trigger * 1e3;
        m->report.t_place_start = a->t_place * 1e3;
        m->report.t_kernels_start = a->t_kernels * 1e3;
        m->report.t_ready = a->t_ready * 1e3;
        /* from kiln_load (or, for a lazy model, from the trigger) to ready */
        m->report.total_ms = (a->t_ready - t_trigger) * 1e3 + (m->behaviour & KP_FLAG_LAZY ? 0 : m->report.read_ms);
        if (m->pending == 0 && m->state != KILN_FAILED)
            m->state = KILN_LOADED;
    } else {
        rt_core_replicas_add(core, -1);
        m->state = KILN_FAILED;
        if (!m->error) {
            m->error = s;
            snprintf(m->error_msg, sizeof m->error_msg, "%s", kiln_last_error());
        }
    }
    pthread_cond_broadcast(&m->cv);
}

/* A background placement (loader thread). */
static void place_async_job(rt_core *unused, rt_job *job)
{
    rt_slot *slot = job->arg;
    kiln_model *m = slot->m;
    place_arg a;
    kiln_status s = place_on(m, slot->core, &a);
    pthread_mutex_lock(&m->mu);
    place_finish(m, slot->core, s, &a, slot->t_trigger);
    pthread_mutex_unlock(&m->mu); /* the last touch of m: kiln_model_free may run now */
}

/* Starts a placement of m on `core` (already reserved): in the background when async, else
 * now, on this thread, waiting for it. m->mu is held (and dropped meanwhile when sync). */
static kiln_status trigger_locked(kiln_model *m, int core, bool async)
{
    m->pending++;
    m->placing[core] = 1;
    m->state = KILN_LOADING;
    double t = kiln__now();
    if (async) {
        rt_slot *slot = &m->slots[core];
        slot->m = m;
        slot->core = core;
        slot->t_trigger = t;
        slot->job.fn = place_async_job;
        slot->job.arg = slot;
        rt_loader_submit(&slot->job);
        return KILN_OK;
    }
    place_arg a;
    pthread_mutex_unlock(&m->mu);
    kiln_status s = place_on(m, core, &a);
    pthread_mutex_lock(&m->mu);
    place_finish(m, core, s, &a, t);
    return s;
}

static kiln_status load_failed(const kiln_model *m)
{
    return kiln__fail(KILN_ERR_LOAD, "%s: the model's load failed: %s", m->path[0] ? m->path : "model",
                      m->error_msg);
}

/* Reserves the core for a model's first placement: the one asked for at load, or the
 * least-used one. */
static int first_core_locked(kiln_model *m)
{
    if (m->first_core >= 0) {
        rt_core_replicas_add(m->first_core, 1);
        return m->first_core;
    }
    return rt_reserve_default_core(NULL);
}

/* Returns a replica to run on, counted as used (give it back with release_replica): the
 * first placed one — possibly one whose kernels are still being made, which a forward may
 * stream through; when there is none and none is pending, places one on the default core
 * (in the background if the model is async) and waits for it to appear. Exactly one
 * placement happens however many threads call this at once. */
static kiln_status acquire_replica(kiln_model *m, rt_replica **out)
{
    kiln_status s = KILN_OK;
    pthread_mutex_lock(&m->mu);
    for (;;) {
        if (m->state == KILN_FAILED) {
            s = load_failed(m);
            break;
        }
        rt_replica *r = NULL;
        for (int c = 0; c < m->n_cores && !r; c++)
            r = m->replicas[c];
        if (r) {
            r->users++;
            *out = r;
            break;
        }
        if (m->pending > 0) {
            pthread_cond_wait(&m->cv, &m->mu);
            continue;
        }
        int core = first_core_locked(m);
        if (core < 0) {
            s = kiln__fail(KILN_ERR_CORE, "no core can take the model");
            break;
        }
        trigger_locked(m, core, (m->behaviour & KP_FLAG_ASYNC) != 0);
    }
    pthread_mutex_unlock(&m->mu);
    return s;
}

kiln_status rt_model_ensure(kiln_model *m, const int *cores, int n)
{
    kiln_status s = KILN_OK;
    pthread_mutex_lock(&m->mu);
    if (m->state == KILN_FAILED)
        s = load_failed(m);
    for (int i = 0; i < n && s == KILN_OK; i++) {
        int c = cores[i];
        if (m->replicas[c] || m->placing[c])
            continue; /* no redundant load */
        rt_core_replicas_add(c, 1);
        trigger_locked(m, c, true); /* in parallel on the loader pool */
    }
    bool async = (m->behaviour & KP_FLAG_ASYNC) != 0;
    pthread_mutex_unlock(&m->mu);
    if (s != KILN_OK || async)
        return s;
    rt_replica **tmp = kiln__calloc((size_t)n + 1, sizeof *tmp);
    if (!tmp)
        return kiln__fail(KILN_ERR_NOMEM, "out of memory");
    s = rt_model_replicas(m, cores, n, tmp);
    kiln__free(tmp);
    return s;
}

kiln_status rt_model_replicas(kiln_model *m, const int *cores, int n, rt_replica **out)
{
    kiln_status s = KILN_OK;
    pthread_mutex_lock(&m->mu);
    for (int i = 0; i < n && s == KILN_OK; i++) {
        int c = cores[i];
        while (m->placing[c])
            pthread_cond_wait(&m->cv, &m->mu);
        if (m->state == KILN_FAILED)
            s = load_failed(m);
        else if (!m->replicas[c])
            s = kiln__fail(KILN_ERR_STATE, "the model has no replica on core %d", c);
        else
            out[i] = m->replicas[c];
    }
    pthread_mutex_unlock(&m->mu);
    return s;
}

KILN_API kiln_load_params kiln_load_default_params(void)
{
    kiln_load_params p = { KILN_LOAD_AS_SAVED, -1 };
    return p;
}

KILN_API double kiln_clock_ms(void) { return kiln__now() * 1e3; }

KILN_API kiln_status kiln_load(const char *path, kiln_model **out) { return kiln_load_ex(path, NULL, out); }

KILN_API kiln_status kiln_load_ex(const char *path, const kiln_load_params *params, kiln_model **out)
{
    if (!path || !out)
        return kiln__fail(KILN_ERR_ARG, "kiln_load: %s is NULL", path ? "out" : "path");
    kiln__clear_error();
    kiln_load_params prm = params ? *params : kiln_load_default_params();
    if ((unsigned)prm.mode > KILN_LOAD_LAZY_ASYNC)
        return kiln__fail(KILN_ERR_ARG, "kiln_load_ex: unknown load mode %d", (int)prm.mode);
    kiln_status s = rt_init();
    if (s != KILN_OK)
        return s;
    if (prm.core >= rt_num_cores() || prm.core < -1)
        return kiln__fail(KILN_ERR_CORE, "core %d is not visible (cores 0..%d are)", prm.core, rt_num_cores() - 1);
    double t0 = kiln__now();
    ka_file *file = NULL;
    kp_program *prog = NULL;
    if ((s = ka_open(path, &file, &prog)) != KILN_OK)
        return s;
    double t1 = kiln__now();
    kiln_model *m = NULL;
    if ((s = model_new(prog, file, path, &m)) != KILN_OK) {
        kp_program_free(prog);
        ka_close(file);
        return s;
    }
    static const uint32_t mode_flags[] = { 0, 0, KP_FLAG_LAZY, KP_FLAG_ASYNC, KP_FLAG_LAZY | KP_FLAG_ASYNC };
    if (prm.mode != KILN_LOAD_AS_SAVED)
        m->behaviour = mode_flags[prm.mode];
    m->first_core = prm.core;
    m->report.read_ms = (t1 - t0) * 1e3;
    m->report.t_load = t0 * 1e3;
    m->report.t_read_end = t1 * 1e3;
    if (!(m->behaviour & KP_FLAG_LAZY)) {
        pthread_mutex_lock(&m->mu);
        int core = first_core_locked(m);
        if (core < 0)
            s = kiln__fail(KILN_ERR_CORE, "no core can take the model");
        else
            s = trigger_locked(m, core, (m->behaviour & KP_FLAG_ASYNC) != 0);
        pthread_mutex_unlock(&m->mu);
        if (s != KILN_OK) {
            /* eager: the caller gets the cause itself (e.g. a checksum mismatch) */
            char msg[600];
            snprintf(msg, sizeof msg, "%s", m->error_msg[0] ? m->error_msg : kiln_last_error());
            kiln_status cause = m->error ? m->error : s;
            kiln_model_free(m);
            return kiln__fail(cause, "%s", msg);
        }
    }
    *out = m;
    return KILN_OK;
}

KILN_API kiln_status kiln_wait(kiln_model *m)
{
    if (!m)
        return kiln__fail(KILN_ERR_ARG, "kiln_wait: model is NULL");
    kiln_status s = KILN_OK;
    pthread_mutex_lock(&m->mu);
    while (m->pending > 0)
        pthread_cond_wait(&m->cv, &m->mu);
    if (m->state == KILN_FAILED)
        s = load_failed(m);
    pthread_mutex_unlock(&m->mu);
    return s;
}

/* ---------------------------------------------------------------------------------------
 * Forward
 * ------------------------------------------------------------------------------------- */

/* Checks caller tensors against the program's values; KILN_ERR_SHAPE naming the mismatch. */
kiln_status rt_check_tensors(const kp_program *p, const uint32_t *ids, uint32_t n_ids,
                             const kiln_tensor *t, size_t n, const char *what, int dim,
                             int64_t num, int64_t den)
{
    if (n != n_ids)
        return kiln__fail(KILN_ERR_SHAPE, "the model has %u %ss, %zu given", n_ids, what, n);
    if (n && !t)
        return kiln__fail(KILN_ERR_ARG, "%ss are NULL", what);
    for (size_t i = 0; i < n; i++) {
        const kp_value *v = &p->values[ids[i]];
        const char *name = kp_str(p, v->name);
        int64_t want[KILN_MAX_DIMS];
        memcpy(want, v->shape, sizeof want);
        if (dim >= 0 && dim < v->ndim)
            want[dim] = v->shape[dim] / den * num;
        char s1[160], s2[160];
        if ((int)t[i].dtype != v->dtype)
            return kiln__fail(KILN_ERR_SHAPE, "%s %zu ('%s') must be %s, got %s", what, i, name,
                              kiln_dtype_name((kiln_dtype)v->dtype), kiln_dtype_name(t[i].dtype));
        bool ok = t[i].ndim == v->ndim;
        for (int d = 0; ok && d < v->ndim; d++)
            ok = t[i].shape[d] == want[d];
        if (!ok)
            return kiln__fail(KILN_ERR_SHAPE, "%s %zu ('%s') must have shape %s, got %s", what, i, name,
                              kiln__shape_str(v->ndim, want, s1, sizeof s1),
                              kiln__shape_str(t[i].ndim < 0 || t[i].ndim > KILN_MAX_DIMS ? 0 : t[i].ndim,
                                              t[i].shape, s2, sizeof s2));
        if (!t[i].data && kiln__numel(v->ndim, want) > 0)
            return kiln__fail(KILN_ERR_ARG, "%s %zu ('%s') has no data", what, i, name);
    }
    return KILN_OK;
}

/* Gives back a replica from acquire_replica. A forward that streamed through a replica
 * still being placed returns only once that placement is recorded, so that what the caller
 * sees next (state, placement counts) includes it. */
static void release_replica(kiln_model *m, rt_replica *r)
{
    pthread_mutex_lock(&m->mu);
    while (!r->complete && m->state != KILN_FAILED)
        pthread_cond_wait(&m->cv, &m->mu);
    r->users--; /* r may be freed once this is 0 and the lock is dropped */
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
}

kiln_status rt_replica_run(const kp_program *p, rt_replica *r)
{
    for (uint32_t i = 0; i < p->n_ops; i++) {
        if (!replica_wait(r, i, p->n_ops))
            return KILN_ERR_LOAD;
        kiln_status s = kk_run(r->kernels[i]);
        if (s != KILN_OK)
            return s;
        __atomic_fetch_add(&r->ran, 1, __ATOMIC_RELAXED);
    }
    /* outputs leave only once every checksum of the file passed */
    return replica_wait(r, p->n_ops, p->n_ops) ? KILN_OK : KILN_ERR_LOAD;
}

typedef struct forward_arg {
    const kp_program  *p;
    rt_replica        *rep;
    const kiln_tensor *in;
    kiln_tensor       *out;
} forward_arg;

static void forward_job(rt_core *core, rt_job *job)
{
    forward_arg *a = job->arg;
    const kp_program *p = a->p;
    rt_replica *r = a->rep;
    for (uint32_t i = 0; i < p->n_inputs; i++) {
        const kp_value *v = &p->values[p->inputs[i]];
        memcpy(r->ptr[p->inputs[i]], a->in[i].data, kp_value_numel(v) * kiln_dtype_size(v->dtype));
    }
    job->status = rt_replica_run(p, r);
    if (job->status != KILN_OK)
        return;
    for (uint32_t i = 0; i < p->n_outputs; i++) {
        const kp_value *v = &p->values[p->outputs[i]];
        memcpy(a->out[i].data, r->ptr[p->outputs[i]], kp_value_numel(v) * kiln_dtype_size(v->dtype));
    }
    job->status = KILN_OK;
}

kiln_status rt_forward_replica(const kp_program *p, rt_replica *r, const kiln_tensor *in, kiln_tensor *out)
{
    forward_arg a = { p, r, in, out };
    return rt_run(rt_core_get(r->core), forward_job, &a);
}

KILN_API kiln_status kiln_forward(kiln_model *m, const kiln_tensor *inputs, size_t n_in,
                                  kiln_tensor *outputs, size_t n_out)
{
    if (!m)
        return kiln__fail(KILN_ERR_ARG, "kiln_forward: model is NULL");
    kiln__clear_error();
    const kp_program *p = m->prog;
    kiln_status s = rt_check_tensors(p, p->inputs, p->n_inputs, inputs, n_in, "input", -1, 1, 1);
    if (s == KILN_OK)
        s = rt_check_tensors(p, p->outputs, p->n_outputs, outputs, n_out, "output", -1, 1, 1);
    if (s != KILN_OK)
        return s;
    if ((s = rt_init()) != KILN_OK)
        return s;
    rt_replica *r = NULL;
    if ((s = acquire_replica(m, &r)) != KILN_OK)
        return s;
    s = rt_forward_replica(p, r, inputs, outputs);
    if (s != KILN_OK) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s", kiln_last_error());
        release_replica(m, r);
        return kiln__fail(s, "%s", msg);
    }
    release_replica(m, r);
    return KILN_OK;
}

/* ---------------------------------------------------------------------------------------
 * Free
 * ------------------------------------------------------------------------------------- */

typedef struct free_arg {
    rt_replica *r;
    uint32_t    n_ops;
} free_arg;

static void free_job(rt_core *core, rt_job *job)
{
    free_arg *a = job->arg;
    replica_free(a->r, a->n_ops);
    job->status = KILN_OK;
}

KILN_API void kiln_model_free(kiln_model *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->mu);
    /* Background placements not started yet are cancelled; running ones are waited for. */
    for (int c = 0; c < m->n_cores; c++) {
        if (m->slots[c].m == m && rt_loader_cancel(&m->slots[c].job)) {
            m->pending--;
            m->placing[c] = 0;
            rt_core_replicas_add(c, -1);
        }
    }
    while (m->pending > 0)
        pthread_cond_wait(&m->cv, &m->mu);
    pthread_mutex_unlock(&m->mu);
    for (int c = 0; c < m->n_cores; c++) {
        if (!m->replicas[c])
            continue;
        free_arg fa = { m->replicas[c], m->prog->n_ops };
        rt_run(rt_core_get(c), free_job, &fa);
        rt_core_replicas_add(c, -1);
    }
    kk_plan_free(m->plan);
    kp_program_free(m->prog);
    ka_close(m->file);
    pthread_mutex_destroy(&m->mu);
    pthread_cond_destroy(&m->cv);
    pthread_mutex_destroy(&m->verify_mu);
    kiln__free(m->replicas);
    kiln__free(m->placements);
    kiln__free(m->slots);
    kiln__free(m->placing);
    kiln__free(m->path);
    kiln__free(m);
}
