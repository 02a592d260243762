/*
 * kiln.h — the public API of kiln.
 *
 * kiln compiles an ONNX model ahead of time for fixed input shapes ("trace") into one
 * `.kiln` artifact, then loads that artifact onto CPU cores eagerly, lazily or
 * asynchronously and runs it, alone or replicated across cores (data-parallel).
 *
 * Usage:
 *
 *     kiln_tensor ex = { KILN_F32, 4, {1, 3, 224, 224}, NULL };
 *     kiln_model *m;
 *     kiln_trace("resnet18.onnx", &ex, 1, &m);    // compile for 1x3x224x224
 *     kiln_async_load(m, 1);                        // loads will run in the background
 *     kiln_save(m, "resnet18.kiln");                // atomic write
 *     kiln_model_free(m);
 *
 *     kiln_load("resnet18.kiln", &m);               // returns at once: async artifact
 *     ex.data = image;                              // caller-owned, C order
 *     kiln_tensor out = { KILN_F32, 2, {1, 1000}, logits };
 *     kiln_forward(m, &ex, 1, &out, 1);             // waits for the load, then runs
 *     kiln_model_free(m);
 *
 * Conventions:
 * - Every fallible call returns a kiln_status; KILN_OK is 0. On failure,
 *   kiln_last_error() gives this thread's message, and the call has left its
 *   out-parameters untouched and allocated nothing.
 * - Handles are opaque. Every *_free(NULL) is a no-op.
 * - Tensor data is caller-owned, dense, C order (row major).
 *
 * Threads (each call below says which it is; docs/RELIABILITY.md has the table):
 * - "any thread": may run on any thread, at the same time as any other call, including
 *   calls on the same handle.
 * - A handle's *_free must not run while another call on that handle is running or come
 *   before one; free every kiln_dp before the model it was made from.
 * - kiln starts one worker thread per core and a loader pool at first use (any load,
 *   forward, data-parallel or kiln_num_cores). They do not exist in a fork() child: such a
 *   child must not call kiln (exec first). kiln installs no signal handlers.
 * - A loaded model reads its weights from a mapping of the artifact file. Replace an
 *   artifact by rename (as kiln_save does), never rewrite or truncate it in place while a
 *   model loaded from it lives: the model would compute with the new bytes, or take SIGBUS
 *   on touching weights past the file's new end.
 */
#ifndef KILN_H
#define KILN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(KILN_BUILDING) && defined(__GNUC__)
#define KILN_API __attribute__((visibility("default")))
#else
#define KILN_API
#endif

#define KILN_VERSION_MAJOR 0
#define KILN_VERSION_MINOR 1
#define KILN_VERSION_PATCH 0

typedef struct kiln_model kiln_model;
typedef struct kiln_dp    kiln_dp;
typedef struct kiln_onnx  kiln_onnx;

typedef enum kiln_status {
    KILN_OK = 0,
    KILN_ERR_ARG,          /* bad argument: NULL, out of range */
    KILN_ERR_IO,           /* open/read/write failed */
    KILN_ERR_FORMAT,       /* not an artifact / ONNX file, truncated, checksum, version */
    KILN_ERR_UNSUPPORTED,  /* op, attribute or dtype kiln does not implement */
    KILN_ERR_SHAPE,        /* tensor shape or dtype does not match the model */
    KILN_ERR_NOMEM,
    KILN_ERR_CORE,         /* core id not visible, or no core can take the model */
    KILN_ERR_LOAD,         /* a background load failed */
    KILN_ERR_STATE,        /* call not valid in the handle's current state */
    KILN_ERR_INTERNAL
} kiln_status;

/* Name of a status, e.g. "KILN_ERR_FORMAT". Never NULL. Any thread. */
KILN_API const char *kiln_status_name(kiln_status s);
/* This thread's last failure, human-readable ("" if none). Valid until this thread's next
 * kiln call. Any thread: each thread has its own message. */
KILN_API const char *kiln_last_error(void);

