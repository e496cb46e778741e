"""ONNX Runtime backend: the CPU path for development, CI, demos and GPU-less users."""

import logging
import os

import numpy as np

from ..errors import BackendUnavailable, ModelError
from .base import Backend, TensorSpec

log = logging.getLogger("edge_agent.backends")


def default_threads():
    """One intra-op thread per core but one, at most 4.

    The spare core runs capture, decoding, preprocessing and publishing, which then
    overlap with inference instead of preempting one of its threads (an intra-op
    thread that is descheduled stalls the whole operator).
    """
    return max(1, min(4, (os.cpu_count() or 1) - 1))


def _dtype(type_name):
    return {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
            "tensor(int32)": np.int32}.get(type_name, np.float32)


class OnnxRuntimeBackend(Backend):
    """One ONNX model in an ONNX Runtime CPU session."""

    name = "onnxruntime"

    def __init__(self, model_path, config=None):
        """Load ``model_path``; ``config`` is an OnnxRuntimeConfig. Raises ModelError."""
        super(OnnxRuntimeBackend, self).__init__()
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailable("backend onnxruntime: not installed ({}); pip install onnxruntime".format(e))
        threads = getattr(config, "threads", 0) or default_threads()
        spinning = bool(getattr(config, "allow_spinning", False))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # A spinning pool steals the core the capture thread needs on a 2-core box.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.log_severity_level = 3
        if not os.path.isfile(model_path):
            raise ModelError("{}: model file not found".format(model_path))
        try:
            self.session = ort.InferenceSession(model_path, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError("{}: cannot load model: {}".format(model_path, first[:300]))
        self.model_path = model_path
        self.threads = threads
        self.inputs = [TensorSpec(i.name, tuple(i.shape), _dtype(i.type)) for i in self.session.get_inputs()]
        self.outputs = [TensorSpec(o.name, tuple(o.shape), _dtype(o.type)) for o in self.session.get_outputs()]
        if len(self.inputs) != 1 or len(self.inputs[0].shape) != 4:
            raise ModelError("{}: expected one NCHW image input, found {}".format(
                model_path, ", ".join("{} {}".format(i.name, list(i.shape)) for i in self.inputs)))
        shape = list(self.inputs[0].shape)
        if not all(isinstance(d, int) for d in shape[2:]):
            # Dynamic H/W: take the size from the metadata (Ultralytics' imgsz) or default to 640.
            h, w = _imgsz(self.session) or (640, 640)
            shape[2:] = [h, w]
        shape[0] = 1
        self.inputs[0] = TensorSpec(self.inputs[0].name, tuple(shape), self.inputs[0].dtype)
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self._input_name = self.inputs[0].name
        self._output_names = [o.name for o in self.outputs]
        log.info("loaded %s with onnxruntime %s (%d threads, spinning %s)", model_path, ort.__version__,
                 threads, "on" if spinning else "off")

    def infer(self, blob):
        values = self.session.run(self._output_names, {self._input_name: blob})
        return dict(zip(self._output_names, values))

    def close(self):
        self.session = None


def _imgsz(session):
    import ast

    raw = session.get_modelmeta().custom_metadata_map.get("imgsz")
    try:
        value = ast.literal_eval(raw) if raw else None
    except (ValueError, SyntaxError):
        return None
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    return None
