"""Runtime side of the engines: where artifacts live, whether one is valid here, and which to load.

Artifacts live in the engines dir, one per size and backend:
``<engines_dir>/<size>.<backend>.{engine|onnx}`` beside ``<...>.manifest.json``.
The manifest holds everything that makes the artifact valid (ONNX sha256, runtime
versions, GPU, precision requested and built, input profile, DLA core, calibration
cache, builder flags, artifact sha256). Building is the offline side (build.py): this
module never imports it; an auto-build runs it in a child process.
"""

import collections
import logging
import os
from typing import Any, Dict, Tuple

from ..config import data_path
from ..errors import BackendUnavailable, EngineError, ModelError
from .files import image_set, sha256_file
from .manifest import (ENVIRONMENT_LABELS, MANIFEST_SCHEMA, differences, manifest_problem, read_manifest, short,
                       shown)

log = logging.getLogger("edge_agent.engines")

EXTENSIONS = {"tensorrt": "engine", "onnxruntime": "onnx"}
ORT_OPT_LEVEL = "ORT_ENABLE_EXTENDED"  # not ALL: layout optimizations tie the model to this CPU
ORT_PROVIDERS = ["CPUExecutionProvider"]  # the optimized model must not depend on a GPU provider

# Options that shape a build; CLI flags and config fill them (see spec_from_config).
BuildSpec = collections.namedtuple(
    "BuildSpec",
    "size backend onnx engines_dir precision calib_dir calib_cache dla_core workspace_mb batch allow_slow_precision "
    "calib_method calib_images keep_float val_dir val_images max_map_drop accept_accuracy_loss config",
)
BuildSpec.__new__.__defaults__ = ("minmax", 32, ("auto",), None, 200, 0.02, False, None)


def fix_command(size, precision=None):
    """The command that rebuilds ``size``'s artifact (of ``precision`` when it has its own file)."""
    return "edge-agent build-engine --size {}{}".format(size, " --precision int8" if precision == "int8" else "")


def own_file(backend, precision):
    """Whether ``precision`` has its own artifact beside the fp32 one: ONNX Runtime's INT8 (QDQ) model.

    TensorRT keeps one engine per size, of the configured precision."""
    return backend == "onnxruntime" and precision == "int8"


def artifact_paths(engines_dir, size, backend, precision=None):
    """(artifact path, manifest path) of ``size`` built for ``backend``:
    ``<size>.<backend>.<ext>``, or ``<size>.onnxruntime.int8.onnx`` for ONNX Runtime's INT8."""
    base = os.path.join(engines_dir, "{}.{}".format(size, backend))
    if own_file(backend, precision):
        base += "." + precision
    return base + "." + EXTENSIONS[backend], base + ".manifest.json"


def manifest_path_of(path):
    """The manifest beside artifact ``path``."""
    base, _ = os.path.splitext(path)
    return base + ".manifest.json"


# (path, device, inode, size, mtime, ctime) -> sha256: a verified artifact is hashed once per
# process, not once per check (status, then the backend's load). ctime is in the key because
# no one can set it: any write, or a utime() hiding one, changes it.
_digests = {}  # type: Dict[Tuple[Any, ...], str]


def artifact_sha256(path):
    """sha256 of artifact ``path``, remembered while the file is unchanged; raises OSError."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _digests:
        _digests.clear()  # one entry per artifact is all a process needs; keep it small
        _digests[key] = sha256_file(path)
    return _digests[key]


# --- environment fingerprint ----------------------------------------------------------------


def l4t_release(path="/etc/nv_tegra_release"):
    """'R32.6.1' from JetPack's release file, or None off Jetson."""
    try:
        with open(path) as f:
            head = f.readline()
    except (OSError, IOError):
        return None
    # "# R32 (release), REVISION: 6.1, GCID: ..., BOARD: t186ref, ..."
    parts = [p.strip() for p in head.lstrip("# ").split(",")]
    major = parts[0].split(" ")[0] if parts else ""
    rev = ""
    for p in parts:
        if p.startswith("REVISION:"):
            rev = p.split(":", 1)[1].strip()
    return "{}.{}".format(major, rev) if major and rev else (major or None)


