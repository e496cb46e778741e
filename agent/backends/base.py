"""The inference-backend interface (the registry of backends is the package: agent.backends).

A backend owns one model (an ONNX file for onnxruntime, a verified engine for
tensorrt). It is created and closed on one thread, the pipeline's first inference
thread; a backend with ``concurrency`` > 1 also lets that many threads call ``infer``
at once. ``infer`` takes the preprocessed NCHW float32 batch and returns
the raw model outputs by name, in the model's own layout; decoding is the
post-processor's job.
"""

import collections
import contextlib


TensorSpec = collections.namedtuple("TensorSpec", "name shape dtype")


class Backend(object):
    """One loaded model; see the module docstring for the threading rule."""

    name = ""
    concurrency = 1  # how many ``infer`` calls may run at once (from different threads)

    def __init__(self):
        self.inputs = []  # [TensorSpec]; one image input, NCHW
        self.outputs = []  # [TensorSpec]
        self.metadata = {}  # model metadata (ONNX metadata_props / engine manifest)

    @property
    def input_size(self):
        """(width, height) of the model input."""
        shape = self.inputs[0].shape
        return int(shape[3]), int(shape[2])

    def infer(self, blob, parallel=False):
        """Run the model on ``blob`` (1x3xHxW float32); return {output name: ndarray}.

        ``parallel``: other ``infer`` calls run at the same time (only when ``concurrency`` > 1).
        """
        raise NotImplementedError

    def device_engine(self):
        """A DeviceEngine when the model's tensors live on a GPU the fused detector can work
        around (agent.detect.fused), else None (the default: the CPU detector runs ``infer``)."""
        return None

    def close(self):
        """Free the model and its buffers, in reverse order of creation."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class DeviceEngine(object):
    """A model whose input and output tensors live in device memory, for agent.detect.fused.

    ``runtime``: the GpuRuntime (agent.kernels.runtime) on the engine's stream; ``modules``:
    the kernel modules loaded by it ({'preprocess', 'decode', 'nms'}); ``input_ptr`` and
    ``output_ptr``: device addresses of the float32 ``input_shape`` [1, 3, H, W] and
    ``output_shape`` [1, 4+nc, N] (YOLOv8 layout) tensors; ``execute()``: run the engine on
    the stream (raises on failure); ``mapped_input``: the input is mapped host memory
    (frames may be too); ``current()``: a context manager making the engine's CUDA context
    current around every call (a no-op by default).
    """

    def __init__(self, runtime, modules, input_ptr, output_ptr, input_shape, output_shape, execute,
                 mapped_input=False, current=None):
        self.runtime = runtime
        self.modules = modules
        self.input_ptr, self.output_ptr = int(input_ptr), int(output_ptr)
        self.input_shape, self.output_shape = tuple(input_shape), tuple(output_shape)
        self.execute = execute
        self.mapped_input = bool(mapped_input)
        self.current = current or _no_context


@contextlib.contextmanager
def _no_context():
    yield
