"""The inference-backend interface and the registry of backends, keyed by name.

A backend owns one model (an ONNX file for onnxruntime, a verified engine for
tensorrt). It is created, used and closed on one thread: the pipeline's
inference thread. ``infer`` takes the preprocessed NCHW float32 batch and returns
the raw model outputs by name, in the model's own layout; decoding is the
post-processor's job.
"""

import collections

from ..errors import BackendUnavailable, ConfigError

TensorSpec = collections.namedtuple("TensorSpec", "name shape dtype")


class Backend(object):
    """One loaded model; see the module docstring for the threading rule."""

    name = ""

    def __init__(self):
        self.inputs = []  # [TensorSpec]; one image input, NCHW
        self.outputs = []  # [TensorSpec]
        self.metadata = {}  # model metadata (ONNX metadata_props / engine manifest)

    @property
    def input_size(self):
        """(width, height) of the model input."""
        shape = self.inputs[0].shape
        return int(shape[3]), int(shape[2])

    def infer(self, blob):
        """Run the model on ``blob`` (1x3xHxW float32); return {output name: ndarray}."""
        raise NotImplementedError

    def close(self):
        """Free the model and its buffers, in reverse order of creation."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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