# backend -> its environment: the versions and GPU cannot change under a running process, and
# asking pycuda (cuda.init, the device's name and capability) costs each time.
_environments = {}  # type: Dict[str, Dict[str, Any]]


def runtime_environment(backend):
    """What the artifact depends on here: runtime versions and device (asked once per process);
    raises BackendUnavailable."""
    if backend not in _environments:
        _environments[backend] = _ask_environment(backend)
    return _environments[backend]


def _ask_environment(backend):
    if backend == "onnxruntime":
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailable("backend onnxruntime: not installed here ({})".format(e))
        return {
            "runtime": {"onnxruntime": ort.__version__, "providers": list(ORT_PROVIDERS),
                        "graph_optimization_level": ORT_OPT_LEVEL},
            "device": {},
        }
    from .. import trt_compat

    trt = trt_compat.import_tensorrt()
    try:
        import pycuda.driver as cuda
    except ImportError as e:
        raise BackendUnavailable("backend tensorrt: pycuda is not installed here ({})".format(e))
    cuda.init()
    dev = cuda.Device(0)
    return {
        "runtime": {"tensorrt": trt_compat.version_string(trt),
                    "cuda": ".".join(str(v) for v in cuda.get_version()),
                    "cuda_driver": cuda.get_driver_version()},
        "device": {"gpu": dev.name(), "compute_capability": "{}.{}".format(*dev.compute_capability()),
                   "l4t": l4t_release()},
    }


# --- specs and status -----------------------------------------------------------------------


def spec_from_config(config, size, backend, **overrides):
    """A BuildSpec for ``size`` from the config, with CLI overrides (None: keep the config's)."""
    if size not in config.sizes:
        raise EngineError("size {!r} is not configured (known: {})".format(size, ", ".join(sorted(config.sizes))))
    trt_cfg, qcfg = config.tensorrt, config.quantization
    ort = backend == "onnxruntime"
    precision = overrides.get("precision") or (config.onnxruntime.precision if ort else trt_cfg.precision)
    values = {
        "size": size, "backend": backend, "onnx": config.sizes[size].onnx, "engines_dir": config.engines_dir,
        "precision": precision,
        "calib_dir": (qcfg.calib_dir or data_path("data", "demo", "calib")) if ort else trt_cfg.calib_dir,
        "calib_cache": None, "dla_core": trt_cfg.dla_core,
        "workspace_mb": trt_cfg.workspace_mb, "batch": None, "allow_slow_precision": False,
        "calib_method": qcfg.calib_method, "calib_images": qcfg.calib_images, "keep_float": tuple(qcfg.keep_float),
        "val_dir": qcfg.val_dir or data_path("data", "demo", "val"), "val_images": qcfg.val_images,
        "max_map_drop": qcfg.max_map_drop, "accept_accuracy_loss": False, "config": config,
    }
    for key, value in overrides.items():
        if value is not None:
            values[key] = value
    values["keep_float"] = tuple(values["keep_float"])
    spec = BuildSpec(**values)
    if spec.backend == "onnxruntime" and spec.precision not in ("fp32", "int8"):
        raise EngineError("--precision {}: the onnxruntime backend builds fp32 or int8 (fp16 applies to tensorrt)"
                          .format(spec.precision))
    if spec.backend == "tensorrt" and spec.precision == "int8" and not (spec.calib_dir or spec.calib_cache):
        raise EngineError("precision int8 needs calibration images (tensorrt.calib_dir / --calib-dir) or --calib-cache")
    return spec._replace(onnx=os.path.abspath(spec.onnx) if spec.onnx else "",
                         engines_dir=os.path.abspath(spec.engines_dir),
                         calib_dir=os.path.abspath(spec.calib_dir) if spec.calib_dir else spec.calib_dir)


def default_calib_cache(spec):
    return spec.calib_cache or os.path.join(spec.engines_dir, "{}.int8-calib.cache".format(spec.size))


