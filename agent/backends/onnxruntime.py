"""ONNX Runtime backend: the CPU path for development, CI, demos and GPU-less users."""

import collections
import logging
import os
import time

import numpy as np

from ..errors import BackendUnavailable, ModelError
from .base import Backend, TensorSpec

log = logging.getLogger("edge_agent.backends")


def default_frames_in_flight():
    """Frames inferred at once: two on two or more cores (agent.pipeline runs one inference
    thread per frame in flight)."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def physical_cores():
    """Physical cores this process may run on (ONNX Runtime's default intra-op thread count;
    hyperthread siblings count once); the logical count where sysfs does not say."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return os.cpu_count() or 1
    cores = set()
    for cpu in allowed:
        try:
            with open("/sys/devices/system/cpu/cpu{}/topology/thread_siblings_list".format(cpu)) as f:
                cores.add(f.read().strip())
        except (IOError, OSError):
            cores.add(str(cpu))
    return max(1, len(cores))


def _dtype(type_name):
    return {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
            "tensor(int32)": np.int32}.get(type_name, np.float32)


class OnnxRuntimeBackend(Backend):
    """One ONNX model in an ONNX Runtime CPU session."""

    name = "onnxruntime"

    def __init__(self, model_path, config=None):
        """Load ``model_path``; ``config`` is an OnnxRuntimeConfig. Raises ModelError.

        Two sessions of the model, each the fastest for one load (measured on a 2-core box:
        benchmarks/README.md): a *wide* one with ``threads`` intra-op threads (0: one per
        physical core, as ONNX Runtime's default, unpinned) for a frame alone, the latency
        case, and, with ``frames_in_flight`` > 1, a *narrow* single-threaded one that several inference
        threads call at once (ONNX Runtime's ``run`` is thread-safe), one frame per core,
        the throughput case: single-threaded runs do not wait on each other's operators,
        so two of them get more out of two cores than one run on both. A frame alone goes
        to whichever of the two has been faster alone lately (``_Pick``): on a busy box
        the spinning wide session can take twice as long as the narrow one.
        """
        super(OnnxRuntimeBackend, self).__init__()
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailable("backend onnxruntime: not installed ({}); pip install onnxruntime".format(e))
        if not os.path.isfile(model_path):
            raise ModelError("{}: model file not found".format(model_path))
        # 0: as many threads as ONNX Runtime's default, but set explicitly, because its default
        # also pins each worker thread to a core, and a pinned, spinning worker cannot move out
        # of the way of the agent's other threads (capture, output) on a small box: the fast demo
        # model's p50 at 30 fps was 2.24 ms over bare with ORT's default, 1.07 ms with the same
        # two threads unpinned (medians of 8 rounds, 2-core box: benchmarks/README.md).
        threads = getattr(config, "threads", 0) or physical_cores()
        spinning = bool(getattr(config, "allow_spinning", True))
        self.concurrency = getattr(config, "frames_in_flight", 0) or default_frames_in_flight()
        self.session = self._session(ort, model_path, threads, spinning)
        self._narrow = self._session(ort, model_path, 1, False) if self.concurrency > 1 else self.session
        self._pick = _Pick(self.session, self._narrow)
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
        self._warm_up()
        log.info("loaded %s with onnxruntime %s (%d intra-op threads, spinning %s; %d frame(s) in flight)",
                 model_path, ort.__version__, threads, "on" if spinning else "off", self.concurrency)

    @staticmethod
    def _session(ort, model_path, threads, spinning):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning (ORT's default) starts each operator without a wake-up: 4.6 against 6.5 ms for
        # the fast demo model on 2 cores, 5.2 against 9.4 ms paced at 30 fps (benchmarks/README.md).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.log_severity_level = 3
        try:
            return ort.InferenceSession(model_path, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError("{}: cannot load model: {}".format(model_path, first[:300]))

    def _warm_up(self):
        """One run of each session: ONNX Runtime allocates and plans on the first run, which
        would otherwise be the first frame's latency and skew the choice of session."""
        blob = np.zeros(self.inputs[0].shape, self.inputs[0].dtype)
        for session in self._pick.sessions:
            try:
                session.run(self._output_names, {self._input_name: blob})
            except Exception as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ModelError("{}: cannot run the model: {}".format(self.model_path, first[:300]))

    def infer(self, blob, parallel=False):
        """``parallel``: other frames are being inferred at the same time (the narrow session)."""
        feed = {self._input_name: blob}
        if parallel:
            values = self._narrow.run(self._output_names, feed)
        else:
            session = self._pick.session()
            t0 = time.perf_counter()
            values = session.run(self._output_names, feed)
            self._pick.took(session, time.perf_counter() - t0)
        return dict(zip(self._output_names, values))

    def close(self):
        self.session = self._narrow = None


class _Pick(object):
    """Which session runs a frame alone: the wide one (ONNX Runtime's defaults, what a bare
    loop would run) unless the narrow one's recent lone runs (median of the last SAMPLES)
    were faster by MARGIN, and back once the wide one is. Each is tried for SAMPLES frames in
    a row first, then every EXPLORE-th lone frame starts SAMPLES in a row on the other, so a
    change in load (another process taking a core away from the spinning wide session: twice
    as slow) is noticed. In a row, because a session left idle for a while runs its first
    frame slowly (its threads and caches cold: 5-9 ms against 3 for the demo model's wide
    session on the 2-core box), and the median of a run outvotes it. The margin, because the
    wide session's lone runs come in slower spells on a shared box (a median of 5 then reads
    a third more): without it one spell moved frames to the narrow session for 50 frames."""

    EXPLORE = 50
    SAMPLES = 5
    MARGIN = 0.8  # the other session's median must be below this times the chosen one's

    def __init__(self, wide, narrow):
        self.sessions = [wide] if narrow is wide else [wide, narrow]
        self.recent = [collections.deque(maxlen=self.SAMPLES) for _ in self.sessions]
        self.count = 0
        self.chosen = 0  # the wide one
        self.trying, self.left = 0, 0  # the session being tried, and for how many more frames

    def session(self):
        if len(self.sessions) == 1:
            return self.sessions[0]
        if self.left:
            self.left -= 1
            return self.sessions[self.trying]
        self.count += 1
        sizes = [len(r) for r in self.recent]
        if min(sizes) < self.SAMPLES:
            return self._try(sizes.index(min(sizes)))
        medians = [sorted(r)[self.SAMPLES // 2] for r in self.recent]
        other = 1 - self.chosen
        if medians[other] < self.MARGIN * medians[self.chosen]:
            self.chosen = other
        return self._try(1 - self.chosen) if self.count % self.EXPLORE == 0 else self.sessions[self.chosen]

    def _try(self, index):
        self.trying, self.left = index, self.SAMPLES - 1
        return self.sessions[index]

    def took(self, session, seconds):
        self.recent[self.sessions.index(session)].append(seconds)


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
