"""lincompile: Linear-layer networks → chain-rule training graphs → ONNX, C and CUDA."""

__version__ = "0.1.0"

from .autodiff import grad
from .backends import TARGETS, Executable, compile
from .errors import (
    CompileError,
    FeedError,
    GradientError,
    LincompileError,
    ModelLoadError,
    OptimizerError,
    OverwriteError,
    ShapeError,
    UnsupportedOpError,
    ValidationError,
)
from .ir import Graph, Node, Param, Value
from .training import SGD, Adagrad, Adam, AdamW, SplitTraining, training_graph
from .validate import Report, random_feeds, validate


def load_onnx(model, batch=None, logits=None):
    """Import an ONNX model (path, bytes or ModelProto) as a :class:`Graph`.

    ``batch="N"`` makes a leading dim the file fixed symbolic; ``logits=NAME`` imports only
    what computes that tensor (default: the logits before a classifier head, if any).
    """
    from .frontends.onnx_import import load_onnx as _load

    return _load(model, batch=batch, logits=logits)


def write_trained(model_path, values, out_path, params=None):
    """Write trained values (``P`` or ``P.next``, the training graph's layout) into a copy of
    the model file at ``out_path``, in the file's own names, shapes and dtypes."""
    from .frontends.layout import write_trained as _write

    return _write(model_path, values, out_path, params)


def train(model, data, **kwargs):
    """Train a model (path or Graph) on data (path or ``(x, y)``); returns ``(trained graph,
    history)``. See :func:`lincompile.training_loop.train` for the options."""
    from .training_loop import train as _train

    return _train(model, data, **kwargs)


def save_onnx(graph, path, portable=False, inline=None, external_data=None):
    """Write ``graph`` (model or training graph) as a standard ONNX file; ``portable=True``
    writes one flat graph of default-domain ops for any ONNX runtime (``inline`` is its
    deprecated former name); ``external_data`` keeps the tensors in ``<file>.data`` beside
    it (by default only past 2 GiB)."""
    from .backends.onnx import save_onnx as _save

    return _save(graph, path, portable=portable, inline=inline, external_data=external_data)


__all__ = [
    "SGD", "TARGETS", "Adagrad", "Adam", "AdamW", "CompileError", "Executable", "FeedError",
    "GradientError", "Graph", "LincompileError", "ModelLoadError", "Node", "OptimizerError",
    "OverwriteError", "Param", "Report",
    "ShapeError", "SplitTraining", "UnsupportedOpError", "ValidationError", "Value",
    "__version__", "compile", "grad", "load_onnx", "random_feeds", "save_onnx", "train",
    "training_graph", "validate", "write_trained",
]
