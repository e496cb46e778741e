"""The fast-vs-accurate trade-off: accuracy, speed and cost of each model size on this device.

Everything goes through the production path: the Detector the agent runs
(``agent.detect.open_detector``: CPU letterbox + backend + decode + NMS, or the fused
GPU path), and speed is measured on the real ``Pipeline`` (its threads, queues and
sinks). Per size:

- baseline: the bare ``backend.infer(blob)`` loop, same model and threads;
- latency: a Pipeline fed one frame at a time (source paced well below the
  measured speed, so nothing queues): per-stage and end-to-end p50/p95/p99;
- throughput: the Pipeline on an unpaced folder source (``realtime: false``), with
  1..N cameras sharing one model; FPS after warm-up;
- accuracy: mAP50 and mAP50-95 (COCO) with conf 0.001 and 300 detections per image
  (as Ultralytics' val), not the production thresholds that speed runs use;
- cost: parameters and GFLOPs from the ONNX graph, engine build time, training time
  (ONNX metadata ``train_time_s``), peak RSS of the measuring process.

Warm-up frames are excluded from every statistic and reported separately. With
``isolate`` each size is measured in a child process (agent.engines.child), so its peak memory
is its own; results stream back section by section, so an interrupt keeps them.
"""

import collections
import dataclasses
import datetime
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
from .publish.schema import SCHEMA_VERSION
from .timing import percentiles

log = logging.getLogger("edge_agent.benchmark")

MAP_CONF_THRESHOLD = 0.001  # mAP needs the whole precision-recall curve (Ultralytics val uses 0.001)
MAP_MAX_DETECTIONS = 300
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
    from .backends.base import resolve_backend_name

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

    def __init__(self, config, size, options, emit):
        self.config = dataclasses.replace(config, size=size, max_frames=0)
        self.size = size
        self.opts = options
        self.emit = emit

    def step(self, text):
        self.emit("step", "{}: {}".format(self.size, text))

    def tick(self, label, done, total):
        """Progress, at most 10 events a second (the events must not disturb what is timed)."""
        t = time.monotonic()
        if done >= total or t - getattr(self, "_last_tick", 0.0) >= 0.1:
            self._last_tick = t
            self.emit("tick", "{} {}".format(self.size, label), done, total)

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
            info = {"onnx": onnx_path, "sha256": sha256_file(onnx_path), "backend": model.backend_name,
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
        """The bare backend loop on one preprocessed blob: the runtime's own speed."""
        import cv2

        from .preprocess import Letterbox

        self.step("baseline: bare backend.infer loop")
        image = cv2.imread(self._first_image())
        blob, _ = Letterbox(*model.input_size).run(image)
        warm, times = [], []
        total = self.opts.warmup + self.opts.frames
        for i in range(total):
            t0 = time.perf_counter()
            model.backend.infer(blob)
            ms = (time.perf_counter() - t0) * 1000.0
            (warm if i < self.opts.warmup else times).append(ms)
            self.tick("baseline", i + 1, total)
        self.bare = percentiles(times)
        # The whole frame path once per frame, to pace the single-frame pipeline run below it.
        seq = []
        for _ in range(min(10, self.opts.frames)):
            t0 = time.perf_counter()
            model.detect(image)
            seq.append((time.perf_counter() - t0) * 1000.0)
        self.sequential = percentiles(seq)
        return {"frames": len(times), "infer_ms": self.bare, "fps": round(1000.0 / self.bare["mean"], 2),
                "warmup_ms": [round(v, 3) for v in warm]}

    def accuracy(self, model):
        """mAP of the production pre/post-processing with mAP thresholds over the dataset."""
        import cv2

        from . import coco

        dataset = coco.open_dataset(self.opts.dataset)
        evaluator = coco.evaluator_name()
        images = dataset.images[:self.opts.frames] if self.opts.frames else dataset.images
        detection = dataclasses.replace(self.config.detection, conf_threshold=MAP_CONF_THRESHOLD,
                                        max_detections=MAP_MAX_DETECTIONS, top_k=max(self.config.detection.top_k,
                                                                                      30000), classes=[])
        cats = dataset.category_map(model.labels)
        results = []
        self.step("accuracy on {} images of {} ({})".format(len(images), dataset.annotations, evaluator))
        production, model.detection = model.detection, detection
        try:
            for i, im in enumerate(images):
                image = cv2.imread(dataset.image_path(im))
                if image is None:
                    raise AgentError("--dataset: cannot read image {}".format(dataset.image_path(im)))
                found = model.detect(image)
                results.extend(coco.to_results(im["id"], found.boxes, found.scores, found.class_ids, cats))
                self.tick("accuracy", i + 1, len(images))
        finally:
            model.detection = production
        m5095, m50 = coco.evaluate(dataset, results, [im["id"] for im in images])
        return {"map50": round(m50, 4), "map50_95": round(m5095, 4), "images": len(images), "evaluator": evaluator,
                "conf_threshold": MAP_CONF_THRESHOLD, "iou_threshold": detection.iou_threshold,
                "max_detections": MAP_MAX_DETECTIONS}

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
                self.size, label, len(collect.items), total))
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
        from .backends.base import resolve_backend_name
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