typedef enum kiln_dtype { KILN_F32 = 1, KILN_F16, KILN_BF16, KILN_F64,
                          KILN_I8, KILN_U8, KILN_I32, KILN_I64, KILN_BOOL } kiln_dtype;

/* Bytes per element of a dtype (0 for an unknown value); its name ("f32", "i64", ...).
 * Any thread. */
KILN_API size_t      kiln_dtype_size(kiln_dtype t);
KILN_API const char *kiln_dtype_name(kiln_dtype t);

#define KILN_MAX_DIMS 8
typedef struct kiln_tensor {
    kiln_dtype dtype;
    int32_t    ndim;
    int64_t    shape[KILN_MAX_DIMS];
    void      *data;     /* caller-owned, C order */
} kiln_tensor;

/* ---------------------------------------------------------------------------------------
 * Trace: ONNX model -> kiln model
 * ------------------------------------------------------------------------------------- */

/* Compiles the ONNX model at onnx_path for fixed input shapes.
 * example_inputs: dtype and shape of each graph input, in the graph's order (data unused).
 * The traced model is UNLOADED, lazy and async off; it can be saved, and it can run
 * (its first kiln_forward places it like a lazy model).
 * Errors: KILN_ERR_IO (cannot read), KILN_ERR_FORMAT (not ONNX), KILN_ERR_UNSUPPORTED
 * (op, attribute or dtype; the message names the node), KILN_ERR_SHAPE (example inputs
 * disagree with the graph). Any thread: the work runs on the calling thread (its OpenMP
 * thread count is restored afterwards). */
KILN_API kiln_status kiln_trace(const char *onnx_path, const kiln_tensor *example_inputs,
                                size_t n_inputs, kiln_model **out);

/* An imported ONNX model before trace: lets a caller see the inputs a graph declares
 * (e.g. to fill in dynamic dimensions) before tracing it. kiln_onnx_open: any thread.
 * kiln_onnx_num_inputs, kiln_onnx_input and kiln_onnx_trace only read the handle: any
 * thread, several at once on one handle. kiln_onnx_free: no other call on the handle. */
KILN_API kiln_status kiln_onnx_open(const char *onnx_path, kiln_onnx **out);
KILN_API size_t      kiln_onnx_num_inputs(const kiln_onnx *g);
/* name, dtype and shape of graph input i; a dynamic dimension is -1. */
KILN_API kiln_status kiln_onnx_input(const kiln_onnx *g, size_t i, const char **name,
                                     kiln_tensor *spec);
/* kiln_trace on an opened graph (g is left unchanged and may be traced again). */
KILN_API kiln_status kiln_onnx_trace(const kiln_onnx *g, const kiln_tensor *example_inputs,
                                     size_t n_inputs, kiln_model **out);
KILN_API void        kiln_onnx_free(kiln_onnx *g);

/* Load flags, stored in the artifact by kiln_save. Valid on a traced model only
 * (KILN_ERR_STATE on a loaded one). enable = 0 turns the flag off.
 * Threads: set the flags before the model is shared. Calls at the same time as kiln_save
 * or a first kiln_forward of the model are memory-safe (the model's lock) but which
 * setting those see is a race; not at the same time as kiln_model_is_lazy/_is_async of
 * the model (they read the flags without the lock). */
KILN_API kiln_status kiln_lazy_load(kiln_model *m, int enable);
KILN_API kiln_status kiln_async_load(kiln_model *m, int enable);

/* Writes the artifact atomically (temporary file in the same directory, fsync, rename):
 * on failure whatever was at path before is still there. Works on traced and loaded
 * models. Any thread, also while the model runs or loads; several saves to one path at
 * once each write a whole file, and the last rename wins. */
KILN_API kiln_status kiln_save(kiln_model *m, const char *path);

