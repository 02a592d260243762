"""model.py — kiln.Model and the torch_neuronx-style calls around it: trace, lazy_load,
async_load, save, load, num_cores.

A Model owns one kiln_model handle. Calling it runs kiln_forward; everything else is a thin
wrapper of the matching C call, whose failures come back as KilnError subclasses.

Structure: a model traced from a torch module remembers how its inputs and outputs nest
(tuples, lists, dicts) and the flat positions of the inputs the ONNX exporter kept.
kiln.save writes that, when it is more than "tensors in, a tensor or a tuple out", to a small
JSON file beside the artifact (<path>.pytree.json), and kiln.load reads it back; the
artifact itself runs without it (then: flat tensors in, one tensor or a tuple out).
"""
import collections
import ctypes
import json
import os
import sys
import tempfile
import threading
import warnings
import weakref

from . import _lib, _tree
from ._tensors import (arrays_struct, c_shape, dtype_name, numpy_dtype, prepare_input,
                       spec_of, struct_array, wrap_output)
from .errors import KilnFormatError, KilnIOError, KilnShapeError, KilnStateError, check

import numpy as np

ONNX_OPSET = 17
SIDECAR_SUFFIX = ".pytree.json"
_SIDECAR_VERSION = 1

TensorSpec = collections.namedtuple("TensorSpec", "name dtype shape")
TensorSpec.__doc__ = """An input or output of a model: name (str), dtype (str: 'float32',
'float16', 'bfloat16', 'float64', 'int8', 'uint8', 'int32', 'int64' or 'bool'), shape (tuple)."""

_LOAD_REPORT_FIELDS = [f for f, _ in _lib.LoadReport._fields_]


def num_cores():
    """Cores visible to this process (KILN_VISIBLE_CORES grouped by KILN_CORE_SIZE)."""
    return int(_lib.lib.kiln_num_cores())


def _fspath(path, what="path"):
    try:
        return os.fsencode(os.fspath(path))
    except TypeError:
        raise TypeError(f"{what} must be a str or os.PathLike, got {type(path).__name__}") from None


class _Handle:
    """The kiln_model pointer, freed once, and never while a kiln_dp made from it lives
    (the C API wants every dp freed before its model). Whichever of Model.close and the
    last DataParallel.close comes last frees it, in any finalisation order."""

    def __init__(self, ptr):
        self.ptr = ptr
        self._lock = threading.Lock()
        self._dps = 0
        self._release = False

    def add_dp(self):
        with self._lock:
            if self.ptr is None or self._release:
                raise KilnStateError("the model is closed")
            self._dps += 1

    def drop_dp(self):
        with self._lock:
            self._dps -= 1
            free = self._release and self._dps == 0
        if free:
            self._free()

    def release(self):
        with self._lock:
            if self._release:
                return
            self._release = True
            free = self._dps == 0
        if free:
            self._free()

    def _free(self):
        ptr, self.ptr = self.ptr, None
        if ptr:
            _lib.lib.kiln_model_free(ptr)