def empty_size_report(size):
    return {"size": size, "complete": False, "model": None, "accuracy": None, "baseline": None, "latency": None,
            "throughput": [], "e2e": None, "build": None, "peak_rss_mb": None, "overhead": None, "error": None}


def apply_event(entry, key, value):
    """Fold one ('result', key, value) event into a size's report entry."""
    entry[key] = value
    base, lat, thr = entry.get("baseline"), entry.get("latency"), entry.get("throughput")
    if base:
        ratio = {"fps_ratio": None, "latency_ratio": None}
        one = [r for r in thr or [] if r["streams"] == 1 and r.get("fps")]
        if one:
            ratio["fps_ratio"] = round(one[0]["fps"] / base["fps"], 3)
        if lat and lat["stages"].get("total"):
            ratio["latency_ratio"] = round(lat["stages"]["total"]["p50"] / base["infer_ms"]["p50"], 3)
        entry["overhead"] = ratio


# --- running all sizes ----------------------------------------------------------------------------


def _peak_rss_mb():
    import resource

    # Linux reports ru_maxrss in KiB.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def _measure_child(job, send):
    """Entry of the child (agent.engines.child) that measures one size; returns the last event.

    Log records and events go back through ``send``. The child ignores SIGINT (a terminal's
    Ctrl-C reaches the whole process group): the parent alone decides, and asks it to stop.
    """
    import logging.handlers
    import types

    from .engines.child import stopping

    config, size, options, log_level = job
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(types.SimpleNamespace(put_nowait=send))]
    root.setLevel(log_level)
    _quiet_libraries()

    def emit(*event):
        if stopping():
            raise KeyboardInterrupt  # unwinds through the Measurer's finally blocks: pipelines stop
        send(event)

    try:
        Measurer(config, size, options, emit).run()
        send(("result", "peak_rss_mb", _peak_rss_mb()))
        return ("done", None)
    except KeyboardInterrupt:
        send(("result", "peak_rss_mb", _peak_rss_mb()))
        return ("interrupted", None)
    except AgentError as e:
        return ("error", str(e))
    except Exception as e:
        log.exception("%s: benchmark failed", size)
        return ("error", "{}: {}".format(type(e).__name__, e))


def _quiet_libraries():
    """Raise the agent's per-stage loggers to WARNING; returns a function restoring them.

    Each Pipeline logs its start and each model load: noise in a benchmark's one-line-per-step log.
    """
    loggers = [logging.getLogger(name) for name in ("edge_agent.pipeline", "edge_agent.backends",
                                                    "edge_agent.engines", "edge_agent.sources",
                                                    "edge_agent.postprocess")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)

    def restore():
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)

    return restore


