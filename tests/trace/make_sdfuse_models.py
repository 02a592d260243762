#!/usr/bin/python3
"""make_sdfuse_models.py OUTDIR — small ONNX graphs shaped like what torch exports for
Stable Diffusion's UNet and VAE blocks, for tests/test_sdfuse.c: GroupNorm as Reshape ->
InstanceNormalization -> Reshape -> Mul(gamma) -> Add(beta), SiLU as Sigmoid -> Mul, 3x3
convolutions and a nearest x2 Resize between them; plus cases where an intermediate is
used twice, so nothing may be fused there. References are computed unfused, in float64.

Each model NAME gets NAME.onnx, NAME.in.npy and NAME.out<K>.npy (output K).
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(5)
out = sys.argv[1]
os.makedirs(out, exist_ok=True)


def save(name, nodes, x, outputs, inits):
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, y.shape) for n, y in outputs],
                          [numpy_helper.from_array(np.asarray(a), n) for n, a in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, os.path.join(out, name + ".onnx"))
    np.save(os.path.join(out, name + ".in.npy"), x)
    for k, (_, y) in enumerate(outputs):
        np.save(os.path.join(out, "%s.out%d.npy" % (name, k)), y.astype(np.float32))


def randn(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def conv2d(x, w, b, pad):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    y = np.zeros((n, o, h, wd), np.float64)
    for i in range(kh):
        for j in range(kw):
            y += np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j])
    return y + b.reshape(1, o, 1, 1)


def groupnorm(x, groups, gamma, beta, eps=1e-5):
    n, c = x.shape[:2]
    g = x.reshape(n, groups, -1).astype(np.float64)
    g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)
    return g.reshape(x.shape) * gamma.reshape(1, c, 1, 1) + beta.reshape(1, c, 1, 1)


def silu(x):
    return x / (1 + np.exp(-x))


def gn_nodes(pre, x, y, groups, c, inits, spatial_shape):
    """torch's GroupNorm export: Reshape -> InstanceNormalization -> Reshape -> Mul -> Add."""
    gamma, beta = randn(c, 1, 1, scale=0.5) + 1, randn(c, 1, 1, scale=0.5)
    inits += [(pre + "_g", gamma), (pre + "_b", beta), (pre + "_one", np.ones(groups, np.float32)),
              (pre + "_zero", np.zeros(groups, np.float32)),
              (pre + "_s1", np.array([0, groups, -1], np.int64)),
              (pre + "_s2", np.array(spatial_shape, np.int64))]
    nodes = [helper.make_node("Reshape", [x, pre + "_s1"], [pre + "_r1"]),
             helper.make_node("InstanceNormalization", [pre + "_r1", pre + "_one", pre + "_zero"],
                              [pre + "_in"], epsilon=1e-5),
             helper.make_node("Reshape", [pre + "_in", pre + "_s2"], [pre + "_r2"]),
             helper.make_node("Mul", [pre + "_r2", pre + "_g"], [pre + "_m"]),
             helper.make_node("Add", [pre + "_m", pre + "_b"], [y])]
    return nodes, gamma, beta


def silu_nodes(pre, x, y):
    return [helper.make_node("Sigmoid", [x], [pre + "_sig"]),
            helper.make_node("Mul", [x, pre + "_sig"], [y])]


# 1. A VAE-like block: conv -> GroupNorm -> SiLU -> conv -> SiLU -> Resize x2 -> conv -> GroupNorm
#    -> SiLU -> conv. Fused: 4 Conv, 2 GroupNorm (SiLU inside), 1 Resize, nothing else.
x = randn(1, 8, 6, 6)
inits = []
w1, b1 = randn(16, 8, 3, 3, scale=0.2), randn(16, scale=0.1)
w2, b2 = randn(16, 16, 3, 3, scale=0.1), randn(16, scale=0.1)
w3, b3 = randn(8, 16, 3, 3, scale=0.1), randn(8, scale=0.1)
w4, b4 = randn(4, 8, 3, 3, scale=0.2), randn(4, scale=0.1)
inits += [("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2), ("w3", w3), ("b3", b3), ("w4", w4), ("b4", b4),
          ("scales", np.array([1, 1, 2, 2], np.float32))]
g1, ga1, be1 = gn_nodes("gn1", "c1", "n1", 4, 16, inits, [0, 16, 6, 6])
g2, ga2, be2 = gn_nodes("gn2", "c3", "n2", 2, 8, inits, [0, 8, 12, 12])
nodes = ([helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1])] + g1 +
         silu_nodes("s1", "n1", "a1") +
         [helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1])] +
         silu_nodes("s2", "c2", "a2") +
         [helper.make_node("Resize", ["a2", "", "scales"], ["u"], mode="nearest",
                           coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
          helper.make_node("Conv", ["u", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1])] + g2 +
         silu_nodes("s3", "n2", "a3") +
         [helper.make_node("Conv", ["a3", "w4", "b4"], ["y"], pads=[1, 1, 1, 1])])
