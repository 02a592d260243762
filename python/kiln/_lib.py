"""_lib.py — finds libkiln.so and declares the part of include/kiln.h the package calls.

Every C function the package uses is declared here with its argtypes and restype; the
structs mirror the C layouts exactly. Nothing else in the package touches ctypes' loader.

Where the library comes from, first match wins:
  1. $KILN_LIBRARY (a path to libkiln.so; if set, it must load — no silent fallback),
  2. libkiln.so next to this file (the copy `pip install ./python` places),
  3. the build tree when running from a checkout: <repo>/build/release/libkiln.so,
  4. the system: ctypes.util.find_library("kiln") (e.g. after `cmake --install`).
"""
import ctypes
import ctypes.util
import os

MAX_DIMS = 8

# kiln_status
OK = 0

# kiln_dtype
F32, F16, BF16, F64, I8, U8, I32, I64, BOOL = range(1, 10)

# kiln_load_state
STATE_NAMES = ("UNLOADED", "LOADING", "LOADED", "FAILED")


class Tensor(ctypes.Structure):
    """struct kiln_tensor: dtype (enum, int), int32 ndim, int64 shape[8], void *data."""
    _fields_ = [
        ("dtype", ctypes.c_int),
        ("ndim", ctypes.c_int32),
        ("shape", ctypes.c_int64 * MAX_DIMS),
        ("data", ctypes.c_void_p),
    ]


class LoadReport(ctypes.Structure):
    """struct kiln_load_report, field for field."""
    _fields_ = [
        ("read_ms", ctypes.c_double),
        ("verify_ms", ctypes.c_double),
        ("place_ms", ctypes.c_double),
        ("kernels_ms", ctypes.c_double),
        ("total_ms", ctypes.c_double),
        ("file_bytes", ctypes.c_uint64),
        ("weight_bytes", ctypes.c_uint64),
        ("copied_bytes", ctypes.c_uint64),
        ("arena_bytes", ctypes.c_uint64),
        ("core", ctypes.c_int),
        ("placements", ctypes.c_uint32),
        ("t_load", ctypes.c_double),
        ("t_read_end", ctypes.c_double),
        ("t_trigger", ctypes.c_double),
        ("t_verify_start", ctypes.c_double),
        ("t_verify_end", ctypes.c_double),
        ("t_place_start", ctypes.c_double),
        ("t_kernels_start", ctypes.c_double),
        ("t_ready", ctypes.c_double),
    ]


_c_int, _c_size, _vp = ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p
_pvp = ctypes.POINTER(ctypes.c_void_p)
_pt = ctypes.POINTER(Tensor)
_pcc = ctypes.POINTER(ctypes.c_char_p)

# name: (restype, argtypes). Handles (kiln_model *, kiln_dp *, kiln_onnx *) are void *.
_SIGNATURES = {
    "kiln_status_name": (ctypes.c_char_p, [_c_int]),
    "kiln_last_error": (ctypes.c_char_p, []),
    "kiln_dtype_size": (_c_size, [_c_int]),
    "kiln_dtype_name": (ctypes.c_char_p, [_c_int]),
    "kiln_trace": (_c_int, [ctypes.c_char_p, _pt, _c_size, _pvp]),
    "kiln_onnx_open": (_c_int, [ctypes.c_char_p, _pvp]),
    "kiln_onnx_num_inputs": (_c_size, [_vp]),
    "kiln_onnx_input": (_c_int, [_vp, _c_size, _pcc, _pt]),
    "kiln_onnx_trace": (_c_int, [_vp, _pt, _c_size, _pvp]),
    "kiln_onnx_free": (None, [_vp]),
    "kiln_lazy_load": (_c_int, [_vp, _c_int]),
    "kiln_async_load": (_c_int, [_vp, _c_int]),
    "kiln_save": (_c_int, [_vp, ctypes.c_char_p]),
    "kiln_load": (_c_int, [ctypes.c_char_p, _pvp]),
    "kiln_forward": (_c_int, [_vp, _pt, _c_size, _pt, _c_size]),
    "kiln_wait": (_c_int, [_vp]),
    "kiln_model_state": (_c_int, [_vp]),
    "kiln_model_num_inputs": (_c_size, [_vp]),
    "kiln_model_num_outputs": (_c_size, [_vp]),
    "kiln_model_input": (_c_int, [_vp, _c_size, _pcc, _pt]),
    "kiln_model_output": (_c_int, [_vp, _c_size, _pcc, _pt]),
    "kiln_model_placements": (ctypes.c_uint32, [_vp, _c_int]),
    "kiln_model_is_lazy": (_c_int, [_vp]),
    "kiln_model_is_async": (_c_int, [_vp]),
    "kiln_model_load_report": (_c_int, [_vp, ctypes.POINTER(LoadReport)]),
    "kiln_model_free": (None, [_vp]),
    "kiln_num_cores": (_c_int, []),
    "kiln_data_parallel": (_c_int, [_vp, ctypes.POINTER(_c_int), _c_size, _c_int, _c_int, _pvp]),
    "kiln_dp_disable_dynamic_batching": (_c_int, [_vp]),
    "kiln_dp_forward": (_c_int, [_vp, _pt, _c_size, _pt, _c_size]),
    "kiln_dp_free": (None, [_vp]),
}


def _candidates():
    """(description, path or name) pairs in search order, $KILN_LIBRARY excluded."""
    here = os.path.dirname(os.path.abspath(__file__))
    yield "next to the package", os.path.join(here, "libkiln.so")
    repo = os.path.dirname(os.path.dirname(here))
    if os.path.isfile(os.path.join(repo, "include", "kiln.h")):
        yield "the build tree", os.path.join(repo, "build", "release", "libkiln.so")
    yield "the system", ctypes.util.find_library("kiln")


def _open():
    env = os.environ.get("KILN_LIBRARY")
    if env:
        try:
            return ctypes.CDLL(env), env
        except OSError as e:
            raise ImportError(f"kiln: cannot load $KILN_LIBRARY={env}: {e}") from None
    tried = []
    for what, path in _candidates():
        if path is None:
            tried.append(f"ctypes.util.find_library('kiln') ({what}: not found)")
            continue
        if os.sep in path and not os.path.exists(path):
            tried.append(f"{path} ({what}: not there)")
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as e:
            tried.append(f"{path} ({what}: {e})")
    raise ImportError("kiln: libkiln.so not found; set KILN_LIBRARY to its path. Tried: "
                      + "; ".join(tried))


lib, path = _open()
for _name, (_res, _args) in _SIGNATURES.items():
    _f = getattr(lib, _name)
    _f.restype = _res
    _f.argtypes = _args


def last_error():
    """This thread's last kiln message, as str."""
    msg = lib.kiln_last_error()
    return msg.decode("utf-8", "replace") if msg else ""


def status_name(status):
    name = lib.kiln_status_name(status)
    return name.decode() if name else f"status {status}"
