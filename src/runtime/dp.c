/*
 * dp.c — data-parallel inference: one replica of a model per named core, every input split
 * along `dim` across them, the pieces run in parallel (one job per replica on its core's
 * worker), every output joined along `dim` in order.
 *
 * Splitting: with dynamic batching (dim 0 only) a batch of B rows is shared out with the
 * first B mod N replicas taking one extra row, and each replica cuts its share into pieces
 * of the traced batch size T, the last one padded (zeros) and its padding dropped from the
 * result. Without it, every input's extent along dim must be N x the traced extent; replica
 * k takes the k-th slice.
 *
 * Pieces are gathered straight into the replica's arena input slots and its outputs
 * scattered straight from its arena: nothing is allocated on the forward path.
 */
#include "runtime/model.h"

#include <string.h>

struct kiln_dp {
    kiln_model *m;
    int         dim;
    int         dynamic;   /* read and written atomically (disable may race a forward) */
    int         n;
    int        *cores;
};

KILN_API kiln_status kiln_data_parallel(kiln_model *m, const int *core_ids, size_t n_cores, int dim,
                                        int dynamic_batching, kiln_dp **out)
{
    if (!m || !out || (n_cores && !core_ids))
        return kiln__fail(KILN_ERR_ARG, "kiln_data_parallel: %s is NULL", !m ? "model" : !out ? "out" : "core_ids");
    kiln__clear_error();
    kiln_status s = rt_init();
    if (s != KILN_OK)
        return s;
    const kp_program *p = m->prog;
    int nc = rt_num_cores();
    if (n_cores > (size_t)nc)
        return kiln__fail(KILN_ERR_CORE, "%zu cores named, %d visible", n_cores, nc);
    for (size_t i = 0; i < n_cores; i++) {
        if (core_ids[i] < 0 || core_ids[i] >= nc)
            return kiln__fail(KILN_ERR_CORE, "core %d is not visible (cores 0..%d are)", core_ids[i], nc - 1);
        for (size_t j = 0; j < i; j++)
            if (core_ids[j] == core_ids[i])
                return kiln__fail(KILN_ERR_CORE, "core %d is named twice", core_ids[i]);
    }
    if (p->n_inputs == 0)
        return kiln__fail(KILN_ERR_ARG, "a model without inputs cannot be split");
    for (uint32_t i = 0; i < p->n_inputs + p->n_outputs; i++) {
        const kp_value *v = &p->values[i < p->n_inputs ? p->inputs[i] : p->outputs[i - p->n_inputs]];
        if (dim < 0 || dim >= v->ndim)
            return kiln__fail(KILN_ERR_ARG, "dim %d is out of range for %s '%s' of rank %d", dim,
                              i < p->n_inputs ? "input" : "output", kp_str(p, v->name), v->ndim);
    }
    if (dynamic_batching && dim != 0)
        return kiln__fail(KILN_ERR_ARG, "dynamic batching splits along dim 0 only (dim %d given); "
                          "pass dynamic_batching = 0", dim);
    kiln_dp *dp = kiln__calloc(1, sizeof *dp);
    int n = n_cores ? (int)n_cores : nc;
    if (dp)
        dp->cores = kiln__calloc((size_t)n, sizeof(int));
    if (!dp || !dp->cores) {
        kiln__free(dp);
        return kiln__fail(KILN_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < n; i++)
        dp->cores[i] = n_cores ? core_ids[i] : i;
    dp->m = m;
    dp->dim = dim;
    dp->n = n;
    __atomic_store_n(&dp->dynamic, dynamic_batching ? 1 : 0, __ATOMIC_RELAXED);
    if ((s = rt_model_ensure(m, dp->cores, n)) != KILN_OK) {
        kiln_dp_free(dp);
        return s;
    }
    *out = dp;
    return KILN_OK;
}

KILN_API kiln_status kiln_dp_disable_dynamic_batching(kiln_dp *dp)
{
    if (!dp)
        return kiln__fail(KILN_ERR_ARG, "kiln_dp_disable_dynamic_batching: dp is NULL");
    __atomic_store_n(&dp->dynamic, 0, __ATOMIC_RELAXED);
    return KILN_OK;
}

KILN_API void kiln_dp_free(kiln_dp *dp)
{
    if (!dp)
        return;
    kiln__free(dp->cores);
    kiln__free(dp);
}

/* Copies `len` slices along dim, starting at `start` of a tensor whose extent along dim is
 * `full`, between a whole tensor and a compact piece (outer x len x inner). */
static void move_slice(uint8_t *piece, uint8_t *whole, int64_t outer, int64_t full, int64_t start,
                       int64_t len, int64_t inner, bool to_piece)
{
    for (int64_t o = 0; o < outer; o++) {
        uint8_t *a = piece + (o * len) * inner, *b = whole + (o * full + start) * inner;
        if (to_piece)
            memcpy(a, b, (size_t)(len * inner));
        else
            memcpy(b, a, (size_t)(len * inner));
    }
}

static void split_dims(const kp_value *v, int dim, int64_t *outer, int64_t *inner)
{
    *outer = 1;
    *inner = (int64_t)kiln_dtype_size((kiln_dtype)v->dtype);
    for (int d = 0; d < dim; d++)
        *outer *= v->shape[d];
    for (int d = dim + 1; d < v->ndim; d++)
        *inner *= v->shape[d];
}

typedef struct dp_share {
    const kiln_dp     *dp;
    rt_replica        *rep;
    const kiln_tensor *in;
    kiln_tensor       *out;
    int64_t            start, rows;  /* this replica's rows along dim (in input units) */
    int64_t            piece;        /* rows per forward: the traced extent */
    int64_t            full_in;      /* the callers' extent along dim */
} dp_share;

/* On the replica's core: its rows, piece by piece. */
static void share_job(rt_core *core, rt_job *job)
{
    dp_share *sh = job->arg;
    const kp_program *p = sh->dp->m->prog;
    int dim = sh->dp->dim;
    rt_replica *r = sh->rep;
    for (int64_t at = 0; at < sh->rows; at += sh->piece) {
        int64_t len = sh->rows - at < sh->piece ? sh->rows - at : sh->piece;
        for (uint32_t i = 0; i < p->n_inputs; i++) {
            const kp_value *v = &p->values[p->inputs[i]];
            int64_t outer, inner;
            split_dims(v, dim, &outer, &inner);
            uint8_t *slot = r->ptr[p->inputs[i]];
            if (len < sh->piece) /* the padded last piece (dim 0: the padding is at the end) */
                memset(slot, 0, v->nbytes);
            move_slice(slot, sh->in[i].data, outer, sh->full_in, sh->start + at, len, inner, true);
        }
        kiln_status s = rt_replica_run(p, r);
        if (s != KILN_OK) {
            job->status = s;
            return;
        }
        for (uint32_t i = 0; i < p->n_outputs; i++) {
            const kp_value *v = &p->values[p->outputs[i]];
            int64_t outer, inner;
            split_dims(v, dim, &outer, &inner);
            /* output rows per input row: the traced extents' ratio (1 for batch-major models) */
            int64_t ratio = v->shape[dim] / sh->piece;
            move_slice(r->ptr[p->outputs[i]], sh->out[i].data, outer, sh->out[i].shape[dim],
                       (sh->start + at) * ratio, len * ratio, inner, false);
        }
    }
    job->status = KILN_OK;
}

KILN_API kiln_status kiln_dp_forward(kiln_dp *dp, const kiln_tensor *inputs, size_t n_in,
                                     kiln_tensor *outputs, size_t n_out)
{
    if (!dp)
        return kiln__fail(KILN_ERR_ARG, "kiln_dp_forward: dp is NULL");
    kiln__clear_error();
    const kp_program *p = dp->m->prog;
    int dim = dp->dim, n = dp->n;
    bool dynamic = __atomic_load_n(&dp->dynamic, __ATOMIC_RELAXED) != 0;
    if (n_in != p->n_inputs || !inputs)
        return kiln__fail(n_in != p->n_inputs ? KILN_ERR_SHAPE : KILN_ERR_ARG,
                          "the model has %u inputs, %zu given", p->n_inputs, n_in);
    const kp_value *v0 = &p->values[p->inputs[0]];
    int64_t traced = v0->shape[dim];
    if (inputs[0].ndim != v0->ndim)
        return kiln__fail(KILN_ERR_SHAPE, "input 0 ('%s') must have rank %d, got %d", kp_str(p, v0->name),
                          v0->ndim, inputs[0].ndim);
    int64_t total = inputs[0].shape[dim];
    if (traced <= 0)
        return kiln__fail(KILN_ERR_SHAPE, "input 0 ('%s') was traced with extent 0 along dim %d", kp_str(p, v0->name), dim);
    if (!dynamic && total != (int64_t)n * traced)
        return kiln__fail(KILN_ERR_SHAPE, "input 0 ('%s') has %lld along dim %d; without dynamic batching, "
                          "data-parallel over %d cores needs %d x %lld = %lld", kp_str(p, v0->name),
                          (long long)total, dim, n, n, (long long)traced, (long long)(n * traced));
    if (total < 0)
        return kiln__fail(KILN_ERR_SHAPE, "negative extent along dim %d", dim);
    for (uint32_t i = 0; i < p->n_outputs && dynamic; i++) {
        const kp_value *v = &p->values[p->outputs[i]];
        if (v->shape[dim] % traced != 0)
            return kiln__fail(KILN_ERR_SHAPE, "output '%s' has %lld along dim %d, not a multiple of the traced "
                              "batch %lld: dynamic batching cannot split it", kp_str(p, v->name),
                              (long long)v->shape[dim], dim, (long long)traced);
    }
    kiln_status s = rt_check_tensors(p, p->inputs, p->n_inputs, inputs, n_in, "input", dim, total, traced);
    if (s == KILN_OK)
        s = rt_check_tensors(p, p->outputs, p->n_outputs, outputs, n_out, "output", dim, total, traced);
    if (s != KILN_OK)
        return s;

    rt_replica *reps[64];
    dp_share shares[64];
    rt_job jobs[64];
    if (n > 64)
        return kiln__fail(KILN_ERR_CORE, "data-parallel over more than 64 cores is not supported");
    if ((s = rt_model_replicas(dp->m, dp->cores, n, reps)) != KILN_OK)
        return s;
    int64_t at = 0;
    for (int k = 0; k < n; k++) {
        int64_t rows = dynamic ? total / n + (k < total % n ? 1 : 0) : traced;
        shares[k] = (dp_share){ dp, reps[k], inputs, outputs, at, rows, traced, total };
        at += rows;
        jobs[k] = (rt_job){ .fn = share_job, .arg = &shares[k] };
        if (rows > 0)
            rt_submit(rt_core_get(reps[k]->core), &jobs[k]);
    }
    for (int k = 0; k < n; k++) {
        if (shares[k].rows <= 0)
            continue;
        rt_wait(rt_core_get(reps[k]->core), &jobs[k]);
        if (jobs[k].status != KILN_OK && s == KILN_OK)
            s = kiln__fail(jobs[k].status, "core %d: %s", reps[k]->core, jobs[k].error);
    }
    return s;
}
