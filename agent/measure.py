"""Measuring one model size on this device: the ``Measurer`` behind ``edge-agent benchmark``.

Everything goes through the production path: the Detector the agent runs
(``agent.detect.open_detector``), and speed is measured on the real ``Pipeline``. What is
measured and how is described in agent.benchmark; this module holds the measurements,
that module runs them (inline or in a child) and keeps the report.
"""

import collections
import dataclasses
import functools
import logging
import os
import platform
import shutil
import socket
import tempfile
import threading
import time

import numpy as np

from .errors import AgentError
from .publish.base import Sink
from .timing import percentiles

log = logging.getLogger("edge_agent.benchmark")

SPEED_STAGES = ("preprocess", "infer", "postprocess", "total")

Options = collections.namedtuple(
    "Options", "dataset frames warmup streams mqtt_url measure_build source accuracy")
Options.__new__.__defaults__ = (None, 100, 5, (1, 2), None, True, None, True)
Options.__doc__ = """What to measure: ``dataset`` (COCO split or None), ``frames`` (bound on mAP
images and on timed frames per run), ``warmup`` frames, ``streams`` (camera counts),
``mqtt_url`` (end-to-end over MQTT), ``measure_build``, ``source`` (speed frames folder)."""


class Interrupted(AgentError):
    """The benchmark was interrupted (SIGINT); what was measured is kept."""

    exit_code = 130


