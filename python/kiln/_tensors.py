"""_tensors.py — NumPy/torch tensors to and from kiln_tensor structs.

Inputs become C-contiguous NumPy arrays of the model's dtype (a cast when it loses no kind:
float64 -> float32 yes, float -> int no; anything else goes to kiln as it is, and kiln's
shape/dtype check reports it). Outputs are NumPy arrays allocated here and filled by kiln;
they become torch tensors (sharing memory) when the call was given torch tensors.
bfloat16 has no NumPy dtype: it travels as uint16 bit patterns.
"""
import ctypes
import sys

import numpy as np

from . import _lib
from ._tree import is_torch_tensor
from .errors import KilnShapeError

# kiln_dtype <-> NumPy dtype, and the name users see in TensorSpec.dtype
_NP = {
    _lib.F32: np.dtype(np.float32), _lib.F16: np.dtype(np.float16),
    _lib.BF16: np.dtype(np.uint16), _lib.F64: np.dtype(np.float64),
    _lib.I8: np.dtype(np.int8), _lib.U8: np.dtype(np.uint8),
    _lib.I32: np.dtype(np.int32), _lib.I64: np.dtype(np.int64),
    _lib.BOOL: np.dtype(np.bool_),
}
_NAME = {k: ("bfloat16" if k == _lib.BF16 else v.name) for k, v in _NP.items()}
_FROM_NP = {v: k for k, v in _NP.items() if k != _lib.BF16}


def numpy_dtype(kdtype):
    """The NumPy dtype kiln's outputs of this dtype are returned in (uint16 for bf16)."""
    return _NP[kdtype]


def dtype_name(kdtype):
    return _NAME.get(kdtype, f"dtype {kdtype}")


def kiln_dtype(np_dtype):
    """kiln_dtype of a NumPy dtype, or None."""
    return _FROM_NP.get(np.dtype(np_dtype))


def _to_bf16_bits(a):
    """float array -> bfloat16 bit patterns (round to nearest even)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def to_numpy(x):
    """A tensor leaf as a NumPy array (torch: detached, on the CPU; bf16 as uint16 bits).
    Returns (array, is_bf16_bits)."""
    if is_torch_tensor(x):
        torch = sys.modules["torch"]
        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.dtype == torch.bfloat16:
            return t.contiguous().view(torch.int16).numpy().view(np.uint16), True
        if t.is_conj():
            t = t.resolve_conj()
        return t.numpy(), False
    return np.asarray(x), False


def prepare_input(x, kdtype, where):
    """An input leaf as a C-contiguous, aligned array for a model input of kiln dtype
    `kdtype`. Returns (array, kiln dtype to declare). `where` names it in errors."""
    a, bf16 = to_numpy(x)
    if kdtype == _lib.BF16:
        if bf16 or a.dtype in (np.uint16, np.int16):
            a = a.view(np.uint16)
        elif a.dtype.kind == "f":
            a = _to_bf16_bits(a)
        have = _lib.BF16 if a.dtype == np.uint16 else kiln_dtype(a.dtype)
    else:
        want = _NP[kdtype]
        if bf16:
            raise KilnShapeError(f"{where}: the model wants {dtype_name(kdtype)}, got bfloat16")
        if a.dtype != want and np.can_cast(a.dtype, want, casting="same_kind"):
            a = a.astype(want)
        have = kiln_dtype(a.dtype)
    if have is None:
        raise KilnShapeError(f"{where}: the model wants {dtype_name(kdtype)}, got {a.dtype} "
                             f"(kiln has no such dtype)")
    if a.ndim > _lib.MAX_DIMS:
        raise KilnShapeError(f"{where}: rank {a.ndim} exceeds kiln's {_lib.MAX_DIMS} dimensions")
    if not (a.flags.c_contiguous and a.flags.aligned):
        a = a.copy(order="C")
    return a, have


def spec_of(x, where):
    """(kiln dtype, shape) of an example input leaf (data unused)."""
    a, bf16 = to_numpy(x)
    kd = _lib.BF16 if bf16 else kiln_dtype(a.dtype)
    if kd is None:
        raise TypeError(f"{where}: dtype {a.dtype} is not one kiln supports "
                        f"(float32, float16, bfloat16, float64, int8, uint8, int32, int64, bool)")
    if a.ndim > _lib.MAX_DIMS:
        raise KilnShapeError(f"{where}: rank {a.ndim} exceeds kiln's {_lib.MAX_DIMS} dimensions")
    return kd, tuple(int(d) for d in a.shape)


def struct_array(items):
    """A ctypes array of kiln_tensor from (kiln dtype, shape, data pointer or None) triples;
    None when there are none. The caller keeps the data alive during the call."""
    if not items:
        return None
    arr = (_lib.Tensor * len(items))()
    for t, (kd, shape, ptr) in zip(arr, items):
        t.dtype = kd
        t.ndim = len(shape)
        for d, n in enumerate(shape):
            t.shape[d] = n
        t.data = ptr
    return arr


def arrays_struct(arrays, kdtypes):
    """kiln_tensor array describing NumPy arrays (which must stay alive during the call)."""
    return struct_array([(kd, a.shape, a.ctypes.data if a.size else None)
                         for a, kd in zip(arrays, kdtypes)])


def wrap_output(a, kdtype, as_torch):
    """A filled output array as the caller wants it."""
    if not as_torch:
        return a
    torch = sys.modules["torch"]
    if kdtype == _lib.BF16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def c_shape(spec):
    return tuple(int(spec.shape[d]) for d in range(spec.ndim))


def c_pointer_array(values, ctype=ctypes.c_int):
    return (ctype * len(values))(*values) if values else None
