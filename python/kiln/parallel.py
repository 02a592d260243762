"""parallel.py — kiln.DataParallel: a model replicated on several cores, each call's batch
split across them (kiln_data_parallel / kiln_dp_forward).

As torch_neuronx.DataParallel: every tensor of the call (inputs nested in tuples, lists and
dicts included; each tensor leaf is one model input, in flattening order) is split along
`dim`, the pieces run in parallel, one per core, and every output is concatenated back
along `dim` and returned in the model's output structure.
"""
import ctypes
import threading

import numpy as np

from . import _lib
from ._tensors import arrays_struct, c_pointer_array, numpy_dtype
from .errors import KilnStateError, check
from .model import Model


class DataParallel:
    """Replicates `model` (a kiln.Model) on the cores `device_ids` (None: every visible
    core), placing it once per core — a lazy model is placed only there, an already placed
    model keeps its replica, an async model places in the background — and splits every
    call along `dim`.

    Dynamic batching (set_dynamic_batching): any batch size works; each core's share is run
    in pieces of the traced batch, the last one padded. kiln can only do that along dim 0,
    so set_dynamic_batching defaults to True for dim == 0 and to False for any other dim;
    asking for True with dim != 0 raises KilnArgError. Without it, the batch must be
    exactly len(device_ids) x the traced extent along dim (else KilnShapeError).

    Close it with close() or a with-block (also on garbage collection); closing the model
    closes it too.
    """

    def __init__(self, model, device_ids=None, dim=0, set_dynamic_batching=None):
        if not isinstance(model, Model):
            raise TypeError(f"DataParallel: expected a kiln.Model, got {type(model).__name__}")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise TypeError(f"DataParallel: dim must be an int, got {type(dim).__name__}")
        dim = int(dim)
        if device_ids is None:
            ids = []
        else:
            if isinstance(device_ids, (int, np.integer)):
                device_ids = [device_ids]
            ids = []
            for d in device_ids:
                if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
                    raise TypeError(f"DataParallel: device_ids must be core numbers (int), "
                                    f"got {type(d).__name__}")
                ids.append(int(d))
        if set_dynamic_batching is None:
            set_dynamic_batching = dim == 0
        self.module = model
        self.dim = dim
        self._dp = None
        self._lock = threading.Lock()
        ptr = model._ptr()
        model._h.add_dp()
        out = ctypes.c_void_p()
        try:
            check(_lib.lib.kiln_data_parallel(ptr, c_pointer_array(ids), len(ids), dim,
                                              1 if set_dynamic_batching else 0,
                                              ctypes.byref(out)))
        except BaseException:
            model._h.drop_dp()
            raise
        self._dp = out
        self._handle = model._h
        self.device_ids = ids if ids else list(range(_lib.lib.kiln_num_cores()))
        self.dynamic_batching = bool(set_dynamic_batching)
        model._dps.add(self)

    def disable_dynamic_batching(self):
        """Switches dynamic batching off (no reload): from now on the batch must be exactly
        len(device_ids) x the traced extent along dim."""
        check(_lib.lib.kiln_dp_disable_dynamic_batching(self._ptr()))
        self.dynamic_batching = False

    def _ptr(self):
        if self._dp is None:
            raise KilnStateError("the DataParallel is closed")
        return self._dp

    def close(self):
        """Frees the replication (the model's replicas stay with the model)."""
        with self._lock:
            dp, self._dp = self._dp, None
        if dp is not None:
            _lib.lib.kiln_dp_free(dp)
            self._handle.drop_dp()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __repr__(self):
        state = "closed" if self._dp is None else (
            f"dim={self.dim}, dynamic_batching={self.dynamic_batching}")
        return f"<kiln.DataParallel cores={self.device_ids} {state} of {self.module!r}>"

    def __call__(self, *inputs):
        m = self.module
        dp = self._ptr()
        leaves, as_torch = m._flat_inputs(inputs)
        arrays, kinds = m._prepare(leaves)
        # Output extents along dim follow the input's: traced output extent / traced input
        # extent (of input 0) x the given input extent. If input 0 does not have the traced
        # rank, kiln reports it; the outputs' shape is then irrelevant.
        d = self.dim
        spec0 = m._inputs[0].shape if m._inputs else ()
        total = None
        if arrays and len(spec0) > d and arrays[0].ndim == len(spec0) and spec0[d] > 0:
            total = arrays[0].shape[d]
        outs = []
        for s, kd in zip(m._outputs, m._out_k):
            shape = list(s.shape)
            if total is not None and len(shape) > d:
                shape[d] = shape[d] * total // spec0[d]
            outs.append(np.empty(shape, numpy_dtype(kd)))
        c_in = arrays_struct(arrays, kinds)
        c_out = arrays_struct(outs, m._out_k)
        check(_lib.lib.kiln_dp_forward(dp, c_in, len(arrays), c_out, len(outs)))
        return m._results(outs, as_torch)

    forward = __call__
