"""``size: auto``: the most accurate (model size, precision) that meets the latency budget / FPS target here.

The figures come from the benchmark report (``auto_size.report``, default
``<state_dir>/benchmark.json``, written by ``edge-agent benchmark``). A report is used
only if it was measured on this host, with this backend, for these exact models
(sha256 of each ONNX); otherwise the sizes are measured first (speed only, on a
synthetic frame: a few seconds) and the report saved.

- latency: the p50 end-to-end latency of the real Pipeline fed one frame at a time
  (capture to sink: what a real-time camera sees), compared with ``latency_budget_ms``;
- throughput: the pipelined FPS of one unpaced stream, compared with ``target_fps``;
- accuracy: mAP50-95 when the report has it for every candidate, else the model's
  GFLOPs as a proxy (bigger models of one family are more accurate), else parameters,
  else the ONNX file size (weights dominate it; needs no ``onnx`` package).

Candidates are (size, precision) pairs: each size's usual artifact, and its ONNX Runtime INT8
model where the benchmark measured one that passed the build's accuracy gate (report entry
``<size>@int8``); picking it sets ``onnxruntime.precision: int8``. If no pair meets the
constraints, the fastest one is picked with a WARNING.
"""

import dataclasses
import json
import logging
import os

from .errors import AgentError
from .publish.schema import SCHEMA_VERSION

log = logging.getLogger("edge_agent.autosize")

QUICK_FRAMES = 20
QUICK_WARMUP = 3


def report_path(config):
    """Where the benchmark report for ``size: auto`` lives."""
    return config.auto_size.report or os.path.join(config.state_dir, "benchmark.json")