/* Reads the artifact and checks its header and program (and their checksums), then places
 * the model as its flags say: eager (default) on the least-used visible core before
 * returning; lazy: nothing placed until the first kiln_forward or kiln_data_parallel;
 * async: placement runs in the background and this call returns at once. Placement checks
 * every weight checksum (once per model): an eager load of a damaged file fails here; a
 * lazy or async one fails its placement, reported by kiln_forward and kiln_wait as
 * KILN_ERR_LOAD. No op runs on weights that have not passed. Any thread (each call makes
 * its own model; one path may be loaded by several threads at once). */
KILN_API kiln_status kiln_load(const char *path, kiln_model **out);

/* How kiln_load_ex loads: the artifact's own flags, or an override (for benchmarks and for
 * serving one artifact in different ways). Get defaults from kiln_load_default_params();
 * fields may be added at the end in later versions. */
typedef enum kiln_load_mode {
    KILN_LOAD_AS_SAVED = 0,   /* the artifact's lazy/async flags (what kiln_load does) */
    KILN_LOAD_EAGER,          /* place now, wait */
    KILN_LOAD_LAZY,           /* place at the first forward / data-parallel, wait then */
    KILN_LOAD_ASYNC,          /* place now in the background, return at once */
    KILN_LOAD_LAZY_ASYNC      /* place in the background once triggered */
} kiln_load_mode;
typedef struct kiln_load_params {
    kiln_load_mode mode;
    int            core;      /* core of the first placement; -1: the least-used core */
} kiln_load_params;
KILN_API kiln_load_params kiln_load_default_params(void);
/* kiln_load with params (NULL: defaults). KILN_ERR_CORE for a core that is not visible.
 * kiln_load_default_params and kiln_load_ex: any thread. */
KILN_API kiln_status kiln_load_ex(const char *path, const kiln_load_params *params,
                                  kiln_model **out);

/* Prints a human-readable description of the artifact at path to `out`: flags, inputs and
 * outputs, op counts, sizes, and whether every checksum holds. Returns KILN_ERR_FORMAT
 * (after printing) when a checksum fails. Any thread (`out` is the caller's to share). */
KILN_API kiln_status kiln_inspect(const char *path, FILE *out);

/* ---------------------------------------------------------------------------------------
 * Run
 * ------------------------------------------------------------------------------------- */

/* Runs the model. inputs: one per graph input, in order, with exactly the traced dtype and
 * shape. outputs: caller-allocated, shapes and dtypes as kiln_model_output declares.
 * Places the model first if it is not placed yet (lazy), or waits for a pending load
 * (async). Errors: KILN_ERR_ARG, KILN_ERR_SHAPE (wrong count, dtype or shape; the message
 * says which and what was expected), KILN_ERR_LOAD (the model's load failed;
 * kiln_last_error() gives the cause).
 * Any thread, many at once on one model (exactly one placement is triggered however many
 * wait for it; forwards on one replica run one after another on its core's worker), and at
 * the same time as kiln_wait, kiln_save, the queries, kiln_data_parallel and
 * kiln_dp_forward on the model. */
KILN_API kiln_status kiln_forward(kiln_model *m, const kiln_tensor *inputs, size_t n_in,
                                  kiln_tensor *outputs, size_t n_out);
/* Blocks until no load of m is pending. KILN_ERR_LOAD if the load failed. Any thread, many
 * at once. */
KILN_API kiln_status kiln_wait(kiln_model *m);

typedef enum kiln_load_state { KILN_UNLOADED, KILN_LOADING, KILN_LOADED, KILN_FAILED } kiln_load_state;
/* kiln_model_state, _num_inputs/_outputs, _input/_output, _placements and
 * kiln_model_load_report: any thread (the state and counts are read under the model's
 * lock; inputs and outputs never change). _is_lazy/_is_async: see kiln_lazy_load. */
KILN_API kiln_load_state kiln_model_state(const kiln_model *m);
KILN_API size_t      kiln_model_num_inputs(const kiln_model *m);
KILN_API size_t      kiln_model_num_outputs(const kiln_model *m);
/* name and spec (dtype, ndim, shape; data NULL) of input/output i. The name lives as
 * long as the model. */
KILN_API kiln_status kiln_model_input(const kiln_model *m, size_t i, const char **name,
                                      kiln_tensor *spec);
