"""Offline side of the engines: build an artifact and its manifest, compile the kernels for its GPU.

Imported by ``build-engine`` and ``doctor`` only (the runtime's auto-build runs
``build_for_runtime`` in a child). Parsing and building run in a further child
(worker.py, through child.run_in_child) so a crashing parser cannot kill the caller;
the artifact and its manifest are committed together by one atomic rename each.
"""

import datetime
import json
import logging
import os
import time

from .. import __version__
from ..errors import EngineError
from . import child, worker
from .artifact import BuildSpec, cached_kernels, kernels_dir, manifest_path_of, status, wanted_manifest
from .files import commit_files, remove_quietly, sha256_file, stage_file

log = logging.getLogger("edge_agent.engines")

HEARTBEAT_S = 30.0  # a TensorRT build can be silent for minutes: say it is still going


def run_builder(target, job, emit, what="", label=""):
    """Run ``target(job, emit(phase, message))`` in a child; return its result or raise its AgentError.

    ``emit(line)`` receives the child's progress lines, prefixed with the elapsed time. A death
    by signal becomes one EngineError line naming the phase and the file.
    """
    start = time.time()
    phase = ["starting"]
    prefix = (label + ": ") if label else ""

    def on_event(event):
        phase[0] = event[0]
        emit("[{:6.1f}s] {}{}".format(time.time() - start, prefix, event[1]))

    def idle():
        emit("[{:6.1f}s] {}still {}".format(time.time() - start, prefix, phase[0]))

    try:
        return child.run_in_child(worker.run_job, {"target": _name(target), "job": job}, on_event,
                                  idle=idle, idle_s=HEARTBEAT_S)
    except child.ChildDied as e:
        if e.code < 0:
            raise EngineError("builder process died with signal {} ({}) while {} {}".format(
                -e.code, child.signal_name(-e.code), phase[0], what).rstrip())
        raise EngineError("builder process exited with status {} while {} {}".format(e.code, phase[0], what).rstrip())


def _name(target):
    return target if isinstance(target, str) else "{}:{}".format(target.__module__, target.__name__)


def build(spec, progress=None, force=False, writer=None, gate_required=True):
    """Build ``spec``'s artifact unless up to date; return (path, manifest, built: bool).

    ``progress(message)`` receives one line per event. A reduced-precision (fp16, int8) build
    passes the accuracy gate before it replaces anything (``accuracy_gate``); with
    ``gate_required`` False (the runtime's auto-build) a missing val split skips the gate with
    a warning instead of failing. Raises ModelError for a bad ONNX, EngineError for a failed
    build, AccuracyGateError for a refused one (the previous artifact and manifest stay untouched).
    """
    emit = progress or (lambda message: log.info("%s", message))
    path, manifest, reasons = status(spec)
    if manifest is not None and not force:
        return path, manifest, False
    reason = "forced" if (force and not reasons) else "; ".join(reasons)
    emit("{}: building {} artifact ({})".format(spec.size, spec.backend, reason))
    wanted = wanted_manifest(spec)
    os.makedirs(spec.engines_dir, exist_ok=True)
    if not os.access(spec.engines_dir, os.W_OK):
        raise EngineError("{}: engines dir not writable".format(spec.engines_dir))
    gate = spec.precision != "fp32"
    if gate:
        try:
            _check_val_dir(spec)
        except EngineError as e:
            if gate_required:
                raise
            gate = False
            emit("warning: accuracy gate skipped: {}".format(e))
    scratch = os.path.join(spec.engines_dir, ".{}.part-{}".format(os.path.basename(path), os.getpid()))
    start = time.time()
    try:
        result = run_builder(worker.build_job, dict(spec._asdict(), scratch=scratch), emit, what=spec.onnx,
                             label=spec.size)
        manifest = dict(wanted)
        manifest.update({
            "agent_version": __version__, "artifact": os.path.basename(path),
            "artifact_sha256": sha256_file(scratch), "artifact_bytes": os.path.getsize(scratch),
            "precision": {"requested": spec.precision, "built": result["precision_built"]},
            "inputs": result["inputs"], "outputs": result["outputs"], "profile": result.get("profile"),
            "builder_flags": result.get("builder_flags", []),
            "onnx_metadata": result.get("onnx_metadata", {}),
            "calib_cache_sha256": result.get("calib_cache_sha256"),
            "quantization": result.get("quantization"),
            "build_time_s": round(time.time() - start, 2),
            "built_at": datetime.datetime.utcnow().replace(microsecond=0).isoformat() + "Z",
        })
        for key in ("runtime", "device"):
            manifest[key] = dict(manifest[key], **result.get(key, {}))
        if gate:
            manifest["accuracy"] = accuracy_gate(spec, path, scratch, manifest, emit)
            manifest["build_time_s"] = round(time.time() - start, 2)
        manifest_tmp = stage_file(manifest_path_of(path), json.dumps(manifest, indent=2, sort_keys=True).encode(),
                                  writer)
        commit_files([(scratch, path), (manifest_tmp, manifest_path_of(path))])
    finally:
        remove_quietly(scratch)
    emit("{}: built {} in {:.1f}s ({}, {} bytes)".format(
        spec.size, path, manifest["build_time_s"], manifest["precision"]["built"], manifest["artifact_bytes"]))
    return path, manifest, True