class Model:
    """A traced or loaded kiln model. Made by kiln.trace or kiln.load, not directly.

    model(*inputs) runs it: inputs are NumPy arrays or torch tensors (nested in tuples,
    lists and dicts as the model was traced); the result is NumPy arrays, or torch tensors
    when any input was a torch tensor — one output bare, several as a tuple (or the traced
    module's own output structure). Close it with close() or a with-block; it is closed
    when garbage-collected too.
    """

    def __init__(self, ptr, in_tree=None, out_tree=None, input_map=None, n_flat_inputs=None,
                 source=None):
        self._h = _Handle(ptr)
        self._dps = weakref.WeakSet()
        self._source = source
        p = ptr
        n_in = _lib.lib.kiln_model_num_inputs(p)
        n_out = _lib.lib.kiln_model_num_outputs(p)
        self._in_k, self._out_k = [], []
        self._inputs = self._specs(_lib.lib.kiln_model_input, n_in, self._in_k)
        self._outputs = self._specs(_lib.lib.kiln_model_output, n_out, self._out_k)
        self._in_tree = None if _tree.is_flat_args(in_tree) else in_tree
        self._out_tree = None if _tree.is_plain_outputs(out_tree, n_out) else out_tree
        self._input_map = None if input_map == list(range(n_in)) else input_map
        self._n_flat = n_flat_inputs if self._input_map is not None else n_in
        if self._out_tree is not None and _tree.count(self._out_tree) != n_out:
            raise KilnFormatError(f"the model has {n_out} outputs but its structure "
                                  f"{_tree.describe(self._out_tree)} holds {_tree.count(self._out_tree)}")
        if self._in_tree is not None and _tree.count(self._in_tree) != self._n_flat:
            raise KilnFormatError(f"the model takes {self._n_flat} tensors but its structure "
                                  f"{_tree.describe(self._in_tree)} holds {_tree.count(self._in_tree)}")

    def _specs(self, fn, n, kinds):
        out = []
        for i in range(n):
            name = ctypes.c_char_p()
            spec = _lib.Tensor()
            check(fn(self._h.ptr, i, ctypes.byref(name), ctypes.byref(spec)))
            kinds.append(spec.dtype)
            out.append(TensorSpec(name.value.decode("utf-8", "replace"), dtype_name(spec.dtype),
                                  c_shape(spec)))
        return out

    # -- the handle -------------------------------------------------------------------------

    def _ptr(self):
        p = self._h.ptr
        if p is None or self._h._release:
            raise KilnStateError("the model is closed")
        return p

    def close(self):
        """Frees the model (after any DataParallel made from it, which this closes too).
        Waits for a load in flight. Calling it again does nothing."""
        for dp in list(self._dps):
            dp.close()
        self._h.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self._h.release()
        except Exception:  # interpreter shutdown: modules may be gone
            pass

    @property
    def closed(self):
        return self._h.ptr is None or self._h._release

    # -- what it is -------------------------------------------------------------------------

    @property
    def inputs(self):
        """The model's inputs in order: a list of TensorSpec(name, dtype, shape)."""
        return list(self._inputs)

    @property
    def outputs(self):
        """The model's outputs in order: a list of TensorSpec(name, dtype, shape)."""
        return list(self._outputs)

    @property
    def is_lazy(self):
        return bool(_lib.lib.kiln_model_is_lazy(self._ptr()))

    @property
    def is_async(self):
        return bool(_lib.lib.kiln_model_is_async(self._ptr()))

    @property
    def state(self):
        """'UNLOADED', 'LOADING', 'LOADED' or 'FAILED'."""
        s = _lib.lib.kiln_model_state(self._ptr())
        return _lib.STATE_NAMES[s] if 0 <= s < len(_lib.STATE_NAMES) else f"state {s}"

    def wait(self):
        """Blocks until no load of the model is pending; KilnLoadError if it failed."""
        check(_lib.lib.kiln_wait(self._ptr()))

    def placements(self, core=-1):
        """How many placements of this model have been made on `core` (all cores: -1)."""
        return int(_lib.lib.kiln_model_placements(self._ptr(), int(core)))

    def load_report(self):
        """How the load went: a dict of kiln_load_report's fields (times in ms, sizes in
        bytes, 'core' of the latest placement or -1, 'placements', the timeline t_*)."""
        r = _lib.LoadReport()
        check(_lib.lib.kiln_model_load_report(self._ptr(), ctypes.byref(r)))
        return {f: getattr(r, f) for f in _LOAD_REPORT_FIELDS}

    def __repr__(self):
        if self.closed:
            return "<kiln.Model (closed)>"
        ins = ", ".join(f"{s.name}: {s.dtype}{list(s.shape)}" for s in self._inputs)
        outs = ", ".join(f"{s.name}: {s.dtype}{list(s.shape)}" for s in self._outputs)
        flags = "".join([" lazy" if self.is_lazy else "", " async" if self.is_async else ""])
        src = f" {self._source!r}" if self._source else ""
        return f"<kiln.Model{src} ({ins}) -> ({outs}){flags} {self.state}>"

    # -- running ----------------------------------------------------------------------------

    def _flat_inputs(self, args):
        """The call's tensor leaves, in kiln's input order, and whether any was torch."""
        leaves = []
        if self._in_tree is not None:
            body = self._in_tree[1]
            if len(args) != len(body):
                raise KilnShapeError(
                    f"the model takes {len(body)} argument(s) structured as "
                    f"{_tree.describe(self._in_tree)}, {len(args)} given")
            for i, (t, a) in enumerate(zip(body, args)):
                _tree.match(t, a, f"argument {i}", leaves)
        else:
            for i, a in enumerate(args):
                _tree.flatten(a, f"argument {i}", leaves)
        as_torch = any(_tree.is_torch_tensor(x) for x in leaves)
        if self._input_map is not None:
            if len(leaves) != self._n_flat:
                raise KilnShapeError(f"the model takes {self._n_flat} tensors, {len(leaves)} given")
            leaves = [leaves[i] for i in self._input_map]
        return leaves, as_torch

    def _prepare(self, leaves):
        arrays, kinds = [], []
        for i, x in enumerate(leaves):
            if i < len(self._in_k):
                a, kd = prepare_input(x, self._in_k[i], f"input {i} ('{self._inputs[i].name}')")
            else:  # too many: let kiln say so
                a, kd = prepare_input(x, self._in_k[0], f"input {i}")
            arrays.append(a)
            kinds.append(kd)
        return arrays, kinds

    def _results(self, outs, as_torch):
        wrapped = [wrap_output(a, kd, as_torch) for a, kd in zip(outs, self._out_k)]
        if self._out_tree is not None:
            return _tree.unflatten(self._out_tree, iter(wrapped))
        return wrapped[0] if len(wrapped) == 1 else tuple(wrapped)

    def __call__(self, *inputs):
        leaves, as_torch = self._flat_inputs(inputs)
        arrays, kinds = self._prepare(leaves)
        outs = [np.empty(s.shape, numpy_dtype(kd)) for s, kd in zip(self._outputs, self._out_k)]
        c_in = arrays_struct(arrays, kinds)
        c_out = arrays_struct(outs, self._out_k)
        check(_lib.lib.kiln_forward(self._ptr(), c_in, len(arrays), c_out, len(outs)))
        return self._results(outs, as_torch)

    forward = __call__

    # -- the Python-side structure, as saved beside the artifact -----------------------------

    def _sidecar(self):
        if self._in_tree is None and self._out_tree is None and self._input_map is None:
            return None
        return {"kiln_python": _SIDECAR_VERSION, "inputs": self._in_tree,
                "outputs": self._out_tree, "input_map": self._input_map,
                "n_flat_inputs": self._n_flat}


