/*
 * model.h — private to the runtime: the kiln_model behind the public handle and its
 * replicas, shared by model.c (load, place, forward) and dp.c (data-parallel).
 */
#ifndef KILN_MODEL_H
#define KILN_MODEL_H

#include "runtime/runtime.h"

/* One placement of a model on one core: its activation arena, the address of every value
 * and the kernels. Its arena is touched only by that core's worker. Kernels are made by
 * several threads and published one by one (kernels[i] written with store-release, read with
 * load-acquire) while the placing thread checks the weights op by op, so a forward may run
 * op i as soon as its kernel exists and its weights passed their checksums. */
typedef struct rt_replica {
    int             core;
    uint8_t        *arena;      /* kiln__big_alloc'd, arena_bytes */
    size_t          arena_bytes;
    void          **ptr;        /* per value: arena slot or weight address */
    kk_kernel     **kernels;    /* per op; NULL until made */
    pthread_mutex_t mu;         /* guards the fields below (and waits for kernels) */
    pthread_cond_t  cv;         /* a kernel was published, the build failed, a helper ended */
    bool            failed;     /* the build failed (also read atomically) */
    kiln_status     error;
    char            error_msg[512];
    uint32_t        verified;   /* ops whose weights passed their checksums: op i may run
                                 * once verified > i, outputs leave once it is n_ops + 1
                                 * (every checksum passed, the section's too); atomic,
                                 * raised under mu with cv broadcast */
    uint64_t        copied;     /* weight bytes reordered/copied at placement */
    uint64_t        ran;        /* ops run so far (atomic; tests watch streaming with it) */
    /* under the model's mu: */
    int             users;      /* forwards using it */
    bool            complete;   /* every kernel made and the placement recorded */
} rt_replica;

/* A background placement's job, one slot per core (at most one placement of a model per
 * core is ever pending), so triggering allocates nothing. */
typedef struct rt_slot {
    rt_job      job;
    kiln_model *m;
    int         core;
    double      t_trigger;
} rt_slot;

struct kiln_model {
    /* immutable after construction */
    kp_program       *prog;
    kk_plan          *plan;        /* what every replica's kernels agree on (kernels.h) */
    ka_file          *file;        /* NULL for a traced model */
    char             *path;        /* "" for a traced model */
    int               n_cores;

    pthread_mutex_t   mu;          /* guards everything below but `verified` */
    pthread_cond_t    cv;          /* broadcast when a placement ends */
    uint32_t          flags;       /* KP_FLAG_*: the artifact's (saved, reported) */
    uint32_t          behaviour;   /* KP_FLAG_*: how this model loads (flags, or an override) */
    int               first_core;  /* core for the first placement, -1: least used */
    kiln_load_state   state;
    int               pending;     /* placements in flight */
    rt_replica      **replicas;    /* per core, NULL if none */
    uint32_t         *placements;  /* per core: placements made so far */
    rt_slot          *slots;       /* per core: background placement job */
    uint8_t          *placing;     /* per core: a placement is pending there */
    kiln_status       error;       /* FAILED: the cause */
    char              error_msg[512];
    kiln_load_report  report;

    pthread_mutex_t   verify_mu;   /* guards `verified` (taken before mu, never inside it) */
    bool              verified;    /* weight checksums checked */
};

/* Checks caller tensors against program values ids[0..n_ids): count, dtype, shape, data.
 * With dim >= 0, the extent along dim must instead be the traced one / den * num (a
 * data-parallel split of num rows where den were traced). KILN_ERR_SHAPE naming what differs. */
KILN_INTERNAL kiln_status rt_check_tensors(const kp_program *p, const uint32_t *ids, uint32_t n_ids,
                                           const kiln_tensor *t, size_t n, const char *what,
                                           int dim, int64_t num, int64_t den);
/* Runs every kernel of replica r (on its core's worker: the inputs are in their arena
 * slots, the outputs are left in theirs). */
KILN_INTERNAL kiln_status rt_replica_run(const kp_program *p, rt_replica *r);
/* Runs replica r on its core's worker and waits. */
KILN_INTERNAL kiln_status rt_forward_replica(const kp_program *p, rt_replica *r,
                                             const kiln_tensor *in, kiln_tensor *out);

/* Makes sure m has a replica, placed or pending, on each of cores[0..n): the missing ones
 * are triggered (never a second one on a core). An async model's placements run in the
 * background and this returns at once; otherwise they run in parallel and are waited for.
 * KILN_ERR_LOAD if the model's load failed (now or before). */
KILN_INTERNAL kiln_status rt_model_ensure(kiln_model *m, const int *cores, int n);
/* Waits until the placements on cores[0..n) are done and gives their replicas. */
KILN_INTERNAL kiln_status rt_model_replicas(kiln_model *m, const int *cores, int n, rt_replica **out);

/* Test hooks: close the gate to hold every placement at its start; how many wait there. */
KILN_INTERNAL void rt_test_gate(bool closed);
/* Test hook: kernel creation waits before op `first` (and later ones) until called with -1. */
KILN_INTERNAL void rt_test_hold_ops_from(long first);
/* Test hook: weight checks stop before the weights of op `first` until released (-1). */
KILN_INTERNAL void rt_test_hold_verify_from(long first);
KILN_INTERNAL int  rt_test_gate_waiting(void);

#endif
