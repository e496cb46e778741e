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

import datetime
import logging
import os
import shutil

from .accuracy import MAP_CONF_THRESHOLD, MAP_MAX_DETECTIONS
from .errors import AgentError
from .measure import (SPEED_STAGES, Interrupted,  # noqa: F401 (API)
                      Measurer, Options, environment, synthetic_folder)
from .publish.schema import SCHEMA_VERSION

log = logging.getLogger("edge_agent.benchmark")


def empty_size_report(size, precision="fp32"):
    return {"size": size, "precision": precision, "complete": False, "model": None, "accuracy": None, "baseline": None, "latency": None,
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

    config, size, options, log_level, precision = job
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(types.SimpleNamespace(put_nowait=send))]
    root.setLevel(log_level)
    _quiet_libraries()

    def emit(*event):
        if stopping():
            raise KeyboardInterrupt  # unwinds through the Measurer's finally blocks: pipelines stop
        send(event)

    try:
        Measurer(config, size, options, emit, precision).run()
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


def _measure_isolated(config, size, options, on_event, precision=None):
    """Measure ``size`` in a child process; forwards its events. KeyboardInterrupt: stop the child
    (keeping the results it sends back while stopping), then re-raise."""
    from .engines.child import ChildDied, run_in_child

    def forward(event):
        if isinstance(event, logging.LogRecord):
            logging.getLogger(event.name).handle(event)
        else:
            on_event(event)

    job = (config, size, options, logging.getLogger().getEffectiveLevel(), precision)
    try:
        last = run_in_child(_measure_child, job, forward, stop_grace_s=5.0, ignore_sigint=True)
    except ChildDied as e:
        last = ("error", "{}: measuring process ended (exit code {})".format(size, e.code))
    except AgentError as e:  # the child could not start the measurement (e.g. the job did not load)
        last = ("error", "{}: {}".format(size, e))
    on_event(last)


def _measure_inline(config, size, options, on_event, precision=None):
    try:
        Measurer(config, size, options, lambda *e: on_event(e), precision).run()
        on_event(("done", None))
    except AgentError as e:
        on_event(("error", str(e)))


def plan(config, sizes):
    """[(entry key, size, precision)] to measure: each size's usual artifact (fp32 on ONNX Runtime,
    TensorRT's engine of its configured precision), then, on ONNX Runtime, its INT8 model where one
    is built, valid and passed the accuracy gate (or had its loss accepted)."""
    from .engines import artifact
    from .measure import backend_of, entry_key

    backend = backend_of(config)
    out = []
    for size in sizes:
        out.append((entry_key(size), size, "fp32" if backend == "onnxruntime" else None))
        if backend != "onnxruntime":
            continue
        try:
            _, manifest, _ = artifact.status(artifact.spec_from_config(config, size, backend, precision="int8"))
        except AgentError:
            manifest = None
        gate = (manifest or {}).get("accuracy") or {}
        if manifest is not None and (gate.get("passed") or gate.get("accepted_loss")):
            out.append((entry_key(size, "int8"), size, "int8"))
    return out


def new_report(config, sizes, options, entries=None):
    """An empty report for ``sizes``: the header, and one incomplete entry per (size, precision) of
    ``entries`` (default: ``plan(config, sizes)``)."""
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
        "sizes": {key: empty_size_report(size, precision or "fp32")
                  for key, size, precision in (entries if entries is not None else plan(config, sizes))},
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
    entries = plan(config, sizes)
    report = report or new_report(config, sizes, options, entries)
    measure = _measure_isolated if isolate else _measure_inline
    restore = _quiet_libraries() if not isolate else (lambda: None)
    try:
        for key, size, precision in entries:
            entry = report["sizes"][key]

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
                    log.error("%s: %s", key, event[1])

            measure(config, size, options, on_event, precision)
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