# -- trace ----------------------------------------------------------------------------------

def _example_args(example_inputs):
    """torch.jit.trace's convention: a tuple is the argument list, anything else is the one
    argument."""
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)


def _flatten_examples(args):
    leaves = []
    tree = ["tuple", [_tree.flatten(a, f"example_inputs[{i}]", leaves) for i, a in enumerate(args)]]
    if not leaves:
        raise TypeError("example_inputs: no tensors given")
    return leaves, tree


def _trace_onnx(path, args):
    leaves, tree = _flatten_examples(args)
    specs = [spec_of(x, f"example input {i}") for i, x in enumerate(leaves)]
    c_ex = struct_array([(kd, shape, None) for kd, shape in specs])
    out = ctypes.c_void_p()
    check(_lib.lib.kiln_trace(_fspath(path, "model"), c_ex, len(specs), ctypes.byref(out)))
    return Model(out, in_tree=tree, source=os.fspath(path))


def _flat_module(torch, module, in_tree):
    """The module as ONNX export should see it: flat tensors in, a flat tuple out."""
    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, *flat):
            out = self.inner(*_tree.unflatten(in_tree, iter(flat)))
            leaves = []
            _tree.flatten(out, "the module's output", leaves, consts=True)
            return tuple(leaves)
    return Flat()


