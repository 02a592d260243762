/*
 * graph.c — the kg_graph data structure itself: freeing graphs and tensors (including
 * half-built ones left by a failed import) and looking up node attributes.
 * Turning ONNX protobuf into a kg_graph is import.c's job.
 */
#include "onnx/graph.h"

#include <string.h>

void kg_tensor_free(kg_tensor *t)
{
    if (!t)
        return;
    kiln__free(t->data);
    kiln__free(t);
}

static void attr_clear(kg_attr *a)
{
    kiln__free(a->name);
    kiln__free(a->s);
    kiln__free(a->ints);
    kiln__free(a->floats);
    if (a->strings) {
        for (size_t i = 0; i < a->n; i++)
            kiln__free(a->strings[i]);
        kiln__free(a->strings);
    }
    kg_tensor_free(a->t);
}

static void node_clear(kg_node *n)
{
    kiln__free(n->op_type);
    kiln__free(n->name);
    kiln__free(n->domain);
    kiln__free(n->in);
    kiln__free(n->out);
    if (n->attrs) {
        for (int i = 0; i < n->n_attr; i++)
            attr_clear(&n->attrs[i]);
        kiln__free(n->attrs);
    }
}

/* Works on a graph in any state of construction: every count covers only entries whose
 * pointers are either valid or NULL (the importer allocates arrays zeroed). */
void kg_graph_free(kg_graph *g)
{
    if (!g)
        return;
    if (g->values) {
        for (int i = 0; i < g->n_values; i++) {
            kiln__free(g->values[i].name);
            kg_tensor_free(g->values[i].constant);
        }
        kiln__free(g->values);
    }
    if (g->nodes) {
        for (int i = 0; i < g->n_nodes; i++)
            node_clear(&g->nodes[i]);
        kiln__free(g->nodes);
    }
    kiln__free(g->inputs);
    kiln__free(g->outputs);
    kiln__free(g->name);
    kiln__free(g);
}

const kg_attr *kg_attr_find(const kg_node *n, const char *name)
{
    if (!n || !name)
        return NULL;
    for (int i = 0; i < n->n_attr; i++) {
        if (n->attrs[i].name && strcmp(n->attrs[i].name, name) == 0)
            return &n->attrs[i];
    }
    return NULL;
}

/* The typed getters return the default both when the attribute is absent and when it has
 * another type: the compiler validates types where it matters with kg_attr_find. */
int64_t kg_attr_int(const kg_node *n, const char *name, int64_t dflt)
{
    const kg_attr *a = kg_attr_find(n, name);
    return a && a->type == KG_ATTR_INT ? a->i : dflt;
}

float kg_attr_float(const kg_node *n, const char *name, float dflt)
{
    const kg_attr *a = kg_attr_find(n, name);
    return a && a->type == KG_ATTR_FLOAT ? a->f : dflt;
}

const char *kg_attr_string(const kg_node *n, const char *name, const char *dflt)
{
    const kg_attr *a = kg_attr_find(n, name);
    return a && a->type == KG_ATTR_STRING && a->s ? a->s : dflt;
}

const int64_t *kg_attr_ints(const kg_node *n, const char *name, size_t *count)
{
    const kg_attr *a = kg_attr_find(n, name);
    if (!a || a->type != KG_ATTR_INTS) {
        if (count)
            *count = 0;
        return NULL;
    }
    if (count)
        *count = a->n;
    return a->ints;
}
