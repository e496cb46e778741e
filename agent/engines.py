"""ONNX -> engine per model size: a pure build function, a fingerprint manifest, a cache.

Artifacts live in the engines dir, one per size and backend:
``<engines_dir>/<size>.<backend>.{engine|onnx}`` beside ``<...>.manifest.json``.
The manifest holds everything that makes the artifact valid (ONNX sha256,
runtime versions, GPU, precision requested and built, input profile, DLA core,
calibration cache, builder flags, artifact sha256). Parsing and building run in a
child process (agent.engine_worker) so a crashing parser cannot kill the caller.
Writes are atomic: temp file in the same dir, fsync, rename, fsync of the dir.
"""

import collections
import datetime
import errno
import hashlib
import json
import logging
import os
import time
from typing import Any, Dict

from . import __version__
from .errors import BackendUnavailable, EngineError, ModelError

log = logging.getLogger("edge_agent.engines")

MANIFEST_SCHEMA = 1
EXTENSIONS = {"tensorrt": "engine", "onnxruntime": "onnx"}
ORT_OPT_LEVEL = "ORT_ENABLE_EXTENDED"  # not ALL: layout optimizations tie the model to this CPU
ORT_PROVIDERS = ["CPUExecutionProvider"]  # the optimized model must not depend on a GPU provider

# Options that shape a build; CLI flags and config fill them (see spec_from_config).
BuildSpec = collections.namedtuple(
    "BuildSpec",
    "size backend onnx engines_dir precision calib_dir calib_cache dla_core workspace_mb batch allow_slow_precision",
)


def fix_command(size):
    """The command that rebuilds ``size``'s artifact."""
    return "edge-agent build-engine --size {}".format(size)


def artifact_paths(engines_dir, size, backend):
    """(artifact path, manifest path) of ``size`` built for ``backend``."""
    base = os.path.join(engines_dir, "{}.{}".format(size, backend))
    return base + "." + EXTENSIONS[backend], base + ".manifest.json"


def sha256_file(path, chunk=1 << 20):
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


# --- atomic writes --------------------------------------------------------------------------


def _default_writer(f, data):
    f.write(data)


def fsync_dir(dirpath):
    """fsync a directory so a rename in it survives a power cut."""
    fd = os.open(dirpath or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stage_file(path, data, writer=None):
    """Write ``data`` to a temp file beside ``path``, flushed and fsynced; return its path.

    On any failure (ENOSPC included) the temp file is removed and EngineError is raised.
    """
    dirpath = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(dirpath, ".{}.tmp-{}-{}".format(os.path.basename(path), os.getpid(), os.urandom(3).hex()))
    try:
        with open(tmp, "wb") as f:
            (writer or _default_writer)(f, data)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, IOError) as e:
        _remove_quietly(tmp)
        raise EngineError("cannot write {}: {}".format(path, _os_reason(e)))
    except BaseException:
        _remove_quietly(tmp)
        raise
    return tmp


def commit_files(pairs):
    """Rename staged temp files onto their targets ``[(tmp, path)]``, then fsync the dirs."""
    try:
        for tmp, path in pairs:
            os.rename(tmp, path)
    except OSError as e:
        for tmp, _ in pairs:
            _remove_quietly(tmp)
        raise EngineError("cannot rename into {}: {}".format(pairs[0][1], _os_reason(e)))
    for d in sorted(set(os.path.dirname(os.path.abspath(p)) for _, p in pairs)):
        fsync_dir(d)


def atomic_write(path, data, writer=None):
    """Replace ``path`` with ``data`` atomically; the old file stays intact on failure."""
    commit_files([(stage_file(path, data, writer), path)])


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _os_reason(e):
    if getattr(e, "errno", None) == errno.ENOSPC:
        return "no space left on device"
    return e.strerror or str(e)


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


def runtime_environment(backend):
    """What the artifact depends on here: runtime versions and device; raises BackendUnavailable."""
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
    from . import trt_compat

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


