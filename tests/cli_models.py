#!/usr/bin/env python3
"""cli_models.py — tiny ONNX models, .npy inputs and NumPy reference outputs for
tests/cli_test.sh.

    cli_models.py make DIR           write the models, inputs and references into DIR
    cli_models.py compare GOT REF    exit 0 if GOT.npy matches REF.npy (same shape, dtype,
                                     max|got-ref| / max|ref| <= 1e-4)
    cli_models.py corrupt FILE       flip one byte in the middle of FILE

Models (opset 13):
    mlp.onnx   x: f32 [batch, 16] -> MatMul+Add -> Relu -> MatMul+Add -> y: f32 [batch, 8]
    conv.onnx  img: f32 [1, 3, 8, 8] -> Conv 3x3 pad 1 (+bias) -> Relu -> 'conv/relu:0' [1, 4, 8, 8]
    two.onnx   a, b: f32 [2, 4] -> sum = a + 3 * b, diff = a - b
"""
import os
import sys

import numpy as np


def save(d, name, a):
    np.save(os.path.join(d, name), a)


def mlp_ref(x, w1, b1, w2, b2):
    return (np.maximum(x @ w1 + b1, 0) @ w2 + b2).astype(np.float32)


def conv_ref(x, w, b):
    n, c, h, wd = x.shape
    k, _, kh, kw = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, k, h, wd))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + h, j:j + wd]                   # n c h w
            out += np.einsum("nchw,kc->nkhw", patch, w[:, :, i, j].astype(np.float64))
    out += b.reshape(1, k, 1, 1)
    return np.maximum(out, 0).astype(np.float32)


def make(d):
    from onnx import TensorProto, checker, helper, numpy_helper

    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(7)
    opset = [helper.make_opsetid("", 13)]

    def write(graph, name):
        model = helper.make_model(graph, opset_imports=opset, producer_name="kiln cli_test")
        model.ir_version = 7
        checker.check_model(model)
        with open(os.path.join(d, name), "wb") as f:
            f.write(model.SerializeToString())

    # MLP with a dynamic batch dimension
    w1 = rng.standard_normal((16, 32)).astype(np.float32) / 4
    b1 = rng.standard_normal(32).astype(np.float32) / 4
    w2 = rng.standard_normal((32, 8)).astype(np.float32) / 4
    b2 = rng.standard_normal(8).astype(np.float32) / 4
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("MatMul", ["h2", "w2"], ["h3"], name="fc2"),
        helper.make_node("Add", ["h3", "b2"], ["y"], name="fc2_bias"),
    ]
    g = helper.make_graph(nodes, "mlp",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
                          inits)
    write(g, "mlp.onnx")
    for n in (4, 6, 8):
        x = rng.standard_normal((n, 16)).astype(np.float32)
        save(d, "x%d.npy" % n, x)
        save(d, "mlp_ref%d.npy" % n, mlp_ref(x, w1, b1, w2, b2))
    save(d, "x_bad.npy", np.zeros((4, 15), np.float32))          # wrong shape
    save(d, "x_f64.npy", np.zeros((4, 16), np.float64))          # wrong dtype
    x4t = np.load(os.path.join(d, "x4.npy"))
    np.save(os.path.join(d, "x4_fortran.npy"), np.asfortranarray(x4t))  # same values, F order

    # Conv + Relu, with an output name that is not a safe file name
    wc = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) / 3
    bc = rng.standard_normal(4).astype(np.float32) / 3
    nodes = [
        helper.make_node("Conv", ["img", "wc", "bc"], ["c0"], name="conv", pads=[1, 1, 1, 1],
                         kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c0"], ["conv/relu:0"], name="relu"),
    ]
    g = helper.make_graph(nodes, "conv",
                          [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("conv/relu:0", TensorProto.FLOAT, [1, 4, 8, 8])],
                          [numpy_helper.from_array(wc, "wc"), numpy_helper.from_array(bc, "bc")])
    write(g, "conv.onnx")
    img = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    save(d, "img.npy", img)
    save(d, "conv_ref.npy", conv_ref(img, wc, bc))

    # two inputs, two outputs: tells named from positional inputs
    three = np.full((1,), 3, np.float32)
    nodes = [
        helper.make_node("Mul", ["b", "three"], ["b3"], name="scale"),
        helper.make_node("Add", ["a", "b3"], ["sum"], name="add"),
        helper.make_node("Sub", ["a", "b"], ["diff"], name="sub"),
    ]
    g = helper.make_graph(nodes, "two",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 4]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("sum", TensorProto.FLOAT, [2, 4]),
                           helper.make_tensor_value_info("diff", TensorProto.FLOAT, [2, 4])],
                          [numpy_helper.from_array(three, "three")])
    write(g, "two.onnx")
    a = rng.standard_normal((2, 4)).astype(np.float32)
    b = rng.standard_normal((2, 4)).astype(np.float32)
    save(d, "a.npy", a)
    save(d, "b.npy", b)
    save(d, "two_sum_ref.npy", a + 3 * b)
    save(d, "two_diff_ref.npy", a - b)

    with open(os.path.join(d, "not_onnx.onnx"), "wb") as f:
        f.write(b"this is not an ONNX model\n" * 10)
    with open(os.path.join(d, "not_npy.npy"), "wb") as f:
        f.write(b"not a numpy file either\n")


def compare(got_path, ref_path):
    got, ref = np.load(got_path), np.load(ref_path)
    if got.shape != ref.shape or got.dtype != ref.dtype:
        print("%s: %s %s, reference %s %s" % (got_path, got.dtype, got.shape, ref.dtype, ref.shape))
        return 1
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    err = float(np.max(np.abs(got.astype(np.float64) - ref))) if ref.size else 0.0
    rel = err / scale if scale > 0 else err
    if not rel <= 1e-4:
        print("%s: relative error %.3g > 1e-4" % (got_path, rel))
        return 1
    return 0


def corrupt(path):
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        at = len(data) // 2
        data[at] ^= 0x5A
        f.seek(0)
        f.write(data)


def main(argv):
    if len(argv) == 3 and argv[1] == "make":
        make(argv[2])
        return 0
    if len(argv) == 4 and argv[1] == "compare":
        return compare(argv[2], argv[3])
    if len(argv) == 3 and argv[1] == "corrupt":
        corrupt(argv[2])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
