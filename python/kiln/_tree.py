"""_tree.py — nested tuples, lists and dicts of tensors flattened to kiln's flat inputs and
outputs, and rebuilt.

A structure ("tree") is a plain, JSON-friendly value:
    "T"                          a tensor leaf
    ["tuple", [child, ...]]      a tuple (namedtuples become plain tuples)
    ["list",  [child, ...]]
    ["dict",  [[key, child], ...]]  keys are str or int, in the order they were seen
    ["const", value]             a non-tensor output value (None, bool, int, float, str)
Leaves are numbered in depth-first order: that order is the order of kiln's inputs
(input_0, input_1, ...) and outputs.
"""
import sys

import numpy as np

from .errors import KilnShapeError

LEAF = "T"


def is_torch_tensor(x):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def is_leaf(x):
    """A tensor: a NumPy array or scalar, or a torch.Tensor."""
    return isinstance(x, (np.ndarray, np.generic)) or is_torch_tensor(x)


def _kind(x):
    if isinstance(x, tuple):
        return "tuple"
    if isinstance(x, list):
        return "list"
    if isinstance(x, dict):
        return "dict"
    return None


def _not_a_tensor(path, x):
    return TypeError(f"{path}: expected a tensor (torch.Tensor or numpy.ndarray) or a "
                     f"tuple/list/dict of them, got {type(x).__name__}")


def flatten(x, path, leaves, consts=False):
    """Appends x's tensor leaves to `leaves` depth first; returns x's tree. `path` names x
    in error messages ("argument 1"). Non-tensor leaves are a TypeError naming their path,
    unless consts (outputs): then None/bool/int/float/str become ["const", value]."""
    if is_leaf(x):
        leaves.append(x)
        return LEAF
    kind = _kind(x)
    if kind in ("tuple", "list"):
        return [kind, [flatten(v, f"{path}[{i}]", leaves, consts) for i, v in enumerate(x)]]
    if kind == "dict":
        items = []
        for k, v in x.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"{path}: dict keys must be str or int, got {type(k).__name__}")
            items.append([k, flatten(v, f"{path}[{k!r}]", leaves, consts)])
        return ["dict", items]
    if consts and (x is None or isinstance(x, (bool, int, float, str))):
        return ["const", x]
    raise _not_a_tensor(path, x)


def match(tree, x, path, leaves):
    """Appends x's leaves to `leaves` following `tree` (the traced structure). A dict is read
    by the tree's keys, so key order does not matter; tuples and lists are interchangeable.
    A non-tensor leaf is a TypeError, any other mismatch a KilnShapeError."""
    if tree == LEAF:
        if is_leaf(x):
            leaves.append(x)
            return
        if _kind(x) is not None:
            raise KilnShapeError(f"{path}: expected a tensor, got a {_kind(x)}")
        raise _not_a_tensor(path, x)
    kind, body = tree
    if kind in ("tuple", "list"):
        if _kind(x) not in ("tuple", "list"):
            if _kind(x) is None and not is_leaf(x):
                raise _not_a_tensor(path, x)
            raise KilnShapeError(f"{path}: expected a {kind} of {len(body)}, got "
                                 f"{'a tensor' if is_leaf(x) else 'a ' + _kind(x)}")
        if len(x) != len(body):
            raise KilnShapeError(f"{path}: expected a {kind} of {len(body)}, got {len(x)} items")
        for i, (t, v) in enumerate(zip(body, x)):
            match(t, v, f"{path}[{i}]", leaves)
    elif kind == "dict":
        if _kind(x) != "dict":
            if _kind(x) is None and not is_leaf(x):
                raise _not_a_tensor(path, x)
            raise KilnShapeError(f"{path}: expected a dict with keys "
                                 f"{[k for k, _ in body]}, got "
                                 f"{'a tensor' if is_leaf(x) else 'a ' + _kind(x)}")
        want = [k for k, _ in body]
        if set(x.keys()) != set(want):
            raise KilnShapeError(f"{path}: expected a dict with keys {want}, got {list(x.keys())}")
        for k, t in body:
            match(t, x[k], f"{path}[{k!r}]", leaves)
    else:  # a constant input position never happens: inputs are tensors only
        raise KilnShapeError(f"{path}: unexpected structure {tree!r}")


def unflatten(tree, leaves):
    """Rebuilds a structure from an iterator of leaves."""
    if tree == LEAF:
        return next(leaves)
    kind, body = tree
    if kind == "tuple":
        return tuple(unflatten(t, leaves) for t in body)
    if kind == "list":
        return [unflatten(t, leaves) for t in body]
    if kind == "dict":
        return {k: unflatten(t, leaves) for k, t in body}
    if kind == "const":
        return body
    raise ValueError(f"unknown structure node {kind!r}")


def count(tree):
    """Number of tensor leaves."""
    if tree == LEAF:
        return 1
    kind, body = tree
    if kind in ("tuple", "list"):
        return sum(count(t) for t in body)
    if kind == "dict":
        return sum(count(t) for _, t in body)
    return 0


def describe(tree):
    """A short picture of a structure: (T, {'mask': T}, [T, T])."""
    if tree == LEAF:
        return "T"
    kind, body = tree
    if kind == "tuple":
        inner = ", ".join(describe(t) for t in body)
        return f"({inner}{',' if len(body) == 1 else ''})"
    if kind == "list":
        return "[" + ", ".join(describe(t) for t in body) + "]"
    if kind == "dict":
        return "{" + ", ".join(f"{k!r}: {describe(t)}" for k, t in body) + "}"
    return repr(body)


def is_flat_args(tree):
    """A tuple of tensor leaves: the structure a plain model(*tensors) call has."""
    return tree is None or (tree[0] == "tuple" and all(t == LEAF for t in tree[1]))


def is_plain_outputs(tree, n):
    """What kiln returns without a recorded structure: one tensor bare, several a tuple."""
    if tree is None:
        return True
    if n == 1:
        return tree == LEAF
    return tree[0] == "tuple" and len(tree[1]) == n and all(t == LEAF for t in tree[1])


def valid(tree):
    """True if `tree` (e.g. read back from JSON) is a well-formed structure."""
    if tree == LEAF:
        return True
    if not isinstance(tree, list) or len(tree) != 2:
        return False
    kind, body = tree
    if kind in ("tuple", "list"):
        return isinstance(body, list) and all(valid(t) for t in body)
    if kind == "dict":
        return isinstance(body, list) and all(
            isinstance(kv, list) and len(kv) == 2 and isinstance(kv[0], (str, int))
            and valid(kv[1]) for kv in body)
    return kind == "const"
