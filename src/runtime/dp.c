/*
 * dp.c — data-parallel inference (kiln_data_parallel, kiln_dp_*).
 *
 * Not built yet: replicas on several cores with input splitting and dynamic batching are
 * the data-parallel issue's work. Until then every call says so plainly.
 */
#include "runtime/model.h"

KILN_API kiln_status kiln_data_parallel(kiln_model *m, const int *core_ids, size_t n_cores, int dim,
                                        int dynamic_batching, kiln_dp **out)
{
    return kiln__fail(KILN_ERR_UNSUPPORTED, "kiln_data_parallel is not implemented yet");
}

KILN_API kiln_status kiln_dp_disable_dynamic_batching(kiln_dp *dp)
{
    return kiln__fail(KILN_ERR_UNSUPPORTED, "kiln_dp_disable_dynamic_batching is not implemented yet");
}

KILN_API kiln_status kiln_dp_forward(kiln_dp *dp, const kiln_tensor *inputs, size_t n_in,
                                     kiln_tensor *outputs, size_t n_out)
{
    return kiln__fail(KILN_ERR_UNSUPPORTED, "kiln_dp_forward is not implemented yet");
}

KILN_API void kiln_dp_free(kiln_dp *dp) { (void)dp; }
