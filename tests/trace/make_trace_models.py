#!/usr/bin/python3
"""make_trace_models.py OUTDIR — small ONNX graphs that pin down what trace must do
(folding, fusion, dropping no-ops, memory planning, errors), with numpy reference outputs.

Each model NAME gets NAME.onnx, NAME.in.npy and NAME.out.npy (when it is runnable).
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(0)
out = sys.argv[1]
os.makedirs(out, exist_ok=True)


def save(name, nodes, inputs, outputs, inits=(), x=None, y=None, opset=17):
    g = helper.make_graph(nodes, name, inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, os.path.join(out, name + ".onnx"))
    if x is not None:
        np.save(os.path.join(out, name + ".in.npy"), x)
    if y is not None:
        np.save(os.path.join(out, name + ".out.npy"), y)


def vi(name, shape, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


def conv2d(x, w, b, pad):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    y = np.zeros((n, o, h, wd), np.float64)
    for i in range(kh):
        for j in range(kw):
            y += np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j])
    return y + b.reshape(1, o, 1, 1)


# 1. Shape arithmetic folds away: x -> Shape -> Gather(0) -> Unsqueeze -> Concat(-1) -> Reshape -> Relu
x = rng.standard_normal((2, 3, 4), dtype=np.float32)
nodes = [
    helper.make_node("Shape", ["x"], ["s"]),
    helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
    helper.make_node("Unsqueeze", ["b", "ax0"], ["bu"]),
    helper.make_node("Concat", ["bu", "minus1"], ["shape"], axis=0),
    helper.make_node("Reshape", ["x", "shape"], ["r"]),
    helper.make_node("Relu", ["r"], ["y"], name="relu"),
]
save("fold", nodes, [vi("x", ["batch", 3, 4])], [vi("y", ["batch", 12])],
     [("zero", np.array(0, np.int64)), ("ax0", np.array([0], np.int64)), ("minus1", np.array([-1], np.int64))],
     x, np.maximum(x.reshape(2, 12), 0))

# 2. Conv + BatchNormalization + Relu -> one op; 3. with a residual Add before the Relu
xc = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
w = rng.standard_normal((4, 4, 3, 3), dtype=np.float32) * 0.3
b = rng.standard_normal(4).astype(np.float32)
sc, sh = rng.uniform(0.5, 1.5, 4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
mu, var = rng.standard_normal(4).astype(np.float32), rng.uniform(0.5, 2, 4).astype(np.float32)
conv = conv2d(xc.astype(np.float64), w.astype(np.float64), b.astype(np.float64), 1)
bn = (conv - mu.reshape(1, 4, 1, 1)) / np.sqrt(var.reshape(1, 4, 1, 1) + 1e-5) * sc.reshape(1, 4, 1, 1) + sh.reshape(1, 4, 1, 1)
inits = [("w", w), ("b", b), ("sc", sc), ("sh", sh), ("mu", mu), ("var", var)]
base = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["c", "sc", "sh", "mu", "var"], ["n"], epsilon=1e-5, name="bn")]
save("conv_bn_relu", base + [helper.make_node("Relu", ["n"], ["y"])], [vi("x", [1, 4, 8, 8])], [vi("y", [1, 4, 8, 8])],
     inits, xc, np.maximum(bn, 0).astype(np.float32))
save("conv_residual", base + [helper.make_node("Add", ["n", "x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])],
     [vi("x", [1, 4, 8, 8])], [vi("y", [1, 4, 8, 8])], inits, xc, np.maximum(bn + xc, 0).astype(np.float32))

# 4. Identity and Dropout disappear; an output that is an input works
save("noops", [helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Dropout", ["i"], ["d"]),
               helper.make_node("Relu", ["d"], ["y"]), helper.make_node("Identity", ["x"], ["x2"])],
     [vi("x", [2, 3, 4])], [vi("y", [2, 3, 4]), vi("x2", [2, 3, 4])], (), x, np.maximum(x, 0))

# 5. A long chain: the arena must reuse memory (a few tensors, not one per op)
xl = rng.standard_normal((1, 256, 32, 32), dtype=np.float32)
chain, prev, ref = [], "x", xl.copy()
for i in range(12):
    chain.append(helper.make_node("Sigmoid" if i % 2 else "Neg", [prev], ["t%d" % i]))
    prev = "t%d" % i
    ref = 1 / (1 + np.exp(-ref)) if i % 2 else -ref
chain[-1].output[0] = "y"
save("chain", chain, [vi("x", [1, 256, 32, 32])], [vi("y", [1, 256, 32, 32])], (), xl, ref.astype(np.float32))

# 6. MatMul + bias + Gelu-by-Erf (the BERT pattern) with a constant weight
xm = rng.standard_normal((2, 5, 16), dtype=np.float32)
wm = rng.standard_normal((16, 8), dtype=np.float32) * 0.2
bm = rng.standard_normal(8).astype(np.float32)
h = xm.astype(np.float64) @ wm + bm
from math import erf, sqrt
gelu = h * 0.5 * (1 + np.vectorize(erf)(h / sqrt(2)))
save("matmul_gelu", [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["h"]),
                     helper.make_node("Div", ["h", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
                     helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["h", "e1"], ["g"]),
                     helper.make_node("Mul", ["g", "half"], ["y"])],
     [vi("x", [2, 5, 16])], [vi("y", [2, 5, 8])],
     [("w", wm), ("b", bm), ("sqrt2", np.array(sqrt(2), np.float32)), ("one", np.array(1, np.float32)),
      ("half", np.array(0.5, np.float32))], xm, gelu.astype(np.float32))

# 7. Unsupported op, named
save("unsupported", [helper.make_node("Relu", ["x"], ["r"]),
                     helper.make_node("NonZero", ["r"], ["y"], name="nz_node")],
     [vi("x", [2, 3])], [vi("y", [2, "n"], TensorProto.INT64)])

# 8. Two inputs, two outputs (data-parallel splits and joins each)
a = rng.standard_normal((1, 3), dtype=np.float32)
save("two_io", [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Mul", ["a", "b"], ["p"])],
     [vi("a", [1, 3]), vi("b", [1, 3])], [vi("s", [1, 3]), vi("p", [1, 3])])

# 9. A residual block: h -> conv -> relu -> conv (+ h) -> relu; the block's last conv adds h in
#    place (its result takes h's arena slot, h being dead after it)
w1 = rng.standard_normal((4, 4, 3, 3), dtype=np.float32) * 0.3
w2 = rng.standard_normal((4, 4, 3, 3), dtype=np.float32) * 0.3
w3 = rng.standard_normal((4, 4, 3, 3), dtype=np.float32) * 0.3
zb = np.zeros(4, np.float64)
h = np.maximum(conv2d(xc.astype(np.float64), w1.astype(np.float64), zb, 1), 0)
t = np.maximum(conv2d(h, w2.astype(np.float64), zb, 1), 0)
res = np.maximum(conv2d(t, w3.astype(np.float64), zb, 1) + h, 0)
save("residual_block", [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
                        helper.make_node("Relu", ["c1"], ["h"]),
                        helper.make_node("Conv", ["h", "w2"], ["c2"], pads=[1, 1, 1, 1]),
                        helper.make_node("Relu", ["c2"], ["t"]),
                        helper.make_node("Conv", ["t", "w3"], ["c3"], pads=[1, 1, 1, 1]),
                        helper.make_node("Add", ["c3", "h"], ["a"]), helper.make_node("Relu", ["a"], ["y"])],
     [vi("x", [1, 4, 8, 8])], [vi("y", [1, 4, 8, 8])], [("w1", w1), ("w2", w2), ("w3", w3)], xc,
     res.astype(np.float32))

# 10. Eight MatMul + bias + Relu layers, each with weights of its own (streaming placement:
#     a forward may run layer i once layer i's weights passed their checksums)
xw = rng.standard_normal((1, 64), dtype=np.float32)
nodes, inits, prev, ref = [], [], "x", xw.astype(np.float64)
for i in range(8):
    w = rng.standard_normal((64, 64), dtype=np.float32) * 0.2
    b = rng.standard_normal(64, dtype=np.float32) * 0.1
    y = "y" if i == 7 else "r%d" % i
    nodes += [helper.make_node("MatMul", [prev, "w%d" % i], ["m%d" % i]),
              helper.make_node("Add", ["m%d" % i, "b%d" % i], ["a%d" % i]),
              helper.make_node("Relu", ["a%d" % i], [y])]
    inits += [("w%d" % i, w), ("b%d" % i, b)]
    ref = np.maximum(ref @ w.astype(np.float64) + b, 0)
    prev = y
save("layers", nodes, [vi("x", [1, 64])], [vi("y", [1, 64])], inits, xw, ref.astype(np.float32))