def check_onnx_file(path, size):
    """Cheap checks in this process before a child parses the file; raises ModelError."""
    if not path:
        raise ModelError("sizes.{}.onnx: no model path configured".format(size))
    if not os.path.isfile(path):
        raise ModelError("{}: ONNX model not found".format(path))
    if os.path.getsize(path) == 0:
        raise ModelError("{}: not an ONNX model (empty file)".format(path))


def wanted_manifest(spec):
    """The fingerprint fields a valid artifact for ``spec`` must carry (before building)."""
    check_onnx_file(spec.onnx, spec.size)
    env = runtime_environment(spec.backend)
    trt = spec.backend == "tensorrt"
    calib_cache = default_calib_cache(spec) if trt and spec.precision == "int8" else None
    return {
        "schema_version": MANIFEST_SCHEMA, "size": spec.size, "backend": spec.backend,
        "onnx_path": spec.onnx, "onnx_sha256": sha256_file(spec.onnx),
        "runtime": env["runtime"], "device": env["device"],
        "precision": {"requested": spec.precision},
        "batch_requested": list(spec.batch) if (trt and spec.batch) else None,
        "dla_core": spec.dla_core if trt else None,
        "workspace_mb": spec.workspace_mb if trt else None,
        "calib_cache_sha256": sha256_file(calib_cache) if calib_cache and os.path.isfile(calib_cache) else None,
        "quantization_requested": quantization_requested(spec),
    }


def quantization_requested(spec):
    """What an ONNX Runtime INT8 build was asked for (method, images, float blocks, calibration set
    hash: None where the calib folder is absent, as on a device that only runs the model); else None."""
    if not own_file(spec.backend, spec.precision):
        return None
    _, digest = image_set(spec.calib_dir, spec.calib_images)
    return {"method": spec.calib_method, "calib_images": spec.calib_images, "keep_float": list(spec.keep_float),
            "calibration_sha256": digest}


def _invalid(path, reason, size):
    error = EngineError("{}: {}; run: {}".format(path, reason, fix_command(size, _precision_of(path))))
    setattr(error, "reason", reason)  # status() reports the reason without the path and fix
    return error


def _precision_of(path):
    return "int8" if os.path.basename(path).split(".")[2:3] == ["int8"] else None


def verify_artifact(path):
    """Check an artifact before loading it; return its manifest, or raise EngineError.

    Missing, truncated or tampered (sha256), or built for another runtime version or
    GPU: the one-line message says what differs and which command fixes it.
    """
    manifest_path = manifest_path_of(path)
    size = os.path.basename(path).split(".")[0]
    if not os.path.isfile(path):
        raise _invalid(path, "artifact missing", size)
    if not os.path.isfile(manifest_path):
        raise _invalid(path, "manifest {} missing".format(os.path.basename(manifest_path)), size)
    try:
        manifest = read_manifest(manifest_path)
    except EngineError as e:
        raise _invalid(path, str(e).replace(manifest_path + ": ", "manifest "), size)
    if manifest.get("schema_version") != MANIFEST_SCHEMA:
        raise _invalid(path, "manifest schema {} → {}".format(
            shown(manifest.get("schema_version"), quote=True), MANIFEST_SCHEMA), size)
    problem = manifest_problem(manifest)
    # <size>.<backend>.<ext>: a manifest naming another backend would be checked against the wrong runtime.
    backends = [b for b in EXTENSIONS if os.path.basename(path).split(".")[1:2] == [b]] or sorted(EXTENSIONS)
    if problem is None and manifest["backend"] not in backends:
        problem = "backend: expected {}, got {}".format(" or ".join(map(repr, backends)),
                                                        shown(manifest["backend"], quote=True))
    if problem is not None:
        raise _invalid(path, "{}: {}".format(os.path.basename(manifest_path), problem), size)
    actual_bytes = os.path.getsize(path)
    if actual_bytes != manifest.get("artifact_bytes"):
        raise _invalid(path, "truncated or modified ({} bytes, manifest says {})".format(
            actual_bytes, manifest.get("artifact_bytes")), size)
    digest = artifact_sha256(path)
    if digest != manifest.get("artifact_sha256"):
        raise _invalid(path, "sha256 mismatch, tampered or corrupt ({} vs manifest {})".format(
            short(digest), short(manifest.get("artifact_sha256"))), size)
    here = runtime_environment(manifest["backend"])
    diff = differences(manifest, here, labels=ENVIRONMENT_LABELS)
    if diff:
        raise _invalid(path, "built for another runtime or GPU: {}".format(", ".join(diff)), size)
    return manifest