r = silu(groupnorm(conv2d(x, w1, b1, 1), 4, ga1, be1))
r = silu(conv2d(r, w2, b2, 1))
r = r.repeat(2, axis=2).repeat(2, axis=3)
r = silu(groupnorm(conv2d(r, w3, b3, 1), 2, ga2, be2))
r = conv2d(r, w4, b4, 1)
save("sd_block", nodes, x, [("y", r)], inits)

# 2. Used twice: the GroupNorm's result is also a graph output (no SiLU fused into it) and
#    the Sigmoid's result is read by the Mul and by an Add (no SiLU fusion). Fused: the
#    GroupNorm pattern only (it may write a graph output).
x = randn(2, 8, 5, 5)
inits = [("sh", np.array([2, 8, 5, 5], np.int64))]
g1, ga1, be1 = gn_nodes("gn", "x", "z", 2, 8, inits, [2, 8, 5, 5])
nodes = g1 + [helper.make_node("Sigmoid", ["z"], ["s"]),
              helper.make_node("Mul", ["z", "s"], ["w"]),
              helper.make_node("Add", ["w", "s"], ["y"])]
z = groupnorm(x, 2, ga1, be1)
s = 1 / (1 + np.exp(-z))
save("sd_shared", nodes, x, [("y", z * s + s), ("z", z)], inits)

# 3. Used twice: the InstanceNormalization's reshaped result is read by the Mul and by the
#    final Add, so the GroupNorm pattern must not fuse (and still be right).
x = randn(1, 6, 4, 4)
inits = []
g1, ga1, be1 = gn_nodes("gn", "x", "z", 3, 6, inits, [0, 6, 4, 4])
nodes = g1 + [helper.make_node("Add", ["z", "gn_r2"], ["y"])]
n = groupnorm(x, 3, np.ones(6, np.float32), np.zeros(6, np.float32))
save("sd_norm_twice", nodes, x, [("y", groupnorm(x, 3, ga1, be1) + n)], inits)

# 4. A UNet-like skip: Concat over channels of two conv results and the (dense) graph input,
#    then GroupNorm + SiLU and a conv. The Concat reads the conv results channels-last.
x = randn(1, 4, 6, 6)
inits = []
w1, b1 = randn(8, 4, 3, 3, scale=0.3), randn(8, scale=0.1)
w2, b2 = randn(8, 8, 3, 3, scale=0.2), randn(8, scale=0.1)
w3, b3 = randn(4, 20, 3, 3, scale=0.1), randn(4, scale=0.1)
inits += [("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2), ("w3", w3), ("b3", b3)]
g1, ga1, be1 = gn_nodes("gn", "cat", "n", 4, 20, inits, [0, 20, 6, 6])
nodes = ([helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
          helper.make_node("Conv", ["c1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
          helper.make_node("Concat", ["c1", "c2", "x"], ["cat"], axis=1)] + g1 +
         silu_nodes("s", "n", "a") +
         [helper.make_node("Conv", ["a", "w3", "b3"], ["y"], pads=[1, 1, 1, 1])])
c1 = conv2d(x, w1, b1, 1)
c2 = conv2d(c1, w2, b2, 1)
r = silu(groupnorm(np.concatenate([c1, c2, x], axis=1), 4, ga1, be1))
save("sd_cat", nodes, x, [("y", conv2d(r, w3, b3, 1))], inits)

# 5. A ResBlock's time embedding: conv(x) + Unsqueeze(MatMul(SiLU(mean of x)))[..., None, None],
#    the projection computed after the conv (as torch orders it). Its ops move before the
#    conv, and the Add becomes the conv's post-op.
x = randn(1, 4, 6, 6)
w1, b1 = randn(8, 4, 3, 3, scale=0.3), randn(8, scale=0.1)
wt = randn(4, 8, scale=0.5)
inits = [("w1", w1), ("b1", b1), ("wt", wt), ("ax", np.array([2, 3], np.int64))]
nodes = ([helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
          helper.make_node("ReduceMean", ["x"], ["t0"], axes=[2, 3], keepdims=0)] +
         silu_nodes("st", "t0", "t1") +
         [helper.make_node("MatMul", ["t1", "wt"], ["t2"]),
          helper.make_node("Unsqueeze", ["t2", "ax"], ["t3"]),
          helper.make_node("Add", ["c1", "t3"], ["y"])])
t = silu(x.astype(np.float64).mean(axis=(2, 3))) @ wt
save("sd_temb", nodes, x, [("y", conv2d(x, w1, b1, 1) + t[:, :, None, None])], inits)
