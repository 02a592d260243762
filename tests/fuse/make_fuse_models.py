#!/usr/bin/python3
"""make_fuse_models.py OUTDIR — small ONNX graphs for test_fuse.c: GELU spelled out in
elementary ops the ways exporters and model code write it (torch's exact gelu, GPT-2's
gelu_new, torch's approximate='tanh', Megatron's factored form, operands swapped, the 0.5
first or last, 1.4142 / 0.7071 written short), after a MatMul + bias or alone, and spellings
that must NOT become one GELU (an intermediate used twice or wanted as an output, other
constants, the 0.5 missing); MatMul operands scaled by a constant (attention's
Q / sqrt(d)), which become the MatMul's scaling post-op, or not when the scaled value is
used twice; and a 2-D MatMul + bias reshaped back to 3-D before its residual Add (what a
Gemm in a transformer export looks like), which becomes one MatMul with a sum post-op unless
the 2-D result is also an output or the reshape changes the last dim.

Each model NAME gets NAME.onnx, NAME.in.npy and NAME.out.npy: the output of the graph as
written, computed in float64 with numpy (no fusion), for the test to compare with.
"""
import math
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(7)
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
erf = np.vectorize(math.erf)
K_IN, K_OUT = 16, 24


class G:
    """A graph being written: nodes, scalar constants, and their numpy evaluation."""

    def __init__(self, x):
        self.nodes, self.inits, self.env, self.n = [], [], {"x": x.astype(np.float64)}, 0

    def const(self, v):
        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.array(v, np.float32), name))
        self.env[name] = np.float64(np.float32(v))
        return name

    def op(self, kind, *args, out=None):
        ins = [a if isinstance(a, str) else self.const(a) for a in args]
        self.n += 1
        o = out or f"t{self.n}"
        self.nodes.append(helper.make_node(kind, ins, [o]))
        v = [self.env[i] for i in ins]
        f = {"Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b,
             "Div": lambda a, b: a / b, "Pow": lambda a, b: a ** b, "MatMul": lambda a, b: a @ b,
             "Erf": lambda a: erf(a), "Tanh": lambda a: np.tanh(a)}[kind]
        self.env[o] = f(*v)
        return o

    def reshape(self, v, shape):
        name = f"s{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.array(shape, np.int64), name))
        self.n += 1
        o = f"t{self.n}"
        self.nodes.append(helper.make_node("Reshape", [v, name], [o]))
        self.env[o] = self.env[v].reshape(shape)
        return o

    def weight(self, name, a):
        self.inits.append(numpy_helper.from_array(a, name))
        self.env[name] = a.astype(np.float64)
        return name

    def save(self, name, x, outputs):
        shape = list(x.shape)
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, list(self.env[o].shape)) for o in outputs]
        g = helper.make_graph(self.nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              outs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        onnx.save(m, os.path.join(out, name + ".onnx"))
        np.save(os.path.join(out, name + ".in.npy"), x)
        for i, o in enumerate(outputs):
            np.save(os.path.join(out, f"{name}.out{i}.npy"), self.env[o].astype(np.float32))


def linear(g):
    """h = x @ w + b (the MatMul the GELU should end up in as a post-op)."""
    w = g.weight("w", (rng.standard_normal((K_IN, K_OUT)) * 0.6).astype(np.float32))
    b = g.weight("b", rng.standard_normal(K_OUT).astype(np.float32))
    return g.op("Add", b, g.op("MatMul", "x", w))


# Each spelling: (name, after a MatMul?, body(g, h) -> output name, extra outputs)
def erf_torch(g, h):       # torch.onnx's export of F.gelu: x * (1 + erf(x / sqrt2)) * 0.5
    e = g.op("Erf", g.op("Div", h, 1.4142135381698608))
    return g.op("Mul", g.op("Mul", h, g.op("Add", e, 1.0)), 0.5)


def erf_half_first(g, h):  # 0.5 * x first, then * (1 + erf(x * 0.7071...)), constants first
    half = g.op("Mul", 0.5, h)
    e = g.op("Erf", g.op("Mul", 0.7071067811865476, h))
    return g.op("Mul", half, g.op("Add", 1.0, e))


def erf_short(g, h):       # x * ((1 + erf(x * 0.7071)) * 0.5): a short constant, 0.5 with the sum
    e = g.op("Erf", g.op("Mul", h, 0.7071))
    return g.op("Mul", g.op("Mul", g.op("Add", e, 1.0), 0.5), h)


def erf_div2(g, h):        # x * (1 + erf(x / 1.4142)) / 2
    e = g.op("Erf", g.op("Div", h, 1.4142))
    return g.op("Div", g.op("Mul", g.op("Add", 1.0, e), h), 2.0)


def tanh_gpt2(g, h):       # GPT-2's gelu_new: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
    half = g.op("Mul", 0.5, h)
    inner = g.op("Add", h, g.op("Mul", 0.044715, g.op("Pow", h, 3.0)))
    t = g.op("Tanh", g.op("Mul", math.sqrt(2 / math.pi), inner))
    return g.op("Mul", half, g.op("Add", 1.0, t))


def tanh_torch(g, h):      # torch.onnx's export of F.gelu(approximate='tanh'): x * x * x
    cube = g.op("Mul", h, g.op("Mul", h, h))
    inner = g.op("Add", h, g.op("Mul", 0.044715, cube))
    t = g.op("Tanh", g.op("Mul", 0.7978845834732056, inner))
    return g.op("Mul", 0.5, g.op("Mul", h, g.op("Add", 1.0, t)))


def tanh_factored(g, h):   # Megatron: x * 0.5 * (1 + tanh(0.79788456 * x * (1 + 0.044715 * x * x)))
    half = g.op("Mul", h, 0.5)
    poly = g.op("Add", 1.0, g.op("Mul", 0.044715, g.op("Mul", h, h)))
    t = g.op("Tanh", g.op("Mul", g.op("Mul", 0.79788456, h), poly))
    return g.op("Mul", half, g.op("Add", t, 1.0))


def twice_used(g, h):      # erf's argument also feeds a second output: stays as written
    d = g.op("Div", h, 1.4142135381698608)
    e = g.op("Erf", d)
    y = g.op("Mul", g.op("Mul", h, g.op("Add", e, 1.0)), 0.5)
    return y, [g.op("Mul", d, 3.0)]


def erf_output(g, h):      # erf's result is a graph output too
    e = g.op("Erf", g.op("Div", h, 1.4142135381698608), out="erf_out")
    return g.op("Mul", g.op("Mul", h, g.op("Add", e, 1.0)), 0.5), ["erf_out"]


def wrong_scale(g, h):     # x * 0.5 * (1 + erf(x / 1.5)): not GELU
    e = g.op("Erf", g.op("Div", h, 1.5))
    return g.op("Mul", g.op("Mul", h, g.op("Add", e, 1.0)), 0.5)


def wrong_cubic(g, h):     # 0.05 instead of 0.044715: not GELU
    half = g.op("Mul", 0.5, h)
    inner = g.op("Add", h, g.op("Mul", 0.05, g.op("Pow", h, 3.0)))
    t = g.op("Tanh", g.op("Mul", math.sqrt(2 / math.pi), inner))
    return g.op("Mul", half, g.op("Add", 1.0, t))


def no_half(g, h):         # x * (1 + erf(x / sqrt2)): twice GELU, not GELU
    e = g.op("Erf", g.op("Div", h, 1.4142135381698608))
    return g.op("Mul", h, g.op("Add", e, 1.0))


def erf_then_scale(g, h):  # GELU then * 3: the GELU still forms, the * 3 stays after it
    return g.op("Mul", erf_torch(g, h), 3.0)


def scale_a(g, h):         # (x / 8) @ w + b: the bias must not be scaled
    w = g.weight("w", (rng.standard_normal((K_IN, K_OUT)) * 0.6).astype(np.float32))
    b = g.weight("b", rng.standard_normal(K_OUT).astype(np.float32))
    return g.op("Add", g.op("MatMul", g.op("Div", "x", 8.0), w), b)


def scale_b(g, h):         # a @ (0.25 * x): the activation on the right
    a = g.weight("a", rng.standard_normal((2, 3, 5)).astype(np.float32))
    return g.op("MatMul", a, g.op("Mul", 0.25, "x"))


def scale_twice(g, h):     # x * 0.5 feeds the MatMul and an output: stays
    w = g.weight("w", (rng.standard_normal((K_IN, K_OUT)) * 0.6).astype(np.float32))
    s = g.op("Mul", "x", 0.5)
    return g.op("MatMul", s, w), [g.op("Add", s, 1.0)]


def residual(g, h, out_shape=(1, 10, K_IN), also_2d=False):
    """x (1 x 10 x K) -> 2-D -> @ w + b -> reshaped -> + x."""
    w = g.weight("w", (rng.standard_normal((K_IN, K_IN)) * 0.3).astype(np.float32))
    b = g.weight("b", rng.standard_normal(K_IN).astype(np.float32))
    m = g.op("Add", g.op("MatMul", g.reshape("x", [10, K_IN]), w), b)
    r = g.reshape(m, list(out_shape))
    y = g.op("Add", g.reshape("x", list(out_shape)), r)
    return (y, [m]) if also_2d else y


CASES = [
    ("gelu_erf_torch", True, erf_torch), ("gelu_erf_half_first", True, erf_half_first),
    ("gelu_erf_short", True, erf_short), ("gelu_erf_div2", True, erf_div2),
    ("gelu_tanh_gpt2", True, tanh_gpt2), ("gelu_tanh_torch", True, tanh_torch),
    ("gelu_tanh_factored", True, tanh_factored), ("gelu_erf_alone", False, erf_torch),
    ("gelu_tanh_alone", False, tanh_gpt2), ("gelu_then_scale", True, erf_then_scale),
    ("nogelu_twice_used", True, twice_used), ("nogelu_erf_output", True, erf_output),
    ("nogelu_wrong_scale", True, wrong_scale), ("nogelu_wrong_cubic", True, wrong_cubic),
    ("nogelu_no_half", True, no_half),
    ("scale_a", None, scale_a), ("scale_b", None, scale_b), ("noscale_twice", None, scale_twice),
    ("residual_reshaped", "res", residual),
    ("noresidual_2d_output", "res", lambda g, h: residual(g, h, also_2d=True)),
    ("noresidual_last_dim", "res", lambda g, h: residual(g, h, out_shape=(1, 5, 2 * K_IN))),
]

for name, mm, body in CASES:
    shape = (1, 10, K_IN) if mm == "res" else (2, 5, K_OUT if mm is False else K_IN)
    x = (rng.standard_normal(shape) * 1.5).astype(np.float32)
    g = G(x)
    h = linear(g) if mm is True else "x"
    r = body(g, h)
    y, extra = r if isinstance(r, tuple) else (r, [])
    g.save(name, x, [y] + extra)