# Fields whose change invalidates an artifact: (label, getter, short-hash?).
_COMPARED = [
    ("schema_version", lambda m: m.get("schema_version"), False),
    ("onnx_sha256", lambda m: m.get("onnx_sha256"), True),
    ("TensorRT", lambda m: m.get("runtime", {}).get("tensorrt"), False),
    ("CUDA", lambda m: m.get("runtime", {}).get("cuda"), False),
    ("onnxruntime", lambda m: m.get("runtime", {}).get("onnxruntime"), False),
    ("providers", lambda m: m.get("runtime", {}).get("providers"), False),
    ("graph_optimization_level", lambda m: m.get("runtime", {}).get("graph_optimization_level"), False),
    ("GPU", lambda m: m.get("device", {}).get("gpu"), False),
    ("compute capability", lambda m: m.get("device", {}).get("compute_capability"), False),
    ("L4T", lambda m: m.get("device", {}).get("l4t"), False),
    ("precision", lambda m: m.get("precision", {}).get("requested"), False),
    ("batch profile", lambda m: m.get("batch_requested"), False),
    ("dla_core", lambda m: m.get("dla_core"), False),
    ("workspace_mb", lambda m: m.get("workspace_mb"), False),
    ("calib_cache_sha256", lambda m: m.get("calib_cache_sha256"), True),
]
_ENVIRONMENT_LABELS = ("TensorRT", "CUDA", "onnxruntime", "providers", "GPU", "compute capability", "L4T")


def _shown(value, limit=80, quote=False):
    """``value`` for a one-line message: a printable string as is (or quoted), else its repr; clipped.

    Manifests can be hand-edited or corrupt: a newline or a megabyte in a field must not
    turn the one-line reason into many.
    """
    text = value if isinstance(value, str) and value.isprintable() and not quote else repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _short(value):
    return _shown(value, 9)  # a sha256: its first 8 digits


def differences(old, new, labels=None):
    """Human-readable reasons why manifest ``old`` does not match ``new``: ['TensorRT 8.2.1 → 8.5.2']."""
    out = []
    for label, get, short in _COMPARED:
        if labels is not None and label not in labels:
            continue
        a, b = get(old), get(new)
        if a == b:
            continue
        if short:
            out.append("{} changed ({}→{})".format(label, _short(a), _short(b)))
        else:
            out.append("{} {} → {}".format(label, _shown(a), _shown(b)))
    return out


# --- specs and status -----------------------------------------------------------------------


def spec_from_config(config, size, backend, **overrides):
    """A BuildSpec for ``size`` from the config, with CLI overrides (None: keep the config's)."""
    if size not in config.sizes:
        raise EngineError("size {!r} is not configured (known: {})".format(size, ", ".join(sorted(config.sizes))))
    trt_cfg = config.tensorrt
    values = {
        "size": size, "backend": backend, "onnx": config.sizes[size].onnx, "engines_dir": config.engines_dir,
        "precision": trt_cfg.precision if backend == "tensorrt" else "fp32",
        "calib_dir": trt_cfg.calib_dir, "calib_cache": None, "dla_core": trt_cfg.dla_core,
        "workspace_mb": trt_cfg.workspace_mb, "batch": None, "allow_slow_precision": False,
    }
    for key, value in overrides.items():
        if value is not None:
            values[key] = value
    spec = BuildSpec(**values)
    if spec.backend == "onnxruntime" and spec.precision != "fp32":
        raise EngineError("--precision {}: the onnxruntime backend builds fp32 only (precision applies to tensorrt)"
                          .format(spec.precision))
    if spec.backend == "tensorrt" and spec.precision == "int8" and not (spec.calib_dir or spec.calib_cache):
        raise EngineError("precision int8 needs calibration images (tensorrt.calib_dir / --calib-dir) or --calib-cache")
    return spec._replace(onnx=os.path.abspath(spec.onnx) if spec.onnx else "",
                         engines_dir=os.path.abspath(spec.engines_dir))


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
    }


def read_manifest(manifest_path):
    """The manifest as a dict; raises EngineError when missing or unreadable."""
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (OSError, IOError):
        raise EngineError("{}: manifest missing".format(manifest_path))
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        raise EngineError("{}: manifest is not valid JSON ({})".format(manifest_path, e))
    if not isinstance(manifest, dict):
        raise EngineError("{}: manifest is not a JSON object".format(manifest_path))
    return manifest


