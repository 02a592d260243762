/*
 * runtime.h — private to the runtime: cores (pinned worker threads with job queues) and
 * the parts of a model that placement, forward and data-parallel share.
 *
 * Locks, in the order they may be taken (never the other way):
 *   kiln_model.mu   guards the model's state, replicas[], placements[], pending, report, error
 *   rt_queue.mu     guards a queue (a core's, or the loader pool's) and its jobs' done flags
 *   rt.mu           guards the cores' replica counts (default-core choice)
 * Jobs run on the core's worker without any of these held.
 */
#ifndef KILN_RUNTIME_H
#define KILN_RUNTIME_H

#include "compiler/program.h"
#include "format/artifact.h"
#include "kernels/kernels.h"

#include <pthread.h>

typedef struct rt_core rt_core;

/* A unit of work for a core's worker. Owned by the submitter (usually on its stack) until
 * done; the queue links through `next`, so queueing allocates nothing. */
typedef struct rt_job {
    void (*fn)(rt_core *core, struct rt_job *job);
    void           *arg;
    struct rt_job  *next;
    bool            done;                 /* set under the core's mu when fn returned */
    kiln_status     status;               /* fn's result */
    char            error[512];           /* fn's message when status != KILN_OK */
} rt_job;

/* A FIFO of jobs served by one or more threads. */
typedef struct rt_queue {
    pthread_mutex_t mu;
    pthread_cond_t  work;                  /* a job was queued */
    pthread_cond_t  done;                  /* a job finished */
    rt_job         *head, *tail;
} rt_queue;

struct rt_core {
    int             index;
    int             n_cpus;
    int             cpus[64];
    pthread_t       thread;
    rt_queue        q;                     /* served by this core's worker only */
    kk_core        *kk;                    /* the worker's kernel context: runs only on the
                                              worker; kernels may be created anywhere */
    kiln_status     kk_status;             /* why kk could not be made (KILN_OK: it was) */
    char            kk_error[480];
    uint32_t        replicas;              /* replicas placed here (under rt.mu) */
};

/* Starts the runtime on first use (parses KILN_VISIBLE_CORES / KILN_CORE_SIZE, starts one
 * pinned worker per core). KILN_ERR_CORE if the environment names no usable CPU. */
KILN_INTERNAL kiln_status rt_init(void);
KILN_INTERNAL int         rt_num_cores(void);
KILN_INTERNAL rt_core    *rt_core_get(int index);
/* Queues job on core (the job is not done yet when this returns). */
KILN_INTERNAL void        rt_submit(rt_core *core, rt_job *job);
/* Blocks until job is done. */
KILN_INTERNAL void        rt_wait(rt_core *core, rt_job *job);
/* Runs fn on core's worker and waits; copies the worker's error message to this thread. */
KILN_INTERNAL kiln_status rt_run(rt_core *core, void (*fn)(rt_core *, rt_job *), void *arg);
/* The loader pool: threads named kiln-loader-N (as many as the machine has CPUs, at least
 * two), started on first use, running background placements. A loader job is detached:
 * the pool never touches it after its fn returns, so fn may free or reuse it. */
KILN_INTERNAL void        rt_loader_submit(rt_job *job);
/* Takes job out of the loader queue if it has not started; true if it was removed. */
KILN_INTERNAL bool        rt_loader_cancel(rt_job *job);
/* On a loader thread, keeps it off `core`'s CPUs (where a forward may be streaming through
 * the kernels it creates) if the process has other CPUs: saves the old mask in *saved (a
 * cpu_set_t) and returns true; rt_off_core_end puts it back. A caller's thread is left
 * alone (false). */
KILN_INTERNAL bool        rt_off_core_begin(int core, void *saved);
KILN_INTERNAL void        rt_off_core_end(const void *saved);
/* Picks the least-used core (fewest replicas, lowest index on ties) among those allowed
 * (NULL: all) and counts a replica on it. Returns its index. */
KILN_INTERNAL int         rt_reserve_default_core(const bool *excluded);
KILN_INTERNAL void        rt_core_replicas_add(int core, int delta);

#endif
