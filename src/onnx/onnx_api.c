/*
 * onnx_api.c — the public kiln_onnx handle: an imported ONNX graph a caller can open and
 * ask about its inputs before tracing it (kiln_onnx_trace lives with the compiler).
 */
#include "onnx/graph.h"

#include <string.h>

KILN_API kiln_status kiln_onnx_open(const char *onnx_path, kiln_onnx **out)
{
    if (!onnx_path || !out)
        return kiln__fail(KILN_ERR_ARG, "kiln_onnx_open: NULL argument");
    kiln_onnx *h = kiln__calloc(1, sizeof *h);
    if (!h)
        return kiln__fail(KILN_ERR_NOMEM, "%s: out of memory", onnx_path);
    kiln_status st = kg_import(onnx_path, &h->graph);
    if (st != KILN_OK) {
        kiln__free(h);
        return st;
    }
    *out = h;
    return KILN_OK;
}

KILN_API size_t kiln_onnx_num_inputs(const kiln_onnx *g)
{
    return g && g->graph ? (size_t)g->graph->n_inputs : 0;
}

KILN_API kiln_status kiln_onnx_input(const kiln_onnx *g, size_t i, const char **name,
                                     kiln_tensor *spec)
{
    if (!g || !g->graph || !spec)
        return kiln__fail(KILN_ERR_ARG, "kiln_onnx_input: NULL argument");
    const kg_graph *gr = g->graph;
    if (i >= (size_t)gr->n_inputs)
        return kiln__fail(KILN_ERR_ARG, "kiln_onnx_input: input %zu out of range (the graph has %d)",
                          i, gr->n_inputs);
    const kg_value *v = &gr->values[gr->inputs[i]];
    if (v->dtype == 0)
        return kiln__fail(KILN_ERR_FORMAT, "graph input '%s' declares no element type", v->name);
    if (v->ndim < 0)
        return kiln__fail(KILN_ERR_FORMAT, "graph input '%s' declares no shape", v->name);
    memset(spec, 0, sizeof *spec);
    spec->dtype = v->dtype;
    spec->ndim = v->ndim;
    for (int d = 0; d < v->ndim; d++)
        spec->shape[d] = v->shape[d];
    spec->data = NULL;
    if (name)
        *name = v->name;
    return KILN_OK;
}

KILN_API void kiln_onnx_free(kiln_onnx *g)
{
    if (!g)
        return;
    kg_graph_free(g->graph);
    kiln__free(g);
}