def _trace_torch(torch, module, args):
    leaves, in_tree = _flatten_examples(args)
    specs = [spec_of(x, f"example input {i}") for i, x in enumerate(leaves)]
    flat = [x if _tree.is_torch_tensor(x) else torch.from_numpy(np.array(x, copy=True))
            for x in leaves]
    # A TorchScript module cannot be called from inside another module being traced: it is
    # exported as it is (flat tensor arguments only; the exporter flattens its outputs in the
    # same order).
    scripted = isinstance(module, torch.jit.ScriptModule)
    if scripted and not _tree.is_flat_args(in_tree):
        raise TypeError("a TorchScript module takes tensor arguments only here; nested "
                        "example inputs need the eager torch.nn.Module")
    exported = module if scripted else _flat_module(torch, module, in_tree)
    modes = [(m, m.training) for m in module.modules()]  # restored one by one afterwards
    module.eval()
    try:
        # One run in PyTorch first: the output structure (and count, to name them).
        with torch.no_grad():
            out = module(*_tree.unflatten(in_tree, iter(flat)))
        out_leaves = []
        out_tree = _tree.flatten(out, "the module's output", out_leaves, consts=True)
        if not out_leaves:
            raise TypeError("the module returned no tensors")
        with tempfile.TemporaryDirectory(prefix="kiln-trace-") as tmp:
            onnx_path = os.path.join(tmp, "model.onnx")
            # Grad on while exporting: with it off, torch 1.13's TransformerEncoderLayer and
            # MultiheadAttention take a fused "fast path" that ONNX export cannot express.
            with torch.enable_grad(), warnings.catch_warnings():
                # noise torch 1.13 prints for every Upsample/Resize it exports
                warnings.filterwarnings("ignore", message="The shape inference of prim::Constant")
                # ... and for every TorchScript module (whose signature it cannot inspect)
                warnings.filterwarnings("ignore", message=".*skipping _decide_input_format")
                torch.onnx.export(exported, tuple(flat), onnx_path,
                                  opset_version=ONNX_OPSET,
                                  input_names=[f"input_{i}" for i in range(len(flat))],
                                  output_names=[f"output_{i}" for i in range(len(out_leaves))],
                                  do_constant_folding=True,
                                  training=torch.onnx.TrainingMode.EVAL)
            return _trace_exported(onnx_path, specs, in_tree, out_tree, len(flat),
                                   type(module).__name__)
    finally:
        for m, training in modes:
            m.training = training


def _trace_exported(onnx_path, specs, in_tree, out_tree, n_flat, source):
    """kiln_onnx_trace on an exported graph whose inputs are some of input_0..input_{n-1}
    (the exporter drops inputs the module does not use)."""
    g = ctypes.c_void_p()
    check(_lib.lib.kiln_onnx_open(onnx_path.encode(), ctypes.byref(g)))
    try:
        used = []
        for i in range(_lib.lib.kiln_onnx_num_inputs(g)):
            name = ctypes.c_char_p()
            spec = _lib.Tensor()
            check(_lib.lib.kiln_onnx_input(g, i, ctypes.byref(name), ctypes.byref(spec)))
            n = name.value.decode()
            if not n.startswith("input_") or not n[6:].isdigit() or int(n[6:]) >= n_flat:
                raise KilnFormatError(f"the exported graph has an unexpected input '{n}'")
            used.append(int(n[6:]))
        c_ex = struct_array([(specs[i][0], specs[i][1], None) for i in used])
        out = ctypes.c_void_p()
        check(_lib.lib.kiln_onnx_trace(g, c_ex, len(used), ctypes.byref(out)))
    finally:
        _lib.lib.kiln_onnx_free(g)
    return Model(out, in_tree=in_tree, out_tree=out_tree, input_map=used, n_flat_inputs=n_flat,
                 source=source)


