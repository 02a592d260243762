"""errors.py — kiln's status codes as Python exceptions.

Every failing C call raises the subclass of KilnError that matches its kiln_status, with
kiln_last_error()'s message as the text. Each subclass also derives from the builtin that
fits the kind of failure, so generic handlers work too:

    bad values from the caller   KilnArgError, KilnFormatError, KilnShapeError -> ValueError
    the file system              KilnIOError                                   -> OSError
    not implemented by kiln      KilnUnsupportedError                          -> NotImplementedError
    memory                       KilnNoMemError                                -> MemoryError
    the runtime's situation      KilnCoreError, KilnLoadError, KilnStateError,
                                 KilnInternalError                             -> RuntimeError
"""
from . import _lib


class KilnError(Exception):
    """Base class of every kiln failure. `status` is the kiln_status code, `status_name`
    its name ("KILN_ERR_FORMAT"), str(e) kiln's message."""
    status = -1
    status_name = "KILN_ERR"

    def __init__(self, message=""):
        super().__init__(message or self.status_name)

    def __str__(self):
        return self.args[0] if self.args else self.status_name


class KilnArgError(KilnError, ValueError):
    """KILN_ERR_ARG: a bad argument (NULL, out of range)."""
    status, status_name = 1, "KILN_ERR_ARG"


class KilnIOError(KilnError, OSError):
    """KILN_ERR_IO: open, read or write failed."""
    status, status_name = 2, "KILN_ERR_IO"

    def __init__(self, message=""):
        # OSError's constructor treats two or more arguments as (errno, strerror): keep one.
        OSError.__init__(self, message or self.status_name)

    def __str__(self):
        return self.args[0] if self.args else self.status_name


class KilnFormatError(KilnError, ValueError):
    """KILN_ERR_FORMAT: not an artifact / ONNX file, truncated, checksum, version."""
    status, status_name = 3, "KILN_ERR_FORMAT"


class KilnUnsupportedError(KilnError, NotImplementedError):
    """KILN_ERR_UNSUPPORTED: an op, attribute or dtype kiln does not implement."""
    status, status_name = 4, "KILN_ERR_UNSUPPORTED"


class KilnShapeError(KilnError, ValueError):
    """KILN_ERR_SHAPE: a tensor's count, shape or dtype does not match the model."""
    status, status_name = 5, "KILN_ERR_SHAPE"


class KilnNoMemError(KilnError, MemoryError):
    """KILN_ERR_NOMEM: out of memory."""
    status, status_name = 6, "KILN_ERR_NOMEM"


class KilnCoreError(KilnError, RuntimeError):
    """KILN_ERR_CORE: a core id that is not visible, or no core can take the model."""
    status, status_name = 7, "KILN_ERR_CORE"


class KilnLoadError(KilnError, RuntimeError):
    """KILN_ERR_LOAD: the model's (background) load failed; the message gives the cause."""
    status, status_name = 8, "KILN_ERR_LOAD"


class KilnStateError(KilnError, RuntimeError):
    """KILN_ERR_STATE: the call is not valid in the handle's state (e.g. flags on a loaded
    model, or any call on a closed one)."""
    status, status_name = 9, "KILN_ERR_STATE"


class KilnInternalError(KilnError, RuntimeError):
    """KILN_ERR_INTERNAL: a bug in kiln."""
    status, status_name = 10, "KILN_ERR_INTERNAL"


_BY_STATUS = {c.status: c for c in (KilnArgError, KilnIOError, KilnFormatError,
                                     KilnUnsupportedError, KilnShapeError, KilnNoMemError,
                                     KilnCoreError, KilnLoadError, KilnStateError,
                                     KilnInternalError)}


def error_for(status, message=None):
    """The exception for a kiln_status (message: kiln_last_error() unless given)."""
    if message is None:
        message = _lib.last_error()
    cls = _BY_STATUS.get(status)
    if cls is None:
        err = KilnError(f"{_lib.status_name(status)}: {message}")
        err.status = status
        return err
    return cls(message)


def check(status):
    """Raises the matching KilnError unless status is KILN_OK. Call it right after the C
    call, on the same thread (the message is thread-local)."""
    if status != _lib.OK:
        raise error_for(status)
