#!/usr/bin/python3
"""reliability_models.py OUTDIR — the small transformer-ish model the fault-injection and
soak tests use beside tests/trace/make_trace_models.py's conv models: one pre-norm encoder
layer (LayerNormalization, Q/K/V projections, two-head attention with Reshape/Transpose/
Softmax, output projection, residual, then a LayerNorm + MatMul + Gelu-by-Erf + MatMul
feed-forward with its residual). Writes attention.onnx, attention.in.npy and
attention.out.npy (a float64 numpy reference, stored as float32).

Needs python3-onnx and numpy: run it with /usr/bin/python3.
"""
import os
import sys
from math import erf, sqrt

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEQ, D, HEADS, FF = 8, 16, 2, 32
HD = D // HEADS

rng = np.random.default_rng(8)
out = sys.argv[1]
os.makedirs(out, exist_ok=True)


def rand(*shape, scale=0.3):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


x = rand(1, SEQ, D, scale=1.0)
w = {
    "g1": rng.uniform(0.5, 1.5, D).astype(np.float32), "b1": rand(D),
    "wq": rand(D, D), "bq": rand(D), "wk": rand(D, D), "bk": rand(D),
    "wv": rand(D, D), "bv": rand(D), "wo": rand(D, D), "bo": rand(D),
    "g2": rng.uniform(0.5, 1.5, D).astype(np.float32), "b2": rand(D),
    "w1": rand(D, FF), "c1": rand(FF), "w2": rand(FF, D), "c2": rand(D),
}
consts = {
    "heads_shape": np.array([1, SEQ, HEADS, HD], np.int64),
    "model_shape": np.array([1, SEQ, D], np.int64),
    "scale": np.array(1 / sqrt(HD), np.float32),
    "sqrt2": np.array(sqrt(2), np.float32),
    "one": np.array(1, np.float32),
    "half": np.array(0.5, np.float32),
}

N = helper.make_node
nodes = [
    N("LayerNormalization", ["x", "g1", "b1"], ["h"], axis=-1, epsilon=1e-5, name="ln1"),
    N("MatMul", ["h", "wq"], ["q0"]), N("Add", ["q0", "bq"], ["q1"]),
    N("MatMul", ["h", "wk"], ["k0"]), N("Add", ["k0", "bk"], ["k1"]),
    N("MatMul", ["h", "wv"], ["v0"]), N("Add", ["v0", "bv"], ["v1"]),
    N("Reshape", ["q1", "heads_shape"], ["q2"]), N("Transpose", ["q2"], ["q"], perm=[0, 2, 1, 3]),
    N("Reshape", ["k1", "heads_shape"], ["k2"]), N("Transpose", ["k2"], ["kt"], perm=[0, 2, 3, 1]),
    N("Reshape", ["v1", "heads_shape"], ["v2"]), N("Transpose", ["v2"], ["v"], perm=[0, 2, 1, 3]),
    N("MatMul", ["q", "kt"], ["s0"]), N("Mul", ["s0", "scale"], ["s"]),
    N("Softmax", ["s"], ["p"], axis=-1, name="softmax"),
    N("MatMul", ["p", "v"], ["o0"]), N("Transpose", ["o0"], ["o1"], perm=[0, 2, 1, 3]),
    N("Reshape", ["o1", "model_shape"], ["o2"]),
    N("MatMul", ["o2", "wo"], ["o3"]), N("Add", ["o3", "bo"], ["o"]),
    N("Add", ["x", "o"], ["x2"]),
    N("LayerNormalization", ["x2", "g2", "b2"], ["f0"], axis=-1, epsilon=1e-5, name="ln2"),
    N("MatMul", ["f0", "w1"], ["f1"]), N("Add", ["f1", "c1"], ["f2"]),
    N("Div", ["f2", "sqrt2"], ["e0"]), N("Erf", ["e0"], ["e1"]), N("Add", ["e1", "one"], ["e2"]),
    N("Mul", ["f2", "e2"], ["e3"]), N("Mul", ["e3", "half"], ["g"]),
    N("MatMul", ["g", "w2"], ["f3"]), N("Add", ["f3", "c2"], ["f"]),
    N("Add", ["x2", "f"], ["y"]),
]
inits = [numpy_helper.from_array(a, n) for n, a in list(w.items()) + list(consts.items())]
graph = helper.make_graph(nodes, "attention",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, SEQ, D])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, SEQ, D])], inits)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, os.path.join(out, "attention.onnx"))

# The reference, in float64.
W = {k: v.astype(np.float64) for k, v in w.items()}


def layernorm(t, g, b):
    mu = t.mean(-1, keepdims=True)
    var = ((t - mu) ** 2).mean(-1, keepdims=True)
    return (t - mu) / np.sqrt(var + 1e-5) * g + b


xd = x.astype(np.float64)
h = layernorm(xd, W["g1"], W["b1"])
q = (h @ W["wq"] + W["bq"]).reshape(1, SEQ, HEADS, HD).transpose(0, 2, 1, 3)
k = (h @ W["wk"] + W["bk"]).reshape(1, SEQ, HEADS, HD).transpose(0, 2, 3, 1)
v = (h @ W["wv"] + W["bv"]).reshape(1, SEQ, HEADS, HD).transpose(0, 2, 1, 3)
s = q @ k / sqrt(HD)
p = np.exp(s - s.max(-1, keepdims=True))
p /= p.sum(-1, keepdims=True)
o = (p @ v).transpose(0, 2, 1, 3).reshape(1, SEQ, D) @ W["wo"] + W["bo"]
x2 = xd + o
f2 = layernorm(x2, W["g2"], W["b2"]) @ W["w1"] + W["c1"]
g = f2 * 0.5 * (1 + np.vectorize(erf)(f2 / sqrt(2)))
y = x2 + g @ W["w2"] + W["c2"]
np.save(os.path.join(out, "attention.in.npy"), x)
np.save(os.path.join(out, "attention.out.npy"), y.astype(np.float32))