def status(spec):
    """(artifact path, manifest or None, [reasons it must be rebuilt]) for ``spec``."""
    path, manifest_path = artifact_paths(spec.engines_dir, spec.size, spec.backend, spec.precision)
    wanted = wanted_manifest(spec)
    if not os.path.isfile(path) or not os.path.isfile(manifest_path):
        return path, None, ["no artifact yet" if not os.path.isfile(path) else "manifest missing"]
    try:
        manifest = verify_artifact(path)
    except EngineError as e:
        return path, None, [getattr(e, "reason", str(e))]
    requested, had = wanted.get("quantization_requested"), manifest.get("quantization_requested")
    if requested and isinstance(had, dict) and requested.get("calibration_sha256") is None:
        # No calibration images here (a device that only runs the model): nothing to compare them with.
        requested["calibration_sha256"] = had.get("calibration_sha256")
    reasons = differences(manifest, wanted)
    return path, (None if reasons else manifest), reasons


def kernels_dir(engines_dir):
    """Where build-engine puts the CUDA kernels for the engines of ``engines_dir``."""
    return os.path.join(engines_dir, "kernels")


def cached_kernels(engines_dir, compute_capability):
    """Paths of the kernels compiled beside the engines for this compute capability, or None."""
    from ..kernels import build as kernel_build

    try:
        return kernel_build.load_kernels(compute_capability, cache_dir=kernels_dir(engines_dir),
                                         compile_if_missing=False)
    except kernel_build.KernelBuildError:
        return None


def artifact_for(config, size_name, backend_name, on_building=None):
    """(path, manifest or None) of the model the backend should load for ``size_name``.

    tensorrt: a verified, up-to-date engine; a missing or stale one raises EngineError
    unless ``config.tensorrt.auto_build``, then it is built (``on_building(message)`` is
    called first, so a service can extend its start timeout). onnxruntime: the verified
    optimized model if there is one, else the ONNX itself with manifest None (logged at
    WARNING when an optimized model exists but fails verification); with
    ``onnxruntime.precision: int8`` the verified INT8 model or EngineError (no silent fp32).
    """
    from .child import run_in_child

    spec = spec_from_config(config, size_name, backend_name)
    path, manifest, reasons = status(spec)
    if manifest is not None:
        return path, manifest
    reason = "; ".join(reasons)
    if own_file(backend_name, spec.precision):
        # INT8 was asked for: running the fp32 ONNX instead would lower it silently.
        raise EngineError("{}: int8 model {} not usable ({}); run: {}".format(
            size_name, path, reason, fix_command(size_name, spec.precision)))
    if backend_name == "onnxruntime":
        # An optimized model that fails verification (tampered, stale, bad manifest) is never
        # loaded; the configured ONNX is what it was built from, so running that is safe, only
        # slower. Say so at WARNING: the artifact is there and the user expects it to be used.
        if os.path.isfile(path):
            log.warning("%s: not loading %s (%s); running %s instead; run: %s", size_name, path, reason,
                        spec.onnx, fix_command(size_name))
        else:
            log.info("%s: using %s directly (no optimized model: %s)", size_name, spec.onnx, reason)
        return spec.onnx, None
    if not config.tensorrt.auto_build:
        raise EngineError("{}: engine {} not usable ({}); run: {}".format(size_name, path, reason, fix_command(size_name)))
    message = "{}: building TensorRT engine ({}); this can take minutes".format(size_name, reason)
    log.warning("%s", message)
    if on_building is not None:
        on_building(message)
    # In a child: the build side (parser, builder, kernel compiler) stays out of this process.
    path, manifest = run_in_child("agent.engines.build:build_for_runtime", spec._asdict(), _log_event)
    return path, manifest


def _log_event(line):
    log.info("%s", line)
