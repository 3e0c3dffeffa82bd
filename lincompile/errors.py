"""The errors lincompile raises: each names the node or tensor and says what to do."""

from __future__ import annotations


class LincompileError(Exception):
    """Base class of every error lincompile raises on purpose."""


class ShapeError(LincompileError):
    """A shape or dtype does not fit an op, an input or a feed."""


class UnsupportedOpError(LincompileError):
    """An op (IR or ONNX) that lincompile has no declaration for."""


class GradientError(LincompileError):
    """A gradient was asked for through an op or input that has no gradient rule."""


class FeedError(LincompileError):
    """A feed is missing, unknown, or has the wrong shape or dtype."""


class CompileError(LincompileError):
    """A backend failed to build a graph (compiler error, bad identifier, ...)."""


class ValidationError(LincompileError):
    """Outputs of a backend differ from the reference beyond the bounds."""


class ModelLoadError(LincompileError):
    """A model file is unreadable, truncated, or fails the ONNX checker."""


class OptimizerError(LincompileError):
    """An optimizer setting outside its valid range (NaN, infinite, negative, …)."""


class OverwriteError(LincompileError):
    """An output would replace an input, or a file that lincompile did not write."""