def trace(model, example_inputs):
    """Compiles a model for the shapes and dtypes of example_inputs; returns a kiln.Model
    (UNLOADED, lazy and async off: set them with lazy_load/async_load, then save).

    model: a torch.nn.Module (exported to ONNX at opset 17 in eval mode, inputs named
    input_0.., outputs output_0..; nested tuple/list/dict inputs and outputs are flattened
    in order and rebuilt on return), or the path of an .onnx file (example inputs in the
    graph's input order).
    example_inputs: a tensor, or a tuple of arguments (each a tensor or a nested
    tuple/list/dict of tensors); torch tensors or NumPy arrays.
    """
    args = _example_args(example_inputs)
    if isinstance(model, (str, bytes, os.PathLike)):
        return _trace_onnx(model, args)
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch
        except ImportError:
            raise TypeError(f"model must be a torch.nn.Module or an .onnx path, got "
                            f"{type(model).__name__}") from None
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or an .onnx path, got "
                        f"{type(model).__name__}")
    return _trace_torch(torch, model, args)


def _need_model(model, what):
    if not isinstance(model, Model):
        raise TypeError(f"{what}: expected a kiln.Model, got {type(model).__name__}")
    return model._ptr()


def lazy_load(model, enable_lazy_load=True):
    """Makes loading of the traced model lazy (or not): once saved, kiln.load places
    nothing; the first call or DataParallel places it. Call right after trace, before save."""
    check(_lib.lib.kiln_lazy_load(_need_model(model, "lazy_load"), 1 if enable_lazy_load else 0))


def async_load(model, enable_async_load=True):
    """Makes loading of the traced model asynchronous (or not): once saved, every placement
    (at kiln.load, or at DataParallel) runs in the background; a call waits for it. Call
    right after trace, before save."""
    check(_lib.lib.kiln_async_load(_need_model(model, "async_load"), 1 if enable_async_load else 0))


def save(model, path):
    """Writes the artifact atomically (with the load flags), and the Python structure beside
    it (<path>.pytree.json) when the model has one; a stale one is removed."""
    ptr = _need_model(model, "save")
    bpath = _fspath(path)
    check(_lib.lib.kiln_save(ptr, bpath))
    side = os.fsdecode(bpath) + SIDECAR_SUFFIX
    info = model._sidecar()
    try:
        if info is None:
            if os.path.exists(side):
                os.unlink(side)
            return
        d = os.path.dirname(os.path.abspath(side))
        fd, tmp = tempfile.mkstemp(prefix=".kiln-pytree-", dir=d)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
            os.replace(tmp, side)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise KilnIOError(f"{side}: cannot write the model's Python structure: {e}") from None


def _read_sidecar(path, n_in, n_out):
    side = path + SIDECAR_SUFFIX
    try:
        with open(side) as f:
            info = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise KilnFormatError(f"{side}: unreadable: {e}") from None
    bad = KilnFormatError(f"{side}: does not describe the artifact beside it")
    if not isinstance(info, dict) or info.get("kiln_python") != _SIDECAR_VERSION:
        raise bad
    in_tree, out_tree, imap = info.get("inputs"), info.get("outputs"), info.get("input_map")
    n_flat = info.get("n_flat_inputs")
    if imap is not None:
        if (not isinstance(imap, list) or len(imap) != n_in or not isinstance(n_flat, int)
                or any(not isinstance(i, int) or not 0 <= i < n_flat for i in imap)):
            raise bad
    else:
        n_flat = n_in
    if in_tree is not None and (not _tree.valid(in_tree) or in_tree[0] != "tuple"
                                or _tree.count(in_tree) != n_flat):
        raise bad
    if out_tree is not None and (not _tree.valid(out_tree) or _tree.count(out_tree) != n_out):
        raise bad
    return {"in_tree": in_tree, "out_tree": out_tree, "input_map": imap, "n_flat_inputs": n_flat}


def load(path):
    """Reads and checks an artifact and places it as its flags say: eager (placed on the
    least-used core before returning), lazy (nothing placed yet) or async (placing in the
    background; returns at once)."""
    bpath = _fspath(path)
    out = ctypes.c_void_p()
    check(_lib.lib.kiln_load(bpath, ctypes.byref(out)))
    spath = os.fsdecode(bpath)
    try:
        n_in = _lib.lib.kiln_model_num_inputs(out)
        n_out = _lib.lib.kiln_model_num_outputs(out)
        extra = _read_sidecar(spath, n_in, n_out)
    except BaseException:
        _lib.lib.kiln_model_free(out)
        raise
    return Model(out, source=spath, **extra)