def _measure_isolated(config, size, options, on_event):
    """Measure ``size`` in a child process; forwards its events. KeyboardInterrupt: stop the child
    (keeping the results it sends back while stopping), then re-raise."""
    from .engines.child import ChildDied, run_in_child

    def forward(event):
        if isinstance(event, logging.LogRecord):
            logging.getLogger(event.name).handle(event)
        else:
            on_event(event)

    job = (config, size, options, logging.getLogger().getEffectiveLevel())
    try:
        last = run_in_child(_measure_child, job, forward, stop_grace_s=5.0, ignore_sigint=True)
    except ChildDied as e:
        last = ("error", "{}: measuring process ended (exit code {})".format(size, e.code))
    except AgentError as e:  # the child could not start the measurement (e.g. the job did not load)
        last = ("error", "{}: {}".format(size, e))
    on_event(last)


def _measure_inline(config, size, options, on_event):
    try:
        Measurer(config, size, options, lambda *e: on_event(e)).run()
        on_event(("done", None))
    except AgentError as e:
        on_event(("error", str(e)))


def new_report(config, sizes, options):
    """An empty report for ``sizes``: the header, and one incomplete entry per size."""
    from . import __version__

    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.utcnow().replace(microsecond=0).isoformat() + "Z",
        "agent_version": __version__,
        "environment": environment(config),
        "dataset": os.path.abspath(options.dataset) if options.dataset else None,
        "options": {"frames": options.frames, "warmup": options.warmup, "streams": list(options.streams),
                    "map_conf_threshold": MAP_CONF_THRESHOLD, "map_max_detections": MAP_MAX_DETECTIONS,
                    "conf_threshold": config.detection.conf_threshold, "iou_threshold": config.detection.iou_threshold,
                    "mqtt_url": options.mqtt_url},
        "interrupted": False,
        "sizes": {s: empty_size_report(s) for s in sizes},
    }


def run_benchmark(config, sizes, options, progress=None, isolate=True, report=None):
    """Measure ``sizes``; return the report dict (schema ``agent/schemas/benchmark.schema.json``).

    ``progress(event)`` sees every event. A size that fails gets its ``error`` and the
    run continues. On KeyboardInterrupt the report (``interrupted: true``, filled so far)
    is attached to the raised Interrupted as ``.report``. Raises ConfigError for an
    unknown size.
    """
    from .errors import ConfigError

    for s in sizes:
        if s not in config.sizes:
            raise ConfigError("--size: {!r} is not a configured size (known: {})".format(s, ", ".join(sorted(config.sizes))))
    tmp_source = None
    if options.source is None:
        images = _dataset_images(options.dataset)
        if images is None:
            tmp_source = synthetic_folder()
        options = options._replace(source=images or tmp_source)
    report = report or new_report(config, sizes, options)
    measure = _measure_isolated if isolate else _measure_inline
    restore = _quiet_libraries() if not isolate else (lambda: None)
    try:
        for size in sizes:
            entry = report["sizes"][size]

            def on_event(event, entry=entry):
                kind = event[0]
                if progress is not None:
                    progress(event)
                if kind == "result":
                    apply_event(entry, event[1], event[2])
                elif kind == "step":
                    log.info("%s", event[1])
                elif kind == "done":
                    entry["complete"] = True
                elif kind == "error":
                    entry["error"] = event[1]
                    log.error("%s: %s", size, event[1])

            measure(config, size, options, on_event)
    except KeyboardInterrupt:
        report["interrupted"] = True
        err = Interrupted("benchmark interrupted; partial results kept")
        err.report = report
        raise err
    finally:
        restore()
        if tmp_source:
            shutil.rmtree(tmp_source, ignore_errors=True)
    return report


def _dataset_images(dataset):
    if not dataset:
        return None
    from .coco import open_dataset

    return open_dataset(dataset).image_dir


def save_report(report, path):
    """Write the report as JSON atomically (creating the folder)."""
    import json

    from .engines.files import atomic_write

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # Not sort_keys: the order of ``sizes`` is the table's column order.
    atomic_write(path, (json.dumps(report, indent=2) + "\n").encode("utf-8"))


from .benchmark_report import format_table, plot  # noqa: E402,F401  (the command's and tradeoff.py's API)
