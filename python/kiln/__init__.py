"""kiln — compile ONNX / PyTorch models ahead of time and load them onto CPU cores eagerly,
lazily or asynchronously: the torch_neuronx trace / lazy_load / async_load / DataParallel
API on top of kiln's C library (libkiln.so, through ctypes).

    import kiln, torch, torchvision
    model = torchvision.models.resnet18(weights=None)
    x = torch.rand(1, 3, 224, 224)
    neuron_model = kiln.trace(model, x)
    kiln.lazy_load(neuron_model)
    kiln.save(neuron_model, "resnet18.kiln")

    neuron_model = kiln.load("resnet18.kiln")   # places nothing yet (lazy)
    y = neuron_model(x)                         # placed on a core now, then run

See docs/PYTHON.md.
"""
from ._lib import path as library_path
from .errors import (KilnArgError, KilnCoreError, KilnError, KilnFormatError,
                     KilnInternalError, KilnIOError, KilnLoadError, KilnNoMemError,
                     KilnShapeError, KilnStateError, KilnUnsupportedError)
from .model import (Model, TensorSpec, async_load, lazy_load, load, num_cores, save, trace)
from .parallel import DataParallel

__version__ = "0.1.0"

__all__ = [
    "trace", "lazy_load", "async_load", "save", "load", "num_cores", "Model", "TensorSpec",
    "DataParallel", "library_path",
    "KilnError", "KilnArgError", "KilnIOError", "KilnFormatError", "KilnUnsupportedError",
    "KilnShapeError", "KilnNoMemError", "KilnCoreError", "KilnLoadError", "KilnStateError",
    "KilnInternalError",
]