def _check_val_dir(spec):
    """The gate's val split must be there before a build spends minutes; raises EngineError."""
    if not spec.val_dir or not os.path.isfile(os.path.join(spec.val_dir, "instances.json")) and not (
            os.path.isfile(spec.val_dir) and spec.val_dir.endswith(".json")):
        raise EngineError("--val-dir: no COCO split at {} (instances.json + images/): the accuracy gate of a {} "
                          "build measures on it".format(spec.val_dir, spec.precision))


def accuracy_gate(spec, path, scratch, manifest, emit):
    """Measure the new artifact ``scratch`` against the FP32 reference (agent.engines.gate, in a child);
    return the manifest's ``accuracy``, or raise AccuracyGateError naming the drop.

    Every backend comes here: a TensorRT engine is loaded by the TensorRT backend, which
    verifies it against its manifest, so the candidate's manifest is staged beside it meanwhile.
    """
    from ..config import load_config
    from .gate import AccuracyGateError, verdict

    staged = None
    if spec.backend == "tensorrt":
        staged = manifest_path_of(scratch)
        with open(staged, "w") as f:
            json.dump(manifest, f)
    job = {"config": spec.config or load_config(None, check_files=False), "size": spec.size, "backend": spec.backend,
           "precision": spec.precision, "reference": spec.onnx, "candidate": scratch, "val_dir": spec.val_dir,
           "val_images": spec.val_images}
    try:
        accuracy = run_builder("agent.engines.gate:measure_job", job, emit, what=scratch, label=spec.size)
    finally:
        if staged is not None:
            remove_quietly(staged)
    keeping = "the previous {} artifact".format(os.path.basename(path)) if os.path.isfile(path) else "fp32"
    refusal = verdict(accuracy, spec.max_map_drop, spec.accept_accuracy_loss, keeping)
    if refusal is not None:
        raise AccuracyGateError(refusal, accuracy)
    emit("{}: accuracy gate: {} mAP50-95 {:.3f} -> {:.3f} ({:+.3f}, limit {:.3f}){}".format(
        spec.size, spec.precision, accuracy["map50_95"]["fp32"], accuracy["map50_95"][spec.precision],
        -accuracy["drop"], spec.max_map_drop, "; loss accepted (--accept-accuracy-loss)" if accuracy["accepted_loss"]
        else ""))
    return accuracy


def compile_kernels_for(engines_dir, manifest, progress=None, nvcc=None):
    """Compile the CUDA kernels for a TensorRT engine's GPU into ``<engines_dir>/kernels``, once.

    The TensorRT backend loads them from there at start, so a deployed service needs no
    nvcc. Returns the paths, or None when the manifest names no GPU or nvcc is missing or
    fails (reported through ``progress``: the backend then compiles on first use, or runs
    the CPU post-processing path). ``nvcc`` None: kernels.build.find_nvcc (PATH, then
    $CUDA_HOME/bin and /usr/local/cuda/bin, which ``sudo``'s secure_path leaves out).
    """
    from ..kernels import build as kernel_build

    emit = progress or (lambda message: log.info("%s", message))
    cc = (manifest or {}).get("device", {}).get("compute_capability")
    if not cc:
        return None
    paths = cached_kernels(engines_dir, cc)
    if paths is not None:
        return paths
    cache = kernels_dir(engines_dir)
    emit("compiling the CUDA kernels for compute capability {} into {}".format(cc, cache))
    try:
        return kernel_build.compile_kernels(cache, cc, nvcc=nvcc)
    except kernel_build.KernelBuildError as e:
        emit("warning: CUDA kernels not compiled ({}); the service compiles them on first start if it "
             "finds nvcc, else post-processes on the CPU".format(str(e).splitlines()[0]))
        return None


def build_for_runtime(job, send):
    """A child's forced build of BuildSpec ``job`` for the runtime's auto-build; returns (path, manifest)."""
    path, manifest, _ = build(BuildSpec(**job), progress=send, force=True, gate_required=False)
    return path, manifest