def environment(config):
    """What a report is valid for: host, resolved backend, runtime versions."""
    from .backends import resolve_backend_name

    backend = resolve_backend_name(config.backend)
    env = {"hostname": socket.gethostname(), "backend": backend, "platform": platform.platform(),
           "machine": platform.machine(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
           "onnxruntime_threads": config.onnxruntime.threads}
    try:
        if backend == "onnxruntime":
            import onnxruntime

            env["runtime"] = "onnxruntime " + onnxruntime.__version__
        else:
            from . import trt_compat

            env["runtime"] = "tensorrt " + trt_compat.version_string(trt_compat.import_tensorrt())
    except Exception:
        env["runtime"] = None
    return env


def backend_of(config):
    """The backend ``config`` resolves to here."""
    from .backends import resolve_backend_name

    return resolve_backend_name(config.backend)


def entry_key(size, precision=None):
    """A report entry's key: the size for its fp32 (or TensorRT's one) artifact, '<size>@int8' for the
    ONNX Runtime INT8 model beside it."""
    return size if precision in (None, "fp32") else "{}@{}".format(size, precision)


def bare_settings():
    """The ONNX Runtime thread settings a user could pick: (label, intra-op threads, spinning);
    ``None`` leaves ONNX Runtime's default."""
    cores = os.cpu_count() or 1
    return [("default", None, None)] + [("{} thread{}, spinning {}".format(t, "s" if t > 1 else "", s), t, s == "on")
                                        for t in range(1, cores + 1) for s in ("on", "off")]


def bare_session(model_path, threads=None, spinning=None):
    """A plain CPU InferenceSession, as a user would make it (``None``: ONNX Runtime's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
    if spinning is not None:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])


# --- sinks and sources -------------------------------------------------------------------------


class CollectSink(Sink):
    """A Sink keeping (monotonic done time, camera, timing_ms) of every record."""

    def __init__(self):
        self.items = []
        self._lock = threading.Lock()

    def emit(self, record, image=None):
        with self._lock:
            self.items.append((time.monotonic(), record["camera_id"], record["timing_ms"]))


def synthetic_folder(count=4, size=(640, 360)):
    """A temp folder of ``count`` JPEGs with random shapes (for speed without a dataset)."""
    import cv2

    folder = tempfile.mkdtemp(prefix="edge-agent-bench-")
    rng = np.random.RandomState(0)
    w, h = size
    for i in range(count):
        img = np.full((h, w, 3), 90, np.uint8)
        for _ in range(6):
            x, y = int(rng.randint(0, w - 60)), int(rng.randint(0, h - 60))
            color = tuple(int(c) for c in rng.randint(0, 255, 3))
            cv2.rectangle(img, (x, y), (x + int(rng.randint(15, 60)), y + int(rng.randint(15, 60))), color, -1)
        cv2.imwrite(os.path.join(folder, "{:04d}.jpg".format(i)), img)
    return folder


# --- measurements of one size -------------------------------------------------------------------


class Measurer(object):
    """Measures one size; ``emit(kind, *args)`` receives ('step', text), ('tick', label, done, total)
    and ('result', key, value) events as each section completes."""

    def __init__(self, config, size, options, emit, precision=None):
        """``precision``: 'int8' measures the size's ONNX Runtime INT8 model; None or 'fp32' the usual one."""
        config = dataclasses.replace(config, size=size, max_frames=0)
        if precision is not None and backend_of(config) == "onnxruntime":
            config = dataclasses.replace(config, onnxruntime=dataclasses.replace(config.onnxruntime,
                                                                                 precision=precision))
        self.config = config
        self.size = size
        self.label = entry_key(size, precision)
        self.opts = options
        self.emit = emit

    def step(self, text):
        self.emit("step", "{}: {}".format(self.label, text))

    def tick(self, label, done, total):
        """Progress, at most 10 events a second (the events must not disturb what is timed)."""
        t = time.monotonic()
        if done >= total or t - getattr(self, "_last_tick", 0.0) >= 0.1:
            self._last_tick = t
            self.emit("tick", "{} {}".format(self.label, label), done, total)

    def run(self):
        from .engines.files import sha256_file
        from .onnx_stats import model_stats
        from .detect import open_detector

        onnx_path = self.config.sizes[self.size].onnx
        self.step("loading model")
        model = open_detector(self.config, self.size)
        try:
            stats = model_stats(onnx_path)
            meta = stats["metadata"]
            train = meta.get("train_time_s", meta.get("train_wall_s"))
            manifest = getattr(model.backend, "manifest", None) or self._manifest()
            info = {"onnx": onnx_path, "sha256": sha256_file(onnx_path), "backend": model.backend_name,
                    "precision": ((manifest or {}).get("precision") or {}).get("built", "fp32"),
                    "gate": (manifest or {}).get("accuracy"),
                    "engine_id": model.engine_id, "input": list(model.input_size), "params": stats["params"],
                    "gflops": stats["gflops"], "onnx_bytes": os.path.getsize(onnx_path),
                    "train_time_s": _float_or_none(train),
                    "threads": getattr(model.backend, "threads", None)}
            self.emit("result", "model", info)
            self.emit("result", "baseline", self.baseline(model))
            if self.opts.dataset and self.opts.accuracy:
                self.emit("result", "accuracy", self.accuracy(model))
        finally:
            model.close()
        bare = self.sequential
        self.emit("result", "latency", self.latency(bare))
        runs = []
        for n in self.opts.streams:
            runs.append(self.throughput(n))
            self.emit("result", "throughput", list(runs))
        if self.opts.mqtt_url:
            self.emit("result", "e2e", self.e2e(bare))
        if self.opts.measure_build:
            self.emit("result", "build", self.build_time())

    def baseline(self, model):
        """The bare runtime loop on one preprocessed blob: what a user gets without the agent.

        ONNX Runtime: a plain ``InferenceSession`` ``run`` loop under each thread setting (its
        default, then 1..cores threads with spinning on and off); the fastest is the baseline.
        TensorRT: ``backend.infer`` on the loaded engine.
        """
        import cv2

        from .preprocess import Letterbox

        image = cv2.imread(self._first_image())
        blob, _ = Letterbox(*model.input_size).run(image)
        if model.backend_name == "onnxruntime":
            candidates = []
            for label, threads, spinning in bare_settings():
                self.step("baseline: bare session.run, {}".format(label))
                session = bare_session(model.backend.model_path, threads, spinning)
                run = functools.partial(session.run, None, {session.get_inputs()[0].name: blob})
                candidates.append(dict(self._bare_loop(run, label), setting=label))
            best = max(candidates, key=lambda c: c["fps"])
            best["settings"] = [{"setting": c["setting"], "fps": c["fps"], "p50_ms": c["infer_ms"]["p50"]}
                                for c in candidates]
        else:
            self.step("baseline: bare backend.infer loop")
            best = dict(self._bare_loop(lambda: model.backend.infer(blob), "baseline"), setting=model.backend_name)
        self.bare = best["infer_ms"]
        # The whole frame path once per frame, to pace the single-frame pipeline run below it.
        seq = []
        for _ in range(min(10, self.opts.frames)):
            t0 = time.perf_counter()
            model.detect(image)
            seq.append((time.perf_counter() - t0) * 1000.0)
        self.sequential = percentiles(seq)
        return best

    def _bare_loop(self, run, label):
        warm, times = [], []
        total = self.opts.warmup + self.opts.frames
        for i in range(total):
            t0 = time.perf_counter()
            run()
            ms = (time.perf_counter() - t0) * 1000.0
            (warm if i < self.opts.warmup else times).append(ms)
            self.tick(label, i + 1, total)
        infer = percentiles(times)
        return {"frames": len(times), "infer_ms": infer, "fps": round(1000.0 / infer["mean"], 2),
                "warmup_ms": [round(v, 3) for v in warm]}

    def accuracy(self, model):
        """mAP of the production pre/post-processing with mAP thresholds over the dataset (agent.accuracy,
        the evaluation the build's accuracy gate uses too)."""
        from . import coco
        from .accuracy import measure_map

        dataset = coco.open_dataset(self.opts.dataset)
        count = min(self.opts.frames, len(dataset.images)) if self.opts.frames else len(dataset.images)
        self.step("accuracy on {} images of {} ({})".format(count, dataset.annotations, coco.evaluator_name()))
        return measure_map(model, dataset, self.opts.frames, tick=lambda done, total: self.tick("accuracy", done, total))

    def _manifest(self):
        """The manifest of the artifact this size loads (None: the ONNX itself)."""
        from .engines import artifact

        try:
            return artifact.status(artifact.spec_from_config(self.config, self.size, backend_of(self.config)))[1]
        except AgentError:
            return None

    def _first_image(self):
        from .sources.files import IMAGE_EXTENSIONS

        names = sorted(n for n in os.listdir(self.opts.source) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise AgentError("benchmark source {}: no images".format(self.opts.source))
        return os.path.join(self.opts.source, names[0])

    def _pipeline_run(self, label, streams, per_stream, fps=0.0, sinks=None, config=None):
        """Run the real Pipeline on ``streams`` cameras of the speed folder; return the collect sink."""
        from .config import CameraConfig
        from .pipeline import Pipeline

        cams = [CameraConfig(id="bench{}".format(i), source=self.opts.source, loop=True, realtime=fps > 0, fps=fps)
                for i in range(streams)]
        config = dataclasses.replace(config or self.config, cameras=cams, max_frames=per_stream)
        collect = CollectSink()
        pipeline = Pipeline(config, [collect] + list(sinks or []))
        total = streams * per_stream
        try:
            pipeline.start()
            while not pipeline.wait(0.1):
                self.tick(label, pipeline.processed, total)
        finally:
            pipeline.stop()
        if len(collect.items) < total:
            raise AgentError("{}: {} run ended after {} of {} frames (see the log)".format(
                self.label, label, len(collect.items), total))
        return collect

    def latency(self, bare):
        """Single-frame latency: frames paced far enough apart that none waits in a queue."""
        period_ms = 1.5 * bare["p95"] + 5.0
        fps = round(1000.0 / period_ms, 3)
        self.step("latency: pipeline, one frame at a time ({:.1f} fps)".format(fps))
        collect = self._pipeline_run("latency", 1, self.opts.warmup + self.opts.frames, fps=fps)
        warm = collect.items[:self.opts.warmup]
        timed = collect.items[self.opts.warmup:]
        return {"frames": len(timed), "paced_fps": fps,
                "stages": {s: percentiles([t[2][s] for t in timed if s in t[2]]) for s in SPEED_STAGES},
                "warmup": {"frames": len(warm), "total_ms": [round(t[2]["total"], 3) for t in warm]}}

    def throughput(self, streams):
        """Pipelined FPS with ``streams`` unpaced cameras sharing the model, after warm-up."""
        self.step("throughput: pipeline, {} stream(s), unpaced".format(streams))
        per_stream = self.opts.warmup + self.opts.frames
        collect = self._pipeline_run("{} stream(s)".format(streams), streams, per_stream)
        items = sorted(collect.items, key=lambda t: t[0])
        skip = self.opts.warmup * streams
        timed = items[skip:]
        span = timed[-1][0] - items[skip - 1][0] if skip else timed[-1][0] - timed[0][0]
        count = len(timed) if skip else len(timed) - 1
        return {"streams": streams, "frames": len(timed), "fps": round(count / span, 2) if span > 0 else None,
                "stages": {s: percentiles([t[2][s] for t in timed if s in t[2]]) for s in SPEED_STAGES}}

    def e2e(self, bare):
        """Capture -> detection received by an MQTT subscriber, frames paced one at a time."""
        try:
            from .publish import make_sinks
        except ImportError:
            raise AgentError("--mqtt: the MQTT sink (agent.publish.make_sinks) is not available in this build")
        mqtt = dataclasses.replace(self.config.mqtt, enabled=True, url=self.opts.mqtt_url)
        # A scratch state dir: the sink's spool must not mix benchmark records into the agent's.
        scratch = tempfile.mkdtemp(prefix="edge-agent-bench-state-")
        config = dataclasses.replace(self.config, mqtt=mqtt, state_dir=scratch,
                                     output=dataclasses.replace(self.config.output, jsonl=None))
        period_ms = 1.5 * bare["p95"] + 5.0
        fps = round(1000.0 / period_ms, 3)
        self.step("end to end over MQTT {} ({:.1f} fps)".format(self.opts.mqtt_url, fps))
        from .benchmark_report import Subscriber

        sinks = make_sinks(config)
        sub = Subscriber(self.opts.mqtt_url, "{}/{}/+/detections".format(mqtt.prefix.rstrip("/"), config.device_id))
        try:
            for sink in sinks:
                sink.start({"state": "starting", "size": self.size})
            self._pipeline_run("e2e", 1, self.opts.warmup + self.opts.frames, fps=fps, sinks=sinks, config=config)
        finally:
            for sink in sinks:
                sink.close(5.0)
            latencies = sub.close(expected=self.opts.warmup + self.opts.frames)
            shutil.rmtree(scratch, ignore_errors=True)
        timed = latencies[self.opts.warmup:]
        return {"url": self.opts.mqtt_url, "frames": len(timed), "latency_ms": percentiles(timed)}

    def build_time(self):
        """Engine build time: from the manifest when built, else timed into a temp engines dir (onnxruntime)."""
        from .backends import resolve_backend_name
        from .engines import artifact, build

        backend = resolve_backend_name(self.config.backend)
        spec = artifact.spec_from_config(self.config, self.size, backend)
        _, manifest, _ = artifact.status(spec)
        if manifest is not None and manifest.get("build_time_s") is not None:
            return {"build_time_s": manifest["build_time_s"], "build_source": "manifest"}
        if backend != "onnxruntime":
            return {"build_time_s": None, "build_source": None}  # a TensorRT build takes minutes: not here
        self.step("timing the onnxruntime build into a temp engines dir")
        tmp = tempfile.mkdtemp(prefix="edge-agent-bench-engines-")
        try:
            t0 = time.time()
            _, manifest, _ = build.build(spec._replace(engines_dir=tmp), progress=lambda m: None, force=True)
            return {"build_time_s": manifest.get("build_time_s", round(time.time() - t0, 2)),
                    "build_source": "measured"}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _float_or_none(value):
    try:
        return round(float(value), 2)
    except (TypeError, ValueError):
        return None
