"""Inference backends, chosen by name: the registry (the interface is agent.backends.base).

Only the chosen backend's runtime is imported (onnxruntime, or tensorrt + pycuda).
"""

import collections

from ..errors import BackendUnavailable, ConfigError


def _onnxruntime():
    from .onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend


def _tensorrt():
    from .tensorrt import TensorRTBackend

    return TensorRTBackend


# Name -> loader, so that only the chosen backend's runtime is imported.
REGISTRY = collections.OrderedDict([("tensorrt", _tensorrt), ("onnxruntime", _onnxruntime)])


def backend_class(name):
    """The Backend class registered as ``name``; raises ConfigError or BackendUnavailable."""
    if name not in REGISTRY:
        raise ConfigError("backend: unknown backend {!r} (known: auto, {})".format(name, ", ".join(REGISTRY)))
    try:
        return REGISTRY[name]()
    except ImportError as e:
        raise BackendUnavailable("backend {}: its runtime is not installed here ({})".format(name, e))


def resolve_backend_name(name):
    """Map ``auto`` to tensorrt where tensorrt and pycuda import, else onnxruntime."""
    if name != "auto":
        return name
    try:
        import tensorrt  # noqa: F401
        import pycuda.driver  # noqa: F401
    except Exception:
        return "onnxruntime"
    return "tensorrt"