# The manifest's shape: (field, expected kind, required). Code indexes into these fields
# (precision.built, runtime.*, device.*, onnx_metadata): a hand-edited or corrupt manifest
# must be a named reason to rebuild, not an AttributeError. Parents come before children.
_SHAPE = (
    ("backend", "a string", True), ("artifact_bytes", "an integer", True), ("artifact_sha256", "a string", True),
    ("onnx_sha256", "a string", True), ("runtime", "a mapping", True), ("device", "a mapping", True),
    ("precision", "a mapping", True), ("precision.requested", "a string", True),
    ("precision.built", "a string", True), ("onnx_metadata", "a mapping", False), ("inputs", "a list", False),
    ("outputs", "a list", False), ("builder_flags", "a list", False), ("size", "a string", False),
    ("batch_requested", "a list or null", False), ("dla_core", "an integer or null", False),
    ("workspace_mb", "an integer or null", False), ("calib_cache_sha256", "a string or null", False),
    ("build_time_s", "a number or null", False), ("built_at", "a string or null", False),
)
_KINDS = {"a string": str, "an integer": int, "a number": (int, float), "a mapping": dict,
          "a list": list}  # type: Dict[str, Any]


def manifest_problem(manifest):
    """None if ``manifest`` has the shape build() writes, else one line: 'precision: expected a mapping, got 'fp32''."""
    for field, kind, required in _SHAPE:
        parent, _, key = field.rpartition(".")
        container = manifest[parent] if parent else manifest
        if key not in container:
            if required:
                return "{}: missing".format(field)
            continue
        value = container[key]
        if value is None and kind.endswith(" or null"):
            continue
        if isinstance(value, bool) or not isinstance(value, _KINDS[kind.split(" or ")[0]]):
            return "{}: expected {}, got {}".format(field, kind, _shown(value, quote=True))
    return None


def _manifest_path_of(path):
    base, _ = os.path.splitext(path)
    return base + ".manifest.json"


def _invalid(path, reason, size):
    error = EngineError("{}: {}; run: {}".format(path, reason, fix_command(size)))
    setattr(error, "reason", reason)  # status() reports the reason without the path and fix
    return error


def verify_artifact(path):
    """Check an artifact before loading it; return its manifest, or raise EngineError.

    Missing, truncated or tampered (sha256), or built for another runtime version or
    GPU: the one-line message says what differs and which command fixes it.
    """
    manifest_path = _manifest_path_of(path)
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
            _shown(manifest.get("schema_version"), quote=True), MANIFEST_SCHEMA), size)
    problem = manifest_problem(manifest)
    # <size>.<backend>.<ext>: a manifest naming another backend would be checked against the wrong runtime.
    backends = [b for b in EXTENSIONS if os.path.basename(path).split(".")[1:2] == [b]] or sorted(EXTENSIONS)
    if problem is None and manifest["backend"] not in backends:
        problem = "backend: expected {}, got {}".format(" or ".join(map(repr, backends)),
                                                        _shown(manifest["backend"], quote=True))
    if problem is not None:
        raise _invalid(path, "{}: {}".format(os.path.basename(manifest_path), problem), size)
    actual_bytes = os.path.getsize(path)
    if actual_bytes != manifest.get("artifact_bytes"):
        raise _invalid(path, "truncated or modified ({} bytes, manifest says {})".format(
            actual_bytes, manifest.get("artifact_bytes")), size)
    digest = sha256_file(path)
    if digest != manifest.get("artifact_sha256"):
        raise _invalid(path, "sha256 mismatch, tampered or corrupt ({} vs manifest {})".format(
            _short(digest), _short(manifest.get("artifact_sha256"))), size)
    here = runtime_environment(manifest["backend"])
    diff = differences(manifest, here, labels=_ENVIRONMENT_LABELS)
    if diff:
        raise _invalid(path, "built for another runtime or GPU: {}".format(", ".join(diff)), size)
    return manifest


def status(spec):
    """(artifact path, manifest or None, [reasons it must be rebuilt]) for ``spec``."""
    path, manifest_path = artifact_paths(spec.engines_dir, spec.size, spec.backend)
    wanted = wanted_manifest(spec)
    if not os.path.isfile(path) or not os.path.isfile(manifest_path):
        return path, None, ["no artifact yet" if not os.path.isfile(path) else "manifest missing"]
    try:
        manifest = verify_artifact(path)
    except EngineError as e:
        return path, None, [getattr(e, "reason", str(e))]
    reasons = differences(manifest, wanted)
    return path, (None if reasons else manifest), reasons