KILN_API kiln_status kiln_model_output(const kiln_model *m, size_t i, const char **name,
                                       kiln_tensor *spec);
/* how many placements of this model have been made on core `core` so far (all cores: -1) */
KILN_API uint32_t    kiln_model_placements(const kiln_model *m, int core);
/* 1 if the model will load lazily / asynchronously (its flags), else 0. */
KILN_API int         kiln_model_is_lazy(const kiln_model *m);
KILN_API int         kiln_model_is_async(const kiln_model *m);

/* How the model's loading went: the artifact read and check, and its latest placement.
 * Times in milliseconds; a phase not run yet is 0. */
typedef struct kiln_load_report {
    double   read_ms;        /* open + map/read the artifact file */
    double   verify_ms;      /* header, program and per-tensor checksums */
    double   place_ms;       /* weights resident in the core's layout, arena allocated */
    double   kernels_ms;     /* kernels (oneDNN primitives) created */
    double   total_ms;       /* kiln_load's start (or the trigger) to LOADED */
    uint64_t file_bytes;     /* artifact size */
    uint64_t weight_bytes;   /* weights used by the kernels */
    uint64_t copied_bytes;   /* weight bytes copied or reordered at placement (0: all mapped) */
    uint64_t arena_bytes;    /* activation memory per replica */
    int      core;           /* core of the latest placement, -1 if none */
    uint32_t placements;     /* all placements made so far */
    /* Timeline of the load and the latest placement, in ms on kiln_clock_ms()'s clock
     * (0: not reached). read: [t_load, t_read_end]; the placement was triggered at
     * t_trigger, verified the weights in [t_verify_start, t_verify_end] (if this placement
     * was the one that did), placed in [t_place_start, t_kernels_start], created kernels in
     * [t_kernels_start, t_ready]. */
    double   t_load, t_read_end, t_trigger, t_verify_start, t_verify_end;
    double   t_place_start, t_kernels_start, t_ready;
} kiln_load_report;
/* Milliseconds on the monotonic clock the load report's timeline uses. Any thread. */
KILN_API double      kiln_clock_ms(void);
KILN_API kiln_status kiln_model_load_report(const kiln_model *m, kiln_load_report *out);

/* Frees the model and every replica. Safe while a load is in flight (it waits for it).
 * Threads: no other call on m (nor on a kiln_dp made from m, which must be freed first)
 * may be running or come after it. */
KILN_API void        kiln_model_free(kiln_model *m);

/* ---------------------------------------------------------------------------------------
 * Cores and data-parallel
 * ------------------------------------------------------------------------------------- */

/* Cores visible to this process: KILN_VISIBLE_CORES (CPU list such as "0-7" or "0,2,4",
 * default all CPUs this process may run on) grouped by KILN_CORE_SIZE CPUs (default 1).
 * Any thread; the environment is read once, when the runtime starts. */
KILN_API int         kiln_num_cores(void);

/* Data-parallel (SPEC section 4). Threads: kiln_data_parallel: any thread, also while m
 * runs, loads or is data-parallel elsewhere (no core is ever loaded twice with m).
 * kiln_dp_forward: any thread, many at once on one dp, and with kiln_forward on m.
 * kiln_dp_disable_dynamic_batching: any thread (a forward in flight keeps the setting it
 * started with). kiln_dp_free: no other call on dp running or after it; before
 * kiln_model_free(m). */
KILN_API kiln_status kiln_data_parallel(kiln_model *m, const int *core_ids, size_t n_cores,
                                        int dim, int dynamic_batching, kiln_dp **out);
KILN_API kiln_status kiln_dp_disable_dynamic_batching(kiln_dp *dp);
KILN_API kiln_status kiln_dp_forward(kiln_dp *dp, const kiln_tensor *inputs, size_t n_in,
                                     kiln_tensor *outputs, size_t n_out);
KILN_API void        kiln_dp_free(kiln_dp *dp);

#ifdef __cplusplus
}
#endif
#endif /* KILN_H */