def load_report(path):
    """The stored report, or None when missing or unreadable (logged)."""
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, IOError):
        return None
    except ValueError as e:
        log.warning("size auto: ignoring unreadable benchmark report %s: %s", path, e)
        return None
    # Version 2 changed detection records, not benchmark reports: a version-1 report still reads.
    version = report.get("schema_version") if isinstance(report, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SCHEMA_VERSION:
        log.warning("size auto: ignoring benchmark report %s: unknown schema_version", path)
        return None
    return report


def stale_reasons(report, config):
    """Why ``report`` does not describe this device, backend and these models ([] when it does)."""
    from .measure import environment
    from .engines.files import sha256_file

    here = environment(config)
    reasons = []
    env = report.get("environment", {})
    for key in ("hostname", "backend"):
        if env.get(key) != here[key]:
            reasons.append("{} {} -> {}".format(key, env.get(key), here[key]))
    for name, size in sorted(config.sizes.items()):
        entry = report.get("sizes", {}).get(name)
        if not entry or not entry.get("model") or not _latency(entry) or not _fps(entry):
            reasons.append("size {} not measured".format(name))
        elif entry["model"].get("sha256") != sha256_file(size.onnx):
            reasons.append("size {}: model changed".format(name))
    # INT8 models: each one built (and through the gate) measured, none measured that is gone.
    from .benchmark import plan

    wanted = {key for key, _, precision in plan(config, sorted(config.sizes)) if precision == "int8"}
    have = {key for key, e in (report.get("sizes") or {}).items() if "@" in key}
    for key in sorted(wanted - have):
        reasons.append("{} built but not measured".format(key))
    for key in sorted(have - wanted):
        reasons.append("{} measured but no longer built".format(key))
    for key in sorted(wanted & have):
        entry = report["sizes"][key]
        if not entry.get("model") or not _latency(entry) or not _fps(entry):
            reasons.append("{} not measured".format(key))
    return reasons


def measure(config, previous=None, progress=None):
    """Measure every configured size (speed only, synthetic frames), save and return the report.

    Accuracy of a previous report is kept for models whose sha256 (and artifact) is unchanged.
    ``progress``: as ``benchmark.run_benchmark``'s. Raises AgentError when a size cannot be measured.
    """
    from . import benchmark as bench

    sizes = sorted(config.sizes)
    log.info("size auto: measuring sizes %s on this device (no usable benchmark report)", ", ".join(sizes))
    options = bench.Options(dataset=None, frames=QUICK_FRAMES, warmup=QUICK_WARMUP, streams=(1,),
                            measure_build=False, accuracy=False)
    report = bench.run_benchmark(config, sizes, options, progress=progress, isolate=False)
    for name in report["sizes"]:  # each size, and '<size>@int8' where an INT8 model passed the gate
        old = ((previous or {}).get("sizes") or {}).get(name) or {}
        new = report["sizes"][name]
        if old.get("accuracy") and old.get("model") and new.get("model") \
                and old["model"].get("sha256") == new["model"].get("sha256") \
                and ("@" not in name or old["model"].get("engine_id") == new["model"].get("engine_id")):
            new["accuracy"] = old["accuracy"]
        if new.get("error"):
            raise AgentError("size auto: cannot measure size {}: {}".format(name, new["error"]))
    path = report_path(config)
    try:
        bench.save_report(report, path)
    except AgentError as e:
        log.warning("size auto: cannot save the benchmark report: %s", e)
    return report


def _latency(entry):
    try:
        return float(entry["latency"]["stages"]["total"]["p50"])
    except (KeyError, TypeError):
        return None


def _fps(entry):
    for run in entry.get("throughput") or []:
        if run.get("streams") == 1 and run.get("fps"):
            return float(run["fps"])
    return None


def _accuracy_key(entries):
    """(key function, what it ranks by): the first figure every entry has, of mAP50-95, GFLOPs,
    parameters (both need the ``onnx`` package, which a Jetson often lacks) and ONNX file size."""
    if all((e.get("accuracy") or {}).get("map50_95") is not None for e in entries.values()):
        return (lambda e: e["accuracy"]["map50_95"]), "mAP50-95"
    for key, label in (("gflops", "GFLOPs"), ("params", "parameters"), ("onnx_bytes", "ONNX file size")):
        if all((e.get("model") or {}).get(key) is not None for e in entries.values()):
            return (lambda e, key=key: e["model"][key]), label
    return (lambda e: 0), "nothing (no accuracy figure in the report)"


def eligible(entry):
    """Whether a report entry may be picked: fp32 (or TensorRT's engine), or a reduced precision
    whose build passed the accuracy gate (or had its loss accepted with --accept-accuracy-loss)."""
    if entry.get("precision", "fp32") == "fp32":
        return True
    gate = (entry.get("model") or {}).get("gate") or {}
    return bool(gate.get("passed") or gate.get("accepted_loss"))


def _gate_note(entry):
    gate = (entry.get("model") or {}).get("gate") or {}
    figures = gate.get("map50_95") or {}
    if entry.get("precision", "fp32") == "fp32" or not figures:
        return ""
    return " ({} passed the accuracy gate: mAP50-95 {:.3f} -> {:.3f})".format(
        entry["precision"], figures.get("fp32", float("nan")), figures.get(entry["precision"], float("nan")))


def split_key(key):
    """(size, precision) of a report entry key: 'accurate@int8' -> ('accurate', 'int8'), 'fast' -> ('fast', None)."""
    size, _, precision = key.partition("@")
    return size, precision or None


def pick(report, sizes, latency_budget_ms=0.0, target_fps=0.0):
    """(entry key, reason, met) from a report: the most accurate (size, precision) of ``sizes`` meeting
    the constraints, else the fastest (``met`` False). Keys: the size, or '<size>@int8'."""
    entries = {k: e for k, e in report["sizes"].items()
               if split_key(k)[0] in sizes and eligible(e)}
    notes, ok = {}, []
    for name, e in sorted(entries.items()):
        lat, fps = _latency(e), _fps(e)
        parts, good = [], True
        if latency_budget_ms:
            fits = lat is not None and lat <= latency_budget_ms
            parts.append("p50 {:.1f} ms {} budget {:g} ms".format(lat or float("nan"), "<=" if fits else ">",
                                                                  latency_budget_ms))
            good = good and fits
        if target_fps:
            fits = fps is not None and fps >= target_fps
            parts.append("{:.1f} FPS {} target {:g}".format(fps or 0.0, ">=" if fits else "<", target_fps))
            good = good and fits
        notes[name] = "{} {}{}".format(name, ", ".join(parts), _gate_note(e))
        if good:
            ok.append(name)
    rank, by = _accuracy_key(entries)
    if ok:
        # Ties (a proxy rank is the same for both precisions of a size) go to fp32.
        chosen = max(ok, key=lambda s: (rank(entries[s]), entries[s].get("precision", "fp32") == "fp32", s))
        others = [notes[s] for s in sorted(entries) if s != chosen]
        reason = "size auto: picked {} (most accurate by {} within constraints): {}".format(
            chosen, by, "; ".join([notes[chosen]] + others))
        return chosen, reason, True
    # Nothing fits: the fastest, by latency when there is a budget, else by FPS.
    if latency_budget_ms:
        chosen = min(entries, key=lambda s: (_latency(entries[s]) or float("inf"), s))
    else:
        chosen = max(entries, key=lambda s: (_fps(entries[s]) or 0.0, s))
    reason = "size auto: picked {} (fastest; no size meets the constraints): {}".format(
        chosen, "; ".join(notes[s] for s in sorted(entries)))
    return chosen, reason, False


def resolve(config):
    """(``config`` with a concrete size, why): ``size: auto`` decided here, before any pipeline
    exists (the service at start and on reload); any other size passes through with reason ''."""
    if config.size != "auto":
        return config, ""
    key, reason = choose_size_with_reason(config)
    size, precision = split_key(key)
    if precision is not None:
        config = dataclasses.replace(config, onnxruntime=dataclasses.replace(config.onnxruntime, precision=precision))
    return dataclasses.replace(config, size=size), reason


def choose_size_with_reason(config, report=None):
    """(entry key, one-line reason) for ``size: auto``: a size name, or '<size>@int8' for its INT8
    model (see ``split_key``); measures first when the report is stale.

    Raises AgentError when the sizes cannot be measured.
    """
    if report is None:
        path = report_path(config)
        stored = load_report(path)
        reasons = stale_reasons(stored, config) if stored is not None else ["no report at {}".format(path)]
        if reasons:
            log.info("size auto: benchmark report not usable (%s)", "; ".join(reasons))
            report = measure(config, previous=stored)
        else:
            report = stored
    budget, target = config.auto_size.latency_budget_ms, config.auto_size.target_fps
    size, reason, met = pick(report, sorted(config.sizes), budget, target)
    (log.info if met else log.warning)("%s", reason)
    return size, reason

