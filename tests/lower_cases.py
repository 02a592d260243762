#!/usr/bin/env python3
"""lower_cases.py — end-to-end checks of the op lowerings on what the ONNX node tests leave
out: opset 18 forms (GroupNormalization, Split num_outputs, Reduce axes inputs, Resize
axes, Pad axes), the pre-13 Softmax coercion, 1-D and broadcast MatMul, Gemm on run-time
operands, Einsum, pool ceil_mode windows, Dropout masks, constant graph outputs, scatters
and gathers built from other ops, RNN/GRU/LSTM (run-time sequence_lens, peepholes,
layout 1, activations), model-local functions (inlined), and models that must be refused
(KILN_ERR_UNSUPPORTED, never a wrong answer).

    lower_cases.py KILN WORKDIR [FILTER]

KILN is the kiln command-line binary; WORKDIR a scratch directory this script may wipe.
Each case is a one-node (or few-node) model traced with `kiln trace` and run with
`kiln run`; outputs are compared with NumPy references (max|got-ref| <= 1e-4 * max|ref|,
exact for integers and bools). The last line is "lowering cases: N passed, N failed";
exit status 1 if any failed. Needs python3 with numpy and onnx.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

DT = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64,
      np.dtype(np.int32): TensorProto.INT32, np.dtype(np.bool_): TensorProto.BOOL,
      np.dtype(np.float64): TensorProto.DOUBLE, np.dtype(np.uint8): TensorProto.UINT8}
rng = np.random.default_rng(7)
CASES = []


def case(fn):
    CASES.append(fn)
    return fn


def randn(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def model(nodes, inputs, outputs, consts=None, opset=17):
    """inputs: {name: array} (graph inputs), consts: {name: array} (initializers),
    outputs: {name: reference array} (or {name: (dtype, shape)} for refusal cases)."""
    consts = consts or {}
    vi = lambda n, a: helper.make_tensor_value_info(n, DT[np.asarray(a).dtype], np.shape(a))
    g = helper.make_graph(nodes, 'case', [vi(n, a) for n, a in inputs.items()],
                          [helper.make_tensor_value_info(n, DT[np.asarray(a).dtype], None)
                           for n, a in outputs.items()],
                          [numpy_helper.from_array(np.asarray(a), n) for n, a in consts.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid('', opset)])
    m.ir_version = 8
    return m, inputs, outputs


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ---- normalisations and softmax ----

@case
def softmax_opset11_coerced():
    x = randn(2, 3, 4)
    ref = softmax(x.reshape(2, 12), 1).reshape(2, 3, 4)
    return model([helper.make_node('Softmax', ['x'], ['y'], axis=1)], {'x': x}, {'y': ref}, opset=11)


@case
def logsoftmax_opset11_axis0():
    x = randn(2, 3, 4)
    ref = np.log(softmax(x.reshape(1, 24), 1)).reshape(2, 3, 4)
    return model([helper.make_node('LogSoftmax', ['x'], ['y'], axis=0)], {'x': x}, {'y': ref}, opset=11)


@case
def groupnorm_opset18_per_group():
    x, s, b = randn(2, 6, 3, 3), randn(3), randn(3)
    g = x.reshape(2, 3, -1)
    y = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-3)
    y = y.reshape(2, 3, 2, 3, 3) * s.reshape(1, 3, 1, 1, 1) + b.reshape(1, 3, 1, 1, 1)
    return model([helper.make_node('GroupNormalization', ['x', 's', 'b'], ['y'], num_groups=3,
                                   epsilon=1e-3)],
                 {'x': x}, {'y': y.reshape(2, 6, 3, 3)}, {'s': s, 'b': b}, opset=18)


@case
def layernorm_axis1_with_stats():
    x, s, b = randn(2, 3, 4), randn(3, 4), randn(4)
    m = x.mean((1, 2), keepdims=True)
    inv = 1 / np.sqrt(x.var((1, 2), keepdims=True) + 1e-5)
    return model([helper.make_node('LayerNormalization', ['x', 's', 'b'], ['y', 'm', 'inv'], axis=1)],
                 {'x': x}, {'y': (x - m) * inv * s + b, 'm': m, 'inv': inv}, {'s': s, 'b': b})


@case
def layernorm_scale_left_empty():
    # torch 1.13 exports LayerNorm(elementwise_affine=False) at opset 17 so: Scale is ''
    x, b = randn(2, 3, 4), randn(4)
    y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    return model([helper.make_node('LayerNormalization', ['x', '', 'b'], ['y'])],
                 {'x': x}, {'y': y + b}, {'b': b})


@case
def instancenorm_runtime_scale():
    x, s, b = randn(1, 3, 5), randn(3), randn(3)
    y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    return model([helper.make_node('InstanceNormalization', ['x', 's', 'b'], ['y'])],
                 {'x': x, 's': s, 'b': b}, {'y': y * s[:, None] + b[:, None]})


# ---- MatMul, Gemm, Einsum ----

@case
def matmul_1d_left():
    a, b = randn(4), randn(2, 4, 3)
    return model([helper.make_node('MatMul', ['a', 'b'], ['y'])], {'a': a, 'b': b}, {'y': a @ b})


@case
def matmul_1d_right():
    a, b = randn(2, 3, 4), randn(4)
    return model([helper.make_node('MatMul', ['a', 'b'], ['y'])], {'a': a, 'b': b}, {'y': a @ b})


@case
def matmul_1d_both():
    a, b = randn(5), randn(5)
    return model([helper.make_node('MatMul', ['a', 'b'], ['y'])], {'a': a, 'b': b},
                 {'y': np.array(a @ b, np.float32)})


@case
def matmul_batch_broadcast():
    a, b = randn(3, 1, 2, 4), randn(5, 4, 6)
    return model([helper.make_node('MatMul', ['a', 'b'], ['y'])], {'a': a, 'b': b}, {'y': a @ b})


@case
def matmul_const_weight_3d_input():
    a, w = randn(2, 3, 4), randn(4, 5)
    return model([helper.make_node('MatMul', ['a', 'w'], ['y'])], {'a': a}, {'y': a @ w}, {'w': w})


@case
def gemm_runtime_operands():
    a, b, c = randn(4, 3), randn(5, 4), randn(5)
    return model([helper.make_node('Gemm', ['a', 'b', 'c'], ['y'], transA=1, transB=1, alpha=0.5,
                                   beta=2.0)],
                 {'a': a, 'b': b, 'c': c}, {'y': 0.5 * a.T @ b.T + 2 * c})


@case
def gemm_const_b_column_bias():
    a, b, c = randn(3, 4), randn(4, 2), randn(3, 1)
    return model([helper.make_node('Gemm', ['a', 'b', 'c'], ['y'], alpha=3.0, beta=0.5)],
                 {'a': a}, {'y': 3 * a @ b + 0.5 * c}, {'b': b, 'c': c})


@case
def einsum_attention_scores():
    q, k = randn(2, 3, 4, 8), randn(2, 3, 5, 8)
    return model([helper.make_node('Einsum', ['q', 'k'], ['y'], equation='bhqd,bhkd->bhqk')],
                 {'q': q, 'k': k}, {'y': np.einsum('bhqd,bhkd->bhqk', q, k)})


@case
def einsum_implicit_and_sum():
    a, b = randn(3, 4), randn(4, 5)
    return model([helper.make_node('Einsum', ['a', 'b'], ['y'], equation='ij,jk')],
                 {'a': a, 'b': b}, {'y': a @ b})


@case
def einsum_ellipsis_outer():
    a, b = randn(2, 3, 4), randn(2, 5)
    return model([helper.make_node('Einsum', ['a', 'b'], ['y'], equation='...ij,...k->...ikj')],
                 {'a': a, 'b': b}, {'y': np.einsum('...ij,...k->...ikj', a, b)})


@case
def einsum_reduce_transpose():
    a = randn(3, 4, 5)
    return model([helper.make_node('Einsum', ['a'], ['y'], equation='ijk->ki')],
                 {'a': a}, {'y': np.einsum('ijk->ki', a)})


# ---- pools and convolutions ----

def pool_ref(x, k, s, pads, ceil, kind, include_pad=False):
    """2-D pool per ONNX with ceil_mode's rule: the last window starts inside the input or
    its left padding."""
    n, c, h, w = x.shape
    outs = []
    for d, size in enumerate((h, w)):
        span = size + pads[d] + pads[d + 2] - k[d]
        o = (-(-span // s[d]) if ceil else span // s[d]) + 1
        if ceil and (o - 1) * s[d] >= size + pads[d]:
            o -= 1
        outs.append(o)
    y = np.zeros((n, c, outs[0], outs[1]), np.float32)
    for i in range(outs[0]):
        for j in range(outs[1]):
            h0, w0 = i * s[0] - pads[0], j * s[1] - pads[1]
            h1, w1 = h0 + k[0], w0 + k[1]
            win = x[:, :, max(h0, 0):min(h1, h), max(w0, 0):min(w1, w)]
            if kind == 'max':
                y[:, :, i, j] = win.max((2, 3))
            else:
                cnt = win.shape[2] * win.shape[3]
                if include_pad:
                    cnt = (min(h1, h + pads[2]) - h0) * (min(w1, w + pads[3]) - w0)
                y[:, :, i, j] = win.sum((2, 3)) / cnt
    return y


@case
def maxpool_ceil_last_window_rule():
    x = randn(1, 2, 6, 6)
    return model([helper.make_node('MaxPool', ['x'], ['y'], kernel_shape=[2, 2], strides=[2, 2],
                                   pads=[1, 1, 1, 1], ceil_mode=1)],
                 {'x': x}, {'y': pool_ref(x, (2, 2), (2, 2), (1, 1, 1, 1), True, 'max')})


@case
def avgpool_ceil_pads_include_pad():
    x = randn(1, 2, 7, 7)
    return model([helper.make_node('AveragePool', ['x'], ['y'], kernel_shape=[3, 3], strides=[2, 2],
                                   pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1)],
                 {'x': x}, {'y': pool_ref(x, (3, 3), (2, 2), (1, 1, 1, 1), True, 'avg', True)})


@case
def conv_same_lower_strided():
    x, w = randn(1, 2, 5, 5), randn(3, 2, 2, 2)
    # SAME_LOWER, stride 2: out 3, total pad (3-1)*2+2-5 = 1, all of it at the start
    xp = np.pad(x, ((0, 0), (0, 0), (1, 0), (1, 0)))
    y = np.zeros((1, 3, 3, 3), np.float32)
    for i in range(3):
        for j in range(3):
            y[0, :, i, j] = np.einsum('chw,ochw->o', xp[0, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2], w)
    return model([helper.make_node('Conv', ['x', 'w'], ['y'], auto_pad='SAME_LOWER', strides=[2, 2])],
                 {'x': x}, {'y': y}, {'w': w})


@case
def convtranspose_group_output_padding():
    x, w = randn(1, 4, 3, 3), randn(4, 1, 3, 3)
    s, op = 2, 1
    full = np.zeros((1, 2, (3 - 1) * s + 3 + op, (3 - 1) * s + 3 + op), np.float32)
    for g in range(2):
        for ci in range(2):
            c = g * 2 + ci
            for i in range(3):
                for j in range(3):
                    full[0, g, i * s:i * s + 3, j * s:j * s + 3] += x[0, c, i, j] * w[c, 0]
    y = full[:, :, 1:, 1:]            # pads [1, 1, 0, 0]
    return model([helper.make_node('ConvTranspose', ['x', 'w'], ['y'], group=2, strides=[2, 2],
                                   output_padding=[1, 1], pads=[1, 1, 0, 0])],
                 {'x': x}, {'y': y}, {'w': w})


# ---- opset 18 argument forms ----

@case
def split_num_outputs_uneven():
    x = randn(7, 2)
    return model([helper.make_node('Split', ['x'], ['a', 'b', 'c'], num_outputs=3)],
                 {'x': x}, {'a': x[:3], 'b': x[3:6], 'c': x[6:]}, opset=18)


@case
def reduce_mean_axes_input_opset18():
    x = randn(2, 3, 4)
    return model([helper.make_node('ReduceMean', ['x', 'axes'], ['y'], keepdims=0)],
                 {'x': x}, {'y': x.mean((0, 2))}, {'axes': np.array([-1, 0], np.int64)}, opset=18)


@case
def reduce_max_noop_empty_axes():
    x = randn(2, 3)
    return model([helper.make_node('ReduceMax', ['x'], ['y'], noop_with_empty_axes=1)],
                 {'x': x}, {'y': x}, opset=18)


@case
def reduce_sum_scalar():
    x = np.array(2.5, np.float32)
    return model([helper.make_node('ReduceSum', ['x'], ['y'], keepdims=1)], {'x': x}, {'y': x})


@case
def resize_axes_opset18():
    x = randn(1, 2, 3, 4)
    y = x.repeat(2, axis=2).repeat(3, axis=3)
    return model([helper.make_node('Resize', ['x', '', 'sc'], ['y'], axes=[3, 2], mode='nearest',
                                   coordinate_transformation_mode='asymmetric', nearest_mode='floor')],
                 {'x': x}, {'y': y}, {'sc': np.array([3, 2], np.float32)}, opset=18)


@case
def pad_axes_reflect_opset18():
    x = randn(2, 3, 4)
    y = np.pad(x, ((0, 0), (0, 0), (2, 1)), mode='reflect')
    return model([helper.make_node('Pad', ['x', 'p', '', 'ax'], ['y'], mode='reflect')],
                 {'x': x}, {'y': y},
                 {'p': np.array([2, 1], np.int64), 'ax': np.array([-1], np.int64)}, opset=18)


@case
def pad_edge_and_crop():
    x = randn(3, 4)
    y = np.pad(x, ((2, 0), (0, 0)), mode='edge')[:, 1:3]
    return model([helper.make_node('Pad', ['x', 'p'], ['y'], mode='edge')],
                 {'x': x}, {'y': y}, {'p': np.array([2, -1, 0, -1], np.int64)})


# ---- elementwise, shape and constants ----

@case
def celu_alpha2():
    x = randn(3, 4) * 3
    y = np.maximum(0, x) + np.minimum(0, 2 * (np.exp(x / 2) - 1))
    return model([helper.make_node('Celu', ['x'], ['y'], alpha=2.0)], {'x': x}, {'y': y})


@case
def log_ratio_truncated_to_int():
    # T5's relative-position buckets: int(log(n / 8) / log(128 / 8) * 8) lands exactly on
    # integers for powers of two, and must not fall one short (run-time and folded)
    r = np.array([8, 16, 32, 64, 128, 12, 100], np.float32)
    nodes = []
    for src, tag in (('x', 'rt'), ('c', 'k')):
        nodes += [helper.make_node('Div', [src, 'eight'], ['d' + tag]),
                  helper.make_node('Log', ['d' + tag], ['l' + tag]),
                  helper.make_node('Div', ['l' + tag, 'ln16'], ['q' + tag]),
                  helper.make_node('Mul', ['q' + tag, 'eight'], ['m' + tag]),
                  helper.make_node('Cast', ['m' + tag], ['y' + tag], to=TensorProto.INT64)]
    ref = (np.log(r.astype(np.float64) / 8) / np.log(16) * 8 + 1e-9).astype(np.int64)
    return model(nodes, {'x': r}, {'yrt': ref, 'yk': ref},
                 {'c': r, 'eight': np.array(8, np.float32), 'ln16': np.array(np.log(16), np.float32)})


@case
def softplus_stays_positive():
    x = np.array([-30, -20, -18.5, -17.68, -17, -16.5], np.float32)   # tiny, not negative
    return model([helper.make_node('Softplus', ['x'], ['y'])], {'x': x},
                 {'y': np.log1p(np.exp(x.astype(np.float64))).astype(np.float32)})


@case
def mean_three_broadcast():
    a, b, c = randn(2, 3), randn(3), randn(1, 1)
    return model([helper.make_node('Mean', ['a', 'b', 'c'], ['y'])], {'a': a, 'b': b, 'c': c},
                 {'y': (a + b + c) / 3})


@case
def pow_scalar_and_int_exponent():
    x = randn(2, 3)
    return model([helper.make_node('Pow', ['x', 'three'], ['t']),
                  helper.make_node('Pow', ['t', 'two'], ['y'])],
                 {'x': x}, {'y': (x ** 3) ** 2},
                 {'three': np.array(3.0, np.float32), 'two': np.array([2], np.int64)})


@case
def where_three_way_broadcast():
    c, a, b = rng.random((3, 1)) > 0.5, randn(1, 4), randn(2, 1, 1)
    return model([helper.make_node('Where', ['c', 'a', 'b'], ['y'])], {'c': c, 'a': a, 'b': b},
                 {'y': np.where(c, a, b)})


@case
def dropout_mask_output():
    x = randn(2, 3)
    return model([helper.make_node('Dropout', ['x'], ['y', 'm'])], {'x': x},
                 {'y': x, 'm': np.ones((2, 3), bool)}, opset=13)


@case
def range_float_is_constant_output():
    x = randn(4)
    r = np.arange(0.5, 2.6, 0.5, dtype=np.float32)
    return model([helper.make_node('Range', ['s', 'l', 'd'], ['r']),
                  helper.make_node('Slice', ['r', 'st', 'en'], ['r4']),
                  helper.make_node('Add', ['x', 'r4'], ['y'])],
                 {'x': x}, {'y': x + r[:4], 'r': r},
                 {'s': np.array(0.5, np.float32), 'l': np.array(2.6, np.float32),
                  'd': np.array(0.5, np.float32), 'st': np.array([0], np.int64),
                  'en': np.array([4], np.int64)})


@case
def nonzero_of_constant_arange_opset9():
    # torch exports arange at opsets 9-10 as NonZero(ConstantOfShape(n)), transposed, squeezed
    x = randn(2, 5)
    ones = helper.make_tensor('v', TensorProto.INT64, [1], [1])
    return model([helper.make_node('ConstantOfShape', ['n'], ['o'], value=ones),
                  helper.make_node('NonZero', ['o'], ['nz']),
                  helper.make_node('Transpose', ['nz'], ['t'], perm=[1, 0]),
                  helper.make_node('Squeeze', ['t'], ['r'], axes=[1]),
                  helper.make_node('Cast', ['r'], ['rf'], to=TensorProto.FLOAT),
                  helper.make_node('Add', ['x', 'rf'], ['y']),
                  helper.make_node('NonZero', ['m'], ['nzm'])],
                 {'x': x}, {'y': x + np.arange(5, dtype=np.float32),
                            'nzm': np.array(np.nonzero(np.array([[0, -0.0, 2], [np.nan, 0, 1]]))).astype(np.int64)},
                 {'n': np.array([5], np.int64),
                  'm': np.array([[0, -0.0, 2], [np.nan, 0, 1]], np.float32)}, opset=9)


def topk_ref(x, k, axis, largest):
    """Sorted top k with ties to the lower index, NaN above every number (torch's order)."""
    xm = np.moveaxis(x, axis, -1)
    key = np.where(np.isnan(xm), np.inf, xm) if x.dtype.kind == 'f' else xm
    nan = np.isnan(xm) if x.dtype.kind == 'f' else np.zeros(xm.shape, bool)
    # lexsort: last key primary
    order = np.lexsort((np.broadcast_to(np.arange(xm.shape[-1]), xm.shape),
                        -key if largest else key, ~nan if largest else nan), axis=-1)
    idx = order[..., :k]
    return (np.moveaxis(np.take_along_axis(xm, idx, -1), -1, axis),
            np.moveaxis(idx, -1, axis).astype(np.int64))


@case
def topk_largest_ties_and_nan():
    x = np.round(randn(3, 40) * 2) / 2          # many ties
    x[1, [3, 17]] = np.nan
    v, i = topk_ref(x, 7, 1, True)
    return model([helper.make_node('TopK', ['x', 'k'], ['v', 'i'])], {'x': x}, {'v': v, 'i': i},
                 {'k': np.array([7], np.int64)})


@case
def topk_axis0_int_k_attribute_opset9():
    x = rng.integers(-5, 5, (30, 4)).astype(np.int32)
    v, i = topk_ref(x, 4, 0, True)
    return model([helper.make_node('TopK', ['x'], ['v', 'i'], k=4, axis=0)], {'x': x},
                 {'v': v, 'i': i}, opset=9)


@case
def topk_smallest_nan_last_middle_axis():
    x = randn(2, 9, 3)
    x[0, 2, 1] = np.nan
    v, i = topk_ref(x, 9, 1, False)
    return model([helper.make_node('TopK', ['x', 'k'], ['v', 'i'], axis=-2, largest=0)],
                 {'x': x}, {'v': v, 'i': i}, {'k': np.array([9], np.int64)}, opset=11)


@case
def gather_negative_const_indices():
    x, i = randn(3, 5), np.array([[-1, 0], [2, -5]], np.int64)
    return model([helper.make_node('Gather', ['x', 'i'], ['y'], axis=1)], {'x': x},
                 {'y': np.take(x, i, axis=1)}, {'i': i})


@case
def gather_runtime_indices_i32():
    x, i = randn(6, 2), np.array([5, 0, 3], np.int32)
    return model([helper.make_node('Gather', ['x', 'i'], ['y'])], {'x': x, 'i': i}, {'y': x[i]})


@case
def slice_negative_step_int_min_end():
    x = randn(5, 6)
    return model([helper.make_node('Slice', ['x', 's', 'e', 'a', 't'], ['y'])], {'x': x},
                 {'y': x[::-2, 4:0:-3]},
                 {'s': np.array([-1, 4], np.int64), 'e': np.array([-2 ** 63, 0], np.int64),
                  'a': np.array([0, 1], np.int64), 't': np.array([-2, -3], np.int64)})


@case
def expand_leading_and_ones():
    x = randn(3, 1)
    return model([helper.make_node('Expand', ['x', 's'], ['y'])], {'x': x},
                 {'y': np.broadcast_to(x, (2, 3, 4)).copy()}, {'s': np.array([2, 1, 4], np.int64)})


@case
def transpose_moving_unit_dims_only():
    x = randn(1, 3, 1, 4)
    return model([helper.make_node('Transpose', ['x'], ['y'], perm=[1, 0, 3, 2])], {'x': x},
                 {'y': x.transpose(1, 0, 3, 2)})


@case
def concat_skips_empty_inputs():
    a, b = randn(2, 3), randn(2, 0)
    return model([helper.make_node('Concat', ['a', 'e', 'a'], ['y'], axis=1)], {'a': a},
                 {'y': np.concatenate([a, a], 1)}, {'e': b})


@case
def onehot_axis0_float_depth():
    i = np.array([1, -1, 0], np.int64)
    y = np.zeros((3, 3), np.float32) + 2
    for k, v in enumerate(i):
        y[v % 3, k] = 5
    return model([helper.make_node('OneHot', ['i', 'd', 'v'], ['y'], axis=0)], {'i': i}, {'y': y},
                 {'d': np.array(3.0, np.float32), 'v': np.array([2, 5], np.float32)})


@case
def reshape_allowzero_and_infer():
    x = randn(2, 3, 4)
    return model([helper.make_node('Reshape', ['x', 's'], ['y'])], {'x': x},
                 {'y': x.reshape(2, 4, 3)}, {'s': np.array([0, -1, 3], np.int64)})


@case
def scatternd_const_indices_runtime_data():
    x, u = randn(4, 3), randn(2, 3)
    i = np.array([[3], [-4]], np.int64)
    y = x.copy()
    y[3], y[0] = u[0], u[1]
    return model([helper.make_node('ScatterND', ['x', 'i', 'u'], ['y'])], {'x': x, 'u': u},
                 {'y': y}, {'i': i})


@case
def scatter_elements_axis1():
    x, u = randn(3, 4), randn(2, 2)
    i = np.array([[1, 3], [0, -1]], np.int64)
    y = x.copy()
    for r in range(2):
        for k in range(2):
            y[r, i[r, k] % 4] = u[r, k]
    return model([helper.make_node('ScatterElements', ['x', 'i', 'u'], ['y'], axis=1)],
                 {'x': x, 'u': u}, {'y': y}, {'i': i}, opset=16)


@case
def scatter_elements_runtime_indices():
    # a decoder's static cache: indices known only at run time
    x, u = randn(2, 5, 3), randn(2, 2, 3)
    i = np.array([[[4, 0, -1], [1, 2, 3]], [[-5, 4, 0], [2, 2, 2]]], np.int32)
    y = x.copy()
    for a in range(2):
        for b in range(2):
            for c in range(3):
                y[a, i[a, b, c] % 5, c] = u[a, b, c]
    return model([helper.make_node('ScatterElements', ['x', 'i', 'u'], ['y'], axis=1)],
                 {'x': x, 'i': i, 'u': u}, {'y': y}, opset=13)


@case
def scatter_nd_runtime_indices_later_wins():
    x, u = randn(4, 3, 2), randn(3, 2)
    i = np.array([[1, 2], [-1, 0], [1, 2]], np.int64)   # (1, 2) twice: the last update stays
    y = x.copy()
    for b in range(3):
        y[i[b, 0], i[b, 1]] = u[b]
    return model([helper.make_node('ScatterND', ['x', 'i', 'u'], ['y'])],
                 {'x': x, 'i': i, 'u': u}, {'y': y})


@case
def gather_elements_runtime_indices():
    x, i = randn(3, 4), np.array([[2, -1], [0, 1], [3, 3]], np.int64)
    return model([helper.make_node('GatherElements', ['x', 'i'], ['y'], axis=1)],
                 {'x': x, 'i': i}, {'y': np.take_along_axis(x, i % 4, 1)})


@case
def gather_nd_batch_dims():
    x, i = randn(2, 3, 4), np.array([[[1], [2]], [[0], [-1]]], np.int64)
    y = np.stack([x[b][i[b, :, 0]] for b in range(2)])
    return model([helper.make_node('GatherND', ['x', 'i'], ['y'], batch_dims=1)],
                 {'x': x, 'i': i}, {'y': y})


# ---- recurrent networks (unrolled over time) ----

def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def rnn_ref(kind, x, w, r, b, seq, h0, c0=None, p=None, reverse=(False,), acts=None, lbr=0):
    """ONNX RNN/GRU/LSTM over x [T, B, I] per direction; steps past sequence_lens keep the
    state and give zeros. Returns Y [T, D, B, H], Y_h, Y_c."""
    T, B, _ = x.shape
    D, H = w.shape[0], r.shape[2]
    G = {'rnn': 1, 'gru': 3, 'lstm': 4}[kind]
    y = np.zeros((T, D, B, H), np.float32)
    yh, yc = np.zeros((D, B, H), np.float32), np.zeros((D, B, H), np.float32)
    for d in range(D):
        f, g, hf = acts[d] if acts else (sigmoid, np.tanh, np.tanh)
        h, c = h0[d].copy(), (c0[d].copy() if c0 is not None else None)
        wb, rb = b[d, :G * H], b[d, G * H:]
        for t in (range(T - 1, -1, -1) if reverse[d] else range(T)):
            live = (t < seq)[:, None]
            xw = x[t] @ w[d].T + wb
            if kind == 'lstm':
                q = xw + h @ r[d].T + rb
                i, o, fg, cc = np.split(q, 4, axis=1)
                pi, po, pf = np.split(p[d], 3)
                i, fg = f(i + pi * c), f(fg + pf * c)
                cn = fg * c + i * g(cc)
                hn = f(o + po * cn) * hf(cn)
                c = np.where(live, cn, c)
            elif kind == 'gru':
                xz, xr, xh = np.split(xw, 3, axis=1)
                rz, rr, rh = np.split(r[d], 3, axis=0)
                bz, br, bh = np.split(rb, 3)
                z, rg = f(xz + h @ rz.T + bz), f(xr + h @ rr.T + br)
                hh = g(xh + rg * (h @ rh.T + bh)) if lbr else g(xh + (rg * h) @ rh.T + bh)
                hn = (1 - z) * hh + z * h
            else:
                hn = f(xw + h @ r[d].T + rb)
            y[t, d] = np.where(live, hn, 0)
            h = np.where(live, hn, h)
        yh[d] = h
        if c is not None:
            yc[d] = c
    return y, yh, yc


@case
def lstm_bidirectional_seq_lens_peepholes():
    T, B, I, H = 5, 3, 4, 6
    x, w, r, b = randn(T, B, I), randn(2, 4 * H, I) * 0.5, randn(2, 4 * H, H) * 0.5, randn(2, 8 * H)
    h0, c0, p = randn(2, B, H), randn(2, B, H), randn(2, 3 * H)
    seq = np.array([5, 2, 0], np.int32)
    y, yh, yc = rnn_ref('lstm', x, w, r, b, seq, h0, c0, p, reverse=(False, True))
    return model([helper.make_node('LSTM', ['x', 'w', 'r', 'b', 'seq', 'h0', 'c0', 'p'],
                                   ['y', 'yh', 'yc'], hidden_size=H, direction='bidirectional')],
                 {'x': x, 'seq': seq, 'h0': h0, 'c0': c0}, {'y': y, 'yh': yh, 'yc': yc},
                 {'w': w, 'r': r, 'b': b, 'p': p})


@case
def gru_reverse_batchwise_activations():
    T, B, I, H = 4, 2, 3, 5
    x, w, r, b = randn(T, B, I), randn(1, 3 * H, I), randn(1, 3 * H, H), randn(1, 6 * H)
    h0, seq = randn(1, B, H), np.array([3, 4], np.int64)
    hsig = lambda v: np.clip(0.3 * v + 0.4, 0, 1)
    lrelu = lambda v: np.where(v < 0, 0.2 * v, v)
    y, yh, _ = rnn_ref('gru', x, w, r, b, seq, h0, reverse=(True,), acts=[(hsig, lrelu, None)])
    return model([helper.make_node('GRU', ['x', 'w', 'r', 'b', 'seq', 'h0'], ['y', 'yh'],
                                   hidden_size=H, direction='reverse', layout=1,
                                   activations=['HardSigmoid', 'LeakyRelu'],
                                   activation_alpha=[0.3, 0.2], activation_beta=[0.4])],
                 {'x': x.transpose(1, 0, 2).copy(), 'seq': seq, 'h0': h0.transpose(1, 0, 2).copy()},
                 {'y': y.transpose(2, 0, 1, 3).copy(), 'yh': yh.transpose(1, 0, 2).copy()},
                 {'w': w, 'r': r, 'b': b}, opset=14)


@case
def gru_linear_before_reset_no_initial_state():
    T, B, I, H = 3, 2, 4, 4
    x, w, r, b = randn(T, B, I), randn(1, 3 * H, I), randn(1, 3 * H, H), randn(1, 6 * H)
    y, yh, _ = rnn_ref('gru', x, w, r, b, np.full(B, T), np.zeros((1, B, H), np.float32), lbr=1)
    return model([helper.make_node('GRU', ['x', 'w', 'r', 'b'], ['y', 'yh'], hidden_size=H,
                                   linear_before_reset=1)],
                 {'x': x}, {'y': y, 'yh': yh}, {'w': w, 'r': r, 'b': b})


# ---- model-local functions (torch's export_modules_as_functions) ----

@case
def model_local_functions_inlined():
    x, w = randn(3, 4), randn(4, 4)
    def block(v, slope):
        m = v @ w
        return np.where(m < 0, slope * m, m) * m
    ref = block(block(x, 0.3), 0.01)                # the second call leaves the default alpha
    lrelu = helper.make_node('LeakyRelu', ['m'], ['t'])     # alpha = the call's 'slope'
    a = lrelu.attribute.add()
    a.name, a.ref_attr_name, a.type = 'alpha', 'slope', AttributeProto.FLOAT
    scale = helper.make_function('mylib', 'Scale', ['m'], ['b'],
                                 [lrelu, helper.make_node('Mul', ['t', 'm'], ['b'])],
                                 [helper.make_opsetid('', 17)], ['slope'])
    call = helper.make_node('Scale', ['mm'], ['y'], domain='mylib')
    a = call.attribute.add()
    a.name, a.ref_attr_name, a.type = 'slope', 'slope2', AttributeProto.FLOAT
    block_fn = helper.make_function('mylib', 'Block', ['x', 'w'], ['y', 'unused'],
                                    [helper.make_node('MatMul', ['x', 'w'], ['mm']), call,
                                     helper.make_node('Relu', ['mm'], ['unused'])],
                                    [helper.make_opsetid('', 17), helper.make_opsetid('mylib', 1)],
                                    ['slope2'])
    m, i, o = model([helper.make_node('Block', ['x', 'w'], ['y1', ''], domain='mylib', slope2=0.3),
                     helper.make_node('Block', ['y1', 'w'], ['y2'], domain='mylib')],
                    {'x': x}, {'y2': ref}, {'w': w})
    m.functions.extend([scale, block_fn])
    m.opset_import.append(helper.make_opsetid('mylib', 1))
    return m, i, o


# ---- what must be refused ----

def refuse(text):
    def wrap(fn):
        fn.refuse = text
        return case(fn)
    return wrap


@refuse('must be known at trace time')
def reshape_runtime_shape():
    x, s = randn(2, 3), np.array([3, 2], np.int64)
    return model([helper.make_node('Reshape', ['x', 's'], ['y'])], {'x': x, 's': s}, {'y': x})


@refuse("must be known at trace time")
def nonzero_runtime():
    x = randn(2, 3)
    return model([helper.make_node('NonZero', ['x'], ['y'])], {'x': x},
                 {'y': np.array(np.nonzero(x), np.int64)})


@refuse('training_mode')
def batchnorm_training():
    x, p = randn(1, 2, 3), randn(2)
    return model([helper.make_node('BatchNormalization', ['x', 's', 'b', 'm', 'v'], ['y'],
                                   training_mode=1)], {'x': x}, {'y': x},
                 {'s': p, 'b': p, 'm': p, 'v': np.abs(p)}, opset=15)


@refuse('antialias')
def resize_antialias():
    x = randn(1, 1, 4, 4)
    return model([helper.make_node('Resize', ['x', '', 'sc'], ['y'], mode='linear', antialias=1)],
                 {'x': x}, {'y': x[:, :, ::2, ::2]},
                 {'sc': np.array([1, 1, 0.5, 0.5], np.float32)}, opset=18)


@refuse('must be known at trace time')
def topk_runtime_k():
    x = randn(2, 5)
    return model([helper.make_node('TopK', ['x', 'k'], ['v', 'i'])],
                 {'x': x, 'k': np.array([2], np.int64)}, {'v': x[:, :2], 'i': np.zeros((2, 2), np.int64)})


@refuse('Hardmax')
def hardmax():
    x = randn(2, 3)
    return model([helper.make_node('Hardmax', ['x'], ['y'])], {'x': x}, {'y': x})


@refuse('reduction')
def scatternd_add_runtime():
    x, u = randn(4, 3), randn(1, 3)
    return model([helper.make_node('ScatterND', ['x', 'i', 'u'], ['y'], reduction='add')],
                 {'x': x, 'u': u}, {'y': x}, {'i': np.array([[1]], np.int64)}, opset=16)


@refuse("activation 'Swish'")
def rnn_unknown_activation():
    x, w, r = randn(2, 1, 3), randn(1, 4, 3), randn(1, 4, 4)
    return model([helper.make_node('RNN', ['x', 'w', 'r'], ['y'], hidden_size=4,
                                   activations=['Swish'])], {'x': x}, {'y': np.zeros((2, 1, 1, 4), np.float32)},
                 {'w': w, 'r': r})


@refuse('nested more than 32 deep')
def model_local_function_recursive():
    x = randn(2, 3)
    m, i, o = model([helper.make_node('Loopy', ['x'], ['y'], domain='mylib')], {'x': x}, {'y': x})
    m.functions.append(helper.make_function('mylib', 'Loopy', ['a'], ['b'],
                                            [helper.make_node('Loopy', ['a'], ['b'], domain='mylib')],
                                            [helper.make_opsetid('', 17), helper.make_opsetid('mylib', 1)]))
    m.opset_import.append(helper.make_opsetid('mylib', 1))
    return m, i, o


@refuse('diagonal')
def einsum_diagonal():
    x = randn(3, 3)
    return model([helper.make_node('Einsum', ['x'], ['y'], equation='ii->i')], {'x': x},
                 {'y': np.diag(x)})


def compare(got, ref):
    if got.shape != ref.shape:
        return 'shape %s, expected %s' % (got.shape, ref.shape)
    if ref.dtype.kind == 'f' and not np.array_equal(np.isnan(got), np.isnan(ref)):
        return 'NaNs differ'
    if ref.dtype.kind == 'f' and np.isnan(ref).any():
        got, ref = np.nan_to_num(got), np.nan_to_num(ref)
    if got.shape != ref.shape:
        return 'shape %s, expected %s' % (got.shape, ref.shape)
    if got.dtype != ref.dtype:
        return 'dtype %s, expected %s' % (got.dtype, ref.dtype)
    if ref.dtype.kind == 'f':
        err = np.abs(got.astype(np.float64) - ref).max() if ref.size else 0.0
        scale = max(np.abs(ref).max() if ref.size else 0.0, 1e-30)
        return None if err <= 1e-4 * scale else 'max abs diff %.3g (max |ref| %.3g)' % (err, scale)
    return None if np.array_equal(got, ref) else 'values differ'


def main():
    kiln, work = os.path.abspath(sys.argv[1]), sys.argv[2]
    flt = sys.argv[3] if len(sys.argv) > 3 else ''
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    passed = failed = 0
    for fn in CASES:
        name = fn.__name__
        if flt not in name:
            continue
        d = os.path.join(work, name)
        os.makedirs(d)
        m, inputs, outputs = fn()
        onnx.save(m, os.path.join(d, 'model.onnx'))
        r = subprocess.run([kiln, 'trace', os.path.join(d, 'model.onnx'), '-o',
                            os.path.join(d, 'model.kiln')], capture_output=True, text=True)
        why = None
        refuse_text = getattr(fn, 'refuse', None)
        if refuse_text is not None:
            if r.returncode == 0:
                why = 'traced, but must be refused'
            elif 'KILN_ERR_UNSUPPORTED' not in r.stderr or refuse_text not in r.stderr:
                why = 'refused with %r, expected KILN_ERR_UNSUPPORTED mentioning %r' % (
                    r.stderr.strip(), refuse_text)
        elif r.returncode:
            why = 'trace: ' + r.stderr.strip()
        else:
            cmd = [kiln, 'run', os.path.join(d, 'model.kiln'), '--out', d]
            for k, a in inputs.items():
                np.save(os.path.join(d, 'in_%s.npy' % k), np.asarray(a))
                cmd += ['--input', '%s=%s' % (k, os.path.join(d, 'in_%s.npy' % k))]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                why = 'run: ' + r.stderr.strip()
            for k, ref in outputs.items():
                if why:
                    break
                ref = np.asarray(ref)
                if ref.dtype == np.float64 and k not in ():
                    ref = ref.astype(np.float32)
                got = np.load(os.path.join(d, k + '.npy'))
                w = compare(got, ref)
                if w:
                    why = 'output %s: %s' % (k, w)
        if why:
            failed += 1
            print('FAIL %s: %s' % (name, why))
        else:
            passed += 1
    print('lowering cases: %d passed, %d failed' % (passed, failed))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