# --- building -------------------------------------------------------------------------------


def build(spec, progress=None, force=False, writer=None):
    """Build ``spec``'s artifact unless up to date; return (path, manifest, built: bool).

    ``progress(message)`` receives one line per event. Raises ModelError for a bad ONNX,
    EngineError for a failed build (the previous artifact and manifest stay untouched).
    """
    from . import engine_worker

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
    scratch = os.path.join(spec.engines_dir, ".{}.part-{}".format(os.path.basename(path), os.getpid()))
    start = time.time()
    try:
        result = engine_worker.run_in_child(engine_worker.build_job, dict(spec._asdict(), scratch=scratch),
                                            emit, what=spec.onnx, label=spec.size)
        manifest = dict(wanted)
        manifest.update({
            "agent_version": __version__, "artifact": os.path.basename(path),
            "artifact_sha256": sha256_file(scratch), "artifact_bytes": os.path.getsize(scratch),
            "precision": {"requested": spec.precision, "built": result["precision_built"]},
            "inputs": result["inputs"], "outputs": result["outputs"], "profile": result.get("profile"),
            "builder_flags": result.get("builder_flags", []),
            "onnx_metadata": result.get("onnx_metadata", {}),
            "calib_cache_sha256": result.get("calib_cache_sha256"),
            "build_time_s": round(time.time() - start, 2),
            "built_at": datetime.datetime.utcnow().replace(microsecond=0).isoformat() + "Z",
        })
        for key in ("runtime", "device"):
            manifest[key] = dict(manifest[key], **result.get(key, {}))
        manifest_tmp = stage_file(_manifest_path_of(path), json.dumps(manifest, indent=2, sort_keys=True).encode(),
                                  writer)
        commit_files([(scratch, path), (manifest_tmp, _manifest_path_of(path))])
    finally:
        _remove_quietly(scratch)
    emit("{}: built {} in {:.1f}s ({}, {} bytes)".format(
        spec.size, path, manifest["build_time_s"], manifest["precision"]["built"], manifest["artifact_bytes"]))
    return path, manifest, True


def kernels_dir(engines_dir):
    """Where build-engine puts the CUDA kernels for the engines of ``engines_dir``."""
    return os.path.join(engines_dir, "kernels")


def cached_kernels(engines_dir, compute_capability):
    """Paths of the kernels compiled beside the engines for this compute capability, or None."""
    from .kernels import build as kernel_build

    try:
        return kernel_build.load_kernels(compute_capability, cache_dir=kernels_dir(engines_dir),
                                         compile_if_missing=False)
    except kernel_build.KernelBuildError:
        return None


def compile_kernels_for(engines_dir, manifest, progress=None, nvcc=None):
    """Compile the CUDA kernels for a TensorRT engine's GPU into ``<engines_dir>/kernels``, once.

    The TensorRT backend loads them from there at start, so a deployed service needs no
    nvcc. Returns the paths, or None when the manifest names no GPU or nvcc is missing or
    fails (reported through ``progress``: the backend then compiles on first use, or runs
    the CPU post-processing path). ``nvcc`` None: kernels.build.find_nvcc (PATH, then
    $CUDA_HOME/bin and /usr/local/cuda/bin, which ``sudo``'s secure_path leaves out).
    """
    from .kernels import build as kernel_build

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


def artifact_for(config, size_name, backend_name, on_building=None):
    """(path, manifest or None) of the model the backend should load for ``size_name``.

    tensorrt: a verified, up-to-date engine; a missing or stale one raises EngineError
    unless ``config.tensorrt.auto_build``, then it is built (``on_building(message)`` is
    called first, so a service can extend its start timeout). onnxruntime: the verified
    optimized model if there is one, else the ONNX itself with manifest None (logged at
    WARNING when an optimized model exists but fails verification).
    """
    spec = spec_from_config(config, size_name, backend_name)
    path, manifest, reasons = status(spec)
    if manifest is not None:
        return path, manifest
    reason = "; ".join(reasons)
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
    path, manifest, _ = build(spec, force=True)
    return path, manifest
